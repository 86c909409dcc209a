//! Video-LLaMA (v1, DAMO-NLP-SG 2023) media preprocessing: everything between a media
//! file and the tensors its encoders consume, reproducing the reference demo
//! (`video_llama/processors/video_processor.py` `load_video`,
//! `conversation_video.py` `Chat.upload_video*` / `upload_img`,
//! `ImageBind/data.py` `load_and_transform_audio_data`).
//!
//! # Video
//!
//! ```text
//! file ─probe─▶ vlen, avg fps ─sample_indices─▶ arange(0, vlen, vlen/n) truncated
//!      ─decode + FFmpeg bilinear scale to S×S (decord's `scale=S:S` filter)─▶ u8 [T, S, S, 3]
//!      ─/255, CLIP mean/std (f32)─▶ pixel_values [T, 3, S, S]
//! timestamps: str(round(idx / fps, 1)) → "The video contains T frames sampled at …, … seconds. "
//! ```
//!
//! decord resizes while decoding, with no aspect preservation and no crop; the scaler
//! does resize and YUV→RGB in one swscale step with `SWS_BILINEAR` (see
//! [`crate::decode::decode_frames_resized`]). The demo uses n = 8, S = 224.
//!
//! # Image
//!
//! `PIL.Image.open(path).convert("RGB")` → `Resize((S, S), BICUBIC)` (Pillow-exact, see
//! [`crate::resize`]) → `ToTensor` → CLIP mean/std → `[1, 3, S, S]` (a one-frame video).
//!
//! # Audio
//!
//! ```text
//! file ─torchaudio.load (FFmpeg decoder, every channel, f32)─▶ [C, N] at its own rate
//!      ─torchaudio.functional.resample → 16 kHz (sinc, Hann, width 6, rolloff 0.99)─▶ [C, N']
//!      ─8 clips of 2 s, in-place mean, channel-0 Kaldi fbank, pad to 204, normalise─▶
//!      audio_mel [8, 1, 128, 204]
//! ```
//!
//! See [`crate::resample`] and [`crate::imagebind_audio`]. The demo swallows every audio
//! error (`except: print('no audio is found')`) and answers from the frames alone; here
//! audio errors are returned and the caller decides.

use std::path::Path;

use crate::decode::{decode_audio, VideoReader};
use crate::error::{MediaError, Result};
use crate::frame::RgbImage;
use crate::image_file::load_image as load_rgb_image;
use crate::image_processor::{OPENAI_CLIP_MEAN, OPENAI_CLIP_STD};
use crate::imagebind_audio::{clips_to_mel, AudioClip, ImageBindAudioConfig};
use crate::resample::resample_channels;
use crate::resize::resize_bicubic;
use crate::sampling::arange_truncated_indices;

/// CLIP normalisation mean (`AlproVideoBaseProcessor` / `BlipImageBaseProcessor`
/// default): the Python floats rounded to f32, as `torch.as_tensor(mean, dtype=float32)`.
pub const CLIP_MEAN: [f32; 3] = [
    OPENAI_CLIP_MEAN[0] as f32,
    OPENAI_CLIP_MEAN[1] as f32,
    OPENAI_CLIP_MEAN[2] as f32,
];
/// CLIP normalisation std (f32, like [`CLIP_MEAN`]).
pub const CLIP_STD: [f32; 3] = [
    OPENAI_CLIP_STD[0] as f32,
    OPENAI_CLIP_STD[1] as f32,
    OPENAI_CLIP_STD[2] as f32,
];

/// Preprocessing settings of the Video-LLaMA demo.
#[derive(Clone, Debug, PartialEq)]
pub struct VideoLlamaMediaConfig {
    /// Frames sampled per video (`n_frms`, 8 in the demo; the model's frame position
    /// table has 32 rows).
    pub num_frames: usize,
    /// Side of the square frames / images (224).
    pub image_size: u32,
    /// Per-channel normalisation mean.
    pub mean: [f32; 3],
    /// Per-channel normalisation std.
    pub std: [f32; 3],
    /// ImageBind audio settings (8 clips of 2 s, 128 × 204 log-mel).
    pub audio: ImageBindAudioConfig,
}

