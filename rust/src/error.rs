//! The one error type of the core. Every fallible path returns it; the Python layer maps each
//! variant onto a named exception in `threadloom.errors`.

use std::fmt;

/// What went wrong, with a message meant for the person who sent the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// An id that does not exist, belongs to another owner, or has expired.
    NotFound(Missing),
    /// The operation is illegal in the object's current state (locked thread, failed response...).
    StateConflict(String),
    /// A size or count limit would be exceeded.
    LimitExceeded(String),
    /// The input itself is malformed.
    InvalidInput(String),
    /// The LMDB map is full and could not grow.
    StoreFull(String),
    /// The on-disk data has a format this code does not know.
    Format(String),
    /// A model file (GGUF) is malformed or uses what this code does not support.
    Model(String),
    /// An I/O or LMDB failure.
    Storage(String),
    /// The model backend failed to evaluate (llama.cpp's decode returned an error).
    Backend(String),
    /// The prompt and the requested output do not fit the model's context.
    ContextLength(ContextOverflow),
}

/// What a NotFound error is about, so callers tell missing records apart without reading the
/// message: the record's kind ("thread", "response", "turn") and its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub kind: &'static str,
    pub id: String,
    pub message: String,
}

impl Error {
    /// NotFound about the `kind` record `id`.
    pub fn missing(kind: &'static str, id: impl Into<String>, message: String) -> Error {
        Error::NotFound(Missing {
            kind,
            id: id.into(),
            message,
        })
    }
}

/// The numbers behind a context-length error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextOverflow {
    pub prompt_tokens: usize,
    pub max_tokens: usize,
    pub context_length: usize,
    pub message: String,
}

impl ContextOverflow {
    pub fn new(prompt_tokens: usize, max_tokens: usize, context_length: usize) -> Self {
        let message = format!(
            "the prompt has {prompt_tokens} tokens and {max_tokens} more were requested for the output, \
             but the model's context holds {context_length} tokens"
        );
        ContextOverflow {
            prompt_tokens,
            max_tokens,
            context_length,
            message,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn message(&self) -> &str {
        match self {
            Error::NotFound(m) => &m.message,
            Error::StateConflict(m)
            | Error::LimitExceeded(m)
            | Error::InvalidInput(m)
            | Error::StoreFull(m)
            | Error::Format(m)
            | Error::Model(m)
            | Error::Backend(m)
            | Error::Storage(m) => m,
            Error::ContextLength(c) => &c.message,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for Error {}

impl From<heed::Error> for Error {
    fn from(e: heed::Error) -> Self {
        match e {
            heed::Error::Mdb(heed::MdbError::MapFull) => {
                Error::StoreFull("the store's map is full".to_owned())
            }
            other => Error::Storage(format!("storage error: {other}")),
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Storage(format!("I/O error: {e}"))
    }
}
