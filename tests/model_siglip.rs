//! The SigLIP + Qwen2 LLaVA family (llava-interleave-qwen's layout) against HF transformers: the
//! fixtures in tests/fixtures/models/siglip_qwen2_* were written by
//! scripts/make_siglip_fixtures.py (transformers f32 CPU on the saved f16 weights; numpy for the
//! equivalent-token scores and scripts/reduce_reference.py for the kept sets), and the demo model
//! assets/llava-interleave-tiny-random at llava-interleave-qwen's geometry (384 / 14: 729 tokens).
mod common;
use common::*;
use ficoco::gpu::DType;
use ficoco::model::{GenerateOptions, Llava, LlavaConfig, LoadOptions, Sampling, WeightFile};
use ficoco::pipeline;
use ficoco::preprocess::{self, ImageProcessor, PixelValues, PromptFormat, PromptIds, Tokenizer};
use ficoco::reduce::{
    self, FicocoV, KvReduceSpec, ProjectorReduction, ReduceSpec, Reduction, ReductionPlan,
    SiteReduction, Spans, KV_METHODS, METHODS,
};
use image::DynamicImage;
use std::path::{Path, PathBuf};

const MODELS: [&str; 2] = [
    "tests/fixtures/models/siglip_qwen2_tied",
    "tests/fixtures/models/siglip_qwen2_untied",
];
const DEMO: &str = "assets/llava-interleave-tiny-random";

struct Fixture {
    dir: PathBuf,
    json: serde_json::Value,
    tensors: Vec<u8>,
    tok: Tokenizer,
    image: DynamicImage,
    pixels: PixelValues,
}

impl Fixture {
    fn load(name: &str) -> Self {
        let dir = root().join(name);
        let json = std::fs::read_to_string(dir.join("oracle.json")).expect("oracle.json");
        let json: serde_json::Value = serde_json::from_str(&json).unwrap();
        let image = preprocess::load_image(root().join(json["image"].as_str().unwrap())).unwrap();
        Fixture {
            tensors: std::fs::read(dir.join("oracle.safetensors")).unwrap(),
            tok: Tokenizer::from_dir(&dir).unwrap(),
            pixels: ImageProcessor::from_dir(&dir)
                .unwrap()
                .preprocess(&image)
                .unwrap(),
            image,
            dir,
            json,
        }
    }

    fn f32(&self, name: &str) -> Vec<f32> {
        let st = safetensors::SafeTensors::deserialize(&self.tensors).unwrap();
        let t = st.tensor(name).unwrap_or_else(|_| panic!("oracle {name}"));
        assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name}");
        bytemuck::pod_collect_to_vec(t.data())
    }

    fn ids(&self, name: &str) -> Vec<u32> {
        let st = safetensors::SafeTensors::deserialize(&self.tensors).unwrap();
        let t = st.tensor(name).unwrap_or_else(|_| panic!("oracle {name}"));
        bytemuck::pod_collect_to_vec::<u8, i64>(t.data())
            .into_iter()
            .map(|v| v as u32)
            .collect()
    }

    fn list(&self, path: &[&str]) -> Vec<i32> {
        let v = path.iter().fold(&self.json, |v, k| &v[*k]);
        v.as_array()
            .unwrap_or_else(|| panic!("oracle.json {path:?}"))
            .iter()
            .map(|x| x.as_i64().unwrap() as i32)
            .collect()
    }

    fn model(&self) -> Llava {
        Llava::load(gpu().clone(), &self.dir, &self.opts()).unwrap()
    }

    /// Room for the prompt and the generated tokens.
    fn opts(&self) -> LoadOptions {
        let visual = self.json["visual_tokens"].as_u64().unwrap() as usize;
        LoadOptions {
            dtype: DType::F32,
            max_prompt_tokens: visual + 64,
            max_context: visual + 96,
            quantize: None,
        }
    }

    fn prompt(&self, model: &Llava) -> PromptIds {
        let text = PromptFormat::detect(&self.tok).prompt(self.json["question"].as_str().unwrap());
        let image = model.config().image_token_index;
        preprocess::build_prompt_ids(&self.tok, &text, image, model.visual_tokens()).unwrap()
    }
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn greedy(n: usize) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens: n,
        sampling: Sampling::Greedy,
        stop_tokens: vec![],
        keep_prefill_logits: true,
    }
}

