//! Safetensors weights (single file or sharded with `model.safetensors.index.json`), looked up by
//! canonical names so the model code never sees which key layout a checkpoint uses.

use crate::{Error, Result};
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

enum Source {
    Files {
        /// (path, bytes) per shard.
        shards: Vec<(PathBuf, Vec<u8>)>,
        /// checkpoint key -> shard index.
        keys: HashMap<String, usize>,
    },
    Memory(HashMap<String, HostTensor>),
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
        }
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
        };
        if t.shape != expect_shape {
            return Err(Error::file(
                origin,
                format!(
                    "tensor {canonical} has shape {:?}, config.json implies {expect_shape:?}",
                    t.shape
                ),
            ));
        }
        Ok(t)
    }
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
