//! Prompt assembly: a stored conversation plus new inputs, rendered with the model's chat
//! template, tokenized with the model's tokenizer, and trimmed to fit the context.

mod guard;
mod memory;
mod tools;
pub mod trim;

use std::borrow::Cow;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::error::{ContextOverflow, Error, Result};
use crate::gguf::GgufMetadata;
use crate::ids::{self, TurnKey};
use crate::store::{Anchor, NewTurn, Role, Store};
use crate::template::{ChatTemplate, Message, RenderOptions};
use crate::tokens::Tokenizer;
use guard::Guard;
use memory::{PrefixMemory, SegmentCache};
use trim::Item;
pub use trim::Strategy;

/// Used when the template cannot be probed for its per-message overhead.
const FALLBACK_OVERHEAD: usize = 4;
/// Memory for remembered prompt segments and their ids (text, ids and bookkeeping).
const SEGMENT_CACHE_BYTES: usize = 8 << 20;

/// Options of one assembly.
#[derive(Debug, Clone)]
pub struct AssembleOptions {
    pub strategy: Strategy,
    /// Tokens reserved for the output.
    pub max_tokens: usize,
    pub add_generation_prompt: bool,
    pub enable_thinking: Option<bool>,
    pub tools: Option<serde_json::Value>,
    /// Names the conversation for the shared-prefix report; defaults to its root turn.
    pub cache_key: Option<String>,
}

impl Default for AssembleOptions {
    fn default() -> Self {
        AssembleOptions {
            strategy: Strategy::Tokens(None),
            max_tokens: 256,
            add_generation_prompt: true,
            enable_thinking: None,
            tools: None,
            cache_key: None,
        }
    }
}

/// What trimming did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub prompt_tokens: usize,
    pub max_tokens: usize,
    pub context_length: usize,
    pub messages_total: usize,
    pub messages_kept: usize,
    pub messages_dropped: usize,
    /// Leading tokens identical to the previous prompt of the same conversation.
    pub shared_prefix_tokens: usize,
    /// The newest dropped stored turn, when trimming dropped any.
    pub cut_after: Option<String>,
}

/// A prompt ready for the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assembly {
    pub prompt: String,
    pub ids: Vec<u32>,
    pub report: Report,
}

/// Stored turns counted fresh, to be written to the store's count cache.
type FreshCounts = Vec<(TurnKey, u32)>;

/// A message on its way into the template, borrowed from the store or the caller.
#[derive(Clone, Copy)]
struct Msg<'a> {
    role: Role,
    content: &'a str,
    reasoning: Option<&'a str>,
    /// Tool data (a stored turn's JSON object text), rendered as `tool_calls` / `tool_call_id`.
    tool: Option<&'a str>,
    turn: Option<TurnKey>,
}

/// A model's template, tokenizer and context size, and what it remembers between prompts.
pub struct PromptEngine {
    template: ChatTemplate,
    template_is_fallback: bool,
    tokenizer: Arc<Tokenizer>,
    context_length: usize,
    bos_text: Option<String>,
    overhead: usize,
    previous: Mutex<PrefixMemory>,
    segments: SegmentCache,
}

/// The prefix-cache key of a stored conversation: the caller's, else its root turn's id, so
/// every branch of one conversation shares its slot's cached prefix.
fn conversation_key(options: &AssembleOptions, root: Option<&TurnKey>) -> Option<String> {
    options
        .cache_key
        .clone()
        .or_else(|| root.map(ids::turn_id_string))
}

impl PromptEngine {
    /// Loads the template, tokenizer and context length from a GGUF file's metadata.
    /// `template`: a chat template source that replaces the file's own (base models ship none).
    pub fn from_gguf(path: &Path, template: Option<&str>) -> Result<PromptEngine> {
        let meta = GgufMetadata::from_path(path)?;
        let tokenizer = Arc::new(Tokenizer::from_metadata(&meta)?);
        let context_length = meta.context_length().unwrap_or(2048) as usize;
        let token_text = |id: Option<u32>| {
            id.and_then(|i| tokenizer.id_to_token(i))
                .unwrap_or("")
                .to_owned()
        };
        let bos = token_text(meta.bos_token_id());
        let eos = token_text(meta.eos_token_id());
        let (template, fallback) = match template.or(meta.chat_template()) {
            Some(source) => (ChatTemplate::new(source, &bos, &eos)?, false),
            None => (ChatTemplate::chatml(&bos, &eos)?, true),
        };
        let bos_text = (tokenizer.add_bos() && !bos.is_empty()).then_some(bos);
        Ok(PromptEngine::new(
            template,
            fallback,
            tokenizer,
            context_length,
            bos_text,
        ))
    }