impl Default for VideoLlamaMediaConfig {
    /// The demo's values.
    fn default() -> Self {
        Self {
            num_frames: 8,
            image_size: 224,
            mean: CLIP_MEAN,
            std: CLIP_STD,
            audio: ImageBindAudioConfig::default(),
        }
    }
}

/// `load_video`'s frame indices: `np.arange(0, vlen, vlen / n).astype(int)` with
/// `n = min(n, vlen)` (see [`arange_truncated_indices`]).
pub fn sample_indices(total_frames: usize, num_frames: usize) -> Result<Vec<usize>> {
    arange_truncated_indices(total_frames, num_frames)
}

/// `str(round(x, 1))` as Python prints it: round half to even on the exact binary value,
/// one decimal, e.g. `0.28 → "0.3"`, `0.25 → "0.2"`, `2.0 → "2.0"`. Non-finite inputs
/// print as Python does (`inf`, `-inf`, `nan`).
pub fn python_round1_str(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if x.abs() >= 1e16 {
        // Python's repr switches to exponent notation there (e.g. "1e+16"); frame
        // timestamps never get here, so only the digits are approximated.
        return format!("{x:e}").replace('e', "e+");
    }
    // Rust's `{:.1}` formats the exact binary value with ties to even, like Python's
    // correctly rounded `round(x, 1)` followed by the shortest repr of the result (one
    // decimal always round-trips). Both print round(-0.04, 1) as "-0.0".
    format!("{x:.1}")
}

/// The timestamp strings `str(round(idx / fps, 1))` for each frame index. Errors when
/// `fps` is not a positive finite number (the reference divides by it).
pub fn frame_timestamps(indices: &[usize], fps: f64) -> Result<Vec<String>> {
    if !(fps.is_finite() && fps > 0.0) {
        return Err(MediaError::InvalidImage(format!(
            "video frame rate {fps} is not positive; cannot compute frame timestamps"
        )));
    }
    Ok(indices
        .iter()
        .map(|&i| python_round1_str(i as f64 / fps))
        .collect())
}

/// `load_video`'s message: `"The video contains {T} frames sampled at {t0}, {t1}, …
/// seconds. "` (with its trailing space; the demo prefixes `"<Video><ImageHere></Video> "`).
pub fn video_message(timestamps: &[String]) -> String {
    format!(
        "The video contains {} frames sampled at {} seconds. ",
        timestamps.len(),
        timestamps.join(", ")
    )
}

/// What [`load_video_frames`] returns.
#[derive(Clone, Debug)]
pub struct VideoLlamaFrames {
    /// `[T, 3, S, S]` normalised pixels, row-major (the ViT input, frame-major).
    pub pixels: Vec<f32>,
    /// Number of frames `T`.
    pub num_frames: usize,
    /// Frame side `S`.
    pub size: u32,
    /// Decoded frame indices (decord numbering).
    pub indices: Vec<usize>,
    /// Frames in the video (`len(VideoReader)`).
    pub total_frames: usize,
    /// `get_avg_fps()`.
    pub fps: f64,
    /// `str(round(idx / fps, 1))` per frame.
    pub timestamps: Vec<String>,
    /// The decoded `S × S` RGB frames (decord's `get_batch` output).
    pub decoded: Vec<RgbImage>,
}

impl VideoLlamaFrames {
    /// `[T, 3, S, S]`.
    pub fn shape(&self) -> [usize; 4] {
        let s = self.size as usize;
        [self.num_frames, 3, s, s]
    }

    /// The prompt message of `load_video(return_msg=True)`.
    pub fn message(&self) -> String {
        video_message(&self.timestamps)
    }
}

/// `load_video(path, n_frms=num_frames, height=size, width=size, sampling="uniform",
/// return_msg=True)` followed by the demo's `ToTensorVideo` + CLIP `NormalizeVideo`.
pub fn load_video_frames(
    path: impl AsRef<Path>,
    num_frames: usize,
    size: u32,
) -> Result<VideoLlamaFrames> {
    load_video_frames_with(path, num_frames, size, &CLIP_MEAN, &CLIP_STD)
}

