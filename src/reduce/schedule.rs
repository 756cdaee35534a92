//! The per-layer visual-token counts of one forward pass: what a budget plans
//! (`super::budget`) and what the FLOPs model counts (`super::flops`).
//!
//! Conventions (layer indices are 0-based, as in the weights):
//! - Counts are visual tokens: the patch tokens, plus [CLS] only where the config passes it to
//!   the LLM (`full` strategy). The tower also carries a dropped [CLS]; the FLOPs count adds it.
//! - Vision tower: a reducing layer reduces after its attention and before its MLP, as ToMe and
//!   FiCoCo-V do, so [`Schedule::vision`]`[l]` is the count leaving layer l.
//! - LLM: a reduction at layer k takes effect from layer k on (scored on layer k - 1's
//!   attention), so [`Schedule::llm`]`[l]` is the visual count layer l runs on. FastV's K = 2,
//!   PDrop's stages 8 / 16 / 24 and FiCoCo-L's start 4 are such layers, and the paper's formula
//!   charges each layer for the tokens it runs on.

use crate::model::LlavaConfig;
use crate::{Error, Result};
use std::fmt;

/// Visual tokens at every point of one forward pass (see the module doc for the conventions).
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    pub(super) visual_tokens: usize,
    pub(super) vision: Vec<usize>,
    pub(super) projector: usize,
    pub(super) llm: Vec<usize>,
    pub(super) text_tokens: usize,
}

impl Schedule {
    /// No reduction: the baseline.
    pub fn full(config: &LlavaConfig, text_tokens: usize) -> Self {
        let n = config.visual_tokens();
        Self {
            visual_tokens: n,
            vision: vec![n; config.vision_layers_to_run()],
            projector: n,
            llm: vec![n; config.text_config.num_hidden_layers],
            text_tokens,
        }
    }

    /// Visual tokens before any reduction.
    pub fn visual_tokens(&self) -> usize {
        self.visual_tokens
    }

    /// Visual tokens leaving each vision layer that runs.
    pub fn vision(&self) -> &[usize] {
        &self.vision
    }

    /// Visual tokens the projector hands to the LLM.
    pub fn projector(&self) -> usize {
        self.projector
    }

    /// Visual tokens each decoder layer runs on.
    pub fn llm(&self) -> &[usize] {
        &self.llm
    }

    pub fn text_tokens(&self) -> usize {
        self.text_tokens
    }

    /// Visual tokens left after the last reduction.
    pub fn kept(&self) -> usize {
        self.llm.last().copied().unwrap_or(self.projector)
    }

    /// All tokens (visual and text) each decoder layer runs on.
    pub fn llm_layer_tokens(&self) -> Vec<usize> {
        self.llm.iter().map(|v| v + self.text_tokens).collect()
    }

    /// A schedule counts layers of one model; refuse to cost it on another.
    pub(crate) fn check_fits(&self, config: &LlavaConfig) -> Result<()> {
        let here = (self.visual_tokens, self.vision.len(), self.llm.len());
        let there = (
            config.visual_tokens(),
            config.vision_layers_to_run(),
            config.text_config.num_hidden_layers,
        );
        if here != there {
            return Err(Error::InvalidArgument(format!(
                "a schedule for (visual tokens, vision layers, decoder layers) {here:?} does not \
                 fit this model's {there:?}: plan it for this config"
            )));
        }
        Ok(())
    }
}

impl fmt::Display for Schedule {
    /// e.g. "vision L12-L22: 576->529->482->...->110->64; llm: 64 x 32 layers + 60 text".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = reductions("vision", self.visual_tokens, &self.vision)
            .into_iter()
            .collect();
        let vision_out = self.vision.last().copied().unwrap_or(self.visual_tokens);
        if self.projector < vision_out {
            parts.push(format!("projector: {vision_out}->{}", self.projector));
        }
        let llm = reductions("llm", self.projector, &self.llm)
            .unwrap_or_else(|| format!("llm: {} x {} layers", self.projector, self.llm.len()));
        parts.push(format!("{llm} + {} text", self.text_tokens));
        f.write_str(&parts.join("; "))
    }
}

/// "vision L12-L22: 576->529->...->64": the layers that reduce and the count after each; `None`
/// when none does. Long chains keep their first three and last two counts.
fn reductions(tower: &str, start: usize, counts: &[usize]) -> Option<String> {
    let mut layers = Vec::new();
    let mut chain = vec![start];
    for (layer, &count) in counts.iter().enumerate() {
        if count < chain[chain.len() - 1] {
            layers.push(layer);
            chain.push(count);
        }
    }
    let (&first, &last) = (layers.first()?, layers.last()?);
    let place = if first == last {
        format!("L{first}")
    } else if last - first + 1 == layers.len() {
        format!("L{first}-L{last}")
    } else {
        let names: Vec<String> = layers.iter().map(|l| format!("L{l}")).collect();
        names.join(",")
    };
    let shown: Vec<String> = if chain.len() > 6 {
        let (head, tail) = (&chain[..3], &chain[chain.len() - 2..]);
        let mut shown: Vec<String> = head.iter().map(usize::to_string).collect();
        shown.push("...".into());
        shown.extend(tail.iter().map(usize::to_string));
        shown
    } else {
        chain.iter().map(usize::to_string).collect()
    };
    Some(format!("{tower} {place}: {}", shown.join("->")))
}
