//! The model's own tokenizer, rebuilt from the GGUF vocabulary so that token ids and counts are
//! exactly llama.cpp's for the same file.
//!
//! Encoding is: split out the tokens matched as a whole (`<|im_start|>`..., `special.rs`), then
//! encode each text segment on its own. For `gpt2` vocabularies a segment is cut into pre-tokens
//! by llama.cpp's split regexes (`split.rs`) and each pre-token is merged by a byte-level BPE on
//! ids (`bpe.rs`) behind a per-thread pre-token cache. For `llama`/SentencePiece vocabularies a
//! segment gets its space escaping (and prefix) and goes whole to the `tokenizers` crate's BPE
//! model (merges derived from the token scores, `<0xXX>` byte fallback). The full `tokenizers`
//! pipeline these stand for is still built by `build::build`, and the tests check the fast path
//! against it. Decoding follows llama.cpp's `token_to_piece` directly.
//!
//! Because each text segment is encoded independently of the others, the ids of a text are
//! the ids of its segments, in order ([`Tokenizer::encode_segmented`] lets a caller cache them).

mod bpe;
mod build;
mod pre;
mod scan;
mod special;
mod split;
mod vocab;

#[cfg(test)]
pub(crate) use vocab::byte_level_decoder;

use std::collections::HashMap;
use std::ops::Range;

use tokenizers::models::bpe::BPE;
use tokenizers::parallelism::MaybeParallelIterator;
use tokenizers::Model as _;

use crate::error::{Error, Result};
use crate::gguf::GgufMetadata;
pub use pre::SUPPORTED_PRE;
pub use special::Segment;
use split::LlamaPreTokenizer;
pub use vocab::{TokenAttr, VocabKind};

/// Bump whenever a change here could change token ids, so cached counts keyed by
/// [`Tokenizer::fingerprint`] are invalidated.
const IMPL_VERSION: u64 = 1;

/// Batches smaller than this many bytes in all are done on the calling thread: handing them to
/// the thread pool costs more than it saves.
const PARALLEL_MIN_BYTES: usize = 32 * 1024;

/// The full `tokenizers` pipeline (the reference the fast path is tested against).
#[cfg(test)]
type Inner = tokenizers::TokenizerImpl<
    tokenizers::ModelWrapper,
    tokenizers::NormalizerWrapper,
    LlamaPreTokenizer,
    tokenizers::PostProcessorWrapper,
    tokenizers::DecoderWrapper,
>;

/// How text segments become ids.
// One per loaded model, so the size gap between variants costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
enum Model {
    /// Byte-level BPE: split regexes, then merges on ids.
    Bpe {
        pre: LlamaPreTokenizer,
        bpe: bpe::ByteBpe,
    },
    /// SentencePiece: space escaping (and prefix), then `tokenizers`' BPE with byte fallback.
    Spm { bpe: BPE, add_space_prefix: bool },
}

/// Where ids go: a vector, or just a count.
trait Sink {
    fn push(&mut self, id: u32);
    fn extend_from(&mut self, ids: &[u32]);
}

impl Sink for Vec<u32> {
    fn push(&mut self, id: u32) {
        Vec::push(self, id);
    }
    fn extend_from(&mut self, ids: &[u32]) {
        self.extend_from_slice(ids);
    }
}

impl Sink for usize {
    fn push(&mut self, _: u32) {
        *self += 1;
    }
    fn extend_from(&mut self, ids: &[u32]) {
        *self += ids.len();
    }
}

/// A model's tokenizer. Cheap to share across threads (`&self` everywhere).
pub struct Tokenizer {
    model: Model,
    /// The tokens matched as a whole in text, if the vocabulary has any.
    specials: Option<special::Specials>,
    /// Text -> id (for duplicated texts, the last id, as llama.cpp).
    ids: HashMap<String, u32>,
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

/// SentencePiece's visible space.
const SPM_SPACE: &str = "\u{2581}";

impl Tokenizer {
    /// Reads the GGUF file's metadata and builds its tokenizer.
    pub fn from_gguf(path: impl AsRef<std::path::Path>) -> Result<Self> {
        Self::from_metadata(&GgufMetadata::from_path(path)?)
    }

