//! `videollama eval` end to end with the tiny golden checkpoints on synthetic clips from
//! the demo world's generator, one small dataset per benchmark format built here.
//!
//! The expected answer files are made by an independent path: the instruction written out
//! literally as the reference's script builds it, the model's answer from `videollama ask`
//! on the same media, the option letter from `videollama_eval::score` (checked against the
//! reference's own parsers in crates/eval/tests/parsers.rs), the line in `json.dumps` form
//! (`pyjson`, checked against CPython's output). Also: a run killed at a random point and
//! rerun equals an uninterrupted run; shards 0/2 + 1/2 merged equal one run; the judge
//! through a local mock endpoint; scripts/eval-shard.sh and the deploy manifests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use videollama_demodata::{generate, read_meta, ClipMeta, DemoDataConfig};
use videollama_eval::pyjson::{dumps, PyValue};
use videollama_eval::score;

const NEW_TOKENS: &str = "6";
const TAIL: &str =
    "Answer with the option's letter from the given choices directly and only give the best option.";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tiny() -> PathBuf {
    root().join("tests/golden/videollama2.1-qwen2-tiny/checkpoint")
}

fn tiny_av() -> PathBuf {
    root().join("tests/golden/videollama2.1-av-tiny/checkpoint")
}

struct World {
    _dir: tempfile::TempDir,
    clips: Vec<(PathBuf, ClipMeta)>,
}

/// Four 1-second 224×224 clips with sound, generated once for this test binary.
fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = DemoDataConfig::new(0, 0, 4);
        for s in &mut cfg.splits {
            s.layout.width = vec![(224, 224)];
            s.layout.height = vec![(224, 224)];
        }
        cfg.duration_s = (1.0, 1.0);
        cfg.threads = 2;
        generate(dir.path(), &cfg, |_| {}).unwrap();
        let metas = read_meta(dir.path().join("meta.jsonl")).unwrap();
        let clips = metas
            .into_iter()
            .map(|m| (dir.path().join(&m.video), m))
            .collect();
        World { _dir: dir, clips }
    })
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_videollama"))
}

fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

