//! End-to-end tests of the demo-data generator on a tiny dataset (4 clips per split, 2 s,
//! 224 px, plus 4 out-of-distribution test clips): every clip decodes with our own decoder
//! to the metadata's frame count and size, shapes have their colour in the decoded pixels,
//! beeps have their frequency in the decoded audio, the JSON files are well formed and
//! point at existing clips, splits differ, and a second run with the same seeds gives the
//! same files.
//!
//! Spoken-number clips need `espeak-ng`; without it these tests are skipped with a note.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use videollama_demodata::{
    expected_answer, generate, read_meta, render_frame, score, Background, Category, ClipMeta,
    ColorName, DemoDataConfig, DemoDataError, Layout, Motion, QuestionType, Sound, Summary,
};
use videollama_media::decode::{decode_audio, decode_frames, probe};
use videollama_media::RgbImage;

fn have_espeak() -> bool {
    let ok = videollama_demodata::espeak_available(Path::new("espeak-ng"));
    if !ok {
        eprintln!("NOTE: espeak-ng not installed; skipping (apt-get install espeak-ng)");
    }
    ok
}

fn tiny_config() -> DemoDataConfig {
    let mut cfg = DemoDataConfig::new(4, 4, 4).with_ood_test(4);
    for s in &mut cfg.splits {
        if s.name != "test_ood" {
            s.layout.width = vec![(224, 224)];
            s.layout.height = vec![(224, 224)];
        }
    }
    cfg.duration_s = (2.0, 2.0);
    cfg
}

struct Data {
    _dir: tempfile::TempDir,
    root: PathBuf,
    summary: Summary,
    metas: Vec<ClipMeta>,
}

/// The tiny dataset, generated once for all tests of this binary.
fn data() -> &'static Data {
    static DATA: OnceLock<Data> = OnceLock::new();
    DATA.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let t = std::time::Instant::now();
        let summary = generate(&root, &tiny_config(), |_| {}).unwrap();
        eprintln!(
            "generated {} clips in {:.2} s ({} bytes of video)",
            summary.clips,
            t.elapsed().as_secs_f64(),
            summary.video_bytes
        );
        let metas = read_meta(root.join("meta.jsonl")).unwrap();
        Data {
            _dir: dir,
            root,
            summary,
            metas,
        }
    })
}

/// Palette the classifier chooses from: the five object colours and both backgrounds.
fn nearest_palette(rgb: [f64; 3]) -> String {
    let mut best = (f64::MAX, String::new());
    let named = ColorName::ALL
        .iter()
        .map(|c| (c.word().to_string(), c.rgb()))
        .chain(
            Background::ALL
                .iter()
                .map(|b| (format!("bg-{}", b.word()), b.rgb())),
        );
    for (name, c) in named {
        let d: f64 = (0..3).map(|k| (rgb[k] - f64::from(c[k])).powi(2)).sum();
        if d < best.0 {
            best = (d, name);
        }
    }
    best.1
}

/// Mean colour of `img` over the pixel box `[x0, x1) × [y0, y1)`.
fn mean_rgb(img: &RgbImage, x0: usize, y0: usize, x1: usize, y1: usize) -> [f64; 3] {
    let mut s = [0f64; 3];
    let mut n = 0f64;
    for y in y0..y1 {
        for x in x0..x1 {
            let p = img.pixel(x as u32, y as u32);
            for k in 0..3 {
                s[k] += f64::from(p[k]);
            }
            n += 1.0;
        }
    }
    assert!(n > 0.0, "empty box");
    s.map(|v| v / n)
}

