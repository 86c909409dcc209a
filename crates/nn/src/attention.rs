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

/// Which keys each query may see in [`attention`].
#[derive(Debug, Clone, Copy)]
pub enum AttentionMask<'a> {
    /// Every query sees every key (vision towers, audio encoders).
    None,
    /// Causal: query `i` (at absolute position `offset + i`) sees keys `0..=offset+i`;
    /// the keys are the `offset` cached positions followed by the new ones.
    Causal { offset: usize },
    /// An additive mask broadcastable to `[B, Hq, Lq, Lk]`.
    Additive(&'a Tensor),
}

/// Bytes of attention scores one query block may hold; bounds the memory of attention
/// to `O(block · Lk)` instead of `O(Lq · Lk)` (a 2.8 k-token prompt would need
/// 14 heads × 2.8 k² × 4 B = 440 MB per layer for the full matrix).
pub const SCORE_BLOCK_BYTES: usize = 8 << 20;

/// `softmax(q kᵀ · scale + mask) v`, streamed over blocks of queries.
///
/// * Grouped-query heads are never repeated: the `Hq / Hkv` query heads that share a KV
///   head are stacked as extra rows of one matmul against that head's keys.
/// * Queries are processed in blocks sized so that one block's scores stay under
///   [`SCORE_BLOCK_BYTES`]; with a causal mask a block only reads the keys its last query
///   can see, so the masked upper triangle is mostly never computed.
/// * Each query row still sees all of its keys in one softmax, so the result is the same
///   row-wise computation as the full-matrix form (no online-softmax rescaling error).
///
/// Shapes: `q [B, Hq, Lq, D]`, `k`/`v` `[B, Hkv, Lk, D]`; returns `[B, Hq, Lq, D]`.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    mask: AttentionMask<'_>,
) -> Result<Tensor> {
    if crate::autograd::any_differentiable(&[q, k, v]) {
        return attention_differentiable(q, k, v, scale, mask);
    }
    let causal = match mask {
        AttentionMask::None => Some(None),
        AttentionMask::Causal { offset } => Some(Some(offset)),
        AttentionMask::Additive(_) => None,
    };
    if let (Some(causal), true) = (causal, fused_enabled()) {
        let (_, hq, lq, _) = q.dims4()?;
        let (_, hkv, lk, _) = k.dims4()?;
        let shapes_ok = hkv > 0 && hq % hkv == 0 && causal.is_none_or(|o| o + lq == lk);
        if shapes_ok {
            if let Some(out) = crate::attention_cpu::attention_f32(q, k, v, scale as f32, causal)? {
                return Ok(out);
            }
        }
    }
    attention_in_blocks(q, k, v, scale, mask, SCORE_BLOCK_BYTES)
}

/// [`attention`] made of ops that all have a backward (for training, see
/// [`crate::autograd`]): grouped heads stacked as in [`attention_in_blocks`], the whole
/// `[Lq, Lk]` score matrix at once, an additive `-inf` causal mask and the composed softmax
/// in f32 (or f64 for f64 inputs).
pub fn attention_differentiable(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    mask: AttentionMask<'_>,
) -> Result<Tensor> {
    let (b, hq, lq, d) = q.dims4()?;
    let (_, hkv, lk, _) = k.dims4()?;
    if hkv == 0 || hq % hkv != 0 {
        candle_core::bail!("attention: {hq} query heads do not share {hkv} KV heads evenly");
    }
    let n_rep = hq / hkv;
    let in_dtype = q.dtype();
    let soft_dtype = if in_dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    };
    // [B, Hkv, n_rep·Lq, D]: head h = kv·n_rep + r, its rows after each other.
    let q4 = (q.contiguous()? * scale)?.reshape((b, hkv, n_rep * lq, d))?;
    let scores = q4
        .matmul(&k.contiguous()?.t()?)?
        .to_dtype(soft_dtype)?
        .reshape((b, hkv, n_rep, lq, lk))?;
    let scores = match mask {
        AttentionMask::None => scores,
        AttentionMask::Causal { offset } => {
            if offset + lq != lk {
                candle_core::bail!("causal attention: {offset} cached + {lq} new != {lk} keys");
            }
            scores.broadcast_add(&causal_mask(lq, offset, soft_dtype, q.device())?)?
        }
        AttentionMask::Additive(m) => scores
            .reshape((b, hq, lq, lk))?
            .broadcast_add(&m.to_dtype(soft_dtype)?)?
            .reshape((b, hkv, n_rep, lq, lk))?,
    };
    let probs = candle_nn::ops::softmax(&scores, D::Minus1)?
        .to_dtype(in_dtype)?
        .reshape((b, hkv, n_rep * lq, lk))?;
    probs.matmul(&v.contiguous()?)?.reshape((b, hq, lq, d))
}

/// `VIDEOLLAMA_ATTENTION=tensor` forces the tensor form (for A/B measurements).
fn fused_enabled() -> bool {
    static FUSED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FUSED.get_or_init(|| std::env::var("VIDEOLLAMA_ATTENTION").as_deref() != Ok("tensor"))
}

