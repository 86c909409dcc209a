//! Video-LLaMA (DAMO-NLP-SG, 2023) on the shared engine.
//!
//! ```text
//! eval_config.yaml ─► EvalConfig ─► WeightSources (eva_vit_g, q_former_model, llama_model,
//!                                    imagebind_ckpt_path, ckpt, ckpt_2; later files win)
//! frames [T,3,224,224] ─► EVA ViT-g ─► ln_vision ─► image Q-Former (per frame) [T,32,768]
//!        ─► + frame position row t ─► video Q-Former (32 queries) ─► llama_proj ─► [32, d]
//! mel [8,1,128,204] ─► ImageBind audio ─► [8,1024] ─► + audio position row ─► audio Q-Former
//!        ─► audio_llama_proj ─► [8, d]
//! turns ─► conversation template ─► split on <ImageHere> ─► segments (BOS on the first)
//!        ─► embed + splice the blocks in marker order (audio before video) ─► LLaMA / Vicuna
//! ```
//! The language model is the engine's one decoder (`videollama_llm::DecoderLm`); the stages
//! are the shared EVA ViT, Q-Former and ImageBind modules of the encoder / connector crates.

pub mod config;
pub mod conversation;
pub mod inspect;
pub mod media;

pub use config::{EvalConfig, VideoLlamaConfig, EVAL_CONFIG};
pub use conversation::{ConvTemplate, MediaTurn};

use crate::checkpoint::{Checkpoint, WeightSource};
use crate::error::{PipelineError, Result};
use crate::model::{EncodedAudio, EncodedVisual};
use crate::sentencepiece::{SentencePieceModel, SpecialToken};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;
use videollama_connectors::qformer::{ImageQFormer, QFormerConfig};
use videollama_connectors::qformer_aggregator::{
    AggregatorKeys, PositionedQFormer, VIDEO_QFORMER_LAYERS,
};
use videollama_encoders::eva_vit::{EvaVit, EvaVitConfig, LnVision};
use videollama_encoders::imagebind_audio::{ImageBindAudio, ImageBindAudioConfig};
use videollama_nn::with_load_scope;

/// transformers 4.28's slow `LlamaTokenizer.decode`, exactly (byte-fallback runs that are not
/// valid UTF-8 as a whole keep their valid characters, unlike `tokenizers`' decoder).
pub struct SlowLlamaText {
    pub model: SentencePieceModel,
    pub special: Vec<SpecialToken>,
}

/// `create_eva_vit_g` builds 39 blocks (LAVIS's EVA-g file has 40; the load ignores the last).
pub(crate) const BLIP2_EVA_DEPTH: usize = 39;
/// Published head counts, used when the config does not name them.
pub(crate) const EVA_VIT_G: (usize, usize) = (1408, 16);
pub(crate) const IMAGEBIND_HUGE_AUDIO: (usize, usize) = (768, 12);
/// `Chat.answer(max_length=2000)`: the context is cut to its last 2000 − max_new_tokens
/// embeddings.
pub const CHAT_MAX_LENGTH: usize = 2000;

/// The vision-language branch.
pub struct VisionBranch {
    pub vit: EvaVit,
    pub ln_vision: LnVision,
    pub image_qformer: ImageQFormer,
    pub video: PositionedQFormer,
}

/// The audio-language branch.
pub struct AudioBranch {
    pub encoder: ImageBindAudio,
    pub aggregator: PositionedQFormer,
}

/// Everything Video-LLaMA adds around the language model.
pub struct VideoLlamaParts {
    pub config: EvalConfig,
    pub vision: VisionBranch,
    pub audio: Option<AudioBranch>,
    pub template: ConvTemplate,
    /// The id the reference's tokenizer gives `<ImageHere>` (the first added token): only
    /// used to write `input_ids` in `--dump-tensors` the way the golden fixture does.
    pub image_patch_token_id: i64,
    pub max_length: usize,
    /// Exact answer decoding when the LLM folder has `tokenizer.model`.
    pub slow_text: Option<SlowLlamaText>,
}

