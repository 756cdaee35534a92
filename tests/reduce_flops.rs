//! FLOPs accounting and budget planning for visual-token reduction: the paper's numbers on
//! LLaVA-1.5-7B, exact counts on a config small enough to count by hand, budget parsing, and
//! the planner for every budget kind, including the budgets it must refuse.
use ficoco::model::LlavaConfig;
use ficoco::reduce::budget::{plan, Budget, Family, Spread, Stages};
use ficoco::reduce::flops::{ficoco_l_overhead, ficoco_v_overhead, paper_llm_prefill_flops, Flops};
use ficoco::reduce::schedule::Schedule;
use ficoco::Error;
use std::path::Path;

mod common;
use common::LLAVA_15_7B;

/// 4 patches of 2x2x3 in a 3-layer tower of width 4 (2 layers run: the projector reads -2), and a
/// 2-layer decoder of width 4 with 2 query heads sharing 1 KV head (GQA), FFN 6, vocabulary 10.
const TINY: &str = r#"{
  "model_type": "llava", "image_token_index": 9,
  "vision_config": {"hidden_size": 4, "intermediate_size": 8, "num_hidden_layers": 3,
    "num_attention_heads": 2, "image_size": 4, "patch_size": 2},
  "text_config": {"model_type": "llama", "hidden_size": 4, "intermediate_size": 6,
    "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 10}
}"#;

/// The paper's setting: LLaVA-1.5-7B with 60 text tokens.
const TEXT: usize = 60;

fn llava_7b() -> LlavaConfig {
    LlavaConfig::from_json_str(LLAVA_15_7B, Path::new("llava-1.5-7b/config.json")).unwrap()
}

fn tiny() -> LlavaConfig {
    LlavaConfig::from_json_str(TINY, Path::new("tiny/config.json")).unwrap()
}

fn paper_tflops(config: &LlavaConfig, schedule: &Schedule) -> f64 {
    paper_llm_prefill_flops(&config.text_config, &schedule.llm_layer_tokens()) / 1e12
}

fn invalid_argument(result: Result<impl std::fmt::Debug, Error>) -> String {
    match result {
        Err(Error::InvalidArgument(message)) => message,
        other => panic!("expected an invalid-argument error, got {other:?}"),
    }
}

#[test]
fn paper_formula_reproduces_the_papers_tflops() {
    let c = llava_7b();
    // (visual tokens, what the paper reports, what its formula gives at 2 FLOPs per multiply-add)
    for (visual, reported, formula) in [
        (576, 8.5, 8.450),
        (192, 3.3, 3.297),
        (128, 2.4, 2.454),
        (64, 1.6, 1.614),
    ] {
        let got = paper_llm_prefill_flops(&c.text_config, &[visual + TEXT; 32]) / 1e12;
        assert!((got - formula).abs() < 0.001, "{visual}: {got}");
        // The paper rounds (and truncates 2.45 to 2.4).
        assert!(
            (got - reported).abs() < 0.06,
            "{visual}: {got} vs {reported}"
        );
    }
    let full = Schedule::full(&c, TEXT);
    assert!((paper_tflops(&c, &full) - 8.450).abs() < 0.001);
}

#[test]
fn paper_formula_by_hand() {
    let t = tiny().text_config;
    // D 4, H 6: P = 1 gives 2 (4*16 + 2*4 + 3*24) = 288, P = 2 gives 2 (128 + 32 + 144) = 608.
    assert_eq!(paper_llm_prefill_flops(&t, &[1]), 288.0);
    assert_eq!(paper_llm_prefill_flops(&t, &[1, 2]), 896.0);
}

#[test]
fn exact_count_by_hand_without_reduction() {
    let c = tiny();
    let s = Schedule::full(&c, 3);
    let f = Flops::of(&c, &s).unwrap();
    // Patch embedding [4, 12] x [12, 4]: 384. Each layer on 4 patches + [CLS] = 5 tokens:
    // q, k, v, o 4 * 2*5*4*4 = 640; QK^T and PV 2 * 2*5*4*5 = 400; MLP 2 * 2*5*4*8 = 640.
    assert_eq!(f.vision, 384.0 + 2.0 * (640.0 + 400.0 + 640.0));
    // [CLS] dropped: 4 tokens, 2*4*4*4 twice.
    assert_eq!(f.projector, 256.0);
    // P = 4 + 3 = 7 per layer: q 224, k and v at one KV head 112 each, o 224; causal attention
    // QK^T and PV over 7*8/2 pairs: 2 * 2 * 4 * 28 = 448; MLP 3 * 2*7*4*6 = 1008; LM head 80.
    assert_eq!(
        f.llm_prefill,
        2.0 * (224.0 + 224.0 + 224.0 + 448.0 + 1008.0) + 80.0
    );
    assert_eq!(f.overhead, 0.0);
    assert_eq!(f.total(), 3744.0 + 256.0 + 4336.0);
}