    /// `bos_text`: set when the model wants a BOS token and the template may not write one.
    pub fn new(
        template: ChatTemplate,
        template_is_fallback: bool,
        tokenizer: Arc<Tokenizer>,
        context_length: usize,
        bos_text: Option<String>,
    ) -> PromptEngine {
        let mut engine = PromptEngine {
            template,
            template_is_fallback,
            tokenizer,
            context_length,
            bos_text,
            overhead: FALLBACK_OVERHEAD,
            previous: Mutex::new(PrefixMemory::default()),
            segments: SegmentCache::new(SEGMENT_CACHE_BYTES),
        };
        engine.overhead = engine.probe_overhead().unwrap_or(FALLBACK_OVERHEAD);
        engine
    }

    /// Tokens the template adds around one more message: the difference between rendering a
    /// user and an assistant message and rendering the user message alone.
    fn probe_overhead(&self) -> Option<usize> {
        let user = Message {
            role: "user",
            content: "",
            ..Message::default()
        };
        let assistant = Message {
            role: "assistant",
            ..user.clone()
        };
        let opts = RenderOptions::default();
        let one = self
            .template
            .render(std::slice::from_ref(&user), &opts)
            .ok()?;
        let two = self.template.render(&[user, assistant], &opts).ok()?;
        let n1 = self.tokenizer.count(&one, false).ok()?;
        let n2 = self.tokenizer.count(&two, false).ok()?;
        n2.checked_sub(n1)
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    /// Whether the model had no template and ChatML is used instead.
    pub fn template_is_fallback(&self) -> bool {
        self.template_is_fallback
    }

    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// Lowers the context to what the generation backend was loaded with (never raises it).
    pub fn limit_context(&mut self, context_length: usize) {
        self.context_length = self.context_length.min(context_length);
    }

    /// Assembles the conversation ending at `anchor` (read in place from the store) followed by
    /// `inputs`. Token counts of stored turns are cached in the store, so each is counted once.
    pub fn assemble(
        &self,
        store: &Store,
        owner: &str,
        anchor: &Anchor,
        inputs: &[NewTurn],
        options: &AssembleOptions,
    ) -> Result<Assembly> {
        let fingerprint = self.tokenizer.fingerprint();
        let (assembly, fresh) =
            store.with_history_counts(owner, anchor, fingerprint, |views, cached| {
                let mut msgs: Vec<Msg<'_>> = views
                    .iter()
                    .map(|v| Msg {
                        role: v.role,
                        content: v.content,
                        reasoning: v.reasoning,
                        tool: v.tool,
                        turn: Some(v.id),
                    })
                    .collect();
                msgs.extend(inputs.iter().map(|t| Msg {
                    role: t.role,
                    content: &t.content,
                    reasoning: t.reasoning.as_deref(),
                    tool: t.tool.as_deref(),
                    turn: None,
                }));
                let (counts, fresh) = self.content_counts(&msgs, cached)?;
                let key = conversation_key(options, views.first().map(|v| &v.id));
                let assembly = self.build(&msgs, &counts, inputs.len(), owner, options, key)?;
                Ok((assembly, fresh))
            })?;
        if !fresh.is_empty() {
            store.set_token_counts(fingerprint, &fresh)?;
        }
        Ok(assembly)
    }

    /// Assembles a stored history another store read (each turn with its key) followed by
    /// `inputs`, exactly as `assemble` does for a history read from LMDB in place.
    pub fn assemble_history(
        &self,
        history: &[(TurnKey, NewTurn)],
        inputs: &[NewTurn],
        owner: &str,
        options: &AssembleOptions,
    ) -> Result<Assembly> {
        let stored = history.iter().map(|(key, t)| (Some(*key), t));
        let msgs: Vec<Msg<'_>> = stored
            .chain(inputs.iter().map(|t| (None, t)))
            .map(|(turn, t)| Msg {
                role: t.role,
                content: &t.content,
                reasoning: t.reasoning.as_deref(),
                tool: t.tool.as_deref(),
                turn,
            })
            .collect();
        let (counts, _) = self.content_counts(&msgs, &[])?;
        let key = conversation_key(options, history.first().map(|(k, _)| k));
        self.build(&msgs, &counts, inputs.len(), owner, options, key)
    }

    /// Assembles a conversation given in full by the caller (the stateless dialects).
    /// The `protected` newest messages (the request's new inputs) are never trimmed. `owner`
    /// scopes what the engine remembers between prompts (segments, the shared-prefix report).
    pub fn assemble_messages(
        &self,
        messages: &[NewTurn],
        protected: usize,
        owner: &str,
        options: &AssembleOptions,
    ) -> Result<Assembly> {
        let msgs: Vec<Msg<'_>> = messages
            .iter()
            .map(|t| Msg {
                role: t.role,
                content: &t.content,
                reasoning: t.reasoning.as_deref(),
                tool: t.tool.as_deref(),
                turn: None,
            })
            .collect();
        let (counts, _) = self.content_counts(&msgs, &[])?;
        let protected = protected.min(msgs.len());
        self.build(
            &msgs,
            &counts,
            protected,
            owner,
            options,
            options.cache_key.clone(),
        )
    }

    /// Content token counts: cached ones where given, the rest counted in one parallel batch.
    /// Returns the counts and the newly counted stored turns (to cache).
    fn content_counts(
        &self,
        msgs: &[Msg<'_>],
        cached: &[Option<u32>],
    ) -> Result<(Vec<usize>, FreshCounts)> {
        let missing: Vec<usize> = (0..msgs.len())
            .filter(|&i| cached.get(i).copied().flatten().is_none())
            .collect();
        let texts: Vec<&str> = missing.iter().map(|&i| msgs[i].content).collect();
        // Counted as the guarded render will tokenize them: control-token text stays text.
        let counted = self.tokenizer.count_plain_batch(&texts, false)?;
        let mut counts: Vec<usize> = (0..msgs.len())
            .map(|i| cached.get(i).copied().flatten().unwrap_or(0) as usize)
            .collect();
        let mut fresh = Vec::new();
        for (&i, &n) in missing.iter().zip(&counted) {
            counts[i] = n;
            if let Some(turn) = msgs[i].turn {
                fresh.push((turn, n as u32));
            }
        }
        Ok((counts, fresh))
    }

    fn render_ids(
        &self,
        msgs: &[Msg<'_>],
        kept: &[usize],
        owner: &str,
        options: &AssembleOptions,
    ) -> Result<(String, Vec<u32>)> {
        let tk = &*self.tokenizer;
        let mut guard = Guard::default();
        type Escaped<'m> = (Cow<'m, str>, Option<Cow<'m, str>>, tools::ToolFields);
        let escaped: Vec<Escaped<'_>> = kept
            .iter()
            .map(|&i| {
                let m = &msgs[i];
                let tool = tools::fields(m.role, m.tool)
                    .map(|(calls, id)| {
                        (
                            calls.map(|c| guard.escape_json(tk, &c)),
                            id.map(|id| guard.escape(tk, &id).into_owned()),
                        )
                    })
                    .unwrap_or_default();
                (
                    guard.escape(tk, m.content),
                    m.reasoning.map(|r| guard.escape(tk, r)),
                    tool,
                )
            })
            .collect();
        let messages: Vec<Message<'_>> = kept
            .iter()
            .zip(&escaped)
            .map(|(&i, (content, reasoning, (calls, call_id)))| Message {
                role: msgs[i].role.as_str(),
                content,
                reasoning_content: reasoning.as_deref(),
                tool_calls: calls.clone(),
                tool_call_id: call_id.as_deref(),
            })
            .collect();
        let tools = options.tools.as_ref().map(|t| guard.escape_json(tk, t));
        let rendered = self.template.render(
            &messages,
            &RenderOptions {
                add_generation_prompt: options.add_generation_prompt,
                enable_thinking: options.enable_thinking,
                tools,
            },
        )?;
        let (prompt, guarded) = if guard.is_empty() {
            (rendered, Vec::new())
        } else {
            guard.restore(&rendered)
        };
        // BOS is added unless the template already wrote it.
        let add_bos = self
            .bos_text
            .as_deref()
            .is_some_and(|bos| !prompt.starts_with(bos));
        // The text between the template's special tokens (a message's content with its role
        // header, mostly) is the same from one prompt of a thread to the next: its ids come
        // from the segment cache, and only new segments are tokenized.
        let ids = tk.encode_segmented(&prompt, add_bos, &guarded, |text, out| {
            self.segments.encode(tk, owner, text, out)
        })?;
        Ok((prompt, ids))
    }

    fn build(
        &self,
        msgs: &[Msg<'_>],
        counts: &[usize],
        protected: usize,
        owner: &str,
        options: &AssembleOptions,
        cache_key: Option<String>,
    ) -> Result<Assembly> {
        let ctx = self.context_length;
        let overflow = |prompt_tokens: usize| {
            Error::ContextLength(ContextOverflow::new(prompt_tokens, options.max_tokens, ctx))
        };
        if options.max_tokens >= ctx {
            return Err(Error::InvalidInput(format!(
                "max_tokens ({}) must be smaller than the model's context ({ctx})",
                options.max_tokens
            )));
        }
        // A compaction turn stands in for everything before it: the conversation restarts
        // from one system message, the instructions given so far and the summary.
        let merged: String;
        let counted: (Vec<Msg<'_>>, Vec<usize>);
        let (msgs, counts, protected) = match msgs
            .iter()
            .rposition(|m| tools::is_compaction(m.role, m.tool))
        {
            None => (msgs, counts, protected),
            Some(k) => {
                let mut parts: Vec<&str> = msgs[..k]
                    .iter()
                    .filter(|m| m.role == Role::System && !tools::is_compaction(m.role, m.tool))
                    .map(|m| m.content)
                    .collect();
                parts.push(msgs[k].content);
                merged = parts.join("\n\n");
                let head = Msg {
                    role: Role::System,
                    content: &merged,
                    reasoning: None,
                    tool: None,
                    turn: msgs[k].turn,
                };
                let (head_count, _) = self.content_counts(&[head], &[])?;
                counted = (
                    std::iter::once(head)
                        .chain(msgs[k + 1..].iter().copied())
                        .collect(),
                    head_count
                        .into_iter()
                        .chain(counts[k + 1..].iter().copied())
                        .collect(),
                );
                // The request's own inputs stay protected, less those the compaction replaced.
                let protected = protected.min(msgs.len() - k);
                (&counted.0[..], &counted.1[..], protected)
            }
        };
        let room = ctx - options.max_tokens;
        let budget = match options.strategy {
            Strategy::Tokens(Some(b)) => b.min(room),
            _ => room,
        };
        let items: Vec<Item> = msgs
            .iter()
            .zip(counts)
            .map(|(m, &n)| Item {
                role: m.role,
                tokens: n + self.overhead,
            })
            .collect();
        let mut cut = trim::plan_cut(&items, options.strategy, budget, protected);
        let (prompt, ids, kept) = loop {
            let kept: Vec<usize> = trim::kept_indices(&items, cut).collect();
            let (prompt, ids) = self.render_ids(msgs, &kept, owner, options)?;
            if ids.len() <= budget {
                break (prompt, ids, kept);
            }
            match (options.strategy, trim::advance(&items, cut, protected)) {
                (Strategy::Tokens(_), Some(next)) => cut = next,
                _ => return Err(overflow(ids.len())),
            }
        };
        let cut_after = (0..cut)
            .rev()
            .find(|&i| msgs[i].role != Role::System)
            .and_then(|i| msgs[i].turn)
            .map(|t| ids::turn_id_string(&t));
        // Per owner: thread ids are chosen by clients, so two tenants may both have a "t1".
        let shared_prefix_tokens = match cache_key {
            Some(key) => self
                .previous
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .swap(format!("{owner}\0{key}"), &ids),
            None => 0,
        };
        let report = Report {
            prompt_tokens: ids.len(),
            max_tokens: options.max_tokens,
            context_length: ctx,
            messages_total: msgs.len(),
            messages_kept: kept.len(),
            messages_dropped: msgs.len() - kept.len(),
            shared_prefix_tokens,
            cut_after,
        };
        Ok(Assembly {
            prompt,
            ids,
            report,
        })
    }
}

#[cfg(test)]
mod tests;
