use std::collections::HashMap;

use super::split::RegexSplit;
use super::*;
use crate::gguf::tests::test_model_path;
use crate::gguf::writer::write_header;
use crate::gguf::{Array, Value};

fn load_default() -> Option<Tokenizer> {
    let Some(path) = test_model_path() else {
        eprintln!("skipped: no model (set THREADLOOM_TEST_MODEL)");
        return None;
    };
    Some(Tokenizer::from_gguf(path).unwrap())
}

fn meta(kv: Vec<(&str, Value)>) -> GgufMetadata {
    let kv: Vec<(String, Value)> = kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    GgufMetadata::from_bytes(&write_header(3, &kv, &[], 32)).unwrap()
}

fn strings(v: &[String]) -> Value {
    Value::Array(Array::String(v.to_vec()))
}

use crate::testutil::Rng;

// ---------------------------------------------------------------------------------------------
// The default model against llama.cpp's own ids.

#[derive(serde::Deserialize)]
struct Golden {
    cases: Vec<GoldenCase>,
}

#[derive(serde::Deserialize)]
struct GoldenCase {
    text: String,
    ids: Vec<u32>,
    ids_plain: Option<Vec<u32>>,
}

fn golden() -> Golden {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/tokens_smollm2.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn matches_llama_cpp_on_the_golden_corpus() {
    let Some(tok) = load_default() else { return };
    let golden = golden();
    assert!(golden.cases.len() >= 2000);
    let mut mismatches = Vec::new();
    let mut plain_mismatches = Vec::new();
    for case in &golden.cases {
        let ids = tok.encode(&case.text, false).unwrap();
        if ids != case.ids {
            mismatches.push((&case.text, ids, &case.ids));
        }
        let want_plain = case.ids_plain.as_ref().unwrap_or(&case.ids);
        let plain = tok.encode_plain(&case.text, false).unwrap();
        if &plain != want_plain {
            plain_mismatches.push((&case.text, plain, want_plain));
        }
        assert_eq!(tok.count(&case.text, false).unwrap(), case.ids.len());
        // Byte-level BPE loses nothing: decoding gives the text back.
        assert_eq!(tok.decode(&case.ids).unwrap(), case.text);
    }
    for (text, got, want) in mismatches.iter().chain(&plain_mismatches).take(10) {
        eprintln!("MISMATCH {text:?}\n  got  {got:?}\n  want {want:?}");
    }
    assert_eq!(
        (mismatches.len(), plain_mismatches.len()),
        (0, 0),
        "of {} cases",
        golden.cases.len()
    );
}

#[test]
fn batch_matches_single() {
    let Some(tok) = load_default() else { return };
    let golden = golden();
    let texts: Vec<&str> = golden.cases.iter().map(|c| c.text.as_str()).collect();
    let ids = tok.encode_batch(&texts, false).unwrap();
    let counts = tok.count_batch(&texts, false).unwrap();
    for (i, case) in golden.cases.iter().enumerate() {
        assert_eq!(ids[i], case.ids);
        assert_eq!(counts[i], case.ids.len());
    }
}

#[test]
fn default_model_properties() {
    let Some(tok) = load_default() else { return };
    assert_eq!(tok.kind(), VocabKind::Bpe);
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(
        tok.encode("<|im_start|>user\nhi<|im_end|>", false).unwrap()[0],
        1
    );
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(2));
    assert_eq!(tok.token_attr(2), Some(TokenAttr::Control));
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_id(), Some(2));
    assert!(!tok.add_bos());
    // add_bos_token is false in this file, so add_special changes nothing.
    assert_eq!(
        tok.encode("hi", true).unwrap(),
        tok.encode("hi", false).unwrap()
    );
    assert!(tok.is_eog(2), "<|im_end|> ends a turn");
    assert!(tok.is_eog(0), "<|endoftext|> ends a turn");
    assert!(!tok.is_eog(1));
    assert!(tok.decode(&[49152]).is_err());
    assert_eq!(tok.piece(198), Some(&b"\n"[..]));
    // The fingerprint is a pure function of the file.
    let again = Tokenizer::from_gguf(test_model_path().unwrap()).unwrap();
    assert_eq!(tok.fingerprint(), again.fingerprint());
}

