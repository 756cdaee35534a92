//! `--reduce METHOD[:BUDGET]`: a method by name, the layers it reduces at (the papers' layers,
//! scaled to the model's depth) and the budget, planned into a [`ReductionPlan`].

use super::budget::{after_each_site, plan, Budget, Family, Spread, Stages};
use super::method::{by_name, Ablation, Pool, AUTHORS_READINGS, METHODS};
use super::schedule::Schedule;
use super::sites::{KvReduction, ReductionPlan};
use super::stages::Reduction;
use crate::model::LlavaConfig;
use crate::{Error, Result};
use std::str::FromStr;

/// A method and a budget, e.g. `ficoco-v:64`, `fastv:0.25`, `ficoco-l:1.5T`.
#[derive(Clone, Debug, PartialEq)]
pub struct ReduceSpec {
    pub method: String,
    /// Without one: keep 64 of 576 visual tokens (the papers' most aggressive setting).
    pub budget: Budget,
}

/// The default budget's fraction: 64 of LLaVA-1.5's 576 visual tokens.
pub const DEFAULT_FRACTION: f64 = 64.0 / 576.0;

impl FromStr for ReduceSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let (method, budget) = match s.split_once(':') {
            Some((m, b)) => (m, b.parse()?),
            None => (s, Budget::Fraction(DEFAULT_FRACTION)),
        };
        let spec = ReduceSpec {
            method: method.to_string(),
            budget,
        };
        let base = spec.base_method();
        if !METHODS.contains(&base) && !AUTHORS_READINGS.contains(&base) && base != "ficoco-vl" {
            // by_name gives the precise error (unknown, or not yet on the GPU).
            by_name(base)?;
        }
        spec.ablations()?;
        Ok(spec)
    }
}

/// A planned reduction: what runs where, and the token counts it produces.
#[derive(Clone, Debug)]
pub struct Planned {
    pub plan: ReductionPlan,
    pub schedule: Schedule,
}

/// `layer` of a `paper_depth`-layer tower, scaled to `depth` layers (at least 1).
fn scaled(layer: usize, paper_depth: usize, depth: usize) -> usize {
    ((layer * depth + paper_depth / 2) / paper_depth).max(1)
}

impl ReduceSpec {
    /// The method without its ablations (`ficoco-v` of `ficoco-v+k=0`).
    pub fn base_method(&self) -> &str {
        self.method.split('+').next().unwrap_or_default()
    }

    /// The ablations written after the method ([`Ablation`]).
    pub fn ablations(&self) -> Result<Vec<Ablation>> {
        self.method.split('+').skip(1).map(str::parse).collect()
    }

    /// Where the method reduces (the papers' layers, scaled to this model's depth):
    /// - in the vision tower: FiCoCo-V from layer 12 of 24 to the layer the projector reads;
    ///   ToMe at every layer; EViT at layers 8, 14 and 20 of 24;
    /// - once, on the projector's output, scored by the attention and keys of the vision layer
    ///   the projector reads: PruMerge, VisionZip, random, top-k [CLS] attention, pooling;
    /// - in the LLM prefill: FiCoCo-L from layer 4 of 32; FastV at layer 2; PDrop at 8/16/24
    ///   (geometric); SparseVLM at 2/6/15 (geometric);
    /// - FiCoCo-VL: FiCoCo-V's layers, then FiCoCo-L's;
    /// - the authors' readings (`@authors`) at the layers of their code: FiCoCo-V the same,
    ///   FiCoCo-L after the attention of every layer past 4 (so from layer 6 of 32).
    pub fn family(&self, config: &LlavaConfig) -> Result<Option<Family>> {
        let vision_depth = config.vision_config.num_hidden_layers;
        let vision_last = config.vision_layers_to_run() - 1;
        let llm_depth = config.text_config.num_hidden_layers;
        let vision_start = scaled(12, 24, vision_depth).min(vision_last);
        let llm = |l: usize| scaled(l, 32, llm_depth).min(llm_depth - 1);
        Ok(Some(match self.base_method() {
            "none" => return Ok(None),
            "ficoco-v" | "ficoco-v@authors" => Family::Vision(Stages::range(vision_start, None)),
            "tome" => Family::Vision(Stages::range(0, None)),
            "evit" => {
                let mut at: Vec<usize> = [8, 14, 20]
                    .iter()
                    .map(|&l| scaled(l, 24, vision_depth).min(vision_last))
                    .collect();
                at.dedup();
                Family::Vision(Stages::at(&at, Spread::Geometric))
            }
            "prumerge" | "visionzip" | "random" | "topk-cls" | "pool" => Family::Projector,
            "sparsevlm" => {
                let mut stages = vec![llm(2), llm(6), llm(15)];
                stages.dedup();
                Family::Llm(Stages::at(&stages, Spread::Geometric))
            }
            "ficoco-l" => Family::Llm(Stages::range(llm(4), None)),
            "ficoco-l@authors" => Family::Llm(Stages::range(llm(6), None)),
            "fastv" => Family::Llm(Stages::at(&[llm(2)], Spread::Even)),
            "pdrop" => {
                let mut stages = vec![llm(8), llm(16), llm(24)];
                stages.dedup();
                Family::Llm(Stages::at(&stages, Spread::Geometric))
            }
            "ficoco-vl" => Family::vision_llm(
                Stages::range(vision_start, None),
                Stages::range(llm(4), None),
            ),
            "ficoco-vl@authors" => Family::vision_llm(
                Stages::range(vision_start, None),
                Stages::range(llm(6), None),
            ),
            other => {
                by_name(other)?;
                return Err(Error::Unsupported(format!(
                    "method {other} has no model site yet; use it through the tensor-level runner"
                )));
            }
        }))
    }

