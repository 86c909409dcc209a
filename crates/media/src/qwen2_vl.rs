//! Qwen2-VL pre-processing: `Qwen2VLImageProcessor` (transformers 4.46) and the frame
//! sampling rule of `qwen-vl-utils`.
//!
//! ```text
//! video: N frames @ fps ─smart_nframes (fps 2, even, 4…768)─► n ─round(linspace_f32(0, N−1, n))─► indices
//! frames / image (u8 HWC, native size)
//!   ─smart_resize (factor patch·merge = 28, min/max_pixels)─► Pillow bicubic per frame (u8)
//!   ─(x·rescale_factor in f64 → f32, then (x − mean) / std in f32)─► [T, 3, H, W]
//!   ─pad T to a multiple of temporal_patch_size with copies of the last frame
//!    (an image: 1 frame → 2 identical copies, grid_t = 1)
//!   ─patchify─► pixel_values [gt·gh·gw, C·tp·p·p] + grid (gt, gh, gw)
//! ```
//!
//! Patch rows (spec §7.C): `[gt, tp, C, gh/m, m, p, gw/m, m, p]` permuted to
//! `[gt, gh/m, gw/m, m, m, C, tp, p, p]` — time slice, then 2×2 block row, block column, the
//! position inside the block; each row is channel-major, then the temporal pair, then the
//! `p×p` pixels. So the merger's 4 consecutive rows are exactly one 2×2 spatial block.
//!
//! Substitution made visible: `qwen-vl-utils` also resizes video frames itself (torchvision,
//! its own per-frame pixel budget) before the HF processor; like the fixture, this module
//! hands native-size frames to the processor, whose `min_pixels`/`max_pixels` decide the size.

use crate::error::{MediaError, Result};
use crate::frame::RgbImage;
use crate::resize::{resize_with_order, Filter, PassOrder};
use serde_json::Value;

/// `qwen-vl-utils` video constants.
pub const FPS: f64 = 2.0;
pub const FRAME_FACTOR: usize = 2;
pub const FPS_MIN_FRAMES: usize = 4;
pub const FPS_MAX_FRAMES: usize = 768;

/// The fields of `preprocessor_config.json` (`Qwen2VLImageProcessor`).
#[derive(Debug, Clone, PartialEq)]
pub struct Qwen2VlProcessorConfig {
    pub min_pixels: usize,
    pub max_pixels: usize,
    pub patch_size: usize,
    pub temporal_patch_size: usize,
    pub merge_size: usize,
    pub image_mean: [f64; 3],
    pub image_std: [f64; 3],
    pub rescale_factor: f64,
    pub do_rescale: bool,
    pub do_normalize: bool,
    pub do_resize: bool,
    /// PIL resample code (3 = bicubic).
    pub resample: Filter,
    /// Order of Pillow's two 1-D passes (see `crate::resize`). `None` (default): the pass that
    /// gives the smaller intermediate image first ([`pillow13_pass_order`]), which reproduces
    /// the Pillow 13.0.0 fixture bytes; `Some` forces one order.
    pub pass_order: Option<PassOrder>,
}

impl Default for Qwen2VlProcessorConfig {
    /// The class defaults of transformers 4.46 (`min_pixels` 56², `max_pixels` 28²·1280).
    fn default() -> Self {
        Self {
            min_pixels: 56 * 56,
            max_pixels: 28 * 28 * 1280,
            patch_size: 14,
            temporal_patch_size: 2,
            merge_size: 2,
            image_mean: [0.48145466, 0.4578275, 0.40821073],
            image_std: [0.26862954, 0.26130258, 0.27577711],
            rescale_factor: 1.0 / 255.0,
            do_rescale: true,
            do_normalize: true,
            do_resize: true,
            resample: Filter::Bicubic,
            pass_order: None,
        }
    }
}

fn field_usize(json: &Value, key: &str) -> Option<usize> {
    json.get(key).and_then(Value::as_u64).map(|v| v as usize)
}

fn field_triple(json: &Value, key: &str) -> Result<Option<[f64; 3]>> {
    match json.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) if a.len() == 3 => {
            let mut out = [0.0; 3];
            for (o, v) in out.iter_mut().zip(a) {
                *o = v
                    .as_f64()
                    .ok_or_else(|| MediaError::Config(format!("{key} must hold numbers")))?;
            }
            Ok(Some(out))
        }
        Some(_) => Err(MediaError::Config(format!("{key} must be 3 numbers"))),
    }
}

