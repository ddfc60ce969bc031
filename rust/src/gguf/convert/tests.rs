use super::super::tests::test_model_path;
use super::super::writer::write_header;
use std::borrow::Cow;

use super::super::value::{Array, Value};
use super::super::{keys, TensorInfo};
use super::gpt2::converted_token;
use super::*;

/// GPT-2's forward byte-to-unicode map, written out independently of the table above.
fn gpt2_byte_to_char(b: u8) -> char {
    let printable = matches!(b, b'!'..=b'~' | 0xa1..=0xac | 0xae..=0xff);
    if printable {
        return char::from(b);
    }
    let n = (0..b)
        .filter(|&x| !matches!(x, b'!'..=b'~' | 0xa1..=0xac | 0xae..=0xff))
        .count() as u32;
    char::from_u32(256 + n).unwrap()
}

#[test]
fn byte_to_unicode_inversion() {
    for b in 0..=255u8 {
        let c = gpt2_byte_to_char(b);
        assert_eq!(gpt2_char_to_byte(c), Some(b), "byte {b:#04x} as {c:?}");
    }
    // Exactly 256 characters map; nothing else does.
    let mapped = (0..0x400u32)
        .filter_map(char::from_u32)
        .filter(|&c| gpt2_char_to_byte(c).is_some())
        .count();
    assert_eq!(mapped, 256);
    assert_eq!(gpt2_char_to_byte('\u{0120}'), Some(b' '));
    assert_eq!(gpt2_char_to_byte('\u{010A}'), Some(b'\n'));
    assert_eq!(gpt2_char_to_byte('\u{0100}'), Some(0));
    assert_eq!(gpt2_char_to_byte('\u{0143}'), Some(0xad));
    assert_eq!(gpt2_char_to_byte('\n'), None);
    assert_eq!(gpt2_char_to_byte(' '), None);
    assert_eq!(gpt2_char_to_byte('\u{0144}'), None);
}

#[test]
fn tokens_to_raw_bytes() {
    let raw = |s: &str| gpt2_token_to_bytes(s.as_bytes()).into_owned();
    assert_eq!(raw("\u{0120}the"), b" the");
    assert_eq!(raw("\u{010A}"), b"\n");
    assert_eq!(raw("\u{010A}\u{010A}"), b"\n\n");
    assert_eq!(raw("\u{0120}\u{00C3}\u{00A9}"), " é".as_bytes());
    // Half of a UTF-8 sequence: raw bytes that are not UTF-8 themselves.
    assert_eq!(raw("\u{00C3}"), [0xc3]);
    assert_eq!(raw("<|im_start|>"), b"<|im_start|>");
    // Characters outside the byte alphabet: left alone.
    assert_eq!(raw("中"), "中".as_bytes());
    assert_eq!(raw("a b"), b"a b");
    assert!(matches!(gpt2_token_to_bytes(b"abc"), Cow::Borrowed(_)));
    assert_eq!(gpt2_token_to_bytes(&[0xff, 0xfe]).as_ref(), [0xff, 0xfe]);
    // Every byte round-trips through its one-character token.
    for b in 0..=255u8 {
        let token = gpt2_byte_to_char(b).to_string();
        assert_eq!(raw(&token), [b]);
    }
    // Only normal tokens are rewritten.
    assert_eq!(converted_token("\u{0120}a".as_bytes(), 1).as_ref(), b" a");
    assert_eq!(
        converted_token("\u{0120}a".as_bytes(), 3).as_ref(),
        "\u{0120}a".as_bytes()
    );
}

#[test]
fn merges_keep_space_and_newline_in_gpt2_form() {
    let m = |s: &str| gpt2_merge_to_bytes(s.as_bytes()).into_owned();
    assert_eq!(m("\u{0120} t"), "\u{0120} t".as_bytes());
    assert_eq!(
        m("\u{0120}\u{0120} \u{0120}"),
        "\u{0120}\u{0120} \u{0120}".as_bytes()
    );
    assert_eq!(m("\u{010A} \u{010A}"), "\u{010A} \u{010A}".as_bytes());
    assert_eq!(m("\u{0120}a b"), "\u{0120}a b".as_bytes());
    // Everything else becomes raw bytes: é's two UTF-8 bytes, tabs, control bytes.
    assert_eq!(m("\u{00C3} \u{00A9}"), [0xc3, b' ', 0xa9]);
    assert_eq!(m("\u{0109} \u{0109}"), b"\t \t");
    assert_eq!(
        m("\u{0120}\u{00C3} \u{00A9}"),
        [0xc4, 0xa0, 0xc3, b' ', 0xa9]
    );
    assert_eq!(m("\u{0100} a"), [0, b' ', b'a']);
    // Split at the first space after the first byte, like the 2023 loader.
    // (a raw space on the right is then kept as "Ġ", as the reference converter does).
    assert_eq!(m("a b c"), "a b\u{0120}c".as_bytes());
    // No separator: unchanged.
    assert_eq!(m("ab"), b"ab");
    assert!(matches!(gpt2_merge_to_bytes(b"i n"), Cow::Borrowed(_)));
}

