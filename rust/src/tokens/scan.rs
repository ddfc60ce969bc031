//! Hand-written matchers for the split regexes most vocabularies use (GPT-2's, Llama 3's,
//! Qwen 2's and the lone-digit split), equivalent to running the regex (look-ahead included)
//! and keeping the text between matches: what llama.cpp does with its own custom splitters.
//! They avoid the regex engine's per-call cost (a cache taken from a pool shared by all threads,
//! a forward and a reverse DFA pass per match, captures for the look-ahead rewrite), which was
//! most of the tokenizer's time. The tests compare them with `fancy-regex` on the original
//! patterns.
//!
//! The Unicode classes (`\p{L}`, `\p{N}`, `\s`) come from the `regex` crate's own tables, read
//! once per Unicode plane on first use, so they agree with the regex path exactly.

use std::sync::OnceLock;

use regex::Regex;

/// A character's class as the split regexes see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// `\p{L}`
    Letter,
    /// `\p{N}`
    Number,
    /// `\s` (White_Space)
    Space,
    /// Anything else: `[^\s\p{L}\p{N}]`.
    Other,
}

const CLASSES: [Class; 4] = [Class::Letter, Class::Number, Class::Space, Class::Other];

const fn ascii_table() -> [Class; 128] {
    let mut t = [Class::Other; 128];
    let mut i = 0;
    while i < 128 {
        let b = i as u8;
        t[i] = if b.is_ascii_alphabetic() {
            Class::Letter
        } else if b.is_ascii_digit() {
            Class::Number
        } else if matches!(b, b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ') {
            Class::Space
        } else {
            Class::Other
        };
        i += 1;
    }
    t
}

static ASCII: [Class; 128] = ascii_table();

/// Two bits per code point, one table per plane, filled on first use.
static PLANES: [OnceLock<Box<[u8]>>; 17] = [const { OnceLock::new() }; 17];

fn plane_table(plane: u32) -> Box<[u8]> {
    let mut table = vec![0xffu8; 1 << 14]; // every code point `Other` (3)
    let text: String = ((plane << 16)..((plane + 1) << 16))
        .filter_map(char::from_u32)
        .collect();
    for (code, pattern) in [(0u8, r"\p{L}+"), (1, r"\p{N}+"), (2, r"\s+")] {
        let re = Regex::new(pattern).expect("a valid static regex");
        for m in re.find_iter(&text) {
            for c in m.as_str().chars() {
                let i = (c as u32 & 0xffff) as usize;
                let shift = (i & 3) * 2;
                table[i >> 2] = (table[i >> 2] & !(3 << shift)) | (code << shift);
            }
        }
    }
    table.into_boxed_slice()
}

/// The class of `c`.
#[inline]
pub(crate) fn class(c: char) -> Class {
    let cp = c as u32;
    if cp < 128 {
        return ASCII[cp as usize];
    }
    let plane = (cp >> 16) as usize;
    let table = PLANES[plane].get_or_init(|| plane_table(plane as u32));
    let i = (cp & 0xffff) as usize;
    CLASSES[((table[i >> 2] >> ((i & 3) * 2)) & 3) as usize]
}

/// The character at byte `i` of `text` (a char boundary) and its length in bytes.
#[inline]
fn char_at(text: &str, i: usize) -> Option<(char, usize)> {
    let b = *text.as_bytes().get(i)?;
    if b < 0x80 {
        return Some((b as char, 1));
    }
    let c = text[i..].chars().next()?;
    Some((c, c.len_utf8()))
}

/// The end of the run of characters of class `k` starting at `i`.
#[inline]
fn run(text: &str, mut i: usize, k: Class) -> usize {
    while let Some((c, l)) = char_at(text, i) {
        if class(c) != k {
            break;
        }
        i += l;
    }
    i
}

/// Which pattern a [`Scanner`] implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scanner {
    /// `\p{N}`: every number character alone.
    Digits,
    /// GPT-2: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
    Gpt2,
    /// Llama 3 (`max_digits` 3) and Qwen 2 (1):
    /// `(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|
    /// \p{N}{1,max_digits}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`.
    Llama3 { max_digits: usize },
}

impl Scanner {
    /// The scanner for one of `pre.rs`'s patterns, if there is one.
    pub fn for_pattern(pattern: &str) -> Option<Scanner> {
        use super::pre::{GPT2, LLAMA3, QWEN2};
        match pattern {
            r"\p{N}" => Some(Scanner::Digits),
            GPT2 => Some(Scanner::Gpt2),
            LLAMA3 => Some(Scanner::Llama3 { max_digits: 3 }),
            QWEN2 => Some(Scanner::Llama3 { max_digits: 1 }),
            _ => None,
        }
    }

