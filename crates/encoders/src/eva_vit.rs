//! EVA-CLIP ViT-g/14 in its BLIP-2 flavour (LAVIS `eva_vit.VisionTransformer` as built by
//! `create_eva_vit_g`), plus `ln_vision`, the LayerNorm every BLIP-2 derived model applies to
//! its output. Used by Video-LLaMA, MiniGPT4-Video and MA-LMM (spec §0.1).
//!
//! ```text
//! pixel_values [T, 3, S, S]
//!   → patch_embed.proj (Conv2d 3→W, k = s = p, with bias)     [T, N, W]     N = (S/p)²
//!   → prepend cls_token                                       [T, 1+N, W]
//!   → + pos_embed                                             [T, 1+N, W]
//!   → blocks[0..depth] (pre-LN, eps 1e-6)                     [T, 1+N, W]   = EvaVit::forward
//!   → ln_vision (LayerNorm(W), eps 1e-5, computed in f32)     [T, 1+N, W]   = EvaVit::forward_with_ln
//! ```
//!
//! Each block:
//!
//! ```text
//! x ─┬─ norm1 ─ qkv (no bias) + cat(q_bias, 0, v_bias) ─ attention ─ proj ─(+)─┬─ norm2 ─ fc1 ─ GELU(erf) ─ fc2 ─(+)─ out
//!    └──────────────────────────────────────────────────────────────────────────┘└──────────────────────────────────┘
//! ```
//!
//! There is no relative position bias, no layer-scale and no final norm (the reference's
//! `self.norm` is commented out): the output is the last block's residual stream, CLS first.
//!
//! Weights (`eva_vit_g.pth`, a bare state dict; the reference model key is
//! `visual_encoder.` + key): `cls_token [1,1,W]`, `pos_embed [1,1+N,W]`,
//! `patch_embed.proj.{weight [W,3,p,p], bias}`, `blocks.{i}.{norm1,norm2}.{weight,bias}`,
//! `blocks.{i}.attn.qkv.weight [3W,W]`, `blocks.{i}.attn.{q_bias,v_bias} [W]`,
//! `blocks.{i}.attn.proj.{weight,bias}`, `blocks.{i}.mlp.fc1.{weight [M,W], bias}`,
//! `blocks.{i}.mlp.fc2.{weight [W,M], bias}`.
//!
//! **39 of 40 blocks.** LAVIS `eva_vit_g.pth` holds all 40 blocks of EVA-CLIP-g, but
//! `create_eva_vit_g` builds `depth=39` and loads with `strict=False`, so `blocks.39.*` is
//! silently ignored and BLIP-2 uses the output of block 39 (index 38). [`EvaVitConfig::from_weights`]
//! therefore takes a depth override, and [`EvaVit::new`] only reads the first `depth` blocks.
//!
//! `ln_vision` lives in a different file (the BLIP-2 Q-Former checkpoint, key `ln_vision.*`), so it
//! is a separate [`LnVision`]; MiniGPT4-Video builds a fresh one ([`LnVision::identity`]).

