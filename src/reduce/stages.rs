//! The paradigm's three stages as data. A [`Reduction`] is one filter, one correlate and one
//! compress; each method ([`super::method`]) is a few lines choosing them. The GPU executes
//! them in [`super::step::ReductionStep`].
//!
//! The metric of the similarity-based stages is the keys if a step is given them, else the
//! hidden states (reference Decision G5).

use crate::ops::reduce::TargetRule;
use crate::ops::AttentionMap;
use crate::{Error, Result};

/// Rows of the attention map (queries) that a score averages over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rows {
    /// Every token; the mean divides by the sequence length, causal zeros included.
    All,
    /// The [CLS] token.
    Cls,
    /// The visual span.
    Visual,
    /// The text (question) span.
    Text,
    /// The candidates themselves (the visual span, or every token, without [CLS]).
    Candidates,
    /// The last token of the text span (PyramidDrop's instruction token).
    LastText,
    /// SparseVLM's raters: the text tokens whose mean attention to the candidates is at least
    /// the text's average (all text tokens if none is).
    Raters,
}

/// A per-candidate score, one term of a filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Score {
    /// `mean over rows of A[row, i]`: the attention candidate `i` receives.
    Attention(Rows),
    /// Over the columns `to` ([CLS] left out) of `A[i, col]`: what candidate `i` attends to,
    /// their mean, or with `sum` their sum (the FiCoCo authors' code scores rows).
    Attends { to: Rows, sum: bool },
    /// `A[cls, i]`; without a [CLS] token FiCoCo's equivalent-token score
    /// `a_i = -cos(mu, M_i)`, `mu` the candidates' mean metric row (reference F1). The one
    /// implementation of "[CLS] attention" for every method that reads it (FiCoCo-V's semantic
    /// term, EViT, PruMerge, VisionZip, top-k [CLS]); on a tower without [CLS] (SigLIP) the
    /// model's metric is the keys averaged over heads, as the FiCoCo note defines K. A
    /// score-weighted compress cannot weight by a cosine: without [CLS] it averages.
    ClsOrEquivalent,
    /// ToMe's bipartite split: candidates at even positions (set A) score their highest metric
    /// cosine to the candidates at odd positions (set B); set B is never discarded.
    Bipartite,
    /// The candidate's place in `numpy.random.RandomState(seed).permutation(candidates)`
    /// (reference O7); as an importance the first places of the permutation are discarded. The
    /// permutation depends only on the seed and the candidate count: it is computed on the CPU
    /// when the step is recorded and uploaded once per (seed, count).
    Random { seed: u32 },
}

impl From<Rows> for Score {
    fn from(rows: Rows) -> Self {
        Score::Attention(rows)
    }
}

/// FiCoCo-V's spatial spreading of discards: in each `window x window` cell of the patch grid
/// the most redundant token is made more redundant by `coef`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LocalPenalty {
    pub window: usize,
    pub coef: f32,
}

/// Filter: which candidates are discarded.
#[derive(Clone, Debug, PartialEq)]
pub enum Filter {
    /// Redundancy `s = sum_t weight_t * score_t`; the highest are discarded (FiCoCo's Eq. 1 and
    /// Eq. 3, ToMe). With `normalise` each attention term is first divided by its L2 norm over
    /// the candidates (the FiCoCo authors' code).
    Redundancy {
        terms: Vec<(Score, f32)>,
        local_penalty: Option<LocalPenalty>,
        normalise: bool,
    },
    /// Importance; the highest are kept (FastV, PDrop, top-k [CLS] attention, EViT, PruMerge,
    /// VisionZip's dominant tokens, SparseVLM, random).
    Importance { score: Score },
    /// Every candidate leaves the sequence (spatial pooling rebuilds the span from windows).
    All,
}

impl Filter {
    /// Whether one of the filter's terms is `score`.
    pub fn has(&self, score: Score) -> bool {
        match self {
            Filter::Redundancy { terms, .. } => terms.iter().any(|(s, _)| *s == score),
            Filter::Importance { score: s } => *s == score,
            Filter::All => false,
        }
    }
}

/// How discarded tokens are grouped into new tokens, appended at the end of the visual span in
/// the order given (reference G3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grouping {
    /// All discarded tokens into one token (EViT); none when nothing is dropped.
    One,
    /// VisionZip's contextual tokens: `c = round(contextual.0 / contextual.1 * kept)` of the
    /// kept budget (`floor((2 num m + den) / (2 den))`, m = candidates - drop) become contextual
    /// tokens; the discarded tokens at `t * (ns / c)` are their centres and every other one
    /// joins the centre of highest metric cosine (reference O6).
    Spaced { contextual: (usize, usize) },
    /// SparseVLM: `c = ceil(drop / cluster_div)` tokens; the best `recycle_pct` percent of the
    /// discarded tokens (by importance) are clustered by DPC-KNN with `knn` neighbours over the
    /// metric distance; the rest are pruned (reference O4).
    DensityPeaks {
        cluster_div: usize,
        recycle_pct: usize,
        knn: usize,
    },
    /// One token per `k x k` window of the patch grid, raster order (reference O8).
    Windows { k: usize },
}