/// What `inspect` shows of the Video-LLaMA parts.
#[derive(Debug, Clone, Serialize)]
pub struct VideoLlamaSummary {
    pub config: PathBuf,
    pub conv_template: ConvTemplate,
    pub vision_encoder: String,
    pub image_qformer: String,
    pub video_qformer: String,
    pub max_frames: usize,
    pub frames_per_video: usize,
    pub visual_tokens: usize,
    pub audio_encoder: Option<String>,
    pub audio_qformer: Option<String>,
    pub audio_tokens: Option<usize>,
    pub audio_clips: Option<usize>,
    pub image_size: usize,
}

/// Which config entry holds a model tensor: named in errors, since a wrong or missing
/// `ckpt` / `ckpt_2` is the reference's most common start-up failure.
fn owner_of(name: &str) -> &'static str {
    if name.starts_with("visual_encoder.") {
        "the EVA ViT file (eva_vit_g.pth or model.vit_model_path)"
    } else if name.starts_with("Qformer.")
        || name == "query_tokens"
        || name.starts_with("ln_vision.")
    {
        "q_former_model"
    } else if name.starts_with("llama_model.") {
        "llama_model"
    } else if name.starts_with("audio_encoder.") {
        "imagebind_ckpt_path"
    } else if name.starts_with("audio_") {
        "ckpt_2 (the audio-language branch)"
    } else {
        "ckpt (the vision-language branch)"
    }
}

/// Group missing tensors by the config entry that should have brought them.
fn explain_missing(err: PipelineError, cfg: &EvalConfig) -> PipelineError {
    match err {
        PipelineError::MissingTensors { names, .. } => {
            let mut by_owner: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
            for n in names.split(", ") {
                by_owner.entry(owner_of(n)).or_default().push(n);
            }
            let parts: Vec<String> = by_owner
                .iter()
                .map(|(owner, names)| {
                    let shown: Vec<&str> = names.iter().take(4).copied().collect();
                    let more = names.len().saturating_sub(4);
                    let set = match *owner {
                        o if o.starts_with("ckpt_2") => cfg.model.ckpt_2.as_deref(),
                        o if o.starts_with("ckpt") => cfg.model.ckpt.as_deref(),
                        "q_former_model" => cfg.model.q_former_model.as_deref(),
                        "llama_model" => Some(cfg.model.llama_model.as_str()),
                        _ => Some(""),
                    };
                    let hint = match set {
                        None => " — eval_config.yaml does not set it".to_string(),
                        Some("") => String::new(),
                        Some(p) => format!(" — {p} does not hold them (is it the right file?)"),
                    };
                    format!(
                        "{} tensor(s) expected from {owner}{hint}: {}{}",
                        names.len(),
                        shown.join(", "),
                        if more > 0 {
                            format!(" and {more} more")
                        } else {
                            String::new()
                        }
                    )
                })
                .collect();
            PipelineError::file(&cfg.path, parts.join("; "))
        }
        other => other,
    }
}

fn candle_ctx(cfg: &EvalConfig, what: &str, e: candle_core::Error) -> PipelineError {
    // A tensor read directly (sizes are taken from the weights) fails with "tensor NAME
    // missing": say which config entry should have brought it.
    let text = e.to_string();
    let first_line = text.lines().next().unwrap_or("");
    if let Some(name) = first_line
        .split("tensor ")
        .nth(1)
        .and_then(|rest| rest.strip_suffix(" missing"))
    {
        let missing = PipelineError::MissingTensors {
            dir: cfg.dir.clone(),
            count: 1,
            names: name.to_string(),
        };
        return explain_missing(missing, cfg);
    }
    PipelineError::file(&cfg.path, format!("{what}: {first_line}"))
}

