//! Prometheus text-format metrics, kept by hand (a few counters and histograms).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Latency buckets in seconds.
const SECONDS_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
/// Decode speed buckets in tokens per second.
const RATE_BUCKETS: [f64; 12] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
];

#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        for (i, b) in self.bounds.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {c}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// The server's metrics; shared by the HTTP side and the worker thread.
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    request_seconds: Mutex<BTreeMap<String, Histogram>>,
    stage_seconds: Mutex<BTreeMap<&'static str, Histogram>>,
    decode_rate: Mutex<Histogram>,
    /// Requests accepted and waiting for the worker.
    pub queue_depth: AtomicUsize,
    pub queue_capacity: usize,
    /// 1 while the worker runs a request.
    pub busy: AtomicUsize,
    pub generated_tokens: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub cancelled: AtomicU64,
    pub panics: AtomicU64,
    /// Exponential moving average of a request's service time, in milliseconds
    /// (for `Retry-After`).
    service_ms: AtomicU64,
}

impl Metrics {
    pub fn new(queue_capacity: usize) -> Self {
        Self {
            requests: Mutex::default(),
            request_seconds: Mutex::default(),
            stage_seconds: Mutex::default(),
            decode_rate: Mutex::new(Histogram::new(&RATE_BUCKETS)),
            queue_depth: AtomicUsize::new(0),
            queue_capacity,
            busy: AtomicUsize::new(0),
            generated_tokens: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            service_ms: AtomicU64::new(0),
        }
    }

    pub fn record_request(&self, route: &str, status: u16, seconds: f64) {
        *lock(&self.requests)
            .entry((route.to_string(), status))
            .or_insert(0) += 1;
        lock(&self.request_seconds)
            .entry(route.to_string())
            .or_insert_with(|| Histogram::new(&SECONDS_BUCKETS))
            .observe(seconds);
    }

    /// `stage`: queue, preprocess, encode, prefill, decode.
    pub fn record_stage(&self, stage: &'static str, seconds: f64) {
        lock(&self.stage_seconds)
            .entry(stage)
            .or_insert_with(|| Histogram::new(&SECONDS_BUCKETS))
            .observe(seconds);
    }

    pub fn record_decode_rate(&self, tokens_per_s: f64) {
        if tokens_per_s > 0.0 && tokens_per_s.is_finite() {
            lock(&self.decode_rate).observe(tokens_per_s);
        }
    }

    pub fn record_service_time(&self, seconds: f64) {
        let ms = (seconds * 1000.0) as u64;
        let old = self.service_ms.load(Ordering::Relaxed);
        let new = if old == 0 { ms } else { (old * 7 + ms) / 8 };
        self.service_ms.store(new, Ordering::Relaxed);
    }

