//! Video-ChatGPT's parameter-free spatio-temporal pooling
//! (`get_spatio_temporal_features_torch` in the reference `inference.py`).
//!
//! ```text
//! features [T, S, C]   (CLIP hidden_states[-2] without CLS: S = 256 patches for ViT-L/14-224)
//!   temporal = mean over S  → [T, C] → zero rows appended up to `temporal_rows` (100) → [max(T,100), C]
//!   spatial  = mean over T  → [S, C]
//!   video_tokens = cat(temporal, spatial)                    → [max(T,100) + S, C]  (356 for ViT-L/14-224)
//! ```
//!
//! The padding rows are exact zeros, so after `mm_projector` they equal its bias. The reference
//! pads only when `T < 100` (`padding_size = 100 - t`, no padding when negative): more frames give
//! more temporal rows. The means are computed in f32 whatever the input dtype, as PyTorch does for
//! reduced-precision means on CPU; the reference then casts the tokens to fp16 for the projector,
//! which the caller's compute dtype decides here.

use candle_core::{bail, DType, Result, Tensor};

/// Temporal rows of the reference (`padding_size = 100 - t`).
pub const TEMPORAL_ROWS: usize = 100;

/// The three outputs of the pooling, all f32.
#[derive(Debug, Clone)]
pub struct SpatioTemporalTokens {
    /// `[max(T, temporal_rows), C]`: per-frame means, zero-padded at the end.
    pub temporal: Tensor,
    /// `[S, C]`: per-patch means over the frames.
    pub spatial: Tensor,
    /// `[max(T, temporal_rows) + S, C]`: `cat(temporal, spatial)`, the projector input.
    pub video_tokens: Tensor,
}

/// Pool `features [T, S, C]` (see the module docs); `temporal_rows` is 100 in the reference.
pub fn spatio_temporal_pool(
    features: &Tensor,
    temporal_rows: usize,
) -> Result<SpatioTemporalTokens> {
    let (t, s, c) = features.dims3()?;
    if t == 0 || s == 0 {
        bail!(
            "spatio-temporal pooling needs at least one frame and one patch, got features {:?}",
            features.dims()
        );
    }
    let x = features.to_dtype(DType::F32)?;
    let mut temporal = x.mean(1)?; // [T, C]
    if t < temporal_rows {
        let pad = Tensor::zeros((temporal_rows - t, c), DType::F32, features.device())?;
        temporal = Tensor::cat(&[&temporal, &pad], 0)?;
    }
    let spatial = x.mean(0)?; // [S, C]
    let video_tokens = Tensor::cat(&[&temporal, &spatial], 0)?;
    Ok(SpatioTemporalTokens {
        temporal,
        spatial,
        video_tokens,
    })
}

/// Rows of `video_tokens` for `frames` frames of `patches` patches.
pub fn num_tokens(frames: usize, patches: usize, temporal_rows: usize) -> usize {
    frames.max(temporal_rows) + patches
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn pools_pads_and_concatenates() -> Result<()> {
        let dev = Device::Cpu;
        // T = 2 frames, S = 3 patches, C = 2.
        let x = Tensor::new(
            &[
                [[1f32, 2.], [3., 4.], [5., 6.]],
                [[7f32, 8.], [9., 10.], [11., 12.]],
            ],
            &dev,
        )?;
        let p = spatio_temporal_pool(&x, 4)?;
        assert_eq!(p.temporal.dims(), &[4, 2]);
        assert_eq!(
            p.temporal.to_vec2::<f32>()?,
            vec![vec![3., 4.], vec![9., 10.], vec![0., 0.], vec![0., 0.]]
        );
        assert_eq!(
            p.spatial.to_vec2::<f32>()?,
            vec![vec![4., 5.], vec![6., 7.], vec![8., 9.]]
        );
        assert_eq!(p.video_tokens.dims(), &[7, 2]);
        assert_eq!(num_tokens(2, 3, 4), 7);
        // More frames than temporal rows: no padding, one row per frame.
        let p = spatio_temporal_pool(&x, 1)?;
        assert_eq!(p.temporal.dims(), &[2, 2]);
        assert_eq!(p.video_tokens.dims(), &[5, 2]);
        assert_eq!(num_tokens(256, 256, TEMPORAL_ROWS), 512);
        assert_eq!(num_tokens(8, 256, TEMPORAL_ROWS), 356);
        assert!(spatio_temporal_pool(&Tensor::zeros((0, 3, 2), DType::F32, &dev)?, 4).is_err());
        Ok(())
    }
}
