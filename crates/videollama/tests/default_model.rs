//! The default model through the binary, with no `--model`:
//! * without the released parts in the cache, a clear error that says how to get them;
//! * with them (scripts/setup.sh → scripts/fetch-default-model.sh puts them in
//!   `~/.cache/videollama/downloads`, as CI does), the README's first command on the shipped
//!   demo clip installs the model into the cache and answers right — scored against the
//!   clip's ground truth (`assets/demo/clip.json`, the generator's metadata) by the demo
//!   world's own scorer. Skipped, saying so, when the downloads are absent.

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

/// Where scripts/fetch-default-model.sh put the downloads for this user, if it did.
fn real_downloads() -> Option<PathBuf> {
    let root = videollama_pipeline::default_model::cache_root();
    videollama_pipeline::default_model::downloaded_parts(&root).ok()?;
    Some(root.join("downloads"))
}

const QUESTION: &str = "What colour is the moving shape?";

#[test]
fn without_the_downloads_the_error_says_how_to_get_them() {
    let home = tempfile::tempdir().unwrap();
    let clip = repo().join("assets/demo/clip.mp4");
    let out = videollama(
        home.path(),
        &["ask", "--video", clip.to_str().unwrap(), QUESTION],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("scripts/fetch-default-model.sh"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!home.path().join("default-model").exists());
}

#[test]
fn the_readme_question_on_the_demo_clip_is_answered_right() {
    let Some(downloads) = real_downloads() else {
        eprintln!(
            "skipped: the default model's downloads are not in the cache (run scripts/fetch-default-model.sh)"
        );
        return;
    };
    let home = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&downloads, home.path().join("downloads")).unwrap();
    let clip = repo().join("assets/demo/clip.mp4");
    let meta: ClipMeta = serde_json::from_str(
        &std::fs::read_to_string(repo().join("assets/demo/clip.json")).unwrap(),
    )
    .unwrap();
    let out = videollama(
        home.path(),
        &["ask", "--video", clip.to_str().unwrap(), "--json", QUESTION],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let answer = json["answer"].as_str().unwrap();
    eprintln!("answer: {answer:?}");
    assert!(
        score(answer, &meta, QuestionType::Color(Target::Moving)),
        "{answer:?} is not the colour of the moving shape ({:?})",
        meta.caption
    );
    assert!(json["weights"].as_str().unwrap().contains("LoRA"));
    assert!(json["audio_tokens"].as_u64().unwrap() > 0);
    // Installed once into the cache; the second run reuses it.
    let dir = home.path().join("default-model");
    assert!(dir.join("model.safetensors.index.json").is_file());
    let modified = std::fs::metadata(dir.join("config.json"))
        .unwrap()
        .modified()
        .unwrap();
    let again = videollama(
        home.path(),
        &["ask", "--video", clip.to_str().unwrap(), QUESTION],
    );
    assert!(again.status.success());
    assert_eq!(
        std::fs::metadata(dir.join("config.json"))
            .unwrap()
            .modified()
            .unwrap(),
        modified
    );
}
