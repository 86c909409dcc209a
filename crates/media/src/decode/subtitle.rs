//! Text subtitle streams inside media containers (MP4 `mov_text`, Matroska `subrip` /
//! `webvtt` / `ass`, …) → [`Cue`]s, as if the stream had been extracted to a `.vtt`
//! (`ffmpeg -i video.mkv subs.vtt`) and read by the MiniGPT4-Video reference.
//!
//! ```text
//! first text subtitle stream ─packets─▶ FFmpeg subtitle decoder ─▶ ASS events
//!   ─Text field, override blocks {…} removed, \N \n → newline, \h → U+00A0─▶ lines
//!   ─tags <…> removed, stripped, newlines → spaces (crate::subtitles)─▶ Cue.text
//! packet pts / duration − container start time ─▶ exact ms ─reference_ms─▶ Cue times
//! ```
//!
//! * Stream choice: the first stream (by index) whose codec FFmpeg marks as text-based
//!   (`AV_CODEC_PROP_TEXT_SUB`). Bitmap subtitles (DVD, PGS) carry no text and are
//!   ignored; a file with none of the former gives `None`.
//! * Times: `pts` relative to the container's start time (the CLI's default offset),
//!   rounded to the nearest millisecond (the WebVTT muxer's 1/1000 time base), then the
//!   reference's float truncation ([`crate::subtitles::reference_ms_from_exact`]). The
//!   end is `pts + duration`; without a packet duration, the decoder's
//!   `end_display_time`; without either, the start.
//! * Cues whose text is empty are dropped: MP4 fills the gaps between cues with empty
//!   samples, which a `.vtt` does not have.
//! * Packets the decoder rejects (e.g. invalid UTF-8) are skipped; a stream where every
//!   packet fails is an error.

use std::ffi::CStr;
use std::path::Path;
use std::ptr;

use ffmpeg::ffi;
use ffmpeg::media::Type as MediaType;
use ffmpeg_next as ffmpeg;

use super::input::{codec_name, open_input, PacketReader, ReadOutcome};
use super::DecodeError;
use crate::subtitles::{reference_cue_text, reference_ms_from_exact, Cue};

