//! MA-LMM's video input, as `demo.ipynb` + `blip2_video_eval` do it.
//!
//! ```text
//! decord frames [T, H, W, 3] u8 (indices rint(linspace(0, round(len/fps·fps) − 1, T)))
//!   → float C,T,H,W in 0…255 → F.interpolate(bicubic, align_corners=False, no antialias)
//!     to S×S (aspect ratio dropped) → .to(torch.uint8) (truncate, WRAP outside 0…255)
//!   → /255 → (x − mean) / std (CLIP)                       one [3, S, S] per frame
//! ```
//!
//! Each frame is processed on its own, so frames can be streamed into the model as they are
//! decoded.

use crate::error::{PipelineError, Result};

/// CLIP normalisation (`blip2_video_eval` defaults), written as the reference writes them.
#[allow(clippy::excessive_precision)]
pub const MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
#[allow(clippy::excessive_precision)]
pub const STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// The demo's `load_video` sampling of the whole video: `duration = n / fps`,
/// `rint(linspace(round(0·fps), round(duration·fps) − 1, T))` (round half to even).
pub fn sample_indices(num_video_frames: usize, avg_fps: f64, t: usize) -> Result<Vec<usize>> {
    sample_indices_between(num_video_frames, avg_fps, None, None, t)
}

/// `load_video(vr, start_time, end_time, fps, T)`: `rint(linspace(round(start·fps),
/// round(end·fps) − 1, T))`; `None` bounds are the demo's `0` and `n / fps`.
pub fn sample_indices_between(
    num_video_frames: usize,
    avg_fps: f64,
    start_s: Option<f64>,
    end_s: Option<f64>,
    t: usize,
) -> Result<Vec<usize>> {
    if num_video_frames == 0 || t == 0 {
        return Err(PipelineError::Invalid(format!(
            "cannot sample {t} frames from a {num_video_frames}-frame video"
        )));
    }
    let fps = if avg_fps.is_finite() && avg_fps > 0.0 {
        avg_fps
    } else {
        1.0
    };
    let duration = num_video_frames as f64 / fps;
    let (from, to) = (start_s.unwrap_or(0.0), end_s.unwrap_or(duration));
    let start = (from * fps).round_ties_even();
    let stop = (to * fps).round_ties_even() - 1.0;
    if !(start.is_finite() && stop.is_finite()) || start < 0.0 || stop < start {
        return Err(PipelineError::Invalid(format!(
            "the clip {from} s – {to} s holds no frame of this {duration:.3} s video"
        )));
    }
    let mut out = Vec::with_capacity(t);
    for i in 0..t {
        // numpy linspace: start + i·step, the last exactly `stop`.
        let v = if t == 1 {
            start
        } else if i == t - 1 {
            stop
        } else {
            start + i as f64 * ((stop - start) / (t - 1) as f64)
        };
        let idx = v.round_ties_even().max(0.0) as usize;
        out.push(idx.min(num_video_frames - 1));
    }
    Ok(out)
}

/// `F.interpolate(x, (oh, ow), mode="bicubic", align_corners=False)` of one float plane
/// `[h, w]`, bit for bit as torch 2.5 computes it (shared with EVA ViT's position-table
/// interpolation: `videollama_nn::torch_resize`).
pub use videollama_nn::torch_resize::bicubic_plane as resize_bicubic_plane;

/// `tensor.to(torch.uint8)` on x86: truncate toward zero to an integer, keep the low byte.
pub fn to_uint8_wrapping(x: f32) -> u8 {
    (x as i32) as u8
}

/// One decoded frame `[h, w, 3]` u8 → (`[3, s, s]` normalised pixels, `[3, s, s]` resized floats
/// before the uint8 cast).
pub fn preprocess_frame(rgb: &[u8], h: usize, w: usize, s: usize) -> Result<(Vec<f32>, Vec<f32>)> {
    if rgb.len() != h * w * 3 || h == 0 || w == 0 || s == 0 {
        return Err(PipelineError::Invalid(format!(
            "frame of {} bytes is not {h}×{w}×3",
            rgb.len()
        )));
    }
    let mut pixels = Vec::with_capacity(3 * s * s);
    let mut resized = Vec::with_capacity(3 * s * s);
    for c in 0..3 {
        let plane: Vec<f32> = (0..h * w).map(|i| rgb[i * 3 + c] as f32).collect();
        let r = resize_bicubic_plane(&plane, h, w, s, s);
        for &v in &r {
            let byte = to_uint8_wrapping(v) as f32;
            pixels.push((byte / 255.0 - MEAN[c]) / STD[c]);
        }
        resized.extend(r);
    }
    Ok((pixels, resized))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_sampling_and_uint8_wrap() {
        assert_eq!(
            sample_indices(36, 10.0, 8).unwrap(),
            vec![0, 5, 10, 15, 20, 25, 30, 35]
        );
        assert_eq!(to_uint8_wrapping(-1.5), 255);
        assert_eq!(to_uint8_wrapping(256.3), 0);
        assert_eq!(to_uint8_wrapping(300.0), 44);
        assert_eq!(to_uint8_wrapping(12.9), 12);
        assert_eq!(
            sample_indices_between(36, 10.0, Some(1.0), Some(2.0), 3).unwrap(),
            vec![10, 14, 19]
        );
        assert!(sample_indices_between(36, 10.0, Some(3.0), Some(1.0), 3).is_err());
    }
}