use candle_core::{bail, DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;
use videollama_nn::attention::{attention, AttentionMask};
use videollama_nn::{layer_norm, linear, linear_no_bias, Activation, LayerNorm, Linear};

use crate::encoder_layer::patch_embed;

/// Input channels of the patch embedding (RGB).
const IN_CHANNELS: usize = 3;

/// Shape of an EVA ViT (BLIP-2 flavour). The head count cannot be read from the weights, so it
/// is always given explicitly.
#[derive(Debug, Clone, PartialEq)]
pub struct EvaVitConfig {
    /// Input side in pixels (224); the reference asserts the input is exactly this size.
    pub image_size: usize,
    /// Patch side in pixels (14).
    pub patch_size: usize,
    /// Embedding width `W` (1408).
    pub width: usize,
    /// Blocks that run (39 for BLIP-2, even though the weights hold 40).
    pub depth: usize,
    /// Attention heads (16, head dim 88).
    pub num_heads: usize,
    /// MLP hidden size, `int(W · 4.3637)` (6144).
    pub mlp_hidden: usize,
    /// Epsilon of `norm1`/`norm2` in every block (`partial(nn.LayerNorm, eps=1e-6)`).
    pub layer_norm_eps: f64,
    /// Epsilon of `ln_vision` (torch's LayerNorm default, 1e-5).
    pub ln_vision_eps: f64,
}

impl EvaVitConfig {
    /// The published BLIP-2 ViT-g: `create_eva_vit_g(img_size=224)` (width 1408, 39 blocks,
    /// `1408 // 88` = 16 heads, MLP `int(1408 · 4.3637)` = 6144, 224 px, patch 14).
    pub fn vit_g() -> Self {
        Self {
            image_size: 224,
            patch_size: 14,
            width: 1408,
            depth: 39,
            num_heads: 16,
            mlp_hidden: 6144,
            layer_norm_eps: 1e-6,
            ln_vision_eps: 1e-5,
        }
    }

    /// Reads the shape from the weights under `vb` (positioned where `cls_token` is):
    /// width from `cls_token [1,1,W]`, patch size from `patch_embed.proj.weight [W,3,p,p]`,
    /// image size `g·p` from `pos_embed [1, g²+1, W]`, MLP hidden size from
    /// `blocks.0.mlp.fc1` (its bias `[M]`, the same number as the weight's rows, read without
    /// loading the `[M, W]` matrix), and depth = the number of consecutive `blocks.{i}.` present.
    ///
    /// `depth`, when given, overrides the block count: `Some(39)` over LAVIS `eva_vit_g.pth`
    /// (40 blocks) reproduces `create_eva_vit_g`, whose `strict=False` load ignores the 40th.
    /// Asking for more blocks than the weights hold is an error.
    pub fn from_weights(vb: &VarBuilder, num_heads: usize, depth: Option<usize>) -> Result<Self> {
        Self::from_shapes(
            |name| {
                if vb.contains_tensor(name) {
                    vb.get_unchecked(name).ok().map(|t| t.dims().to_vec())
                } else {
                    None
                }
            },
            num_heads,
            depth,
        )
    }

    /// [`EvaVitConfig::from_weights`] over any shape lookup: `shape_of(key)` returns the shape of
    /// the tensor stored under `key` (no prefix), or `None` when there is none.
    pub fn from_shapes(
        shape_of: impl Fn(&str) -> Option<Vec<usize>>,
        num_heads: usize,
        depth: Option<usize>,
    ) -> Result<Self> {
        let need = |name: &str| {
            shape_of(name).ok_or_else(|| {
                candle_core::Error::Msg(format!("EVA ViT: no tensor `{name}` in the weights"))
            })
        };
        let cls = need("cls_token")?;
        let width = match cls.as_slice() {
            [1, 1, w] if *w > 0 => *w,
            other => bail!("EVA ViT: cls_token has shape {other:?}, expected [1, 1, W]"),
        };
        let patch_size = match need("patch_embed.proj.weight")?.as_slice() {
            [w, c, p, q] if *w == width && *c == IN_CHANNELS && p == q && *p > 0 => *p,
            other => bail!(
                "EVA ViT: patch_embed.proj.weight has shape {other:?}, expected [{width}, {IN_CHANNELS}, p, p]"
            ),
        };
        let positions = match need("pos_embed")?.as_slice() {
            [1, n, w] if *w == width => *n,
            other => {
                bail!("EVA ViT: pos_embed has shape {other:?}, expected [1, g·g + 1, {width}]")
            }
        };
        let grid = (positions.saturating_sub(1) as f64).sqrt().round() as usize;
        if grid == 0 || grid * grid + 1 != positions {
            bail!("EVA ViT: pos_embed has {positions} rows, not a square patch grid plus CLS");
        }
        let mlp_hidden = match need("blocks.0.mlp.fc1.bias")?.as_slice() {
            [m] if *m > 0 => *m,
            other => bail!("EVA ViT: blocks.0.mlp.fc1.bias has shape {other:?}, expected [M]"),
        };
        let stored = (0..)
            .take_while(|i| shape_of(&format!("blocks.{i}.attn.qkv.weight")).is_some())
            .count();
        let depth = match depth {
            None => stored,
            Some(d) if d <= stored => d,
            Some(d) => bail!("EVA ViT: asked for {d} blocks but the weights hold {stored}"),
        };
        if depth == 0 {
            bail!("EVA ViT: the weights hold no blocks (no `blocks.0.attn.qkv.weight`)");
        }
        let cfg = Self {
            image_size: grid * patch_size,
            patch_size,
            width,
            depth,
            num_heads,
            mlp_hidden,
            ..Self::vit_g()
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks sizes that would otherwise fail deep inside a forward pass.
    #[allow(clippy::manual_is_multiple_of)] // `is_multiple_of` needs Rust 1.87; MSRV is 1.85
    pub fn validate(&self) -> Result<()> {
        if self.num_heads == 0 || self.width % self.num_heads != 0 {
            bail!(
                "EVA ViT: width {} is not divisible by num_heads {}",
                self.width,
                self.num_heads
            );
        }
        if self.patch_size == 0 || self.image_size % self.patch_size != 0 {
            bail!(
                "EVA ViT: image_size {} is not a multiple of patch_size {}",
                self.image_size,
                self.patch_size
            );
        }
        if self.depth == 0 || self.mlp_hidden == 0 {
            bail!("EVA ViT: depth and mlp_hidden must be positive");
        }
        Ok(())
    }

    /// `W / num_heads` (88 for ViT-g).
    pub fn head_dim(&self) -> usize {
        self.width / self.num_heads.max(1)
    }

    /// Patches per side, `image_size / patch_size` (16).
    /// This config at another input size (`create_eva_vit_g(img_size=…)`): the weights'
    /// position table is then interpolated at load ([`EvaVit::new`], LAVIS
    /// `interpolate_pos_embed`). The size must be a whole number of patches.
    pub fn at_image_size(&self, image_size: usize) -> Result<Self> {
        if image_size == 0 || image_size % self.patch_size.max(1) != 0 {
            bail!(
                "EVA ViT: image_size {image_size} is not a multiple of the patch size {}",
                self.patch_size
            );
        }
        Ok(Self {
            image_size,
            ..self.clone()
        })
    }

    pub fn grid_size(&self) -> usize {
        self.image_size / self.patch_size.max(1)
    }

    /// Tokens per frame including CLS, `g² + 1` (257).
    pub fn num_tokens(&self) -> usize {
        self.grid_size().pow(2) + 1
    }

    /// Parameters of the ViT as built (embeddings and `depth` blocks; `ln_vision` not included),
    /// computed from the config alone. `vit_g()` gives 985,894,528.
    pub fn param_count(&self) -> u64 {
        let w = self.width as u64;
        let m = self.mlp_hidden as u64;
        let p = self.patch_size as u64;
        let embeddings = (w * IN_CHANNELS as u64 * p * p + w) + w + self.num_tokens() as u64 * w;
        let block = 2 * (2 * w)       // norm1, norm2
            + 3 * w * w + 2 * w         // qkv weight, q_bias, v_bias
            + (w * w + w)               // proj
            + (m * w + m)               // fc1
            + (w * m + w); // fc2
        embeddings + self.depth as u64 * block
    }
}

/// `blocks.{i}.attn`: fused qkv projection with the BEiT-style `q_bias`/`v_bias`.
#[derive(Debug, Clone)]
struct Attention {
    qkv: Linear,
    /// `cat(q_bias, zeros, v_bias)` `[3W]`: the key projection has no bias.
    qkv_bias: Tensor,
    proj: Linear,
    heads: usize,
    head_dim: usize,
    scale: f64,
}

impl Attention {
    fn new(cfg: &EvaVitConfig, vb: VarBuilder) -> Result<Self> {
        let w = cfg.width;
        let q_bias = vb.get(w, "q_bias")?;
        let v_bias = vb.get(w, "v_bias")?;
        let qkv_bias = Tensor::cat(&[&q_bias, &q_bias.zeros_like()?, &v_bias], 0)?;
        let head_dim = cfg.head_dim();
        Ok(Self {
            qkv: linear_no_bias(w, 3 * w, vb.pp("qkv"))?,
            qkv_bias,
            proj: linear(w, w, vb.pp("proj"))?,
            heads: cfg.num_heads,
            head_dim,
            scale: (head_dim as f64).powf(-0.5),
        })
    }

    /// `[B, L, W]` → `[B, L, W]`, full (unmasked) attention.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, l, w) = xs.dims3()?;
        // [B, L, 3W] → [B, L, 3, H, D] → [3, B, H, L, D], as the reference's reshape/permute.
        let qkv = self
            .qkv
            .forward(xs)?
            .broadcast_add(&self.qkv_bias)?
            .reshape((b, l, 3, self.heads, self.head_dim))?
            .permute((2, 0, 3, 1, 4))?;
        let q = qkv.get(0)?.contiguous()?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let o = attention(&q, &k, &v, self.scale, AttentionMask::None)?; // [B, H, L, D]
        let o = o.transpose(1, 2)?.reshape((b, l, w))?;
        self.proj.forward(&o)
    }
}

/// `blocks.{i}`: pre-LN residual block.
#[derive(Debug, Clone)]
struct Block {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl Block {
    fn new(cfg: &EvaVitConfig, vb: VarBuilder) -> Result<Self> {
        let (w, m) = (cfg.width, cfg.mlp_hidden);
        Ok(Self {
            norm1: layer_norm(w, cfg.layer_norm_eps, vb.pp("norm1"))?,
            attn: Attention::new(cfg, vb.pp("attn"))?,
            norm2: layer_norm(w, cfg.layer_norm_eps, vb.pp("norm2"))?,
            fc1: linear(w, m, vb.pp("mlp").pp("fc1"))?,
            fc2: linear(m, w, vb.pp("mlp").pp("fc2"))?,
        })
    }

    /// `[B, L, W]` → `[B, L, W]`.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let xs = (xs + self.attn.forward(&self.norm1.forward(xs)?)?)?;
        let h = self.fc1.forward(&self.norm2.forward(&xs)?)?;
        // nn.GELU() default: the exact erf form.
        let h = self.fc2.forward(&Activation::Gelu.forward(&h)?)?;
        xs + h
    }
}

/// `ln_vision`: LayerNorm(W) over the ViT output. As BLIP-2's fp16-safe `LayerNorm` subclass,
/// it always computes in f32 (weights kept in f32) and casts the result back to the input dtype.
#[derive(Debug, Clone)]
pub struct LnVision {
    norm: LayerNorm,
}

impl LnVision {
    /// Loads `weight`/`bias` `[W]` from `vb` (positioned at `ln_vision`, e.g. the BLIP-2
    /// Q-Former checkpoint's root `.pp("ln_vision")`), as f32 whatever `vb`'s dtype.
    pub fn new(cfg: &EvaVitConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm: layer_norm(cfg.width, cfg.ln_vision_eps, vb.to_dtype(DType::F32))?,
        })
    }

    /// A freshly initialised `ln_vision` (weight 1, bias 0), as MiniGPT4-Video builds it.
    pub fn identity(cfg: &EvaVitConfig, device: &Device) -> Result<Self> {
        let weight = Tensor::ones(cfg.width, DType::F32, device)?;
        let bias = Tensor::zeros(cfg.width, DType::F32, device)?;
        Ok(Self {
            norm: LayerNorm::new(weight, bias, cfg.ln_vision_eps),
        })
    }

    /// `[..., W]` → `[..., W]` in the input's dtype.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let dtype = xs.dtype();
        self.norm
            .forward(&xs.to_dtype(DType::F32)?)?
            .to_dtype(dtype)
    }
}

