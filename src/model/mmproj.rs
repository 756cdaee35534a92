//! llama.cpp's VLM pair: an LLM GGUF file (the decoder, its tokenizer and chat template) and an
//! `mmproj` GGUF file (architecture `clip`: a CLIP or SigLIP vision tower with LLaVA's MLP
//! projector). The mmproj metadata (`clip.vision.*`, `clip.projector_type`) becomes a
//! [`LlavaConfig`] and its tensors (`v.*`, `mm.0`, `mm.2`) map onto the canonical names the
//! safetensors loader uses, so the same tower, projector and reductions run on it.

use super::config::LlavaConfig;
use super::gguf::{Gguf, MetaValue};
use super::weights::WeightFile;
use crate::preprocess::{
    ChatTemplate, Filter, ImageProcessor, ImageProcessorConfig, ResizeTo, Tokenizer,
    IMAGE_PLACEHOLDER,
};
use crate::{Error, Result};
use std::path::Path;

/// The two files of a llama.cpp VLM, checked to belong together.
pub struct GgufPair {
    llm: Gguf,
    mmproj: Gguf,
    config: LlavaConfig,
    ffn_swapped: bool,
}

/// What the mmproj's tower is made of; the two kinds ficoco runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tower {
    /// [CLS], pre-layernorm, a convolution without bias.
    Clip,
    /// No [CLS], no pre-layernorm, a convolution with bias.
    Siglip,
}

impl GgufPair {
    pub fn open(llm: &Path, mmproj: &Path) -> Result<Self> {
        Self::new(Gguf::open(llm)?, Gguf::open(mmproj)?)
    }