/// [`load_video_frames`] with an explicit normalisation.
pub fn load_video_frames_with(
    path: impl AsRef<Path>,
    num_frames: usize,
    size: u32,
    mean: &[f32; 3],
    std: &[f32; 3],
) -> Result<VideoLlamaFrames> {
    let reader = VideoReader::open(path)?;
    let info = reader.info();
    let total_frames = info.frame_count;
    let fps = info.avg_fps;
    let indices = sample_indices(total_frames, num_frames)?;
    // The reference decodes first (get_batch) and only then divides by the fps.
    let decoded = reader.decode_resized(&indices, size, size)?;
    let timestamps = frame_timestamps(&indices, fps)?;
    let pixels = normalize_frames(&decoded, mean, std)?;
    Ok(VideoLlamaFrames {
        pixels,
        num_frames: decoded.len(),
        size,
        indices,
        total_frames,
        fps,
        timestamps,
        decoded,
    })
}

/// `ToTensorVideo` (`u8 / 255` in f32) then `NormalizeVideo` (`(x − mean) / std` in f32)
/// on equally sized RGB frames → `[T, 3, H, W]`. Errors on frames of different sizes,
/// malformed buffers, or a zero std.
pub fn normalize_frames(frames: &[RgbImage], mean: &[f32; 3], std: &[f32; 3]) -> Result<Vec<f32>> {
    if std.contains(&0.0) {
        return Err(MediaError::Config(format!(
            "normalisation std {std:?} has a zero"
        )));
    }
    let Some(first) = frames.first() else {
        return Ok(Vec::new());
    };
    let (w, h) = (first.width, first.height);
    // Per channel: u8 → final value (the same f32 arithmetic as per pixel).
    let luts: Vec<Vec<f32>> = (0..3)
        .map(|c| {
            (0..=255u8)
                .map(|v| (v as f32 / 255.0 - mean[c]) / std[c])
                .collect()
        })
        .collect();
    let n = w as usize * h as usize;
    let mut out = Vec::with_capacity(frames.len() * 3 * n);
    for f in frames {
        f.validate()?;
        if (f.width, f.height) != (w, h) {
            return Err(MediaError::InvalidImage(format!(
                "frames differ in size: {}x{} vs {w}x{h}",
                f.width, f.height
            )));
        }
        for (c, lut) in luts.iter().enumerate() {
            out.extend(f.data.chunks_exact(3).map(|px| lut[px[c] as usize]));
        }
    }
    Ok(out)
}

/// `Blip2ImageEvalProcessor` on an RGB image: Pillow bicubic resize to `size × size`
/// (no aspect preservation), `ToTensor`, CLIP normalisation → `[1, 3, size, size]`.
pub fn image_pixels(img: &RgbImage, size: u32) -> Result<Vec<f32>> {
    let resized = resize_bicubic(img, size, size)?;
    normalize_frames(&[resized], &CLIP_MEAN, &CLIP_STD)
}

/// `Chat.upload_img(path)`'s pixels: `Image.open(path).convert("RGB")` then
/// [`image_pixels`] → `[1, 3, size, size]`.
pub fn load_image(path: impl AsRef<Path>, size: u32) -> Result<Vec<f32>> {
    image_pixels(&load_rgb_image(path)?, size)
}

/// What [`audio_mel`] returns.
#[derive(Clone, Debug)]
pub struct VideoLlamaAudio {
    /// `[clips, 1, bins, target_length]` normalised log-mel, row-major (the ImageBind input).
    pub mel: Vec<f32>,
    /// Number of clips.
    pub num_clips: usize,
    /// Mel bins (128).
    pub num_mel_bins: usize,
    /// Frames per clip (204).
    pub target_length: usize,
    /// The sampled clips (times in seconds, sample ranges at 16 kHz).
    pub clips: Vec<AudioClip>,
    /// Channels and samples per channel of the decoded audio, before resampling.
    pub loaded_shape: (usize, usize),
    /// Sample rate of the decoded audio.
    pub loaded_rate: u32,
    /// Samples per channel after resampling.
    pub resampled_len: usize,
}

impl VideoLlamaAudio {
    /// `[clips, 1, bins, target_length]`.
    pub fn shape(&self) -> [usize; 4] {
        [self.num_clips, 1, self.num_mel_bins, self.target_length]
    }
}

