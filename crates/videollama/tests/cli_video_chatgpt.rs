//! `videollama` on the Video-ChatGPT fixture (`tests/golden/video-chatgpt-tiny/checkpoint`: the
//! LLaVA-Lightning stand-in `llava-base/` + `video_chatgpt-tiny.bin`, as published), end to end
//! from the video file: `generated_ids` and text exactly with `--max-new-tokens` from
//! case.json and `--reference-noise <case>/expected.safetensors`, `--dump-tensors` under the
//! fixture's names, the default (deterministic) mode, `inspect`, and errors.

use std::process::{Command, Output};

use videollama_testutil::{assert_close, case_json, golden, load_tensors};

const FIXTURE: &str = "video-chatgpt-tiny";

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

fn path(rel: &str) -> String {
    golden(&format!("{FIXTURE}/{rel}")).display().to_string()
}

/// `ask` in the exact mode on the case's video; `noise` adds `--reference-noise`.
fn ask(noise: bool, extra: &[&str]) -> Output {
    let meta = case_json(FIXTURE, "video");
    let mut args: Vec<String> = vec![
        "ask".into(),
        "--model".into(),
        path("checkpoint"),
        "--dtype".into(),
        "f32".into(),
        "--max-new-tokens".into(),
        meta["max_new_tokens"].to_string(),
        "--video".into(),
        path("inputs/video.mp4"),
    ];
    if noise {
        args.extend([
            "--reference-noise".into(),
            path("video/expected.safetensors"),
        ]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(meta["question"].as_str().unwrap().into());
    videollama(&args)
}

fn want_ids() -> Vec<i64> {
    load_tensors(&format!("{FIXTURE}/video/expected.safetensors"))["generated_ids"]
        .to_dtype(candle_core::DType::I64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn token_ids(json: &serde_json::Value) -> Vec<i64> {
    json["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect()
}

#[test]
fn ask_json_reproduces_the_case_with_and_without_the_noise_file() {
    let meta = case_json(FIXTURE, "video");
    for noise in [true, false] {
        let json: serde_json::Value = serde_json::from_str(&ok(&ask(noise, &["--json"]))).unwrap();
        assert_eq!(token_ids(&json), want_ids(), "noise {noise}: generated ids");
        assert_eq!(
            json["answer"], meta["generated_text"],
            "noise {noise}: text"
        );
        assert_eq!(
            json["media"]["frame_indices"],
            meta["sampled_frame_indices"]
        );
        assert_eq!(json["visual_tokens"], meta["video_token_len"]);
        assert_eq!(json["prompt"], meta["prompt"]);
    }
}

#[test]
fn dump_tensors_uses_the_fixture_names() {
    let tmp = tempfile::tempdir().unwrap();
    let dump = tmp.path().join("dump.safetensors");
    ok(&ask(true, &["--dump-tensors", dump.to_str().unwrap()]));
    let got = candle_core::safetensors::load(&dump, &candle_core::Device::Cpu).unwrap();
    let want = load_tensors(&format!("{FIXTURE}/video/expected.safetensors"));
    for name in [
        "pixel_values",
        "vision_features",
        "temporal_tokens",
        "spatial_tokens",
        "video_tokens",
        "visual_tokens",
        "inputs_embeds",
        "logits_last",
        "logits_steps",
        "lm_head_added_rows",
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
    assert_eq!(ids(&got["generated_ids"]), ids(&want["generated_ids"]));
}

#[test]
fn inspect_and_errors() {
    let text = ok(&videollama(&[
        "inspect".into(),
        "--model".into(),
        path("checkpoint"),
    ]));
    for needle in [
        "Video-ChatGPT, template video-chatgpt_v1",
        "vocab 1006 (1003 in the base lm_head; 3 rows no file holds)",
        "CLIP 56 px, patch 14, width 32, 3 layers, hidden_states[-2]",
        "video (100 frames) 116",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    let json: serde_json::Value = serde_json::from_str(&ok(&videollama(&[
        "inspect".into(),
        "--model".into(),
        path("checkpoint"),
        "--json".into(),
    ])))
    .unwrap();
    assert_eq!(json["tokens"]["video"], 116);
    // An image, and a noise file that is not there: errors naming the cause, no panic.
    let out = videollama(&[
        "ask".into(),
        "--model".into(),
        path("checkpoint"),
        "--image".into(),
        golden("chat-univi-tiny/inputs/image.png")
            .display()
            .to_string(),
        "hi".into(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("videos only") && !err.contains("panicked"),
        "{err}"
    );
    let out = videollama(&[
        "ask".into(),
        "--model".into(),
        path("checkpoint"),
        "--reference-noise".into(),
        "/no/such/noise.safetensors".into(),
        "hi".into(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/no/such/noise.safetensors") && !err.contains("panicked"),
        "{err}"
    );
}
