//! Model weights from safetensors (single file or sharded with `model.safetensors.index.json`)
//! or a GGUF file, looked up by canonical names so the model code never sees which key layout or
//! file format a checkpoint uses.

use super::gguf::{Gguf, GgufTensor};
use crate::ops::{dequantize, GgmlType};
use crate::{Error, Result};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A tensor converted to f32 on the CPU.
#[derive(Clone, Debug)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Canonical prefix -> the prefixes checkpoints use for it, in the order tried: the published
/// llava-hf layout (transformers 4.x), then what transformers 5 writes.
const LAYOUTS: &[(&str, &[&str])] = &[
    (
        "vision.",
        &[
            "vision_tower.vision_model.",
            "model.vision_tower.vision_model.",
            "vision_tower.",
            "model.vision_tower.",
        ],
    ),
    (
        "projector.",
        &["multi_modal_projector.", "model.multi_modal_projector."],
    ),
    (
        "text.",
        &[
            "language_model.model.",
            "model.language_model.",
            "model.language_model.model.",
            "language_model.",
        ],
    ),
    ("lm_head.", &["language_model.lm_head.", "lm_head."]),
];

/// Canonical decoder names -> llama.cpp's GGUF tensor names (`blk.N.` replaces `text.layers.N.`).
const GGUF_NAMES: &[(&str, &str)] = &[
    ("text.embed_tokens", "token_embd"),
    ("text.norm", "output_norm"),
    ("lm_head", "output"),
    ("input_layernorm", "attn_norm"),
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("post_attention_layernorm", "ffn_norm"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
];

/// Canonical vision-tower and projector names -> the names of llama.cpp's `mmproj` files
/// (`v.blk.N.` replaces `vision.encoder.layers.N.`).
const MMPROJ_NAMES: &[(&str, &str)] = &[
    ("vision.embeddings.patch_embedding", "v.patch_embd"),
    ("vision.embeddings.position_embedding", "v.position_embd"),
    ("vision.pre_layrnorm", "v.pre_ln"),
    ("projector.linear_1", "mm.0"),
    ("projector.linear_2", "mm.2"),
    ("layer_norm1", "ln1"),
    ("layer_norm2", "ln2"),
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.out_proj", "attn_out"),
    ("mlp.fc1", "ffn_up"),
    ("mlp.fc2", "ffn_down"),
];

/// The GGUF name of a canonical tensor name, e.g. `text.layers.3.self_attn.q_proj.weight` ->
/// `blk.3.attn_q.weight`, `vision.encoder.layers.0.mlp.fc1.bias` -> `v.blk.0.ffn_up.bias`.
/// `ffn_swapped`: the file stores fc1 as `ffn_down` and fc2 as `ffn_up`, as llama.cpp's legacy
/// image-encoder converter did.
fn gguf_name(canonical: &str, ffn_swapped: bool) -> Option<String> {
    if canonical == "vision.embeddings.class_embedding" {
        return Some("v.class_embd".into());
    }
    let (stem, suffix) = canonical.rsplit_once('.')?;
    let (prefix, part, table) = if let Some(rest) = stem.strip_prefix("text.layers.") {
        let (layer, part) = rest.split_once('.')?;
        (format!("blk.{layer}."), part, GGUF_NAMES)
    } else if let Some(rest) = stem.strip_prefix("vision.encoder.layers.") {
        let (layer, part) = rest.split_once('.')?;
        let part = match (ffn_swapped, part) {
            (true, "mlp.fc1") => "mlp.fc2",
            (true, "mlp.fc2") => "mlp.fc1",
            _ => part,
        };
        (format!("v.blk.{layer}."), part, MMPROJ_NAMES)
    } else if stem.starts_with("vision.") || stem.starts_with("projector.") {
        (String::new(), stem, MMPROJ_NAMES)
    } else {
        (String::new(), stem, GGUF_NAMES)
    };
    let (_, g) = table.iter().find(|(c, _)| *c == part)?;
    Some(format!("{prefix}{g}.{suffix}"))
}

/// A tensor in its file's own encoding: the blocks of a GGML type, row-major `shape`.
pub struct RawTensor<'a> {
    pub ty: GgmlType,
    pub shape: Vec<usize>,
    pub bytes: Cow<'a, [u8]>,
}

