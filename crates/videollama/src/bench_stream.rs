//! `videollama bench-stream`: does MA-LMM's streaming really run in flat memory and flat time
//! per frame, however long the video? One stream of N frames through the memory banks and the
//! memory-bank Q-Former, reporting resident memory and time per frame at checkpoints
//! (100, 1 000, 10 000 frames by default).
//!
//! ```text
//! per frame: features [N_tok, W] (random, a pool of 8 reused)
//!   ─► visual bank: compress if > L entries, push          [≤ L+1, N_tok, W]
//!   ─► Q-Former(queries + instruction, K/V prefix = query banks, cross-attn over the bank)
//! at each checkpoint: VmRSS, mean seconds per frame since the previous checkpoint
//! ```
//!
//! The vision encoder is left out on purpose: it sees one frame at a time, so its cost per
//! frame is the same at frame 10 and frame 10 000 and says nothing about video length (EVA
//! ViT-g is also ~1 B parameters, which would make the run hours long on a laptop). Weights
//! are random (`N(0, 0.02)`): the arithmetic is the same as with trained ones. `--shape real`
//! is the published MA-LMM (EVA ViT-g tokens 257 × 1408, BERT-base Q-Former with 32 queries,
//! L = 10 as in its ActivityNet / MSRVTT scripts); `--shape fixture` is `ma-lmm-tiny`'s.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use std::time::Instant;
use videollama_connectors::memory_bank_qformer::{MemoryBank, MemoryBankQFormer, QueryBanks};
use videollama_connectors::qformer::QFormerConfig;

#[derive(clap::Args)]
pub struct BenchStreamArgs {
    /// Checkpoints (frame counts) at which memory and time per frame are reported; the stream
    /// runs to the largest.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
    pub frames: Vec<usize>,
    /// `real` (published MA-LMM sizes) or `fixture` (ma-lmm-tiny's sizes).
    #[arg(long, default_value = "real")]
    pub shape: String,
    /// `memory_bank_length` (L); default: 10 for `real`, 3 for `fixture`.
    #[arg(long)]
    pub memory_bank_length: Option<usize>,
    /// Instruction length in Q-Former tokens.
    #[arg(long, default_value_t = 20)]
    pub text_tokens: usize,
    /// Print the table as JSON too.
    #[arg(long)]
    pub json: bool,
}

/// Sizes of one stream.
struct StreamShape {
    vision_tokens: usize,
    vision_width: usize,
    qformer: QFormerConfig,
    queries: usize,
    vocab: usize,
    positions: usize,
    bank_length: usize,
}

fn shape_for(args: &BenchStreamArgs) -> Result<StreamShape> {
    let bert = QFormerConfig::default();
    Ok(match args.shape.as_str() {
        "real" => StreamShape {
            vision_tokens: 1 + 16 * 16,
            vision_width: 1408,
            qformer: QFormerConfig::image(&bert, 1408, 32),
            queries: 32,
            vocab: 30523,
            positions: 512,
            bank_length: args.memory_bank_length.unwrap_or(10),
        },
        "fixture" => {
            let tiny = QFormerConfig {
                hidden_size: 48,
                num_attention_heads: 4,
                intermediate_size: 96,
                num_hidden_layers: 4,
                ..bert
            };
            StreamShape {
                vision_tokens: 17,
                vision_width: 32,
                qformer: QFormerConfig::image(&tiny, 32, 8),
                queries: 8,
                vocab: 182,
                positions: 128,
                bank_length: args.memory_bank_length.unwrap_or(3),
            }
        }
        other => bail!("--shape {other}: expected `real` or `fixture`"),
    })
}

/// Every weight `N(0, 0.02)`, shapes as asked (the two tables and the queries, read without
/// a shape, from [`StreamShape`]).
struct RandomWeights {
    word: (usize, usize),
    position: (usize, usize),
    queries: (usize, usize, usize),
}

impl SimpleBackend for RandomWeights {
    fn get(
        &self,
        s: Shape,
        _name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        Tensor::randn(0f32, 0.02, s, dev)?.to_dtype(dtype)
    }
    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let s: Shape = if name.ends_with("word_embeddings.weight") {
            self.word.into()
        } else if name.ends_with("position_embeddings.weight") {
            self.position.into()
        } else if name.ends_with("query_tokens") {
            self.queries.into()
        } else {
            candle_core::bail!("bench-stream: no shape for {name}")
        };
        Tensor::randn(0f32, 0.02, s, dev)?.to_dtype(dtype)
    }
    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

