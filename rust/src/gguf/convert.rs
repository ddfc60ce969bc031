//! Rewrites a modern llama-architecture GGUF into the form that the August-2023 llama.cpp
//! (commit 43033b7, vendored by ctransformers 0.2.27) loads.
//!
//! That loader differs from today's in ways that make a current file fail or crash it:
//! - it requires `tokenizer.ggml.scores`, even for a gpt2 (byte-level BPE) vocabulary;
//! - it requires an `output.weight` tensor (tied embeddings are newer than it);
//! - its BPE code keeps tokens as raw bytes, not in GPT-2's byte-to-unicode form: at load time it
//!   looks up a raw `"\n"` token and dereferences a missing map entry when there is none
//!   (segfault). Its merge lookup maps `" "`/`"\n"` to `"Ġ"`/`"Ċ"` first, so merges are raw bytes
//!   except for those two;
//! - it knows only the ggml types of its day (tags 16 to 18 meant I8/I16/I32 then, and are
//!   IQ* quantizations now), reads the hyperparameters with fixed value types, refuses files with
//!   tensors it does not use, and aborts on nested arrays or non-F32 norm weights.
//!
//! [`convert_for_ctransformers`] checks everything the old loader needs before writing anything,
//! so a file it would crash on is refused here with [`Error::InvalidInput`] naming the problem.
//! The key/values are copied byte for byte (the vocabulary and merges rewritten for gpt2
//! vocabularies, a few typed keys normalized), the tensor data is streamed unchanged from a
//! memory map, and the result goes to a temporary file in the destination's directory that is
//! fsynced and renamed into place. The output depends only on the input, so a rerun writes the
//! same bytes.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::tensor::ggml_type_info;
use super::value::{Array, Value};
use super::writer::{put_count, put_string, write_tensor_info, write_value};
use super::{keys, GgufMetadata, TensorInfo};
use crate::error::{Error, Result};

/// Bumped whenever the converter's output for the same input changes; caches key on it.
pub const CONVERTER_VERSION: u32 = 1;

/// The GGUF version written (the 2023 reader takes 1 and 2; 2 has 64-bit counts).
pub const OUTPUT_VERSION: u32 = 2;

/// The ggml type tags the August-2023 ggml defines and its llama code can compute with: F32,
/// F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and Q2_K..Q6_K. Q8_1 and Q8_K existed but only as the
/// activation side of a dot product (no kernels for them as weights); 16..18 were I8/I16/I32,
/// and every tag from 16 on means something else today (IQ*, BF16...).
pub const OLD_LLAMA_CPP_TYPES: [u32; 12] = [0, 1, 2, 3, 6, 7, 8, 10, 11, 12, 13, 14];

/// The text of the raw-byte tokens every merge keeps in GPT-2 form: `Ġ` (space) and `Ċ` (newline).
const MERGE_SPACE: &str = "\u{0120}";
const MERGE_NEWLINE: &str = "\u{010A}";

/// What one conversion did.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvertReport {
    /// The source file.
    pub source: PathBuf,
    /// The written file.
    pub output: PathBuf,
    /// The source's GGUF version.
    pub source_version: u32,
    /// The output's GGUF version ([`OUTPUT_VERSION`]).
    pub output_version: u32,
    /// [`CONVERTER_VERSION`].
    pub converter_version: u32,
    /// `general.architecture` (always `llama` for now).
    pub architecture: String,
    /// `tokenizer.ggml.model` (`gpt2` or `llama`).
    pub tokenizer_model: String,
    /// Tokens in the vocabulary.
    pub n_vocab: usize,
    /// Key/values written.
    pub n_kv: usize,
    /// Tensors written (one more than the source's when `output.weight` was added).
    pub n_tensors: usize,
    /// Whether the gpt2 vocabulary was already in raw bytes (a converted file), so left alone.
    pub vocab_already_raw: bool,
    /// Vocabulary entries whose bytes changed (GPT-2 unicode form to raw bytes).
    pub tokens_rewritten: usize,
    /// Merges whose bytes changed.
    pub merges_rewritten: usize,
    /// Whether `tokenizer.ggml.scores` was added (minus the token's rank).
    pub added_scores: bool,
    /// Whether `output.weight` was added as a copy of `token_embd.weight`.
    pub added_output_weight: bool,
    /// Keys added (besides the scores).
    pub added_keys: Vec<String>,
    /// Keys whose value type was changed to the one the old loader reads (or dropped).
    pub normalized_keys: Vec<String>,
    /// Bytes of tensor data written (without padding).
    pub tensor_bytes: u64,
    /// Size of the written file.
    pub output_bytes: u64,
}

// ---------------------------------------------------------------------------------------------
// GPT-2 byte-level form <-> raw bytes

/// GPT-2's byte-to-unicode map, inverted: index = code point, value = byte (or -1). Printable
/// bytes (`!`..=`~`, `¡`..=`¬`, `®`..=`ÿ`) stand for themselves; the other 68 take the code
/// points from 256 on, in byte order.
const fn gpt2_unicode_to_byte_table() -> [i16; 324] {
    let mut table = [-1i16; 324];
    let mut n = 0;
    let mut b = 0;
    while b < 256 {
        let printable =
            (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
        if printable {
            table[b] = b as i16;
        } else {
            table[256 + n] = b as i16;
            n += 1;
        }
        b += 1;
    }
    table
}

static GPT2_UNICODE_TO_BYTE: [i16; 324] = gpt2_unicode_to_byte_table();

/// The byte a character of GPT-2's byte-level alphabet stands for.
pub fn gpt2_char_to_byte(c: char) -> Option<u8> {
    let i = c as usize;
    GPT2_UNICODE_TO_BYTE
        .get(i)
        .and_then(|&b| u8::try_from(b).ok())
}

/// A vocabulary entry in GPT-2's byte-level form (`"Ġthe"`) as the raw bytes it stands for
/// (`" the"`). Text with a character outside that alphabet (an added token such as `"<|x|>"` is
/// inside it, `"中"` is not) is returned unchanged, as is text that is not UTF-8.
pub fn gpt2_token_to_bytes(token: &[u8]) -> Cow<'_, [u8]> {
    let Ok(text) = std::str::from_utf8(token) else {
        return Cow::Borrowed(token);
    };
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match gpt2_char_to_byte(c) {
            Some(b) => out.push(b),
            None => return Cow::Borrowed(token),
        }
    }
    if out == token {
        Cow::Borrowed(token)
    } else {
        Cow::Owned(out)
    }
}

fn push_merge_side(out: &mut Vec<u8>, side: &[u8]) {
    for &b in gpt2_token_to_bytes(side).iter() {
        match b {
            b' ' => out.extend_from_slice(MERGE_SPACE.as_bytes()),
            b'\n' => out.extend_from_slice(MERGE_NEWLINE.as_bytes()),
            _ => out.push(b),
        }
    }
}