#[test]
fn exact_count_by_hand_with_reductions() {
    let c = tiny();
    // Vision layer 1 keeps 2 of 4: its attention runs on 5 tokens, its MLP on 3.
    let s = Schedule::build(&vision_at(1), &c, 3, 2).unwrap();
    assert_eq!(
        (s.vision(), s.projector(), s.llm()),
        (&[4, 2][..], 2, &[2, 2][..])
    );
    let f = Flops::of(&c, &s).unwrap();
    assert_eq!(
        f.vision,
        384.0 + 1680.0 + (640.0 + 400.0 + 2.0 * 2.0 * 3.0 * 4.0 * 8.0)
    );
    assert_eq!(f.projector, 128.0);
    // P = 5: 160 * 3 (q, k + v, o) + 2*4*5*6 + 3 * 2*5*4*6, twice, plus the head.
    assert_eq!(f.llm_prefill, 2.0 * (480.0 + 240.0 + 720.0) + 80.0);
    // N 4, N_S 2, N_T 2, D 4: 16 + 8 + 2 (2 + 8 + 1) + 4.
    assert_eq!(f.overhead, 50.0);
    assert_eq!(ficoco_v_overhead(4, 2, 4), 50.0);

    // Decoder layer 1 runs on 1 visual token: P = 4 there.
    let s = Schedule::build(&Family::Llm(Stages::at(&[1], Spread::Even)), &c, 3, 1).unwrap();
    assert_eq!(s.llm(), &[4, 1]);
    let f = Flops::of(&c, &s).unwrap();
    assert_eq!(f.llm_prefill, 2128.0 + (3.0 * 128.0 + 160.0 + 576.0) + 80.0);
    // FiCoCo-L doubles N^2 + 2N: 58 + 24.
    assert_eq!(f.overhead, 82.0);
    assert_eq!(ficoco_l_overhead(4, 3, 4), 82.0);
}

fn vision_at(layer: usize) -> Family {
    Family::Vision(Stages::at(&[layer], Spread::Even))
}

#[test]
fn exact_count_keeps_cls_with_the_full_strategy() {
    let json = TINY.replace(
        r#""model_type": "llava","#,
        r#""model_type": "llava", "vision_feature_select_strategy": "full","#,
    );
    let c = LlavaConfig::from_json_str(&json, Path::new("tiny/config.json")).unwrap();
    let f = Flops::of(&c, &Schedule::full(&c, 3)).unwrap();
    // The tower runs the same 5 tokens; all 5 reach the projector.
    assert_eq!(f.vision, 3744.0);
    assert_eq!(f.projector, 2.0 * 2.0 * 5.0 * 4.0 * 4.0);
}

#[test]
fn exact_llm_count_differs_from_the_paper_by_the_causal_half_and_the_head() {
    let c = llava_7b();
    let f = Flops::of(&c, &Schedule::full(&c, TEXT)).unwrap();
    let (p, d) = (636.0, 4096.0);
    // The paper charges 4 P^2 D for attention per layer, the causal kernel 2 P (P + 1) D; the
    // paper leaves out the LM head (2 D V).
    let paper = paper_llm_prefill_flops(&c.text_config, &[636; 32]);
    let expected = paper - 32.0 * 2.0 * p * d * (p - 1.0) + 2.0 * d * 32064.0;
    assert!(
        (f.llm_prefill - expected).abs() < 1.0,
        "{} vs {expected}",
        f.llm_prefill
    );
    // CLIP-L/14-336, 23 layers on 577 tokens plus the patch embedding; mlp2x projector.
    assert!((f.vision / 1e12 - 0.366).abs() < 0.001, "{}", f.vision);
    assert!(
        (f.projector / 1e12 - 0.0242).abs() < 0.0001,
        "{}",
        f.projector
    );
}

