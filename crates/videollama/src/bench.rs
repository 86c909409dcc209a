//! `videollama bench-media`: how long decode + sample + preprocess take for one
//! video, against the `ffmpeg` CLI extracting the same frames in the same run.
//!
//! Two baselines, both writing raw RGB24 to a pipe (no image encoding):
//! * `select`: one `ffmpeg` process with a `select` filter on the frame numbers —
//!   it decodes every frame up to the last one we need;
//! * `seek`: one `ffmpeg -ss T -i FILE -frames:v 1` per frame (input seeking).
//!
//! Figures are medians over `--repeat` runs; ratios < 1 mean we are faster.

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;
use videollama_media::decode::VideoReader;
use videollama_media::image_processor::ImageProcessorConfig;
use videollama_media::sampling;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

fn run_ffmpeg(args: &[&str]) -> Result<usize> {
    let out = Command::new("ffmpeg")
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .context("running ffmpeg (is the ffmpeg CLI installed? scripts/setup.sh installs it)")?;
    if !out.status.success() {
        bail!("ffmpeg failed: {:?}", args);
    }
    Ok(out.stdout.len())
}

pub fn bench_media(video: &Path, frames: usize, processor: &str, repeat: usize) -> Result<()> {
    let processor = match processor {
        "clip" => ImageProcessorConfig::clip_vit_large_patch14_336(),
        "siglip" => ImageProcessorConfig::siglip_so400m_patch14_384(),
        other => bail!("unknown processor {other:?} (clip or siglip)"),
    };
    let repeat = repeat.max(1);
    let mut ours = Vec::new();
    let mut decode_only = Vec::new();
    let mut indices = Vec::new();
    let mut info = None;
    for _ in 0..repeat {
        let start = Instant::now();
        let reader = VideoReader::open(video)?;
        let i = reader.info().clone();
        indices = sampling::sample_frame_indices(i.frame_count, i.avg_fps, frames, None, None)?;
        let decoded = reader.decode(&indices)?;
        let decode_s = start.elapsed().as_secs_f64();
        let px = processor.preprocess_batch(&decoded)?;
        ours.push(start.elapsed().as_secs_f64());
        decode_only.push(decode_s);
        assert_eq!(px.frames, frames);
        info = Some(i);
    }
    let info = info.expect("at least one run");
    let file = video.to_string_lossy().to_string();
    let select = indices
        .iter()
        .map(|i| format!("eq(n\\,{i})"))
        .collect::<Vec<_>>()
        .join("+");
    let select_filter = format!("select='{select}'");
    let select_args = [
        "-v",
        "error",
        "-nostdin",
        "-threads",
        "0",
        "-i",
        &file,
        "-vf",
        &select_filter,
        "-vsync",
        "0",
        "-pix_fmt",
        "rgb24",
        "-f",
        "rawvideo",
        "-",
    ];
    let mut ff_select = Vec::new();
    let mut ff_seek = Vec::new();
    for _ in 0..repeat {
        let start = Instant::now();
        let bytes = run_ffmpeg(&select_args)?;
        ff_select.push(start.elapsed().as_secs_f64());
        let expected = indices
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            * (info.width * info.height * 3) as usize;
        if bytes != expected {
            eprintln!("note: ffmpeg select produced {bytes} bytes, expected {expected}");
        }
        let start = Instant::now();
        for &i in &indices {
            let t = format!("{:.6}", i as f64 / info.avg_fps);
            let args = [
                "-v",
                "error",
                "-nostdin",
                "-ss",
                &t,
                "-i",
                &file,
                "-frames:v",
                "1",
                "-pix_fmt",
                "rgb24",
                "-f",
                "rawvideo",
                "-",
            ];
            run_ffmpeg(&args)?;
        }
        ff_seek.push(start.elapsed().as_secs_f64());
    }
    let (ours, decode_only, ff_select, ff_seek) = (
        median(ours),
        median(decode_only),
        median(ff_select),
        median(ff_seek),
    );
    println!(
        "video            {} ({}x{}, {} frames, {:.2} fps, {:.1} s, {})",
        video.display(),
        info.width,
        info.height,
        info.frame_count,
        info.avg_fps,
        info.duration_s,
        info.codec
    );
    println!("frames           {frames} at {indices:?}");
    println!(
        "videollama       {:.3} s  (decode {:.3} s + preprocess {:.3} s), median of {repeat}",
        ours,
        decode_only,
        ours - decode_only
    );
    println!(
        "ffmpeg select    {:.3} s  → ratio videollama/ffmpeg {:.2}",
        ff_select,
        ours / ff_select
    );
    println!(
        "ffmpeg -ss ×{}   {:.3} s  → ratio videollama/ffmpeg {:.2}",
        indices.len(),
        ff_seek,
        ours / ff_seek
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// `videollama bench`: the whole request, stage by stage.
// ---------------------------------------------------------------------------------------

/// Current and peak resident memory of this process (`VmRSS`, `VmHWM`), in bytes.
pub fn rss_bytes() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// CPU seconds (user + system) this process has used so far, from `/proc/self/stat`.
/// On a busy machine, CPU time per stage is steadier than wall time.
pub fn process_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Stage times of one pipeline run, in the reference harness's terms
/// (`../shared/perf/ref_bench.py`): TTFT runs from the start of preprocessing until the
/// first token is chosen.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StageTimes {
    pub preprocess_s: f64,
    pub vision_s: f64,
    /// CPU seconds of the vision tower + connector (all threads).
    pub vision_cpu_s: f64,
    pub connector_s: f64,
    pub prompt_s: f64,
    pub prefill_s: f64,
    pub prefill_tokens_per_s: f64,
    pub ttft_s: f64,
    pub decode_tokens_per_s: f64,
    pub total_s: f64,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
}

fn median_of(runs: &[StageTimes], f: impl Fn(&StageTimes) -> f64) -> f64 {
    median(runs.iter().map(f).collect())
}

fn median_stages(runs: &[StageTimes]) -> StageTimes {
    StageTimes {
        preprocess_s: median_of(runs, |r| r.preprocess_s),
        vision_s: median_of(runs, |r| r.vision_s),
        vision_cpu_s: median_of(runs, |r| r.vision_cpu_s),
        connector_s: median_of(runs, |r| r.connector_s),
        prompt_s: median_of(runs, |r| r.prompt_s),
        prefill_s: median_of(runs, |r| r.prefill_s),
        prefill_tokens_per_s: median_of(runs, |r| r.prefill_tokens_per_s),
        ttft_s: median_of(runs, |r| r.ttft_s),
        decode_tokens_per_s: median_of(runs, |r| r.decode_tokens_per_s),
        total_s: median_of(runs, |r| r.total_s),
        prompt_tokens: runs[0].prompt_tokens,
        generated_tokens: runs[0].generated_tokens,
    }
}

fn progress(runs: usize, what: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(runs as u64);
    pb.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} runs, {elapsed}")
            .expect("static template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// An optional untimed warm-up, then `plan.runs` timed runs under a progress bar.
fn timed_runs(
    plan: &BenchPlan<'_>,
    one: impl Fn() -> Result<StageTimes>,
) -> Result<Vec<StageTimes>> {
    if plan.warmup {
        one()?;
    }
    let pb = progress(plan.runs, "bench");
    let mut runs = Vec::with_capacity(plan.runs);
    for _ in 0..plan.runs {
        runs.push(one()?);
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(runs)
}

/// What one `bench` invocation measures.
pub struct BenchPlan<'a> {
    pub video: Option<&'a Path>,
    pub question: &'a str,
    pub max_new_tokens: usize,
    pub runs: usize,
    pub warmup: bool,
    pub json: bool,
    pub mode: String,
}

fn header(mode: &str) -> serde_json::Map<String, serde_json::Value> {
    let cpu = videollama_nn::cpu::report();
    let mut m = serde_json::Map::new();
    m.insert("cpu".into(), cpu.model.clone().into());
    m.insert("features".into(), serde_json::json!(cpu.features));
    m.insert(
        "kernels".into(),
        format!("f32 {}, quantized {}", cpu.dense_f32, cpu.quantized).into(),
    );
    m.insert("threads".into(), cpu.threads.into());
    m.insert("mode".into(), mode.into());
    m
}

fn print_report(
    plan: &BenchPlan<'_>,
    mut out: serde_json::Map<String, serde_json::Value>,
    runs: &[StageTimes],
    load_s: f64,
    loaded_bytes: u64,
) -> Result<()> {
    let (_, peak) = rss_bytes();
    let med = median_stages(runs);
    out.insert("load_s".into(), load_s.into());
    out.insert("weights_bytes".into(), loaded_bytes.into());
    out.insert("peak_rss_bytes".into(), peak.into());
    out.insert("runs".into(), serde_json::to_value(runs)?);
    out.insert("median".into(), serde_json::to_value(&med)?);
    if plan.json {
        println!("{}", serde_json::Value::Object(out));
        return Ok(());
    }
    println!(
        "cpu         {} ({})",
        out["cpu"].as_str().unwrap_or(""),
        out["kernels"].as_str().unwrap_or("")
    );
    println!("mode        {}, {} threads", plan.mode, out["threads"]);
    println!(
        "load        {load_s:.2} s, {:.2} GB resident after load",
        loaded_bytes as f64 / 1e9
    );
    println!("median of {} run(s):", runs.len());
    println!("  preprocess   {:>9.3} s", med.preprocess_s);
    println!(
        "  vision tower {:>9.3} s  ({:.1} CPU s with the connector)",
        med.vision_s, med.vision_cpu_s
    );
    println!("  connector    {:>9.3} s", med.connector_s);
    println!(
        "  prefill      {:>9.3} s  ({} prompt tokens, {:.1} tokens/s)",
        med.prefill_s, med.prompt_tokens, med.prefill_tokens_per_s
    );
    println!("  first token  {:>9.3} s", med.ttft_s);
    println!(
        "  decode       {:>9.2} tokens/s ({} tokens)",
        med.decode_tokens_per_s, med.generated_tokens
    );
    println!("peak RSS    {:.2} GB", peak as f64 / 1e9);
    Ok(())
}

/// Bench a loaded checkpoint on a video (decode → tower → connector → prefill → decode).
pub fn bench_pipeline(
    pipeline: &videollama_pipeline::Pipeline,
    plan: &BenchPlan<'_>,
    loaded_bytes: u64,
) -> Result<()> {
    use videollama_pipeline::media::MediaRequest;
    use videollama_pipeline::AnswerOptions;
    let request = MediaRequest {
        video: plan.video.map(Path::to_path_buf),
        ..Default::default()
    };
    let opts = AnswerOptions {
        max_new_tokens: plan.max_new_tokens,
        ..Default::default()
    };
    let one = || -> Result<StageTimes> {
        let start = Instant::now();
        let (input, report) = pipeline.prepare_media(&request)?;
        let preprocess_s = start.elapsed().as_secs_f64();
        let cpu0 = process_cpu_seconds();
        let encoded = pipeline.encode_media(&input)?;
        let vision_cpu_s = process_cpu_seconds() - cpu0;
        let (vision_s, connector_s) = encoded
            .visual
            .as_ref()
            .map(|v| (v.tower_seconds, v.connector_seconds))
            .unwrap_or((0.0, 0.0));
        let answer = pipeline.answer(&[plan.question.to_string()], &encoded, &opts, |_| true)?;
        let _ = report;
        let t = &answer.timings;
        let ttft_s = preprocess_s
            + encoded.vision_seconds
            + encoded.audio_seconds
            + t.prompt_s
            + t.prefill_s;
        Ok(StageTimes {
            preprocess_s,
            vision_s,
            vision_cpu_s,
            connector_s,
            prompt_s: t.prompt_s,
            prefill_s: t.prefill_s,
            prefill_tokens_per_s: answer.prompt_tokens as f64 / t.prefill_s.max(1e-9),
            ttft_s,
            decode_tokens_per_s: t.decode_tokens_per_s,
            total_s: start.elapsed().as_secs_f64(),
            prompt_tokens: answer.prompt_tokens,
            generated_tokens: answer.token_ids.len(),
        })
    };
    let runs = timed_runs(plan, one)?;
    print_report(
        plan,
        header(&plan.mode),
        &runs,
        pipeline.load_seconds,
        loaded_bytes,
    )
}

/// Bench a synthetic model: random pixels through the tower and connector, a prompt of
/// `text_tokens` random ids around the media block, greedy decoding of `max_new_tokens`.
pub fn bench_synthetic(
    model: &videollama_pipeline::VideoLlama2,
    plan: &BenchPlan<'_>,
    text_tokens: usize,
    load_s: f64,
    loaded_bytes: u64,
) -> Result<()> {
    use candle_core::Tensor;
    use videollama_pipeline::generate::{generate, GenerateOptions};
    let frames = model.num_frames();
    let size = model
        .visual
        .as_ref()
        .map(|v| v.tower_info.config.image_size())
        .unwrap_or(0);
    let one = || -> Result<StageTimes> {
        let start = Instant::now();
        let mut prompt_s = 0.0;
        let (mut vision_s, mut connector_s) = (0.0, 0.0);
        let mut pieces = Vec::new();
        let ids: Vec<u32> = (0..text_tokens as u32)
            .map(|i| (i * 7919) % 1000 + 10)
            .collect();
        let text = model
            .llm
            .embed_tokens(&Tensor::new(ids.as_slice(), &model.device)?)?;
        let mut vision_cpu_s = 0.0;
        if size > 0 {
            let px = Tensor::rand(-1f32, 1f32, (frames, 3, size, size), &model.device)?;
            let cpu0 = process_cpu_seconds();
            let enc = model.encode_visual(&px, false)?;
            vision_cpu_s = process_cpu_seconds() - cpu0;
            vision_s = enc.tower_seconds;
            connector_s = enc.connector_seconds;
            let t0 = Instant::now();
            let half = text_tokens / 2;
            pieces.push(text.narrow(0, 0, half)?);
            pieces.push(enc.connector_out.to_dtype(text.dtype())?);
            pieces.push(text.narrow(0, half, text_tokens - half)?);
            prompt_s = t0.elapsed().as_secs_f64();
        } else {
            pieces.push(text);
        }
        let embeds = Tensor::cat(&pieces, 0)?;
        let prompt_tokens = embeds.dim(0)?;
        let gen = generate(
            &model.llm,
            &embeds,
            &GenerateOptions {
                stop_sequences: Vec::new(),
                max_new_tokens: plan.max_new_tokens,
                sampling: Default::default(),
                eos_ids: Vec::new(),
                record_logits: false,
                min_new_tokens: 0,
            },
            |_| true,
        )?;
        let n = gen.token_ids.len();
        Ok(StageTimes {
            preprocess_s: 0.0,
            vision_s,
            vision_cpu_s,
            connector_s,
            prompt_s,
            prefill_s: gen.prefill_seconds,
            prefill_tokens_per_s: prompt_tokens as f64 / gen.prefill_seconds.max(1e-9),
            ttft_s: vision_s + connector_s + prompt_s + gen.prefill_seconds,
            decode_tokens_per_s: if gen.decode_seconds > 0.0 {
                n.saturating_sub(1) as f64 / gen.decode_seconds
            } else {
                0.0
            },
            total_s: start.elapsed().as_secs_f64(),
            prompt_tokens,
            generated_tokens: n,
        })
    };
    let runs = timed_runs(plan, one)?;
    print_report(plan, header(&plan.mode), &runs, load_s, loaded_bytes)
}