/// A merge `"left right"` as the 2023 loader looks it up: both sides as raw bytes, except that
/// space and newline stay `"Ġ"`/`"Ċ"` (its `find_bpe_rank` maps them so before the lookup). The
/// split is at the first space after the first byte, as that loader splits. A merge without a
/// separator is returned unchanged.
pub fn gpt2_merge_to_bytes(merge: &[u8]) -> Cow<'_, [u8]> {
    let Some(pos) = merge.iter().skip(1).position(|&b| b == b' ').map(|p| p + 1) else {
        return Cow::Borrowed(merge);
    };
    let mut out = Vec::with_capacity(merge.len());
    push_merge_side(&mut out, &merge[..pos]);
    out.push(b' ');
    push_merge_side(&mut out, &merge[pos + 1..]);
    if out == merge {
        Cow::Borrowed(merge)
    } else {
        Cow::Owned(out)
    }
}

// ---------------------------------------------------------------------------------------------
// Checks: everything the old loader needs, before anything is written

/// The outcome of the checks: what to rewrite.
struct Plan {
    arch: String,
    gpt2: bool,
    /// gpt2 vocabulary in GPT-2's byte-level form (not already raw bytes): rewrite it.
    rewrite_vocab: bool,
    n_vocab: usize,
    token_types: Vec<i32>,
    /// Keys written with this value instead (the type the old loader reads).
    fixes: BTreeMap<String, Value>,
    extra_kv: Vec<(String, Value)>,
    add_scores: bool,
    add_output: bool,
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

fn check(meta: &GgufMetadata) -> std::result::Result<Plan, Vec<String>> {
    let mut c = Checker {
        meta,
        problems: Vec::new(),
        fixes: BTreeMap::new(),
    };

    // Architecture: the only one converted is llama.
    let arch = match meta.architecture() {
        Some("llama") => "llama".to_owned(),
        Some(other) => {
            c.problem(format!(
                "architecture '{other}' is not supported (only 'llama' is converted)"
            ));
            return Err(c.problems);
        }
        None => {
            c.problem(format!("key '{}' is missing", keys::ARCHITECTURE));
            return Err(c.problems);
        }
    };

    // Value types the 2023 GGUF reader cannot take at all.
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

    // Hyperparameters, read with fixed types by the old loader.
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

    // Vocabulary.
    let tokenizer = meta.tokenizer_model().unwrap_or_default().to_owned();
    let gpt2 = match tokenizer.as_str() {
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
    };
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
    if n_vocab > 0 && token_types.len() == n_vocab {
        // The old loader finds the newline token at load time and crashes without one.
        let has_linefeed = if rewrite_vocab {
            tokens
                .iter()
                .zip(&token_types)
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
        // Its detokenizer reads byte tokens as "<0xXX>".
        let bad_bytes: Vec<String> = tokens
            .iter()
            .zip(&token_types)
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
                let what = if meta.get(key).is_some() {
                    format!("'{key}' is {id}")
                } else {
                    format!("'{key}' is absent and the 2023 loader's default is {id}")
                };
                c.problem(format!("{what}, but the vocabulary has {n_vocab} tokens"));
            }
        }
    }

    // Tensors: types, names, shapes.
    let mut bad_types: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for t in meta.tensors() {
        if !OLD_LLAMA_CPP_TYPES.contains(&t.ggml_type) {
            bad_types
                .entry(t.ggml_type)
                .or_default()
                .push(t.name.clone());
        }
    }
    for (tag, names) in &bad_types {
        c.problem(format!(
            "tensor type {} is newer than the 2023 llama.cpp (used by {})",
            type_label(*tag),
            list(names, 3)
        ));
    }

    let by_name: HashMap<&str, &TensorInfo> = meta
        .tensors()
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    let add_output = !by_name.contains_key("output.weight");
    if let (Some(n_embd), Some(n_ff), Some(n_head), Some(n_head_kv), Some(n_layer)) =
        (n_embd, n_ff, n_head, n_head_kv, n_layer)
    {
        let (e, f, v) = (u64::from(n_embd), u64::from(n_ff), n_vocab as u64);
        let mut shapes_ok = true;
        if n_head == 0 || n_head_kv == 0 || n_head % n_head_kv != 0 {
            c.problem(format!(
                "attention head counts {n_head} (query) and {n_head_kv} (key/value) are not supported: the query count must be a positive multiple of the key/value count"
            ));
            shapes_ok = false;
        } else if n_embd % n_head != 0 {
            c.problem(format!(
                "the embedding length {n_embd} is not a multiple of the head count {n_head}"
            ));
            shapes_ok = false;
        } else if let Some(n_rot) = n_rot {
            if n_rot != n_embd / n_head {
                c.problem(format!(
                    "rope dimension count {n_rot} differs from the head size {} (the 2023 loader requires them equal)",
                    n_embd / n_head
                ));
            }
        }
        if n_layer == 0 {
            c.problem("the model has no layers (block_count is 0)");
        }
        let e_gqa = if shapes_ok {
            e / u64::from(n_head / n_head_kv)
        } else {
            0
        };

        // name, expected dims, must be F32
        let mut expected: Vec<(String, Vec<u64>, bool)> = vec![
            ("token_embd.weight".into(), vec![e, v], false),
            ("output_norm.weight".into(), vec![e], true),
            ("output.weight".into(), vec![e, v], false),
        ];
        for i in 0..n_layer {
            let b = |n: &str| format!("blk.{i}.{n}.weight");
            expected.extend([
                (b("attn_norm"), vec![e], true),
                (b("attn_q"), vec![e, e], false),
                (b("attn_k"), vec![e, e_gqa], false),
                (b("attn_v"), vec![e, e_gqa], false),
                (b("attn_output"), vec![e, e], false),
                (b("ffn_norm"), vec![e], true),
                (b("ffn_gate"), vec![e, f], false),
                (b("ffn_down"), vec![f, e], false),
                (b("ffn_up"), vec![e, f], false),
            ]);
        }
        let mut missing = Vec::new();
        let mut wrong_shape = Vec::new();
        let mut not_f32 = Vec::new();
        for (name, dims, f32_only) in &expected {
            let Some(t) = by_name.get(name.as_str()) else {
                if name != "output.weight" {
                    missing.push(name.clone());
                }
                continue;
            };
            if shapes_ok && padded_dims(&t.dims) != padded_dims(dims) {
                wrong_shape.push(format!("'{name}' is {:?}, expected {dims:?}", t.dims));
            }
            if *f32_only && t.ggml_type != 0 {
                not_f32.push(format!("'{name}' is {}", type_label(t.ggml_type)));
            }
        }
        if !missing.is_empty() {
            c.problem(format!(
                "required tensors are missing: {}",
                list(&missing, 5)
            ));
        }
        if !wrong_shape.is_empty() {
            c.problem(format!(
                "tensors have shapes the 2023 loader does not expect: {}",
                list(&wrong_shape, 3)
            ));
        }
        if !not_f32.is_empty() {
            c.problem(format!(
                "norm weights must be F32 for the 2023 llama.cpp: {}",
                list(&not_f32, 3)
            ));
        }
        let known: HashSet<&str> = expected.iter().map(|(n, _, _)| n.as_str()).collect();
        let extra: Vec<String> = meta
            .tensors()
            .iter()
            .filter(|t| !known.contains(t.name.as_str()))
            .map(|t| match t.name.as_str() {
                "rope_freqs.weight" => "rope_freqs.weight (Llama 3.1-style rope scaling)".into(),
                n => n.to_owned(),
            })
            .collect();
        if !extra.is_empty() {
            c.problem(format!(
                "tensors the 2023 loader does not know (it refuses files with extra tensors): {}",
                list(&extra, 5)
            ));
        }
    }

