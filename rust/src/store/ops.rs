//! The store's operations. Each runs in one LMDB transaction; writes check every invariant
//! inside their transaction, so concurrent writers (threads or processes) cannot break them.

use std::ops::Bound;

use heed::{RoTxn, RwTxn, WithoutTls};

use super::keys;
use super::records::{self, from_json, to_json};
use super::turn::{self, NewTurn, TurnView};
use super::*;

fn thread_not_found(id: &str) -> Error {
    Error::NotFound(format!("thread {id:?} not found"))
}

fn response_not_found(id: &str) -> Error {
    Error::NotFound(format!("response {id:?} not found"))
}

pub(super) fn turn_not_found(key: &TurnKey) -> Error {
    Error::NotFound(format!("turn {:?} not found", ids::turn_id_string(key)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A new turn's key: a 48-bit time field (big-endian) over 80 random bits. The time field is the
/// clock's Unix ms, or one more than the parent's time field when that is not below the clock,
/// so a child's key is always above its parent's and keys grow along every conversation: the
/// turns of one conversation sit close together in the B-tree, in order, and a history walk
/// steps backwards through them (see `walk_records`). The 80 random bits keep ids unguessable.
/// What every write checks of the turns it is given: their size, and that tool data is a JSON
/// object.
pub(super) fn check_turns(turns: &[NewTurn]) -> Result<()> {
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

pub(super) fn new_turn_key(now: i64, parent: Option<&TurnKey>) -> TurnKey {
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
const NEARBY: usize = 16;

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

    fn load_response(
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

    fn refcount(&self, txn: &RoTxn<'_, WithoutTls>, key: &TurnKey) -> Result<u32> {
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
            let parent = self.load_turn(txn, &key)?.parent;
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
                    if exist_ok {
                        return Ok(old);
                    }
                    return Err(Error::StateConflict(format!(
                        "thread {id:?} already exists"
                    )));
                }
                // An expired thread is gone as far as readers know; reclaim it (leaving its
                // tombstone) before deciding on reuse.
                s.remove_thread(txn, &old)?;
            }
            // "Create if missing" must not quietly revive a deleted or expired conversation
            // under its old id (the client would continue a thread that lost its history);
            // an explicit create may reuse the id.
            if s.tombstones.get(txn, &key)?.is_some() {
                if exist_ok {
                    return Err(Error::NotFound(format!(
                        "thread {id:?} was deleted or expired"
                    )));
                }
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
        if limit == 0 || limit > 1000 {
            return Err(Error::InvalidInput(format!(
                "limit must be between 1 and 1000, got {limit}"
            )));
        }
        let prefix = keys::activity_prefix(owner, visible);
        let start = match after {
            None => prefix.clone(),
            Some(cursor) => {
                let tail = unhex(cursor)
                    .filter(|t| t.len() > 8)
                    .ok_or_else(|| Error::InvalidInput(format!("invalid cursor {cursor:?}")))?;
                let mut k = prefix.clone();
                k.extend_from_slice(&tail);
                k
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
            let mut last_key: Option<Vec<u8>> = None;
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
                last_key = Some(k[prefix.len()..].to_vec());
                threads.push(t);
            }
            let next_cursor = if more {
                last_key.map(|k| hex(&k))
            } else {
                None
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
                if t.state == ThreadState::Archived && state.is_none() {
                    return Err(Error::StateConflict(format!(
                        "thread {id:?} is archived; its metadata cannot change"
                    )));
                }
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
    fn remove_thread(&self, txn: &mut RwTxn<'_>, t: &ThreadRecord) -> Result<u64> {
        let key = keys::thread(&t.owner, &t.id);
        self.threads.delete(txn, &key)?;
        if t.head.is_some() {
            self.tombstones.put(txn, &key, &now_ms().to_le_bytes())?;
        }
        self.unindex_thread(txn, t)?;
        match opt_turn_key(&t.head)? {
            Some(head) => self.release(txn, &head),
            None => Ok(0),
        }
    }

    // ---- appends ----------------------------------------------------------------------------

    /// Appends `turns` after `anchor` and, when given, records them under a new response whose
    /// last `output_count` turns are its output.
    pub fn append(
        &self,
        owner: &str,
        anchor: &Anchor,
        turns: &[NewTurn],
        response: Option<&NewResponse>,
        options: &AppendOptions,
    ) -> Result<Appended> {
        ids::validate_owner(owner)?;
        if turns.is_empty() {
            return Err(Error::InvalidInput(
                "nothing to append: turns is empty".to_owned(),
            ));
        }
        check_turns(turns)?;
        let response_metadata = match response {
            Some(r) => {
                if r.output_count as usize > turns.len() {
                    return Err(Error::InvalidInput(format!(
                        "output_count {} exceeds the {} turns appended",
                        r.output_count,
                        turns.len()
                    )));
                }
                if let Some(id) = &r.id {
                    ids::validate_response_id(id)?;
                }
                Some(records::normalize_metadata(r.metadata.as_deref())?)
            }
            None => None,
        };
        if response.is_none() && !matches!(anchor, Anchor::Thread(_)) {
            return Err(Error::InvalidInput(
                "turns appended outside a thread must be recorded under a response".to_owned(),
            ));
        }
        let owner = owner.to_owned();
        let anchor = anchor.clone();
        let turns = turns.to_vec();
        let response = response.cloned();
        let options = options.clone();
        self.write(move |s, txn| {
            let (owner, turns) = (owner.as_str(), turns.as_slice());
            let now = now_ms();
            let mut thread = None;
            let mut previous_response_id = None;
            let (parent, depth) = match &anchor {
                Anchor::Root => (None, 0),
                Anchor::Thread(id) => {
                    let t = s.load_thread(txn, owner, id, now)?;
                    if t.state != ThreadState::Open {
                        return Err(Error::StateConflict(format!(
                            "thread {id:?} is {} and accepts no new messages",
                            t.state.as_str()
                        )));
                    }
                    let head = opt_turn_key(&t.head)?;
                    if let Some(expected) = options.expected_head {
                        if expected != head {
                            return Err(Error::StateConflict(format!(
                                "thread {id:?} moved on: its head is no longer the expected turn"
                            )));
                        }
                    }
                    let depth = t.message_count;
                    thread = Some(t);
                    (head, depth)
                }
                Anchor::Response(id) => {
                    let r = s.load_response(txn, owner, id, now)?;
                    s.retention.check_anchor(&r, now, options.anchor_window)?;
                    let key = ids::parse_turn_id(&r.last_turn)?;
                    let depth = s.load_turn(txn, &key)?.depth;
                    previous_response_id = Some(r.id);
                    (Some(key), depth)
                }
                Anchor::Turn(key) => {
                    let view = s.load_turn(txn, key)?;
                    if view.owner != owner {
                        return Err(turn_not_found(key));
                    }
                    (Some(*key), view.depth)
                }
            };
            let new_depth = depth as u64 + turns.len() as u64;
            if new_depth > MAX_THREAD_MESSAGES as u64 {
                return Err(Error::LimitExceeded(format!(
                    "a conversation may hold at most {MAX_THREAD_MESSAGES} messages; it has {depth} and {} more were sent",
                    turns.len()
                )));
            }

            let turn_ids = s.write_turns(txn, owner, parent, depth, turns, now)?;
            let last = *turn_ids.last().ok_or_else(|| {
                Error::InvalidInput("nothing to append: turns is empty".to_owned())
            })?;

            if let Some(mut t) = thread.take() {
                s.unindex_thread(txn, &t)?;
                s.retain(txn, &last)?;
                if let Some(old) = opt_turn_key(&t.head)? {
                    s.release(txn, &old)?;
                }
                t.head = Some(ids::turn_id_string(&last));
                t.message_count = new_depth as u32;
                t.last_activity_ms = now.max(t.last_activity_ms);
                s.put_thread(txn, &t)?;
                s.index_thread(txn, &t)?;
                thread = Some(t);
            }

            let record = match (&response, &response_metadata) {
                (Some(r), Some(metadata)) => {
                    let id = match &r.id {
                        // A reused id would let one response overwrite another's record.
                        Some(id) if s.responses.get(txn, id.as_bytes())?.is_some() => {
                            return Err(Error::StateConflict(format!(
                                "response {id} already exists"
                            )));
                        }
                        Some(id) => id.clone(),
                        None => ids::new_response_id(),
                    };
                    let rec = ResponseRecord {
                        id: id.clone(),
                        owner: owner.to_owned(),
                        status: r.status,
                        model: r.model.clone(),
                        last_turn: ids::turn_id_string(&last),
                        parent_turn: parent.as_ref().map(ids::turn_id_string),
                        input_count: turns.len() as u32 - r.output_count,
                        output_count: r.output_count,
                        thread_id: thread.as_ref().map(|t| t.id.clone()),
                        previous_response_id: previous_response_id.clone(),
                        usage: r.usage,
                        error: r.error.clone(),
                        created_ms: now,
                        metadata: metadata.clone(),
                    };
                    s.responses.put(txn, id.as_bytes(), &to_json(&rec)?)?;
                    s.retain(txn, &last)?;
                    Some(rec)
                }
                _ => None,
            };
            Ok(Appended {
                turn_ids,
                response: record,
                thread,
            })
        })
    }

    /// Writes `turns` as a chain after `parent` (at `depth`), each holding a reference to its
    /// parent; returns their keys. The last one is referenced by nothing yet.
    pub(super) fn write_turns(
        &self,
        txn: &mut RwTxn<'_>,
        owner: &str,
        parent: Option<TurnKey>,
        depth: u32,
        turns: &[NewTurn],
        now: i64,
    ) -> Result<Vec<TurnKey>> {
        let mut turn_ids = Vec::with_capacity(turns.len());
        let mut prev = parent;
        for (i, t) in turns.iter().enumerate() {
            let key = loop {
                let k = new_turn_key(now, prev.as_ref());
                if self.turns.get(txn, &k)?.is_none() {
                    break k;
                }
            };
            let record = turn::encode(prev.as_ref(), depth + i as u32 + 1, now, owner, t);
            self.turns.put(txn, &key, &record)?;
            if let Some(p) = &prev {
                self.retain(txn, p)?;
            }
            turn_ids.push(key);
            prev = Some(key);
        }
        Ok(turn_ids)
    }

    // ---- history ----------------------------------------------------------------------------

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

    // ---- responses --------------------------------------------------------------------------

    pub fn get_response(&self, owner: &str, id: &str) -> Result<ResponseRecord> {
        self.read(|txn| self.load_response(txn, owner, id, now_ms()))
    }

    pub fn delete_response(&self, owner: &str, id: &str) -> Result<()> {
        let owner = owner.to_owned();
        let id = id.to_owned();
        self.write(move |s, txn| {
            let r = s.load_response(txn, &owner, &id, now_ms())?;
            s.responses.delete(txn, r.id.as_bytes())?;
            s.release(txn, &ids::parse_turn_id(&r.last_turn)?)?;
            Ok(())
        })
    }

    // ---- token counts -----------------------------------------------------------------------

    /// Caches token counts of turns under a tokenizer fingerprint. Turns that no longer exist
    /// are skipped.
    pub fn set_token_counts(&self, fingerprint: u64, counts: &[(TurnKey, u32)]) -> Result<()> {
        let counts = counts.to_vec();
        self.write(move |s, txn| {
            for (key, n) in &counts {
                if s.turns.get(txn, key)?.is_some() {
                    s.token_counts.put(
                        txn,
                        &keys::token_count(key, fingerprint),
                        &n.to_le_bytes(),
                    )?;
                }
            }
            Ok(())
        })
    }

    pub fn token_counts(&self, fingerprint: u64, turns: &[TurnKey]) -> Result<Vec<Option<u32>>> {
        self.read(|txn| {
            turns
                .iter()
                .map(|key| {
                    Ok(self
                        .token_counts
                        .get(txn, &keys::token_count(key, fingerprint))?
                        .and_then(|v| <[u8; 4]>::try_from(v).ok())
                        .map(u32::from_le_bytes))
                })
                .collect()
        })
    }

    // ---- retention ----------------------------------------------------------------------------

    /// Deletes expired threads and responses and the turns only they reached.
    pub fn sweep(&self) -> Result<SweepStats> {
        const BATCH: usize = 512;
        let mut stats = SweepStats::default();
        loop {
            let done = self.write(|s, txn| {
                let now = now_ms();
                let mut batch = SweepStats::default();
                let mut expired = Vec::new();
                for item in s.threads.iter(txn)? {
                    let (_, raw) = item?;
                    let t: ThreadRecord = from_json(raw, "thread")?;
                    if s.retention.thread_expired(&t, now) {
                        expired.push(t);
                        if expired.len() == BATCH {
                            break;
                        }
                    }
                }
                for t in &expired {
                    batch.turns += s.remove_thread(txn, t)?;
                    batch.threads += 1;
                }
                let mut dead = Vec::new();
                for item in s.responses.iter(txn)? {
                    let (_, raw) = item?;
                    let r: ResponseRecord = from_json(raw, "response")?;
                    if s.retention.response_expired(&r, now) {
                        dead.push(r);
                        if dead.len() == BATCH {
                            break;
                        }
                    }
                }
                for r in &dead {
                    s.responses.delete(txn, r.id.as_bytes())?;
                    batch.turns += s.release(txn, &ids::parse_turn_id(&r.last_turn)?)?;
                    batch.responses += 1;
                }
                Ok((batch, expired.len() < BATCH && dead.len() < BATCH))
            })?;
            stats.threads += done.0.threads;
            stats.responses += done.0.responses;
            stats.turns += done.0.turns;
            if done.1 {
                return Ok(stats);
            }
        }
    }

    pub fn stats(&self) -> Result<StoreStats> {
        let file_bytes = self.env.real_disk_size()?;
        let map_bytes = self.env.info().map_size as u64;
        self.read(|txn| {
            Ok(StoreStats {
                threads: self.threads.len(txn)?,
                responses: self.responses.len(txn)?,
                turns: self.turns.len(txn)?,
                file_bytes,
                map_bytes,
            })
        })
    }

    /// Checks the reference counts against the records: every turn's count equals its children
    /// plus the threads and responses pointing at it, and every parent exists. For tests and
    /// `threadloom check`.
    pub fn verify(&self) -> Result<()> {
        use std::collections::HashMap;
        self.read(|txn| {
            let mut expected: HashMap<TurnKey, u32> = HashMap::new();
            for item in self.turns.iter(txn)? {
                let (k, raw) = item?;
                let key: TurnKey = k
                    .try_into()
                    .map_err(|_| Error::Format("turn key is not 16 bytes".into()))?;
                let view = turn::parse(key, raw)?;
                expected.entry(key).or_insert(0);
                if let Some(p) = view.parent {
                    let parent = self.load_turn(txn, &p)?;
                    if parent.depth + 1 != view.depth {
                        return Err(Error::Format(
                            "turn depth does not follow its parent".into(),
                        ));
                    }
                    *expected.entry(p).or_insert(0) += 1;
                }
            }
            for item in self.threads.iter(txn)? {
                let (_, raw) = item?;
                let t: ThreadRecord = from_json(raw, "thread")?;
                if let Some(h) = opt_turn_key(&t.head)? {
                    *expected.get_mut(&h).ok_or_else(|| turn_not_found(&h))? += 1;
                }
            }
            for item in self.responses.iter(txn)? {
                let (_, raw) = item?;
                let r: ResponseRecord = from_json(raw, "response")?;
                let last = ids::parse_turn_id(&r.last_turn)?;
                *expected
                    .get_mut(&last)
                    .ok_or_else(|| turn_not_found(&last))? += 1;
            }
            for (key, n) in expected {
                if n == 0 {
                    return Err(Error::Format(format!(
                        "turn {} is unreachable",
                        ids::turn_id_string(&key)
                    )));
                }
                if self.refcount(txn, &key)? != n {
                    return Err(Error::Format(format!(
                        "turn {} has a wrong reference count",
                        ids::turn_id_string(&key)
                    )));
                }
            }
            Ok(())
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
