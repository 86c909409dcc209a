//! The `videollama` binary end to end: `ask --json` reproduces the reference's
//! generated ids for the golden cases; `inspect --config` reports the published
//! configurations' token and parameter counts; bad input fails cleanly.

use std::path::PathBuf;
use std::process::{Command, Output};

use videollama_testutil::{case_json, golden, load_tensors};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Run the binary. These tests compare answers with the reference's, so the answering
/// commands run in the exact mode (`--dtype f32`) unless a test picks a mode itself;
/// `default_mode_is_quantized_and_close` covers the default.
fn videollama(args: &[&str]) -> Output {
    let answers = matches!(args.first(), Some(&("ask" | "caption" | "chat")));
    let picks_mode = args
        .iter()
        .any(|a| a.starts_with("--dtype") || a.starts_with("--quantize"));
    let mut full: Vec<&str> = args.to_vec();
    if answers && !picks_mode {
        full.splice(1..1, ["--dtype", "f32"]);
    }
    Command::new(env!("CARGO_BIN_EXE_videollama"))
        .args(&full)
        .output()
        .expect("run videollama")
}

/// The default mode quantizes the LLM and the tower (8-bit): on the golden case it still
/// answers, reports its weights, and its first token equals the reference's (the tiny
/// model's first-step margin is wide; later tokens may differ by design).
#[test]
fn default_mode_is_quantized_and_close() {
    let fixture = "videollama2.1-qwen2-tiny";
    let meta = case_json(fixture, "video");
    let model = golden(&format!("{fixture}/checkpoint"));
    let pixels = golden(&format!("{fixture}/video/expected.safetensors"));
    let out = Command::new(env!("CARGO_BIN_EXE_videollama"))
        .args([
            "ask",
            "--model",
            model.to_str().unwrap(),
            "--video-pixels",
            pixels.to_str().unwrap(),
            "--json",
            "--max-new-tokens",
            "3",
            meta["question"].as_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["weights"], "llm q8_0, vision q8_0");
    assert_eq!(token_ids(&json)[0], expected_ids(fixture, "video")[0]);
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

/// `ask --json` says what the encoder cache did: a fresh process misses, `--encoder-cache-mb 0`,
/// a text-only question and `--dump-tensors` (which needs every stage tensor) are `off`.
#[test]
fn ask_json_reports_the_encoder_cache() {
    let model = golden("videollama2-mistral-tiny/checkpoint");
    let video = golden("videollama2-mistral-tiny/inputs/video.mp4");
    let tmp = tempfile::tempdir().unwrap();
    let dump = tmp.path().join("dump.safetensors");
    let (m, v, d) = (
        model.to_str().unwrap(),
        video.to_str().unwrap(),
        dump.to_str().unwrap(),
    );
    let base = ["ask", "--model", m, "--json", "--max-new-tokens", "2"];
    let mut answers = Vec::new();
    for (extra, want) in [
        (vec!["--video", v], "miss"),
        (vec!["--video", v, "--encoder-cache-mb", "0"], "off"),
        (vec!["--video", v, "--dump-tensors", d], "off"),
        (vec![], "off"),
    ] {
        let mut args: Vec<&str> = base.to_vec();
        args.extend(&extra);
        args.push("What is this?");
        let out = videollama(&args);
        assert!(
            out.status.success(),
            "{extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["timings"]["encoder_cache"], want, "{extra:?}");
        answers.push(token_ids(&json));
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0], answers[2]);
}

/// `chat` reuses the KV cache of the earlier turns (the log line counts the positions) and
/// `/reset` clears it: the question after `/reset` is prefilled whole and answered as the
/// first one was.
#[test]
fn chat_reuses_the_kv_cache_and_reset_clears_it() {
    use std::io::Write;
    let model = golden("videollama2.1-qwen2-tiny/checkpoint");
    let video = golden("videollama2.1-qwen2-tiny/inputs/video.mp4");
    let mut child = Command::new(env!("CARGO_BIN_EXE_videollama"))
        .args([
            "chat",
            "-v",
            "--model",
            model.to_str().unwrap(),
            "--video",
            video.to_str().unwrap(),
            "--max-new-tokens",
            "4",
        ])
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(
            b"What is in the video?\nAnd the colours?\n/reset\nWhat is in the video?\n/exit\n",
        )
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stderr: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let answers: Vec<&str> = stdout
        .split("> ")
        .map(str::trim_end)
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(answers.len(), 3, "{stdout:?}");
    assert_eq!(answers[0], answers[2], "after /reset");
    // "turn N: P prompt positions, R reused from the KV cache, F prefilled"
    let turns: Vec<(usize, usize, usize)> = stderr
        .lines()
        .filter_map(|l| {
            let at = l.find(" prompt positions, ")?;
            let p = l[..at].rsplit(' ').next()?.parse().ok()?;
            let nums: Vec<usize> = l[at..]
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|w| w.parse().ok())
                .collect();
            Some((p, *nums.first()?, *nums.get(1)?))
        })
        .collect();
    assert_eq!(turns.len(), 3, "{stderr}");
    let (p1, r1, f1) = turns[0];
    let (p2, r2, f2) = turns[1];
    let (p3, r3, f3) = turns[2];
    assert_eq!((r1, f1), (0, p1));
    assert!(r2 >= p1 && r2 + f2 == p2 && f2 < p2, "{turns:?}");
    assert_eq!((p3, r3, f3), (p1, 0, p1), "after /reset");
}
