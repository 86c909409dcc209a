//! ImageBind audio tower (the frozen audio encoder of Video-LLaMA v1, spec §1.A).
//!
//! Reference: `ImageBind/models/{imagebind_model,multimodal_preprocessors,transformer,helpers}.py`
//! as called by Video-LLaMA's `ImageBindModel.get_audio_feature(audio, "audio")`. Only the audio
//! branch is built; the other modalities of the state dict are never read.
//!
//! ```text
//! mel [B, 1, M, T]                   (M = 128 mel bins, T = 204 frames; normalised log-mel)
//!   → rgbt_stem.proj Conv2d(1→D, k16, s10, no bias)      [B, D, gh, gw]   gh = 12, gw = 19
//!   → flatten(2).transpose(1, 2)                         [B, N, D]        N = gh·gw = 228, mel-row major
//!   → rgbt_stem.norm_layer LayerNorm(eps 1e-5)           [B, N, D]
//!   → prepend cls_token, + pos_embed                     [B, 1+N, D]
//!   → blocks[0..L] (pre-LN, eps 1e-6):                   [B, 1+N, D]
//!        x += out_proj(MHA(norm_1(x)))   nn.MultiheadAttention(add_bias_kv=True)
//!        x += fc2(GELU(fc1(norm_2(x))))  MLP 4·D, exact (erf) GELU
//!   → head: LayerNorm(eps 1e-6) → token 0 (CLS)          [B, D]           = `audio_feature`
//!   → Linear(D→out, no bias) → L2-normalise → × exp(log_logit_scale) (= 20)   [B, out]
//! ```
//!
//! Details checked in the reference:
//! * The audio trunk has **no** pre-transformer LayerNorm (`pre_transformer_ln=False`) and no
//!   final norm inside the trunk; the only norm after the blocks is the head LayerNorm.
//! * No layer scale (`layer_scale_type=None`). Drop path (0 → 0.1 over the blocks) and all
//!   dropouts are identity at inference.
//! * `add_bias_kv=True`: after the packed q/k/v projection, the learned `bias_k`/`bias_v`
//!   (already in the projected space) are appended as one extra key/value position that every
//!   query attends to. No attention mask.
//! * The logit scale is the non-learnable buffer `modality_postprocessors.audio.1.log_logit_scale`
//!   (ln 20), applied as `clip(exp(·), max=100)`.
//! * The position table is used as is; the reference would try a (square-only) interpolation
//!   for any other patch count, so here a mel of another size is an error.
//!
//! Weights (ImageBind state-dict root, `audio_encoder.` in Video-LLaMA):
//! `modality_preprocessors.audio.{cls_token [1,1,D], pos_embedding_helper.pos_embed [1,1+N,D],
//! rgbt_stem.proj.weight [D,1,k,k], rgbt_stem.norm_layer.*}`,
//! `modality_trunks.audio.blocks.{i}.{norm_1,norm_2,attn.in_proj_weight [3D,D],
//! attn.in_proj_bias [3D], attn.bias_k [1,1,D], attn.bias_v [1,1,D], attn.out_proj.*, mlp.fc1.*,
//! mlp.fc2.*}`, `modality_heads.audio.{0 (LayerNorm), 2.weight [out,D]}`,
//! `modality_postprocessors.audio.1.log_logit_scale []`.

