//! The store's decisions as pure functions over the rows a store has read: may turns be
//! written to this thread, how long may a conversation grow, is this create a conflict, is this
//! response id taken, may a thread branch again. The LMDB store calls them inside its
//! transactions; the PostgreSQL store calls the same functions (through `py/rules.rs`) inside
//! its own, so both decide and word alike and no rule is written twice.

use crate::error::{Error, Result};
use crate::ids::{self, TurnKey};

use super::{ThreadState, MAX_THREAD_BRANCHES, MAX_THREAD_MESSAGES};

/// Whether turns may be written after thread `id`'s head `head` (the thread in state `state`):
/// only an open thread takes them; with `expected` (the head the caller built on, `Some(None)`
/// for an empty thread) its head must still be that turn; with `continued` (the last turn of
/// the response the caller continues) the head must be that turn. StateConflict otherwise.
pub fn check_thread_write(
    id: &str,
    state: ThreadState,
    head: Option<TurnKey>,
    expected: Option<Option<TurnKey>>,
    continued: Option<TurnKey>,
) -> Result<()> {
    if state != ThreadState::Open {
        return Err(Error::StateConflict(format!(
            "thread {id:?} is {} and accepts no new messages",
            state.as_str()
        )));
    }
    let moved = expected.is_some_and(|e| e != head) || continued.is_some_and(|c| Some(c) != head);
    if moved {
        return Err(Error::StateConflict(format!(
            "thread {id:?} moved on: its head is no longer the expected turn"
        )));
    }
    Ok(())
}

/// Whether an append's shape may go: some turns, no more outputs than turns, and turns outside
/// a thread recorded under a response (nothing else would reach them). InvalidInput otherwise.
pub fn check_append_shape(turns: usize, output_count: Option<u32>, in_thread: bool) -> Result<()> {
    if turns == 0 {
        return Err(Error::InvalidInput(
            "nothing to append: turns is empty".to_owned(),
        ));
    }
    match output_count {
        Some(n) if n as usize > turns => Err(Error::InvalidInput(format!(
            "output_count {n} exceeds the {turns} turns appended"
        ))),
        None if !in_thread => Err(Error::InvalidInput(
            "turns appended outside a thread must be recorded under a response".to_owned(),
        )),
        _ => Ok(()),
    }
}

/// The conversation's length once `added` turns follow `depth` of them, or LimitExceeded past
/// `MAX_THREAD_MESSAGES`. `rebase` words it for a thread moved onto a new path.
pub fn check_length(depth: u32, added: usize, rebase: bool) -> Result<u32> {
    let total = depth as u64 + added as u64;
    if total > MAX_THREAD_MESSAGES as u64 {
        let what = if rebase {
            format!("it would have {total}")
        } else {
            format!("it has {depth} and {added} more were sent")
        };
        return Err(Error::LimitExceeded(format!(
            "a conversation may hold at most {MAX_THREAD_MESSAGES} messages; {what}"
        )));
    }
    Ok(total as u32)
}

/// What a create of thread `id` does given what the store holds under that id: `live`, a live
/// thread (returned as it is when `exist_ok`, else StateConflict); `tombstoned`, the id of a
/// deleted or expired thread (NotFound for a create-if-missing, which must not quietly revive a
/// conversation that lost its history; an explicit create reuses the id). Ok(true): return the
/// live thread; Ok(false): create it (clearing any tombstone).
pub fn check_create(id: &str, exist_ok: bool, live: bool, tombstoned: bool) -> Result<bool> {
    if live {
        if exist_ok {
            return Ok(true);
        }
        return Err(Error::StateConflict(format!(
            "thread {id:?} already exists"
        )));
    }
    if tombstoned && exist_ok {
        return Err(Error::missing(
            "thread",
            id,
            format!("thread {id:?} was deleted or expired"),
        ));
    }
    Ok(false)
}

/// A response may not be stored under an id already taken: one record would overwrite another.
pub fn check_response_id_free(id: &str, taken: bool) -> Result<()> {
    if taken {
        return Err(Error::StateConflict(format!(
            "response {id} already exists"
        )));
    }
    Ok(())
}

/// Whether a thread holding `held` branch records may record one more (`new`: not an update
/// of a record it holds).
pub fn check_branch_room(thread_id: &str, held: usize, new: bool) -> Result<()> {
    if held >= MAX_THREAD_BRANCHES && new {
        return Err(Error::LimitExceeded(format!(
            "thread {thread_id:?} has as many branches as it can record ({MAX_THREAD_BRANCHES})"
        )));
    }
    Ok(())
}