/// `torchaudio.load(path)` + `torchaudio.functional.resample(…, sr, rate)`: every channel
/// of the best audio stream as f32, resampled to `rate` (unchanged when equal). Returns
/// the resampled channels and the original rate.
pub fn load_audio_resampled(path: impl AsRef<Path>, rate: u32) -> Result<(Vec<Vec<f32>>, u32)> {
    let (channels, sr) = decode_audio(path)?;
    Ok((resample_channels(&channels, sr, rate)?, sr))
}

/// `load_and_transform_audio_data([path], clips_per_video=cfg.clips_per_video)[0]`:
/// decode, resample to 16 kHz, clip, fbank, normalise (module docs). Errors on files
/// without decodable audio and on audio shorter than one 25-ms fbank window.
pub fn audio_mel(path: impl AsRef<Path>, cfg: &ImageBindAudioConfig) -> Result<VideoLlamaAudio> {
    let (channels, sr) = decode_audio(path)?;
    let loaded_shape = (channels.len(), channels.first().map_or(0, Vec::len));
    let resampled = resample_channels(&channels, sr, cfg.sample_rate)?;
    waveform_mel(resampled, loaded_shape, sr, cfg)
}

/// The part of [`audio_mel`] after resampling, on a `[C, N]` waveform at
/// `cfg.sample_rate` (consumed: the in-place mean quirk modifies it).
pub fn waveform_mel(
    waveform: Vec<Vec<f32>>,
    loaded_shape: (usize, usize),
    loaded_rate: u32,
    cfg: &ImageBindAudioConfig,
) -> Result<VideoLlamaAudio> {
    let resampled_len = waveform.first().map_or(0, Vec::len);
    let (mel, clips) = clips_to_mel(waveform, cfg)?;
    Ok(VideoLlamaAudio {
        mel,
        num_clips: clips.len(),
        num_mel_bins: cfg.num_mel_bins,
        target_length: cfg.target_length,
        clips,
        loaded_shape,
        loaded_rate,
        resampled_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_round_strings() {
        let cases = [
            (0.0, "0.0"),
            (0.28, "0.3"),
            (0.6, "0.6"),
            (0.88, "0.9"),
            (1.2, "1.2"),
            (2.08, "2.1"),
            // exact binary ties: half to even, as Python's round
            (0.25, "0.2"),
            (0.75, "0.8"),
            (2.25, "2.2"),
            // 0.35 is 0.34999… in binary
            (0.35, "0.3"),
            (10.0, "10.0"),
            (123.45, "123.5"), // 123.4500000000000028…
        ];
        for (x, want) in cases {
            assert_eq!(python_round1_str(x), want, "{x}");
        }
    }

    #[test]
    fn timestamps_and_message() {
        let idx = sample_indices(60, 8).unwrap();
        let ts = frame_timestamps(&idx, 25.0).unwrap();
        assert_eq!(
            video_message(&ts),
            "The video contains 8 frames sampled at 0.0, 0.3, 0.6, 0.9, 1.2, 1.5, 1.8, 2.1 seconds. "
        );
        assert!(frame_timestamps(&idx, 0.0).is_err());
        assert!(frame_timestamps(&idx, f64::NAN).is_err());
    }

    #[test]
    fn normalisation_matches_torch_f32() {
        let img = RgbImage::filled(2, 1, [0, 128, 255]);
        let px = normalize_frames(&[img.clone(), img], &CLIP_MEAN, &CLIP_STD).unwrap();
        assert_eq!(px.len(), 2 * 3 * 2);
        assert_eq!(px[0], (0.0f32 - CLIP_MEAN[0]) / CLIP_STD[0]);
        assert_eq!(px[2], (128.0f32 / 255.0 - CLIP_MEAN[1]) / CLIP_STD[1]);
        assert_eq!(px[5], (1.0f32 - CLIP_MEAN[2]) / CLIP_STD[2]);
        let a = RgbImage::black(2, 2);
        let b = RgbImage::black(3, 2);
        assert!(normalize_frames(&[a, b], &CLIP_MEAN, &CLIP_STD).is_err());
    }
}
