//! Real published weights: SmolLM2-135M-Instruct (llama, Q4_1) and Qwen2.5-Coder-0.5B-Instruct
//! (qwen2, Q4_K_M) GGUF files, against HF transformers reading the same files in float32
//! (tests/fixtures/gguf/<name>.json and .safetensors, from scripts/make_gguf_oracle.py). The
//! files come from scripts/fetch_real_weights.sh into weights/; without them the tests say so
//! and pass, unless FICOCO_REQUIRE_REAL_WEIGHTS is set (CI sets it).

mod common;

use ficoco::gpu::DType;
use ficoco::model::{GenerateOptions, Gguf, LoadOptions, Sampling, TextModel};
use ficoco::preprocess::{ChatMessage, ChatTemplate, Tokenizer};
use serde_json::Value;
use std::path::Path;

fn open(file: &str) -> Option<Gguf> {
    let path = Path::new("weights").join(file);
    if !path.exists() {
        if std::env::var_os("FICOCO_REQUIRE_REAL_WEIGHTS").is_some() {
            panic!(
                "{} is missing: run scripts/fetch_real_weights.sh",
                path.display()
            );
        }
        eprintln!(
            "skipping: {} is missing (scripts/fetch_real_weights.sh fetches it)",
            path.display()
        );
        return None;
    }
    Some(Gguf::open(&path).unwrap())
}

fn oracle(name: &str) -> (Value, Vec<u8>) {
    let dir = Path::new("tests/fixtures/gguf");
    let doc = std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap();
    let st = std::fs::read(dir.join(format!("{name}.safetensors"))).unwrap();
    (serde_json::from_str(&doc).unwrap(), st)
}

fn floats(st: &safetensors::SafeTensors, key: &str) -> Vec<f32> {
    bytemuck::pod_collect_to_vec(st.tensor(key).unwrap().data())
}

fn ints(st: &safetensors::SafeTensors, key: &str) -> Vec<i32> {
    bytemuck::pod_collect_to_vec(st.tensor(key).unwrap().data())
}

/// The tokenizer and chat template built from the file's metadata give transformers' prompt
/// text and ids; the model's first 32 greedy tokens equal transformers'; last-position logits
/// at the recorded ids within 1e-3 relative error (f32 activations).
fn check(name: &str, file: &str) {
    let Some(gguf) = open(file) else { return };
    let (doc, st) = oracle(name);
    let st = safetensors::SafeTensors::deserialize(&st).unwrap();
    let tok = Tokenizer::from_gguf(&gguf).unwrap();
    let template = ChatTemplate::from_gguf(&gguf);
    let bos = tok.bos_id().and_then(|i| tok.token(i));
    let eos = tok.eos_id().and_then(|i| tok.token(i));
    let cases = doc["cases"].as_array().unwrap();
    let mut prompts = Vec::new();
    for case in cases {
        let text = template
            .render(
                &[ChatMessage::new("user", case["prompt"].as_str().unwrap())],
                true,
                bos.as_deref(),
                eos.as_deref(),
            )
            .unwrap();
        assert_eq!(
            text,
            case["text"].as_str().unwrap(),
            "{name}: chat template"
        );
        let ids = tok.encode(&text, true).unwrap();
        let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        assert_eq!(ids, want, "{name}: prompt ids");
        prompts.push(ids);
    }

    let gpu = common::gpu().clone();
    let opts = LoadOptions {
        dtype: DType::F32,
        max_prompt_tokens: 64,
        max_context: 128,
        quantize: None,
    };
    let mut model = TextModel::from_gguf(gpu, gguf, &opts).unwrap();
    for (i, (case, ids)) in cases.iter().zip(&prompts).enumerate() {
        let want: Vec<u32> = serde_json::from_value(case["tokens"].clone()).unwrap();
        let gen = pollster::block_on(model.generate(
            ids,
            &GenerateOptions {
                max_new_tokens: want.len(),
                sampling: Sampling::Greedy,
                stop_tokens: vec![],
                keep_prefill_logits: true,
            },
            |_| true,
        ))
        .unwrap();
        let logits = gen.prefill_logits.unwrap();
        let at = ints(&st, &format!("p{i}.logit_ids"));
        let ref_logits = floats(&st, &format!("p{i}.logits"));
        let (mut num, mut den) = (0f64, 0f64);
        for (&id, &r) in at.iter().zip(&ref_logits) {
            num += (logits[id as usize] as f64 - r as f64).powi(2);
            den += (r as f64).powi(2);
        }
        let rel = (num / den).sqrt();
        eprintln!(
            "{name} prompt {i}: logits rel err {rel:.2e}, prefill {:.0} ms, decode {:.0} ms for {} tokens",
            gen.timings.prefill_ms,
            gen.timings.decode_ms,
            gen.tokens.len()
        );
        assert!(
            rel <= 1e-3,
            "{name} prompt {i}: logits relative error {rel:.2e}"
        );
        assert_eq!(gen.tokens, want, "{name} prompt {i}: greedy tokens");
    }
}

#[test]
fn smollm2_135m_q4_1_matches_transformers() {
    check("smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf");
}

#[test]
fn qwen2_5_0_5b_q4_k_m_matches_transformers() {
    check("qwen2", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
}
