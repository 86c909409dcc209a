//! A CLIP vision tower that lives in its own folder, as Video-ChatGPT and Chat-UniVi load it
//! (`CLIPVisionModel.from_pretrained(mm_vision_tower)` + `CLIPImageProcessor` from the same
//! place): neither checkpoint holds tower weights.
//!
//! ```text
//! mm_vision_tower ─► folder (as given; under each search folder; the Hugging Face cache)
//!   config.json              ─► VisionTowerConfig (must be CLIP)
//!   preprocessor_config.json ─► ImageProcessorConfig (absent: CLIP defaults at the tower size)
//!   model.safetensors[.index.json] | pytorch_model.bin ─► WeightSource, prefix `vision_tower.`
//! ```
//!
//! The tower's weights are named `vision_tower.vision_model.*` in the model's checkpoint
//! name space (a full `CLIPModel` file also holds `text_model.*`, which stays unused).

use crate::checkpoint::WeightSource;
use crate::error::{read_json, PipelineError, Result};
use std::path::{Path, PathBuf};
use videollama_encoders::VisionTowerConfig;
use videollama_media::image_processor::{ImageProcessorConfig, ProcessorKind};

/// Where the tower's weights appear in the model's name space.
pub const PREFIX: &str = "vision_tower.";

/// A located tower folder.
#[derive(Debug, Clone)]
pub struct ClipTowerFolder {
    pub name: String,
    pub dir: PathBuf,
    pub config: VisionTowerConfig,
    pub processor: ImageProcessorConfig,
    /// The weights, under [`PREFIX`].
    pub weights: WeightSource,
}

/// The folder `name` refers to: as given, under each of `search`, or a Hugging Face cache
/// snapshot of the Hub id.
pub fn locate(name: &str, search: &[&Path]) -> Result<ClipTowerFolder> {
    let mut candidates = vec![PathBuf::from(name)];
    candidates.extend(search.iter().map(|d| d.join(name)));
    for cache in crate::tower::hf_cache_dirs() {
        if let Some(dir) = crate::tower::hf_snapshot(&cache, name) {
            candidates.push(dir);
        }
    }
    let Some(dir) = candidates
        .iter()
        .find(|d| d.join("config.json").is_file())
        .cloned()
    else {
        let tried: Vec<String> = candidates.iter().map(|c| c.display().to_string()).collect();
        return Err(PipelineError::VisionTowerNotFound {
            name: name.to_string(),
            tried: format!(
                "{} and the Hugging Face cache (the folder needs config.json and the weights)",
                tried.join(", ")
            ),
        });
    };
    let config_path = dir.join("config.json");
    let config = VisionTowerConfig::from_config_json(&read_json(&config_path)?)
        .map_err(|e| PipelineError::file(&config_path, e))?;
    if !matches!(config, VisionTowerConfig::Clip(_)) {
        return Err(PipelineError::file(
            &config_path,
            "this model's vision tower must be a CLIP vision model",
        ));
    }
    let pre = dir.join("preprocessor_config.json");
    let processor = if pre.is_file() {
        ImageProcessorConfig::from_hf_value(&read_json(&pre)?, ProcessorKind::Clip)
            .map_err(|e| PipelineError::file(&pre, e))?
    } else {
        let s = config.image_size();
        ImageProcessorConfig::from_hf_value(
            &serde_json::json!({"size": s, "crop_size": s}),
            ProcessorKind::Clip,
        )
        .map_err(|e| PipelineError::file(&dir, e))?
    };
    let weights_path = if dir.join("model.safetensors").is_file()
        || dir.join("model.safetensors.index.json").is_file()
    {
        dir.clone()
    } else if dir.join("pytorch_model.bin").is_file() {
        dir.join("pytorch_model.bin")
    } else {
        return Err(PipelineError::file(
            &dir,
            "vision tower folder without weights (model.safetensors or pytorch_model.bin)",
        ));
    };
    Ok(ClipTowerFolder {
        name: name.to_string(),
        weights: WeightSource {
            label: format!("vision tower {name}"),
            path: weights_path,
            prefix: PREFIX.to_string(),
        },
        dir,
        config,
        processor,
    })
}
