//! ImageBind's audio preprocessing (`ImageBind/data.py`
//! `load_and_transform_audio_data` + `waveform2melspec`), as Video-LLaMA calls it:
//! 16 kHz waveform (all channels) → clips → log-mel `[clips, 1, 128, 204]`.
//!
//! ```text
//! waveform [C, N] (16 kHz, f32)
//!   ─ConstantClipsPerVideoSampler─▶ clip k = samples [s_k, e_k) of every channel
//!   ─in place: clip −= mean(clip over all channels)─▶            (quirk 1 and 2 below)
//!   ─channel 0─▶ Kaldi fbank (hanning, 25/10 ms, 128 mel, f32) [frames, 128]
//!   ─transpose, zero-pad / truncate to 204 frames─▶ [128, 204]
//!   ─(x − mean) / std─▶ [1, 128, 204]      → stacked: [clips, 1, 128, 204]
//! ```
//!
//! * Clip starts are pytorchvideo's `ConstantClipsPerVideoSampler(2, clips)`:
//!   `start_k = k · max(D − 2, 0) / clips` seconds (`D = N / 16000`, exact fractions), sliced
//!   with `int(t · 16000)`; see [`crate::audio::clip_sample_bounds`]. Audio shorter than
//!   the clip duration gives `clips` copies of `[0, N)`.
//! * Quirk 1: `waveform -= waveform.mean()` runs **in place on a view** of the resampled
//!   waveform, so with overlapping clips each clip sees the samples already shifted by the
//!   means of all earlier clips. [`clips_to_mel`] replays that sequentially on its own copy.
//! * Quirk 2: the mean is over **all channels** of the clip; only channel 0 is used by the
//!   fbank afterwards.
//! * The fbank is `torchaudio.compliance.kaldi.fbank(htk_compat=True, use_energy=False,
//!   window_type="hanning", dither=0, …)`: per 400-sample frame (hop 160) remove the DC
//!   mean, pre-emphasis 0.97, Hann window (`hann_window(400, periodic=False)`), zero-pad to
//!   512, power spectrum, 128 Kaldi mel filters (20 Hz – Nyquist),
//!   `ln(max(E, f32::EPSILON))`. `htk_compat` only reorders the energy column, which is not
//!   computed. This is [`Fbank<f32>`] with [`WindowType::Hanning`]
//!   ([`ImageBindAudioConfig::fbank_options`]): all in f32 like torch, except the FFT (f64
//!   on the f32 frame, rounded back) and the reductions (f64, rounded once); see
//!   [`Fbank::compute`].

use crate::audio::clip_sample_bounds;
use crate::error::{MediaError, Result};
use crate::fbank::{Fbank, FbankOptions, WindowType};

/// Parameters of `load_and_transform_audio_data` / `waveform2melspec`.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageBindAudioConfig {
    /// `num_mel_bins` (128).
    pub num_mel_bins: usize,
    /// `target_length`: fbank frames per clip after pad / truncate (204).
    pub target_length: usize,
    /// `sample_rate` the waveform is resampled to (16000).
    pub sample_rate: u32,
    /// `clip_duration` in seconds (2).
    pub clip_duration_s: u32,
    /// `clips_per_video` (ImageBind's default is 3; Video-LLaMA passes 8).
    pub clips_per_video: usize,
    /// Normalisation mean (−4.268).
    pub mean: f32,
    /// Normalisation std (9.138).
    pub std: f32,
    /// fbank `frame_length` in ms (25).
    pub frame_length_ms: f64,
    /// fbank `frame_shift` in ms (10).
    pub frame_shift_ms: f64,
}

impl ImageBindAudioConfig {
    /// The `kaldi.fbank` options `waveform2melspec` passes: this config's rate, bins and
    /// frame length / shift, the Hanning window, torchaudio defaults otherwise
    /// (`htk_compat=True` only concerns the energy column, which is not computed).
    pub fn fbank_options(&self) -> FbankOptions {
        FbankOptions {
            num_mel_bins: self.num_mel_bins,
            sample_frequency: self.sample_rate as f64,
            frame_length_ms: self.frame_length_ms,
            frame_shift_ms: self.frame_shift_ms,
            window_type: WindowType::Hanning,
            ..FbankOptions::default()
        }
    }
}

impl Default for ImageBindAudioConfig {
    /// The values Video-LLaMA uses (`load_and_transform_audio_data(…, clips_per_video=8)`).
    fn default() -> Self {
        Self {
            num_mel_bins: 128,
            target_length: 204,
            sample_rate: 16000,
            clip_duration_s: 2,
            clips_per_video: 8,
            mean: -4.268,
            std: 9.138,
            frame_length_ms: 25.0,
            frame_shift_ms: 10.0,
        }
    }
}

