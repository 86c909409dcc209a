//! Command-line parsing and the command implementations.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::json;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use videollama_nn::WeightFormat;
use videollama_pipeline::media::{MediaReport, MediaRequest};
use videollama_pipeline::Modality;
use videollama_pipeline::{
    prompt, AnswerOptions, CacheStatus, ChatSession, EncodedMedia, LoadOptions, MediaInput,
    Pipeline, Visual, WeightOptions,
};

#[derive(Parser)]
#[command(name = "videollama", version, about = "Ask VideoLLaMA2 models about videos, images and text", long_about = None)]
struct Cli {
    /// Log more (repeat for more detail); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Ask one question about a video, an image, or nothing (text-only).
    Ask {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        media: MediaArgs,
        #[command(flatten)]
        gen: GenArgs,
        /// The question.
        question: String,
    },
    /// Caption a video, image or sound ("Describe the video in detail.").
    Caption {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        media: MediaArgs,
        #[command(flatten)]
        gen: GenArgs,
        /// Use this instruction instead of the default captioning prompt.
        #[arg(long)]
        prompt: Option<String>,
    },
    /// Multi-turn conversation in the terminal about one video or image (encoded once).
    Chat {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        media: MediaArgs,
        #[command(flatten)]
        gen: GenArgs,
    },
    /// Serve an OpenAI-compatible HTTP API (`POST /v1/chat/completions`).
    Serve {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        #[arg(long, default_value_t = 8000)]
        port: u16,
        /// Allow `file://` media under this directory (refused otherwise).
        #[arg(long)]
        allowed_media_dir: Option<PathBuf>,
        /// Requests allowed to wait for the model; more get 429 with Retry-After.
        #[arg(long, default_value_t = 16)]
        max_queue: usize,
        /// Request body size limit in MiB (base64 media count here).
        #[arg(long, default_value_t = 64)]
        max_request_mb: usize,
    },
    /// Benchmark decode + sample + preprocess of one video against the ffmpeg CLI.
    BenchMedia {
        /// The video to read.
        #[arg(long)]
        video: PathBuf,
        /// Frames to sample uniformly.
        #[arg(long, default_value_t = 16)]
        frames: usize,
        /// Image processor: clip (336, crop) or siglip (384 square).
        #[arg(long, default_value = "siglip")]
        processor: String,
        /// Runs per measurement (the median is reported).
        #[arg(long, default_value_t = 3)]
        repeat: usize,
    },
    /// MA-LMM-shaped streaming: resident memory and time per frame after 100, 1 000, 10 000
    /// frames through the memory banks and the memory-bank Q-Former (flat, however long).
    BenchStream(crate::bench_stream::BenchStreamArgs),
    /// Time a whole request stage by stage (preprocess, vision tower, connector, prefill,
    /// decode tokens/s) and the peak memory; `--json` for scripts (scripts/perf/compare.sh).
    Bench(BenchArgs),
    /// Write a checkpoint's weights once, quantized, as OUT/model.gguf (+ its json files);
    /// `--model OUT` then loads without quantizing.
    Quantize(crate::quantize::QuantizeArgs),
    /// Transcribe the speech of a sound or video file with Whisper and print WebVTT
    /// (the subtitles MiniGPT4-Video interleaves with its frames).
    Transcribe {
        /// The sound or video file.
        file: PathBuf,
        /// Whisper model folder (Hugging Face or CTranslate2); default $VIDEOLLAMA_WHISPER.
        #[arg(long)]
        whisper: Option<PathBuf>,
        /// Spoken language (code or English name); default: English for `.en` models,
        /// detected otherwise.
        #[arg(long)]
        language: Option<String>,
    },
    /// Fine-tune a VideoLLaMA2 checkpoint on conversation data (the reference's JSON):
    /// stage 1 trains the connector, stage 2 the connector + LoRA (+ the audio projector).
    /// OUT is a checkpoint folder `ask`/`serve` load; `--resume OUT` continues a run.
    Train(TrainArgs),
    /// Score a model on a split of the demo world (`make-demo-data`), per question type,
    /// from the media files.
    EvalDemo {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        args: crate::demo_eval::EvalDemoArgs,
    },
    /// Score a model on a benchmark in its published format (MVBench, EgoSchema, Perception
    /// Test, Video-MME, ActivityNet/MSVD/MSRVTT-QA, AVQA, Clotho-AQA); resumable, shardable
    /// (`--shard i/n`); `eval merge OUT_1 … --out DIR` combines shards. docs/evaluation.md.
    Eval(crate::eval::EvalCommand),
    /// Assemble a new, untrained VideoLLaMA2-layout model (vision tower from
    /// `train-vision-tower`, Whisper encoder as audio tower, a GGUF language model, fresh
    /// connector and audio projector) for `videollama train`.
    InitModel(crate::init_model::InitModelArgs),
    /// Train the default model's small SigLIP-layout vision tower on the demo world with
    /// dense per-patch labels (colour, shape, object centre); OUT feeds `init-model`.
    TrainVisionTower(crate::train_tower::TrainTowerArgs),
    /// Generate the synthetic audio-visual world (shapes, colours, motion, beeps, spoken
    /// numbers) with questions and answers: OUT/{train,val,test}.json + clips/ + meta.jsonl,
    /// and OUT/mvbench/{val,test,test_ood}/ (multiple choice for `eval --format mvbench`).
    MakeDemoData {
        /// Output folder.
        out: PathBuf,
        #[arg(long, default_value_t = 1000)]
        train: usize,
        #[arg(long, default_value_t = 100)]
        val: usize,
        #[arg(long, default_value_t = 200)]
        test: usize,
        /// Also a `test_ood` split rendered at sizes and positions training never uses.
        #[arg(long, default_value_t = 0)]
        ood_test: usize,
        /// Clips without a sound track.
        #[arg(long)]
        no_audio: bool,
        /// Worker threads (default: all cores).
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
    /// Describe a checkpoint: architecture, parameter counts, tokens per input.
    Inspect {
        /// Checkpoint folder (reads its config.json, or a Video-LLaMA eval_config.yaml and
        /// the headers of the files it names).
        #[arg(long, conflicts_with = "config", required_unless_present = "config")]
        model: Option<PathBuf>,
        /// A config.json on its own (no weights needed), or a Video-LLaMA eval_config.yaml.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        video_llama: VideoLlamaArgs,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum DtypeArg {
    F32,
    F16,
    Bf16,
}

#[derive(Args)]
pub(crate) struct ModelArgs {
    /// Hugging Face checkpoint folder (config.json, safetensors, tokenizer.json), a folder
    /// written by `videollama quantize`, or a GGUF language model file (text only).
    /// Default: the default model built into this binary, when it was built with
    /// assets/default-model/ filled in (SmolLM2-135M + a small vision tower + Whisper-tiny
    /// audio, trained on the demo world; not shipped yet — see docs/default-model.md).
    #[arg(long)]
    pub(crate) model: Option<PathBuf>,
    #[command(flatten)]
    weights: WeightArgs,
    /// Memory for encoded media kept for reuse (by file content, sampling and model)
    /// across chat turns and server requests, in MiB; 0 disables the cache.
    #[arg(long, default_value_t = 1024)]
    encoder_cache_mb: usize,
    #[command(flatten)]
    video_llama: VideoLlamaArgs,
    /// A Whisper model folder (Hugging Face, or CTranslate2 `model.bin` as faster-whisper
    /// ships it) for MiniGPT4-Video's subtitles from speech (default: $VIDEOLLAMA_WHISPER,
    /// or the config's `whisper_model`).
    #[arg(long)]
    whisper: Option<PathBuf>,
    /// Reproduce a reference run bit for bit: a safetensors file with the random draws it
    /// made (Video-ChatGPT's `lm_head_added_rows`, Chat-UniVi's `dpcNN_jitter`, as a golden
    /// case's expected.safetensors stores them). Without it, runs are deterministic.
    #[arg(long, value_name = "FILE.safetensors")]
    reference_noise: Option<PathBuf>,
}

/// Options of Video-LLaMA folders (`eval_config.yaml`); ignored by other models.
#[derive(Args, Clone, Default)]
struct VideoLlamaArgs {
    /// Override an eval_config.yaml / model_config.yaml entry, as the reference demo's
    /// --options does (repeatable): e.g. `--options model.vit_num_heads=4`. Video-ChatGPT
    /// takes `num_frames`, `conv_mode`; Chat-UniVi `max_frames`, `video_framerate`,
    /// `conv_mode`.
    #[arg(long = "options", value_name = "KEY=VALUE")]
    config_options: Vec<String>,
    /// Conversation template: vicuna or llama_2 (default: from eval_config.yaml's
    /// model_type, as the demo's --model_type).
    #[arg(long)]
    conv_template: Option<String>,
}

impl VideoLlamaArgs {
    fn options(&self) -> Result<videollama_pipeline::video_llama::VideoLlamaOptions> {
        Ok(videollama_pipeline::video_llama::VideoLlamaOptions {
            config_options: self.config_options.clone(),
            conv_template: self
                .conv_template
                .as_deref()
                .map(|t| {
                    t.parse()
                        .map_err(|e: String| anyhow::anyhow!("--conv-template: {e}"))
                })
                .transpose()?,
        })
    }
}

/// How the weights are held and computed with; shared by every command that loads a model.
#[derive(Args, Clone)]
struct WeightArgs {
    /// Compute dtype. Giving it selects the exact mode: every weight dense in this dtype,
    /// no quantization unless `--quantize` is also given (f32 = the golden-exact answers).
    #[arg(long, value_enum)]
    dtype: Option<DtypeArg>,
    /// Store the language model's linear layers quantized: q8_0, q4k, q5k, q6k or none.
    /// Default: the fast mode's choice (see `docs/performance.md`), none with `--dtype`.
    #[arg(long)]
    quantize: Option<String>,
    /// Store the vision tower's linear layers quantized (same formats; default as above).
    #[arg(long)]
    quantize_vision: Option<String>,
    /// Take the language model from this GGUF file (llama / qwen2 / mistral) instead of
    /// the checkpoint's own weights; its shapes must match the checkpoint's config.
    #[arg(long)]
    llm: Option<PathBuf>,
    /// Worker threads for the numerics (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

/// The reference harness's question (../shared/perf/ref_bench.py), so prompts match.
const BENCH_QUESTION: &str = "Describe this video in detail: which shapes, colours, numbers and text appear, and how do they move over time?";

#[derive(Args)]
struct BenchArgs {
    /// A checkpoint folder (with --video) or a GGUF language model (text only).
    #[arg(
        long,
        required_unless_present = "synthetic",
        conflicts_with = "synthetic"
    )]
    model: Option<PathBuf>,
    /// A random-weight model with published shapes built in memory:
    /// videollama2-7b-16f, videollama2.1-7b-16f or perf-0.5b.
    #[arg(long)]
    synthetic: Option<String>,
    /// The video to ask about (checkpoint folders).
    #[arg(long)]
    video: Option<PathBuf>,
    #[arg(long, default_value = BENCH_QUESTION)]
    question: String,
    /// New tokens per run (greedy).
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
    /// Text-only / synthetic runs: prompt length in tokens (random ids).
    #[arg(long, default_value_t = 66)]
    prompt_tokens: usize,
    /// Synthetic runs: frames per video (default: the model's num_frames).
    #[arg(long)]
    frames: Option<usize>,
    /// Text-only / synthetic runs: tokens to generate (overrides --max-new-tokens).
    #[arg(long)]
    gen_tokens: Option<usize>,
    /// Timed runs (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// One untimed run first.
    #[arg(long)]
    warmup: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    weights: WeightArgs,
}

fn bench(args: &BenchArgs) -> Result<()> {
    args.weights.apply_threads();
    let opts = args.weights.load_options()?;
    let margs = ModelArgs {
        model: args.model.clone(),
        weights: args.weights.clone(),
        // Every run must encode its media: a cache hit would time nothing.
        encoder_cache_mb: 0,
        video_llama: VideoLlamaArgs::default(),
        whisper: None,
        reference_noise: None,
    };
    let mode = format!(
        "{} {}",
        if args.weights.dtype.is_some() {
            "exact"
        } else {
            "default"
        },
        opts.weights.describe()
    );
    let (rss0, _) = crate::bench::rss_bytes();
    let mut plan = crate::bench::BenchPlan {
        video: args.video.as_deref(),
        question: &args.question,
        max_new_tokens: args.gen_tokens.unwrap_or(args.max_new_tokens),
        runs: args.runs.max(1),
        warmup: args.warmup,
        json: args.json,
        mode,
    };
    if let Some(name) = &args.synthetic {
        let start = std::time::Instant::now();
        let pb = spinner(&format!("building synthetic {name}"));
        let model = videollama_pipeline::synthetic::build_synthetic(
            name,
            opts.dtype,
            &opts.device,
            &opts.weights,
            args.frames,
        );
        pb.finish_and_clear();
        let model = model?;
        crate::memory::release_free_memory();
        let load_s = start.elapsed().as_secs_f64();
        let loaded = crate::bench::rss_bytes().0.saturating_sub(rss0);
        plan.mode = format!("{} synthetic {name}", plan.mode);
        return crate::bench::bench_synthetic(&model, &plan, args.prompt_tokens, load_s, loaded);
    }
    let pipeline = load(&margs)?;
    let loaded = crate::bench::rss_bytes().0.saturating_sub(rss0);
    tracing::info!(
        "after load: resident {:.2} GB, peak so far {:.2} GB",
        crate::bench::rss_bytes().0 as f64 / 1e9,
        crate::bench::rss_bytes().1 as f64 / 1e9
    );
    if pipeline.model.visual.is_none() || args.video.is_none() {
        return crate::bench::bench_synthetic(
            &pipeline.model,
            &plan,
            args.prompt_tokens,
            pipeline.load_seconds,
            loaded,
        );
    }
    crate::bench::bench_pipeline(&pipeline, &plan, loaded)
}

#[derive(Args)]
struct MediaArgs {
    /// A video file (mp4, mov, webm, mkv, gif, …) or a directory of frames.
    #[arg(long, group = "media")]
    video: Option<PathBuf>,
    /// MA-LMM: decode each sampled frame only when the model takes it (one decoded frame in
    /// memory at a time; the answer is the same).
    #[arg(long)]
    stream_frames: bool,
    /// An image file (jpg, png, webp, …).
    #[arg(long, group = "media")]
    image: Option<PathBuf>,
    /// A sound file (wav, mp3, flac, ogg, m4a, …); needs an audio-visual checkpoint.
    #[arg(long, conflicts_with = "audio_fbank")]
    audio: Option<PathBuf>,
    /// Start of the clip to look at, in seconds.
    #[arg(long)]
    start: Option<f64>,
    /// End of the clip to look at, in seconds.
    #[arg(long)]
    end: Option<f64>,
    /// With an audio-visual checkpoint, ignore the video's sound track.
    #[arg(long)]
    no_audio: bool,
    /// Crop sounds longer than 30 s at a seeded offset (default: keep the first 30 s;
    /// the reference crops at random).
    #[arg(long)]
    audio_crop_seed: Option<u64>,
    /// Pad frames to a square with the mean colour (training-time `pad`; the
    /// inference reference does not pad).
    #[arg(long)]
    pad: bool,
    /// MiniGPT4-Video subtitles: a .vtt / .srt FILE, `none`, or `auto` (speech recognition
    /// of the sound track). Default: a subtitle stream in the video's container, else
    /// speech recognition when a Whisper model is configured, else none.
    #[arg(long, value_name = "FILE|none|auto")]
    subtitles: Option<String>,
    /// Preprocessed video frames: a safetensors file with `pixel_values` (T×3×H×W).
    #[arg(long, group = "media")]
    video_pixels: Option<PathBuf>,
    /// A preprocessed image: a safetensors file with `pixel_values` (1×3×H×W).
    #[arg(long, group = "media")]
    image_pixels: Option<PathBuf>,
    /// A precomputed audio fbank: a safetensors file with `audio_fbank` (frames×128);
    /// alone it asks about the sound, with `--video-pixels` about picture and sound.
    #[arg(long)]
    audio_fbank: Option<PathBuf>,
}

#[derive(Args)]
struct GenArgs {
    /// Maximum number of new tokens.
    #[arg(long, default_value_t = 2048)]
    max_new_tokens: usize,
    /// Sampling temperature; absent or 0 means greedy (the reference's default).
    #[arg(long)]
    temperature: Option<f64>,
    /// Nucleus sampling threshold (default 0.9, as the reference).
    #[arg(long)]
    top_p: Option<f64>,
    /// Top-k sampling (default: generation_config.json's top_k).
    #[arg(long)]
    top_k: Option<usize>,
    /// Repetition penalty (default: generation_config.json's).
    #[arg(long)]
    repetition_penalty: Option<f32>,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    json: bool,
    /// Write the stage tensors of the request (golden names) to this safetensors file.
    #[arg(long)]
    dump_tensors: Option<PathBuf>,
}

impl GenArgs {
    fn options(&self) -> AnswerOptions {
        AnswerOptions {
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            repetition_penalty: self.repetition_penalty,
            seed: self.seed,
            collect_tensors: self.dump_tensors.is_some(),
        }
    }
}

pub fn run() -> Result<()> {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match cli.command {
        Command::Ask {
            model,
            media,
            gen,
            question,
        } => ask(&model, &media, &gen, &question),
        Command::Caption {
            model,
            media,
            gen,
            prompt: instruction,
        } => {
            if !has_media(&media) {
                bail!("caption needs media (--video, --image or --audio)");
            }
            let modality = if media.image.is_some() || media.image_pixels.is_some() {
                Modality::Image
            } else if media.video.is_some() || media.video_pixels.is_some() {
                Modality::Video
            } else {
                Modality::Audio
            };
            let instruction =
                instruction.unwrap_or_else(|| prompt::caption_prompt(modality).to_string());
            ask(&model, &media, &gen, &instruction)
        }
        Command::Chat { model, media, gen } => chat(&model, &media, &gen),
        Command::Serve {
            model,
            host,
            port,
            allowed_media_dir,
            max_queue,
            max_request_mb,
        } => {
            let pipeline = std::sync::Arc::new(load(&model)?);
            let model_name = match &model.model {
                Some(dir) => dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "videollama".into()),
                None => "videollama-default".into(),
            };
            let config = videollama_server::ServeConfig {
                host,
                port,
                allowed_media_dir,
                max_queue,
                max_request_mb,
                model_name,
            };
            videollama_server::serve(pipeline, config)
        }
        Command::Bench(args) => bench(&args),
        Command::EvalDemo { model, args } => crate::demo_eval::run(&load(&model)?, &args),
        Command::Eval(cmd) => crate::eval::run(cmd),
        Command::InitModel(args) => crate::init_model::run(&args),
        Command::TrainVisionTower(args) => crate::train_tower::run(&args),
        Command::Train(args) => train(&args),
        Command::MakeDemoData {
            out,
            train,
            val,
            test,
            ood_test,
            no_audio,
            threads,
        } => make_demo_data(&out, (train, val, test, ood_test), no_audio, threads),
        Command::Transcribe {
            file,
            whisper,
            language,
        } => transcribe(&file, whisper.as_deref(), language),
        Command::Quantize(args) => crate::quantize::run(&args),
        Command::BenchStream(args) => crate::bench_stream::bench_stream(&args),
        Command::BenchMedia {
            video,
            frames,
            processor,
            repeat,
        } => crate::bench::bench_media(&video, frames, &processor, repeat),
        Command::Inspect {
            model,
            config,
            json,
            video_llama,
        } => {
            let yaml = model
                .as_deref()
                .or(config.as_deref())
                .and_then(videollama_pipeline::video_llama::config_path);
            if let Some(yaml) = yaml {
                return inspect_video_llama(&yaml, &video_llama.config_options, json);
            }
            if let Some(yaml) = model
                .as_deref()
                .or(config.as_deref())
                .and_then(videollama_pipeline::ma_lmm::config_path)
            {
                let r = videollama_pipeline::ma_lmm::inspect::inspect(
                    &yaml,
                    &video_llama.config_options,
                )?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&r)?);
                } else {
                    println!("MA-LMM ({})", r.config.display());
                    println!(
                        "  frames: {} per video, memory banks of {} entries, image_pe rows {}",
                        r.num_frames, r.memory_bank_length, r.max_num_frames
                    );
                    println!(
                        "  {} px frames, {} queries, prompt {:?}",
                        r.image_size, r.num_query_token, r.prompt_template
                    );
                    for f in &r.files {
                        let mark = if f.present { "ok" } else { "MISSING" };
                        println!("  {:<15} {} [{mark}]", f.key, f.path.display());
                    }
                }
                return Ok(());
            }
            let minigpt4 = model
                .as_deref()
                .or(config.as_deref())
                .and_then(videollama_pipeline::minigpt4_video::config_path);
            if let Some(yaml) = minigpt4 {
                return inspect_minigpt4_video(&yaml, &video_llama.config_options, json);
            }
            if let Some(layout) = model
                .as_deref()
                .and_then(videollama_pipeline::video_chatgpt::detect)
            {
                return inspect_video_chatgpt(&layout?, &video_llama.config_options, json);
            }
            if let Some(dir) = model
                .as_deref()
                .filter(|d| videollama_pipeline::chat_univi::config_path(d).is_some())
            {
                return inspect_chat_univi(dir, &video_llama.config_options, json);
            }
            if let Some(dir) = model
                .as_deref()
                .filter(|d| videollama_pipeline::qwen2_vl::config_path(d).is_some())
            {
                return inspect_qwen2_vl(dir, json);
            }
            let config = match (model, config) {
                (Some(dir), _) => dir.join("config.json"),
                (None, Some(cfg)) => cfg,
                (None, None) => unreachable!("clap requires one of --model/--config"),
            };
            inspect(&config, json)
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn spinner(msg: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new_spinner();
    pb.set_message(msg.to_string());
    pb.enable_steady_tick(std::time::Duration::from_millis(120));
    pb
}

