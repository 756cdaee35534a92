//! Where reductions attach to the model: after the attention of chosen vision-tower layers
//! and of chosen decoder layers during prefill. Tokens keep their grid position (vision) or
//! RoPE position (LLM) through every step, so later layers, the KV cache and decoding agree.

use super::budget::Schedule;
use super::stages::Reduction;

/// One reduction applied after the attention of some layers of one site.
#[derive(Clone, Debug, PartialEq)]
pub struct SiteReduction {
    pub reduction: Reduction,
    /// `(layer, tokens dropped after that layer's attention)`, layers ascending.
    pub drops: Vec<(usize, usize)>,
}

impl SiteReduction {
    /// Tokens dropped after layer `layer`'s attention.
    pub fn drop_after(&self, layer: usize) -> usize {
        self.drops
            .iter()
            .filter(|(l, _)| *l == layer)
            .map(|(_, d)| d)
            .sum()
    }

    pub fn total(&self) -> usize {
        self.drops.iter().map(|(_, d)| d).sum()
    }
}

/// The reductions of one forward pass.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReductionPlan {
    pub vision: Option<SiteReduction>,
    pub llm: Option<SiteReduction>,
    /// After an LLM reduction, renumber RoPE positions contiguously in each later layer (and
    /// decode at each layer's own length) instead of keeping the original positions.
    pub renumber_positions: bool,
}

impl ReductionPlan {
    /// Attach `vision` and `llm` reductions where `schedule` changes the token count: a vision
    /// layer that hands on fewer tokens reduces after its attention; a decoder layer that runs
    /// on fewer tokens than the one before is reduced after the previous layer's attention.
    pub fn from_schedule(
        vision: Option<Reduction>,
        llm: Option<Reduction>,
        schedule: &Schedule,
    ) -> Self {
        let mut prev = schedule.visual_tokens();
        let mut vision_drops = Vec::new();
        for (layer, &n) in schedule.vision().iter().enumerate() {
            if n < prev {
                vision_drops.push((layer, prev - n));
            }
            prev = n;
        }
        let mut llm_drops = Vec::new();
        let mut prev = schedule.projector();
        for (layer, &n) in schedule.llm().iter().enumerate() {
            if n < prev {
                llm_drops.push((layer.saturating_sub(1), prev - n));
            }
            prev = n;
        }
        let site = |r: Option<Reduction>, drops: Vec<(usize, usize)>| {
            r.filter(|_| !drops.is_empty())
                .map(|reduction| SiteReduction { reduction, drops })
        };
        ReductionPlan {
            vision: site(vision, vision_drops),
            llm: site(llm, llm_drops),
            renumber_positions: false,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.vision.is_none() && self.llm.is_none()
    }
}

/// GPU scratch of a site that reduces sequences of up to `max_tokens`: the head-averaged
/// attention map of the reducing layer and the step's buffers. Models allocate it only once a
/// plan uses the site.
pub struct SiteScratch {
    pub probs: crate::gpu::Tensor,
    pub step: super::step::ReductionStep,
}

impl SiteScratch {
    pub fn new(gpu: &crate::gpu::Gpu, max_tokens: usize) -> crate::Result<Self> {
        Ok(SiteScratch {
            probs: gpu.zeros(
                &[max_tokens * max_tokens],
                crate::gpu::DType::F32,
                "reduction attention probs",
            )?,
            step: super::step::ReductionStep::new(gpu, max_tokens)?,
        })
    }
}
