//! GGUF model files: the header, the metadata key/values and the tensor table, read through a
//! memory map without touching the tensor data.
//!
//! The reader is hand-written rather than taken from an ML framework crate: the format is small,
//! and owning the parser lets every length be checked against the file before anything is
//! allocated (see `reader.rs`). `writer.rs` produces the same layout, for tests and for the
//! model converter.

pub mod convert;
mod reader;
mod tensor;
mod value;
pub mod writer;

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use crate::error::{Error, Result};
use reader::format_err;
pub use tensor::{ggml_type_info, TensorInfo, GGML_MAX_DIMS};
pub use value::{Array, Value, ValueType};

/// Data alignment when the file does not set `general.alignment`.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// Well-known metadata keys.
pub mod keys {
    /// The model architecture (`llama`, `qwen2`...); prefixes the architecture's own keys.
    pub const ARCHITECTURE: &str = "general.architecture";
    /// Alignment of the tensor data section.
    pub const ALIGNMENT: &str = "general.alignment";
    /// The Jinja chat template.
    pub const CHAT_TEMPLATE: &str = "tokenizer.chat_template";
    /// The vocabulary kind: `gpt2` (byte-level BPE), `llama` (SentencePiece)...
    pub const TOKENIZER_MODEL: &str = "tokenizer.ggml.model";
    /// The pre-tokenizer name llama.cpp uses to pick its split regexes.
    pub const TOKENIZER_PRE: &str = "tokenizer.ggml.pre";
    /// Token texts, by id.
    pub const TOKENS: &str = "tokenizer.ggml.tokens";
    /// Token scores (SentencePiece), by id.
    pub const SCORES: &str = "tokenizer.ggml.scores";
    /// Token types (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte), by id.
    pub const TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
    /// BPE merges, `"left right"`, highest priority first.
    pub const MERGES: &str = "tokenizer.ggml.merges";
    /// Beginning-of-sequence token id.
    pub const BOS_ID: &str = "tokenizer.ggml.bos_token_id";
    /// End-of-sequence token id.
    pub const EOS_ID: &str = "tokenizer.ggml.eos_token_id";
    /// End-of-turn token id.
    pub const EOT_ID: &str = "tokenizer.ggml.eot_token_id";
    /// End-of-message token id.
    pub const EOM_ID: &str = "tokenizer.ggml.eom_token_id";
    /// Unknown-token id.
    pub const UNKNOWN_ID: &str = "tokenizer.ggml.unknown_token_id";
    /// Padding token id.
    pub const PADDING_ID: &str = "tokenizer.ggml.padding_token_id";
    /// Whether to prepend BOS when encoding with special tokens.
    pub const ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
    /// Whether to append EOS when encoding with special tokens.
    pub const ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
    /// Whether SentencePiece prepends a space to the text.
    pub const ADD_SPACE_PREFIX: &str = "tokenizer.ggml.add_space_prefix";
}

/// Everything in a GGUF file except the tensor data.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufMetadata {
    version: u32,
    kv: Vec<(String, Value)>,
    index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    alignment: u64,
    data_offset: u64,
    file_size: u64,
}

