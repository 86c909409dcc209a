//! Video probing and frame decoding (decord-compatible indexing).

use std::path::{Path, PathBuf};
use std::ptr;

use ffmpeg::ffi;
use ffmpeg::media::Type as MediaType;
use ffmpeg_next as ffmpeg;

use super::input::{codec_name, open_input, PacketReader, ReadOutcome, StreamDecoder};
use super::{DecodeError, MAX_DIMENSION};
use crate::frame::RgbImage;

/// Estimated cost of a seek (demuxer seek + decoder flush + pipeline refill), in decoded
/// frames. A seek is made only when it skips more frames than this.
const SEEK_PENALTY_FRAMES: usize = 8;
/// How many seek positions (the keyframe's pts, its dts, then earlier keyframes) are tried
/// before falling back to decoding from the start of the file.
const SEEK_ATTEMPTS: usize = 4;

/// What [`probe`] reports about a video file.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoInfo {
    /// Container duration in seconds (stream duration, or `frame_count / avg_fps`, when the
    /// container has none).
    pub duration_s: f64,
    /// Number of frames, counted as decord's `len(VideoReader)` counts them: the number of
    /// packets of the video stream, read in a demux-only pass (see the module docs).
    pub frame_count: usize,
    /// The stream's `avg_frame_rate` (decord's `get_avg_fps()`); `r_frame_rate` when the
    /// container leaves it unset, 0 when both are unset.
    pub avg_fps: f64,
    /// Width of the frames [`decode_frames`] returns (after rotation).
    pub width: u32,
    /// Height of the frames [`decode_frames`] returns (after rotation).
    pub height: u32,
    /// Clockwise rotation applied to decoded frames: 0, 90, 180 or 270 (from the `rotate`
    /// tag or the display-matrix side data, as decord reads them).
    pub rotation_degrees: u32,
    /// Whether the container has an audio stream.
    pub has_audio: bool,
    /// FFmpeg's name of the video codec (`h264`, `hevc`, `vp9`, `gif`, ...).
    pub codec: String,
    /// FFmpeg's name of the container format (`mov,mp4,m4a,3gp,3g2,mj2`, `gif`, ...).
    pub container: String,
}

impl VideoInfo {
    /// True for GIF input (the FFmpeg `gif` demuxer).
    pub fn is_gif(&self) -> bool {
        self.container == "gif"
    }

    /// The frame rate the reference pipeline uses: VideoLLaMA2 reads GIFs with imageio and
    /// forces 25 fps; everything else uses decord's `get_avg_fps()` (= `avg_fps`).
    pub fn reference_fps(&self) -> f64 {
        if self.is_gif() {
            25.0
        } else {
            self.avg_fps
        }
    }
}

/// What one [`VideoReader::decode_with_stats`] call did (for benchmarks and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeStats {
    /// Seeks issued (including retries after an overshoot).
    pub seeks: usize,
    /// Times the file was opened for decoding (1 + restarts from the beginning).
    pub opens: usize,
    /// Frames the decoder output.
    pub frames_decoded: usize,
    /// Frames converted to RGB (distinct targets).
    pub frames_converted: usize,
}

/// Frame index → timestamp table built by a demux-only pass.
#[derive(Debug, Clone)]
struct FrameIndex {
    /// Presentation timestamp (stream time base) of frame `i`, ascending: decord sorts the
    /// video packets by pts and frame `i` is the `i`-th of them. In untimed mode these are
    /// just `0..n`.
    ts: Vec<i64>,
    /// Positions (indices into `ts`) of keyframe packets, ascending.
    key_pos: Vec<usize>,
    /// Timestamp to seek to for each keyframe in `key_pos`: the smaller of its pts and dts
    /// (demuxers index by one or the other; with B-frames dts <= pts).
    key_seek_ts: Vec<i64>,
    /// False when some packet has neither pts nor dts; then frames are identified by their
    /// output order only and decoding is always sequential.
    timed: bool,
    /// Packets of all streams in the file (bounds the decode loop).
    total_packets: u64,
}

impl FrameIndex {
    fn seek_ts_of_key(&self, key: usize) -> i64 {
        match self.key_pos.binary_search(&key) {
            Ok(i) => self.key_seek_ts[i],
            Err(_) => self.ts[key],
        }
    }

    fn key_at_or_before(&self, pos: usize) -> Option<usize> {
        let i = self.key_pos.partition_point(|&k| k <= pos);
        (i > 0).then(|| self.key_pos[i - 1])
    }

    /// Number of frames with timestamp `<= ts` = position of the frame after `ts`.
    fn upper_bound(&self, ts: i64) -> usize {
        self.ts.partition_point(|&t| t <= ts)
    }
}

/// An opened, indexed video: [`VideoInfo`] plus the frame table, so that the caller can
/// probe once, choose frame indices (see `crate::sampling`) and decode them without a
/// second index pass.
#[derive(Debug, Clone)]
pub struct VideoReader {
    path: PathBuf,
    info: VideoInfo,
    stream_index: usize,
    /// Seconds per time-base tick of the video stream.
    time_base_s: f64,
    index: FrameIndex,
}

/// Probes `path`: opens it, picks the best video stream (`av_find_best_stream`, as decord
/// does) and counts its frames with a demux-only pass.
pub fn probe(path: impl AsRef<Path>) -> Result<VideoInfo, DecodeError> {
    Ok(VideoReader::open(path)?.info)
}

