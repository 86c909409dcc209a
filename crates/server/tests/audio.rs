//! Sound through the server with the golden audio-visual tiny checkpoint
//! (VideoLLaMA 2.1-AV): `input_audio` (OpenAI shape), `audio_url`, and a video's
//! own sound track (`use_audio`), each equal to the pipeline's answer.

mod common;

use common::*;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use videollama_pipeline::media::MediaRequest;
use videollama_pipeline::{AnswerOptions, LoadOptions, Pipeline};

fn av_dir() -> PathBuf {
    root().join("tests/golden/videollama2.1-av-tiny")
}

async fn expect(p: Arc<Pipeline>, media: MediaRequest, question: &str) -> (String, usize) {
    let question = question.to_string();
    tokio::task::spawn_blocking(move || {
        let (input, _) = p.prepare_media(&media).unwrap();
        let encoded = p.encode_media(&input).unwrap();
        let opts = AnswerOptions {
            max_new_tokens: 12,
            ..AnswerOptions::default()
        };
        let a = p.answer(&[question], &encoded, &opts, |_| true).unwrap();
        (a.answer, a.audio_tokens)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_answers_equal_the_pipeline() {
    let p =
        Arc::new(Pipeline::load(&av_dir().join("checkpoint"), &LoadOptions::default()).unwrap());
    let inputs = av_dir().join("inputs");
    let mut cfg = config();
    cfg.allowed_media_dir = Some(inputs.clone());
    cfg.model_name = "av-tiny".into();
    let server = TestServer::start(p.clone(), cfg).await;
    let wav = inputs.join("audio.wav");
    let video = inputs.join("video_av.mp4");
    let q = "What do you hear?";

    let (answer, audio_tokens) = expect(
        p.clone(),
        MediaRequest {
            audio: Some(wav.clone()),
            ..MediaRequest::default()
        },
        q,
    )
    .await;
    assert!(audio_tokens > 0);
    let bodies = [
        json!({"messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": b64(&std::fs::read(&wav).unwrap()), "format": "wav"}},
            {"type": "text", "text": q}]}], "max_tokens": 12}),
        json!({"messages": [{"role": "user", "content": [
            {"type": "audio_url", "audio_url": {"url": file_url(&wav)}},
            {"type": "text", "text": q}]}], "max_tokens": 12}),
        json!({"messages": [{"role": "user", "content": [
            {"type": "audio_url", "audio_url": {"url": data_url("audio/wav", &wav)}},
            {"type": "text", "text": q}]}], "max_tokens": 12}),
    ];
    for body in &bodies {
        let r = server.post_json(body).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        assert_eq!(
            v["choices"][0]["message"]["content"],
            answer.as_str(),
            "{v}"
        );
        assert_eq!(v["usage"]["audio_tokens"], audio_tokens);
        assert_eq!(v["usage"]["visual_tokens"], 0);
    }

    // A video with its sound track (the default on an AV checkpoint), and without.
    for use_audio in [None, Some(false)] {
        let (answer, audio_tokens) = expect(
            p.clone(),
            MediaRequest {
                video: Some(video.clone()),
                use_video_audio: use_audio,
                ..MediaRequest::default()
            },
            q,
        )
        .await;
        assert_eq!(audio_tokens > 0, use_audio.is_none());
        let mut body = media_body("video_url", &data_url("video/mp4", &video), q, json!({}));
        if let Some(u) = use_audio {
            body["use_audio"] = json!(u);
        }
        let r = server.post_json(&body).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        assert_eq!(
            v["choices"][0]["message"]["content"],
            answer.as_str(),
            "{v}"
        );
        assert_eq!(v["usage"]["audio_tokens"], audio_tokens);
    }

    // Sound with an image is refused; corrupt sound bytes fail alone.
    let r = server
        .post_json(&json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_url("image/png", &inputs_dir().join("image.png"))}},
            {"type": "input_audio", "input_audio": {"data": b64(b"RIFF...."), "format": "wav"}}]}]}))
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let r = server
        .post_json(&json!({"messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": b64(b"definitely not a wav"), "format": "wav"}}]}]}))
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.error()["code"], "invalid_media");
    let r = server.post_json(&bodies[1]).await;
    assert_eq!(r.status, 200);
    server.stop().await;
}
