//! The `mlp2x_gelu` multimodal projector: Linear -> GELU -> Linear, vision width to LLM width.

use super::config::LlavaConfig;
use super::linear::Linear;
use super::weights::WeightFile;
use crate::gpu::{Batch, DType, Gpu, Tensor};
use crate::ops::Epilogue;
use crate::{Error, Result};

pub struct Projector {
    linear_1: Linear,
    linear_2: Linear,
    hidden: Tensor,
}

impl Projector {
    /// `max_tokens`: the most visual tokens one image can yield (workspace size).
    pub fn load(
        gpu: &Gpu,
        wf: &WeightFile,
        cfg: &LlavaConfig,
        dtype: DType,
        max_tokens: usize,
    ) -> Result<Self> {
        if cfg.projector_hidden_act != "gelu" {
            return Err(Error::Unsupported(format!(
                "projector_hidden_act {:?}: only gelu (mlp2x_gelu) is supported",
                cfg.projector_hidden_act
            )));
        }
        let dv = cfg.vision_config.hidden_size;
        let d = cfg.text_config.hidden_size;
        let bias = cfg.multimodal_projector_bias;
        Ok(Self {
            linear_1: Linear::load(gpu, wf, "projector.linear_1", d, dv, bias, dtype)?,
            linear_2: Linear::load(gpu, wf, "projector.linear_2", d, d, bias, dtype)?,
            hidden: gpu.zeros(&[max_tokens, d], DType::F32, "projector hidden")?,
        })
    }

    /// `features [n, Dv]` -> `out [n, D]`.
    pub fn forward(&self, b: &mut Batch, features: &Tensor, out: &Tensor) -> Result<()> {
        let n = features.shape()[0];
        let hidden = self.hidden.view(&[n, self.hidden.shape()[1]]);
        self.linear_1
            .forward(b, features, Epilogue::Gelu, &hidden)?;
        self.linear_2.forward(b, &hidden, Epilogue::None, out)
    }

    pub fn weight_bytes(&self) -> u64 {
        self.linear_1.bytes() + self.linear_2.bytes()
    }
}
