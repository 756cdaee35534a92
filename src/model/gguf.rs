//! GGUF files (llama.cpp's model format, versions 2 and 3): header, metadata, tensor table and
//! the aligned data section. Every read is bounds-checked, so a damaged or truncated file is an
//! error naming what is wrong and where, never a panic or a huge allocation.

use super::config::TextConfig;
use crate::ops::GgmlType;
use crate::{Error, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// Any non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Self::I8(v) => Some(v.into()),
            Self::I16(v) => Some(v.into()),
            Self::I32(v) => Some(v.into()),
            Self::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            Self::F32(v) => Some(v),
            Self::F64(v) => Some(v as f32),
            _ => self.as_i64().map(|v| v as f32),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// A tensor-table entry.
#[derive(Clone, Debug)]
pub struct GgufTensor {
    pub name: String,
    /// ggml order: `dims[0]` is the contiguous (innermost) dimension.
    pub dims: Vec<usize>,
    pub ty: GgmlType,
    /// Absolute byte offset of the data in the file.
    pub offset: usize,
    pub bytes: usize,
}

impl GgufTensor {
    /// Row-major shape, outermost first (PyTorch's order): a `[out, in]` matrix is `[n, k]`.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().copied().collect()
    }

    pub fn elements(&self) -> usize {
        self.dims.iter().product()
    }
}

pub struct Gguf {
    pub version: u32,
    path: PathBuf,
    metadata: BTreeMap<String, MetaValue>,
    tensors: Vec<GgufTensor>,
    index: HashMap<String, usize>,
    data: Vec<u8>,
}

/// The magic number: "GGUF" in file order.
const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: usize = 32;
const MAX_DIMS: usize = 4;

/// A cursor over the file that fails, naming the field, instead of reading past the end.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn err(&self, what: &str, msg: impl std::fmt::Display) -> Error {
        Error::file(
            self.path,
            format!("GGUF {what} at byte {}: {msg}", self.pos),
        )
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| {
            self.err(
                what,
                format!(
                    "needs {n} bytes but the file ends after {} (truncated?)",
                    self.bytes.len() - self.pos
                ),
            )
        })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        Ok(self.take(N, what)?.try_into().unwrap())
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count of items each at least `min_item` bytes long: rejected when the rest of the file
    /// could not hold them (so a corrupt count never allocates gigabytes).
    fn count(&mut self, min_item: usize, what: &str) -> Result<usize> {
        let n = self.u64(what)?;
        let left = (self.bytes.len() - self.pos) as u64;
        if n.saturating_mul(min_item.max(1) as u64) > left {
            return Err(self.err(
                what,
                format!("count {n} cannot fit in the {left} bytes left (corrupt file?)"),
            ));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.count(1, what)?;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.err(what, "string is not UTF-8"))
    }

    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<MetaValue> {
        Ok(match ty {
            0 => MetaValue::U8(self.array::<1>(key)?[0]),
            1 => MetaValue::I8(self.array::<1>(key)?[0] as i8),
            2 => MetaValue::U16(u16::from_le_bytes(self.array(key)?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array(key)?)),
            4 => MetaValue::U32(self.u32(key)?),
            5 => MetaValue::I32(i32::from_le_bytes(self.array(key)?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array(key)?)),
            7 => match self.array::<1>(key)?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => return Err(self.err(key, format!("bool value {b}"))),
            },
            8 => MetaValue::Str(self.string(key)?),
            9 => {
                if depth > 0 {
                    return Err(self.err(key, "nested arrays are not supported"));
                }
                let item = self.u32(key)?;
                let min = match item {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    _ => 8,
                };
                let n = self.count(min, key)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(item, key, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64(key)?),
            11 => MetaValue::I64(i64::from_le_bytes(self.array(key)?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array(key)?)),
            other => return Err(self.err(key, format!("unknown metadata value type {other}"))),
        })
    }
}

impl Gguf {
    pub fn open(path: &Path) -> Result<Self> {
        let data = std::fs::read(path).map_err(|e| Error::file(path, e))?;
        Self::from_bytes(path, data)
    }

