//! Errors of the speech recogniser; every variant that comes from a file names it.

use std::path::{Path, PathBuf};

use videollama_media::decode::DecodeError;

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, AsrError>;

#[derive(Debug, thiserror::Error)]
pub enum AsrError {
    /// A file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The folder has none of the files of a known checkpoint layout.
    #[error("{dir}: not a Whisper model folder ({detail})")]
    NotAModel { dir: PathBuf, detail: String },
    /// A file exists but its content is not what the loader expects (bad header, truncated
    /// variable, missing tensor, malformed JSON, inconsistent shapes).
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    /// Decoding or resampling an audio/video file failed.
    #[error(transparent)]
    Audio(#[from] DecodeError),
    /// An option is not valid for this model (e.g. a language an English-only model lacks).
    #[error("{0}")]
    Invalid(String),
    /// A tensor operation failed.
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
}

impl AsrError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        AsrError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn format(path: &Path, msg: impl Into<String>) -> Self {
        AsrError::Format {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }
}
