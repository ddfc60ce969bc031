//! Choosing which messages a prompt keeps. Pure arithmetic over per-message token estimates, so
//! it is cheap and testable without a model; the caller verifies the choice with an exact count.

use crate::store::Role;

/// How a conversation that does not fit is cut down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Never trim: a prompt that does not fit is an error.
    None,
    /// Keep the last N non-system messages.
    Window(usize),
    /// Keep the newest messages that fit the token budget (the context minus `max_tokens` when
    /// no budget is given), cutting in blocks so consecutive prompts share their prefix.
    Tokens(Option<usize>),
}

/// What the planner knows about one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Item {
    pub role: Role,
    /// Estimated tokens the message adds to the rendered prompt.
    pub tokens: usize,
}

/// After a cut the kept messages use at most this share of the budget, so the next several
/// turns fit without moving the cut (and the prompt prefix stays the same).
pub const LOW_WATER_PERCENT: usize = 75;

/// A kept history must not start (after system messages) with these roles.
fn bad_first(role: Role) -> bool {
    matches!(role, Role::Assistant | Role::Tool)
}

/// Moves `cut` past any assistant/tool message that would otherwise be the first kept
/// non-system message, so the kept part starts with a user turn; never into the protected tail.
fn fix_first(items: &[Item], mut cut: usize, limit: usize) -> usize {
    loop {
        let first = (cut..limit).find(|&i| items[i].role != Role::System);
        match first {
            Some(j) if bad_first(items[j].role) => cut = j + 1,
            _ => return cut.min(limit),
        }
    }
}

/// The first index whose non-system messages are kept: every non-system message before it is
/// dropped; system messages are always kept. `protected` trailing messages (the new inputs)
/// are never dropped.
pub fn plan_cut(items: &[Item], strategy: Strategy, budget: usize, protected: usize) -> usize {
    let limit = items.len().saturating_sub(protected);
    match strategy {
        Strategy::None => 0,
        Strategy::Window(n) => {
            let mut seen = 0;
            let mut cut = items.len();
            while cut > 0 && (seen < n || items[cut - 1].role == Role::System) {
                cut -= 1;
                if items[cut].role != Role::System {
                    seen += 1;
                }
            }
            fix_first(items, cut.min(limit), limit)
        }
        Strategy::Tokens(_) => tokens_cut(items, budget, limit),
    }
}

/// Replays the conversation's growth message by message: whenever the kept part exceeds the
/// budget, the cut jumps forward until the kept part is under the low-water mark. Because the
/// replay depends only on the messages, the same history always yields the same cut, and the
/// cut moves only once every several turns.
fn tokens_cut(items: &[Item], budget: usize, limit: usize) -> usize {
    let low_water = budget * LOW_WATER_PERCENT / 100;
    let system: usize = items
        .iter()
        .filter(|i| i.role == Role::System)
        .map(|i| i.tokens)
        .sum();
    let mut cut = 0;
    let mut kept = 0usize;
    for (i, item) in items.iter().enumerate() {
        if item.role == Role::System {
            continue;
        }
        kept += item.tokens;
        if system + kept > budget {
            let mut next = cut;
            while next < i.min(limit) && system + kept > low_water {
                if items[next].role != Role::System {
                    kept -= items[next].tokens;
                }
                next += 1;
            }
            let fixed = fix_first(items, next, limit);
            for skipped in &items[next..fixed] {
                if skipped.role != Role::System {
                    kept -= skipped.tokens;
                }
            }
            cut = fixed;
        }
    }
    cut
}

/// Moves the cut one droppable message further (used when the exact count still exceeds the
/// budget after the estimate-based plan). Returns None when nothing more can be dropped.
pub fn advance(items: &[Item], cut: usize, protected: usize) -> Option<usize> {
    let limit = items.len().saturating_sub(protected);
    let next = (cut..limit).find(|&i| items[i].role != Role::System)?;
    Some(fix_first(items, next + 1, limit))
}

/// Indices of the messages kept for a cut: every system message, then everything from `cut`.
pub fn kept_indices(items: &[Item], cut: usize) -> impl Iterator<Item = usize> + '_ {
    (0..items.len()).filter(move |&i| i >= cut || items[i].role == Role::System)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(n_pairs: usize, tokens: usize) -> Vec<Item> {
        let mut v = vec![Item {
            role: Role::System,
            tokens: 10,
        }];
        for _ in 0..n_pairs {
            v.push(Item {
                role: Role::User,
                tokens,
            });
            v.push(Item {
                role: Role::Assistant,
                tokens,
            });
        }
        v
    }

    fn kept_tokens(items: &[Item], cut: usize) -> usize {
        kept_indices(items, cut).map(|i| items[i].tokens).sum()
    }

    #[test]
    fn none_keeps_everything() {
        assert_eq!(plan_cut(&conv(5, 100), Strategy::None, 10, 1), 0);
    }

    #[test]
    fn window_keeps_last_n_and_starts_with_user() {
        let items = conv(5, 10); // S U A U A U A U A U A
        let cut = plan_cut(&items, Strategy::Window(4), 0, 1);
        assert_eq!(
            kept_indices(&items, cut).collect::<Vec<_>>(),
            vec![0, 7, 8, 9, 10]
        );
        // An odd window would start with an assistant turn: it keeps one fewer.
        let cut = plan_cut(&items, Strategy::Window(3), 0, 1);
        assert_eq!(
            kept_indices(&items, cut).collect::<Vec<_>>(),
            vec![0, 9, 10]
        );
        assert_eq!(plan_cut(&items, Strategy::Window(100), 0, 1), 0);
    }

    #[test]
    fn tokens_fit_and_never_start_with_assistant() {
        let items = conv(50, 20);
        let cut = plan_cut(&items, Strategy::Tokens(None), 500, 1);
        assert!(kept_tokens(&items, cut) <= 500);
        assert_eq!(items[cut].role, Role::User);
        assert_eq!(plan_cut(&conv(3, 20), Strategy::Tokens(None), 500, 1), 0);
    }

    #[test]
    fn protected_tail_is_never_dropped() {
        let items = conv(3, 1000);
        let cut = plan_cut(&items, Strategy::Tokens(None), 100, 2);
        assert!(cut <= items.len() - 2);
    }

    #[test]
    fn cut_is_stable_over_most_turns() {
        // Grow a conversation one exchange at a time; count how often the cut moves.
        let mut items = conv(0, 0);
        let mut moves = 0;
        let mut last_cut = 0;
        for _ in 0..50 {
            items.push(Item {
                role: Role::User,
                tokens: 30,
            });
            let cut = plan_cut(&items, Strategy::Tokens(None), 1000, 1);
            assert!(kept_tokens(&items, cut) <= 1000);
            if cut != last_cut {
                moves += 1;
            }
            last_cut = cut;
            items.push(Item {
                role: Role::Assistant,
                tokens: 30,
            });
        }
        // Stable on most turns: the prompt prefix is reused on every turn the cut stays put.
        assert!(moves <= 12, "cut moved on {moves} of 50 turns");
        assert!(moves >= 2);
    }

    #[test]
    fn advance_moves_to_the_next_user_turn() {
        let items = conv(3, 10); // S U A U A U A, the last one protected
        assert_eq!(advance(&items, 0, 1), Some(3));
        assert_eq!(advance(&items, 3, 1), Some(5));
        assert_eq!(advance(&items, 5, 1), Some(6));
        assert_eq!(advance(&items, 6, 1), None);
    }
}