    if !c.problems.is_empty() {
        return Err(c.problems);
    }
    Ok(Plan {
        arch,
        gpt2,
        rewrite_vocab,
        n_vocab,
        token_types,
        fixes: c.fixes,
        extra_kv,
        add_scores: meta.scores().is_none(),
        add_output,
    })
}

/// Whether a gpt2 vocabulary already holds raw bytes (a converted file): more normal tokens
/// contain a raw space or newline than GPT-2's `Ġ`/`Ċ`. Byte-level vocabularies have thousands
/// of `Ġ` tokens and no raw spaces, converted ones the reverse; rewriting a converted vocabulary
/// again would be wrong (`"é"` would become the single byte 0xE9).
fn vocab_is_raw(tokens: &[String], types: &[i32]) -> bool {
    let (mut raw, mut mapped) = (0usize, 0usize);
    for (t, _) in tokens.iter().zip(types).filter(|(_, &ty)| ty == 1) {
        raw += usize::from(t.contains([' ', '\n']));
        mapped += usize::from(t.contains(['\u{0120}', '\u{010A}']));
    }
    raw > mapped
}

/// The vocabulary entry as the old gpt2 loader wants it: normal tokens (type 1) as raw bytes,
/// everything else (control, user-defined...) unchanged.
fn converted_token(token: &[u8], token_type: i32) -> Cow<'_, [u8]> {
    if token_type == 1 {
        gpt2_token_to_bytes(token)
    } else {
        Cow::Borrowed(token)
    }
}

// ---------------------------------------------------------------------------------------------
// The header rewrite: a raw walk over the source key/values, so unchanged values are copied byte
// for byte (strings that are not UTF-8 included) and v1 counts are widened to v2's 64 bits.

struct Raw<'a> {
    buf: &'a [u8],
    pos: usize,
    wide: bool,
}

impl<'a> Raw<'a> {
    fn take(&mut self, n: u64) -> Result<&'a [u8]> {
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n))
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| Error::Model("GGUF: header truncated".into()))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn count(&mut self) -> Result<u64> {
        if self.wide {
            let b = self.take(8)?;
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            Ok(u64::from_le_bytes(a))
        } else {
            self.u32().map(u64::from)
        }
    }

    fn string(&mut self) -> Result<&'a [u8]> {
        let n = self.count()?;
        self.take(n)
    }

    /// Copies one value of type `tag`, re-encoded for `OUTPUT_VERSION`.
    fn copy_value(&mut self, tag: u32, out: &mut Vec<u8>) -> Result<()> {
        match tag {
            8 => put_string(out, self.string()?, OUTPUT_VERSION),
            9 => {
                let elem = self.u32()?;
                let n = self.count()?;
                out.extend_from_slice(&elem.to_le_bytes());
                out.extend_from_slice(&n.to_le_bytes());
                match fixed_size(elem) {
                    Some(size) => {
                        let bytes = self.take(n.saturating_mul(size))?;
                        out.extend_from_slice(bytes);
                    }
                    None => {
                        for _ in 0..n {
                            self.copy_value(elem, out)?;
                        }
                    }
                }
            }
            other => {
                let size = fixed_size(other)
                    .ok_or_else(|| Error::Model(format!("GGUF: unknown value type {other}")))?;
                out.extend_from_slice(self.take(size)?);
            }
        }
        Ok(())
    }

    /// Copies a string array, passing each element through `map`; returns how many changed.
    fn map_strings(
        &mut self,
        key: &str,
        tag: u32,
        out: &mut Vec<u8>,
        mut map: impl FnMut(usize, &'a [u8]) -> Cow<'a, [u8]>,
    ) -> Result<usize> {
        let elem = if tag == 9 { self.u32()? } else { u32::MAX };
        if elem != 8 {
            return Err(Error::Model(format!(
                "GGUF: key '{key}' should be an array of strings"
            )));
        }
        let n = self.count()?;
        out.extend_from_slice(&8u32.to_le_bytes());
        out.extend_from_slice(&n.to_le_bytes());
        let mut changed = 0;
        for i in 0..n as usize {
            let s = self.string()?;
            let m = map(i, s);
            if m.as_ref() != s {
                changed += 1;
            }
            put_string(out, &m, OUTPUT_VERSION);
        }
        Ok(changed)
    }
}

fn fixed_size(tag: u32) -> Option<u64> {
    match tag {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

/// The rewritten header and where each output tensor's data comes from.
struct Layout {
    header: Vec<u8>,
    /// (absolute source offset, size, offset in the output data section)
    copies: Vec<(u64, u64, u64)>,
    /// Size of the output data section, padded to the alignment.
    data_size: u64,
    n_kv: usize,
    n_tensors: usize,
    tokens_rewritten: usize,
    merges_rewritten: usize,
    added_keys: Vec<String>,
}

fn build_layout(map: &[u8], meta: &GgufMetadata, plan: &Plan) -> Result<Layout> {
    let mut r = Raw {
        buf: map,
        pos: 8,
        wide: meta.version() >= 2,
    };
    let _n_tensors = r.count()?;
    let n_kv = r.count()?;

    // Tensor table with fresh offsets; output.weight (when added) last.
    let align = meta.alignment();
    let mut tensors: Vec<TensorInfo> = meta.tensors().to_vec();
    let mut sources: Vec<&TensorInfo> = meta.tensors().iter().collect();
    if plan.add_output {
        let embd = meta
            .tensors()
            .iter()
            .find(|t| t.name == "token_embd.weight")
            .ok_or_else(|| Error::InvalidInput("token_embd.weight is missing".into()))?;
        tensors.push(TensorInfo {
            name: "output.weight".into(),
            ..embd.clone()
        });
        sources.push(embd);
    }
    let mut copies = Vec::with_capacity(tensors.len());
    let mut offset = 0u64;
    for (t, src) in tensors.iter_mut().zip(&sources) {
        let size = src.byte_size().ok_or_else(|| {
            Error::InvalidInput(format!("tensor '{}' has an unknown size", src.name))
        })?;
        offset = offset.next_multiple_of(align);
        t.offset = offset;
        copies.push((meta.data_offset() + src.offset, size, offset));
        offset += size;
    }
    let data_size = offset.next_multiple_of(align);

    let mut added_keys: Vec<String> = plan.extra_kv.iter().map(|(k, _)| k.clone()).collect();
    let n_kv_out = n_kv as usize + plan.extra_kv.len() + usize::from(plan.add_scores);

    let mut out = Vec::with_capacity(meta.data_offset() as usize + (plan.n_vocab << 2) + 4096);
    out.extend_from_slice(b"GGUF");
    out.extend_from_slice(&OUTPUT_VERSION.to_le_bytes());
    put_count(&mut out, tensors.len(), OUTPUT_VERSION);
    put_count(&mut out, n_kv_out, OUTPUT_VERSION);

    let mut tokens_rewritten = 0;
    let mut merges_rewritten = 0;
    let types = &plan.token_types;
    for _ in 0..n_kv {
        let key_bytes = r.string()?;
        let key = String::from_utf8_lossy(key_bytes);
        let tag = r.u32()?;
        put_string(&mut out, key_bytes, OUTPUT_VERSION);
        if let Some(v) = plan.fixes.get(key.as_ref()) {
            r.copy_value(tag, &mut Vec::new())?;
            out.extend_from_slice(&v.value_type().tag().to_le_bytes());
            write_value(&mut out, v, OUTPUT_VERSION);
            continue;
        }
        out.extend_from_slice(&tag.to_le_bytes());
        if plan.rewrite_vocab && key == keys::TOKENS {
            tokens_rewritten = r.map_strings(&key, tag, &mut out, |i, s| {
                converted_token(s, types.get(i).copied().unwrap_or(1))
            })?;
        } else if plan.rewrite_vocab && key == keys::MERGES {
            merges_rewritten = r.map_strings(&key, tag, &mut out, |_, s| gpt2_merge_to_bytes(s))?;
        } else {
            r.copy_value(tag, &mut out)?;
        }
    }
    let mut extra = plan.extra_kv.clone();
    if plan.add_scores {
        let scores = (0..plan.n_vocab).map(|i| -(i as f32)).collect();
        extra.push((keys::SCORES.into(), Value::Array(Array::F32(scores))));
    }
    for (key, v) in &extra {
        put_string(&mut out, key.as_bytes(), OUTPUT_VERSION);
        out.extend_from_slice(&v.value_type().tag().to_le_bytes());
        write_value(&mut out, v, OUTPUT_VERSION);
    }
    if plan.add_scores {
        added_keys.push(keys::SCORES.into());
    }
    for t in &tensors {
        write_tensor_info(&mut out, t, OUTPUT_VERSION);
    }
    let padded = (out.len() as u64).next_multiple_of(align);
    out.resize(padded as usize, 0);

    Ok(Layout {
        header: out,
        copies,
        data_size,
        n_kv: n_kv_out,
        n_tensors: tensors.len(),
        tokens_rewritten,
        merges_rewritten,
        added_keys,
    })
}

// ---------------------------------------------------------------------------------------------
// Writing

/// Calls the progress callback at most about a hundred times, plus once at the start and end.
struct Progress<'a> {
    callback: &'a mut dyn FnMut(u64, u64) -> bool,
    total: u64,
    step: u64,
    next: u64,
}

impl Progress<'_> {
    fn report(&mut self, done: u64, force: bool) -> Result<()> {
        if force || done >= self.next {
            if !(self.callback)(done, self.total) {
                return Err(Error::StateConflict("the conversion was cancelled".into()));
            }
            self.next = done.saturating_add(self.step);
        }
        Ok(())
    }
}

