//! Token selection (HF logits processors + greedy / sampling) and the decoding loop.
//!
//! The reference generates from `inputs_embeds` only, so HF's `input_ids` inside `generate`
//! start empty and hold just the new tokens: the repetition penalty therefore covers the
//! **generated** ids only (never the prompt). `mm_infer` forces greedy decoding, but HF still
//! applies `generation_config.json`'s `repetition_penalty` (1.05 for the Qwen2 models).

use candle_core::{DType, Result, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;

use crate::decoder::{DecoderLm, KvCache};

/// How the next token is chosen. `temperature` `None` or `<= 0` means greedy; `top_k` / `top_p`
/// only matter when sampling; `repetition_penalty` applies in both modes.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<usize>,
    pub repetition_penalty: Option<f32>,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self::greedy()
    }
}

impl SamplingParams {
    /// Plain argmax, no penalty.
    pub fn greedy() -> Self {
        Self {
            temperature: None,
            top_p: None,
            top_k: None,
            repetition_penalty: None,
            seed: 0,
        }
    }

    /// What HF `generate` would do with this `generation_config.json` and `do_sample`.
    ///
    /// The repetition penalty is taken in both modes (HF applies it even when greedy). When
    /// sampling, missing values get HF's `GenerationConfig` defaults (temperature 1.0,
    /// top_k 50, top_p 1.0).
    pub fn from_generation_config(gc: &GenerationConfig, do_sample: bool, seed: u64) -> Self {
        let repetition_penalty = gc.repetition_penalty;
        if !do_sample {
            return Self {
                repetition_penalty,
                seed,
                ..Self::greedy()
            };
        }
        Self {
            temperature: Some(gc.temperature.unwrap_or(1.0)),
            top_p: gc.top_p,
            top_k: Some(gc.top_k.unwrap_or(50)),
            repetition_penalty,
            seed,
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature.is_none_or(|t| t <= 0.0)
    }
}

/// Applies the repetition penalty and then picks a token. Holds the seeded RNG, so one
/// processor per request gives reproducible sampling.
#[derive(Debug, Clone)]
pub struct LogitsProcessor {
    params: SamplingParams,
    rng: StdRng,
}

impl LogitsProcessor {
    pub fn new(params: SamplingParams) -> Self {
        let rng = StdRng::seed_from_u64(params.seed);
        Self { params, rng }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Pick the next token from raw last-position logits `[V]` (any float dtype), given the ids
    /// generated so far in this request.
    pub fn sample(&mut self, logits: &Tensor, generated: &[u32]) -> Result<u32> {
        let mut v = logits
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?;
        Ok(self.sample_slice(&mut v, generated))
    }

    /// [`Self::sample`] on a host slice; `logits` is modified in place (penalty, warpers).
    pub fn sample_slice(&mut self, logits: &mut [f32], generated: &[u32]) -> u32 {
        if let Some(p) = self.params.repetition_penalty {
            apply_repetition_penalty(logits, generated, p);
        }
        if self.params.is_greedy() {
            return argmax(logits);
        }
        let t = self.params.temperature.unwrap_or(1.0) as f32;
        logits.iter_mut().for_each(|l| *l /= t);
        if let Some(k) = self.params.top_k.filter(|&k| k > 0) {
            top_k_filter(logits, k);
        }
        if let Some(p) = self.params.top_p.filter(|&p| p < 1.0) {
            top_p_filter(logits, p);
        }
        sample_softmax(logits, self.rng.random::<f64>())
    }
}

/// HF `RepetitionPenaltyLogitsProcessor`: for every distinct id in `ids`, a negative logit is
/// multiplied by `penalty` and any other divided by it (both push it down for penalty > 1).
/// Applying it per distinct id matches HF's gather/scatter, which penalises each id once.
pub fn apply_repetition_penalty(logits: &mut [f32], ids: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut seen = std::collections::HashSet::new();
    for &id in ids {
        let i = id as usize;
        if i < logits.len() && seen.insert(id) {
            let l = logits[i];
            logits[i] = if l < 0.0 { l * penalty } else { l / penalty };
        }
    }
}

/// Index of the maximum; ties go to the lowest index, like `torch.argmax`. NaN counts as the
/// maximum (also like torch), so a broken model surfaces instead of being masked.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &l) in logits.iter().enumerate() {
        let b = logits[best];
        if !b.is_nan() && (l > b || l.is_nan()) {
            best = i;
        }
    }
    best as u32
}

