//! Attention (prefill, decode, causal, GQA, probabilities) and RoPE against CPU references.
mod common;
use common::*;
use ficoco::gpu::{AttentionVariant, DType, Gpu, GpuOptions};
use ficoco::ops::{
    attention, rope, AttentionMap, AttentionScratch, AttentionShape, RopeScaling, RopeTable,
};
use ficoco::Error;

/// Returns (out [q_len, heads*hd], head-averaged probs [q_len, kv_len]).
fn cpu_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    q_len: usize,
    kv_len: usize,
    s: &AttentionShape,
    sizes: Option<&[f32]>,
) -> (Vec<f32>, Vec<f32>) {
    let (h, kvh, hd) = (s.heads, s.kv_heads, s.head_dim);
    let mut out = vec![0f32; q_len * h * hd];
    let mut probs = vec![0f64; q_len * kv_len];
    for i in 0..q_len {
        let n = if s.causal {
            kv_len - q_len + i + 1
        } else {
            kv_len
        };
        for head in 0..h {
            let g = head / (h / kvh);
            let sc: Vec<f64> = (0..n)
                .map(|j| {
                    (0..hd)
                        .map(|d| {
                            q[i * h * hd + head * hd + d] as f64
                                * k[j * kvh * hd + g * hd + d] as f64
                        })
                        .sum::<f64>()
                        * s.scale as f64
                        + sizes.map_or(0.0, |z| (z[j] as f64).ln())
                })
                .collect();
            let m = sc.iter().cloned().fold(f64::MIN, f64::max);
            let z: f64 = sc.iter().map(|x| (x - m).exp()).sum();
            for j in 0..n {
                let pj = (sc[j] - m).exp() / z;
                probs[i * kv_len + j] += pj / h as f64;
                for d in 0..hd {
                    out[i * h * hd + head * hd + d] +=
                        (pj * v[j * kvh * hd + g * hd + d] as f64) as f32;
                }
            }
        }
    }
    (out, probs.into_iter().map(|x| x as f32).collect())
}

/// Rows needs subgroups of 8: the portable device (no subgroups) refuses it.
fn runs_here(g: &Gpu, variant: AttentionVariant) -> bool {
    variant != AttentionVariant::Rows || g.caps.subgroups_of_eight()
}

fn shape(heads: usize, kv_heads: usize, head_dim: usize, causal: bool) -> AttentionShape {
    AttentionShape {
        heads,
        kv_heads,
        head_dim,
        causal,
        scale: (head_dim as f32).powf(-0.5),
    }
}

/// `cap` rows of K/V exist, the first `kv_len` are attended.
fn check(g: &Gpu, s: &AttentionShape, q_len: usize, kv_len: usize, cap: usize, with_probs: bool) {
    check_sized(g, s, q_len, kv_len, cap, with_probs, None)
}

/// [`check`] with ToMe's key sizes.
fn check_sized(
    g: &Gpu,
    s: &AttentionShape,
    q_len: usize,
    kv_len: usize,
    cap: usize,
    with_probs: bool,
    sizes: Option<&[f32]>,
) {
    let (heads, kv_heads, hd, causal) = (s.heads, s.kv_heads, s.head_dim, s.causal);
    let q = rand_vec(q_len * heads * hd, 11 + q_len as u64, 1.5);
    let k = rand_vec(cap * kv_heads * hd, 12 + hd as u64, 1.5);
    let v = rand_vec(cap * kv_heads * hd, 13, 1.0);
    let tq = g.upload_f32(&q, &[q_len, heads * hd], "q").unwrap();
    let tk = g.upload_f32(&k, &[cap, kv_heads * hd], "k").unwrap();
    let tv = g.upload_f32(&v, &[cap, kv_heads * hd], "v").unwrap();
    let scratch = AttentionScratch::new(g, q_len + 3, heads).unwrap();
    let tsizes = sizes.map(|z| g.upload_f32(z, &[kv_len], "key sizes").unwrap());
    let (want, want_p) = cpu_attention(&q, &k, &v, q_len, kv_len, s, sizes);
    // Every variant, whatever the device would pick.
    for variant in AttentionVariant::ALL {
        let out = g.zeros(&[q_len, heads * hd], DType::F32, "out").unwrap();
        let probs = g.zeros(&[q_len, kv_len], DType::F32, "probs").unwrap();
        let mut b = g.batch();
        let run = attention(
            &mut b,
            Some(variant),
            &tq,
            &tk,
            &tv,
            kv_len,
            s,
            &scratch,
            &out,
            with_probs.then_some((&probs, AttentionMap::Probabilities)),
            tsizes.as_ref(),
        );
        if !runs_here(g, variant) {
            assert!(matches!(run, Err(Error::Unsupported(_))), "{run:?}");
            continue;
        }
        run.unwrap();
        b.submit();
        let what = format!(
            "{} h{heads}/{kv_heads} hd{hd} q{q_len} kv{kv_len} causal={causal} sized={}",
            variant.name(),
            sizes.is_some()
        );
        assert_close(&what, &g.read_f32(&out).unwrap(), &want, 1e-5, 1e-4);
        if with_probs {
            let got = g.read_f32(&probs).unwrap();
            assert_close(&format!("{what} probs"), &got, &want_p, 1e-6, 1e-4);
            for i in 0..q_len {
                let row = &got[i * kv_len..(i + 1) * kv_len];
                let sum: f32 = row.iter().sum();
                assert!(
                    (sum - 1.0).abs() < 1e-4,
                    "{what}: probs row {i} sums to {sum}"
                );
                if causal {
                    assert!(
                        row[kv_len - q_len + i + 1..].iter().all(|&x| x == 0.0),
                        "{what}: masked probs not 0"
                    );
                }
            }
        }
    }
}

