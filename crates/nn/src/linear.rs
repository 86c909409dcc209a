//! Linear layers. Weights follow the PyTorch layout `[out_features, in_features]`.
//!
//! One [`Linear`] type for every model: its weight is either dense (f32/f16/bf16, one GEMM)
//! or quantized (a GGML block format, candle's integer-dot `QMatMul`). Which one is decided
//! at load time by the [`crate::quant`] load scope; model code only calls
//! [`Linear::forward`].

use crate::quant::{current_scope, quantize_weight, WeightFormat};
use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;
use std::sync::Arc;

#[derive(Debug, Clone)]
enum Weight {
    Dense(Tensor),
    Quantized(QMatMul),
}

#[derive(Debug, Clone)]
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
    in_dim: usize,
    out_dim: usize,
    /// Row length of a quantized weight padded with zero columns to whole blocks
    /// (`== in_dim` when no padding was needed).
    padded_in: usize,
}

impl Linear {
    /// A dense layer from a `[out, in]` weight.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        let (out_dim, in_dim) = weight.dims2().unwrap_or((0, 0));
        Self {
            weight: Weight::Dense(weight),
            bias,
            in_dim,
            out_dim,
            padded_in: in_dim,
        }
    }

    /// A layer over an already-quantized `[out, in]` weight.
    pub fn from_qtensor(weight: Arc<QTensor>, bias: Option<Tensor>) -> Result<Self> {
        let (out_dim, in_dim) = weight.shape().dims2()?;
        Ok(Self {
            weight: Weight::Quantized(QMatMul::from_arc(weight)?),
            bias,
            in_dim,
            out_dim,
            padded_in: in_dim,
        })
    }

    /// The dense weight; `None` for a quantized layer.
    pub fn weight(&self) -> Option<&Tensor> {
        match &self.weight {
            Weight::Dense(w) => Some(w),
            Weight::Quantized(QMatMul::Tensor(w)) => Some(w),
            Weight::Quantized(_) => None,
        }
    }

    /// The quantized weight; `None` for a dense layer.
    pub fn qtensor(&self) -> Option<&Arc<QTensor>> {
        match &self.weight {
            Weight::Quantized(QMatMul::QTensor(q)) => Some(q),
            _ => None,
        }
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    pub fn out_dim(&self) -> usize {
        self.out_dim
    }

    /// Is the weight stored in a quantized block format?
    pub fn is_quantized(&self) -> bool {
        self.qtensor().is_some()
    }

    /// Bytes the weight (and bias) occupy in memory.
    pub fn weight_bytes(&self) -> usize {
        let w = match &self.weight {
            Weight::Dense(w) => w.elem_count() * w.dtype().size_in_bytes(),
            Weight::Quantized(QMatMul::QTensor(q)) => q.storage_size_in_bytes(),
            Weight::Quantized(QMatMul::Tensor(w) | QMatMul::TensorF16(w)) => {
                w.elem_count() * w.dtype().size_in_bytes()
            }
        };
        w + self
            .bias
            .as_ref()
            .map(|b| b.elem_count() * b.dtype().size_in_bytes())
            .unwrap_or(0)
    }

    /// Convert a dense layer to `format` (see [`WeightFormat::plan_for_row_length`] for
    /// the Q8_0 fallback and the zero padding of rows to whole blocks). Layers that are
    /// already quantized are returned unchanged.
    pub fn quantized(&self, format: WeightFormat) -> Result<Self> {
        let Weight::Dense(w) = &self.weight else {
            return Ok(self.clone());
        };
        let (format, padded_in) = format.plan_for_row_length(self.in_dim);
        let w = if padded_in > self.in_dim {
            w.pad_with_zeros(1, 0, padded_in - self.in_dim)?
        } else {
            w.clone()
        };
        let q = quantize_weight(&w, format)?;
        let bias = self.bias.as_ref().map(|b| b.to_dtype(DType::F32)).transpose()?;
        let mut layer = Self::from_qtensor(Arc::new(q), bias)?;
        layer.in_dim = self.in_dim;
        layer.padded_in = padded_in;
        Ok(layer)
    }

    /// `xs @ W^T + b` over the last dimension; works for any number of leading dims.
    ///
    /// Dense weights run as one 2-D GEMM over all leading positions (no per-batch
    /// broadcast of the weight). Quantized weights take f32 activations (cast in and out
    /// when the model computes in f16/bf16).
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let dims = xs.dims();
        let last = *dims
            .last()
            .ok_or_else(|| candle_core::Error::Msg("linear: rank-0 input".into()))?;
        let rows = xs.elem_count() / last.max(1);
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().unwrap() = self.out_dim;
        let flat = xs.reshape((rows, last))?;
        let ys = match &self.weight {
            Weight::Dense(w) => flat.matmul(&w.t()?)?,
            Weight::Quantized(q) => {
                let in_dtype = flat.dtype();
                let mut x = flat.to_dtype(DType::F32)?;
                if self.padded_in > last {
                    x = x.pad_with_zeros(1, 0, self.padded_in - last)?;
                }
                let ys = q.forward(&x)?;
                ys.to_dtype(in_dtype)?
            }
        };
        let ys = match &self.bias {
            Some(b) => ys.broadcast_add(&b.to_dtype(ys.dtype())?)?,
            None => ys,
        };
        ys.reshape(out_dims)
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        Linear::forward(self, xs)
    }
}

