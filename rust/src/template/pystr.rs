//! Python `str` method semantics where `minijinja_contrib::pycompat` differs from CPython:
//! Python's whitespace (`str.isspace`, which also counts U+001C..U+001F) for `strip`,
//! `lstrip`, `rstrip`, `split()` and the `trim` filter; `split(None, maxsplit)` keeping the
//! tail as CPython does; `rsplit`; `splitlines` with all of Python's line boundaries; and
//! `title` with Python's cased/uncased word rule and titlecase mappings. Everything else is
//! passed on to pycompat. Also jinja2's `trim` and `title` filters, which use Python's
//! whitespace.

use minijinja::value::{from_args, Kwargs, Value};
use minijinja::{Error, ErrorKind, State};

/// `str.isspace()` for one character.
pub fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `str.strip(chars)`, `lstrip`, `rstrip`.
fn strip<'a>(s: &'a str, chars: Option<&str>, left: bool, right: bool) -> &'a str {
    let set: Option<Vec<char>> = chars.map(|c| c.chars().collect());
    let matches = |c: char| match &set {
        Some(set) => set.contains(&c),
        None => is_py_space(c),
    };
    let mut out = s;
    if left {
        out = out.trim_start_matches(matches);
    }
    if right {
        out = out.trim_end_matches(matches);
    }
    out
}

/// `str.split(None, maxsplit)`: runs of whitespace separate, leading and trailing whitespace
/// yields no empty strings, and once `maxsplit` splits are made the rest (minus its leading
/// whitespace) is the last item, trailing whitespace included.
fn split_whitespace(s: &str, maxsplit: Option<usize>) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s;
    let mut left = maxsplit.unwrap_or(usize::MAX);
    loop {
        rest = rest.trim_start_matches(is_py_space);
        if rest.is_empty() {
            break;
        }
        if left == 0 {
            out.push(rest);
            break;
        }
        let end = rest.find(is_py_space).unwrap_or(rest.len());
        out.push(&rest[..end]);
        rest = &rest[end..];
        left -= 1;
    }
    out
}

/// `str.rsplit(None, maxsplit)`, the mirror image of [`split_whitespace`].
fn rsplit_whitespace(s: &str, maxsplit: Option<usize>) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s;
    let mut left = maxsplit.unwrap_or(usize::MAX);
    loop {
        rest = rest.trim_end_matches(is_py_space);
        if rest.is_empty() {
            break;
        }
        if left == 0 {
            out.push(rest);
            break;
        }
        let start = rest
            .rfind(is_py_space)
            .map(|i| i + rest[i..].chars().next().map_or(0, char::len_utf8))
            .unwrap_or(0);
        out.push(&rest[start..]);
        rest = &rest[..start];
        left -= 1;
    }
    out.reverse();
    out
}

fn is_line_break(c: char) -> bool {
    matches!(
        c,
        '\n' | '\r'
            | '\u{0b}'
            | '\u{0c}'
            | '\u{1c}'
            | '\u{1d}'
            | '\u{1e}'
            | '\u{85}'
            | '\u{2028}'
            | '\u{2029}'
    )
}

/// `str.splitlines(keepends)`.
fn splitlines(s: &str, keepends: bool) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if !is_line_break(c) {
            continue;
        }
        let mut end = i + c.len_utf8();
        if c == '\r' {
            if let Some(&(j, '\n')) = chars.peek() {
                end = j + 1;
                chars.next();
            }
        }
        out.push(if keepends {
            &s[start..end]
        } else {
            &s[start..i]
        });
        start = end;
    }
    if start < s.len() {
        out.push(&s[start..]);
    }
    out
}

/// Letters of general category Lt.
fn is_titlecase(c: char) -> bool {
    matches!(
        c as u32,
        0x1c5 | 0x1c8 | 0x1cb | 0x1f2 | 0x1f88..=0x1f8f | 0x1f98..=0x1f9f | 0x1fa8..=0x1faf
            | 0x1fbc | 0x1fcc | 0x1ffc
    )
}

/// Unicode's `Cased` property, which Python's `title` uses to find word starts.
fn is_cased(c: char) -> bool {
    c.is_lowercase() || c.is_uppercase() || is_titlecase(c)
}

