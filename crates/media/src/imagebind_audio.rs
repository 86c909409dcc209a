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
//!   computed. All in f32 like torch, except the FFT (f64 on the f32 frame, rounded back)
//!   and the reductions (f64, rounded once); see `Fbank::compute` in [`crate::fbank`].

use std::sync::Arc;

use realfft::{RealFftPlanner, RealToComplex};

use crate::audio::clip_sample_bounds;
use crate::error::{MediaError, Result};
use crate::fbank::{mel_banks_f32, LOG_FLOOR};

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

/// The Kaldi fbank ImageBind uses (Hann window, f32), prepared once.
pub struct HannFbank {
    num_bins: usize,
    window_size: usize,
    window_shift: usize,
    padded: usize,
    window: Vec<f32>,
    /// Per mel bin: first FFT bin with a non-zero weight, and the weights from there.
    mel: Vec<(usize, Vec<f32>)>,
    fft: Arc<dyn RealToComplex<f64>>,
}

impl std::fmt::Debug for HannFbank {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HannFbank")
            .field("num_bins", &self.num_bins)
            .field("window_size", &self.window_size)
            .field("window_shift", &self.window_shift)
            .field("padded", &self.padded)
            .finish()
    }
}

/// Pre-emphasis coefficient (torchaudio default).
const PREEMPHASIS: f32 = 0.97;
/// Mel range (torchaudio defaults: 20 Hz to Nyquist).
const LOW_FREQ: f64 = 20.0;
const HIGH_FREQ: f64 = 0.0;

impl HannFbank {
    /// Prepares the filterbank for `cfg` (sample rate, frame length/shift, mel bins).
    pub fn new(cfg: &ImageBindAudioConfig) -> Result<Self> {
        let sr = cfg.sample_rate as f64;
        let positive = |x: f64| x.is_finite() && x > 0.0;
        if !positive(sr) || !positive(cfg.frame_length_ms) || !positive(cfg.frame_shift_ms) {
            return Err(MediaError::Audio(format!("invalid fbank options {cfg:?}")));
        }
        // torchaudio: int(sample_frequency * ms * 0.001).
        let window_shift = (sr * cfg.frame_shift_ms * 0.001) as usize;
        let window_size = (sr * cfg.frame_length_ms * 0.001) as usize;
        if window_size < 2 || window_shift == 0 || window_size > 1 << 20 {
            return Err(MediaError::Audio(format!(
                "unsupported window size {window_size} / shift {window_shift}"
            )));
        }
        let padded = window_size.next_power_of_two();
        let banks = mel_banks_f32(cfg.num_mel_bins, padded, sr, LOW_FREQ, HIGH_FREQ)?;
        let nfb = padded / 2;
        let mel = (0..cfg.num_mel_bins)
            .map(|b| {
                let row = &banks[b * nfb..(b + 1) * nfb];
                let first = row.iter().position(|&w| w != 0.0).unwrap_or(0);
                let last = row.iter().rposition(|&w| w != 0.0).map_or(0, |i| i + 1);
                (first, row[first..last.max(first)].to_vec())
            })
            .collect();
        Ok(Self {
            num_bins: cfg.num_mel_bins,
            window_size,
            window_shift,
            padded,
            window: hann_window_f32(window_size),
            mel,
            fft: RealFftPlanner::<f64>::new().plan_fft_forward(padded),
        })
    }

    /// Samples per analysis frame (400 at 16 kHz / 25 ms).
    pub fn window_size(&self) -> usize {
        self.window_size
    }

    /// Number of frames for `n` samples (`snip_edges=True`).
    pub fn num_frames(&self, n: usize) -> usize {
        if n < self.window_size {
            0
        } else {
            1 + (n - self.window_size) / self.window_shift
        }
    }