#[test]
fn flops_display_scales_units() {
    let f = Flops {
        vision: 1e12,
        projector: 0.5e12,
        llm_prefill: 2e12,
        overhead: 1e6,
    };
    assert_eq!(
        f.to_string(),
        "3.500 TFLOPs = vision 1.000 + projector 0.500 + LLM prefill 2.000 + overhead 1.000 MFLOPs"
    );
    let small = Flops {
        vision: 2e6,
        projector: 0.0,
        llm_prefill: 5e6,
        overhead: 300.0,
    };
    assert_eq!(
        small.to_string(),
        "7.000 MFLOPs = vision 2.000 + projector 0.000 + LLM prefill 5.000 + overhead 300.000 FLOPs"
    );
    let overhead = Flops {
        overhead: 999_484.0,
        ..small
    };
    assert!(
        overhead.to_string().ends_with("overhead 999.484 kFLOPs"),
        "{overhead}"
    );
}

#[test]
fn flops_refuse_a_schedule_of_another_model() {
    let message = invalid_argument(Flops::of(&tiny(), &Schedule::full(&llava_7b(), TEXT)));
    assert!(message.contains("plan it for this config"), "{message}");
}

#[test]
fn budget_parses_counts_fractions_and_flops() {
    for (text, budget) in [
        ("64", Budget::Tokens(64)),
        (" 64 ", Budget::Tokens(64)),
        ("1", Budget::Tokens(1)),
        ("0.11", Budget::Fraction(0.11)),
        ("1.0", Budget::Fraction(1.0)),
        ("1.5T", Budget::Tflops(1.5)),
        ("2t", Budget::Tflops(2.0)),
        ("1500G", Budget::Tflops(1.5)),
    ] {
        assert_eq!(text.parse::<Budget>().unwrap(), budget, "{text:?}");
    }
}

#[test]
fn budget_rejects_bad_strings() {
    for (text, why) in [
        ("", "not a number"),
        ("abc", "not a number"),
        ("64x", "not a number"),
        ("0", "at least 1"),
        ("99999999999999999999999", "too many"),
        ("1.5", "(0, 1]"),
        ("0.0", "(0, 1]"),
        ("-0.5", "(0, 1]"),
        ("0T", "positive"),
        ("-1T", "positive"),
        ("T", "positive"),
        ("infG", "positive"),
    ] {
        let message = invalid_argument(text.parse::<Budget>());
        assert!(message.contains(why), "{text:?}: {message}");
        assert!(message.contains("1.5T or 1500G"), "{text:?}: {message}");
    }
}

#[test]
fn vision_spread_front_loads_the_remainder() {
    let c = llava_7b();
    let family = Family::Vision(Stages::range(12, None));
    let s = plan(&family, Budget::Tokens(64), &c, TEXT).unwrap();
    // 512 removed over layers 12..=22: 46 each, the first 6 one more.
    let tail = [529, 482, 435, 388, 341, 294, 248, 202, 156, 110, 64];
    assert_eq!(s.vision().len(), 23);
    assert_eq!(&s.vision()[..12], &[576; 12]);
    assert_eq!(&s.vision()[12..], &tail);
    assert_eq!((s.projector(), s.llm(), s.kept()), (64, &[64; 32][..], 64));
    assert_eq!(
        s.to_string(),
        "vision L12-L22: 576->529->482->...->110->64; llm: 64 x 32 layers + 60 text"
    );
    assert!((paper_tflops(&c, &s) - 1.614).abs() < 0.001);
}

#[test]
fn fraction_budget_rounds_to_the_nearest_count() {
    let c = llava_7b();
    let at = |f| plan(&Family::Projector, Budget::Fraction(f), &c, TEXT).unwrap();
    assert_eq!(at(0.11).kept(), 63);
    assert_eq!(at(0.5).kept(), 288);
    assert_eq!(at(1.0).to_string(), "llm: 576 x 32 layers + 60 text");
    assert_eq!(at(0.0001).kept(), 1);
    let s = at(0.11);
    assert_eq!((s.vision(), s.projector()), (&[576; 23][..], 63));
    assert_eq!(
        s.to_string(),
        "projector: 576->63; llm: 63 x 32 layers + 60 text"
    );
    let message = invalid_argument(plan(&Family::Projector, Budget::Fraction(1.5), &c, TEXT));
    assert!(message.contains("(0, 1]"), "{message}");
}

