//! Sound tracks: silence, sine beeps, and numbers spoken by `espeak-ng`.
//!
//! ```text
//! Sound::LowBeep/HighBeep ─▶ beeps of 0.15–0.3 s every 0.4–0.7 s (5 ms ramps), amplitude 0.4
//! Sound::Number(n) ─espeak-ng --stdout─▶ 22.05 kHz s16 WAV ─trim silence─▶ sinc resample
//!     ─▶ peak 0.5, repeated with 0.3–0.6 s gaps
//! ─▶ mono f32 at the clip's sample rate, exactly frames / fps seconds long
//! ```
//!
//! The sound is repeated over the whole clip so that an audio encoder that looks at a few
//! seconds anywhere in the clip still hears it. `espeak-ng` is run as a program (it is not a
//! library dependency); its output for a given word and speed is cached per generation run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use videollama_media::resample::{ResampleOptions, SincResampler};

use crate::error::{DemoDataError, Result};
use crate::rng::Rng;
use crate::world::{Sound, NUMBER_WORDS};

/// Speaking rates (words per minute) a clip may use, so that the spoken numbers are not one
/// fixed waveform.
const SPEEDS_WPM: [u32; 3] = [140, 165, 190];

/// Spoken words already synthesised, by (number, words per minute).
type SpeechCache = HashMap<(u8, u32), Arc<Vec<f32>>>;

/// Runs `espeak-ng` and caches its (trimmed, resampled) output per (word, speed).
#[derive(Debug)]
pub(crate) struct Speech {
    program: PathBuf,
    sample_rate: u32,
    cache: Mutex<SpeechCache>,
}

