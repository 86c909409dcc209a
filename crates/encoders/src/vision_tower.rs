//! The VideoLLaMA 2 vision tower: CLIP or SigLIP, chosen by configuration, returning
//! `hidden_states[mm_vision_select_layer]` with the `mm_vision_select_feature` rule applied.
//!
//! ```text
//! pixel_values [T, 3, S, S]  (T frames of one video; an image is repeated to T frames by the caller)
//!   CLIP  : → ViT (k layers) [T, 1+N, C] → patch: drop CLS → [T, N, C]  (cls_patch keeps it: [T, 1+N, C])
//!   SigLIP: → ViT (k layers) [T, N, C]                      (only `patch` is accepted)
//! k = resolved select_layer (−2 ⇒ num_hidden_layers − 1); unused layers are never loaded.
//! ViT-L/14-336: N = 576, C = 1024.  SigLIP so400m/14-384: N = 729, C = 1152.
//! ```
//!
//! Weights: the pipeline passes `vb` at `model.vision_tower.vision_tower.vision_model`.
//! Config: the tower repo's `config.json` (full `CLIPConfig`/`SiglipConfig` or a bare vision
//! config), see [`VisionTowerConfig::from_config_json`].

use std::path::Path;
use std::str::FromStr;

use candle_core::{bail, Error, Result, Tensor};
use candle_nn::VarBuilder;

use crate::clip::{ClipVisionConfig, ClipVisionModel};
use crate::encoder_layer::layers_to_run;
use crate::siglip::{SiglipVisionConfig, SiglipVisionModel};

/// Which family a tower belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VisionTowerKind {
    Clip,
    Siglip,
}

impl VisionTowerKind {
    /// The reference's rule (`build_vision_tower`): substring `clip` → CLIP, else substring
    /// `siglip` → SigLIP, else an error. Applied to `mm_vision_tower` (a Hub id or path).
    pub fn from_tower_name(name: &str) -> Result<Self> {
        if name.contains("clip") {
            Ok(Self::Clip)
        } else if name.contains("siglip") {
            Ok(Self::Siglip)
        } else {
            bail!("unknown vision tower {name:?}: the name must contain \"clip\" or \"siglip\" (as the reference requires)")
        }
    }
}

/// Vision tower configuration: one of the supported families.
#[derive(Debug, Clone, PartialEq)]
pub enum VisionTowerConfig {
    Clip(ClipVisionConfig),
    Siglip(SiglipVisionConfig),
}

impl VisionTowerConfig {
    /// `openai/clip-vit-large-patch14-336`: 1024 wide, 4096 MLP, 24 layers, 16 heads, 336 px, patch 14.
    pub fn clip_vit_large_patch14_336() -> Self {
        Self::Clip(ClipVisionConfig::vit_large_patch14_336())
    }

    /// `google/siglip-so400m-patch14-384`: 1152 wide, 4304 MLP, 27 layers, 16 heads, 384 px, patch 14.
    pub fn siglip_so400m_patch14_384() -> Self {
        Self::Siglip(SiglipVisionConfig::so400m_patch14_384())
    }

    /// Built-in configuration for a known Hub id (`openai/clip-vit-large-patch14-336`,
    /// `google/siglip-so400m-patch14-384`); `None` for anything else.
    pub fn builtin(hub_id: &str) -> Option<Self> {
        match hub_id.trim_end_matches('/') {
            "openai/clip-vit-large-patch14-336" => Some(Self::clip_vit_large_patch14_336()),
            "google/siglip-so400m-patch14-384" => Some(Self::siglip_so400m_patch14_384()),
            _ => None,
        }
    }

    /// Parses a tower `config.json`:
    /// * full `CLIPConfig` / `SiglipConfig` (`model_type` `clip` / `siglip`, values under
    ///   `vision_config`; a missing `vision_config` means all defaults), or
    /// * a bare vision config (`model_type` `clip_vision_model` / `siglip_vision_model`).
    ///
    /// Omitted fields take transformers' defaults (CLIP `quick_gelu`/1e-5, SigLIP
    /// `gelu_pytorch_tanh`/1e-6, …).
    pub fn from_config_json(json: &serde_json::Value) -> Result<Self> {
        let model_type = json.get("model_type").and_then(|v| v.as_str());
        match model_type {
            Some(mt) => Self::parse_by_model_type(mt, json),
            None => bail!(
                "vision tower config.json has no \"model_type\"; expected one of \"clip\", \"siglip\", \
                 \"clip_vision_model\", \"siglip_vision_model\" (use from_config_json_for_tower to choose by tower name)"
            ),
        }
    }

