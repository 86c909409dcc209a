//! Video-ChatGPT (mbzuai-oryx, 2023) on the shared engine.
//!
//! ```text
//! DIR/<base>/ (LLaVA-Lightning) + DIR/video_chatgpt-7B.bin (see config.rs)
//!   tokenizer (fast, as AutoTokenizer) + <vid_patch>, <vid_start>, <vid_end> (special, appended)
//!   weights: tower folder (vision_tower.*) ◄ base folder ◄ projection file (later wins):
//!            the projection's mm_projector and its whole resized embed_tokens replace the base's
//!   lm_head: the base's rows + one row per added token that no file holds (`AddedRows`)
//! video ─media.rs─► pixel_values [T,3,S,S] ─CLIP hidden_states[-2], no CLS─► [T,N,C]
//!       ─spatio-temporal pooling (connectors::st_pooling)─► [max(T,100)+N, C]
//!       ─mm_projector Linear(C→d)─► [L, d]   (L = 356 for ViT-L/14-224)
//! prompt "{system} USER: {q}\n<vid_start>" + "<vid_patch>"×L + "<vid_end> ASSISTANT:"
//!       ─fast tokenizer, BOS─► the L <vid_patch> ids are replaced in place by the L rows
//!       ─► LLaMA ─► decode(skip_special_tokens) ─► strip, drop a trailing "</s>", strip
//! ```
//!
//! # The three `lm_head` rows no file holds
//!
//! The reference resizes the model for the three new tokens on every load
//! (`resize_token_embeddings`), which appends randomly drawn rows to `lm_head`; the projection
//! file restores only the input embeddings, so a real deployment answers with random logits
//! for those ids. Here the rows are, by default, **the mean of the base `lm_head` rows**: the
//! value Video-ChatGPT's own training code gives the new output rows
//! (`initialize_vision_tokenizer` sets them to the average and freezes `lm_head`), and a value
//! that can never win a greedy step (each added logit equals the mean of the base logits,
//! below their maximum). With `--reference-noise FILE` the rows a reference run drew are
//! taken from `lm_head_added_rows` instead, to match that run bit for bit. A generated added
//! id is never silent: the answer logs a warning (its text is dropped by
//! `skip_special_tokens`, but it changes what follows).
//!
//! Deviation: the reference cleans the answer with `rstrip("</s>")`, which strips any trailing
//! run of the *characters* `<`, `/`, `s`, `>` ("yes" → "ye"); here only a trailing `</s>` is
//! removed.

pub mod config;
pub mod inspect;
pub mod media;

pub use config::{detect, ConvMode, Layout, VideoChatGptConfig, VideoChatGptOptions};

use crate::checkpoint::{Checkpoint, WeightSource};
use crate::clip_tower::{self, ClipTowerFolder};
use crate::error::{PipelineError, Result};
use crate::family::{Family, StageTensors};
use crate::model::EncodedVisual;
use crate::prompt::Modality;
use crate::EncodedMedia;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use videollama_connectors::st_pooling::{self, TEMPORAL_ROWS};
use videollama_encoders::VisionTower;
use videollama_media::image_processor::ImageProcessorConfig;
use videollama_nn::{linear, with_load_scope, Linear};

/// The tokens the reference adds, in its order (`<vid_patch>` first, then start / end).
pub const VIDEO_PATCH_TOKEN: &str = "<vid_patch>";
pub const VIDEO_START_TOKEN: &str = "<vid_start>";
pub const VIDEO_END_TOKEN: &str = "<vid_end>";
/// The name of the recorded rows in a `--reference-noise` file.
pub const ADDED_ROWS_TENSOR: &str = "lm_head_added_rows";

/// Where the `lm_head` rows of the added tokens came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AddedRows {
    /// The mean of the base rows (the default).
    MeanOfBaseRows,
    /// `lm_head_added_rows` of a `--reference-noise` file.
    ReferenceNoise(PathBuf),
}