/// The weight files, in the order the reference loads them (later ones win).
pub(crate) fn weight_sources(cfg: &EvalConfig) -> Vec<WeightSource> {
    let m = &cfg.model;
    let mut sources = vec![
        WeightSource {
            label: "EVA ViT weights".into(),
            path: cfg.resolve(m.vit_model_path.as_deref().unwrap_or("eva_vit_g.pth")),
            prefix: "visual_encoder.".into(),
        },
        WeightSource {
            label: "q_former_model".into(),
            path: cfg.resolve(
                m.q_former_model
                    .as_deref()
                    .unwrap_or("blip2_pretrained_flant5xxl.pth"),
            ),
            prefix: String::new(),
        },
        WeightSource {
            label: "llama_model".into(),
            path: cfg.resolve(&m.llama_model),
            prefix: "llama_model.".into(),
        },
    ];
    if m.equip_audio_branch {
        let dir = cfg.resolve(m.imagebind_ckpt_path.as_deref().unwrap_or("."));
        sources.push(WeightSource {
            label: "imagebind_ckpt_path".into(),
            path: dir.join("imagebind_huge.pth"),
            prefix: "audio_encoder.".into(),
        });
    }
    if let Some(ckpt) = &m.ckpt {
        sources.push(WeightSource {
            label: "ckpt".into(),
            path: cfg.resolve(ckpt),
            prefix: String::new(),
        });
    }
    if m.equip_audio_branch {
        if let Some(ckpt) = &m.ckpt_2 {
            sources.push(WeightSource {
                label: "ckpt_2".into(),
                path: cfg.resolve(ckpt),
                prefix: String::new(),
            });
        }
    }
    sources
}

/// The BERT config the Q-Formers derive from: the reference calls
/// `BertConfig.from_pretrained("bert-base-uncased")`, which resolves a local folder of that
/// name first (the fixture ships one); without it, BERT-base's published values.
fn bert_config(cfg: &EvalConfig) -> Result<QFormerConfig> {
    let local = cfg.dir.join("bert-base-uncased").join("config.json");
    if local.is_file() {
        return QFormerConfig::from_bert_file(&local).map_err(|e| PipelineError::file(&local, e));
    }
    QFormerConfig::from_bert_json(&serde_json::json!({
        "hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072,
        "num_hidden_layers": 12, "layer_norm_eps": 1e-12, "hidden_act": "gelu"
    }))
    .map_err(|e| PipelineError::Invalid(e.to_string()))
}

fn heads_for(
    cfg: &EvalConfig,
    what: &str,
    key: &str,
    given: Option<usize>,
    width: usize,
    published: (usize, usize),
) -> Result<usize> {
    if let Some(h) = given {
        return Ok(h);
    }
    if width == published.0 {
        return Ok(published.1);
    }
    Err(PipelineError::file(
        &cfg.path,
        format!(
            "the {what} is {width} wide, not the published {} — its attention head count cannot \
             be read from the weights; set model.{key} (e.g. --options model.{key}=N)",
            published.0
        ),
    ))
}

