//! The server with the Qwen2-VL fixture: its video and image cases give the reference's
//! answers (case.json `generated_text_skip_special`, 12 new tokens, `repetition_penalty` 1.0
//! as the fixture's plain greedy); the same video a second time (an encoder-cache hit, which
//! keeps no pixels, so the M-RoPE grid comes from the entry's tag) gives the same answer.

mod common;

use common::*;
use serde_json::json;
use std::sync::Arc;
use videollama_pipeline::{LoadOptions, Pipeline};

fn case(fixture: &std::path::Path, name: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fixture.join(name).join("case.json")).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qwen2_vl_gives_the_reference_answers() {
    let fixture = root().join("tests/golden/qwen2-vl-tiny");
    let inputs = fixture.join("inputs");
    let pipeline =
        Arc::new(Pipeline::load(&fixture.join("checkpoint"), &LoadOptions::default()).unwrap());
    let mut cfg = config();
    cfg.allowed_media_dir = Some(inputs.clone());
    cfg.model_name = "qwen2-vl-tiny".into();
    let server = TestServer::start(pipeline, cfg).await;
    for (name, part, mime, file, cache) in [
        ("video", "video_url", "video/mp4", "video.mp4", "miss"),
        ("image", "image_url", "image/png", "image.png", "miss"),
        ("video", "video_url", "video/mp4", "video.mp4", "hit"),
    ] {
        let meta = case(&fixture, name);
        let body = media_body(
            part,
            &data_url(mime, &inputs.join(file)),
            meta["question"].as_str().unwrap(),
            json!({"max_tokens": 12, "repetition_penalty": 1.0}),
        );
        let r = server.post_json(&body).await;
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        assert_eq!(
            r.json()["choices"][0]["message"]["content"],
            meta["generated_text_skip_special"],
            "{name}"
        );
        assert_eq!(r.json()["timings"]["encoder_cache"], cache, "{name}");
    }
    server.stop().await;
}