/// Everything Video-ChatGPT adds around the language model.
pub struct VideoChatGptParts {
    pub layout: Layout,
    pub config: VideoChatGptConfig,
    pub options: VideoChatGptOptions,
    pub tower: VisionTower,
    pub tower_folder: ClipTowerFolder,
    pub processor: ImageProcessorConfig,
    pub projector: Linear,
    pub bos: u32,
    pub vid_patch: u32,
    pub vid_start: u32,
    pub vid_end: u32,
    /// Rows of the base `lm_head`; ids from here on are the added tokens.
    pub base_vocab: usize,
    /// The appended `lm_head` rows `[n, d]` (f32) and their origin.
    pub added_rows: Tensor,
    pub added_rows_source: AddedRows,
}

/// What `--json` and inspect show.
#[derive(Debug, Clone, Serialize)]
pub struct VideoChatGptSummary {
    pub base: PathBuf,
    pub projection: PathBuf,
    pub vision_tower: String,
    pub video_tokens: usize,
    pub num_frames: usize,
    pub conv_mode: String,
    pub added_token_ids: Vec<u32>,
    pub lm_head_added_rows: AddedRows,
}

impl VideoChatGptParts {
    pub fn image_size(&self) -> usize {
        self.tower.config().image_size()
    }

    /// Tokens a video of `frames` frames becomes.
    pub fn video_tokens(&self, frames: usize) -> usize {
        st_pooling::num_tokens(frames, self.tower.config().num_patches(), TEMPORAL_ROWS)
    }

    pub fn summary(&self) -> VideoChatGptSummary {
        VideoChatGptSummary {
            base: self.layout.base.clone(),
            projection: self.layout.projection.clone(),
            vision_tower: self.tower_folder.dir.display().to_string(),
            video_tokens: self.video_tokens(self.options.num_frames),
            num_frames: self.options.num_frames,
            conv_mode: self.options.conv_mode.name().to_string(),
            added_token_ids: vec![self.vid_patch, self.vid_start, self.vid_end],
            lm_head_added_rows: self.added_rows_source.clone(),
        }
    }

    /// `[T,3,S,S]` → tower → pooling → projector, with the stage tensors.
    pub fn encode_video(
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
        if t == 0 || c != 3 || h != size || w != size {
            return Err(PipelineError::Invalid(format!(
                "pixel_values have shape {:?}; this CLIP tower expects T×3×{size}×{size}",
                pixels.dims()
            )));
        }
        let start = Instant::now();
        let features = self
            .tower
            .forward(&pixels.to_device(dev)?.to_dtype(dtype)?)?;
        let tower_seconds = start.elapsed().as_secs_f64();
        let start = Instant::now();
        let pooled = st_pooling::spatio_temporal_pool(&features, TEMPORAL_ROWS)?;
        let visual = self
            .projector
            .forward(&pooled.video_tokens.to_dtype(dtype)?)?;
        let encoded = EncodedVisual {
            pixel_values: pixels.clone(),
            vision_features: features.clone(),
            connector_out: visual.clone(),
            tower_seconds,
            connector_seconds: start.elapsed().as_secs_f64(),
        };
        let named = vec![
            ("pixel_values".to_string(), pixels.clone()),
            ("vision_features".to_string(), features),
            ("temporal_tokens".to_string(), pooled.temporal),
            ("spatial_tokens".to_string(), pooled.spatial),
            ("video_tokens".to_string(), pooled.video_tokens),
            ("visual_tokens".to_string(), visual),
            (ADDED_ROWS_TENSOR.to_string(), self.added_rows.clone()),
        ];
        Ok((encoded, named))
    }
}

/// `conv.get_prompt()` of the TWO style (sep " ", sep2 `</s>`): `system + " "`, then per turn
/// `ROLE: message` + sep / sep2, then `ASSISTANT:`.
pub fn render(mode: ConvMode, first_user: &str, turns: &[String]) -> String {
    let mut out = format!("{} ", mode.system());
    for (i, turn) in turns.iter().enumerate() {
        let text = if i == 0 { first_user } else { turn.as_str() };
        let role = if i % 2 == 0 { "USER" } else { "ASSISTANT" };
        if text.is_empty() {
            out.push_str(role);
            out.push(':');
        } else {
            out.push_str(role);
            out.push_str(": ");
            out.push_str(text);
            out.push_str(if i % 2 == 0 { " " } else { "</s>" });
        }
    }
    out.push_str("ASSISTANT:");
    out
}