fn rel_max_diff(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    max_abs_diff(got, want) / scale
}

fn sorted(mut v: Vec<i32>) -> Vec<i32> {
    v.sort();
    v
}

/// The ChatML prompt, its ids, the pixels (fixtures), the tower's features, the logits and the
/// greedy tokens all match transformers.
#[test]
fn generation_matches_transformers() {
    for name in MODELS.into_iter().chain([DEMO]) {
        let f = Fixture::load(name);
        let question = f.json["question"].as_str().unwrap();
        assert_eq!(PromptFormat::detect(&f.tok), PromptFormat::ChatMl);
        assert_eq!(
            PromptFormat::ChatMl.prompt(question),
            f.json["prompt"].as_str().unwrap(),
            "{name}: the chat template's rendering"
        );
        let visual = f.json["visual_tokens"].as_u64().unwrap() as usize;
        if name != DEMO {
            assert_close(
                &format!("{name}: pixels"),
                &f.pixels.data,
                &f.f32("pixel_values"),
                1e-6,
                0.0,
            );
            assert_eq!(visual, 64, "8 x 8 patches of the 34-pixel image, no [CLS]");
        } else {
            assert_eq!(
                visual, 729,
                "27 x 27 patches of the 384-pixel image, no [CLS]"
            );
        }
        let mut model = f.model();
        assert_eq!(model.visual_tokens(), visual);
        let prompt = f.prompt(&model);
        assert_eq!(prompt.ids, f.ids("input_ids"), "{name}: prompt ids");
        let n = f.json["max_new_tokens"].as_u64().unwrap() as usize;
        let out =
            pollster::block_on(model.generate(&f.pixels, &prompt, &greedy(n), |_| true)).unwrap();
        let vision = gpu().read_f32(&model.selected_vision_features()).unwrap();
        let dv = rel_max_diff(&vision, &f.f32("vision_features"));
        let image = gpu()
            .read_f32(&model.encode_image(&f.pixels).unwrap())
            .unwrap();
        let di = rel_max_diff(&image, &f.f32("image_features"));
        let dl = rel_max_diff(&out.prefill_logits.unwrap(), &f.f32("prefill_logits_last"));
        eprintln!("{name}: vision {dv:.2e}, image features {di:.2e}, logits {dl:.2e}");
        assert!(dv <= 1e-4, "{name}: vision features differ by {dv}");
        assert!(di <= 1e-4, "{name}: image features differ by {di}");
        assert!(dl <= 1e-3, "{name}: logits differ by {dl} of max |logit|");
        assert_eq!(out.tokens, f.ids("greedy_tokens"), "{name}: greedy tokens");
    }
}

/// SiglipImageProcessor's square bicubic resize without crop and its 0.5 / 0.5 normalisation,
/// on an RGBA image of another aspect; and the class's defaults when fields are left out.
#[test]
fn preprocessing_matches_the_siglip_processor() {
    let f = Fixture::load(MODELS[0]);
    let rgba = preprocess::load_image(root().join(f.json["rgba_image"].as_str().unwrap())).unwrap();
    let got = ImageProcessor::from_dir(&f.dir)
        .unwrap()
        .preprocess(&rgba)
        .unwrap();
    assert_eq!((got.channels, got.height, got.width), (3, 34, 34));
    assert_close(
        "rgba 90x60 pixels",
        &got.data,
        &f.f32("rgba_90x60_pixel_values"),
        1e-6,
        0.0,
    );
    let bare = ImageProcessor::from_json_str(
        r#"{"image_processor_type": "SiglipImageProcessor"}"#,
        Path::new("preprocessor_config.json"),
    )
    .unwrap();
    let px = bare.preprocess(&rgba).unwrap();
    assert_eq!((px.height, px.width), (224, 224), "default size, no crop");
    let white = px.data[0];
    assert!(
        (white - 1.0).abs() < 1e-6,
        "transparent -> white -> (1 - 0.5) / 0.5"
    );
}

