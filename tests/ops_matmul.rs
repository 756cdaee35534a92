//! Matmul kernels (tiled, every register tile, mat-vec) x f16/f32 weights x both dense weight
//! layouts x epilogues against a CPU reference.
mod common;
use common::*;
use ficoco::gpu::{DType, Gpu, GpuOptions, MatmulVariant, WeightLayout};
use ficoco::ops::matmul::RegisterTile;
use ficoco::ops::{matmul_with, Epilogue, MatmulPath, WeightMatrix};

fn epi(v: f64, e: Epilogue, old: f64) -> f64 {
    match e {
        Epilogue::None => v,
        Epilogue::Gelu => 0.5 * v * (1.0 + erf64(v / 2f64.sqrt())),
        Epilogue::GeluTanh => gelu_tanh64(v),
        Epilogue::QuickGelu => v / (1.0 + (-1.702 * v).exp()),
        Epilogue::Accumulate => old + v,
    }
}

fn round_f16(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect()
}

#[allow(clippy::too_many_arguments)]
fn check(
    g: &Gpu,
    path: MatmulPath,
    m: usize,
    k: usize,
    n: usize,
    dtype: DType,
    layout: WeightLayout,
    e: Epilogue,
    bias: bool,
) {
    let x = rand_vec(m * k, 1 + m as u64, 1.0);
    let mut w = rand_vec(n * k, 2 + n as u64, 0.5);
    if dtype == DType::F16 {
        w = round_f16(&w);
    }
    let bvec = rand_vec(n, 3, 0.5);
    let old = rand_vec(m * n, 4, 1.0);
    let tx = g.upload_f32(&x, &[m, k], "x").unwrap();
    let tw = WeightMatrix::from_out_in_laid_out(g, &w, n, k, dtype, layout, "w").unwrap();
    let tb = g.upload_f32(&bvec, &[n], "b").unwrap();
    let out = g.upload_f32(&old, &[m, n], "out").unwrap();
    let mut b = g.batch();
    matmul_with(&mut b, path, &tx, &tw, bias.then_some(&tb), e, &out).unwrap();
    b.submit();
    let got = g.read_f32(&out).unwrap();
    let want: Vec<f32> = linear64(&x, &w, bias.then_some(&bvec[..]), m, k)
        .into_iter()
        .zip(&old)
        .map(|(s, &o)| epi(s, e, o as f64) as f32)
        .collect();
    let what = format!("{path:?} {m}x{k}x{n} {dtype:?} {layout:?} {e:?} bias={bias}");
    assert_close(&what, &got, &want, 2e-5 * (k as f32).sqrt(), 1e-5);
}

/// The weight layout of the `i`-th epilogue's case: both layouts, each with and without bias,
/// at every shape, path and type, without running every epilogue twice.
fn layout_for(i: usize) -> WeightLayout {
    WeightLayout::ALL[(i / 2) % 2]
}

const EPIS: [Epilogue; 5] = [
    Epilogue::None,
    Epilogue::Gelu,
    Epilogue::GeluTanh,
    Epilogue::QuickGelu,
    Epilogue::Accumulate,
];

/// Odd M, K (not a multiple of 4 or 8) and N (not a multiple of 4) exercise every bounds path.
const SHAPES: [(usize, usize, usize); 5] = [
    (5, 64, 96),
    (37, 130, 66),
    (65, 257, 129),
    (130, 64, 128),
    (9, 13, 7),
];

/// The paths a device runs for matrices: both variants with their defaults, every register tile.
fn matrix_paths(g: &Gpu) -> Vec<MatmulPath> {
    let mut paths: Vec<MatmulPath> = MatmulVariant::ALL.map(MatmulPath::Matrix).to_vec();
    paths.extend(RegisterTile::supported(g).map(MatmulPath::Register));
    paths
}

#[test]
fn matrix_variants_match_cpu() {
    for g in [gpu(), portable_gpu()] {
        for path in matrix_paths(g) {
            for (m, k, n) in SHAPES {
                for dtype in [DType::F32, DType::F16] {
                    for (i, e) in EPIS.into_iter().enumerate() {
                        let layout = layout_for(i);
                        check(g, path, m, k, n, dtype, layout, e, i % 2 == 0);
                    }
                }
            }
        }
    }
}

