//! MiniGPT4-Video (Vision-CAIR 2024) media preprocessing: frame sampling, frames,
//! pixels and the frame/subtitle prompt text, reproducing `minigpt4_video_inference.py`
//! (`extract_video_info`, `match_frames_and_subtitles`, `prepare_input`,
//! `generate_prediction`) and `conversation.Chat.upload_img`.
//!
//! # Video
//!
//! ```text
//! file ─ffmpeg -i text, as moviepy parses it─▶ duration (centiseconds), fps (printed tbr)
//!      total = int(duration·fps), interval = int(total / max_frames) or 1
//! file ─OpenCV-parity sequential decode (crate::decode::OpenCvCapture)─▶ frame n, n = 0, 1, …
//!      keep n iff n % interval == 0; stop after max_frames kept frames
//!      kept RGB u8 [H, W, 3] ─Pillow bicubic → S×S─▶ /255, ImageNet mean/std (f32)
//!      ─▶ pixel_values [T, 3, S, S]
//! cues + fps + frames read ─crate::subtitles::match_frames_and_subtitles─▶ <Cap> texts
//! "<Img><ImageHere>" (+ "<Cap>" + text) per kept frame + "\n" + question = instruction
//! ```
//!
//! Frames are decoded sequentially like `cv2.VideoCapture.read()` (every frame, no
//! seeking); only the kept ones are converted to RGB. `T` is at most `max_frames`: 45 for
//! the Llama-2 checkpoint, 90 for Mistral (the script picks 90 / 800 when `"mistral"` is
//! in the checkpoint path), `S` is the processor's `image_size` (224).
//!
//! # Frame rate and duration (moviepy 1.0.3)
//!
//! `VideoFileClip` runs `ffmpeg -i` and parses its text: the duration is the
//! `Duration: HH:MM:SS.cc` line (FFmpeg rounds the container duration to centiseconds,
//! half up), the fps is the first video stream's printed `tbr` (`r_frame_rate`, printed
//! with 2 decimals, or as an integer, or as `Nk`), falling back to the printed `fps`
//! (`avg_frame_rate`); a value within 0.01 of `x·1000/1001` for x in 23, 24, 25, 30, 50 is
//! replaced by that (so 29.97 → 29.97002997…, but 59.94 stays 59.94). [`moviepy_fps`]
//! and [`moviepy_duration`] reproduce those strings and parses.
//!
//! # Pixels
//!
//! `Blip2ImageTrainProcessor` (named "train", but deterministic in this repository):
//! `Resize((S, S), BICUBIC)` on the PIL image (no aspect preservation, no crop) →
//! `ToTensor` → `Normalize` with the **ImageNet** statistics (`BlipImageBaseProcessor`
//! computes the CLIP ones and then ignores them).
//!
//! # Image
//!
//! `Image.open(path).convert("RGB")` → the same processor → `[1, 3, S, S]`; the prompt is
//! `"<s>[INST] <Img><ImageHere></Img> " + question + " [/INST]"` ([`image_prompt`]).

use std::path::Path;

use crate::decode::{container_timing, OpenCvCapture};
use crate::error::{MediaError, Result};
use crate::frame::RgbImage;
use crate::image_file::load_image as load_rgb_image;
use crate::resize::resize_bicubic;
use crate::subtitles::{match_frames_and_subtitles, Cue, MatchParams, SubtitleSchedule};
use crate::video_llama::normalize_frames;

/// ImageNet normalisation mean (the Python floats rounded to f32, as
/// `torch.as_tensor(mean, dtype=float32)`).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet normalisation std (f32).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Text placed for every frame (image) in the prompt.
pub const FRAME_PLACEHOLDER: &str = "<Img><ImageHere>";
/// Marker before a subtitle text in the prompt (plain text, not a special token).
pub const CAPTION_MARKER: &str = "<Cap>";
/// What the prompt is split on to insert frame embeddings.
pub const IMAGE_TOKEN: &str = "<ImageHere>";

/// Preprocessing settings (all explicit; the pipeline chooses them per checkpoint).
#[derive(Clone, Debug, PartialEq)]
pub struct MiniGpt4VideoMediaConfig {
    /// Side `S` of the square ViT input (`vis_processor.image_size`, 224).
    pub image_size: u32,
    /// Most frames kept per video (45 Llama-2, 90 Mistral).
    pub max_frames: usize,
    /// Subtitle word budget (400 Llama-2, 800 Mistral).
    pub max_sub_len: usize,
    /// Per-channel normalisation mean.
    pub mean: [f32; 3],
    /// Per-channel normalisation std.
    pub std: [f32; 3],
    /// Also return the kept frames at their decoded size (memory: `T·H·W·3` bytes).
    pub keep_decoded_frames: bool,
}

