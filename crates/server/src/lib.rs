//! `videollama serve`: an OpenAI-compatible HTTP server in front of one loaded
//! [`Pipeline`].
//!
//! ```text
//! client ─HTTP─► axum (tokio) ─ parse + validate (4xx) ─ media → temp files
//!                   │ try_send (bounded: --max-queue, else 429 + Retry-After)
//!                   ▼
//!             model worker (one std::thread): encoder cache (hash) ─miss─► prepare_media
//!                   │                ─► encode_media ─► answer
//!                   │ text pieces / outcome (tokio channel)     ▲ cancel flag
//!                   ▼                                           │ (client gone)
//!             JSON response or SSE `chat.completion.chunk`s ────┘
//! ```
//!
//! Routes: `POST /v1/chat/completions`, `GET /v1/models`, `GET /health`,
//! `GET /metrics` (Prometheus text). See `crates/server/README.md`.

pub mod api;
pub mod error;
pub mod metrics;
mod worker;

use crate::api::{ChatRequest, MediaItem, MediaKind, MediaSource, ParseContext};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::worker::{Event, Job, Outcome, SubmitError, Worker};
use anyhow::Context as _;
use axum::body::Body;
use axum::extract::{MatchedPath, Path as UrlPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::json;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::io::Write as _;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio_stream::{Stream, StreamExt};
use tracing::Instrument;
use videollama_pipeline::media::MediaRequest;
use videollama_pipeline::{AnswerOptions, Pipeline};

/// Server settings from the command line.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub host: String,
    pub port: u16,
    /// Directory under which `file://` media paths are allowed (none: refuse all).
    pub allowed_media_dir: Option<PathBuf>,
    /// Requests waiting for the model beyond this get 429.
    pub max_queue: usize,
    /// Request body limit in MiB.
    pub max_request_mb: usize,
    /// Name reported by `/v1/models` and in responses.
    pub model_name: String,
}

/// After Ctrl-C, requests already accepted get this long to finish; then they are
/// cancelled (503) so the process can exit.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// `max_tokens` when the request gives none: the reference `mm_infer`'s default.
pub const DEFAULT_MAX_TOKENS: usize = 2048;

/// Serve until interrupted (Ctrl-C or SIGTERM; a second Ctrl-C exits at once).
pub fn serve(pipeline: Arc<Pipeline>, config: ServeConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("videollama-http")
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind((config.host.as_str(), config.port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", config.host, config.port))?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, model = %config.model_name, "listening on http://{addr}");
        eprintln!("videollama serve: listening on http://{addr} (Ctrl-C to stop)");
        run_until(listener, pipeline, config, shutdown_signal()).await
    })
}

/// Resolves at the first Ctrl-C / SIGTERM; a second Ctrl-C exits the process.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!(
        "videollama serve: shutting down (finishing requests in progress, at most {} s; Ctrl-C again to quit now)",
        SHUTDOWN_GRACE.as_secs()
    );
    tokio::spawn(async {
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("videollama serve: interrupted");
        std::process::exit(130);
    });
}

/// Serve on `listener` until `shutdown` resolves, then stop accepting, let the
/// requests in progress finish (at most [`SHUTDOWN_GRACE`], then they are
/// cancelled), stop the model worker and return. The test-friendly entry point:
/// bind `127.0.0.1:0` and pass a future you control.
pub async fn run_until<F>(
    listener: tokio::net::TcpListener,
    pipeline: Arc<Pipeline>,
    config: ServeConfig,
    shutdown: F,
) -> anyhow::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let state = Arc::new(AppState::new(pipeline, config)?);
    let app = router(state.clone());
    let on_shutdown = {
        let state = state.clone();
        async move {
            shutdown.await;
            tracing::info!("shutdown requested");
            state.shutting_down.store(true, Ordering::SeqCst);
            let cancel_all = state.worker.cancel_all.clone();
            tokio::spawn(async move {
                tokio::time::sleep(SHUTDOWN_GRACE).await;
                cancel_all.store(true, Ordering::SeqCst);
            });
        }
    };
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(on_shutdown)
        .await;
    state.worker.cancel_all.store(true, Ordering::SeqCst);
    let worker_state = state.clone();
    let _ = tokio::task::spawn_blocking(move || worker_state.worker.stop()).await;
    tracing::info!("server stopped");
    served.context("serving HTTP")
}

