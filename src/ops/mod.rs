//! One thin wrapper per WGSL kernel family. Every op records into a [`Batch`]; none allocates,
//! reads back or submits, so a forward pass is a flat list of dispatches.
//!
//! Conventions: activations are f32, row-major, `[rows, cols]`; big weight matrices are
//! [`WeightMatrix`] (f16 or f32, `[K, N]` = PyTorch's `[out, in]` transposed), small vectors
//! (norm weights, biases) are f32.

pub mod attention;
pub mod elementwise;
pub mod embed;
pub mod matmul;
pub mod norm;
pub mod patch;
pub mod peak;
pub mod quant;
mod quantize;
pub mod reduce;
pub mod rope;
pub mod sample;

pub use attention::{attention, AttentionMap, AttentionScratch, AttentionShape};
pub use elementwise::{activate, add, copy_rows, gather_rows, silu_mul, Activation};
pub use embed::{embed, EmbeddingTable};
pub use matmul::{
    matmul, matmul_into, matmul_with, side_by_side_offsets, Epilogue, MatmulPath, WeightFormat,
    WeightMatrix,
};
pub use norm::{layer_norm, rms_norm};
pub use patch::{im2col, vision_embed};
pub use peak::{alu_peak, read_peak};
pub use quant::{dequantize, GgmlType};
pub use quantize::quantize;
pub use rope::{rope, RopeScaling, RopeTable};
pub use sample::{argmax, sample};

use crate::gpu::Tensor;
use crate::{Error, Result};

/// Fail with a shape error unless `t` has `shape`.
pub(crate) fn expect_shape(name: &str, t: &Tensor, shape: &[usize]) -> Result<()> {
    if t.shape() != shape {
        return Err(Error::shape(
            name,
            format!("{shape:?}"),
            format!("{:?}", t.shape()),
        ));
    }
    Ok(())
}

/// Rows and columns of a 2-D tensor.
pub(crate) fn dims2(name: &str, t: &Tensor) -> Result<(usize, usize)> {
    match t.shape() {
        [r, c] => Ok((*r, *c)),
        s => Err(Error::shape(name, "2 dimensions", format!("{s:?}"))),
    }
}
