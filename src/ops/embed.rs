//! Token embeddings: a `[vocab, D]` table split into row chunks that each fit one storage
//! binding, and the gather kernel (`shaders/embed.wgsl`).

use super::{dims2, expect_shape};
use crate::gpu::{Batch, Bind, DType, Gpu, Kernel, Tensor};
use crate::{Error, Result};

pub struct EmbeddingTable {
    vocab: usize,
    dim: usize,
    dtype: DType,
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
    _pad: [u32; 3],
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
            dtype,
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

    pub fn bytes(&self) -> u64 {
        self.chunks.iter().map(|(_, t)| t.buffer_bytes()).sum()
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
    let kernel = Kernel::new("embed", "embed")
        .define("WG", format!("{WG}u"))
        .flag_if("W_F16", table.dtype == DType::F16);
    let grid = b.gpu().grid(((n * d) as u32).div_ceil(WG));
    for (start, chunk) in &table.chunks {
        let p = Params {
            n: n as u32,
            dim: d as u32,
            row_start: *start as u32,
            rows: chunk.shape()[0] as u32,
            vocab: table.vocab as u32,
            _pad: [0; 3],
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
