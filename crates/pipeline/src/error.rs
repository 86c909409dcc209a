//! Errors a user can cause: each names the file or value and the cause.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("model folder {0} does not exist")]
    MissingModelDir(PathBuf),
    #[error("{path}: {cause}")]
    File { path: PathBuf, cause: String },
    #[error("{path}: invalid JSON: {cause}")]
    Json { path: PathBuf, cause: String },
    #[error("unknown model_type {0:?} in config.json; supported: {1}")]
    UnknownModelType(String, String),
    #[error("checkpoint {dir}: {count} required tensor(s) missing: {names}")]
    MissingTensors {
        dir: PathBuf,
        count: usize,
        names: String,
    },
    #[error("checkpoint {dir}: tensor shape mismatch: {details}")]
    ShapeMismatch { dir: PathBuf, details: String },
    #[error("vision tower {name:?} not found; looked in: {tried}")]
    VisionTowerNotFound { name: String, tried: String },
    #[error("prompt is too long: {tokens} tokens (text + {visual} media tokens) + {new} new tokens exceed the model context of {context}")]
    PromptTooLong {
        tokens: usize,
        visual: usize,
        new: usize,
        context: usize,
    },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, PipelineError>;

impl PipelineError {
    pub fn file(path: impl Into<PathBuf>, cause: impl std::fmt::Display) -> Self {
        PipelineError::File {
            path: path.into(),
            cause: cause.to_string(),
        }
    }
}

/// Read a JSON file into a value, naming the file in every error.
pub fn read_json(path: &std::path::Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| PipelineError::file(path, e))?;
    serde_json::from_str(&text).map_err(|e| PipelineError::Json {
        path: path.to_path_buf(),
        cause: e.to_string(),
    })
}
