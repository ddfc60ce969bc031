//! `Steps`: the sequences of one batched context, and one step over them.

use rand::rngs::StdRng;

use crate::constrain::Constraint;
use crate::error::{Error, Result};
use crate::step::sample::{pick, Sampling};

/// Tokens the repetition penalty looks back over (prompt and reply), as ctransformers does.
pub const PENALTY_WINDOW: usize = 64;

/// One token of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub token: u32,
    pub pos: u32,
    pub seq: u32,
    /// Whether the decoder keeps this token's logits (the last token of a decoding sequence).
    pub logits: bool,
}

/// Evaluates batches of one model context. Every logits row asked for in a `decode` call stays
/// readable until the next call.
pub trait Decoder {
    /// The most entries one `decode` takes.
    fn capacity(&self) -> usize;
    /// Evaluates `batch`; Err carries the backend's code.
    fn decode(&mut self, batch: &[Entry]) -> std::result::Result<(), i32>;
    /// The logits of the `row`th entry of the last `decode` (one that asked for them).
    fn logits(&mut self, row: usize) -> &mut [f32];
    /// Forgets `seq`'s cache from position `from` on (all of it for 0). False when the backend
    /// cannot cut there.
    fn forget(&mut self, seq: u32, from: u32) -> bool;
}

#[derive(Default)]
struct Seq {
    /// The tokens the sequence holds: the first `evaluated` are in the cache, the rest wait
    /// for the next batch.
    ids: Vec<u32>,
    evaluated: usize,
    /// What the last step picked, not evaluated yet (and not in `ids`).
    sampled: Option<u32>,
    rng: Option<StdRng>,
}

/// One sequence's part of a step: its settings and, for a constrained reply, its matcher.
pub struct Want<'a> {
    pub seq: usize,
    pub sampling: Sampling,
    pub constraint: Option<&'a mut Constraint>,
}

/// The sequences of one context, driven by one thread.
pub struct Steps<D> {
    decoder: D,
    seqs: Vec<Seq>,
    context_length: usize,
    /// Sequences evaluated per decode call (None: all; 1 steps them one by one, for benches).
    group: Option<usize>,
}

impl<D: Decoder> Steps<D> {
    pub fn new(decoder: D, sequences: usize, context_length: usize, group: Option<usize>) -> Self {
        Steps {
            decoder,
            seqs: (0..sequences).map(|_| Seq::default()).collect(),
            context_length,
            group: group.filter(|&g| g > 0),
        }
    }

    /// The decoder, for what `Steps` does not cover (saving and loading states).
    pub fn decoder(&mut self) -> &mut D {
        &mut self.decoder
    }

    pub fn sequences(&self) -> usize {
        self.seqs.len()
    }

    /// The tokens `seq` holds (a sampled token counts once the next step evaluated it).
    pub fn held(&self, seq: usize) -> &[u32] {
        &self.seqs[seq].ids
    }

    /// The tokens whose state is in the cache.
    pub fn evaluated(&self, seq: usize) -> &[u32] {
        let s = &self.seqs[seq];
        &s.ids[..s.evaluated]
    }

    /// Keeps the first `keep` held tokens of `seq`, forgets the rest (and a sampled token),
    /// and queues `ids` after them for the next step's batch.
    pub fn prefill(&mut self, seq: usize, keep: usize, ids: &[u32]) {
        let keep = keep.min(self.seqs[seq].ids.len());
        if keep < self.seqs[seq].evaluated {
            // Cutting back does not fail with a full-size cache; if it ever does, forget it
            // all and evaluate the kept prefix again.
            let cut = self.decoder.forget(seq as u32, keep as u32);
            let s = &mut self.seqs[seq];
            if cut {
                s.evaluated = keep;
            } else {
                self.decoder.forget(seq as u32, 0);
                s.evaluated = 0;
            }
        }
        let s = &mut self.seqs[seq];
        s.sampled = None;
        s.rng = None;
        s.ids.truncate(keep);
        s.ids.extend_from_slice(ids);
    }

    /// Forgets everything `seq` holds.
    pub fn clear(&mut self, seq: usize) {
        self.decoder.forget(seq as u32, 0);
        self.seqs[seq] = Seq::default();
    }

    /// Declares that `seq`'s cache now holds exactly `ids` (a restored state).
    pub fn restore(&mut self, seq: usize, ids: &[u32]) {
        self.seqs[seq] = Seq {
            ids: ids.to_vec(),
            evaluated: ids.len(),
            ..Seq::default()
        };
    }