impl Qwen2VlProcessorConfig {
    /// Parse a `preprocessor_config.json` value. `min_pixels`/`max_pixels` are read from the
    /// top level (what the 4.46 processor uses), else from `size`, else the class defaults.
    pub fn from_value(json: &Value) -> Result<Self> {
        let d = Self::default();
        let size = json.get("size");
        let pick = |key: &str, default: usize| {
            field_usize(json, key)
                .or_else(|| size.and_then(|s| field_usize(s, key)))
                .unwrap_or(default)
        };
        let bool_field =
            |key: &str, default: bool| json.get(key).and_then(Value::as_bool).unwrap_or(default);
        let resample = match json.get("resample").and_then(Value::as_i64) {
            None => d.resample,
            Some(code) => Filter::from_pil_code(code).ok_or_else(|| {
                MediaError::Config(format!("resample {code} is not a PIL filter code"))
            })?,
        };
        let cfg = Self {
            min_pixels: pick("min_pixels", d.min_pixels),
            max_pixels: pick("max_pixels", d.max_pixels),
            patch_size: field_usize(json, "patch_size").unwrap_or(d.patch_size),
            temporal_patch_size: field_usize(json, "temporal_patch_size")
                .unwrap_or(d.temporal_patch_size),
            merge_size: field_usize(json, "merge_size").unwrap_or(d.merge_size),
            image_mean: field_triple(json, "image_mean")?.unwrap_or(d.image_mean),
            image_std: field_triple(json, "image_std")?.unwrap_or(d.image_std),
            rescale_factor: json
                .get("rescale_factor")
                .and_then(Value::as_f64)
                .unwrap_or(d.rescale_factor),
            do_rescale: bool_field("do_rescale", true),
            do_normalize: bool_field("do_normalize", true),
            do_resize: bool_field("do_resize", true),
            resample,
            pass_order: d.pass_order,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Read `preprocessor_config.json`.
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| MediaError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| MediaError::Config(format!("{}: {e}", path.display())))?;
        Self::from_value(&json).map_err(|e| MediaError::Config(format!("{}: {e}", path.display())))
    }

    pub fn validate(&self) -> Result<()> {
        if self.patch_size == 0 || self.temporal_patch_size == 0 || self.merge_size == 0 {
            return Err(MediaError::Config(
                "patch_size, temporal_patch_size and merge_size must be positive".into(),
            ));
        }
        if self.min_pixels > self.max_pixels {
            return Err(MediaError::Config(format!(
                "min_pixels {} exceeds max_pixels {}",
                self.min_pixels, self.max_pixels
            )));
        }
        if self.image_std.contains(&0.0) {
            return Err(MediaError::Config("image_std has a zero".into()));
        }
        Ok(())
    }

    /// The resize factor: `patch_size · merge_size` (28).
    pub fn factor(&self) -> usize {
        self.patch_size * self.merge_size
    }

    /// Values per patch row: `3 · temporal_patch_size · patch_size²` (1176).
    pub fn patch_dim(&self) -> usize {
        3 * self.temporal_patch_size * self.patch_size * self.patch_size
    }
}

/// transformers 4.46 `smart_resize` → `(height, width)`, multiples of `factor` with
/// `min_pixels ≤ h·w ≤ max_pixels` (Python `round` is half-to-even).
pub fn smart_resize(
    height: usize,
    width: usize,
    factor: usize,
    min_pixels: usize,
    max_pixels: usize,
) -> Result<(usize, usize)> {
    if height < factor || width < factor {
        return Err(MediaError::InvalidImage(format!(
            "height {height} or width {width} is smaller than the factor {factor} \
             (Qwen2-VL's smart_resize refuses it)"
        )));
    }
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    if h.max(w) / h.min(w) > 200.0 {
        return Err(MediaError::InvalidImage(format!(
            "aspect ratio of {width}x{height} exceeds 200"
        )));
    }
    let mut h_bar = (h / f).round_ties_even() * f;
    let mut w_bar = (w / f).round_ties_even() * f;
    if h_bar * w_bar > max_pixels as f64 {
        let beta = (h * w / max_pixels as f64).sqrt();
        h_bar = (h / beta / f).floor() * f;
        w_bar = (w / beta / f).floor() * f;
    } else if h_bar * w_bar < min_pixels as f64 {
        let beta = (min_pixels as f64 / (h * w)).sqrt();
        h_bar = (h * beta / f).ceil() * f;
        w_bar = (w * beta / f).ceil() * f;
    }
    if h_bar < f || w_bar < f {
        return Err(MediaError::InvalidImage(format!(
            "{width}x{height} cannot fit max_pixels {max_pixels} with factor {factor}"
        )));
    }
    Ok((h_bar as usize, w_bar as usize))
}

