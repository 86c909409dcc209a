//! `videollama train-vision-tower`: train the default model's small SigLIP-layout vision
//! tower on a demo-world dataset (`make-demo-data`) with dense per-patch supervision, and
//! export it for `init-model` (see `videollama_train::tower`).
//!
//! Progress goes to stderr (one line every `--log-every` steps, plus every validation);
//! every step is also a line of `OUT/tower_log.jsonl`.

use anyhow::Result;
use std::path::PathBuf;
use videollama_train::tower::{train_vision_tower, TowerEval, TowerEvent, TowerTrainConfig};

#[derive(clap::Args, Debug)]
pub struct TrainTowerArgs {
    /// Demo dataset folder (meta.jsonl + clips/, from `make-demo-data`); frames of the
    /// train split are trained on, the val split is evaluated.
    #[arg(long)]
    pub data: PathBuf,
    /// Output folder: vision_tower/{config,preprocessor_config}.json,
    /// vision_tower.safetensors, tower_log.jsonl.
    #[arg(long)]
    pub out: PathBuf,
    /// Input side in pixels (frames are squashed to image_size², as SigLIP does).
    #[arg(long, default_value_t = 112)]
    pub image_size: usize,
    #[arg(long, default_value_t = 14)]
    pub patch_size: usize,
    #[arg(long, default_value_t = 192)]
    pub hidden_size: usize,
    #[arg(long, default_value_t = 768)]
    pub intermediate_size: usize,
    #[arg(long, default_value_t = 4)]
    pub layers: usize,
    #[arg(long, default_value_t = 3)]
    pub heads: usize,
    /// HF `hidden_act`.
    #[arg(long, default_value = "gelu_pytorch_tanh")]
    pub hidden_act: String,
    /// Optimizer steps.
    #[arg(long, default_value_t = 2000)]
    pub steps: usize,
    /// Frames per step.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Peak learning rate (AdamW, linear warm-up then cosine).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 100)]
    pub warmup_steps: usize,
    /// The cosine ends at this fraction of the peak rate.
    #[arg(long, default_value_t = 0.05)]
    pub min_lr_ratio: f64,
    #[arg(long, default_value_t = 0.01)]
    pub weight_decay: f64,
    /// Clip the global gradient norm (0: no clipping).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// Frames decoded per train clip (distinct random indices, fixed for the run).
    #[arg(long, default_value_t = 8)]
    pub frames_per_clip: usize,
    /// Frames decoded per val clip.
    #[arg(long, default_value_t = 2)]
    pub val_frames_per_clip: usize,
    /// Use only the first N train clips.
    #[arg(long)]
    pub max_train_clips: Option<usize>,
    /// Use only the first N val clips.
    #[arg(long)]
    pub max_val_clips: Option<usize>,
    /// Evaluate on the val split every N steps (0: only at the end).
    #[arg(long, default_value_t = 200)]
    pub eval_every: usize,
    /// Export the tower every N steps (0: only at the end).
    #[arg(long, default_value_t = 0)]
    pub save_every: usize,
    /// Print a progress line every N steps.
    #[arg(long, default_value_t = 10)]
    pub log_every: usize,
    /// Objects must cover at least this share of a patch for it not to be background.
    #[arg(long, default_value_t = 0.25)]
    pub min_coverage: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl TrainTowerArgs {
    pub fn config(&self) -> TowerTrainConfig {
        TowerTrainConfig {
            image_size: self.image_size,
            patch_size: self.patch_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.layers,
            num_attention_heads: self.heads,
            hidden_act: self.hidden_act.clone(),
            layer_norm_eps: 1e-6,
            steps: self.steps,
            batch_size: self.batch_size,
            learning_rate: self.lr,
            warmup_steps: self.warmup_steps,
            min_lr_ratio: self.min_lr_ratio,
            weight_decay: self.weight_decay,
            max_grad_norm: (self.max_grad_norm > 0.0).then_some(self.max_grad_norm),
            frames_per_clip: self.frames_per_clip,
            val_frames_per_clip: self.val_frames_per_clip,
            max_train_clips: self.max_train_clips,
            max_val_clips: self.max_val_clips,
            eval_every: self.eval_every,
            save_every: self.save_every,
            min_coverage: self.min_coverage,
            seed: self.seed,
            out_dir: self.out.clone(),
        }
    }
}

fn eval_line(e: &TowerEval) -> String {
    format!(
        "val ({} frames): loss {:.4} | colour {:.3} (objects {:.3}) | shape {:.3} (objects {:.3}) \
         | centre {:.3} (recall {:.3}, precision {:.3}) | count {:.3}",
        e.frames,
        e.loss,
        e.colour_acc,
        e.colour_fg_acc,
        e.shape_acc,
        e.shape_fg_acc,
        e.centre_acc,
        e.centre_recall,
        e.centre_precision,
        e.count_acc
    )
}

pub fn run(args: &TrainTowerArgs) -> Result<()> {
    let cfg = args.config();
    let log_every = args.log_every.max(1);
    eprintln!(
        "training a {}-layer, {}-wide SigLIP tower at {}px / patch {} on {}",
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.image_size,
        cfg.patch_size,
        args.data.display()
    );
    let report = train_vision_tower(&args.data, &cfg, |event| match event {
        TowerEvent::Loaded {
            split,
            clips,
            frames,
            seconds,
        } => eprintln!("{split}: {frames} frames from {clips} clips decoded in {seconds:.1} s"),
        TowerEvent::Step(s) => {
            if s.step % log_every == 0 || s.step == s.total_steps || s.val.is_some() {
                eprintln!(
                    "step {}/{} epoch {:.2} loss {:.4} (colour {:.4} shape {:.4} centre {:.4}) \
                     lr {:.2e} |g| {:.3} {:.2} s/step",
                    s.step,
                    s.total_steps,
                    s.epoch,
                    s.loss,
                    s.loss_colour,
                    s.loss_shape,
                    s.loss_centre,
                    s.lr,
                    s.grad_norm,
                    s.seconds
                );
            }
            if let Some(e) = &s.val {
                eprintln!("  {}", eval_line(e));
            }
        }
        TowerEvent::Saved { step } => {
            eprintln!("step {step}: exported to {}", args.out.display())
        }
    })?;
    println!(
        "{} steps on {} frames ({} clips), {:.1} s training + {:.1} s decoding; tower {} parameters → {}",
        report.steps,
        report.train_frames,
        report.train_clips,
        report.train_seconds,
        report.load_seconds,
        report.tower_params,
        report.out_dir.display()
    );
    if let Some(e) = &report.final_val {
        println!("final {}", eval_line(e));
    }
    println!(
        "use mm_vision_select_layer = -1 (the last encoder layer's output, no post_layernorm)"
    );
    Ok(())
}
