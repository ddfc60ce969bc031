//! `LlamaSteps`: the llama.cpp backend's sequences and step loop (`step::Steps` over
//! `step::llama::LlamaDecoder`), for `backends/llama_cpp.py`. One call per scheduler step for
//! every sequence, with the GIL released.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::step::llama::{LlamaApi, LlamaDecoder, BATCH_LAYOUT};
use crate::step::{Sampling, Steps, Want};

use super::constrain::Constraint;

/// `(seq, temperature, top_k, top_p, repetition_penalty, seed)`: one sequence of a step.
type WantRow = (usize, f32, usize, f32, f32, i64);

#[pyclass(module = "threadloom._core")]
pub struct LlamaSteps {
    inner: Steps<LlamaDecoder>,
}

/// A matcher borrowed for the length of one step, across the GIL release: its `PyRefMut`
/// stays on the calling thread's stack and keeps the object borrowed (and alive) meanwhile.
struct Borrowed(*mut crate::constrain::Constraint);
// SAFETY: see above; only the step's thread touches the matcher while it is borrowed.
unsafe impl Send for Borrowed {}

#[pymethods]
impl LlamaSteps {
    /// `addresses`: the llama.cpp context, its memory, and the functions `llama_decode`,
    /// `llama_get_logits_ith` and `llama_memory_seq_rm` of the library that made them (whose
    /// `llama_batch` layout the caller checked against `LLAMA_BATCH_LAYOUT`). The context must
    /// take `batch_size` tokens per decode and outlive this object.
    #[new]
    #[pyo3(signature = (addresses, *, n_vocab, sequences, context_length, batch_size, group=None))]
    fn new(
        addresses: (usize, usize, usize, usize, usize),
        n_vocab: usize,
        sequences: usize,
        context_length: usize,
        batch_size: usize,
        group: Option<usize>,
    ) -> PyResult<LlamaSteps> {
        let (context, memory, decode, get_logits_ith, memory_seq_rm) = addresses;
        if [context, memory, decode, get_logits_ith, memory_seq_rm].contains(&0) {
            return Err(PyValueError::new_err("a llama.cpp address is null"));
        }
        if batch_size < sequences {
            return Err(PyValueError::new_err(
                "batch_size must hold one token of every sequence",
            ));
        }
        let api = LlamaApi {
            context,
            memory,
            decode,
            get_logits_ith,
            memory_seq_rm,
        };
        // SAFETY: the caller's promise above.
        let decoder = unsafe { LlamaDecoder::new(api, batch_size, n_vocab) };
        Ok(LlamaSteps {
            inner: Steps::new(decoder, sequences, context_length, group),
        })
    }

    /// The token ids `seq` holds.
    fn held(&self, seq: usize) -> PyResult<Vec<u32>> {
        self.check(seq)?;
        Ok(self.inner.held(seq).to_vec())
    }

    /// The token ids whose state is in `seq`'s cache.
    fn evaluated(&self, seq: usize) -> PyResult<Vec<u32>> {
        self.check(seq)?;
        Ok(self.inner.evaluated(seq).to_vec())
    }

    /// Keeps `keep` held tokens of `seq` and queues `ids` after them for the next step.
    fn prefill(&mut self, seq: usize, keep: usize, ids: Vec<u32>) -> PyResult<()> {
        self.check(seq)?;
        self.inner.prefill(seq, keep, &ids);
        Ok(())
    }

    /// One step: evaluates every queued token and the last sampled token of each sequence in
    /// `wants`, then samples each one's next token (None: its context is full).
    /// `constraints`: empty, or one per want (None where unconstrained).
    #[pyo3(signature = (wants, constraints=Vec::new()))]
    fn step(
        &mut self,
        py: Python<'_>,
        wants: Vec<WantRow>,
        constraints: Vec<Option<Bound<'_, Constraint>>>,
    ) -> PyResult<Vec<Option<u32>>> {
        if !constraints.is_empty() && constraints.len() != wants.len() {
            return Err(PyValueError::new_err(
                "one constraint (or None) per sequence",
            ));
        }
        for (seq, ..) in &wants {
            self.check(*seq)?;
        }
        let mut guards = Vec::with_capacity(constraints.len());
        for c in &constraints {
            guards.push(c.as_ref().map(|c| c.borrow_mut()));
        }
        let borrowed: Vec<Option<Borrowed>> = guards
            .iter_mut()
            .map(|g| g.as_mut().map(|g| Borrowed(&mut g.inner as *mut _)))
            .collect();
        let inner = &mut self.inner;
        let result = py.detach(move || {
            let mut rows: Vec<Want<'_>> = wants
                .iter()
                .enumerate()
                .map(
                    |(n, &(seq, temperature, top_k, top_p, repetition_penalty, seed))| Want {
                        seq,
                        sampling: Sampling {
                            temperature,
                            top_k,
                            top_p,
                            repetition_penalty,
                            seed,
                        },
                        // SAFETY: `Borrowed`'s promise: the guard outlives this call.
                        constraint: borrowed
                            .get(n)
                            .and_then(|b| b.as_ref())
                            .map(|b| unsafe { &mut *b.0 }),
                    },
                )
                .collect();
            inner.step(&mut rows)
        });
        drop(guards);
        Ok(result?)
    }

    /// `(seconds, calls)` spent in `llama_decode` so far: what a profile subtracts from a
    /// step's wall time to see the cost of everything else.
    fn decode_time(&mut self) -> (f64, u64) {
        let d = self.inner.decoder();
        (d.decode_time.as_secs_f64(), d.decode_calls)
    }

    /// Forgets everything `seq` holds.
    fn clear(&mut self, seq: usize) -> PyResult<()> {
        self.check(seq)?;
        self.inner.clear(seq);
        Ok(())
    }

    /// Declares that `seq`'s cache holds exactly `ids` (after a state was loaded into it).
    fn restore(&mut self, seq: usize, ids: Vec<u32>) -> PyResult<()> {
        self.check(seq)?;
        self.inner.restore(seq, &ids);
        Ok(())
    }
}

impl LlamaSteps {
    fn check(&self, seq: usize) -> PyResult<()> {
        if seq >= self.inner.sequences() {
            return Err(PyValueError::new_err(format!("no sequence {seq}")));
        }
        Ok(())
    }
}

/// `llama_batch`'s size and field offsets as the core lays it out.
pub fn batch_layout() -> Vec<(&'static str, usize)> {
    BATCH_LAYOUT.to_vec()
}