/// hidden_states[0] of a tower without [CLS] is conv(pixels) + position embeddings, no
/// pre-layernorm: checked against a CPU convolution over the truncated 8 x 8 grid of the 34-pixel
/// image (vision_feature_layer 0 selects it).
#[test]
fn embeddings_without_cls_match_a_cpu_convolution() {
    let f = Fixture::load(MODELS[1]);
    let mut cfg = LlavaConfig::from_dir(&f.dir).unwrap();
    cfg.vision_feature_layer = 0;
    let wf = WeightFile::open(&f.dir).unwrap();
    let (d, p, s) = (36, 4, 34);
    let conv = wf
        .get("vision.embeddings.patch_embedding.weight", &[d, 3, p, p])
        .unwrap()
        .data;
    let bias = wf
        .get("vision.embeddings.patch_embedding.bias", &[d])
        .unwrap()
        .data;
    let pos = wf
        .get("vision.embeddings.position_embedding.weight", &[64, d])
        .unwrap()
        .data;
    let mut model = Llava::from_weights(gpu().clone(), cfg, &wf, &f.opts()).unwrap();
    model.encode_image(&f.pixels).unwrap();
    let got = gpu().read_f32(&model.selected_vision_features()).unwrap();
    let px = &f.pixels.data;
    let mut want = vec![0f32; 64 * d];
    for patch in 0..64 {
        let (gy, gx) = (patch / 8, patch % 8);
        for o in 0..d {
            let mut acc = bias[o] as f64;
            for c in 0..3 {
                for ky in 0..p {
                    for kx in 0..p {
                        let pixel = px[(c * s + gy * p + ky) * s + gx * p + kx];
                        acc += (conv[((o * 3 + c) * p + ky) * p + kx] * pixel) as f64;
                    }
                }
            }
            want[patch * d + o] = (acc + pos[patch * d + o] as f64) as f32;
        }
    }
    assert_close("patch + position embeddings", &got, &want, 1e-5, 1e-5);
}

/// The equivalent token a_i = -cos(mu, K_i) on the tower's keys (transformers), averaged over
/// heads, against numpy: the step's scores, and the kept sets of top-k [CLS] and FiCoCo-V in the
/// model (one step after layer 1, and at the projector where it reads layer 1) against numpy and
/// scripts/reduce_reference.py.
#[test]
fn equivalent_token_and_ficoco_v_match_numpy() {
    for name in MODELS {
        let f = Fixture::load(name);
        let (layer, drop) = (
            f.json["reduce"]["layer"].as_u64().unwrap() as usize,
            f.json["reduce"]["drop"].as_u64().unwrap() as usize,
        );
        let keys = f.f32("keys_head_mean");
        let attn = f.f32("attn");
        let positions: Vec<i32> = (0..64).collect();
        let spans = Spans {
            cls: None,
            grid: Some(8),
            ..Spans::default()
        };
        let step = pollster::block_on(reduce::run_once(
            gpu(),
            &Reduction::topk_cls(),
            &spans,
            &keys,
            12,
            Some(&keys),
            &attn,
            &positions,
            None,
            drop,
        ))
        .unwrap();
        assert_close(
            &format!("{name}: equivalent-token scores"),
            &step.scores,
            &f.f32("equivalent_scores"),
            1e-5,
            1e-5,
        );
        let want_topk = f.list(&["reduce", "topk_cls_kept"]);
        assert_eq!(
            sorted(step.positions.clone()),
            want_topk,
            "{name}: run_once"
        );

        let mut model = f.model();
        // The untied model's projector reads layer 1's output: its projector site scores with
        // the same keys and attention (the kept set does not depend on the hidden states).
        let at_projector = model.config().vision_layers_to_run() == layer + 1;
        for (reduction, key) in [
            (Reduction::topk_cls(), "topk_cls_kept"),
            (Reduction::ficoco_v(FicocoV::default()), "ficoco_v_kept"),
        ] {
            let vision = ReductionPlan {
                vision: Some(SiteReduction {
                    reduction: reduction.clone(),
                    drops: vec![(layer, drop)],
                }),
                ..ReductionPlan::default()
            };
            let projector = ReductionPlan {
                projector: Some(ProjectorReduction { reduction, drop }),
                ..ReductionPlan::default()
            };
            let plans = if at_projector {
                vec![vision, projector]
            } else {
                vec![vision]
            };
            for plan in plans {
                let site = if plan.vision.is_some() {
                    "vision"
                } else {
                    "projector"
                };
                model.set_reduction(plan).unwrap();
                model.encode_image(&f.pixels).unwrap();
                let kept = pollster::block_on(model.kept_patches()).unwrap();
                let want = f.list(&["reduce", key]);
                assert_eq!(sorted(kept), want, "{name}: {key} at the {site} site");
            }
        }
    }
}

