//! Chat-template rendering with minijinja, configured to match what Hugging Face's
//! `apply_chat_template` produces with Python's jinja2 (sandboxed, `trim_blocks`,
//! `lstrip_blocks`): Python string/dict/list methods, `raise_exception`, `strftime_now`, and a
//! `tojson` that writes exactly what `json.dumps(..., ensure_ascii=False)` writes.

mod pyjson;
mod pystr;

use std::collections::BTreeMap;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Serde, Value, ValueKind};
use minijinja::{Environment, ErrorKind};
use serde::Serialize;

use crate::error::{Error, Result};

/// The template used for models that ship none.
pub const CHATML: &str = include_str!("builtin/chatml.jinja");

/// Templates for models whose GGUF carries none (base models), by the name `--chat-template`
/// takes.
pub const BUILTIN: &[(&str, &str)] = &[
    ("chatml", CHATML),
    ("gemma", include_str!("builtin/gemma.jinja")),
    ("llama3", include_str!("builtin/llama3.jinja")),
];

/// A built-in template's source by name.
pub fn builtin(name: &str) -> Option<&'static str> {
    BUILTIN.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
}

const NAME: &str = "chat";

/// One message as the template sees it.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Message<'a> {
    pub role: &'a str,
    pub content: &'a str,
    /// Reasoning text, for templates that render `reasoning_content` (Qwen3 and kin).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<&'a str>,
    /// An assistant message's tool calls, as OpenAI's chat format writes them
    /// (`[{"id", "type": "function", "function": {"name", "arguments"}}]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<serde_json::Value>,
    /// A tool message's answer to this call id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<&'a str>,
}

/// Everything but the messages that a render takes.
#[derive(Debug, Clone, Default)]
pub struct RenderOptions {
    pub add_generation_prompt: bool,
    /// Passed only when set: templates test `enable_thinking is defined`.
    pub enable_thinking: Option<bool>,
    /// Tool definitions (a JSON array), passed only when set.
    pub tools: Option<serde_json::Value>,
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

fn template_error(e: minijinja::Error) -> Error {
    if e.kind() == ErrorKind::InvalidOperation {
        if let Some(detail) = e.detail() {
            if let Some(msg) = detail.strip_prefix("raise_exception: ") {
                return Error::InvalidInput(format!(
                    "the chat template refused the conversation: {msg}"
                ));
            }
        }
    }
    let mut msg = format!("chat template error: {e}");
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    Error::InvalidInput(msg)
}

fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(
        ErrorKind::InvalidOperation,
        format!("raise_exception: {message}"),
    ))
}

fn strftime_now(format: String) -> std::result::Result<Value, minijinja::Error> {
    use std::fmt::Write;
    let mut out = String::new();
    write!(out, "{}", chrono::Local::now().format(&format)).map_err(|_| {
        minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: invalid format {format:?}"),
        )
    })?;
    Ok(Value::from(out))
}

/// Writes `{{ value }}`: a float as Python's `str(float)` does (`1e+16`, `1e-05`), the rest
/// as minijinja does (which already prints `None`, `True` and Python-style lists).
fn format_value(
    out: &mut minijinja::Output,
    state: &mut minijinja::State,
    value: &Value,
) -> std::result::Result<(), minijinja::Error> {
    if value.kind() == ValueKind::Number && !value.is_integer() {
        if let Ok(f) = f64::try_from(value.clone()) {
            if f.is_finite() {
                return out
                    .write_str(&pyjson::py_float(f))
                    .map_err(|_| minijinja::Error::new(ErrorKind::WriteFailure, "write failed"));
            }
        }
    }
    minijinja::escape_formatter(out, state, value)
}

/// Hugging Face's `tojson` filter: `json.dumps(x, ensure_ascii=False, indent=indent,
/// separators=separators, sort_keys=sort_keys)`.
fn tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let invalid = |msg: String| minijinja::Error::new(ErrorKind::InvalidOperation, msg);
    let indent = match kwargs.get::<Option<Value>>("indent")? {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match v.as_str() {
            Some(s) => Some(s.to_owned()),
            None => {
                let n = i64::try_from(v.clone()).map_err(|_| {
                    invalid(format!("tojson: indent must be an int or str, not {v}"))
                })?;
                Some(" ".repeat(usize::try_from(n).unwrap_or(0)))
            }
        },
    };
    let separators = match kwargs.get::<Option<Value>>("separators")? {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => {
            let items: Vec<String> = v
                .try_iter()
                .map_err(|_| invalid("tojson: separators must be a pair of strings".into()))?
                .map(|item| item.as_str().map(str::to_owned))
                .collect::<Option<_>>()
                .ok_or_else(|| invalid("tojson: separators must be a pair of strings".into()))?;
            match <[String; 2]>::try_from(items) {
                Ok([item, key]) => Some((item, key)),
                Err(_) => {
                    return Err(invalid(
                        "tojson: separators must be a pair of strings".into(),
                    ))
                }
            }
        }
    };
    // Accepted for compatibility with HF's filter, which ignores it too.
    let _: Option<Value> = kwargs.get("ensure_ascii")?;
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    kwargs.assert_all_used()?;
    let options = pyjson::Options {
        indent,
        separators,
        sort_keys,
    };
    let text = pyjson::dumps(value, &options).map_err(|e| invalid(format!("tojson: {e}")))?;
    Ok(Value::from_safe_string(text))
}

