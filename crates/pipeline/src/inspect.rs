//! `videollama inspect`: what a checkpoint is, from its `config.json` alone.
//!
//! Parameter and token counts are computed from the configurations (no weights
//! needed), so a user can check a published configuration before downloading it.

use crate::config::{LlmFamily, ModelConfig};
use crate::error::{PipelineError, Result};
use crate::tower::resolve_vision_tower;
use serde::Serialize;
use std::path::Path;
use videollama_connectors::{ConnectorConfig, ProjectorType};

#[derive(Debug, Serialize)]
pub struct LlmSummary {
    pub family: LlmFamily,
    pub hidden_size: usize,
    pub layers: usize,
    pub attention_heads: usize,
    pub kv_heads: usize,
    pub intermediate_size: usize,
    pub vocab_size: usize,
    pub experts: Option<usize>,
    pub max_position_embeddings: usize,
}

#[derive(Debug, Serialize)]
pub struct VisionSummary {
    pub tower: String,
    pub kind: String,
    pub image_size: usize,
    pub patch_grid: usize,
    pub hidden_size: usize,
    pub select_layer: i64,
    pub select_feature: String,
    pub projector_type: String,
}

#[derive(Debug, Default, Serialize)]
pub struct ParameterCounts {
    pub llm: u64,
    pub vision_tower: u64,
    pub connector: u64,
    pub audio_tower: u64,
    pub audio_projector: u64,
    pub total: u64,
}

#[derive(Debug, Serialize)]
pub struct TokenCounts {
    /// Media tokens spliced for a video of `num_frames` frames.
    pub video: Option<usize>,
    /// Media tokens for a still image (repeated to `num_frames` frames).
    pub image: Option<usize>,
    /// Media tokens for a sound (always 30 s of fbank after padding/cropping; a Whisper
    /// tower: `audio_max_seconds` pooled by `audio_pool_stride`).
    pub audio: Option<usize>,
}

#[derive(Debug, Serialize)]
pub struct InspectReport {
    pub model_type: String,
    pub num_frames: usize,
    pub llm: LlmSummary,
    pub vision: Option<VisionSummary>,
    pub parameters: ParameterCounts,
    pub tokens: TokenCounts,
}

/// Inspect a `config.json`; `checkpoint_dir` is where a relative `mm_vision_tower` is looked up.
pub fn inspect_config(config_path: &Path) -> Result<InspectReport> {
    let config = ModelConfig::from_file(config_path)?;
    let dir = config_path.parent().unwrap_or(Path::new("."));
    let llm = &config.llm;
    let llm_summary = LlmSummary {
        family: config.family,
        hidden_size: llm.hidden_size,
        layers: llm.num_hidden_layers,
        attention_heads: llm.num_attention_heads,
        kv_heads: llm.num_key_value_heads,
        intermediate_size: llm.intermediate_size,
        vocab_size: llm.vocab_size,
        experts: llm.num_local_experts,
        max_position_embeddings: llm.max_position_embeddings,
    };
    let mut parameters = ParameterCounts {
        llm: llm.param_count(),
        ..Default::default()
    };
    let mut tokens = TokenCounts {
        video: None,
        image: None,
        audio: None,
    };
    let mut vision = None;
    if let Some(name) = &config.mm.mm_vision_tower {
        let tower = resolve_vision_tower(name, dir)?;
        let projector = config.mm.mm_projector_type.clone().unwrap_or_default();
        let projector_type: ProjectorType = projector
            .parse()
            .map_err(|e| PipelineError::file(config_path, e))?;
        let connector = ConnectorConfig {
            projector_type,
            mm_hidden_size: config
                .mm
                .mm_hidden_size
                .unwrap_or(tower.config.hidden_size()),
            hidden_size: config.mm.hidden_size,
        };
        parameters.vision_tower = tower.config.param_count();
        parameters.connector = connector.param_count();
        let per_frame = tower.config.num_patches()
            + usize::from(config.mm.mm_vision_select_feature == "cls_patch");
        let n = connector.num_tokens(config.mm.num_frames, per_frame);
        tokens.video = Some(n);
        tokens.image = Some(n);
        vision = Some(VisionSummary {
            tower: name.clone(),
            kind: format!("{:?}", tower.config.kind()).to_lowercase(),
            image_size: tower.config.image_size(),
            patch_grid: tower.config.patches_per_side(),
            hidden_size: tower.config.hidden_size(),
            select_layer: config.mm.mm_vision_select_layer,
            select_feature: config.mm.mm_vision_select_feature.clone(),
            projector_type: projector,
        });
    }
    if let Some(crate::audio_tower::AudioTowerConfig::Whisper(w)) =
        crate::audio_tower::AudioTowerConfig::from_model_config(&config)
            .map_err(|e| PipelineError::file(config_path, e))?
    {
        parameters.audio_tower = w.param_count();
        let depth = match config
            .mm
            .mm_projector_a_type
            .as_deref()
            .unwrap_or("mlp2x_gelu")
            .parse()
        {
            Ok(ProjectorType::MlpGelu(n)) => n,
            _ => 1,
        };
        parameters.audio_projector = videollama_connectors::MlpProjector::param_count(
            depth,
            w.d_model,
            config.mm.hidden_size,
        );
        // Every sound is cropped / padded to audio_max_seconds, then pooled.
        tokens.audio = Some(w.num_tokens());
    } else if config.has_audio() {
        let beats = videollama_encoders::BeatsConfig::from_model_config(&config.raw)
            .map_err(|e| PipelineError::file(config_path, e))?;
        parameters.audio_tower = beats.param_count();
        let depth = match config
            .mm
            .mm_projector_a_type
            .as_deref()
            .unwrap_or("mlp2x_gelu")
            .parse()
        {
            Ok(ProjectorType::MlpGelu(n)) => n,
            _ => 1,
        };
        let in_dim = config
            .mm
            .mm_hidden_size_a
            .unwrap_or(beats.encoder_embed_dim);
        parameters.audio_projector =
            videollama_connectors::MlpProjector::param_count(depth, in_dim, config.mm.hidden_size);
        // The reference pads or crops every sound to 30 s: 2998 fbank frames × 128 bins.
        tokens.audio = Some(beats.num_patches(2998, 128));
    }
    parameters.total = parameters.llm
        + parameters.vision_tower
        + parameters.connector
        + parameters.audio_tower
        + parameters.audio_projector;
    Ok(InspectReport {
        model_type: config.mm.model_type.clone(),
        num_frames: config.mm.num_frames,
        llm: llm_summary,
        vision,
        parameters,
        tokens,
    })
}
