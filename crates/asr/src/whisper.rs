//! [`Whisper`]: checkpoint loading and the `transcribe()` loop over 30-s windows.
//!
//! ```text
//! file ─ videollama-media: decode + resample → 16 kHz mono f32 (ffmpeg -ac 1 -ar 16000 s16le)
//!   ─ log-mel [n_mels, T] (mel.rs) ─┬─ window [seek, seek + 3000) zero-padded ─ encoder
//!                                   │     ─ greedy decode (decode.rs) ─ split at timestamp pairs
//!                                   └─ seek += consumed frames, until T
//! ```
//!
//! The loop is openai-whisper's `transcribe()` with `temperature=0` (no fallback to
//! sampling), `condition_on_previous_text=False` (each window starts from the bare start
//! sequence; conditioning on the previous text is what makes Whisper loop on repetitions
//! when there is no temperature fallback) and without word timestamps. A window whose
//! `no_speech_prob > no_speech_threshold` and whose `avg_logprob ≤ logprob_threshold` is
//! skipped as silence, as openai does.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::config::{
    ct2_suppress, hf_suppress, read_hf_config, read_json, SuppressConfig, WhisperDims,
};
use crate::ct2;
use crate::decode::{split_segments, DecodingResult, GreedyDecoder};
use crate::error::{AsrError, Result};
use crate::mel::{log_mel_spectrogram, LogMel, MelFilters, HOP_LENGTH, SAMPLE_RATE};
use crate::model::WhisperModel;
use crate::tokenizer::WhisperTokenizer;

/// A piece of recognised speech with its time span in the input.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub start_s: f64,
    pub end_s: f64,
    /// The text, trimmed (Whisper's own text starts with a space).
    pub text: String,
}

/// A [`Segment`] with the decoder's details.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedSegment {
    pub segment: Segment,
    /// The segment's tokens, timestamps included (openai's `segment["tokens"]`).
    pub tokens: Vec<u32>,
    /// Of the window the segment came from.
    pub avg_logprob: f64,
    pub no_speech_prob: f64,
}

/// The result of [`Whisper::transcribe`].
#[derive(Debug, Clone, PartialEq)]
pub struct Transcript {
    /// Language code used (given, detected, or `"en"` for English-only models).
    pub language: String,
    pub segments: Vec<DecodedSegment>,
}

impl Transcript {
    /// The plain segments.
    pub fn segments(&self) -> Vec<Segment> {
        self.segments.iter().map(|s| s.segment.clone()).collect()
    }

    /// All text, segments joined by a space.
    pub fn text(&self) -> String {
        let parts: Vec<&str> = self
            .segments
            .iter()
            .map(|s| s.segment.text.as_str())
            .filter(|t| !t.is_empty())
            .collect();
        parts.join(" ")
    }
}

/// Transcribe or translate to English (multilingual models only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Task {
    #[default]
    Transcribe,
    Translate,
}

/// Options of the transcription loop (defaults: openai-whisper's `transcribe()`).
#[derive(Debug, Clone, PartialEq)]
pub struct TranscribeOptions {
    /// Language code (`"fr"`) or English name (`"french"`). `None`: English for `.en`
    /// models, detected on the first 30 s for multilingual ones.
    pub language: Option<String>,
    pub task: Task,
    /// Skip a window as silence when `no_speech_prob` exceeds this… (0.6)
    pub no_speech_threshold: Option<f64>,
    /// …and its `avg_logprob` does not exceed this (-1.0).
    pub logprob_threshold: Option<f64>,
    /// Latest allowed first timestamp of a window, seconds (1.0).
    pub max_initial_timestamp_s: Option<f64>,
    /// Maximum tokens sampled per window (`None`: `n_text_ctx / 2` = 224).
    pub sample_len: Option<usize>,
}

impl Default for TranscribeOptions {
    fn default() -> Self {
        Self {
            language: None,
            task: Task::Transcribe,
            no_speech_threshold: Some(0.6),
            logprob_threshold: Some(-1.0),
            max_initial_timestamp_s: Some(1.0),
            sample_len: None,
        }
    }
}

/// Where the model is computed (default: CPU, f32).
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    pub dtype: DType,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: DType::F32,
        }
    }
}

/// The checkpoint layout a model was loaded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckpointFormat {
    /// `config.json` + `model.safetensors` (or sharded with an index) + `tokenizer.json`.
    HuggingFace,
    /// `model.bin` (or `model.bin.part1`, …) + `config.json` + vocabulary.
    CTranslate2 { parts: usize },
}

