//! Image and prompt preprocessing against transformers' CLIPImageProcessor and LlavaProcessor
//! (fixtures from scripts/make_fixtures.py).
use ficoco::preprocess::{
    self, build_prompt_ids, chat_prompt, ImageProcessor, ImageProcessorConfig, PreprocessError,
    TextStream, Tokenizer,
};
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn tensor<T: bytemuck::Pod>(bytes: &[u8], name: &str) -> Vec<T> {
    let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
    bytemuck::pod_collect_to_vec(st.tensor(name).unwrap().data())
}

fn cases() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("tests/fixtures/preprocess"))
        .expect("tests/fixtures/preprocess (run scripts/make_fixtures.sh)")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    v.sort();
    assert!(v.len() >= 4, "preprocess fixtures missing");
    v
}

#[test]
fn pixel_values_match_clip_image_processor() {
    for case in cases() {
        let text = std::fs::read_to_string(&case).unwrap();
        let meta: serde_json::Value = serde_json::from_str(&text).unwrap();
        let proc = ImageProcessor::new(ImageProcessorConfig::from_json_str(&text, &case).unwrap());
        let image = preprocess::load_image(root().join(meta["image"].as_str().unwrap())).unwrap();
        let bytes = std::fs::read(case.with_extension("safetensors")).unwrap();

        let want_u8: Vec<u8> = tensor(&bytes, "resized_u8");
        let got_u8 = proc.resized_planes(&image).unwrap();
        let differing = got_u8.iter().zip(&want_u8).filter(|(a, b)| a != b).count();
        assert_eq!(got_u8.len(), want_u8.len(), "{}", case.display());
        assert_eq!(differing, 0, "{}: resized pixels differ", case.display());

        let want: Vec<f32> = tensor(&bytes, "pixel_values");
        let got = proc.preprocess(&image).unwrap();
        assert_eq!(got.data.len(), want.len());
        let diff = got
            .data
            .iter()
            .zip(&want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        eprintln!(
            "{}: {}x{} max |diff| {diff:.2e}",
            case.display(),
            got.width,
            got.height
        );
        assert!(
            diff <= 1e-4,
            "{}: pixel values differ by {diff}",
            case.display()
        );
    }
}

#[test]
fn processor_config_errors_name_the_field() {
    let p = Path::new("preprocessor_config.json");
    let err = |json: &str| {
        ImageProcessorConfig::from_json_str(json, p)
            .unwrap_err()
            .to_string()
    };
    assert!(err(r#"{"resample": 0}"#).contains("resample"));
    assert!(err(r#"{"size": {"longest_edge": 3}}"#).contains("size"));
    assert!(err(r#"{"image_mean": [0.5, 0.5]}"#).contains("image_mean"));
    assert!(err(r#"{"do_pad": true}"#).contains("do_pad"));
    assert!(
        err(r#"{"image_processor_type": "LlavaNextImageProcessor"}"#)
            .contains("image_processor_type")
    );
    let missing = ImageProcessor::from_dir("/nonexistent-model").unwrap_err();
    assert!(missing
        .to_string()
        .contains("/nonexistent-model/preprocessor_config.json"));
    assert!(matches!(
        preprocess::load_image("/nonexistent.png"),
        Err(PreprocessError::File { .. })
    ));
}

fn fixture_model(name: &str) -> (PathBuf, serde_json::Value, Vec<u8>) {
    let dir = root().join("tests/fixtures/models").join(name);
    let json = std::fs::read_to_string(dir.join("oracle.json")).expect("oracle.json");
    let bytes = std::fs::read(dir.join("oracle.safetensors")).unwrap();
    (dir, serde_json::from_str(&json).unwrap(), bytes)
}

#[test]
fn prompt_ids_match_llava_processor() {
    for name in ["gqa_untied", "tied_full_layer"] {
        let (dir, meta, bytes) = fixture_model(name);
        let tok = Tokenizer::from_dir(&dir).unwrap();
        let question = meta["question"].as_str().unwrap();
        assert_eq!(chat_prompt(question), meta["prompt"].as_str().unwrap());
        let image_id = meta["image_token_id"].as_u64().unwrap() as u32;
        let visual = meta["visual_tokens"].as_u64().unwrap() as usize;
        let p = build_prompt_ids(&tok, &chat_prompt(question), image_id, visual).unwrap();
        let want: Vec<u32> = tensor::<i64>(&bytes, "input_ids")
            .into_iter()
            .map(|v| v as u32)
            .collect();
        assert_eq!(p.ids, want, "{name}");
        assert_eq!(p.image_len, visual);
        assert!(p.ids[p.image_start..p.image_start + visual]
            .iter()
            .all(|&t| t == image_id));
        assert_eq!(
            tok.bos_id(),
            Some(meta["bos_token_id"].as_u64().unwrap() as u32)
        );
        assert_eq!(
            tok.eos_id(),
            Some(meta["eos_token_id"].as_u64().unwrap() as u32)
        );

        let greedy: Vec<u32> = meta["greedy_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(
            tok.decode(&greedy, true).unwrap(),
            meta["greedy_text"].as_str().unwrap()
        );
    }
}

#[test]
fn prompt_errors() {
    let (dir, meta, _) = fixture_model("gqa_untied");
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let image_id = meta["image_token_id"].as_u64().unwrap() as u32;
    let e = build_prompt_ids(&tok, "no placeholder", image_id, 4).unwrap_err();
    assert!(e.to_string().contains("exactly once"), "{e}");
    let e = build_prompt_ids(&tok, "<image> and <image>", image_id, 4).unwrap_err();
    assert!(e.to_string().contains("2 times"), "{e}");
    let e = build_prompt_ids(&tok, "<image>", 1_000_000, 4).unwrap_err();
    assert!(e.to_string().contains("1000000"), "{e}");
    assert!(Tokenizer::from_dir("/nonexistent-model")
        .err()
        .unwrap()
        .to_string()
        .contains("tokenizer.json"));
}

/// Streaming pieces concatenate to the full decode, including multi-byte characters that
/// arrive as several byte-fallback tokens.
#[test]
fn text_stream_concatenates_to_decode() {
    let tok = Tokenizer::from_dir(root().join("tests/fixtures/tokenizer")).unwrap();
    for text in [
        "The square is red, and the circle is blue.",
        "caf\u{e9} \u{65e5}\u{672c} \u{1F600} done",
    ] {
        let ids = tok.encode(text, true).unwrap();
        let mut stream = TextStream::new(&tok);
        let mut out = String::new();
        for &id in &ids {
            let piece = stream.push(id).unwrap();
            assert!(!piece.contains('\u{FFFD}'), "{piece:?}");
            out.push_str(&piece);
        }
        out.push_str(&stream.finish().unwrap());
        assert_eq!(out, tok.decode(&ids, true).unwrap());
        assert_eq!(out, text);
    }
}