struct AppState {
    pipeline: Arc<Pipeline>,
    config: ServeConfig,
    /// Canonical allowed media directory.
    allowed_media_dir: Option<PathBuf>,
    worker: Worker,
    metrics: Arc<Metrics>,
    shutting_down: AtomicBool,
    created: u64,
    next_id: AtomicU64,
}

impl AppState {
    fn new(pipeline: Arc<Pipeline>, config: ServeConfig) -> anyhow::Result<Self> {
        let allowed_media_dir = match &config.allowed_media_dir {
            None => None,
            Some(dir) => {
                let canonical = dir
                    .canonicalize()
                    .with_context(|| format!("--allowed-media-dir {}", dir.display()))?;
                anyhow::ensure!(
                    canonical.is_dir(),
                    "--allowed-media-dir {}: not a directory",
                    dir.display()
                );
                Some(canonical)
            }
        };
        let metrics = Arc::new(Metrics::new(config.max_queue));
        let worker = Worker::start(pipeline.clone(), config.max_queue, metrics.clone())
            .context("starting the model worker thread")?;
        Ok(Self {
            pipeline,
            config,
            allowed_media_dir,
            worker,
            metrics,
            shutting_down: AtomicBool::new(false),
            created: unix_now(),
            next_id: AtomicU64::new(0),
        })
    }

    fn context_length(&self) -> usize {
        self.pipeline.model.config.llm.max_position_embeddings
    }

    fn new_request_id(&self) -> String {
        use std::hash::{BuildHasher, Hasher};
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(n);
        h.write_u128(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
        );
        format!("{:016x}{:04x}", h.finish(), n & 0xffff)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The request id of the current request (`x-request-id`, echoed or generated).
#[derive(Clone, Debug)]
struct RequestId(String);

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(
            "/v1/chat/completions",
            post(chat_completions).fallback(method_not_allowed),
        )
        .route("/v1/models", get(list_models).fallback(method_not_allowed))
        .route(
            "/v1/models/{id}",
            get(get_model).fallback(method_not_allowed),
        )
        .route("/health", get(health).fallback(method_not_allowed))
        .route("/metrics", get(metrics).fallback(method_not_allowed))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Request id, a tracing span, access log and request metrics for every request.
async fn observe(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| state.new_request_id());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %req.method(),
        path = %req.uri().path()
    );
    req.extensions_mut().insert(RequestId(id.clone()));
    let start = Instant::now();
    let mut response = next.run(req).instrument(span.clone()).await;
    let seconds = start.elapsed().as_secs_f64();
    let status = response.status().as_u16();
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    state.metrics.record_request(&route, status, seconds);
    span.in_scope(|| {
        tracing::info!(
            status,
            latency_ms = (seconds * 1000.0).round() as u64,
            "response"
        )
    });
    response
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!(
            "unknown route {} {}; this server has POST /v1/chat/completions, GET /v1/models, GET /health and GET /metrics",
            req.method(),
            req.uri().path()
        ),
    )
    .code("unknown_url")
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        format!(
            "method {} is not allowed on {}",
            req.method(),
            req.uri().path()
        ),
    )
    .code("method_not_allowed")
}

fn model_card(state: &AppState) -> serde_json::Value {
    let p = &state.pipeline;
    let mut modalities = vec!["text"];
    if p.has_vision() {
        modalities.extend(["image", "video"]);
    }
    if p.has_audio() {
        modalities.push("audio");
    }
    json!({
        "id": state.config.model_name,
        "object": "model",
        "created": state.created,
        "owned_by": "videollama",
        "context_length": state.context_length(),
        "modalities": modalities,
    })
}

async fn list_models(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({"object": "list", "data": [model_card(&state)]}))
}

