//! End-to-end against HF transformers: the fixtures in tests/fixtures/models/* were written by
//! scripts/make_fixtures.py (transformers, float32, CPU) from small random LLaVA models in the
//! published layouts. Here the real loader, preprocessing and GPU kernels must reproduce them.
mod common;
use common::*;
use ficoco::gpu::{DType, Gpu};
use ficoco::model::{GenerateOptions, Llava, LoadOptions, Sampling, StopReason};
use ficoco::preprocess::{self, ImageProcessor, Tokenizer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

struct Oracle {
    dir: PathBuf,
    json: serde_json::Value,
    tensors: Vec<u8>,
}

impl Oracle {
    fn load(dir: &Path) -> Self {
        let json = std::fs::read_to_string(dir.join("oracle.json")).expect("oracle.json");
        Oracle {
            dir: dir.to_path_buf(),
            json: serde_json::from_str(&json).unwrap(),
            tensors: std::fs::read(dir.join("oracle.safetensors")).expect("oracle.safetensors"),
        }
    }

    fn f32(&self, name: &str) -> Vec<f32> {
        let st = safetensors::SafeTensors::deserialize(&self.tensors).unwrap();
        let t = st
            .tensor(name)
            .unwrap_or_else(|_| panic!("oracle tensor {name}"));
        assert_eq!(t.dtype(), safetensors::Dtype::F32);
        bytemuck::pod_collect_to_vec(t.data())
    }

    fn ids(&self, name: &str) -> Vec<u32> {
        let st = safetensors::SafeTensors::deserialize(&self.tensors).unwrap();
        let t = st
            .tensor(name)
            .unwrap_or_else(|_| panic!("oracle tensor {name}"));
        assert_eq!(t.dtype(), safetensors::Dtype::I64);
        bytemuck::pod_collect_to_vec::<u8, i64>(t.data())
            .into_iter()
            .map(|v| v as u32)
            .collect()
    }
}

fn model_dirs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root.join("tests/fixtures/models"))
        .expect("tests/fixtures/models (run scripts/make_fixtures.sh)")
        .map(|e| e.unwrap().path())
        .collect();
    dirs.push(root.join("assets/llava-tiny-random"));
    dirs.sort();
    assert!(dirs.len() >= 3, "oracle fixtures missing");
    dirs
}

struct Run {
    tokens: Vec<u32>,
    logits: Vec<f32>,
    vision: Vec<f32>,
    image: Vec<f32>,
}

/// The fixture's model, its decoder from `decoder` (a GGUF file in the fixture) if given.
fn run(gpu: &Arc<Gpu>, o: &Oracle, dtype: DType, decoder: Option<&str>) -> Run {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tok = Tokenizer::from_dir(&o.dir).unwrap();
    let proc = ImageProcessor::from_dir(&o.dir).unwrap();
    let image = preprocess::load_image(root.join(o.json["image"].as_str().unwrap())).unwrap();
    let pixels = proc.preprocess(&image).unwrap();
    let opts = LoadOptions {
        dtype,
        max_prompt_tokens: 1024,
        max_context: 1100,
        quantize: None,
    };
    let mut model = match decoder {
        Some(file) => Llava::load_with_decoder(gpu.clone(), &o.dir, &o.dir.join(file), &opts),
        None => Llava::load(gpu.clone(), &o.dir, &opts),
    }
    .unwrap();
    let text = o.json["prompt"].as_str().unwrap();
    let prompt = preprocess::build_prompt_ids(
        &tok,
        text,
        model.config().image_token_index,
        model.visual_tokens(),
    )
    .unwrap();
    assert_eq!(
        prompt.ids,
        o.ids("input_ids"),
        "{}: prompt ids",
        o.dir.display()
    );
    let n = o.json["max_new_tokens"].as_u64().unwrap() as usize;
    let opts = GenerateOptions {
        max_new_tokens: n,
        sampling: Sampling::Greedy,
        stop_tokens: vec![],
        keep_prefill_logits: true,
    };
    let out = pollster::block_on(model.generate(&pixels, &prompt, &opts, |_| true)).unwrap();
    Run {
        tokens: out.tokens,
        logits: out.prefill_logits.unwrap(),
        vision: gpu.read_f32(&model.selected_vision_features()).unwrap(),
        image: gpu.read_f32(&model.encode_image(&pixels).unwrap()).unwrap(),
    }
}

