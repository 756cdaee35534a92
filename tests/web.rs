//! The browser demo's end-to-end test: runs `examples/web/test.sh`, which builds the wasm site,
//! answers a fixed question with the native `generate` CLI and in headless Chromium (WebGPU on
//! SwiftShader) with and without reduction and with a quantised decoder, for both model
//! families, and fails on any difference. Without Chromium it skips loudly, unless
//! `FICOCO_REQUIRE_BROWSER` is set (CI sets it), when it fails.

use std::path::Path;
use std::process::Command;

#[test]
fn browser_demo_answers_like_the_cli() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let required = std::env::var_os("FICOCO_REQUIRE_BROWSER").is_some_and(|v| !v.is_empty());
    if !Path::new(&chromium).exists() {
        assert!(
            !required,
            "FICOCO_REQUIRE_BROWSER is set but {chromium} is missing: apt-get install -y chromium"
        );
        eprintln!(
            "\n!!! SKIPPED the browser test: {chromium} is missing (apt-get install -y chromium, \
             or set CHROMIUM; set FICOCO_REQUIRE_BROWSER=1 to make this a failure) !!!\n"
        );
        return;
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| format!("{root}/target"));
    // The trained CLIP + Llama demo model, then the SigLIP + Qwen2 family (no [CLS], 27 x 27
    // patches, ChatML), each with its own artifacts folder.
    for (model, image, artifacts) in [
        (
            "assets/llava-vqa",
            "assets/vqa-test/images/000003.png",
            "web-test",
        ),
        (
            "assets/llava-interleave-tiny-random",
            "assets/images/demo.png",
            "web-test-siglip",
        ),
    ] {
        let status = Command::new("bash")
            .arg(Path::new(root).join("examples/web/test.sh"))
            .args(["--model", model, "--image", image])
            .env("FICOCO_WEB_ARTIFACTS", format!("{target}/{artifacts}"))
            .current_dir(root)
            .status()
            .expect("could not run bash examples/web/test.sh");
        assert!(
            status.success(),
            "examples/web/test.sh --model {model} failed ({status}): see its output above"
        );
    }
}
