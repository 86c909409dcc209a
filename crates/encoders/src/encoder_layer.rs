//! The pre-LN transformer encoder layer shared by the CLIP and SigLIP vision towers,
//! plus the patch-embedding helper (a stride = kernel convolution done as one matmul).
//!
//! Both HF implementations use the same sub-module names under `encoder.layers.{i}`:
//! `layer_norm1`, `self_attn.{q,k,v,out}_proj` (all with bias), `layer_norm2`,
//! `mlp.fc1`, `mlp.fc2`.
//!
//! ```text
//! x ─┬─ layer_norm1 ─ self_attn ─(+)─┬─ layer_norm2 ─ fc1 ─ act ─ fc2 ─(+)─ out
//!    └───────────────────────────────┘└──────────────────────────────────┘
//! ```

use candle_core::{bail, Module, Result, Tensor};
use candle_nn::VarBuilder;
use videollama_nn::attention::{attention, AttentionMask};
use videollama_nn::{layer_norm, linear, Activation, LayerNorm, Linear};

/// Shape of one encoder layer (identical for CLIP and SigLIP).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LayerDims {
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub act: Activation,
    pub eps: f64,
}

impl LayerDims {
    /// Checks that the heads divide the width (the reference asserts the same).
    #[allow(clippy::manual_is_multiple_of)] // `is_multiple_of` needs Rust 1.87; MSRV is 1.85
    pub fn validate(&self, what: &str) -> Result<()> {
        if self.heads == 0 || self.hidden % self.heads != 0 {
            bail!(
                "{what}: hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden,
                self.heads
            );
        }
        Ok(())
    }

    /// Parameters of one stored encoder layer.
    pub fn layer_param_count(&self) -> u64 {
        let c = self.hidden as u64;
        let i = self.intermediate as u64;
        4 * (c * c + c) + 2 * (2 * c) + (c * i + i) + (i * c + c)
    }
}

#[derive(Debug, Clone)]
struct SelfAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
    head_dim: usize,
    scale: f64,
}

impl SelfAttention {
    fn new(d: &LayerDims, vb: VarBuilder) -> Result<Self> {
        let c = d.hidden;
        let head_dim = c / d.heads;
        Ok(Self {
            q_proj: linear(c, c, vb.pp("q_proj"))?,
            k_proj: linear(c, c, vb.pp("k_proj"))?,
            v_proj: linear(c, c, vb.pp("v_proj"))?,
            out_proj: linear(c, c, vb.pp("out_proj"))?,
            heads: d.heads,
            head_dim,
            scale: (head_dim as f64).powf(-0.5),
        })
    }

    /// `[B, L, C]` → `[B, L, C]`, full (unmasked) attention.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, l, c) = xs.dims3()?;
        let split = |t: Tensor| -> Result<Tensor> {
            t.reshape((b, l, self.heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(self.q_proj.forward(xs)?)?;
        let k = split(self.k_proj.forward(xs)?)?;
        let v = split(self.v_proj.forward(xs)?)?;
        let o = attention(&q, &k, &v, self.scale, AttentionMask::None)?;
        let o = o.transpose(1, 2)?.reshape((b, l, c))?;
        self.out_proj.forward(&o)
    }
}

/// One pre-LN encoder layer (`encoder.layers.{i}`).
#[derive(Debug, Clone)]
pub(crate) struct EncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: SelfAttention,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl EncoderLayer {
    pub fn new(d: &LayerDims, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            layer_norm1: layer_norm(d.hidden, d.eps, vb.pp("layer_norm1"))?,
            self_attn: SelfAttention::new(d, vb.pp("self_attn"))?,
            layer_norm2: layer_norm(d.hidden, d.eps, vb.pp("layer_norm2"))?,
            fc1: linear(d.hidden, d.intermediate, vb.pp("mlp").pp("fc1"))?,
            fc2: linear(d.intermediate, d.hidden, vb.pp("mlp").pp("fc2"))?,
            act: d.act,
        })
    }

    /// `[B, L, C]` → `[B, L, C]`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let h = self.self_attn.forward(&self.layer_norm1.forward(xs)?)?;
        let xs = (xs + h)?;
        let h = self.fc1.forward(&self.layer_norm2.forward(&xs)?)?;
        let h = self.fc2.forward(&self.act.forward(&h)?)?;
        xs + h
    }
}