async fn get_model(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if id != state.config.model_name {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!(
                "model `{id}` does not exist; this server has `{}`",
                state.config.model_name
            ),
        )
        .param("model")
        .code("model_not_found"));
    }
    Ok(Json(model_card(&state)))
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    let alive = state.worker.is_alive();
    let stopping = state.shutting_down.load(Ordering::Relaxed);
    let status = if !alive {
        "worker_down"
    } else if stopping {
        "shutting_down"
    } else {
        "ok"
    };
    let code = if status == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let m = &state.metrics;
    (
        code,
        Json(json!({
            "status": status,
            "model": state.config.model_name,
            "queue_depth": m.queue_depth.load(Ordering::Relaxed),
            "queue_capacity": m.queue_capacity,
            "busy": m.busy.load(Ordering::Relaxed) == 1,
        })),
    )
        .into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        state.metrics.render()
            + &crate::metrics::render_encoder_cache(&state.pipeline.encoder_cache.stats()),
    )
        .into_response()
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    Extension(request_id): Extension<RequestId>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match chat(state, request_id.0, headers, body).await {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(status = e.status.as_u16(), error = %e.message, "rejected");
            e.into_response()
        }
    }
}

fn too_large(limit_mb: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request_error",
        format!(
            "the request body is larger than this server's limit of {limit_mb} MiB \
             (--max-request-mb); send smaller media or a file:// path"
        ),
    )
    .code("request_too_large")
}

