//! Chat-UniVi (PKU-YuanGroup, CVPR 2024) on the shared engine.
//!
//! ```text
//! DIR/config.json (model_type ChatUniVi) + shards + tokenizer; the CLIP tower from the
//!   folder mm_vision_tower names (the checkpoint holds no tower weights)
//! image ─► [1,3,S,S] ─CLIP hidden_states[-2], no CLS─► [1,N,C] ─ctm0/1/2─► [K0+K1+K2, C]
//! video ─► [T,3,S,S] ─CLIP─► [T,N,C] ─events (ctm3 on frame means) + per-event stages─►
//!          [E·(K0+K1+K2), C]          (cluster.rs; T ≤ 2 frames take the image path)
//!       ─mm_projector Linear(C→d)─► [L, d]
//! prompt (v1 / simple) with one `<image>` per frame ─split on "<image>", BOS once─► ids with
//!   −200 per frame ─► the whole run of placeholders is replaced by the one block ─► LLaMA
//!   ─► decode(skip_special_tokens) ─► strip, drop a trailing stop string, strip
//! ```
//!
//! The DPC-KNN noise: by default none, with the documented index tie-break (see
//! `videollama_connectors::dpc_knn`); with `--reference-noise FILE` the recorded
//! `dpcNN_jitter` of a reference run, call by call (cluster.rs).
//!
//! The prompt has one `<image>` per frame (−200 once per frame in the ids, as the fixture's
//! `input_ids`); the run is replaced by the one block, as the reference does, so internally
//! the run is a single placeholder (`--dump-tensors` writes the −200 once per frame again).

pub mod cluster;
pub mod config;
pub mod inspect;
pub mod media;

pub use config::{ChatUniViConfig, ChatUniViOptions, ConvMode};

use crate::checkpoint::{Checkpoint, WeightSource};
use crate::clip_tower::{self, ClipTowerFolder};
use crate::error::{PipelineError, Result};
use crate::family::{Family, StageTensors};
use crate::model::EncodedVisual;
use crate::prompt::Modality;
use crate::video_llama::SlowLlamaText;
use crate::EncodedMedia;
use candle_core::{DType, Device, Tensor};
use cluster::{ClusterStages, NoiseCursor, RecordedJitter};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use videollama_connectors::dpc_knn::Ctm;
use videollama_encoders::VisionTower;
use videollama_media::image_processor::ImageProcessorConfig;
use videollama_nn::{linear, with_load_scope, Linear};

pub use config::config_path;

/// The placeholder string and id of `tokenizer_image_token`.
pub const IMAGE_TOKEN: &str = "<image>";
pub const IMAGE_TOKEN_INDEX: i64 = -200;

/// Everything Chat-UniVi adds around the language model.
pub struct ChatUniViParts {
    pub dir: PathBuf,
    pub config: ChatUniViConfig,
    pub options: ChatUniViOptions,
    pub tower: VisionTower,
    pub tower_folder: ClipTowerFolder,
    pub processor: ImageProcessorConfig,
    pub projector: Linear,
    /// `None` when `use_cluster` is off.
    pub stages: Option<ClusterStages>,
    /// The recorded density noise (`--reference-noise`).
    pub jitter: Option<Arc<RecordedJitter>>,
    pub bos: u32,
    /// Id sequences that end generation for the `###` templates (every spelling of `###` the
    /// reference's text check would catch within three tokens).
    pub hash_stops: Vec<Vec<u32>>,
    pub slow_text: Option<SlowLlamaText>,
}

/// What `--json` and inspect show.
#[derive(Debug, Clone, Serialize)]
pub struct ChatUniViSummary {
    pub vision_tower: String,
    pub clustering: bool,
    pub tokens_per_image: usize,
    pub max_frames: usize,
    pub density_noise: String,
}

impl ChatUniViParts {
    pub fn image_size(&self) -> usize {
        self.tower.config().image_size()
    }

    /// The template of a request: `--options conv_mode`, else the eval scripts' choice.
    pub fn conv_mode(&self, modality: Modality) -> ConvMode {
        self.options.conv_mode.unwrap_or(match modality {
            Modality::Image => ConvMode::Simple,
            _ => ConvMode::V1,
        })
    }

