//! The token-reduction stages as GPU kernels (`shaders/reduce.wgsl`): filter scores and the
//! local penalty, the source/target split, correlation, per-source target assignment and the
//! compress that writes the shorter sequence. [`crate::reduce`] composes them into methods.

use super::{dims2, expect_shape};
use crate::gpu::{Batch, Bind, DType, Kernel, Tensor};
use crate::{Error, Result};
use std::ops::Range;

const NONE: u32 = u32::MAX;

/// Rows beyond this many targets (or sources, when convergent) need a larger sort.
pub const MAX_ASSIGN_ROW: usize = 4096;

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    d: u32,
    cand0: u32,
    ncand: u32,
    cls: u32,
    n_drop: u32,
    keep_high: u32,
    ns: u32,
    r1_0: u32,
    r1_n: u32,
    r2_0: u32,
    r2_n: u32,
    w1: f32,
    w2: f32,
    div1: f32,
    div2: f32,
    grid: u32,
    window: u32,
    coef: f32,
    nt: u32,
    text0: u32,
    ntext: u32,
    symmetric: f32,
    fixed_k: u32,
    g_direct: f32,
    g_indirect: f32,
    eps: f32,
    convergent: u32,
    average: u32,
    _pad: [u32; 3],
}

/// The tokens a step may discard: `span` of an `n`-token sequence, without `cls`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidates {
    pub n: usize,
    pub span: Range<usize>,
    pub cls: Option<usize>,
}

impl Candidates {
    pub fn len(&self) -> usize {
        let cls_inside = self.cls.is_some_and(|c| self.span.contains(&c));
        self.span.len() - usize::from(cls_inside)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn params(&self) -> Params {
        Params {
            n: self.n as u32,
            cand0: self.span.start as u32,
            ncand: self.span.len() as u32,
            cls: self.cls.map_or(NONE, |c| c as u32),
            ..Params::default()
        }
    }
}

/// One term of a filter score: `weight * mean over rows of attn[row, candidate]`, the mean
/// dividing by `divisor` (the row count, or the sequence length for column means that count
/// causal zeros).
#[derive(Clone, Debug, PartialEq)]
pub struct ScoreTerm {
    pub rows: Range<usize>,
    pub weight: f32,
    pub divisor: f32,
}

/// Scratch of one reduction step: the plan of `split_tokens` and its `n`, `ns`, `nt`.
pub struct Split<'a> {
    pub plan: &'a Tensor,
    pub n: usize,
    pub sources: usize,
    pub targets: usize,
}

fn kernel(entry: &'static str, flag: &'static str) -> Kernel {
    Kernel::new("reduce", entry).flag(flag)
}

fn attn_dims(attn: &Tensor, n: usize) -> Result<()> {
    expect_shape("attention probabilities", attn, &[n, n])
}

/// `scores[c] = sum over terms` for each candidate `c` (at most two terms).
pub fn score_tokens(
    b: &mut Batch,
    attn: &Tensor,
    cand: &Candidates,
    terms: &[ScoreTerm],
    scores: &Tensor,
) -> Result<()> {
    attn_dims(attn, cand.n)?;
    expect_shape("scores", scores, &[cand.len()])?;
    if terms.len() > 2 || terms.iter().any(|t| t.rows.end > cand.n) {
        return Err(Error::InvalidArgument(format!(
            "score terms {terms:?}: at most two, rows within the {} tokens",
            cand.n
        )));
    }
    let mut p = cand.params();
    if let Some(t) = terms.first() {
        (p.r1_0, p.r1_n, p.w1, p.div1) = (
            t.rows.start as u32,
            t.rows.len() as u32,
            t.weight,
            t.divisor,
        );
    }
    if let Some(t) = terms.get(1) {
        (p.r2_0, p.r2_n, p.w2, p.div2) = (
            t.rows.start as u32,
            t.rows.len() as u32,
            t.weight,
            t.divisor,
        );
    }
    let grid = b.gpu().grid((cand.len() as u32).div_ceil(64));
    b.dispatch(
        &kernel("score_tokens", "E_SCORE"),
        &p,
        &[Bind::R(attn), Bind::W(scores)],
        grid,
    )
}

