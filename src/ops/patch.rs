//! The ViT patch embedding as im2col + matmul, and the ([CLS] +) position embedding step
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

/// `pixels [3, H, W]` -> `out [P, 3*patch*patch]`, patches in row-major grid order over the
/// `(H / patch) x (W / patch)` grid (the remainder rows and columns are dropped, as the unpadded
/// stride-`patch` convolution does).
pub fn im2col(b: &mut Batch, pixels: &Tensor, patch: usize, out: &Tensor) -> Result<()> {
    let [c, h, w] = pixels.shape() else {
        return Err(Error::shape(
            "pixels",
            "[3, H, W]",
            format!("{:?}", pixels.shape()),
        ));
    };
    if *c != 3 || patch == 0 || *h < patch || *w < patch {
        return Err(Error::shape(
            "pixels",
            format!("[3, H, W] with H and W at least {patch}"),
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

/// With `class` (CLIP): `out[0] = class + positions[0]`, `out[1 + p] = patches[p] +
/// positions[1 + p]`; without (SigLIP): `out[p] = patches[p] + positions[p]`.
pub fn vision_embed(
    b: &mut Batch,
    patches: &Tensor,
    class: Option<&Tensor>,
    positions: &Tensor,
    out: &Tensor,
) -> Result<()> {
    let (np, d) = dims2("patch embeddings", patches)?;
    let t = np + usize::from(class.is_some());
    if let Some(class) = class {
        expect_shape("class embedding", class, &[d])?;
    }
    expect_shape("position embeddings", positions, &[t, d])?;
    expect_shape("vision embeddings", out, &[t, d])?;
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
    let k = Kernel::new("patch", "vision_embed")
        .define("WG", format!("{WG}u"))
        .flag_if("CLASS_TOKEN", class.is_some());
    let mut binds = vec![Bind::R(patches), Bind::W(out)];
    if let Some(class) = class {
        binds.push(Bind::R(class));
    }
    binds.push(Bind::R(positions));
    b.dispatch(&k, &p, &binds, grid)
}
