//! MiniGPT4-Video (Vision-CAIR, 2024) on the shared engine.
//!
//! ```text
//! model_config.yaml ─► WeightSources: eva_vit_g (visual_encoder.), llama_model
//!                      (llama_model.base_model.model.), ckpt (llama_proj + LoRA factors,
//!                      merged into q_proj / v_proj as W + (alpha/r)·B·A while loading)
//! frames [T,3,S,S] ─► EVA ViT-g ─► fresh ln_vision (identity affine, still normalises)
//!        ─► drop CLS, view [T, N/4, 4C] ─► llama_proj ─► [T, N/4, d]: one block per frame
//! prompt "<s>[INST] " + (<Img><ImageHere>[<Cap>subtitle])×T + "\n" + question + " [/INST]"
//!        ─► split on <ImageHere> ─► segment 0 with BOS (so two BOS: the added one and the
//!        literal <s>) ─► splice one frame block per marker ─► Llama-2 / Mistral
//! ```

pub mod config;
pub mod inspect;
pub mod media;

pub use config::{MiniGpt4VideoConfig, ModelConfigFile, MODEL_CONFIG};

use crate::checkpoint::{Checkpoint, LoraMerge, WeightSource};
use crate::error::{PipelineError, Result};
use crate::family::{Family, StageTensors};
use crate::model::{EncodedAudio, EncodedVisual};
use crate::prompt::Modality;
use crate::video_llama::SlowLlamaText;
use crate::EncodedMedia;
use candle_core::{DType, Device, Tensor};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;
use videollama_connectors::token_merge::MergeProjector;
use videollama_encoders::eva_vit::{EvaVit, EvaVitConfig, LnVision};
use videollama_nn::with_load_scope;

/// Tokens concatenated into one by `token_pooling` (`view(T, N/4, 4C)`).
pub const TOKEN_GROUP: usize = 4;
/// `Chat.answer(max_length=2000)` (the image path).
pub const CHAT_MAX_LENGTH: usize = 2000;
const IMAGE_HERE: &str = "<ImageHere>";

/// Everything MiniGPT4-Video adds around the language model.
pub struct MiniGpt4VideoParts {
    pub config: ModelConfigFile,
    pub vit: EvaVit,
    pub ln_vision: LnVision,
    pub merge: MergeProjector,
    pub max_frames: usize,
    pub max_sub_len: usize,
    /// `generate`'s cut: the last 3700 (LLaMA) / 7500 (Mistral) positions.
    pub context_window: usize,
    /// The weights that had LoRA factors merged into them.
    pub lora_merged: Vec<String>,
    pub slow_text: Option<SlowLlamaText>,
    /// Speech recognition for subtitles (`--whisper` / `model.whisper_model`), loaded on
    /// first use.
    pub whisper: Option<std::path::PathBuf>,
    whisper_model: std::sync::OnceLock<videollama_asr::Whisper>,
}

impl MiniGpt4VideoParts {
    /// Subtitles from the video's speech.
    /// The reference's `get_subtitles`: Whisper on the sound track, written as WebVTT and read
    /// back as cues (so the times go through the same text round trip as the reference's).
    /// `None` when the video has no sound track.
    pub(crate) fn transcribe(
        &self,
        video: &Path,
    ) -> Result<Option<Vec<videollama_media::subtitles::Cue>>> {
        let Some(dir) = &self.whisper else {
            return Err(PipelineError::file(
                video,
                "speech recognition for subtitles needs a Whisper model (--whisper DIR or \
                 model.whisper_model); or give --subtitles FILE / none",
            ));
        };
        let whisper = match self.whisper_model.get() {
            Some(w) => w,
            None => {
                let w = videollama_asr::Whisper::load(dir)
                    .map_err(|e| PipelineError::Invalid(format!("Whisper model: {e}")))?;
                self.whisper_model.get_or_init(|| w)
            }
        };
        let segments = match whisper.transcribe_file(video) {
            Ok(segments) => segments,
            Err(videollama_asr::AsrError::Audio(
                videollama_media::decode::DecodeError::NoAudioStream { .. },
            )) => return Ok(None),
            Err(e) => return Err(PipelineError::Invalid(format!("speech recognition: {e}"))),
        };
        let vtt = videollama_asr::to_webvtt(&segments);
        videollama_media::subtitles::parse_webvtt(&vtt)
            .map(Some)
            .map_err(|e| PipelineError::Invalid(format!("speech recognition output: {e}")))
    }
}

