//! `model_config.yaml` of MA-LMM: the `model:` options the reference passes to
//! `Blip2VicunaInstruct_MALMM.from_config` (names as in `blip2_instruct_vicuna7b.yaml` and the
//! run scripts) and the eval processors (`preprocess:`).
//!
//! Paths (`finetuned`, `llm_model`, `vit_model_path`, `bert_model`) resolve against the YAML's
//! folder, then its parent. Values the reference hard-codes in Python are keys here with the
//! published defaults: `vit_num_heads` (16; only valid at width 1408), `vit_depth` (39 of
//! EVA-g's 40 blocks), `bert_model` (`bert-base-uncased`), `cross_attention_freq` (2).
//! `--options model.KEY=VALUE` overrides any of them.

use crate::error::{PipelineError, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The YAML file name (shared with MiniGPT4-Video; `arch` tells them apart).
pub const MODEL_CONFIG: &str = "model_config.yaml";
/// `arch` of MA-LMM's model registry.
pub const ARCH: &str = "blip2_vicuna_instruct_malmm";

fn default_image_size() -> usize {
    224
}
fn default_num_query_token() -> usize {
    32
}
fn default_max_txt_len() -> usize {
    128
}
fn default_max_num_frames() -> usize {
    120
}
fn default_bert() -> String {
    "bert-base-uncased".into()
}
fn default_vit() -> String {
    "eva_vit_g.pth".into()
}
fn default_xattn_freq() -> usize {
    2
}
fn default_true() -> bool {
    true
}

/// The `model:` section (reference names; unknown keys ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct MaLmmConfig {
    #[serde(default)]
    pub arch: Option<String>,
    #[serde(default)]
    pub model_type: Option<String>,
    /// The fine-tuned LAVIS checkpoint (`{"model": state_dict}`, trainable parameters only).
    #[serde(default)]
    pub finetuned: Option<String>,
    #[serde(default)]
    pub load_finetuned: Option<bool>,
    #[serde(default = "default_image_size")]
    pub image_size: usize,
    #[serde(default = "default_num_query_token")]
    pub num_query_token: usize,
    /// The Vicuna v1.1 folder (Hugging Face layout).
    pub llm_model: String,
    #[serde(default)]
    pub prompt: Option<String>,
    /// Q-Former text truncation (`max_txt_len`).
    #[serde(default = "default_max_txt_len")]
    pub max_txt_len: usize,
    #[serde(default = "default_true")]
    pub qformer_text_input: bool,
    /// L: entries each bank keeps between frames (0 = no memory bank, not supported).
    #[serde(default)]
    pub memory_bank_length: usize,
    /// T: frames sampled per video; also the query banks' reset count.
    #[serde(default)]
    pub num_frames: usize,
    /// Rows of `image_pe` (checked against the weights).
    #[serde(default = "default_max_num_frames")]
    pub max_num_frames: usize,
    #[serde(default)]
    pub vit_precision: Option<String>,
    /// EVA ViT weights (LAVIS downloads `eva_vit_g.pth`; ours reads it beside the YAML).
    #[serde(default = "default_vit")]
    pub vit_model_path: String,
    /// The BERT folder (config.json + vocab.txt) the Q-Former and its tokenizer come from.
    #[serde(default = "default_bert")]
    pub bert_model: String,
    #[serde(default)]
    pub vit_num_heads: Option<usize>,
    #[serde(default)]
    pub vit_depth: Option<usize>,
    #[serde(default = "default_xattn_freq")]
    pub cross_attention_freq: usize,
}

/// A parsed `model_config.yaml`.
#[derive(Debug, Clone)]
pub struct ModelConfigFile {
    pub path: PathBuf,
    pub dir: PathBuf,
    pub model: MaLmmConfig,
    /// `preprocess.text_processor.eval.prompt` (the QA template), if any.
    pub prompt_template: Option<String>,
}

impl ModelConfigFile {
    pub fn from_file(path: &Path, options: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| PipelineError::file(path, e))?;
        let mut doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text)
            .map_err(|e| PipelineError::file(path, format!("invalid YAML: {e}")))?;
        for option in options {
            crate::video_llama::config::apply_override(&mut doc, option)?;
        }
        let model_doc = doc
            .get("model")
            .cloned()
            .ok_or_else(|| PipelineError::file(path, "no `model:` section"))?;
        let model: MaLmmConfig = serde_yaml_ng::from_value(model_doc)
            .map_err(|e| PipelineError::file(path, format!("model section: {e}")))?;
        if model.memory_bank_length == 0 {
            return Err(PipelineError::file(
                path,
                "memory_bank_length is 0: MA-LMM without a memory bank is not supported",
            ));
        }
        if model.num_frames == 0 {
            return Err(PipelineError::file(path, "num_frames must be positive"));
        }
        if !model.qformer_text_input {
            return Err(PipelineError::file(
                path,
                "qformer_text_input: false is not supported (the reference asserts it)",
            ));
        }
        let prompt_template = doc
            .get("preprocess")
            .and_then(|p| p.get("text_processor"))
            .and_then(|p| p.get("eval"))
            .and_then(|p| p.get("prompt"))
            .and_then(|p| p.as_str())
            .map(str::to_string);
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Ok(Self {
            path: path.to_path_buf(),
            dir,
            model,
            prompt_template,
        })
    }

    /// Whether a `model_config.yaml` is MA-LMM's (its `arch`).
    pub fn is_ma_lmm(path: &Path) -> bool {
        let Ok(text) = std::fs::read_to_string(path) else {
            return false;
        };
        let Ok(doc) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&text) else {
            return false;
        };
        doc.get("model")
            .and_then(|m| m.get("arch"))
            .and_then(|a| a.as_str())
            .is_some_and(|a| a == ARCH)
    }

    /// A path the config names: relative to the YAML's folder, else to its parent.
    pub fn resolve(&self, rel: &str) -> PathBuf {
        let p = Path::new(rel);
        if p.is_absolute() {
            return p.to_path_buf();
        }
        let here = self.dir.join(p);
        if here.exists() {
            return here;
        }
        match self.dir.parent() {
            Some(parent) if parent.join(p).exists() => parent.join(p),
            _ => here,
        }
    }

    /// The QA template (`Question: {} Short answer:` unless the YAML names another).
    pub fn template(&self) -> &str {
        self.prompt_template
            .as_deref()
            .unwrap_or("Question: {} Short answer:")
    }
}
