//! CPU quantisation (f32 -> Q8_0 / Q4_K blocks) checked through the dequantiser, which
//! tests/ops_quant.rs proves equal to llama.cpp's `gguf` package: the bytes are valid blocks and
//! the values come back within each format's rounding error.

mod common;

use ficoco::ops::{dequantize, quantize, GgmlType};

fn roundtrip(ty: GgmlType, x: &[f32]) -> Vec<f32> {
    let bytes = quantize(ty, x).unwrap();
    assert_eq!(bytes.len(), ty.bytes_for(x.len()).unwrap());
    let mut y = vec![0f32; x.len()];
    dequantize(ty, &bytes, &mut y).unwrap();
    y
}

fn rel_rms(x: &[f32], y: &[f32]) -> f64 {
    let num: f64 = x.iter().zip(y).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
    let den: f64 = x.iter().map(|a| (*a as f64).powi(2)).sum();
    (num / den).sqrt()
}

#[test]
fn q8_0_is_within_half_a_step() {
    let x = common::rand_vec(32 * 40, 3, 2.0);
    let y = roundtrip(GgmlType::Q8_0, &x);
    for (bx, by) in x.chunks(32).zip(y.chunks(32)) {
        let step = bx.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
        for (a, b) in bx.iter().zip(by) {
            assert!(
                (a - b).abs() <= 0.5 * step * 1.01 + 1e-7,
                "{a} vs {b}, step {step}"
            );
        }
    }
    assert!(rel_rms(&x, &y) < 0.01);
}

#[test]
fn q4_k_keeps_rows_close() {
    // Uniform values, a shifted row (all positive: the min term matters) and a row with one
    // large outlier per sub-block.
    let mut x = common::rand_vec(256 * 8, 5, 1.0);
    x.extend(common::rand_vec(256 * 4, 6, 1.0).iter().map(|v| v + 3.0));
    let mut spiky = common::rand_vec(256 * 4, 7, 0.1);
    spiky.iter_mut().step_by(32).for_each(|v| *v = 4.0);
    x.extend(spiky);
    let y = roundtrip(GgmlType::Q4K, &x);
    let e_uniform = rel_rms(&x[..2048], &y[..2048]);
    let e_shifted = rel_rms(&x[2048..3072], &y[2048..3072]);
    // 16 levels over the range of uniform values: step 2/15, rms error step/sqrt(12) ~ 0.038
    // against an rms value of 0.577 -> ~0.067; allow for 6-bit scales.
    assert!(e_uniform < 0.09, "uniform rows: {e_uniform}");
    assert!(e_shifted < 0.03, "shifted rows: {e_shifted}");
    let e_spiky = rel_rms(&x[3072..], &y[3072..]);
    assert!(e_spiky < 0.2, "rows with outliers: {e_spiky}");
    // All-zero blocks stay zero.
    assert!(roundtrip(GgmlType::Q4K, &[0.0; 256])
        .iter()
        .all(|&v| v == 0.0));
    assert!(roundtrip(GgmlType::Q8_0, &[0.0; 32])
        .iter()
        .all(|&v| v == 0.0));
}

#[test]
fn unsupported_targets_and_partial_blocks_are_errors() {
    assert!(quantize(GgmlType::Q6K, &[0.0; 256])
        .unwrap_err()
        .to_string()
        .contains("Q8_0 and Q4_K"));
    assert!(quantize(GgmlType::Q8_0, &[0.0; 33]).is_err());
}