#[test]
fn every_clip_decodes_with_our_decoder_to_its_metadata() {
    if !have_espeak() {
        return;
    }
    let d = data();
    assert_eq!(d.metas.len(), 16);
    assert_eq!(d.summary.clips, 16);
    for m in &d.metas {
        let path = d.root.join(&m.video);
        let info = probe(&path).unwrap();
        assert_eq!(info.frame_count, m.frames, "{}", m.id);
        assert_eq!(m.frames, 50, "2 s at 25 fps");
        assert_eq!((info.width, info.height), (m.width, m.height), "{}", m.id);
        assert_eq!(info.codec, "h264");
        assert!((info.avg_fps - 25.0).abs() < 1e-6, "{}", info.avg_fps);
        assert!(info.has_audio);
        if m.split != "test_ood" {
            assert_eq!((m.width, m.height), (224, 224));
        }

        let idx = [0, m.frames / 2, m.frames - 1];
        let frames = decode_frames(&path, &idx).unwrap();
        for (&i, img) in idx.iter().zip(&frames) {
            assert_eq!((img.width, img.height), (m.width, m.height));
            // Each object: mean colour of the central 30 % of its box (inside every shape:
            // for the upward triangle the box is centred on its centroid).
            for o in &m.objects {
                let [cx, cy] = o.center_at(i, m.fps);
                let cy = if o.shape == videollama_demodata::ShapeKind::Triangle {
                    cy + o.size_px / 6.0
                } else {
                    cy
                };
                let r = 0.15 * o.size_px;
                let b = |v: f64, hi: u32| (v.round().max(0.0) as usize).min(hi as usize);
                let (x0, x1) = (b(cx - r, m.width), b(cx + r, m.width));
                let (y0, y1) = (b(cy - r, m.height), b(cy + r, m.height));
                let mean = mean_rgb(img, x0, y0, x1.max(x0 + 1), y1.max(y0 + 1));
                assert_eq!(
                    nearest_palette(mean),
                    o.color.word(),
                    "{} frame {i}: {:?} {:?} mean {mean:?}",
                    m.id,
                    o.shape,
                    o.color
                );
            }
            // Background: mean over pixels at least 4 px away from every object's box.
            let mut sum = [0f64; 3];
            let mut n = 0.0;
            let boxes: Vec<[f64; 4]> = m.objects.iter().map(|o| o.bbox_at(i, m.fps)).collect();
            for y in 0..m.height {
                for x in 0..m.width {
                    let (fx, fy) = (f64::from(x) + 0.5, f64::from(y) + 0.5);
                    let near = boxes.iter().any(|b| {
                        fx > b[0] - 4.0 && fx < b[2] + 4.0 && fy > b[1] - 4.0 && fy < b[3] + 4.0
                    });
                    if !near {
                        let p = img.pixel(x, y);
                        (0..3).for_each(|k| sum[k] += f64::from(p[k]));
                        n += 1.0;
                    }
                }
            }
            let bg = sum.map(|v| v / n);
            assert_eq!(
                nearest_palette(bg),
                format!("bg-{}", m.background.word()),
                "{} frame {i}",
                m.id
            );
            // And the whole frame is close to its rendering.
            let want = render_frame(m, i);
            let mad = img
                .data
                .iter()
                .zip(&want.data)
                .map(|(&a, &b)| f64::from(a.abs_diff(b)))
                .sum::<f64>()
                / want.data.len() as f64;
            assert!(mad < 6.0, "{} frame {i}: mean abs diff {mad}", m.id);
        }
    }
}

/// Frequency (Hz) of the largest FFT magnitude between 50 Hz and 4 kHz.
fn peak_frequency(x: &[f32], rate: u32) -> f64 {
    let n = x.len();
    let mut planner = realfft::RealFftPlanner::<f64>::new();
    let fft = planner.plan_fft_forward(n);
    let mut input: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
    let mut spec = fft.make_output_vec();
    fft.process(&mut input, &mut spec).unwrap();
    let hz = |k: usize| k as f64 * f64::from(rate) / n as f64;
    let (k, _) = spec
        .iter()
        .enumerate()
        .filter(|&(k, _)| (50.0..4000.0).contains(&hz(k)))
        .map(|(k, c)| (k, c.norm()))
        .fold((0, 0.0), |a, b| if b.1 > a.1 { b } else { a });
    hz(k)
}

