//! Benchmark with random weights for named shape presets: vision, prefill and decode times,
//! matmul GFLOP/s next to numpy (OpenBLAS) sgemm and the adapter's multiply-add roof, memory
//! against weights + KV cache, and the cold-start (pipeline creation) cost.
//!
//! With `--reduce METHODS` (comma-separated, or `all`) it also times each reduction method at
//! the visual-token budgets of `--budgets` (default 192,128,64 of 576, scaled to the preset):
//! prefill time (vision + LLM prefill), speedup over no reduction, the FLOPs-ideal speedup and
//! the time of the reduction stages themselves.
//!
//! cargo run --release --example bench -- [--preset xs|demo|tinyllava] [--dtype f16|f32] [--json]
//!     [--reduce all|M1,M2,...] [--budgets 192,128,64] [--runs N (timed runs, best kept; 2)]

use clap::Parser;
use ficoco::gpu::{AttentionVariant, DType, Gpu, GpuOptions, MatmulVariant, WeightLayout};
use ficoco::model::{
    GenerateOptions, HostTensor, Llava, LlavaConfig, LoadOptions, Sampling, WeightFile,
};
use ficoco::ops::matmul::RegisterTile;
use ficoco::ops::{self, matmul_with, Epilogue, MatmulPath, WeightMatrix};
use ficoco::preprocess::{PixelValues, PromptIds};
use ficoco::reduce::budget::Budget;
use ficoco::reduce::flops::Flops;
use ficoco::reduce::schedule::Schedule;
use ficoco::reduce::{
    PositionKind, ReduceSpec, ReductionPlan, ReductionStep, Spans, StepInput, METHODS,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

struct Preset {
    name: &'static str,
    /// (hidden, intermediate, layers, heads, image, patch)
    vision: (usize, usize, usize, usize, usize, usize),
    /// (hidden, intermediate, layers, heads, kv heads, vocab)
    text: (usize, usize, usize, usize, usize, usize),
    text_tokens: usize,
    decode_tokens: usize,
}

const PRESETS: &[Preset] = &[
    Preset {
        name: "xs",
        vision: (256, 1024, 4, 4, 224, 14),
        text: (512, 1408, 4, 8, 4, 8000),
        text_tokens: 60,
        decode_tokens: 8,
    },
    // The shapes of the deep demo model assets/llava-vqa-deep (12-layer tower of width 64).
    Preset {
        name: "demo",
        vision: (64, 256, 12, 4, 336, 14),
        text: (128, 256, 3, 4, 4, 83),
        text_tokens: 11,
        decode_tokens: 8,
    },
    // CLIP ViT-L/14-336 + a TinyLlama-1.1B-shaped decoder (the shapes of TinyLLaVA-1.5B).
    Preset {
        name: "tinyllava",
        vision: (1024, 4096, 24, 16, 336, 14),
        text: (2048, 5632, 22, 32, 4, 32000),
        text_tokens: 60,
        decode_tokens: 8,
    },
];

fn config_json(p: &Preset) -> String {
    let (vh, vi, vl, vn, img, patch) = p.vision;
    let (th, ti, tl, tn, tkv, vocab) = p.text;
    serde_json::json!({
        "model_type": "llava",
        "image_token_index": vocab - 1,
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "vision_config": {"hidden_size": vh, "intermediate_size": vi, "num_hidden_layers": vl,
            "num_attention_heads": vn, "image_size": img, "patch_size": patch},
        "text_config": {"model_type": "llama", "hidden_size": th, "intermediate_size": ti,
            "num_hidden_layers": tl, "num_attention_heads": tn, "num_key_value_heads": tkv,
            "vocab_size": vocab, "rms_norm_eps": 1e-5},
    })
    .to_string()
}

/// Random weights under canonical names, shaped from the config.
fn random_weights(cfg: &LlavaConfig) -> WeightFile {
    let mut seed = 0x1234_5678u64;
    let mut rand = |shape: &[usize], scale: f32, offset: f32| {
        let n: usize = shape.iter().product();
        let data = (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                offset + ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale
            })
            .collect();
        HostTensor {
            shape: shape.to_vec(),
            data,
        }
    };
    let v = &cfg.vision_config;
    let t = &cfg.text_config;
    let (d, i, p) = (v.hidden_size, v.intermediate_size, v.patch_size);
    let mut w: Vec<(String, HostTensor)> = vec![
        (
            "vision.embeddings.patch_embedding.weight".into(),
            rand(&[d, 3, p, p], 0.02, 0.0),
        ),
        (
            "vision.embeddings.class_embedding".into(),
            rand(&[d], 0.02, 0.0),
        ),
        (
            "vision.embeddings.position_embedding.weight".into(),
            rand(&[v.num_patches() + 1, d], 0.02, 0.0),
        ),
        ("vision.pre_layrnorm.weight".into(), rand(&[d], 0.05, 1.0)),
        ("vision.pre_layrnorm.bias".into(), rand(&[d], 0.02, 0.0)),
    ];
    for l in 0..cfg.vision_layers_to_run() {
        let n = |s: &str| format!("vision.encoder.layers.{l}.{s}");
        for (name, o, k) in [
            ("self_attn.q_proj", d, d),
            ("self_attn.k_proj", d, d),
            ("self_attn.v_proj", d, d),
            ("self_attn.out_proj", d, d),
            ("mlp.fc1", i, d),
            ("mlp.fc2", d, i),
        ] {
            w.push((n(&format!("{name}.weight")), rand(&[o, k], 0.02, 0.0)));
            w.push((n(&format!("{name}.bias")), rand(&[o], 0.02, 0.0)));
        }
        for norm in ["layer_norm1", "layer_norm2"] {
            w.push((n(&format!("{norm}.weight")), rand(&[d], 0.05, 1.0)));
            w.push((n(&format!("{norm}.bias")), rand(&[d], 0.02, 0.0)));
        }
    }
    let h = t.hidden_size;
    for (name, o, k) in [("projector.linear_1", h, d), ("projector.linear_2", h, h)] {
        w.push((format!("{name}.weight"), rand(&[o, k], 0.02, 0.0)));
        w.push((format!("{name}.bias"), rand(&[o], 0.02, 0.0)));
    }
    let (q, kv, ti) = (
        t.num_attention_heads * t.head_dim(),
        t.kv_heads() * t.head_dim(),
        t.intermediate_size,
    );
    w.push((
        "text.embed_tokens.weight".into(),
        rand(&[t.vocab_size, h], 0.02, 0.0),
    ));
    w.push(("lm_head.weight".into(), rand(&[t.vocab_size, h], 0.02, 0.0)));
    w.push(("text.norm.weight".into(), rand(&[h], 0.05, 1.0)));
    for l in 0..t.num_hidden_layers {
        let n = |s: &str| format!("text.layers.{l}.{s}.weight");
        for (name, o, k) in [
            ("self_attn.q_proj", q, h),
            ("self_attn.k_proj", kv, h),
            ("self_attn.v_proj", kv, h),
            ("self_attn.o_proj", h, q),
            ("mlp.gate_proj", ti, h),
            ("mlp.up_proj", ti, h),
            ("mlp.down_proj", h, ti),
        ] {
            w.push((n(name), rand(&[o, k], 0.02, 0.0)));
        }
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            w.push((n(norm), rand(&[h], 0.05, 1.0)));
        }
    }
    WeightFile::from_tensors(w)
}

