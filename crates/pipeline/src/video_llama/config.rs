//! `eval_config.yaml` of the Video-LLaMA demo: which files make the model, and its sizes.
//!
//! The `model:` section is read with the reference's field names and defaults
//! (`VideoLLAMA.from_config`). Paths are relative to the folder holding the YAML. Values the
//! reference hard-codes in Python instead of reading a config are explicit fields here, with
//! the published values as defaults where the weights cannot tell them:
//! `vit_num_heads` (EVA ViT-g: 16), `imagebind_num_heads` (ImageBind-huge audio: 12),
//! `vit_depth` (BLIP-2 runs 39 of EVA-g's 40 blocks). `--options model.KEY=VALUE` overrides
//! any field, as the demo's `--options` does.

use crate::error::{PipelineError, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The YAML file name that marks a Video-LLaMA model folder.
pub const EVAL_CONFIG: &str = "eval_config.yaml";

fn default_true() -> bool {
    true
}
fn default_max_frame_pos() -> usize {
    32
}
fn default_num_video_query_token() -> usize {
    32
}
fn default_num_audio_query_token() -> usize {
    8
}
fn default_num_query_token() -> usize {
    32
}
fn default_model_type() -> String {
    "pretrain_vicuna".to_string()
}
fn default_n_frms() -> usize {
    8
}

/// The `model:` section (reference names; unknown keys are ignored, as OmegaConf does).
#[derive(Debug, Clone, Deserialize)]
pub struct VideoLlamaConfig {
    #[serde(default)]
    pub arch: Option<String>,
    #[serde(default = "default_model_type")]
    pub model_type: String,
    /// The LLM folder (Hugging Face layout).
    pub llama_model: String,
    /// The BLIP-2 checkpoint that brings the image Q-Former, its queries and `ln_vision`.
    #[serde(default)]
    pub q_former_model: Option<String>,
    /// EVA ViT-g weights: not in the reference's config (it downloads LAVIS's
    /// `eva_vit_g.pth`); ours looks for this file, default `eva_vit_g.pth`.
    #[serde(default)]
    pub vit_model_path: Option<String>,
    /// Folder holding `imagebind_huge.pth`.
    #[serde(default)]
    pub imagebind_ckpt_path: Option<String>,
    /// Vision-language branch checkpoint (video Q-Former, frame positions, `llama_proj`).
    #[serde(default)]
    pub ckpt: Option<String>,
    /// Audio-language branch checkpoint (audio Q-Former, positions, `audio_llama_proj`).
    #[serde(default)]
    pub ckpt_2: Option<String>,
    #[serde(default = "default_true")]
    pub equip_audio_branch: bool,
    #[serde(default = "default_max_frame_pos")]
    pub max_frame_pos: usize,
    #[serde(default = "default_num_query_token")]
    pub num_query_token: usize,
    #[serde(default = "default_num_video_query_token")]
    pub num_video_query_token: usize,
    #[serde(default = "default_num_audio_query_token")]
    pub num_audio_query_token: usize,
    #[serde(default)]
    pub image_size: Option<usize>,
    /// EVA ViT attention heads (the weights cannot tell); default 16 = ViT-g, only valid at
    /// width 1408.
    #[serde(default)]
    pub vit_num_heads: Option<usize>,
    /// EVA blocks to run; default min(blocks in the file, 39) like `create_eva_vit_g`.
    #[serde(default)]
    pub vit_depth: Option<usize>,
    /// ImageBind audio attention heads; default 12 = ImageBind-huge, only valid at width 768.
    #[serde(default)]
    pub imagebind_num_heads: Option<usize>,
    /// Frames per video: the demo's `load_video(n_frms=8)`.
    #[serde(default = "default_n_frms")]
    pub n_frms: usize,
}

/// A parsed `eval_config.yaml` and the folder its paths are relative to.
#[derive(Debug, Clone)]
pub struct EvalConfig {
    pub path: PathBuf,
    pub dir: PathBuf,
    pub model: VideoLlamaConfig,
}

/// Apply one `section.key=value` override to a YAML document (OmegaConf dot-list style).
pub(crate) fn apply_override(doc: &mut serde_yaml_ng::Value, option: &str) -> Result<()> {
    let (key, value) = option.split_once('=').ok_or_else(|| {
        PipelineError::Invalid(format!("--options {option:?}: expected KEY=VALUE"))
    })?;
    let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(value)
        .map_err(|e| PipelineError::Invalid(format!("--options {option:?}: {e}")))?;
    let mut node = doc;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let map = match node {
            serde_yaml_ng::Value::Mapping(m) => m,
            _ => {
                return Err(PipelineError::Invalid(format!(
                    "--options {option:?}: {} is not a section",
                    parts[..i].join(".")
                )))
            }
        };
        let k = serde_yaml_ng::Value::String(part.to_string());
        if i + 1 == parts.len() {
            map.insert(k, value);
            return Ok(());
        }
        node = map
            .entry(k)
            .or_insert_with(|| serde_yaml_ng::Value::Mapping(Default::default()));
    }
    Ok(())
}

impl EvalConfig {
    /// Read `path`, apply `options` (`model.vit_num_heads=4`, …) and parse the model section.
    pub fn from_file(path: &Path, options: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| PipelineError::file(path, e))?;
        let mut doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text)
            .map_err(|e| PipelineError::file(path, format!("invalid YAML: {e}")))?;
        for option in options {
            apply_override(&mut doc, option)?;
        }
        let mut model_doc = doc
            .get("model")
            .cloned()
            .ok_or_else(|| PipelineError::file(path, "no `model:` section"))?;
        // The demo's frame count lives in the dataset section (`n_frms`); lift it.
        if let Some(n) = doc
            .get("datasets")
            .and_then(|d| d.get("webvid"))
            .and_then(|d| d.get("vis_processor"))
            .and_then(|d| d.get("train"))
            .and_then(|d| d.get("n_frms"))
        {
            if let serde_yaml_ng::Value::Mapping(m) = &mut model_doc {
                m.entry("n_frms".into()).or_insert(n.clone());
            }
        }
        let model: VideoLlamaConfig = serde_yaml_ng::from_value(model_doc)
            .map_err(|e| PipelineError::file(path, format!("model section: {e}")))?;
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

    /// A path the config names, resolved against the config's folder.
    pub fn resolve(&self, rel: &str) -> PathBuf {
        let p = Path::new(rel);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_override_nested_keys_and_defaults_hold() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(EVAL_CONFIG);
        std::fs::write(
            &path,
            "model:\n  llama_model: llm\n  ckpt: a.pth\ndatasets:\n  webvid:\n    vis_processor:\n      train:\n        n_frms: 6\n",
        )
        .unwrap();
        let cfg = EvalConfig::from_file(&path, &["model.vit_num_heads=4".into()]).unwrap();
        assert_eq!(cfg.model.vit_num_heads, Some(4));
        assert_eq!(cfg.model.n_frms, 6);
        assert_eq!(cfg.model.max_frame_pos, 32);
        assert!(cfg.model.equip_audio_branch);
        assert_eq!(cfg.resolve("llm"), dir.path().join("llm"));
        let err = EvalConfig::from_file(&path, &["novalue".into()]).unwrap_err();
        assert!(err.to_string().contains("KEY=VALUE"), "{err}");
    }
}
