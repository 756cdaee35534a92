//! llama.cpp's VLM pair (LLM GGUF + mmproj GGUF) against transformers and against the same model
//! loaded from its llava-hf safetensors. scripts/make_mmproj_fixtures.py writes the pairs with
//! the `gguf` package from two fixtures whose oracle scripts/make_fixtures.py recorded: a CLIP +
//! Llama model (sentencepiece vocabulary; mmproj.gguf in the legacy converter's layout,
//! mmproj_f16.gguf in the current one's) and a SigLIP + Qwen2 one (byte-level BPE).
mod common;
use common::*;
use ficoco::gpu::{DType, Gpu};
use ficoco::model::{GenerateOptions, Gguf, GgufPair, Llava, LoadOptions, Sampling};
use ficoco::preprocess::{self, ImageProcessor, PixelValues, Tokenizer};
use ficoco::reduce::ReduceSpec;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}

fn oracle(dir: &Path) -> (serde_json::Value, Vec<u8>) {
    let json = std::fs::read_to_string(dir.join("oracle.json")).unwrap();
    let tensors = std::fs::read(dir.join("oracle.safetensors")).unwrap();
    (serde_json::from_str(&json).unwrap(), tensors)
}

fn oracle_tensor<T: bytemuck::Pod>(bytes: &[u8], name: &str) -> Vec<T> {
    let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
    bytemuck::pod_collect_to_vec(st.tensor(name).unwrap().data())
}

fn opts(dtype: DType) -> LoadOptions {
    LoadOptions {
        dtype,
        max_prompt_tokens: 512,
        max_context: 600,
        quantize: None,
    }
}

/// A model with what feeds it: the pair's own tokenizer, preprocessing and prompt, or the
/// llava-hf directory's.
struct Loaded {
    model: Llava,
    tokenizer: Tokenizer,
    pixels: PixelValues,
    prompt: String,
}

fn image(o: &serde_json::Value) -> image::DynamicImage {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    preprocess::load_image(root.join(o["image"].as_str().unwrap())).unwrap()
}

fn load_pair(gpu: &Arc<Gpu>, dir: &Path, mmproj: &str, dtype: DType) -> Loaded {
    let (o, _) = oracle(dir);
    let pair = GgufPair::open(&dir.join("llm.gguf"), &dir.join(mmproj)).unwrap();
    let tokenizer = pair.tokenizer().unwrap();
    let pixels = pair
        .image_processor()
        .unwrap()
        .preprocess(&image(&o))
        .unwrap();
    let question = o["question"].as_str().unwrap();
    let prompt =
        preprocess::image_prompt(pair.chat_template().as_ref(), &tokenizer, question).unwrap();
    let model = Llava::from_gguf_pair(gpu.clone(), pair, &opts(dtype)).unwrap();
    Loaded {
        model,
        tokenizer,
        pixels,
        prompt,
    }
}

fn load_dir(gpu: &Arc<Gpu>, dir: &Path, dtype: DType) -> Loaded {
    let (o, _) = oracle(dir);
    let tokenizer = Tokenizer::from_dir(dir).unwrap();
    let pixels = ImageProcessor::from_dir(dir)
        .unwrap()
        .preprocess(&image(&o))
        .unwrap();
    Loaded {
        model: Llava::load(gpu.clone(), dir, &opts(dtype)).unwrap(),
        tokenizer,
        pixels,
        prompt: o["prompt"].as_str().unwrap().to_string(),
    }
}

struct Run {
    ids: Vec<u32>,
    tokens: Vec<u32>,
    logits: Vec<f32>,
    vision: Vec<f32>,
}

fn run(l: &mut Loaded, reduce: &str, n: usize) -> Run {
    let spec: ReduceSpec = reduce.parse().unwrap();
    let p = ficoco::pipeline::prepare(
        &mut l.model,
        &l.tokenizer,
        &l.prompt,
        &spec,
        None,
        false,
        false,
    )
    .unwrap();
    let opts = GenerateOptions {
        max_new_tokens: n,
        sampling: Sampling::Greedy,
        stop_tokens: vec![],
        keep_prefill_logits: true,
    };
    let out = pollster::block_on(l.model.generate(&l.pixels, &p.prompt, &opts, |_| true)).unwrap();
    let gpu = l.model.gpu().clone();
    Run {
        ids: p.prompt.ids,
        tokens: out.tokens,
        logits: out.prefill_logits.unwrap(),
        vision: gpu.read_f32(&l.model.selected_vision_features()).unwrap(),
    }
}

