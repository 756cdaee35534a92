//! `config.json` of a llava-hf checkpoint, field names as in the file. Published configs omit
//! fields equal to transformers' defaults, so every missing field takes the default of
//! `LlavaConfig` or of the sub-config's own class, chosen by its `model_type`:
//! `CLIPVisionConfig` or `SiglipVisionConfig`, `LlamaConfig` or `Qwen2Config` (transformers 5.x
//! values).

use crate::ops::RopeScaling;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct VisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub num_channels: usize,
    pub layer_norm_eps: f32,
    pub hidden_act: String,
    pub model_type: String,
}

impl Default for VisionConfig {
    /// CLIPVisionConfig's own defaults (ViT-B/32), used for fields a config leaves out.
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            image_size: 224,
            patch_size: 32,
            num_channels: 3,
            layer_norm_eps: 1e-5,
            hidden_act: "quick_gelu".into(),
            model_type: CLIP_VISION.into(),
        }
    }
}

/// The vision towers this crate runs, by `vision_config.model_type`.
const CLIP_VISION: &str = "clip_vision_model";
const SIGLIP_VISION: &str = "siglip_vision_model";

impl VisionConfig {
    /// SiglipVisionConfig's own defaults (base, patch 16 at 224).
    fn siglip_default() -> Self {
        Self {
            patch_size: 16,
            layer_norm_eps: 1e-6,
            hidden_act: "gelu_pytorch_tanh".into(),
            model_type: SIGLIP_VISION.into(),
            ..Self::default()
        }
    }

    /// The given fields over the defaults of the tower class `model_type` names.
    fn from_value(v: &serde_json::Value) -> std::result::Result<Self, String> {
        let base = match v.get("model_type").and_then(|t| t.as_str()) {
            None | Some(CLIP_VISION) => Self::default(),
            Some(SIGLIP_VISION) => Self::siglip_default(),
            Some(other) => {
                return Err(format!(
                    "vision_config.model_type {other:?}: supported are {CLIP_VISION:?} and \
                     {SIGLIP_VISION:?} (a full \"siglip\"/\"clip\" config must be reduced to its \
                     vision part)"
                ))
            }
        };
        overlay(base, v)
    }

    /// CLIP prepends a [CLS] token; SigLIP has none (its tokens are the patches).
    pub fn has_class_token(&self) -> bool {
        self.model_type != SIGLIP_VISION
    }

    /// Patch grid side: the stride-`patch_size` convolution drops a remainder of the image.
    pub fn grid_side(&self) -> usize {
        self.image_size / self.patch_size.max(1)
    }

    /// Tokens the tower carries: the patches, plus [CLS] for CLIP.
    pub fn tokens(&self) -> usize {
        self.num_patches() + usize::from(self.has_class_token())
    }

    /// LlavaConfig's vision tower when `vision_config` is absent: CLIP ViT-L/14-336.
    fn llava_default() -> Self {
        Self {
            hidden_size: 1024,
            intermediate_size: 4096,
            num_hidden_layers: 24,
            num_attention_heads: 16,
            image_size: 336,
            patch_size: 14,
            ..Self::default()
        }
    }

