//! The `videollama` binary end to end: `ask --json` reproduces the reference's
//! generated ids for the golden cases; `inspect --config` reports the published
//! configurations' token and parameter counts; bad input fails cleanly.

use std::path::PathBuf;
use std::process::{Command, Output};

use videollama_testutil::{case_json, golden, load_tensors};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn videollama(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_videollama"))
        .args(args)
        .output()
        .expect("run videollama")
}

fn expected_ids(fixture: &str, case: &str) -> Vec<u64> {
    load_tensors(&format!("{fixture}/{case}/expected.safetensors"))["generated_ids"]
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|i| i as u64)
        .collect()
}

fn ask_json(fixture: &str, case: &str, media_flag: Option<&str>) -> serde_json::Value {
    let meta = case_json(fixture, case);
    let model = golden(&format!("{fixture}/checkpoint"));
    let pixels = golden(&format!("{fixture}/{case}/expected.safetensors"));
    let mut args = vec![
        "ask",
        "--model",
        model.to_str().unwrap(),
        "--json",
        "--max-new-tokens",
        "12",
    ];
    if let Some(flag) = media_flag {
        args.extend([flag, pixels.to_str().unwrap()]);
    }
    args.push(meta["question"].as_str().unwrap());
    let out = videollama(&args);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("stdout is one JSON object");
    assert_eq!(
        json["answer"].as_str().unwrap(),
        meta["generated_text"].as_str().unwrap()
    );
    json
}