impl MiniGpt4VideoMediaConfig {
    /// The Llama-2 checkpoint's settings: 45 frames, 400 subtitle words, 224 px.
    pub fn llama2() -> Self {
        Self {
            image_size: 224,
            max_frames: 45,
            max_sub_len: 400,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            keep_decoded_frames: false,
        }
    }

    /// The Mistral checkpoint's settings: 90 frames, 800 subtitle words, 224 px.
    pub fn mistral() -> Self {
        Self {
            max_frames: 90,
            max_sub_len: 800,
            ..Self::llama2()
        }
    }

    /// The inference script's rule: Mistral limits iff `"mistral"` occurs in the
    /// checkpoint path (case-sensitive, as in the script).
    pub fn for_checkpoint_path(ckpt: &str) -> Self {
        if ckpt.contains("mistral") {
            Self::mistral()
        } else {
            Self::llama2()
        }
    }

    fn validate(&self) -> Result<()> {
        if self.image_size == 0 || self.max_frames == 0 {
            return Err(MediaError::Config(format!(
                "image_size ({}) and max_frames ({}) must be at least 1",
                self.image_size, self.max_frames
            )));
        }
        Ok(())
    }
}

impl Default for MiniGpt4VideoMediaConfig {
    /// [`MiniGpt4VideoMediaConfig::llama2`].
    fn default() -> Self {
        Self::llama2()
    }
}

// ---------------------------------------------------------------------------------------
// moviepy's duration and fps
// ---------------------------------------------------------------------------------------

/// FFmpeg's `print_fps` text for a rate (without the ` tbr` / ` fps` suffix):
/// `v = lrintf(d·100)`; `%1.4f` if `v == 0`, `%3.2f` if `v % 100 != 0`, `%1.0f` if
/// `v % 100000 != 0`, else `%1.0fk` of `d / 1000`.
pub fn ffmpeg_printed_rate(d: f64) -> String {
    // lrintf takes a float: the double product is rounded to f32 first.
    let v = ((d * 100.0) as f32).round_ties_even() as i64;
    if v == 0 {
        format!("{d:.4}")
    } else if v % 100 != 0 {
        format!("{d:.2}")
    } else if v % (100 * 1000) != 0 {
        format!("{d:.0}")
    } else {
        format!("{:.0}k", d / 1000.0)
    }
}

/// moviepy's `get_tbr` / `get_fps` parse of a printed rate: a trailing `k` multiplies by
/// 1000.
pub fn moviepy_parse_rate(printed: &str) -> Option<f64> {
    if printed.contains('k') {
        printed
            .replace('k', "")
            .parse::<f64>()
            .ok()
            .map(|v| v * 1000.0)
    } else {
        printed.parse::<f64>().ok()
    }
}

/// `VideoFileClip(path).fps`: the printed `tbr` (`r_frame_rate`), else the printed `fps`
/// (`avg_frame_rate`), then the `x·1000/1001` snapping (module docs). `None` when the
/// stream has neither rate.
pub fn moviepy_fps(
    r_frame_rate: Option<(i32, i32)>,
    avg_frame_rate: Option<(i32, i32)>,
) -> Option<f64> {
    let printed = |r: (i32, i32)| {
        let d = f64::from(r.0) / f64::from(r.1);
        moviepy_parse_rate(&ffmpeg_printed_rate(d))
    };
    let mut fps = r_frame_rate
        .and_then(printed)
        .or_else(|| avg_frame_rate.and_then(printed))?;
    let coef = 1000.0 / 1001.0;
    let original = fps;
    for x in [23.0f64, 24.0, 25.0, 30.0, 50.0] {
        if original != x && (original - x * coef).abs() < 0.01 {
            fps = x * coef;
        }
    }
    Some(fps)
}

/// `VideoFileClip(path).duration` from the container duration in µs: FFmpeg prints
/// `HH:MM:SS.cc` of `duration + 5000 µs` (round half up to centiseconds); moviepy reads
/// the first `\d\d:\d\d:\d\d.\d\d` match (for ≥ 100 hours only the last two hour
/// digits) and sums `ss.cc + 60·mm + 3600·hh` in floats. `None` for negative durations
/// (FFmpeg prints no usable value; moviepy then raises).
pub fn moviepy_duration(duration_us: i64) -> Option<f64> {
    if duration_us < 0 {
        return None;
    }
    let d = duration_us.saturating_add(5000);
    let (secs, us) = (d / 1_000_000, d % 1_000_000);
    let (mins, secs) = (secs / 60, secs % 60);
    let (hours, mins) = (mins / 60, mins % 60);
    let centis = (100 * us) / 1_000_000;
    let ss = (secs * 100 + centis) as f64 / 100.0; // float("SS.cc")
    Some(ss + 60.0 * mins as f64 + 3600.0 * (hours % 100) as f64)
}

