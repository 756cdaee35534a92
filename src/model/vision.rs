//! The CLIP vision tower (pre-LN ViT): patch embedding as im2col + matmul, [CLS] and position
//! embeddings, pre-layernorm, then encoder layers up to the one whose output LLaVA reads.

use super::config::{LlavaConfig, VisionConfig};
use super::linear::{Linear, Norm};
use super::weights::WeightFile;
use crate::gpu::{Batch, DType, Gpu, Tensor};
use crate::ops::{self, AttentionScratch, AttentionShape, Epilogue, WeightMatrix};
use crate::{Error, Result};

struct VisionLayer {
    norm1: Norm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    norm2: Norm,
    fc1: Linear,
    fc2: Linear,
}

/// Activations of one image pass, allocated once. Buffers whose contents are dead at the time
/// share storage: the patch columns live in `mlp`, the patch embeddings in `q`, and the attention
/// output in `a`.
struct Workspace {
    x: Tensor,
    a: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mlp: Tensor,
    attn: AttentionScratch,
}

pub struct VisionTower {
    cfg: VisionConfig,
    /// Encoder layers to run: the output of the last one is the feature LLaVA reads.
    layers_to_run: usize,
    quick_gelu: bool,
    patch: WeightMatrix,
    class: Tensor,
    positions: Tensor,
    pre_norm: Norm,
    layers: Vec<VisionLayer>,
    ws: Workspace,
}

impl VisionTower {
    /// Shapes of the workspace tensors x, a, q, k, v, mlp: the activation slots this tower
    /// views (see [`Gpu::shared_activations`]).
    pub fn workspace_shapes(vc: &VisionConfig) -> [Vec<usize>; 6] {
        let t = vc.num_patches() + 1;
        let d = vc.hidden_size;
        let cols = vc.num_channels * vc.patch_size * vc.patch_size;
        let (a, mlp) = (vec![t, d], vec![t * vc.intermediate_size.max(cols)]);
        [a.clone(), a.clone(), a.clone(), a.clone(), a, mlp]
    }

