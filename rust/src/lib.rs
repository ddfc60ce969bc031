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
}