fn token_ids(json: &serde_json::Value) -> Vec<u64> {
    json["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect()
}

#[test]
fn ask_video_pixels_json() {
    let json = ask_json("videollama2-mistral-tiny", "video", Some("--video-pixels"));
    assert_eq!(
        token_ids(&json),
        expected_ids("videollama2-mistral-tiny", "video")
    );
    assert_eq!(json["visual_tokens"], 27);
    assert_eq!(json["prompt_tokens"], 295);
    assert!(json["timings"]["prefill_s"].as_f64().is_some());
}

#[test]
fn ask_image_pixels_json() {
    let json = ask_json("videollama2.1-qwen2-tiny", "image", Some("--image-pixels"));
    assert_eq!(
        token_ids(&json),
        expected_ids("videollama2.1-qwen2-tiny", "image")
    );
    assert_eq!(json["visual_tokens"], 8);
}

#[test]
fn ask_text_only_json() {
    let json = ask_json("videollama2.1-qwen2-tiny", "text", None);
    assert_eq!(
        token_ids(&json),
        expected_ids("videollama2.1-qwen2-tiny", "text")
    );
    assert_eq!(json["visual_tokens"], 0);
}

#[test]
fn ask_audio_visual_and_audio_only_json() {
    let fixture = "videollama2.1-av-tiny";
    let model = golden(&format!("{fixture}/checkpoint"));
    for (case, with_video) in [("av", true), ("audio", false)] {
        let expected = golden(&format!("{fixture}/{case}/expected.safetensors"));
        let meta = case_json(fixture, case);
        let mut args = vec![
            "ask",
            "--model",
            model.to_str().unwrap(),
            "--json",
            "--max-new-tokens",
            "12",
        ];
        args.extend(["--audio-fbank", expected.to_str().unwrap()]);
        if with_video {
            args.extend(["--video-pixels", expected.to_str().unwrap()]);
        }
        args.push(meta["question"].as_str().unwrap());
        let out = videollama(&args);
        assert!(
            out.status.success(),
            "stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(token_ids(&json), expected_ids(fixture, case), "{case}");
        assert_eq!(json["audio_tokens"], 1496);
        assert_eq!(json["visual_tokens"], if with_video { 8 } else { 0 });
    }
}

#[test]
fn dump_tensors_writes_golden_names() {
    let tmp = tempfile::tempdir().unwrap();
    let dump = tmp.path().join("dump.safetensors");
    let model = golden("videollama2-mistral-tiny/checkpoint");
    let pixels = golden("videollama2-mistral-tiny/video/expected.safetensors");
    let out = videollama(&[
        "ask",
        "--model",
        model.to_str().unwrap(),
        "--video-pixels",
        pixels.to_str().unwrap(),
        "--max-new-tokens",
        "2",
        "--dump-tensors",
        dump.to_str().unwrap(),
        "What is this?",
    ]);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = candle_core::safetensors::load(&dump, &candle_core::Device::Cpu).unwrap();
    for name in [
        "pixel_values",
        "vision_features",
        "connector_out",
        "input_ids",
        "inputs_embeds",
        "logits_last",
        "logits_steps",
        "generated_ids",
    ] {
        assert!(t.contains_key(name), "missing {name}");
    }
    assert_eq!(t["connector_out"].dims(), &[27, 64]);
    assert_eq!(t["generated_ids"].dims(), &[2]);
}

fn inspect_json(config: &str) -> serde_json::Value {
    let path = root().join("tests/data/configs").join(config);
    let out = videollama(&["inspect", "--config", path.to_str().unwrap(), "--json"]);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn inspect_published_videollama2_7b_16f() {
    let json = inspect_json("videollama2-7b-16f.config.json");
    assert_eq!(json["tokens"]["video"], 1521);
    assert_eq!(json["tokens"]["image"], 1521);
    let total = json["parameters"]["total"].as_u64().unwrap() as f64;
    // spec §5.4: 8.0344 B parameters (= 16.069 GB of 2-byte weights).
    assert!((total / 1e9 - 8.0344).abs() < 5e-4, "total {total}");
    assert_eq!(json["parameters"]["llm"], 7_241_732_096u64);
    assert_eq!(json["parameters"]["vision_tower"], 303_507_456u64);
}

#[test]
fn inspect_published_videollama2_1_7b_16f() {
    let json = inspect_json("videollama2.1-7b-16f.config.json");
    assert_eq!(json["tokens"]["video"], 1352);
    let connector = json["parameters"]["connector"].as_u64().unwrap() as f64;
    assert!(
        (connector / 1e6 - 376.89).abs() < 0.01,
        "connector {connector}"
    );
}

#[test]
fn inspect_published_videollama2_1_7b_av() {
    let json = inspect_json("videollama2.1-7b-av.config.json");
    assert_eq!(json["tokens"]["audio"], 1496);
    assert_eq!(json["tokens"]["video"], 1352);
    // spec §10.4: BEATs 90.7 M, audio projector 15.6 M parameters.
    let beats = json["parameters"]["audio_tower"].as_u64().unwrap() as f64 / 1e6;
    let proj = json["parameters"]["audio_projector"].as_u64().unwrap() as f64 / 1e6;
    assert!(
        (beats - 90.7).abs() < 0.05 && (proj - 15.6).abs() < 0.05,
        "beats {beats} M, projector {proj} M"
    );
}

#[test]
fn inspect_golden_checkpoint_folder() {
    let model = golden("videollama2-mistral-tiny/checkpoint");
    let out = videollama(&["inspect", "--model", model.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("stc_connector") && text.contains("video (4 frames) 27"),
        "{text}"
    );
}

fn assert_clean_failure(out: &Output, needle: &str) {
    assert!(!out.status.success());
    assert_eq!(out.status.code(), Some(1), "exit code (a panic gives 101)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: ") && err.contains(needle),
        "stderr: {err}"
    );
    assert!(!err.contains("panicked"), "stderr: {err}");
}

#[test]
fn bad_inputs_fail_with_a_clear_message() {
    let model = golden("videollama2-mistral-tiny/checkpoint");
    let model = model.to_str().unwrap();
    assert_clean_failure(
        &videollama(&["ask", "--model", "/no/such/model", "hi"]),
        "/no/such/model",
    );
    assert_clean_failure(
        &videollama(&[
            "ask",
            "--model",
            model,
            "--video-pixels",
            "/no/such/pixels.safetensors",
            "hi",
        ]),
        "/no/such/pixels.safetensors",
    );
    // A file that is not safetensors.
    let config = golden("videollama2-mistral-tiny/checkpoint/config.json");
    assert_clean_failure(
        &videollama(&[
            "ask",
            "--model",
            model,
            "--video-pixels",
            config.to_str().unwrap(),
            "hi",
        ]),
        "config.json",
    );
    // Pixels of the wrong size for this tower.
    let qwen_pixels = golden("videollama2-mistral-tiny/image/expected.safetensors");
    let tmp = tempfile::tempdir().unwrap();
    let wrong = tmp.path().join("wrong.safetensors");
    let t = candle_core::Tensor::zeros(
        (2, 3, 28, 28),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    t.save_safetensors("pixel_values", &wrong).unwrap();
    assert_clean_failure(
        &videollama(&[
            "ask",
            "--model",
            model,
            "--video-pixels",
            wrong.to_str().unwrap(),
            "hi",
        ]),
        "56",
    );
    let _ = qwen_pixels;
    assert_clean_failure(
        &videollama(&["inspect", "--config", "/no/such/config.json"]),
        "/no/such/config.json",
    );
}

#[test]
fn bad_media_files_fail_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let model = golden("videollama2-mistral-tiny/checkpoint");
    let model = model.to_str().unwrap();
    let av = golden("videollama2.1-av-tiny/checkpoint");
    let av = av.to_str().unwrap();
    let empty = tmp.path().join("empty.mp4");
    std::fs::write(&empty, b"").unwrap();
    let text = tmp.path().join("notes.mp4");
    std::fs::write(&text, b"this is not a video at all, just some text").unwrap();
    let truncated = tmp.path().join("truncated.mp4");
    let bytes = std::fs::read(golden("videollama2-mistral-tiny/inputs/video.mp4")).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    let silent = golden("videollama2-mistral-tiny/inputs/video.mp4");

    assert_clean_failure(
        &videollama(&[
            "ask",
            "--model",
            model,
            "--video",
            "/no/such/clip.mp4",
            "hi",
        ]),
        "/no/such/clip.mp4",
    );
    assert_clean_failure(
        &videollama(&[
            "ask",
            "--model",
            model,
            "--video",
            empty.to_str().unwrap(),
            "hi",
        ]),
        "empty.mp4",
    );
    assert_clean_failure(
        &videollama(&[
            "ask",
            "--model",
            model,
            "--video",
            text.to_str().unwrap(),
            "hi",
        ]),
        "notes.mp4",
    );
    assert_clean_failure(
        &videollama(&[
            "ask",
            "--model",
            model,
            "--video",
            truncated.to_str().unwrap(),
            "hi",
        ]),
        "truncated.mp4",
    );
    assert_clean_failure(
        &videollama(&[
            "ask",
            "--model",
            model,
            "--image",
            text.to_str().unwrap(),
            "hi",
        ]),
        "notes.mp4",
    );
    // Asking for sound where there is none, or of a model that cannot hear.
    assert_clean_failure(
        &videollama(&[
            "ask",
            "--model",
            av,
            "--audio",
            silent.to_str().unwrap(),
            "hi",
        ]),
        "audio",
    );
    let wav = golden("videollama2.1-av-tiny/inputs/audio.wav");
    assert_clean_failure(
        &videollama(&[
            "ask",
            "--model",
            model,
            "--audio",
            wav.to_str().unwrap(),
            "hi",
        ]),
        "no audio tower",
    );
    // Nothing the user gave was modified.
    assert_eq!(
        std::fs::read(&truncated).unwrap(),
        &bytes[..bytes.len() / 3]
    );
}

#[test]
fn ask_video_file_streams_the_reference_answer() {
    let fixture = "videollama2-mistral-tiny";
    let meta = case_json(fixture, "video");
    let model = golden(&format!("{fixture}/checkpoint"));
    let video = golden(&format!("{fixture}/inputs/video.mp4"));
    let out = videollama(&[
        "ask",
        "--model",
        model.to_str().unwrap(),
        "--video",
        video.to_str().unwrap(),
        "--max-new-tokens",
        "12",
        meta["question"].as_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Streamed text is the reference's decoded answer plus a final newline.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}\n", meta["generated_text"].as_str().unwrap())
    );
}

/// `chat` keeps the history: its second answer equals the pipeline's answer to the
/// whole conversation (question, first answer, follow-up) about the same video.
#[test]
fn chat_is_multi_turn_about_one_video() {
    use std::io::Write;
    use videollama_pipeline::{media::MediaRequest, AnswerOptions, LoadOptions, Pipeline};
    let model = golden("videollama2.1-qwen2-tiny/checkpoint");
    let video = golden("videollama2.1-qwen2-tiny/inputs/video.mp4");
    let mut child = Command::new(env!("CARGO_BIN_EXE_videollama"))
        .args([
            "chat",
            "--model",
            model.to_str().unwrap(),
            "--video",
            video.to_str().unwrap(),
            "--max-new-tokens",
            "4",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"What is in the video?\nAnd the colours?\n/exit\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let answers: Vec<&str> = stdout
        .split("> ")
        .map(str::trim_end)
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(answers.len(), 2, "{stdout:?}");

    let pipeline = Pipeline::load(&model, &LoadOptions::default()).unwrap();
    let (media, _) = pipeline
        .prepare_media(&MediaRequest {
            video: Some(video),
            ..Default::default()
        })
        .unwrap();
    let encoded = pipeline.encode_media(&media).unwrap();
    let opts = AnswerOptions {
        max_new_tokens: 4,
        ..Default::default()
    };
    let first = pipeline
        .answer(&["What is in the video?".into()], &encoded, &opts, |_| true)
        .unwrap()
        .answer;
    let turns = vec![
        "What is in the video?".to_string(),
        first.clone(),
        "And the colours?".to_string(),
    ];
    let second = pipeline
        .answer(&turns, &encoded, &opts, |_| true)
        .unwrap()
        .answer;
    assert_eq!(answers, vec![first.as_str(), second.as_str()]);
}