impl Speech {
    pub fn new(program: impl Into<PathBuf>, sample_rate: u32) -> Self {
        Self {
            program: program.into(),
            sample_rate,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Checks that the program starts at all (a clear error up front rather than after
    /// hundreds of clips).
    pub fn check(&self) -> Result<()> {
        Command::new(&self.program)
            .arg("--version")
            .output()
            .map_err(|source| DemoDataError::EspeakMissing {
                program: self.program.clone(),
                source,
            })
            .map(|_| ())
    }

    /// The number `n` spoken at `wpm`, mono f32 at the track's sample rate.
    fn say(&self, n: u8, wpm: u32) -> Result<Arc<Vec<f32>>> {
        if let Some(v) = self.lock().get(&(n, wpm)) {
            return Ok(v.clone());
        }
        let word = NUMBER_WORDS.get(usize::from(n)).copied().unwrap_or("zero");
        let out = Command::new(&self.program)
            .args(["-v", "en", "-s", &wpm.to_string(), "--stdout", word])
            .output()
            .map_err(|source| DemoDataError::EspeakMissing {
                program: self.program.clone(),
                source,
            })?;
        let err = |message: String| DemoDataError::Espeak {
            text: word.to_string(),
            message,
        };
        if !out.status.success() {
            return Err(err(format!(
                "exit status {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let (samples, rate) = parse_wav_s16_mono(&out.stdout).map_err(err)?;
        let trimmed = trim_silence(&samples, 1e-3);
        if trimmed.is_empty() {
            return Err(err("espeak-ng produced only silence".into()));
        }
        let mut y = if rate == self.sample_rate {
            trimmed.to_vec()
        } else {
            SincResampler::new(rate, self.sample_rate, ResampleOptions::default())
                .map_err(|e| {
                    err(format!(
                        "resampling {rate} Hz → {} Hz: {e}",
                        self.sample_rate
                    ))
                })?
                .process(trimmed)
        };
        let peak = y.iter().fold(0f32, |m, v| m.max(v.abs()));
        if peak > 0.0 {
            let g = 0.5 / peak;
            y.iter_mut().for_each(|v| *v *= g);
        }
        let y = Arc::new(y);
        self.lock().insert((n, wpm), y.clone());
        Ok(y)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SpeechCache> {
        // A poisoned cache only means another clip panicked; the data is still valid.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Parses a RIFF/WAVE byte string holding 16-bit PCM mono. The `data` chunk may claim a
/// bogus length (espeak-ng writing to a pipe cannot seek back): everything after its header
/// is taken, clipped to the stated length when that is shorter.
pub(crate) fn parse_wav_s16_mono(bytes: &[u8]) -> std::result::Result<(Vec<f32>, u32), String> {
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err("not a RIFF/WAVE stream".into());
    }
    let mut pos = 12;
    let mut fmt: Option<(u16, u16, u32, u16)> = None;
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let len = u32::from_le_bytes([
            bytes[pos + 4],
            bytes[pos + 5],
            bytes[pos + 6],
            bytes[pos + 7],
        ]) as usize;
        let body = pos + 8;
        if id == b"fmt " {
            if body + 16 > bytes.len() {
                return Err("truncated fmt chunk".into());
            }
            let b = &bytes[body..body + 16];
            let tag = u16::from_le_bytes([b[0], b[1]]);
            let channels = u16::from_le_bytes([b[2], b[3]]);
            let rate = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
            let bits = u16::from_le_bytes([b[14], b[15]]);
            fmt = Some((tag, channels, rate, bits));
        } else if id == b"data" {
            let (tag, channels, rate, bits) = fmt.ok_or("data chunk before fmt chunk")?;
            if tag != 1 || channels != 1 || bits != 16 || rate == 0 {
                return Err(format!(
                    "expected 16-bit PCM mono, got format {tag}, {channels} channel(s), {bits} bits, {rate} Hz"
                ));
            }
            let end = body.saturating_add(len).min(bytes.len());
            let samples = bytes[body..end]
                .chunks_exact(2)
                .map(|c| f32::from(i16::from_le_bytes([c[0], c[1]])) / 32768.0)
                .collect();
            return Ok((samples, rate));
        }
        pos = body.saturating_add(len + (len & 1));
    }
    Err("no data chunk".into())
}

/// The slice between the first and last sample louder than `threshold`.
fn trim_silence(x: &[f32], threshold: f32) -> &[f32] {
    let a = x.iter().position(|v| v.abs() > threshold);
    let b = x.iter().rposition(|v| v.abs() > threshold);
    match (a, b) {
        (Some(a), Some(b)) => &x[a..=b],
        _ => &[],
    }
}

/// Raised-cosine ramp length of the beeps, seconds (avoids clicks).
const RAMP_S: f64 = 0.005;
/// Beep amplitude.
const BEEP_AMPLITUDE: f64 = 0.4;

/// Synthesises a clip's sound track: `n_samples` mono f32 at `sample_rate`. The pattern
/// (beep lengths, gaps, speaking rate) is drawn from `rng`.
pub(crate) fn synthesize(
    sound: Sound,
    n_samples: usize,
    sample_rate: u32,
    rng: &mut Rng,
    speech: &Speech,
) -> Result<Vec<f32>> {
    let sr = f64::from(sample_rate);
    let mut out = vec![0f32; n_samples];
    match sound {
        Sound::Silence => {}
        Sound::LowBeep { freq_hz } | Sound::HighBeep { freq_hz } => {
            let on = rng.range_f64(0.15, 0.3);
            let period = on + rng.range_f64(0.25, 0.4);
            let mut t0 = rng.range_f64(0.0, 0.2);
            let on_n = (on * sr) as usize;
            let ramp = ((RAMP_S * sr) as usize).max(1);
            while ((t0 * sr) as usize) < n_samples {
                let s0 = (t0 * sr) as usize;
                for k in 0..on_n.min(n_samples - s0) {
                    let env = if k < ramp {
                        0.5 - 0.5 * (std::f64::consts::PI * k as f64 / ramp as f64).cos()
                    } else if on_n - k <= ramp {
                        0.5 - 0.5 * (std::f64::consts::PI * (on_n - k) as f64 / ramp as f64).cos()
                    } else {
                        1.0
                    };
                    let t = (s0 + k) as f64 / sr;
                    out[s0 + k] =
                        (BEEP_AMPLITUDE * env * (2.0 * std::f64::consts::PI * freq_hz * t).sin())
                            as f32;
                }
                t0 += period;
            }
        }
        Sound::Number { number } => {
            let wpm = *rng.choose(&SPEEDS_WPM).unwrap_or(&165);
            let word = speech.say(number, wpm)?;
            let gap = rng.range_f64(0.3, 0.6);
            let mut s0 = (rng.range_f64(0.0, 0.3) * sr) as usize;
            while s0 < n_samples {
                let n = word.len().min(n_samples - s0);
                out[s0..s0 + n].copy_from_slice(&word[..n]);
                s0 += word.len() + (gap * sr) as usize;
            }
        }
    }
    Ok(out)
}

/// Whether `program` can be found and started.
pub fn espeak_available(program: &Path) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wav_parser_accepts_pipe_headers_and_rejects_garbage() {
        let mut b = Vec::new();
        b.extend_from_slice(b"RIFF\xff\xff\xff\x7fWAVEfmt \x10\0\0\0\x01\0\x01\0");
        b.extend_from_slice(&22050u32.to_le_bytes());
        b.extend_from_slice(&44100u32.to_le_bytes());
        b.extend_from_slice(b"\x02\0\x10\0data\xff\xff\xff\x7f");
        b.extend_from_slice(&16384i16.to_le_bytes());
        b.extend_from_slice(&(-32768i16).to_le_bytes());
        let (s, r) = parse_wav_s16_mono(&b).unwrap();
        assert_eq!(r, 22050);
        assert_eq!(s, vec![0.5, -1.0]);
        assert!(parse_wav_s16_mono(b"RIFF").is_err());
        assert!(parse_wav_s16_mono(&b[..20]).is_err());
    }

    #[test]
    fn missing_espeak_is_a_clear_error() {
        let s = Speech::new("/nonexistent/espeak-ng-xyz", 16000);
        let e = s.check().unwrap_err().to_string();
        assert!(e.contains("espeak-ng") && e.contains("apt-get"), "{e}");
        let mut rng = Rng::new(1);
        assert!(synthesize(Sound::Number { number: 2 }, 100, 16000, &mut rng, &s).is_err());
    }

    #[test]
    fn beeps_have_their_frequency_and_silence_is_silent() {
        let s = Speech::new("espeak-ng", 16000);
        let mut rng = Rng::new(1);
        let x = synthesize(
            Sound::HighBeep { freq_hz: 1500.0 },
            32000,
            16000,
            &mut rng,
            &s,
        )
        .unwrap();
        // Single-bin DFT magnitudes: the beep frequency beats its neighbours.
        let mag = |f: f64| {
            let (mut re, mut im) = (0.0, 0.0);
            for (k, &v) in x.iter().enumerate() {
                let ph = 2.0 * std::f64::consts::PI * f * k as f64 / 16000.0;
                re += f64::from(v) * ph.cos();
                im += f64::from(v) * ph.sin();
            }
            (re * re + im * im).sqrt()
        };
        let at = mag(1500.0);
        for f in [300.0, 1400.0, 1450.0, 1550.0, 1600.0] {
            assert!(at > 5.0 * mag(f), "{f} Hz");
        }
        assert!(x.iter().filter(|v| v.abs() > 0.2).count() > 4000);
        let y = synthesize(Sound::Silence, 1000, 16000, &mut rng, &s).unwrap();
        assert!(y.iter().all(|&v| v == 0.0));
    }
}
