//! Chat-UniVi's media → model inputs, as its eval scripts prepare them
//! (`model_video_qa.py` `_get_rawvideo_dec`, `model_vqa.py`).
//!
//! ```text
//! video ─decord: len, avg fps─► t_stride = round(fps / video_framerate) (Python round, ≥ 1)
//!       ─► positions range(f_start, f_end + 1, t_stride); more than max_frames:
//!          linspace(0, len − 1, max_frames) floored → indices
//!       ─decode (decord-exact RGB, native size)─► CLIPImageProcessor per frame ─► [T,3,S,S]
//! image ─► RGB ─► CLIPImageProcessor ─► [1,3,S,S]
//! ```
//!
//! `--start/--end` follow `_get_rawvideo_dec(s, e)`: both truncated to whole seconds, swapped
//! when reversed, `end = start + 1` when equal, `f_start = int(start·fps)`,
//! `f_end = int(min(end·fps, len − 1))`. Deviation: a frame rate below half the sampling
//! rate gives `t_stride = 0`, which the reference cannot `range` over; here it is 1.

use super::ChatUniViParts;
use crate::error::{PipelineError, Result};
use crate::media::{MediaReport, MediaRequest};
use crate::MediaInput;
use candle_core::{Device, Tensor};
use std::time::Instant;
use videollama_media::decode::VideoReader;
use videollama_media::RgbImage;

/// `np.linspace(0, n − 1, num, dtype=int)`: `i · step` (step = (n−1)/(num−1)), the last value
/// exactly n − 1, floored.
pub fn linspace_floor(n: usize, num: usize) -> Vec<usize> {
    if num == 0 {
        return Vec::new();
    }
    if num == 1 {
        return vec![0];
    }
    let stop = (n - 1) as f64;
    let step = stop / (num - 1) as f64;
    (0..num)
        .map(|i| {
            if i == num - 1 {
                n - 1
            } else {
                (i as f64 * step).floor() as usize
            }
        })
        .collect()
}

/// The frames `_get_rawvideo_dec` decodes: a video of `len` frames at `fps`, clip bounds in
/// seconds (`None`: the whole video).
pub fn sampled_indices(
    len: usize,
    fps: f64,
    bounds: Option<(f64, f64)>,
    video_framerate: usize,
    max_frames: usize,
) -> Result<Vec<usize>> {
    if len == 0 {
        return Err(PipelineError::Invalid("the video has no frames".into()));
    }
    let (f_start, f_end) = match bounds {
        None => (0usize, len - 1),
        Some((s, e)) => {
            let (mut start, mut end) = ((s as i64).max(0) as f64, (e as i64).max(0) as f64);
            if start > end {
                std::mem::swap(&mut start, &mut end);
            } else if start == end {
                end = start + 1.0;
            }
            let f_start = (start * fps) as usize;
            let f_end = (end * fps).min((len - 1) as f64) as usize;
            (f_start, f_end)
        }
    };
    if f_end < f_start {
        return Err(PipelineError::Invalid(format!(
            "--start/--end select no frame (frames {f_start}..{f_end} of {len})"
        )));
    }
    let stride = ((fps / video_framerate as f64).round_ties_even() as usize).max(1);
    let all: Vec<usize> = (f_start..=f_end).step_by(stride).collect();
    if all.len() > max_frames {
        Ok(linspace_floor(all.len(), max_frames)
            .into_iter()
            .map(|i| all[i])
            .collect())
    } else {
        Ok(all)
    }
}

fn to_pixels(parts: &ChatUniViParts, frames: &[RgbImage]) -> Result<Tensor> {
    let px = parts
        .processor
        .preprocess_batch(frames)
        .map_err(|e| PipelineError::Invalid(e.to_string()))?;
    let shape = px.shape();
    Ok(Tensor::from_vec(px.data, shape.to_vec(), &Device::Cpu)?)
}

/// Decode and preprocess a request for a Chat-UniVi model.
pub fn prepare(parts: &ChatUniViParts, req: &MediaRequest) -> Result<(MediaInput, MediaReport)> {
    let start = Instant::now();
    let mut report = MediaReport::default();
    if req.video.is_some() && req.image.is_some() {
        return Err(PipelineError::Invalid(
            "give either a video or an image, not both".into(),
        ));
    }
    if req.audio.is_some() {
        return Err(PipelineError::Invalid(
            "Chat-UniVi does not listen to sound".into(),
        ));
    }
    let mut input = MediaInput::none();
    if let Some(path) = &req.image {
        if !path.is_file() {
            return Err(PipelineError::file(path, "no such file"));
        }
        let img = videollama_media::image_file::load_image(path)
            .map_err(|e| PipelineError::Invalid(e.to_string()))?;
        input = MediaInput::image(to_pixels(parts, std::slice::from_ref(&img))?);
    }
    if let Some(path) = &req.video {
        if !path.is_file() {
            return Err(PipelineError::file(
                path,
                "no such video file (Chat-UniVi reads video files, not folders of frames)",
            ));
        }
        let reader = VideoReader::open(path).map_err(|e| PipelineError::Invalid(e.to_string()))?;
        let info = reader.info().clone();
        let bounds = match (req.start_s, req.end_s) {
            (None, None) => None,
            (s, e) => Some((s.unwrap_or(0.0), e.unwrap_or(f64::MAX / 4.0))),
        };
        let indices = sampled_indices(
            info.frame_count,
            info.avg_fps,
            bounds,
            parts.options.video_framerate,
            parts.options.max_frames,
        )
        .map_err(|e| match e {
            PipelineError::Invalid(m) => PipelineError::file(path, m),
            other => other,
        })?;
        let frames = reader
            .decode(&indices)
            .map_err(|e| PipelineError::Invalid(e.to_string()))?;
        input = MediaInput::video(to_pixels(parts, &frames)?);
        // Kept in encoder-cache entries, which drop the pixels: the prompt's `<image>` count.
        input.frame_timestamps = indices
            .iter()
            .map(|&i| format!("{:.1}", i as f64 / info.avg_fps.max(f64::MIN_POSITIVE)))
            .collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_follows_get_rawvideo_dec() {
        // The golden clip: 48 frames at 5 fps → every 5th frame.
        assert_eq!(
            sampled_indices(48, 5.0, None, 1, 64).unwrap(),
            vec![0, 5, 10, 15, 20, 25, 30, 35, 40, 45]
        );
        // 100 s at 30 fps, 64 frames max (the spec's example).
        let long = sampled_indices(3000, 30.0, None, 1, 64).unwrap();
        assert_eq!(long.len(), 64);
        assert_eq!(&long[..7], &[0, 30, 90, 120, 180, 210, 270]);
        assert_eq!(*long.last().unwrap(), 2970);
        // 29.97 fps rounds to a stride of 30; a clip.
        assert_eq!(
            sampled_indices(300, 29.97, Some((2.7, 4.2)), 1, 64).unwrap(),
            vec![59, 89, 119]
        );
        assert_eq!(
            sampled_indices(300, 30.0, Some((3.0, 3.0)), 1, 64).unwrap(),
            vec![90, 120]
        );
        assert_eq!(sampled_indices(5, 0.2, None, 1, 64).unwrap().len(), 5);
        assert!(sampled_indices(0, 30.0, None, 1, 64).is_err());
        assert_eq!(linspace_floor(10, 4), vec![0, 3, 6, 9]);
    }
}