/// HF `TopKLogitsWarper`: keep logits `>=` the k-th largest (ties at the boundary survive).
fn top_k_filter(logits: &mut [f32], k: usize) {
    if k >= logits.len() {
        return;
    }
    let mut sorted: Vec<f32> = logits.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let kth = sorted[k - 1];
    logits
        .iter_mut()
        .filter(|l| **l < kth)
        .for_each(|l| *l = f32::NEG_INFINITY);
}

/// HF `TopPLogitsWarper`: sort ascending, drop the tokens whose cumulative probability is
/// `<= 1 - top_p`, always keeping the most likely one.
fn top_p_filter(logits: &mut [f32], top_p: f64) {
    let probs = softmax64(logits);
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[a].total_cmp(&logits[b]).then(a.cmp(&b)));
    let mut cum = 0.0f64;
    let last = order.len().saturating_sub(1);
    for (rank, &i) in order.iter().enumerate() {
        cum += probs[i];
        if cum <= 1.0 - top_p && rank < last {
            logits[i] = f32::NEG_INFINITY;
        }
    }
}

fn softmax64(logits: &[f32]) -> Vec<f64> {
    let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = logits.iter().map(|&l| (l as f64 - m).exp()).collect();
    let z: f64 = e.iter().sum();
    e.into_iter().map(|x| x / z).collect()
}

/// Inverse-CDF draw from `softmax(logits)` with a uniform `u` in `[0, 1)`.
fn sample_softmax(logits: &[f32], u: f64) -> u32 {
    let probs = softmax64(logits);
    let mut cum = 0.0;
    let mut last_kept = argmax(logits);
    for (i, p) in probs.iter().enumerate() {
        if *p > 0.0 {
            last_kept = i as u32;
            cum += p;
            if u < cum {
                return i as u32;
            }
        }
    }
    last_kept // rounding left `cum` just below `u`
}

/// One or several token ids (`eos_token_id` is an int in Mistral configs, a list in Qwen2's).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            TokenIds::One(i) => vec![*i],
            TokenIds::Many(v) => v.clone(),
        }
    }
}

/// The fields of HF `generation_config.json` that affect decoding; all optional, unknown
/// fields ignored.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct GenerationConfig {
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default)]
    pub repetition_penalty: Option<f32>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub top_k: Option<usize>,
    #[serde(default)]
    pub do_sample: Option<bool>,
    #[serde(default)]
    pub max_new_tokens: Option<usize>,
}

impl GenerationConfig {
    pub fn from_json_str(s: &str) -> Result<Self> {
        serde_json::from_str(s).map_err(candle_core::Error::wrap)
    }

    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let s = std::fs::read_to_string(path.as_ref()).map_err(|e| {
            candle_core::Error::msg(format!("reading {}: {e}", path.as_ref().display()))
        })?;
        Self::from_json_str(&s)
    }

    /// All end-of-sequence ids (empty when the file names none).
    pub fn eos_ids(&self) -> Vec<u32> {
        self.eos_token_id
            .as_ref()
            .map(TokenIds::to_vec)
            .unwrap_or_default()
    }
}

/// Why [`generate`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// An id from `eos_ids` was produced (it is the last element of `ids`).
    Eos,
    /// `max_new_tokens` were produced.
    Length,
    /// The `on_token` callback returned `false` (e.g. a stop string matched).
    Callback,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerateOutput {
    /// New tokens only (the reference's `output_ids`), including a final eos if one was hit.
    pub ids: Vec<u32>,
    pub stop: StopReason,
}

