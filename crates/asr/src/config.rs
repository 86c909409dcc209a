//! Model dimensions (openai-whisper's `ModelDimensions`) and the decoding settings found in
//! a checkpoint folder's JSON files.
//!
//! * HF folder: `config.json` (`WhisperConfig`: `d_model`, `encoder_layers`, …) and the
//!   optional `generation_config.json`; `suppress_tokens` / `begin_suppress_tokens` are
//!   taken from the latter, else from `config.json`.
//! * CTranslate2 folder: the dimensions come from the weights ([`crate::ct2::dims_of`]);
//!   its `config.json` holds `suppress_ids` / `suppress_ids_begin` (same meaning).

use std::path::Path;

use serde::Deserialize;

use crate::error::{AsrError, Result};

/// Sizes of a Whisper model (names as openai-whisper's `ModelDimensions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WhisperDims {
    /// Mel bins of the input (80; 128 for large-v3).
    pub n_mels: usize,
    /// Encoder positions (1500 = 3000 mel frames after the stride-2 conv).
    pub n_audio_ctx: usize,
    pub n_audio_state: usize,
    pub n_audio_head: usize,
    pub n_audio_layer: usize,
    /// Token vocabulary, timestamps included.
    pub n_vocab: usize,
    /// Decoder positions (448).
    pub n_text_ctx: usize,
    pub n_text_state: usize,
    pub n_text_head: usize,
    pub n_text_layer: usize,
}

impl WhisperDims {
    /// openai-whisper's rule: the multilingual vocabularies have ≥ 51865 tokens.
    pub fn is_multilingual(&self) -> bool {
        self.n_vocab >= 51865
    }

    /// Consistency checks that the model code relies on.
    #[allow(clippy::manual_is_multiple_of)] // `is_multiple_of` needs Rust 1.87; MSRV is 1.85
    pub fn validate(&self) -> std::result::Result<(), String> {
        let checks = [
            (self.n_mels > 0, "n_mels is 0"),
            (self.n_audio_ctx > 0, "n_audio_ctx is 0"),
            (self.n_text_ctx > 0, "n_text_ctx is 0"),
            (self.n_vocab > 0, "n_vocab is 0"),
            (self.n_audio_layer > 0, "no encoder layers"),
            (self.n_text_layer > 0, "no decoder layers"),
            (
                self.n_audio_head > 0 && self.n_audio_state % self.n_audio_head == 0,
                "encoder width is not a multiple of its head count",
            ),
            (
                self.n_text_head > 0 && self.n_text_state % self.n_text_head == 0,
                "decoder width is not a multiple of its head count",
            ),
            (
                self.n_audio_state == self.n_text_state,
                "encoder and decoder widths differ",
            ),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, msg)) => Err(format!("invalid Whisper dimensions ({msg}): {self:?}")),
            None => Ok(()),
        }
    }

    /// Mel frames of one encoder window (stride-2 conv: 2 × `n_audio_ctx` = 3000).
    pub fn n_frames(&self) -> usize {
        2 * self.n_audio_ctx
    }
}

/// The fields of an HF `WhisperConfig` this crate reads.
#[derive(Debug, Clone, Deserialize)]
pub struct HfWhisperConfig {
    pub num_mel_bins: usize,
    pub max_source_positions: usize,
    pub d_model: usize,
    pub encoder_attention_heads: usize,
    pub encoder_layers: usize,
    pub vocab_size: usize,
    pub max_target_positions: usize,
    pub decoder_attention_heads: usize,
    pub decoder_layers: usize,
    #[serde(default)]
    pub activation_function: Option<String>,
    #[serde(default)]
    pub scale_embedding: Option<bool>,
    #[serde(default)]
    pub suppress_tokens: Option<Vec<i64>>,
    #[serde(default)]
    pub begin_suppress_tokens: Option<Vec<i64>>,
}

