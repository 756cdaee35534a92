//! LayerNorm and RMSNorm against a CPU reference.
mod common;
use common::*;
use ficoco::ops;

fn cpu_norm(x: &[f32], dim: usize, w: &[f32], b: Option<&[f32]>, eps: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(dim) {
        let n = dim as f64;
        let (mean, var) = match b {
            Some(_) => {
                let m = row.iter().map(|&v| v as f64).sum::<f64>() / n;
                (
                    m,
                    row.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / n,
                )
            }
            None => (
                0.0,
                row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / n,
            ),
        };
        let inv = 1.0 / (var + eps as f64).sqrt();
        for (i, &v) in row.iter().enumerate() {
            let y = (v as f64 - mean) * inv * w[i] as f64 + b.map_or(0.0, |b| b[i] as f64);
            out.push(y as f32);
        }
    }
    out
}

#[test]
fn layer_norm_and_rms_norm_match_cpu() {
    let g = gpu();
    // Odd sizes, a dim below and above the workgroup size, rows with a large offset.
    for (rows, dim) in [(1, 3), (7, 64), (5, 1000), (3, 257)] {
        let x: Vec<f32> = rand_vec(rows * dim, 1, 2.0)
            .iter()
            .map(|v| v + 3.0)
            .collect();
        let w = rand_vec(dim, 2, 1.0);
        let bias = rand_vec(dim, 3, 0.5);
        let tx = g.upload_f32(&x, &[rows, dim], "x").unwrap();
        let tw = g.upload_f32(&w, &[dim], "w").unwrap();
        let tb = g.upload_f32(&bias, &[dim], "b").unwrap();
        let ln = g
            .zeros(&[rows, dim], ficoco::gpu::DType::F32, "ln")
            .unwrap();
        let rms = g
            .zeros(&[rows, dim], ficoco::gpu::DType::F32, "rms")
            .unwrap();
        let mut b = g.batch();
        ops::layer_norm(&mut b, &tx, &tw, &tb, 1e-5, &ln).unwrap();
        ops::rms_norm(&mut b, &tx, &tw, 1e-6, &rms).unwrap();
        b.submit();
        let want_ln = cpu_norm(&x, dim, &w, Some(&bias), 1e-5);
        let want_rms = cpu_norm(&x, dim, &w, None, 1e-6);
        assert_close(
            "layer_norm",
            &g.read_f32(&ln).unwrap(),
            &want_ln,
            1e-4,
            1e-4,
        );
        assert_close(
            "rms_norm",
            &g.read_f32(&rms).unwrap(),
            &want_rms,
            1e-4,
            1e-4,
        );
    }
}

#[test]
fn norm_rejects_wrong_weight_shape() {
    let g = gpu();
    let x = g.upload_f32(&[0.0; 8], &[2, 4], "x").unwrap();
    let w = g.upload_f32(&[1.0; 3], &[3], "w").unwrap();
    let out = g.zeros(&[2, 4], ficoco::gpu::DType::F32, "o").unwrap();
    let mut b = g.batch();
    let err = ops::rms_norm(&mut b, &x, &w, 1e-6, &out)
        .unwrap_err()
        .to_string();
    assert!(err.contains("rms_norm weight"), "{err}");
}
