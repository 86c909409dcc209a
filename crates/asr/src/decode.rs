//! Greedy decoding of one 30-s window and its split into timed segments, as
//! openai-whisper's `DecodingTask` (temperature 0, timestamps on) and the segment logic of
//! `transcribe()`.
//!
//! Per step, on the logits of the last position (`[vocab]`, f32), in openai's order:
//!
//! 1. *SuppressBlank* — at the first sampled step: the blank `" "` and EOT.
//! 2. *SuppressTokens* — always: the non-speech symbols plus `transcribe`, `translate`,
//!    `sot`, `sot_prev`, `sot_lm` and `no_speech`.
//! 3. *ApplyTimestampRules* — `<|notimestamps|>` never; timestamps come in pairs: after a
//!    timestamp that follows text only another timestamp or EOT may come, after a pair (or
//!    the opening timestamp) only text; timestamps never decrease and a segment cannot end
//!    where it started; the first token is a timestamp no later than
//!    `max_initial_timestamp`; when the total probability of the timestamps exceeds that of
//!    the most likely text token, a timestamp is forced.
//!
//! then `argmax` (first maximum, as torch) and the log-probability of the choice is added
//! to the sum (EOT included). Decoding stops at EOT or after `sample_len` tokens.

use candle_core::{IndexOp, Tensor};

use crate::model::WhisperModel;
use crate::tokenizer::SpecialTokens;

type Result<T> = candle_core::Result<T>;

/// What one window decoded to.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodingResult {
    /// Sampled tokens (after the start sequence), without the final EOT.
    pub tokens: Vec<u32>,
    /// Sum of the log-probabilities of the sampled tokens, EOT included.
    pub sum_logprob: f64,
    /// `sum_logprob / (tokens.len() + 1)` (openai's `avg_logprob`).
    pub avg_logprob: f64,
    /// Probability of `<|nospeech|>` right after `<|startoftranscript|>` (NaN if the
    /// vocabulary has no such token).
    pub no_speech_prob: f64,
}

/// Decoding settings that do not change between windows.
#[derive(Debug, Clone)]
pub struct GreedyDecoder<'a> {
    pub model: &'a WhisperModel,
    pub specials: &'a SpecialTokens,
    /// Suppressed at every step (sorted, within the vocabulary).
    pub suppress: &'a [u32],
    /// Suppressed at the first sampled step.
    pub begin_suppress: &'a [u32],
    /// Maximum sampled tokens (openai: `n_text_ctx / 2`).
    pub sample_len: usize,
    /// Latest allowed first timestamp, in timestamp steps (openai: 1.0 s / 0.02 s = 50).
    pub max_initial_timestamp_index: Option<usize>,
}

/// `log_softmax` of `x` in f64.
fn log_softmax(x: &[f32]) -> Vec<f64> {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    if !max.is_finite() {
        return vec![f64::NEG_INFINITY; x.len()];
    }
    let lse = x.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln() + max;
    x.iter().map(|&v| v as f64 - lse).collect()
}

fn logsumexp(x: &[f64]) -> f64 {
    let max = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() {
        return max;
    }
    x.iter().map(|&v| (v - max).exp()).sum::<f64>().ln() + max
}

/// Index of the first maximum (torch `argmax`).
fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

fn mask(logits: &mut [f32], range: std::ops::Range<usize>) {
    let end = range.end.min(logits.len());
    let start = range.start.min(end);
    logits[start..end].fill(f32::NEG_INFINITY);
}