// ---- synthetic models ---------------------------------------------------------------

fn strs(v: &[&str]) -> Value {
    Value::Array(Array::String(v.iter().map(|s| s.to_string()).collect()))
}

const TOKENS: [&str; 14] = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "\u{010A}",
    "\u{0120}",
    "a",
    "b",
    "\u{0120}a",
    "ab",
    "\u{00C3}\u{00A9}",
    "\u{0120}\u{0120}",
    "c",
    "\u{00C3}",
    "\u{00A9}",
];

fn base_kv() -> Vec<(String, Value)> {
    let mut types = vec![1i32; TOKENS.len()];
    types[..3].fill(3);
    vec![
        ("general.architecture".into(), Value::String("llama".into())),
        ("general.name".into(), Value::String("tiny".into())),
        ("llama.block_count".into(), Value::U32(2)),
        ("llama.context_length".into(), Value::U32(256)),
        ("llama.embedding_length".into(), Value::U32(32)),
        ("llama.feed_forward_length".into(), Value::U32(64)),
        ("llama.attention.head_count".into(), Value::U32(4)),
        ("llama.attention.head_count_kv".into(), Value::U32(2)),
        ("llama.rope.freq_base".into(), Value::F32(10000.0)),
        ("llama.rope.dimension_count".into(), Value::U32(8)),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Value::F32(1e-5),
        ),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("smollm".into())),
        ("tokenizer.ggml.tokens".into(), strs(&TOKENS)),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(Array::I32(types)),
        ),
        (
            "tokenizer.ggml.merges".into(),
            strs(&[
                "\u{0120} a",
                "a b",
                "\u{00C3} \u{00A9}",
                "\u{0120} \u{0120}",
            ]),
        ),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
        ("tokenizer.ggml.padding_token_id".into(), Value::U32(2)),
        ("misc.f64".into(), Value::F64(0.25)),
    ]
}

/// (name, dims, type) of a complete tiny llama, without output.weight (tied).
fn base_tensors() -> Vec<(String, Vec<u64>, u32)> {
    let v = TOKENS.len() as u64;
    let mut out = vec![
        ("token_embd.weight".to_string(), vec![32, v], 0),
        ("output_norm.weight".to_string(), vec![32], 0),
    ];
    for i in 0..2 {
        let b = |n: &str| format!("blk.{i}.{n}.weight");
        out.extend([
            (b("attn_norm"), vec![32], 0),
            (b("attn_q"), vec![32, 32], 8),
            (b("attn_k"), vec![32, 16], 8),
            (b("attn_v"), vec![32, 16], 1),
            (b("attn_output"), vec![32, 32], 3),
            (b("ffn_norm"), vec![32], 0),
            (b("ffn_gate"), vec![32, 64], 2),
            (b("ffn_down"), vec![64, 32], 7),
            (b("ffn_up"), vec![32, 64], 6),
        ]);
    }
    out
}

/// A GGUF image: header from the writer, then each tensor's data (a byte pattern that
/// differs per tensor) at 32-byte aligned offsets.
fn build(kv: &[(String, Value)], tensors: &[(String, Vec<u64>, u32)]) -> Vec<u8> {
    let mut infos = Vec::new();
    let mut offset = 0u64;
    for (name, dims, ty) in tensors {
        offset = offset.next_multiple_of(32);
        let info = TensorInfo {
            name: name.clone(),
            dims: dims.clone(),
            ggml_type: *ty,
            offset,
        };
        offset += info.byte_size().unwrap();
        infos.push(info);
    }
    let mut out = write_header(3, kv, &infos, 32);
    let base = out.len();
    for (i, t) in infos.iter().enumerate() {
        out.resize(base + t.offset as usize, 0);
        let n = t.byte_size().unwrap() as usize;
        out.extend((0..n).map(|j| (j * 7 + i * 13) as u8));
    }
    out
}

