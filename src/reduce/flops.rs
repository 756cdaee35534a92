//! FLOPs of a LLaVA forward pass for a [`Schedule`] of token counts, in two forms:
//!
//! - [`paper_llm_prefill_flops`]: the FiCoCo paper's per-decoder-layer formula, the unit its
//!   budgets (3.3 / 2.4 / 1.5 TFLOPs) are stated in, so our budgets mean what the paper's mean.
//! - [`Flops::of`]: what our kernels compute, stage by stage (2 FLOPs per multiply-add), to relate
//!   measured speed to the work actually done.
//!
//! Both leave out element-wise work (norms, activations, softmax, RoPE, bias adds): it grows with
//! tokens x width, not width squared, and is far below 1% of the matmuls.

use super::schedule::Schedule;
use crate::model::{LlavaConfig, TextConfig};
use crate::Result;
use std::fmt;

/// FLOPs by stage, as f64: the counts reach 1e13 and are only compared and summed.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Flops {
    /// Patch embedding and the encoder layers that run.
    pub vision: f64,
    /// The projector's two matmuls.
    pub projector: f64,
    /// The decoder layers over the whole prompt, plus the LM head for the last position.
    pub llm_prefill: f64,
    /// Scoring and merging done by the reductions (the paper's estimate, see
    /// [`ficoco_v_overhead`]).
    pub overhead: f64,
}

impl Flops {
    pub fn total(&self) -> f64 {
        self.vision + self.projector + self.llm_prefill + self.overhead
    }

    /// The exact count of what our kernels compute for `schedule` on `config`.
    ///
    /// Vision layers are non-causal: each attention scores all T x T pairs. Decoder attention is
    /// causal and the kernel skips masked keys, so query i scores and mixes only the i + 1 keys
    /// it sees: P(P + 1) / 2 pairs per head, half of the paper's P^2. GQA's K and V projections
    /// are counted at their smaller width. A [`Schedule`] reduction at the projector site is
    /// applied to the projector's output, so the projector runs on the tower's output tokens.
    /// Every reduction is charged the paper's FiCoCo overhead (the only one the paper gives; other
    /// methods' scoring is of the same order): vision-side ones FiCoCo-V's, LLM ones FiCoCo-L's.
    pub fn of(config: &LlavaConfig, schedule: &Schedule) -> Result<Flops> {
        schedule.check_fits(config)?;
        let vc = &config.vision_config;
        let tc = &config.text_config;
        let (dv, d) = (vc.hidden_size as f64, tc.hidden_size as f64);
        // The tower also carries a [CLS] that the `default` strategy drops before the projector.
        let cls = usize::from(config.drops_cls()) as f64;
        let patch_width = (vc.num_channels * vc.patch_size * vc.patch_size) as f64;
        let mut vision = matmul(vc.num_patches() as f64, patch_width, dv);
        let mut overhead = 0.0;
        let mut entering = schedule.visual_tokens();
        for &leaving in schedule.vision() {
            let (t_in, t_out) = (entering as f64 + cls, leaving as f64 + cls);
            // q, k, v, o and attention on the tokens entering; the MLP after the reduction.
            vision += 4.0 * matmul(t_in, dv, dv)
                + 2.0 * matmul(t_in, dv, t_in)
                + 2.0 * matmul(t_out, dv, vc.intermediate_size as f64);
            if leaving < entering {
                overhead += ficoco_v_overhead(entering, entering - leaving, vc.hidden_size);
            }
            entering = leaving;
        }
        let projector = matmul(entering as f64, dv, d) + matmul(entering as f64, d, d);
        if schedule.projector() < entering {
            overhead +=
                ficoco_v_overhead(entering, entering - schedule.projector(), vc.hidden_size);
        }
        let mut llm_prefill = matmul(1.0, d, tc.vocab_size as f64);
        let mut previous = schedule.projector();
        for (&visual, &tokens) in schedule.llm().iter().zip(&schedule.llm_layer_tokens()) {
            llm_prefill += decoder_layer_flops(tc, tokens as f64);
            if visual < previous {
                overhead += ficoco_l_overhead(previous, previous - visual, tc.hidden_size);
            }
            previous = visual;
        }
        Ok(Flops {
            vision,
            projector,
            llm_prefill,
            overhead,
        })
    }
}

