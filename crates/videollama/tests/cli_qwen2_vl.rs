//! `videollama` on the Qwen2-VL fixture (`tests/golden/qwen2-vl-tiny/checkpoint`), end to end
//! from the media files: the `video` (`--video`) and `image` (`--image`) cases' `generated_ids`
//! and text exactly with `--max-new-tokens` from case.json and `--repetition-penalty 1.0` (the
//! fixture's plain greedy; the released generation_config says 1.05), `--dump-tensors` under
//! the fixture's names (position ids, rope_deltas, vision features, every step's logits),
//! `inspect`, and errors.

use std::process::{Command, Output};

use candle_core::DType;
use videollama_testutil::{assert_close, case_json, golden, load_tensors};

const FIXTURE: &str = "qwen2-vl-tiny";

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

fn ask(case: &str, extra: &[&str]) -> Output {
    let meta = case_json(FIXTURE, case);
    let mut args: Vec<String> = vec![
        "ask".into(),
        "--model".into(),
        path("checkpoint"),
        "--dtype".into(),
        "f32".into(),
        "--max-new-tokens".into(),
        meta["max_new_tokens"].to_string(),
        "--repetition-penalty".into(),
        "1.0".into(),
    ];
    match case {
        "image" => args.extend(["--image".into(), path("inputs/image.png")]),
        _ => args.extend(["--video".into(), path("inputs/video.mp4")]),
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(meta["question"].as_str().unwrap().into());
    videollama(&args)
}

fn ints(t: &candle_core::Tensor) -> Vec<i64> {
    t.to_dtype(DType::I64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn ask_json_reproduces_both_cases() {
    for case in ["video", "image"] {
        let meta = case_json(FIXTURE, case);
        let want =
            ints(&load_tensors(&format!("{FIXTURE}/{case}/expected.safetensors"))["generated_ids"]);
        let json: serde_json::Value = serde_json::from_str(&ok(&ask(case, &["--json"]))).unwrap();
        let got: Vec<i64> = json["token_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(got, want, "{case}: generated ids");
        assert_eq!(
            json["answer"], meta["generated_text_skip_special"],
            "{case}: text"
        );
        assert_eq!(json["prompt"], meta["prompt"], "{case}: prompt");
        if case == "video" {
            assert_eq!(
                json["media"]["frame_indices"],
                meta["sampled_frame_indices"]
            );
            assert_eq!(json["visual_tokens"], 72);
        } else {
            assert_eq!(json["visual_tokens"], 8);
        }
    }
}

#[test]
fn dump_tensors_uses_the_fixture_names() {
    for case in ["video", "image"] {
        let tmp = tempfile::tempdir().unwrap();
        let dump = tmp.path().join("dump.safetensors");
        ok(&ask(case, &["--dump-tensors", dump.to_str().unwrap()]));
        let got = candle_core::safetensors::load(&dump, &candle_core::Device::Cpu).unwrap();
        let mut want = load_tensors(&format!("{FIXTURE}/{case}/expected.safetensors"));
        let dbg = load_tensors(&format!("{FIXTURE}/{case}/debug.safetensors"));
        for name in ["patch_embed_out", "vit_out_before_merger"] {
            want.insert(name.to_string(), dbg[name].clone());
        }
        let mut names: Vec<&String> = want.keys().collect();
        names.sort();
        for name in names {
            let g = got
                .get(name)
                .unwrap_or_else(|| panic!("{case}: {name} not dumped"));
            assert_eq!(g.dims(), want[name].dims(), "{case}: {name} shape");
            if want[name].dtype() == DType::I64 {
                assert_eq!(ints(g), ints(&want[name]), "{case}: {name}");
            } else {
                assert_close(&format!("{case} dump/{name}"), g, &want[name]);
            }
        }
    }
}

#[test]
fn inspect_and_errors() {
    let text = ok(&videollama(&[
        "inspect".into(),
        "--model".into(),
        path("checkpoint"),
    ]));
    for needle in [
        "model           Qwen2-VL",
        "M-RoPE [2, 3, 3]",
        "ViT depth 2, width 32, 4 heads, MLP 64",
        "min_pixels 3136, max_pixels 18816",
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
    // 224×224 at max_pixels 18816 → 112×112 (floor) → 4×4 merged tokens per slice.
    assert_eq!(json["tokens_image_224"], 16);
    assert_eq!(json["tokens_8_frames_224"], 64);
    for (extra, needle) in [
        (
            vec![
                "--video".to_string(),
                path("inputs/video.mp4"),
                "--audio".to_string(),
                path("inputs/video.mp4"),
            ],
            "does not listen",
        ),
        (
            vec!["--video".to_string(), path("inputs/missing.mp4")],
            "no such video file",
        ),
    ] {
        let mut args = vec!["ask".to_string(), "--model".into(), path("checkpoint")];
        args.extend(extra);
        args.push("hi".into());
        let out = videollama(&args);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle) && !err.contains("panicked"), "{err}");
    }
    assert!(text.contains("total 0.0002 B (221440)"), "{text}");
}
