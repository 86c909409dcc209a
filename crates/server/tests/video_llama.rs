//! The server with a Video-LLaMA folder (`tests/golden/video-llama-tiny/checkpoint`):
//! a video with its sound track and a wav, sent as OpenAI content parts, give the
//! reference's answers (case.json `generated_text`, greedy, 12 new tokens).

mod common;

use common::*;
use serde_json::json;
use std::sync::Arc;
use videollama_pipeline::video_llama::{ConvTemplate, VideoLlamaOptions};
use videollama_pipeline::{LoadOptions, Pipeline};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_with_sound_and_audio_give_the_reference_answers() {
    let fixture = root().join("tests/golden/video-llama-tiny");
    let dims: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture.join("fixture.json")).unwrap()).unwrap();
    let opts = LoadOptions {
        video_llama: VideoLlamaOptions {
            config_options: vec![
                format!("model.vit_num_heads={}", dims["dims"]["vit_heads"]),
                format!(
                    "model.imagebind_num_heads={}",
                    dims["dims"]["ib_audio_heads"]
                ),
            ],
            conv_template: Some(ConvTemplate::Vicuna),
        },
        ..LoadOptions::default()
    };
    let p = Arc::new(Pipeline::load(&fixture.join("checkpoint"), &opts).unwrap());
    let inputs = fixture.join("inputs");
    let mut cfg = config();
    cfg.allowed_media_dir = Some(inputs.clone());
    cfg.model_name = "video-llama-tiny".into();
    let server = TestServer::start(p, cfg).await;

    let models = server.get("/v1/models").await.json();
    let modalities = models["data"][0]["modalities"].to_string();
    assert!(
        modalities.contains("video") && modalities.contains("audio"),
        "{models}"
    );

    let case = |name: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(fixture.join(name).join("case.json")).unwrap())
            .unwrap()
    };
    let av = case("video_audio");
    let body = media_body(
        "video_url",
        &data_url("video/mp4", &inputs.join("video.mp4")),
        av["question"].as_str().unwrap(),
        json!({"max_tokens": 12}),
    );
    let r = server.post_json(&body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(
        v["choices"][0]["message"]["content"], av["generated_text"],
        "{v}"
    );
    assert_eq!(v["usage"]["audio_tokens"], 8);
    assert_eq!(v["usage"]["visual_tokens"], 32);

    let audio = case("audio");
    let wav = inputs.join("audio.wav");
    let body = json!({"messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": b64(&std::fs::read(&wav).unwrap()), "format": "wav"}},
        {"type": "text", "text": audio["question"]}]}], "max_tokens": 12});
    let r = server.post_json(&body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(
        v["choices"][0]["message"]["content"], audio["generated_text"],
        "{v}"
    );
    server.stop().await;
}