    /// Builds the tokenizer described by already-read metadata. Fails with `Format` for a
    /// vocabulary kind or pre-tokenizer this code does not implement.
    pub fn from_metadata(meta: &GgufMetadata) -> Result<Self> {
        let vocab = vocab::Vocab::from_metadata(meta)?;
        let map = build::vocab_map(&vocab);
        let model = match vocab.kind {
            VocabKind::Bpe => {
                let merges = build::bpe_merges(&vocab, &map);
                let info = pre::lookup(&vocab.pre)?;
                Model::Bpe {
                    pre: LlamaPreTokenizer::new(info.regexes)?,
                    bpe: bpe::ByteBpe::new(&map, &merges, vocab.ignore_merges),
                }
            }
            VocabKind::Spm => Model::Spm {
                bpe: build::spm_model(&vocab, map.clone())?,
                add_space_prefix: vocab.add_space_prefix,
            },
        };
        let specials = special::Specials::new(
            vocab
                .texts
                .iter()
                .zip(&vocab.attrs)
                .filter(|(_, a)| a.is_matched_in_text())
                .filter_map(|(t, a)| {
                    // Control and unknown tokens are "special": `encode_plain` stops matching
                    // them, as llama.cpp's parse_special = false does; user-defined tokens
                    // always match.
                    let id = *map.get(t)?;
                    Some((t.clone(), id, *a != TokenAttr::UserDefined))
                }),
        )?;
        let pieces = vocab.pieces();
        let eog = vocab.eog_ids();
        let fingerprint = build::fingerprint(&vocab, IMPL_VERSION);
        Ok(Tokenizer {
            model,
            specials,
            ids: map.into_iter().collect(),
            vocab,
            pieces,
            eog,
            fingerprint,
        })
    }

    /// The full `tokenizers` pipeline for this vocabulary (slow; for tests).
    #[cfg(test)]
    fn reference_pipeline(&self, parse_special: bool) -> Inner {
        let mut inner = build::build(&self.vocab).unwrap();
        inner.set_encode_special_tokens(!parse_special);
        inner
    }

    /// Calls `f` on each segment of `text`: text between matched tokens, and the tokens.
    /// With `parse_special` off, control tokens are not matched (user-defined ones still are).
    pub fn for_each_segment<'t, E>(
        &self,
        text: &'t str,
        parse_special: bool,
        mut f: impl FnMut(Segment<'t>) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        match &self.specials {
            Some(sp) => sp.for_each(text, parse_special, &[], f),
            None if text.is_empty() => Ok(()),
            None => f(Segment::Text(text)),
        }
    }

    /// Appends the ids of one text segment (text in which [`for_each_segment`] matched no
    /// token; any other text gives the ids of its matched tokens' text, spelled out).
    ///
    /// [`for_each_segment`]: Self::for_each_segment
    pub fn encode_segment(&self, text: &str, out: &mut Vec<u32>) -> Result<()> {
        bpe::with_cache(self.fingerprint, |cache| {
            self.segment_into(text, cache, out)
        })
    }

    fn segment_into<S: Sink>(
        &self,
        text: &str,
        mut cache: Option<&mut bpe::PieceCacheRef<'_>>,
        out: &mut S,
    ) -> Result<()> {
        match &self.model {
            Model::Bpe { pre, bpe } => {
                let mut buf = Vec::new();
                pre.for_each_pretoken(text, &mut |piece| {
                    buf.clear();
                    match cache.as_deref_mut() {
                        Some(c) => c.tokenize(bpe, piece.as_bytes(), &mut buf),
                        None => bpe.tokenize(piece.as_bytes(), &mut buf),
                    }
                    out.extend_from(&buf);
                });
                Ok(())
            }
            Model::Spm {
                bpe,
                add_space_prefix,
            } => {
                // llama.cpp prefixes a space to every text segment (each starts the input or
                // follows a matched token), then escapes spaces.
                let mut escaped = String::with_capacity(text.len() + 8);
                if *add_space_prefix {
                    escaped.push_str(SPM_SPACE);
                }
                for (i, part) in text.split(' ').enumerate() {
                    if i > 0 {
                        escaped.push_str(SPM_SPACE);
                    }
                    escaped.push_str(part);
                }
                for t in bpe.tokenize(&escaped).map_err(tk_err)? {
                    out.push(t.id);
                }
                Ok(())
            }
        }
    }

    /// Ids (or the count) of `text`: matched tokens, and each text segment.
    fn encode_into<S: Sink>(&self, text: &str, parse_special: bool, out: &mut S) -> Result<()> {
        bpe::with_cache(self.fingerprint, |mut cache| {
            self.for_each_segment(text, parse_special, |seg| match seg {
                Segment::Token(id) => {
                    out.push(id);
                    Ok(())
                }
                Segment::Text(t) => self.segment_into(t, cache.as_deref_mut(), out),
            })
        })
    }

    fn bos(&self, add_special: bool) -> Option<u32> {
        self.vocab.bos.filter(|_| add_special && self.vocab.add_bos)
    }

    fn eos(&self, add_special: bool) -> Option<u32> {
        self.vocab.eos.filter(|_| add_special && self.vocab.add_eos)
    }

