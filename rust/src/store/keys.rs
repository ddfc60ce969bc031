//! Key encodings of the thread tables. NUL separates parts: owners and thread ids never hold it.

use crate::error::{Error, Result};

pub fn thread(owner: &str, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(owner.len() + 1 + id.len());
    k.extend_from_slice(owner.as_bytes());
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k
}

/// owner NUL visible(1 byte) inverted-last-activity(8 bytes BE) thread-id: a forward scan of
/// one owner's visible (or hidden) threads yields the most recently active first.
pub fn activity(owner: &str, visible: bool, last_activity_ms: i64, id: &str) -> Vec<u8> {
    let mut k = activity_prefix(owner, visible);
    k.extend_from_slice(&inverted(last_activity_ms));
    k.extend_from_slice(id.as_bytes());
    k
}

pub fn activity_prefix(owner: &str, visible: bool) -> Vec<u8> {
    let mut k = Vec::with_capacity(owner.len() + 2 + 8 + 32);
    k.extend_from_slice(owner.as_bytes());
    k.push(0);
    k.push(u8::from(visible));
    k
}

fn inverted(ms: i64) -> [u8; 8] {
    (u64::MAX - ms.max(0) as u64).to_be_bytes()
}

/// A `list_threads` cursor: the activity key of the page's last thread after its prefix, in
/// hex. Both stores write and read this one form, so a cursor means the same on either.
pub fn cursor(last_activity_ms: i64, id: &str) -> String {
    let mut bytes = inverted(last_activity_ms).to_vec();
    bytes.extend_from_slice(id.as_bytes());
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The last activity (ms) and thread id a cursor names, or InvalidInput.
pub fn parse_cursor(text: &str) -> Result<(i64, String)> {
    let bad = || Error::InvalidInput(format!("invalid cursor {text:?}"));
    if !text.len().is_multiple_of(2) {
        return Err(bad());
    }
    let bytes = (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()
        .filter(|b| b.len() > 8)
        .ok_or_else(bad)?;
    let (time, id) = bytes.split_at(8);
    let id = std::str::from_utf8(id).map_err(|_| bad())?;
    let inverted = u64::from_be_bytes(time.try_into().map_err(|_| bad())?);
    let ms = (u64::MAX - inverted).min(i64::MAX as u64) as i64;
    Ok((ms, id.to_owned()))
}

pub fn token_count(turn: &[u8; 16], fingerprint: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(turn);
    k[16..].copy_from_slice(&fingerprint.to_be_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activity_orders_newest_first() {
        let older = activity("o", true, 1_000, "b");
        let newer = activity("o", true, 2_000, "a");
        assert!(newer < older);
        assert!(older.starts_with(&activity_prefix("o", true)));
        assert!(!older.starts_with(&activity_prefix("o", false)));
        // A longer owner name that shares a prefix never lands in another owner's range.
        assert!(!activity("ox", true, 1, "a").starts_with(&activity_prefix("o", true)));
    }

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let c = cursor(1_700_000_000_123, "thread_x");
        assert_eq!(
            parse_cursor(&c).unwrap(),
            (1_700_000_000_123, "thread_x".to_owned())
        );
        // The cursor is the activity key's tail, so a page resumes right after its last key.
        let key = activity("o", true, 1_700_000_000_123, "thread_x");
        assert!(key.ends_with(
            &(0..c.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&c[i..i + 2], 16).unwrap())
                .collect::<Vec<u8>>()
        ));
        for bad in [
            "",
            "abc",
            "zz",
            "00",
            "0011223344556677",
            "0011223344556677ff",
        ] {
            assert!(
                matches!(parse_cursor(bad), Err(Error::InvalidInput(_))),
                "{bad}"
            );
        }
    }
}
