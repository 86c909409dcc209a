//! The model worker: one `std::thread` that owns all inference (media decoding,
//! encoders, generation), fed by a bounded queue. Tokio threads never run the model.

use crate::error::ApiError;
use crate::metrics::Metrics;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;
use tokio::sync::mpsc::UnboundedSender;
use videollama_pipeline::media::MediaRequest;
use videollama_pipeline::{AnswerOptions, CacheStatus, Pipeline, StopReason};

/// What the worker tells the request's handler.
#[derive(Debug)]
pub enum Event {
    /// A piece of the answer (already cut at stop strings, trailing blanks held back).
    Text(String),
    /// The end: the outcome or the error.
    Done(Result<Outcome, ApiError>),
}

/// A finished answer.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub content: String,
    /// `stop` (eos or a stop string) or `length`.
    pub finish_reason: &'static str,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub visual_tokens: usize,
    pub audio_tokens: usize,
    pub timings: serde_json::Value,
}

/// One request for the worker.
pub struct Job {
    pub request_id: String,
    pub span: tracing::Span,
    pub turns: Vec<String>,
    pub media: MediaRequest,
    /// Temporary media files, held only to be deleted when the job is dropped.
    #[allow(dead_code)]
    pub temp_files: Vec<tempfile::NamedTempFile>,
    /// `(server path, what the client sent)` to rewrite error messages.
    pub labels: Vec<(String, String)>,
    pub options: AnswerOptions,
    pub stops: Vec<String>,
    pub events: UnboundedSender<Event>,
    /// Set when the client goes away.
    pub cancel: Arc<AtomicBool>,
    pub enqueued: Instant,
}

impl Job {
    fn cancelled(&self, all: &AtomicBool) -> bool {
        self.cancel.load(Ordering::Relaxed)
            || all.load(Ordering::Relaxed)
            || self.events.is_closed()
    }
}

pub enum SubmitError {
    Full,
    Closed,
}

/// The queue's sending side and the worker thread.
pub struct Worker {
    tx: Mutex<Option<SyncSender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Set at the end of the shutdown grace period: cancels everything.
    pub cancel_all: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

impl Worker {
    pub fn start(
        pipeline: Arc<Pipeline>,
        max_queue: usize,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        Self::start_with(
            max_queue,
            metrics,
            move |job, waited, metrics, cancel_all| {
                run_job(&pipeline, job, waited, metrics, cancel_all)
            },
        )
    }

    /// A worker running `run` for each job (the model, or a stand-in in tests).
    pub fn start_with<R>(max_queue: usize, metrics: Arc<Metrics>, run: R) -> std::io::Result<Self>
    where
        R: Fn(&Job, f64, &Metrics, &AtomicBool) -> Result<Outcome, ApiError> + Send + 'static,
    {
        let (tx, rx) = sync_channel::<Job>(max_queue);
        let cancel_all = Arc::new(AtomicBool::new(false));
        let thread = {
            let metrics = metrics.clone();
            let cancel_all = cancel_all.clone();
            std::thread::Builder::new()
                .name("videollama-worker".into())
                .spawn(move || worker_loop(rx, &metrics, &cancel_all, run))?
        };
        Ok(Self {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            cancel_all,
            metrics,
        })
    }

