//! The default model built into the binary: the files this project trained
//! (`assets/default-model/`, a few MB) are embedded here; the released parts they sit on
//! (SmolLM2-135M-Instruct GGUF, Whisper tiny.en) come from the user's cache, where
//! scripts/fetch-default-model.sh puts them. `videollama_pipeline::default_model` assembles
//! the loadable folder on first use. See docs/default-model.md for how the trained files are
//! made (scripts/make-default-model.sh).

use anyhow::Result;
use std::path::PathBuf;

#[cfg(default_model_assets)]
macro_rules! asset {
    ($name:literal) => {
        (
            $name,
            include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../assets/default-model/",
                $name
            ))
            .as_slice(),
        )
    };
}

/// The trained files, by their path inside the model folder.
#[cfg(default_model_assets)]
fn files() -> Vec<(&'static str, &'static [u8])> {
    vec![
        asset!("config.json"),
        asset!("model-00001-of-00002.safetensors"),
        asset!("adapter_config.json"),
        asset!("adapter_model.safetensors"),
        asset!("vision_tower/config.json"),
        asset!("vision_tower/preprocessor_config.json"),
    ]
}

/// The default model's folder, installed into the cache first when needed.
#[cfg(default_model_assets)]
pub fn resolve() -> Result<PathBuf> {
    let root = videollama_pipeline::default_model::cache_root();
    let dir = videollama_pipeline::default_model::ensure_installed(&files(), &root)?;
    Ok(dir)
}

/// Built from a checkout without the trained files: say how to get a model.
#[cfg(not(default_model_assets))]
pub fn resolve() -> Result<PathBuf> {
    anyhow::bail!(
        "no --model given, and this binary was built without the default model's trained files \
         (assets/default-model/ is empty): pass --model DIR, or make them with \
         scripts/make-default-model.sh and rebuild"
    )
}
