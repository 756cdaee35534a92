//! The token-reduction stages as GPU kernels (`shaders/reduce_filter.wgsl`,
//! `reduce_correlate.wgsl`, `reduce_compress.wgsl`, sharing `reduce_common.wgsl`): filter scores
//! (attention terms, SparseVLM's raters, metric similarity, the local penalty), the source/target
//! split, correlation (attention or metric pairs), per-source target assignment, grouping of
//! sources into new tokens (one fused token, grid windows, nearest spaced centres, density peaks)
//! and the compress that writes the shorter sequence. [`crate::reduce`] composes them into methods.

use super::{dims2, expect_shape};
use crate::gpu::{Batch, Bind, DType, Kernel, Tensor};
use crate::{Error, Result};
use std::ops::Range;

const NONE: u32 = u32::MAX;

/// Rows beyond this many targets (or sources, when convergent) need a larger sort.
pub const MAX_ASSIGN_ROW: usize = 4096;

/// Largest DPC-KNN neighbour count `density_peaks` keeps per point.
pub const MAX_DPC_KNN: usize = 16;

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    d: u32,
    cand0: u32,
    ncand: u32,
    cls: u32,
    n_src: u32,
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
    dk: u32,
    mode: u32,
    weight: f32,
    weighted: u32,
    n_new: u32,
    span_end: u32,
    n_recycle: u32,
    rows: u32,
    cols: u32,
    nr: u32,
    nc: u32,
    stride: u32,
    bipartite: u32,
    count: u32,
    knn: u32,
    score_self: u32,
    score_members: u32,
    normalise: u32,
    positions_mode: u32,
    along_rows: u32,
    path: u32,
    softmax: u32,
    _pad: u32,
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
/// causal zeros). A `weighted` term also multiplies each row by the row weights of
/// [`rate_rows`] (SparseVLM's raters; divisor 1). An `along_rows` term reads the candidate's
/// own row instead: `attn[candidate, col]` over the columns `rows`, the [CLS] column left out.
#[derive(Clone, Debug, PartialEq)]
pub struct ScoreTerm {
    pub rows: Range<usize>,
    pub weight: f32,
    pub divisor: f32,
    pub weighted: bool,
    pub along_rows: bool,
}

/// Scratch of one reduction step: the plan of `split_tokens` and its counts (all known on the
/// host before the step runs).
pub struct Split<'a> {
    pub plan: &'a Tensor,
    pub cand: Candidates,
    pub n: usize,
    pub sources: usize,
    pub targets: usize,
    /// New tokens appended at the end of the visual span.
    pub new_tokens: usize,
    /// Sources listed as recycled (the best-ranked sources of an importance filter).
    pub recycled: usize,
}

/// The shader of each stage's kernels.
const FILTER: &str = "reduce_filter";
const CORRELATE: &str = "reduce_correlate";
const COMPRESS: &str = "reduce_compress";

fn kernel(shader: &'static str, entry: &'static str, flag: &'static str) -> Kernel {
    Kernel::new(shader, entry).flag(flag)
}

fn attn_dims(attn: &Tensor, n: usize) -> Result<()> {
    expect_shape("attention probabilities", attn, &[n, n])
}

/// `scores[c] = sum over terms` for each candidate `c` (at most two terms; none writes 0).
/// `row_weights [n]` is read by weighted terms (any tensor otherwise).
/// `scores[c]` = the weighted sum of `terms` for each candidate; with `normalise` each term is
/// divided by its L2 norm over the candidates first (one workgroup).
pub fn score_tokens(
    b: &mut Batch,
    attn: &Tensor,
    cand: &Candidates,
    terms: &[ScoreTerm],
    row_weights: Option<&Tensor>,
    normalise: bool,
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
    let rw = match row_weights {
        Some(rw) => {
            expect_shape("row weights", rw, &[cand.n])?;
            rw
        }
        None if terms.iter().any(|t| t.weighted) => {
            return Err(Error::InvalidArgument(
                "a weighted score term needs the row weights".into(),
            ))
        }
        None => attn,
    };
    let mut p = cand.params();
    for (i, t) in terms.iter().enumerate() {
        let slot = (
            t.rows.start as u32,
            t.rows.len() as u32,
            t.weight,
            t.divisor,
        );
        if i == 0 {
            (p.r1_0, p.r1_n, p.w1, p.div1) = slot;
        } else {
            (p.r2_0, p.r2_n, p.w2, p.div2) = slot;
        }
        p.weighted |= u32::from(t.weighted) << i;
        p.along_rows |= u32::from(t.along_rows) << i;
    }
    let (entry, grid) = match normalise {
        true => ("score_tokens_normalised", b.gpu().grid(1)),
        false => (
            "score_tokens",
            b.gpu().grid((cand.len() as u32).div_ceil(64)),
        ),
    };
    b.dispatch(
        &kernel(FILTER, entry, "E_SCORE"),
        &p,
        &[Bind::R(attn), Bind::W(scores), Bind::R(rw)],
        grid,
    )
}

