//! BEATs audio encoder (BEATs_iter3+ architecture, as used by VideoLLaMA 2.1-AV; spec §7.4).
//!
//! ```text
//! fbank [T, 128] (bf16-rounded log-mel)
//!   → (x − 15.41663) / (2 · 6.55582)
//!   → patch_embedding Conv2d(1→D, k = s = 16, no bias)       [T/16 · 128/16, D]   patch = t·8 + f
//!   → layer_norm(D) → post_extract_proj Linear(D→C)         (= stage `post_extract_proj`)
//!   → x + GELU(SamePad(pos_conv(x)))                        grouped Conv1d, custom weight norm
//!   → encoder.layer_norm(C)                                 (before the layers: layer_norm_first = false)
//!   → layers[0..N]: post-LN "deep-norm" blocks with gated relative position bias
//!   → [L, C]   (no final norm; L = 1496 for 2998 frames)
//! ```
//!
//! Each deep-norm layer (α = (2·encoder_layers)^¼):
//! `h = LN1(α·x + SelfAttn(x))`, `x' = LN2(α·h + fc2(gelu(fc1(h))))`.
//!
//! Self-attention adds `gate[h,i] · P[h,i,j]` to the scaled scores, where
//! `P[h,i,j] = E[bucket(j − i), h]` uses the relative-attention-bias table `E` of **layer 0 only**
//! (shared by every layer; the copies stored under other layer indices are ignored) and
//! `gate = ga·(gb·grep_a[h] − 1) + 2`, `(ga, gb) = sigmoid(Σ₄ reshape(grep_linear(q_raw), [2, 4]))`
//! with `q_raw` the un-scaled per-head query.
//!
//! The 527-class `predictor` exists in the checkpoint (when `finetuned_model`) but is never used.

use std::sync::Mutex;

use candle_core::{bail, DType, Error, Module, Result, Tensor, D};
use candle_nn::{LayerNorm, VarBuilder};
use serde::Deserialize;
use videollama_nn::{layer_norm, linear, linear_b, Activation, Linear};

/// Mean subtracted from the fbank before the patch embedding (BEATs `fbank_mean`).
pub const FBANK_MEAN: f64 = 15.41663;
/// The fbank is divided by `2 · FBANK_STD` (BEATs `fbank_std`).
pub const FBANK_STD: f64 = 6.55582;
/// LayerNorm epsilon used by every BEATs LayerNorm (PyTorch default).
pub const LAYER_NORM_EPS: f64 = 1e-5;
/// Epsilon inside the square root of the custom pos-conv weight norm.
pub const WEIGHT_NORM_EPS: f64 = 1e-6;

/// BEATs `BEATsConfig`, with the reference defaults for every omitted key.
///
/// Unknown keys (e.g. the fixture's `beats_cfg.hidden_size`) are ignored, as the reference's
/// `__dict__.update` would store but never read them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct BeatsConfig {
    pub input_patch_size: usize,
    pub embed_dim: usize,
    pub conv_bias: bool,
    pub encoder_layers: usize,
    pub encoder_embed_dim: usize,
    pub encoder_ffn_embed_dim: usize,
    pub encoder_attention_heads: usize,
    pub activation_fn: Activation,
    pub layer_norm_first: bool,
    pub deep_norm: bool,
    pub conv_pos: usize,
    pub conv_pos_groups: usize,
    pub relative_position_embedding: bool,
    pub num_buckets: usize,
    pub max_distance: usize,
    pub gru_rel_pos: bool,
    pub finetuned_model: bool,
    pub predictor_class: usize,
}

impl Default for BeatsConfig {
    /// `BEATsConfig()` defaults (= the full-size VideoLLaMA 2.1-AV tower).
    fn default() -> Self {
        Self {
            input_patch_size: 16,
            embed_dim: 512,
            conv_bias: false,
            encoder_layers: 12,
            encoder_embed_dim: 768,
            encoder_ffn_embed_dim: 3072,
            encoder_attention_heads: 12,
            activation_fn: Activation::Gelu,
            layer_norm_first: false,
            deep_norm: true,
            conv_pos: 128,
            conv_pos_groups: 16,
            relative_position_embedding: true,
            num_buckets: 320,
            max_distance: 800,
            gru_rel_pos: true,
            finetuned_model: true,
            predictor_class: 527,
        }
    }
}

