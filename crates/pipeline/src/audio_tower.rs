//! The Whisper-encoder audio tower of VideoLLaMA2-layout checkpoints
//! (`config.json`: `"audio_tower_type": "whisper"`), the alternative to BEATs.
//!
//! ```text
//! sound (file or a video's track) ─FFmpeg─► 16 kHz mono pcm
//!   ─ crop (first s seconds, or a seeded offset) / zero-pad at the end to s = audio_max_seconds
//!   ─ Whisper log-mel (videollama_asr::mel: log10, clamp to max − 8, (x + 4) / 4)
//!                                                    ─► audio_mel [n_mels, 100·s]
//!   ─ videollama_asr::model::Encoder (conv1, conv2 stride 2, + pos[0..50·s], blocks, LN)
//!                                                    ─► [50·s, d_model]
//!   ─ mean over groups of audio_pool_stride positions ─► audio_features [⌈50·s / stride⌉, d_model]
//!   ─ mm_projector_a (mlp2x_gelu, d_model → hidden_size) ─► audio_connector_out [tokens, C]
//! ```
//! With the defaults (8 s, stride 25): 800 mel frames → 400 positions → 16 tokens.
//!
//! **Not Whisper's 30-s window.** Whisper pads every input to 30 s (3000 frames, 1500
//! positions). This tower runs the encoder on the `audio_max_seconds` window only, with the
//! positional table sliced to its first `50·s` rows: the sounds of a short clip cost 8 s of
//! attention instead of 30 s (≈ 4× fewer positions, ≈ 14× less attention work), and the
//! tokens describe the clip instead of mostly silence. The encoder was trained on 30-s
//! windows, so its outputs differ from what it computes on the same sound padded to 30 s;
//! the projector trained on top learns from these outputs, so training and inference must
//! (and do) use the same window — `crates/train/src/prepare.rs` calls the same
//! `VideoLlama2::encode_audio`.
//!
//! The normalisation of the log-mel is Whisper's, computed over the window: openai's
//! `log_mel_spectrogram(audio, padding=N_SAMPLES)` on the cropped/padded `s`-second pcm (its
//! global maximum includes the silence after it, as in `transcribe()`).
//!
//! **config.json.** `audio_tower_type` (absent: `"beats"`) and, for `"whisper"`, a
//! `whisper_encoder` block with Hugging Face `WhisperConfig` names and our pooling fields:
//! ```json
//! "audio_tower_type": "whisper",
//! "whisper_encoder": {"d_model": 384, "encoder_layers": 4, "encoder_attention_heads": 6,
//!                     "num_mel_bins": 80, "max_source_positions": 1500,
//!                     "audio_max_seconds": 8.0, "audio_pool_stride": 25},
//! "mm_projector_a_type": "mlp2x_gelu", "mm_hidden_size_a": 384
//! ```
//! `mm_hidden_size_a` must equal `d_model` (absent: `d_model`). `100·audio_max_seconds` must
//! be an even whole number of mel frames (multiples of 0.02 s: the stride-2 conv halves it)
//! and `50·audio_max_seconds` at most `max_source_positions`. When the positions are not a
//! multiple of `audio_pool_stride` the last token averages the remaining positions.
//!
//! **Weights.** The encoder's Hugging Face names under `model.audio_tower.`
//! (`model.audio_tower.conv1.weight`, `model.audio_tower.layers.0.self_attn.q_proj.weight`,
//! …, `model.audio_tower.embed_positions.weight` `[max_source_positions, d]`,
//! `model.audio_tower.layer_norm.weight`): exactly what `videollama_asr::model::Encoder`
//! loads under `encoder.`. A missing `embed_positions.weight` means openai's sinusoids, as
//! in `videollama_asr`. [`whisper_encoder_tensors`] extracts them from a Whisper folder
//! (CTranslate2 `model.bin` or Hugging Face safetensors).

use crate::config::ModelConfig;
use crate::error::{PipelineError, Result};
use crate::model::AUDIO_TOWER_PREFIX;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};
use std::path::Path;
use videollama_asr::mel::{HOP_LENGTH, SAMPLE_RATE};
use videollama_asr::model::{Encoder, WhisperModel};
use videollama_asr::{log_mel_spectrogram, MelFilters, WhisperDims};
use videollama_media::audio::{pad_or_crop, CropMode};

/// `audio_tower_type` of `config.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AudioTowerType {
    /// BEATs (VideoLLaMA2.1-AV), the default when the field is absent.
    Beats,
    /// The encoder of OpenAI Whisper.
    Whisper,
}

