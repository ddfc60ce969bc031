//! The vocabulary as llama.cpp sees it: token texts, attributes (after llama.cpp's by-text
//! overrides), special ids, and the per-token bytes used for decoding.

use super::pre::PreInfo;
use crate::error::{Error, Result};
use crate::gguf::GgufMetadata;

/// What kind of vocabulary a GGUF file carries (`tokenizer.ggml.model`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VocabKind {
    /// `gpt2`: byte-level BPE with merges and a regex pre-tokenizer.
    Bpe,
    /// `llama`: SentencePiece, merged by score, with `<0xXX>` byte fallback.
    Spm,
}

/// llama.cpp's token attribute, derived from `tokenizer.ggml.token_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenAttr {
    /// Type 0 or an unknown type: decodes to nothing.
    Undefined,
    /// Type 1: ordinary text.
    Normal,
    /// Type 2: the unknown token; matched in text like a control token.
    Unknown,
    /// Type 3: control tokens (`<|im_start|>`, `<s>`...): matched as one token in text.
    Control,
    /// Type 4: user-defined tokens: always matched as one token in text.
    UserDefined,
    /// Type 5: reserved, never produced from text.
    Unused,
    /// Type 6: a raw byte (`<0x0A>`), for byte fallback.
    Byte,
}

impl TokenAttr {
    fn from_type(t: i32) -> Self {
        match t {
            1 => TokenAttr::Normal,
            2 => TokenAttr::Unknown,
            3 => TokenAttr::Control,
            4 => TokenAttr::UserDefined,
            5 => TokenAttr::Unused,
            6 => TokenAttr::Byte,
            _ => TokenAttr::Undefined,
        }
    }

    /// Whether llama.cpp splits this token out of raw text before running the model's
    /// tokenizer (its `cache_special_tokens`).
    pub fn is_matched_in_text(self) -> bool {
        matches!(
            self,
            TokenAttr::Control | TokenAttr::UserDefined | TokenAttr::Unknown
        )
    }
}

/// Texts llama.cpp treats as end-of-generation (and forces to control type) wherever they occur
/// in a vocabulary, because converters often forget to flag them.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

/// Texts llama.cpp forces to control type when the matching id key is absent (EOT, EOM and the
/// fill-in-the-middle tokens), paired with the key that makes the detection unnecessary.
const DETECTED_CONTROL_TEXTS: &[(&str, &[&str])] = &[
    (
        "tokenizer.ggml.eot_token_id",
        &[
            "<|eot_id|>",
            "<|im_end|>",
            "<|end|>",
            "<end_of_turn>",
            "<|endoftext|>",
            "<|end_of_text|>",
            "<EOT>",
            "_<EOT>",
            "[EOT]",
            "<｜end▁of▁sentence｜>",
            "<end_of_utterance>",
        ],
    ),
    ("tokenizer.ggml.eom_token_id", &["<|eom_id|>"]),
    (
        "tokenizer.ggml.fim_pre_token_id",
        &[
            "<|fim_prefix|>",
            "<fim-prefix>",
            "<fim_prefix>",
            "<｜fim▁begin｜>",
            "<PRE>",
            "▁<PRE>",
            "<|code_prefix|>",
            "<|prefix|>",
        ],
    ),
    (
        "tokenizer.ggml.fim_suf_token_id",
        &[
            "<|fim_suffix|>",
            "<fim-suffix>",
            "<fim_suffix>",
            "<｜fim▁hole｜>",
            "<SUF>",
            "▁<SUF>",
            "<|code_suffix|>",
            "<|suffix|>",
        ],
    ),
    (
        "tokenizer.ggml.fim_mid_token_id",
        &[
            "<|fim_middle|>",
            "<fim-middle>",
            "<fim_middle>",
            "<｜fim▁end｜>",
            "<MID>",
            "▁<MID>",
            "<|code_middle|>",
            "<|middle|>",
        ],
    ),
    (
        "tokenizer.ggml.fim_pad_token_id",
        &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"],
    ),
    (
        "tokenizer.ggml.fim_rep_token_id",
        &[
            "<|fim_repo|>",
            "<|repo_name|>",
            "<fim-repo>",
            "<REPO>",
            "<reponame>",
        ],
    ),
    ("tokenizer.ggml.fim_sep_token_id", &["<|file_sep|>"]),
];