#[test]
fn tflops_budget_takes_the_largest_count_that_fits() {
    let c = llava_7b();
    for (tflops, keep) in [(3.3, 192), (2.4, 123), (1.5, 55)] {
        let s = plan(&Family::Projector, Budget::Tflops(tflops), &c, TEXT).unwrap();
        assert_eq!(s.kept(), keep, "{tflops}T");
        assert!(paper_tflops(&c, &s) <= tflops);
        let one_more = Schedule::build(&Family::Projector, &c, TEXT, keep + 1).unwrap();
        assert!(paper_tflops(&c, &one_more) > tflops);
    }
    let everything = plan(&Family::Projector, Budget::Tflops(9.0), &c, TEXT).unwrap();
    assert_eq!(everything.kept(), 576);
}

#[test]
fn fastv_keeps_two_full_layers() {
    let c = llava_7b();
    let family = Family::Llm(Stages::at(&[2], Spread::Even));
    let s = plan(&family, Budget::Tflops(1.5), &c, TEXT).unwrap();
    assert_eq!(s.kept(), 19);
    assert_eq!(&s.llm()[..3], &[576, 576, 19]);
    assert_eq!((s.vision(), s.projector()), (&[576; 23][..], 576));
    assert_eq!(s.to_string(), "llm L2: 576->19 + 60 text");
}

#[test]
fn pdrop_stages_keep_a_constant_ratio() {
    let c = llava_7b();
    let family = Family::Llm(Stages::at(&[8, 16, 24], Spread::Geometric));
    // Ratio 0.5 at each of 3 stages keeps 0.125.
    let s = plan(&family, Budget::Fraction(0.125), &c, TEXT).unwrap();
    let expected: Vec<usize> = [576, 288, 144, 72].iter().flat_map(|&n| [n; 8]).collect();
    assert_eq!(s.llm(), &expected[..]);
    assert_eq!(s.to_string(), "llm L8,L16,L24: 576->288->144->72 + 60 text");
}

#[test]
fn vision_llm_splits_the_removal_in_half_by_default() {
    let c = llava_7b();
    let family = Family::vision_llm(Stages::range(12, None), Stages::at(&[2], Spread::Even));
    let s = plan(&family, Budget::Tokens(64), &c, TEXT).unwrap();
    // 512 removed: 256 in layers 12..=22 (23 each, the first 3 one more), 256 at decoder layer 2.
    assert_eq!(&s.vision()[11..15], &[576, 552, 528, 504]);
    assert_eq!(s.projector(), 320);
    assert_eq!(&s.llm()[..3], &[320, 320, 64]);
    assert_eq!(
        s.to_string(),
        "vision L12-L22: 576->552->528->...->343->320; llm L2: 320->64 + 60 text"
    );
    let lopsided = Family::VisionLlm {
        vision: Stages::range(12, None),
        llm: Stages::at(&[2], Spread::Even),
        vision_share: 1.5,
    };
    let message = invalid_argument(plan(&lopsided, Budget::Tokens(64), &c, TEXT));
    assert!(message.contains("0..=1"), "{message}");
}

#[test]
fn infeasible_budget_names_the_minimum() {
    let c = llava_7b();
    // FiCoCo-L keeping all 576 tokens for 4 layers: even 1 token after that needs 1.749T.
    let one_shot = Family::Llm(Stages::at(&[4], Spread::Even));
    let message = invalid_argument(plan(&one_shot, Budget::Tflops(1.5), &c, TEXT));
    let mut floor = vec![576 + TEXT; 4];
    floor.extend([1 + TEXT; 28]);
    let minimum = paper_llm_prefill_flops(&c.text_config, &floor) / 1e12;
    assert!(
        message.contains(&format!("{minimum:.3} TFLOPs")),
        "{message}"
    );
    assert!(
        message.contains("1.749") && message.contains("1.5 TFLOPs"),
        "{message}"
    );
    // Spread evenly over layers 4..=31 the floor is far higher.
    let spread = Family::Llm(Stages::range(4, None));
    let message = invalid_argument(plan(&spread, Budget::Tflops(1.5), &c, TEXT));
    assert!(message.contains("4.914 TFLOPs"), "{message}");
    // Reachable once the budget covers the minimum.
    assert_eq!(
        plan(&one_shot, Budget::Tflops(1.75), &c, TEXT)
            .unwrap()
            .kept(),
        1
    );
}

