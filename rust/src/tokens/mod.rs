//! The model's own tokenizer, rebuilt from the GGUF vocabulary so that token ids and counts are
//! exactly llama.cpp's for the same file.
//!
//! The work is done by the `tokenizers` crate: a BPE model (for `gpt2` vocabularies, with the
//! merges from the file; for `llama`/SentencePiece vocabularies, with merges derived from the
//! token scores and `<0xXX>` byte fallback), with control/user-defined tokens registered as added
//! tokens so `<|im_start|>` in a rendered prompt is one token. Only the split regexes are ours
//! (see `split.rs`). Decoding follows llama.cpp's `token_to_piece` directly.

mod build;
mod pre;
mod split;
mod vocab;

use std::sync::OnceLock;

use tokenizers::{
    DecoderWrapper, ModelWrapper, NormalizerWrapper, PostProcessorWrapper, TokenizerImpl,
};

use crate::error::{Error, Result};
use crate::gguf::GgufMetadata;
pub use pre::SUPPORTED_PRE;
use split::LlamaPreTokenizer;
pub use vocab::{TokenAttr, VocabKind};

/// Bump whenever a change here could change token ids, so cached counts keyed by
/// [`Tokenizer::fingerprint`] are invalidated.
const IMPL_VERSION: u64 = 1;

type Inner = TokenizerImpl<
    ModelWrapper,
    NormalizerWrapper,
    LlamaPreTokenizer,
    PostProcessorWrapper,
    DecoderWrapper,
>;

/// A model's tokenizer. Cheap to share across threads (`&self` everywhere).
pub struct Tokenizer {
    /// Special tokens are matched in text (llama.cpp's `parse_special = true`).
    inner: Inner,
    /// The same pipeline with control tokens treated as plain text, built on first use.
    plain: OnceLock<Inner>,
    vocab: vocab::Vocab,
    pieces: Vec<Box<[u8]>>,
    eog: Vec<u32>,
    fingerprint: u64,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.vocab.kind)
            .field("pre", &self.vocab.pre)
            .field("vocab_size", &self.vocab.texts.len())
            .field("fingerprint", &format_args!("{:016x}", self.fingerprint))
            .finish()
    }
}

fn tk_err(e: tokenizers::Error) -> Error {
    Error::InvalidInput(format!("tokenizer error: {e}"))
}

impl Tokenizer {
    /// Reads the GGUF file's metadata and builds its tokenizer.
    pub fn from_gguf(path: impl AsRef<std::path::Path>) -> Result<Self> {
        Self::from_metadata(&GgufMetadata::from_path(path)?)
    }

    /// Builds the tokenizer described by already-read metadata. Fails with `Format` for a
    /// vocabulary kind or pre-tokenizer this code does not implement.
    pub fn from_metadata(meta: &GgufMetadata) -> Result<Self> {
        let vocab = vocab::Vocab::from_metadata(meta)?;
        let inner = build::build(&vocab)?;
        let pieces = vocab.pieces();
        let eog = vocab.eog_ids();
        let fingerprint = build::fingerprint(&vocab, IMPL_VERSION);
        Ok(Tokenizer {
            inner,
            plain: OnceLock::new(),
            vocab,
            pieces,
            eog,
            fingerprint,
        })
    }

    fn with_specials(&self, ids: Vec<u32>, add_special: bool) -> Vec<u32> {
        if !add_special || !(self.vocab.add_bos || self.vocab.add_eos) {
            return ids;
        }
        let mut out = Vec::with_capacity(ids.len() + 2);
        if self.vocab.add_bos {
            out.extend(self.vocab.bos);
        }
        out.extend(ids);
        if self.vocab.add_eos {
            out.extend(self.vocab.eos);
        }
        out
    }

    fn n_specials(&self, add_special: bool) -> usize {
        if !add_special {
            return 0;
        }
        usize::from(self.vocab.add_bos && self.vocab.bos.is_some())
            + usize::from(self.vocab.add_eos && self.vocab.eos.is_some())
    }

