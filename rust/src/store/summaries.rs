//! Summaries the model wrote (the `summarize` strategy's, and compactions'), kept so a restart
//! does not write them again. Keys are owner `NUL` the caller's key (the newest turn a summary
//! covers, or a digest of what it summarises), so one tenant never reads another's summary.

use crate::error::{Error, Result};
use crate::ids;

use super::Store;

/// The longest key: a turn id or a digest with a short prefix fits many times over.
pub const MAX_SUMMARY_KEY_BYTES: usize = 256;

/// What every store checks of a summary it keeps: the owner, the key, and the text's size.
pub fn check_summary(owner: &str, name: &str, text: Option<&str>) -> Result<()> {
    ids::validate_owner(owner)?;
    if name.is_empty() || name.len() > MAX_SUMMARY_KEY_BYTES || name.contains('\0') {
        return Err(Error::InvalidInput(format!(
            "a summary key is 1 to {MAX_SUMMARY_KEY_BYTES} bytes without NUL"
        )));
    }
    if text.is_some_and(|t| t.len() > super::MAX_TURN_BYTES) {
        return Err(Error::LimitExceeded(format!(
            "a summary holds at most {} bytes",
            super::MAX_TURN_BYTES
        )));
    }
    Ok(())
}

fn key(owner: &str, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(owner.len() + 1 + name.len());
    k.extend_from_slice(owner.as_bytes());
    k.push(0);
    k.extend_from_slice(name.as_bytes());
    k
}

impl Store {
    /// Keeps `text` as the owner's summary under `name` (replacing an earlier one).
    pub fn put_summary(&self, owner: &str, name: &str, text: &str) -> Result<()> {
        check_summary(owner, name, Some(text))?;
        let k = key(owner, name);
        let v = text.as_bytes().to_vec();
        self.write(move |s, txn| Ok(s.summaries.put(txn, &k, &v)?))
    }

    /// The owner's summary under `name`, if one was kept.
    pub fn get_summary(&self, owner: &str, name: &str) -> Result<Option<String>> {
        check_summary(owner, name, None)?;
        let k = key(owner, name);
        self.read(|txn| {
            self.summaries
                .get(txn, &k)?
                .map(|v| {
                    String::from_utf8(v.to_vec())
                        .map_err(|_| Error::Format("a kept summary is not UTF-8".into()))
                })
                .transpose()
        })
    }
}