/// The vocabulary, normalized the way llama.cpp loads it.
#[derive(Debug, Clone)]
pub(crate) struct Vocab {
    pub kind: VocabKind,
    pub pre: String,
    /// Token texts by id (empty texts renamed `[EMPTY_i]`, as llama.cpp does).
    pub texts: Vec<String>,
    pub attrs: Vec<TokenAttr>,
    pub scores: Vec<f32>,
    pub merges: Vec<(String, String)>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub eom: Option<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
    pub add_space_prefix: bool,
    /// BPE: use a whole pre-token when it is in the vocabulary, skipping merges (llama-3 style).
    pub ignore_merges: bool,
}

impl Vocab {
    pub fn from_metadata(meta: &GgufMetadata) -> Result<Self> {
        let kind = vocab_kind(meta)?;
        let texts = token_texts(meta)?;
        let attrs = token_attrs(meta, &texts);
        let scores = meta
            .scores()
            .map(<[f32]>::to_vec)
            .unwrap_or_else(|| vec![0.0; texts.len()]);
        let pre = meta.tokenizer_pre().unwrap_or("").to_owned();
        let pre_info = match kind {
            VocabKind::Bpe => Some(super::pre::lookup(&pre)?),
            VocabKind::Spm => None,
        };
        let n_vocab = texts.len();
        let ends = end_tokens(meta, kind, pre_info, n_vocab);
        let merges = match kind {
            VocabKind::Bpe => bpe_merges(meta)?,
            VocabKind::Spm => Vec::new(),
        };
        Ok(Vocab {
            kind,
            pre,
            texts,
            attrs,
            scores,
            merges,
            bos: ends.bos,
            eos: ends.eos,
            eot: valid_id(meta.eot_token_id(), n_vocab),
            eom: valid_id(meta.eom_token_id(), n_vocab),
            add_bos: ends.add_bos,
            add_eos: ends.add_eos,
            add_space_prefix: match kind {
                VocabKind::Spm => meta.add_space_prefix().unwrap_or(true),
                VocabKind::Bpe => false,
            },
            ignore_merges: pre_info.is_some_and(|p| p.ignore_merges),
        })
    }

    /// Token ids that end generation: EOS, EOT, EOM and the end-of-generation texts.
    pub fn eog_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = [self.eos, self.eot, self.eom]
            .into_iter()
            .flatten()
            .collect();
        for (i, t) in self.texts.iter().enumerate() {
            if EOG_TEXTS.contains(&t.as_str()) {
                ids.push(i as u32);
            }
        }
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// The bytes each token decodes to, as llama.cpp's `token_to_piece` with `special = true`.
    pub fn pieces(&self) -> Vec<Box<[u8]>> {
        let byte_of = byte_level_decoder();
        self.texts
            .iter()
            .zip(&self.attrs)
            .map(|(text, attr)| -> Box<[u8]> {
                match attr {
                    TokenAttr::Control | TokenAttr::Unknown | TokenAttr::UserDefined => {
                        text.as_bytes().into()
                    }
                    TokenAttr::Normal => match self.kind {
                        VocabKind::Spm => text.replace('\u{2581}', " ").into_bytes().into(),
                        VocabKind::Bpe => {
                            let mut out = Vec::with_capacity(text.len());
                            for c in text.chars() {
                                match byte_of(c) {
                                    Some(b) => out.push(b),
                                    None => {
                                        let mut buf = [0u8; 4];
                                        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                                    }
                                }
                            }
                            out.into()
                        }
                    },
                    TokenAttr::Byte => match parse_byte_token(text) {
                        Some(b) => Box::new([b]),
                        None => text
                            .chars()
                            .next()
                            .and_then(&byte_of)
                            .map_or_else(Box::default, |b| Box::new([b])),
                    },
                    TokenAttr::Unused | TokenAttr::Undefined => Box::default(),
                }
            })
            .collect()
    }
}

/// The tokenizer kind: only the two this crate implements are accepted.
fn vocab_kind(meta: &GgufMetadata) -> Result<VocabKind> {
    let model = meta.tokenizer_model().ok_or_else(|| {
        Error::Model("the GGUF file has no tokenizer (tokenizer.ggml.model)".to_owned())
    })?;
    match model {
        "gpt2" => Ok(VocabKind::Bpe),
        "llama" => Ok(VocabKind::Spm),
        other => Err(Error::Model(format!(
            "unsupported tokenizer model '{other}' (supported: gpt2, llama)"
        ))),
    }
}

/// The token texts by id. Token ids are u32 everywhere downstream, so the count must fit one;
/// empty texts get llama.cpp's placeholder names, so they decode as they do there.
fn token_texts(meta: &GgufMetadata) -> Result<Vec<String>> {
    let tokens = meta.tokens();
    if tokens.is_empty() {
        return Err(Error::Model(
            "the GGUF file has no vocabulary (tokenizer.ggml.tokens)".to_owned(),
        ));
    }
    if u32::try_from(tokens.len()).is_err() {
        return Err(Error::Model(format!(
            "vocabulary of {} tokens is too large",
            tokens.len()
        )));
    }
    Ok(tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if t.is_empty() {
                format!("[EMPTY_{i}]")
            } else {
                t.clone()
            }
        })
        .collect())
}