/// Best GFLOP/s of one matmul shape for each of `paths`, measured in interleaved rounds so that
/// a slow spell of a shared machine hits every path alike.
fn matmul_gflops(
    gpu: &Gpu,
    m: usize,
    k: usize,
    n: usize,
    dtype: DType,
    paths: &[(MatmulPath, WeightLayout)],
) -> ficoco::Result<Vec<f64>> {
    let x = gpu.upload_f32(&vec![0.01; m * k], &[m, k], "x")?;
    let values = vec![0.01; n * k];
    // One matrix per layout; `paths` pairs each path with the layout it reads.
    let ws = WeightLayout::ALL
        .iter()
        .map(|&l| WeightMatrix::from_out_in_laid_out(gpu, &values, n, k, dtype, l, "w"))
        .collect::<ficoco::Result<Vec<_>>>()?;
    let out = gpu.zeros(&[m, n], DType::F32, "out")?;
    let mut best = vec![f64::MAX; paths.len()];
    for round in 0..5 {
        for (i, &(path, layout)) in paths.iter().enumerate() {
            let w = &ws[WeightLayout::ALL.iter().position(|&l| l == layout).unwrap()];
            let s = timed(gpu, |b| {
                matmul_with(b, path, &x, w, None, Epilogue::None, &out)
            })?;
            // Round 0 compiles the pipelines.
            if round > 0 {
                best[i] = best[i].min(s);
            }
        }
    }
    Ok(best
        .into_iter()
        .map(|s| 2.0 * (m * k * n) as f64 / s / 1e9)
        .collect())
}

/// Bytes a timed mat-vec round streams at least, so that the weights come from memory as in
/// decode (which reads each matrix once per token), not from a cache that holds one small
/// matrix (a 22 MiB matrix timed alone fits an EPYC's L3 and ran twice as fast as in decode).
const COLD_BYTES: u64 = 256 << 20;

/// Best seconds of the decode mat-vec (one row of x) with the matrix `make` builds in each of
/// `layouts`, over `rounds` after a warm-up: each round runs, for each layout in turn, one
/// mat-vec over each of enough copies to stream [`COLD_BYTES`], in one batch, and counts the
/// time per copy, so that the layouts see the same moments of a shared machine. Also returns
/// each matrix's bytes.
fn matvec_secs(
    gpu: &Gpu,
    make: impl Fn(WeightLayout) -> ficoco::Result<WeightMatrix>,
    layouts: [WeightLayout; 2],
    rounds: usize,
) -> ficoco::Result<Vec<(f64, u64)>> {
    let mut sets = Vec::new();
    for layout in layouts {
        let mut ws = vec![make(layout)?];
        while (ws.len() as u64) * ws[0].bytes() < COLD_BYTES {
            ws.push(make(layout)?);
        }
        sets.push(ws);
    }
    let (k, n) = (sets[0][0].k(), sets[0][0].n());
    let x = gpu.upload_f32(&vec![0.01; k], &[1, k], "x")?;
    let out = gpu.zeros(&[1, n], DType::F32, "out")?;
    let mut best = vec![f64::MAX; sets.len()];
    for round in 0..=rounds {
        for (ws, best) in sets.iter().zip(&mut best) {
            let s = timed(gpu, |b| {
                ws.iter()
                    .try_for_each(|w| ops::matmul(b, &x, w, None, Epilogue::None, &out))
            })?;
            if round > 0 {
                *best = best.min(s / ws.len() as f64);
            }
        }
    }
    Ok(best
        .into_iter()
        .zip(sets.iter().map(|ws| ws[0].bytes()))
        .collect())
}

/// The device's weight layout and the other one, which the bench times beside it.
fn layouts(gpu: &Gpu) -> [WeightLayout; 2] {
    let layout = gpu.caps.weight_layout;
    let other = WeightLayout::ALL
        .into_iter()
        .find(|&l| l != layout)
        .unwrap();
    [layout, other]
}

/// GB/s and GPU bytes of the decode mat-vec over a dense `[k, n]` matrix in each of `layouts`,
/// timed in the same rounds.
fn matvec_gbps(
    gpu: &Gpu,
    k: usize,
    n: usize,
    dtype: DType,
    layouts: [WeightLayout; 2],
) -> ficoco::Result<Vec<(f64, u64)>> {
    let values = vec![0.01; n * k];
    let make = |l| WeightMatrix::from_out_in_laid_out(gpu, &values, n, k, dtype, l, "w");
    let secs = matvec_secs(gpu, make, layouts, 10)?;
    Ok(secs
        .into_iter()
        .map(|(s, bytes)| (bytes as f64 / s / 1e9, bytes))
        .collect())
}

/// The time of every kernel `run` dispatches, each dispatch submitted and waited for alone,
/// divided by `per` (steps), slowest first.
fn profile_kernels(
    gpu: &Gpu,
    per: f64,
    run: impl FnOnce() -> ficoco::Result<()>,
) -> ficoco::Result<Vec<serde_json::Value>> {
    gpu.start_profile();
    let done = run();
    let times = gpu.take_profile();
    done?;
    Ok(kernel_rows(&times, per))
}

fn kernel_rows(times: &[ficoco::gpu::KernelTime], per: f64) -> Vec<serde_json::Value> {
    times
        .iter()
        .map(|k| serde_json::json!({"entry": k.entry, "calls": k.calls as f64 / per, "ms": k.ms / per}))
        .collect()
}

fn print_kernels(title: &str, rows: &[serde_json::Value]) {
    println!("| {title} | calls | ms |");
    println!("|---|---|---|");
    for k in rows {
        println!(
            "| {} | {} | {:.2} |",
            k["entry"].as_str().unwrap_or(""),
            k["calls"],
            k["ms"].as_f64().unwrap_or(0.0)
        );
    }
    println!();
}