/// Pillow 13.0.0's pass order for this resize (see [`crate::resize::pillow13_order`]).
pub fn pillow13_pass_order(input: (usize, usize), output: (usize, usize)) -> PassOrder {
    crate::resize::pillow13_order(input, output)
}

/// `qwen-vl-utils` `smart_nframes` for the `fps` rule: `total / video_fps · fps`, clamped to
/// `[ceil_even(4), floor_even(min(768, total))]`, then rounded (half-to-even) to a multiple
/// of 2. Errors when the result is outside `[2, total]` (as the reference).
pub fn smart_nframes(total_frames: usize, video_fps: f64, fps: f64) -> Result<usize> {
    let positive = |x: f64| x.is_finite() && x > 0.0;
    if total_frames == 0 || !positive(video_fps) || !positive(fps) {
        return Err(MediaError::InvalidImage(format!(
            "cannot sample a video of {total_frames} frames at {video_fps} fps with fps {fps}"
        )));
    }
    let factor = FRAME_FACTOR as f64;
    let min_frames = (FPS_MIN_FRAMES as f64 / factor).ceil() * factor;
    let max_frames = (FPS_MAX_FRAMES.min(total_frames) as f64 / factor).floor() * factor;
    let n = total_frames as f64 / video_fps * fps;
    let n = n.max(min_frames).min(max_frames);
    let n = ((n / factor).round_ties_even() * factor) as usize;
    if n < FRAME_FACTOR || n > total_frames {
        return Err(MediaError::InvalidImage(format!(
            "nframes {n} is outside [{FRAME_FACTOR}, {total_frames}] (a video of \
             {total_frames} frames is too short for Qwen2-VL's sampling)"
        )));
    }
    Ok(n)
}

/// `torch.linspace(start, end, steps)` in float32 (the CPU kernel's symmetric form: the
/// first half counts up from `start`, the second half down from `end`), then
/// `.round()` (half-to-even) as indices.
pub fn linspace_round_f32(start: usize, end: usize, steps: usize) -> Vec<usize> {
    if steps == 0 {
        return Vec::new();
    }
    if steps == 1 {
        return vec![start];
    }
    let (s, e) = (start as f32, end as f32);
    let step = (e - s) / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps)
        .map(|i| {
            let v = if i < half {
                s + step * i as f32
            } else {
                e - step * (steps - i - 1) as f32
            };
            v.round_ties_even().max(0.0) as usize
        })
        .collect()
}

/// The frame indices `qwen-vl-utils` reads from a video of `total_frames` at `video_fps`.
pub fn sample_video_indices(total_frames: usize, video_fps: f64, fps: f64) -> Result<Vec<usize>> {
    let n = smart_nframes(total_frames, video_fps, fps)?;
    Ok(linspace_round_f32(0, total_frames - 1, n))
}

/// Pre-processed frames before patchifying: `[frames, 3, height, width]` f32 (CHW per frame),
/// `frames` already a multiple of `temporal_patch_size`.
#[derive(Debug, Clone, PartialEq)]
pub struct Qwen2VlFrames {
    pub frames: usize,
    pub height: usize,
    pub width: usize,
    pub data: Vec<f32>,
}

impl Qwen2VlFrames {
    pub fn shape(&self) -> [usize; 4] {
        [self.frames, 3, self.height, self.width]
    }
}

/// Flattened patches as the model takes them.
#[derive(Debug, Clone, PartialEq)]
pub struct Qwen2VlPatches {
    /// `[gt·gh·gw, C·tp·p·p]` row-major.
    pub data: Vec<f32>,
    pub rows: usize,
    pub cols: usize,
    /// `(grid_t, grid_h, grid_w)` in patches.
    pub grid_thw: [usize; 3],
}

