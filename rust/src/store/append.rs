//! Appending turns (and the response that records them) after an anchor.

use heed::RwTxn;

use super::ops::{check_turns, new_turn_key, opt_turn_key, turn_not_found};
use super::records::{self, to_json};
use super::turn::{self, NewTurn};
use super::*;
use super::{decide, pending};

/// Where an append lands, resolved from its anchor inside the write transaction.
struct Landing {
    /// The turn the new ones follow; none when they start a new conversation.
    parent: Option<TurnKey>,
    /// How many turns the conversation already holds up to `parent`.
    depth: u32,
    /// The thread whose head moves (a thread anchor only).
    thread: Option<ThreadRecord>,
    /// The response anchored on (a response anchor only), linked from the new response.
    previous_response_id: Option<String>,
}

/// Checks an append's arguments before any transaction starts, so bad input never queues
/// behind other writers; returns the response's normalized metadata when there is one.
fn check_append(
    owner: &str,
    anchor: &Anchor,
    turns: &[NewTurn],
    response: Option<&NewResponse>,
) -> Result<Option<String>> {
    ids::validate_owner(owner)?;
    let in_thread = matches!(anchor, Anchor::Thread(_));
    decide::check_append_shape(turns.len(), response.map(|r| r.output_count), in_thread)?;
    check_turns(turns)?;
    let response_metadata = match response {
        Some(r) => {
            if let Some(id) = &r.id {
                ids::validate_response_id(id)?;
            }
            Some(records::normalize_metadata(r.metadata.as_deref())?)
        }
        None => None,
    };
    Ok(response_metadata)
}

