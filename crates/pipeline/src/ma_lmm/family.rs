//! MA-LMM hosted by [`crate::Pipeline`] (so `caption`, `chat` and the server run it) through
//! the [`Family`] trait.
//!
//! MA-LMM's Q-Former is instruction-aware: the visual tokens depend on the question. The work
//! is split so that the question-free part is encoded once (and kept by the encoder cache):
//!
//! ```text
//! prepare_media   video ─► demo load_video sampling (T = num_frames, optional clip bounds)
//!                 ─► per frame bicubic + uint8 wrap + CLIP norm          pixels [T, 3, S, S]
//! encode_visual   per frame t: EVA ViT ─► ln_vision ─► + image_pe[t]     entries [T, N, W]
//!                 (EncodedVisual.vision_features; connector_out is a zero-width [Q, 0]
//!                 placeholder, so `visual_tokens()` is the Q rows the LLM will see)
//! media_blocks_for  last turn's question ─► for t in 0..T: visual bank (compress, push) ─►
//!                 memory-bank Q-Former (query banks)  ─► llm_proj(last frame, Q rows) [Q, d]
//! prompt_ids      [video placeholder] </s> "Question: {q} Short answer:"  (visual rows
//!                 before the whole prompt, as `inputs_embeds = [visual ; embed(ids)]`)
//! generate        greedy, eos banned at the first step (`min_length` 1), repetition 1.0
//! answer_text     ids < 2 → 2, decode skipping special tokens, strip
//! ```
//!
//! The reference has no multi-turn template (its demo asks one question per video): every
//! answer is computed from the LAST user turn alone, and a chat session never reuses cached
//! keys/values (the media rows change with the question).
//!
//! The loaded [`MaLmm`] is kept here; the `Pipeline`'s language model is a clone of its
//! `DecoderLm`, whose weight tensors are reference-counted: both name the same storage.

use super::{media, MaLmm};
use crate::error::{PipelineError, Result};
use crate::family::{Family, StageTensors};
use crate::media::{MediaReport, MediaRequest};
use crate::model::EncodedVisual;
use crate::prompt::Modality;
use crate::{EncodedMedia, MediaInput};
use candle_core::{DType, Device, Tensor};
use std::path::Path;
use std::time::Instant;

/// `Blip2VicunaInstruct_MALMM.generate(min_length=1)`: with transformers 4.33 this bans eos
/// at the first new token (see tests/golden/README.md, ma-lmm-tiny "Findings" 3).
pub const MIN_NEW_TOKENS: usize = 1;
/// `generate(repetition_penalty=1.0)`: overrides any value in the LLM's generation config.
pub const REPETITION_PENALTY: f32 = 1.0;

/// MA-LMM's stages and prompt rules for the shared pipeline.
pub struct MaLmmFamily {
    pub model: MaLmm,
}

/// What [`load`] returns: the family, the language-model-only `VideoLlama2` sharing the
/// family's LLM weights, the LLM tokenizer and generation config.
pub struct Loaded {
    pub parts: MaLmmFamily,
    pub model: crate::model::VideoLlama2,
    pub tokenizer: tokenizers::Tokenizer,
    pub generation_config: videollama_llm::GenerationConfig,
}

/// Load MA-LMM from `model_config.yaml` (`--options model.KEY=VALUE` in `options`).
pub fn load(config: &Path, opts: &crate::LoadOptions, options: &[String]) -> Result<Loaded> {
    let model = MaLmm::load(config, opts, options)?;
    let llm_dir = model.config.resolve(&model.config.model.llm_model);
    let llm_config_path = llm_dir.join("config.json");
    let raw = crate::error::read_json(&llm_config_path)?;
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
    // A clone shares the weight tensors (Arc-backed); no second copy is made.
    let llm = model.llm.clone();
    let lm = crate::model::VideoLlama2::language_model_only(
        crate::model::LanguageModelOnly {
            model_type: "ma_lmm",
            llm_cfg: llm.config().clone(),
            family: crate::config::LlmFamily::Llama,
            vision_tower: None,
            num_frames: model.config.model.num_frames,
            raw,
            unused_tensors: Vec::new(),
        },
        llm,
        opts,
    )?;
    Ok(Loaded {
        tokenizer: model.llm_tokenizer.clone(),
        parts: MaLmmFamily { model },
        model: lm,
        generation_config,
    })
}

