//! The VideoLLaMA2 pipeline: from a checkpoint folder and a question to an answer.
//!
//! ```text
//! Pipeline::load(dir)        config.json ─► ModelConfig (model_type registry)
//!                            *.safetensors ─► Checkpoint ─► VideoLlama2 (tower, connector, LLM)
//!                            tokenizer.json + tokenizer_config.json ─► Tokenizer, ChatTemplate
//! Pipeline::encode_media     pixel_values ─► vision tower ─► connector ─► EncodedMedia
//! Pipeline::answer           turns ─► messages ─► template ─► chunk-wise ids ─► splice
//!                            ─► generate (prefill + KV-cache decode) ─► Answer
//! ```
//! Media are encoded once and reused: `Pipeline::encode_request` goes through the
//! byte-bounded LRU [`EncoderCache`] (key: file bytes + sampling + model, `cache.rs`), and
//! `Pipeline::answer_in_session` reuses a [`ChatSession`]'s KV cache of the earlier turns
//! (`session.rs`).

pub mod audio_tower;
pub mod cache;
pub mod chat_univi;
pub mod checkpoint;
pub mod clip_tower;
pub mod config;
pub mod default_model;
pub mod error;
pub mod family;
pub mod generate;
pub mod gguf;
pub mod inspect;
pub mod lora_adapter;
pub mod ma_lmm;
pub mod media;
pub mod minigpt4_video;
pub mod model;
pub mod prompt;
pub mod quantize;
pub mod qwen2_vl;
pub mod reference_noise;
pub mod safetensors_files;
pub mod sentencepiece;
pub mod session;
pub mod synthetic;
pub mod text;
pub mod tower;
pub mod video_chatgpt;
pub mod video_llama;

pub use cache::{CacheStats, CacheStatus, EncoderCache};
pub use error::{PipelineError, Result};
pub use generate::{GenerateOptions, StopReason};
pub use model::{VideoLlama2, WeightOptions};
pub use prompt::Modality;
pub use session::ChatSession;

use candle_core::{DType, Device, Tensor};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tokenizers::Tokenizer;
use videollama_llm::{GenerationConfig, SamplingParams};

/// Preprocessed pictures of one request.
#[derive(Debug, Clone)]
pub enum Visual {
    /// `T×3×H×W` preprocessed frames.
    Video(Tensor),
    /// `1×3×H×W` preprocessed image (repeated to `num_frames` frames by the model).
    Image(Tensor),
}

/// The media of one request, already turned into tensors.
#[derive(Debug, Clone, Default)]
pub struct MediaInput {
    pub visual: Option<Visual>,
    /// `[frames, 128]` Kaldi fbank of the sound (a sound file, or a video's track); for
    /// Video-LLaMA the ImageBind input `[clips, 1, 128, 204]`.
    pub audio_fbank: Option<Tensor>,
    /// Sampled frame times as the prompt writes them (Video-LLaMA's timestamp message).
    pub frame_timestamps: Vec<String>,
    /// Per sampled frame, the subtitle text the prompt puts after it (MiniGPT4-Video's
    /// `<Cap>`); empty when the family does not interleave subtitles.
    pub frame_captions: Vec<Option<String>>,
    /// `(t, h, w)` patch grid of the visual input, for families whose token positions depend
    /// on it (Qwen2-VL's M-RoPE); `None` for the others.
    pub patch_grid: Option<[usize; 3]>,
}

impl MediaInput {
    pub fn none() -> Self {
        Self::default()
    }
    pub fn video(pixels: Tensor) -> Self {
        Self {
            visual: Some(Visual::Video(pixels)),
            ..Self::default()
        }
    }
    pub fn image(pixels: Tensor) -> Self {
        Self {
            visual: Some(Visual::Image(pixels)),
            ..Self::default()
        }
    }
    pub fn audio(fbank: Tensor) -> Self {
        Self {
            audio_fbank: Some(fbank),
            ..Self::default()
        }
    }
    pub fn with_audio(mut self, fbank: Option<Tensor>) -> Self {
        self.audio_fbank = fbank;
        self
    }
}

/// Per-stage wall-clock seconds of one request.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    pub preprocess_s: f64,
    pub vision_s: f64,
    pub audio_s: f64,
    pub prompt_s: f64,
    pub prefill_s: f64,
    pub decode_s: f64,
    pub total_s: f64,
    pub decode_tokens_per_s: f64,
}

