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
//!                        or the Whisper tower's pooled features [tokens, d_model]
//!                        (frozen: computed once, kept in memory or in a cache file)
//! ```
//! The audio features come from `VideoLlama2::encode_audio` on `Pipeline::prepare_media`'s
//! input, the very calls inference makes (`Pipeline::encode_media`), so a Whisper tower's
//! window, log-mel and pooling are the same in training and at inference.
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
    /// One multi-turn conversation per media file ([`crate::data::pack_by_media`]).
    pub pack_by_media: bool,
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
    /// Audio-encoder features `[N, Ca]` (BEATs output, or the Whisper tower's pooled
    /// `[tokens, d_model]`): what `mm_projector_a` reads.
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
    if opts.pack_by_media {
        samples = crate::data::pack_by_media(samples);
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
/// the preprocessing options (a Whisper tower's window and pooling included: they live in
/// config.json, which the model identity does not cover).
fn cache_path(
    pipeline: &Pipeline,
    sample: &Sample,
    opts: &PrepareOptions,
    dir: &Path,
) -> std::result::Result<PathBuf, String> {
    let mut key = format!("{}|pad={}", pipeline.model_identity, opts.pad_to_square);
    if let Some(tower) = pipeline
        .model
        .audio
        .as_ref()
        .and_then(|a| a.encoder.whisper())
    {
        let c = tower.config();
        key.push_str(&format!(
            "|whisper={}x{}x{}:{}s/{}",
            c.d_model, c.encoder_layers, c.num_mel_bins, c.audio_max_seconds, c.audio_pool_stride
        ));
    }
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

#[cfg(test)]
mod tests {
    //! A Whisper audio tower: the prepared (cached) audio features are the ones inference
    //! computes, and the feature cache tells towers with other pooling apart.
    use super::*;
    use candle_nn::{VarBuilder, VarMap};
    use videollama_connectors::MlpProjector;
    use videollama_pipeline::audio_tower::{WhisperAudioTower, WhisperEncoderConfig};
    use videollama_pipeline::checkpoint::find_weight_files;
    use videollama_pipeline::model::{AUDIO_PROJECTOR_PREFIX, AUDIO_TOWER_PREFIX};
    use videollama_pipeline::LoadOptions;
    use videollama_testutil::golden;

    const FX: &str = "videollama2.1-av-tiny";

    /// The AV fixture with its BEATs tower replaced by a random Whisper encoder (d_model 16,
    /// 1 layer) pooled with `stride`, in `root/checkpoint`.
    fn whisper_checkpoint(root: &Path, stride: usize) -> PathBuf {
        let dir = root.join("checkpoint");
        for (src, dst) in [
            ("checkpoint", dir.clone()),
            ("vision_tower", root.join("vision_tower")),
        ] {
            copy_dir(&golden(&format!("{FX}/{src}")), &dst);
        }
        let mut tensors = HashMap::new();
        for f in find_weight_files(&dir).unwrap() {
            tensors.extend(candle_core::safetensors::load(&f, &Device::Cpu).unwrap());
            std::fs::remove_file(f).unwrap();
        }
        let _ = std::fs::remove_file(dir.join("model.safetensors.index.json"));
        tensors.retain(|k, _| {
            !k.starts_with("model.audio_tower.") && !k.starts_with("model.mm_projector_a.")
        });
        let cfg: WhisperEncoderConfig = serde_json::from_value(serde_json::json!({
            "d_model": 16, "encoder_layers": 1, "encoder_attention_heads": 2,
            "num_mel_bins": 80, "max_source_positions": 400, "audio_pool_stride": stride,
        }))
        .unwrap();
        let path = dir.join("config.json");
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let hidden = config["hidden_size"].as_u64().unwrap() as usize;
        // Random weights in the shapes the tower and the projector ask for.
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        WhisperAudioTower::new(&cfg, vb.pp(AUDIO_TOWER_PREFIX)).unwrap();
        MlpProjector::new(2, 16, hidden, vb.pp(AUDIO_PROJECTOR_PREFIX)).unwrap();
        for (k, v) in varmap.data().lock().unwrap().iter() {
            tensors.insert(k.clone(), v.as_tensor().clone());
        }
        candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
        let obj = config.as_object_mut().unwrap();
        obj.remove("beats_cfg");
        for (k, v) in cfg.config_fields().as_object().unwrap() {
            obj.insert(k.clone(), v.clone());
        }
        std::fs::write(&path, config.to_string()).unwrap();
        dir
    }

    fn copy_dir(src: &Path, dst: &Path) {
        std::fs::create_dir_all(dst).unwrap();
        for entry in std::fs::read_dir(src).unwrap() {
            let entry = entry.unwrap();
            let to = dst.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_dir(&entry.path(), &to);
            } else {
                std::fs::copy(entry.path(), &to).unwrap();
                let mut perm = std::fs::metadata(&to).unwrap().permissions();
                #[allow(clippy::permissions_set_readonly_false)]
                perm.set_readonly(false);
                std::fs::set_permissions(&to, perm).unwrap();
            }
        }
    }

    #[test]
    fn whisper_features_are_the_inference_features() {
        let tmp = tempfile::tempdir().unwrap();
        let video = golden(&format!("{FX}/inputs/video_av.mp4"));
        let wav = golden(&format!("{FX}/inputs/audio.wav"));
        let data = serde_json::json!([
            {"video": video, "conversations": [
                {"from": "human", "value": "<video>\nWhat do you hear?"},
                {"from": "gpt", "value": "A beep."}]},
            {"audio": wav, "conversations": [
                {"from": "human", "value": "<audio>\nWhat is this sound?"},
                {"from": "gpt", "value": "A voice."}]},
        ]);
        let data_path = tmp.path().join("av.json");
        std::fs::write(&data_path, data.to_string()).unwrap();
        let cache = tmp.path().join("features");
        let opts = PrepareOptions {
            max_samples: None,
            max_seq_len: None,
            feature_cache: FeatureCache::Dir(cache.clone()),
            pad_to_square: false,
            pack_by_media: false,
        };
        let mut last = Vec::new();
        let dir = whisper_checkpoint(tmp.path(), 25);
        for stride in [25, 40] {
            // The same folder with its pooling changed in config.json.
            let path = dir.join("config.json");
            let mut config: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            config["whisper_encoder"]["audio_pool_stride"] = stride.into();
            std::fs::write(&path, config.to_string()).unwrap();
            let pipeline = Pipeline::load(&dir, &LoadOptions::default()).unwrap();
            let tokens = 400usize.div_ceil(stride);
            // Twice: computed, then read back from the cache files.
            for _ in 0..2 {
                let ds = prepare_dataset(&pipeline, &data_path, &opts, |_, _, _| {}).unwrap();
                assert_eq!(ds.samples.len(), 2);
                for (sample, req) in ds.samples.iter().zip([
                    MediaRequest {
                        video: Some(video.clone()),
                        ..Default::default()
                    },
                    MediaRequest {
                        audio: Some(wav.clone()),
                        ..Default::default()
                    },
                ]) {
                    let got = sample.features().unwrap().audio.unwrap();
                    let (input, _) = pipeline.prepare_media(&req).unwrap();
                    let enc = pipeline.encode_media(&input).unwrap();
                    let want = &enc.audio.as_ref().unwrap().audio_features;
                    assert_eq!(got.dims(), &[tokens, 16]);
                    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    assert_eq!(flat(&got), flat(want), "stride {stride}");
                    let visual = if sample.modality == Modality::Video {
                        enc.visual_tokens()
                    } else {
                        0
                    };
                    assert_eq!(sample.media_tokens, visual + tokens);
                }
            }
            last.push(std::fs::read_dir(&cache).unwrap().count());
        }
        // The second pooling wrote its own cache files instead of reading the first's.
        assert_eq!(last, vec![2, 4]);
    }
}
