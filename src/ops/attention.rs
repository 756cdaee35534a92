//! Attention over a key/value cache (`shaders/attention.wgsl`), optionally also producing the
//! head-averaged map that token-reduction layers score with.

use super::{dims2, expect_shape};
use crate::gpu::{AttentionVariant, Batch, Bind, DType, Gpu, Kernel, Tensor};
use crate::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub causal: bool,
    pub scale: f32,
}

/// The head-averaged map a token reduction reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttentionMap {
    /// Softmax probabilities after the mask (and ToMe's size bias): the papers' `A`.
    #[default]
    Probabilities,
    /// The pre-softmax scores `scale * q.k` over every key, unmasked and without size bias:
    /// what the FiCoCo authors' code scores with (`ficoco-v@authors`, `ficoco-l@authors`).
    Scores,
}

/// Largest head size the kernels hold in workgroup memory.
pub const MAX_HEAD_DIM: usize = 128;

/// Per-(query, head) log-sum-exp for the probabilities pass, allocated once.
pub struct AttentionScratch {
    lse: Tensor,
    max_q_len: usize,
    heads: usize,
}

impl AttentionScratch {
    pub fn new(gpu: &Gpu, max_q_len: usize, heads: usize) -> Result<Self> {
        Ok(Self {
            lse: gpu.zeros(&[max_q_len.max(1), heads], DType::F32, "attention lse")?,
            max_q_len,
            heads,
        })
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    q_len: u32,
    kv_len: u32,
    heads: u32,
    kv_heads: u32,
    hd: u32,
    causal: u32,
    scale: f32,
    _pad: u32,
}

/// `out = softmax(scale * q k^T [+ log key_sizes] [+ causal mask]) v` over cache rows
/// `0..kv_len`; with `map` (`[q_len, kv_len]`) also the head-averaged probabilities or scores
/// (row = query). `key_sizes [kv_len]` (ToMe's proportional attention) weighs each key by the
/// number of tokens it stands for.
///
/// `variant` names the kernel; `None` takes the device's [`AttentionVariant`], except that a
/// head size that is no multiple of 4 takes [`AttentionVariant::Shared`] (`rows` loads heads in
/// vec4s) unless the device's variant was forced, which is then an error. For a single query
/// `rows` gives each head an invocation, the heads of a kv head on whole groups of 8 lanes that
/// share each key load.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    b: &mut Batch,
    variant: Option<AttentionVariant>,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    kv_len: usize,
    shape: &AttentionShape,
    scratch: &AttentionScratch,
    out: &Tensor,
    map: Option<(&Tensor, AttentionMap)>,
    key_sizes: Option<&Tensor>,
) -> Result<()> {
    // One query: `rows` gives each head an invocation, each kv head's query heads whole groups
    // of 8 lanes (the 8 lanes of a subgroup share every key load, idle ones included).
    let decode = q.shape().first() == Some(&1);
    let decode_lanes = (shape.heads / shape.kv_heads.max(1)).div_ceil(8) * 8;
    let caps = &b.gpu().caps;
    let variant = variant.unwrap_or(if shape.head_dim % 4 != 0 && !caps.attention_forced {
        AttentionVariant::Shared
    } else {
        caps.attention
    });
    let s = shape;
    if s.heads == 0 || s.kv_heads == 0 || s.heads % s.kv_heads != 0 {
        return Err(Error::InvalidArgument(format!(
            "attention heads {} must be a multiple of kv heads {}",
            s.heads, s.kv_heads
        )));
    }
    if s.head_dim == 0 || s.head_dim > MAX_HEAD_DIM {
        return Err(Error::Unsupported(format!(
            "head_dim {} (the kernels take 1..={MAX_HEAD_DIM})",
            s.head_dim
        )));
    }
    let (q_len, qd) = dims2("attention queries", q)?;
    if qd != s.heads * s.head_dim {
        return Err(Error::shape(
            "attention queries",
            format!("[n, {}]", s.heads * s.head_dim),
            qd,
        ));
    }
    let kvd = s.kv_heads * s.head_dim;
    for (name, t) in [("keys", k), ("values", v)] {
        let (cap, d) = dims2(name, t)?;
        if d != kvd || cap < kv_len {
            return Err(Error::shape(
                name,
                format!("[>= {kv_len}, {kvd}]"),
                format!("{:?}", t.shape()),
            ));
        }
    }
    if kv_len == 0 || (s.causal && q_len > kv_len) {
        return Err(Error::InvalidArgument(format!(
            "attention of {q_len} queries over {kv_len} keys"
        )));
    }
    expect_shape("attention output", out, &[q_len, qd])?;
    if q_len > scratch.max_q_len || s.heads != scratch.heads {
        return Err(Error::InvalidArgument(format!(
            "attention scratch sized for {} queries x {} heads, used with {q_len} x {}",
            scratch.max_q_len, scratch.heads, s.heads
        )));
    }
    let p = Params {
        q_len: q_len as u32,
        kv_len: kv_len as u32,
        heads: s.heads as u32,
        kv_heads: s.kv_heads as u32,
        hd: s.head_dim as u32,
        causal: s.causal as u32,
        scale: s.scale,
        _pad: 0,
    };
    if let Some(sizes) = key_sizes {
        expect_shape("key sizes", sizes, &[kv_len])?;
    }
    let lse = scratch.lse.view(&[q_len, s.heads]);
    let (kernel, queries_per_workgroup) = match variant {
        AttentionVariant::Shared => (Kernel::new("attention", "attention"), 4),
        AttentionVariant::Rows => {
            if !b.gpu().caps.subgroups_of_eight() || s.head_dim % 4 != 0 {
                return Err(Error::Unsupported(format!(
                    "attention variant rows needs subgroups of at least 8 lanes and a head_dim that is a multiple of 4 (head_dim {}): use the shared variant (FICOCO_ATTENTION=shared)",
                    s.head_dim
                )));
            }
            (
                Kernel::new("attention", "attention_rows")
                    .flag("ROWS")
                    .flag_if("DECODE_HEADS", decode)
                    .define("HD", format!("{}u", s.head_dim)),
                64,
            )
        }
    };
    let kernel = kernel
        .flag("ATTENTION")
        .flag_if("WRITE_LSE", map.is_some())
        .flag_if("KEY_SIZES", key_sizes.is_some());
    let mut binds = vec![Bind::R(q), Bind::R(k), Bind::R(v), Bind::W(out)];
    if map.is_some() {
        binds.push(Bind::W(&lse));
    }
    binds.extend(key_sizes.map(Bind::R));
    let workgroups = if variant == AttentionVariant::Rows && decode {
        (s.kv_heads * decode_lanes).div_ceil(64)
    } else {
        q_len.div_ceil(queries_per_workgroup) * s.heads
    };
    let grid = b.gpu().grid(workgroups as u32);
    b.dispatch(&kernel, &p, &binds, grid)?;
    if let Some((probs, kind)) = map {
        expect_shape("attention map", probs, &[q_len, kv_len])?;
        let scores = kind == AttentionMap::Scores;
        // Scores take neither the log-sum-exp nor the size bias.
        let sizes = key_sizes.filter(|_| !scores);
        let (kernel, queries_per_workgroup) = match variant {
            AttentionVariant::Shared => (Kernel::new("attention", "probs_mean"), 1),
            AttentionVariant::Rows => (
                Kernel::new("attention", "probs_rows")
                    .flag("ROWS")
                    .define("HD", format!("{}u", s.head_dim)),
                64,
            ),
        };
        let kernel = kernel
            .flag("PROBS")
            .flag_if("SCORES", scores)
            .flag_if("KEY_SIZES", sizes.is_some());
        let grid = b.gpu().grid(q_len.div_ceil(queries_per_workgroup) as u32);
        let mut binds = vec![Bind::R(q), Bind::R(k), Bind::W(probs)];
        if !scores {
            binds.push(Bind::R(&lse));
        }
        binds.extend(sizes.map(Bind::R));
        b.dispatch(&kernel, &p, &binds, grid)?;
    }
    Ok(())
}
