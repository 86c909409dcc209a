//! `videollama inspect` for a Video-LLaMA folder: sizes and parameter counts read from the
//! weight files' headers (no tensor is loaded), the LLM from its `config.json`.

use super::config::EvalConfig;
use super::{weight_sources, ConvTemplate, BLIP2_EVA_DEPTH, EVA_VIT_G, IMAGEBIND_HUGE_AUDIO};
use crate::checkpoint::Checkpoint;
use crate::error::{PipelineError, Result};
use crate::inspect::LlmSummary;
use candle_core::{DType, Device};
use serde::Serialize;
use std::path::Path;

#[derive(Debug, Default, Serialize)]
pub struct VideoLlamaParameters {
    pub vision_encoder: u64,
    pub image_qformer: u64,
    pub video_qformer: u64,
    pub audio_encoder: u64,
    pub audio_qformer: u64,
    pub llm: u64,
    pub total: u64,
}

#[derive(Debug, Serialize)]
pub struct VideoLlamaInspect {
    pub model_type: String,
    pub conv_template: ConvTemplate,
    pub frames_per_video: usize,
    pub max_frames: usize,
    pub vision_encoder: String,
    pub image_qformer: String,
    pub video_qformer: String,
    pub audio_encoder: Option<String>,
    pub audio_qformer: Option<String>,
    pub llm: LlmSummary,
    pub parameters: VideoLlamaParameters,
    /// LLM embeddings per input: video and image 32 (the video Q-Former's queries whatever
    /// the frame count), audio 8.
    pub tokens: crate::inspect::TokenCounts,
}

