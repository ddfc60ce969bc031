//! Tensor descriptions from a GGUF header (the data itself is never read here).

use super::reader::format_err;
use crate::error::Result;

/// GGML tensors have at most this many dimensions.
pub const GGML_MAX_DIMS: usize = 4;

/// One tensor's entry in the header: where its data lies and how to size it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// The tensor's name, e.g. `token_embd.weight`.
    pub name: String,
    /// Extent of each dimension, innermost (row length) first, as GGML orders them.
    pub dims: Vec<u64>,
    /// The raw `ggml_type` tag (see [`ggml_type_info`]).
    pub ggml_type: u32,
    /// Offset of the data, relative to the start of the data section
    /// ([`super::GgufMetadata::data_offset`]).
    pub offset: u64,
}

/// Name, block size (elements) and block size (bytes) of a `ggml_type` tag, for the types
/// llama.cpp currently defines; `None` for tags that were removed or are newer than this table.
pub fn ggml_type_info(ggml_type: u32) -> Option<(&'static str, u64, u64)> {
    const QK_K: u64 = 256;
    Some(match ggml_type {
        0 => ("F32", 1, 4),
        1 => ("F16", 1, 2),
        2 => ("Q4_0", 32, 18),
        3 => ("Q4_1", 32, 20),
        6 => ("Q5_0", 32, 22),
        7 => ("Q5_1", 32, 24),
        8 => ("Q8_0", 32, 34),
        9 => ("Q8_1", 32, 36),
        10 => ("Q2_K", QK_K, 84),
        11 => ("Q3_K", QK_K, 110),
        12 => ("Q4_K", QK_K, 144),
        13 => ("Q5_K", QK_K, 176),
        14 => ("Q6_K", QK_K, 210),
        15 => ("Q8_K", QK_K, 292),
        16 => ("IQ2_XXS", QK_K, 66),
        17 => ("IQ2_XS", QK_K, 74),
        18 => ("IQ3_XXS", QK_K, 98),
        19 => ("IQ1_S", QK_K, 50),
        20 => ("IQ4_NL", 32, 18),
        21 => ("IQ3_S", QK_K, 110),
        22 => ("IQ2_S", QK_K, 82),
        23 => ("IQ4_XS", QK_K, 136),
        24 => ("I8", 1, 1),
        25 => ("I16", 1, 2),
        26 => ("I32", 1, 4),
        27 => ("I64", 1, 8),
        28 => ("F64", 1, 8),
        29 => ("IQ1_M", QK_K, 56),
        30 => ("BF16", 1, 2),
        34 => ("TQ1_0", QK_K, 54),
        35 => ("TQ2_0", QK_K, 66),
        39 => ("MXFP4", 32, 17),
        _ => return None,
    })
}

impl TensorInfo {
    /// Total number of elements (the product of the dimensions; checked for overflow at parse).
    pub fn n_elements(&self) -> u64 {
        self.dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .unwrap_or(u64::MAX)
    }

    /// The type's name (`"Q4_1"`, `"F32"`...), if this code knows the tag.
    pub fn type_name(&self) -> Option<&'static str> {
        ggml_type_info(self.ggml_type).map(|(name, _, _)| name)
    }

    /// Bytes of tensor data, if the type is known.
    pub fn byte_size(&self) -> Option<u64> {
        let (_, block, block_bytes) = ggml_type_info(self.ggml_type)?;
        (self.n_elements() / block).checked_mul(block_bytes)
    }

    /// Rejects shapes llama.cpp would reject: an element count that overflows, and rows that are
    /// not a whole number of quantization blocks.
    pub(crate) fn check_shape(&self) -> Result<()> {
        let total = self
            .dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= i64::MAX as u64);
        let Some(total) = total else {
            return Err(format_err(format!(
                "tensor '{}' has dimensions {:?} whose product overflows",
                self.name, self.dims
            )));
        };
        if let Some((type_name, block, block_bytes)) = ggml_type_info(self.ggml_type) {
            let row = self.dims.first().copied().unwrap_or(1);
            if row % block != 0 {
                return Err(format_err(format!(
                    "tensor '{}' of type {type_name} has rows of {row} elements, not a multiple of its block size {block}",
                    self.name
                )));
            }
            if (total / block).checked_mul(block_bytes).is_none() {
                return Err(format_err(format!("tensor '{}' is too large", self.name)));
            }
        }
        Ok(())
    }
}