/// One sampled clip: its time span as pytorchvideo reports it and the sample range used.
#[derive(Clone, Debug, PartialEq)]
pub struct AudioClip {
    /// Clip start in seconds (`float(Fraction)`; see [`clip_spans`]).
    pub start_s: f64,
    /// Clip end in seconds (`start + clip_duration`).
    pub end_s: f64,
    /// First sample (`int(start · sample_rate)`).
    pub start_sample: usize,
    /// One past the last sample, clamped to the waveform length (Python slicing).
    pub end_sample: usize,
}

/// The clips `ConstantClipsPerVideoSampler(clip_duration, clips_per_video)` yields for a
/// waveform of `num_samples` samples. Sample ranges are exact (rational arithmetic, see
/// [`clip_sample_bounds`]). The times in seconds are pytorchvideo's exact fractions
/// `k · m / clips` and `k · m / clips + duration` (`m = max(D − duration, 0)`) converted to
/// f64 the way Python's `float(Fraction)` does (one correct rounding) when `clips` is a
/// power of two (the demo's 8: `m / clips` is then exact, and a product or a fused
/// multiply-add rounds once); otherwise they can differ in the last bit (informational
/// only: the sample ranges are what the fbank uses).
pub fn clip_spans(num_samples: usize, cfg: &ImageBindAudioConfig) -> Vec<AudioClip> {
    let bounds = clip_sample_bounds(
        num_samples,
        cfg.sample_rate,
        cfg.clip_duration_s,
        cfg.clips_per_video,
    );
    let duration = num_samples as f64 / cfg.sample_rate.max(1) as f64;
    let m = (duration - cfg.clip_duration_s as f64).max(0.0);
    bounds
        .into_iter()
        .enumerate()
        .map(|(k, (s, e))| {
            let clips = cfg.clips_per_video as f64;
            let dur = cfg.clip_duration_s as f64;
            let (start_s, end_s) = if cfg.clips_per_video.is_power_of_two() {
                let u = m / clips; // exact
                (k as f64 * u, (k as f64).mul_add(u, dur))
            } else {
                let start = m * k as f64 / clips;
                (start, start + dur)
            };
            AudioClip {
                start_s,
                end_s,
                start_sample: s.min(num_samples),
                end_sample: e.min(num_samples),
            }
        })
        .collect()
}

/// `waveform2melspec` on one (already mean-subtracted) mono clip: fbank, transpose to
/// `[bins, frames]`, zero-pad / truncate to `target_length`, then normalise. Returns
/// `[bins, target_length]` row-major. Errors when the clip is shorter than one analysis
/// window (the reference fails there: an assertion in `kaldi.fbank`).
pub fn clip_melspec(
    fbank: &Fbank<f32>,
    clip: &[f32],
    cfg: &ImageBindAudioConfig,
) -> Result<Vec<f32>> {
    if clip.len() < fbank.window_size() {
        return Err(MediaError::Audio(format!(
            "audio clip of {} samples is shorter than one {}-sample fbank window \
             ({} ms at {} Hz); the reference fails on such input too",
            clip.len(),
            fbank.window_size(),
            cfg.frame_length_ms,
            cfg.sample_rate
        )));
    }
    // feats: [frames, bins] row-major.
    let feats = fbank.compute(clip);
    let (frames, bins) = (feats.frames, feats.bins);
    let t = cfg.target_length;
    let mut out = vec![0f32; bins * t];
    for b in 0..bins {
        let row = &mut out[b * t..(b + 1) * t];
        for (f, slot) in row.iter_mut().enumerate().take(frames.min(t)) {
            *slot = feats.data[f * bins + b];
        }
        // transforms.Normalize: (x − mean) / std in f32, padding included.
        for v in row.iter_mut() {
            *v = (*v - cfg.mean) / cfg.std;
        }
    }
    Ok(out)
}