use candle_core::{bail, DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;
use videollama_nn::attention::{attention, AttentionMask};
use videollama_nn::{
    layer_norm, linear, linear_no_bias, quantize_in_scope, Activation, LayerNorm, Linear,
};

/// State-dict prefix of the audio preprocessor (stem, CLS, position table).
pub const PREPROCESSOR_PREFIX: &str = "modality_preprocessors.audio";
/// State-dict prefix of the audio transformer trunk.
pub const TRUNK_PREFIX: &str = "modality_trunks.audio";
/// State-dict prefix of the audio head (LayerNorm, select CLS, Linear).
pub const HEAD_PREFIX: &str = "modality_heads.audio";
/// The stored `log_logit_scale` buffer of the audio postprocessor.
pub const LOG_LOGIT_SCALE_KEY: &str = "modality_postprocessors.audio.1.log_logit_scale";
/// `LearnableLogitScaling.max_logit_scale`: the scale is clipped to this.
pub const MAX_LOGIT_SCALE: f64 = 100.0;
/// `torch.nn.functional.normalize` default epsilon (the norm is clamped to at least this).
const NORMALIZE_EPS: f64 = 1e-12;

/// Sizes of the ImageBind audio branch.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageBindAudioConfig {
    /// Trunk width `D` (768 for ImageBind-huge).
    pub embed_dim: usize,
    /// Number of transformer blocks (12).
    pub num_blocks: usize,
    /// Attention heads (12); not recoverable from the weights.
    pub num_heads: usize,
    /// MLP hidden width (`mlp_ratio · D` = 4·D).
    pub mlp_hidden: usize,
    /// Stem convolution kernel (16).
    pub kernel_size: usize,
    /// Stem convolution stride (10); not recoverable from the weights.
    pub stride: usize,
    /// Mel bins of the input, the height `M` (128).
    pub num_mel_bins: usize,
    /// Frames of the input, the width `T` (204).
    pub target_len: usize,
    /// Output width of the head Linear (1024).
    pub out_embed_dim: usize,
    /// Epsilon of the stem LayerNorm (PyTorch default 1e-5).
    pub stem_eps: f64,
    /// Epsilon of `norm_1` / `norm_2` in every block (1e-6).
    pub block_eps: f64,
    /// Epsilon of the head LayerNorm (1e-6).
    pub head_eps: f64,
    /// Multiplier after the L2 normalisation: `min(exp(log_logit_scale), 100)` (20).
    pub logit_scale: f64,
}

impl ImageBindAudioConfig {
    /// The published `imagebind_huge()` audio branch: width 768, 12 blocks, 12 heads,
    /// output 1024 (86,235,648 parameters).
    pub fn imagebind_huge() -> Self {
        Self {
            embed_dim: 768,
            num_blocks: 12,
            num_heads: 12,
            mlp_hidden: 4 * 768,
            kernel_size: 16,
            stride: 10,
            num_mel_bins: 128,
            target_len: 204,
            out_embed_dim: 1024,
            stem_eps: 1e-5,
            block_eps: 1e-6,
            head_eps: 1e-6,
            logit_scale: 20.0,
        }
    }