fn write_src(dir: &Path, bytes: &[u8]) -> PathBuf {
    let p = dir.join("src.gguf");
    fs::write(&p, bytes).unwrap();
    p
}

fn convert(src: &Path, dst: &Path) -> Result<ConvertReport> {
    convert_for_ctransformers(src, dst, &mut |_, _| {})
}

fn refused(kv: &[(String, Value)], tensors: &[(String, Vec<u64>, u32)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let src = write_src(dir.path(), &build(kv, tensors));
    let dst = dir.path().join("out.gguf");
    match convert(&src, &dst) {
        Err(Error::InvalidInput(m)) => {
            assert!(!dst.exists(), "nothing is written for a refused file");
            m
        }
        other => panic!("expected InvalidInput, got {other:?}"),
    }
}

fn set(kv: &mut Vec<(String, Value)>, key: &str, v: Value) {
    match kv.iter_mut().find(|(k, _)| k == key) {
        Some(e) => e.1 = v,
        None => kv.push((key.into(), v)),
    }
}

#[test]
fn converts_a_tiny_model() {
    let dir = tempfile::tempdir().unwrap();
    let src_bytes = build(&base_kv(), &base_tensors());
    let src = write_src(dir.path(), &src_bytes);
    let dst = dir.path().join("out.gguf");
    let mut calls = Vec::new();
    let report = convert_for_ctransformers(&src, &dst, &mut |d, t| calls.push((d, t))).unwrap();
    assert!(report.added_scores && report.added_output_weight);
    assert_eq!(report.n_tensors, base_tensors().len() + 1);
    assert_eq!(report.n_kv, base_kv().len() + 1);
    assert_eq!(report.tokens_rewritten, 7); // Ċ, Ġ, Ġa, Ã©, ĠĠ, Ã, ©: not the ASCII ones
    assert_eq!(report.merges_rewritten, 1); // only "Ã ©"
    assert!(report.normalized_keys.is_empty());
    assert_eq!(calls.first(), Some(&(0, report.tensor_bytes)));
    assert_eq!(
        calls.last(),
        Some(&(report.tensor_bytes, report.tensor_bytes))
    );
    assert!(calls.len() <= 103);

    let out = fs::read(&dst).unwrap();
    assert_eq!(out.len() as u64, report.output_bytes);
    assert_eq!(&out[4..8], &2u32.to_le_bytes());
    let meta = GgufMetadata::from_bytes(&out).unwrap();
    assert_eq!(meta.version(), 2);
    let src_meta = GgufMetadata::from_bytes(&src_bytes).unwrap();
    // Every source key is kept, in order, and the unchanged ones have equal values.
    let keys: Vec<&str> = meta.iter().map(|(k, _)| k).collect();
    let mut want: Vec<&str> = src_meta.iter().map(|(k, _)| k).collect();
    want.push(keys::SCORES);
    assert_eq!(keys, want);
    for (k, v) in src_meta.iter() {
        if k != keys::TOKENS && k != keys::MERGES {
            assert_eq!(meta.get(k), Some(v), "{k}");
        }
    }
    let scores = meta.scores().unwrap();
    assert_eq!(scores.len(), TOKENS.len());
    assert_eq!(scores[3], -3.0);
    // Raw tokens: the reader replaces non-UTF-8 with U+FFFD, so compare on valid ones.
    let toks = meta.tokens();
    assert_eq!(toks[0], "<|endoftext|>");
    assert_eq!(toks[3], "\n");
    assert_eq!(toks[4], " ");
    assert_eq!(toks[7], " a");
    assert_eq!(toks[9], "é");
    assert_eq!(toks[10], "  ");
    assert_eq!(toks[12], "\u{FFFD}"); // the lone byte 0xC3
    assert_eq!(
        meta.merges(),
        [
            "\u{0120} a",
            "a b",
            "\u{FFFD} \u{FFFD}",
            "\u{0120} \u{0120}"
        ]
    );
    let raw_merge = [0xc3, b' ', 0xa9];
    assert!(out.windows(3).any(|w| w == raw_merge));

    // Tensor data copied unchanged, aligned; output.weight equals token_embd.weight.
    let data = |m: &GgufMetadata, bytes: &'_ [u8], name: &str| -> Vec<u8> {
        let t = m.tensors().iter().find(|t| t.name == name).unwrap();
        assert_eq!(t.offset % m.alignment(), 0);
        let start = (m.data_offset() + t.offset) as usize;
        bytes[start..start + t.byte_size().unwrap() as usize].to_vec()
    };
    for (name, _, _) in base_tensors() {
        assert_eq!(data(&meta, &out, &name), data(&src_meta, &src_bytes, &name));
    }
    assert_eq!(
        data(&meta, &out, "output.weight"),
        data(&src_meta, &src_bytes, "token_embd.weight")
    );
    assert_eq!(out.len() as u64 % 32, 0);

    // A rerun writes the same bytes, and no temporary files are left behind.
    let dst2 = dir.path().join("again.gguf");
    convert(&src, &dst2).unwrap();
    assert_eq!(fs::read(&dst2).unwrap(), out);
    convert(&src, &dst).unwrap();
    assert_eq!(fs::read(&dst).unwrap(), out);
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");

    // Converting the output again changes nothing but keeps it loadable.
    let dst3 = dir.path().join("twice.gguf");
    let r3 = convert(&dst, &dst3).unwrap();
    assert!(!r3.added_scores && !r3.added_output_weight && r3.vocab_already_raw);
    assert!(!report.vocab_already_raw);
    assert_eq!(r3.tokens_rewritten, 0);
    assert_eq!(r3.merges_rewritten, 0);
    assert_eq!(fs::read(&dst3).unwrap(), out);
}

