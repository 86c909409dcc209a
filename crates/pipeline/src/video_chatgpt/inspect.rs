//! `videollama inspect` for a Video-ChatGPT folder, from the configs and the weight files'
//! headers only.

use super::config::{Layout, VideoChatGptConfig, VideoChatGptOptions};
use crate::checkpoint::{Checkpoint, WeightSource};
use crate::error::{PipelineError, Result};
use crate::inspect::{LlmSummary, TokenCounts};
use candle_core::{DType, Device};
use serde::Serialize;
use std::path::{Path, PathBuf};
use videollama_connectors::st_pooling::{self, TEMPORAL_ROWS};

#[derive(Debug, Default, Serialize)]
pub struct VideoChatGptParameters {
    pub vision_tower: u64,
    pub projector: u64,
    pub llm: u64,
    pub total: u64,
}

#[derive(Debug, Serialize)]
pub struct VideoChatGptInspect {
    pub base: PathBuf,
    pub projection: PathBuf,
    pub vision_tower: String,
    pub num_frames: usize,
    pub conv_mode: String,
    /// Rows of the base `lm_head`; the projection's embedding table has `llm.vocab_size`.
    pub base_vocab: usize,
    /// `lm_head` rows that no file holds (the added video tokens).
    pub lm_head_rows_not_stored: usize,
    pub llm: LlmSummary,
    pub parameters: VideoChatGptParameters,
    pub tokens: TokenCounts,
}

pub fn inspect(layout: &Layout, options: &[String]) -> Result<VideoChatGptInspect> {
    let options = VideoChatGptOptions::parse(options)?;
    let config_path = layout.base.join("config.json");
    let config = VideoChatGptConfig::from_file(&config_path)?;
    let raw = crate::error::read_json(&config_path)?;
    let mut llm: videollama_llm::DecoderConfig = serde_json::from_value(raw)
        .map_err(|e| PipelineError::file(&config_path, format!("language model config: {e}")))?;
    let tower_name = config
        .mm_vision_tower
        .clone()
        .ok_or_else(|| PipelineError::file(&config_path, "no mm_vision_tower"))?;
    let parent = layout.dir.parent().map(Path::to_path_buf);
    let mut search: Vec<&Path> = vec![&layout.dir];
    if let Some(p) = &parent {
        search.push(p);
    }
    search.push(&layout.base);
    let tower = crate::clip_tower::locate(&tower_name, &search)?;
    let source = WeightSource {
        label: "projection file".into(),
        path: layout.projection.clone(),
        prefix: String::new(),
    };
    let ckpt = Checkpoint::open_sources(&layout.dir, &[source], DType::F32, &Device::Cpu)?;
    let embed = ckpt
        .stored_shape("model.embed_tokens.weight")
        .map(<[usize]>::to_vec)
        .ok_or_else(|| PipelineError::file(&layout.projection, "no model.embed_tokens.weight"))?;
    let base_vocab = llm.vocab_size;
    llm.vocab_size = embed[0];
    let t = &tower.config;
    let mut p = VideoChatGptParameters {
        vision_tower: t.param_count(),
        projector: (t.hidden_size() * llm.hidden_size + llm.hidden_size) as u64,
        llm: llm.param_count(),
        total: 0,
    };
    p.total = p.vision_tower + p.projector + p.llm;
    let video = st_pooling::num_tokens(options.num_frames, t.num_patches(), TEMPORAL_ROWS);
    Ok(VideoChatGptInspect {
        base: layout.base.clone(),
        projection: layout.projection.clone(),
        vision_tower: format!(
            "{} (CLIP {} px, patch {}, width {}, {} layers, hidden_states[{}])",
            tower.dir.display(),
            t.image_size(),
            t.patch_size(),
            t.hidden_size(),
            t.num_hidden_layers(),
            config.mm_vision_select_layer
        ),
        num_frames: options.num_frames,
        conv_mode: options.conv_mode.name().to_string(),
        base_vocab,
        lm_head_rows_not_stored: embed[0].saturating_sub(base_vocab),
        llm: LlmSummary {
            family: crate::config::LlmFamily::Llama,
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
        tokens: TokenCounts {
            video: Some(video),
            image: None,
            audio: None,
        },
    })
}
