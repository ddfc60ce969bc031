//! GPT-2's byte-level token form and the raw bytes the 2023 loader keeps.

use std::borrow::Cow;

/// The text of the raw-byte tokens every merge keeps in GPT-2 form: `Ġ` (space) and `Ċ` (newline).
pub(super) const MERGE_SPACE: &str = "\u{0120}";
pub(super) const MERGE_NEWLINE: &str = "\u{010A}";

// ---------------------------------------------------------------------------------------------
// GPT-2 byte-level form <-> raw bytes

/// GPT-2's byte-to-unicode map, inverted: index = code point, value = byte (or -1). Printable
/// bytes (`!`..=`~`, `¡`..=`¬`, `®`..=`ÿ`) stand for themselves; the other 68 take the code
/// points from 256 on, in byte order.
const fn gpt2_unicode_to_byte_table() -> [i16; 324] {
    let mut table = [-1i16; 324];
    let mut n = 0;
    let mut b = 0;
    while b < 256 {
        let printable =
            (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
        if printable {
            table[b] = b as i16;
        } else {
            table[256 + n] = b as i16;
            n += 1;
        }
        b += 1;
    }
    table
}

static GPT2_UNICODE_TO_BYTE: [i16; 324] = gpt2_unicode_to_byte_table();

/// The byte a character of GPT-2's byte-level alphabet stands for.
pub fn gpt2_char_to_byte(c: char) -> Option<u8> {
    let i = c as usize;
    GPT2_UNICODE_TO_BYTE
        .get(i)
        .and_then(|&b| u8::try_from(b).ok())
}

/// A vocabulary entry in GPT-2's byte-level form (`"Ġthe"`) as the raw bytes it stands for
/// (`" the"`). Text with a character outside that alphabet (an added token such as `"<|x|>"` is
/// inside it, `"中"` is not) is returned unchanged, as is text that is not UTF-8.
pub fn gpt2_token_to_bytes(token: &[u8]) -> Cow<'_, [u8]> {
    let Ok(text) = std::str::from_utf8(token) else {
        return Cow::Borrowed(token);
    };
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match gpt2_char_to_byte(c) {
            Some(b) => out.push(b),
            None => return Cow::Borrowed(token),
        }
    }
    if out == token {
        Cow::Borrowed(token)
    } else {
        Cow::Owned(out)
    }
}

fn push_merge_side(out: &mut Vec<u8>, side: &[u8]) {
    for &b in gpt2_token_to_bytes(side).iter() {
        match b {
            b' ' => out.extend_from_slice(MERGE_SPACE.as_bytes()),
            b'\n' => out.extend_from_slice(MERGE_NEWLINE.as_bytes()),
            _ => out.push(b),
        }
    }
}

/// A merge `"left right"` as the 2023 loader looks it up: both sides as raw bytes, except that
/// space and newline stay `"Ġ"`/`"Ċ"` (its `find_bpe_rank` maps them so before the lookup). The
/// split is at the first space after the first byte, as that loader splits. A merge without a
/// separator is returned unchanged.
pub fn gpt2_merge_to_bytes(merge: &[u8]) -> Cow<'_, [u8]> {
    let Some(pos) = merge.iter().skip(1).position(|&b| b == b' ').map(|p| p + 1) else {
        return Cow::Borrowed(merge);
    };
    let mut out = Vec::with_capacity(merge.len());
    push_merge_side(&mut out, &merge[..pos]);
    out.push(b' ');
    push_merge_side(&mut out, &merge[pos + 1..]);
    if out == merge {
        Cow::Borrowed(merge)
    } else {
        Cow::Owned(out)
    }
}

/// Whether a gpt2 vocabulary already holds raw bytes (a converted file): more normal tokens
/// contain a raw space or newline than GPT-2's `Ġ`/`Ċ`. Byte-level vocabularies have thousands
/// of `Ġ` tokens and no raw spaces, converted ones the reverse; rewriting a converted vocabulary
/// again would be wrong (`"é"` would become the single byte 0xE9).
pub(super) fn vocab_is_raw(tokens: &[String], types: &[i32]) -> bool {
    let (mut raw, mut mapped) = (0usize, 0usize);
    for (t, _) in tokens.iter().zip(types).filter(|(_, &ty)| ty == 1) {
        raw += usize::from(t.contains([' ', '\n']));
        mapped += usize::from(t.contains(['\u{0120}', '\u{010A}']));
    }
    raw > mapped
}

/// The vocabulary entry as the old gpt2 loader wants it: normal tokens (type 1) as raw bytes,
/// everything else (control, user-defined...) unchanged.
pub(super) fn converted_token(token: &[u8], token_type: i32) -> Cow<'_, [u8]> {
    if token_type == 1 {
        gpt2_token_to_bytes(token)
    } else {
        Cow::Borrowed(token)
    }
}
