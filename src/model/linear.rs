//! A Linear layer (weight matrix and optional bias) and small loading helpers shared by the
//! vision tower, projector and decoder.

use super::weights::WeightFile;
use crate::gpu::{Batch, DType, Gpu, Tensor};
use crate::ops::{matmul, quantize, EmbeddingTable, Epilogue, GgmlType, WeightMatrix};
use crate::{Error, Result};

/// How a model's big matrices are kept on the GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WeightStore {
    /// Storage type of dense matrices: F16 or F32.
    pub dtype: DType,
    /// Quantise dense matrices into these blocks while loading (Q8_0 or Q4_K). A row whose
    /// length is not a multiple of Q4_K's 256 takes Q8_0 (as llama.cpp's Q4_K_M files do), and
    /// one not a multiple of 32 stays dense. Tensors a GGUF file stores quantised stay as they
    /// are either way.
    pub quantize: Option<GgmlType>,
}

impl WeightStore {
    pub fn dense(dtype: DType) -> Self {
        Self {
            dtype,
            quantize: None,
        }
    }

    /// The block type a `k`-wide row is quantised to, if any.
    fn block_for(&self, k: usize) -> Option<GgmlType> {
        [self.quantize?, GgmlType::Q8_0]
            .into_iter()
            .find(|t| k % t.block_elems() == 0)
    }

    pub fn check(&self) -> Result<()> {
        if !matches!(self.dtype, DType::F16 | DType::F32) {
            return Err(Error::InvalidArgument(format!(
                "weight dtype {}: use f16 or f32",
                self.dtype.name()
            )));
        }
        match self.quantize {
            None | Some(GgmlType::Q8_0 | GgmlType::Q4K) => Ok(()),
            Some(t) => Err(Error::Unsupported(format!(
                "quantising to {}: supported are q8_0 and q4_k",
                t.name()
            ))),
        }
    }
}

/// The `[n, k]` matrix `name` (PyTorch's `[out, in]`): quantised blocks as the file stores them,
/// else f32 values stored as `store` says.
pub fn load_matrix(
    gpu: &Gpu,
    wf: &WeightFile,
    name: &str,
    n: usize,
    k: usize,
    store: WeightStore,
) -> Result<WeightMatrix> {
    if let Some(raw) = wf.get_quantized(name, &[n, k])? {
        return WeightMatrix::from_ggml(gpu, raw.ty, &raw.bytes, n, k, name);
    }
    let w = wf.get(name, &[n, k])?;
    match store.block_for(k) {
        Some(ty) => WeightMatrix::from_ggml(gpu, ty, &quantize(ty, &w.data)?, n, k, name),
        None => WeightMatrix::from_out_in(gpu, &w.data, n, k, store.dtype, name),
    }
}

/// The `[vocab, dim]` embedding table `name`, like [`load_matrix`].
pub fn load_embedding(
    gpu: &Gpu,
    wf: &WeightFile,
    name: &str,
    vocab: usize,
    dim: usize,
    store: WeightStore,
) -> Result<EmbeddingTable> {
    if let Some(raw) = wf.get_quantized(name, &[vocab, dim])? {
        return EmbeddingTable::from_ggml(gpu, raw.ty, &raw.bytes, vocab, dim, name);
    }
    let t = wf.get(name, &[vocab, dim])?;
    match store.block_for(dim) {
        Some(ty) => EmbeddingTable::from_ggml(gpu, ty, &quantize(ty, &t.data)?, vocab, dim, name),
        None => EmbeddingTable::from_rows(gpu, &t.data, vocab, dim, store.dtype, name),
    }
}

pub struct Linear {
    pub weight: WeightMatrix,
    pub bias: Option<Tensor>,
}

impl Linear {
    /// Load `{name}.weight` (PyTorch `[n_out, k_in]`), stored dense in `dtype`, and, when
    /// `bias`, `{name}.bias`.
    pub fn load(
        gpu: &Gpu,
        wf: &WeightFile,
        name: &str,
        n_out: usize,
        k_in: usize,
        bias: bool,
        dtype: DType,
    ) -> Result<Self> {
        Self::load_stored(gpu, wf, name, n_out, k_in, bias, WeightStore::dense(dtype))
    }

    /// [`Self::load`] with the matrix kept as `store` says (quantised or dense).
    pub fn load_stored(
        gpu: &Gpu,
        wf: &WeightFile,
        name: &str,
        n_out: usize,
        k_in: usize,
        bias: bool,
        store: WeightStore,
    ) -> Result<Self> {
        let weight = load_matrix(gpu, wf, &format!("{name}.weight"), n_out, k_in, store)?;
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
