//! Samples → training sequences, tokenized exactly as inference prompts, with the frozen
//! encoders' features computed once.
//!
//! ```text
//! sample ─► turns (tags <video>/<image>/<audio> removed; the prompt puts the placeholder
//!           │       in front of the first user turn, as `Pipeline::build_prompt` does)
//!           ├─ for each answer k: prompt_k = build_prompt(turns[..=user k])   (chat template,
//!           │       generation prompt, chunk-wise ids with the −20x placeholder)
//!           │   sequence = prompt_k ++ tokenize(answer_k) ++ [eos]            loss on the
//!           │   (an earlier answer found verbatim inside a later sequence     answer + eos ids
//!           │    shares that sequence's forward)
//!           └─ media ─► Pipeline::prepare_media ─► vision tower [T, n, Cin] / BEATs [N, Ca]
//!                        (frozen: computed once, kept in memory or in a cache file)
//! ```
//! Any problem with one sample (a missing or unreadable file, a malformed conversation, a
//! sequence longer than the context) skips that sample with a [`SkippedSample`].

use crate::data::{read_samples, Role, Sample, SkippedSample};
use crate::error::{Result, TrainError};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use videollama_pipeline::media::MediaRequest;
use videollama_pipeline::{Modality, Pipeline, Visual};

/// Where the frozen encoders' outputs are kept between epochs (and runs).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum FeatureCache {
    /// In memory only.
    Memory,
    /// One safetensors file per sample in this folder, reused by later runs (and by
    /// `resume`) when the media files and the model are unchanged.
    Dir(PathBuf),
}

/// How samples become sequences.
#[derive(Debug, Clone)]
pub struct PrepareOptions {
    /// Use only the first N samples of the file.
    pub max_samples: Option<usize>,
    /// Longest spliced sequence (text + media positions); default: the config's
    /// `tokenizer_model_max_length`, else `max_position_embeddings`.
    pub max_seq_len: Option<usize>,
    pub feature_cache: FeatureCache,
    /// Pad pictures to a square first (the reference's training `image_aspect_ratio=pad`;
    /// off by default, because inference does not pad).
    pub pad_to_square: bool,
}

/// One forward pass: ids (with the placeholder) and the supervised positions.
#[derive(Debug, Clone, PartialEq)]
pub struct Sequence {
    /// Prompt and answer ids, the media placeholder (−200/−201/−202) where the block goes.
    pub ids: Vec<i64>,
    /// `(index into ids, target id)`: the answer tokens and their eos.
    pub targets: Vec<(usize, u32)>,
}

/// Frozen-encoder outputs of one sample.
#[derive(Debug, Clone)]
pub struct MediaFeatures {
    /// Vision-tower features `[T, n, Cin]` (an image repeated to `num_frames`).
    pub vision: Option<Tensor>,
    /// Audio-encoder features `[N, Ca]`.
    pub audio: Option<Tensor>,
}

#[derive(Debug, Clone)]
enum Stored {
    Memory(MediaFeatures),
    File(PathBuf),
}

/// A sample ready for training.
#[derive(Debug, Clone)]
pub struct PreparedSample {
    pub index: usize,
    pub line: usize,
    pub modality: Modality,
    pub sequences: Vec<Sequence>,
    /// Rows of the spliced media block (visual + audio tokens).
    pub media_tokens: usize,
    /// Positions over all its sequences (what one forward processes).
    pub positions: usize,
    /// Supervised tokens (answers + eos).
    pub answer_tokens: usize,
    features: Stored,
}

impl PreparedSample {
    /// The frozen encoders' outputs (read from the cache file when stored there).
    pub fn features(&self) -> Result<MediaFeatures> {
        match &self.features {
            Stored::Memory(f) => Ok(f.clone()),
            Stored::File(path) => {
                let ts = candle_core::safetensors::load(path, &Device::Cpu)
                    .map_err(|e| TrainError::file(path, e))?;
                Ok(MediaFeatures {
                    vision: ts.get("vision").cloned(),
                    audio: ts.get("audio").cloned(),
                })
            }
        }
    }
}