impl VideoLlamaParts {
    /// Build the encoders and connectors from `vb` (over [`Checkpoint::open_sources`]).
    pub fn new(
        config: EvalConfig,
        vb: &VarBuilder<'static>,
        weights: &crate::WeightOptions,
        template: ConvTemplate,
        image_patch_token_id: i64,
    ) -> Result<Self> {
        let m = &config.model;
        let vit_vb = vb.pp("visual_encoder");
        let width = vit_vb
            .get_unchecked("cls_token")
            .map_err(|e| candle_ctx(&config, "EVA ViT weights", e))?
            .dim(2)?;
        let heads = heads_for(
            &config,
            "EVA ViT",
            "vit_num_heads",
            m.vit_num_heads,
            width,
            EVA_VIT_G,
        )?;
        let depth = m.vit_depth.or_else(|| {
            vit_vb
                .contains_tensor(&format!("blocks.{BLIP2_EVA_DEPTH}.norm1.weight"))
                .then_some(BLIP2_EVA_DEPTH)
        });
        // Another `image_size` than the weights' table: interpolated at load, as the
        // reference's `create_eva_vit_g(img_size)` does.
        let vit_cfg = EvaVitConfig::from_weights(&vit_vb, heads, depth)
            .and_then(|c| match m.image_size {
                Some(size) => c.at_image_size(size),
                None => Ok(c),
            })
            .map_err(|e| candle_ctx(&config, "EVA ViT", e))?;
        let vit = with_load_scope(weights.vision_scope(), || {
            EvaVit::new(&vit_cfg, vit_vb.clone())
        })
        .map_err(|e| candle_ctx(&config, "EVA ViT", e))?;
        let ln_vision = LnVision::new(&vit_cfg, vb.pp("ln_vision"))
            .map_err(|e| candle_ctx(&config, "ln_vision (q_former_model)", e))?;
        let bert = bert_config(&config)?;
        let image_qformer = ImageQFormer::new(
            &QFormerConfig::image(&bert, vit_cfg.width, m.num_query_token),
            vb.clone(),
        )
        .map_err(|e| candle_ctx(&config, "image Q-Former (q_former_model)", e))?;
        let video = PositionedQFormer::new(
            &bert,
            VIDEO_QFORMER_LAYERS,
            &AggregatorKeys::video(),
            vb.clone(),
        )
        .map_err(|e| candle_ctx(&config, "video Q-Former (ckpt)", e))?;
        let audio = if m.equip_audio_branch {
            let ib_vb = vb.pp("audio_encoder");
            let probe = ImageBindAudioConfig::from_weights(&ib_vb, 1)
                .map_err(|e| candle_ctx(&config, "ImageBind audio encoder", e))?;
            let heads = heads_for(
                &config,
                "ImageBind audio encoder",
                "imagebind_num_heads",
                m.imagebind_num_heads,
                probe.embed_dim,
                IMAGEBIND_HUGE_AUDIO,
            )?;
            let ib_cfg = ImageBindAudioConfig::from_weights(&ib_vb, heads)
                .map_err(|e| candle_ctx(&config, "ImageBind audio encoder", e))?;
            let encoder = ImageBindAudio::new(&ib_cfg, ib_vb)
                .map_err(|e| candle_ctx(&config, "ImageBind audio encoder", e))?;
            let aggregator = PositionedQFormer::new(
                &bert,
                VIDEO_QFORMER_LAYERS,
                &AggregatorKeys::audio(),
                vb.clone(),
            )
            .map_err(|e| candle_ctx(&config, "audio Q-Former (ckpt_2)", e))?;
            Some(AudioBranch {
                encoder,
                aggregator,
            })
        } else {
            None
        };
        Ok(Self {
            config,
            vision: VisionBranch {
                vit,
                ln_vision,
                image_qformer,
                video,
            },
            audio,
            template,
            image_patch_token_id,
            max_length: CHAT_MAX_LENGTH,
            slow_text: None,
        })
    }

    pub fn image_size(&self) -> usize {
        self.vision.vit.config().image_size
    }

    pub fn frames_per_video(&self) -> usize {
        self.config.model.n_frms
    }

    /// `encode_videoQformer_visual`: `pixels [T,3,S,S]` (an image is T = 1) → `[Q, d]`.
    pub fn encode_frames(
        &self,
        pixels: &Tensor,
        dtype: DType,
        dev: &Device,
    ) -> Result<(EncodedVisual, Vec<(String, Tensor)>)> {
        let (t, c, h, w) = pixels.dims4().map_err(|_| {
            PipelineError::Invalid(format!(
                "pixel_values must be T×3×H×W, got {:?}",
                pixels.dims()
            ))
        })?;
        let size = self.image_size();
        if c != 3 || h != size || w != size || t == 0 {
            return Err(PipelineError::Invalid(format!(
                "pixel_values have shape {:?}; this EVA ViT expects T×3×{size}×{size}",
                pixels.dims()
            )));
        }
        let max = self.vision.video.max_positions();
        if t > max {
            return Err(PipelineError::Invalid(format!(
                "{t} frames: Video-LLaMA's frame position table (video_frame_position_embedding) \
                 has {max} rows, so at most {max} frames can be encoded"
            )));
        }
        let x = pixels.to_device(dev)?.to_dtype(dtype)?;
        let start = Instant::now();
        let vision_features = self
            .vision
            .vit
            .forward_with_ln(&x, &self.vision.ln_vision)?;
        let tower_seconds = start.elapsed().as_secs_f64();
        let start = Instant::now();
        let frame_qformer_out = self.vision.image_qformer.forward(&vision_features)?;
        let stages = self.vision.video.forward_with_stages(&frame_qformer_out)?;
        let visual = EncodedVisual {
            pixel_values: pixels.clone(),
            vision_features: vision_features.clone(),
            connector_out: stages.tokens.clone(),
            tower_seconds,
            connector_seconds: start.elapsed().as_secs_f64(),
        };
        let named = vec![
            ("pixel_values".to_string(), pixels.clone()),
            ("vision_features".to_string(), vision_features),
            ("frame_qformer_out".to_string(), frame_qformer_out),
            ("video_qformer_out".to_string(), stages.qformer_out),
            ("visual_tokens".to_string(), stages.tokens),
        ];
        Ok((visual, named))
    }