    /// Check that `llm` is a decoder file with a tokenizer and `mmproj` a vision file ficoco
    /// can run, and that the projector writes the decoder's width.
    pub fn new(llm: Gguf, mmproj: Gguf) -> Result<Self> {
        let (llm_arch, mm_arch) = (llm.architecture()?, mmproj.architecture()?);
        if llm_arch == "clip" && mm_arch != "clip" {
            return Err(Error::file(
                llm.path(),
                format!(
                    "this is an mmproj (vision) file and {} is an LLM ({mm_arch}): the two files \
                     are swapped; pass the LLM as the model and this one as the mmproj",
                    mmproj.path().display()
                ),
            ));
        }
        if llm_arch == "clip" {
            return Err(Error::file(
                llm.path(),
                "this is an mmproj (vision) file, not an LLM: pass the language model's GGUF \
                 file as the model and this one as the mmproj",
            ));
        }
        if mm_arch != "clip" {
            return Err(Error::file(
                mmproj.path(),
                format!(
                    "architecture {mm_arch:?}: this is an LLM file, not an mmproj; the mmproj is \
                     the vision file (architecture \"clip\", often named mmproj-*.gguf) published \
                     beside the LLM"
                ),
            ));
        }
        let text = llm.text_config()?;
        let mm = Meta(&mmproj);
        if mm
            .get("clip.has_vision_encoder")
            .and_then(MetaValue::as_bool)
            == Some(false)
        {
            return Err(mm.err("clip.has_vision_encoder is false: this mmproj has no vision tower"));
        }
        let projector = mm
            .get("clip.vision.projector_type")
            .or_else(|| mm.get("clip.projector_type"))
            .map(|v| v.as_str().unwrap_or("?"))
            // llama.cpp takes a file without the key as an MLP projector.
            .unwrap_or("mlp");
        if projector != "mlp" {
            return Err(Error::Unsupported(format!(
                "{}: projector type {projector:?}: only LLaVA's \"mlp\" (mlp2x_gelu) projector is \
                 supported",
                mmproj.path().display()
            )));
        }
        let tower = mm.tower()?;
        let hidden = mm.int("clip.vision.embedding_length")?;
        let inter = mm.int("clip.vision.feed_forward_length")?;
        let layers = mm.int("clip.vision.block_count")?;
        let ffn_swapped = mm.ffn_swapped(hidden, inter)?;
        let (proj_in, proj_mid) = mm.matrix("mm.0.weight")?;
        let (proj_k, proj_out) = mm.matrix("mm.2.weight")?;
        if proj_out != text.hidden_size {
            return Err(Error::file(
                mmproj.path(),
                format!(
                    "the projector writes {proj_out}-wide embeddings but the LLM {} takes {}-wide \
                     ones: these files are not a pair (use the mmproj published with this LLM)",
                    llm.path().display(),
                    text.hidden_size
                ),
            ));
        }
        if proj_in != hidden || proj_mid != proj_out || proj_k != proj_mid {
            return Err(mm.err(&format!(
                "projector mm.0 {proj_in} -> {proj_mid}, mm.2 {proj_k} -> {proj_out}: LLaVA's \
                 mlp2x_gelu maps the tower's width {hidden} to the LLM's {proj_out} and keeps it"
            )));
        }
        let feature_layer = match mm.get("clip.vision.feature_layer") {
            None => layers,
            Some(v) => match v
                .as_array()
                .and_then(|a| a.iter().map(MetaValue::as_i64).collect::<Option<Vec<_>>>())
                .as_deref()
            {
                Some(&[l]) => {
                    if l < 0 || l as usize > layers {
                        return Err(mm.err(&format!(
                            "clip.vision.feature_layer {l} is not a hidden state of the \
                             {layers} stored layers"
                        )));
                    }
                    l as usize
                }
                _ => {
                    return Err(Error::Unsupported(format!(
                        "{}: clip.vision.feature_layer {v:?}: only one feature layer is supported \
                         (not the concatenated layers of Granite Vision)",
                        mmproj.path().display()
                    )))
                }
            },
        };
        let image_token = image_token_id(&llm)?;
        let model_type = match tower {
            Tower::Clip => "clip_vision_model",
            Tower::Siglip => "siglip_vision_model",
        };
        let value = serde_json::json!({
            "model_type": "llava",
            "image_token_index": image_token,
            "projector_hidden_act": "gelu",
            "multimodal_projector_bias": true,
            "vision_feature_layer": feature_layer,
            "vision_feature_select_strategy": if tower == Tower::Clip { "default" } else { "full" },
            "tie_word_embeddings": text.tie_word_embeddings,
            "vision_config": {
                "model_type": model_type,
                "hidden_size": hidden,
                "intermediate_size": inter,
                "num_hidden_layers": layers,
                "num_attention_heads": mm.int("clip.vision.attention.head_count")?,
                "image_size": mm.int("clip.vision.image_size")?,
                "patch_size": mm.int("clip.vision.patch_size")?,
                "layer_norm_eps": mm.float("clip.vision.attention.layer_norm_epsilon")?,
                // SigLIP's GELU is the tanh one (what ggml's GELU computes); for CLIP,
                // `use_gelu` stands for the checkpoint's exact `gelu`, else quick-GELU.
                "hidden_act": match (tower, mm.get("clip.use_gelu").and_then(MetaValue::as_bool)) {
                    (Tower::Siglip, _) => "gelu_pytorch_tanh",
                    (Tower::Clip, Some(true)) => "gelu",
                    (Tower::Clip, _) => "quick_gelu",
                },
            },
            "text_config": text,
        });
        let virtual_token = image_token as usize >= token_count(&llm)?;
        let config = LlavaConfig::from_json_value(value, mmproj.path(), virtual_token)?;
        // The preprocessing needs both: refuse now rather than at the first image.
        mm.mean_std()?;
        Ok(Self {
            llm,
            mmproj,
            config,
            ffn_swapped,
        })
    }

    /// The model the two files make: the mmproj's tower and projector, the LLM's decoder.
    pub fn config(&self) -> &LlavaConfig {
        &self.config
    }

    pub fn llm(&self) -> &Gguf {
        &self.llm
    }

    pub fn mmproj(&self) -> &Gguf {
        &self.mmproj
    }

