//! One question about one image, as the `generate` CLI and the browser demo both ask it: the
//! prompt sized for the planned reduction and its FLOPs against the unreduced model
//! ([`prepare`]), the answer as one JSON object ([`Prepared::report`]), and the picture of which
//! patches reached the LLM ([`kept_overlay`]).

use crate::model::{Generation, Llava};
use crate::preprocess::{self, ImageProcessor, PromptIds, Tokenizer};
use crate::reduce::flops::Flops;
use crate::reduce::schedule::Schedule;
use crate::reduce::{KvReduceSpec, ReduceSpec, ReductionPlan};
use crate::Result;
use image::{DynamicImage, Rgb, RgbImage};

/// A prompt ready for [`Llava::generate`] under the reduction [`prepare`] attached.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// Token ids with the image expanded to the visual tokens the reduced model produces.
    pub prompt: PromptIds,
    /// The reduction method's name (`none` without one).
    pub method: String,
    /// Visual tokens at every layer under the reduction.
    pub schedule: Schedule,
    pub flops: Flops,
    /// The same prompt without reduction.
    pub flops_unreduced: Flops,
}

/// Plan `spec` for `text` (a full prompt holding the image placeholder once), attach it to
/// `model` (replacing any earlier reduction) with `kv`'s compression of the cache while
/// decoding, and tokenize the prompt for it. With `trace_merges`, the next image records which
/// token absorbed each patch (for [`kept_overlay`]).
pub fn prepare(
    model: &mut Llava,
    tokenizer: &Tokenizer,
    text: &str,
    spec: &ReduceSpec,
    kv: Option<&KvReduceSpec>,
    renumber_positions: bool,
    trace_merges: bool,
) -> Result<Prepared> {
    let config = model.config().clone();
    let image_token = config.image_token_index;
    let full = preprocess::build_prompt_ids(tokenizer, text, image_token, config.visual_tokens())?;
    let text_tokens = full.ids.len() - config.visual_tokens();
    let planned = spec.plan(&config, text_tokens)?;
    let flops = Flops::of(&config, &planned.schedule)?;
    let flops_unreduced = Flops::of(&config, &Schedule::full(&config, text_tokens))?;
    let kv = kv
        .map(|k| k.plan(planned.schedule.projector()))
        .transpose()?;
    // The authors' FiCoCo-L reading renumbers whatever the option says.
    model.set_reduction(ReductionPlan {
        renumber_positions: renumber_positions || planned.plan.renumber_positions,
        kv,
        ..planned.plan
    })?;
    model.set_trace_merges(trace_merges)?;
    let prompt = preprocess::build_prompt_ids(tokenizer, text, image_token, model.visual_tokens())?;
    Ok(Prepared {
        prompt,
        method: spec.method.clone(),
        schedule: planned.schedule,
        flops,
        flops_unreduced,
    })
}

impl Prepared {
    /// The answer as the CLI's `--json` prints it: `tokens`, `text`, `prompt_tokens`,
    /// `visual_tokens`, `timings_ms` {`load`, `vision`, `prefill`, `decode`}, `adapter`,
    /// `reduce`, `visual_tokens_llm`, `visual_tokens_kept`, `schedule`, `flops` and
    /// `flops_unreduced` ({`vision`, `projector`, `llm_prefill`, `overhead`}), and
    /// `kv_visual_entries` (each decoder layer's visual cache entries at the end).
    pub fn report(
        &self,
        model: &Llava,
        out: &Generation,
        text: &str,
        load_ms: f64,
    ) -> serde_json::Value {
        let flops = |f: &Flops| {
            serde_json::json!({"vision": f.vision, "projector": f.projector,
                "llm_prefill": f.llm_prefill, "overhead": f.overhead})
        };
        let t = out.timings;
        serde_json::json!({
            "tokens": out.tokens,
            "text": text,
            "prompt_tokens": out.prompt_tokens,
            "visual_tokens": out.visual_tokens,
            "timings_ms": {
                "load": load_ms,
                "vision": t.vision_ms,
                "prefill": t.prefill_ms,
                "decode": t.decode_ms,
            },
            "adapter": model.gpu().describe(),
            "reduce": self.method,
            "visual_tokens_llm": model.visual_tokens(),
            "visual_tokens_kept": self.schedule.kept(),
            "schedule": self.schedule.to_string(),
            "flops": flops(&self.flops),
            "flops_unreduced": flops(&self.flops_unreduced),
            "kv_visual_entries": model
                .kv_cache()
                .layers
                .iter()
                .map(|l| l.visual.len())
                .collect::<Vec<_>>(),
        })
    }
}

