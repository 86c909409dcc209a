//! `videollama ask` with no `--model` (the default model):
//! * with nothing to run, a clear error, a non-zero exit and no panic: a binary built without
//!   the trained files (assets/default-model/) names scripts/make-default-model.sh; one built
//!   with them but without the downloaded parts names scripts/fetch-default-model.sh;
//! * with both, the README's command on the shipped demo clip answers right — scored against
//!   the clip's ground truth (`assets/demo/clip.json`) by the demo world's own scorer.
//!   Skipped, saying so, when the binary has no trained files or the downloads are absent.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use videollama_demodata::{score, ClipMeta, QuestionType, Target};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn videollama(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_videollama"))
        .args(args)
        .env("VIDEOLLAMA_HOME", home)
        .output()
        .expect("run videollama")
}

const QUESTION: &str = "What colour is the moving shape?";
const NO_ASSETS: &str = "built without the default model's trained files";

#[test]
fn ask_without_a_model_says_how_to_get_one() {
    let home = tempfile::tempdir().unwrap();
    let out = videollama(home.path(), &["ask", QUESTION]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(!stderr.contains("panicked"), "{stderr}");
    if stderr.contains(NO_ASSETS) {
        assert!(stderr.contains("scripts/make-default-model.sh"), "{stderr}");
        assert!(stderr.contains("--model"), "{stderr}");
    } else {
        assert!(
            stderr.contains("scripts/fetch-default-model.sh"),
            "{stderr}"
        );
    }
    assert!(!home.path().join("default-model").exists());
}

#[test]
fn the_readme_question_on_the_demo_clip_is_answered_right() {
    let root = videollama_pipeline::default_model::cache_root();
    if videollama_pipeline::default_model::downloaded_parts(&root).is_err() {
        eprintln!("skipped: no default-model downloads (run scripts/fetch-default-model.sh)");
        return;
    }
    let home = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(root.join("downloads"), home.path().join("downloads")).unwrap();
    let clip = repo().join("assets/demo/clip.mp4");
    let out = videollama(
        home.path(),
        &["ask", "--video", clip.to_str().unwrap(), "--json", QUESTION],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains(NO_ASSETS) {
        eprintln!("skipped: this binary has no default-model weights ({stderr})");
        return;
    }
    assert!(out.status.success(), "{stderr}");
    let meta: ClipMeta = serde_json::from_str(
        &std::fs::read_to_string(repo().join("assets/demo/clip.json")).unwrap(),
    )
    .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let answer = json["answer"].as_str().unwrap();
    assert!(
        score(answer, &meta, QuestionType::Color(Target::Moving)),
        "{answer:?} is not the colour of the moving shape ({:?})",
        meta.caption
    );
    assert!(json["weights"].as_str().unwrap().contains("LoRA"));
    assert!(json["audio_tokens"].as_u64().unwrap() > 0);
}

/// The demo world as a multiple-choice benchmark (`make-demo-data`'s `mvbench/test/`, ten
/// held-out clips, four options each) through `videollama eval --format mvbench` with the
/// default model: overall accuracy at least 0.5, twice chance. Skipped, saying so, as the
/// README test: without the downloads, or when the binary has no trained files.
#[test]
fn the_demo_world_multiple_choice_set_scores_far_above_chance() {
    let root = videollama_pipeline::default_model::cache_root();
    if videollama_pipeline::default_model::downloaded_parts(&root).is_err() {
        eprintln!("skipped: no default-model downloads (run scripts/fetch-default-model.sh)");
        return;
    }
    if !videollama_demodata::espeak_available(Path::new("espeak-ng")) {
        eprintln!("skipped: espeak-ng is not installed (the demo world's spoken numbers)");
        return;
    }
    let home = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(root.join("downloads"), home.path().join("downloads")).unwrap();
    let data = home.path().join("demo");
    let made = videollama(
        home.path(),
        &[
            "make-demo-data",
            data.to_str().unwrap(),
            "--train",
            "0",
            "--val",
            "0",
            "--test",
            "10",
        ],
    );
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let out = home.path().join("eval");
    let questions = data.join("mvbench/test");
    let res = videollama(
        home.path(),
        &[
            "eval",
            "--format",
            "mvbench",
            "--questions",
            questions.to_str().unwrap(),
            "--videos",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--max-new-tokens",
            "16",
            "--no-progress",
        ],
    );
    let stderr = String::from_utf8_lossy(&res.stderr);
    if stderr.contains(NO_ASSETS) {
        eprintln!("skipped: this binary has no default-model weights ({stderr})");
        return;
    }
    assert!(res.status.success(), "{stderr}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let overall = &summary["overall"];
    assert!(overall["total"].as_u64().unwrap() >= 40, "{summary}");
    let accuracy = overall["accuracy"].as_f64().unwrap();
    println!("{}", String::from_utf8_lossy(&res.stdout));
    assert!(
        accuracy >= 0.5,
        "accuracy {accuracy} on the demo world's multiple choice (chance 0.25): {summary}"
    );
}
