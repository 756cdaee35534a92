//! LLaVA: vision tower -> projector -> decoder, and generation.

use super::config::LlavaConfig;
use super::decoder::{Decoder, PrefillReduction};
use super::generate::{GenerateOptions, Generation, Sampler, Timings};
use super::gguf::Gguf;
use super::kv_cache::KvCache;
use super::linear::WeightStore;
use super::mmproj::GgufPair;
use super::projector::Projector;
use super::vision::VisionTower;
use super::weights::WeightFile;
use crate::gpu::{DType, Gpu, Tensor};
use crate::ops::GgmlType;
use crate::preprocess::{PixelValues, PromptIds};
use crate::reduce::ReductionPlan;
use crate::{Error, Result};
use std::path::Path;
use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Storage type of the big weight matrices: F16 (default) or F32. Activations are f32.
    pub dtype: DType,
    /// Quantise the decoder's dense matrices while loading (Q8_0 or Q4_K; see
    /// [`WeightStore::quantize`]); the vision tower and projector stay in `dtype`.
    pub quantize: Option<GgmlType>,
    /// Longest prompt (text + visual tokens) one prefill may take.
    pub max_prompt_tokens: usize,
    /// Longest prompt plus generated tokens (KV cache rows).
    pub max_context: usize,
}

impl LoadOptions {
    /// How the decoder's matrices are stored.
    pub fn store(&self) -> WeightStore {
        WeightStore {
            dtype: self.dtype,
            quantize: self.quantize,
        }
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: DType::F16,
            quantize: None,
            max_prompt_tokens: 1024,
            max_context: 2048,
        }
    }
}

pub struct Llava {
    gpu: Arc<Gpu>,
    config: LlavaConfig,
    vision: VisionTower,
    projector: Projector,
    decoder: Decoder,
    cache: KvCache,
    pixels: Tensor,
    /// Selected vision features `[visual_tokens, Dv]`, the projector's input.
    features: Tensor,
    image_features: Tensor,
    sampler: Sampler,
    reduction: ReductionPlan,
    /// Grid index of each selected visual token after the vision tower (-1 for [CLS]).
    kept_grid: Option<Tensor>,
    /// With merge tracing: the row of the tower's output token owning each patch (-1 pruned).
    owners: Option<Tensor>,
    /// A projector-site reduction's input (the tower's tokens projected, [CLS] row first) and
    /// output, `[tower tokens, D]` each; allocated when a plan uses the site.
    projected: Option<[Tensor; 2]>,
}

impl Llava {
    pub fn load(gpu: Arc<Gpu>, dir: &Path, opts: &LoadOptions) -> Result<Self> {
        let config = LlavaConfig::from_dir(dir)?;
        let wf = WeightFile::open(dir)?;
        Self::from_weights(gpu, config, &wf, opts)
    }

    /// [`Self::load`] from files already in memory (the browser fetches them): `config.json`'s
    /// text and one safetensors file's bytes.
    pub fn load_from_bytes(
        gpu: Arc<Gpu>,
        config_json: &str,
        safetensors: Vec<u8>,
        opts: &LoadOptions,
    ) -> Result<Self> {
        let config = LlavaConfig::from_json_str(config_json, Path::new("config.json"))?;
        let wf = WeightFile::from_safetensors_bytes("model.safetensors", safetensors)?;
        Self::from_weights(gpu, config, &wf, opts)
    }