    /// Calls `f` on every piece of `text`: the matches and the text between them, in order,
    /// covering all of it.
    #[inline]
    pub fn for_each_piece(self, text: &str, mut f: impl FnMut(&str)) {
        match self {
            Scanner::Digits => {
                let mut prev = 0;
                let mut i = 0;
                while let Some((c, l)) = char_at(text, i) {
                    if class(c) == Class::Number {
                        if prev < i {
                            f(&text[prev..i]);
                        }
                        f(&text[i..i + l]);
                        prev = i + l;
                    }
                    i += l;
                }
                if prev < text.len() {
                    f(&text[prev..]);
                }
            }
            Scanner::Gpt2 => {
                let mut i = 0;
                while i < text.len() {
                    let end = gpt2_match(text, i);
                    f(&text[i..end]);
                    i = end;
                }
            }
            Scanner::Llama3 { max_digits } => {
                let mut i = 0;
                while i < text.len() {
                    let end = llama3_match(text, i, max_digits);
                    f(&text[i..end]);
                    i = end;
                }
            }
        }
    }
}

/// `'s|'t|'re|'ve|'m|'ll|'d` (with `ci`, either case of each ASCII letter) at `i`.
#[inline]
fn contraction(text: &str, i: usize, ci: bool) -> Option<usize> {
    let rest = &text.as_bytes()[i + 1..];
    let lower = |k: usize| {
        rest.get(k)
            .map(|&b| if ci { b.to_ascii_lowercase() } else { b })
    };
    let n = match (lower(0)?, lower(1)) {
        (b's' | b't' | b'm' | b'd', _) => 1,
        (b'r', Some(b'e')) | (b'v', Some(b'e')) | (b'l', Some(b'l')) => 2,
        _ => return None,
    };
    Some(i + 1 + n)
}

/// The end of a whitespace run starting at `i` (whose first character is `\s`), as
/// `\s+(?!\S)|\s+` matches it: the run, minus its last character when something follows and
/// the run is longer than one character.
#[inline]
fn space_run(text: &str, i: usize, end: usize) -> usize {
    if end < text.len() {
        let last = text[..end].chars().next_back().map_or(0, char::len_utf8);
        if end - last > i {
            return end - last;
        }
    }
    end
}

/// The end of the GPT-2 pattern's match at `i` (or of the gap it leaves there).
fn gpt2_match(text: &str, i: usize) -> usize {
    let Some((c, l)) = char_at(text, i) else {
        return text.len();
    };
    if c == '\'' {
        if let Some(end) = contraction(text, i, false) {
            return end;
        }
    }
    // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`: with the space when what follows it fits.
    if c == ' ' {
        if let Some((next, _)) = char_at(text, i + 1) {
            let k = class(next);
            if k != Class::Space {
                return run(text, i + 1, k);
            }
        }
    }
    let k = class(c);
    if k != Class::Space {
        return run(text, i + l, k);
    }
    space_run(text, i, run(text, i, Class::Space))
}

/// The end of the Llama 3 / Qwen 2 pattern's match at `i` (which always exists).
fn llama3_match(text: &str, i: usize, max_digits: usize) -> usize {
    let Some((c, l)) = char_at(text, i) else {
        return text.len();
    };
    if c == '\'' {
        if let Some(end) = contraction(text, i, true) {
            return end;
        }
    }
    let k = class(c);
    // `[^\r\n\p{L}\p{N}]?\p{L}+`
    match k {
        Class::Letter => return run(text, i + l, Class::Letter),
        Class::Space | Class::Other if c != '\r' && c != '\n' => {
            if let Some((next, _)) = char_at(text, i + l) {
                if class(next) == Class::Letter {
                    return run(text, i + l, Class::Letter);
                }
            }
        }
        _ => {}
    }
    // `\p{N}{1,max_digits}`
    if k == Class::Number {
        let mut end = i;
        for _ in 0..max_digits {
            match char_at(text, end) {
                Some((d, dl)) if class(d) == Class::Number => end += dl,
                _ => break,
            }
        }
        return end;
    }
    // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
    let other_from = if k == Class::Other {
        Some(i)
    } else if c == ' ' {
        char_at(text, i + 1)
            .filter(|&(next, _)| class(next) == Class::Other)
            .map(|_| i + 1)
    } else {
        None
    };
    if let Some(j) = other_from {
        let mut end = run(text, j, Class::Other);
        while matches!(text.as_bytes().get(end), Some(b'\r' | b'\n')) {
            end += 1;
        }
        return end;
    }
    // Whitespace: `\s*[\r\n]+` up to the run's last line break, else `\s+(?!\S)|\s+`.
    let end = run(text, i, Class::Space);
    match text[i..end].rfind(['\r', '\n']) {
        Some(p) => i + p + 1,
        None => space_run(text, i, end),
    }
}