/// The pre-softmax map (the FiCoCo authors' reading): head-averaged `scale * q.k` over every
/// key, future keys of a causal map and size bias included.
#[test]
fn scores_map_matches_cpu() {
    let g = gpu();
    for (h, kvh, hd, causal) in [(4, 4, 8, false), (6, 2, 16, true)] {
        let s = shape(h, kvh, hd, causal);
        let (n, cap) = (45, 48);
        let q = rand_vec(n * h * hd, 21, 1.5);
        let k = rand_vec(cap * kvh * hd, 22, 1.5);
        let v = rand_vec(cap * kvh * hd, 23, 1.0);
        let sizes: Vec<f32> = (0..n).map(|j| 1.0 + (j % 3) as f32).collect();
        let tq = g.upload_f32(&q, &[n, h * hd], "q").unwrap();
        let tk = g.upload_f32(&k, &[cap, kvh * hd], "k").unwrap();
        let tv = g.upload_f32(&v, &[cap, kvh * hd], "v").unwrap();
        let tz = g.upload_f32(&sizes, &[n], "sizes").unwrap();
        let scratch = AttentionScratch::new(g, n, h).unwrap();
        let mut want = vec![0f32; n * n];
        for i in 0..n {
            for j in 0..n {
                let mut a = 0f64;
                for head in 0..h {
                    let kh = head / (h / kvh);
                    let dot: f64 = (0..hd)
                        .map(|d| {
                            q[i * h * hd + head * hd + d] as f64
                                * k[j * kvh * hd + kh * hd + d] as f64
                        })
                        .sum();
                    a += dot * s.scale as f64;
                }
                want[i * n + j] = (a / h as f64) as f32;
            }
        }
        let (want_out, _) = cpu_attention(&q, &k, &v, n, n, &s, Some(&sizes));
        for variant in AttentionVariant::ALL {
            let out = g.zeros(&[n, h * hd], DType::F32, "out").unwrap();
            let map = g.zeros(&[n, n], DType::F32, "scores").unwrap();
            let mut b = g.batch();
            let m = Some((&map, AttentionMap::Scores));
            let (z, x) = (Some(&tz), variant);
            let run = attention(&mut b, Some(x), &tq, &tk, &tv, n, &s, &scratch, &out, m, z);
            if !runs_here(g, x) {
                assert!(matches!(run, Err(Error::Unsupported(_))), "{run:?}");
                continue;
            }
            run.unwrap();
            b.submit();
            let what = format!("{} scores h{h}/{kvh} hd{hd} causal={causal}", x.name());
            assert_close(&what, &g.read_f32(&map).unwrap(), &want, 1e-5, 1e-4);
            assert_close(
                &format!("{what} out"),
                &g.read_f32(&out).unwrap(),
                &want_out,
                1e-5,
                1e-4,
            );
        }
    }
}

#[test]
fn prefill_matches_cpu() {
    for g in [gpu(), portable_gpu()] {
        // 80: a head size whose key tile (25 rows) is not a power of two.
        for (h, kvh, hd) in [(4, 4, 8), (4, 2, 16), (8, 1, 64), (2, 2, 80), (2, 2, 128)] {
            for causal in [false, true] {
                check(g, &shape(h, kvh, hd, causal), 37, 37, 40, true);
                check(g, &shape(h, kvh, hd, causal), 70, 70, 70, false);
            }
        }
    }
}

/// A head size that is no multiple of 4 takes `shared` when the device chose its variant, but a
/// variant the user forced is never swapped: `rows` is then refused, not silently replaced.
#[test]
fn forced_rows_refuses_odd_head_size() {
    let g = gpu();
    if !g.caps.subgroups_of_eight() {
        return;
    }
    let mut opts = GpuOptions::from_env().expect("FICOCO_* environment");
    opts.attention = Some(AttentionVariant::Rows);
    let forced = Gpu::new_blocking(&opts).expect("a wgpu adapter");
    assert!(forced.caps.attention_forced);
    let s = shape(2, 2, 6, true);
    for (device, want_ok) in [(g.as_ref(), !g.caps.attention_forced), (&forced, false)] {
        let q = device
            .upload_f32(&rand_vec(5 * 12, 1, 1.0), &[5, 12], "q")
            .unwrap();
        let kv = device
            .upload_f32(&rand_vec(5 * 12, 2, 1.0), &[5, 12], "kv")
            .unwrap();
        let out = device.zeros(&[5, 12], DType::F32, "out").unwrap();
        let scratch = AttentionScratch::new(device, 5, 2).unwrap();
        let mut b = device.batch();
        let run = attention(
            &mut b, None, &q, &kv, &kv, 5, &s, &scratch, &out, None, None,
        );
        if want_ok {
            run.unwrap();
            b.submit();
        } else {
            assert!(matches!(run, Err(Error::Unsupported(_))), "{run:?}");
        }
    }
}

