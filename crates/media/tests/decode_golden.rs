//! Golden tests of the FFmpeg decoder against what the PyTorch reference saw: decord's
//! frames (`decoded_frames.safetensors`) and the `ffmpeg` CLI's 16 kHz mono audio.

use std::path::{Path, PathBuf};
use std::process::Command;

use videollama_media::decode::{self, decode_audio, decode_audio_16k_mono, decode_frames, probe};

fn golden(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/golden")
        .join(rel)
}

fn read_tensor(file: &Path, name: &str) -> (Vec<usize>, Vec<u8>, safetensors::Dtype) {
    let bytes = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let t = st.tensor(name).expect("tensor");
    (t.shape().to_vec(), t.data().to_vec(), t.dtype())
}

fn f32s(data: &[u8]) -> Vec<f32> {
    data.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn ffmpeg_cli() -> bool {
    Command::new("ffmpeg")
        .arg("-version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Compares decoded frames with decord's; returns (max abs diff, fraction of differing bytes).
fn compare_with_decord(video: &str, frames_file: &str, indices: &[usize]) -> (u8, f64) {
    let (shape, expected, dtype) = read_tensor(&golden(frames_file), "decoded_frames");
    assert_eq!(dtype, safetensors::Dtype::U8);
    assert_eq!(shape, vec![indices.len(), 64, 96, 3]);
    let frames = decode_frames(golden(video), indices).expect("decode");
    assert_eq!(frames.len(), indices.len());
    let mut max = 0u8;
    let mut differing = 0usize;
    let per = 64 * 96 * 3;
    for (k, f) in frames.iter().enumerate() {
        assert_eq!((f.width, f.height), (96, 64));
        assert_eq!(f.data.len(), per);
        let exp = &expected[k * per..(k + 1) * per];
        let mut fmax = 0u8;
        for (a, b) in f.data.iter().zip(exp) {
            let d = a.abs_diff(*b);
            fmax = fmax.max(d);
            differing += usize::from(d != 0);
        }
        eprintln!("{video} frame {}: max abs diff {fmax}", indices[k]);
        max = max.max(fmax);
    }
    let frac = differing as f64 / expected.len() as f64;
    eprintln!("{video}: max abs diff {max}, differing bytes {differing} ({frac:.6})");
    (max, frac)
}

#[test]
fn probe_video_mp4() {
    let info = probe(golden("videollama2-mistral-tiny/inputs/video.mp4")).unwrap();
    eprintln!("{info:?}");
    assert_eq!(info.frame_count, 60);
    assert_eq!(info.avg_fps, 25.0);
    assert_eq!((info.width, info.height), (96, 64));
    assert_eq!(info.rotation_degrees, 0);
    assert_eq!(info.codec, "h264");
    assert!(!info.has_audio);
    assert!(!info.is_gif());
    assert!((info.duration_s - 2.4).abs() < 1e-6, "{}", info.duration_s);

    let reader =
        decode::VideoReader::open(golden("videollama2-mistral-tiny/inputs/video.mp4")).unwrap();
    assert_eq!(reader.info(), &info);
    let times = reader.frame_times_s().unwrap();
    assert_eq!(times.len(), 60);
    for (i, t) in times.iter().enumerate() {
        assert!((t - i as f64 * 0.04).abs() < 1e-9, "frame {i} at {t}");
    }
    // The fixture was encoded with a keyframe every 25 frames.
    assert_eq!(reader.key_indices(), &[0, 25, 50]);
}

#[test]
fn probe_video_av_mp4() {
    let info = probe(golden("videollama2.1-av-tiny/inputs/video_av.mp4")).unwrap();
    eprintln!("{info:?}");
    assert_eq!(info.frame_count, 60);
    assert_eq!(info.avg_fps, 25.0);
    assert_eq!((info.width, info.height), (96, 64));
    assert!(info.has_audio);
}

#[test]
fn frames_match_decord_exactly() {
    let (max, frac) = compare_with_decord(
        "videollama2-mistral-tiny/inputs/video.mp4",
        "videollama2-mistral-tiny/video/decoded_frames.safetensors",
        &[7, 22, 37, 52],
    );
    assert_eq!((max, frac), (0, 0.0), "pixels differ from decord's");
}

/// Each frame alone: 37 and 52 are reached by seeking to keyframes 25 and 50.
#[test]
fn seek_path_matches_decord_exactly() {
    let video = golden("videollama2-mistral-tiny/inputs/video.mp4");
    let (_, expected, _) = read_tensor(
        &golden("videollama2-mistral-tiny/video/decoded_frames.safetensors"),
        "decoded_frames",
    );
    let reader = decode::VideoReader::open(&video).unwrap();
    let per = 64 * 96 * 3;
    let mut seeks = 0;
    for (k, &i) in [7usize, 22, 37, 52].iter().enumerate() {
        let (f, stats) = reader.decode_with_stats(&[i]).unwrap();
        eprintln!("frame {i} alone: {stats:?}");
        seeks += stats.seeks;
        assert!(f[0].data == expected[k * per..(k + 1) * per], "frame {i}");
    }
    assert_eq!(seeks, 2);
}

#[test]
fn av_frames_match_decord_exactly() {
    let (max, frac) = compare_with_decord(
        "videollama2.1-av-tiny/inputs/video_av.mp4",
        "videollama2.1-av-tiny/av/decoded_frames.safetensors",
        &[7, 22, 37, 52],
    );
    assert_eq!((max, frac), (0, 0.0), "pixels differ from decord's");
}

#[test]
fn indices_repeat_and_unsorted() {
    let path = golden("videollama2-mistral-tiny/inputs/video.mp4");
    let sorted = decode_frames(&path, &[0, 7, 22, 59]).unwrap();
    let mixed = decode_frames(&path, &[59, 7, 7, 0, 22, 59]).unwrap();
    assert_eq!(mixed.len(), 6);
    assert_eq!(mixed[0], sorted[3]);
    assert_eq!(mixed[1], sorted[1]);
    assert_eq!(mixed[2], sorted[1]);
    assert_eq!(mixed[3], sorted[0]);
    assert_eq!(mixed[4], sorted[2]);
    assert_eq!(mixed[5], sorted[3]);
    assert_ne!(sorted[0], sorted[1], "testsrc2 frames differ over time");
    assert!(decode_frames(&path, &[]).unwrap().is_empty());
    match decode_frames(&path, &[3, 60]) {
        Err(decode::DecodeError::IndexOutOfRange {
            index: 60,
            frame_count: 60,
            ..
        }) => {}
        other => panic!("expected IndexOutOfRange, got {other:?}"),
    }
}

/// All 60 frames in one call (sequential path) equal frame-by-frame calls.
#[test]
fn all_frames_consistent() {
    let path = golden("videollama2-mistral-tiny/inputs/video.mp4");
    let all: Vec<usize> = (0..60).collect();
    let frames = decode_frames(&path, &all).unwrap();
    for &i in &[0usize, 1, 30, 58, 59] {
        let one = decode_frames(&path, &[i]).unwrap();
        assert_eq!(one[0], frames[i], "frame {i}");
    }
}

/// Splits an s16le byte stream into f32 samples the way the reference does.
fn s16le_to_f32(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(2)
        .map(|c| f32::from(i16::from_le_bytes([c[0], c[1]])) / 32768.0)
        .collect()
}

#[test]
fn audio_from_video_matches_reference() {
    let path = golden("videollama2.1-av-tiny/inputs/video_av.mp4");
    let wav = decode_audio_16k_mono(&path).unwrap();
    // Spec §7.2: the AV fixture's raw decoded sample count is 38638 (≈ 2.4 s · 16000 plus
    // the resampler/AAC tail).
    eprintln!("decoded {} samples at 16 kHz", wav.len());
    assert_eq!(wav.len(), 38638);
    assert!((wav.len() as f64 - 2.4 * 16000.0).abs() < 1000.0);

    // The reference's waveform before the fbank: 8 clips of 32000 samples starting at
    // trunc(k·16000·m/8), m = n/16000 − 2, concatenated, zero-padded to 480000, × 2^15.
    let (shape, data, _) = read_tensor(
        &golden("videollama2.1-av-tiny/av/debug.safetensors"),
        "audio_waveform",
    );
    assert_eq!(shape, vec![1, 480000]);
    let reference = f32s(&data);
    let starts = [0usize, 829, 1659, 2489, 3318, 4148, 4978, 5808];
    let mut max_diff = 0f32;
    for (k, &s) in starts.iter().enumerate() {
        for i in 0..32000 {
            let ours = wav[s + i] * 32768.0;
            max_diff = max_diff.max((ours - reference[k * 32000 + i]).abs());
        }
    }
    eprintln!("max |ours − reference waveform| (int16 units): {max_diff}");
    assert_eq!(
        max_diff, 0.0,
        "audio differs from the reference's ffmpeg output"
    );
    assert!(reference[256000..].iter().all(|&v| v == 0.0));

    if !ffmpeg_cli() {
        eprintln!("NOTE: `ffmpeg` CLI not installed; skipping the byte-for-byte CLI comparison");
        return;
    }
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(&path)
        .args([
            "-vn",
            "-acodec",
            "pcm_s16le",
            "-ac",
            "1",
            "-ar",
            "16000",
            "-f",
            "s16le",
            "-",
        ])
        .output()
        .expect("run ffmpeg");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli = s16le_to_f32(&out.stdout);
    assert_eq!(
        cli.len(),
        wav.len(),
        "sample count differs from the ffmpeg CLI"
    );
    let differing = cli.iter().zip(&wav).filter(|(a, b)| a != b).count();
    eprintln!("ffmpeg CLI: {} samples, {differing} differ", cli.len());
    assert_eq!(differing, 0, "not byte-identical to the ffmpeg CLI");
}

#[test]
fn audio_wav_native() {
    let path = golden("videollama2.1-av-tiny/inputs/audio.wav");
    let (channels, rate) = decode_audio(&path).unwrap();
    assert_eq!(rate, 44100);
    assert_eq!(channels.len(), 2);
    assert_eq!(channels[0].len(), 132300);
    assert_eq!(channels[1].len(), 132300);
    assert_ne!(channels[0], channels[1]);

    // Parse the PCM16 data chunk by hand: soundfile returns exactly i16 / 32768.
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[0..4], b"RIFF");
    let mut pos = 12;
    let data = loop {
        let id = &bytes[pos..pos + 4];
        let len = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().unwrap()) as usize;
        if id == b"data" {
            break &bytes[pos + 8..pos + 8 + len];
        }
        pos += 8 + len + (len & 1);
    };
    let inter = s16le_to_f32(data);
    assert_eq!(inter.len(), 2 * 132300);
    for i in 0..132300 {
        assert_eq!(channels[0][i], inter[2 * i], "ch0 sample {i}");
        assert_eq!(channels[1][i], inter[2 * i + 1], "ch1 sample {i}");
    }
}

#[test]
fn no_stream_errors() {
    let wav = golden("videollama2.1-av-tiny/inputs/audio.wav");
    match probe(&wav) {
        Err(decode::DecodeError::NoVideoStream { path }) => assert_eq!(path, wav),
        other => panic!("expected NoVideoStream, got {other:?}"),
    }
    let mp4 = golden("videollama2-mistral-tiny/inputs/video.mp4");
    let err = decode_audio_16k_mono(&mp4).unwrap_err();
    assert!(
        matches!(err, decode::DecodeError::NoAudioStream { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("video.mp4"), "{err}");
    assert!(matches!(
        decode_audio(&mp4),
        Err(decode::DecodeError::NoAudioStream { .. })
    ));
}
