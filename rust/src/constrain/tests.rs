use std::sync::Arc;

use serde_json::{json, Value};

use super::*;
use crate::gguf::tests::test_model_path;

fn grammars() -> Option<Grammars> {
    let Some(path) = test_model_path() else {
        eprintln!("skipped: no model (set THREADLOOM_TEST_MODEL)");
        return None;
    };
    let tok = Arc::new(Tokenizer::from_gguf(path).unwrap());
    Some(Grammars::new(tok).unwrap())
}

fn tokenizer() -> Tokenizer {
    Tokenizer::from_gguf(test_model_path().unwrap()).unwrap()
}

use crate::testutil::Rng;

fn allowed_ids(c: &mut Constraint) -> Vec<u32> {
    let mut ids = vec![];
    c.allowed()
        .unwrap()
        .iter_set_entries(|i| ids.push(i as u32));
    ids
}

/// Samples a random path through `c`: a random allowed token each step, ending where the
/// output is complete (or, once it could end, with probability 1/4). None: no end in `limit`.
fn random_walk(c: &mut Constraint, tok: &Tokenizer, rng: &mut Rng, limit: usize) -> Option<String> {
    let mut out = Vec::new();
    for _ in 0..limit {
        let ids = allowed_ids(c);
        let text: Vec<u32> = ids.iter().copied().filter(|&i| !tok.is_eog(i)).collect();
        let may_end = ids.iter().any(|&i| tok.is_eog(i));
        assert_eq!(
            may_end,
            c.is_accepting(),
            "EOG allowed exactly where the output is complete"
        );
        if may_end && (text.is_empty() || rng.below(4) == 0) {
            assert_eq!(c.advance(tok.eog_ids()[0]).unwrap(), Progress::Complete);
            return Some(String::from_utf8(out).unwrap());
        }
        assert!(!text.is_empty(), "a mask with no way on");
        let id = text[rng.below(text.len())];
        out.extend_from_slice(tok.piece(id).unwrap());
        if c.advance(id).unwrap() == Progress::Complete {
            return Some(String::from_utf8(out).unwrap());
        }
    }
    None
}

fn assert_walks_validate(g: &Grammars, tok: &Tokenizer, schema: &Value, seed: u64, walks: usize) {
    let validator = jsonschema::validator_for(schema).unwrap();
    let mut rng = Rng(seed);
    let mut finished = 0;
    for _ in 0..walks {
        let mut c = g.compile(&Format::JsonSchema(schema.clone())).unwrap();
        let Some(text) = random_walk(&mut c, tok, &mut rng, 400) else {
            continue;
        };
        finished += 1;
        let value: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{text:?} is not JSON ({e}) for {schema}"));
        assert!(validator.is_valid(&value), "{text} does not match {schema}");
    }
    assert!(
        finished * 2 >= walks,
        "only {finished} of {walks} walks ended for {schema}"
    );
}

#[test]
fn enum_masks_are_exactly_the_valid_prefixes() {
    let Some(g) = grammars() else { return };
    let tok = tokenizer();
    let values = ["red", "green", "grey", "blue"];
    let schema = json!({"enum": values});
    let texts: Vec<String> = values.iter().map(|v| format!("\"{v}\"")).collect();
    let mut rng = Rng(7);
    for _ in 0..6 {
        let mut c = g.compile(&Format::JsonSchema(schema.clone())).unwrap();
        let mut prefix = String::new();
        loop {
            let allowed = allowed_ids(&mut c);
            let complete = texts.contains(&prefix);
            let expected: Vec<u32> = (0..tok.vocab_size() as u32)
                .filter(|&id| {
                    if tok.is_eog(id) {
                        return complete;
                    }
                    if tok.token_attr(id) != Some(crate::tokens::TokenAttr::Normal) {
                        return false;
                    }
                    let Ok(piece) = std::str::from_utf8(tok.piece(id).unwrap()) else {
                        return false;
                    };
                    let next = format!("{prefix}{piece}");
                    !piece.is_empty() && texts.iter().any(|t| t.starts_with(&next))
                })
                .collect();
            // Exactly the valid continuations, except where the format forces the next bytes:
            // then llguidance offers only the canonical token for them (so the model reads
            // its usual tokenization), which must itself be one of the valid continuations.
            let forced = texts
                .iter()
                .filter(|t| t.starts_with(&prefix) && t.len() > prefix.len())
                .map(|t| &t[prefix.len()..])
                .collect::<Vec<_>>();
            let one_way = forced.len() == 1;
            if one_way && allowed.len() == 1 && !tok.is_eog(allowed[0]) {
                let piece = std::str::from_utf8(tok.piece(allowed[0]).unwrap()).unwrap();
                assert!(
                    forced[0].starts_with(piece),
                    "forced {piece:?} after {prefix:?}"
                );
                assert!(expected.contains(&allowed[0]));
            } else {
                assert_eq!(allowed, expected, "after {prefix:?}");
            }
            let text: Vec<u32> = allowed.into_iter().filter(|&i| !tok.is_eog(i)).collect();
            if text.is_empty() {
                assert!(complete);
                break;
            }
            let id = text[rng.below(text.len())];
            prefix.push_str(std::str::from_utf8(tok.piece(id).unwrap()).unwrap());
            if c.advance(id).unwrap() == Progress::Complete {
                assert!(texts.contains(&prefix), "{prefix:?} completed");
                break;
            }
        }
    }
}

