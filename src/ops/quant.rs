//! GGML block formats (as in GGUF files): each row of a weight matrix is a run of blocks along
//! the input dimension, every block holding its scales and packed integers. This module knows
//! the byte layout of each format and dequantises blocks on the CPU; the GPU kernels read the
//! same bytes directly.

use crate::{Error, Result};
use half::f16;

/// The tensor types of GGUF (`ggml_type` numbers) this library reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
    BF16,
}

impl GgmlType {
    /// From the number a GGUF tensor-info record stores.
    pub fn from_id(id: u32) -> Result<Self> {
        Ok(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            30 => Self::BF16,
            other => {
                return Err(Error::Unsupported(format!(
                    "GGML tensor type {other} ({}): supported are F32, F16, BF16, Q4_0, Q4_1, \
                     Q5_0, Q5_1, Q8_0, Q4_K, Q5_K and Q6_K; re-quantise the file with one of these",
                    ggml_type_name(other)
                )))
            }
        })
    }

    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
            Self::Q4K => 12,
            Self::Q5K => 13,
            Self::Q6K => 14,
            Self::BF16 => 30,
        }
    }

    pub fn name(self) -> &'static str {
        ggml_type_name(self.id())
    }

    /// Elements per block.
    pub fn block_elems(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 | Self::Q8_0 => 32,
            Self::Q4K | Self::Q5K | Self::Q6K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q8_0 => 34,
            Self::Q4K => 144,
            Self::Q5K => 176,
            Self::Q6K => 210,
        }
    }

    pub fn is_quantized(self) -> bool {
        self.block_elems() > 1
    }

    /// u32 words one block takes on the GPU: the bytes padded so every field is word-aligned
    /// (layouts in `shaders/ggml_blocks.wgsl`).
    pub fn gpu_words(self) -> usize {
        (self.block_bytes() + 2 * usize::from(self.pad_after_scale())).div_ceil(4)
    }

    /// Q4_0, Q5_0 and Q8_0 start with one f16 scale: 2 pad bytes after it align what follows.
    fn pad_after_scale(self) -> bool {
        matches!(self, Self::Q4_0 | Self::Q5_0 | Self::Q8_0)
    }

    /// Whole blocks in file order to the GPU layout of [`Self::gpu_words`] words per block.
    pub fn to_gpu_words(self, bytes: &[u8]) -> Result<Vec<u32>> {
        let bb = self.block_bytes();
        if !self.is_quantized() || bytes.len() % bb != 0 {
            return Err(Error::InvalidArgument(format!(
                "{}: {} bytes are not whole quantised blocks",
                self.name(),
                bytes.len()
            )));
        }
        let words = self.gpu_words();
        let mut out = vec![0u32; bytes.len() / bb * words];
        let mut block = vec![0u8; words * 4];
        for (src, dst) in bytes.chunks_exact(bb).zip(out.chunks_exact_mut(words)) {
            block.fill(0);
            if self.pad_after_scale() {
                block[..2].copy_from_slice(&src[..2]);
                block[4..4 + bb - 2].copy_from_slice(&src[2..]);
            } else {
                block[..bb].copy_from_slice(src);
            }
            for (w, b) in dst.iter_mut().zip(block.chunks_exact(4)) {
                *w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        Ok(out)
    }

    /// Bytes of `elems` values; an error unless `elems` is a whole number of blocks.
    pub fn bytes_for(self, elems: usize) -> Result<usize> {
        let b = self.block_elems();
        if elems % b != 0 {
            return Err(Error::InvalidArgument(format!(
                "{} stores blocks of {b} values; a row of {elems} is not a whole number of blocks",
                self.name()
            )));
        }
        Ok(elems / b * self.block_bytes())
    }
}

fn ggml_type_name(id: u32) -> &'static str {
    const NAMES: [&str; 31] = [
        "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K",
        "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL",
        "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M", "BF16",
    ];
    NAMES.get(id as usize).copied().unwrap_or("unknown")
}