    /// Like [`Self::from_config_json`], but the family is chosen from the tower name as the
    /// reference does ([`VisionTowerKind::from_tower_name`]); `model_type` may then be absent,
    /// and if present it must agree with the name.
    pub fn from_config_json_for_tower(tower_name: &str, json: &serde_json::Value) -> Result<Self> {
        let kind = VisionTowerKind::from_tower_name(tower_name)?;
        let cfg = match json.get("model_type").and_then(|v| v.as_str()) {
            Some(mt) => Self::parse_by_model_type(mt, json)?,
            None => {
                let vision = json.get("vision_config").unwrap_or(json);
                match kind {
                    VisionTowerKind::Clip => Self::Clip(parse_section(vision, "CLIP")?),
                    VisionTowerKind::Siglip => Self::Siglip(parse_section(vision, "SigLIP")?),
                }
            }
        };
        if cfg.kind() != kind {
            bail!(
                "vision tower {tower_name:?} selects the {kind:?} tower by name, but its config.json describes a {:?} model",
                cfg.kind()
            );
        }
        Ok(cfg)
    }

    /// Reads and parses `<dir>/config.json` (or the file itself if `path` is a file).
    pub fn from_config_path(path: &Path) -> Result<Self> {
        let file = if path.is_dir() {
            path.join("config.json")
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&file).map_err(|e| {
            Error::Msg(format!(
                "cannot read vision tower config {}: {e}",
                file.display()
            ))
        })?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            Error::Msg(format!(
                "vision tower config {} is not valid JSON: {e}",
                file.display()
            ))
        })?;
        Self::from_config_json(&json)
    }

    fn parse_by_model_type(mt: &str, json: &serde_json::Value) -> Result<Self> {
        let empty = serde_json::Value::Object(Default::default());
        match mt {
            "clip" => Ok(Self::Clip(parse_section(json.get("vision_config").unwrap_or(&empty), "CLIP")?)),
            "siglip" => Ok(Self::Siglip(parse_section(json.get("vision_config").unwrap_or(&empty), "SigLIP")?)),
            "clip_vision_model" => Ok(Self::Clip(parse_section(json, "CLIP")?)),
            "siglip_vision_model" => Ok(Self::Siglip(parse_section(json, "SigLIP")?)),
            other => bail!(
                "unsupported vision tower model_type {other:?}; expected one of \"clip\", \"siglip\", \
                 \"clip_vision_model\", \"siglip_vision_model\""
            ),
        }
    }

    pub fn kind(&self) -> VisionTowerKind {
        match self {
            Self::Clip(_) => VisionTowerKind::Clip,
            Self::Siglip(_) => VisionTowerKind::Siglip,
        }
    }

    /// Feature width (`mm_hidden_size`): 1024 for CLIP-L, 1152 for SigLIP so400m.
    pub fn hidden_size(&self) -> usize {
        match self {
            Self::Clip(c) => c.hidden_size,
            Self::Siglip(c) => c.hidden_size,
        }
    }

    /// Expected square input size in pixels.
    pub fn image_size(&self) -> usize {
        match self {
            Self::Clip(c) => c.image_size,
            Self::Siglip(c) => c.image_size,
        }
    }

    pub fn patch_size(&self) -> usize {
        match self {
            Self::Clip(c) => c.patch_size,
            Self::Siglip(c) => c.patch_size,
        }
    }

    pub fn num_hidden_layers(&self) -> usize {
        match self {
            Self::Clip(c) => c.num_hidden_layers,
            Self::Siglip(c) => c.num_hidden_layers,
        }
    }

    /// `image_size / patch_size` (24 / 27).
    pub fn patches_per_side(&self) -> usize {
        self.image_size() / self.patch_size()
    }

    /// Patch tokens per frame, without CLS (576 / 729).
    pub fn num_patches(&self) -> usize {
        self.patches_per_side().pow(2)
    }

    /// Parameters of the whole stored vision model (all layers, `post_layernorm`, and for
    /// SigLIP the pooling `head.*`), from the config alone. CLIP-L/336: 303,507,456.
    pub fn param_count(&self) -> u64 {
        match self {
            Self::Clip(c) => c.param_count(),
            Self::Siglip(c) => c.param_count(),
        }
    }
}

fn parse_section<T: serde::de::DeserializeOwned>(v: &serde_json::Value, what: &str) -> Result<T> {
    serde_json::from_value(v.clone())
        .map_err(|e| Error::Msg(format!("invalid {what} vision config: {e}")))
}

