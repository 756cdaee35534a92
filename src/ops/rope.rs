//! Rotary position embeddings (`shaders/rope.wgsl`). Positions come from a tensor because token
//! reduction keeps the original positions of the tokens that survive.

use super::{dims2, expect_shape};
use crate::gpu::{Batch, Bind, DType, Gpu, Kernel, Tensor};
use crate::{Error, Result};

#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    Linear {
        factor: f32,
    },
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position: usize,
    },
}

/// Inverse frequencies for one head size, with the scaling rule applied, on the GPU.
pub struct RopeTable {
    head_dim: usize,
    inv_freq: Tensor,
}

impl RopeTable {
    pub fn new(gpu: &Gpu, head_dim: usize, theta: f32, scaling: &RopeScaling) -> Result<Self> {
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(Error::InvalidArgument(format!(
                "RoPE head_dim {head_dim} must be even"
            )));
        }
        let inv = inv_freq(head_dim, theta, scaling);
        Ok(Self {
            head_dim,
            inv_freq: gpu.upload_f32(&inv, &[head_dim / 2], "rope inv_freq")?,
        })
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
    }
}

/// transformers' float32 computation: `1 / theta^(arange(0, d, 2) / d)`, then the scaling.
pub fn inv_freq(head_dim: usize, theta: f32, scaling: &RopeScaling) -> Vec<f32> {
    let base: Vec<f32> = (0..head_dim / 2)
        .map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32))
        .collect();
    match *scaling {
        RopeScaling::None => base,
        RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position,
        } => {
            let old = original_max_position as f32;
            let low_wavelen = old / low_freq_factor;
            let high_wavelen = old / high_freq_factor;
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f32::consts::PI / f;
                    if wavelen > low_wavelen {
                        f / factor
                    } else if wavelen < high_wavelen {
                        f
                    } else {
                        let smooth = (old / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    heads: u32,
    hd: u32,
    _pad: u32,
}

const WG: u32 = 256;

/// Rotate `x [n, heads * head_dim]` in place by each row's position.
pub fn rope(
    b: &mut Batch,
    x: &Tensor,
    positions: &Tensor,
    heads: usize,
    table: &RopeTable,
) -> Result<()> {
    let (n, w) = dims2("rope input", x)?;
    if w != heads * table.head_dim {
        return Err(Error::shape(
            "rope input",
            format!("[n, {heads} x {}]", table.head_dim),
            format!("{:?}", x.shape()),
        ));
    }
    expect_shape("rope positions", positions, &[n])?;
    if positions.dtype() != DType::U32 {
        return Err(Error::shape(
            "rope positions",
            "u32",
            positions.dtype().name(),
        ));
    }
    let p = Params {
        n: n as u32,
        heads: heads as u32,
        hd: table.head_dim as u32,
        _pad: 0,
    };
    let total = (n * heads * table.head_dim / 2) as u32;
    let grid = b.gpu().grid(total.div_ceil(WG));
    let k = Kernel::new("rope", "rope").define("WG", format!("{WG}u"));
    b.dispatch(
        &k,
        &p,
        &[Bind::R(positions), Bind::W(x), Bind::R(&table.inv_freq)],
        grid,
    )
}
