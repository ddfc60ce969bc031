//! Byte-level BPE on token ids, without the `tokenizers` pipeline: the merge loop of
//! `tokenizers`' `Word::merge_all` (the lowest-ranked pair first, the leftmost on ties, with its
//! stale-entry check), run on the raw bytes of a pre-token, plus a per-thread cache of
//! pre-token -> ids.
//!
//! The `tokenizers` pipeline allocates per piece and per token (a `NormalizedString` with
//! byte alignments, a `String` per token, offsets); for prompts of tens of thousands of tokens
//! that allocation, not the BPE itself, was most of the time. `tests.rs` checks this module
//! against `tokenizers`' own BPE model on the golden corpus and on random text.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::hash_map::RandomState;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use tokenizers::models::bpe::Vocab as BpeVocab;

use super::vocab::byte_level_decoder;

/// Pre-tokens longer than this are not cached (`tokenizers` uses the same limit).
const MAX_CACHED_PIECE: usize = 256;
/// Entries per cache generation; a thread keeps at most two generations per tokenizer
/// (roughly 1.5 MB each for typical text).
const CACHE_GENERATION: usize = 16_384;
/// Tokenizers (by fingerprint) whose caches a thread keeps at once.
const CACHES_PER_THREAD: usize = 4;

/// A hasher for the merge table, whose keys (pairs of token ids) come from the model file, not
/// from user text: one multiply, no flooding concern.
#[derive(Default)]
struct PairHasher(u64);

impl Hasher for PairHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0 ^ x).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn finish(&self) -> u64 {
        // The multiply leaves its best bits high; hashbrown uses both ends.
        self.0 ^ (self.0 >> 29)
    }
}

type PairMap = HashMap<u64, (u32, u32), BuildHasherDefault<PairHasher>>;

fn pair(a: u32, b: u32) -> u64 {
    (u64::from(a) << 32) | u64::from(b)
}

/// A byte-level BPE model on ids.
#[derive(Debug)]
pub(crate) struct ByteBpe {
    /// The token of each byte's byte-level character, if the vocabulary has it (a byte without
    /// one is dropped, as `tokenizers` does with no unknown token).
    byte_sym: [Option<u32>; 256],
    /// (left, right) -> (rank, merged id).
    merges: PairMap,
    /// For `ignore_merges` vocabularies: raw bytes -> id of every token spelled in byte-level
    /// characters, so a pre-token that is a whole token skips the merges.
    whole: Option<HashMap<Box<[u8]>, u32>>,
}

impl ByteBpe {
    /// `map` is the text -> id map (duplicates: last id wins) and `merges` the filtered,
    /// deduplicated merges in rank order, exactly as given to `tokenizers`' BPE builder.
    pub fn new(map: &BpeVocab, merges: &[(String, String)], ignore_merges: bool) -> Self {
        let byte_of = byte_level_decoder();
        let mut byte_sym = [None; 256];
        for c in (0u32..324).filter_map(char::from_u32) {
            if let Some(b) = byte_of(c) {
                byte_sym[b as usize] = map.get(c.encode_utf8(&mut [0u8; 4]) as &str).copied();
            }
        }
        let mut table = PairMap::with_capacity_and_hasher(merges.len(), Default::default());
        let mut joined = String::new();
        for (rank, (a, b)) in merges.iter().enumerate() {
            joined.clear();
            joined.push_str(a);
            joined.push_str(b);
            if let (Some(&ia), Some(&ib), Some(&new)) =
                (map.get(a), map.get(b), map.get(joined.as_str()))
            {
                // A later duplicate overwrites, as in `tokenizers` (the list has none).
                table.insert(pair(ia, ib), (rank as u32, new));
            }
        }
        let whole = ignore_merges.then(|| {
            let mut whole = HashMap::with_capacity(map.len());
            // Ascending ids, so the last id of a duplicated text wins, like `map`.
            let mut by_id: Vec<(&String, &u32)> = map.iter().collect();
            by_id.sort_by_key(|(_, &id)| id);
            for (text, &id) in by_id {
                let bytes: Option<Vec<u8>> = text.chars().map(&byte_of).collect();
                if let Some(bytes) = bytes {
                    whole.insert(bytes.into_boxed_slice(), id);
                }
            }
            whole
        });
        ByteBpe {
            byte_sym,
            merges: table,
            whole,
        }
    }

    /// Appends the ids of one pre-token (raw bytes, before the byte-level mapping).
    pub fn tokenize(&self, piece: &[u8], out: &mut Vec<u32>) {
        if let Some(whole) = &self.whole {
            if let Some(&id) = whole.get(piece) {
                out.push(id);
                return;
            }
        }
        match piece {
            [] => {}
            [b] => out.extend(self.byte_sym[*b as usize]),
            _ => self.merge(piece, out),
        }
    }

