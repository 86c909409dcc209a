//! Training for the VideoLLaMA 2 recipe, on the CPU: stage 1 trains the connector on
//! caption-style data, stage 2 the connector plus LoRA adapters on the language model's
//! attention / MLP projections (and the audio projector of an audio-visual checkpoint).
//!
//! ```text
//! data.json ─► read_samples ─► prepare_dataset (Pipeline: chat template, tokenizer,
//!   (reference conversation format)      media decoding, frozen vision / audio towers once,
//!                                        features in memory or OUT/feature_cache/)
//!           ─► TrainModel (checkpoint LLM + LoRA Vars, connector / projector Vars)
//!           ─► per step: grad_accum samples ─► mean answer-token cross-entropy ─► backward
//!              ─► Σ grads ─► clip global norm ─► AdamW (warm-up + cosine lr)
//!           ─► every save_every steps: OUT/ = loadable checkpoint folder (export.rs)
//!              + optimizer.safetensors + trainer_state.json (resume bit for bit)
//!              + train_log.jsonl (one line per step) + loss_curve.png
//! ```
//!
//! Gradients flow through candle's autograd: the layers of `videollama-nn` switch to ops
//! with a backward when their input derives from a `Var` (`videollama_nn::autograd`), so
//! inference keeps its fused kernels. The loss of a sample is the mean cross-entropy over
//! its answer tokens (every `gpt` turn and the eos after it), the prompt tokenized by the
//! checkpoint's chat template exactly as at inference and the media spliced as at inference.
//! A problem with one sample is reported ([`TrainEvent::Skipped`], with its index and line)
//! and the sample left out; it never stops the run.

pub mod data;
pub mod error;
pub mod export;
pub mod init;
pub mod model;
pub mod optim;
pub mod plot;
pub mod prepare;
pub mod rng;
pub mod tower;
mod trainer;

pub use data::{read_samples, Role, Sample, SkippedSample};
pub use error::{Result, TrainError};
pub use export::{export_model, LoraExport};
pub use model::{LoraSpec, ModelSpec, SampleLoss, TrainModel};
pub use optim::{clip_global_norm, lr_factor, AdamW, AdamWConfig};
pub use prepare::{
    prepare_dataset, Dataset, FeatureCache, MediaFeatures, PrepareOptions, PreparedSample, Sequence,
};
pub use trainer::{resume, train, ResumeOptions, StepLog, TrainEvent, TrainReport};

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// What is trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Stage 1 (the reference's pre-training): the connector only.
    Connector,
    /// Stage 2 (fine-tuning): the connector, LoRA on the language model and, for
    /// audio-visual checkpoints, the audio projector `mm_projector_a`.
    ConnectorLora,
}

impl std::str::FromStr for Stage {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "1" | "connector" | "pretrain" => Ok(Stage::Connector),
            "2" | "lora" | "connector_lora" | "finetune" => Ok(Stage::ConnectorLora),
            other => Err(format!(
                "unknown stage {other:?}: 1 (connector) or 2 (connector + LoRA)"
            )),
        }
    }
}

/// Every setting of a training run (saved in `trainer_state.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    pub stage: Stage,
    /// Peak learning rate (of the LoRA factors, and of the connector unless
    /// `connector_lr` is set).
    pub learning_rate: f64,
    /// Peak learning rate of the connector and audio projector (the reference's
    /// `mm_projector_lr`); `None` = `learning_rate`.
    pub connector_lr: Option<f64>,
    /// Linear warm-up steps; `None` = `ceil(warmup_ratio · total steps)`.
    pub warmup_steps: Option<usize>,
    pub warmup_ratio: f64,
    /// The cosine decays to `min_lr_ratio · lr` at the last step.
    pub min_lr_ratio: f64,
    pub epochs: usize,
    /// Total optimizer steps (overrides `epochs`).
    pub max_steps: Option<usize>,
    /// Samples (micro-batches of one) whose gradients are summed per optimizer step; each
    /// sample's loss is divided by this (the mean over the micro-batches, as HF).
    pub grad_accum: usize,
    /// Clip the global gradient norm to this (`None`: no clipping).
    pub max_grad_norm: Option<f64>,
    pub adamw: AdamWConfig,
    pub lora_r: usize,
    pub lora_alpha: f64,
    pub lora_targets: Vec<String>,
    /// Stage 2 on an audio-visual checkpoint: also train `mm_projector_a`.
    pub train_audio_projector: bool,
    /// Seeds the data order and the LoRA initialisation.
    pub seed: u64,
    pub shuffle: bool,
    /// Save a checkpoint every N steps (0: only at the end).
    pub save_every: usize,
    pub out_dir: PathBuf,
    /// Use only the first N samples of the data file.
    pub max_samples: Option<usize>,
    /// Longest spliced sequence; default from the checkpoint config.
    pub max_seq_len: Option<usize>,
    pub lora_export: LoraExport,
    /// Where the frozen encoders' features go; `None` = `OUT/feature_cache/`.
    pub feature_cache: Option<FeatureCache>,
    /// Pad pictures to squares (the reference's training-time `image_aspect_ratio=pad`).
    pub pad_to_square: bool,
    /// Merge the samples about one media file into one multi-turn conversation
    /// ([`data::pack_by_media`]): the media runs through the model once for all of them.
    pub pack_by_media: bool,
    /// End this run after N optimizer steps with a resumable checkpoint (an interruption
    /// on purpose; `resume` continues).
    pub stop_after_steps: Option<usize>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            stage: Stage::Connector,
            learning_rate: 1e-3,
            connector_lr: None,
            warmup_steps: None,
            warmup_ratio: 0.03,
            min_lr_ratio: 0.0,
            epochs: 1,
            max_steps: None,
            grad_accum: 1,
            max_grad_norm: Some(1.0),
            adamw: AdamWConfig::default(),
            lora_r: 16,
            lora_alpha: 32.0,
            lora_targets: videollama_llm::decoder::LORA_TARGETS
                .iter()
                .map(|t| t.to_string())
                .collect(),
            train_audio_projector: true,
            seed: 42,
            shuffle: true,
            save_every: 0,
            out_dir: PathBuf::from("train-out"),
            max_samples: None,
            max_seq_len: None,
            lora_export: LoraExport::Both,
            feature_cache: None,
            pad_to_square: false,
            pack_by_media: false,
            stop_after_steps: None,
        }
    }
}

impl TrainConfig {
    /// The [`ModelSpec`] of this configuration.
    pub fn model_spec(&self) -> ModelSpec {
        let stage2 = self.stage == Stage::ConnectorLora;
        ModelSpec {
            train_connector: true,
            train_audio_projector: stage2 && self.train_audio_projector,
            lora: stage2.then(|| LoraSpec {
                r: self.lora_r,
                alpha: self.lora_alpha,
                targets: self.lora_targets.clone(),
            }),
            seed: self.seed,
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(TrainError::Invalid(m.to_string()));
        if self.grad_accum == 0 {
            return bad("grad_accum must be at least 1");
        }
        if self.max_steps.is_none() && self.epochs == 0 {
            return bad("epochs must be at least 1 (or give max_steps)");
        }
        if self.max_steps == Some(0) {
            return bad("max_steps must be at least 1");
        }
        if !(self.learning_rate >= 0.0 && self.learning_rate.is_finite()) {
            return bad("learning_rate must be a finite number >= 0");
        }
        if self.stage == Stage::ConnectorLora && self.lora_r == 0 {
            return bad("lora_r must be at least 1");
        }
        if self.stop_after_steps == Some(0) {
            return bad("stop_after_steps must be at least 1");
        }
        Ok(())
    }
}
