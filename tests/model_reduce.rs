//! Reductions attached to the model: `none` changes nothing, every site reaches its token
//! count, and decoding after a reduced prefill agrees with re-prefilling the same tokens under
//! the same reduction (so positions, per-layer cache lengths and the kept set stay consistent).
mod common;
use common::*;
use ficoco::gpu::DType;
use ficoco::model::{GenerateOptions, Llava, LoadOptions, Sampling};
use ficoco::preprocess::{self, ImageProcessor, PixelValues, PromptIds, Tokenizer};
use ficoco::reduce::{self, ProjectorReduction, ReductionPlan, SiteReduction};
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
        quantize: None,
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

fn projector_site(method: &str, drop: usize) -> Option<ProjectorReduction> {
    Some(ProjectorReduction {
        reduction: reduce::by_name(method).unwrap().unwrap(),
        drop,
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
                projector: None,
                llm: None,
                kv: None,
                renumber_positions: false,
            },
        ),
        (
            "topk-cls in the tower",
            ReductionPlan {
                vision: site("topk-cls", &[(1, 6)]),
                projector: None,
                llm: None,
                kv: None,
                renumber_positions: false,
            },
        ),
        (
            "ficoco-l",
            ReductionPlan {
                vision: None,
                projector: None,
                llm: site("ficoco-l", &[(0, 6), (1, 4)]),
                kv: None,
                renumber_positions: false,
            },
        ),
        (
            "fastv",
            ReductionPlan {
                vision: None,
                projector: None,
                llm: site("fastv", &[(1, 8)]),
                kv: None,
                renumber_positions: false,
            },
        ),
        (
            "pdrop",
            ReductionPlan {
                vision: None,
                projector: None,
                llm: site("pdrop", &[(0, 4), (1, 4)]),
                kv: None,
                renumber_positions: false,
            },
        ),
        (
            "tome",
            ReductionPlan {
                vision: site("tome", &[(0, 4), (1, 3)]),
                projector: None,
                llm: None,
                kv: None,
                renumber_positions: false,
            },
        ),
        (
            "evit",
            ReductionPlan {
                vision: site("evit", &[(1, 6)]),
                projector: None,
                llm: None,
                kv: None,
                renumber_positions: false,
            },
        ),
        (
            "visionzip",
            ReductionPlan {
                vision: site("visionzip", &[(1, 8)]),
                projector: None,
                llm: None,
                kv: None,
                renumber_positions: false,
            },
        ),
        (
            "pool",
            ReductionPlan {
                vision: site("pool", &[(1, 12)]),
                projector: None,
                llm: None,
                kv: None,
                renumber_positions: false,
            },
        ),
        (
            "sparsevlm (new tokens inside the LLM)",
            ReductionPlan {
                vision: None,
                projector: None,
                llm: site("sparsevlm", &[(0, 6)]),
                kv: None,
                renumber_positions: false,
            },
        ),
        (
            "ficoco-l, renumbered positions",
            ReductionPlan {
                vision: None,
                projector: None,
                llm: site("ficoco-l", &[(0, 6), (1, 4)]),
                kv: None,
                renumber_positions: true,
            },
        ),
        (
            "sparsevlm, renumbered positions",
            ReductionPlan {
                vision: None,
                projector: None,
                llm: site("sparsevlm", &[(0, 6)]),
                kv: None,
                renumber_positions: true,
            },
        ),
        (
            "ficoco-v + ficoco-l",
            ReductionPlan {
                vision: site("ficoco-v", &[(0, 4)]),
                projector: None,
                llm: site("ficoco-l", &[(1, 6)]),
                kv: None,
                renumber_positions: false,
            },
        ),
        (
            "prumerge at the projector",
            ReductionPlan {
                projector: projector_site("prumerge", 9),
                ..ReductionPlan::default()
            },
        ),
    ];
    let mut f = fixture();
    let full = f.prompt();
    let (full_tokens, full_logits) = f.generate(&full, 4);
    for (name, plan) in plans {
        let vision_drop = plan.before_llm();
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
                projector: None,
                llm: site("ficoco-l", &[(0, 6)]),
                kv: None,
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
        projector: None,
        llm: None,
        kv: None,
        renumber_positions: false,
    };
    let e = f.model.set_reduction(too_late).unwrap_err().to_string();
    assert!(e.contains("only layers 0..2 run"), "{e}");
    let too_many = ReductionPlan {
        vision: site("ficoco-v", &[(0, 10), (1, 6)]),
        projector: None,
        llm: None,
        kv: None,
        renumber_positions: false,
    };
    let e = f.model.set_reduction(too_many).unwrap_err().to_string();
    assert!(e.contains("keep at least one"), "{e}");
    let no_layer = ReductionPlan {
        vision: None,
        projector: None,
        llm: site("fastv", &[(3, 1)]),
        kv: None,
        renumber_positions: false,
    };
    let e = f.model.set_reduction(no_layer).unwrap_err().to_string();
    assert!(e.contains("3 layers"), "{e}");
    let llm_too_many = ReductionPlan {
        vision: None,
        projector: None,
        llm: site("fastv", &[(0, 17)]),
        kv: None,
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
        "prumerge",
        "visionzip",
        "random",
        "ficoco-v@authors",
        "ficoco-l@authors",
        "ficoco-vl@authors",
    ] {
        let spec: ReduceSpec = format!("{method}:6").parse().unwrap();
        let planned = spec.plan(f.model.config(), text_tokens).unwrap();
        assert_eq!(planned.schedule.kept(), 6, "{method}: {}", planned.schedule);
        // The authors' FiCoCo-L code renumbers positions; every other method keeps them.
        let authors_l = method.starts_with("ficoco-l@") || method.starts_with("ficoco-vl@");
        assert_eq!(planned.plan.renumber_positions, authors_l, "{method}");
        let dropped =
            planned.plan.before_llm() + planned.plan.llm.as_ref().map_or(0, |l| l.total());
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
    assert!(e.contains("4 (2x2), 1 (4x4)"), "{e}");
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
    let in_tower = |method: &str, drops: &[(usize, usize)]| ReductionPlan {
        vision: site(method, drops),
        ..ReductionPlan::default()
    };
    let at_projector = |method: &str, drop: usize| ReductionPlan {
        projector: projector_site(method, drop),
        ..ReductionPlan::default()
    };
    for (method, plan) in [
        ("ficoco-v", in_tower("ficoco-v", &[(0, 4), (1, 4)])),
        ("visionzip", in_tower("visionzip", &[(1, 8)])),
        ("topk-cls", in_tower("topk-cls", &[(1, 6)])),
        ("visionzip", at_projector("visionzip", 8)),
        ("prumerge", at_projector("prumerge", 9)),
    ] {
        f.model.set_reduction(plan).unwrap();
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
                "ficoco-v" | "prumerge" => {
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

/// One layer's cache as a generation left it.
struct LayerState {
    len: usize,
    visual: std::ops::Range<usize>,
    position: u32,
    k: Vec<f32>,
    v: Vec<f32>,
    window: Vec<Vec<f32>>,
}

fn cache_state(model: &Llava) -> Vec<LayerState> {
    let gpu = model.gpu();
    let cache = model.kv_cache();
    cache
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let kvd = l.k.shape()[1];
            let rows = |t: &ficoco::gpu::Tensor| gpu.read_f32(&t.slice(0, &[l.len, kvd])).unwrap();
            LayerState {
                len: l.len,
                visual: l.visual.clone(),
                position: l.position,
                k: rows(&l.k),
                v: rows(&l.v),
                window: pollster::block_on(model.kv_window_attention(i)).unwrap(),
            }
        })
        .collect()
}

/// Compressing the KV cache while decoding: once `every` tokens are decoded, the next step
/// first compresses each layer's visual entries with the method's stages, scored by those
/// tokens' attention. The compressed cache must equal one reduction step (the tensor-level
/// path the numpy reference checks) on the cache and attention captured just before, pruning
/// must keep exactly the rows the generated tokens attended to most, and earlier tokens must
/// not change.
#[test]
fn kv_compression_reduces_the_captured_window() {
    use ficoco::reduce::{KvKeep, KvReduceSpec, Spans};
    let mut f = fixture();
    let gpu = f.model.gpu().clone();
    let every = 4;
    for (method, prefill) in [
        ("fastv", None),
        ("ficoco-l", site("ficoco-l", &[(0, 4)])),
        ("tome", None),
        ("sparsevlm", None),
        ("random", None),
    ] {
        let visual_llm = 16 - prefill.as_ref().map_or(0, |s| s.total());
        let spec = KvReduceSpec {
            method: method.into(),
            keep: KvKeep::Tokens(5),
            every,
        };
        let kv = spec.plan(visual_llm).unwrap();
        f.model
            .set_reduction(ReductionPlan {
                vision: None,
                projector: None,
                llm: prefill,
                kv: Some(kv.clone()),
                renumber_positions: false,
            })
            .unwrap();
        let prompt = f.prompt();
        // `every` decode steps: the window is full, its compression not yet run.
        let (before_tokens, _) = f.generate(&prompt, every + 1);
        let before = cache_state(&f.model);
        let (after_tokens, _) = f.generate(&prompt, every + 2);
        let after = cache_state(&f.model);
        assert_eq!(after_tokens[..every + 1], before_tokens[..], "{method}");
        for (layer, (b, a)) in before.iter().zip(&after).enumerate() {
            let name = format!("{method} layer {layer}");
            assert_eq!(b.window.len(), every, "{name}");
            let drop = kv.drop_for(b.visual.len());
            assert!(drop > 0, "{name}");
            assert_eq!(a.len, b.len - drop + 1, "{name}");
            assert_eq!(a.visual, b.visual.start..b.visual.end - drop, "{name}");
            assert_eq!(a.window.len(), 1, "{name}: a new window starts");
            let l = b.len;
            let mut attn = vec![0f32; l * l];
            for (j, row) in b.window.iter().enumerate() {
                let r = l - every + j;
                assert_eq!(row.len(), r + 1, "{name}");
                let mass: f32 = row.iter().sum();
                assert!((mass - 1.0).abs() < 1e-4, "{name}: row {j} sums to {mass}");
                attn[r * l..r * l + row.len()].copy_from_slice(row);
            }
            let spans = Spans {
                visual: Some(b.visual.clone()),
                text: Some(l - every..l),
                positions: ficoco::reduce::PositionKind::Rope,
                ..Spans::default()
            };
            let kvd = b.k.len() / l;
            let rows: Vec<i32> = (0..l as i32).collect();
            let step = |hidden: &[f32]| {
                pollster::block_on(ficoco::reduce::run_once(
                    &gpu,
                    &kv.reduction,
                    &spans,
                    hidden,
                    kvd,
                    Some(&b.k),
                    &attn,
                    &rows,
                    None,
                    drop,
                ))
                .unwrap()
            };
            let (k_step, v_step) = (step(&b.k), step(&b.v));
            let n_out = (l - drop) * kvd;
            assert!(
                max_abs_diff(&a.k[..n_out], &k_step.hidden) < 1e-5,
                "{name}: keys"
            );
            assert!(
                max_abs_diff(&a.v[..n_out], &v_step.hidden) < 1e-5,
                "{name}: values"
            );
            if method == "fastv" {
                // Independently: keep the visual rows with the most attention from the window.
                let mut order: Vec<usize> = b.visual.clone().collect();
                let received = |c: usize| b.window.iter().map(|r| r[c]).sum::<f32>();
                order.sort_by(|&x, &y| received(y).total_cmp(&received(x)).then(x.cmp(&y)));
                let mut keep: Vec<usize> = order[..b.visual.len() - drop].to_vec();
                keep.sort();
                let kept: Vec<usize> = (0..b.visual.start)
                    .chain(keep)
                    .chain(b.visual.end..l)
                    .collect();
                for (r, &src) in kept.iter().enumerate() {
                    assert_eq!(
                        a.k[r * kvd..(r + 1) * kvd],
                        b.k[src * kvd..(src + 1) * kvd],
                        "{name}: row {r}"
                    );
                }
            }
        }
    }
}

/// Repeated compressions halve each layer's excess over `keep`; renumbered positions keep
/// counting through them; impossible requests are refused with what to do.
#[test]
fn kv_compression_repeats_and_refuses_the_impossible() {
    use ficoco::reduce::KvReduceSpec;
    let mut f = fixture();
    let every = 3;
    let kv = format!("ficoco-l:4@{every}")
        .parse::<KvReduceSpec>()
        .unwrap()
        .plan(16)
        .unwrap();
    f.model
        .set_reduction(ReductionPlan {
            vision: None,
            projector: None,
            llm: site("fastv", &[(0, 2)]),
            kv: Some(kv.clone()),
            renumber_positions: true,
        })
        .unwrap();
    let prompt = f.prompt();
    let new_tokens = 3 * every + 2;
    let (tokens, _) = f.generate(&prompt, new_tokens);
    assert_eq!(tokens.len(), new_tokens);
    let state = cache_state(&f.model);
    for (layer, s) in state.iter().enumerate() {
        let mut visual = if layer == 0 { 16 } else { 14 };
        let mut len = prompt.ids.len() - (16 - visual);
        for _ in 0..3 {
            let drop = kv.drop_for(visual);
            visual -= drop;
            len -= drop;
        }
        assert_eq!(s.visual.len(), visual, "layer {layer}");
        assert_eq!(s.len, len + new_tokens - 1, "layer {layer}");
        // Renumbered: each layer's positions continue from its prefill length, untouched by
        // the compressions.
        let prefill_len = prompt.ids.len() - if layer == 0 { 0 } else { 2 };
        assert_eq!(
            s.position as usize,
            prefill_len + new_tokens - 1,
            "layer {layer}"
        );
    }
    let e = "evit:8".parse::<KvReduceSpec>().unwrap_err().to_string();
    assert!(e.contains("cannot compress the KV cache"), "{e}");
    let e = "ficoco-l:16"
        .parse::<KvReduceSpec>()
        .unwrap()
        .plan(16)
        .unwrap_err();
    assert!(e.to_string().contains("nothing to compress"), "{e}");
    let e = "fastv:4@0".parse::<KvReduceSpec>().unwrap_err().to_string();
    assert!(e.contains("EVERY"), "{e}");
}

/// The projector-site reduction acts on the projector's output: pruning keeps exactly the
/// unreduced projected rows of the kept patches, pooling averages them per window.
#[test]
fn projector_site_reduces_the_projected_tokens() {
    let mut f = fixture();
    let gpu = f.model.gpu().clone();
    let full = f.model.encode_image(&f.pixels).unwrap();
    let d = full.shape()[1];
    let full = gpu.read_f32(&full).unwrap();
    let row = |i: usize| &full[i * d..(i + 1) * d];
    for (method, drop) in [("topk-cls", 7), ("random", 5)] {
        f.model
            .set_reduction(ReductionPlan {
                projector: projector_site(method, drop),
                ..ReductionPlan::default()
            })
            .unwrap();
        assert_eq!(f.model.visual_tokens(), 16 - drop, "{method}");
        let reduced = f.model.encode_image(&f.pixels).unwrap();
        assert_eq!(reduced.shape(), [16 - drop, d], "{method}");
        let reduced = gpu.read_f32(&reduced).unwrap();
        let kept = pollster::block_on(f.model.kept_patches()).unwrap();
        assert_eq!(kept.len(), 16 - drop, "{method}");
        assert!(kept.windows(2).all(|w| w[0] < w[1]), "{method}: {kept:?}");
        for (r, &patch) in kept.iter().enumerate() {
            assert_eq!(
                &reduced[r * d..(r + 1) * d],
                row(patch as usize),
                "{method} row {r}"
            );
        }
    }
    let pool = ficoco::reduce::Reduction::pool(ficoco::reduce::Pool { k: 2 });
    f.model
        .set_reduction(ReductionPlan {
            projector: Some(ProjectorReduction {
                reduction: pool,
                drop: 12,
            }),
            ..ReductionPlan::default()
        })
        .unwrap();
    let pooled = gpu
        .read_f32(&f.model.encode_image(&f.pixels).unwrap())
        .unwrap();
    assert_eq!(pooled.len(), 4 * d);
    for w in 0..4 {
        let (wy, wx) = (w / 2, w % 2);
        let members: Vec<usize> = (0..16)
            .filter(|p| (p / 4) / 2 == wy && (p % 4) / 2 == wx)
            .collect();
        let mean: Vec<f32> = (0..d)
            .map(|c| members.iter().map(|&p| row(p)[c]).sum::<f32>() / 4.0)
            .collect();
        assert!(
            max_abs_diff(&pooled[w * d..(w + 1) * d], &mean) < 1e-5,
            "pool window {w}"
        );
    }
    // The tower's last layer cannot reduce as well.
    let e = f
        .model
        .set_reduction(ReductionPlan {
            vision: site("fastv", &[(1, 2)]),
            projector: projector_site("topk-cls", 2),
            ..ReductionPlan::default()
        })
        .unwrap_err()
        .to_string();
    assert!(e.contains("last layer"), "{e}");
}

/// ToMe over several tower layers against `scripts/make_tome_fixture.py` (the transformers
/// modules run layer by layer with the numpy reference's ToMe step): token sizes carry from
/// step to step and weigh each merge, and once tokens have merged every later attention adds
/// log(size) to its keys.
#[test]
fn tome_carries_sizes_into_proportional_attention() {
    let mut f = fixture();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bytes =
        std::fs::read(root.join("tests/fixtures/models/gqa_untied/tome.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let f32s =
        |name: &str| -> Vec<f32> { bytemuck::pod_collect_to_vec(st.tensor(name).unwrap().data()) };
    let want = f32s("image_features");
    let want_kept: Vec<i64> =
        bytemuck::pod_collect_to_vec(st.tensor("kept_patches").unwrap().data());
    f.model
        .set_reduction(ReductionPlan {
            vision: site("tome", &[(0, 5), (1, 3)]),
            ..ReductionPlan::default()
        })
        .unwrap();
    let got = f.model.encode_image(&f.pixels).unwrap();
    let got = f.model.gpu().read_f32(&got).unwrap();
    let kept = pollster::block_on(f.model.kept_patches()).unwrap();
    assert_eq!(
        kept.iter().map(|&k| k as i64).collect::<Vec<_>>(),
        want_kept
    );
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    let diff = max_abs_diff(&got, &want);
    assert!(
        diff <= 1e-4 * scale.max(1.0),
        "ToMe features differ by {diff}"
    );
}
