use super::*;
use crate::gguf::tests::test_model_path;

fn engine() -> Option<PromptEngine> {
    let Some(path) = test_model_path() else {
        eprintln!("skipped: no model (set THREADLOOM_TEST_MODEL)");
        return None;
    };
    Some(PromptEngine::from_gguf(&path, None).unwrap())
}

fn turn(role: Role, content: &str, tool: Option<&str>) -> NewTurn {
    NewTurn {
        tool: tool.map(str::to_owned),
        ..NewTurn::new(role, content)
    }
}

const COMPACTION: &str = r#"{"type":"compaction","version":1}"#;

#[test]
fn a_compaction_stands_in_for_everything_before_it() {
    let Some(engine) = engine() else { return };
    let opts = AssembleOptions::default();
    let before = [
        turn(Role::System, "Be brief.", None),
        turn(Role::User, "My name is Ada.", None),
        turn(Role::Assistant, "Hello Ada.", None),
        turn(Role::System, "Summary: an old one.", Some(COMPACTION)),
        turn(Role::User, "I live in Oslo.", None),
    ];
    let mut messages = before.to_vec();
    messages.push(turn(
        Role::System,
        "Summary: Ada lives in Oslo.",
        Some(COMPACTION),
    ));
    messages.push(turn(Role::User, "Where do I live?", None));
    let got = engine.assemble_messages(&messages, 1, "o", &opts).unwrap();
    let expected = engine
        .assemble_messages(
            &[
                turn(
                    Role::System,
                    "Be brief.\n\nSummary: Ada lives in Oslo.",
                    None,
                ),
                turn(Role::User, "Where do I live?", None),
            ],
            1,
            "o",
            &opts,
        )
        .unwrap();
    assert_eq!(got.prompt, expected.prompt);
    assert_eq!(got.ids, expected.ids);
    for gone in ["Ada.", "Hello", "old one", "I live in"] {
        assert!(!got.prompt.contains(gone), "{gone} in {}", got.prompt);
    }
    // Stored history and inputs alike: the same rule on the stored path.
    let history: Vec<(TurnKey, NewTurn)> = messages[..6]
        .iter()
        .enumerate()
        .map(|(i, t)| ([i as u8 + 1; 16], t.clone()))
        .collect();
    let stored = engine
        .assemble_history(&history, &messages[6..], "o", &opts)
        .unwrap();
    assert_eq!(stored.ids, expected.ids);
    assert_eq!(stored.report.messages_kept, 2);
    // A system turn with other tool data is an ordinary system turn.
    let plain = [
        turn(Role::System, "Note.", Some(r#"{"type":"note"}"#)),
        turn(Role::User, "Hi", None),
    ];
    let got = engine.assemble_messages(&plain, 1, "o", &opts).unwrap();
    assert!(got.prompt.contains("Note."));
}
