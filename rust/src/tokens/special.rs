//! Splitting text on the tokens that are matched as a whole (`<|im_start|>`...), as
//! `tokenizers`' added vocabulary does: leftmost-longest, non-overlapping matches of the token
//! texts; with special parsing off, matches of control (and unknown) tokens are skipped and stay
//! text, user-defined ones still split.

use std::collections::HashMap;
use std::ops::Range;

use regex::{Regex, RegexBuilder};

use crate::error::{Error, Result};

/// One part of a text: text between matched tokens, or a matched token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment<'a> {
    /// Text without matched tokens in it: its ids depend on nothing else.
    Text(&'a str),
    /// A token matched in the text.
    Token(u32),
}

#[derive(Debug)]
pub(crate) struct Specials {
    /// The token texts as one alternation, longest first: the regex crate's leftmost-first
    /// semantics then pick the leftmost match and, among those, the longest.
    re: Regex,
    /// Text -> (id, whether special parsing off leaves it as text).
    tokens: HashMap<String, (u32, bool)>,
}

impl Specials {
    /// `tokens`: (text, id, special) for every token matched in text. `None` when there are
    /// none.
    pub fn new(tokens: impl IntoIterator<Item = (String, u32, bool)>) -> Result<Option<Self>> {
        let mut map: HashMap<String, (u32, bool)> = HashMap::new();
        for (text, id, special) in tokens {
            if text.is_empty() {
                continue;
            }
            // A text listed twice keeps its first id (`tokenizers` ignores re-added tokens);
            // it counts as special if any copy is, as `tokenizers`' special set is by text.
            let e = map.entry(text).or_insert((id, special));
            e.1 |= special;
        }
        if map.is_empty() {
            return Ok(None);
        }
        let mut texts: Vec<&String> = map.keys().collect();
        texts.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
        let pattern = texts
            .iter()
            .map(|t| regex::escape(t))
            .collect::<Vec<_>>()
            .join("|");
        let re = RegexBuilder::new(&pattern)
            .size_limit(1 << 28)
            .dfa_size_limit(1 << 26)
            .build()
            .map_err(|e| Error::Model(format!("cannot build the special-token matcher: {e}")))?;
        Ok(Some(Specials { re, tokens: map }))
    }

    /// Calls `f` on each segment of `text` in order. Empty text gives no segments. A control
    /// token whose match overlaps a `guarded` byte range (sorted, disjoint) stays text, as if
    /// special parsing were off there.
    pub fn for_each<'t, E>(
        &self,
        text: &'t str,
        parse_special: bool,
        guarded: &[Range<usize>],
        mut f: impl FnMut(Segment<'t>) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let mut prev = 0;
        let mut guard = guarded.iter().peekable();
        for m in self.re.find_iter(text) {
            let Some(&(id, special)) = self.tokens.get(m.as_str()) else {
                continue;
            };
            while guard.next_if(|g| g.end <= m.start()).is_some() {}
            let in_guard = guard.peek().is_some_and(|g| g.start < m.end());
            if special && (!parse_special || in_guard) {
                continue;
            }
            if prev < m.start() {
                f(Segment::Text(&text[prev..m.start()]))?;
            }
            f(Segment::Token(id))?;
            prev = m.end();
        }
        if prev < text.len() {
            f(Segment::Text(&text[prev..]))?;
        }
        Ok(())
    }

    /// Byte ranges of the control tokens written in `text`, in order: what special parsing
    /// would turn into control ids.
    pub fn control_spans(&self, text: &str) -> Vec<Range<usize>> {
        self.re
            .find_iter(text)
            .filter(|m| {
                self.tokens
                    .get(m.as_str())
                    .is_some_and(|&(_, special)| special)
            })
            .map(|m| m.range())
            .collect()
    }
}
