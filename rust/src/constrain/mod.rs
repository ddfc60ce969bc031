//! Constrained decoding: a reply that must match a JSON schema (or a tool-call grammar) is
//! sampled through a per-sequence matcher that says, before every token, which ids keep the
//! output a valid prefix. llguidance does the matching over a trie of the model's own
//! vocabulary ([`vocab`]); this module compiles formats (with a small cache, since agents send
//! the same schema again and again) and applies masks to a logits row. It never fails open: a
//! matcher in error refuses to produce a mask, and the caller ends the generation.

mod vocab;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{InferenceCapabilities, SimpleVob, TokEnv};
use llguidance::{JsonCompileOptions, Matcher, ParserFactory};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::tokens::Tokenizer;
pub use vocab::VocabEnv;

/// Compiled formats kept per model: enough for the schemas and tool sets of a busy server's
/// agents, small enough that a hostile client cycling schemas costs only recompilation.
const CACHE_ENTRIES: usize = 64;

/// What a reply must look like.
#[derive(Debug, Clone, PartialEq)]
pub enum Format {
    /// Any JSON object.
    JsonObject,
    /// JSON matching this schema.
    JsonSchema(Value),
    /// A Lark grammar in llguidance's dialect (tool calls are built as one).
    Lark(String),
}

impl Format {
    /// The key compiled matchers are cached under.
    fn key(&self) -> String {
        match self {
            Format::JsonObject => "o".into(),
            Format::JsonSchema(v) => format!("s{v}"),
            Format::Lark(g) => format!("l{g}"),
        }
    }

    fn grammar(&self) -> Result<TopLevelGrammar> {
        let schema = match self {
            Format::Lark(g) => return Ok(TopLevelGrammar::from_lark(g.clone())),
            Format::JsonObject => serde_json::json!({"type": "object"}),
            Format::JsonSchema(v) => v.clone(),
        };
        Ok(TopLevelGrammar::from_json_schema(with_layout(schema)?))
    }
}

/// The schema with threadloom's JSON layout: one space after `:` and `,` and no other
/// whitespace, the layout models saw most in training. Flexible whitespace would let a small
/// model pad a reply with newlines until it runs out of tokens.
fn with_layout(mut schema: Value) -> Result<Value> {
    if !schema.is_object() {
        return Err(Error::InvalidInput(
            "a JSON schema must be an object (such as {\"type\": \"object\"})".into(),
        ));
    }
    let layout = JsonCompileOptions {
        item_separator: ", ".into(),
        key_separator: ": ".into(),
        whitespace_flexible: false,
        ..JsonCompileOptions::default()
    };
    layout.apply_to(&mut schema);
    Ok(schema)
}

/// One model's grammar compiler: the vocabulary trie and llguidance's factory, built once.
pub struct Grammars {
    factory: ParserFactory,
    eog: Vec<u32>,
    vocab_size: usize,
    cache: Mutex<HashMap<String, Matcher>>,
}