    fn encode_with(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>> {
        // About one token per 3.5 bytes of typical text.
        let mut ids = Vec::with_capacity(text.len() / 3 + 2);
        ids.extend(self.bos(add_special));
        self.encode_into(text, parse_special, &mut ids)?;
        ids.extend(self.eos(add_special));
        Ok(ids)
    }

    /// Token ids of `text`. Control and user-defined tokens written in the text (`<|im_end|>`)
    /// become their single ids. With `add_special`, BOS/EOS are added as the model's
    /// `add_bos_token`/`add_eos_token` say (llama.cpp's `add_special`).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        self.encode_with(text, add_special, true)
    }

    /// Like [`encode`](Self::encode), but control and unknown-type tokens written in the text are
    /// tokenized as ordinary text (llama.cpp's `parse_special = false`), e.g. for untrusted input
    /// that must not be able to forge a turn boundary. User-defined tokens still match.
    pub fn encode_plain(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        self.encode_with(text, add_special, false)
    }

    /// [`encode`](Self::encode), with the ids of each text segment supplied by
    /// `encode_text(segment, out)`, which must append what [`encode_segment`] would (a caller
    /// can cache them; the result is the same because segments are encoded independently).
    /// Control tokens written inside a `guarded` byte range (sorted, disjoint) stay text.
    ///
    /// [`encode_segment`]: Self::encode_segment
    pub fn encode_segmented(
        &self,
        text: &str,
        add_special: bool,
        guarded: &[Range<usize>],
        mut encode_text: impl FnMut(&str, &mut Vec<u32>) -> Result<()>,
    ) -> Result<Vec<u32>> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 2);
        ids.extend(self.bos(add_special));
        let mut on_segment = |seg| match seg {
            Segment::Token(id) => {
                ids.push(id);
                Ok(())
            }
            Segment::Text(t) => encode_text(t, &mut ids),
        };
        match &self.specials {
            Some(sp) => sp.for_each(text, true, guarded, on_segment)?,
            None if text.is_empty() => {}
            None => on_segment(Segment::Text(text))?,
        }
        ids.extend(self.eos(add_special));
        Ok(ids)
    }

    /// Number of tokens [`encode`](Self::encode) would return.
    pub fn count(&self, text: &str, add_special: bool) -> Result<usize> {
        self.count_with(text, add_special, true)
    }

    /// Number of tokens [`encode_plain`](Self::encode_plain) would return.
    pub fn count_plain(&self, text: &str, add_special: bool) -> Result<usize> {
        self.count_with(text, add_special, false)
    }

    fn count_with(&self, text: &str, add_special: bool, parse_special: bool) -> Result<usize> {
        let mut n = usize::from(self.bos(add_special).is_some())
            + usize::from(self.eos(add_special).is_some());
        self.encode_into(text, parse_special, &mut n)?;
        Ok(n)
    }

    /// Byte ranges of the control tokens written in `text` (what [`encode`](Self::encode)
    /// would turn into control ids and [`encode_plain`](Self::encode_plain) leaves as text).
    pub fn control_spans(&self, text: &str) -> Vec<Range<usize>> {
        self.specials
            .as_ref()
            .map_or_else(Vec::new, |sp| sp.control_spans(text))
    }

    /// Whether a batch is worth the thread pool.
    fn parallel(texts: &[&str]) -> bool {
        texts.len() > 1 && texts.iter().map(|t| t.len()).sum::<usize>() >= PARALLEL_MIN_BYTES
    }

    /// [`encode`](Self::encode) for many texts, in parallel on the `rayon` pool for large
    /// batches (set `TOKENIZERS_PARALLELISM=false` to disable). Results are in input order.
    pub fn encode_batch(&self, texts: &[&str], add_special: bool) -> Result<Vec<Vec<u32>>> {
        texts
            .into_maybe_par_iter_cond(Self::parallel(texts))
            .map(|t| self.encode(t, add_special))
            .collect()
    }

    /// [`count`](Self::count) for many texts, in parallel for large batches. Results are in
    /// input order.
    pub fn count_batch(&self, texts: &[&str], add_special: bool) -> Result<Vec<usize>> {
        self.count_batch_with(texts, add_special, true)
    }

    /// [`count_plain`](Self::count_plain) for many texts.
    pub fn count_plain_batch(&self, texts: &[&str], add_special: bool) -> Result<Vec<usize>> {
        self.count_batch_with(texts, add_special, false)
    }

    fn count_batch_with(
        &self,
        texts: &[&str],
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<usize>> {
        texts
            .into_maybe_par_iter_cond(Self::parallel(texts))
            .map(|t| self.count_with(t, add_special, parse_special))
            .collect()
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

    /// Whether SentencePiece encoding puts a space before the text (so encoding a fragment
    /// is not the same as encoding it inside a longer text).
    pub fn adds_space_prefix(&self) -> bool {
        self.vocab.kind == VocabKind::Spm && self.vocab.add_space_prefix
    }

    /// The vocabulary kind.
    pub fn kind(&self) -> VocabKind {
        self.vocab.kind
    }

    /// The id of a token text, if it is in the vocabulary.
    pub fn token_to_id(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
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
