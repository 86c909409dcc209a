//! Audio preprocessing against the AV golden fixture (spec §7).
//!
//! * `debug.safetensors:audio_waveform` is the exact input of `kaldi.fbank`;
//!   `audio_fbank_prebf16` its output before the bf16 cast; `expected:audio_fbank`
//!   the bf16 values. The `audio` case ran the fbank in float64 (wav path), the `av`
//!   case in float32 (video path).
//! * `inputs/audio.wav` → channel 0 → 30-s pad → FFT resampling → ×2^15 must give
//!   `audio_waveform` of the `audio` case.

mod common;

use common::{golden, load_tensor};
use videollama_media::audio::{
    audio_file_fbank, clip_sample_bounds, file_waveform, load_wav, to_bf16_rounding,
    video_audio_waveform, CropMode, NUM_FRAMES, NUM_MEL_BINS, NUM_SAMPLES,
};
use videollama_media::fbank::Fbank;

const FIXTURE: &str = "videollama2.1-av-tiny";

struct Stats {
    max_all: f32,
    max_near: f32,
    worst_near_depth: f32,
    bf16_mismatch: usize,
    bf16_max: f32,
    /// Entries with |diff| > 1e-3, and the smallest depth below the frame maximum among them.
    over_1e3: usize,
    over_1e3_min_depth: f32,
}

/// Compares an fbank with the reference: overall, on bins within 10 nats of their
/// frame's maximum, and after the bf16 cast.
fn compare(ours: &[f32], pre: &[f32], bf16: &[f32]) -> Stats {
    assert_eq!(ours.len(), NUM_FRAMES * NUM_MEL_BINS);
    let mut s = Stats {
        max_all: 0.0,
        max_near: 0.0,
        worst_near_depth: 0.0,
        bf16_mismatch: 0,
        bf16_max: 0.0,
        over_1e3: 0,
        over_1e3_min_depth: f32::INFINITY,
    };
    for f in 0..NUM_FRAMES {
        let r = f * NUM_MEL_BINS..(f + 1) * NUM_MEL_BINS;
        let frame_max = pre[r.clone()].iter().copied().fold(f32::MIN, f32::max);
        for i in r {
            let d = (ours[i] - pre[i]).abs();
            s.max_all = s.max_all.max(d);
            if d > 1e-3 {
                s.over_1e3 += 1;
                s.over_1e3_min_depth = s.over_1e3_min_depth.min(frame_max - pre[i]);
            }
            if pre[i] >= frame_max - 10.0 && d > s.max_near {
                s.max_near = d;
                s.worst_near_depth = frame_max - pre[i];
            }
            let b = to_bf16_rounding(ours[i]);
            if b != bf16[i] {
                s.bf16_mismatch += 1;
                s.bf16_max = s.bf16_max.max((b - bf16[i]).abs());
            }
        }
    }
    s
}

fn report(name: &str, s: &Stats) {
    println!(
        "{name}: max |diff| all bins {:.3e}; within 10 nats of frame max {:.3e} \
         (at {:.2} nats below); {} entries differ by > 1e-3, all at least {:.1} nats below \
         their frame max; bf16: {} of {} entries differ (max {:.3e})",
        s.max_all,
        s.max_near,
        s.worst_near_depth,
        s.over_1e3,
        s.over_1e3_min_depth,
        s.bf16_mismatch,
        NUM_FRAMES * NUM_MEL_BINS,
        s.bf16_max
    );
}

fn stored(case: &str) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let wav = load_tensor(
        &format!("{FIXTURE}/{case}/debug.safetensors"),
        "audio_waveform",
    );
    assert_eq!(wav.shape, vec![1, NUM_SAMPLES]);
    let pre = load_tensor(
        &format!("{FIXTURE}/{case}/debug.safetensors"),
        "audio_fbank_prebf16",
    );
    let bf = load_tensor(
        &format!("{FIXTURE}/{case}/expected.safetensors"),
        "audio_fbank",
    );
    assert_eq!(pre.shape, vec![NUM_FRAMES, NUM_MEL_BINS]);
    (wav.f32s(), pre.f32s(), bf.f32s())
}

#[test]
fn stored_bf16_is_the_rounded_prebf16() {
    // Sanity check of the fixture and of `to_bf16_rounding` (f32 -> bf16 path).
    for case in ["av", "audio"] {
        let (_, pre, bf) = stored(case);
        let n = pre
            .iter()
            .zip(&bf)
            .filter(|(p, b)| to_bf16_rounding(**p) != **b)
            .count();
        println!("{case}: bf16(prebf16) != audio_fbank for {n} entries");
        assert_eq!(n, 0);
    }
}

