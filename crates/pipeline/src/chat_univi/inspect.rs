//! `videollama inspect` for a Chat-UniVi folder, from its configs alone.

use super::config::{ChatUniViConfig, ChatUniViOptions, CTM_BASE_K};
use crate::error::{PipelineError, Result};
use crate::inspect::{LlmSummary, TokenCounts};
use serde::Serialize;
use std::path::{Path, PathBuf};
use videollama_connectors::dpc_knn::Ctm;

#[derive(Debug, Default, Serialize)]
pub struct ChatUniViParameters {
    pub vision_tower: u64,
    pub projector: u64,
    pub llm: u64,
    pub total: u64,
}

#[derive(Debug, Serialize)]
pub struct ChatUniViInspect {
    pub config: PathBuf,
    pub vision_tower: String,
    /// `ctm0..ctm3` as `(rate, base k)`; empty without clustering.
    pub clustering: Vec<(f64, usize)>,
    /// Tokens per image and per event (`K0 + K1 + K2`).
    pub tokens_per_event: usize,
    /// Events for `max_frames` frames.
    pub events_at_max_frames: usize,
    pub max_frames: usize,
    pub llm: LlmSummary,
    pub parameters: ChatUniViParameters,
    pub tokens: TokenCounts,
}

pub fn inspect(dir: &Path, options: &[String]) -> Result<ChatUniViInspect> {
    let options = ChatUniViOptions::parse(options)?;
    let config_path = dir.join("config.json");
    let config = ChatUniViConfig::from_file(&config_path)?;
    let raw = crate::error::read_json(&config_path)?;
    let llm: videollama_llm::DecoderConfig = serde_json::from_value(raw)
        .map_err(|e| PipelineError::file(&config_path, format!("language model config: {e}")))?;
    let name = config
        .mm_vision_tower
        .clone()
        .ok_or_else(|| PipelineError::file(&config_path, "no mm_vision_tower"))?;
    let parent = dir.parent().map(Path::to_path_buf);
    let mut search: Vec<&Path> = vec![dir];
    if let Some(p) = &parent {
        search.push(p);
    }
    let tower = crate::clip_tower::locate(&name, &search)?;
    let t = &tower.config;
    let patches = t.num_patches();
    let (clustering, per_event, events) = match &config.config {
        Some(c) if c.use_cluster => {
            let rates = c.rates(&config_path)?;
            let ctm: Vec<Ctm> = (0..4).map(|i| Ctm::new(rates[i], CTM_BASE_K[i])).collect();
            let k0 = ctm[0].cluster_num(patches);
            let k1 = ctm[1].cluster_num(k0);
            let per = k0 + k1 + ctm[2].cluster_num(k1);
            let events = if options.max_frames <= 2 {
                options.max_frames
            } else {
                ctm[3].cluster_num(options.max_frames)
            };
            (
                ctm.iter().map(|c| (c.rate, c.base_k)).collect(),
                per,
                events,
            )
        }
        _ => (Vec::new(), patches, 1),
    };
    let video = if clustering.is_empty() {
        patches + options.max_frames
    } else {
        per_event * events
    };
    let mut p = ChatUniViParameters {
        vision_tower: t.param_count(),
        projector: (t.hidden_size() * llm.hidden_size + llm.hidden_size) as u64,
        llm: llm.param_count(),
        total: 0,
    };
    p.total = p.vision_tower + p.projector + p.llm;
    Ok(ChatUniViInspect {
        config: config_path,
        vision_tower: format!(
            "{} (CLIP {} px, patch {}, width {}, {} layers, hidden_states[{}])",
            tower.dir.display(),
            t.image_size(),
            t.patch_size(),
            t.hidden_size(),
            t.num_hidden_layers(),
            config.mm_vision_select_layer
        ),
        clustering,
        tokens_per_event: per_event,
        events_at_max_frames: events,
        max_frames: options.max_frames,
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
            image: Some(per_event),
            audio: None,
        },
    })
}
