//! Retention sweeps, statistics and the consistency check.

use super::ops::{opt_turn_key, turn_not_found};
use super::records::from_json;
use super::turn::{self};
use super::*;

impl Store {
    /// Deletes expired threads and responses and the turns only they reached.
    pub fn sweep(&self) -> Result<SweepStats> {
        const BATCH: usize = 512;
        let mut stats = SweepStats::default();
        loop {
            let done = self.write(|s, txn| {
                let now = now_ms();
                let mut batch = SweepStats::default();
                let mut expired = Vec::new();
                for item in s.threads.iter(txn)? {
                    let (_, raw) = item?;
                    let t: ThreadRecord = from_json(raw, "thread")?;
                    if s.retention.thread_expired(&t, now) {
                        expired.push(t);
                        if expired.len() == BATCH {
                            break;
                        }
                    }
                }
                for t in &expired {
                    batch.turns += s.remove_thread(txn, t)?;
                    batch.threads += 1;
                }
                let mut dead = Vec::new();
                for item in s.responses.iter(txn)? {
                    let (_, raw) = item?;
                    let r: ResponseRecord = from_json(raw, "response")?;
                    if s.retention.response_expired(&r, now) {
                        dead.push(r);
                        if dead.len() == BATCH {
                            break;
                        }
                    }
                }
                for r in &dead {
                    s.responses.delete(txn, r.id.as_bytes())?;
                    batch.turns += s.release(txn, &ids::parse_turn_id(&r.last_turn)?)?;
                    batch.responses += 1;
                }
                Ok((batch, expired.len() < BATCH && dead.len() < BATCH))
            })?;
            stats.threads += done.0.threads;
            stats.responses += done.0.responses;
            stats.turns += done.0.turns;
            if done.1 {
                return Ok(stats);
            }
        }
    }

    pub fn stats(&self) -> Result<StoreStats> {
        let file_bytes = self.env.real_disk_size()?;
        let map_bytes = self.env.info().map_size as u64;
        self.read(|txn| {
            Ok(StoreStats {
                threads: self.threads.len(txn)?,
                responses: self.responses.len(txn)?,
                turns: self.turns.len(txn)?,
                file_bytes,
                map_bytes,
            })
        })
    }

    /// Checks the reference counts against the records: every turn's count equals its children
    /// plus the threads and responses pointing at it, and every parent exists. For tests and
    /// `threadloom check`.
    pub fn verify(&self) -> Result<()> {
        use std::collections::HashMap;
        self.read(|txn| {
            let mut expected: HashMap<TurnKey, u32> = HashMap::new();
            let mut children = 0u64;
            for item in self.turns.iter(txn)? {
                let (k, raw) = item?;
                let key: TurnKey = k
                    .try_into()
                    .map_err(|_| Error::Format("turn key is not 16 bytes".into()))?;
                let view = turn::parse(key, raw)?;
                expected.entry(key).or_insert(0);
                if let Some(p) = view.parent {
                    let parent = self.load_turn(txn, &p)?;
                    if parent.depth + 1 != view.depth {
                        return Err(Error::Format(
                            "turn depth does not follow its parent".into(),
                        ));
                    }
                    *expected.entry(p).or_insert(0) += 1;
                    if !self.children(view.owner, &p)?.contains(&key) {
                        return Err(Error::Format("turn missing from the children index".into()));
                    }
                    children += 1;
                }
            }
            // Every turn with a parent is indexed (above), and nothing else is.
            if self.children.len(txn)? != children {
                return Err(Error::Format("stale children index entries".into()));
            }
            for item in self.threads.iter(txn)? {
                let (_, raw) = item?;
                let t: ThreadRecord = from_json(raw, "thread")?;
                if let Some(h) = opt_turn_key(&t.head)? {
                    *expected.get_mut(&h).ok_or_else(|| turn_not_found(&h))? += 1;
                }
            }
            for item in self.responses.iter(txn)? {
                let (_, raw) = item?;
                let r: ResponseRecord = from_json(raw, "response")?;
                let last = ids::parse_turn_id(&r.last_turn)?;
                *expected
                    .get_mut(&last)
                    .ok_or_else(|| turn_not_found(&last))? += 1;
            }
            for (key, n) in expected {
                if n == 0 {
                    return Err(Error::Format(format!(
                        "turn {} is unreachable",
                        ids::turn_id_string(&key)
                    )));
                }
                if self.refcount(txn, &key)? != n {
                    return Err(Error::Format(format!(
                        "turn {} has a wrong reference count",
                        ids::turn_id_string(&key)
                    )));
                }
            }
            Ok(())
        })
    }
}
