//! Linear layers. Weights follow the PyTorch layout `[out_features, in_features]`.
//!
//! One [`Linear`] type for every model: its weight is either dense (f32/f16/bf16, one GEMM)
//! or quantized (a GGML block format, candle's integer-dot `QMatMul`). Which one is decided
//! at load time by the [`crate::quant`] load scope; model code only calls
//! [`Linear::forward`].
//!
//! A layer may carry a LoRA adapter kept apart from its weight ([`Linear::with_lora`]):
//! `y = x·Wᵀ + b + scale · (x·Aᵀ)·Bᵀ` with `A [r, in]`, `B [out, r]` — trainable when A and B
//! are `Var`s; [`Linear::merged`] folds it into a dense weight for export
//! ([`crate::lora::merge`]). In training (see [`crate::autograd`]) a quantized weight is
//! dequantized for the product, because `QMatMul` has no backward.

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

/// A LoRA adapter beside the base weight: adds `scale · (x·Aᵀ)·Bᵀ`.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    /// `[r, in]`
    pub a: Tensor,
    /// `[out, r]`
    pub b: Tensor,
    /// `alpha / r` in peft.
    pub scale: f64,
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
    lora: Option<LoraAdapter>,
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
            lora: None,
        }
    }

    /// A layer over an already-quantized `[out, in]` weight.
    ///
    /// Block-quantized rows whose length is not a multiple of
    /// [`crate::quant::ROW_MULTIPLE`] (Qwen2-0.5B's 896, say) get all-zero blocks appended,
    /// which decode to exact zeros in every GGML format, so the fast repacked kernels apply
    /// (see [`WeightFormat::plan_for_row_length`]); the product is unchanged.
    pub fn from_qtensor(weight: Arc<QTensor>, bias: Option<Tensor>) -> Result<Self> {
        let (out_dim, in_dim) = weight.shape().dims2()?;
        let (weight, padded_in) = pad_rows_with_zero_blocks(weight)?;
        Ok(Self {
            weight: Weight::Quantized(QMatMul::from_arc(weight)?),
            bias,
            in_dim,
            out_dim,
            padded_in,
            lora: None,
        })
    }

    /// This layer with a LoRA adapter (replacing any earlier one): `a [r, in]`, `b [out, r]`,
    /// forward adds `scale · (x·Aᵀ)·Bᵀ`. Pass `Var` tensors to train them.
    pub fn with_lora(mut self, a: Tensor, b: Tensor, scale: f64) -> Result<Self> {
        let (r, a_in) = a.dims2()?;
        let (b_out, b_r) = b.dims2()?;
        if a_in != self.in_dim || b_out != self.out_dim || b_r != r {
            candle_core::bail!(
                "LoRA shapes do not fit a [{}, {}] linear layer: A {:?}, B {:?}",
                self.out_dim,
                self.in_dim,
                a.dims(),
                b.dims()
            );
        }
        self.lora = Some(LoraAdapter { a, b, scale });
        Ok(self)
    }

    /// The LoRA adapter, when one is attached.
    pub fn lora(&self) -> Option<&LoraAdapter> {
        self.lora.as_ref()
    }

    /// This layer without its adapter.
    pub fn without_lora(mut self) -> Self {
        self.lora = None;
        self
    }

    /// The adapter folded into the weight (`W + scale·B·A`, [`crate::lora::merge`]): a
    /// dense layer with no adapter, in the weight's dtype. A layer without an adapter is
    /// returned as is; a quantized one with an adapter is an error (merge into the dense
    /// checkpoint weight instead).
    pub fn merged(&self) -> Result<Self> {
        let Some(lora) = &self.lora else {
            return Ok(self.clone());
        };
        let Weight::Dense(w) = &self.weight else {
            candle_core::bail!("cannot merge a LoRA adapter into a quantized weight");
        };
        let w = crate::lora::merge(&w.detach(), &lora.a.detach(), &lora.b.detach(), lora.scale)?;
        Ok(Self::new(w, self.bias.clone()))
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
        let q = quantize_in_row_blocks(w, format, padded_in)?;
        let bias = self
            .bias
            .as_ref()
            .map(|b| b.to_dtype(DType::F32))
            .transpose()?;
        let mut layer = Self::from_qtensor(Arc::new(q), bias)?;
        layer.in_dim = self.in_dim;
        layer.padded_in = padded_in;
        layer.lora = self.lora.clone();
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
            // `QMatMul` has no backward: with gradients flowing, multiply by the
            // dequantized weight (slow; train on dense weights).
            Weight::Quantized(q) if crate::autograd::is_differentiable(&flat) => {
                let w = match q {
                    QMatMul::QTensor(qt) => qt
                        .dequantize(flat.device())?
                        .narrow(1, 0, self.in_dim)?
                        .to_dtype(flat.dtype())?,
                    QMatMul::Tensor(w) | QMatMul::TensorF16(w) => w.to_dtype(flat.dtype())?,
                };
                flat.matmul(&w.t()?)?
            }
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
        let ys = match &self.lora {
            None => ys,
            Some(l) => {
                let dt = ys.dtype();
                let low = flat
                    .matmul(&l.a.to_dtype(flat.dtype())?.t()?)?
                    .matmul(&l.b.to_dtype(flat.dtype())?.t()?)?;
                (ys + (low * l.scale)?.to_dtype(dt)?)?
            }
        };
        ys.reshape(out_dims)
    }
}

