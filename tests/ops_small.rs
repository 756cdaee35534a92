//! Elementwise, embedding, patch, sampling and the bench's multiply-add roof kernels against CPU
//! references.
mod common;
use common::*;
use ficoco::gpu::{DType, Gpu, GpuOptions};
use ficoco::ops::{self, Activation, EmbeddingTable};

fn run1(g: &Gpu, f: impl FnOnce(&mut ficoco::gpu::Batch)) {
    let mut b = g.batch();
    f(&mut b);
    b.submit();
}

#[test]
fn activations_match_f64() {
    let mut x = rand_vec(3001, 1, 8.0);
    x.extend([-30.0, 30.0, 0.0, -6.0, 6.0, 1e-6]);
    for g in [gpu(), portable_gpu()] {
        let tx = g.upload_f32(&x, &[x.len()], "x").unwrap();
        let out = g.zeros(&[x.len()], DType::F32, "o").unwrap();
        for (act, f) in [
            (
                Activation::Gelu,
                (|v: f64| 0.5 * v * (1.0 + erf64(v / 2f64.sqrt()))) as fn(f64) -> f64,
            ),
            (Activation::GeluTanh, gelu_tanh64),
            (Activation::QuickGelu, |v| v / (1.0 + (-1.702 * v).exp())),
            (Activation::Silu, |v| v / (1.0 + (-v).exp())),
        ] {
            run1(g, |b| ops::activate(b, &tx, act, &out).unwrap());
            let want: Vec<f32> = x.iter().map(|&v| f(v as f64) as f32).collect();
            assert_close(
                &format!("{act:?}"),
                &g.read_f32(&out).unwrap(),
                &want,
                1e-6,
                1e-6,
            );
        }
    }
}

#[test]
fn add_silu_mul_copy_gather_match_cpu() {
    let g = gpu();
    let (n, d) = (37, 13);
    let a = rand_vec(n * d, 2, 3.0);
    let c = rand_vec(n * d, 3, 3.0);
    let ta = g.upload_f32(&a, &[n, d], "a").unwrap();
    let tc = g.upload_f32(&c, &[n, d], "c").unwrap();
    let out = g.zeros(&[n, d], DType::F32, "o").unwrap();
    run1(g, |b| ops::add(b, &ta, &tc, &out).unwrap());
    let want: Vec<f32> = a.iter().zip(&c).map(|(x, y)| x + y).collect();
    assert_close("add", &g.read_f32(&out).unwrap(), &want, 0.0, 0.0);
    // gate and up as blocks of one buffer, laid out as side by side outputs.
    let (starts, len) = ops::side_by_side_offsets(n, &[d, d]);
    assert_eq!(starts, [0, (n * d).next_multiple_of(64)]);
    let gate_up = g.zeros(&[len], DType::F32, "gate_up").unwrap();
    let (gate, up) = (gate_up.slice(0, &[n, d]), gate_up.slice(starts[1], &[n, d]));
    run1(g, |b| ops::copy_rows(b, &ta, &gate, 0).unwrap());
    run1(g, |b| ops::copy_rows(b, &tc, &up, 0).unwrap());
    run1(g, |b| ops::silu_mul(b, &gate, &up).unwrap());
    run1(g, |b| assert!(ops::silu_mul(b, &up, &gate).is_err()));
    run1(g, |b| assert!(ops::silu_mul(b, &ta, &tc).is_err()));
    let want: Vec<f32> = a
        .iter()
        .zip(&c)
        .map(|(&x, &y)| ((x as f64 / (1.0 + (-x as f64).exp())) * y as f64) as f32)
        .collect();
    let got = g.read_f32(&gate_up).unwrap();
    assert_close("silu_mul", &got[..n * d], &want, 1e-6, 1e-6);
    assert_close(
        "silu_mul up",
        &got[starts[1]..starts[1] + n * d],
        &c,
        0.0,
        0.0,
    );
    let big = g.zeros(&[n + 5, d], DType::F32, "big").unwrap();
    run1(g, |b| ops::copy_rows(b, &ta, &big, 4).unwrap());
    let got = g.read_f32(&big).unwrap();
    assert_eq!(&got[4 * d..(4 + n) * d], &a[..]);
    assert!(got[..4 * d]
        .iter()
        .chain(&got[(4 + n) * d..])
        .all(|&v| v == 0.0));
    let idx: Vec<u32> = vec![5, 0, 36, 5, 17];
    let ti = g.upload_u32(&idx, &[5], "idx").unwrap();
    let gathered = g.zeros(&[5, d], DType::F32, "g").unwrap();
    run1(g, |b| ops::gather_rows(b, &ta, &ti, &gathered).unwrap());
    let want: Vec<f32> = idx
        .iter()
        .flat_map(|&i| a[i as usize * d..(i as usize + 1) * d].to_vec())
        .collect();
    assert_eq!(g.read_f32(&gathered).unwrap(), want);
    let bad = g.zeros(&[2, d], DType::F32, "bad").unwrap();
    let mut b = g.batch();
    assert!(ops::copy_rows(&mut b, &ta, &bad, 0).is_err());
}