/// Runs a repo script with `FICOCO_PYTHON` (default .venv/bin/python) and parses its JSON.
fn run_script(args: &[&str]) -> ficoco::Result<serde_json::Value> {
    let py = std::env::var("FICOCO_PYTHON").unwrap_or(".venv/bin/python".into());
    let out = std::process::Command::new(&py)
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| ficoco::Error::InvalidArgument(format!("{py}: {e} (set FICOCO_PYTHON)")))?;
    if !out.status.success() {
        return Err(ficoco::Error::InvalidArgument(format!(
            "{} failed with {} (its messages are above)",
            args[0], out.status
        )));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| ficoco::Error::InvalidArgument(e.to_string()))
}

/// Best GFLOP/s of the adapter's multiply-add roof (`ops::alu_peak`: register arithmetic only),
/// over interleaved rounds like `matmul_gflops`.
fn alu_peak_gflops(gpu: &Gpu) -> ficoco::Result<f64> {
    let out = gpu.zeros(&[64 * 1024], DType::F32, "roof")?;
    let mut flops = 0;
    let mut best = f64::MAX;
    for round in 0..5 {
        let s = timed(gpu, |b| ops::alu_peak(b, &out, 2048).map(|f| flops = f))?;
        if round > 0 {
            best = best.min(s);
        }
    }
    Ok(flops as f64 / best / 1e9)
}

/// Best GB/s of the adapter's streaming roof (`ops::read_peak`: each invocation reads its own
/// 16000-byte row in order, as the mat-vecs read weights) over [`COLD_BYTES`], in buffers that
/// each fit a 128 MiB binding.
fn read_peak_gbps(gpu: &Gpu) -> ficoco::Result<f64> {
    let (rows, words) = (8192, 4000);
    let parts = COLD_BYTES.div_ceil((rows * words * 4) as u64);
    let data = (0..parts)
        .map(|_| gpu.upload_u32(&vec![1; rows * words], &[rows, words], "streamed"))
        .collect::<ficoco::Result<Vec<_>>>()?;
    let out = gpu.zeros(&[rows], DType::F32, "sums")?;
    let mut bytes = 0;
    let mut best = f64::MAX;
    for round in 0..6 {
        let s = timed(gpu, |b| {
            bytes = 0;
            for d in &data {
                bytes += ops::read_peak(b, d, &out)?;
            }
            Ok(())
        })?;
        if round > 0 {
            best = best.min(s);
        }
    }
    Ok(bytes as f64 / best / 1e9)
}

/// Best GFLOP/s of one attention shape (`q_len` queries over as many keys) for each variant,
/// in interleaved rounds like `matmul_gflops`; counts the two products, 4 FLOPs per query, key
/// and head dim (a causal run does about half of that work).
fn attention_gflops(
    gpu: &Gpu,
    q_len: usize,
    shape: &ops::AttentionShape,
    variants: &[AttentionVariant],
) -> ficoco::Result<Vec<f64>> {
    let (h, kvh, hd) = (shape.heads, shape.kv_heads, shape.head_dim);
    let q = gpu.upload_f32(&vec![0.01; q_len * h * hd], &[q_len, h * hd], "q")?;
    let kv = gpu.upload_f32(&vec![0.01; q_len * kvh * hd], &[q_len, kvh * hd], "kv")?;
    let out = gpu.zeros(&[q_len, h * hd], DType::F32, "out")?;
    let scratch = ops::AttentionScratch::new(gpu, q_len, h)?;
    let mut best = vec![f64::MAX; variants.len()];
    for round in 0..4 {
        for (i, &v) in variants.iter().enumerate() {
            let s = timed(gpu, |b| {
                ops::attention(
                    b,
                    Some(v),
                    &q,
                    &kv,
                    &kv,
                    q_len,
                    shape,
                    &scratch,
                    &out,
                    None,
                    None,
                )
            })?;
            if round > 0 {
                best[i] = best[i].min(s);
            }
        }
    }
    let flops = 4.0 * (q_len * q_len * h * hd) as f64;
    Ok(best.into_iter().map(|s| flops / s / 1e9).collect())
}

/// Seconds to record, submit and finish one batch.
fn timed(
    gpu: &Gpu,
    record: impl FnOnce(&mut ficoco::gpu::Batch) -> ficoco::Result<()>,
) -> ficoco::Result<f64> {
    let t = Instant::now();
    let mut b = gpu.batch();
    record(&mut b)?;
    b.submit();
    gpu.wait()?;
    Ok(t.elapsed().as_secs_f64())
}

/// numpy (OpenBLAS) sgemm on the same machine, if python3 with numpy is available: best call
/// over at least 1 s, after 0.5 s of warm-up (a fresh process on an idle VM can run its first
/// calls 10x slower while OpenBLAS's threads and the vCPUs wake up).
fn numpy_gflops(m: usize, k: usize, n: usize) -> Option<f64> {
    let py = std::env::var("FICOCO_PYTHON").unwrap_or("python3".into());
    let script = format!(
        "import numpy as np, time\na=np.ones(({m},{k}),np.float32)\nb=np.ones(({k},{n}),np.float32)\nt0=time.perf_counter()\nwhile time.perf_counter()-t0<0.5: a@b\nbest=1e9\nt0=time.perf_counter()\nn=0\nwhile n<20 or time.perf_counter()-t0<1.0:\n t=time.perf_counter(); a@b; best=min(best,time.perf_counter()-t); n+=1\nprint(2*{m}*{k}*{n}/best/1e9)"
    );
    let out = std::process::Command::new(py)
        .args(["-c", &script])
        .output()
        .ok()?;
    String::from_utf8(out.stdout).ok()?.trim().parse().ok()
}

#[path = "common/cli.rs"]
mod cli;

/// Benchmark presets with random weights (vision, prefill, decode, matmul GFLOP/s against the
/// roof, memory, cold start, reduction methods), or a real GGUF decoder.
#[derive(Parser)]
#[command(name = "bench", after_help = cli::methods_help())]
struct Args {
    /// Shape preset
    #[arg(long, default_value = "xs", value_parser = ["xs", "demo", "tinyllava"])]
    preset: String,
    /// Storage type of dense weights: f16 or f32
    #[arg(long, default_value = "f16", value_parser = cli::parse_dtype)]
    dtype: DType,
    /// Print one JSON object
    #[arg(long)]
    json: bool,
    /// Time these reduction methods (comma-separated, or `all`) at each budget
    #[arg(long, value_delimiter = ',', value_name = "all|M1,M2,...")]
    reduce: Vec<String>,
    /// Visual-token budgets of --reduce, of 576 (scaled to the preset)
    #[arg(long, value_delimiter = ',', default_value = "192,128,64")]
    budgets: Vec<usize>,
    /// Timed runs; the best is kept
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Benchmark this llama.cpp GGUF decoder (prompt and decode tokens/s, GB/s) instead
    #[arg(long, value_name = "FILE.gguf", conflicts_with_all = ["preset", "reduce"])]
    gguf: Option<PathBuf>,
    /// Also run the peers on the same machine: with --gguf transformers and llama.cpp on the file
    /// (scripts/bench_gguf_peers.py), with a preset transformers' LLaVA on its shapes
    /// (scripts/bench_llava_transformers.py); both with numpy's mat-vec bandwidth
    #[arg(long)]
    peers: bool,
    /// With a preset: time every kernel of one more generate (prefill and two decode steps),
    /// each dispatch submitted and waited for alone
    #[arg(long, conflicts_with = "gguf")]
    profile: bool,
}

