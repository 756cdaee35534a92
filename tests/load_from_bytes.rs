//! The in-memory loaders the browser demo uses (model, tokenizer, image processor and image from
//! bytes) give what the path-based ones give, down to the generated tokens on a browser-like
//! device (no shader-f16, 128 MiB bindings), through the shared `pipeline` the CLI uses.

use ficoco::model::{GenerateOptions, Llava, LoadOptions, Sampling};
use ficoco::pipeline;
use ficoco::preprocess::{self, ImageProcessor, Tokenizer};
use std::path::Path;

mod common;

const MODEL: &str = "assets/llava-tiny-random";
const IMAGE: &str = "assets/images/demo.png";

fn read(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(MODEL).join(name)).unwrap()
}

fn text(name: &str) -> String {
    String::from_utf8(read(name)).unwrap()
}

#[test]
fn tokenizer_and_processor_from_bytes_match_from_dir() {
    let from_dir = Tokenizer::from_dir(MODEL).unwrap();
    let from_bytes = Tokenizer::from_bytes(
        &read("tokenizer.json"),
        Some(&text("tokenizer_config.json")),
    )
    .unwrap();
    let q = "USER: <image>\nWhat colour is the square? ASSISTANT:";
    assert_eq!(
        from_dir.encode(q, true).unwrap(),
        from_bytes.encode(q, true).unwrap()
    );
    assert_eq!(
        (from_dir.bos_id(), from_dir.eos_id()),
        (from_bytes.bos_id(), from_bytes.eos_id())
    );

    let image = preprocess::load_image(IMAGE).unwrap();
    let decoded = preprocess::decode_image(&std::fs::read(IMAGE).unwrap(), "demo.png").unwrap();
    assert_eq!(image, decoded);
    let want = ImageProcessor::from_dir(MODEL)
        .unwrap()
        .preprocess(&image)
        .unwrap();
    let pre = ImageProcessor::from_json_str(
        &text("preprocessor_config.json"),
        Path::new("preprocessor_config.json"),
    )
    .unwrap();
    assert_eq!(pre.preprocess(&decoded).unwrap(), want);
    // processor_config.json without an image_processor entry is refused, not defaulted.
    let err = ImageProcessor::from_processor_json_str("{}", Path::new("processor_config.json"))
        .unwrap_err();
    assert!(err.to_string().contains("image_processor"), "{err}");
}

#[test]
fn model_from_bytes_generates_what_the_directory_model_does() {
    let gpu = common::portable_gpu();
    let tokenizer = Tokenizer::from_dir(MODEL).unwrap();
    let processor = ImageProcessor::from_dir(MODEL).unwrap();
    let pixels = processor
        .preprocess(&preprocess::load_image(IMAGE).unwrap())
        .unwrap();
    let opts = LoadOptions::default();
    let answer = |model: &mut Llava, reduce: &str| {
        let text = preprocess::chat_prompt("What colour is the square?");
        let spec = reduce.parse().unwrap();
        let prepared =
            pipeline::prepare(model, &tokenizer, &text, &spec, None, false, false).unwrap();
        let gen = GenerateOptions {
            max_new_tokens: 8,
            sampling: Sampling::Greedy,
            stop_tokens: tokenizer.eos_id().into_iter().collect(),
            keep_prefill_logits: false,
        };
        pollster::block_on(model.generate(&pixels, &prepared.prompt, &gen, |_| true))
            .unwrap()
            .tokens
    };
    let mut from_dir = Llava::load(gpu.clone(), Path::new(MODEL), &opts).unwrap();
    let mut from_bytes = Llava::load_from_bytes(
        gpu.clone(),
        &text("config.json"),
        read("model.safetensors"),
        &opts,
    )
    .unwrap();
    // Reusing one model across reductions (as the page does) must not carry state over.
    let mut first = None;
    for reduce in ["none", "ficoco-v:64", "ficoco-l:64", "none"] {
        let tokens = answer(&mut from_dir, reduce);
        assert_eq!(tokens, answer(&mut from_bytes, reduce), "{reduce}");
        if reduce == "none" {
            assert_eq!(first.get_or_insert_with(|| tokens.clone()), &tokens);
        }
    }
}