/// What `inspect` and `--json` show.
#[derive(Debug, Clone, Serialize)]
pub struct MiniGpt4VideoSummary {
    pub config: PathBuf,
    pub vision_encoder: String,
    pub tokens_per_frame: usize,
    pub max_frames: usize,
    pub max_subtitle_words: usize,
    pub lora: String,
    pub context_window: usize,
}

fn candle_ctx(cfg: &ModelConfigFile, what: &str, e: candle_core::Error) -> PipelineError {
    let text = e.to_string();
    PipelineError::file(
        &cfg.path,
        format!("{what}: {}", text.lines().next().unwrap_or("")),
    )
}

/// `model_config.yaml` at `dir` (or `dir` itself when it is the YAML).
pub fn config_path(dir: &Path) -> Option<PathBuf> {
    if dir.is_file() && dir.file_name().is_some_and(|n| n == MODEL_CONFIG) {
        return Some(dir.to_path_buf());
    }
    let p = dir.join(MODEL_CONFIG);
    p.is_file().then_some(p)
}

impl MiniGpt4VideoParts {
    pub fn image_size(&self) -> usize {
        self.vit.config().image_size
    }

    pub fn tokens_per_frame(&self) -> usize {
        (self.vit.config().num_tokens() - 1) / TOKEN_GROUP
    }

    /// `encode_img`: `[T,3,S,S]` → `[T·N/4, d]` (frame-major), with the stage tensors.
    pub fn encode_frames(
        &self,
        pixels: &Tensor,
        dtype: DType,
        dev: &Device,
    ) -> Result<(EncodedVisual, StageTensors)> {
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
        let x = pixels.to_device(dev)?.to_dtype(dtype)?;
        let start = Instant::now();
        let raw = self.vit.forward(&x)?;
        let features = self.ln_vision.forward(&raw)?;
        let tower_seconds = start.elapsed().as_secs_f64();
        let start = Instant::now();
        let (merged, tokens) = self.merge.forward_with_stages(&features)?;
        let (t, n, d) = tokens.dims3()?;
        let visual = EncodedVisual {
            pixel_values: pixels.clone(),
            vision_features: features.clone(),
            connector_out: tokens.reshape((t * n, d))?,
            tower_seconds,
            connector_seconds: start.elapsed().as_secs_f64(),
        };
        let named = vec![
            ("pixel_values".to_string(), pixels.clone()),
            ("vision_features".to_string(), raw),
            ("vision_features_ln".to_string(), features),
            ("merged_tokens".to_string(), merged),
            ("visual_tokens".to_string(), tokens),
        ];
        Ok((visual, named))
    }

    pub fn summary(&self) -> MiniGpt4VideoSummary {
        let v = self.vit.config();
        MiniGpt4VideoSummary {
            config: self.config.path.clone(),
            vision_encoder: format!(
                "EVA ViT {} px, patch {}, width {}, {} blocks, {} heads + fresh ln_vision",
                v.image_size, v.patch_size, v.width, v.depth, v.num_heads
            ),
            tokens_per_frame: self.tokens_per_frame(),
            max_frames: self.max_frames,
            max_subtitle_words: self.max_sub_len,
            lora: format!(
                "r {}, alpha {} (scale {}), merged into {} weights",
                self.config.model.lora_r,
                self.config.model.lora_alpha,
                self.config.lora_scale(),
                self.lora_merged.len()
            ),
            context_window: self.context_window,
        }
    }

