//! The training loop, checkpoints and resumption.
//!
//! Optimizer step `s` (0-based) uses the samples at stream positions
//! `s·grad_accum … (s+1)·grad_accum − 1`; position `p` is sample `perm_e[p mod n]` of epoch
//! `e = p / n`, where `perm_e` is a seeded shuffle of epoch `e`. The order, like everything
//! else, is a function of the configuration and the step, so a resumed run (parameters,
//! moments and step from `optimizer.safetensors`) continues exactly where it stopped.

use crate::data::SkippedSample;
use crate::error::{Result, TrainError};
use crate::export::{export_model, tmp_path};
use crate::model::TrainModel;
use crate::optim::{clip_global_norm, lr_factor, AdamW};
use crate::prepare::{prepare_dataset, Dataset, FeatureCache, PrepareOptions};
use crate::rng::SplitMix64;
use crate::{Stage, TrainConfig};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use videollama_pipeline::{LoadOptions, Pipeline};

/// One line of `train_log.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepLog {
    /// Optimizer steps done (1 for the first).
    pub step: usize,
    pub total_steps: usize,
    /// Samples seen / samples per epoch.
    pub epoch: f64,
    /// Mean loss of the step's micro-batches (before the update).
    pub loss: f64,
    /// Learning rate of the update (the LoRA / base group).
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Positions run through the language model in this step.
    pub tokens: usize,
    pub tokens_per_s: f64,
    pub seconds: f64,
}

/// What a run reports while it goes.
#[derive(Debug)]
pub enum TrainEvent<'a> {
    /// `done` of `total` samples prepared (media decoded, features computed).
    Preparing {
        done: usize,
        total: usize,
    },
    /// A sample left out, with its index, line and reason.
    Skipped(&'a SkippedSample),
    Started {
        samples: usize,
        skipped: usize,
        start_step: usize,
        total_steps: usize,
        trainable_params: usize,
    },
    Step(&'a StepLog),
    Saved {
        step: usize,
        dir: &'a Path,
    },
}

/// The outcome of [`train`] / [`resume`].
#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    pub out_dir: PathBuf,
    /// Optimizer steps done in total (this run and earlier ones).
    pub steps: usize,
    pub steps_this_run: usize,
    pub total_steps: usize,
    /// All planned steps are done (false after `stop_after_steps`).
    pub finished: bool,
    /// Loss of every step so far (earlier runs included).
    pub losses: Vec<f64>,
    pub samples: usize,
    pub skipped: Vec<SkippedSample>,
    pub trainable_params: usize,
    pub lora_modules: Vec<String>,
    pub seconds: f64,
    pub tokens_per_s: f64,
}

/// Options of [`resume`].
#[derive(Debug, Clone, Default)]
pub struct ResumeOptions {
    /// End this run after N more steps (default: the saved configuration's).
    pub stop_after_steps: Option<usize>,
}

/// `OUT/trainer_state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrainerState {
    version: u32,
    base_model: PathBuf,
    data: PathBuf,
    config: TrainConfig,
    step: usize,
    total_steps: usize,
    warmup_steps: usize,
    samples: usize,
    skipped: Vec<SkippedSample>,
    losses: Vec<f64>,
    lora_modules: Vec<String>,
    trainable_params: usize,
}

const STATE_FILE: &str = "trainer_state.json";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const LOG_FILE: &str = "train_log.jsonl";
const CURVE_FILE: &str = "loss_curve.png";

/// Train `pipeline_dir` (a VideoLLaMA 2 checkpoint folder) on `data_json` into
/// `cfg.out_dir`. `OUT` must not hold a run already (see [`resume`]).
pub fn train(
    pipeline_dir: &Path,
    data_json: &Path,
    cfg: &TrainConfig,
    mut progress: impl FnMut(&TrainEvent),
) -> Result<TrainReport> {
    cfg.validate()?;
    let out = &cfg.out_dir;
    if out.join(STATE_FILE).exists() {
        return Err(TrainError::Invalid(format!(
            "{} already holds a training run: resume it, or choose another output folder",
            out.display()
        )));
    }
    if crate::export::same_dir(pipeline_dir, out) {
        return Err(TrainError::Invalid(format!(
            "the output folder {} is the base model folder; choose another",
            out.display()
        )));
    }
    std::fs::create_dir_all(out).map_err(|e| TrainError::file(out, e))?;
    let base = absolute(pipeline_dir)?;
    let data = absolute(data_json)?;
    run(&base, &data, cfg, None, &mut progress)
}

/// Continue the run saved in `out_dir` (its `trainer_state.json` names the base model, the
/// data and the configuration) until its planned steps are done.
pub fn resume(
    out_dir: &Path,
    opts: &ResumeOptions,
    mut progress: impl FnMut(&TrainEvent),
) -> Result<TrainReport> {
    let path = out_dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::file(&path, e))?;
    let state: TrainerState =
        serde_json::from_str(&text).map_err(|e| TrainError::file(&path, e))?;
    let mut cfg = state.config.clone();
    cfg.out_dir = out_dir.to_path_buf();
    cfg.stop_after_steps = opts.stop_after_steps;
    cfg.validate()?;
    run(
        &state.base_model.clone(),
        &state.data.clone(),
        &cfg,
        Some(state),
        &mut progress,
    )
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::fs::canonicalize(p).map_err(|e| TrainError::file(p, e))
}

