//! `videollama` on the MA-LMM fixture (`tests/golden/ma-lmm-tiny/checkpoint`, as laid out),
//! end to end from the video file: `generated_ids` and text exactly with `--max-new-tokens`
//! from case.json (`generated_token_count`), the sampled frame indices, `--dump-tensors` under
//! the fixture's names against `expected.safetensors`, `--stream-frames` giving the identical
//! result, `inspect`, and errors.
//!
//! The tiny EVA ViT's head count comes from `fixture.json` as `--options model.vit_num_heads=…`.

use std::process::{Command, Output};

use candle_core::Tensor;
use std::collections::HashMap;
use videollama_testutil::{assert_close, case_json, golden, load_json, load_tensors};

const FIXTURE: &str = "ma-lmm-tiny";

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

fn heads_option() -> String {
    let heads = load_json(&format!("{FIXTURE}/fixture.json"))["vision"]["heads"].clone();
    format!("model.vit_num_heads={heads}")
}

fn ask(extra: &[&str]) -> Output {
    let meta = case_json(FIXTURE, "video");
    let mut args: Vec<String> = vec![
        "ask".into(),
        "--model".into(),
        path("checkpoint"),
        "--options".into(),
        heads_option(),
        "--max-new-tokens".into(),
        meta["generated_token_count"].to_string(),
        "--video".into(),
        path(meta["input_file"].as_str().unwrap()),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(meta["question"].as_str().unwrap().into());
    videollama(&args)
}

fn ints(v: &serde_json::Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect()
}

fn want_ids() -> Vec<i64> {
    load_tensors(&format!("{FIXTURE}/video/expected.safetensors"))["generated_ids"]
        .to_vec1()
        .unwrap()
}

#[test]
fn ask_json_reproduces_the_case_streamed_or_not() {
    let meta = case_json(FIXTURE, "video");
    for extra in [&["--json"][..], &["--json", "--stream-frames"][..]] {
        let json: serde_json::Value = serde_json::from_str(&ok(&ask(extra))).unwrap();
        assert_eq!(ints(&json["token_ids"]), want_ids(), "{extra:?}: ids");
        assert_eq!(json["answer"], meta["generated_text"], "{extra:?}: text");
        assert_eq!(json["prompt"], meta["prompt"], "{extra:?}: prompt");
        assert_eq!(
            ints(&json["media"]["sampled_frame_indices"]),
            ints(&meta["sampled_frame_indices"]),
            "{extra:?}: frame indices"
        );
        assert_eq!(json["media"]["video_num_frames"], meta["video_num_frames"]);
    }
    // Plain text mode prints the answer.
    let text = ok(&ask(&[]));
    assert_eq!(text.trim_end(), meta["generated_text"].as_str().unwrap());
}

/// Exact stages of a run from the media file.
const EXACT: [&str; 2] = ["input_ids", "generated_ids"];

#[test]
fn dump_tensors_have_the_fixture_names_and_streaming_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain.safetensors");
    let streamed = dir.path().join("streamed.safetensors");
    ok(&ask(&["--dump-tensors", plain.to_str().unwrap()]));
    ok(&ask(&[
        "--stream-frames",
        "--dump-tensors",
        streamed.to_str().unwrap(),
    ]));
    let load = |p: &std::path::Path| -> HashMap<String, Tensor> {
        candle_core::safetensors::load(p, &candle_core::Device::Cpu).unwrap()
    };
    let (got, got_s) = (load(&plain), load(&streamed));
    let want = load_tensors(&format!("{FIXTURE}/video/expected.safetensors"));
    // Every expected name is dumped, with the expected shape.
    for (name, w) in &want {
        let g = got.get(name).unwrap_or_else(|| panic!("{name} not dumped"));
        assert_eq!(g.dims(), w.dims(), "{name}: shape");
        let s = &got_s[name];
        assert_close(&format!("{name} (streamed vs not)"), s, g);
        assert_eq!(
            s.flatten_all()
                .unwrap()
                .to_dtype(candle_core::DType::F32)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            g.flatten_all()
                .unwrap()
                .to_dtype(candle_core::DType::F32)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            "{name}: streamed differs"
        );
    }
    for name in EXACT {
        assert_close(name, &got[name], &want[name]);
    }
}

/// The float stages of a run from the media file against the fixture. The query-bank counts
/// are compared as golden_ma_lmm.rs compares them: exact on the query rows and in their
/// column sums; on the instruction-text rows adjacent entries are equal up to rounding
/// (cosine similarity 1 ± 1e-7), so which pair merges there is rounding noise.
#[test]
fn dump_tensors_match_the_fixture_from_the_media_file() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain.safetensors");
    ok(&ask(&["--dump-tensors", plain.to_str().unwrap()]));
    let got = candle_core::safetensors::load(&plain, &candle_core::Device::Cpu).unwrap();
    let want = load_tensors(&format!("{FIXTURE}/video/expected.safetensors"));
    let mut names: Vec<&String> = want.keys().collect();
    names.sort();
    let q = want["qformer_out"].dim(0).unwrap();
    for name in names {
        if name.starts_with("query_memory_bank_sizes.") {
            let (g, w) = (&got[name], &want[name]);
            assert_close(
                &format!("{name} (query rows)"),
                &g.narrow(1, 0, q).unwrap(),
                &w.narrow(1, 0, q).unwrap(),
            );
            assert_close(
                &format!("{name} (column sums)"),
                &g.sum(0).unwrap(),
                &w.sum(0).unwrap(),
            );
            continue;
        }
        assert_close(name, &got[name], &want[name]);
    }
}