    pub fn summary(&self) -> ChatUniViSummary {
        let patches = self.tower.config().num_patches();
        ChatUniViSummary {
            vision_tower: self.tower_folder.dir.display().to_string(),
            clustering: self.stages.is_some(),
            tokens_per_image: self
                .stages
                .map(|s| s.tokens_per_image(patches))
                .unwrap_or(patches),
            max_frames: self.options.max_frames,
            density_noise: match &self.jitter {
                Some(j) => format!("recorded ({})", j.path.display()),
                None => "none (index tie-break)".into(),
            },
        }
    }

    /// `[T,3,S,S]` → tower → clustering (or not) → projector, with the stage tensors.
    pub fn encode(
        &self,
        pixels: &Tensor,
        is_image: bool,
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
        if t == 0 || c != 3 || h != size || w != size {
            return Err(PipelineError::Invalid(format!(
                "pixel_values have shape {:?}; this CLIP tower expects T×3×{size}×{size}",
                pixels.dims()
            )));
        }
        if is_image && t != 1 {
            return Err(PipelineError::Invalid(format!(
                "an image is 1×3×{size}×{size}, got {:?}",
                pixels.dims()
            )));
        }
        let start = Instant::now();
        let features = self
            .tower
            .forward(&pixels.to_device(dev)?.to_dtype(dtype)?)?;
        let tower_seconds = start.elapsed().as_secs_f64();
        let start = Instant::now();
        let mut named: StageTensors = vec![
            ("pixel_values".into(), pixels.clone()),
            ("vision_features".into(), features.clone()),
        ];
        // The reference projects groups of 1 or 2 `<image>`s as images, 3+ as a video.
        let video = !is_image && t > 2;
        let tokens = match &self.stages {
            Some(stages) => {
                let mut noise = NoiseCursor::new(self.jitter.clone());
                let x = features.to_dtype(DType::F32)?;
                let (tokens, stage_named) = if video {
                    stages.video(&x, &mut noise)?
                } else {
                    let (per_image, n) = stages.image(&x, &mut noise, "")?;
                    let (b, k, c) = per_image.dims3()?;
                    (per_image.reshape((b * k, c))?, n)
                };
                named.extend(stage_named);
                tokens
            }
            None => cluster::unclustered(&features, video)?,
        };
        let visual = self.projector.forward(&tokens.to_dtype(dtype)?)?;
        named.push(("cluster_tokens".into(), tokens));
        named.push(("visual_tokens".into(), visual.clone()));
        Ok((
            EncodedVisual {
                pixel_values: pixels.clone(),
                vision_features: features,
                connector_out: visual,
                tower_seconds,
                connector_seconds: start.elapsed().as_secs_f64(),
            },
            named,
        ))
    }

    /// The reference's text criterion after the fact: generation would have stopped at the
    /// first step whose last ≤ 3 tokens decode (special tokens skipped) to text containing
    /// the stop string; the ids after it are dropped.
    fn cut_at_text_stop<'a>(
        &self,
        tokenizer: &tokenizers::Tokenizer,
        ids: &'a [u32],
        stop: &str,
    ) -> Result<&'a [u32]> {
        for end in 1..=ids.len() {
            let window = &ids[end.saturating_sub(3)..end];
            if self.decode(tokenizer, window)?.contains(stop) {
                return Ok(&ids[..end]);
            }
        }
        Ok(ids)
    }

    fn decode(&self, tokenizer: &tokenizers::Tokenizer, ids: &[u32]) -> Result<String> {
        match &self.slow_text {
            Some(slow) => slow.model.decode_like_slow_llama(ids, &slow.special, true),
            None => tokenizer
                .decode(ids, true)
                .map_err(|e| PipelineError::Invalid(format!("decoding the answer: {e}"))),
        }
    }
}

