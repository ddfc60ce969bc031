//! `threadloom._core.Tokenizer`, `PromptEngine` and `Assembly`.

use std::path::PathBuf;
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyString};

use crate::error::Error;
use crate::prompt::{self, AssembleOptions, Strategy};
use crate::py::records::Turn;
use crate::py::rules::{anchor_from, new_turns};
use crate::py::store::Store;
use crate::store::{Anchor, NewTurn};
use crate::tokens;

/// Text given as `str`, `bytes`, `bytearray` or `memoryview` (UTF-8), copied once into Rust.
fn owned_text(value: &Bound<'_, PyAny>) -> PyResult<String> {
    if let Ok(s) = value.cast::<PyString>() {
        return Ok(s.to_str()?.to_owned());
    }
    let bytes: Vec<u8> = if let Ok(b) = value.cast::<PyBytes>() {
        b.as_bytes().to_vec()
    } else if let Ok(b) = value.cast::<PyByteArray>() {
        b.to_vec()
    } else {
        value
            .call_method0("tobytes")
            .ok()
            .and_then(|b| b.cast::<PyBytes>().ok().map(|b| b.as_bytes().to_vec()))
            .ok_or_else(|| Error::InvalidInput("text must be str, bytes or memoryview".into()))?
    };
    String::from_utf8(bytes)
        .map_err(|_| Error::InvalidInput("text is not valid UTF-8".into()).into())
}

fn owned_texts(values: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    values.try_iter()?.map(|v| owned_text(&v?)).collect()
}

/// A model's tokenizer, built from its GGUF vocabulary; matches llama.cpp's token ids.
#[pyclass(frozen, module = "threadloom._core")]
pub struct Tokenizer {
    pub(crate) inner: Arc<tokens::Tokenizer>,
}

#[pymethods]
impl Tokenizer {
    /// Builds the tokenizer of the GGUF model at `path`.
    #[staticmethod]
    #[pyo3(signature = (path))]
    fn from_gguf(py: Python<'_>, path: PathBuf) -> PyResult<Tokenizer> {
        let inner = py.detach(|| tokens::Tokenizer::from_gguf(&path))?;
        Ok(Tokenizer {
            inner: Arc::new(inner),
        })
    }

    /// Token ids of `text`; special-token text such as `<|im_start|>` becomes one id. With
    /// `add_special`, BOS/EOS are added as the model says. With `parse_special=False`, control
    /// tokens written in the text stay text (llama.cpp's `parse_special`): for untrusted text.
    #[pyo3(signature = (text, *, add_special=false, parse_special=true))]
    fn encode(
        &self,
        py: Python<'_>,
        text: &Bound<'_, PyAny>,
        add_special: bool,
        parse_special: bool,
    ) -> PyResult<Vec<u32>> {
        let text = owned_text(text)?;
        Ok(py.detach(|| {
            if parse_special {
                self.inner.encode(&text, add_special)
            } else {
                self.inner.encode_plain(&text, add_special)
            }
        })?)
    }

    /// The text of `ids`.
    #[pyo3(signature = (ids))]
    fn decode(&self, py: Python<'_>, ids: Vec<u32>) -> PyResult<String> {
        Ok(py.detach(|| self.inner.decode(&ids))?)
    }

    /// The number of tokens `encode` would return.
    #[pyo3(signature = (text, *, add_special=false, parse_special=true))]
    fn count(
        &self,
        py: Python<'_>,
        text: &Bound<'_, PyAny>,
        add_special: bool,
        parse_special: bool,
    ) -> PyResult<usize> {
        let text = owned_text(text)?;
        Ok(py.detach(|| {
            if parse_special {
                self.inner.count(&text, add_special)
            } else {
                self.inner.count_plain(&text, add_special)
            }
        })?)
    }

    /// `encode` for many texts, in parallel with the GIL released.
    #[pyo3(signature = (texts, *, add_special=false))]
    fn encode_batch(
        &self,
        py: Python<'_>,
        texts: &Bound<'_, PyAny>,
        add_special: bool,
    ) -> PyResult<Vec<Vec<u32>>> {
        let texts = owned_texts(texts)?;
        Ok(py.detach(|| {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            self.inner.encode_batch(&refs, add_special)
        })?)
    }

    /// `count` for many texts, in parallel with the GIL released.
    #[pyo3(signature = (texts, *, add_special=false))]
    fn count_batch(
        &self,
        py: Python<'_>,
        texts: &Bound<'_, PyAny>,
        add_special: bool,
    ) -> PyResult<Vec<usize>> {
        let texts = owned_texts(texts)?;
        Ok(py.detach(|| {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            self.inner.count_batch(&refs, add_special)
        })?)
    }

