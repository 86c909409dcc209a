//! `videollama inspect` for a Qwen2-VL folder, from its configs alone.

use super::config::Qwen2VlConfig;
use crate::error::{PipelineError, Result};
use crate::inspect::LlmSummary;
use serde::Serialize;
use std::path::{Path, PathBuf};
use videollama_media::qwen2_vl::{smart_resize, Qwen2VlProcessorConfig};

#[derive(Debug, Default, Serialize)]
pub struct Qwen2VlParameters {
    pub vision: u64,
    pub llm: u64,
    pub total: u64,
}

#[derive(Debug, Serialize)]
pub struct Qwen2VlInspect {
    pub config: PathBuf,
    /// `depth`, width, heads, patch, merge, activation of the ViT.
    pub vision: String,
    pub mrope_section: Vec<usize>,
    pub min_pixels: usize,
    pub max_pixels: usize,
    /// LLM tokens of one 224×224 image and of 8 frames at 224×224 under the processor limits.
    pub tokens_image_224: usize,
    pub tokens_8_frames_224: usize,
    pub llm: LlmSummary,
    pub parameters: Qwen2VlParameters,
}

pub fn inspect(dir: &Path) -> Result<Qwen2VlInspect> {
    let config_path = dir.join("config.json");
    let config = Qwen2VlConfig::from_file(&config_path)?;
    let raw = crate::error::read_json(&config_path)?;
    let llm: videollama_llm::DecoderConfig = serde_json::from_value(raw)
        .map_err(|e| PipelineError::file(&config_path, format!("language model config: {e}")))?;
    let pre = dir.join("preprocessor_config.json");
    let processor = if pre.is_file() {
        Qwen2VlProcessorConfig::from_file(&pre).map_err(|e| PipelineError::file(&pre, e))?
    } else {
        Qwen2VlProcessorConfig::default()
    };
    let v = &config.vision_config;
    let (h, w) = smart_resize(
        224,
        224,
        processor.factor(),
        processor.min_pixels,
        processor.max_pixels,
    )
    .map_err(|e| PipelineError::Invalid(e.to_string()))?;
    let per_slice = (h / processor.factor()) * (w / processor.factor());
    let mut qkv_bias = llm.clone();
    qkv_bias.attention_bias = true;
    let mut p = Qwen2VlParameters {
        vision: videollama_encoders::qwen2_vl_vision::param_count(v),
        llm: qkv_bias.param_count(),
        total: 0,
    };
    p.total = p.vision + p.llm;
    Ok(Qwen2VlInspect {
        config: config_path,
        vision: format!(
            "ViT depth {}, width {}, {} heads, MLP {} {:?}, patch {}×{} (temporal {}), merge {}×{} → {}",
            v.depth,
            v.embed_dim,
            v.num_heads,
            v.mlp_hidden(),
            v.hidden_act,
            v.patch_size,
            v.patch_size,
            v.temporal_patch_size,
            v.spatial_merge_size,
            v.spatial_merge_size,
            v.hidden_size
        ),
        mrope_section: llm.mrope_section.clone().unwrap_or_default(),
        min_pixels: processor.min_pixels,
        max_pixels: processor.max_pixels,
        tokens_image_224: per_slice,
        tokens_8_frames_224: per_slice * 8usize.div_ceil(processor.temporal_patch_size),
        llm: LlmSummary {
            family: crate::config::LlmFamily::Qwen2,
            hidden_size: llm.hidden_size,
            layers: llm.num_hidden_layers,
            attention_heads: llm.num_attention_heads,
            kv_heads: llm.num_key_value_heads,
            intermediate_size: llm.intermediate_size,
            vocab_size: llm.vocab_size,
            experts: None,
            max_position_embeddings: llm.max_position_embeddings,
        },
        parameters: p,
    })
}
