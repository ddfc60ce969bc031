//! The pre-tokenizer plugged into the `tokenizers` pipeline: llama.cpp's split regexes, then
//! GPT-2's byte-to-unicode mapping.
//!
//! The split regexes contain one look-ahead, `\s+(?!\S)` ("a run of whitespace, minus its last
//! character when a word follows"). `tokenizers`' own `Split` would run them on `fancy-regex`,
//! whose backtracking has a step limit, and on hitting it `tokenizers` silently stops splitting
//! (a long whitespace run in a pasted file would then tokenize differently from llama.cpp).
//! Instead, each regex runs on the linear-time `regex` crate with the look-ahead rewritten as a
//! plain capture group `(\s+)`, and the one character the look-ahead would give back is given
//! back here. The Unicode classes (`\p{L}`, `\p{N}`, `\s`) are the `regex` crate's, which are
//! the same tables `fancy-regex` delegates to.

use regex::Regex;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::tokenizer::pattern::Pattern;
use tokenizers::{Offsets, PreTokenizedString, PreTokenizer, SplitDelimiterBehavior};

use super::scan::Scanner;
use crate::error::{Error, Result};

const LOOKAHEAD: &str = r"\s+(?!\S)";

/// One llama.cpp split regex, matched without look-around.
#[derive(Debug, Clone)]
pub(crate) struct RegexSplit {
    re: Regex,
    /// Whether capture group 1 is the rewritten `\s+(?!\S)`.
    has_ws_group: bool,
}

impl RegexSplit {
    pub fn new(pattern: &str) -> Result<Self> {
        let has_ws_group = pattern.contains(LOOKAHEAD);
        let rewritten = if has_ws_group {
            // `\s+(?!\S)|\s+` becomes `(\s+)`: the second alternative only ever matched what the
            // first gave back, which `find_matches` now handles.
            pattern
                .replace(&format!("{LOOKAHEAD}|\\s+"), LOOKAHEAD)
                .replace(LOOKAHEAD, r"(\s+)")
        } else {
            pattern.to_owned()
        };
        let re = Regex::new(&rewritten)
            .map_err(|e| Error::Model(format!("internal: bad split regex {pattern}: {e}")))?;
        // Group 1 must be the rewritten look-ahead and nothing else may capture.
        if re.captures_len() != if has_ws_group { 2 } else { 1 } {
            return Err(Error::Model(format!(
                "internal: cannot rewrite split regex {pattern}"
            )));
        }
        Ok(RegexSplit { re, has_ws_group })
    }

    /// Byte ranges of the matches in `text`, in order, as the original regex (with its
    /// look-ahead) would find them.
    pub fn matches(&self, text: &str) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        self.for_each_match(text, |s, e| out.push((s, e)));
        out
    }

    /// [`matches`](Self::matches) without the vector.
    #[inline]
    pub fn for_each_match(&self, text: &str, mut f: impl FnMut(usize, usize)) {
        if !self.has_ws_group {
            for m in self.re.find_iter(text) {
                if m.start() < m.end() {
                    f(m.start(), m.end());
                }
            }
            return;
        }
        let mut locs = None;
        let mut pos = 0;
        while pos < text.len() {
            // The lazy DFA finds the match; only a match of nothing but whitespace can come
            // from the rewritten look-ahead group, and only then are the (slower) capture
            // positions needed to tell.
            let Some(m) = self.re.find_at(text, pos) else {
                break;
            };
            let (start, mut end) = (m.start(), m.end());
            if start == end {
                // No pattern here matches empty text; guard against looping anyway.
                pos = next_char_boundary(text, end);
                continue;
            }
            if end < text.len() && m.as_str().chars().all(char::is_whitespace) {
                let locs = locs.get_or_insert_with(|| self.re.capture_locations());
                let again = self.re.captures_read_at(locs, text, start);
                debug_assert_eq!(again.map(|m| (m.start(), m.end())), Some((start, end)));
                if locs.get(1).is_some() {
                    // `\s+(?!\S)` matched the whole run (the run is maximal, so a non-space
                    // follows): the look-ahead gives back the last character. A run of one
                    // character cannot give anything back; the original regex then matched it
                    // with its trailing `\s+`, or left it as a gap, which splits the same way.
                    let last = prev_char_boundary(text, end);
                    if last > start {
                        end = last;
                    }
                }
            }
            f(start, end);
            pos = end;
        }
    }

    /// Calls `f` on every piece of `text`: the matches and the text between them, in order,
    /// covering all of it (`Split` with the `Isolated` behavior).
    #[inline]
    pub fn for_each_piece(&self, text: &str, mut f: impl FnMut(&str)) {
        let mut prev = 0;
        self.for_each_match(text, |start, end| {
            if prev != start {
                f(&text[prev..start]);
            }
            f(&text[start..end]);
            prev = end;
        });
        if prev != text.len() {
            f(&text[prev..]);
        }
    }
}