impl GgufMetadata {
    /// Reads the metadata of the GGUF file at `path` through a read-only memory map.
    ///
    /// A missing or unreadable path is `InvalidInput`/`Storage`; anything wrong with the contents
    /// (truncation, bad counts, wrong types on well-known keys) is `Format`.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                Error::InvalidInput(format!("model file not found: {}", path.display()))
            }
            _ => Error::Storage(format!("cannot open model file {}: {e}", path.display())),
        })?;
        let meta = file.metadata()?;
        if meta.is_dir() {
            return Err(Error::InvalidInput(format!(
                "{} is a directory, not a GGUF file",
                path.display()
            )));
        }
        if meta.len() == 0 {
            return Err(format_err(format!("{} is empty", path.display())));
        }
        // SAFETY: the map is read-only and lives only for this call; everything we keep is copied
        // out of it. Like every mmap-based model loader (llama.cpp included), we rely on the file
        // not being truncated by another process while we read it.
        let map = unsafe { memmap2::Mmap::map(&file) }
            .map_err(|e| Error::Storage(format!("cannot map {}: {e}", path.display())))?;
        Self::from_bytes(&map).map_err(|e| match e {
            Error::Model(m) => Error::Model(format!("{m} (in {})", path.display())),
            other => other,
        })
    }

    /// Parses a GGUF image held in memory (the whole file, or at least its header when the
    /// tensor table is empty).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let parsed = reader::parse(bytes)?;
        let index = parsed
            .kv
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (k.clone(), i))
            .collect();
        let mut out = GgufMetadata {
            version: parsed.version,
            kv: parsed.kv,
            index,
            tensors: parsed.tensors,
            alignment: DEFAULT_ALIGNMENT,
            data_offset: 0,
            file_size: bytes.len() as u64,
        };
        out.alignment = match out.get(keys::ALIGNMENT) {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a.is_power_of_two() => a,
                _ => return Err(format_err(format!("invalid {}: {v:?}", keys::ALIGNMENT))),
            },
        };
        out.data_offset = parsed
            .header_end
            .checked_next_multiple_of(out.alignment)
            .ok_or_else(|| format_err("data offset overflows"))?;
        out.validate()?;
        Ok(out)
    }

    /// Checks the types of the well-known keys and the tensor table, so the accessors below can
    /// return plain slices and never have to report an error.
    fn validate(&self) -> Result<()> {
        self.validate_key_types()?;
        // The accessors used here rely on the key types just checked.
        self.validate_vocab_lengths()?;
        self.validate_tensors()
    }

    /// Fails when `key` is present with a value that `ok` refuses; `want` names what it takes.
    fn expect_key(&self, key: &str, ok: fn(&Value) -> bool, want: &str) -> Result<()> {
        match self.get(key) {
            Some(v) if !ok(v) => Err(format_err(format!(
                "key '{key}' should be {want}, found {:?}",
                v.value_type()
            ))),
            _ => Ok(()),
        }
    }

    /// The well-known keys, each of the type its accessor returns.
    fn validate_key_types(&self) -> Result<()> {
        let is_str = |v: &Value| v.as_str().is_some();
        let is_int = |v: &Value| v.as_i64().is_some();
        let is_bool = |v: &Value| v.as_bool().is_some();
        let is_strs = |v: &Value| v.as_array().and_then(Array::as_strings).is_some();
        self.expect_key(keys::ARCHITECTURE, is_str, "a string")?;
        self.expect_key(keys::CHAT_TEMPLATE, is_str, "a string")?;
        self.expect_key(keys::TOKENIZER_MODEL, is_str, "a string")?;
        self.expect_key(keys::TOKENIZER_PRE, is_str, "a string")?;
        self.expect_key(keys::TOKENS, is_strs, "an array of strings")?;
        self.expect_key(keys::MERGES, is_strs, "an array of strings")?;
        self.expect_key(
            keys::SCORES,
            |v| v.as_array().and_then(Array::as_f32).is_some(),
            "an array of f32",
        )?;
        self.expect_key(
            keys::TOKEN_TYPE,
            |v| v.as_array().and_then(Array::as_i32).is_some(),
            "an array of i32",
        )?;
        for key in [
            keys::BOS_ID,
            keys::EOS_ID,
            keys::EOT_ID,
            keys::EOM_ID,
            keys::UNKNOWN_ID,
            keys::PADDING_ID,
        ] {
            self.expect_key(key, is_int, "an integer")?;
        }
        for key in [keys::ADD_BOS, keys::ADD_EOS, keys::ADD_SPACE_PREFIX] {
            self.expect_key(key, is_bool, "a boolean")?;
        }
        if let Some(arch) = self.architecture() {
            self.expect_key(&format!("{arch}.context_length"), is_int, "an integer")?;
        }
        Ok(())
    }

    /// The per-token arrays, one entry per token, so a token id indexes each of them.
    fn validate_vocab_lengths(&self) -> Result<()> {
        let n_tokens = self.tokens().len();
        for (key, len) in [
            (keys::SCORES, self.scores().map(<[f32]>::len)),
            (keys::TOKEN_TYPE, self.token_types().map(<[i32]>::len)),
        ] {
            if let Some(len) = len {
                if len != n_tokens {
                    return Err(format_err(format!(
                        "'{key}' has {len} entries but there are {n_tokens} tokens"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Each tensor's data aligned and inside the file, so a tensor can be sliced from the map
    /// without further checks.
    fn validate_tensors(&self) -> Result<()> {
        for t in &self.tensors {
            if t.offset % self.alignment != 0 {
                return Err(format_err(format!(
                    "tensor '{}' data offset {} is not a multiple of the alignment {}",
                    t.name, t.offset, self.alignment
                )));
            }
            // A tensor of an unknown type has no known size; only its offset can be checked.
            if let Some(size) = t.byte_size() {
                let end = self
                    .data_offset
                    .checked_add(t.offset)
                    .and_then(|s| s.checked_add(size));
                let fits = matches!(end, Some(end) if end <= self.file_size);
                if !fits {
                    return Err(format_err(format!(
                        "file truncated: tensor '{}' needs bytes up to {} but the file has {}",
                        t.name,
                        end.map_or_else(|| "overflow".to_owned(), |e| e.to_string()),
                        self.file_size
                    )));
                }
            }
        }
        Ok(())
    }

    /// The GGUF format version (1 to 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The value of a key, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.kv[i].1)
    }

    /// All key/values in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.kv.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of key/values.
    pub fn len(&self) -> usize {
        self.kv.len()
    }

    /// Whether the file has no key/values at all.
    pub fn is_empty(&self) -> bool {
        self.kv.is_empty()
    }

    fn str_key(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    fn id_key(&self, key: &str) -> Option<u32> {
        self.get(key)
            .and_then(Value::as_u64)
            .and_then(|v| u32::try_from(v).ok())
    }

    fn strings_key(&self, key: &str) -> &[String] {
        self.get(key)
            .and_then(Value::as_array)
            .and_then(Array::as_strings)
            .unwrap_or(&[])
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Option<&str> {
        self.str_key(keys::ARCHITECTURE)
    }

    /// `{architecture}.context_length`: the context the model was trained for.
    pub fn context_length(&self) -> Option<u64> {
        let arch = self.architecture()?;
        self.get(&format!("{arch}.context_length"))
            .and_then(Value::as_u64)
    }

    /// `tokenizer.chat_template`.
    pub fn chat_template(&self) -> Option<&str> {
        self.str_key(keys::CHAT_TEMPLATE)
    }

    /// `tokenizer.ggml.model`: `gpt2`, `llama`...
    pub fn tokenizer_model(&self) -> Option<&str> {
        self.str_key(keys::TOKENIZER_MODEL)
    }

    /// `tokenizer.ggml.pre`: the pre-tokenizer name (`smollm`, `llama-bpe`, `qwen2`...).
    pub fn tokenizer_pre(&self) -> Option<&str> {
        self.str_key(keys::TOKENIZER_PRE)
    }

    /// `tokenizer.ggml.tokens` (empty when absent).
    pub fn tokens(&self) -> &[String] {
        self.strings_key(keys::TOKENS)
    }

    /// `tokenizer.ggml.scores`, one per token, when present.
    pub fn scores(&self) -> Option<&[f32]> {
        self.get(keys::SCORES)
            .and_then(Value::as_array)
            .and_then(Array::as_f32)
    }

    /// `tokenizer.ggml.token_type`, one per token, when present.
    pub fn token_types(&self) -> Option<&[i32]> {
        self.get(keys::TOKEN_TYPE)
            .and_then(Value::as_array)
            .and_then(Array::as_i32)
    }

    /// `tokenizer.ggml.merges` (empty when absent).
    pub fn merges(&self) -> &[String] {
        self.strings_key(keys::MERGES)
    }

    /// `tokenizer.ggml.bos_token_id` (absent, negative or too large: `None`).
    pub fn bos_token_id(&self) -> Option<u32> {
        self.id_key(keys::BOS_ID)
    }

    /// `tokenizer.ggml.eos_token_id`.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.id_key(keys::EOS_ID)
    }

    /// `tokenizer.ggml.eot_token_id`.
    pub fn eot_token_id(&self) -> Option<u32> {
        self.id_key(keys::EOT_ID)
    }

    /// `tokenizer.ggml.eom_token_id`.
    pub fn eom_token_id(&self) -> Option<u32> {
        self.id_key(keys::EOM_ID)
    }

    /// `tokenizer.ggml.unknown_token_id`.
    pub fn unknown_token_id(&self) -> Option<u32> {
        self.id_key(keys::UNKNOWN_ID)
    }

    /// `tokenizer.ggml.padding_token_id`.
    pub fn padding_token_id(&self) -> Option<u32> {
        self.id_key(keys::PADDING_ID)
    }

    /// `tokenizer.ggml.add_bos_token`, when the file says.
    pub fn add_bos_token(&self) -> Option<bool> {
        self.get(keys::ADD_BOS).and_then(Value::as_bool)
    }

    /// `tokenizer.ggml.add_eos_token`, when the file says.
    pub fn add_eos_token(&self) -> Option<bool> {
        self.get(keys::ADD_EOS).and_then(Value::as_bool)
    }

    /// `tokenizer.ggml.add_space_prefix`, when the file says.
    pub fn add_space_prefix(&self) -> Option<bool> {
        self.get(keys::ADD_SPACE_PREFIX).and_then(Value::as_bool)
    }

    /// The tensor table, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// Alignment of the data section (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute file offset where the tensor data section starts.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Size of the file (or byte image) the metadata was read from.
    pub fn file_size(&self) -> u64 {
        self.file_size
    }
}

#[cfg(test)]
pub(crate) mod tests;
