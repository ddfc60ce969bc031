//! Stored tool data as the chat templates read it. A turn's tool data is a JSON object; two
//! kinds are rendered: `{"type": "function_call", "call_id", "name", "arguments"}` on an
//! assistant turn becomes that message's `tool_calls` (OpenAI's chat format, with `arguments`
//! parsed when it is JSON, as templates expect an object), and
//! `{"type": "function_call_output", "call_id"}` on a tool turn becomes its `tool_call_id`.
//! `{"type": "compaction"}` on a system turn marks a summary that stands in for everything
//! before it (see `PromptEngine::build`). Anything else renders as the turn's content alone.

use serde_json::{json, Value};

use crate::store::Role;

/// Whether a turn is a compaction: a system turn whose content (a summary of the conversation
/// before it) replaces every turn before it in the prompt.
pub(super) fn is_compaction(role: Role, tool: Option<&str>) -> bool {
    role == Role::System
        && tool.is_some_and(|t| {
            serde_json::from_str::<Value>(t)
                .ok()
                .and_then(|v| {
                    v.get("type")
                        .and_then(Value::as_str)
                        .map(|k| k == "compaction")
                })
                .unwrap_or(false)
        })
}

/// A message's `tool_calls` and `tool_call_id`.
pub(super) type ToolFields = (Option<Value>, Option<String>);

pub(super) fn fields(role: Role, tool: Option<&str>) -> Option<ToolFields> {
    let value: Value = serde_json::from_str(tool?).ok()?;
    let text = |key: &str| value.get(key).and_then(Value::as_str);
    match (role, text("type")?) {
        (Role::Assistant, "function_call") => {
            let arguments = text("arguments").unwrap_or("");
            let arguments = serde_json::from_str::<Value>(arguments)
                .ok()
                .filter(Value::is_object)
                .unwrap_or_else(|| Value::String(arguments.to_owned()));
            let call = json!({
                "id": text("call_id").unwrap_or(""),
                "type": "function",
                "function": {"name": text("name").unwrap_or(""), "arguments": arguments},
            });
            Some((Some(Value::Array(vec![call])), None))
        }
        (Role::Tool, "function_call_output") => Some((None, text("call_id").map(str::to_owned))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_and_results() {
        let call = r#"{"type":"function_call","call_id":"c1","name":"f","arguments":"{\"x\":1}"}"#;
        let (calls, id) = fields(Role::Assistant, Some(call)).unwrap();
        assert_eq!(
            calls.unwrap(),
            json!([{"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"x": 1}}}])
        );
        assert_eq!(id, None);
        let odd = r#"{"type":"function_call","call_id":"c1","name":"f","arguments":"not json"}"#;
        let (calls, _) = fields(Role::Assistant, Some(odd)).unwrap();
        assert_eq!(calls.unwrap()[0]["function"]["arguments"], "not json");
        let result = r#"{"type":"function_call_output","call_id":"c1"}"#;
        assert_eq!(
            fields(Role::Tool, Some(result)),
            Some((None, Some("c1".into())))
        );
        assert_eq!(fields(Role::User, Some(call)), None);
        assert_eq!(fields(Role::Assistant, None), None);
        assert_eq!(fields(Role::Assistant, Some("[1]")), None);
    }
}