impl Args {
    /// The --reduce methods; `all` is every method, ficoco-vl (the two-site composition) third.
    fn methods(&self) -> Result<Vec<String>, String> {
        if self.reduce.iter().any(|m| m == "all") {
            let mut all: Vec<String> = METHODS
                .iter()
                .filter(|&&m| m != "none")
                .map(|m| m.to_string())
                .collect();
            all.insert(2, "ficoco-vl".into());
            return Ok(all);
        }
        for m in &self.reduce {
            m.parse::<ReduceSpec>().map_err(|e| e.to_string())?;
        }
        Ok(self.reduce.clone())
    }
}

fn main() {
    cli::main_with(|a: &Args| a.methods().map(drop), run);
}

fn run(args: Args) -> ficoco::Result<()> {
    let methods = args.methods().expect("checked before run");
    let (preset, dtype, json, budgets) =
        (&args.preset, args.dtype, args.json, args.budgets.clone());
    let runs = args.runs as usize;
    if let Some(file) = &args.gguf {
        return gguf_bench(file, dtype, runs, args.peers, json);
    }
    let p = PRESETS.iter().find(|p| p.name == preset).ok_or_else(|| {
        ficoco::Error::InvalidArgument(format!("preset {preset:?}: known are xs, tinyllava"))
    })?;
    let gpu = Arc::new(Gpu::new_blocking(&GpuOptions::from_env()?)?);
    let cfg = LlavaConfig::from_json_str(&config_json(p), Path::new("<preset>"))?;
    let visual = cfg.visual_tokens();
    let prompt_len = visual + p.text_tokens;
    let log = |s: &str| {
        if !json {
            eprintln!("{s}");
        }
    };
    log(&format!("adapter: {}", gpu.describe()));
    log(&format!("preset {}: building random weights...", p.name));
    let weights = random_weights(&cfg);
    let t = Instant::now();
    let opts = LoadOptions {
        dtype,
        max_prompt_tokens: prompt_len,
        max_context: prompt_len + p.decode_tokens,
        quantize: None,
    };
    let mut model = Llava::from_weights(gpu.clone(), cfg.clone(), &weights, &opts)?;
    drop(weights);
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    log(&format!("uploaded in {load_ms:.0} ms"));

    let v = &cfg.vision_config;
    let s = v.image_size;
    let pixels = PixelValues {
        data: (0..3 * s * s)
            .map(|i| ((i % 97) as f32 / 48.0) - 1.0)
            .collect(),
        channels: 3,
        height: s,
        width: s,
    };
    let prompt = synthetic_prompt(&cfg, visual, p.text_tokens);
    let gen = GenerateOptions {
        max_new_tokens: p.decode_tokens,
        sampling: Sampling::Greedy,
        stop_tokens: vec![],
        keep_prefill_logits: false,
    };
    log("cold run (compiles pipelines)...");
    pollster::block_on(model.generate(&pixels, &prompt, &gen, |_| true))?;
    // Shader compilation and pipeline creation of the whole first pass.
    let pipelines_ms = gpu.pipeline_ms();
    let allocs = gpu.allocations();
    let mut best: Option<ficoco::model::Timings> = None;
    for i in 0..runs {
        log(&format!("warm run {}...", i + 1));
        let out = pollster::block_on(model.generate(&pixels, &prompt, &gen, |_| true))?;
        let tm = out.timings;
        best = Some(match best {
            None => tm,
            Some(b) => ficoco::model::Timings {
                vision_ms: b.vision_ms.min(tm.vision_ms),
                prefill_ms: b.prefill_ms.min(tm.prefill_ms),
                decode_ms: b.decode_ms.min(tm.decode_ms),
            },
        });
    }
    let warm_allocations = gpu.allocations() - allocs;
    // Per-kernel time of one generate, each dispatch waited alone: vision + prefill up to the
    // first token, then the decode steps after it (per token).
    let (profile, decode_profile) = if args.profile {
        log("profiled run...");
        let steps = 4;
        let short = GenerateOptions {
            max_new_tokens: steps + 1,
            ..gen.clone()
        };
        let mut prefill = None;
        let decode = profile_kernels(&gpu, steps as f64, || {
            pollster::block_on(model.generate(&pixels, &prompt, &short, |_| {
                if prefill.is_none() {
                    prefill = Some(kernel_rows(&gpu.take_profile(), 1.0));
                    gpu.start_profile();
                }
                true
            }))
            .map(drop)
        })?;
        (prefill.unwrap_or_default(), decode)
    } else {
        (Vec::new(), Vec::new())
    };
    let tm = best.unwrap();
    let decode_per_token = tm.decode_ms / (p.decode_tokens - 1) as f64;
    let (_, peak) = gpu.memory();
    let weights_bytes = model.weight_bytes();
    let kv_bytes = model.kv_cache_bytes();

    let (vh, vi, ..) = p.vision;
    let (th, ti, ..) = p.text;
    let shapes = [
        (visual + 1, vh, vi),
        (visual + 1, vi, vh),
        (prompt_len, th, ti),
        (prompt_len, ti, th),
    ];
    // The default path, the other variant, and the register kernel's 4 x 4 tile without
    // subgroups (its previous default) as a baseline measured in the same rounds.
    let variant = gpu.caps.matmul;
    let other = MatmulVariant::ALL
        .into_iter()
        .find(|&o| o != variant)
        .unwrap();
    let tile = RegisterTile::default_for(&gpu);
    let baseline = RegisterTile {
        rows: 4,
        cols: 4,
        subgroup: false,
    };
    let default_name = match variant {
        MatmulVariant::Register => format!("register {}", tile.name()),
        v => v.name().to_string(),
    };
    let layout = gpu.caps.weight_layout;
    let other_layout = WeightLayout::ALL
        .into_iter()
        .find(|&l| l != layout)
        .unwrap();
    let paths = [
        (MatmulPath::Matrix(variant), layout),
        (MatmulPath::Matrix(other), layout),
        (MatmulPath::Register(baseline), layout),
        (MatmulPath::Matrix(variant), other_layout),
    ];
    let mut rows = Vec::new();
    for &(m, k, n) in &shapes {
        log(&format!("matmul {m}x{k}x{n}..."));
        let g = matmul_gflops(&gpu, m, k, n, dtype, &paths)?;
        let np = numpy_gflops(m, k, n);
        rows.push(
            serde_json::json!({"m": m, "k": k, "n": n, "gflops": g[0], "variant": default_name,
            "other_variant": {"name": other.name(), "gflops": g[1]},
            "register_4x4_gflops": g[2], "layout": layout.name(),
            "other_layout": {"name": other_layout.name(), "gflops": g[3]}, "numpy_gflops": np,
            "fraction_of_numpy": np.map(|x| g[0] / x)}),
        );
    }
    let vocab = p.text.5;
    let mut matvecs = Vec::new();
    let [layout, other_layout] = layouts(&gpu);
    for (k, n) in [(th, ti), (ti, th), (th, vocab)] {
        log(&format!("mat-vec {k}x{n}..."));
        let g = matvec_gbps(&gpu, k, n, dtype, [layout, other_layout])?;
        let ((gbps, bytes), (other, _)) = (g[0], g[1]);
        matvecs.push(
            serde_json::json!({"k": k, "n": n, "bytes": bytes, "gb_per_s": gbps,
            "layout": layout.name(),
            "other_layout": {"name": other_layout.name(), "gb_per_s": other}}),
        );
    }
    // transformers on the same shapes and threads, and numpy's mat-vec over the same bytes.
    let peers = if args.peers {
        let bytes: Vec<String> = matvecs.iter().map(|m| m["bytes"].to_string()).collect();
        let out = run_script(&[
            "scripts/bench_llava_transformers.py",
            "--config",
            &config_json(p),
            "--text-tokens",
            &p.text_tokens.to_string(),
            "--decode",
            &(p.decode_tokens - 1).to_string(),
            "--matvec-bytes",
            &bytes.join(","),
        ])?;
        for (m, np) in matvecs
            .iter_mut()
            .zip(out["numpy_matvec"].as_array().into_iter().flatten())
        {
            m["numpy_gb_per_s"] = np["gb_per_s"].clone();
        }
        out["transformers"].clone()
    } else {
        serde_json::Value::Null
    };
    // Attention at the tower's and the decoder's prefill shapes, each variant (default first).
    let attn_variants = [
        gpu.caps.attention,
        AttentionVariant::ALL
            .into_iter()
            .find(|&v| v != gpu.caps.attention)
            .unwrap(),
    ];
    let mut attn_rows = Vec::new();
    let attn_shape = |heads, kv_heads, head_dim, causal| ops::AttentionShape {
        heads,
        kv_heads,
        head_dim,
        causal,
        scale: (head_dim as f32).powf(-0.5),
    };
    let (vc, tc) = (&cfg.vision_config, &cfg.text_config);
    let vheads = vc.num_attention_heads;
    for (what, n, shape) in [
        (
            "vision",
            visual + 1,
            attn_shape(vheads, vheads, vc.hidden_size / vheads, false),
        ),
        (
            "prefill",
            prompt_len,
            attn_shape(tc.num_attention_heads, tc.kv_heads(), tc.head_dim(), true),
        ),
    ] {
        log(&format!("attention {what} {n} tokens..."));
        let g = attention_gflops(&gpu, n, &shape, &attn_variants)?;
        attn_rows.push(
            serde_json::json!({"stage": what, "tokens": n, "heads": shape.heads,
            "kv_heads": shape.kv_heads, "head_dim": shape.head_dim, "causal": shape.causal,
            "gflops": g[0], "variant": attn_variants[0].name(),
            "other_variant": {"name": attn_variants[1].name(), "gflops": g[1]}}),
        );
    }
    log("multiply-add and streaming roofs...");
    let roof = alu_peak_gflops(&gpu)?;
    let read_roof = read_peak_gbps(&gpu)?;
    let mut reduce_rows = Vec::new();
    let mut base_prefill_ms = tm.vision_ms + tm.prefill_ms;
    if !methods.is_empty() {
        // The machine's speed drifts: an unreduced run follows every reduced one and the
        // speedups divide the fastest of all unreduced runs (so they err low).
        let mut base_ms = tm.vision_ms + tm.prefill_ms;
        let base_prompt = synthetic_prompt(&cfg, visual, p.text_tokens);
        let base_flops = Flops::of(&cfg, &Schedule::full(&cfg, p.text_tokens))?;
        for m in &methods {
            for &b in &budgets {
                // Budgets are stated for LLaVA-1.5's 576 visual tokens.
                let keep = (b * visual).div_ceil(576).max(1);
                log(&format!("reduce {m}:{keep}..."));
                let spec = ReduceSpec {
                    method: m.clone(),
                    budget: Budget::Tokens(keep),
                };
                let planned = match spec.plan(&cfg, p.text_tokens) {
                    Ok(planned) => planned,
                    Err(e) => {
                        log(&format!("  skipped: {e}"));
                        reduce_rows.push(serde_json::json!({
                            "method": m, "visual_tokens": keep, "error": e.to_string()}));
                        continue;
                    }
                };
                let flops = Flops::of(&cfg, &planned.schedule)?;
                model.set_reduction(planned.plan.clone())?;
                let prompt = synthetic_prompt(&cfg, model.visual_tokens(), p.text_tokens);
                // Also compiles the reduction kernels before the timed runs.
                let (overhead, kernels) =
                    reduction_overhead_ms(&gpu, &cfg, &planned.plan, p.text_tokens)?;
                let mut best = f64::MAX;
                for _ in 0..runs {
                    let out = pollster::block_on(model.generate(&pixels, &prompt, &gen, |_| true))?;
                    best = best.min(out.timings.vision_ms + out.timings.prefill_ms);
                }
                model.set_reduction(ReductionPlan::default())?;
                let out =
                    pollster::block_on(model.generate(&pixels, &base_prompt, &gen, |_| true))?;
                base_ms = base_ms.min(out.timings.vision_ms + out.timings.prefill_ms);
                let ideal = (base_flops.vision + base_flops.projector + base_flops.llm_prefill)
                    / (flops.vision + flops.projector + flops.llm_prefill);
                reduce_rows.push(serde_json::json!({
                    "method": m, "visual_tokens": keep, "schedule": planned.schedule.to_string(),
                    "prefill_ms": best, "ideal_speedup": ideal,
                    "overhead_ms": overhead, "overhead_fraction": overhead / best,
                    "stage_kernels": kernels.iter().map(|k| serde_json::json!({
                        "entry": k.entry, "calls": k.calls, "ms": k.ms})).collect::<Vec<_>>(),
                }));
            }
        }
        for r in reduce_rows.iter_mut().filter(|r| r["error"].is_null()) {
            r["speedup"] = (base_ms / r["prefill_ms"].as_f64().unwrap()).into();
        }
        base_prefill_ms = base_ms;
    }
    let report = serde_json::json!({
        "preset": p.name,
        "adapter": gpu.describe(),
        "dtype": dtype.name(),
        "prompt_tokens": prompt_len,
        "visual_tokens": visual,
        "timings_ms": {
            "load": load_ms,
            "vision": tm.vision_ms,
            "prefill": tm.prefill_ms,
            "decode_per_token": decode_per_token,
            "pipelines": pipelines_ms,
        },
        "matmul": rows,
        "alu_peak_gflops": roof,
        "read_peak_gb_per_s": read_roof,
        "matvecs": matvecs,
        "profile": profile,
        "decode_profile": decode_profile,
        "transformers": peers,
        "attention": attn_rows,
        "peak_gpu_bytes": peak,
        "weights_bytes": weights_bytes,
        "kv_bytes": kv_bytes,
        "peak_over_weights_kv": peak as f64 / (weights_bytes + kv_bytes) as f64,
        "warm_allocations": warm_allocations,
        "pipelines": gpu.pipeline_count(),
        "reduce": reduce_rows,
        "reduce_baseline_prefill_ms": base_prefill_ms,
    });
    if json {
        println!("{report}");
        return Ok(());
    }
    println!("| preset | adapter | dtype | vision ms | prefill ms ({prompt_len} tok) | decode ms/token | pipelines ms | peak / (weights+KV) | warm allocations |");
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {:.0} | {:.0} | {:.1} | {:.0} | {:.2} ({} MiB / {} MiB) | {} |",
        p.name,
        gpu.info.name,
        dtype.name(),
        tm.vision_ms,
        tm.prefill_ms,
        decode_per_token,
        pipelines_ms,
        peak as f64 / (weights_bytes + kv_bytes) as f64,
        peak >> 20,
        (weights_bytes + kv_bytes) >> 20,
        warm_allocations
    );
    println!();
    println!(
        "| matmul M x K x N | {default_name} GFLOP/s ({}) | {} GFLOP/s | register {} GFLOP/s | {default_name}, {} weights | numpy sgemm GFLOP/s | fraction |",
        layout.name(),
        other.name(),
        baseline.name(),
        other_layout.name(),
    );
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} x {} x {} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} |",
            r["m"],
            r["k"],
            r["n"],
            r["gflops"].as_f64().unwrap(),
            r["other_variant"]["gflops"].as_f64().unwrap(),
            r["register_4x4_gflops"].as_f64().unwrap(),
            r["other_layout"]["gflops"].as_f64().unwrap(),
            r["numpy_gflops"]
                .as_f64()
                .map_or("n/a".into(), |x| format!("{x:.1}")),
            r["fraction_of_numpy"]
                .as_f64()
                .map_or("n/a".into(), |x| format!("{:.0}%", x * 100.0)),
        );
    }
    println!(
        "| multiply-add roof (`shaders/peak.wgsl`, no memory traffic) | {roof:.1} | | | | | |"
    );
    println!();
    if !profile.is_empty() {
        print_kernels(
            "kernel (vision + prefill to the first token, each dispatch alone)",
            &profile,
        );
        print_kernels(
            "decode kernel (4 steps after the first token, each dispatch alone; per token)",
            &decode_profile,
        );
    }
    println!("| decode mat-vec 1 x K x N | MiB | layout | GB/s | other layout GB/s | numpy f32 mat-vec GB/s (same bytes) | fraction |");
    println!("|---|---|---|---|---|---|---|");
    for m in &matvecs {
        let np = m["numpy_gb_per_s"].as_f64();
        println!(
            "| 1 x {} x {} | {} | {} | {:.2} | {} {:.2} | {} | {} |",
            m["k"],
            m["n"],
            m["bytes"].as_u64().unwrap_or(0) >> 20,
            m["layout"].as_str().unwrap_or(""),
            m["gb_per_s"].as_f64().unwrap_or(0.0),
            m["other_layout"]["name"].as_str().unwrap_or(""),
            m["other_layout"]["gb_per_s"].as_f64().unwrap_or(0.0),
            np.map_or("n/a".into(), |x| format!("{x:.1}")),
            np.map_or("n/a".into(), |x| format!(
                "{:.0}%",
                100.0 * m["gb_per_s"].as_f64().unwrap_or(0.0) / x
            )),
        );
    }
    println!("| streaming roof (`read_peak`, reads only) | | | {read_roof:.2} | | | |");
    println!();
    if !peers.is_null() {
        let tvp = peers["vision_prefill_ms"].as_f64().unwrap_or(f64::NAN);
        let tdec = peers["decode_ms_per_token"].as_f64().unwrap_or(f64::NAN);
        let ours = tm.vision_ms + tm.prefill_ms;
        println!("| same shapes, same threads | vision + prefill ms | decode ms/token |");
        println!("|---|---|---|");
        println!(
            "| ficoco ({}) | {ours:.0} | {decode_per_token:.1} |",
            gpu.info.name
        );
        println!(
            "| transformers {} fp32 | {tvp:.0} | {tdec:.1} |",
            peers["version"].as_str().unwrap_or("?")
        );
        println!(
            "| ratio (ficoco / transformers) | {:.2} | {:.2} |",
            ours / tvp,
            decode_per_token / tdec
        );
        println!();
    }
    println!(
        "| attention (tokens, heads/kv heads x head dim) | {} GFLOP/s | {} GFLOP/s |",
        attn_variants[0].name(),
        attn_variants[1].name()
    );
    println!("|---|---|---|");
    for r in &attn_rows {
        println!(
            "| {} {} ({}/{} x {}{}) | {:.1} | {:.1} |",
            r["stage"].as_str().unwrap(),
            r["tokens"],
            r["heads"],
            r["kv_heads"],
            r["head_dim"],
            if r["causal"].as_bool().unwrap() {
                ", causal"
            } else {
                ""
            },
            r["gflops"].as_f64().unwrap(),
            r["other_variant"]["gflops"].as_f64().unwrap(),
        );
    }
    if !reduce_rows.is_empty() {
        println!();
        println!(
            "| method | visual tokens | prefill ms (vision + LLM) | speedup | FLOPs-ideal speedup | reduction stages ms (% of prefill) |"
        );
        println!("|---|---|---|---|---|---|");
        println!("| none | {visual} | {base_prefill_ms:.0} | 1.00 | 1.00 | 0 |");
        for r in &reduce_rows {
            if let Some(e) = r["error"].as_str() {
                println!(
                    "| {} | {} | not reachable: {e} | | | |",
                    r["method"].as_str().unwrap(),
                    r["visual_tokens"]
                );
                continue;
            }
            println!(
                "| {} | {} | {:.0} | {:.2} | {:.2} | {:.1} ({:.1}%) |",
                r["method"].as_str().unwrap(),
                r["visual_tokens"],
                r["prefill_ms"].as_f64().unwrap(),
                r["speedup"].as_f64().unwrap(),
                r["ideal_speedup"].as_f64().unwrap(),
                r["overhead_ms"].as_f64().unwrap(),
                100.0 * r["overhead_fraction"].as_f64().unwrap()
            );
        }
        println!();
        println!("Reduction-stage kernels (each dispatch timed alone, ms over the plan's steps):");
        println!();
        println!("| method | visual tokens | kernel: calls, ms |");
        println!("|---|---|---|");
        for r in reduce_rows.iter().filter(|r| r["error"].is_null()) {
            let kernels: Vec<String> = r["stage_kernels"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| {
                    format!(
                        "{} {}x {:.1}",
                        k["entry"].as_str().unwrap(),
                        k["calls"],
                        k["ms"].as_f64().unwrap()
                    )
                })
                .collect();
            println!(
                "| {} | {} | {} |",
                r["method"].as_str().unwrap(),
                r["visual_tokens"],
                kernels.join(", ")
            );
        }
    }
    Ok(())
}

