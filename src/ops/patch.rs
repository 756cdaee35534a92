//! CLIP's patch embedding as im2col + matmul, and the [CLS] + position embedding step
//! (`shaders/patch.wgsl`).

use super::{dims2, expect_shape};
use crate::gpu::{Batch, Bind, Kernel, Tensor};
use crate::{Error, Result};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    height: u32,
    width: u32,
    ps: u32,
    d: u32,
    _pad: [u32; 3],
}

const WG: u32 = 256;

/// `pixels [3, H, W]` -> `out [P, 3*patch*patch]`, patches in row-major grid order.
pub fn im2col(b: &mut Batch, pixels: &Tensor, patch: usize, out: &Tensor) -> Result<()> {
    let [c, h, w] = pixels.shape() else {
        return Err(Error::shape(
            "pixels",
            "[3, H, W]",
            format!("{:?}", pixels.shape()),
        ));
    };
    if *c != 3 || patch == 0 || h % patch != 0 || w % patch != 0 {
        return Err(Error::shape(
            "pixels",
            format!("[3, H, W] with H and W multiples of {patch}"),
            format!("{:?}", pixels.shape()),
        ));
    }
    let patches = (h / patch) * (w / patch);
    expect_shape("im2col output", out, &[patches, 3 * patch * patch])?;
    let n = out.numel() as u32;
    let p = Params {
        n,
        height: *h as u32,
        width: *w as u32,
        ps: patch as u32,
        d: 0,
        _pad: [0; 3],
    };
    let grid = b.gpu().grid(n.div_ceil(WG));
    let k = Kernel::new("patch", "im2col").define("WG", format!("{WG}u"));
    b.dispatch(&k, &p, &[Bind::R(pixels), Bind::W(out)], grid)
}

/// `out[0] = class + positions[0]`, `out[1 + p] = patches[p] + positions[1 + p]`.
pub fn vision_embed(
    b: &mut Batch,
    patches: &Tensor,
    class: &Tensor,
    positions: &Tensor,
    out: &Tensor,
) -> Result<()> {
    let (np, d) = dims2("patch embeddings", patches)?;
    expect_shape("class embedding", class, &[d])?;
    expect_shape("position embeddings", positions, &[np + 1, d])?;
    expect_shape("vision embeddings", out, &[np + 1, d])?;
    let n = out.numel() as u32;
    let p = Params {
        n,
        height: 0,
        width: 0,
        ps: 0,
        d: d as u32,
        _pad: [0; 3],
    };
    let grid = b.gpu().grid(n.div_ceil(WG));
    let k = Kernel::new("patch", "vision_embed").define("WG", format!("{WG}u"));
    b.dispatch(
        &k,
        &p,
        &[
            Bind::R(patches),
            Bind::W(out),
            Bind::R(class),
            Bind::R(positions),
        ],
        grid,
    )
}
