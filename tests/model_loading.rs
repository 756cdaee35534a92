//! Config parsing (with transformers' defaults) and safetensors loading in every key layout.
use ficoco::model::{LlavaConfig, WeightFile};
use ficoco::ops::RopeScaling;
use std::path::{Path, PathBuf};

mod common;
use common::LLAVA_15_7B;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ficoco-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn published_config_gets_transformers_defaults() {
    let c = LlavaConfig::from_json_str(LLAVA_15_7B, Path::new("config.json")).unwrap();
    let t = &c.text_config;
    assert_eq!(
        (t.hidden_size, t.intermediate_size, t.num_hidden_layers),
        (4096, 11008, 32)
    );
    assert_eq!(
        (t.num_attention_heads, t.kv_heads(), t.head_dim()),
        (32, 32, 128)
    );
    assert_eq!(t.theta(), 10000.0);
    assert_eq!(t.rope_scaling().unwrap(), RopeScaling::None);
    assert_eq!(t.rms_norm_eps, 1e-5);
    assert!(!c.tied_embeddings());
    let v = &c.vision_config;
    assert_eq!(
        (v.layer_norm_eps, v.hidden_act.as_str(), v.num_channels),
        (1e-5, "quick_gelu", 3)
    );
    assert_eq!(v.num_patches(), 576);
    assert_eq!(
        c.vision_layers_to_run(),
        23,
        "-2 = output of layer 23 of 24"
    );
    assert_eq!(c.visual_tokens(), 576);
    assert_eq!(c.image_token_index, 32000);
}

fn with(json: &str, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut v: serde_json::Value = serde_json::from_str(json).unwrap();
    edit(&mut v);
    v.to_string()
}