    /// A llava-hf directory's vision tower and projector with the decoder of a llama.cpp GGUF
    /// file (`llama` or `qwen2`; quantised tensors stay quantised, `opts.quantize` applies to
    /// its dense ones). The file must hold the language model the directory's config describes
    /// (see [`LlavaConfig::check_decoder`]); the directory's tokenizer and chat template stay in
    /// use, and its own decoder tensors are not uploaded.
    pub fn load_with_decoder(
        gpu: Arc<Gpu>,
        dir: &Path,
        decoder: &Path,
        opts: &LoadOptions,
    ) -> Result<Self> {
        let config = LlavaConfig::from_dir(dir)?;
        let file = Gguf::open(decoder)?;
        config.check_decoder(&file.text_config()?, decoder)?;
        let tc = &config.text_config;
        let decoder_weights = WeightFile::from_gguf(file, tc.num_attention_heads, tc.kv_heads())?;
        let wf = WeightFile::open(dir)?;
        Self::from_parts(gpu, config, &wf, &decoder_weights, opts)
    }

    /// llama.cpp's VLM pair: the vision tower and projector of an `mmproj` GGUF file, the
    /// decoder of an LLM GGUF file (see [`GgufPair`], which also gives the tokenizer, image
    /// preprocessing and prompt that go with it).
    pub fn load_gguf_pair(
        gpu: Arc<Gpu>,
        llm: &Path,
        mmproj: &Path,
        opts: &LoadOptions,
    ) -> Result<Self> {
        Self::from_gguf_pair(gpu, GgufPair::open(llm, mmproj)?, opts)
    }

    pub fn from_gguf_pair(gpu: Arc<Gpu>, pair: GgufPair, opts: &LoadOptions) -> Result<Self> {
        let (config, llm, mmproj) = pair.into_weights();
        Self::from_parts(gpu, config, &mmproj, &llm, opts)
    }

    pub fn from_weights(
        gpu: Arc<Gpu>,
        config: LlavaConfig,
        wf: &WeightFile,
        opts: &LoadOptions,
    ) -> Result<Self> {
        Self::from_parts(gpu, config, wf, wf, opts)
    }