/// `mm_vision_select_feature`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectFeature {
    /// Patch tokens only (CLIP drops CLS; SigLIP has none).
    Patch,
    /// CLS followed by the patch tokens (CLIP only; the SigLIP tower rejects it).
    ClsPatch,
}

impl FromStr for SelectFeature {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "patch" => Ok(Self::Patch),
            "cls_patch" => Ok(Self::ClsPatch),
            other => bail!("unexpected mm_vision_select_feature {other:?}; expected \"patch\" or \"cls_patch\""),
        }
    }
}

#[derive(Debug, Clone)]
enum Model {
    Clip(ClipVisionModel),
    Siglip(SiglipVisionModel),
}

/// A loaded vision tower.
#[derive(Debug, Clone)]
pub struct VisionTower {
    model: Model,
    cfg: VisionTowerConfig,
    select_feature: SelectFeature,
    select_layer: i64,
}

impl VisionTower {
    /// Builds the tower. `vb` must be at the `…vision_model` prefix (the pipeline passes
    /// `model.vision_tower.vision_tower.vision_model`). Only the layers up to
    /// `hidden_states[select_layer]` are loaded.
    pub fn new(
        cfg: &VisionTowerConfig,
        select_layer: i64,
        select_feature: &str,
        vb: VarBuilder,
    ) -> Result<Self> {
        let select_feature = SelectFeature::from_str(select_feature)?;
        let k = layers_to_run(select_layer, cfg.num_hidden_layers())?;
        let model = match cfg {
            VisionTowerConfig::Clip(c) => Model::Clip(ClipVisionModel::new(c, k, vb)?),
            VisionTowerConfig::Siglip(c) => {
                if select_feature != SelectFeature::Patch {
                    bail!("unexpected mm_vision_select_feature \"cls_patch\" for a SigLIP tower: only \"patch\" is supported (SigLIP has no CLS token)");
                }
                Model::Siglip(SiglipVisionModel::new(c, k, vb)?)
            }
        };
        Ok(Self {
            model,
            cfg: cfg.clone(),
            select_feature,
            select_layer,
        })
    }

    pub fn config(&self) -> &VisionTowerConfig {
        &self.cfg
    }

    pub fn select_feature(&self) -> SelectFeature {
        self.select_feature
    }

    pub fn select_layer(&self) -> i64 {
        self.select_layer
    }

    /// Encoder layers that actually run.
    pub fn num_layers_run(&self) -> usize {
        match &self.model {
            Model::Clip(m) => m.num_layers(),
            Model::Siglip(m) => m.num_layers(),
        }
    }

    pub fn hidden_size(&self) -> usize {
        self.cfg.hidden_size()
    }

    /// Tokens per frame in the output (`num_patches`, +1 for CLIP `cls_patch`).
    pub fn num_tokens_per_frame(&self) -> usize {
        match (&self.model, self.select_feature) {
            (Model::Clip(_), SelectFeature::ClsPatch) => self.cfg.num_patches() + 1,
            _ => self.cfg.num_patches(),
        }
    }

    /// `pixel_values [T, 3, H, W]` → `[T, n, C]`, in the dtype of `pixel_values` (as the
    /// reference casts the features back to the input dtype). The frames are independent.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        // Frames are independent: run them in small batches so the activations of a batch
        // (the MLP's [frames·729, 4304] for SigLIP) stay small and cache-friendly while each
        // GEMM still has thousands of rows. The result is identical to one big batch.
        let frames = pixel_values.dim(0)?;
        if frames > FRAMES_PER_BATCH {
            let mut outs = Vec::with_capacity(frames.div_ceil(FRAMES_PER_BATCH));
            let mut start = 0;
            while start < frames {
                let n = FRAMES_PER_BATCH.min(frames - start);
                outs.push(self.forward_batch(&pixel_values.narrow(0, start, n)?)?);
                start += n;
            }
            return Tensor::cat(&outs, 0);
        }
        self.forward_batch(pixel_values)
    }

    fn forward_batch(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let in_dtype = pixel_values.dtype();
        let out = match &self.model {
            Model::Clip(m) => {
                let h = m.forward(pixel_values)?;
                match self.select_feature {
                    SelectFeature::Patch => {
                        let n = h.dim(1)?;
                        h.narrow(1, 1, n - 1)?
                    }
                    SelectFeature::ClsPatch => h,
                }
            }
            Model::Siglip(m) => m.forward(pixel_values)?,
        };
        out.contiguous()?.to_dtype(in_dtype)
    }
}

