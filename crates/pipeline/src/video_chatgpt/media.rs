//! Video-ChatGPT's media → model inputs, as `eval/model_utils.py` `load_video` and
//! `inference.py` prepare them.
//!
//! ```text
//! video ─decord frame count─► n = min(total, num_frames) ─get_seq_frames─► indices
//!       ─decode (decord-exact RGB)─► [n, H, W, 3] u8
//!       ─if not S×S: torch interpolate(size=(S,S)) mode nearest, back to u8 (aspect ignored)
//!       ─CLIPImageProcessor (shortest side S bicubic — a no-op on S×S —, centre crop S,
//!        /255, CLIP mean/std)─► pixel_values [n, 3, S, S]
//! ```
//!
//! `get_seq_frames(total, n)`: `seg = (total − 1) / n`, frame i = `(round(seg·i) +
//! round(seg·(i+1))) // 2` with numpy's round-half-to-even. With fewer frames than
//! `num_frames`, n = total and the formula still runs: it repeats one frame and drops the
//! last (8 frames → 0,1,2,3,4,4,5,6), as the reference does. S is the tower's input size
//! (224 for CLIP ViT-L/14). There is no image path: the reference only takes videos.

use super::VideoChatGptParts;
use crate::error::{PipelineError, Result};
use crate::media::{MediaReport, MediaRequest};
use crate::MediaInput;
use candle_core::{Device, Tensor};
use std::time::Instant;
use videollama_media::decode::VideoReader;
use videollama_media::RgbImage;

/// `get_seq_frames(total, desired)` of the reference.
pub fn seq_frame_indices(total: usize, desired: usize) -> Vec<usize> {
    if desired == 0 {
        return Vec::new();
    }
    let seg = total.saturating_sub(1) as f64 / desired as f64;
    (0..desired)
        .map(|i| {
            let start = (seg * i as f64).round_ties_even() as usize;
            let end = (seg * (i + 1) as f64).round_ties_even() as usize;
            (start + end) / 2
        })
        .collect()
}

/// The indices `load_video` decodes for a video of `total` frames.
pub fn sampled_indices(total: usize, num_frames: usize) -> Vec<usize> {
    seq_frame_indices(total, total.min(num_frames))
}

/// PyTorch's source index for `F.interpolate(mode="nearest")` without a scale factor:
/// identity at the same size, `i >> 1` at twice the size, else
/// `min(floor(i · (in/out as f32)), in − 1)` in f32.
fn nearest_source(i: usize, input: usize, output: usize) -> usize {
    if input == output {
        i
    } else if output == 2 * input {
        i >> 1
    } else {
        let scale = input as f32 / output as f32;
        ((i as f32 * scale).floor() as usize).min(input - 1)
    }
}

/// `torch.nn.functional.interpolate(frames, size=(h, w))` (nearest) on one u8 frame.
pub fn resize_nearest(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (iw, ih) = (img.width as usize, img.height as usize);
    let (ow, oh) = (width as usize, height as usize);
    let xs: Vec<usize> = (0..ow).map(|x| nearest_source(x, iw, ow)).collect();
    let mut data = Vec::with_capacity(ow * oh * 3);
    for y in 0..oh {
        let sy = nearest_source(y, ih, oh);
        for &sx in &xs {
            let o = (sy * iw + sx) * 3;
            data.extend_from_slice(&img.data[o..o + 3]);
        }
    }
    RgbImage {
        width,
        height,
        data,
    }
}

/// Frames (as decord returned them) → `pixel_values [n, 3, S, S]`.
pub fn frames_to_pixels(parts: &VideoChatGptParts, frames: &[RgbImage]) -> Result<Tensor> {
    let size = parts.image_size() as u32;
    let resized: Vec<RgbImage> = frames
        .iter()
        .map(|f| {
            if f.width == size && f.height == size {
                f.clone()
            } else {
                resize_nearest(f, size, size)
            }
        })
        .collect();
    let px = parts
        .processor
        .preprocess_batch(&resized)
        .map_err(|e| PipelineError::Invalid(e.to_string()))?;
    let shape = px.shape();
    Ok(Tensor::from_vec(px.data, shape.to_vec(), &Device::Cpu)?)
}