impl Qwen2VlProcessorConfig {
    /// Resize (if on), rescale and normalise `images` (all of one size: one image, or the frames
    /// of one video) and pad the count to a multiple of `temporal_patch_size` with copies of
    /// the last frame.
    pub fn preprocess(&self, images: &[RgbImage]) -> Result<Qwen2VlFrames> {
        let first = images
            .first()
            .ok_or_else(|| MediaError::InvalidImage("no frames to preprocess".into()))?;
        let (h0, w0) = (first.height as usize, first.width as usize);
        if images
            .iter()
            .any(|im| im.height as usize != h0 || im.width as usize != w0)
        {
            return Err(MediaError::InvalidImage(
                "the frames of one video must share one size".into(),
            ));
        }
        let (h, w) = if self.do_resize {
            smart_resize(h0, w0, self.factor(), self.min_pixels, self.max_pixels)?
        } else {
            (h0, w0)
        };
        if h % self.factor() != 0 || w % self.factor() != 0 {
            return Err(MediaError::InvalidImage(format!(
                "{w}x{h} is not a multiple of {} (do_resize is off)",
                self.factor()
            )));
        }
        let luts = self.luts();
        let plane = h * w;
        let tp = self.temporal_patch_size;
        let frames = images.len().div_ceil(tp) * tp;
        let mut data = Vec::with_capacity(frames * 3 * plane);
        for im in images {
            im.validate()?;
            let resized;
            let src = if (h, w) == (h0, w0) {
                im
            } else {
                let order = self
                    .pass_order
                    .unwrap_or_else(|| pillow13_pass_order((w0, h0), (w, h)));
                resized = resize_with_order(im, w as u32, h as u32, self.resample, order)?;
                &resized
            };
            for (c, lut) in luts.iter().enumerate() {
                data.extend(src.data.chunks_exact(3).map(|px| lut[px[c] as usize]));
            }
        }
        // Padding: copies of the last processed frame.
        let frame_len = 3 * plane;
        let last = data[data.len() - frame_len..].to_vec();
        for _ in images.len()..frames {
            data.extend_from_slice(&last);
        }
        Ok(Qwen2VlFrames {
            frames,
            height: h,
            width: w,
            data,
        })
    }

    /// Per channel: u8 → `(x as f64 · rescale_factor) as f32`, then `(x − mean) / std` in f32.
    fn luts(&self) -> [Vec<f32>; 3] {
        std::array::from_fn(|c| {
            let mean = self.image_mean[c] as f32;
            let std = self.image_std[c] as f32;
            (0..=255u8)
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
                .collect()
        })
    }

    /// Flatten `[T, 3, H, W]` frames into patch rows (module docs).
    pub fn patchify(&self, frames: &Qwen2VlFrames) -> Result<Qwen2VlPatches> {
        patchify(
            &frames.data,
            frames.shape(),
            self.temporal_patch_size,
            self.patch_size,
            self.merge_size,
        )
    }
}

