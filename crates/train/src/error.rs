//! Errors of a training run. Per-sample data problems are not errors: they are reported as
//! [`crate::SkippedSample`]s and the run goes on without the sample.

use std::path::PathBuf;
use videollama_pipeline::PipelineError;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{path}: {cause}")]
    File { path: PathBuf, cause: String },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, TrainError>;

impl TrainError {
    pub fn file(path: impl Into<PathBuf>, cause: impl std::fmt::Display) -> Self {
        TrainError::File {
            path: path.into(),
            cause: cause.to_string(),
        }
    }
}