    /// Plan the reduction for `config` with `text_tokens` prompt tokens besides the image.
    pub fn plan(&self, config: &LlavaConfig, text_tokens: usize) -> Result<Planned> {
        let Some(family) = self.family(config)? else {
            return Ok(Planned {
                plan: ReductionPlan::default(),
                schedule: Schedule::full(config, text_tokens),
            });
        };
        let schedule = plan(&family, self.budget, config, text_tokens)?;
        let (vision, projector, llm) = match self.base_method() {
            "ficoco-vl" => (by_name("ficoco-v")?, None, by_name("ficoco-l")?),
            "ficoco-vl@authors" => (
                by_name("ficoco-v@authors")?,
                None,
                by_name("ficoco-l@authors")?,
            ),
            "pool" => (None, Some(pool_for(config, schedule.projector())?), None),
            m => {
                let r = by_name(m)?;
                match family {
                    Family::Vision(_) => (r, None, None),
                    Family::Projector => (None, r, None),
                    _ => (None, None, r),
                }
            }
        };
        let mut sites = [vision, projector, llm];
        for a in self.ablations()? {
            // A composition (FiCoCo-VL) takes an ablation at the sites that have its part.
            if !sites.iter().flatten().any(|r| a.applies_to(r)) {
                return Err(Error::InvalidArgument(format!(
                    "{}: this ablation needs {}; {} has none",
                    self.method,
                    a.needs(),
                    self.base_method()
                )));
            }
            for site in sites.iter_mut() {
                if let Some(r) = site.take() {
                    *site = Some(if a.applies_to(&r) { a.apply(r) } else { r });
                }
            }
        }
        let [vision, projector, llm] = sites;
        let mut plan = ReductionPlan::from_schedule(vision, projector, llm, &schedule);
        // The authors' FiCoCo-L code renumbers the positions after each reduction.
        plan.renumber_positions = self.base_method().ends_with("@authors") && plan.llm.is_some();
        if self.base_method() == "tome" {
            check_bipartite(&plan, config.visual_tokens())?;
        }
        Ok(Planned { plan, schedule })
    }
}

/// ToMe's bipartite split merges at most half the tokens (set A) per layer: refuse a schedule
/// that needs more, naming the smallest count that its fixed r per layer (the even spread the
/// planner gives it) can reach.
fn check_bipartite(plan: &ReductionPlan, visual: usize) -> Result<()> {
    let Some(site) = &plan.vision else {
        return Ok(());
    };
    // Counts after each layer; a layer merges at most half of what reaches it when it keeps at
    // least the floor of half.
    let halves = |after: &[usize]| {
        std::iter::once(&visual)
            .chain(after)
            .zip(after)
            .all(|(&before, &kept)| kept >= before / 2)
    };
    let planned: Vec<usize> = (site.drops.iter())
        .scan(visual, |t, &(_, drop)| {
            *t -= drop.min(*t);
            Some(*t)
        })
        .collect();
    if halves(&planned) {
        return Ok(());
    }
    let layers = site.drops.len();
    let smallest = (0..visual)
        .rev()
        .find(|&removed| halves(&after_each_site(visual, removed, layers, Spread::Even)))
        .map_or(visual, |removed| visual - removed);
    Err(Error::InvalidArgument(format!(
        "ToMe merges at most half the tokens per layer: with the same number merged at each of \
         its {layers} layers the smallest budget is {smallest} visual tokens"
    )))
}

