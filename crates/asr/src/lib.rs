//! Speech recognition with OpenAI Whisper: subtitles from a sound track.
//!
//! ```text
//! media file ─ videollama-media (FFmpeg decode, resample) ─ 16 kHz mono f32
//!   ─ [`mel`] log-mel [n_mels, T] ─ 30-s windows ─ [`model`] encoder [1, 1500, d]
//!   ─ [`decode`] greedy decoding with timestamp rules ─ segments ─ [`Segment`]s ─ [`to_webvtt`]
//! ```
//!
//! * [`Whisper::load`] reads a Hugging Face Whisper folder (`config.json`,
//!   `model.safetensors`, `tokenizer.json`) or a CTranslate2 one (`model.bin` — also split
//!   as `model.bin.part1`, `part2`, … — with `config.json` and `tokenizer.json` or
//!   `vocabulary.txt`); [`ct2`] converts CTranslate2 variables to the HF names in memory.
//! * [`Whisper::transcribe_file`] / [`Whisper::transcribe_pcm`] reproduce
//!   openai-whisper's `transcribe(temperature=0, condition_on_previous_text=False)`;
//!   English is used for `.en` models, the language is detected (or given in
//!   [`TranscribeOptions::language`]) for multilingual ones.
//! * [`to_webvtt`] writes the segments as WebVTT.
//!
//! Numerics follow openai-whisper: the log-mel equals `log_mel_spectrogram` (torch.stft,
//! librosa Slaney filterbank), GELU is exact, decoding applies the same logit filters.
//! Tensors are f32 on the CPU by default ([`LoadOptions`] selects device and dtype).

pub mod config;
pub mod ct2;
pub mod decode;
pub mod error;
pub mod mel;
pub mod model;
pub mod tokenizer;
pub mod vtt;
mod whisper;

pub use config::WhisperDims;
pub use decode::DecodingResult;
pub use error::{AsrError, Result};
pub use mel::{log_mel_spectrogram, LogMel, MelFilters};
pub use tokenizer::WhisperTokenizer;
pub use vtt::to_webvtt;
pub use whisper::{
    CheckpointFormat, DecodedSegment, LoadOptions, Segment, Task, TranscribeOptions, Transcript,
    Whisper,
};