    pub fn num_patches(&self) -> usize {
        self.grid_side().pow(2)
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
struct RawRope {
    #[serde(alias = "type")]
    rope_type: Option<String>,
    rope_theta: Option<f32>,
    factor: Option<f32>,
    low_freq_factor: Option<f32>,
    high_freq_factor: Option<f32>,
    original_max_position_embeddings: Option<usize>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct TextConfig {
    pub model_type: String,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: Option<f32>,
    rope_scaling: Option<RawRope>,
    /// transformers 5 keeps theta and scaling here.
    rope_parameters: Option<RawRope>,
    pub hidden_act: String,
    pub attention_bias: bool,
    pub tie_word_embeddings: Option<bool>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<serde_json::Value>,
    /// Qwen2's sliding-window attention (off in the published checkpoints).
    pub use_sliding_window: bool,
}

impl Default for TextConfig {
    /// LlamaConfig's defaults (Llama-2-7B shapes).
    fn default() -> Self {
        Self {
            model_type: LLAMA.into(),
            hidden_size: 4096,
            intermediate_size: 11008,
            num_hidden_layers: 32,
            num_attention_heads: 32,
            num_key_value_heads: None,
            head_dim: None,
            vocab_size: 32000,
            max_position_embeddings: 2048,
            rms_norm_eps: 1e-6,
            rope_theta: None,
            rope_scaling: None,
            rope_parameters: None,
            hidden_act: "silu".into(),
            attention_bias: false,
            tie_word_embeddings: None,
            bos_token_id: Some(1),
            eos_token_id: None,
            use_sliding_window: false,
        }
    }
}

/// The text models this crate runs, by `text_config.model_type`.
const LLAMA: &str = "llama";
const QWEN2: &str = "qwen2";

impl TextConfig {
    /// Qwen2Config's own defaults (Qwen2-7B-like shapes, no BOS).
    fn qwen2_default() -> Self {
        Self {
            model_type: QWEN2.into(),
            vocab_size: 151_936,
            intermediate_size: 22_016,
            num_key_value_heads: Some(32),
            max_position_embeddings: 32_768,
            bos_token_id: None,
            ..Self::default()
        }
    }

    /// The given fields over the defaults of the decoder class `model_type` names.
    fn from_value(v: &serde_json::Value) -> std::result::Result<Self, String> {
        let base = match v.get("model_type").and_then(|t| t.as_str()) {
            None | Some(LLAMA) => Self::default(),
            Some(QWEN2) => Self::qwen2_default(),
            Some(other) => {
                return Err(format!(
                    "text_config.model_type {other:?}: supported are {LLAMA:?} and {QWEN2:?}"
                ))
            }
        };
        overlay(base, v)
    }
}

/// `base` with every non-null field of the JSON object `given` written over it.
fn overlay<T: Serialize + serde::de::DeserializeOwned>(
    base: T,
    given: &serde_json::Value,
) -> std::result::Result<T, String> {
    let mut merged = serde_json::to_value(base).map_err(|e| e.to_string())?;
    let (Some(out), Some(fields)) = (merged.as_object_mut(), given.as_object()) else {
        return Err(format!("expected an object, found {given}"));
    };
    for (k, v) in fields.iter().filter(|(_, v)| !v.is_null()) {
        out.insert(k.clone(), v.clone());
    }
    serde_json::from_value(merged).map_err(|e| e.to_string())
}

impl TextConfig {
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Qwen2 always has q/k/v biases; Llama has them when `attention_bias` is set.
    pub fn qkv_bias(&self) -> bool {
        self.model_type == QWEN2 || self.attention_bias
    }

    pub fn theta(&self) -> f32 {
        self.rope_parameters
            .as_ref()
            .and_then(|r| r.rope_theta)
            .or(self.rope_theta)
            .unwrap_or(10000.0)
    }

    pub fn rope_scaling(&self) -> Result<RopeScaling> {
        let Some(r) = self.rope_scaling.as_ref().or(self.rope_parameters.as_ref()) else {
            return Ok(RopeScaling::None);
        };
        let need = |v: Option<f32>, name: &str| {
            v.ok_or_else(|| Error::InvalidArgument(format!("rope scaling needs {name}")))
        };
        Ok(match r.rope_type.as_deref().unwrap_or("default") {
            "default" => RopeScaling::None,
            "linear" => RopeScaling::Linear {
                factor: need(r.factor, "factor")?,
            },
            "llama3" => RopeScaling::Llama3 {
                factor: need(r.factor, "factor")?,
                low_freq_factor: need(r.low_freq_factor, "low_freq_factor")?,
                high_freq_factor: need(r.high_freq_factor, "high_freq_factor")?,
                original_max_position: r.original_max_position_embeddings.ok_or_else(|| {
                    Error::InvalidArgument(
                        "llama3 rope needs original_max_position_embeddings".into(),
                    )
                })?,
            },
            other => {
                return Err(Error::Unsupported(format!(
                    "rope type {other:?}: supported are default, linear and llama3"
                )))
            }
        })
    }
}

#[derive(Clone, Debug, Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(alias = "image_token_id")]
    image_token_index: Option<u32>,
    projector_hidden_act: Option<String>,
    vision_feature_layer: Option<serde_json::Value>,
    vision_feature_select_strategy: Option<String>,
    multimodal_projector_bias: Option<bool>,
    tie_word_embeddings: Option<bool>,
    vision_config: Option<serde_json::Value>,
    text_config: Option<serde_json::Value>,
}

#[derive(Clone, Debug)]
pub struct LlavaConfig {
    pub vision_config: VisionConfig,
    pub text_config: TextConfig,
    pub image_token_index: u32,
    pub projector_hidden_act: String,
    /// Index into the tower's hidden states `[embeddings, layer 1, ..., layer L]` (negative counts
    /// from the end, so -2 is the output of layer L-1).
    pub vision_feature_layer: i64,
    pub vision_feature_select_strategy: String,
    pub multimodal_projector_bias: bool,
    tie_word_embeddings: bool,
    /// The image token lies outside the decoder's vocabulary (see
    /// [`Self::virtual_image_token`]).
    virtual_image_token: bool,
    pub source: PathBuf,
}

impl LlavaConfig {
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            Error::file(
                &path,
                format!("{e} (a llava-hf model directory needs config.json)"),
            )
        })?;
        Self::from_json_str(&text, &path)
    }

    pub fn from_json_str(text: &str, source: &Path) -> Result<Self> {
        let raw: RawConfig = serde_json::from_str(text)
            .map_err(|e| Error::file(source, format!("invalid config: {e}")))?;
        Self::from_raw(raw, source, false)
    }

    /// A config given as a `config.json` value (e.g. assembled from GGUF metadata); with
    /// `virtual_image_token`, `image_token_index` may lie outside the vocabulary.
    pub fn from_json_value(
        value: serde_json::Value,
        source: &Path,
        virtual_image_token: bool,
    ) -> Result<Self> {
        let raw: RawConfig = serde_json::from_value(value)
            .map_err(|e| Error::file(source, format!("invalid config: {e}")))?;
        Self::from_raw(raw, source, virtual_image_token)
    }

    fn from_raw(raw: RawConfig, source: &Path, virtual_image_token: bool) -> Result<Self> {
        let model_type = raw.model_type.clone().unwrap_or_default();
        if model_type.starts_with("llava_") {
            return Err(Error::file(
                source,
                format!(
                    "model_type {model_type:?}: any-resolution tiling (anyres) and the multi-image \
                     inputs of LLaVA-NeXT / LLaVA-OneVision are not supported; use a \
                     LlavaForConditionalGeneration checkpoint (model_type \"llava\")"
                ),
            ));
        }
        let is_llava = model_type == "llava"
            || raw
                .architectures
                .iter()
                .any(|a| a == "LlavaForConditionalGeneration");
        if !is_llava {
            return Err(Error::file(
                source,
                format!(
                    "model_type {model_type:?} / architectures {:?}: only LLaVA (model_type \"llava\", LlavaForConditionalGeneration) is supported",
                    raw.architectures
                ),
            ));
        }
        let layer = match &raw.vision_feature_layer {
            None => -2,
            Some(serde_json::Value::Number(n)) => n.as_i64().unwrap_or(i64::MAX),
            Some(other) => {
                return Err(Error::file(
                    source,
                    format!("vision_feature_layer {other}: only a single layer index is supported"),
                ))
            }
        };
        let text_config = match &raw.text_config {
            Some(v) => TextConfig::from_value(v).map_err(|e| Error::file(source, e))?,
            None => TextConfig::default(),
        };
        let vision_config = match &raw.vision_config {
            Some(v) => VisionConfig::from_value(v).map_err(|e| Error::file(source, e))?,
            None => VisionConfig::llava_default(),
        };
        let image_token_index = raw.image_token_index.ok_or_else(|| {
            Error::file(
                source,
                "image_token_index (or image_token_id) is missing: it names the token the image \
                 features replace; add the id of the tokenizer's <image> token",
            )
        })?;
        let cfg = Self {
            vision_config,
            tie_word_embeddings: text_config
                .tie_word_embeddings
                .or(raw.tie_word_embeddings)
                .unwrap_or(false),
            text_config,
            image_token_index,
            projector_hidden_act: raw.projector_hidden_act.clone().unwrap_or("gelu".into()),
            vision_feature_layer: layer,
            vision_feature_select_strategy: raw
                .vision_feature_select_strategy
                .clone()
                .unwrap_or("default".into()),
            multimodal_projector_bias: raw.multimodal_projector_bias.unwrap_or(true),
            virtual_image_token,
            source: source.to_path_buf(),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        let err =
            |field: &str, msg: String| Err(Error::file(&self.source, format!("{field}: {msg}")));
        let v = &self.vision_config;
        let t = &self.text_config;
        if v.patch_size == 0 || v.image_size < v.patch_size {
            return err(
                "vision_config.image_size",
                format!(
                    "{} holds no patch of patch_size {}",
                    v.image_size, v.patch_size
                ),
            );
        }
        if v.num_channels != 3 {
            return err(
                "vision_config.num_channels",
                format!("{}: only RGB (3) images are supported", v.num_channels),
            );
        }
        if v.num_attention_heads == 0 || v.hidden_size % v.num_attention_heads != 0 {
            return err(
                "vision_config.num_attention_heads",
                format!(
                    "{} does not divide hidden_size {}",
                    v.num_attention_heads, v.hidden_size
                ),
            );
        }
        if t.num_attention_heads == 0
            || (t.head_dim.is_none() && t.hidden_size % t.num_attention_heads != 0)
        {
            return err(
                "text_config.num_attention_heads",
                format!(
                    "{} does not divide hidden_size {}",
                    t.num_attention_heads, t.hidden_size
                ),
            );
        }
        if t.kv_heads() == 0 || t.num_attention_heads % t.kv_heads() != 0 {
            return err(
                "text_config.num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads {}",
                    t.kv_heads(),
                    t.num_attention_heads
                ),
            );
        }
        let l = v.num_hidden_layers as i64;
        if !(-(l + 1)..=l).contains(&self.vision_feature_layer) {
            return err(
                "vision_feature_layer",
                format!(
                    "{} is outside the {} hidden states of a {l}-layer tower",
                    self.vision_feature_layer,
                    l + 1
                ),
            );
        }
        if !matches!(
            self.vision_feature_select_strategy.as_str(),
            "default" | "full"
        ) {
            return err(
                "vision_feature_select_strategy",
                format!(
                    "{:?}: expected \"default\" or \"full\"",
                    self.vision_feature_select_strategy
                ),
            );
        }
        if !v.has_class_token() && self.drops_cls() {
            return err(
                "vision_feature_select_strategy",
                format!(
                    "\"default\" drops the tower's first token, but the {} tower has no [CLS]: \
                     it would drop a patch; SigLIP LLaVA checkpoints use \"full\"",
                    v.model_type
                ),
            );
        }
        if t.use_sliding_window {
            return err(
                "text_config.use_sliding_window",
                "sliding-window attention is not supported; set it to false".into(),
            );
        }
        if !self.virtual_image_token && self.image_token_index as usize >= t.vocab_size {
            return err(
                "image_token_index",
                format!(
                    "{} is outside the vocabulary of {}",
                    self.image_token_index, t.vocab_size
                ),
            );
        }
        t.rope_scaling().map(|_| ())
    }

    /// Encoder layers to run: hidden state `k` is the output of layer `k` (0 = embeddings).
    pub fn vision_layers_to_run(&self) -> usize {
        let l = self.vision_config.num_hidden_layers as i64;
        let k = if self.vision_feature_layer < 0 {
            l + 1 + self.vision_feature_layer
        } else {
            self.vision_feature_layer
        };
        k.max(0) as usize
    }

    /// The `default` strategy drops [CLS]; `full` keeps it (a tower without [CLS] only runs
    /// with `full`).
    pub fn drops_cls(&self) -> bool {
        self.vision_feature_select_strategy == "default"
    }

    pub fn visual_tokens(&self) -> usize {
        self.vision_config.tokens() - usize::from(self.drops_cls())
    }

    pub fn tied_embeddings(&self) -> bool {
        self.tie_word_embeddings
    }

    /// Whether the image token is virtual: an id the tokenizer adds past the vocabulary (a
    /// llama.cpp LLM file has no `<image>`) that only marks where the visual embeddings go and
    /// has no embedding row of its own.
    pub fn virtual_image_token(&self) -> bool {
        self.virtual_image_token
    }

    /// Refuses a decoder (`text`, from the GGUF file at `path`) that is not the one this
    /// config describes: the projector writes into its hidden size, the tokenizer indexes its
    /// vocabulary, and every other shape, the norm epsilon and RoPE must agree too, since the
    /// decoder runs with them.
    pub fn check_decoder(&self, text: &TextConfig, path: &Path) -> Result<()> {
        let ours = &self.text_config;
        let mut diffs = Vec::new();
        if ours.model_type != text.model_type {
            diffs.push(format!(
                "architecture {} vs {}",
                text.model_type, ours.model_type
            ));
        }
        let sizes = [
            ("hidden size", text.hidden_size, ours.hidden_size),
            (
                "intermediate size",
                text.intermediate_size,
                ours.intermediate_size,
            ),
            ("layers", text.num_hidden_layers, ours.num_hidden_layers),
            (
                "attention heads",
                text.num_attention_heads,
                ours.num_attention_heads,
            ),
            ("KV heads", text.kv_heads(), ours.kv_heads()),
            ("head dim", text.head_dim(), ours.head_dim()),
            ("vocabulary", text.vocab_size, ours.vocab_size),
        ];
        for (what, theirs, want) in sizes {
            if theirs != want {
                diffs.push(format!("{what} {theirs} vs {want}"));
            }
        }
        let close = |a: f32, b: f32| (a - b).abs() <= 1e-3 * a.abs().max(b.abs());
        if !close(text.rms_norm_eps, ours.rms_norm_eps) {
            diffs.push(format!(
                "RMSNorm eps {} vs {}",
                text.rms_norm_eps, ours.rms_norm_eps
            ));
        }
        if !close(text.theta(), ours.theta()) {
            diffs.push(format!("RoPE theta {} vs {}", text.theta(), ours.theta()));
        }
        let (theirs, want) = (text.rope_scaling()?, ours.rope_scaling()?);
        if format!("{theirs:?}") != format!("{want:?}") {
            diffs.push(format!("RoPE scaling {theirs:?} vs {want:?}"));
        }
        let tied = text.tie_word_embeddings.unwrap_or(false);
        if tied != self.tie_word_embeddings {
            let says = |t: bool| if t { "tied" } else { "untied" };
            diffs.push(format!(
                "embeddings {} vs {}",
                says(tied),
                says(self.tie_word_embeddings)
            ));
        }
        if diffs.is_empty() {
            return Ok(());
        }
        Err(Error::file(
            path,
            format!(
                "this GGUF decoder does not match the language model of {} (GGUF vs config: {}); \
                 use a GGUF converted from this model's own language model",
                self.source.display(),
                diffs.join(", ")
            ),
        ))
    }
}