fn rel_max_diff(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    max_abs_diff(got, want) / scale
}

#[test]
fn f32_matches_transformers() {
    for dir in model_dirs() {
        let o = Oracle::load(&dir);
        let r = run(gpu(), &o, DType::F32, None);
        let name = dir.display();
        let dv = rel_max_diff(&r.vision, &o.f32("vision_features"));
        let di = rel_max_diff(&r.image, &o.f32("image_features"));
        let dl = rel_max_diff(&r.logits, &o.f32("prefill_logits_last"));
        eprintln!(
            "{name}: vision {dv:.2e}, image features {di:.2e}, logits {dl:.2e} (relative max)"
        );
        assert!(dv <= 1e-4, "{name}: vision features differ by {dv}");
        assert!(di <= 1e-4, "{name}: image features differ by {di}");
        assert!(
            dl <= 1e-3,
            "{name}: prefill logits differ by {dl} of max |logit|"
        );
        assert_eq!(r.tokens, o.ids("greedy_tokens"), "{name}: greedy tokens");
    }
}

/// f16 weight storage (f32 math): documented tolerance 5e-3 of max |logit| (measured ~7e-4 on
/// the f32 fixture), same first token.
/// Runs on the portable device (no SHADER_F16, 128 MiB bindings) as a browser would.
#[test]
fn f16_matches_transformers_top1() {
    for dir in model_dirs() {
        let o = Oracle::load(&dir);
        let r = run(portable_gpu(), &o, DType::F16, None);
        let name = dir.display();
        let want = o.f32("prefill_logits_last");
        let dl = rel_max_diff(&r.logits, &want);
        eprintln!("{name}: f16 logits {dl:.2e} (relative max)");
        assert!(dl <= 5e-3, "{name}: f16 prefill logits differ by {dl}");
        assert_eq!(
            r.tokens[0],
            o.ids("greedy_tokens")[0],
            "{name}: first token"
        );
    }
}

/// LLaVA with its decoder from a llama.cpp GGUF file (scripts/make_gguf_decoder_fixtures.py
/// writes the fixture's language model with the `gguf` package: llama.cpp's names, llama's
/// reordered Q/K rows, the checkpoint's own float matrices): the same tolerances against
/// transformers as the safetensors checkpoint. A Q8_0 file stays within Q8_0's rounding of the
/// logits (measured 1.4e-2 of max |logit|).
#[test]
fn gguf_decoder_matches_transformers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models");
    for name in ["siglip_qwen2_untied", "siglip_qwen2_tied", "gqa_untied"] {
        let o = Oracle::load(&root.join(name));
        let r = run(gpu(), &o, DType::F32, Some("decoder.gguf"));
        let dl = rel_max_diff(&r.logits, &o.f32("prefill_logits_last"));
        eprintln!("{name} with decoder.gguf: logits {dl:.2e} (relative max)");
        assert!(dl <= 1e-3, "{name}: prefill logits differ by {dl}");
        assert_eq!(r.tokens, o.ids("greedy_tokens"), "{name}: greedy tokens");
    }
    let o = Oracle::load(&root.join("gqa_untied"));
    let r = run(gpu(), &o, DType::F32, Some("decoder_q8_0.gguf"));
    let dl = rel_max_diff(&r.logits, &o.f32("prefill_logits_last"));
    eprintln!("gqa_untied with decoder_q8_0.gguf: logits {dl:.2e} (relative max)");
    assert!(dl <= 2e-2, "Q8_0 decoder: prefill logits differ by {dl}");
    assert_eq!(
        r.tokens[0],
        o.ids("greedy_tokens")[0],
        "Q8_0 decoder: first token"
    );
}

