//! The Qwen2-VL vision transformer (`Qwen2VisionTransformerPretrainedModel`, HF `visual.*`).
//!
//! ```text
//! pixel_values [N, C·tp·p·p] (patch rows in 2×2-block order, see videollama_media::qwen2_vl)
//!   ─patch_embed: Conv3d(k = s = (tp, p, p), no bias) as one matmul─► [N, D]
//!   ─blocks × depth: x + attn(norm1 x), x + mlp(norm2 x)
//!        attn: fused qkv [N, 3D] → q, k, v [heads, N, hd]; 2-D RoPE on q, k;
//!              attention only inside each temporal slice (cu_seqlens = h·w per slice)
//!        mlp: fc1 → hidden_act (quick_gelu in the released config) → fc2
//!   ─merger: ln_q → 4 consecutive rows (one 2×2 block) concatenated [N/4, 4D]
//!            → Linear(4D, 4D) → GELU (erf) → Linear(4D, hidden_size)─► [N/4, hidden_size]
//! ```
//!
//! 2-D RoPE: each patch row has a (row, column) patch coordinate in the same block order;
//! `inv_freq = 1/10000^(2i/(hd/2))` for i < hd/4 and the angles `[row·inv_freq, col·inv_freq]`
//! (hd/2 values) are applied rotate-half style (HF duplicates them to hd), in f32.
//! LayerNorm eps is 1e-6 everywhere (hard-coded in the reference).

use candle_core::{bail, DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;
use videollama_nn::attention::{attention, AttentionMask};
use videollama_nn::{layer_norm, linear, Activation, LayerNorm, Linear};

/// The reference's LayerNorm eps (not in the config).
pub const LN_EPS: f64 = 1e-6;

/// `vision_config` of a Qwen2-VL `config.json` (released field names).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Qwen2VlVisionConfig {
    #[serde(default = "d_depth")]
    pub depth: usize,
    #[serde(default = "d_embed")]
    pub embed_dim: usize,
    /// Output width of the merger (= the LLM's hidden size).
    #[serde(default = "d_hidden")]
    pub hidden_size: usize,
    #[serde(default = "d_act")]
    pub hidden_act: Activation,
    #[serde(default = "d_mlp_ratio")]
    pub mlp_ratio: f64,
    #[serde(default = "d_heads")]
    pub num_heads: usize,
    #[serde(default = "d_chans", alias = "in_channels")]
    pub in_chans: usize,
    #[serde(default = "d_patch")]
    pub patch_size: usize,
    #[serde(default = "d_merge")]
    pub spatial_merge_size: usize,
    #[serde(default = "d_tp")]
    pub temporal_patch_size: usize,
}

fn d_depth() -> usize {
    32
}
fn d_embed() -> usize {
    1280
}
fn d_hidden() -> usize {
    3584
}
fn d_act() -> Activation {
    Activation::QuickGelu
}
fn d_mlp_ratio() -> f64 {
    4.0
}
fn d_heads() -> usize {
    16
}
fn d_chans() -> usize {
    3
}
fn d_patch() -> usize {
    14
}
fn d_merge() -> usize {
    2
}
fn d_tp() -> usize {
    2
}

impl Qwen2VlVisionConfig {
    pub fn head_dim(&self) -> usize {
        self.embed_dim / self.num_heads.max(1)
    }
    /// `int(embed_dim · mlp_ratio)` as the reference computes it.
    pub fn mlp_hidden(&self) -> usize {
        (self.embed_dim as f64 * self.mlp_ratio) as usize
    }
    /// Values per patch row (`in_chans · tp · p²`).
    pub fn patch_dim(&self) -> usize {
        self.in_chans * self.temporal_patch_size * self.patch_size * self.patch_size
    }
    /// Rows the merger concatenates (`merge²`).
    pub fn merge_rows(&self) -> usize {
        self.spatial_merge_size * self.spatial_merge_size
    }