/// The EVA ViT (`visual_encoder`), first `cfg.depth` blocks.
/// `pos_embed [1, 1+g², W]` for the config's grid g. A table stored for another grid g0 is
/// resized as LAVIS `interpolate_pos_embed` does when the model is built for another image size:
/// CLS row kept, the g0×g0 rows bicubic-interpolated per channel to g×g (torch's
/// `F.interpolate`, align_corners=False, in f32, bit for bit).
fn load_pos_embed(cfg: &EvaVitConfig, vb: &VarBuilder) -> Result<Tensor> {
    let w = cfg.width;
    let stored = vb.get_unchecked("pos_embed")?;
    let rows = match stored.dims() {
        &[1, n, c] if c == w => n,
        d => bail!("EVA ViT: pos_embed has shape {d:?}, expected [1, g·g + 1, {w}]"),
    };
    if rows == cfg.num_tokens() {
        return stored.to_dtype(vb.dtype());
    }
    let g0 = (rows.saturating_sub(1) as f64).sqrt().round() as usize;
    if g0 == 0 || g0 * g0 + 1 != rows {
        bail!("EVA ViT: pos_embed has {rows} rows, not a square patch grid plus CLS");
    }
    let g = cfg.grid_size();
    tracing::info!("EVA ViT: position interpolate from {g0}x{g0} to {g}x{g}");
    let table: Vec<f32> = stored
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1()?;
    // [1+g0², W] row-major → per channel a g0×g0 plane → g×g.
    let mut out = vec![0f32; (1 + g * g) * w];
    out[..w].copy_from_slice(&table[..w]);
    for c in 0..w {
        let plane: Vec<f32> = (0..g0 * g0).map(|i| table[(1 + i) * w + c]).collect();
        let resized = videollama_nn::torch_resize::bicubic_plane(&plane, g0, g0, g, g);
        for (i, v) in resized.into_iter().enumerate() {
            out[(1 + i) * w + c] = v;
        }
    }
    Tensor::from_vec(out, (1, 1 + g * g, w), vb.device())?.to_dtype(vb.dtype())
}

