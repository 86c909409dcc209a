//! MP4 writing through libavformat/libavcodec (ffmpeg-next), never the `ffmpeg` CLI.
//!
//! ```text
//! render(i) ─RGB24 [h, w, 3]─▶ BT.601 limited-range YUV 4:2:0 (integer, 2×2 chroma mean)
//!     ─libx264 (crf, preset, 1 thread)─▶ H.264 packets ─┐
//! mono f32 [n] ─1024-sample FLTP frames─▶ native AAC ──┴─interleaved─▶ MP4
//! ```
//!
//! Everything is single-threaded per clip and bit-exact flags are set on the muxer and the
//! AAC encoder, so the same input gives the same bytes (clips are generated in parallel
//! across clips instead). The colour conversion is done here rather than with swscale so
//! that it is an explicit, documented formula; the stream is tagged BT.601 limited range,
//! which is also what an untagged stream is decoded as.

use std::path::Path;

use ffmpeg::ffi;
use ffmpeg::{codec, encoder, format, frame, Dictionary, Packet, Rational};
use ffmpeg_next as ffmpeg;

use crate::error::{DemoDataError, Result};

/// FFmpeg initialisation and log level, shared with the decoder.
fn init() {
    videollama_media::decode::init_ffmpeg();
}

/// Encoder settings of one clip.
#[derive(Debug, Clone)]
pub(crate) struct EncodeSpec<'a> {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub frames: usize,
    /// x264 constant rate factor (0–51, lower = better).
    pub crf: u8,
    /// x264 preset name (`ultrafast` … `veryslow`).
    pub preset: &'a str,
    /// Mono samples and their rate; `None` writes no audio stream.
    pub audio: Option<(&'a [f32], u32)>,
    /// AAC bit rate, bits per second.
    pub audio_bit_rate: usize,
}

fn ff_err<'a>(path: &'a Path, op: &'static str) -> impl Fn(ffmpeg::Error) -> DemoDataError + 'a {
    move |e| DemoDataError::Encode {
        path: path.to_path_buf(),
        op,
        cause: e.to_string(),
    }
}

fn fail(path: &Path, op: &'static str, cause: impl Into<String>) -> DemoDataError {
    DemoDataError::Encode {
        path: path.to_path_buf(),
        op,
        cause: cause.into(),
    }
}

/// Converts one RGB24 frame into the Y, U, V planes of `out` (BT.601 limited range, the
/// classic integer approximation; chroma from the mean of each 2×2 block).
fn rgb_to_yuv420(rgb: &[u8], w: usize, h: usize, out: &mut frame::Video) {
    let ys = out.stride(0);
    {
        let y_plane = out.data_mut(0);
        for y in 0..h {
            let src = &rgb[y * w * 3..(y + 1) * w * 3];
            let row = &mut y_plane[y * ys..(y + 1) * ys];
            for (d, p) in row[..w].iter_mut().zip(src.chunks_exact(3)) {
                let (r, g, b) = (i32::from(p[0]), i32::from(p[1]), i32::from(p[2]));
                *d = (((66 * r + 129 * g + 25 * b + 128) >> 8) + 16) as u8;
            }
        }
    }
    let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
    let mut u = vec![0u8; cw * ch];
    let mut v = vec![0u8; cw * ch];
    for cy in 0..ch {
        for cx in 0..cw {
            let (mut r, mut g, mut b, mut n) = (0i32, 0i32, 0i32, 0i32);
            for y in 2 * cy..(2 * cy + 2).min(h) {
                for x in 2 * cx..(2 * cx + 2).min(w) {
                    let p = &rgb[(y * w + x) * 3..(y * w + x) * 3 + 3];
                    r += i32::from(p[0]);
                    g += i32::from(p[1]);
                    b += i32::from(p[2]);
                    n += 1;
                }
            }
            let (r, g, b) = ((r + n / 2) / n, (g + n / 2) / n, (b + n / 2) / n);
            u[cy * cw + cx] = (((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128) as u8;
            v[cy * cw + cx] = (((112 * r - 94 * g - 18 * b + 128) >> 8) + 128) as u8;
        }
    }
    for (plane, src) in [(1, &u), (2, &v)] {
        let s = out.stride(plane);
        let dst = out.data_mut(plane);
        for y in 0..ch {
            let row = &mut dst[y * s..(y + 1) * s];
            row[..cw].copy_from_slice(&src[y * cw..(y + 1) * cw]);
        }
    }
}

/// The x264 CPU capability list to use instead of auto-detection, if any.
///
/// x264's AVX-512 kernels (x264 0.164 as in Debian 12) make the bitstream depend on
/// uninitialised memory: with the same input and settings, the output changes with the
/// allocator's state (`MALLOC_PERTURB_`), within one process and between processes, also
/// with the `ffmpeg` CLI. Without them (AVX2 and below, or no asm) the output is
/// reproducible. So on AVX-512 machines x264 is limited to AVX2 (a CPU with AVX-512 has
/// AVX2, FMA3, BMI2 and LZCNT, which x264's "AVX2" level implies; all are checked anyway).
fn x264_cpu_override() -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        let avx512 = std::arch::is_x86_feature_detected!("avx512f");
        let avx2_level = std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("bmi1")
            && std::arch::is_x86_feature_detected!("bmi2")
            && std::arch::is_x86_feature_detected!("lzcnt");
        if avx512 {
            // Should an AVX-512 CPU lack part of the AVX2 level, fall back to no asm
            // rather than enable an instruction it does not have.
            return Some(if avx2_level { "AVX2,Cache64" } else { "0" });
        }
    }
    None
}

