//! The paradigm's three stages as data. A [`Reduction`] is one filter, one correlate and one
//! compress; each method ([`super::method`]) is a few lines choosing them. The GPU executes
//! them in [`super::step::ReductionStep`].

use crate::ops::reduce::TargetRule;

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
    /// The last token of the text span (PyramidDrop's instruction token).
    LastText,
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
    /// Redundancy `s = sum_t weight_t * mean over rows_t of A[row, i]`; the highest are
    /// discarded (FiCoCo's Eq. 1 and Eq. 3).
    Redundancy {
        terms: Vec<(Rows, f32)>,
        local_penalty: Option<LocalPenalty>,
    },
    /// Importance `mean over rows of A[row, i]`; the highest are kept (FastV, PDrop, top-k
    /// [CLS] attention).
    Importance { rows: Rows },
}

/// Correlate: where each discarded token's information goes.
#[derive(Clone, Debug, PartialEq)]
pub enum Correlate {
    /// Nowhere: pruning.
    None,
    /// `C[i, j] = direct * (A[i, j] (+ A[j, i] if symmetric)) + indirect * mean over text rows
    /// k of A[k, i] A[k, j]`; each source picks its targets by `targets` (or, `convergent`, each
    /// target its sources).
    Attention {
        direct: f32,
        symmetric: bool,
        indirect: f32,
        targets: TargetRule,
        convergent: bool,
    },
}

/// Compress: how a target absorbs its sources.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compress {
    /// `(X_j + sum alpha X_i) / (1 + sum alpha)`: the target keeps weight 1 (FiCoCo Eq. 2).
    SelfPreserving,
    /// `(X_j + sum X_i) / (1 + |I_j|)` (the paper's ablation).
    Average,
}

/// One reduction step: filter, correlate, compress.
#[derive(Clone, Debug, PartialEq)]
pub struct Reduction {
    pub filter: Filter,
    pub correlate: Correlate,
    pub compress: Compress,
}
