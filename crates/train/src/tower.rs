//! Training the default model's small vision tower from scratch, with dense per-patch
//! supervision on the synthetic demo world (`videollama_demodata`).
//!
//! ```text
//! DATA/meta.jsonl (ClipMeta: exact geometry) ──► train / val clips
//!   per clip: k random frame indices (seeded) ─► videollama_media::decode::VideoReader
//!     ─► RGB frame [H, W, 3] u8 ─► SigLIP image processor prepare_u8 (squash to S×S,
//!        Pillow bicubic, exactly as at inference) ─► kept as u8 [S, S, 3]
//!   labels from the metadata (no rendering): patch (r, c) of the g×g grid ↔ original
//!     x ∈ [c·p·W/S, (c+1)·p·W/S), y likewise; coverage by pixel centres (ShapeKind::contains)
//!     ─► colour ∈ {bg, red, green, blue, yellow, white}, shape ∈ {bg, circle, square,
//!        triangle} (the object with the largest share; bg below `min_coverage`),
//!        centre ∈ {0, 1} (an object's centre lies in the patch)
//! per step: B frames ─normalize_chw─► pixel_values [B, 3, S, S]
//!   ─► SigLIP ViT (Var weights, differentiable ops) ─► hidden_states[L] [B, N, C], N = g²
//!   ─► linear heads [B, N, 6] / [B, N, 4] / [B, N, 2] ─► Σ mean cross-entropies ─► backward
//!   ─► clip global norm ─► AdamW (warm-up + cosine)
//! every eval_every steps: val frames through the inference VisionTower (encoders crate,
//!   fused kernels) + detached heads ─► per-head accuracies (stderr / tower_log.jsonl)
//! end: OUT/vision_tower/{config,preprocessor_config}.json + OUT/vision_tower.safetensors
//!      (model.vision_tower.vision_tower.vision_model.*, heads not exported) + tower_log.jsonl
//! ```
//!
//! The features trained are `hidden_states[num_hidden_layers]`: the output of the last
//! encoder layer, without `post_layernorm` — what `mm_vision_select_layer = -1` selects in
//! `videollama_encoders::VisionTower` (SigLIP never applies `post_layernorm`).
//!
//! Why a training forward of its own ([`TowerModel::features`]) instead of
//! `videollama_encoders::SiglipVisionModel`: the shared encoder layer calls candle's fused
//! `LayerNorm` kernel, which has no backward (`apply_op3_no_bwd`), so gradients would
//! silently skip both layer norms of every layer. This forward reads the same HF-named
//! tensors and calls `videollama_nn::autograd::layer_norm` (composed ops when gradients
//! flow), `videollama_nn::attention::attention` (switches to its differentiable form) and
//! `Activation::forward` (likewise); tests compare it with the encoders' tower to 1e-5.

use crate::error::{Result, TrainError};
use crate::optim::{clip_global_norm, lr_factor, AdamW, AdamWConfig};
use crate::rng::SplitMix64;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use videollama_demodata::{ClipMeta, ColorName, ShapeKind};
use videollama_encoders::siglip::SiglipVisionConfig;
use videollama_encoders::{VisionTower, VisionTowerConfig};
use videollama_media::image_processor::{ImageProcessorConfig, ProcessorKind};
use videollama_media::RgbImage;
use videollama_nn::attention::{attention, AttentionMask};
use videollama_nn::autograd::layer_norm;
use videollama_nn::{Activation, LayerNorm, Linear};

/// Where the tower's weights live in a VideoLLaMA2 checkpoint.
pub const VISION_TOWER_PREFIX: &str = "model.vision_tower.vision_tower.vision_model";
/// Colour classes: background, then [`ColorName::ALL`] in order.
pub const COLOUR_CLASSES: usize = 1 + ColorName::ALL.len();
/// Shape classes: background, then [`ShapeKind::ALL`] in order.
pub const SHAPE_CLASSES: usize = 1 + ShapeKind::ALL.len();
/// Centre classes: no centre / an object's centre.
pub const CENTRE_CLASSES: usize = 2;
/// File names of the export.
pub const TOWER_DIR: &str = "vision_tower";
pub const TOWER_WEIGHTS: &str = "vision_tower.safetensors";
pub const TOWER_LOG: &str = "tower_log.jsonl";

/// Every setting of a tower training run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TowerTrainConfig {
    // The tower (HF `SiglipVisionConfig` names).
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// HF `hidden_act` name (`gelu_pytorch_tanh` as SigLIP).
    pub hidden_act: String,
    pub layer_norm_eps: f64,
    // The run.
    /// Optimizer steps.
    pub steps: usize,
    /// Frames per step.
    pub batch_size: usize,
    pub learning_rate: f64,
    pub warmup_steps: usize,
    /// The cosine ends at `min_lr_ratio · learning_rate`.
    pub min_lr_ratio: f64,
    /// Decoupled weight decay of 2-D tensors.
    pub weight_decay: f64,
    pub max_grad_norm: Option<f64>,
    /// Training frames decoded per train clip (distinct random indices).
    pub frames_per_clip: usize,
    /// Frames per val clip.
    pub val_frames_per_clip: usize,
    pub max_train_clips: Option<usize>,
    pub max_val_clips: Option<usize>,
    /// Evaluate on the val split every N steps (0: only at the end).
    pub eval_every: usize,
    /// Export the tower every N steps (0: only at the end).
    pub save_every: usize,
    /// A patch is background when objects cover less than this share of it.
    pub min_coverage: f64,
    /// Seeds the initialisation, the frame indices and the batch order.
    pub seed: u64,
    pub out_dir: PathBuf,
}

impl Default for TowerTrainConfig {
    fn default() -> Self {
        Self {
            image_size: 112,
            patch_size: 14,
            hidden_size: 192,
            intermediate_size: 768,
            num_hidden_layers: 4,
            num_attention_heads: 3,
            hidden_act: "gelu_pytorch_tanh".into(),
            layer_norm_eps: 1e-6,
            steps: 2000,
            batch_size: 16,
            learning_rate: 1e-3,
            warmup_steps: 100,
            min_lr_ratio: 0.05,
            weight_decay: 0.01,
            max_grad_norm: Some(1.0),
            frames_per_clip: 8,
            val_frames_per_clip: 2,
            max_train_clips: None,
            max_val_clips: None,
            eval_every: 200,
            save_every: 0,
            min_coverage: 0.25,
            seed: 0,
            out_dir: PathBuf::from("tower-out"),
        }
    }
}