    /// The LLM's tokenizer with `<image>` (added past the vocabulary when the file lacks it).
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        let mut tokenizer = Tokenizer::from_gguf(&self.llm)?;
        let id = tokenizer.ensure_special_token(IMAGE_PLACEHOLDER);
        if id != self.config.image_token_index {
            return Err(Error::file(
                self.llm.path(),
                format!(
                    "the tokenizer gave {IMAGE_PLACEHOLDER} id {id}, the model expects {}",
                    self.config.image_token_index
                ),
            ));
        }
        Ok(tokenizer)
    }

    /// The preprocessing the mmproj's metadata describes: CLIP's shortest-edge resize and
    /// centre crop or SigLIP's square resize (bicubic, as transformers' processors for these
    /// towers), then the file's mean and std.
    pub fn image_processor(&self) -> Result<ImageProcessor> {
        let size = self.config.vision_config.image_size;
        let resize = if self.config.vision_config.has_class_token() {
            ResizeTo::ShortestEdge(size)
        } else {
            ResizeTo::Exact {
                height: size,
                width: size,
            }
        };
        Ok(ImageProcessor::new(ImageProcessorConfig {
            convert_rgb: true,
            resize: Some((resize, Filter::Bicubic)),
            center_crop: self
                .config
                .vision_config
                .has_class_token()
                .then_some((size, size)),
            rescale: Some(1.0 / 255.0),
            normalize: Some(Meta(&self.mmproj).mean_std()?),
        }))
    }

    /// The LLM's chat template, if it has one (llava-1.5's Vicuna files have none; see
    /// [`crate::preprocess::image_prompt`]).
    pub fn chat_template(&self) -> Option<ChatTemplate> {
        self.llm
            .meta("tokenizer.chat_template")
            .map(|_| ChatTemplate::from_gguf(&self.llm))
    }

    /// The config with the LLM's and the mmproj's tensors.
    pub fn into_weights(self) -> (LlavaConfig, WeightFile, WeightFile) {
        let tc = &self.config.text_config;
        let (heads, kv) = (tc.num_attention_heads, tc.kv_heads());
        let llm = WeightFile::from_gguf(self.llm, heads, kv)
            .expect("the architecture was read when the pair was opened");
        let mmproj = WeightFile::from_mmproj(self.mmproj, self.ffn_swapped);
        (self.config, llm, mmproj)
    }
}

/// Tokens in the LLM's vocabulary.
fn token_count(llm: &Gguf) -> Result<usize> {
    llm.meta("tokenizer.ggml.tokens")
        .and_then(MetaValue::as_array)
        .map(<[MetaValue]>::len)
        .ok_or_else(|| {
            Error::file(
                llm.path(),
                "GGUF metadata tokenizer.ggml.tokens is missing: the LLM file carries no \
                 tokenizer, and the pair needs it",
            )
        })
}

/// The LLM's `<image>` token, or the first id past its vocabulary when it has none (the virtual
/// image token: llava-hf checkpoints put `<image>` there too, e.g. 32000 after Llama-2's 32000).
fn image_token_id(llm: &Gguf) -> Result<u32> {
    let n = token_count(llm)?;
    let tokens = llm
        .meta("tokenizer.ggml.tokens")
        .and_then(MetaValue::as_array);
    let found = tokens
        .into_iter()
        .flatten()
        .position(|t| t.as_str() == Some(IMAGE_PLACEHOLDER));
    Ok(found.unwrap_or(n) as u32)
}

/// The mmproj's metadata and tensor table, with errors naming the file.
struct Meta<'a>(&'a Gguf);

