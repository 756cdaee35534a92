//! Where reductions attach to the model: after the attention of chosen vision-tower layers,
//! at the projector output, after the attention of chosen decoder layers during prefill, and
//! on the visual entries of the KV cache during decoding. Tokens keep their grid position
//! (vision) or RoPE position (LLM) through every step, so later layers, the KV cache and
//! decoding agree.

use super::schedule::Schedule;
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

    /// Tokens dropped before layer `layer`'s attention (after earlier layers).
    pub fn dropped_before(&self, layer: usize) -> usize {
        self.drops
            .iter()
            .filter(|(l, _)| *l < layer)
            .map(|(_, d)| d)
            .sum()
    }
}

/// Compression of the cache's visual entries while decoding (this project's extension of the
/// paper): once `every` tokens have been generated since the last compression, each decoder
/// layer's visual keys and values go through `reduction`, scored by the attention those
/// generated tokens paid (they are the step's text rows), halving the layer's excess over
/// `keep` visual entries each time.
#[derive(Clone, Debug, PartialEq)]
pub struct KvReduction {
    pub reduction: Reduction,
    pub keep: usize,
    pub every: usize,
}

impl KvReduction {
    /// Entries one compression removes from a layer holding `visual` visual entries.
    pub fn drop_for(&self, visual: usize) -> usize {
        visual.saturating_sub(self.keep).div_ceil(2)
    }
}

/// One reduction of the projector's output: the visual tokens about to enter the prompt,
/// scored by the attention (and keys) of the vision layer the projector reads.
#[derive(Clone, Debug, PartialEq)]
pub struct ProjectorReduction {
    pub reduction: Reduction,
    pub drop: usize,
}

/// The reductions of one generation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReductionPlan {
    pub vision: Option<SiteReduction>,
    pub projector: Option<ProjectorReduction>,
    pub llm: Option<SiteReduction>,
    /// Compression of the KV cache's visual entries during decoding.
    pub kv: Option<KvReduction>,
    /// After an LLM reduction, renumber RoPE positions contiguously in each later layer (and
    /// decode at each layer's own length) instead of keeping the original positions.
    pub renumber_positions: bool,
}

impl ReductionPlan {
    /// Attach `vision`, `projector` and `llm` reductions where `schedule` changes the token
    /// count: a vision layer that hands on fewer tokens reduces after its attention; the
    /// projector's output when it is shorter than the tower's; a decoder layer that runs on
    /// fewer tokens than the one before is reduced after the previous layer's attention.
    pub fn from_schedule(
        vision: Option<Reduction>,
        projector: Option<Reduction>,
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
        let at_projector = prev - schedule.projector();
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
            projector: projector
                .filter(|_| at_projector > 0)
                .map(|reduction| ProjectorReduction {
                    reduction,
                    drop: at_projector,
                }),
            llm: site(llm, llm_drops),
            kv: None,
            renumber_positions: false,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.vision.is_none() && self.projector.is_none() && self.llm.is_none() && self.kv.is_none()
    }

    /// Visual tokens removed before the LLM (in the tower and at the projector).
    pub fn before_llm(&self) -> usize {
        self.vision.as_ref().map_or(0, |v| v.total())
            + self.projector.as_ref().map_or(0, |p| p.drop)
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
    pub fn max_tokens(&self) -> usize {
        self.step.max_tokens()
    }

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