/// Media after the encoders and connectors; reusable across turns.
pub struct EncodedMedia {
    pub modality: Modality,
    pub visual: Option<model::EncodedVisual>,
    pub audio: Option<model::EncodedAudio>,
    pub vision_seconds: f64,
    pub audio_seconds: f64,
    /// The stage tensors before the connectors (`pixel_values`, `vision_features`,
    /// `audio_fbank`, `audio_features`) are real. False for an encoder-cache entry, which
    /// keeps only the connector outputs (see `cache.rs`); they are empty tensors there.
    pub intermediates: bool,
    /// Sampled frame times as the prompt writes them (Video-LLaMA).
    pub frame_timestamps: Vec<String>,
    /// Subtitle text after each frame (MiniGPT4-Video).
    pub frame_captions: Vec<Option<String>>,
    /// The visual input's `(t, h, w)` patch grid ([`MediaInput::patch_grid`]); kept by
    /// encoder-cache entries, which drop the pixels it could be read from.
    pub patch_grid: Option<[usize; 3]>,
    /// Family-specific stage tensors under their golden names (`frame_qformer_out`, …),
    /// for `--dump-tensors`; empty in encoder-cache entries.
    pub stage_tensors: Vec<(String, Tensor)>,
}

impl EncodedMedia {
    pub fn text_only() -> Self {
        Self {
            modality: Modality::Text,
            visual: None,
            audio: None,
            vision_seconds: 0.0,
            audio_seconds: 0.0,
            intermediates: true,
            frame_timestamps: Vec::new(),
            frame_captions: Vec::new(),
            patch_grid: None,
            stage_tensors: Vec::new(),
        }
    }
    pub fn visual_tokens(&self) -> usize {
        self.visual
            .as_ref()
            .map(|v| v.connector_out.dim(0).unwrap_or(0))
            .unwrap_or(0)
    }
    pub fn audio_tokens(&self) -> usize {
        self.audio
            .as_ref()
            .map(|a| a.audio_connector_out.dim(0).unwrap_or(0))
            .unwrap_or(0)
    }
    /// Number of embeddings the media put into the LLM sequence.
    pub fn media_tokens(&self) -> usize {
        self.visual_tokens() + self.audio_tokens()
    }
    /// The one block spliced at the placeholder: video tokens, then audio tokens
    /// (the audio-visual reference concatenates them with no separator).
    pub fn block(&self) -> Result<Option<Tensor>> {
        let mut parts = Vec::new();
        if let Some(v) = &self.visual {
            parts.push(v.connector_out.clone());
        }
        if let Some(a) = &self.audio {
            parts.push(
                a.audio_connector_out.to_dtype(
                    parts
                        .first()
                        .map(|p: &Tensor| p.dtype())
                        .unwrap_or(a.audio_connector_out.dtype()),
                )?,
            );
        }
        Ok(if parts.is_empty() {
            None
        } else {
            Some(Tensor::cat(&parts, 0)?)
        })
    }
}

/// Options of one answer.
#[derive(Debug, Clone)]
pub struct AnswerOptions {
    pub max_new_tokens: usize,
    /// `None` temperature = greedy, as the reference `mm_infer`.
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<usize>,
    /// Overrides `generation_config.json`'s repetition penalty.
    pub repetition_penalty: Option<f32>,
    pub seed: u64,
    /// Collect the golden-named stage tensors (for `--dump-tensors`).
    pub collect_tensors: bool,
}

impl Default for AnswerOptions {
    fn default() -> Self {
        // mm_infer's defaults: greedy, max_new_tokens 2048.
        Self {
            max_new_tokens: 2048,
            temperature: None,
            top_p: None,
            top_k: None,
            repetition_penalty: None,
            seed: 0,
            collect_tensors: false,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    pub answer: String,
    pub token_ids: Vec<u32>,
    pub prompt: String,
    pub input_ids: Vec<i64>,
    /// Length of the spliced LLM input (text tokens + media tokens).
    pub prompt_tokens: usize,
    pub text_tokens: usize,
    pub visual_tokens: usize,
    pub audio_tokens: usize,
    pub stop_reason: StopReason,
    pub timings: Timings,
    /// Prompt positions taken from a chat session's KV cache instead of being prefilled
    /// (0 outside sessions); `prompt_tokens - reused_prompt_tokens` were prefilled.
    pub reused_prompt_tokens: usize,
    #[serde(skip)]
    pub tensors: HashMap<String, Tensor>,
}

/// How to load a checkpoint. The default is the exact mode: f32, every weight dense.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub dtype: DType,
    pub device: Device,
    pub weights: WeightOptions,
    /// Take the language model from this GGUF file instead of the checkpoint (`--llm`).
    pub llm_gguf: Option<PathBuf>,
    /// Video-LLaMA folders (`eval_config.yaml`): config overrides and template choice.
    pub video_llama: video_llama::VideoLlamaOptions,
    /// A Whisper model folder (Hugging Face or CTranslate2) for subtitles from speech
    /// (MiniGPT4-Video); overrides the config's `whisper_model`.
    pub whisper: Option<PathBuf>,
    /// `--reference-noise`: random draws of a reference run to reproduce it bit for bit
    /// (see `reference_noise.rs`); `None`: every family's deterministic default.
    pub reference_noise: Option<PathBuf>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: DType::F32,
            device: Device::Cpu,
            weights: WeightOptions::default(),
            llm_gguf: None,
            video_llama: Default::default(),
            whisper: None,
            reference_noise: None,
        }
    }
}

