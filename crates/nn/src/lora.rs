//! LoRA adapters merged into their base weight at load: `W' = W + (alpha / r) · B·A`.
//!
//! ```text
//! W [out, in] ─┐
//! A [r, in] ───┼─► W + scale · (B [out, r] · A [r, in]) ─► one dense weight, no extra matmul per token
//! B [out, r] ──┘
//! ```
//! peft names the factors `<module>.lora_A.weight` / `.lora_B.weight` (peft 0.2) or
//! `<module>.lora_A.default.weight` (peft ≥ 0.3, adapter name `default`); both are accepted.

use candle_core::{DType, Result, Tensor};

/// The two key spellings of a LoRA factor for the module whose weight is `<stem>.weight`:
/// `[peft 0.2, peft ≥ 0.3]`.
pub fn factor_keys(stem: &str, factor: char) -> [String; 2] {
    [
        format!("{stem}.lora_{factor}.weight"),
        format!("{stem}.lora_{factor}.default.weight"),
    ]
}

/// `w + scale · b·a`, computed in f32 and returned in `w`'s dtype. Shapes: `w [out, in]`,
/// `a [r, in]`, `b [out, r]`.
pub fn merge(w: &Tensor, a: &Tensor, b: &Tensor, scale: f64) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    let (r, a_in) = a.dims2()?;
    let (b_out, b_r) = b.dims2()?;
    if a_in != inp || b_out != out || b_r != r {
        candle_core::bail!(
            "LoRA shapes do not fit the base weight [{out}, {inp}]: A {:?}, B {:?}",
            a.dims(),
            b.dims()
        );
    }
    let dtype = w.dtype();
    let delta = b
        .to_dtype(DType::F32)?
        .matmul(&a.to_dtype(DType::F32)?)?
        .affine(scale, 0.0)?;
    (w.to_dtype(DType::F32)? + delta)?.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn merge_equals_adding_the_adapter_path() {
        let dev = &Device::Cpu;
        let w = crate::test_tensor((3, 4), 1);
        let a = crate::test_tensor((2, 4), 2);
        let b = crate::test_tensor((3, 2), 3);
        let x = crate::test_tensor((5, 4), 4);
        let merged = merge(&w, &a, &b, 0.25).unwrap();
        // x·W'ᵀ = x·Wᵀ + 0.25 · (x·Aᵀ)·Bᵀ — the adapter as peft runs it.
        let want = (x.matmul(&w.t().unwrap()).unwrap()
            + x.matmul(&a.t().unwrap())
                .unwrap()
                .matmul(&b.t().unwrap())
                .unwrap()
                .affine(0.25, 0.0)
                .unwrap())
        .unwrap();
        let got = x.matmul(&merged.t().unwrap()).unwrap();
        let diff = (got - want)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-5, "{diff}");
        let bad = Tensor::zeros((2, 5), DType::F32, dev).unwrap();
        assert!(merge(&w, &bad, &b, 1.0).is_err());
        assert_eq!(
            factor_keys("m.q_proj", 'A'),
            ["m.q_proj.lora_A.weight", "m.q_proj.lora_A.default.weight"]
        );
    }
}