/// Read the body, refusing more than `limit` bytes (before reading, when the
/// client announces its length).
async fn read_body(headers: &HeaderMap, body: Body, limit_mb: usize) -> Result<Vec<u8>, ApiError> {
    let limit = limit_mb.saturating_mul(1024 * 1024);
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit_mb));
    }
    let mut stream = body.into_data_stream();
    let mut buf = Vec::with_capacity(announced.unwrap_or(0) as usize);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::bad_request(format!("could not read the request body: {e}")))?;
        if buf.len() + chunk.len() > limit {
            return Err(too_large(limit_mb));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// Media written out for FFmpeg, ready to be queued.
struct Prepared {
    request: ChatRequest,
    media: MediaRequest,
    temp_files: Vec<tempfile::NamedTempFile>,
    labels: Vec<(String, String)>,
}

fn write_media(item: MediaItem, prepared: &mut Prepared) -> Result<PathBuf, ApiError> {
    match item.source {
        MediaSource::File(path) => Ok(path),
        MediaSource::Bytes { data, extension } => {
            let mut file = tempfile::Builder::new()
                .prefix("videollama-media-")
                .suffix(&format!(".{extension}"))
                .tempfile()
                .map_err(|e| ApiError::internal(format!("cannot create a temporary file: {e}")))?;
            file.write_all(&data)
                .and_then(|_| file.flush())
                .map_err(|e| ApiError::internal(format!("cannot write a temporary file: {e}")))?;
            let path = file.path().to_path_buf();
            prepared.labels.push((
                path.display().to_string(),
                format!(
                    "{} ({} from {})",
                    item.kind.name(),
                    "inline data",
                    item.param
                ),
            ));
            prepared.temp_files.push(file);
            Ok(path)
        }
    }
}

/// Parse, validate and write inline media to temporary files (blocking work).
fn prepare(body: &[u8], state: &AppState) -> Result<Prepared, ApiError> {
    let ctx = ParseContext {
        allowed_media_dir: state.allowed_media_dir.as_deref(),
        context: state.context_length(),
    };
    let mut request = api::parse_chat_request(body, &ctx)?;
    let p = &state.pipeline;
    if (request.video.is_some() || request.image.is_some()) && !p.has_vision() {
        return Err(ApiError::bad_request(
            "this model has no vision tower: it cannot look at images or videos",
        )
        .param("messages"));
    }
    if request.audio.is_some() && !p.has_audio() {
        return Err(ApiError::bad_request(
            "this model has no audio tower: it cannot listen to audio",
        )
        .param("messages"));
    }
    if request.audio.is_some() && request.image.is_some() {
        return Err(ApiError::bad_request(
            "a sound can accompany a video or stand alone, not an image",
        )
        .param("messages"));
    }
    let (video, image, audio) = (
        request.video.take(),
        request.image.take(),
        request.audio.take(),
    );
    let mut prepared = Prepared {
        media: MediaRequest {
            start_s: request.start_s,
            end_s: request.end_s,
            use_video_audio: request.use_audio,
            subtitles: request
                .subtitles
                .as_deref()
                .map(|s| s.parse().unwrap_or_default())
                .unwrap_or_default(),
            ..MediaRequest::default()
        },
        temp_files: Vec::new(),
        labels: Vec::new(),
        request,
    };
    if let Some(text) = prepared.request.subtitles_text.take() {
        // A .vtt suffix for WebVTT text, .srt otherwise: the parser picks the format by it.
        let ext = if text.trim_start_matches('\u{feff}').starts_with("WEBVTT") {
            "vtt"
        } else {
            "srt"
        };
        let item = MediaItem {
            kind: MediaKind::Video,
            param: "subtitles_text".into(),
            source: MediaSource::Bytes {
                data: text.into_bytes(),
                extension: ext.into(),
            },
        };
        let path = write_media(item, &mut prepared)?;
        prepared.media.subtitles = videollama_pipeline::media::SubtitleChoice::File(path);
    }
    for item in [video, image, audio].into_iter().flatten() {
        let kind = item.kind;
        let path = write_media(item, &mut prepared)?;
        match kind {
            MediaKind::Video => prepared.media.video = Some(path),
            MediaKind::Image => prepared.media.image = Some(path),
            MediaKind::Audio => prepared.media.audio = Some(path),
        }
    }
    Ok(prepared)
}

/// Sets the cancel flag when the client's response (or stream) is dropped.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

async fn chat(
    state: Arc<AppState>,
    request_id: String,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    if state.shutting_down.load(Ordering::Relaxed) {
        return Err(ApiError::unavailable("the server is shutting down"));
    }
    let limit_mb = state.config.max_request_mb;
    let body = read_body(&headers, body, limit_mb).await?;
    let prepared = {
        let state = state.clone();
        tokio::task::spawn_blocking(move || prepare(&body, &state))
            .await
            .map_err(|e| ApiError::internal(format!("request parsing failed: {e}")))??
    };
    let req = &prepared.request;
    if req.system_messages > 0 {
        tracing::debug!(
            count = req.system_messages,
            "system messages ignored (the chat template supplies the reference system prompt)"
        );
    }
    if let Some(model) = &req.model {
        if model != &state.config.model_name {
            tracing::debug!(requested = %model, served = %state.config.model_name, "model name differs; serving the loaded model");
        }
    }
    let options = AnswerOptions {
        max_new_tokens: req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        temperature: req.temperature,
        top_p: req.top_p,
        top_k: req.top_k,
        repetition_penalty: req.repetition_penalty,
        seed: req.seed.unwrap_or(0),
        collect_tensors: false,
    };
    let stream = req.stream;
    let include_usage = req.include_usage;
    let (tx, rx) = unbounded_channel();
    let cancel = Arc::new(AtomicBool::new(false));
    let Prepared {
        request,
        media,
        temp_files,
        labels,
    } = prepared;
    let job = Job {
        request_id: request_id.clone(),
        span: tracing::Span::current(),
        turns: request.turns,
        media,
        temp_files,
        labels,
        options,
        stops: request.stop,
        events: tx,
        cancel: cancel.clone(),
        enqueued: Instant::now(),
    };
    match state.worker.submit(job) {
        Ok(()) => {}
        Err(SubmitError::Full) => {
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                format!(
                    "the server is busy: {} request(s) already wait for the model (--max-queue); retry later",
                    state.config.max_queue
                ),
            )
            .code("queue_full");
            e.retry_after = Some(state.metrics.retry_after_s());
            return Err(e);
        }
        Err(SubmitError::Closed) => {
            return Err(ApiError::unavailable("the model worker is not running"))
        }
    }
    let guard = CancelOnDrop(cancel);
    let meta = ChunkMeta {
        id: format!("chatcmpl-{request_id}"),
        created: unix_now(),
        model: state.config.model_name.clone(),
        include_usage,
    };
    if stream {
        streamed(rx, guard, meta).await
    } else {
        complete(rx, guard, meta).await
    }
}