    /// The user message of a video: `<Img><ImageHere>` per frame, `<Cap>text` where due,
    /// then `"\n" + question` (`prepare_input`).
    fn video_message(captions: &[Option<String>], frames: usize, question: &str) -> String {
        let mut s = String::new();
        for i in 0..frames {
            s.push_str("<Img>");
            s.push_str(IMAGE_HERE);
            if let Some(Some(cap)) = captions.get(i) {
                s.push_str("<Cap>");
                s.push_str(cap);
            }
        }
        s.push('\n');
        s.push_str(question);
        s
    }
}

/// `CONV_VISION.get_prompt()` (SINGLE style, empty system): `"<s>"` then, per turn,
/// `"[INST] " + user + " [/INST]"` and the assistant's text right after.
pub fn render(first_user: &str, turns: &[String]) -> String {
    let mut out = String::from("<s>");
    for (i, turn) in turns.iter().enumerate() {
        let text = if i == 0 { first_user } else { turn.as_str() };
        if i % 2 == 0 {
            out.push_str("[INST] ");
            out.push_str(text);
            out.push_str(" [/INST]");
        } else {
            out.push_str(text);
        }
    }
    out
}

/// The output clean-up of `generate` / `Chat.answer`: cut at `</s>`, drop `<s>`, keep what
/// follows the last `[/INST]`, strip.
pub fn clean_answer(decoded: &str) -> String {
    let before = decoded.split("</s>").next().unwrap_or("");
    let no_bos = before.replace("<s>", "");
    no_bos
        .rsplit("[/INST]")
        .next()
        .unwrap_or("")
        .trim()
        .to_string()
}

fn is_video(media: &EncodedMedia) -> bool {
    media.modality == Modality::Video
}

