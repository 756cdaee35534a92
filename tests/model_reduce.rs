//! Reductions attached to the model: `none` changes nothing, every site reaches its token
//! count, and decoding after a reduced prefill agrees with re-prefilling the same tokens under
//! the same reduction (so positions, per-layer cache lengths and the kept set stay consistent).
mod common;
use common::*;
use ficoco::gpu::DType;
use ficoco::model::{GenerateOptions, Llava, LoadOptions, Sampling};
use ficoco::preprocess::{self, ImageProcessor, PixelValues, PromptIds, Tokenizer};
use ficoco::reduce::{self, ReductionPlan, SiteReduction};
use std::path::Path;

struct Fixture {
    model: Llava,
    tok: Tokenizer,
    pixels: PixelValues,
    question: String,
    greedy: Vec<u32>,
}

fn fixture() -> Fixture {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("tests/fixtures/models/gqa_untied");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("oracle.json")).unwrap()).unwrap();
    let image = preprocess::load_image(root.join(json["image"].as_str().unwrap())).unwrap();
    let opts = LoadOptions {
        dtype: DType::F32,
        max_prompt_tokens: 64,
        max_context: 64,
    };
    Fixture {
        model: Llava::load(gpu().clone(), &dir, &opts).unwrap(),
        tok: Tokenizer::from_dir(&dir).unwrap(),
        pixels: ImageProcessor::from_dir(&dir)
            .unwrap()
            .preprocess(&image)
            .unwrap(),
        question: json["prompt"].as_str().unwrap().to_string(),
        greedy: json["greedy_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect(),
    }
}

fn greedy(n: usize) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens: n,
        sampling: Sampling::Greedy,
        stop_tokens: vec![],
        keep_prefill_logits: true,
    }
}

impl Fixture {
    fn prompt(&self) -> PromptIds {
        let image = self.model.config().image_token_index;
        preprocess::build_prompt_ids(&self.tok, &self.question, image, self.model.visual_tokens())
            .unwrap()
    }

    fn generate(&mut self, prompt: &PromptIds, n: usize) -> (Vec<u32>, Vec<f32>) {
        let out = pollster::block_on(
            self.model
                .generate(&self.pixels, prompt, &greedy(n), |_| true),
        )
        .unwrap();
        (out.tokens, out.prefill_logits.unwrap())
    }
}

fn site(method: &str, drops: &[(usize, usize)]) -> Option<SiteReduction> {
    Some(SiteReduction {
        reduction: reduce::by_name(method).unwrap().unwrap(),
        drops: drops.to_vec(),
    })
}

#[test]
fn none_changes_nothing() {
    let mut f = fixture();
    let prompt = f.prompt();
    let (tokens, logits) = f.generate(&prompt, f.greedy.len());
    f.model.set_reduction(ReductionPlan::default()).unwrap();
    let (again, logits_again) = f.generate(&prompt, f.greedy.len());
    assert_eq!(tokens, f.greedy);
    assert_eq!(again, tokens);
    assert_eq!(logits_again, logits);
}