/// llama.cpp's converter reorders the rows of each head of Llama's q_proj and k_proj so its
/// RoPE can rotate adjacent pairs; the decoder here rotates half-split pairs as transformers
/// does, so those rows are put back: file row `h*hd + 2i + j` is checkpoint row
/// `h*hd + j*hd/2 + i`.
struct RowOrder {
    heads: usize,
    kv_heads: usize,
}

impl RowOrder {
    fn heads_of(&self, canonical: &str) -> Option<usize> {
        if canonical.contains("self_attn.q_proj.") {
            Some(self.heads)
        } else if canonical.contains("self_attn.k_proj.") {
            Some(self.kv_heads)
        } else {
            None
        }
    }

    /// Reorder whole rows of `row_bytes` bytes (rows of blocks: quantised rows move intact).
    fn restore(heads: usize, rows: usize, row_bytes: usize, data: &[u8]) -> Vec<u8> {
        let hd = rows / heads;
        let half = hd / 2;
        let mut out = vec![0u8; data.len()];
        for h in 0..heads {
            for i in 0..half {
                for j in 0..2 {
                    let src = h * hd + 2 * i + j;
                    let dst = h * hd + j * half + i;
                    out[dst * row_bytes..(dst + 1) * row_bytes]
                        .copy_from_slice(&data[src * row_bytes..(src + 1) * row_bytes]);
                }
            }
        }
        out
    }
}

enum Source {
    Files {
        /// (path, bytes) per shard.
        shards: Vec<(PathBuf, Vec<u8>)>,
        /// checkpoint key -> shard index.
        keys: HashMap<String, usize>,
    },
    Memory(HashMap<String, HostTensor>),
    Gguf {
        file: Box<Gguf>,
        /// Set for the llama architecture (see [`RowOrder`]).
        row_order: Option<RowOrder>,
        /// An mmproj file with the legacy converter's swapped FFN names (see [`gguf_name`]).
        ffn_swapped: bool,
    },
}

pub struct WeightFile {
    source: Source,
    layout: String,
}

