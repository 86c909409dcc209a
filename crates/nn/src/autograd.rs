//! The training switch: which ops run when gradients must flow.
//!
//! Inference runs fast paths that candle's autograd cannot see through: the fused CPU
//! attention ([`crate::attention_cpu`]), the vectorised activations and softmax
//! ([`crate::fastmath`]), candle's fused `layer_norm` / `rms_norm` / `rope` kernels and the
//! quantized `QMatMul` — all are applied with `apply_op*_no_bwd` or build new tensors from
//! host data, so a gradient would silently stop there. A layer takes its differentiable
//! form (plain candle ops, each with a backward) when [`is_differentiable`] says so:
//!
//! ```text
//! input.track_op()  ── true when the tensor is a Var or was computed from one
//!        or
//! autograd_scope(|| …) ── forces the differentiable forms for everything inside
//!                         (finite-difference checks evaluate the same ops as backward)
//! ```
//!
//! Inference tensors never track ops (checkpoint weights are plain tensors), so inference
//! keeps its fast paths and its exact numerics; training needs no flag, because every
//! activation downstream of a trainable `Var` tracks ops.

use candle_core::{DType, Result, Tensor, D};
use std::cell::Cell;

use crate::norm::{LayerNorm, RmsNorm};

thread_local! {
    static FORCED: Cell<bool> = const { Cell::new(false) };
}

/// Run `f` with the differentiable forms of every layer forced on this thread (also for
/// inputs that track no op), restoring the previous state afterwards.
pub fn autograd_scope<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            FORCED.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(FORCED.with(|c| c.replace(true)));
    f()
}

/// Is an [`autograd_scope`] active on this thread?
pub fn forced() -> bool {
    FORCED.with(|c| c.get())
}

/// Must an op on `xs` stay visible to autograd?
pub fn is_differentiable(xs: &Tensor) -> bool {
    forced() || xs.track_op()
}

/// [`is_differentiable`] for an op with several inputs.
pub fn any_differentiable(xs: &[&Tensor]) -> bool {
    forced() || xs.iter().any(|t| t.track_op())
}

/// LayerNorm over the last dim: candle's fused kernel for inference, the composed form
/// (mean, variance, affine — each op with a backward) when gradients must flow to the
/// input or to the affine parameters.
pub fn layer_norm(ln: &LayerNorm, xs: &Tensor) -> Result<Tensor> {
    let mut params = vec![xs, ln.weight()];
    if let Some(b) = ln.bias() {
        params.push(b);
    }
    if !any_differentiable(&params) {
        return candle_core::Module::forward(ln, xs);
    }
    let dtype = xs.dtype();
    let internal = match dtype {
        DType::F16 | DType::BF16 => DType::F32,
        d => d,
    };
    let x = xs.to_dtype(internal)?;
    let x = if ln.remove_mean() {
        x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?
    } else {
        x
    };
    let var = x.sqr()?.mean_keepdim(D::Minus1)?;
    let x = x.broadcast_div(&(var + ln.eps())?.sqrt()?)?;
    let x = x.to_dtype(dtype)?.broadcast_mul(ln.weight())?;
    match ln.bias() {
        Some(b) => x.broadcast_add(b),
        None => Ok(x),
    }
}

/// RMSNorm: candle's fused kernel for inference, its composed form (`forward_diff`) when
/// gradients must flow.
pub fn rms_norm(norm: &RmsNorm, xs: &Tensor) -> Result<Tensor> {
    if is_differentiable(xs) {
        norm.forward_diff(xs)
    } else {
        candle_core::Module::forward(norm, xs)
    }
}

