//! GGML block formats (as in GGUF files): each row of a weight matrix is a run of blocks along
//! the input dimension, every block holding its scales and packed integers. This module knows
//! the byte layout of each format, dequantises blocks on the CPU and lays rows out for the GPU
//! kernels, which read the same bytes (regrouped by field, nothing widened).

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

    /// u32 words one K-quant block takes on the GPU: its bytes, padded to a multiple of 4 words
    /// (layouts in `shaders/ggml_blocks.wgsl`).
    pub fn gpu_block_words(self) -> usize {
        match self {
            // 210 bytes, padded to whole 16-byte words so every block starts on one.
            Self::Q6K => 56,
            _ => self.block_bytes().div_ceil(4),
        }
    }

    /// u32 words one row of `k` values takes on the GPU, a multiple of 4 so that every row
    /// starts on 16 bytes (`k` a whole number of blocks). 32-value types are split by field
    /// (scales, high bits, packed values; see [`Self::to_gpu_rows`]); K-quants keep their blocks.
    pub fn gpu_row_words(self, k: usize) -> usize {
        self.gpu_row_parts(k).iter().map(|&(words, _)| words).sum()
    }

    /// Rows of `k` values in file order to the GPU layout, [`Self::gpu_row_words`] per row.
    /// A row of a 32-value type becomes, each part padded to whole 16-byte words:
    /// its scales (f16 `d`, two per word, or for Q4_1 / Q5_1 one word of `d`, `m` per block),
    /// for Q5 types one word of high bits per block, then the packed values (16 bytes of
    /// nibbles, or Q8_0's 32 bytes) per block, so a kernel fetches each block's values with
    /// one or two 16-byte loads. A K-quant row keeps its blocks (see `shaders/ggml_blocks.wgsl`).
    pub fn to_gpu_rows(self, bytes: &[u8], k: usize) -> Result<Vec<u32>> {
        let bb = self.block_bytes();
        let row_bytes = self.bytes_for(k)?;
        if !self.is_quantized() || bytes.len() % row_bytes != 0 {
            return Err(Error::InvalidArgument(format!(
                "{}: {} bytes are not whole rows of {k} quantised values",
                self.name(),
                bytes.len()
            )));
        }
        let (nb, rw) = (k / self.block_elems(), self.gpu_row_words(k));
        let mut out = vec![0u32; bytes.len() / row_bytes * rw];
        let word = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let half = |b: &[u8]| u32::from(u16::from_le_bytes([b[0], b[1]]));
        for (src, dst) in bytes.chunks_exact(row_bytes).zip(out.chunks_exact_mut(rw)) {
            if self.block_elems() == 256 {
                let bw = self.gpu_block_words();
                for (blk, d) in src.chunks_exact(bb).zip(dst.chunks_exact_mut(bw)) {
                    let mut padded = [0u8; 224];
                    padded[..bb].copy_from_slice(blk);
                    for (w, b) in d.iter_mut().zip(padded.chunks_exact(4)) {
                        *w = word(b);
                    }
                }
                continue;
            }
            let pair = matches!(self, Self::Q4_1 | Self::Q5_1);
            let scale_words = if pair { nb } else { nb.div_ceil(2) }.next_multiple_of(4);
            let has_qh = matches!(self, Self::Q5_0 | Self::Q5_1);
            let qh_words = if has_qh { nb.next_multiple_of(4) } else { 0 };
            let (scales, rest) = dst.split_at_mut(scale_words);
            let (qh, quants) = rest.split_at_mut(qh_words);
            let qw = if self == Self::Q8_0 { 8 } else { 4 };
            for (i, blk) in src.chunks_exact(bb).enumerate() {
                let at = if pair {
                    scales[i] = word(blk);
                    4
                } else {
                    scales[i / 2] |= half(blk) << (16 * (i % 2));
                    2
                };
                let at = if has_qh {
                    qh[i] = word(&blk[at..]);
                    at + 4
                } else {
                    at
                };
                for (w, b) in quants[i * qw..(i + 1) * qw]
                    .iter_mut()
                    .zip(blk[at..].chunks_exact(4))
                {
                    *w = word(b);
                }
            }
        }
        Ok(out)
    }

    /// The parts of a GPU row of `k` values, each padded to whole 16-byte words, as (words,
    /// words per unit): scales, high bits and values of the 32-value types, the blocks of
    /// K-quants; a row group interleaves the units (see [`Self::group_gpu_rows`]).
    fn gpu_row_parts(self, k: usize) -> Vec<(usize, usize)> {
        let nb = k / self.block_elems();
        let pad4 = |n: usize| n.next_multiple_of(4);
        match self {
            Self::Q4_0 => vec![(pad4(nb.div_ceil(2)), 1), (4 * nb, 4)],
            Self::Q8_0 => vec![(pad4(nb.div_ceil(2)), 1), (8 * nb, 8)],
            Self::Q4_1 => vec![(pad4(nb), 1), (4 * nb, 4)],
            Self::Q5_0 => vec![(pad4(nb.div_ceil(2)), 1), (pad4(nb), 1), (4 * nb, 4)],
            Self::Q5_1 => vec![(pad4(nb), 1), (pad4(nb), 1), (4 * nb, 4)],
            // K-quant blocks are whole 16-byte words.
            _ => vec![(nb * self.gpu_block_words(), self.gpu_block_words())],
        }
    }

    /// GPU rows ([`Self::to_gpu_rows`], `rows` of `k` values) in groups of `group` rows, the
    /// last group padded with zero rows: each part of a group holds unit j (a scale or
    /// high-bit word, a block's values, a K-quant block) of its rows side by side before unit
    /// j + 1, so one invocation that owns the group's rows reads one stretch of memory
    /// (`RG` in `shaders/ggml_blocks.wgsl`).
    pub fn group_gpu_rows(self, rows: &[u32], k: usize, group: usize) -> Vec<u32> {
        let rw = self.gpu_row_words(k);
        let n = rows.len() / rw;
        let mut out = Vec::with_capacity(n.next_multiple_of(group) * rw);
        let parts = self.gpu_row_parts(k);
        for g in (0..n).step_by(group) {
            let mut at = 0;
            for &(words, unit) in &parts {
                for j in (at..at + words).step_by(unit) {
                    for r in g..g + group {
                        match rows.get(r * rw + j..r * rw + j + unit) {
                            Some(u) => out.extend_from_slice(u),
                            None => out.extend(std::iter::repeat_n(0, unit)),
                        }
                    }
                }
                at += words;
            }
        }
        out
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
