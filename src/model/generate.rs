//! The decode loop shared by every model: pick a token on the GPU (greedy or nucleus sampling),
//! read it back (the only readback per step), feed it to the decoder, until a stop token, the
//! token limit or the caller says stop.

use super::decoder::Decoder;
use super::kv_cache::KvCache;
use crate::gpu::{Batch, DType, Gpu, Tensor};
use crate::reduce::KvReduction;
use crate::{ops, Result};

#[derive(Clone, Debug)]
pub enum Sampling {
    Greedy,
    /// Softmax at `temperature`, nucleus `top_p`, seeded.
    TopP {
        temperature: f32,
        top_p: f32,
        seed: u64,
    },
}

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    /// Generation ends after emitting one of these (typically EOS).
    pub stop_tokens: Vec<u32>,
    /// Keep the prefill's last-position logits in the result (one extra readback).
    pub keep_prefill_logits: bool,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Timings {
    pub vision_ms: f64,
    pub prefill_ms: f64,
    pub decode_ms: f64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    StopToken,
    MaxTokens,
    Cancelled,
}

#[derive(Clone, Debug)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub prompt_tokens: usize,
    pub visual_tokens: usize,
    pub timings: Timings,
    pub stop: StopReason,
    pub prefill_logits: Option<Vec<f32>>,
}

/// The GPU slot the chosen token lands in, and the seeded draws for sampling.
pub(crate) struct Sampler {
    token: Tensor,
    rng: SplitMix,
}

impl Sampler {
    pub fn new(gpu: &Gpu) -> Result<Self> {
        Ok(Self {
            token: gpu.zeros(&[1], DType::U32, "token")?,
            rng: SplitMix(0),
        })
    }

    /// Restart the draws for a new generation.
    pub fn reset(&mut self, sampling: &Sampling) {
        self.rng = SplitMix(match *sampling {
            Sampling::TopP { seed, .. } => seed,
            Sampling::Greedy => 0,
        });
    }

    pub fn pick(&mut self, b: &mut Batch, logits: &Tensor, sampling: &Sampling) -> Result<()> {
        match *sampling {
            Sampling::Greedy => ops::argmax(b, logits, &self.token),
            Sampling::TopP {
                temperature, top_p, ..
            } => ops::sample(
                b,
                logits,
                temperature,
                top_p,
                self.rng.uniform(),
                &self.token,
            ),
        }
    }

    pub async fn read(&self, gpu: &Gpu) -> Result<u32> {
        let bytes = gpu.read_bytes(&self.token).await?;
        Ok(u32::from_le_bytes(bytes[..4].try_into().unwrap()))
    }

    /// Finish a prefill whose logits `pick` has been queued for: the submitted batch's token
    /// and, when asked, the logits.
    pub async fn prefill_result(
        &self,
        gpu: &Gpu,
        logits: &Tensor,
        keep_logits: bool,
    ) -> Result<(u32, Option<Vec<f32>>)> {
        let kept = if keep_logits {
            let bytes = gpu.read_bytes(logits).await?;
            Some(bytemuck::cast_slice::<u8, f32>(&bytes)[..logits.numel()].to_vec())
        } else {
            None
        };
        Ok((self.read(gpu).await?, kept))
    }

    /// Decode after a prefill produced `tokens[0]`: each step embeds the last token straight
    /// from the GPU slot, runs one decoder step (compressing the cache first when `kv` says
    /// so) and picks the next.
    #[allow(clippy::too_many_arguments)]
    pub async fn decode(
        &mut self,
        gpu: &Gpu,
        decoder: &Decoder,
        cache: &mut KvCache,
        kv: Option<&KvReduction>,
        opts: &GenerateOptions,
        mut tokens: Vec<u32>,
        mut on_token: impl FnMut(u32) -> bool,
    ) -> Result<(Vec<u32>, StopReason)> {
        loop {
            let last = *tokens.last().unwrap();
            if !on_token(last) {
                return Ok((tokens, StopReason::Cancelled));
            }
            if opts.stop_tokens.contains(&last) {
                return Ok((tokens, StopReason::StopToken));
            }
            if tokens.len() >= opts.max_new_tokens {
                return Ok((tokens, StopReason::MaxTokens));
            }
            let mut b = gpu.batch();
            if let Some(kv) = kv.filter(|kv| cache.window >= kv.every) {
                decoder.compress_kv(&mut b, cache, kv)?;
            }
            decoder.embed_device_token(&mut b, &self.token)?;
            let pos = cache.next_position;
            let logits = decoder.forward(&mut b, cache, &[pos], None)?;
            self.pick(&mut b, &logits, &opts.sampling)?;
            b.submit();
            tokens.push(self.read(gpu).await?);
        }
    }
}

/// SplitMix64: a tiny seeded generator for the sampling draws (one per token).
struct SplitMix(u64);

impl SplitMix {
    fn uniform(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32
    }
}