/// Load the first `n` layers of `encoder.layers.*` (the rest are never read).
pub(crate) fn load_layers(d: &LayerDims, n: usize, vb: VarBuilder) -> Result<Vec<EncoderLayer>> {
    let vb = vb.pp("encoder").pp("layers");
    (0..n).map(|i| EncoderLayer::new(d, vb.pp(i))).collect()
}

/// Patch embedding of a `Conv2d(3, C, kernel=p, stride=p, padding=0)` ("valid"):
/// `pixel_values [T, Cin, H, W]` → `[T, gh·gw, C]` with patches in row-major (h, w) order.
///
/// Rows/columns beyond `gh·p` / `gw·p` are dropped, as the strided convolution does.
/// `weight` is the PyTorch `[C, Cin, p, p]` kernel.
pub(crate) fn patch_embed(
    pixel_values: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    patch: usize,
) -> Result<Tensor> {
    let (t, cin, h, w) = pixel_values.dims4()?;
    let (c, wcin, kh, kw) = weight.dims4()?;
    if wcin != cin || kh != patch || kw != patch {
        bail!(
            "patch embedding: weight {:?} does not fit input channels {cin} / patch {patch}",
            weight.dims()
        );
    }
    let (gh, gw) = (h / patch, w / patch);
    let xs = pixel_values
        .narrow(2, 0, gh * patch)?
        .narrow(3, 0, gw * patch)?;
    let cols = xs
        .reshape((t, cin, gh, patch, gw, patch))?
        .permute((0, 2, 4, 1, 3, 5))?
        .reshape((t * gh * gw, cin * patch * patch))?;
    let wm = weight.reshape((c, cin * patch * patch))?;
    let mut out = cols.matmul(&wm.t()?)?;
    if let Some(b) = bias {
        out = out.broadcast_add(b)?;
    }
    out.reshape((t, gh * gw, c))
}

/// HF `hidden_states[select_layer]` → how many encoder layers must run.
///
/// `hidden_states` has `num_layers + 1` entries (index 0 = embeddings), and Python
/// negative indexing applies, so `-2` ⇒ `num_layers - 1`.
pub fn layers_to_run(select_layer: i64, num_layers: usize) -> Result<usize> {
    let len = num_layers as i64 + 1;
    let idx = if select_layer < 0 {
        len + select_layer
    } else {
        select_layer
    };
    if idx < 0 || idx >= len {
        bail!(
            "mm_vision_select_layer {select_layer} is out of range for a tower with {num_layers} layers \
             (hidden_states has {len} entries, valid indices {}..={})",
            -len,
            len - 1
        );
    }
    Ok(idx as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn select_layer_indexing_follows_python() {
        assert_eq!(layers_to_run(-2, 24).unwrap(), 23);
        assert_eq!(layers_to_run(-1, 24).unwrap(), 24);
        assert_eq!(layers_to_run(0, 24).unwrap(), 0);
        assert_eq!(layers_to_run(-25, 24).unwrap(), 0);
        assert_eq!(layers_to_run(24, 24).unwrap(), 24);
        assert!(layers_to_run(25, 24).is_err());
        let e = layers_to_run(-26, 24).unwrap_err().to_string();
        assert!(e.contains("-26"), "{e}");
    }

    /// The matmul patch embedding equals candle's own strided conv2d.
    #[test]
    fn patch_embed_matches_conv2d() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 30, 29), &dev)?;
        let w = Tensor::randn(0f32, 1.0, (5, 3, 7, 7), &dev)?;
        let b = Tensor::randn(0f32, 1.0, 5, &dev)?;
        let got = patch_embed(&x, &w, Some(&b), 7)?; // 4x4 grid, trailing rows dropped
        let want = x
            .conv2d(&w, 0, 7, 1, 1)?
            .broadcast_add(&b.reshape((1, 5, 1, 1))?)?
            .flatten_from(2)?
            .transpose(1, 2)?;
        assert_eq!(got.dims(), &[2, 16, 5]);
        let d = (got - want)?
            .abs()?
            .max_all()?
            .to_dtype(DType::F32)?
            .to_scalar::<f32>()?;
        assert!(d < 1e-4, "max diff {d}");
        Ok(())
    }
}