impl AudioTowerType {
    const NAMES: &'static str = "beats, whisper";

    /// The field's value (`None`: absent).
    pub fn parse(value: Option<&str>) -> Result<Self> {
        match value {
            None | Some("beats") => Ok(Self::Beats),
            Some("whisper") => Ok(Self::Whisper),
            Some(other) => Err(PipelineError::Invalid(format!(
                "audio_tower_type {other:?} is not supported (one of: {})",
                Self::NAMES
            ))),
        }
    }
}

fn default_audio_max_seconds() -> f64 {
    8.0
}
fn default_audio_pool_stride() -> usize {
    25
}

/// The `whisper_encoder` block of `config.json`: HF `WhisperConfig` names for the sizes,
/// plus how the sound is windowed and pooled (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WhisperEncoderConfig {
    pub d_model: usize,
    pub encoder_layers: usize,
    pub encoder_attention_heads: usize,
    pub num_mel_bins: usize,
    /// Rows of the stored positional table (1500 for the released models).
    pub max_source_positions: usize,
    /// The sound is cropped / zero-padded to this many seconds (100 mel frames a second).
    #[serde(default = "default_audio_max_seconds")]
    pub audio_max_seconds: f64,
    /// Encoder positions averaged into one audio token.
    #[serde(default = "default_audio_pool_stride")]
    pub audio_pool_stride: usize,
}

impl WhisperEncoderConfig {
    /// The encoder of a Whisper model of these dimensions, with the default pooling.
    pub fn from_dims(dims: &WhisperDims) -> Self {
        Self {
            d_model: dims.n_audio_state,
            encoder_layers: dims.n_audio_layer,
            encoder_attention_heads: dims.n_audio_head,
            num_mel_bins: dims.n_mels,
            max_source_positions: dims.n_audio_ctx,
            audio_max_seconds: default_audio_max_seconds(),
            audio_pool_stride: default_audio_pool_stride(),
        }
    }

    /// Every rule the tower relies on; the message names the `whisper_encoder` field.
    #[allow(clippy::manual_is_multiple_of)] // `is_multiple_of` needs Rust 1.87; MSRV is 1.85
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(PipelineError::Invalid(format!("whisper_encoder: {msg}")));
        for (name, v) in [
            ("d_model", self.d_model),
            ("encoder_layers", self.encoder_layers),
            ("encoder_attention_heads", self.encoder_attention_heads),
            ("num_mel_bins", self.num_mel_bins),
            ("max_source_positions", self.max_source_positions),
        ] {
            if v == 0 {
                return bad(format!("{name} is 0"));
            }
        }
        if self.d_model % self.encoder_attention_heads != 0 {
            return bad(format!(
                "d_model {} is not a multiple of encoder_attention_heads {}",
                self.d_model, self.encoder_attention_heads
            ));
        }
        if self.audio_pool_stride == 0 {
            return bad("audio_pool_stride must be at least 1".into());
        }
        let s = self.audio_max_seconds;
        let frames = s * (SAMPLE_RATE / HOP_LENGTH) as f64;
        if !s.is_finite() || s <= 0.0 || (frames - frames.round()).abs() > 1e-6 {
            return bad(format!(
                "audio_max_seconds {s} must be a positive multiple of 0.02 s (a whole, even \
                 number of 10-ms mel frames)"
            ));
        }
        let frames = frames.round() as usize;
        if frames % 2 != 0 {
            return bad(format!(
                "audio_max_seconds {s} gives {frames} mel frames; the stride-2 convolution \
                 needs an even number (a multiple of 0.02 s)"
            ));
        }
        if frames / 2 > self.max_source_positions {
            return bad(format!(
                "audio_max_seconds {s} needs {} encoder positions, the positional table has \
                 max_source_positions = {} (at most {} s)",
                frames / 2,
                self.max_source_positions,
                self.max_source_positions as f64 / 50.0
            ));
        }
        Ok(())
    }

    /// Mel frames of the window (`100 · audio_max_seconds`). Call after [`Self::validate`].
    pub fn mel_frames(&self) -> usize {
        (self.audio_max_seconds * (SAMPLE_RATE / HOP_LENGTH) as f64).round() as usize
    }

    /// 16-kHz samples of the window.
    pub fn window_samples(&self) -> usize {
        self.mel_frames() * HOP_LENGTH
    }

    /// Encoder output positions of the window (half the mel frames).
    pub fn positions(&self) -> usize {
        self.mel_frames() / 2
    }

    /// Audio tokens spliced into the prompt for any sound.
    pub fn num_tokens(&self) -> usize {
        self.positions().div_ceil(self.audio_pool_stride.max(1))
    }

    /// The Whisper dimensions `videollama_asr` builds the encoder with: the table cut to the
    /// window's positions, and a stub decoder (1 token, no layers) that the tower never runs.
    fn window_dims(&self) -> WhisperDims {
        WhisperDims {
            n_mels: self.num_mel_bins,
            n_audio_ctx: self.positions(),
            n_audio_state: self.d_model,
            n_audio_head: self.encoder_attention_heads,
            n_audio_layer: self.encoder_layers,
            n_vocab: 1,
            n_text_ctx: 1,
            n_text_state: self.d_model,
            n_text_head: 1,
            n_text_layer: 0,
        }
    }

    /// Parameters of the encoder as stored (the positional table counted whole).
    pub fn param_count(&self) -> u64 {
        let d = self.d_model as u64;
        let conv = d * self.num_mel_bins as u64 * 3 + d + d * d * 3 + d;
        // q, v, out with bias, k without; two LayerNorms; fc1 d→4d, fc2 4d→d.
        let layer = 4 * d * d + 3 * d + 4 * d + 8 * d * d + 4 * d + d;
        conv + self.max_source_positions as u64 * d + self.encoder_layers as u64 * layer + 2 * d
    }

    /// The `config.json` fields of a checkpoint with this tower (merge them into the
    /// top-level object): `audio_tower_type`, `whisper_encoder`, `mm_hidden_size_a`,
    /// `mm_projector_a_type`.
    pub fn config_fields(&self) -> serde_json::Value {
        serde_json::json!({
            "audio_tower_type": "whisper",
            "whisper_encoder": self,
            "mm_hidden_size_a": self.d_model,
            "mm_projector_a_type": "mlp2x_gelu",
        })
    }
}