const COPY_CHUNK: usize = 1 << 20;
const ZEROS: [u8; 4096] = [0; 4096];

fn write_zeros(w: &mut impl Write, mut n: u64) -> std::io::Result<()> {
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        w.write_all(&ZEROS[..k])?;
        n -= k as u64;
    }
    Ok(())
}

fn write_body(
    w: &mut impl Write,
    map: &memmap2::Mmap,
    layout: &Layout,
    progress: &mut Progress<'_>,
) -> Result<()> {
    w.write_all(&layout.header)?;
    let mut pos = 0u64;
    let mut done = 0u64;
    progress.report(0, true)?;
    for &(src, size, dst) in &layout.copies {
        write_zeros(w, dst - pos)?;
        let start = src as usize;
        let data = &map[start..start + size as usize];
        for (i, chunk) in data.chunks(COPY_CHUNK).enumerate() {
            w.write_all(chunk)?;
            done += chunk.len() as u64;
            if done < progress.total {
                progress.report(done, false)?;
            }
            // These pages are not needed again (output.weight's second copy of token_embd reads
            // them back from the page cache): dropping them from the map keeps the resident
            // set at about one chunk, whatever the size of the tensors.
            #[cfg(unix)]
            // SAFETY: the map is a read-only shared file mapping; after DONTNEED the next
            // access reads the file again, so no slice we hold can observe different data.
            unsafe {
                let _ = map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    start + i * COPY_CHUNK,
                    chunk.len(),
                );
            }
        }
        pos = dst + size;
    }
    write_zeros(w, layout.data_size - pos)?;
    progress.report(done, true)?;
    Ok(())
}

fn storage(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Storage(format!("cannot {what} {}: {e}", path.display()))
}

/// Removes the temporary file unless the rename happened.
struct TempGuard(Option<PathBuf>);

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
        }
    }
}

