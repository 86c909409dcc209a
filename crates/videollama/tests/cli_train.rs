//! `make-demo-data` → `train` → `ask` through the binary on a tiny base checkpoint: the
//! trained folder loads and answers, the log has one line per step and the loss curve is
//! written. (The training numerics themselves are tested in crates/train.)

use std::process::{Command, Output};

use videollama_testutil::golden;

fn videollama(args: &[&str]) -> Output {
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

#[test]
fn demo_data_trains_and_the_result_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("demo");
    let out = tmp.path().join("trained");
    ok(&videollama(&[
        "make-demo-data",
        data.to_str().unwrap(),
        "--train",
        "2",
        "--val",
        "1",
        "--test",
        "1",
        "--no-audio",
    ]));
    let train_json = data.join("train.json");
    assert!(train_json.is_file());
    let base = golden("videollama2.1-qwen2-tiny/checkpoint");
    let report = ok(&videollama(&[
        "train",
        "--model",
        base.to_str().unwrap(),
        "--data",
        train_json.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--stage",
        "2",
        "--max-steps",
        "3",
        "--max-samples",
        "4",
        "--save-every",
        "3",
    ]));
    assert!(report.contains("3 steps"), "{report}");
    let log = std::fs::read_to_string(out.join("train_log.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 3, "{log}");
    assert!(out.join("loss_curve.png").is_file());
    assert!(out.join("config.json").is_file());
    let clip = data.join("clips/test-00000.mp4");
    let answer = ok(&videollama(&[
        "ask",
        "--model",
        out.to_str().unwrap(),
        "--dtype",
        "f32",
        "--video",
        clip.to_str().unwrap(),
        "--max-new-tokens",
        "4",
        "--json",
        "What colour is the shape?",
    ]));
    let json: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(json["token_ids"].as_array().unwrap().len(), 4);
    // Bad input: data that is not there.
    let bad = videollama(&[
        "train",
        "--model",
        base.to_str().unwrap(),
        "--data",
        "/no/such.json",
        "--out",
        tmp.path().join("x").to_str().unwrap(),
    ]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("/no/such.json"));
}