/// What `extract_video_info` computes (plus the numbers it starts from).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VideoSampling {
    /// moviepy's `clip.duration` in seconds.
    pub duration_s: f64,
    /// moviepy's `clip.fps` (also the frame rate for subtitle timing).
    pub fps: f64,
    /// `int(duration · fps)`.
    pub total_frames: usize,
    /// `int(total_frames / max_frames)`, 0 → 1.
    pub sampling_interval: usize,
    /// The frame limit it was computed for.
    pub max_frames: usize,
}

/// `int(duration · fps)` (f64 product, truncated; negative or NaN → 0).
pub fn total_frames(duration_s: f64, fps: f64) -> usize {
    let t = (duration_s * fps).trunc();
    if t.is_finite() && t > 0.0 {
        t as usize
    } else {
        0
    }
}

/// `int(total / max_frames)` (true division, truncated), 0 → 1. Errors for
/// `max_frames == 0` (the reference divides by it).
pub fn sampling_interval(total_frames: usize, max_frames: usize) -> Result<usize> {
    if max_frames == 0 {
        return Err(MediaError::Config("max_frames must be at least 1".into()));
    }
    let i = (total_frames as f64 / max_frames as f64).trunc() as usize;
    Ok(i.max(1))
}

/// The decoded frame indices `match_frames_and_subtitles` keeps when `decoded_frames`
/// frames can be read: `n % interval == 0`, at most `max_frames` of them.
pub fn kept_frame_indices(decoded_frames: usize, interval: usize, max_frames: usize) -> Vec<usize> {
    (0..decoded_frames)
        .step_by(interval.max(1))
        .take(max_frames)
        .collect()
}

/// `extract_video_info(path, max_frames)`: moviepy's duration and fps of `path` and the
/// sampling interval for `max_frames`.
pub fn video_sampling(path: impl AsRef<Path>, max_frames: usize) -> Result<VideoSampling> {
    let path = path.as_ref();
    let timing = container_timing(path)?;
    let bad = |message: String| MediaError::Decode {
        path: path.to_path_buf(),
        message,
    };
    let duration_s = timing
        .duration_us
        .and_then(moviepy_duration)
        .ok_or_else(|| bad("the container has no duration (moviepy cannot read it)".into()))?;
    if timing.video_stream.is_none() {
        return Err(MediaError::UnsupportedFormat {
            path: path.to_path_buf(),
            message: "no video stream with a picture size".into(),
        });
    }
    let fps = moviepy_fps(timing.r_frame_rate, timing.avg_frame_rate)
        .filter(|f| f.is_finite() && *f > 0.0)
        .ok_or_else(|| bad("the video stream has no frame rate".into()))?;
    let total = total_frames(duration_s, fps);
    Ok(VideoSampling {
        duration_s,
        fps,
        total_frames: total,
        sampling_interval: sampling_interval(total, max_frames)?,
        max_frames,
    })
}

// ---------------------------------------------------------------------------------------
// Frames and pixels
// ---------------------------------------------------------------------------------------

/// What [`load_video`] returns.
#[derive(Clone, Debug)]
pub struct MiniGpt4VideoFrames {
    /// `[T, 3, S, S]` normalised pixels, row-major (the ViT input).
    pub pixels: Vec<f32>,
    /// Number of kept frames `T`.
    pub num_frames: usize,
    /// Frame side `S`.
    pub size: u32,
    /// Decoded-frame indices that were kept.
    pub indices: Vec<usize>,
    /// Frames read from the file (the last kept index + 1 when `max_frames` was reached,
    /// else every frame the decoder produced).
    pub frames_read: usize,
    /// Duration, fps and interval (`extract_video_info`).
    pub sampling: VideoSampling,
    /// The kept frames as decoded (RGB, native size); only with
    /// [`MiniGpt4VideoMediaConfig::keep_decoded_frames`].
    pub decoded: Option<Vec<RgbImage>>,
    /// Why decoding ended early (see [`OpenCvCapture::stop_reason`]), if it did.
    pub stop_reason: Option<String>,
}

impl MiniGpt4VideoFrames {
    /// `[T, 3, S, S]`.
    pub fn shape(&self) -> [usize; 4] {
        let s = self.size as usize;
        [self.num_frames, 3, s, s]
    }

