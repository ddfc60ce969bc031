//! `Grammars` (one model's format compiler) and `Constraint` (one sequence's matcher) for the
//! backends: the scheduler's thread applies a mask to a logits row in place, with the GIL
//! released, then advances the matcher with the sampled token.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::constrain::{self, Format, Progress};
use crate::error::Error;
use crate::py::prompt::Tokenizer;

#[pyclass(frozen, module = "threadloom._core")]
pub struct Grammars {
    inner: constrain::Grammars,
}

#[pymethods]
impl Grammars {
    /// Builds the vocabulary trie for `tokenizer`'s model (once per model: tens of ms for a
    /// 262k vocabulary).
    #[new]
    fn new(py: Python<'_>, tokenizer: &Tokenizer) -> PyResult<Grammars> {
        let tok = std::sync::Arc::clone(&tokenizer.inner);
        let inner = py.detach(|| constrain::Grammars::new(tok))?;
        Ok(Grammars { inner })
    }

    /// A fresh matcher. `kind`: "json_object" (no source), "json_schema" (the schema as JSON
    /// text) or "lark" (a grammar). A source that does not compile raises `InvalidInput` with
    /// llguidance's reason.
    #[pyo3(signature = (kind, source=None))]
    fn compile(&self, py: Python<'_>, kind: &str, source: Option<String>) -> PyResult<Constraint> {
        let format = match (kind, source) {
            ("json_object", None) => Format::JsonObject,
            ("json_schema", Some(text)) => {
                let value = serde_json::from_str(&text)
                    .map_err(|e| Error::InvalidInput(format!("the schema is not JSON: {e}")))?;
                Format::JsonSchema(value)
            }
            ("lark", Some(text)) => Format::Lark(text),
            _ => {
                return Err(PyValueError::new_err(format!(
                    "unknown format kind {kind:?} (or a missing or unexpected source)"
                )))
            }
        };
        let inner = py.detach(|| self.inner.compile(&format))?;
        Ok(Constraint { inner })
    }
}

#[pyclass(module = "threadloom._core")]
pub struct Constraint {
    pub(crate) inner: constrain::Constraint,
}

#[pymethods]
impl Constraint {
    /// Sets every logit the format does not allow to -inf, in place (where the format has
    /// failed, every logit but the end-of-generation ones; the next `advance` raises), in the `length` float32
    /// logits at `address`: a backend's own output row (llama.cpp's `llama_get_logits_ith`,
    /// ctransformers' logits data), so no row is copied. The abi3 build cannot take the buffer
    /// protocol, hence the address; the caller vouches that it points at `length` floats that
    /// nothing else touches during the call (the scheduler's thread owns them between steps).
    fn apply(&mut self, py: Python<'_>, address: usize, length: usize) -> PyResult<()> {
        if address == 0 || !address.is_multiple_of(std::mem::align_of::<f32>()) {
            return Err(PyValueError::new_err(
                "logits address is null or misaligned",
            ));
        }
        let inner = &mut self.inner;
        py.detach(|| {
            // SAFETY: the caller's promise above; the address is non-null and aligned.
            let row = unsafe { std::slice::from_raw_parts_mut(address as *mut f32, length) };
            inner.apply(row);
        });
        Ok(())
    }

    /// Advances past the sampled `token`; True when the output is complete (only the end of
    /// the reply may follow). A token the format did not allow raises `StateConflict`.
    fn advance(&mut self, token: u32) -> PyResult<bool> {
        Ok(self.inner.advance(token)? == Progress::Complete)
    }

    /// Whether the output so far is a complete match.
    #[getter]
    fn accepting(&mut self) -> bool {
        self.inner.is_accepting()
    }

    /// The ids allowed next (for tests and diagnostics; `apply` is the fast path).
    fn allowed(&mut self, py: Python<'_>) -> PyResult<Vec<u32>> {
        let inner = &mut self.inner;
        let mask = py.detach(|| inner.allowed())?;
        let mut ids = Vec::new();
        mask.iter_set_entries(|i| ids.push(i as u32));
        Ok(ids)
    }
}