fn run_prepared(model: &mut Llava, f: &Fixture, spec: &str, kv: Option<&str>, n: usize) -> usize {
    let text = PromptFormat::detect(&f.tok).prompt(f.json["question"].as_str().unwrap());
    let spec: ReduceSpec = spec.parse().unwrap();
    let kv: Option<KvReduceSpec> = kv.map(|k| k.parse().unwrap());
    let prepared = pipeline::prepare(model, &f.tok, &text, &spec, kv.as_ref(), false, true)
        .unwrap_or_else(|e| panic!("{spec:?} {kv:?}: {e}"));
    let out = pollster::block_on(model.generate(&f.pixels, &prepared.prompt, &greedy(n), |_| true))
        .unwrap_or_else(|e| panic!("{spec:?} {kv:?}: {e}"));
    assert_eq!(out.tokens.len(), n);
    assert!(out.prefill_logits.unwrap().iter().all(|v| v.is_finite()));
    let patches = f.json["visual_tokens"].as_u64().unwrap() as usize;
    let owners = pollster::block_on(model.patch_owners()).unwrap();
    assert_eq!(owners.len(), patches);
    let proc = ImageProcessor::from_dir(&f.dir).unwrap();
    let overlay = pollster::block_on(pipeline::kept_overlay(model, &proc, &f.image)).unwrap();
    let side = f.pixels.width as u32;
    assert_eq!(overlay.dimensions(), (side, side));
    out.visual_tokens
}

/// Every method at its site (vision, projector or LLM prefill, FiCoCo-VL at two), every KV-cache
/// method while decoding, and the [CLS]-reading methods at both the vision and the projector
/// site, on both models (the second's projector reads layer 1 of 3).
#[test]
fn every_method_runs_at_every_site() {
    for name in MODELS {
        let f = Fixture::load(name);
        let mut model = f.model();
        for &method in METHODS.iter().chain(["ficoco-vl"].iter()) {
            let budget = if method == "pool" { 16 } else { 32 };
            let visual = run_prepared(&mut model, &f, &format!("{method}:{budget}"), None, 3);
            if method == "none" {
                assert_eq!(visual, 64);
            } else if !matches!(
                method,
                "ficoco-l" | "fastv" | "pdrop" | "sparsevlm" | "ficoco-vl"
            ) {
                assert_eq!(visual, budget, "{name}: {method}");
            }
        }
        for method in KV_METHODS {
            run_prepared(&mut model, &f, "none", Some(&format!("{method}:16@2")), 6);
        }
        // The authors' FiCoCo-L reads no [CLS] and runs; their FiCoCo-V scores with [CLS]
        // attention, which a SigLIP tower has not: refused, pointing at ficoco-v.
        run_prepared(&mut model, &f, "ficoco-l@authors:32", None, 3);
        let text = PromptFormat::detect(&f.tok).prompt(f.json["question"].as_str().unwrap());
        let spec: ReduceSpec = "ficoco-v@authors:32".parse().unwrap();
        let prepared = pipeline::prepare(&mut model, &f.tok, &text, &spec, None, false, false)
            .unwrap_or_else(|e| panic!("{e}"));
        let e =
            pollster::block_on(model.generate(&f.pixels, &prepared.prompt, &greedy(1), |_| true))
                .unwrap_err()
                .to_string();
        assert!(
            e.contains("without [CLS]") && e.contains("use ficoco-v"),
            "{e}"
        );
        let last = model.config().vision_layers_to_run() - 1;
        for method in [
            "ficoco-v",
            "evit",
            "prumerge",
            "visionzip",
            "topk-cls",
            "tome",
        ] {
            let reduction = reduce::by_name(method).unwrap().unwrap();
            let plans = [
                ReductionPlan {
                    vision: Some(SiteReduction {
                        reduction: reduction.clone(),
                        drops: vec![(0, 8), (last, 8)],
                    }),
                    ..ReductionPlan::default()
                },
                ReductionPlan {
                    projector: Some(ProjectorReduction {
                        reduction,
                        drop: 16,
                    }),
                    ..ReductionPlan::default()
                },
            ];
            for plan in plans {
                model.set_reduction(plan).unwrap();
                assert_eq!(model.visual_tokens(), 48);
                model.encode_image(&f.pixels).unwrap();
                let features = gpu().read_f32(&model.selected_vision_features()).unwrap();
                assert!(features.iter().all(|v| v.is_finite()), "{name}: {method}");
                let kept = pollster::block_on(model.kept_patches()).unwrap();
                assert!(
                    kept.iter().all(|&g| (-1..64).contains(&g)),
                    "{method}: {kept:?}"
                );
            }
        }
    }
}

