//! Running one [`Reduction`] on the GPU: the stage kernels of [`crate::ops::reduce`] recorded
//! into a batch, with scratch allocated once for the longest sequence.

use super::stages::{Compress, Correlate, Filter, Reduction, Rows};
use crate::gpu::{Batch, DType, Gpu, Tensor};
use crate::ops::reduce::{self as k, Candidates, Correlation, ScoreTerm};
use crate::{Error, Result};
use std::ops::Range;

/// Where things are in the sequence a step reduces.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Spans {
    /// The [CLS] token, never discarded.
    pub cls: Option<usize>,
    /// The visual tokens (the candidates); `None` means the whole sequence.
    pub visual: Option<Range<usize>>,
    /// The text (question) tokens, for task-aware scores and correlations.
    pub text: Option<Range<usize>>,
    /// Side of the square patch grid the positions index, for the local penalty.
    pub grid: Option<usize>,
}

/// Scratch for reduction steps over sequences of up to `max_tokens`.
pub struct ReductionStep {
    max_tokens: usize,
    raw: Tensor,
    scores: Tensor,
    plan: Tensor,
    corr: Tensor,
    weights: Tensor,
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
        })
    }

    /// The plan of the last step (layout in `shaders/reduce.wgsl`): `kept` of output row r is
    /// word `3 n + r`.
    pub fn plan(&self) -> &Tensor {
        &self.plan
    }

    /// Filter scores of the last step's candidates (after the local penalty), `[candidates]`.
    pub fn scores(&self, candidates: usize) -> Tensor {
        self.scores.view(&[candidates])
    }

    /// Record one step: `hidden [n, d]` with attention `attn [n, n]` and grid `positions [n]`
    /// (i32) becomes `out [n - drop, d]` and `positions_out [n - drop]`.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        b: &mut Batch,
        r: &Reduction,
        spans: &Spans,
        hidden: &Tensor,
        attn: &Tensor,
        positions: &Tensor,
        drop: usize,
        out: &Tensor,
        positions_out: &Tensor,
    ) -> Result<()> {
        let n = hidden.shape()[0];
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
        let (terms, keep_high, penalty) = match &r.filter {
            Filter::Redundancy {
                terms,
                local_penalty,
            } => (terms.clone(), false, *local_penalty),
            Filter::Importance { rows } => (vec![(*rows, 1.0)], true, None),
        };
        let terms = terms
            .iter()
            .map(|&(rows, weight)| score_term(rows, weight, spans, n))
            .collect::<Result<Vec<_>>>()?;
        let raw = self.raw.view(&[np]);
        let scores = self.scores.view(&[np]);
        match penalty {
            Some(lp) => {
                let grid = spans.grid.ok_or_else(|| {
                    Error::InvalidArgument(
                        "the local penalty needs the patch grid side (--grid)".into(),
                    )
                })?;
                k::score_tokens(b, attn, &cand, &terms, &raw)?;
                k::local_penalty(b, &raw, positions, &cand, grid, lp.window, lp.coef, &scores)?;
            }
            None => k::score_tokens(b, attn, &cand, &terms, &scores)?,
        }
        let split = k::split_tokens(
            b,
            &scores,
            &cand,
            drop,
            keep_high,
            positions,
            &self.plan,
            positions_out,
        )?;
        let (ns, nt) = (split.sources, split.targets);
        match &r.correlate {
            Correlate::Attention {
                direct,
                symmetric,
                indirect,
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
                };
                let corr = self.corr.view(&[ns, nt]);
                let weights = self.weights.view(&[ns, nt]);
                k::correlate(b, attn, &split, &c, &corr)?;
                let average = r.compress == Compress::Average;
                k::assign_targets(b, &corr, *targets, *convergent, average, &weights)?;
                k::compress(b, hidden, &split, Some(&weights), out)
            }
            _ => k::compress(b, hidden, &split, None, out),
        }
    }
}

fn score_term(rows: Rows, weight: f32, spans: &Spans, n: usize) -> Result<ScoreTerm> {
    let need = |what: &str| {
        Error::InvalidArgument(format!(
            "this filter scores with attention from the {what}; give its position"
        ))
    };
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
        Rows::Text => spans
            .text
            .clone()
            .ok_or_else(|| need("text span (--text)"))?,
        Rows::LastText => {
            let t = spans
                .text
                .clone()
                .ok_or_else(|| need("text span (--text)"))?;
            if t.is_empty() {
                return Err(need("non-empty text span"));
            }
            t.end - 1..t.end
        }
    };
    // Column means over all rows count the causal zeros (divide by n); others by the row count.
    let divisor = range.len().max(1) as f32;
    Ok(ScoreTerm {
        rows: range,
        weight,
        divisor,
    })
}

/// Result of [`run_once`], read back to the host.
#[derive(Clone, Debug, PartialEq)]
pub struct StepOutput {
    /// `[n - drop, d]` row-major.
    pub hidden: Vec<f32>,
    /// Input index of each output row.
    pub kept: Vec<u32>,
    pub positions: Vec<i32>,
    /// The filter score of each candidate (after the local penalty), in sequence order.
    pub scores: Vec<f32>,
}

/// Upload one sequence, run one step and read the result back: the tensor-level runner
/// (`examples/reduce.rs`) and the oracle tests use this; the model records
/// [`ReductionStep::record`] into its own batches.
#[allow(clippy::too_many_arguments)]
pub async fn run_once(
    gpu: &Gpu,
    r: &Reduction,
    spans: &Spans,
    hidden: &[f32],
    d: usize,
    attn: &[f32],
    positions: &[i32],
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
    let ta = gpu.upload_f32(attn, &[n, n], "attn")?;
    let tp = gpu.upload_i32(positions, &[n], "positions")?;
    let out = gpu.zeros(&[n - drop, d], DType::F32, "reduced hidden")?;
    let out_pos = gpu.zeros(&[n - drop], DType::I32, "reduced positions")?;
    let mut b = gpu.batch();
    step.record(&mut b, r, spans, &th, &ta, &tp, drop, &out, &out_pos)?;
    b.submit();
    let np = Candidates {
        n,
        span: spans.visual.clone().unwrap_or(0..n),
        cls: spans.cls,
    }
    .len();
    let f32s = |bytes: Vec<u8>, len: usize| bytemuck::cast_slice::<u8, f32>(&bytes)[..len].to_vec();
    let plan = gpu.read_bytes(&step.plan).await?;
    let plan: &[u32] = bytemuck::cast_slice(&plan);
    Ok(StepOutput {
        hidden: f32s(gpu.read_bytes(&out).await?, (n - drop) * d),
        kept: plan[3 * n..3 * n + n - drop].to_vec(),
        positions: bytemuck::cast_slice::<u8, i32>(&gpu.read_bytes(&out_pos).await?)[..n - drop]
            .to_vec(),
        scores: f32s(gpu.read_bytes(&step.scores(np)).await?, np),
    })
}