impl GreedyDecoder<'_> {
    /// Applies the logit filters (module docs) for the next token after `sampled`.
    pub fn apply_filters(&self, logits: &mut [f32], sampled: &[u32]) {
        let n = logits.len();
        let ts = self.specials.timestamp_begin as usize;
        let eot = self.specials.eot as usize;
        let set = |logits: &mut [f32], id: u32| {
            if let Some(l) = logits.get_mut(id as usize) {
                *l = f32::NEG_INFINITY;
            }
        };
        if sampled.is_empty() {
            for &t in self.begin_suppress {
                set(logits, t);
            }
        }
        for &t in self.suppress {
            set(logits, t);
        }
        // Timestamp rules.
        set(logits, self.specials.no_timestamps);
        let is_ts = |t: u32| t as usize >= ts;
        let last_was_ts = sampled.last().is_some_and(|&t| is_ts(t));
        let penultimate_was_ts = sampled.len() < 2 || is_ts(sampled[sampled.len() - 2]);
        if last_was_ts {
            if penultimate_was_ts {
                mask(logits, ts..n);
            } else {
                mask(logits, 0..eot);
            }
        }
        if let Some(&last_ts) = sampled.iter().rev().find(|&&t| is_ts(t)) {
            let last = if last_was_ts && !penultimate_was_ts {
                last_ts
            } else {
                last_ts + 1
            };
            mask(logits, ts..last as usize);
        }
        if sampled.is_empty() {
            mask(logits, 0..ts);
            if let Some(m) = self.max_initial_timestamp_index {
                mask(logits, ts + m + 1..n);
            }
        }
        if ts < n {
            let lp = log_softmax(logits);
            let ts_mass = logsumexp(&lp[ts..]);
            let max_text = lp[..ts].iter().copied().fold(f64::NEG_INFINITY, f64::max);
            if ts_mass > max_text {
                mask(logits, 0..ts);
            }
        }
    }

    /// Greedy decoding of one window: `audio` `[1, n_audio_ctx, d]` from the encoder,
    /// `initial` the start sequence (`sot [lang task]`), `sot_index` the position of `sot` in it.
    pub fn decode(
        &self,
        audio: &Tensor,
        initial: &[u32],
        sot_index: usize,
    ) -> Result<DecodingResult> {
        let dec = &self.model.decoder;
        let dev = self.model.device();
        let mut cache = dec.start(audio)?;
        let hidden = dec.forward(&Tensor::new(initial, dev)?.unsqueeze(0)?, &mut cache)?;
        let n0 = initial.len();
        let no_speech_prob = match self.specials.no_speech {
            Some(ns) => {
                let l: Vec<f32> = dec.logits(&hidden.i((0, sot_index))?)?.to_vec1()?;
                let lp = log_softmax(&l);
                lp.get(ns as usize).map_or(f64::NAN, |v| v.exp())
            }
            None => f64::NAN,
        };
        let mut logits: Vec<f32> = dec.logits(&hidden.i((0, n0 - 1))?)?.to_vec1()?;
        let mut tokens = initial.to_vec();
        let mut sum_logprob = 0f64;
        let n_ctx = self.model.dims.n_text_ctx;
        for _ in 0..self.sample_len {
            self.apply_filters(&mut logits, &tokens[n0..]);
            let next = argmax(&logits);
            sum_logprob += log_softmax(&logits)[next as usize];
            tokens.push(next);
            if next == self.specials.eot || tokens.len() > n_ctx {
                break;
            }
            let h = dec.forward(&Tensor::new(&[next], dev)?.unsqueeze(0)?, &mut cache)?;
            logits = dec.logits(&h.i((0, 0))?)?.to_vec1()?;
        }
        let mut sampled = tokens.split_off(n0);
        if let Some(end) = sampled.iter().position(|&t| t == self.specials.eot) {
            sampled.truncate(end);
        }
        let avg_logprob = sum_logprob / (sampled.len() + 1) as f64;
        Ok(DecodingResult {
            tokens: sampled,
            sum_logprob,
            avg_logprob,
            no_speech_prob,
        })
    }

    /// openai's `detect_language`: the most likely language token after `sot` and its
    /// probability among the language tokens.
    pub fn detect_language(&self, audio: &Tensor) -> Result<(u32, f64)> {
        let dec = &self.model.decoder;
        let mut cache = dec.start(audio)?;
        let sot = [self.specials.sot];
        let h = dec.forward(
            &Tensor::new(&sot, self.model.device())?.unsqueeze(0)?,
            &mut cache,
        )?;
        let logits: Vec<f32> = dec.logits(&h.i((0, 0))?)?.to_vec1()?;
        let mut only = vec![f32::NEG_INFINITY; logits.len()];
        for (_, id) in &self.specials.languages {
            if let Some(&l) = logits.get(*id as usize) {
                only[*id as usize] = l;
            }
        }
        let best = argmax(&only);
        let p = log_softmax(&only)[best as usize].exp();
        Ok((best, p))
    }
}

