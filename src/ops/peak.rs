//! The adapter's roofs (`shaders/peak.wgsl`), bench instruments: multiply-adds with no memory
//! access, so that matmul GFLOP/s can be read against what the adapter executes, and streaming
//! reads with no arithmetic to speak of, the same for mat-vec GB/s.

use super::expect_shape;
use crate::gpu::{Batch, Bind, Kernel, Tensor};
use crate::{Error, Result};

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

/// Record one invocation per row of `data` (`[rows, words]` u32, `words` a multiple of 4), each
/// summing its row in 16-byte loads (wrapping) into `out [rows]` (the sum's bits as f32);
/// returns the bytes read.
pub fn read_peak(b: &mut Batch, data: &Tensor, out: &Tensor) -> Result<u64> {
    let [rows, words] = data.shape()[..] else {
        return Err(Error::shape(
            "read_peak data",
            "[rows, words]",
            format!("{:?}", data.shape()),
        ));
    };
    if words % 4 != 0 {
        return Err(Error::shape(
            "read_peak data",
            "words a multiple of 4",
            words,
        ));
    }
    expect_shape("read_peak out", out, &[rows])?;
    let p = Params {
        steps: (words / 4) as u32,
        n: rows as u32,
        _pad: [0; 2],
    };
    let grid = b.gpu().grid((rows as u32).div_ceil(64));
    let binds = [Bind::W(out), Bind::R(data)];
    b.dispatch(&Kernel::new("peak", "read_peak"), &p, &binds, grid)?;
    Ok((rows * words * 4) as u64)
}
