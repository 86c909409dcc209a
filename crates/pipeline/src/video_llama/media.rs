//! Video-LLaMA's media → model inputs, as the demo's `Chat.upload_*` prepare them.
//!
//! ```text
//! video ─► decord-style decode, resized to 224×224 by the scaler ─► 8 indices
//!       (`arange(0, n, n/8)` truncated) ─► /255, CLIP mean/std ─► [8,3,224,224]
//!       └─► timestamps `round(idx/fps, 1)` for the prompt's frame message
//!       └─► its sound (when the model has the audio branch) ─► like an audio file
//! image ─► PIL bicubic 224×224 ─► CLIP mean/std ─► [1,3,224,224] (a 1-frame video)
//! audio ─► all channels ─► torchaudio sinc resample 16 kHz ─► 8 clips of 2 s
//!       ─► in-place mean quirk ─► Kaldi fbank 128 × 204 ─► normalise ─► [8,1,128,204]
//! ```
//! The pixel and sound work is in `videollama_media::video_llama`; this file picks what the
//! request asks for and reports it.

use super::VideoLlamaParts;
use crate::error::{PipelineError, Result};
use crate::media::{MediaReport, MediaRequest};
use crate::{MediaInput, Visual};
use candle_core::{Device, Tensor};
use std::time::Instant;
use videollama_media::imagebind_audio::ImageBindAudioConfig;
use videollama_media::video_llama as vm;

fn media_err(e: videollama_media::MediaError) -> PipelineError {
    PipelineError::Invalid(e.to_string())
}

fn mel_tensor(parts: &VideoLlamaParts, path: &std::path::Path) -> Result<Tensor> {
    let mut cfg = ImageBindAudioConfig::default();
    if let Some(a) = &parts.audio {
        // `clips_per_video=8` in the demo = the rows of the audio position table.
        cfg.clips_per_video = a.aggregator.max_positions();
    }
    let audio = vm::audio_mel(path, &cfg).map_err(media_err)?;
    let shape = audio.shape();
    Ok(Tensor::from_vec(audio.mel, shape.to_vec(), &Device::Cpu)?)
}

/// Decode and preprocess a request for a Video-LLaMA model.
pub fn prepare(parts: &VideoLlamaParts, req: &MediaRequest) -> Result<(MediaInput, MediaReport)> {
    let start = Instant::now();
    let mut report = MediaReport::default();
    if req.video.is_some() && req.image.is_some() {
        return Err(PipelineError::Invalid(
            "give either a video or an image, not both".into(),
        ));
    }
    if req.start_s.is_some() || req.end_s.is_some() {
        return Err(PipelineError::Invalid(
            "--start/--end: Video-LLaMA samples the whole video (8 frames, as its demo)".into(),
        ));
    }
    if req.audio.is_some() && parts.audio.is_none() {
        return Err(PipelineError::Invalid(
            "this Video-LLaMA model has no audio branch (equip_audio_branch: false)".into(),
        ));
    }
    let size = parts.image_size() as u32;
    let mut input = MediaInput::none();
    if let Some(path) = &req.image {
        if !path.is_file() {
            return Err(PipelineError::file(path, "no such file"));
        }
        let px = vm::load_image(path, size).map_err(media_err)?;
        input = MediaInput::image(Tensor::from_vec(
            px,
            (1, 3, size as usize, size as usize),
            &Device::Cpu,
        )?);
    }
    if let Some(path) = &req.video {
        if !path.exists() {
            return Err(PipelineError::file(path, "no such file"));
        }
        let frames =
            vm::load_video_frames(path, parts.frames_per_video(), size).map_err(media_err)?;
        let shape = frames.shape();
        report.video_frame_count = Some(frames.total_frames);
        report.video_fps = Some(frames.fps);
        report.frame_timestamps_s = frames
            .indices
            .iter()
            .map(|&i| i as f64 / frames.fps)
            .collect();
        report.frame_indices = frames.indices.clone();
        input = MediaInput::video(Tensor::from_vec(
            frames.pixels,
            shape.to_vec(),
            &Device::Cpu,
        )?);
        input.frame_timestamps = frames.timestamps;
        // `Chat.upload_video` listens when the model has the audio branch (the demo's audio
        // switch; `--no-audio` = `upload_video_without_audio`).
        let want_audio = req.use_video_audio.unwrap_or(parts.audio.is_some());
        if want_audio && req.audio.is_none() {
            if parts.audio.is_none() {
                return Err(PipelineError::Invalid(
                    "this Video-LLaMA model has no audio branch; it cannot use the video's sound"
                        .into(),
                ));
            }
            match mel_tensor(parts, path) {
                Ok(mel) => {
                    input.audio_fbank = Some(mel);
                    report.audio_source = Some("video".into());
                }
                // The reference catches any failure here ("no audio is found") and answers
                // about the picture alone; so do we, saying so.
                Err(e) => {
                    tracing::warn!(
                        "{}: no usable sound ({e}); answering about the picture only",
                        path.display()
                    );
                    report.audio_source = Some(format!("none ({e})"));
                }
            }
        }
    }
    if let Some(path) = &req.audio {
        if !path.is_file() {
            return Err(PipelineError::file(path, "no such file"));
        }
        input.audio_fbank = Some(mel_tensor(parts, path)?);
        report.audio_source = Some("file".into());
    }
    if matches!(input.visual, Some(Visual::Image(_))) && input.audio_fbank.is_some() {
        return Err(PipelineError::Invalid(
            "a sound can accompany a video or stand alone, not an image".into(),
        ));
    }
    report.preprocess_s = start.elapsed().as_secs_f64();
    Ok((input, report))
}
