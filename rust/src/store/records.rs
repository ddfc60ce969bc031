//! Thread and response records. They are small and read once per request, so they are JSON
//! (readable by any LMDB client); turns, which history walks read by the thousand, are not.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Encoded metadata may not exceed this many bytes.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;
/// A thread's history may not grow past this many turns.
pub const MAX_THREAD_MESSAGES: u32 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ThreadState {
    Open,
    Locked,
    Archived,
}

impl ThreadState {
    pub fn as_str(self) -> &'static str {
        match self {
            ThreadState::Open => "open",
            ThreadState::Locked => "locked",
            ThreadState::Archived => "archived",
        }
    }

    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "open" => Ok(ThreadState::Open),
            "locked" => Ok(ThreadState::Locked),
            "archived" => Ok(ThreadState::Archived),
            other => Err(Error::InvalidInput(format!(
                "invalid thread state {other:?}: expected open, locked or archived"
            ))),
        }
    }

    /// open <-> locked; open or locked -> archived; nothing leaves archived.
    pub fn check_transition(self, to: ThreadState) -> Result<()> {
        use ThreadState::*;
        match (self, to) {
            (a, b) if a == b && a != Archived => Ok(()),
            (Open, Locked) | (Locked, Open) | (Open, Archived) | (Locked, Archived) => Ok(()),
            (from, to) => Err(Error::StateConflict(format!(
                "cannot change thread state from {} to {}",
                from.as_str(),
                to.as_str()
            ))),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResponseStatus {
    Completed,
    Incomplete,
    Failed,
}

impl ResponseStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseStatus::Completed => "completed",
            ResponseStatus::Incomplete => "incomplete",
            ResponseStatus::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "completed" => Ok(ResponseStatus::Completed),
            "incomplete" => Ok(ResponseStatus::Incomplete),
            "failed" => Ok(ResponseStatus::Failed),
            other => Err(Error::InvalidInput(format!(
                "invalid response status {other:?}: expected completed, incomplete or failed"
            ))),
        }
    }

    pub fn is_anchor(self) -> bool {
        !matches!(self, ResponseStatus::Failed)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThreadRecord {
    pub id: String,
    pub owner: String,
    /// Head turn id, `msg_...`; none for an empty thread.
    pub head: Option<String>,
    /// The metadata object as compact JSON text.
    pub metadata: String,
    pub state: ThreadState,
    pub visible: bool,
    pub created_ms: i64,
    pub last_activity_ms: i64,
    pub message_count: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseRecord {
    pub id: String,
    pub owner: String,
    pub status: ResponseStatus,
    pub model: String,
    /// The response's last turn (its output), `msg_...`.
    pub last_turn: String,
    /// The turn the inputs were appended after; none when they start a new conversation.
    pub parent_turn: Option<String>,
    /// How many of the turns up to `last_turn` this response added: its inputs, then its outputs.
    pub input_count: u32,
    pub output_count: u32,
    pub thread_id: Option<String>,
    pub previous_response_id: Option<String>,
    pub usage: Usage,
    pub error: Option<String>,
    pub created_ms: i64,
    pub metadata: String,
}

/// What the caller says about a response to record with an append.
#[derive(Debug, Clone, PartialEq)]
pub struct NewResponse {
    /// The id to store it under, minted before generation so a stream can name it up front
    /// (see `ids::new_response_id`); `None` mints one at append time.
    pub id: Option<String>,
    pub status: ResponseStatus,
    pub model: String,
    /// How many of the appended turns are outputs (at the end); the rest are inputs.
    pub output_count: u32,
    pub usage: Usage,
    pub error: Option<String>,
    pub metadata: Option<String>,
}

/// Checks that `text` is a JSON object of at most 16 KB and returns it re-encoded compactly.
pub fn normalize_metadata(text: Option<&str>) -> Result<String> {
    let Some(text) = text else {
        return Ok("{}".to_owned());
    };
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| Error::InvalidInput(format!("metadata is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(Error::InvalidInput(
            "metadata must be a JSON object".to_owned(),
        ));
    }
    let compact = value.to_string();
    if compact.len() > MAX_METADATA_BYTES {
        return Err(Error::LimitExceeded(format!(
            "metadata is {} bytes encoded; the limit is {MAX_METADATA_BYTES}",
            compact.len()
        )));
    }
    Ok(compact)
}

pub fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::Storage(format!("cannot encode record: {e}")))
}

pub fn from_json<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::Format(format!("corrupt {what} record: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions() {
        use ThreadState::*;
        let all = [Open, Locked, Archived];
        for from in all {
            for to in all {
                let ok = from.check_transition(to).is_ok();
                let expected = matches!(
                    (from, to),
                    (Open, Open)
                        | (Locked, Locked)
                        | (Open, Locked)
                        | (Locked, Open)
                        | (Open, Archived)
                        | (Locked, Archived)
                );
                assert_eq!(ok, expected, "{from:?} -> {to:?}");
            }
        }
        assert!(matches!(
            Archived.check_transition(Open),
            Err(Error::StateConflict(_))
        ));
    }

    #[test]
    fn metadata() {
        assert_eq!(normalize_metadata(None).unwrap(), "{}");
        assert_eq!(
            normalize_metadata(Some(r#"{ "a" : 1 }"#)).unwrap(),
            r#"{"a":1}"#
        );
        assert!(matches!(
            normalize_metadata(Some("[1]")),
            Err(Error::InvalidInput(_))
        ));
        assert!(matches!(
            normalize_metadata(Some("{")),
            Err(Error::InvalidInput(_))
        ));
        let big = format!(r#"{{"k":"{}"}}"#, "x".repeat(MAX_METADATA_BYTES));
        assert!(matches!(
            normalize_metadata(Some(&big)),
            Err(Error::LimitExceeded(_))
        ));
        let fits = format!(r#"{{"k":"{}"}}"#, "x".repeat(MAX_METADATA_BYTES - 8));
        assert_eq!(
            normalize_metadata(Some(&fits)).unwrap().len(),
            MAX_METADATA_BYTES
        );
    }

    #[test]
    fn statuses() {
        assert!(ResponseStatus::Completed.is_anchor());
        assert!(ResponseStatus::Incomplete.is_anchor());
        assert!(!ResponseStatus::Failed.is_anchor());
        assert!(ResponseStatus::parse("done").is_err());
        assert!(ThreadState::parse("closed").is_err());
    }
}
