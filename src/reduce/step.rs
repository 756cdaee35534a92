//! Running one [`Reduction`] on the GPU: the stage kernels of [`crate::ops::reduce`] recorded
//! into a batch, with scratch allocated once for the longest sequence. Nothing is read back
//! inside a step; the one CPU-computed input is the random filter's permutation, which depends
//! only on its seed and the candidate count and is uploaded once per pair.

use super::random::numpy_permutation;
use super::stages::{Compress, Correlate, Filter, Grouping, Reduction, Rows, Score};
use crate::gpu::{Batch, DType, Gpu, Tensor};
use crate::ops::reduce::{
    self as k, Candidates, Correlation, Layout, Measure, PositionKind, ScoreTerm, Similarity,
    SourceGroups, Split, TokenList, Weighting,
};
use crate::{Error, Result};
use std::collections::HashMap;
use std::ops::Range;
use std::sync::Mutex;

/// `kept` of an output row that is a new token (EViT's fused token, VisionZip's contextual
/// tokens, SparseVLM's recycled clusters, pooling windows); its position is -1.
pub const NEW_TOKEN: u32 = u32::MAX;

/// Where things are in the sequence a step reduces.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Spans {
    /// The [CLS] token, never discarded.
    pub cls: Option<usize>,
    /// The visual tokens (the candidates); `None` means the whole sequence.
    pub visual: Option<Range<usize>>,
    /// The text (question) tokens, for task-aware scores and correlations.
    pub text: Option<Range<usize>>,
    /// Side of the square patch grid the positions index, for the local penalty and pooling.
    pub grid: Option<usize>,
    /// What the positions are: grid indices (vision), RoPE positions kept or renumbered (LLM).
    pub positions: PositionKind,
}

/// What one step reads, row `i` of each tensor belonging to token `i` of `n`.
#[derive(Clone, Copy)]
pub struct StepInput<'a> {
    /// `[n, d]`: the sequence to reduce.
    pub hidden: &'a Tensor,
    /// `[n, dk]`: the similarity metric of ToMe, PruMerge, VisionZip, SparseVLM's clusters and
    /// FiCoCo-V without [CLS] (the hidden states when `None`).
    pub keys: Option<&'a Tensor>,
    /// `[n, n]`: head-averaged attention probabilities, row = query.
    pub attn: &'a Tensor,
    /// `[n]` i32: grid indices (-1 for [CLS]) or RoPE positions.
    pub positions: &'a Tensor,
    /// `[n]`: how many original tokens each token stands for (ToMe's sizes, carried across
    /// steps); all 1 when `None`. Only a size-weighted compress reads them.
    pub sizes: Option<&'a Tensor>,
}

/// Scratch for reduction steps over sequences of up to `max_tokens`.
pub struct ReductionStep {
    max_tokens: usize,
    raw: Tensor,
    scores: Tensor,
    plan: Tensor,
    corr: Tensor,
    weights: Tensor,
    /// Inverse metric norms `[n]`.
    norms: Tensor,
    /// SparseVLM's rater weights `[n]`.
    row_weights: Tensor,
    /// Density-peak scratch `[3 n]`.
    aux: Tensor,
    /// Token sizes of the output `[n]`.
    sizes: Tensor,
    /// The candidates' mean metric row, sized by the metric width on first use.
    mean: Mutex<Option<Tensor>>,
    /// Uploaded random permutations by (seed, candidates).
    permutations: Mutex<HashMap<(u32, usize), Tensor>>,
    /// What the last recorded step did with its sources, for [`Self::record_routes`].
    last: Mutex<Option<LastStep>>,
}

/// The last recorded step as [`ReductionStep::record_routes`] and
/// [`ReductionStep::record_again`] need it.
#[derive(Clone, Debug)]
struct LastStep {
    n: usize,
    fate: Fate,
    cand: Candidates,
    sources: usize,
    targets: usize,
    new_tokens: usize,
    recycled: usize,
    weighting: Weighting,
    sizes: Option<Tensor>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Pruned,
    /// Merged into the targets with the weights scratch viewed as `[ns, nt]`.
    Merged {
        ns: usize,
        nt: usize,
    },
    Grouped,
}

