//! Vision encoders of VideoLLaMA 2 / 2.1: the CLIP and SigLIP ViTs and the
//! [`VisionTower`] wrapper that selects `hidden_states[mm_vision_select_layer]`.
//!
//! * [`clip`] — `ClipVisionConfig` + `ClipVisionModel` (CLS + pre-LN, quick_gelu).
//! * [`eva_vit`] — `EvaVitConfig` + `EvaVit` (EVA-CLIP ViT-g, BLIP-2 flavour) + `LnVision`.
//! * [`siglip`] — `SiglipVisionConfig` + `SiglipVisionModel` (patch-conv bias, no CLS, tanh GELU).
//! * [`vision_tower`] — `VisionTowerConfig` (config.json parsing, built-in Hub configs,
//!   parameter counts) and `VisionTower` (`[T,3,H,W]` → `[T,n,C]`).
//!
//! Data flow for one video of `T` frames:
//!
//! ```text
//! pixel_values [T,3,S,S] ─ patch conv ─ (+CLS) ─ +pos ─ (pre-LN) ─ layers[0..k] ─ (drop CLS) ─ [T,n,C]
//! ```

pub mod beats;
pub mod clip;
mod encoder_layer;
pub mod eva_vit;
pub mod imagebind_audio;
pub mod qwen2_vl_vision;
pub mod siglip;
pub mod vision_tower;

pub use beats::{Beats, BeatsConfig, BeatsStages};
pub use clip::{ClipVisionConfig, ClipVisionModel};
pub use encoder_layer::layers_to_run;
pub use eva_vit::{EvaVit, EvaVitConfig, LnVision};
pub use imagebind_audio::{ImageBindAudio, ImageBindAudioConfig, ImageBindAudioOutput};
pub use qwen2_vl_vision::{Qwen2VlVision, Qwen2VlVisionConfig, Qwen2VlVisionOutput};
pub use siglip::{SiglipVisionConfig, SiglipVisionModel};
pub use vision_tower::{SelectFeature, VisionTower, VisionTowerConfig, VisionTowerKind};