impl WeightFile {
    /// `dir/model.safetensors`, or the shards listed in `dir/model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(|e| Error::file(&index, e))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::file(&index, e))?;
            let map = v["weight_map"]
                .as_object()
                .ok_or_else(|| Error::file(&index, "no weight_map object"))?;
            let mut names: Vec<&str> = map.values().filter_map(|f| f.as_str()).collect();
            names.sort();
            names.dedup();
            names.into_iter().map(|n| dir.join(n)).collect()
        } else if single.exists() {
            vec![single]
        } else {
            return Err(Error::file(
                dir,
                "no model.safetensors or model.safetensors.index.json (only safetensors checkpoints are supported)",
            ));
        };
        let shards = files
            .into_iter()
            .map(|path| {
                let bytes = std::fs::read(&path)
                    .map_err(|e| Error::file(&path, format!("{e} (shard listed in the index)")))?;
                Ok((path, bytes))
            })
            .collect::<Result<Vec<_>>>()?;
        Self::from_shards(shards)
    }

    /// One safetensors file already in memory (the browser fetches it); `name` labels errors.
    pub fn from_safetensors_bytes(name: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Self> {
        Self::from_shards(vec![(name.into(), bytes)])
    }

    /// Index the tensors of safetensors files given as (name, bytes).
    fn from_shards(files: Vec<(PathBuf, Vec<u8>)>) -> Result<Self> {
        let mut shards = Vec::new();
        let mut keys = HashMap::new();
        for (path, bytes) in files {
            let st = safetensors::SafeTensors::deserialize(&bytes)
                .map_err(|e| Error::file(&path, format!("not a safetensors file: {e}")))?;
            for name in st.names() {
                keys.insert(name.to_string(), shards.len());
            }
            shards.push((path, bytes));
        }
        let layout = describe(keys.keys().map(String::as_str));
        Ok(Self {
            source: Source::Files { shards, keys },
            layout,
        })
    }

    /// The tensors of a GGUF file. `heads` / `kv_heads` (from its metadata) locate the Q/K head
    /// rows that llama-architecture files store reordered.
    pub fn from_gguf(file: Gguf, heads: usize, kv_heads: usize) -> Result<Self> {
        let arch = file.architecture()?.to_owned();
        let row_order = (arch == "llama").then_some(RowOrder { heads, kv_heads });
        Ok(Self {
            layout: format!("GGUF v{} ({arch})", file.version),
            source: Source::Gguf {
                file: Box::new(file),
                row_order,
                ffn_swapped: false,
            },
        })
    }

    /// The vision tower and projector of a llama.cpp `mmproj` file, under the canonical
    /// `vision.*` and `projector.*` names; `ffn_swapped` as [`gguf_name`] takes it.
    pub fn from_mmproj(file: Gguf, ffn_swapped: bool) -> Self {
        Self {
            layout: format!("GGUF v{} mmproj (clip)", file.version),
            source: Source::Gguf {
                file: Box::new(file),
                row_order: None,
                ffn_swapped,
            },
        }
    }

    /// The GGUF file behind these weights, if they come from one.
    pub fn gguf(&self) -> Option<&Gguf> {
        match &self.source {
            Source::Gguf { file, .. } => Some(file),
            _ => None,
        }
    }

    /// In-memory weights under canonical names (benchmarks with random weights).
    pub fn from_tensors(tensors: Vec<(String, HostTensor)>) -> Self {
        Self {
            source: Source::Memory(tensors.into_iter().collect()),
            layout: "in-memory (canonical names)".into(),
        }
    }

    pub fn describe_layout(&self) -> &str {
        &self.layout
    }

    fn candidates(canonical: &str) -> Vec<String> {
        LAYOUTS
            .iter()
            .find(|(c, _)| canonical.starts_with(c))
            .map(|(c, prefixes)| {
                prefixes
                    .iter()
                    .map(|p| format!("{p}{}", &canonical[c.len()..]))
                    .collect()
            })
            .unwrap_or_else(|| vec![canonical.to_string()])
    }

    pub fn contains(&self, canonical: &str) -> bool {
        match &self.source {
            Source::Memory(m) => m.contains_key(canonical),
            Source::Files { keys, .. } => Self::candidates(canonical)
                .iter()
                .any(|k| keys.contains_key(k)),
            Source::Gguf {
                file, ffn_swapped, ..
            } => gguf_name(canonical, *ffn_swapped).is_some_and(|n| file.tensor(&n).is_some()),
        }
    }

    fn gguf_tensor<'a>(
        file: &'a Gguf,
        canonical: &str,
        ffn_swapped: bool,
    ) -> Result<&'a GgufTensor> {
        let name = gguf_name(canonical, ffn_swapped);
        name.as_deref().and_then(|n| file.tensor(n)).ok_or_else(|| {
            Error::file(
                file.path(),
                format!(
                    "missing tensor {} (canonical {canonical})",
                    name.as_deref().unwrap_or("with no GGUF name")
                ),
            )
        })
    }

    /// The tensor in its stored encoding when it is a quantised GGUF tensor (so it can stay
    /// quantised on the GPU), checked against `expect_shape`; `None` for every other tensor,
    /// which [`Self::get`] returns as f32.
    pub fn get_quantized(
        &self,
        canonical: &str,
        expect_shape: &[usize],
    ) -> Result<Option<RawTensor<'_>>> {
        let Source::Gguf {
            file,
            row_order,
            ffn_swapped,
        } = &self.source
        else {
            return Ok(None);
        };
        let t = Self::gguf_tensor(file, canonical, *ffn_swapped)?;
        if !t.ty.is_quantized() {
            return Ok(None);
        }
        let shape = t.shape();
        check_shape(canonical, &shape, expect_shape, file.path())?;
        let data = file.data(t);
        let bytes = match row_order.as_ref().and_then(|o| o.heads_of(canonical)) {
            Some(heads) => {
                let rows = shape[0];
                Cow::Owned(RowOrder::restore(heads, rows, data.len() / rows, data))
            }
            None => Cow::Borrowed(data),
        };
        Ok(Some(RawTensor {
            ty: t.ty,
            shape,
            bytes,
        }))
    }

    /// The tensor as f32, checked against `expect_shape`.
    pub fn get(&self, canonical: &str, expect_shape: &[usize]) -> Result<HostTensor> {
        let (t, origin) = match &self.source {
            Source::Memory(m) => (
                m.get(canonical)
                    .cloned()
                    .ok_or_else(|| Error::InvalidArgument(format!("no tensor {canonical}")))?,
                PathBuf::from("<memory>"),
            ),
            Source::Files { shards, keys } => {
                let tried = Self::candidates(canonical);
                let (key, shard) = tried
                    .iter()
                    .find_map(|k| keys.get(k).map(|&s| (k, s)))
                    .ok_or_else(|| {
                        Error::file(
                            &shards[0].0,
                            format!("missing tensor {canonical} (tried {})", tried.join(", ")),
                        )
                    })?;
                let (path, bytes) = &shards[shard];
                let st = safetensors::SafeTensors::deserialize(bytes)
                    .map_err(|e| Error::file(path, e))?;
                let view = st.tensor(key).map_err(|e| Error::file(path, e))?;
                let data = to_f32(view.dtype(), view.data()).ok_or_else(|| {
                    Error::file(
                        path,
                        format!(
                            "{key}: unsupported dtype {:?} (use f32, f16 or bf16)",
                            view.dtype()
                        ),
                    )
                })?;
                (
                    HostTensor {
                        shape: view.shape().to_vec(),
                        data,
                    },
                    path.clone(),
                )
            }
            Source::Gguf {
                file,
                row_order,
                ffn_swapped,
            } => {
                let t = Self::gguf_tensor(file, canonical, *ffn_swapped)?;
                let shape = t.shape();
                let mut data = vec![0f32; t.elements()];
                dequantize(t.ty, file.data(t), &mut data)
                    .map_err(|e| Error::file(file.path(), format!("tensor {}: {e}", t.name)))?;
                if let Some(heads) = row_order.as_ref().and_then(|o| o.heads_of(canonical)) {
                    let rows = shape[0];
                    let row_bytes = data.len() / rows * 4;
                    let bytes =
                        RowOrder::restore(heads, rows, row_bytes, bytemuck::cast_slice(&data));
                    data = bytemuck::pod_collect_to_vec(&bytes);
                }
                (HostTensor { shape, data }, file.path().to_path_buf())
            }
        };
        check_shape(canonical, &t.shape, expect_shape, &origin)?;
        Ok(t)
    }
}