fn run(
    base: &Path,
    data: &Path,
    cfg: &TrainConfig,
    resumed: Option<TrainerState>,
    progress: &mut dyn FnMut(&TrainEvent),
) -> Result<TrainReport> {
    let started = Instant::now();
    let out = cfg.out_dir.clone();
    // Phase 1: the pipeline tokenizes and runs the frozen towers once per sample.
    let dataset = {
        let pipeline = Pipeline::load(base, &LoadOptions::default())?;
        let opts = PrepareOptions {
            max_samples: cfg.max_samples,
            max_seq_len: cfg.max_seq_len,
            feature_cache: cfg
                .feature_cache
                .clone()
                .unwrap_or_else(|| FeatureCache::Dir(out.join("feature_cache"))),
            pad_to_square: cfg.pad_to_square,
            pack_by_media: cfg.pack_by_media,
        };
        prepare_dataset(&pipeline, data, &opts, |done, total, skipped| {
            if let Some(s) = skipped {
                progress(&TrainEvent::Skipped(s));
            }
            progress(&TrainEvent::Preparing { done, total });
        })?
    };
    let Dataset {
        samples, skipped, ..
    } = dataset;
    if samples.is_empty() {
        return Err(TrainError::Invalid(format!(
            "{}: no usable sample ({} skipped)",
            data.display(),
            skipped.len()
        )));
    }
    let n = samples.len();

    // Phase 2: the trainable model and its optimizer.
    let mut model = TrainModel::load(base, &cfg.model_spec(), DType::F32, &Device::Cpu)?;
    let params: Vec<_> = model
        .trainable()
        .into_iter()
        .map(|(name, var)| {
            let lr = if name.contains(".lora_") {
                cfg.learning_rate
            } else {
                cfg.connector_lr.unwrap_or(cfg.learning_rate)
            };
            (name, var, lr)
        })
        .collect();
    let trainable_params: usize = params.iter().map(|(_, v, _)| v.elem_count()).sum();
    let mut opt = AdamW::new(params, cfg.adamw)?;
    let total_steps = cfg
        .max_steps
        .unwrap_or_else(|| (cfg.epochs * n).div_ceil(cfg.grad_accum));
    let warmup = cfg
        .warmup_steps
        .unwrap_or_else(|| (cfg.warmup_ratio * total_steps as f64).ceil() as usize);
    let mut losses = Vec::new();
    if let Some(state) = &resumed {
        if state.samples != n || state.total_steps != total_steps {
            return Err(TrainError::Invalid(format!(
                "the data changed since the run was saved: {n} usable samples and {total_steps} \
                 steps now, {} and {} then",
                state.samples, state.total_steps
            )));
        }
        opt.load(&out.join(OPTIMIZER_FILE))?;
        model.refresh()?;
        if opt.step_count() as usize != state.step {
            return Err(TrainError::file(
                out.join(OPTIMIZER_FILE),
                format!(
                    "holds step {}, trainer_state.json step {}",
                    opt.step_count(),
                    state.step
                ),
            ));
        }
        losses = state.losses.clone();
        truncate_log(&out.join(LOG_FILE), state.step)?;
    } else {
        let _ = std::fs::remove_file(out.join(LOG_FILE));
    }
    let start_step = opt.step_count() as usize;
    progress(&TrainEvent::Started {
        samples: n,
        skipped: skipped.len(),
        start_step,
        total_steps,
        trainable_params,
    });

    let mut state = TrainerState {
        version: 1,
        base_model: base.to_path_buf(),
        data: data.to_path_buf(),
        config: TrainConfig {
            stop_after_steps: None,
            ..cfg.clone()
        },
        step: start_step,
        total_steps,
        warmup_steps: warmup,
        samples: n,
        skipped: skipped.clone(),
        losses: losses.clone(),
        lora_modules: model.lora_modules().to_vec(),
        trainable_params,
    };
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out.join(LOG_FILE))
        .map_err(|e| TrainError::file(out.join(LOG_FILE), e))?;
    let mut order = EpochOrder::new(cfg.seed, n, cfg.shuffle);
    let (mut step, mut steps_this_run, mut tokens_run) = (start_step, 0usize, 0usize);
    let mut train_seconds = 0f64;
    let mut saved_at = None;
    while step < total_steps && cfg.stop_after_steps.is_none_or(|s| steps_this_run < s) {
        let t0 = Instant::now();
        let mut grads: BTreeMap<String, Tensor> = BTreeMap::new();
        let (mut loss_sum, mut tokens) = (0f64, 0usize);
        for micro in 0..cfg.grad_accum {
            let pos = step * cfg.grad_accum + micro;
            let sample = &samples[order.sample_at(pos)];
            let features = sample.features()?;
            let sl = model.sample_loss(sample, &features)?;
            loss_sum += sl.loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            tokens += sl.positions;
            let scaled = (sl.loss / cfg.grad_accum as f64)?;
            let g = scaled.backward()?;
            for (name, var) in model.trainable() {
                if let Some(gv) = g.get(var.as_tensor()) {
                    let gv = gv.detach();
                    let sum = match grads.remove(&name) {
                        Some(acc) => (acc + gv)?,
                        None => gv,
                    };
                    grads.insert(name, sum);
                }
            }
        }
        let grad_norm = clip_global_norm(&mut grads, cfg.max_grad_norm)?;
        let factor = lr_factor(step, warmup, total_steps, cfg.min_lr_ratio);
        if grad_norm.is_finite() {
            opt.step(&grads, factor)?;
            model.refresh()?;
        } else {
            // One bad batch must not turn every weight into NaN: keep them, go on.
            tracing::warn!(step = step + 1, "non-finite gradient: update skipped");
            opt.skip();
        }
        step += 1;
        steps_this_run += 1;
        let seconds = t0.elapsed().as_secs_f64();
        train_seconds += seconds;
        tokens_run += tokens;
        let entry = StepLog {
            step,
            total_steps,
            epoch: (step * cfg.grad_accum) as f64 / n as f64,
            loss: loss_sum / cfg.grad_accum as f64,
            lr: cfg.learning_rate * factor,
            grad_norm,
            tokens,
            tokens_per_s: tokens as f64 / seconds.max(1e-9),
            seconds,
        };
        let line = serde_json::to_string(&entry).map_err(|e| TrainError::Invalid(e.to_string()))?;
        writeln!(log, "{line}").map_err(|e| TrainError::file(out.join(LOG_FILE), e))?;
        losses.push(entry.loss);
        progress(&TrainEvent::Step(&entry));
        if cfg.save_every > 0 && step % cfg.save_every == 0 {
            state.step = step;
            state.losses = losses.clone();
            save(base, &out, &model, &opt, &state, cfg)?;
            saved_at = Some(step);
            progress(&TrainEvent::Saved { step, dir: &out });
        }
    }
    if saved_at != Some(step) {
        state.step = step;
        state.losses = losses.clone();
        save(base, &out, &model, &opt, &state, cfg)?;
        progress(&TrainEvent::Saved { step, dir: &out });
    }
    Ok(TrainReport {
        out_dir: out,
        steps: step,
        steps_this_run,
        total_steps,
        finished: step >= total_steps,
        losses,
        samples: n,
        skipped,
        trainable_params,
        lora_modules: model.lora_modules().to_vec(),
        seconds: started.elapsed().as_secs_f64(),
        tokens_per_s: tokens_run as f64 / train_seconds.max(1e-9),
    })
}

