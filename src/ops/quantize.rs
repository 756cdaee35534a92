//! CPU quantisation of f32 rows into GGML blocks (Q8_0, Q4_K), for loading f16/f32 checkpoints
//! quantised. The bytes are exactly what llama.cpp's formats hold, so they take the same GPU
//! path as a GGUF file's tensors and dequantise with [`super::dequantize`].

use super::quant::GgmlType;
use crate::{Error, Result};
use half::f16;

/// Quantise `values` (whole rows of whole blocks) into blocks of `ty`.
pub fn quantize(ty: GgmlType, values: &[f32]) -> Result<Vec<u8>> {
    let be = ty.block_elems();
    let mut out = Vec::with_capacity(ty.bytes_for(values.len())?);
    match ty {
        GgmlType::Q8_0 => values.chunks_exact(be).for_each(|b| q8_0(b, &mut out)),
        GgmlType::Q4K => values.chunks_exact(be).for_each(|b| q4_k(b, &mut out)),
        other => {
            return Err(Error::Unsupported(format!(
                "quantising to {}: supported are Q8_0 and Q4_K",
                other.name()
            )))
        }
    }
    Ok(out)
}

fn push_f16(out: &mut Vec<u8>, v: f32) {
    out.extend_from_slice(&f16::from_f32(v).to_le_bytes());
}

/// 32 values as an f16 scale and 32 signed bytes: x = d * q.
fn q8_0(x: &[f32], out: &mut Vec<u8>) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    push_f16(out, d);
    // Round against the scale as stored, so dequantisation reproduces the nearest level.
    let d = f16::from_f32(d).to_f32();
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    out.extend(
        x.iter()
            .map(|v| (v * inv).round().clamp(-127.0, 127.0) as i8 as u8),
    );
}

/// Affine fit of one 32-value sub-block on 4-bit levels: x ~ scale * q - min, min >= 0.
/// Starts from the range and refines by least squares on the chosen levels.
fn fit_sub_block(x: &[f32]) -> (f32, f32) {
    let lo = x.iter().fold(0f32, |m, &v| m.min(v));
    let hi = x.iter().fold(f32::MIN, |m, &v| m.max(v));
    let mut scale = (hi - lo) / 15.0;
    let mut min = -lo;
    if scale <= 0.0 {
        return (0.0, min);
    }
    for _ in 0..3 {
        let q: Vec<f32> = x
            .iter()
            .map(|v| ((v + min) / scale).round().clamp(0.0, 15.0))
            .collect();
        let n = x.len() as f32;
        let (sq, sx) = (q.iter().sum::<f32>(), x.iter().sum::<f32>());
        let sqq: f32 = q.iter().map(|q| q * q).sum();
        let sqx: f32 = q.iter().zip(x).map(|(q, x)| q * x).sum();
        let det = n * sqq - sq * sq;
        if det <= 0.0 {
            break;
        }
        let a = (n * sqx - sq * sx) / det;
        let b = (sx - a * sq) / n;
        // The format subtracts a non-negative min; a positive offset is clamped to zero.
        let (a, b) = if b > 0.0 { (sqx / sqq, 0.0) } else { (a, b) };
        if a <= 0.0 {
            break;
        }
        scale = a;
        min = -b;
    }
    (scale, min)
}

/// 256 values as 8 sub-blocks of 32 with 6-bit scales and mins relative to two f16 super-block
/// factors: x = d * sc_j * q - dmin * m_j, q in 0..16.
fn q4_k(x: &[f32], out: &mut Vec<u8>) {
    let fits: Vec<(f32, f32)> = x.chunks_exact(32).map(fit_sub_block).collect();
    let max_scale = fits.iter().fold(0f32, |m, f| m.max(f.0));
    let max_min = fits.iter().fold(0f32, |m, f| m.max(f.1));
    let d = f16::from_f32(max_scale / 63.0).to_f32();
    let dmin = f16::from_f32(max_min / 63.0).to_f32();
    let level = |v: f32, unit: f32| {
        if unit > 0.0 {
            (v / unit).round().clamp(0.0, 63.0) as u8
        } else {
            0
        }
    };
    let sc: Vec<u8> = fits.iter().map(|f| level(f.0, d)).collect();
    let mn: Vec<u8> = fits.iter().map(|f| level(f.1, dmin)).collect();
    push_f16(out, d);
    push_f16(out, dmin);
    // 12 bytes: sub-blocks 0..4 in the low 6 bits of bytes 0..4 (scales) and 4..8 (mins);
    // sub-blocks 4..8 as nibbles of bytes 8..12 with their top 2 bits in the spare bits above.
    let mut s = [0u8; 12];
    for j in 0..4 {
        s[j] = sc[j] | (sc[j + 4] >> 4) << 6;
        s[j + 4] = mn[j] | (mn[j + 4] >> 4) << 6;
        s[j + 8] = (sc[j + 4] & 0xF) | (mn[j + 4] & 0xF) << 4;
    }
    out.extend_from_slice(&s);
    let q: Vec<u8> = x
        .chunks_exact(32)
        .enumerate()
        .flat_map(|(j, sub)| {
            let (step, off) = (d * sc[j] as f32, dmin * mn[j] as f32);
            sub.iter().map(move |&v| {
                if step > 0.0 {
                    ((v + off) / step).round().clamp(0.0, 15.0) as u8
                } else {
                    0
                }
            })
        })
        .collect();
    // Groups of 64 values: sub-block 2g in the low nibbles, 2g+1 in the high ones.
    for g in 0..4 {
        for l in 0..32 {
            out.push(q[g * 64 + l] | q[g * 64 + 32 + l] << 4);
        }
    }
}