/// The audio tower a `config.json` asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum AudioTowerConfig {
    /// BEATs; its sizes come from `beats_cfg` (see `videollama_encoders::BeatsConfig`).
    Beats,
    Whisper(WhisperEncoderConfig),
}

impl AudioTowerConfig {
    /// The tower of `config` (`None` when it has no audio branch), with the audio fields
    /// checked against each other.
    pub fn from_model_config(config: &ModelConfig) -> Result<Option<Self>> {
        let mm = &config.mm;
        let kind = AudioTowerType::parse(mm.audio_tower_type.as_deref())?;
        if !config.has_audio() {
            return Ok(None);
        }
        match kind {
            AudioTowerType::Beats => {
                if mm.whisper_encoder.is_some() {
                    return Err(PipelineError::Invalid(
                        "config.json has a whisper_encoder block but audio_tower_type is not \
                         \"whisper\" (absent means BEATs)"
                            .into(),
                    ));
                }
                Ok(Some(Self::Beats))
            }
            AudioTowerType::Whisper => {
                let block = mm.whisper_encoder.clone().ok_or_else(|| {
                    PipelineError::Invalid(
                        "audio_tower_type \"whisper\" needs a whisper_encoder block (d_model, \
                         encoder_layers, encoder_attention_heads, num_mel_bins, \
                         max_source_positions)"
                            .into(),
                    )
                })?;
                let cfg: WhisperEncoderConfig = serde_json::from_value(block)
                    .map_err(|e| PipelineError::Invalid(format!("whisper_encoder: {e}")))?;
                cfg.validate()?;
                if let Some(a) = mm.mm_hidden_size_a {
                    if a != cfg.d_model {
                        return Err(PipelineError::Invalid(format!(
                            "mm_hidden_size_a ({a}) must equal whisper_encoder.d_model ({}): \
                             mm_projector_a reads the Whisper encoder's features",
                            cfg.d_model
                        )));
                    }
                }
                Ok(Some(Self::Whisper(cfg)))
            }
        }
    }
}

/// Hands `videollama_asr`'s model loader the tower's weights: `encoder.X` is the
/// checkpoint's `model.audio_tower.X` (the positional table cut to the window's rows), and
/// `decoder.*` is the zero stub of [`WhisperEncoderConfig::window_dims`]. Every read goes
/// through the checkpoint's `VarBuilder`, so missing or mis-shaped tensors are reported by
/// the checkpoint like any other.
struct EncoderWeights {
    /// At `model.audio_tower`.
    tower: VarBuilder<'static>,
    table_rows: usize,
    window_rows: usize,
}

