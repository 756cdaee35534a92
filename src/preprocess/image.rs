//! CLIP and SigLIP image preprocessing as transformers' PIL-based `CLIPImageProcessor` and
//! `SiglipImageProcessor` do it: RGB conversion (RGBA composited onto white), resize with
//! Pillow's fixed-point separable filters (CLIP: shortest edge, then centre crop; SigLIP: to a
//! square, no crop), rescale and normalise. The resize reproduces Pillow bit for
//! bit because a one-level difference in a uint8 pixel is ~0.015 after normalisation, far above
//! the 1e-4 the oracle tests allow.

use super::{PixelValues, PreprocessError};
use image::DynamicImage;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Decode a PNG or JPEG file.
pub fn load_image(path: impl AsRef<Path>) -> Result<DynamicImage, PreprocessError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| PreprocessError::File {
        path: path.to_path_buf(),
        message: format!("cannot read the image: {e}"),
    })?;
    decode_image(&bytes, path)
}

/// Decode a PNG or JPEG image already in memory; `name` labels errors.
pub fn decode_image(bytes: &[u8], name: impl AsRef<Path>) -> Result<DynamicImage, PreprocessError> {
    image::load_from_memory(bytes).map_err(|e| PreprocessError::Image {
        path: name.as_ref().to_path_buf(),
        message: e.to_string(),
    })
}

/// Resampling filters by Pillow's numbering, which `preprocessor_config.json` uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    Lanczos,
    Bilinear,
    Bicubic,
    Box,
    Hamming,
}

impl Filter {
    fn from_pillow(code: u32) -> Option<Self> {
        Some(match code {
            1 => Filter::Lanczos,
            2 => Filter::Bilinear,
            3 => Filter::Bicubic,
            4 => Filter::Box,
            5 => Filter::Hamming,
            _ => return None,
        })
    }

