//! `videollama eval-demo`: accuracy of a model on a split of the synthetic demo world,
//! per question type, from the media files (the way `ask` reads them).
//!
//! ```text
//! DATA/meta.jsonl (split's clips) ─► per clip: prepare_media(clips/ID.mp4) ─► encode once
//!   ─► per question: answer (greedy) ─► demodata::score (keywords of the expected answer;
//!      captions: every keyword of the clip) ─► OUT.jsonl line
//! ─► table: category, correct / total, accuracy  (+ OUT.summary.json)
//! ```

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use videollama_demodata::{read_meta, score, Category};
use videollama_pipeline::media::MediaRequest;
use videollama_pipeline::{AnswerOptions, Pipeline};

#[derive(clap::Args)]
pub struct EvalDemoArgs {
    /// A folder written by `videollama make-demo-data`.
    #[arg(long)]
    pub data: PathBuf,
    /// The split to score (`test`, `test_ood`, `val`, `train`).
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Only the first N clips of the split.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Every prediction as JSON lines (and a summary beside it, `.summary.json`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, default_value_t = 48)]
    pub max_new_tokens: usize,
}

#[derive(Default, Clone, Copy)]
struct Tally {
    correct: usize,
    total: usize,
}

pub fn run(pipeline: &Pipeline, args: &EvalDemoArgs) -> Result<()> {
    let meta_path = args.data.join("meta.jsonl");
    let clips = read_meta(&meta_path).with_context(|| format!("{}", meta_path.display()))?;
    let mut clips: Vec<_> = clips
        .into_iter()
        .filter(|c| c.split == args.split)
        .collect();
    if clips.is_empty() {
        bail!("{}: no clip of split {:?}", meta_path.display(), args.split);
    }
    if let Some(n) = args.limit {
        clips.truncate(n);
    }
    let mut out = match &args.out {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("{}", p.display()))?,
        )),
        None => None,
    };
    let opts = AnswerOptions {
        max_new_tokens: args.max_new_tokens,
        ..AnswerOptions::default()
    };
    let mut tally: BTreeMap<Category, Tally> = BTreeMap::new();
    let pb = indicatif::ProgressBar::new(clips.len() as u64);
    pb.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} clips {elapsed} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let start = std::time::Instant::now();
    for clip in &clips {
        let request = MediaRequest {
            video: Some(args.data.join(&clip.video)),
            ..MediaRequest::default()
        };
        let (input, _) = pipeline.prepare_media(&request)?;
        let encoded = pipeline.encode_media(&input)?;
        for qa in &clip.qa {
            let answer =
                pipeline.answer(std::slice::from_ref(&qa.question), &encoded, &opts, |_| {
                    true
                })?;
            let ok = score(&answer.answer, clip, qa.question_type);
            let t = tally.entry(qa.question_type.category()).or_default();
            t.total += 1;
            t.correct += usize::from(ok);
            if let Some(w) = out.as_mut() {
                let line = serde_json::json!({
                    "id": qa.id,
                    "category": qa.question_type.category().name(),
                    "question": qa.question,
                    "expected": qa.answer,
                    "answer": answer.answer,
                    "correct": ok,
                });
                writeln!(w, "{line}")?;
            }
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "{} split {:?}: {} clips in {seconds:.0} s",
        args.data.display(),
        args.split,
        clips.len()
    );
    println!(
        "{:<10} {:>8} {:>8} {:>9}",
        "category", "correct", "total", "accuracy"
    );
    let mut summary = serde_json::Map::new();
    let mut all = Tally::default();
    for (cat, t) in &tally {
        let acc = t.correct as f64 / t.total.max(1) as f64;
        println!(
            "{:<10} {:>8} {:>8} {:>8.1}%",
            cat.name(),
            t.correct,
            t.total,
            100.0 * acc
        );
        summary.insert(
            cat.name().to_string(),
            serde_json::json!({"correct": t.correct, "total": t.total, "accuracy": acc}),
        );
        all.correct += t.correct;
        all.total += t.total;
    }
    let acc = all.correct as f64 / all.total.max(1) as f64;
    println!(
        "{:<10} {:>8} {:>8} {:>8.1}%",
        "overall",
        all.correct,
        all.total,
        100.0 * acc
    );
    if let (Some(mut w), Some(p)) = (out, &args.out) {
        w.flush()?;
        summary.insert(
            "overall".into(),
            serde_json::json!({"correct": all.correct, "total": all.total, "accuracy": acc}),
        );
        summary.insert("split".into(), args.split.clone().into());
        summary.insert("clips".into(), clips.len().into());
        summary.insert("seconds".into(), seconds.into());
        let path = p.with_extension("summary.json");
        std::fs::write(&path, serde_json::to_string_pretty(&summary)?)?;
    }
    Ok(())
}
