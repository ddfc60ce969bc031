//! The BPE pre-tokenizers: for each `tokenizer.ggml.pre` name, the sequence of split regexes
//! llama.cpp applies (`llm_tokenizer_bpe` in llama-vocab.cpp). Each regex splits every piece the
//! previous one produced into matches and the text between them, exactly like a Hugging Face
//! `Split(pattern, behavior="isolated")`.

use crate::error::{Error, Result};

/// GPT-2's split regex (without the trailing `\s+` alternative: text it would match becomes its
/// own piece anyway, because the split keeps unmatched text).
pub(crate) const GPT2: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// Llama 3's regex with the case-insensitive contractions spelled out, as llama.cpp writes it.
pub(crate) const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen 2: Llama 3's regex with single digits.
pub(crate) const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// How one `pre` value tokenizes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PreInfo {
    /// Split regexes, applied in order.
    pub regexes: &'static [&'static str],
    /// Skip merges for pre-tokens that are whole vocabulary entries.
    pub ignore_merges: bool,
    /// The default for `add_bos_token` when the file does not say.
    pub add_bos: bool,
    /// The default BOS id is dropped (chatglm).
    pub no_bos: bool,
}

const fn info(regexes: &'static [&'static str]) -> PreInfo {
    PreInfo {
        regexes,
        ignore_merges: false,
        add_bos: false,
        no_bos: false,
    }
}

/// The pre-tokenizer names this code implements (for error messages and docs).
pub const SUPPORTED_PRE: &[&str] = &[
    "default",
    "smollm",
    "starcoder",
    "refact",
    "command-r",
    "codeshell",
    "exaone",
    "minerva-7b",
    "mellum2",
    "gpt-2",
    "phi-2",
    "jina-es",
    "jina-de",
    "gigachat",
    "jina-v2-es",
    "jina-v2-de",
    "a.x-4.0",
    "mellum",
    "modern-bert",
    "jina-v1-en",
    "jina-v2-code",
    "roberta-bpe",
    "exaone4",
    "mpt",
    "olmo",
    "jais",
    "trillion",
    "granite-docling",
    "llama3",
    "llama-v3",
    "llama-bpe",
    "falcon3",
    "falcon-h1",
    "pixtral",
    "midm-2.0",
    "lfm2",
    "jina-v5-nano",
    "dbrx",
    "smaug-bpe",
    "chatglm-bpe",
    "glm4",
    "glm5",
    "qwen2",
    "deepseek-r1-qwen",
    "kormo",
    "f2llmv2",
    "megrez",
    "stablelm2",
    "hunyuan",
    "solar-open",
];

/// The pre-tokenizer for a `tokenizer.ggml.pre` value; an empty value means llama.cpp's default.
pub(crate) fn lookup(pre: &str) -> Result<PreInfo> {
    const DEFAULT: &[&str] = &[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"];
    Ok(match pre {
        "" | "default" => info(DEFAULT),
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b"
        | "mellum2" => info(&[r"\p{N}", GPT2]),
        "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de"
        | "a.x-4.0" | "mellum" | "modern-bert" | "jina-v1-en" | "jina-v2-code" | "roberta-bpe"
        | "exaone4" | "mpt" | "olmo" | "jais" | "trillion" | "granite-docling" => info(&[GPT2]),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" => PreInfo {
            ignore_merges: true,
            add_bos: true,
            ..info(&[LLAMA3])
        },
        "dbrx" | "smaug-bpe" => info(&[LLAMA3]),
        "chatglm-bpe" => PreInfo {
            no_bos: true,
            ..info(&[LLAMA3])
        },
        "glm4" | "glm5" => PreInfo {
            no_bos: true,
            ignore_merges: true,
            ..info(&[LLAMA3])
        },
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" | "stablelm2" | "hunyuan"
        | "solar-open" => info(&[QWEN2]),
        other => {
            return Err(Error::Model(format!(
                "unsupported pre-tokenizer '{other}' (tokenizer.ggml.pre); supported: {}",
                SUPPORTED_PRE.join(", ")
            )))
        }
    })
}