    /// Reads the sizes from the tensors of an ImageBind state dict (`vb` at its root, i.e. the
    /// `audio_encoder.` prefix of Video-LLaMA): width, kernel, blocks, MLP width, output width
    /// and the logit scale (from the stored buffer when present, else the reference's 20).
    /// `num_heads` cannot be read from the weights. Stride, mel bins and frame count keep the
    /// reference values (10, 128, 204); the position table must fit the patch grid they give.
    pub fn from_weights(vb: &VarBuilder, num_heads: usize) -> Result<Self> {
        let pre = vb.pp(PREPROCESSOR_PREFIX);
        let proj = pre.pp("rgbt_stem.proj").get_unchecked("weight")?;
        let (embed_dim, in_ch, kh, kw) = proj.dims4()?;
        if in_ch != 1 || kh != kw {
            bail!(
                "ImageBind audio: stem weight {:?} is not [D, 1, k, k]",
                proj.dims()
            );
        }
        let trunk = vb.pp(TRUNK_PREFIX);
        let mut num_blocks = 0;
        while trunk.contains_tensor(&format!("blocks.{num_blocks}.norm_1.weight")) {
            num_blocks += 1;
        }
        if num_blocks == 0 {
            bail!("ImageBind audio: no `{TRUNK_PREFIX}.blocks.0.*` in the weights");
        }
        let (mlp_hidden, _) = trunk
            .pp("blocks.0.mlp.fc1")
            .get_unchecked("weight")?
            .dims2()?;
        let (out_embed_dim, _) = vb
            .pp(HEAD_PREFIX)
            .pp("2")
            .get_unchecked("weight")?
            .dims2()?;
        let logit_scale = if vb.contains_tensor(LOG_LOGIT_SCALE_KEY) {
            let log_scale = vb
                .get_unchecked_dtype(LOG_LOGIT_SCALE_KEY, DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let [log_scale] = log_scale[..] else {
                bail!("ImageBind audio: {LOG_LOGIT_SCALE_KEY} is not a scalar");
            };
            // torch: clip(log_logit_scale.exp(), max=100), evaluated in f32.
            (log_scale.exp() as f64).min(MAX_LOGIT_SCALE)
        } else {
            20.0
        };
        let base = Self::imagebind_huge();
        let cfg = Self {
            embed_dim,
            num_blocks,
            num_heads,
            mlp_hidden,
            kernel_size: kh,
            out_embed_dim,
            logit_scale,
            ..base
        };
        cfg.validate()?;
        let pos = pre.pp("pos_embedding_helper").get_unchecked("pos_embed")?;
        if pos.dims() != [1, cfg.num_tokens(), embed_dim] {
            bail!(
                "ImageBind audio: pos_embed {:?} does not fit a {}×{} mel (k {}, stride {}): \
                 expected [1, {}, {embed_dim}]",
                pos.dims(),
                cfg.num_mel_bins,
                cfg.target_len,
                cfg.kernel_size,
                cfg.stride,
                cfg.num_tokens()
            );
        }
        Ok(cfg)
    }

    /// Checks the sizes the forward pass relies on.
    #[allow(clippy::manual_is_multiple_of)] // `is_multiple_of` needs Rust 1.87; MSRV is 1.85
    pub fn validate(&self) -> Result<()> {
        if self.num_heads == 0 || self.embed_dim % self.num_heads != 0 {
            bail!(
                "ImageBind audio: embed_dim {} is not divisible by num_heads {}",
                self.embed_dim,
                self.num_heads
            );
        }
        if self.kernel_size == 0
            || self.stride == 0
            || self.num_mel_bins < self.kernel_size
            || self.target_len < self.kernel_size
        {
            bail!(
                "ImageBind audio: kernel {} / stride {} do not fit a {}×{} mel",
                self.kernel_size,
                self.stride,
                self.num_mel_bins,
                self.target_len
            );
        }
        Ok(())
    }

    /// Per-head width (64 for ImageBind-huge).
    pub fn head_dim(&self) -> usize {
        self.embed_dim / self.num_heads.max(1)
    }

    /// Patch grid `(rows over mel bins, columns over frames)` of the stem conv: (12, 19).
    pub fn patch_grid(&self) -> (usize, usize) {
        let side = |n: usize| (n.saturating_sub(self.kernel_size)) / self.stride.max(1) + 1;
        (side(self.num_mel_bins), side(self.target_len))
    }

    /// Patch tokens without CLS (228).
    pub fn num_patches(&self) -> usize {
        let (h, w) = self.patch_grid();
        h * w
    }

    /// Tokens in the trunk, CLS included (229 = rows of the position table).
    pub fn num_tokens(&self) -> usize {
        self.num_patches() + 1
    }

    /// Parameters of the audio branch as PyTorch counts them (the `log_logit_scale` buffer
    /// excluded): 86,235,648 for [`Self::imagebind_huge`].
    pub fn param_count(&self) -> u64 {
        let d = self.embed_dim as u64;
        let f = self.mlp_hidden as u64;
        let k = self.kernel_size as u64;
        let stem = d * k * k + 2 * d; // conv (no bias) + LayerNorm
        let tokens = d + self.num_tokens() as u64 * d; // cls_token + pos_embed
        let attn = (3 * d * d + 3 * d) + 2 * d + (d * d + d); // in_proj, bias_k/v, out_proj
        let block = attn + 2 * (2 * d) + (d * f + f) + (f * d + d);
        let head = 2 * d + d * self.out_embed_dim as u64;
        stem + tokens + self.num_blocks as u64 * block + head
    }
}

/// `nn.MultiheadAttention(embed_dim, num_heads, bias=True, add_bias_kv=True)` as self-attention.
#[derive(Debug, Clone)]
struct BiasKvAttention {
    /// Packed q/k/v projection `[3D, D]` + bias `[3D]`.
    in_proj: Linear,
    /// Learned extra key / value, `[1, H, 1, Dh]`.
    bias_k: Tensor,
    bias_v: Tensor,
    out_proj: Linear,
    heads: usize,
    head_dim: usize,
}

impl BiasKvAttention {
    fn new(cfg: &ImageBindAudioConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.embed_dim;
        let (h, hd) = (cfg.num_heads, cfg.head_dim());
        // The packed weight is stored as `in_proj_weight` / `in_proj_bias`, not `in_proj.*`.
        let in_proj = quantize_in_scope(Linear::new(
            vb.get((3 * d, d), "in_proj_weight")?,
            Some(vb.get(3 * d, "in_proj_bias")?),
        ))?;
        Ok(Self {
            in_proj,
            bias_k: vb.get((1, 1, d), "bias_k")?.reshape((1, h, 1, hd))?,
            bias_v: vb.get((1, 1, d), "bias_v")?.reshape((1, h, 1, hd))?,
            out_proj: linear(d, d, vb.pp("out_proj"))?,
            heads: h,
            head_dim: hd,
        })
    }

