//! Media files → model inputs, exactly as the reference's `processor[...]` does it.
//!
//! ```text
//! video file ─probe─► frame count, fps ─sample (§3.2)─► indices ─FFmpeg decode─► RGB frames
//!            ─image processor (Pillow-exact resize, crop, normalise)─► pixel_values T×3×H×W
//!            └(AV checkpoint) sound track ─16 kHz mono─► 8×2 s clips ─► fbank (f32) ─► bf16
//! image file ─► RGB ─► image processor ─► 1×3×H×W
//! audio file ─► channel 0 ─► 30 s pad/crop ─► FFT resample ─► fbank (f64) ─► bf16
//! Whisper audio tower (`audio_tower_type: "whisper"`, see `crate::audio_tower`): a sound file
//!            or a video's track ─► 16 kHz mono (FFmpeg down-mix; no track: silence)
//!            ─► crop / zero-pad to audio_max_seconds ─► Whisper log-mel [n_mels, frames] (f32)
//! gif / frame directory ─► unique sampled frames (+ black padding), fps 25 / 3
//! ```

use crate::audio_tower::WhisperAudioTower;
use crate::error::{PipelineError, Result};
use crate::{MediaInput, Pipeline};
use candle_core::{Device, Tensor};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;
use videollama_media::audio::{self, CropMode};
use videollama_media::decode::{self, DecodeError, VideoReader};
use videollama_media::fbank::{Fbank, Features};
use videollama_media::image_processor::ImageProcessorConfig;
use videollama_media::{image_file, sampling, MediaError, RgbImage};

/// Frames per second the reference assumes for a directory of frames.
const FRAME_DIRECTORY_FPS: f64 = 3.0;

/// What the user handed in for one request.
#[derive(Debug, Clone, Default)]
pub struct MediaRequest {
    pub video: Option<PathBuf>,
    pub image: Option<PathBuf>,
    pub audio: Option<PathBuf>,
    /// Clip bounds in seconds (spec §3.2), for videos.
    pub start_s: Option<f64>,
    pub end_s: Option<f64>,
    /// Use a video's sound track: `None` = when the checkpoint has an audio tower.
    pub use_video_audio: Option<bool>,
    /// Seed for cropping sounds longer than 30 s (a Whisper tower: `audio_max_seconds`)
    /// (`None`: keep the start; the reference crops at a random offset, which is not
    /// reproducible).
    pub audio_crop_seed: Option<u64>,
    /// Pad images/frames to a square with the mean colour first (training-time
    /// `image_aspect_ratio = pad`; the inference reference does not).
    pub pad_to_square: bool,
    /// Where MiniGPT4-Video's subtitles come from (ignored by the other families).
    pub subtitles: SubtitleChoice,
}

/// The subtitle source of a MiniGPT4-Video request (`--subtitles`).
#[derive(Debug, Clone, Default, PartialEq)]
pub enum SubtitleChoice {
    /// A subtitle stream in the video's container, else speech recognition of its sound
    /// when a Whisper model is configured, else none.
    #[default]
    Default,
    /// `--subtitles none`.
    None,
    /// `--subtitles auto`: speech recognition of the sound track, always.
    Recognize,
    /// `--subtitles FILE` (.vtt or .srt).
    File(PathBuf),
}

impl std::str::FromStr for SubtitleChoice {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(match s {
            "none" => SubtitleChoice::None,
            "auto" => SubtitleChoice::Recognize,
            "default" => SubtitleChoice::Default,
            path => SubtitleChoice::File(PathBuf::from(path)),
        })
    }
}

/// What preprocessing did, for `--json` and the server.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MediaReport {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub frame_indices: Vec<usize>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub frame_timestamps_s: Vec<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub video_frame_count: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub video_fps: Option<f64>,
    /// `file`, `video`, or `silence` (a video without a sound track on an AV checkpoint).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audio_source: Option<String>,
    /// Where MiniGPT4-Video's subtitles came from, and how many cues.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subtitle_source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subtitle_cues: Option<usize>,
    pub preprocess_s: f64,
}

fn media_err(e: MediaError) -> PipelineError {
    PipelineError::Invalid(e.to_string())
}

fn decode_err(e: DecodeError) -> PipelineError {
    PipelineError::Invalid(e.to_string())
}

