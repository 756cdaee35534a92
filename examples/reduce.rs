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

use ficoco::gpu::{Gpu, GpuOptions};
use ficoco::reduce::{self, run_once, PositionKind, Spans, NEW_TOKEN};
use ficoco::{Error, Result};
use safetensors::{Dtype, SafeTensors};
use std::path::{Path, PathBuf};

const USAGE: &str = "usage: reduce --method M --drop R --input IN.safetensors --out OUT.safetensors
  [--cls I] [--grid SIDE] [--visual START:LEN --text START:LEN] [--rope-positions]
  methods: ficoco-v ficoco-l tome evit fastv pdrop sparsevlm prumerge visionzip random topk-cls pool none";

struct Args {
    method: String,
    drop: usize,
    input: PathBuf,
    out: PathBuf,
    spans: Spans,
}

fn span(flag: &str, v: &str) -> Result<std::ops::Range<usize>> {
    let bad = || Error::InvalidArgument(format!("{flag} {v:?}: expected START:LEN"));
    let (s, l) = v.split_once(':').ok_or_else(bad)?;
    let s: usize = s.parse().map_err(|_| bad())?;
    let l: usize = l.parse().map_err(|_| bad())?;
    Ok(s..s + l)
}

fn parse() -> Result<Args> {
    let mut method = None;
    let mut drop = None;
    let mut input = None;
    let mut out = None;
    let mut spans = Spans::default();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--rope-positions" {
            spans.positions = PositionKind::Rope;
            continue;
        }
        if flag == "-h" || flag == "--help" {
            return Err(Error::InvalidArgument(USAGE.into()));
        }
        let v = it
            .next()
            .ok_or_else(|| Error::InvalidArgument(format!("{flag} needs a value\n{USAGE}")))?;
        let num = |v: &str| {
            v.parse::<usize>()
                .map_err(|_| Error::InvalidArgument(format!("{flag} {v:?}: expected a number")))
        };
        match flag.as_str() {
            "--method" => method = Some(v),
            "--drop" => drop = Some(num(&v)?),
            "--input" => input = Some(PathBuf::from(v)),
            "--out" => out = Some(PathBuf::from(v)),
            "--cls" => spans.cls = Some(num(&v)?),
            "--grid" => spans.grid = Some(num(&v)?),
            "--visual" => spans.visual = Some(span(&flag, &v)?),
            "--text" => spans.text = Some(span(&flag, &v)?),
            other => {
                return Err(Error::InvalidArgument(format!(
                    "unknown option {other}\n{USAGE}"
                )))
            }
        }
    }
    let need = |what: &str| Error::InvalidArgument(format!("{what} is required\n{USAGE}"));
    Ok(Args {
        method: method.ok_or_else(|| need("--method"))?,
        drop: drop.ok_or_else(|| need("--drop"))?,
        input: input.ok_or_else(|| need("--input"))?,
        out: out.ok_or_else(|| need("--out"))?,
        spans,
    })
}

fn main() {
    if let Err(e) = parse().and_then(run) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
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
        &a.spans,
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
