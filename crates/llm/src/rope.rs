//! Rotary position embedding in the HF `rotate_half` (non-interleaved) convention.
//!
//! HF Mistral/Qwen2 compute `inv_freq = 1 / θ^(2i/d)` and the angle table `pos · inv_freq` in
//! float32, take cos/sin in float32 and only then cast them to the activation dtype. The tables
//! are built here per call for the positions being processed, so the model holds no per-length
//! state and any position (also beyond `max_position_embeddings`) works.

use candle_core::{DType, Device, Result, Tensor};

/// Frequencies for one head dimension; immutable, shared by all layers.
#[derive(Debug, Clone)]
pub struct RotaryEmbedding {
    /// `[1, head_dim / 2]` f32.
    inv_freq: Tensor,
    /// The same frequencies on the host (M-RoPE tables are assembled here).
    inv: Vec<f32>,
    head_dim: usize,
}

impl RotaryEmbedding {
    pub fn new(head_dim: usize, theta: f64, device: &Device) -> Result<Self> {
        if head_dim % 2 != 0 {
            candle_core::bail!("rotary embedding needs an even head_dim, got {head_dim}")
        }
        let base = theta as f32;
        let inv: Vec<f32> = (0..head_dim / 2)
            .map(|i| 1.0f32 / base.powf((2 * i) as f32 / head_dim as f32))
            .collect();
        let inv_freq = Tensor::from_vec(inv.clone(), (1, head_dim / 2), device)?;
        Ok(Self {
            inv_freq,
            inv,
            head_dim,
        })
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// `(cos, sin)`, each `[len, head_dim / 2]` in `dtype`, for positions `offset..offset+len`.
    pub fn tables(&self, offset: usize, len: usize, dtype: DType) -> Result<(Tensor, Tensor)> {
        let pos = Tensor::arange(offset as u32, (offset + len) as u32, self.inv_freq.device())?
            .to_dtype(DType::F32)?
            .reshape((len, 1))?;
        let angles = pos.broadcast_mul(&self.inv_freq)?;
        Ok((
            angles.cos()?.to_dtype(dtype)?,
            angles.sin()?.to_dtype(dtype)?,
        ))
    }

    /// M-RoPE (Qwen2-VL) `(cos, sin)`, each `[len, head_dim / 2]` in `dtype`: frequency `i`
    /// takes its position from row `a(i)` of `positions` (`[3][len]`: temporal, height,
    /// width), where `sections` (`mrope_section`) gives how many consecutive frequencies each
    /// row drives. HF splits the duplicated `[head_dim]` tables by `sections · 2`, which picks
    /// the same row for frequency `i` in both halves. Rows that agree (text) reduce to
    /// [`Self::tables`] bit for bit: the angle is the same f32 product.
    pub fn mrope_tables(
        &self,
        positions: &[Vec<i64>; 3],
        sections: &[usize],
        dtype: DType,
    ) -> Result<(Tensor, Tensor)> {
        let half = self.head_dim / 2;
        if sections.len() != 3 || sections.iter().sum::<usize>() != half {
            candle_core::bail!(
                "mrope_section {sections:?} must have 3 entries summing to head_dim / 2 = {half}"
            )
        }
        let len = positions[0].len();
        if positions.iter().any(|p| p.len() != len) {
            candle_core::bail!("M-RoPE position rows differ in length")
        }
        // The position row each frequency follows.
        let rows: Vec<&Vec<i64>> = (0..3)
            .flat_map(|a| std::iter::repeat_n(&positions[a], sections[a]))
            .collect();
        let mut angles = Vec::with_capacity(len * half);
        for l in 0..len {
            for (row, f) in rows.iter().zip(&self.inv) {
                angles.push(row[l] as f32 * f);
            }
        }
        let angles = Tensor::from_vec(angles, (len, half), self.inv_freq.device())?;
        Ok((
            angles.cos()?.to_dtype(dtype)?,
            angles.sin()?.to_dtype(dtype)?,
        ))
    }

    /// Rotate `xs` (`[B, H, L, head_dim]`) whose L rows sit at positions `offset..offset+L`:
    /// first half `x1·cos − x2·sin`, second half `x2·cos + x1·sin` (= HF `x·cos + rotate_half(x)·sin`).
    pub fn apply(&self, xs: &Tensor, offset: usize) -> Result<Tensor> {
        let len = xs.dim(2)?;
        let (cos, sin) = self.tables(offset, len, xs.dtype())?;
        candle_nn::rotary_emb::rope(&xs.contiguous()?, &cos, &sin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Independent f64 implementation of HF `apply_rotary_pos_emb` with `rotate_half`.
    #[test]
    fn rope_matches_naive_rotate_half() -> Result<()> {
        let dev = Device::Cpu;
        let (b, h, l, d, offset, theta) = (1usize, 3usize, 5usize, 8usize, 7usize, 1e6f64);
        let n = b * h * l * d;
        let vals: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.13)
            .collect();
        let xs = Tensor::from_vec(vals.clone(), (b, h, l, d), &dev)?;
        let rope = RotaryEmbedding::new(d, theta, &dev)?;
        let got = rope.apply(&xs, offset)?.flatten_all()?.to_vec1::<f32>()?;
        for hi in 0..h {
            for t in 0..l {
                let base = (hi * l + t) * d;
                let x = &vals[base..base + d];
                let pos = (offset + t) as f64;
                for j in 0..d {
                    let i = j % (d / 2);
                    let ang = pos * theta.powf(-(2.0 * i as f64) / d as f64);
                    let rot = if j < d / 2 {
                        -(x[j + d / 2] as f64)
                    } else {
                        x[j - d / 2] as f64
                    };
                    let want = x[j] as f64 * ang.cos() + rot * ang.sin();
                    let g = got[base + j] as f64;
                    assert!((g - want).abs() < 1e-5, "h{hi} t{t} j{j}: {g} vs {want}");
                }
            }
        }
        Ok(())
    }

    /// M-RoPE tables: text positions (equal rows) give the 1-D tables exactly; distinct rows
    /// pick the axis by section.
    #[test]
    fn mrope_tables_split_frequencies_by_section() -> Result<()> {
        let dev = Device::Cpu;
        let rope = RotaryEmbedding::new(16, 1e6, &dev)?;
        let same = [vec![5i64, 6, 7], vec![5, 6, 7], vec![5, 6, 7]];
        let (c1, s1) = rope.mrope_tables(&same, &[2, 3, 3], DType::F32)?;
        let (c0, s0) = rope.tables(5, 3, DType::F32)?;
        let diff = |a: &Tensor, b: &Tensor| -> Result<f32> {
            (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
        };
        assert_eq!(diff(&c1, &c0)?, 0.0);
        assert_eq!(diff(&s1, &s0)?, 0.0);
        let rows = [vec![3i64], vec![10], vec![20]];
        let (c, _) = rope.mrope_tables(&rows, &[2, 3, 3], DType::F32)?;
        let c = c.flatten_all()?.to_vec1::<f32>()?;
        for (i, got) in c.iter().enumerate() {
            let pos = [3.0f64, 10.0, 20.0][if i < 2 {
                0
            } else if i < 5 {
                1
            } else {
                2
            }];
            let want = (pos * 1e6f64.powf(-(2.0 * i as f64) / 16.0)).cos();
            assert!(
                (*got as f64 - want).abs() < 1e-5,
                "freq {i}: {got} vs {want}"
            );
        }
        assert!(rope.mrope_tables(&rows, &[2, 3, 2], DType::F32).is_err());
        Ok(())
    }

    #[test]
    fn rope_runs_in_half_precision() -> Result<()> {
        let dev = Device::Cpu;
        let xs = Tensor::ones((1, 2, 3, 4), DType::F32, &dev)?;
        let rope = RotaryEmbedding::new(4, 10_000.0, &dev)?;
        let full = rope.apply(&xs, 2)?;
        for dt in [DType::F16, DType::BF16] {
            let half = rope.apply(&xs.to_dtype(dt)?, 2)?;
            assert_eq!(half.dtype(), dt);
            let diff = (half.to_dtype(DType::F32)? - &full)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            assert!(diff < 1e-2, "{dt:?}: {diff}");
        }
        Ok(())
    }
}
