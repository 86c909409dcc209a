//! HF `CLIPImageProcessor` / `SiglipImageProcessor` (transformers 4.40 numpy path),
//! reproduced exactly for 8-bit RGB input (spec §3.3, §3.4).
//!
//! Per image: optional `pad` aspect mode (expand to a square canvas filled with
//! `int(mean·255)`) → resize with Pillow-exact resampling on `u8`
//! ([`crate::resize`]) → optional centre crop (CLIP; zero-padding when the crop is
//! larger than the image, as HF does) → rescale `x as f64 · rescale_factor` cast to
//! `f32` → normalise in `f32`, `(x − mean) / std` → `CHW` `f32`.
//!
//! * CLIP resize: shortest edge → `size`, long edge `int(size · long / short)`
//!   (HF `get_resize_output_image_size`, truncating), then crop
//!   `top = (h − ch) // 2`, `left = (w − cw) // 2` (floor division).
//! * SigLIP resize: straight to `height × width` (aspect ratio not kept), no crop.
//!
//! The reference (`model_init`) uses `aspect_ratio=None`, i.e. **no** padding; the
//! `pad` mode ([`ImageProcessorConfig::pad_to_square`]) is what training used and is
//! off by default.

use serde_json::Value;

use crate::error::{MediaError, Result};
use crate::frame::RgbImage;
use crate::resize::{resize_with_order, Filter, PassOrder};

/// Which HF image-processor class the config describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProcessorKind {
    /// `CLIPImageProcessor` (shortest-edge resize + centre crop).
    Clip,
    /// `SiglipImageProcessor` (fixed-size resize, no crop).
    Siglip,
}

/// The resize rule of a processor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResizeTarget {
    /// Resize so the shorter side becomes this size, keeping the aspect ratio
    /// (long side truncated: `int(size · long / short)`).
    ShortestEdge(u32),
    /// Resize to exactly this size (aspect ratio not preserved).
    Exact { height: u32, width: u32 },
}

/// Image preprocessing parameters, as read from a HF `preprocessor_config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageProcessorConfig {
    /// The processor class.
    pub kind: ProcessorKind,
    /// `do_resize`.
    pub do_resize: bool,
    /// `size` (`shortest_edge` for CLIP, `height`/`width` for SigLIP).
    pub size: ResizeTarget,
    /// `resample` (PIL filter code; both real processors use 3 = bicubic).
    pub resample: Filter,
    /// `do_center_crop` (CLIP only; SigLIP never crops).
    pub do_center_crop: bool,
    /// `crop_size` as `(height, width)`.
    pub crop_size: (u32, u32),
    /// `do_rescale`.
    pub do_rescale: bool,
    /// `rescale_factor` (f64, as Python keeps it).
    pub rescale_factor: f64,
    /// `do_normalize`.
    pub do_normalize: bool,
    /// `image_mean` (as stored in the JSON, f64; cast to f32 for normalisation).
    pub image_mean: [f64; 3],
    /// `image_std` (as stored in the JSON, f64; cast to f32 for normalisation).
    pub image_std: [f64; 3],
    /// VideoLLaMA2 `aspect_ratio='pad'`: paste onto a square canvas filled with
    /// `int(mean·255)` before the processor. Off by default (the inference reference
    /// uses `aspect_ratio=None`). Not part of the HF JSON.
    pub pad_to_square: bool,
    /// Pass order of the Pillow resize (see [`PassOrder`]); not part of the HF JSON.
    pub resize_pass_order: PassOrder,
}

/// OpenAI CLIP normalisation constants (`OPENAI_CLIP_MEAN` / `OPENAI_CLIP_STD`).
pub const OPENAI_CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
/// See [`OPENAI_CLIP_MEAN`].
pub const OPENAI_CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];
/// `IMAGENET_STANDARD_MEAN` / `_STD` (SigLIP defaults).
pub const IMAGENET_STANDARD_MEAN: [f64; 3] = [0.5, 0.5, 0.5];
/// See [`IMAGENET_STANDARD_MEAN`].
pub const IMAGENET_STANDARD_STD: [f64; 3] = [0.5, 0.5, 0.5];