fn pixels_tensor(frames: &[RgbImage], processor: &ImageProcessorConfig) -> Result<Tensor> {
    let px = processor.preprocess_batch(frames).map_err(media_err)?;
    let shape = px.shape();
    Ok(Tensor::from_vec(px.data, shape.to_vec(), &Device::Cpu)?)
}

fn fbank_tensor(features: Features<f32>) -> Result<Tensor> {
    let mut data = features.data;
    // The reference casts the fbank to bfloat16 before the model sees it.
    audio::round_to_bf16_in_place(&mut data);
    Ok(Tensor::from_vec(
        data,
        (features.frames, features.bins),
        &Device::Cpu,
    )?)
}

fn is_gif(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("gif"))
}

impl Pipeline {
    /// The image processor of this checkpoint's vision tower: its folder's
    /// `preprocessor_config.json`, or the built-in one of the published towers.
    pub fn image_processor(&self) -> Result<ImageProcessorConfig> {
        let visual = self.model.visual.as_ref().ok_or_else(|| {
            PipelineError::Invalid(
                "this checkpoint has no vision tower, so it cannot look at images or videos".into(),
            )
        })?;
        if let Some(json) = &visual.tower_info.preprocessor {
            let text = json.to_string();
            return ImageProcessorConfig::from_hf_json(&text).map_err(media_err);
        }
        Ok(match visual.tower_info.config.kind() {
            videollama_encoders::VisionTowerKind::Clip => {
                ImageProcessorConfig::clip_vit_large_patch14_336()
            }
            videollama_encoders::VisionTowerKind::Siglip => {
                ImageProcessorConfig::siglip_so400m_patch14_384()
            }
        })
    }