/// Frames per tower forward (see [`VisionTower::forward`]). Two keeps SigLIP's largest
/// activation (`[2·729, 4304]` f32, 25 MB) under glibc's 32 MiB mmap threshold so its buffer
/// is reused from the heap; measured against 1 and 4 frames (docs/kernels.md).
pub const FRAMES_PER_BATCH: usize = 2;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use videollama_nn::Activation;

    #[test]
    fn parses_full_and_bare_configs() {
        let full = json!({"model_type": "clip", "vision_config": {"hidden_size": 32, "image_size": 56, "patch_size": 14, "num_hidden_layers": 3}});
        let c = VisionTowerConfig::from_config_json(&full).unwrap();
        let VisionTowerConfig::Clip(cc) = &c else {
            panic!("{c:?}")
        };
        assert_eq!(
            (cc.hidden_size, cc.num_hidden_layers, cc.intermediate_size),
            (32, 3, 3072)
        );
        assert_eq!(cc.hidden_act, Activation::QuickGelu);
        assert_eq!(c.patches_per_side(), 4);

        let bare = json!({"model_type": "siglip_vision_model", "hidden_size": 1152, "intermediate_size": 4304,
            "num_hidden_layers": 27, "num_attention_heads": 16, "image_size": 384, "patch_size": 14});
        let s = VisionTowerConfig::from_config_json(&bare).unwrap();
        assert_eq!(s, VisionTowerConfig::siglip_so400m_patch14_384());

        let bare_clip = json!({"model_type": "clip_vision_model", "hidden_size": 1024, "intermediate_size": 4096,
            "num_hidden_layers": 24, "num_attention_heads": 16, "image_size": 336, "patch_size": 14, "projection_dim": 768});
        assert_eq!(
            VisionTowerConfig::from_config_json(&bare_clip).unwrap(),
            VisionTowerConfig::clip_vit_large_patch14_336()
        );

        let bad = VisionTowerConfig::from_config_json(&json!({"model_type": "vit"}))
            .unwrap_err()
            .to_string();
        assert!(
            bad.contains("\"vit\"") && bad.contains("siglip_vision_model"),
            "{bad}"
        );
        let none = VisionTowerConfig::from_config_json(&json!({}))
            .unwrap_err()
            .to_string();
        assert!(none.contains("model_type"), "{none}");
    }

    #[test]
    fn tower_name_selects_family() {
        assert_eq!(
            VisionTowerKind::from_tower_name("openai/clip-vit-large-patch14-336").unwrap(),
            VisionTowerKind::Clip
        );
        assert_eq!(
            VisionTowerKind::from_tower_name("google/siglip-so400m-patch14-384").unwrap(),
            VisionTowerKind::Siglip
        );
        assert!(VisionTowerKind::from_tower_name("facebook/dinov2").is_err());
        let no_mt = json!({"hidden_size": 64});
        let c = VisionTowerConfig::from_config_json_for_tower("x/siglip-tiny", &no_mt).unwrap();
        assert_eq!(c.kind(), VisionTowerKind::Siglip);
        let mismatch = json!({"model_type": "clip"});
        assert!(VisionTowerConfig::from_config_json_for_tower("x/siglip-tiny", &mismatch).is_err());
        assert_eq!(
            VisionTowerConfig::builtin("openai/clip-vit-large-patch14-336"),
            Some(VisionTowerConfig::clip_vit_large_patch14_336())
        );
        assert_eq!(VisionTowerConfig::builtin("nope"), None);
    }

    #[test]
    fn accessors_and_param_counts() {
        let c = VisionTowerConfig::clip_vit_large_patch14_336();
        assert_eq!(
            (
                c.hidden_size(),
                c.image_size(),
                c.patches_per_side(),
                c.num_patches()
            ),
            (1024, 336, 24, 576)
        );
        assert_eq!(c.param_count(), 303_507_456);
        let s = VisionTowerConfig::siglip_so400m_patch14_384();
        assert_eq!(
            (
                s.hidden_size(),
                s.image_size(),
                s.patches_per_side(),
                s.num_patches()
            ),
            (1152, 384, 27, 729)
        );
        // embeddings 1,518,336 + 27 layers × 15,239,504 + post-LN 2,304 + head 15,238,352
        assert_eq!(s.param_count(), 428_225_600);
    }

    #[test]
    fn select_feature_errors_are_clear() {
        let e = SelectFeature::from_str("cls").unwrap_err().to_string();
        assert!(e.contains("\"cls\"") && e.contains("cls_patch"), "{e}");
    }
}