impl HfWhisperConfig {
    pub fn dims(&self) -> WhisperDims {
        WhisperDims {
            n_mels: self.num_mel_bins,
            n_audio_ctx: self.max_source_positions,
            n_audio_state: self.d_model,
            n_audio_head: self.encoder_attention_heads,
            n_audio_layer: self.encoder_layers,
            n_vocab: self.vocab_size,
            n_text_ctx: self.max_target_positions,
            n_text_state: self.d_model,
            n_text_head: self.decoder_attention_heads,
            n_text_layer: self.decoder_layers,
        }
    }
}

/// Token-suppression lists found in a folder (`None` = the file did not say).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SuppressConfig {
    /// Suppressed at every step (openai's `suppress_tokens`, non-speech symbols).
    pub suppress: Option<Vec<u32>>,
    /// Suppressed at the first sampled step only (blank `" "` and EOT).
    pub begin_suppress: Option<Vec<u32>>,
}

pub(crate) fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| AsrError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| AsrError::format(path, format!("invalid JSON: {e}")))
}

/// Non-negative ids of a JSON array (openai's `-1` placeholder, "use the non-speech
/// list", is dropped; the caller adds that list when the array contained it).
fn ids(v: &serde_json::Value) -> Option<(Vec<u32>, bool)> {
    let arr = v.as_array()?;
    let mut out = Vec::new();
    let mut minus_one = false;
    for x in arr {
        match x.as_i64() {
            Some(-1) => minus_one = true,
            Some(i) if i >= 0 && i <= u32::MAX as i64 => out.push(i as u32),
            _ => return None,
        }
    }
    Some((out, minus_one))
}

/// Reads the HF `config.json` of `dir`.
pub fn read_hf_config(dir: &Path) -> Result<HfWhisperConfig> {
    let path = dir.join("config.json");
    let v = read_json(&path)?;
    let cfg: HfWhisperConfig = serde_json::from_value(v)
        .map_err(|e| AsrError::format(&path, format!("not a Whisper config: {e}")))?;
    if let Some(act) = &cfg.activation_function {
        if act != "gelu" {
            return Err(AsrError::format(
                &path,
                format!("activation_function {act:?}: only \"gelu\" (Whisper) is supported"),
            ));
        }
    }
    if cfg.scale_embedding == Some(true) {
        return Err(AsrError::format(
            &path,
            "scale_embedding = true is not Whisper's",
        ));
    }
    cfg.dims()
        .validate()
        .map_err(|m| AsrError::format(&path, m))?;
    Ok(cfg)
}

/// Suppression lists of an HF folder: `generation_config.json` first, then `config.json`.
/// A `-1` entry means "plus the non-speech tokens"; it is reported as `suppress = None`
/// so that the caller computes that list.
pub fn hf_suppress(dir: &Path) -> Result<SuppressConfig> {
    let mut out = SuppressConfig::default();
    for name in ["generation_config.json", "config.json"] {
        let path = dir.join(name);
        if !path.is_file() {
            continue;
        }
        let v = read_json(&path)?;
        if out.suppress.is_none() {
            if let Some((list, minus_one)) = v.get("suppress_tokens").and_then(ids) {
                if !minus_one {
                    out.suppress = Some(list);
                }
            }
        }
        if out.begin_suppress.is_none() {
            if let Some((list, _)) = v.get("begin_suppress_tokens").and_then(ids) {
                out.begin_suppress = Some(list);
            }
        }
    }
    Ok(out)
}

/// Suppression lists of a CTranslate2 folder's `config.json` (`suppress_ids`,
/// `suppress_ids_begin`); absent file or keys give `None`s.
pub fn ct2_suppress(dir: &Path) -> Result<SuppressConfig> {
    let path = dir.join("config.json");
    if !path.is_file() {
        return Ok(SuppressConfig::default());
    }
    let v = read_json(&path)?;
    let get = |k: &str| v.get(k).and_then(ids).filter(|(_, m)| !m).map(|(l, _)| l);
    Ok(SuppressConfig {
        suppress: get("suppress_ids"),
        begin_suppress: get("suppress_ids_begin"),
    })
}