impl Family for MiniGpt4VideoParts {
    fn name(&self) -> &'static str {
        "minigpt4-video"
    }
    fn has_vision(&self) -> bool {
        true
    }
    fn has_audio(&self) -> bool {
        false
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
    ) -> Result<(EncodedVisual, StageTensors)> {
        self.encode_frames(pixels, dtype, device)
    }
    fn encode_audio(
        &self,
        _: &Tensor,
        _: DType,
        _: &Device,
    ) -> Result<(EncodedAudio, StageTensors)> {
        Err(PipelineError::Invalid(
            "MiniGPT4-Video does not listen to sound (its subtitles can come from speech: \
             see --subtitles)"
                .into(),
        ))
    }
    fn prompt_ids(
        &self,
        tokenizer: &tokenizers::Tokenizer,
        turns: &[String],
        media: &EncodedMedia,
    ) -> Result<(String, Vec<i64>)> {
        let question = turns.first().map(String::as_str).unwrap_or("");
        let frames = media
            .visual
            .as_ref()
            .map(|v| v.pixel_values.dim(0))
            .transpose()?
            .unwrap_or(0);
        let first_user = match media.modality {
            Modality::Video => {
                MiniGpt4VideoParts::video_message(&media.frame_captions, frames, question)
            }
            // `Chat.upload_img` + `Chat.ask` (joined with a space after `</Img>`).
            Modality::Image => format!("<Img>{IMAGE_HERE}</Img> {question}"),
            Modality::Text => question.to_string(),
            Modality::Audio => {
                return Err(PipelineError::Invalid(
                    "MiniGPT4-Video does not take sound".into(),
                ))
            }
        };
        let prompt = render(&first_user, turns);
        let segments: Vec<&str> = prompt.split(IMAGE_HERE).collect();
        let blocks = match media.modality {
            Modality::Video | Modality::Image => frames,
            _ => 0,
        };
        if segments.len() != blocks + 1 {
            return Err(PipelineError::Invalid(format!(
                "the prompt has {} <ImageHere> markers for {blocks} frames (is `<ImageHere>` in the question?)",
                segments.len() - 1
            )));
        }
        let bos = tokenizer
            .token_to_id("<s>")
            .ok_or_else(|| PipelineError::Invalid("the tokenizer has no <s> (BOS) token".into()))?;
        // Segment 0 with add_special_tokens=True: BOS, then the literal `<s>` of the template
        // (the slow tokenizer maps it to BOS too — two BOS, as the reference).
        let mut ids = vec![bos as i64];
        let placeholder = Modality::Image.placeholder_id().unwrap_or(-200);
        for (i, seg) in segments.iter().enumerate() {
            if i > 0 {
                ids.push(placeholder);
            }
            if !seg.is_empty() {
                let enc = tokenizer
                    .encode(*seg, false)
                    .map_err(|e| PipelineError::Invalid(format!("tokenizer failed: {e}")))?;
                ids.extend(enc.get_ids().iter().map(|&i| i as i64));
            }
        }
        Ok((prompt, ids))
    }
    fn media_blocks(&self, media: &EncodedMedia) -> Result<Vec<Tensor>> {
        // One block of N/4 tokens per frame.
        let Some(v) = &media.visual else {
            return Ok(Vec::new());
        };
        let per = self.tokens_per_frame();
        let rows = v.connector_out.dim(0)?;
        (0..rows / per)
            .map(|i| Ok(v.connector_out.narrow(0, i * per, per)?))
            .collect()
    }
    fn context_start(
        &self,
        prompt_len: usize,
        max_new_tokens: usize,
        media: &EncodedMedia,
    ) -> usize {
        if is_video(media) {
            // `generate`: embeddings beyond the context window are cut from the front.
            prompt_len.saturating_sub(self.context_window)
        } else {
            (prompt_len + max_new_tokens).saturating_sub(CHAT_MAX_LENGTH)
        }
    }
    fn stop_sequences(&self, _: &EncodedMedia) -> Vec<Vec<u32>> {
        // `Chat` stops on id 2; `generate` on the model's eos (also 2 for both LLMs).
        vec![vec![2]]
    }
    fn repetition_penalty(&self, media: &EncodedMedia) -> Option<f32> {
        // `generate(repetition_penalty=1.5)` for videos; `Chat.answer` uses 1.0.
        is_video(media).then_some(1.5)
    }
    fn answer_text(
        &self,
        tokenizer: &tokenizers::Tokenizer,
        ids: &[u32],
        media: &EncodedMedia,
    ) -> Result<String> {
        // The video path decodes with skip_special_tokens=True, `Chat` without.
        let skip = is_video(media);
        let decoded = match &self.slow_text {
            Some(slow) => slow
                .model
                .decode_like_slow_llama(ids, &slow.special, skip)?,
            None => tokenizer
                .decode(ids, skip)
                .map_err(|e| PipelineError::Invalid(format!("decoding the answer: {e}")))?,
        };
        Ok(clean_answer(&decoded))
    }
    fn dump_input_ids(&self, ids: &[i64], blocks: &[Tensor]) -> Result<Vec<i64>> {
        // The fixture writes −200 once per visual token.
        crate::family::expand_placeholders(ids, blocks, -200)
    }
}

/// What [`crate::Pipeline::load`] needs from a MiniGPT4-Video folder.
pub struct Loaded {
    pub parts: MiniGpt4VideoParts,
    pub model: crate::model::VideoLlama2,
    pub tokenizer: tokenizers::Tokenizer,
    pub generation_config: videollama_llm::GenerationConfig,
}