/// The default (fast) mode's weight formats on CPU: 8-bit weights for the language model
/// and the vision tower, integer-dot kernels chosen at run time (AVX2 / AVX-512-VNNI).
/// Measured against the exact mode in `docs/performance.md`.
pub const FAST_MODE_LLM: WeightFormat = WeightFormat::Q8_0;
pub const FAST_MODE_VISION: WeightFormat = WeightFormat::Q8_0;

fn parse_format(flag: &str, value: &str) -> Result<Option<WeightFormat>> {
    if value.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    value
        .parse::<WeightFormat>()
        .map(Some)
        .map_err(|e| anyhow::anyhow!("{flag}: {e} or none"))
}

impl WeightArgs {
    /// `--threads N` for candle's GEMMs and rayon's pool; must run before any numerics.
    pub fn apply_threads(&self) {
        if let Some(n) = self.threads.filter(|n| *n > 0) {
            // SAFETY (edition 2021 API): called at start-up before any other thread exists.
            std::env::set_var("RAYON_NUM_THREADS", n.to_string());
            let _ = rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build_global();
        }
    }

    /// The load options these flags select: the exact mode when `--dtype` is given, else
    /// the fast mode's formats; `--quantize` / `--quantize-vision` override either.
    pub fn load_options(&self) -> Result<LoadOptions> {
        let exact = self.dtype.is_some();
        let dtype = match self.dtype.unwrap_or(DtypeArg::F32) {
            DtypeArg::F32 => DType::F32,
            DtypeArg::F16 => DType::F16,
            DtypeArg::Bf16 => DType::BF16,
        };
        let quantize_llm = match &self.quantize {
            Some(v) => parse_format("--quantize", v)?,
            None if exact => None,
            None => Some(FAST_MODE_LLM),
        };
        let quantize_vision = match &self.quantize_vision {
            Some(v) => parse_format("--quantize-vision", v)?,
            None if exact => None,
            None => Some(FAST_MODE_VISION),
        };
        Ok(LoadOptions {
            dtype,
            device: Device::Cpu,
            weights: WeightOptions {
                quantize_llm,
                quantize_vision,
                prequantized: None,
            },
            llm_gguf: self.llm.clone(),
            video_llama: Default::default(),
            whisper: None,
            reference_noise: None,
        })
    }
}