/// Proportional attention: keys weighted by the sizes of merged tokens.
#[test]
fn key_sizes_match_cpu() {
    for g in [gpu(), portable_gpu()] {
        for (n, with_probs) in [(37, true), (70, false), (70, true)] {
            let sizes: Vec<f32> = (0..n).map(|j| 1.0 + (j * 7 % 5) as f32).collect();
            let s = shape(4, 4, 16, false);
            check_sized(g, &s, n, n, n, with_probs, Some(&sizes));
        }
    }
}

#[test]
fn decode_and_continued_prefill_match_cpu() {
    for g in [gpu(), portable_gpu()] {
        // `rows` decodes with an invocation per head, a kv head's heads on whole groups of 8
        // lanes: groups of 2, 8, 1, 8, 16, 7 and 3 heads.
        let shapes = [
            (4, 2, 16),
            (8, 1, 64),
            (4, 4, 128),
            (32, 4, 64),
            (16, 1, 32),
            (14, 2, 64),
            (9, 3, 64),
        ];
        for (h, kvh, hd) in shapes {
            check(g, &shape(h, kvh, hd, true), 1, 1, 8, true);
            check(g, &shape(h, kvh, hd, true), 1, 133, 140, true);
            check(g, &shape(h, kvh, hd, true), 3, 65, 65, true);
            // More queries than one `rows` workgroup, after a cached prefix.
            check(g, &shape(h, kvh, hd, true), 70, 140, 140, true);
        }
    }
}

fn cpu_rope(x: &[f32], pos: &[u32], heads: usize, hd: usize, inv: &[f32]) -> Vec<f32> {
    let mut out = x.to_vec();
    for (r, &p) in pos.iter().enumerate() {
        for h in 0..heads {
            for i in 0..hd / 2 {
                let a = (p as f32 * inv[i]) as f64;
                let base = r * heads * hd + h * hd;
                let (x1, x2) = (x[base + i] as f64, x[base + i + hd / 2] as f64);
                out[base + i] = (x1 * a.cos() - x2 * a.sin()) as f32;
                out[base + i + hd / 2] = (x2 * a.cos() + x1 * a.sin()) as f32;
            }
        }
    }
    out
}

#[test]
fn rope_matches_cpu() {
    let scalings = [
        RopeScaling::None,
        RopeScaling::Linear { factor: 4.0 },
        RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position: 8192,
        },
    ];
    for g in [gpu(), portable_gpu()] {
        for hd in [8, 64, 128] {
            for theta in [1e4f32, 5e5] {
                for sc in &scalings {
                    let heads = 3;
                    let pos: Vec<u32> = vec![0, 1, 5, 9, 77, 600, 2047];
                    let x = rand_vec(pos.len() * heads * hd, 5, 1.0);
                    let t = RopeTable::new(g, hd, theta, sc).unwrap();
                    let tx = g.upload_f32(&x, &[pos.len(), heads * hd], "x").unwrap();
                    let tp = g.upload_u32(&pos, &[pos.len()], "pos").unwrap();
                    let mut b = g.batch();
                    rope(&mut b, &tx, &tp, heads, &t).unwrap();
                    b.submit();
                    let inv = ficoco::ops::rope::inv_freq(hd, theta, sc);
                    let want = cpu_rope(&x, &pos, heads, hd, &inv);
                    assert_close(
                        &format!("rope hd{hd} theta{theta} {sc:?}"),
                        &g.read_f32(&tx).unwrap(),
                        &want,
                        2e-5,
                        1e-5,
                    );
                }
            }
        }
    }
}

#[test]
fn llama3_inv_freq_matches_transformers_rule() {
    // Frequencies with wavelength above original/low_freq are divided by the factor; below
    // original/high_freq they are kept; in between they are interpolated.
    let sc = RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position: 8192,
    };
    let base = ficoco::ops::rope::inv_freq(128, 5e5, &RopeScaling::None);
    let scaled = ficoco::ops::rope::inv_freq(128, 5e5, &sc);
    assert_eq!(scaled[0], base[0]);
    assert!((scaled[63] - base[63] / 8.0).abs() < 1e-12);
    let mid = (0..64).find(|&i| scaled[i] != base[i] && scaled[i] != base[i] / 8.0);
    assert!(mid.is_some(), "no interpolated frequency");
}