    /// The [`MatchParams`] for this video's subtitles.
    pub fn match_params(&self, max_sub_len: usize) -> MatchParams {
        MatchParams {
            fps: self.sampling.fps,
            sampling_interval: self.sampling.sampling_interval,
            max_frames: self.sampling.max_frames,
            max_sub_len,
        }
    }
}

/// The frames and pixels of `match_frames_and_subtitles` for `path` (module docs).
pub fn load_video(
    path: impl AsRef<Path>,
    cfg: &MiniGpt4VideoMediaConfig,
) -> Result<MiniGpt4VideoFrames> {
    let path = path.as_ref();
    cfg.validate()?;
    let sampling = video_sampling(path, cfg.max_frames)?;
    let s = cfg.image_size;
    let mut cap = OpenCvCapture::open(path)?;
    let mut indices = Vec::new();
    let mut resized = Vec::new();
    let mut decoded = cfg.keep_decoded_frames.then(Vec::new);
    let mut n = 0usize;
    while cap.grab() {
        if n.is_multiple_of(sampling.sampling_interval) {
            let img = cap.retrieve()?;
            resized.push(resize_bicubic(&img, s, s)?);
            if let Some(d) = decoded.as_mut() {
                d.push(img);
            }
            indices.push(n);
        }
        n += 1;
        if indices.len() >= cfg.max_frames {
            break;
        }
    }
    if indices.is_empty() {
        return Err(MediaError::Decode {
            path: path.to_path_buf(),
            message: match cap.stop_reason() {
                Some(r) => format!("no video frame could be decoded: {r}"),
                None => "no video frame could be decoded".into(),
            },
        });
    }
    let pixels = normalize_frames(&resized, &cfg.mean, &cfg.std)?;
    Ok(MiniGpt4VideoFrames {
        pixels,
        num_frames: indices.len(),
        size: s,
        indices,
        frames_read: n,
        sampling,
        decoded,
        stop_reason: cap.stop_reason().map(str::to_owned),
    })
}

/// The processor on RGB frames of any size: Pillow bicubic to `S × S`, `/255`,
/// normalisation → `[T, 3, S, S]`.
pub fn pixel_values(frames: &[RgbImage], cfg: &MiniGpt4VideoMediaConfig) -> Result<Vec<f32>> {
    cfg.validate()?;
    let resized = frames
        .iter()
        .map(|f| resize_bicubic(f, cfg.image_size, cfg.image_size))
        .collect::<Result<Vec<_>>>()?;
    normalize_frames(&resized, &cfg.mean, &cfg.std)
}

/// `Chat.upload_img(path)`'s pixels: `Image.open(path).convert("RGB")` + the processor →
/// `[1, 3, S, S]`.
pub fn load_image(path: impl AsRef<Path>, cfg: &MiniGpt4VideoMediaConfig) -> Result<Vec<f32>> {
    pixel_values(&[load_rgb_image(path)?], cfg)
}

// ---------------------------------------------------------------------------------------
// Prompt text
// ---------------------------------------------------------------------------------------

/// The frame string of `match_frames_and_subtitles`: per kept frame `"<Img><ImageHere>"`,
/// followed by `"<Cap>" + caption` when it has one (captions end with a space).
pub fn frame_string(captions: &[Option<String>]) -> String {
    let mut s = String::new();
    for c in captions {
        s.push_str(FRAME_PLACEHOLDER);
        if let Some(c) = c {
            s.push_str(CAPTION_MARKER);
            s.push_str(c);
        }
    }
    s
}

/// `prepare_input`'s user message: the frame string, `"\n"`, the question.
pub fn video_instruction(captions: &[Option<String>], question: &str) -> String {
    format!("{}\n{question}", frame_string(captions))
}

/// `CONV_VISION` (system `""`, roles `"[INST] "` / `" [/INST]"`, style SINGLE) with one
/// user message and the empty assistant turn: `"<s>[INST] " + message + " [/INST]"`.
/// The literal `<s>` is text; the tokenizer adds another BOS in front.
pub fn conversation_prompt(message: &str) -> String {
    format!("<s>[INST] {message} [/INST]")
}

/// The image chat prompt (`Chat.upload_img` + `Chat.ask`):
/// `"<s>[INST] <Img><ImageHere></Img> " + question + " [/INST]"`.
pub fn image_prompt(question: &str) -> String {
    conversation_prompt(&format!("<Img><ImageHere></Img> {question}"))
}

