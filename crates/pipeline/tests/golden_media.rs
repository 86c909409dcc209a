//! End to end from the media files the reference read: decoding, frame sampling,
//! Pillow-exact preprocessing and the fbank must give the reference's tensors, and
//! the whole pipeline the reference's generated ids.

mod common;

use candle_core::{DType, Tensor};
use common::ids_i64;
use std::path::PathBuf;
use videollama_pipeline::media::MediaRequest;
use videollama_pipeline::{AnswerOptions, LoadOptions, Pipeline};
use videollama_testutil::{case_json, golden, load_tensors};

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

struct FileCase {
    fixture: &'static str,
    case: &'static str,
    video: Option<&'static str>,
    image: Option<&'static str>,
    audio: Option<&'static str>,
}

fn run(c: FileCase) {
    let pipeline = Pipeline::load(
        &golden(&format!("{}/checkpoint", c.fixture)),
        &LoadOptions::default(),
    )
    .unwrap();
    let expected = load_tensors(&format!("{}/{}/expected.safetensors", c.fixture, c.case));
    let meta = case_json(c.fixture, c.case);
    let input =
        |f: Option<&str>| f.map(|f| -> PathBuf { golden(&format!("{}/inputs/{f}", c.fixture)) });
    let req = MediaRequest {
        video: input(c.video),
        image: input(c.image),
        audio: input(c.audio),
        ..Default::default()
    };
    let (media, report) = pipeline.prepare_media(&req).unwrap();

    if let Some(want) = meta
        .get("sampled_frame_indices")
        .and_then(|v| v.as_array())
        .filter(|_| c.video.is_some())
    {
        let want: Vec<usize> = want.iter().map(|v| v.as_u64().unwrap() as usize).collect();
        assert_eq!(
            report.frame_indices, want,
            "{}/{}: frame indices",
            c.fixture, c.case
        );
    }
    if let Some(visual) = &media.visual {
        let px = match visual {
            videollama_pipeline::Visual::Video(t) | videollama_pipeline::Visual::Image(t) => t,
        };
        // Decoder frames equal decord's and the resize is Pillow-exact: identical pixels.
        let diff = max_abs_diff(px, &expected["pixel_values"]);
        assert_eq!(
            diff, 0.0,
            "{}/{}: pixel_values differ by {diff}",
            c.fixture, c.case
        );
    }
    if let Some(fbank) = &media.audio_fbank {
        let want = &expected["audio_fbank"];
        let diff = max_abs_diff(fbank, want);
        // The file path (f64 fbank) reproduces the reference's bf16 fbank exactly. The
        // video path runs in f32 like the reference, whose FFT rounding noise decides
        // bins ≥ 18 nats below a frame's maximum: those may be one bf16 step apart
        // (about 0.3 % of entries, measured in the media crate's golden_audio test).
        if c.audio.is_some() {
            assert_eq!(diff, 0.0, "{}/{}: audio_fbank", c.fixture, c.case);
        } else {
            let got = fbank.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let differing = got.iter().zip(&want).filter(|(a, b)| a != b).count();
            assert!(
                differing * 100 < got.len(),
                "{}/{}: {differing} of {} fbank entries differ",
                c.fixture,
                c.case,
                got.len()
            );
        }
        eprintln!(
            "{}/{}: audio_fbank max abs diff {diff:e}",
            c.fixture, c.case
        );
    }
    let encoded = pipeline.encode_media(&media).unwrap();
    let opts = AnswerOptions {
        max_new_tokens: 12,
        ..Default::default()
    };
    let question = meta["question"].as_str().unwrap().to_string();
    let answer = pipeline
        .answer(&[question], &encoded, &opts, |_| true)
        .unwrap();
    let want: Vec<u32> = ids_i64(&expected["generated_ids"])
        .into_iter()
        .map(|i| i as u32)
        .collect();
    assert_eq!(
        answer.token_ids, want,
        "{}/{}: generated_ids",
        c.fixture, c.case
    );
    assert_eq!(answer.answer, meta["generated_text"].as_str().unwrap());
}

#[test]
fn mistral_video_file() {
    run(FileCase {
        fixture: "videollama2-mistral-tiny",
        case: "video",
        video: Some("video.mp4"),
        image: None,
        audio: None,
    });
}

#[test]
fn mistral_image_file() {
    run(FileCase {
        fixture: "videollama2-mistral-tiny",
        case: "image",
        video: None,
        image: Some("image.png"),
        audio: None,
    });
}

#[test]
fn qwen2_video_file() {
    run(FileCase {
        fixture: "videollama2.1-qwen2-tiny",
        case: "video",
        video: Some("video.mp4"),
        image: None,
        audio: None,
    });
}

#[test]
fn qwen2_image_file() {
    run(FileCase {
        fixture: "videollama2.1-qwen2-tiny",
        case: "image",
        video: None,
        image: Some("image.png"),
        audio: None,
    });
}

#[test]
fn av_video_file_with_its_sound_track() {
    run(FileCase {
        fixture: "videollama2.1-av-tiny",
        case: "av",
        video: Some("video_av.mp4"),
        image: None,
        audio: None,
    });
}

#[test]
fn av_audio_file() {
    run(FileCase {
        fixture: "videollama2.1-av-tiny",
        case: "audio",
        video: None,
        image: None,
        audio: Some("audio.wav"),
    });
}

/// A video without a sound track on an AV checkpoint gets the reference's silence,
/// and the report says so.
#[test]
fn av_video_without_sound_uses_silence() {
    let pipeline = Pipeline::load(
        &golden("videollama2.1-av-tiny/checkpoint"),
        &LoadOptions::default(),
    )
    .unwrap();
    let req = MediaRequest {
        video: Some(golden("videollama2-mistral-tiny/inputs/video.mp4")),
        ..Default::default()
    };
    let (media, report) = pipeline.prepare_media(&req).unwrap();
    assert_eq!(report.audio_source.as_deref(), Some("silence"));
    let fbank = media.audio_fbank.expect("silence fbank");
    assert_eq!(fbank.dims(), &[2998, 128]);
    // Silence: every frame's energy is 0 → ln(f32::EPSILON) in every bin (bf16-rounded).
    let floor = half::bf16::from_f32(f32::EPSILON.ln()).to_f32();
    assert!(fbank
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .all(|v| *v == floor));
    // --no-audio drops it.
    let req = MediaRequest {
        use_video_audio: Some(false),
        ..req
    };
    let (media, report) = pipeline.prepare_media(&req).unwrap();
    assert!(media.audio_fbank.is_none() && report.audio_source.is_none());
}