/// The prepared samples of a data file and those left out.
pub struct Dataset {
    pub samples: Vec<PreparedSample>,
    pub skipped: Vec<SkippedSample>,
    /// Samples considered (after `max_samples`).
    pub considered: usize,
}

/// Read and prepare every sample of `data` for `pipeline` (a VideoLLaMA 2 checkpoint).
/// `on_progress(done, total, skipped)` is called after each sample.
pub fn prepare_dataset(
    pipeline: &Pipeline,
    data: &Path,
    opts: &PrepareOptions,
    mut on_progress: impl FnMut(usize, usize, Option<&SkippedSample>),
) -> Result<Dataset> {
    if pipeline.family.is_some() {
        return Err(TrainError::Invalid(
            "training supports VideoLLaMA 2 checkpoints (config.json + safetensors), not this model family".into(),
        ));
    }
    let (mut samples, mut skipped) = read_samples(data)?;
    if let Some(max) = opts.max_samples {
        samples.retain(|s| s.index < max);
        skipped.retain(|s| s.index < max);
    }
    let considered = samples.len() + skipped.len();
    let total = considered;
    let mut done = skipped.len();
    for s in &skipped {
        on_progress(done, total, Some(s));
    }
    if let FeatureCache::Dir(dir) = &opts.feature_cache {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::file(dir, e))?;
    }
    let eos = eos_id(pipeline)?;
    let mut prepared = Vec::new();
    for sample in &samples {
        done += 1;
        match prepare_one(pipeline, sample, opts, eos) {
            Ok(p) => {
                prepared.push(p);
                on_progress(done, total, None);
            }
            Err(reason) => {
                let s = SkippedSample {
                    index: sample.index,
                    line: sample.line,
                    reason,
                };
                tracing::warn!("skipping {s}");
                on_progress(done, total, Some(&s));
                skipped.push(s);
            }
        }
    }
    skipped.sort_by_key(|s| s.index);
    Ok(Dataset {
        samples: prepared,
        skipped,
        considered,
    })
}

/// The id that ends an answer: the chat template's eos token, else generation_config's.
fn eos_id(pipeline: &Pipeline) -> Result<u32> {
    if let Some(id) = pipeline
        .template
        .eos_token()
        .and_then(|t| pipeline.tokenizer.token_to_id(t))
    {
        return Ok(id);
    }
    pipeline.eos_ids().first().copied().ok_or_else(|| {
        TrainError::Invalid(
            "the checkpoint names no eos token (tokenizer_config.json / generation_config.json)"
                .into(),
        )
    })
}

const TAGS: [&str; 3] = ["<video>", "<image>", "<audio>"];

fn prepare_one(
    pipeline: &Pipeline,
    sample: &Sample,
    opts: &PrepareOptions,
    eos: u32,
) -> std::result::Result<PreparedSample, String> {
    let modality = match (&sample.video, &sample.image, &sample.audio) {
        (Some(_), Some(_), _) => return Err("names both a video and an image".into()),
        (Some(_), None, _) => Modality::Video,
        (None, Some(_), _) => Modality::Image,
        (None, None, Some(_)) => Modality::Audio,
        (None, None, None) => Modality::Text,
    };
    let turns = conversation_turns(sample, modality)?;
    let sequences = sequences_for(pipeline, &turns, modality, eos)?;
    let features = media_features(pipeline, sample, opts)?;
    let media_tokens = match (&features.vision, &pipeline.model.visual) {
        (Some(v), Some(branch)) => {
            let (t, n, _) = v.dims3().map_err(|e| e.to_string())?;
            branch.connector.num_tokens(t, n)
        }
        _ => 0,
    } + features
        .audio
        .as_ref()
        .map(|a| a.dim(0).unwrap_or(0))
        .unwrap_or(0);
    let context = pipeline.model.config.llm.max_position_embeddings;
    let limit = opts
        .max_seq_len
        .or(pipeline.model.config.mm.tokenizer_model_max_length)
        .unwrap_or(context)
        .min(context);
    let mut positions = 0;
    for seq in &sequences {
        let placeholders = seq.ids.iter().filter(|&&i| i < 0).count();
        let len = seq.ids.len() - placeholders + placeholders * media_tokens;
        if len > limit {
            return Err(format!(
                "the conversation is {len} positions long ({} text tokens + {media_tokens} media tokens), \
                 more than the context of {limit}",
                seq.ids.len() - placeholders
            ));
        }
        positions += len;
    }
    let answer_tokens = sequences.iter().map(|s| s.targets.len()).sum();
    let stored = match &opts.feature_cache {
        FeatureCache::Memory => Stored::Memory(features),
        FeatureCache::Dir(dir) => {
            Stored::File(store_features(pipeline, sample, opts, dir, &features)?)
        }
    };
    Ok(PreparedSample {
        index: sample.index,
        line: sample.line,
        modality,
        sequences,
        media_tokens,
        positions,
        answer_tokens,
        features: stored,
    })
}

