//! Per-element kernels: activations, add, SwiGLU's silu-mul, row copies and gathers
//! (`shaders/elementwise.wgsl`).

use super::{dims2, expect_shape};
use crate::gpu::{Batch, Bind, DType, Kernel, Tensor};
use crate::{Error, Result};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    d: u32,
    row0: u32,
    _pad: u32,
}

const WG: u32 = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// Exact (erf) GELU, as torch `nn.GELU()`.
    Gelu,
    /// The tanh approximation, as torch `nn.GELU(approximate="tanh")` (SigLIP's).
    GeluTanh,
    /// `x * sigmoid(1.702 x)`, CLIP's.
    QuickGelu,
    Silu,
}

impl Activation {
    pub(crate) fn flag(self) -> &'static str {
        match self {
            Activation::Gelu => "ACT_GELU",
            Activation::GeluTanh => "ACT_GELU_TANH",
            Activation::QuickGelu => "ACT_QUICK_GELU",
            Activation::Silu => "ACT_SILU",
        }
    }
}

fn run(
    b: &mut Batch,
    kernel: Kernel,
    n: usize,
    d: usize,
    row0: usize,
    binds: &[Bind],
) -> Result<()> {
    let p = Params {
        n: n as u32,
        d: d as u32,
        row0: row0 as u32,
        _pad: 0,
    };
    let grid = b.gpu().grid((n as u32).div_ceil(WG));
    b.dispatch(&kernel.define("WG", format!("{WG}u")), &p, binds, grid)
}

fn same_shape(name: &str, a: &Tensor, c: &Tensor) -> Result<()> {
    expect_shape(name, c, a.shape())
}

pub fn activate(b: &mut Batch, x: &Tensor, act: Activation, out: &Tensor) -> Result<()> {
    same_shape("activation output", x, out)?;
    let k = Kernel::new("elementwise", "activate").flag(act.flag());
    run(b, k, x.numel(), 1, 0, &[Bind::R(x), Bind::W(out)])
}

pub fn add(b: &mut Batch, a: &Tensor, c: &Tensor, out: &Tensor) -> Result<()> {
    same_shape("add operand", a, c)?;
    same_shape("add output", a, out)?;
    let k = Kernel::new("elementwise", "add");
    run(
        b,
        k,
        a.numel(),
        1,
        0,
        &[Bind::R(a), Bind::W(out), Bind::R(c)],
    )
}

/// SwiGLU in place: `gate = silu(gate) * up`, where `gate` and `up` are blocks of one buffer,
/// `up` after `gate` (the outputs of gate and up side by side), bound once.
pub fn silu_mul(b: &mut Batch, gate: &Tensor, up: &Tensor) -> Result<()> {
    same_shape("silu_mul up", gate, up)?;
    let elem = DType::F32.bytes(1);
    if !gate.same_buffer(up) || up.offset < gate.offset + gate.bytes() {
        return Err(Error::InvalidArgument(
            "silu_mul: gate and up must be blocks of one buffer, up after gate".into(),
        ));
    }
    let up_at = ((up.offset - gate.offset) / elem) as usize;
    let span = gate.slice(0, &[up_at + up.numel()]);
    let k = Kernel::new("elementwise", "silu_mul").flag("IN_PLACE");
    run(b, k, gate.numel(), 1, up_at, &[Bind::W(&span)])
}

/// Write `src [n, D]` into rows `dst_row..dst_row + n` of `dst [m, D]`.
pub fn copy_rows(b: &mut Batch, src: &Tensor, dst: &Tensor, dst_row: usize) -> Result<()> {
    let (n, d) = dims2("copy_rows source", src)?;
    let (m, d2) = dims2("copy_rows destination", dst)?;
    if d != d2 || dst_row + n > m {
        return Err(Error::shape(
            "copy_rows destination",
            format!("at least {} rows of {d}", dst_row + n),
            format!("{:?}", dst.shape()),
        ));
    }
    let k = Kernel::new("elementwise", "copy_rows");
    run(b, k, n * d, d, dst_row, &[Bind::R(src), Bind::W(dst)])
}

/// `dst[r] = src[idx[r]]` for each row `r` (indices must be < rows of `src`).
pub fn gather_rows(b: &mut Batch, src: &Tensor, idx: &Tensor, dst: &Tensor) -> Result<()> {
    let (_, d) = dims2("gather_rows source", src)?;
    let (m, d2) = dims2("gather_rows destination", dst)?;
    if d != d2 {
        return Err(Error::shape(
            "gather_rows destination",
            format!("rows of {d}"),
            d2,
        ));
    }
    expect_shape("gather_rows indices", idx, &[m])?;
    if idx.dtype() != DType::U32 {
        return Err(Error::shape(
            "gather_rows indices",
            "u32",
            idx.dtype().name(),
        ));
    }
    let k = Kernel::new("elementwise", "gather_rows");
    run(
        b,
        k,
        m * d,
        d,
        0,
        &[Bind::R(src), Bind::W(dst), Bind::R(idx)],
    )
}