#[test]
fn register_tiles_cover_the_device() {
    let g = gpu();
    let tiles: Vec<RegisterTile> = RegisterTile::supported(g).collect();
    assert!(tiles.contains(&RegisterTile::default_for(g)));
    let portable: Vec<RegisterTile> = RegisterTile::supported(portable_gpu()).collect();
    assert!(portable.iter().all(|t| !t.subgroup), "{portable:?}");
    assert_eq!(portable.len(), 6);
    if g.info.device_type == wgpu::DeviceType::Cpu && g.caps.subgroups {
        // llvmpipe: subgroups of 8, so the subgroup tiles (the default there) must run.
        assert_eq!(tiles.len(), RegisterTile::ALL.len());
        assert!(RegisterTile::default_for(g).subgroup);
    }
}

#[test]
fn subgroup_tiles_are_refused_without_subgroups() {
    let g = portable_gpu();
    let x = g.upload_f32(&[0.0; 8 * 8], &[8, 8], "x").unwrap();
    let w = WeightMatrix::from_out_in(g, &[0.0; 8 * 8], 8, 8, DType::F32, "w").unwrap();
    let out = g.zeros(&[8, 8], DType::F32, "o").unwrap();
    let tile = RegisterTile {
        rows: 8,
        cols: 2,
        subgroup: true,
    };
    let mut b = g.batch();
    let e = matmul_with(
        &mut b,
        MatmulPath::Register(tile),
        &x,
        &w,
        None,
        Epilogue::None,
        &out,
    );
    assert!(e.unwrap_err().to_string().contains("subgroups"));
}

#[test]
fn matvec_matches_cpu() {
    for g in [gpu(), portable_gpu()] {
        for path in [MatmulPath::MatVec, MatmulPath::MatVecSplit] {
            for (m, k, n) in [
                (1, 64, 96),
                (3, 40, 36),
                (4, 257, 129),
                (2, 1000, 300),
                (1, 13, 5),
            ] {
                for dtype in [DType::F32, DType::F16] {
                    for (i, e) in EPIS.into_iter().enumerate() {
                        let layout = layout_for(i);
                        check(g, path, m, k, n, dtype, layout, e, i % 2 == 1);
                    }
                }
            }
        }
    }
}

#[test]
fn weights_above_the_binding_limit_are_split() {
    let opts = GpuOptions {
        max_binding: Some(16 << 10),
        ..GpuOptions::from_env().unwrap()
    };
    let g = Gpu::new_blocking(&opts).unwrap();
    let w = rand_vec(300 * 64, 9, 1.0);
    let tw = WeightMatrix::from_out_in(&g, &w, 300, 64, DType::F32, "w").unwrap();
    assert!(tw.chunks() >= 4, "{} chunks", tw.chunks());
    let matvecs = [MatmulPath::MatVec, MatmulPath::MatVecSplit];
    for path in matvecs.into_iter().chain(matrix_paths(&g)) {
        for dtype in [DType::F32, DType::F16] {
            for layout in WeightLayout::ALL {
                check(&g, path, 3, 64, 300, dtype, layout, Epilogue::None, true);
                if !matvecs.contains(&path) {
                    check(
                        &g,
                        path,
                        13,
                        64,
                        300,
                        dtype,
                        layout,
                        Epilogue::Accumulate,
                        false,
                    );
                }
            }
        }
    }
}

#[test]
fn shape_mismatch_is_an_error() {
    let g = gpu();
    let x = g.upload_f32(&[0.0; 6], &[2, 3], "x").unwrap();
    let w = WeightMatrix::from_out_in(g, &[0.0; 8], 2, 4, DType::F32, "w").unwrap();
    let out = g.zeros(&[2, 2], DType::F32, "o").unwrap();
    let mut b = g.batch();
    let e = matmul_with(
        &mut b,
        MatmulPath::MatVec,
        &x,
        &w,
        None,
        Epilogue::None,
        &out,
    );
    assert!(e.unwrap_err().to_string().contains("matmul"));
}
