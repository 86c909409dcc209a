//! The server with the Video-ChatGPT and Chat-UniVi fixtures, loaded with `reference_noise`
//! (= `--reference-noise`) set to a case's `expected.safetensors`: their video (and
//! Chat-UniVi's image) cases give the reference's answers (case.json `generated_text`,
//! 12 new tokens); an image sent to Video-ChatGPT is a 400.

mod common;

use common::*;
use serde_json::json;
use std::sync::Arc;
use videollama_pipeline::{LoadOptions, Pipeline};

fn case(fixture: &std::path::Path, name: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fixture.join(name).join("case.json")).unwrap()).unwrap()
}

fn load(fixture: &std::path::Path, noise_case: &str) -> Arc<Pipeline> {
    let opts = LoadOptions {
        reference_noise: Some(fixture.join(noise_case).join("expected.safetensors")),
        ..LoadOptions::default()
    };
    Arc::new(Pipeline::load(&fixture.join("checkpoint"), &opts).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_chatgpt_and_chat_univi_give_the_reference_answers() {
    // Video-ChatGPT: video only.
    let fixture = root().join("tests/golden/video-chatgpt-tiny");
    let inputs = fixture.join("inputs");
    let mut cfg = config();
    cfg.allowed_media_dir = Some(inputs.clone());
    cfg.model_name = "video-chatgpt-tiny".into();
    let server = TestServer::start(load(&fixture, "video"), cfg).await;
    let video = case(&fixture, "video");
    let body = media_body(
        "video_url",
        &data_url("video/mp4", &inputs.join("video.mp4")),
        video["question"].as_str().unwrap(),
        json!({"max_tokens": 12}),
    );
    let r = server.post_json(&body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        video["generated_text"]
    );
    let image = root().join("tests/golden/chat-univi-tiny/inputs/image.png");
    let r = server
        .post_json(&media_body(
            "image_url",
            &data_url("image/png", &image),
            "hi",
            json!({}),
        ))
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    server.stop().await;

    // Chat-UniVi: one server per case (each case recorded its own noise).
    let fixture = root().join("tests/golden/chat-univi-tiny");
    let inputs = fixture.join("inputs");
    for (name, part, mime, file) in [
        ("video", "video_url", "video/mp4", "video.mp4"),
        ("image", "image_url", "image/png", "image.png"),
    ] {
        let mut cfg = config();
        cfg.allowed_media_dir = Some(inputs.clone());
        cfg.model_name = "chat-univi-tiny".into();
        let server = TestServer::start(load(&fixture, name), cfg).await;
        let meta = case(&fixture, name);
        let body = media_body(
            part,
            &data_url(mime, &inputs.join(file)),
            meta["question"].as_str().unwrap(),
            json!({"max_tokens": 12}),
        );
        let r = server.post_json(&body).await;
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        assert_eq!(
            r.json()["choices"][0]["message"]["content"],
            meta["generated_text"],
            "{name}"
        );
        server.stop().await;
    }
}
