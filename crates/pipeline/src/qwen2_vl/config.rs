//! `config.json` of a Qwen2-VL checkpoint (`model_type: qwen2_vl`, released field names).
//!
//! The language-model fields (`hidden_size`, `num_hidden_layers`, `rope_theta`,
//! `rope_scaling.mrope_section`, …) are read by `videollama_llm::DecoderConfig` from the same
//! file; this struct holds the rest.

use crate::error::{PipelineError, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use videollama_encoders::Qwen2VlVisionConfig;

#[derive(Debug, Clone, Deserialize)]
pub struct Qwen2VlConfig {
    pub model_type: String,
    pub vision_config: Qwen2VlVisionConfig,
    /// `<|image_pad|>` (resolved by string from the tokenizer; this is a cross-check).
    #[serde(default)]
    pub image_token_id: Option<u32>,
    /// `<|video_pad|>`.
    #[serde(default)]
    pub video_token_id: Option<u32>,
    /// `<|vision_start|>`.
    #[serde(default)]
    pub vision_start_token_id: Option<u32>,
    #[serde(default)]
    pub vision_end_token_id: Option<u32>,
    #[serde(default)]
    pub hidden_size: usize,
}

impl Qwen2VlConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let json = crate::error::read_json(path)?;
        let cfg: Self = serde_json::from_value(json).map_err(|e| PipelineError::Json {
            path: path.to_path_buf(),
            cause: e.to_string(),
        })?;
        cfg.vision_config
            .validate()
            .map_err(|e| PipelineError::file(path, e.to_string()))?;
        if cfg.vision_config.hidden_size != cfg.hidden_size {
            return Err(PipelineError::file(
                path,
                format!(
                    "vision_config.hidden_size {} (the merger's output) differs from the \
                     language model's hidden_size {}",
                    cfg.vision_config.hidden_size, cfg.hidden_size
                ),
            ));
        }
        Ok(cfg)
    }
}

/// `DIR/config.json` when it declares `model_type: qwen2_vl`.
pub fn config_path(dir: &Path) -> Option<PathBuf> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    let mt = json.get("model_type")?.as_str()?;
    (mt == "qwen2_vl").then_some(path)
}