    /// `tokenizers`' `Word::merge_all`, transcribed (its symbol lengths only mark removal).
    fn merge(&self, piece: &[u8], out: &mut Vec<u32>) {
        struct Sym {
            c: u32,
            prev: isize,
            next: isize,
            live: bool,
        }
        let mut syms: Vec<Sym> = Vec::with_capacity(piece.len());
        for &b in piece {
            if let Some(c) = self.byte_sym[b as usize] {
                let n = syms.len() as isize;
                if let Some(last) = syms.last_mut() {
                    last.next = n;
                }
                syms.push(Sym {
                    c,
                    prev: n - 1,
                    next: -1,
                    live: true,
                });
            }
        }
        // Min-heap on (rank, position); the merged id rides along.
        let mut queue: BinaryHeap<Reverse<(u32, usize, u32)>> = syms
            .windows(2)
            .enumerate()
            .filter_map(|(i, w)| {
                let &(rank, new) = self.merges.get(&pair(w[0].c, w[1].c))?;
                Some(Reverse((rank, i, new)))
            })
            .collect();
        while let Some(Reverse((_, pos, new_id))) = queue.pop() {
            if !syms[pos].live || syms[pos].next == -1 {
                continue;
            }
            let next_pos = syms[pos].next as usize;
            let (right_c, right_next) = (syms[next_pos].c, syms[next_pos].next);
            // A stale entry: the pair here changed since it was queued.
            if self
                .merges
                .get(&pair(syms[pos].c, right_c))
                .is_none_or(|&(_, id)| id != new_id)
            {
                continue;
            }
            syms[pos].c = new_id;
            syms[pos].next = right_next;
            syms[next_pos].live = false;
            if right_next > -1 && (right_next as usize) < syms.len() {
                syms[right_next as usize].prev = pos as isize;
            }
            let prev = syms[pos].prev;
            if prev >= 0 {
                if let Some(&(rank, id)) = self.merges.get(&pair(syms[prev as usize].c, new_id)) {
                    queue.push(Reverse((rank, prev as usize, id)));
                }
            }
            let next = syms[pos].next;
            if next >= 0 && (next as usize) < syms.len() {
                if let Some(&(rank, id)) = self.merges.get(&pair(new_id, syms[next as usize].c)) {
                    queue.push(Reverse((rank, pos, id)));
                }
            }
        }
        out.extend(syms.iter().filter(|s| s.live).map(|s| s.c));
    }
}

/// Pre-token -> ids, two generations: a hit in the old generation moves the entry to the new
/// one, and when the new one is full the old one is dropped (an approximate LRU with a hard
/// size bound and no per-hit bookkeeping). Keys are hashed with std's keyed SipHash, since
/// they are user text.
struct PieceCache {
    fingerprint: u64,
    current: HashMap<Box<[u8]>, Box<[u32]>, RandomState>,
    old: HashMap<Box<[u8]>, Box<[u32]>, RandomState>,
}

impl PieceCache {
    fn new(fingerprint: u64) -> Self {
        let hasher = RandomState::new();
        PieceCache {
            fingerprint,
            current: HashMap::with_hasher(hasher.clone()),
            old: HashMap::with_hasher(hasher),
        }
    }

    /// Calls `use_ids` with the ids of `piece`, taken from the cache or computed by `compute`
    /// and remembered.
    fn with_ids<R>(
        &mut self,
        piece: &[u8],
        compute: impl FnOnce(&mut Vec<u32>),
        use_ids: impl FnOnce(&[u32]) -> R,
    ) -> R {
        if let Some(ids) = self.current.get(piece) {
            return use_ids(ids);
        }
        let ids: Box<[u32]> = match self.old.remove(piece) {
            Some(ids) => ids,
            None => {
                let mut v = Vec::new();
                compute(&mut v);
                v.into_boxed_slice()
            }
        };
        let r = use_ids(&ids);
        if self.current.len() >= CACHE_GENERATION {
            let fresh = HashMap::with_hasher(self.old.hasher().clone());
            self.old = std::mem::replace(&mut self.current, fresh);
        }
        self.current.insert(piece.into(), ids);
        r
    }
}

thread_local! {
    /// Per-thread caches, most recently used tokenizer last. Keyed by the tokenizer's
    /// fingerprint, which decides every id, so equal fingerprints may share entries.
    static CACHES: RefCell<Vec<PieceCache>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's piece cache for `fingerprint` (or none, if the cache is in use
/// further up this thread's stack, which the tokenizer never does).
pub(crate) fn with_cache<R>(
    fingerprint: u64,
    f: impl FnOnce(Option<&mut PieceCacheRef<'_>>) -> R,
) -> R {
    CACHES.with(|caches| {
        let Ok(mut caches) = caches.try_borrow_mut() else {
            return f(None);
        };
        let i = match caches.iter().position(|c| c.fingerprint == fingerprint) {
            Some(i) => i,
            None => {
                if caches.len() >= CACHES_PER_THREAD {
                    caches.remove(0);
                }
                caches.push(PieceCache::new(fingerprint));
                caches.len() - 1
            }
        };
        let last = caches.len() - 1;
        caches.swap(i, last);
        let cache = &mut caches[last];
        f(Some(&mut PieceCacheRef(cache)))
    })
}

/// A borrowed piece cache.
pub(crate) struct PieceCacheRef<'a>(&'a mut PieceCache);

impl PieceCacheRef<'_> {
    /// Appends the ids of a pre-token, from the cache when it has them.
    pub fn tokenize(&mut self, bpe: &ByteBpe, piece: &[u8], out: &mut Vec<u32>) {
        if piece.len() > MAX_CACHED_PIECE || piece.len() < 2 {
            bpe.tokenize(piece, out);
            return;
        }
        self.0.with_ids(
            piece,
            |v| bpe.tokenize(piece, v),
            |ids| out.extend_from_slice(ids),
        );
    }
}
