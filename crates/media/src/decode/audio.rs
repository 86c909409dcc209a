//! Audio decoding: the `ffmpeg -ac 1 -ar 16000 -f s16le` path used for the audio track of
//! videos, and native-rate float decoding for audio files.

use std::path::Path;
use std::ptr;

use ffmpeg::ffi;
use ffmpeg::media::Type as MediaType;
use ffmpeg_next as ffmpeg;

use super::input::{open_input, StreamDecoder};
use super::DecodeError;

/// Output rate of [`decode_audio_16k_mono`].
pub const TARGET_SAMPLE_RATE: u32 = 16_000;
/// Channel counts above this are rejected as corrupt.
const MAX_CHANNELS: i32 = 1024;
/// Bound on the resampler-drain loop.
const MAX_FLUSH_ROUNDS: usize = 4096;

fn open_audio(path: &Path) -> Result<StreamDecoder, DecodeError> {
    let input = open_input(path)?;
    let index = input
        .streams()
        .best(MediaType::Audio)
        .map(|s| s.index())
        .ok_or_else(|| DecodeError::NoAudioStream {
            path: path.to_path_buf(),
        })?;
    StreamDecoder::open(path, input, index, 1, u64::MAX)
}

/// Sample format, rate and channel layout of a decoded audio frame, validated.
struct FrameFormat {
    format: ffi::AVSampleFormat,
    rate: i32,
    channels: i32,
    samples: i32,
}

fn frame_format(path: &Path, f: *const ffi::AVFrame) -> Result<FrameFormat, DecodeError> {
    use ffi::AVSampleFormat::*;
    let (fmt, rate, channels, samples) = unsafe {
        (
            (*f).format,
            (*f).sample_rate,
            (*f).ch_layout.nb_channels,
            (*f).nb_samples,
        )
    };
    let format = match fmt {
        0 => AV_SAMPLE_FMT_U8,
        1 => AV_SAMPLE_FMT_S16,
        2 => AV_SAMPLE_FMT_S32,
        3 => AV_SAMPLE_FMT_FLT,
        4 => AV_SAMPLE_FMT_DBL,
        5 => AV_SAMPLE_FMT_U8P,
        6 => AV_SAMPLE_FMT_S16P,
        7 => AV_SAMPLE_FMT_S32P,
        8 => AV_SAMPLE_FMT_FLTP,
        9 => AV_SAMPLE_FMT_DBLP,
        10 => AV_SAMPLE_FMT_S64,
        11 => AV_SAMPLE_FMT_S64P,
        other => {
            return Err(DecodeError::corrupt(
                path,
                format!("decoder produced an unknown sample format ({other})"),
            ))
        }
    };
    if rate <= 0 || !(1..=MAX_CHANNELS).contains(&channels) || samples < 0 {
        return Err(DecodeError::corrupt(
            path,
            format!("invalid audio frame: {rate} Hz, {channels} channels, {samples} samples"),
        ));
    }
    if samples > 0 && unsafe { (*f).extended_data.is_null() } {
        return Err(DecodeError::corrupt(path, "audio frame without data"));
    }
    Ok(FrameFormat {
        format,
        rate,
        channels,
        samples,
    })
}