impl BeatsConfig {
    /// The defaults with the keys of a `beats_cfg` object applied over them
    /// (`None` or JSON `null` → plain defaults).
    pub fn from_overrides(overrides: Option<&serde_json::Value>) -> Result<Self> {
        match overrides {
            None | Some(serde_json::Value::Null) => Ok(Self::default()),
            Some(v @ serde_json::Value::Object(_)) => serde_json::from_value(v.clone())
                .map_err(|e| Error::Msg(format!("invalid beats_cfg: {e}"))),
            Some(other) => bail!("beats_cfg must be a JSON object, got {other}"),
        }
    }

    /// From a VideoLLaMA2 `config.json`: its optional `beats_cfg` field over the defaults.
    pub fn from_model_config(config_json: &serde_json::Value) -> Result<Self> {
        Self::from_overrides(config_json.get("beats_cfg"))
    }

    /// Per-head width of the encoder attention (64 for the real model).
    pub fn head_dim(&self) -> usize {
        self.encoder_embed_dim / self.encoder_attention_heads
    }

    /// Deep-norm residual scale α = (2·encoder_layers)^¼ (1 without deep norm).
    pub fn deep_norm_alpha(&self) -> f64 {
        if self.deep_norm {
            (2.0 * self.encoder_layers as f64).powf(0.25)
        } else {
            1.0
        }
    }

    /// Whether the reference builds `post_extract_proj` (only when the widths differ).
    pub fn has_post_extract_proj(&self) -> bool {
        self.embed_dim != self.encoder_embed_dim
    }

    /// Number of output tokens for an fbank of `frames × mel_bins`
    /// (1496 = 187 · 8 for 2998 × 128).
    pub fn num_patches(&self, frames: usize, mel_bins: usize) -> usize {
        (frames / self.input_patch_size) * (mel_bins / self.input_patch_size)
    }

    /// Number of parameters of the PyTorch module (shared relative bias counted once, the unused
    /// predictor included when `finetuned_model`). 90 717 055 for the defaults.
    pub fn param_count(&self) -> u64 {
        let p = self.input_patch_size as u64;
        let d = self.embed_dim as u64;
        let c = self.encoder_embed_dim as u64;
        let f = self.encoder_ffn_embed_dim as u64;
        let h = self.encoder_attention_heads as u64;
        let k = self.conv_pos as u64;
        let g = self.conv_pos_groups as u64;
        let mut n = d * p * p + if self.conv_bias { d } else { 0 }; // patch_embedding
        n += 2 * d; // layer_norm
        if self.has_post_extract_proj() {
            n += d * c + c;
        }
        n += k + c * (c / g) * k + c; // pos_conv weight_g, weight_v, bias
        n += 2 * c; // encoder.layer_norm
        let mut layer = 4 * (c * c + c) + 2 * 2 * c + (c * f + f) + (f * c + c);
        if self.gru_rel_pos {
            // grep_linear + grep_a exist whenever gru_rel_pos (used only with the relative bias).
            layer += (self.head_dim() as u64) * 8 + 8 + h;
        }
        n += layer * self.encoder_layers as u64;
        if self.relative_position_embedding {
            n += self.num_buckets as u64 * h; // one shared table
        }
        if self.finetuned_model {
            n += c * self.predictor_class as u64 + self.predictor_class as u64;
        }
        n
    }
}

/// Bidirectional T5-style bucket of the relative position `rel = key − query` (spec §7.4).
///
/// Half of the buckets per direction (`rel > 0` gets the upper half); within a half, the first
/// `num_buckets/4` distances are exact and the rest are log-spaced up to `max_distance`, the log
/// evaluated in float32 like the reference (`torch.log` on a float tensor).
pub fn relative_position_bucket(rel: i64, num_buckets: usize, max_distance: usize) -> usize {
    let half = num_buckets / 2;
    let base = if rel > 0 { half } else { 0 };
    let a = rel.unsigned_abs() as usize;
    let max_exact = half / 2;
    if a < max_exact {
        return base + a;
    }
    // torch: max_exact + (log(a.float() / max_exact) / math.log(max_distance / max_exact)
    //         * (half − max_exact)).to(long), all tensor ops in float32.
    let ratio = a as f32 / max_exact as f32;
    let denom = (max_distance as f64 / max_exact as f64).ln() as f32;
    let scaled = ratio.ln() / denom * (half - max_exact) as f32;
    let large = max_exact + scaled as usize; // `as` truncates toward zero (scaled ≥ 0)
    base + large.min(half - 1)
}