    /// A guess at when a refused client should come back, in whole seconds.
    pub fn retry_after_s(&self) -> u64 {
        let per_request = self.service_ms.load(Ordering::Relaxed) as f64 / 1000.0;
        let waiting = self.queue_depth.load(Ordering::Relaxed) as f64 + 1.0;
        (per_request * waiting).ceil().clamp(1.0, 600.0) as u64
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP videollama_http_requests_total HTTP requests by route and status.\n");
        out.push_str("# TYPE videollama_http_requests_total counter\n");
        for ((route, status), n) in lock(&self.requests).iter() {
            let _ = writeln!(
                out,
                "videollama_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str(
            "# HELP videollama_http_request_duration_seconds Time to the response head (streams: to the first token).\n",
        );
        out.push_str("# TYPE videollama_http_request_duration_seconds histogram\n");
        for (route, h) in lock(&self.request_seconds).iter() {
            h.render(
                &mut out,
                "videollama_http_request_duration_seconds",
                &format!("route=\"{route}\""),
            );
        }
        out.push_str(
            "# HELP videollama_stage_duration_seconds Time per request in each stage (queue, preprocess, encode, prefill, decode).\n",
        );
        out.push_str("# TYPE videollama_stage_duration_seconds histogram\n");
        for (stage, h) in lock(&self.stage_seconds).iter() {
            h.render(
                &mut out,
                "videollama_stage_duration_seconds",
                &format!("stage=\"{stage}\""),
            );
        }
        out.push_str(
            "# HELP videollama_decode_tokens_per_second Decode speed of each request (tokens/s after the first).\n",
        );
        out.push_str("# TYPE videollama_decode_tokens_per_second histogram\n");
        lock(&self.decode_rate).render(&mut out, "videollama_decode_tokens_per_second", "");
        let gauges: [(&str, &str, &str, u64); 7] = [
            (
                "videollama_queue_depth",
                "gauge",
                "Requests waiting for the model.",
                self.queue_depth.load(Ordering::Relaxed) as u64,
            ),
            (
                "videollama_queue_capacity",
                "gauge",
                "Requests allowed to wait (--max-queue).",
                self.queue_capacity as u64,
            ),
            (
                "videollama_busy",
                "gauge",
                "1 while the model runs a request.",
                self.busy.load(Ordering::Relaxed) as u64,
            ),
            (
                "videollama_generated_tokens_total",
                "counter",
                "Tokens generated.",
                self.generated_tokens.load(Ordering::Relaxed),
            ),
            (
                "videollama_prompt_tokens_total",
                "counter",
                "Prompt tokens (text + media) prefilled.",
                self.prompt_tokens.load(Ordering::Relaxed),
            ),
            (
                "videollama_requests_cancelled_total",
                "counter",
                "Requests cancelled because the client went away.",
                self.cancelled.load(Ordering::Relaxed),
            ),
            (
                "videollama_worker_panics_total",
                "counter",
                "Requests that panicked in the model worker (answered 500).",
                self.panics.load(Ordering::Relaxed),
            ),
        ];
        for (name, kind, help, v) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
        out
    }
}

/// The encoder cache's counters (kept by the pipeline, shared by every request).
pub fn render_encoder_cache(stats: &videollama_pipeline::CacheStats) -> String {
    let mut out = String::new();
    let rows: [(&str, &str, &str, u64); 4] = [
        (
            "videollama_encoder_cache_hits_total",
            "counter",
            "Requests whose media tokens came from the encoder cache.",
            stats.hits,
        ),
        (
            "videollama_encoder_cache_misses_total",
            "counter",
            "Requests whose media were decoded and encoded (not in the encoder cache).",
            stats.misses,
        ),
        (
            "videollama_encoder_cache_evictions_total",
            "counter",
            "Encoder cache entries evicted to stay within --encoder-cache-mb.",
            stats.evictions,
        ),
        (
            "videollama_encoder_cache_bytes",
            "gauge",
            "Bytes of media tokens held by the encoder cache.",
            stats.bytes as u64,
        ),
    ];
    for (name, kind, help, v) in rows {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
        );
    }
    out
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new(4);
        m.record_request("/v1/chat/completions", 200, 0.3);
        m.record_stage("decode", 0.02);
        m.record_decode_rate(42.0);
        let text = m.render();
        assert!(text.contains(
            "videollama_http_requests_total{route=\"/v1/chat/completions\",status=\"200\"} 1"
        ));
        assert!(text
            .contains("videollama_stage_duration_seconds_bucket{stage=\"decode\",le=\"0.025\"} 1"));
        assert!(text.contains("videollama_stage_duration_seconds_count{stage=\"decode\"} 1"));
        assert!(text.contains("videollama_decode_tokens_per_second_bucket{le=\"50\"} 1"));
        assert!(text.contains("videollama_queue_capacity 4"));
    }

    #[test]
    fn renders_encoder_cache_counters() {
        let stats = videollama_pipeline::CacheStats {
            hits: 3,
            misses: 2,
            evictions: 1,
            bytes: 4096,
            entries: 1,
            budget_bytes: 1 << 30,
        };
        let text = render_encoder_cache(&stats);
        for line in [
            "videollama_encoder_cache_hits_total 3",
            "videollama_encoder_cache_misses_total 2",
            "videollama_encoder_cache_evictions_total 1",
            "videollama_encoder_cache_bytes 4096",
            "# TYPE videollama_encoder_cache_bytes gauge",
            "# TYPE videollama_encoder_cache_hits_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }
}
