//! Media preprocessing for VideoLLaMA 2 / 2.1: everything between a media file and
//! the tensors the encoders consume, reproducing the PyTorch reference's numerics.
//! This is the lowest layer of the workspace: plain `Vec<u8>` / `Vec<f32>` buffers
//! with explicit shapes, no tensor library.
//!
//! # Visual path (spec §3)
//!
//! ```text
//! frame count + fps ──sampling──▶ frame indices ──decode──▶ RgbImage (u8, HWC)
//!    ──image_processor: [pad] → resize (Pillow-exact) → [centre crop] → rescale → normalise
//!    ──▶ T × 3 × H × W f32 (pixel_values)
//! ```
//!
//! * [`sampling`] — which frames to decode: uniform sampling with the reference's
//!   f64 arithmetic and round-half-to-even, optional clip bounds, `MAX_FRAMES`.
//! * `decode` — FFmpeg video/audio decoding (separate module) producing [`RgbImage`]
//!   frames; [`image_file`] loads still images and directories of frames.
//! * [`resize`] — Pillow's `Image.resize` (bicubic etc.) on 8-bit RGB, bit-exact.
//! * [`image_processor`] — HF `CLIPImageProcessor` / `SiglipImageProcessor` from a
//!   `preprocessor_config.json`, producing `CHW` / `TCHW` `f32`.
//!
//! # Audio path (spec §7)
//!
//! ```text
//! audio file: samples ─channel 0─▶ 30 s pad/crop ─FFT resample→16 kHz─▶ ×2^15 ─fbank (f64)─▶
//! video:   16 kHz mono ─8 clips of 2 s─▶ concat ─pad 480000─▶ ×2^15 ─fbank (f32)─▶
//!          2998 × 128 log-mel (then bf16 rounding, as the reference casts)
//! ```
//!
//! * [`audio`] — waveform preparation for both paths, WAV reading, bf16 rounding.
//! * [`fbank`] — `torchaudio.compliance.kaldi.fbank` as the reference calls it.
//!
//! Errors are [`MediaError`]s that name the offending file; corrupt bytes and absurd
//! sizes are errors, never panics.
pub mod audio;
pub mod decode;
pub mod error;
pub mod fbank;
pub mod frame;
pub mod image_file;
pub mod image_processor;
pub mod imagebind_audio;
pub mod minigpt4_video;
pub mod qwen2_vl;
pub mod resample;
pub mod resize;
pub mod sampling;
pub mod subtitles;
pub mod video_llama;

pub use error::MediaError;
pub use frame::RgbImage;