/// The full titlecase mapping of `c` (where it differs from the uppercase mapping, from
/// Unicode's UnicodeData and SpecialCasing; elsewhere it is the uppercase mapping).
fn push_titlecase(out: &mut String, c: char) {
    let cp = c as u32;
    let single = match cp {
        // DŽ, LJ, NJ (three forms each) and DZ have a titlecase form of their own.
        0x1c4..=0x1cc => Some(cp - (cp - 0x1c4) % 3 + 1),
        0x1f1..=0x1f3 => Some(0x1f2),
        // Georgian Mkhedruli letters titlecase to themselves.
        0x10d0..=0x10fa | 0x10fd..=0x10ff => Some(cp),
        // Greek with ypogegrammeni titlecases to prosgegrammeni.
        0x1f80..=0x1faf => Some(cp | 0x08),
        0x1fb3 | 0x1fbc => Some(0x1fbc),
        0x1fc3 | 0x1fcc => Some(0x1fcc),
        0x1ff3 | 0x1ffc => Some(0x1ffc),
        _ => None,
    };
    if let Some(t) = single.and_then(char::from_u32) {
        out.push(t);
        return;
    }
    let multi = match c {
        '\u{df}' => "Ss",
        '\u{587}' => "\u{535}\u{582}",
        '\u{1fb2}' => "\u{1fba}\u{345}",
        '\u{1fb4}' => "\u{386}\u{345}",
        '\u{1fb7}' => "\u{391}\u{342}\u{345}",
        '\u{1fc2}' => "\u{1fca}\u{345}",
        '\u{1fc4}' => "\u{389}\u{345}",
        '\u{1fc7}' => "\u{397}\u{342}\u{345}",
        '\u{1ff2}' => "\u{1ffa}\u{345}",
        '\u{1ff4}' => "\u{38f}\u{345}",
        '\u{1ff7}' => "\u{3a9}\u{342}\u{345}",
        '\u{fb00}' => "Ff",
        '\u{fb01}' => "Fi",
        '\u{fb02}' => "Fl",
        '\u{fb03}' => "Ffi",
        '\u{fb04}' => "Ffl",
        '\u{fb05}' | '\u{fb06}' => "St",
        '\u{fb13}' => "\u{544}\u{576}",
        '\u{fb14}' => "\u{544}\u{565}",
        '\u{fb15}' => "\u{544}\u{56b}",
        '\u{fb16}' => "\u{54e}\u{576}",
        '\u{fb17}' => "\u{544}\u{56d}",
        _ => {
            out.extend(c.to_uppercase());
            return;
        }
    };
    out.push_str(multi);
}

/// `str.title()`: a character after a cased one is lowercased (final sigma in the context of
/// the whole string, as Python does), any other is titlecased.
fn title(s: &str) -> String {
    // `str::to_lowercase` maps each character on its own except the capital sigma, which
    // becomes one character either way, so its output lines up with `s` character by
    // character.
    let lowered = s.to_lowercase();
    let mut lowered = lowered.chars();
    let mut out = String::with_capacity(s.len());
    let mut prev_cased = false;
    for c in s.chars() {
        let n = if c == '\u{3a3}' {
            1
        } else {
            c.to_lowercase().count()
        };
        if prev_cased {
            out.extend(lowered.by_ref().take(n));
        } else {
            push_titlecase(&mut out, c);
            lowered.by_ref().take(n).for_each(drop);
        }
        prev_cased = is_cased(c);
    }
    out
}

fn strings(items: Vec<&str>) -> Value {
    items.into_iter().map(Value::from).collect()
}

fn maxsplit(value: Option<i64>) -> Option<usize> {
    value.and_then(|n| usize::try_from(n).ok())
}

fn split_args(args: &[Value]) -> Result<(Option<String>, Option<usize>), Error> {
    let (sep, max, kwargs): (Option<Value>, Option<i64>, Kwargs) = from_args(args)?;
    let sep = match sep {
        Some(v) => Some(v),
        None => kwargs.get::<Option<Value>>("sep")?,
    };
    let max = match max {
        Some(n) => Some(n),
        None => kwargs.get::<Option<i64>>("maxsplit")?,
    };
    kwargs.assert_all_used()?;
    let sep = match sep {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => match v.as_str() {
            Some("") => {
                return Err(Error::new(ErrorKind::InvalidOperation, "empty separator"));
            }
            Some(s) => Some(s.to_owned()),
            None => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("must be str or None, not {}", v.kind()),
                ));
            }
        },
    };
    Ok((sep, maxsplit(max)))
}