/// A loaded checkpoint with its tokenizer and chat template. Immutable: share it.
pub struct Pipeline {
    pub dir: PathBuf,
    pub model: VideoLlama2,
    pub tokenizer: Tokenizer,
    pub template: prompt::ChatTemplate,
    pub generation_config: GenerationConfig,
    pub load_seconds: f64,
    /// Encoded media reused across turns and requests (`Pipeline::encode_request`).
    pub encoder_cache: EncoderCache,
    /// Checkpoint folder, dtype, device and weight formats: part of every cache key.
    pub model_identity: String,
    /// How the weights are held (`"dense"`, `"llm q8_0, vision q8_0"`, …), for reports.
    pub weights: String,
    /// The family's own stages and prompt rules (Video-LLaMA, …; see `family.rs`); `None`
    /// for VideoLLaMA 2 checkpoints and GGUF models, whose parts live in `model`.
    pub family: Option<Box<dyn family::Family>>,
}

impl Pipeline {
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        let start = Instant::now();
        // `--model FILE.gguf`: a text-only pipeline over a GGUF language model.
        if gguf::is_gguf_path(dir) {
            return Self::load_gguf(dir, opts);
        }
        if let Some(config) = video_llama::config_path(dir) {
            return Self::load_video_llama(&config, opts, start);
        }
        if let Some(config) = ma_lmm::config_path(dir) {
            return Self::load_ma_lmm(&config, opts, start);
        }
        if let Some(config) = minigpt4_video::config_path(dir) {
            return Self::load_minigpt4_video(&config, opts, start);
        }
        if let Some(layout) = video_chatgpt::detect(dir) {
            return Self::load_video_chatgpt(&layout?, opts, start);
        }
        if let Some(config) = chat_univi::config_path(dir) {
            return Self::load_chat_univi(&config, opts, start);
        }
        if let Some(config) = qwen2_vl::config_path(dir) {
            return Self::load_qwen2_vl(&config, opts, start);
        }
        if !dir.is_dir() {
            return Err(PipelineError::MissingModelDir(dir.to_path_buf()));
        }
        reference_noise::warn_unused(opts.reference_noise.as_deref(), "VideoLLaMA 2");
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(PipelineError::file(
                &config_path,
                "missing; is this a Hugging Face model folder?",
            ));
        }
        let tok_path = dir.join("tokenizer.json");
        let llm_gguf = if tok_path.is_file() {
            None
        } else {
            let config = config::ModelConfig::from_file(&config_path)?;
            gguf::checkpoint_llm_gguf(dir, &config, opts)?
        };
        let gen_path = dir.join("generation_config.json");
        let (tokenizer, template, generation_config) = match llm_gguf {
            // The language model is a GGUF file and the folder has no tokenizer of its
            // own: the GGUF's tokenizer and chat template; its eos unless the folder has
            // a generation_config.json (the folder's settings win, as for any checkpoint).
            Some(path) => {
                let (tokenizer, template, from_gguf) = gguf::chat_parts_from_gguf(&path)?;
                let generation_config = if gen_path.is_file() {
                    let json = error::read_json(&gen_path)?;
                    serde_json::from_value(json).map_err(|e| PipelineError::Json {
                        path: gen_path.clone(),
                        cause: e.to_string(),
                    })?
                } else {
                    from_gguf
                };
                (tokenizer, template, generation_config)
            }
            None => {
                if !tok_path.is_file() {
                    return Err(PipelineError::file(&tok_path, "missing (convert a SentencePiece-only checkpoint with transformers' fast tokenizer first)"));
                }
                let tokenizer = Tokenizer::from_file(&tok_path)
                    .map_err(|e| PipelineError::file(&tok_path, e))?;
                let template = prompt::ChatTemplate::from_tokenizer_config(
                    &dir.join("tokenizer_config.json"),
                )?;
                let generation_config = if gen_path.is_file() {
                    let json = error::read_json(&gen_path)?;
                    serde_json::from_value(json).map_err(|e| PipelineError::Json {
                        path: gen_path.clone(),
                        cause: e.to_string(),
                    })?
                } else {
                    GenerationConfig::default()
                };
                (tokenizer, template, generation_config)
            }
        };
        let mut model = VideoLlama2::load(dir, opts)?;
        let adapter = lora_adapter::apply_if_present(dir, &mut model.llm, opts)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            model,
            tokenizer,
            template,
            generation_config,
            load_seconds: start.elapsed().as_secs_f64(),
            encoder_cache: EncoderCache::default(),
            model_identity: cache::model_identity(dir, opts),
            weights: match adapter {
                Some(a) => format!("{} + {a}", opts.weights.describe()),
                None => opts.weights.describe(),
            },
            family: None,
        })
    }

    /// A Video-LLaMA folder: `eval_config.yaml` and the files it names.
    fn load_video_llama(config: &Path, opts: &LoadOptions, start: Instant) -> Result<Self> {
        Self::refuse_llm_gguf(opts, "eval_config.yaml")?;
        reference_noise::warn_unused(opts.reference_noise.as_deref(), "Video-LLaMA");
        let loaded = video_llama::load(config, opts, &opts.video_llama)?;
        Self::from_family(
            config,
            opts,
            start,
            (loaded.model, loaded.tokenizer, loaded.generation_config),
            Box::new(loaded.parts),
        )
    }

    /// A MiniGPT4-Video folder: `model_config.yaml` and the files it names.
    fn load_minigpt4_video(config: &Path, opts: &LoadOptions, start: Instant) -> Result<Self> {
        Self::refuse_llm_gguf(opts, "model_config.yaml")?;
        reference_noise::warn_unused(opts.reference_noise.as_deref(), "MiniGPT4-Video");
        let loaded = minigpt4_video::load(config, opts, &opts.video_llama.config_options)?;
        Self::from_family(
            config,
            opts,
            start,
            (loaded.model, loaded.tokenizer, loaded.generation_config),
            Box::new(loaded.parts),
        )
    }

    /// An MA-LMM folder: `model_config.yaml` with `arch: blip2_vicuna_instruct_malmm`.
    fn load_ma_lmm(config: &Path, opts: &LoadOptions, start: Instant) -> Result<Self> {
        Self::refuse_llm_gguf(opts, "model_config.yaml")?;
        reference_noise::warn_unused(opts.reference_noise.as_deref(), "MA-LMM");
        let loaded = ma_lmm::family::load(config, opts, &opts.video_llama.config_options)?;
        Self::from_family(
            config,
            opts,
            start,
            (loaded.model, loaded.tokenizer, loaded.generation_config),
            Box::new(loaded.parts),
        )
    }

    /// A Video-ChatGPT folder: the LLaVA-Lightning base + `video_chatgpt-7B.bin`.
    fn load_video_chatgpt(
        layout: &video_chatgpt::Layout,
        opts: &LoadOptions,
        start: Instant,
    ) -> Result<Self> {
        if opts.llm_gguf.is_some() {
            return Err(PipelineError::Invalid(
                "--llm: Video-ChatGPT takes its language model from its LLaVA-Lightning base folder"
                    .into(),
            ));
        }
        let loaded = video_chatgpt::load(layout, opts)?;
        Self::from_family(
            &layout.dir.join("config.json"),
            opts,
            start,
            (loaded.model, loaded.tokenizer, loaded.generation_config),
            Box::new(loaded.parts),
        )
    }

    /// A Chat-UniVi folder: `config.json` with `model_type: ChatUniVi`.
    fn load_chat_univi(config: &Path, opts: &LoadOptions, start: Instant) -> Result<Self> {
        if opts.llm_gguf.is_some() {
            return Err(PipelineError::Invalid(
                "--llm: Chat-UniVi's checkpoint holds its own language model".into(),
            ));
        }
        let dir = config.parent().unwrap_or(Path::new("."));
        let loaded = chat_univi::load(dir, opts)?;
        Self::from_family(
            config,
            opts,
            start,
            (loaded.model, loaded.tokenizer, loaded.generation_config),
            Box::new(loaded.parts),
        )
    }

    /// A Qwen2-VL folder: `config.json` with `model_type: qwen2_vl`.
    fn load_qwen2_vl(config: &Path, opts: &LoadOptions, start: Instant) -> Result<Self> {
        if opts.llm_gguf.is_some() {
            return Err(PipelineError::Invalid(
                "--llm: Qwen2-VL's checkpoint holds its own language model".into(),
            ));
        }
        reference_noise::warn_unused(opts.reference_noise.as_deref(), "Qwen2-VL");
        let dir = config.parent().unwrap_or(Path::new("."));
        let loaded = qwen2_vl::load(dir, opts)?;
        Self::from_family(
            config,
            opts,
            start,
            (loaded.model, loaded.tokenizer, loaded.generation_config),
            Box::new(loaded.parts),
        )
    }

    fn refuse_llm_gguf(opts: &LoadOptions, config: &str) -> Result<()> {
        match &opts.llm_gguf {
            Some(_) => Err(PipelineError::Invalid(format!(
                "--llm replaces a VideoLLaMA 2 checkpoint's language model; this model names \
                 its own in {config} (llama_model)"
            ))),
            None => Ok(()),
        }
    }

    /// A pipeline over a family's parts (`family.rs`), loaded from the YAML at `config`.
    fn from_family(
        config: &Path,
        opts: &LoadOptions,
        start: Instant,
        (model, tokenizer, generation_config): (VideoLlama2, Tokenizer, GenerationConfig),
        family: Box<dyn family::Family>,
    ) -> Result<Self> {
        let dir = config.parent().unwrap_or(Path::new(".")).to_path_buf();
        // These families write their prompts in code, not with a Jinja chat template.
        let template = prompt::ChatTemplate::new("", Some("<s>".into()), Some("</s>".into()))?;
        Ok(Self {
            model_identity: format!(
                "{} {:?} {:?} {:?}",
                cache::model_identity(&dir, opts),
                opts.video_llama.config_options,
                opts.video_llama.conv_template,
                opts.reference_noise
            ),
            dir,
            model,
            tokenizer,
            template,
            generation_config,
            load_seconds: start.elapsed().as_secs_f64(),
            encoder_cache: EncoderCache::default(),
            weights: opts.weights.describe(),
            family: Some(family),
        })
    }

    /// Can this model look at images and videos?
    pub fn has_vision(&self) -> bool {
        match &self.family {
            Some(f) => f.has_vision(),
            None => self.model.visual.is_some(),
        }
    }

    /// Can this model listen (an audio tower / audio branch)?
    pub fn has_audio(&self) -> bool {
        match &self.family {
            Some(f) => f.has_audio(),
            None => self.model.audio.is_some(),
        }
    }

    /// Run the encoders and connectors once for this media.
    pub fn encode_media(&self, media: &MediaInput) -> Result<EncodedMedia> {
        let modality = match &media.visual {
            None if media.audio_fbank.is_some() => Modality::Audio,
            None => Modality::Text,
            Some(Visual::Video(_)) => Modality::Video,
            Some(Visual::Image(_)) if media.audio_fbank.is_some() => {
                return Err(PipelineError::Invalid(
                    "audio can accompany a video, not an image".into(),
                ))
            }
            Some(Visual::Image(_)) => Modality::Image,
        };
        let mut stage_tensors = Vec::new();
        let start = Instant::now();
        let visual = media
            .visual
            .as_ref()
            .map(|v| self.encode_visual_input(v, &mut stage_tensors))
            .transpose()?;
        let vision_seconds = start.elapsed().as_secs_f64();
        let start = Instant::now();
        let audio = media
            .audio_fbank
            .as_ref()
            .map(|a| self.encode_audio_input(a, &mut stage_tensors))
            .transpose()?;
        Ok(EncodedMedia {
            modality,
            visual,
            audio,
            vision_seconds,
            audio_seconds: start.elapsed().as_secs_f64(),
            intermediates: true,
            frame_timestamps: media.frame_timestamps.clone(),
            frame_captions: media.frame_captions.clone(),
            patch_grid: media.patch_grid,
            stage_tensors,
        })
    }

    /// The family's vision path; Video-LLaMA also names its stage tensors.
    fn encode_visual_input(
        &self,
        visual: &Visual,
        stage_tensors: &mut Vec<(String, Tensor)>,
    ) -> Result<model::EncodedVisual> {
        let (px, is_image) = match visual {
            Visual::Video(px) => (px, false),
            Visual::Image(px) => (px, true),
        };
        match &self.family {
            Some(f) => {
                let (encoded, named) =
                    f.encode_visual(px, is_image, self.model.dtype, &self.model.device)?;
                stage_tensors.extend(named);
                Ok(encoded)
            }
            None => self.model.encode_visual(px, is_image),
        }
    }

    /// The family's audio path (BEATs fbank, or Video-LLaMA's ImageBind mel).
    fn encode_audio_input(
        &self,
        audio: &Tensor,
        stage_tensors: &mut Vec<(String, Tensor)>,
    ) -> Result<model::EncodedAudio> {
        match &self.family {
            Some(f) => {
                let (encoded, named) =
                    f.encode_audio(audio, self.model.dtype, &self.model.device)?;
                stage_tensors.extend(named);
                Ok(encoded)
            }
            None => self.model.encode_audio(audio),
        }
    }

    /// The media blocks in the order the prompt's placeholders expect them (for MA-LMM
    /// they depend on the conversation's question).
    fn media_blocks(&self, turns: &[String], media: &EncodedMedia) -> Result<Vec<Tensor>> {
        match &self.family {
            Some(f) => f.media_blocks_for(turns, media),
            None => Ok(media.block()?.into_iter().collect()),
        }
    }

    /// Ids that end generation: generation_config's eos list plus the tokenizer's
    /// eos token (the reference adds a `KeywordsStoppingCriteria` on it).
    pub fn eos_ids(&self) -> Vec<u32> {
        let mut ids = self.generation_config.eos_ids();
        if let Some(eos) = self
            .template
            .eos_token()
            .and_then(|t| self.tokenizer.token_to_id(t))
        {
            if !ids.contains(&eos) {
                ids.push(eos);
            }
        }
        ids
    }

    /// Render the conversation and tokenize it the way `mm_infer` does.
    pub fn build_prompt(&self, turns: &[String], modality: Modality) -> Result<(String, Vec<i64>)> {
        if self.family.is_some() {
            let mut media = EncodedMedia::text_only();
            media.modality = modality;
            return self.build_prompt_for(turns, &media);
        }
        self.build_prompt_videollama2(turns, modality)
    }

    /// [`Self::build_prompt`] for the media of this request (Video-LLaMA's user turn depends
    /// on the sound and the frame times, not only on the modality).
    pub fn build_prompt_for(
        &self,
        turns: &[String],
        media: &EncodedMedia,
    ) -> Result<(String, Vec<i64>)> {
        if let Some(f) = &self.family {
            return f.prompt_ids(&self.tokenizer, turns, media);
        }
        self.build_prompt_videollama2(turns, media.modality)
    }

    fn build_prompt_videollama2(
        &self,
        turns: &[String],
        modality: Modality,
    ) -> Result<(String, Vec<i64>)> {
        let system = if self.model.config.system_message {
            Some(prompt::MISTRAL_SYSTEM_MESSAGE)
        } else {
            None
        };
        let messages = if gguf::is_gguf_model(&self.model.config) {
            gguf::plain_messages(turns)
        } else {
            prompt::build_messages(turns, modality, system)
        };
        let text = self.template.render(&messages, true)?;
        let ids = prompt::tokenize_multimodal(&self.tokenizer, &text, modality)?;
        Ok((text, ids))
    }

    /// Answer the last user turn of `turns` (user, assistant, user, …) about `media`.
    /// `on_text` receives decoded text pieces as they are generated; return `false`
    /// from it to cancel.
    pub fn answer(
        &self,
        turns: &[String],
        media: &EncodedMedia,
        opts: &AnswerOptions,
        on_text: impl FnMut(&str) -> bool,
    ) -> Result<Answer> {
        self.answer_inner(turns, media, opts, on_text, None)
    }

    /// `answer`, and with `session` the chat-session variant (`session.rs`): the whole
    /// prompt is spliced as always, but only what the session's KV cache lacks is prefilled.
    pub(crate) fn answer_inner(
        &self,
        turns: &[String],
        media: &EncodedMedia,
        opts: &AnswerOptions,
        mut on_text: impl FnMut(&str) -> bool,
        session: Option<&mut session::SessionState>,
    ) -> Result<Answer> {
        if turns.is_empty() || turns.len() % 2 == 0 {
            return Err(PipelineError::Invalid(
                "a conversation must end with a user turn".into(),
            ));
        }
        let start = Instant::now();
        let (prompt_text, input_ids) = self.build_prompt_for(turns, media)?;
        let media_blocks = self.media_blocks(turns, media)?;
        let mut inputs_embeds = self.model.splice(&input_ids, &media_blocks)?;
        let mut session = session;
        if self
            .family
            .as_ref()
            .is_some_and(|f| f.media_depends_on_turns())
        {
            // The media rows change with the question: nothing cached can be reused.
            session = None;
        }
        if let Some(f) = &self.family {
            // The family's context cut (Video-LLaMA's `Chat.answer(max_length=2000)`,
            // MiniGPT4-Video's last 3700 / 7500 positions): the reference warns and drops
            // the start of the conversation.
            let len = inputs_embeds.dim(0)?;
            let begin = f.context_start(len, opts.max_new_tokens, media);
            if begin > 0 {
                if begin >= len {
                    return Err(PipelineError::PromptTooLong {
                        tokens: len,
                        visual: media.media_tokens(),
                        new: opts.max_new_tokens,
                        context: len,
                    });
                }
                tracing::warn!(
                    dropped = begin,
                    "the conversation exceeds {}'s context cut: the model will not see its \
                     first {begin} positions",
                    f.name()
                );
                inputs_embeds = inputs_embeds.narrow(0, begin, len - begin)?;
                // A cut prompt no longer extends the session's cached prefix.
                session = None;
            }
        }
        // M-RoPE ids (Qwen2-VL) are computed over the whole prompt, so such a prompt is
        // always prefilled in full (no session reuse).
        let mrope = match &self.family {
            Some(f) => f.rope_positions(&input_ids, &media_blocks, media)?,
            None => None,
        };
        if mrope.is_some() {
            session = None;
        }
        let prompt_tokens = inputs_embeds.dim(0)?;
        let visual_tokens = media.visual_tokens();
        let media_tokens = media.media_tokens();
        let context = self.model.config.llm.max_position_embeddings;
        if prompt_tokens >= context {
            return Err(PipelineError::PromptTooLong {
                tokens: prompt_tokens - media_tokens,
                visual: media_tokens,
                new: opts.max_new_tokens,
                context,
            });
        }
        let prompt_s = start.elapsed().as_secs_f64();

        let gc = &self.generation_config;
        let sampling = SamplingParams {
            temperature: opts.temperature.filter(|t| *t > 0.0),
            top_p: opts.top_p.or(Some(0.9)),
            top_k: opts.top_k.or(gc.top_k),
            repetition_penalty: opts
                .repetition_penalty
                .or_else(|| {
                    self.family
                        .as_ref()
                        .and_then(|f| f.repetition_penalty(media))
                })
                .or(gc.repetition_penalty),
            seed: opts.seed,
        };
        let gen_opts = GenerateOptions {
            max_new_tokens: opts.max_new_tokens,
            sampling,
            eos_ids: self.eos_ids(),
            stop_sequences: self
                .family
                .as_ref()
                .map(|f| f.stop_sequences(media))
                .unwrap_or_default(),
            record_logits: opts.collect_tensors,
            min_new_tokens: self.family.as_ref().map_or(0, |f| f.min_new_tokens(media)),
        };
        let mut stream = text::StreamDecoder::new(&self.tokenizer);
        let mut stream_error = None;
        let mut cancelled_by_sink = false;
        // A family's answer is cleaned after generation (stop signs cut, like the reference's
        // `Chat.answer`), so it is handed to `on_text` once, whole, instead of piece by piece.
        let stream_pieces = self.family.is_none();
        let on_token = |id| match stream.push(id) {
            Ok(_) if !stream_pieces => true,
            Ok(Some(piece)) => {
                let keep_going = on_text(&piece);
                cancelled_by_sink |= !keep_going;
                keep_going
            }
            Ok(None) => true,
            Err(e) => {
                stream_error = Some(e.to_string());
                true
            }
        };
        let generation = match session {
            None => generate::generate_mrope(
                &self.model.llm,
                &inputs_embeds,
                &gen_opts,
                mrope.as_ref(),
                on_token,
            )?,
            Some(session) => session.generate(
                &self.model.llm,
                &self.model_identity,
                &input_ids,
                media_tokens,
                &inputs_embeds,
                &gen_opts,
                on_token,
            )?,
        };
        if let Some(e) = stream_error {
            tracing::warn!("streaming decode: {e}");
        }
        if !cancelled_by_sink && stream_pieces {
            if let Some(rest) = stream.finish()? {
                on_text(&rest);
            }
        }
        let answer = match &self.family {
            Some(f) => {
                let text = f.answer_text(&self.tokenizer, &generation.token_ids, media)?;
                on_text(&text);
                text
            }
            None => text::TextDecoder::new(&self.tokenizer)
                .decode(&generation.token_ids)?
                .trim()
                .to_string(),
        };
        let n_new = generation.token_ids.len();
        let timings = Timings {
            preprocess_s: 0.0,
            vision_s: media.vision_seconds,
            audio_s: media.audio_seconds,
            prompt_s,
            prefill_s: generation.prefill_seconds,
            decode_s: generation.decode_seconds,
            total_s: start.elapsed().as_secs_f64() + media.vision_seconds + media.audio_seconds,
            decode_tokens_per_s: if generation.decode_seconds > 0.0 {
                n_new.saturating_sub(1) as f64 / generation.decode_seconds
            } else {
                0.0
            },
        };
        let mut tensors = HashMap::new();
        if opts.collect_tensors && self.family.is_some() {
            for (name, t) in &media.stage_tensors {
                tensors.insert(name.clone(), t.to_dtype(DType::F32)?);
            }
        }
        if opts.collect_tensors {
            let dev = &Device::Cpu;
            // The VideoLLaMA 2 stage names; a family names its own stages (above).
            let generic = if self.family.is_none() {
                (media.audio.as_ref(), media.visual.as_ref())
            } else {
                (None, None)
            };
            if let Some(a) = generic.0 {
                let input_name = self.model.audio_input_name().unwrap_or("audio_fbank");
                tensors.insert(input_name.to_string(), a.audio_fbank.to_dtype(DType::F32)?);
                tensors.insert(
                    "audio_features".to_string(),
                    a.audio_features.to_dtype(DType::F32)?,
                );
                tensors.insert(
                    "audio_connector_out".to_string(),
                    a.audio_connector_out.to_dtype(DType::F32)?,
                );
            }
            if let Some(v) = generic.1 {
                tensors.insert(
                    "pixel_values".to_string(),
                    v.pixel_values.to_dtype(DType::F32)?,
                );
                tensors.insert(
                    "vision_features".to_string(),
                    v.vision_features.to_dtype(DType::F32)?,
                );
                tensors.insert(
                    "connector_out".to_string(),
                    v.connector_out.to_dtype(DType::F32)?,
                );
            }
            let dumped_ids = match &self.family {
                Some(f) => f.dump_input_ids_for(&input_ids, &media_blocks, media)?,
                None => input_ids.clone(),
            };
            tensors.insert(
                "input_ids".to_string(),
                Tensor::new(dumped_ids.as_slice(), dev)?,
            );
            tensors.insert(
                "inputs_embeds".to_string(),
                inputs_embeds.to_dtype(DType::F32)?,
            );
            if let Some(p) = &mrope {
                let rows: Vec<i64> = p.prefill.concat();
                let len = p.prefill[0].len();
                tensors.insert(
                    "position_ids".to_string(),
                    Tensor::from_vec(rows, (3, len), dev)?,
                );
                tensors.insert("rope_deltas".to_string(), Tensor::new(&[p.delta], dev)?);
            }
            let gen_ids: Vec<i64> = generation.token_ids.iter().map(|&i| i as i64).collect();
            tensors.insert(
                "generated_ids".to_string(),
                Tensor::new(gen_ids.as_slice(), dev)?,
            );
            if let Some(steps) = &generation.logits_steps {
                tensors.insert(
                    "logits_last".to_string(),
                    steps.get(0)?.to_dtype(DType::F32)?,
                );
                tensors.insert("logits_steps".to_string(), steps.to_dtype(DType::F32)?);
            }
            if !media.intermediates {
                // An encoder-cache entry: these were not kept.
                for name in [
                    "pixel_values",
                    "vision_features",
                    "audio_fbank",
                    "audio_mel",
                    "audio_features",
                ] {
                    tensors.remove(name);
                }
            }
        }
        Ok(Answer {
            answer,
            token_ids: generation.token_ids,
            prompt: prompt_text,
            text_tokens: input_ids
                .iter()
                .filter(|&&i| !prompt::is_placeholder(i))
                .count(),
            input_ids,
            prompt_tokens,
            visual_tokens,
            audio_tokens: media.audio_tokens(),
            stop_reason: generation.stop_reason,
            timings,
            reused_prompt_tokens: generation.reused_prompt_tokens,
            tensors,
        })
    }
}

/// Write stage tensors (golden names) to a safetensors file.
pub fn save_tensors(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let cpu: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<candle_core::Result<_>>()?;
    candle_core::safetensors::save(&cpu, path).map_err(|e| PipelineError::file(path, e))
}

#[cfg(test)]
mod tests {
    /// A loaded pipeline is shared across server threads.
    #[test]
    fn pipeline_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<super::Pipeline>();
    }
}
