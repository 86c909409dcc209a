//! The server end to end on 127.0.0.1 with the golden tiny Mistral checkpoint:
//! answers equal the pipeline's, SSE chunks, multi-turn chat, every 4xx, the queue
//! limit and client disconnects — and the server keeps answering after each.

mod common;

use common::*;
use serde_json::json;
use std::time::{Duration, Instant};
use videollama_pipeline::media::MediaRequest;

const QUESTION: &str = "What is happening in this video?";

fn video_path() -> std::path::PathBuf {
    inputs_dir().join("video.mp4")
}

fn check_completion(v: &serde_json::Value, exp: &Expected) {
    assert_eq!(v["object"], "chat.completion", "{v}");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["model"], "videollama2-mistral-tiny");
    let choice = &v["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], exp.answer.as_str(), "{v}");
    assert_eq!(choice["finish_reason"], exp.finish_reason);
    let u = &v["usage"];
    assert_eq!(u["completion_tokens"], exp.completion_tokens);
    assert_eq!(u["prompt_tokens"], exp.prompt_tokens);
    assert_eq!(u["total_tokens"], exp.prompt_tokens + exp.completion_tokens);
    assert_eq!(u["visual_tokens"], exp.visual_tokens);
    assert_eq!(u["audio_tokens"], 0);
}

/// Checks the chunk sequence and returns the streamed text.
fn check_stream(reply: &Reply, exp: &Expected, include_usage: bool) -> String {
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(reply
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let data = reply.sse_data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    let chunks: Vec<serde_json::Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let id = chunks[0]["id"].clone();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk", "{c}");
        assert_eq!(c["id"], id);
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let (body, usage) = if include_usage {
        let (last, rest) = chunks.split_last().unwrap();
        assert_eq!(last["choices"].as_array().unwrap().len(), 0);
        assert_eq!(last["usage"]["completion_tokens"], exp.completion_tokens);
        assert_eq!(last["usage"]["prompt_tokens"], exp.prompt_tokens);
        (rest, Some(last))
    } else {
        (&chunks[..], None)
    };
    let (fin, deltas) = body.split_last().unwrap();
    assert_eq!(
        fin["choices"][0]["finish_reason"], exp.finish_reason,
        "{fin}"
    );
    assert_eq!(fin["choices"][0]["delta"], json!({}));
    for c in deltas {
        assert!(c["choices"][0]["finish_reason"].is_null());
        if include_usage {
            assert!(c["usage"].is_null());
        }
    }
    let _ = usage;
    let text: String = deltas
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, exp.answer);
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_answers_equal_the_pipeline() {
    let exp = expected(
        MediaRequest {
            video: Some(video_path()),
            ..MediaRequest::default()
        },
        vec![QUESTION.into()],
        12,
    )
    .await;
    let server = TestServer::start(pipeline(), config()).await;
    let data = data_url("video/mp4", &video_path());
    let file = file_url(&video_path());
    for url in [&data, &file] {
        let kind = &url[..5];
        // Non-streamed.
        let r = server
            .post_raw(
                media_body("video_url", url, QUESTION, json!({}))
                    .to_string()
                    .into_bytes(),
                &[("x-request-id", "test-123")],
            )
            .await;
        assert_eq!(r.status, 200, "{kind}: {}", r.text());
        assert_eq!(r.header("x-request-id").as_deref(), Some("test-123"));
        let v = r.json();
        assert_eq!(v["id"], "chatcmpl-test-123");
        check_completion(&v, &exp);
        // Streamed, with and without the usage chunk.
        for include_usage in [false, true] {
            let r = server
                .post_json(&media_body(
                    "video_url",
                    url,
                    QUESTION,
                    json!({"stream": true, "stream_options": {"include_usage": include_usage}}),
                ))
                .await;
            check_stream(&r, &exp, include_usage);
            assert!(r.header("x-request-id").is_some_and(|id| !id.is_empty()));
        }
    }
    // `max_completion_tokens`, the `seed`/`temperature: 0` defaults, and a clip.
    let r = server
        .post_json(&media_body(
            "video_url",
            &file,
            QUESTION,
            json!({"max_tokens": null, "max_completion_tokens": 12, "temperature": 0, "seed": 0, "num_frames": 99}),
        ))
        .await;
    check_completion(&r.json(), &exp);
    let clip = expected(
        MediaRequest {
            video: Some(video_path()),
            start_s: Some(0.5),
            end_s: Some(2.0),
            ..MediaRequest::default()
        },
        vec![QUESTION.into()],
        12,
    )
    .await;
    let r = server
        .post_json(&media_body(
            "video_url",
            &file,
            QUESTION,
            json!({"start": 0.5, "end": 2.0}),
        ))
        .await;
    check_completion(&r.json(), &clip);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_and_multi_turn_chat() {
    let image = inputs_dir().join("image.png");
    let turns: Vec<String> = vec![
        "Describe the picture.".into(),
        "A cat on a mat.".into(),
        "What colour is the cat?".into(),
    ];
    let exp = expected(
        MediaRequest {
            image: Some(image.clone()),
            ..MediaRequest::default()
        },
        turns.clone(),
        12,
    )
    .await;
    let server = TestServer::start(pipeline(), config()).await;
    let body = json!({
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": data_url("image/png", &image), "detail": "auto"}},
                {"type": "text", "text": turns[0]}]},
            {"role": "assistant", "content": turns[1]},
            {"role": "user", "content": turns[2]}
        ],
        "max_tokens": 12
    });
    let r = server.post_json(&body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    check_completion(&r.json(), &exp);

    // Text only, three turns.
    let exp = expected(MediaRequest::default(), turns.clone(), 12).await;
    let body = json!({
        "messages": [
            {"role": "user", "content": turns[0]},
            {"role": "assistant", "content": [{"type": "text", "text": turns[1]}]},
            {"role": "user", "content": turns[2]}
        ],
        "max_tokens": 12, "stream": true
    });
    let r = server.post_json(&body).await;
    let mut exp_text = exp;
    exp_text.visual_tokens = 0;
    check_stream(&r, &exp_text, false);

    // A stop string cuts the answer and finishes with "stop".
    let full = expected(
        MediaRequest {
            video: Some(video_path()),
            ..MediaRequest::default()
        },
        vec![QUESTION.into()],
        12,
    )
    .await;
    let word = full.answer.split_whitespace().nth(1).unwrap().to_string();
    let cut = full.answer[..full.answer.find(&word).unwrap()]
        .trim_end()
        .to_string();
    for stream in [false, true] {
        let r = server
            .post_json(&media_body(
                "video_url",
                &file_url(&video_path()),
                QUESTION,
                json!({"stop": ["never-there", word], "stream": stream}),
            ))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        if stream {
            let data = r.sse_data();
            let chunks: Vec<serde_json::Value> = data[..data.len() - 1]
                .iter()
                .map(|d| serde_json::from_str(d).unwrap())
                .collect();
            let text: String = chunks
                .iter()
                .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
                .collect();
            assert_eq!(text, cut);
            assert_eq!(
                chunks.last().unwrap()["choices"][0]["finish_reason"],
                "stop"
            );
        } else {
            let v = r.json();
            assert_eq!(v["choices"][0]["message"]["content"], cut.as_str(), "{v}");
            assert_eq!(v["choices"][0]["finish_reason"], "stop");
        }
    }
    server.stop().await;
}