    /// `encode_audioQformer`: `mel [clips,1,128,204]` → `[Q_audio, d]`.
    pub fn encode_sound(
        &self,
        mel: &Tensor,
        dtype: DType,
        dev: &Device,
    ) -> Result<(EncodedAudio, Vec<(String, Tensor)>)> {
        let audio = self.audio.as_ref().ok_or_else(|| {
            PipelineError::Invalid(
                "this Video-LLaMA model has no audio branch (equip_audio_branch is false)".into(),
            )
        })?;
        let clips = mel.dim(0)?;
        let max = audio.aggregator.max_positions();
        if clips > max {
            return Err(PipelineError::Invalid(format!(
                "{clips} audio clips: the audio position table has {max} rows"
            )));
        }
        let x = mel.to_device(dev)?.to_dtype(dtype)?;
        let out = audio.encoder.forward_with_stages(&x)?;
        // [clips, out] → [clips, 1, out]: one ImageBind vector per clip.
        let features = out.embeddings.unsqueeze(1)?;
        let stages = audio.aggregator.forward_with_stages(&features)?;
        let encoded = EncodedAudio {
            audio_fbank: mel.clone(),
            audio_features: out.embeddings.clone(),
            audio_connector_out: stages.tokens.clone(),
        };
        let named = vec![
            ("audio_mel".to_string(), mel.clone()),
            ("audio_features".to_string(), out.embeddings),
            ("audio_qformer_out".to_string(), stages.qformer_out),
            ("audio_tokens".to_string(), stages.tokens),
        ];
        Ok((encoded, named))
    }

    pub fn summary(&self) -> VideoLlamaSummary {
        let v = self.vision.vit.config();
        let iq = self.vision.image_qformer.qformer().config();
        let vq = self.vision.video.qformer().config();
        VideoLlamaSummary {
            config: self.config.path.clone(),
            conv_template: self.template,
            vision_encoder: format!(
                "EVA ViT {} px, patch {}, width {}, {} blocks, {} heads + ln_vision",
                v.image_size, v.patch_size, v.width, v.depth, v.num_heads
            ),
            image_qformer: format!(
                "BLIP-2 Q-Former: {} layers, hidden {}, {} queries, cross-attention every {} layer(s)",
                iq.num_hidden_layers, iq.hidden_size, iq.query_length, iq.cross_attention_freq
            ),
            video_qformer: format!(
                "{} layers, {} queries, frame position table {} rows, llama_proj → {}",
                vq.num_hidden_layers,
                self.vision.video.num_queries(),
                self.vision.video.max_positions(),
                self.vision.video.out_dim()
            ),
            max_frames: self.vision.video.max_positions(),
            frames_per_video: self.frames_per_video(),
            visual_tokens: self.vision.video.num_queries(),
            audio_encoder: self.audio.as_ref().map(|a| {
                let c = a.encoder.config();
                format!(
                    "ImageBind audio: width {}, {} blocks, {} heads → {}",
                    c.embed_dim,
                    c.num_blocks,
                    c.num_heads,
                    a.encoder.out_dim()
                )
            }),
            audio_qformer: self.audio.as_ref().map(|a| {
                format!(
                    "{} layers, {} queries, audio position table {} rows, audio_llama_proj → {}",
                    a.aggregator.qformer().config().num_hidden_layers,
                    a.aggregator.num_queries(),
                    a.aggregator.max_positions(),
                    a.aggregator.out_dim()
                )
            }),
            audio_tokens: self.audio.as_ref().map(|a| a.aggregator.num_queries()),
            audio_clips: self.audio.as_ref().map(|a| a.aggregator.max_positions()),
            image_size: self.image_size(),
        }
    }
}

