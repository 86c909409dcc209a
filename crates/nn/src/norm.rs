//! Normalisation layers: LayerNorm, RMSNorm, and the channel-wise `LayerNorm2d`.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

pub use candle_nn::{LayerNorm, RmsNorm};

/// LayerNorm with affine `weight` and `bias` under `vb`.
pub fn layer_norm(size: usize, eps: f64, vb: VarBuilder) -> Result<LayerNorm> {
    let weight = vb.get(size, "weight")?;
    let bias = vb.get(size, "bias")?;
    Ok(LayerNorm::new(weight, bias, eps))
}

/// RMSNorm with a `weight` under `vb` (no bias), as in Llama/Mistral/Qwen2.
pub fn rms_norm(size: usize, eps: f64, vb: VarBuilder) -> Result<RmsNorm> {
    candle_nn::rms_norm(size, eps, vb)
}

/// LayerNorm over the channel axis of an `[N, C, H, W]` tensor (timm `LayerNorm2d`).
///
/// Implemented as permute to `NHWC` → LayerNorm on the last dim → permute back.
#[derive(Debug, Clone)]
pub struct LayerNorm2d {
    norm: LayerNorm,
}

impl LayerNorm2d {
    pub fn new(channels: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm: layer_norm(channels, eps, vb)?,
        })
    }

    /// `xs`: `[N, C, H, W]` → `[N, C, H, W]`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let nhwc = xs.permute((0, 2, 3, 1))?.contiguous()?;
        self.norm
            .forward(&nhwc)?
            .permute((0, 3, 1, 2))?
            .contiguous()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use std::collections::HashMap;

    #[test]
    fn layer_norm_2d_normalises_each_pixel_over_channels() -> Result<()> {
        let dev = Device::Cpu;
        let mut ts = HashMap::new();
        ts.insert(
            "weight".to_string(),
            Tensor::new(&[1.0f32, 2.0, 0.5], &dev)?,
        );
        ts.insert("bias".to_string(), Tensor::new(&[0.0f32, 1.0, -1.0], &dev)?);
        let vb = VarBuilder::from_tensors(ts, DType::F32, &dev);
        let ln = LayerNorm2d::new(3, 1e-5, vb)?;
        let xs = Tensor::arange(0f32, 12.0, &dev)?.reshape((1, 3, 2, 2))?;
        let ys = ln.forward(&xs)?;
        // pixel (0,0) has channel values 0, 4, 8: mean 4, var 32/3.
        let v = ys.to_vec3::<f32>().map(|_| ()).ok();
        let _ = v;
        let flat = ys.flatten_all()?.to_vec1::<f32>()?;
        let sd = (32.0f64 / 3.0 + 1e-5).sqrt();
        let expect = [
            (0.0 - 4.0) / sd * 1.0,
            (4.0 - 4.0) / sd * 2.0 + 1.0,
            (8.0 - 4.0) / sd * 0.5 - 1.0,
        ];
        assert!((flat[0] as f64 - expect[0]).abs() < 1e-5);
        assert!((flat[4] as f64 - expect[1]).abs() < 1e-5);
        assert!((flat[8] as f64 - expect[2]).abs() < 1e-5);
        Ok(())
    }
}
