//! `videollama inspect` for a MiniGPT4-Video folder, from the weight files' headers only.

use super::config::ModelConfigFile;
use super::TOKEN_GROUP;
use crate::checkpoint::{Checkpoint, WeightSource};
use crate::error::{PipelineError, Result};
use crate::inspect::LlmSummary;
use candle_core::{DType, Device};
use serde::Serialize;
use std::path::Path;

#[derive(Debug, Default, Serialize)]
pub struct MiniGpt4VideoParameters {
    pub vision_encoder: u64,
    pub projector: u64,
    pub lora: u64,
    pub llm: u64,
    pub total: u64,
}

#[derive(Debug, Serialize)]
pub struct MiniGpt4VideoInspect {
    pub vision_encoder: String,
    pub tokens_per_frame: usize,
    pub max_frames: usize,
    pub max_subtitle_words: usize,
    pub lora: String,
    pub context_window: usize,
    pub llm: LlmSummary,
    pub parameters: MiniGpt4VideoParameters,
    pub tokens: crate::inspect::TokenCounts,
}

pub fn inspect(path: &Path, options: &[String]) -> Result<MiniGpt4VideoInspect> {
    let cfg = ModelConfigFile::from_file(path, options)?;
    let m = &cfg.model;
    let llm_dir = cfg.resolve(&m.llama_model);
    let sources = [
        WeightSource {
            label: "EVA ViT weights".into(),
            path: cfg.resolve(m.vit_model_path.as_deref().unwrap_or("eva_vit_g.pth")),
            prefix: "visual_encoder.".into(),
        },
        WeightSource {
            label: "ckpt".into(),
            path: cfg.resolve(m.ckpt.as_deref().unwrap_or("")),
            prefix: String::new(),
        },
    ];
    let ckpt = Checkpoint::open_sources(&cfg.dir, &sources, DType::F32, &Device::Cpu)?;
    let shape = |name: &str| -> Result<Vec<usize>> {
        ckpt.stored_shape(name)
            .map(<[usize]>::to_vec)
            .ok_or_else(|| {
                PipelineError::file(&cfg.path, format!("no tensor {name} in the files it names"))
            })
    };
    let width = shape("visual_encoder.cls_token")?[2];
    let pos = shape("visual_encoder.pos_embed")?;
    let patch = shape("visual_encoder.patch_embed.proj.weight")?[2];
    let mut blocks = 0;
    while ckpt
        .stored_shape(&format!("visual_encoder.blocks.{blocks}.norm1.weight"))
        .is_some()
    {
        blocks += 1;
    }
    let depth = m.vit_depth.unwrap_or(blocks.min(39));
    let grid = ((pos[1] - 1) as f64).sqrt().round() as usize;
    let per_frame = (pos[1] - 1) / TOKEN_GROUP;
    let mut p = MiniGpt4VideoParameters::default();
    let mut adapters = 0;
    for name in ckpt.tensor_names() {
        let n: u64 = shape(name)?.iter().map(|&d| d as u64).product();
        if let Some(rest) = name.strip_prefix("visual_encoder.") {
            let in_depth = rest
                .strip_prefix("blocks.")
                .and_then(|r| r.split('.').next())
                .and_then(|b| b.parse::<usize>().ok())
                .is_none_or(|b| b < depth);
            if in_depth {
                p.vision_encoder += n;
            }
        } else if name.starts_with("llama_proj.") {
            p.projector += n;
        } else if name.contains(".lora_") {
            p.lora += n;
            adapters += usize::from(name.contains(".lora_A."));
        }
    }
    let raw = crate::error::read_json(&llm_dir.join("config.json"))?;
    let llm: videollama_llm::DecoderConfig = serde_json::from_value(raw.clone())
        .map_err(|e| PipelineError::file(llm_dir.join("config.json"), e))?;
    let mistral = raw.get("model_type").and_then(|t| t.as_str()) == Some("mistral");
    p.llm = llm.param_count();
    p.total = p.vision_encoder + p.projector + p.lora + p.llm;
    let (max_frames, max_sub_len) = cfg.frame_and_word_limits();
    let heads = m.vit_num_heads.or((width == 1408).then_some(16));
    Ok(MiniGpt4VideoInspect {
        vision_encoder: format!(
            "EVA ViT {} px, patch {patch}, width {width}, {depth} of {blocks} blocks, {} heads + fresh ln_vision",
            grid * patch,
            heads.map(|h| h.to_string()).unwrap_or_else(|| "? (set model.vit_num_heads)".into())
        ),
        tokens_per_frame: per_frame,
        max_frames,
        max_subtitle_words: max_sub_len,
        lora: format!(
            "r {}, alpha {} (scale {}), {adapters} adapters on {:?}",
            m.lora_r,
            m.lora_alpha,
            cfg.lora_scale(),
            m.lora_target_modules
        ),
        context_window: m.context_window.unwrap_or(if mistral { 7500 } else { 3700 }),
        llm: LlmSummary {
            family: if mistral {
                crate::config::LlmFamily::Mistral
            } else {
                crate::config::LlmFamily::Llama
            },
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
        tokens: crate::inspect::TokenCounts {
            video: Some(per_frame * max_frames),
            image: Some(per_frame),
            audio: None,
        },
    })
}
