//! Announced responses whose generation is still running.
//!
//! A server names a response's id to its client before the first token. If the process dies
//! before the reply is stored, that id must still answer: the server records the request here
//! (an opaque payload: the inputs and where they go) before announcing the id, removes the
//! record once the response is stored, and on the next start stores every record left behind
//! as an incomplete response. Keys are owner `NUL` response id, so one tenant's records are
//! never another's.

use crate::error::{Error, Result};
use crate::ids;

use super::Store;

/// The largest payload: the inputs of one request (bodies are bounded well below this).
pub const MAX_PENDING_BYTES: usize = 64 << 20;

pub(super) fn key(owner: &str, id: &str) -> Result<Vec<u8>> {
    ids::validate_owner(owner)?;
    ids::validate_response_id(id)?;
    let mut k = Vec::with_capacity(owner.len() + 1 + id.len());
    k.extend_from_slice(owner.as_bytes());
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    Ok(k)
}

/// One record: owner, response id and payload.
pub type PendingRecord = (String, String, Vec<u8>);

impl Store {
    /// Records a running generation under its response id (replacing an earlier record).
    pub fn put_pending(&self, owner: &str, id: &str, payload: Vec<u8>) -> Result<()> {
        if payload.len() > MAX_PENDING_BYTES {
            return Err(Error::LimitExceeded(format!(
                "a pending record holds at most {MAX_PENDING_BYTES} bytes"
            )));
        }
        let k = key(owner, id)?;
        self.write(move |s, txn| Ok(s.pending.put(txn, &k, &payload)?))
    }

    /// Removes the record, if there is one.
    pub fn remove_pending(&self, owner: &str, id: &str) -> Result<()> {
        let k = key(owner, id)?;
        self.write(move |s, txn| {
            s.pending.delete(txn, &k)?;
            Ok(())
        })
    }

    /// The payload recorded for this owner's response id.
    pub fn get_pending(&self, owner: &str, id: &str) -> Result<Option<Vec<u8>>> {
        let k = key(owner, id)?;
        self.read(|txn| Ok(self.pending.get(txn, &k)?.map(<[u8]>::to_vec)))
    }

    /// Every record, in key order.
    pub fn pending(&self) -> Result<Vec<PendingRecord>> {
        self.read(|txn| {
            let mut out = Vec::new();
            for item in self.pending.iter(txn)? {
                let (k, v) = item?;
                let split = k.iter().position(|&b| b == 0).ok_or_else(|| {
                    Error::Format("a pending record's key has no owner separator".into())
                })?;
                let owner = String::from_utf8(k[..split].to_vec())
                    .map_err(|_| Error::Format("a pending record's owner is not UTF-8".into()))?;
                let id = String::from_utf8(k[split + 1..].to_vec())
                    .map_err(|_| Error::Format("a pending record's id is not UTF-8".into()))?;
                out.push((owner, id, v.to_vec()));
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::ids::new_response_id;
    use crate::store::{Store, StoreOptions};

    #[test]
    fn records_are_per_owner_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (new_response_id(), new_response_id());
        {
            let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
            s.put_pending("alice", &a, b"one".to_vec()).unwrap();
            s.put_pending("bob", &b, b"two".to_vec()).unwrap();
            assert_eq!(s.get_pending("alice", &a).unwrap(), Some(b"one".to_vec()));
            assert_eq!(s.get_pending("bob", &a).unwrap(), None);
        }
        let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let mut all = s.pending().unwrap();
        all.sort();
        assert_eq!(
            all,
            vec![
                ("alice".into(), a.clone(), b"one".to_vec()),
                ("bob".into(), b.clone(), b"two".to_vec())
            ]
        );
        s.remove_pending("alice", &a).unwrap();
        s.remove_pending("alice", &a).unwrap(); // removing twice is fine
        assert_eq!(s.pending().unwrap().len(), 1);
        assert!(s.put_pending("", &a, vec![]).is_err());
        assert!(s.put_pending("alice", "resp_bad", vec![]).is_err());
    }
}
