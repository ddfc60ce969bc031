//! `threadloom._core.convert_for_ctransformers`: the model converter, with the GIL released
//! for the work and reacquired only to report progress.

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::gguf::convert::{self, ConvertReport};

fn report_dict<'py>(py: Python<'py>, r: &ConvertReport) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("source", &r.source)?;
    d.set_item("output", &r.output)?;
    d.set_item("source_version", r.source_version)?;
    d.set_item("output_version", r.output_version)?;
    d.set_item("converter_version", r.converter_version)?;
    d.set_item("architecture", &r.architecture)?;
    d.set_item("tokenizer_model", &r.tokenizer_model)?;
    d.set_item("n_vocab", r.n_vocab)?;
    d.set_item("n_kv", r.n_kv)?;
    d.set_item("n_tensors", r.n_tensors)?;
    d.set_item("vocab_already_raw", r.vocab_already_raw)?;
    d.set_item("tokens_rewritten", r.tokens_rewritten)?;
    d.set_item("merges_rewritten", r.merges_rewritten)?;
    d.set_item("added_scores", r.added_scores)?;
    d.set_item("added_output_weight", r.added_output_weight)?;
    d.set_item("added_keys", &r.added_keys)?;
    d.set_item("normalized_keys", &r.normalized_keys)?;
    d.set_item("tensor_bytes", r.tensor_bytes)?;
    d.set_item("output_bytes", r.output_bytes)?;
    Ok(d)
}

/// Rewrites the GGUF at `src` into a file ctransformers 0.2.27 (its August-2023 llama.cpp)
/// loads, written atomically to `dst`, and returns a report dict. `progress(done, total)` is
/// called with the tensor bytes copied, about a hundred times; an exception it raises (or
/// Ctrl-C) stops the conversion and leaves `dst` untouched. A file the old loader cannot take
/// raises `InvalidInput` naming what is unsupported.
#[pyfunction]
#[pyo3(signature = (src, dst, progress=None))]
pub fn convert_for_ctransformers<'py>(
    py: Python<'py>,
    src: PathBuf,
    dst: PathBuf,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let mut callback_error: Option<PyErr> = None;
    let result = py.detach(|| {
        convert::convert_for_ctransformers_cancellable(&src, &dst, &mut |done, total| {
            Python::attach(|py| {
                let outcome = py.check_signals().and_then(|()| match &progress {
                    Some(cb) => cb.call1(py, (done, total)).map(drop),
                    None => Ok(()),
                });
                match outcome {
                    Ok(()) => true,
                    Err(e) => {
                        callback_error = Some(e);
                        false
                    }
                }
            })
        })
    });
    if let Some(e) = callback_error {
        return Err(e);
    }
    report_dict(py, &result?)
}
