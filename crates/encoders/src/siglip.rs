//! SigLIP ViT vision model (HF `SiglipVisionModel`, the part VideoLLaMA 2.1 uses).
//!
//! ```text
//! pixel_values [T, 3, H, W]
//!   → patch_embedding (Conv2d p×p stride p, WITH bias, "valid")  [T, N, C]   N = ⌊H/p⌋·⌊W/p⌋
//!   → + position_embedding                                     = hidden_states[0]
//!   → encoder.layers[0..k] (pre-LN, gelu_pytorch_tanh MLP)     = hidden_states[k]
//! ```
//!
//! No CLS token and no pre-LayerNorm. "valid" padding: for so400m at 384 px with patch 14
//! the grid is 27×27 and the last 6 pixel rows/columns are never read. `post_layernorm` and the
//! attention-pooling `head.*` exist in the checkpoint but are never used.

use candle_core::{bail, Result, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;
use videollama_nn::Activation;

use crate::encoder_layer::{load_layers, patch_embed, EncoderLayer, LayerDims};

/// HF `SiglipVisionConfig`, with transformers' defaults for every omitted field.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct SiglipVisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
}

impl Default for SiglipVisionConfig {
    /// transformers' `SiglipVisionConfig()` defaults (base/16 at 224 px).
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 16,
            hidden_act: Activation::GeluTanh,
            layer_norm_eps: 1e-6,
        }
    }
}

impl SiglipVisionConfig {
    /// `google/siglip-so400m-patch14-384` (the VideoLLaMA 2.1 tower).
    pub fn so400m_patch14_384() -> Self {
        Self {
            hidden_size: 1152,
            intermediate_size: 4304,
            num_hidden_layers: 27,
            num_attention_heads: 16,
            num_channels: 3,
            image_size: 384,
            patch_size: 14,
            hidden_act: Activation::GeluTanh,
            layer_norm_eps: 1e-6,
        }
    }

    /// `image_size / patch_size` (floor; 27 for so400m/14 at 384).
    pub fn patches_per_side(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Patch tokens per frame (729 for so400m/14 at 384).
    pub fn num_patches(&self) -> usize {
        self.patches_per_side().pow(2)
    }

    pub(crate) fn layer_dims(&self) -> LayerDims {
        LayerDims {
            hidden: self.hidden_size,
            intermediate: self.intermediate_size,
            heads: self.num_attention_heads,
            act: self.hidden_act,
            eps: self.layer_norm_eps,
        }
    }

    /// Parameters of the whole stored `SiglipVisionModel`: embeddings, all layers,
    /// `post_layernorm` and the attention-pooling head (`head.probe [1,1,C]`,
    /// `head.attention.in_proj_{weight [3C,C], bias}`, `head.attention.out_proj.*`,
    /// `head.layernorm.*`, `head.mlp.fc1/fc2.*`), from the config alone.
    pub fn param_count(&self) -> u64 {
        let c = self.hidden_size as u64;
        let i = self.intermediate_size as u64;
        let p = self.patch_size as u64;
        let embeddings = c * self.num_channels as u64 * p * p + c + self.num_patches() as u64 * c;
        let layers = self.num_hidden_layers as u64 * self.layer_dims().layer_param_count();
        let post_layernorm = 2 * c;
        let head = c + (3 * c * c + 3 * c) + (c * c + c) + 2 * c + (c * i + i) + (i * c + c);
        embeddings + layers + post_layernorm + head
    }
}

/// The SigLIP vision transformer truncated to the layers that are needed.
#[derive(Debug, Clone)]
pub struct SiglipVisionModel {
    patch_weight: Tensor,
    patch_bias: Tensor,
    position_embedding: Tensor,
    layers: Vec<EncoderLayer>,
    cfg: SiglipVisionConfig,
}

impl SiglipVisionModel {
    /// Loads the embeddings and the first `num_layers` encoder layers from `vb`
    /// (positioned at `…vision_model`).
    pub fn new(cfg: &SiglipVisionConfig, num_layers: usize, vb: VarBuilder) -> Result<Self> {
        let d = cfg.layer_dims();
        d.validate("SigLIP vision config")?;
        if num_layers > cfg.num_hidden_layers {
            bail!(
                "SigLIP: asked for {num_layers} layers but the config has {}",
                cfg.num_hidden_layers
            );
        }
        if cfg.patch_size == 0 || cfg.image_size < cfg.patch_size {
            bail!(
                "SigLIP: bad image_size {} / patch_size {}",
                cfg.image_size,
                cfg.patch_size
            );
        }
        let c = cfg.hidden_size;
        let p = cfg.patch_size;
        let emb = vb.pp("embeddings");
        let pe = emb.pp("patch_embedding");
        Ok(Self {
            patch_weight: pe.get((c, cfg.num_channels, p, p), "weight")?,
            patch_bias: pe.get(c, "bias")?,
            position_embedding: emb
                .pp("position_embedding")
                .get((cfg.num_patches(), c), "weight")?,
            layers: load_layers(&d, num_layers, vb)?,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &SiglipVisionConfig {
        &self.cfg
    }

    /// Number of encoder layers that run.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// `pixel_values [T, C_in, H, W]` → `hidden_states[num_layers]`, `[T, N, C]`.
    /// The input is cast to the weights' dtype; the output keeps that dtype.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let (_t, cin, h, w) = pixel_values.dims4()?;
        let p = self.cfg.patch_size;
        let side = self.cfg.patches_per_side();
        if cin != self.cfg.num_channels || h / p != side || w / p != side {
            bail!(
                "SigLIP vision tower expects pixel_values [T, {}, {s}, {s}] (a {side}×{side} patch grid), got {:?}",
                self.cfg.num_channels,
                pixel_values.dims(),
                s = self.cfg.image_size
            );
        }
        let x = pixel_values.to_dtype(self.patch_weight.dtype())?;
        let xs = patch_embed(&x, &self.patch_weight, Some(&self.patch_bias), p)?;
        let mut xs = xs.broadcast_add(&self.position_embedding.unsqueeze(0)?)?;
        for layer in &self.layers {
            xs = layer.forward(&xs)?;
        }
        Ok(xs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_missing_fields() {
        let c: SiglipVisionConfig =
            serde_json::from_str(r#"{"hidden_size": 32, "patch_size": 14, "image_size": 56}"#)
                .unwrap();
        assert_eq!(c.hidden_act, Activation::GeluTanh);
        assert_eq!(c.layer_norm_eps, 1e-6);
        assert_eq!(c.num_hidden_layers, 12);
        assert_eq!(c.intermediate_size, 3072);
    }

    #[test]
    fn so400m_grid() {
        let c = SiglipVisionConfig::so400m_patch14_384();
        assert_eq!(c.patches_per_side(), 27);
        assert_eq!(c.num_patches(), 729);
    }
}
