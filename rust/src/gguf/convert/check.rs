//! Everything the 2023 loader needs, checked before anything is written.

mod tensors;

use std::collections::BTreeMap;

use super::super::tensor::ggml_type_info;
use super::super::value::{Array, Value};
use super::super::{keys, GgufMetadata};
use super::gpt2::{converted_token, vocab_is_raw};
use tensors::{tensor_shapes, tensor_types};

// ---------------------------------------------------------------------------------------------
// Checks: everything the old loader needs, before anything is written

/// The outcome of the checks: what to rewrite.
pub(super) struct Plan {
    pub(super) arch: String,
    pub(super) gpt2: bool,
    /// gpt2 vocabulary in GPT-2's byte-level form (not already raw bytes): rewrite it.
    pub(super) rewrite_vocab: bool,
    pub(super) n_vocab: usize,
    pub(super) token_types: Vec<i32>,
    /// Keys written with this value instead (the type the old loader reads).
    pub(super) fixes: BTreeMap<String, Value>,
    pub(super) extra_kv: Vec<(String, Value)>,
    pub(super) add_scores: bool,
    pub(super) add_output: bool,
}

/// Turns a list of items into `a, b, c and 4 more`.
fn list(items: &[String], max: usize) -> String {
    let shown = items
        .iter()
        .take(max)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > max {
        format!("{shown} and {} more", items.len() - max)
    } else {
        shown
    }
}

fn type_label(tag: u32) -> String {
    match ggml_type_info(tag) {
        Some((name, _, _)) => format!("{name} (ggml type {tag})"),
        None => format!("unknown ggml type {tag}"),
    }
}

fn padded_dims(dims: &[u64]) -> [u64; 4] {
    let mut out = [1u64; 4];
    for (o, &d) in out.iter_mut().zip(dims) {
        *o = d;
    }
    out
}

struct Checker<'a> {
    meta: &'a GgufMetadata,
    problems: Vec<String>,
    fixes: BTreeMap<String, Value>,
}

impl Checker<'_> {
    fn problem(&mut self, msg: impl Into<String>) {
        self.problems.push(msg.into());
    }

    /// A key the old loader reads with `gguf_get_val_u32` after checking the type is UINT32.
    fn u32_key(&mut self, key: &str, required: bool) -> Option<u32> {
        let Some(v) = self.meta.get(key) else {
            if required {
                self.problem(format!("key '{key}' is missing"));
            }
            return None;
        };
        match v {
            Value::U32(n) => Some(*n),
            other => match other.as_u64().and_then(|n| u32::try_from(n).ok()) {
                Some(n) => {
                    self.fixes.insert(key.to_owned(), Value::U32(n));
                    Some(n)
                }
                None => {
                    self.problem(format!(
                        "key '{key}' should be an unsigned 32-bit integer, found {other:?}"
                    ));
                    None
                }
            },
        }
    }

    /// A key the old loader reads as FLOAT32.
    fn f32_key(&mut self, key: &str, required: bool) -> Option<f32> {
        let Some(v) = self.meta.get(key) else {
            if required {
                self.problem(format!("key '{key}' is missing"));
            }
            return None;
        };
        match v {
            Value::F32(x) => Some(*x),
            Value::Array(_) | Value::String(_) | Value::Bool(_) => {
                self.problem(format!("key '{key}' should be a 32-bit float, found {v:?}"));
                None
            }
            other => {
                let x = other.as_f64().unwrap_or(f64::NAN) as f32;
                self.fixes.insert(key.to_owned(), Value::F32(x));
                Some(x)
            }
        }
    }

    /// A special-token id key: UINT32 in the old loader, which stores it in an `int32_t`, so
    /// `u32::MAX` means "none" (-1). Returns the effective id (`None` for none), or the default.
    fn id_key(&mut self, key: &str, default: Option<u32>) -> Option<u32> {
        let Some(v) = self.meta.get(key) else {
            return default;
        };
        let id = match v {
            Value::U32(n) => *n,
            other => match other.as_i64() {
                Some(n) if n < 0 => u32::MAX,
                Some(n) if n <= i64::from(u32::MAX) => n as u32,
                _ => {
                    self.problem(format!(
                        "key '{key}' should be a token id (unsigned 32-bit integer), found {other:?}"
                    ));
                    return None;
                }
            },
        };
        if !matches!(v, Value::U32(_)) {
            self.fixes.insert(key.to_owned(), Value::U32(id));
        }
        (id != u32::MAX).then_some(id)
    }
}

