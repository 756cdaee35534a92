//! The vision tower (pre-LN ViT), CLIP or SigLIP: patch embedding as im2col + matmul, then
//! CLIP's [CLS] and position embeddings and pre-layernorm, or SigLIP's learned position
//! embeddings alone (no [CLS], no pre-layernorm), then encoder layers up to the one whose output
//! LLaVA reads. SigLIP's post-layernorm and pooling head are not loaded: LLaVA reads a hidden
//! state (`vision_feature_layer`), which is taken before them.

use super::config::{LlavaConfig, VisionConfig};
use super::linear::{Linear, Norm, WeightStore};
use super::weights::WeightFile;
use crate::gpu::{Batch, DType, Gpu, Tensor};
use crate::ops::{self, AttentionMap, AttentionScratch, AttentionShape, Epilogue, WeightMatrix};
use crate::reduce::{Compress, Reduction, SiteReduction, SiteScratch, Spans, StepInput};
use crate::{Error, Result};

struct VisionLayer {
    norm1: Norm,
    /// q, k and v side by side.
    qkv: Linear,
    o: Linear,
    norm2: Norm,
    fc1: Linear,
    fc2: Linear,
}

/// Activations of one image pass, allocated once. Buffers whose contents are dead at the time
/// share storage: the patch columns live in `mlp`, the patch embeddings in `qkv`, and the
/// attention output in `a`. `x_alt` takes the reduced sequence when a layer reduces (then the
/// two swap).
struct Workspace {
    x: Tensor,
    x_alt: Tensor,
    a: Tensor,
    /// q, then k, then v `[tokens, d]` (see [`Linear::forward_side_by_side`]).
    qkv: Tensor,
    mlp: Tensor,
    attn: AttentionScratch,
    /// Keys averaged over heads `[tokens, head_dim]` (towers without [CLS]), see
    /// [`VisionTower::head_mean`].
    keys_mean: Option<Tensor>,
    /// Grid index of every token (-1 for [CLS]), and two buffers for the survivors' indices.
    grid: Tensor,
    kept_grid: [Tensor; 2],
    /// Allocated by [`VisionTower::prepare_reduction`].
    reduce: Option<SiteScratch>,
    /// Token sizes carried between size-weighted (ToMe) steps, and all ones to start from;
    /// allocated with `reduce`.
    sizes: Option<[Tensor; 2]>,
    /// Merge attribution, allocated by [`VisionTower::set_trace_merges`].
    trace: Option<MergeTrace>,
}

/// Buffers of the merge attribution: which output token absorbed each patch.
struct MergeTrace {
    /// The token index of patch p (`p + 1` when [CLS] is token 0), copied into `owner` per pass.
    init: Tensor,
    /// Output row of each input token of the last step, -1 if pruned.
    route: Tensor,
    /// Row of the token owning each patch, -1 if pruned.
    owner: Tensor,
}

/// The tower's output: `hidden [tokens, D]` ([CLS] first where the tower has one), and each
/// token's grid index.
pub struct VisionOutput {
    pub hidden: Tensor,
    pub grid: Tensor,
    pub tokens: usize,
    /// With [`VisionTower::set_trace_merges`]: for every patch (row-major grid order), the row
    /// of `hidden` holding the token that absorbed it, -1 if it was pruned (i32 `[patches]`).
    pub owners: Option<Tensor>,
}

pub struct VisionTower {
    cfg: VisionConfig,
    /// Encoder layers to run: the output of the last one is the feature LLaVA reads.
    layers_to_run: usize,
    /// The MLP activation as the fc1 epilogue.
    act: Epilogue,
    patch: WeightMatrix,
    /// SigLIP's convolution has a bias; CLIP's has none.
    patch_bias: Option<Tensor>,
    /// CLIP's [CLS] embedding and pre-layernorm; SigLIP has neither.
    class: Option<Tensor>,
    positions: Tensor,
    pre_norm: Option<Norm>,
    /// Without [CLS], the reductions' similarity metric is the keys averaged over heads (the
    /// FiCoCo note's K for the equivalent-token score a_i = -cos(mu, K_i), also what ToMe's,
    /// PruMerge's and VisionZip's similarities use on this tower): `k @ head_mean^T` with
    /// `head_mean [head_dim, D]` holding 1 / heads at `(j, h * head_dim + j)`. CLIP keeps the
    /// full keys.
    head_mean: Option<WeightMatrix>,
    layers: Vec<VisionLayer>,
    ws: Workspace,
}