/// `outputs.strip()`, then a trailing `</s>` removed (see the module docs), then `strip()`.
pub fn clean_answer(decoded: &str) -> String {
    let s = decoded.trim();
    s.strip_suffix("</s>").unwrap_or(s).trim().to_string()
}

impl Family for VideoChatGptParts {
    fn name(&self) -> &'static str {
        "video-chatgpt"
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
        if is_image {
            return Err(PipelineError::Invalid(
                "Video-ChatGPT answers about videos only (its reference has no image path)".into(),
            ));
        }
        self.encode_video(pixels, dtype, device)
    }
    fn prompt_ids(
        &self,
        tokenizer: &tokenizers::Tokenizer,
        turns: &[String],
        media: &EncodedMedia,
    ) -> Result<(String, Vec<i64>)> {
        let question = turns.first().map(String::as_str).unwrap_or("");
        let rows = match (&media.visual, media.modality) {
            (Some(v), Modality::Video) => Some(v.connector_out.dim(0)?),
            (None, Modality::Text | Modality::Video) => None,
            _ => {
                return Err(PipelineError::Invalid(
                    "Video-ChatGPT answers about videos (or text) only".into(),
                ))
            }
        };
        let first_user = match rows {
            Some(n) => format!(
                "{question}\n{VIDEO_START_TOKEN}{}{VIDEO_END_TOKEN}",
                VIDEO_PATCH_TOKEN.repeat(n)
            ),
            None => question.to_string(),
        };
        let prompt = render(self.options.conv_mode, &first_user, turns);
        let enc = tokenizer
            .encode(prompt.as_str(), false)
            .map_err(|e| PipelineError::Invalid(format!("tokenizer failed: {e}")))?;
        let mut ids: Vec<i64> = vec![self.bos as i64];
        ids.extend(enc.get_ids().iter().map(|&i| i as i64));
        let patch = self.vid_patch as i64;
        let count = ids.iter().filter(|&&i| i == patch).count();
        let Some(n) = rows else {
            if count > 0 {
                return Err(PipelineError::Invalid(format!(
                    "the question holds {VIDEO_PATCH_TOKEN} but there is no video"
                )));
            }
            return Ok((prompt, ids));
        };
        // The n `<vid_patch>` ids, right after `<vid_start>` and before `<vid_end>`, become one
        // placeholder for the block (the reference overwrites them in place).
        let first = ids.iter().position(|&i| i == patch);
        let ok = count == n
            && first.is_some_and(|f| {
                f > 0
                    && ids[f - 1] == self.vid_start as i64
                    && ids.get(f + n) == Some(&(self.vid_end as i64))
                    && ids[f..f + n].iter().all(|&i| i == patch)
            });
        let Some(first) = first.filter(|_| ok) else {
            return Err(PipelineError::Invalid(format!(
                "the prompt has {count} {VIDEO_PATCH_TOKEN} tokens for a video of {n} tokens \
                 (is one of {VIDEO_PATCH_TOKEN}, {VIDEO_START_TOKEN}, {VIDEO_END_TOKEN} in the \
                 question?)"
            )));
        };
        let placeholder = Modality::Video.placeholder_id().unwrap_or(-201);
        ids.splice(first..first + n, [placeholder]);
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
    fn stop_sequences(&self, _: &EncodedMedia) -> Vec<Vec<u32>> {
        // `KeywordsStoppingCriteria(["</s>"])` never fires: the fast tokenizer gives "</s>" two
        // ids (BOS + eos), so only single-id keywords would count, and the decoded text skips
        // special tokens. Generation ends on eos (generation_config) or the token limit.
        Vec::new()
    }
    fn repetition_penalty(&self, _: &EncodedMedia) -> Option<f32> {
        None
    }
    fn answer_text(
        &self,
        tokenizer: &tokenizers::Tokenizer,
        ids: &[u32],
        _: &EncodedMedia,
    ) -> Result<String> {
        let added: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|&i| i as usize >= self.base_vocab)
            .collect();
        if !added.is_empty() {
            tracing::warn!(
                ids = ?added,
                "the answer contains video tokens whose lm_head rows no checkpoint file holds \
                 ({:?}); their text is dropped, but they changed the tokens after them",
                self.added_rows_source
            );
        }
        let decoded = tokenizer
            .decode(ids, true)
            .map_err(|e| PipelineError::Invalid(format!("decoding the answer: {e}")))?;
        Ok(clean_answer(&decoded))
    }
    fn dump_input_ids(&self, ids: &[i64], blocks: &[Tensor]) -> Result<Vec<i64>> {
        // The fixture stores the ids given to generate: `<vid_patch>` once per video token.
        crate::family::expand_placeholders(ids, blocks, self.vid_patch as i64)
    }
}