/// Decode and preprocess a request for a Video-ChatGPT model.
pub fn prepare(parts: &VideoChatGptParts, req: &MediaRequest) -> Result<(MediaInput, MediaReport)> {
    let start = Instant::now();
    let mut report = MediaReport::default();
    if let Some(image) = &req.image {
        return Err(PipelineError::file(
            image,
            "Video-ChatGPT answers about videos only (its reference has no image path); give --video",
        ));
    }
    if req.audio.is_some() {
        return Err(PipelineError::Invalid(
            "Video-ChatGPT does not listen to sound".into(),
        ));
    }
    if req.start_s.is_some() || req.end_s.is_some() {
        return Err(PipelineError::Invalid(
            "--start/--end: Video-ChatGPT samples the whole video, as its reference does".into(),
        ));
    }
    let Some(path) = &req.video else {
        report.preprocess_s = start.elapsed().as_secs_f64();
        return Ok((MediaInput::none(), report));
    };
    if !path.is_file() {
        return Err(PipelineError::file(
            path,
            "no such video file (Video-ChatGPT reads video files, not folders of frames)",
        ));
    }
    let reader = VideoReader::open(path).map_err(|e| PipelineError::Invalid(e.to_string()))?;
    let info = reader.info().clone();
    if info.frame_count == 0 {
        return Err(PipelineError::file(path, "the video has no frames"));
    }
    let indices = sampled_indices(info.frame_count, parts.options.num_frames);
    let frames = reader
        .decode(&indices)
        .map_err(|e| PipelineError::Invalid(e.to_string()))?;
    let pixels = frames_to_pixels(parts, &frames)?;
    report.video_frame_count = Some(info.frame_count);
    report.video_fps = Some(info.avg_fps);
    if info.avg_fps > 0.0 {
        report.frame_timestamps_s = indices.iter().map(|&i| i as f64 / info.avg_fps).collect();
    }
    report.frame_indices = indices;
    report.preprocess_s = start.elapsed().as_secs_f64();
    Ok((MediaInput::video(pixels), report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_indices_follow_get_seq_frames() {
        assert_eq!(sampled_indices(8, 100), vec![0, 1, 2, 3, 4, 4, 5, 6]);
        let i300 = sampled_indices(300, 100);
        assert_eq!(&i300[..4], &[1, 4, 7, 10]);
        assert_eq!(&i300[97..], &[291, 294, 297]);
        let i42 = sampled_indices(42, 100);
        assert_eq!(i42.len(), 42);
        assert_eq!(i42.iter().filter(|&&i| i == 20).count(), 2);
        assert!(!i42.contains(&41));
        // The golden clip: 120 frames, 20 skipped.
        let i120 = sampled_indices(120, 100);
        assert_eq!(&i120[..6], &[0, 1, 3, 4, 5, 6]);
        assert_eq!(*i120.last().unwrap(), 118);
        assert_eq!(sampled_indices(1, 100), vec![0]);
    }

    #[test]
    fn nearest_matches_torch_index_rule() {
        // 96 → 56: scale 1.7142857 (f32).
        let src: Vec<usize> = (0..56).map(|i| nearest_source(i, 96, 56)).collect();
        assert_eq!(&src[..5], &[0, 1, 3, 5, 6]);
        assert_eq!(src[55], 94);
        assert_eq!(nearest_source(3, 4, 8), 1);
        assert_eq!(nearest_source(7, 56, 56), 7);
        let img = RgbImage {
            width: 2,
            height: 1,
            data: vec![1, 2, 3, 4, 5, 6],
        };
        let up = resize_nearest(&img, 4, 2);
        assert_eq!(up.data[..12], [1, 2, 3, 1, 2, 3, 4, 5, 6, 4, 5, 6]);
    }
}
