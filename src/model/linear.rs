//! A Linear layer (weight matrix and optional bias) and small loading helpers shared by the
//! vision tower, projector and decoder.

use super::weights::WeightFile;
use crate::gpu::{Batch, DType, Gpu, Tensor};
use crate::ops::{
    matmul, matmul_into, quantize, side_by_side_offsets, EmbeddingTable, Epilogue, GgmlType,
    WeightMatrix,
};
use crate::{Error, Result};
use std::borrow::Cow;

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
    store_rows(gpu, file_rows(wf, name, n, k)?, n, k, store, name)
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

/// A Linear layer, or several over the same input side by side (q, k and v; gate and up):
/// neighbours stored alike are one matrix, so one kernel reads the input for all of them.
pub struct Linear {
    /// (first output column, matrix).
    parts: Vec<(usize, WeightMatrix)>,
    /// Output columns of each layer.
    widths: Vec<usize>,
    /// Over all layers' columns.
    pub bias: Option<Tensor>,
}

/// One part's rows as the file stores them: GGML blocks, or f32 values.
enum Rows<'a> {
    Blocks(GgmlType, Cow<'a, [u8]>),
    Values(Vec<f32>),
}

/// `{name}` (`[n, k]`) as the file stores it.
fn file_rows<'a>(wf: &'a WeightFile, name: &str, n: usize, k: usize) -> Result<Rows<'a>> {
    Ok(match wf.get_quantized(name, &[n, k])? {
        Some(raw) => Rows::Blocks(raw.ty, raw.bytes),
        None => Rows::Values(wf.get(name, &[n, k])?.data),
    })
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
        Self::load_side_by_side(gpu, wf, &[(name, n_out)], k_in, bias, store)
    }

    /// The layers `(name, n_out)` over the same `k_in` inputs as one: output columns in the
    /// order given. Neighbours that the file stores in the same GGML type (or both as values)
    /// become one matrix, so one kernel reads them.
    pub fn load_side_by_side(
        gpu: &Gpu,
        wf: &WeightFile,
        layers: &[(&str, usize)],
        k_in: usize,
        bias: bool,
        store: WeightStore,
    ) -> Result<Self> {
        let label = layers.iter().map(|l| l.0).collect::<Vec<_>>().join(" + ");
        let mut parts = Vec::new();
        let mut pending: Option<(usize, usize, Rows)> = None;
        let mut col = 0;
        for &(name, n) in layers {
            let rows = file_rows(wf, &format!("{name}.weight"), n, k_in)?;
            pending = match (pending, rows) {
                (Some((c0, n0, Rows::Blocks(t0, mut b0))), Rows::Blocks(t, b)) if t0 == t => {
                    b0.to_mut().extend_from_slice(&b);
                    Some((c0, n0 + n, Rows::Blocks(t0, b0)))
                }
                (Some((c0, n0, Rows::Values(mut v0))), Rows::Values(v)) => {
                    v0.extend_from_slice(&v);
                    Some((c0, n0 + n, Rows::Values(v0)))
                }
                (done, rows) => {
                    if let Some((c0, n0, r)) = done {
                        parts.push((c0, store_rows(gpu, r, n0, k_in, store, &label)?));
                    }
                    Some((col, n, rows))
                }
            };
            col += n;
        }
        if let Some((c0, n0, r)) = pending {
            parts.push((c0, store_rows(gpu, r, n0, k_in, store, &label)?));
        }
        let bias = if bias {
            let mut values = Vec::with_capacity(col);
            for &(name, n) in layers {
                values.extend(wf.get(&format!("{name}.bias"), &[n])?.data);
            }
            Some(gpu.upload_f32(&values, &[col], &format!("{label} bias"))?)
        } else {
            None
        };
        Ok(Self {
            parts,
            widths: layers.iter().map(|l| l.1).collect(),
            bias,
        })
    }

    /// `out [M, n_out] = epilogue(x @ W + bias)` for a single layer.
    pub fn forward(
        &self,
        b: &mut Batch,
        x: &Tensor,
        epilogue: Epilogue,
        out: &Tensor,
    ) -> Result<()> {
        match self.parts.as_slice() {
            [(_, w)] if self.widths.len() == 1 => {
                matmul(b, x, w, self.bias.as_ref(), epilogue, out)
            }
            _ => Err(Error::InvalidArgument(format!(
                "{} layers side by side: use forward_side_by_side",
                self.widths.len()
            ))),
        }
    }

    /// Every layer's `epilogue(x @ W + bias)` for the `M` rows of x, written to `out` (at least
    /// `side_by_side_offsets(M, widths).1` floats) as one row-major `[M, n_out]` block per layer, one
    /// after another; returns those blocks.
    pub fn forward_side_by_side(
        &self,
        b: &mut Batch,
        x: &Tensor,
        epilogue: Epilogue,
        out: &Tensor,
    ) -> Result<Vec<Tensor>> {
        let m = x.shape().first().copied().unwrap_or(0);
        for (col, w) in &self.parts {
            matmul_into(
                b,
                x,
                w,
                self.bias.as_ref(),
                epilogue,
                out,
                &self.widths,
                *col,
            )?;
        }
        let (starts, _) = side_by_side_offsets(m, &self.widths);
        Ok(starts
            .iter()
            .zip(&self.widths)
            .map(|(&s, &w)| out.slice(s, &[m, w]))
            .collect())
    }

    pub fn bytes(&self) -> u64 {
        self.parts.iter().map(|(_, w)| w.bytes()).sum::<u64>()
            + self.bias.as_ref().map_or(0, Tensor::buffer_bytes)
    }
}

/// `n` rows of `k` as a GPU matrix: blocks stay as the file has them, values are stored as
/// `store` says.
fn store_rows(
    gpu: &Gpu,
    rows: Rows,
    n: usize,
    k: usize,
    store: WeightStore,
    label: &str,
) -> Result<WeightMatrix> {
    match rows {
        Rows::Blocks(ty, bytes) => WeightMatrix::from_ggml(gpu, ty, &bytes, n, k, label),
        Rows::Values(v) => match store.block_for(k) {
            Some(ty) => WeightMatrix::from_ggml(gpu, ty, &quantize(ty, &v)?, n, k, label),
            None => WeightMatrix::from_out_in(gpu, &v, n, k, store.dtype, label),
        },
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