impl ImageProcessorConfig {
    /// `openai/clip-vit-large-patch14-336` (VideoLLaMA2 7B/16F/8x7B/72B towers):
    /// shortest edge 336, centre crop 336, bicubic, OpenAI CLIP mean/std.
    pub fn clip_vit_large_patch14_336() -> Self {
        Self::clip_defaults(336, 336)
    }

    /// `google/siglip-so400m-patch14-384` (VideoLLaMA2.1 towers): 384×384, bicubic,
    /// mean/std 0.5.
    pub fn siglip_so400m_patch14_384() -> Self {
        let mut c = Self::siglip_defaults();
        c.size = ResizeTarget::Exact {
            height: 384,
            width: 384,
        };
        c.resample = Filter::Bicubic;
        c
    }

    /// HF `CLIPImageProcessor` defaults with the given sizes.
    fn clip_defaults(shortest_edge: u32, crop: u32) -> Self {
        Self {
            kind: ProcessorKind::Clip,
            do_resize: true,
            size: ResizeTarget::ShortestEdge(shortest_edge),
            resample: Filter::Bicubic,
            do_center_crop: true,
            crop_size: (crop, crop),
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: OPENAI_CLIP_MEAN,
            image_std: OPENAI_CLIP_STD,
            pad_to_square: false,
            resize_pass_order: PassOrder::Pillow13,
        }
    }

    /// HF `SiglipImageProcessor` defaults (224×224, **bilinear**, mean/std 0.5).
    fn siglip_defaults() -> Self {
        Self {
            kind: ProcessorKind::Siglip,
            do_resize: true,
            size: ResizeTarget::Exact {
                height: 224,
                width: 224,
            },
            resample: Filter::Bilinear,
            do_center_crop: false,
            crop_size: (224, 224),
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: IMAGENET_STANDARD_MEAN,
            image_std: IMAGENET_STANDARD_STD,
            pad_to_square: false,
            resize_pass_order: PassOrder::Pillow13,
        }
    }

    /// Guesses the processor class from `image_processor_type` /
    /// `feature_extractor_type` (`CLIP…` / `Siglip…`), falling back to the shape of
    /// `size` (`shortest_edge` or an integer → CLIP, `height`/`width` → SigLIP).
    pub fn detect_kind(json: &Value) -> Option<ProcessorKind> {
        for key in ["image_processor_type", "feature_extractor_type"] {
            if let Some(s) = json.get(key).and_then(Value::as_str) {
                let l = s.to_ascii_lowercase();
                if l.contains("siglip") {
                    return Some(ProcessorKind::Siglip);
                }
                if l.contains("clip") {
                    return Some(ProcessorKind::Clip);
                }
            }
        }
        match json.get("size") {
            Some(Value::Object(m)) if m.contains_key("shortest_edge") => Some(ProcessorKind::Clip),
            Some(Value::Object(m)) if m.contains_key("height") => Some(ProcessorKind::Siglip),
            Some(Value::Number(_)) => Some(ProcessorKind::Clip),
            _ => None,
        }
    }

    /// Parses a HF `preprocessor_config.json`, detecting the class with [`Self::detect_kind`].
    pub fn from_hf_json(text: &str) -> Result<Self> {
        let json: Value = serde_json::from_str(text)
            .map_err(|e| MediaError::Config(format!("preprocessor_config.json: {e}")))?;
        let kind = Self::detect_kind(&json).ok_or_else(|| {
            MediaError::Config(
                "cannot tell CLIP from SigLIP: no image_processor_type and no recognisable size"
                    .into(),
            )
        })?;
        Self::from_hf_value(&json, kind)
    }

    /// Parses a HF `preprocessor_config.json` as the given processor class (the
    /// reference picks the class from the vision tower, not from the JSON). Missing
    /// keys take the HF class defaults.
    pub fn from_hf_json_as(text: &str, kind: ProcessorKind) -> Result<Self> {
        let json: Value = serde_json::from_str(text)
            .map_err(|e| MediaError::Config(format!("preprocessor_config.json: {e}")))?;
        Self::from_hf_value(&json, kind)
    }