#[test]
fn embedding_over_several_chunks() {
    let opts = GpuOptions {
        max_binding: Some(4 << 10),
        ..GpuOptions::from_env().unwrap()
    };
    let g = Gpu::new_blocking(&opts).unwrap();
    let (vocab, dim) = (301, 24);
    let table = rand_vec(vocab * dim, 4, 1.0);
    for dtype in [DType::F32, DType::F16] {
        let t = EmbeddingTable::from_rows(&g, &table, vocab, dim, dtype, "emb").unwrap();
        assert!(t.chunks() >= 3, "{} chunks", t.chunks());
        let ids: Vec<u32> = vec![0, 300, 17, 150, 151, 42, 299, 1, 5000];
        let ti = g.upload_u32(&ids, &[ids.len()], "ids").unwrap();
        let out = g
            .upload_f32(&vec![7.0; ids.len() * dim], &[ids.len(), dim], "o")
            .unwrap();
        run1(&g, |b| ops::embed(b, &t, &ti, &out).unwrap());
        let got = g.read_f32(&out).unwrap();
        for (r, &id) in ids.iter().enumerate() {
            let row = &got[r * dim..(r + 1) * dim];
            if id as usize >= vocab {
                assert!(
                    row.iter().all(|&v| v == 0.0),
                    "out-of-vocabulary id gives zeros"
                );
                continue;
            }
            let want = &table[id as usize * dim..(id as usize + 1) * dim];
            for (a, b) in row.iter().zip(want) {
                let b = if dtype == DType::F16 {
                    half::f16::from_f32(*b).to_f32()
                } else {
                    *b
                };
                assert_eq!(*a, b, "{dtype:?} id {id}");
            }
        }
    }
}

#[test]
fn im2col_and_vision_embed_match_cpu() {
    let g = gpu();
    let (h, w, ps, d) = (28, 42, 14, 8);
    let px = rand_vec(3 * h * w, 6, 1.0);
    let tp = g.upload_f32(&px, &[3, h, w], "px").unwrap();
    let np = (h / ps) * (w / ps);
    let cols = g.zeros(&[np, 3 * ps * ps], DType::F32, "cols").unwrap();
    run1(g, |b| ops::im2col(b, &tp, ps, &cols).unwrap());
    let got = g.read_f32(&cols).unwrap();
    for p in 0..np {
        let (gy, gx) = (p / (w / ps), p % (w / ps));
        for c in 0..3 {
            for ky in 0..ps {
                for kx in 0..ps {
                    let want = px[c * h * w + (gy * ps + ky) * w + gx * ps + kx];
                    assert_eq!(got[p * 3 * ps * ps + c * ps * ps + ky * ps + kx], want);
                }
            }
        }
    }
    let patches = rand_vec(np * d, 7, 1.0);
    let class = rand_vec(d, 8, 1.0);
    let pos = rand_vec((np + 1) * d, 9, 1.0);
    let (tpa, tcl, tpo) = (
        g.upload_f32(&patches, &[np, d], "p").unwrap(),
        g.upload_f32(&class, &[d], "c").unwrap(),
        g.upload_f32(&pos, &[np + 1, d], "pos").unwrap(),
    );
    let out = g.zeros(&[np + 1, d], DType::F32, "o").unwrap();
    run1(g, |b| {
        ops::vision_embed(b, &tpa, Some(&tcl), &tpo, &out).unwrap()
    });
    let mut want: Vec<f32> = class.iter().zip(&pos).map(|(a, b)| a + b).collect();
    want.extend(patches.iter().zip(&pos[d..]).map(|(a, b)| a + b));
    assert_eq!(g.read_f32(&out).unwrap(), want);
}

fn cpu_nucleus(logits: &[f32], temp: f32, top_p: f32, random: f32) -> u32 {
    let m = logits.iter().cloned().fold(f32::MIN, f32::max) as f64;
    let e: Vec<f64> = logits
        .iter()
        .map(|&l| ((l as f64 - m) / temp as f64).exp())
        .collect();
    let z: f64 = e.iter().sum();
    let p: Vec<f64> = e.iter().map(|x| x / z).collect();
    let mut sorted = p.clone();
    sorted.sort_by(|a, b| b.partial_cmp(a).unwrap());
    let mut acc = 0.0;
    let mut t = sorted[0];
    for &q in &sorted {
        acc += q;
        t = q;
        if acc >= top_p as f64 {
            break;
        }
    }
    let kept: f64 = p.iter().filter(|&&q| q >= t).sum();
    let target = random as f64 * kept;
    let mut acc = 0.0;
    for (i, &q) in p.iter().enumerate() {
        if q >= t {
            acc += q;
            if target < acc {
                return i as u32;
            }
        }
    }
    unreachable!()
}