/// Load MiniGPT4-Video from its `model_config.yaml`.
pub fn load(path: &Path, opts: &crate::LoadOptions, config_options: &[String]) -> Result<Loaded> {
    let cfg = ModelConfigFile::from_file(path, config_options)?;
    let m = &cfg.model;
    if !m.token_pooling {
        return Err(PipelineError::file(
            &cfg.path,
            "token_pooling: false (one LLM token per patch) is not supported; every published \
             MiniGPT4-Video config pools 4 tokens",
        ));
    }
    let llm_dir = cfg.resolve(&m.llama_model);
    if !llm_dir.is_dir() {
        return Err(PipelineError::file(
            &llm_dir,
            format!("llama_model (from {}) is not a folder", cfg.path.display()),
        ));
    }
    let llm_config_path = llm_dir.join("config.json");
    let raw = crate::error::read_json(&llm_config_path)?;
    let llm_cfg: videollama_llm::DecoderConfig = serde_json::from_value(raw.clone())
        .map_err(|e| PipelineError::file(&llm_config_path, format!("llama_model config: {e}")))?;
    let is_mistral = raw.get("model_type").and_then(|t| t.as_str()) == Some("mistral");
    let (tokenizer, slow_text) = crate::video_llama::load_llm_tokenizer(&llm_dir)?;
    let gen_path = llm_dir.join("generation_config.json");
    let generation_config: videollama_llm::GenerationConfig = if gen_path.is_file() {
        serde_json::from_value(crate::error::read_json(&gen_path)?).map_err(|e| {
            PipelineError::Json {
                path: gen_path.clone(),
                cause: e.to_string(),
            }
        })?
    } else {
        videollama_llm::GenerationConfig::default()
    };
    let mut sources = vec![
        WeightSource {
            label: "EVA ViT weights".into(),
            path: cfg.resolve(m.vit_model_path.as_deref().unwrap_or("eva_vit_g.pth")),
            prefix: "visual_encoder.".into(),
        },
        WeightSource {
            label: "llama_model".into(),
            path: llm_dir.clone(),
            prefix: "llama_model.base_model.model.".into(),
        },
    ];
    match &m.ckpt {
        Some(ckpt) => sources.push(WeightSource {
            label: "ckpt".into(),
            path: cfg.resolve(ckpt),
            prefix: String::new(),
        }),
        None => {
            return Err(PipelineError::file(
                &cfg.path,
                "no `ckpt`: MiniGPT4-Video needs its checkpoint (llama_proj + LoRA), e.g. \
                 video_llama_checkpoint_last.pth",
            ))
        }
    }
    let lora = LoraMerge::new(cfg.lora_scale());
    let ckpt = Checkpoint::open_sources_with_lora(
        &cfg.dir,
        &sources,
        Some(lora.clone()),
        opts.dtype,
        &opts.device,
    )?;
    let vb = ckpt.var_builder();
    let llm = with_load_scope(opts.weights.llm_scope(), || {
        videollama_llm::DecoderLm::new(&llm_cfg, vb.pp("llama_model.base_model.model"))
    })
    .map_err(|e| candle_ctx(&cfg, "llama_model", e))?;
    // Every stored LoRA factor pair must have met its weight.
    let lora_a = ckpt
        .tensor_names()
        .iter()
        .filter(|n| n.contains(".lora_A."))
        .count();
    let merged = lora.merged();
    if merged.len() != lora_a {
        return Err(PipelineError::file(
            &cfg.path,
            format!(
                "ckpt holds {lora_a} LoRA adapters but only {} matched a weight of the language \
                 model (lora_target_modules {:?}): is it the checkpoint for this LLM?",
                merged.len(),
                m.lora_target_modules
            ),
        ));
    }
    let vit_vb = vb.pp("visual_encoder");
    let width = vit_vb
        .get_unchecked("cls_token")
        .map_err(|e| candle_ctx(&cfg, "EVA ViT weights", e))?
        .dim(2)?;
    let heads = match m.vit_num_heads {
        Some(h) => h,
        None if width == 1408 => 16,
        None => {
            return Err(PipelineError::file(
                &cfg.path,
                format!(
                    "the EVA ViT is {width} wide, not the published 1408 — its attention head \
                     count cannot be read from the weights; set model.vit_num_heads (e.g. \
                     --options model.vit_num_heads=N)"
                ),
            ))
        }
    };
    let depth = m.vit_depth.or_else(|| {
        vit_vb
            .contains_tensor("blocks.39.norm1.weight")
            .then_some(39)
    });
    // Another `image_size` than the weights' table: interpolated at load, as the reference's
    // `create_eva_vit_g(img_size)` does.
    let vit_cfg = EvaVitConfig::from_weights(&vit_vb, heads, depth)
        .and_then(|c| match m.image_size.or(m.img_size) {
            Some(size) => c.at_image_size(size),
            None => Ok(c),
        })
        .map_err(|e| candle_ctx(&cfg, "EVA ViT", e))?;
    let vit = with_load_scope(opts.weights.vision_scope(), || {
        EvaVit::new(&vit_cfg, vit_vb.clone())
    })
    .map_err(|e| candle_ctx(&cfg, "EVA ViT", e))?;
    // `init_vision_encoder` creates ln_vision fresh and no file loads it.
    let ln_vision =
        LnVision::identity(&vit_cfg, &opts.device).map_err(|e| candle_ctx(&cfg, "ln_vision", e))?;
    let merge = MergeProjector::new(TOKEN_GROUP, vit_cfg.width, vb.pp("llama_proj"))
        .map_err(|e| candle_ctx(&cfg, "llama_proj (ckpt)", e))?;
    if (vit_cfg.num_tokens() - 1) % TOKEN_GROUP != 0 {
        return Err(PipelineError::file(
            &cfg.path,
            format!(
                "{} patches per frame cannot be merged {TOKEN_GROUP} at a time",
                vit_cfg.num_tokens() - 1
            ),
        ));
    }
    let unused = ckpt.finish().map_err(|e| match e {
        PipelineError::MissingTensors { names, .. } => PipelineError::file(
            &cfg.path,
            format!("tensors missing from the files it names: {names}"),
        ),
        other => other,
    })?;
    tracing::debug!(
        count = unused.len(),
        merged = merged.len(),
        "MiniGPT4-Video weights loaded"
    );
    let (max_frames, max_sub_len) = cfg.frame_and_word_limits();
    let whisper = opts
        .whisper
        .clone()
        .or_else(|| cfg.model.whisper_model.as_deref().map(|w| cfg.resolve(w)));
    let context_window = m
        .context_window
        .unwrap_or(if is_mistral { 7500 } else { 3700 });
    let model = crate::model::VideoLlama2::language_model_only(
        crate::model::LanguageModelOnly {
            model_type: "minigpt4_video",
            llm_cfg,
            family: if is_mistral {
                crate::config::LlmFamily::Mistral
            } else {
                crate::config::LlmFamily::Llama
            },
            vision_tower: None,
            num_frames: max_frames,
            raw,
            unused_tensors: unused,
        },
        llm,
        opts,
    )?;
    Ok(Loaded {
        parts: MiniGpt4VideoParts {
            config: cfg,
            vit,
            ln_vision,
            merge,
            max_frames,
            max_sub_len,
            context_window,
            lora_merged: merged,
            slow_text,
            whisper,
            whisper_model: std::sync::OnceLock::new(),
        },
        model,
        tokenizer,
        generation_config,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversation_renders_like_conv_vision() {
        let p = render(
            "<Img><ImageHere></Img> hi",
            &["hi".into(), "a1".into(), "q2".into()],
        );
        assert_eq!(
            p,
            "<s>[INST] <Img><ImageHere></Img> hi [/INST]a1[INST] q2 [/INST]"
        );
        assert_eq!(clean_answer(" a <s>b</s> c"), "a b");
        assert_eq!(clean_answer("x [/INST] y"), "y");
        let msg = MiniGpt4VideoParts::video_message(&[Some("one. ".into()), None], 2, "Q?");
        assert_eq!(msg, "<Img><ImageHere><Cap>one. <Img><ImageHere>\nQ?");
    }
}