/// A segment of one window before text decoding: times in seconds and its tokens
/// (timestamps included, as openai keeps them).
#[derive(Debug, Clone, PartialEq)]
pub struct RawSegment {
    pub start_s: f64,
    pub end_s: f64,
    pub tokens: Vec<u32>,
}

/// openai's split of a window's tokens into segments at consecutive timestamp pairs, and
/// how many mel frames to advance `seek` by.
///
/// * `time_offset`: start of the window in seconds;
/// * `segment_frames`: content frames in the window (≤ 3000);
/// * `input_stride`: mel frames per timestamp step (2), `time_precision` seconds per step
///   (0.02).
pub fn split_segments(
    tokens: &[u32],
    timestamp_begin: u32,
    time_offset: f64,
    segment_frames: usize,
    input_stride: usize,
    time_precision: f64,
) -> (Vec<RawSegment>, usize) {
    let is_ts: Vec<bool> = tokens.iter().map(|&t| t >= timestamp_begin).collect();
    let pos = |t: u32| (t - timestamp_begin) as f64;
    let n = tokens.len();
    let single_timestamp_ending = n >= 2 && !is_ts[n - 2] && is_ts[n - 1];
    let consecutive: Vec<usize> = (1..n).filter(|&i| is_ts[i - 1] && is_ts[i]).collect();
    let mut out = Vec::new();
    if !consecutive.is_empty() {
        let mut slices = consecutive;
        if single_timestamp_ending {
            slices.push(n);
        }
        let mut last = 0;
        for &cur in &slices {
            let s = &tokens[last..cur];
            out.push(RawSegment {
                start_s: time_offset + pos(s[0]) * time_precision,
                end_s: time_offset + pos(s[s.len() - 1]) * time_precision,
                tokens: s.to_vec(),
            });
            last = cur;
        }
        let advance = if single_timestamp_ending {
            segment_frames
        } else {
            (tokens[last - 1] - timestamp_begin) as usize * input_stride
        };
        (out, advance)
    } else {
        let mut duration =
            segment_frames as f64 * crate::mel::HOP_LENGTH as f64 / crate::mel::SAMPLE_RATE as f64;
        if let Some(&last_ts) = tokens.iter().rev().find(|&&t| t >= timestamp_begin) {
            if last_ts != timestamp_begin {
                duration = pos(last_ts) * time_precision;
            }
        }
        out.push(RawSegment {
            start_s: time_offset,
            end_s: time_offset + duration,
            tokens: tokens.to_vec(),
        });
        (out, segment_frames)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TS: u32 = 100;

    #[test]
    fn split_like_openai() {
        // <0.00> a b <0.50><0.50> c <1.00>  → two segments, single timestamp ending.
        let toks = [TS, 1, 2, TS + 25, TS + 25, 3, TS + 50];
        let (segs, adv) = split_segments(&toks, TS, 10.0, 3000, 2, 0.02);
        assert_eq!(segs.len(), 2);
        assert_eq!((segs[0].start_s, segs[0].end_s), (10.0, 10.5));
        assert_eq!(segs[0].tokens, vec![TS, 1, 2, TS + 25]);
        assert_eq!((segs[1].start_s, segs[1].end_s), (10.5, 11.0));
        assert_eq!(adv, 3000);
        // Ends with a pair: seek to the last timestamp (25 steps × 2 frames).
        let toks = [TS, 1, TS + 25, TS + 25];
        let (segs, adv) = split_segments(&toks, TS, 0.0, 3000, 2, 0.02);
        assert_eq!(segs.len(), 1);
        assert_eq!(adv, 50);
        // No pair: one segment to the last timestamp; the whole window is consumed.
        let toks = [TS, 1, 2, TS + 40];
        let (segs, adv) = split_segments(&toks, TS, 0.0, 250, 2, 0.02);
        assert_eq!(segs.len(), 1);
        assert!((segs[0].end_s - 0.8).abs() < 1e-12);
        assert_eq!(adv, 250);
        // No timestamps at all: the window's duration.
        let (segs, _) = split_segments(&[1, 2], TS, 0.0, 250, 2, 0.02);
        assert!((segs[0].end_s - 2.5).abs() < 1e-12);
    }
}
