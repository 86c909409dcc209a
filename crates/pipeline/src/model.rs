//! The assembled VideoLLaMA2 model: vision tower → connector → spliced into the LLM.
//!
//! ```text
//! pixel_values [T,3,H,W] ─► VisionTower ─► [T, n, Cin] ─► Connector ─► [L, C]
//! input_ids (with −201 placeholder) ─► embed_tokens + splice ─► inputs_embeds [S−1+L, C]
//! audio (AV checkpoints): fbank [2998, 128] ─► BEATs ─► [1496, Ca] ─┐
//!                      or log-mel [n_mels, F] ─► Whisper encoder ─► pool ─► [F/2/stride, d] ─┤
//!                                                   mm_projector_a ─► audio tokens [N, C] ◄─┘
//! ```
//! (`config.json`'s `audio_tower_type` picks the audio encoder; see `crate::audio_tower`.)
//! The model is immutable after loading; per-request state (KV cache) lives in the
//! generation loop, so one model can serve several requests.

use crate::audio_tower::{AudioTowerConfig, WhisperAudioTower};
use crate::checkpoint::Checkpoint;
use crate::config::ModelConfig;
use crate::error::{PipelineError, Result};
use crate::prompt::is_placeholder;
use crate::tower::{resolve_vision_tower, ResolvedTower};
use candle_core::{DType, Device, Tensor};
use std::path::Path;
use videollama_connectors::{Connector, ConnectorConfig, MlpProjector, ProjectorType};
use videollama_encoders::{Beats, BeatsConfig, VisionTower};
use videollama_llm::DecoderLm;
use videollama_nn::{with_load_scope, LoadScope, QuantizedWeights, WeightFormat};

/// How the weights of each part are stored in memory. `None` everywhere (the default) is
/// the exact mode: every weight dense in the compute dtype, golden tests exact.
#[derive(Clone, Default)]
pub struct WeightOptions {
    /// Quantize the language model's linear layers (attention, MLP, `lm_head`) at load.
    pub quantize_llm: Option<WeightFormat>,
    /// Quantize the vision tower's linear layers at load.
    pub quantize_vision: Option<WeightFormat>,
    /// Already-quantized weights (a `videollama quantize` output or a GGUF LLM), looked up
    /// by tensor name before anything is read from the safetensors.
    pub prequantized: Option<std::sync::Arc<dyn QuantizedWeights>>,
}

impl std::fmt::Debug for WeightOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightOptions")
            .field("quantize_llm", &self.quantize_llm)
            .field("quantize_vision", &self.quantize_vision)
            .field("prequantized", &self.prequantized.is_some())
            .finish()
    }
}

impl WeightOptions {
    fn scope(&self, format: Option<WeightFormat>) -> LoadScope {
        LoadScope {
            quantize: format,
            source: self.prequantized.clone(),
        }
    }
    pub(crate) fn llm_scope(&self) -> LoadScope {
        self.scope(self.quantize_llm)
    }
    pub(crate) fn vision_scope(&self) -> LoadScope {
        self.scope(self.quantize_vision)
    }
    /// A short description for logs and `--json` (`"f32"`, `"llm q8_0, vision q8_0"`).
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(f) = self.quantize_llm {
            parts.push(format!("llm {f}"));
        }
        if let Some(f) = self.quantize_vision {
            parts.push(format!("vision {f}"));
        }
        if self.prequantized.is_some() {
            parts.push("pre-quantized weights".to_string());
        }
        if parts.is_empty() {
            "dense".to_string()
        } else {
            parts.join(", ")
        }
    }
}

/// Where the vision tower's weights live inside a VideoLLaMA2 checkpoint.
pub const VISION_TOWER_PREFIX: &str = "model.vision_tower.vision_tower.vision_model";
pub const PROJECTOR_PREFIX: &str = "model.mm_projector";
pub const AUDIO_TOWER_PREFIX: &str = "model.audio_tower";
pub const AUDIO_PROJECTOR_PREFIX: &str = "model.mm_projector_a";

/// The audio encoder of an AV checkpoint (`config.json` `audio_tower_type`).
pub enum AudioEncoder {
    /// BEATs (VideoLLaMA2.1-AV): input `[2998, 128]` Kaldi fbank.
    Beats(Beats),
    /// The Whisper encoder, pooled: input `[n_mels, 100·audio_max_seconds]` log-mel.
    Whisper(WhisperAudioTower),
}