/// Each bad request gets its 4xx in the OpenAI error shape, and the server answers
/// the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_fail_alone() {
    let mut cfg = config();
    cfg.max_request_mb = 1;
    let server = TestServer::start(pipeline(), cfg).await;
    let ok_body = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3});
    let still_ok = |server: &TestServer| {
        let body = ok_body.clone();
        let addr = server.addr;
        async move {
            let r = request(
                addr,
                "POST",
                "/v1/chat/completions",
                &[("content-type", "application/json")],
                body.to_string().into_bytes(),
            )
            .await;
            assert_eq!(r.status, 200, "{}", r.text());
            assert!(r.json()["choices"][0]["message"]["content"].is_string());
        }
    };
    let corrupt_video = format!(
        "data:video/mp4;base64,{}",
        b64(b"this is not an mp4 file at all")
    );
    let outside = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(outside.path(), std::fs::read(video_path()).unwrap()).unwrap();
    let escape = format!(
        "file://{}/../../../{}",
        inputs_dir().canonicalize().unwrap().display(),
        outside.path().display()
    );
    let long_prompt = "word ".repeat(33_000);
    // (what, body, status, code, a phrase of the message)
    type Case<'a> = (&'a str, Vec<u8>, u16, Option<&'a str>, &'a str);
    let cases: Vec<Case> = vec![
        ("malformed JSON", b"{\"messages\": [".to_vec(), 400, Some("invalid_json"), "not valid JSON"),
        ("not an object", b"[1, 2]".to_vec(), 400, None, "JSON object"),
        (
            "unknown part type",
            json!({"messages": [{"role": "user", "content": [{"type": "hologram_url", "hologram_url": {"url": "x"}}]}]}).to_string().into_bytes(),
            400,
            Some("unsupported_content_type"),
            "unknown content part type",
        ),
        (
            "unknown media type",
            media_body("video_url", "data:application/pdf;base64,JVBERi0=", "q", json!({})).to_string().into_bytes(),
            400,
            Some("unsupported_media_type"),
            "application/pdf",
        ),
        (
            "corrupt base64",
            media_body("video_url", "data:video/mp4;base64,AAAA!!!!", "q", json!({})).to_string().into_bytes(),
            400,
            Some("invalid_base64"),
            "invalid base64",
        ),
        (
            "corrupt video bytes",
            media_body("video_url", &corrupt_video, "q", json!({})).to_string().into_bytes(),
            400,
            Some("invalid_media"),
            "inline data from messages[0].content[0]",
        ),
        (
            "corrupt video streamed",
            media_body("video_url", &corrupt_video, "q", json!({"stream": true})).to_string().into_bytes(),
            400,
            Some("invalid_media"),
            "video",
        ),
        (
            "path outside the allowed dir",
            media_body("video_url", &file_url(outside.path()), "q", json!({})).to_string().into_bytes(),
            403,
            Some("media_path_forbidden"),
            "outside the allowed media directory",
        ),
        (
            "dot-dot escape",
            media_body("video_url", &escape, "q", json!({})).to_string().into_bytes(),
            403,
            Some("media_path_forbidden"),
            "outside",
        ),
        (
            "missing file",
            media_body("video_url", "file://nope.mp4", "q", json!({})).to_string().into_bytes(),
            400,
            Some("media_not_found"),
            "no such file",
        ),
        (
            "http URL",
            media_body("image_url", "https://example.com/cat.png", "q", json!({})).to_string().into_bytes(),
            400,
            Some("unsupported_url"),
            "remote URLs are not fetched",
        ),
        (
            "audio on a model without an audio tower",
            json!({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": b64(b"RIFF"), "format": "wav"}}]}]}).to_string().into_bytes(),
            400,
            None,
            "no audio tower",
        ),
        (
            "two videos",
            json!({"messages": [{"role": "user", "content": [
                {"type": "video_url", "video_url": {"url": "file://video.mp4"}},
                {"type": "image_url", "image_url": {"url": "file://image.png"}}]}]}).to_string().into_bytes(),
            400,
            None,
            "only one video or image",
        ),
        (
            "bad parameter",
            json!({"messages": [{"role": "user", "content": "q"}], "top_p": 7}).to_string().into_bytes(),
            400,
            None,
            "top_p",
        ),
        (
            "prompt too long",
            json!({"messages": [{"role": "user", "content": long_prompt}], "max_tokens": 4}).to_string().into_bytes(),
            400,
            Some("context_length_exceeded"),
            "prompt is too long",
        ),
        (
            "oversized body",
            {
                let big = "A".repeat(1_200_000);
                media_body("video_url", &format!("data:video/mp4;base64,{big}"), "q", json!({})).to_string().into_bytes()
            },
            413,
            Some("request_too_large"),
            "1 MiB",
        ),
    ];
    for (what, body, status, code, needle) in cases {
        let r = server.post_raw(body, &[]).await;
        assert_eq!(r.status, status, "{what}: {}", r.text());
        let e = r.error();
        if let Some(code) = code {
            assert_eq!(e["code"], code, "{what}: {e}");
        }
        assert!(
            e["message"].as_str().unwrap().contains(needle),
            "{what}: {e}"
        );
        assert!(r.header("x-request-id").is_some());
        still_ok(&server).await;
    }
    // No temporary media file is left behind by the failed requests (other tests
    // in this binary write theirs concurrently: wait for a moment with none).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let leftovers: Vec<_> = std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("videollama-media-")
            })
            .map(|e| e.path())
            .collect();
        if leftovers.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "left behind: {leftovers:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A body announced too big is refused before it is sent (Expect: 100-continue).
    let r = raw_expect_continue(server.addr, 5 * 1024 * 1024).await;
    assert!(r.starts_with("HTTP/1.1 413"), "{r}");
    assert!(r.contains("request_too_large"), "{r}");
    still_ok(&server).await;

    // Unknown route, wrong method, /v1/models, /health, /metrics.
    let r = server.get("/v1/nothing").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error()["code"], "unknown_url");
    let r = server.get("/v1/chat/completions").await;
    assert_eq!(r.status, 405);
    r.error();
    let r = server.get("/v1/models").await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], "videollama2-mistral-tiny");
    assert_eq!(v["data"][0]["object"], "model");
    assert_eq!(
        server
            .get("/v1/models/videollama2-mistral-tiny")
            .await
            .status,
        200
    );
    assert_eq!(server.get("/v1/models/gpt-4").await.status, 404);
    let r = server.get("/health").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ok");
    let m = server.get("/metrics").await.text();
    for needle in [
        "videollama_http_requests_total{route=\"/v1/chat/completions\",status=\"200\"}",
        "videollama_http_requests_total{route=\"/v1/chat/completions\",status=\"413\"} 2",
        "videollama_http_requests_total{route=\"unmatched\",status=\"404\"} 1",
        "videollama_stage_duration_seconds_count{stage=\"preprocess\"}",
        "videollama_stage_duration_seconds_count{stage=\"encode\"}",
        "videollama_stage_duration_seconds_count{stage=\"prefill\"}",
        "videollama_stage_duration_seconds_count{stage=\"decode\"}",
        "videollama_decode_tokens_per_second_count",
        "videollama_queue_depth 0",
        "videollama_generated_tokens_total",
    ] {
        assert!(m.contains(needle), "{needle} not in\n{m}");
    }
    server.stop().await;
}