    /// Reads a `preprocessor_config.json` file (class detected from its content).
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| MediaError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_hf_json(&text).map_err(|e| match e {
            MediaError::Config(m) => MediaError::Config(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Builds a config from an already-parsed JSON value.
    pub fn from_hf_value(json: &Value, kind: ProcessorKind) -> Result<Self> {
        let mut c = match kind {
            ProcessorKind::Clip => Self::clip_defaults(224, 224),
            ProcessorKind::Siglip => Self::siglip_defaults(),
        };
        let get_bool = |k: &str, d: bool| -> Result<bool> {
            match json.get(k) {
                None | Some(Value::Null) => Ok(d),
                Some(Value::Bool(b)) => Ok(*b),
                Some(v) => Err(MediaError::Config(format!(
                    "{k} must be a boolean, got {v}"
                ))),
            }
        };
        c.do_resize = get_bool("do_resize", c.do_resize)?;
        c.do_rescale = get_bool("do_rescale", c.do_rescale)?;
        c.do_normalize = get_bool("do_normalize", c.do_normalize)?;
        if kind == ProcessorKind::Clip {
            c.do_center_crop = get_bool("do_center_crop", c.do_center_crop)?;
        }
        if let Some(v) = json.get("resample").filter(|v| !v.is_null()) {
            let code = v.as_i64().ok_or_else(|| {
                MediaError::Config(format!("resample must be an integer, got {v}"))
            })?;
            c.resample = Filter::from_pil_code(code)
                .ok_or_else(|| MediaError::Config(format!("unknown PIL resample code {code}")))?;
        }
        if let Some(v) = json.get("rescale_factor").filter(|v| !v.is_null()) {
            c.rescale_factor = v.as_f64().ok_or_else(|| {
                MediaError::Config(format!("rescale_factor must be a number, got {v}"))
            })?;
        }
        if let Some(v) = json.get("image_mean").filter(|v| !v.is_null()) {
            c.image_mean = triple(v, "image_mean")?;
        }
        if let Some(v) = json.get("image_std").filter(|v| !v.is_null()) {
            c.image_std = triple(v, "image_std")?;
        }
        if let Some(v) = json.get("size").filter(|v| !v.is_null()) {
            c.size = parse_size(v, kind)?;
        }
        if let Some(v) = json.get("crop_size").filter(|v| !v.is_null()) {
            c.crop_size = parse_crop(v)?;
        }
        c.validate()?;
        Ok(c)
    }

    /// Checks sizes and normalisation constants.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(MediaError::Config(m));
        match self.size {
            ResizeTarget::ShortestEdge(0) => return bad("size.shortest_edge must be > 0".into()),
            ResizeTarget::Exact { height, width } if height == 0 || width == 0 => {
                return bad(format!("size {height}x{width} must be non-zero"))
            }
            _ => {}
        }
        if self.kind == ProcessorKind::Clip
            && self.do_center_crop
            && (self.crop_size.0 == 0 || self.crop_size.1 == 0)
        {
            return bad("crop_size must be non-zero".into());
        }
        if self.do_resize && self.resample == Filter::Nearest {
            return bad("NEAREST resampling (resample = 0) is not supported".into());
        }
        if self.do_normalize && self.image_std.iter().any(|&s| s == 0.0 || !s.is_finite()) {
            return bad(format!(
                "image_std {:?} must be finite and non-zero",
                self.image_std
            ));
        }
        Ok(())
    }

    /// Turns the `pad` aspect mode on or off (builder style).
    pub fn with_pad_to_square(mut self, on: bool) -> Self {
        self.pad_to_square = on;
        self
    }

    /// Chooses the resize pass order (builder style).
    pub fn with_resize_pass_order(mut self, order: PassOrder) -> Self {
        self.resize_pass_order = order;
        self
    }

    /// The canvas colour of the `pad` mode: `int(mean·255)` per channel
    /// (CLIP `(122, 116, 104)`, SigLIP `(127, 127, 127)`).
    pub fn pad_fill(&self) -> [u8; 3] {
        self.image_mean
            .map(|m| (m * 255.0).trunc().clamp(0.0, 255.0) as u8)
    }

    /// The size `(height, width)` after resizing an image of `width × height`
    /// (before cropping).
    pub fn resized_size(&self, width: u32, height: u32) -> (u32, u32) {
        if !self.do_resize {
            return (height, width);
        }
        match self.size {
            ResizeTarget::Exact { height, width } => (height, width),
            ResizeTarget::ShortestEdge(s) => {
                let (short, long) = if width <= height {
                    (width, height)
                } else {
                    (height, width)
                };
                // Python: int(size * long / short) — true division of integers, truncated.
                let new_long = ((s as u64 * long as u64) as f64 / short as f64).trunc() as u32;
                if width <= height {
                    (new_long, s)
                } else {
                    (s, new_long)
                }
            }
        }
    }

    /// The output size `(height, width)` for an input of `width × height`.
    pub fn output_size(&self, width: u32, height: u32) -> (u32, u32) {
        let (w, h) = if self.pad_to_square {
            let m = width.max(height);
            (m, m)
        } else {
            (width, height)
        };
        let (rh, rw) = self.resized_size(w, h);
        if self.kind == ProcessorKind::Clip && self.do_center_crop {
            self.crop_size
        } else {
            (rh, rw)
        }
    }

    /// The `u8` image after the geometric steps (pad, resize, crop) — what the
    /// reference has right before `rescale`.
    pub fn prepare_u8(&self, image: &RgbImage) -> Result<RgbImage> {
        image.validate()?;
        if image.width == 0 || image.height == 0 {
            return Err(MediaError::InvalidImage(format!(
                "cannot preprocess an empty {}x{} image",
                image.width, image.height
            )));
        }
        let padded;
        let mut img = image;
        if self.pad_to_square {
            padded = expand_to_square(img, self.pad_fill());
            img = &padded;
        }
        let resized;
        if self.do_resize {
            let (h, w) = self.resized_size(img.width, img.height);
            if h == 0 || w == 0 {
                return Err(MediaError::InvalidImage(format!(
                    "{}x{} image resizes to an empty {w}x{h} image",
                    img.width, img.height
                )));
            }
            resized = resize_with_order(img, w, h, self.resample, self.resize_pass_order)?;
            img = &resized;
        }
        if self.kind == ProcessorKind::Clip && self.do_center_crop {
            Ok(center_crop(img, self.crop_size.0, self.crop_size.1))
        } else {
            Ok(img.clone())
        }
    }

    /// Preprocesses one image: `3 × H × W` `f32`, channel-major (`CHW`).
    pub fn preprocess(&self, image: &RgbImage) -> Result<Vec<f32>> {
        let img = self.prepare_u8(image)?;
        Ok(self.normalize_chw(&img))
    }

    /// Preprocesses a list of frames into one `T × 3 × H × W` tensor. All frames
    /// must produce the same output size (always true for CLIP with centre crop and
    /// for SigLIP).
    pub fn preprocess_batch(&self, frames: &[RgbImage]) -> Result<PixelValues> {
        let mut data = Vec::new();
        let mut hw: Option<(u32, u32)> = None;
        for (i, f) in frames.iter().enumerate() {
            let img = self.prepare_u8(f)?;
            match hw {
                None => {
                    hw = Some((img.height, img.width));
                    data.reserve(frames.len() * 3 * img.height as usize * img.width as usize);
                }
                Some(s) if s != (img.height, img.width) => {
                    return Err(MediaError::InvalidImage(format!(
                        "frame {i} preprocesses to {}x{}, frame 0 to {}x{}",
                        img.width, img.height, s.1, s.0
                    )))
                }
                _ => {}
            }
            data.extend(self.normalize_chw(&img));
        }
        let (height, width) = hw.unwrap_or(self.output_size(1, 1));
        Ok(PixelValues {
            frames: frames.len(),
            height: height as usize,
            width: width as usize,
            data,
        })
    }

    /// Rescale + normalise a `u8` image into `CHW` `f32` exactly like HF:
    /// `(x as f64 · rescale_factor) as f32`, then `(x − mean_f32) / std_f32` in `f32`.
    pub fn normalize_chw(&self, img: &RgbImage) -> Vec<f32> {
        let n = img.width as usize * img.height as usize;
        let mut out = vec![0f32; 3 * n];
        // Lookup table per channel: u8 -> final value (identical to per-pixel arithmetic).
        for c in 0..3 {
            let mean = self.image_mean[c] as f32;
            let std = self.image_std[c] as f32;
            let lut: Vec<f32> = (0..=255u8)
                .map(|v| {
                    let x = if self.do_rescale {
                        (v as f64 * self.rescale_factor) as f32
                    } else {
                        v as f32
                    };
                    if self.do_normalize {
                        (x - mean) / std
                    } else {
                        x
                    }
                })
                .collect();
            let plane = &mut out[c * n..(c + 1) * n];
            for (o, px) in plane.iter_mut().zip(img.data.chunks_exact(3)) {
                *o = lut[px[c] as usize];
            }
        }
        out
    }
}

/// A batch of preprocessed frames, `frames × 3 × height × width`, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct PixelValues {
    /// Number of frames `T`.
    pub frames: usize,
    /// Output height.
    pub height: usize,
    /// Output width.
    pub width: usize,
    /// `T·3·H·W` values.
    pub data: Vec<f32>,
}

impl PixelValues {
    /// The shape `[T, 3, H, W]`.
    pub fn shape(&self) -> [usize; 4] {
        [self.frames, 3, self.height, self.width]
    }
}

/// VideoLLaMA2 `expand2square`: paste the image on a square canvas of side
/// `max(w, h)` filled with `fill`, centred on the short axis at offset
/// `(long − short) // 2`.
pub fn expand_to_square(img: &RgbImage, fill: [u8; 3]) -> RgbImage {
    let (w, h) = (img.width, img.height);
    if w == h {
        return img.clone();
    }
    let side = w.max(h);
    let mut out = RgbImage::filled(side, side, fill);
    let (ox, oy) = if w > h {
        (0, (w - h) / 2)
    } else {
        ((h - w) / 2, 0)
    };
    let row = w as usize * 3;
    for y in 0..h as usize {
        let dst = ((y + oy as usize) * side as usize + ox as usize) * 3;
        out.data[dst..dst + row].copy_from_slice(&img.data[y * row..(y + 1) * row]);
    }
    out
}

/// HF `center_crop` to `(crop_h, crop_w)`: `top = (h − ch) // 2`, `left = (w − cw) // 2`
/// (floor division); an image smaller than the crop is first zero-padded
/// symmetrically (`ceil` of half the difference before), exactly as HF does.
pub fn center_crop(img: &RgbImage, crop_h: u32, crop_w: u32) -> RgbImage {
    let (oh, ow) = (img.height as i64, img.width as i64);
    let (ch, cw) = (crop_h as i64, crop_w as i64);
    let top = (oh - ch).div_euclid(2);
    let left = (ow - cw).div_euclid(2);
    if top >= 0 && left >= 0 && top + ch <= oh && left + cw <= ow {
        return img.crop_or_pad(left, top, crop_w, crop_h);
    }
    // HF padding path: the image is placed at (top_pad, left_pad) on a zero canvas of
    // max sizes, and the crop window is shifted by the same amount and clipped to it.
    let nh = ch.max(oh);
    let nw = cw.max(ow);
    let top_pad = (nh - oh + 1) / 2; // ceil((nh - oh) / 2)
    let left_pad = (nw - ow + 1) / 2;
    let (t, b) = (top + top_pad, top + top_pad + ch);
    let (l, r) = (left + left_pad, left + left_pad + cw);
    let (t0, b0) = (t.max(0), b.min(nh));
    let (l0, r0) = (l.max(0), r.min(nw));
    // Window [t0, b0) × [l0, r0) in canvas coordinates = image coordinates minus pads.
    img.crop_or_pad(
        l0 - left_pad,
        t0 - top_pad,
        (r0 - l0).max(0) as u32,
        (b0 - t0).max(0) as u32,
    )
}

fn triple(v: &Value, name: &str) -> Result<[f64; 3]> {
    let err = || {
        MediaError::Config(format!(
            "{name} must be a number or a list of 1 or 3 numbers, got {v}"
        ))
    };
    match v {
        Value::Number(n) => {
            let x = n.as_f64().ok_or_else(err)?;
            Ok([x; 3])
        }
        Value::Array(a) => {
            let xs: Option<Vec<f64>> = a.iter().map(Value::as_f64).collect();
            let xs = xs.ok_or_else(err)?;
            match xs.len() {
                1 => Ok([xs[0]; 3]),
                3 => Ok([xs[0], xs[1], xs[2]]),
                _ => Err(err()),
            }
        }
        _ => Err(err()),
    }
}

fn as_dim(v: &Value, name: &str) -> Result<u32> {
    v.as_u64()
        .and_then(|x| u32::try_from(x).ok())
        .ok_or_else(|| {
            MediaError::Config(format!("{name} must be a non-negative integer, got {v}"))
        })
}

fn parse_size(v: &Value, kind: ProcessorKind) -> Result<ResizeTarget> {
    match v {
        // Legacy integer `size`: CLIP treats it as the shortest edge, SigLIP as a square.
        Value::Number(_) => {
            let s = as_dim(v, "size")?;
            Ok(match kind {
                ProcessorKind::Clip => ResizeTarget::ShortestEdge(s),
                ProcessorKind::Siglip => ResizeTarget::Exact {
                    height: s,
                    width: s,
                },
            })
        }
        Value::Object(m) => {
            if let Some(s) = m.get("shortest_edge") {
                Ok(ResizeTarget::ShortestEdge(as_dim(s, "size.shortest_edge")?))
            } else if let (Some(h), Some(w)) = (m.get("height"), m.get("width")) {
                Ok(ResizeTarget::Exact {
                    height: as_dim(h, "size.height")?,
                    width: as_dim(w, "size.width")?,
                })
            } else {
                Err(MediaError::Config(format!(
                    "size must have shortest_edge or height/width, got {v}"
                )))
            }
        }
        _ => Err(MediaError::Config(format!("unsupported size value {v}"))),
    }
}

fn parse_crop(v: &Value) -> Result<(u32, u32)> {
    match v {
        Value::Number(_) => {
            let s = as_dim(v, "crop_size")?;
            Ok((s, s))
        }
        Value::Object(m) => match (m.get("height"), m.get("width")) {
            (Some(h), Some(w)) => Ok((
                as_dim(h, "crop_size.height")?,
                as_dim(w, "crop_size.width")?,
            )),
            _ => Err(MediaError::Config(format!(
                "crop_size must have height/width, got {v}"
            ))),
        },
        _ => Err(MediaError::Config(format!(
            "unsupported crop_size value {v}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_configs_match_hub_json() {
        // openai/clip-vit-large-patch14-336 preprocessor_config.json (legacy integer sizes).
        let clip = r#"{"crop_size": 336, "do_center_crop": true, "do_normalize": true,
            "do_resize": true, "feature_extractor_type": "CLIPFeatureExtractor",
            "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 336}"#;
        assert_eq!(
            ImageProcessorConfig::from_hf_json(clip).unwrap(),
            ImageProcessorConfig::clip_vit_large_patch14_336()
        );
        let siglip = r#"{"do_normalize": true, "do_rescale": true, "do_resize": true,
            "image_mean": [0.5, 0.5, 0.5], "image_processor_type": "SiglipImageProcessor",
            "image_std": [0.5, 0.5, 0.5], "processor_class": "SiglipProcessor",
            "resample": 3, "rescale_factor": 0.00392156862745098,
            "size": {"height": 384, "width": 384}}"#;
        assert_eq!(
            ImageProcessorConfig::from_hf_json(siglip).unwrap(),
            ImageProcessorConfig::siglip_so400m_patch14_384()
        );
        assert_eq!(0.00392156862745098f64, 1.0 / 255.0);
    }

    #[test]
    fn clip_resize_sizes() {
        let c = ImageProcessorConfig::clip_vit_large_patch14_336();
        // 1280x720 landscape: short 720 -> 336, long int(336*1280/720) = int(597.33) = 597.
        assert_eq!(c.resized_size(1280, 720), (336, 597));
        // portrait 720x1280 -> width 336, height 597
        assert_eq!(c.resized_size(720, 1280), (597, 336));
        // 96x64 -> short 64 -> 336, long int(336*96/64) = 504
        assert_eq!(c.resized_size(96, 64), (336, 504));
        assert_eq!(c.output_size(1280, 720), (336, 336));
        let s = ImageProcessorConfig::siglip_so400m_patch14_384();
        assert_eq!(s.output_size(1280, 720), (384, 384));
    }

    #[test]
    fn crop_offsets_and_padding() {
        let data: Vec<u8> = (0..10 * 7).flat_map(|i| [i as u8, 0, 0]).collect();
        let img = RgbImage::from_raw(10, 7, data).unwrap();
        // top = (7-4)//2 = 1, left = (10-4)//2 = 3
        let c = center_crop(&img, 4, 4);
        assert_eq!(c.pixel(0, 0)[0], 13);
        // crop larger than image: 9x12 crop of 10x7 -> new 9x12 canvas... HF:
        // top = (7-9)//2 = -1, top_pad = ceil(2/2) = 1 -> t = 0; left = (10-12)//2 = -1,
        // left_pad = 1 -> l = 0. Image sits at (1,1) of the output.
        let p = center_crop(&img, 9, 12);
        assert_eq!((p.width, p.height), (12, 9));
        assert_eq!(p.pixel(0, 0), [0, 0, 0]);
        assert_eq!(p.pixel(1, 1)[0], 0);
        assert_eq!(p.pixel(2, 1)[0], 1);
        assert_eq!(p.pixel(1, 2)[0], 10);
        assert_eq!(p.pixel(11, 8), [0, 0, 0]);
        // odd difference: 4 rows into crop 7: top = (4-7)//2 = -2, top_pad = ceil(3/2) = 2
        let small = RgbImage::filled(3, 4, [9, 9, 9]);
        let q = center_crop(&small, 7, 3);
        let col: Vec<u8> = (0..7).map(|y| q.pixel(0, y)[0]).collect();
        assert_eq!(col, vec![0, 0, 9, 9, 9, 9, 0]);
    }

    #[test]
    fn pad_mode() {
        let c = ImageProcessorConfig::clip_vit_large_patch14_336();
        assert_eq!(c.pad_fill(), [122, 116, 104]);
        assert_eq!(
            ImageProcessorConfig::siglip_so400m_patch14_384().pad_fill(),
            [127; 3]
        );
        let img = RgbImage::filled(4, 2, [1, 2, 3]);
        let sq = expand_to_square(&img, [122, 116, 104]);
        assert_eq!((sq.width, sq.height), (4, 4));
        assert_eq!(sq.pixel(0, 0), [122, 116, 104]);
        assert_eq!(sq.pixel(0, 1), [1, 2, 3]);
        assert_eq!(sq.pixel(3, 2), [1, 2, 3]);
        assert_eq!(sq.pixel(3, 3), [122, 116, 104]);
        let tall = RgbImage::filled(1, 4, [5, 5, 5]);
        let sq = expand_to_square(&tall, [0, 0, 0]);
        // offset (4-1)//2 = 1
        assert_eq!(sq.pixel(1, 0), [5, 5, 5]);
        assert_eq!(sq.pixel(0, 0), [0, 0, 0]);
    }

    #[test]
    fn normalisation_arithmetic() {
        let c = ImageProcessorConfig::clip_vit_large_patch14_336();
        let img = RgbImage::filled(336, 336, [255, 0, 128]);
        let v = c.preprocess(&img).unwrap();
        assert_eq!(v.len(), 3 * 336 * 336);
        let r = ((255.0f64 / 255.0) as f32 - 0.48145466f32) / 0.26862954f32;
        let g = (0.0f32 - OPENAI_CLIP_MEAN[1] as f32) / OPENAI_CLIP_STD[1] as f32;
        let b = ((128.0f64 * (1.0 / 255.0)) as f32 - OPENAI_CLIP_MEAN[2] as f32)
            / OPENAI_CLIP_STD[2] as f32;
        assert_eq!(v[0], r);
        assert_eq!(v[336 * 336], g);
        assert_eq!(v[2 * 336 * 336], b);
    }

    #[test]
    fn errors_not_panics() {
        let c = ImageProcessorConfig::clip_vit_large_patch14_336();
        assert!(c.preprocess(&RgbImage::black(0, 5)).is_err());
        let bad = RgbImage {
            width: 3,
            height: 3,
            data: vec![1, 2],
        };
        assert!(c.preprocess(&bad).is_err());
        assert!(ImageProcessorConfig::from_hf_json("{").is_err());
        assert!(ImageProcessorConfig::from_hf_json(r#"{"size": {"shortest_edge": 0}}"#).is_err());
        assert!(ImageProcessorConfig::from_hf_json(r#"{"foo": 1}"#).is_err());
        // A 1-pixel-high, very wide image: shortest edge 336, long edge huge but fine.
        let s = ImageProcessorConfig::siglip_so400m_patch14_384();
        assert_eq!(
            s.preprocess(&RgbImage::black(1, 1)).unwrap().len(),
            3 * 384 * 384
        );
        // Frames of different sizes in one batch are fine when the output size agrees.
        let b = s
            .preprocess_batch(&[RgbImage::black(5, 3), RgbImage::black(7, 9)])
            .unwrap();
        assert_eq!(b.shape(), [2, 3, 384, 384]);
    }
}