impl AudioEncoder {
    /// The golden / `--dump-tensors` name of the encoder's input.
    pub fn input_name(&self) -> &'static str {
        match self {
            AudioEncoder::Beats(_) => "audio_fbank",
            AudioEncoder::Whisper(_) => "audio_mel",
        }
    }

    /// The Whisper tower, if that is the encoder.
    pub fn whisper(&self) -> Option<&WhisperAudioTower> {
        match self {
            AudioEncoder::Whisper(t) => Some(t),
            AudioEncoder::Beats(_) => None,
        }
    }
}

/// Audio encoder + `mm_projector_a` (VideoLLaMA2.1-AV; or the Whisper tower).
pub struct AudioBranch {
    pub encoder: AudioEncoder,
    pub projector: MlpProjector,
    pub projector_type: ProjectorType,
}

/// The stage tensors of one audio encoding (golden names, no batch dim).
pub struct EncodedAudio {
    /// The encoder's input as given: BEATs `[2998, 128]` log-mel fbank (bf16-rounded values,
    /// as the reference feeds it, dumped as `audio_fbank`), or the Whisper tower's
    /// `[n_mels, frames]` log-mel (dumped as `audio_mel`, see [`AudioEncoder::input_name`]).
    pub audio_fbank: Tensor,
    /// `[1496, Ca]` BEATs output, or the Whisper tower's pooled output `[tokens, d_model]`.
    pub audio_features: Tensor,
    /// `[1496, C]` after `mm_projector_a`.
    pub audio_connector_out: Tensor,
}

pub struct VisualBranch {
    pub tower: VisionTower,
    pub tower_info: ResolvedTower,
    pub connector: Connector,
    pub connector_config: ConnectorConfig,
}

pub struct VideoLlama2 {
    pub config: ModelConfig,
    pub llm: DecoderLm,
    pub visual: Option<VisualBranch>,
    pub audio: Option<AudioBranch>,
    pub device: Device,
    pub dtype: DType,
    /// Checkpoint tensors the model never reads (vision post-LN, SigLIP head, …).
    pub unused_tensors: Vec<String>,
}

/// The stage tensors of one media encoding (golden names, no batch dim).
pub struct EncodedVisual {
    /// `[T, 3, H, W]` as given (an image stays `1×3×H×W`, as the reference stores it).
    pub pixel_values: Tensor,
    /// `[num_frames, n, Cin]`
    pub vision_features: Tensor,
    /// `[L, C]`
    pub connector_out: Tensor,
    /// Wall-clock seconds in the vision tower and in the connector.
    pub tower_seconds: f64,
    pub connector_seconds: f64,
}

/// What a family that runs its own encoders (`family.rs`) says about its language model.
pub struct LanguageModelOnly<'a> {
    /// `model_type` of the synthetic config (`"video_chatgpt"`, …), for reports.
    pub model_type: &'a str,
    pub llm_cfg: videollama_llm::DecoderConfig,
    pub family: crate::config::LlmFamily,
    pub vision_tower: Option<&'a str>,
    pub num_frames: usize,
    /// The family's own configuration, kept for `inspect`.
    pub raw: serde_json::Value,
    pub unused_tensors: Vec<String>,
}

impl VideoLlama2 {
    /// A `VideoLlama2` holding only a language model: the families with their own encoders
    /// (Video-LLaMA, MiniGPT4-Video, Video-ChatGPT, Chat-UniVi) keep their LLM here.
    pub fn language_model_only(
        parts: LanguageModelOnly<'_>,
        llm: DecoderLm,
        opts: &crate::LoadOptions,
    ) -> Result<Self> {
        let mut mm = serde_json::json!({
            "model_type": parts.model_type,
            "hidden_size": parts.llm_cfg.hidden_size,
            "num_frames": parts.num_frames,
        });
        if let Some(tower) = parts.vision_tower {
            mm["mm_vision_tower"] = tower.into();
        }
        let mm: crate::config::MultimodalConfig =
            serde_json::from_value(mm).map_err(|e| PipelineError::Invalid(e.to_string()))?;
        Ok(Self {
            config: ModelConfig {
                mm,
                llm: parts.llm_cfg,
                family: parts.family,
                system_message: false,
                raw: parts.raw,
            },
            llm,
            visual: None,
            audio: None,
            device: opts.device.clone(),
            dtype: opts.dtype,
            unused_tensors: parts.unused_tensors,
        })
    }