impl ChatTemplate {
    /// Compiles `source`. `bos_token`/`eos_token` are the model's special token texts.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(template_error)?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(pystr::method_callback);
        env.set_formatter(format_value);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_filter("trim", pystr::trim_filter);
        env.add_filter("title", pystr::title_filter);
        env.add_template_owned(NAME, source.to_owned())
            .map_err(template_error)?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
        })
    }

    /// The ChatML fallback for models without a template.
    pub fn chatml(bos_token: &str, eos_token: &str) -> Result<ChatTemplate> {
        ChatTemplate::new(CHATML, bos_token, eos_token)
    }

    pub fn render(&self, messages: &[Message<'_>], options: &RenderOptions) -> Result<String> {
        let mut ctx: BTreeMap<&str, Value> = BTreeMap::new();
        ctx.insert("messages", Value::from(Serde(messages)));
        ctx.insert(
            "add_generation_prompt",
            Value::from(options.add_generation_prompt),
        );
        ctx.insert("bos_token", Value::from(self.bos_token.as_str()));
        ctx.insert("eos_token", Value::from(self.eos_token.as_str()));
        if let Some(thinking) = options.enable_thinking {
            ctx.insert("enable_thinking", Value::from(thinking));
        }
        if let Some(tools) = &options.tools {
            ctx.insert("tools", Value::from(Serde(tools)));
        }
        let template = self.env.get_template(NAME).map_err(template_error)?;
        template.render(Value::from(ctx)).map_err(template_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs() -> Vec<Message<'static>> {
        vec![
            Message {
                role: "system",
                content: "Be brief.",
                reasoning_content: None,
                ..Message::default()
            },
            Message {
                role: "user",
                content: "Hi",
                reasoning_content: None,
                ..Message::default()
            },
        ]
    }

    #[test]
    fn gemma_folds_system_text_into_the_next_user_turn() {
        let t = ChatTemplate::new(builtin("gemma").unwrap(), "<bos>", "<eos>").unwrap();
        let opts = RenderOptions {
            add_generation_prompt: true,
            ..Default::default()
        };
        assert_eq!(
            t.render(&msgs(), &opts).unwrap(),
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
        );
        let reply = [Message {
            role: "assistant",
            content: " Hello ",
            reasoning_content: None,
            ..Message::default()
        }];
        let all: Vec<_> = msgs().into_iter().chain(reply).collect();
        let out = t.render(&all, &RenderOptions::default()).unwrap();
        assert!(
            out.ends_with("<start_of_turn>model\nHello<end_of_turn>\n"),
            "{out}"
        );
    }

    #[test]
    fn every_builtin_compiles() {
        for (name, source) in BUILTIN {
            assert!(ChatTemplate::new(source, "", "").is_ok(), "{name}");
        }
        assert!(builtin("nope").is_none());
    }

    #[test]
    fn chatml_renders() {
        let t = ChatTemplate::chatml("", "<|im_end|>").unwrap();
        let out = t
            .render(
                &msgs(),
                &RenderOptions {
                    add_generation_prompt: true,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn raise_exception_is_invalid_input() {
        let t = ChatTemplate::new(
            "{% if messages[0].role != 'system' %}{{ raise_exception('system first') }}{% endif %}",
            "",
            "",
        )
        .unwrap();
        let err = t
            .render(&msgs()[1..], &RenderOptions::default())
            .unwrap_err();
        assert_eq!(
            err,
            Error::InvalidInput(
                "the chat template refused the conversation: system first".to_owned()
            )
        );
    }

    #[test]
    fn bad_template_is_an_error() {
        assert!(matches!(
            ChatTemplate::new("{% for %}", "", ""),
            Err(Error::InvalidInput(_))
        ));
    }

    #[test]
    fn python_methods_and_tojson() {
        let t = ChatTemplate::new(
            "{{ messages[0].content.strip().upper() }}|{{ tools | tojson }}|{{ tools[0] | tojson(indent=2) }}",
            "",
            "",
        )
        .unwrap();
        let tools = serde_json::json!([{"name": "f", "b": [1, 2.5, "é<"], "a": null}]);
        let out = t
            .render(
                &[Message {
                    role: "user",
                    content: "  hi ",
                    reasoning_content: None,
                    ..Message::default()
                }],
                &RenderOptions {
                    tools: Some(tools),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(
            out,
            "HI|[{\"name\": \"f\", \"b\": [1, 2.5, \"é<\"], \"a\": null}]|{\n  \"name\": \"f\",\n  \"b\": [\n    1,\n    2.5,\n    \"é<\"\n  ],\n  \"a\": null\n}"
        );
    }

    #[test]
    fn enable_thinking_only_when_set() {
        let t = ChatTemplate::new(
            "{% if enable_thinking is defined %}{{ enable_thinking }}{% else %}unset{% endif %}",
            "",
            "",
        )
        .unwrap();
        assert_eq!(t.render(&[], &RenderOptions::default()).unwrap(), "unset");
        let on = RenderOptions {
            enable_thinking: Some(false),
            ..Default::default()
        };
        // jinja2 prints Python booleans.
        assert_eq!(t.render(&[], &on).unwrap(), "False");
    }

    #[test]
    fn strftime_now_formats() {
        let t = ChatTemplate::new("{{ strftime_now('%Y') }}", "", "").unwrap();
        let year = t.render(&[], &RenderOptions::default()).unwrap();
        assert_eq!(year.len(), 4);
        assert!(year.starts_with("20"));
    }
}