/// `lm_head.weight` = the stored base rows + the added rows (`AddedRows`); every other
/// tensor is read through unchanged.
struct ExtendedLmHead {
    inner: VarBuilder<'static>,
    base_rows: usize,
    /// The recorded rows, or `None` for the mean of the base rows.
    recorded: Option<Tensor>,
    /// The rows appended, f32 (set when `lm_head.weight` is read).
    used: Arc<Mutex<Option<Tensor>>>,
}

const LM_HEAD: &str = "lm_head.weight";

impl ExtendedLmHead {
    fn extended(&self, dims: &[usize], dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let (rows, width) = (dims[0], dims[1]);
        let base = self.inner.get_with_hints_dtype(
            (self.base_rows, width),
            LM_HEAD,
            Default::default(),
            dtype,
        )?;
        let n = rows - self.base_rows;
        let added = match &self.recorded {
            Some(t) => {
                if t.dims() != [n, width] {
                    candle_core::bail!(
                        "{ADDED_ROWS_TENSOR} is {:?} but this model appends [{n}, {width}] to lm_head",
                        t.dims()
                    );
                }
                t.clone()
            }
            None => base
                .to_dtype(DType::F32)?
                .mean_keepdim(0)?
                .broadcast_as((n, width))?
                .contiguous()?,
        };
        if let Ok(mut used) = self.used.lock() {
            *used = Some(added.clone());
        }
        Tensor::cat(&[&base, &added.to_dtype(dtype)?.to_device(dev)?], 0)
    }
}

impl SimpleBackend for ExtendedLmHead {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if name == LM_HEAD && s.rank() == 2 && s.dims()[0] > self.base_rows {
            return self.extended(s.dims(), dtype, dev);
        }
        self.inner.get_with_hints_dtype(s, name, h, dtype)
    }
    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.inner.get_unchecked_dtype(name, dtype)?.to_device(dev)
    }
    fn contains_tensor(&self, name: &str) -> bool {
        self.inner.contains_tensor(name)
    }
}

/// The fast tokenizer of the base folder (`tokenizer.json`, or `tokenizer.model` converted the
/// way transformers' `LlamaTokenizerFast` converts it), with the three video tokens appended as
/// special tokens, as `initialize_model` adds them.
pub fn load_tokenizer(base: &Path) -> Result<tokenizers::Tokenizer> {
    let json = base.join("tokenizer.json");
    let mut tokenizer = if json.is_file() {
        tokenizers::Tokenizer::from_file(&json).map_err(|e| PipelineError::file(&json, e))?
    } else {
        fast_llama_tokenizer(base)?
    };
    for token in [VIDEO_PATCH_TOKEN, VIDEO_START_TOKEN, VIDEO_END_TOKEN] {
        if tokenizer.token_to_id(token).is_none() {
            tokenizer
                .add_special_tokens([tokenizers::AddedToken::from(token, true)])
                .map_err(|e| PipelineError::file(base, format!("adding {token}: {e}")))?;
        }
    }
    Ok(tokenizer)
}