fn next_char_boundary(text: &str, i: usize) -> usize {
    let mut j = i + 1;
    while j < text.len() && !text.is_char_boundary(j) {
        j += 1;
    }
    j
}

fn prev_char_boundary(text: &str, i: usize) -> usize {
    let mut j = i.saturating_sub(1);
    while j > 0 && !text.is_char_boundary(j) {
        j -= 1;
    }
    j
}

impl Pattern for &RegexSplit {
    fn find_matches(&self, inside: &str) -> tokenizers::Result<Vec<(Offsets, bool)>> {
        if inside.is_empty() {
            return Ok(vec![((0, 0), false)]);
        }
        // Matches and the gaps between them, covering the whole string, as `Pattern` requires.
        let mut out = Vec::new();
        let mut prev = 0;
        for (start, end) in self.matches(inside) {
            if prev != start {
                out.push(((prev, start), false));
            }
            out.push(((start, end), true));
            prev = end;
        }
        if prev != inside.len() {
            out.push(((prev, inside.len()), false));
        }
        Ok(out)
    }
}

/// The BPE pre-tokenizer: each split regex in turn, then the byte-level mapping.
pub(crate) struct LlamaPreTokenizer {
    splits: Vec<RegexSplit>,
    /// What the fast path runs for each regex: a hand-written scanner where there is one.
    fast: Vec<Option<Scanner>>,
    /// Only the `tokenizers` pipeline (the tests' reference) uses it.
    #[cfg_attr(not(test), allow(dead_code))]
    byte_level: ByteLevel,
}

impl LlamaPreTokenizer {
    pub fn new(regexes: &[&str]) -> Result<Self> {
        Ok(LlamaPreTokenizer {
            splits: regexes
                .iter()
                .map(|r| RegexSplit::new(r))
                .collect::<Result<_>>()?,
            fast: regexes.iter().map(|r| Scanner::for_pattern(r)).collect(),
            byte_level: ByteLevel::new(false, false, false),
        })
    }
}

impl PreTokenizer for LlamaPreTokenizer {
    fn pre_tokenize(&self, pretokenized: &mut PreTokenizedString) -> tokenizers::Result<()> {
        for split in &self.splits {
            pretokenized
                .split(|_, normalized| normalized.split(split, SplitDelimiterBehavior::Isolated))?;
        }
        self.byte_level.pre_tokenize(pretokenized)
    }
}

impl LlamaPreTokenizer {
    /// Calls `f` on every pre-token of `text` (raw bytes, before the byte-level mapping), in
    /// order: what `pre_tokenize` produces, without building a `PreTokenizedString`.
    pub fn for_each_pretoken(&self, text: &str, f: &mut impl FnMut(&str)) {
        walk(&self.splits, &self.fast, text, f);
    }

    /// The same with the regexes only (no hand-written scanners), for tests.
    #[cfg(test)]
    pub fn for_each_pretoken_regex(&self, text: &str, f: &mut impl FnMut(&str)) {
        walk(&self.splits, &vec![None; self.splits.len()], text, f);
    }
}

fn walk(splits: &[RegexSplit], fast: &[Option<Scanner>], text: &str, f: &mut impl FnMut(&str)) {
    let (Some(split), Some(scan)) = (splits.first(), fast.first()) else {
        if !text.is_empty() {
            f(text);
        }
        return;
    };
    let (splits, fast) = (&splits[1..], &fast[1..]);
    let mut inner = |piece: &str| {
        if splits.is_empty() {
            f(piece);
        } else {
            walk(splits, fast, piece, f);
        }
    };
    match scan {
        Some(scan) => scan.for_each_piece(text, &mut inner),
        None => split.for_each_piece(text, &mut inner),
    }
}