/// A new mono FLTP audio frame of `samples` samples at `rate`, filled from `src`.
fn audio_frame(path: &Path, src: &[f32], rate: u32, pts: i64) -> Result<frame::Audio> {
    let mut f = frame::Audio::empty();
    unsafe {
        let p = f.as_mut_ptr();
        (*p).format = ffi::AVSampleFormat::AV_SAMPLE_FMT_FLTP as i32;
        (*p).nb_samples = src.len() as i32;
        (*p).sample_rate = rate as i32;
        ffi::av_channel_layout_default(&mut (*p).ch_layout, 1);
        if ffi::av_frame_get_buffer(p, 0) < 0 || (*p).data[0].is_null() {
            return Err(fail(
                path,
                "allocating an audio frame",
                "av_frame_get_buffer failed",
            ));
        }
        std::ptr::copy_nonoverlapping(src.as_ptr(), (*p).data[0] as *mut f32, src.len());
        (*p).pts = pts;
    }
    Ok(f)
}

/// Writes one MP4 to `path`: `spec.frames` frames produced by `render(i, rgb)` (which must
/// fill the whole `height × width × 3` buffer) and, optionally, the audio samples.
pub(crate) fn write_mp4(
    path: &Path,
    spec: &EncodeSpec<'_>,
    mut render: impl FnMut(usize, &mut [u8]),
) -> Result<()> {
    init();
    let (w, h) = (spec.width as usize, spec.height as usize);
    if w == 0 || h == 0 || w % 2 == 1 || h % 2 == 1 {
        return Err(fail(
            path,
            "configuring the video encoder",
            format!("frame size {w}x{h} must be even and non-zero for yuv420p"),
        ));
    }
    let fps = spec.fps as i32;
    let mut octx = format::output_as(path, "mp4").map_err(ff_err(path, "creating the MP4"))?;
    // The constant's integer type differs between FFmpeg binding versions.
    #[allow(clippy::unnecessary_cast)]
    let bitexact = ffi::AVFMT_FLAG_BITEXACT as std::os::raw::c_int;
    unsafe { (*octx.as_mut_ptr()).flags |= bitexact };
    let global_header = octx.format().flags().contains(format::Flags::GLOBAL_HEADER);

    // ── video stream: libx264, yuv420p ─────────────────────────────────────────────
    let h264 = encoder::find_by_name("libx264").ok_or_else(|| {
        fail(
            path,
            "finding libx264",
            "this FFmpeg has no libx264 encoder",
        )
    })?;
    let v_index = octx
        .add_stream(h264)
        .map_err(ff_err(path, "adding the video stream"))?
        .index();
    let mut venc = codec::context::Context::new_with_codec(h264)
        .encoder()
        .video()
        .map_err(ff_err(path, "creating the video encoder"))?;
    venc.set_width(spec.width);
    venc.set_height(spec.height);
    venc.set_format(format::Pixel::YUV420P);
    venc.set_time_base(Rational(1, fps));
    venc.set_frame_rate(Some(Rational(fps, 1)));
    venc.set_colorspace(ffmpeg::color::Space::SMPTE170M);
    venc.set_color_range(ffmpeg::color::Range::MPEG);
    venc.set_color_primaries(ffmpeg::color::Primaries::SMPTE170M);
    venc.set_color_transfer_characteristic(ffmpeg::color::TransferCharacteristic::SMPTE170M);
    // A keyframe every 2 s; closed GOPs so that every keyframe is a clean random-access
    // point (with open GOPs libx264 codes B-frames after an I-frame that show before it).
    venc.set_gop(2 * spec.fps);
    let mut vflags = codec::Flags::CLOSED_GOP;
    if global_header {
        vflags |= codec::Flags::GLOBAL_HEADER;
    }
    venc.set_flags(vflags);
    let mut opts = Dictionary::new();
    opts.set("preset", spec.preset);
    opts.set("crf", &spec.crf.to_string());
    opts.set("threads", "1");
    if let Some(asm) = x264_cpu_override() {
        opts.set("x264-params", &format!("asm={asm}"));
    }
    let mut venc = venc
        .open_with(opts)
        .map_err(ff_err(path, "opening libx264"))?;
    octx.stream_mut(v_index)
        .ok_or_else(|| fail(path, "adding the video stream", "stream vanished"))?
        .set_parameters(&venc);
    let v_tb = Rational(1, fps);

    // ── audio stream: native AAC, mono FLTP ────────────────────────────────────────
    let mut audio = None;
    if let Some((samples, rate)) = spec.audio {
        let aac = encoder::find_by_name("aac")
            .ok_or_else(|| fail(path, "finding the AAC encoder", "this FFmpeg has no aac"))?;
        let a_index = octx
            .add_stream(aac)
            .map_err(ff_err(path, "adding the audio stream"))?
            .index();
        let mut aenc = codec::context::Context::new_with_codec(aac)
            .encoder()
            .audio()
            .map_err(ff_err(path, "creating the AAC encoder"))?;
        aenc.set_rate(rate as i32);
        aenc.set_format(format::Sample::F32(format::sample::Type::Planar));
        unsafe {
            let c = aenc.as_mut_ptr();
            ffi::av_channel_layout_default(&mut (*c).ch_layout, 1);
        }
        aenc.set_bit_rate(spec.audio_bit_rate);
        aenc.set_time_base(Rational(1, rate as i32));
        let mut flags = codec::Flags::BITEXACT;
        if global_header {
            flags |= codec::Flags::GLOBAL_HEADER;
        }
        aenc.set_flags(flags);
        let aenc = aenc
            .open()
            .map_err(ff_err(path, "opening the AAC encoder"))?;
        octx.stream_mut(a_index)
            .ok_or_else(|| fail(path, "adding the audio stream", "stream vanished"))?
            .set_parameters(&aenc);
        let frame_size = (aenc.frame_size() as usize).max(1);
        audio = Some((aenc, a_index, samples, rate, frame_size, 0usize));
    }

    octx.write_header()
        .map_err(ff_err(path, "writing the MP4 header"))?;
    let v_out_tb = octx
        .stream(v_index)
        .map(|s| s.time_base())
        .ok_or_else(|| fail(path, "writing the MP4 header", "video stream vanished"))?;
    let a_out_tb = audio
        .as_ref()
        .and_then(|a| octx.stream(a.1).map(|s| s.time_base()));

    let mut packet = Packet::empty();
    let mut rgb = vec![0u8; w * h * 3];
    for i in 0..spec.frames {
        // Audio up to the end of this video frame first, so the muxer interleaves evenly.
        if let (Some((aenc, a_index, samples, rate, fsize, pos)), Some(a_tb)) =
            (audio.as_mut(), a_out_tb)
        {
            // Only whole frames here: the AAC encoder accepts a short frame only at the end.
            let until = ((i + 1) as u64 * u64::from(*rate) / spec.fps as u64) as usize;
            while *pos < until && *pos + *fsize <= samples.len() {
                let n = *fsize;
                let f = audio_frame(path, &samples[*pos..*pos + n], *rate, *pos as i64)?;
                aenc.send_frame(&f)
                    .map_err(ff_err(path, "encoding audio"))?;
                *pos += n;
                drain(
                    aenc,
                    &mut packet,
                    *a_index,
                    Rational(1, *rate as i32),
                    a_tb,
                    &mut octx,
                    path,
                )?;
            }
        }
        render(i, &mut rgb);
        let mut vf = frame::Video::new(format::Pixel::YUV420P, spec.width, spec.height);
        // Zero the whole buffer, stride padding included: encoders may read it (see
        // `x264_cpu_override`), and fresh allocations hold whatever the allocator returns.
        unsafe {
            let p = vf.as_mut_ptr();
            for b in (*p).buf.iter() {
                if !b.is_null() {
                    std::ptr::write_bytes((**b).data, 0, (**b).size);
                }
            }
        }
        rgb_to_yuv420(&rgb, w, h, &mut vf);
        vf.set_pts(Some(i as i64));
        venc.send_frame(&vf)
            .map_err(ff_err(path, "encoding video"))?;
        drain(
            &mut venc,
            &mut packet,
            v_index,
            v_tb,
            v_out_tb,
            &mut octx,
            path,
        )?;
    }
    if let (Some((aenc, a_index, samples, rate, fsize, pos)), Some(a_tb)) =
        (audio.as_mut(), a_out_tb)
    {
        while *pos < samples.len() {
            let n = (*fsize).min(samples.len() - *pos);
            let f = audio_frame(path, &samples[*pos..*pos + n], *rate, *pos as i64)?;
            aenc.send_frame(&f)
                .map_err(ff_err(path, "encoding audio"))?;
            *pos += n;
            drain(
                aenc,
                &mut packet,
                *a_index,
                Rational(1, *rate as i32),
                a_tb,
                &mut octx,
                path,
            )?;
        }
        aenc.send_eof().map_err(ff_err(path, "flushing audio"))?;
        drain(
            aenc,
            &mut packet,
            *a_index,
            Rational(1, *rate as i32),
            a_tb,
            &mut octx,
            path,
        )?;
    }
    venc.send_eof().map_err(ff_err(path, "flushing video"))?;
    drain(
        &mut venc,
        &mut packet,
        v_index,
        v_tb,
        v_out_tb,
        &mut octx,
        path,
    )?;
    octx.write_trailer()
        .map_err(ff_err(path, "writing the MP4 trailer"))?;
    Ok(())
}