/// Every id sequence of at most three tokens whose decoded text contains `stop` (the
/// reference's `KeywordsStoppingCriteria` decodes the last ≤ 3 new tokens, special tokens
/// skipped, and stops when the text holds the keyword), built from the tokens that decode to
/// `stop` itself or to a run of its characters (for `###`: `#`, `##`, `▁###`, …). The stop
/// string's own ids come first. `answer_text` applies the exact criterion afterwards, so a
/// spelling missed here only makes generation run longer, never changes the text.
fn text_stop_sequences(tokenizer: &tokenizers::Tokenizer, stop: &str) -> Vec<Vec<u32>> {
    let decode = |ids: &[u32]| tokenizer.decode(ids, true).unwrap_or_default();
    let mut out: Vec<Vec<u32>> = Vec::new();
    if let Ok(enc) = tokenizer.encode(stop, false) {
        if !enc.get_ids().is_empty() {
            out.push(enc.get_ids().to_vec());
        }
    }
    let chars: Vec<char> = stop.chars().collect();
    let mut parts: Vec<u32> = Vec::new();
    for id in 0..tokenizer.get_vocab_size(true) as u32 {
        let text = decode(&[id]);
        if text.contains(stop) {
            out.push(vec![id]);
        } else {
            let core = text.trim_start();
            if !core.is_empty() && core.chars().all(|c| chars.contains(&c)) {
                parts.push(id);
            }
        }
    }
    if parts.len() <= 64 {
        for &a in &parts {
            for &b in &parts {
                if decode(&[a, b]).contains(stop) {
                    out.push(vec![a, b]);
                    continue;
                }
                for &c in &parts {
                    if decode(&[a, b, c]).contains(stop) {
                        out.push(vec![a, b, c]);
                    }
                }
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|s| seen.insert(s.clone()));
    out
}

/// Frames (`<image>` placeholders) of the request: the pixel tensor's, or for an encoder-cache
/// entry (whose pixels are dropped) the sampled frame times `prepare` recorded. The spliced
/// sequence does not depend on it — the whole run becomes one block — only the prompt text
/// and the dumped `input_ids` do.
fn frames_of(media: &EncodedMedia) -> usize {
    let Some(v) = &media.visual else {
        return 0;
    };
    match v.pixel_values.dims() {
        [t, _, _, _] => *t,
        _ if !media.frame_timestamps.is_empty() => media.frame_timestamps.len(),
        _ => 1,
    }
}

impl Family for ChatUniViParts {
    fn name(&self) -> &'static str {
        "chat-univi"
    }
    fn has_vision(&self) -> bool {
        true
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
        is_image: bool,
        dtype: DType,
        device: &Device,
    ) -> Result<(EncodedVisual, StageTensors)> {
        self.encode(pixels, is_image, dtype, device)
    }
    fn prompt_ids(
        &self,
        tokenizer: &tokenizers::Tokenizer,
        turns: &[String],
        media: &EncodedMedia,
    ) -> Result<(String, Vec<i64>)> {
        let question = turns.first().map(String::as_str).unwrap_or("");
        if media.modality == Modality::Audio {
            return Err(PipelineError::Invalid(
                "Chat-UniVi answers about images, videos or text".into(),
            ));
        }
        let frames = frames_of(media);
        let first_user = if frames > 0 {
            format!("{}\n{question}", IMAGE_TOKEN.repeat(frames))
        } else {
            question.to_string()
        };
        let prompt = self.conv_mode(media.modality).render(&first_user, turns);
        let chunks: Vec<&str> = prompt.split(IMAGE_TOKEN).collect();
        if chunks.len() != frames + 1 {
            return Err(PipelineError::Invalid(format!(
                "the prompt has {} {IMAGE_TOKEN} markers for {frames} frames (is {IMAGE_TOKEN} \
                 in the question?)",
                chunks.len() - 1
            )));
        }
        // `tokenizer_image_token`: every chunk with BOS, which is kept once at the start.
        let mut ids: Vec<i64> = vec![self.bos as i64];
        for (i, chunk) in chunks.iter().enumerate() {
            if i > 0 {
                ids.push(IMAGE_TOKEN_INDEX);
            }
            if !chunk.is_empty() {
                let enc = tokenizer
                    .encode(*chunk, false)
                    .map_err(|e| PipelineError::Invalid(format!("tokenizer failed: {e}")))?;
                ids.extend(enc.get_ids().iter().map(|&i| i as i64));
            }
        }
        // The run of `frames` placeholders takes one block (`prepare_inputs_labels_for_multimodal`
        // replaces the group as a whole): one placeholder here.
        if frames > 1 {
            let first = ids
                .iter()
                .position(|&i| i == IMAGE_TOKEN_INDEX)
                .unwrap_or(0);
            ids.drain(first + 1..first + frames);
        }
        Ok((prompt, ids))
    }
    fn media_blocks(&self, media: &EncodedMedia) -> Result<Vec<Tensor>> {
        Ok(media
            .visual
            .as_ref()
            .map(|v| v.connector_out.clone())
            .into_iter()
            .collect())
    }
    fn context_start(&self, _: usize, _: usize, _: &EncodedMedia) -> usize {
        0
    }
    fn stop_sequences(&self, media: &EncodedMedia) -> Vec<Vec<u32>> {
        match self.conv_mode(media.modality) {
            // `</s>`: the eos id, which generation_config already stops on.
            ConvMode::V1 => Vec::new(),
            ConvMode::Simple | ConvMode::SimpleQa => self.hash_stops.clone(),
        }
    }
    fn repetition_penalty(&self, _: &EncodedMedia) -> Option<f32> {
        None
    }
    fn answer_text(
        &self,
        tokenizer: &tokenizers::Tokenizer,
        ids: &[u32],
        media: &EncodedMedia,
    ) -> Result<String> {
        let stop = self.conv_mode(media.modality).stop();
        let ids = self.cut_at_text_stop(tokenizer, ids, stop)?;
        let text = self.decode(tokenizer, ids)?;
        let text = text.trim();
        Ok(text.strip_suffix(stop).unwrap_or(text).trim().to_string())
    }
    fn dump_input_ids(&self, ids: &[i64], _: &[Tensor]) -> Result<Vec<i64>> {
        Ok(ids.to_vec())
    }
    fn dump_input_ids_for(
        &self,
        ids: &[i64],
        _: &[Tensor],
        media: &EncodedMedia,
    ) -> Result<Vec<i64>> {
        // As the fixture stores them: −200 once per frame.
        let frames = frames_of(media);
        let mut out = Vec::with_capacity(ids.len() + frames);
        for &id in ids {
            if id == IMAGE_TOKEN_INDEX {
                out.extend(std::iter::repeat_n(IMAGE_TOKEN_INDEX, frames.max(1)));
            } else {
                out.push(id);
            }
        }
        Ok(out)
    }
}

fn candle_ctx(path: &Path, what: &str, e: candle_core::Error) -> PipelineError {
    let text = e.to_string();
    PipelineError::file(
        path,
        format!("{what}: {}", text.lines().next().unwrap_or("")),
    )
}

/// What [`crate::Pipeline::load`] needs from a Chat-UniVi folder.
pub struct Loaded {
    pub parts: ChatUniViParts,
    pub model: crate::model::VideoLlama2,
    pub tokenizer: tokenizers::Tokenizer,
    pub generation_config: videollama_llm::GenerationConfig,
}

/// Load Chat-UniVi from the folder of its `config.json`.
pub fn load(dir: &Path, opts: &crate::LoadOptions) -> Result<Loaded> {
    let options = ChatUniViOptions::parse(&opts.video_llama.config_options)?;
    let config_path = dir.join("config.json");
    let config = ChatUniViConfig::from_file(&config_path)?;
    let raw = crate::error::read_json(&config_path)?;
    let llm_cfg: videollama_llm::DecoderConfig = serde_json::from_value(raw.clone())
        .map_err(|e| PipelineError::file(&config_path, format!("language model config: {e}")))?;
    if config.mm_use_im_start_end {
        return Err(PipelineError::file(
            &config_path,
            "mm_use_im_start_end: true is not supported (the released Chat-UniVi models use false)",
        ));
    }
    let tower_name = config.mm_vision_tower.clone().ok_or_else(|| {
        PipelineError::file(
            &config_path,
            "no mm_vision_tower (the CLIP tower's Hub id or folder)",
        )
    })?;
    let parent = dir.parent().map(Path::to_path_buf);
    let mut search: Vec<&Path> = vec![dir];
    if let Some(p) = &parent {
        search.push(p);
    }
    let tower_folder = clip_tower::locate(&tower_name, &search)?;
    let tower_cfg = tower_folder.config.clone();
    if let Some(m) = config.mm_hidden_size {
        if m != tower_cfg.hidden_size() {
            return Err(PipelineError::file(
                &config_path,
                format!(
                    "mm_hidden_size {m} but the tower {} is {} wide",
                    tower_folder.dir.display(),
                    tower_cfg.hidden_size()
                ),
            ));
        }
    }
    let (mut tokenizer, slow_text) = crate::video_llama::load_llm_tokenizer(dir)?;
    if config.mm_use_im_patch_token && tokenizer.token_to_id("<im_patch>").is_none() {
        let have = tokenizer.get_vocab_size(true);
        if have >= llm_cfg.vocab_size {
            return Err(PipelineError::file(
                &config_path,
                "mm_use_im_patch_token is true (or absent): the reference would add <im_patch> \
                 and append randomly initialised embedding and lm_head rows for it; set it to \
                 false (the token never occurs in prompts), as the released models do",
            ));
        }
        tokenizer
            .add_special_tokens([tokenizers::AddedToken::from("<im_patch>", true)])
            .map_err(|e| PipelineError::file(dir, format!("adding <im_patch>: {e}")))?;
    }
    let bos = tokenizer
        .token_to_id("<s>")
        .ok_or_else(|| PipelineError::file(dir, "the tokenizer has no <s> (BOS) token"))?;
    let gen_path = dir.join("generation_config.json");
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
    let sources = [
        tower_folder.weights.clone(),
        WeightSource {
            label: "checkpoint".into(),
            path: dir.to_path_buf(),
            prefix: String::new(),
        },
    ];
    let ckpt = Checkpoint::open_sources(dir, &sources, opts.dtype, &opts.device)?;
    let vb = ckpt.var_builder();
    let llm = with_load_scope(opts.weights.llm_scope(), || {
        videollama_llm::DecoderLm::new(&llm_cfg, vb.clone())
    })
    .map_err(|e| candle_ctx(dir, "language model", e))?;
    let tower = with_load_scope(opts.weights.vision_scope(), || {
        VisionTower::new(
            &tower_cfg,
            config.mm_vision_select_layer,
            "patch",
            vb.pp("vision_tower.vision_model"),
        )
    })
    .map_err(|e| candle_ctx(&tower_folder.dir, "vision tower", e))?;
    let projector = linear(
        tower_cfg.hidden_size(),
        llm_cfg.hidden_size,
        vb.pp("model.mm_projector"),
    )
    .map_err(|e| candle_ctx(dir, "mm_projector", e))?;
    let unused = ckpt.finish()?;
    let stages = match &config.config {
        Some(c) if c.use_cluster => {
            let rates = c.rates(&config_path)?;
            let ctm: [Ctm; 4] = std::array::from_fn(|i| Ctm::new(rates[i], config::CTM_BASE_K[i]));
            let stages = ClusterStages { ctm };
            // The stages must fit the tower's patch grid (the reference's topk would fail).
            let n = tower_cfg.num_patches();
            let k0 = ctm[0].cluster_num(n);
            let k1 = ctm[1].cluster_num(k0);
            let k2 = ctm[2].cluster_num(k1);
            if k0 > n || k1 > k0 || k2 > k1 {
                return Err(PipelineError::file(
                    &config_path,
                    format!(
                        "cluster counts {k0} / {k1} / {k2} do not shrink from the tower's {n} \
                         patches (spatial_cluster_rate0/1/2)"
                    ),
                ));
            }
            Some(stages)
        }
        _ => None,
    };
    let noise = crate::reference_noise::load_option(opts.reference_noise.as_deref())?;
    let jitter = match (&noise, &stages) {
        (Some(n), Some(_)) => Some(Arc::new(RecordedJitter::from_noise(n)?)),
        (Some(n), None) => {
            crate::reference_noise::warn_unused(Some(&n.path), "Chat-UniVi without clustering");
            None
        }
        _ => None,
    };
    let hash_stops = text_stop_sequences(&tokenizer, "###");
    tracing::debug!(unused = unused.len(), "Chat-UniVi weights loaded");
    let model = crate::model::VideoLlama2::language_model_only(
        crate::model::LanguageModelOnly {
            model_type: "chat_univi",
            llm_cfg,
            family: crate::config::LlmFamily::Llama,
            vision_tower: Some(&tower_name),
            num_frames: options.max_frames,
            raw,
            unused_tensors: unused,
        },
        llm,
        opts,
    )?;
    let processor = tower_folder.processor.clone();
    Ok(Loaded {
        parts: ChatUniViParts {
            dir: dir.to_path_buf(),
            config,
            options,
            tower,
            tower_folder,
            processor,
            projector,
            stages,
            jitter,
            bos,
            hash_stops,
            slow_text,
        },
        model,
        tokenizer,
        generation_config,
    })
}