impl TowerTrainConfig {
    /// The tower's configuration (what `vision_tower/config.json` holds).
    pub fn siglip_config(&self) -> Result<SiglipVisionConfig> {
        let hidden_act: Activation = serde_json::from_value(serde_json::Value::String(
            self.hidden_act.clone(),
        ))
        .map_err(|_| TrainError::Invalid(format!("unknown hidden_act {:?}", self.hidden_act)))?;
        Ok(SiglipVisionConfig {
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            num_channels: 3,
            image_size: self.image_size,
            patch_size: self.patch_size,
            hidden_act,
            layer_norm_eps: self.layer_norm_eps,
        })
    }

    /// HF `config.json` of the tower (a bare `SiglipVisionConfig`).
    pub fn config_json(&self) -> serde_json::Value {
        serde_json::json!({
            "architectures": ["SiglipVisionModel"],
            "model_type": "siglip_vision_model",
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_channels": 3,
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "hidden_act": self.hidden_act,
            "layer_norm_eps": self.layer_norm_eps,
            "attention_dropout": 0.0,
            "torch_dtype": "float32",
        })
    }

    /// HF `preprocessor_config.json` (`SiglipImageProcessor`, as transformers writes it;
    /// bicubic = PIL code 3, as `google/siglip-so400m-patch14-384`).
    pub fn preprocessor_json(&self) -> serde_json::Value {
        serde_json::json!({
            "do_normalize": true,
            "do_rescale": true,
            "do_resize": true,
            "image_mean": [0.5, 0.5, 0.5],
            "image_processor_type": "SiglipImageProcessor",
            "image_std": [0.5, 0.5, 0.5],
            "resample": 3,
            "rescale_factor": 1.0 / 255.0,
            "size": {"height": self.image_size, "width": self.image_size},
        })
    }

    /// The image processor the exported tower gets at inference, parsed from
    /// [`Self::preprocessor_json`] by the media crate (so training preprocesses exactly so).
    pub fn image_processor(&self) -> Result<ImageProcessorConfig> {
        let text = self.preprocessor_json().to_string();
        let p = ImageProcessorConfig::from_hf_json(&text)
            .map_err(|e| TrainError::Invalid(format!("tower preprocessor config: {e}")))?;
        if p.kind != ProcessorKind::Siglip {
            return Err(TrainError::Invalid(
                "tower preprocessor config is not read as SigLIP".into(),
            ));
        }
        Ok(p)
    }

    #[allow(clippy::manual_is_multiple_of)] // `is_multiple_of` needs Rust 1.87; MSRV is 1.85
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(TrainError::Invalid(m));
        if self.patch_size == 0 || self.image_size < self.patch_size {
            return bad(format!(
                "image_size {} must be at least patch_size {} (> 0)",
                self.image_size, self.patch_size
            ));
        }
        if self.num_attention_heads == 0 || self.hidden_size % self.num_attention_heads != 0 {
            return bad(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.num_hidden_layers == 0 || self.intermediate_size == 0 {
            return bad("num_hidden_layers and intermediate_size must be at least 1".into());
        }
        if self.steps == 0 || self.batch_size == 0 || self.frames_per_clip == 0 {
            return bad("steps, batch_size and frames_per_clip must be at least 1".into());
        }
        if !(self.learning_rate.is_finite() && self.learning_rate >= 0.0) {
            return bad(format!("learning_rate {} must be >= 0", self.learning_rate));
        }
        if !(0.0..=1.0).contains(&self.min_coverage) || !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return bad("min_coverage and min_lr_ratio must lie in [0, 1]".into());
        }
        if self.layer_norm_eps <= 0.0 || !self.layer_norm_eps.is_finite() {
            return bad("layer_norm_eps must be > 0".into());
        }
        self.siglip_config().map(|_| ())
    }
}

// ---------------------------------------------------------------------------------------
// Labels
// ---------------------------------------------------------------------------------------

/// Per-patch targets of one frame, row-major over the `grid × grid` patches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchLabels {
    pub grid: usize,
    /// 0 = background, 1 + index in [`ColorName::ALL`].
    pub colour: Vec<u32>,
    /// 0 = background, 1 + index in [`ShapeKind::ALL`].
    pub shape: Vec<u32>,
    /// 1 when an object's centre lies in the patch.
    pub centre: Vec<u32>,
    /// Objects whose centre lies on the patch grid.
    pub centres_on_grid: usize,
}

/// Which patch column an original pixel column belongs to: the patch whose original-pixel
/// interval `[c·p·W/S, (c+1)·p·W/S)` holds the pixel centre `x + ½`, computed in integers
/// (`⌊(2x+1)·S / (2·p·W)⌋`); `None` past the grid (the strided patch embedding never
/// reads the last `S mod p` resized rows / columns).
fn patch_index(
    x: usize,
    extent: usize,
    image_size: usize,
    patch: usize,
    grid: usize,
) -> Option<usize> {
    let c = (2 * x + 1) * image_size / (2 * patch * extent);
    (c < grid).then_some(c)
}

/// Same rule for a continuous coordinate (an object's centre).
fn patch_index_f(
    v: f64,
    extent: usize,
    image_size: usize,
    patch: usize,
    grid: usize,
) -> Option<usize> {
    let c = (v * image_size as f64 / (patch * extent) as f64).floor();
    (c >= 0.0 && (c as usize) < grid).then_some(c as usize)
}