/// SparseVLM's raters: the `text` rows whose mean attention to the candidates is at least the
/// average over the text; `row_weights[k]` becomes `1 / |raters|` for raters, 0 for other text
/// rows (all text rows are raters if none qualifies).
pub fn rate_rows(
    b: &mut Batch,
    attn: &Tensor,
    cand: &Candidates,
    text: Range<usize>,
    row_weights: &Tensor,
) -> Result<()> {
    attn_dims(attn, cand.n)?;
    expect_shape("row weights", row_weights, &[cand.n])?;
    if text.is_empty() || text.end > cand.n || cand.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "raters need a non-empty text span within the {} tokens and candidates",
            cand.n
        )));
    }
    let p = Params {
        text0: text.start as u32,
        ntext: text.len() as u32,
        ..cand.params()
    };
    b.dispatch(
        &kernel(FILTER, "rate_rows", "E_RATE"),
        &p,
        &[Bind::R(attn), Bind::W(row_weights)],
        [1, 1, 1],
    )
}

/// Inverse norms of every token's metric row, `norms[i] = 1 / max(|M_i|, 1e-12)`, and with
/// `mean` the candidates' mean metric row.
pub fn metric_stats(
    b: &mut Batch,
    metric: &Tensor,
    cand: &Candidates,
    norms: &Tensor,
    mean: Option<&Tensor>,
) -> Result<()> {
    let (n, dk) = dims2("metric", metric)?;
    if n != cand.n {
        return Err(Error::shape("metric", format!("{} rows", cand.n), n));
    }
    expect_shape("metric norms", norms, &[n])?;
    let p = Params {
        dk: dk as u32,
        ..cand.params()
    };
    let g = b.gpu().grid((n as u32).div_ceil(64));
    let binds = [Bind::R(metric), Bind::W(norms)];
    b.dispatch(&kernel(FILTER, "metric_norms", "E_NORMS"), &p, &binds, g)?;
    if let Some(mean) = mean {
        if mean.numel() < dk {
            return Err(Error::shape("metric mean", format!("[{dk}]"), mean.numel()));
        }
        let g = b.gpu().grid((dk as u32).div_ceil(64));
        let binds = [Bind::R(metric), Bind::W(mean)];
        b.dispatch(&kernel(FILTER, "metric_mean", "E_MEAN"), &p, &binds, g)?;
    }
    Ok(())
}

/// Which similarity a filter term adds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Similarity {
    /// `cos(mean of the candidates' metric, M_c)` (FiCoCo's equivalent token, negated).
    ToMean,
    /// ToMe's bipartite split: candidates at even positions (set A) score their highest cosine
    /// to the odd ones (set B); set B scores the lowest f32 and is never discarded.
    Bipartite,
}

