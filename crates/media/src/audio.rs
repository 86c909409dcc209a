//! VideoLLaMA2.1-AV audio preprocessing (spec §7.1, §7.2): from samples to the
//! `2998 × 128` fbank the BEATs encoder consumes.
//!
//! * **Audio files** (`process_audio_file`): channel 0 only ([`channel0`]) → crop to
//!   30 s at the original rate or zero-pad to exactly `30·sr` ([`pad_or_crop`]) →
//!   FFT resampling to 16 kHz like `librosa.resample(res_type="fft")` /
//!   `scipy.signal.resample` ([`fft_resample`]) → `× 2^15` → fbank in **f64**
//!   ([`file_waveform`], [`audio_file_fbank`], [`load_wav`]).
//! * **Audio of a video** (`process_audio_from_video`, `va=True`): the 16 kHz mono
//!   float32 samples that `ffmpeg -ac 1 -ar 16000 -f s16le` produces (decoded
//!   elsewhere) → 8 clips of 2 s from pytorchvideo 0.1.5's
//!   `ConstantClipsPerVideoSampler` ([`clip_sample_bounds`], exact rational
//!   arithmetic) → concatenate → pad to 480000 → `× 2^15` → fbank in **f32**
//!   ([`video_audio_waveform`], [`video_audio_fbank`]).
//!
//! The reference then casts the fbank to bfloat16; [`to_bf16_rounding`] reproduces
//! that rounding on `f32` values.
//!
//! **Random crop.** Audio longer than 30 s is cropped at a *random* start in the
//! reference (Python `random.randint` for files, `torch.randint` for videos), so its
//! output is not reproducible. [`CropMode::Start`] (the default) keeps the first 30 s;
//! [`CropMode::Seeded`] picks a reproducible pseudo-random start with this crate's
//! own generator (it does not replay Python's or torch's random streams).

use std::path::Path;

use realfft::num_complex::Complex;
use realfft::RealFftPlanner;

use crate::error::{MediaError, Result};
use crate::fbank::{Fbank, Features};

/// Sample rate the audio encoder expects.
pub const TARGET_SAMPLE_RATE: u32 = 16000;
/// Length of the audio window in seconds.
pub const AUDIO_SECONDS: usize = 30;
/// Samples after padding/resampling: 30 s at 16 kHz.
pub const NUM_SAMPLES: usize = AUDIO_SECONDS * TARGET_SAMPLE_RATE as usize;
/// fbank frames of a 480000-sample waveform.
pub const NUM_FRAMES: usize = 2998;
/// Mel bins.
pub const NUM_MEL_BINS: usize = 128;
/// The reference multiplies the waveform by `2^15` before the fbank.
pub const WAVEFORM_SCALE: f64 = 32768.0;
/// Highest sample rate [`file_waveform`] accepts (30 s of it are materialised).
pub const MAX_SAMPLE_RATE: u32 = 768_000;
/// Clip length of the video-audio sampler, seconds.
pub const CLIP_DURATION_S: u32 = 2;
/// Clips per video of the video-audio sampler.
pub const CLIPS_PER_VIDEO: usize = 8;

/// How to shorten audio longer than 30 s.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CropMode {
    /// Keep the first 30 s (deterministic; differs from the reference's random crop).
    #[default]
    Start,
    /// A reproducible pseudo-random start in `0..=excess`, from this seed.
    Seeded(u64),
}

/// Start offset for cropping `excess` surplus samples under `mode`.
pub fn crop_offset(excess: usize, mode: CropMode) -> usize {
    match mode {
        CropMode::Start => 0,
        CropMode::Seeded(seed) => {
            // splitmix64
            let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z % (excess as u64 + 1)) as usize
        }
    }
}

/// Crops (per `mode`) or zero-pads at the end to exactly `len` samples.
pub fn pad_or_crop<T: Copy + Default>(x: &[T], len: usize, mode: CropMode) -> Vec<T> {
    if x.len() > len {
        let s = crop_offset(x.len() - len, mode);
        x[s..s + len].to_vec()
    } else {
        let mut v = Vec::with_capacity(len);
        v.extend_from_slice(x);
        v.resize(len, T::default());
        v
    }
}

/// Channel 0 of interleaved multi-channel samples (the reference keeps only the
/// first channel, no down-mix).
pub fn channel0<T: Copy>(interleaved: &[T], channels: usize) -> Vec<T> {
    if channels <= 1 {
        return interleaved.to_vec();
    }
    interleaved.iter().step_by(channels).copied().collect()
}

