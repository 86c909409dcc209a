//! Shared by the server's integration tests: the golden tiny checkpoint, an
//! in-process server on 127.0.0.1 (ephemeral port), and a small HTTP/1.1 client
//! built on hyper.
#![allow(dead_code)]

use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use videollama_pipeline::media::MediaRequest;
use videollama_pipeline::{AnswerOptions, LoadOptions, Pipeline};
use videollama_server::ServeConfig;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn mistral_dir() -> PathBuf {
    root().join("tests/golden/videollama2-mistral-tiny")
}

pub fn inputs_dir() -> PathBuf {
    mistral_dir().join("inputs")
}

pub fn pipeline() -> Arc<Pipeline> {
    static P: OnceLock<Arc<Pipeline>> = OnceLock::new();
    P.get_or_init(|| {
        Arc::new(
            Pipeline::load(&mistral_dir().join("checkpoint"), &LoadOptions::default())
                .expect("load the golden tiny checkpoint"),
        )
    })
    .clone()
}

pub fn config() -> ServeConfig {
    ServeConfig {
        host: "127.0.0.1".into(),
        port: 0,
        allowed_media_dir: Some(inputs_dir()),
        max_queue: 8,
        max_request_mb: 8,
        model_name: "videollama2-mistral-tiny".into(),
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestServer {
    pub async fn start(pipeline: Arc<Pipeline>, config: ServeConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(videollama_server::run_until(
            listener,
            pipeline,
            config,
            async move {
                let _ = stopped.await;
            },
        ));
        Self {
            addr,
            stop: Some(stop),
            handle,
        }
    }

    /// Graceful shutdown; the server must stop by itself within 20 s.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(20), &mut self.handle)
            .await
            .expect("server stops within 20 s")
            .expect("server task")
            .expect("server result");
    }

    pub async fn get(&self, path: &str) -> Reply {
        request(self.addr, "GET", path, &[], Vec::new()).await
    }

    pub async fn post_json(&self, body: &serde_json::Value) -> Reply {
        self.post_raw(body.to_string().into_bytes(), &[]).await
    }

    pub async fn post_raw(&self, body: Vec<u8>, headers: &[(&str, &str)]) -> Reply {
        let mut h = vec![("content-type", "application/json")];
        h.extend_from_slice(headers);
        request(self.addr, "POST", "/v1/chat/completions", &h, body).await
    }
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    }

    /// `data:` payloads of an SSE body.
    pub fn sse_data(&self) -> Vec<String> {
        self.text()
            .split("\n\n")
            .filter_map(|event| {
                let data: Vec<&str> = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(|d| d.strip_prefix(' ').unwrap_or(d))
                    .collect();
                (!data.is_empty()).then(|| data.join("\n"))
            })
            .collect()
    }

    /// The OpenAI error object, checking its shape.
    pub fn error(&self) -> serde_json::Value {
        let v = self.json();
        let e = v["error"].clone();
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert!(e["type"].is_string(), "{v}");
        assert!(e.get("param").is_some() && e.get("code").is_some(), "{v}");
        e
    }
}

pub async fn connect(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

pub fn build(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> hyper::Request<Full<Bytes>> {
    let mut b = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "127.0.0.1");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::from(body))).unwrap()
}

/// One request on a fresh connection; 60 s at most.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Reply {
    try_request(addr, method, path, headers, body, Duration::from_secs(60))
        .await
        .unwrap()
}

/// [`request`] that reports transport errors and timeouts instead of panicking.
pub async fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
    timeout: Duration,
) -> Result<Reply, String> {
    let fut = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let response = sender
            .send_request(build(method, path, headers, body))
            .await
            .map_err(|e| format!("send: {e}"))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes()
            .to_vec();
        Ok(Reply {
            status,
            headers,
            body,
        })
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn data_url(mime: &str, path: &std::path::Path) -> String {
    format!("data:{mime};base64,{}", b64(&std::fs::read(path).unwrap()))
}

pub fn file_url(path: &std::path::Path) -> String {
    format!("file://{}", path.canonicalize().unwrap().display())
}

/// A chat body with one medium part and a question.
pub fn media_body(
    part_type: &str,
    url: &str,
    question: &str,
    extra: serde_json::Value,
) -> serde_json::Value {
    let mut body = serde_json::json!({
        "model": "videollama2-mistral-tiny",
        "messages": [{"role": "user", "content": [
            {"type": part_type, part_type: {"url": url}},
            {"type": "text", "text": question}
        ]}],
        "max_tokens": 12
    });
    if let serde_json::Value::Object(extra) = extra {
        for (k, v) in extra {
            body[k] = v;
        }
    }
    body
}

/// What the pipeline answers directly (same defaults as the server: greedy).
pub struct Expected {
    pub answer: String,
    pub completion_tokens: usize,
    pub prompt_tokens: usize,
    pub visual_tokens: usize,
    pub finish_reason: &'static str,
}

pub async fn expected(media: MediaRequest, turns: Vec<String>, max_new_tokens: usize) -> Expected {
    let p = pipeline();
    tokio::task::spawn_blocking(move || {
        let (input, _) = p.prepare_media(&media).unwrap();
        let encoded = p.encode_media(&input).unwrap();
        let opts = AnswerOptions {
            max_new_tokens,
            ..AnswerOptions::default()
        };
        let a = p.answer(&turns, &encoded, &opts, |_| true).unwrap();
        Expected {
            answer: a.answer,
            completion_tokens: a.token_ids.len(),
            prompt_tokens: a.prompt_tokens,
            visual_tokens: a.visual_tokens,
            finish_reason: match a.stop_reason {
                videollama_pipeline::StopReason::Eos => "stop",
                _ => "length",
            },
        }
    })
    .await
    .unwrap()
}

pub fn vm_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