/// Describe the model `eval_config.yaml` at `path` names, from file headers only.
pub fn inspect(path: &Path, options: &[String]) -> Result<VideoLlamaInspect> {
    let cfg = EvalConfig::from_file(path, options)?;
    let ckpt = Checkpoint::open_sources(&cfg.dir, &weight_sources(&cfg), DType::F32, &Device::Cpu)?;
    let shape =
        |name: &str| -> Option<Vec<usize>> { ckpt.stored_shape(name).map(<[usize]>::to_vec) };
    let has = |name: &str| ckpt.stored_shape(name).is_some();
    let need = |name: &str, owner: &str| -> Result<Vec<usize>> {
        shape(name)
            .ok_or_else(|| PipelineError::file(&cfg.path, format!("{owner} has no tensor {name}")))
    };
    let m = &cfg.model;
    // EVA ViT.
    let vit_width = need("visual_encoder.cls_token", "the EVA ViT file")?[2];
    let mut blocks = 0;
    while has(&format!("visual_encoder.blocks.{blocks}.norm1.weight")) {
        blocks += 1;
    }
    let depth = m.vit_depth.unwrap_or(blocks.min(BLIP2_EVA_DEPTH));
    let vit_heads = m
        .vit_num_heads
        .or((vit_width == EVA_VIT_G.0).then_some(EVA_VIT_G.1));
    let pos = need("visual_encoder.pos_embed", "the EVA ViT file")?;
    let patch = need("visual_encoder.patch_embed.proj.weight", "the EVA ViT file")?[2];
    let grid = ((pos[1] - 1) as f64).sqrt().round() as usize;
    // Q-Formers.
    let q = need("query_tokens", "q_former_model")?;
    let video_q = need("video_query_tokens", "ckpt")?;
    let frames = need("video_frame_position_embedding.weight", "ckpt")?[0];
    let proj = need("llama_proj.weight", "ckpt")?;
    let count_layers = |prefix: &str| {
        let mut n = 0;
        while has(&format!(
            "{prefix}.bert.encoder.layer.{n}.attention.self.query.weight"
        )) {
            n += 1;
        }
        n
    };
    // Parameter counts by owner, from shapes.
    let mut p = VideoLlamaParameters::default();
    for name in ckpt.tensor_names() {
        let Some(dims) = shape(name) else { continue };
        let n: u64 = dims.iter().map(|&d| d as u64).product();
        if let Some(rest) = name.strip_prefix("visual_encoder.") {
            let in_depth = rest
                .strip_prefix("blocks.")
                .and_then(|r| r.split('.').next())
                .and_then(|b| b.parse::<usize>().ok())
                .is_none_or(|b| b < depth);
            if in_depth {
                p.vision_encoder += n;
            }
        } else if name.starts_with("Qformer.")
            || name == "query_tokens"
            || name.starts_with("ln_vision.")
        {
            if !name.ends_with("position_ids")
                && !name.contains("word_embeddings")
                && !name.contains("position_embeddings")
                && !name.starts_with("Qformer.cls.")
            {
                p.image_qformer += n;
            }
        } else if name.starts_with("video_") || name.starts_with("llama_proj.") {
            if !name.ends_with("position_ids") {
                p.video_qformer += n;
            }
        } else if let Some(rest) = name.strip_prefix("audio_encoder.") {
            if rest.contains(".audio.") {
                p.audio_encoder += n;
            }
        } else if name.starts_with("audio_") && !name.ends_with("position_ids") {
            p.audio_qformer += n;
        }
    }
    let llm_dir = cfg.resolve(&m.llama_model);
    let raw = crate::error::read_json(&llm_dir.join("config.json"))?;
    let llm: videollama_llm::DecoderConfig = serde_json::from_value(raw)
        .map_err(|e| PipelineError::file(llm_dir.join("config.json"), e))?;
    p.llm = llm.param_count();
    p.total = p.vision_encoder
        + p.image_qformer
        + p.video_qformer
        + p.audio_encoder
        + p.audio_qformer
        + p.llm;
    let audio = m.equip_audio_branch && has("audio_query_tokens");
    let audio_q = shape("audio_query_tokens");
    let ib_width =
        shape("audio_encoder.modality_trunks.audio.blocks.0.norm_1.weight").map(|s| s[0]);
    Ok(VideoLlamaInspect {
        model_type: m.model_type.clone(),
        conv_template: ConvTemplate::from_model_type(&m.model_type),
        frames_per_video: m.n_frms,
        max_frames: frames,
        vision_encoder: format!(
            "EVA ViT {} px, patch {patch}, width {vit_width}, {depth} of {blocks} blocks, {} heads + ln_vision",
            grid * patch,
            vit_heads.map(|h| h.to_string()).unwrap_or_else(|| "? (set model.vit_num_heads)".into())
        ),
        image_qformer: format!(
            "BLIP-2 Q-Former: {} layers, hidden {}, {} queries per frame",
            count_layers("Qformer"),
            q[2],
            q[1]
        ),
        video_qformer: format!(
            "{} layers, {} queries, frame position table {frames} rows, llama_proj {} → {}",
            count_layers("video_Qformer"),
            video_q[1],
            proj[1],
            proj[0]
        ),
        audio_encoder: audio.then(|| {
            let w = ib_width.unwrap_or(0);
            let heads = m
                .imagebind_num_heads
                .or((w == IMAGEBIND_HUGE_AUDIO.0).then_some(IMAGEBIND_HUGE_AUDIO.1));
            format!(
                "ImageBind audio: width {w}, {} heads",
                heads.map(|h| h.to_string()).unwrap_or_else(|| "? (set model.imagebind_num_heads)".into())
            )
        }),
        audio_qformer: audio.then(|| {
            format!(
                "{} layers, {} queries, audio position table {} rows",
                count_layers("audio_Qformer"),
                audio_q.as_ref().map(|s| s[1]).unwrap_or(0),
                shape("audio_position_embedding.weight").map(|s| s[0]).unwrap_or(0)
            )
        }),
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
        tokens: crate::inspect::TokenCounts {
            video: Some(video_q[1]),
            image: Some(video_q[1]),
            audio: audio_q.map(|s| s[1]),
        },
    })
}