/// Spatial pooling keeps a fixed count: the window side (any divisor of the grid side) follows
/// from the budget.
fn pool_for(config: &LlavaConfig, keep: usize) -> Result<Reduction> {
    let grid = config.vision_config.image_size / config.vision_config.patch_size;
    let sides: Vec<usize> = (2..=grid).filter(|k| grid % k == 0).collect();
    sides
        .iter()
        .find(|&&k| (grid / k) * (grid / k) == keep)
        .map(|&k| Reduction::pool(Pool { k }))
        .ok_or_else(|| {
            let options: Vec<String> = sides
                .iter()
                .map(|k| format!("{} ({k}x{k})", (grid / k) * (grid / k)))
                .collect();
            Error::InvalidArgument(format!(
                "pool keeps one of {} visual tokens on this {grid}x{grid} grid, not {keep}",
                options.join(", ")
            ))
        })
}

/// Methods that can compress the KV cache while decoding: their stages need neither [CLS] nor
/// the patch grid, only the attention of the decoded tokens (the step's text rows) and the
/// cached keys.
pub const KV_METHODS: &[&str] = &["ficoco-l", "fastv", "pdrop", "sparsevlm", "tome", "random"];

/// `--reduce-kv METHOD[:KEEP][@EVERY]`: compress the cache's visual entries every `EVERY`
/// decoded tokens (default 16), halving each layer's excess over `KEEP` visual entries (a
/// count, or a fraction of the visual tokens reaching the LLM; default 0.5).
#[derive(Clone, Debug, PartialEq)]
pub struct KvReduceSpec {
    pub method: String,
    pub keep: KvKeep,
    pub every: usize,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KvKeep {
    Tokens(usize),
    Fraction(f64),
}

impl FromStr for KvReduceSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |what: &str| {
            Error::InvalidArgument(format!(
                "--reduce-kv {s:?}: {what}; expected METHOD[:KEEP][@EVERY], e.g. ficoco-l:64@16"
            ))
        };
        let (rest, every) = match s.split_once('@') {
            Some((r, e)) => (
                r,
                e.parse::<usize>()
                    .ok()
                    .filter(|&e| e > 0)
                    .ok_or_else(|| bad("EVERY must be a positive token count"))?,
            ),
            None => (s, 16),
        };
        let (method, keep) = match rest.split_once(':') {
            Some((m, k)) if k.contains('.') => (
                m,
                KvKeep::Fraction(
                    k.parse::<f64>()
                        .ok()
                        .filter(|f| *f > 0.0 && *f < 1.0)
                        .ok_or_else(|| bad("a KEEP fraction must lie in (0, 1)"))?,
                ),
            ),
            Some((m, k)) => (
                m,
                KvKeep::Tokens(
                    k.parse()
                        .map_err(|_| bad("KEEP must be a token count or a fraction"))?,
                ),
            ),
            None => (rest, KvKeep::Fraction(0.5)),
        };
        if !KV_METHODS.contains(&method) {
            by_name(method)?;
            return Err(bad(&format!(
                "{method} cannot compress the KV cache (it needs [CLS] or the patch grid); \
                 methods: {}",
                KV_METHODS.join(", ")
            )));
        }
        Ok(KvReduceSpec {
            method: method.to_string(),
            keep,
            every,
        })
    }
}

impl KvReduceSpec {
    /// The compression for a generation whose LLM receives `visual` visual tokens.
    pub fn plan(&self, visual: usize) -> Result<KvReduction> {
        let keep = match self.keep {
            KvKeep::Tokens(k) => k,
            KvKeep::Fraction(f) => (visual as f64 * f).round() as usize,
        };
        if keep >= visual {
            return Err(Error::InvalidArgument(format!(
                "--reduce-kv keeps {keep} visual entries but only {visual} reach the LLM: \
                 nothing to compress (keep fewer)"
            )));
        }
        let reduction = by_name(&self.method)?.expect("KV methods reduce");
        Ok(KvReduction {
            reduction,
            keep,
            every: self.every,
        })
    }
}