    /// The vision tower and projector from `wf`, the decoder from `decoder_weights`.
    fn from_parts(
        gpu: Arc<Gpu>,
        config: LlavaConfig,
        wf: &WeightFile,
        decoder_weights: &WeightFile,
        opts: &LoadOptions,
    ) -> Result<Self> {
        opts.store().check()?;
        if opts.max_context < opts.max_prompt_tokens {
            return Err(Error::InvalidArgument(
                "max_context must be at least max_prompt_tokens".into(),
            ));
        }
        let g = &*gpu;
        // The vision tower and the decoder never run at the same time: shared activations.
        let slots = g.shared_activations(&[
            &VisionTower::workspace_shapes(&config.vision_config),
            &Decoder::workspace_shapes(&config.text_config, opts.max_prompt_tokens),
        ])?;
        let vision = VisionTower::load(g, wf, &config, opts.dtype, &slots)?;
        let visual = config.visual_tokens();
        let projector = Projector::load(g, wf, &config, opts.dtype, visual)?;
        let decoder = Decoder::load(
            g,
            decoder_weights,
            &config.text_config,
            config.tied_embeddings(),
            opts.store(),
            opts.max_prompt_tokens,
            &slots,
        )?;
        let cache = decoder.new_cache(g, opts.max_context)?;
        let vc = &config.vision_config;
        let pixels = g.zeros(
            &[vc.num_channels, vc.image_size, vc.image_size],
            DType::F32,
            "pixels",
        )?;
        let features = g.zeros(&[visual, vc.hidden_size], DType::F32, "vision features")?;
        let d = config.text_config.hidden_size;
        let image_features = g.zeros(&[visual, d], DType::F32, "image features")?;
        let sampler = Sampler::new(g)?;
        Ok(Self {
            gpu,
            config,
            vision,
            projector,
            decoder,
            cache,
            pixels,
            features,
            image_features,
            sampler,
            reduction: ReductionPlan::default(),
            kept_grid: None,
            owners: None,
            projected: None,
        })
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    pub fn config(&self) -> &LlavaConfig {
        &self.config
    }

    /// Visual tokens one image contributes to the prompt (after any vision-side reduction).
    pub fn visual_tokens(&self) -> usize {
        self.config.visual_tokens() - self.reduction.before_llm()
    }

    /// Attach token reductions to the vision tower and the LLM prefill (replacing any earlier
    /// plan). Prompts must then expand the image to [`Self::visual_tokens`] tokens.
    pub fn set_reduction(&mut self, plan: ReductionPlan) -> Result<()> {
        if let Some(v) = &plan.vision {
            self.vision.check_reduction(v)?;
            self.vision.prepare_reduction(&self.gpu)?;
        }
        if let Some(p) = &plan.projector {
            let t = self.vision.tokens();
            let kept = self.config.visual_tokens() - plan.before_llm();
            if kept == 0
                || plan
                    .vision
                    .as_ref()
                    .is_some_and(|v| v.drop_after(self.vision.layers_to_run() - 1) > 0)
            {
                return Err(Error::InvalidArgument(format!(
                    "a projector-site reduction dropping {} of {} visual tokens must keep at \
                     least one, and the tower's last layer must not reduce too",
                    p.drop,
                    self.config.visual_tokens()
                )));
            }
            self.vision.prepare_reduction(&self.gpu)?;
            if self.projected.is_none() {
                let d = self.config.text_config.hidden_size;
                let buf = |label| self.gpu.zeros(&[t, d], DType::F32, label);
                self.projected =
                    Some([buf("projected tower output")?, buf("reduced tower output")?]);
            }
        }
        if let Some(l) = &plan.llm {
            self.decoder.check_reduction(l)?;
            self.decoder.prepare_reduction(&self.gpu)?;
        }
        if let Some(kv) = &plan.kv {
            self.decoder
                .prepare_kv_reduction(&self.gpu, kv, self.cache.capacity())?;
        }
        self.reduction = plan;
        Ok(())
    }

    pub fn reduction(&self) -> &ReductionPlan {
        &self.reduction
    }

    /// Grid index (row-major patch number) of each visual token of the last image, after the
    /// vision-side reduction; -1 for [CLS] under the `full` strategy.
    pub async fn kept_patches(&self) -> Result<Vec<i32>> {
        let grid = self
            .kept_grid
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("no image has been encoded yet".into()))?;
        let bytes = self.gpu.read_bytes(grid).await?;
        let skip = usize::from(self.config.drops_cls());
        let all: &[i32] = bytemuck::cast_slice(&bytes);
        Ok(all[skip..grid.numel()].to_vec())
    }

    /// Trace merges in the vision tower from the next [`Self::encode_image`] on, for
    /// [`Self::patch_owners`] (off by default: normal inference records nothing extra).
    pub fn set_trace_merges(&mut self, on: bool) -> Result<()> {
        self.vision.set_trace_merges(&self.gpu, on)?;
        if !on {
            self.owners = None;
        }
        Ok(())
    }

    /// For every patch of the grid (row-major) of the last image encoded with merge tracing
    /// on, the index among the selected visual tokens (as in [`Self::kept_patches`]) of the
    /// token that absorbed it: its own token if it survived, the target it merged into
    /// (largest merge weight) or the new token it was grouped into; -1 if it was pruned.
    pub async fn patch_owners(&self) -> Result<Vec<i32>> {
        let owners = self.owners.as_ref().ok_or_else(|| {
            Error::InvalidArgument(
                "no image has been encoded with merge tracing on (set_trace_merges)".into(),
            )
        })?;
        let bytes = self.gpu.read_bytes(owners).await?;
        let skip = i32::from(self.config.drops_cls());
        let all: &[i32] = bytemuck::cast_slice(&bytes);
        Ok(all[..owners.numel()]
            .iter()
            .map(|&o| if o < 0 { -1 } else { o - skip })
            .collect())
    }

    /// Bytes of all weights on the GPU.
    pub fn weight_bytes(&self) -> u64 {
        self.vision.weight_bytes() + self.projector.weight_bytes() + self.decoder.weight_bytes()
    }