fn rms(x: &[f32]) -> f64 {
    (x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt()
}

#[test]
fn sound_tracks_decode_to_their_sound() {
    if !have_espeak() {
        return;
    }
    let d = data();
    let mut kinds = HashSet::new();
    for m in &d.metas {
        let path = d.root.join(&m.video);
        let (chans, rate) = decode_audio(&path).unwrap();
        assert_eq!(rate, 16000);
        assert_eq!(chans.len(), 1);
        let x = &chans[0];
        // AAC adds priming/padding; the length stays within a few frames of 2 s.
        assert!(
            (x.len() as i64 - 32000).abs() <= 3 * 1024,
            "{} samples",
            x.len()
        );
        match m.sound.unwrap() {
            Sound::Silence => {
                kinds.insert("silence");
                assert!(rms(x) < 1e-3, "{}: rms {}", m.id, rms(x));
            }
            Sound::LowBeep { freq_hz } | Sound::HighBeep { freq_hz } => {
                kinds.insert("beep");
                let f = peak_frequency(x, rate);
                assert!(
                    (f - freq_hz).abs() < 0.02 * freq_hz,
                    "{}: peak {f:.1} Hz, expected {freq_hz}",
                    m.id
                );
                let nominal = if matches!(m.sound, Some(Sound::LowBeep { .. })) {
                    300.0
                } else {
                    1500.0
                };
                assert!((f - nominal).abs() < 0.06 * nominal);
            }
            Sound::Number { .. } => {
                kinds.insert("number");
                assert!(rms(x) > 0.02, "{}: rms {}", m.id, rms(x));
            }
        }
    }
    assert!(kinds.contains("beep") && kinds.len() >= 2, "{kinds:?}");
}

#[test]
fn json_is_in_the_conversation_format_and_answers_follow_from_the_metadata() {
    if !have_espeak() {
        return;
    }
    let d = data();
    let mut ids = HashSet::new();
    let mut categories = HashSet::new();
    for s in &d.summary.splits {
        let text = std::fs::read_to_string(d.root.join(&s.json)).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let arr = v.as_array().unwrap();
        assert_eq!(arr.len(), s.conversations);
        // 6 conversations per clip (colour, shape, count, motion, sound, caption).
        assert_eq!(arr.len(), 6 * s.clips);
        for e in arr {
            let id = e["id"].as_str().unwrap();
            assert!(ids.insert(id.to_string()), "duplicate id {id}");
            let video = e["video"].as_str().unwrap();
            assert!(video.starts_with("clips/") && video.ends_with(".mp4"));
            assert!(d.root.join(video).is_file(), "{video} missing");
            let conv = e["conversations"].as_array().unwrap();
            assert_eq!(conv.len(), 2);
            assert_eq!(conv[0]["from"], "human");
            assert_eq!(conv[1]["from"], "gpt");
            assert!(conv[0]["value"].as_str().unwrap().starts_with("<video>\n"));
            assert!(!conv[1]["value"].as_str().unwrap().is_empty());
        }
        let caps: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.root.join(&s.captions_json)).unwrap())
                .unwrap();
        assert_eq!(caps.as_array().unwrap().len(), s.clips);
    }
    for m in &d.metas {
        assert_eq!(
            m.caption,
            expected_answer(m, QuestionType::Caption).unwrap()
        );
        for qa in &m.qa {
            categories.insert(qa.question_type.category());
            assert_eq!(qa.answer, expected_answer(m, qa.question_type).unwrap());
            assert!(
                score(&qa.answer, m, qa.question_type),
                "{}: {}",
                qa.id,
                qa.answer
            );
            assert!(ids.contains(&qa.id));
        }
        // A wrong answer of the same category scores false.
        for qa in &m.qa {
            if let QuestionType::Color(_) = qa.question_type {
                let wrong = ColorName::ALL
                    .iter()
                    .find(|c| !qa.answer.contains(c.word()))
                    .unwrap();
                assert!(!score(wrong.word(), m, qa.question_type));
            }
            if qa.question_type == QuestionType::Count {
                assert!(!score(
                    &format!("{}", m.objects.len() + 1),
                    m,
                    qa.question_type
                ));
            }
        }
    }
    assert_eq!(categories.len(), Category::ALL.len(), "{categories:?}");
}

#[test]
fn splits_differ_and_the_ood_split_is_outside_the_training_ranges() {
    if !have_espeak() {
        return;
    }
    let d = data();
    let by_split =
        |s: &str| -> Vec<&ClipMeta> { d.metas.iter().filter(|m| m.split == s).collect() };
    let (train, val, test) = (by_split("train"), by_split("val"), by_split("test"));
    assert_eq!(train.len(), 4);
    let scene = |m: &ClipMeta| serde_json::to_string(&(&m.objects, m.background, m.sound)).unwrap();
    let train_scenes: HashSet<String> = train.iter().map(|m| scene(m)).collect();
    for m in val.iter().chain(&test) {
        assert!(
            !train_scenes.contains(&scene(m)),
            "{} repeats a training scene",
            m.id
        );
    }
    let train_json = std::fs::read(d.root.join("train.json")).unwrap();
    let val_json = std::fs::read(d.root.join("val.json")).unwrap();
    assert_ne!(train_json, val_json);

    let train_layout = Layout::training();
    for m in by_split("test_ood") {
        let inside = |v: u32| (224..=640).contains(&v);
        assert!(
            !inside(m.width) && !inside(m.height),
            "{}: {}x{}",
            m.id,
            m.width,
            m.height
        );
        let min_side = f64::from(m.width.min(m.height));
        for o in &m.objects {
            let frac = o.size_px / min_side;
            let (lo, hi) = train_layout.shape_size[0];
            assert!(frac < lo || frac > hi, "{}: size fraction {frac}", m.id);
            if o.motion == Motion::Static {
                // Both coordinates near an edge: outside the training band of centres.
                for (axis, side) in [(0, m.width), (1, m.height)] {
                    let room = f64::from(side) - o.size_px;
                    let f = (o.start[axis] - o.size_px / 2.0) / room;
                    let (plo, phi) = train_layout.position[0];
                    assert!(f < plo || f > phi, "{}: position fraction {f}", m.id);
                }
            }
        }
    }
}