    /// `[B, L, D]` → `[B, L, D]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, l, d) = x.dims3()?;
        let (h, hd) = (self.heads, self.head_dim);
        let qkv = self.in_proj.forward(x)?; // [B, L, 3D]
        let heads = |i: usize| -> Result<Tensor> {
            qkv.narrow(2, i * d, d)?
                .reshape((b, l, h, hd))?
                .transpose(1, 2)?
                .contiguous() // [B, H, L, Dh]
        };
        let (q, k, v) = (heads(0)?, heads(1)?, heads(2)?);
        // add_bias_kv: one extra key/value position (the same for every batch row).
        let extra = |t: &Tensor| t.to_dtype(x.dtype())?.broadcast_as((b, h, 1, hd));
        let k = Tensor::cat(&[&k, &extra(&self.bias_k)?], 2)?; // [B, H, L+1, Dh]
        let v = Tensor::cat(&[&v, &extra(&self.bias_v)?], 2)?;
        let scale = (hd as f64).powf(-0.5);
        let o = attention(&q, &k, &v, scale, AttentionMask::None)?; // [B, H, L, Dh]
        let o = o.transpose(1, 2)?.reshape((b, l, d))?;
        self.out_proj.forward(&o)
    }
}

/// `BlockWithMasking` without layer scale: pre-LN attention and MLP residuals.
#[derive(Debug, Clone)]
struct Block {
    norm_1: LayerNorm,
    attn: BiasKvAttention,
    norm_2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl Block {
    fn new(cfg: &ImageBindAudioConfig, vb: VarBuilder) -> Result<Self> {
        let (d, f) = (cfg.embed_dim, cfg.mlp_hidden);
        Ok(Self {
            norm_1: layer_norm(d, cfg.block_eps, vb.pp("norm_1"))?,
            attn: BiasKvAttention::new(cfg, vb.pp("attn"))?,
            norm_2: layer_norm(d, cfg.block_eps, vb.pp("norm_2"))?,
            fc1: linear(d, f, vb.pp("mlp.fc1"))?,
            fc2: linear(f, d, vb.pp("mlp.fc2"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = (x + self.attn.forward(&self.norm_1.forward(x)?)?)?;
        let y = Activation::Gelu.forward(&self.fc1.forward(&self.norm_2.forward(&x)?)?)?;
        x + self.fc2.forward(&y)?
    }
}

/// Both outputs of `get_audio_feature`, batch-first.
#[derive(Debug, Clone)]
pub struct ImageBindAudioOutput {
    /// Head LayerNorm applied to the CLS token, before the head Linear: `[B, D]`
    /// (`audio_feature`; `[B, S, D]` for a clip-list input).
    pub cls_features: Tensor,
    /// Head Linear → L2-normalise → × logit scale: `[B, out]` (`[B, S, out]` for clip lists).
    /// This is what Video-LLaMA's audio Q-Former consumes.
    pub embeddings: Tensor,
}

/// The ImageBind audio encoder.
#[derive(Debug, Clone)]
pub struct ImageBindAudio {
    cfg: ImageBindAudioConfig,
    /// Stem conv weight `[D, 1, k, k]`.
    stem_weight: Tensor,
    stem_norm: LayerNorm,
    /// `[1, 1, D]`.
    cls_token: Tensor,
    /// `[1, 1+N, D]`.
    pos_embed: Tensor,
    blocks: Vec<Block>,
    head_norm: LayerNorm,
    head_proj: Linear,
}

impl ImageBindAudio {
    /// Loads the audio branch; `vb` is the ImageBind state-dict root (the keys start with
    /// `modality_preprocessors.audio.`, …). The logit scale comes from `cfg`
    /// (see [`ImageBindAudioConfig::from_weights`]).
    pub fn new(cfg: &ImageBindAudioConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let (d, k) = (cfg.embed_dim, cfg.kernel_size);
        let pre = vb.pp(PREPROCESSOR_PREFIX);
        let trunk = vb.pp(TRUNK_PREFIX).pp("blocks");
        let head = vb.pp(HEAD_PREFIX);
        Ok(Self {
            stem_weight: pre.pp("rgbt_stem.proj").get((d, 1, k, k), "weight")?,
            stem_norm: layer_norm(d, cfg.stem_eps, pre.pp("rgbt_stem.norm_layer"))?,
            cls_token: pre.get((1, 1, d), "cls_token")?,
            pos_embed: pre
                .pp("pos_embedding_helper")
                .get((1, cfg.num_tokens(), d), "pos_embed")?,
            blocks: (0..cfg.num_blocks)
                .map(|i| Block::new(cfg, trunk.pp(i)))
                .collect::<Result<_>>()?,
            head_norm: layer_norm(d, cfg.head_eps, head.pp("0"))?,
            head_proj: linear_no_bias(d, cfg.out_embed_dim, head.pp("2"))?,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &ImageBindAudioConfig {
        &self.cfg
    }

    /// Output width (`out_embed_dim`).
    pub fn out_dim(&self) -> usize {
        self.cfg.out_embed_dim
    }

    /// `mel [B, 1, M, T]` → `[B, out]`, or a clip list `[B, S, 1, M, T]` → `[B, S, out]`
    /// (the per-clip L2-normalised, ×20 embeddings).
    pub fn forward(&self, mel: &Tensor) -> Result<Tensor> {
        Ok(self.forward_with_stages(mel)?.embeddings)
    }

    /// As [`Self::forward`], also returning the CLS features after the head LayerNorm
    /// (Video-LLaMA's `get_audio_feature` returns both).
    pub fn forward_with_stages(&self, mel: &Tensor) -> Result<ImageBindAudioOutput> {
        let cfg = &self.cfg;
        let (m, t) = (cfg.num_mel_bins, cfg.target_len);
        // A clip list [B, S, 1, M, T] is run as B·S clips and reshaped back (as the reference).
        let (x, lead): (Tensor, Vec<usize>) = match mel.dims() {
            &[b, 1, mm, tt] if (mm, tt) == (m, t) => (mel.clone(), vec![b]),
            &[b, s, 1, mm, tt] if (mm, tt) == (m, t) => {
                (mel.reshape((b * s, 1, m, t))?, vec![b, s])
            }
            other => bail!(
                "ImageBind audio expects a mel [B, 1, {m}, {t}] or [B, S, 1, {m}, {t}], got {other:?}"
            ),
        };
        let n = x.dim(0)?;
        let d = cfg.embed_dim;
        let x = x.to_dtype(self.stem_weight.dtype())?;

        // Stem: overlapping patches (k16, s10) → tokens in (mel row, frame column) order.
        let x = x.conv2d(&self.stem_weight, 0, cfg.stride, 1, 1)?; // [n, D, gh, gw]
        let x = x.flatten_from(2)?.transpose(1, 2)?.contiguous()?; // [n, N, D]
        let x = self.stem_norm.forward(&x)?;
        let cls = self.cls_token.broadcast_as((n, 1, d))?;
        let mut x = Tensor::cat(&[&cls, &x], 1)?.broadcast_add(&self.pos_embed)?; // [n, 1+N, D]

        for block in &self.blocks {
            x = block.forward(&x)?;
        }

        // Head: the LayerNorm is per token, so normalising only the CLS row is the same.
        let cls_features = self.head_norm.forward(&x.narrow(1, 0, 1)?.squeeze(1)?)?; // [n, D]
        let y = self.head_proj.forward(&cls_features)?; // [n, out]
        let norm = y
            .sqr()?
            .sum_keepdim(D::Minus1)?
            .sqrt()?
            .clamp(NORMALIZE_EPS, f64::INFINITY)?;
        let embeddings = (y.broadcast_div(&norm)? * cfg.logit_scale)?;

        let reshape = |t: Tensor, w: usize| -> Result<Tensor> {
            let mut dims = lead.clone();
            dims.push(w);
            t.reshape(dims)
        };
        Ok(ImageBindAudioOutput {
            cls_features: reshape(cls_features, d)?,
            embeddings: reshape(embeddings, cfg.out_embed_dim)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_geometry() {
        let cfg = ImageBindAudioConfig::imagebind_huge();
        assert_eq!(cfg.patch_grid(), (12, 19));
        assert_eq!(cfg.num_tokens(), 229);
        assert_eq!(cfg.head_dim(), 64);
        cfg.validate().unwrap();
        let bad = ImageBindAudioConfig {
            num_heads: 7,
            ..cfg.clone()
        };
        assert!(bad.validate().is_err());
    }
}