impl ReductionStep {
    pub fn new(gpu: &Gpu, max_tokens: usize) -> Result<Self> {
        let n = max_tokens.max(1);
        // ns * nt <= (n / 2)^2 since ns + nt <= n.
        let pairs = (n / 2 + 1) * (n / 2 + 1);
        Ok(ReductionStep {
            max_tokens: n,
            raw: gpu.zeros(&[n], DType::F32, "reduce raw scores")?,
            scores: gpu.zeros(&[n], DType::F32, "reduce scores")?,
            plan: gpu.zeros(&[k::plan_words(n)], DType::U32, "reduce plan")?,
            corr: gpu.zeros(&[pairs], DType::F32, "reduce correlation")?,
            weights: gpu.zeros(&[pairs], DType::F32, "reduce merge weights")?,
            norms: gpu.zeros(&[n], DType::F32, "reduce metric norms")?,
            row_weights: gpu.zeros(&[n], DType::F32, "reduce row weights")?,
            aux: gpu.zeros(&[3 * n], DType::F32, "reduce density peaks")?,
            sizes: gpu.zeros(&[n], DType::F32, "reduce token sizes")?,
            mean: Mutex::new(None),
            permutations: Mutex::new(HashMap::new()),
            last: Mutex::new(None),
        })
    }

    /// The longest sequence this scratch takes.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// The plan of the last step (layout in `shaders/reduce_common.wgsl`): `kept` of output row r is
    /// word `3 n + r` ([`NEW_TOKEN`] for a new token).
    pub fn plan(&self) -> &Tensor {
        &self.plan
    }

    /// Filter scores of the last step's candidates (after the local penalty), `[candidates]`.
    pub fn scores(&self, candidates: usize) -> Tensor {
        self.scores.view(&[candidates])
    }

    /// Sizes of the last step's output tokens, `[n_out]`: `1 +` the sources merged into a kept
    /// token, the member count of a new token (ToMe's sizes, starting at 1 in every step).
    pub fn sizes(&self, n_out: usize) -> Tensor {
        self.sizes.view(&[n_out])
    }

    /// Record, after the last [`Self::record`] in the same batch, `route [n]` (i32, `n` that
    /// step's input length): each input token's output row (its own if it survived, the
    /// target it gave its largest merge weight, or the new token it was grouped into), -1 if
    /// it was pruned. Merge attribution; nothing else reads it.
    pub fn record_routes(&self, b: &mut Batch, route: &Tensor) -> Result<()> {
        let last = self.last_step("record_routes")?;
        let weights;
        let fate = match last.fate {
            Fate::Pruned => k::SourceFate::Pruned,
            Fate::Grouped => k::SourceFate::Grouped,
            Fate::Merged { ns, nt } => {
                weights = self.weights.view(&[ns, nt]);
                k::SourceFate::Merged(&weights)
            }
        };
        k::route_tokens(b, &self.plan, last.n, fate, &self.weights, route)
    }

