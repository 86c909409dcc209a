//! `linear` and `mlp{N}x_gelu` projectors (spec §5.5), also used as the STC `readout`
//! (an `mlp2x_gelu` at `readout.{0,2}`) and usable as the audio projector `mm_projector_a`.
//!
//! ```text
//! mlp{N}x_gelu: x [.., Cin] → Linear(Cin,C) → (N−1) × [GELU(erf) → Linear(C,C)] → [.., C]
//!               keys `0.*`, `2.*`, `4.*`, … (indices of the PyTorch nn.Sequential)
//! linear:       x [.., Cin] → Linear(Cin,C)                     keys `weight`, `bias` (no index)
//! ```
//!
//! For video, the reference `temporal_aggregator` mean-pools the frames **before** these
//! projectors, but only for the exact strings `linear` and `mlp2x_gelu`; see
//! [`crate::Connector::forward`].

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use videollama_nn::{linear, Linear};

use crate::regstage::linear_last;

/// A stack of Linear layers with exact GELU between them.
#[derive(Debug, Clone)]
pub struct MlpProjector {
    layers: Vec<Linear>,
}

impl MlpProjector {
    /// `mlp{depth}x_gelu` at `vb` (keys `0`, `2`, …). Depth 0 builds one Linear, like the
    /// reference (whose loop `range(1, depth)` is then empty).
    pub fn new(depth: usize, in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        let n = depth.max(1);
        let layers = (0..n)
            .map(|i| linear(if i == 0 { in_dim } else { out_dim }, out_dim, vb.pp(2 * i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers })
    }

    /// A bare `nn.Linear` stored directly at `vb` (`weight`, `bias`): the `linear` projector.
    pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            layers: vec![linear(in_dim, out_dim, vb)?],
        })
    }

    /// Applies the projector over the last dimension (any leading shape).
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut xs = linear_last(&self.layers[0], xs)?;
        for l in &self.layers[1..] {
            xs = linear_last(l, &xs.gelu_erf()?)?;
        }
        Ok(xs)
    }

    /// Parameters of `mlp{depth}x_gelu` (depth 1 = `linear`).
    pub fn param_count(depth: usize, in_dim: usize, out_dim: usize) -> u64 {
        let (i, o) = (in_dim as u64, out_dim as u64);
        (i * o + o) + (depth.max(1) as u64 - 1) * (o * o + o)
    }
}