/// [`attention`] with an explicit score budget per query block (tests use tiny ones).
pub fn attention_in_blocks(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    mask: AttentionMask<'_>,
    block_bytes: usize,
) -> Result<Tensor> {
    let (b, hq, lq, d) = q.dims4()?;
    let (_, hkv, lk, _) = k.dims4()?;
    if hkv == 0 || hq % hkv != 0 {
        candle_core::bail!("attention: {hq} query heads do not share {hkv} KV heads evenly");
    }
    if let AttentionMask::Additive(m) = mask {
        // The general additive mask is rare (no model of ours needs it on a hot path).
        return scaled_dot_product_attention(q, k, v, scale, Some(m));
    }
    let offset = match mask {
        AttentionMask::Causal { offset } => {
            if offset + lq != lk {
                candle_core::bail!("causal attention: {offset} cached + {lq} new != {lk} keys");
            }
            Some(offset)
        }
        _ => None,
    };
    let n_rep = hq / hkv;
    let in_dtype = q.dtype();
    // [B, Hkv, n_rep, Lq, D]: head h = kv * n_rep + r.
    let q5 = q.contiguous()?.reshape((b, hkv, n_rep, lq, d))?;
    let row_bytes = b * hq * lk * 4;
    let block = (block_bytes / row_bytes.max(1)).clamp(1, lq.max(1));
    let mut outs = Vec::with_capacity(lq.div_ceil(block));
    let mut i0 = 0;
    while i0 < lq {
        let n = block.min(lq - i0);
        let keys = match offset {
            Some(off) => off + i0 + n,
            None => lk,
        };
        // The scale is applied to q (n·d values) rather than to the scores (n·keys values).
        let qb = (q5.narrow(3, i0, n)? * scale)?.reshape((b, hkv, n_rep * n, d))?;
        let kb = k.narrow(2, 0, keys)?;
        let vb = v.narrow(2, 0, keys)?;
        let scores = qb.matmul(&kb.t()?)?.to_dtype(DType::F32)?;
        let scores = match offset {
            // Only the last `n` keys can be in a query's future inside this block.
            Some(off) if n > 1 => {
                let m = causal_mask(n, off + i0, DType::F32, q.device())?;
                scores
                    .reshape((b, hkv, n_rep, n, keys))?
                    .broadcast_add(&m)?
                    .reshape((b, hkv, n_rep * n, keys))?
            }
            _ => scores,
        };
        let probs = crate::fastmath::softmax_last_dim(&scores)?.to_dtype(in_dtype)?;
        let ob = probs.matmul(&vb)?.reshape((b, hkv, n_rep, n, d))?;
        outs.push(ob);
        i0 += n;
    }
    let out = if outs.len() == 1 {
        outs.pop().unwrap()
    } else {
        Tensor::cat(&outs, 3)?
    };
    out.reshape((b, hq, lq, d))
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

    /// The blocked grouped attention equals the full-matrix form with repeated heads, for
    /// causal prefill with a cache offset, single-token decode, and unmasked attention,
    /// including blocks smaller than the query count.
    #[test]
    fn blocked_attention_matches_full_matrix() -> Result<()> {
        let dev = Device::Cpu;
        for (b, hq, hkv, lq, off, d, causal) in [
            (1, 4, 2, 37, 0, 8, true),
            (1, 6, 2, 9, 11, 4, true),
            (1, 4, 1, 1, 20, 8, true),
            (3, 4, 4, 50, 0, 8, false),
            (2, 4, 2, 150, 0, 8, false),
            (1, 4, 2, 150, 30, 8, true),
        ] {
            let lk = lq + off;
            let q = crate::test_tensor((b, hq, lq, d), 8);
            let k = crate::test_tensor((b, hkv, lk, d), 9);
            let v = crate::test_tensor((b, hkv, lk, d), 10);
            let (mask, want) = if causal {
                let m = causal_mask(lq, off, DType::F32, &dev)?;
                let want = scaled_dot_product_attention(&q, &k, &v, 0.3, Some(&m))?;
                (AttentionMask::Causal { offset: off }, want)
            } else {
                let want = scaled_dot_product_attention(&q, &k, &v, 0.3, None)?;
                (AttentionMask::None, want)
            };
            // The fused f32 CPU kernel (what `attention` runs here).
            let fused = attention(&q, &k, &v, 0.3, mask)?;
            let diff = (fused - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(
                diff < 1e-5,
                "fused b{b} hq{hq} hkv{hkv} lq{lq} off{off}: {diff}"
            );
            // A strided key/value view, as the KV cache hands out.
            let kpad = Tensor::cat(&[&k, &k], 2)?.narrow(2, 0, lk)?;
            let vpad = Tensor::cat(&[&v, &v], 2)?.narrow(2, 0, lk)?;
            assert!(!kpad.is_contiguous() || b == 1 && hkv == 1);
            let fused = attention(&q, &kpad, &vpad, 0.3, mask)?;
            let diff = (fused - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(
                diff < 1e-5,
                "strided b{b} hq{hq} hkv{hkv} lq{lq} off{off}: {diff}"
            );
            // The differentiable form (training), forced by the autograd scope.
            let diff = crate::autograd::autograd_scope(|| attention(&q, &k, &v, 0.3, mask))?;
            let d = (diff - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(
                d < 1e-5,
                "differentiable b{b} hq{hq} hkv{hkv} lq{lq} off{off}: {d}"
            );
            // The tensor form: one block, and blocks of about 5 query rows.
            for bytes in [SCORE_BLOCK_BYTES, 5 * b * hq * lk * 4] {
                let got = attention_in_blocks(&q, &k, &v, 0.3, mask, bytes)?;
                assert_eq!(got.dims(), want.dims());
                let diff = (got - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(diff < 1e-5, "b{b} hq{hq} hkv{hkv} lq{lq} off{off}: {diff}");
            }
        }
        Ok(())
    }
}
