//! Errors of the FFmpeg-backed decoders.

use std::path::{Path, PathBuf};

use crate::error::MediaError;

/// Everything that can go wrong while probing or decoding a media file.
///
/// Every variant names the file and the cause. Corrupt or hostile input bytes end up
/// here; the decoders never panic on them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The path does not exist.
    #[error("{}: file not found", path.display())]
    NotFound { path: PathBuf },
    /// The path exists but could not be read (permissions, a directory, ...).
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file has zero bytes.
    #[error("{}: file is empty (0 bytes)", path.display())]
    EmptyFile { path: PathBuf },
    /// FFmpeg does not recognise the bytes as any container it can demux.
    #[error("{}: not a media file that FFmpeg can read: {cause}", path.display())]
    NotMedia { path: PathBuf, cause: String },
    /// The container has no video stream.
    #[error("{}: no video stream", path.display())]
    NoVideoStream { path: PathBuf },
    /// The container has no audio stream.
    #[error("{}: no audio stream", path.display())]
    NoAudioStream { path: PathBuf },
    /// The stream's codec (or pixel/sample format) is not supported by this FFmpeg build.
    #[error("{}: unsupported codec {codec}: {cause}", path.display())]
    UnsupportedCodec {
        path: PathBuf,
        codec: String,
        cause: String,
    },
    /// The stream is truncated or corrupt, so the requested frames/samples cannot be
    /// produced.
    #[error("{}: corrupt or truncated stream: {cause}", path.display())]
    Corrupt { path: PathBuf, cause: String },
    /// The stream exists but holds no frames (video) or no samples (audio).
    #[error("{}: {what} is empty (zero frames/samples)", path.display())]
    NoFrames { path: PathBuf, what: String },
    /// Zero or absurd picture dimensions (each side must be 1..=[`super::MAX_DIMENSION`]).
    #[error(
        "{}: unsupported picture dimensions {width}x{height} (each side must be 1..={})",
        path.display(),
        super::MAX_DIMENSION
    )]
    Dimensions {
        path: PathBuf,
        width: u32,
        height: u32,
    },
    /// A requested frame index is `>=` the frame count.
    #[error("{}: frame index {index} out of range (the video has {frame_count} frames)", path.display())]
    IndexOutOfRange {
        path: PathBuf,
        index: usize,
        frame_count: usize,
    },
    /// Any other FFmpeg failure (allocation, seeking, swscale/swresample set-up, ...).
    #[error("{}: FFmpeg failed during {op}: {cause}", path.display())]
    Ffmpeg {
        path: PathBuf,
        op: &'static str,
        cause: String,
    },
}

impl DecodeError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            DecodeError::NotFound { path }
            | DecodeError::Io { path, .. }
            | DecodeError::EmptyFile { path }
            | DecodeError::NotMedia { path, .. }
            | DecodeError::NoVideoStream { path }
            | DecodeError::NoAudioStream { path }
            | DecodeError::UnsupportedCodec { path, .. }
            | DecodeError::Corrupt { path, .. }
            | DecodeError::NoFrames { path, .. }
            | DecodeError::Dimensions { path, .. }
            | DecodeError::IndexOutOfRange { path, .. }
            | DecodeError::Ffmpeg { path, .. } => path,
        }
    }

    pub(crate) fn corrupt(path: &Path, cause: impl Into<String>) -> Self {
        DecodeError::Corrupt {
            path: path.to_path_buf(),
            cause: cause.into(),
        }
    }

    pub(crate) fn ffmpeg(path: &Path, op: &'static str, cause: impl ToString) -> Self {
        DecodeError::Ffmpeg {
            path: path.to_path_buf(),
            op,
            cause: cause.to_string(),
        }
    }
}

impl From<DecodeError> for MediaError {
    fn from(e: DecodeError) -> Self {
        let message = e.to_string();
        match e {
            DecodeError::NotFound { path } => MediaError::Io {
                path,
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "file not found"),
            },
            DecodeError::Io { path, source } => MediaError::Io { path, source },
            DecodeError::NotMedia { path, .. }
            | DecodeError::NoVideoStream { path }
            | DecodeError::NoAudioStream { path }
            | DecodeError::UnsupportedCodec { path, .. } => {
                MediaError::UnsupportedFormat { path, message }
            }
            DecodeError::Dimensions {
                path,
                width,
                height,
            } => MediaError::Dimensions {
                path,
                width,
                height,
                message,
            },
            DecodeError::EmptyFile { path }
            | DecodeError::Corrupt { path, .. }
            | DecodeError::NoFrames { path, .. }
            | DecodeError::IndexOutOfRange { path, .. }
            | DecodeError::Ffmpeg { path, .. } => MediaError::Decode { path, message },
        }
    }
}
