//! Qwen2-VL media → model inputs, as the fixture's generator (the `qwen-vl-utils` rules) and
//! `Qwen2VLImageProcessor` prepare them (see `videollama_media::qwen2_vl`).
//!
//! ```text
//! video ─FFmpeg: frame count N, avg fps─► [start, end] frame range (--start/--end: ceil(s·fps),
//!       floor(e·fps)) ─smart_nframes (fps 2)─► n ─round(linspace_f32(start, end, n))─► indices
//!       ─decode RGB (native size)─► processor ─► frames [T', 3, H, W] (T' even)
//! image ─► RGB ─► processor ─► [2, 3, H, W] (two identical temporal copies)
//! ```
//! The frames stay unflattened in `MediaInput`; `encode_visual` patchifies them, so the grid
//! `(T'/tp, H/p, W/p)` travels with the tensor's shape, and in `MediaInput::patch_grid`, which
//! encoder-cache entries keep when they drop the pixels (the M-RoPE ids need it).

use super::Qwen2VlParts;
use crate::error::{PipelineError, Result};
use crate::media::{MediaReport, MediaRequest};
use crate::MediaInput;
use candle_core::{Device, Tensor};
use std::time::Instant;
use videollama_media::decode::VideoReader;
use videollama_media::qwen2_vl::{linspace_round_f32, smart_nframes, Qwen2VlFrames, FPS};
use videollama_media::RgbImage;

/// The frame range and indices for a video of `total` frames at `fps` with optional clip
/// bounds in seconds (qwen-vl-utils `video_start` / `video_end`).
pub fn sampled_indices(
    total: usize,
    fps: f64,
    start_s: Option<f64>,
    end_s: Option<f64>,
) -> Result<Vec<usize>> {
    if total == 0 {
        return Err(PipelineError::Invalid("the video has no frames".into()));
    }
    let first = match start_s {
        Some(s) if s > 0.0 => ((s * fps).ceil() as usize).min(total - 1),
        _ => 0,
    };
    let last = match end_s {
        Some(e) if e >= 0.0 => ((e * fps).floor() as usize).min(total - 1),
        _ => total - 1,
    };
    if last < first {
        return Err(PipelineError::Invalid(format!(
            "--start/--end select no frame (frames {first}..{last} of {total})"
        )));
    }
    let n = smart_nframes(last - first + 1, fps, FPS)
        .map_err(|e| PipelineError::Invalid(e.to_string()))?;
    Ok(linspace_round_f32(first, last, n))
}

fn frames_tensor(parts: &Qwen2VlParts, images: &[RgbImage]) -> Result<(Tensor, [usize; 3])> {
    let Qwen2VlFrames {
        frames,
        height,
        width,
        data,
    } = parts
        .processor
        .preprocess(images)
        .map_err(|e| PipelineError::Invalid(e.to_string()))?;
    let p = parts.processor.patch_size;
    let grid = [
        frames / parts.processor.temporal_patch_size,
        height / p,
        width / p,
    ];
    Ok((
        Tensor::from_vec(data, (frames, 3, height, width), &Device::Cpu)?,
        grid,
    ))
}

/// Decode and preprocess a request for a Qwen2-VL model.
pub fn prepare(parts: &Qwen2VlParts, req: &MediaRequest) -> Result<(MediaInput, MediaReport)> {
    let start = Instant::now();
    let mut report = MediaReport::default();
    if req.video.is_some() && req.image.is_some() {
        return Err(PipelineError::Invalid(
            "give either a video or an image, not both".into(),
        ));
    }
    if req.audio.is_some() {
        return Err(PipelineError::Invalid(
            "Qwen2-VL does not listen to sound".into(),
        ));
    }
    let mut input = MediaInput::none();
    if let Some(path) = &req.image {
        if !path.is_file() {
            return Err(PipelineError::file(path, "no such file"));
        }
        let img = videollama_media::image_file::load_image(path)
            .map_err(|e| PipelineError::Invalid(e.to_string()))?;
        let (px, grid) =
            frames_tensor(parts, std::slice::from_ref(&img)).map_err(|e| in_file(path, e))?;
        input = MediaInput::image(px);
        input.patch_grid = Some(grid);
    }
    if let Some(path) = &req.video {
        if !path.is_file() {
            return Err(PipelineError::file(
                path,
                "no such video file (Qwen2-VL reads video files, not folders of frames)",
            ));
        }
        let reader = VideoReader::open(path).map_err(|e| PipelineError::Invalid(e.to_string()))?;
        let info = reader.info().clone();
        let indices = sampled_indices(info.frame_count, info.avg_fps, req.start_s, req.end_s)
            .map_err(|e| in_file(path, e))?;
        let frames = reader
            .decode(&indices)
            .map_err(|e| PipelineError::Invalid(e.to_string()))?;
        let (px, grid) = frames_tensor(parts, &frames).map_err(|e| in_file(path, e))?;
        input = MediaInput::video(px);
        input.patch_grid = Some(grid);
        report.video_frame_count = Some(info.frame_count);
        report.video_fps = Some(info.avg_fps);
        if info.avg_fps > 0.0 {
            report.frame_timestamps_s = indices.iter().map(|&i| i as f64 / info.avg_fps).collect();
        }
        report.frame_indices = indices;
    }
    report.preprocess_s = start.elapsed().as_secs_f64();
    Ok((input, report))
}

fn in_file(path: &std::path::Path, e: PipelineError) -> PipelineError {
    match e {
        PipelineError::Invalid(m) => PipelineError::file(path, m),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_and_clip_bounds() {
        assert_eq!(
            sampled_indices(42, 12.0, None, None).unwrap(),
            vec![0, 6, 12, 18, 23, 29, 35, 41]
        );
        // 1 s … 3 s of a 12 fps clip: frames 12..=36 (25 frames → 25/12·2 = 4.17 → 4).
        assert_eq!(
            sampled_indices(42, 12.0, Some(1.0), Some(3.0)).unwrap(),
            vec![12, 20, 28, 36]
        );
        assert!(sampled_indices(42, 12.0, Some(3.0), Some(1.0)).is_err());
        assert!(sampled_indices(0, 12.0, None, None).is_err());
    }
}