/// `[len·len]` u32 bucket indices, row-major over (query i, key j), for `rel = j − i`.
fn bucket_table(len: usize, num_buckets: usize, max_distance: usize) -> Vec<u32> {
    // One bucket per distinct relative position, then gathered into the square table.
    let by_rel: Vec<u32> = (0..2 * len.max(1) - 1)
        .map(|r| {
            relative_position_bucket(r as i64 - (len as i64 - 1), num_buckets, max_distance) as u32
        })
        .collect();
    let mut out = Vec::with_capacity(len * len);
    for i in 0..len {
        // rel = j − i ⇒ index j − i + len − 1 = (len − 1 − i) + j
        out.extend_from_slice(&by_rel[len - 1 - i..2 * len - 1 - i]);
    }
    out
}

/// The BEATs custom weight norm over dims 0 and 1 for each kernel tap:
/// `W[:,:,k] = g[k] · v[:,:,k] / sqrt(Σ_{o,i} v[o,i,k]² + 1e-6)`.
///
/// `v`: `[C_out, C_in/groups, K]`, `g`: `[1, 1, K]` (any shape with K elements). The norm is
/// computed in f32; the result has `v`'s dtype.
pub fn beats_weight_norm(v: &Tensor, g: &Tensor) -> Result<Tensor> {
    let (_, _, k) = v.dims3()?;
    if g.elem_count() != k {
        bail!(
            "pos_conv weight_g has {} elements, expected {k} (kernel size)",
            g.elem_count()
        );
    }
    let dtype = v.dtype();
    let v32 = v.to_dtype(DType::F32)?;
    let norm = (v32.sqr()?.sum_keepdim(1)?.sum_keepdim(0)? + WEIGHT_NORM_EPS)?.sqrt()?; // [1,1,K]
    let unit = v32.broadcast_div(&norm)?.to_dtype(dtype)?;
    unit.broadcast_mul(&g.reshape((1, 1, k))?.to_dtype(dtype)?)
}

/// Exact (erf) GELU evaluated in f32 and cast back, as the reference `gelu(x.float()).type_as(x)`.
fn gelu_f32(xs: &Tensor) -> Result<Tensor> {
    let dt = xs.dtype();
    if dt == DType::F32 {
        xs.gelu_erf()
    } else {
        xs.to_dtype(DType::F32)?.gelu_erf()?.to_dtype(dt)
    }
}

/// Self-attention with the optional gated relative position bias.
#[derive(Debug, Clone)]
struct BeatsAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    /// `grep_linear` (head_dim → 8) and `grep_a` reshaped to `[1, H, 1, 1]`, when `gru_rel_pos`.
    gate: Option<(Linear, Tensor)>,
    num_heads: usize,
    head_dim: usize,
}

impl BeatsAttention {
    fn new(cfg: &BeatsConfig, vb: VarBuilder) -> Result<Self> {
        let c = cfg.encoder_embed_dim;
        let h = cfg.encoder_attention_heads;
        if h == 0 || c % h != 0 {
            bail!("encoder_embed_dim {c} is not divisible by encoder_attention_heads {h}");
        }
        let head_dim = c / h;
        let gate = if cfg.relative_position_embedding && cfg.gru_rel_pos {
            let grep_linear = linear(head_dim, 8, vb.pp("grep_linear"))?;
            let grep_a = vb.get((1, h, 1, 1), "grep_a")?;
            Some((grep_linear, grep_a))
        } else {
            None
        };
        Ok(Self {
            q_proj: linear(c, c, vb.pp("q_proj"))?,
            k_proj: linear(c, c, vb.pp("k_proj"))?,
            v_proj: linear(c, c, vb.pp("v_proj"))?,
            out_proj: linear(c, c, vb.pp("out_proj"))?,
            gate,
            num_heads: h,
            head_dim,
        })
    }