/// Moves every packet the encoder has ready into the muxer.
fn drain(
    enc: &mut encoder::Encoder,
    packet: &mut Packet,
    stream: usize,
    enc_tb: Rational,
    out_tb: Rational,
    octx: &mut format::context::Output,
    path: &Path,
) -> Result<()> {
    loop {
        match enc.receive_packet(packet) {
            Ok(()) => {
                // libx264 leaves durations at 0; the MP4 muxer would then end the edit list
                // at the last frame's start and mark that frame "discard". One frame (or
                // the audio frame's samples, which the AAC encoder sets) per packet.
                if packet.duration() == 0 {
                    packet.set_duration(1);
                }
                packet.set_stream(stream);
                packet.rescale_ts(enc_tb, out_tb);
                packet
                    .write_interleaved(octx)
                    .map_err(ff_err(path, "writing a packet"))?;
            }
            Err(ffmpeg::Error::Other { errno }) if errno == ffi::EAGAIN => return Ok(()),
            Err(ffmpeg::Error::Eof) => return Ok(()),
            Err(e) => return Err(ff_err(path, "receiving a packet")(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yuv_conversion_of_primaries() {
        let mut f = frame::Video::new(format::Pixel::YUV420P, 2, 2);
        rgb_to_yuv420(&[255, 0, 0].repeat(4), 2, 2, &mut f);
        assert_eq!((f.data(0)[0], f.data(1)[0], f.data(2)[0]), (82, 90, 240));
        rgb_to_yuv420(&[0u8; 12], 2, 2, &mut f);
        assert_eq!((f.data(0)[0], f.data(1)[0], f.data(2)[0]), (16, 128, 128));
        rgb_to_yuv420(&[255u8; 12], 2, 2, &mut f);
        assert_eq!((f.data(0)[0], f.data(1)[0], f.data(2)[0]), (235, 128, 128));
    }
}
