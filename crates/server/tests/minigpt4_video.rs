//! The server with a MiniGPT4-Video folder: a video with its subtitles sent as text
//! (`subtitles_text`), the same video with `"subtitles": "none"`, and an image give the
//! reference's answers (case.json `generated_text`, 12 new tokens).

mod common;

use common::*;
use serde_json::json;
use std::sync::Arc;
use videollama_pipeline::video_llama::VideoLlamaOptions;
use videollama_pipeline::{LoadOptions, Pipeline};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subtitles_text_none_and_image_give_the_reference_answers() {
    let fixture = root().join("tests/golden/minigpt4-video-tiny");
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture.join("fixture.json")).unwrap()).unwrap();
    let opts = LoadOptions {
        video_llama: VideoLlamaOptions {
            config_options: vec![format!("model.vit_num_heads={}", meta["dims"]["vit_heads"])],
            conv_template: None,
        },
        ..LoadOptions::default()
    };
    let p = Arc::new(Pipeline::load(&fixture.join("checkpoint"), &opts).unwrap());
    let inputs = fixture.join("inputs");
    let mut cfg = config();
    cfg.allowed_media_dir = Some(inputs.clone());
    cfg.model_name = "minigpt4-video-tiny".into();
    let server = TestServer::start(p, cfg).await;
    let case = |name: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(fixture.join(name).join("case.json")).unwrap())
            .unwrap()
    };
    let video = data_url("video/mp4", &inputs.join("video.mp4"));
    let vtt = std::fs::read_to_string(inputs.join("video.vtt")).unwrap();

    let subs = case("video_subtitles");
    let body = media_body(
        "video_url",
        &video,
        subs["question"].as_str().unwrap(),
        json!({"max_tokens": 12, "subtitles_text": vtt}),
    );
    let r = server.post_json(&body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        subs["generated_text"]
    );

    let none = case("video_no_subtitles");
    let body = media_body(
        "video_url",
        &video,
        none["question"].as_str().unwrap(),
        json!({"max_tokens": 12, "subtitles": "none"}),
    );
    let r = server.post_json(&body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        none["generated_text"]
    );

    let image = case("image");
    let body = media_body(
        "image_url",
        &data_url("image/png", &inputs.join("image.png")),
        image["question"].as_str().unwrap(),
        json!({"max_tokens": 12}),
    );
    let r = server.post_json(&body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        image["generated_text"]
    );

    let r = server
        .post_json(&media_body(
            "video_url",
            &video,
            "hi",
            json!({"subtitles": 3}),
        ))
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    server.stop().await;
}
