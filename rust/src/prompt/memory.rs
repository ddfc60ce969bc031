//! What a `PromptEngine` remembers between prompts: each conversation's previous prompt (for
//! the shared-prefix report) and the ids of recently seen prompt segments. Both are scoped by
//! owner, so one tenant's prompts never show in another's results or timings.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::Mutex;

use crate::error::Result;
use crate::tokens::Tokenizer;

/// How many conversations' previous prompts are remembered for the shared-prefix report.
const PREFIX_MEMORY: usize = 1024;

/// Each conversation's previous prompt ids; past `PREFIX_MEMORY` conversations the one first
/// seen longest ago is forgotten, which bounds the memory whatever the clients send.
#[derive(Default)]
pub(super) struct PrefixMemory {
    ids: HashMap<String, Vec<u32>>,
    order: VecDeque<String>,
}

impl PrefixMemory {
    /// Records `ids` as the conversation's latest prompt; returns the prefix shared with the
    /// one before.
    pub(super) fn swap(&mut self, key: String, ids: &[u32]) -> usize {
        let shared = self.ids.get(&key).map_or(0, |old| {
            old.iter().zip(ids).take_while(|(a, b)| a == b).count()
        });
        if self.ids.insert(key.clone(), ids.to_vec()).is_none() {
            self.order.push_back(key);
            if self.order.len() > PREFIX_MEMORY {
                if let Some(old) = self.order.pop_front() {
                    self.ids.remove(&old);
                }
            }
        }
        shared
    }
}

/// The ids of prompt segments (the text between special tokens) seen recently, so a prompt
/// that repeats most of the previous one is mostly looked up, not tokenized. Exact: the
/// tokenizer encodes each segment independently of its neighbours
/// ([`Tokenizer::encode_segmented`]), for byte-level BPE (the split regexes run within a
/// segment) and SentencePiece (the space prefix goes on every segment) alike; the tests
/// compare the two on the golden corpus and on rendered conversations.
///
/// Two generations bound the memory: a hit in the old one moves the entry to the new one, and
/// when the new one reaches half the budget the old one is dropped. Keys are a keyed 64-bit
/// hash of the text; the text is stored and compared, so a collision is a miss, never wrong ids.
pub(super) struct SegmentCache {
    hasher: RandomState,
    budget: usize,
    state: Mutex<SegmentGenerations>,
}

#[derive(Default)]
struct SegmentGenerations {
    current: SegmentMap,
    old: SegmentMap,
    current_bytes: usize,
}

/// The keys are already hashes: the map's hasher passes them through.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }

    fn write_u64(&mut self, x: u64) {
        self.0 = x;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type SegmentMap = HashMap<u64, (Box<str>, Box<[u32]>), BuildHasherDefault<PassThrough>>;

/// Bytes one entry costs, roughly: its text, its ids and the map's bookkeeping.
fn segment_cost(text: &str, ids: &[u32]) -> usize {
    text.len() + 4 * ids.len() + 64
}

impl SegmentCache {
    pub(super) fn new(budget: usize) -> Self {
        SegmentCache {
            hasher: RandomState::new(),
            budget,
            state: Mutex::new(SegmentGenerations::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SegmentGenerations> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends the ids of one text segment: cached, or tokenized and remembered. Entries are
    /// per `scope` (the tenant): a segment another tenant sent is never a hit, so the time a
    /// prompt takes tells nothing about what other tenants sent.
    pub(super) fn encode(
        &self,
        tokenizer: &Tokenizer,
        scope: &str,
        text: &str,
        out: &mut Vec<u32>,
    ) -> Result<()> {
        let key = self.hasher.hash_one((scope, text));
        let same = |entry: &str| {
            entry.len() == scope.len() + 1 + text.len()
                && entry.starts_with(scope)
                && entry.as_bytes()[scope.len()] == 0
                && entry.ends_with(text)
        };
        {
            let mut g = self.lock();
            if let Some((t, ids)) = g.current.get(&key) {
                if same(t) {
                    out.extend_from_slice(ids);
                    return Ok(());
                }
            } else if let Some((t, ids)) = g.old.remove(&key) {
                if same(&t) {
                    out.extend_from_slice(&ids);
                    self.insert(&mut g, key, t, ids);
                    return Ok(());
                }
            }
        }
        // Tokenized outside the lock: a long new message does not hold up other prompts.
        let start = out.len();
        tokenizer.encode_segment(text, out)?;
        let ids: Box<[u32]> = out[start..].into();
        let entry = format!("{scope}\0{text}").into_boxed_str();
        self.insert(&mut self.lock(), key, entry, ids);
        Ok(())
    }

    fn insert(&self, g: &mut SegmentGenerations, key: u64, text: Box<str>, ids: Box<[u32]>) {
        let cost = segment_cost(&text, &ids);
        let half = self.budget / 2;
        if cost > half {
            return;
        }
        if g.current_bytes + cost > half {
            g.old = std::mem::take(&mut g.current);
            g.current_bytes = 0;
        }
        if let Some((t, i)) = g.current.insert(key, (text, ids)) {
            g.current_bytes -= segment_cost(&t, &i);
        }
        g.current_bytes += cost;
    }
}
