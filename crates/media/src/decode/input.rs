//! Opening files, reading packets and running a decoder, shared by the video and audio
//! paths. Every loop here is bounded: it either consumes a packet from a finite file,
//! receives a frame, or gives up after a fixed number of consecutive errors.

use std::ffi::CStr;
use std::path::Path;
use std::ptr;
use std::sync::Once;

use ffmpeg::ffi;
use ffmpeg::format::context::Input;
use ffmpeg_next as ffmpeg;

use super::DecodeError;

/// After this many consecutive failed `av_read_frame` calls (not EOF) the input is treated
/// as ending there (truncated).
const MAX_CONSECUTIVE_READ_ERRORS: u32 = 64;
/// After this many failed `avcodec_send_packet`/`avcodec_receive_frame` calls in a row the
/// stream is declared corrupt.
const MAX_CONSECUTIVE_DECODE_ERRORS: u32 = 256;

/// Initialises FFmpeg once and sets its log level.
///
/// FFmpeg's own log output is silenced by default (everything it would report surfaces as a
/// [`DecodeError`]); set `VIDEOLLAMA_FFMPEG_LOG` to `quiet`, `panic`, `fatal`, `error`,
/// `warning`, `info`, `verbose` or `debug` to change that. This is process-global.
pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = ffmpeg::init();
        let level = match std::env::var("VIDEOLLAMA_FFMPEG_LOG")
            .unwrap_or_default()
            .to_ascii_lowercase()
            .as_str()
        {
            "panic" => ffi::AV_LOG_PANIC,
            "fatal" => ffi::AV_LOG_FATAL,
            "error" => ffi::AV_LOG_ERROR,
            "warning" => ffi::AV_LOG_WARNING,
            "info" => ffi::AV_LOG_INFO,
            "verbose" => ffi::AV_LOG_VERBOSE,
            "debug" => ffi::AV_LOG_DEBUG,
            _ => ffi::AV_LOG_QUIET,
        };
        unsafe { ffi::av_log_set_level(level) };
    });
}

/// Checks the path and opens it with libavformat (`avformat_open_input` +
/// `avformat_find_stream_info`).
///
/// The path is passed as a `file:` URL so that names such as `http://...`, `pipe:` or
/// `concat:...` are never interpreted as protocols.
pub(crate) fn open_input(path: &Path) -> Result<Input, DecodeError> {
    init();
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(DecodeError::NotFound {
                path: path.to_path_buf(),
            })
        }
        Err(source) => {
            return Err(DecodeError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if meta.is_dir() {
        return Err(DecodeError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other("is a directory, not a media file"),
        });
    }
    if meta.len() == 0 {
        return Err(DecodeError::EmptyFile {
            path: path.to_path_buf(),
        });
    }
    let Some(s) = path.to_str() else {
        return Err(DecodeError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other("path is not valid UTF-8 (FFmpeg needs a UTF-8 path)"),
        });
    };
    if s.contains('\0') {
        return Err(DecodeError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other("path contains a NUL byte"),
        });
    }
    let url = format!("file:{s}");
    ffmpeg::format::input(&url).map_err(|e| match e {
        ffmpeg::Error::Other { errno } if errno == libc_enoent() => DecodeError::NotFound {
            path: path.to_path_buf(),
        },
        ffmpeg::Error::InvalidData => DecodeError::NotMedia {
            path: path.to_path_buf(),
            cause: "unrecognised or invalid container data".into(),
        },
        other => DecodeError::NotMedia {
            path: path.to_path_buf(),
            cause: other.to_string(),
        },
    })
}

fn libc_enoent() -> i32 {
    ffmpeg::error::ENOENT
}

/// Outcome of one [`PacketReader::read`].
pub(crate) enum ReadOutcome {
    Packet,
    Eof,
}

/// `av_read_frame` with bounded error handling.
#[derive(Default)]
pub(crate) struct PacketReader {
    consecutive_errors: u32,
    /// Number of non-EOF read errors seen.
    pub errors: u32,
    /// The last non-EOF read error.
    pub last_error: Option<String>,
    /// True when reading stopped because of repeated errors rather than a clean EOF.
    pub truncated: bool,
    /// Packets read successfully (all streams).
    pub packets: u64,
}

