//! Sealing and opening compaction items (`crate::seal`) for the server.

use pyo3::prelude::*;

use crate::seal;

/// `text` sealed under `key` (32 bytes) for `owner`: an opaque `encrypted_content`.
#[pyfunction]
pub fn seal_compaction(key: &[u8], owner: &str, text: &str) -> PyResult<String> {
    Ok(seal::seal(key, owner, text)?)
}

/// The text of an item `seal_compaction` made with the same key and owner; `InvalidInput` for
/// anything else (another key, another owner, any change).
#[pyfunction]
pub fn open_compaction(key: &[u8], owner: &str, sealed: &str) -> PyResult<String> {
    Ok(seal::open(key, owner, sealed)?)
}
