//! `videollama` on a Video-LLaMA folder (`tests/golden/video-llama-tiny/checkpoint`:
//! `eval_config.yaml` and the files it names), end to end from the media files: every
//! golden case's `generated_ids` and text exactly, with the case's template and 12 new
//! tokens; `--dump-tensors` under the fixture's names; `inspect`; and the start-up errors
//! the reference's users hit (missing / wrong `ckpt`, unknown head count, > 32 frames).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use videollama_testutil::{assert_close, case_json, golden, load_json, load_tensors};

const FIXTURE: &str = "video-llama-tiny";

fn videollama(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_videollama"))
        .args(args)
        .output()
        .expect("run videollama")
}

fn checkpoint() -> PathBuf {
    golden(&format!("{FIXTURE}/checkpoint"))
}

/// The tiny EVA ViT and ImageBind head counts (no weight shape tells them), as the
/// reference's fixture generator patched them: `--options model.…=N`.
fn head_options() -> Vec<String> {
    let dims = &load_json(&format!("{FIXTURE}/fixture.json"))["dims"];
    vec![
        "--options".into(),
        format!("model.vit_num_heads={}", dims["vit_heads"]),
        "--options".into(),
        format!("model.imagebind_num_heads={}", dims["ib_audio_heads"]),
    ]
}

fn template(case: &str) -> &'static str {
    if case_json(FIXTURE, case)["template"]
        .as_str()
        .unwrap()
        .contains("llama_2")
    {
        "llama_2"
    } else {
        "vicuna"
    }
}

fn media_args(case: &str) -> Vec<String> {
    let input = |f: &str| {
        golden(&format!("{FIXTURE}/inputs/{f}"))
            .display()
            .to_string()
    };
    match case {
        "video" => vec!["--video".into(), input("video.mp4"), "--no-audio".into()],
        "video_audio" => vec!["--video".into(), input("video.mp4")],
        "image" => vec!["--image".into(), input("image.png")],
        "audio" => vec!["--audio".into(), input("audio.wav")],
        other => panic!("unknown case {other}"),
    }
}

fn ask(model: &Path, case: &str, extra: &[&str]) -> Output {
    let meta = case_json(FIXTURE, case);
    let mut args: Vec<String> = vec![
        "ask".into(),
        "--model".into(),
        model.display().to_string(),
        "--dtype".into(),
        "f32".into(),
        "--conv-template".into(),
        template(case).into(),
        "--max-new-tokens".into(),
        "12".into(),
    ];
    args.extend(head_options());
    args.extend(media_args(case));
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(meta["question"].as_str().unwrap().into());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    videollama(&refs)
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn expected_ids(case: &str) -> Vec<u64> {
    load_tensors(&format!("{FIXTURE}/{case}/expected.safetensors"))["generated_ids"]
        .to_dtype(candle_core::DType::I64)
        .unwrap()
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|i| i as u64)
        .collect()
}

