//! Fused attention for f32 tensors on the CPU: one task per (batch, head, block of queries),
//! each running its own single-threaded GEMMs on cache-resident data.
//!
//! ```text
//! for each (b, h, rows i0..i0+n) in parallel:          scores: n × keys, in L2
//!     scores = (q[i0..] · scale) kᵀ       (gemm, K = head_dim)
//!     causal: keys beyond a row's position → −inf; only keys ≤ the block's last position
//!     softmax rows (vectorised exp)
//!     out[i0..] = scores · v              (gemm, written in place in [B, Hq, Lq, D])
//! ```
//!
//! Why not batched `matmul` + softmax as tensors: with head_dim 64–72 each per-head GEMM is
//! small, candle runs the heads one after another with both threads inside every small
//! GEMM, and the whole `[B·H, L, L]` score tensor makes three round trips through memory
//! (write, softmax, read). Here each task's scores stay in cache and the two threads work on
//! different heads. Every query row still sees all of its keys in one softmax (no online
//! rescaling), so results match the tensor form to rounding.
//!
//! Keys/values may be strided views (the preallocated KV cache); their last dimension must
//! be contiguous.

use candle_core::{DType, Device, Layout, Result, Storage, Tensor};
use rayon::prelude::*;

/// Query rows per task: 64 rows × 1.4 k keys × 4 B ≈ 360 KB of scores.
const ROWS_PER_TASK: usize = 64;

struct View<'a> {
    data: &'a [f32],
    start: usize,
    stride: [usize; 4],
}

impl View<'_> {
    fn offset(&self, b: usize, h: usize, row: usize) -> usize {
        self.start + b * self.stride[0] + h * self.stride[1] + row * self.stride[2]
    }
}

fn cpu_f32(t: &Tensor) -> bool {
    t.dtype() == DType::F32 && matches!(t.device(), Device::Cpu) && t.rank() == 4
}

fn with_view<R>(t: &Tensor, f: impl FnOnce(View<'_>) -> Result<R>) -> Result<Option<R>> {
    let (storage, layout): (_, &Layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Ok(None);
    };
    let stride = layout.stride();
    if stride.len() != 4 || stride[3] != 1 {
        return Ok(None);
    }
    let data = cpu.as_slice::<f32>()?;
    f(View {
        data,
        start: layout.start_offset(),
        stride: [stride[0], stride[1], stride[2], stride[3]],
    })
    .map(Some)
}

/// `softmax(q kᵀ · scale [+ causal mask]) v` for f32 CPU tensors; `None` when the inputs
/// are not f32 CPU tensors with a contiguous last dimension (callers fall back).
///
/// `q [B, Hq, Lq, D]`, `k`/`v` `[B, Hkv, Lk, D]`; `causal_offset = Some(o)` means query `i`
/// sits at position `o + i` and sees keys `0..=o+i`.
pub fn attention_f32(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    causal_offset: Option<usize>,
) -> Result<Option<Tensor>> {
    if !(cpu_f32(q) && cpu_f32(k) && cpu_f32(v)) {
        return Ok(None);
    }
    let (b, hq, lq, d) = q.dims4()?;
    let (_, hkv, lk, _) = k.dims4()?;
    let n_rep = hq / hkv;
    let q = q.contiguous()?;
    let mut out = vec![0f32; b * hq * lq * d];
    let done = with_view(&q, |qv| {
        with_view(k, |kv| {
            with_view(v, |vv| {
                out.par_chunks_mut(lq * d)
                    .enumerate()
                    .for_each(|(bh, head_out)| {
                        let (bi, h) = (bh / hq, bh % hq);
                        let kvh = h / n_rep;
                        let mut scores = Vec::new();
                        let mut i0 = 0;
                        while i0 < lq {
                            let n = ROWS_PER_TASK.min(lq - i0);
                            let keys = match causal_offset {
                                Some(o) => (o + i0 + n).min(lk),
                                None => lk,
                            };
                            scores.resize(n * keys, 0f32);
                            // SAFETY: every pointer/stride below stays inside its tensor:
                            // q rows i0..i0+n of head (bi, h), k/v rows 0..keys of head
                            // (bi, kvh), scores n×keys, head_out rows i0..i0+n.
                            unsafe {
                                gemm::gemm(
                                    n,
                                    keys,
                                    d,
                                    scores.as_mut_ptr(),
                                    1,
                                    keys as isize,
                                    false,
                                    qv.data.as_ptr().add(qv.offset(bi, h, i0)),
                                    1,
                                    qv.stride[2] as isize,
                                    kv.data.as_ptr().add(kv.offset(bi, kvh, 0)),
                                    kv.stride[2] as isize,
                                    1,
                                    0.0,
                                    scale,
                                    false,
                                    false,
                                    false,
                                    gemm::Parallelism::None,
                                );
                            }
                            for (r, row) in scores.chunks_mut(keys).enumerate() {
                                if let Some(o) = causal_offset {
                                    let visible = (o + i0 + r + 1).min(keys);
                                    row[visible..]
                                        .iter_mut()
                                        .for_each(|s| *s = f32::NEG_INFINITY);
                                }
                                crate::fastmath::softmax_row(row);
                            }
                            unsafe {
                                gemm::gemm(
                                    n,
                                    d,
                                    keys,
                                    head_out.as_mut_ptr().add(i0 * d),
                                    1,
                                    d as isize,
                                    false,
                                    scores.as_ptr(),
                                    1,
                                    keys as isize,
                                    vv.data.as_ptr().add(vv.offset(bi, kvh, 0)),
                                    1,
                                    vv.stride[2] as isize,
                                    0.0,
                                    1.0,
                                    false,
                                    false,
                                    false,
                                    gemm::Parallelism::None,
                                );
                            }
                            i0 += n;
                        }
                    });
                Ok(())
            })
        })
    })?;
    if done.flatten().flatten().is_none() {
        return Ok(None);
    }
    Ok(Some(Tensor::from_vec(out, (b, hq, lq, d), q.device())?))
}