    /// Record, after the last [`Self::record`] in the same batch, the same compression of
    /// another tensor aligned with that step's input, `hidden [n, d']` into `out [n_out, d']`:
    /// the same kept rows, merge weights and new tokens (the values of a key/value cache whose
    /// keys the step reduced).
    pub fn record_again(&self, b: &mut Batch, hidden: &Tensor, out: &Tensor) -> Result<()> {
        let last = self.last_step("record_again")?;
        if hidden.shape().first() != Some(&last.n) {
            return Err(Error::shape(
                "tensor to compress again",
                format!("[{}, d]", last.n),
                format!("{:?}", hidden.shape()),
            ));
        }
        let split = Split {
            plan: &self.plan,
            cand: last.cand.clone(),
            n: last.n,
            sources: last.sources,
            targets: last.targets,
            new_tokens: last.new_tokens,
            recycled: last.recycled,
        };
        let n_out = out.shape()[0];
        let scores = self.scores.view(&[last.cand.len()]);
        let sizes = self.sizes.view(&[n_out]);
        let weights = match last.fate {
            Fate::Merged { ns, nt } => Some(self.weights.view(&[ns, nt])),
            _ => None,
        };
        let merge = k::Merge {
            weights: weights.as_ref(),
            weighting: last.weighting,
            sizes: last.sizes.as_ref(),
        };
        k::compress(b, hidden, &split, &merge, &scores, out, &sizes)?;
        if last.fate == Fate::Grouped {
            k::compress_new(b, hidden, &split, last.weighting, &scores, out, &sizes)?;
        }
        Ok(())
    }

    fn last_step(&self, caller: &str) -> Result<LastStep> {
        self.last.lock().unwrap().clone().ok_or_else(|| {
            Error::InvalidArgument(format!("{caller} needs a recorded reduction step"))
        })
    }