#[derive(serde::Serialize)]
struct Checkpoint {
    frames: usize,
    rss_mib: f64,
    seconds_per_frame: f64,
    visual_bank_entries: usize,
}

pub fn bench_stream(args: &BenchStreamArgs) -> Result<()> {
    let shape = shape_for(args)?;
    let mut checkpoints = args.frames.clone();
    checkpoints.sort_unstable();
    checkpoints.dedup();
    let Some(&total) = checkpoints.last() else {
        bail!("--frames: give at least one frame count")
    };
    if checkpoints[0] == 0 {
        bail!("--frames: frame counts must be positive");
    }
    let dev = Device::Cpu;
    let h = shape.qformer.hidden_size;
    let backend = RandomWeights {
        word: (shape.vocab, h),
        position: (shape.positions, h),
        queries: (1, shape.queries, h),
    };
    let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, dev.clone());
    let qformer = MemoryBankQFormer::new(&shape.qformer, vb)?;
    let ids: Vec<u32> = (0..args.text_tokens as u32)
        .map(|i| 101 + (i * 37) % (shape.vocab as u32 - 101))
        .collect();
    // A pool of distinct frames, so that compression sees changing similarities.
    let pool: Vec<Tensor> = (0..8)
        .map(|_| Tensor::randn(0f32, 1.0, (shape.vision_tokens, shape.vision_width), &dev))
        .collect::<candle_core::Result<_>>()?;

    println!(
        "bench-stream: {} shape, L = {}, {} vision tokens × {}, Q-Former {} layers × {}, {} queries, \
         {} instruction tokens; CPU: {}, {} threads",
        args.shape,
        shape.bank_length,
        shape.vision_tokens,
        shape.vision_width,
        shape.qformer.num_hidden_layers,
        h,
        shape.queries,
        args.text_tokens,
        videollama_nn::cpu::report().model,
        rayon::current_num_threads(),
    );
    let mut visual = MemoryBank::new();
    // `num_frames` = the whole stream: the query banks are never reset (the worst case).
    let mut query = QueryBanks::new(qformer.num_layers(), shape.bank_length, total);
    let mut results = Vec::new();
    let mut window_start = Instant::now();
    let mut window_frames = 0usize;
    let mut next = 0usize;
    for t in 0..total {
        if visual.len() > shape.bank_length {
            visual.compress()?;
        }
        visual.push(&pool[t % pool.len()])?;
        let bank = visual.entries().expect("pushed above");
        let (n, tokens, w) = bank.dims3()?;
        let enc = bank.reshape((1, n * tokens, w))?;
        let out = qformer.forward_frame(&ids, &enc, &mut query, None)?;
        drop(out);
        window_frames += 1;
        if t + 1 == checkpoints[next] {
            let c = Checkpoint {
                frames: t + 1,
                rss_mib: crate::bench::rss_bytes().0 as f64 / (1 << 20) as f64,
                seconds_per_frame: window_start.elapsed().as_secs_f64() / window_frames as f64,
                visual_bank_entries: visual.len(),
            };
            println!(
                "  {:>7} frames: RSS {:>8.1} MiB, {:.4} s/frame (frames {}–{}), visual bank {} entries",
                c.frames,
                c.rss_mib,
                c.seconds_per_frame,
                t + 2 - window_frames,
                t + 1,
                c.visual_bank_entries
            );
            results.push(c);
            next += 1;
            window_start = Instant::now();
            window_frames = 0;
        }
    }
    let (_, peak) = crate::bench::rss_bytes();
    println!("  peak RSS {:.1} MiB", peak as f64 / (1 << 20) as f64);
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "shape": args.shape,
                "memory_bank_length": shape.bank_length,
                "cpu": videollama_nn::cpu::report().model,
                "checkpoints": results,
                "peak_rss_mib": peak as f64 / (1 << 20) as f64,
            })
        );
    }
    Ok(())
}