    pub fn kv_cache_bytes(&self) -> u64 {
        self.cache.bytes()
    }

    /// The KV cache as the last generation left it (per-layer lengths, visual rows, tensors).
    pub fn kv_cache(&self) -> &KvCache {
        &self.cache
    }

    /// With KV-cache compression planned: the head-averaged attention the tokens decoded since
    /// the last compression paid to `layer`'s cache rows, `[window][row]` (what the next
    /// compression scores with).
    pub async fn kv_window_attention(&self, layer: usize) -> Result<Vec<Vec<f32>>> {
        let t = self.decoder.kv_window(layer).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "no KV-cache compression is planned, or layer {layer} does not exist"
            ))
        })?;
        let stride = t.shape()[1];
        let bytes = self.gpu.read_bytes(&t).await?;
        let all: &[f32] = bytemuck::cast_slice(&bytes);
        let len = self.cache.layers[layer].len;
        let w = self.cache.window;
        Ok((0..w)
            .map(|j| all[j * stride..j * stride + len - w + j + 1].to_vec())
            .collect())
    }

    /// Run the vision tower and projector; the features stay on the GPU for [`Self::prefill`].
    /// Returns them (`[visual_tokens, D]`) for inspection.
    pub fn encode_image(&mut self, pixels: &PixelValues) -> Result<Tensor> {
        let vc = &self.config.vision_config;
        let want = [vc.num_channels, vc.image_size, vc.image_size];
        let got = [pixels.channels, pixels.height, pixels.width];
        if got != want {
            return Err(Error::shape(
                "pixel values",
                format!("{want:?} (check preprocessor_config.json crop size)"),
                format!("{got:?}"),
            ));
        }
        self.gpu
            .write(&self.pixels, bytemuck::cast_slice(&pixels.data))?;
        let mut b = self.gpu.batch();
        let at_projector = self.reduction.projector.as_ref();
        let out = self.vision.forward(
            &mut b,
            &self.pixels,
            self.reduction.vision.as_ref(),
            at_projector.is_some(),
        )?;
        // `default` drops [CLS] (row 0); `full` keeps every row.
        let skip = usize::from(self.config.drops_cls());
        let (t, dv, d) = (
            out.tokens,
            vc.hidden_size,
            self.config.text_config.hidden_size,
        );
        let n = self.visual_tokens();
        let features = self.features.view(&[t - skip, dv]);
        b.copy(&out.hidden.slice(skip * dv, &[t - skip, dv]), &features)?;
        let mut grid = out.grid.clone();
        match (at_projector, &self.projected) {
            (Some(p), Some([projected, reduced])) => {
                // The step sees the tower's rows in the LLM's width, [CLS] first (a zero row when
                // `default` drops it: never discarded, never a target).
                let projected = projected.view(&[t, d]);
                let reduced = reduced.view(&[t - p.drop, d]);
                let rows = projected.slice(skip * d, &[t - skip, d]);
                self.projector.forward(
                    &mut b,
                    &features,
                    &self.image_features.view(&[t - skip, d]),
                )?;
                b.copy(&self.image_features.view(&[t - skip, d]), &rows)?;
                grid = self.vision.reduce_output(
                    &mut b,
                    &out,
                    &p.reduction,
                    p.drop,
                    &projected,
                    &reduced,
                )?;
                b.copy(&reduced.slice(skip * d, &[n, d]), &self.image_features)?;
            }
            _ => self
                .projector
                .forward(&mut b, &features, &self.image_features.view(&[n, d]))?,
        }
        b.submit();
        self.kept_grid = Some(grid);
        self.owners = out.owners;
        Ok(self.image_features.view(&[n, d]))
    }

    /// The vision features LLaVA selects, before the projector (after [`Self::encode_image`]).
    pub fn selected_vision_features(&self) -> Tensor {
        let n =
            self.config.visual_tokens() - self.reduction.vision.as_ref().map_or(0, |v| v.total());
        self.features.view(&[n, self.features.shape()[1]])
    }

    /// Generate from a prompt whose image placeholder has been expanded to
    /// [`Self::visual_tokens`] image tokens. `on_token` sees each token as it is produced and
    /// returns false to stop.
    pub async fn generate(
        &mut self,
        pixels: &PixelValues,
        prompt: &PromptIds,
        opts: &GenerateOptions,
        on_token: impl FnMut(u32) -> bool,
    ) -> Result<Generation> {
        let visual = self.visual_tokens();
        if prompt.image_len != visual {
            return Err(Error::InvalidArgument(format!(
                "the prompt has {} image tokens but the model produces {visual} visual tokens",
                prompt.image_len
            )));
        }
        let image_end = prompt.image_start + prompt.image_len;
        if image_end > prompt.ids.len()
            || prompt.text_end < image_end
            || prompt.text_end > prompt.ids.len()
        {
            return Err(Error::InvalidArgument(format!(
                "prompt spans do not fit its {} ids: image {}..{image_end}, text ..{}",
                prompt.ids.len(),
                prompt.image_start,
                prompt.text_end
            )));
        }
        let total = prompt.ids.len() + opts.max_new_tokens;
        if total > self.cache.capacity() {
            return Err(Error::InvalidArgument(format!(
                "{} prompt tokens + {} new tokens exceed the context of {} (LoadOptions::max_context)",
                prompt.ids.len(),
                opts.max_new_tokens,
                self.cache.capacity()
            )));
        }
        self.sampler.reset(&opts.sampling);
        let mut clock = crate::clock::Clock::start();
        let image_features = self.encode_image(pixels)?;
        self.gpu.sync().await?;
        let vision_ms = clock.lap_ms();

        self.cache.clear();
        let mut b = self.gpu.batch();
        let image = prompt.image_start..prompt.image_start + visual;
        // The image rows' embeddings are overwritten below, so any id in the vocabulary serves
        // for their lookup; a virtual image token has no row.
        let mut ids = prompt.ids.clone();
        if self.config.virtual_image_token() {
            ids[image.clone()].fill(0);
        }
        let x = self.decoder.embed_tokens(&mut b, &ids)?;
        let d = self.config.text_config.hidden_size;
        b.copy(&image_features, &x.slice(image.start * d, &[visual, d]))?;
        let positions: Vec<u32> = (0..prompt.ids.len() as u32).collect();
        let reduce = self.reduction.llm.as_ref().map(|site| PrefillReduction {
            site,
            text: image.end..prompt.text_end,
            renumber: self.reduction.renumber_positions,
            visual: image.clone(),
        });
        let logits = self
            .decoder
            .forward(&mut b, &mut self.cache, &positions, reduce.as_ref())?;
        self.sampler.pick(&mut b, &logits, &opts.sampling)?;
        b.submit();
        let (first, prefill_logits) = self
            .sampler
            .prefill_result(&self.gpu, &logits, opts.keep_prefill_logits)
            .await?;
        let prefill_ms = clock.lap_ms();
        let llm = self.reduction.llm.as_ref();
        for (i, lc) in self.cache.layers.iter_mut().enumerate() {
            let dropped = llm.map_or(0, |r| r.dropped_before(i));
            lc.visual = image.start..image.end - dropped;
        }

        let (tokens, stop) = self
            .sampler
            .decode(
                &self.gpu,
                &self.decoder,
                &mut self.cache,
                self.reduction.kv.as_ref(),
                opts,
                vec![first],
                on_token,
            )
            .await?;
        let decode_ms = clock.lap_ms();
        Ok(Generation {
            tokens,
            prompt_tokens: prompt.ids.len(),
            visual_tokens: visual,
            timings: Timings {
                vision_ms,
                prefill_ms,
                decode_ms,
            },
            stop,
            prefill_logits,
        })
    }
}
