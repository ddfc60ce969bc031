//! The turn record: a fixed 48-byte header followed by the owner, content and reasoning text,
//! and the tool data (a JSON object) when there is some.
//! A record is read in place from the memory map (`TurnView` borrows it); nothing is decoded into
//! owned strings. The layout is documented in docs/storage.md and must change with the format
//! version.

use crate::error::{Error, Result};
use crate::ids::TurnKey;

pub const HEADER_LEN: usize = 48;
const KIND: u8 = b'T';
const FLAG_PARENT: u8 = 1;
const FLAG_REASONING: u8 = 2;
/// The record ends with tool data, its length in the header's last four bytes (zero, and the
/// flag unset, in records written before tool data existed).
const FLAG_TOOL: u8 = 4;

/// Who wrote a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    System = 0,
    User = 1,
    Assistant = 2,
    Tool = 3,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }

    pub fn parse(text: &str) -> Result<Role> {
        match text {
            "system" => Ok(Role::System),
            "user" => Ok(Role::User),
            "assistant" => Ok(Role::Assistant),
            "tool" => Ok(Role::Tool),
            other => Err(Error::InvalidInput(format!(
                "invalid role {other:?}: expected system, user, assistant or tool"
            ))),
        }
    }

    fn from_byte(b: u8) -> Option<Role> {
        Some(match b {
            0 => Role::System,
            1 => Role::User,
            2 => Role::Assistant,
            3 => Role::Tool,
            _ => return None,
        })
    }
}

/// A turn to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTurn {
    pub role: Role,
    pub content: String,
    pub reasoning: Option<String>,
    /// A tool call (an assistant turn) or a tool result (a tool turn): a JSON object's text,
    /// e.g. `{"type":"function_call","call_id":..,"name":..,"arguments":..}`.
    pub tool: Option<String>,
}

impl NewTurn {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        NewTurn {
            role,
            content: content.into(),
            reasoning: None,
            tool: None,
        }
    }

    /// The bytes of text the turn holds (content, reasoning and tool data).
    pub fn text_len(&self) -> usize {
        self.content.len()
            + self.reasoning.as_ref().map_or(0, String::len)
            + self.tool.as_ref().map_or(0, String::len)
    }
}

/// A turn record borrowed from the store (or any byte slice holding one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TurnView<'a> {
    pub id: TurnKey,
    pub parent: Option<TurnKey>,
    pub role: Role,
    pub depth: u32,
    pub created_ms: i64,
    pub owner: &'a str,
    pub content: &'a str,
    pub reasoning: Option<&'a str>,
    pub tool: Option<&'a str>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub fn encode(
    parent: Option<&TurnKey>,
    depth: u32,
    created_ms: i64,
    owner: &str,
    turn: &NewTurn,
) -> Vec<u8> {
    let reasoning = turn.reasoning.as_deref().unwrap_or("");
    let tool = turn.tool.as_deref().unwrap_or("");
    let mut out = Vec::with_capacity(
        HEADER_LEN + owner.len() + turn.content.len() + reasoning.len() + tool.len(),
    );
    let mut flags = 0;
    if parent.is_some() {
        flags |= FLAG_PARENT;
    }
    if turn.reasoning.is_some() {
        flags |= FLAG_REASONING;
    }
    if turn.tool.is_some() {
        flags |= FLAG_TOOL;
    }
    out.extend_from_slice(&[KIND, turn.role as u8, flags, 0]);
    out.extend_from_slice(&depth.to_le_bytes());
    out.extend_from_slice(&created_ms.to_le_bytes());
    out.extend_from_slice(parent.unwrap_or(&[0; 16]));
    out.extend_from_slice(&(owner.len() as u32).to_le_bytes());
    out.extend_from_slice(&(turn.content.len() as u32).to_le_bytes());
    out.extend_from_slice(&(reasoning.len() as u32).to_le_bytes());
    out.extend_from_slice(&(tool.len() as u32).to_le_bytes());
    out.extend_from_slice(owner.as_bytes());
    out.extend_from_slice(turn.content.as_bytes());
    out.extend_from_slice(reasoning.as_bytes());
    out.extend_from_slice(tool.as_bytes());
    out
}

