//! Benchmark evaluation (`videollama eval`): published question files in, predictions,
//! per-task accuracy and the reference's answer files out.
//!
//! ```text
//! --questions (+ --videos)  ─format::load─►  Vec<EvalItem>  (dataset order = `order`)
//!   ─shard::select(i/n)─►  this shard's items, grouped by media file (one encode per video)
//!   ─runner::run─►  decode thread: prepare media of the next videos ──channel──►
//!                   model thread: encode once, per question prompt::instruction ─► answer
//!                   ─► score::parse_choice / score::exact_match ─► Prediction
//!   ─results::ResultsLog─►  OUT/predictions.jsonl   (append + fsync, resumable by id)
//!   ─results::summarize─►   OUT/summary.json + the per-task table on screen
//!   ─answer_file::write─►   OUT/answers.json (the reference inference script's format)
//!   [─judge::run─►          OUT/judge.jsonl, judged accuracy / score (open-ended)]
//! merge::merge(OUT_1 … OUT_n) ─► the same files for the union of shards
//! ```
//!
//! The model is behind the [`runner::Model`] trait: [`runner::PipelineModel`] runs a loaded
//! `videollama_pipeline::Pipeline`, tests plug in a deterministic stand-in.

pub mod answer_file;
pub mod format;
pub mod judge;
pub mod merge;
pub mod prompt;
pub mod pyjson;
pub mod results;
pub mod runner;
pub mod score;
pub mod shard;

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

pub use format::{load_items, Format, LoadRequest};
pub use results::{Prediction, Summary, Tally};
pub use shard::Shard;

/// How an item is answered and scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Options A, B, …; the option letter is parsed from the answer as the reference does.
    MultipleChoice,
    /// Free text; exact match (AVQA, Clotho-AQA) or a judge (ActivityNet/MSVD/MSRVTT-QA).
    OpenEnded,
}

/// The media an item asks about (paths already resolved against `--videos`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MediaSpec {
    /// A video file or a directory of frames.
    pub video: Option<PathBuf>,
    /// A sound file (Clotho-AQA).
    pub audio: Option<PathBuf>,
    /// Clip bounds in seconds (MVBench's `start` / `end`).
    pub start_s: Option<f64>,
    pub end_s: Option<f64>,
    /// Use the video's sound track (AVQA: yes; the video benchmarks: no, as the
    /// reference's video-only processor).
    pub with_audio: bool,
}

impl MediaSpec {
    /// The key items are grouped by: one decode and one encode serve every question of it.
    pub fn key(&self) -> String {
        let p = |o: &Option<PathBuf>| {
            o.as_ref()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        format!(
            "{}|{}|{:?}|{:?}|{}",
            p(&self.video),
            p(&self.audio),
            self.start_s,
            self.end_s,
            self.with_audio
        )
    }
}

/// One question of a benchmark, in the common form every format parses into.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalItem {
    /// Unique and stable across runs: `TASK/REFERENCE_ID` (`#k` appended to repeats).
    pub id: String,
    /// Position in the whole (un-sharded) dataset; answer files and merges sort by it.
    pub order: usize,
    /// The per-task row of the table (MVBench: the file's stem).
    pub task: String,
    pub media: MediaSpec,
    /// The question as the benchmark writes it.
    pub question: String,
    /// Multiple choice: the option texts (A, B, … in this order).
    pub candidates: Vec<String>,
    /// Ground truth: the correct option's text (multiple choice) or the answer (open ended).
    pub answer: Option<String>,
    /// Multiple choice: the correct option's index (MVBench: -1 when the answer is not
    /// among the candidates, as the reference).
    pub answer_index: Option<i64>,
    pub kind: Kind,
    /// Format-specific fields the reference's answer file repeats (ids, video records).
    #[serde(default)]
    pub extra: serde_json::Value,
}

/// A benchmark run's description, `OUT/run.json`; a resumed run must match it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    pub format: String,
    /// `i/n`.
    pub shard: String,
    /// Items of this shard.
    pub items: usize,
    /// Items of the whole dataset.
    pub dataset_items: usize,
    /// The prompt policy (model family) the prompts were written for.
    pub prompt_policy: String,
}