    fn support(self) -> f64 {
        match self {
            Filter::Box => 0.5,
            Filter::Bilinear | Filter::Hamming => 1.0,
            Filter::Bicubic => 2.0,
            Filter::Lanczos => 3.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        fn sinc(x: f64) -> f64 {
            if x == 0.0 {
                1.0
            } else {
                let x = x * std::f64::consts::PI;
                x.sin() / x
            }
        }
        match self {
            Filter::Box => f64::from(u8::from(x > -0.5 && x <= 0.5)),
            Filter::Bilinear => (1.0 - x.abs()).max(0.0),
            Filter::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let x = x * std::f64::consts::PI;
                    // Pillow mixes float constants into this double expression.
                    x.sin() / x * (0.54f32 as f64 + 0.46f32 as f64 * x.cos())
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Filter::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

/// Target of the resize step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResizeTo {
    /// Scale so the shorter side has this length, keeping the aspect ratio.
    ShortestEdge(usize),
    /// Exactly this size.
    Exact { height: usize, width: usize },
}

/// The fields of `preprocessor_config.json` that change the pixels.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageProcessorConfig {
    pub convert_rgb: bool,
    pub resize: Option<(ResizeTo, Filter)>,
    pub center_crop: Option<(usize, usize)>,
    pub rescale: Option<f32>,
    pub normalize: Option<([f32; 3], [f32; 3])>,
}

#[derive(Deserialize)]
struct RawProcessorConfig {
    image_processor_type: Option<String>,
    do_convert_rgb: Option<bool>,
    do_resize: Option<bool>,
    size: Option<serde_json::Value>,
    resample: Option<serde_json::Value>,
    do_center_crop: Option<bool>,
    crop_size: Option<serde_json::Value>,
    do_rescale: Option<bool>,
    rescale_factor: Option<f64>,
    do_normalize: Option<bool>,
    image_mean: Option<Vec<f32>>,
    image_std: Option<Vec<f32>>,
    do_pad: Option<bool>,
    image_grid_pinpoints: Option<serde_json::Value>,
}

const OPENAI_CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
const OPENAI_CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];
/// transformers' IMAGENET_STANDARD_MEAN / _STD, SigLIP's defaults.
const STANDARD_MEAN: [f32; 3] = [0.5; 3];
const STANDARD_STD: [f32; 3] = [0.5; 3];

impl ImageProcessorConfig {
    /// Parse a `preprocessor_config.json` text; `source` names it in errors. Missing fields take
    /// the defaults of the processor class `image_processor_type` names: `CLIPImageProcessor`'s
    /// (also when unnamed) or `SiglipImageProcessor`'s (224 x 224 square resize, no centre crop,
    /// mean = std = 0.5).
    pub fn from_json_str(text: &str, source: &Path) -> Result<Self, PreprocessError> {
        let bad = |field: &str, message: String| PreprocessError::Config {
            path: source.to_path_buf(),
            field: field.into(),
            message,
        };
        let raw: RawProcessorConfig =
            serde_json::from_str(text).map_err(|e| bad("(json)", e.to_string()))?;
        let siglip = raw
            .image_processor_type
            .as_deref()
            .is_some_and(|t| t.starts_with("SiglipImageProcessor"));
        if let Some(t) = &raw.image_processor_type {
            if !t.starts_with("CLIPImageProcessor") && !t.starts_with("SiglipImageProcessor") {
                return Err(bad(
                    "image_processor_type",
                    format!("{t:?} is not supported; CLIP- and SigLIP-style processors are"),
                ));
            }
        }
        if raw.do_pad == Some(true) || raw.image_grid_pinpoints.is_some() {
            return Err(bad(
                "do_pad / image_grid_pinpoints",
                "padding and any-resolution tiling (LLaVA-NeXT) are not supported".into(),
            ));
        }
        let resize = if raw.do_resize.unwrap_or(true) {
            let to = match &raw.size {
                None if siglip => ResizeTo::Exact {
                    height: 224,
                    width: 224,
                },
                None => ResizeTo::ShortestEdge(224),
                Some(v) => parse_size(v).ok_or_else(|| {
                    bad(
                        "size",
                        format!("{v}: expected a number, {{\"shortest_edge\": N}} or {{\"height\": H, \"width\": W}}"),
                    )
                })?,
            };
            let filter = match &raw.resample {
                None => Filter::Bicubic,
                Some(v) => parse_filter(v).ok_or_else(|| {
                    bad(
                        "resample",
                        format!("{v}: supported are 1 (lanczos), 2 (bilinear), 3 (bicubic), 4 (box), 5 (hamming)"),
                    )
                })?,
            };
            Some((to, filter))
        } else {
            None
        };
        let center_crop = if raw.do_center_crop.unwrap_or(!siglip) {
            match &raw.crop_size {
                None => Some((224, 224)),
                Some(v) => Some(parse_crop(v).ok_or_else(|| {
                    bad(
                        "crop_size",
                        format!("{v}: expected a number or {{\"height\": H, \"width\": W}}"),
                    )
                })?),
            }
        } else {
            None
        };
        let rescale = raw
            .do_rescale
            .unwrap_or(true)
            .then(|| raw.rescale_factor.unwrap_or(1.0 / 255.0) as f32);
        let normalize = if raw.do_normalize.unwrap_or(true) {
            let three = |v: Option<Vec<f32>>, default: [f32; 3], field: &str| match v {
                None => Ok(default),
                Some(v) if v.len() == 3 => Ok([v[0], v[1], v[2]]),
                Some(v) if v.len() == 1 => Ok([v[0]; 3]),
                Some(v) => Err(bad(field, format!("{} values; expected 3", v.len()))),
            };
            let (mean0, std0) = match siglip {
                true => (STANDARD_MEAN, STANDARD_STD),
                false => (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD),
            };
            let mean = three(raw.image_mean, mean0, "image_mean")?;
            let std = three(raw.image_std, std0, "image_std")?;
            if std.contains(&0.0) {
                return Err(bad("image_std", "contains 0".into()));
            }
            Some((mean, std))
        } else {
            None
        };
        Ok(ImageProcessorConfig {
            convert_rgb: raw.do_convert_rgb.unwrap_or(true),
            resize,
            center_crop,
            rescale,
            normalize,
        })
    }
}

fn parse_size(v: &serde_json::Value) -> Option<ResizeTo> {
    let num = |k: &str| v.get(k).and_then(|x| x.as_u64()).map(|x| x as usize);
    if let Some(n) = v.as_u64() {
        return Some(ResizeTo::ShortestEdge(n as usize));
    }
    if let Some(n) = num("shortest_edge") {
        return Some(ResizeTo::ShortestEdge(n));
    }
    match (num("height"), num("width")) {
        (Some(height), Some(width)) => Some(ResizeTo::Exact { height, width }),
        _ => None,
    }
}

fn parse_crop(v: &serde_json::Value) -> Option<(usize, usize)> {
    match parse_size(v)? {
        ResizeTo::Exact { height, width } => Some((height, width)),
        ResizeTo::ShortestEdge(n) if v.is_number() => Some((n, n)),
        ResizeTo::ShortestEdge(_) => None,
    }
}

fn parse_filter(v: &serde_json::Value) -> Option<Filter> {
    if let Some(code) = v.as_u64() {
        return Filter::from_pillow(code as u32);
    }
    Some(match v.as_str()?.to_ascii_lowercase().as_str() {
        "lanczos" => Filter::Lanczos,
        "bilinear" => Filter::Bilinear,
        "bicubic" => Filter::Bicubic,
        "box" => Filter::Box,
        "hamming" => Filter::Hamming,
        _ => return None,
    })
}

/// Applies an [`ImageProcessorConfig`] to decoded images.
#[derive(Clone, Debug)]
pub struct ImageProcessor {
    pub config: ImageProcessorConfig,
}

/// An 8-bit interleaved image with `channels` samples per pixel.
struct Raster {
    data: Vec<u8>,
    width: usize,
    height: usize,
    channels: usize,
}

impl ImageProcessor {
    pub fn new(config: ImageProcessorConfig) -> Self {
        ImageProcessor { config }
    }