thread_local! {
    /// (prompt, answer) of every `ask` of the current test, in order.
    static ASKED: std::cell::RefCell<Vec<(String, String)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The prompts `eval` gave the model and its answers (predictions in dataset order, failed
/// items left out) equal those of the `ask` calls made so far in this test; clears them.
fn check_asked(out: &Path) {
    let asked = ASKED.with(|a| std::mem::take(&mut *a.borrow_mut()));
    let preds = videollama_eval::results::read_predictions(&out.join("predictions.jsonl")).unwrap();
    let got: Vec<(String, String)> = preds
        .into_iter()
        .filter_map(|p| p.output.map(|o| (p.prompt, o)))
        .collect();
    assert_eq!(got, asked);
}

/// `videollama ask --json` → the answer text.
fn ask(model: &Path, media_flag: &str, media: &Path, prompt: &str) -> String {
    let out = ok(bin()
        .args([
            "ask",
            "--dtype",
            "f32",
            "--max-new-tokens",
            NEW_TOKENS,
            "--json",
        ])
        .arg("--model")
        .arg(model)
        .arg(media_flag)
        .arg(media)
        .arg(prompt)
        .output()
        .unwrap());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let answer = v["answer"].as_str().unwrap().to_string();
    ASKED.with(|a| a.borrow_mut().push((prompt.to_string(), answer.clone())));
    answer
}

fn eval_cmd(model: &Path, format: &str, questions: &Path, videos: &Path, out: &Path) -> Command {
    let mut c = bin();
    c.args([
        "eval",
        "--dtype",
        "f32",
        "--max-new-tokens",
        NEW_TOKENS,
        "--no-progress",
    ])
    .args(["--format", format])
    .arg("--model")
    .arg(model)
    .arg("--questions")
    .arg(questions)
    .arg("--videos")
    .arg(videos)
    .arg("--out")
    .arg(out);
    c
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn summary(out: &Path) -> serde_json::Value {
    serde_json::from_str(&read(&out.join("summary.json"))).unwrap()
}

fn s(x: &str) -> PyValue {
    PyValue::str(x)
}

fn write_json(p: &Path, v: &serde_json::Value) {
    std::fs::write(p, serde_json::to_string_pretty(v).unwrap()).unwrap();
}

fn link(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap();
}

fn letters_block(options: &[&str]) -> String {
    options
        .iter()
        .enumerate()
        .map(|(i, o)| format!("({}) {o}\n", (b'A' + i as u8) as char))
        .collect()
}

fn mc_options(clip: &ClipMeta, k: usize) -> (String, Vec<String>) {
    let qa = &clip.qa[k % clip.qa.len()];
    let mut opts = vec![
        qa.answer.clone(),
        "a purple hexagon".into(),
        "nothing at all".into(),
    ];
    opts.rotate_left(k % 3);
    (qa.question.clone(), opts)
}

/// (file stem, reference task name, [(video, clip index for the question, qa index)])
type Task<'a> = (&'a str, &'a str, Vec<(&'a str, usize, usize)>);

#[test]
fn mvbench_prediction_file_matches_ask() {
    let w = world();
    let dir = tempfile::tempdir().unwrap();
    let videos = dir.path().join("video");
    let qdir = dir.path().join("json");
    std::fs::create_dir_all(&videos).unwrap();
    std::fs::create_dir_all(&qdir).unwrap();
    link(&w.clips[0].0, &videos.join("a.mp4"));
    link(&w.clips[1].0, &videos.join("b.mp4"));
    std::fs::write(videos.join("broken.mp4"), b"not a video").unwrap();
    // (file stem, reference task name, [(video, clip index for the question, qa index)])
    let tasks: [Task; 2] = [
        (
            "action_count",
            "Action Count",
            vec![("a.mp4", 0, 0), ("b.mp4", 1, 1), ("a.mp4", 0, 2)],
        ),
        (
            "my_task",
            "my_task",
            vec![("b.mp4", 1, 0), ("gone.mp4", 0, 0), ("broken.mp4", 0, 1)],
        ),
    ];
    let mut expected = String::new();
    let (mut correct, mut total) = (0, 0);
    for (stem, task_type, rows) in &tasks {
        let mut items = Vec::new();
        for (k, (video, c, q)) in rows.iter().enumerate() {
            let (question, opts) = mc_options(&w.clips[*c].1, *q + k);
            let answer = opts[k % 3].clone();
            items.push(serde_json::json!({
                "video": video, "question": question, "candidates": opts, "answer": answer,
            }));
            let path = videos.join(video);
            let refs: Vec<&str> = opts.iter().map(|s| s.as_str()).collect();
            let prompt = format!(
                "Question: {question}\nOptions:\n{}{TAIL}",
                letters_block(&refs)
            );
            let pred = if *video == "a.mp4" || *video == "b.mp4" {
                let out = ask(&tiny(), "--video", &path, &prompt);
                score::parse_mvbench(&out, &opts) as i64
            } else {
                -1
            };
            total += 1;
            correct += usize::from(pred == (k % 3) as i64);
            expected.push_str(&dumps(&PyValue::obj(vec![
                ("vid", s(&path.to_string_lossy())),
                ("task_type", s(task_type)),
                ("pred", PyValue::Int(pred)),
                ("gt", PyValue::Int((k % 3) as i64)),
            ])));
            expected.push('\n');
        }
        write_json(
            &qdir.join(format!("{stem}.json")),
            &serde_json::Value::Array(items),
        );
    }
    let out = dir.path().join("out");
    let o = ok(eval_cmd(&tiny(), "mvbench", &qdir, &videos, &out)
        .output()
        .unwrap());
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.contains("action_count") && table.contains("overall"),
        "{table}"
    );
    assert_eq!(read(&out.join("answers.json")), expected);
    check_asked(&out);
    let s = summary(&out);
    assert_eq!(s["overall"]["total"], total);
    assert_eq!(s["overall"]["correct"], correct);
    assert_eq!(s["overall"]["errors"], 2);
    assert_eq!(s["tasks"]["my_task"]["errors"], 2);
    assert_eq!(s["tasks"]["action_count"]["total"], 3);
    let preds = read(&out.join("predictions.jsonl"));
    assert_eq!(preds.lines().count(), 6);
    assert!(preds.contains("gone.mp4: no such file"), "{preds}");
}