pub(crate) fn load(model: &ModelArgs) -> Result<Pipeline> {
    model.weights.apply_threads();
    let mut opts = model.weights.load_options()?;
    opts.video_llama = model.video_llama.options()?;
    opts.whisper = whisper_dir(model.whisper.as_deref());
    opts.reference_noise = model.reference_noise.clone();
    let dir = match &model.model {
        Some(dir) => dir.clone(),
        None => crate::default_model::resolve()?,
    };
    let pb = spinner(&format!("loading {}", dir.display()));
    let pipeline = Pipeline::load(&dir, &opts);
    pb.finish_and_clear();
    let pipeline = pipeline?;
    crate::memory::release_free_memory();
    pipeline
        .encoder_cache
        .set_budget(model.encoder_cache_mb.saturating_mul(1 << 20));
    tracing::info!(
        weights = %pipeline.weights,
        kernels = %videollama_nn::cpu::kernel_summary(),
        "loaded {} in {:.1} s",
        pipeline.dir.display(),
        pipeline.load_seconds
    );
    Ok(pipeline)
}

/// Read tensor `name` (or the file's only tensor) from a safetensors file.
fn read_tensor(path: &Path, name: &str, rank: usize, layout: &str) -> Result<Tensor> {
    if !path.is_file() {
        bail!("{}: no such file", path.display());
    }
    let tensors = candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("{}: not a readable safetensors file", path.display()))?;
    let t = match tensors.get(name) {
        Some(t) => t.clone(),
        None if tensors.len() == 1 => tensors.into_values().next().expect("one tensor"),
        None => bail!("{}: no tensor named {name}", path.display()),
    };
    if t.rank() != rank {
        bail!(
            "{}: {name} must be {layout}, got shape {:?}",
            path.display(),
            t.dims()
        );
    }
    Ok(t.to_dtype(DType::F32)?)
}