/// `scores[c] += weight * similarity` (after [`metric_stats`]; `mean` for [`Similarity::ToMean`]).
#[allow(clippy::too_many_arguments)]
pub fn score_similarity(
    b: &mut Batch,
    metric: &Tensor,
    norms: &Tensor,
    mean: Option<&Tensor>,
    cand: &Candidates,
    sim: Similarity,
    weight: f32,
    scores: &Tensor,
) -> Result<()> {
    let (n, dk) = dims2("metric", metric)?;
    if n != cand.n {
        return Err(Error::shape("metric", format!("{} rows", cand.n), n));
    }
    expect_shape("scores", scores, &[cand.len()])?;
    let mean = match (sim, mean) {
        (Similarity::ToMean, None) => {
            return Err(Error::InvalidArgument(
                "similarity to the mean needs the mean metric".into(),
            ))
        }
        (_, Some(m)) => m,
        (Similarity::Bipartite, None) => norms,
    };
    let p = Params {
        dk: dk as u32,
        mode: u32::from(sim == Similarity::Bipartite),
        weight,
        ..cand.params()
    };
    let g = b.gpu().grid(cand.len() as u32);
    b.dispatch(
        &kernel(FILTER, "score_similarity", "E_SIMILARITY"),
        &p,
        &[
            Bind::R(metric),
            Bind::R(norms),
            Bind::R(mean),
            Bind::W(scores),
        ],
        g,
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
        &kernel(FILTER, "local_penalty", "E_PENALTY"),
        &p,
        &[Bind::R(raw), Bind::W(scores), Bind::R(positions)],
        g,
    )
}

/// u32 words of the plan for an `n`-token sequence.
pub fn plan_words(n: usize) -> usize {
    7 * n + 6
}

/// How `split_tokens` divides the candidates and lays out the output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Candidates that leave the sequence (pruned, merged into targets or into new tokens).
    pub sources: usize,
    /// Keep the highest scores (importance) instead of discarding them (redundancy).
    pub keep_high: bool,
    /// New tokens written after the surviving tokens before `span_end`.
    pub new_tokens: usize,
    pub span_end: usize,
    /// The best-ranked sources listed as recycled (importance filters only).
    pub recycled: usize,
    /// What the positions are (grid indices, RoPE positions kept or renumbered).
    pub positions: PositionKind,
}

/// What a step's positions are, and so what the output tokens get.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PositionKind {
    /// Patch grid indices (vision): survivors keep theirs, new tokens get -1 (no cell).
    #[default]
    Grid = 0,
    /// RoPE positions kept (LLM): survivors keep theirs, new tokens take the visual span's last
    /// token's, so order and distances to the text hold.
    Rope = 1,
    /// RoPE positions renumbered: every output row gets its row index.
    RopeRenumbered = 2,
}

/// Split the candidates into `layout.sources` sources and the remaining targets by score (the
/// highest discarded, or with `keep_high` the highest kept), and lay out the output sequence:
/// survivors in input order with the new tokens at `span_end`. Also writes the output tokens'
/// positions (see [`PositionKind`]).
#[allow(clippy::too_many_arguments)]
pub fn split_tokens<'a>(
    b: &mut Batch,
    scores: &Tensor,
    cand: &Candidates,
    layout: &Layout,
    positions: &Tensor,
    plan: &'a Tensor,
    positions_out: &Tensor,
) -> Result<Split<'a>> {
    let np = cand.len();
    let n_out = cand.n + layout.new_tokens - layout.sources.min(cand.n);
    expect_shape("scores", scores, &[np])?;
    expect_shape("positions", positions, &[cand.n])?;
    expect_shape("output positions", positions_out, &[n_out])?;
    if plan.dtype() != DType::U32 || plan.numel() < plan_words(cand.n) {
        return Err(Error::shape(
            "reduction plan",
            format!("u32 [{}]", plan_words(cand.n)),
            format!("{plan:?}"),
        ));
    }
    if layout.sources > np
        || layout.new_tokens > layout.sources
        || layout.span_end > cand.n
        || (layout.recycled > 0 && (!layout.keep_high || layout.recycled > layout.sources))
    {
        return Err(Error::InvalidArgument(format!(
            "cannot split {np} candidate tokens as {layout:?}"
        )));
    }
    let p = Params {
        n_src: layout.sources as u32,
        keep_high: u32::from(layout.keep_high),
        n_new: layout.new_tokens as u32,
        span_end: layout.span_end as u32,
        n_recycle: layout.recycled as u32,
        positions_mode: layout.positions as u32,
        ..cand.params()
    };
    b.dispatch(
        &kernel(FILTER, "split_tokens", "E_SPLIT"),
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
        cand: cand.clone(),
        n: cand.n,
        sources: layout.sources,
        targets: np - layout.sources,
        new_tokens: layout.new_tokens,
        recycled: layout.recycled,
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
    /// The indirect term is `sum over text k of A[i, k] A[k, j]` instead.
    pub path: bool,
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
        path: u32::from(c.path),
        ..Params::default()
    };
    let g = b
        .gpu()
        .grid(((split.sources * split.targets) as u32).div_ceil(64));
    b.dispatch(
        &kernel(CORRELATE, "correlate", "E_CORRELATE"),
        &p,
        &[Bind::R(attn), Bind::W(corr), Bind::R(split.plan)],
        g,
    )
}