#[test]
fn egoschema_and_perception_test_prediction_files() {
    let w = world();
    let dir = tempfile::tempdir().unwrap();
    let videos = dir.path().join("videos");
    std::fs::create_dir_all(&videos).unwrap();
    // EgoSchema: two questions, the public answer of only the first.
    link(&w.clips[2].0, &videos.join("ego1.mp4"));
    link(&w.clips[3].0, &videos.join("ego2.mp4"));
    let mut qs = Vec::new();
    let mut expected = String::new();
    for (k, uid) in ["ego1", "ego2"].iter().enumerate() {
        let qa = &w.clips[2 + k].1.qa[0];
        let opts = [qa.answer.as_str(), "one", "two", "three", "four"];
        qs.push(serde_json::json!({
            "q_uid": uid, "question": qa.question,
            "option 0": opts[0], "option 1": opts[1], "option 2": opts[2], "option 3": opts[3], "option 4": opts[4],
        }));
        let prompt = format!(
            "Select the best answer to the following multiple-choice question based on the video.\n{}\nOptions:\n{}{TAIL} The best answer is: ",
            qa.question,
            letters_block(&opts)
        );
        let out = ask(
            &tiny(),
            "--video",
            &videos.join(format!("{uid}.mp4")),
            &prompt,
        );
        expected.push_str(&format!("{uid}, {}\n", score::parse_egoschema(&out)));
    }
    let qfile = dir.path().join("questions.json");
    write_json(&qfile, &serde_json::Value::Array(qs));
    write_json(
        &dir.path().join("subset_answers.json"),
        &serde_json::json!({"ego1": 0}),
    );
    let out = dir.path().join("ego");
    ok(eval_cmd(&tiny(), "egoschema", &qfile, &videos, &out)
        .output()
        .unwrap());
    assert_eq!(read(&out.join("answers.json")), expected);
    check_asked(&out);
    let sm = summary(&out);
    assert_eq!(
        (
            sm["overall"]["total"].as_u64(),
            sm["overall"]["unscored"].as_u64()
        ),
        (Some(1), Some(1))
    );

    // Perception Test: file order kept ("zz" before "aa"), grouped per video.
    link(&w.clips[0].0, &videos.join("zz.mp4"));
    link(&w.clips[1].0, &videos.join("aa.mp4"));
    let mut expected = String::new();
    let mut text = String::from("{");
    for (vi, (vid, clip, nq)) in [("zz", 0usize, 2usize), ("aa", 1, 1)].iter().enumerate() {
        let mut qas_json = Vec::new();
        let mut qas_py = Vec::new();
        for q in 0..*nq {
            let (question, opts) = mc_options(&w.clips[*clip].1, q);
            qas_json.push(serde_json::json!({"id": q, "question": question, "options": opts, "answer_id": q % 3}));
            let refs: Vec<&str> = opts.iter().map(|s| s.as_str()).collect();
            let prompt = format!(
                "Question: {question}\nOptions:\n{}{TAIL}",
                letters_block(&refs)
            );
            let out = ask(
                &tiny(),
                "--video",
                &videos.join(format!("{vid}.mp4")),
                &prompt,
            );
            let p = score::parse_perception_test(&out, &opts);
            qas_py.push(PyValue::obj(vec![
                ("id", PyValue::Int(q as i64)),
                ("answer_id", PyValue::Int(p as i64)),
                ("answer", s(&opts[p])),
            ]));
        }
        if vi > 0 {
            text.push(',');
        }
        text.push_str(&format!(
            "\"{vid}\": {}",
            serde_json::json!({"metadata": {"video_id": vid}, "mc_question": qas_json})
        ));
        expected.push_str(&format!("\"{vid}\": {},\n", dumps(&PyValue::List(qas_py))));
    }
    text.push('}');
    let qfile = dir.path().join("mc_question_valid.json");
    std::fs::write(&qfile, text).unwrap();
    let out = dir.path().join("pt");
    ok(eval_cmd(&tiny(), "perception-test", &qfile, &videos, &out)
        .output()
        .unwrap());
    assert_eq!(read(&out.join("answers.json")), expected);
    check_asked(&out);
    assert_eq!(summary(&out)["overall"]["total"], 3);
}

