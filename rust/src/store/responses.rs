//! Responses, and the token counts cached per turn.

use super::keys;
use super::*;

impl Store {
    pub fn get_response(&self, owner: &str, id: &str) -> Result<ResponseRecord> {
        self.read(|txn| self.load_response(txn, owner, id, now_ms()))
    }

    pub fn delete_response(&self, owner: &str, id: &str) -> Result<()> {
        let owner = owner.to_owned();
        let id = id.to_owned();
        self.write(move |s, txn| {
            let r = s.load_response(txn, &owner, &id, now_ms())?;
            s.responses.delete(txn, r.id.as_bytes())?;
            s.release(txn, &ids::parse_turn_id(&r.last_turn)?)?;
            Ok(())
        })
    }

    // ---- token counts -----------------------------------------------------------------------

    /// Caches token counts of turns under a tokenizer fingerprint. Turns that no longer exist
    /// are skipped.
    pub fn set_token_counts(&self, fingerprint: u64, counts: &[(TurnKey, u32)]) -> Result<()> {
        let counts = counts.to_vec();
        self.write(move |s, txn| {
            for (key, n) in &counts {
                if s.turns.get(txn, key)?.is_some() {
                    s.token_counts.put(
                        txn,
                        &keys::token_count(key, fingerprint),
                        &n.to_le_bytes(),
                    )?;
                }
            }
            Ok(())
        })
    }

    pub fn token_counts(&self, fingerprint: u64, turns: &[TurnKey]) -> Result<Vec<Option<u32>>> {
        self.read(|txn| {
            turns
                .iter()
                .map(|key| {
                    Ok(self
                        .token_counts
                        .get(txn, &keys::token_count(key, fingerprint))?
                        .and_then(|v| <[u8; 4]>::try_from(v).ok())
                        .map(u32::from_le_bytes))
                })
                .collect()
        })
    }
}