fn usage_json(o: &Outcome) -> serde_json::Value {
    json!({
        "prompt_tokens": o.prompt_tokens,
        "completion_tokens": o.completion_tokens,
        "total_tokens": o.prompt_tokens + o.completion_tokens,
        "visual_tokens": o.visual_tokens,
        "audio_tokens": o.audio_tokens,
    })
}

async fn complete(
    mut rx: UnboundedReceiver<Event>,
    _guard: CancelOnDrop,
    meta: ChunkMeta,
) -> Result<Response, ApiError> {
    let outcome = loop {
        match rx.recv().await {
            Some(Event::Text(_)) => continue,
            Some(Event::Done(r)) => break r?,
            None => return Err(ApiError::internal("the model worker stopped unexpectedly")),
        }
    };
    Ok(Json(json!({
        "id": meta.id,
        "object": "chat.completion",
        "created": meta.created,
        "model": meta.model,
        "system_fingerprint": null,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": outcome.content},
            "logprobs": null,
            "finish_reason": outcome.finish_reason,
        }],
        "usage": usage_json(&outcome),
        "timings": outcome.timings,
    }))
    .into_response())
}

struct ChunkMeta {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
}

impl ChunkMeta {
    fn chunk(&self, delta: serde_json::Value, finish_reason: Option<&str>) -> SseEvent {
        let mut v = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [{
                "index": 0,
                "delta": delta,
                "logprobs": null,
                "finish_reason": finish_reason,
            }],
        });
        if self.include_usage {
            v["usage"] = serde_json::Value::Null;
        }
        SseEvent::default().data(v.to_string())
    }
}

/// SSE: waits for the first piece (so that a request failing early still gets its
/// 4xx status), then streams `chat.completion.chunk`s and `[DONE]`.
async fn streamed(
    mut rx: UnboundedReceiver<Event>,
    guard: CancelOnDrop,
    meta: ChunkMeta,
) -> Result<Response, ApiError> {
    let first = match rx.recv().await {
        None => return Err(ApiError::internal("the model worker stopped unexpectedly")),
        Some(Event::Done(Err(e))) => return Err(e),
        Some(event) => event,
    };
    let mut stream = ChunkStream {
        rx,
        _guard: guard,
        queue: VecDeque::new(),
        finished: false,
        meta,
    };
    stream.queue.push_back(
        stream
            .meta
            .chunk(json!({"role": "assistant", "content": ""}), None),
    );
    stream.push(first);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

struct ChunkStream {
    rx: UnboundedReceiver<Event>,
    _guard: CancelOnDrop,
    queue: VecDeque<SseEvent>,
    finished: bool,
    meta: ChunkMeta,
}

impl ChunkStream {
    fn push(&mut self, event: Event) {
        match event {
            Event::Text(text) => {
                let chunk = self.meta.chunk(json!({"content": text}), None);
                self.queue.push_back(chunk);
            }
            Event::Done(Ok(o)) => {
                let last = self.meta.chunk(json!({}), Some(o.finish_reason));
                self.queue.push_back(last);
                if self.meta.include_usage {
                    let usage = json!({
                        "id": self.meta.id,
                        "object": "chat.completion.chunk",
                        "created": self.meta.created,
                        "model": self.meta.model,
                        "system_fingerprint": null,
                        "choices": [],
                        "usage": usage_json(&o),
                    });
                    self.queue
                        .push_back(SseEvent::default().data(usage.to_string()));
                }
                self.finish();
            }
            Event::Done(Err(e)) => {
                self.queue
                    .push_back(SseEvent::default().data(e.body().to_string()));
                self.finish();
            }
        }
    }

    fn finish(&mut self) {
        self.queue.push_back(SseEvent::default().data("[DONE]"));
        self.finished = true;
    }
}

impl Stream for ChunkStream {
    type Item = Result<SseEvent, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(e) = self.queue.pop_front() {
                return Poll::Ready(Some(Ok(e)));
            }
            if self.finished {
                return Poll::Ready(None);
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(event)) => self.push(event),
                Poll::Ready(None) => {
                    let e = ApiError::internal("the model worker stopped unexpectedly");
                    self.push(Event::Done(Err(e)));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