#[test]
fn videomme_prediction_file_from_parquet_rows() {
    let w = world();
    let dir = tempfile::tempdir().unwrap();
    let videos = dir.path().join("videos");
    std::fs::create_dir_all(&videos).unwrap();
    link(&w.clips[0].0, &videos.join("abc.mp4"));
    link(&w.clips[1].0, &videos.join("def.mp4"));
    let choices = ["A. red.", "B. blue.", "C. green.", "D. pink."];
    let rows = [
        ("001", "abc", "short", 0usize, "B"),
        ("001", "abc", "short", 1, "A"),
        ("002", "def", "medium", 0, "D"),
    ];
    let mut json_rows = Vec::new();
    let mut per_video: Vec<(String, String, String, Vec<PyValue>)> = Vec::new();
    for (vid, yt, duration, q, answer) in rows {
        let clip = if yt == "abc" { 0 } else { 1 };
        let question = w.clips[clip].1.qa[q].question.clone();
        let qid = format!("{vid}-{}", q + 1);
        json_rows.push(serde_json::json!({
            "video_id": vid, "duration": duration, "domain": "Knowledge", "sub_category": "Astronomy",
            "url": format!("https://www.youtube.com/watch?v={yt}"), "videoID": yt, "question_id": qid,
            "task_type": "Counting Problem", "question": question, "options": choices, "answer": answer,
        }));
        let prompt = format!(
            "Select the best answer to the following multiple-choice question based on the video. Respond with only the letter (A, B, C, or D) of the correct option.\n{question}\n{}{TAIL} The best answer is: ",
            choices.iter().map(|c| format!("{c}\n")).collect::<String>()
        );
        let out = ask(
            &tiny(),
            "--video",
            &videos.join(format!("{yt}.mp4")),
            &prompt,
        );
        let letter = ((b'A' + score::parse_videomme(&out, &choices.map(String::from)) as u8)
            as char)
            .to_string();
        let qpy = PyValue::obj(vec![
            ("question_id", s(&qid)),
            ("task_type", s("Counting Problem")),
            ("question", s(&question)),
            (
                "choices",
                PyValue::List(choices.iter().map(|c| s(c)).collect()),
            ),
            ("answer", s(answer)),
            ("response", s(&letter)),
        ]);
        match per_video.last_mut() {
            Some(v) if v.0 == vid => v.3.push(qpy),
            _ => per_video.push((vid.into(), yt.into(), duration.into(), vec![qpy])),
        }
    }
    let mut expected = String::new();
    for (vid, yt, duration, qs) in per_video {
        expected.push_str(&dumps(&PyValue::obj(vec![
            ("video_id", s(&vid)),
            ("youtube_id", s(&yt)),
            ("url", s(&format!("https://www.youtube.com/watch?v={yt}"))),
            ("duration", s(&duration)),
            ("domain", s("Knowledge")),
            ("sub_category", s("Astronomy")),
            ("questions", PyValue::List(qs)),
            ("missing", PyValue::Bool(false)),
        ])));
        expected.push_str(",\n");
    }
    let qfile = dir.path().join("videomme.json");
    write_json(&qfile, &serde_json::Value::Array(json_rows));
    let out = dir.path().join("out");
    ok(eval_cmd(&tiny(), "videomme", &qfile, &videos, &out)
        .output()
        .unwrap());
    assert_eq!(read(&out.join("answers.json")), expected);
    check_asked(&out);
    let sm = summary(&out);
    assert_eq!(sm["tasks"]["short"]["total"], 2);
    assert_eq!(sm["tasks"]["medium"]["total"], 1);
}

/// ActivityNet-QA files (`test_q.json` / `test_a.json`) over the demo world's own
/// questions and answers.
fn activitynet(dir: &Path) -> (PathBuf, PathBuf, Vec<(String, String, PathBuf)>) {
    let w = world();
    let videos = dir.join("all_test");
    std::fs::create_dir_all(&videos).unwrap();
    let mut q = Vec::new();
    let mut a = Vec::new();
    let mut rows = Vec::new();
    for (k, (clip, name, file)) in [
        (0usize, "n1", "v_n1.mp4"),
        (1, "n2", "n2.mp4"),
        (0, "n1", "v_n1.mp4"),
    ]
    .iter()
    .enumerate()
    {
        let path = videos.join(file);
        if !path.exists() {
            link(&w.clips[*clip].0, &path);
        }
        let qa = &w.clips[*clip].1.qa[k];
        q.push(serde_json::json!({"video_name": name, "question": qa.question, "question_id": format!("q{k}")}));
        a.push(serde_json::json!({"answer": qa.answer, "type": 0, "question_id": format!("q{k}")}));
        rows.push((qa.question.clone(), qa.answer.clone(), path));
    }
    let qfile = dir.join("test_q.json");
    write_json(&qfile, &serde_json::Value::Array(q));
    write_json(&dir.join("test_a.json"), &serde_json::Value::Array(a));
    (qfile, videos, rows)
}

