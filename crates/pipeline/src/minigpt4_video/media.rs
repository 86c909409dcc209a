//! MiniGPT4-Video's media → model inputs (filled in below).
use super::MiniGpt4VideoParts;
use crate::error::{PipelineError, Result};
use crate::media::{MediaReport, MediaRequest};
use crate::MediaInput;

pub fn prepare(
    _parts: &MiniGpt4VideoParts,
    _req: &MediaRequest,
) -> Result<(MediaInput, MediaReport)> {
    Err(PipelineError::Invalid(
        "MiniGPT4-Video media: not yet".into(),
    ))
}
