//! The store's operations on threads, and the record plumbing every operation shares (loads,
//! reference counts, turn keys). Appends, histories, responses and maintenance have their own
//! modules. Each operation runs in one LMDB transaction; writes check every invariant inside
//! their transaction, so concurrent writers (threads or processes) cannot break them.

use std::ops::Bound;

use heed::{RoTxn, RwTxn, WithoutTls};

use super::decide;
use super::keys;
use super::records::{self, from_json, to_json};
use super::turn::{self, NewTurn, TurnView};
use super::*;

pub(super) use super::decide::{response_not_found, thread_not_found, turn_not_found};

/// A new turn's key: a 48-bit time field (big-endian) over 80 random bits. The time field is the
/// clock's Unix ms, or one more than the parent's time field when that is not below the clock,
/// so a child's key is always above its parent's and keys grow along every conversation: the
/// turns of one conversation sit close together in the B-tree, in order, and a history walk
/// steps backwards through them (see `walk_records`). The 80 random bits keep ids unguessable.
/// What every write checks of the turns it is given: their size, and that tool data is a JSON
/// object.
pub fn check_turns(turns: &[NewTurn]) -> Result<()> {
    for (i, t) in turns.iter().enumerate() {
        let size = t.text_len();
        if size > MAX_TURN_BYTES {
            return Err(Error::LimitExceeded(format!(
                "a turn holds {size} bytes of text; the limit is {MAX_TURN_BYTES}"
            )));
        }
        if let Some(tool) = &t.tool {
            let value: serde_json::Value = serde_json::from_str(tool).map_err(|e| {
                Error::InvalidInput(format!("turns[{i}].tool is not valid JSON: {e}"))
            })?;
            if !value.is_object() {
                return Err(Error::InvalidInput(format!(
                    "turns[{i}].tool must be a JSON object"
                )));
            }
        }
    }
    Ok(())
}

pub fn new_turn_key(now: i64, parent: Option<&TurnKey>) -> TurnKey {
    const RANDOM_BITS: u32 = 80;
    const TIME_MAX: u128 = (1 << 48) - 1;
    let clock = (now.max(0) as u128).min(TIME_MAX);
    let after_parent = parent.map_or(0, |p| (u128::from_be_bytes(*p) >> RANDOM_BITS) + 1);
    let time = clock.max(after_parent).min(TIME_MAX);
    let random = u128::from_be_bytes(ids::random_bits()) & ((1 << RANDOM_BITS) - 1);
    ((time << RANDOM_BITS) | random).to_be_bytes()
}

/// How many entries below the last turn a history walk looks for its parent before it searches
/// the B-tree afresh: 16 measured best for threads written alone and interleaved with 3 to 15
/// others (0 to 64 tried).
pub(super) const NEARBY: usize = 16;

pub(super) fn opt_turn_key(text: &Option<String>) -> Result<Option<TurnKey>> {
    text.as_deref().map(ids::parse_turn_id).transpose()
}

impl Store {
    // ---- record access inside a transaction -----------------------------------------------

    pub(super) fn load_thread(
        &self,
        txn: &RoTxn<'_, WithoutTls>,
        owner: &str,
        id: &str,
        now: i64,
    ) -> Result<ThreadRecord> {
        ids::validate_owner(owner)?;
        ids::validate_thread_id(id)?;
        let raw = self
            .threads
            .get(txn, &keys::thread(owner, id))?
            .ok_or_else(|| thread_not_found(id))?;
        let t: ThreadRecord = from_json(raw, "thread")?;
        if self.retention.thread_expired(&t, now) {
            return Err(thread_not_found(id));
        }
        Ok(t)
    }

    pub(super) fn load_response(
        &self,
        txn: &RoTxn<'_, WithoutTls>,
        owner: &str,
        id: &str,
        now: i64,
    ) -> Result<ResponseRecord> {
        ids::validate_owner(owner)?;
        ids::validate_response_id(id)?;
        let raw = self
            .responses
            .get(txn, id.as_bytes())?
            .ok_or_else(|| response_not_found(id))?;
        let r: ResponseRecord = from_json(raw, "response")?;
        // Another tenant's response reads exactly like a missing one.
        if r.owner != owner || self.retention.response_expired(&r, now) {
            return Err(response_not_found(id));
        }
        Ok(r)
    }