#[test]
fn fbank_f32_video_path() {
    let (wav, pre, bf) = stored("av");
    let ours = Fbank::compute_f32(&wav);
    assert_eq!((ours.frames, ours.bins), (NUM_FRAMES, NUM_MEL_BINS));
    let s = compare(&ours.data, &pre, &bf);
    report("av (f32 fbank)", &s);
    assert!(s.max_near < 3e-5, "near-max bins differ by {}", s.max_near);
    assert!(s.max_all < 1e-2, "overall {}", s.max_all);
    assert!(s.over_1e3 == 0 || s.over_1e3_min_depth > 12.0);
    assert!(s.bf16_mismatch < NUM_FRAMES * NUM_MEL_BINS / 200);
}

#[test]
fn fbank_f64_file_path_on_stored_waveform() {
    // The stored waveform is the float64 reference input rounded to float32.
    let (wav, pre, bf) = stored("audio");
    let w64: Vec<f64> = wav.iter().map(|&v| v as f64).collect();
    let ours = Fbank::compute_f64(&w64).to_f32();
    let s = compare(&ours.data, &pre, &bf);
    report("audio (f64 fbank, f32-stored waveform)", &s);
    assert!(s.max_near < 3e-5, "near-max bins differ by {}", s.max_near);
    assert!(s.max_all < 3e-2, "overall {}", s.max_all);
}

#[test]
fn wav_file_to_waveform() {
    let wav = load_wav(golden(&format!("{FIXTURE}/inputs/audio.wav"))).unwrap();
    assert_eq!((wav.sample_rate, wav.channels), (44100, 2));
    let ours = file_waveform(&wav.channel0(), wav.sample_rate, CropMode::Start).unwrap();
    assert_eq!(ours.len(), NUM_SAMPLES);
    let (expected, pre, bf) = stored("audio");
    let peak = expected.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
    let mut max_abs = 0f64;
    let mut max_rel_f32 = 0f64;
    for (a, &e) in ours.iter().zip(&expected) {
        let d = (a - e as f64).abs();
        max_abs = max_abs.max(d);
        // Compare with the float32 rounding of our value: the fixture stores f32.
        if e != 0.0 {
            max_rel_f32 = max_rel_f32.max(((*a as f32) as f64 - e as f64).abs() / (e as f64).abs());
        }
    }
    println!(
        "wav -> waveform: max abs diff {max_abs:.3e} (peak {peak:.1}, relative to peak {:.3e}); \
         max elementwise relative diff after f32 rounding {max_rel_f32:.3e}",
        max_abs / peak
    );
    assert!(max_abs / peak < 1e-6);

    // The whole file path (f64 waveform -> f64 fbank) against the reference fbank.
    let fb = Fbank::compute_f64(&ours).to_f32();
    let s = compare(&fb.data, &pre, &bf);
    report("audio.wav end to end (f64)", &s);
    assert!(s.max_all < 1e-4, "overall {}", s.max_all);
    assert!(s.bf16_mismatch <= 40, "{} bf16 mismatches", s.bf16_mismatch);

    // The one-call helper gives the same result.
    let direct = audio_file_fbank(
        golden(&format!("{FIXTURE}/inputs/audio.wav")),
        CropMode::Start,
    )
    .unwrap()
    .to_f32();
    assert_eq!(direct, fb);
}

#[test]
fn video_audio_clip_sampling_reproduces_waveform() {
    // The AV fixture's ffmpeg output had n = 38638 samples; the stored waveform is the
    // concatenation of 8 clips of 32000 samples (×2^15) followed by zeros. Rebuild the
    // source signal from the clips (samples past the last clip are never used), run
    // the sampler on it, and require the identical waveform — overlapping clips only
    // agree if every clip start is right.
    let (wav, _, _) = stored("av");
    let n = 38638;
    let bounds = clip_sample_bounds(n, 16000, 2, 8);
    let mut src = vec![f32::NAN; n];
    for (k, &(s, e)) in bounds.iter().enumerate() {
        for (j, i) in (s..e.min(n)).enumerate() {
            let v = wav[k * 32000 + j] / 32768.0;
            if src[i].is_nan() {
                src[i] = v;
            } else {
                assert_eq!(src[i], v, "clip {k} disagrees at sample {i}");
            }
        }
    }
    let unused = src.iter().filter(|v| v.is_nan()).count();
    assert_eq!(unused, n - 37808);
    for v in src.iter_mut().filter(|v| v.is_nan()) {
        *v = 0.0;
    }
    let ours = video_audio_waveform(&src, CropMode::Start);
    assert_eq!(ours, wav);
    assert!(wav[256000..].iter().all(|&v| v == 0.0));
}