/// The token attributes from the file's types (all normal without them), with llama.cpp's
/// by-text fixes: control-looking tokens that the converter left as normal.
fn token_attrs(meta: &GgufMetadata, texts: &[String]) -> Vec<TokenAttr> {
    let mut attrs: Vec<TokenAttr> = match meta.token_types() {
        Some(types) => types.iter().map(|&t| TokenAttr::from_type(t)).collect(),
        None => vec![TokenAttr::Normal; texts.len()],
    };
    let mut force_control = |list: &[&str]| {
        for (i, t) in texts.iter().enumerate() {
            if list.contains(&t.as_str()) && attrs[i] != TokenAttr::Control {
                attrs[i] = TokenAttr::Control;
            }
        }
    };
    for (key, list) in DETECTED_CONTROL_TEXTS {
        if meta.get(key).is_none() {
            force_control(list);
        }
    }
    force_control(EOG_TEXTS);
    attrs
}

/// `id` when it names a token of a vocabulary of `n_vocab`: an id out of range counts as
/// absent, so a bad key can never index past the vocabulary.
fn valid_id(id: Option<u32>, n_vocab: usize) -> Option<u32> {
    id.filter(|&i| u64::from(i) < n_vocab as u64)
}

/// The BOS and EOS tokens and whether encoding adds them.
struct EndTokens {
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    add_eos: bool,
}

/// BOS and EOS with llama.cpp's defaults for a file that does not name them: SentencePiece
/// vocabularies have fixed ids and add BOS; for BPE ones the pre-tokenizer decides.
fn end_tokens(
    meta: &GgufMetadata,
    kind: VocabKind,
    pre_info: Option<PreInfo>,
    n_vocab: usize,
) -> EndTokens {
    let (default_bos, default_eos) = match kind {
        VocabKind::Spm => (Some(1), Some(2)),
        VocabKind::Bpe => (None, None),
    };
    let mut bos = valid_id(meta.bos_token_id(), n_vocab).or(valid_id(default_bos, n_vocab));
    if pre_info.is_some_and(|p| p.no_bos) && meta.bos_token_id().is_none() {
        bos = None;
    }
    let default_add_bos = match kind {
        VocabKind::Spm => true,
        VocabKind::Bpe => pre_info.is_some_and(|p| p.add_bos),
    };
    let eos = valid_id(meta.eos_token_id(), n_vocab).or(valid_id(default_eos, n_vocab));
    EndTokens {
        bos,
        eos,
        // Adding a token the vocabulary lacks is impossible, whatever the file asks.
        add_bos: meta.add_bos_token().unwrap_or(default_add_bos) && bos.is_some(),
        add_eos: meta.add_eos_token().unwrap_or(false) && eos.is_some(),
    }
}

/// A gpt2 vocabulary's merges as (left, right) pairs, in rank order.
fn bpe_merges(meta: &GgufMetadata) -> Result<Vec<(String, String)>> {
    if meta.get(crate::gguf::keys::MERGES).is_none() {
        return Err(Error::Model(
            "a gpt2 vocabulary needs tokenizer.ggml.merges".to_owned(),
        ));
    }
    let mut merges = Vec::with_capacity(meta.merges().len());
    for m in meta.merges() {
        // llama.cpp splits at the first space after the first byte, so a merge whose
        // left side is a space itself still parses.
        let split = m.bytes().skip(1).position(|b| b == b' ').map(|p| p + 1);
        match split {
            Some(p) => merges.push((m[..p].to_owned(), m[p + 1..].to_owned())),
            None => merges.push((String::new(), String::new())),
        }
    }
    Ok(merges)
}

/// `<0x0A>` -> 0x0A.
pub(crate) fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// GPT-2's byte-to-unicode table: printable Latin-1 bytes map to themselves, the other 68 bytes
/// to U+0100 onwards. Returns the inverse (char -> byte).
pub(crate) fn byte_level_decoder() -> impl Fn(char) -> Option<u8> {
    let mut table = [None::<u8>; 324];
    let mut n = 0u32;
    for b in 0u32..256 {
        let printable =
            (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
        let c = if printable {
            b
        } else {
            n += 1;
            255 + n
        };
        table[c as usize] = Some(b as u8);
    }
    move |c: char| table.get(c as usize).copied().flatten()
}
