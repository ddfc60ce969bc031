//! The output's layout and the streamed copy of the source into it.

use std::borrow::Cow;
use std::io::Write;

use super::super::value::{Array, Value};
use super::super::writer::{put_count, put_string, write_tensor_info, write_value};
use super::super::{keys, GgufMetadata, TensorInfo};
use super::check::Plan;
use super::gpt2::converted_token;
use super::gpt2::gpt2_merge_to_bytes;
use super::OUTPUT_VERSION;
use crate::error::{Error, Result};

// ---------------------------------------------------------------------------------------------
// The header rewrite: a raw walk over the source key/values, so unchanged values are copied byte
// for byte (strings that are not UTF-8 included) and v1 counts are widened to v2's 64 bits.

struct Raw<'a> {
    buf: &'a [u8],
    pos: usize,
    wide: bool,
}

impl<'a> Raw<'a> {
    fn take(&mut self, n: u64) -> Result<&'a [u8]> {
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n))
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| Error::Model("GGUF: header truncated".into()))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn count(&mut self) -> Result<u64> {
        if self.wide {
            let b = self.take(8)?;
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            Ok(u64::from_le_bytes(a))
        } else {
            self.u32().map(u64::from)
        }
    }

    fn string(&mut self) -> Result<&'a [u8]> {
        let n = self.count()?;
        self.take(n)
    }

    /// Copies one value of type `tag`, re-encoded for `OUTPUT_VERSION`.
    fn copy_value(&mut self, tag: u32, out: &mut Vec<u8>) -> Result<()> {
        match tag {
            8 => put_string(out, self.string()?, OUTPUT_VERSION),
            9 => {
                let elem = self.u32()?;
                let n = self.count()?;
                out.extend_from_slice(&elem.to_le_bytes());
                out.extend_from_slice(&n.to_le_bytes());
                match fixed_size(elem) {
                    Some(size) => {
                        let bytes = self.take(n.saturating_mul(size))?;
                        out.extend_from_slice(bytes);
                    }
                    None => {
                        for _ in 0..n {
                            self.copy_value(elem, out)?;
                        }
                    }
                }
            }
            other => {
                let size = fixed_size(other)
                    .ok_or_else(|| Error::Model(format!("GGUF: unknown value type {other}")))?;
                out.extend_from_slice(self.take(size)?);
            }
        }
        Ok(())
    }

    /// Copies a string array, passing each element through `map`; returns how many changed.
    fn map_strings(
        &mut self,
        key: &str,
        tag: u32,
        out: &mut Vec<u8>,
        mut map: impl FnMut(usize, &'a [u8]) -> Cow<'a, [u8]>,
    ) -> Result<usize> {
        let elem = if tag == 9 { self.u32()? } else { u32::MAX };
        if elem != 8 {
            return Err(Error::Model(format!(
                "GGUF: key '{key}' should be an array of strings"
            )));
        }
        let n = self.count()?;
        out.extend_from_slice(&8u32.to_le_bytes());
        out.extend_from_slice(&n.to_le_bytes());
        let mut changed = 0;
        for i in 0..n as usize {
            let s = self.string()?;
            let m = map(i, s);
            if m.as_ref() != s {
                changed += 1;
            }
            put_string(out, &m, OUTPUT_VERSION);
        }
        Ok(changed)
    }
}