    /// Parse a whole GGUF file held in memory; `path` names it in errors.
    pub fn from_bytes(path: impl Into<PathBuf>, data: Vec<u8>) -> Result<Self> {
        let path = path.into();
        let mut r = Reader {
            bytes: &data,
            pos: 0,
            path: &path,
        };
        let magic = r.array::<4>("magic")?;
        if &magic != MAGIC {
            return Err(Error::file(
                &path,
                format!(
                    "not a GGUF file (starts with {magic:02x?}, a GGUF file starts with \"GGUF\")"
                ),
            ));
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(Error::file(
                &path,
                format!("GGUF version {version}: only versions 2 and 3 are supported (re-convert the model with a current llama.cpp)"),
            ));
        }
        // Each tensor-info record takes at least 24 bytes, each metadata pair at least 13.
        let n_tensors = r.count(24, "tensor count")?;
        let n_meta = r.count(13, "metadata count")?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_meta {
            let key = r.string("metadata key")?;
            let ty = r.u32(&key)?;
            let v = r.value(ty, &key, 0)?;
            metadata.insert(key, v);
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a as usize,
                _ => {
                    return Err(Error::file(
                        &path,
                        format!("general.alignment {v:?} is not a power of two"),
                    ))
                }
            },
        };
        let mut infos = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = r.string("tensor name")?;
            let n_dims = r.u32(&name)? as usize;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(r.err(
                    &name,
                    format!("{n_dims} dimensions (1 to {MAX_DIMS} allowed)"),
                ));
            }
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                let d = r.u64(&name)?;
                dims.push(usize::try_from(d).map_err(|_| r.err(&name, "dimension too large"))?);
            }
            let ty_id = r.u32(&name)?;
            let offset = r.u64(&name)?;
            infos.push((name, dims, ty_id, offset));
        }
        let data_start = r.pos.next_multiple_of(alignment);
        let mut tensors = Vec::with_capacity(infos.len());
        let mut index = HashMap::new();
        for (name, dims, ty_id, offset) in infos {
            let at = |msg: String| Error::file(&path, format!("GGUF tensor {name}: {msg}"));
            let ty = GgmlType::from_id(ty_id).map_err(|e| at(e.to_string()))?;
            let elems = dims
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .ok_or_else(|| at(format!("dimensions {dims:?} overflow")))?;
            if dims[0] % ty.block_elems() != 0 {
                return Err(at(format!(
                    "rows of {} values are not whole {} blocks of {}",
                    dims[0],
                    ty.name(),
                    ty.block_elems()
                )));
            }
            let bytes = ty.bytes_for(elems).map_err(|e| at(e.to_string()))?;
            if offset % alignment as u64 != 0 {
                return Err(at(format!(
                    "offset {offset} is not a multiple of the alignment {alignment}"
                )));
            }
            let start = (data_start as u64).checked_add(offset);
            let end = start.and_then(|s| s.checked_add(bytes as u64));
            match (start, end) {
                (Some(s), Some(e)) if e <= data.len() as u64 => {
                    if index.insert(name.clone(), tensors.len()).is_some() {
                        return Err(at("appears twice in the tensor table".into()));
                    }
                    tensors.push(GgufTensor {
                        name,
                        dims,
                        ty,
                        offset: s as usize,
                        bytes,
                    });
                }
                _ => {
                    return Err(at(format!(
                        "data ({bytes} bytes at offset {offset} of the data section at byte {data_start}) runs past the end of the {}-byte file (truncated download?)",
                        data.len()
                    )))
                }
            }
        }
        Ok(Self {
            version,
            path,
            metadata,
            tensors,
            index,
            data,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn metadata(&self) -> &BTreeMap<String, MetaValue> {
        &self.metadata
    }

    pub fn meta(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    /// A metadata value that must be present, with an error naming the key.
    pub fn require(&self, key: &str) -> Result<&MetaValue> {
        self.meta(key).ok_or_else(|| {
            Error::file(
                &self.path,
                format!(
                    "GGUF metadata {key} is missing (is this a complete llama.cpp model file?)"
                ),
            )
        })
    }

    /// `general.architecture`, e.g. `llama` or `qwen2`.
    pub fn architecture(&self) -> Result<&str> {
        self.require("general.architecture")?
            .as_str()
            .ok_or_else(|| Error::file(&self.path, "general.architecture is not a string"))
    }

    pub fn tensors(&self) -> &[GgufTensor] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&GgufTensor> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    /// The raw bytes (blocks of `t.ty`) of a tensor of this file.
    pub fn data(&self, t: &GgufTensor) -> &[u8] {
        &self.data[t.offset..t.offset + t.bytes]
    }

    /// Bytes of all tensor data.
    pub fn tensor_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.bytes as u64).sum()
    }
}