impl SimpleBackend for EncoderWeights {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if let Some(rest) = name.strip_prefix("encoder.") {
            let t = if rest == "embed_positions.weight" {
                let d = s.dims().get(1).copied().unwrap_or(0);
                // [max_source_positions, d] → the window's first rows.
                self.tower
                    .get((self.table_rows, d), rest)?
                    .narrow(0, 0, self.window_rows)?
            } else {
                self.tower.get(s, rest)?
            };
            return t.to_dtype(dtype)?.to_device(dev);
        }
        if name.starts_with("decoder.") {
            return Tensor::zeros(s, dtype, dev);
        }
        candle_core::bail!("{name}: not a tensor of the Whisper encoder")
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("{name}: the Whisper audio tower reads tensors with their shapes")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        name.strip_prefix("encoder.")
            .is_some_and(|rest| self.tower.contains_tensor(rest))
    }
}

/// The Whisper encoder as an audio tower: window → log-mel → encoder → pooled features.
pub struct WhisperAudioTower {
    config: WhisperEncoderConfig,
    encoder: Encoder,
    filters: MelFilters,
    device: Device,
    dtype: DType,
}

impl WhisperAudioTower {
    /// Build from `vb` at the tower's prefix (`model.audio_tower`).
    pub fn new(config: &WhisperEncoderConfig, vb: VarBuilder<'static>) -> Result<Self> {
        config.validate()?;
        let (device, dtype) = (vb.device().clone(), vb.dtype());
        let backend = EncoderWeights {
            tower: vb,
            table_rows: config.max_source_positions,
            window_rows: config.positions(),
        };
        let vb = VarBuilder::from_backend(Box::new(backend), dtype, device.clone());
        // The stub decoder costs 1 + 1 rows of d_model and is dropped here.
        let encoder = WhisperModel::load(config.window_dims(), vb)?.encoder;
        Ok(Self {
            config: config.clone(),
            encoder,
            filters: MelFilters::whisper(config.num_mel_bins),
            device,
            dtype,
        })
    }

    pub fn config(&self) -> &WhisperEncoderConfig {
        &self.config
    }

    /// 16-kHz mono `pcm` cropped (per `crop`) or zero-padded to the window.
    pub fn window(&self, pcm: &[f32], crop: CropMode) -> Vec<f32> {
        pad_or_crop(pcm, self.config.window_samples(), crop)
    }

    /// Whisper's log-mel of the window of `pcm`: `audio_mel` `[n_mels, mel_frames]`, f32 on
    /// the CPU. Empty `pcm` is silence.
    pub fn log_mel(&self, pcm: &[f32], crop: CropMode) -> Result<Tensor> {
        let window = self.window(pcm, crop);
        let mel = log_mel_spectrogram(&window, &self.filters);
        Ok(Tensor::from_vec(
            mel.data,
            (mel.n_mels, mel.n_frames),
            &Device::Cpu,
        )?)
    }

    fn check_mel(&self, mel: &Tensor) -> Result<()> {
        let want = [self.config.num_mel_bins, self.config.mel_frames()];
        if mel.dims() != want {
            return Err(PipelineError::Invalid(format!(
                "the Whisper audio tower takes a log-mel of shape {want:?} (n_mels × \
                 100·audio_max_seconds), got {:?}",
                mel.dims()
            )));
        }
        Ok(())
    }

    /// The encoder's output for `mel` `[n_mels, mel_frames]`: `[positions, d_model]`.
    pub fn encoder_states(&self, mel: &Tensor) -> Result<Tensor> {
        self.check_mel(mel)?;
        let x = mel
            .to_device(&self.device)?
            .to_dtype(self.dtype)?
            .unsqueeze(0)?; // [1, n_mels, frames]
        Ok(self.encoder.forward(&x)?.squeeze(0)?)
    }

    /// Mean over consecutive groups of `audio_pool_stride` positions (the last group may be
    /// shorter): `[positions, d]` → `[tokens, d]`, computed in f32, returned in the input's
    /// dtype.
    pub fn pool(&self, states: &Tensor) -> Result<Tensor> {
        let (n, d) = states.dims2()?;
        let stride = self.config.audio_pool_stride;
        let x = states.to_dtype(DType::F32)?;
        let full = n / stride;
        let mut parts = Vec::new();
        if full > 0 {
            parts.push(
                x.narrow(0, 0, full * stride)?
                    .reshape((full, stride, d))?
                    .mean(1)?,
            );
        }
        if n % stride != 0 {
            parts.push(x.narrow(0, full * stride, n % stride)?.mean_keepdim(0)?);
        }
        Ok(Tensor::cat(&parts, 0)?.to_dtype(states.dtype())?)
    }

