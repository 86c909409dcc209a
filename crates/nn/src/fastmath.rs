//! Element-wise kernels for the hot activations and the attention softmax, on contiguous
//! f32 CPU tensors: vectorised (AVX-512 or AVX2+FMA, picked at run time) and split over
//! the worker threads.
//!
//! Why: candle's CPU unary ops call libm's scalar `tanhf`/`expf` on one thread. In the
//! SigLIP tower the `gelu_pytorch_tanh` over `[frames·729, 4304]` and the softmax over
//! `[frames·16·729, 729]` scores took ~15 % of the time that way.
//!
//! `exp` is computed with a Cody–Waite range reduction and a degree-6 polynomial
//! (max relative error ≈ 2e-7 over the f32 range, measured in the tests against f64), so
//! results stay within the golden tolerance of the exact mode. Other dtypes, devices and
//! layouts fall back to candle's own ops.

use candle_core::{DType, Device, Result, Tensor};
use rayon::prelude::*;

/// Elements per parallel task (large enough that task overhead is negligible).
const CHUNK: usize = 1 << 14;

#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Round-to-nearest by the 1.5·2^23 trick (no libm call, so the loop vectorises).
    const MAGIC: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.7);
    let n = (x * LOG2E + MAGIC) - MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    // exp(r) on |r| ≤ ln2/2, Taylor coefficients to degree 6 (Horner).
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let bits = ((n as i32 + 127) as u32) << 23;
    p * f32::from_bits(bits)
}

#[inline(always)]
fn gelu_tanh_f32(x: f32) -> f32 {
    // 0.5·x·(1 + tanh(u)), tanh(u) = 1 − 2/(1 + e^{2u}), u = √(2/π)(x + 0.044715x³).
    const K: f32 = 0.797_884_6; // sqrt(2/pi)
    let u = K * (x + 0.044_715 * x * x * x);
    let t = 1.0 - 2.0 / (1.0 + exp_f32(2.0 * u));
    0.5 * x * (1.0 + t)
}

#[inline(always)]
fn quick_gelu_f32(x: f32) -> f32 {
    x / (1.0 + exp_f32(-1.702 * x))
}

#[inline(always)]
fn silu_f32(x: f32) -> f32 {
    x / (1.0 + exp_f32(-x))
}

/// Compile `body` once per instruction set and call the best one this CPU has.
macro_rules! multiversion {
    ($name:ident, $elem:ident, $body:expr) => {
        fn $name(xs: &mut [f32]) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512(xs: &mut [f32]) {
                    for $elem in xs.iter_mut() {
                        *$elem = $body;
                    }
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2(xs: &mut [f32]) {
                    for $elem in xs.iter_mut() {
                        *$elem = $body;
                    }
                }
                if std::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the feature was detected at run time.
                    return unsafe { avx512(xs) };
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the features were detected at run time.
                    return unsafe { avx2(xs) };
                }
            }
            for $elem in xs.iter_mut() {
                *$elem = $body;
            }
        }
    };
}

multiversion!(gelu_tanh_slice, x, gelu_tanh_f32(*x));
multiversion!(quick_gelu_slice, x, quick_gelu_f32(*x));
multiversion!(silu_slice, x, silu_f32(*x));
multiversion!(exp_slice, x, exp_f32(*x));

/// Which element-wise function.
#[derive(Debug, Clone, Copy)]
pub enum Unary {
    GeluTanh,
    QuickGelu,
    Silu,
}

/// Apply `f` to a contiguous f32 CPU tensor in parallel; `None` when the tensor is not one
/// (the caller then uses candle's op).
pub fn unary(xs: &Tensor, f: Unary) -> Result<Option<Tensor>> {
    if xs.dtype() != DType::F32 || !matches!(xs.device(), Device::Cpu) || !xs.is_contiguous() {
        return Ok(None);
    }
    let mut data = xs.flatten_all()?.to_vec1::<f32>()?;
    let kernel: fn(&mut [f32]) = match f {
        Unary::GeluTanh => gelu_tanh_slice,
        Unary::QuickGelu => quick_gelu_slice,
        Unary::Silu => silu_slice,
    };
    data.par_chunks_mut(CHUNK).for_each(kernel);
    Ok(Some(Tensor::from_vec(data, xs.shape(), xs.device())?))
}

/// Softmax over the last dimension of a contiguous f32 CPU tensor, rows in parallel; other
/// tensors go through candle's `softmax_last_dim`.
pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    if xs.dtype() != DType::F32 || !matches!(xs.device(), Device::Cpu) || !xs.is_contiguous() {
        return candle_nn::ops::softmax_last_dim(xs);
    }
    let cols = xs.dim(candle_core::D::Minus1)?;
    if cols == 0 {
        return Ok(xs.clone());
    }
    let mut data = xs.flatten_all()?.to_vec1::<f32>()?;
    let rows_per_task = (CHUNK / cols).max(1);
    data.par_chunks_mut(rows_per_task * cols)
        .for_each(|block| block.chunks_mut(cols).for_each(softmax_row));
    Tensor::from_vec(data, xs.shape(), xs.device())
}

/// Softmax of one row in place (vectorised exp). A fully masked row (all −inf) becomes
/// NaN, as in PyTorch.
pub fn softmax_row(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        row.iter_mut().for_each(|v| *v = f32::NAN);
        return;
    }
    row.iter_mut().for_each(|v| *v -= max);
    exp_slice(row);
    let sum: f32 = row.iter().sum();
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|v| *v *= inv);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate_over_the_range() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let got = exp_f32(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 5e-7, "max relative error {worst}");
        assert_eq!(exp_f32(-200.0), exp_f32(-87.3));
        assert!(exp_f32(0.0) == 1.0);
    }

    #[test]
    fn activations_and_softmax_match_f64() -> Result<()> {
        let xs = (crate::test_tensor((37, 1000), 11) * 3.0)?;
        let v = xs.flatten_all()?.to_vec1::<f32>()?;
        for (f, closed) in [
            (
                Unary::GeluTanh,
                (|x: f64| {
                    0.5 * x
                        * (1.0
                            + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3)))
                                .tanh())
                }) as fn(f64) -> f64,
            ),
            (Unary::QuickGelu, |x: f64| x / (1.0 + (-1.702 * x).exp())),
            (Unary::Silu, |x: f64| x / (1.0 + (-x).exp())),
        ] {
            let got = unary(&xs, f)?.unwrap().flatten_all()?.to_vec1::<f32>()?;
            for (g, x) in got.iter().zip(&v) {
                let want = closed(*x as f64);
                assert!(
                    (*g as f64 - want).abs() < 2e-6 * want.abs().max(1.0),
                    "{f:?}({x}) = {g}, want {want}"
                );
            }
        }
        let got = softmax_last_dim(&xs)?;
        let want = candle_nn::ops::softmax_last_dim(&xs)?;
        let d = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(d < 5e-6, "softmax differs by {d}");
        // Non-contiguous input falls back to candle.
        assert!(unary(&xs.t()?, Unary::Silu)?.is_none());
        Ok(())
    }
}
