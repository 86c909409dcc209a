//! `config.json` of a VideoLLaMA2 checkpoint: the multimodal fields and the
//! registry that maps `model_type` to a language-model family.
//!
//! The LLM fields themselves are deserialized by `videollama_llm::DecoderConfig`
//! from the same file; this module only reads what the multimodal code consumes
//! (spec §1.2) and decides, from `model_type`, what the reference's Python class
//! would imply (Qwen2 q/k/v biases, the Mistral system message).

use crate::error::{PipelineError, Result};
use serde::Deserialize;
use std::path::Path;

/// Language-model family implied by `model_type` (the reference picks a Python
/// class per model_type; we pick the config differences that class implies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LlmFamily {
    Mistral,
    Mixtral,
    Qwen2,
    Llama,
}

/// One row per `model_type` the reference registers.
struct FamilyEntry {
    model_type: &'static str,
    family: LlmFamily,
    /// `mm_infer` prepends [`crate::prompt::MISTRAL_SYSTEM_MESSAGE`] for these.
    system_message: bool,
}

const FAMILIES: &[FamilyEntry] = &[
    FamilyEntry {
        model_type: "videollama2",
        family: LlmFamily::Mistral,
        system_message: true,
    },
    FamilyEntry {
        model_type: "videollama2_mistral",
        family: LlmFamily::Mistral,
        system_message: true,
    },
    FamilyEntry {
        model_type: "videollama2_mixtral",
        family: LlmFamily::Mixtral,
        system_message: true,
    },
    FamilyEntry {
        model_type: "videollama2_qwen2",
        family: LlmFamily::Qwen2,
        system_message: false,
    },
    FamilyEntry {
        model_type: "videollama2_llama",
        family: LlmFamily::Llama,
        system_message: false,
    },
];

impl LlmFamily {
    /// Qwen2 attention has q/k/v biases; the HF config has no field for it.
    pub fn attention_bias(self) -> bool {
        matches!(self, LlmFamily::Qwen2)
    }
}

fn default_select_layer() -> i64 {
    -2
}
fn default_select_feature() -> String {
    "patch".to_string()
}
fn default_num_frames() -> usize {
    8
}

/// The multimodal part of a VideoLLaMA2 `config.json` (real field names).
#[derive(Debug, Clone, Deserialize)]
pub struct MultimodalConfig {
    pub model_type: String,
    pub hidden_size: usize,
    pub mm_vision_tower: Option<String>,
    #[serde(default = "default_select_layer")]
    pub mm_vision_select_layer: i64,
    #[serde(default = "default_select_feature")]
    pub mm_vision_select_feature: String,
    pub mm_projector_type: Option<String>,
    pub mm_hidden_size: Option<usize>,
    #[serde(default = "default_num_frames")]
    pub num_frames: usize,
    /// Training-only (`pad`); inference ignores it like `model_init` does.
    pub image_aspect_ratio: Option<String>,
    /// Audio branch (VideoLLaMA2.1-AV).
    pub mm_audio_tower: Option<String>,
    pub mm_projector_a_type: Option<String>,
    pub mm_hidden_size_a: Option<usize>,
    pub hidden_size_a: Option<usize>,
    /// Overrides of the BEATs defaults (only in the tiny golden fixture).
    pub beats_cfg: Option<serde_json::Value>,
    /// Not a reference field: `"beats"` (absent) or `"whisper"`, see `crate::audio_tower`.
    pub audio_tower_type: Option<String>,
    /// The Whisper tower's sizes and pooling (`crate::audio_tower::WhisperEncoderConfig`),
    /// parsed and checked by `AudioTowerConfig::from_model_config`.
    pub whisper_encoder: Option<serde_json::Value>,
    pub tokenizer_model_max_length: Option<usize>,
    /// Not a reference field: the language model (weights, tokenizer, chat template, eos)
    /// comes from this GGUF file, absolute or relative to the checkpoint folder, as if
    /// `--llm` named it. The default model keeps SmolLM2's released file this way instead
    /// of a dequantized copy.
    pub llm_gguf: Option<String>,
}

/// Everything the pipeline needs from one `config.json`.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub mm: MultimodalConfig,
    pub llm: videollama_llm::DecoderConfig,
    pub family: LlmFamily,
    pub system_message: bool,
    pub raw: serde_json::Value,
}

impl ModelConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let raw = crate::error::read_json(path)?;
        Self::from_value(raw).map_err(|e| match e {
            PipelineError::Invalid(msg) => PipelineError::file(path, msg),
            other => other,
        })
    }

    pub fn from_value(raw: serde_json::Value) -> Result<Self> {
        let mm: MultimodalConfig = serde_json::from_value(raw.clone())
            .map_err(|e| PipelineError::Invalid(format!("not a VideoLLaMA2 config.json: {e}")))?;
        let entry = FAMILIES
            .iter()
            .find(|f| f.model_type == mm.model_type)
            .ok_or_else(|| {
                let supported: Vec<_> = FAMILIES.iter().map(|f| f.model_type).collect();
                PipelineError::UnknownModelType(mm.model_type.clone(), supported.join(", "))
            })?;
        let mut llm: videollama_llm::DecoderConfig = serde_json::from_value(raw.clone())
            .map_err(|e| PipelineError::Invalid(format!("language-model fields: {e}")))?;
        llm.attention_bias = entry.family.attention_bias();
        if entry.family == LlmFamily::Mixtral && llm.num_local_experts.is_none() {
            return Err(PipelineError::Invalid(
                "videollama2_mixtral config has no num_local_experts".into(),
            ));
        }
        let config = Self {
            mm,
            llm,
            family: entry.family,
            system_message: entry.system_message,
            raw,
        };
        // The audio fields are checked here so that a bad one is reported at load.
        crate::audio_tower::AudioTowerConfig::from_model_config(&config)?;
        Ok(config)
    }

    /// Does this checkpoint have an audio branch?
    pub fn has_audio(&self) -> bool {
        self.mm.mm_projector_a_type.is_some()
            || self.mm.mm_audio_tower.is_some()
            || self.mm.audio_tower_type.is_some()
            || self.mm.whisper_encoder.is_some()
    }
}