fn half(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// The 6-bit scale and min of sub-block `j` (0..8) of a Q4_K / Q5_K super-block's 12 scale bytes.
fn scale_min_k4(j: usize, s: &[u8]) -> (f32, f32) {
    if j < 4 {
        ((s[j] & 63) as f32, (s[j + 4] & 63) as f32)
    } else {
        (
            ((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4)) as f32,
            ((s[j + 4] >> 4) | ((s[j] >> 6) << 4)) as f32,
        )
    }
}

/// Dequantise `bytes` (whole blocks of `ty`) into `out`, which must hold exactly their values.
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    let (be, bb) = (ty.block_elems(), ty.block_bytes());
    if bytes.len() % bb != 0 || bytes.len() / bb * be != out.len() {
        return Err(Error::InvalidArgument(format!(
            "{}: {} bytes do not hold the {} values asked for",
            ty.name(),
            bytes.len(),
            out.len()
        )));
    }
    for (b, y) in bytes.chunks_exact(bb).zip(out.chunks_exact_mut(be)) {
        dequantize_block(ty, b, y);
    }
    Ok(())
}

fn dequantize_block(ty: GgmlType, b: &[u8], y: &mut [f32]) {
    match ty {
        GgmlType::F32 => y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        GgmlType::F16 => y[0] = half(b, 0),
        GgmlType::BF16 => y[0] = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16),
        GgmlType::Q4_0 | GgmlType::Q4_1 => {
            let d = half(b, 0);
            let (m, qs) = if ty == GgmlType::Q4_1 {
                (half(b, 2), &b[4..20])
            } else {
                (-8.0 * d, &b[2..18])
            };
            for (j, &q) in qs.iter().enumerate() {
                y[j] = (q & 0xF) as f32 * d + m;
                y[j + 16] = (q >> 4) as f32 * d + m;
            }
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let d = half(b, 0);
            let (m, rest) = if ty == GgmlType::Q5_1 {
                (half(b, 2), &b[4..])
            } else {
                (-16.0 * d, &b[2..])
            };
            let qh = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
            for (j, &q) in rest[4..20].iter().enumerate() {
                let lo = (q & 0xF) as u32 | ((qh >> j) & 1) << 4;
                let hi = (q >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4;
                y[j] = lo as f32 * d + m;
                y[j + 16] = hi as f32 * d + m;
            }
        }
        GgmlType::Q8_0 => {
            let d = half(b, 0);
            for (j, &q) in b[2..34].iter().enumerate() {
                y[j] = q as i8 as f32 * d;
            }
        }
        GgmlType::Q4K | GgmlType::Q5K => {
            let (d, dmin) = (half(b, 0), half(b, 2));
            let scales = &b[4..16];
            let (qh, qs) = if ty == GgmlType::Q5K {
                (Some(&b[16..48]), &b[48..176])
            } else {
                (None, &b[16..144])
            };
            // Four groups of 64 values; each reads 32 bytes: low nibbles, then high nibbles.
            for g in 0..4 {
                let q = &qs[g * 32..g * 32 + 32];
                for half_idx in 0..2 {
                    let (sc, mn) = scale_min_k4(2 * g + half_idx, scales);
                    let (dl, ml) = (d * sc, dmin * mn);
                    for l in 0..32 {
                        let mut v = if half_idx == 0 { q[l] & 0xF } else { q[l] >> 4 } as u32;
                        if let Some(qh) = qh {
                            v |= ((qh[l] >> (2 * g + half_idx)) as u32 & 1) << 4;
                        }
                        y[g * 64 + half_idx * 32 + l] = dl * v as f32 - ml;
                    }
                }
            }
        }
        GgmlType::Q6K => {
            let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
            let d = half(b, 208);
            // Two halves of 128 values; each uses 64 bytes of ql, 32 of qh and 8 scales.
            for h in 0..2 {
                let (ql, qh, sc) = (&ql[h * 64..], &qh[h * 32..], &sc[h * 8..]);
                for l in 0..32 {
                    let is = l / 16;
                    let q = |low: u8, shift: u32| {
                        (low as i32 | (((qh[l] as i32) >> shift) & 3) << 4) - 32
                    };
                    let base = h * 128 + l;
                    y[base] = d * (sc[is] as i8) as f32 * q(ql[l] & 0xF, 0) as f32;
                    y[base + 32] = d * (sc[is + 2] as i8) as f32 * q(ql[l + 32] & 0xF, 2) as f32;
                    y[base + 64] = d * (sc[is + 4] as i8) as f32 * q(ql[l] >> 4, 4) as f32;
                    y[base + 96] = d * (sc[is + 6] as i8) as f32 * q(ql[l + 32] >> 4, 6) as f32;
                }
            }
        }
    }
}
