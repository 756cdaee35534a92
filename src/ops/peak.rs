//! The adapter's multiply-add roof (`shaders/peak.wgsl`): a bench instrument, so that matmul
//! GFLOP/s can be read against what the adapter executes when no memory access is involved.

use super::expect_shape;
use crate::gpu::{Batch, Bind, Kernel, Tensor};
use crate::Result;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    steps: u32,
    n: u32,
    _pad: [u32; 2],
}

/// Floating-point operations per invocation and step (8 vec4 multiply-adds).
pub const ALU_PEAK_FLOPS_PER_STEP: u64 = 64;

/// Record `out.len()` invocations of `steps` register-only multiply-add steps; returns the
/// floating-point operations recorded.
pub fn alu_peak(b: &mut Batch, out: &Tensor, steps: u32) -> Result<u64> {
    let n = out.numel();
    expect_shape("alu_peak out", out, &[n])?;
    let p = Params {
        steps,
        n: n as u32,
        _pad: [0; 2],
    };
    let grid = b.gpu().grid((n as u32).div_ceil(64));
    b.dispatch(&Kernel::new("peak", "alu_peak"), &p, &[Bind::W(out)], grid)?;
    Ok(n as u64 * steps as u64 * ALU_PEAK_FLOPS_PER_STEP)
}
