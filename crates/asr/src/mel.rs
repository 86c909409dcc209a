//! Whisper's log-mel spectrogram, reproducing `whisper.audio.log_mel_spectrogram` of
//! openai-whisper as `transcribe()` calls it (`padding = N_SAMPLES`).
//!
//! ```text
//! pcm 16 kHz ─ append 30 s of zeros ─ reflect-pad 200 at the start (torch.stft center=True)
//!   ─ frames of 400 every 160, periodic Hann ─ |rFFT|² (201 bins) ─ drop the last frame
//!   ─ Slaney mel filterbank [n_mels, 201] · power ─ log10(max(·, 1e-10))
//!   ─ max(·, global max − 8) ─ (· + 4) / 4                              → [n_mels, len/160]
//! ```
//!
//! Only the `len / 160` *content* frames are returned (openai's `mel.shape[-1] - N_FRAMES`);
//! the 3000 trailing frames of the zero padding are not materialised. They still take part
//! in the global maximum as openai computes it: a frame of zeros is `log10(1e-10) = -10`,
//! and the (at most two) frames after the content whose window still reaches into the audio
//! are computed for the maximum and then dropped.
//!
//! Why not `candle_transformers::models::whisper::audio::pcm_to_mel`: it frames without the
//! centre (reflect) padding, i.e. its frame `i` covers samples `[160 i, 160 i + 400)` instead
//! of `[160 i − 200, 160 i + 200)` — a 12.5 ms shift — and it pads to whole 15-s blocks; it
//! also needs the filterbank as an input, which no checkpoint ships.
//!
//! The filterbank is `librosa.filters.mel(sr=16000, n_fft=400, n_mels=80|128)` (Slaney mel
//! scale and area normalisation), computed here in f64 and rounded to f32 the way librosa
//! stores it; it equals openai-whisper's `assets/mel_filters.npz` (checked by a unit test on
//! recorded entries of that file).

use std::sync::Arc;

use realfft::{RealFftPlanner, RealToComplex};

/// Sample rate Whisper expects.
pub const SAMPLE_RATE: usize = 16_000;
/// FFT size (25 ms).
pub const N_FFT: usize = 400;
/// Hop between frames (10 ms).
pub const HOP_LENGTH: usize = 160;
/// Samples in one 30-s window.
pub const N_SAMPLES: usize = 30 * SAMPLE_RATE;
/// Mel frames in one 30-s window.
pub const N_FRAMES: usize = N_SAMPLES / HOP_LENGTH;

/// A Slaney-normalised mel filterbank, row-major `[n_mels, n_fft/2 + 1]`.
#[derive(Debug, Clone, PartialEq)]
pub struct MelFilters {
    pub n_mels: usize,
    pub n_freqs: usize,
    pub data: Vec<f32>,
}

fn hz_to_mel(f: f64) -> f64 {
    // Slaney: linear below 1 kHz (200/3 Hz per mel), logarithmic above.
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    if f >= min_log_hz {
        min_log_mel + (f / min_log_hz).ln() / logstep
    } else {
        f / f_sp
    }
}

fn mel_to_hz(m: f64) -> f64 {
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    if m >= min_log_mel {
        min_log_hz * ((m - min_log_mel) * logstep).exp()
    } else {
        f_sp * m
    }
}

/// `numpy.linspace(start, stop, n)`: `start + i * step`, the last point exactly `stop`.
fn linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (stop - start) / (n - 1) as f64;
    (0..n)
        .map(|i| {
            if i == n - 1 {
                stop
            } else {
                start + i as f64 * step
            }
        })
        .collect()
}

impl MelFilters {
    /// `librosa.filters.mel(sr, n_fft, n_mels)` with `fmin = 0`, `fmax = sr / 2`,
    /// `htk = False`, `norm = "slaney"`, dtype float32.
    pub fn new(sample_rate: usize, n_fft: usize, n_mels: usize) -> Self {
        let n_freqs = n_fft / 2 + 1;
        let fftfreqs = linspace(0.0, sample_rate as f64 / 2.0, n_freqs);
        let mels = linspace(
            hz_to_mel(0.0),
            hz_to_mel(sample_rate as f64 / 2.0),
            n_mels + 2,
        );
        let mel_f: Vec<f64> = mels.into_iter().map(mel_to_hz).collect();
        let mut data = vec![0f32; n_mels * n_freqs];
        for i in 0..n_mels {
            let fdiff_lo = mel_f[i + 1] - mel_f[i];
            let fdiff_hi = mel_f[i + 2] - mel_f[i + 1];
            let enorm = 2.0 / (mel_f[i + 2] - mel_f[i]);
            for (k, &f) in fftfreqs.iter().enumerate() {
                let lower = -(mel_f[i] - f) / fdiff_lo;
                let upper = (mel_f[i + 2] - f) / fdiff_hi;
                // librosa stores the triangle in a float32 array, then scales it in place
                // by the float64 `enorm`: two roundings, reproduced here.
                let w = (lower.min(upper).max(0.0)) as f32;
                data[i * n_freqs + k] = (w as f64 * enorm) as f32;
            }
        }
        MelFilters {
            n_mels,
            n_freqs,
            data,
        }
    }