/// max |a - b| over the first `a.len()` entries, relative to max |b| there.
fn rel(a: &[f32], b: &[f32]) -> f32 {
    let b = &b[..a.len()];
    max_abs_diff(a, b) / b.iter().fold(0f32, |m, v| m.max(v.abs()))
}

/// f32: the pair's prompt, ids, greedy tokens and logits are transformers', and agree with the
/// safetensors model; the LLM file's vocabulary stops before `<image>`, so the logits cover the
/// ids below it.
#[test]
fn pair_matches_transformers_and_safetensors() {
    for (name, mmproj) in [
        ("gqa_untied", "mmproj.gguf"),
        ("siglip_qwen2_untied", "mmproj.gguf"),
    ] {
        let dir = fixture(name);
        let (o, tensors) = oracle(&dir);
        let mut pair = load_pair(gpu(), &dir, mmproj, DType::F32);
        assert!(pair.model.config().virtual_image_token(), "{name}");
        assert_eq!(pair.prompt, o["prompt"].as_str().unwrap(), "{name}: prompt");
        let n = o["max_new_tokens"].as_u64().unwrap() as usize;
        let got = run(&mut pair, "none", n);
        let ids: Vec<i64> = oracle_tensor(&tensors, "input_ids");
        let ids: Vec<u32> = ids.into_iter().map(|i| i as u32).collect();
        assert_eq!(got.ids, ids, "{name}: prompt ids");
        let greedy: Vec<i64> = oracle_tensor(&tensors, "greedy_tokens");
        let greedy: Vec<u32> = greedy.into_iter().map(|i| i as u32).collect();
        assert_eq!(got.tokens, greedy, "{name}: greedy tokens");
        let want: Vec<f32> = oracle_tensor(&tensors, "prefill_logits_last");
        let dl = rel(&got.logits, &want);
        let vision: Vec<f32> = oracle_tensor(&tensors, "vision_features");
        let dv = rel(&got.vision, &vision);
        let mut st = load_dir(gpu(), &dir, DType::F32);
        let base = run(&mut st, "none", n);
        let ds = rel(&got.logits, &base.logits);
        eprintln!(
            "{name} {mmproj}: vs transformers logits {dl:.2e}, vision features {dv:.2e}; vs \
             safetensors logits {ds:.2e} (relative max)"
        );
        assert!(dl <= 1e-3, "{name}: logits differ by {dl} of max |logit|");
        assert!(dv <= 1e-4, "{name}: vision features differ by {dv}");
        assert!(
            ds <= 1e-5,
            "{name}: pair and safetensors logits differ by {ds}"
        );
        assert_eq!(base.tokens, got.tokens, "{name}: pair vs safetensors");
    }
}

/// The current converter's layout (every layer stored, clip.vision.feature_layer, fc1 as
/// ffn_up) with float16 matrices: with f16 storage it is the safetensors model in f16.
#[test]
fn f16_mmproj_matches_safetensors_in_f16() {
    let dir = fixture("gqa_untied");
    let (_, tensors) = oracle(&dir);
    let mut pair = load_pair(gpu(), &dir, "mmproj_f16.gguf", DType::F16);
    let mut st = load_dir(gpu(), &dir, DType::F16);
    let (a, b) = (run(&mut pair, "none", 8), run(&mut st, "none", 8));
    let want: Vec<f32> = oracle_tensor(&tensors, "prefill_logits_last");
    let (ds, dt) = (rel(&a.logits, &b.logits), rel(&a.logits, &want));
    eprintln!("mmproj_f16.gguf: vs safetensors in f16 {ds:.2e}, vs transformers {dt:.2e}");
    assert!(ds <= 1e-5, "f16 pair vs f16 safetensors: {ds}");
    assert!(dt <= 5e-3, "f16 pair vs transformers: {dt}");
    assert_eq!(a.tokens, b.tokens);
}