/// The unit that suits `x`: TFLOPs for LLaVA-1.5's passes, MFLOPs for test models.
fn unit(x: f64) -> (f64, &'static str) {
    [
        (1e12, "TFLOPs"),
        (1e9, "GFLOPs"),
        (1e6, "MFLOPs"),
        (1e3, "kFLOPs"),
    ]
    .into_iter()
    .find(|(s, _)| x >= *s)
    .unwrap_or((1.0, "FLOPs"))
}

impl fmt::Display for Flops {
    /// The parts in the total's unit; the overhead, orders of magnitude smaller, in its own.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (scale, u) = unit(self.total());
        let (oscale, ou) = unit(self.overhead);
        write!(
            f,
            "{:.3} {u} = vision {:.3} + projector {:.3} + LLM prefill {:.3} + overhead {:.3} {ou}",
            self.total() / scale,
            self.vision / scale,
            self.projector / scale,
            self.llm_prefill / scale,
            self.overhead / oscale
        )
    }
}

/// The paper's LLM-prefill FLOPs for `layer_tokens` (all tokens, visual and text, each decoder
/// layer runs on).
///
/// The paper prints 4PD^2 + 2P^2D + 3PDH per layer (D hidden, H FFN size), which counts
/// multiply-adds: on LLaVA-1.5-7B with 576 visual and 60 text tokens it gives 4.22e12, while the
/// paper reports 8.5 TFLOPs (and 3.3 / 2.4 / 1.6 for 192 / 128 / 64 tokens), exactly twice it. So
/// this returns twice the printed formula, the unit the paper's budgets are stated in.
pub fn paper_llm_prefill_flops(text: &TextConfig, layer_tokens: &[usize]) -> f64 {
    let (d, h) = (text.hidden_size as f64, text.intermediate_size as f64);
    layer_tokens
        .iter()
        .map(|&p| {
            let p = p as f64;
            2.0 * (4.0 * p * d * d + 2.0 * p * p * d + 3.0 * p * d * h)
        })
        .sum()
}

/// FiCoCo-V's cost at one layer as the paper gives it: N^2 + 2N + N_S(N_T + 2D + 1) + D, for N
/// tokens entering, N_S = `removed` of them discarded, N_T = N - N_S kept, D = `hidden`.
pub fn ficoco_v_overhead(tokens: usize, removed: usize, hidden: usize) -> f64 {
    let (n, s, d) = (tokens as f64, removed as f64, hidden as f64);
    n * n + 2.0 * n + s * (n - s + 2.0 * d + 1.0) + d
}

/// FiCoCo-L's cost at one layer: FiCoCo-V's with the first two terms doubled, since its filter
/// and correlation also read the text tokens' attention.
pub fn ficoco_l_overhead(tokens: usize, removed: usize, hidden: usize) -> f64 {
    let n = tokens as f64;
    ficoco_v_overhead(tokens, removed, hidden) + n * n + 2.0 * n
}

/// `[m, k] x [k, n]`.
fn matmul(m: f64, k: f64, n: f64) -> f64 {
    2.0 * m * k * n
}

/// One Llama-family decoder layer on `p` tokens from an empty cache.
fn decoder_layer_flops(t: &TextConfig, p: f64) -> f64 {
    let d = t.hidden_size as f64;
    let q_width = (t.num_attention_heads * t.head_dim()) as f64;
    let kv_width = (t.kv_heads() * t.head_dim()) as f64;
    let projections = matmul(p, d, q_width) + 2.0 * matmul(p, d, kv_width) + matmul(p, q_width, d);
    // QK^T and PV over the P(P + 1) / 2 visible (query, key) pairs of every head.
    let attention = 2.0 * 2.0 * q_width * p * (p + 1.0) / 2.0;
    let mlp = 3.0 * matmul(p, d, t.intermediate_size as f64);
    projections + attention + mlp
}
