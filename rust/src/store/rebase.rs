//! Moving a thread's head to another path of the turn tree. Turns never change: a thread is a
//! pointer, and this points it elsewhere (new turns may be written on the way), in one
//! transaction.

use super::ops::{check_turns, opt_turn_key, turn_not_found};
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
            if t.state != ThreadState::Open {
                return Err(Error::StateConflict(format!(
                    "thread {id:?} is {} and accepts no new messages",
                    t.state.as_str()
                )));
            }
            let old = opt_turn_key(&t.head)?;
            if expected_head.is_some_and(|expected| expected != old) {
                return Err(Error::StateConflict(format!(
                    "thread {id:?} moved on: its head is no longer the expected turn"
                )));
            }
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
            let new_depth = depth as u64 + turns.len() as u64;
            if new_depth > MAX_THREAD_MESSAGES as u64 {
                return Err(Error::LimitExceeded(format!(
                    "a conversation may hold at most {MAX_THREAD_MESSAGES} messages; it would have {new_depth}"
                )));
            }
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
            t.message_count = new_depth as u32;
            t.last_activity_ms = now.max(t.last_activity_ms);
            s.put_thread(txn, &t)?;
            s.index_thread(txn, &t)?;
            Ok(t)
        })
    }
}