    /// `audio_features` `[tokens, d_model]` of `mel` `[n_mels, mel_frames]`.
    pub fn forward(&self, mel: &Tensor) -> Result<Tensor> {
        self.pool(&self.encoder_states(mel)?)
    }
}

/// The `config.json` fields ([`WhisperEncoderConfig::config_fields`]) of a checkpoint whose
/// audio tower is the encoder of the Whisper folder `dir` (CTranslate2 or Hugging Face),
/// with this window and pooling; checked like a loaded config.
pub fn checkpoint_config_for_whisper(
    dir: &Path,
    audio_max_seconds: f64,
    audio_pool_stride: usize,
) -> Result<serde_json::Value> {
    let config = WhisperEncoderConfig {
        audio_max_seconds,
        audio_pool_stride,
        ..WhisperEncoderConfig::from_dims(&whisper_folder_dims(dir)?)
    };
    config.validate()?;
    Ok(config.config_fields())
}

fn is_ct2_folder(dir: &Path) -> bool {
    dir.join("model.bin").is_file() || dir.join("model.bin.part1").is_file()
}

fn not_whisper_folder(dir: &Path) -> PipelineError {
    PipelineError::file(
        dir,
        "not a Whisper folder (expected model.bin — CTranslate2 — or config.json + \
         model.safetensors — Hugging Face)",
    )
}

/// The dimensions of the Whisper model in `dir`.
fn whisper_folder_dims(dir: &Path) -> Result<WhisperDims> {
    use videollama_asr::ct2;
    let asr_err = |e: videollama_asr::AsrError| PipelineError::file(dir, e);
    if is_ct2_folder(dir) {
        let files = ct2::model_bin_files(dir).map_err(asr_err)?;
        ct2::dims_of(&ct2::read_model_bin(&files).map_err(asr_err)?).map_err(asr_err)
    } else if dir.join("model.safetensors").is_file() {
        Ok(videollama_asr::config::read_hf_config(dir)
            .map_err(asr_err)?
            .dims())
    } else {
        Err(not_whisper_folder(dir))
    }
}

/// The encoder of a Whisper folder as audio-tower tensors: names prefixed
/// `model.audio_tower.` (sorted), f32, and the matching `whisper_encoder` block (default
/// pooling). The folder is a CTranslate2 one (`model.bin` or its parts) or a Hugging Face
/// one (`config.json` + `model.safetensors`).
pub fn whisper_encoder_tensors(
    dir: &Path,
) -> Result<(WhisperEncoderConfig, Vec<(String, Tensor)>)> {
    use videollama_asr::ct2;
    let asr_err = |e: videollama_asr::AsrError| PipelineError::file(dir, e);
    let (dims, tensors) = if is_ct2_folder(dir) {
        let files = ct2::model_bin_files(dir).map_err(asr_err)?;
        let model = ct2::read_model_bin(&files).map_err(asr_err)?;
        ct2::whisper_to_hf(&model).map_err(asr_err)?
    } else if dir.join("model.safetensors").is_file() {
        let dims = videollama_asr::config::read_hf_config(dir)
            .map_err(asr_err)?
            .dims();
        let path = dir.join("model.safetensors");
        let tensors = candle_core::safetensors::load(&path, &Device::Cpu)
            .map_err(|e| PipelineError::file(&path, e))?;
        (dims, tensors)
    } else {
        return Err(not_whisper_folder(dir));
    };
    let mut out = Vec::new();
    for (name, t) in tensors {
        // WhisperForConditionalGeneration saves `model.encoder.*`, WhisperModel `encoder.*`.
        let rest = name
            .strip_prefix("model.encoder.")
            .or_else(|| name.strip_prefix("encoder."));
        if let Some(rest) = rest {
            out.push((
                format!("{AUDIO_TOWER_PREFIX}.{rest}"),
                t.to_dtype(DType::F32)?,
            ));
        }
    }
    if out.is_empty() {
        return Err(PipelineError::file(dir, "the model has no encoder tensors"));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    let config = WhisperEncoderConfig::from_dims(&dims);
    config.validate().map_err(|e| PipelineError::file(dir, e))?;
    Ok((config, out))
}