/// Output length of `librosa.resample`: `ceil(n · (target / orig))` in f64.
pub fn resampled_len(n: usize, orig_sr: u32, target_sr: u32) -> usize {
    let ratio = target_sr as f64 / orig_sr as f64;
    (n as f64 * ratio).ceil() as usize
}

/// `scipy.signal.resample(x, num)` for real input (what `librosa.resample(...,
/// res_type="fft")` calls), in f64: `X = rfft(x)`; keep bins `0..=N/2` with
/// `N = min(num, len)`; when `N` is even the bin `N/2` is doubled (downsampling) or
/// halved (upsampling); `y = irfft(Y, num) · num/len`.
pub fn fft_resample(x: &[f64], num: usize) -> Vec<f64> {
    let nx = x.len();
    if nx == 0 || num == 0 {
        return vec![0.0; num];
    }
    let mut planner = RealFftPlanner::<f64>::new();
    let fwd = planner.plan_fft_forward(nx);
    let mut input = x.to_vec();
    let mut spec = fwd.make_output_vec();
    fwd.process(&mut input, &mut spec)
        .expect("FFT buffers have the planned sizes");
    let n = num.min(nx);
    let nyq = n / 2 + 1;
    let mut y = vec![Complex::new(0.0f64, 0.0); num / 2 + 1];
    y[..nyq].copy_from_slice(&spec[..nyq]);
    if n.is_multiple_of(2) {
        if num < nx {
            y[n / 2] *= 2.0;
        } else if num > nx {
            y[n / 2] *= 0.5;
        }
    }
    // A real inverse transform ignores the imaginary parts of DC and (even-length) Nyquist.
    y[0].im = 0.0;
    if num.is_multiple_of(2) {
        y[num / 2].im = 0.0;
    }
    let inv = planner.plan_fft_inverse(num);
    let mut out = inv.make_output_vec();
    inv.process(&mut y, &mut out)
        .expect("FFT buffers have the planned sizes");
    // pocketfft's backward normalisation (× 1/num), then scipy's × num/len.
    let norm = 1.0 / num as f64;
    let scale = num as f64 / nx as f64;
    for v in out.iter_mut() {
        *v = (*v * norm) * scale;
    }
    out
}

/// §7.1 steps 2–4: channel-0 samples at `sample_rate` (float64 in [−1, 1), as
/// `soundfile.read` returns them) → 30-s crop/pad at the original rate → FFT
/// resampling to 16 kHz (when `sample_rate ≠ 16000`) → `× 2^15`. Returns 480000
/// samples (for the usual rates; in general `ceil(30·sr·16000/sr)`).
pub fn file_waveform(samples: &[f64], sample_rate: u32, crop: CropMode) -> Result<Vec<f64>> {
    if sample_rate == 0 || sample_rate > MAX_SAMPLE_RATE {
        return Err(MediaError::Audio(format!(
            "unsupported sample rate {sample_rate} Hz (accepted: 1..={MAX_SAMPLE_RATE})"
        )));
    }
    let len = AUDIO_SECONDS
        .checked_mul(sample_rate as usize)
        .ok_or_else(|| MediaError::Audio(format!("sample rate {sample_rate} is too large")))?;
    let x = pad_or_crop(samples, len, crop);
    let mut y = if sample_rate != TARGET_SAMPLE_RATE {
        fft_resample(&x, resampled_len(len, sample_rate, TARGET_SAMPLE_RATE))
    } else {
        x
    };
    for v in y.iter_mut() {
        *v *= WAVEFORM_SCALE;
    }
    Ok(y)
}

/// Decoded WAV audio: interleaved samples as f64 in [−1, 1).
#[derive(Clone, Debug, PartialEq)]
pub struct WavAudio {
    /// Sample rate in Hz.
    pub sample_rate: u32,
    /// Channel count.
    pub channels: usize,
    /// Interleaved samples, scaled like libsndfile's float reads
    /// (integer PCM divided by `2^(bits−1)`; 8-bit is unsigned, centred at 128).
    pub samples: Vec<f64>,
}

impl WavAudio {
    /// Channel 0 (see [`channel0`]).
    pub fn channel0(&self) -> Vec<f64> {
        channel0(&self.samples, self.channels)
    }
}