/// Writes through `body` into a fresh temporary file next to `dst`, fsyncs it and renames it
/// over `dst`, so readers see either the old file or the complete new one, and two writers at
/// once each rename a complete file.
fn write_atomically(
    dst: &Path,
    body: impl FnOnce(&mut BufWriter<File>) -> Result<()>,
) -> Result<u64> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = dst
        .file_name()
        .ok_or_else(|| Error::InvalidInput(format!("{} is not a file path", dst.display())))?;
    let dir = match dst.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = dir.join(format!(
        ".{}.{}-{}-{nanos}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| storage("create a temporary file", &tmp, e))?;
    let mut guard = TempGuard(Some(tmp.clone()));
    let mut w = BufWriter::with_capacity(COPY_CHUNK, file);
    body(&mut w)?;
    let file = w
        .into_inner()
        .map_err(|e| storage("write", &tmp, e.into_error()))?;
    file.sync_all().map_err(|e| storage("sync", &tmp, e))?;
    let size = file.metadata().map_err(|e| storage("stat", &tmp, e))?.len();
    drop(file);
    fs::rename(&tmp, dst).map_err(|e| storage("rename the temporary file to", dst, e))?;
    guard.0 = None;
    #[cfg(unix)]
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(size)
}

fn refuse(src: &Path, problems: &[String]) -> Error {
    Error::InvalidInput(format!(
        "{} cannot be converted for ctransformers (its 2023 llama.cpp): {}",
        src.display(),
        problems.join("; ")
    ))
}

/// Converts the GGUF at `src` into a file ctransformers 0.2.27 loads, written atomically to
/// `dst`. `progress(done, total)` gets the tensor bytes copied so far, about a hundred times.
///
/// A file the old loader cannot take (another architecture or tokenizer, newer tensor types,
/// missing or extra tensors, unexpected shapes...) is `InvalidInput` naming what is wrong; so is
/// a file that is not GGUF or is truncated. I/O failures are `Storage`.
pub fn convert_for_ctransformers(
    src: &Path,
    dst: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ConvertReport> {
    convert_for_ctransformers_cancellable(src, dst, &mut |done, total| {
        progress(done, total);
        true
    })
}

/// [`convert_for_ctransformers`] with a progress callback that can cancel by returning `false`
/// (the result is then `StateConflict` and `dst` is left untouched).
pub fn convert_for_ctransformers_cancellable(
    src: &Path,
    dst: &Path,
    progress: &mut dyn FnMut(u64, u64) -> bool,
) -> Result<ConvertReport> {
    let file = File::open(src).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            Error::InvalidInput(format!("model file not found: {}", src.display()))
        }
        _ => storage("open", src, e),
    })?;
    let len = file.metadata().map_err(|e| storage("stat", src, e))?.len();
    if file.metadata().is_ok_and(|m| m.is_dir()) {
        return Err(refuse(src, &["it is a directory".into()]));
    }
    if len == 0 {
        return Err(refuse(src, &["the file is empty, not a GGUF file".into()]));
    }
    // SAFETY: read-only map; like every mmap-based model loader we rely on the file not being
    // truncated by another process while it is read.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| storage("map", src, e))?;
    #[cfg(unix)]
    let _ = map.advise(memmap2::Advice::Sequential);
    let meta = GgufMetadata::from_bytes(&map).map_err(|e| match e {
        Error::Model(m) | Error::InvalidInput(m) => refuse(src, &[m]),
        other => other,
    })?;
    let plan = check(&meta).map_err(|problems| refuse(src, &problems))?;
    let layout = build_layout(&map, &meta, &plan).map_err(|e| match e {
        Error::Model(m) => refuse(src, &[m]),
        other => other,
    })?;

    let total: u64 = layout.copies.iter().map(|c| c.1).sum();
    let mut progress = Progress {
        callback: progress,
        total,
        step: (total / 100).max(1),
        next: 0,
    };
    let output_bytes = write_atomically(dst, |w| write_body(w, &map, &layout, &mut progress))?;

    Ok(ConvertReport {
        source: src.to_path_buf(),
        output: dst.to_path_buf(),
        source_version: meta.version(),
        output_version: OUTPUT_VERSION,
        converter_version: CONVERTER_VERSION,
        architecture: plan.arch.clone(),
        tokenizer_model: if plan.gpt2 { "gpt2" } else { "llama" }.to_owned(),
        n_vocab: plan.n_vocab,
        n_kv: layout.n_kv,
        n_tensors: layout.n_tensors,
        vocab_already_raw: plan.gpt2 && !plan.rewrite_vocab,
        tokens_rewritten: layout.tokens_rewritten,
        merges_rewritten: layout.merges_rewritten,
        added_scores: plan.add_scores,
        added_output_weight: plan.add_output,
        added_keys: layout.added_keys,
        normalized_keys: plan.fixes.keys().cloned().collect(),
        tensor_bytes: total,
        output_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::test_model_path;
    use super::super::writer::write_header;
    use super::*;

    /// GPT-2's forward byte-to-unicode map, written out independently of the table above.
    fn gpt2_byte_to_char(b: u8) -> char {
        let printable = matches!(b, b'!'..=b'~' | 0xa1..=0xac | 0xae..=0xff);
        if printable {
            return char::from(b);
        }
        let n = (0..b)
            .filter(|&x| !matches!(x, b'!'..=b'~' | 0xa1..=0xac | 0xae..=0xff))
            .count() as u32;
        char::from_u32(256 + n).unwrap()
    }

    #[test]
    fn byte_to_unicode_inversion() {
        for b in 0..=255u8 {
            let c = gpt2_byte_to_char(b);
            assert_eq!(gpt2_char_to_byte(c), Some(b), "byte {b:#04x} as {c:?}");
        }
        // Exactly 256 characters map; nothing else does.
        let mapped = (0..0x400u32)
            .filter_map(char::from_u32)
            .filter(|&c| gpt2_char_to_byte(c).is_some())
            .count();
        assert_eq!(mapped, 256);
        assert_eq!(gpt2_char_to_byte('\u{0120}'), Some(b' '));
        assert_eq!(gpt2_char_to_byte('\u{010A}'), Some(b'\n'));
        assert_eq!(gpt2_char_to_byte('\u{0100}'), Some(0));
        assert_eq!(gpt2_char_to_byte('\u{0143}'), Some(0xad));
        assert_eq!(gpt2_char_to_byte('\n'), None);
        assert_eq!(gpt2_char_to_byte(' '), None);
        assert_eq!(gpt2_char_to_byte('\u{0144}'), None);
    }

    #[test]
    fn tokens_to_raw_bytes() {
        let raw = |s: &str| gpt2_token_to_bytes(s.as_bytes()).into_owned();
        assert_eq!(raw("\u{0120}the"), b" the");
        assert_eq!(raw("\u{010A}"), b"\n");
        assert_eq!(raw("\u{010A}\u{010A}"), b"\n\n");
        assert_eq!(raw("\u{0120}\u{00C3}\u{00A9}"), " é".as_bytes());
        // Half of a UTF-8 sequence: raw bytes that are not UTF-8 themselves.
        assert_eq!(raw("\u{00C3}"), [0xc3]);
        assert_eq!(raw("<|im_start|>"), b"<|im_start|>");
        // Characters outside the byte alphabet: left alone.
        assert_eq!(raw("中"), "中".as_bytes());
        assert_eq!(raw("a b"), b"a b");
        assert!(matches!(gpt2_token_to_bytes(b"abc"), Cow::Borrowed(_)));
        assert_eq!(gpt2_token_to_bytes(&[0xff, 0xfe]).as_ref(), [0xff, 0xfe]);
        // Every byte round-trips through its one-character token.
        for b in 0..=255u8 {
            let token = gpt2_byte_to_char(b).to_string();
            assert_eq!(raw(&token), [b]);
        }
        // Only normal tokens are rewritten.
        assert_eq!(converted_token("\u{0120}a".as_bytes(), 1).as_ref(), b" a");
        assert_eq!(
            converted_token("\u{0120}a".as_bytes(), 3).as_ref(),
            "\u{0120}a".as_bytes()
        );
    }

    #[test]
    fn merges_keep_space_and_newline_in_gpt2_form() {
        let m = |s: &str| gpt2_merge_to_bytes(s.as_bytes()).into_owned();
        assert_eq!(m("\u{0120} t"), "\u{0120} t".as_bytes());
        assert_eq!(
            m("\u{0120}\u{0120} \u{0120}"),
            "\u{0120}\u{0120} \u{0120}".as_bytes()
        );
        assert_eq!(m("\u{010A} \u{010A}"), "\u{010A} \u{010A}".as_bytes());
        assert_eq!(m("\u{0120}a b"), "\u{0120}a b".as_bytes());
        // Everything else becomes raw bytes: é's two UTF-8 bytes, tabs, control bytes.
        assert_eq!(m("\u{00C3} \u{00A9}"), [0xc3, b' ', 0xa9]);
        assert_eq!(m("\u{0109} \u{0109}"), b"\t \t");
        assert_eq!(
            m("\u{0120}\u{00C3} \u{00A9}"),
            [0xc4, 0xa0, 0xc3, b' ', 0xa9]
        );
        assert_eq!(m("\u{0100} a"), [0, b' ', b'a']);
        // Split at the first space after the first byte, like the 2023 loader.
        // (a raw space on the right is then kept as "Ġ", as the reference converter does).
        assert_eq!(m("a b c"), "a b\u{0120}c".as_bytes());
        // No separator: unchanged.
        assert_eq!(m("ab"), b"ab");
        assert!(matches!(gpt2_merge_to_bytes(b"i n"), Cow::Borrowed(_)));
    }

    // ---- synthetic models ---------------------------------------------------------------

    fn strs(v: &[&str]) -> Value {
        Value::Array(Array::String(v.iter().map(|s| s.to_string()).collect()))
    }

    const TOKENS: [&str; 14] = [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "\u{010A}",
        "\u{0120}",
        "a",
        "b",
        "\u{0120}a",
        "ab",
        "\u{00C3}\u{00A9}",
        "\u{0120}\u{0120}",
        "c",
        "\u{00C3}",
        "\u{00A9}",
    ];

    fn base_kv() -> Vec<(String, Value)> {
        let mut types = vec![1i32; TOKENS.len()];
        types[..3].fill(3);
        vec![
            ("general.architecture".into(), Value::String("llama".into())),
            ("general.name".into(), Value::String("tiny".into())),
            ("llama.block_count".into(), Value::U32(2)),
            ("llama.context_length".into(), Value::U32(256)),
            ("llama.embedding_length".into(), Value::U32(32)),
            ("llama.feed_forward_length".into(), Value::U32(64)),
            ("llama.attention.head_count".into(), Value::U32(4)),
            ("llama.attention.head_count_kv".into(), Value::U32(2)),
            ("llama.rope.freq_base".into(), Value::F32(10000.0)),
            ("llama.rope.dimension_count".into(), Value::U32(8)),
            (
                "llama.attention.layer_norm_rms_epsilon".into(),
                Value::F32(1e-5),
            ),
            ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
            ("tokenizer.ggml.pre".into(), Value::String("smollm".into())),
            ("tokenizer.ggml.tokens".into(), strs(&TOKENS)),
            (
                "tokenizer.ggml.token_type".into(),
                Value::Array(Array::I32(types)),
            ),
            (
                "tokenizer.ggml.merges".into(),
                strs(&[
                    "\u{0120} a",
                    "a b",
                    "\u{00C3} \u{00A9}",
                    "\u{0120} \u{0120}",
                ]),
            ),
            ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
            ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
            ("tokenizer.ggml.padding_token_id".into(), Value::U32(2)),
            ("misc.f64".into(), Value::F64(0.25)),
        ]
    }

    /// (name, dims, type) of a complete tiny llama, without output.weight (tied).
    fn base_tensors() -> Vec<(String, Vec<u64>, u32)> {
        let v = TOKENS.len() as u64;
        let mut out = vec![
            ("token_embd.weight".to_string(), vec![32, v], 0),
            ("output_norm.weight".to_string(), vec![32], 0),
        ];
        for i in 0..2 {
            let b = |n: &str| format!("blk.{i}.{n}.weight");
            out.extend([
                (b("attn_norm"), vec![32], 0),
                (b("attn_q"), vec![32, 32], 8),
                (b("attn_k"), vec![32, 16], 8),
                (b("attn_v"), vec![32, 16], 1),
                (b("attn_output"), vec![32, 32], 3),
                (b("ffn_norm"), vec![32], 0),
                (b("ffn_gate"), vec![32, 64], 2),
                (b("ffn_down"), vec![64, 32], 7),
                (b("ffn_up"), vec![32, 64], 6),
            ]);
        }
        out
    }

    /// A GGUF image: header from the writer, then each tensor's data (a byte pattern that
    /// differs per tensor) at 32-byte aligned offsets.
    fn build(kv: &[(String, Value)], tensors: &[(String, Vec<u64>, u32)]) -> Vec<u8> {
        let mut infos = Vec::new();
        let mut offset = 0u64;
        for (name, dims, ty) in tensors {
            offset = offset.next_multiple_of(32);
            let info = TensorInfo {
                name: name.clone(),
                dims: dims.clone(),
                ggml_type: *ty,
                offset,
            };
            offset += info.byte_size().unwrap();
            infos.push(info);
        }
        let mut out = write_header(3, kv, &infos, 32);
        let base = out.len();
        for (i, t) in infos.iter().enumerate() {
            out.resize(base + t.offset as usize, 0);
            let n = t.byte_size().unwrap() as usize;
            out.extend((0..n).map(|j| (j * 7 + i * 13) as u8));
        }
        out
    }

    fn write_src(dir: &Path, bytes: &[u8]) -> PathBuf {
        let p = dir.join("src.gguf");
        fs::write(&p, bytes).unwrap();
        p
    }

    fn convert(src: &Path, dst: &Path) -> Result<ConvertReport> {
        convert_for_ctransformers(src, dst, &mut |_, _| {})
    }

    fn refused(kv: &[(String, Value)], tensors: &[(String, Vec<u64>, u32)]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let src = write_src(dir.path(), &build(kv, tensors));
        let dst = dir.path().join("out.gguf");
        match convert(&src, &dst) {
            Err(Error::InvalidInput(m)) => {
                assert!(!dst.exists(), "nothing is written for a refused file");
                m
            }
            other => panic!("expected InvalidInput, got {other:?}"),
        }
    }

    fn set(kv: &mut Vec<(String, Value)>, key: &str, v: Value) {
        match kv.iter_mut().find(|(k, _)| k == key) {
            Some(e) => e.1 = v,
            None => kv.push((key.into(), v)),
        }
    }

    #[test]
    fn converts_a_tiny_model() {
        let dir = tempfile::tempdir().unwrap();
        let src_bytes = build(&base_kv(), &base_tensors());
        let src = write_src(dir.path(), &src_bytes);
        let dst = dir.path().join("out.gguf");
        let mut calls = Vec::new();
        let report = convert_for_ctransformers(&src, &dst, &mut |d, t| calls.push((d, t))).unwrap();
        assert!(report.added_scores && report.added_output_weight);
        assert_eq!(report.n_tensors, base_tensors().len() + 1);
        assert_eq!(report.n_kv, base_kv().len() + 1);
        assert_eq!(report.tokens_rewritten, 7); // Ċ, Ġ, Ġa, Ã©, ĠĠ, Ã, ©: not the ASCII ones
        assert_eq!(report.merges_rewritten, 1); // only "Ã ©"
        assert!(report.normalized_keys.is_empty());
        assert_eq!(calls.first(), Some(&(0, report.tensor_bytes)));
        assert_eq!(
            calls.last(),
            Some(&(report.tensor_bytes, report.tensor_bytes))
        );
        assert!(calls.len() <= 103);

        let out = fs::read(&dst).unwrap();
        assert_eq!(out.len() as u64, report.output_bytes);
        assert_eq!(&out[4..8], &2u32.to_le_bytes());
        let meta = GgufMetadata::from_bytes(&out).unwrap();
        assert_eq!(meta.version(), 2);
        let src_meta = GgufMetadata::from_bytes(&src_bytes).unwrap();
        // Every source key is kept, in order, and the unchanged ones have equal values.
        let keys: Vec<&str> = meta.iter().map(|(k, _)| k).collect();
        let mut want: Vec<&str> = src_meta.iter().map(|(k, _)| k).collect();
        want.push(keys::SCORES);
        assert_eq!(keys, want);
        for (k, v) in src_meta.iter() {
            if k != keys::TOKENS && k != keys::MERGES {
                assert_eq!(meta.get(k), Some(v), "{k}");
            }
        }
        let scores = meta.scores().unwrap();
        assert_eq!(scores.len(), TOKENS.len());
        assert_eq!(scores[3], -3.0);
        // Raw tokens: the reader replaces non-UTF-8 with U+FFFD, so compare on valid ones.
        let toks = meta.tokens();
        assert_eq!(toks[0], "<|endoftext|>");
        assert_eq!(toks[3], "\n");
        assert_eq!(toks[4], " ");
        assert_eq!(toks[7], " a");
        assert_eq!(toks[9], "é");
        assert_eq!(toks[10], "  ");
        assert_eq!(toks[12], "\u{FFFD}"); // the lone byte 0xC3
        assert_eq!(
            meta.merges(),
            [
                "\u{0120} a",
                "a b",
                "\u{FFFD} \u{FFFD}",
                "\u{0120} \u{0120}"
            ]
        );
        let raw_merge = [0xc3, b' ', 0xa9];
        assert!(out.windows(3).any(|w| w == raw_merge));

        // Tensor data copied unchanged, aligned; output.weight equals token_embd.weight.
        let data = |m: &GgufMetadata, bytes: &'_ [u8], name: &str| -> Vec<u8> {
            let t = m.tensors().iter().find(|t| t.name == name).unwrap();
            assert_eq!(t.offset % m.alignment(), 0);
            let start = (m.data_offset() + t.offset) as usize;
            bytes[start..start + t.byte_size().unwrap() as usize].to_vec()
        };
        for (name, _, _) in base_tensors() {
            assert_eq!(data(&meta, &out, &name), data(&src_meta, &src_bytes, &name));
        }
        assert_eq!(
            data(&meta, &out, "output.weight"),
            data(&src_meta, &src_bytes, "token_embd.weight")
        );
        assert_eq!(out.len() as u64 % 32, 0);

        // A rerun writes the same bytes, and no temporary files are left behind.
        let dst2 = dir.path().join("again.gguf");
        convert(&src, &dst2).unwrap();
        assert_eq!(fs::read(&dst2).unwrap(), out);
        convert(&src, &dst).unwrap();
        assert_eq!(fs::read(&dst).unwrap(), out);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");

        // Converting the output again changes nothing but keeps it loadable.
        let dst3 = dir.path().join("twice.gguf");
        let r3 = convert(&dst, &dst3).unwrap();
        assert!(!r3.added_scores && !r3.added_output_weight && r3.vocab_already_raw);
        assert!(!report.vocab_already_raw);
        assert_eq!(r3.tokens_rewritten, 0);
        assert_eq!(r3.merges_rewritten, 0);
        assert_eq!(fs::read(&dst3).unwrap(), out);
    }

    #[test]
    fn normalizes_key_types_the_old_loader_reads() {
        let dir = tempfile::tempdir().unwrap();
        let mut kv = base_kv();
        set(&mut kv, "tokenizer.ggml.bos_token_id", Value::I32(1));
        set(&mut kv, "tokenizer.ggml.padding_token_id", Value::I32(-1));
        set(&mut kv, "llama.context_length", Value::U64(256));
        set(&mut kv, "llama.rope.freq_base", Value::F64(500000.0));
        set(
            &mut kv,
            "llama.rope.scaling.type",
            Value::String("linear".into()),
        );
        set(&mut kv, "llama.rope.scaling.factor", Value::F32(4.0));
        set(&mut kv, "general.alignment", Value::U64(32));
        let src = write_src(dir.path(), &build(&kv, &base_tensors()));
        let dst = dir.path().join("out.gguf");
        let report = convert(&src, &dst).unwrap();
        assert_eq!(
            report.normalized_keys,
            [
                "general.alignment",
                "llama.context_length",
                "llama.rope.freq_base",
                "tokenizer.ggml.bos_token_id",
                "tokenizer.ggml.padding_token_id",
            ]
        );
        assert_eq!(
            report.added_keys,
            ["llama.rope.scale_linear", "tokenizer.ggml.scores"]
        );
        let meta = GgufMetadata::from_path(&dst).unwrap();
        assert_eq!(
            meta.get("tokenizer.ggml.bos_token_id"),
            Some(&Value::U32(1))
        );
        assert_eq!(
            meta.get("tokenizer.ggml.padding_token_id"),
            Some(&Value::U32(u32::MAX))
        );
        assert_eq!(meta.get("llama.context_length"), Some(&Value::U32(256)));
        assert_eq!(
            meta.get("llama.rope.freq_base"),
            Some(&Value::F32(500000.0))
        );
        assert_eq!(meta.get("general.alignment"), Some(&Value::U32(32)));
        assert_eq!(meta.get("llama.rope.scale_linear"), Some(&Value::F32(4.0)));
    }

    #[test]
    fn keeps_an_existing_output_weight_and_scores() {
        let dir = tempfile::tempdir().unwrap();
        let mut kv = base_kv();
        let scores: Vec<f32> = (0..TOKENS.len()).map(|i| i as f32 * 0.5).collect();
        set(
            &mut kv,
            keys::SCORES,
            Value::Array(Array::F32(scores.clone())),
        );
        let mut tensors = base_tensors();
        tensors.push(("output.weight".into(), vec![32, TOKENS.len() as u64], 8));
        let src = write_src(dir.path(), &build(&kv, &tensors));
        let dst = dir.path().join("out.gguf");
        let report = convert(&src, &dst).unwrap();
        assert!(!report.added_scores && !report.added_output_weight);
        let meta = GgufMetadata::from_path(&dst).unwrap();
        assert_eq!(meta.scores().unwrap(), scores);
        assert_eq!(meta.tensors().len(), tensors.len());
    }

    #[test]
    fn llama_vocabulary_is_not_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let mut kv = base_kv();
        let mut tokens: Vec<String> = (0..TOKENS.len()).map(|i| format!("\u{2581}t{i}")).collect();
        tokens[3] = "<0x0A>".into();
        set(
            &mut kv,
            "tokenizer.ggml.model",
            Value::String("llama".into()),
        );
        set(
            &mut kv,
            keys::TOKENS,
            Value::Array(Array::String(tokens.clone())),
        );
        kv.retain(|(k, _)| k != keys::MERGES);
        let src = write_src(dir.path(), &build(&kv, &base_tensors()));
        let dst = dir.path().join("out.gguf");
        let report = convert(&src, &dst).unwrap();
        assert_eq!(report.tokenizer_model, "llama");
        assert_eq!(report.tokens_rewritten, 0);
        assert_eq!(GgufMetadata::from_path(&dst).unwrap().tokens(), tokens);

        tokens[3] = "x".into();
        set(&mut kv, keys::TOKENS, Value::Array(Array::String(tokens)));
        let m = refused(&kv, &base_tensors());
        assert!(m.contains("'<0x0A>'"), "{m}");
    }

    #[test]
    fn refuses_what_the_old_loader_cannot_take() {
        let tensors = base_tensors();

        let mut kv = base_kv();
        set(
            &mut kv,
            "general.architecture",
            Value::String("qwen2".into()),
        );
        let m = refused(&kv, &tensors);
        assert!(m.contains("architecture 'qwen2' is not supported"), "{m}");
        assert!(
            m.contains("src.gguf cannot be converted for ctransformers"),
            "{m}"
        );

        let mut kv = base_kv();
        set(
            &mut kv,
            "tokenizer.ggml.model",
            Value::String("bert".into()),
        );
        let m = refused(&kv, &tensors);
        assert!(m.contains("tokenizer 'bert' is not supported"), "{m}");

        // Newer tensor types: BF16 (30), and Q8_1 (9), which had no weight kernels.
        let mut t = tensors.clone();
        t[2].2 = 30;
        t[3].2 = 9;
        let m = refused(&base_kv(), &t);
        assert!(m.contains("BF16 (ggml type 30)"), "{m}");
        assert!(m.contains("Q8_1 (ggml type 9)"), "{m}");
        assert!(m.contains(&t[2].0), "{m}");

        let mut t = tensors.clone();
        t.retain(|(n, _, _)| n != "blk.1.ffn_up.weight");
        let m = refused(&base_kv(), &t);
        assert!(
            m.contains("required tensors are missing: blk.1.ffn_up.weight"),
            "{m}"
        );

        let mut t = tensors.clone();
        t.push(("rope_freqs.weight".into(), vec![4], 0));
        let m = refused(&base_kv(), &t);
        assert!(m.contains("rope_freqs.weight (Llama 3.1"), "{m}");

        let mut t = tensors.clone();
        t[1].2 = 1; // output_norm as F16
        let m = refused(&base_kv(), &t);
        assert!(m.contains("norm weights must be F32"), "{m}");

        let mut t = tensors.clone();
        t[3].1 = vec![32, 16]; // attn_q with the k/v shape
        let m = refused(&base_kv(), &t);
        assert!(
            m.contains("'blk.0.attn_q.weight' is [32, 16], expected [32, 32]"),
            "{m}"
        );

        let mut kv = base_kv();
        set(&mut kv, "llama.rope.dimension_count", Value::U32(4));
        let m = refused(&kv, &tensors);
        assert!(m.contains("rope dimension count 4"), "{m}");

        let mut kv = base_kv();
        set(&mut kv, "llama.attention.head_count_kv", Value::U32(3));
        let m = refused(&kv, &tensors);
        assert!(m.contains("attention head counts 4 (query) and 3"), "{m}");

        let mut kv = base_kv();
        kv.retain(|(k, _)| k != "llama.attention.layer_norm_rms_epsilon");
        let m = refused(&kv, &tensors);
        assert!(
            m.contains("key 'llama.attention.layer_norm_rms_epsilon' is missing"),
            "{m}"
        );

        let mut kv = base_kv();
        set(
            &mut kv,
            "llama.feed_forward_length",
            Value::String("64".into()),
        );
        let m = refused(&kv, &tensors);
        assert!(
            m.contains("'llama.feed_forward_length' should be an unsigned 32-bit"),
            "{m}"
        );

        let mut kv = base_kv();
        set(
            &mut kv,
            "llama.rope.scaling.type",
            Value::String("yarn".into()),
        );
        let m = refused(&kv, &tensors);
        assert!(m.contains("rope scaling 'yarn' is not supported"), "{m}");

        let mut kv = base_kv();
        set(&mut kv, "llama.expert_count", Value::U32(8));
        let m = refused(&kv, &tensors);
        assert!(m.contains("mixture-of-experts"), "{m}");

        let mut kv = base_kv();
        set(&mut kv, "tokenizer.ggml.eos_token_id", Value::U32(500));
        let m = refused(&kv, &tensors);
        assert!(
            m.contains("'tokenizer.ggml.eos_token_id' is 500, but the vocabulary has 14"),
            "{m}"
        );

        let mut kv = base_kv();
        set(
            &mut kv,
            "misc.nested",
            Value::Array(Array::Array(vec![Array::U8(vec![1])])),
        );
        let m = refused(&kv, &tensors);
        assert!(m.contains("'misc.nested' holds an array of arrays"), "{m}");

        // No newline token: the old loader would crash at load time.
        let mut kv = base_kv();
        let mut toks = TOKENS.to_vec();
        toks[3] = "x";
        set(&mut kv, keys::TOKENS, strs(&toks));
        let m = refused(&kv, &tensors);
        assert!(m.contains("no newline token"), "{m}");

        let mut kv = base_kv();
        kv.retain(|(k, _)| k != keys::MERGES);
        let m = refused(&kv, &tensors);
        assert!(m.contains("'tokenizer.ggml.merges' is missing"), "{m}");

        // Several problems are all named.
        let mut kv = base_kv();
        set(&mut kv, "llama.expert_count", Value::U32(8));
        let mut t = tensors.clone();
        t[2].2 = 30;
        let m = refused(&kv, &t);
        assert!(
            m.contains("mixture-of-experts") && m.contains("BF16"),
            "{m}"
        );
    }

    #[test]
    fn refuses_files_that_are_not_whole_ggufs() {
        let dir = tempfile::tempdir().unwrap();
        let dst = dir.path().join("out.gguf");
        let good = build(&base_kv(), &base_tensors());
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("empty.gguf", vec![], "empty"),
            (
                "text.gguf",
                b"hello, this is not a model".to_vec(),
                "not a GGUF file",
            ),
            ("head.gguf", good[..100].to_vec(), "cannot fit"),
            ("data.gguf", good[..good.len() - 10].to_vec(), "truncated"),
        ];
        for (name, bytes, want) in cases {
            let p = dir.path().join(name);
            fs::write(&p, bytes).unwrap();
            match convert(&p, &dst) {
                Err(Error::InvalidInput(m)) => {
                    assert!(m.contains(want) && m.contains(name), "{name}: {m}")
                }
                other => panic!("{name}: {other:?}"),
            }
        }
        match convert(&dir.path().join("missing.gguf"), &dst) {
            Err(Error::InvalidInput(m)) => assert!(m.contains("not found"), "{m}"),
            other => panic!("{other:?}"),
        }
        match convert(dir.path(), &dst) {
            Err(Error::InvalidInput(m)) => assert!(m.contains("directory"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(!dst.exists());
    }

    #[test]
    fn cancelling_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let src = write_src(dir.path(), &build(&base_kv(), &base_tensors()));
        let dst = dir.path().join("out.gguf");
        let r = convert_for_ctransformers_cancellable(&src, &dst, &mut |d, _| d == 0);
        assert!(matches!(r, Err(Error::StateConflict(_))), "{r:?}");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn converts_the_default_model() {
        let Some(src) = test_model_path() else {
            eprintln!("skipped: the default model is not installed");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let dst = dir.path().join("model-ct.gguf");
        let report = convert(&src, &dst).unwrap();
        assert_eq!(report.tokenizer_model, "gpt2");
        assert_eq!(report.n_vocab, 49152);
        assert!(report.added_scores && report.added_output_weight);
        assert!(report.tokens_rewritten > 10_000);
        assert!(report.normalized_keys.is_empty());
        let meta = GgufMetadata::from_path(&dst).unwrap();
        let src_meta = GgufMetadata::from_path(&src).unwrap();
        assert_eq!(meta.tensors().len(), src_meta.tensors().len() + 1);
        assert!(meta.tokens().iter().any(|t| t == "\n"));
        assert!(meta.tokens().iter().any(|t| t == " the"));
        assert_eq!(meta.merges()[0], "\u{0120} t");
        let dst2 = dir.path().join("again.gguf");
        convert(&src, &dst2).unwrap();
        assert!(fs::read(&dst).unwrap() == fs::read(&dst2).unwrap());
    }
}
