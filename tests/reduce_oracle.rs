//! One reduction step on the GPU against the numpy reference (scripts/reduce_reference.py,
//! fixtures by scripts/make_reduce_fixtures.py): same kept tokens (-1 for new tokens), same
//! positions, same scores and ToMe sizes, hidden states within 1e-4. Every case of cases.json
//! runs.
mod common;
use common::*;
use ficoco::reduce::random::numpy_permutation;
use ficoco::reduce::{
    self, run_once, FicocoV, Pool, PositionKind, PruMerge, RandomDrop, Reduction, Spans, NEW_TOKEN,
    PLANNED_METHODS,
};
use serde_json::Value;
use std::path::Path;

fn fixtures() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/reduce"
    ))
}

fn read(file: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn maybe_tensor<T: bytemuck::Pod>(bytes: &[u8], name: &str) -> Option<Vec<T>> {
    let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
    st.tensor(name)
        .ok()
        .map(|t| bytemuck::pod_collect_to_vec(t.data()))
}

fn tensor<T: bytemuck::Pod>(bytes: &[u8], name: &str) -> Vec<T> {
    maybe_tensor(bytes, name).unwrap_or_else(|| panic!("tensor {name}"))
}

fn span(v: &Value) -> Option<std::ops::Range<usize>> {
    v.as_array().map(|a| {
        let s = a[0].as_u64().unwrap() as usize;
        s..s + a[1].as_u64().unwrap() as usize
    })
}

/// A case's spans; LLM cases (with a question) carry RoPE positions of kind `llm`.
fn case_spans(case: &Value, llm: PositionKind) -> Spans {
    Spans {
        cls: case["cls"].as_u64().map(|c| c as usize),
        visual: span(&case["visual"]),
        text: span(&case["text"]),
        grid: case["grid"].as_u64().map(|g| g as usize),
        positions: if case["text"].is_array() {
            llm
        } else {
            PositionKind::Grid
        },
    }
}

/// The method and ablation options of a case as a composition of stages.
fn reduction(case: &Value) -> Reduction {
    let method = case["method"].as_str().unwrap();
    let opts = &case["options"];
    let mut r = match method {
        "prumerge" => Reduction::prumerge(PruMerge {
            knn: opts["knn"]
                .as_u64()
                .map_or(PruMerge::default().knn, |k| k as usize),
        }),
        "random" => Reduction::random(RandomDrop {
            seed: opts["seed"].as_u64().unwrap_or(0) as u32,
        }),
        "ficoco-v" if opts["eps"].is_number() => Reduction::ficoco_v(FicocoV {
            eps: opts["eps"].as_f64().unwrap() as f32,
            ..FicocoV::default()
        }),
        "pool" => Reduction::pool(Pool {
            k: opts["pool_k"]
                .as_u64()
                .map_or(Pool::default().k, |k| k as usize),
        }),
        _ => reduce::by_name(method).unwrap().unwrap(),
    };
    if opts["local_penalty"] == false {
        r = r.without_local_penalty();
    }
    if let Some(k) = opts["fixed_k"].as_u64() {
        r = r.with_fixed_k(k as usize);
    }
    if opts["compress"] == "average" {
        r = r.averaging();
    }
    if opts["correlation"] == "convergent" {
        r = r.convergent();
    }
    if opts["direct"] == false {
        r = r.without_direct();
    }
    if opts["indirect"] == false {
        r = r.without_indirect();
    }
    r
}

#[test]
fn steps_match_numpy_reference() {
    let index: Value = serde_json::from_slice(&read("cases.json")).unwrap();
    let cases = index["cases"].as_array().unwrap();
    let mut ran = Vec::new();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let inputs = read(case["inputs"].as_str().unwrap());
        let expected = read(case["file"].as_str().unwrap());
        let hidden: Vec<f32> = tensor(&inputs, "hidden");
        let attn: Vec<f32> = tensor(&inputs, "attn");
        let positions: Vec<i32> = tensor(&inputs, "positions");
        let keys: Option<Vec<f32>> = maybe_tensor(&inputs, "keys");
        let sizes: Option<Vec<f32>> = maybe_tensor(&inputs, "sizes");
        let n = positions.len();
        let d = hidden.len() / n;
        let drop = case["drop"].as_u64().unwrap() as usize;
        let spans = case_spans(case, PositionKind::Rope);
        let new_position = match (&spans.visual, spans.positions) {
            (Some(v), PositionKind::Rope) => positions[v.end - 1],
            _ => -1,
        };
        let out = pollster::block_on(run_once(
            gpu(),
            &reduction(case),
            &spans,
            &hidden,
            d,
            keys.as_deref(),
            &attn,
            &positions,
            sizes.as_deref(),
            drop,
        ))
        .unwrap_or_else(|e| panic!("{name}: {e}"));

        let want_kept: Vec<i64> = tensor(&expected, "expected_kept");
        let got_kept: Vec<i64> = out
            .kept
            .iter()
            .map(|&k| if k == NEW_TOKEN { -1 } else { k as i64 })
            .collect();
        assert_eq!(got_kept, want_kept, "{name}: kept tokens");
        let want_pos: Vec<i32> = want_kept
            .iter()
            .map(|&k| {
                if k < 0 {
                    new_position
                } else {
                    positions[k as usize]
                }
            })
            .collect();
        assert_eq!(out.positions, want_pos, "{name}: positions");
        if let Some(want_scores) = maybe_tensor::<f32>(&expected, "expected_scores") {
            let want_index: Vec<i64> = tensor(&expected, "expected_score_index");
            let got_index: Vec<i64> = out.score_index.iter().map(|&i| i as i64).collect();
            assert_eq!(got_index, want_index, "{name}: scored tokens");
            assert_close(
                &format!("{name} scores"),
                &out.scores,
                &want_scores,
                1e-6,
                1e-5,
            );
        }
        if let Some(want_sizes) = maybe_tensor::<f32>(&expected, "expected_sizes") {
            assert_eq!(out.sizes, want_sizes, "{name}: token sizes");
        }
        let want_hidden: Vec<f32> = tensor(&expected, "expected_hidden");
        let diff = max_abs_diff(&out.hidden, &want_hidden);
        assert!(diff <= 1e-4, "{name}: hidden states differ by {diff}");
        ran.push(name.to_string());
    }
    eprintln!("ran {} cases", ran.len());
    assert_eq!(ran.len(), cases.len());
    // Every single-step method of the reference has a case.
    for m in reduce::METHODS.iter().filter(|m| **m != "none") {
        assert!(
            cases.iter().any(|c| c["method"] == *m),
            "no fixture for method {m}"
        );
    }
    assert_eq!(PLANNED_METHODS, &["ficoco-vl", "ficoco-vl@authors"]);
}