/// A prompt of `text` pseudo-random ids with `visual` image tokens after the first five.
fn synthetic_prompt(cfg: &LlavaConfig, visual: usize, text: usize) -> PromptIds {
    let vocab = cfg.text_config.vocab_size as u32;
    let len = visual + text;
    let mut ids: Vec<u32> = (0..len as u32)
        .map(|i| (i * 7919 + 3) % (vocab - 1))
        .collect();
    let start = 5;
    ids[start..start + visual].fill(cfg.image_token_index);
    PromptIds {
        ids,
        image_start: start,
        image_len: visual,
        text_end: len,
    }
}

/// GPU time of the plan's reduction stages alone: each step recorded on inputs of the size it
/// meets in the forward pass (best of three), and the time of each kernel in one more run with
/// every dispatch timed alone.
fn reduction_overhead_ms(
    gpu: &Gpu,
    cfg: &LlavaConfig,
    plan: &ReductionPlan,
    text_tokens: usize,
) -> ficoco::Result<(f64, Vec<ficoco::gpu::KernelTime>)> {
    let mut steps: Vec<(ficoco::reduce::Reduction, Spans, usize, usize, usize)> = Vec::new();
    let vc = &cfg.vision_config;
    let mut t = vc.num_patches() + 1;
    if let Some(v) = &plan.vision {
        let grid = vc.image_size / vc.patch_size;
        for &(_, drop) in &v.drops {
            let spans = Spans {
                cls: Some(0),
                grid: Some(grid),
                ..Spans::default()
            };
            steps.push((v.reduction.clone(), spans, t, vc.hidden_size, drop));
            t -= drop;
        }
    }
    if let Some(p) = &plan.projector {
        let spans = Spans {
            cls: Some(0),
            grid: Some(vc.image_size / vc.patch_size),
            ..Spans::default()
        };
        let d = cfg.text_config.hidden_size;
        steps.push((p.reduction.clone(), spans, t, d, p.drop));
        t -= p.drop;
    }
    let mut visual = t - usize::from(cfg.drops_cls());
    if let Some(l) = &plan.llm {
        for &(_, drop) in &l.drops {
            let n = 5 + visual + text_tokens;
            let spans = Spans {
                visual: Some(5..5 + visual),
                text: Some(5 + visual..n),
                positions: PositionKind::Rope,
                ..Spans::default()
            };
            steps.push((
                l.reduction.clone(),
                spans,
                n,
                cfg.text_config.hidden_size,
                drop,
            ));
            visual -= drop;
        }
    }
    let mut total = 0.0;
    let mut kernels: Vec<ficoco::gpu::KernelTime> = Vec::new();
    for (r, spans, n, d, drop) in steps {
        let step = ReductionStep::new(gpu, n)?;
        let hidden = gpu.upload_f32(&vec![0.5; n * d], &[n, d], "hidden")?;
        let attn = gpu.upload_f32(
            &(0..n * n)
                .map(|i| ((i * 2654435761) % 1000) as f32 / (1000.0 * n as f32))
                .collect::<Vec<_>>(),
            &[n, n],
            "attn",
        )?;
        let positions = gpu.upload_i32(
            &(0..n as i32).map(|i| i - 1).collect::<Vec<_>>(),
            &[n],
            "positions",
        )?;
        let out = gpu.zeros(&[n - drop, d], DType::F32, "out")?;
        let out_pos = gpu.zeros(&[n - drop], DType::I32, "out positions")?;
        let input = StepInput {
            hidden: &hidden,
            keys: None,
            attn: &attn,
            positions: &positions,
            sizes: None,
        };
        let mut best = f64::MAX;
        for _ in 0..3 {
            let t0 = Instant::now();
            let mut b = gpu.batch();
            step.record(&mut b, &r, &spans, &input, drop, &out, &out_pos)?;
            b.submit();
            gpu.wait()?;
            best = best.min(t0.elapsed().as_secs_f64() * 1e3);
        }
        total += best;
        gpu.start_profile();
        let mut b = gpu.batch();
        step.record(&mut b, &r, &spans, &input, drop, &out, &out_pos)?;
        b.submit();
        gpu.wait()?;
        for k in gpu.take_profile() {
            match kernels.iter_mut().find(|t| t.entry == k.entry) {
                Some(t) => {
                    t.calls += k.calls;
                    t.ms += k.ms;
                }
                None => kernels.push(k),
            }
        }
    }
    kernels.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    Ok((total, kernels))
}