#[test]
fn open_ended_prediction_files_and_judge() {
    let dir = tempfile::tempdir().unwrap();
    let (qfile, videos, rows) = activitynet(dir.path());
    let mut expected = String::new();
    for (k, (question, answer, path)) in rows.iter().enumerate() {
        let out = ask(&tiny(), "--video", path, question);
        expected.push_str(&dumps(&PyValue::obj(vec![
            ("id", s(&format!("q{k}"))),
            ("question", s(question)),
            ("answer", s(answer)),
            ("pred", s(&out)),
        ])));
        expected.push('\n');
    }
    // A mock OpenAI-compatible judge: "yes" for q0, "no" otherwise.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for (served, stream) in listener.incoming().take(3).enumerate() {
            let mut st = stream.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Read the head, then Content-Length bytes of body.
            let body = loop {
                let n = st.read(&mut chunk).unwrap();
                buf.extend_from_slice(&chunk[..n]);
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..i]).to_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .unwrap()
                        .trim()
                        .parse()
                        .unwrap();
                    while buf.len() < i + 4 + len {
                        let n = st.read(&mut chunk).unwrap();
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    break String::from_utf8(buf[i + 4..i + 4 + len].to_vec()).unwrap();
                }
            };
            // The first request (dataset order) is judged right, the others wrong.
            let verdict = if served == 0 {
                "{'pred': 'yes', 'score': 4}"
            } else {
                "{'pred': 'no', 'score': 1}"
            };
            tx.send(body).unwrap();
            let reply = serde_json::json!({"choices": [{"message": {"role": "assistant", "content": verdict}}]}).to_string();
            write!(
                st,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{reply}",
                reply.len()
            )
            .unwrap();
        }
    });
    let out = dir.path().join("out");
    let o = ok(eval_cmd(&tiny(), "activitynet-qa", &qfile, &videos, &out)
        .args([
            "--judge-url",
            &format!("http://127.0.0.1:{port}/v1"),
            "--judge-model",
            "mock",
        ])
        .output()
        .unwrap());
    assert_eq!(read(&out.join("answers.json")), expected);
    check_asked(&out);
    let bodies: Vec<String> = rx.try_iter().collect();
    assert_eq!(bodies.len(), 3);
    let first: serde_json::Value = serde_json::from_str(&bodies[0]).unwrap();
    assert_eq!(first["model"], "mock");
    let user = first["messages"][1]["content"].as_str().unwrap();
    assert!(user.starts_with(&format!(
        "Please evaluate the following video-based question-answer pair:\n\nQuestion: {}\nCorrect Answer: {}\nPredicted Answer: ",
        rows[0].0, rows[0].1
    )));
    // yes / (yes + no) = 1/3, mean score (4 + 1 + 1) / 3.
    let sm = summary(&out);
    assert_eq!(sm["overall"]["total"], 3);
    assert_eq!(sm["overall"]["correct"], 1);
    assert_eq!(sm["overall"]["score"], 2.0);
    assert_eq!(read(&out.join("judge.jsonl")).lines().count(), 3);
    assert!(String::from_utf8_lossy(&o.stdout).contains("score 2.00"));
    // Without a judge the open answers are written but not scored.
    let out2 = dir.path().join("nojudge");
    ok(eval_cmd(&tiny(), "activitynet-qa", &qfile, &videos, &out2)
        .output()
        .unwrap());
    assert_eq!(summary(&out2)["overall"]["unscored"], 3);
    assert_eq!(read(&out2.join("answers.json")), expected);
}

#[test]
fn sound_formats_prediction_files() {
    let w = world();
    let dir = tempfile::tempdir().unwrap();
    let media = dir.path().join("media");
    std::fs::create_dir_all(media.join("clips")).unwrap();
    link(&w.clips[2].0, &media.join("clips/av1.mp4"));
    link(
        &root().join("tests/golden/videollama2.1-av-tiny/inputs/audio.wav"),
        &media.join("s1.wav"),
    );
    // AVQA: two questions about one video (the reference's ids repeat).
    let mut items = Vec::new();
    let mut expected = String::new();
    let mut correct = 0;
    for k in 0..2 {
        let qa = &w.clips[2].1.qa[k];
        items.push(
            serde_json::json!({"video": "clips/av1.mp4", "conversations": [
            {"from": "human", "value": format!("<video>\n{}", qa.question)},
            {"from": "gpt", "value": qa.answer}]}),
        );
        let out = ask(
            &tiny_av(),
            "--video",
            &media.join("clips/av1.mp4"),
            &qa.question,
        );
        correct += usize::from(score::exact_match(&qa.answer, &out));
        expected.push_str(&dumps(&PyValue::obj(vec![
            ("id", s("av1.mp4")),
            ("question", s(&qa.question)),
            ("answer", s(&qa.answer)),
            ("pred", s(&out)),
        ])));
        expected.push('\n');
    }
    let qfile = dir.path().join("AVQA_music_test.json");
    write_json(&qfile, &serde_json::Value::Array(items));
    let out = dir.path().join("avqa");
    ok(eval_cmd(&tiny_av(), "avqa", &qfile, &media, &out)
        .output()
        .unwrap());
    assert_eq!(read(&out.join("answers.json")), expected);
    check_asked(&out);
    assert_eq!(summary(&out)["overall"]["correct"], correct);
    assert_eq!(summary(&out)["overall"]["total"], 2);

    // Clotho-AQA: sound only, the reference's one-word instruction.
    let mut items = Vec::new();
    let mut expected = String::new();
    for (k, (q, a)) in [
        ("Is there a beep?", "yes"),
        ("What makes the sound?", "machine"),
    ]
    .iter()
    .enumerate()
    {
        items.push(
            serde_json::json!({"id": 7 + k, "audio": "s1.wav", "conversations": [
            {"from": "human", "value": q}, {"from": "gpt", "value": a}]}),
        );
        let prompt = format!("Question: {q}\nAnswer the question using a single word.");
        let out = ask(&tiny_av(), "--audio", &media.join("s1.wav"), &prompt);
        expected.push_str(&dumps(&PyValue::obj(vec![
            ("id", PyValue::Int(7 + k as i64)),
            ("question", s(&prompt)),
            ("answer", s(a)),
            ("pred", s(&out)),
        ])));
        expected.push('\n');
    }
    let qfile = dir.path().join("clothoAQA_eval.json");
    write_json(&qfile, &serde_json::Value::Array(items));
    let out = dir.path().join("clotho");
    ok(eval_cmd(&tiny_av(), "clotho-aqa", &qfile, &media, &out)
        .output()
        .unwrap());
    assert_eq!(read(&out.join("answers.json")), expected);
    check_asked(&out);
}