/// The preprocessed image (resized and cropped as the vision tower saw it) with merge
/// attribution, for the last image `model` encoded with merge tracing on: each patch tinted
/// with the colour of the visual token that absorbed it (merged patches share their target's
/// colour), patches whose own token reached the LLM outlined in white, pruned patches dimmed.
pub async fn kept_overlay(
    model: &Llava,
    processor: &ImageProcessor,
    image: &DynamicImage,
) -> Result<RgbImage> {
    let kept = model.kept_patches().await?;
    let owners = model.patch_owners().await?;
    let planes = processor.resized_planes(image)?;
    let vc = &model.config().vision_config;
    Ok(draw_overlay(
        &planes,
        vc.image_size,
        vc.patch_size,
        &kept,
        &owners,
    ))
}

/// `planes`: `[3, side, side]` 8-bit; `kept`: grid indices of surviving tokens (-1 for [CLS]);
/// `owners[patch]`: the owning token, -1 if pruned. Pixels past the last whole patch (the
/// convolution drops them when `patch` does not divide `side`) are dimmed like pruned ones.
fn draw_overlay(
    planes: &[u8],
    side: usize,
    patch: usize,
    kept: &[i32],
    owners: &[i32],
) -> RgbImage {
    let grid = side / patch;
    let mut keep = vec![false; grid * grid];
    for &k in kept.iter().filter(|&&k| k >= 0) {
        keep[k as usize] = true;
    }
    let plane = side * side;
    let mut img = RgbImage::new(side as u32, side as u32);
    for (x, y, px) in img.enumerate_pixels_mut() {
        let (x, y) = (x as usize, y as usize);
        let i = y * side + x;
        let (gx, gy) = (x / patch, y / patch);
        let cell = if gx < grid && gy < grid {
            gy * grid + gx
        } else {
            usize::MAX
        };
        let edge =
            x % patch == 0 || y % patch == 0 || x % patch == patch - 1 || y % patch == patch - 1;
        let rgb = [planes[i], planes[plane + i], planes[2 * plane + i]];
        *px = match owners.get(cell).copied().unwrap_or(-1) {
            _ if keep.get(cell) == Some(&true) && edge => Rgb([255, 255, 255]),
            o if o < 0 => Rgb(rgb.map(|v| v / 4)),
            o => {
                // Half image, half the owner's colour.
                let tint = owner_colour(o as u32);
                Rgb(std::array::from_fn(|c| {
                    ((u16::from(rgb[c]) + u16::from(tint[c])) / 2) as u8
                }))
            }
        };
    }
    img
}

/// A saturated colour for owner token `o`: its hue hashed (golden-ratio steps around the wheel
/// after an integer mix, so neighbouring tokens differ).
fn owner_colour(o: u32) -> [u8; 3] {
    let mut h = o.wrapping_mul(0x9e37_79b9);
    h ^= h >> 16;
    let hue = (h as f32 / u32::MAX as f32) * 6.0;
    let f = hue.fract();
    let (v, q, t) = (255.0, 255.0 * (1.0 - f), 255.0 * f);
    let [r, g, b] = match hue as u32 {
        0 => [v, t, 0.0],
        1 => [q, v, 0.0],
        2 => [0.0, v, t],
        3 => [0.0, q, v],
        4 => [t, 0.0, v],
        _ => [v, 0.0, q],
    };
    [r as u8, g as u8, b as u8]
}
