//! The Llama-family decoder (Llama, Qwen2): embeddings, pre-RMSNorm blocks with GQA attention
//! over the KV cache and a SwiGLU MLP, final norm and LM head for the last position.

use super::config::TextConfig;
use super::kv_cache::KvCache;
use super::linear::{load_embedding, load_matrix, Linear, Norm, WeightStore};
use super::weights::WeightFile;
use crate::gpu::{Batch, DType, Gpu, Tensor};
use crate::ops::{
    self, AttentionMap, AttentionScratch, AttentionShape, EmbeddingTable, Epilogue, RopeTable,
    WeightFormat, WeightMatrix,
};
use crate::reduce::{KvReduction, PositionKind, SiteReduction, SiteScratch, Spans, StepInput};
use crate::{Error, Result};
use std::ops::Range;

struct DecoderLayer {
    norm1: Norm,
    /// q, k and v side by side.
    qkv: Linear,
    o: Linear,
    norm2: Norm,
    /// gate and up side by side.
    gate_up: Linear,
    down: Linear,
}

/// Activations for up to `capacity` rows, allocated once. `x_alt` and `positions_alt` take the
/// reduced sequence when a prefill layer reduces (then they swap roles).
struct Workspace {
    x: Tensor,
    x_alt: Tensor,
    a: Tensor,
    /// q `[n, qd]`, then k and v `[n, kvd]` each (see [`Linear::forward_side_by_side`]).
    qkv: Tensor,
    /// gate, then up, `[n, intermediate]` each.
    gate_up: Tensor,
    last: Tensor,
    last_normed: Tensor,
    logits: Tensor,
    ids: Tensor,
    positions: Tensor,
    positions_alt: Tensor,
    /// Per-layer decode positions of a renumbered cache, one 256-byte slot per layer.
    layer_positions: Tensor,
    attn: AttentionScratch,
    /// Allocated by [`Decoder::prepare_reduction`].
    reduce: Option<SiteScratch>,
    /// Allocated by [`Decoder::prepare_kv_reduction`].
    kv: Option<KvScratch>,
}

/// What compressing the cache during decoding needs besides a [`SiteScratch`] as long as the
/// context: the attention each decoded token paid, per layer, and the compressed rows.
struct KvScratch {
    /// `[layers, every, stride]`: row `(layer, j)` holds the head-averaged attention of the
    /// `j`-th token decoded since the last compression over that layer's cache rows.
    window: Tensor,
    every: usize,
    /// Row stride of `window`: the context rounded up to 64 floats (the 256-byte binding
    /// offset alignment).
    stride: usize,
    k_out: Tensor,
    v_out: Tensor,
    /// Cache row indices `0..context` (the step's positions) and the kept ones.
    rows: Tensor,
    rows_out: Tensor,
}

/// u32 words per layer in `layer_positions` (256 bytes: the storage binding offset alignment
/// WebGPU guarantees).
const LAYER_POSITION_SLOT: usize = 64;

/// An LLM-site reduction for one prefill: the steps, and where the image and the question are
/// in the prompt (the text span is the question after the image).
pub struct PrefillReduction<'a> {
    pub site: &'a SiteReduction,
    pub visual: Range<usize>,
    pub text: Range<usize>,
    /// Renumber RoPE positions contiguously after each reduction (else keep them).
    pub renumber: bool,
}

pub struct Decoder {
    cfg: TextConfig,
    embed: EmbeddingTable,
    layers: Vec<DecoderLayer>,
    norm: Norm,
    head: WeightMatrix,
    rope: RopeTable,
    shape: AttentionShape,
    ws: Workspace,
    capacity: usize,
}

impl Decoder {
    /// Shapes of the workspace tensors x, a, qkv, gate_up, x_alt: the activation slots the
    /// decoder views (see [`Gpu::shared_activations`]). `a` also holds the attention output,
    /// dead by the time `a` is rewritten.
    pub fn workspace_shapes(tc: &TextConfig, capacity: usize) -> [Vec<usize>; 5] {
        let (d, qd) = (tc.hidden_size, tc.num_attention_heads * tc.head_dim());
        let kvd = tc.kv_heads() * tc.head_dim();
        let inter = tc.intermediate_size;
        [
            vec![capacity, d],
            vec![capacity * d.max(qd)],
            vec![ops::side_by_side_offsets(capacity, &[qd, kvd, kvd]).1],
            vec![ops::side_by_side_offsets(capacity, &[inter, inter]).1],
            vec![capacity, d],
        ]
    }

