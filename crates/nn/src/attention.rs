//! Scaled-dot-product attention shared by the vision towers and the language models.
//!
//! Shapes: `q` is `[B, Hq, Lq, D]`, `k`/`v` are `[B, Hkv, Lk, D]` with `Hq % Hkv == 0`
//! (grouped-query attention: each KV head serves `Hq / Hkv` query heads).
//! The softmax runs in f32 whatever the activation dtype, as PyTorch SDPA does.

use candle_core::{DType, Result, Tensor, D};

/// Repeat KV heads so that `[B, Hkv, L, D]` becomes `[B, Hkv * n_rep, L, D]`.
pub fn repeat_kv(xs: Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(xs);
    }
    let (b, h, l, d) = xs.dims4()?;
    xs.unsqueeze(2)?
        .expand((b, h, n_rep, l, d))?
        .reshape((b, h * n_rep, l, d))
}

/// `softmax(q kᵀ · scale + mask) v`.
///
/// `mask`, when given, is additive and broadcastable to `[B, Hq, Lq, Lk]`
/// (use `-inf` for masked positions).
pub fn scaled_dot_product_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let n_rep = q.dim(1)? / k.dim(1)?;
    let k = repeat_kv(k.clone(), n_rep)?.contiguous()?;
    let v = repeat_kv(v.clone(), n_rep)?.contiguous()?;
    let in_dtype = q.dtype();
    let q = q.contiguous()?;
    let mut scores = (q.matmul(&k.t()?)? * scale)?;
    if let Some(mask) = mask {
        scores = scores.broadcast_add(&mask.to_dtype(scores.dtype())?)?;
    }
    let probs =
        candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(in_dtype)?;
    probs.matmul(&v)
}

/// Additive causal mask `[Lq, Lk]` for `Lq` new queries appended after `offset`
/// cached positions (`Lk = offset + Lq`): query `i` sees keys `0..=offset+i`.
pub fn causal_mask(
    lq: usize,
    offset: usize,
    dtype: DType,
    device: &candle_core::Device,
) -> Result<Tensor> {
    let lk = offset + lq;
    let mask: Vec<f32> = (0..lq)
        .flat_map(|i| {
            (0..lk).map(move |j| {
                if j > offset + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Tensor::from_vec(mask, (lq, lk), device)?.to_dtype(dtype)
}

/// Softmax over the last dimension computed in f32.
pub fn softmax_f32(xs: &Tensor) -> Result<Tensor> {
    let dt = xs.dtype();
    candle_nn::ops::softmax(&xs.to_dtype(DType::F32)?, D::Minus1)?.to_dtype(dt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Naive per-element attention as an independent check of the tensor version.
    #[test]
    fn gqa_causal_attention_matches_naive_loop() -> Result<()> {
        let dev = Device::Cpu;
        let (hq, hkv, l, d) = (4usize, 2usize, 3usize, 2usize);
        let q = Tensor::arange(0f32, (hq * l * d) as f32, &dev)?
            .affine(0.05, -0.3)?
            .reshape((1, hq, l, d))?;
        let k = Tensor::arange(0f32, (hkv * l * d) as f32, &dev)?
            .affine(-0.07, 0.2)?
            .reshape((1, hkv, l, d))?;
        let v = Tensor::arange(0f32, (hkv * l * d) as f32, &dev)?
            .affine(0.1, 0.0)?
            .reshape((1, hkv, l, d))?;
        let mask = causal_mask(l, 0, DType::F32, &dev)?;
        let out = scaled_dot_product_attention(&q, &k, &v, 0.5, Some(&mask))?;
        let out = out.to_vec3::<f32>().ok();
        let _ = out;
        let got = scaled_dot_product_attention(&q, &k, &v, 0.5, Some(&mask))?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let qv = q.flatten_all()?.to_vec1::<f32>()?;
        let kv = k.flatten_all()?.to_vec1::<f32>()?;
        let vv = v.flatten_all()?.to_vec1::<f32>()?;
        for h in 0..hq {
            let kh = h / (hq / hkv);
            for i in 0..l {
                let s: Vec<f64> = (0..=i)
                    .map(|j| {
                        (0..d)
                            .map(|c| {
                                qv[(h * l + i) * d + c] as f64 * kv[(kh * l + j) * d + c] as f64
                            })
                            .sum::<f64>()
                            * 0.5
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                for c in 0..d {
                    let want: f64 = (0..=i)
                        .map(|j| (s[j] - m).exp() / z * vv[(kh * l + j) * d + c] as f64)
                        .sum();
                    let g = got[(h * l + i) * d + c] as f64;
                    assert!((g - want).abs() < 1e-5, "h{h} i{i} c{c}: {g} vs {want}");
                }
            }
        }
        Ok(())
    }
}