#[test]
fn normalizes_key_types_the_old_loader_reads() {
    let dir = tempfile::tempdir().unwrap();
    let mut kv = base_kv();
    set(&mut kv, "tokenizer.ggml.bos_token_id", Value::I32(1));
    set(&mut kv, "tokenizer.ggml.padding_token_id", Value::I32(-1));
    set(&mut kv, "llama.context_length", Value::U64(256));
    set(&mut kv, "llama.rope.freq_base", Value::F64(500000.0));
    set(
        &mut kv,
        "llama.rope.scaling.type",
        Value::String("linear".into()),
    );
    set(&mut kv, "llama.rope.scaling.factor", Value::F32(4.0));
    set(&mut kv, "general.alignment", Value::U64(32));
    let src = write_src(dir.path(), &build(&kv, &base_tensors()));
    let dst = dir.path().join("out.gguf");
    let report = convert(&src, &dst).unwrap();
    assert_eq!(
        report.normalized_keys,
        [
            "general.alignment",
            "llama.context_length",
            "llama.rope.freq_base",
            "tokenizer.ggml.bos_token_id",
            "tokenizer.ggml.padding_token_id",
        ]
    );
    assert_eq!(
        report.added_keys,
        ["llama.rope.scale_linear", "tokenizer.ggml.scores"]
    );
    let meta = GgufMetadata::from_path(&dst).unwrap();
    assert_eq!(
        meta.get("tokenizer.ggml.bos_token_id"),
        Some(&Value::U32(1))
    );
    assert_eq!(
        meta.get("tokenizer.ggml.padding_token_id"),
        Some(&Value::U32(u32::MAX))
    );
    assert_eq!(meta.get("llama.context_length"), Some(&Value::U32(256)));
    assert_eq!(
        meta.get("llama.rope.freq_base"),
        Some(&Value::F32(500000.0))
    );
    assert_eq!(meta.get("general.alignment"), Some(&Value::U32(32)));
    assert_eq!(meta.get("llama.rope.scale_linear"), Some(&Value::F32(4.0)));
}

#[test]
fn keeps_an_existing_output_weight_and_scores() {
    let dir = tempfile::tempdir().unwrap();
    let mut kv = base_kv();
    let scores: Vec<f32> = (0..TOKENS.len()).map(|i| i as f32 * 0.5).collect();
    set(
        &mut kv,
        keys::SCORES,
        Value::Array(Array::F32(scores.clone())),
    );
    let mut tensors = base_tensors();
    tensors.push(("output.weight".into(), vec![32, TOKENS.len() as u64], 8));
    let src = write_src(dir.path(), &build(&kv, &tensors));
    let dst = dir.path().join("out.gguf");
    let report = convert(&src, &dst).unwrap();
    assert!(!report.added_scores && !report.added_output_weight);
    let meta = GgufMetadata::from_path(&dst).unwrap();
    assert_eq!(meta.scores().unwrap(), scores);
    assert_eq!(meta.tensors().len(), tensors.len());
}