/// `ficoco-v@authors` and `ficoco-l@authors` on the GPU against scripts/ficoco_authors.py's
/// reading of the authors' code, on the step inputs of the demo model's first reducing layer
/// (pre-softmax scores; fixtures by scripts/make_authors_fixtures.py): the same kept tokens,
/// scores within f32 rounding, hidden states within 1e-4.
#[test]
fn authors_readings_match_their_semantics() {
    let index: Value = serde_json::from_slice(&read("authors.json")).unwrap();
    let f16s = |bytes: &[u8], name: &str| -> Vec<f32> {
        let bits: Vec<u16> = tensor(bytes, name);
        bits.iter()
            .map(|&b| half::f16::from_bits(b).to_f32())
            .collect()
    };
    for case in index["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let file = read(case["file"].as_str().unwrap());
        let (hidden, attn) = (f16s(&file, "hidden"), f16s(&file, "attn"));
        let positions: Vec<i32> = tensor(&file, "positions");
        let n = positions.len();
        let drop = case["drop"].as_u64().unwrap() as usize;
        let margin = case["score_margin"].as_f64().unwrap();
        assert!(
            margin > 1e-5,
            "{name}: boundary margin {margin} too small to compare"
        );
        // The authors' FiCoCo-L renumbers positions.
        let spans = case_spans(case, PositionKind::RopeRenumbered);
        let r = reduce::by_name(name).unwrap().unwrap();
        let out = pollster::block_on(run_once(
            gpu(),
            &r,
            &spans,
            &hidden,
            hidden.len() / n,
            None,
            &attn,
            &positions,
            None,
            drop,
        ))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let want_kept: Vec<i64> = tensor(&file, "expected_kept");
        let got_kept: Vec<i64> = out.kept.iter().map(|&k| k as i64).collect();
        assert_eq!(got_kept, want_kept, "{name}: kept tokens");
        assert_close(
            &format!("{name} scores"),
            &out.scores,
            &tensor::<f32>(&file, "expected_scores"),
            1e-5,
            1e-4,
        );
        let want_hidden: Vec<f32> = tensor(&file, "expected_hidden");
        let diff = max_abs_diff(&out.hidden, &want_hidden);
        assert!(diff <= 1e-4, "{name}: hidden states differ by {diff}");
        eprintln!(
            "{name}: {n} -> {} tokens, hidden within {diff:.2e}",
            want_kept.len()
        );
    }
}