pub(super) fn check(meta: &GgufMetadata) -> std::result::Result<Plan, Vec<String>> {
    let mut c = Checker {
        meta,
        problems: Vec::new(),
        fixes: BTreeMap::new(),
    };
    let Some(arch) = architecture(&mut c) else {
        return Err(c.problems);
    };
    value_types(&mut c);
    let (hp, extra_kv) = hyperparameters(&mut c, &arch);
    let vocab = vocabulary(&mut c);
    tensor_types(&mut c);
    let add_output = tensor_shapes(&mut c, &hp, vocab.n_vocab);
    if !c.problems.is_empty() {
        return Err(c.problems);
    }
    Ok(Plan {
        arch,
        gpt2: vocab.gpt2,
        rewrite_vocab: vocab.rewrite_vocab,
        n_vocab: vocab.n_vocab,
        token_types: vocab.token_types,
        fixes: c.fixes,
        extra_kv,
        add_scores: meta.scores().is_none(),
        add_output,
    })
}

/// The architecture: the only one converted is llama.
fn architecture(c: &mut Checker<'_>) -> Option<String> {
    match c.meta.architecture() {
        Some("llama") => Some("llama".to_owned()),
        Some(other) => {
            c.problem(format!(
                "architecture '{other}' is not supported (only 'llama' is converted)"
            ));
            None
        }
        None => {
            c.problem(format!("key '{}' is missing", keys::ARCHITECTURE));
            None
        }
    }
}

/// Value types the 2023 GGUF reader cannot take at all.
fn value_types(c: &mut Checker<'_>) {
    let meta = c.meta;
    for (key, value) in meta.iter() {
        if let Value::Array(Array::Array(_)) = value {
            c.problem(format!(
                "key '{key}' holds an array of arrays, which the 2023 GGUF reader aborts on"
            ));
        }
    }
    if let Some(v) = meta.get("general.name") {
        if v.as_str().is_none() {
            c.problem(format!(
                "key 'general.name' should be a string, found {v:?}"
            ));
        }
    }
    if meta.get(keys::ALIGNMENT).is_some() {
        match u32::try_from(meta.alignment()) {
            Ok(a) => {
                if !matches!(meta.get(keys::ALIGNMENT), Some(Value::U32(_))) {
                    c.fixes.insert(keys::ALIGNMENT.to_owned(), Value::U32(a));
                }
            }
            Err(_) => c.problem(format!(
                "alignment {} does not fit the 2023 reader's 32-bit field",
                meta.alignment()
            )),
        }
    }
}

/// The hyperparameters the old loader reads, with fixed types.
struct Hparams {
    n_embd: Option<u32>,
    n_ff: Option<u32>,
    n_head: Option<u32>,
    n_head_kv: Option<u32>,
    n_layer: Option<u32>,
    n_rot: Option<u32>,
}

/// The hyperparameters, and the keys to add for the old loader (its form of rope scaling).
fn hyperparameters(c: &mut Checker<'_>, arch: &str) -> (Hparams, Vec<(String, Value)>) {
    let meta = c.meta;
    let k = |name: &str| format!("{arch}.{name}");
    c.u32_key(&k("context_length"), true);
    let n_embd = c.u32_key(&k("embedding_length"), true);
    let n_ff = c.u32_key(&k("feed_forward_length"), true);
    let n_head = c.u32_key(&k("attention.head_count"), true);
    let n_layer = c.u32_key(&k("block_count"), true);
    let n_head_kv = c.u32_key(&k("attention.head_count_kv"), false).or(n_head);
    let n_rot = c.u32_key(&k("rope.dimension_count"), false);
    c.f32_key(&k("attention.layer_norm_rms_epsilon"), true);
    c.f32_key(&k("rope.freq_base"), false);
    let has_scale_linear = c.f32_key(&k("rope.scale_linear"), false).is_some();

    let mut extra_kv = Vec::new();
    if let Some(v) = meta.get(&k("rope.scaling.type")) {
        match v.as_str() {
            Some("none") => {}
            Some("linear") => {
                let factor = meta
                    .get(&k("rope.scaling.factor"))
                    .and_then(Value::as_f64)
                    .unwrap_or(1.0);
                if factor != 1.0 && !has_scale_linear {
                    extra_kv.push((k("rope.scale_linear"), Value::F32(factor as f32)));
                }
            }
            Some(other) => c.problem(format!(
                "rope scaling '{other}' is not supported (the 2023 loader knows only linear scaling)"
            )),
            None => c.problem(format!(
                "key '{}' should be a string, found {v:?}",
                k("rope.scaling.type")
            )),
        }
    }
    if let Some(n) = meta.get(&k("expert_count")).and_then(Value::as_u64) {
        if n > 0 {
            c.problem(format!(
                "mixture-of-experts models are not supported ({} = {n})",
                k("expert_count")
            ));
        }
    }
    let hp = Hparams {
        n_embd,
        n_ff,
        n_head,
        n_head_kv,
        n_layer,
        n_rot,
    };
    (hp, extra_kv)
}

/// What the vocabulary checks found.
struct Vocab {
    gpt2: bool,
    rewrite_vocab: bool,
    n_vocab: usize,
    token_types: Vec<i32>,
}

