//! One reduction step on the GPU on tensors from a file, for research and debugging; the same
//! code the model runs ([`ficoco::reduce::ReductionStep`]).
//!
//! cargo run --release --example reduce -- --method ficoco-v --drop 100 \
//!     --input IN.safetensors --out OUT.safetensors --cls 0 --grid 24
//!
//! IN holds `hidden` (f32 [N, D]), `attn` (f32 [N, N], head-averaged softmax probabilities,
//! row = query), `positions` (i32 [N], grid index, -1 for [CLS]) and optionally `keys` (f32
//! [N, Dk], the similarity metric; the hidden states otherwise) and `sizes` (f32 [N], ToMe's
//! token sizes from earlier steps; 1 otherwise). OUT gets `hidden` (f32
//! [N - R, D]), `kept` (i64 [N - R], input index of each output token, -1 for a new one),
//! `positions` (i32) and `scores` (f32, each scored candidate's filter score).

use clap::Parser;
use ficoco::gpu::{Gpu, GpuOptions};
use ficoco::reduce::{self, run_once, PositionKind, Spans, NEW_TOKEN};
use ficoco::{Error, Result};
use safetensors::{Dtype, SafeTensors};
use std::ops::Range;
use std::path::{Path, PathBuf};

#[path = "common/cli.rs"]
mod cli;

/// One reduction step on the GPU on tensors from a safetensors file (see the file's docs).
#[derive(Parser)]
#[command(name = "reduce", after_help = cli::methods_help())]
struct Args {
    /// Single-step method (every --reduce method but ficoco-vl, which is two steps)
    #[arg(long)]
    method: String,
    /// Net number of tokens the step removes
    #[arg(long)]
    drop: usize,
    /// Input tensors: hidden, attn, positions, optionally keys and sizes
    #[arg(long, value_name = "IN.safetensors")]
    input: PathBuf,
    /// Output tensors: hidden, kept, positions, scores
    #[arg(long, value_name = "OUT.safetensors")]
    out: PathBuf,
    /// Index of the [CLS] token
    #[arg(long, value_name = "I")]
    cls: Option<usize>,
    /// Side of the square patch grid the positions index
    #[arg(long, value_name = "SIDE")]
    grid: Option<usize>,
    /// The visual span of an LLM sequence
    #[arg(long, value_name = "START:LEN", value_parser = span)]
    visual: Option<Range<usize>>,
    /// The text span the LLM-side scores read (the instruction after the image)
    #[arg(long, value_name = "START:LEN", value_parser = span)]
    text: Option<Range<usize>>,
    /// Positions are RoPE positions (LLM) rather than grid indices
    #[arg(long)]
    rope_positions: bool,
}

fn span(v: &str) -> std::result::Result<Range<usize>, String> {
    let bad = || format!("{v:?}: expected START:LEN");
    let (s, l) = v.split_once(':').ok_or_else(bad)?;
    let s: usize = s.parse().map_err(|_| bad())?;
    let l: usize = l.parse().map_err(|_| bad())?;
    Ok(s..s + l)
}

fn main() {
    cli::main_with(|_: &Args| Ok(()), run);
}

/// A tensor of `dtype` with `rank` dimensions, as raw bytes and shape.
fn tensor(
    st: &SafeTensors,
    path: &Path,
    name: &str,
    dtype: Dtype,
    rank: usize,
) -> Result<(Vec<u8>, Vec<usize>)> {
    let t = st
        .tensor(name)
        .map_err(|_| Error::file(path, format!("no tensor `{name}`")))?;
    if t.dtype() != dtype || t.shape().len() != rank {
        return Err(Error::shape(
            name,
            format!("{dtype:?} with {rank} dimensions"),
            format!("{:?} {:?}", t.dtype(), t.shape()),
        ));
    }
    Ok((t.data().to_vec(), t.shape().to_vec()))
}