fn fixed_size(tag: u32) -> Option<u64> {
    match tag {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

/// The rewritten header and where each output tensor's data comes from.
pub(super) struct Layout {
    pub(super) header: Vec<u8>,
    /// (absolute source offset, size, offset in the output data section)
    pub(super) copies: Vec<(u64, u64, u64)>,
    /// Size of the output data section, padded to the alignment.
    pub(super) data_size: u64,
    pub(super) n_kv: usize,
    pub(super) n_tensors: usize,
    pub(super) tokens_rewritten: usize,
    pub(super) merges_rewritten: usize,
    pub(super) added_keys: Vec<String>,
}

pub(super) fn build_layout(map: &[u8], meta: &GgufMetadata, plan: &Plan) -> Result<Layout> {
    let mut r = Raw {
        buf: map,
        pos: 8,
        wide: meta.version() >= 2,
    };
    let _n_tensors = r.count()?;
    let n_kv = r.count()?;
    let table = tensor_table(meta, plan)?;
    let n_kv_out = n_kv as usize + plan.extra_kv.len() + usize::from(plan.add_scores);

    // Room for the source header, four more bytes a token (added scores, or v1's 32-bit string
    // lengths widened) and the added keys, so the rewrite rarely reallocates.
    let mut out = Vec::with_capacity(meta.data_offset() as usize + (plan.n_vocab << 2) + 4096);
    out.extend_from_slice(b"GGUF");
    out.extend_from_slice(&OUTPUT_VERSION.to_le_bytes());
    put_count(&mut out, table.tensors.len(), OUTPUT_VERSION);
    put_count(&mut out, n_kv_out, OUTPUT_VERSION);
    let (tokens_rewritten, merges_rewritten) = copy_kvs(&mut r, n_kv, plan, &mut out)?;
    let added_keys = write_added_kvs(plan, &mut out);
    for t in &table.tensors {
        write_tensor_info(&mut out, t, OUTPUT_VERSION);
    }
    let padded = (out.len() as u64).next_multiple_of(meta.alignment());
    out.resize(padded as usize, 0);

    Ok(Layout {
        header: out,
        copies: table.copies,
        data_size: table.data_size,
        n_kv: n_kv_out,
        n_tensors: table.tensors.len(),
        tokens_rewritten,
        merges_rewritten,
        added_keys,
    })
}

/// The output's tensor table and where its data comes from.
struct TensorTable {
    tensors: Vec<TensorInfo>,
    /// As `Layout::copies`.
    copies: Vec<(u64, u64, u64)>,
    data_size: u64,
}

/// The tensor table with fresh offsets, `output.weight` (when added) last. The added output
/// is a second copy of `token_embd.weight`: the old loader has no tied embeddings.
fn tensor_table(meta: &GgufMetadata, plan: &Plan) -> Result<TensorTable> {
    let align = meta.alignment();
    let mut tensors: Vec<TensorInfo> = meta.tensors().to_vec();
    let mut sources: Vec<&TensorInfo> = meta.tensors().iter().collect();
    if plan.add_output {
        let embd = meta
            .tensors()
            .iter()
            .find(|t| t.name == "token_embd.weight")
            .ok_or_else(|| Error::InvalidInput("token_embd.weight is missing".into()))?;
        tensors.push(TensorInfo {
            name: "output.weight".into(),
            ..embd.clone()
        });
        sources.push(embd);
    }
    let mut copies = Vec::with_capacity(tensors.len());
    let mut offset = 0u64;
    for (t, src) in tensors.iter_mut().zip(&sources) {
        let size = src.byte_size().ok_or_else(|| {
            Error::InvalidInput(format!("tensor '{}' has an unknown size", src.name))
        })?;
        offset = offset.next_multiple_of(align);
        t.offset = offset;
        copies.push((meta.data_offset() + src.offset, size, offset));
        offset += size;
    }
    Ok(TensorTable {
        tensors,
        copies,
        data_size: offset.next_multiple_of(align),
    })
}

/// Copies the source's `n_kv` key/values to `out`: fixed keys take the plan's value, a gpt2
/// vocabulary and its merges are rewritten to raw bytes, the rest are copied byte for byte.
/// Returns how many tokens and merges the rewrite changed.
fn copy_kvs(r: &mut Raw<'_>, n_kv: u64, plan: &Plan, out: &mut Vec<u8>) -> Result<(usize, usize)> {
    let mut tokens_rewritten = 0;
    let mut merges_rewritten = 0;
    let types = &plan.token_types;
    for _ in 0..n_kv {
        let key_bytes = r.string()?;
        let key = String::from_utf8_lossy(key_bytes);
        let tag = r.u32()?;
        put_string(out, key_bytes, OUTPUT_VERSION);
        if let Some(v) = plan.fixes.get(key.as_ref()) {
            // The source value is only skipped over: the fix replaces it, type tag included.
            r.copy_value(tag, &mut Vec::new())?;
            out.extend_from_slice(&v.value_type().tag().to_le_bytes());
            write_value(out, v, OUTPUT_VERSION);
            continue;
        }
        out.extend_from_slice(&tag.to_le_bytes());
        if plan.rewrite_vocab && key == keys::TOKENS {
            tokens_rewritten = r.map_strings(&key, tag, out, |i, s| {
                converted_token(s, types.get(i).copied().unwrap_or(1))
            })?;
        } else if plan.rewrite_vocab && key == keys::MERGES {
            merges_rewritten = r.map_strings(&key, tag, out, |_, s| gpt2_merge_to_bytes(s))?;
        } else {
            r.copy_value(tag, out)?;
        }
    }
    Ok((tokens_rewritten, merges_rewritten))
}

/// Writes the key/values the old loader needs and the source lacks (its rope scaling key,
/// placeholder scores) after the copied ones; returns their names.
fn write_added_kvs(plan: &Plan, out: &mut Vec<u8>) -> Vec<String> {
    let mut added_keys: Vec<String> = plan.extra_kv.iter().map(|(k, _)| k.clone()).collect();
    let mut extra = plan.extra_kv.clone();
    if plan.add_scores {
        // The old loader requires scores even where it does not use them (gpt2); these rank
        // the tokens by id.
        let scores = (0..plan.n_vocab).map(|i| -(i as f32)).collect();
        extra.push((keys::SCORES.into(), Value::Array(Array::F32(scores))));
        added_keys.push(keys::SCORES.into());
    }
    for (key, v) in &extra {
        put_string(out, key.as_bytes(), OUTPUT_VERSION);
        out.extend_from_slice(&v.value_type().tag().to_le_bytes());
        write_value(out, v, OUTPUT_VERSION);
    }
    added_keys
}

// ---------------------------------------------------------------------------------------------
// Writing

/// Calls the progress callback at most about a hundred times, plus once at the start and end.
pub(super) struct Progress<'a> {
    pub(super) callback: &'a mut dyn FnMut(u64, u64) -> bool,
    pub(super) total: u64,
    pub(super) step: u64,
    pub(super) next: u64,
}

impl Progress<'_> {
    fn report(&mut self, done: u64, force: bool) -> Result<()> {
        if force || done >= self.next {
            if !(self.callback)(done, self.total) {
                return Err(Error::StateConflict("the conversion was cancelled".into()));
            }
            self.next = done.saturating_add(self.step);
        }
        Ok(())
    }
}