/// Everything [`crate::Pipeline::load`] needs from a Video-LLaMA folder.
pub struct Loaded {
    pub parts: VideoLlamaParts,
    pub model: crate::model::VideoLlama2,
    pub tokenizer: tokenizers::Tokenizer,
    pub generation_config: videollama_llm::GenerationConfig,
}

/// Options of a Video-LLaMA load that a `config.json` model does not have.
#[derive(Debug, Clone, Default)]
pub struct VideoLlamaOptions {
    /// `--options model.KEY=VALUE` overrides of `eval_config.yaml`.
    pub config_options: Vec<String>,
    /// `--conv-template`; default from `model_type`.
    pub conv_template: Option<ConvTemplate>,
}

/// Is `dir` a Video-LLaMA model folder (it holds `eval_config.yaml`), or the YAML itself?
pub fn config_path(dir: &Path) -> Option<PathBuf> {
    if dir.is_file() && dir.extension().is_some_and(|e| e == "yaml" || e == "yml") {
        return Some(dir.to_path_buf());
    }
    let p = dir.join(EVAL_CONFIG);
    p.is_file().then_some(p)
}

/// The LLM folder's tokenizer: `tokenizer.model` (SentencePiece, what the reference's slow
/// `LlamaTokenizer` reads) when present, else `tokenizer.json`.
pub(crate) fn load_llm_tokenizer(
    llm_dir: &Path,
) -> Result<(tokenizers::Tokenizer, Option<SlowLlamaText>)> {
    let model = llm_dir.join("tokenizer.model");
    if model.is_file() {
        let sp = SentencePieceModel::load(&model)?;
        let special = sp.special_tokens_in_folder(llm_dir)?;
        let tokenizer = sp.to_tokenizer(&special)?;
        return Ok((tokenizer, Some(SlowLlamaText { model: sp, special })));
    }
    let json = llm_dir.join("tokenizer.json");
    if json.is_file() {
        let t =
            tokenizers::Tokenizer::from_file(&json).map_err(|e| PipelineError::file(&json, e))?;
        return Ok((t, None));
    }
    Err(PipelineError::file(
        llm_dir,
        "llama_model: no tokenizer.json or tokenizer.model in this folder",
    ))
}

/// Load a Video-LLaMA model from its `eval_config.yaml`.
pub fn load(path: &Path, opts: &crate::LoadOptions, vopts: &VideoLlamaOptions) -> Result<Loaded> {
    let config = EvalConfig::from_file(path, &vopts.config_options)?;
    let llm_dir = config.resolve(&config.model.llama_model);
    if !llm_dir.is_dir() {
        return Err(PipelineError::file(
            &llm_dir,
            format!(
                "llama_model (from {}) is not a folder: give the Hugging Face LLaMA / Vicuna folder",
                config.path.display()
            ),
        ));
    }
    let llm_config_path = llm_dir.join("config.json");
    let raw = crate::error::read_json(&llm_config_path)?;
    let llm_cfg: videollama_llm::DecoderConfig = serde_json::from_value(raw.clone())
        .map_err(|e| PipelineError::file(&llm_config_path, format!("llama_model config: {e}")))?;
    let (tokenizer, slow_text) = load_llm_tokenizer(&llm_dir)?;
    let gen_path = llm_dir.join("generation_config.json");
    let generation_config: videollama_llm::GenerationConfig = if gen_path.is_file() {
        serde_json::from_value(crate::error::read_json(&gen_path)?).map_err(|e| {
            PipelineError::Json {
                path: gen_path.clone(),
                cause: e.to_string(),
            }
        })?
    } else {
        serde_json::from_value(serde_json::json!({
            "bos_token_id": raw.get("bos_token_id"),
            "eos_token_id": raw.get("eos_token_id"),
        }))
        .unwrap_or_default()
    };
    let template = vopts
        .conv_template
        .unwrap_or_else(|| ConvTemplate::from_model_type(&config.model.model_type));
    let ckpt = Checkpoint::open_sources(
        &config.dir,
        &weight_sources(&config),
        opts.dtype,
        &opts.device,
    )?;
    let vb = ckpt.var_builder();
    let llm = with_load_scope(opts.weights.llm_scope(), || {
        videollama_llm::DecoderLm::new(&llm_cfg, vb.pp("llama_model"))
    })
    .map_err(|e| candle_ctx(&config, "llama_model", e))?;
    // The reference adds `<ImageHere>` after the SentencePiece vocabulary.
    let image_patch_token_id = tokenizer.get_vocab_size(false) as i64;
    let mut parts = VideoLlamaParts::new(
        config.clone(),
        &vb,
        &opts.weights,
        template,
        image_patch_token_id,
    )
    .map_err(|e| explain_missing(e, &config))?;
    parts.slow_text = slow_text;
    let unused = ckpt.finish().map_err(|e| explain_missing(e, &config))?;
    tracing::debug!(
        count = unused.len(),
        "weight-file tensors Video-LLaMA does not use"
    );
    let model_type = format!("video_llama:{}", config.model.model_type);
    let model = crate::model::VideoLlama2::language_model_only(
        crate::model::LanguageModelOnly {
            model_type: &model_type,
            llm_cfg,
            family: crate::config::LlmFamily::Llama,
            vision_tower: None,
            num_frames: config.model.n_frms,
            raw,
            unused_tensors: unused,
        },
        llm,
        opts,
    )?;
    Ok(Loaded {
        parts,
        model,
        tokenizer,
        generation_config,
    })
}