fn run(a: Args) -> Result<()> {
    let spans = Spans {
        cls: a.cls,
        grid: a.grid,
        visual: a.visual.clone(),
        text: a.text.clone(),
        positions: if a.rope_positions {
            PositionKind::Rope
        } else {
            PositionKind::default()
        },
    };
    let bytes = std::fs::read(&a.input).map_err(|e| Error::file(&a.input, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| Error::file(&a.input, e))?;
    let (hidden, hs) = tensor(&st, &a.input, "hidden", Dtype::F32, 2)?;
    let (attn, as_) = tensor(&st, &a.input, "attn", Dtype::F32, 2)?;
    let (positions, ps) = tensor(&st, &a.input, "positions", Dtype::I32, 1)?;
    let keys = match st.tensor("keys") {
        Ok(_) => Some(tensor(&st, &a.input, "keys", Dtype::F32, 2)?),
        Err(_) => None,
    };
    let sizes = match st.tensor("sizes") {
        Ok(_) => Some(tensor(&st, &a.input, "sizes", Dtype::F32, 1)?),
        Err(_) => None,
    };
    let (n, d) = (hs[0], hs[1]);
    if as_ != [n, n]
        || ps != [n]
        || keys.as_ref().is_some_and(|(_, s)| s[0] != n)
        || sizes.as_ref().is_some_and(|(_, s)| s[0] != n)
    {
        return Err(Error::shape(
            "inputs",
            format!(
                "attn [{n}, {n}], positions [{n}], keys [{n}, Dk], sizes [{n}] for hidden [{n}, {d}]"
            ),
            format!("attn {as_:?}, positions {ps:?}"),
        ));
    }
    let f32s = |b: &[u8]| bytemuck::pod_collect_to_vec::<u8, f32>(b);
    let r = reduce::by_name(&a.method)?;
    let Some(r) = r else {
        if a.drop != 0 {
            return Err(Error::InvalidArgument(
                "method none drops nothing: use --drop 0".into(),
            ));
        }
        return write(
            &a.out,
            &f32s(&hidden),
            d,
            &(0..n as u32).collect::<Vec<_>>(),
            &bytemuck::pod_collect_to_vec(&positions),
            &[],
        );
    };
    let gpu = Gpu::new_blocking(&GpuOptions::from_env()?)?;
    let keys = keys.map(|(k, _)| f32s(&k));
    let sizes = sizes.map(|(z, _)| f32s(&z));
    let out = pollster::block_on(run_once(
        &gpu,
        &r,
        &spans,
        &f32s(&hidden),
        d,
        keys.as_deref(),
        &f32s(&attn),
        &bytemuck::pod_collect_to_vec(&positions),
        sizes.as_deref(),
        a.drop,
    ))?;
    write(
        &a.out,
        &out.hidden,
        d,
        &out.kept,
        &out.positions,
        &out.scores,
    )?;
    eprintln!(
        "{}: {n} -> {} tokens on {} ({} merged into survivors or new tokens)",
        a.method,
        out.kept.len(),
        gpu.describe(),
        a.drop
    );
    Ok(())
}

fn write(
    path: &Path,
    hidden: &[f32],
    d: usize,
    kept: &[u32],
    positions: &[i32],
    scores: &[f32],
) -> Result<()> {
    use safetensors::tensor::TensorView;
    let kept: Vec<i64> = kept
        .iter()
        .map(|&k| if k == NEW_TOKEN { -1 } else { k as i64 })
        .collect();
    let err = |e: safetensors::SafeTensorError| Error::file(path, e);
    let views = [
        (
            "hidden",
            TensorView::new(
                Dtype::F32,
                vec![kept.len(), d],
                bytemuck::cast_slice(hidden),
            )
            .map_err(err)?,
        ),
        (
            "kept",
            TensorView::new(Dtype::I64, vec![kept.len()], bytemuck::cast_slice(&kept))
                .map_err(err)?,
        ),
        (
            "positions",
            TensorView::new(
                Dtype::I32,
                vec![positions.len()],
                bytemuck::cast_slice(positions),
            )
            .map_err(err)?,
        ),
        (
            "scores",
            TensorView::new(Dtype::F32, vec![scores.len()], bytemuck::cast_slice(scores))
                .map_err(err)?,
        ),
    ];
    let bytes = safetensors::serialize(views, None).map_err(err)?;
    std::fs::write(path, bytes).map_err(|e| Error::file(path, e))
}