    /// The number of tokens in the vocabulary.
    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }

    /// A stable hash of the vocabulary: the key of cached token counts.
    #[getter]
    fn fingerprint(&self) -> u64 {
        self.inner.fingerprint()
    }

    /// The beginning-of-sequence token id, if the model has one.
    #[getter]
    fn bos_id(&self) -> Option<u32> {
        self.inner.bos_id()
    }

    /// The end-of-sequence token id, if the model has one.
    #[getter]
    fn eos_id(&self) -> Option<u32> {
        self.inner.eos_id()
    }

    /// Every token id that ends generation (EOS, EOT and kin).
    #[getter]
    fn eog_ids(&self) -> Vec<u32> {
        self.inner.eog_ids().to_vec()
    }

    /// The raw bytes of one token id (a piece of UTF-8 that may end mid-character), or None
    /// when out of range; for streaming detokenization.
    #[pyo3(signature = (id))]
    fn piece<'py>(&self, py: Python<'py>, id: u32) -> Option<Bound<'py, PyBytes>> {
        self.inner.piece(id).map(|b| PyBytes::new(py, b))
    }

    /// The text of one token id, or None when out of range.
    #[pyo3(signature = (id))]
    fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id).map(str::to_owned)
    }
}

/// A prompt ready for the model, and what trimming did to get it.
#[pyclass(frozen, module = "threadloom._core")]
pub struct Assembly {
    /// The rendered prompt text.
    #[pyo3(get)]
    prompt: String,
    /// Its token ids.
    #[pyo3(get)]
    ids: Vec<u32>,
    /// Tokens in the prompt.
    #[pyo3(get)]
    prompt_tokens: usize,
    /// Tokens reserved for the output.
    #[pyo3(get)]
    max_tokens: usize,
    /// The model's context size.
    #[pyo3(get)]
    context_length: usize,
    /// Messages in the conversation before trimming (history plus inputs).
    #[pyo3(get)]
    messages_total: usize,
    /// Messages kept in the prompt.
    #[pyo3(get)]
    messages_kept: usize,
    /// Messages trimming dropped.
    #[pyo3(get)]
    messages_dropped: usize,
    /// Leading tokens identical to the previous prompt of the same conversation.
    #[pyo3(get)]
    shared_prefix_tokens: usize,
    /// The newest dropped stored turn's id, when trimming dropped stored turns.
    #[pyo3(get)]
    cut_after: Option<String>,
}

