//! Shared test helpers: one GPU per test binary, deterministic random data, tolerance checks.
#![allow(dead_code)]

use ficoco::gpu::{Gpu, GpuOptions};
use std::sync::{Arc, OnceLock};

/// The adapter the tests run on (lavapipe in CI). Options come from the environment.
pub fn gpu() -> &'static Arc<Gpu> {
    static GPU: OnceLock<Arc<Gpu>> = OnceLock::new();
    GPU.get_or_init(|| {
        let opts = GpuOptions::from_env().expect("FICOCO_* environment");
        let g = Gpu::new_blocking(&opts).expect("a wgpu adapter (install mesa-vulkan-drivers)");
        eprintln!("adapter: {}", g.describe());
        Arc::new(g)
    })
}

/// A GPU without SHADER_F16 and with browser-like 128 MiB bindings, for the portable paths.
pub fn portable_gpu() -> &'static Arc<Gpu> {
    static GPU: OnceLock<Arc<Gpu>> = OnceLock::new();
    GPU.get_or_init(|| {
        let mut opts = GpuOptions::from_env().expect("FICOCO_* environment");
        opts.disable_f16 = true;
        opts.disable_subgroups = true;
        opts.max_binding = Some(128 << 20);
        Arc::new(Gpu::new_blocking(&opts).expect("a wgpu adapter"))
    })
}

/// Deterministic pseudo-random numbers (SplitMix64), uniform in [-scale, scale).
pub fn rand_vec(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15).wrapping_add(1);
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E3779B97F4A7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// The float64 oracle of a linear layer: `x [m, k] @ w^T (+ bias)`, `w` in PyTorch's `[n, k]`.
pub fn linear64(x: &[f32], w: &[f32], bias: Option<&[f32]>, m: usize, k: usize) -> Vec<f64> {
    let n = w.len() / k;
    let mut out = Vec::with_capacity(m * n);
    for r in 0..m {
        for c in 0..n {
            let s: f64 = (0..k)
                .map(|i| x[r * k + i] as f64 * w[c * k + i] as f64)
                .sum();
            out.push(s + bias.map_or(0.0, |b| b[c] as f64));
        }
    }
    out
}

/// Largest absolute difference; panics on length mismatch or NaN.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            assert!(
                x.is_finite() && y.is_finite(),
                "non-finite value {x} vs {y}"
            );
            (x - y).abs()
        })
        .fold(0.0, f32::max)
}

/// Assert `got` matches `want` within `atol + rtol * |want|` element-wise, with a useful message.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= atol + rtol * w.abs(),
            "{what}: element {i}: got {g}, want {w} (max abs diff {})",
            max_abs_diff(got, want)
        );
    }
}

/// torch's `gelu(x, approximate="tanh")` in f64.
pub fn gelu_tanh64(x: f64) -> f64 {
    let u = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3));
    0.5 * x * (1.0 + u.tanh())
}

/// erf in f64: Taylor series near 0, the Laplace continued fraction for erfc beyond 2.5
/// (the series cancels catastrophically there).
pub fn erf64(x: f64) -> f64 {
    let z = x.abs();
    if z < 2.5 {
        let (mut sum, mut term, mut n) = (0.0f64, x, 0.0f64);
        while term.abs() > 1e-18 * sum.abs().max(1e-300) || n < 3.0 {
            sum += term / (2.0 * n + 1.0);
            n += 1.0;
            term *= -x * x / n;
        }
        return sum * 2.0 / std::f64::consts::PI.sqrt();
    }
    let mut f = z;
    for k in (1..80).rev() {
        f = z + (k as f64 / 2.0) / f;
    }
    let erfc = (-z * z).exp() / std::f64::consts::PI.sqrt() / f;
    (1.0 - erfc).copysign(x)
}

/// The keys llava-hf/llava-1.5-7b-hf's config.json actually lists; everything else is default.
pub const LLAVA_15_7B: &str = r#"{
  "architectures": ["LlavaForConditionalGeneration"],
  "ignore_index": -100, "image_token_index": 32000, "model_type": "llava", "pad_token_id": 32001,
  "projector_hidden_act": "gelu",
  "text_config": {"_name_or_path": "lmsys/vicuna-7b-v1.5", "architectures": ["LlamaForCausalLM"],
    "max_position_embeddings": 4096, "model_type": "llama", "rms_norm_eps": 1e-05,
    "torch_dtype": "float16", "vocab_size": 32064},
  "tie_word_embeddings": false, "torch_dtype": "float16", "transformers_version": "4.36.0.dev0",
  "vision_config": {"hidden_size": 1024, "image_size": 336, "intermediate_size": 4096,
    "model_type": "clip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 24,
    "patch_size": 14, "projection_dim": 768, "vocab_size": 32000},
  "vision_feature_layer": -2, "vision_feature_select_strategy": "default", "vocab_size": 32064
}"#;

/// The binary of example `name` in `target/<profile>/examples/`, next to this test's `deps/`,
/// built once per test binary with the test's profile (`cargo test --test X` alone builds no
/// examples).
pub fn example(name: &str) -> std::path::PathBuf {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let mut built = BUILT.get_or_init(Default::default).lock().unwrap();
    if let Some(p) = built.get(name) {
        return p.clone();
    }
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let mut cargo = std::process::Command::new(env!("CARGO"));
    cargo
        .args(["build", "--quiet", "--example", name, "--manifest-path"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .arg("--target-dir")
        .arg(profile_dir.parent().unwrap());
    if profile_dir.ends_with("release") {
        cargo.arg("--release");
    }
    let status = cargo.status().expect("running cargo");
    assert!(status.success(), "cargo build --example {name} failed");
    let path = profile_dir.join("examples").join(name);
    built.insert(name.to_string(), path.clone());
    path
}