impl PacketReader {
    pub fn read(&mut self, input: &mut Input, packet: &mut ffmpeg::Packet) -> ReadOutcome {
        loop {
            // `av_read_frame` overwrites the packet without releasing the buffer it
            // still holds, so a reused packet must be unreferenced first (ffmpeg-next's
            // `Packet::read` does not do it); without this every packet read leaked.
            // SAFETY: `packet` is a valid, owned AVPacket.
            unsafe { ffi::av_packet_unref(ffmpeg::packet::Mut::as_mut_ptr(packet)) };
            match packet.read(input) {
                Ok(()) => {
                    self.consecutive_errors = 0;
                    self.packets += 1;
                    return ReadOutcome::Packet;
                }
                Err(ffmpeg::Error::Eof) => return ReadOutcome::Eof,
                Err(e) => {
                    self.errors += 1;
                    self.consecutive_errors += 1;
                    self.last_error = Some(e.to_string());
                    if self.consecutive_errors >= MAX_CONSECUTIVE_READ_ERRORS {
                        self.truncated = true;
                        return ReadOutcome::Eof;
                    }
                }
            }
        }
    }
}

/// The name FFmpeg uses for a codec id (`h264`, `aac`, ...).
pub(crate) fn codec_name(id: ffi::AVCodecID) -> String {
    unsafe {
        let p = ffi::avcodec_get_name(id);
        if p.is_null() {
            "unknown".into()
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    }
}

/// One opened decoder fed from one stream of an [`Input`].
pub(crate) struct StreamDecoder {
    pub input: Input,
    pub stream_index: usize,
    decoder: ffmpeg::decoder::Opened,
    reader: PacketReader,
    packet: ffmpeg::Packet,
    /// A packet the decoder refused with EAGAIN, to be sent again.
    pending: bool,
    input_done: bool,
    decoder_done: bool,
    /// A frame handed back with [`StreamDecoder::push_back`].
    pushback: Option<ffmpeg::Frame>,
    consecutive_decode_errors: u32,
    /// Packets the decoder rejected or frames it failed to produce.
    pub decode_errors: u32,
    pub last_decode_error: Option<String>,
    /// Upper bound on the packets this decoder may read after opening or after a seek
    /// (guards against pathological input).
    max_packets: u64,
}

impl StreamDecoder {
    /// Opens the decoder of stream `stream_index`. `threads`: 0 = FFmpeg's automatic choice,
    /// 1 = no threading.
    pub fn open(
        path: &Path,
        input: Input,
        stream_index: usize,
        threads: usize,
        max_packets: u64,
    ) -> Result<Self, DecodeError> {
        let (params, time_base) = {
            let stream = input.stream(stream_index).ok_or_else(|| {
                DecodeError::ffmpeg(path, "stream selection", "stream index vanished")
            })?;
            (stream.parameters(), stream.time_base())
        };
        let codec_id = unsafe { (*params.as_ptr()).codec_id };
        let name = codec_name(codec_id);
        let codec = unsafe { ffi::avcodec_find_decoder(codec_id) };
        if codec.is_null() {
            return Err(DecodeError::UnsupportedCodec {
                path: path.to_path_buf(),
                codec: name,
                cause: "this FFmpeg build has no decoder for it".into(),
            });
        }
        let mut ctx = ffmpeg::codec::Context::from_parameters(params)
            .map_err(|e| DecodeError::ffmpeg(path, "copying codec parameters", e))?;
        unsafe {
            let c = ctx.as_mut_ptr();
            (*c).pkt_timebase = time_base.into();
            (*c).thread_count = threads as i32;
            (*c).thread_type = ffi::FF_THREAD_FRAME | ffi::FF_THREAD_SLICE;
            let ret = ffi::avcodec_open2(c, codec, ptr::null_mut());
            if ret < 0 {
                return Err(DecodeError::UnsupportedCodec {
                    path: path.to_path_buf(),
                    codec: name,
                    cause: format!("cannot open decoder: {}", ffmpeg::Error::from(ret)),
                });
            }
        }
        let decoder = ffmpeg::decoder::Opened(ffmpeg::decoder::Decoder(ctx));
        Ok(Self {
            input,
            stream_index,
            decoder,
            reader: PacketReader::default(),
            packet: ffmpeg::Packet::empty(),
            pending: false,
            input_done: false,
            decoder_done: false,
            pushback: None,
            consecutive_decode_errors: 0,
            decode_errors: 0,
            last_decode_error: None,
            max_packets,
        })
    }

    /// Read errors seen so far, for error messages.
    pub fn reader(&self) -> &PacketReader {
        &self.reader
    }

    /// Returns `frame` so that the next [`StreamDecoder::next_frame`] yields it again.
    pub fn push_back(&mut self, frame: ffmpeg::Frame) {
        self.pushback = Some(frame);
    }

    /// The next decoded frame in output order; `Ok(None)` once the stream is exhausted.
    ///
    /// Packets the decoder rejects (corrupt data) are skipped, as the `ffmpeg` CLI does;
    /// only a long run of consecutive failures is an error.
    pub fn next_frame(&mut self, path: &Path) -> Result<Option<ffmpeg::Frame>, DecodeError> {
        if let Some(f) = self.pushback.take() {
            return Ok(Some(f));
        }
        loop {
            if self.decoder_done {
                return Ok(None);
            }
            // SAFETY: a fresh `av_frame_alloc`ed frame, filled by `avcodec_receive_frame`.
            let mut frame = unsafe { ffmpeg::Frame::empty() };
            match self.decoder.receive_frame(&mut frame) {
                Ok(()) => {
                    self.consecutive_decode_errors = 0;
                    return Ok(Some(frame));
                }
                Err(ffmpeg::Error::Other { errno }) if errno == ffmpeg::error::EAGAIN => {
                    if self.input_done {
                        // Draining was requested but the decoder wants more input: nothing
                        // more will come.
                        self.decoder_done = true;
                        return Ok(None);
                    }
                    self.feed(path)?;
                }
                Err(ffmpeg::Error::Eof) => {
                    self.decoder_done = true;
                    return Ok(None);
                }
                Err(e) => self.note_decode_error(path, e)?,
            }
        }
    }

    fn note_decode_error(&mut self, path: &Path, e: ffmpeg::Error) -> Result<(), DecodeError> {
        self.decode_errors += 1;
        self.consecutive_decode_errors += 1;
        self.last_decode_error = Some(e.to_string());
        if self.consecutive_decode_errors >= MAX_CONSECUTIVE_DECODE_ERRORS {
            return Err(DecodeError::corrupt(
                path,
                format!(
                    "the decoder failed {} times in a row (last error: {e})",
                    self.consecutive_decode_errors
                ),
            ));
        }
        Ok(())
    }

    /// Sends the next packet of our stream (or EOF) to the decoder.
    fn feed(&mut self, path: &Path) -> Result<(), DecodeError> {
        loop {
            if !self.pending {
                if self.reader.packets >= self.max_packets {
                    return Err(DecodeError::corrupt(
                        path,
                        format!(
                            "more packets than the index pass found ({}); giving up",
                            self.max_packets
                        ),
                    ));
                }
                match self.reader.read(&mut self.input, &mut self.packet) {
                    ReadOutcome::Eof => {
                        self.input_done = true;
                        // Enter draining mode; an error here only means it already was.
                        let _ = self.decoder.send_eof();
                        return Ok(());
                    }
                    ReadOutcome::Packet => {
                        if self.packet.stream() != self.stream_index {
                            continue;
                        }
                    }
                }
            }
            self.pending = false;
            match self.decoder.send_packet(&self.packet) {
                Ok(()) => {
                    self.consecutive_decode_errors = 0;
                    return Ok(());
                }
                Err(ffmpeg::Error::Other { errno }) if errno == ffmpeg::error::EAGAIN => {
                    // Output must be drained first; resend this packet afterwards.
                    self.pending = true;
                    return Ok(());
                }
                Err(ffmpeg::Error::Eof) => {
                    // The decoder is already draining (should not happen); stop feeding.
                    self.input_done = true;
                    return Ok(());
                }
                Err(e) => {
                    // Corrupt packet: skip it like the ffmpeg CLI does.
                    self.note_decode_error(path, e)?;
                }
            }
        }
    }

    /// Seeks the demuxer of our stream to the last keyframe at or before `ts` (stream time
    /// base) and resets the decoder. Returns false when the demuxer cannot seek there.
    pub fn seek(&mut self, ts: i64) -> bool {
        let ret = unsafe {
            ffi::avformat_seek_file(
                self.input.as_mut_ptr(),
                self.stream_index as i32,
                i64::MIN,
                ts,
                ts,
                0,
            )
        };
        if ret < 0 {
            return false;
        }
        self.decoder.flush();
        self.reader.packets = 0;
        self.pending = false;
        self.input_done = false;
        self.decoder_done = false;
        self.pushback = None;
        true
    }
}