/// Log-mel clips of a 16 kHz waveform (`channels[c]` = channel `c`, all the same length),
/// with both reference quirks (module docs). Returns `[clips, 1, bins, target_length]`
/// row-major and the clip spans. `channels` is consumed as the reference's tensor is
/// modified: each clip's mean is subtracted in place before the next clip is taken.
///
/// Errors on an empty or ragged waveform and on clips shorter than one fbank window
/// (audio under 25 ms).
pub fn clips_to_mel(
    mut channels: Vec<Vec<f32>>,
    cfg: &ImageBindAudioConfig,
) -> Result<(Vec<f32>, Vec<AudioClip>)> {
    let Some(first) = channels.first() else {
        return Err(MediaError::Audio("waveform has no channels".into()));
    };
    let n = first.len();
    if channels.iter().any(|c| c.len() != n) {
        return Err(MediaError::Audio(
            "waveform channels differ in length".into(),
        ));
    }
    if n == 0 {
        return Err(MediaError::Audio("waveform has no samples".into()));
    }
    if cfg.clips_per_video == 0 || cfg.target_length == 0 || !(cfg.std != 0.0) {
        return Err(MediaError::Audio(format!("invalid audio config {cfg:?}")));
    }
    let fbank = Fbank::<f32>::new(cfg.fbank_options())?;
    let spans = clip_spans(n, cfg);
    let mut out = Vec::with_capacity(spans.len() * cfg.num_mel_bins * cfg.target_length);
    for span in &spans {
        let (s, e) = (span.start_sample, span.end_sample.max(span.start_sample));
        // Quirk 2: mean over all channels of the clip (torch: f32 sum / count).
        let count = (e - s) * channels.len();
        let sum: f64 = channels
            .iter()
            .flat_map(|c| &c[s..e])
            .map(|&v| v as f64)
            .sum();
        let mean = sum as f32 / count.max(1) as f32;
        // Quirk 1: in place, visible to the later (overlapping) clips.
        for c in channels.iter_mut() {
            for v in &mut c[s..e] {
                *v -= mean;
            }
        }
        out.extend(clip_melspec(&fbank, &channels[0][s..e], cfg)?);
    }
    Ok((out, spans))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_spans_follow_pytorchvideo() {
        let cfg = ImageBindAudioConfig::default();
        // 3 s at 16 kHz: max start 1 s, starts k/8 s.
        let spans = clip_spans(48000, &cfg);
        assert_eq!(spans.len(), 8);
        for (k, s) in spans.iter().enumerate() {
            assert_eq!(s.start_s, k as f64 * 0.125);
            assert_eq!(s.end_s, s.start_s + 2.0);
            assert_eq!(s.start_sample, k * 2000);
            assert_eq!(s.end_sample, k * 2000 + 32000);
        }
        // Shorter than 2 s: eight copies of the whole signal.
        let spans = clip_spans(1000, &cfg);
        assert_eq!(spans.len(), 8);
        assert!(spans
            .iter()
            .all(|s| s.start_sample == 0 && s.end_sample == 1000 && s.start_s == 0.0));
    }

    #[test]
    fn in_place_mean_is_sequential_and_over_all_channels() {
        // Constant channels 1 and 3: clip 0's mean (2) is removed from [0, 32000) of both
        // channels; clip 1 overlaps it, so its mean is taken over partly shifted samples.
        let cfg = ImageBindAudioConfig {
            clips_per_video: 2,
            ..Default::default()
        };
        let n = 40000;
        let ch = vec![vec![1f32; n], vec![3f32; n]];
        let (mel, spans) = clips_to_mel(ch, &cfg).unwrap();
        assert_eq!(spans[1].start_sample, 4000);
        assert_eq!(mel.len(), 2 * 128 * 204);
        // A constant clip has zero energy after DC removal: every bin sits at the floor.
        let floor = (crate::fbank::LOG_FLOOR.ln() - cfg.mean) / cfg.std;
        assert!(mel[..128 * 204]
            .iter()
            .enumerate()
            .all(|(i, &v)| if i % 204 < 198 {
                v == floor
            } else {
                v == (0.0 - cfg.mean) / cfg.std
            }));
    }

    #[test]
    fn short_audio() {
        let cfg = ImageBindAudioConfig::default();
        // 0.5 s: 8 identical clips of 48 frames, padded to 204.
        let x: Vec<f32> = (0..8000).map(|i| (i as f32 * 0.3).sin() * 0.1).collect();
        let (mel, spans) = clips_to_mel(vec![x], &cfg).unwrap();
        assert_eq!(spans.len(), 8);
        assert_eq!(mel.len(), 8 * 128 * 204);
        let pad = (0.0 - cfg.mean) / cfg.std;
        assert_eq!(mel[48], pad);
        assert_ne!(mel[47], pad);
        // Under one 25-ms window: an error, not a panic.
        assert!(clips_to_mel(vec![vec![0.1; 399]], &cfg).is_err());
        assert!(clips_to_mel(vec![vec![]], &cfg).is_err());
        assert!(clips_to_mel(vec![], &cfg).is_err());
        assert!(clips_to_mel(vec![vec![0.0; 500], vec![0.0; 400]], &cfg).is_err());
    }
}