/// A bigger MVBench set (12 questions over 4 clips) for resume and shard tests.
fn mvbench_set(dir: &Path) -> (PathBuf, PathBuf) {
    let w = world();
    let videos = dir.join("video");
    let qdir = dir.join("json");
    std::fs::create_dir_all(&videos).unwrap();
    std::fs::create_dir_all(&qdir).unwrap();
    for (i, (p, _)) in w.clips.iter().enumerate() {
        link(p, &videos.join(format!("c{i}.mp4")));
    }
    for (t, stem) in ["moving_count", "object_existence"].iter().enumerate() {
        let items: Vec<serde_json::Value> = (0..6)
            .map(|k| {
                let c = (k + t) % 4;
                let (question, opts) = mc_options(&w.clips[c].1, k);
                serde_json::json!({"video": format!("c{c}.mp4"), "question": question,
                    "candidates": opts, "answer": opts[k % 3]})
            })
            .collect();
        write_json(
            &qdir.join(format!("{stem}.json")),
            &serde_json::Value::Array(items),
        );
    }
    (qdir, videos)
}

fn sorted_lines(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = read(p).lines().map(String::from).collect();
    v.sort();
    v
}

fn assert_same_run(a: &Path, b: &Path) {
    assert_eq!(
        sorted_lines(&a.join("predictions.jsonl")),
        sorted_lines(&b.join("predictions.jsonl"))
    );
    assert_eq!(read(&a.join("summary.json")), read(&b.join("summary.json")));
    assert_eq!(read(&a.join("answers.json")), read(&b.join("answers.json")));
}

