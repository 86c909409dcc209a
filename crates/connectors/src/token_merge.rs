//! MiniGPT4-Video's token reducer: drop the CLS token, concatenate every `group`
//! consecutive patch tokens along the channels, project to the LLM width.
//!
//! ```text
//! [T, 1+N, C] ─drop CLS─► [T, N, C] ─view─► [T, N/g, g·C] ─llama_proj─► [T, N/g, d]
//! ```
//! The merge is the reference's plain `view` of the raster-ordered patches: with a grid
//! width that is a multiple of `g` each merged token is a 1×g strip of one grid row; with
//! another width (e.g. 6×6 patches at 84 px) a token spans two rows — reproduced as is.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use videollama_nn::{linear, Linear};

/// `image_embeds[:, 1:, :].view(T, N / g, g·C)`: `[T, 1+N, C]` → `[T, N/g, g·C]`.
pub fn merge_tokens(features: &Tensor, group: usize) -> Result<Tensor> {
    let (t, n1, c) = features.dims3()?;
    if group == 0 || n1 < 2 || (n1 - 1) % group != 0 {
        candle_core::bail!(
            "token merge: {} patch tokens (after the CLS) cannot be grouped by {group}",
            n1.saturating_sub(1)
        );
    }
    features
        .narrow(1, 1, n1 - 1)?
        .contiguous()?
        .reshape((t, (n1 - 1) / group, group * c))
}

/// The merge plus `llama_proj` (Linear with bias, `g·C → d`), its width read from the weights.
#[derive(Debug, Clone)]
pub struct MergeProjector {
    group: usize,
    proj: Linear,
}

impl MergeProjector {
    /// `vb` at `llama_proj`; `vision_width` is C. The projection's input must be `group · C`.
    pub fn new(group: usize, vision_width: usize, vb: VarBuilder) -> Result<Self> {
        let w = vb.get_unchecked("weight")?;
        let (d, inp) = w.dims2()?;
        if inp != group * vision_width {
            candle_core::bail!(
                "llama_proj.weight is [{d}, {inp}] but merging {group} tokens of width \
                 {vision_width} gives {} (token_pooling / vision width mismatch)",
                group * vision_width
            );
        }
        Ok(Self {
            group,
            proj: linear(inp, d, vb)?,
        })
    }

    pub fn group(&self) -> usize {
        self.group
    }

    pub fn out_dim(&self) -> usize {
        self.proj.out_dim()
    }

    /// `[T, 1+N, C]` → (`merged [T, N/g, g·C]`, `tokens [T, N/g, d]`).
    pub fn forward_with_stages(&self, features: &Tensor) -> Result<(Tensor, Tensor)> {
        let merged = merge_tokens(features, self.group)?;
        let tokens = self.proj.forward(&merged)?;
        Ok((merged, tokens))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn a_token_spans_two_grid_rows_when_the_width_is_not_a_multiple_of_the_group() {
        // 6×6 patches + CLS, C = 1, values = patch index (CLS = -1).
        let mut v = vec![-1f32];
        v.extend((0..36).map(|i| i as f32));
        let x = Tensor::from_vec(v, (1, 37, 1), &Device::Cpu).unwrap();
        let m = merge_tokens(&x, 4).unwrap();
        assert_eq!(m.dims(), &[1, 9, 4]);
        let rows: Vec<Vec<f32>> = m.get(0).unwrap().to_vec2().unwrap();
        // Token 1 = row 0 cols 4–5 + row 1 cols 0–1 (patches 4, 5, 6, 7).
        assert_eq!(rows[1], vec![4.0, 5.0, 6.0, 7.0]);
        assert_eq!(rows[8], vec![32.0, 33.0, 34.0, 35.0]);
        let bad = Tensor::zeros((1, 6, 2), DType::F32, &Device::Cpu).unwrap();
        assert!(merge_tokens(&bad, 4).is_err());
    }

    #[test]
    fn channels_of_consecutive_patches_are_concatenated_in_order() {
        // C = 2: merged token k = [p4k(2), p4k+1(2), p4k+2(2), p4k+3(2)].
        let mut v = vec![0f32, 0.0];
        for p in 0..4 {
            v.extend([p as f32, 10.0 + p as f32]);
        }
        let x = Tensor::from_vec(v, (1, 5, 2), &Device::Cpu).unwrap();
        let m: Vec<f32> = merge_tokens(&x, 4)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(m, vec![0.0, 10.0, 1.0, 11.0, 2.0, 12.0, 3.0, 13.0]);
    }
}
