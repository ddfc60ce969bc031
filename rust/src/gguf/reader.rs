//! The byte-level GGUF parser. Every count read from the file is checked against the bytes that
//! remain before anything is allocated for it, so a hostile header cannot make us reserve more
//! memory than a small multiple of the file's own size, and every read is bounds-checked, so a
//! truncated file gives `Error::Model`, never a panic.

use std::collections::HashSet;

use super::tensor::{TensorInfo, GGML_MAX_DIMS};
use super::value::{Array, Value, ValueType};
use crate::error::{Error, Result};

/// Nested arrays deeper than this are refused; real files use at most one level, and the limit
/// keeps a hostile file from recursing us into a stack overflow.
const MAX_ARRAY_DEPTH: u32 = 8;

pub(crate) fn format_err(msg: impl AsRef<str>) -> Error {
    Error::Model(format!("GGUF: {}", msg.as_ref()))
}

/// What the parser hands back to `GgufMetadata`: raw, not yet validated key/values.
pub(crate) struct Parsed {
    pub version: u32,
    pub kv: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    /// Offset just past the tensor infos (before alignment padding).
    pub header_end: u64,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    /// GGUF v1 stored counts and string lengths as u32; v2 and later as u64.
    wide: bool,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(format_err(format!(
                "file truncated at byte {} while reading {what} ({n} bytes needed, {} left)",
                self.pos,
                self.remaining()
            )));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let bytes = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count or length field: u32 in v1, u64 afterwards.
    fn count(&mut self, what: &str) -> Result<u64> {
        if self.wide {
            self.u64(what)
        } else {
            self.u32(what).map(u64::from)
        }
    }

    fn count_width(&self) -> usize {
        if self.wide {
            8
        } else {
            4
        }
    }

    /// Checks that `count` elements of at least `min_size` bytes each can still be in the file,
    /// and returns the count as `usize`. This is the guard against unbounded allocation.
    fn bounded(&self, count: u64, min_size: usize, what: &str) -> Result<usize> {
        let fits = usize::try_from(count)
            .ok()
            .and_then(|n| n.checked_mul(min_size.max(1)))
            .is_some_and(|bytes| bytes <= self.remaining());
        if !fits {
            return Err(format_err(format!(
                "{what}: count {count} at byte {} cannot fit in the {} bytes left",
                self.pos,
                self.remaining()
            )));
        }
        // `fits` implies the conversion succeeded.
        usize::try_from(count).map_err(|_| format_err(format!("{what}: count {count} too large")))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.count(what)?;
        let len = self.bounded(len, 1, what)?;
        let bytes = self.take(len, what)?;
        Ok(match std::str::from_utf8(bytes) {
            Ok(s) => s.to_owned(),
            Err(_) => String::from_utf8_lossy(bytes).into_owned(),
        })
    }

    fn value_type(&mut self, what: &str) -> Result<ValueType> {
        let tag = self.u32(what)?;
        ValueType::from_tag(tag).map_err(|_| {
            format_err(format!(
                "{what}: unknown value type {tag} at byte {}",
                self.pos - 4
            ))
        })
    }

    fn value(&mut self, ty: ValueType, what: &str, depth: u32) -> Result<Value> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>(what)?[0]),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.array(what)?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            ValueType::U32 => Value::U32(self.u32(what)?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            ValueType::Bool => Value::Bool(self.bool(what)?),
            ValueType::String => Value::String(self.string(what)?),
            ValueType::Array => Value::Array(self.array_value(what, depth + 1)?),
            ValueType::U64 => Value::U64(self.u64(what)?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(what)?)),
        })
    }

    fn bool(&mut self, what: &str) -> Result<bool> {
        match self.array::<1>(what)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(format_err(format!(
                "{what}: invalid boolean byte {other} at byte {}",
                self.pos - 1
            ))),
        }
    }

    /// Reads `n` fixed-size little-endian elements with `decode`.
    fn fixed<T, const N: usize>(
        &mut self,
        n: usize,
        what: &str,
        decode: impl Fn([u8; N]) -> T,
    ) -> Result<Vec<T>> {
        // `bounded` already checked n * N <= remaining, so this take cannot fail on size.
        let bytes = self.take(n * N, what)?;
        Ok(bytes
            .chunks_exact(N)
            .map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                decode(a)
            })
            .collect())
    }

    fn array_value(&mut self, what: &str, depth: u32) -> Result<Array> {
        if depth > MAX_ARRAY_DEPTH {
            return Err(format_err(format!(
                "{what}: arrays nested deeper than {MAX_ARRAY_DEPTH}"
            )));
        }
        let ty = self.value_type(what)?;
        let count = self.count(what)?;
        // The smallest encoding of one element: its fixed size, a string's length field, or a
        // nested array's type tag plus count.
        let min_size = match ty {
            ValueType::String => self.count_width(),
            ValueType::Array => 4 + self.count_width(),
            fixed => fixed.fixed_size().unwrap_or(1),
        };
        let n = self.bounded(count, min_size, what)?;
        Ok(match ty {
            ValueType::U8 => Array::U8(self.take(n, what)?.to_vec()),
            ValueType::I8 => Array::I8(self.fixed(n, what, i8::from_le_bytes)?),
            ValueType::U16 => Array::U16(self.fixed(n, what, u16::from_le_bytes)?),
            ValueType::I16 => Array::I16(self.fixed(n, what, i16::from_le_bytes)?),
            ValueType::U32 => Array::U32(self.fixed(n, what, u32::from_le_bytes)?),
            ValueType::I32 => Array::I32(self.fixed(n, what, i32::from_le_bytes)?),
            ValueType::F32 => Array::F32(self.fixed(n, what, f32::from_le_bytes)?),
            ValueType::U64 => Array::U64(self.fixed(n, what, u64::from_le_bytes)?),
            ValueType::I64 => Array::I64(self.fixed(n, what, i64::from_le_bytes)?),
            ValueType::F64 => Array::F64(self.fixed(n, what, f64::from_le_bytes)?),
            ValueType::Bool => {
                let mut out = Vec::with_capacity(n);
                for _ in 0..n {
                    out.push(self.bool(what)?);
                }
                Array::Bool(out)
            }
            ValueType::String => {
                let mut out = Vec::with_capacity(n);
                for _ in 0..n {
                    out.push(self.string(what)?);
                }
                Array::String(out)
            }
            ValueType::Array => {
                let mut out = Vec::with_capacity(n);
                for _ in 0..n {
                    out.push(self.array_value(what, depth + 1)?);
                }
                Array::Array(out)
            }
        })
    }
}