/// Decodes the best audio stream of `path` to 16 kHz mono, reproducing
///
/// ```text
/// ffmpeg -nostdin -i FILE -vn -acodec pcm_s16le -ac 1 -ar 16000 -f s16le -
/// ```
///
/// followed by `int16 / 32768` (VideoLLaMA2's `process_audio_from_video`). The CLI converts
/// through one auto-inserted `aresample` filter, i.e. a single swresample context from the
/// decoder's format to mono S16 at 16 kHz with default options (stereo→mono mixes both
/// channels at 0.5 each after swresample's normalisation, quantised to S16 without
/// dither). This does the same with `swr_convert`, and drains the resampler at the end as
/// the filter does at EOF, so the sample count and values match the CLI byte for byte
/// (checked by `tests/decode_golden.rs`).
///
/// Packets the decoder rejects are skipped (as the CLI does). If the stream's format
/// changes mid-stream the resampler is drained and rebuilt.
pub fn decode_audio_16k_mono(path: impl AsRef<Path>) -> Result<Vec<f32>, DecodeError> {
    let path = path.as_ref();
    let mut dec = open_audio(path)?;
    let mut out: Vec<i16> = Vec::new();
    let mut resampler: Option<Resampler> = None;
    let mut frames = 0usize;
    while let Some(frame) = dec.next_frame(path)? {
        let f = unsafe { frame.as_ptr() };
        let ff = frame_format(path, f)?;
        if ff.samples == 0 {
            continue;
        }
        frames += 1;
        let same = resampler
            .as_ref()
            .is_some_and(|r| r.accepts(f, ff.format, ff.rate));
        if !same {
            if let Some(mut old) = resampler.take() {
                old.flush(path, &mut out)?;
            }
            resampler = Some(Resampler::new(path, f, ff.format, ff.rate)?);
        }
        resampler
            .as_mut()
            .expect("resampler was just created")
            .convert(path, f, ff.samples, &mut out)?;
    }
    if let Some(mut r) = resampler {
        r.flush(path, &mut out)?;
    }
    if frames == 0 {
        return Err(no_samples_error(path, &dec));
    }
    Ok(out.into_iter().map(|s| f32::from(s) / 32768.0).collect())
}

/// Decodes the best audio stream of `path` at its native sample rate, returning every
/// channel as `f32` in `[-1, 1)` and the sample rate.
///
/// Integer PCM is scaled the way soundfile/libsndfile reads it as float: `x / 2^(bits-1)`
/// (S16: `x / 32768`, exact; S32 and 24-bit-in-S32: `x / 2^31`; U8: `(x - 128) / 128`);
/// float formats are passed through. For PCM WAV this is bit-identical to the reference's
/// `soundfile.read` (float64) rounded to f32. Compressed formats (MP3, Vorbis, AAC) go
/// through FFmpeg's decoders, which can differ slightly from libsndfile's.
///
/// An error is returned if the sample rate or channel count changes mid-stream.
pub fn decode_audio(path: impl AsRef<Path>) -> Result<(Vec<Vec<f32>>, u32), DecodeError> {
    let path = path.as_ref();
    let mut dec = open_audio(path)?;
    let mut channels: Vec<Vec<f32>> = Vec::new();
    let mut rate: Option<i32> = None;
    while let Some(frame) = dec.next_frame(path)? {
        let f = unsafe { frame.as_ptr() };
        let ff = frame_format(path, f)?;
        if ff.samples == 0 {
            continue;
        }
        match rate {
            None => {
                rate = Some(ff.rate);
                channels = vec![Vec::new(); ff.channels as usize];
            }
            Some(r) if r != ff.rate || channels.len() != ff.channels as usize => {
                return Err(DecodeError::corrupt(
                    path,
                    format!(
                        "audio format changed mid-stream ({} Hz × {} ch → {} Hz × {} ch)",
                        r,
                        channels.len(),
                        ff.rate,
                        ff.channels
                    ),
                ));
            }
            Some(_) => {}
        }
        append_as_f32(f, &ff, &mut channels);
    }
    match rate {
        Some(r) => Ok((channels, r as u32)),
        None => Err(no_samples_error(path, &dec)),
    }
}

fn no_samples_error(path: &Path, dec: &StreamDecoder) -> DecodeError {
    if dec.decode_errors > 0 || dec.reader().errors > 0 {
        DecodeError::corrupt(
            path,
            format!(
                "no audio could be decoded ({} decode errors, last: {}; {} read errors, last: {})",
                dec.decode_errors,
                dec.last_decode_error.as_deref().unwrap_or("-"),
                dec.reader().errors,
                dec.reader().last_error.as_deref().unwrap_or("-"),
            ),
        )
    } else {
        DecodeError::NoFrames {
            path: path.to_path_buf(),
            what: "the audio stream".into(),
        }
    }
}