pub(super) const COPY_CHUNK: usize = 1 << 20;
const ZEROS: [u8; 4096] = [0; 4096];

fn write_zeros(w: &mut impl Write, mut n: u64) -> std::io::Result<()> {
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        w.write_all(&ZEROS[..k])?;
        n -= k as u64;
    }
    Ok(())
}

pub(super) fn write_body(
    w: &mut impl Write,
    map: &memmap2::Mmap,
    layout: &Layout,
    progress: &mut Progress<'_>,
) -> Result<()> {
    w.write_all(&layout.header)?;
    let mut pos = 0u64;
    let mut done = 0u64;
    progress.report(0, true)?;
    for &(src, size, dst) in &layout.copies {
        write_zeros(w, dst - pos)?;
        let start = src as usize;
        let data = &map[start..start + size as usize];
        for (i, chunk) in data.chunks(COPY_CHUNK).enumerate() {
            w.write_all(chunk)?;
            done += chunk.len() as u64;
            if done < progress.total {
                progress.report(done, false)?;
            }
            // These pages are not needed again (output.weight's second copy of token_embd reads
            // them back from the page cache): dropping them from the map keeps the resident
            // set at about one chunk, whatever the size of the tensors.
            #[cfg(unix)]
            // SAFETY: the map is a read-only shared file mapping; after DONTNEED the next
            // access reads the file again, so no slice we hold can observe different data.
            unsafe {
                let _ = map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    start + i * COPY_CHUNK,
                    chunk.len(),
                );
            }
        }
        pos = dst + size;
    }
    write_zeros(w, layout.data_size - pos)?;
    progress.report(done, true)?;
    Ok(())
}