    /// `x`: `[B, L, C]`; `pos_bias`: ungated `[H, L, L]` (shared by all layers).
    fn forward(&self, x: &Tensor, pos_bias: Option<&Tensor>) -> Result<Tensor> {
        let (b, l, c) = x.dims3()?;
        let heads = |t: Tensor| -> Result<Tensor> {
            t.reshape((b, l, self.num_heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q_raw = heads(self.q_proj.forward(x)?)?; // [B,H,L,Dh], un-scaled
        let k = heads(self.k_proj.forward(x)?)?;
        let v = heads(self.v_proj.forward(x)?)?;
        let scale = (self.head_dim as f64).powf(-0.5);
        let mut scores = (q_raw.clone() * scale)?.matmul(&k.t()?)?; // [B,H,L,L]
        if let Some(p) = pos_bias {
            let p = p.unsqueeze(0)?; // [1,H,L,L]
            let bias = match &self.gate {
                Some((grep_linear, grep_a)) => {
                    let g = grep_linear.forward(&q_raw)?; // [B,H,L,8]
                    let g = g.reshape((b, self.num_heads, l, 2, 4))?.sum(D::Minus1)?; // [B,H,L,2]
                    let g = candle_nn::ops::sigmoid(&g)?;
                    let ga = g.narrow(3, 0, 1)?;
                    let gb = g.narrow(3, 1, 1)?;
                    let gate = ((ga * (gb.broadcast_mul(grep_a)? - 1.0)?)? + 2.0)?; // [B,H,L,1]
                    gate.broadcast_mul(&p)?
                }
                None => p,
            };
            scores = scores.broadcast_add(&bias)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, l, c))?;
        self.out_proj.forward(&out)
    }
}

/// One `TransformerSentenceEncoderLayer`.
#[derive(Debug, Clone)]
struct BeatsLayer {
    self_attn: BeatsAttention,
    self_attn_layer_norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    final_layer_norm: LayerNorm,
    activation: Activation,
    alpha: f64,
    layer_norm_first: bool,
}

impl BeatsLayer {
    fn new(cfg: &BeatsConfig, vb: VarBuilder) -> Result<Self> {
        let c = cfg.encoder_embed_dim;
        let f = cfg.encoder_ffn_embed_dim;
        Ok(Self {
            self_attn: BeatsAttention::new(cfg, vb.pp("self_attn"))?,
            self_attn_layer_norm: layer_norm(c, LAYER_NORM_EPS, vb.pp("self_attn_layer_norm"))?,
            fc1: linear(c, f, vb.pp("fc1"))?,
            fc2: linear(f, c, vb.pp("fc2"))?,
            final_layer_norm: layer_norm(c, LAYER_NORM_EPS, vb.pp("final_layer_norm"))?,
            activation: cfg.activation_fn,
            alpha: cfg.deep_norm_alpha(),
            layer_norm_first: cfg.layer_norm_first,
        })
    }

    fn act(&self, xs: &Tensor) -> Result<Tensor> {
        match self.activation {
            Activation::Gelu => gelu_f32(xs),
            other => other.forward(xs),
        }
    }

    fn forward(&self, x: &Tensor, pos_bias: Option<&Tensor>) -> Result<Tensor> {
        if self.layer_norm_first {
            let h = (x + self
                .self_attn
                .forward(&self.self_attn_layer_norm.forward(x)?, pos_bias)?)?;
            let y = self
                .fc2
                .forward(&self.act(&self.fc1.forward(&self.final_layer_norm.forward(&h)?)?)?)?;
            h + y
        } else {
            let a = self.self_attn.forward(x, pos_bias)?;
            let h = self
                .self_attn_layer_norm
                .forward(&((x * self.alpha)? + a)?)?;
            let y = self.fc2.forward(&self.act(&self.fc1.forward(&h)?)?)?;
            self.final_layer_norm.forward(&((h * self.alpha)? + y)?)
        }
    }
}

/// Intermediate results of one forward pass; every tensor is batch-first `[B, L, C]`
/// (the reference's internal encoder layout is `L × B × C`).
#[derive(Debug, Clone)]
pub struct BeatsStages {
    /// Output of `post_extract_proj` (or of `layer_norm` when the reference has no projection).
    pub post_extract_proj: Tensor,
    /// Output of each encoder layer, in order; the last one is the final output.
    pub layer_outputs: Vec<Tensor>,
    /// Final features (= last layer output, or after the encoder LayerNorm when layer_norm_first).
    pub output: Tensor,
}

/// The BEATs audio encoder, loaded from `model.audio_tower.*`.
#[derive(Debug)]
pub struct Beats {
    cfg: BeatsConfig,
    /// Patch embedding as a matrix `[p·p, D]` (row index = kt·p + kf).
    patch_weight_t: Tensor,
    patch_bias: Option<Tensor>,
    layer_norm: LayerNorm,
    post_extract_proj: Option<Linear>,
    /// Effective (weight-normed) pos-conv weight `[C, C/groups, K]` and bias `[1, C, 1]`.
    pos_conv_weight: Tensor,
    pos_conv_bias: Tensor,
    encoder_layer_norm: LayerNorm,
    layers: Vec<BeatsLayer>,
    /// Layer 0's relative attention bias, transposed to `[H, num_buckets]`.
    rel_bias_t: Option<Tensor>,
    /// Bucket-index table `[L·L]` (u32) of the last sequence length seen, computed once per length.
    buckets: Mutex<Option<(usize, Tensor)>>,
}

impl Beats {
    /// Loads the tower; `vb` points at `model.audio_tower`.
    pub fn new(cfg: &BeatsConfig, vb: VarBuilder) -> Result<Self> {
        let p = cfg.input_patch_size;
        let d = cfg.embed_dim;
        let c = cfg.encoder_embed_dim;
        let k = cfg.conv_pos;
        let groups = cfg.conv_pos_groups;
        if groups == 0 || c % groups != 0 {
            bail!("encoder_embed_dim {c} is not divisible by conv_pos_groups {groups}");
        }
        let pe = vb.pp("patch_embedding");
        let patch_weight_t = pe
            .get((d, 1, p, p), "weight")?
            .reshape((d, p * p))?
            .t()?
            .contiguous()?;
        let patch_bias = if cfg.conv_bias {
            Some(pe.get(d, "bias")?)
        } else {
            None
        };
        let input_layer_norm = layer_norm(d, LAYER_NORM_EPS, vb.pp("layer_norm"))?;
        let post_extract_proj = if cfg.has_post_extract_proj() {
            Some(linear_b(d, c, true, vb.pp("post_extract_proj"))?)
        } else {
            None
        };

        let enc = vb.pp("encoder");
        let pc = enc.pp("pos_conv").pp("0");
        let weight_g = pc.get((1, 1, k), "weight_g")?;
        let weight_v = pc.get((c, c / groups, k), "weight_v")?;
        let pos_conv_weight = beats_weight_norm(&weight_v, &weight_g)?;
        let pos_conv_bias = pc.get(c, "bias")?.reshape((1, c, 1))?;
        let encoder_layer_norm = layer_norm(c, LAYER_NORM_EPS, enc.pp("layer_norm"))?;
        let layers = (0..cfg.encoder_layers)
            .map(|i| BeatsLayer::new(cfg, enc.pp("layers").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let rel_bias_t = if cfg.relative_position_embedding {
            let e = enc
                .pp("layers.0.self_attn.relative_attention_bias")
                .get((cfg.num_buckets, cfg.encoder_attention_heads), "weight")?;
            Some(e.t()?.contiguous()?)
        } else {
            None
        };
        Ok(Self {
            cfg: cfg.clone(),
            patch_weight_t,
            patch_bias,
            layer_norm: input_layer_norm,
            post_extract_proj,
            pos_conv_weight,
            pos_conv_bias,
            encoder_layer_norm,
            layers,
            rel_bias_t,
            buckets: Mutex::new(None),
        })
    }

    pub fn config(&self) -> &BeatsConfig {
        &self.cfg
    }

    /// Output width (`encoder_embed_dim`).
    pub fn hidden_size(&self) -> usize {
        self.cfg.encoder_embed_dim
    }

    /// The effective (weight-normed) positional-conv weight `[C, C/groups, K]`.
    pub fn pos_conv_weight(&self) -> &Tensor {
        &self.pos_conv_weight
    }

    /// `fbank` `[T, F]` → `[L, C]`, or `[B, T, F]` → `[B, L, C]` (L = ⌊T/16⌋·⌊F/16⌋ = 1496
    /// for 2998 × 128). The fbank is normalised here.
    pub fn extract_features(&self, fbank: &Tensor) -> Result<Tensor> {
        let unbatched = fbank.rank() == 2;
        let out = self.forward_with_stages(fbank)?.output;
        if unbatched {
            out.squeeze(0)
        } else {
            Ok(out)
        }
    }

    /// As [`Self::extract_features`], keeping the intermediate stages (always batch-first).
    pub fn forward_with_stages(&self, fbank: &Tensor) -> Result<BeatsStages> {
        let fbank = match fbank.rank() {
            2 => fbank.unsqueeze(0)?,
            3 => fbank.clone(),
            r => bail!("BEATs expects an fbank of rank 2 or 3, got rank {r}"),
        };
        let dtype = self.patch_weight_t.dtype();
        let dev = self.patch_weight_t.device();
        let fbank = fbank.to_device(dev)?.to_dtype(DType::F32)?;
        let x = fbank
            .broadcast_sub(&Tensor::new(FBANK_MEAN as f32, dev)?)?
            .broadcast_div(&Tensor::new((2.0 * FBANK_STD) as f32, dev)?)?
            .to_dtype(dtype)?;

        // Patch embedding: a stride = kernel Conv2d is a matmul over flattened patches.
        let (b, t, f) = x.dims3()?;
        let p = self.cfg.input_patch_size;
        let (nt, nf) = (t / p, f / p);
        if nt == 0 || nf == 0 {
            bail!("fbank {t}×{f} is smaller than one {p}×{p} patch");
        }
        let patches = x
            .narrow(1, 0, nt * p)?
            .narrow(2, 0, nf * p)?
            .reshape((b, nt, p, nf, p))?
            .permute((0, 1, 3, 2, 4))?
            .reshape((b, nt * nf, p * p))?;
        let mut feats = patches.broadcast_matmul(&self.patch_weight_t)?; // [B, L, D]
        if let Some(bias) = &self.patch_bias {
            feats = feats.broadcast_add(bias)?;
        }
        let feats = self.layer_norm.forward(&feats)?;
        let post = match &self.post_extract_proj {
            Some(proj) => proj.forward(&feats)?,
            None => feats,
        };

        // Encoder: positional conv (+ SamePad, GELU), residual add.
        let l = nt * nf;
        let k = self.cfg.conv_pos;
        let conv = post.transpose(1, 2)?.contiguous()?.conv1d(
            &self.pos_conv_weight,
            k / 2,
            1,
            1,
            self.cfg.conv_pos_groups,
        )?;
        let conv = conv.narrow(2, 0, l)?.broadcast_add(&self.pos_conv_bias)?; // SamePad drops the tail
        let conv = gelu_f32(&conv)?.transpose(1, 2)?;
        let mut x = (&post + conv)?;
        if !self.cfg.layer_norm_first {
            x = self.encoder_layer_norm.forward(&x)?;
        }

        let pos_bias = match &self.rel_bias_t {
            Some(e) => Some(self.position_bias(e, l)?),
            None => None,
        };
        let mut layer_outputs = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            x = layer.forward(&x, pos_bias.as_ref())?;
            layer_outputs.push(x.clone());
        }
        if self.cfg.layer_norm_first {
            x = self.encoder_layer_norm.forward(&x)?;
        }
        Ok(BeatsStages {
            post_extract_proj: post,
            layer_outputs,
            output: x,
        })
    }

    /// Ungated relative position bias `[H, L, L]` from layer 0's table.
    fn position_bias(&self, e_t: &Tensor, len: usize) -> Result<Tensor> {
        let idx = {
            let mut cache = self
                .buckets
                .lock()
                .map_err(|_| Error::Msg("BEATs bucket cache poisoned".into()))?;
            match cache.as_ref() {
                Some((n, t)) if *n == len => t.clone(),
                _ => {
                    let table = bucket_table(len, self.cfg.num_buckets, self.cfg.max_distance);
                    let t = Tensor::from_vec(table, len * len, e_t.device())?;
                    *cache = Some((len, t.clone()));
                    t
                }
            }
        };
        e_t.index_select(&idx, 1)?
            .reshape((self.cfg.encoder_attention_heads, len, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_table_matches_pointwise_function() {
        let n = 7;
        let t = bucket_table(n, 320, 800);
        for i in 0..n {
            for j in 0..n {
                let want = relative_position_bucket(j as i64 - i as i64, 320, 800) as u32;
                assert_eq!(t[i * n + j], want);
            }
        }
    }

    #[test]
    fn defaults_param_count() {
        assert_eq!(BeatsConfig::default().param_count(), 90_717_055);
        assert!((BeatsConfig::default().deep_norm_alpha() - 2.213_363_839).abs() < 1e-8);
    }
}