/// Decode after a prompt: one forward over `prompt_embeds` (`[1, L, H]`, appended to `cache`),
/// then one forward per new token fed back through `embed_tokens`. `on_token` sees each id
/// as soon as it is chosen (streaming) and can stop the loop by returning `false`.
pub fn generate(
    model: &DecoderLm,
    prompt_embeds: &Tensor,
    cache: &mut KvCache,
    processor: &mut LogitsProcessor,
    max_new_tokens: usize,
    eos_ids: &[u32],
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<GenerateOutput> {
    let mut ids = Vec::new();
    if max_new_tokens == 0 {
        return Ok(GenerateOutput {
            ids,
            stop: StopReason::Length,
        });
    }
    let mut logits = model.forward_embeds(prompt_embeds, cache)?;
    loop {
        let id = processor.sample(&logits, &ids)?;
        ids.push(id);
        let keep_going = on_token(id);
        if eos_ids.contains(&id) {
            return Ok(GenerateOutput {
                ids,
                stop: StopReason::Eos,
            });
        }
        if !keep_going {
            return Ok(GenerateOutput {
                ids,
                stop: StopReason::Callback,
            });
        }
        if ids.len() >= max_new_tokens {
            return Ok(GenerateOutput {
                ids,
                stop: StopReason::Length,
            });
        }
        logits = model.forward_tokens(&[id], cache)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetition_penalty_hf_semantics() {
        let mut l = vec![2.0f32, -2.0, 0.0, 1.0, 3.0];
        // id 0 twice → penalised once; 1 negative → multiplied; 2 zero stays; 9 out of range.
        apply_repetition_penalty(&mut l, &[0, 1, 0, 2, 9], 2.0);
        assert_eq!(l, vec![1.0, -4.0, 0.0, 1.0, 3.0]);
        let mut same = vec![1.0f32, -1.0];
        apply_repetition_penalty(&mut same, &[0, 1], 1.0);
        assert_eq!(same, vec![1.0, -1.0]);
    }

    #[test]
    fn penalty_can_change_the_greedy_choice() {
        let mut p = LogitsProcessor::new(SamplingParams {
            repetition_penalty: Some(1.05),
            ..SamplingParams::greedy()
        });
        // 2.0/1.05 = 1.905 < 1.95: the repeated id loses.
        assert_eq!(p.sample_slice(&mut [2.0, 1.95, 0.0], &[0]), 1);
        assert_eq!(p.sample_slice(&mut [2.0, 1.95, 0.0], &[]), 0);
        // For negative logits the penalty multiplies: -1.0 * 1.05 < -1.02.
        assert_eq!(p.sample_slice(&mut [-1.0, -1.02], &[0]), 1);
    }

    #[test]
    fn argmax_ties_take_lowest_index() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        assert_eq!(argmax(&[f32::NEG_INFINITY, f32::NEG_INFINITY]), 0);
    }

    #[test]
    fn top_k_and_top_p_filter_like_hf() {
        let mut l = vec![1.0f32, 4.0, 3.0, 3.0, 0.0];
        top_k_filter(&mut l, 2);
        assert_eq!(l, vec![f32::NEG_INFINITY, 4.0, 3.0, 3.0, f32::NEG_INFINITY]);
        // probs ≈ [0.643, 0.237, 0.087, 0.032]: top_p 0.8 keeps the first two.
        let mut l = vec![3.0f32, 2.0, 1.0, 0.0];
        top_p_filter(&mut l, 0.8);
        assert!(l[0] == 3.0 && l[1] == 2.0 && l[2].is_infinite() && l[3].is_infinite());
        // A tiny top_p still keeps the best token.
        let mut l = vec![0.0f32, 5.0];
        top_p_filter(&mut l, 1e-9);
        assert_eq!(l, vec![f32::NEG_INFINITY, 5.0]);
    }

    #[test]
    fn sampling_is_seeded_and_respects_filters() {
        let params = SamplingParams {
            temperature: Some(0.7),
            top_p: Some(0.95),
            top_k: Some(3),
            repetition_penalty: None,
            seed: 1234,
        };
        let logits = [0.5f32, 2.0, 1.5, 1.8, -3.0, 1.9];
        let draw = |n: usize| {
            let mut p = LogitsProcessor::new(params.clone());
            (0..n)
                .map(|_| p.sample_slice(&mut logits.clone(), &[]))
                .collect::<Vec<_>>()
        };
        let a = draw(200);
        assert_eq!(a, draw(200), "same seed, same draws");
        // top_k 3 keeps ids 1, 5, 3 only; all three should appear over 200 draws.
        assert!(a.iter().all(|id| [1, 3, 5].contains(id)));
        assert!([1, 3, 5].iter().all(|id| a.contains(id)));
    }

    #[test]
    fn generation_config_parses_int_or_list_eos() {
        let q = GenerationConfig::from_json_str(
            r#"{"bos_token_id": 1021, "pad_token_id": 1021, "do_sample": true,
                "eos_token_id": [1023, 1021], "repetition_penalty": 1.05, "temperature": 0.7,
                "top_p": 0.8, "top_k": 20, "transformers_version": "4.40.0"}"#,
        )
        .unwrap();
        assert_eq!(q.eos_ids(), vec![1023, 1021]);
        assert_eq!(q.repetition_penalty, Some(1.05));
        let greedy = SamplingParams::from_generation_config(&q, false, 0);
        assert!(greedy.is_greedy());
        assert_eq!(greedy.repetition_penalty, Some(1.05));
        let m = GenerationConfig::from_json_str(
            r#"{"_from_model_config": true, "bos_token_id": 1, "eos_token_id": 2}"#,
        )
        .unwrap();
        assert_eq!(m.eos_ids(), vec![2]);
        assert_eq!(m.repetition_penalty, None);
        assert!(GenerationConfig::from_json_str("{}")
            .unwrap()
            .eos_ids()
            .is_empty());
    }
}
