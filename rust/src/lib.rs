//! threadloom's core: the LMDB conversation store (and, behind the `python` feature, the
//! `threadloom._core` extension module that exposes it).

pub mod error;
pub mod gguf;
pub mod ids;
pub mod prompt;
pub mod store;
pub mod template;
pub mod tokens;

#[cfg(feature = "python")]
mod py;

#[cfg(feature = "python")]
#[pyo3::pymodule]
mod _core {
    #[pymodule_export]
    use crate::py::model::convert_for_ctransformers;
    #[pymodule_export]
    use crate::py::prompt::{Assembly, PromptEngine, Tokenizer};
    #[pymodule_export]
    use crate::py::store::{
        new_response_id, Appended, Response, ResponseInfo, Retention, Store, Thread, ThreadPage,
        Turn,
    };
    #[pymodule_export]
    use crate::py::template::ChatTemplate;

    #[pymodule_init]
    fn init(m: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
        use pyo3::types::PyModuleMethods;
        // Store rules the Python side checks early (before spending model time on a request
        // the store would refuse): the same numbers the store enforces.
        m.add("MAX_THREAD_MESSAGES", crate::store::MAX_THREAD_MESSAGES)?;
        m.add("MAX_METADATA_BYTES", crate::store::MAX_METADATA_BYTES)?;
        Ok(())
    }
}