/// A loaded Whisper model with its vocabulary and decoding settings.
#[derive(Debug)]
pub struct Whisper {
    model: WhisperModel,
    tokenizer: WhisperTokenizer,
    filters: MelFilters,
    /// Sorted ids suppressed at every step / at the first step.
    suppress: Vec<u32>,
    begin_suppress: Vec<u32>,
    options: TranscribeOptions,
    format: CheckpointFormat,
    dir: PathBuf,
}

fn hf_safetensors(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    let v = read_json(&index)?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| AsrError::format(&index, "no weight_map object"))?;
    let mut files: Vec<PathBuf> = Vec::new();
    for f in map.values() {
        let f = f
            .as_str()
            .ok_or_else(|| AsrError::format(&index, "weight_map values must be file names"))?;
        let p = dir.join(f);
        if !files.contains(&p) {
            if !p.is_file() {
                return Err(AsrError::io(
                    &p,
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "shard listed in the index is missing",
                    ),
                ));
            }
            files.push(p);
        }
    }
    Ok(files)
}

impl Whisper {
    /// Loads a Whisper folder on the CPU in f32: a Hugging Face folder (`config.json`,
    /// `model.safetensors`, `tokenizer.json`) or a CTranslate2 one (`model.bin` or its
    /// parts, `config.json`, `tokenizer.json`/`vocabulary.txt`).
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        Self::load_with(dir, &LoadOptions::default())
    }

    /// [`Whisper::load`] on a chosen device and dtype.
    pub fn load_with(dir: impl AsRef<Path>, opts: &LoadOptions) -> Result<Self> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(AsrError::NotAModel {
                dir: dir.to_path_buf(),
                detail: "not a directory".into(),
            });
        }
        let has_ct2 = dir.join("model.bin").is_file() || dir.join("model.bin.part1").is_file();
        let has_hf = dir.join("model.safetensors").is_file()
            || dir.join("model.safetensors.index.json").is_file();
        let (dims, model, format, suppress_cfg) = if has_ct2 {
            let files = ct2::model_bin_files(dir)?;
            let ct = ct2::read_model_bin(&files)?;
            let (dims, tensors) = ct2::whisper_to_hf(&ct)?;
            let path = ct.path.clone();
            drop(ct);
            let vb = VarBuilder::from_tensors(tensors, opts.dtype, &opts.device);
            let model = WhisperModel::load(dims, vb)
                .map_err(|e| AsrError::format(&path, format!("converted weights: {e}")))?;
            (
                dims,
                model,
                CheckpointFormat::CTranslate2 { parts: files.len() },
                ct2_suppress(dir)?,
            )
        } else if has_hf {
            let cfg = read_hf_config(dir)?;
            let dims = cfg.dims();
            let files = hf_safetensors(dir)?;
            // SAFETY: the files are memory-mapped read-only; modifying them while the
            // model loads is the caller's responsibility (as everywhere safetensors is mmapped).
            let vb =
                unsafe { VarBuilder::from_mmaped_safetensors(&files, opts.dtype, &opts.device) }
                    .map_err(|e| AsrError::format(&files[0], e.to_string()))?;
            let model = WhisperModel::load(dims, vb)
                .map_err(|e| AsrError::format(&files[0], e.to_string()))?;
            (
                dims,
                model,
                CheckpointFormat::HuggingFace,
                hf_suppress(dir)?,
            )
        } else {
            return Err(AsrError::NotAModel {
                dir: dir.to_path_buf(),
                detail: "expected model.safetensors + config.json (Hugging Face) or model.bin \
                         (CTranslate2)"
                    .into(),
            });
        };
        let tokenizer = WhisperTokenizer::from_dir(dir)?;
        let sp = &tokenizer.specials;
        let vocab = dims.n_vocab as u32;
        if sp.timestamp_begin >= vocab || sp.eot >= vocab || sp.sot >= vocab {
            return Err(AsrError::format(
                &tokenizer.source,
                format!("special tokens lie outside the model's {vocab}-token vocabulary"),
            ));
        }
        let (suppress, begin_suppress) = suppress_lists(&tokenizer, &suppress_cfg, vocab);
        Ok(Self {
            filters: MelFilters::whisper(dims.n_mels),
            model,
            tokenizer,
            suppress,
            begin_suppress,
            options: TranscribeOptions::default(),
            format,
            dir: dir.to_path_buf(),
        })
    }

    /// Replaces the transcription options (checks the language against the vocabulary).
    pub fn set_options(&mut self, options: TranscribeOptions) -> Result<()> {
        self.initial_tokens(&options, None)?;
        self.options = options;
        Ok(())
    }

    /// Builder form of [`Whisper::set_options`].
    pub fn with_options(mut self, options: TranscribeOptions) -> Result<Self> {
        self.set_options(options)?;
        Ok(self)
    }

    pub fn options(&self) -> &TranscribeOptions {
        &self.options
    }

    pub fn dims(&self) -> &WhisperDims {
        &self.model.dims
    }

    pub fn is_multilingual(&self) -> bool {
        self.model.dims.is_multilingual()
    }

    pub fn tokenizer(&self) -> &WhisperTokenizer {
        &self.tokenizer
    }

    pub fn model(&self) -> &WhisperModel {
        &self.model
    }

    pub fn format(&self) -> &CheckpointFormat {
        &self.format
    }

    /// The folder the model was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Token ids suppressed at every step and at the first step.
    pub fn suppress_tokens(&self) -> (&[u32], &[u32]) {
        (&self.suppress, &self.begin_suppress)
    }

    /// Decodes the audio of `path` (any file FFmpeg reads, the best audio stream of a
    /// video included) to 16 kHz mono and transcribes it.
    pub fn transcribe_file(&self, path: impl AsRef<Path>) -> Result<Vec<Segment>> {
        let pcm = videollama_media::decode::decode_audio_16k_mono(path.as_ref())?;
        self.transcribe_pcm(&pcm)
    }

    /// Transcribes 16 kHz mono samples in `[-1, 1]`.
    pub fn transcribe_pcm(&self, pcm: &[f32]) -> Result<Vec<Segment>> {
        Ok(self.transcribe(pcm)?.segments())
    }

    /// The log-mel spectrogram this model takes (`[n_mels, len/160]`).
    pub fn log_mel(&self, pcm: &[f32]) -> LogMel {
        log_mel_spectrogram(pcm, &self.filters)
    }

    /// Runs the encoder on a window `[n_mels, 3000]` (row-major): `[1, n_audio_ctx, d]`.
    pub fn encode_window(&self, window: &[f32]) -> Result<Tensor> {
        let dims = &self.model.dims;
        let mel = Tensor::from_slice(
            window,
            (1, dims.n_mels, dims.n_frames()),
            self.model.device(),
        )?
        .to_dtype(self.model.dtype())?;
        Ok(self.model.encoder.forward(&mel)?)
    }

    fn decoder(&self, options: &TranscribeOptions) -> GreedyDecoder<'_> {
        let dims = &self.model.dims;
        GreedyDecoder {
            model: &self.model,
            specials: &self.tokenizer.specials,
            suppress: &self.suppress,
            begin_suppress: &self.begin_suppress,
            sample_len: options.sample_len.unwrap_or(dims.n_text_ctx / 2),
            max_initial_timestamp_index: options.max_initial_timestamp_s.map(|s| {
                // openai: round(max_initial_timestamp / precision), precision = 0.02 s.
                (s / self.time_precision()).round().max(0.0) as usize
            }),
        }
    }

    /// Seconds per timestamp step (0.02).
    fn time_precision(&self) -> f64 {
        self.input_stride() as f64 * HOP_LENGTH as f64 / SAMPLE_RATE as f64
    }

    /// Mel frames per encoder position (2).
    fn input_stride(&self) -> usize {
        self.model.dims.n_frames() / self.model.dims.n_audio_ctx
    }

    /// The start sequence and the language code it uses. `detected` is used when the
    /// options give no language on a multilingual model.
    fn initial_tokens(
        &self,
        options: &TranscribeOptions,
        detected: Option<&str>,
    ) -> Result<(Vec<u32>, String)> {
        let sp = &self.tokenizer.specials;
        if !self.is_multilingual() {
            if let Some(l) = &options.language {
                let code = self.tokenizer.language_token(l).map(|(c, _)| c);
                if code.as_deref() != Some("en") {
                    return Err(AsrError::Invalid(format!(
                        "language {l:?}: this model is English-only"
                    )));
                }
            }
            if options.task == Task::Translate {
                return Err(AsrError::Invalid(
                    "translation needs a multilingual model; this one is English-only".into(),
                ));
            }
            return Ok((vec![sp.sot], "en".into()));
        }
        let lang = options.language.as_deref().or(detected);
        let Some(lang) = lang else {
            return Ok((vec![sp.sot], String::new()));
        };
        let (code, id) = self.tokenizer.language_token(lang).ok_or_else(|| {
            AsrError::Invalid(format!(
                "language {lang:?} is not in this model's vocabulary"
            ))
        })?;
        let task = match options.task {
            Task::Transcribe => sp.transcribe,
            Task::Translate => sp.translate,
        };
        Ok((vec![sp.sot, id, task], code))
    }

    /// Detects the spoken language from the first 30 s (multilingual models; English-only
    /// ones return `"en"` with probability 1). Returns the code and its probability.
    pub fn detect_language(&self, pcm: &[f32]) -> Result<(String, f64)> {
        let mel = self.log_mel(pcm);
        self.detect_language_mel(&mel)
    }

    fn detect_language_mel(&self, mel: &LogMel) -> Result<(String, f64)> {
        if !self.is_multilingual() {
            return Ok(("en".into(), 1.0));
        }
        let audio = self.encode_window(&mel.padded_window(0, self.model.dims.n_frames()))?;
        let (id, p) = self.decoder(&self.options).detect_language(&audio)?;
        let code = self
            .tokenizer
            .specials
            .languages
            .iter()
            .find(|(_, i)| *i == id)
            .map(|(c, _)| c.clone())
            .ok_or_else(|| AsrError::Invalid("vocabulary has no language tokens".into()))?;
        Ok((code, p))
    }

    /// Decodes one window (`[n_mels, 3000]`) with the current options and a given start
    /// sequence language (multilingual models).
    pub fn decode_window(&self, window: &[f32], language: Option<&str>) -> Result<DecodingResult> {
        let (initial, _) = self.initial_tokens(&self.options, language)?;
        let audio = self.encode_window(window)?;
        Ok(self.decoder(&self.options).decode(&audio, &initial, 0)?)
    }

    /// Transcribes 16 kHz mono samples with the current options, keeping the decoder's
    /// details (tokens, log-probabilities) of each segment.
    pub fn transcribe(&self, pcm: &[f32]) -> Result<Transcript> {
        let options = &self.options;
        let mel = self.log_mel(pcm);
        let detected = if self.is_multilingual() && options.language.is_none() {
            Some(self.detect_language_mel(&mel)?.0)
        } else {
            None
        };
        let (initial, language) = self.initial_tokens(options, detected.as_deref())?;
        let decoder = self.decoder(options);
        let n_frames = self.model.dims.n_frames();
        let ts_begin = self.tokenizer.specials.timestamp_begin;
        let mut segments = Vec::new();
        let mut seek = 0usize;
        while seek < mel.n_frames {
            let time_offset = (seek * HOP_LENGTH) as f64 / SAMPLE_RATE as f64;
            let segment_frames = n_frames.min(mel.n_frames - seek);
            let audio = self.encode_window(&mel.window(seek, segment_frames, n_frames))?;
            let result = decoder.decode(&audio, &initial, 0)?;
            if let Some(th) = options.no_speech_threshold {
                let confident = options
                    .logprob_threshold
                    .is_some_and(|lt| result.avg_logprob > lt);
                if result.no_speech_prob > th && !confident {
                    seek += segment_frames;
                    continue;
                }
            }
            let (raw, advance) = split_segments(
                &result.tokens,
                ts_begin,
                time_offset,
                segment_frames,
                self.input_stride(),
                self.time_precision(),
            );
            for r in raw {
                let text = self.tokenizer.decode(&r.tokens).trim().to_string();
                if text.is_empty() {
                    continue;
                }
                segments.push(DecodedSegment {
                    segment: Segment {
                        start_s: r.start_s,
                        end_s: r.end_s,
                        text,
                    },
                    tokens: r.tokens,
                    avg_logprob: result.avg_logprob,
                    no_speech_prob: result.no_speech_prob,
                });
            }
            // A window always moves `seek` forward (openai's timestamp rules guarantee
            // it; the fallback only guards against a degenerate token sequence).
            seek += if advance == 0 {
                segment_frames
            } else {
                advance
            };
        }
        Ok(Transcript { language, segments })
    }
}

/// Every-step and first-step suppression lists, as openai's `_get_suppress_tokens` and
/// `SuppressBlank`: the configured (or computed non-speech) ids plus the task/control
/// tokens; the blank and EOT at the first step.
fn suppress_lists(
    tok: &WhisperTokenizer,
    cfg: &SuppressConfig,
    vocab: u32,
) -> (Vec<u32>, Vec<u32>) {
    let sp = &tok.specials;
    let mut suppress = cfg
        .suppress
        .clone()
        .unwrap_or_else(|| tok.non_speech_tokens());
    suppress.extend([sp.transcribe, sp.translate, sp.sot, sp.sot_prev, sp.sot_lm]);
    suppress.extend(sp.no_speech);
    suppress.retain(|&t| t < vocab);
    suppress.sort_unstable();
    suppress.dedup();
    let mut begin = cfg.begin_suppress.clone().unwrap_or_else(|| {
        let mut v = tok.encode(" ").unwrap_or_default();
        v.push(sp.eot);
        v
    });
    begin.retain(|&t| t < vocab);
    begin.sort_unstable();
    begin.dedup();
    (suppress, begin)
}