#[test]
fn same_seed_gives_identical_files_and_frames() {
    if !have_espeak() {
        return;
    }
    let d = data();
    let dir = tempfile::tempdir().unwrap();
    // Other thread count: the output must not depend on scheduling.
    let mut cfg = tiny_config();
    cfg.threads = 1;
    let s2 = generate(dir.path(), &cfg, |_| {}).unwrap();
    assert_eq!(s2.splits, d.summary.splits);
    for f in ["meta.jsonl", "dataset.json"]
        .into_iter()
        .map(String::from)
        .chain(
            d.summary
                .splits
                .iter()
                .flat_map(|s| [s.json.clone(), s.captions_json.clone()]),
        )
    {
        let a = std::fs::read(d.root.join(&f)).unwrap();
        let b = std::fs::read(dir.path().join(&f)).unwrap();
        assert!(a == b, "{f} differs between runs");
    }
    let mut same_bytes = true;
    for m in &d.metas {
        let (p1, p2) = (d.root.join(&m.video), dir.path().join(&m.video));
        let all: Vec<usize> = (0..m.frames).collect();
        let f1 = decode_frames(&p1, &all).unwrap();
        let f2 = decode_frames(&p2, &all).unwrap();
        assert!(f1 == f2, "{}: decoded frames differ", m.id);
        assert_eq!(
            decode_audio(&p1).unwrap(),
            decode_audio(&p2).unwrap(),
            "{}",
            m.id
        );
        same_bytes &= std::fs::read(&p1).unwrap() == std::fs::read(&p2).unwrap();
    }
    assert!(same_bytes, "MP4 bytes differ between runs");
}

#[test]
fn missing_espeak_and_bad_configs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny_config();
    cfg.espeak_program = PathBuf::from("/nonexistent/espeak-ng");
    let e = generate(dir.path(), &cfg, |_| {}).unwrap_err();
    assert!(matches!(e, DemoDataError::EspeakMissing { .. }), "{e}");
    assert!(e.to_string().contains("apt-get install espeak-ng"), "{e}");

    let mut cfg = tiny_config();
    cfg.splits[1].seed = cfg.splits[0].seed;
    let e = generate(dir.path(), &cfg, |_| {}).unwrap_err();
    assert!(e.to_string().contains("share seed"), "{e}");

    let mut cfg = tiny_config();
    cfg.splits[0].layout.width = vec![(300, 200)];
    assert!(matches!(cfg.validate(), Err(DemoDataError::Config(_))));
    let mut cfg = tiny_config();
    cfg.objects = (0, 4);
    assert!(cfg.validate().is_err());
}

#[test]
fn clips_without_audio_have_no_audio_stream_and_no_sound_questions() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = DemoDataConfig::new(2, 0, 0);
    cfg.splits.truncate(1);
    cfg.splits[0].layout.width = vec![(224, 240)];
    cfg.splits[0].layout.height = vec![(224, 240)];
    cfg.duration_s = (2.0, 2.4);
    cfg.with_audio = false;
    cfg.espeak_program = PathBuf::from("/nonexistent/espeak-ng");
    let s = generate(dir.path(), &cfg, |_| {}).unwrap();
    assert_eq!(s.clips, 2);
    for m in read_meta(dir.path().join("meta.jsonl")).unwrap() {
        assert!(m.sound.is_none());
        let info = probe(dir.path().join(&m.video)).unwrap();
        assert!(!info.has_audio);
        assert_eq!(info.frame_count, m.frames);
        assert!(m.qa.iter().all(|q| q.question_type != QuestionType::Sound));
        assert_eq!(m.qa.len(), 5);
    }
}