fn check_shape(canonical: &str, shape: &[usize], expect: &[usize], origin: &Path) -> Result<()> {
    if shape != expect {
        return Err(Error::file(
            origin,
            format!("tensor {canonical} has shape {shape:?}, the model config implies {expect:?}"),
        ));
    }
    Ok(())
}

fn to_f32(dtype: safetensors::Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    use safetensors::Dtype;
    Some(match dtype {
        Dtype::F32 => bytemuck::pod_collect_to_vec(bytes),
        Dtype::F16 => bytemuck::pod_collect_to_vec::<u8, half::f16>(bytes)
            .into_iter()
            .map(f32::from)
            .collect(),
        Dtype::BF16 => bytemuck::pod_collect_to_vec::<u8, half::bf16>(bytes)
            .into_iter()
            .map(f32::from)
            .collect(),
        _ => return None,
    })
}

fn describe<'a>(keys: impl Iterator<Item = &'a str>) -> String {
    let keys: Vec<&str> = keys.collect();
    let has = |p: &str| keys.iter().any(|k| k.starts_with(p));
    if has("vision_tower.vision_model.") {
        "llava-hf (vision_tower.vision_model.*, language_model.model.*)".into()
    } else if has("model.vision_tower.") {
        "transformers 5 (model.vision_tower.*, model.language_model.*)".into()
    } else if has("vision_tower.") {
        "transformers (vision_tower.*, language_model.*)".into()
    } else {
        "unrecognised".into()
    }
}
