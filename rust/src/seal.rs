//! Sealed compaction items: a conversation's summary handed to a client as opaque
//! `encrypted_content` that it can neither read nor forge. ChaCha20-Poly1305 under the server's
//! 32-byte key, with the owner in the associated data, so an item sealed for one tenant (or by
//! another server key, or altered in any byte) does not open for anyone else.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

use crate::error::{Error, Result};

/// Marks the format, so a later one can be told apart.
const PREFIX: &str = "tlc1.";
const NONCE_LEN: usize = 12;
pub const KEY_LEN: usize = 32;

fn aad(owner: &str) -> Vec<u8> {
    let mut aad = b"threadloom compaction v1\0".to_vec();
    aad.extend_from_slice(owner.as_bytes());
    aad
}

fn cipher(key: &[u8]) -> Result<ChaCha20Poly1305> {
    if key.len() != KEY_LEN {
        return Err(Error::InvalidInput(format!(
            "a compaction key has {KEY_LEN} bytes, not {}",
            key.len()
        )));
    }
    Ok(ChaCha20Poly1305::new(Key::from_slice(key)))
}

/// `text` sealed for `owner`.
pub fn seal(key: &[u8], owner: &str, text: &str) -> Result<String> {
    let nonce: [u8; NONCE_LEN] = rand::random();
    let sealed = cipher(key)?
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: text.as_bytes(),
                aad: &aad(owner),
            },
        )
        .map_err(|_| Error::InvalidInput("sealing the compaction failed".into()))?;
    let mut raw = nonce.to_vec();
    raw.extend_from_slice(&sealed);
    Ok(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(raw)))
}

/// The text `sealed` holds, if it was sealed under `key` for `owner` and is unchanged.
pub fn open(key: &[u8], owner: &str, sealed: &str) -> Result<String> {
    let refused = || {
        Error::InvalidInput(
            "the compaction item was not made by this server for this caller, or was altered"
                .into(),
        )
    };
    let body = sealed.strip_prefix(PREFIX).ok_or_else(refused)?;
    let raw = URL_SAFE_NO_PAD.decode(body).map_err(|_| refused())?;
    if raw.len() < NONCE_LEN {
        return Err(refused());
    }
    let (nonce, data) = raw.split_at(NONCE_LEN);
    let plain = cipher(key)?
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: data,
                aad: &aad(owner),
            },
        )
        .map_err(|_| refused())?;
    String::from_utf8(plain).map_err(|_| refused())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; KEY_LEN] = [7; KEY_LEN];

    #[test]
    fn opens_only_for_its_key_owner_and_bytes() {
        let sealed = seal(&KEY, "alice", "the summary").unwrap();
        assert_eq!(open(&KEY, "alice", &sealed).unwrap(), "the summary");
        assert_ne!(
            sealed,
            seal(&KEY, "alice", "the summary").unwrap(),
            "fresh nonce"
        );
        assert!(open(&KEY, "bob", &sealed).is_err());
        assert!(open(&[8; KEY_LEN], "alice", &sealed).is_err());
        let body = &sealed[PREFIX.len()..];
        for i in 0..body.len() {
            let mut chars: Vec<char> = body.chars().collect();
            chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
            let altered: String = chars.into_iter().collect();
            assert!(
                open(&KEY, "alice", &format!("{PREFIX}{altered}")).is_err(),
                "byte {i}"
            );
        }
        for bad in [
            "",
            "tlc1.",
            "tlc1.!!",
            "tlc2.AAAA",
            &sealed[..sealed.len() - 2],
        ] {
            assert!(open(&KEY, "alice", bad).is_err(), "{bad}");
        }
        assert!(seal(&[1; 5], "alice", "x").is_err());
    }
}
