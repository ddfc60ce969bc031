//! llama.cpp's C API as a `Decoder`, reached through the function addresses of the `libllama`
//! that llama-cpp-python loaded (the `.[llama]` extra): the core links no C++ and the default
//! wheel needs no toolchain, while the token path runs without Python. The Python side checks
//! the library's version and `llama_batch`'s layout against `BATCH_LAYOUT` before it hands the
//! addresses over.

use std::ffi::c_void;

use crate::step::seqs::{Decoder, Entry};

/// `struct llama_batch` (llama.h), passed by value to `llama_decode`.
#[repr(C)]
struct LlamaBatch {
    n_tokens: i32,
    token: *mut i32,
    embd: *mut f32,
    pos: *mut i32,
    n_seq_id: *mut i32,
    seq_id: *mut *mut i32,
    logits: *mut i8,
}

/// `llama_batch`'s size and field offsets as this code lays it out, for the Python side to
/// compare with llama-cpp-python's ctypes declaration of the loaded library.
pub const BATCH_LAYOUT: [(&str, usize); 8] = [
    ("size", std::mem::size_of::<LlamaBatch>()),
    ("n_tokens", std::mem::offset_of!(LlamaBatch, n_tokens)),
    ("token", std::mem::offset_of!(LlamaBatch, token)),
    ("embd", std::mem::offset_of!(LlamaBatch, embd)),
    ("pos", std::mem::offset_of!(LlamaBatch, pos)),
    ("n_seq_id", std::mem::offset_of!(LlamaBatch, n_seq_id)),
    ("seq_id", std::mem::offset_of!(LlamaBatch, seq_id)),
    ("logits", std::mem::offset_of!(LlamaBatch, logits)),
];

type DecodeFn = unsafe extern "C" fn(*mut c_void, LlamaBatch) -> i32;
type LogitsFn = unsafe extern "C" fn(*mut c_void, i32) -> *mut f32;
type SeqRmFn = unsafe extern "C" fn(*mut c_void, i32, i32, i32) -> bool;

/// The addresses of one llama.cpp context and of the functions this decoder calls.
#[derive(Debug, Clone, Copy)]
pub struct LlamaApi {
    pub context: usize,
    pub memory: usize,
    pub decode: usize,
    pub get_logits_ith: usize,
    pub memory_seq_rm: usize,
}

/// One llama.cpp context, evaluated through batches this struct owns.
pub struct LlamaDecoder {
    context: *mut c_void,
    memory: *mut c_void,
    decode: DecodeFn,
    get_logits_ith: LogitsFn,
    memory_seq_rm: SeqRmFn,
    n_vocab: usize,
    token: Vec<i32>,
    pos: Vec<i32>,
    n_seq_id: Vec<i32>,
    seq_ids: Vec<i32>,
    seq_id: Vec<*mut i32>,
    logits: Vec<i8>,
    /// Time spent inside `llama_decode` since the decoder was made (for profiles).
    pub decode_time: std::time::Duration,
    pub decode_calls: u64,
}

// SAFETY: the context is used by one thread at a time: `Steps` is owned by the scheduler's
// thread, and its Python wrapper takes `&mut self` for every call that reaches llama.cpp.
unsafe impl Send for LlamaDecoder {}
// SAFETY: through `&self` only the capacity is read; everything that reaches llama.cpp takes
// `&mut self`.
unsafe impl Sync for LlamaDecoder {}

impl LlamaDecoder {
    /// # Safety
    /// `api` must hold a live llama.cpp context and its memory, and the addresses of
    /// `llama_decode`, `llama_get_logits_ith` and `llama_memory_seq_rm` of the library that
    /// made them, whose `llama_batch` has `BATCH_LAYOUT`; the context must outlive the decoder
    /// and take batches of `capacity` tokens; `n_vocab` is its model's vocabulary size.
    pub unsafe fn new(api: LlamaApi, capacity: usize, n_vocab: usize) -> Self {
        let mut seq_ids = vec![0i32; capacity];
        let seq_id = seq_ids.iter_mut().map(|s| s as *mut i32).collect();
        LlamaDecoder {
            context: api.context as *mut c_void,
            memory: api.memory as *mut c_void,
            decode: std::mem::transmute::<usize, DecodeFn>(api.decode),
            get_logits_ith: std::mem::transmute::<usize, LogitsFn>(api.get_logits_ith),
            memory_seq_rm: std::mem::transmute::<usize, SeqRmFn>(api.memory_seq_rm),
            n_vocab,
            token: vec![0; capacity],
            pos: vec![0; capacity],
            n_seq_id: vec![1; capacity],
            seq_ids,
            seq_id,
            logits: vec![0; capacity],
            decode_time: std::time::Duration::ZERO,
            decode_calls: 0,
        }
    }
}

impl Decoder for LlamaDecoder {
    fn capacity(&self) -> usize {
        self.token.len()
    }

    fn decode(&mut self, batch: &[Entry]) -> Result<(), i32> {
        assert!(
            batch.len() <= self.capacity(),
            "a batch over the context's n_batch"
        );
        for (i, e) in batch.iter().enumerate() {
            self.token[i] = e.token as i32;
            self.pos[i] = e.pos as i32;
            self.seq_ids[i] = e.seq as i32;
            self.logits[i] = i8::from(e.logits);
        }
        let raw = LlamaBatch {
            n_tokens: batch.len() as i32,
            token: self.token.as_mut_ptr(),
            embd: std::ptr::null_mut(),
            pos: self.pos.as_mut_ptr(),
            n_seq_id: self.n_seq_id.as_mut_ptr(),
            seq_id: self.seq_id.as_mut_ptr(),
            logits: self.logits.as_mut_ptr(),
        };
        // SAFETY: `new`'s contract; every array holds `capacity` entries, `seq_id[i]` points
        // at `seq_ids[i]` (the vectors never reallocate).
        let started = std::time::Instant::now();
        let code = unsafe { (self.decode)(self.context, raw) };
        self.decode_time += started.elapsed();
        self.decode_calls += 1;
        if code == 0 {
            Ok(())
        } else {
            Err(code)
        }
    }

    fn logits(&mut self, row: usize) -> &mut [f32] {
        // SAFETY: llama.cpp keeps the row of a token that asked for logits until the next
        // decode; `&mut self` keeps that from happening while the slice lives.
        unsafe {
            let ptr = (self.get_logits_ith)(self.context, row as i32);
            assert!(!ptr.is_null(), "llama.cpp has no logits for row {row}");
            std::slice::from_raw_parts_mut(ptr, self.n_vocab)
        }
    }

    fn forget(&mut self, seq: u32, from: u32) -> bool {
        let from = if from == 0 { -1 } else { from as i32 };
        // SAFETY: `new`'s contract.
        unsafe { (self.memory_seq_rm)(self.memory, seq as i32, from, -1) }
    }
}