/// A real GGUF decoder: prefill of a 128-token prompt and 32 decode steps (best of `runs`), GPU
/// memory against the file's tensor bytes plus the KV cache, weight bytes read per decode step
/// as GB/s; with `--peers`, transformers, llama.cpp (when installed) and numpy's matvec
/// bandwidth on the same file and machine (scripts/bench_gguf_peers.py, `FICOCO_PYTHON`).
fn gguf_bench(
    file: &Path,
    dtype: DType,
    runs: usize,
    peers: bool,
    json: bool,
) -> ficoco::Result<()> {
    use ficoco::model::{GenerateOptions, Gguf, Sampling, TextModel};
    const PROMPT: usize = 128;
    const DECODE: usize = 32;
    let gpu = Arc::new(Gpu::new_blocking(&GpuOptions::from_env()?)?);
    if !json {
        eprintln!("adapter: {}", gpu.describe());
        eprintln!("loading {} ...", file.display());
    }
    let g = Gguf::open(file)?;
    let tensor_bytes = g.tensor_bytes();
    let vocab = g.text_config()?.vocab_size;
    gpu.reset_peak();
    let opts = LoadOptions {
        dtype,
        quantize: None,
        max_prompt_tokens: PROMPT,
        max_context: PROMPT + DECODE + 1,
    };
    let mut model = TextModel::from_gguf(gpu.clone(), g, &opts)?;
    // The ids the peers script uses: ordinary tokens away from the special ones.
    let span = vocab.min(30000) - 200;
    let ids: Vec<u32> = (0..PROMPT)
        .map(|i| (100 + (i * 7919) % span) as u32)
        .collect();
    let gen = GenerateOptions {
        max_new_tokens: DECODE + 1,
        sampling: Sampling::Greedy,
        stop_tokens: vec![],
        keep_prefill_logits: false,
    };
    let (mut prefill, mut decode) = (f64::MAX, f64::MAX);
    for run in 0..runs.max(1) {
        let out = pollster::block_on(model.generate(&ids, &gen, |_| true))?;
        prefill = prefill.min(out.timings.prefill_ms);
        decode = decode.min(out.timings.decode_ms / DECODE as f64);
        if !json {
            eprintln!(
                "run {run}: prefill {:.0} ms, decode {:.1} ms/token",
                out.timings.prefill_ms,
                out.timings.decode_ms / DECODE as f64
            );
        }
    }
    // Per-kernel time of decode steps: a one-token prompt and 4 more, each dispatch waited alone.
    let steps = 5;
    let short = GenerateOptions {
        max_new_tokens: steps,
        ..gen.clone()
    };
    let decode_kernels = profile_kernels(&gpu, steps as f64, || {
        pollster::block_on(model.generate(&ids[..1], &short, |_| true)).map(drop)
    })?;
    let (_, peak) = gpu.memory();
    let kv = model.kv_cache_bytes();
    let read = model.decode_read_bytes();
    drop(model);
    let matvecs = gguf_matvecs(&gpu, file)?;
    let read_roof = read_peak_gbps(&gpu)?;
    let gbps = read as f64 / (decode / 1e3) / 1e9;
    let peers = if peers {
        run_script(&[
            "scripts/bench_gguf_peers.py",
            &file.to_string_lossy(),
            "--bytes",
            &read.to_string(),
        ])?
    } else {
        serde_json::Value::Null
    };
    let report = serde_json::json!({
        "file": file.display().to_string(),
        "adapter": gpu.describe(),
        "matvec_variant": "qmatmul_lanes on CPU adapters, qmatvec_split elsewhere",
        "prompt_tokens": PROMPT,
        "prefill_tokens_per_s": PROMPT as f64 / (prefill / 1e3),
        "decode_tokens_per_s": 1e3 / decode,
        "decode_read_bytes": read,
        "decode_gb_per_s": gbps,
        "gguf_tensor_bytes": tensor_bytes,
        "kv_cache_bytes": kv,
        "peak_gpu_bytes": peak,
        "peak_over_tensors_kv": peak as f64 / (tensor_bytes + kv) as f64,
        "peers": peers,
        "decode_kernels": decode_kernels,
        "matvecs": matvecs,
        "read_peak_gb_per_s": read_roof,
    });
    if json {
        println!("{report}");
        return Ok(());
    }
    println!("| file | prefill tokens/s ({PROMPT}) | decode tokens/s | decode GB/s | peak / (tensors + KV) |");
    println!("|---|---|---|---|---|");
    println!(
        "| {} | {:.1} | {:.2} | {gbps:.2} | {:.3} |",
        file.display(),
        PROMPT as f64 / (prefill / 1e3),
        1e3 / decode,
        peak as f64 / (tensor_bytes + kv) as f64
    );
    println!("\n| mat-vec (type, K x N) | layout | ms | GB/s | other layout GB/s |");
    println!("|---|---|---|---|---|");
    for r in &matvecs {
        println!(
            "| {} {} x {} | {} | {:.2} | {:.2} | {}: {:.2} |",
            r["type"].as_str().unwrap_or(""),
            r["k"],
            r["n"],
            r["layout"].as_str().unwrap_or(""),
            r["ms"].as_f64().unwrap_or(0.0),
            r["gb_per_s"].as_f64().unwrap_or(0.0),
            r["other_layout"]["name"].as_str().unwrap_or(""),
            r["other_layout"]["gb_per_s"].as_f64().unwrap_or(0.0)
        );
    }
    println!("| streaming roof (`read_peak`, reads only) | | | {read_roof:.2} | |");
    println!();
    print_kernels(
        "decode kernel (profiled, each dispatch alone; per token)",
        &decode_kernels,
    );
    if !peers.is_null() {
        println!("peers: {peers}");
    }
    Ok(())
}

