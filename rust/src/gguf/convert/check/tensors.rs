//! The tensor checks: the types, names and shapes the 2023 loader expects.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::super::super::TensorInfo;
use super::super::OLD_LLAMA_CPP_TYPES;
use super::{list, padded_dims, type_label, Checker, Hparams};

/// One tensor the old loader looks up: its name, its dims, and whether it must be F32.
type Expected = (String, Vec<u64>, bool);

/// Tensor types the 2023 ggml does not know.
pub(super) fn tensor_types(c: &mut Checker<'_>) {
    let meta = c.meta;
    let mut bad_types: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for t in meta.tensors() {
        if !OLD_LLAMA_CPP_TYPES.contains(&t.ggml_type) {
            bad_types
                .entry(t.ggml_type)
                .or_default()
                .push(t.name.clone());
        }
    }
    for (tag, names) in &bad_types {
        c.problem(format!(
            "tensor type {} is newer than the 2023 llama.cpp (used by {})",
            type_label(*tag),
            list(names, 3)
        ));
    }
}

/// Tensor names and shapes; returns whether `output.weight` must be added (tied embeddings).
pub(super) fn tensor_shapes(c: &mut Checker<'_>, hp: &Hparams, n_vocab: usize) -> bool {
    let meta = c.meta;
    let by_name: HashMap<&str, &TensorInfo> = meta
        .tensors()
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    let add_output = !by_name.contains_key("output.weight");
    // Without every size the expected shapes are unknown, and the missing keys are already
    // reported, so the tensors go unchecked.
    let (Some(n_embd), Some(n_ff), Some(n_head), Some(n_head_kv), Some(n_layer)) =
        (hp.n_embd, hp.n_ff, hp.n_head, hp.n_head_kv, hp.n_layer)
    else {
        return add_output;
    };
    let shapes_ok = head_geometry(c, n_embd, n_head, n_head_kv, hp.n_rot);
    if n_layer == 0 {
        c.problem("the model has no layers (block_count is 0)");
    }
    // With unusable head counts the key/value width is unknown; the shapes are then not
    // compared (see `compare`), only the names and types.
    let e = u64::from(n_embd);
    let e_gqa = if shapes_ok {
        e / u64::from(n_head / n_head_kv)
    } else {
        0
    };
    let dims = [e, u64::from(n_ff), n_vocab as u64, e_gqa];
    let expected = expected_tensors(dims, n_layer);
    compare(c, &by_name, &expected, shapes_ok);
    extra_tensors(c, &expected);
    add_output
}

/// The head counts the old attention code can split the embedding into; returns whether the
/// shapes that follow from them can be checked.
fn head_geometry(
    c: &mut Checker<'_>,
    n_embd: u32,
    n_head: u32,
    n_head_kv: u32,
    n_rot: Option<u32>,
) -> bool {
    if n_head == 0 || n_head_kv == 0 || !n_head.is_multiple_of(n_head_kv) {
        c.problem(format!(
            "attention head counts {n_head} (query) and {n_head_kv} (key/value) are not supported: the query count must be a positive multiple of the key/value count"
        ));
        return false;
    }
    if !n_embd.is_multiple_of(n_head) {
        c.problem(format!(
            "the embedding length {n_embd} is not a multiple of the head count {n_head}"
        ));
        return false;
    }
    if let Some(n_rot) = n_rot {
        if n_rot != n_embd / n_head {
            c.problem(format!(
                "rope dimension count {n_rot} differs from the head size {} (the 2023 loader requires them equal)",
                n_embd / n_head
            ));
        }
    }
    true
}

/// Every tensor the old llama loader looks up, in its order; `[e, f, v, e_gqa]` are the
/// embedding, feed-forward, vocabulary and key/value widths.
fn expected_tensors([e, f, v, e_gqa]: [u64; 4], n_layer: u32) -> Vec<Expected> {
    let mut expected: Vec<Expected> = vec![
        ("token_embd.weight".into(), vec![e, v], false),
        ("output_norm.weight".into(), vec![e], true),
        ("output.weight".into(), vec![e, v], false),
    ];
    for i in 0..n_layer {
        let b = |n: &str| format!("blk.{i}.{n}.weight");
        expected.extend([
            (b("attn_norm"), vec![e], true),
            (b("attn_q"), vec![e, e], false),
            (b("attn_k"), vec![e, e_gqa], false),
            (b("attn_v"), vec![e, e_gqa], false),
            (b("attn_output"), vec![e, e], false),
            (b("ffn_norm"), vec![e], true),
            (b("ffn_gate"), vec![e, f], false),
            (b("ffn_down"), vec![f, e], false),
            (b("ffn_up"), vec![e, f], false),
        ]);
    }
    expected
}

/// Compares the file's tensors with the expected ones, one problem per kind of mismatch.
fn compare(
    c: &mut Checker<'_>,
    by_name: &HashMap<&str, &TensorInfo>,
    expected: &[Expected],
    shapes_ok: bool,
) {
    let mut missing = Vec::new();
    let mut wrong_shape = Vec::new();
    let mut not_f32 = Vec::new();
    for (name, dims, f32_only) in expected {
        let Some(t) = by_name.get(name.as_str()) else {
            // A missing output is the tied embedding, which the conversion adds.
            if name != "output.weight" {
                missing.push(name.clone());
            }
            continue;
        };
        if shapes_ok && padded_dims(&t.dims) != padded_dims(dims) {
            wrong_shape.push(format!("'{name}' is {:?}, expected {dims:?}", t.dims));
        }
        if *f32_only && t.ggml_type != 0 {
            not_f32.push(format!("'{name}' is {}", type_label(t.ggml_type)));
        }
    }
    if !missing.is_empty() {
        c.problem(format!(
            "required tensors are missing: {}",
            list(&missing, 5)
        ));
    }
    if !wrong_shape.is_empty() {
        c.problem(format!(
            "tensors have shapes the 2023 loader does not expect: {}",
            list(&wrong_shape, 3)
        ));
    }
    if !not_f32.is_empty() {
        c.problem(format!(
            "norm weights must be F32 for the 2023 llama.cpp: {}",
            list(&not_f32, 3)
        ));
    }
}

/// Tensors beyond the expected ones: the old loader counts the tensors it used and refuses a
/// file with any left over.
fn extra_tensors(c: &mut Checker<'_>, expected: &[Expected]) {
    let known: HashSet<&str> = expected.iter().map(|(n, _, _)| n.as_str()).collect();
    let extra: Vec<String> = c
        .meta
        .tensors()
        .iter()
        .filter(|t| !known.contains(t.name.as_str()))
        .map(|t| match t.name.as_str() {
            "rope_freqs.weight" => "rope_freqs.weight (Llama 3.1-style rope scaling)".into(),
            n => n.to_owned(),
        })
        .collect();
    if !extra.is_empty() {
        c.problem(format!(
            "tensors the 2023 loader does not know (it refuses files with extra tensors): {}",
            list(&extra, 5)
        ));
    }
}
