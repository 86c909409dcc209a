//! Errors of the demo-data generator. Every variant says what was being done and, where
//! there is one, which file.

use std::path::PathBuf;

/// Result alias of this crate.
pub type Result<T, E = DemoDataError> = std::result::Result<T, E>;

/// Everything that can go wrong while generating, reading or scoring demo data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DemoDataError {
    /// The configuration is unusable (empty ranges, duplicate split seeds, odd sizes, ...).
    #[error("invalid demo-data configuration: {0}")]
    Config(String),
    /// Reading or writing a file failed.
    #[error("{}: {op}: {source}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The `espeak-ng` program (needed for the spoken-number sound tracks) is not installed.
    #[error(
        "`{}` was not found or could not be started ({source}); the spoken-number sound \
         tracks need it: install it (Debian/Ubuntu: `apt-get install espeak-ng`), point \
         `DemoDataConfig::espeak_program` at it, or set `with_audio = false`",
        program.display()
    )]
    EspeakMissing {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `espeak-ng` ran but failed or wrote something that is not 16-bit mono PCM WAV.
    #[error("espeak-ng failed for {text:?}: {message}")]
    Espeak { text: String, message: String },
    /// An FFmpeg call failed while encoding a clip.
    #[error("{}: FFmpeg failed during {op}: {cause}", path.display())]
    Encode {
        path: PathBuf,
        op: &'static str,
        cause: String,
    },
    /// A written clip could not be decoded back by `videollama_media::decode`.
    #[error("decoding the generated clip failed: {0}")]
    Decode(#[from] videollama_media::decode::DecodeError),
    /// A written clip decoded, but not to what was rendered.
    #[error("{}: generated clip fails verification: {message}", path.display())]
    Verify { path: PathBuf, message: String },
    /// JSON (de)serialisation of the dataset files failed.
    #[error("{}: JSON: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A question cannot be asked of (or answered from) this clip's metadata, e.g. a colour
    /// question about "the circle" in a clip without a circle, or a sound question about a
    /// clip without a sound track.
    #[error("clip {clip}: question {question} is not answerable: {reason}")]
    Unanswerable {
        clip: String,
        question: String,
        reason: String,
    },
}

impl DemoDataError {
    pub(crate) fn io(path: impl Into<PathBuf>, op: &'static str, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            op,
            source,
        }
    }
}