/// Send headers announcing `len` bytes with `Expect: 100-continue`, read the answer.
async fn raw_expect_continue(addr: std::net::SocketAddr, len: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
         content-length: {len}\r\nexpect: 100-continue\r\nconnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("answer within 10 s")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// Beyond `max_queue` waiting requests the server answers 429 with Retry-After;
/// a client that disconnects cancels its generation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_limit_and_disconnects() {
    let mut cfg = config();
    cfg.max_queue = 1;
    let server = TestServer::start(pipeline(), cfg).await;
    // Long answers: greedy runs 1678 tokens to eos for this question (~0.8 ms each).
    let long = media_body(
        "video_url",
        &file_url(&video_path()),
        QUESTION,
        json!({"max_tokens": 600}),
    )
    .to_string();
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let addr = server.addr;
        let body = long.clone().into_bytes();
        tasks.push(tokio::spawn(async move {
            request(addr, "POST", "/v1/chat/completions", &[], body).await
        }));
    }
    let mut ok = 0;
    let mut busy = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            200 => ok += 1,
            429 => {
                busy += 1;
                let retry: u64 = r
                    .header("retry-after")
                    .expect("Retry-After")
                    .parse()
                    .unwrap();
                assert!(retry >= 1);
                assert_eq!(r.error()["code"], "queue_full");
            }
            s => panic!("unexpected status {s}: {}", r.text()),
        }
    }
    eprintln!("10 concurrent requests, max_queue 1: {ok} answered, {busy} refused with 429");
    assert!(ok >= 1 && busy >= 1, "ok {ok}, 429 {busy}");
    assert!(ok <= 10 - busy);

    // A streaming client that goes away after the first token cancels its answer.
    let before = metric(
        &server.get("/metrics").await.text(),
        "videollama_requests_cancelled_total",
    );
    {
        let mut sender = connect(server.addr).await;
        let body = media_body(
            "video_url",
            &file_url(&video_path()),
            QUESTION,
            json!({"max_tokens": 600, "stream": true}),
        )
        .to_string()
        .into_bytes();
        let response = sender
            .send_request(build("POST", "/v1/chat/completions", &[], body))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        use http_body_util::BodyExt;
        let first = body.frame().await.unwrap().unwrap();
        assert!(first.is_data());
        // Dropping the body and the sender closes the connection.
    }
    // A non-streamed client that goes away while waiting cancels too.
    {
        let addr = server.addr;
        let body = long.clone().into_bytes();
        let t =
            tokio::spawn(
                async move { request(addr, "POST", "/v1/chat/completions", &[], body).await },
            );
        tokio::time::sleep(Duration::from_millis(60)).await;
        t.abort();
        let _ = t.await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = server.get("/metrics").await.text();
        let cancelled = metric(&m, "videollama_requests_cancelled_total");
        if cancelled >= before + 2.0 {
            break;
        }
        assert!(Instant::now() < deadline, "cancellations not seen:\n{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And the server still answers.
    let r = server
        .post_json(&json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    server.stop().await;
}

/// Shutdown lets the answer in progress finish, then the server stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_the_answer_in_progress() {
    use http_body_util::BodyExt;
    let server = TestServer::start(pipeline(), config()).await;
    let addr = server.addr;
    let mut sender = connect(addr).await;
    let body = media_body(
        "video_url",
        &file_url(&video_path()),
        QUESTION,
        json!({"max_tokens": 600, "stream": true}),
    )
    .to_string()
    .into_bytes();
    // The head comes with the first token: the answer is in progress.
    let response = sender
        .send_request(build("POST", "/v1/chat/completions", &[], body))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let reader =
        tokio::spawn(async move { response.into_body().collect().await.unwrap().to_bytes() });
    server.stop().await;
    let text = String::from_utf8(reader.await.unwrap().to_vec()).unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert!(text.contains("\"finish_reason\":\"length\""), "{text}");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
