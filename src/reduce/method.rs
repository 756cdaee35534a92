//! Methods as compositions of the three stages, with the papers' hyperparameters as defaults.

use super::stages::{Compress, Correlate, Filter, LocalPenalty, Reduction, Rows};
use crate::ops::reduce::TargetRule;
use crate::{Error, Result};

/// FiCoCo-V's hyperparameters (paper defaults in [`Default`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FicocoV {
    /// Weight of the received-attention term against [CLS] attention (Eq. 1).
    pub lambda: f32,
    pub local_penalty: Option<LocalPenalty>,
    /// Quantile of the token-adaptive K.
    pub eps: f32,
}

impl Default for FicocoV {
    fn default() -> Self {
        FicocoV {
            lambda: 0.35,
            local_penalty: Some(LocalPenalty {
                window: 2,
                coef: 2.0,
            }),
            eps: 0.998,
        }
    }
}

/// FiCoCo-L's hyperparameters (paper defaults in [`Default`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FicocoL {
    /// Weight of visual against text attention in the filter (Eq. 3).
    pub beta: f32,
    /// Weight of direct against text-mediated correlation (Eq. 4).
    pub gamma: f32,
    pub eps: f32,
}

impl Default for FicocoL {
    fn default() -> Self {
        FicocoL {
            beta: 0.6,
            gamma: 0.6,
            eps: 0.998,
        }
    }
}

impl Reduction {
    /// FiCoCo-V: redundancy from received attention minus [CLS] attention, local penalty,
    /// attention correlation with adaptive K, self-preserving compress.
    pub fn ficoco_v(p: FicocoV) -> Self {
        Reduction {
            filter: Filter::Redundancy {
                terms: vec![(Rows::All, p.lambda), (Rows::Cls, -(1.0 - p.lambda))],
                local_penalty: p.local_penalty,
            },
            correlate: Correlate::Attention {
                direct: 1.0,
                symmetric: false,
                indirect: 0.0,
                targets: TargetRule::Quantile(p.eps),
                convergent: false,
            },
            compress: Compress::SelfPreserving,
        }
    }

    /// FiCoCo-L: task-aware redundancy (visual minus text attention), direct plus text-mediated
    /// correlation, adaptive K, self-preserving compress.
    pub fn ficoco_l(p: FicocoL) -> Self {
        Reduction {
            filter: Filter::Redundancy {
                terms: vec![(Rows::Visual, p.beta), (Rows::Text, -(1.0 - p.beta))],
                local_penalty: None,
            },
            correlate: Correlate::Attention {
                direct: p.gamma,
                symmetric: true,
                indirect: 1.0 - p.gamma,
                targets: TargetRule::Quantile(p.eps),
                convergent: false,
            },
            compress: Compress::SelfPreserving,
        }
    }

    /// Pruning that keeps the tokens receiving the most attention from `rows`.
    pub fn prune_by_attention(rows: Rows) -> Self {
        Reduction {
            filter: Filter::Importance { rows },
            correlate: Correlate::None,
            compress: Compress::SelfPreserving,
        }
    }

    /// FastV: keep the tokens with the highest average received attention.
    pub fn fastv() -> Self {
        Self::prune_by_attention(Rows::All)
    }

    /// PyramidDrop: keep the tokens the last instruction token attends to most.
    pub fn pdrop() -> Self {
        Self::prune_by_attention(Rows::LastText)
    }

    /// Keep the tokens [CLS] attends to most.
    pub fn topk_cls() -> Self {
        Self::prune_by_attention(Rows::Cls)
    }

    // Ablations of the paper's tables.

    pub fn without_local_penalty(mut self) -> Self {
        if let Filter::Redundancy { local_penalty, .. } = &mut self.filter {
            *local_penalty = None;
        }
        self
    }

    /// A fixed number of targets per source instead of the adaptive quantile (0 prunes).
    pub fn with_fixed_k(mut self, k: usize) -> Self {
        if let Correlate::Attention { targets, .. } = &mut self.correlate {
            *targets = TargetRule::TopK(k);
        }
        self
    }

    /// Targets choose their sources (the paper's "convergent" correlation).
    pub fn convergent(mut self) -> Self {
        if let Correlate::Attention { convergent, .. } = &mut self.correlate {
            *convergent = true;
        }
        self
    }

    /// Only the text-mediated correlation (gamma = 0).
    pub fn without_direct(mut self) -> Self {
        if let Correlate::Attention {
            direct, indirect, ..
        } = &mut self.correlate
        {
            (*direct, *indirect) = (0.0, 1.0);
        }
        self
    }

    /// Only the direct correlation (gamma = 1).
    pub fn without_indirect(mut self) -> Self {
        if let Correlate::Attention {
            direct, indirect, ..
        } = &mut self.correlate
        {
            (*direct, *indirect) = (1.0, 0.0);
        }
        self
    }

    pub fn averaging(mut self) -> Self {
        self.compress = Compress::Average;
        self
    }
}

/// Method names accepted by `--method` / `--reduce`.
pub const METHODS: &[&str] = &["ficoco-v", "ficoco-l", "fastv", "pdrop", "topk-cls", "none"];

/// The methods of the paradigm that are specified (scripts/reduce_reference.py) but do not run
/// on the GPU yet.
pub const PLANNED_METHODS: &[&str] = &[
    "ficoco-vl",
    "tome",
    "evit",
    "sparsevlm",
    "prumerge",
    "visionzip",
    "random",
    "pool",
];

/// A single-step reduction by name with default hyperparameters; `None` for `none`.
pub fn by_name(name: &str) -> Result<Option<Reduction>> {
    Ok(Some(match name {
        "ficoco-v" => Reduction::ficoco_v(FicocoV::default()),
        "ficoco-l" => Reduction::ficoco_l(FicocoL::default()),
        "fastv" => Reduction::fastv(),
        "pdrop" => Reduction::pdrop(),
        "topk-cls" => Reduction::topk_cls(),
        "none" => return Ok(None),
        other if PLANNED_METHODS.contains(&other) => {
            return Err(Error::Unsupported(format!(
                "method {other} is not implemented on the GPU yet; available: {}",
                METHODS.join(", ")
            )))
        }
        other => {
            return Err(Error::InvalidArgument(format!(
                "unknown reduction method {other:?}; available: {}",
                METHODS.join(", ")
            )))
        }
    }))
}
