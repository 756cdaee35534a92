//! GGML block formats: the CPU dequantisation in `ops::quant` and the GPU kernels that read the
//! blocks (quantised matmul / mat-vec variants, embedding gather) against the `gguf` Python
//! package's values (fixture from scripts/make_quant_fixtures.py).

mod common;

use ficoco::gpu::{DType, Gpu, GpuOptions, MatmulVariant, WeightLayout};
use ficoco::ops::{
    dequantize, matmul_into, matmul_with, EmbeddingTable, Epilogue, GgmlType, MatmulPath,
    WeightFormat, WeightMatrix,
};
use safetensors::SafeTensors;

const TYPES: [(&str, GgmlType); 8] = [
    ("Q4_0", GgmlType::Q4_0),
    ("Q4_1", GgmlType::Q4_1),
    ("Q5_0", GgmlType::Q5_0),
    ("Q5_1", GgmlType::Q5_1),
    ("Q8_0", GgmlType::Q8_0),
    ("Q4_K", GgmlType::Q4K),
    ("Q5_K", GgmlType::Q5K),
    ("Q6_K", GgmlType::Q6K),
];

#[test]
fn cpu_dequantize_matches_gguf_package() {
    let file = std::fs::read("tests/fixtures/quant/blocks.safetensors").unwrap();
    let st = SafeTensors::deserialize(&file).unwrap();
    for (name, ty) in TYPES {
        assert_eq!(ty.name(), name);
        assert_eq!(GgmlType::from_id(ty.id()).unwrap(), ty);
        let bytes = st.tensor(&format!("{name}.bytes")).unwrap();
        let want: Vec<f32> = st
            .tensor(&format!("{name}.values"))
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(ty.bytes_for(want.len()).unwrap(), bytes.data().len());
        let mut got = vec![0f32; want.len()];
        dequantize(ty, bytes.data(), &mut got).unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-6 * w.abs().max(1.0),
                "{name}[{i}]: {g} vs {w}"
            );
        }
    }
}

#[test]
fn bad_sizes_and_types_are_errors() {
    let mut out = vec![0f32; 32];
    assert!(dequantize(GgmlType::Q8_0, &[0u8; 33], &mut out).is_err());
    assert!(GgmlType::Q4K.bytes_for(300).is_err());
    let e = GgmlType::from_id(10).unwrap_err().to_string();
    assert!(e.contains("Q2_K"), "{e}");
}

/// A `[n, blocks * block_elems]` matrix made of the fixture's blocks (cycled), as raw bytes and
/// as the oracle's values.
fn tiled_matrix(name: &str, ty: GgmlType, n: usize, blocks: usize) -> (Vec<u8>, Vec<f32>) {
    let file = std::fs::read("tests/fixtures/quant/blocks.safetensors").unwrap();
    let st = SafeTensors::deserialize(&file).unwrap();
    let bytes = st.tensor(&format!("{name}.bytes")).unwrap().data().to_vec();
    let values: Vec<f32> =
        bytemuck::pod_collect_to_vec(st.tensor(&format!("{name}.values")).unwrap().data());
    let (bb, be) = (ty.block_bytes(), ty.block_elems());
    let total = bytes.len() / bb;
    let (mut wb, mut wv) = (Vec::new(), Vec::new());
    for i in 0..n * blocks {
        let j = (i * 7 + i / blocks) % total;
        wb.extend_from_slice(&bytes[j * bb..(j + 1) * bb]);
        wv.extend_from_slice(&values[j * be..(j + 1) * be]);
    }
    (wb, wv)
}

fn gelu(v: f64) -> f64 {
    0.5 * v * (1.0 + common::erf64(v / 2f64.sqrt()))
}

/// Every block type through every quantised kernel (the lanes kernel as mat-vec and as matmul,
/// the split mat-vec, the tiled matmul) on both weight layouts (13 rows: the last group of 4
/// padded), with and without bias and epilogue, against float64 dot products of the oracle's
/// dequantised values.
#[test]
fn gpu_kernels_match_the_oracle_values() {
    let lanes = [
        (MatmulPath::MatVec, &[1usize, 3][..]),
        (MatmulPath::Matrix(MatmulVariant::Register), &[5, 37][..]),
    ];
    let split = [
        (MatmulPath::MatVecSplit, &[1usize, 4][..]),
        (MatmulPath::Matrix(MatmulVariant::Tiled), &[5, 70][..]),
    ];
    let all = [&lanes[..], &split[..]].concat();
    kernels_match_the_oracle_values(common::gpu(), &all, &WeightLayout::ALL);
    // Without subgroups the lanes kernel loads every activation instead of broadcasting.
    // (The layout's addressing does not depend on subgroups: one layout is enough here.)
    let g = common::portable_gpu();
    kernels_match_the_oracle_values(g, &lanes, &[g.caps.weight_layout]);
}