    /// Read the image processor settings from a model directory: `preprocessor_config.json`
    /// (published llava-hf checkpoints) or the `image_processor` object of
    /// `processor_config.json` (what transformers 5 writes).
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self, PreprocessError> {
        let dir = dir.as_ref();
        let path: PathBuf = dir.join("preprocessor_config.json");
        if let Ok(text) = std::fs::read_to_string(&path) {
            return Self::from_json_str(&text, &path);
        }
        let combined = dir.join("processor_config.json");
        let text = std::fs::read_to_string(&combined).map_err(|_| PreprocessError::File {
            path: path.clone(),
            message: "missing (and no processor_config.json with an image_processor entry \
                      either); copy it from the checkpoint"
                .into(),
        })?;
        Self::from_processor_json_str(&text, &combined)
    }

    /// The settings from the text of `preprocessor_config.json`; `source` labels errors.
    pub fn from_json_str(text: &str, source: &Path) -> Result<Self, PreprocessError> {
        Ok(Self::new(ImageProcessorConfig::from_json_str(
            text, source,
        )?))
    }

    /// The settings from the text of a `processor_config.json`, which holds them under
    /// `image_processor`; `source` labels errors.
    pub fn from_processor_json_str(text: &str, source: &Path) -> Result<Self, PreprocessError> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| PreprocessError::File {
                path: source.to_path_buf(),
                message: e.to_string(),
            })?;
        let inner = value
            .get("image_processor")
            .ok_or_else(|| PreprocessError::Config {
                path: source.to_path_buf(),
                field: "image_processor".into(),
                message: "missing".into(),
            })?;
        Self::from_json_str(&inner.to_string(), source)
    }

    /// The 8-bit image after RGB conversion, resize and crop, as `[3, H, W]` planes.
    pub fn resized_planes(&self, image: &DynamicImage) -> Result<Vec<u8>, PreprocessError> {
        let r = self.resized(image)?;
        let plane = r.width * r.height;
        let mut out = vec![0u8; plane * r.channels];
        for (i, px) in r.data.chunks_exact(r.channels).enumerate() {
            for (c, v) in px.iter().enumerate() {
                out[c * plane + i] = *v;
            }
        }
        Ok(out)
    }

    /// Normalised `[3, H, W]` pixel values for the vision tower.
    pub fn preprocess(&self, image: &DynamicImage) -> Result<PixelValues, PreprocessError> {
        let r = self.resized(image)?;
        let plane = r.width * r.height;
        let mut data = vec![0f32; plane * r.channels];
        for (i, px) in r.data.chunks_exact(r.channels).enumerate() {
            for (c, v) in px.iter().enumerate() {
                // transformers rescales in f64 then stores f32, and normalises in f32.
                let mut x = match self.config.rescale {
                    Some(s) => (f64::from(*v) * f64::from(s)) as f32,
                    None => f32::from(*v),
                };
                if let Some((mean, std)) = &self.config.normalize {
                    x = (x - mean[c]) / std[c];
                }
                data[c * plane + i] = x;
            }
        }
        Ok(PixelValues {
            data,
            channels: r.channels,
            height: r.height,
            width: r.width,
        })
    }

    fn resized(&self, image: &DynamicImage) -> Result<Raster, PreprocessError> {
        let mut img = to_rgb(image, self.config.convert_rgb)?;
        if let Some((to, filter)) = self.config.resize {
            let (h, w) = output_size(img.height, img.width, to);
            if h == 0 || w == 0 {
                return Err(PreprocessError::Pixels(format!(
                    "a {}x{} image resizes to {w}x{h}",
                    img.width, img.height
                )));
            }
            img = resize(&img, w, h, filter);
        }
        if let Some((ch, cw)) = self.config.center_crop {
            if ch > img.height || cw > img.width {
                return Err(PreprocessError::Pixels(format!(
                    "centre crop {cw}x{ch} is larger than the resized image {}x{}; \
                     set size >= crop_size in preprocessor_config.json",
                    img.width, img.height
                )));
            }
            let top = (img.height - ch) / 2;
            let left = (img.width - cw) / 2;
            let c = img.channels;
            let mut data = Vec::with_capacity(ch * cw * c);
            for y in top..top + ch {
                let row = (y * img.width + left) * c;
                data.extend_from_slice(&img.data[row..row + cw * c]);
            }
            img = Raster {
                data,
                width: cw,
                height: ch,
                channels: c,
            };
        }
        Ok(img)
    }
}