    /// Queue a job without waiting; `Full` when `max_queue` jobs already wait.
    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        let guard = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        let Some(tx) = guard.as_ref() else {
            return Err(SubmitError::Closed);
        };
        self.metrics.queue_depth.fetch_add(1, Ordering::SeqCst);
        match tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.metrics.queue_depth.fetch_sub(1, Ordering::SeqCst);
                Err(match e {
                    TrySendError::Full(_) => SubmitError::Full,
                    TrySendError::Disconnected(_) => SubmitError::Closed,
                })
            }
        }
    }

    pub fn is_alive(&self) -> bool {
        self.thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|t| !t.is_finished())
    }

    /// Close the queue and wait for the worker thread to finish.
    pub fn stop(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

fn worker_loop<R>(rx: Receiver<Job>, metrics: &Metrics, cancel_all: &AtomicBool, run: R)
where
    R: Fn(&Job, f64, &Metrics, &AtomicBool) -> Result<Outcome, ApiError>,
{
    while let Ok(job) = rx.recv() {
        metrics.queue_depth.fetch_sub(1, Ordering::SeqCst);
        let span = job.span.clone();
        let _enter = span.enter();
        let waited = job.enqueued.elapsed().as_secs_f64();
        if job.cancelled(cancel_all) {
            let err = if cancel_all.load(Ordering::Relaxed) {
                ApiError::unavailable("the server is shutting down")
            } else {
                metrics.cancelled.fetch_add(1, Ordering::Relaxed);
                tracing::info!(request_id = %job.request_id, "cancelled while queued (client went away)");
                ApiError::unavailable("cancelled")
            };
            let _ = job.events.send(Event::Done(Err(err)));
            continue;
        }
        metrics.record_stage("queue", waited);
        metrics.busy.store(1, Ordering::Relaxed);
        let start = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| run(&job, waited, metrics, cancel_all)));
        metrics.busy.store(0, Ordering::Relaxed);
        let result = match result {
            Ok(r) => r,
            Err(payload) => {
                metrics.panics.fetch_add(1, Ordering::Relaxed);
                let what = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                tracing::error!(request_id = %job.request_id, panic = %what, "the model panicked on this request");
                Err(ApiError::internal(format!(
                    "internal error while answering (the request was dropped; the server is still running): {what}"
                )))
            }
        };
        let elapsed = start.elapsed().as_secs_f64();
        match &result {
            Ok(o) => {
                metrics.record_service_time(elapsed);
                tracing::info!(
                    request_id = %job.request_id,
                    queue_s = waited,
                    total_s = elapsed,
                    prompt_tokens = o.prompt_tokens,
                    completion_tokens = o.completion_tokens,
                    finish_reason = o.finish_reason,
                    "answered"
                );
            }
            Err(e) => {
                tracing::info!(request_id = %job.request_id, status = e.status.as_u16(), error = %e.message, "request failed")
            }
        }
        let _ = job.events.send(Event::Done(result));
        // Dropping the job deletes its temporary files.
    }
}