/// The targets of frame `index` of a clip (see the module doc): pixel centres are tested
/// with [`ShapeKind::contains`] exactly as the renderer paints them (later objects on top),
/// in the clip's original `width × height` coordinates; patch `(r, c)` of the squashed
/// `image_size²` input covers original `x ∈ [c·p·W/S, (c+1)·p·W/S)`, `y` likewise.
pub fn patch_labels(
    meta: &ClipMeta,
    index: usize,
    image_size: usize,
    patch_size: usize,
    min_coverage: f64,
) -> PatchLabels {
    let grid = image_size / patch_size.max(1);
    let (w, h) = (meta.width as usize, meta.height as usize);
    let cols: Vec<Option<usize>> = (0..w)
        .map(|x| patch_index(x, w, image_size, patch_size, grid))
        .collect();
    let rows: Vec<Option<usize>> = (0..h)
        .map(|y| patch_index(y, h, image_size, patch_size, grid))
        .collect();
    // Owner of each pixel (0 = background), painted in drawing order as render_frame does.
    let mut owner = vec![0u8; w * h];
    for (k, o) in meta.objects.iter().enumerate() {
        let [cx, cy] = o.center_at(index, meta.fps);
        let [x0, y0, x1, y1] = o.bbox_at(index, meta.fps);
        let xa = (x0.floor().max(0.0) as usize).min(w);
        let xb = (x1.ceil().max(0.0) as usize).min(w);
        let ya = (y0.floor().max(0.0) as usize).min(h);
        let yb = (y1.ceil().max(0.0) as usize).min(h);
        for y in ya..yb {
            let dy = y as f64 + 0.5 - cy;
            for x in xa..xb {
                if o.shape.contains(x as f64 + 0.5 - cx, dy, o.size_px) {
                    owner[y * w + x] = (k + 1) as u8;
                }
            }
        }
    }
    let n_obj = meta.objects.len();
    let cells = grid * grid;
    // counts[patch][0] = pixels of the patch, [1 + k] = pixels of object k.
    let mut counts = vec![0usize; cells * (n_obj + 1)];
    for y in 0..h {
        let Some(r) = rows[y] else { continue };
        for x in 0..w {
            let Some(c) = cols[x] else { continue };
            let base = (r * grid + c) * (n_obj + 1);
            counts[base] += 1;
            let k = owner[y * w + x] as usize;
            if k > 0 {
                counts[base + k] += 1;
            }
        }
    }
    let mut colour = vec![0u32; cells];
    let mut shape = vec![0u32; cells];
    for cell in 0..cells {
        let row = &counts[cell * (n_obj + 1)..(cell + 1) * (n_obj + 1)];
        let total = row[0];
        let covered: usize = row[1..].iter().sum();
        if total == 0 || (covered as f64) < min_coverage * total as f64 {
            continue;
        }
        // The largest share; ties go to the earlier object.
        let mut best = 0;
        for k in 1..n_obj {
            if row[1 + k] > row[1 + best] {
                best = k;
            }
        }
        let o = &meta.objects[best];
        colour[cell] = 1 + ColorName::ALL
            .iter()
            .position(|&c| c == o.color)
            .unwrap_or(0) as u32;
        shape[cell] = 1 + ShapeKind::ALL
            .iter()
            .position(|&s| s == o.shape)
            .unwrap_or(0) as u32;
    }
    let mut centre = vec![0u32; cells];
    let mut centres_on_grid = 0;
    for o in &meta.objects {
        let [cx, cy] = o.center_at(index, meta.fps);
        if let (Some(c), Some(r)) = (
            patch_index_f(cx, w, image_size, patch_size, grid),
            patch_index_f(cy, h, image_size, patch_size, grid),
        ) {
            centre[r * grid + c] = 1;
            centres_on_grid += 1;
        }
    }
    PatchLabels {
        grid,
        colour,
        shape,
        centre,
        centres_on_grid,
    }
}

// ---------------------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------------------

/// One supervised frame: the processor's geometric output (u8, `image_size²`) and its labels.
#[derive(Debug, Clone)]
pub struct FrameSample {
    pub clip: String,
    pub frame: usize,
    /// `prepare_u8` output: `image_size × image_size` RGB.
    pub image: RgbImage,
    pub labels: PatchLabels,
}

impl FrameSample {
    /// A sample from an original frame (decoded or rendered) of `meta` at `frame`.
    pub fn new(
        meta: &ClipMeta,
        frame: usize,
        original: &RgbImage,
        processor: &ImageProcessorConfig,
        cfg: &TowerTrainConfig,
    ) -> Result<Self> {
        if original.width != meta.width || original.height != meta.height {
            return Err(TrainError::Invalid(format!(
                "{}: frame {frame} is {}x{}, meta.jsonl says {}x{}",
                meta.video, original.width, original.height, meta.width, meta.height
            )));
        }
        let image = processor
            .prepare_u8(original)
            .map_err(|e| TrainError::Invalid(format!("{} frame {frame}: {e}", meta.video)))?;
        if image.width as usize != cfg.image_size || image.height as usize != cfg.image_size {
            return Err(TrainError::Invalid(format!(
                "{} frame {frame}: preprocessed to {}x{}, the tower needs {s}x{s}",
                meta.video,
                image.width,
                image.height,
                s = cfg.image_size
            )));
        }
        Ok(Self {
            clip: meta.id.clone(),
            frame,
            image,
            labels: patch_labels(
                meta,
                frame,
                cfg.image_size,
                cfg.patch_size,
                cfg.min_coverage,
            ),
        })
    }
}

/// `k` distinct frame indices of a clip (sorted), from its own seeded stream.
pub fn sample_frame_indices(frames: usize, k: usize, seed: u64, stream: u64) -> Vec<usize> {
    let mut all: Vec<usize> = (0..frames).collect();
    SplitMix64::derived(seed, stream).shuffle(&mut all);
    all.truncate(k.min(frames));
    all.sort_unstable();
    all
}

/// Decodes `frames_per_clip` random frames of each clip (the media crate's decoder, as the
/// pipeline uses it) and turns them into samples; clips in parallel.
pub fn load_frames(
    data_dir: &Path,
    clips: &[ClipMeta],
    frames_per_clip: usize,
    seed: u64,
    processor: &ImageProcessorConfig,
    cfg: &TowerTrainConfig,
) -> Result<Vec<FrameSample>> {
    use rayon::prelude::*;
    let per_clip: Vec<Result<Vec<FrameSample>>> = clips
        .par_iter()
        .enumerate()
        .map(|(i, meta)| {
            let path = data_dir.join(&meta.video);
            let indices = sample_frame_indices(meta.frames, frames_per_clip, seed, i as u64);
            let reader = videollama_media::decode::VideoReader::open(&path)
                .map_err(|e| TrainError::file(&path, e))?;
            let decoded = reader
                .decode(&indices)
                .map_err(|e| TrainError::file(&path, e))?;
            if decoded.len() != indices.len() {
                return Err(TrainError::file(
                    &path,
                    format!(
                        "asked for {} frames, decoded {} (meta.jsonl says {} frames)",
                        indices.len(),
                        decoded.len(),
                        meta.frames
                    ),
                ));
            }
            indices
                .iter()
                .zip(&decoded)
                .map(|(&f, img)| FrameSample::new(meta, f, img, processor, cfg))
                .collect()
        })
        .collect();
    let mut out = Vec::new();
    for r in per_clip {
        out.extend(r?);
    }
    Ok(out)
}