    /// `slots` are at least as large as [`Self::workspace_shapes`].
    pub fn load(
        gpu: &Gpu,
        wf: &WeightFile,
        cfg: &LlavaConfig,
        dtype: DType,
        slots: &[Tensor],
    ) -> Result<Self> {
        let vc = cfg.vision_config.clone();
        let d = vc.hidden_size;
        let p = vc.patch_size;
        let c = vc.num_channels;
        let tokens = vc.num_patches() + 1;
        let quick_gelu = match vc.hidden_act.as_str() {
            "quick_gelu" => true,
            "gelu" => false,
            other => {
                return Err(Error::Unsupported(format!(
                    "vision_config.hidden_act {other:?}: supported are quick_gelu and gelu"
                )))
            }
        };
        let conv = wf.get("vision.embeddings.patch_embedding.weight", &[d, c, p, p])?;
        let patch =
            WeightMatrix::from_out_in(gpu, &conv.data, d, c * p * p, dtype, "patch_embedding")?;
        let class = super::linear::load_vector(gpu, wf, "vision.embeddings.class_embedding", d)?;
        let pos = wf.get("vision.embeddings.position_embedding.weight", &[tokens, d])?;
        let positions = gpu.upload_f32(&pos.data, &[tokens, d], "position_embedding")?;
        let pre_norm = Norm::load(gpu, wf, "vision.pre_layrnorm", d, true)?;
        let layers_to_run = cfg.vision_layers_to_run();
        let inter = vc.intermediate_size;
        let layers = (0..layers_to_run)
            .map(|i| {
                let n = |s: &str| format!("vision.encoder.layers.{i}.{s}");
                let lin = |s: &str, o, k| Linear::load(gpu, wf, &n(s), o, k, true, dtype);
                Ok(VisionLayer {
                    norm1: Norm::load(gpu, wf, &n("layer_norm1"), d, true)?,
                    q: lin("self_attn.q_proj", d, d)?,
                    k: lin("self_attn.k_proj", d, d)?,
                    v: lin("self_attn.v_proj", d, d)?,
                    o: lin("self_attn.out_proj", d, d)?,
                    norm2: Norm::load(gpu, wf, &n("layer_norm2"), d, true)?,
                    fc1: lin("mlp.fc1", inter, d)?,
                    fc2: lin("mlp.fc2", d, inter)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut slots = slots.iter();
        let [x, a, q, k, v, mlp] = Self::workspace_shapes(&vc).map(|s| {
            slots
                .next()
                .expect("one activation slot per workspace tensor")
                .view(&s)
        });
        let ws = Workspace {
            x,
            a,
            q,
            k,
            v,
            mlp,
            attn: AttentionScratch::new(gpu, tokens, vc.num_attention_heads)?,
        };
        Ok(Self {
            cfg: vc,
            layers_to_run,
            quick_gelu,
            patch,
            class,
            positions,
            pre_norm,
            layers,
            ws,
        })
    }

    pub fn config(&self) -> &VisionConfig {
        &self.cfg
    }

    /// Tokens in the sequence: patches plus [CLS].
    pub fn tokens(&self) -> usize {
        self.cfg.num_patches() + 1
    }

    pub fn layers_to_run(&self) -> usize {
        self.layers_to_run
    }

    /// Record the tower on `pixels` (`[3, H, W]`); the returned tensor `[tokens, D]` is the
    /// hidden state LLaVA selects (valid once the batch is submitted; reused by the next call).
    pub fn forward(&self, b: &mut Batch, pixels: &Tensor) -> Result<Tensor> {
        let vc = &self.cfg;
        let s = vc.image_size;
        ops::expect_shape("pixel_values", pixels, &[vc.num_channels, s, s])?;
        let ws = &self.ws;
        let eps = vc.layer_norm_eps;
        let n = self.tokens() - 1;
        let p = vc.patch_size;
        let cols = ws.mlp.view(&[n, vc.num_channels * p * p]);
        let patches = ws.q.view(&[n, vc.hidden_size]);
        ops::im2col(b, pixels, p, &cols)?;
        ops::matmul(b, &cols, &self.patch, None, Epilogue::None, &patches)?;
        ops::vision_embed(b, &patches, &self.class, &self.positions, &ws.a)?;
        self.pre_norm.forward(b, &ws.a, eps, &ws.x)?;
        let heads = vc.num_attention_heads;
        let hd = vc.hidden_size / heads;
        let shape = AttentionShape {
            heads,
            kv_heads: heads,
            head_dim: hd,
            causal: false,
            scale: (hd as f32).powf(-0.5),
        };
        let act = if self.quick_gelu {
            Epilogue::QuickGelu
        } else {
            Epilogue::Gelu
        };
        let t = self.tokens();
        let (mlp, ctx) = (
            ws.mlp.view(&[t, vc.intermediate_size]),
            ws.a.view(&[t, vc.hidden_size]),
        );
        for l in &self.layers {
            l.norm1.forward(b, &ws.x, eps, &ws.a)?;
            l.q.forward(b, &ws.a, Epilogue::None, &ws.q)?;
            l.k.forward(b, &ws.a, Epilogue::None, &ws.k)?;
            l.v.forward(b, &ws.a, Epilogue::None, &ws.v)?;
            ops::attention(b, &ws.q, &ws.k, &ws.v, t, &shape, &ws.attn, &ctx, None)?;
            l.o.forward(b, &ctx, Epilogue::Accumulate, &ws.x)?;
            l.norm2.forward(b, &ws.x, eps, &ws.a)?;
            l.fc1.forward(b, &ws.a, act, &mlp)?;
            l.fc2.forward(b, &mlp, Epilogue::Accumulate, &ws.x)?;
        }
        Ok(ws.x.clone())
    }

    pub fn weight_bytes(&self) -> u64 {
        let layers: u64 = self
            .layers
            .iter()
            .map(|l| {
                [&l.q, &l.k, &l.v, &l.o, &l.fc1, &l.fc2]
                    .iter()
                    .map(|x| x.bytes())
                    .sum::<u64>()
                    + l.norm1.bytes()
                    + l.norm2.bytes()
            })
            .sum();
        layers
            + self.patch.bytes()
            + self.class.buffer_bytes()
            + self.positions.buffer_bytes()
            + self.pre_norm.bytes()
    }
}