impl Grouping {
    /// New tokens for a step dropping `drop` (net) of `np` candidates on a `grid` patch grid.
    pub fn new_tokens(&self, np: usize, drop: usize, grid: Option<usize>) -> Result<usize> {
        let c = match *self {
            Grouping::One => usize::from(drop > 0),
            Grouping::Spaced {
                contextual: (num, den),
            } => {
                if den == 0 || num > den {
                    return Err(Error::InvalidArgument(format!(
                        "contextual fraction {num}/{den}"
                    )));
                }
                let m = np.saturating_sub(drop);
                (2 * num * m + den) / (2 * den)
            }
            Grouping::DensityPeaks { cluster_div, .. } => {
                if cluster_div == 0 {
                    return Err(Error::InvalidArgument("cluster divisor 0".into()));
                }
                drop.div_ceil(cluster_div)
            }
            Grouping::Windows { k } => {
                let g = grid.ok_or_else(|| {
                    Error::InvalidArgument("pooling needs the patch grid side (--grid)".into())
                })?;
                if k == 0 || g % k != 0 {
                    return Err(Error::InvalidArgument(format!(
                        "pool needs k | grid: {k} x {k} windows on a {g} x {g} grid"
                    )));
                }
                if np != g * g {
                    return Err(Error::InvalidArgument(format!(
                        "pool needs every patch of the {g} x {g} grid present, not {np}"
                    )));
                }
                let windows = g * g / (k * k);
                if drop != g * g - windows {
                    return Err(Error::InvalidArgument(format!(
                        "pool {k}x{k} on {g}x{g} drops exactly {}",
                        g * g - windows
                    )));
                }
                windows
            }
        };
        Ok(c)
    }

    /// Discarded tokens listed for clustering (SparseVLM's recycled tokens): of `discarded`.
    pub fn recycled(&self, discarded: usize) -> usize {
        match *self {
            Grouping::DensityPeaks { recycle_pct, .. } => {
                discarded.min((recycle_pct * discarded).div_ceil(100))
            }
            _ => 0,
        }
    }
}

/// Correlate: where each discarded token's information goes.
#[derive(Clone, Debug, PartialEq)]
pub enum Correlate {
    /// Nowhere: pruning.
    None,
    /// `C[i, j] = direct * (A[i, j] (+ A[j, i] if symmetric)) + indirect * mean over text rows
    /// k of A[k, i] A[k, j]` (with `path`: `+ indirect * sum over text k of A[i, k] A[k, j]`,
    /// the FiCoCo authors' code); each source picks its targets by `targets` (or, `convergent`,
    /// each target its sources), weighted by `C` over the chosen ones (with `softmax` by
    /// `exp(C)`).
    Attention {
        direct: f32,
        symmetric: bool,
        indirect: f32,
        path: bool,
        softmax: bool,
        targets: TargetRule,
        convergent: bool,
    },
    /// `C[i, j] = cos(M_i, M_j)` over the metric; `targets` and `convergent` as for
    /// [`Correlate::Attention`]. With `bipartite` only ToMe's set B (odd candidate positions)
    /// can receive (ToMe: K = 1; PruMerge: convergent k-NN).
    Similarity {
        targets: TargetRule,
        convergent: bool,
        bipartite: bool,
    },
    /// Into new tokens: the discarded tokens are grouped and each group becomes one token.
    Group(Grouping),
}

impl Correlate {
    /// New tokens this correlate appends for a step dropping `drop` of `np` candidates.
    pub fn new_tokens(&self, np: usize, drop: usize, grid: Option<usize>) -> Result<usize> {
        match self {
            Correlate::Group(g) => g.new_tokens(np, drop, grid),
            _ => Ok(0),
        }
    }
}

/// Compress: how a receiving token absorbs its sources. A kept token without sources is copied
/// unchanged; new tokens (from [`Correlate::Group`]) are the mean of their members unless said
/// otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compress {
    /// `(X_j + sum alpha X_i) / (1 + sum alpha)`: the target keeps weight 1 (FiCoCo Eq. 2).
    SelfPreserving,
    /// `X_j + sum alpha X_i`, no division (the FiCoCo authors' FiCoCo-L code).
    Additive,
    /// `(X_j + sum X_i) / (1 + |I_j|)` (the paper's ablation).
    Average,
    /// ToMe's size-weighted average `(s_j X_j + sum s_i X_i) / (s_j + sum s_i)`; sizes start at
    /// 1 in every step, so within a step this is [`Compress::Average`]; the step reports the
    /// output sizes `1 + |I_j|`.
    SizeWeighted,
    /// Weights are the filter's importance scores ([CLS] attention): a target becomes
    /// `(s_j X_j + sum s_i X_i) / (s_j + sum s_i)` (PruMerge), a new token
    /// `sum s_i X_i / sum s_i`, or without `renormalise` `sum s_i X_i` (EViT's fused token).
    ScoreWeighted { renormalise: bool },
}

/// One reduction step: filter, correlate, compress, reading the `attention` map of its layer.
#[derive(Clone, Debug, PartialEq)]
pub struct Reduction {
    pub filter: Filter,
    pub correlate: Correlate,
    pub compress: Compress,
    pub attention: AttentionMap,
}

impl Reduction {
    /// Whether the step reads the metric (keys or hidden states) for a step with these spans.
    pub fn uses_metric(&self, has_cls: bool) -> bool {
        let filter = match &self.filter {
            Filter::Redundancy { terms, .. } => terms.iter().any(|(s, _)| s.uses_metric(has_cls)),
            Filter::Importance { score } => score.uses_metric(has_cls),
            Filter::All => false,
        };
        let correlate = matches!(
            self.correlate,
            Correlate::Similarity { .. }
                | Correlate::Group(Grouping::Spaced { .. } | Grouping::DensityPeaks { .. })
        );
        filter || correlate
    }
}

impl Score {
    fn uses_metric(&self, has_cls: bool) -> bool {
        match self {
            Score::ClsOrEquivalent => !has_cls,
            Score::Bipartite => true,
            Score::Attention(_) | Score::Attends { .. } | Score::Random { .. } => false,
        }
    }
}