impl MaLmmFamily {
    /// The demo's video input: `num_frames` frames sampled by `load_video` over the clip
    /// (default: the whole video), each preprocessed on its own → `[T, 3, S, S]`.
    pub fn prepare_video(&self, path: &Path, req: &MediaRequest) -> Result<(Tensor, MediaReport)> {
        use videollama_media::decode::VideoReader;
        let start = Instant::now();
        if !path.is_file() {
            return Err(PipelineError::file(path, "no such video file"));
        }
        let decode_err = |e: videollama_media::decode::DecodeError| {
            PipelineError::file(path, format!("cannot decode the video: {e}"))
        };
        let reader = VideoReader::open(path).map_err(decode_err)?;
        let info = reader.info().clone();
        let indices = media::sample_indices_between(
            info.frame_count,
            info.avg_fps,
            req.start_s,
            req.end_s,
            self.model.config.model.num_frames,
        )
        .map_err(|e| PipelineError::file(path, e))?;
        let frames = reader.decode(&indices).map_err(decode_err)?;
        if frames.len() != indices.len() {
            return Err(PipelineError::file(
                path,
                format!(
                    "{} of the {} sampled frames could be decoded",
                    frames.len(),
                    indices.len()
                ),
            ));
        }
        let s = self.model.image_size();
        let mut pixels = Vec::with_capacity(frames.len());
        for f in &frames {
            let (px, _) = media::preprocess_frame(&f.data, f.height as usize, f.width as usize, s)?;
            pixels.push(Tensor::from_vec(px, (3, s, s), &Device::Cpu)?);
        }
        let report = MediaReport {
            frame_timestamps_s: if info.avg_fps > 0.0 {
                indices.iter().map(|&i| i as f64 / info.avg_fps).collect()
            } else {
                Vec::new()
            },
            frame_indices: indices,
            video_frame_count: Some(info.frame_count),
            video_fps: Some(info.avg_fps),
            preprocess_s: start.elapsed().as_secs_f64(),
            ..MediaReport::default()
        };
        Ok((Tensor::stack(&pixels, 0)?, report))
    }

    fn question<'a>(&self, turns: &'a [String]) -> Result<&'a str> {
        turns
            .last()
            .map(String::as_str)
            .ok_or_else(|| PipelineError::Invalid("MA-LMM needs a question".into()))
    }
}

