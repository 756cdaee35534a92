//! A decoder on its own (no vision tower): text-only generation, e.g. from a llama.cpp GGUF file.

use super::config::TextConfig;
use super::decoder::Decoder;
use super::generate::{GenerateOptions, Generation, Sampler, Timings};
use super::gguf::Gguf;
use super::kv_cache::KvCache;
use super::llava::LoadOptions;
use super::weights::WeightFile;
use crate::gpu::Gpu;
use crate::{Error, Result};
use std::sync::Arc;

pub struct TextModel {
    gpu: Arc<Gpu>,
    decoder: Decoder,
    cache: KvCache,
    sampler: Sampler,
}

impl TextModel {
    /// Load the decoder of a GGUF file (`llama` or `qwen2` architecture); its configuration
    /// comes from the file's metadata.
    pub fn from_gguf(gpu: Arc<Gpu>, file: Gguf, opts: &LoadOptions) -> Result<Self> {
        let tc = file.text_config()?;
        let tied = tc.tie_word_embeddings.unwrap_or(false);
        let wf = WeightFile::from_gguf(file, tc.num_attention_heads, tc.kv_heads())?;
        Self::from_weights(gpu, &tc, tied, &wf, opts)
    }

    pub fn from_weights(
        gpu: Arc<Gpu>,
        tc: &TextConfig,
        tied: bool,
        wf: &WeightFile,
        opts: &LoadOptions,
    ) -> Result<Self> {
        if opts.max_context < opts.max_prompt_tokens {
            return Err(Error::InvalidArgument(
                "max_context must be at least max_prompt_tokens".into(),
            ));
        }
        opts.store().check()?;
        let g = &*gpu;
        let slots =
            g.shared_activations(&[&Decoder::workspace_shapes(tc, opts.max_prompt_tokens)])?;
        let decoder = Decoder::load(
            g,
            wf,
            tc,
            tied,
            opts.store(),
            opts.max_prompt_tokens,
            &slots,
        )?;
        let cache = decoder.new_cache(g, opts.max_context)?;
        let sampler = Sampler::new(g)?;
        Ok(Self {
            gpu,
            decoder,
            cache,
            sampler,
        })
    }

    pub fn config(&self) -> &TextConfig {
        self.decoder.config()
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    pub fn weight_bytes(&self) -> u64 {
        self.decoder.weight_bytes()
    }

    /// Weight bytes one decode step reads (see [`Decoder::decode_read_bytes`]).
    pub fn decode_read_bytes(&self) -> u64 {
        self.decoder.decode_read_bytes()
    }

    pub fn kv_cache_bytes(&self) -> u64 {
        self.cache.bytes()
    }

    /// Generate from prompt token ids; `on_token` sees each token as it is produced and returns
    /// false to stop.
    pub async fn generate(
        &mut self,
        prompt: &[u32],
        opts: &GenerateOptions,
        on_token: impl FnMut(u32) -> bool,
    ) -> Result<Generation> {
        if prompt.is_empty() {
            return Err(Error::InvalidArgument("the prompt has no tokens".into()));
        }
        let total = prompt.len() + opts.max_new_tokens;
        if total > self.cache.capacity() {
            return Err(Error::InvalidArgument(format!(
                "{} prompt tokens + {} new tokens exceed the context of {} (LoadOptions::max_context)",
                prompt.len(),
                opts.max_new_tokens,
                self.cache.capacity()
            )));
        }
        self.sampler.reset(&opts.sampling);
        let mut clock = crate::clock::Clock::start();
        self.cache.clear();
        let mut b = self.gpu.batch();
        self.decoder.embed_tokens(&mut b, prompt)?;
        let positions: Vec<u32> = (0..prompt.len() as u32).collect();
        let logits = self
            .decoder
            .forward(&mut b, &mut self.cache, &positions, None)?;
        self.sampler.pick(&mut b, &logits, &opts.sampling)?;
        b.submit();
        let (first, prefill_logits) = self
            .sampler
            .prefill_result(&self.gpu, &logits, opts.keep_prefill_logits)
            .await?;
        let prefill_ms = clock.lap_ms();
        let (tokens, stop) = self
            .sampler
            .decode(
                &self.gpu,
                &self.decoder,
                &mut self.cache,
                None,
                opts,
                vec![first],
                on_token,
            )
            .await?;
        Ok(Generation {
            tokens,
            prompt_tokens: prompt.len(),
            visual_tokens: 0,
            timings: Timings {
                vision_ms: 0.0,
                prefill_ms,
                decode_ms: clock.lap_ms(),
            },
            stop,
            prefill_logits,
        })
    }
}