#[test]
fn killed_run_resumes_to_the_same_results() {
    let dir = tempfile::tempdir().unwrap();
    let (qdir, videos) = mvbench_set(dir.path());
    let full = dir.path().join("full");
    ok(eval_cmd(&tiny(), "mvbench", &qdir, &videos, &full)
        .output()
        .unwrap());
    assert_eq!(summary(&full)["overall"]["total"], 12);

    // Kill with SIGKILL once a pseudo-random number of predictions is on disk, tear the
    // last line as an interrupted write would, then rerun.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as usize;
    let k = 1 + seed % 10;
    let out = dir.path().join("killed");
    let mut child = eval_cmd(&tiny(), "mvbench", &qdir, &videos, &out)
        .args(["--prefetch", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let preds = out.join("predictions.jsonl");
    let t0 = std::time::Instant::now();
    loop {
        let n = std::fs::read_to_string(&preds)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        if n >= k || t0.elapsed().as_secs() > 60 || child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let _ = child.kill();
    child.wait().unwrap();
    let before = std::fs::read_to_string(&preds)
        .map(|t| t.lines().count())
        .unwrap_or(0);
    eprintln!("killed after {before} predictions (target {k})");
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&preds)
            .unwrap();
        f.write_all(br#"{"id": "moving_count/5", "order": 5, "ta"#)
            .unwrap();
    }
    let o = ok(eval_cmd(&tiny(), "mvbench", &qdir, &videos, &out)
        .output()
        .unwrap());
    let msg = String::from_utf8_lossy(&o.stdout);
    assert!(
        msg.contains(&format!("{before} from an earlier run")),
        "{msg}"
    );
    assert_same_run(&full, &out);

    // --stop-after: the same at an exact point, twice.
    let out = dir.path().join("stopped");
    for n in [3, 4] {
        ok(eval_cmd(&tiny(), "mvbench", &qdir, &videos, &out)
            .args(["--stop-after", &n.to_string()])
            .output()
            .unwrap());
    }
    assert_eq!(read(&out.join("predictions.jsonl")).lines().count(), 7);
    ok(eval_cmd(&tiny(), "mvbench", &qdir, &videos, &out)
        .output()
        .unwrap());
    assert_same_run(&full, &out);
}

#[test]
fn two_shards_merged_equal_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let (qdir, videos) = mvbench_set(dir.path());
    let full = dir.path().join("full");
    ok(eval_cmd(&tiny(), "mvbench", &qdir, &videos, &full)
        .output()
        .unwrap());
    let shards: Vec<PathBuf> = (0..2)
        .map(|i| dir.path().join(format!("shard{i}")))
        .collect();
    let children: Vec<_> = shards
        .iter()
        .enumerate()
        .map(|(i, o)| {
            eval_cmd(&tiny(), "mvbench", &qdir, &videos, o)
                .args(["--shard", &format!("{i}/2"), "--threads", "1"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        ok(c.wait_with_output().unwrap());
    }
    let n0 = read(&shards[0].join("predictions.jsonl")).lines().count();
    let n1 = read(&shards[1].join("predictions.jsonl")).lines().count();
    assert_eq!(n0 + n1, 12);
    assert!(n0 > 0 && n1 > 0);
    let merged = dir.path().join("merged");
    let o = ok(bin()
        .args(["eval", "merge"])
        .args(&shards)
        .arg("--out")
        .arg(&merged)
        .output()
        .unwrap());
    assert!(String::from_utf8_lossy(&o.stdout).contains("overall"));
    assert_same_run(&full, &merged);
    // --prefix-cache: a video's later questions reuse the KV cache of the common prefix;
    // the tiny model's answers come out the same.
    let pc = dir.path().join("prefix");
    ok(eval_cmd(&tiny(), "mvbench", &qdir, &videos, &pc)
        .arg("--prefix-cache")
        .output()
        .unwrap());
    assert_same_run(&full, &pc);
    let t: serde_json::Value = serde_json::from_str(&read(&pc.join("timing.json"))).unwrap();
    let t0: serde_json::Value = serde_json::from_str(&read(&full.join("timing.json"))).unwrap();
    assert_eq!(t0["prompt_positions_reused"], 0);
    assert!(t["prompt_positions_reused"].as_u64().unwrap() > 0);
    assert_eq!(
        t["prompt_positions_reused"].as_u64().unwrap()
            + t["prompt_positions_prefilled"].as_u64().unwrap(),
        t0["prompt_positions_prefilled"].as_u64().unwrap()
    );
    // Resuming a shard into another shard's folder is refused.
    let o = eval_cmd(&tiny(), "mvbench", &qdir, &videos, &shards[0])
        .args(["--shard", "1/2"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("different run"));
}

#[test]
fn bad_input_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let o = eval_cmd(
        &tiny(),
        "nope",
        dir.path(),
        dir.path(),
        &dir.path().join("o"),
    )
    .output()
    .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown format"));
    let q = dir.path().join("q.json");
    std::fs::write(&q, "{not json").unwrap();
    let o = eval_cmd(&tiny(), "mvbench", &q, dir.path(), &dir.path().join("o"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("q.json"));
    let o = bin()
        .args(["eval", "--format", "mvbench"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("--questions"));
}

/// scripts/eval-shard.sh maps the Kubernetes / Slurm index to `--shard i/n`, and the
/// manifests run it with the right variables.
#[test]
fn shard_script_and_manifests() {
    let dir = tempfile::tempdir().unwrap();
    let stub = dir.path().join("stub.sh");
    let log = dir.path().join("args.txt");
    std::fs::write(
        &stub,
        format!("#!/bin/sh\necho \"$@\" >> {}\n", log.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = root().join("scripts/eval-shard.sh");
    let run = |env: &[(&str, &str)]| {
        let mut c = Command::new("sh");
        c.arg(&script)
            .args(["--format", "mvbench", "--out", "/results"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("VIDEOLLAMA_BIN", &stub);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    ok(run(&[("JOB_COMPLETION_INDEX", "2"), ("EVAL_SHARDS", "4")]));
    ok(run(&[
        ("SLURM_ARRAY_TASK_ID", "1"),
        ("SLURM_ARRAY_TASK_COUNT", "3"),
    ]));
    ok(run(&[
        ("SLURM_ARRAY_TASK_ID", "5"),
        ("SLURM_ARRAY_TASK_MIN", "4"),
        ("SLURM_ARRAY_TASK_COUNT", "2"),
    ]));
    let lines: Vec<String> = read(&log).lines().map(String::from).collect();
    assert_eq!(
        lines,
        [
            "eval --format mvbench --out /results/shard-2-of-4 --shard 2/4",
            "eval --format mvbench --out /results/shard-1-of-3 --shard 1/3",
            "eval --format mvbench --out /results/shard-1-of-2 --shard 1/2",
        ]
    );
    // No index, or an index out of range: a clear error, the binary not run.
    let o = run(&[]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("JOB_COMPLETION_INDEX"));
    let o = run(&[("JOB_COMPLETION_INDEX", "4"), ("EVAL_SHARDS", "4")]);
    assert!(!o.status.success());
    assert_eq!(read(&log).lines().count(), 3);

    let k8s = read(&root().join("deploy/k8s/eval-indexed-job.yaml"));
    for needle in [
        "completionMode: Indexed",
        "scripts/eval-shard.sh",
        "EVAL_SHARDS",
        "completions: 4",
        "parallelism:",
    ] {
        assert!(k8s.contains(needle), "k8s manifest lacks {needle:?}");
    }
    let count = |text: &str, key: &str| -> String {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .map(|v| v.trim().trim_matches('"').to_string())
            .unwrap_or_default()
    };
    // The completions count and the shard count agree.
    assert_eq!(count(&k8s, "completions:"), "4");
    assert!(k8s.contains("value: \"4\""));
    let slurm = read(&root().join("deploy/slurm/eval-array.sbatch"));
    assert!(slurm.contains("#SBATCH --array=0-3"));
    assert!(slurm.contains("scripts/eval-shard.sh"));
    assert!(slurm.contains("eval merge"));
}

/// Video-ChatGPT's own policy: the bare question, the answer file one JSON list.
#[test]
fn video_chatgpt_writes_its_list_answer_file() {
    let dir = tempfile::tempdir().unwrap();
    let (qfile, videos, rows) = activitynet(dir.path());
    let model = root().join("tests/golden/video-chatgpt-tiny/checkpoint");
    let mut expected = Vec::new();
    for (k, (question, answer, path)) in rows.iter().enumerate() {
        let out = ask(&model, "--video", path, question);
        expected.push(PyValue::obj(vec![
            ("id", s(&format!("q{k}"))),
            ("question", s(question)),
            ("answer", s(answer)),
            ("pred", s(&out)),
        ]));
    }
    let out = dir.path().join("out");
    ok(eval_cmd(&model, "msvd-qa", &qfile, &videos, &out)
        .output()
        .unwrap());
    assert_eq!(
        read(&out.join("answers.json")),
        dumps(&PyValue::List(expected))
    );
    check_asked(&out);
    assert!(read(&out.join("run.json")).contains("\"prompt_policy\": \"video-chatgpt\""));
}

/// The demo world's own multiple-choice set (`mvbench/test/`, written by the generator as
/// `make-demo-data` runs it) goes through `eval --format mvbench` as it is, `--videos` the
/// dataset folder: every item predicted without error, per-category totals equal to the
/// task files' lengths, and each file's answer right by the world's scorer on the clip's
/// ground truth (the model is the tiny random checkpoint: its accuracy is not checked).
#[test]
fn demo_world_multiple_choice_set_runs_through_eval() {
    let w = world();
    let root = w._dir.path();
    let qdir = root.join("mvbench/test");
    let categories = ["color", "count", "motion", "shape", "sound"];
    let mut total = 0;
    for c in categories {
        let items: Vec<serde_json::Value> =
            serde_json::from_str(&read(&qdir.join(format!("{c}.json")))).unwrap();
        assert_eq!(items.len(), w.clips.len(), "{c}");
        for it in &items {
            let video = it["video"].as_str().unwrap();
            let (path, meta) = w.clips.iter().find(|(_, m)| m.video == video).unwrap();
            assert!(path.exists());
            let qa = meta
                .qa
                .iter()
                .find(|q| q.question_type.category().name() == c)
                .unwrap();
            assert_eq!(it["question"], qa.question.as_str());
            let answer = it["answer"].as_str().unwrap();
            let cands: Vec<&str> = it["candidates"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_str().unwrap())
                .collect();
            assert_eq!(cands.len(), 4);
            assert_eq!(cands.iter().filter(|x| **x == answer).count(), 1);
            for x in &cands {
                assert_eq!(
                    videollama_demodata::score(x, meta, qa.question_type),
                    *x == answer,
                    "{c}: {x:?} for {:?}",
                    meta.caption
                );
            }
        }
        total += items.len();
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let o = ok(eval_cmd(&tiny(), "mvbench", &qdir, root, &out)
        .output()
        .unwrap());
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.contains("motion") && table.contains("overall"),
        "{table}"
    );
    let s = summary(&out);
    assert_eq!(s["overall"]["total"], total);
    assert_eq!(s["overall"]["errors"], 0);
    for c in categories {
        assert_eq!(s["tasks"][c]["total"], w.clips.len(), "{c}");
    }
    let preds = videollama_eval::results::read_predictions(&out.join("predictions.jsonl")).unwrap();
    assert_eq!(preds.len(), total);
    for p in &preds {
        assert!(p.output.is_some() && p.error.is_none(), "{p:?}");
        assert!(p.answer_index.is_some_and(|i| (0..4).contains(&i)), "{p:?}");
    }
}