    /// Whisper's filterbank for `n_mels` bins (80, or 128 for large-v3).
    pub fn whisper(n_mels: usize) -> Self {
        Self::new(SAMPLE_RATE, N_FFT, n_mels)
    }
}

/// A log-mel spectrogram, row-major `[n_mels, n_frames]` (Whisper's `[80, T]` layout).
#[derive(Debug, Clone, PartialEq)]
pub struct LogMel {
    pub n_mels: usize,
    /// Content frames (`len / 160`).
    pub n_frames: usize,
    pub data: Vec<f32>,
    /// The frames after the content whose window still reaches into the audio,
    /// `[n_mels, tail_frames]`, and the value of every later frame of openai's 30-s zero
    /// padding. Only [`LogMel::padded_window`] (language detection) reads them.
    pub tail_frames: usize,
    pub tail: Vec<f32>,
    pub pad_value: f32,
}

impl LogMel {
    /// Frames `[start, start + len)` zero-padded (in log-mel space, as openai's
    /// `pad_or_trim`) to `width` frames: `[n_mels, width]` row-major.
    pub fn window(&self, start: usize, len: usize, width: usize) -> Vec<f32> {
        let mut out = vec![0f32; self.n_mels * width];
        let end = (start + len).min(self.n_frames);
        let take = end.saturating_sub(start).min(width);
        for m in 0..self.n_mels {
            let src = &self.data[m * self.n_frames + start..m * self.n_frames + start + take];
            out[m * width..m * width + take].copy_from_slice(src);
        }
        out
    }

    /// Frames `[start, start + width)` of openai's full padded spectrogram (content, then
    /// the spectrogram of the 30 s of zeros): what `pad_or_trim(mel, N_FRAMES)` gives
    /// `detect_language`. `[n_mels, width]` row-major.
    pub fn padded_window(&self, start: usize, width: usize) -> Vec<f32> {
        let mut out = vec![self.pad_value; self.n_mels * width];
        for m in 0..self.n_mels {
            for j in 0..width {
                let f = start + j;
                let v = if f < self.n_frames {
                    self.data[m * self.n_frames + f]
                } else if f - self.n_frames < self.tail_frames {
                    self.tail[m * self.tail_frames + f - self.n_frames]
                } else {
                    continue;
                };
                out[m * width + j] = v;
            }
        }
        out
    }
}

/// Periodic Hann window (`torch.hann_window(n)`), computed in f64 and rounded.
fn hann(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n as f64).cos()) as f32)
        .collect()
}

/// Reusable STFT state (FFT plan, window, buffers).
struct Stft {
    fft: Arc<dyn RealToComplex<f32>>,
    window: Vec<f32>,
    frame: Vec<f32>,
    spectrum: Vec<realfft::num_complex::Complex<f32>>,
    scratch: Vec<realfft::num_complex::Complex<f32>>,
}

impl Stft {
    fn new() -> Self {
        let fft = RealFftPlanner::<f32>::new().plan_fft_forward(N_FFT);
        let spectrum = fft.make_output_vec();
        let scratch = fft.make_scratch_vec();
        Stft {
            fft,
            window: hann(N_FFT),
            frame: vec![0.0; N_FFT],
            spectrum,
            scratch,
        }
    }