/// Whether a thread in state `state` may take new metadata (`state_change`: the same update
/// changes its state too, which `ThreadState::check_transition` decides).
pub fn check_metadata_change(id: &str, state: ThreadState, state_change: bool) -> Result<()> {
    if state == ThreadState::Archived && !state_change {
        return Err(Error::StateConflict(format!(
            "thread {id:?} is archived; its metadata cannot change"
        )));
    }
    Ok(())
}

/// How many threads one page may list.
pub fn check_page_limit(limit: usize) -> Result<()> {
    if limit == 0 || limit > 1000 {
        return Err(Error::InvalidInput(format!(
            "limit must be between 1 and 1000, got {limit}"
        )));
    }
    Ok(())
}

/// A history read: it ends at a thread, a response or a turn (`root`: none named), and keeps
/// its newest `limit` turns (None: all of them).
pub fn check_history(root: bool, limit: Option<i64>) -> Result<Option<usize>> {
    if root {
        return Err(Error::InvalidInput(
            "give one of thread, response and turn".into(),
        ));
    }
    match limit {
        Some(n) if n < 0 => Err(Error::InvalidInput("limit must not be negative".into())),
        Some(n) => Ok(Some(usize::try_from(n).unwrap_or(usize::MAX))),
        None => Ok(None),
    }
}

/// The errors for a record that is missing (or another owner's, or expired: they read alike).
pub fn thread_not_found(id: &str) -> Error {
    Error::missing("thread", id, format!("thread {id:?} not found"))
}

pub fn response_not_found(id: &str) -> Error {
    Error::missing("response", id, format!("response {id:?} not found"))
}

pub fn turn_not_found(key: &TurnKey) -> Error {
    let id = ids::turn_id_string(key);
    let message = format!("turn {id:?} not found");
    Error::missing("turn", id, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: TurnKey = [1; 16];
    const B: TurnKey = [2; 16];

    #[test]
    fn a_history_names_its_end_and_a_limit_that_is_not_negative() {
        assert!(matches!(
            check_history(true, None),
            Err(Error::InvalidInput(_))
        ));
        assert!(matches!(
            check_history(false, Some(-1)),
            Err(Error::InvalidInput(_))
        ));
        assert_eq!(check_history(false, Some(0)).unwrap(), Some(0));
        assert_eq!(check_history(false, None).unwrap(), None);
    }

    #[test]
    fn a_thread_write_needs_an_open_thread_at_the_expected_head() {
        let open = ThreadState::Open;
        assert!(check_thread_write("t", open, Some(A), None, None).is_ok());
        assert!(check_thread_write("t", open, Some(A), Some(Some(A)), Some(A)).is_ok());
        assert!(check_thread_write("t", open, None, Some(None), None).is_ok());
        for (expected, continued) in [(Some(Some(B)), None), (Some(None), None), (None, Some(B))] {
            let err = check_thread_write("t", open, Some(A), expected, continued).unwrap_err();
            assert!(err.to_string().contains("moved on"), "{err}");
        }
        let err = check_thread_write("t", ThreadState::Locked, Some(A), None, None).unwrap_err();
        assert!(matches!(err, Error::StateConflict(_)));
    }

    #[test]
    fn creates_reuse_refuse_or_revive_as_asked() {
        assert!(check_create("t", true, true, false).unwrap());
        assert!(matches!(
            check_create("t", false, true, false),
            Err(Error::StateConflict(_))
        ));
        assert!(matches!(
            check_create("t", true, false, true),
            Err(Error::NotFound(_))
        ));
        assert!(!check_create("t", false, false, true).unwrap());
        assert!(!check_create("t", true, false, false).unwrap());
    }

    #[test]
    fn lengths_and_branches_stop_at_their_limits() {
        let max = MAX_THREAD_MESSAGES;
        assert_eq!(check_length(max - 2, 2, false).unwrap(), max);
        assert!(check_length(max - 1, 2, false).is_err());
        assert!(check_length(0, max as usize + 1, true)
            .unwrap_err()
            .to_string()
            .contains("would have"));
        assert!(check_branch_room("t", MAX_THREAD_BRANCHES, false).is_ok());
        assert!(check_branch_room("t", MAX_THREAD_BRANCHES, true).is_err());
    }
}
