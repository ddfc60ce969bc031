//! Serializes a GGUF header (key/values and tensor table) in the layout the reader parses. Used
//! by tests to build files in memory, and by the model converter to write rewritten headers.

use super::tensor::TensorInfo;
use super::value::{Array, Value};

/// Appends a count or length: u32 in GGUF v1, u64 from v2 on.
pub fn put_count(out: &mut Vec<u8>, n: usize, version: u32) {
    if version >= 2 {
        out.extend_from_slice(&(n as u64).to_le_bytes());
    } else {
        out.extend_from_slice(&(n as u32).to_le_bytes());
    }
}

/// Appends a length-prefixed string. Takes bytes, so a converter can write strings that are not
/// UTF-8 (the 2023 llama.cpp keeps BPE tokens as raw bytes).
pub fn put_string(out: &mut Vec<u8>, s: &[u8], version: u32) {
    put_count(out, s.len(), version);
    out.extend_from_slice(s);
}

/// Appends one value's payload (not its type tag) in GGUF layout.
pub fn write_value(out: &mut Vec<u8>, value: &Value, version: u32) {
    match value {
        Value::U8(v) => out.push(*v),
        Value::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::Bool(v) => out.push(u8::from(*v)),
        Value::String(s) => put_string(out, s.as_bytes(), version),
        Value::Array(a) => write_array(out, a, version),
        Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
    }
}

/// Appends an array (element type tag, count, elements) in GGUF layout.
pub fn write_array(out: &mut Vec<u8>, array: &Array, version: u32) {
    out.extend_from_slice(&array.element_type().tag().to_le_bytes());
    put_count(out, array.len(), version);
    macro_rules! each {
        ($v:expr) => {
            for x in $v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    match array {
        Array::U8(v) => out.extend_from_slice(v),
        Array::I8(v) => each!(v),
        Array::U16(v) => each!(v),
        Array::I16(v) => each!(v),
        Array::U32(v) => each!(v),
        Array::I32(v) => each!(v),
        Array::F32(v) => each!(v),
        Array::U64(v) => each!(v),
        Array::I64(v) => each!(v),
        Array::F64(v) => each!(v),
        Array::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
        Array::String(v) => {
            for s in v {
                put_string(out, s.as_bytes(), version);
            }
        }
        Array::Array(v) => {
            for a in v {
                write_array(out, a, version);
            }
        }
    }
}

/// Writes a complete GGUF header: magic, version, counts, key/values, tensor infos, and zero
/// padding up to `alignment` (where the tensor data section begins). Returns the bytes.
pub fn write_header(
    version: u32,
    kv: &[(String, Value)],
    tensors: &[TensorInfo],
    alignment: u64,
) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b"GGUF");
    out.extend_from_slice(&version.to_le_bytes());
    put_count(&mut out, tensors.len(), version);
    put_count(&mut out, kv.len(), version);
    for (key, value) in kv {
        put_string(&mut out, key.as_bytes(), version);
        out.extend_from_slice(&value.value_type().tag().to_le_bytes());
        write_value(&mut out, value, version);
    }
    for t in tensors {
        write_tensor_info(&mut out, t, version);
    }
    let alignment = alignment.max(1) as usize;
    out.resize(out.len().next_multiple_of(alignment), 0);
    out
}

/// Appends one tensor info (name, dimensions, type, data offset) in GGUF layout.
pub fn write_tensor_info(out: &mut Vec<u8>, t: &TensorInfo, version: u32) {
    put_string(out, t.name.as_bytes(), version);
    out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
    for &d in &t.dims {
        if version >= 2 {
            out.extend_from_slice(&d.to_le_bytes());
        } else {
            out.extend_from_slice(&(d as u32).to_le_bytes());
        }
    }
    out.extend_from_slice(&t.ggml_type.to_le_bytes());
    out.extend_from_slice(&t.offset.to_le_bytes());
}
