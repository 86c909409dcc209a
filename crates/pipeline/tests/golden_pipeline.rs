//! End-to-end golden tests: for every case of the two vision fixtures, the
//! pipeline must reproduce the reference's prompt, input_ids (placeholders
//! included), every stage tensor and every generation step's logits within
//! `videollama_testutil::assert_close` (max|a − b| ≤ 1e-4 · max(1, max|ref|)),
//! the generated ids exactly and the decoded text.

mod common;

use common::ids_i64;
use videollama_pipeline::{AnswerOptions, LoadOptions, MediaInput, Pipeline};
use videollama_testutil::{assert_close, case_json, golden, load_tensors};

fn run_case(fixture: &str, case: &str) {
    let pipeline = Pipeline::load(
        &golden(&format!("{fixture}/checkpoint")),
        &LoadOptions::default(),
    )
    .unwrap();
    let expected = load_tensors(&format!("{fixture}/{case}/expected.safetensors"));
    let meta = case_json(fixture, case);
    let question = meta["question"].as_str().unwrap().to_string();

    let media = match case {
        "video" | "av" => MediaInput::video(expected["pixel_values"].clone()),
        "image" => MediaInput::image(expected["pixel_values"].clone()),
        _ => MediaInput::none(),
    }
    .with_audio(expected.get("audio_fbank").cloned());
    let encoded = pipeline.encode_media(&media).unwrap();
    let mut report = Vec::new();
    if let Some(v) = &encoded.visual {
        report.push((
            "vision_features",
            assert_close(
                "vision_features",
                &v.vision_features,
                &expected["vision_features"],
            ),
        ));
        report.push((
            "connector_out",
            assert_close(
                "connector_out",
                &v.connector_out,
                &expected["connector_out"],
            ),
        ));
    }
    if let Some(a) = &encoded.audio {
        report.push((
            "audio_features",
            assert_close(
                "audio_features",
                &a.audio_features,
                &expected["audio_features"],
            ),
        ));
        report.push((
            "audio_connector_out",
            assert_close(
                "audio_connector_out",
                &a.audio_connector_out,
                &expected["audio_connector_out"],
            ),
        ));
    }
    let opts = AnswerOptions {
        max_new_tokens: 12,
        collect_tensors: true,
        ..Default::default()
    };
    let answer = pipeline
        .answer(&[question], &encoded, &opts, |_| true)
        .unwrap();

    assert_eq!(
        answer.prompt,
        meta["prompt"].as_str().unwrap(),
        "{fixture}/{case}: rendered prompt"
    );
    assert_eq!(
        answer.input_ids,
        ids_i64(&expected["input_ids"]),
        "{fixture}/{case}: input_ids"
    );
    let t = &answer.tensors;
    report.push((
        "inputs_embeds",
        assert_close(
            "inputs_embeds",
            &t["inputs_embeds"],
            &expected["inputs_embeds"],
        ),
    ));
    report.push((
        "logits_last",
        assert_close("logits_last", &t["logits_last"], &expected["logits_last"]),
    ));
    report.push((
        "logits_steps",
        assert_close(
            "logits_steps",
            &t["logits_steps"],
            &expected["logits_steps"],
        ),
    ));
    let want_ids: Vec<u32> = ids_i64(&expected["generated_ids"])
        .into_iter()
        .map(|i| i as u32)
        .collect();
    assert_eq!(
        answer.token_ids, want_ids,
        "{fixture}/{case}: generated_ids"
    );
    assert_eq!(
        answer.answer,
        meta["generated_text"].as_str().unwrap(),
        "{fixture}/{case}: generated_text"
    );
    assert_eq!(
        answer.visual_tokens,
        expected
            .get("connector_out")
            .map(|c| c.dim(0).unwrap())
            .unwrap_or(0)
    );
    for (stage, close) in report {
        let rel = close.rel_err();
        eprintln!("{fixture}/{case} {stage}: max relative error {rel:.2e}");
    }
}

#[test]
fn mistral_video() {
    run_case("videollama2-mistral-tiny", "video");
}

#[test]
fn mistral_image() {
    run_case("videollama2-mistral-tiny", "image");
}

#[test]
fn qwen2_video() {
    run_case("videollama2.1-qwen2-tiny", "video");
}

#[test]
fn qwen2_image() {
    run_case("videollama2.1-qwen2-tiny", "image");
}

#[test]
fn qwen2_text() {
    run_case("videollama2.1-qwen2-tiny", "text");
}

/// Audio-visual: video tokens then 1496 audio tokens at the one `<video>` placeholder.
#[test]
fn av_video_with_sound() {
    run_case("videollama2.1-av-tiny", "av");
}

/// Audio only: 1496 audio tokens at `<audio>`.
#[test]
fn av_audio_only() {
    run_case("videollama2.1-av-tiny", "audio");
}

/// The slow and fast tokenizers agree on every chunk (recorded in case.json); our
/// chunk-wise tokenization must give the same chunk ids.
#[test]
fn prompt_chunks_tokenize_like_the_reference() {
    for (fixture, cases) in [
        ("videollama2-mistral-tiny", &["video", "image"][..]),
        ("videollama2.1-qwen2-tiny", &["video", "image", "text"][..]),
    ] {
        let tok = tokenizers::Tokenizer::from_file(golden(&format!(
            "{fixture}/checkpoint/tokenizer.json"
        )))
        .unwrap();
        for case in cases {
            let meta = case_json(fixture, case);
            let chunks = meta["prompt_chunks"].as_array().unwrap();
            let want = meta["prompt_chunk_ids_slow"].as_array().unwrap();
            for (chunk, ids) in chunks.iter().zip(want) {
                let got: Vec<u64> = tok
                    .encode(chunk.as_str().unwrap(), false)
                    .unwrap()
                    .get_ids()
                    .iter()
                    .map(|&i| i as u64)
                    .collect();
                let want: Vec<u64> = ids
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap())
                    .collect();
                assert_eq!(got, want, "{fixture}/{case}: chunk {chunk}");
            }
        }
    }
}
