//! Format parsing details that the end-to-end tests (crates/videollama/tests/cli_eval.rs)
//! do not reach: Video-MME's two input shapes, MVBench's per-task video prefixes, the
//! open-ended answers file pairing, repeated ids, Video-ChatGPT's answer-file list, and
//! errors that name the file.

use std::path::Path;
use videollama_eval::answer_file::render;
use videollama_eval::prompt::PromptPolicy;
use videollama_eval::results::Prediction;
use videollama_eval::runner::predict;
use videollama_eval::{load_items, Format, LoadRequest};

fn req(format: Format, q: &Path, v: &Path) -> LoadRequest {
    LoadRequest {
        format,
        questions: q.to_path_buf(),
        videos: v.to_path_buf(),
        answers: None,
    }
}

#[test]
fn videomme_rows_and_records_parse_alike() {
    let dir = tempfile::tempdir().unwrap();
    let choices = ["A. 1.", "B. 2.", "C. 3.", "D. 4."];
    let rows: Vec<serde_json::Value> = (0..3)
        .map(|k| {
            serde_json::json!({"video_id": if k < 2 {"001"} else {"002"}, "duration": "short",
                "domain": "Knowledge", "sub_category": "Law",
                "url": format!("https://www.youtube.com/watch?v=yt{}", k / 2), "videoID": format!("yt{}", k / 2),
                "question_id": format!("q{k}"), "task_type": "OCR Problems", "question": format!("Q{k}?"),
                "options": choices, "answer": "C"})
        })
        .collect();
    let flat = dir.path().join("rows.jsonl");
    std::fs::write(
        &flat,
        rows.iter()
            .map(|r| r.to_string() + "\n")
            .collect::<String>(),
    )
    .unwrap();
    let records = serde_json::json!([
        {"video_id": "001", "youtube_id": "yt0", "url": "https://www.youtube.com/watch?v=yt0",
         "duration": "short", "domain": "Knowledge", "sub_category": "Law", "questions": [
            {"question_id": "q0", "task_type": "OCR Problems", "question": "Q0?", "choices": choices, "answer": "C"},
            {"question_id": "q1", "task_type": "OCR Problems", "question": "Q1?", "choices": choices, "answer": "C"}]},
        {"video_id": "002", "youtube_id": "yt1", "url": "https://www.youtube.com/watch?v=yt1",
         "duration": "short", "domain": "Knowledge", "sub_category": "Law", "questions": [
            {"question_id": "q2", "task_type": "OCR Problems", "question": "Q2?", "choices": choices, "answer": "C"}]}
    ]);
    let rec = dir.path().join("records.json");
    std::fs::write(&rec, records.to_string()).unwrap();
    let a = load_items(&req(Format::Videomme, &flat, dir.path())).unwrap();
    let b = load_items(&req(Format::Videomme, &rec, dir.path())).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.len(), 3);
    assert_eq!(a[0].answer_index, Some(2));
    assert_eq!(a[2].media.video, Some(dir.path().join("yt1.mp4")));
}

#[test]
fn mvbench_prefix_and_answer_index() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("clevrer/video_validation");
    std::fs::create_dir_all(&nested).unwrap();
    std::fs::write(nested.join("x.mp4"), b"").unwrap();
    let q = dir.path().join("moving_direction.json");
    std::fs::write(
        &q,
        r#"[{"video": "x.mp4", "question": "Where?", "candidates": ["up", "down"], "answer": "down"},
            {"video": "y.mp4", "question": "Where?", "candidates": ["up", "down"], "answer": "left", "start": 1.5, "end": 3}]"#,
    )
    .unwrap();
    let items = load_items(&req(Format::Mvbench, &q, dir.path())).unwrap();
    assert_eq!(items[0].media.video, Some(nested.join("x.mp4")));
    assert_eq!(items[0].answer_index, Some(1));
    assert_eq!(items[0].extra["task_type"], "Moving Direction");
    // Not among the candidates: the reference's -1; clip bounds kept.
    assert_eq!(items[1].answer_index, Some(-1));
    assert_eq!(
        (items[1].media.start_s, items[1].media.end_s),
        (Some(1.5), Some(3.0))
    );
    assert_eq!(items[1].id, "moving_direction/1");
}

#[test]
fn open_qa_pairs_answers_and_video_chatgpt_writes_a_list() {
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("test_q.json");
    std::fs::write(
        &q,
        r#"[{"video_name": "a", "question": "what?", "question_id": "v_a_1"},
            {"video_name": "a", "question": "who?", "question_id": "v_a_2"}]"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("test_a.json"),
        r#"[{"answer": "cat", "type": 3, "question_id": "v_a_1"}]"#,
    )
    .unwrap();
    let err = load_items(&req(Format::ActivitynetQa, &q, dir.path())).unwrap_err();
    assert!(format!("{err:#}").contains("test_a.json"), "{err:#}");
    std::fs::write(
        dir.path().join("test_a.json"),
        r#"[{"answer": "cat", "type": 3, "question_id": "v_a_1"}, {"answer": "dog", "type": 3, "question_id": "v_a_2"}]"#,
    )
    .unwrap();
    let items = load_items(&req(Format::MsvdQa, &q, dir.path())).unwrap();
    assert_eq!(items[1].answer.as_deref(), Some("dog"));
    assert_eq!(items[0].task, "msvd_qa");
    let preds: Vec<Prediction> = vec![
        predict(Format::MsvdQa, &items[0], "what?".into(), "a cat".into()),
        Prediction::failed(&items[1], "who?".into(), "a.mp4: no such file".into()),
    ];
    assert_eq!(preds[0].correct, None);
    assert_eq!(
        render(Format::MsvdQa, &PromptPolicy::VideoChatGpt, &preds),
        r#"[{"id": "v_a_1", "question": "what?", "answer": "cat", "pred": "a cat"}]"#
    );
    assert_eq!(
        render(Format::MsvdQa, &PromptPolicy::VideoLlama2, &preds),
        "{\"id\": \"v_a_1\", \"question\": \"what?\", \"answer\": \"cat\", \"pred\": \"a cat\"}\n\
         {\"id\": \"v_a_2\", \"question\": \"who?\", \"answer\": \"dog\", \"pred\": \"error\"}\n"
    );
}

#[test]
fn repeated_ids_and_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("avqa.json");
    let conv = r#"[{"from": "human", "value": "<video>\n Which is louder? "}, {"from": "gpt", "value": "left"}]"#;
    std::fs::write(
        &q,
        format!(r#"[{{"video": "m/1.mp4", "conversations": {conv}}}, {{"video": "m/1.mp4", "conversations": {conv}}}]"#),
    )
    .unwrap();
    let items = load_items(&req(Format::Avqa, &q, dir.path())).unwrap();
    assert_eq!(items[0].id, "avqa/1.mp4");
    assert_eq!(items[1].id, "avqa/1.mp4#1");
    assert_eq!(items[0].question, "Which is louder?");
    assert!(items[0].media.with_audio);
    let p = predict(
        Format::Avqa,
        &items[0],
        items[0].question.clone(),
        "Left.".into(),
    );
    assert_eq!(p.correct, Some(true));

    std::fs::write(&q, "[{").unwrap();
    let err = load_items(&req(Format::Egoschema, &q, dir.path())).unwrap_err();
    assert!(format!("{err:#}").contains("avqa.json"));
    std::fs::write(&q, "[]").unwrap();
    assert!(load_items(&req(Format::ClothoAqa, &q, dir.path())).is_err());
}
