//! Reduction budgets and the per-layer token schedules that meet them.
//!
//! Counting conventions: `super::schedule`.
//! - A budget in tokens or as a fraction fixes the count after the family's last reduction (for
//!   vision-side families, the tokens reaching the LLM).
//!
//! Rounding: [`Spread::Even`] removes the same number at every site, the first `removed % sites`
//! sites one more (front-loaded: fewer FLOPs for the same end count). [`Spread::Geometric`]
//! keeps the same fraction at every site, each count rounded to nearest and the last exactly the
//! target. Vision + LLM puts `round(vision_share * removed)` in the tower and the rest in the LLM.

use super::flops::paper_llm_prefill_flops;
use super::schedule::Schedule;
use crate::model::LlavaConfig;
use crate::{Error, Result};
use std::fmt;
use std::str::FromStr;

/// How much reduction to do.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Budget {
    /// Visual tokens left after the last reduction.
    Tokens(usize),
    /// Fraction of the model's visual tokens left, 0 < f <= 1 (rounded to the nearest count, at
    /// least 1).
    Fraction(f64),
    /// LLM-prefill TFLOPs under the paper's formula ([`paper_llm_prefill_flops`]).
    Tflops(f64),
}

impl FromStr for Budget {
    type Err = Error;

    /// "64" (tokens: digits only), "0.11" (fraction: has a decimal point), "1.5T" or "1500G".
    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::InvalidArgument(format!(
                "budget {s:?}: {why}; write a visual-token count (64), a kept fraction \
                 0 < f <= 1 (0.11), or LLM-prefill TFLOPs (1.5T or 1500G)"
            ))
        };
        let text = s.trim();
        let positive = |number: &str| {
            number
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x > 0.0)
                .ok_or_else(|| bad("the FLOPs must be a positive number"))
        };
        if let Some(tera) = text.strip_suffix(['T', 't']) {
            return Ok(Budget::Tflops(positive(tera)?));
        }
        if let Some(giga) = text.strip_suffix(['G', 'g']) {
            return Ok(Budget::Tflops(positive(giga)? / 1000.0));
        }
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            return match text.parse::<usize>() {
                Ok(0) => Err(bad("keep at least 1 visual token")),
                Ok(tokens) => Ok(Budget::Tokens(tokens)),
                Err(_) => Err(bad("too many tokens")),
            };
        }
        match text.parse::<f64>() {
            Ok(f) if f > 0.0 && f <= 1.0 => Ok(Budget::Fraction(f)),
            Ok(_) => Err(bad(
                "a number with a decimal point is a fraction and must lie in (0, 1]",
            )),
            Err(_) => Err(bad("not a number")),
        }
    }
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Budget::Tokens(n) => write!(f, "{n} visual tokens"),
            Budget::Fraction(x) => write!(f, "{x} of the visual tokens"),
            Budget::Tflops(t) => write!(f, "{t} TFLOPs"),
        }
    }
}

/// Which layers of one tower reduce.
#[derive(Clone, Debug, PartialEq)]
pub enum Layers {
    /// Every layer from `start` to `end` inclusive; `end: None` is the last one allowed (vision:
    /// the layer the projector reads; LLM: the last decoder layer).
    Range { start: usize, end: Option<usize> },
    /// The listed layers, in increasing order.
    At(Vec<usize>),
}

/// How the removal is shared among the reducing layers (see the module doc for rounding).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Spread {
    /// The same number removed at each layer (ToMe's fixed r, FiCoCo).
    Even,
    /// The same fraction kept at each layer (PDrop's ratio).
    Geometric,
}

/// The reducing layers of one tower.
#[derive(Clone, Debug, PartialEq)]
pub struct Stages {
    pub layers: Layers,
    pub spread: Spread,
}

impl Stages {
    /// Every layer from `start` to `end` (default: the last allowed), evenly.
    pub fn range(start: usize, end: Option<usize>) -> Self {
        Self {
            layers: Layers::Range { start, end },
            spread: Spread::Even,
        }
    }

    /// The listed layers: one for a one-shot reduction (FastV: `[2]`), several for stages (PDrop:
    /// `[8, 16, 24]`, geometric).
    pub fn at(layers: &[usize], spread: Spread) -> Self {
        Self {
            layers: Layers::At(layers.to_vec()),
            spread,
        }
    }
}