impl Family for MaLmmFamily {
    fn name(&self) -> &'static str {
        "ma-lmm"
    }
    fn has_vision(&self) -> bool {
        true
    }
    fn prepare_media(&self, req: &MediaRequest) -> Result<(MediaInput, MediaReport)> {
        if let Some(image) = &req.image {
            return Err(PipelineError::file(
                image,
                "MA-LMM answers about videos only (its memory banks run over frames); give \
                 --video",
            ));
        }
        if req.audio.is_some() {
            return Err(PipelineError::Invalid(
                "MA-LMM does not listen to sound".into(),
            ));
        }
        let Some(path) = &req.video else {
            return Ok((MediaInput::none(), MediaReport::default()));
        };
        let (pixels, report) = self.prepare_video(path, req)?;
        Ok((MediaInput::video(pixels), report))
    }
    fn encode_visual(
        &self,
        pixels: &Tensor,
        is_image: bool,
        _dtype: DType,
        _device: &Device,
    ) -> Result<(EncodedVisual, StageTensors)> {
        if is_image {
            return Err(PipelineError::Invalid(
                "MA-LMM answers about videos only (its memory banks run over frames)".into(),
            ));
        }
        let start = Instant::now();
        let (t, ..) = pixels.dims4()?;
        let mut features = Vec::with_capacity(t);
        let mut entries = Vec::with_capacity(t);
        for i in 0..t {
            let (f, e) = self.model.frame_entry(i, &pixels.get(i)?)?;
            features.push(f);
            entries.push(e);
        }
        if entries.is_empty() {
            return Err(PipelineError::Invalid(
                "MA-LMM needs at least one frame".into(),
            ));
        }
        let entries = Tensor::stack(&entries, 0)?; // [T, N, W]
        let q = self.model.qformer.num_queries();
        // Zero-width: the Q rows are computed per question in `media_blocks_for`.
        let placeholder = Tensor::zeros((q, 0), entries.dtype(), entries.device())?;
        let stage = vec![
            // The fixture's layout: C, T, H, W.
            (
                "pixel_values".to_string(),
                pixels.permute((1, 0, 2, 3))?.contiguous()?,
            ),
            ("vision_features".to_string(), Tensor::stack(&features, 0)?),
        ];
        Ok((
            EncodedVisual {
                pixel_values: pixels.clone(),
                vision_features: entries,
                connector_out: placeholder,
                tower_seconds: start.elapsed().as_secs_f64(),
                connector_seconds: 0.0,
            },
            stage,
        ))
    }
    fn prompt_ids(
        &self,
        _tokenizer: &tokenizers::Tokenizer,
        turns: &[String],
        media: &EncodedMedia,
    ) -> Result<(String, Vec<i64>)> {
        if media.visual.is_none() || media.modality != Modality::Video {
            return Err(PipelineError::Invalid(
                "MA-LMM answers questions about a video: give one".into(),
            ));
        }
        let prompt = self.model.prompt(self.question(turns)?);
        let placeholder = Modality::Video
            .placeholder_id()
            .ok_or_else(|| PipelineError::Invalid("no video placeholder id".into()))?;
        let mut ids = vec![placeholder];
        ids.extend(self.model.llm_ids(&prompt)?.into_iter().map(i64::from));
        Ok((prompt, ids))
    }
    fn media_blocks(&self, _: &EncodedMedia) -> Result<Vec<Tensor>> {
        Err(PipelineError::Invalid(
            "MA-LMM's visual tokens depend on the question: use media_blocks_for".into(),
        ))
    }
    fn media_blocks_for(&self, turns: &[String], media: &EncodedMedia) -> Result<Vec<Tensor>> {
        let Some(v) = &media.visual else {
            return Ok(Vec::new());
        };
        let entries = &v.vision_features; // [T, N, W]
        if entries.rank() != 3 || entries.dim(0)? == 0 {
            return Err(PipelineError::Invalid(format!(
                "MA-LMM needs the per-frame entries [T, N, W] of encode_visual, got {:?}",
                entries.dims()
            )));
        }
        // The same order of operations as `MaLmm::push_frame`, from the stored entries.
        let mut stream = self.model.start(self.question(turns)?, false)?;
        for t in 0..entries.dim(0)? {
            let e = entries.get(t)?;
            self.model.push_entry(&mut stream, e.clone(), &e)?;
        }
        Ok(vec![self.model.finish(&mut stream)?])
    }
    fn media_depends_on_turns(&self) -> bool {
        true
    }
    fn min_new_tokens(&self, _: &EncodedMedia) -> usize {
        MIN_NEW_TOKENS
    }
    fn context_start(&self, _: usize, _: usize, _: &EncodedMedia) -> usize {
        0
    }
    fn stop_sequences(&self, _: &EncodedMedia) -> Vec<Vec<u32>> {
        Vec::new()
    }
    fn repetition_penalty(&self, _: &EncodedMedia) -> Option<f32> {
        Some(REPETITION_PENALTY)
    }
    fn answer_text(
        &self,
        _tokenizer: &tokenizers::Tokenizer,
        ids: &[u32],
        _: &EncodedMedia,
    ) -> Result<String> {
        self.model.decode(ids)
    }
    fn dump_input_ids(&self, ids: &[i64], _blocks: &[Tensor]) -> Result<Vec<i64>> {
        // The fixture's `input_ids` are the LLM's text ids only (the visual rows precede them).
        Ok(ids
            .iter()
            .copied()
            .filter(|&i| !crate::prompt::is_placeholder(i))
            .collect())
    }
}
