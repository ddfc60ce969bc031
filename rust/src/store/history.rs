//! Reading a history: the turns from an anchor back to its first message.

use std::ops::Bound;

use heed::{RoTxn, WithoutTls};

use super::keys;
use super::ops::{opt_turn_key, turn_not_found, NEARBY};
use super::turn::{self, TurnView};
use super::*;

impl Store {
    /// The newest turn of the history that `anchor` names (none for an empty one).
    fn resolve_history_start(
        &self,
        txn: &RoTxn<'_, WithoutTls>,
        owner: &str,
        anchor: &Anchor,
    ) -> Result<Option<TurnKey>> {
        let now = now_ms();
        match anchor {
            Anchor::Root => Ok(None),
            Anchor::Thread(id) => opt_turn_key(&self.load_thread(txn, owner, id, now)?.head),
            Anchor::Response(id) => Ok(Some(ids::parse_turn_id(
                &self.load_response(txn, owner, id, now)?.last_turn,
            )?)),
            Anchor::Turn(key) => {
                ids::validate_owner(owner)?;
                if self.load_turn(txn, key)?.owner != owner {
                    return Err(turn_not_found(key));
                }
                Ok(Some(*key))
            }
        }
    }

    /// Calls `f` with the history ending at `anchor`, oldest first, borrowed straight from the
    /// memory map inside one read transaction.
    pub fn with_history<R>(
        &self,
        owner: &str,
        anchor: &Anchor,
        f: impl Fn(&[TurnView<'_>]) -> Result<R>,
    ) -> Result<R> {
        self.read(|txn| {
            let start = self.resolve_history_start(txn, owner, anchor)?;
            let views = self.walk(txn, start)?;
            f(&views)
        })
    }

    /// Like `with_history`, and also hands `f` each turn's cached token count under
    /// `fingerprint` (None where not cached yet), read in the same transaction.
    pub fn with_history_counts<R>(
        &self,
        owner: &str,
        anchor: &Anchor,
        fingerprint: u64,
        f: impl Fn(&[TurnView<'_>], &[Option<u32>]) -> Result<R>,
    ) -> Result<R> {
        self.read(|txn| {
            let start = self.resolve_history_start(txn, owner, anchor)?;
            let views = self.walk(txn, start)?;
            let counts = views
                .iter()
                .map(|v| {
                    Ok(self
                        .token_counts
                        .get(txn, &keys::token_count(&v.id, fingerprint))?
                        .and_then(|b| <[u8; 4]>::try_from(b).ok())
                        .map(u32::from_le_bytes))
                })
                .collect::<Result<Vec<_>>>()?;
            f(&views, &counts)
        })
    }

    /// Calls `visit` with the id and raw record of every turn of the history ending at `start`,
    /// newest first. A child's key is above its parent's (`new_turn_key`), so the parent is
    /// usually a few entries below its child in the B-tree: the walk steps backwards with one
    /// cursor and searches afresh only when the parent is not among the next `NEARBY` entries.
    fn walk_records<'t>(
        &self,
        txn: &'t RoTxn<'_, WithoutTls>,
        start: Option<TurnKey>,
        limit: usize,
        mut visit: impl FnMut(TurnKey, &'t [u8]),
    ) -> Result<()> {
        let mut cursor = None;
        let mut next = start;
        let mut walked = 0usize;
        while let Some(key) = next {
            if walked == limit {
                break;
            }
            let mut found = None;
            if let Some(it) = cursor.as_mut() {
                for _ in 0..NEARBY {
                    let Some(item) = Iterator::next(it) else {
                        break;
                    };
                    let (k, v): (&[u8], &[u8]) = item?;
                    if k <= &key[..] {
                        if k == key {
                            found = Some(v);
                        }
                        break;
                    }
                }
            }
            let raw = match found {
                Some(raw) => raw,
                None => {
                    let mut it = self
                        .turns
                        .rev_range(txn, &(Bound::Unbounded, Bound::Included(&key[..])))?;
                    match it.next().transpose()? {
                        Some((k, v)) if k == key => {
                            cursor = Some(it);
                            v
                        }
                        _ => return Err(turn_not_found(&key)),
                    }
                }
            };
            walked += 1;
            if walked > MAX_THREAD_MESSAGES as usize {
                return Err(Error::Format(
                    "turn chain is longer than any valid history".into(),
                ));
            }
            next = turn::parent_of(&key, raw)?;
            visit(key, raw);
        }
        Ok(())
    }

    /// The history ending at `start` as views into the map, oldest first.
    fn walk<'t>(
        &self,
        txn: &'t RoTxn<'_, WithoutTls>,
        start: Option<TurnKey>,
    ) -> Result<Vec<TurnView<'t>>> {
        let mut records = Vec::new();
        self.walk_records(txn, start, usize::MAX, |key, raw| records.push((key, raw)))?;
        records
            .iter()
            .rev()
            .map(|&(key, raw)| turn::parse(key, raw))
            .collect()
    }

    /// The history ending at `anchor` as raw turn records copied once into one buffer: the
    /// form the Python layer turns into `Turn` objects after the read transaction ends.
    pub fn history_records(&self, owner: &str, anchor: &Anchor) -> Result<HistoryBuffer> {
        self.history_tail(owner, anchor, usize::MAX)
    }

    /// The newest `limit` turns of the history ending at `anchor`, oldest first: a page of a
    /// long conversation costs `limit` steps, not the whole walk.
    pub fn history_tail(
        &self,
        owner: &str,
        anchor: &Anchor,
        limit: usize,
    ) -> Result<HistoryBuffer> {
        self.read(|txn| {
            let start = self.resolve_history_start(txn, owner, anchor)?;
            let mut records = Vec::new();
            self.walk_records(txn, start, limit, |key, raw| records.push((key, raw)))?;
            let mut bytes = Vec::with_capacity(records.iter().map(|(_, raw)| raw.len()).sum());
            let mut spans = Vec::with_capacity(records.len());
            for (key, raw) in records.iter().rev() {
                spans.push((*key, bytes.len(), raw.len()));
                bytes.extend_from_slice(raw);
            }
            Ok(HistoryBuffer { bytes, spans })
        })
    }
}

/// Raw turn records of one history, copied once out of the map; spans are (id, offset, len).
#[derive(Debug, Clone, Default)]
pub struct HistoryBuffer {
    pub bytes: Vec<u8>,
    pub spans: Vec<(TurnKey, usize, usize)>,
}

impl HistoryBuffer {
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    pub fn view(&self, i: usize) -> Result<TurnView<'_>> {
        let (key, at, len) = self.spans[i];
        turn::parse(key, &self.bytes[at..at + len])
    }

    /// Like `view`, leaving the text's UTF-8 check to the caller.
    pub fn raw(&self, i: usize) -> Result<turn::RawTurn<'_>> {
        let (key, at, len) = self.spans[i];
        turn::parse_raw(key, &self.bytes[at..at + len])
    }
}
