//! Methods as compositions of the three stages, with the papers' hyperparameters as defaults
//! (scripts/reduce_reference.py, "Decisions" G1-G7, F1-F9, O1-O9).

use super::stages::{Compress, Correlate, Filter, Grouping, LocalPenalty, Reduction, Rows, Score};
use crate::ops::reduce::TargetRule;
use crate::ops::AttentionMap;
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

/// LLaVA-PruMerge with a fixed drop (reference O5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PruMerge {
    /// Discarded neighbours each kept token merges (by metric cosine).
    pub knn: usize,
}

impl Default for PruMerge {
    fn default() -> Self {
        PruMerge { knn: 32 }
    }
}

/// VisionZip (reference O6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VisionZip {
    /// Fraction of the kept budget spent on contextual tokens (64 = 54 + 10).
    pub contextual: (usize, usize),
}

impl Default for VisionZip {
    fn default() -> Self {
        VisionZip {
            contextual: (10, 64),
        }
    }
}

/// SparseVLM (reference O4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SparseVlm {
    /// Percent of the deleted tokens recycled into clusters.
    pub recycle_pct: usize,
    /// `ceil(drop / cluster_div)` recycled tokens are created.
    pub cluster_div: usize,
    /// DPC-KNN neighbours.
    pub dpc_k: usize,
}

impl Default for SparseVlm {
    fn default() -> Self {
        SparseVlm {
            recycle_pct: 30,
            cluster_div: 10,
            dpc_k: 5,
        }
    }
}

/// Spatial pooling (reference O8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool {
    /// Window side, a divisor of the grid side: 2 (576 -> 144), 3 (-> 64), 4 (-> 36), ...
    pub k: usize,
}

impl Default for Pool {
    fn default() -> Self {
        Pool { k: 2 }
    }
}

/// Random pruning (reference O7).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RandomDrop {
    /// `numpy.random.RandomState(seed)`.
    pub seed: u32,
}

impl Reduction {
    /// FiCoCo-V: redundancy from received attention minus [CLS] attention (without [CLS], plus
    /// the metric's cosine to the mean token: the equivalent token), local penalty, attention correlation with
    /// adaptive K, self-preserving compress.
    pub fn ficoco_v(p: FicocoV) -> Self {
        Reduction {
            filter: Filter::Redundancy {
                terms: vec![
                    (Rows::All.into(), p.lambda),
                    (Score::ClsOrEquivalent, -(1.0 - p.lambda)),
                ],
                local_penalty: p.local_penalty,
                normalise: false,
            },
            correlate: Correlate::Attention {
                direct: 1.0,
                symmetric: false,
                indirect: 0.0,
                path: false,
                softmax: false,
                targets: TargetRule::Quantile(p.eps),
                convergent: false,
            },
            compress: Compress::SelfPreserving,
            attention: AttentionMap::Probabilities,
        }
    }

    /// FiCoCo-L: task-aware redundancy (visual minus text attention), direct plus text-mediated
    /// correlation, adaptive K, self-preserving compress.
    pub fn ficoco_l(p: FicocoL) -> Self {
        Reduction {
            filter: Filter::Redundancy {
                terms: vec![
                    (Rows::Visual.into(), p.beta),
                    (Rows::Text.into(), -(1.0 - p.beta)),
                ],
                local_penalty: None,
                normalise: false,
            },
            correlate: Correlate::Attention {
                direct: p.gamma,
                symmetric: true,
                indirect: 1.0 - p.gamma,
                path: false,
                softmax: false,
                targets: TargetRule::Quantile(p.eps),
                convergent: false,
            },
            compress: Compress::SelfPreserving,
            attention: AttentionMap::Probabilities,
        }
    }

