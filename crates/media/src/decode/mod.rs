//! Video and audio decoding through the system FFmpeg (crate `ffmpeg-next`), reproducing
//! what the VideoLLaMA2 reference gets from decord (video) and from the `ffmpeg` CLI
//! (audio of videos).
//!
//! Built and tested against Debian 12's FFmpeg 5.1 (`scripts/setup.sh` installs it); it
//! needs FFmpeg ≥ 5.1 (it uses the `AVChannelLayout` API).
//!
//! # Frame numbering (decord parity)
//!
//! decord's `VideoReader` reads every packet of the video stream once when it opens a file
//! (`IndexKeyframes`), sorts them by pts, and from then on *frame `i` is the `i`-th packet
//! in pts order* and `len(reader)` is the number of packets. [`probe`] does the same
//! demux-only pass (no decoding; cheap) and always uses the packet count, never the
//! container's `nb_frames` (which can disagree with it, e.g. with MP4 edit lists or
//! truncated files) nor `duration × fps` (which decord only uses before indexing).
//! `avg_fps` is the stream's `avg_frame_rate` (decord's `get_avg_fps()`).
//!
//! # Locating frames: keyframes, seeking and sequential decoding
//!
//! [`decode_frames`] maps each requested index to its pts through that table, then visits
//! the distinct targets in pts order. For each target it either keeps decoding forward
//! from where the decoder is, or seeks:
//!
//! * The demux pass records which packets are keyframes (`AV_PKT_FLAG_KEY`). A target at
//!   position `t` can be decoded correctly starting from the last keyframe at or before
//!   it, `k`. Continuing costs `t - p` decoded frames (`p` = the decoder's current
//!   position); seeking costs `t - k` plus a fixed penalty of 8 frames. We seek only when
//!   that is cheaper, i.e. when a keyframe more than 8 frames ahead of the current position
//!   lies at or before the target. Dense targets, or long GOPs (x264's default keyint 250
//!   means most short clips have a single keyframe), therefore decode sequentially; sparse
//!   targets in a long video with regular keyframes seek once per target GOP.
//! * A seek is `avformat_seek_file(stream, max_ts = pts of k)` (the keyframe at or before
//!   that timestamp) followed by `avcodec_flush_buffers`. The landing is verified: the
//!   first frame decoded afterwards must not lie after the target. If it does (some
//!   demuxers seek by dts or to an imprecise position), the next-earlier keyframe is tried,
//!   up to 3 times, and then the file is reopened and decoded from the start. A demuxer
//!   that cannot seek also leads to reopening.
//! * Decoding forward, frames whose best-effort timestamp is before the target's pts are
//!   dropped without colour conversion; the first frame at or after it is the target (for
//!   a well-formed stream it has exactly the target's pts). Frames before the first
//!   keyframe, and open-GOP leading pictures, are never targets of a seek: their keyframe
//!   is an earlier one.
//! * If the decoder never outputs a frame at or after the target (truncated or corrupt
//!   stream), the call fails with [`DecodeError::Corrupt`] naming the frame, like decord's
//!   "Error getting frame at".
//! * Streams whose packets lack timestamps are identified by output order only and are
//!   always decoded sequentially.
//!
//! Either strategy returns the same pixels (a frame decoded from its keyframe is the same
//! frame); only the time differs.
//!
//! # Colour conversion and rotation
//!
//! decord converts with an FFmpeg filter graph `scale=W:H` (native size) ending in an
//! `rgb24` buffersink. The equivalent swscale set-up is described on `RgbConverter`
//! (`video.rs`): bilinear flags, matrix and range from the frame's tags like `vf_scale`'s
//! `in_color_matrix=auto` (BT.601 limited range for untagged video), aligned output
//! buffers. For 4:2:0 input with even height swscale then uses its unscaled `yuv2rgb`
//! fast path, as decord's FFmpeg did. Rotation (`rotate` tag or display matrix, 90/180/270
//! only, as decord) is applied to the RGB frames.
//!
//! # GIF
//!
//! GIFs go through FFmpeg's `gif` demuxer and decoder (one packet per frame, output BGRA,
//! converted to RGB by dropping alpha). The reference reads GIFs with imageio/Pillow and
//! forces 25 fps ([`VideoInfo::reference_fps`]); the pixels of transparent areas can differ
//! from Pillow's.
//!
//! # Robustness
//!
//! Nothing here panics on arbitrary input bytes: every failure is a [`DecodeError`] naming
//! the file and the cause, and every loop is bounded (packet reads end at EOF or after 64
//! consecutive read errors; 256 consecutive decoder errors abort; the decode pass may read
//! at most twice the packets the index pass saw). Picture sides must be
//! 1..=[`MAX_DIMENSION`]. FFmpeg's own log output is off unless `VIDEOLLAMA_FFMPEG_LOG`
//! is set (e.g. `warning`).

mod audio;
mod error;
mod input;
mod opencv;
mod subtitle;
mod video;

pub use audio::{decode_audio, decode_audio_16k_mono, TARGET_SAMPLE_RATE};
pub use error::DecodeError;
/// FFmpeg's one-time initialisation with the project's log-level convention
/// (`VIDEOLLAMA_FFMPEG_LOG`); for other crates that call FFmpeg directly (the demo-data encoder).
pub use input::init as init_ffmpeg;
pub use opencv::{container_timing, ContainerTiming, OpenCvCapture};
pub use subtitle::read_subtitle_stream;
pub use video::{decode_frames, decode_frames_resized, probe, DecodeStats, VideoInfo, VideoReader};

/// Largest accepted picture width or height, in pixels.
pub const MAX_DIMENSION: u32 = 16384;