/// A list of tokens of the plan, for [`metric_pairs`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenList {
    Sources,
    Targets,
    /// Sources `0, stride, 2 stride, ...`.
    EverySource(usize),
    Recycled,
}

impl TokenList {
    fn code(self) -> (u32, u32) {
        match self {
            TokenList::Sources => (0, 0),
            TokenList::Targets => (1, 0),
            TokenList::EverySource(s) => (2, s as u32),
            TokenList::Recycled => (3, 0),
        }
    }
}

/// How two metric rows compare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Measure {
    Cosine,
    /// `|M_i - M_j| / sqrt(dk)` (SparseVLM's DPC-KNN distance).
    Distance,
}

/// `out [nr, nc]`: the metric measure between each token of `rows` and each of `cols` (after
/// [`metric_stats`]). With `bipartite`, columns of ToMe's set A (even candidate positions) get
/// the lowest f32 so that only set B can be chosen.
#[allow(clippy::too_many_arguments)]
pub fn metric_pairs(
    b: &mut Batch,
    metric: &Tensor,
    norms: &Tensor,
    split: &Split,
    rows: TokenList,
    cols: TokenList,
    measure: Measure,
    bipartite: bool,
    out: &Tensor,
) -> Result<()> {
    let (n, dk) = dims2("metric", metric)?;
    if n != split.n {
        return Err(Error::shape("metric", format!("{} rows", split.n), n));
    }
    let (nr, nc) = dims2("metric pairs", out)?;
    let stride = match (rows, cols) {
        (TokenList::EverySource(s), _) | (_, TokenList::EverySource(s)) => s,
        _ => 0,
    };
    let (rows, _) = rows.code();
    let (cols, _) = cols.code();
    let p = Params {
        dk: dk as u32,
        mode: u32::from(measure == Measure::Distance),
        rows,
        cols,
        nr: nr as u32,
        nc: nc as u32,
        stride: stride as u32,
        bipartite: u32::from(bipartite),
        ..split.cand.params()
    };
    let g = b.gpu().grid(((nr * nc) as u32).div_ceil(64));
    b.dispatch(
        &kernel(CORRELATE, "metric_pairs", "E_PAIRS"),
        &p,
        &[
            Bind::R(metric),
            Bind::R(norms),
            Bind::R(split.plan),
            Bind::W(out),
        ],
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
    /// One count for every source: the entries strictly above the `eps`-quantile of a row of
    /// the candidate span's length, `len - 1 - floor(eps (len - 1))` (the FiCoCo authors' code,
    /// which takes the largest such count over the sources' full rows: the same without ties).
    /// The step resolves it to [`TargetRule::TopK`] with [`TargetRule::for_row`].
    SharedQuantile(f32),
}

impl TargetRule {
    /// The rule for a step whose candidate span holds `len` tokens.
    pub fn for_row(self, len: usize) -> TargetRule {
        match self {
            TargetRule::SharedQuantile(eps) if len > 0 => {
                let above = (eps as f64 * (len - 1) as f64).floor() as usize;
                TargetRule::TopK(len - 1 - above.min(len - 1))
            }
            TargetRule::SharedQuantile(_) => TargetRule::TopK(0),
            rule => rule,
        }
    }
}

/// `weights [ns, nt]`: the merge weight of each source into each target (0 if none). With
/// `convergent`, each target picks its sources from its column instead; with `average`, every
/// member weighs 1.
#[allow(clippy::too_many_arguments)]
pub fn assign_targets(
    b: &mut Batch,
    corr: &Tensor,
    rule: TargetRule,
    convergent: bool,
    average: bool,
    softmax: bool,
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
        softmax: u32::from(softmax),
        ..Params::default()
    };
    let sort_n = len.next_power_of_two().max(256);
    match rule {
        TargetRule::Quantile(eps) => {
            p.fixed_k = NONE;
            p.eps = eps;
        }
        TargetRule::TopK(k) => p.fixed_k = k as u32,
        TargetRule::SharedQuantile(_) => {
            return Err(Error::InvalidArgument(
                "a shared-quantile target rule needs the row length: use TargetRule::for_row"
                    .into(),
            ))
        }
    }
    if rows == 0 || len == 0 {
        return Ok(());
    }
    let k = kernel(CORRELATE, "assign_targets", "E_ASSIGN").define("SORT_N", format!("{sort_n}u"));
    let g = b.gpu().grid(rows as u32);
    b.dispatch(&k, &p, &[Bind::R(corr), Bind::W(weights)], g)
}