fn kernels_match_the_oracle_values(
    g: &Gpu,
    paths: &[(MatmulPath, &[usize])],
    layouts: &[WeightLayout],
) {
    for (name, ty) in TYPES {
        let blocks = if ty.block_elems() == 256 { 2 } else { 5 };
        let n = 13;
        let k = blocks * ty.block_elems();
        let (wb, wv) = tiled_matrix(name, ty, n, blocks);
        for &layout in layouts {
            let w = WeightMatrix::from_ggml_laid_out(g, ty, &wb, n, k, layout, name).unwrap();
            assert_eq!(w.format(), WeightFormat::Blocks(ty));
            for &(path, ms) in paths {
                for &m in ms {
                    for (bias, e) in [(false, Epilogue::None), (true, Epilogue::Gelu)] {
                        let x = common::rand_vec(m * k, m as u64, 1.0);
                        let bvec = common::rand_vec(n, 9, 0.5);
                        let tx = g.upload_f32(&x, &[m, k], "x").unwrap();
                        let tb = g.upload_f32(&bvec, &[n], "b").unwrap();
                        let out = g.zeros(&[m, n], DType::F32, "out").unwrap();
                        let mut b = g.batch();
                        matmul_with(&mut b, path, &tx, &w, bias.then_some(&tb), e, &out).unwrap();
                        b.submit();
                        let got = g.read_f32(&out).unwrap();
                        let bv = bias.then_some(&bvec[..]);
                        let want: Vec<f32> = common::linear64(&x, &wv, bv, m, k)
                            .into_iter()
                            .map(|s| (if bias { gelu(s) } else { s }) as f32)
                            .collect();
                        let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
                        common::assert_close(
                            &format!("{name} {} {path:?} m={m} bias={bias}", layout.name()),
                            &got,
                            &want,
                            1e-4 * scale.max(1.0),
                            1e-4,
                        );
                    }
                }
            }
        }
    }
}

/// Layers side by side (a fused q | k | v): q and k in one Q5_0 matrix, v in Q8_0, written as
/// three row-major blocks of one buffer, with a bias over all columns and an accumulating
/// epilogue, for the mat-vec and the matmul paths.
#[test]
fn side_by_side_outputs_land_in_their_blocks() {
    let g = common::gpu();
    let (k, widths) = (64, [24usize, 8, 8]);
    let (qb, qv) = tiled_matrix("Q5_0", GgmlType::Q5_0, 32, 2);
    let (vb, vv) = tiled_matrix("Q8_0", GgmlType::Q8_0, 8, 2);
    let qk = WeightMatrix::from_ggml(g, GgmlType::Q5_0, &qb, 32, k, "qk").unwrap();
    let v = WeightMatrix::from_ggml(g, GgmlType::Q8_0, &vb, 8, k, "v").unwrap();
    let wv = [qv, vv].concat();
    let total = 40;
    let bvec = common::rand_vec(total, 4, 0.5);
    let tb = g.upload_f32(&bvec, &[total], "b").unwrap();
    for m in [1usize, 3, 6] {
        let x = common::rand_vec(m * k, 11 + m as u64, 1.0);
        // Each block starts on 64 floats (256 bytes).
        let len = (m * 24).next_multiple_of(64) + (m * 8).next_multiple_of(64) + m * 8;
        assert_eq!(
            ficoco::ops::side_by_side_offsets(m, &widths).1,
            len.next_multiple_of(64)
        );
        let old = common::rand_vec(len, 12, 1.0);
        let tx = g.upload_f32(&x, &[m, k], "x").unwrap();
        let out = g.upload_f32(&old, &[len], "out").unwrap();
        let mut b = g.batch();
        let e = Epilogue::Accumulate;
        matmul_into(&mut b, &tx, &qk, Some(&tb), e, &out, &widths, 0).unwrap();
        matmul_into(&mut b, &tx, &v, Some(&tb), e, &out, &widths, 32).unwrap();
        b.submit();
        let got = g.read_f32(&out).unwrap();
        let mut want = old.clone();
        let mut start = 0;
        let mut col = 0;
        for w in widths {
            for r in 0..m {
                for c in 0..w {
                    let oc = col + c;
                    let s: f64 = (0..k)
                        .map(|i| x[r * k + i] as f64 * wv[oc * k + i] as f64)
                        .sum();
                    want[start + r * w + c] += (s + bvec[oc] as f64) as f32;
                }
            }
            start = (start + m * w).next_multiple_of(64);
            col += w;
        }
        common::assert_close(&format!("side by side m={m}"), &got, &want, 1e-4, 1e-4);
    }
    // The blocks must hold every layer's columns.
    let out = g.zeros(&[total], DType::F32, "small").unwrap();
    let tx = g.upload_f32(&vec![0.0; 2 * k], &[2, k], "x").unwrap();
    let mut b = g.batch();
    let e = Epilogue::None;
    assert!(matmul_into(&mut b, &tx, &qk, None, e, &out, &widths, 0).is_err());
    assert!(matmul_into(&mut b, &tx, &v, None, e, &out, &[24, 8], 32).is_err());
}

