//! A Linear layer (weight matrix and optional bias) and small loading helpers shared by the
//! vision tower, projector and decoder.

use super::weights::WeightFile;
use crate::gpu::{Batch, DType, Gpu, Tensor};
use crate::ops::{matmul, Epilogue, WeightMatrix};
use crate::Result;

pub struct Linear {
    pub weight: WeightMatrix,
    pub bias: Option<Tensor>,
}

impl Linear {
    /// Load `{name}.weight` (PyTorch `[n_out, k_in]`) and, when `bias`, `{name}.bias`.
    pub fn load(
        gpu: &Gpu,
        wf: &WeightFile,
        name: &str,
        n_out: usize,
        k_in: usize,
        bias: bool,
        dtype: DType,
    ) -> Result<Self> {
        let w = wf.get(&format!("{name}.weight"), &[n_out, k_in])?;
        let weight = WeightMatrix::from_out_in(gpu, &w.data, n_out, k_in, dtype, name)?;
        let bias = if bias {
            Some(load_vector(gpu, wf, &format!("{name}.bias"), n_out)?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    pub fn forward(
        &self,
        b: &mut Batch,
        x: &Tensor,
        epilogue: Epilogue,
        out: &Tensor,
    ) -> Result<()> {
        matmul(b, x, &self.weight, self.bias.as_ref(), epilogue, out)
    }

    pub fn bytes(&self) -> u64 {
        self.weight.bytes() + self.bias.as_ref().map_or(0, Tensor::buffer_bytes)
    }
}

/// A small f32 tensor (norm weight, bias, embedding vector) of `n` elements.
pub fn load_vector(gpu: &Gpu, wf: &WeightFile, name: &str, n: usize) -> Result<Tensor> {
    let t = wf.get(name, &[n])?;
    gpu.upload_f32(&t.data, &[n], name)
}

/// LayerNorm or RMSNorm parameters.
pub struct Norm {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Norm {
    pub fn load(gpu: &Gpu, wf: &WeightFile, name: &str, n: usize, bias: bool) -> Result<Self> {
        Ok(Self {
            weight: load_vector(gpu, wf, &format!("{name}.weight"), n)?,
            bias: if bias {
                Some(load_vector(gpu, wf, &format!("{name}.bias"), n)?)
            } else {
                None
            },
        })
    }

    /// LayerNorm when the norm has a bias, RMSNorm otherwise.
    pub fn forward(&self, b: &mut Batch, x: &Tensor, eps: f32, out: &Tensor) -> Result<()> {
        match &self.bias {
            Some(bias) => crate::ops::layer_norm(b, x, &self.weight, bias, eps, out),
            None => crate::ops::rms_norm(b, x, &self.weight, eps, out),
        }
    }

    pub fn bytes(&self) -> u64 {
        self.weight.buffer_bytes() + self.bias.as_ref().map_or(0, Tensor::buffer_bytes)
    }
}