/// Everything `prepare_input` + `generate_prediction` produce before the model.
#[derive(Clone, Debug)]
pub struct PreparedVideo {
    /// Frames, pixels and sampling numbers.
    pub frames: MiniGpt4VideoFrames,
    /// The subtitle matching (captions per kept frame).
    pub schedule: SubtitleSchedule,
    /// The user message (frame string + `"\n"` + question).
    pub instruction: String,
    /// The rendered conversation prompt.
    pub prompt: String,
}

/// `prepare_input(video, subtitles, question)` and the prompt of `generate_prediction`.
/// `cues` empty = no subtitles (the reference's matching with an empty cue list).
pub fn prepare_input(
    video: impl AsRef<Path>,
    cues: &[Cue],
    question: &str,
    cfg: &MiniGpt4VideoMediaConfig,
) -> Result<PreparedVideo> {
    let frames = load_video(video, cfg)?;
    let schedule = match_frames_and_subtitles(
        cues,
        frames.frames_read,
        &frames.match_params(cfg.max_sub_len),
    )?;
    if schedule.kept_frames != frames.indices {
        return Err(MediaError::Config(format!(
            "internal: subtitle schedule kept {:?} but the decoder kept {:?}",
            schedule.kept_frames.len(),
            frames.indices.len()
        )));
    }
    let instruction = video_instruction(&schedule.captions, question);
    let prompt = conversation_prompt(&instruction);
    Ok(PreparedVideo {
        frames,
        schedule,
        instruction,
        prompt,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_rates() {
        assert_eq!(ffmpeg_printed_rate(30.0), "30");
        assert_eq!(ffmpeg_printed_rate(30000.0 / 1001.0), "29.97");
        assert_eq!(ffmpeg_printed_rate(24000.0 / 1001.0), "23.98");
        assert_eq!(ffmpeg_printed_rate(12.5), "12.50");
        assert_eq!(ffmpeg_printed_rate(90000.0), "90k");
        assert_eq!(ffmpeg_printed_rate(1500.0), "1500");
        assert_eq!(ffmpeg_printed_rate(0.001), "0.0010");
        assert_eq!(moviepy_parse_rate("90k"), Some(90000.0));
    }

    #[test]
    fn moviepy_fps_snapping() {
        let ntsc = moviepy_fps(Some((30000, 1001)), None).unwrap();
        assert_eq!(ntsc, 30.0 * (1000.0 / 1001.0));
        assert_eq!(
            moviepy_fps(Some((24000, 1001)), None).unwrap(),
            24.0 * (1000.0 / 1001.0)
        );
        // 59.94 is not in moviepy's list.
        assert_eq!(moviepy_fps(Some((60000, 1001)), None).unwrap(), 59.94);
        assert_eq!(moviepy_fps(Some((25, 1)), Some((24, 1))).unwrap(), 25.0);
        assert_eq!(moviepy_fps(None, Some((10, 1))).unwrap(), 10.0);
        assert_eq!(moviepy_fps(None, None), None);
    }

    #[test]
    fn moviepy_durations() {
        assert_eq!(moviepy_duration(3_000_000), Some(3.0));
        // 2.504999 s → "00:00:02.50" → 2.5; 2.505 → 2.51.
        assert_eq!(moviepy_duration(2_504_999), Some(2.5));
        assert_eq!(moviepy_duration(2_505_000), Some(2.51));
        assert_eq!(
            moviepy_duration(3_723_450_000),
            Some(3.45 + 60.0 * 2.0 + 3600.0)
        );
        assert_eq!(moviepy_duration(-1), None);
    }

    #[test]
    fn sampling_rules() {
        assert_eq!(total_frames(3.0, 30.0), 90);
        assert_eq!(sampling_interval(90, 45).unwrap(), 2);
        assert_eq!(sampling_interval(25, 90).unwrap(), 1);
        assert_eq!(sampling_interval(300, 45).unwrap(), 6);
        assert!(sampling_interval(10, 0).is_err());
        assert_eq!(kept_frame_indices(300, 6, 45).last(), Some(&264));
        assert_eq!(kept_frame_indices(10, 3, 45), vec![0, 3, 6, 9]);
    }

    #[test]
    fn prompt_strings() {
        let caps = vec![Some("Hello there. ".to_string()), None];
        assert_eq!(
            video_instruction(&caps, "Q?"),
            "<Img><ImageHere><Cap>Hello there. <Img><ImageHere>\nQ?"
        );
        assert_eq!(conversation_prompt("m"), "<s>[INST] m [/INST]");
        assert_eq!(
            image_prompt("What?"),
            "<s>[INST] <Img><ImageHere></Img> What? [/INST]"
        );
    }
}