/// Everything of a checkpoint, the state file last (it names a complete save).
fn save(
    base: &Path,
    out: &Path,
    model: &TrainModel,
    opt: &AdamW,
    state: &TrainerState,
    cfg: &TrainConfig,
) -> Result<()> {
    export_model(base, out, model, cfg.lora_export)?;
    let path = out.join(OPTIMIZER_FILE);
    let tmp = tmp_path(&path);
    opt.save(&tmp)?;
    std::fs::rename(&tmp, &path).map_err(|e| TrainError::file(&path, e))?;
    crate::plot::write_loss_curve(&state.losses, &out.join(CURVE_FILE))?;
    let path = out.join(STATE_FILE);
    let tmp = tmp_path(&path);
    let text =
        serde_json::to_string_pretty(state).map_err(|e| TrainError::Invalid(e.to_string()))?;
    std::fs::write(&tmp, text).map_err(|e| TrainError::file(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| TrainError::file(&path, e))?;
    debug_assert!(cfg.stage == Stage::ConnectorLora || model.lora_modules().is_empty());
    Ok(())
}

/// Keep the log lines of steps `1..=step` (a resumed run rewrites what came after).
fn truncate_log(path: &Path, step: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<StepLog>(l)
                .map(|e| e.step <= step)
                .unwrap_or(false)
        })
        .collect();
    let mut body = kept.join("\n");
    if !body.is_empty() {
        body.push('\n');
    }
    std::fs::write(path, body).map_err(|e| TrainError::file(path, e))
}

/// Which sample each stream position trains on.
struct EpochOrder {
    seed: u64,
    n: usize,
    shuffle: bool,
    epoch: Option<usize>,
    perm: Vec<usize>,
}

impl EpochOrder {
    fn new(seed: u64, n: usize, shuffle: bool) -> Self {
        Self {
            seed,
            n,
            shuffle,
            epoch: None,
            perm: Vec::new(),
        }
    }

    fn sample_at(&mut self, pos: usize) -> usize {
        let epoch = pos / self.n;
        if self.epoch != Some(epoch) {
            self.perm = (0..self.n).collect();
            if self.shuffle {
                SplitMix64::derived(self.seed, 1000 + epoch as u64).shuffle(&mut self.perm);
            }
            self.epoch = Some(epoch);
        }
        self.perm[pos % self.n]
    }
}
