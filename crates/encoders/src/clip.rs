//! CLIP ViT vision model (HF `CLIPVisionModel`, the part VideoLLaMA 2 uses).
//!
//! ```text
//! pixel_values [T, 3, H, W]
//!   → patch_embedding (Conv2d p×p stride p, no bias)        [T, N, C]   N = (H/p)·(W/p)
//!   → prepend class_embedding                               [T, 1+N, C]
//!   → + position_embedding                                  [T, 1+N, C]
//!   → pre_layrnorm                                          = hidden_states[0]
//!   → encoder.layers[0..k] (pre-LN, quick_gelu MLP)         = hidden_states[k]
//! ```
//!
//! Only the first `k` layers are loaded and run, where `k` is the resolved
//! `mm_vision_select_layer` (`-2` ⇒ `num_hidden_layers - 1`). `post_layernorm` is never
//! applied (the reference reads `hidden_states`, not `last_hidden_state`).
//!
//! Weights live under `…vision_model.`: `embeddings.{class_embedding, patch_embedding.weight,
//! position_embedding.weight}`, `pre_layrnorm.*`, `encoder.layers.{i}.*`, `post_layernorm.*`.

use candle_core::{bail, Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;
use videollama_nn::{layer_norm, Activation, LayerNorm};

use crate::encoder_layer::{load_layers, patch_embed, EncoderLayer, LayerDims};

/// HF `CLIPVisionConfig` (the fields the vision model uses), with transformers' defaults
/// for every omitted field.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct ClipVisionConfig {
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

impl Default for ClipVisionConfig {
    /// transformers' `CLIPVisionConfig()` defaults (ViT-B/32).
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
        }
    }
}

impl ClipVisionConfig {
    /// `openai/clip-vit-large-patch14-336` (the VideoLLaMA 2 tower).
    pub fn vit_large_patch14_336() -> Self {
        Self {
            hidden_size: 1024,
            intermediate_size: 4096,
            num_hidden_layers: 24,
            num_attention_heads: 16,
            num_channels: 3,
            image_size: 336,
            patch_size: 14,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
        }
    }

    /// `image_size / patch_size` (24 for ViT-L/14-336).
    pub fn patches_per_side(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Patch tokens per frame, without CLS (576 for ViT-L/14-336).
    pub fn num_patches(&self) -> usize {
        self.patches_per_side().pow(2)
    }

    /// Rows of the position embedding: patches + CLS.
    pub fn num_positions(&self) -> usize {
        self.num_patches() + 1
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

    /// Parameters of the whole stored `CLIPVisionModel` (embeddings, `pre_layrnorm`,
    /// all layers, `post_layernorm`), computed from the config alone.
    /// ViT-L/14-336 gives 303,507,456.
    pub fn param_count(&self) -> u64 {
        let c = self.hidden_size as u64;
        let p = self.patch_size as u64;
        let embeddings = c + c * self.num_channels as u64 * p * p + self.num_positions() as u64 * c;
        let norms = 2 * (2 * c);
        embeddings + norms + self.num_hidden_layers as u64 * self.layer_dims().layer_param_count()
    }
}

/// The CLIP vision transformer truncated to the layers that are needed.
#[derive(Debug, Clone)]
pub struct ClipVisionModel {
    class_embedding: Tensor,
    patch_weight: Tensor,
    position_embedding: Tensor,
    pre_layrnorm: LayerNorm,
    layers: Vec<EncoderLayer>,
    cfg: ClipVisionConfig,
}

impl ClipVisionModel {
    /// Loads the embeddings, `pre_layrnorm` and the first `num_layers` encoder layers from
    /// `vb` (positioned at `…vision_model`).
    pub fn new(cfg: &ClipVisionConfig, num_layers: usize, vb: VarBuilder) -> Result<Self> {
        let d = cfg.layer_dims();
        d.validate("CLIP vision config")?;
        if num_layers > cfg.num_hidden_layers {
            bail!(
                "CLIP: asked for {num_layers} layers but the config has {}",
                cfg.num_hidden_layers
            );
        }
        if cfg.patch_size == 0 || cfg.image_size < cfg.patch_size {
            bail!(
                "CLIP: bad image_size {} / patch_size {}",
                cfg.image_size,
                cfg.patch_size
            );
        }
        let c = cfg.hidden_size;
        let p = cfg.patch_size;
        let emb = vb.pp("embeddings");
        Ok(Self {
            class_embedding: emb.get(c, "class_embedding")?,
            patch_weight: emb
                .pp("patch_embedding")
                .get((c, cfg.num_channels, p, p), "weight")?,
            position_embedding: emb
                .pp("position_embedding")
                .get((cfg.num_positions(), c), "weight")?,
            pre_layrnorm: layer_norm(c, cfg.layer_norm_eps, vb.pp("pre_layrnorm"))?,
            layers: load_layers(&d, num_layers, vb)?,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &ClipVisionConfig {
        &self.cfg
    }

    /// Number of encoder layers that run.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// `pixel_values [T, C_in, H, W]` → `hidden_states[num_layers]`, `[T, 1 + N, C]` (CLS first).
    /// The input is cast to the weights' dtype; the output keeps that dtype.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let (t, cin, h, w) = pixel_values.dims4()?;
        let p = self.cfg.patch_size;
        let side = self.cfg.patches_per_side();
        if cin != self.cfg.num_channels || h / p != side || w / p != side {
            bail!(
                "CLIP vision tower expects pixel_values [T, {}, {s}, {s}] (a {side}×{side} patch grid), got {:?}",
                self.cfg.num_channels,
                pixel_values.dims(),
                s = self.cfg.image_size
            );
        }
        let dtype = self.patch_weight.dtype();
        let x = pixel_values.to_dtype(dtype)?;
        let patches = patch_embed(&x, &self.patch_weight, None, p)?; // [T, N, C]
        let c = self.cfg.hidden_size;
        let cls = self
            .class_embedding
            .reshape((1, 1, c))?
            .broadcast_as((t, 1, c))?;
        let xs = Tensor::cat(&[&cls, &patches], 1)?;
        let xs = xs.broadcast_add(&self.position_embedding.unsqueeze(0)?)?;
        let mut xs = self.pre_layrnorm.forward(&xs)?;
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
    fn clip_l_336_param_count() {
        assert_eq!(
            ClipVisionConfig::vit_large_patch14_336().param_count(),
            303_507_456
        );
    }

    #[test]
    fn defaults_fill_missing_fields() {
        let c: ClipVisionConfig =
            serde_json::from_str(r#"{"hidden_size": 32, "patch_size": 14, "image_size": 56}"#)
                .unwrap();
        assert_eq!(c.hidden_size, 32);
        assert_eq!(c.intermediate_size, 3072);
        assert_eq!(c.hidden_act, Activation::QuickGelu);
        assert_eq!(c.layer_norm_eps, 1e-5);
        assert_eq!(c.num_patches(), 16);
    }
}
