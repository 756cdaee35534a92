//! Choosing the next token on the GPU, so a decoding step reads back 4 bytes
//! (`shaders/sample.wgsl`).

use crate::gpu::{Batch, Bind, DType, Kernel, Tensor};
use crate::{Error, Result};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    v: u32,
    temperature: f32,
    top_p: f32,
    random: f32,
}

const WG: u32 = 256;

fn check(logits: &Tensor, out: &Tensor) -> Result<u32> {
    if logits.shape().len() != 1 || logits.numel() == 0 {
        return Err(Error::shape(
            "logits",
            "[V]",
            format!("{:?}", logits.shape()),
        ));
    }
    if out.dtype() != DType::U32 || out.numel() != 1 {
        return Err(Error::shape(
            "sampled token",
            "u32 [1]",
            format!("{:?}", out),
        ));
    }
    Ok(logits.numel() as u32)
}

/// Index of the largest logit (the lowest one on ties).
pub fn argmax(b: &mut Batch, logits: &Tensor, out: &Tensor) -> Result<()> {
    let v = check(logits, out)?;
    let p = Params {
        v,
        temperature: 1.0,
        top_p: 1.0,
        random: 0.0,
    };
    let k = Kernel::new("sample", "argmax").define("WG", format!("{WG}u"));
    b.dispatch(&k, &p, &[Bind::R(logits), Bind::W(out)], [1, 1, 1])
}

/// Nucleus sampling at `temperature`: `random` (uniform in [0, 1), from the caller's seeded
/// generator) picks the token in the kept tokens' cumulative distribution, in index order.
pub fn sample(
    b: &mut Batch,
    logits: &Tensor,
    temperature: f32,
    top_p: f32,
    random: f32,
    out: &Tensor,
) -> Result<()> {
    let v = check(logits, out)?;
    if temperature <= 0.0 || !temperature.is_finite() {
        return Err(Error::InvalidArgument(format!(
            "temperature {temperature}: must be > 0 (use argmax for greedy decoding)"
        )));
    }
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(Error::InvalidArgument(format!(
            "top_p {top_p}: must be in (0, 1]"
        )));
    }
    if !(0.0..1.0).contains(&random) {
        return Err(Error::InvalidArgument(format!(
            "random {random}: must be in [0, 1)"
        )));
    }
    let p = Params {
        v,
        temperature,
        top_p,
        random,
    };
    let k = Kernel::new("sample", "sample").define("WG", format!("{WG}u"));
    b.dispatch(&k, &p, &[Bind::R(logits), Bind::W(out)], [1, 1, 1])
}
