//! Moving a thread's head to another path of the turn tree. Turns never change: a thread is a
//! pointer, and this points it elsewhere (new turns may be written on the way), in one
//! transaction.

use super::decide::{self, turn_not_found};
use super::ops::{check_turns, opt_turn_key};
use super::*;

impl Store {
    /// Points thread `id` at a new path: `turns` written after `base` (one of the owner's turns,
    /// or none for a new root), the head moving to the last of them, or to `base` itself when
    /// `turns` is empty (to nothing, emptying the thread, when `base` is none too). The old path
    /// stays for every response and thread that still reaches it; turns nothing reaches any
    /// more are deleted. Refused like an append: a locked or archived thread is a
    /// StateConflict, and so is a thread whose head is not `expected_head` (when given).
    pub fn rebase_thread(
        &self,
        owner: &str,
        id: &str,
        base: Option<TurnKey>,
        turns: &[NewTurn],
        expected_head: Option<Option<TurnKey>>,
    ) -> Result<ThreadRecord> {
        ids::validate_owner(owner)?;
        check_turns(turns)?;
        let owner = owner.to_owned();
        let id = id.to_owned();
        let turns = turns.to_vec();
        self.write(move |s, txn| {
            let now = now_ms();
            let mut t = s.load_thread(txn, &owner, &id, now)?;
            let old = opt_turn_key(&t.head)?;
            decide::check_thread_write(&id, t.state, old, expected_head, None)?;
            let depth = match &base {
                Some(key) => {
                    let view = s.load_turn(txn, key)?;
                    if view.owner != owner {
                        return Err(turn_not_found(key));
                    }
                    view.depth
                }
                None => 0,
            };
            let new_depth = decide::check_length(depth, turns.len(), true)?;
            let written = s.write_turns(txn, &owner, base, depth, &turns, now)?;
            let head = written.last().copied().or(base);
            // The new head is held before the old one is let go: they may share turns.
            if let Some(h) = &head {
                s.retain(txn, h)?;
            }
            if let Some(o) = &old {
                s.release(txn, o)?;
            }
            s.unindex_thread(txn, &t)?;
            t.head = head.as_ref().map(ids::turn_id_string);
            t.message_count = new_depth;
            t.last_activity_ms = now.max(t.last_activity_ms);
            s.put_thread(txn, &t)?;
            s.index_thread(txn, &t)?;
            Ok(t)
        })
    }
}