/// The mat-vec of each distinct (type, K, N) among a GGUF file's quantised 2-D tensors, alone:
/// one row of x, best of 20 after a warm-up over copies that stream 256 MiB (`matvec_secs`),
/// GB/s of the matrix's GPU bytes; on the device's layout and, in the same rounds, the other.
fn gguf_matvecs(gpu: &Gpu, file: &Path) -> ficoco::Result<Vec<serde_json::Value>> {
    let g = ficoco::model::Gguf::open(file)?;
    let layouts = layouts(gpu);
    let mut seen = Vec::new();
    let mut rows = Vec::new();
    for t in g.tensors() {
        let key = (t.ty, t.dims.clone());
        if t.dims.len() != 2 || !t.ty.is_quantized() || seen.contains(&key) {
            continue;
        }
        seen.push(key);
        let (k, n) = (t.dims[0], t.dims[1]);
        let make = |l| WeightMatrix::from_ggml_laid_out(gpu, t.ty, g.data(t), n, k, l, &t.name);
        let secs = matvec_secs(gpu, make, layouts, 20)?;
        let gbps = |(s, bytes): (f64, u64)| bytes as f64 / s / 1e9;
        rows.push(serde_json::json!({
            "type": t.ty.name(),
            "k": k,
            "n": n,
            "ms": secs[0].0 * 1e3,
            "gb_per_s": gbps(secs[0]),
            "layout": layouts[0].name(),
            "other_layout": {"name": layouts[1].name(), "gb_per_s": gbps(secs[1])},
        }));
    }
    Ok(rows)
}