    #[allow(clippy::manual_is_multiple_of)] // `is_multiple_of` needs Rust 1.87; MSRV is 1.85
    pub fn validate(&self) -> Result<()> {
        if self.num_heads == 0 || self.embed_dim % self.num_heads != 0 {
            bail!(
                "vision_config: embed_dim {} is not divisible by num_heads {}",
                self.embed_dim,
                self.num_heads
            )
        }
        if self.head_dim() % 4 != 0 {
            bail!(
                "vision_config: head dim {} must be a multiple of 4 (2-D RoPE splits it into \
                 row and column halves of rotate-half pairs)",
                self.head_dim()
            )
        }
        if self.spatial_merge_size == 0 || self.patch_size == 0 || self.temporal_patch_size == 0 {
            bail!("vision_config: patch, temporal patch and merge sizes must be positive")
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
struct VisionBlock {
    norm1: LayerNorm,
    norm2: LayerNorm,
    qkv: Linear,
    proj: Linear,
    fc1: Linear,
    fc2: Linear,
}

impl VisionBlock {
    fn new(cfg: &Qwen2VlVisionConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.embed_dim;
        let m = cfg.mlp_hidden();
        Ok(Self {
            norm1: layer_norm(d, LN_EPS, vb.pp("norm1"))?,
            norm2: layer_norm(d, LN_EPS, vb.pp("norm2"))?,
            qkv: linear(d, 3 * d, vb.pp("attn").pp("qkv"))?,
            proj: linear(d, d, vb.pp("attn").pp("proj"))?,
            fc1: linear(d, m, vb.pp("mlp").pp("fc1"))?,
            fc2: linear(m, d, vb.pp("mlp").pp("fc2"))?,
        })
    }
}

/// What one forward produced, for the golden stage checks.
pub struct Qwen2VlVisionOutput {
    /// `[N, embed_dim]` patch embeddings.
    pub patch_embed_out: Tensor,
    /// `[N, embed_dim]` after the last block (before the merger).
    pub before_merger: Tensor,
    /// `[N / merge², hidden_size]` merger output = the LLM's visual tokens.
    pub merged: Tensor,
}

#[derive(Debug, Clone)]
pub struct Qwen2VlVision {
    cfg: Qwen2VlVisionConfig,
    /// `[embed_dim, C·tp·p·p]` (the Conv3d kernel flattened).
    patch_weight: Tensor,
    blocks: Vec<VisionBlock>,
    ln_q: LayerNorm,
    mlp0: Linear,
    mlp2: Linear,
    /// `[1, head_dim / 4]` f32.
    inv_freq: Vec<f32>,
}

impl Qwen2VlVision {
    /// Load from the `visual` VarBuilder (`patch_embed.proj.weight`, `blocks.N.*`, `merger.*`).
    pub fn new(cfg: &Qwen2VlVisionConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let d = cfg.embed_dim;
        let p = cfg.patch_size;
        let patch_weight = vb
            .pp("patch_embed")
            .pp("proj")
            .get((d, cfg.in_chans, cfg.temporal_patch_size, p, p), "weight")?
            .reshape((d, cfg.patch_dim()))?;
        let blocks = (0..cfg.depth)
            .map(|i| VisionBlock::new(cfg, vb.pp("blocks").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let merged = d * cfg.merge_rows();
        let mv = vb.pp("merger");
        let half = cfg.head_dim() / 2;
        let inv_freq = (0..half / 2)
            .map(|i| 1.0f32 / 10000f32.powf((2 * i) as f32 / half as f32))
            .collect();
        Ok(Self {
            cfg: cfg.clone(),
            patch_weight,
            blocks,
            ln_q: layer_norm(d, LN_EPS, mv.pp("ln_q"))?,
            mlp0: linear(merged, merged, mv.pp("mlp").pp("0"))?,
            mlp2: linear(merged, cfg.hidden_size, mv.pp("mlp").pp("2"))?,
            inv_freq,
        })
    }

    pub fn config(&self) -> &Qwen2VlVisionConfig {
        &self.cfg
    }

    /// `(row, column)` patch coordinates of each patch row of a `(t, h, w)` grid, in the
    /// 2×2-block order of the patch rows.
    pub fn patch_coordinates(&self, [t, h, w]: [usize; 3]) -> Vec<(usize, usize)> {
        let m = self.cfg.spatial_merge_size;
        let mut out = Vec::with_capacity(t * h * w);
        for _ in 0..t {
            for bh in 0..h / m {
                for bw in 0..w / m {
                    for ih in 0..m {
                        for iw in 0..m {
                            out.push((bh * m + ih, bw * m + iw));
                        }
                    }
                }
            }
        }
        out
    }

    /// `(cos, sin)` `[N, head_dim / 2]` f32 of the 2-D RoPE for the grid.
    fn rope_tables(&self, grid: [usize; 3], device: &Device) -> Result<(Tensor, Tensor)> {
        let coords = self.patch_coordinates(grid);
        let nf = self.inv_freq.len();
        let mut angles = Vec::with_capacity(coords.len() * 2 * nf);
        for &(r, c) in &coords {
            angles.extend(self.inv_freq.iter().map(|f| r as f32 * f));
            angles.extend(self.inv_freq.iter().map(|f| c as f32 * f));
        }
        let a = Tensor::from_vec(angles, (coords.len(), 2 * nf), device)?;
        Ok((a.cos()?, a.sin()?))
    }

    /// `pixel_values [N, C·tp·p·p]` of one image or video with grid `(t, h, w)` → stages.
    pub fn forward(&self, pixel_values: &Tensor, grid: [usize; 3]) -> Result<Qwen2VlVisionOutput> {
        let [t, h, w] = grid;
        let m = self.cfg.spatial_merge_size;
        let n = t * h * w;
        if t == 0 || h % m != 0 || w % m != 0 || h == 0 || w == 0 {
            bail!("grid_thw ({t}, {h}, {w}) does not tile into {m}×{m} merge blocks")
        }
        let (rows, cols) = pixel_values.dims2()?;
        if rows != n || cols != self.cfg.patch_dim() {
            bail!(
                "pixel_values {:?} do not match grid ({t}, {h}, {w}): expected [{n}, {}]",
                pixel_values.dims(),
                self.cfg.patch_dim()
            )
        }
        let dtype = self.patch_weight.dtype();
        let device = self.patch_weight.device().clone();
        let x = pixel_values.to_device(&device)?.to_dtype(dtype)?;
        let patch_embed_out = x.matmul(&self.patch_weight.t()?)?;
        let (cos, sin) = self.rope_tables(grid, &device)?;
        let mut xs = patch_embed_out.clone();
        for block in &self.blocks {
            xs = self.block_forward(block, &xs, [t, h * w], &cos, &sin)?;
        }
        let before_merger = xs.clone();
        let d = self.cfg.embed_dim;
        let normed = self.ln_q.forward(&xs)?;
        let grouped = normed.reshape((n / self.cfg.merge_rows(), d * self.cfg.merge_rows()))?;
        let merged = self
            .mlp2
            .forward(&self.mlp0.forward(&grouped)?.gelu_erf()?)?;
        Ok(Qwen2VlVisionOutput {
            patch_embed_out,
            before_merger,
            merged,
        })
    }

    /// One block over `[N, D]`, attention restricted to each of the `slices` runs of `len` rows.
    fn block_forward(
        &self,
        b: &VisionBlock,
        xs: &Tensor,
        [slices, len]: [usize; 2],
        cos: &Tensor,
        sin: &Tensor,
    ) -> Result<Tensor> {
        let heads = self.cfg.num_heads;
        let hd = self.cfg.head_dim();
        let n = slices * len;
        // qkv [N, 3D] → [3, heads, N, hd]
        let qkv = b
            .qkv
            .forward(&b.norm1.forward(xs)?)?
            .reshape((n, 3, heads, hd))?
            .permute((1, 2, 0, 3))?;
        let rope = |t: Tensor| -> Result<Tensor> {
            // RoPE in f32, as the reference.
            let dt = t.dtype();
            let r = candle_nn::rotary_emb::rope(
                &t.to_dtype(DType::F32)?.unsqueeze(0)?.contiguous()?,
                cos,
                sin,
            )?;
            r.squeeze(0)?.to_dtype(dt)
        };
        let q = rope(qkv.get(0)?)?;
        let k = rope(qkv.get(1)?)?;
        let v = qkv.get(2)?;
        // [heads, N, hd] → [slices, heads, len, hd]: one attention batch entry per slice.
        let per_slice = |t: Tensor| -> Result<Tensor> {
            t.reshape((heads, slices, len, hd))?
                .transpose(0, 1)?
                .contiguous()
        };
        let scale = 1.0 / (hd as f64).sqrt();
        let o = attention(
            &per_slice(q)?,
            &per_slice(k)?,
            &per_slice(v)?,
            scale,
            AttentionMask::None,
        )?;
        // [slices, heads, len, hd] → [N, D]
        let o = o.permute((0, 2, 1, 3))?.reshape((n, heads * hd))?;
        let xs = (xs + b.proj.forward(&o)?)?;
        let h = b.fc1.forward(&b.norm2.forward(&xs)?)?;
        let h = b.fc2.forward(&self.cfg.hidden_act.forward(&h)?)?;
        xs + h
    }
}

/// The vision tower's parameter count from its config (for inspect).
pub fn param_count(cfg: &Qwen2VlVisionConfig) -> u64 {
    let d = cfg.embed_dim as u64;
    let m = cfg.mlp_hidden() as u64;
    let block = 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * m + m) + (m * d + d);
    let merged = d * cfg.merge_rows() as u64;
    d * cfg.patch_dim() as u64
        + cfg.depth as u64 * block
        + 2 * d
        + (merged * merged + merged)
        + (merged * cfg.hidden_size as u64 + cfg.hidden_size as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;

    fn tiny() -> Qwen2VlVisionConfig {
        serde_json::from_value(serde_json::json!({
            "depth": 1, "embed_dim": 16, "hidden_size": 8, "hidden_act": "quick_gelu",
            "mlp_ratio": 2, "num_heads": 2, "in_chans": 3, "patch_size": 2,
            "spatial_merge_size": 2, "temporal_patch_size": 2
        }))
        .unwrap()
    }

    /// Attention never crosses temporal slices: changing slice 1's pixels leaves slice 0's
    /// merged tokens unchanged.
    #[test]
    fn slices_attend_only_to_themselves() -> Result<()> {
        let dev = Device::Cpu;
        let cfg = tiny();
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &dev);
        let model = Qwen2VlVision::new(&cfg, vb)?;
        // Random weights (the VarMap starts at zeros), written in place.
        for var in map.all_vars() {
            let r = Tensor::randn(0f32, 0.3, var.shape(), &dev)?;
            var.set(&r)?;
        }
        let grid = [2, 4, 6];
        let n = 2 * 4 * 6;
        let x = Tensor::randn(0f32, 1.0, (n, cfg.patch_dim()), &dev)?;
        let a = model.forward(&x, grid)?.merged;
        assert_eq!(a.dims(), &[n / 4, 8]);
        let changed = Tensor::cat(
            &[x.narrow(0, 0, n / 2)?, (x.narrow(0, n / 2, n / 2)? * 3.0)?],
            0,
        )?;
        let b = model.forward(&changed, grid)?.merged;
        let d0 = (a.narrow(0, 0, n / 8)? - b.narrow(0, 0, n / 8)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert_eq!(d0, 0.0);
        assert!(param_count(&cfg) > 0);
        assert!(model.forward(&x, [2, 4, 5]).is_err());
        Ok(())
    }

    #[test]
    fn coordinates_follow_the_block_order() -> Result<()> {
        let dev = Device::Cpu;
        let map = VarMap::new();
        let model = Qwen2VlVision::new(&tiny(), VarBuilder::from_varmap(&map, DType::F32, &dev))?;
        let c = model.patch_coordinates([1, 2, 4]);
        assert_eq!(
            c,
            vec![
                (0, 0),
                (0, 1),
                (1, 0),
                (1, 1),
                (0, 2),
                (0, 3),
                (1, 2),
                (1, 3)
            ]
        );
        Ok(())
    }
}
