//! `model_config.yaml` of MiniGPT4-Video (`test_configs/*_test_config.yaml`): which files
//! make the model, the LoRA rank and scale, and the image size.
//!
//! Paths are resolved against the YAML's folder, then its parent (the reference runs from the
//! repository root, so its configs say `checkpoint/…`). Values the reference hard-codes in
//! Python are keys here with the published defaults: `vit_num_heads` (16, EVA ViT-g; only
//! valid at width 1408), `vit_depth` (39 of EVA-g's 40 blocks), `max_frames` / `max_sub_len`
//! (45 / 400, or 90 / 800 when the checkpoint path contains "mistral", as
//! `minigpt4_video_inference.py` decides), `context_window` (3700 for LLaMA, 7500 for
//! Mistral, as `generate` decides). `--options model.KEY=VALUE` overrides any of them.

use crate::error::{PipelineError, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The YAML file name that marks a MiniGPT4-Video folder.
pub const MODEL_CONFIG: &str = "model_config.yaml";

fn default_lora_r() -> usize {
    64
}
fn default_lora_alpha() -> f64 {
    16.0
}
fn default_true() -> bool {
    true
}
fn default_targets() -> Vec<String> {
    vec!["q_proj".into(), "v_proj".into()]
}

/// The `model:` section (reference names; unknown keys ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct MiniGpt4VideoConfig {
    #[serde(default)]
    pub arch: Option<String>,
    /// The LLM folder (Llama-2-chat or Mistral-Instruct, Hugging Face layout).
    pub llama_model: String,
    /// The MiniGPT4-Video checkpoint (`llama_proj` + LoRA factors).
    #[serde(default)]
    pub ckpt: Option<String>,
    /// EVA ViT-g weights; the reference downloads LAVIS's file, ours reads
    /// `eva_vit_g.pth` beside the YAML unless this names another.
    #[serde(default)]
    pub vit_model_path: Option<String>,
    #[serde(default)]
    pub image_size: Option<usize>,
    #[serde(default)]
    pub img_size: Option<usize>,
    #[serde(default = "default_lora_r")]
    pub lora_r: usize,
    #[serde(default = "default_lora_alpha")]
    pub lora_alpha: f64,
    #[serde(default = "default_targets")]
    pub lora_target_modules: Vec<String>,
    /// Concatenate 4 patch tokens into one (`token_pooling`, true in every published config).
    #[serde(default = "default_true")]
    pub token_pooling: bool,
    #[serde(default)]
    pub vit_num_heads: Option<usize>,
    #[serde(default)]
    pub vit_depth: Option<usize>,
    #[serde(default)]
    pub max_frames: Option<usize>,
    #[serde(default)]
    pub max_sub_len: Option<usize>,
    #[serde(default)]
    pub context_window: Option<usize>,
    /// A Whisper folder for subtitles from speech (ours; the reference loads Whisper-large
    /// from the Hub). `--whisper DIR` overrides it.
    #[serde(default)]
    pub whisper_model: Option<String>,
}

/// A parsed `model_config.yaml`.
#[derive(Debug, Clone)]
pub struct ModelConfigFile {
    pub path: PathBuf,
    pub dir: PathBuf,
    pub model: MiniGpt4VideoConfig,
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
        let model: MiniGpt4VideoConfig = serde_yaml_ng::from_value(model_doc)
            .map_err(|e| PipelineError::file(path, format!("model section: {e}")))?;
        if model.lora_r == 0 {
            return Err(PipelineError::file(path, "lora_r must be positive"));
        }
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Ok(Self {
            path: path.to_path_buf(),
            dir,
            model,
        })
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

    /// `lora_alpha / lora_r`.
    pub fn lora_scale(&self) -> f64 {
        self.model.lora_alpha / self.model.lora_r as f64
    }

    /// `(max_frames, max_sub_len)`: the inference script's rule on the checkpoint path.
    pub fn frame_and_word_limits(&self) -> (usize, usize) {
        let mistral = self
            .model
            .ckpt
            .as_deref()
            .is_some_and(|c| c.contains("mistral"));
        let (frames, words) = if mistral { (90, 800) } else { (45, 400) };
        (
            self.model.max_frames.unwrap_or(frames),
            self.model.max_sub_len.unwrap_or(words),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_follow_the_checkpoint_name_and_paths_fall_back_to_the_parent() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("checkpoint");
        std::fs::create_dir_all(dir.join("llm")).unwrap();
        let path = dir.join(MODEL_CONFIG);
        std::fs::write(
            &path,
            "model:\n  llama_model: checkpoint/llm\n  ckpt: checkpoint/video_mistral_checkpoint_last.pth\n  lora_r: 8\n  lora_alpha: 2\n",
        )
        .unwrap();
        let cfg = ModelConfigFile::from_file(&path, &[]).unwrap();
        assert_eq!(cfg.frame_and_word_limits(), (90, 800));
        assert_eq!(cfg.lora_scale(), 0.25);
        assert_eq!(
            cfg.resolve("checkpoint/llm"),
            root.path().join("checkpoint/llm")
        );
        let cfg = ModelConfigFile::from_file(&path, &["model.max_frames=12".into()]).unwrap();
        assert_eq!(cfg.frame_and_word_limits(), (12, 800));
    }
}