    /// Pruning that keeps the tokens receiving the most attention from `rows`.
    /// FiCoCo-V as the authors' published code scores it, their slips fixed
    /// (scripts/ficoco_authors.py, docs/ficoco-audit.md): on the pre-softmax scores, the mean of
    /// each patch's row over the patches and [CLS]'s row, each L2-normalised over the patches,
    /// weighted `1 - lambda` and `-lambda` (their code puts lambda on [CLS]); the local penalty;
    /// one target count for every source (`SharedQuantile`); softmax merge weights. Needs a
    /// [CLS] token.
    pub fn ficoco_v_authors(p: FicocoV) -> Self {
        Reduction {
            filter: Filter::Redundancy {
                terms: vec![
                    (
                        Score::Attends {
                            to: Rows::Candidates,
                            sum: false,
                        },
                        1.0 - p.lambda,
                    ),
                    (Score::ClsOrEquivalent, -p.lambda),
                ],
                local_penalty: p.local_penalty,
                normalise: true,
            },
            correlate: Correlate::Attention {
                direct: 1.0,
                symmetric: false,
                indirect: 0.0,
                path: false,
                softmax: true,
                targets: TargetRule::SharedQuantile(p.eps),
                convergent: false,
            },
            compress: Compress::SelfPreserving,
            attention: AttentionMap::Scores,
        }
    }

    /// FiCoCo-L as the authors' published code scores it, their slips fixed: on the unmasked
    /// pre-softmax scores, `beta * sum over visual j of A[i, j] - (1 - beta) * mean over text k
    /// of A[i, k]` (rows, not columns), `C = gamma A[i, j] + (1 - gamma) sum_k A[i, k] A[k, j]`,
    /// one target count for every source, softmax merge weights, and the additive compress.
    pub fn ficoco_l_authors(p: FicocoL) -> Self {
        Reduction {
            filter: Filter::Redundancy {
                terms: vec![
                    (
                        Score::Attends {
                            to: Rows::Visual,
                            sum: true,
                        },
                        p.beta,
                    ),
                    (
                        Score::Attends {
                            to: Rows::Text,
                            sum: false,
                        },
                        -(1.0 - p.beta),
                    ),
                ],
                local_penalty: None,
                normalise: false,
            },
            correlate: Correlate::Attention {
                direct: p.gamma,
                symmetric: false,
                indirect: 1.0 - p.gamma,
                path: true,
                softmax: true,
                targets: TargetRule::SharedQuantile(p.eps),
                convergent: false,
            },
            compress: Compress::Additive,
            attention: AttentionMap::Scores,
        }
    }