    /// Token ids of `text`. Control and user-defined tokens written in the text (`<|im_end|>`)
    /// become their single ids. With `add_special`, BOS/EOS are added as the model's
    /// `add_bos_token`/`add_eos_token` say (llama.cpp's `add_special`).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode_fast(text, false).map_err(tk_err)?;
        Ok(self.with_specials(enc.get_ids().to_vec(), add_special))
    }

    /// Like [`encode`](Self::encode), but control and unknown-type tokens written in the text are
    /// tokenized as ordinary text (llama.cpp's `parse_special = false`), e.g. for untrusted input
    /// that must not be able to forge a turn boundary. User-defined tokens still match.
    pub fn encode_plain(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let plain = match self.plain.get() {
            Some(p) => p,
            None => {
                let mut p = build::build(&self.vocab)?;
                p.set_encode_special_tokens(true);
                // A concurrent caller may have won the race; either copy is identical.
                let _ = self.plain.set(p);
                self.plain
                    .get()
                    .ok_or_else(|| Error::StateConflict("tokenizer init race".to_owned()))?
            }
        };
        let enc = plain.encode_fast(text, false).map_err(tk_err)?;
        Ok(self.with_specials(enc.get_ids().to_vec(), add_special))
    }

    /// Number of tokens [`encode`](Self::encode) would return.
    pub fn count(&self, text: &str, add_special: bool) -> Result<usize> {
        let enc = self.inner.encode_fast(text, false).map_err(tk_err)?;
        Ok(enc.len() + self.n_specials(add_special))
    }

    /// [`encode`](Self::encode) for many texts, in parallel on the `rayon` pool (set
    /// `TOKENIZERS_PARALLELISM=false` to disable). Results are in input order.
    pub fn encode_batch(&self, texts: &[&str], add_special: bool) -> Result<Vec<Vec<u32>>> {
        let encs = self
            .inner
            .encode_batch_fast(texts.to_vec(), false)
            .map_err(tk_err)?;
        Ok(encs
            .into_iter()
            .map(|e| self.with_specials(e.get_ids().to_vec(), add_special))
            .collect())
    }

    /// [`count`](Self::count) for many texts, in parallel. Results are in input order.
    pub fn count_batch(&self, texts: &[&str], add_special: bool) -> Result<Vec<usize>> {
        let encs = self
            .inner
            .encode_batch_fast(texts.to_vec(), false)
            .map_err(tk_err)?;
        let extra = self.n_specials(add_special);
        Ok(encs.into_iter().map(|e| e.len() + extra).collect())
    }

    /// The text of `ids`, as llama.cpp's detokenizer renders it (special tokens as their text;
    /// for SentencePiece vocabularies, the leading space it adds is removed). Invalid UTF-8
    /// from a partial multi-byte character becomes U+FFFD; use [`piece`](Self::piece) to
    /// assemble bytes across calls when streaming.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for (i, &id) in ids.iter().enumerate() {
            let piece = self.piece(id).ok_or_else(|| {
                Error::InvalidInput(format!(
                    "token id {id} is out of range (vocabulary size {})",
                    self.pieces.len()
                ))
            })?;
            let piece = if i == 0 && self.vocab.add_space_prefix {
                piece.strip_prefix(b" ").unwrap_or(piece)
            } else {
                piece
            };
            bytes.extend_from_slice(piece);
        }
        Ok(match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    /// The raw bytes one token stands for (possibly part of a UTF-8 character), or `None` for an
    /// id outside the vocabulary.
    pub fn piece(&self, id: u32) -> Option<&[u8]> {
        self.pieces.get(id as usize).map(|p| &p[..])
    }

    /// A stable 64-bit hash of everything that decides token ids (vocabulary, types, scores,
    /// merges, pre-tokenizer, BOS/EOS handling and this implementation's version): the cache key
    /// for stored per-turn token counts.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.vocab.texts.len()
    }

    /// The vocabulary kind.
    pub fn kind(&self) -> VocabKind {
        self.vocab.kind
    }

    /// The id of a token text, if it is in the vocabulary.
    pub fn token_to_id(&self, text: &str) -> Option<u32> {
        self.inner.token_to_id(text)
    }

    /// The text of a token id as stored in the vocabulary (byte-level form for BPE).
    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.vocab.texts.get(id as usize).map(String::as_str)
    }

    /// A token's attribute (control, normal...).
    pub fn token_attr(&self, id: u32) -> Option<TokenAttr> {
        self.vocab.attrs.get(id as usize).copied()
    }

    /// The beginning-of-sequence token.
    pub fn bos_id(&self) -> Option<u32> {
        self.vocab.bos
    }

    /// The end-of-sequence token.
    pub fn eos_id(&self) -> Option<u32> {
        self.vocab.eos
    }

    /// The end-of-turn token, if the file names one.
    pub fn eot_id(&self) -> Option<u32> {
        self.vocab.eot
    }

    /// Whether `encode(.., add_special = true)` prepends BOS.
    pub fn add_bos(&self) -> bool {
        self.vocab.add_bos
    }

    /// Whether `encode(.., add_special = true)` appends EOS.
    pub fn add_eos(&self) -> bool {
        self.vocab.add_eos
    }

    /// Every token that ends generation (EOS, EOT, EOM and llama.cpp's end-of-generation
    /// texts such as `<|im_end|>` and `<|endoftext|>`), sorted.
    pub fn eog_ids(&self) -> &[u32] {
        &self.eog
    }

    /// Whether generating `id` ends the turn.
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }
}

#[cfg(test)]
mod tests;