fn has_media(media: &MediaArgs) -> bool {
    media.video.is_some()
        || media.image.is_some()
        || media.audio.is_some()
        || media.video_pixels.is_some()
        || media.image_pixels.is_some()
        || media.audio_fbank.is_some()
}

/// Media files are decoded and preprocessed like the reference; the `*-pixels` /
/// `--audio-fbank` options take tensors that were preprocessed elsewhere.
fn media_request(media: &MediaArgs) -> MediaRequest {
    MediaRequest {
        video: media.video.clone(),
        image: media.image.clone(),
        audio: media.audio.clone(),
        start_s: media.start,
        end_s: media.end,
        use_video_audio: if media.no_audio { Some(false) } else { None },
        audio_crop_seed: media.audio_crop_seed,
        pad_to_square: media.pad,
        subtitles: media
            .subtitles
            .as_deref()
            .map(|s| s.parse().unwrap_or_default())
            .unwrap_or_default(),
    }
}

fn media_input(pipeline: &Pipeline, media: &MediaArgs) -> Result<(MediaInput, MediaReport)> {
    let request = media_request(media);
    let (mut input, report) = pipeline.prepare_media(&request)?;
    if let Some(p) = &media.video_pixels {
        input.visual = Some(Visual::Video(read_tensor(p, "pixel_values", 4, "T×3×H×W")?));
    } else if let Some(p) = &media.image_pixels {
        let t = read_tensor(p, "pixel_values", 4, "1×3×H×W")?;
        if t.dim(0)? != 1 {
            bail!(
                "{}: an image must be 1×3×H×W, got {:?}",
                p.display(),
                t.dims()
            );
        }
        input.visual = Some(Visual::Image(t));
    }
    if let Some(p) = &media.audio_fbank {
        input.audio_fbank = Some(read_tensor(p, "audio_fbank", 2, "frames×128")?);
    }
    Ok((input, report))
}

