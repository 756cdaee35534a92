//! The tensor-level runner (`examples/reduce.rs`, built by `cargo test`) on fixture inputs:
//! its output file must hold the numpy reference's result.
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reduce")
}

fn runner() -> PathBuf {
    common::example("reduce")
}

fn tensor<T: bytemuck::Pod>(bytes: &[u8], name: &str) -> Vec<T> {
    let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
    bytemuck::pod_collect_to_vec(st.tensor(name).unwrap().data())
}

fn run_case(file: &str, args: &[&str]) -> Vec<u8> {
    let out = std::env::temp_dir().join(format!("ficoco-runner-{}-{file}", std::process::id()));
    let status = Command::new(runner())
        .args(args)
        .arg("--input")
        .arg(fixtures().join(file))
        .arg("--out")
        .arg(&out)
        .env(
            "XDG_RUNTIME_DIR",
            std::env::var("XDG_RUNTIME_DIR").unwrap_or("/tmp".into()),
        )
        .status()
        .unwrap_or_else(|e| panic!("{}: {e}", runner().display()));
    assert!(status.success(), "runner failed on {file}");
    let bytes = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).ok();
    bytes
}

fn check(file: &str, args: &[&str]) {
    let got = run_case(file, args);
    let want = std::fs::read(fixtures().join(file)).unwrap();
    assert_eq!(
        tensor::<i64>(&got, "kept"),
        tensor::<i64>(&want, "expected_kept"),
        "{file}: kept"
    );
    let (g, w) = (
        tensor::<f32>(&got, "hidden"),
        tensor::<f32>(&want, "expected_hidden"),
    );
    assert_eq!(g.len(), w.len());
    let diff = g
        .iter()
        .zip(&w)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(diff <= 1e-4, "{file}: hidden differs by {diff}");
}

#[test]
fn runner_reproduces_the_reference() {
    check(
        "ficoco_v_5x5_cls.safetensors",
        &[
            "--method", "ficoco-v", "--drop", "10", "--cls", "0", "--grid", "5",
        ],
    );
    check(
        "ficoco_l_causal.safetensors",
        &[
            "--method", "ficoco-l", "--drop", "20", "--visual", "10:36", "--text", "46:12",
        ],
    );
}

#[test]
fn runner_refuses_bad_input() {
    let status = Command::new(runner())
        .args([
            "--method",
            "ficoco-v",
            "--drop",
            "3",
            "--input",
            "/nonexistent.safetensors",
        ])
        .args(["--out", "/tmp/x.safetensors"])
        .output()
        .unwrap();
    assert!(!status.status.success());
    let err = String::from_utf8_lossy(&status.stderr);
    assert!(err.contains("/nonexistent.safetensors"), "{err}");
}