/// FiCoCo-V's local penalty: on the `grid x grid` patch grid (token positions in `positions`),
/// the top raw score of each `window x window` cell becomes more redundant by `coef`.
#[allow(clippy::too_many_arguments)]
pub fn local_penalty(
    b: &mut Batch,
    raw: &Tensor,
    positions: &Tensor,
    cand: &Candidates,
    grid: usize,
    window: usize,
    coef: f32,
    scores: &Tensor,
) -> Result<()> {
    expect_shape("raw scores", raw, &[cand.len()])?;
    expect_shape("scores", scores, &[cand.len()])?;
    expect_shape("positions", positions, &[cand.n])?;
    if grid == 0 || window == 0 {
        return Err(Error::InvalidArgument(
            "the local penalty needs the patch grid side and a window of at least 1".into(),
        ));
    }
    let p = Params {
        grid: grid as u32,
        window: window as u32,
        coef,
        ..cand.params()
    };
    let g = b.gpu().grid((cand.len() as u32).div_ceil(64));
    b.dispatch(
        &kernel("local_penalty", "E_PENALTY"),
        &p,
        &[Bind::R(raw), Bind::W(scores), Bind::R(positions)],
        g,
    )
}

/// u32 words of the plan for an `n`-token sequence.
pub fn plan_words(n: usize) -> usize {
    5 * n + 3
}

/// Split the candidates into `n_drop` sources and the remaining targets by score (the highest
/// discarded, or with `keep_high` the highest kept), and lay out the output sequence. Also
/// writes the output tokens' positions.
#[allow(clippy::too_many_arguments)]
pub fn split_tokens<'a>(
    b: &mut Batch,
    scores: &Tensor,
    cand: &Candidates,
    n_drop: usize,
    keep_high: bool,
    positions: &Tensor,
    plan: &'a Tensor,
    positions_out: &Tensor,
) -> Result<Split<'a>> {
    let np = cand.len();
    expect_shape("scores", scores, &[np])?;
    expect_shape("positions", positions, &[cand.n])?;
    expect_shape("output positions", positions_out, &[cand.n - n_drop])?;
    if plan.dtype() != DType::U32 || plan.numel() < plan_words(cand.n) {
        return Err(Error::shape(
            "reduction plan",
            format!("u32 [{}]", plan_words(cand.n)),
            format!("{plan:?}"),
        ));
    }
    if n_drop > np {
        return Err(Error::InvalidArgument(format!(
            "cannot drop {n_drop} of {np} candidate tokens"
        )));
    }
    let p = Params {
        n_drop: n_drop as u32,
        keep_high: u32::from(keep_high),
        ..cand.params()
    };
    b.dispatch(
        &kernel("split_tokens", "E_SPLIT"),
        &p,
        &[
            Bind::R(scores),
            Bind::W(plan),
            Bind::R(positions),
            Bind::W(positions_out),
        ],
        [1, 1, 1],
    )?;
    Ok(Split {
        plan,
        n: cand.n,
        sources: n_drop,
        targets: np - n_drop,
    })
}

/// How a correlation entry is built from the attention map.
#[derive(Clone, Debug, PartialEq)]
pub struct Correlation {
    /// Weight of the direct attention `A[i, j]`.
    pub direct: f32,
    /// Also add `A[j, i]` to the direct term (causal maps have only one side).
    pub symmetric: bool,
    /// Weight of the indirect term `mean over text rows k of A[k, i] A[k, j]`, and those rows.
    pub indirect: f32,
    pub text: Range<usize>,
}