impl Meta<'_> {
    fn err(&self, msg: &str) -> Error {
        Error::file(self.0.path(), format!("mmproj: {msg}"))
    }

    fn get(&self, key: &str) -> Option<&MetaValue> {
        self.0.meta(key)
    }

    fn require(&self, key: &str) -> Result<&MetaValue> {
        self.get(key).ok_or_else(|| {
            self.err(&format!(
                "metadata {key} is missing (is this a complete llama.cpp mmproj file?)"
            ))
        })
    }

    fn int(&self, key: &str) -> Result<usize> {
        let v = self.require(key)?;
        v.as_u64()
            .map(|n| n as usize)
            .ok_or_else(|| self.err(&format!("metadata {key} {v:?} is not an integer")))
    }

    fn float(&self, key: &str) -> Result<f32> {
        let v = self.require(key)?;
        v.as_f32()
            .ok_or_else(|| self.err(&format!("metadata {key} {v:?} is not a number")))
    }

    fn mean_std(&self) -> Result<([f32; 3], [f32; 3])> {
        let three = |key: &str| -> Result<[f32; 3]> {
            let v = self.require(key)?;
            let values: Option<Vec<f32>> = v
                .as_array()
                .map(|a| a.iter().map(MetaValue::as_f32).collect())
                .and_then(|v: Option<Vec<f32>>| v);
            values
                .and_then(|v| <[f32; 3]>::try_from(v).ok())
                .ok_or_else(|| self.err(&format!("metadata {key} is not three numbers")))
        };
        Ok((
            three("clip.vision.image_mean")?,
            three("clip.vision.image_std")?,
        ))
    }

    fn has(&self, name: &str) -> bool {
        self.0.tensor(name).is_some()
    }

    /// (input, output) widths of a matrix that must be present.
    fn matrix(&self, name: &str) -> Result<(usize, usize)> {
        let t = self
            .0
            .tensor(name)
            .ok_or_else(|| self.err(&format!("tensor {name} is missing")))?;
        match t.shape()[..] {
            [out, input] => Ok((input, out)),
            _ => Err(self.err(&format!("tensor {name} has shape {:?}", t.shape()))),
        }
    }

    /// Which tower the tensors make, refusing what neither tower code path runs.
    fn tower(&self) -> Result<Tower> {
        let refuse = |what: &str| {
            Err(Error::Unsupported(format!(
                "{}: {what}; ficoco runs CLIP towers (v.class_embd, v.pre_ln) and SigLIP ones \
                 (a patch bias, neither of those) with separate attn_q/k/v and a two-matrix MLP",
                self.0.path().display()
            )))
        };
        for (name, what) in [
            (
                "v.patch_embd.weight.1",
                "a two-frame patch embedding (Qwen2-VL)",
            ),
            ("v.blk.0.attn_qkv.weight", "fused attn_qkv matrices"),
            ("v.blk.0.ffn_gate.weight", "a gated (SwiGLU) MLP"),
            ("mm.1.weight", "a normalised projector (mm.1)"),
            (
                "v.image_newline",
                "LLaVA-NeXT's image_newline (any-resolution tiling)",
            ),
        ] {
            if self.has(name) {
                return refuse(&format!("the file has {name}: {what}"));
            }
        }
        if self.get("clip.vision.image_grid_pinpoints").is_some() {
            return refuse("any-resolution tiling (clip.vision.image_grid_pinpoints)");
        }
        if !self.has("v.blk.0.attn_q.weight") {
            return refuse(
                "the file has no v.blk.0.attn_q.weight (no tower layers, or fused ones)",
            );
        }
        if !self.has("v.patch_embd.weight") || !self.has("v.position_embd.weight") {
            return Err(self.err(
                "tensor v.patch_embd.weight or v.position_embd.weight is missing (is this a \
                 vision mmproj?)",
            ));
        }
        let (cls, pre_ln, bias) = (
            self.has("v.class_embd"),
            self.has("v.pre_ln.weight"),
            self.has("v.patch_embd.bias"),
        );
        match (cls, pre_ln, bias) {
            (true, true, false) => Ok(Tower::Clip),
            (false, false, true) => Ok(Tower::Siglip),
            _ => refuse(&format!(
                "a tower with [CLS] {cls}, pre-layernorm {pre_ln}, patch bias {bias}"
            )),
        }
    }

    /// Whether fc1 is stored as `ffn_down` (the legacy converter's names): llama.cpp tells by
    /// the shapes, as here; with equal widths the names are taken as they are.
    fn ffn_swapped(&self, hidden: usize, inter: usize) -> Result<bool> {
        let (input, out) = self.matrix("v.blk.0.ffn_down.weight")?;
        Ok(hidden != inter && input == hidden && out == inter)
    }
}
