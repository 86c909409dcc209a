//! Sequential frame reading with OpenCV parity (`cv2.VideoCapture(path).read()` on the
//! FFmpeg backend, OpenCV 4.7/4.8), plus the container numbers the `ffmpeg` CLI prints
//! (what moviepy parses). Used by MiniGPT4-Video, whose reference decodes with OpenCV.
//!
//! # What OpenCV does, and what is reproduced
//!
//! * **Stream**: the *first* video stream by index (not `av_find_best_stream`), decoder
//!   opened from its parameters with automatic threading.
//! * **Grabbing** (`CvCapture_FFMPEG::grabFrame`): take a frame the decoder already holds,
//!   else read packets; packets of other streams are skipped (more than 4096 of them in
//!   one grab ends the video, as OpenCV's `OPENCV_FFMPEG_READ_ATTEMPTS` default); at the
//!   end of the file the decoder is drained; a packet the decoder rejects ends the video;
//!   more than 64 failed receives in one grab end it. A grab also fails once more frames
//!   than the container's `nb_frames` (when set) have been read, as OpenCV checks
//!   `frame_number > nb_frames`. Every end is "no more frames", not an error.
//! * **Colour conversion** (`retrieveFrame`): one swscale context sized by the decoder's
//!   `coded_width × coded_height` (e.g. 1920×1088 for 1080p H.264), source = the frame's
//!   pixel format, destination `BGR24`, flags `SWS_BICUBIC`, **no colourspace set-up**:
//!   swscale's defaults, i.e. BT.601 coefficients for every video (also BT.709-tagged
//!   HD), limited range unless the format is `yuvj*`. The slice converted is the frame's
//!   own height, into a 32-byte-aligned buffer, and the picture is cropped to the frame
//!   size. Converting at the coded size matters: for 4:2:0 input swscale's unscaled
//!   `yuv2rgb` fast path needs an even height, which the coded height has. (When the
//!   coded size is unusable — smaller than the frame, or the decoder's planes too narrow
//!   for it — the frame's own size is used.) Where swscale needs its generic path (e.g.
//!   10-bit 4:2:0) and the coded height exceeds the frame's, the partial slice leaves
//!   the last rows unwritten: OpenCV returns whatever its buffer held there (black in a
//!   fresh process); this buffer is zeroed, so those rows are black.
//! * **Channels**: OpenCV returns BGR; the MiniGPT4-Video reference flips it
//!   (`frame[:, :, ::-1]`), so [`OpenCvCapture::retrieve`] returns RGB.
//! * **Rotation**: `CAP_PROP_ORIENTATION_AUTO` is on by default: the display matrix angle
//!   `-round(av_display_rotation_get)` mod 360 rotates the output by 90° clockwise, 180°
//!   or 90° counter-clockwise (other angles: none). The `rotate` tag is not read.
//!
//! Decoding itself is FFmpeg's, so pixels are bit-exact where this FFmpeg's decoder and
//! swscale match the FFmpeg bundled with opencv-python (5.1 for the 4.7/4.8 wheels).

use std::path::{Path, PathBuf};
use std::ptr;

use ffmpeg::ffi;
use ffmpeg::media::Type as MediaType;
use ffmpeg_next as ffmpeg;

use super::input::{codec_name, open_input, PacketReader, ReadOutcome};
use super::video::{checked_frame, rotate, ConvertError};
use super::{DecodeError, MAX_DIMENSION};
use crate::frame::RgbImage;

/// OpenCV's default `OPENCV_FFMPEG_READ_ATTEMPTS`: non-video packets one grab may skip.
const MAX_READ_ATTEMPTS: usize = 4096;
/// OpenCV's default `OPENCV_FFMPEG_DECODE_ATTEMPTS`: failed receives one grab may see.
const MAX_DECODE_ATTEMPTS: usize = 64;