/// The user turn the demo would write for these media (`Chat.upload_*`).
pub fn media_turn(media: &crate::EncodedMedia) -> MediaTurn {
    use crate::prompt::Modality;
    match (media.modality, media.audio.is_some()) {
        (Modality::Video, true) => MediaTurn::VideoWithAudio,
        (Modality::Video, false) => MediaTurn::Video {
            timestamp_message: if media.frame_timestamps.is_empty() {
                String::new()
            } else {
                conversation::timestamp_message(&media.frame_timestamps)
            },
        },
        (Modality::Image, _) => MediaTurn::Image,
        (Modality::Audio, _) => MediaTurn::Audio,
        (Modality::Text, _) => MediaTurn::None,
    }
}

/// The text ids of one prompt segment, as the slow `LlamaTokenizer` makes them: special
/// tokens written in the text (`<s>`, `</s>` of LLaMA-2's multi-turn prompts) become their
/// ids; every other piece is SentencePiece-encoded on its own.
fn encode_segment(tokenizer: &tokenizers::Tokenizer, text: &str) -> Result<Vec<i64>> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let enc = tokenizer
        .encode(text, false)
        .map_err(|e| PipelineError::Invalid(format!("tokenizer failed: {e}")))?;
    Ok(enc.get_ids().iter().map(|&i| i as i64).collect())
}

/// `Chat.get_context_emb`'s ids: the rendered prompt split on `<ImageHere>`, segment 0
/// with BOS, the others without, one placeholder id between segments (audio placeholder
/// for an audio block, video placeholder for a visual block).
pub fn prompt_ids(
    parts: &VideoLlamaParts,
    tokenizer: &tokenizers::Tokenizer,
    turn: &MediaTurn,
    turns: &[String],
) -> Result<(String, Vec<i64>)> {
    use crate::prompt::Modality;
    if matches!(turn, MediaTurn::Audio | MediaTurn::VideoWithAudio) && parts.audio.is_none() {
        return Err(PipelineError::Invalid(
            "this Video-LLaMA model has no audio branch".into(),
        ));
    }
    let prompt = conversation::render(parts.template, turn, turns);
    let placeholders: Vec<i64> = match turn {
        MediaTurn::None => vec![],
        MediaTurn::Video { .. } => vec![Modality::Video.placeholder_id().unwrap_or(-201)],
        MediaTurn::Image => vec![Modality::Image.placeholder_id().unwrap_or(-200)],
        MediaTurn::Audio => vec![Modality::Audio.placeholder_id().unwrap_or(-202)],
        MediaTurn::VideoWithAudio => vec![
            Modality::Audio.placeholder_id().unwrap_or(-202),
            Modality::Video.placeholder_id().unwrap_or(-201),
        ],
    };
    let segments = conversation::split_segments(&prompt);
    if segments.len() != placeholders.len() + 1 {
        return Err(PipelineError::Invalid(format!(
            "the prompt has {} <ImageHere> markers for {} media blocks (is `<ImageHere>` in \
             the question?)",
            segments.len() - 1,
            placeholders.len()
        )));
    }
    let bos = tokenizer
        .token_to_id("<s>")
        .ok_or_else(|| PipelineError::Invalid("the tokenizer has no <s> (BOS) token".into()))?;
    let mut ids = vec![bos as i64];
    for (i, seg) in segments.iter().enumerate() {
        if i > 0 {
            ids.push(placeholders[i - 1]);
        }
        ids.extend(encode_segment(tokenizer, seg)?);
    }
    Ok((prompt, ids))
}

