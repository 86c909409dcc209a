//! Finding the vision tower's configuration from `mm_vision_tower`.
//!
//! The published checkpoints name a Hub repo (`openai/clip-vit-large-patch14-336`,
//! `google/siglip-so400m-patch14-384`): those configurations are built in, so no
//! download is needed (the weights are inside the checkpoint). Anything else is a
//! folder holding `config.json` (+ `preprocessor_config.json`), looked up:
//! 1. as given (absolute, or relative to the working directory),
//! 2. relative to the checkpoint folder,
//! 3. relative to the checkpoint folder's parent (the golden fixtures keep it there),
//! 4. in the local Hugging Face cache (`$HF_HOME/hub` or `~/.cache/huggingface/hub`).

use crate::error::{read_json, PipelineError, Result};
use std::path::{Path, PathBuf};
use videollama_encoders::VisionTowerConfig;

/// Where a vision tower's configuration came from.
#[derive(Debug, Clone)]
pub struct ResolvedTower {
    pub config: VisionTowerConfig,
    /// `preprocessor_config.json`, when the tower came from a folder that has one.
    pub preprocessor: Option<serde_json::Value>,
    /// The folder, when it came from one (`None` for a built-in configuration).
    pub dir: Option<PathBuf>,
}

pub(crate) fn hf_cache_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(cache) = std::env::var("HF_HUB_CACHE") {
        dirs.push(PathBuf::from(cache));
    }
    if let Ok(home) = std::env::var("HF_HOME") {
        dirs.push(PathBuf::from(home).join("hub"));
    }
    if let Ok(home) = std::env::var("HOME") {
        dirs.push(PathBuf::from(home).join(".cache/huggingface/hub"));
    }
    dirs
}

/// The snapshot folder of `org/name` in a Hub cache, preferring `refs/main`.
pub(crate) fn hf_snapshot(cache: &Path, repo: &str) -> Option<PathBuf> {
    let base = cache.join(format!("models--{}", repo.replace('/', "--")));
    let snapshots = base.join("snapshots");
    if let Ok(rev) = std::fs::read_to_string(base.join("refs/main")) {
        let dir = snapshots.join(rev.trim());
        if dir.join("config.json").is_file() {
            return Some(dir);
        }
    }
    let mut entries: Vec<_> = std::fs::read_dir(&snapshots)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
    entries.sort();
    entries
        .into_iter()
        .find(|d| d.join("config.json").is_file())
}

pub fn resolve_vision_tower(name: &str, checkpoint_dir: &Path) -> Result<ResolvedTower> {
    match name {
        "openai/clip-vit-large-patch14-336" => {
            return Ok(ResolvedTower {
                config: VisionTowerConfig::clip_vit_large_patch14_336(),
                preprocessor: None,
                dir: None,
            })
        }
        "google/siglip-so400m-patch14-384" => {
            return Ok(ResolvedTower {
                config: VisionTowerConfig::siglip_so400m_patch14_384(),
                preprocessor: None,
                dir: None,
            })
        }
        _ => {}
    }
    let mut candidates = vec![PathBuf::from(name), checkpoint_dir.join(name)];
    if let Some(parent) = checkpoint_dir.parent() {
        candidates.push(parent.join(name));
    }
    for cache in hf_cache_dirs() {
        if let Some(dir) = hf_snapshot(&cache, name) {
            candidates.push(dir);
        } else {
            candidates.push(cache.join(format!("models--{}", name.replace('/', "--"))));
        }
    }
    for dir in &candidates {
        let config_path = dir.join("config.json");
        if config_path.is_file() {
            let json = read_json(&config_path)?;
            let config = VisionTowerConfig::from_config_json(&json)
                .map_err(|e| PipelineError::file(&config_path, e))?;
            let pre = dir.join("preprocessor_config.json");
            let preprocessor = if pre.is_file() {
                Some(read_json(&pre)?)
            } else {
                None
            };
            return Ok(ResolvedTower {
                config,
                preprocessor,
                dir: Some(dir.clone()),
            });
        }
    }
    let tried: Vec<String> = candidates.iter().map(|c| c.display().to_string()).collect();
    Err(PipelineError::VisionTowerNotFound {
        name: name.to_string(),
        tried: tried.join(", "),
    })
}
