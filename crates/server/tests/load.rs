//! Bounded load test (ignored by default): 32 concurrent clients on 127.0.0.1 for at
//! most 60 s (or 5,000 requests) against the golden tiny checkpoint, a mix of
//! video (data: URL), image (file://, streamed) and text-only requests with
//! `max_tokens` 12. Prints requests served, p50/p99 latency, errors (anything but
//! 200 and 429, or a transport error: expected 0), and VmRSS before/after.
//!
//! ```sh
//! cargo test -p videollama-server --test load -- --ignored --nocapture   # (--release optional)
//! # LOAD_SECONDS=10 LOAD_CLIENTS=8 shorten it
//! ```

mod common;

use common::*;
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MAX_REQUESTS: usize = 5_000;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[derive(Default)]
struct Tally {
    latencies_ms: Vec<f64>,
    by_kind: [Vec<f64>; 3],
    rejected_429: usize,
    errors: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "load test: cargo test -p videollama-server --test load -- --ignored --nocapture"]
async fn load_32_clients() {
    let seconds = env_or("LOAD_SECONDS", 60).min(60);
    let clients = env_or("LOAD_CLIENTS", 32).min(64) as usize;
    let rss_start = vm_rss_kib();
    let mut cfg = config();
    cfg.max_queue = 32;
    let server = TestServer::start(pipeline(), cfg).await;
    let video = data_url("video/mp4", &inputs_dir().join("video.mp4"));
    let image = file_url(&inputs_dir().join("image.png"));
    let bodies: Arc<[Vec<u8>; 3]> = Arc::new([
        media_body(
            "video_url",
            &video,
            "What is happening in this video?",
            json!({}),
        )
        .to_string()
        .into_bytes(),
        media_body(
            "image_url",
            &image,
            "Describe the image.",
            json!({"stream": true}),
        )
        .to_string()
        .into_bytes(),
        json!({"messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 12})
            .to_string()
            .into_bytes(),
    ]);
    // Warm-up.
    let r = server.post_raw(bodies[0].clone(), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let rss_before = vm_rss_kib();

    let issued = Arc::new(AtomicUsize::new(0));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    // VmRSS every 10 s: growth that levels off is the allocator, not a leak.
    let sampler = tokio::spawn(async move {
        let mut samples = Vec::new();
        while Instant::now() + Duration::from_secs(10) <= deadline {
            tokio::time::sleep(Duration::from_secs(10)).await;
            samples.push((start.elapsed().as_secs(), vm_rss_kib()));
        }
        samples
    });
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (issued, tally, bodies, addr) =
            (issued.clone(), tally.clone(), bodies.clone(), server.addr);
        tasks.push(tokio::spawn(async move {
            loop {
                let n = issued.fetch_add(1, Ordering::Relaxed);
                if n >= MAX_REQUESTS || Instant::now() >= deadline {
                    break;
                }
                let kind = n % 3;
                let t = Instant::now();
                let left = deadline.saturating_duration_since(t) + Duration::from_secs(30);
                let reply = try_request(
                    addr,
                    "POST",
                    "/v1/chat/completions",
                    &[("content-type", "application/json")],
                    bodies[kind].clone(),
                    left,
                )
                .await;
                let ms = t.elapsed().as_secs_f64() * 1000.0;
                let mut tally = tally.lock().unwrap();
                match reply {
                    Ok(r) if r.status == 200 => {
                        let ok = if kind == 1 {
                            r.text().trim_end().ends_with("data: [DONE]")
                        } else {
                            r.json()["choices"][0]["message"]["content"].is_string()
                        };
                        if ok {
                            tally.latencies_ms.push(ms);
                            tally.by_kind[kind].push(ms);
                        } else {
                            tally.errors.push(format!("bad 200 body: {}", r.text()));
                        }
                    }
                    Ok(r) if r.status == 429 => tally.rejected_429 += 1,
                    Ok(r) => tally.errors.push(format!("{}: {}", r.status, r.text())),
                    Err(e) => tally.errors.push(e),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let rss_after = vm_rss_kib();
    let rss_samples = sampler.await.unwrap();
    let metrics = server.get("/metrics").await.text();
    server.stop().await;

    let mut tally = Arc::try_unwrap(tally).ok().unwrap().into_inner().unwrap();
    tally.latencies_ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let served = tally.latencies_ms.len();
    println!("load test: {clients} clients, {elapsed:.1} s on 127.0.0.1 (limit {seconds} s / {MAX_REQUESTS} requests)");
    println!(
        "  served {served} ({:.1}/s), 429 {}, errors {}",
        served as f64 / elapsed,
        tally.rejected_429,
        tally.errors.len()
    );
    println!(
        "  latency ms: p50 {:.1}  p99 {:.1}  max {:.1}",
        percentile(&tally.latencies_ms, 0.5),
        percentile(&tally.latencies_ms, 0.99),
        tally.latencies_ms.last().copied().unwrap_or(f64::NAN)
    );
    for (kind, name) in ["video data: URL", "image file:// streamed", "text only"]
        .iter()
        .enumerate()
    {
        let mut v = tally.by_kind[kind].clone();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "    {name:24} n {:5}  p50 {:7.1}  p99 {:7.1}",
            v.len(),
            percentile(&v, 0.5),
            percentile(&v, 0.99)
        );
    }
    let kib = |v: Option<u64>| {
        v.map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
            .unwrap_or("?".into())
    };
    println!(
        "  VmRSS: start {}, model loaded + warm {}, after load {}",
        kib(rss_start),
        kib(rss_before),
        kib(rss_after)
    );
    println!(
        "  VmRSS during the run: {}",
        rss_samples
            .iter()
            .map(|(t, k)| format!("{t} s: {}", kib(*k)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for line in metrics.lines().filter(|l| {
        l.starts_with("videollama_stage_duration_seconds_sum")
            || l.starts_with("videollama_stage_duration_seconds_count")
            || l.starts_with("videollama_generated_tokens_total")
            || l.starts_with("videollama_decode_tokens_per_second_sum")
            || l.starts_with("videollama_decode_tokens_per_second_count")
    }) {
        println!("  {line}");
    }
    for e in tally.errors.iter().take(5) {
        println!("  error: {e}");
    }
    assert!(tally.errors.is_empty(), "{} errors", tally.errors.len());
    assert!(served > 0);
}
