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
            match instance(py, &cls, &err, &message) {
                Ok(Some(instance)) => PyErr::from_value(instance),
                Ok(None) => PyErr::from_type(cls, message),
                Err(e) => e,
            }
        })
    }
}

/// The exception of an error that carries more than its message (its numbers, or what it is
/// about); None for one that carries only its message.
fn instance<'py>(
    py: Python<'py>,
    cls: &Bound<'py, PyType>,
    err: &Error,
    message: &str,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    match err {
        Error::ContextLength(c) => cls
            .call1((message, c.prompt_tokens, c.max_tokens, c.context_length))
            .map(Some),
        Error::NotFound(m) => {
            let about = PyDict::new(py);
            about.set_item("kind", m.kind)?;
            about.set_item("id", &m.id)?;
            cls.call((message,), Some(&about)).map(Some)
        }
        _ => Ok(None),
    }
}