/// transformers' `convert_to_rgb`: RGB stays; anything else becomes RGBA and is composited onto
/// opaque white with Pillow's integer `alpha_composite`, so transparent areas turn white.
fn to_rgb(image: &DynamicImage, convert: bool) -> Result<Raster, PreprocessError> {
    let (width, height) = (image.width() as usize, image.height() as usize);
    if let DynamicImage::ImageRgb8(rgb) = image {
        return Ok(Raster {
            data: rgb.as_raw().clone(),
            width,
            height,
            channels: 3,
        });
    }
    if !convert {
        return Err(PreprocessError::Pixels(format!(
            "the image is {:?}, not RGB, and do_convert_rgb is false",
            image.color()
        )));
    }
    let rgba = image.to_rgba8();
    let mut data = Vec::with_capacity(width * height * 3);
    for px in rgba.as_raw().chunks_exact(4) {
        let a = u32::from(px[3]);
        for &c in &px[..3] {
            data.push(if a == 0 {
                255
            } else {
                // coef1 = a*128, coef2 = (255-a)*128 when the background is opaque.
                let t = (u32::from(c) * a + 255 * (255 - a)) * 128 + 0x4000;
                ((((t >> 8) + t) >> 8) >> 7) as u8
            });
        }
    }
    Ok(Raster {
        data,
        width,
        height,
        channels: 3,
    })
}

/// `get_resize_output_image_size(default_to_square=False)`: the new long side is truncated.
fn output_size(height: usize, width: usize, to: ResizeTo) -> (usize, usize) {
    match to {
        ResizeTo::Exact { height, width } => (height, width),
        ResizeTo::ShortestEdge(s) => {
            let (short, long) = (height.min(width), height.max(width));
            if short == s {
                return (height, width);
            }
            let new_long = (s as f64 * long as f64 / short as f64) as usize;
            if width <= height {
                (new_long, s)
            } else {
                (s, new_long)
            }
        }
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's per-output-pixel filter taps: first input index and fixed-point weights.
fn coefficients(in_size: usize, out_size: usize, filter: Filter) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let w: Vec<f64> = (xmin..xmax)
                .map(|x| filter.weight((x as f64 - center + 0.5) / filterscale))
                .collect();
            let total: f64 = w.iter().sum();
            let fixed = w
                .iter()
                .map(|&k| {
                    let k = if total != 0.0 { k / total } else { k };
                    let v = k * f64::from(1u32 << PRECISION_BITS);
                    (if k < 0.0 { v - 0.5 } else { v + 0.5 }) as i32
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Separable resample, horizontal pass then vertical, each rounding to 8 bits like Pillow.
fn resize(img: &Raster, width: usize, height: usize, filter: Filter) -> Raster {
    let c = img.channels;
    let mut cur = Raster {
        data: img.data.clone(),
        width: img.width,
        height: img.height,
        channels: c,
    };
    if width != cur.width {
        let taps = coefficients(cur.width, width, filter);
        let mut data = vec![0u8; width * cur.height * c];
        for y in 0..cur.height {
            let src = &cur.data[y * cur.width * c..(y + 1) * cur.width * c];
            for (xx, (xmin, k)) in taps.iter().enumerate() {
                for ch in 0..c {
                    let mut acc = 1i32 << (PRECISION_BITS - 1);
                    for (i, w) in k.iter().enumerate() {
                        acc += i32::from(src[(xmin + i) * c + ch]) * w;
                    }
                    data[(y * width + xx) * c + ch] = clip8(acc);
                }
            }
        }
        cur = Raster {
            data,
            width,
            height: cur.height,
            channels: c,
        };
    }
    if height != cur.height {
        let taps = coefficients(cur.height, height, filter);
        let row = cur.width * c;
        let mut data = vec![0u8; row * height];
        for (yy, (ymin, k)) in taps.iter().enumerate() {
            for x in 0..row {
                let mut acc = 1i32 << (PRECISION_BITS - 1);
                for (i, w) in k.iter().enumerate() {
                    acc += i32::from(cur.data[(ymin + i) * row + x]) * w;
                }
                data[yy * row + x] = clip8(acc);
            }
        }
        cur = Raster {
            data,
            width: cur.width,
            height,
            channels: c,
        };
    }
    cur
}