#[test]
fn argmax_and_sampling_match_cpu() {
    for g in [gpu(), portable_gpu()] {
        let tok = g.zeros(&[1], DType::U32, "tok").unwrap();
        for v in [7usize, 32000, 151936] {
            let mut l = rand_vec(v, v as u64, 5.0);
            l[v / 3] = 9.0;
            l[v - 1] = 9.0; // tie: the lower index wins
            let tl = g.upload_f32(&l, &[v], "l").unwrap();
            run1(g, |b| ops::argmax(b, &tl, &tok).unwrap());
            assert_eq!(g.read_u32(&tok).unwrap()[0], (v / 3) as u32, "argmax V={v}");
        }
        let v = 1000;
        let l = rand_vec(v, 77, 3.0);
        let tl = g.upload_f32(&l, &[v], "l").unwrap();
        let amax = l
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.partial_cmp(b.1).unwrap())
            .unwrap()
            .0 as u32;
        for (temp, top_p, r) in [
            (1.0, 1e-4, 0.9),
            (0.7, 0.9, 0.3),
            (1.0, 1.0, 0.999),
            (2.0, 0.5, 0.0),
            (1.3, 0.95, 0.61),
        ] {
            run1(g, |b| ops::sample(b, &tl, temp, top_p, r, &tok).unwrap());
            let got = g.read_u32(&tok).unwrap()[0];
            assert_eq!(
                got,
                cpu_nucleus(&l, temp, top_p, r),
                "T={temp} p={top_p} r={r}"
            );
            if top_p < 1e-3 {
                assert_eq!(got, amax);
            }
        }
        let mut b = g.batch();
        assert!(ops::sample(&mut b, &tl, 0.0, 1.0, 0.5, &tok).is_err());
    }
}

#[test]
fn sampling_histogram_follows_probabilities() {
    let g = gpu();
    let l = [0.0f32, 1.0, 2.0, 0.5];
    let tl = g.upload_f32(&l, &[4], "l").unwrap();
    let outs: Vec<_> = (0..200)
        .map(|i| {
            let t = g.zeros(&[1], DType::U32, "t").unwrap();
            let mut b = g.batch();
            ops::sample(&mut b, &tl, 1.0, 1.0, (i as f32 + 0.5) / 200.0, &t).unwrap();
            b.submit();
            t
        })
        .collect();
    let mut counts = [0usize; 4];
    for t in &outs {
        counts[g.read_u32(t).unwrap()[0] as usize] += 1;
    }
    let z: f64 = l.iter().map(|&x| (x as f64).exp()).sum();
    for (i, &c) in counts.iter().enumerate() {
        let want = (l[i] as f64).exp() / z * 200.0;
        assert!(
            (c as f64 - want).abs() <= 2.0,
            "token {i}: {c} draws, expected {want:.1}"
        );
    }
}

#[test]
fn read_peak_sums_every_row() {
    // The streaming roof reads every word once: per-row wrapping sums match the CPU's, for a row
    // count that is not a multiple of 64.
    let g = gpu();
    let (rows, words) = (100, 28);
    let data: Vec<u32> = (0..rows * words as u32)
        .map(|i| i.wrapping_mul(2654435761) ^ (i >> 3))
        .collect();
    let t = g
        .upload_u32(&data, &[rows as usize, words], "data")
        .unwrap();
    let out = g.zeros(&[rows as usize], DType::F32, "o").unwrap();
    let mut bytes = 0;
    run1(g, |b| bytes = ops::read_peak(b, &t, &out).unwrap());
    assert_eq!(bytes, rows as u64 * words as u64 * 4);
    let got = g.read_f32(&out).unwrap();
    for (r, row) in data.chunks(words).enumerate() {
        let want = row.iter().fold(0u32, |a, &w| a.wrapping_add(w));
        assert_eq!(got[r].to_bits(), want, "row {r}");
    }
}

#[test]
fn alu_peak_matches_cpu() {
    // The roof kernel's arithmetic is real (nothing folded away): its per-invocation sums match
    // the same multiply-adds on the CPU, for an invocation count that is not a multiple of 64.
    let g = gpu();
    let (n, steps) = (200, 37u32);
    let out = g.zeros(&[n], DType::F32, "o").unwrap();
    let mut flops = 0;
    run1(g, |b| flops = ops::alu_peak(b, &out, steps).unwrap());
    assert_eq!(flops, n as u64 * steps as u64 * 64);
    let want: Vec<f32> = (0..n)
        .map(|i| {
            let s = (i & 7) as f32 * 1e-7;
            let w = [0.999 + s, 0.998 + s, 0.997 + s, 0.996 + s];
            let start = [s, 1.0, 2.0, 3.0];
            (0..8)
                .map(|k| {
                    (0..4)
                        .map(|j| {
                            let mut a = start[j] + k as f32;
                            for _ in 0..steps {
                                a = a * w[j] + (1.0 - w[j]);
                            }
                            a
                        })
                        .sum::<f32>()
                })
                .sum()
        })
        .collect();
    assert_close("alu_peak", &g.read_f32(&out).unwrap(), &want, 1e-5, 1e-5);
}
