//! `--reduce METHOD[:BUDGET]`: a method by name, the layers it reduces at (the papers' layers,
//! scaled to the model's depth) and the budget, planned into a [`ReductionPlan`].

use super::budget::{plan, Budget, Family, Schedule, Spread, Stages};
use super::method::{by_name, METHODS};
use super::sites::ReductionPlan;
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
        if !METHODS.contains(&method) && method != "ficoco-vl" {
            // by_name gives the precise error (unknown, or not yet on the GPU).
            by_name(method)?;
        }
        Ok(ReduceSpec {
            method: method.to_string(),
            budget,
        })
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
    /// Where the method reduces: FiCoCo-V from vision layer 12 of 24 to the layer the projector
    /// reads; FiCoCo-L from LLM layer 4 of 32; FastV at layer 2 of 32; PDrop at 8/16/24 of 32
    /// (geometric); top-k [CLS] attention once, at the last vision layer that runs.
    pub fn family(&self, config: &LlavaConfig) -> Result<Option<Family>> {
        let vision_depth = config.vision_config.num_hidden_layers;
        let vision_last = config.vision_layers_to_run() - 1;
        let llm_depth = config.text_config.num_hidden_layers;
        let vision_start = scaled(12, 24, vision_depth).min(vision_last);
        let llm = |l: usize| scaled(l, 32, llm_depth).min(llm_depth - 1);
        Ok(Some(match self.method.as_str() {
            "none" => return Ok(None),
            "ficoco-v" => Family::Vision(Stages::range(vision_start, None)),
            "topk-cls" => Family::Vision(Stages::at(&[vision_last], Spread::Even)),
            "ficoco-l" => Family::Llm(Stages::range(llm(4), None)),
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
        let (vision, llm) = match self.method.as_str() {
            "ficoco-vl" => (by_name("ficoco-v")?, by_name("ficoco-l")?),
            m => {
                let r = by_name(m)?;
                match family {
                    Family::Vision(_) | Family::Projector => (r, None),
                    _ => (None, r),
                }
            }
        };
        Ok(Planned {
            plan: ReductionPlan::from_schedule(vision, llm, &schedule),
            schedule,
        })
    }
}