    /// Decode and preprocess the request's media files into model inputs.
    pub fn prepare_media(&self, req: &MediaRequest) -> Result<(MediaInput, MediaReport)> {
        if let Some(f) = &self.family {
            return f.prepare_media(req);
        }
        let start = Instant::now();
        let mut report = MediaReport::default();
        let crop = req
            .audio_crop_seed
            .map(CropMode::Seeded)
            .unwrap_or(CropMode::Start);
        let given = [req.video.is_some(), req.image.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        if given > 1 {
            return Err(PipelineError::Invalid(
                "give either a video or an image, not both".into(),
            ));
        }
        let has_audio_tower = self.model.audio.is_some();
        if req.audio.is_some() && !has_audio_tower {
            return Err(PipelineError::Invalid(
                "this checkpoint has no audio tower; it cannot listen to audio".into(),
            ));
        }
        let mut input = MediaInput::none();
        if let Some(path) = &req.image {
            let processor = self
                .image_processor()?
                .with_pad_to_square(req.pad_to_square);
            let image = image_file::load_image(path).map_err(media_err)?;
            input = MediaInput::image(pixels_tensor(&[image], &processor)?);
        }
        if let Some(path) = &req.video {
            let processor = self
                .image_processor()?
                .with_pad_to_square(req.pad_to_square);
            let frames = self.load_video_frames(path, req, &mut report)?;
            input = MediaInput::video(pixels_tensor(&frames, &processor)?);
            let want_audio = req.use_video_audio.unwrap_or(has_audio_tower);
            if want_audio && req.audio.is_none() {
                if !has_audio_tower {
                    return Err(PipelineError::Invalid(
                        "this checkpoint has no audio tower; it cannot use the video's sound"
                            .into(),
                    ));
                }
                input.audio_fbank = Some(self.video_sound_fbank(path, crop, &mut report)?);
            }
        }
        if let Some(path) = &req.audio {
            let fbank = match self.whisper_tower() {
                Some(tower) => audio_file_whisper_mel(tower, path, crop)?,
                None => audio_file_fbank(path, crop)?,
            };
            input.audio_fbank = Some(fbank);
            report.audio_source = Some("file".into());
        }
        report.preprocess_s = start.elapsed().as_secs_f64();
        Ok((input, report))
    }

    fn load_video_frames(
        &self,
        path: &Path,
        req: &MediaRequest,
        report: &mut MediaReport,
    ) -> Result<Vec<RgbImage>> {
        let num_frames = self.model.num_frames();
        if path.is_dir() {
            let files = image_file::list_frame_files(path).map_err(media_err)?;
            let indices = sampling::sample_frame_indices(
                files.len(),
                FRAME_DIRECTORY_FPS,
                num_frames,
                req.start_s,
                req.end_s,
            )
            .map_err(media_err)?;
            let mut frames = image_file::load_frame_directory(path, &indices).map_err(media_err)?;
            sampling::cap_to_max_frames(&mut frames);
            report.video_frame_count = Some(files.len());
            report.video_fps = Some(FRAME_DIRECTORY_FPS);
            report.frame_timestamps_s = indices
                .iter()
                .map(|&i| i as f64 / FRAME_DIRECTORY_FPS)
                .collect();
            report.frame_indices = indices;
            return Ok(frames);
        }
        if !path.exists() {
            return Err(PipelineError::file(path, "no such file"));
        }
        let reader = VideoReader::open(path).map_err(decode_err)?;
        let info = reader.info().clone();
        let fps = info.reference_fps();
        let mut indices = sampling::sample_frame_indices(
            info.frame_count,
            fps,
            num_frames,
            req.start_s,
            req.end_s,
        )
        .map_err(media_err)?;
        if is_gif(path) {
            // The reference's gif reader keeps only the unique sampled frames and pads
            // with black frames afterwards.
            let mut seen = std::collections::BTreeSet::new();
            indices.retain(|i| seen.insert(*i));
        }
        let mut frames = reader.decode(&indices).map_err(decode_err)?;
        sampling::pad_and_cap_frames(&mut frames, num_frames).map_err(media_err)?;
        report.video_frame_count = Some(info.frame_count);
        report.video_fps = Some(fps);
        report.frame_timestamps_s = indices.iter().map(|&i| i as f64 / fps).collect();
        report.frame_indices = indices;
        Ok(frames)
    }

    /// The reference's `process_audio_from_video`: on any decoding failure (no sound
    /// track, say) it uses silence — we do the same for a missing track, but a
    /// corrupt track is an error.
    fn video_sound_fbank(
        &self,
        path: &Path,
        crop: CropMode,
        report: &mut MediaReport,
    ) -> Result<Tensor> {
        let samples = match decode::decode_audio_16k_mono(path) {
            Ok(samples) => {
                report.audio_source = Some("video".into());
                samples
            }
            Err(DecodeError::NoAudioStream { .. }) => {
                report.audio_source = Some("silence".into());
                Vec::new()
            }
            Err(e) => return Err(decode_err(e)),
        };
        match self.whisper_tower() {
            Some(tower) => tower.log_mel(&samples, crop),
            None => fbank_tensor(audio::video_audio_fbank(&samples, crop)),
        }
    }

    /// The checkpoint's audio tower when it is a Whisper encoder.
    fn whisper_tower(&self) -> Option<&WhisperAudioTower> {
        self.model.audio.as_ref().and_then(|a| a.encoder.whisper())
    }
}

/// A sound file for a Whisper audio tower: 16 kHz mono (as `whisper.audio.load_audio`:
/// FFmpeg's down-mix and resampling), then the tower's window and log-mel
/// `[n_mels, frames]`.
pub fn audio_file_whisper_mel(
    tower: &WhisperAudioTower,
    path: &Path,
    crop: CropMode,
) -> Result<Tensor> {
    let samples = decode::decode_audio_16k_mono(path).map_err(decode_err)?;
    if samples.is_empty() {
        return Err(PipelineError::file(path, "the audio stream has no samples"));
    }
    tower.log_mel(&samples, crop)
}

/// The reference's `process_audio_file` on any FFmpeg-readable sound file.
pub fn audio_file_fbank(path: &Path, crop: CropMode) -> Result<Tensor> {
    let (channels, rate) = decode::decode_audio(path).map_err(decode_err)?;
    let channel0 = channels.into_iter().next().unwrap_or_default();
    if channel0.is_empty() {
        return Err(PipelineError::file(path, "the audio stream has no samples"));
    }
    // soundfile returns float64; PCM values are exact in f32, so widening is lossless.
    let samples: Vec<f64> = channel0.iter().map(|&v| v as f64).collect();
    let waveform = audio::file_waveform(&samples, rate, crop).map_err(media_err)?;
    fbank_tensor(Fbank::compute_f64(&waveform).to_f32())
}