/// Decodes the frames at `indices` (decord frame numbers, `0..frame_count`) as RGB24 at
/// native size, rotated per the container's rotation metadata.
///
/// Indices may repeat and need not be sorted; the result has one image per index, in the
/// requested order. See the module documentation for how frames are located.
pub fn decode_frames(
    path: impl AsRef<Path>,
    indices: &[usize],
) -> Result<Vec<RgbImage>, DecodeError> {
    VideoReader::open(path)?.decode(indices)
}

/// Decodes the frames at `indices` like [`decode_frames`], but scaled to `width × height`
/// by FFmpeg's scaler while converting to RGB24, as decord's
/// `VideoReader(path, width=W, height=H)` does (no aspect preservation).
///
/// decord builds the filter graph `[transpose=…,]scale=W:H` ending in an `rgb24`
/// buffersink, so the scale filter does the resize *and* the YUV→RGB conversion in one
/// swscale step with the filter's default flags (`SWS_BILINEAR`); this is what
/// `RgbConverter` sets up when given a target size. Rotated videos are transposed in
/// their native pixel format first (plane by plane, like the `transpose` filter), then
/// scaled, so `width × height` is the size of the *output*. Bit-exact against decord
/// 0.6.0 on the Video-LLaMA fixture (`tests/golden_video_llama.rs`).
pub fn decode_frames_resized(
    path: impl AsRef<Path>,
    indices: &[usize],
    width: u32,
    height: u32,
) -> Result<Vec<RgbImage>, DecodeError> {
    VideoReader::open(path)?.decode_resized(indices, width, height)
}

impl VideoReader {
    /// Opens and indexes `path` (one demux-only pass over the file).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, DecodeError> {
        let path = path.as_ref();
        let mut input = open_input(path)?;
        let container = input.format().name().to_string();
        let has_audio = input
            .streams()
            .any(|s| s.parameters().medium() == MediaType::Audio);
        let stream =
            input
                .streams()
                .best(MediaType::Video)
                .ok_or_else(|| DecodeError::NoVideoStream {
                    path: path.to_path_buf(),
                })?;
        let stream_index = stream.index();
        let params = stream.parameters();
        let (codec_id, coded_w, coded_h) = unsafe {
            let p = params.as_ptr();
            ((*p).codec_id, (*p).width, (*p).height)
        };
        let codec = codec_name(codec_id);
        if unsafe { ffi::avcodec_find_decoder(codec_id) }.is_null() {
            return Err(DecodeError::UnsupportedCodec {
                path: path.to_path_buf(),
                codec,
                cause: "this FFmpeg build has no decoder for it".into(),
            });
        }
        check_dimensions(path, coded_w, coded_h)?;
        let rotation = stream_rotation(&stream);
        let avg_fps = {
            let r = stream.avg_frame_rate();
            let fallback = stream.rate();
            if r.numerator() > 0 && r.denominator() > 0 {
                r.numerator() as f64 / r.denominator() as f64
            } else if fallback.numerator() > 0 && fallback.denominator() > 0 {
                fallback.numerator() as f64 / fallback.denominator() as f64
            } else {
                0.0
            }
        };
        let time_base_s = {
            let tb = stream.time_base();
            if tb.denominator() > 0 {
                tb.numerator() as f64 / tb.denominator() as f64
            } else {
                0.0
            }
        };
        let stream_duration_s = {
            let tb = stream.time_base();
            let d = stream.duration();
            if d > 0 && tb.denominator() > 0 {
                Some(d as f64 * tb.numerator() as f64 / tb.denominator() as f64)
            } else {
                None
            }
        };
        let container_duration = input.duration();