pub(crate) fn corrupt(id: &TurnKey, what: &str) -> Error {
    Error::Format(format!(
        "turn record {} is corrupt: {what}",
        crate::ids::turn_id_string(id)
    ))
}

/// Reads only a record's parent (the header), for walks that look at nothing else.
pub fn parent_of(id: &TurnKey, b: &[u8]) -> Result<Option<TurnKey>> {
    if b.len() < HEADER_LEN || b[0] != KIND {
        return Err(corrupt(id, "bad header"));
    }
    if b[2] & FLAG_PARENT == 0 {
        return Ok(None);
    }
    let mut p = [0u8; 16];
    p.copy_from_slice(&b[16..32]);
    Ok(Some(p))
}

/// A record's fields with the text still as bytes: its layout checked, its UTF-8 not yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawTurn<'a> {
    pub id: TurnKey,
    pub parent: Option<TurnKey>,
    pub role: Role,
    pub depth: u32,
    pub created_ms: i64,
    pub owner: &'a [u8],
    pub content: &'a [u8],
    pub reasoning: Option<&'a [u8]>,
    pub tool: Option<&'a [u8]>,
}

/// Reads a record's layout in place, leaving the UTF-8 check of its text to the caller (the
/// Python layer lets CPython check it while it builds the strings).
pub fn parse_raw<'a>(id: TurnKey, b: &'a [u8]) -> Result<RawTurn<'a>> {
    if b.len() < HEADER_LEN || b[0] != KIND {
        return Err(corrupt(&id, "bad header"));
    }
    let role = Role::from_byte(b[1]).ok_or_else(|| corrupt(&id, "unknown role"))?;
    let flags = b[2];
    let depth = u32_at(b, 4);
    let created_ms = i64::from_le_bytes(b[8..16].try_into().map_err(|_| corrupt(&id, "time"))?);
    let parent = if flags & FLAG_PARENT != 0 {
        let mut p = [0u8; 16];
        p.copy_from_slice(&b[16..32]);
        Some(p)
    } else {
        None
    };
    let owner_len = u32_at(b, 32) as usize;
    let content_len = u32_at(b, 36) as usize;
    let reasoning_len = u32_at(b, 40) as usize;
    let tool_len = u32_at(b, 44) as usize;
    if flags & FLAG_TOOL == 0 && tool_len != 0 {
        return Err(corrupt(&id, "tool data without its flag"));
    }
    let end = HEADER_LEN
        .checked_add(owner_len)
        .and_then(|n| n.checked_add(content_len))
        .and_then(|n| n.checked_add(reasoning_len))
        .and_then(|n| n.checked_add(tool_len))
        .ok_or_else(|| corrupt(&id, "lengths overflow"))?;
    if end != b.len() {
        return Err(corrupt(&id, "lengths do not match the record size"));
    }
    let content_at = HEADER_LEN + owner_len;
    let reasoning_at = content_at + content_len;
    let tool_at = reasoning_at + reasoning_len;
    Ok(RawTurn {
        id,
        parent,
        role,
        depth,
        created_ms,
        owner: &b[HEADER_LEN..content_at],
        content: &b[content_at..reasoning_at],
        reasoning: (flags & FLAG_REASONING != 0).then(|| &b[reasoning_at..tool_at]),
        tool: (flags & FLAG_TOOL != 0).then(|| &b[tool_at..]),
    })
}

