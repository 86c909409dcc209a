//! `--reference-noise FILE.safetensors`: random draws a reference run made, read back so a
//! run here can match it bit for bit. One option for every family; each family takes the
//! tensors it needs under the names the golden fixtures store them
//! (`<case>/expected.safetensors`):
//!
//! * Video-ChatGPT: `lm_head_added_rows` `[3, d]`, the rows `resize_token_embeddings` drew for
//!   the three video tokens (no checkpoint file holds them).
//! * Chat-UniVi: `dpcNN_jitter` `[B, N]`, the density noise of the NN-th DPC-KNN call of a
//!   request, in call order.
//!
//! Without the option every family is deterministic (see each family's documented default).
//! Families that draw nothing at inference ignore the file (with a warning).

use crate::error::{PipelineError, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The tensors of a reference-noise file.
#[derive(Debug, Clone)]
pub struct ReferenceNoise {
    pub path: PathBuf,
    tensors: HashMap<String, Tensor>,
}

impl ReferenceNoise {
    /// Read every tensor of `path` (a safetensors file), on the CPU.
    pub fn load(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(PipelineError::file(
                path,
                "--reference-noise: no such file (a safetensors file of recorded draws, e.g. a \
                 golden case's expected.safetensors)",
            ));
        }
        let tensors = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| {
            PipelineError::file(
                path,
                format!("--reference-noise: not a safetensors file: {e}"),
            )
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            tensors,
        })
    }

    /// The tensor `name` as f32, or an error naming the file and what is missing.
    pub fn get(&self, name: &str, what: &str) -> Result<Tensor> {
        let t = self.tensors.get(name).ok_or_else(|| {
            PipelineError::file(
                &self.path,
                format!("--reference-noise: no tensor {name} ({what})"),
            )
        })?;
        Ok(t.to_dtype(DType::F32)?)
    }

    /// Whether the file holds `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The names in the file, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.tensors.keys().cloned().collect();
        names.sort();
        names
    }
}

/// Load the file of `--reference-noise`, when given.
pub fn load_option(path: Option<&Path>) -> Result<Option<ReferenceNoise>> {
    path.map(ReferenceNoise::load).transpose()
}

/// A family without random draws was given `--reference-noise`: say it is not used.
pub fn warn_unused(path: Option<&Path>, family: &str) {
    if let Some(p) = path {
        tracing::warn!(
            "--reference-noise {}: {family} draws no random numbers at inference; the file is not used",
            p.display()
        );
    }
}