#[test]
fn reduced_decoding_matches_reprefill() {
    let plans = [
        (
            "ficoco-v",
            ReductionPlan {
                vision: site("ficoco-v", &[(0, 4), (1, 4)]),
                llm: None,
                renumber_positions: false,
            },
        ),
        (
            "topk-cls in the tower",
            ReductionPlan {
                vision: site("topk-cls", &[(1, 6)]),
                llm: None,
                renumber_positions: false,
            },
        ),
        (
            "ficoco-l",
            ReductionPlan {
                vision: None,
                llm: site("ficoco-l", &[(0, 6), (1, 4)]),
                renumber_positions: false,
            },
        ),
        (
            "fastv",
            ReductionPlan {
                vision: None,
                llm: site("fastv", &[(1, 8)]),
                renumber_positions: false,
            },
        ),
        (
            "pdrop",
            ReductionPlan {
                vision: None,
                llm: site("pdrop", &[(0, 4), (1, 4)]),
                renumber_positions: false,
            },
        ),
        (
            "tome",
            ReductionPlan {
                vision: site("tome", &[(0, 4), (1, 3)]),
                llm: None,
                renumber_positions: false,
            },
        ),
        (
            "evit",
            ReductionPlan {
                vision: site("evit", &[(1, 6)]),
                llm: None,
                renumber_positions: false,
            },
        ),
        (
            "visionzip",
            ReductionPlan {
                vision: site("visionzip", &[(1, 8)]),
                llm: None,
                renumber_positions: false,
            },
        ),
        (
            "pool",
            ReductionPlan {
                vision: site("pool", &[(1, 12)]),
                llm: None,
                renumber_positions: false,
            },
        ),
        (
            "sparsevlm (new tokens inside the LLM)",
            ReductionPlan {
                vision: None,
                llm: site("sparsevlm", &[(0, 6)]),
                renumber_positions: false,
            },
        ),
        (
            "ficoco-l, renumbered positions",
            ReductionPlan {
                vision: None,
                llm: site("ficoco-l", &[(0, 6), (1, 4)]),
                renumber_positions: true,
            },
        ),
        (
            "sparsevlm, renumbered positions",
            ReductionPlan {
                vision: None,
                llm: site("sparsevlm", &[(0, 6)]),
                renumber_positions: true,
            },
        ),
        (
            "ficoco-v + ficoco-l",
            ReductionPlan {
                vision: site("ficoco-v", &[(0, 4)]),
                llm: site("ficoco-l", &[(1, 6)]),
                renumber_positions: false,
            },
        ),
    ];
    let mut f = fixture();
    let full = f.prompt();
    let (full_tokens, full_logits) = f.generate(&full, 4);
    for (name, plan) in plans {
        let vision_drop = plan.vision.as_ref().map_or(0, |v| v.total());
        f.model.set_reduction(plan).unwrap();
        assert_eq!(f.model.visual_tokens(), 16 - vision_drop, "{name}");
        let prompt = f.prompt();
        let (tokens, logits) = f.generate(&prompt, 4);
        assert_eq!(tokens.len(), 4, "{name}");
        let changed = max_abs_diff(&logits, &full_logits);
        assert!(
            changed > 1e-4,
            "{name}: the reduction changed nothing ({changed})"
        );
        // Re-prefill the prompt plus the first k generated tokens; the question span (scored by
        // LLM-side reductions) stays the original one.
        for k in 1..tokens.len() {
            let mut longer = prompt.clone();
            longer.ids.extend_from_slice(&tokens[..k]);
            let (next, _) = f.generate(&longer, 1);
            assert_eq!(next[0], tokens[k], "{name}: step {k} after re-prefill");
        }
    }
    let _ = full_tokens;
    // Renumbering changes the positions the later layers see.
    let mut logits_for = |renumber_positions: bool| {
        f.model
            .set_reduction(ReductionPlan {
                vision: None,
                llm: site("ficoco-l", &[(0, 6)]),
                renumber_positions,
            })
            .unwrap();
        let prompt = f.prompt();
        f.generate(&prompt, 1).1
    };
    let (kept, renumbered) = (logits_for(false), logits_for(true));
    assert!(max_abs_diff(&kept, &renumbered) > 1e-5);
}

#[test]
fn impossible_plans_are_refused() {
    let mut f = fixture();
    let too_late = ReductionPlan {
        vision: site("ficoco-v", &[(2, 1)]),
        llm: None,
        renumber_positions: false,
    };
    let e = f.model.set_reduction(too_late).unwrap_err().to_string();
    assert!(e.contains("only layers 0..2 run"), "{e}");
    let too_many = ReductionPlan {
        vision: site("ficoco-v", &[(0, 10), (1, 6)]),
        llm: None,
        renumber_positions: false,
    };
    let e = f.model.set_reduction(too_many).unwrap_err().to_string();
    assert!(e.contains("keep at least one"), "{e}");
    let no_layer = ReductionPlan {
        vision: None,
        llm: site("fastv", &[(3, 1)]),
        renumber_positions: false,
    };
    let e = f.model.set_reduction(no_layer).unwrap_err().to_string();
    assert!(e.contains("3 layers"), "{e}");
    let llm_too_many = ReductionPlan {
        vision: None,
        llm: site("fastv", &[(0, 17)]),
        renumber_positions: false,
    };
    f.model.set_reduction(llm_too_many).unwrap();
    let prompt = f.prompt();
    let e = pollster::block_on(f.model.generate(&f.pixels, &prompt, &greedy(1), |_| true))
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot drop 17"), "{e}");
}