/// Encode the media through the encoder cache (files and `--*-pixels`/`--audio-fbank`
/// tensors hashed by content); `bypass` (for `--dump-tensors`, which needs every stage
/// tensor) skips it.
fn encode(
    pipeline: &Pipeline,
    media: &MediaArgs,
    bypass: bool,
) -> Result<(Arc<EncodedMedia>, MediaReport, CacheStatus)> {
    let request = media_request(media);
    let extra: Vec<(&str, &Path)> = [
        ("video_pixels", &media.video_pixels),
        ("image_pixels", &media.image_pixels),
        ("audio_fbank", &media.audio_fbank),
    ]
    .into_iter()
    .filter_map(|(label, p)| p.as_deref().map(|p| (label, p)))
    .collect();
    let start = std::time::Instant::now();
    let key = if bypass {
        None
    } else {
        pipeline.media_key(&request, &extra)
    };
    let hash_s = start.elapsed().as_secs_f64();
    let mut pb = None;
    let encoded = pipeline.encode_cached(key, || {
        let prepared = media_input(pipeline, media)?;
        pb = Some(spinner("encoding media"));
        Ok::<_, anyhow::Error>(prepared)
    });
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    let (encoded, mut report, status) = encoded?;
    report.preprocess_s += hash_s;
    Ok((encoded, report, status))
}

