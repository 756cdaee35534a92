//! The command-line examples' front: `--help` of each exits 0 and names every reduction method
//! it takes, a bad command line exits 2 with the reason, and `eval --replot` draws the sweep
//! figure as a PNG of the expected size with ink on it.
mod common;

use ficoco::reduce::{every_method, KV_METHODS};
use std::process::{Command, Output};

fn run(example: &str, args: &[&str]) -> Output {
    Command::new(common::example(example))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| panic!("{example}: {e}"))
}

#[test]
fn help_exits_0_and_names_every_method() {
    for example in ["generate", "eval", "reduce", "bench"] {
        let out = run(example, &["--help"]);
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{example} --help: {:?}", out.status);
        assert!(help.contains("Usage:"), "{example}: {help}");
        for m in every_method().iter().chain(KV_METHODS) {
            assert!(
                help.contains(m),
                "{example} --help does not name {m}:\n{help}"
            );
        }
    }
    let out = run("make_vqa", &["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && help.contains("--questions-per-image"),
        "{help}"
    );
}

#[test]
fn bad_command_lines_exit_2_with_the_reason() {
    let cases: [(&str, &[&str], &str); 4] = [
        ("generate", &["--prompt", "hi"], "--image is required"),
        (
            "generate",
            &["--image", "x.png", "--prompt", "a", "--raw-prompt", "b"],
            "cannot be used with",
        ),
        (
            "eval",
            &["--set", "x.jsonl", "--reduce", "nope:64"],
            "unknown reduction method \"nope\"",
        ),
        (
            "bench",
            &["--reduce", "fastv,nope"],
            "unknown reduction method \"nope\"",
        ),
    ];
    for (example, args, want) in cases {
        let out = run(example, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{example} {args:?}: {err}");
        assert!(err.contains(want), "{example} {args:?}: {err}");
    }
}

#[test]
fn replot_draws_both_panels_from_a_sweep_table() {
    let dir = std::env::temp_dir().join(format!("ficoco-replot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The table eval --sweep writes: method, visual tokens, accuracy %, % of unreduced,
    // LLM-prefill TFLOPs, speedup; a budget a method cannot meet has no numbers.
    let table = "| method | visual tokens | accuracy % | % of unreduced | LLM-prefill TFLOPs | prefill speedup |\n\
                 |---|---|---|---|---|---|\n\
                 | none | 576 | 90.0 | 100.0 | 0.000840 | 1.00 |\n\
                 | fastv | 192 | 79.0 | 87.8 | 0.000390 | 1.60 |\n\
                 | fastv | 64 | 55.0 | 61.1 | 0.000310 | 2.10 |\n\
                 | tome | 192 | 77.0 | 85.6 | 0.000240 | 1.90 |\n\
                 | tome | 64 | not reachable: too few layers | | | |\n";
    std::fs::write(dir.join("sweep.md"), table).unwrap();
    let out = run("eval", &["--replot", dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = image::open(dir.join("sweep.png"))
        .expect("sweep.png decodes")
        .to_rgb8();
    assert_eq!(png.dimensions(), (1400, 560));
    // Not blank: a large share of white background, some dark ink (axes, text) and some
    // strongly coloured pixels (the lines) in each half.
    for half in [0..700, 700..1400] {
        let (mut white, mut dark, mut colour) = (0, 0, 0);
        for x in half.clone() {
            for y in 0..560 {
                let [r, g, b] = png.get_pixel(x, y).0.map(i32::from);
                let (hi, lo) = (r.max(g).max(b), r.min(g).min(b));
                white += usize::from(lo > 245);
                dark += usize::from(hi < 60);
                colour += usize::from(hi - lo > 100);
            }
        }
        let n = 700 * 560;
        assert!(white > n / 2, "{half:?}: {white} white of {n}");
        assert!(dark > 1000, "{half:?}: {dark} dark pixels");
        assert!(colour > 300, "{half:?}: {colour} coloured pixels");
    }
    // An empty table is refused, not drawn.
    std::fs::write(dir.join("sweep.md"), "no table here\n").unwrap();
    let out = run("eval", &["--replot", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no sweep rows"));
    std::fs::remove_dir_all(dir).ok();
}

/// `--mmproj` pairs with an LLM GGUF as `--model`; other combinations exit 2 saying so.
#[test]
fn mmproj_combinations_are_checked() {
    let dir = "tests/fixtures/models/gqa_untied";
    let (llm, mmproj) = (format!("{dir}/llm.gguf"), format!("{dir}/mmproj.gguf"));
    let image = "tests/fixtures/images/shapes_97x61.png";
    let cases: [(&str, Vec<&str>, &str); 5] = [
        (
            "generate",
            vec![
                "--model", dir, "--mmproj", &mmproj, "--image", image, "--prompt", "q",
            ],
            "--mmproj goes with a llama.cpp LLM file",
        ),
        (
            "generate",
            vec![
                "--model",
                &llm,
                "--mmproj",
                &mmproj,
                "--decoder",
                &llm,
                "--image",
                image,
                "--prompt",
                "q",
            ],
            "cannot be used with",
        ),
        (
            "generate",
            vec!["--model", &llm, "--mmproj", &mmproj, "--prompt", "q"],
            "--image is required",
        ),
        (
            "eval",
            vec!["--model", &llm, "--set", "x.jsonl"],
            "pair it with llama.cpp's vision file (--mmproj FILE.gguf)",
        ),
        (
            "eval",
            vec!["--model", dir, "--mmproj", &mmproj, "--set", "x.jsonl"],
            "--mmproj goes with a llama.cpp LLM file",
        ),
    ];
    for (example, args, want) in cases {
        let out = run(example, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{example} {args:?}: {err}");
        assert!(err.contains(want), "{example} {args:?}: {err}");
    }
}

/// `generate --model LLM.gguf --mmproj MMPROJ.gguf` answers as transformers does (the oracle's
/// greedy tokens), with and without a reduction; a swapped pair fails with the reason.
#[test]
fn generate_runs_a_gguf_pair() {
    let dir = "tests/fixtures/models/gqa_untied";
    let (llm, mmproj) = (format!("{dir}/llm.gguf"), format!("{dir}/mmproj.gguf"));
    let oracle: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{dir}/oracle.json")).unwrap())
            .unwrap();
    let args = |model: &str, mm: &str, reduce: &str| {
        let mut a = vec!["--model", model, "--mmproj", mm, "--dtype", "f32", "--json"];
        a.extend(["--image", oracle["image"].as_str().unwrap()]);
        a.extend(["--prompt", oracle["question"].as_str().unwrap()]);
        a.extend(["--max-new-tokens", "8", "--reduce", reduce]);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    for (reduce, visual) in [("none", 16), ("ficoco-v:6", 6)] {
        let a = args(&llm, &mmproj, reduce);
        let out = run(
            "generate",
            &a.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["visual_tokens"], visual, "{reduce}");
        if reduce == "none" {
            assert_eq!(v["tokens"], oracle["greedy_tokens"]);
        }
    }
    let a = args(&mmproj, &llm, "none");
    let out = run(
        "generate",
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("the two files are swapped"), "{err}");
}