/// Share of the removal done in the vision tower when both towers reduce: half in each.
pub const DEFAULT_VISION_SHARE: f64 = 0.5;

/// Where a method reduces. Methods map onto these: FiCoCo-V and ToMe onto `Vision` from layer
/// 12; PruMerge, VisionZip, pooling, random and top-k [CLS] onto `Projector`; FastV, FiCoCo-L and
/// PDrop onto `Llm`; FiCoCo-VL onto `VisionLlm`.
#[derive(Clone, Debug, PartialEq)]
pub enum Family {
    /// Inside the vision tower.
    Vision(Stages),
    /// Once, on the projector's output (the visual tokens about to enter the prompt).
    Projector,
    /// In the LLM prefill.
    Llm(Stages),
    /// In the tower, then in the LLM; `vision_share` (0..=1) of the removed tokens go in the tower.
    VisionLlm {
        vision: Stages,
        llm: Stages,
        vision_share: f64,
    },
}

impl Family {
    /// Vision then LLM with [`DEFAULT_VISION_SHARE`].
    pub fn vision_llm(vision: Stages, llm: Stages) -> Self {
        Family::VisionLlm {
            vision,
            llm,
            vision_share: DEFAULT_VISION_SHARE,
        }
    }
}

impl Schedule {
    /// `family`'s schedule ending with `keep` visual tokens.
    pub fn build(
        family: &Family,
        config: &LlavaConfig,
        text_tokens: usize,
        keep: usize,
    ) -> Result<Self> {
        let full = Self::full(config, text_tokens);
        let n = full.visual_tokens;
        if keep == 0 || keep > n {
            return Err(Error::InvalidArgument(format!(
                "keeping {keep} visual tokens: this model produces {n}; keep 1..={n}"
            )));
        }
        let removed = n - keep;
        let (vision, at_projector, llm) = match family {
            Family::Vision(stages) => (Some((stages, removed)), 0, None),
            Family::Projector => (None, removed, None),
            Family::Llm(stages) => (None, 0, Some((stages, removed))),
            Family::VisionLlm {
                vision,
                llm,
                vision_share,
            } => {
                if !(0.0..=1.0).contains(vision_share) {
                    return Err(Error::InvalidArgument(format!(
                        "vision_share {vision_share}: the share of the removal done in the vision \
                         tower must lie in 0..=1 (default {DEFAULT_VISION_SHARE})"
                    )));
                }
                let in_vision = (removed as f64 * vision_share).round() as usize;
                (
                    Some((vision, in_vision)),
                    0,
                    Some((llm, removed - in_vision)),
                )
            }
        };
        let vision = match vision {
            Some((stages, removed)) => {
                let sites = vision_sites(&stages.layers, config)?;
                per_layer(n, removed, &sites, stages.spread, full.vision.len())
            }
            None => full.vision,
        };
        let projector = vision.last().copied().unwrap_or(n) - at_projector;
        let llm = match llm {
            Some((stages, removed)) => {
                let sites = llm_sites(&stages.layers, config)?;
                per_layer(projector, removed, &sites, stages.spread, full.llm.len())
            }
            None => vec![projector; full.llm.len()],
        };
        Ok(Self {
            visual_tokens: n,
            vision,
            projector,
            llm,
            text_tokens,
        })
    }
}

/// Counts per layer: `start` until the first site, then the count after each site.
fn per_layer(
    start: usize,
    removed: usize,
    sites: &[usize],
    spread: Spread,
    layers: usize,
) -> Vec<usize> {
    let mut after_sites = sites
        .iter()
        .zip(after_each_site(start, removed, sites.len(), spread));
    let mut next = after_sites.next();
    let mut count = start;
    (0..layers)
        .map(|layer| {
            if let Some((&site, after)) = next {
                if site == layer {
                    count = after;
                    next = after_sites.next();
                }
            }
            count
        })
        .collect()
}

/// The count after each of `sites` reductions taking `start` down to `start - removed`.
pub(crate) fn after_each_site(
    start: usize,
    removed: usize,
    sites: usize,
    spread: Spread,
) -> Vec<usize> {
    let keep = start - removed;
    match spread {
        Spread::Even => {
            let (each, extra) = (removed / sites, removed % sites);
            let mut count = start;
            (0..sites)
                .map(|site| {
                    count -= each + usize::from(site < extra);
                    count
                })
                .collect()
        }
        Spread::Geometric => {
            let ratio = keep as f64 / start as f64;
            (1..=sites)
                .map(|site| {
                    if site == sites {
                        keep
                    } else {
                        (start as f64 * ratio.powf(site as f64 / sites as f64)).round() as usize
                    }
                })
                .collect()
        }
    }
}

