//! Key encodings of the thread tables. NUL separates parts: owners and thread ids never hold it.

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
}