#[test]
fn feature_layer_strategy_rope_and_qwen2() {
    let j = with(LLAVA_15_7B, |v| {
        v["vision_feature_layer"] = 5.into();
        v["vision_feature_select_strategy"] = "full".into();
        v["text_config"]["model_type"] = "qwen2".into();
        v["text_config"]["num_key_value_heads"] = 4.into();
        v["text_config"]["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        v["text_config"]["rope_theta"] = 500000.0.into();
        v["text_config"]["tie_word_embeddings"] = true.into();
    });
    let c = LlavaConfig::from_json_str(&j, Path::new("config.json")).unwrap();
    assert_eq!(c.vision_layers_to_run(), 5);
    assert_eq!(c.visual_tokens(), 577);
    assert!(c.text_config.qkv_bias() && c.tied_embeddings());
    assert_eq!(c.text_config.kv_heads(), 4);
    assert_eq!(c.text_config.theta(), 500000.0);
    assert!(matches!(
        c.text_config.rope_scaling().unwrap(),
        RopeScaling::Llama3 { .. }
    ));
    // transformers 5 writes theta inside rope_parameters.
    let j = with(LLAVA_15_7B, |v| {
        v["text_config"]["rope_parameters"] =
            serde_json::json!({"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6});
    });
    let c = LlavaConfig::from_json_str(&j, Path::new("config.json")).unwrap();
    assert_eq!(c.text_config.theta(), 1e6);
    assert_eq!(
        c.text_config.rope_scaling().unwrap(),
        RopeScaling::Linear { factor: 2.0 }
    );
}

#[test]
fn bad_configs_name_the_problem() {
    let cases: Vec<(String, &str)> = vec![
        (
            with(LLAVA_15_7B, |v| {
                v["model_type"] = "blip".into();
                v["architectures"] = serde_json::json!(["Blip"]);
            }),
            "only LLaVA",
        ),
        (
            with(LLAVA_15_7B, |v| v["vision_feature_layer"] = (-26).into()),
            "vision_feature_layer",
        ),
        (
            with(LLAVA_15_7B, |v| {
                v["vision_feature_layer"] = serde_json::json!([-2, -5])
            }),
            "single layer",
        ),
        (
            with(LLAVA_15_7B, |v| {
                v["vision_feature_select_strategy"] = "cls".into()
            }),
            "vision_feature_select_strategy",
        ),
        (
            with(LLAVA_15_7B, |v| {
                v["text_config"]["num_key_value_heads"] = 5.into()
            }),
            "num_key_value_heads",
        ),
        (
            with(LLAVA_15_7B, |v| {
                // Smaller than one patch (a remainder is fine: the convolution truncates).
                v["vision_config"]["image_size"] = 10.into()
            }),
            "image_size",
        ),
        (
            with(LLAVA_15_7B, |v| {
                v["text_config"]["model_type"] = "mistral2".into()
            }),
            "model_type",
        ),
        ("{not json".to_string(), "invalid config"),
    ];
    for (json, needle) in cases {
        let e = LlavaConfig::from_json_str(&json, Path::new("/m/config.json"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(needle) && e.contains("/m/config.json"),
            "{e:?} should mention {needle}"
        );
    }
    let e = LlavaConfig::from_dir(Path::new("/nonexistent/model"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/model/config.json"), "{e}");
}

fn write_st(path: &Path, tensors: &[(&str, safetensors::Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, dt, shape, data)| {
            (
                n.to_string(),
                safetensors::tensor::TensorView::new(*dt, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    bytemuck::cast_slice(v).to_vec()
}

#[test]
fn every_layout_and_dtype_resolves() {
    use safetensors::Dtype;
    let vals = [1.5f32, -2.0, 0.25, 3.0];
    let f16: Vec<u8> = vals
        .iter()
        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
        .collect();
    let bf16: Vec<u8> = vals
        .iter()
        .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
        .collect();
    let layouts = [
        (
            "vision_tower.vision_model.",
            "multi_modal_projector.",
            "language_model.model.",
            "language_model.lm_head.",
        ),
        (
            "model.vision_tower.",
            "model.multi_modal_projector.",
            "model.language_model.",
            "lm_head.",
        ),
        (
            "vision_tower.",
            "multi_modal_projector.",
            "language_model.",
            "lm_head.",
        ),
    ];
    for (i, (v, p, t, h)) in layouts.iter().enumerate() {
        let dir = temp_dir(&format!("layout{i}"));
        let names = [
            format!("{v}pre_layrnorm.weight"),
            format!("{p}linear_1.weight"),
            format!("{t}norm.weight"),
            format!("{h}weight"),
        ];
        let data = [
            (Dtype::F32, f32_bytes(&vals)),
            (Dtype::F16, f16.clone()),
            (Dtype::BF16, bf16.clone()),
            (Dtype::F32, f32_bytes(&vals)),
        ];
        let tensors: Vec<_> = names
            .iter()
            .zip(&data)
            .map(|(n, (dt, b))| (n.as_str(), *dt, vec![2, 2], b.clone()))
            .collect();
        if i == 1 {
            // Sharded: two files and an index.
            write_st(&dir.join("a.safetensors"), &tensors[..2]);
            write_st(&dir.join("b.safetensors"), &tensors[2..]);
            let map: serde_json::Map<String, serde_json::Value> = names
                .iter()
                .enumerate()
                .map(|(j, n)| {
                    (
                        n.clone(),
                        (if j < 2 {
                            "a.safetensors"
                        } else {
                            "b.safetensors"
                        })
                        .into(),
                    )
                })
                .collect();
            std::fs::write(
                dir.join("model.safetensors.index.json"),
                serde_json::json!({"metadata": {}, "weight_map": map}).to_string(),
            )
            .unwrap();
        } else {
            write_st(&dir.join("model.safetensors"), &tensors);
        }
        let wf = WeightFile::open(&dir).unwrap();
        for canon in [
            "vision.pre_layrnorm.weight",
            "projector.linear_1.weight",
            "text.norm.weight",
            "lm_head.weight",
        ] {
            let got = wf
                .get(canon, &[2, 2])
                .unwrap_or_else(|e| panic!("layout {i}: {e}"));
            assert_eq!(got.data, vals, "layout {i} {canon}");
        }
        let e = wf.get("text.norm.weight", &[4]).unwrap_err().to_string();
        assert!(e.contains("[2, 2]") && e.contains("[4]"), "{e}");
        let e = wf
            .get("text.layers.0.mlp.up_proj.weight", &[2, 2])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("text.layers.0.mlp.up_proj.weight") && e.contains("tried"),
            "{e}"
        );
        if i == 1 {
            std::fs::remove_file(dir.join("b.safetensors")).unwrap();
            let e = WeightFile::open(&dir).err().unwrap().to_string();
            assert!(e.contains("b.safetensors"), "{e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
    let e = WeightFile::open(Path::new("/nonexistent"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn fixture_models_load_every_tensor() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root.join("tests/fixtures/models"))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    dirs.push(root.join("assets/llava-tiny-random"));
    for dir in dirs {
        let c = LlavaConfig::from_dir(&dir).unwrap();
        let wf = WeightFile::open(&dir).unwrap();
        let t = &c.text_config;
        wf.get("text.embed_tokens.weight", &[t.vocab_size, t.hidden_size])
            .unwrap();
        assert!(
            c.tied_embeddings() || wf.contains("lm_head.weight"),
            "{}: no lm_head",
            dir.display()
        );
        let v = &c.vision_config;
        wf.get(
            "vision.embeddings.patch_embedding.weight",
            &[v.hidden_size, 3, v.patch_size, v.patch_size],
        )
        .unwrap();
    }
}