/// Flatten `data` `[T, C, H, W]` into `[gt·gh·gw, C·tp·p·p]` rows (module docs). `T` must
/// be a multiple of `tp`, `H` and `W` multiples of `p·m`.
pub fn patchify(
    data: &[f32],
    [t, c, h, w]: [usize; 4],
    tp: usize,
    p: usize,
    m: usize,
) -> Result<Qwen2VlPatches> {
    if data.len() != t * c * h * w {
        return Err(MediaError::InvalidImage(format!(
            "{} values for frames of shape [{t}, {c}, {h}, {w}]",
            data.len()
        )));
    }
    if tp == 0 || p == 0 || m == 0 || t % tp != 0 || h % (p * m) != 0 || w % (p * m) != 0 {
        return Err(MediaError::InvalidImage(format!(
            "frames [{t}, {c}, {h}, {w}] do not tile into temporal {tp} × patch {p} × merge {m}"
        )));
    }
    let (gt, gh, gw) = (t / tp, h / p, w / p);
    let cols = c * tp * p * p;
    let rows = gt * gh * gw;
    let mut out = Vec::with_capacity(rows * cols);
    for it in 0..gt {
        for bh in 0..gh / m {
            for bw in 0..gw / m {
                for ih in 0..m {
                    for iw in 0..m {
                        let (ph, pw) = (bh * m + ih, bw * m + iw);
                        for ch in 0..c {
                            for k in 0..tp {
                                let frame = it * tp + k;
                                for y in 0..p {
                                    let row = ((frame * c + ch) * h + ph * p + y) * w + pw * p;
                                    out.extend_from_slice(&data[row..row + p]);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(Qwen2VlPatches {
        data: out,
        rows,
        cols,
        grid_thw: [gt, gh, gw],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_resize_matches_the_fixture_and_the_spec() {
        // Fixture: video 96×160 → 84×168, image 70×100 → 56×112 (2.5 rounds to 2).
        assert_eq!(smart_resize(96, 160, 28, 3136, 18816).unwrap(), (84, 168));
        assert_eq!(smart_resize(70, 100, 28, 3136, 18816).unwrap(), (56, 112));
        // Spec §7.B: 224×224 stays with min 3136; qwen-vl-utils' video minimum upscales it.
        assert_eq!(
            smart_resize(224, 224, 28, 3136, 12845056).unwrap(),
            (224, 224)
        );
        assert_eq!(
            smart_resize(224, 224, 28, 128 * 28 * 28, 768 * 28 * 28).unwrap(),
            (336, 336)
        );
        // Over the budget: floor after scaling.
        let (h, w) = smart_resize(1080, 1920, 28, 3136, 18816).unwrap();
        assert!(h * w <= 18816 && h % 28 == 0 && w % 28 == 0, "{h}x{w}");
        assert!(smart_resize(20, 100, 28, 3136, 18816).is_err());
        assert!(smart_resize(28, 28 * 201, 28, 3136, usize::MAX).is_err());
    }

    #[test]
    fn frame_sampling_follows_qwen_vl_utils() {
        // Fixture: 42 frames at 12 fps → 7 → 8 (3.5 rounds to 4).
        assert_eq!(
            sample_video_indices(42, 12.0, FPS).unwrap(),
            vec![0, 6, 12, 18, 23, 29, 35, 41]
        );
        // Spec appendix A: 300 frames at 30 fps → 20 frames.
        assert_eq!(
            sample_video_indices(300, 30.0, FPS).unwrap(),
            vec![
                0, 16, 31, 47, 63, 79, 94, 110, 126, 142, 157, 173, 189, 205, 220, 236, 252, 268,
                283, 299
            ]
        );
        // Short videos take the 4-frame minimum, capped by the even frame count.
        assert_eq!(smart_nframes(10, 30.0, FPS).unwrap(), 4);
        assert_eq!(smart_nframes(3, 30.0, FPS).unwrap(), 2);
        assert!(smart_nframes(1, 30.0, FPS).is_err());
        assert!(smart_nframes(0, 30.0, FPS).is_err());
    }

    /// Patch rows against a direct reading of the spec's index formula.
    #[test]
    fn patchify_follows_the_block_order() {
        let (t, c, h, w, tp, p, m) = (4usize, 3usize, 8usize, 12usize, 2usize, 2usize, 2usize);
        let data: Vec<f32> = (0..t * c * h * w).map(|i| i as f32).collect();
        let out = patchify(&data, [t, c, h, w], tp, p, m).unwrap();
        let (gt, gh, gw) = (t / tp, h / p, w / p);
        assert_eq!(out.grid_thw, [gt, gh, gw]);
        assert_eq!((out.rows, out.cols), (gt * gh * gw, c * tp * p * p));
        for r in 0..out.rows {
            let it = r / (gh * gw);
            let rest = r % (gh * gw);
            let block = rest / (m * m);
            let (bh, bw) = (block / (gw / m), block % (gw / m));
            let (ih, iw) = ((rest % (m * m)) / m, rest % m);
            for col in 0..out.cols {
                let ch = col / (tp * p * p);
                let k = (col / (p * p)) % tp;
                let (y, x) = ((col / p) % p, col % p);
                let (yy, xx) = ((bh * m + ih) * p + y, (bw * m + iw) * p + x);
                let want = data[(((it * tp + k) * c + ch) * h + yy) * w + xx];
                assert_eq!(out.data[r * out.cols + col], want, "row {r} col {col}");
            }
        }
    }

    #[test]
    fn odd_frame_counts_repeat_the_last_frame() {
        let cfg = Qwen2VlProcessorConfig {
            min_pixels: 28 * 28,
            max_pixels: 28 * 28 * 4,
            ..Default::default()
        };
        let frames: Vec<RgbImage> = (0..3u8)
            .map(|i| RgbImage::filled(56, 28, [i * 40, 10, 200]))
            .collect();
        let out = cfg.preprocess(&frames).unwrap();
        assert_eq!(out.shape(), [4, 3, 28, 56]);
        let n = 3 * 28 * 56;
        assert_eq!(out.data[2 * n..3 * n], out.data[3 * n..4 * n]);
        assert_ne!(out.data[n..2 * n], out.data[2 * n..3 * n]);
        let one = cfg.preprocess(&frames[..1]).unwrap();
        assert_eq!(one.frames, 2);
    }
}
