//! `videollama quantize` end to end on the tiny golden Qwen2 fixture, `ask` on its output,
//! and GGUF inputs that cannot work failing with one `error:` line and exit status 1.

use std::path::PathBuf;
use std::process::{Command, Output};
use videollama_testutil::golden;

fn videollama(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_videollama"))
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run videollama")
}

fn checkpoint() -> PathBuf {
    golden("videollama2.1-qwen2-tiny/checkpoint")
}

fn one_error_line(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    stderr
}

#[test]
fn quantize_then_ask() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("q8");
    let ckpt = checkpoint();
    let out = videollama(&[
        "quantize",
        "--model",
        ckpt.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("Q8_0") && report.contains("MiB"),
        "{report}"
    );
    assert!(out_dir.join("model.gguf").is_file());

    let pixels = golden("videollama2.1-qwen2-tiny/video/expected.safetensors");
    let out = videollama(&[
        "ask",
        "--model",
        out_dir.to_str().unwrap(),
        "--video-pixels",
        pixels.to_str().unwrap(),
        "--max-new-tokens",
        "4",
        "--json",
        "What is happening?",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["token_ids"].as_array().unwrap().len(), 4);

    // Quantizing into the checkpoint itself is refused.
    let out = videollama(&[
        "quantize",
        "--model",
        ckpt.to_str().unwrap(),
        "--out",
        ckpt.to_str().unwrap(),
    ]);
    one_error_line(&out);
}

#[test]
fn bad_gguf_inputs_fail_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing.gguf");
    let err = one_error_line(&videollama(&[
        "ask",
        "--model",
        missing.to_str().unwrap(),
        "hi",
    ]));
    assert!(err.contains("missing.gguf"), "{err}");

    let junk = tmp.path().join("junk.gguf");
    std::fs::write(&junk, b"GGUF\x03\x00\x00\x00garbage").unwrap();
    let err = one_error_line(&videollama(&[
        "ask",
        "--model",
        junk.to_str().unwrap(),
        "hi",
    ]));
    assert!(err.contains("junk.gguf"), "{err}");

    let ckpt = checkpoint();
    let err = one_error_line(&videollama(&[
        "ask",
        "--model",
        ckpt.to_str().unwrap(),
        "--llm",
        junk.to_str().unwrap(),
        "hi",
    ]));
    assert!(err.contains("junk.gguf"), "{err}");
}