/// `LlamaTokenizerFast.from_pretrained(base)` on a folder with only `tokenizer.model`, as
/// transformers 4.29's `LlamaConverter` builds it (the reference's `AutoTokenizer`):
///
/// * BPE over every piece (id = piece index), `byte_fallback`, `fuse_unk`;
/// * merges from `SentencePieceExtractor.extract(vocab_scores)`: every split of a piece into two
///   pieces, ordered by the merged piece's score (highest first; equal scores by left, then
///   right piece id). Its `if piece_score:` test drops pieces whose score is exactly 0 (the
///   fixture's `▁▁`), so they are never merged into — reproduced;
/// * normalizer `Prepend("▁")` + `Replace(" ", "▁")` on each piece of text between added
///   tokens (so the text after an added token gets its own `▁`); decoder `▁` → space,
///   byte fallback, fuse, strip one leading space;
/// * `<unk>`, `<s>`, `</s>` as special added tokens, then `added_tokens.json` (LLaVA's
///   `<im_patch>`, …) in id order. No BOS is added here (the prompt code adds it).
pub fn fast_llama_tokenizer(base: &Path) -> Result<tokenizers::Tokenizer> {
    use tokenizers::decoders::byte_fallback::ByteFallback;
    use tokenizers::decoders::fuse::Fuse;
    use tokenizers::decoders::sequence::Sequence as DecoderSequence;
    use tokenizers::decoders::strip::Strip;
    use tokenizers::normalizers::{Prepend, Replace, Sequence};
    let model_path = base.join("tokenizer.model");
    if !model_path.is_file() {
        return Err(PipelineError::file(
            base,
            "no tokenizer.json or tokenizer.model in the base folder",
        ));
    }
    let err = |cause: String| PipelineError::file(&model_path, cause);
    let sp = crate::sentencepiece::SentencePieceModel::load(&model_path)?;
    let pieces = sp.pieces();
    let ids: std::collections::HashMap<&str, usize> = pieces
        .iter()
        .enumerate()
        .map(|(i, p)| (p.piece.as_str(), i))
        .collect();
    // LlamaConverter.vocab: the first three scores are replaced by 0.
    let score = |i: usize| if i < 3 { 0.0 } else { pieces[i].score };
    let mut merges: Vec<(usize, usize, f32)> = Vec::new();
    for (i, p) in pieces.iter().enumerate() {
        let s = score(i);
        if s == 0.0 || s.is_nan() {
            continue;
        }
        for (cut, _) in p.piece.char_indices().skip(1) {
            if let (Some(&l), Some(&r)) = (ids.get(&p.piece[..cut]), ids.get(&p.piece[cut..])) {
                merges.push((l, r, s));
            }
        }
    }
    merges.sort_by(|a, b| {
        b.2.partial_cmp(&a.2)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.0.cmp(&b.0))
            .then(a.1.cmp(&b.1))
    });
    let vocab: serde_json::Map<String, serde_json::Value> = pieces
        .iter()
        .enumerate()
        .map(|(i, p)| (p.piece.clone(), serde_json::Value::from(i as u32)))
        .collect();
    let unk = sp.special_ids().unk as usize;
    let model = serde_json::json!({
        "type": "BPE",
        "dropout": null,
        "unk_token": pieces[unk].piece,
        "continuing_subword_prefix": null,
        "end_of_word_suffix": null,
        "fuse_unk": true,
        "byte_fallback": true,
        "ignore_merges": false,
        "vocab": vocab,
        "merges": merges
            .iter()
            .map(|&(l, r, _)| (pieces[l].piece.clone(), pieces[r].piece.clone()))
            .collect::<Vec<_>>(),
    });
    let bpe: tokenizers::models::bpe::BPE = serde_json::from_str(&model.to_string())
        .map_err(|e| err(format!("building the BPE: {e}")))?;
    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    let replace = Replace::new(" ", "\u{2581}").map_err(|e| err(format!("normalizer: {e}")))?;
    tokenizer
        .with_normalizer(Some(Sequence::new(vec![
            Prepend::new("\u{2581}".into()).into(),
            replace.into(),
        ])))
        .map_err(|e| err(format!("normalizer: {e}")))?;
    let to_space = Replace::new("\u{2581}", " ").map_err(|e| err(format!("decoder: {e}")))?;
    tokenizer.with_decoder(Some(DecoderSequence::new(vec![
        to_space.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
        Strip::new(' ', 1, 0).into(),
    ])));
    let special: Vec<tokenizers::AddedToken> = sp
        .special_tokens_in_folder(base)?
        .into_iter()
        .map(|t| tokenizers::AddedToken::from(t.content, true).normalized(true))
        .collect();
    tokenizer
        .add_special_tokens(special)
        .map_err(|e| err(format!("special tokens: {e}")))?;
    let added_path = base.join("added_tokens.json");
    if added_path.is_file() {
        let json = crate::error::read_json(&added_path)?;
        let mut added: Vec<(u64, String)> = json
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_u64().map(|id| (id, k.clone())))
                    .collect()
            })
            .unwrap_or_default();
        added.sort();
        for (id, token) in added {
            tokenizer
                .add_tokens([tokenizers::AddedToken::from(token.clone(), false)])
                .map_err(|e| PipelineError::file(&added_path, e))?;
            if tokenizer.token_to_id(&token) != Some(id as u32) {
                return Err(PipelineError::file(
                    &added_path,
                    format!("{token} should be id {id} but the vocabulary puts it elsewhere"),
                ));
            }
        }
    }
    Ok(tokenizer)
}