/// The gather dequantises the same rows; a tied table shares the matrix's buffers; a matrix
/// larger than the binding limit is split into row chunks (of whole row groups) and still
/// multiplies and gathers; on both weight layouts.
#[test]
fn embedding_gather_and_chunking() {
    let small = Gpu::new_blocking(&GpuOptions {
        max_binding: Some(8 << 10),
        ..GpuOptions::from_env().unwrap()
    })
    .unwrap();
    for (name, ty) in TYPES {
        let n = 61;
        let blocks = if ty.block_elems() == 256 { 1 } else { 8 };
        let k = blocks * ty.block_elems();
        let (wb, wv) = tiled_matrix(name, ty, n, blocks);
        for (g, layout) in [&**common::gpu(), &small]
            .into_iter()
            .flat_map(|g| WeightLayout::ALL.map(|l| (g, l)))
        {
            let name = &format!("{name} {}", layout.name());
            let w = WeightMatrix::from_ggml_laid_out(g, ty, &wb, n, k, layout, name).unwrap();
            let table = EmbeddingTable::from_matrix(&w).unwrap();
            assert_eq!(
                table.bytes(),
                w.bytes(),
                "{name}: the table shares the matrix"
            );
            if std::ptr::eq(g, &small) {
                assert!(w.chunks() > 1, "{name}: {} bytes in one chunk", w.bytes());
            }
            let ids: Vec<u32> = vec![3, 0, 60, 3, 1000, 37];
            let tid = g.upload_u32(&ids, &[ids.len()], "ids").unwrap();
            let out = g.zeros(&[ids.len(), k], DType::F32, "rows").unwrap();
            let mut b = g.batch();
            ficoco::ops::embed(&mut b, &table, &tid, &out).unwrap();
            let x = common::rand_vec(k, 5, 1.0);
            let tx = g.upload_f32(&x, &[1, k], "x").unwrap();
            let y = g.zeros(&[1, n], DType::F32, "y").unwrap();
            matmul_with(
                &mut b,
                MatmulPath::MatVec,
                &tx,
                &w,
                None,
                Epilogue::None,
                &y,
            )
            .unwrap();
            b.submit();
            let got = g.read_f32(&out).unwrap();
            let mut want = Vec::new();
            for &id in &ids {
                match id as usize {
                    i if i < n => want.extend_from_slice(&wv[i * k..(i + 1) * k]),
                    _ => want.extend(std::iter::repeat_n(0.0, k)),
                }
            }
            common::assert_close(&format!("{name} gather"), &got, &want, 1e-6, 1e-6);
            let got = g.read_f32(&y).unwrap();
            let want: Vec<f32> = (0..n)
                .map(|c| {
                    (0..k)
                        .map(|i| x[i] as f64 * wv[c * k + i] as f64)
                        .sum::<f64>() as f32
                })
                .collect();
            common::assert_close(&format!("{name} chunked mat-vec"), &got, &want, 1e-4, 1e-4);
        }
    }
}

#[test]
fn bad_quantised_matrices_are_errors() {
    let g = common::gpu();
    let (wb, _) = tiled_matrix("Q8_0", GgmlType::Q8_0, 2, 2);
    let e = WeightMatrix::from_ggml(g, GgmlType::Q8_0, &wb[1..], 2, 64, "w")
        .err()
        .unwrap();
    assert!(e.to_string().contains("bytes"), "{e}");
    let e = WeightMatrix::from_ggml(g, GgmlType::Q4K, &wb, 2, 100, "w")
        .err()
        .unwrap();
    assert!(e.to_string().contains("whole number of blocks"), "{e}");
    let e = EmbeddingTable::from_matrix(
        &WeightMatrix::from_out_in(g, &[0.0; 64], 2, 32, DType::F32, "d").unwrap(),
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("quantised"), "{e}");
}