/// Parses the header, the key/values and the tensor infos of a GGUF image.
pub(crate) fn parse(buf: &[u8]) -> Result<Parsed> {
    let mut c = Cursor {
        buf,
        pos: 0,
        wide: true,
    };
    let version = c.header()?;
    let n_tensors = c.count("the tensor count")?;
    let n_kv = c.count("the key/value count")?;
    let kv = c.key_values(n_kv)?;
    let tensors = c.tensor_infos(n_tensors)?;
    Ok(Parsed {
        version,
        kv,
        tensors,
        header_end: c.pos as u64,
    })
}

impl Cursor<'_> {
    /// The magic number and the version, which sets the width of every count that follows.
    fn header(&mut self) -> Result<u32> {
        let magic = self.array::<4>("the magic number")?;
        if &magic != b"GGUF" {
            return Err(format_err(format!(
                "not a GGUF file (magic {magic:02x?}, expected \"GGUF\")"
            )));
        }
        let version = self.u32("the version")?;
        if version == 0 || version > 3 {
            // A big-endian file shows its version byte-swapped.
            let hint = if version.swap_bytes() <= 3 && version.swap_bytes() != 0 {
                " (this looks like a big-endian file, which is not supported)"
            } else {
                ""
            };
            return Err(format_err(format!(
                "unsupported version {version}{hint}; versions 1 to 3 are"
            )));
        }
        self.wide = version >= 2;
        Ok(version)
    }

    /// The `n_kv` key/values, in file order; a key may appear only once.
    fn key_values(&mut self, n_kv: u64) -> Result<Vec<(String, Value)>> {
        // A key/value takes at least a key length, a type tag and one byte of value.
        let n_kv = self.bounded(n_kv, self.count_width() + 4 + 1, "the key/value count")?;
        let mut kv: Vec<(String, Value)> = Vec::with_capacity(n_kv);
        let mut seen: HashSet<String> = HashSet::with_capacity(n_kv);
        for i in 0..n_kv {
            let key = self.string(&format!("key #{i}"))?;
            let ty = self.value_type(&format!("the type of key '{key}'"))?;
            let value = self.value(ty, &format!("the value of key '{key}'"), 0)?;
            if !seen.insert(key.clone()) {
                return Err(format_err(format!("duplicate key '{key}'")));
            }
            kv.push((key, value));
        }
        Ok(kv)
    }

    /// The `n_tensors` tensor infos, each with a unique name and a shape ggml can hold.
    fn tensor_infos(&mut self, n_tensors: u64) -> Result<Vec<TensorInfo>> {
        // A tensor info takes at least a name length, a dims count, a type and an offset.
        let n_tensors = self.bounded(
            n_tensors,
            self.count_width() + 4 + 4 + 8,
            "the tensor count",
        )?;
        let mut tensors = Vec::with_capacity(n_tensors);
        let mut names: HashSet<String> = HashSet::with_capacity(n_tensors);
        for i in 0..n_tensors {
            let info = self.tensor_info(i)?;
            if !names.insert(info.name.clone()) {
                return Err(format_err(format!("duplicate tensor name '{}'", info.name)));
            }
            info.check_shape()?;
            tensors.push(info);
        }
        Ok(tensors)
    }

    /// One tensor info (`i` names it until its name is read), its fields as stored.
    fn tensor_info(&mut self, i: usize) -> Result<TensorInfo> {
        let name = self.string(&format!("the name of tensor #{i}"))?;
        let n_dims = self.u32(&format!("the dimension count of tensor '{name}'"))?;
        // Checked before the dims are read, so a hostile count allocates nothing.
        if n_dims as usize > GGML_MAX_DIMS {
            return Err(format_err(format!(
                "tensor '{name}' has {n_dims} dimensions; at most {GGML_MAX_DIMS} are allowed"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(self.count(&format!("the dimensions of tensor '{name}'"))?);
        }
        let ggml_type = self.u32(&format!("the type of tensor '{name}'"))?;
        let offset = self.u64(&format!("the data offset of tensor '{name}'"))?;
        Ok(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
        })
    }
}