fn string_method(s: &str, method: &str, args: &[Value]) -> Option<Result<Value, Error>> {
    let result = match method {
        "strip" | "lstrip" | "rstrip" => (|| {
            let (chars,): (Option<&str>,) = from_args(args)?;
            Ok(Value::from(strip(
                s,
                chars,
                method != "rstrip",
                method != "lstrip",
            )))
        })(),
        "split" => split_args(args).map(|(sep, max)| match (sep, max) {
            (None, max) => strings(split_whitespace(s, max)),
            (Some(sep), None) => strings(s.split(sep.as_str()).collect()),
            (Some(sep), Some(n)) => strings(s.splitn(n.saturating_add(1), sep.as_str()).collect()),
        }),
        "rsplit" => split_args(args).map(|(sep, max)| match (sep, max) {
            (None, max) => strings(rsplit_whitespace(s, max)),
            (Some(sep), None) => strings(s.split(sep.as_str()).collect()),
            (Some(sep), Some(n)) => {
                let mut items: Vec<&str> = s.rsplitn(n.saturating_add(1), sep.as_str()).collect();
                items.reverse();
                strings(items)
            }
        }),
        "splitlines" => (|| {
            let (keepends, kwargs): (Option<bool>, Kwargs) = from_args(args)?;
            let keepends = match keepends {
                Some(k) => k,
                None => kwargs.get::<Option<bool>>("keepends")?.unwrap_or(false),
            };
            kwargs.assert_all_used()?;
            Ok(strings(splitlines(s, keepends)))
        })(),
        "title" => (|| {
            let () = from_args(args)?;
            Ok(Value::from(title(s)))
        })(),
        _ => return None,
    };
    Some(result)
}

/// The environment's unknown-method callback: Python `str` methods as above, then pycompat.
pub fn method_callback(
    state: &mut State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, Error> {
    if let Some(s) = value.as_str() {
        if let Some(result) = string_method(s, method, args) {
            return result;
        }
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

/// jinja2's `trim` filter: `str(value).strip(chars)`.
pub fn trim_filter(value: &Value, chars: Option<String>) -> Value {
    let text = match value.as_str() {
        Some(s) => s.to_owned(),
        None => value.to_string(),
    };
    let out = strip(&text, chars.as_deref(), true, true).to_owned();
    if value.is_safe() {
        Value::from_safe_string(out)
    } else {
        Value::from(out)
    }
}

/// jinja2's `title` filter (not `str.title`): words start after runs of `-`, `(`, `{`, `[`,
/// `<` and Python whitespace; each word's first character is uppercased, the rest lowercased.
pub fn title_filter(value: &Value) -> Value {
    let text = match value.as_str() {
        Some(s) => s.to_owned(),
        None => value.to_string(),
    };
    let is_sep = |c: char| matches!(c, '-' | '(' | '{' | '[' | '<') || is_py_space(c);
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while !rest.is_empty() {
        let sep_end = rest.find(|c: char| !is_sep(c)).unwrap_or(rest.len());
        out.push_str(&rest[..sep_end]);
        rest = &rest[sep_end..];
        let word_end = rest.find(is_sep).unwrap_or(rest.len());
        let word = &rest[..word_end];
        if let Some(first) = word.chars().next() {
            out.extend(first.to_uppercase());
            out.push_str(&word[first.len_utf8()..].to_lowercase());
        }
        rest = &rest[word_end..];
    }
    if value.is_safe() {
        Value::from_safe_string(out)
    } else {
        Value::from(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_whitespace() {
        assert_eq!(strip("\x1c a \x1f\u{3000}", None, true, true), "a");
        assert_eq!(strip("xxaxx", Some("x"), true, false), "axx");
        assert_eq!(split_whitespace("  a b  c  ", Some(1)), ["a", "b  c  "]);
        assert_eq!(split_whitespace("  a\x1cb ", None), ["a", "b"]);
        assert_eq!(split_whitespace("   ", Some(0)), Vec::<&str>::new());
        assert_eq!(split_whitespace(" a b ", Some(0)), ["a b "]);
        assert_eq!(rsplit_whitespace("  a b  c  ", Some(1)), ["  a b", "c"]);
        assert_eq!(rsplit_whitespace("a b c", None), ["a", "b", "c"]);
    }

    #[test]
    fn python_splitlines() {
        assert_eq!(
            splitlines("a\r\nb\rc\n\nd\x0be", false),
            ["a", "b", "c", "", "d", "e"]
        );
        assert_eq!(splitlines("a\r\nb\n", true), ["a\r\n", "b\n"]);
        assert_eq!(splitlines("", false), Vec::<&str>::new());
    }

    #[test]
    fn python_title() {
        assert_eq!(title("they're o'neil x1y 3rd"), "They'Re O'Neil X1Y 3Rd");
        assert_eq!(title("ǆemal ﬁsh ßa"), "ǅemal Fish Ssa");
        assert_eq!(title("ΣΊΣΥΦΟΣ ΣΑΣ"), "Σίσυφος Σας");
    }
}