    pub fn load(dir: &Path, opts: &crate::LoadOptions) -> Result<Self> {
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let ckpt = Checkpoint::open(dir, opts.dtype, &opts.device)?;
        // A `videollama quantize` folder brings its quantized weights with it.
        let mut weights = opts.weights.clone();
        if weights.prequantized.is_none() {
            weights.prequantized = ckpt.prequantized();
        }
        // `--llm FILE.gguf` (or config.json's `llm_gguf`): the language model comes from
        // the GGUF file instead.
        let llm = match crate::gguf::checkpoint_llm_gguf(dir, &config, opts)? {
            Some(path) => Some(crate::gguf::load_llm_for_checkpoint(
                &path, &config, dir, opts,
            )?),
            None => None,
        };
        Self::from_checkpoint_with_llm(config, &ckpt, dir, &weights, llm)
    }

    /// Assemble the model from an opened checkpoint. `weights` says which parts are
    /// quantized while they load (each linear layer is read dense and quantized at once,
    /// so the dense copy of the whole model never exists).
    pub fn from_checkpoint(
        config: ModelConfig,
        ckpt: &Checkpoint,
        dir: &Path,
        weights: &WeightOptions,
    ) -> Result<Self> {
        Self::from_checkpoint_with_llm(config, ckpt, dir, weights, None)
    }

    /// [`Self::from_checkpoint`] with a language model built elsewhere (`--llm FILE.gguf`);
    /// `None` loads the checkpoint's own.
    pub fn from_checkpoint_with_llm(
        config: ModelConfig,
        ckpt: &Checkpoint,
        dir: &Path,
        weights: &WeightOptions,
        llm: Option<DecoderLm>,
    ) -> Result<Self> {
        let mut model =
            Self::from_var_builder_with_llm(config, ckpt.var_builder(), dir, weights, llm)?;
        model.unused_tensors = ckpt.finish()?;
        for name in &model.unused_tensors {
            tracing::debug!(tensor = %name, "checkpoint tensor not used by the model");
        }
        Ok(model)
    }

    /// Assemble the model from any `VarBuilder` (a checkpoint, or random weights for
    /// `videollama bench --synthetic`). `dir` anchors relative tower paths.
    pub fn from_var_builder(
        config: ModelConfig,
        vb: candle_nn::VarBuilder<'static>,
        dir: &Path,
        weights: &WeightOptions,
    ) -> Result<Self> {
        Self::from_var_builder_with_llm(config, vb, dir, weights, None)
    }

    /// [`Self::from_var_builder`] with a language model built elsewhere (`--llm FILE.gguf`,
    /// see `crate::gguf`); `None` loads the checkpoint's own.
    pub fn from_var_builder_with_llm(
        config: ModelConfig,
        vb: candle_nn::VarBuilder<'static>,
        dir: &Path,
        weights: &WeightOptions,
        llm: Option<DecoderLm>,
    ) -> Result<Self> {
        let llm = match llm {
            Some(llm) => llm,
            None => with_load_scope(weights.llm_scope(), || {
                DecoderLm::new(&config.llm, vb.clone())
            })?,
        };
        let visual = match &config.mm.mm_vision_tower {
            None => None,
            Some(name) => {
                let tower_info = resolve_vision_tower(name, dir)?;
                let tower = with_load_scope(weights.vision_scope(), || {
                    VisionTower::new(
                        &tower_info.config,
                        config.mm.mm_vision_select_layer,
                        &config.mm.mm_vision_select_feature,
                        vb.pp(VISION_TOWER_PREFIX),
                    )
                })?;
                let projector = config.mm.mm_projector_type.as_deref().ok_or_else(|| {
                    PipelineError::Invalid(
                        "config.json has mm_vision_tower but no mm_projector_type".into(),
                    )
                })?;
                let projector_type: ProjectorType = projector
                    .parse()
                    .map_err(|e| PipelineError::Invalid(format!("config.json: {e}")))?;
                let connector_config = ConnectorConfig {
                    projector_type,
                    mm_hidden_size: config
                        .mm
                        .mm_hidden_size
                        .unwrap_or(tower_info.config.hidden_size()),
                    hidden_size: config.mm.hidden_size,
                };
                let connector = Connector::new(&connector_config, vb.pp(PROJECTOR_PREFIX))?;
                Some(VisualBranch {
                    tower,
                    tower_info,
                    connector,
                    connector_config,
                })
            }
        };
        let audio = if config.has_audio() {
            Some(Self::build_audio(&config, &vb)?)
        } else {
            None
        };
        Ok(Self {
            config,
            llm,
            visual,
            audio,
            device: vb.device().clone(),
            dtype: vb.dtype(),
            unused_tensors: Vec::new(),
        })
    }

