//! Identifiers: 128 random bits, written as lowercase Crockford base32 behind a type prefix.

use crate::error::{Error, Result};

const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
/// 128 bits in base32 take 26 characters.
pub const ENCODED_LEN: usize = 26;

pub const THREAD_PREFIX: &str = "thread_";
pub const RESPONSE_PREFIX: &str = "resp_";
pub const TURN_PREFIX: &str = "msg_";

/// The id grammar as regular expressions (exported to Python, where the request schemas use
/// them), so a route refuses exactly the ids the store would. A response id is the canonical
/// spelling only: lowercase, its first character carrying the top 3 of the 128 bits.
pub const RESPONSE_ID_PATTERN: &str = "^resp_[0-7][0-9a-hjkmnp-tv-z]{25}$";
/// A client-chosen thread id (see `validate_thread_id`).
pub const THREAD_ID_PATTERN: &str = r"^(?!\.{1,2}$)[A-Za-z0-9_.:-]{1,128}$";

/// The raw key of a turn in the store.
pub type TurnKey = [u8; 16];

pub fn random_bits() -> [u8; 16] {
    rand::random::<u128>().to_be_bytes()
}

pub fn encode(bits: &[u8; 16]) -> String {
    let mut n = u128::from_be_bytes(*bits);
    let mut out = [0u8; ENCODED_LEN];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n & 31) as usize];
        n >>= 5;
    }
    // Every byte comes from ALPHABET, so this is ASCII.
    out.iter().map(|&b| b as char).collect()
}

pub fn decode(text: &str) -> Option<[u8; 16]> {
    if text.len() != ENCODED_LEN {
        return None;
    }
    let mut n: u128 = 0;
    for (i, c) in text.bytes().enumerate() {
        let v = ALPHABET.iter().position(|&a| a == c.to_ascii_lowercase())? as u128;
        // 26 * 5 = 130 bits: the first character may only carry the top 3 bits.
        if i == 0 && v > 0b111 {
            return None;
        }
        n = (n << 5) | v;
    }
    Some(n.to_be_bytes())
}

pub fn new_thread_id() -> String {
    format!("{THREAD_PREFIX}{}", encode(&random_bits()))
}

pub fn new_response_id() -> String {
    format!("{RESPONSE_PREFIX}{}", encode(&random_bits()))
}

pub fn turn_id_string(key: &TurnKey) -> String {
    format!("{TURN_PREFIX}{}", encode(key))
}

pub fn parse_turn_id(text: &str) -> Result<TurnKey> {
    text.strip_prefix(TURN_PREFIX)
        .and_then(decode)
        .ok_or_else(|| Error::InvalidInput(format!("invalid turn id {text:?}")))
}

/// Client-chosen thread ids: 1 to 128 characters of `[A-Za-z0-9_.:-]`, except `.` and `..`:
/// URL normalisers remove those path segments, so no URL could name such a thread.
pub fn validate_thread_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id != "."
        && id != ".."
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "invalid thread id {id:?}: use 1 to 128 characters of [A-Za-z0-9_.:-], not . or .."
        )))
    }
}

/// A response is stored and looked up by its text, so only the canonical spelling (the one
/// `new_response_id` writes) names one; `decode` alone would also take upper case. (A turn id
/// is parsed to its key, so any case of it names the same turn.)
pub fn validate_response_id(id: &str) -> Result<()> {
    let canonical = id
        .strip_prefix(RESPONSE_PREFIX)
        .and_then(|text| decode(text).map(|bits| encode(&bits) == text))
        .unwrap_or(false);
    if canonical {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!("invalid response id {id:?}")))
    }
}

/// Owners (tenants) are keys' names: 1 to 128 characters, no NUL (it separates key parts).
pub fn validate_owner(owner: &str) -> Result<()> {
    if owner.is_empty() || owner.len() > 128 || owner.contains('\0') {
        return Err(Error::InvalidInput(format!(
            "invalid owner {owner:?}: use 1 to 128 characters without NUL"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for _ in 0..1000 {
            let bits = random_bits();
            let text = encode(&bits);
            assert_eq!(text.len(), ENCODED_LEN);
            assert_eq!(decode(&text), Some(bits));
        }
        assert_eq!(decode(&encode(&[0xff; 16])), Some([0xff; 16]));
        assert_eq!(decode(&encode(&[0; 16])), Some([0; 16]));
    }

    #[test]
    fn rejects_bad_text() {
        assert_eq!(decode("short"), None);
        assert_eq!(decode(&"u".repeat(26)), None); // 'u' is not in the alphabet
        assert_eq!(decode(&"z".repeat(26)), None); // overflows 128 bits
        assert!(parse_turn_id("resp_0000000000000000000000000a").is_err());
        assert!(validate_response_id("resp_abc").is_err());
        assert!(validate_response_id(&new_response_id()).is_ok());
        assert!(validate_response_id(&new_response_id().to_uppercase()).is_err());
        let upper = format!("resp_{}", &new_response_id()[5..].to_uppercase());
        assert!(validate_response_id(&upper).is_err());
    }

    /// The exported patterns take exactly what the validators take.
    #[test]
    fn patterns_agree_with_validators() {
        let response = fancy_regex::Regex::new(RESPONSE_ID_PATTERN).unwrap();
        let thread = fancy_regex::Regex::new(THREAD_ID_PATTERN).unwrap();
        let id = new_response_id();
        let cases = [
            id.clone(),
            id.to_uppercase(),
            format!("resp_{}", &id[5..].to_uppercase()),
            format!("resp_z{}", &id[6..]),
            format!("resp_7{}", &id[6..]),
            format!("resp_8{}", &id[6..]),
            format!("{id}0"),
            "resp_".to_owned(),
            "resp_0000000000000000000000000u".to_owned(),
        ];
        for case in &cases {
            let matched = response.is_match(case).unwrap();
            assert_eq!(matched, validate_response_id(case).is_ok(), "{case}");
        }
        for case in [
            ".",
            "..",
            "...",
            ".a",
            "",
            "a b",
            "é",
            "thread_x",
            &"x".repeat(129),
        ] {
            let matched = thread.is_match(case).unwrap();
            assert_eq!(matched, validate_thread_id(case).is_ok(), "{case:?}");
        }
    }

    #[test]
    fn thread_ids() {
        assert!(validate_thread_id("thread_user123_session1").is_ok());
        assert!(validate_thread_id("a.b:c-d_e").is_ok());
        assert!(validate_thread_id(&"x".repeat(128)).is_ok());
        assert!(validate_thread_id(&"x".repeat(129)).is_err());
        assert!(validate_thread_id("").is_err());
        assert!(validate_thread_id("has space").is_err());
        assert!(validate_thread_id("é").is_err());
        assert!(validate_thread_id(".").is_err());
        assert!(validate_thread_id("..").is_err());
        assert!(validate_thread_id("...").is_ok());
        assert!(validate_thread_id(".a").is_ok());
        assert!(validate_thread_id(&new_thread_id()).is_ok());
    }

    #[test]
    fn owners() {
        assert!(validate_owner("acme").is_ok());
        assert!(validate_owner("").is_err());
        assert!(validate_owner("a\0b").is_err());
    }
}
