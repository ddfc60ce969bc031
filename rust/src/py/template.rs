//! `threadloom._core.ChatTemplate`.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

use crate::error::Error;
use crate::template::{self, Message, RenderOptions};

/// A model's Jinja chat template, rendered as Hugging Face's `apply_chat_template` would.
#[pyclass(frozen, module = "threadloom._core")]
pub struct ChatTemplate {
    inner: template::ChatTemplate,
}

struct OwnedMessage {
    role: String,
    content: String,
    reasoning: Option<String>,
}

fn parse_messages(messages: &Bound<'_, PyAny>) -> PyResult<Vec<OwnedMessage>> {
    let mut out = Vec::new();
    for (i, item) in messages.try_iter()?.enumerate() {
        let item = item?;
        let dict = item
            .cast::<PyDict>()
            .map_err(|_| Error::InvalidInput(format!("messages[{i}] must be a dict")))?;
        let text = |key: &str| -> PyResult<Option<String>> {
            match dict.get_item(key)? {
                Some(v) if !v.is_none() => Ok(Some(
                    v.cast::<PyString>()
                        .map_err(|_| {
                            Error::InvalidInput(format!("messages[{i}].{key} must be a string"))
                        })?
                        .to_str()?
                        .to_owned(),
                )),
                _ => Ok(None),
            }
        };
        out.push(OwnedMessage {
            role: text("role")?
                .ok_or_else(|| Error::InvalidInput(format!("messages[{i}].role is missing")))?,
            content: text("content")?.unwrap_or_default(),
            reasoning: match text("reasoning_content")? {
                Some(r) => Some(r),
                None => text("reasoning")?,
            },
        });
    }
    Ok(out)
}

#[pymethods]
impl ChatTemplate {
    #[new]
    #[pyo3(signature = (source, *, bos_token="", eos_token=""))]
    fn new(py: Python<'_>, source: String, bos_token: &str, eos_token: &str) -> PyResult<Self> {
        let inner = py.detach(|| template::ChatTemplate::new(&source, bos_token, eos_token))?;
        Ok(ChatTemplate { inner })
    }

    /// The source of a template that comes with threadloom (`builtin_names()`), or None.
    #[staticmethod]
    fn builtin_source(name: &str) -> Option<&'static str> {
        template::builtin(name)
    }

    /// The names `builtin_source` knows.
    #[staticmethod]
    fn builtin_names() -> Vec<&'static str> {
        template::BUILTIN.iter().map(|(n, _)| *n).collect()
    }

    /// The ChatML template used for models that ship none.
    #[staticmethod]
    #[pyo3(signature = (*, bos_token="", eos_token="<|im_end|>"))]
    fn chatml(bos_token: &str, eos_token: &str) -> PyResult<Self> {
        Ok(ChatTemplate {
            inner: template::ChatTemplate::chatml(bos_token, eos_token)?,
        })
    }

    /// Renders messages (dicts with role, content and optional reasoning_content) to prompt
    /// text. `tools` is JSON text of a list of tool definitions.
    #[pyo3(signature = (messages, *, add_generation_prompt=false, enable_thinking=None, tools=None))]
    fn render(
        &self,
        py: Python<'_>,
        messages: &Bound<'_, PyAny>,
        add_generation_prompt: bool,
        enable_thinking: Option<bool>,
        tools: Option<&str>,
    ) -> PyResult<String> {
        let owned = parse_messages(messages)?;
        let tools = tools
            .map(|t| {
                serde_json::from_str::<serde_json::Value>(t)
                    .map_err(|e| Error::InvalidInput(format!("tools is not valid JSON: {e}")))
            })
            .transpose()?;
        let options = RenderOptions {
            add_generation_prompt,
            enable_thinking,
            tools,
        };
        Ok(py.detach(|| {
            let views: Vec<Message<'_>> = owned
                .iter()
                .map(|m| Message {
                    role: &m.role,
                    content: &m.content,
                    reasoning_content: m.reasoning.as_deref(),
                    ..Message::default()
                })
                .collect();
            self.inner.render(&views, &options)
        })?)
    }
}