impl From<prompt::Assembly> for Assembly {
    fn from(a: prompt::Assembly) -> Self {
        Assembly {
            prompt: a.prompt,
            ids: a.ids,
            prompt_tokens: a.report.prompt_tokens,
            max_tokens: a.report.max_tokens,
            context_length: a.report.context_length,
            messages_total: a.report.messages_total,
            messages_kept: a.report.messages_kept,
            messages_dropped: a.report.messages_dropped,
            shared_prefix_tokens: a.report.shared_prefix_tokens,
            cut_after: a.report.cut_after,
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn options(
    strategy: &str,
    window: Option<usize>,
    budget: Option<usize>,
    max_tokens: usize,
    add_generation_prompt: bool,
    enable_thinking: Option<bool>,
    tools: Option<&str>,
    cache_key: Option<String>,
) -> PyResult<AssembleOptions> {
    let strategy = match (strategy, window) {
        ("none", None) => Strategy::None,
        ("window", Some(n)) if n > 0 => Strategy::Window(n),
        ("window", _) => {
            return Err(
                Error::InvalidInput("strategy 'window' needs window=N (N >= 1)".into()).into(),
            )
        }
        ("tokens", None) => Strategy::Tokens(budget),
        (_, Some(_)) => {
            return Err(
                Error::InvalidInput("window=N applies only to strategy 'window'".into()).into(),
            )
        }
        (other, None) => {
            return Err(Error::InvalidInput(format!(
                "unknown trimming strategy {other:?}: expected none, window or tokens"
            ))
            .into())
        }
    };
    let tools = tools
        .map(|t| {
            serde_json::from_str(t)
                .map_err(|e| Error::InvalidInput(format!("tools is not valid JSON: {e}")))
        })
        .transpose()?;
    Ok(AssembleOptions {
        strategy,
        max_tokens,
        add_generation_prompt,
        enable_thinking,
        tools,
        cache_key,
    })
}

/// A model's chat template, tokenizer and context size: turns conversations into prompts.
#[pyclass(frozen, module = "threadloom._core")]
pub struct PromptEngine {
    inner: Arc<prompt::PromptEngine>,
}

#[pymethods]
impl PromptEngine {
    /// Reads the chat template, vocabulary and context length from a GGUF file. A smaller
    /// `context_length` (what the backend was loaded with) caps the model's own;
    /// `chat_template` (a template's source) replaces the file's own.
    #[staticmethod]
    #[pyo3(signature = (path, *, context_length=None, chat_template=None))]
    fn from_gguf(
        py: Python<'_>,
        path: PathBuf,
        context_length: Option<usize>,
        chat_template: Option<String>,
    ) -> PyResult<PromptEngine> {
        let mut inner =
            py.detach(|| prompt::PromptEngine::from_gguf(&path, chat_template.as_deref()))?;
        if let Some(n) = context_length {
            inner.limit_context(n);
        }
        Ok(PromptEngine {
            inner: Arc::new(inner),
        })
    }

    /// The model's context size in tokens.
    #[getter]
    fn context_length(&self) -> usize {
        self.inner.context_length()
    }

    /// True when the model has no chat template and ChatML is used.
    #[getter]
    fn template_is_fallback(&self) -> bool {
        self.inner.template_is_fallback()
    }

    /// The model's tokenizer.
    #[getter]
    fn tokenizer(&self) -> Tokenizer {
        Tokenizer {
            inner: Arc::clone(self.inner.tokenizer()),
        }
    }

    /// Assembles the stored conversation ending at a thread's head, a response or a turn (or
    /// none, for a new conversation), followed by `inputs`; renders, tokenizes and trims it.
    /// Strategies: "none" (raise ContextLengthExceeded when it does not fit), "window" (keep
    /// the last `window` messages), "tokens" (keep the newest messages that fit `budget`, by
    /// default the context minus `max_tokens`). System messages are always kept.
    #[pyo3(signature = (store, inputs, *, owner="default", thread=None, response=None, turn=None, strategy="tokens", window=None, budget=None, max_tokens=256, add_generation_prompt=true, enable_thinking=None, tools=None, cache_key=None))]
    #[allow(clippy::too_many_arguments)]
    fn assemble(
        &self,
        py: Python<'_>,
        store: &Store,
        inputs: &Bound<'_, PyAny>,
        owner: &str,
        thread: Option<String>,
        response: Option<String>,
        turn: Option<String>,
        strategy: &str,
        window: Option<usize>,
        budget: Option<usize>,
        max_tokens: usize,
        add_generation_prompt: bool,
        enable_thinking: Option<bool>,
        tools: Option<&str>,
        cache_key: Option<String>,
    ) -> PyResult<Assembly> {
        let inputs = new_turns(inputs)?;
        let anchor: Anchor = anchor_from(thread, response, turn)?;
        let opts = options(
            strategy,
            window,
            budget,
            max_tokens,
            add_generation_prompt,
            enable_thinking,
            tools,
            cache_key,
        )?;
        let store = Arc::clone(&store.inner);
        let out = py.detach(|| self.inner.assemble(&store, owner, &anchor, &inputs, &opts))?;
        Ok(out.into())
    }

    /// Assembles a history another store read (its `Turn`s, oldest first) followed by
    /// `inputs`, exactly as `assemble` does for a conversation stored in LMDB: the same
    /// prefix-cache key (the root turn's id unless `cache_key` is given), and the inputs are
    /// never trimmed.
    #[pyo3(signature = (history, inputs, *, owner="default", strategy="tokens", window=None, budget=None, max_tokens=256, add_generation_prompt=true, enable_thinking=None, tools=None, cache_key=None))]
    #[allow(clippy::too_many_arguments)]
    fn assemble_history(
        &self,
        py: Python<'_>,
        history: &Bound<'_, PyAny>,
        inputs: &Bound<'_, PyAny>,
        owner: &str,
        strategy: &str,
        window: Option<usize>,
        budget: Option<usize>,
        max_tokens: usize,
        add_generation_prompt: bool,
        enable_thinking: Option<bool>,
        tools: Option<&str>,
        cache_key: Option<String>,
    ) -> PyResult<Assembly> {
        let history = history
            .try_iter()?
            .map(|item| {
                let item = item?;
                let turn = item.cast::<Turn>().map_err(|_| {
                    Error::InvalidInput("history must hold threadloom.Turn records".into())
                })?;
                let turn = turn.get();
                let (content, reasoning, tool) = turn.texts(py)?;
                Ok((
                    turn.key,
                    NewTurn {
                        role: turn.role_kind,
                        content,
                        reasoning,
                        tool,
                    },
                ))
            })
            .collect::<PyResult<Vec<_>>>()?;
        let inputs = new_turns(inputs)?;
        let opts = options(
            strategy,
            window,
            budget,
            max_tokens,
            add_generation_prompt,
            enable_thinking,
            tools,
            cache_key,
        )?;
        let out = py.detach(|| self.inner.assemble_history(&history, &inputs, owner, &opts))?;
        Ok(out.into())
    }

    /// Assembles a conversation given in full (dicts with role and content); the last
    /// `protected` messages (the request's new inputs) are never trimmed.
    #[pyo3(signature = (messages, *, owner="default", strategy="tokens", window=None, budget=None, max_tokens=256, add_generation_prompt=true, enable_thinking=None, tools=None, cache_key=None, protected=1))]
    #[allow(clippy::too_many_arguments)]
    fn assemble_messages(
        &self,
        py: Python<'_>,
        messages: &Bound<'_, PyAny>,
        owner: &str,
        strategy: &str,
        window: Option<usize>,
        budget: Option<usize>,
        max_tokens: usize,
        add_generation_prompt: bool,
        enable_thinking: Option<bool>,
        tools: Option<&str>,
        cache_key: Option<String>,
        protected: usize,
    ) -> PyResult<Assembly> {
        let messages = new_turns(messages)?;
        let opts = options(
            strategy,
            window,
            budget,
            max_tokens,
            add_generation_prompt,
            enable_thinking,
            tools,
            cache_key,
        )?;
        let out = py.detach(|| {
            self.inner
                .assemble_messages(&messages, protected, owner, &opts)
        })?;
        Ok(out.into())
    }
}