/// The tokenizer, its tokens and the special-token ids.
fn vocabulary(c: &mut Checker<'_>) -> Vocab {
    let meta = c.meta;
    let gpt2 = tokenizer_is_gpt2(c);
    let tokens = meta.tokens();
    let n_vocab = tokens.len();
    if meta.get(keys::TOKENS).is_none() {
        c.problem(format!("key '{}' is missing", keys::TOKENS));
    } else if n_vocab == 0 {
        c.problem("the vocabulary is empty");
    }
    let token_types = match meta.token_types() {
        Some(t) => t.to_vec(),
        None => {
            c.problem(format!("key '{}' is missing", keys::TOKEN_TYPE));
            Vec::new()
        }
    };
    let rewrite_vocab = gpt2 && !vocab_is_raw(tokens, &token_types);
    if gpt2 && meta.get(keys::MERGES).is_none() {
        c.problem(format!(
            "key '{}' is missing (a gpt2 vocabulary needs its merges)",
            keys::MERGES
        ));
    }
    // The token checks pair each token with its type; without a type for each there is
    // nothing reliable to check (the missing or short list is a problem of its own).
    if n_vocab > 0 && token_types.len() == n_vocab {
        linefeed_token(c, tokens, &token_types, gpt2, rewrite_vocab);
        byte_tokens(c, tokens, &token_types);
    }
    special_ids(c, gpt2, n_vocab);
    Vocab {
        gpt2,
        rewrite_vocab,
        n_vocab,
        token_types,
    }
}

/// Whether the vocabulary is gpt2 (byte-level BPE) rather than llama (SentencePiece), the
/// only two the old loader has.
fn tokenizer_is_gpt2(c: &mut Checker<'_>) -> bool {
    let meta = c.meta;
    match meta.tokenizer_model().unwrap_or_default() {
        "gpt2" => true,
        "llama" => false,
        "" => {
            c.problem(format!("key '{}' is missing", keys::TOKENIZER_MODEL));
            false
        }
        other => {
            c.problem(format!(
                "tokenizer '{other}' is not supported (only 'gpt2' and 'llama')"
            ));
            false
        }
    }
}

/// The old loader finds the newline token at load time and crashes without one. A gpt2
/// vocabulary about to be rewritten is searched in the form it will be written in.
fn linefeed_token(
    c: &mut Checker<'_>,
    tokens: &[String],
    token_types: &[i32],
    gpt2: bool,
    rewrite_vocab: bool,
) {
    let has_linefeed = if rewrite_vocab {
        tokens
            .iter()
            .zip(token_types)
            .any(|(t, &ty)| converted_token(t.as_bytes(), ty).as_ref() == b"\n")
    } else if gpt2 {
        tokens.iter().any(|t| t == "\n")
    } else {
        tokens.iter().any(|t| t == "<0x0A>")
    };
    if !has_linefeed {
        c.problem(if gpt2 {
            "the vocabulary has no newline token ('\u{010A}'), which the 2023 loader looks up at load time".to_owned()
        } else {
            "the vocabulary has no newline byte token '<0x0A>', which the 2023 loader looks up at load time".to_owned()
        });
    }
}

/// Byte tokens (type 6) in any form but "<0xXX>", the only one the old detokenizer reads.
fn byte_tokens(c: &mut Checker<'_>, tokens: &[String], token_types: &[i32]) {
    let bad_bytes: Vec<String> = tokens
        .iter()
        .zip(token_types)
        .enumerate()
        .filter(|(_, (t, &ty))| {
            ty == 6 && !(t.len() == 6 && t.starts_with("<0x") && t.ends_with('>'))
        })
        .map(|(i, (t, _))| format!("#{i} {t:?}"))
        .collect();
    if !bad_bytes.is_empty() {
        c.problem(format!(
            "byte tokens not of the form '<0xXX>': {}",
            list(&bad_bytes, 5)
        ));
    }
}

/// The special-token ids must name tokens in the vocabulary. An absent one counts too: the
/// old loader falls back to its own default, which may lie outside a small vocabulary.
fn special_ids(c: &mut Checker<'_>, gpt2: bool, n_vocab: usize) {
    let defaults: [Option<u32>; 3] = if gpt2 {
        [Some(11), Some(11), None]
    } else {
        [Some(1), Some(2), Some(0)]
    };
    for (key, default) in [
        (keys::BOS_ID, defaults[0]),
        (keys::EOS_ID, defaults[1]),
        (keys::UNKNOWN_ID, defaults[2]),
        ("tokenizer.ggml.seperator_token_id", None),
        (keys::PADDING_ID, None),
    ] {
        if let Some(id) = c.id_key(key, default) {
            if n_vocab > 0 && id as usize >= n_vocab {
                let what = if c.meta.get(key).is_some() {
                    format!("'{key}' is {id}")
                } else {
                    format!("'{key}' is absent and the 2023 loader's default is {id}")
                };
                c.problem(format!("{what}, but the vocabulary has {n_vocab} tokens"));
            }
        }
    }
}