/// Softmax over the last dim in the input dtype, composed of ops with a backward
/// (`max`, `exp`, `sum`, `div`); a row that is all `-inf` gives NaN, as PyTorch.
pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    if is_differentiable(xs) {
        candle_nn::ops::softmax(xs, D::Minus1)
    } else {
        crate::fastmath::softmax_last_dim(xs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The composed forms equal the fused kernels, and gradients reach the parameters.
    #[test]
    fn differentiable_norms_match_fused_and_have_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let x = crate::test_tensor((3, 5, 8), 21);
        let w = Var::from_tensor(&crate::test_tensor(8, 22).affine(0.1, 1.0)?)?;
        let b = Var::from_tensor(&crate::test_tensor(8, 23))?;
        let ln = LayerNorm::new(w.as_tensor().clone(), b.as_tensor().clone(), 1e-5);
        let plain = LayerNorm::new(w.as_tensor().detach(), b.as_tensor().detach(), 1e-5);
        assert!(!is_differentiable(&x));
        let fused = layer_norm(&plain, &x)?;
        let composed = layer_norm(&ln, &x)?;
        let d = (&fused - &composed)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(d < 1e-5, "layer norm: {d}");
        let grads = composed.sqr()?.sum_all()?.backward()?;
        assert!(grads.get(w.as_tensor()).is_some() && grads.get(b.as_tensor()).is_some());

        let rms = RmsNorm::new(w.as_tensor().detach(), 1e-6);
        let xv = Var::from_tensor(&x)?;
        let fused = rms_norm(&rms, &x)?;
        let composed = rms_norm(&rms, xv.as_tensor())?;
        let d = (&fused - &composed)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(d < 1e-5, "rms norm: {d}");
        let grads = composed.sum_all()?.backward()?;
        assert!(grads.get(xv.as_tensor()).is_some());

        let s = softmax_last_dim(xv.as_tensor())?;
        let f = softmax_last_dim(&x)?;
        let d = (&s - &f)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(d < 1e-6, "softmax: {d}");
        assert!(s.track_op() && !f.track_op());

        // The scope forces the composed forms for plain tensors too, and is restored.
        assert!(autograd_scope(|| is_differentiable(&x)));
        assert!(!forced());
        let _ = dev;
        Ok(())
    }

    /// Gradients of a small f64 block (LoRA linear → causal GQA attention → LayerNorm →
    /// SiLU) with respect to the LoRA factors and the input equal central finite
    /// differences: relative error < 1e-6.
    #[test]
    fn gradients_match_finite_differences_in_f64() -> Result<()> {
        use crate::attention::{attention, AttentionMask};
        use crate::{Activation, Linear};
        let f64t = |shape: &[usize], seed| -> Result<Tensor> {
            crate::test_tensor(shape, seed).to_dtype(DType::F64)
        };
        let (l, h, hq, hkv, d) = (5usize, 8usize, 4usize, 2usize, 2usize);
        let w = f64t(&[h + 2 * hkv * d, h], 31)?.affine(0.3, 0.0)?;
        let x = Var::from_tensor(&f64t(&[1, l, h], 32)?)?;
        let a = Var::from_tensor(&f64t(&[3, h], 33)?.affine(0.2, 0.0)?)?;
        let b = Var::from_tensor(&f64t(&[h + 2 * hkv * d, 3], 34)?.affine(0.2, 0.0)?)?;
        let ln = LayerNorm::new(f64t(&[h], 35)?.affine(0.1, 1.0)?, f64t(&[h], 36)?, 1e-5);
        let target = f64t(&[1, l, h], 37)?;
        let loss = |x: &Tensor, a: &Tensor, b: &Tensor| -> Result<Tensor> {
            let lin = Linear::new(w.clone(), None).with_lora(a.clone(), b.clone(), 0.7)?;
            let y = lin.forward(x)?;
            let heads = |t: Tensor, n| t.reshape((1, l, n, d))?.transpose(1, 2);
            let q = heads(y.narrow(2, 0, h)?, hq)?;
            let k = heads(y.narrow(2, h, hkv * d)?, hkv)?;
            let v = heads(y.narrow(2, h + hkv * d, hkv * d)?, hkv)?;
            let o = attention(&q, &k, &v, 0.5, AttentionMask::Causal { offset: 0 })?
                .transpose(1, 2)?
                .reshape((1, l, h))?;
            let o = Activation::Silu.forward(&layer_norm(&ln, &o)?)?;
            (o * &target)?.sum_all()
        };
        let grads = loss(x.as_tensor(), a.as_tensor(), b.as_tensor())?.backward()?;
        let eps = 1e-6;
        for (name, var) in [("x", &x), ("A", &a), ("B", &b)] {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name}"))
                .flatten_all()?
                .to_vec1::<f64>()?;
            let base = var.as_tensor().flatten_all()?.to_vec1::<f64>()?;
            let mut worst = 0f64;
            for i in 0..base.len() {
                let eval = |delta: f64| -> Result<f64> {
                    let mut p = base.clone();
                    p[i] += delta;
                    let t = Tensor::from_vec(p, var.shape(), &Device::Cpu)?;
                    let args = match name {
                        "x" => (t, a.as_tensor().clone(), b.as_tensor().clone()),
                        "A" => (x.as_tensor().clone(), t, b.as_tensor().clone()),
                        _ => (x.as_tensor().clone(), a.as_tensor().clone(), t),
                    };
                    autograd_scope(|| loss(&args.0, &args.1, &args.2))?.to_scalar::<f64>()
                };
                let fd = (eval(eps)? - eval(-eps)?) / (2.0 * eps);
                worst = worst.max((fd - g[i]).abs() / fd.abs().max(g[i].abs()).max(1e-3));
            }
            assert!(worst < 1e-6, "d loss / d {name}: relative error {worst}");
        }
        Ok(())
    }
}