/// User / assistant texts with the media tags taken out (the prompt builder puts the
/// placeholder in front of the first user turn, as the reference's `preprocess_multimodal`
/// moves it there). A trailing user turn without an answer is dropped.
fn conversation_turns(
    sample: &Sample,
    modality: Modality,
) -> std::result::Result<Vec<String>, String> {
    let mut turns: Vec<(Role, String)> = sample.turns.clone();
    if turns.last().map(|t| t.0) == Some(Role::User) {
        turns.pop();
    }
    if turns.is_empty() {
        return Err("the conversation has no answer (\"gpt\" turn)".into());
    }
    let mut out = Vec::new();
    for (i, (role, text)) in turns.iter().enumerate() {
        let want = if i % 2 == 0 {
            Role::User
        } else {
            Role::Assistant
        };
        if *role != want {
            return Err(format!(
                "turn {i} is a {} turn; turns must alternate human, gpt, human, …",
                if *role == Role::User { "human" } else { "gpt" }
            ));
        }
        let mut text = text.clone();
        for tag in TAGS {
            if text.contains(tag) {
                if *role == Role::Assistant {
                    return Err(format!("answer {i} contains the media tag {tag}"));
                }
                let allowed =
                    tag == modality.placeholder() || (tag == "<audio>" && sample.audio.is_some());
                if !allowed {
                    return Err(format!(
                        "turn {i} mentions {tag} but the sample has no {}",
                        &tag[1..tag.len() - 1]
                    ));
                }
                text = text.replace(tag, "");
            }
        }
        let text = text.trim().to_string();
        if *role == Role::Assistant && text.is_empty() {
            return Err(format!("answer {i} is empty"));
        }
        out.push(text);
    }
    Ok(out)
}

fn sequences_for(
    pipeline: &Pipeline,
    turns: &[String],
    modality: Modality,
    eos: u32,
) -> std::result::Result<Vec<Sequence>, String> {
    // (prompt ids, answer ids) per answer.
    let mut parts = Vec::new();
    for k in (1..turns.len()).step_by(2) {
        let (_, prompt) = pipeline
            .build_prompt(&turns[..k], modality)
            .map_err(|e| e.to_string())?;
        let enc = pipeline
            .tokenizer
            .encode(turns[k].as_str(), false)
            .map_err(|e| format!("tokenizer failed: {e}"))?;
        let mut answer: Vec<u32> = enc.get_ids().to_vec();
        answer.push(eos);
        parts.push((prompt, answer));
    }
    let (last_prompt, last_answer) = parts.pop().ok_or("no answer")?;
    let mut main = Sequence {
        ids: last_prompt.clone(),
        targets: Vec::new(),
    };
    let mut extra = Vec::new();
    for (prompt, answer) in parts {
        let joined: Vec<i64> = prompt
            .iter()
            .copied()
            .chain(answer.iter().map(|&a| a as i64))
            .collect();
        if last_prompt.starts_with(&joined) {
            main.targets
                .extend((prompt.len()..joined.len()).zip(answer.iter().copied()));
        } else {
            // The template does not render this answer as its own tokens (e.g. it drops
            // earlier turns): train it in a sequence of its own.
            extra.push(Sequence {
                targets: (prompt.len()..joined.len())
                    .zip(answer.iter().copied())
                    .collect(),
                ids: joined,
            });
        }
    }
    let start = main.ids.len();
    main.ids.extend(last_answer.iter().map(|&a| a as i64));
    main.targets
        .extend((start..main.ids.len()).zip(last_answer.iter().copied()));
    let mut all = vec![main];
    all.extend(extra);
    Ok(all)
}

