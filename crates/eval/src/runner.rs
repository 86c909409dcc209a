//! The evaluation loop.
//!
//! ```text
//! items (this shard, not yet in predictions.jsonl) ─group by media key (first-seen order)─►
//!   decode thread:  Model::prepare(media)  (decode + sample + preprocess) ─┐ bounded
//!                   … runs `prefetch` videos ahead of the model            │ channel
//!   model thread:   Model::encode once ◄──────────────────────────────────┘
//!                   per question: prompt::instruction ─► Model::answer ─► score ─► append
//! ```
//! Media decoding of the next videos overlaps with the model on the current one; a video's
//! questions share one encode (the encoder's work is done once per video, like the
//! pipeline's encoder cache). A failed decode / encode / answer becomes an error record
//! for the items concerned, never an abort.

use crate::prompt::{instruction, PromptPolicy};
use crate::results::{media_text, Prediction, ResultsLog};
use crate::{score, EvalItem, Format, Kind, MediaSpec};
use anyhow::{bail, Result};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::Instant;
use videollama_pipeline::media::MediaRequest;
use videollama_pipeline::{AnswerOptions, ChatSession, EncodedMedia, MediaInput, Pipeline};

/// What the runner needs from a model. `prepare` runs on the decode thread.
pub trait Model: Sync {
    type Prepared: Send;
    type Encoded;
    fn prepare(&self, media: &MediaSpec) -> Result<Self::Prepared>;
    fn encode(&self, prepared: Self::Prepared) -> Result<Self::Encoded>;
    /// `encoded` is the video's state across its questions (a KV-cache prefix, say).
    fn answer(&self, encoded: &mut Self::Encoded, prompt: &str) -> Result<String>;
}

/// A loaded pipeline, answering greedily with `opts`.
///
/// With `prefix_cache`, a video's questions share one [`ChatSession`]: its KV cache keeps
/// the prompt prefix they have in common (system message, media tokens) and each question
/// prefills only what follows (the session's longest-common-prefix rule; families whose
/// prompt cannot be split fall back to a full prefill). The answers are a fresh prefill's
/// up to float rounding in the reused keys/values, so it is off by default.
pub struct PipelineModel<'a> {
    pub pipeline: &'a Pipeline,
    pub opts: AnswerOptions,
    pub prefix_cache: bool,
    /// Prompt positions run through the language model / taken from a session's cache.
    pub prefilled: AtomicUsize,
    pub reused: AtomicUsize,
}

/// A video's encoding, and its session when prefixes are reused.
pub struct PipelineEncoded {
    media: Arc<EncodedMedia>,
    session: Option<ChatSession>,
}

impl<'a> PipelineModel<'a> {
    pub fn new(pipeline: &'a Pipeline, opts: AnswerOptions, prefix_cache: bool) -> Self {
        Self {
            pipeline,
            opts,
            prefix_cache,
            prefilled: AtomicUsize::new(0),
            reused: AtomicUsize::new(0),
        }
    }

    /// The prompt policy of this pipeline's family.
    pub fn policy(&self) -> PromptPolicy {
        PromptPolicy::for_family(self.pipeline.family.as_ref().map(|f| f.name()))
    }
}

impl Model for PipelineModel<'_> {
    type Prepared = MediaInput;
    type Encoded = PipelineEncoded;

    fn prepare(&self, media: &MediaSpec) -> Result<MediaInput> {
        for p in media.video.iter().chain(media.audio.iter()) {
            if !p.exists() {
                bail!("{}: no such file", p.display());
            }
        }
        let req = MediaRequest {
            video: media.video.clone(),
            audio: media.audio.clone(),
            start_s: media.start_s,
            end_s: media.end_s,
            use_video_audio: Some(media.with_audio),
            ..MediaRequest::default()
        };
        Ok(self.pipeline.prepare_media(&req)?.0)
    }

    fn encode(&self, prepared: MediaInput) -> Result<PipelineEncoded> {
        let media = Arc::new(self.pipeline.encode_media(&prepared)?);
        let session = self.prefix_cache.then(|| ChatSession::new(media.clone()));
        Ok(PipelineEncoded { media, session })
    }

    fn answer(&self, encoded: &mut PipelineEncoded, prompt: &str) -> Result<String> {
        let turns = [prompt.to_string()];
        let a = match &mut encoded.session {
            Some(session) => {
                self.pipeline
                    .answer_in_session(session, &turns, &self.opts, |_| true)?
            }
            None => self
                .pipeline
                .answer(&turns, &encoded.media, &self.opts, |_| true)?,
        };
        self.prefilled
            .fetch_add(a.prompt_tokens - a.reused_prompt_tokens, Ordering::Relaxed);
        self.reused
            .fetch_add(a.reused_prompt_tokens, Ordering::Relaxed);
        Ok(a.answer)
    }
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub format: Format,
    pub policy: PromptPolicy,
    /// Videos decoded ahead of the model (0: decode in turn, no overlap).
    pub prefetch: usize,
    /// Stop after this many new predictions (tests: a run cut short).
    pub stop_after: Option<usize>,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