/// Container numbers as `ffmpeg -i` prints them: the input's `Duration:` and the first
/// video stream's `fps` / `tbr` values (see `crate::minigpt4_video` for how moviepy
/// turns the printed text into numbers).
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerTiming {
    /// `AVFormatContext.duration` in microseconds (`None` = `N/A`).
    pub duration_us: Option<i64>,
    /// The first video stream's `r_frame_rate` (printed as `tbr`), when set.
    pub r_frame_rate: Option<(i32, i32)>,
    /// The first video stream's `avg_frame_rate` (printed as `fps`), when set.
    pub avg_frame_rate: Option<(i32, i32)>,
    /// Index of that stream (`None`: the file has no video stream with a size).
    pub video_stream: Option<usize>,
}

fn rational(r: ffmpeg::Rational) -> Option<(i32, i32)> {
    (r.numerator() != 0 && r.denominator() != 0).then(|| (r.numerator(), r.denominator()))
}

/// Opens `path` as `ffmpeg -i` does (`avformat_open_input` + `avformat_find_stream_info`)
/// and reports its duration and the frame rates of its first video stream that has a
/// picture size (the first `Video: … WxH` line of the CLI's dump).
pub fn container_timing(path: impl AsRef<Path>) -> Result<ContainerTiming, DecodeError> {
    let input = open_input(path.as_ref())?;
    let duration = input.duration();
    let stream = input.streams().find(|s| {
        let p = s.parameters();
        p.medium() == MediaType::Video
            && unsafe { (*p.as_ptr()).width > 0 && (*p.as_ptr()).height > 0 }
    });
    Ok(ContainerTiming {
        duration_us: (duration != ffi::AV_NOPTS_VALUE).then_some(duration),
        r_frame_rate: stream.as_ref().and_then(|s| rational(s.rate())),
        avg_frame_rate: stream.as_ref().and_then(|s| rational(s.avg_frame_rate())),
        video_stream: stream.map(|s| s.index()),
    })
}

/// OpenCV's rotation angle: `-cvRound(av_display_rotation_get(matrix))`, in `[0, 360)`.
fn display_rotation(stream: &ffmpeg::format::stream::Stream) -> u32 {
    for sd in stream.side_data() {
        if sd.kind() == ffmpeg::codec::packet::side_data::Type::DisplayMatrix {
            let data = sd.data();
            if data.len() < 9 * 4 {
                return 0;
            }
            let mut m = [0i32; 9];
            for (i, v) in m.iter_mut().enumerate() {
                let mut b = [0u8; 4];
                b.copy_from_slice(&data[i * 4..i * 4 + 4]);
                *v = i32::from_ne_bytes(b);
            }
            let theta = unsafe { ffi::av_display_rotation_get(m.as_ptr()) };
            if !theta.is_finite() {
                return 0;
            }
            // cvRound: round half to even.
            let angle = -(theta.round_ties_even() as i64);
            return angle.rem_euclid(360) as u32;
        }
    }
    0
}

/// A video opened the way `cv2.VideoCapture(path)` opens it; frames come out in decode
/// output order, one per [`OpenCvCapture::grab`] / [`OpenCvCapture::read`].
pub struct OpenCvCapture {
    path: PathBuf,
    input: ffmpeg::format::context::Input,
    stream_index: usize,
    decoder: ffmpeg::decoder::Opened,
    reader: PacketReader,
    packet: ffmpeg::Packet,
    /// The last grabbed picture.
    frame: ffmpeg::Frame,
    has_frame: bool,
    /// The stream's `nb_frames` (0 = unknown).
    nb_frames: i64,
    /// Frames grabbed so far (OpenCV's `frame_number`).
    frame_number: i64,
    /// Clockwise rotation applied to retrieved frames (0, 90, 180, 270).
    rotation: u32,
    /// Set once a grab failed: the reference's loop stops there.
    finished: bool,
    /// Why the last grab ended the video, when it was not a clean end of file.
    stop_reason: Option<String>,
    converter: BgrConverter,
}

impl std::fmt::Debug for OpenCvCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenCvCapture")
            .field("path", &self.path)
            .field("stream_index", &self.stream_index)
            .field("frame_number", &self.frame_number)
            .field("rotation", &self.rotation)
            .finish()
    }
}