/// Reads a WAV file (PCM 8/16/24/32-bit or IEEE float) the way `soundfile.read`
/// returns it as float64.
pub fn load_wav(path: impl AsRef<Path>) -> Result<WavAudio> {
    let path = path.as_ref();
    let err = |message: String| MediaError::Decode {
        path: path.to_path_buf(),
        message,
    };
    let file = std::fs::File::open(path).map_err(|source| MediaError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let reader =
        hound::WavReader::new(std::io::BufReader::new(file)).map_err(|e| err(e.to_string()))?;
    let spec = reader.spec();
    if spec.channels == 0 || spec.sample_rate == 0 {
        return Err(err(format!(
            "invalid WAV header: {} channels at {} Hz",
            spec.channels, spec.sample_rate
        )));
    }
    // Do not trust the header's length for the allocation.
    let cap = (reader.len() as usize).min(1 << 24);
    let mut samples = Vec::with_capacity(cap);
    match spec.sample_format {
        hound::SampleFormat::Float => {
            if spec.bits_per_sample != 32 {
                return Err(err(format!(
                    "unsupported float WAV with {} bits",
                    spec.bits_per_sample
                )));
            }
            for s in reader.into_samples::<f32>() {
                samples.push(s.map_err(|e| err(e.to_string()))? as f64);
            }
        }
        hound::SampleFormat::Int => {
            let bits = spec.bits_per_sample;
            if !(1..=32).contains(&bits) {
                return Err(err(format!("unsupported PCM WAV with {bits} bits")));
            }
            // hound returns 8-bit samples already re-centred to signed values.
            let scale = 1.0 / (1u64 << (bits - 1)) as f64;
            for s in reader.into_samples::<i32>() {
                samples.push(s.map_err(|e| err(e.to_string()))? as f64 * scale);
            }
        }
    }
    Ok(WavAudio {
        sample_rate: spec.sample_rate,
        channels: spec.channels as usize,
        samples,
    })
}

/// The whole `process_audio_file` for a WAV file, before the bf16 cast: channel 0 →
/// [`file_waveform`] → fbank in f64. Returns `2998 × 128` features (f64).
pub fn audio_file_fbank(path: impl AsRef<Path>, crop: CropMode) -> Result<Features<f64>> {
    let wav = load_wav(&path)?;
    let w = file_waveform(&wav.channel0(), wav.sample_rate, crop)?;
    Ok(Fbank::compute_f64(&w))
}

/// Sample ranges `[start, end)` of the clips pytorchvideo 0.1.5's
/// `ConstantClipsPerVideoSampler(clip_duration, clips_per_video)` yields over audio of
/// `num_samples` samples at `sample_rate` (spec §7.2), before clamping to the signal:
/// `D = n/sr` (f64), `m = max(D − clip, 0)` (f64, then exact), `u = m / clips`,
/// clip k = `[trunc(sr·u·k), trunc(sr·(u·k + clip)))`, computed exactly with
/// rational (i128) arithmetic. (The reference's early stop when `u·(k+1) > m` can
/// never trigger, so exactly `clips_per_video` clips are returned.)
pub fn clip_sample_bounds(
    num_samples: usize,
    sample_rate: u32,
    clip_duration_s: u32,
    clips_per_video: usize,
) -> Vec<(usize, usize)> {
    if clips_per_video == 0 || sample_rate == 0 {
        return Vec::new();
    }
    let duration = num_samples as f64 / sample_rate as f64;
    let m = (duration - clip_duration_s as f64).max(0.0);
    // m = mant · 2^exp exactly.
    let (mant, exp) = decompose(m);
    let sr = sample_rate as i128;
    let clips = clips_per_video as i128;
    let mut out = Vec::with_capacity(clips_per_video);
    for k in 0..clips_per_video as i128 {
        // start = trunc(sr · k · m / clips), all non-negative so trunc = floor.
        let start = floor_mul_pow2(sr * k * mant as i128, exp, clips);
        let end = start + sr * clip_duration_s as i128;
        out.push((start as usize, end as usize));
        // is_last_clip: index reached `clips`, or u·(k+1) > m  ⇔  (k+1) > clips.
        if k + 1 >= clips {
            break;
        }
    }
    out
}

/// Splits a non-negative finite f64 into `mant · 2^exp` with integer `mant`.
fn decompose(x: f64) -> (u64, i32) {
    if x == 0.0 {
        return (0, 0);
    }
    let bits = x.to_bits();
    let e = ((bits >> 52) & 0x7ff) as i32;
    let frac = bits & ((1u64 << 52) - 1);
    if e == 0 {
        (frac, -1074)
    } else {
        (frac | (1u64 << 52), e - 1075)
    }
}

/// `floor(num · 2^exp / den)` for `num ≥ 0`, `den > 0`, exactly.
fn floor_mul_pow2(num: i128, exp: i32, den: i128) -> i128 {
    if num == 0 {
        return 0;
    }
    if exp >= 0 {
        // Durations are far below 2^60 s, so this cannot overflow for audio inputs.
        (num << exp.min(60)) / den
    } else {
        let sh = (-exp) as u32;
        if sh >= 126 {
            return 0;
        }
        // floor(num / (den · 2^sh)) = floor(floor(num / 2^sh) / den)
        (num >> sh) / den
    }
}

/// §7.2 steps 2–4 on the 16 kHz mono float32 samples of a video's audio track
/// (int16 / 32768, as `ffmpeg … -f s16le` + numpy produce them): clip sampling →
/// concatenation → crop/pad to 480000 → `× 2^15`. An empty input behaves like the
/// reference's decode-failure fallback (480000 zeros).
pub fn video_audio_waveform(samples: &[f32], crop: CropMode) -> Vec<f32> {
    let fallback;
    let samples = if samples.is_empty() {
        fallback = vec![0f32; NUM_SAMPLES];
        &fallback[..]
    } else {
        samples
    };
    let mut wav =
        Vec::with_capacity(CLIPS_PER_VIDEO * (CLIP_DURATION_S * TARGET_SAMPLE_RATE) as usize);
    for (s, e) in clip_sample_bounds(
        samples.len(),
        TARGET_SAMPLE_RATE,
        CLIP_DURATION_S,
        CLIPS_PER_VIDEO,
    ) {
        let s = s.min(samples.len());
        let e = e.min(samples.len());
        wav.extend_from_slice(&samples[s..e]);
    }
    let mut w = pad_or_crop(&wav, NUM_SAMPLES, crop);
    for v in w.iter_mut() {
        *v *= WAVEFORM_SCALE as f32;
    }
    w
}

/// [`video_audio_waveform`] followed by the float32 fbank: `2998 × 128` features
/// before the bf16 cast.
pub fn video_audio_fbank(samples: &[f32], crop: CropMode) -> Features<f32> {
    Fbank::compute_f32(&video_audio_waveform(samples, crop))
}

/// Rounds an `f32` to the nearest bfloat16 (ties to even, NaN kept quiet) and widens
/// it back to `f32` — `torch.Tensor.to(torch.bfloat16)` followed by `.float()`.
/// The reference's float64 fbank goes f64 → bf16 through `f32` (c10's `BFloat16`
/// converts from `float`), so apply this to the `f32` cast of f64 values.
pub fn to_bf16_rounding(x: f32) -> f32 {
    let bits = x.to_bits();
    if x.is_nan() {
        return f32::from_bits(0x7FC0_0000);
    }
    let bias = ((bits >> 16) & 1) + 0x7FFF;
    f32::from_bits((bits.wrapping_add(bias)) & 0xFFFF_0000)
}

/// [`to_bf16_rounding`] applied in place to a slice.
pub fn round_to_bf16_in_place(xs: &mut [f32]) {
    for x in xs {
        *x = to_bf16_rounding(*x);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_clip_starts() {
        // The AV fixture's decoded audio has n = 38638 samples (spec §7.2).
        let b = clip_sample_bounds(38638, 16000, 2, 8);
        let starts: Vec<usize> = b.iter().map(|c| c.0).collect();
        assert_eq!(starts, vec![0, 829, 1659, 2489, 3318, 4148, 4978, 5808]);
        assert!(b.iter().all(|&(s, e)| e - s == 32000));
        // k = 4 is 3318.99999… exactly (m = 0.41487499999999994 after the f64 subtraction).
        assert_eq!(b[4], (3318, 35318));
    }

    #[test]
    fn short_audio_repeats_from_zero() {
        let b = clip_sample_bounds(20000, 16000, 2, 8);
        assert_eq!(b, vec![(0, 32000); 8]);
        let w = video_audio_waveform(&vec![0.5f32; 20000], CropMode::Start);
        assert_eq!(w.len(), NUM_SAMPLES);
        // 8 copies of 20000 samples, then zeros.
        assert!(w[..160000].iter().all(|&v| v == 16384.0));
        assert!(w[160000..].iter().all(|&v| v == 0.0));
        // Decode-failure fallback: 480000 zeros -> m = 28 s, clips of zeros.
        assert!(video_audio_waveform(&[], CropMode::Start)
            .iter()
            .all(|&v| v == 0.0));
    }

    #[test]
    fn long_audio_clip_bounds() {
        // 10 s: m = 8, u = 1 -> starts 0..7 s.
        let b = clip_sample_bounds(160000, 16000, 2, 8);
        let want: Vec<(usize, usize)> = (0..8).map(|k| (k * 16000, k * 16000 + 32000)).collect();
        assert_eq!(b, want);
    }

    #[test]
    fn pad_crop_and_channels() {
        assert_eq!(
            pad_or_crop(&[1, 2, 3], 5, CropMode::Start),
            vec![1, 2, 3, 0, 0]
        );
        assert_eq!(
            pad_or_crop(&[1, 2, 3, 4, 5], 3, CropMode::Start),
            vec![1, 2, 3]
        );
        let c = pad_or_crop(&[1, 2, 3, 4, 5], 3, CropMode::Seeded(7));
        assert_eq!(c, pad_or_crop(&[1, 2, 3, 4, 5], 3, CropMode::Seeded(7)));
        assert!(c[0] >= 1 && c[0] <= 3 && c[2] == c[0] + 2);
        assert_eq!(channel0(&[1, 10, 2, 20, 3, 30], 2), vec![1, 2, 3]);
        assert_eq!(resampled_len(1_323_000, 44100, 16000), 480000);
        assert!(file_waveform(&[0.0; 10], 0, CropMode::Start).is_err());
        assert!(file_waveform(&[0.0; 10], u32::MAX, CropMode::Start).is_err());
        // 16 kHz input is only padded and scaled.
        let w = file_waveform(&[0.5, -0.25], 16000, CropMode::Start).unwrap();
        assert_eq!(
            (w.len(), w[0], w[1], w[2]),
            (NUM_SAMPLES, 16384.0, -8192.0, 0.0)
        );
    }

    #[test]
    fn fft_resample_sine() {
        // A low-frequency sine survives 3:1 downsampling essentially unchanged.
        let n = 3000;
        let x: Vec<f64> = (0..n)
            .map(|i| (2.0 * std::f64::consts::PI * 5.0 * i as f64 / n as f64).sin())
            .collect();
        let y = fft_resample(&x, 1000);
        assert_eq!(y.len(), 1000);
        for (i, v) in y.iter().enumerate() {
            let e = (2.0 * std::f64::consts::PI * 5.0 * i as f64 / 1000.0).sin();
            assert!((v - e).abs() < 1e-9, "{i}: {v} vs {e}");
        }
        // Upsampling too.
        let z = fft_resample(&y, 3000);
        for (a, b) in z.iter().zip(&x) {
            assert!((a - b).abs() < 1e-9);
        }
    }

    #[test]
    fn fft_resample_nyquist_rule() {
        // x = [1, 0, 0, 0] -> num 2: X = [1, 1, 1]; keep bins 0..=1, bin 1 doubled -> Y = [1, 2];
        // irfft([1, 2], 2) = [(1 + 2)/2, (1 - 2)/2] = [1.5, -0.5]; × 2/4 -> [0.75, -0.25].
        let y = fft_resample(&[1.0, 0.0, 0.0, 0.0], 2);
        assert!(
            (y[0] - 0.75).abs() < 1e-15 && (y[1] + 0.25).abs() < 1e-15,
            "{y:?}"
        );
    }

    #[test]
    fn bf16_rounding() {
        assert_eq!(to_bf16_rounding(1.0), 1.0);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even -> 1.
        assert_eq!(to_bf16_rounding(1.0 + 1.0 / 256.0), 1.0);
        // 1 + 3·2^-8 is halfway between 1+2^-7 and 1+2^-6: ties to even -> 1 + 2^-6.
        assert_eq!(to_bf16_rounding(1.0 + 3.0 / 256.0), 1.0 + 1.0 / 64.0);
        assert_eq!(
            to_bf16_rounding(1.0 + 1.0 / 256.0 + 1e-6),
            1.0 + 1.0 / 128.0
        );
        assert_eq!(to_bf16_rounding(-2.5), -2.5);
        assert!(to_bf16_rounding(f32::NAN).is_nan());
        assert_eq!(to_bf16_rounding(f32::INFINITY), f32::INFINITY);
    }
}