impl Grammars {
    pub fn new(tokenizer: Arc<Tokenizer>) -> Result<Self> {
        let eog = tokenizer.eog_ids().to_vec();
        let vocab_size = tokenizer.vocab_size();
        let env: TokEnv = Arc::new(VocabEnv::new(tokenizer)?);
        let mut factory = ParserFactory::new(
            &env,
            InferenceCapabilities::default(),
            &llguidance::earley::SlicedBiasComputer::general_slices(),
        )
        .map_err(|e| Error::Model(format!("building the grammar vocabulary failed: {e}")))?;
        factory.quiet();
        Ok(Grammars {
            factory,
            eog,
            vocab_size,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// A fresh matcher for `format`, or an `InvalidInput` error with llguidance's reason.
    pub fn compile(&self, format: &Format) -> Result<Constraint> {
        let key = format.key();
        let cached = self.cache.lock().ok().and_then(|c| c.get(&key).cloned());
        let matcher = match cached {
            Some(m) => m,
            None => {
                let parser = self.factory.create_parser(format.grammar()?).map_err(|e| {
                    Error::InvalidInput(format!("the format does not compile: {e}"))
                })?;
                let matcher = Matcher::new(Ok(parser));
                if let Some(e) = matcher.get_error() {
                    return Err(Error::InvalidInput(format!(
                        "the format does not compile: {e}"
                    )));
                }
                if let Ok(mut cache) = self.cache.lock() {
                    if cache.len() >= CACHE_ENTRIES {
                        cache.clear();
                    }
                    cache.insert(key, matcher.deep_clone());
                }
                matcher
            }
        };
        Ok(Constraint {
            matcher: matcher.deep_clone(),
            eog: self.eog.clone(),
            vocab_size: self.vocab_size,
            done: false,
            error: None,
        })
    }
}

/// Where a constrained reply stands after a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// More tokens may follow.
    Open,
    /// The output is complete: nothing but the end of the reply may follow.
    Complete,
}

/// One sequence's matcher.
pub struct Constraint {
    matcher: Matcher,
    eog: Vec<u32>,
    vocab_size: usize,
    done: bool,
    /// Why the matcher could not give the last mask (reported by the next `advance`).
    error: Option<String>,
}

impl Constraint {
    fn failed(&self, what: &str) -> Error {
        let reason = self
            .matcher
            .get_error()
            .unwrap_or_else(|| "no reason given".into());
        Error::StateConflict(format!(
            "constrained decoding failed while {what}: {reason}"
        ))
    }

    /// The ids allowed next.
    pub fn allowed(&mut self) -> Result<SimpleVob> {
        if self.done {
            let mut only_end = SimpleVob::alloc(self.vocab_size);
            for &id in &self.eog {
                only_end.allow_token(id);
            }
            return Ok(only_end);
        }
        let mask = self
            .matcher
            .compute_mask()
            .map_err(|e| Error::StateConflict(format!("computing the token mask failed: {e}")))?;
        if self.matcher.is_error() {
            return Err(self.failed("computing the token mask"));
        }
        Ok(mask)
    }

    /// Sets every logit the format does not allow to minus infinity. Ids past the vocabulary
    /// (a backend's padded output row) are never allowed. Where the matcher fails, only the
    /// end-of-generation ids stay open and the failure is kept for [`advance`](Self::advance)
    /// to report: one sequence's broken format must not fail the batch it is sampled in, and
    /// it must never go on unconstrained.
    pub fn apply(&mut self, logits: &mut [f32]) {
        let mask = match self.allowed() {
            Ok(mask) if !mask.is_zero() => mask,
            Ok(_) => {
                self.error = Some("no token can continue the output".into());
                return self.only_end(logits);
            }
            Err(e) => {
                self.error = Some(e.message().to_owned());
                return self.only_end(logits);
            }
        };
        for (word, chunk) in mask.as_slice().iter().zip(logits.chunks_mut(32)) {
            if *word == u32::MAX {
                continue;
            }
            for (bit, logit) in chunk.iter_mut().enumerate() {
                if word & (1 << bit) == 0 {
                    *logit = f32::NEG_INFINITY;
                }
            }
        }
        let covered = mask.as_slice().len() * 32;
        for logit in logits.iter_mut().skip(covered.min(self.vocab_size)) {
            *logit = f32::NEG_INFINITY;
        }
    }

    fn only_end(&self, logits: &mut [f32]) {
        logits.fill(f32::NEG_INFINITY);
        for &id in &self.eog {
            if let Some(l) = logits.get_mut(id as usize) {
                *l = 0.0;
            }
        }
    }

    /// Advances past the sampled `token`. An end-of-generation token is accepted only where
    /// the output is complete; a token the mask did not allow is an error.
    pub fn advance(&mut self, token: u32) -> Result<Progress> {
        if let Some(e) = &self.error {
            return Err(Error::StateConflict(format!(
                "constrained decoding failed: {e}"
            )));
        }
        if self.eog.binary_search(&token).is_ok() {
            if self.done || self.is_accepting() {
                self.done = true;
                return Ok(Progress::Complete);
            }
            return Err(Error::StateConflict(
                "constrained decoding failed: the reply ended before the output was complete"
                    .into(),
            ));
        }
        if self.done {
            return Err(Error::StateConflict(
                "constrained decoding failed: a token after the output was complete".into(),
            ));
        }
        self.matcher
            .consume_token(token)
            .map_err(|e| Error::StateConflict(format!("constrained decoding failed: {e}")))?;
        if self.matcher.is_stopped() {
            if self.matcher.is_error() {
                return Err(self.failed("taking a token"));
            }
            self.done = true;
            return Ok(Progress::Complete);
        }
        Ok(Progress::Open)
    }

    /// Whether the output so far is a complete match.
    pub fn is_accepting(&mut self) -> bool {
        self.done || self.matcher.is_accepting().unwrap_or(false)
    }
}

#[cfg(test)]
mod tests;