fn media_features(
    pipeline: &Pipeline,
    sample: &Sample,
    opts: &PrepareOptions,
) -> std::result::Result<MediaFeatures, String> {
    if sample.video.is_none() && sample.image.is_none() && sample.audio.is_none() {
        return Ok(MediaFeatures {
            vision: None,
            audio: None,
        });
    }
    for p in [&sample.video, &sample.image, &sample.audio]
        .into_iter()
        .flatten()
    {
        if !p.exists() {
            return Err(format!("{}: no such file", p.display()));
        }
    }
    if let FeatureCache::Dir(dir) = &opts.feature_cache {
        let path = cache_path(pipeline, sample, opts, dir)?;
        if let Ok(ts) = candle_core::safetensors::load(&path, &Device::Cpu) {
            return Ok(MediaFeatures {
                vision: ts.get("vision").cloned(),
                audio: ts.get("audio").cloned(),
            });
        }
    }
    let req = MediaRequest {
        video: sample.video.clone(),
        image: sample.image.clone(),
        audio: sample.audio.clone(),
        pad_to_square: opts.pad_to_square,
        ..Default::default()
    };
    let (input, _) = pipeline.prepare_media(&req).map_err(|e| e.to_string())?;
    let model = &pipeline.model;
    let vision = match &input.visual {
        None => None,
        Some(Visual::Video(px)) => Some(model.encode_visual(px, false)),
        Some(Visual::Image(px)) => Some(model.encode_visual(px, true)),
    }
    .transpose()
    .map_err(|e| e.to_string())?
    .map(|v| v.vision_features.to_dtype(DType::F32))
    .transpose()
    .map_err(|e| e.to_string())?;
    let audio = input
        .audio_fbank
        .as_ref()
        .map(|f| model.encode_audio(f))
        .transpose()
        .map_err(|e| e.to_string())?
        .map(|a| a.audio_features.to_dtype(DType::F32))
        .transpose()
        .map_err(|e| e.to_string())?;
    Ok(MediaFeatures { vision, audio })
}

/// FNV-1a over the model identity, the media files (path, size, modification time) and
/// the preprocessing options.
fn cache_path(
    pipeline: &Pipeline,
    sample: &Sample,
    opts: &PrepareOptions,
    dir: &Path,
) -> std::result::Result<PathBuf, String> {
    let mut key = format!("{}|pad={}", pipeline.model_identity, opts.pad_to_square);
    for (kind, p) in [
        ("video", &sample.video),
        ("image", &sample.image),
        ("audio", &sample.audio),
    ] {
        if let Some(p) = p {
            let meta = std::fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let abs = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
            key.push_str(&format!("|{kind}={}:{}:{mtime}", abs.display(), meta.len()));
        }
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    Ok(dir.join(format!("{h:016x}.safetensors")))
}

fn store_features(
    pipeline: &Pipeline,
    sample: &Sample,
    opts: &PrepareOptions,
    dir: &Path,
    features: &MediaFeatures,
) -> std::result::Result<PathBuf, String> {
    if features.vision.is_none() && features.audio.is_none() {
        // Text-only: an empty file keeps the handling uniform.
        let path = dir.join("text-only.safetensors");
        if !path.exists() {
            candle_core::safetensors::save(&HashMap::<String, Tensor>::new(), &path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        return Ok(path);
    }
    let path = cache_path(pipeline, sample, opts, dir)?;
    if path.is_file() {
        return Ok(path);
    }
    let mut ts = HashMap::new();
    if let Some(v) = &features.vision {
        ts.insert(
            "vision".to_string(),
            v.contiguous().map_err(|e| e.to_string())?,
        );
    }
    if let Some(a) = &features.audio {
        ts.insert(
            "audio".to_string(),
            a.contiguous().map_err(|e| e.to_string())?,
        );
    }
    let tmp = path.with_extension("tmp");
    candle_core::safetensors::save(&ts, &tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}
