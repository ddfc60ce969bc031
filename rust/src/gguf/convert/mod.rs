//! Rewrites a modern llama-architecture GGUF into the form that the August-2023 llama.cpp
//! (commit 43033b7, vendored by ctransformers 0.2.27) loads.
//!
//! That loader differs from today's in ways that make a current file fail or crash it:
//! - it requires `tokenizer.ggml.scores`, even for a gpt2 (byte-level BPE) vocabulary;
//! - it requires an `output.weight` tensor (tied embeddings are newer than it);
//! - its BPE code keeps tokens as raw bytes, not in GPT-2's byte-to-unicode form: at load time it
//!   looks up a raw `"\n"` token and dereferences a missing map entry when there is none
//!   (segfault). Its merge lookup maps `" "`/`"\n"` to `"Ġ"`/`"Ċ"` first, so merges are raw bytes
//!   except for those two;
//! - it knows only the ggml types of its day (tags 16 to 18 meant I8/I16/I32 then, and are
//!   IQ* quantizations now), reads the hyperparameters with fixed value types, refuses files with
//!   tensors it does not use, and aborts on nested arrays or non-F32 norm weights.
//!
//! [`convert_for_ctransformers`] checks everything the old loader needs before writing anything,
//! so a file it would crash on is refused here with [`Error::InvalidInput`] naming the problem.
//! The key/values are copied byte for byte (the vocabulary and merges rewritten for gpt2
//! vocabularies, a few typed keys normalized), the tensor data is streamed unchanged from a
//! memory map, and the result goes to a temporary file in the destination's directory that is
//! fsynced and renamed into place. The output depends only on the input, so a rerun writes the
//! same bytes.

mod check;
mod gpt2;
mod layout;
#[cfg(test)]
mod tests;

use std::fs::{self, File, OpenOptions};
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use check::check;
pub use gpt2::{gpt2_char_to_byte, gpt2_merge_to_bytes, gpt2_token_to_bytes};
use layout::{build_layout, write_body, Progress, COPY_CHUNK};

use super::GgufMetadata;
use crate::error::{Error, Result};

/// Bumped whenever the converter's output for the same input changes; caches key on it.
pub const CONVERTER_VERSION: u32 = 1;

/// The GGUF version written (the 2023 reader takes 1 and 2; 2 has 64-bit counts).
pub const OUTPUT_VERSION: u32 = 2;

/// The ggml type tags the August-2023 ggml defines and its llama code can compute with: F32,
/// F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and Q2_K..Q6_K. Q8_1 and Q8_K existed but only as the
/// activation side of a dot product (no kernels for them as weights); 16..18 were I8/I16/I32,
/// and every tag from 16 on means something else today (IQ*, BF16...).
pub const OLD_LLAMA_CPP_TYPES: [u32; 12] = [0, 1, 2, 3, 6, 7, 8, 10, 11, 12, 13, 14];

/// What one conversion did.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvertReport {
    /// The source file.
    pub source: PathBuf,
    /// The written file.
    pub output: PathBuf,
    /// The source's GGUF version.
    pub source_version: u32,
    /// The output's GGUF version ([`OUTPUT_VERSION`]).
    pub output_version: u32,
    /// [`CONVERTER_VERSION`].
    pub converter_version: u32,
    /// `general.architecture` (always `llama` for now).
    pub architecture: String,
    /// `tokenizer.ggml.model` (`gpt2` or `llama`).
    pub tokenizer_model: String,
    /// Tokens in the vocabulary.
    pub n_vocab: usize,
    /// Key/values written.
    pub n_kv: usize,
    /// Tensors written (one more than the source's when `output.weight` was added).
    pub n_tensors: usize,
    /// Whether the gpt2 vocabulary was already in raw bytes (a converted file), so left alone.
    pub vocab_already_raw: bool,
    /// Vocabulary entries whose bytes changed (GPT-2 unicode form to raw bytes).
    pub tokens_rewritten: usize,
    /// Merges whose bytes changed.
    pub merges_rewritten: usize,
    /// Whether `tokenizer.ggml.scores` was added (minus the token's rank).
    pub added_scores: bool,
    /// Whether `output.weight` was added as a copy of `token_embd.weight`.
    pub added_output_weight: bool,
    /// Keys added (besides the scores).
    pub added_keys: Vec<String>,
    /// Keys whose value type was changed to the one the old loader reads (or dropped).
    pub normalized_keys: Vec<String>,
    /// Bytes of tensor data written (without padding).
    pub tensor_bytes: u64,
    /// Size of the written file.
    pub output_bytes: u64,
}

fn storage(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Storage(format!("cannot {what} {}: {e}", path.display()))
}

/// Removes the temporary file unless the rename happened.
struct TempGuard(Option<PathBuf>);

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
        }
    }
}