    /// Power spectrum (`|X_k|²`, `N_FFT/2 + 1` bins) of frame `i` of `pcm` followed by
    /// zeros, with torch's centre reflect padding.
    fn power(&mut self, pcm: &[f32], i: usize, out: &mut [f32]) {
        let half = (N_FFT / 2) as isize;
        let sample = |t: isize| -> f32 {
            // Reflect about sample 0 (no edge repeat); beyond the audio lie the zeros of
            // the 30-s padding, so the reflection of those is zero too.
            let t = t.unsigned_abs();
            pcm.get(t).copied().unwrap_or(0.0)
        };
        let start = (i * HOP_LENGTH) as isize - half;
        for (n, f) in self.frame.iter_mut().enumerate() {
            *f = sample(start + n as isize) * self.window[n];
        }
        // Lengths always match the plan, so the FFT cannot fail.
        let _ =
            self.fft
                .process_with_scratch(&mut self.frame, &mut self.spectrum, &mut self.scratch);
        for (o, c) in out.iter_mut().zip(&self.spectrum) {
            *o = c.re * c.re + c.im * c.im;
        }
    }
}

/// Number of content frames openai-whisper produces for `n_samples` samples.
pub fn content_frames(n_samples: usize) -> usize {
    n_samples / HOP_LENGTH
}

