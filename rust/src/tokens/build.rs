//! Assembling the `tokenizers` pipeline from a [`Vocab`], and the vocabulary fingerprint.

use std::collections::HashSet;

use tokenizers::models::bpe::{Vocab as BpeVocab, BPE};

#[cfg(test)]
use super::split::LlamaPreTokenizer;
use super::vocab::{TokenAttr, Vocab, VocabKind};
#[cfg(test)]
use super::Inner;
use crate::error::{Error, Result};

/// SentencePiece pieces longer than this are not built by merges (see `spm_merges`).
const MAX_SPM_MERGE_BYTES: usize = 256;

/// SentencePiece's visible space.
#[cfg(test)]
const SPM_SPACE: &str = "\u{2581}";

fn build_err(e: impl std::fmt::Display) -> Error {
    Error::Model(format!("cannot build the tokenizer: {e}"))
}

/// Text -> id with llama.cpp's rule for duplicate texts: the last id wins.
pub(super) fn vocab_map(vocab: &Vocab) -> BpeVocab {
    let mut map = BpeVocab::with_capacity(vocab.texts.len());
    for (i, t) in vocab.texts.iter().enumerate() {
        map.insert(t.clone(), i as u32);
    }
    map
}

/// The file's merges, minus those `tokenizers` cannot represent (a side or the result missing
/// from the vocabulary) and repeats (llama.cpp keeps the first rank of a pair).
pub(super) fn bpe_merges(vocab: &Vocab, map: &BpeVocab) -> Vec<(String, String)> {
    let mut seen = HashSet::with_capacity(vocab.merges.len());
    vocab
        .merges
        .iter()
        .filter(|(a, b)| {
            !a.is_empty()
                && !b.is_empty()
                && map.contains_key(a)
                && map.contains_key(b)
                && map.contains_key(&format!("{a}{b}"))
                && seen.insert((a.as_str(), b.as_str()))
        })
        .cloned()
        .collect()
}

/// SentencePiece merges: llama.cpp merges the adjacent pair whose concatenation is the
/// highest-scoring vocabulary entry. As BPE ranks, that is every split of every token into two
/// tokens, ordered by the score of the whole.
fn spm_merges(vocab: &Vocab, map: &BpeVocab) -> Vec<(String, String)> {
    let mut candidates: Vec<(f32, u32, usize, &str, &str)> = Vec::new();
    for (text, &id) in map {
        // Splitting costs O(len^2); real SentencePiece pieces are at most a few dozen bytes, so
        // the cap only matters for hostile files (a longer piece then never forms by merging).
        if text.len() > MAX_SPM_MERGE_BYTES {
            continue;
        }
        let score = vocab.scores.get(id as usize).copied().unwrap_or(0.0);
        for (k, _) in text.char_indices().skip(1) {
            let (left, right) = text.split_at(k);
            if map.contains_key(left) && map.contains_key(right) {
                candidates.push((score, id, k, left, right));
            }
        }
    }
    // Highest score first; ties by id then split point, only to make the order deterministic.
    candidates.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    candidates
        .into_iter()
        .map(|(_, _, _, l, r)| (l.to_owned(), r.to_owned()))
        .collect()
}

/// The SentencePiece model: BPE over score-derived merges, with byte fallback and the unknown
/// token.
pub(super) fn spm_model(vocab: &Vocab, map: BpeVocab) -> Result<BPE> {
    let merges = spm_merges(vocab, &map);
    let mut builder = BPE::builder().byte_fallback(true).fuse_unk(true);
    if let Some(unk) = vocab
        .attrs
        .iter()
        .position(|a| *a == TokenAttr::Unknown)
        .map(|i| vocab.texts[i].clone())
    {
        builder = builder.unk_token(unk);
    }
    builder
        .vocab_and_merges(map, merges)
        .build()
        .map_err(build_err)
}

/// The whole `tokenizers` pipeline the fast path in `mod.rs` stands for: the reference the
/// tests compare it with.
#[cfg(test)]
pub(super) fn build(vocab: &Vocab) -> Result<Inner> {
    use tokenizers::normalizers::{Prepend, Replace, Sequence};
    use tokenizers::{AddedToken, NormalizerWrapper};

    let map = vocab_map(vocab);
    let (model, normalizer, pre) = match vocab.kind {
        VocabKind::Bpe => {
            let merges = bpe_merges(vocab, &map);
            let model = BPE::builder()
                .vocab_and_merges(map, merges)
                .ignore_merges(vocab.ignore_merges)
                .build()
                .map_err(build_err)?;
            let info = super::pre::lookup(&vocab.pre)?;
            (model, None, Some(LlamaPreTokenizer::new(info.regexes)?))
        }
        VocabKind::Spm => {
            let model = spm_model(vocab, map)?;
            let replace: NormalizerWrapper =
                Replace::new(" ", SPM_SPACE).map_err(build_err)?.into();
            let normalizer: NormalizerWrapper = if vocab.add_space_prefix {
                // llama.cpp prefixes a space to every text fragment that starts the input or
                // follows a special token; the normalizer runs on exactly those fragments.
                Sequence::new(vec![Prepend::new(SPM_SPACE.to_owned()).into(), replace]).into()
            } else {
                replace
            };
            (model, Some(normalizer), None)
        }
    };

    let mut inner: Inner = Inner::new(model.into());
    inner.with_normalizer(normalizer);
    inner.with_pre_tokenizer(pre);
    let added: Vec<AddedToken> = vocab
        .texts
        .iter()
        .zip(&vocab.attrs)
        .filter(|(_, a)| a.is_matched_in_text())
        .map(|(t, a)| AddedToken::from(t.clone(), *a != TokenAttr::UserDefined).normalized(false))
        .collect();
    inner.add_special_tokens(&added);
    Ok(inner)
}

/// FNV-1a, 64-bit: tiny, and stable across Rust versions and platforms (std's hasher is not
/// guaranteed to be), which a persisted cache key needs.
struct Fnv(u64);

impl Fnv {
    fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.0 ^= u64::from(x);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// Length-prefixed, so concatenations cannot collide.
    fn field(&mut self, b: &[u8]) {
        self.bytes(&(b.len() as u64).to_le_bytes());
        self.bytes(b);
    }
}

pub(super) fn fingerprint(vocab: &Vocab, impl_version: u64) -> u64 {
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    h.bytes(&impl_version.to_le_bytes());
    h.field(match vocab.kind {
        VocabKind::Bpe => b"bpe",
        VocabKind::Spm => b"spm",
    });
    h.field(vocab.pre.as_bytes());
    h.bytes(&(vocab.texts.len() as u64).to_le_bytes());
    for ((t, a), s) in vocab.texts.iter().zip(&vocab.attrs).zip(&vocab.scores) {
        h.field(t.as_bytes());
        h.bytes(&[*a as u8]);
        if vocab.kind == VocabKind::Spm {
            h.bytes(&s.to_bits().to_le_bytes());
        }
    }
    h.bytes(&(vocab.merges.len() as u64).to_le_bytes());
    for (a, b) in &vocab.merges {
        h.field(a.as_bytes());
        h.field(b.as_bytes());
    }
    let id = |x: Option<u32>| x.map_or(u64::MAX, u64::from);
    for x in [
        id(vocab.bos),
        id(vocab.eos),
        u64::from(vocab.add_bos),
        u64::from(vocab.add_eos),
        u64::from(vocab.add_space_prefix),
        u64::from(vocab.ignore_merges),
    ] {
        h.bytes(&x.to_le_bytes());
    }
    h.0
}
