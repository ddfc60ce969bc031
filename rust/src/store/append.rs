//! Appending turns (and the response that records them) after an anchor.

use heed::RwTxn;

use super::ops::{check_turns, new_turn_key, opt_turn_key, turn_not_found};
use super::records::{self, to_json};
use super::turn::{self, NewTurn};
use super::*;

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
}
