//! The server with the MA-LMM fixture (`tests/golden/ma-lmm-tiny/checkpoint`, hosted by
//! `Pipeline` through `ma_lmm/family.rs`): the fixture's video sent as an OpenAI content part
//! gives the reference's answer (case.json `generated_text`, 12 new tokens), with the Q-Former's
//! query count as `visual_tokens`; the same video again (an encoder-cache hit) gives the same
//! answer; an image is a 400 (MA-LMM is video-only).

mod common;

use common::*;
use serde_json::json;
use std::sync::Arc;
use videollama_pipeline::video_llama::VideoLlamaOptions;
use videollama_pipeline::{LoadOptions, Pipeline};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ma_lmm_video_gives_the_reference_answer() {
    let fixture = root().join("tests/golden/ma-lmm-tiny");
    let read = |rel: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(fixture.join(rel)).unwrap()).unwrap()
    };
    let dims = read("fixture.json");
    let case = read("video/case.json");
    let opts = LoadOptions {
        video_llama: VideoLlamaOptions {
            // The tiny EVA ViT's head count (no weight shape tells it).
            config_options: vec![format!("model.vit_num_heads={}", dims["vision"]["heads"])],
            ..Default::default()
        },
        ..LoadOptions::default()
    };
    let p = Arc::new(Pipeline::load(&fixture.join("checkpoint"), &opts).unwrap());
    let inputs = fixture.join("inputs");
    let mut cfg = config();
    cfg.allowed_media_dir = Some(inputs.clone());
    cfg.model_name = "ma-lmm-tiny".into();
    let server = TestServer::start(p.clone(), cfg).await;

    let body = media_body(
        "video_url",
        &data_url("video/mp4", &inputs.join("video.mp4")),
        case["question"].as_str().unwrap(),
        json!({"max_tokens": case["generated_token_count"]}),
    );
    for attempt in ["first", "encoder-cache hit"] {
        let r = server.post_json(&body).await;
        assert_eq!(r.status, 200, "{attempt}: {}", r.text());
        let v = r.json();
        assert_eq!(
            v["choices"][0]["message"]["content"], case["generated_text"],
            "{attempt}"
        );
        assert_eq!(
            v["usage"]["completion_tokens"], case["generated_token_count"],
            "{attempt}"
        );
        assert_eq!(
            v["usage"]["visual_tokens"], case["tensors"]["qformer_out"][0],
            "{attempt}"
        );
        assert_eq!(
            v["usage"]["prompt_tokens"], case["tensors"]["inputs_embeds"][0],
            "{attempt}"
        );
    }

    let stats = p.encoder_cache.stats();
    assert_eq!((stats.misses, stats.hits), (1, 1), "{stats:?}");

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
}