#[derive(Debug, Clone, Default)]
pub struct RunStats {
    /// Videos (media groups) handled in this run.
    pub videos: usize,
    /// Predictions written in this run.
    pub items: usize,
    /// Items skipped because an earlier run recorded them.
    pub resumed: usize,
    pub seconds: f64,
    /// Cut short by `stop_after`.
    pub stopped: bool,
}

impl RunStats {
    pub fn videos_per_s(&self) -> f64 {
        self.videos as f64 / self.seconds.max(1e-9)
    }
}

/// Score the model's text for `item`.
pub fn predict(format: Format, item: &EvalItem, prompt: String, output: String) -> Prediction {
    let (pred, correct) = match item.kind {
        Kind::MultipleChoice => {
            let p = score::parse_choice(format, &output, &item.candidates) as i64;
            (Some(p), item.answer_index.map(|g| g == p))
        }
        Kind::OpenEnded if format.needs_judge() => (None, None),
        Kind::OpenEnded => (
            None,
            item.answer
                .as_deref()
                .map(|a| score::exact_match(a, &output)),
        ),
    };
    Prediction {
        id: item.id.clone(),
        order: item.order,
        task: item.task.clone(),
        kind: item.kind,
        media: media_text(item),
        question: item.question.clone(),
        prompt,
        candidates: item.candidates.clone(),
        answer: item.answer.clone(),
        answer_index: item.answer_index,
        output: Some(output),
        pred,
        correct,
        error: None,
        extra: item.extra.clone(),
    }
}

/// Answer every item not yet in `log`, appending as it goes.
pub fn run<M: Model>(
    model: &M,
    items: &[EvalItem],
    log: &mut ResultsLog,
    opts: &RunOptions,
) -> Result<RunStats> {
    let start = Instant::now();
    let mut stats = RunStats::default();
    // Group the remaining items by media, in order of first appearance.
    let mut groups: Vec<(MediaSpec, Vec<&EvalItem>)> = Vec::new();
    let mut index: std::collections::HashMap<String, usize> = Default::default();
    for it in items {
        if log.contains(&it.id) {
            stats.resumed += 1;
            continue;
        }
        let k = it.media.key();
        let gi = *index.entry(k).or_insert_with(|| {
            groups.push((it.media.clone(), Vec::new()));
            groups.len() - 1
        });
        groups[gi].1.push(it);
    }
    let pb = if opts.progress {
        let pb = indicatif::ProgressBar::new(groups.len() as u64);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} videos  {per_sec}  eta {eta}  {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        pb
    } else {
        indicatif::ProgressBar::hidden()
    };
    // One video's questions; `Ok(true)`: stop here (`stop_after`).
    let mut handle = |gi: usize, prepared: Result<M::Prepared>| -> Result<bool> {
        let (_, group) = &groups[gi];
        let mut encoded = prepared.and_then(|p| model.encode(p));
        for item in group {
            let prompt = instruction(opts.format, item, &opts.policy);
            let p = match &mut encoded {
                Err(e) => Prediction::failed(item, prompt, format!("{e:#}")),
                Ok(enc) => match model.answer(enc, &prompt) {
                    Ok(out) => predict(opts.format, item, prompt, out),
                    Err(e) => Prediction::failed(item, prompt, format!("{e:#}")),
                },
            };
            if let Some(err) = &p.error {
                tracing::warn!("{}: {err}", p.id);
            }
            log.append(&p)?;
            stats.items += 1;
            if opts.stop_after.is_some_and(|n| stats.items >= n) {
                stats.stopped = true;
                return Ok(true);
            }
        }
        stats.videos += 1;
        pb.inc(1);
        Ok(false)
    };
    let result = if opts.prefetch == 0 {
        // No overlap: decode each video when the model is ready for it.
        (|| -> Result<()> {
            for (gi, (media, _)) in groups.iter().enumerate() {
                if handle(gi, model.prepare(media))? {
                    break;
                }
            }
            Ok(())
        })()
    } else {
        std::thread::scope(|s| -> Result<()> {
            // The channel holds `prefetch - 1` prepared videos; the decode thread works on
            // one more while it waits to hand it over.
            let (tx, rx) = sync_channel::<(usize, Result<M::Prepared>)>(opts.prefetch - 1);
            let media: Vec<&MediaSpec> = groups.iter().map(|g| &g.0).collect();
            s.spawn(move || {
                for (gi, m) in media.into_iter().enumerate() {
                    let prepared = model.prepare(m);
                    if tx.send((gi, prepared)).is_err() {
                        break;
                    }
                }
            });
            for (gi, prepared) in rx {
                if handle(gi, prepared)? {
                    break;
                }
            }
            Ok(())
        })
    };
    pb.finish_and_clear();
    result?;
    stats.seconds = start.elapsed().as_secs_f64();
    Ok(stats)
}