#[test]
fn ask_json_reproduces_every_case_from_the_media_files() {
    for case in ["video", "image", "audio", "video_audio"] {
        let json: serde_json::Value =
            serde_json::from_str(&ok(&ask(&checkpoint(), case, &["--json"]))).unwrap();
        let ids: Vec<u64> = json["token_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(ids, expected_ids(case), "{case}: generated ids");
        let meta = case_json(FIXTURE, case);
        assert_eq!(json["answer"], meta["generated_text"], "{case}: text");
        let n_embeds =
            load_json(&format!("{FIXTURE}/fixture.json"))["cases"][case]["n_embeds"].clone();
        assert_eq!(json["prompt_tokens"], n_embeds, "{case}: LLM input length");
        if case == "video" {
            assert_eq!(
                json["media"]["frame_indices"],
                meta["sampled_frame_indices"]
            );
        }
        if case == "video_audio" {
            assert_eq!(json["media"]["audio_source"], "video");
            assert_eq!(json["audio_tokens"], 8);
            assert_eq!(json["visual_tokens"], 32);
        }
    }
}

#[test]
fn streamed_answer_is_the_reference_text() {
    let out = ok(&ask(&checkpoint(), "image", &[]));
    let meta = case_json(FIXTURE, "image");
    assert_eq!(
        out,
        format!("{}\n", meta["generated_text"].as_str().unwrap())
    );
}

#[test]
fn dump_tensors_uses_the_fixture_names() {
    let tmp = tempfile::tempdir().unwrap();
    let dump = tmp.path().join("dump.safetensors");
    ok(&ask(
        &checkpoint(),
        "video_audio",
        &["--dump-tensors", dump.to_str().unwrap()],
    ));
    let got = candle_core::safetensors::load(&dump, &candle_core::Device::Cpu).unwrap();
    let want = load_tensors(&format!("{FIXTURE}/video_audio/expected.safetensors"));
    for name in [
        "frame_qformer_out",
        "video_qformer_out",
        "visual_tokens",
        "audio_features",
        "audio_qformer_out",
        "audio_tokens",
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
    assert_eq!(ids(&got["generated_ids"]), ids(&want["generated_ids"]));
}

#[test]
fn inspect_describes_every_component() {
    let model = checkpoint();
    let mut args = vec![
        "inspect".to_string(),
        "--model".into(),
        model.display().to_string(),
    ];
    args.extend(head_options());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let text = ok(&videollama(&refs));
    for needle in [
        "EVA ViT 224 px, patch 14, width 48, 2 of 2 blocks, 4 heads",
        "image Q-Former  BLIP-2 Q-Former: 2 layers, hidden 32, 8 queries",
        "frame position table 32 rows",
        "audio encoder   ImageBind audio: width 32, 4 heads",
        "audio Q-Former  2 layers, 8 queries, audio position table 8 rows",
        "tokens          video 32, image 32, audio 8",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    let mut json_args = refs.clone();
    json_args.push("--json");
    let json: serde_json::Value = serde_json::from_str(&ok(&videollama(&json_args))).unwrap();
    // Parameter counts from the file headers = the tensors in the fixture's files that the
    // model uses (independently summed here from the safetensors twins).
    let count = |file: &str, keep: &dyn Fn(&str) -> bool| -> u64 {
        candle_core::safetensors::load(checkpoint().join(file), &candle_core::Device::Cpu)
            .unwrap()
            .iter()
            .filter(|(k, _)| keep(k))
            .map(|(_, t)| t.elem_count() as u64)
            .sum()
    };
    assert_eq!(
        json["parameters"]["vision_encoder"],
        count("eva_vit_g.safetensors", &|_| true)
    );
    assert_eq!(
        json["parameters"]["audio_encoder"],
        count("imagebind/imagebind_huge.safetensors", &|k| k
            .contains(".audio."))
    );
    assert_eq!(
        json["parameters"]["video_qformer"],
        count("VL_tiny.safetensors", &|k| !k.ends_with("position_ids"))
    );
    assert_eq!(json["tokens"]["audio"], 8);
}

#[test]
fn inspect_text_lists_the_audio_tower_of_an_av_checkpoint() {
    let model = golden("videollama2.1-av-tiny/checkpoint");
    let text = ok(&videollama(&[
        "inspect",
        "--model",
        model.to_str().unwrap(),
    ]));
    assert!(
        text.contains("audio tower") && text.contains("1496 audio tokens"),
        "{text}"
    );
}

/// A copy of the checkpoint folder (links to the fixture's files) with its own
/// `eval_config.yaml`, edited by `edit`.
fn folder_with_config(edit: impl Fn(String) -> String) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(checkpoint()).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "eval_config.yaml" {
            std::os::unix::fs::symlink(entry.path(), tmp.path().join(entry.file_name())).unwrap();
        }
    }
    let yaml = std::fs::read_to_string(checkpoint().join("eval_config.yaml")).unwrap();
    std::fs::write(tmp.path().join("eval_config.yaml"), edit(yaml)).unwrap();
    tmp
}

fn assert_clean_failure(out: &Output, needles: &[&str]) {
    assert!(!out.status.success());
    assert_eq!(out.status.code(), Some(1), "exit code (a panic gives 101)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "stderr: {err}");
    for n in needles {
        assert!(err.contains(n), "missing {n:?} in stderr: {err}");
    }
}

#[test]
fn start_up_errors_name_the_config_entry() {
    // ckpt names a file that is not there.
    let dir = folder_with_config(|y| y.replace("ckpt: VL_tiny.pth", "ckpt: VL_missing.pth"));
    assert_clean_failure(
        &ask(dir.path(), "video", &[]),
        &["ckpt", "VL_missing.pth", "missing"],
    );
    // ckpt names the audio branch's file: the video Q-Former is nowhere.
    let dir = folder_with_config(|y| y.replace("ckpt: VL_tiny.pth", "ckpt: AL_tiny.pth"));
    assert_clean_failure(
        &ask(dir.path(), "video", &[]),
        &[
            "ckpt (the vision-language branch)",
            "video_frame_position_embedding",
            "right file",
        ],
    );
    // ckpt not set at all.
    let dir = folder_with_config(|y| y.replace("  ckpt: VL_tiny.pth\n", ""));
    assert_clean_failure(
        &ask(dir.path(), "video", &[]),
        &["eval_config.yaml does not set it"],
    );
    // llama_model points nowhere.
    let dir = folder_with_config(|y| y.replace("llama_model: llm", "llama_model: vicuna-7b"));
    assert_clean_failure(
        &ask(dir.path(), "video", &[]),
        &["llama_model", "vicuna-7b"],
    );
    // No head count for a non-published width.
    let out = videollama(&[
        "ask",
        "--model",
        checkpoint().to_str().unwrap(),
        "--dtype",
        "f32",
        "hi",
    ]);
    assert_clean_failure(&out, &["vit_num_heads", "48 wide"]);
}

#[test]
fn more_frames_than_the_position_table_is_a_clear_error() {
    let out = ask(&checkpoint(), "video", &["--options", "model.n_frms=40"]);
    assert_clean_failure(&out, &["32 rows", "frame position table"]);
}