#[test]
fn numpy_permutation_matches_legacy_random_state() {
    // numpy.random.RandomState(0).permutation(10)
    assert_eq!(numpy_permutation(0, 10), [2, 8, 4, 9, 1, 6, 7, 3, 0, 5]);
    let p = numpy_permutation(1234, 576);
    let mut sorted = p.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..576).collect::<Vec<u32>>());
}

#[test]
fn every_method_runs_by_name() {
    // Defaults of every method on a LLaVA-like vision layer: [CLS] + 8 x 8 patches.
    let g = gpu();
    let (side, d) = (8usize, 16usize);
    let n = side * side + 1;
    let hidden = rand_vec(n * d, 7, 1.0);
    let keys = rand_vec(n * 8, 8, 1.0);
    let attn: Vec<f32> = rand_vec(n * n, 9, 0.5)
        .chunks(n)
        .flat_map(|row| {
            let e: Vec<f32> = row.iter().map(|v| v.exp()).collect();
            let s: f32 = e.iter().sum();
            e.into_iter().map(move |v| v / s)
        })
        .collect();
    let positions: Vec<i32> = std::iter::once(-1).chain(0..(side * side) as i32).collect();
    let vision = Spans {
        cls: Some(0),
        grid: Some(side),
        ..Spans::default()
    };
    // The same tokens as an LLM prompt: 1 system token, 64 image tokens, the rest as question.
    let llm = Spans {
        visual: Some(1..n - 8),
        text: Some(n - 8..n),
        ..Spans::default()
    };
    for &m in reduce::METHODS.iter().filter(|m| **m != "none") {
        let r = reduce::by_name(m).unwrap().unwrap();
        let (spans, drop) = match m {
            "ficoco-l" | "fastv" | "pdrop" | "sparsevlm" => (&llm, 20),
            "pool" => (&vision, 48),
            _ => (&vision, 20),
        };
        for keys in [None, Some(&keys[..])] {
            let out = pollster::block_on(run_once(
                g, &r, spans, &hidden, d, keys, &attn, &positions, None, drop,
            ))
            .unwrap_or_else(|e| panic!("{m}: {e}"));
            assert_eq!(out.kept.len(), n - drop, "{m}");
            assert!(out.hidden.iter().all(|v| v.is_finite()), "{m}");
        }
    }
}

#[test]
fn bad_steps_are_refused() {
    let g = gpu();
    let (n, d) = (10, 4);
    let hidden = vec![0.5f32; n * d];
    let attn = vec![0.1f32; n * n];
    let positions: Vec<i32> = (0..n as i32).collect();
    let run = |r: &Reduction, spans: &Spans, drop: usize| {
        pollster::block_on(run_once(
            g, r, spans, &hidden, d, None, &attn, &positions, None, drop,
        ))
        .unwrap_err()
        .to_string()
    };
    let v = reduce::by_name("ficoco-v").unwrap().unwrap();
    let cls = Spans {
        cls: Some(0),
        grid: Some(3),
        ..Spans::default()
    };
    assert!(run(&v, &cls, 10).contains("only 9 are candidates"));
    // An explicit [CLS]-attention term needs [CLS] (the methods' ClsOrEquivalent does not).
    let by_cls = Reduction::prune_by_attention(reduce::Rows::Cls);
    assert!(run(&by_cls, &Spans::default(), 2).contains("[CLS]"));
    let no_grid = Spans {
        cls: Some(0),
        ..Spans::default()
    };
    assert!(run(&v, &no_grid, 2).contains("--grid"));
    let l = reduce::by_name("ficoco-l").unwrap().unwrap();
    let visual_only = Spans {
        visual: Some(2..8),
        ..Spans::default()
    };
    assert!(run(&l, &visual_only, 2).contains("--text"));
    let sparse = reduce::by_name("sparsevlm").unwrap().unwrap();
    assert!(run(&sparse, &visual_only, 2).contains("--text"));
    // ToMe merges at most |A| = 5 of 9 candidates; pooling drops exactly 8 of a 3 x 3 grid... and
    // 3 is not a multiple of 2.
    let tome = reduce::by_name("tome").unwrap().unwrap();
    assert!(run(&tome, &cls, 6).contains("at most 5"));
    let pool = reduce::by_name("pool").unwrap().unwrap();
    assert!(run(&pool, &cls, 5).contains("k | grid"));
    let pool1 = Reduction::pool(Pool { k: 1 });
    assert!(run(&pool1, &cls, 5).contains("drops exactly 0"));
    let evit = reduce::by_name("evit").unwrap().unwrap();
    assert!(run(&evit, &cls, 9).contains("create 1"));
    assert!(reduce::by_name("nonsense")
        .unwrap_err()
        .to_string()
        .contains("ficoco-v"));
    assert!(reduce::by_name("ficoco-vl").is_err());
}