/// Appends the samples of `f` (any sample format, planar or packed) to `channels`.
fn append_as_f32(f: *const ffi::AVFrame, ff: &FrameFormat, channels: &mut [Vec<f32>]) {
    use ffi::AVSampleFormat::*;
    let n = ff.samples as usize;
    let nch = channels.len();
    let planar = matches!(
        ff.format,
        AV_SAMPLE_FMT_U8P
            | AV_SAMPLE_FMT_S16P
            | AV_SAMPLE_FMT_S32P
            | AV_SAMPLE_FMT_FLTP
            | AV_SAMPLE_FMT_DBLP
            | AV_SAMPLE_FMT_S64P
    );
    // Plane pointer and element stride for channel `c`.
    let plane = |c: usize| -> (*const u8, usize, usize) {
        unsafe {
            if planar {
                (*(*f).extended_data.add(c) as *const u8, 0, 1)
            } else {
                (*(*f).extended_data as *const u8, c, nch)
            }
        }
    };
    macro_rules! read {
        ($t:ty, $conv:expr) => {{
            for (c, dst) in channels.iter_mut().enumerate() {
                let (p, offset, step) = plane(c);
                let p = p as *const $t;
                dst.reserve(n);
                for i in 0..n {
                    // Decoder-allocated buffers hold `n` samples per channel.
                    let v: $t = unsafe { ptr::read_unaligned(p.add(offset + i * step)) };
                    dst.push($conv(v));
                }
            }
        }};
    }
    match ff.format {
        AV_SAMPLE_FMT_U8 | AV_SAMPLE_FMT_U8P => read!(u8, |v: u8| (f32::from(v) - 128.0) / 128.0),
        AV_SAMPLE_FMT_S16 | AV_SAMPLE_FMT_S16P => read!(i16, |v: i16| f32::from(v) / 32768.0),
        AV_SAMPLE_FMT_S32 | AV_SAMPLE_FMT_S32P => {
            read!(i32, |v: i32| (f64::from(v) / 2_147_483_648.0) as f32)
        }
        AV_SAMPLE_FMT_FLT | AV_SAMPLE_FMT_FLTP => read!(f32, |v: f32| v),
        AV_SAMPLE_FMT_DBL | AV_SAMPLE_FMT_DBLP => read!(f64, |v: f64| v as f32),
        AV_SAMPLE_FMT_S64 | AV_SAMPLE_FMT_S64P => {
            read!(i64, |v: i64| (v as f64 / 9_223_372_036_854_775_808.0)
                as f32)
        }
        AV_SAMPLE_FMT_NONE | AV_SAMPLE_FMT_NB => {}
    }
}

/// One swresample context: decoder format → mono S16 at 16 kHz.
struct Resampler {
    swr: *mut ffi::SwrContext,
    in_layout: ffi::AVChannelLayout,
    in_format: ffi::AVSampleFormat,
    in_rate: i32,
}