fn run_job(
    pipeline: &Pipeline,
    job: &Job,
    waited: f64,
    metrics: &Metrics,
    cancel_all: &AtomicBool,
) -> Result<Outcome, ApiError> {
    let cancelled_err = || {
        if cancel_all.load(Ordering::Relaxed) {
            ApiError::unavailable("the server is shutting down")
        } else {
            metrics.cancelled.fetch_add(1, Ordering::Relaxed);
            tracing::info!("cancelled (client went away)");
            ApiError::unavailable("cancelled")
        }
    };
    let perr = |e: videollama_pipeline::PipelineError| ApiError::from_pipeline(&e, &job.labels);

    // Through the encoder cache: inline media were written to temporary files, which are
    // hashed by content like any other file, so a repeated data: URL hits too.
    let (encoded, report, cache_status) = pipeline.encode_request(&job.media).map_err(perr)?;
    metrics.record_stage("preprocess", report.preprocess_s);
    if cache_status != CacheStatus::Hit {
        metrics.record_stage("encode", encoded.vision_seconds + encoded.audio_seconds);
    }
    if job.cancelled(cancel_all) {
        return Err(cancelled_err());
    }

    let mut filter = TextFilter::new(job.stops.clone());
    let mut client_gone = false;
    let answer = pipeline
        .answer(&job.turns, &encoded, &job.options, |piece| {
            if job.cancelled(cancel_all) {
                client_gone = true;
                return false;
            }
            let (emit, stopped) = filter.push(piece);
            if !emit.is_empty() && job.events.send(Event::Text(emit)).is_err() {
                client_gone = true;
                return false;
            }
            !stopped
        })
        .map_err(perr)?;
    if client_gone {
        return Err(cancelled_err());
    }
    let rest = filter.finish();
    if !rest.is_empty() {
        let _ = job.events.send(Event::Text(rest));
    }
    let t = &answer.timings;
    metrics.record_stage("prefill", t.prefill_s);
    metrics.record_stage("decode", t.decode_s);
    metrics.record_decode_rate(t.decode_tokens_per_s);
    metrics
        .generated_tokens
        .fetch_add(answer.token_ids.len() as u64, Ordering::Relaxed);
    metrics
        .prompt_tokens
        .fetch_add(answer.prompt_tokens as u64, Ordering::Relaxed);

    let (content, finish_reason) = if filter.stopped {
        (filter.emitted, "stop")
    } else {
        let reason = match answer.stop_reason {
            StopReason::Eos | StopReason::Cancelled => "stop",
            StopReason::MaxNewTokens | StopReason::ContextFull => "length",
        };
        (answer.answer.clone(), reason)
    };
    let timings = serde_json::json!({
        "queue_s": waited,
        "preprocess_s": report.preprocess_s,
        "encode_s": t.vision_s + t.audio_s,
        "encoder_cache": cache_status.as_str(),
        "prompt_s": t.prompt_s,
        "prefill_s": t.prefill_s,
        "decode_s": t.decode_s,
        "decode_tokens_per_s": t.decode_tokens_per_s,
    });
    Ok(Outcome {
        content,
        finish_reason,
        prompt_tokens: answer.prompt_tokens,
        completion_tokens: answer.token_ids.len(),
        visual_tokens: answer.visual_tokens,
        audio_tokens: answer.audio_tokens,
        timings,
    })
}

/// Turns the pipeline's text pieces into what the client sees: cut at the first
/// stop string, and with trailing whitespace held back until more text follows
/// (the final answer is stripped like the reference's `.strip()`), so the streamed
/// pieces add up to exactly the non-streamed content.
#[derive(Debug, Default)]
pub struct TextFilter {
    stops: Vec<String>,
    pending: String,
    pub emitted: String,
    pub stopped: bool,
}