    pub fn prune_by_attention(rows: Rows) -> Self {
        Reduction {
            filter: Filter::Importance {
                score: Score::Attention(rows),
            },
            correlate: Correlate::None,
            compress: Compress::SelfPreserving,
            attention: AttentionMap::Probabilities,
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

    /// Keep the tokens [CLS] attends to most (without [CLS]: the equivalent token's highest
    /// `a_i = -cos(mu, K_i)`, the keys least like the mean key).
    pub fn topk_cls() -> Self {
        Reduction {
            filter: Filter::Importance {
                score: Score::ClsOrEquivalent,
            },
            correlate: Correlate::None,
            compress: Compress::SelfPreserving,
            attention: AttentionMap::Probabilities,
        }
    }

    /// ToMe: bipartite split by candidate position, set A's tokens most similar to set B merge
    /// into their most similar B token (K = 1), size-weighted average.
    pub fn tome() -> Self {
        Reduction {
            filter: Filter::Redundancy {
                terms: vec![(Score::Bipartite, 1.0)],
                local_penalty: None,
                normalise: false,
            },
            correlate: Correlate::Similarity {
                targets: TargetRule::TopK(1),
                convergent: false,
                bipartite: true,
            },
            compress: Compress::SizeWeighted,
            attention: AttentionMap::Probabilities,
        }
    }

    /// EViT: keep the tokens [CLS] attends to most; the others fuse into one new token
    /// weighted by their [CLS] attention. Without [CLS] the equivalent token ranks (see
    /// [`Score::ClsOrEquivalent`]) and the fused token is the plain mean: a cosine is no
    /// attention weight.
    pub fn evit() -> Self {
        Reduction {
            filter: Filter::Importance {
                score: Score::ClsOrEquivalent,
            },
            correlate: Correlate::Group(Grouping::One),
            compress: Compress::ScoreWeighted { renormalise: false },
            attention: AttentionMap::Probabilities,
        }
    }

    /// SparseVLM: keep the tokens the relevant text tokens (raters) attend to most; recycle the
    /// best of the deleted ones into density-peak clusters.
    pub fn sparsevlm(p: SparseVlm) -> Self {
        Reduction {
            filter: Filter::Importance {
                score: Score::Attention(Rows::Raters),
            },
            correlate: Correlate::Group(Grouping::DensityPeaks {
                cluster_div: p.cluster_div,
                recycle_pct: p.recycle_pct,
                knn: p.dpc_k,
            }),
            compress: Compress::Average,
            attention: AttentionMap::Probabilities,
        }
    }

    /// LLaVA-PruMerge (fixed drop): keep the tokens [CLS] attends to most; each kept token
    /// absorbs its `knn` most similar discarded tokens, weighted by [CLS] attention. Without
    /// [CLS] the equivalent token ranks and the merge is the plain mean (as for EViT).
    pub fn prumerge(p: PruMerge) -> Self {
        Reduction {
            filter: Filter::Importance {
                score: Score::ClsOrEquivalent,
            },
            correlate: Correlate::Similarity {
                targets: TargetRule::TopK(p.knn),
                convergent: true,
                bipartite: false,
            },
            compress: Compress::ScoreWeighted { renormalise: true },
            attention: AttentionMap::Probabilities,
        }
    }

    /// VisionZip: dominant tokens by [CLS] attention (without [CLS]: by the equivalent token)
    /// plus contextual tokens averaged around evenly spaced centres of the rest.
    pub fn visionzip(p: VisionZip) -> Self {
        Reduction {
            filter: Filter::Importance {
                score: Score::ClsOrEquivalent,
            },
            correlate: Correlate::Group(Grouping::Spaced {
                contextual: p.contextual,
            }),
            compress: Compress::Average,
            attention: AttentionMap::Probabilities,
        }
    }

    /// Random pruning with numpy's legacy permutation of the candidates.
    pub fn random(p: RandomDrop) -> Self {
        Reduction {
            filter: Filter::Importance {
                score: Score::Random { seed: p.seed },
            },
            correlate: Correlate::None,
            compress: Compress::SelfPreserving,
            attention: AttentionMap::Probabilities,
        }
    }

    /// Spatial pooling: every `k x k` window of the patch grid becomes its mean.
    pub fn pool(p: Pool) -> Self {
        Reduction {
            filter: Filter::All,
            correlate: Correlate::Group(Grouping::Windows { k: p.k }),
            compress: Compress::Average,
            attention: AttentionMap::Probabilities,
        }
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

/// An ablation of the FiCoCo papers' tables, written after the method name: `ficoco-v+k=0`
/// prunes FiCoCo-V's sources instead of merging them, `ficoco-v+no-penalty` drops its local
/// penalty; several may follow one another (`+k=1+no-penalty`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ablation {
    /// A fixed number of targets per source instead of the adaptive quantile (0 prunes).
    FixedK(usize),
    /// No local penalty in the filter.
    NoPenalty,
}

impl std::str::FromStr for Ablation {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        if s == "no-penalty" {
            return Ok(Ablation::NoPenalty);
        }
        s.strip_prefix("k=")
            .and_then(|k| k.parse().ok())
            .map(Ablation::FixedK)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "unknown ablation {s:?}: expected k=N (N targets per source, 0 prunes) or \
                     no-penalty, e.g. ficoco-v+k=0"
                ))
            })
    }
}