#[test]
fn inspect_reads_the_config_without_weights() {
    let out = ok(&videollama(&[
        "inspect".into(),
        "--model".into(),
        path("checkpoint"),
        "--json".into(),
    ]));
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["memory_bank_length"], 3);
    assert_eq!(json["num_frames"], 8);
    assert_eq!(json["prompt_template"], "Question: {} Short answer:");
    assert!(json["files"]
        .as_array()
        .unwrap()
        .iter()
        .all(|f| f["present"] == true));
}

#[test]
fn errors_are_reported_not_panicked() {
    let out = ask(&["--video", "/nonexistent/video.mp4"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    // Without the head count the tiny ViT cannot be built: a clear error.
    let meta = case_json(FIXTURE, "video");
    let out = videollama(&[
        "ask".into(),
        "--model".into(),
        path("checkpoint"),
        "--video".into(),
        path(meta["input_file"].as_str().unwrap()),
        "q".into(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("vit_num_heads"), "{err}");
}

/// The common model/media/generation arguments of a run on the fixture's video.
fn run_args(command: &str) -> Vec<String> {
    let meta = case_json(FIXTURE, "video");
    vec![
        command.into(),
        "--model".into(),
        path("checkpoint"),
        "--options".into(),
        heads_option(),
        "--max-new-tokens".into(),
        meta["generated_token_count"].to_string(),
        "--video".into(),
        path(meta["input_file"].as_str().unwrap()),
    ]
}

/// `caption` on an MA-LMM folder prints what `ask` prints for the same instruction: the
/// fixture's text for its question (`--prompt`), and the default captioning instruction.
#[test]
fn caption_prints_what_ask_prints() {
    let meta = case_json(FIXTURE, "video");
    let question = meta["question"].as_str().unwrap();
    let mut args = run_args("caption");
    args.extend(["--prompt".into(), question.into()]);
    let text = ok(&videollama(&args));
    assert_eq!(text.trim_end(), meta["generated_text"].as_str().unwrap());
    let default = videollama_pipeline::prompt::caption_prompt(videollama_pipeline::Modality::Video);
    let caption = ok(&videollama(&run_args("caption")));
    let asked = ok(&ask_question(default));
    assert_eq!(caption, asked, "caption vs ask {default:?}");
}

fn ask_question(question: &str) -> Output {
    let mut args = run_args("ask");
    args.push(question.into());
    videollama(&args)
}

/// `chat` hosts MA-LMM through `Pipeline` (`ma_lmm/family.rs`): the first answer is the
/// fixture's (= `ask`'s) text; a follow-up question is answered as `ask` answers it alone
/// (MA-LMM has no multi-turn template: the last question drives the Q-Former and the prompt).
#[test]
fn chat_answers_like_ask() {
    use std::io::Write;
    use std::process::Stdio;
    let meta = case_json(FIXTURE, "video");
    let q1 = meta["question"].as_str().unwrap();
    let q2 = "Where is the red box at the end?";
    let mut child = Command::new(env!("CARGO_BIN_EXE_videollama"))
        .args(run_args("chat"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run videollama chat");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{q1}\n{q2}\n/exit\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = ok(&out);
    // "> answer1\n> answer2\n> "
    let answers: Vec<&str> = text
        .split("> ")
        .map(|s| s.trim_end_matches('\n'))
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(answers.len(), 2, "{text:?}");
    assert_eq!(answers[0], meta["generated_text"].as_str().unwrap());
    let alone = ok(&ask_question(q2));
    assert_eq!(answers[1], alone.trim_end_matches('\n'), "{text:?}");
}

/// `videollama eval` hosts MA-LMM through `Pipeline`: on a two-question MVBench-format file
/// about the fixture video, every prediction's text equals what `ask` (MA-LMM's own streaming
/// entry point, an independent path) prints for the same full prompt, and the summary counts
/// both questions.
#[test]
fn eval_answers_like_ask() {
    let dir = tempfile::tempdir().unwrap();
    let meta = case_json(FIXTURE, "video");
    let video = path(meta["input_file"].as_str().unwrap());
    let videos = dir.path().join("videos");
    std::fs::create_dir_all(&videos).unwrap();
    std::fs::copy(&video, videos.join("clip.mp4")).unwrap();
    let questions = dir.path().join("toy.json");
    std::fs::write(
        &questions,
        serde_json::json!([
            {"video": "clip.mp4", "question": "Where does the box go?",
             "candidates": ["left", "right", "up"], "answer": "right"},
            {"video": "clip.mp4", "question": "What colour is the box?",
             "candidates": ["red", "green"], "answer": "red"}
        ])
        .to_string(),
    )
    .unwrap();
    let out = dir.path().join("out");
    let args: Vec<String> = [
        "eval",
        "--format",
        "mvbench",
        "--questions",
        questions.to_str().unwrap(),
        "--videos",
        videos.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--model",
        &path("checkpoint"),
        "--options",
        &heads_option(),
        "--max-new-tokens",
        "5",
        "--no-progress",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    ok(&videollama(&args));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["overall"]["total"], 2, "{summary}");
    let preds = std::fs::read_to_string(out.join("predictions.jsonl")).unwrap();
    for line in preds.lines() {
        let p: serde_json::Value = serde_json::from_str(line).unwrap();
        let asked = ok(&videollama(&[
            "ask".into(),
            "--model".into(),
            path("checkpoint"),
            "--options".into(),
            heads_option(),
            "--max-new-tokens".into(),
            "5".into(),
            "--video".into(),
            video.clone(),
            p["prompt"].as_str().unwrap().into(),
        ]));
        assert_eq!(
            p["output"].as_str().unwrap().trim(),
            asked.trim(),
            "question {}",
            p["id"]
        );
    }
}
