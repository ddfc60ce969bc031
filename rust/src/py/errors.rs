//! Maps the core's `Error` onto the exception classes defined in `threadloom.errors`. The classes
//! live in Python so they can also derive from the matching builtins (LookupError, ValueError).

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyType};

use crate::error::Error;

fn class<'py>(py: Python<'py>, name: &'static str) -> PyResult<Bound<'py, PyType>> {
    static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    let module =
        MODULE.get_or_try_init(py, || py.import("threadloom.errors").map(Bound::unbind))?;
    Ok(module.bind(py).getattr(name)?.cast_into::<PyType>()?)
}

impl From<Error> for PyErr {
    fn from(err: Error) -> PyErr {
        let name = match &err {
            Error::NotFound(_) => "NotFound",
            Error::StateConflict(_) => "StateConflict",
            Error::LimitExceeded(_) => "LimitExceeded",
            Error::InvalidInput(_) => "InvalidInput",
            Error::StoreFull(_) => "StoreFull",
            Error::Format(_) => "StoreFormatError",
            Error::Model(_) => "ModelFormatError",
            Error::Backend(_) => "BackendError",
            Error::Storage(_) => "StoreError",
            Error::ContextLength(_) => "ContextLengthExceeded",
        };
        let message = err.message().to_owned();
        Python::attach(|py| {
            let cls = match class(py, name) {
                Ok(cls) => cls,
                Err(import_error) => {
                    return PyRuntimeError::new_err(format!(
                        "{message} (and threadloom.errors could not be loaded: {import_error})"
                    ))
                }
            };
            if !matches!(err, Error::ContextLength(_) | Error::NotFound(_)) {
                return PyErr::from_type(cls, message);
            }
            match instance(py, &cls, &err, message) {
                Ok(instance) => PyErr::from_value(instance),
                Err(e) => e,
            }
        })
    }
}

/// The exception of an error that carries more than its message: its numbers, or what it is
/// about.
fn instance<'py>(
    py: Python<'py>,
    cls: &Bound<'py, PyType>,
    err: &Error,
    message: String,
) -> PyResult<Bound<'py, PyAny>> {
    match err {
        Error::ContextLength(c) => {
            cls.call1((message, c.prompt_tokens, c.max_tokens, c.context_length))
        }
        Error::NotFound(m) => {
            let about = PyDict::new(py);
            about.set_item("kind", m.kind)?;
            about.set_item("id", &m.id)?;
            cls.call((message,), Some(&about))
        }
        _ => cls.call1((message,)),
    }
}