impl VisionTower {
    /// Shapes of the workspace tensors x, a, qkv, mlp, x_alt: the activation slots this tower
    /// views (see [`Gpu::shared_activations`]).
    pub fn workspace_shapes(vc: &VisionConfig) -> [Vec<usize>; 5] {
        let t = vc.tokens();
        let d = vc.hidden_size;
        let cols = vc.num_channels * vc.patch_size * vc.patch_size;
        let (a, mlp) = (vec![t, d], vec![t * vc.intermediate_size.max(cols)]);
        let qkv = ops::side_by_side_offsets(t, &[d; 3]).1;
        [a.clone(), a.clone(), vec![qkv.max(t * d)], mlp, a]
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
        let tokens = vc.tokens();
        let cls = vc.has_class_token();
        let act = match vc.hidden_act.as_str() {
            "quick_gelu" => Epilogue::QuickGelu,
            "gelu" => Epilogue::Gelu,
            // transformers' gelu_new is the same tanh formula.
            "gelu_pytorch_tanh" | "gelu_new" => Epilogue::GeluTanh,
            other => {
                return Err(Error::Unsupported(format!(
                    "vision_config.hidden_act {other:?}: supported are quick_gelu, gelu and \
                     gelu_pytorch_tanh"
                )))
            }
        };
        let conv = wf.get("vision.embeddings.patch_embedding.weight", &[d, c, p, p])?;
        let patch =
            WeightMatrix::from_out_in(gpu, &conv.data, d, c * p * p, dtype, "patch_embedding")?;
        let patch_bias = (!cls)
            .then(|| {
                super::linear::load_vector(gpu, wf, "vision.embeddings.patch_embedding.bias", d)
            })
            .transpose()?;
        let class = cls
            .then(|| super::linear::load_vector(gpu, wf, "vision.embeddings.class_embedding", d))
            .transpose()?;
        let pos = wf.get("vision.embeddings.position_embedding.weight", &[tokens, d])?;
        let positions = gpu.upload_f32(&pos.data, &[tokens, d], "position_embedding")?;
        let pre_norm = cls
            .then(|| Norm::load(gpu, wf, "vision.pre_layrnorm", d, true))
            .transpose()?;
        let heads = vc.num_attention_heads;
        let hd = d / heads;
        let head_mean = if cls {
            None
        } else {
            let mut w = vec![0f32; hd * d];
            for j in 0..hd {
                for h in 0..heads {
                    w[j * d + h * hd + j] = 1.0 / heads as f32;
                }
            }
            Some(WeightMatrix::from_out_in(
                gpu,
                &w,
                hd,
                d,
                DType::F32,
                "key head mean",
            )?)
        };
        let layers_to_run = cfg.vision_layers_to_run();
        let inter = vc.intermediate_size;
        let layers = (0..layers_to_run)
            .map(|i| {
                let n = |s: &str| format!("vision.encoder.layers.{i}.{s}");
                let lin = |s: &str, o, k| Linear::load(gpu, wf, &n(s), o, k, true, dtype);
                let (q, k, v) = (
                    n("self_attn.q_proj"),
                    n("self_attn.k_proj"),
                    n("self_attn.v_proj"),
                );
                let qkv = [(&*q, d), (&*k, d), (&*v, d)];
                let store = WeightStore::dense(dtype);
                Ok(VisionLayer {
                    norm1: Norm::load(gpu, wf, &n("layer_norm1"), d, true)?,
                    qkv: Linear::load_side_by_side(gpu, wf, &qkv, d, true, store)?,
                    o: lin("self_attn.out_proj", d, d)?,
                    norm2: Norm::load(gpu, wf, &n("layer_norm2"), d, true)?,
                    fc1: lin("mlp.fc1", inter, d)?,
                    fc2: lin("mlp.fc2", d, inter)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut slots = slots.iter();
        let [x, a, qkv, mlp, x_alt] = Self::workspace_shapes(&vc).map(|s| {
            slots
                .next()
                .expect("one activation slot per workspace tensor")
                .view(&s)
        });
        let first = -i32::from(cls);
        let grid: Vec<i32> = (first..first + tokens as i32).collect();
        let kept = |i| gpu.zeros(&[tokens], DType::I32, &format!("vision kept grid {i}"));
        let ws = Workspace {
            x,
            x_alt,
            a,
            qkv,
            mlp,
            attn: AttentionScratch::new(gpu, tokens, vc.num_attention_heads)?,
            keys_mean: head_mean
                .is_some()
                .then(|| gpu.zeros(&[tokens, hd], DType::F32, "vision keys head mean"))
                .transpose()?,
            grid: gpu.upload_i32(&grid, &[tokens], "vision grid index")?,
            kept_grid: [kept(0)?, kept(1)?],
            reduce: None,
            sizes: None,
            trace: None,
        };
        Ok(Self {
            cfg: vc,
            layers_to_run,
            act,
            patch,
            patch_bias,
            class,
            positions,
            pre_norm,
            head_mean,
            layers,
            ws,
        })
    }

    pub fn config(&self) -> &VisionConfig {
        &self.cfg
    }

    /// Tokens in the sequence: the patches, plus [CLS] where the tower has one.
    pub fn tokens(&self) -> usize {
        self.cfg.tokens()
    }

    /// Where the step finds [CLS] and the patch grid.
    fn spans(&self) -> Spans {
        Spans {
            cls: self.class.is_some().then_some(0),
            grid: Some(self.cfg.grid_side()),
            ..Spans::default()
        }
    }

    /// The reductions' similarity metric from the keys `k [t, D]` of a scored layer: the keys
    /// themselves, or (without [CLS]) their mean over heads.
    fn metric(&self, b: &mut Batch, k: &Tensor, t: usize) -> Result<Tensor> {
        match (&self.head_mean, &self.ws.keys_mean) {
            (Some(w), Some(m)) => {
                let m = m.view(&[t, m.shape()[1]]);
                ops::matmul(b, k, w, None, Epilogue::None, &m)?;
                Ok(m)
            }
            _ => Ok(k.clone()),
        }
    }

    pub fn layers_to_run(&self) -> usize {
        self.layers_to_run
    }

    /// Record the tower on `pixels` (`[3, H, W]`). With `reduce`, tokens are dropped or merged
    /// after the attention of the listed layers ([CLS] never). With `score_output`, the last
    /// layer keeps its attention map and keys for [`Self::reduce_output`]. The output's hidden
    /// state is the one LLaVA selects (valid once the batch is submitted; reused by the next
    /// call).
    pub fn forward(
        &self,
        b: &mut Batch,
        pixels: &Tensor,
        reduce: Option<&SiteReduction>,
        score_output: bool,
    ) -> Result<VisionOutput> {
        let vc = &self.cfg;
        let s = vc.image_size;
        ops::expect_shape("pixel_values", pixels, &[vc.num_channels, s, s])?;
        let ws = &self.ws;
        let eps = vc.layer_norm_eps;
        let mut t = self.tokens();
        let (d, p) = (vc.hidden_size, vc.patch_size);
        if let Some(r) = reduce {
            self.check_reduction(r)?;
        }
        if (reduce.is_some() || score_output) && self.layers_to_run == 0 {
            return Err(Error::InvalidArgument(
                "vision_feature_layer 0 reads the embeddings: no tower layer to reduce after \
                 or to score with"
                    .into(),
            ));
        }
        let last = self.layers_to_run.saturating_sub(1);
        if (reduce.is_some() || score_output) && ws.reduce.is_none() {
            return Err(Error::InvalidArgument(
                "call prepare_reduction before reducing in the vision tower".into(),
            ));
        }
        if score_output && reduce.is_some_and(|r| r.drop_after(last) > 0) {
            return Err(Error::InvalidArgument(format!(
                "the tower's output is reduced at the projector: layer {last} cannot also reduce"
            )));
        }
        let np = vc.num_patches();
        let cols = ws.mlp.view(&[np, vc.num_channels * p * p]);
        let patches = ws.qkv.view(&[np, d]);
        ops::im2col(b, pixels, p, &cols)?;
        let bias = self.patch_bias.as_ref();
        ops::matmul(b, &cols, &self.patch, bias, Epilogue::None, &patches)?;
        match &self.pre_norm {
            Some(norm) => {
                ops::vision_embed(b, &patches, self.class.as_ref(), &self.positions, &ws.a)?;
                norm.forward(b, &ws.a, eps, &ws.x)?;
            }
            None => ops::vision_embed(b, &patches, self.class.as_ref(), &self.positions, &ws.x)?,
        }
        let heads = vc.num_attention_heads;
        let hd = d / heads;
        let shape = AttentionShape {
            heads,
            kv_heads: heads,
            head_dim: hd,
            causal: false,
            scale: (hd as f32).powf(-0.5),
        };
        let act = self.act;
        let spans = self.spans();
        let (mut x, mut x_alt) = (&ws.x, &ws.x_alt);
        let mut grid = ws.grid.clone();
        if let Some(tr) = &ws.trace {
            b.copy(&tr.init, &tr.owner)?;
        }
        // ToMe's size-weighted merges carry token sizes, and once tokens have merged the
        // attention weighs each key by its size (proportional attention).
        let sizes = match &ws.sizes {
            Some([sizes, ones])
                if reduce.is_some_and(|r| r.reduction.compress == Compress::SizeWeighted) =>
            {
                b.copy(ones, sizes)?;
                Some(sizes)
            }
            _ => None,
        };
        let mut merged = false;
        for (i, l) in self.layers.iter().enumerate() {
            let drop = reduce.map_or(0, |r| r.drop_after(i));
            let xt = x.view(&[t, d]);
            let a = ws.a.view(&[t, d]);
            l.norm1.forward(b, &xt, eps, &a)?;
            let qkv = l.qkv.forward_side_by_side(b, &a, Epilogue::None, &ws.qkv)?;
            let (q, k, v) = (&qkv[0], &qkv[1], &qkv[2]);
            let scored = drop > 0 || (score_output && i == last);
            let scratch = ws.reduce.as_ref().filter(|_| scored);
            let probs = scratch.map(|s| s.probs.view(&[t, t]));
            // The step reads its own map; the projector's methods the probabilities.
            let kind = reduce
                .filter(|_| drop > 0)
                .map_or(AttentionMap::Probabilities, |r| r.reduction.attention);
            // The attention output reuses `a`.
            let key_sizes = sizes.filter(|_| merged).map(|z| z.view(&[t]));
            ops::attention(
                b,
                None,
                q,
                k,
                v,
                t,
                &shape,
                &ws.attn,
                &a,
                probs.as_ref().map(|m| (m, kind)),
                key_sizes.as_ref(),
            )?;
            l.o.forward(b, &a, Epilogue::Accumulate, &xt)?;
            if let (Some(r), Some(probs), Some(scratch)) =
                (reduce, &probs, scratch.filter(|_| drop > 0))
            {
                let out = x_alt.view(&[t - drop, d]);
                // Alternate the survivors' grid indices between two buffers.
                let kept_buf = &ws.kept_grid[usize::from(grid.same_buffer(&ws.kept_grid[0]))];
                let kept = kept_buf.view(&[t - drop]);
                let carried = sizes.map(|z| z.view(&[t]));
                let metric = self.metric(b, k, t)?;
                let input = StepInput {
                    hidden: &xt,
                    keys: Some(&metric),
                    attn: probs,
                    positions: &grid.view(&[t]),
                    sizes: carried.as_ref(),
                };
                scratch
                    .step
                    .record(b, &r.reduction, &spans, &input, drop, &out, &kept)?;
                if let Some(z) = sizes {
                    b.copy(&scratch.step.sizes(t - drop), z)?;
                    merged = true;
                }
                self.trace_step(b, scratch, t)?;
                std::mem::swap(&mut x, &mut x_alt);
                grid = kept;
                t -= drop;
            }
            let xt = x.view(&[t, d]);
            let (a, mlp) = (ws.a.view(&[t, d]), ws.mlp.view(&[t, vc.intermediate_size]));
            l.norm2.forward(b, &xt, eps, &a)?;
            l.fc1.forward(b, &a, act, &mlp)?;
            l.fc2.forward(b, &mlp, Epilogue::Accumulate, &xt)?;
        }
        Ok(VisionOutput {
            hidden: x.view(&[t, d]),
            grid: grid.view(&[t]),
            tokens: t,
            owners: ws.trace.as_ref().map(|tr| tr.owner.clone()),
        })
    }

    /// Reduce the tower's output after projection: `projected [t, D]` (the output tokens in
    /// the LLM's width, row 0 [CLS] where the tower has one) becomes `reduced [t - drop, D]`, scored by the attention
    /// and keys of the last layer (a [`Self::forward`] with `score_output` in the same batch).
    /// Returns the survivors' grid indices.
    pub fn reduce_output(
        &self,
        b: &mut Batch,
        out: &VisionOutput,
        r: &Reduction,
        drop: usize,
        projected: &Tensor,
        reduced: &Tensor,
    ) -> Result<Tensor> {
        let ws = &self.ws;
        let scratch = ws.reduce.as_ref().ok_or_else(|| {
            Error::InvalidArgument(
                "call prepare_reduction before reducing the tower's output".into(),
            )
        })?;
        let (t, d) = (out.tokens, self.cfg.hidden_size);
        let kept_buf = &ws.kept_grid[usize::from(out.grid.same_buffer(&ws.kept_grid[0]))];
        let kept = kept_buf.view(&[t - drop]);
        let spans = self.spans();
        // The last layer's keys, where its forward left them.
        let (starts, _) = ops::side_by_side_offsets(t, &[d; 3]);
        let metric = self.metric(b, &ws.qkv.slice(starts[1], &[t, d]), t)?;
        let input = StepInput {
            hidden: projected,
            keys: Some(&metric),
            attn: &scratch.probs.view(&[t, t]),
            positions: &out.grid,
            sizes: None,
        };
        scratch
            .step
            .record(b, r, &spans, &input, drop, reduced, &kept)?;
        self.trace_step(b, scratch, t)?;
        Ok(kept)
    }

    /// With merge tracing on, follow the step just recorded in the owner map.
    fn trace_step(&self, b: &mut Batch, scratch: &SiteScratch, t: usize) -> Result<()> {
        if let Some(tr) = &self.ws.trace {
            scratch.step.record_routes(b, &tr.route.view(&[t]))?;
            ops::reduce::compose_routes(b, &tr.route.view(&[t]), &tr.owner)?;
        }
        Ok(())
    }

    /// Turn merge attribution on or off: with it, every reducing step also routes its input
    /// tokens to their output rows on the GPU and [`VisionOutput::owners`] follows each patch
    /// to the token that absorbed it. Off (the default), nothing extra is recorded.
    pub fn set_trace_merges(&mut self, gpu: &Gpu, on: bool) -> Result<()> {
        if !on {
            self.ws.trace = None;
        } else if self.ws.trace.is_none() {
            let (t, patches) = (self.tokens(), self.cfg.num_patches());
            let first = i32::from(self.class.is_some());
            let init: Vec<i32> = (first..first + patches as i32).collect();
            self.ws.trace = Some(MergeTrace {
                init: gpu.upload_i32(&init, &[patches], "merge owner init")?,
                route: gpu.zeros(&[t], DType::I32, "merge routes")?,
                owner: gpu.zeros(&[patches], DType::I32, "merge owners")?,
            });
        }
        Ok(())
    }

    /// Allocate what reducing needs (the attention map, the step's buffers), once.
    pub fn prepare_reduction(&mut self, gpu: &Gpu) -> Result<()> {
        if self.ws.reduce.is_none() {
            let t = self.tokens();
            self.ws.reduce = Some(SiteScratch::new(gpu, t)?);
            self.ws.sizes = Some([
                gpu.zeros(&[t], DType::F32, "vision token sizes")?,
                gpu.upload_f32(&vec![1.0; t], &[t], "unit token sizes")?,
            ]);
        }
        Ok(())
    }

    /// Refuse reductions at layers that do not run or that would leave no patch token.
    pub fn check_reduction(&self, r: &SiteReduction) -> Result<()> {
        if let Some(&(layer, _)) = r.drops.iter().find(|(l, _)| *l >= self.layers_to_run) {
            return Err(Error::InvalidArgument(format!(
                "a vision reduction after layer {layer}, but only layers 0..{} run (the \
                 projector reads the output of the first {} layers)",
                self.layers_to_run, self.layers_to_run
            )));
        }
        let patches = self.cfg.num_patches();
        if r.total() >= patches {
            return Err(Error::InvalidArgument(format!(
                "the vision reduction drops {} of {patches} patch tokens; keep at least one",
                r.total()
            )));
        }
        Ok(())
    }

    pub fn weight_bytes(&self) -> u64 {
        let layers: u64 = self
            .layers
            .iter()
            .map(|l| {
                [&l.qkv, &l.o, &l.fc1, &l.fc2]
                    .iter()
                    .map(|x| x.bytes())
                    .sum::<u64>()
                    + l.norm1.bytes()
                    + l.norm2.bytes()
            })
            .sum();
        layers
            + self.patch.bytes()
            + self.patch_bias.as_ref().map_or(0, |b| b.buffer_bytes())
            + self.class.as_ref().map_or(0, |c| c.buffer_bytes())
            + self.positions.buffer_bytes()
            + self.pre_norm.as_ref().map_or(0, |n| n.bytes())
    }
}