#[test]
fn llama_vocabulary_is_not_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let mut kv = base_kv();
    let mut tokens: Vec<String> = (0..TOKENS.len()).map(|i| format!("\u{2581}t{i}")).collect();
    tokens[3] = "<0x0A>".into();
    set(
        &mut kv,
        "tokenizer.ggml.model",
        Value::String("llama".into()),
    );
    set(
        &mut kv,
        keys::TOKENS,
        Value::Array(Array::String(tokens.clone())),
    );
    kv.retain(|(k, _)| k != keys::MERGES);
    let src = write_src(dir.path(), &build(&kv, &base_tensors()));
    let dst = dir.path().join("out.gguf");
    let report = convert(&src, &dst).unwrap();
    assert_eq!(report.tokenizer_model, "llama");
    assert_eq!(report.tokens_rewritten, 0);
    assert_eq!(GgufMetadata::from_path(&dst).unwrap().tokens(), tokens);

    tokens[3] = "x".into();
    set(&mut kv, keys::TOKENS, Value::Array(Array::String(tokens)));
    let m = refused(&kv, &base_tensors());
    assert!(m.contains("'<0x0A>'"), "{m}");
}

#[test]
fn refuses_what_the_old_loader_cannot_take() {
    let tensors = base_tensors();

    let mut kv = base_kv();
    set(
        &mut kv,
        "general.architecture",
        Value::String("qwen2".into()),
    );
    let m = refused(&kv, &tensors);
    assert!(m.contains("architecture 'qwen2' is not supported"), "{m}");
    assert!(
        m.contains("src.gguf cannot be converted for ctransformers"),
        "{m}"
    );

    let mut kv = base_kv();
    set(
        &mut kv,
        "tokenizer.ggml.model",
        Value::String("bert".into()),
    );
    let m = refused(&kv, &tensors);
    assert!(m.contains("tokenizer 'bert' is not supported"), "{m}");

    // Newer tensor types: BF16 (30), and Q8_1 (9), which had no weight kernels.
    let mut t = tensors.clone();
    t[2].2 = 30;
    t[3].2 = 9;
    let m = refused(&base_kv(), &t);
    assert!(m.contains("BF16 (ggml type 30)"), "{m}");
    assert!(m.contains("Q8_1 (ggml type 9)"), "{m}");
    assert!(m.contains(&t[2].0), "{m}");

    let mut t = tensors.clone();
    t.retain(|(n, _, _)| n != "blk.1.ffn_up.weight");
    let m = refused(&base_kv(), &t);
    assert!(
        m.contains("required tensors are missing: blk.1.ffn_up.weight"),
        "{m}"
    );

    let mut t = tensors.clone();
    t.push(("rope_freqs.weight".into(), vec![4], 0));
    let m = refused(&base_kv(), &t);
    assert!(m.contains("rope_freqs.weight (Llama 3.1"), "{m}");

    let mut t = tensors.clone();
    t[1].2 = 1; // output_norm as F16
    let m = refused(&base_kv(), &t);
    assert!(m.contains("norm weights must be F32"), "{m}");

    let mut t = tensors.clone();
    t[3].1 = vec![32, 16]; // attn_q with the k/v shape
    let m = refused(&base_kv(), &t);
    assert!(
        m.contains("'blk.0.attn_q.weight' is [32, 16], expected [32, 32]"),
        "{m}"
    );

    let mut kv = base_kv();
    set(&mut kv, "llama.rope.dimension_count", Value::U32(4));
    let m = refused(&kv, &tensors);
    assert!(m.contains("rope dimension count 4"), "{m}");

    let mut kv = base_kv();
    set(&mut kv, "llama.attention.head_count_kv", Value::U32(3));
    let m = refused(&kv, &tensors);
    assert!(m.contains("attention head counts 4 (query) and 3"), "{m}");

    let mut kv = base_kv();
    kv.retain(|(k, _)| k != "llama.attention.layer_norm_rms_epsilon");
    let m = refused(&kv, &tensors);
    assert!(
        m.contains("key 'llama.attention.layer_norm_rms_epsilon' is missing"),
        "{m}"
    );

    let mut kv = base_kv();
    set(
        &mut kv,
        "llama.feed_forward_length",
        Value::String("64".into()),
    );
    let m = refused(&kv, &tensors);
    assert!(
        m.contains("'llama.feed_forward_length' should be an unsigned 32-bit"),
        "{m}"
    );

    let mut kv = base_kv();
    set(
        &mut kv,
        "llama.rope.scaling.type",
        Value::String("yarn".into()),
    );
    let m = refused(&kv, &tensors);
    assert!(m.contains("rope scaling 'yarn' is not supported"), "{m}");

    let mut kv = base_kv();
    set(&mut kv, "llama.expert_count", Value::U32(8));
    let m = refused(&kv, &tensors);
    assert!(m.contains("mixture-of-experts"), "{m}");

    let mut kv = base_kv();
    set(&mut kv, "tokenizer.ggml.eos_token_id", Value::U32(500));
    let m = refused(&kv, &tensors);
    assert!(
        m.contains("'tokenizer.ggml.eos_token_id' is 500, but the vocabulary has 14"),
        "{m}"
    );

    let mut kv = base_kv();
    set(
        &mut kv,
        "misc.nested",
        Value::Array(Array::Array(vec![Array::U8(vec![1])])),
    );
    let m = refused(&kv, &tensors);
    assert!(m.contains("'misc.nested' holds an array of arrays"), "{m}");

    // No newline token: the old loader would crash at load time.
    let mut kv = base_kv();
    let mut toks = TOKENS.to_vec();
    toks[3] = "x";
    set(&mut kv, keys::TOKENS, strs(&toks));
    let m = refused(&kv, &tensors);
    assert!(m.contains("no newline token"), "{m}");

    let mut kv = base_kv();
    kv.retain(|(k, _)| k != keys::MERGES);
    let m = refused(&kv, &tensors);
    assert!(m.contains("'tokenizer.ggml.merges' is missing"), "{m}");

    // Several problems are all named.
    let mut kv = base_kv();
    set(&mut kv, "llama.expert_count", Value::U32(8));
    let mut t = tensors.clone();
    t[2].2 = 30;
    let m = refused(&kv, &t);
    assert!(
        m.contains("mixture-of-experts") && m.contains("BF16"),
        "{m}"
    );
}