impl OpenCvCapture {
    /// Opens `path` and its first video stream's decoder.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, DecodeError> {
        let path = path.as_ref();
        let input = open_input(path)?;
        let (stream_index, params, nb_frames, rotation) = {
            let stream = input
                .streams()
                .find(|s| s.parameters().medium() == MediaType::Video)
                .ok_or_else(|| DecodeError::NoVideoStream {
                    path: path.to_path_buf(),
                })?;
            let rotation = match display_rotation(&stream) {
                r @ (90 | 180 | 270) => r,
                _ => 0,
            };
            (
                stream.index(),
                stream.parameters(),
                stream.frames().max(0),
                rotation,
            )
        };
        let codec_id = unsafe { (*params.as_ptr()).codec_id };
        let codec = unsafe { ffi::avcodec_find_decoder(codec_id) };
        if codec.is_null() {
            return Err(DecodeError::UnsupportedCodec {
                path: path.to_path_buf(),
                codec: codec_name(codec_id),
                cause: "this FFmpeg build has no decoder for it".into(),
            });
        }
        let mut ctx = ffmpeg::codec::Context::from_parameters(params)
            .map_err(|e| DecodeError::ffmpeg(path, "copying codec parameters", e))?;
        unsafe {
            let c = ctx.as_mut_ptr();
            (*c).thread_count = 0;
            let ret = ffi::avcodec_open2(c, codec, ptr::null_mut());
            if ret < 0 {
                return Err(DecodeError::UnsupportedCodec {
                    path: path.to_path_buf(),
                    codec: codec_name(codec_id),
                    cause: format!("cannot open decoder: {}", ffmpeg::Error::from(ret)),
                });
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            input,
            stream_index,
            decoder: ffmpeg::decoder::Opened(ffmpeg::decoder::Decoder(ctx)),
            reader: PacketReader::default(),
            packet: ffmpeg::Packet::empty(),
            // SAFETY: a fresh `av_frame_alloc`ed frame.
            frame: unsafe { ffmpeg::Frame::empty() },
            has_frame: false,
            nb_frames,
            frame_number: 0,
            rotation,
            finished: false,
            stop_reason: None,
            converter: BgrConverter::new(),
        })
    }

    /// The file being read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Frames grabbed so far.
    pub fn frames_read(&self) -> usize {
        self.frame_number as usize
    }

    /// Clockwise rotation applied to retrieved frames (0, 90, 180 or 270).
    pub fn rotation_degrees(&self) -> u32 {
        self.rotation
    }

    /// When the video ended for another reason than a clean end of file (a packet the
    /// decoder rejected, too many decode failures, read errors, ...), that reason.
    pub fn stop_reason(&self) -> Option<&str> {
        self.stop_reason.as_deref()
    }

    fn stop(&mut self, reason: Option<String>) -> bool {
        self.finished = true;
        self.has_frame = false;
        if reason.is_some() {
            self.stop_reason = reason;
        }
        false
    }

    /// `cv2.VideoCapture.grab()`: decodes the next frame without converting it. Returns
    /// `false` at the end of the video (also after the stop conditions in the module
    /// docs); once `false`, it stays `false`.
    pub fn grab(&mut self) -> bool {
        if self.finished {
            return false;
        }
        if self.nb_frames > 0 && self.frame_number > self.nb_frames {
            return self.stop(None);
        }
        // A frame the decoder already holds.
        if self.decoder.receive_frame(&mut self.frame).is_ok() {
            self.frame_number += 1;
            self.has_frame = true;
            return true;
        }
        let mut read_attempts = 0usize;
        let mut decode_attempts = 0usize;
        loop {
            let at_eof = match self.reader.read(&mut self.input, &mut self.packet) {
                ReadOutcome::Eof => true,
                ReadOutcome::Packet => {
                    if self.packet.stream() != self.stream_index {
                        read_attempts += 1;
                        if read_attempts > MAX_READ_ATTEMPTS {
                            return self.stop(Some(format!(
                                "more than {MAX_READ_ATTEMPTS} packets of other streams in a \
                                 row (OpenCV's read-attempt limit)"
                            )));
                        }
                        continue;
                    }
                    false
                }
            };
            let sent = if at_eof {
                // OpenCV sends an empty packet: enter (or repeat) draining mode.
                self.decoder.send_eof()
            } else {
                self.decoder.send_packet(&self.packet)
            };
            if let Err(e) = sent {
                let reason = match e {
                    ffmpeg::Error::Eof => self
                        .reader
                        .truncated
                        .then(|| "the file ended after repeated read errors".to_string()),
                    other => Some(format!("the decoder rejected a packet: {other}")),
                };
                return self.stop(reason);
            }
            match self.decoder.receive_frame(&mut self.frame) {
                Ok(()) => {
                    self.frame_number += 1;
                    self.has_frame = true;
                    return true;
                }
                Err(ffmpeg::Error::Other { errno }) if errno == ffmpeg::error::EAGAIN => {}
                Err(e) => {
                    decode_attempts += 1;
                    if decode_attempts > MAX_DECODE_ATTEMPTS {
                        let reason = (!matches!(e, ffmpeg::Error::Eof)).then(|| {
                            format!("more than {MAX_DECODE_ATTEMPTS} decode failures: {e}")
                        });
                        return self.stop(reason);
                    }
                }
            }
        }
    }

    /// `cv2.VideoCapture.retrieve()` with the reference's BGR→RGB flip: the last grabbed
    /// frame as RGB, rotated per the display matrix. Errors when nothing was grabbed or
    /// the picture cannot be converted.
    pub fn retrieve(&mut self) -> Result<RgbImage, DecodeError> {
        if !self.has_frame {
            return Err(DecodeError::ffmpeg(
                &self.path,
                "retrieve",
                "no frame was grabbed (end of video)",
            ));
        }
        let ctx = unsafe { self.decoder.as_ptr() };
        let coded = unsafe { ((*ctx).coded_width, (*ctx).coded_height) };
        let img =
            unsafe { self.converter.convert(self.frame.as_ptr(), coded) }.map_err(|e| match e {
                ConvertError::Dimensions(width, height) => DecodeError::Dimensions {
                    path: self.path.clone(),
                    width,
                    height,
                },
                ConvertError::Unsupported(cause) => DecodeError::UnsupportedCodec {
                    path: self.path.clone(),
                    codec: unsafe { codec_name((*ctx).codec_id) },
                    cause,
                },
                ConvertError::Ffmpeg(cause) => {
                    DecodeError::ffmpeg(&self.path, "BGR conversion (swscale)", cause)
                }
            })?;
        Ok(rotate(img, self.rotation))
    }

    /// `cv2.VideoCapture.read()` (+ BGR→RGB): the next frame, `None` at the end.
    pub fn read(&mut self) -> Result<Option<RgbImage>, DecodeError> {
        if !self.grab() {
            return Ok(None);
        }
        self.retrieve().map(Some)
    }
}