impl TextFilter {
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops,
            ..Self::default()
        }
    }

    /// Add a piece; returns the text that can be shown now and whether a stop
    /// string was reached.
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        self.pending.push_str(piece);
        let first_stop = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min();
        if let Some(at) = first_stop {
            self.stopped = true;
            let out = self.pending[..at].trim_end().to_string();
            self.pending.clear();
            self.emitted.push_str(&out);
            return (out, true);
        }
        // Hold back trailing whitespace and any tail that may begin a stop string.
        let blank_start = self.pending.trim_end().len();
        let mut keep_from = blank_start;
        for (i, _) in self.pending.char_indices() {
            if i >= keep_from {
                break;
            }
            let tail = &self.pending[i..];
            if self.stops.iter().any(|s| s.starts_with(tail)) {
                keep_from = i;
                break;
            }
        }
        // Blanks before a held-back tail are held back too.
        let keep_from = self.pending[..keep_from].trim_end().len();
        let out: String = self.pending[..keep_from].to_string();
        self.pending.drain(..keep_from);
        self.emitted.push_str(&out);
        (out, false)
    }

    /// The end of the answer: release what was held back, less trailing blanks.
    pub fn finish(&mut self) -> String {
        if self.stopped {
            return String::new();
        }
        let out = self.pending.trim_end().to_string();
        self.pending.clear();
        self.emitted.push_str(&out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn job(turn: &str) -> (Job, tokio::sync::mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let job = Job {
            request_id: turn.into(),
            span: tracing::Span::none(),
            turns: vec![turn.into()],
            media: MediaRequest::default(),
            temp_files: Vec::new(),
            labels: Vec::new(),
            options: AnswerOptions::default(),
            stops: Vec::new(),
            events: tx,
            cancel: Arc::new(AtomicBool::new(false)),
            enqueued: Instant::now(),
        };
        (job, rx)
    }

    fn done(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Event>) -> Result<Outcome, ApiError> {
        loop {
            match rx.blocking_recv().expect("an event") {
                Event::Done(r) => return r,
                Event::Text(_) => {}
            }
        }
    }

    /// A panic answers 500 for that request only; the worker goes on.
    #[test]
    fn panics_fail_one_request_and_the_queue_is_bounded() {
        let metrics = Arc::new(Metrics::new(1));
        let worker = Worker::start_with(1, metrics.clone(), |job, _, _, _| {
            match job.turns[0].as_str() {
                "panic" => panic!("boom"),
                "slow" => std::thread::sleep(Duration::from_millis(300)),
                _ => {}
            }
            Ok(Outcome {
                content: job.turns[0].clone(),
                finish_reason: "stop",
                prompt_tokens: 1,
                completion_tokens: 1,
                visual_tokens: 0,
                audio_tokens: 0,
                timings: serde_json::Value::Null,
            })
        })
        .unwrap();
        let (j, mut rx) = job("panic");
        assert!(worker.submit(j).is_ok());
        let e = done(&mut rx).unwrap_err();
        assert_eq!(e.status.as_u16(), 500);
        assert!(e.message.contains("boom"), "{}", e.message);
        assert_eq!(metrics.panics.load(Ordering::Relaxed), 1);
        let (j, mut rx) = job("fine");
        assert!(worker.submit(j).is_ok());
        assert_eq!(done(&mut rx).unwrap().content, "fine");
        // One running, one waiting, the third refused.
        let (j, mut slow) = job("slow");
        assert!(worker.submit(j).is_ok());
        std::thread::sleep(Duration::from_millis(100));
        let (j, mut waiting) = job("waiting");
        assert!(worker.submit(j).is_ok());
        let (j, _refused) = job("refused");
        assert!(matches!(worker.submit(j), Err(SubmitError::Full)));
        assert!(done(&mut slow).is_ok());
        assert!(done(&mut waiting).is_ok());
        assert!(worker.is_alive());
        worker.stop();
        assert!(!worker.is_alive());
        let (j, _) = job("late");
        assert!(matches!(worker.submit(j), Err(SubmitError::Closed)));
    }

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, String, bool) {
        let mut f = TextFilter::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = Vec::new();
        for p in pieces {
            let (e, stop) = f.push(p);
            if !e.is_empty() {
                out.push(e);
            }
            if stop {
                break;
            }
        }
        let rest = f.finish();
        if !rest.is_empty() {
            out.push(rest);
        }
        (out, f.emitted.clone(), f.stopped)
    }

    #[test]
    fn holds_back_trailing_blanks() {
        let (out, all, stopped) = run(&[], &["Hello", " ", "world", " \n"]);
        assert_eq!(out, vec!["Hello", " world"]);
        assert_eq!(all, "Hello world");
        assert!(!stopped);
    }

    #[test]
    fn cuts_at_stop_strings_across_pieces() {
        let (out, all, stopped) = run(&["END"], &["one E", "N", "D two"]);
        assert_eq!(all, "one");
        assert_eq!(out.concat(), "one");
        assert!(stopped);
        // A prefix that does not complete is released.
        let (_, all, stopped) = run(&["END"], &["one E", "x"]);
        assert_eq!(all, "one Ex");
        assert!(!stopped);
        let (_, all, _) = run(&["END"], &["one EN"]);
        assert_eq!(all, "one EN");
        // Earliest of several stops.
        let (_, all, _) = run(&["b", "a"], &["xxab"]);
        assert_eq!(all, "xx");
        // Multi-byte text.
        let (_, all, _) = run(&["é!"], &["caf", "é", "é!"]);
        assert_eq!(all, "café");
    }
}