fn ask(model: &ModelArgs, media: &MediaArgs, gen: &GenArgs, question: &str) -> Result<()> {
    if let Some(config) = model
        .model
        .as_deref()
        .and_then(videollama_pipeline::ma_lmm::config_path)
    {
        return ask_ma_lmm(&config, model, media, gen, question);
    }
    let pipeline = load(model)?;
    let (encoded, report, cache_status) = encode(&pipeline, media, gen.dump_tensors.is_some())?;
    let opts = gen.options();
    let stdout = std::io::stdout();
    let mut answer = pipeline.answer(&[question.to_string()], &encoded, &opts, |piece| {
        if !gen.json {
            let mut out = stdout.lock();
            // A closed stdout (e.g. `| head`) cancels generation instead of panicking.
            return write!(out, "{piece}").and_then(|_| out.flush()).is_ok();
        }
        true
    })?;
    answer.timings.preprocess_s = report.preprocess_s;
    if let Some(path) = &gen.dump_tensors {
        videollama_pipeline::save_tensors(&answer.tensors, path)?;
    }
    if gen.json {
        let out = json!({
            "answer": answer.answer,
            "token_ids": answer.token_ids,
            "prompt_tokens": answer.prompt_tokens,
            "text_tokens": answer.text_tokens,
            "visual_tokens": answer.visual_tokens,
            "audio_tokens": answer.audio_tokens,
            "modality": encoded.modality,
            "stop_reason": answer.stop_reason,
            "prompt": answer.prompt,
            "weights": pipeline.weights,
            "media": report,
            "timings": {
                "load_s": pipeline.load_seconds,
                "preprocess_s": answer.timings.preprocess_s,
                "vision_s": answer.timings.vision_s,
                "audio_s": answer.timings.audio_s,
                "prompt_s": answer.timings.prompt_s,
                "prefill_s": answer.timings.prefill_s,
                "decode_s": answer.timings.decode_s,
                "decode_tokens_per_s": answer.timings.decode_tokens_per_s,
                "encoder_cache": cache_status,
            },
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!();
    }
    Ok(())
}

/// MA-LMM (`model_config.yaml` with `arch: blip2_vicuna_instruct_malmm`): the demo path,
/// frames pushed one at a time through the memory banks, greedy decoding.
fn ask_ma_lmm(
    config: &Path,
    model: &ModelArgs,
    media: &MediaArgs,
    gen: &GenArgs,
    question: &str,
) -> Result<()> {
    use videollama_pipeline::ma_lmm::MaLmm;
    model.weights.apply_threads();
    let opts = model.weights.load_options()?;
    let video = media
        .video
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("MA-LMM answers about a video: give --video FILE"))?;
    let start = std::time::Instant::now();
    let m = MaLmm::load(config, &opts, &model.video_llama.config_options)?;
    let load_s = start.elapsed().as_secs_f64();
    let r = m.answer_video(
        video,
        question,
        gen.max_new_tokens,
        media.stream_frames,
        gen.dump_tensors.is_some(),
    )?;
    if let Some(path) = &gen.dump_tensors {
        videollama_pipeline::save_tensors(&r.tensors, path)?;
    }
    if gen.json {
        let out = json!({
            "answer": r.answer,
            "token_ids": r.generation.ids,
            "prompt": r.prompt,
            "prompt_tokens": r.generation.inputs_embeds.dim(0)?,
            "text_tokens": r.generation.llm_input_ids.len(),
            "visual_tokens": m.qformer.num_queries(),
            "modality": "video",
            "family": "ma-lmm",
            "media": {
                "sampled_frame_indices": r.indices,
                "video_num_frames": r.total_frames,
                "video_avg_fps": r.avg_fps,
                "streamed": media.stream_frames,
            },
            "timings": {
                "load_s": load_s,
                "preprocess_s": r.preprocess_s,
                "vision_s": r.encode_s,
                "decode_s": r.generate_s,
            },
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("{}", r.answer);
    }
    Ok(())
}

fn chat(model: &ModelArgs, media: &MediaArgs, gen: &GenArgs) -> Result<()> {
    let pipeline = load(model)?;
    let (encoded, _, _) = encode(&pipeline, media, false)?;
    let opts = gen.options();
    let mut turns: Vec<String> = Vec::new();
    // The KV cache of the earlier turns is reused for the next one (session.rs).
    let mut session = ChatSession::new(encoded.clone());
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    eprintln!(
        "chatting with {} ({} media tokens); /exit or Ctrl-D to quit, /reset to clear the history",
        pipeline.dir.display(),
        encoded.media_tokens()
    );
    loop {
        write!(stdout, "> ")?;
        stdout.flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim();
        match line {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                turns.clear();
                session.reset();
                continue;
            }
            _ => {}
        }
        turns.push(line.to_string());
        let answer = pipeline.answer_in_session(&mut session, &turns, &opts, |piece| {
            let mut out = std::io::stdout().lock();
            write!(out, "{piece}").and_then(|_| out.flush()).is_ok()
        });
        match answer {
            Ok(answer) => {
                println!();
                tracing::info!(
                    "turn {}: {} prompt positions, {} reused from the KV cache, {} prefilled",
                    turns.len().div_ceil(2),
                    answer.prompt_tokens,
                    answer.reused_prompt_tokens,
                    answer.prompt_tokens - answer.reused_prompt_tokens
                );
                turns.push(answer.answer);
            }
            Err(e) => {
                turns.pop();
                eprintln!("error: {e}");
            }
        }
    }
    Ok(())
}

fn inspect(config: &Path, as_json: bool) -> Result<()> {
    let report = videollama_pipeline::inspect::inspect_config(config)?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let p = &report.parameters;
    println!("model_type      {}", report.model_type);
    println!(
        "language model  {:?}: {} layers, hidden {}, {} heads / {} kv heads, MLP {}, vocab {}{}",
        report.llm.family,
        report.llm.layers,
        report.llm.hidden_size,
        report.llm.attention_heads,
        report.llm.kv_heads,
        report.llm.intermediate_size,
        report.llm.vocab_size,
        report
            .llm
            .experts
            .map(|e| format!(", {e} experts"))
            .unwrap_or_default()
    );
    if let Some(v) = &report.vision {
        println!(
            "vision tower    {} ({}): {}px, {}×{} patches, width {}, layer {}, feature {}",
            v.tower,
            v.kind,
            v.image_size,
            v.patch_grid,
            v.patch_grid,
            v.hidden_size,
            v.select_layer,
            v.select_feature
        );
        println!("connector       {}", v.projector_type);
    }
    if let Some(n) = report.tokens.audio {
        println!(
            "audio tower     BEATs ({} params), projector {} params: {n} audio tokens",
            p.audio_tower, p.audio_projector
        );
    }
    println!("frames          {}", report.num_frames);
    let b = |n: u64| format!("{:.4} B ({n})", n as f64 / 1e9);
    println!("parameters      total {}", b(p.total));
    println!(
        "                llm {}, vision tower {}, connector {}",
        b(p.llm),
        b(p.vision_tower),
        b(p.connector)
    );
    if p.audio_tower + p.audio_projector > 0 {
        println!(
            "                audio tower {}, audio projector {}",
            b(p.audio_tower),
            b(p.audio_projector)
        );
    }
    if let Some(n) = report.tokens.video {
        println!(
            "tokens          video ({} frames) {n}, image {n}, text 0",
            report.num_frames
        );
    }
    Ok(())
}

fn inspect_video_llama(config: &Path, options: &[String], as_json: bool) -> Result<()> {
    let r = videollama_pipeline::video_llama::inspect::inspect(config, options)?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    let b = |n: u64| format!("{:.4} B ({n})", n as f64 / 1e9);
    println!(
        "model           Video-LLaMA ({}), template {}",
        r.model_type, r.conv_template
    );
    println!(
        "language model  {:?}: {} layers, hidden {}, {} heads / {} kv heads, MLP {}, vocab {}",
        r.llm.family,
        r.llm.layers,
        r.llm.hidden_size,
        r.llm.attention_heads,
        r.llm.kv_heads,
        r.llm.intermediate_size,
        r.llm.vocab_size
    );
    println!("vision encoder  {}", r.vision_encoder);
    println!("image Q-Former  {}", r.image_qformer);
    println!("video Q-Former  {}", r.video_qformer);
    match (&r.audio_encoder, &r.audio_qformer) {
        (Some(enc), Some(q)) => {
            println!("audio encoder   {enc}");
            println!("audio Q-Former  {q}");
        }
        _ => println!("audio branch    none"),
    }
    println!(
        "frames          {} per video (at most {}: the frame position table)",
        r.frames_per_video, r.max_frames
    );
    let p = &r.parameters;
    println!("parameters      total {}", b(p.total));
    println!(
        "                llm {}, vision encoder {}, image Q-Former {}, video Q-Former {}",
        b(p.llm),
        b(p.vision_encoder),
        b(p.image_qformer),
        b(p.video_qformer)
    );
    if p.audio_encoder + p.audio_qformer > 0 {
        println!(
            "                audio encoder {}, audio Q-Former {}",
            b(p.audio_encoder),
            b(p.audio_qformer)
        );
    }
    println!(
        "tokens          video {}, image {}, audio {}",
        r.tokens.video.unwrap_or(0),
        r.tokens.image.unwrap_or(0),
        r.tokens
            .audio
            .map(|n| n.to_string())
            .unwrap_or_else(|| "-".into())
    );
    Ok(())
}

fn inspect_minigpt4_video(config: &Path, options: &[String], as_json: bool) -> Result<()> {
    let r = videollama_pipeline::minigpt4_video::inspect::inspect(config, options)?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    let b = |n: u64| format!("{:.4} B ({n})", n as f64 / 1e9);
    println!("model           MiniGPT4-Video");
    println!(
        "language model  {:?}: {} layers, hidden {}, {} heads / {} kv heads, MLP {}, vocab {}",
        r.llm.family,
        r.llm.layers,
        r.llm.hidden_size,
        r.llm.attention_heads,
        r.llm.kv_heads,
        r.llm.intermediate_size,
        r.llm.vocab_size
    );
    println!("vision encoder  {}", r.vision_encoder);
    println!(
        "token merge     4 patch tokens → 1: {} tokens per frame (llama_proj)",
        r.tokens_per_frame
    );
    println!("LoRA            {}", r.lora);
    println!(
        "frames          at most {}, subtitles at most {} words, context cut {}",
        r.max_frames, r.max_subtitle_words, r.context_window
    );
    let p = &r.parameters;
    println!("parameters      total {}", b(p.total));
    println!(
        "                llm {}, vision encoder {}, projector {}, LoRA {}",
        b(p.llm),
        b(p.vision_encoder),
        b(p.projector),
        b(p.lora)
    );
    println!(
        "tokens          video ({} frames) {}, image {}",
        r.max_frames,
        r.tokens.video.unwrap_or(0),
        r.tokens.image.unwrap_or(0)
    );
    Ok(())
}

fn inspect_video_chatgpt(
    layout: &videollama_pipeline::video_chatgpt::Layout,
    options: &[String],
    as_json: bool,
) -> Result<()> {
    let r = videollama_pipeline::video_chatgpt::inspect::inspect(layout, options)?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    let b = |n: u64| format!("{:.4} B ({n})", n as f64 / 1e9);
    println!("model           Video-ChatGPT, template {}", r.conv_mode);
    println!("base            {}", r.base.display());
    println!("projection      {}", r.projection.display());
    println!(
        "language model  {:?}: {} layers, hidden {}, {} heads / {} kv heads, MLP {}, vocab {} \
         ({} in the base lm_head; {} rows no file holds)",
        r.llm.family,
        r.llm.layers,
        r.llm.hidden_size,
        r.llm.attention_heads,
        r.llm.kv_heads,
        r.llm.intermediate_size,
        r.llm.vocab_size,
        r.base_vocab,
        r.lm_head_rows_not_stored
    );
    println!("vision tower    {}", r.vision_tower);
    println!("pooling         100 temporal (zero-padded) + spatial means → mm_projector");
    let p = &r.parameters;
    println!("parameters      total {}", b(p.total));
    println!(
        "                llm {}, vision tower {}, projector {}",
        b(p.llm),
        b(p.vision_tower),
        b(p.projector)
    );
    println!(
        "tokens          video ({} frames) {}",
        r.num_frames,
        r.tokens.video.unwrap_or(0)
    );
    Ok(())
}

fn inspect_chat_univi(dir: &Path, options: &[String], as_json: bool) -> Result<()> {
    let r = videollama_pipeline::chat_univi::inspect::inspect(dir, options)?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    let b = |n: u64| format!("{:.4} B ({n})", n as f64 / 1e9);
    println!("model           Chat-UniVi");
    println!(
        "language model  {:?}: {} layers, hidden {}, {} heads / {} kv heads, MLP {}, vocab {}",
        r.llm.family,
        r.llm.layers,
        r.llm.hidden_size,
        r.llm.attention_heads,
        r.llm.kv_heads,
        r.llm.intermediate_size,
        r.llm.vocab_size
    );
    println!("vision tower    {}", r.vision_tower);
    if r.clustering.is_empty() {
        println!("clustering      off (patch tokens; video: frame and patch means)");
    } else {
        let ctm: Vec<String> = r
            .clustering
            .iter()
            .enumerate()
            .map(|(i, (rate, k))| format!("ctm{i} rate {rate} k {k}"))
            .collect();
        println!("clustering      DPC-KNN {}", ctm.join(", "));
    }
    let p = &r.parameters;
    println!("parameters      total {}", b(p.total));
    println!(
        "                llm {}, vision tower {}, projector {}",
        b(p.llm),
        b(p.vision_tower),
        b(p.projector)
    );
    println!(
        "tokens          image {}, video ({} frames, {} events) {}",
        r.tokens.image.unwrap_or(0),
        r.max_frames,
        r.events_at_max_frames,
        r.tokens.video.unwrap_or(0)
    );
    Ok(())
}

fn inspect_qwen2_vl(dir: &Path, as_json: bool) -> Result<()> {
    let r = videollama_pipeline::qwen2_vl::inspect::inspect(dir)?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    let b = |n: u64| format!("{:.4} B ({n})", n as f64 / 1e9);
    println!("model           Qwen2-VL");
    println!(
        "language model  {:?}: {} layers, hidden {}, {} heads / {} kv heads, MLP {}, vocab {}, \
         M-RoPE {:?}",
        r.llm.family,
        r.llm.layers,
        r.llm.hidden_size,
        r.llm.attention_heads,
        r.llm.kv_heads,
        r.llm.intermediate_size,
        r.llm.vocab_size,
        r.mrope_section
    );
    println!("vision          {}", r.vision);
    println!(
        "processor       min_pixels {}, max_pixels {}",
        r.min_pixels, r.max_pixels
    );
    let p = &r.parameters;
    println!(
        "parameters      total {} (llm {}, vision {})",
        b(p.total),
        b(p.llm),
        b(p.vision)
    );
    println!(
        "tokens          224×224 image {}, 8 frames at 224×224 {}",
        r.tokens_image_224, r.tokens_8_frames_224
    );
    Ok(())
}

/// `--whisper DIR`, else `$VIDEOLLAMA_WHISPER`.
fn whisper_dir(flag: Option<&Path>) -> Option<PathBuf> {
    flag.map(Path::to_path_buf)
        .or_else(|| std::env::var_os("VIDEOLLAMA_WHISPER").map(PathBuf::from))
}

fn transcribe(file: &Path, whisper: Option<&Path>, language: Option<String>) -> Result<()> {
    let dir = whisper_dir(whisper).context(
        "no Whisper model: give --whisper DIR (a Hugging Face or CTranslate2 Whisper folder) \
         or set VIDEOLLAMA_WHISPER",
    )?;
    if !file.exists() {
        bail!("{}: no such file", file.display());
    }
    let pb = spinner(&format!("loading {}", dir.display()));
    let model = videollama_asr::Whisper::load(&dir);
    pb.finish_and_clear();
    let mut model = model?;
    if language.is_some() {
        let mut opts = model.options().clone();
        opts.language = language;
        model.set_options(opts)?;
    }
    let pb = spinner(&format!("transcribing {}", file.display()));
    let segments = model.transcribe_file(file);
    pb.finish_and_clear();
    print!("{}", videollama_asr::to_webvtt(&segments?));
    Ok(())
}

fn make_demo_data(
    out: &Path,
    (train, val, test, ood): (usize, usize, usize, usize),
    no_audio: bool,
    threads: usize,
) -> Result<()> {
    let mut cfg = videollama_demodata::DemoDataConfig::new(train, val, test);
    if ood > 0 {
        cfg = cfg.with_ood_test(ood);
    }
    cfg.with_audio = !no_audio;
    cfg.threads = threads;
    let pb = indicatif::ProgressBar::new((train + val + test + ood) as u64);
    pb.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} clips {elapsed} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let summary = videollama_demodata::generate(out, &cfg, |p| {
        pb.set_position(p.done as u64);
        pb.set_message(p.clip.to_string());
    });
    pb.finish_and_clear();
    let s = summary?;
    println!(
        "{} clips, {:.1} MB of video, in {:.1} s → {}",
        s.clips,
        s.video_bytes as f64 / 1e6,
        s.elapsed_s,
        s.out_dir.display()
    );
    for sp in &s.splits {
        println!(
            "  {}: {} clips, {} conversations",
            sp.name, sp.clips, sp.conversations
        );
        if let Some(dir) = &sp.mvbench {
            println!(
                "    {} multiple-choice items in {dir}/ (videollama eval --format mvbench \
                 --questions {} --videos {})",
                sp.mvbench_items,
                s.out_dir.join(dir).display(),
                s.out_dir.display()
            );
        }
    }
    Ok(())
}

#[derive(Args)]
struct TrainArgs {
    /// Base checkpoint folder (VideoLLaMA2 layout).
    #[arg(long, required_unless_present = "resume")]
    model: Option<PathBuf>,
    /// Training data: the reference's JSON list of {"video"|"image"|"audio", "conversations"}.
    #[arg(long, required_unless_present = "resume")]
    data: Option<PathBuf>,
    /// Output folder (a loadable checkpoint + trainer state, log and loss curve).
    #[arg(long, required_unless_present = "resume")]
    out: Option<PathBuf>,
    /// Continue the interrupted run in this output folder (its saved configuration).
    #[arg(long, conflicts_with_all = ["model", "data", "out"])]
    resume: Option<PathBuf>,
    /// 1 = connector only (pre-training on captions), 2 = connector + LoRA.
    #[arg(long, default_value = "1")]
    stage: String,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// Stop after this many optimizer steps (default: the epochs' worth).
    #[arg(long)]
    max_steps: Option<usize>,
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    #[arg(long, default_value_t = 8)]
    lora_r: usize,
    #[arg(long, default_value_t = 16.0)]
    lora_alpha: f64,
    /// Write a checkpoint every N steps (and at the end).
    #[arg(long, default_value_t = 100)]
    save_every: usize,
    /// Use at most this many samples.
    #[arg(long)]
    max_samples: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// LoRA in the output: merged, separate (peft adapter files) or both.
    #[arg(long, default_value = "both")]
    lora_export: String,
    /// Peak learning rate of the connector and audio projector (default: --lr).
    #[arg(long)]
    connector_lr: Option<f64>,
    /// One multi-turn conversation per media file: the media runs through the model once
    /// for all its questions (about 2× cheaper on single-question data).
    #[arg(long)]
    pack_by_media: bool,
    /// Worker threads for the numerics (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

fn train(args: &TrainArgs) -> Result<()> {
    if let Some(n) = args.threads.filter(|n| *n > 0) {
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global();
    }
    let pb = indicatif::ProgressBar::new(0);
    pb.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps {elapsed}/{eta} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let progress = |event: &videollama_train::TrainEvent| match event {
        videollama_train::TrainEvent::Preparing { done, total } => {
            pb.set_message(format!("preparing samples {done}/{total}"));
        }
        videollama_train::TrainEvent::Skipped(s) => {
            pb.suspend(|| eprintln!("skipped sample {} (line {}): {}", s.index, s.line, s.reason));
        }
        videollama_train::TrainEvent::Started {
            samples,
            skipped,
            start_step,
            total_steps,
            trainable_params,
        } => {
            pb.set_length(*total_steps as u64);
            pb.set_position(*start_step as u64);
            pb.suspend(|| {
                eprintln!(
                    "training on {samples} samples ({skipped} skipped), {trainable_params} trainable parameters"
                )
            });
        }
        videollama_train::TrainEvent::Step(log) => {
            pb.set_position(log.step as u64);
            pb.set_message(format!(
                "loss {:.4}  lr {:.2e}  {:.0} tok/s",
                log.loss, log.lr, log.tokens_per_s
            ));
        }
        videollama_train::TrainEvent::Saved { step, dir } => {
            pb.suspend(|| eprintln!("step {step}: saved {}", dir.display()));
        }
    };
    let report = match &args.resume {
        Some(out) => videollama_train::resume(out, &Default::default(), progress)?,
        None => {
            let (Some(model), Some(data), Some(out)) = (&args.model, &args.data, &args.out) else {
                bail!("--model, --data and --out are required (or --resume OUT)");
            };
            let cfg = videollama_train::TrainConfig {
                stage: args
                    .stage
                    .parse()
                    .map_err(|e| anyhow::anyhow!("--stage: {e}"))?,
                learning_rate: args.lr,
                connector_lr: args.connector_lr,
                pack_by_media: args.pack_by_media,
                epochs: args.epochs,
                max_steps: args.max_steps,
                grad_accum: args.grad_accum.max(1),
                lora_r: args.lora_r,
                lora_alpha: args.lora_alpha,
                save_every: args.save_every,
                max_samples: args.max_samples,
                seed: args.seed,
                out_dir: out.clone(),
                lora_export: match args.lora_export.as_str() {
                    "merged" => videollama_train::LoraExport::Merged,
                    "separate" => videollama_train::LoraExport::Separate,
                    "both" => videollama_train::LoraExport::Both,
                    other => bail!("--lora-export {other}: use merged, separate or both"),
                },
                ..Default::default()
            };
            videollama_train::train(model, data, &cfg, progress)?
        }
    };
    pb.finish_and_clear();
    println!(
        "{} steps ({} this run) in {:.1} s, final loss {:.4}, {} samples, {} skipped → {}",
        report.steps,
        report.steps_this_run,
        report.seconds,
        report.losses.last().copied().unwrap_or(f64::NAN),
        report.samples,
        report.skipped.len(),
        report.out_dir.display()
    );
    Ok(())
}