/// Decoder architectures this library runs from GGUF files.
const ARCHITECTURES: &[&str] = &["llama", "qwen2"];

impl Gguf {
    /// The decoder's configuration from `{arch}.*` metadata, in the fields of `config.json`'s
    /// `text_config`; the vocabulary size comes from the embedding table, tied embeddings from
    /// the absence of `output.weight`.
    pub fn text_config(&self) -> Result<TextConfig> {
        let arch = self.architecture()?;
        if !ARCHITECTURES.contains(&arch) {
            return Err(Error::file(
                &self.path,
                format!(
                    "GGUF architecture {arch:?} is not supported: supported are {}",
                    ARCHITECTURES.join(", ")
                ),
            ));
        }
        let key = |k: &str| format!("{arch}.{k}");
        let int = |k: &str| -> Result<u64> {
            let name = key(k);
            self.require(&name)?.as_u64().ok_or_else(|| {
                Error::file(
                    &self.path,
                    format!("GGUF metadata {name} is not an integer"),
                )
            })
        };
        let float = |k: &str| self.meta(&key(k)).and_then(MetaValue::as_f32);
        let embd = self
            .tensor("token_embd.weight")
            .ok_or_else(|| Error::file(&self.path, "GGUF tensor token_embd.weight is missing"))?;
        let heads = int("attention.head_count")?;
        let mut rope = serde_json::Map::new();
        if let Some(kind) = self
            .meta(&key("rope.scaling.type"))
            .and_then(MetaValue::as_str)
        {
            match kind {
                "none" => {}
                "linear" => {
                    rope.insert("rope_type".into(), "linear".into());
                    rope.insert(
                        "factor".into(),
                        float("rope.scaling.factor").unwrap_or(1.0).into(),
                    );
                }
                other => {
                    return Err(Error::file(
                        &self.path,
                        format!(
                            "{}: rope scaling {other:?} is not supported (none or linear)",
                            key("rope.scaling.type")
                        ),
                    ))
                }
            }
        }
        let mut cfg = serde_json::json!({
            "model_type": arch,
            "hidden_size": int("embedding_length")?,
            "intermediate_size": int("feed_forward_length")?,
            "num_hidden_layers": int("block_count")?,
            "num_attention_heads": heads,
            "num_key_value_heads": self.meta(&key("attention.head_count_kv")).and_then(MetaValue::as_u64).unwrap_or(heads),
            "vocab_size": embd.dims.get(1).copied().unwrap_or(0),
            "max_position_embeddings": int("context_length")?,
            "rms_norm_eps": float("attention.layer_norm_rms_epsilon").ok_or_else(|| {
                Error::file(&self.path, format!("GGUF metadata {} is missing", key("attention.layer_norm_rms_epsilon")))
            })?,
            "rope_theta": float("rope.freq_base").unwrap_or(10000.0),
            "tie_word_embeddings": self.tensor("output.weight").is_none(),
            "hidden_act": "silu",
        });
        if let Some(hd) = self
            .meta(&key("attention.key_length"))
            .and_then(MetaValue::as_u64)
        {
            cfg["head_dim"] = hd.into();
        }
        if !rope.is_empty() {
            cfg["rope_scaling"] = rope.into();
        }
        serde_json::from_value(cfg)
            .map_err(|e| Error::file(&self.path, format!("GGUF metadata: {e}")))
    }
}