#[test]
fn planner_refuses_impossible_shapes() {
    let c = llava_7b();
    let refuse = |family: Family, budget: Budget| invalid_argument(plan(&family, budget, &c, TEXT));
    let m = refuse(Family::Projector, Budget::Tokens(600));
    assert!(m.contains("produces 576"), "{m}");
    let m = refuse(vision_at(23), Budget::Tokens(64));
    assert!(
        m.contains("outside 0..=22") && m.contains("vision_feature_layer -2"),
        "{m}"
    );
    let m = refuse(Family::Vision(Stages::range(23, None)), Budget::Tokens(64));
    assert!(m.contains("vision layer 23 is outside"), "{m}");
    let m = refuse(
        Family::Llm(Stages::at(&[0], Spread::Even)),
        Budget::Tokens(64),
    );
    assert!(
        m.contains("outside 1..=31") && m.contains("projector"),
        "{m}"
    );
    let m = refuse(
        Family::Llm(Stages::at(&[16, 8], Spread::Even)),
        Budget::Tokens(64),
    );
    assert!(m.contains("increasing order"), "{m}");
    let m = refuse(
        Family::Llm(Stages::at(&[], Spread::Even)),
        Budget::Tokens(64),
    );
    assert!(m.contains("at least one"), "{m}");
}

/// ToMe merges a fixed r at each tower layer and at most half of what reaches a layer. On a
/// 336 px / patch-14 tower of 5 layers (4 run: the projector reads -2), removing 462 of the 576
/// patches as 116, 116, 115, 115 leaves 460, 344, 229, 114, the last layer merging 115 of 229
/// (at most 115); removing 463 as 116, 116, 116, 115 needs 115 of 228 (at most 114). So 114 is
/// the smallest budget, and a refused budget names it.
#[test]
fn tome_budget_floor_follows_its_fixed_r() {
    use ficoco::reduce::ReduceSpec;
    let config = LlavaConfig::from_json_str(
        r#"{
  "model_type": "llava", "image_token_index": 9,
  "vision_config": {"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 5,
    "num_attention_heads": 2, "image_size": 336, "patch_size": 14},
  "text_config": {"model_type": "llama", "hidden_size": 4, "intermediate_size": 6,
    "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 10}
}"#,
        Path::new("tower5/config.json"),
    )
    .unwrap();
    let tome = |keep: usize| format!("tome:{keep}").parse::<ReduceSpec>().unwrap();
    let planned = tome(114).plan(&config, TEXT).unwrap();
    assert_eq!(planned.schedule.kept(), 114, "{}", planned.schedule);
    for keep in [113, 64] {
        let message = invalid_argument(tome(keep).plan(&config, TEXT).map(|p| p.schedule));
        assert!(
            message.contains("4 layers the smallest budget is 114 visual tokens"),
            "{message}"
        );
    }
}

#[test]
fn ablations_change_only_the_part_they_name() {
    use ficoco::ops::reduce::TargetRule;
    use ficoco::reduce::{Correlate, Filter, ReduceSpec};
    let config = llava_7b();
    let plan = |s: &str| s.parse::<ReduceSpec>().unwrap().plan(&config, TEXT);
    let targets = |r: &ficoco::reduce::Reduction| match r.correlate {
        Correlate::Attention { targets, .. } => targets,
        _ => panic!("not an attention correlation"),
    };
    let penalty = |r: &ficoco::reduce::Reduction| match &r.filter {
        Filter::Redundancy { local_penalty, .. } => local_penalty.is_some(),
        _ => panic!("not a redundancy filter"),
    };
    let base = plan("ficoco-v:64").unwrap();
    let pruned = plan("ficoco-v+k=0:64").unwrap();
    let v = |p: &ficoco::reduce::Planned| p.plan.vision.clone().unwrap().reduction;
    assert!(matches!(targets(&v(&base)), TargetRule::Quantile(_)));
    assert_eq!(targets(&v(&pruned)), TargetRule::TopK(0));
    assert!(penalty(&v(&pruned)));
    assert_eq!(pruned.schedule.to_string(), base.schedule.to_string());
    let both = plan("ficoco-v+k=1+no-penalty:64").unwrap();
    assert_eq!(targets(&v(&both)), TargetRule::TopK(1));
    assert!(!penalty(&v(&both)));
    // A composition takes it where its part exists: FiCoCo-L has no local penalty.
    let vl = plan("ficoco-vl+no-penalty:64").unwrap();
    assert!(!penalty(&v(&vl)));
    assert!(vl.plan.llm.is_some());
    let message = invalid_argument(plan("tome+k=0:64").map(|p| p.schedule));
    assert!(
        message.contains("needs an attention correlation"),
        "{message}"
    );
    let message = invalid_argument("ficoco-v+k=x".parse::<ReduceSpec>());
    assert!(message.contains("unknown ablation \"k=x\""), "{message}");
}