/// Whisper's log-mel spectrogram of 16 kHz mono `pcm` (see the module docs):
/// `[n_mels, pcm.len() / 160]`.
pub fn log_mel_spectrogram(pcm: &[f32], filters: &MelFilters) -> LogMel {
    let n_mels = filters.n_mels;
    let n_freqs = filters.n_freqs;
    let content = content_frames(pcm.len());
    // Frames after the content whose window [160 i − 200, 160 i + 200) still overlaps the
    // audio: they count towards the global maximum only.
    let overlap_end = (pcm.len() + N_FFT / 2).div_ceil(HOP_LENGTH);
    let computed = overlap_end.max(content);
    let mut logs = vec![0f32; n_mels * computed];
    let mut stft = Stft::new();
    let mut power = vec![0f32; n_freqs];
    for i in 0..computed {
        stft.power(pcm, i, &mut power);
        for m in 0..n_mels {
            let row = &filters.data[m * n_freqs..(m + 1) * n_freqs];
            let e: f32 = row.iter().zip(&power).map(|(w, p)| w * p).sum();
            logs[i * n_mels + m] = e.max(1e-10).log10();
        }
    }
    // The 3000 frames of pure padding are log10(1e-10) = -10.
    let max = logs.iter().copied().fold(-10f32, f32::max);
    let floor = max - 8.0;
    let norm = |v: f32| (v.max(floor) + 4.0) / 4.0;
    let tail_frames = computed - content;
    let mut data = vec![0f32; n_mels * content];
    let mut tail = vec![0f32; n_mels * tail_frames];
    for i in 0..computed {
        for m in 0..n_mels {
            let v = norm(logs[i * n_mels + m]);
            if i < content {
                data[m * content + i] = v;
            } else {
                tail[m * tail_frames + i - content] = v;
            }
        }
    }
    LogMel {
        n_mels,
        n_frames: content,
        data,
        tail_frames,
        tail,
        pad_value: norm(-10.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Independent f64 computation: naive DFT, filterbank from the formula without
    /// float32 rounding, same padding rules written out directly.
    fn reference(pcm: &[f32], n_mels: usize) -> Vec<f64> {
        let n_freqs = N_FFT / 2 + 1;
        // Triangles in Hz space straight from the Slaney scale.
        let top = hz_to_mel(8000.0);
        let pts: Vec<f64> = (0..n_mels + 2)
            .map(|i| mel_to_hz(top * i as f64 / (n_mels + 1) as f64))
            .collect();
        let filt = |m: usize, k: usize| -> f64 {
            let f = k as f64 * 8000.0 / (n_freqs - 1) as f64;
            let (a, b, c) = (pts[m], pts[m + 1], pts[m + 2]);
            let tri = if f <= a || f >= c {
                0.0
            } else if f <= b {
                (f - a) / (b - a)
            } else {
                (c - f) / (c - b)
            };
            tri * 2.0 / (c - a)
        };
        let mut padded: Vec<f64> = pcm.iter().map(|&x| x as f64).collect();
        padded.extend(std::iter::repeat_n(0.0, N_SAMPLES));
        let total = padded.len() / HOP_LENGTH; // frames after dropping the last
        let at = |t: isize| -> f64 { padded[t.unsigned_abs()] };
        let mut logs = Vec::with_capacity(total * n_mels);
        for i in 0..total {
            let start = (i * HOP_LENGTH) as isize - 200;
            let mut power = vec![0f64; n_freqs];
            if start + 400 > 0 && (start as i64) < pcm.len() as i64 {
                for (k, p) in power.iter_mut().enumerate() {
                    let (mut re, mut im) = (0.0, 0.0);
                    for n in 0..N_FFT {
                        let w = 0.5 - 0.5 * (2.0 * std::f64::consts::PI * n as f64 / 400.0).cos();
                        let x = at(start + n as isize) * w;
                        let ph = -2.0 * std::f64::consts::PI * (k * n) as f64 / 400.0;
                        re += x * ph.cos();
                        im += x * ph.sin();
                    }
                    *p = re * re + im * im;
                }
            }
            for m in 0..n_mels {
                let e: f64 = (0..n_freqs).map(|k| filt(m, k) * power[k]).sum();
                logs.push(e.max(1e-10).log10());
            }
        }
        let max = logs.iter().copied().fold(f64::MIN, f64::max);
        let content = pcm.len() / HOP_LENGTH;
        let mut out = vec![0f64; n_mels * content];
        for i in 0..content {
            for m in 0..n_mels {
                out[m * content + i] = (logs[i * n_mels + m].max(max - 8.0) + 4.0) / 4.0;
            }
        }
        out
    }

    #[test]
    fn log_mel_matches_naive_dft_on_a_sine() {
        // 0.1 s of a 440 Hz sine plus a quieter 3 kHz one, starting mid-frame.
        let pcm: Vec<f32> = (0..1700)
            .map(|i| {
                let t = i as f64 / 16000.0;
                (0.5 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()
                    + 0.05 * (2.0 * std::f64::consts::PI * 3000.0 * t).cos()) as f32
            })
            .collect();
        let got = log_mel_spectrogram(&pcm, &MelFilters::whisper(80));
        assert_eq!((got.n_mels, got.n_frames), (80, 10));
        let want = reference(&pcm, 80);
        let max_diff = got
            .data
            .iter()
            .zip(&want)
            .map(|(&g, &w)| (g as f64 - w).abs())
            .fold(0.0, f64::max);
        // Values are O(1); f32 FFT and filterbank rounding stay far below 1e-4.
        assert!(max_diff < 1e-4, "max |diff| = {max_diff:e}");
        // The sine is loud: its bin is near the top, the floor is max - 8 → (max - 4) / 4.
        let peak = got.data.iter().copied().fold(f32::MIN, f32::max);
        let floor = got.data.iter().copied().fold(f32::MAX, f32::min);
        assert!(peak > floor + 1.0, "peak {peak}, floor {floor}");
    }

    #[test]
    fn short_input_and_silence() {
        let f = MelFilters::whisper(80);
        // Fewer samples than a hop: no content frames.
        assert_eq!(log_mel_spectrogram(&[0.1; 100], &f).n_frames, 0);
        // Silence: every value is the floor (-10 + 4) / 4.
        let mel = log_mel_spectrogram(&[0.0; 3200], &f);
        assert_eq!(mel.n_frames, 20);
        assert!(mel.data.iter().all(|&v| v == -1.5));
        // Window extraction pads with zeros in log-mel space.
        let w = mel.window(15, 5, 8);
        assert_eq!(w.len(), 80 * 8);
        assert_eq!(&w[..8], &[-1.5, -1.5, -1.5, -1.5, -1.5, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn filterbank_equals_openai_mel_filters_npz() {
        // Entries recorded from openai-whisper's assets/mel_filters.npz (mel_80), which is
        // librosa.filters.mel(sr=16000, n_fft=400, n_mels=80); see
        // tests/fixtures/mel_filters_80_spot.json (written by make_reference.py).
        let text = include_str!("../tests/fixtures/mel_filters_80_spot.json");
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        let f = MelFilters::whisper(80);
        assert_eq!((f.n_mels, f.n_freqs), (80, 201));
        for s in v["spots"].as_array().unwrap() {
            let (m, k) = (
                s[0].as_u64().unwrap() as usize,
                s[1].as_u64().unwrap() as usize,
            );
            let want = s[2].as_f64().unwrap() as f32;
            let got = f.data[m * 201 + k];
            assert!(
                (got - want).abs() <= f32::EPSILON * want.abs(),
                "filter[{m},{k}] = {got:e}, npz {want:e}"
            );
        }
        for (m, s) in v["row_sums"].as_array().unwrap().iter().enumerate() {
            let want = s.as_f64().unwrap();
            let got: f64 = f.data[m * 201..(m + 1) * 201]
                .iter()
                .map(|&x| x as f64)
                .sum();
            assert!(
                (got - want).abs() < 1e-6 * want.abs().max(1e-3),
                "row {m} sum"
            );
        }
    }
}