/// How sources are grouped into the split's new tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceGroups {
    /// Every source into new token 0 (EViT's fused token).
    One,
    /// The `k x k` cell of the `grid x grid` patch grid holding the source (raster order).
    Windows { grid: usize, k: usize },
    /// Sources `t * stride` (t < new tokens) are centres; every other source joins the centre
    /// with the highest `pairs [ns, new tokens]` entry (ties: lower t).
    Nearest { stride: usize },
}

/// `group[a]` of each source (plan region 5) for [`compress_new`].
pub fn group_sources(
    b: &mut Batch,
    split: &Split,
    groups: SourceGroups,
    positions: &Tensor,
    pairs: Option<&Tensor>,
) -> Result<()> {
    expect_shape("positions", positions, &[split.n])?;
    let mut p = Params {
        ns: split.sources as u32,
        count: split.new_tokens as u32,
        ..split.cand.params()
    };
    let pairs = match groups {
        SourceGroups::One => positions,
        SourceGroups::Windows { grid, k } => {
            if k == 0 || grid % k != 0 {
                return Err(Error::InvalidArgument(format!(
                    "{k} x {k} windows do not tile a {grid} x {grid} grid"
                )));
            }
            (p.mode, p.grid, p.window) = (1, grid as u32, k as u32);
            positions
        }
        SourceGroups::Nearest { stride } => {
            let pairs = pairs.ok_or_else(|| {
                Error::InvalidArgument("nearest-centre groups need the pair similarities".into())
            })?;
            expect_shape(
                "centre similarities",
                pairs,
                &[split.sources, split.new_tokens],
            )?;
            if stride == 0 || stride * split.new_tokens.saturating_sub(1) >= split.sources {
                return Err(Error::InvalidArgument(format!(
                    "centre stride {stride} for {} sources",
                    split.sources
                )));
            }
            (p.mode, p.stride) = (2, stride as u32);
            pairs
        }
    };
    let g = b.gpu().grid((split.sources as u32).div_ceil(64));
    b.dispatch(
        &kernel(CORRELATE, "group_sources", "E_GROUP"),
        &p,
        &[Bind::W(split.plan), Bind::R(positions), Bind::R(pairs)],
        g,
    )
}