/// Apply the current load scope's quantization to a layer built by hand (a tied `lm_head`
/// that shares the embedding table, say); unchanged outside a quantizing scope.
pub fn quantize_in_scope(layer: Linear) -> Result<Linear> {
    match current_scope().quantize {
        Some(format) => layer.quantized(format),
        None => Ok(layer),
    }
}

/// Linear with bias (`weight`, `bias` under `vb`).
pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    linear_b(in_dim, out_dim, true, vb)
}

/// Linear without bias (`weight` only).
pub fn linear_no_bias(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    linear_b(in_dim, out_dim, false, vb)
}

/// Linear whose bias presence is decided by the caller's config.
///
/// Inside a [`crate::quant::with_load_scope`], the weight comes already quantized from the
/// scope's source when it has `<prefix>.weight`, or is quantized right after it is read.
pub fn linear_b(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> Result<Linear> {
    let bias = if bias {
        Some(vb.get(out_dim, "bias")?)
    } else {
        None
    };
    let scope = current_scope();
    if let Some(source) = &scope.source {
        if let Some(q) = source.get(&format!("{}.weight", vb.prefix())) {
            let dims = q.shape().dims();
            if dims != [out_dim, in_dim] {
                candle_core::bail!(
                    "{}.weight: stored shape {dims:?}, model expects [{out_dim}, {in_dim}]",
                    vb.prefix()
                );
            }
            return Linear::from_qtensor(q, bias);
        }
    }
    let weight = vb.get((out_dim, in_dim), "weight")?;
    let dense = Linear::new(weight, bias);
    match scope.quantize {
        Some(format) => dense.quantized(format),
        None => Ok(dense),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{with_load_scope, LoadScope};
    use candle_core::Device;
    use std::collections::HashMap;

    fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b).unwrap().sqr().unwrap().sum_all().unwrap();
        let n = b.sqr().unwrap().sum_all().unwrap();
        (d.to_scalar::<f32>().unwrap() / n.to_scalar::<f32>().unwrap()).sqrt()
    }

    /// Quantized layers agree with the dense product within each format's error, are
    /// smaller, keep the bias, and a row length that fits no block stays dense.
    #[test]
    fn quantized_forward_tracks_dense() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (64, 512), &dev)?;
        let b = Tensor::randn(0f32, 1.0, 64, &dev)?;
        let x = Tensor::randn(0f32, 1.0, (2, 5, 512), &dev)?;
        let mut ts = HashMap::new();
        ts.insert("l.weight".to_string(), w.clone());
        ts.insert("l.bias".to_string(), b.clone());
        let vb = VarBuilder::from_tensors(ts, DType::F32, &dev);
        let dense = linear(512, 64, vb.pp("l"))?;
        let want = x
            .reshape((10, 512))?
            .matmul(&w.t()?)?
            .broadcast_add(&b)?
            .reshape((2, 5, 64))?;
        assert!(rel_err(&dense.forward(&x)?, &want) < 1e-6);
        for (format, tol) in [
            (WeightFormat::Q8_0, 0.01),
            (WeightFormat::Q6K, 0.03),
            (WeightFormat::Q4K, 0.08),
        ] {
            let q = with_load_scope(LoadScope::quantize(format), || linear(512, 64, vb.pp("l")))?;
            assert!(q.is_quantized());
            assert!(q.weight_bytes() < dense.weight_bytes() / 3);
            let got = q.forward(&x)?;
            assert_eq!(got.dims(), &[2, 5, 64]);
            let e = rel_err(&got, &want);
            assert!(e < tol, "{format}: relative error {e}");
            assert!(e > 0.0, "{format}: must differ from dense at all");
        }
        // A row length that fits no block is padded with zeros: same product.
        let w = Tensor::randn(0f32, 1.0, (8, 40), &dev)?;
        let x = Tensor::randn(0f32, 1.0, (3, 40), &dev)?;
        let odd = Linear::new(w.clone(), None).quantized(WeightFormat::Q8_0)?;
        assert!(odd.is_quantized());
        assert_eq!(odd.in_dim(), 40);
        let e = rel_err(&odd.forward(&x)?, &x.matmul(&w.t()?)?);
        assert!(e < 0.01, "padded q8_0: {e}");
        Ok(())
    }
}