impl Ablation {
    /// Whether `r` has what this ablation changes.
    pub fn applies_to(self, r: &Reduction) -> bool {
        match self {
            Ablation::FixedK(_) => matches!(r.correlate, Correlate::Attention { .. }),
            Ablation::NoPenalty => matches!(
                r.filter,
                Filter::Redundancy {
                    local_penalty: Some(_),
                    ..
                }
            ),
        }
    }

    pub fn apply(self, r: Reduction) -> Reduction {
        match self {
            Ablation::FixedK(k) => r.with_fixed_k(k),
            Ablation::NoPenalty => r.without_local_penalty(),
        }
    }

    /// What a method needs for this ablation (for the error when it has none).
    pub fn needs(self) -> &'static str {
        match self {
            Ablation::FixedK(_) => "an attention correlation (FiCoCo's) whose targets k=N fixes",
            Ablation::NoPenalty => "a local penalty (FiCoCo-V's) to remove",
        }
    }
}

/// Method names accepted by `--method` / `--reduce`.
pub const METHODS: &[&str] = &[
    "ficoco-v",
    "ficoco-l",
    "tome",
    "evit",
    "fastv",
    "pdrop",
    "sparsevlm",
    "prumerge",
    "visionzip",
    "random",
    "topk-cls",
    "pool",
    "none",
];

/// The methods of the paradigm that are not a single step: FiCoCo-VL is FiCoCo-V in the vision
/// encoder followed by FiCoCo-L in the LLM, composed by the model.
pub const PLANNED_METHODS: &[&str] = &["ficoco-vl", "ficoco-vl@authors"];

/// FiCoCo as the authors' published code computes it, their slips fixed (docs/ficoco-audit.md):
/// `ficoco-v@authors`, `ficoco-l@authors` and their composition `ficoco-vl@authors`.
pub const AUTHORS_READINGS: &[&str] =
    &["ficoco-v@authors", "ficoco-l@authors", "ficoco-vl@authors"];

/// Every name `--reduce` takes: the single steps, the planned compositions, the authors'
/// readings.
pub fn every_method() -> Vec<&'static str> {
    let mut all: Vec<&str> = METHODS.iter().chain(PLANNED_METHODS).copied().collect();
    for m in AUTHORS_READINGS {
        if !all.contains(m) {
            all.push(m);
        }
    }
    all
}

/// A single-step reduction by name with default hyperparameters; `None` for `none`.
pub fn by_name(name: &str) -> Result<Option<Reduction>> {
    Ok(Some(match name {
        "ficoco-v" => Reduction::ficoco_v(FicocoV::default()),
        "ficoco-l" => Reduction::ficoco_l(FicocoL::default()),
        "ficoco-v@authors" => Reduction::ficoco_v_authors(FicocoV::default()),
        "ficoco-l@authors" => Reduction::ficoco_l_authors(FicocoL::default()),
        "tome" => Reduction::tome(),
        "evit" => Reduction::evit(),
        "fastv" => Reduction::fastv(),
        "pdrop" => Reduction::pdrop(),
        "sparsevlm" => Reduction::sparsevlm(SparseVlm::default()),
        "prumerge" => Reduction::prumerge(PruMerge::default()),
        "visionzip" => Reduction::visionzip(VisionZip::default()),
        "random" => Reduction::random(RandomDrop::default()),
        "topk-cls" => Reduction::topk_cls(),
        "pool" => Reduction::pool(Pool::default()),
        "none" => return Ok(None),
        other if PLANNED_METHODS.contains(&other) => {
            return Err(Error::Unsupported(format!(
                "method {other} is not a single reduction step (it composes ficoco-v in the \
                 vision encoder with ficoco-l in the LLM); single steps: {}",
                METHODS.join(", ")
            )))
        }
        other => {
            return Err(Error::InvalidArgument(format!(
                "unknown reduction method {other:?}; available: {}, and the authors' readings {}",
                METHODS.join(", "),
                AUTHORS_READINGS.join(", ")
            )))
        }
    }))
}