    /// One step: evaluates every waiting token (prompt chunks of all sequences, the sampled
    /// token of each in `wants`), then samples the next token of each in `wants` from its
    /// logits, masked by its constraint. None: that sequence's context is full.
    pub fn step(&mut self, wants: &mut [Want<'_>]) -> Result<Vec<Option<u32>>> {
        let mut out = vec![None; wants.len()];
        let mut live = Vec::with_capacity(wants.len());
        for (n, want) in wants.iter().enumerate() {
            let seq = want.seq;
            let s = &mut self.seqs[seq];
            if let Some(token) = s.sampled.take() {
                if s.ids.len() >= self.context_length {
                    s.sampled = Some(token);
                    continue;
                }
                s.ids.push(token);
            } else if s.evaluated == s.ids.len() {
                if s.evaluated == 0 {
                    return Err(Error::InvalidInput(format!(
                        "sequence {seq} holds no tokens"
                    )));
                }
                // Nothing new to evaluate (the scheduler never asks this): evaluate the last
                // token again for its logits.
                s.evaluated -= 1;
                self.decoder.forget(seq as u32, s.evaluated as u32);
            }
            live.push(n);
        }
        let decoding: Vec<usize> = live.iter().map(|&n| wants[n].seq).collect();
        // Prompt chunks of sequences not decoding yet ride along in the first call.
        let riders: Vec<usize> = (0..self.seqs.len())
            .filter(|i| {
                let s = &self.seqs[*i];
                s.evaluated < s.ids.len() && !decoding.contains(i)
            })
            .collect();
        let group = self.group.unwrap_or(live.len()).max(1);
        for (part, chosen) in live.chunks(group).enumerate() {
            let seqs: Vec<usize> = chosen.iter().map(|&n| wants[n].seq).collect();
            let mut flush = seqs.clone();
            if part == 0 {
                flush.extend(&riders);
            }
            let rows = self.flush(&flush, &seqs)?;
            for &n in chosen {
                let want = &mut wants[n];
                let s = &mut self.seqs[want.seq];
                if s.rng.is_none() && !want.sampling.greedy() {
                    s.rng = Some(want.sampling.rng());
                }
                let row = rows
                    .iter()
                    .find(|(seq, _)| *seq == want.seq)
                    .map(|(_, row)| *row)
                    .expect("every decoding sequence has a logits row");
                let logits = self.decoder.logits(row);
                if let Some(c) = want.constraint.as_deref_mut() {
                    c.apply(logits);
                }
                let recent = &s.ids[s.ids.len().saturating_sub(PENALTY_WINDOW)..];
                let token = pick(logits, recent, &want.sampling, s.rng.as_mut());
                s.sampled = Some(token);
                out[n] = Some(token);
            }
        }
        Ok(out)
    }

    /// Evaluates every waiting token of `seqs` in as few decode calls as the capacity allows,
    /// asking logits for the last token of each in `want`, all in the last call. Returns
    /// `(seq, row)` of those logits.
    fn flush(&mut self, seqs: &[usize], want: &[usize]) -> Result<Vec<(usize, usize)>> {
        let mut entries = Vec::new();
        let mut wanted = Vec::new();
        for &seq in seqs {
            let s = &self.seqs[seq];
            let last = s.ids.len().saturating_sub(1);
            for pos in s.evaluated..s.ids.len() {
                let entry = Entry {
                    token: s.ids[pos],
                    pos: pos as u32,
                    seq: seq as u32,
                    logits: pos == last && want.contains(&seq),
                };
                if entry.logits {
                    wanted.push(entry);
                } else {
                    entries.push(entry);
                }
            }
        }
        entries.extend(wanted);
        let capacity = self.decoder.capacity().max(1);
        let mut rows = Vec::new();
        for part in entries.chunks_mut(capacity) {
            // llama.cpp splits a batch over per-sequence caches into one micro-batch per run of
            // consecutive sequence ids, in batch order: sorted, the sequences decoding
            // together form as few runs as their ids allow (in admission order, four
            // sequences could cost four graph evaluations instead of one).
            part.sort_by_key(|e| (e.seq, e.pos));
            let part = &*part;
            if let Err(code) = self.decoder.decode(part) {
                for e in part {
                    self.clear(e.seq as usize);
                }
                return Err(Error::Backend(format!(
                    "llama_decode failed with code {code}"
                )));
            }
            rows.clear();
            for (row, e) in part.iter().enumerate() {
                let s = &mut self.seqs[e.seq as usize];
                s.evaluated = s.evaluated.max(e.pos as usize + 1);
                if e.logits {
                    rows.push((e.seq as usize, row));
                }
            }
        }
        Ok(rows)
    }
}