    /// Record one step: `input` (n tokens) becomes `out [n - drop, d]` and `positions_out
    /// [n - drop]`.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        b: &mut Batch,
        r: &Reduction,
        spans: &Spans,
        input: &StepInput,
        drop: usize,
        out: &Tensor,
        positions_out: &Tensor,
    ) -> Result<()> {
        let StepInput {
            hidden,
            keys,
            attn,
            positions,
            sizes: sizes_in,
        } = *input;
        let n = hidden.shape()[0];
        if let Some(z) = sizes_in {
            if z.shape() != [n] {
                return Err(Error::shape(
                    "token sizes",
                    format!("[{n}]"),
                    format!("{:?}", z.shape()),
                ));
            }
        }
        if n > self.max_tokens {
            return Err(Error::InvalidArgument(format!(
                "{n} tokens exceed the reduction scratch of {}",
                self.max_tokens
            )));
        }
        let cand = Candidates {
            n,
            span: spans.visual.clone().unwrap_or(0..n),
            cls: spans.cls,
        };
        if cand.span.end > n || spans.cls.is_some_and(|c| c >= n) {
            return Err(Error::InvalidArgument(format!(
                "spans {spans:?} do not fit {n} tokens"
            )));
        }
        let np = cand.len();
        if drop > np {
            return Err(Error::InvalidArgument(format!(
                "cannot drop {drop} tokens: only {np} are candidates (visual, not [CLS])"
            )));
        }
        let metric = match keys {
            Some(keys) => {
                if keys.shape().len() != 2 || keys.shape()[0] != n {
                    return Err(Error::shape(
                        "keys",
                        format!("[{n}, dk]"),
                        format!("{:?}", keys.shape()),
                    ));
                }
                keys
            }
            None => hidden,
        };
        let new_tokens = r.correlate.new_tokens(np, drop, spans.grid)?;
        let sources = drop + new_tokens;
        if sources > np {
            return Err(Error::InvalidArgument(format!(
                "cannot drop {drop} tokens and create {new_tokens}: only {np} are candidates"
            )));
        }
        let recycled = match &r.correlate {
            Correlate::Group(g) => g.recycled(sources),
            _ => 0,
        };
        check_method(r, np, drop, new_tokens, recycled)?;

        // Filter.
        let needs_mean = spans.cls.is_none() && r.filter.has(Score::ClsOrEquivalent);
        let mean = match needs_mean {
            true => Some(self.mean_scratch(b.gpu(), metric.shape()[1])?),
            false => None,
        };
        if r.uses_metric(spans.cls.is_some()) {
            k::metric_stats(b, metric, &cand, &self.norms.view(&[n]), mean.as_ref())?;
        }
        let keep_high = self.filter(b, r, spans, &cand, attn, metric, mean.as_ref(), positions)?;
        let layout = Layout {
            sources,
            keep_high,
            new_tokens,
            span_end: cand.span.end,
            recycled,
            positions: spans.positions,
        };
        let split = k::split_tokens(
            b,
            &self.scores.view(&[np]),
            &cand,
            &layout,
            positions,
            &self.plan,
            positions_out,
        )?;

        // Correlate and compress.
        let (ns, nt) = (split.sources, split.targets);
        let n_out = n - drop;
        let scores = self.scores.view(&[np]);
        let sizes = self.sizes.view(&[n_out]);
        // The equivalent token's cosines are no attention weights: average instead.
        let by_cosine = spans.cls.is_none() && r.filter.has(Score::ClsOrEquivalent);
        let weighting = weighting(r.compress, by_cosine);
        let average = !matches!(r.compress, Compress::SelfPreserving | Compress::Additive);
        let norms = self.norms.view(&[n]);
        // Only ToMe's size-weighted average reads the sizes carried from earlier steps.
        let sizes_in = sizes_in.filter(|_| r.compress == Compress::SizeWeighted);
        let merge = |b: &mut Batch, weights: Option<&Tensor>| {
            let w = k::Merge {
                weights,
                weighting,
                sizes: sizes_in,
            };
            k::compress(b, hidden, &split, &w, &scores, out, &sizes)
        };
        let fate = match &r.correlate {
            Correlate::Attention { .. } | Correlate::Similarity { .. } if ns > 0 && nt > 0 => {
                Fate::Merged { ns, nt }
            }
            Correlate::Group(_) => Fate::Grouped,
            _ => Fate::Pruned,
        };
        *self.last.lock().unwrap() = Some(LastStep {
            n,
            fate,
            cand: cand.clone(),
            sources: ns,
            targets: nt,
            new_tokens: split.new_tokens,
            recycled: split.recycled,
            weighting,
            sizes: sizes_in.cloned(),
        });
        match &r.correlate {
            Correlate::Attention {
                direct,
                symmetric,
                indirect,
                path,
                softmax,
                targets,
                convergent,
            } if ns > 0 && nt > 0 => {
                let text = match (spans.text.clone(), *indirect != 0.0) {
                    (Some(t), _) => t,
                    (None, false) => 0..0,
                    (None, true) => {
                        return Err(Error::InvalidArgument(
                            "text-mediated correlation needs the text span (--text)".into(),
                        ))
                    }
                };
                let c = Correlation {
                    direct: *direct,
                    symmetric: *symmetric,
                    indirect: *indirect,
                    text,
                    path: *path,
                };
                let corr = self.corr.view(&[ns, nt]);
                let weights = self.weights.view(&[ns, nt]);
                k::correlate(b, attn, &split, &c, &corr)?;
                let rule = targets.for_row(cand.span.len());
                k::assign_targets(b, &corr, rule, *convergent, average, *softmax, &weights)?;
                merge(b, Some(&weights))
            }
            Correlate::Similarity {
                targets,
                convergent,
                bipartite,
            } if ns > 0 && nt > 0 => {
                let corr = self.corr.view(&[ns, nt]);
                let weights = self.weights.view(&[ns, nt]);
                k::metric_pairs(
                    b,
                    metric,
                    &norms,
                    &split,
                    TokenList::Sources,
                    TokenList::Targets,
                    Measure::Cosine,
                    *bipartite,
                    &corr,
                )?;
                let rule = targets.for_row(cand.span.len());
                k::assign_targets(b, &corr, rule, *convergent, average, false, &weights)?;
                merge(b, Some(&weights))
            }
            Correlate::Group(g) => {
                if new_tokens > 0 {
                    self.group(b, g, &split, metric, &norms, positions, spans)?;
                }
                merge(b, None)?;
                k::compress_new(b, hidden, &split, weighting, &scores, out, &sizes)
            }
            _ => merge(b, None),
        }
    }

    /// Write the filter scores; returns whether the highest are kept (importance).
    #[allow(clippy::too_many_arguments)]
    fn filter(
        &self,
        b: &mut Batch,
        r: &Reduction,
        spans: &Spans,
        cand: &Candidates,
        attn: &Tensor,
        metric: &Tensor,
        mean: Option<&Tensor>,
        positions: &Tensor,
    ) -> Result<bool> {
        let np = cand.len();
        let scores = self.scores.view(&[np]);
        let score = |b: &mut Batch, terms: &[(Score, f32)], normalise: bool, into: &Tensor| {
            self.score(b, terms, normalise, spans, cand, attn, metric, mean, into)
        };
        match &r.filter {
            Filter::All => {
                k::score_tokens(b, attn, cand, &[], None, false, &scores)?;
                Ok(true)
            }
            Filter::Importance { score: s } => {
                score(b, &[(*s, 1.0)], false, &scores)?;
                Ok(true)
            }
            Filter::Redundancy {
                terms,
                local_penalty,
                normalise,
            } => {
                match local_penalty {
                    Some(lp) => {
                        let grid = spans.grid.ok_or_else(|| {
                            Error::InvalidArgument(
                                "the local penalty needs the patch grid side (--grid)".into(),
                            )
                        })?;
                        let raw = self.raw.view(&[np]);
                        score(b, terms, *normalise, &raw)?;
                        k::local_penalty(
                            b, &raw, positions, cand, grid, lp.window, lp.coef, &scores,
                        )?;
                    }
                    None => score(b, terms, *normalise, &scores)?,
                }
                Ok(false)
            }
        }
    }

    /// `into[c] = sum of the weighted score terms` for each candidate (each L2-normalised over
    /// the candidates first with `normalise`).
    #[allow(clippy::too_many_arguments)]
    fn score(
        &self,
        b: &mut Batch,
        terms: &[(Score, f32)],
        normalise: bool,
        spans: &Spans,
        cand: &Candidates,
        attn: &Tensor,
        metric: &Tensor,
        mean: Option<&Tensor>,
        into: &Tensor,
    ) -> Result<()> {
        let n = cand.n;
        let mut attention = Vec::new();
        let mut similarity = Vec::new();
        for &(score, weight) in terms {
            match score {
                Score::Attention(rows) => attention.push(score_term(rows, weight, spans, cand)?),
                Score::Attends { to, sum } => {
                    let mut t = score_term(to, weight, spans, cand)?;
                    let cls_inside = spans.cls.is_some_and(|c| t.rows.contains(&c));
                    let columns = t.rows.len() - usize::from(cls_inside);
                    t.divisor = if sum { 1.0 } else { columns.max(1) as f32 };
                    t.along_rows = true;
                    attention.push(t);
                }
                Score::ClsOrEquivalent => {
                    match spans.cls {
                        Some(_) => attention.push(score_term(Rows::Cls, weight, spans, cand)?),
                        None if normalise => return Err(Error::Unsupported(
                            "the FiCoCo authors' reading scores with [CLS] attention and their \
                             code has no reading for towers without [CLS] (SigLIP): use \
                             ficoco-v, which takes the equivalent token there"
                                .into(),
                        )),
                        // a_i = -cos(mu, M_i) replaces A[cls, i].
                        None => similarity.push((Similarity::ToMean, -weight)),
                    }
                }
                Score::Bipartite => similarity.push((Similarity::Bipartite, weight)),
                Score::Random { seed } => {
                    if terms.len() != 1 {
                        return Err(Error::InvalidArgument(
                            "a random score cannot be combined with other terms".into(),
                        ));
                    }
                    if cand.is_empty() {
                        return Ok(());
                    }
                    let places = self.permutation(b.gpu(), seed, cand.len())?;
                    return b.copy(&places, into);
                }
            }
        }
        let row_weights = self.row_weights.view(&[n]);
        match attention.iter().filter(|t| t.weighted).count() {
            0 => {}
            1 => {
                let text = spans.text.clone().ok_or_else(|| {
                    Error::InvalidArgument(
                        "scoring by the raters needs the text span (--text)".into(),
                    )
                })?;
                k::rate_rows(b, attn, cand, text, &row_weights)?;
            }
            _ => {
                return Err(Error::InvalidArgument(
                    "at most one rater-weighted score term".into(),
                ))
            }
        }
        k::score_tokens(
            b,
            attn,
            cand,
            &attention,
            Some(&row_weights),
            normalise,
            into,
        )?;
        let norms = self.norms.view(&[n]);
        for (sim, weight) in similarity {
            k::score_similarity(b, metric, &norms, mean, cand, sim, weight, into)?;
        }
        Ok(())
    }

    /// Group the sources into the split's new tokens.
    #[allow(clippy::too_many_arguments)]
    fn group(
        &self,
        b: &mut Batch,
        g: &Grouping,
        split: &Split,
        metric: &Tensor,
        norms: &Tensor,
        positions: &Tensor,
        spans: &Spans,
    ) -> Result<()> {
        let (ns, c) = (split.sources, split.new_tokens);
        match *g {
            Grouping::One => k::group_sources(b, split, SourceGroups::One, positions, None),
            Grouping::Windows { k: side } => {
                let grid = spans.grid.ok_or_else(|| {
                    Error::InvalidArgument("pooling needs the patch grid side (--grid)".into())
                })?;
                let groups = SourceGroups::Windows { grid, k: side };
                k::group_sources(b, split, groups, positions, None)
            }
            Grouping::Spaced { .. } => {
                let stride = ns / c;
                let pairs = self.pairs(ns, c)?;
                k::metric_pairs(
                    b,
                    metric,
                    norms,
                    split,
                    TokenList::Sources,
                    TokenList::EverySource(stride),
                    Measure::Cosine,
                    false,
                    &pairs,
                )?;
                let groups = SourceGroups::Nearest { stride };
                k::group_sources(b, split, groups, positions, Some(&pairs))
            }
            Grouping::DensityPeaks { knn, .. } => {
                let q = split.recycled;
                let dist = self.pairs(q, q)?;
                k::metric_pairs(
                    b,
                    metric,
                    norms,
                    split,
                    TokenList::Recycled,
                    TokenList::Recycled,
                    Measure::Distance,
                    false,
                    &dist,
                )?;
                k::density_peaks(b, &dist, split, knn, &self.aux)
            }
        }
    }

    /// The correlation scratch viewed as `[rows, cols]`.
    fn pairs(&self, rows: usize, cols: usize) -> Result<Tensor> {
        if rows * cols > self.corr.numel() {
            return Err(Error::Unsupported(format!(
                "{rows} x {cols} token pairs exceed the reduction scratch of {}",
                self.corr.numel()
            )));
        }
        Ok(self.corr.view(&[rows, cols]))
    }

    fn mean_scratch(&self, gpu: &Gpu, dk: usize) -> Result<Tensor> {
        let mut mean = self.mean.lock().unwrap();
        if mean.as_ref().is_none_or(|m| m.numel() < dk) {
            let len = dk.max(1).next_power_of_two();
            *mean = Some(gpu.zeros(&[len], DType::F32, "reduce metric mean")?);
        }
        Ok(mean.as_ref().unwrap().view(&[dk]))
    }

    /// Each candidate's place in numpy's permutation, as f32 importance (exact below 2^24).
    fn permutation(&self, gpu: &Gpu, seed: u32, np: usize) -> Result<Tensor> {
        let mut cache = self.permutations.lock().unwrap();
        if let Some(t) = cache.get(&(seed, np)) {
            return Ok(t.clone());
        }
        let mut place = vec![0f32; np];
        for (i, &c) in numpy_permutation(seed, np).iter().enumerate() {
            place[c as usize] = i as f32;
        }
        let t = gpu.upload_f32(&place, &[np], "random permutation")?;
        cache.insert((seed, np), t.clone());
        Ok(t)
    }
}

