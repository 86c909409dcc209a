//! `videollama eval`: a model on a benchmark in its published format, and
//! `videollama eval merge` for shards. The work is in the `videollama-eval` crate; this
//! module parses the flags, loads the model the way `ask` does, and prints.
//!
//! ```text
//! --format F --questions Q --videos V [--answers A] [--shard i/n] [--limit N]
//!   ─load_items─► shard::select ─► OUT/run.json (checked on resume)
//!   ─ResultsLog::open(OUT)─► remaining items? ─load model (--model or the default)─►
//!   runner::run (decode thread + model) ─► OUT/predictions.jsonl
//!   [--judge-url] ─► OUT/judge.jsonl ─► OUT/summary.json, OUT/answers.json, table
//! ```

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::time::Duration;
use videollama_eval::prompt::PromptPolicy;
use videollama_eval::results::{self, ResultsLog};
use videollama_eval::runner::{self, PipelineModel, RunOptions};
use videollama_eval::{answer_file, judge, merge, shard, Format, LoadRequest, RunInfo, Shard};
use videollama_pipeline::AnswerOptions;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct EvalCommand {
    #[command(subcommand)]
    pub sub: Option<EvalSub>,
    #[command(flatten)]
    pub run: EvalRunArgs,
}

#[derive(Subcommand)]
pub enum EvalSub {
    /// Combine shard output folders into one (the same files as a single run).
    Merge {
        /// The shards' --out folders.
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// Where to write the merged predictions, summary and answer file.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args)]
pub struct EvalRunArgs {
    /// mvbench, egoschema, perception-test, videomme, activitynet-qa, msvd-qa, msrvtt-qa,
    /// avqa or clotho-aqa.
    #[arg(long)]
    pub format: Option<String>,
    /// The question file (MVBench: a task file or the folder of them).
    #[arg(long)]
    pub questions: Option<PathBuf>,
    /// The folder the question files' media paths are relative to.
    #[arg(long)]
    pub videos: Option<PathBuf>,
    /// Ground truth kept apart from the questions (ActivityNet/MSVD/MSRVTT-QA `test_a.json`,
    /// default `_q` → `_a`; EgoSchema `subset_answers.json`, default beside the questions).
    #[arg(long)]
    pub answers: Option<PathBuf>,
    /// Output folder: predictions.jsonl, summary.json, answers.json, run.json. A rerun
    /// into the same folder continues where the last one stopped.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// This process's part of the benchmark, INDEX/COUNT (0-based), split by video.
    #[arg(long, default_value = "0/1")]
    pub shard: String,
    /// Only the first N questions of the benchmark (before sharding).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Maximum new tokens per answer (the reference's mm_infer default: 2048).
    #[arg(long, default_value_t = 2048)]
    pub max_new_tokens: usize,
    /// Videos decoded ahead of the model (0: no overlap).
    #[arg(long, default_value_t = 2)]
    pub prefetch: usize,
    /// Keep a video's common prompt prefix (system message, media tokens) in a KV cache
    /// across its questions and prefill only the rest (answers equal a fresh prefill's up to
    /// float rounding, hence off by default).
    #[arg(long)]
    pub prefix_cache: bool,
    /// Stop after N new predictions (for testing resume).
    #[arg(long, hide = true)]
    pub stop_after: Option<usize>,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// OpenAI-compatible base URL of a judge for open-ended answers
    /// (`http://HOST:PORT/v1`); none by default.
    #[arg(long)]
    pub judge_url: Option<String>,
    /// The judge's model name.
    #[arg(long, default_value = "gpt-3.5-turbo")]
    pub judge_model: String,
    /// Environment variable holding the judge's API key (sent as a bearer token).
    #[arg(long)]
    pub judge_key_env: Option<String>,
    #[command(flatten)]
    pub model: crate::cli::ModelArgs,
}

pub fn run(cmd: EvalCommand) -> Result<()> {
    match cmd.sub {
        Some(EvalSub::Merge { dirs, out }) => run_merge(&dirs, &out),
        None => run_eval(&cmd.run),
    }
}

fn run_merge(dirs: &[PathBuf], out: &std::path::Path) -> Result<()> {
    let refs: Vec<&std::path::Path> = dirs.iter().map(|d| d.as_path()).collect();
    let m = merge::merge(&refs, out)?;
    if !m.missing_shards.is_empty() {
        eprintln!(
            "warning: shards {:?} are missing; the table covers the shards given",
            m.missing_shards
        );
    }
    println!(
        "merged {} folders: {} predictions → {}",
        dirs.len(),
        m.predictions,
        out.display()
    );
    print!("{}", results::table(&m.summary));
    Ok(())
}

fn run_eval(a: &EvalRunArgs) -> Result<()> {
    let (Some(format), Some(questions), Some(videos), Some(out)) =
        (&a.format, &a.questions, &a.videos, &a.out)
    else {
        bail!("eval needs --format, --questions, --videos and --out (or `eval merge`)");
    };
    let format: Format = format.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    let shard: Shard = a.shard.parse()?;
    let mut items = videollama_eval::load_items(&LoadRequest {
        format,
        questions: questions.clone(),
        videos: videos.clone(),
        answers: a.answers.clone(),
    })?;
    if let Some(n) = a.limit {
        items.truncate(n);
    }
    let dataset_items = items.len();
    let items = shard::select(&items, shard);
    let mut log = ResultsLog::open(out)?;
    let remaining = items.iter().filter(|it| !log.contains(&it.id)).count();

    let mut stats = runner::RunStats::default();
    let mut prompt_positions = (0usize, 0usize);
    let policy = if remaining > 0 {
        let pipeline = crate::cli::load(&a.model)?;
        let model = PipelineModel::new(
            &pipeline,
            AnswerOptions {
                max_new_tokens: a.max_new_tokens,
                ..AnswerOptions::default()
            },
            a.prefix_cache,
        );
        let policy = model.policy();
        results::check_or_write_run(
            out,
            &run_info(format, shard, &items, dataset_items, &policy),
        )?;
        let opts = RunOptions {
            format,
            policy: policy.clone(),
            prefetch: a.prefetch,
            stop_after: a.stop_after,
            progress: !a.no_progress,
        };
        stats = runner::run(&model, &items, &mut log, &opts)?;
        prompt_positions = (
            model.prefilled.load(std::sync::atomic::Ordering::Relaxed),
            model.reused.load(std::sync::atomic::Ordering::Relaxed),
        );
        policy
    } else {
        let path = out.join("run.json");
        let info: RunInfo = serde_json::from_str(
            &std::fs::read_to_string(&path)
                .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?,
        )?;
        let policy = PromptPolicy::parse(&info.prompt_policy);
        results::check_or_write_run(
            out,
            &run_info(format, shard, &items, dataset_items, &policy),
        )?;
        policy
    };

    let preds = log.predictions();
    let verdicts = match (&a.judge_url, format.needs_judge()) {
        (Some(url), true) => {
            let api_key = match &a.judge_key_env {
                Some(var) => Some(std::env::var(var).map_err(|_| {
                    anyhow::anyhow!("--judge-key-env {var}: the variable is not set")
                })?),
                None => None,
            };
            let cfg = judge::JudgeConfig {
                url: url.clone(),
                model: a.judge_model.clone(),
                api_key,
                timeout: Duration::from_secs(120),
            };
            judge::run(&cfg, out, &preds)?
        }
        _ => judge::read_verdicts(out)?,
    };
    let summary = results::summarize(&preds, &verdicts);
    results::write_summary(out, &summary)?;
    let answers = answer_file::write(out, format, &policy, &preds)?;
    let timing = serde_json::json!({
        "videos": stats.videos,
        "items": stats.items,
        "resumed": stats.resumed,
        "seconds": stats.seconds,
        "videos_per_s": stats.videos_per_s(),
        "shard": shard.to_string(),
        "prompt_positions_prefilled": prompt_positions.0,
        "prompt_positions_reused": prompt_positions.1,
    });
    std::fs::write(
        out.join("timing.json"),
        serde_json::to_string_pretty(&timing)? + "\n",
    )?;
    println!(
        "{format} shard {shard}: {} of {} questions done ({} this run, {} videos in {:.1} s, {:.2} videos/s; {} from an earlier run)",
        preds.len(),
        items.len(),
        stats.items,
        stats.videos,
        stats.seconds,
        stats.videos_per_s(),
        stats.resumed
    );
    if stats.stopped {
        println!(
            "stopped after {} new predictions (--stop-after)",
            stats.items
        );
    }
    print!("{}", results::table(&summary));
    println!("answers in the reference's format: {}", answers.display());
    Ok(())
}

fn run_info(
    format: Format,
    shard: Shard,
    items: &[videollama_eval::EvalItem],
    dataset_items: usize,
    policy: &PromptPolicy,
) -> RunInfo {
    RunInfo {
        format: format.name().to_string(),
        shard: shard.to_string(),
        items: items.len(),
        dataset_items,
        prompt_policy: policy.name().to_string(),
    }
}