/// Reads a record in place. Text is UTF-8-checked (no copy) so a damaged file is an error, not UB.
pub fn parse<'a>(id: TurnKey, b: &'a [u8]) -> Result<TurnView<'a>> {
    let raw = parse_raw(id, b)?;
    let text =
        |bytes: &'a [u8]| std::str::from_utf8(bytes).map_err(|_| corrupt(&id, "text is not UTF-8"));
    Ok(TurnView {
        id,
        parent: raw.parent,
        role: raw.role,
        depth: raw.depth,
        created_ms: raw.created_ms,
        owner: text(raw.owner)?,
        content: text(raw.content)?,
        reasoning: raw.reasoning.map(text).transpose()?,
        tool: raw.tool.map(text).transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let turn = NewTurn {
            role: Role::Assistant,
            content: "héllo 🌍".into(),
            reasoning: Some("thinking".into()),
            tool: None,
        };
        let parent = [7u8; 16];
        let bytes = encode(Some(&parent), 3, 1234, "acme", &turn);
        let view = parse([1; 16], &bytes).unwrap();
        assert_eq!(view.parent, Some(parent));
        assert_eq!(view.role, Role::Assistant);
        assert_eq!(view.depth, 3);
        assert_eq!(view.created_ms, 1234);
        assert_eq!(view.owner, "acme");
        assert_eq!(view.content, "héllo 🌍");
        assert_eq!(view.reasoning, Some("thinking"));
        assert_eq!(view.tool, None);
    }

    #[test]
    fn tool_data_round_trips() {
        let call = r#"{"type":"function_call","call_id":"c1","name":"f","arguments":"{}"}"#;
        let turn = NewTurn {
            role: Role::Assistant,
            content: String::new(),
            reasoning: Some("why".into()),
            tool: Some(call.into()),
        };
        let bytes = encode(None, 2, 5, "o", &turn);
        let view = parse([2; 16], &bytes).unwrap();
        assert_eq!(view.reasoning, Some("why"));
        assert_eq!(view.tool, Some(call));
        assert_eq!(view.content, "");
        // A record written before tool data existed reads as before.
        let plain = encode(None, 1, 0, "o", &NewTurn::new(Role::Tool, "42"));
        assert_eq!(&plain[44..48], &[0; 4]);
        assert_eq!(parse([0; 16], &plain).unwrap().tool, None);
        // A length without the flag is damage.
        let mut bad = plain;
        bad[44] = 1;
        bad.push(b'x');
        assert!(parse([0; 16], &bad).is_err());
    }

    #[test]
    fn empty_reasoning_is_not_none() {
        let turn = NewTurn {
            role: Role::Assistant,
            content: String::new(),
            reasoning: Some(String::new()),
            tool: None,
        };
        let view_bytes = encode(None, 1, 0, "o", &turn);
        let view = parse([0; 16], &view_bytes).unwrap();
        assert_eq!(view.reasoning, Some(""));
        assert_eq!(view.parent, None);
        let plain = encode(None, 1, 0, "o", &NewTurn::new(Role::User, "x"));
        assert_eq!(parse([0; 16], &plain).unwrap().reasoning, None);
    }

    #[test]
    fn corrupt_records_are_errors() {
        let bytes = encode(None, 1, 0, "o", &NewTurn::new(Role::User, "hello"));
        for cut in 0..bytes.len() {
            assert!(parse([0; 16], &bytes[..cut]).is_err());
        }
        let mut bad_role = bytes.clone();
        bad_role[1] = 9;
        assert!(parse([0; 16], &bad_role).is_err());
        let mut bad_len = bytes.clone();
        bad_len[36] = 0xff;
        assert!(parse([0; 16], &bad_len).is_err());
        let mut bad_utf8 = bytes;
        let last = bad_utf8.len() - 1;
        bad_utf8[last] = 0xff;
        assert!(parse([0; 16], &bad_utf8).is_err());
    }

    #[test]
    fn roles() {
        for r in [Role::System, Role::User, Role::Assistant, Role::Tool] {
            assert_eq!(Role::parse(r.as_str()).unwrap(), r);
        }
        assert!(Role::parse("robot").is_err());
    }
}