/// Method-specific limits the kernels rely on.
fn check_method(
    r: &Reduction,
    np: usize,
    drop: usize,
    new_tokens: usize,
    recycled: usize,
) -> Result<()> {
    if r.filter.has(Score::Bipartite) && drop > 0 && (drop > np.div_ceil(2) || np < 2) {
        return Err(Error::InvalidArgument(format!(
            "the bipartite split of {np} candidates merges at most {} per step, not {drop}",
            if np < 2 { 0 } else { np.div_ceil(2) }
        )));
    }
    if let Correlate::Group(Grouping::DensityPeaks { knn, .. }) = r.correlate {
        if knn > k::MAX_DPC_KNN || new_tokens > recycled {
            return Err(Error::InvalidArgument(format!(
                "density peaks: {new_tokens} clusters of {recycled} recycled tokens with {knn} \
                 neighbours (at most {})",
                k::MAX_DPC_KNN
            )));
        }
    }
    Ok(())
}

/// How the compress weighs merged tokens; `by_cosine`: the scores are the equivalent token's
/// cosines, which cannot weigh, so a score-weighted compress averages.
fn weighting(c: Compress, by_cosine: bool) -> Weighting {
    match c {
        Compress::SelfPreserving | Compress::Average | Compress::SizeWeighted => Weighting {
            normalise: true,
            ..Weighting::default()
        },
        Compress::Additive => Weighting::default(),
        Compress::ScoreWeighted { .. } if by_cosine => Weighting {
            normalise: true,
            ..Weighting::default()
        },
        Compress::ScoreWeighted { renormalise } => Weighting {
            score_self: true,
            score_members: true,
            normalise: renormalise,
        },
    }
}