    /// `capacity`: the most tokens one forward call may process (the prompt length bound);
    /// `slots` are at least as large as [`Self::workspace_shapes`].
    /// `tied`: the LM head is the embedding table.
    pub fn load(
        gpu: &Gpu,
        wf: &WeightFile,
        tc: &TextConfig,
        tied: bool,
        store: WeightStore,
        capacity: usize,
        slots: &[Tensor],
    ) -> Result<Self> {
        let tc = tc.clone();
        let d = tc.hidden_size;
        let heads = tc.num_attention_heads;
        let kv_heads = tc.kv_heads();
        let hd = tc.head_dim();
        let inter = tc.intermediate_size;
        let vocab = tc.vocab_size;
        if tc.hidden_act != "silu" {
            return Err(Error::Unsupported(format!(
                "text_config.hidden_act {:?}: only silu (SwiGLU) is supported",
                tc.hidden_act
            )));
        }
        let table = "text.embed_tokens.weight";
        let (embed, head) = if tied {
            let head = load_matrix(gpu, wf, table, vocab, d, store)?;
            // A quantised tied table is one GPU copy, read by the gather and the LM head.
            let embed = match head.format() {
                WeightFormat::Blocks(_) => EmbeddingTable::from_matrix(&head)?,
                WeightFormat::Dense(_) => load_embedding(gpu, wf, table, vocab, d, store)?,
            };
            (embed, head)
        } else {
            (
                load_embedding(gpu, wf, table, vocab, d, store)?,
                load_matrix(gpu, wf, "lm_head.weight", vocab, d, store)?,
            )
        };
        let qkv_bias = tc.qkv_bias();
        let layers = (0..tc.num_hidden_layers)
            .map(|i| {
                let n = |s: &str| format!("text.layers.{i}.{s}");
                let lin = |s: &str, o, k| Linear::load_stored(gpu, wf, &n(s), o, k, false, store);
                let (q, k, v) = (
                    n("self_attn.q_proj"),
                    n("self_attn.k_proj"),
                    n("self_attn.v_proj"),
                );
                let (gate, up) = (n("mlp.gate_proj"), n("mlp.up_proj"));
                let qkv = [
                    (&*q, heads * hd),
                    (&*k, kv_heads * hd),
                    (&*v, kv_heads * hd),
                ];
                let gate_up = [(&*gate, inter), (&*up, inter)];
                Ok(DecoderLayer {
                    norm1: Norm::load(gpu, wf, &n("input_layernorm"), d, false)?,
                    qkv: Linear::load_side_by_side(gpu, wf, &qkv, d, qkv_bias, store)?,
                    o: lin("self_attn.o_proj", d, heads * hd)?,
                    norm2: Norm::load(gpu, wf, &n("post_attention_layernorm"), d, false)?,
                    gate_up: Linear::load_side_by_side(gpu, wf, &gate_up, d, false, store)?,
                    down: lin("mlp.down_proj", d, inter)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = Norm::load(gpu, wf, "text.norm", d, false)?;
        let rope = RopeTable::new(gpu, hd, tc.theta(), &tc.rope_scaling()?)?;
        let f = |shape: &[usize], label| gpu.zeros(shape, DType::F32, label);
        let mut slots = slots.iter();
        let [x, a, qkv, gate_up, x_alt] = Self::workspace_shapes(&tc, capacity).map(|s| {
            slots
                .next()
                .expect("one activation slot per workspace tensor")
                .view(&s)
        });
        let ws = Workspace {
            x,
            x_alt,
            a,
            qkv,
            gate_up,
            last: f(&[1, d], "last")?,
            last_normed: f(&[1, d], "last normed")?,
            logits: f(&[1, vocab], "logits")?,
            ids: gpu.zeros(&[capacity], DType::U32, "ids")?,
            positions: gpu.zeros(&[capacity], DType::U32, "positions")?,
            positions_alt: gpu.zeros(&[capacity], DType::U32, "reduced positions")?,
            layer_positions: gpu.zeros(
                &[layers.len() * LAYER_POSITION_SLOT],
                DType::U32,
                "layer positions",
            )?,
            attn: AttentionScratch::new(gpu, capacity, heads)?,
            reduce: None,
            kv: None,
        };
        let shape = AttentionShape {
            heads,
            kv_heads,
            head_dim: hd,
            causal: true,
            scale: (hd as f32).powf(-0.5),
        };
        Ok(Self {
            cfg: tc,
            embed,
            layers,
            norm,
            head,
            rope,
            shape,
            ws,
            capacity,
        })
    }

    pub fn config(&self) -> &TextConfig {
        &self.cfg
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn new_cache(&self, gpu: &Gpu, tokens: usize) -> Result<KvCache> {
        let kv_dim = self.shape.kv_heads * self.shape.head_dim;
        KvCache::new(gpu, self.layers.len(), tokens, kv_dim)
    }

    /// Token embeddings of `ids` into rows `0..n` of the residual stream; returns the `[n, D]`
    /// view so the caller can splice image features into it.
    pub fn embed_tokens(&self, b: &mut Batch, ids: &[u32]) -> Result<Tensor> {
        let n = ids.len();
        self.check_rows(n)?;
        let vocab = self.cfg.vocab_size as u32;
        if let Some(bad) = ids.iter().find(|&&t| t >= vocab) {
            return Err(Error::InvalidArgument(format!(
                "token id {bad} is outside the vocabulary ({vocab} tokens): tokenizer and model do not match"
            )));
        }
        b.gpu().write(&self.ws.ids, bytemuck::cast_slice(ids))?;
        let x = self.ws.x.view(&[n, self.cfg.hidden_size]);
        ops::embed(b, &self.embed, &self.ws.ids.view(&[n]), &x)?;
        Ok(x)
    }

    /// Embedding of a token that is already on the GPU (`U32 [1]`, e.g. the sampled one), so
    /// decoding needs no upload of ids.
    pub fn embed_device_token(&self, b: &mut Batch, token: &Tensor) -> Result<()> {
        let x = self.ws.x.view(&[1, self.cfg.hidden_size]);
        ops::embed(b, &self.embed, token, &x)
    }

    /// Run all layers on the `n` rows in the residual stream, appending their keys and values to
    /// `cache` at the positions given, and write the last row's logits (returned, `[V]`). With
    /// `reduce` (a prefill into an empty cache), visual tokens are dropped or merged after the
    /// attention of the listed layers; survivors keep their RoPE positions and each later layer
    /// caches only them.
    pub fn forward(
        &self,
        b: &mut Batch,
        cache: &mut KvCache,
        positions: &[u32],
        reduce: Option<&PrefillReduction>,
    ) -> Result<Tensor> {
        let mut n = positions.len();
        self.check_rows(n)?;
        let tc = &self.cfg;
        let (d, hd) = (tc.hidden_size, self.shape.head_dim);
        let (qd, kvd) = (self.shape.heads * hd, self.shape.kv_heads * hd);
        let eps = tc.rms_norm_eps;
        let ws = &self.ws;
        let mut spans = match reduce {
            Some(r) => {
                self.check_reduction(r.site)?;
                if ws.reduce.is_none() {
                    return Err(Error::InvalidArgument(
                        "call prepare_reduction before reducing in the decoder".into(),
                    ));
                }
                if cache.layers.iter().any(|l| l.len > 0) || r.text.end > n {
                    return Err(Error::InvalidArgument(
                        "an LLM reduction needs a whole prompt prefilled into an empty cache"
                            .into(),
                    ));
                }
                Some(Spans {
                    visual: Some(r.visual.clone()),
                    text: Some(r.text.clone()),
                    positions: if r.renumber {
                        PositionKind::RopeRenumbered
                    } else {
                        PositionKind::Rope
                    },
                    ..Spans::default()
                })
            }
            None => None,
        };
        b.gpu()
            .write(&ws.positions, bytemuck::cast_slice(positions))?;
        // A renumbered cache decodes each layer at its own length.
        let per_layer = reduce.is_none() && cache.renumbered;
        if per_layer {
            if n != 1 {
                return Err(Error::InvalidArgument(
                    "a cache with renumbered positions takes one token per step".into(),
                ));
            }
            let mut words = vec![0u32; cache.layers.len() * LAYER_POSITION_SLOT];
            for (i, lc) in cache.layers.iter_mut().enumerate() {
                words[i * LAYER_POSITION_SLOT] = lc.position;
                lc.position += 1;
            }
            b.gpu()
                .write(&ws.layer_positions, bytemuck::cast_slice(&words))?;
        }
        // While decoding with cache compression, keep each layer's attention for scoring.
        let capture = ws
            .kv
            .as_ref()
            .filter(|kv| reduce.is_none() && n == 1 && cache.window < kv.every);
        let (mut x, mut x_alt) = (&ws.x, &ws.x_alt);
        let (mut pos, mut pos_alt) = (&ws.positions, &ws.positions_alt);
        for (i, (l, lc)) in self.layers.iter().zip(cache.layers.iter_mut()).enumerate() {
            if lc.len + n > cache_capacity(&lc.k) {
                return Err(Error::InvalidArgument(format!(
                    "KV cache full: {} + {n} tokens exceed its {} rows; create a larger cache",
                    lc.len,
                    cache_capacity(&lc.k)
                )));
            }
            let drop = reduce.map_or(0, |r| r.site.drop_after(i));
            let pn = if per_layer {
                ws.layer_positions.slice(i * LAYER_POSITION_SLOT, &[1])
            } else {
                pos.view(&[n])
            };
            let (xt, a, ctx) = (x.view(&[n, d]), ws.a.view(&[n, d]), ws.a.view(&[n, qd]));
            l.norm1.forward(b, &xt, eps, &a)?;
            let qkv = l.qkv.forward_side_by_side(b, &a, Epilogue::None, &ws.qkv)?;
            let [q, k, v] = [&qkv[0], &qkv[1], &qkv[2]];
            if n == 1 && qd % ops::matmul::BLOCK_ALIGN == 0 {
                // One row: q's heads and k's are adjacent.
                let qk = ws.qkv.slice(0, &[1, qd + kvd]);
                let heads = self.shape.heads + self.shape.kv_heads;
                ops::rope(b, &qk, &pn, heads, &self.rope)?;
            } else {
                ops::rope(b, q, &pn, self.shape.heads, &self.rope)?;
                ops::rope(b, k, &pn, self.shape.kv_heads, &self.rope)?;
            }
            b.copy(k, &lc.k.slice(lc.len * kvd, &[n, kvd]))?;
            b.copy(v, &lc.v.slice(lc.len * kvd, &[n, kvd]))?;
            lc.len += n;
            let scratch = ws.reduce.as_ref().filter(|_| drop > 0);
            let probs = match capture {
                Some(kv) => {
                    let row = (i * kv.every + cache.window) * kv.stride;
                    Some(kv.window.slice(row, &[1, lc.len]))
                }
                None => scratch.map(|s| s.probs.view(&[n, n])),
            };
            // A KV-cache window records probabilities; a prefill step reads its own map.
            let kind = match (capture, reduce) {
                (None, Some(r)) => r.site.reduction.attention,
                _ => AttentionMap::Probabilities,
            };
            ops::attention(
                b,
                None,
                q,
                &lc.k,
                &lc.v,
                lc.len,
                &self.shape,
                &ws.attn,
                &ctx,
                probs.as_ref().map(|m| (m, kind)),
                None,
            )?;
            l.o.forward(b, &ctx, Epilogue::Accumulate, &xt)?;
            if let (Some(r), Some(probs), Some(sp), Some(scratch)) =
                (reduce, &probs, spans.as_mut(), scratch)
            {
                let out = x_alt.view(&[n - drop, d]);
                let pout = pos_alt.view(&[n - drop]);
                let input = StepInput {
                    hidden: &xt,
                    // Keys here carry RoPE; the hidden states are the metric in the LLM.
                    keys: None,
                    attn: probs,
                    positions: &pn,
                    sizes: None,
                };
                scratch
                    .step
                    .record(b, &r.site.reduction, sp, &input, drop, &out, &pout)?;
                std::mem::swap(&mut x, &mut x_alt);
                std::mem::swap(&mut pos, &mut pos_alt);
                n -= drop;
                let vis = sp.visual.clone().unwrap_or_default();
                let text = sp.text.clone().unwrap_or_default();
                sp.visual = Some(vis.start..vis.end - drop);
                sp.text = Some(text.start - drop..text.end - drop);
            }
            let (xt, a) = (x.view(&[n, d]), ws.a.view(&[n, d]));
            l.norm2.forward(b, &xt, eps, &a)?;
            let gate_up = l
                .gate_up
                .forward_side_by_side(b, &a, Epilogue::None, &ws.gate_up)?;
            let gate = &gate_up[0];
            ops::silu_mul(b, gate, &gate_up[1])?;
            l.down.forward(b, gate, Epilogue::Accumulate, &xt)?;
        }
        // The last prompt token is text, never reduced: its position continues the sequence.
        cache.next_position = positions[positions.len() - 1] + 1;
        if let Some(r) = reduce {
            cache.renumbered = r.renumber;
            for lc in &mut cache.layers {
                lc.position = lc.len as u32;
            }
        }
        if capture.is_some() {
            cache.window += 1;
        }
        b.copy(&x.slice((n - 1) * d, &[1, d]), &ws.last)?;
        self.norm.forward(b, &ws.last, eps, &ws.last_normed)?;
        ops::matmul(
            b,
            &ws.last_normed,
            &self.head,
            None,
            Epilogue::None,
            &ws.logits,
        )?;
        Ok(ws.logits.view(&[tc.vocab_size]))
    }

    /// Allocate what reducing needs (the attention map, the step's buffers), once.
    pub fn prepare_reduction(&mut self, gpu: &Gpu) -> Result<()> {
        if self.ws.reduce.is_none() {
            self.ws.reduce = Some(SiteScratch::new(gpu, self.capacity)?);
        }
        Ok(())
    }

    /// Allocate what compressing the cache while decoding needs, for caches of up to
    /// `context` rows (replacing an earlier allocation for another `every`).
    pub fn prepare_kv_reduction(
        &mut self,
        gpu: &Gpu,
        kv: &KvReduction,
        context: usize,
    ) -> Result<()> {
        if kv.every == 0 {
            return Err(Error::InvalidArgument(
                "KV-cache compression every 0 tokens: give at least 1".into(),
            ));
        }
        if self
            .ws
            .reduce
            .as_ref()
            .is_none_or(|s| s.max_tokens() < context)
        {
            self.ws.reduce = Some(SiteScratch::new(gpu, context.max(self.capacity))?);
        }
        if self
            .ws
            .kv
            .as_ref()
            .is_some_and(|s| s.every == kv.every && s.k_out.shape()[0] >= context)
        {
            return Ok(());
        }
        let stride = context.next_multiple_of(64);
        let kvd = self.shape.kv_heads * self.shape.head_dim;
        let rows: Vec<u32> = (0..context as u32).collect();
        self.ws.kv = Some(KvScratch {
            window: gpu.zeros(
                &[self.layers.len() * kv.every * stride],
                DType::F32,
                "decode attention window",
            )?,
            every: kv.every,
            stride,
            k_out: gpu.zeros(&[context, kvd], DType::F32, "compressed keys")?,
            v_out: gpu.zeros(&[context, kvd], DType::F32, "compressed values")?,
            rows: gpu.upload_u32(&rows, &[context], "cache rows")?,
            rows_out: gpu.zeros(&[context], DType::U32, "kept cache rows")?,
        });
        Ok(())
    }

    /// Compress every layer's visual cache entries with `kv`, scored by the attention of the
    /// `cache.window` tokens decoded since the last compression (the last rows of each layer),
    /// then start a new window. Later tokens keep their RoPE positions.
    pub fn compress_kv(&self, b: &mut Batch, cache: &mut KvCache, kv: &KvReduction) -> Result<()> {
        let (Some(scratch), Some(site)) = (self.ws.kv.as_ref(), self.ws.reduce.as_ref()) else {
            return Err(Error::InvalidArgument(
                "call prepare_kv_reduction before compressing the cache".into(),
            ));
        };
        let w = cache.window;
        let kvd = self.shape.kv_heads * self.shape.head_dim;
        for (i, lc) in cache.layers.iter_mut().enumerate() {
            let drop = kv.drop_for(lc.visual.len());
            if drop == 0 || w == 0 {
                continue;
            }
            let l = lc.len;
            // The step reads a square map: the window's rows, zeros elsewhere.
            let attn = site.probs.view(&[l, l]);
            b.clear(&attn)?;
            for j in 0..w {
                let row = l - w + j;
                let captured = scratch
                    .window
                    .slice((i * scratch.every + j) * scratch.stride, &[row + 1]);
                b.copy(&captured, &attn.slice(row * l, &[row + 1]))?;
            }
            let spans = Spans {
                visual: Some(lc.visual.clone()),
                text: Some(l - w..l),
                positions: PositionKind::Rope,
                ..Spans::default()
            };
            let (k, v) = (lc.k.slice(0, &[l, kvd]), lc.v.slice(0, &[l, kvd]));
            let (k_out, v_out) = (
                scratch.k_out.view(&[l - drop, kvd]),
                scratch.v_out.view(&[l - drop, kvd]),
            );
            let input = StepInput {
                hidden: &k,
                // Keys (with RoPE) are the similarity metric of the cache.
                keys: Some(&k),
                attn: &attn,
                positions: &scratch.rows.view(&[l]),
                sizes: None,
            };
            let rows_out = scratch.rows_out.view(&[l - drop]);
            site.step
                .record(b, &kv.reduction, &spans, &input, drop, &k_out, &rows_out)?;
            site.step.record_again(b, &v, &v_out)?;
            b.copy(&k_out, &lc.k)?;
            b.copy(&v_out, &lc.v)?;
            lc.len -= drop;
            lc.visual.end -= drop;
        }
        cache.window = 0;
        Ok(())
    }

    /// Head-averaged attention of the tokens decoded since the last compression over the
    /// cache rows of `layer` (`[window, stride]`, row `j` valid up to that token's cache row),
    /// or `None` when no compression is prepared.
    pub fn kv_window(&self, layer: usize) -> Option<Tensor> {
        let kv = self.ws.kv.as_ref()?;
        (layer < self.layers.len()).then(|| {
            kv.window
                .slice(layer * kv.every * kv.stride, &[kv.every, kv.stride])
        })
    }

    /// Refuse reductions after layers that do not exist.
    pub fn check_reduction(&self, r: &SiteReduction) -> Result<()> {
        match r.drops.iter().find(|(l, _)| *l >= self.layers.len()) {
            Some((layer, _)) => Err(Error::InvalidArgument(format!(
                "an LLM reduction after layer {layer}, but the decoder has {} layers",
                self.layers.len()
            ))),
            None => Ok(()),
        }
    }

    fn check_rows(&self, n: usize) -> Result<()> {
        if n == 0 || n > self.capacity {
            return Err(Error::InvalidArgument(format!(
                "{n} tokens in one forward call; this decoder was loaded for 1..={} (raise max_prompt_tokens)",
                self.capacity
            )));
        }
        Ok(())
    }

    pub fn weight_bytes(&self) -> u64 {
        let layers: u64 = self
            .layers
            .iter()
            .map(|l| {
                [&l.qkv, &l.o, &l.gate_up, &l.down]
                    .iter()
                    .map(|x| x.bytes())
                    .sum::<u64>()
                    + l.norm1.bytes()
                    + l.norm2.bytes()
            })
            .sum();
        let embed = if self.embed.shares_matrix() {
            0
        } else {
            self.embed.bytes()
        };
        layers + embed + self.head.bytes() + self.norm.bytes()
    }

    /// Weight bytes one decode step reads: every matrix and norm, but of an embedding table
    /// that is not the LM head only the one row it gathers.
    pub fn decode_read_bytes(&self) -> u64 {
        let table = if self.embed.shares_matrix() {
            0
        } else {
            self.embed.bytes()
        };
        self.weight_bytes() - table + table / self.cfg.vocab_size.max(1) as u64
    }
}

fn cache_capacity(t: &Tensor) -> usize {
    t.shape()[0]
}