/// `METHOD:BUDGET` through the planner into the model: each method reaches the requested count.
#[test]
fn specs_reach_their_budget() {
    use ficoco::reduce::ReduceSpec;
    let mut f = fixture();
    let text_tokens = f.prompt().ids.len() - 16;
    for method in [
        "ficoco-v",
        "ficoco-l",
        "ficoco-vl",
        "fastv",
        "pdrop",
        "topk-cls",
    ] {
        let spec: ReduceSpec = format!("{method}:6").parse().unwrap();
        let planned = spec.plan(f.model.config(), text_tokens).unwrap();
        assert_eq!(planned.schedule.kept(), 6, "{method}: {}", planned.schedule);
        let dropped = planned.plan.vision.as_ref().map_or(0, |v| v.total())
            + planned.plan.llm.as_ref().map_or(0, |l| l.total());
        assert_eq!(dropped, 10, "{method}: {:?}", planned.plan);
        f.model.set_reduction(planned.plan).unwrap();
        assert_eq!(
            f.model.visual_tokens(),
            planned.schedule.projector(),
            "{method}"
        );
        let prompt = f.prompt();
        let (tokens, _) = f.generate(&prompt, 2);
        assert_eq!(tokens.len(), 2, "{method}");
    }
    let none: ReduceSpec = "none".parse().unwrap();
    assert!(none
        .plan(f.model.config(), text_tokens)
        .unwrap()
        .plan
        .is_empty());
    let e = "pool:6"
        .parse::<ReduceSpec>()
        .unwrap()
        .plan(f.model.config(), text_tokens)
        .unwrap_err()
        .to_string();
    assert!(e.contains("4 (2x2) or 1 (4x4)"), "{e}");
    let e = "ficoco-v:abc"
        .parse::<ReduceSpec>()
        .unwrap_err()
        .to_string();
    assert!(e.contains("budget"), "{e}");
    let e = "ficoco-v:0.000000001T"
        .parse::<ReduceSpec>()
        .unwrap()
        .plan(f.model.config(), text_tokens)
        .unwrap_err()
        .to_string();
    assert!(e.contains("at least"), "{e}");
}

/// Merge attribution: every patch is followed to the output token that absorbed it.
#[test]
fn patch_owners_follow_merges() {
    let mut f = fixture();
    let gpu = f.model.gpu().clone();
    assert!(pollster::block_on(f.model.patch_owners()).is_err());
    for (method, drops) in [
        ("ficoco-v", &[(0, 4), (1, 4)][..]),
        ("visionzip", &[(1, 8)][..]),
        ("topk-cls", &[(1, 6)][..]),
    ] {
        f.model
            .set_reduction(ReductionPlan {
                vision: site(method, drops),
                llm: None,
                renumber_positions: false,
            })
            .unwrap();
        f.model.set_trace_merges(false).unwrap();
        let plain = f.model.encode_image(&f.pixels).unwrap();
        let plain = pollster::block_on(gpu.read_bytes(&plain)).unwrap();
        f.model.set_trace_merges(true).unwrap();
        let traced = f.model.encode_image(&f.pixels).unwrap();
        let traced = pollster::block_on(gpu.read_bytes(&traced)).unwrap();
        assert_eq!(plain, traced, "{method}: tracing changed the features");
        let kept = pollster::block_on(f.model.kept_patches()).unwrap();
        let owners = pollster::block_on(f.model.patch_owners()).unwrap();
        let visual = f.model.visual_tokens();
        assert_eq!(kept.len(), visual, "{method}");
        assert_eq!(owners.len(), 16, "{method}");
        let mut survived = [false; 16];
        for (row, &g) in kept.iter().enumerate() {
            if g >= 0 {
                survived[g as usize] = true;
                assert_eq!(
                    owners[g as usize], row as i32,
                    "{method}: patch {g} owns itself"
                );
            }
        }
        for (p, &o) in owners.iter().enumerate() {
            assert!(
                o >= -1 && o < visual as i32,
                "{method}: patch {p} owner {o}"
            );
            if survived[p] {
                continue;
            }
            match method {
                "topk-cls" => assert_eq!(o, -1, "{method}: pruned patch {p}"),
                "ficoco-v" => {
                    assert!(o >= 0, "{method}: merged patch {p} lost");
                    assert!(kept[o as usize] >= 0, "{method}: merged into a kept token");
                }
                _ => {
                    assert!(o >= 0, "{method}: grouped patch {p} lost");
                    assert_eq!(kept[o as usize], -1, "{method}: patch {p} into a new token");
                }
            }
        }
        let mut distinct: Vec<i32> = owners.iter().copied().filter(|&o| o >= 0).collect();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), visual, "{method}: owners {owners:?}");
        if method == "ficoco-v" {
            assert!(
                survived.iter().filter(|&&s| !s).count() == 8,
                "{method}: {kept:?}"
            );
        }
    }
    f.model.set_trace_merges(false).unwrap();
    assert!(pollster::block_on(f.model.patch_owners()).is_err());
}