fn score_term(rows: Rows, weight: f32, spans: &Spans, cand: &Candidates) -> Result<ScoreTerm> {
    let n = cand.n;
    let need = |what: &str| {
        Error::InvalidArgument(format!(
            "this filter scores with attention from the {what}; give its position"
        ))
    };
    let text = || spans.text.clone().ok_or_else(|| need("text span (--text)"));
    let range = match rows {
        Rows::All => 0..n,
        Rows::Cls => {
            let c = spans.cls.ok_or_else(|| need("[CLS] token (--cls)"))?;
            c..c + 1
        }
        Rows::Visual => spans
            .visual
            .clone()
            .ok_or_else(|| need("visual span (--visual)"))?,
        Rows::Text => text()?,
        Rows::Candidates => cand.span.clone(),
        Rows::LastText => {
            let t = text()?;
            if t.is_empty() {
                return Err(need("non-empty text span"));
            }
            t.end - 1..t.end
        }
        Rows::Raters => {
            // The rows carry their own weights (1 / |raters|).
            return Ok(ScoreTerm {
                rows: text()?,
                weight,
                divisor: 1.0,
                weighted: true,
                along_rows: false,
            });
        }
    };
    // Column means over all rows count the causal zeros (divide by n); others by the row count.
    let divisor = range.len().max(1) as f32;
    Ok(ScoreTerm {
        rows: range,
        weight,
        divisor,
        weighted: false,
        along_rows: false,
    })
}

