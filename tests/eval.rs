//! The evaluation example (`examples/eval`, built by `cargo test`) on the shipped demo model and
//! the first questions of the committed test split: the unreduced model answers them well, its
//! answers are transformers' (`assets/llava-vqa/transformers_eval.json`, written by
//! `scripts/eval_transformers.py` from the same weights), and a reduced run reports the
//! reduction it ran.
use std::path::{Path, PathBuf};
use std::process::Command;

const SLICE: usize = 40;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `target/<profile>/examples/eval`, next to this test's `deps/` directory.
fn eval_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/eval")
}

fn eval(extra: &[&str]) -> serde_json::Value {
    let out = Command::new(eval_bin())
        .current_dir(root())
        .args([
            "--model",
            "assets/llava-vqa",
            "--set",
            "assets/vqa-test/questions.jsonl",
        ])
        .args(["--limit", &SLICE.to_string(), "--json"])
        .args(extra)
        .env(
            "XDG_RUNTIME_DIR",
            std::env::var("XDG_RUNTIME_DIR").unwrap_or("/tmp".into()),
        )
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", eval_bin().display()));
    assert!(
        out.status.success(),
        "eval failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("eval --json prints one JSON object")
}

#[test]
fn unreduced_answers_are_right_and_match_transformers() {
    let ours = eval(&[]);
    let theirs: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("assets/llava-vqa/transformers_eval.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(ours["count"], SLICE);
    let accuracy = ours["accuracy"].as_f64().unwrap();
    assert!(
        accuracy >= 0.85,
        "unreduced accuracy {accuracy} on the first {SLICE} questions"
    );
    let (a, b) = (
        ours["answers"].as_array().unwrap(),
        theirs["answers"].as_array().unwrap(),
    );
    let differ: Vec<usize> = (0..SLICE).filter(|&i| a[i] != b[i]).collect();
    // f16 weights in both; f32 activations with different summation orders may flip a close
    // call, not more.
    assert!(
        differ.len() <= 1,
        "answers differ from transformers at {differ:?}"
    );
    assert_eq!(ours["visual_tokens_llm"], 576);
}

#[test]
fn a_reduced_run_reports_its_reduction() {
    let r = eval(&["--reduce", "ficoco-v:64"]);
    assert_eq!(r["reduce"], "ficoco-v");
    assert_eq!(r["visual_tokens_llm"], 64);
    let (f, full) = (&r["flops"], &r["flops_unreduced"]);
    assert!(f["llm_prefill"].as_f64().unwrap() < full["llm_prefill"].as_f64().unwrap() / 3.0);
    let per_type = r["per_type"].as_object().unwrap();
    let counted: u64 = per_type
        .values()
        .map(|t| t["count"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, SLICE as u64);
}