impl Resampler {
    fn new(
        path: &Path,
        f: *const ffi::AVFrame,
        format: ffi::AVSampleFormat,
        rate: i32,
    ) -> Result<Self, DecodeError> {
        unsafe {
            let mut in_layout: ffi::AVChannelLayout = std::mem::zeroed();
            let ret = ffi::av_channel_layout_copy(&mut in_layout, &(*f).ch_layout);
            if ret < 0 {
                return Err(DecodeError::ffmpeg(
                    path,
                    "copying the channel layout",
                    ffmpeg::Error::from(ret),
                ));
            }
            let mut swr_layout: ffi::AVChannelLayout = std::mem::zeroed();
            if in_layout.order == ffi::AVChannelOrder::AV_CHANNEL_ORDER_UNSPEC {
                // Like the CLI's guess_input_channel_layout.
                ffi::av_channel_layout_default(&mut swr_layout, in_layout.nb_channels);
            } else {
                let ret = ffi::av_channel_layout_copy(&mut swr_layout, &in_layout);
                if ret < 0 {
                    ffi::av_channel_layout_uninit(&mut in_layout);
                    return Err(DecodeError::ffmpeg(
                        path,
                        "copying the channel layout",
                        ffmpeg::Error::from(ret),
                    ));
                }
            }
            let mut out_layout: ffi::AVChannelLayout = std::mem::zeroed();
            ffi::av_channel_layout_default(&mut out_layout, 1);
            let mut swr: *mut ffi::SwrContext = ptr::null_mut();
            let mut ret = ffi::swr_alloc_set_opts2(
                &mut swr,
                &mut out_layout,
                ffi::AVSampleFormat::AV_SAMPLE_FMT_S16,
                TARGET_SAMPLE_RATE as i32,
                &mut swr_layout,
                format,
                rate,
                0,
                ptr::null_mut(),
            );
            if ret >= 0 {
                ret = ffi::swr_init(swr);
            }
            ffi::av_channel_layout_uninit(&mut swr_layout);
            ffi::av_channel_layout_uninit(&mut out_layout);
            if ret < 0 || swr.is_null() {
                ffi::swr_free(&mut swr);
                ffi::av_channel_layout_uninit(&mut in_layout);
                return Err(DecodeError::ffmpeg(
                    path,
                    "setting up swresample",
                    ffmpeg::Error::from(ret.min(-1)),
                ));
            }
            Ok(Self {
                swr,
                in_layout,
                in_format: format,
                in_rate: rate,
            })
        }
    }

    fn accepts(&self, f: *const ffi::AVFrame, format: ffi::AVSampleFormat, rate: i32) -> bool {
        format == self.in_format
            && rate == self.in_rate
            && unsafe { ffi::av_channel_layout_compare(&self.in_layout, &(*f).ch_layout) } == 0
    }

    fn convert(
        &mut self,
        path: &Path,
        f: *const ffi::AVFrame,
        samples: i32,
        out: &mut Vec<i16>,
    ) -> Result<(), DecodeError> {
        unsafe {
            let cap = ffi::swr_get_out_samples(self.swr, samples);
            if cap < 0 {
                return Err(DecodeError::ffmpeg(
                    path,
                    "resampling",
                    ffmpeg::Error::from(cap),
                ));
            }
            let start = out.len();
            out.resize(start + cap as usize, 0);
            let mut dst = out.as_mut_ptr().add(start) as *mut u8;
            let n = ffi::swr_convert(
                self.swr,
                &mut dst,
                cap,
                (*f).extended_data as *mut *const u8,
                samples,
            );
            if n < 0 {
                out.truncate(start);
                return Err(DecodeError::ffmpeg(
                    path,
                    "resampling",
                    ffmpeg::Error::from(n),
                ));
            }
            out.truncate(start + n as usize);
        }
        Ok(())
    }

    /// Drains the samples swresample still buffers (the filter's EOF flush).
    fn flush(&mut self, path: &Path, out: &mut Vec<i16>) -> Result<(), DecodeError> {
        for _ in 0..MAX_FLUSH_ROUNDS {
            unsafe {
                let cap = ffi::swr_get_out_samples(self.swr, 0).max(4096);
                let start = out.len();
                out.resize(start + cap as usize, 0);
                let mut dst = out.as_mut_ptr().add(start) as *mut u8;
                let n = ffi::swr_convert(self.swr, &mut dst, cap, ptr::null_mut(), 0);
                if n < 0 {
                    out.truncate(start);
                    return Err(DecodeError::ffmpeg(
                        path,
                        "flushing the resampler",
                        ffmpeg::Error::from(n),
                    ));
                }
                out.truncate(start + n as usize);
                if n == 0 {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

impl Drop for Resampler {
    fn drop(&mut self) {
        unsafe {
            ffi::swr_free(&mut self.swr);
            ffi::av_channel_layout_uninit(&mut self.in_layout);
        }
    }
}