#[test]
fn refuses_files_that_are_not_whole_ggufs() {
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join("out.gguf");
    let good = build(&base_kv(), &base_tensors());
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty.gguf", vec![], "empty"),
        (
            "text.gguf",
            b"hello, this is not a model".to_vec(),
            "not a GGUF file",
        ),
        ("head.gguf", good[..100].to_vec(), "cannot fit"),
        ("data.gguf", good[..good.len() - 10].to_vec(), "truncated"),
    ];
    for (name, bytes, want) in cases {
        let p = dir.path().join(name);
        fs::write(&p, bytes).unwrap();
        match convert(&p, &dst) {
            Err(Error::InvalidInput(m)) => {
                assert!(m.contains(want) && m.contains(name), "{name}: {m}")
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    match convert(&dir.path().join("missing.gguf"), &dst) {
        Err(Error::InvalidInput(m)) => assert!(m.contains("not found"), "{m}"),
        other => panic!("{other:?}"),
    }
    match convert(dir.path(), &dst) {
        Err(Error::InvalidInput(m)) => assert!(m.contains("directory"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(!dst.exists());
}

#[test]
fn cancelling_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let src = write_src(dir.path(), &build(&base_kv(), &base_tensors()));
    let dst = dir.path().join("out.gguf");
    let r = convert_for_ctransformers_cancellable(&src, &dst, &mut |d, _| d == 0);
    assert!(matches!(r, Err(Error::StateConflict(_))), "{r:?}");
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn converts_the_default_model() {
    let Some(src) = test_model_path() else {
        eprintln!("skipped: the default model is not installed");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join("model-ct.gguf");
    let report = convert(&src, &dst).unwrap();
    assert_eq!(report.tokenizer_model, "gpt2");
    assert_eq!(report.n_vocab, 49152);
    assert!(report.added_scores && report.added_output_weight);
    assert!(report.tokens_rewritten > 10_000);
    assert!(report.normalized_keys.is_empty());
    let meta = GgufMetadata::from_path(&dst).unwrap();
    let src_meta = GgufMetadata::from_path(&src).unwrap();
    assert_eq!(meta.tensors().len(), src_meta.tensors().len() + 1);
    assert!(meta.tokens().iter().any(|t| t == "\n"));
    assert!(meta.tokens().iter().any(|t| t == " the"));
    assert_eq!(meta.merges()[0], "\u{0120} t");
    let dst2 = dir.path().join("again.gguf");
    convert(&src, &dst2).unwrap();
    assert!(fs::read(&dst).unwrap() == fs::read(&dst2).unwrap());
}