#[test]
fn long_inputs_split_like_llama_cpp() {
    let Some(tok) = load_default() else { return };
    // A backtracking regex engine would give up on runs this long; the split must not.
    let text = format!("{}x{}", " ".repeat(200_000), "\n".repeat(100_000));
    let ids = tok.encode(&text, false).unwrap();
    assert_eq!(tok.decode(&ids).unwrap(), text);
    // The run minus one space, then " x", as `\s+(?!\S)` splits it.
    let tail = tok.encode(" x", false).unwrap();
    assert!(ids.windows(tail.len()).any(|w| w == tail));
    let word = "a".repeat(100_000);
    assert_eq!(
        tok.decode(&tok.encode(&word, false).unwrap()).unwrap(),
        word
    );
}

// ---------------------------------------------------------------------------------------------
// The look-ahead rewrite against a real backtracking engine.

fn pieces(matches: &[(usize, usize)], len: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut prev = 0;
    for &(s, e) in matches {
        if prev != s {
            out.push((prev, s));
        }
        out.push((s, e));
        prev = e;
    }
    if prev != len {
        out.push((prev, len));
    }
    out
}

#[test]
fn regex_rewrite_matches_fancy_regex() {
    let patterns = [
        r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
        r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ];
    let alphabet: Vec<char> = " \t\n\r\u{a0}\u{3000}aZé日1٣'sSltvxr.,!-(\u{301}👍"
        .chars()
        .collect();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for pattern in patterns {
        let ours = RegexSplit::new(pattern).unwrap();
        let reference = fancy_regex::Regex::new(pattern).unwrap();
        for _ in 0..3000 {
            let len = rng.below(24);
            let text: String = (0..len)
                .map(|_| alphabet[rng.below(alphabet.len())])
                .collect();
            let want: Vec<(usize, usize)> = reference
                .find_iter(&text)
                .map(|m| m.unwrap())
                .map(|m| (m.start(), m.end()))
                .collect();
            // The pieces (matches and the gaps between them) are what must agree: a lone
            // whitespace character is a match for us and a gap for the original, which splits
            // the same way.
            assert_eq!(
                pieces(&ours.matches(&text), text.len()),
                pieces(&want, text.len()),
                "{pattern} on {text:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A small byte-level BPE vocabulary built in memory.

fn tiny_bpe(pre: &str, extra: Vec<(&str, Value)>) -> Tokenizer {
    let decode = super::vocab::byte_level_decoder();
    // All 256 byte symbols, then a few merges, then specials.
    let mut tokens: Vec<String> = (0u32..324)
        .filter_map(char::from_u32)
        .filter(|&c| decode(c).is_some())
        .map(String::from)
        .collect();
    assert_eq!(tokens.len(), 256);
    let merges = ["h e", "l l", "he ll", "hell o", "Ġ w", "Ġw o"];
    for m in merges {
        tokens.push(m.replace(' ', ""));
    }
    tokens.push("<|im_start|>".into());
    tokens.push("<|im_end|>".into());
    tokens.push("<tool>".into());
    let n = tokens.len();
    let mut types = vec![1i32; n];
    types[n - 3] = 3;
    types[n - 2] = 1; // a control-looking token left as normal by a converter
    types[n - 1] = 4;
    let mut kv = vec![
        ("general.architecture", Value::String("llama".into())),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String(pre.into())),
        ("tokenizer.ggml.tokens", strings(&tokens)),
        ("tokenizer.ggml.token_type", Value::Array(Array::I32(types))),
        ("tokenizer.ggml.merges", strings(&merges.map(String::from))),
        ("tokenizer.ggml.bos_token_id", Value::U32((n - 3) as u32)),
        ("tokenizer.ggml.eos_token_id", Value::U32((n - 2) as u32)),
    ];
    kv.extend(extra);
    Tokenizer::from_metadata(&meta(kv)).unwrap()
}

#[test]
fn bpe_specials_and_flags() {
    let tok = tiny_bpe("smollm", vec![]);
    let n = tok.vocab_size() as u32;
    let (start, end, tool) = (n - 3, n - 2, n - 1);
    let hello = tok.token_to_id("hello").unwrap();
    assert_eq!(tok.encode("hello", false).unwrap(), [hello]);
    // "<|im_end|>" is typed normal in the file but llama.cpp forces it to control.
    assert_eq!(tok.token_attr(end), Some(TokenAttr::Control));
    let ids = tok
        .encode("<|im_start|>hello<|im_end|><tool>", false)
        .unwrap();
    assert_eq!(ids, [start, hello, end, tool]);
    // Without special parsing, control tokens are text but user-defined ones still match.
    let plain = tok.encode_plain("<|im_start|><tool>", false).unwrap();
    assert!(plain.len() > 2 && !plain.contains(&start));
    assert_eq!(plain.last(), Some(&tool));
    assert_eq!(
        tok.decode(&ids).unwrap(),
        "<|im_start|>hello<|im_end|><tool>"
    );
    assert_eq!(tok.eog_ids(), [end]);
    assert!(!tok.add_bos());

    let with_bos = tiny_bpe(
        "smollm",
        vec![("tokenizer.ggml.add_bos_token", Value::Bool(true))],
    );
    assert_eq!(with_bos.encode("hello", true).unwrap(), [start, hello]);
    assert_eq!(with_bos.count("hello", true).unwrap(), 2);
    assert_eq!(with_bos.count("hello", false).unwrap(), 1);
    assert_ne!(with_bos.fingerprint(), tok.fingerprint());
    // llama-bpe defaults add_bos to true.
    assert!(tiny_bpe("llama-bpe", vec![]).add_bos());
    assert_ne!(
        tiny_bpe("llama-bpe", vec![]).fingerprint(),
        tiny_bpe("qwen2", vec![]).fingerprint()
    );
    assert_eq!(
        tiny_bpe("smollm", vec![]).fingerprint(),
        tok.fingerprint(),
        "deterministic"
    );
}

#[test]
fn bpe_pre_tokenizers_split_digits_as_llama_cpp() {
    let text = "12345 abc";
    // smollm: every digit alone; llama3: groups of three; gpt-2: whole runs.
    let smol = tiny_bpe("smollm", vec![]).encode(text, false).unwrap();
    let llama3 = tiny_bpe("llama-bpe", vec![]).encode(text, false).unwrap();
    let gpt2 = tiny_bpe("gpt-2", vec![]).encode(text, false).unwrap();
    // No digit merges exist in the tiny vocabulary, so the split only shows in the decode;
    // all must round-trip.
    for ids in [&smol, &llama3, &gpt2] {
        assert_eq!(tiny_bpe("smollm", vec![]).decode(ids).unwrap(), text);
    }
    let e = Tokenizer::from_metadata(&meta(vec![
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("no-such-pre".into())),
        ("tokenizer.ggml.tokens", strings(&["a".to_owned()])),
        ("tokenizer.ggml.merges", strings(&[])),
    ]))
    .unwrap_err();
    assert!(
        matches!(e, Error::Model(ref m) if m.contains("no-such-pre")),
        "{e:?}"
    );
}

#[test]
fn rejects_unsupported_vocabularies() {
    for (model, tokens) in [("bert", vec!["a".to_owned()]), ("llama", vec![])] {
        let e = Tokenizer::from_metadata(&meta(vec![
            ("tokenizer.ggml.model", Value::String(model.into())),
            ("tokenizer.ggml.tokens", strings(&tokens)),
        ]))
        .unwrap_err();
        assert!(matches!(e, Error::Model(_)), "{e:?}");
    }
    let e = Tokenizer::from_metadata(&meta(vec![])).unwrap_err();
    assert!(matches!(e, Error::Model(_)));
}

// ---------------------------------------------------------------------------------------------
// A small SentencePiece vocabulary, checked against a direct port of llama.cpp's SPM tokenizer
// (`llm_tokenizer_spm_session`). No SentencePiece GGUF model is available to record real ids.

struct SpmVocab {
    tokens: Vec<String>,
    scores: Vec<f32>,
    types: Vec<i32>,
}

fn spm_vocab() -> SpmVocab {
    let mut tokens = vec!["<unk>".to_owned(), "<s>".to_owned(), "</s>".to_owned()];
    let mut types = vec![2, 3, 3];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
    }
    let pieces = [
        "▁", "a", "b", "c", "é", "▁a", "ab", "bc", "ca", "▁ab", "abc", "▁abc", "▁▁", "aa", "▁b",
        "cab", "bca", "▁c", "ba", "▁▁a", "é▁", "<|user|>",
    ];
    let mut scores = vec![0.0f32; tokens.len()];
    for (i, p) in pieces.iter().enumerate() {
        tokens.push((*p).to_owned());
        // Distinct scores, not monotone in length, so merge order matters.
        scores.push(-((i * 7 % 23) as f32) - 1.0);
        types.push(if *p == "<|user|>" { 4 } else { 1 });
    }
    SpmVocab {
        tokens,
        scores,
        types,
    }
}

/// llama.cpp's SPM algorithm, transcribed: merge the adjacent pair whose concatenation is the
/// best-scoring token (ties: leftmost), then resegment and fall back to byte tokens.
fn reference_spm(v: &SpmVocab, text: &str, add_space_prefix: bool) -> Vec<u32> {
    let id_of = |s: &str| v.tokens.iter().rposition(|t| t == s).map(|i| i as u32);
    let specials: Vec<&str> = vec!["<unk>", "<s>", "</s>", "<|user|>"];
    // Partition out special tokens (longest first), as tokenizer_st_partition does.
    let mut frags: Vec<std::result::Result<String, u32>> = vec![Ok(text.to_owned())];
    let mut sorted = specials.clone();
    sorted.sort_by_key(|s| std::cmp::Reverse(s.len()));
    for sp in sorted {
        let id = id_of(sp).unwrap();
        let mut next = Vec::new();
        for f in frags {
            match f {
                Ok(t) => {
                    let mut rest = t.as_str();
                    while let Some(p) = rest.find(sp) {
                        if p > 0 {
                            next.push(Ok(rest[..p].to_owned()));
                        }
                        next.push(Err(id));
                        rest = &rest[p + sp.len()..];
                    }
                    if !rest.is_empty() {
                        next.push(Ok(rest.to_owned()));
                    }
                }
                Err(id) => next.push(Err(id)),
            }
        }
        frags = next;
    }
    let mut out = Vec::new();
    let mut prev_special = true;
    for f in frags {
        match f {
            Err(id) => {
                out.push(id);
                prev_special = true;
            }
            Ok(t) => {
                let t = if add_space_prefix && prev_special {
                    format!(" {t}")
                } else {
                    t
                };
                let t = t.replace(' ', "▁");
                prev_special = false;
                let mut syms: Vec<String> = t.chars().map(String::from).collect();
                loop {
                    let mut best: Option<(f32, usize)> = None;
                    for i in 0..syms.len().saturating_sub(1) {
                        let cat = format!("{}{}", syms[i], syms[i + 1]);
                        if let Some(id) = id_of(&cat) {
                            let s = v.scores[id as usize];
                            if best.is_none_or(|(bs, _)| s > bs) {
                                best = Some((s, i));
                            }
                        }
                    }
                    let Some((_, i)) = best else { break };
                    let right = syms.remove(i + 1);
                    syms[i].push_str(&right);
                }
                for s in syms {
                    match id_of(&s) {
                        Some(id) => out.push(id),
                        None => {
                            for b in s.bytes() {
                                out.push(id_of(&format!("<0x{b:02X}>")).unwrap());
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

fn spm_tokenizer(v: &SpmVocab, extra: Vec<(&str, Value)>) -> Tokenizer {
    let mut kv = vec![
        ("tokenizer.ggml.model", Value::String("llama".into())),
        ("tokenizer.ggml.tokens", strings(&v.tokens)),
        (
            "tokenizer.ggml.scores",
            Value::Array(Array::F32(v.scores.clone())),
        ),
        (
            "tokenizer.ggml.token_type",
            Value::Array(Array::I32(v.types.clone())),
        ),
    ];
    kv.extend(extra);
    Tokenizer::from_metadata(&meta(kv)).unwrap()
}

#[test]
fn spm_matches_the_reference_algorithm() {
    let v = spm_vocab();
    let alphabet: Vec<&str> = vec!["a", "b", "c", " ", "é", "\n", "x", "日", "<s>", "<|user|>"];
    for add_space_prefix in [true, false] {
        let tok = spm_tokenizer(
            &v,
            vec![(
                "tokenizer.ggml.add_space_prefix",
                Value::Bool(add_space_prefix),
            )],
        );
        assert_eq!(tok.kind(), VocabKind::Spm);
        let mut rng = Rng(0xfeed_beef_1234_5678);
        for _ in 0..3000 {
            let n = rng.below(14);
            let text: String = (0..n)
                .map(|_| alphabet[rng.below(alphabet.len())])
                .collect();
            let want = reference_spm(&v, &text, add_space_prefix);
            let got = tok.encode(&text, false).unwrap();
            assert_eq!(got, want, "{text:?} (add_space_prefix {add_space_prefix})");
            // Decoding undoes the escaping and the prefix space (llama.cpp also adds a space
            // after each special token, which decoding keeps).
            if !text.contains('<') {
                assert_eq!(tok.decode(&got).unwrap(), text);
            }
        }
    }
}

#[test]
fn spm_special_defaults() {
    let v = spm_vocab();
    let tok = spm_tokenizer(&v, vec![]);
    // llama.cpp's SentencePiece defaults: BOS 1, EOS 2, add BOS.
    assert_eq!(
        (tok.bos_id(), tok.eos_id(), tok.add_bos()),
        (Some(1), Some(2), true)
    );
    let ids = tok.encode("ab", true).unwrap();
    assert_eq!(ids[0], 1);
    assert_eq!(tok.count("ab", true).unwrap(), ids.len());
    assert_eq!(tok.decode(&ids).unwrap(), "<s> ab");
    assert!(tok.is_eog(2));
}

// ---------------------------------------------------------------------------------------------
// The fast path against the `tokenizers` pipeline it replaces, and segment independence.

/// Random text from an alphabet chosen to exercise the split regexes (letters, digits, runs of
/// mixed whitespace, CRLF, contractions, punctuation, combining marks, emoji, CJK) and pieces of
/// special-token text.
fn random_text(rng: &mut Rng, specials: &[&str], max_parts: usize) -> String {
    const PARTS: &[&str] = &[
        " ",
        "  ",
        "   ",
        "\t",
        "\n",
        "\n\n",
        "\r\n",
        " \n",
        "\u{a0}",
        "\u{3000}",
        "a",
        "Z",
        "the",
        " the",
        "Hello",
        "é",
        "e\u{301}",
        "日本",
        "语",
        "١٢٣",
        "0",
        "12",
        "345",
        "'s",
        "'S",
        "'ll",
        "'",
        ".",
        ",",
        "!",
        "?!",
        "...",
        "-",
        "(",
        ")",
        "{",
        "}",
        "::",
        "=>",
        "$",
        "+",
        "<",
        ">",
        "|",
        "_",
        "👍",
        "🏳️‍🌈",
        "x",
        "def",
        "    return",
        "\u{200b}",
        "ß",
        "Ωμ",
        "<|",
        "|>",
        "im_",
    ];
    let n = rng.below(max_parts + 1);
    let mut out = String::new();
    for _ in 0..n {
        if !specials.is_empty() && rng.below(12) == 0 {
            out.push_str(specials[rng.below(specials.len())]);
        } else {
            out.push_str(PARTS[rng.below(PARTS.len())]);
        }
    }
    out
}

fn reference_ids(inner: &super::Inner, text: &str) -> Vec<u32> {
    inner.encode_fast(text, false).unwrap().get_ids().to_vec()
}

/// Encodes with every public path and checks they agree with the reference pipelines.
fn check_against_reference(tok: &Tokenizer, texts: &[String]) {
    let special = tok.reference_pipeline(true);
    let plain = tok.reference_pipeline(false);
    for text in texts {
        let want = reference_ids(&special, text);
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(ids, want, "encode {text:?}");
        assert_eq!(
            tok.count(text, false).unwrap(),
            want.len(),
            "count {text:?}"
        );
        assert_eq!(
            tok.encode_plain(text, false).unwrap(),
            reference_ids(&plain, text),
            "encode_plain {text:?}"
        );
        // Segment by segment, through the public pieces a cache would use.
        let seg = tok
            .encode_segmented(text, false, &[], |t, out| tok.encode_segment(t, out))
            .unwrap();
        assert_eq!(seg, want, "segmented {text:?}");
    }
}

#[test]
fn fast_path_matches_the_tokenizers_pipeline_on_the_golden_corpus() {
    let Some(tok) = load_default() else { return };
    let texts: Vec<String> = golden().cases.into_iter().map(|c| c.text).collect();
    check_against_reference(&tok, &texts);
}

#[test]
fn fast_path_matches_the_tokenizers_pipeline_on_random_text() {
    let Some(tok) = load_default() else { return };
    let specials = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<repo_name>"];
    let mut rng = Rng(0x005e_ed0f_f00d);
    let texts: Vec<String> = (0..3000)
        .map(|_| random_text(&mut rng, &specials, 40))
        .collect();
    check_against_reference(&tok, &texts);
    // Long texts, past the piece cache's length limit and with long whitespace runs.
    let long: Vec<String> = (0..20)
        .map(|_| random_text(&mut rng, &specials, 3000))
        .chain([
            "a".repeat(1000),
            " ".repeat(700) + "x",
            "\n".repeat(600) + "y  z",
        ])
        .collect();
    check_against_reference(&tok, &long);
}

#[test]
fn fast_path_matches_for_every_pre_tokenizer_family() {
    let mut rng = Rng(0xabad_1dea);
    let specials = ["<|im_start|>", "<|im_end|>", "<tool>"];
    let texts: Vec<String> = (0..1500)
        .map(|_| random_text(&mut rng, &specials, 30))
        .chain([
            "hello".to_owned(),
            "hell".to_owned(),
            " wo hello".to_owned(),
        ])
        .collect();
    // smollm, gpt-2, llama3 (ignore_merges), qwen2 and llama.cpp's default.
    for pre in ["smollm", "gpt-2", "llama-bpe", "qwen2", "default"] {
        check_against_reference(&tiny_bpe(pre, vec![]), &texts);
    }
}

#[test]
fn spm_fast_path_matches_the_pipeline_and_is_segment_independent() {
    let v = spm_vocab();
    let alphabet: Vec<&str> = vec![
        "a", "b", "c", " ", "é", "\n", "x", "日", "<s>", "<|user|>", "ab", "  ",
    ];
    let mut rng = Rng(0x0dd_ba11);
    let texts: Vec<String> = (0..2000)
        .map(|_| {
            let n = rng.below(20);
            (0..n)
                .map(|_| alphabet[rng.below(alphabet.len())])
                .collect()
        })
        .collect();
    for add_space_prefix in [true, false] {
        let tok = spm_tokenizer(
            &v,
            vec![(
                "tokenizer.ggml.add_space_prefix",
                Value::Bool(add_space_prefix),
            )],
        );
        check_against_reference(&tok, &texts);
        // And the segmented encode is llama.cpp's (the space prefix goes on every segment).
        for text in &texts {
            let seg = tok
                .encode_segmented(text, false, &[], |t, out| tok.encode_segment(t, out))
                .unwrap();
            assert_eq!(seg, reference_spm(&v, text, add_space_prefix), "{text:?}");
        }
    }
}

#[test]
fn segments_concatenate_to_the_full_encoding() {
    let Some(tok) = load_default() else { return };
    let golden = golden();
    // Each golden case alone, and all of them joined into chat-like prompts, where every
    // segment's ids come from a cache filled by earlier prompts.
    let mut cache: HashMap<String, Vec<u32>> = HashMap::new();
    let mut cached = |t: &str, out: &mut Vec<u32>| -> Result<()> {
        if let Some(ids) = cache.get(t) {
            out.extend_from_slice(ids);
        } else {
            let start = out.len();
            tok.encode_segment(t, out)?;
            cache.insert(t.to_owned(), out[start..].to_vec());
        }
        Ok(())
    };
    for case in &golden.cases {
        let seg = tok
            .encode_segmented(&case.text, false, &[], &mut cached)
            .unwrap();
        assert_eq!(seg, case.ids, "{:?}", case.text);
    }
    let mut prompt = String::new();
    for (i, case) in golden.cases.iter().enumerate() {
        let role = ["system", "user", "assistant"][i % 3];
        prompt.push_str(&format!("<|im_start|>{role}\n{}<|im_end|>\n", case.text));
        if i % 97 == 0 {
            let full = tok.encode(&prompt, true).unwrap();
            let seg = tok
                .encode_segmented(&prompt, true, &[], &mut cached)
                .unwrap();
            assert_eq!(seg, full);
        }
    }
}

#[test]
fn batches_match_single_calls_in_parallel_and_serially() {
    let Some(tok) = load_default() else { return };
    let golden = golden();
    // Large enough to go to the thread pool, repeated so the threads' caches are warm too.
    let texts: Vec<String> = golden.cases.iter().map(|c| c.text.repeat(3)).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    assert!(Tokenizer::parallel(&refs));
    for _ in 0..2 {
        let ids = tok.encode_batch(&refs, true).unwrap();
        let counts = tok.count_batch(&refs, true).unwrap();
        for (i, t) in refs.iter().enumerate() {
            let want = tok.encode(t, true).unwrap();
            assert_eq!(ids[i], want);
            assert_eq!(counts[i], want.len());
        }
    }
    let few = &refs[..3];
    assert!(!Tokenizer::parallel(few));
    assert_eq!(tok.count_batch(few, false).unwrap().len(), 3);
    assert!(tok.count_batch(&[], false).unwrap().is_empty());
}

#[test]
fn piece_cache_stays_exact_past_its_size() {
    let Some(tok) = load_default() else { return };
    let reference = tok.reference_pipeline(true);
    // More distinct pre-tokens than two cache generations hold, then the first ones again.
    let words: Vec<String> = (0..40_000u32)
        .map(|i| {
            let mut x = i.wrapping_mul(2_654_435_761);
            let mut w = String::from(" ");
            for _ in 0..5 {
                w.push(char::from(b'a' + (x % 26) as u8));
                x /= 26;
            }
            w
        })
        .collect();
    for pass in 0..2 {
        for (i, w) in words.iter().enumerate() {
            if pass == 1 && i % 7 != 0 {
                continue;
            }
            assert_eq!(tok.encode(w, false).unwrap(), reference_ids(&reference, w));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The hand-written split scanners against the original regexes.

#[test]
fn scanners_match_fancy_regex() {
    use super::scan::Scanner;
    let patterns = [
        r"\p{N}",
        super::pre::GPT2,
        super::pre::LLAMA3,
        super::pre::QWEN2,
        // GPT-2's pattern as llama.cpp writes it, with the trailing `\s+`.
        r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",
    ];
    let alphabet: Vec<char> =
        " \t\n\r\u{b}\u{c}\u{85}\u{a0}\u{2028}\u{3000}aZé日1٣²Ⅻ'sSltTvVxrRmMdDeEL.,!-(\u{301}👍\u{1f3fb}𝐀"
            .chars()
            .collect();
    let mut rng = Rng(0x7777_1234_abcd_0001);
    for pattern in patterns {
        let scanner = Scanner::for_pattern(pattern).unwrap_or(Scanner::Gpt2);
        let reference = fancy_regex::Regex::new(pattern).unwrap();
        for _ in 0..20_000 {
            let len = rng.below(16);
            let text: String = (0..len)
                .map(|_| alphabet[rng.below(alphabet.len())])
                .collect();
            let want: Vec<(usize, usize)> = reference
                .find_iter(&text)
                .map(|m| m.unwrap())
                .map(|m| (m.start(), m.end()))
                .collect();
            let mut got = Vec::new();
            scanner.for_each_piece(&text, |p| {
                let start = p.as_ptr() as usize - text.as_ptr() as usize;
                got.push((start, start + p.len()));
            });
            assert_eq!(got, pieces(&want, text.len()), "{pattern} on {text:?}");
        }
    }
}

#[test]
fn character_classes_match_the_regex_crate() {
    use super::scan::{class, Class};
    let letter = regex::Regex::new(r"\A\p{L}\z").unwrap();
    let number = regex::Regex::new(r"\A\p{N}\z").unwrap();
    let space = regex::Regex::new(r"\A\s\z").unwrap();
    let mut buf = [0u8; 4];
    for cp in (0u32..0x3_0000)
        .chain(0xe_0000..0xe_0100)
        .chain([0x10_fffd])
    {
        let Some(c) = char::from_u32(cp) else {
            continue;
        };
        let s = c.encode_utf8(&mut buf);
        let want = if letter.is_match(s) {
            Class::Letter
        } else if number.is_match(s) {
            Class::Number
        } else if space.is_match(s) {
            Class::Space
        } else {
            Class::Other
        };
        assert_eq!(class(c), want, "U+{cp:04X}");
    }
}

#[test]
fn scanned_pretokens_match_the_regex_path_on_the_golden_corpus() {
    for pre in ["smollm", "gpt-2", "llama-bpe", "qwen2", "default"] {
        let info = super::pre::lookup(pre).unwrap();
        let split = LlamaPreTokenizer::new(info.regexes).unwrap();
        for case in golden().cases {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            split.for_each_pretoken(&case.text, &mut |p| a.push(p.to_owned()));
            split.for_each_pretoken_regex(&case.text, &mut |p| b.push(p.to_owned()));
            assert_eq!(a, b, "{pre} on {:?}", case.text);
        }
    }
}