impl Store {
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
        let response_metadata = check_append(owner, anchor, turns, response)?;
        // The write job may run on another caller's thread, so it owns its inputs.
        let owner = owner.to_owned();
        let anchor = anchor.clone();
        let turns = turns.to_vec();
        let response = response.cloned().zip(response_metadata);
        let options = options.clone();
        self.write(move |s, txn| {
            let response = response.as_ref().map(|(r, m)| (r, m.as_str()));
            s.append_in(txn, &owner, &anchor, &turns, response, &options)
        })
    }

    /// The body of `append`, inside the write transaction; `response` comes with its
    /// normalized metadata.
    fn append_in(
        &self,
        txn: &mut RwTxn<'_>,
        owner: &str,
        anchor: &Anchor,
        turns: &[NewTurn],
        response: Option<(&NewResponse, &str)>,
        options: &AppendOptions,
    ) -> Result<Appended> {
        let now = now_ms();
        let mut landing = self.resolve_anchor(txn, owner, anchor, options, now)?;
        let new_depth = decide::check_length(landing.depth, turns.len(), false)?;
        let turn_ids = self.write_turns(txn, owner, landing.parent, landing.depth, turns, now)?;
        let last = *turn_ids
            .last()
            .ok_or_else(|| Error::InvalidInput("nothing to append: turns is empty".to_owned()))?;
        if let Some(t) = landing.thread.as_mut() {
            self.advance_thread(txn, t, &last, new_depth, now)?;
        }
        let record = response
            .map(|r| self.record_response(txn, owner, r, &landing, &turn_ids, now))
            .transpose()?;
        if options.settle_pending {
            if let Some(r) = &record {
                self.pending.delete(txn, &pending::key(owner, &r.id)?)?;
            }
        }
        Ok(Appended {
            turn_ids,
            response: record,
            thread: landing.thread,
        })
    }

    /// Finds where the new turns go, refusing anchors they may not follow: a thread that is
    /// not open or whose head moved, a response outside the anchor window, another owner's turn.
    fn resolve_anchor(
        &self,
        txn: &RwTxn<'_>,
        owner: &str,
        anchor: &Anchor,
        options: &AppendOptions,
        now: i64,
    ) -> Result<Landing> {
        let mut landing = Landing {
            parent: None,
            depth: 0,
            thread: None,
            previous_response_id: None,
        };
        match anchor {
            Anchor::Root => {}
            Anchor::Thread(id) => {
                let t = self.load_thread(txn, owner, id, now)?;
                let head = opt_turn_key(&t.head)?;
                // Optimistic concurrency: the caller built its request on this head.
                decide::check_thread_write(id, t.state, head, options.expected_head, None)?;
                if let Some(previous) = &options.previous_response_id {
                    // A reply continuing the response at the head: the head must still be it.
                    let r = self.load_response(txn, owner, previous, now)?;
                    self.retention
                        .check_anchor(&r, now, options.anchor_window)?;
                    let last = ids::parse_turn_id(&r.last_turn)?;
                    decide::check_thread_write(id, t.state, head, None, Some(last))?;
                    landing.previous_response_id = Some(r.id);
                }
                landing.parent = head;
                landing.depth = t.message_count;
                landing.thread = Some(t);
            }
            Anchor::Response(id) => {
                let r = self.load_response(txn, owner, id, now)?;
                self.retention
                    .check_anchor(&r, now, options.anchor_window)?;
                let key = ids::parse_turn_id(&r.last_turn)?;
                landing.depth = self.load_turn(txn, &key)?.depth;
                landing.parent = Some(key);
                landing.previous_response_id = Some(r.id);
            }
            Anchor::Turn(key) => {
                let view = self.load_turn(txn, key)?;
                // Another tenant's turn reads exactly like a missing one.
                if view.owner != owner {
                    return Err(turn_not_found(key));
                }
                landing.parent = Some(*key);
                landing.depth = view.depth;
            }
        }
        Ok(landing)
    }

    /// Moves a thread's head to `last`: the thread takes a reference to its new head and drops
    /// the one to its old head, and its activity index entry is rewritten under the new time.
    fn advance_thread(
        &self,
        txn: &mut RwTxn<'_>,
        t: &mut ThreadRecord,
        last: &TurnKey,
        message_count: u32,
        now: i64,
    ) -> Result<()> {
        self.unindex_thread(txn, t)?;
        self.retain(txn, last)?;
        if let Some(old) = opt_turn_key(&t.head)? {
            self.release(txn, &old)?;
        }
        t.head = Some(ids::turn_id_string(last));
        t.message_count = message_count;
        t.last_activity_ms = now.max(t.last_activity_ms);
        self.put_thread(txn, t)?;
        self.index_thread(txn, t)
    }

    /// Stores the response that records the appended `turn_ids`; it holds a reference to the
    /// last of them, so they outlive the thread that may move on.
    fn record_response(
        &self,
        txn: &mut RwTxn<'_>,
        owner: &str,
        (r, metadata): (&NewResponse, &str),
        landing: &Landing,
        turn_ids: &[TurnKey],
        now: i64,
    ) -> Result<ResponseRecord> {
        // `append_in` wrote at least one turn before it got here.
        let last = turn_ids[turn_ids.len() - 1];
        let id = match &r.id {
            // A reused id would let one response overwrite another's record.
            Some(id) => {
                let taken = self.responses.get(txn, id.as_bytes())?.is_some();
                decide::check_response_id_free(id, taken)?;
                id.clone()
            }
            None => ids::new_response_id(),
        };
        let rec = ResponseRecord {
            id: id.clone(),
            owner: owner.to_owned(),
            status: r.status,
            model: r.model.clone(),
            last_turn: ids::turn_id_string(&last),
            parent_turn: landing.parent.as_ref().map(ids::turn_id_string),
            input_count: turn_ids.len() as u32 - r.output_count,
            output_count: r.output_count,
            thread_id: landing.thread.as_ref().map(|t| t.id.clone()),
            previous_response_id: landing.previous_response_id.clone(),
            usage: r.usage,
            error: r.error.clone(),
            created_ms: now,
            metadata: metadata.to_owned(),
        };
        self.responses.put(txn, id.as_bytes(), &to_json(&rec)?)?;
        self.retain(txn, &last)?;
        Ok(rec)
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
                self.index_child(txn, owner, p, &key)?;
            }
            turn_ids.push(key);
            prev = Some(key);
        }
        Ok(turn_ids)
    }
}