/// DPC-KNN without noise over the split's recycled sources (SparseVLM): densities from the `knn`
/// nearest distances in `dist [q, q]` (from [`metric_pairs`] with [`Measure::Distance`]),
/// the split's new-token count of density-peak centres, each recycled source grouped with its
/// nearest centre; new tokens ordered by centre. `aux` holds at least `3 q` floats of scratch.
pub fn density_peaks(
    b: &mut Batch,
    dist: &Tensor,
    split: &Split,
    knn: usize,
    aux: &Tensor,
) -> Result<()> {
    let q = split.recycled;
    expect_shape("recycled distances", dist, &[q, q])?;
    if aux.numel() < 3 * q || knn > MAX_DPC_KNN || split.new_tokens > q {
        return Err(Error::InvalidArgument(format!(
            "density peaks: {} centres among {q} points, {knn} neighbours (at most {MAX_DPC_KNN})",
            split.new_tokens
        )));
    }
    let p = Params {
        n: split.n as u32,
        nr: q as u32,
        knn: knn as u32,
        count: split.new_tokens as u32,
        ..Params::default()
    };
    let g = b.gpu().grid((q as u32).div_ceil(64));
    for entry in ["dpc_density", "dpc_peaks", "dpc_centres", "dpc_assign"] {
        b.dispatch(
            &kernel(CORRELATE, entry, "E_DPC"),
            &p,
            &[Bind::R(dist), Bind::W(aux), Bind::W(split.plan)],
            g,
        )?;
    }
    Ok(())
}

/// How the compress weighs a token and what it merges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Weighting {
    /// The receiving token weighs its own filter score instead of 1.
    pub score_self: bool,
    /// Merged tokens weigh their filter scores instead of their assignment weights (or 1).
    pub score_members: bool,
    /// Divide by the sum of the weights (otherwise a plain weighted sum: EViT's fused token).
    pub normalise: bool,
}

impl Weighting {
    fn apply(self, p: &mut Params) {
        p.score_self = u32::from(self.score_self);
        p.score_members = u32::from(self.score_members);
        p.normalise = u32::from(self.normalise);
    }
}

/// How a compress merges: `weights [ns, nt]` (`None` prunes), their [`Weighting`], and the
/// token sizes `[n]` carried from earlier steps (ToMe: every weight is multiplied by its
/// token's size and the output sizes add up; 1 each when `None`).
#[derive(Clone, Copy, Debug)]
pub struct Merge<'a> {
    pub weights: Option<&'a Tensor>,
    pub weighting: Weighting,
    pub sizes: Option<&'a Tensor>,
}

/// Write the kept rows of the reduced sequence in plan order, each target updated by its
/// sources, `(u_j X_j + sum m X_i) / (u_j + sum m)` (see [`Merge`]). `scores` are the filter
/// scores (read with score weighting); `sizes [n_out]` gets the tokens each output row stands
/// for (`1 +` the merged sources without carried sizes). New rows are written by
/// [`compress_new`].
pub fn compress(
    b: &mut Batch,
    hidden: &Tensor,
    split: &Split,
    merge: &Merge,
    scores: &Tensor,
    out: &Tensor,
    sizes: &Tensor,
) -> Result<()> {
    let (d, n_out) = compress_shapes(hidden, split, scores, out, sizes)?;
    if let Some(z) = merge.sizes {
        expect_shape("carried token sizes", z, &[split.n])?;
    }
    let (ns, w) = match merge.weights {
        Some(w) => {
            expect_shape("merge weights", w, &[split.sources, split.targets])?;
            (split.sources, w)
        }
        // Nothing is read from the weights when no source merges; bind any read-only tensor.
        None => (0, hidden),
    };
    let mut p = Params {
        d: d as u32,
        ns: ns as u32,
        nt: split.targets as u32,
        ..split.cand.params()
    };
    merge.weighting.apply(&mut p);
    let g = b.gpu().grid(n_out as u32);
    let mut binds = vec![
        Bind::R(hidden),
        Bind::W(out),
        Bind::R(split.plan),
        Bind::R(w),
        Bind::R(scores),
        Bind::W(sizes),
    ];
    binds.extend(merge.sizes.map(Bind::R));
    let k =
        kernel(COMPRESS, "compress", "E_COMPRESS").flag_if("CARRIED_SIZES", merge.sizes.is_some());
    b.dispatch(&k, &p, &binds, g)
}

/// Width and output rows of a compress, after checking every tensor against the split.
fn compress_shapes(
    hidden: &Tensor,
    split: &Split,
    scores: &Tensor,
    out: &Tensor,
    sizes: &Tensor,
) -> Result<(usize, usize)> {
    let (n, d) = dims2("hidden", hidden)?;
    if n != split.n {
        return Err(Error::shape("hidden", format!("{} rows", split.n), n));
    }
    let n_out = n + split.new_tokens - split.sources;
    expect_shape("reduced hidden", out, &[n_out, d])?;
    expect_shape("token sizes", sizes, &[n_out])?;
    expect_shape("scores", scores, &[split.cand.len()])?;
    Ok((d, n_out))
}