/// `corr [ns, nt]`: how much each source relates to each target.
pub fn correlate(
    b: &mut Batch,
    attn: &Tensor,
    split: &Split,
    c: &Correlation,
    corr: &Tensor,
) -> Result<()> {
    attn_dims(attn, split.n)?;
    expect_shape("correlation", corr, &[split.sources, split.targets])?;
    let p = Params {
        n: split.n as u32,
        ns: split.sources as u32,
        nt: split.targets as u32,
        g_direct: c.direct,
        symmetric: if c.symmetric { 1.0 } else { 0.0 },
        g_indirect: c.indirect,
        text0: c.text.start as u32,
        ntext: c.text.len() as u32,
        ..Params::default()
    };
    let g = b
        .gpu()
        .grid(((split.sources * split.targets) as u32).div_ceil(64));
    b.dispatch(
        &kernel("correlate", "E_CORRELATE"),
        &p,
        &[Bind::R(attn), Bind::W(corr), Bind::R(split.plan)],
        g,
    )
}

/// Which targets a source merges into.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TargetRule {
    /// Entries at or above the row's `eps`-quantile (FiCoCo's token-adaptive K).
    Quantile(f32),
    /// The `k` largest entries (ties: lower index); 0 prunes.
    TopK(usize),
}

/// `weights [ns, nt]`: the merge weight of each source into each target (0 if none). With
/// `convergent`, each target picks its sources from its column instead; with `average`, every
/// member weighs 1.
pub fn assign_targets(
    b: &mut Batch,
    corr: &Tensor,
    rule: TargetRule,
    convergent: bool,
    average: bool,
    weights: &Tensor,
) -> Result<()> {
    let (ns, nt) = dims2("correlation", corr)?;
    expect_shape("merge weights", weights, &[ns, nt])?;
    let (rows, len) = if convergent { (nt, ns) } else { (ns, nt) };
    if len > MAX_ASSIGN_ROW {
        return Err(Error::Unsupported(format!(
            "target assignment over {len} tokens; at most {MAX_ASSIGN_ROW}"
        )));
    }
    let mut p = Params {
        ns: ns as u32,
        nt: nt as u32,
        convergent: u32::from(convergent),
        average: u32::from(average),
        ..Params::default()
    };
    let sort_n = len.next_power_of_two().max(256);
    match rule {
        TargetRule::Quantile(eps) => {
            p.fixed_k = NONE;
            p.eps = eps;
        }
        TargetRule::TopK(k) => p.fixed_k = k as u32,
    }
    if rows == 0 || len == 0 {
        return Ok(());
    }
    let k = kernel("assign_targets", "E_ASSIGN").define("SORT_N", format!("{sort_n}u"));
    let g = b.gpu().grid(rows as u32);
    b.dispatch(&k, &p, &[Bind::R(corr), Bind::W(weights)], g)
}

/// Write the reduced sequence: kept tokens in plan order, each target updated by its sources,
/// `(X_j + sum w X_i) / (1 + sum w)`. `weights` is `None` to prune.
pub fn compress(
    b: &mut Batch,
    hidden: &Tensor,
    split: &Split,
    weights: Option<&Tensor>,
    out: &Tensor,
) -> Result<()> {
    let (n, d) = dims2("hidden", hidden)?;
    if n != split.n {
        return Err(Error::shape("hidden", format!("{} rows", split.n), n));
    }
    let n_out = n - split.sources;
    expect_shape("reduced hidden", out, &[n_out, d])?;
    let (ns, w) = match weights {
        Some(w) => {
            expect_shape("merge weights", w, &[split.sources, split.targets])?;
            (split.sources, w)
        }
        // Nothing is read from the weights when no source merges; bind any read-only tensor.
        None => (0, hidden),
    };
    let p = Params {
        n: n as u32,
        d: d as u32,
        ns: ns as u32,
        nt: split.targets as u32,
        ..Params::default()
    };
    let g = b.gpu().grid(n_out as u32);
    b.dispatch(
        &kernel("compress", "E_COMPRESS"),
        &p,
        &[
            Bind::R(hidden),
            Bind::W(out),
            Bind::R(split.plan),
            Bind::R(w),
        ],
        g,
    )
}