fn config_error(edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let dir = root().join(MODELS[0]);
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    edit(&mut v);
    match LlavaConfig::from_json_str(&v.to_string(), Path::new("config.json")) {
        Ok(_) => panic!("accepted {v}"),
        Err(e) => e.to_string(),
    }
}

/// Families mixed in ways this crate cannot run, a missing image token id and a tokenizer
/// without the image token are refused, saying what to do.
#[test]
fn unsupported_inputs_are_refused() {
    let e = config_error(|v| v["vision_feature_select_strategy"] = "default".into());
    assert!(e.contains("no [CLS]") && e.contains("full"), "{e}");
    let e = config_error(|v| v["vision_config"]["model_type"] = "siglip".into());
    assert!(e.contains("siglip_vision_model"), "{e}");
    let e = config_error(|v| v["text_config"]["model_type"] = "qwen2_vl".into());
    assert!(e.contains("qwen2_vl") && e.contains("llama"), "{e}");
    let e = config_error(|v| v["model_type"] = "llava_onevision".into());
    assert!(e.contains("anyres"), "{e}");
    let e = config_error(|v| {
        v.as_object_mut().unwrap().remove("image_token_index");
    });
    assert!(e.contains("image_token_index"), "{e}");
    let e = config_error(|v| v["text_config"]["use_sliding_window"] = true.into());
    assert!(e.contains("sliding"), "{e}");

    // The published layout's defaults: a SigLIP tower without explicit fields is SigLIP's base.
    let cfg = LlavaConfig::from_json_str(
        r#"{"model_type": "llava", "image_token_index": 151646,
            "vision_config": {"model_type": "siglip_vision_model"},
            "text_config": {"model_type": "qwen2"}, "vision_feature_select_strategy": "full"}"#,
        Path::new("config.json"),
    )
    .unwrap();
    assert_eq!(cfg.vision_config.hidden_act, "gelu_pytorch_tanh");
    assert_eq!(cfg.vision_config.patch_size, 16);
    assert_eq!(cfg.visual_tokens(), 196);
    assert_eq!(cfg.text_config.vocab_size, 151_936);
    assert!(cfg.text_config.qkv_bias());

    // A tokenizer that lacks the model's image token.
    let dir = root().join(MODELS[0]);
    let mut tj: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("tokenizer.json")).unwrap()).unwrap();
    tj["added_tokens"]
        .as_array_mut()
        .unwrap()
        .retain(|t| t["content"] != "<image>");
    let tok = Tokenizer::from_bytes(tj.to_string().as_bytes(), None).unwrap();
    let cfg = LlavaConfig::from_dir(&dir).unwrap();
    let text = PromptFormat::ChatMl.prompt("What?");
    let e = preprocess::build_prompt_ids(&tok, &text, cfg.image_token_index, 64).unwrap_err();
    assert!(e.to_string().contains("image token id"), "{e}");
}

/// At llava-interleave-qwen's 27 x 27 grid: pooling keeps 81 (3 x 3 windows) or 9, FiCoCo-V
/// and the equivalent-token methods reach their budgets.
#[test]
fn demo_model_reduces_its_729_tokens() {
    let f = Fixture::load(DEMO);
    let mut model = f.model();
    for (spec, kept) in [
        ("pool:81", 81),
        ("pool:9", 9),
        ("ficoco-v:64", 64),
        ("visionzip:64", 64),
        ("evit:64", 64),
        ("tome:400", 400),
    ] {
        assert_eq!(run_prepared(&mut model, &f, spec, None, 2), kept, "{spec}");
    }
}