/// The swscale set-up of OpenCV's `retrieveFrame` (module docs).
struct BgrConverter {
    sws: *mut ffi::SwsContext,
    key: (i32, i32, i32),
    out: *mut ffi::AVFrame,
}

impl BgrConverter {
    fn new() -> Self {
        Self {
            sws: ptr::null_mut(),
            key: (-1, 0, 0),
            out: ptr::null_mut(),
        }
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
        }
        self.key = (-1, 0, 0);
    }

    /// Whether every plane of `src` is wide enough to be read `width` pixels wide, with
    /// room for a left crop offset (the decoder may have moved the data pointers right
    /// by up to `width - frame width` pixels when it applied cropping).
    unsafe fn planes_fit(src: *const ffi::AVFrame, pix: ffi::AVPixelFormat, width: i32) -> bool {
        unsafe {
            let mut need = [0i32; 4];
            let mut own = [0i32; 4];
            if ffi::av_image_fill_linesizes(need.as_mut_ptr(), pix, width) < 0
                || ffi::av_image_fill_linesizes(own.as_mut_ptr(), pix, (*src).width) < 0
            {
                return false;
            }
            (0..4).all(|p| {
                need[p] == 0
                    || (*src).data[p].is_null()
                    || (*src).linesize[p] >= need[p] + (need[p] - own[p])
            })
        }
    }

    /// Converts `src` to RGB (BGR24 through swscale, then flipped), cropped to its size.
    unsafe fn convert(
        &mut self,
        src: *const ffi::AVFrame,
        coded: (i32, i32),
    ) -> Result<RgbImage, ConvertError> {
        unsafe {
            let (pix, w, h) = checked_frame(src)?;
            let fmt = pix as i32;
            // OpenCV's buffer size: the coded size (when usable, see the module docs).
            let (cw, ch) = coded;
            let bw = if cw >= w && cw as u32 <= MAX_DIMENSION && Self::planes_fit(src, pix, cw) {
                cw
            } else {
                w
            };
            let bh = if ch >= h && ch as u32 <= MAX_DIMENSION {
                ch
            } else {
                h
            };
            if self.key != (fmt, bw, bh) {
                self.release();
                self.sws = ffi::sws_getContext(
                    bw,
                    bh,
                    pix,
                    bw,
                    bh,
                    ffi::AVPixelFormat::AV_PIX_FMT_BGR24,
                    ffi::SWS_BICUBIC,
                    ptr::null_mut(),
                    ptr::null_mut(),
                    ptr::null(),
                );
                if self.sws.is_null() {
                    return Err(ConvertError::Ffmpeg("sws_getContext failed".into()));
                }
                let mut out = ffi::av_frame_alloc();
                if out.is_null() {
                    self.release();
                    return Err(ConvertError::Ffmpeg("av_frame_alloc failed".into()));
                }
                (*out).format = ffi::AVPixelFormat::AV_PIX_FMT_BGR24 as i32;
                (*out).width = bw;
                (*out).height = bh;
                let ret = ffi::av_frame_get_buffer(out, 32);
                if ret < 0 {
                    ffi::av_frame_free(&mut out);
                    self.release();
                    return Err(ConvertError::Ffmpeg(format!(
                        "cannot allocate a {bw}x{bh} BGR frame: {}",
                        ffmpeg::Error::from(ret)
                    )));
                }
                // Deterministic content for rows swscale might not write.
                ptr::write_bytes((*out).data[0], 0, (*out).linesize[0] as usize * bh as usize);
                self.out = out;
                self.key = (fmt, bw, bh);
            }
            let ret = ffi::sws_scale(
                self.sws,
                (*src).data.as_ptr() as *const *const u8,
                (*src).linesize.as_ptr(),
                0,
                h,
                (*self.out).data.as_ptr(),
                (*self.out).linesize.as_ptr(),
            );
            if ret < 0 {
                // OpenCV ignores the failure and returns whatever its buffer holds;
                // an error is more useful.
                return Err(ConvertError::Ffmpeg(format!(
                    "sws_scale failed ({}) for a {w}x{h} frame converted at {bw}x{bh}",
                    ffmpeg::Error::from(ret)
                )));
            }
            let (wu, hu) = (w as usize, h as usize);
            let stride = (*self.out).linesize[0] as usize;
            let base = (*self.out).data[0];
            let mut data = Vec::with_capacity(wu * hu * 3);
            for y in 0..hu {
                let line = std::slice::from_raw_parts(base.add(y * stride), wu * 3);
                for px in line.chunks_exact(3) {
                    data.extend_from_slice(&[px[2], px[1], px[0]]);
                }
            }
            Ok(RgbImage {
                width: w as u32,
                height: h as u32,
                data,
            })
        }
    }
}

impl Drop for BgrConverter {
    fn drop(&mut self) {
        self.release();
    }
}