#[test]
fn refs_and_any_of_hold() {
    let Some(g) = grammars() else { return };
    let tok = tokenizer();
    let schema = json!({
        "$defs": {
            "item": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 6},
                    "kind": {"enum": ["tool", "fruit"]},
                },
                "required": ["name", "kind"],
                "additionalProperties": false,
            }
        },
        "type": "object",
        "properties": {
            "items": {"type": "array", "items": {"$ref": "#/$defs/item"}, "maxItems": 3},
            "note": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 99}, {"type": "null"}]},
        },
        "required": ["items", "note"],
        "additionalProperties": false,
    });
    assert_walks_validate(&g, &tok, &schema, 11, 30);
}

/// A random schema of bounded size whose instances are short.
fn random_schema(rng: &mut Rng, depth: usize) -> Value {
    let pick = if depth == 0 {
        rng.below(5)
    } else {
        rng.below(8)
    };
    match pick {
        0 => json!({"type": "string", "minLength": rng.below(2), "maxLength": 2 + rng.below(6)}),
        1 => {
            let lo = rng.below(50) as i64 - 25;
            json!({"type": "integer", "minimum": lo, "maximum": lo + rng.below(500) as i64})
        }
        2 => json!({"type": "boolean"}),
        3 => {
            let values = [json!("a"), json!("bc"), json!(3), Value::Null];
            json!({"enum": values[..1 + rng.below(4)]})
        }
        4 => json!({"type": "null"}),
        5 => json!({
            "type": "array",
            "items": random_schema(rng, depth - 1),
            "minItems": rng.below(2),
            "maxItems": 2 + rng.below(2),
        }),
        6 => {
            let n = 1 + rng.below(3);
            let mut props = serde_json::Map::new();
            let mut required = vec![];
            for i in 0..n {
                let key = format!("k{i}");
                if rng.below(2) == 0 {
                    required.push(Value::String(key.clone()));
                }
                props.insert(key, random_schema(rng, depth - 1));
            }
            json!({"type": "object", "properties": props, "required": required,
                   "additionalProperties": false})
        }
        _ => json!({"anyOf": [random_schema(rng, depth - 1), random_schema(rng, depth - 1)]}),
    }
}

#[test]
fn random_schemas_give_only_valid_outputs() {
    let Some(g) = grammars() else { return };
    let tok = tokenizer();
    let mut rng = Rng(0x5eed);
    for round in 0..25 {
        let schema = random_schema(&mut rng, 3);
        assert_walks_validate(&g, &tok, &schema, 1000 + round, 6);
    }
}

#[test]
fn json_object_gives_an_object() {
    let Some(g) = grammars() else { return };
    let tok = tokenizer();
    let mut rng = Rng(3);
    let mut c = g.compile(&Format::JsonObject).unwrap();
    let first = allowed_ids(&mut c);
    assert!(first
        .iter()
        .all(|&i| tok.piece(i).unwrap().starts_with(b"{")));
    let mut ended = 0;
    for _ in 0..10 {
        let mut c = g.compile(&Format::JsonObject).unwrap();
        if let Some(text) = random_walk(&mut c, &tok, &mut rng, 300) {
            ended += 1;
            assert!(serde_json::from_str::<Value>(&text).unwrap().is_object());
        }
    }
    assert!(ended > 0);
}

#[test]
fn bad_schemas_are_errors_not_panics() {
    let Some(g) = grammars() else { return };
    for schema in [
        json!(5),
        json!({"type": "strin"}),
        json!({"$ref": "#/$defs/missing"}),
        json!({"type": "string", "minLength": 5, "maxLength": 2}),
        json!({"type": "integer", "minimum": 3, "maximum": 1}),
    ] {
        match g.compile(&Format::JsonSchema(schema.clone())) {
            Err(Error::InvalidInput(m)) => assert!(!m.is_empty()),
            Err(e) => panic!("{schema}: {e:?}"),
            Ok(_) => panic!("{schema} compiled"),
        }
    }
    assert!(matches!(
        g.compile(&Format::Lark("start: (".into())),
        Err(Error::InvalidInput(_))
    ));
}

#[test]
fn apply_masks_logits_and_refuses_what_it_did_not_allow() {
    let Some(g) = grammars() else { return };
    let tok = tokenizer();
    let mut c = g
        .compile(&Format::JsonSchema(json!({"type": "boolean"})))
        .unwrap();
    let mut logits = vec![1.0f32; tok.vocab_size() + 7];
    c.apply(&mut logits);
    let allowed = allowed_ids(&mut c);
    for (id, &l) in logits.iter().enumerate() {
        assert_eq!(l.is_finite(), allowed.contains(&(id as u32)), "id {id}");
    }
    // The reply may not end before the output is complete, nor take a token it refused.
    assert!(c.advance(tok.eog_ids()[0]).is_err());
    let mut c = g
        .compile(&Format::JsonSchema(json!({"type": "boolean"})))
        .unwrap();
    let brace = tok.encode_plain("{", false).unwrap()[0];
    assert!(c.advance(brace).is_err());
    // Once complete, only an end may follow.
    let mut c = g
        .compile(&Format::JsonSchema(json!({"type": "boolean"})))
        .unwrap();
    let mut last = Progress::Open;
    for id in tok.encode_plain("true", false).unwrap() {
        last = c.advance(id).unwrap();
    }
    let ids = allowed_ids(&mut c);
    assert!(ids.iter().all(|&i| tok.is_eog(i)), "{last:?}");
    assert!(c.is_accepting());
}