    fn build_audio(
        config: &ModelConfig,
        vb: &candle_nn::VarBuilder<'static>,
    ) -> Result<AudioBranch> {
        let tower = AudioTowerConfig::from_model_config(config)?.unwrap_or(AudioTowerConfig::Beats);
        let (encoder, encoder_dim) = match tower {
            AudioTowerConfig::Beats => {
                let beats_cfg = BeatsConfig::from_model_config(&config.raw)
                    .map_err(|e| PipelineError::Invalid(format!("config.json beats_cfg: {e}")))?;
                let encoder = Beats::new(&beats_cfg, vb.pp(AUDIO_TOWER_PREFIX))?;
                (AudioEncoder::Beats(encoder), beats_cfg.encoder_embed_dim)
            }
            AudioTowerConfig::Whisper(cfg) => {
                let tower = WhisperAudioTower::new(&cfg, vb.pp(AUDIO_TOWER_PREFIX))?;
                (AudioEncoder::Whisper(tower), cfg.d_model)
            }
        };
        let name = config
            .mm
            .mm_projector_a_type
            .as_deref()
            .unwrap_or("mlp2x_gelu");
        let projector_type: ProjectorType = name
            .parse()
            .map_err(|e| PipelineError::Invalid(format!("config.json mm_projector_a_type: {e}")))?;
        let in_dim = config.mm.mm_hidden_size_a.unwrap_or(encoder_dim);
        let out_dim = config.mm.hidden_size_a.unwrap_or(config.mm.hidden_size);
        if out_dim != config.mm.hidden_size {
            return Err(PipelineError::Invalid(format!(
                "config.json: hidden_size_a ({out_dim}) must equal the language model's hidden_size ({})",
                config.mm.hidden_size
            )));
        }
        let depth = match projector_type {
            ProjectorType::Linear => 1,
            ProjectorType::MlpGelu(n) => n,
            other => return Err(PipelineError::Invalid(format!("config.json: mm_projector_a_type {other} is not an audio projector (linear or mlpNx_gelu)"))),
        };
        let projector = MlpProjector::new(depth, in_dim, out_dim, vb.pp(AUDIO_PROJECTOR_PREFIX))?;
        Ok(AudioBranch {
            encoder,
            projector,
            projector_type,
        })
    }

    /// Encode the audio encoder's input into audio tokens: a `[frames, 128]` fbank into
    /// `[1496, C]` (BEATs), or a `[n_mels, frames]` log-mel into `[tokens, C]` (Whisper).
    pub fn encode_audio(&self, fbank: &Tensor) -> Result<EncodedAudio> {
        let audio = self.audio.as_ref().ok_or_else(|| {
            PipelineError::Invalid(
                "this checkpoint has no audio tower (it is not an audio-visual model)".into(),
            )
        })?;
        let audio_features = match &audio.encoder {
            AudioEncoder::Beats(beats) => {
                let (_, bins) = fbank.dims2().map_err(|_| {
                    PipelineError::Invalid(format!(
                        "audio fbank must be frames×128, got {:?}",
                        fbank.dims()
                    ))
                })?;
                if bins != 128 {
                    return Err(PipelineError::Invalid(format!(
                        "audio fbank must have 128 mel bins, got {bins}"
                    )));
                }
                let input = fbank.to_device(&self.device)?.to_dtype(self.dtype)?;
                beats.extract_features(&input)?
            }
            AudioEncoder::Whisper(tower) => tower.forward(fbank)?,
        };
        let audio_connector_out = audio.projector.forward(&audio_features)?;
        Ok(EncodedAudio {
            audio_fbank: fbank.clone(),
            audio_features,
            audio_connector_out,
        })
    }