    pub(super) fn load_turn<'t>(
        &self,
        txn: &'t RoTxn<'_, WithoutTls>,
        key: &TurnKey,
    ) -> Result<TurnView<'t>> {
        let raw = self
            .turns
            .get(txn, key)?
            .ok_or_else(|| turn_not_found(key))?;
        turn::parse(*key, raw)
    }

    pub(super) fn put_thread(&self, txn: &mut RwTxn<'_>, t: &ThreadRecord) -> Result<()> {
        self.threads
            .put(txn, &keys::thread(&t.owner, &t.id), &to_json(t)?)?;
        Ok(())
    }

    pub(super) fn index_thread(&self, txn: &mut RwTxn<'_>, t: &ThreadRecord) -> Result<()> {
        let k = keys::activity(&t.owner, t.visible, t.last_activity_ms, &t.id);
        self.activity.put(txn, &k, &[])?;
        Ok(())
    }

    pub(super) fn unindex_thread(&self, txn: &mut RwTxn<'_>, t: &ThreadRecord) -> Result<()> {
        let k = keys::activity(&t.owner, t.visible, t.last_activity_ms, &t.id);
        self.activity.delete(txn, &k)?;
        Ok(())
    }

    pub(super) fn refcount(&self, txn: &RoTxn<'_, WithoutTls>, key: &TurnKey) -> Result<u32> {
        Ok(self
            .refs
            .get(txn, key)?
            .and_then(|v| <[u8; 4]>::try_from(v).ok())
            .map(u32::from_le_bytes)
            .unwrap_or(0))
    }

    /// A turn's reference count is its children plus the threads and responses pointing at it.
    pub(super) fn retain(&self, txn: &mut RwTxn<'_>, key: &TurnKey) -> Result<()> {
        let n = self.refcount(txn, key)? + 1;
        self.refs.put(txn, key, &n.to_le_bytes())?;
        Ok(())
    }

    /// Drops one reference and deletes every turn, walking rootwards, that nothing reaches any
    /// more. Returns how many turns were deleted.
    pub(super) fn release(&self, txn: &mut RwTxn<'_>, key: &TurnKey) -> Result<u64> {
        let mut deleted = 0;
        let mut current = Some(*key);
        while let Some(key) = current {
            let n = self.refcount(txn, &key)?.saturating_sub(1);
            if n > 0 {
                self.refs.put(txn, &key, &n.to_le_bytes())?;
                break;
            }
            let view = self.load_turn(txn, &key)?;
            let (parent, owner) = (view.parent, view.owner.to_owned());
            if let Some(p) = &parent {
                self.unindex_child(txn, &owner, p, &key)?;
            }
            self.turns.delete(txn, &key)?;
            self.refs.delete(txn, &key)?;
            let start = keys::token_count(&key, 0);
            let end = keys::token_count(&key, u64::MAX);
            self.token_counts.delete_range(
                txn,
                &(Bound::Included(&start[..]), Bound::Included(&end[..])),
            )?;
            deleted += 1;
            current = parent;
        }
        Ok(deleted)
    }

    // ---- threads ----------------------------------------------------------------------------

    /// Creates a thread. With `exist_ok`, an existing live thread of that id is returned as is.
    pub fn create_thread(
        &self,
        owner: &str,
        id: Option<&str>,
        metadata: Option<&str>,
        visible: bool,
        exist_ok: bool,
    ) -> Result<ThreadRecord> {
        ids::validate_owner(owner)?;
        if let Some(id) = id {
            ids::validate_thread_id(id)?;
        }
        let metadata = records::normalize_metadata(metadata)?;
        let owner = owner.to_owned();
        let id = id.map(str::to_owned);
        self.write(move |s, txn| {
            let now = now_ms();
            let id = match &id {
                Some(id) => id.clone(),
                None => ids::new_thread_id(),
            };
            let key = keys::thread(&owner, &id);
            if let Some(raw) = s.threads.get(txn, &key)? {
                let old: ThreadRecord = from_json(raw, "thread")?;
                if !s.retention.thread_expired(&old, now) {
                    decide::check_create(&id, exist_ok, true, false)?;
                    return Ok(old);
                }
                // An expired thread is gone as far as readers know; reclaim it (leaving its
                // tombstone) before deciding on reuse.
                s.remove_thread(txn, &old)?;
            }
            let tombstoned = s.tombstones.get(txn, &key)?.is_some();
            decide::check_create(&id, exist_ok, false, tombstoned)?;
            if tombstoned {
                s.tombstones.delete(txn, &key)?;
            }
            let t = ThreadRecord {
                id,
                owner: owner.clone(),
                head: None,
                metadata: metadata.clone(),
                state: ThreadState::Open,
                visible,
                created_ms: now,
                last_activity_ms: now,
                message_count: 0,
            };
            s.put_thread(txn, &t)?;
            s.index_thread(txn, &t)?;
            Ok(t)
        })
    }

    pub fn get_thread(&self, owner: &str, id: &str) -> Result<ThreadRecord> {
        self.read(|txn| self.load_thread(txn, owner, id, now_ms()))
    }

    /// One owner's live threads, most recently active first.
    pub fn list_threads(
        &self,
        owner: &str,
        visible: bool,
        limit: usize,
        after: Option<&str>,
    ) -> Result<ThreadPage> {
        ids::validate_owner(owner)?;
        decide::check_page_limit(limit)?;
        let prefix = keys::activity_prefix(owner, visible);
        let start = match after {
            None => prefix.clone(),
            Some(cursor) => {
                let (last_activity_ms, id) = keys::parse_cursor(cursor)?;
                keys::activity(owner, visible, last_activity_ms, &id)
            }
        };
        self.read(|txn| {
            let now = now_ms();
            let lower = if after.is_some() {
                Bound::Excluded(&start[..])
            } else {
                Bound::Included(&start[..])
            };
            let mut threads = Vec::new();
            let mut more = false;
            for item in self.activity.range(txn, &(lower, Bound::Unbounded))? {
                let (k, _) = item?;
                if !k.starts_with(&prefix) {
                    break;
                }
                let id = std::str::from_utf8(&k[prefix.len() + 8..])
                    .map_err(|_| Error::Format("corrupt thread index key".to_owned()))?;
                let Some(raw) = self.threads.get(txn, &keys::thread(owner, id))? else {
                    continue;
                };
                let t: ThreadRecord = from_json(raw, "thread")?;
                if self.retention.thread_expired(&t, now) {
                    continue;
                }
                if threads.len() == limit {
                    more = true;
                    break;
                }
                threads.push(t);
            }
            let next_cursor = match threads.last() {
                Some(t) if more => Some(keys::cursor(t.last_activity_ms, &t.id)),
                _ => None,
            };
            Ok(ThreadPage {
                threads,
                next_cursor,
            })
        })
    }

    pub fn update_thread(
        &self,
        owner: &str,
        id: &str,
        metadata: Option<&str>,
        state: Option<ThreadState>,
    ) -> Result<ThreadRecord> {
        let metadata = metadata
            .map(|m| records::normalize_metadata(Some(m)))
            .transpose()?;
        let owner = owner.to_owned();
        let id = id.to_owned();
        self.write(move |s, txn| {
            let mut t = s.load_thread(txn, &owner, &id, now_ms())?;
            if let Some(to) = state {
                t.state.check_transition(to)?;
                t.state = to;
            }
            if let Some(m) = &metadata {
                decide::check_metadata_change(&id, t.state, state.is_some())?;
                t.metadata = m.clone();
            }
            s.put_thread(txn, &t)?;
            Ok(t)
        })
    }

    pub fn delete_thread(&self, owner: &str, id: &str) -> Result<()> {
        let owner = owner.to_owned();
        let id = id.to_owned();
        self.write(move |s, txn| {
            let t = s.load_thread(txn, &owner, &id, now_ms())?;
            s.remove_thread(txn, &t)?;
            Ok(())
        })
    }

    /// Removes a thread (deleted or expired). One that held messages leaves a tombstone under
    /// its id; an empty one has no history to lose, so its id stays free.
    pub(super) fn remove_thread(&self, txn: &mut RwTxn<'_>, t: &ThreadRecord) -> Result<u64> {
        let key = keys::thread(&t.owner, &t.id);
        self.threads.delete(txn, &key)?;
        if t.head.is_some() {
            self.tombstones.put(txn, &key, &now_ms().to_le_bytes())?;
        }
        self.unindex_thread(txn, t)?;
        self.drop_branches(txn, &t.owner, &t.id)?;
        match opt_turn_key(&t.head)? {
            Some(head) => self.release(txn, &head),
            None => Ok(0),
        }
    }

    // ---- appends ----------------------------------------------------------------------------
}