/// Writes through `body` into a fresh temporary file next to `dst`, fsyncs it and renames it
/// over `dst`, so readers see either the old file or the complete new one, and two writers at
/// once each rename a complete file.
fn write_atomically(
    dst: &Path,
    body: impl FnOnce(&mut BufWriter<File>) -> Result<()>,
) -> Result<u64> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = dst
        .file_name()
        .ok_or_else(|| Error::InvalidInput(format!("{} is not a file path", dst.display())))?;
    let dir = match dst.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = dir.join(format!(
        ".{}.{}-{}-{nanos}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| storage("create a temporary file", &tmp, e))?;
    let mut guard = TempGuard(Some(tmp.clone()));
    let mut w = BufWriter::with_capacity(COPY_CHUNK, file);
    body(&mut w)?;
    let file = w
        .into_inner()
        .map_err(|e| storage("write", &tmp, e.into_error()))?;
    file.sync_all().map_err(|e| storage("sync", &tmp, e))?;
    let size = file.metadata().map_err(|e| storage("stat", &tmp, e))?.len();
    drop(file);
    fs::rename(&tmp, dst).map_err(|e| storage("rename the temporary file to", dst, e))?;
    guard.0 = None;
    #[cfg(unix)]
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(size)
}

fn refuse(src: &Path, problems: &[String]) -> Error {
    Error::InvalidInput(format!(
        "{} cannot be converted for ctransformers (its 2023 llama.cpp): {}",
        src.display(),
        problems.join("; ")
    ))
}

/// Converts the GGUF at `src` into a file ctransformers 0.2.27 loads, written atomically to
/// `dst`. `progress(done, total)` gets the tensor bytes copied so far, about a hundred times.
///
/// A file the old loader cannot take (another architecture or tokenizer, newer tensor types,
/// missing or extra tensors, unexpected shapes...) is `InvalidInput` naming what is wrong; so is
/// a file that is not GGUF or is truncated. I/O failures are `Storage`.
pub fn convert_for_ctransformers(
    src: &Path,
    dst: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ConvertReport> {
    convert_for_ctransformers_cancellable(src, dst, &mut |done, total| {
        progress(done, total);
        true
    })
}

/// [`convert_for_ctransformers`] with a progress callback that can cancel by returning `false`
/// (the result is then `StateConflict` and `dst` is left untouched).
pub fn convert_for_ctransformers_cancellable(
    src: &Path,
    dst: &Path,
    progress: &mut dyn FnMut(u64, u64) -> bool,
) -> Result<ConvertReport> {
    let file = File::open(src).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            Error::InvalidInput(format!("model file not found: {}", src.display()))
        }
        _ => storage("open", src, e),
    })?;
    let len = file.metadata().map_err(|e| storage("stat", src, e))?.len();
    if file.metadata().is_ok_and(|m| m.is_dir()) {
        return Err(refuse(src, &["it is a directory".into()]));
    }
    if len == 0 {
        return Err(refuse(src, &["the file is empty, not a GGUF file".into()]));
    }
    // SAFETY: read-only map; like every mmap-based model loader we rely on the file not being
    // truncated by another process while it is read.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| storage("map", src, e))?;
    #[cfg(unix)]
    let _ = map.advise(memmap2::Advice::Sequential);
    let meta = GgufMetadata::from_bytes(&map).map_err(|e| match e {
        Error::Model(m) | Error::InvalidInput(m) => refuse(src, &[m]),
        other => other,
    })?;
    let plan = check(&meta).map_err(|problems| refuse(src, &problems))?;
    let layout = build_layout(&map, &meta, &plan).map_err(|e| match e {
        Error::Model(m) => refuse(src, &[m]),
        other => other,
    })?;

    let total: u64 = layout.copies.iter().map(|c| c.1).sum();
    let mut progress = Progress {
        callback: progress,
        total,
        step: (total / 100).max(1),
        next: 0,
    };
    let output_bytes = write_atomically(dst, |w| write_body(w, &map, &layout, &mut progress))?;

    Ok(ConvertReport {
        source: src.to_path_buf(),
        output: dst.to_path_buf(),
        source_version: meta.version(),
        output_version: OUTPUT_VERSION,
        converter_version: CONVERTER_VERSION,
        architecture: plan.arch.clone(),
        tokenizer_model: if plan.gpt2 { "gpt2" } else { "llama" }.to_owned(),
        n_vocab: plan.n_vocab,
        n_kv: layout.n_kv,
        n_tensors: layout.n_tensors,
        vocab_already_raw: plan.gpt2 && !plan.rewrite_vocab,
        tokens_rewritten: layout.tokens_rewritten,
        merges_rewritten: layout.merges_rewritten,
        added_scores: plan.add_scores,
        added_output_weight: plan.add_output,
        added_keys: layout.added_keys,
        normalized_keys: plan.fixes.keys().cloned().collect(),
        tensor_bytes: total,
        output_bytes,
    })
}
