//! LayerNorm (CLIP) and RMSNorm (Llama) over the last dimension: `shaders/norm.wgsl`.

use super::{dims2, expect_shape};
use crate::gpu::{Batch, Bind, Kernel, Tensor};
use crate::Result;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    dim: u32,
    eps: f32,
    _pad: u32,
}

const WG: u32 = 256;

/// `out = (x - mean) / sqrt(var + eps) * weight + bias`, per row.
pub fn layer_norm(
    b: &mut Batch,
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f32,
    out: &Tensor,
) -> Result<()> {
    let (rows, dim) = dims2("layer_norm input", x)?;
    expect_shape("layer_norm weight", weight, &[dim])?;
    expect_shape("layer_norm bias", bias, &[dim])?;
    expect_shape("layer_norm output", out, &[rows, dim])?;
    let p = Params {
        rows: rows as u32,
        dim: dim as u32,
        eps,
        _pad: 0,
    };
    let grid = b.gpu().grid(rows as u32);
    b.dispatch(
        &Kernel::new("norm", "layer_norm").define("WG", format!("{WG}u")),
        &p,
        &[Bind::R(x), Bind::R(weight), Bind::W(out), Bind::R(bias)],
        grid,
    )
}

/// `out = x / sqrt(mean(x^2) + eps) * weight`, per row.
pub fn rms_norm(b: &mut Batch, x: &Tensor, weight: &Tensor, eps: f32, out: &Tensor) -> Result<()> {
    let (rows, dim) = dims2("rms_norm input", x)?;
    expect_shape("rms_norm weight", weight, &[dim])?;
    expect_shape("rms_norm output", out, &[rows, dim])?;
    let p = Params {
        rows: rows as u32,
        dim: dim as u32,
        eps,
        _pad: 0,
    };
    let grid = b.gpu().grid(rows as u32);
    b.dispatch(
        &Kernel::new("norm", "rms_norm").define("WG", format!("{WG}u")),
        &p,
        &[Bind::R(x), Bind::R(weight), Bind::W(out)],
        grid,
    )
}
