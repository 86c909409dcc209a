//! MiniGPT4-Video's media → model inputs, as `minigpt4_video_inference.py` / `Chat` prepare
//! them.
//!
//! ```text
//! video ─► moviepy-style duration·fps ─► interval ─► OpenCV-style sequential decode,
//!          every interval-th frame, ≤ max_frames ─► PIL bicubic S×S ─► ImageNet mean/std
//!      └─► subtitles: --subtitles FILE | container stream | Whisper | none ─► cues
//!          ─► per decoded frame: cue at n/fps ─► "<Cap>" text after the kept frames
//! image ─► PIL bicubic S×S ─► ImageNet mean/std ─► [1,3,S,S]
//! ```

use super::MiniGpt4VideoParts;
use crate::error::{PipelineError, Result};
use crate::media::{MediaReport, MediaRequest, SubtitleChoice};
use crate::MediaInput;
use candle_core::{Device, Tensor};
use std::path::Path;
use std::time::Instant;
use videollama_media::minigpt4_video as mv;
use videollama_media::subtitles::{self, Cue};

fn media_err(e: videollama_media::MediaError) -> PipelineError {
    PipelineError::Invalid(e.to_string())
}

impl MiniGpt4VideoParts {
    fn media_config(&self) -> mv::MiniGpt4VideoMediaConfig {
        mv::MiniGpt4VideoMediaConfig {
            image_size: self.image_size() as u32,
            max_frames: self.max_frames,
            max_sub_len: self.max_sub_len,
            ..mv::MiniGpt4VideoMediaConfig::llama2()
        }
    }

    /// The cues of a video, from the request's choice; `report` says where they came from.
    fn cues(
        &self,
        video: &Path,
        choice: &SubtitleChoice,
        report: &mut MediaReport,
    ) -> Result<Vec<Cue>> {
        let (cues, source) = match choice {
            SubtitleChoice::None => (Vec::new(), "none".to_string()),
            SubtitleChoice::File(path) => {
                if !path.is_file() {
                    return Err(PipelineError::file(path, "subtitle file: no such file"));
                }
                let cues = subtitles::read_subtitle_file(path).map_err(media_err)?;
                (cues, format!("file {}", path.display()))
            }
            SubtitleChoice::Recognize => match self.transcribe(video)? {
                Some(cues) => (cues, "speech recognition".to_string()),
                None => {
                    return Err(PipelineError::file(
                        video,
                        "--subtitles auto: the video has no sound track to recognise",
                    ))
                }
            },
            SubtitleChoice::Default => {
                match subtitles::read_container_subtitles(video).map_err(media_err)? {
                    Some(cues) => (cues, "subtitle stream".to_string()),
                    None if self.whisper.is_some() => match self.transcribe(video)? {
                        Some(cues) => (cues, "speech recognition".to_string()),
                        None => (
                            Vec::new(),
                            "none (no subtitle stream, no sound track)".to_string(),
                        ),
                    },
                    None => (
                        Vec::new(),
                        "none (no subtitle stream, no Whisper model)".to_string(),
                    ),
                }
            }
        };
        report.subtitle_source = Some(source);
        report.subtitle_cues = Some(cues.len());
        Ok(cues)
    }
}

/// Decode and preprocess a request for a MiniGPT4-Video model.
pub fn prepare(
    parts: &MiniGpt4VideoParts,
    req: &MediaRequest,
) -> Result<(MediaInput, MediaReport)> {
    let start = Instant::now();
    let mut report = MediaReport::default();
    if req.video.is_some() && req.image.is_some() {
        return Err(PipelineError::Invalid(
            "give either a video or an image, not both".into(),
        ));
    }
    if req.audio.is_some() {
        return Err(PipelineError::Invalid(
            "MiniGPT4-Video does not listen to sound; its subtitles can come from a video's \
             speech (--subtitles auto)"
                .into(),
        ));
    }
    if req.start_s.is_some() || req.end_s.is_some() {
        return Err(PipelineError::Invalid(
            "--start/--end: MiniGPT4-Video samples the whole video, as its inference script".into(),
        ));
    }
    let cfg = parts.media_config();
    let size = cfg.image_size as usize;
    let mut input = MediaInput::none();
    if let Some(path) = &req.image {
        if !path.is_file() {
            return Err(PipelineError::file(path, "no such file"));
        }
        let px = mv::load_image(path, &cfg).map_err(media_err)?;
        input = MediaInput::image(Tensor::from_vec(px, (1, 3, size, size), &Device::Cpu)?);
    }
    if let Some(path) = &req.video {
        if !path.exists() {
            return Err(PipelineError::file(path, "no such file"));
        }
        let cues = parts.cues(path, &req.subtitles, &mut report)?;
        let frames = mv::load_video(path, &cfg).map_err(media_err)?;
        let schedule = subtitles::match_frames_and_subtitles(
            &cues,
            frames.frames_read,
            &frames.match_params(cfg.max_sub_len),
        )
        .map_err(media_err)?;
        report.video_frame_count = Some(frames.sampling.total_frames);
        report.video_fps = Some(frames.sampling.fps);
        report.frame_timestamps_s = frames
            .indices
            .iter()
            .map(|&i| i as f64 / frames.sampling.fps)
            .collect();
        report.frame_indices = frames.indices.clone();
        let shape = frames.shape();
        input = MediaInput::video(Tensor::from_vec(
            frames.pixels,
            shape.to_vec(),
            &Device::Cpu,
        )?);
        input.frame_captions = schedule.captions;
    }
    if let Some(SubtitleChoice::File(p)) = Some(&req.subtitles) {
        if req.video.is_none() {
            return Err(PipelineError::file(
                p,
                "subtitles go with a video (--video)",
            ));
        }
    }
    report.preprocess_s = start.elapsed().as_secs_f64();
    Ok((input, report))
}