fn candle_ctx(path: &Path, what: &str, e: candle_core::Error) -> PipelineError {
    let text = e.to_string();
    PipelineError::file(
        path,
        format!("{what}: {}", text.lines().next().unwrap_or("")),
    )
}

/// What [`crate::Pipeline::load`] needs from a Video-ChatGPT folder.
pub struct Loaded {
    pub parts: VideoChatGptParts,
    pub model: crate::model::VideoLlama2,
    pub tokenizer: tokenizers::Tokenizer,
    pub generation_config: videollama_llm::GenerationConfig,
}

/// Load Video-ChatGPT from `layout` (see `config.rs`).
pub fn load(layout: &Layout, opts: &crate::LoadOptions) -> Result<Loaded> {
    let options = VideoChatGptOptions::parse(&opts.video_llama.config_options)?;
    let config_path = layout.base.join("config.json");
    let config = VideoChatGptConfig::from_file(&config_path)?;
    let raw = crate::error::read_json(&config_path)?;
    let mut llm_cfg: videollama_llm::DecoderConfig = serde_json::from_value(raw.clone())
        .map_err(|e| PipelineError::file(&config_path, format!("language model config: {e}")))?;
    let tower_name = config.mm_vision_tower.clone().ok_or_else(|| {
        PipelineError::file(
            &config_path,
            "no mm_vision_tower: the LLaVA-Lightning base names its CLIP tower there",
        )
    })?;
    let parent = layout.dir.parent().map(Path::to_path_buf);
    let mut search: Vec<&Path> = vec![&layout.dir];
    if let Some(p) = &parent {
        search.push(p);
    }
    search.push(&layout.base);
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
    let tokenizer = load_tokenizer(&layout.base)?;
    let id = |token: &str| {
        tokenizer.token_to_id(token).ok_or_else(|| {
            PipelineError::file(&layout.base, format!("the tokenizer has no {token}"))
        })
    };
    let (bos, vid_patch, vid_start, vid_end) = (
        id("<s>")?,
        id(VIDEO_PATCH_TOKEN)?,
        id(VIDEO_START_TOKEN)?,
        id(VIDEO_END_TOKEN)?,
    );
    let vocab = tokenizer.get_vocab_size(true);
    let gen_path = layout.base.join("generation_config.json");
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
            label: "LLaVA-Lightning base".into(),
            path: layout.base.clone(),
            prefix: String::new(),
        },
        WeightSource {
            label: "projection file".into(),
            path: layout.projection.clone(),
            prefix: String::new(),
        },
    ];
    let ckpt = Checkpoint::open_sources(&layout.dir, &sources, opts.dtype, &opts.device)?;
    let shape = |name: &str| ckpt.stored_shape(name).map(<[usize]>::to_vec);
    let embed = shape("model.embed_tokens.weight").unwrap_or_default();
    if embed.len() != 2 || embed[0] != vocab || embed[1] != llm_cfg.hidden_size {
        return Err(PipelineError::file(
            &layout.projection,
            format!(
                "model.embed_tokens.weight is {embed:?}, but the tokenizer with the three video \
                 tokens has {vocab} ids of width {} (the projection file must hold the resized \
                 embedding table, as video_chatgpt-7B.bin does)",
                llm_cfg.hidden_size
            ),
        ));
    }
    if shape("model.mm_projector.weight").is_none() {
        return Err(PipelineError::file(
            &layout.projection,
            "no model.mm_projector.weight (is this the Video-ChatGPT projection file?)",
        ));
    }
    let lm_head = shape(LM_HEAD).unwrap_or_default();
    if lm_head.len() != 2 || lm_head[1] != llm_cfg.hidden_size || lm_head[0] > vocab {
        return Err(PipelineError::file(
            &layout.base,
            format!(
                "lm_head.weight is {lm_head:?}; expected at most {vocab} rows of width {}",
                llm_cfg.hidden_size
            ),
        ));
    }
    let base_vocab = lm_head[0];
    let noise = crate::reference_noise::load_option(opts.reference_noise.as_deref())?;
    let (recorded, added_rows_source) = match &noise {
        Some(n) if base_vocab < vocab => (
            Some(n.get(
                ADDED_ROWS_TENSOR,
                "the lm_head rows a reference run drew for the video tokens",
            )?),
            AddedRows::ReferenceNoise(n.path.clone()),
        ),
        Some(n) => {
            crate::reference_noise::warn_unused(
                Some(&n.path),
                "this Video-ChatGPT base (its lm_head has every row)",
            );
            (None, AddedRows::MeanOfBaseRows)
        }
        None => (None, AddedRows::MeanOfBaseRows),
    };
    llm_cfg.vocab_size = vocab;
    let used = Arc::new(Mutex::new(None));
    let backend = ExtendedLmHead {
        inner: ckpt.var_builder(),
        base_rows: base_vocab,
        recorded,
        used: used.clone(),
    };
    let vb = VarBuilder::from_backend(Box::new(backend), opts.dtype, opts.device.clone());
    let llm = with_load_scope(opts.weights.llm_scope(), || {
        videollama_llm::DecoderLm::new(&llm_cfg, vb.clone())
    })
    .map_err(|e| candle_ctx(&layout.dir, "language model", e))?;
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
    .map_err(|e| candle_ctx(&layout.projection, "mm_projector", e))?;
    let unused = ckpt.finish()?;
    let added_rows = match used.lock().ok().and_then(|u| u.clone()) {
        Some(rows) => rows,
        None => Tensor::zeros((0, llm_cfg.hidden_size), DType::F32, &Device::Cpu)?,
    };
    tracing::debug!(
        unused = unused.len(),
        added = added_rows.dim(0)?,
        "Video-ChatGPT weights loaded"
    );
    let model = crate::model::VideoLlama2::language_model_only(
        crate::model::LanguageModelOnly {
            model_type: "video_chatgpt",
            llm_cfg,
            family: crate::config::LlmFamily::Llama,
            vision_tower: Some(&tower_name),
            num_frames: options.num_frames,
            raw,
            unused_tensors: unused,
        },
        llm,
        opts,
    )?;
    let processor = tower_folder.processor.clone();
    Ok(Loaded {
        parts: VideoChatGptParts {
            layout: layout.clone(),
            config,
            options,
            tower,
            tower_folder,
            processor,
            projector,
            bos,
            vid_patch,
            vid_start,
            vid_end,
            base_vocab,
            added_rows,
            added_rows_source,
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
    fn prompt_renders_like_the_two_style() {
        let p = render(
            ConvMode::VideoChatGptV1,
            "Q?\n<vid_start><vid_end>",
            &["Q?".into(), "A1".into(), "Q2".into()],
        );
        assert!(p.starts_with("You are Video-ChatGPT"));
        assert!(p.ends_with(
            "video. USER: Q?\n<vid_start><vid_end> ASSISTANT: A1</s>USER: Q2 ASSISTANT:"
        ));
        assert_eq!(clean_answer("  a cat </s> "), "a cat");
        assert_eq!(clean_answer(" yes "), "yes");
    }
}