#[derive(Debug, Clone)]
pub struct EvaVit {
    /// `[1, 1, W]`.
    cls_token: Tensor,
    /// `[1, 1+N, W]`.
    pos_embed: Tensor,
    /// `[W, 3, p, p]` and `[W]`.
    patch_weight: Tensor,
    patch_bias: Tensor,
    blocks: Vec<Block>,
    cfg: EvaVitConfig,
}

impl EvaVit {
    /// Loads the embeddings and blocks `0..cfg.depth` from `vb` (positioned where `cls_token`
    /// is: the root of `eva_vit_g.pth`, or `visual_encoder` in a full model dict). Later blocks
    /// in the weights are never read. Every shape is checked against `cfg`.
    pub fn new(cfg: &EvaVitConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let (w, p) = (cfg.width, cfg.patch_size);
        let proj = vb.pp("patch_embed").pp("proj");
        let blocks = (0..cfg.depth)
            .map(|i| Block::new(cfg, vb.pp("blocks").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            cls_token: vb.get((1, 1, w), "cls_token")?,
            pos_embed: load_pos_embed(cfg, &vb)?,
            patch_weight: proj.get((w, IN_CHANNELS, p, p), "weight")?,
            patch_bias: proj.get(w, "bias")?,
            blocks,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &EvaVitConfig {
        &self.cfg
    }

    /// Number of blocks that run.
    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// `pixel_values [T, 3, S, S]` → `[T, 1+N, W]` (CLS first), the output of the last block
    /// before `ln_vision`. The input is cast to the weights' dtype; the output keeps that dtype.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let dims = pixel_values.dims();
        let s = self.cfg.image_size;
        let &[t, c, h, w] = dims else {
            bail!("EVA ViT expects pixel_values [T, {IN_CHANNELS}, {s}, {s}], got {dims:?}");
        };
        if t == 0 || c != IN_CHANNELS || h != s || w != s {
            bail!("EVA ViT expects pixel_values [T, {IN_CHANNELS}, {s}, {s}] with T ≥ 1, got {dims:?}");
        }
        let x = pixel_values.to_dtype(self.patch_weight.dtype())?;
        let patches = patch_embed(
            &x,
            &self.patch_weight,
            Some(&self.patch_bias),
            self.cfg.patch_size,
        )?; // [T, N, W]
        let cls = self.cls_token.broadcast_as((t, 1, self.cfg.width))?;
        let mut xs = Tensor::cat(&[&cls, &patches], 1)?.broadcast_add(&self.pos_embed)?;
        for block in &self.blocks {
            xs = block.forward(&xs)?;
        }
        Ok(xs)
    }

    /// `ln_vision(forward(pixel_values))`: `[T, 3, S, S]` → `[T, 1+N, W]`, the image embeddings
    /// the BLIP-2 Q-Former cross-attends to.
    pub fn forward_with_ln(&self, pixel_values: &Tensor, ln_vision: &LnVision) -> Result<Tensor> {
        ln_vision.forward(&self.forward(pixel_values)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn shapes(depth: usize) -> HashMap<String, Vec<usize>> {
        let mut m = HashMap::new();
        m.insert("cls_token".into(), vec![1, 1, 8]);
        m.insert("pos_embed".into(), vec![1, 10, 8]);
        m.insert("patch_embed.proj.weight".into(), vec![8, 3, 2, 2]);
        for i in 0..depth {
            m.insert(format!("blocks.{i}.attn.qkv.weight"), vec![24, 8]);
            m.insert(format!("blocks.{i}.mlp.fc1.bias"), vec![34]);
        }
        m
    }

    #[test]
    fn shapes_give_the_config() {
        let m = shapes(3);
        let cfg = EvaVitConfig::from_shapes(|k| m.get(k).cloned(), 2, None).unwrap();
        assert_eq!(
            (
                cfg.width,
                cfg.patch_size,
                cfg.image_size,
                cfg.mlp_hidden,
                cfg.depth
            ),
            (8, 2, 6, 34, 3)
        );
        let cfg = EvaVitConfig::from_shapes(|k| m.get(k).cloned(), 2, Some(2)).unwrap();
        assert_eq!(cfg.depth, 2);
        assert!(EvaVitConfig::from_shapes(|k| m.get(k).cloned(), 2, Some(4)).is_err());
        assert!(EvaVitConfig::from_shapes(|k| m.get(k).cloned(), 3, None).is_err());
    }

    #[test]
    fn bad_shapes_are_errors() {
        let mut m = shapes(1);
        m.insert("pos_embed".into(), vec![1, 11, 8]);
        assert!(EvaVitConfig::from_shapes(|k| m.get(k).cloned(), 2, None).is_err());
        let m = shapes(0);
        assert!(EvaVitConfig::from_shapes(|k| m.get(k).cloned(), 2, None).is_err());
    }

    /// `create_eva_vit_g(img_size)` with a table stored for another grid: LAVIS
    /// `interpolate_pos_embed` on a [1, 1+4·4, 3] table to a 7×7 grid, against torch 2.5.1 run on
    /// the same exact values (`F.interpolate(..., "bicubic", align_corners=False)`; CLS row kept):
    /// every value bit-identical. The stored size itself loads unchanged.
    #[test]
    fn position_table_is_interpolated_like_lavis() {
        let (g0, w) = (4usize, 3usize);
        let table: Vec<f32> = (0..1 + g0 * g0)
            .flat_map(|i| (0..w).map(move |c| ((i * 7 + c * 3) % 11) as f32 / 8.0 - 0.5))
            .collect();
        let stored = Tensor::from_vec(table.clone(), (1, 1 + g0 * g0, w), &Device::Cpu).unwrap();
        let vb = VarBuilder::from_tensors(
            HashMap::from([("pos_embed".to_string(), stored)]),
            DType::F32,
            &Device::Cpu,
        );
        let base = EvaVitConfig {
            width: w,
            patch_size: 2,
            image_size: 2 * g0,
            num_heads: 1,
            ..EvaVitConfig::vit_g()
        };
        let same: Vec<f32> = load_pos_embed(&base, &vb)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(same, table);
        let at7 = base.at_image_size(14).unwrap();
        let got: Vec<f32> = load_pos_embed(&at7, &vb)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let want: Vec<f32> = TORCH_4X4_TO_7X7
            .iter()
            .map(|&b| f32::from_bits(b))
            .collect();
        assert_eq!(got.len(), want.len());
        for (i, (g, t)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g.to_bits(),
                t.to_bits(),
                "row {} channel {}: {g} vs torch {t}",
                i / w,
                i % w
            );
        }
        assert!(
            base.at_image_size(15).is_err(),
            "not a whole number of patches"
        );
    }

    const TORCH_4X4_TO_7X7: [u32; 150] = [
        0xbf000000, 0xbe000000, 0x3e800000, 0x3f000a0f, 0x3f5c9301, 0xbed97a5c, 0x3e21be77,
        0x3f2e4769, 0x3d50c841, 0xbe56c060, 0x3ebd72af, 0x3f26f8fa, 0x3e9646e1, 0xbe17724b,
        0x3f176c40, 0x3f5482dc, 0xbe97856e, 0x3e028f78, 0x3f0b69b8, 0x3e9b41c3, 0xbe86cfd2,
        0x3e86598a, 0x3f49906a, 0xbf0336da, 0x3de29a0f, 0x3f222b0f, 0x3c457f07, 0x3ddf3c4b,
        0x3ebefccd, 0x3e3cdc55, 0x3e16b683, 0x3cb37471, 0x3ebdbddb, 0x3edd30a2, 0xbd8a4ce4,
        0x3e10808b, 0x3f0f90af, 0x3d84d7cc, 0xbe1dd8b1, 0x3e5c41ab, 0x3e84db33, 0xbe04f567,
        0xbd896461, 0x3ecbb335, 0xbd9b1d69, 0xbeab1b83, 0x3e7b6eb9, 0x3f08b84d, 0x3d8f6296,
        0xbd625aa9, 0x3eb3f7d9, 0x3f14cb0c, 0xbec34196, 0x3d54cc3d, 0x3f08a2c2, 0x3d475169,
        0xbebff935, 0x3e0d3c65, 0x3efef158, 0xbef2109e, 0xbe54c48f, 0x3e607638, 0x3d1877db,
        0xbedc0df0, 0xbd4076d9, 0x3ee47d4e, 0x3dd9e6b4, 0xbeb212b5, 0x3e2cf34d, 0x3e690708,
        0xbe616824, 0x3e907471, 0x3ea9618b, 0xbcdb40f0, 0x3ec6551b, 0xbc6600b2, 0x3dd8c003,
        0x3e000005, 0xbea79ad6, 0x3e53dabc, 0xbe0caa28, 0xbe16015e, 0x3ea53141, 0xbd03a366,
        0x3d0095c3, 0x3ec9865c, 0x3da61956, 0x3f0c0769, 0xbf123e9e, 0xbe48fa73, 0x3eba9619,
        0xbe27124f, 0x3e59e222, 0x3d84df47, 0x3eb1b4db, 0x3f390853, 0xbeb95aed, 0x3e069e3d,
        0x3f1ffc95, 0xbeeb725c, 0xbdac5a2d, 0x3e4accd3, 0x3d4d69a7, 0x3eda2769, 0xbdcfdf3e,
        0x3eeb1b83, 0x3f558dc4, 0xbe917092, 0x3dd13328, 0xbd49c500, 0x3ea6c75e, 0x3e8c8eff,
        0xbd3b33dd, 0x3ec27ab9, 0x3eebdeb3, 0xbc107e97, 0x3eceec50, 0x3e6cc240, 0x3e2e20d7,
        0x3ddefec5, 0xbd832def, 0x3eb2a4cf, 0xbdf6f765, 0xbd22ceeb, 0x3ec5874d, 0x3d86476d,
        0x3c6b2eee, 0x3ec75976, 0x3e73a81b, 0xbe9320d4, 0x3ec66db7, 0x3f4336dc, 0x3e40e52e,
        0x3d39c65b, 0x3f0367ee, 0x3f4a25c5, 0xbea506a6, 0x3dfae0d5, 0x3f3a990c, 0x3e465998,
        0xbeaed88a, 0x3e87a153, 0x3f35b01a, 0xbecdf1ed, 0xbe00ec89, 0x3eaf20bc, 0x3e4bcdf7,
        0xbec0142b, 0xb9215db5, 0x3f2cbd36,
    ];

    #[test]
    fn vit_g_numbers() {
        let c = EvaVitConfig::vit_g();
        assert_eq!((c.head_dim(), c.grid_size(), c.num_tokens()), (88, 16, 257));
        assert_eq!(c.mlp_hidden, (1408.0f64 * 4.3637) as usize);
        assert_eq!(c.num_heads, 1408 / 88);
        c.validate().unwrap();
    }
}