/// A batch: `pixel_values [B, 3, S, S]` (the processor's `normalize_chw`) and the targets,
/// each `[B·N]` u32.
pub struct Batch {
    pub pixel_values: Tensor,
    pub colour: Tensor,
    pub shape: Tensor,
    pub centre: Tensor,
}

impl Batch {
    pub fn new(
        samples: &[&FrameSample],
        processor: &ImageProcessorConfig,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let first = samples
            .first()
            .ok_or_else(|| TrainError::Invalid("empty batch".into()))?;
        let s = first.image.height as usize;
        let mut px = Vec::with_capacity(samples.len() * 3 * s * s);
        let (mut colour, mut shape, mut centre) = (Vec::new(), Vec::new(), Vec::new());
        for f in samples {
            px.extend(processor.normalize_chw(&f.image));
            colour.extend_from_slice(&f.labels.colour);
            shape.extend_from_slice(&f.labels.shape);
            centre.extend_from_slice(&f.labels.centre);
        }
        let b = samples.len();
        let n = colour.len();
        Ok(Self {
            pixel_values: Tensor::from_vec(px, (b, 3, s, s), device)?.to_dtype(dtype)?,
            colour: Tensor::from_vec(colour, n, device)?,
            shape: Tensor::from_vec(shape, n, device)?,
            centre: Tensor::from_vec(centre, n, device)?,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Model
// ---------------------------------------------------------------------------------------

struct LayerParams {
    layer_norm1: LayerNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

/// The per-patch losses of a batch (each a mean cross-entropy over `B·N` patches).
pub struct TowerLosses {
    pub total: Tensor,
    pub colour: f64,
    pub shape: f64,
    pub centre: f64,
}

/// The tower (HF SigLIP names, `Var`s in `tower`) and the training-only heads.
pub struct TowerModel {
    cfg: SiglipVisionConfig,
    tower: VarMap,
    heads: VarMap,
    patch_weight: Tensor,
    patch_bias: Tensor,
    position_embedding: Tensor,
    layers: Vec<LayerParams>,
    colour_head: Linear,
    shape_head: Linear,
    centre_head: Linear,
    dtype: DType,
    device: Device,
}

/// Normal sample (Box–Muller).
fn normal(rng: &mut SplitMix64) -> f64 {
    let u1 = rng.next_f64().max(f64::MIN_POSITIVE);
    let u2 = rng.next_f64();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// The initialisation of one tensor (HF `SiglipPreTrainedModel._init_weights`).
#[derive(Clone, Copy)]
enum Init {
    Zeros,
    Ones,
    Normal(f64),
    /// Normal truncated to ±2σ' with σ' = σ / 0.87962566 so the variance stays σ² (the
    /// `variance_scaling_(…, "truncated_normal")` of HF's `lecun_normal_`).
    TruncNormal(f64),
    /// U(−a, a).
    Uniform(f64),
}

fn init_values(init: Init, n: usize, rng: &mut SplitMix64) -> Vec<f64> {
    match init {
        Init::Zeros => vec![0.0; n],
        Init::Ones => vec![1.0; n],
        Init::Normal(s) => (0..n).map(|_| s * normal(rng)).collect(),
        Init::TruncNormal(s) => {
            let s = s / 0.879_625_661_034_239_8;
            (0..n)
                .map(|_| loop {
                    let z = normal(rng);
                    if z.abs() <= 2.0 {
                        break s * z;
                    }
                })
                .collect()
        }
        Init::Uniform(a) => (0..n).map(|_| a * (2.0 * rng.next_f64() - 1.0)).collect(),
    }
}

/// Every tower tensor with its shape and initialisation, in a fixed order.
fn tower_tensors(cfg: &SiglipVisionConfig) -> Vec<(String, Vec<usize>, Init)> {
    let c = cfg.hidden_size;
    let i = cfg.intermediate_size;
    let p = cfg.patch_size;
    let cin = cfg.num_channels;
    let xavier =
        |fan_in: usize, fan_out: usize| Init::Uniform((6.0 / (fan_in + fan_out) as f64).sqrt());
    let mut v = vec![
        (
            "embeddings.patch_embedding.weight".to_string(),
            vec![c, cin, p, p],
            Init::TruncNormal((1.0 / (cin * p * p) as f64).sqrt()),
        ),
        (
            "embeddings.patch_embedding.bias".into(),
            vec![c],
            Init::Zeros,
        ),
        (
            "embeddings.position_embedding.weight".into(),
            vec![cfg.num_patches(), c],
            Init::Normal(1.0 / (c as f64).sqrt()),
        ),
    ];
    for l in 0..cfg.num_hidden_layers {
        let pre = format!("encoder.layers.{l}");
        for ln in ["layer_norm1", "layer_norm2"] {
            v.push((format!("{pre}.{ln}.weight"), vec![c], Init::Ones));
            v.push((format!("{pre}.{ln}.bias"), vec![c], Init::Zeros));
        }
        for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            v.push((
                format!("{pre}.self_attn.{proj}.weight"),
                vec![c, c],
                xavier(c, c),
            ));
            v.push((format!("{pre}.self_attn.{proj}.bias"), vec![c], Init::Zeros));
        }
        v.push((format!("{pre}.mlp.fc1.weight"), vec![i, c], xavier(c, i)));
        v.push((format!("{pre}.mlp.fc1.bias"), vec![i], Init::Zeros));
        v.push((format!("{pre}.mlp.fc2.weight"), vec![c, i], xavier(i, c)));
        v.push((format!("{pre}.mlp.fc2.bias"), vec![c], Init::Zeros));
    }
    // Never used at select_layer -1, exported so the folder is a complete SigLIP tower.
    v.push(("post_layernorm.weight".into(), vec![c], Init::Ones));
    v.push(("post_layernorm.bias".into(), vec![c], Init::Zeros));
    v
}

fn head_tensors(c: usize) -> Vec<(String, Vec<usize>, Init)> {
    let mut v = Vec::new();
    for (name, k) in [
        ("colour", COLOUR_CLASSES),
        ("shape", SHAPE_CLASSES),
        ("centre", CENTRE_CLASSES),
    ] {
        v.push((
            format!("{name}.weight"),
            vec![k, c],
            Init::TruncNormal(0.02),
        ));
        v.push((format!("{name}.bias"), vec![k], Init::Zeros));
    }
    v
}

fn fill_varmap(
    tensors: &[(String, Vec<usize>, Init)],
    seed: u64,
    stream_base: u64,
    dtype: DType,
    device: &Device,
) -> Result<VarMap> {
    let map = VarMap::new();
    {
        let mut data = map
            .data()
            .lock()
            .map_err(|_| TrainError::Invalid("poisoned VarMap lock".into()))?;
        for (k, (name, shape, init)) in tensors.iter().enumerate() {
            let mut rng = SplitMix64::derived(seed, stream_base + k as u64);
            let n = shape.iter().product();
            let t = Tensor::from_vec(init_values(*init, n, &mut rng), shape.as_slice(), device)?
                .to_dtype(dtype)?;
            data.insert(name.clone(), Var::from_tensor(&t)?);
        }
    }
    Ok(map)
}

/// The MLP activation. tanh-GELU is composed of ops whose backward is exact: candle's own
/// `gelu` backward uses 6-digit constants (0.797885 for √(2/π), 0.398942, …), a relative
/// gradient error near 1e-6 that a finite-difference check sees. The forward is the same
/// formula, `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
fn activation(act: Activation, xs: &Tensor) -> candle_core::Result<Tensor> {
    match act {
        Activation::GeluTanh => {
            let inner =
                (((xs.sqr()? * xs)? * 0.044715)? + xs)? * (2.0 / std::f64::consts::PI).sqrt();
            (xs * 0.5)? * (inner?.tanh()? + 1.0)?
        }
        other => other.forward(xs),
    }
}

/// A dense linear layer at `vb` (weight `[out, in]`, bias `[out]`).
fn linear(vb: &VarBuilder, in_dim: usize, out_dim: usize) -> Result<Linear> {
    Ok(videollama_nn::linear(in_dim, out_dim, vb.clone())?)
}

impl TowerModel {
    /// A freshly initialised tower and heads (seeded; see [`Init`]: HF SigLIP's scheme —
    /// patch embedding LeCun truncated normal, position embedding N(0, 1/C), attention and
    /// MLP weights Xavier-uniform, biases 0, layer norms 1/0; heads truncated N(0, 0.02²)).
    pub fn new(cfg: &SiglipVisionConfig, seed: u64, dtype: DType, device: &Device) -> Result<Self> {
        let tower = fill_varmap(&tower_tensors(cfg), seed, 0, dtype, device)?;
        let heads = fill_varmap(&head_tensors(cfg.hidden_size), seed, 1 << 32, dtype, device)?;
        Self::from_varmaps(cfg, tower, heads, dtype, device)
    }

    /// Builds the layers from the `Var`s through `VarBuilder::from_varmap` (shapes checked).
    fn from_varmaps(
        cfg: &SiglipVisionConfig,
        tower: VarMap,
        heads: VarMap,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let c = cfg.hidden_size;
        let i = cfg.intermediate_size;
        let p = cfg.patch_size;
        let vb = VarBuilder::from_varmap(&tower, dtype, device);
        let emb = vb.pp("embeddings");
        let patch = emb.pp("patch_embedding");
        let mut layers = Vec::new();
        for l in 0..cfg.num_hidden_layers {
            let lv = vb.pp("encoder").pp("layers").pp(l);
            let at = lv.pp("self_attn");
            layers.push(LayerParams {
                layer_norm1: videollama_nn::layer_norm(
                    c,
                    cfg.layer_norm_eps,
                    lv.pp("layer_norm1"),
                )?,
                q_proj: linear(&at.pp("q_proj"), c, c)?,
                k_proj: linear(&at.pp("k_proj"), c, c)?,
                v_proj: linear(&at.pp("v_proj"), c, c)?,
                out_proj: linear(&at.pp("out_proj"), c, c)?,
                layer_norm2: videollama_nn::layer_norm(
                    c,
                    cfg.layer_norm_eps,
                    lv.pp("layer_norm2"),
                )?,
                fc1: linear(&lv.pp("mlp").pp("fc1"), c, i)?,
                fc2: linear(&lv.pp("mlp").pp("fc2"), i, c)?,
            });
        }
        let hv = VarBuilder::from_varmap(&heads, dtype, device);
        Ok(Self {
            patch_weight: patch.get((c, cfg.num_channels, p, p), "weight")?,
            patch_bias: patch.get(c, "bias")?,
            position_embedding: emb
                .pp("position_embedding")
                .get((cfg.num_patches(), c), "weight")?,
            layers,
            colour_head: linear(&hv.pp("colour"), c, COLOUR_CLASSES)?,
            shape_head: linear(&hv.pp("shape"), c, SHAPE_CLASSES)?,
            centre_head: linear(&hv.pp("centre"), c, CENTRE_CLASSES)?,
            cfg: cfg.clone(),
            tower,
            heads,
            dtype,
            device: device.clone(),
        })
    }

    pub fn config(&self) -> &SiglipVisionConfig {
        &self.cfg
    }

    /// Every trainable tensor: tower ones under their HF names, heads under `heads.*`.
    pub fn vars(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        for (prefix, map) in [("", &self.tower), ("heads.", &self.heads)] {
            if let Ok(data) = map.data().lock() {
                for (k, v) in data.iter() {
                    out.push((format!("{prefix}{k}"), v.clone()));
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The tower's tensors (detached), HF names relative to `…vision_model`.
    pub fn tower_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let data = self
            .tower
            .data()
            .lock()
            .map_err(|_| TrainError::Invalid("poisoned VarMap lock".into()))?;
        Ok(data
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
            .collect())
    }

    /// Parameters of the exported tower.
    pub fn tower_param_count(&self) -> usize {
        self.tower_tensors()
            .map(|m| m.values().map(|t| t.elem_count()).sum())
            .unwrap_or(0)
    }

    /// `pixel_values [B, 3, S, S]` → `hidden_states[num_hidden_layers]` `[B, N, C]`,
    /// differentiable with respect to every tower `Var`.
    pub fn features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let (b, cin, h, w) = pixel_values.dims4()?;
        let p = self.cfg.patch_size;
        let g = self.cfg.patches_per_side();
        if cin != self.cfg.num_channels || h / p != g || w / p != g {
            return Err(TrainError::Invalid(format!(
                "the tower expects pixel_values [B, {}, {s}, {s}], got {:?}",
                self.cfg.num_channels,
                pixel_values.dims(),
                s = self.cfg.image_size
            )));
        }
        let c = self.cfg.hidden_size;
        // Patch embedding = strided conv as one matmul: [B·N, Cin·p·p] · [Cin·p·p, C].
        let cols = pixel_values
            .to_dtype(self.dtype)?
            .narrow(2, 0, g * p)?
            .narrow(3, 0, g * p)?
            .reshape((b, cin, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .reshape((b * g * g, cin * p * p))?;
        let wm = self.patch_weight.reshape((c, cin * p * p))?;
        let xs = cols
            .matmul(&wm.t()?)?
            .broadcast_add(&self.patch_bias)?
            .reshape((b, g * g, c))?;
        let mut xs = xs.broadcast_add(&self.position_embedding.unsqueeze(0)?)?;
        let heads = self.cfg.num_attention_heads;
        let hd = c / heads;
        let scale = (hd as f64).powf(-0.5);
        let act = self.cfg.hidden_act;
        for l in &self.layers {
            // [B, N, C] → [B, heads, N, hd]
            let h = layer_norm(&l.layer_norm1, &xs)?;
            let n = h.dim(1)?;
            let split = |t: Tensor| -> candle_core::Result<Tensor> {
                t.reshape((b, n, heads, hd))?.transpose(1, 2)?.contiguous()
            };
            let q = split(l.q_proj.forward(&h)?)?;
            let k = split(l.k_proj.forward(&h)?)?;
            let v = split(l.v_proj.forward(&h)?)?;
            let o = attention(&q, &k, &v, scale, AttentionMask::None)?
                .transpose(1, 2)?
                .reshape((b, n, c))?;
            xs = (xs + l.out_proj.forward(&o)?)?;
            let h = layer_norm(&l.layer_norm2, &xs)?;
            let h = l.fc2.forward(&activation(act, &l.fc1.forward(&h)?)?)?;
            xs = (xs + h)?;
        }
        Ok(xs)
    }

    /// Head logits `[B·N, K]` of features `[B, N, C]`: colour, shape, centre.
    pub fn head_logits(&self, features: &Tensor) -> Result<[Tensor; 3]> {
        let (b, n, c) = features.dims3()?;
        let f = features.reshape((b * n, c))?;
        Ok([
            self.colour_head.forward(&f)?,
            self.shape_head.forward(&f)?,
            self.centre_head.forward(&f)?,
        ])
    }

    /// The summed mean cross-entropies of a batch.
    pub fn loss(&self, batch: &Batch) -> Result<TowerLosses> {
        let feats = self.features(&batch.pixel_values)?;
        let [lc, ls, lz] = self.head_logits(&feats)?;
        let ce = |logits: &Tensor, t: &Tensor| -> Result<Tensor> {
            Ok(candle_nn::loss::cross_entropy(logits, t)?)
        };
        let c = ce(&lc, &batch.colour)?;
        let s = ce(&ls, &batch.shape)?;
        let z = ce(&lz, &batch.centre)?;
        let scalar =
            |t: &Tensor| -> Result<f64> { Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?) };
        Ok(TowerLosses {
            colour: scalar(&c)?,
            shape: scalar(&s)?,
            centre: scalar(&z)?,
            total: ((c + s)? + z)?,
        })
    }

    /// The inference tower of the encoders crate over the current (detached) weights,
    /// `mm_vision_select_layer = -1`.
    pub fn inference_tower(&self) -> Result<VisionTower> {
        let vb = VarBuilder::from_tensors(self.tower_tensors()?, self.dtype, &self.device);
        Ok(VisionTower::new(
            &VisionTowerConfig::Siglip(self.cfg.clone()),
            -1,
            "patch",
            vb,
        )?)
    }

    /// The heads with detached weights (for evaluation without a graph).
    fn detached_heads(&self) -> Result<[Linear; 3]> {
        let d = |l: &Linear| -> Result<Linear> {
            let w = l
                .weight()
                .ok_or_else(|| TrainError::Invalid("head weight is not dense".into()))?;
            Ok(Linear::new(w.detach(), l.bias().map(|b| b.detach())))
        };
        Ok([
            d(&self.colour_head)?,
            d(&self.shape_head)?,
            d(&self.centre_head)?,
        ])
    }

    /// Writes `OUT/vision_tower/{config,preprocessor_config}.json` and
    /// `OUT/vision_tower.safetensors` (`model.vision_tower.vision_tower.vision_model.*`).
    pub fn export(&self, out_dir: &Path, cfg: &TowerTrainConfig) -> Result<()> {
        let dir = out_dir.join(TOWER_DIR);
        std::fs::create_dir_all(&dir).map_err(|e| TrainError::file(&dir, e))?;
        for (name, json) in [
            ("config.json", cfg.config_json()),
            ("preprocessor_config.json", cfg.preprocessor_json()),
        ] {
            let path = dir.join(name);
            let text =
                serde_json::to_string_pretty(&json).map_err(|e| TrainError::file(&path, e))?;
            std::fs::write(&path, text + "\n").map_err(|e| TrainError::file(&path, e))?;
        }
        let tensors: HashMap<String, Tensor> = self
            .tower_tensors()?
            .into_iter()
            .map(|(k, t)| {
                Ok((
                    format!("{VISION_TOWER_PREFIX}.{k}"),
                    t.to_dtype(DType::F32)?.contiguous()?,
                ))
            })
            .collect::<Result<_>>()?;
        let path = out_dir.join(TOWER_WEIGHTS);
        // Write to a temporary name first so a reader never sees a half-written file.
        let tmp = out_dir.join(format!("{TOWER_WEIGHTS}.tmp"));
        candle_core::safetensors::save(&tensors, &tmp).map_err(|e| TrainError::file(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| TrainError::file(&path, e))?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------------------

/// Per-head validation metrics (patches of all val frames).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TowerEval {
    pub frames: usize,
    pub patches: usize,
    /// Mean of the summed cross-entropies.
    pub loss: f64,
    pub colour_acc: f64,
    pub shape_acc: f64,
    pub centre_acc: f64,
    /// Accuracy on the patches whose true class is not background.
    pub colour_fg_acc: f64,
    pub shape_fg_acc: f64,
    /// Of the true centre patches, how many are predicted as centres; and vice versa.
    pub centre_recall: f64,
    pub centre_precision: f64,
    /// Frames whose number of predicted centre patches equals the number of objects whose
    /// centre lies on the grid (a counting proxy).
    pub count_acc: f64,
}

fn argmax_rows(logits: &Tensor) -> Result<Vec<u32>> {
    Ok(logits.argmax(1)?.to_dtype(DType::U32)?.to_vec1::<u32>()?)
}

/// Runs `samples` through the inference tower (`mm_vision_select_layer = -1`) and the
/// heads, `batch_size` frames at a time.
pub fn evaluate(
    model: &TowerModel,
    samples: &[FrameSample],
    processor: &ImageProcessorConfig,
    batch_size: usize,
) -> Result<TowerEval> {
    let tower = model.inference_tower()?;
    let [hc, hs, hz] = model.detached_heads()?;
    let n = model.cfg.num_patches();
    let mut e = TowerEval::default();
    let (mut ok_c, mut ok_s, mut ok_z) = (0usize, 0usize, 0usize);
    let (mut fg_c, mut fg_ok_c, mut fg_s, mut fg_ok_s) = (0usize, 0usize, 0usize, 0usize);
    let (mut tp, mut pos, mut pred_pos, mut count_ok) = (0usize, 0usize, 0usize, 0usize);
    let mut loss_sum = 0f64;
    for chunk in samples.chunks(batch_size.max(1)) {
        let refs: Vec<&FrameSample> = chunk.iter().collect();
        let batch = Batch::new(&refs, processor, model.dtype, &model.device)?;
        let feats = tower.forward(&batch.pixel_values)?;
        let (b, _, c) = feats.dims3()?;
        let f = feats.reshape((b * n, c))?;
        let logits = [hc.forward(&f)?, hs.forward(&f)?, hz.forward(&f)?];
        let targets = [&batch.colour, &batch.shape, &batch.centre];
        for (l, t) in logits.iter().zip(targets) {
            loss_sum += candle_nn::loss::cross_entropy(l, t)?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?
                * b as f64;
        }
        let [pc, ps, pz] = [
            argmax_rows(&logits[0])?,
            argmax_rows(&logits[1])?,
            argmax_rows(&logits[2])?,
        ];
        for (j, s) in chunk.iter().enumerate() {
            let lab = &s.labels;
            let mut predicted_centres = 0;
            for q in 0..n {
                let k = j * n + q;
                ok_c += (pc[k] == lab.colour[q]) as usize;
                ok_s += (ps[k] == lab.shape[q]) as usize;
                ok_z += (pz[k] == lab.centre[q]) as usize;
                if lab.colour[q] != 0 {
                    fg_c += 1;
                    fg_ok_c += (pc[k] == lab.colour[q]) as usize;
                }
                if lab.shape[q] != 0 {
                    fg_s += 1;
                    fg_ok_s += (ps[k] == lab.shape[q]) as usize;
                }
                pos += (lab.centre[q] == 1) as usize;
                pred_pos += (pz[k] == 1) as usize;
                tp += (lab.centre[q] == 1 && pz[k] == 1) as usize;
                predicted_centres += (pz[k] == 1) as usize;
            }
            // Two centres may share a patch; compare with the distinct centre patches.
            let true_centres = lab.centre.iter().filter(|&&z| z == 1).count();
            count_ok += (predicted_centres == true_centres) as usize;
        }
    }
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    e.frames = samples.len();
    e.patches = samples.len() * n;
    e.loss = ratio(1, samples.len()) * loss_sum;
    e.colour_acc = ratio(ok_c, e.patches);
    e.shape_acc = ratio(ok_s, e.patches);
    e.centre_acc = ratio(ok_z, e.patches);
    e.colour_fg_acc = ratio(fg_ok_c, fg_c);
    e.shape_fg_acc = ratio(fg_ok_s, fg_s);
    e.centre_recall = ratio(tp, pos);
    e.centre_precision = ratio(tp, pred_pos);
    e.count_acc = ratio(count_ok, samples.len());
    Ok(e)
}

// ---------------------------------------------------------------------------------------
// Training
// ---------------------------------------------------------------------------------------

/// One optimizer step's record (a line of `tower_log.jsonl`).
#[derive(Debug, Clone, Serialize)]
pub struct TowerStep {
    pub step: usize,
    pub total_steps: usize,
    pub epoch: f64,
    pub loss: f64,
    pub loss_colour: f64,
    pub loss_shape: f64,
    pub loss_centre: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val: Option<TowerEval>,
}

/// What the run reports while it goes.
#[derive(Debug, Clone)]
pub enum TowerEvent {
    /// Frames of a split decoded and labelled.
    Loaded {
        split: String,
        clips: usize,
        frames: usize,
        seconds: f64,
    },
    Step(TowerStep),
    /// The tower was exported to `OUT/` after `step` steps.
    Saved {
        step: usize,
    },
}

/// The end of a run.
#[derive(Debug, Clone, Serialize)]
pub struct TowerReport {
    pub steps: usize,
    pub train_clips: usize,
    pub train_frames: usize,
    pub val_clips: usize,
    pub val_frames: usize,
    pub tower_params: usize,
    pub final_loss: f64,
    pub final_val: Option<TowerEval>,
    pub load_seconds: f64,
    pub train_seconds: f64,
    pub out_dir: PathBuf,
}

/// The optimizer state of a run on a [`TowerModel`].
pub struct TowerTrainer {
    pub model: TowerModel,
    opt: AdamW,
    step: usize,
    total_steps: usize,
    warmup: usize,
    min_lr_ratio: f64,
    learning_rate: f64,
    max_grad_norm: Option<f64>,
}

impl TowerTrainer {
    pub fn new(model: TowerModel, cfg: &TowerTrainConfig) -> Result<Self> {
        let params = model
            .vars()
            .into_iter()
            .map(|(n, v)| (n, v, cfg.learning_rate))
            .collect();
        let opt = AdamW::new(
            params,
            AdamWConfig {
                weight_decay: cfg.weight_decay,
                ..Default::default()
            },
        )?;
        Ok(Self {
            model,
            opt,
            step: 0,
            total_steps: cfg.steps,
            warmup: cfg.warmup_steps.min(cfg.steps),
            min_lr_ratio: cfg.min_lr_ratio,
            learning_rate: cfg.learning_rate,
            max_grad_norm: cfg.max_grad_norm,
        })
    }

    /// Steps done.
    pub fn step_count(&self) -> usize {
        self.step
    }

    /// One update on `batch`; the record has no `val`.
    pub fn train_step(&mut self, batch: &Batch) -> Result<TowerStep> {
        let t0 = Instant::now();
        let losses = self.model.loss(batch)?;
        let loss = losses.total.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let store = losses.total.backward()?;
        let mut grads = BTreeMap::new();
        for (name, var) in self.model.vars() {
            if let Some(g) = store.get(var.as_tensor()) {
                grads.insert(name, g.detach());
            }
        }
        let grad_norm = clip_global_norm(&mut grads, self.max_grad_norm)?;
        let factor = lr_factor(self.step, self.warmup, self.total_steps, self.min_lr_ratio);
        if grad_norm.is_finite() {
            self.opt.step(&grads, factor)?;
        } else {
            tracing::warn!(step = self.step + 1, "non-finite gradient: update skipped");
            self.opt.skip();
        }
        self.step += 1;
        Ok(TowerStep {
            step: self.step,
            total_steps: self.total_steps,
            epoch: 0.0,
            loss,
            loss_colour: losses.colour,
            loss_shape: losses.shape,
            loss_centre: losses.centre,
            lr: self.learning_rate * factor,
            grad_norm,
            seconds: t0.elapsed().as_secs_f64(),
            val: None,
        })
    }
}

fn select_split(all: &[ClipMeta], split: &str, max: Option<usize>) -> Vec<ClipMeta> {
    let mut v: Vec<ClipMeta> = all.iter().filter(|m| m.split == split).cloned().collect();
    if let Some(m) = max {
        v.truncate(m);
    }
    v
}

/// Trains the tower on `DATA/meta.jsonl` (train split; val split for the metrics) and
/// exports it to `cfg.out_dir` (see the module doc).
pub fn train_vision_tower(
    data_dir: &Path,
    cfg: &TowerTrainConfig,
    mut progress: impl FnMut(&TowerEvent),
) -> Result<TowerReport> {
    cfg.validate()?;
    let siglip = cfg.siglip_config()?;
    let processor = cfg.image_processor()?;
    let meta_path = data_dir.join("meta.jsonl");
    let metas =
        videollama_demodata::read_meta(&meta_path).map_err(|e| TrainError::file(&meta_path, e))?;
    let train_clips = select_split(&metas, "train", cfg.max_train_clips);
    if train_clips.is_empty() {
        return Err(TrainError::file(&meta_path, "no clips of the train split"));
    }
    let val_clips = select_split(&metas, "val", cfg.max_val_clips);
    let out = &cfg.out_dir;
    std::fs::create_dir_all(out).map_err(|e| TrainError::file(out, e))?;
    let log_path = out.join(TOWER_LOG);
    let mut log = std::fs::File::create(&log_path).map_err(|e| TrainError::file(&log_path, e))?;
    let mut write_log = |v: &serde_json::Value| -> Result<()> {
        writeln!(log, "{v}").map_err(|e| TrainError::file(&log_path, e))
    };
    write_log(&serde_json::json!({ "config": cfg }))?;

    let t_load = Instant::now();
    let train = load_frames(
        data_dir,
        &train_clips,
        cfg.frames_per_clip,
        cfg.seed,
        &processor,
        cfg,
    )?;
    progress(&TowerEvent::Loaded {
        split: "train".into(),
        clips: train_clips.len(),
        frames: train.len(),
        seconds: t_load.elapsed().as_secs_f64(),
    });
    let t_val = Instant::now();
    // The val frames come from their own seed stream (fixed for the whole run).
    let val = load_frames(
        data_dir,
        &val_clips,
        cfg.val_frames_per_clip,
        cfg.seed ^ 0x5641_4c00,
        &processor,
        cfg,
    )?;
    if !val.is_empty() {
        progress(&TowerEvent::Loaded {
            split: "val".into(),
            clips: val_clips.len(),
            frames: val.len(),
            seconds: t_val.elapsed().as_secs_f64(),
        });
    }
    let load_seconds = t_load.elapsed().as_secs_f64();

    let device = Device::Cpu;
    let model = TowerModel::new(&siglip, cfg.seed, DType::F32, &device)?;
    let tower_params = model.tower_param_count();
    let mut trainer = TowerTrainer::new(model, cfg)?;
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut order_rng = SplitMix64::derived(cfg.seed, 0x0bad_5eed);
    order_rng.shuffle(&mut order);
    let mut cursor = 0;
    let t_train = Instant::now();
    let mut final_loss = f64::NAN;
    let mut final_val = None;
    for step in 0..cfg.steps {
        let mut picked = Vec::with_capacity(cfg.batch_size);
        while picked.len() < cfg.batch_size {
            if cursor == order.len() {
                order_rng.shuffle(&mut order);
                cursor = 0;
            }
            picked.push(&train[order[cursor]]);
            cursor += 1;
        }
        let batch = Batch::new(&picked, &processor, DType::F32, &device)?;
        let mut rec = trainer.train_step(&batch)?;
        rec.epoch = ((step + 1) * cfg.batch_size) as f64 / train.len() as f64;
        final_loss = rec.loss;
        let last = step + 1 == cfg.steps;
        if !val.is_empty() && (last || (cfg.eval_every > 0 && (step + 1) % cfg.eval_every == 0)) {
            let e = evaluate(&trainer.model, &val, &processor, cfg.batch_size)?;
            final_val = Some(e.clone());
            rec.val = Some(e);
        }
        write_log(&serde_json::to_value(&rec).map_err(|e| TrainError::file(&log_path, e))?)?;
        progress(&TowerEvent::Step(rec));
        if last || (cfg.save_every > 0 && (step + 1) % cfg.save_every == 0) {
            trainer.model.export(out, cfg)?;
            progress(&TowerEvent::Saved { step: step + 1 });
        }
    }
    let report = TowerReport {
        steps: trainer.step_count(),
        train_clips: train_clips.len(),
        train_frames: train.len(),
        val_clips: val_clips.len(),
        val_frames: val.len(),
        tower_params,
        final_loss,
        final_val,
        load_seconds,
        train_seconds: t_train.elapsed().as_secs_f64(),
        out_dir: out.clone(),
    };
    write_log(&serde_json::json!({ "report": report }))?;
    Ok(report)
}