/// Write the split's new tokens: each the weighted sum (mean, with `normalise` and unit
/// weights) of the sources grouped into it; `sizes` gets the member counts.
pub fn compress_new(
    b: &mut Batch,
    hidden: &Tensor,
    split: &Split,
    weighting: Weighting,
    scores: &Tensor,
    out: &Tensor,
    sizes: &Tensor,
) -> Result<()> {
    let (d, _) = compress_shapes(hidden, split, scores, out, sizes)?;
    if split.new_tokens == 0 {
        return Ok(());
    }
    let mut p = Params {
        d: d as u32,
        ns: split.sources as u32,
        ..split.cand.params()
    };
    weighting.apply(&mut p);
    let g = b.gpu().grid(split.new_tokens as u32);
    // The weights binding is unread for new tokens; any read-only tensor fills it.
    b.dispatch(
        &kernel(COMPRESS, "compress_new", "E_COMPRESS").flag("NEW_TOKENS"),
        &p,
        &[
            Bind::R(hidden),
            Bind::W(out),
            Bind::R(split.plan),
            Bind::R(split.plan),
            Bind::R(scores),
            Bind::W(sizes),
        ],
        g,
    )
}

/// Where the sources of a step went, for [`route_tokens`].
#[derive(Clone, Copy, Debug)]
pub enum SourceFate<'a> {
    /// Pruned: they leave the sequence.
    Pruned,
    /// Merged into targets with these weights `[sources, targets]`.
    Merged(&'a Tensor),
    /// Grouped into the split's new tokens (plan region 5).
    Grouped,
}

/// `route [n]` (i32) after a step whose plan is `plan` (of an `n`-token input): each input
/// token's output row (its own if it survived, the new token it was grouped into, or the
/// target it gave the largest merge weight), -1 if it was pruned. `weights` is any f32 tensor
/// unless merged.
pub fn route_tokens(
    b: &mut Batch,
    plan: &Tensor,
    n: usize,
    fate: SourceFate,
    any: &Tensor,
    route: &Tensor,
) -> Result<()> {
    expect_shape("token routes", route, &[n])?;
    if plan.dtype() != DType::U32 || plan.numel() < plan_words(n) || route.dtype() != DType::I32 {
        return Err(Error::shape(
            "reduction plan and routes",
            format!("u32 [{}] and i32 [{n}]", plan_words(n)),
            format!("{plan:?} and {route:?}"),
        ));
    }
    let (mode, weights) = match fate {
        SourceFate::Pruned => (0, any),
        SourceFate::Merged(w) => (1, w),
        SourceFate::Grouped => (2, any),
    };
    let p = Params {
        n: n as u32,
        mode,
        ..Params::default()
    };
    let g = b.gpu().grid((n as u32).div_ceil(64));
    b.dispatch(
        &kernel(COMPRESS, "route_tokens", "E_ROUTE"),
        &p,
        &[Bind::R(plan), Bind::R(weights), Bind::W(route)],
        g,
    )
}

/// `owner[q] = route[owner[q]]` for every entry of `owner` (i32; -1 stays -1): follow each
/// patch's owning token through one step routed by [`route_tokens`].
pub fn compose_routes(b: &mut Batch, route: &Tensor, owner: &Tensor) -> Result<()> {
    if route.dtype() != DType::I32 || owner.dtype() != DType::I32 {
        return Err(Error::InvalidArgument(format!(
            "compose_routes takes i32 tensors, not {route:?} and {owner:?}"
        )));
    }
    let count = owner.numel();
    let p = Params {
        count: count as u32,
        ..Params::default()
    };
    let g = b.gpu().grid((count as u32).div_ceil(64).max(1));
    b.dispatch(
        &kernel(COMPRESS, "compose_routes", "E_COMPOSE"),
        &p,
        &[Bind::R(route), Bind::W(owner)],
        g,
    )
}
