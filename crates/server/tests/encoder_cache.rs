//! The encoder cache behind the server, on the golden tiny Mistral checkpoint: the same
//! video twice (as a file:// URL, then as a data: URL — other path, same bytes) is a miss
//! then a hit in `/metrics` and `timings.encoder_cache`, with the same answer as an
//! uncached pipeline run; other sampling, other bytes or other frames are a miss.

mod common;

use common::*;
use serde_json::json;
use videollama_pipeline::media::MediaRequest;

const QUESTION: &str = "What is happening in this video?";

fn video_path() -> std::path::PathBuf {
    inputs_dir().join("video.mp4")
}

fn other_video() -> std::path::PathBuf {
    root().join("tests/golden/videollama2.1-av-tiny/inputs/video_av.mp4")
}

#[derive(Debug, PartialEq)]
struct Counters {
    hits: u64,
    misses: u64,
    evictions: u64,
    bytes: u64,
}

async fn counters(server: &TestServer) -> Counters {
    let text = server.get("/metrics").await.text();
    let get = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|v| v.strip_prefix(' '))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
    };
    Counters {
        hits: get("videollama_encoder_cache_hits_total"),
        misses: get("videollama_encoder_cache_misses_total"),
        evictions: get("videollama_encoder_cache_evictions_total"),
        bytes: get("videollama_encoder_cache_bytes"),
    }
}

/// Posts `body`, checks the answer against `exp`; returns `timings.encoder_cache`.
async fn ask(server: &TestServer, body: serde_json::Value, exp: &Expected) -> String {
    let r = server.post_json(&body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        exp.answer.as_str(),
        "{v}"
    );
    assert_eq!(v["usage"]["completion_tokens"], exp.completion_tokens);
    assert_eq!(v["usage"]["prompt_tokens"], exp.prompt_tokens);
    v["timings"]["encoder_cache"]
        .as_str()
        .unwrap_or_else(|| panic!("no timings.encoder_cache: {v}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_video_twice_hits_the_encoder_cache() {
    let p = pipeline();
    let hidden = p.model.config.llm.hidden_size as u64;
    // Allowed media: a copy of the golden video, and a directory of frames (the golden
    // picture four times) — a video with other pictures.
    let dir = tempfile::tempdir().unwrap();
    let video_copy = dir.path().join("video.mp4");
    std::fs::copy(video_path(), &video_copy).unwrap();
    let frames = dir.path().join("frames");
    std::fs::create_dir(&frames).unwrap();
    for i in 0..4 {
        std::fs::copy(
            inputs_dir().join("image.png"),
            frames.join(format!("{i:03}.png")),
        )
        .unwrap();
    }
    let mut cfg = config();
    cfg.allowed_media_dir = Some(dir.path().to_path_buf());
    let server = TestServer::start(p, cfg).await;
    let zero = Counters {
        hits: 0,
        misses: 0,
        evictions: 0,
        bytes: 0,
    };
    assert_eq!(counters(&server).await, zero);

    // Uncached references, computed by the pipeline directly.
    let video = |start_s, end_s, path| MediaRequest {
        video: Some(path),
        start_s,
        end_s,
        ..MediaRequest::default()
    };
    let exp = expected(video(None, None, video_path()), vec![QUESTION.into()], 12).await;
    let exp_clip = expected(
        video(Some(0.5), Some(2.0), video_path()),
        vec![QUESTION.into()],
        12,
    )
    .await;
    let exp_other = expected(video(None, None, other_video()), vec![QUESTION.into()], 12).await;
    let exp_frames = expected(video(None, None, frames.clone()), vec![QUESTION.into()], 12).await;
    assert_eq!(exp_frames.visual_tokens, exp.visual_tokens);
    // (The tiny random model gives the same words for both videos; their tokens differ,
    // which crates/pipeline/tests/encoder_cache.rs checks.)
    // One entry: connector_out [visual tokens, hidden] in f32.
    let entry = exp.visual_tokens as u64 * hidden * 4;

    let file = file_url(&video_copy);
    let body = |url: &str, extra| media_body("video_url", url, QUESTION, extra);
    assert_eq!(ask(&server, body(&file, json!({})), &exp).await, "miss");
    assert_eq!(
        counters(&server).await,
        Counters {
            misses: 1,
            bytes: entry,
            ..zero
        }
    );

    // The same bytes inline: another (temporary) path, same content → hit, same answer.
    let data = data_url("video/mp4", &video_path());
    assert_eq!(ask(&server, body(&data, json!({})), &exp).await, "hit");
    assert_eq!(
        counters(&server).await,
        Counters {
            hits: 1,
            misses: 1,
            bytes: entry,
            ..zero
        }
    );
    // Streamed, from the cache: the deltas add up to the same answer.
    let r = server
        .post_json(&body(&file, json!({"stream": true})))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let streamed: String = r
        .sse_data()
        .iter()
        .filter(|d| d.as_str() != "[DONE]")
        .filter_map(|d| {
            let c: serde_json::Value = serde_json::from_str(d).unwrap();
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(streamed, exp.answer);
    assert_eq!(counters(&server).await.hits, 2);

    // Other sampling of the same file: a miss (then a hit).
    let clip = json!({"start": 0.5, "end": 2.0});
    assert_eq!(
        ask(&server, body(&file, clip.clone()), &exp_clip).await,
        "miss"
    );
    assert_eq!(ask(&server, body(&data, clip), &exp_clip).await, "hit");
    // Another video (other bytes, same frames): a miss.
    let other = data_url("video/mp4", &other_video());
    assert_eq!(
        ask(&server, body(&other, json!({})), &exp_other).await,
        "miss"
    );
    // Other frames: a miss, then a hit.
    let frames_url = file_url(&frames);
    assert_eq!(
        ask(&server, body(&frames_url, json!({})), &exp_frames).await,
        "miss"
    );
    assert_eq!(
        ask(&server, body(&frames_url, json!({})), &exp_frames).await,
        "hit"
    );
    assert_eq!(
        counters(&server).await,
        Counters {
            hits: 4,
            misses: 4,
            evictions: 0,
            bytes: 4 * entry,
        }
    );

    // Text-only requests do not touch the cache.
    let r = server
        .post_json(&json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["timings"]["encoder_cache"], "off");
    assert_eq!(counters(&server).await.misses, 4);
    server.stop().await;
}