/// A GGUF decoder of another model is refused, naming what differs.
#[test]
fn gguf_decoder_of_another_model_is_refused() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models");
    let opts = LoadOptions::default();
    let cases = [
        (
            "siglip_qwen2_untied",
            "gqa_untied/decoder.gguf",
            "architecture llama vs qwen2",
        ),
        (
            "siglip_qwen2_untied",
            "siglip_qwen2_tied/decoder.gguf",
            "embeddings tied vs untied",
        ),
        (
            "siglip_qwen2_tied",
            "siglip_qwen2_untied/decoder.gguf",
            "RoPE theta 10000 vs 1000000",
        ),
    ];
    for (dir, file, want) in cases {
        let err = Llava::load_with_decoder(gpu().clone(), &root.join(dir), &root.join(file), &opts)
            .err()
            .unwrap_or_else(|| panic!("{dir} + {file} loaded"))
            .to_string();
        assert!(
            err.contains(want) && err.contains(file),
            "{dir} + {file}: {err}"
        );
    }
    let missing = root.join("gqa_untied/no-such.gguf");
    let err = Llava::load_with_decoder(gpu().clone(), &root.join("gqa_untied"), &missing, &opts)
        .err()
        .expect("missing file loaded")
        .to_string();
    assert!(err.contains("no-such.gguf"), "{err}");
}

/// Stop tokens, cancellation through the callback, near-zero-temperature sampling and the
/// errors for prompts that do not fit the model.
#[test]
fn generation_controls() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let o = Oracle::load(&root.join("tests/fixtures/models/gqa_untied"));
    let greedy = o.ids("greedy_tokens");
    let tok = Tokenizer::from_dir(&o.dir).unwrap();
    let image = preprocess::load_image(root.join(o.json["image"].as_str().unwrap())).unwrap();
    let pixels = ImageProcessor::from_dir(&o.dir)
        .unwrap()
        .preprocess(&image)
        .unwrap();
    let opts = LoadOptions {
        dtype: DType::F32,
        max_prompt_tokens: 64,
        max_context: 64,
        quantize: None,
    };
    let mut model = Llava::load(gpu().clone(), &o.dir, &opts).unwrap();
    let prompt = preprocess::build_prompt_ids(
        &tok,
        o.json["prompt"].as_str().unwrap(),
        model.config().image_token_index,
        model.visual_tokens(),
    )
    .unwrap();
    let mut generate = |opts: &GenerateOptions, limit: usize| {
        let mut seen = Vec::new();
        let out = pollster::block_on(model.generate(&pixels, &prompt, opts, |t| {
            seen.push(t);
            seen.len() < limit
        }));
        (out, seen)
    };
    let base = GenerateOptions {
        max_new_tokens: greedy.len(),
        sampling: Sampling::Greedy,
        stop_tokens: vec![],
        keep_prefill_logits: false,
    };

    // A stop token ends generation after it is produced (and streamed).
    let stop = greedy[1];
    let upto = greedy.iter().position(|&t| t == stop).unwrap() + 1;
    let (out, seen) = generate(
        &GenerateOptions {
            stop_tokens: vec![stop],
            ..base.clone()
        },
        usize::MAX,
    );
    let out = out.unwrap();
    assert_eq!(out.tokens, greedy[..upto]);
    assert_eq!(seen, greedy[..upto]);
    assert_eq!(out.stop, StopReason::StopToken);

    // The callback cancels.
    let (out, _) = generate(&base, 3);
    let out = out.unwrap();
    assert_eq!(out.tokens, greedy[..3]);
    assert_eq!(out.stop, StopReason::Cancelled);

    // Top-p sampling at a temperature far below the logit margins is greedy; a seed repeats.
    let cold = GenerateOptions {
        sampling: Sampling::TopP {
            temperature: 1e-3,
            top_p: 0.9,
            seed: 7,
        },
        ..base.clone()
    };
    let (out, _) = generate(&cold, usize::MAX);
    assert_eq!(out.unwrap().tokens, greedy);
    let warm = GenerateOptions {
        sampling: Sampling::TopP {
            temperature: 1.5,
            top_p: 1.0,
            seed: 11,
        },
        ..base.clone()
    };
    let a = generate(&warm, usize::MAX).0.unwrap().tokens;
    let b = generate(&warm, usize::MAX).0.unwrap().tokens;
    assert_eq!(a, b, "same seed, same tokens");
    assert_eq!(a.len(), greedy.len());

    // Too long for the context; wrong number of image tokens.
    let (err, _) = generate(
        &GenerateOptions {
            max_new_tokens: 1000,
            ..base.clone()
        },
        usize::MAX,
    );
    assert!(err.unwrap_err().to_string().contains("max_context"));
    let mut short = prompt.clone();
    short.image_len -= 1;
    let err = pollster::block_on(model.generate(&pixels, &short, &base, |_| true)).unwrap_err();
    assert!(err.to_string().contains("image tokens"), "{err}");
}