    /// Log-mel features of a mono waveform, `[frames, num_bins]` row-major.
    pub fn compute(&self, waveform: &[f32]) -> Vec<f32> {
        let frames = self.num_frames(waveform.len());
        let mut data = Vec::with_capacity(frames * self.num_bins);
        let mut input = self.fft.make_input_vec();
        let mut spectrum = self.fft.make_output_vec();
        let mut scratch = self.fft.make_scratch_vec();
        let mut power = vec![0f32; self.padded / 2 + 1];
        let mut frame = vec![0f32; self.window_size];
        let n = self.window_size as f32;
        for f in 0..frames {
            let start = f * self.window_shift;
            frame.copy_from_slice(&waveform[start..start + self.window_size]);
            // remove_dc_offset: row mean in f32.
            let sum: f64 = frame.iter().map(|&v| v as f64).sum();
            let mean = sum as f32 / n;
            for v in frame.iter_mut() {
                *v -= mean;
            }
            // x[j] -= 0.97·x[j−1] on the original values, x[−1] = x[0].
            for j in (1..self.window_size).rev() {
                frame[j] -= PREEMPHASIS * frame[j - 1];
            }
            frame[0] -= PREEMPHASIS * frame[0];
            for (i, slot) in input.iter_mut().enumerate() {
                *slot = if i < self.window_size {
                    (frame[i] * self.window[i]) as f64
                } else {
                    0.0
                };
            }
            self.fft
                .process_with_scratch(&mut input, &mut spectrum, &mut scratch)
                .expect("FFT buffers have the planned sizes");
            for (p, c) in power.iter_mut().zip(&spectrum) {
                // torch: complex64 rfft → abs() → pow(2) in f32.
                let (re, im) = (c.re as f32, c.im as f32);
                let m = (re * re + im * im).sqrt();
                *p = m * m;
            }
            for (first, ws) in &self.mel {
                let e: f64 = ws
                    .iter()
                    .zip(&power[*first..])
                    .map(|(&w, &p)| w as f64 * p as f64)
                    .sum();
                data.push((e as f32).max(LOG_FLOOR).ln());
            }
        }
        data
    }
}

/// torch `hann_window(n, periodic=False)` in f32: `cos(k · f32(2π/(n−1))) · −0.5 + 0.5`.
pub fn hann_window_f32(n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![1.0];
    }
    let step = (std::f64::consts::PI * 2.0 / (n as f64 - 1.0)) as f32;
    (0..n)
        .map(|k| (k as f32 * step).cos() * -0.5 + 0.5)
        .collect()
}

/// `waveform2melspec` on one (already mean-subtracted) mono clip: fbank, transpose to
/// `[bins, frames]`, zero-pad / truncate to `target_length`, then normalise. Returns
/// `[bins, target_length]` row-major. Errors when the clip is shorter than one analysis
/// window (the reference fails there: an assertion in `kaldi.fbank`).
pub fn clip_melspec(
    fbank: &HannFbank,
    clip: &[f32],
    cfg: &ImageBindAudioConfig,
) -> Result<Vec<f32>> {
    if clip.len() < fbank.window_size {
        return Err(MediaError::Audio(format!(
            "audio clip of {} samples is shorter than one {}-sample fbank window \
             ({} ms at {} Hz); the reference fails on such input too",
            clip.len(),
            fbank.window_size,
            cfg.frame_length_ms,
            cfg.sample_rate
        )));
    }
    let feats = fbank.compute(clip);
    let frames = feats.len() / fbank.num_bins;
    let t = cfg.target_length;
    let mut out = vec![0f32; fbank.num_bins * t];
    for b in 0..fbank.num_bins {
        let row = &mut out[b * t..(b + 1) * t];
        for (f, slot) in row.iter_mut().enumerate().take(frames.min(t)) {
            *slot = feats[f * fbank.num_bins + b];
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
    let fbank = HannFbank::new(cfg)?;
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
    fn hann_window_endpoints() {
        let w = hann_window_f32(400);
        assert_eq!(w[0], 0.0);
        assert!(w[399].abs() < 1e-6);
        assert!((w[200] - 1.0).abs() < 1e-4);
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
        let floor = (LOG_FLOOR.ln() - cfg.mean) / cfg.std;
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