/// Reductions take the same paths on the pair as on the safetensors model: same tokens, same
/// logits, for in-tower, projector-site and LLM-side methods.
#[test]
fn reductions_match_safetensors() {
    for (name, budget) in [("gqa_untied", 6), ("siglip_qwen2_untied", 24)] {
        let dir = fixture(name);
        let mut pair = load_pair(gpu(), &dir, "mmproj.gguf", DType::F32);
        let mut st = load_dir(gpu(), &dir, DType::F32);
        for method in ["ficoco-v", "fastv", "visionzip", "ficoco-l", "tome"] {
            let spec = format!("{method}:{budget}");
            let (a, b) = (run(&mut pair, &spec, 6), run(&mut st, &spec, 6));
            let d = rel(&a.logits, &b.logits);
            eprintln!("{name} {spec}: pair vs safetensors logits {d:.2e}");
            assert_eq!(a.ids, b.ids, "{name} {spec}: prompt ids");
            assert_eq!(a.tokens, b.tokens, "{name} {spec}: tokens");
            assert!(d <= 1e-5, "{name} {spec}: logits differ by {d}");
        }
    }
}

fn pair_err(llm: &Path, mmproj: &Path) -> String {
    match GgufPair::open(llm, mmproj) {
        Ok(_) => panic!("{} + {} opened", llm.display(), mmproj.display()),
        Err(e) => e.to_string(),
    }
}

/// A copy of `file` with the bytes `from` replaced by `to` (same length) once.
fn patched(file: &Path, from: &[u8], to: &[u8]) -> Gguf {
    let mut data = std::fs::read(file).unwrap();
    let at = data
        .windows(from.len())
        .position(|w| w == from)
        .unwrap_or_else(|| panic!("{:?} not in {}", from, file.display()));
    data[at..at + to.len()].copy_from_slice(to);
    Gguf::from_bytes(file, data).unwrap()
}

fn patched_err(from: &[u8], to: &[u8]) -> String {
    let dir = fixture("gqa_untied");
    let llm = Gguf::open(&dir.join("llm.gguf")).unwrap();
    match GgufPair::new(llm, patched(&dir.join("mmproj.gguf"), from, to)) {
        Ok(_) => panic!("patched {:?} opened", String::from_utf8_lossy(to)),
        Err(e) => e.to_string(),
    }
}

/// Files that are not a pair, or not one ficoco runs, are refused saying why.
#[test]
fn bad_pairs_are_refused() {
    let gqa = fixture("gqa_untied");
    let (llm, mmproj) = (gqa.join("llm.gguf"), gqa.join("mmproj.gguf"));
    let e = pair_err(&mmproj, &llm);
    assert!(e.contains("swapped"), "{e}");
    let e = pair_err(&llm, &llm);
    assert!(e.contains("this is an LLM file, not an mmproj"), "{e}");
    let e = pair_err(&mmproj, &mmproj);
    assert!(
        e.contains("this is an mmproj (vision) file, not an LLM"),
        "{e}"
    );
    // The SigLIP fixture's projector writes 48-wide embeddings, the CLIP one's LLM takes 64.
    let e = pair_err(&llm, &fixture("siglip_qwen2_untied").join("mmproj.gguf"));
    assert!(e.contains("48-wide") && e.contains("64-wide"), "{e}");
    // An LLM file without a tokenizer (the decoder-only fixture).
    let e = pair_err(&gqa.join("decoder.gguf"), &mmproj);
    assert!(e.contains("tokenizer.ggml.tokens"), "{e}");

    let e = patched_err(b"clip.vision.image_size", b"clip.vision.image_sizX");
    assert!(e.contains("clip.vision.image_size is missing"), "{e}");
    let e = patched_err(b"\x03\0\0\0\0\0\0\0mlp", b"\x03\0\0\0\0\0\0\0ldp");
    assert!(e.contains("projector type \"ldp\""), "{e}");
    let e = patched_err(b"v.class_embd", b"v.class_embX");
    assert!(e.contains("[CLS] false, pre-layernorm true"), "{e}");
    let e = patched_err(b"v.blk.0.attn_q.weight", b"v.blk.0.attn_X.weight");
    assert!(e.contains("no v.blk.0.attn_q.weight"), "{e}");
}
