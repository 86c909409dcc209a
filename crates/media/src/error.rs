//! The error type of the media crate.

use std::path::PathBuf;

/// Everything that can go wrong while loading or preprocessing media.
///
/// Errors that concern a file always name it. Nothing in this crate panics on
/// corrupt input bytes or absurd dimensions; such inputs end up here.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MediaError {
    /// The file or directory could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The bytes could not be decoded (corrupt, truncated or unsupported content).
    #[error("cannot decode {}: {message}", path.display())]
    Decode { path: PathBuf, message: String },
    /// The file's format is not one this crate reads.
    #[error("unsupported media format for {}: {message}", path.display())]
    UnsupportedFormat { path: PathBuf, message: String },
    /// The image is larger than the configured limits (or has a zero dimension).
    #[error("image {} has unsupported dimensions {width}x{height}: {message}", path.display())]
    Dimensions {
        path: PathBuf,
        width: u32,
        height: u32,
        message: String,
    },
    /// A directory of frames contained no readable image file.
    #[error("no image frames found in directory {}", path.display())]
    EmptyDirectory { path: PathBuf },
    /// An in-memory image is malformed (buffer size does not match its dimensions, zero size, ...).
    #[error("invalid image: {0}")]
    InvalidImage(String),
    /// A preprocessing configuration is invalid or could not be parsed.
    #[error("invalid preprocessing config: {0}")]
    Config(String),
    /// Invalid arguments to an audio function (wrong length, zero sample rate, ...).
    #[error("invalid audio input: {0}")]
    Audio(String),
}

/// Result alias for this crate.
pub type Result<T, E = MediaError> = std::result::Result<T, E>;