    /// The golden / `--dump-tensors` name of the audio encoder's input (`audio_fbank` for
    /// BEATs, `audio_mel` for Whisper; `None` without an audio branch).
    pub fn audio_input_name(&self) -> Option<&'static str> {
        self.audio.as_ref().map(|a| a.encoder.input_name())
    }

    pub fn num_frames(&self) -> usize {
        self.config.mm.num_frames
    }

    /// Encode a video (`T×3×H×W`) or an image (`1×3×H×W`, repeated to `num_frames`
    /// identical frames like the reference) into connector tokens `[L, C]`.
    pub fn encode_visual(&self, pixel_values: &Tensor, is_image: bool) -> Result<EncodedVisual> {
        let visual = self.visual.as_ref().ok_or_else(|| {
            PipelineError::Invalid(
                "this checkpoint has no vision tower (mm_vision_tower is not set)".into(),
            )
        })?;
        let (t, c, h, w) = pixel_values.dims4().map_err(|_| {
            PipelineError::Invalid(format!(
                "pixel_values must be T×3×H×W, got {:?}",
                pixel_values.dims()
            ))
        })?;
        let size = visual.tower_info.config.image_size();
        if c != 3 || h != size || w != size {
            return Err(PipelineError::Invalid(format!(
                "pixel_values have shape {:?}; this vision tower expects T×3×{size}×{size}",
                pixel_values.dims()
            )));
        }
        if t == 0 {
            return Err(PipelineError::Invalid("pixel_values hold no frames".into()));
        }
        let frames = if is_image {
            pixel_values
                .get(0)?
                .unsqueeze(0)?
                .repeat((self.num_frames(), 1, 1, 1))?
        } else {
            pixel_values.clone()
        };
        let frames = frames.to_device(&self.device)?.to_dtype(self.dtype)?;
        let start = std::time::Instant::now();
        let vision_features = visual.tower.forward(&frames)?;
        let tower_seconds = start.elapsed().as_secs_f64();
        let start = std::time::Instant::now();
        let connector_out = visual.connector.forward(&vision_features)?;
        Ok(EncodedVisual {
            pixel_values: pixel_values.clone(),
            vision_features,
            connector_out,
            tower_seconds,
            connector_seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// `prepare_inputs_labels_for_multimodal` for batch 1: embed the text ids and put
    /// the media blocks, in order, where the placeholder ids are.
    pub fn splice(&self, input_ids: &[i64], media: &[Tensor]) -> Result<Tensor> {
        let mut pieces = Vec::new();
        let mut text: Vec<u32> = Vec::new();
        let mut next_media = media.iter();
        let vocab = self.config.llm.vocab_size;
        let flush = |text: &mut Vec<u32>, pieces: &mut Vec<Tensor>| -> Result<()> {
            if !text.is_empty() {
                let ids = Tensor::new(text.as_slice(), &self.device)?;
                pieces.push(self.llm.embed_tokens(&ids)?);
                text.clear();
            }
            Ok(())
        };
        for &id in input_ids {
            if is_placeholder(id) {
                flush(&mut text, &mut pieces)?;
                let block = next_media.next().ok_or_else(|| {
                    PipelineError::Invalid(
                        "the prompt has more media placeholders than media inputs".into(),
                    )
                })?;
                pieces.push(block.to_dtype(self.dtype)?);
            } else if id < 0 || id as usize >= vocab {
                return Err(PipelineError::Invalid(format!(
                    "token id {id} is outside the vocabulary (size {vocab})"
                )));
            } else {
                text.push(id as u32);
            }
        }
        flush(&mut text, &mut pieces)?;
        if next_media.next().is_some() {
            return Err(PipelineError::Invalid(
                "media was given but the prompt has no placeholder for it".into(),
            ));
        }
        Ok(Tensor::cat(&pieces, 0)?)
    }
}
