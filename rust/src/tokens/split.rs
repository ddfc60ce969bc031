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
            .map_err(|e| Error::Format(format!("internal: bad split regex {pattern}: {e}")))?;
        // Group 1 must be the rewritten look-ahead and nothing else may capture.
        if re.captures_len() != if has_ws_group { 2 } else { 1 } {
            return Err(Error::Format(format!(
                "internal: cannot rewrite split regex {pattern}"
            )));
        }
        Ok(RegexSplit { re, has_ws_group })
    }

    /// Byte ranges of the matches in `text`, in order, as the original regex (with its
    /// look-ahead) would find them.
    pub fn matches(&self, text: &str) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut pos = 0;
        if !self.has_ws_group {
            for m in self.re.find_iter(text) {
                if m.start() < m.end() {
                    out.push((m.start(), m.end()));
                }
            }
            return out;
        }
        let mut locs = self.re.capture_locations();
        while pos < text.len() {
            let Some(m) = self.re.captures_read_at(&mut locs, text, pos) else {
                break;
            };
            let (start, mut end) = (m.start(), m.end());
            if start == end {
                // No pattern here matches empty text; guard against looping anyway.
                pos = next_char_boundary(text, end);
                continue;
            }
            if locs.get(1).is_some() && end < text.len() {
                // `\s+(?!\S)` matched the whole run (the run is maximal, so a non-space
                // follows): the look-ahead gives back the last character. A run of one
                // character cannot give anything back; the original regex then matched it
                // with its trailing `\s+`, or left it as a gap, which splits the same way.
                let last = prev_char_boundary(text, end);
                if last > start {
                    end = last;
                }
            }
            out.push((start, end));
            pos = end;
        }
        out
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
    byte_level: ByteLevel,
}

impl LlamaPreTokenizer {
    pub fn new(regexes: &[&str]) -> Result<Self> {
        Ok(LlamaPreTokenizer {
            splits: regexes
                .iter()
                .map(|r| RegexSplit::new(r))
                .collect::<Result<_>>()?,
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