fn vision_sites(layers: &Layers, config: &LlavaConfig) -> Result<Vec<usize>> {
    let feature_layer = config.vision_feature_layer;
    let Some(last) = config.vision_layers_to_run().checked_sub(1) else {
        return Err(Error::InvalidArgument(format!(
            "this model runs no vision layers (vision_feature_layer {feature_layer}): reduce at \
             the projector instead"
        )));
    };
    resolve(
        layers,
        0,
        last,
        "vision layer",
        &format!(
            "the projector reads layer {last}'s output (vision_feature_layer {feature_layer}), \
             so later layers do not run"
        ),
    )
}

fn llm_sites(layers: &Layers, config: &LlavaConfig) -> Result<Vec<usize>> {
    let last = config.text_config.num_hidden_layers.saturating_sub(1);
    resolve(
        layers,
        1,
        last,
        "decoder layer",
        "a reduction at layer k takes effect from layer k and is scored on layer k - 1's \
         attention; to reduce before the LLM use the projector site",
    )
}

/// The reducing layers, checked to lie in `first..=last` and to be listed once each, in order.
fn resolve(
    layers: &Layers,
    first: usize,
    last: usize,
    what: &str,
    why: &str,
) -> Result<Vec<usize>> {
    let outside = |layer: usize| {
        Error::InvalidArgument(format!("{what} {layer} is outside {first}..={last}: {why}"))
    };
    let sites: Vec<usize> = match layers {
        Layers::Range { start, end } => {
            let end = end.unwrap_or(last);
            if let Some(&bad) = [*start, end].iter().find(|l| !(first..=last).contains(*l)) {
                return Err(outside(bad));
            }
            (*start..=end).collect()
        }
        Layers::At(listed) => listed.clone(),
    };
    if sites.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{layers:?} names no {what}: give at least one, in {first}..={last}"
        )));
    }
    if let Some(&bad) = sites.iter().find(|l| !(first..=last).contains(*l)) {
        return Err(outside(bad));
    }
    if sites.windows(2).any(|w| w[0] >= w[1]) {
        return Err(Error::InvalidArgument(format!(
            "{what}s {sites:?}: list each layer once, in increasing order"
        )));
    }
    Ok(sites)
}

/// The schedule of `family` meeting `budget` on `config` with `text_tokens` text tokens. A TFLOPs
/// budget gets the largest end count whose paper-formula LLM prefill fits, found by trying every
/// count (a few hundred cheap evaluations); one out of reach is refused with the minimum.
pub fn plan(
    family: &Family,
    budget: Budget,
    config: &LlavaConfig,
    text_tokens: usize,
) -> Result<Schedule> {
    let n = config.visual_tokens();
    match budget {
        Budget::Tokens(keep) => Schedule::build(family, config, text_tokens, keep),
        Budget::Fraction(f) => {
            if !(f > 0.0 && f <= 1.0) {
                return Err(Error::InvalidArgument(format!(
                    "budget fraction {f}: the kept fraction must lie in (0, 1]"
                )));
            }
            let keep = ((f * n as f64).round() as usize).max(1);
            Schedule::build(family, config, text_tokens, keep)
        }
        Budget::Tflops(target) => {
            let mut cheapest = f64::INFINITY;
            for keep in (1..=n).rev() {
                let schedule = Schedule::build(family, config, text_tokens, keep)?;
                let tflops =
                    paper_llm_prefill_flops(&config.text_config, &schedule.llm_layer_tokens())
                        / 1e12;
                if tflops <= target {
                    return Ok(schedule);
                }
                cheapest = cheapest.min(tflops);
            }
            Err(Error::InvalidArgument(format!(
                "budget {budget} is out of reach: this reduction's LLM prefill needs at least \
                 {cheapest:.3} TFLOPs (paper's formula, {text_tokens} text tokens, down to 1 \
                 visual token); raise the budget, or reduce earlier (an earlier LLM layer, or in \
                 the vision tower)"
            )))
        }
    }
}