impl crate::family::Family for VideoLlamaParts {
    fn name(&self) -> &'static str {
        "video-llama"
    }
    fn has_vision(&self) -> bool {
        true
    }
    fn has_audio(&self) -> bool {
        self.audio.is_some()
    }
    fn prepare_media(
        &self,
        req: &crate::media::MediaRequest,
    ) -> Result<(crate::MediaInput, crate::media::MediaReport)> {
        media::prepare(self, req)
    }
    fn encode_visual(
        &self,
        pixels: &Tensor,
        _is_image: bool,
        dtype: DType,
        device: &Device,
    ) -> Result<(EncodedVisual, crate::family::StageTensors)> {
        self.encode_frames(pixels, dtype, device)
    }
    fn encode_audio(
        &self,
        audio: &Tensor,
        dtype: DType,
        device: &Device,
    ) -> Result<(EncodedAudio, crate::family::StageTensors)> {
        self.encode_sound(audio, dtype, device)
    }
    fn prompt_ids(
        &self,
        tokenizer: &tokenizers::Tokenizer,
        turns: &[String],
        media: &crate::EncodedMedia,
    ) -> Result<(String, Vec<i64>)> {
        prompt_ids(self, tokenizer, &media_turn(media), turns)
    }
    fn media_blocks(&self, media: &crate::EncodedMedia) -> Result<Vec<Tensor>> {
        // One block per `<ImageHere>`, audio first (`Chat.upload_video`).
        let mut blocks = Vec::new();
        if let Some(a) = &media.audio {
            blocks.push(a.audio_connector_out.clone());
        }
        if let Some(v) = &media.visual {
            blocks.push(v.connector_out.clone());
        }
        Ok(blocks)
    }
    fn context_start(
        &self,
        prompt_len: usize,
        max_new_tokens: usize,
        _: &crate::EncodedMedia,
    ) -> usize {
        // `Chat.answer(max_length=2000)`: keep the last max_length − max_new_tokens.
        (prompt_len + max_new_tokens).saturating_sub(self.max_length)
    }
    fn stop_sequences(&self, _: &crate::EncodedMedia) -> Vec<Vec<u32>> {
        self.template.stop_sequences()
    }
    fn repetition_penalty(&self, _: &crate::EncodedMedia) -> Option<f32> {
        None
    }
    fn answer_text(
        &self,
        tokenizer: &tokenizers::Tokenizer,
        ids: &[u32],
        _: &crate::EncodedMedia,
    ) -> Result<String> {
        self.decode_answer(tokenizer, ids)
    }
    fn dump_input_ids(&self, ids: &[i64], blocks: &[Tensor]) -> Result<Vec<i64>> {
        // The fixture's map of the sequence: `<ImageHere>`'s id once per media token.
        crate::family::expand_placeholders(ids, blocks, self.image_patch_token_id)
    }
}

impl VideoLlamaParts {
    /// `Chat.answer`'s text: decode with the special tokens, cut at the stop sign, strip.
    pub fn decode_answer(&self, tokenizer: &tokenizers::Tokenizer, ids: &[u32]) -> Result<String> {
        let decoded = match &self.slow_text {
            Some(slow) => slow
                .model
                .decode_like_slow_llama(ids, &slow.special, false)?,
            None => tokenizer
                .decode(ids, false)
                .map_err(|e| PipelineError::Invalid(format!("decoding the answer: {e}")))?,
        };
        Ok(self.template.clean_answer(&decoded))
    }
}
