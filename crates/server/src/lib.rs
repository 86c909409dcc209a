//! `videollama serve`: an OpenAI-compatible HTTP server (work in progress).

use std::path::PathBuf;
use std::sync::Arc;
use videollama_pipeline::Pipeline;

/// Server settings from the command line.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub host: String,
    pub port: u16,
    /// Directory under which `file://` media paths are allowed (none: refuse all).
    pub allowed_media_dir: Option<PathBuf>,
    /// Requests waiting for the model beyond this get 429.
    pub max_queue: usize,
    /// Request body limit in MiB.
    pub max_request_mb: usize,
    /// Name reported by `/v1/models` and in responses.
    pub model_name: String,
}

/// Serve until interrupted.
pub fn serve(_pipeline: Arc<Pipeline>, _config: ServeConfig) -> anyhow::Result<()> {
    anyhow::bail!("the server is not implemented yet")
}
