//! The children index: each turn's continuations, per owner, so a thread's tree finds every
//! branch made after one of its turns, whichever route made it (the Responses API's
//! `previous_response_id`, a turn anchor, a rebase). Keys are owner NUL parent key (16 bytes)
//! child key (16 bytes), values empty (owners never hold NUL). An entry is written in the
//! transaction that writes its child and removed in the one that deletes it; a parent outlives
//! its children (each child holds a reference to it), so no entry names a deleted parent.

use heed::RwTxn;

use crate::error::{Error, Result};
use crate::ids::TurnKey;

use super::{turn, Db, Store};

fn prefix(owner: &str, parent: &TurnKey) -> Vec<u8> {
    let mut k = Vec::with_capacity(owner.len() + 1 + 32);
    k.extend_from_slice(owner.as_bytes());
    k.push(0);
    k.extend_from_slice(parent);
    k
}

fn key(owner: &str, parent: &TurnKey, child: &TurnKey) -> Vec<u8> {
    let mut k = prefix(owner, parent);
    k.extend_from_slice(child);
    k
}

/// Set once every turn of the store is in the index: stores written before it existed are
/// indexed once, when first opened by code that keeps it.
const INDEXED: &[u8] = b"children_indexed";

/// Indexes every turn of a store opened for the first time since the index was added.
pub(super) fn backfill(txn: &mut RwTxn<'_>, meta: Db, turns: Db, children: Db) -> Result<()> {
    if meta.get(txn, INDEXED)?.is_some() {
        return Ok(());
    }
    let mut entries = Vec::new();
    for item in turns.iter(txn)? {
        let (k, raw) = item?;
        let id: TurnKey = k
            .try_into()
            .map_err(|_| Error::Format("turn key is not 16 bytes".into()))?;
        let view = turn::parse(id, raw)?;
        if let Some(p) = view.parent {
            entries.push(key(view.owner, &p, &id));
        }
    }
    for k in entries {
        children.put(txn, &k, &[])?;
    }
    meta.put(txn, INDEXED, &[1])?;
    Ok(())
}

impl Store {
    /// Records `child` as a continuation of `parent` (in the transaction that writes it).
    pub(super) fn index_child(
        &self,
        txn: &mut RwTxn<'_>,
        owner: &str,
        parent: &TurnKey,
        child: &TurnKey,
    ) -> Result<()> {
        self.children.put(txn, &key(owner, parent, child), &[])?;
        Ok(())
    }

    /// Forgets `child` (in the transaction that deletes it).
    pub(super) fn unindex_child(
        &self,
        txn: &mut RwTxn<'_>,
        owner: &str,
        parent: &TurnKey,
        child: &TurnKey,
    ) -> Result<()> {
        self.children.delete(txn, &key(owner, parent, child))?;
        Ok(())
    }

    /// The continuations of one of the owner's turns, by key (in creation order to the
    /// millisecond: keys begin with their creation time). Empty for a turn without any,
    /// another owner's or a missing one.
    pub fn children(&self, owner: &str, parent: &TurnKey) -> Result<Vec<TurnKey>> {
        Ok(self
            .children_of(owner, std::slice::from_ref(parent))?
            .pop()
            .unwrap_or_default())
    }

    /// The continuations of each of `parents` (as `children`), in one read transaction: a
    /// tree walk asks for a whole level at once.
    pub fn children_of(&self, owner: &str, parents: &[TurnKey]) -> Result<Vec<Vec<TurnKey>>> {
        self.read(|txn| {
            let mut out = Vec::with_capacity(parents.len());
            for parent in parents {
                let start = prefix(owner, parent);
                let mut found = Vec::new();
                for item in self.children.prefix_iter(txn, &start)? {
                    let (k, _) = item?;
                    let child = TurnKey::try_from(&k[start.len()..])
                        .map_err(|_| Error::Format("corrupt children index entry".to_owned()))?;
                    found.push(child);
                }
                out.push(found);
            }
            Ok(out)
        })
    }
}