/// Cues of the first text subtitle stream of `path`, in packet order; `None` when the
/// file has no text subtitle stream (see the module docs).
pub fn read_subtitle_stream(path: impl AsRef<Path>) -> Result<Option<Vec<Cue>>, DecodeError> {
    let path = path.as_ref();
    let mut input = open_input(path)?;
    let found = input.streams().find(|s| {
        let p = s.parameters();
        if p.medium() != MediaType::Subtitle {
            return false;
        }
        let desc = unsafe { ffi::avcodec_descriptor_get((*p.as_ptr()).codec_id) };
        !desc.is_null() && unsafe { (*desc).props } & ffi::AV_CODEC_PROP_TEXT_SUB != 0
    });
    let Some((stream_index, time_base, params)) =
        found.map(|s| (s.index(), s.time_base(), s.parameters()))
    else {
        return Ok(None);
    };
    let codec_id = unsafe { (*params.as_ptr()).codec_id };
    let codec = unsafe { ffi::avcodec_find_decoder(codec_id) };
    if codec.is_null() {
        return Err(DecodeError::UnsupportedCodec {
            path: path.to_path_buf(),
            codec: codec_name(codec_id),
            cause: "this FFmpeg build has no decoder for this subtitle codec".into(),
        });
    }
    let mut ctx = ffmpeg::codec::Context::from_parameters(params)
        .map_err(|e| DecodeError::ffmpeg(path, "copying subtitle codec parameters", e))?;
    let c = unsafe { ctx.as_mut_ptr() };
    unsafe {
        (*c).pkt_timebase = time_base.into();
        let ret = ffi::avcodec_open2(c, codec, ptr::null_mut());
        if ret < 0 {
            return Err(DecodeError::UnsupportedCodec {
                path: path.to_path_buf(),
                codec: codec_name(codec_id),
                cause: format!("cannot open subtitle decoder: {}", ffmpeg::Error::from(ret)),
            });
        }
    }
    // The CLI shifts timestamps by the container's start time.
    let start_time = unsafe { (*input.as_ptr()).start_time };
    let tb = ffi::AVRational {
        num: time_base.numerator(),
        den: time_base.denominator(),
    };
    if tb.num <= 0 || tb.den <= 0 {
        return Err(DecodeError::corrupt(
            path,
            "the subtitle stream has no valid time base",
        ));
    }
    let offset = if start_time == ffi::AV_NOPTS_VALUE {
        0
    } else {
        unsafe { ffi::av_rescale_q(start_time, ffi::AV_TIME_BASE_Q, tb) }
    };
    // `av_rescale_q_rnd(ts - offset, tb, 1/1000, NEAR_INF)`, negative times clamped to 0.
    let to_ms = |ts: i64| -> u64 {
        let num = i128::from(ts.saturating_sub(offset)) * i128::from(tb.num) * 1000;
        let den = i128::from(tb.den);
        if num <= 0 {
            0
        } else {
            u64::try_from((num + den / 2) / den).unwrap_or(u64::MAX)
        }
    };

    let mut reader = PacketReader::default();
    let mut packet = ffmpeg::Packet::empty();
    let mut cues = Vec::new();
    let (mut ok_packets, mut bad_packets) = (0usize, 0usize);
    let mut last_error = None;
    loop {
        match reader.read(&mut input, &mut packet) {
            ReadOutcome::Eof => break,
            ReadOutcome::Packet => {}
        }
        if packet.stream() != stream_index {
            continue;
        }
        let Some(pts) = packet.pts().or_else(|| packet.dts()) else {
            bad_packets += 1;
            last_error = Some("a subtitle packet without a timestamp".to_string());
            continue;
        };
        // SAFETY: zero-initialised AVSubtitle is what avcodec_decode_subtitle2 expects;
        // it is freed with avsubtitle_free whenever the decoder filled it.
        let mut sub: ffi::AVSubtitle = unsafe { std::mem::zeroed() };
        let mut got = 0i32;
        let ret = unsafe {
            ffi::avcodec_decode_subtitle2(
                c,
                &mut sub,
                &mut got,
                ffmpeg::packet::Ref::as_ptr(&packet) as *mut ffi::AVPacket,
            )
        };
        if ret < 0 {
            bad_packets += 1;
            last_error = Some(ffmpeg::Error::from(ret).to_string());
            continue;
        }
        ok_packets += 1;
        if got == 0 {
            continue;
        }
        let mut text = String::new();
        unsafe {
            for i in 0..sub.num_rects as usize {
                let rect = *sub.rects.add(i);
                if rect.is_null() {
                    continue;
                }
                let piece = if !(*rect).ass.is_null() {
                    ass_event_to_text(&CStr::from_ptr((*rect).ass).to_string_lossy())
                } else if !(*rect).text.is_null() {
                    CStr::from_ptr((*rect).text).to_string_lossy().into_owned()
                } else {
                    continue;
                };
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(&piece);
            }
        }
        let end_display = sub.end_display_time;
        unsafe { ffi::avsubtitle_free(&mut sub) };
        let lines: Vec<&str> = text.split('\n').collect();
        let text = reference_cue_text(&lines);
        if text.is_empty() {
            continue;
        }
        let start = to_ms(pts);
        let end = if packet.duration() > 0 {
            to_ms(pts.saturating_add(packet.duration()))
        } else if end_display > 0 && end_display != u32::MAX {
            start + u64::from(end_display)
        } else {
            start
        };
        cues.push(Cue {
            start_ms: reference_ms_from_exact(start),
            end_ms: reference_ms_from_exact(end),
            text,
        });
    }
    if ok_packets == 0 && bad_packets > 0 {
        return Err(DecodeError::corrupt(
            path,
            format!(
                "no subtitle packet of stream {stream_index} ({}) could be decoded (last \
                 error: {})",
                codec_name(codec_id),
                last_error.unwrap_or_default()
            ),
        ));
    }
    Ok(Some(cues))
}

/// The text of a decoded ASS event (`ReadOrder,Layer,Style,Name,MarginL,MarginR,MarginV,
/// Effect,Text`; an old-style `Dialogue: Layer,Start,End,…,Text` line also works) with
/// the markup removed: `{…}` override blocks dropped, `\N` and `\n` → newline, `\h` →
/// no-break space.
pub(crate) fn ass_event_to_text(event: &str) -> String {
    let (body, fields) = match event.strip_prefix("Dialogue:") {
        Some(rest) => (rest, 9),
        None => (event, 8),
    };
    let mut text = body;
    for _ in 0..fields {
        match text.find(',') {
            Some(i) => text = &text[i + 1..],
            None => break,
        }
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.char_indices().peekable();
    while let Some((i, ch)) = chars.next() {
        match ch {
            '{' => match text[i..].find('}') {
                Some(close) => {
                    // Skip to just after the closing brace.
                    let stop = i + close;
                    while chars.peek().is_some_and(|&(j, _)| j <= stop) {
                        chars.next();
                    }
                }
                None => out.push(ch),
            },
            '\\' => match chars.peek().map(|&(_, c)| c) {
                Some('N') | Some('n') => {
                    chars.next();
                    out.push('\n');
                }
                Some('h') => {
                    chars.next();
                    out.push('\u{a0}');
                }
                _ => out.push(ch),
            },
            _ => out.push(ch),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::ass_event_to_text;

    #[test]
    fn ass_markup_is_removed() {
        assert_eq!(
            ass_event_to_text("0,0,Default,,0,0,0,,{\\i1}Hello{\\i0}\\Nworld, yes"),
            "Hello\nworld, yes"
        );
        assert_eq!(
            ass_event_to_text("Dialogue: 0,0:00:01.00,0:00:02.00,Default,,0,0,0,,a\\hb"),
            "a\u{a0}b"
        );
        assert_eq!(
            ass_event_to_text("0,0,Default,,0,0,0,,open { brace"),
            "open { brace"
        );
    }
}
