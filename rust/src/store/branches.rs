//! The branches recorded for a thread: replies stored outside it (after one of its turns, or
//! as a new first message) that the thread's tree shows. Turns keep only their parent links,
//! and a reply that rewrites the first message has no parent at all, so the thread records
//! them. Keys are owner NUL thread id NUL response id (owners and thread ids never hold NUL);
//! the value is the key of the turn the branch continues, empty for a new first message. A
//! thread's records go with it when it is deleted or expires.

use heed::RwTxn;

use crate::error::{Error, Result};
use crate::ids::{self, TurnKey};

use super::{keys, now_ms, Store};

/// Branches one thread may record.
pub const MAX_THREAD_BRANCHES: usize = 10_000;

fn prefix(owner: &str, thread_id: &str) -> Vec<u8> {
    let mut k = keys::thread(owner, thread_id);
    k.push(0);
    k
}

fn key(owner: &str, thread_id: &str, response_id: &str) -> Vec<u8> {
    let mut k = prefix(owner, thread_id);
    k.extend_from_slice(response_id.as_bytes());
    k
}

/// A recorded branch: the response that holds it, and the turn it continues (None: it
/// starts a new first message).
pub type BranchRecord = (String, Option<TurnKey>);

impl Store {
    /// Records `response_id` as a branch of the thread, continuing `after` (None: a new first
    /// message), and removes the records of `replaces` (branches it continues or that are
    /// gone), in one transaction. NotFound for a missing or expired thread.
    pub fn add_branch(
        &self,
        owner: &str,
        thread_id: &str,
        response_id: &str,
        after: Option<TurnKey>,
        replaces: &[String],
    ) -> Result<()> {
        ids::validate_response_id(response_id)?;
        for r in replaces {
            ids::validate_response_id(r)?;
        }
        let (owner, thread_id) = (owner.to_owned(), thread_id.to_owned());
        let response_id = response_id.to_owned();
        let replaces = replaces.to_vec();
        self.write(move |s, txn| {
            s.load_thread(txn, &owner, &thread_id, now_ms())?;
            for r in &replaces {
                s.branches.delete(txn, &key(&owner, &thread_id, r))?;
            }
            let new = key(&owner, &thread_id, &response_id);
            let held = s
                .branches
                .prefix_iter(txn, &prefix(&owner, &thread_id))?
                .count();
            let recorded = s.branches.get(txn, &new)?.is_some();
            super::decide::check_branch_room(&thread_id, held, !recorded)?;
            let value: &[u8] = after.as_ref().map_or(&[], |k| &k[..]);
            s.branches.put(txn, &new, value)?;
            Ok(())
        })
    }

    /// The thread's recorded branches, by response id. NotFound for a missing or expired
    /// thread.
    pub fn branches(&self, owner: &str, thread_id: &str) -> Result<Vec<BranchRecord>> {
        self.read(|txn| {
            self.load_thread(txn, owner, thread_id, now_ms())?;
            let start = prefix(owner, thread_id);
            let mut out = Vec::new();
            for item in self.branches.prefix_iter(txn, &start)? {
                let (k, v) = item?;
                let corrupt = || Error::Format("corrupt branch record".to_owned());
                let id = std::str::from_utf8(&k[start.len()..]).map_err(|_| corrupt())?;
                let after = match v.len() {
                    0 => None,
                    16 => Some(TurnKey::try_from(v).map_err(|_| corrupt())?),
                    _ => return Err(corrupt()),
                };
                out.push((id.to_owned(), after));
            }
            Ok(out)
        })
    }

    /// Drops every branch record of a thread that is going away.
    pub(super) fn drop_branches(
        &self,
        txn: &mut RwTxn<'_>,
        owner: &str,
        thread_id: &str,
    ) -> Result<()> {
        let start = prefix(owner, thread_id);
        let mut iter = self.branches.prefix_iter_mut(txn, &start)?;
        while iter.next().transpose()?.is_some() {
            // SAFETY: the key and value read by `next` are not used after the deletion.
            unsafe { iter.del_current()? };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::error::Error;
    use crate::ids::new_response_id;
    use crate::store::{Store, StoreOptions};

    #[test]
    fn branches_are_recorded_replaced_and_go_with_their_thread() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
        s.create_thread("alice", Some("t"), None, true, false)
            .unwrap();
        s.create_thread("alice", Some("t2"), None, true, false)
            .unwrap();
        let (a, b) = (new_response_id(), new_response_id());
        let turn = [7u8; 16];
        s.add_branch("alice", "t", &a, Some(turn), &[]).unwrap();
        s.add_branch("alice", "t2", &b, None, &[]).unwrap();
        assert_eq!(
            s.branches("alice", "t").unwrap(),
            vec![(a.clone(), Some(turn))]
        );
        // Another owner sees no thread at all.
        assert!(matches!(s.branches("bob", "t"), Err(Error::NotFound(_))));
        assert!(matches!(
            s.add_branch("bob", "t", &b, None, &[]),
            Err(Error::NotFound(_))
        ));
        // Continuing a branch replaces its record.
        s.add_branch("alice", "t", &b, None, std::slice::from_ref(&a))
            .unwrap();
        assert_eq!(s.branches("alice", "t").unwrap(), vec![(b.clone(), None)]);
        // Deleting the thread drops its records, and only its.
        s.delete_thread("alice", "t").unwrap();
        s.create_thread("alice", Some("t"), None, true, false)
            .unwrap();
        assert_eq!(s.branches("alice", "t").unwrap(), vec![]);
        assert_eq!(s.branches("alice", "t2").unwrap(), vec![(b, None)]);
        assert!(s.add_branch("alice", "t", "resp_bad", None, &[]).is_err());
    }
}