        let index = build_index(path, &mut input, stream_index)?;
        let frame_count = index.ts.len();
        if frame_count == 0 {
            return Err(DecodeError::NoFrames {
                path: path.to_path_buf(),
                what: "the video stream".into(),
            });
        }
        let duration_s = if container_duration > 0 {
            container_duration as f64 / f64::from(ffi::AV_TIME_BASE)
        } else if let Some(d) = stream_duration_s {
            d
        } else if avg_fps > 0.0 {
            frame_count as f64 / avg_fps
        } else {
            0.0
        };
        let (width, height) = if rotation == 90 || rotation == 270 {
            (coded_h as u32, coded_w as u32)
        } else {
            (coded_w as u32, coded_h as u32)
        };
        Ok(Self {
            path: path.to_path_buf(),
            info: VideoInfo {
                duration_s,
                frame_count,
                avg_fps,
                width,
                height,
                rotation_degrees: rotation,
                has_audio,
                codec,
                container,
            },
            stream_index,
            time_base_s,
            index,
        })
    }

    /// What [`probe`] returns.
    pub fn info(&self) -> &VideoInfo {
        &self.info
    }

    /// The file this reader decodes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Presentation timestamps of all frames in seconds (relative to the stream's time
    /// base, not shifted by its start time), or `None` for untimed streams.
    pub fn frame_times_s(&self) -> Option<Vec<f64>> {
        if !self.index.timed || self.time_base_s == 0.0 {
            return None;
        }
        Some(
            self.index
                .ts
                .iter()
                .map(|&t| t as f64 * self.time_base_s)
                .collect(),
        )
    }

    /// Indices of keyframes (decord's `get_key_indices()`).
    pub fn key_indices(&self) -> &[usize] {
        &self.index.key_pos
    }

    /// See [`decode_frames`].
    pub fn decode(&self, indices: &[usize]) -> Result<Vec<RgbImage>, DecodeError> {
        Ok(self.decode_with_stats(indices)?.0)
    }

    /// [`VideoReader::decode`], also reporting how the frames were reached.
    pub fn decode_with_stats(
        &self,
        indices: &[usize],
    ) -> Result<(Vec<RgbImage>, DecodeStats), DecodeError> {
        self.decode_impl(indices, None)
    }

    /// See [`decode_frames_resized`]. `width` and `height` must be
    /// `1..=`[`MAX_DIMENSION`].
    pub fn decode_resized(
        &self,
        indices: &[usize],
        width: u32,
        height: u32,
    ) -> Result<Vec<RgbImage>, DecodeError> {
        if width == 0 || height == 0 || width > MAX_DIMENSION || height > MAX_DIMENSION {
            return Err(DecodeError::Dimensions {
                path: self.path.clone(),
                width,
                height,
            });
        }
        Ok(self.decode_impl(indices, Some((width, height)))?.0)
    }

    /// Shared body of [`VideoReader::decode_with_stats`] (native size, `size = None`) and
    /// [`VideoReader::decode_resized`].
    fn decode_impl(
        &self,
        indices: &[usize],
        size: Option<(u32, u32)>,
    ) -> Result<(Vec<RgbImage>, DecodeStats), DecodeError> {
        let n = self.info.frame_count;
        if let Some(&bad) = indices.iter().find(|&&i| i >= n) {
            return Err(DecodeError::IndexOutOfRange {
                path: self.path.clone(),
                index: bad,
                frame_count: n,
            });
        }
        let mut stats = DecodeStats::default();
        if indices.is_empty() {
            return Ok((Vec::new(), stats));
        }
        let mut wanted: Vec<usize> = indices.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        let images = self.decode_sorted_unique(&wanted, &mut stats, size)?;
        let frames = indices
            .iter()
            .map(|i| {
                let k = wanted.binary_search(i).expect("index is in wanted");
                images[k].clone()
            })
            .collect();
        Ok((frames, stats))
    }

    fn open_session(&self, stats: &mut DecodeStats) -> Result<StreamDecoder, DecodeError> {
        stats.opens += 1;
        let input = open_input(&self.path)?;
        StreamDecoder::open(
            &self.path,
            input,
            self.stream_index,
            0,
            self.index
                .total_packets
                .saturating_mul(2)
                .saturating_add(1024),
        )
    }

    /// Decodes the frames at `wanted` (sorted, unique positions).
    fn decode_sorted_unique(
        &self,
        wanted: &[usize],
        stats: &mut DecodeStats,
        size: Option<(u32, u32)>,
    ) -> Result<Vec<RgbImage>, DecodeError> {
        let path = self.path.as_path();
        let idx = &self.index;
        let mut out: Vec<Option<RgbImage>> = vec![None; wanted.len()];
        let mut session = self.open_session(stats)?;
        let mut converter = match size {
            None => RgbConverter::new(),
            // Rotation happens before the scaler in this mode (see `decode_frames_resized`).
            Some((w, h)) => RgbConverter::resizing(w, h, self.info.rotation_degrees),
        };
        // Position of the next frame the decoder will output, when known.
        let mut next_pos: Option<usize> = Some(0);
        // Frames output since the session was (re)opened (untimed mode).
        let mut output_count: usize = 0;

        for w in 0..wanted.len() {
            if out[w].is_some() {
                continue;
            }
            let t = wanted[w];
            let target_ts = idx.ts[t];

            // Continue decoding forward, or seek to the keyframe before the target?
            let continue_cost = match next_pos {
                Some(p) if p <= t => Some(t - p),
                _ => None,
            };
            let key = if idx.timed {
                idx.key_at_or_before(t)
            } else {
                None
            };
            let seek_cost = key.map(|k| t - k + SEEK_PENALTY_FRAMES);
            let do_seek = match (continue_cost, seek_cost) {
                (Some(c), Some(s)) => s < c,
                (None, Some(_)) => true,
                (_, None) => false,
            };
            // Set when this target is approached by a seek: if the stream then ends before
            // the target (seen with open-GOP H.264, whose frames after the keyframe can need
            // the previous GOP), it is decoded again from the start of the file instead.
            let mut sought = false;
            if do_seek {
                let k = key.expect("seek implies a keyframe");
                if self.seek_session(&mut session, k, target_ts, stats)? {
                    next_pos = None;
                    sought = true;
                } else {
                    session = self.open_session(stats)?;
                    next_pos = Some(0);
                    output_count = 0;
                }
            } else if continue_cost.is_none() {
                session = self.open_session(stats)?;
                next_pos = Some(0);
                output_count = 0;
            }

            // Decode forward to the first frame at or after the target timestamp.
            loop {
                let Some(frame) = session.next_frame(path)? else {
                    if sought {
                        sought = false;
                        session = self.open_session(stats)?;
                        next_pos = Some(0);
                        output_count = 0;
                        continue;
                    }
                    return Err(missing_frame_error(path, t, n_frames(idx), &session));
                };
                stats.frames_decoded += 1;
                let ets = if idx.timed {
                    frame
                        .timestamp()
                        .or_else(|| frame.pts())
                        .unwrap_or_else(|| {
                            next_pos
                                .map(|p| idx.ts[p.min(idx.ts.len() - 1)])
                                .unwrap_or(i64::MIN)
                        })
                } else {
                    output_count += 1;
                    (output_count - 1) as i64
                };
                next_pos = Some(idx.upper_bound(ets));
                if ets < target_ts {
                    // Not needed: skip the colour conversion.
                    continue;
                }
                let img =
                    converter
                        .convert(unsafe { frame.as_ptr() })
                        .map_err(|cause| match cause {
                            ConvertError::Dimensions(width, height) => DecodeError::Dimensions {
                                path: path.to_path_buf(),
                                width,
                                height,
                            },
                            ConvertError::Unsupported(msg) => DecodeError::UnsupportedCodec {
                                path: path.to_path_buf(),
                                codec: self.info.codec.clone(),
                                cause: msg,
                            },
                            ConvertError::Ffmpeg(msg) => {
                                DecodeError::ffmpeg(path, "RGB conversion (swscale)", msg)
                            }
                        })?;
                stats.frames_converted += 1;
                let img = if converter.rotates() {
                    img
                } else {
                    rotate(img, self.info.rotation_degrees)
                };
                // This frame also stands for any later target that it covers (a target
                // whose own frame the decoder did not output).
                let mut j = w;
                while j < wanted.len() && idx.ts[wanted[j]] <= ets {
                    if out[j].is_none() {
                        out[j] = Some(img.clone());
                    }
                    j += 1;
                }
                break;
            }
        }
        Ok(out
            .into_iter()
            .map(|o| o.expect("every target was assigned"))
            .collect())
    }

    /// Seeks so that decoding resumes at or before the keyframe at position `key` and
    /// verifies the landing: the first decoded frame must not lie after `target_ts`. On
    /// overshoot it retries with earlier keyframes. Returns false when the caller should
    /// restart from the beginning of the file instead.
    fn seek_session(
        &self,
        session: &mut StreamDecoder,
        key: usize,
        target_ts: i64,
        stats: &mut DecodeStats,
    ) -> Result<bool, DecodeError> {
        let idx = &self.index;
        // Seek targets, in order: the keyframe's pts (exact for demuxers that index by pts,
        // e.g. MP4, Matroska), its dts when smaller (demuxers that index by dts, e.g.
        // MPEG-TS, land on it with B-frames), then earlier keyframes.
        let mut attempts = vec![idx.ts[key]];
        let alt = idx.seek_ts_of_key(key);
        if alt < idx.ts[key] {
            attempts.push(alt);
        }
        let mut k = key;
        while attempts.len() < SEEK_ATTEMPTS {
            match k.checked_sub(1).and_then(|p| idx.key_at_or_before(p)) {
                Some(p) => {
                    attempts.push(idx.seek_ts_of_key(p));
                    k = p;
                }
                None => break,
            }
        }
        for ts in attempts {
            stats.seeks += 1;
            if !session.seek(ts) {
                return Ok(false);
            }
            if let Some(f) = session.next_frame(&self.path)? {
                let ts = f.timestamp().or_else(|| f.pts());
                if ts.is_none_or(|ts| ts <= target_ts) {
                    session.push_back(f);
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }
}

fn n_frames(idx: &FrameIndex) -> usize {
    idx.ts.len()
}

fn missing_frame_error(path: &Path, t: usize, n: usize, s: &StreamDecoder) -> DecodeError {
    let mut cause = format!(
        "frame {t} of {n} could not be decoded: the decoder output no frame at or after it \
         before the stream ended"
    );
    if s.decode_errors > 0 {
        cause.push_str(&format!(
            "; {} decode errors (last: {})",
            s.decode_errors,
            s.last_decode_error.as_deref().unwrap_or("?")
        ));
    }
    let r = s.reader();
    if r.errors > 0 {
        cause.push_str(&format!(
            "; {} read errors (last: {})",
            r.errors,
            r.last_error.as_deref().unwrap_or("?")
        ));
    }
    DecodeError::corrupt(path, cause)
}

fn check_dimensions(path: &Path, w: i32, h: i32) -> Result<(), DecodeError> {
    if w <= 0 || h <= 0 || w as u32 > MAX_DIMENSION || h as u32 > MAX_DIMENSION {
        return Err(DecodeError::Dimensions {
            path: path.to_path_buf(),
            width: w.max(0) as u32,
            height: h.max(0) as u32,
        });
    }
    Ok(())
}

/// Demux-only pass: the video stream's packets, sorted by pts, are the frames.
fn build_index(
    path: &Path,
    input: &mut ffmpeg::format::context::Input,
    stream_index: usize,
) -> Result<FrameIndex, DecodeError> {
    struct Entry {
        pts: Option<i64>,
        dts: Option<i64>,
        key: bool,
    }
    let mut entries: Vec<Entry> = Vec::new();
    let mut reader = PacketReader::default();
    let mut packet = ffmpeg::Packet::empty();
    while let ReadOutcome::Packet = reader.read(input, &mut packet) {
        if packet.stream() == stream_index {
            entries.push(Entry {
                pts: packet.pts(),
                dts: packet.dts(),
                key: packet.is_key(),
            });
        }
    }
    if entries.is_empty() && reader.errors > 0 {
        return Err(DecodeError::corrupt(
            path,
            format!(
                "no video packet could be read ({} read errors, last: {})",
                reader.errors,
                reader.last_error.as_deref().unwrap_or("?")
            ),
        ));
    }
    let timed = entries.iter().all(|e| e.pts.or(e.dts).is_some());
    let seek_ts = |e: &Entry| match (e.pts, e.dts) {
        (Some(p), Some(d)) => p.min(d),
        (p, d) => p.or(d).unwrap_or(i64::MIN),
    };
    let (ts, key_pos, key_seek_ts) = if timed {
        let mut order: Vec<usize> = (0..entries.len()).collect();
        // Stable: packets with equal timestamps keep their demux order.
        order.sort_by_key(|&i| entries[i].pts.or(entries[i].dts).unwrap_or(i64::MIN));
        let ts = order
            .iter()
            .map(|&i| entries[i].pts.or(entries[i].dts).unwrap_or(i64::MIN))
            .collect();
        let keys: Vec<(usize, i64)> = order
            .iter()
            .enumerate()
            .filter(|(_, &i)| entries[i].key)
            .map(|(p, &i)| (p, seek_ts(&entries[i])))
            .collect();
        (
            ts,
            keys.iter().map(|k| k.0).collect(),
            keys.iter().map(|k| k.1).collect(),
        )
    } else {
        let ts = (0..entries.len() as i64).collect();
        let key_pos: Vec<usize> = entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.key)
            .map(|(p, _)| p)
            .collect();
        let key_seek_ts = key_pos.iter().map(|&p| p as i64).collect();
        (ts, key_pos, key_seek_ts)
    };
    Ok(FrameIndex {
        ts,
        key_pos,
        key_seek_ts,
        timed,
        total_packets: reader.packets,
    })
}

/// Rotation as decord computes it: the `rotate` metadata tag when present and non-zero,
/// else minus the display matrix's counter-clockwise angle; reduced to `[0, 360)` and
/// truncated to an integer. Only 90, 180 and 270 are applied (like decord); other angles
/// give 0.
fn stream_rotation(stream: &ffmpeg::format::stream::Stream) -> u32 {
    let mut theta = 0.0f64;
    unsafe {
        let key = c"rotate";
        let entry = ffi::av_dict_get((*stream.as_ptr()).metadata, key.as_ptr(), ptr::null(), 0);
        if !entry.is_null() && !(*entry).value.is_null() {
            let v = std::ffi::CStr::from_ptr((*entry).value).to_string_lossy();
            if !v.is_empty() && v != "0" {
                theta = atof(&v);
            }
        }
    }
    if theta == 0.0 {
        for sd in stream.side_data() {
            if sd.kind() == ffmpeg::codec::packet::side_data::Type::DisplayMatrix {
                let data = sd.data();
                if data.len() >= 9 * 4 {
                    let mut m = [0i32; 9];
                    for (i, v) in m.iter_mut().enumerate() {
                        *v = i32::from_ne_bytes(data[i * 4..i * 4 + 4].try_into().unwrap());
                    }
                    theta = -unsafe { ffi::av_display_rotation_get(m.as_ptr()) };
                }
                break;
            }
        }
    }
    if !theta.is_finite() {
        return 0;
    }
    let mut theta = theta % 360.0;
    if theta < 0.0 {
        theta += 360.0;
    }
    match theta as i32 {
        90 => 90,
        180 => 180,
        270 => 270,
        _ => 0,
    }
}

/// C `atof`: the longest numeric prefix (after leading whitespace), 0 when there is none.
fn atof(s: &str) -> f64 {
    let s = s.trim_start();
    let mut best = 0.0;
    for end in (1..=s.len()).rev() {
        if !s.is_char_boundary(end) {
            continue;
        }
        if let Ok(v) = s[..end].parse::<f64>() {
            best = v;
            break;
        }
    }
    best
}

/// Rotates a decoded picture clockwise by 90, 180 or 270 degrees in its own pixel format,
/// plane by plane, as decord's `transpose=1` (90), `transpose=1,transpose=1` (180) and
/// `transpose=2` (270) filters do before their `scale` filter. Like the `transpose`
/// filter, this needs a format whose chroma is subsampled equally in both directions
/// (4:2:0, 4:4:4, gray, packed RGB, NV12, ...); others are reported as unsupported.
/// Returns a newly allocated frame (the caller frees it).
unsafe fn rotate_planes(
    src: *const ffi::AVFrame,
    degrees: u32,
) -> Result<*mut ffi::AVFrame, ConvertError> {
    unsafe {
        let (fmt, w, h) = ((*src).format, (*src).width, (*src).height);
        if w <= 0 || h <= 0 || w as u32 > MAX_DIMENSION || h as u32 > MAX_DIMENSION {
            return Err(ConvertError::Dimensions(w.max(0) as u32, h.max(0) as u32));
        }
        if fmt < 0 || fmt >= ffi::AVPixelFormat::AV_PIX_FMT_NB as i32 {
            return Err(ConvertError::Unsupported(format!(
                "decoder produced an unknown pixel format ({fmt})"
            )));
        }
        let pix: ffi::AVPixelFormat = std::mem::transmute::<i32, ffi::AVPixelFormat>(fmt);
        let desc = ffi::av_pix_fmt_desc_get(pix);
        if desc.is_null() {
            return Err(ConvertError::Unsupported(format!(
                "pixel format #{fmt} has no descriptor"
            )));
        }
        let bad_flags = (ffi::AV_PIX_FMT_FLAG_PAL
            | ffi::AV_PIX_FMT_FLAG_BITSTREAM
            | ffi::AV_PIX_FMT_FLAG_HWACCEL) as u64;
        if (*desc).flags & bad_flags != 0 || (*desc).log2_chroma_w != (*desc).log2_chroma_h {
            let name = std::ffi::CStr::from_ptr((*desc).name).to_string_lossy();
            return Err(ConvertError::Unsupported(format!(
                "pixel format {name} cannot be rotated before scaling"
            )));
        }
        // Bytes between horizontally adjacent pixels, per plane (0 = unused plane).
        let mut step = [0usize; 4];
        for c in 0..((*desc).nb_components as usize).min(4) {
            let comp = (*desc).comp[c];
            if (0..4).contains(&comp.plane) && comp.step > 0 {
                let p = comp.plane as usize;
                step[p] = step[p].max(comp.step as usize);
            }
        }
        let (ow, oh) = if degrees == 180 { (w, h) } else { (h, w) };
        let mut out = ffi::av_frame_alloc();
        if out.is_null() {
            return Err(ConvertError::Ffmpeg("av_frame_alloc failed".into()));
        }
        (*out).format = fmt;
        (*out).width = ow;
        (*out).height = oh;
        let ret = ffi::av_frame_get_buffer(out, 0);
        if ret < 0 {
            ffi::av_frame_free(&mut out);
            return Err(ConvertError::Ffmpeg(format!(
                "cannot allocate a {ow}x{oh} frame for rotation: {}",
                ffmpeg::Error::from(ret)
            )));
        }
        let sub = (*desc).log2_chroma_w as i32;
        for (p, &ps) in step.iter().enumerate() {
            if ps == 0 || (*src).data[p].is_null() || (*out).data[p].is_null() {
                continue;
            }
            // FFmpeg convention: planes 1 and 2 carry the subsampled chroma.
            let shift = if p == 1 || p == 2 { sub } else { 0 };
            let pw = ((w + (1 << shift) - 1) >> shift) as usize;
            let ph = ((h + (1 << shift) - 1) >> shift) as usize;
            let (sls, dls) = ((*src).linesize[p] as isize, (*out).linesize[p] as isize);
            let (sp, dp) = ((*src).data[p] as *const u8, (*out).data[p]);
            let (opw, oph) = if degrees == 180 { (pw, ph) } else { (ph, pw) };
            for y in 0..oph {
                let drow = dp.offset(y as isize * dls);
                for x in 0..opw {
                    let (sx, sy) = match degrees {
                        90 => (y, ph - 1 - x),
                        180 => (pw - 1 - x, ph - 1 - y),
                        _ => (pw - 1 - y, x),
                    };
                    let s = sp.offset(sy as isize * sls + (sx * ps) as isize);
                    ptr::copy_nonoverlapping(s, drow.add(x * ps), ps);
                }
            }
        }
        Ok(out)
    }
}

/// Rotates an image clockwise by 90, 180 or 270 degrees (other values: unchanged).
///
/// decord rotates with FFmpeg's `transpose` filter *before* the RGB conversion; for 4:2:0
/// input, where swscale's fast path replicates each chroma sample over its 2×2 block, the
/// conversion commutes with the rotation, so rotating the RGB output gives the same pixels.
pub(crate) fn rotate(img: RgbImage, degrees: u32) -> RgbImage {
    let (w, h) = (img.width as usize, img.height as usize);
    if !matches!(degrees, 90 | 180 | 270) || w == 0 || h == 0 {
        return img;
    }
    let src = &img.data;
    let (ow, oh) = if degrees == 180 { (w, h) } else { (h, w) };
    let mut data = vec![0u8; ow * oh * 3];
    for (y, row) in data.chunks_exact_mut(ow * 3).enumerate() {
        for (x, dst) in row.chunks_exact_mut(3).enumerate() {
            let (sx, sy) = match degrees {
                // Clockwise: output (x, y) <- input (y, h-1-x).
                90 => (y, h - 1 - x),
                180 => (w - 1 - x, h - 1 - y),
                // Counter-clockwise: output (x, y) <- input (w-1-y, x).
                _ => (w - 1 - y, x),
            };
            let i = (sy * w + sx) * 3;
            dst.copy_from_slice(&src[i..i + 3]);
        }
    }
    RgbImage {
        width: ow as u32,
        height: oh as u32,
        data,
    }
}

pub(super) enum ConvertError {
    Dimensions(u32, u32),
    Unsupported(String),
    Ffmpeg(String),
}

/// A decoded frame's pixel format and size, checked before any swscale work: sane
/// dimensions, a known format that swscale can read.
///
/// # Safety
/// `src` must point to a valid decoded `AVFrame`.
pub(super) unsafe fn checked_frame(
    src: *const ffi::AVFrame,
) -> Result<(ffi::AVPixelFormat, i32, i32), ConvertError> {
    unsafe {
        let (fmt, w, h) = ((*src).format, (*src).width, (*src).height);
        if w <= 0 || h <= 0 || w as u32 > MAX_DIMENSION || h as u32 > MAX_DIMENSION {
            return Err(ConvertError::Dimensions(w.max(0) as u32, h.max(0) as u32));
        }
        if fmt < 0 || fmt >= ffi::AVPixelFormat::AV_PIX_FMT_NB as i32 {
            return Err(ConvertError::Unsupported(format!(
                "decoder produced an unknown pixel format ({fmt})"
            )));
        }
        // In range, checked above.
        let pix: ffi::AVPixelFormat = std::mem::transmute::<i32, ffi::AVPixelFormat>(fmt);
        if ffi::sws_isSupportedInput(pix) == 0 {
            let name = ffi::av_get_pix_fmt_name(pix);
            let name = if name.is_null() {
                format!("#{fmt}")
            } else {
                std::ffi::CStr::from_ptr(name)
                    .to_string_lossy()
                    .into_owned()
            };
            return Err(ConvertError::Unsupported(format!(
                "pixel format {name} cannot be converted by swscale"
            )));
        }
        Ok((pix, w, h))
    }
}

/// Decoded frame → RGB24 through swscale, set up the way decord's `scale=W:H` filter with
/// an `rgb24` buffersink sets it up (FFmpeg 4.x `vf_scale` defaults):
///
/// * flags `SWS_BILINEAR` (the filter's default; it only matters when swscale cannot use
///   its unscaled fast path, e.g. 4:4:4 input or an odd height), no `accurate_rnd`,
///   no `full_chroma_int`;
/// * YUV→RGB matrix from the frame's `colorspace` (BT.601 when unspecified or unknown,
///   BT.709 when tagged so, ...), input range from the frame's `color_range` (limited
///   unless tagged full / `yuvj*`), exactly as `vf_scale`'s `in_color_matrix=auto`;
/// * output into a padded, aligned frame (`av_frame_get_buffer`), because swscale's SIMD
///   fast path converts whole 8-pixel blocks and skips the row tail when the stride has
///   no room for it.
///
/// With a target size ([`RgbConverter::resizing`]) the same single swscale context also
/// scales (decord's `scale=W:H` with `W×H` ≠ the native size), and a rotation is applied
/// to the decoded picture *before* it (decord's `transpose` filters precede `scale`).
struct RgbConverter {
    sws: *mut ffi::SwsContext,
    key: (i32, i32, i32),
    out: *mut ffi::AVFrame,
    /// Output size; `None` = the (unrotated) input size.
    target: Option<(i32, i32)>,
    /// Clockwise rotation applied to the planes before scaling (resizing mode only).
    pre_rotation: u32,
    /// Holds the rotated planes (resizing mode with a rotation only).
    rotated: *mut ffi::AVFrame,
}

impl RgbConverter {
    fn new() -> Self {
        Self {
            sws: ptr::null_mut(),
            key: (-1, 0, 0),
            out: ptr::null_mut(),
            target: None,
            pre_rotation: 0,
            rotated: ptr::null_mut(),
        }
    }

    /// Converts and scales to `width × height`, rotating by `rotation` degrees clockwise
    /// (0, 90, 180, 270) first. Sizes are validated by the caller.
    fn resizing(width: u32, height: u32, rotation: u32) -> Self {
        Self {
            target: Some((width as i32, height as i32)),
            pre_rotation: if matches!(rotation, 90 | 180 | 270) {
                rotation
            } else {
                0
            },
            ..Self::new()
        }
    }

    /// True when the output is already rotated (the caller must not rotate it again).
    fn rotates(&self) -> bool {
        self.target.is_some()
    }

    fn release(&mut self) {
        unsafe {
            if !self.sws.is_null() {
                ffi::sws_freeContext(self.sws);
                self.sws = ptr::null_mut();
            }
            if !self.out.is_null() {
                ffi::av_frame_free(&mut self.out);
            }
            if !self.rotated.is_null() {
                ffi::av_frame_free(&mut self.rotated);
            }
        }
        self.key = (-1, 0, 0);
    }

    fn convert(&mut self, src: *const ffi::AVFrame) -> Result<RgbImage, ConvertError> {
        unsafe {
            if self.pre_rotation != 0 {
                // Rotate the planes in the decoded format, then convert + scale that.
                if !self.rotated.is_null() {
                    ffi::av_frame_free(&mut self.rotated);
                }
                self.rotated = rotate_planes(src, self.pre_rotation)?;
                let rotated = self.rotated;
                return self.convert_unrotated(rotated, src);
            }
            self.convert_unrotated(src, src)
        }
    }

    /// Converts `src` (whose colour tags are read from `tags`) to RGB24 at the target size.
    unsafe fn convert_unrotated(
        &mut self,
        src: *const ffi::AVFrame,
        tags: *const ffi::AVFrame,
    ) -> Result<RgbImage, ConvertError> {
        unsafe {
            let (pix, w, h) = checked_frame(src)?;
            let fmt = pix as i32;
            let (ow, oh) = self.target.unwrap_or((w, h));
            if self.key != (fmt, w, h) {
                self.release_sws();
                self.sws = ffi::sws_getContext(
                    w,
                    h,
                    pix,
                    ow,
                    oh,
                    ffi::AVPixelFormat::AV_PIX_FMT_RGB24,
                    ffi::SWS_BILINEAR,
                    ptr::null_mut(),
                    ptr::null_mut(),
                    ptr::null(),
                );
                if self.sws.is_null() {
                    return Err(ConvertError::Ffmpeg("sws_getContext failed".into()));
                }
                let mut out = ffi::av_frame_alloc();
                if out.is_null() {
                    self.release_sws();
                    return Err(ConvertError::Ffmpeg("av_frame_alloc failed".into()));
                }
                (*out).format = ffi::AVPixelFormat::AV_PIX_FMT_RGB24 as i32;
                (*out).width = ow;
                (*out).height = oh;
                let ret = ffi::av_frame_get_buffer(out, 0);
                if ret < 0 {
                    ffi::av_frame_free(&mut out);
                    self.release_sws();
                    return Err(ConvertError::Ffmpeg(format!(
                        "cannot allocate a {ow}x{oh} RGB frame: {}",
                        ffmpeg::Error::from(ret)
                    )));
                }
                self.out = out;
                self.key = (fmt, w, h);
            }
            self.apply_colorspace(tags);
            let ret = ffi::sws_scale(
                self.sws,
                (*src).data.as_ptr() as *const *const u8,
                (*src).linesize.as_ptr(),
                0,
                h,
                (*self.out).data.as_ptr(),
                (*self.out).linesize.as_ptr(),
            );
            if ret <= 0 {
                return Err(ConvertError::Ffmpeg(format!("sws_scale returned {ret}")));
            }
            let (wu, hu) = (ow as usize, oh as usize);
            let row = wu * 3;
            let stride = (*self.out).linesize[0] as usize;
            let base = (*self.out).data[0];
            let mut data = Vec::with_capacity(row * hu);
            for y in 0..hu {
                let line = std::slice::from_raw_parts(base.add(y * stride), row);
                data.extend_from_slice(line);
            }
            Ok(RgbImage {
                width: ow as u32,
                height: oh as u32,
                data,
            })
        }
    }

    /// Frees the swscale context and its output frame (not the rotation buffer).
    fn release_sws(&mut self) {
        let rotated = std::mem::replace(&mut self.rotated, ptr::null_mut());
        self.release();
        self.rotated = rotated;
    }

    /// `vf_scale`'s per-frame colour set-up with `in_color_matrix=auto`, `in_range=auto`.
    unsafe fn apply_colorspace(&mut self, src: *const ffi::AVFrame) {
        unsafe {
            let mut inv: *mut i32 = ptr::null_mut();
            let mut table: *mut i32 = ptr::null_mut();
            let (mut src_range, mut dst_range) = (0i32, 0i32);
            let (mut brightness, mut contrast, mut saturation) = (0i32, 0i32, 0i32);
            if ffi::sws_getColorspaceDetails(
                self.sws,
                &mut inv,
                &mut src_range,
                &mut table,
                &mut dst_range,
                &mut brightness,
                &mut contrast,
                &mut saturation,
            ) < 0
            {
                return;
            }
            // Read the enum fields as plain integers.
            let mut cs = *(ptr::addr_of!((*src).colorspace) as *const i32);
            let range = *(ptr::addr_of!((*src).color_range) as *const i32);
            // AVCOL_SPC_*: 1..=10 except 8 (YCgCo) have swscale tables; else BT.470BG (= 601).
            if !(1..=10).contains(&cs) || cs == 8 {
                cs = ffi::AVColorSpace::AVCOL_SPC_BT470BG as i32;
            }
            let coeffs = ffi::sws_getCoefficients(cs);
            let in_full = if range == ffi::AVColorRange::AVCOL_RANGE_MPEG as i32 {
                0
            } else if range == ffi::AVColorRange::AVCOL_RANGE_JPEG as i32 {
                1
            } else {
                src_range
            };
            ffi::sws_setColorspaceDetails(
                self.sws, coeffs, in_full, coeffs, dst_range, brightness, contrast, saturation,
            );
        }
    }
}

impl Drop for RgbConverter {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(w: u32, h: u32) -> RgbImage {
        let data = (0..w * h)
            .flat_map(|i| [i as u8, (i >> 8) as u8, 7])
            .collect();
        RgbImage {
            width: w,
            height: h,
            data,
        }
    }

    #[test]
    fn rotations_compose() {
        let a = img(5, 3);
        let r90 = rotate(a.clone(), 90);
        assert_eq!((r90.width, r90.height), (3, 5));
        // Clockwise: the output's top-left is the input's bottom-left.
        assert_eq!(r90.pixel(0, 0), a.pixel(0, 2));
        assert_eq!(r90.pixel(2, 0), a.pixel(0, 0));
        let r180 = rotate(a.clone(), 180);
        assert_eq!(r180.pixel(0, 0), a.pixel(4, 2));
        assert_eq!(rotate(r90.clone(), 90), r180);
        let r270 = rotate(a.clone(), 270);
        assert_eq!(r270.pixel(0, 0), a.pixel(4, 0));
        assert_eq!(rotate(r270, 90), a);
        assert_eq!(rotate(a.clone(), 0), a);
    }

    #[test]
    fn atof_prefix() {
        assert_eq!(atof("90"), 90.0);
        assert_eq!(atof(" -90.5abc"), -90.5);
        assert_eq!(atof("abc"), 0.0);
        assert_eq!(atof(""), 0.0);
    }

    #[test]
    fn index_helpers() {
        let idx = FrameIndex {
            ts: vec![0, 10, 20, 30, 40],
            key_pos: vec![0, 3],
            key_seek_ts: vec![-2, 28],
            timed: true,
            total_packets: 5,
        };
        assert_eq!(idx.key_at_or_before(2), Some(0));
        assert_eq!(idx.key_at_or_before(3), Some(3));
        assert_eq!(idx.key_at_or_before(4), Some(3));
        assert_eq!(idx.upper_bound(-1), 0);
        assert_eq!(idx.upper_bound(20), 3);
        assert_eq!(idx.upper_bound(25), 3);
        assert_eq!(idx.upper_bound(99), 5);
        assert_eq!(idx.seek_ts_of_key(3), 28);
    }
}
