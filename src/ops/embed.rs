//! Token embeddings: a `[vocab, D]` table split into row chunks that each fit one storage
//! binding, and the gather kernel (`shaders/embed.wgsl`).

use super::matmul::{WeightFormat, WeightMatrix};
use super::quant::GgmlType;
use super::{dims2, expect_shape};
use crate::gpu::{Batch, Bind, DType, Gpu, Kernel, Tensor, WeightLayout};
use crate::{Error, Result};

pub struct EmbeddingTable {
    vocab: usize,
    dim: usize,
    format: WeightFormat,
    /// Of quantised chunks (row groups).
    layout: WeightLayout,
    /// The chunks are a [`WeightMatrix`]'s buffers (see [`EmbeddingTable::from_matrix`]).
    shared: bool,
    /// (first row, rows) of each chunk.
    chunks: Vec<(usize, Tensor)>,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    dim: u32,
    row_start: u32,
    rows: u32,
    vocab: u32,
    row_words: u32,
    _pad: [u32; 2],
}

const WG: u32 = 256;

/// Upload `data` (row-major, `dim` values per row) in `dtype`: F32 as is, F16 packed.
pub(crate) fn upload_rows(
    gpu: &Gpu,
    data: &[f32],
    shape: &[usize],
    dtype: DType,
    label: &str,
) -> Result<Tensor> {
    match dtype {
        DType::F32 => gpu.upload_f32(data, shape, label),
        DType::F16 => {
            let h: Vec<half::f16> = data.iter().map(|&v| half::f16::from_f32(v)).collect();
            gpu.upload_f16(&h, shape, label)
        }
        other => Err(Error::InvalidArgument(format!(
            "{label}: weights must be f16 or f32, not {}",
            other.name()
        ))),
    }
}

impl EmbeddingTable {
    pub fn from_rows(
        gpu: &Gpu,
        data: &[f32],
        vocab: usize,
        dim: usize,
        dtype: DType,
        label: &str,
    ) -> Result<Self> {
        if data.len() != vocab * dim {
            return Err(Error::shape(label, format!("[{vocab}, {dim}]"), data.len()));
        }
        // Even row counts keep every f16 chunk starting on a word boundary.
        let row_bytes = dtype.bytes(dim).max(1);
        let max_rows = ((gpu.caps.max_binding / row_bytes) as usize) & !1;
        if max_rows == 0 {
            return Err(Error::Unsupported(format!(
                "{label}: one row of {dim} values exceeds the storage binding limit"
            )));
        }
        let mut chunks = Vec::new();
        let mut start = 0;
        while start < vocab {
            let rows = max_rows.min(vocab - start);
            let t = upload_rows(
                gpu,
                &data[start * dim..(start + rows) * dim],
                &[rows, dim],
                dtype,
                label,
            )?;
            chunks.push((start, t));
            start += rows;
        }
        Ok(Self {
            vocab,
            dim,
            format: WeightFormat::Dense(dtype),
            layout: WeightLayout::RowMajor,
            shared: false,
            chunks,
        })
    }

    /// From llama.cpp's layout (`vocab` rows of `dim` values in blocks of `ty`); quantised
    /// tables stay quantised and are dequantised by the gather.
    pub fn from_ggml(
        gpu: &Gpu,
        ty: GgmlType,
        bytes: &[u8],
        vocab: usize,
        dim: usize,
        label: &str,
    ) -> Result<Self> {
        if !ty.is_quantized() {
            let mut values = vec![0f32; vocab * dim];
            super::dequantize(ty, bytes, &mut values)
                .map_err(|e| Error::InvalidArgument(format!("{label}: {e}")))?;
            let dtype = if ty == GgmlType::F32 {
                DType::F32
            } else {
                DType::F16
            };
            return Self::from_rows(gpu, &values, vocab, dim, dtype, label);
        }
        let table =
            Self::from_matrix(&WeightMatrix::from_ggml(gpu, ty, bytes, vocab, dim, label)?)?;
        Ok(Self {
            shared: false,
            ..table
        })
    }

    /// A table gathering from the buffers of a quantised `[dim, vocab]` matrix (a tied LM head
    /// and its embeddings share one copy); `None` for a dense matrix, whose layout is transposed.
    pub fn from_matrix(m: &WeightMatrix) -> Result<Self> {
        let (ty, chunks) = m.block_chunks().ok_or_else(|| {
            Error::InvalidArgument(
                "only a quantised matrix can double as an embedding table".into(),
            )
        })?;
        Ok(Self {
            vocab: m.n(),
            dim: m.k(),
            format: WeightFormat::Blocks(ty),
            layout: m.layout(),
            shared: true,
            chunks,
        })
    }

    pub fn vocab(&self) -> usize {
        self.vocab
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn chunks(&self) -> usize {
        self.chunks.len()
    }

    /// GPU bytes of the table's buffers (also counted by the matrix when it shares them).
    pub fn bytes(&self) -> u64 {
        self.chunks.iter().map(|(_, t)| t.buffer_bytes()).sum()
    }

    /// Whether the buffers belong to a [`WeightMatrix`] (a tied LM head).
    pub fn shares_matrix(&self) -> bool {
        self.shared
    }
}

/// `out[i] = table[ids[i]]`; ids outside the vocabulary give zero rows.
pub fn embed(b: &mut Batch, table: &EmbeddingTable, ids: &Tensor, out: &Tensor) -> Result<()> {
    let (n, d) = dims2("embedding output", out)?;
    expect_shape("token ids", ids, &[n])?;
    if d != table.dim {
        return Err(Error::shape(
            "embedding output",
            format!("rows of {}", table.dim),
            d,
        ));
    }
    let (kernel, per) = match table.format {
        WeightFormat::Dense(dtype) => (
            Kernel::new("embed", "embed").flag_if("W_F16", dtype == DType::F16),
            1,
        ),
        WeightFormat::Blocks(ty) => (
            super::matmul::block_defines(
                Kernel::new("embed", "qembed").flag("QUANT"),
                ty,
                table.layout,
            ),
            8,
        ),
    };
    let kernel = kernel.define("WG", format!("{WG}u"));
    let grid = b.gpu().grid(((n * d / per) as u32).div_ceil(WG));
    for (start, chunk) in &table.chunks {
        let p = Params {
            n: n as u32,
            dim: d as u32,
            row_start: *start as u32,
            // Without the padding rows of the last group.
            rows: chunk.shape()[0].min(table.vocab - start) as u32,
            vocab: table.vocab as u32,
            row_words: chunk.shape().get(1).copied().unwrap_or(0) as u32,
            _pad: [0; 2],
        };
        b.dispatch(
            &kernel,
            &p,
            &[Bind::R(ids), Bind::W(out), Bind::R(chunk)],
            grid,
        )?;
    }
    Ok(())
}