/// Result of [`run_once`], read back to the host.
#[derive(Clone, Debug, PartialEq)]
pub struct StepOutput {
    /// `[n - drop, d]` row-major.
    pub hidden: Vec<f32>,
    /// Input index of each output row, [`NEW_TOKEN`] for a new token.
    pub kept: Vec<u32>,
    /// Position of each output row (see [`PositionKind`] for new tokens).
    pub positions: Vec<i32>,
    /// Input index of each scored candidate (ToMe: set A only), ascending.
    pub score_index: Vec<u32>,
    /// The filter score of each scored candidate (after the local penalty).
    pub scores: Vec<f32>,
    /// Size of each output token (`1 +` merged sources; members of a new token).
    pub sizes: Vec<f32>,
}

/// Upload one sequence, run one step and read the result back: the tensor-level runner
/// (`examples/reduce.rs`) and the oracle tests use this; the model records
/// [`ReductionStep::record`] into its own batches. `keys` is `[n, dk]` row-major (its width
/// follows from its length), the similarity metric when given; `sizes [n]` ToMe's token sizes.
#[allow(clippy::too_many_arguments)]
pub async fn run_once(
    gpu: &Gpu,
    r: &Reduction,
    spans: &Spans,
    hidden: &[f32],
    d: usize,
    keys: Option<&[f32]>,
    attn: &[f32],
    positions: &[i32],
    sizes: Option<&[f32]>,
    drop: usize,
) -> Result<StepOutput> {
    let n = positions.len();
    if hidden.len() != n * d || attn.len() != n * n {
        return Err(Error::shape(
            "reduction input",
            format!("hidden [{n}, {d}] and attn [{n}, {n}] for {n} positions"),
            format!("{} and {} values", hidden.len(), attn.len()),
        ));
    }
    if drop > n {
        return Err(Error::InvalidArgument(format!(
            "cannot drop {drop} of {n} tokens"
        )));
    }
    let step = ReductionStep::new(gpu, n)?;
    let th = gpu.upload_f32(hidden, &[n, d], "hidden")?;
    let tk = match keys {
        Some(k) if n > 0 && !k.is_empty() && k.len() % n == 0 => {
            Some(gpu.upload_f32(k, &[n, k.len() / n], "keys")?)
        }
        Some(k) => {
            return Err(Error::shape(
                "keys",
                format!("[{n}, dk]"),
                format!("{} values", k.len()),
            ))
        }
        None => None,
    };
    let ta = gpu.upload_f32(attn, &[n, n], "attn")?;
    let tp = gpu.upload_i32(positions, &[n], "positions")?;
    let tz = match sizes {
        Some(z) if z.len() == n => Some(gpu.upload_f32(z, &[n], "token sizes")?),
        Some(z) => return Err(Error::shape("token sizes", format!("[{n}]"), z.len())),
        None => None,
    };
    let n_out = n - drop;
    let out = gpu.zeros(&[n_out, d], DType::F32, "reduced hidden")?;
    let out_pos = gpu.zeros(&[n_out], DType::I32, "reduced positions")?;
    let mut b = gpu.batch();
    let input = StepInput {
        hidden: &th,
        keys: tk.as_ref(),
        attn: &ta,
        positions: &tp,
        sizes: tz.as_ref(),
    };
    step.record(&mut b, r, spans, &input, drop, &out, &out_pos)?;
    b.submit();
    let span = spans.visual.clone().unwrap_or(0..n);
    let candidates: Vec<u32> = span
        .filter(|&i| Some(i) != spans.cls)
        .map(|i| i as u32)
        .collect();
    let np = candidates.len();
    let f32s = |bytes: Vec<u8>, len: usize| bytemuck::cast_slice::<u8, f32>(&bytes)[..len].to_vec();
    let plan = gpu.read_bytes(&step.plan).await?;
    let plan: &[u32] = bytemuck::cast_slice(&plan);
    let scores = f32s(gpu.read_bytes(&step.scores(np)).await?, np);
    // ToMe scores only its set A (even candidate positions).
    let bipartite = r.filter.has(Score::Bipartite);
    let scored = |c: &usize| !bipartite || c % 2 == 0;
    Ok(StepOutput {
        hidden: f32s(gpu.read_bytes(&out).await?, n_out * d),
        kept: plan[3 * n..3 * n + n_out].to_vec(),
        positions: bytemuck::cast_slice::<u8, i32>(&gpu.read_bytes(&out_pos).await?)[..n_out]
            .to_vec(),
        score_index: (0..np).filter(scored).map(|c| candidates[c]).collect(),
        scores: (0..np).filter(scored).map(|c| scores[c]).collect(),
        sizes: f32s(gpu.read_bytes(&step.sizes(n_out)).await?, n_out),
    })
}