/// Quantize a dense `[out, in]` weight with rows zero-padded to `padded_in`, a block of rows
/// at a time (in parallel): only one block's f32/padded copy exists at once, instead of a
/// padded copy of the whole matrix (622 MB for a Qwen2-0.5B `lm_head`).
fn quantize_in_row_blocks(w: &Tensor, format: WeightFormat, padded_in: usize) -> Result<QTensor> {
    use candle_core::quantized::QStorage;
    use rayon::prelude::*;
    const ROWS: usize = 512;
    let (out_dim, in_dim) = w.dims2()?;
    let blocks: Vec<usize> = (0..out_dim).step_by(ROWS).collect();
    let parts = blocks
        .par_iter()
        .map(|&r0| -> Result<Vec<u8>> {
            let n = ROWS.min(out_dim - r0);
            let mut block = w.narrow(0, r0, n)?;
            if padded_in > in_dim {
                block = block.pad_with_zeros(1, 0, padded_in - in_dim)?;
            }
            Ok(quantize_weight(&block, format)?.data()?.into_owned())
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes: Vec<u8> = parts.concat();
    let storage = QStorage::from_data(
        std::borrow::Cow::Owned(bytes),
        w.device(),
        format.ggml_dtype(),
    )?;
    QTensor::new(storage, (out_dim, padded_in))
}

/// Append all-zero blocks to every row of a block-quantized `[out, in]` weight so that rows
/// are a multiple of [`crate::quant::ROW_MULTIPLE`] long. Float weights are returned as is.
fn pad_rows_with_zero_blocks(q: Arc<QTensor>) -> Result<(Arc<QTensor>, usize)> {
    use candle_core::quantized::{GgmlDType, QStorage};
    let (out_dim, in_dim) = q.shape().dims2()?;
    let dtype = q.dtype();
    let multiple = crate::quant::ROW_MULTIPLE;
    if matches!(dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
        || in_dim % multiple == 0
        || multiple % dtype.block_size() != 0
    {
        return Ok((q, in_dim));
    }
    let padded = in_dim.div_ceil(multiple) * multiple;
    let row_bytes = in_dim / dtype.block_size() * dtype.type_size();
    let padded_row_bytes = padded / dtype.block_size() * dtype.type_size();
    let data = q.data()?;
    if data.len() != out_dim * row_bytes {
        candle_core::bail!(
            "quantized weight [{out_dim}, {in_dim}] {dtype:?} has {} bytes, expected {}",
            data.len(),
            out_dim * row_bytes
        );
    }
    let mut bytes = vec![0u8; out_dim * padded_row_bytes];
    for (src, dst) in data
        .chunks_exact(row_bytes)
        .zip(bytes.chunks_exact_mut(padded_row_bytes))
    {
        dst[..row_bytes].copy_from_slice(src);
    }
    let storage = QStorage::from_data(std::borrow::Cow::Owned(bytes), &q.device(), dtype)?;
    Ok((Arc::new(QTensor::new(storage, (out_dim, padded))?), padded))
}

/// Apply several layers to the same input: `[l.forward(xs) for l in layers]`.
///
/// When every layer is quantized in the same format with the same row length (q/k/v, or
/// gate/up), candle's fused kernel quantizes the activations once and runs all products in
/// one parallel region — in decoding, where each product is tiny, that per-call overhead is
/// a large part of the step. Otherwise (dense layers, other CPUs) the layers run one by one.
pub fn forward_many(layers: &[&Linear], xs: &Tensor) -> Result<Vec<Tensor>> {
    // Adapters and training take the layers one by one (the fused kernel has neither).
    let plain = layers.iter().all(|l| l.lora.is_none()) && !crate::autograd::is_differentiable(xs);
    let fused = if plain { fused_qtensors(layers) } else { None };
    if let Some(qs) = fused {
        let dims = xs.dims();
        let last = *dims.last().unwrap_or(&0);
        let rows = xs.elem_count() / last.max(1);
        let padded_in = layers[0].padded_in;
        let mut x = xs.reshape((rows, last))?.to_dtype(DType::F32)?;
        if padded_in > last {
            x = x.pad_with_zeros(1, 0, padded_in - last)?;
        }
        let x = x.contiguous()?;
        if let Some(outs) = QTensor::gemv_fused_shared_lhs(&qs, &x)? {
            return outs
                .into_iter()
                .zip(layers)
                .map(|(y, l)| {
                    let y = match &l.bias {
                        Some(b) => y.broadcast_add(b)?,
                        None => y,
                    };
                    let mut out_dims = dims.to_vec();
                    *out_dims.last_mut().unwrap() = l.out_dim;
                    y.to_dtype(xs.dtype())?.reshape(out_dims)
                })
                .collect();
        }
    }
    layers.iter().map(|l| l.forward(xs)).collect()
}

fn fused_qtensors<'a>(layers: &[&'a Linear]) -> Option<Vec<&'a QTensor>> {
    let first = layers.first()?;
    let mut qs = Vec::with_capacity(layers.len());
    for l in layers {
        let q = l.qtensor()?;
        if l.padded_in != first.padded_in
            || l.in_dim != first.in_dim
            || q.dtype() != first.qtensor()?.dtype()
            || l.bias.as_ref().is_some_and(|b| b.dtype() != DType::F32)
        {
            return None;
        }
        qs.push(q.as_ref());
    }
    Some(qs)
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
        let w = crate::test_tensor((64, 512), 1);
        let b = crate::test_tensor(64, 2);
        let x = crate::test_tensor((2, 5, 512), 3);
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
        // A stored quantized weight with short rows is padded with zero blocks. The kernels
        // differ (the padded one quantizes activations per 256 instead of per 32), so both
        // are checked against the dense product.
        let w = crate::test_tensor((16, 96), 4);
        let x = crate::test_tensor((3, 96), 5);
        let q = Arc::new(quantize_weight(&w, WeightFormat::Q8_0)?);
        let unpadded = QMatMul::from_arc(q.clone())?.forward(&x)?;
        let padded = Linear::from_qtensor(q, None)?;
        assert_eq!(padded.padded_in, 256);
        let dense = x.matmul(&w.t()?)?;
        assert!(rel_err(&unpadded, &dense) < 0.01);
        let e = rel_err(&padded.forward(&x)?, &dense);
        assert!(e < 0.01, "zero-block padding: relative error {e}");
        // A row length that fits no block is padded with zeros: same product.
        let w = crate::test_tensor((8, 40), 6);
        let x = crate::test_tensor((3, 40), 7);
        let odd = Linear::new(w.clone(), None).quantized(WeightFormat::Q8_0)?;
        assert!(odd.is_quantized());
        assert_eq!(odd.in_dim(), 40);
        let e = rel_err(&odd.forward(&x)?, &x.matmul(&w.t()?)?);
        assert!(e < 0.01, "padded q8_0: {e}");
        // Several layers on one input: the fused path equals the layers one by one.
        let ls: Vec<Linear> = (0..3)
            .map(|i| {
                Linear::new(
                    crate::test_tensor((16 * (i + 1), 96), 40 + i as u64),
                    Some(crate::test_tensor(16 * (i + 1), 50 + i as u64)),
                )
                .quantized(WeightFormat::Q8_0)
            })
            .collect::<Result<_>>()?;
        let refs: Vec<&Linear> = ls.iter().collect();
        // With an adapter on one of them, every layer runs on its own and adds its adapter.
        let a = crate::test_tensor((2, 96), 70);
        let zero_b = Tensor::zeros((32, 2), DType::F32, &dev)?;
        let adapted = ls[1].clone().with_lora(a.clone(), zero_b, 2.0)?;
        let x = crate::test_tensor((1, 3, 96), 71);
        let with = forward_many(&[&ls[0], &adapted], &x)?;
        let d = (&with[1] - ls[1].forward(&x)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert_eq!(d, 0.0, "B = 0 adds nothing");
        assert!(adapted.is_quantized() && adapted.merged().is_err());
        for rows in [1, 5] {
            let x = crate::test_tensor((1, rows, 96), 60 + rows as u64);
            let many = forward_many(&refs, &x)?;
            for (l, y) in ls.iter().zip(&many) {
                let one = l.forward(&x)?;
                assert_eq!(y.dims(), one.dims());
                let d = (y - one)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(d < 1e-5, "fused vs single: {d}");
            }
        }
        Ok(())
    }

    /// A LoRA adapter adds `scale · (x·Aᵀ)·Bᵀ`; merged, it gives the same product with one
    /// dense weight; gradients reach A and B.
    #[test]
    fn lora_adapter_forward_merge_and_gradients() -> Result<()> {
        let w = crate::test_tensor((6, 4), 80);
        let bias = crate::test_tensor(6, 81);
        let a = candle_core::Var::from_tensor(&crate::test_tensor((2, 4), 82))?;
        let b = candle_core::Var::from_tensor(&crate::test_tensor((6, 2), 83))?;
        let x = crate::test_tensor((3, 5, 4), 84);
        let l = Linear::new(w.clone(), Some(bias.clone())).with_lora(
            a.as_tensor().clone(),
            b.as_tensor().clone(),
            0.5,
        )?;
        let want = (Linear::new(w.clone(), Some(bias.clone())).forward(&x)?
            + x.matmul(&a.as_tensor().t()?.unsqueeze(0)?.broadcast_as((3, 4, 2))?)?
                .matmul(&b.as_tensor().t()?.unsqueeze(0)?.broadcast_as((3, 2, 6))?)?
                .affine(0.5, 0.0)?)?;
        let got = l.forward(&x)?;
        assert!(rel_err(&got, &want) < 1e-6);
        let merged = l.merged()?;
        assert!(merged.lora().is_none() && l.lora().is_some());
        assert!(rel_err(&merged.forward(&x)?, &want) < 1e-6);
        let grads = got.sum_all()?.backward()?;
        assert!(grads.get(a.as_tensor()).is_some() && grads.get(b.as_tensor()).is_some());
        assert!(Linear::new(w, None)
            .with_lora(
                crate::test_tensor((2, 5), 1),
                crate::test_tensor((6, 2), 2),
                1.0
            )
            .is_err());
        Ok(())
    }
}
