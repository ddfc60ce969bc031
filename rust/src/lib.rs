//! threadloom's core: the LMDB conversation store (and, behind the `python` feature, the
//! `threadloom._core` extension module that exposes it).

pub mod error;
pub mod ids;
pub mod store;

#[cfg(feature = "python")]
mod py;

#[cfg(feature = "python")]
#[pyo3::pymodule]
mod _core {
    #[pymodule_export]
    use crate::py::store::{
        Appended, Response, ResponseInfo, Retention, Store, Thread, ThreadPage, Turn,
    };
}
