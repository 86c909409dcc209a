//! PyTorch's `F.interpolate(..., mode="bicubic", align_corners=False)` (no antialias) on the
//! CPU, reproduced to the bit for f32 planes, because references feed its output to a
//! truncating `uint8` cast (MA-LMM's video processor) or bake it into weights at load time
//! (EVA ViT's `interpolate_pos_embed`), where one ulp can change a result.
//!
//! ```text
//! plane [h, w] ─ along x: taps(w → ow) ─► [h, ow] ─ along y: taps(h → oh) ─► [oh, ow]
//! taps: src = scale·(o + ½) − ½ (one FMA), i = ⌊src⌋, t = src − i, Keys cubic A = −0.75,
//!       4 indices i−1 … i+2 clamped to the edge
//! ```
//!
//! The rounding (which products are fused, in which order) was found by probing torch 2.5.1's
//! AVX2 / AVX-512 kernels and is checked against its output in the tests; torch 2.3.1 rounds
//! differently (about 25 % of values one ulp apart), so results are tied to the version the
//! golden fixtures were made with.

fn cubic1(x: f32, a: f32) -> f32 {
    ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
}

fn cubic2(x: f32, a: f32) -> f32 {
    ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
}

/// PyTorch's `get_cubic_upsample_coefficients` (A = −0.75).
fn cubic_coeffs(t: f32) -> [f32; 4] {
    let a = -0.75f32;
    let x2 = 1.0 - t;
    [
        cubic2(t + 1.0, a),
        cubic1(t, a),
        cubic1(x2, a),
        cubic2(x2 + 1.0, a),
    ]
}

/// Source taps (clamped indices) and weights for each output index (align_corners=False).
fn taps(in_size: usize, out_size: usize) -> Vec<([usize; 4], [f32; 4])> {
    let scale = in_size as f32 / out_size as f32;
    (0..out_size)
        .map(|o| {
            // `scale * (o + 0.5) - 0.5`, contracted to an FMA as in the reference's build.
            let real = scale.mul_add(o as f32 + 0.5, -0.5);
            let base = real.floor();
            let t = real - base;
            let base = base as i64;
            let idx = [-1i64, 0, 1, 2].map(|k| (base + k).clamp(0, in_size as i64 - 1) as usize);
            (idx, cubic_coeffs(t))
        })
        .collect()
}

/// One 4-tap sum in the order and rounding of PyTorch 2.5's CPU kernel (its separable
/// float path, AVX2/AVX-512 builds): `x1·w1` first, then `x0·w0`, `x2·w2`, `x3·w3` each added
/// with a fused multiply-add. Found by probing torch 2.5.1 itself: with this order the
/// horizontal pass, the vertical pass and the whole resize are bit-identical to it (and to
/// the fixture's `resized_float_before_uint8`); the plain `Σ xj·wj` differs in ~25 % of values
/// by an ulp, which the uint8 cast turns into 1/255 steps. (torch 2.3.1 rounds differently.)
fn acc4(x: [f32; 4], w: [f32; 4]) -> f32 {
    let mut out = x[1] * w[1];
    out = x[0].mul_add(w[0], out);
    out = x[2].mul_add(w[2], out);
    x[3].mul_add(w[3], out)
}

/// `F.interpolate(x, (oh, ow), mode="bicubic", align_corners=False)` (no antialias) of one
/// float plane `[h, w]` (row-major) → `[oh, ow]`: along x first, then along y, as torch's
/// separable kernel does; every intermediate rounded to f32 where torch rounds it.
pub fn bicubic_plane(src: &[f32], h: usize, w: usize, oh: usize, ow: usize) -> Vec<f32> {
    let ty = taps(h, oh);
    let tx = taps(w, ow);
    let mut out = vec![0f32; oh * ow];
    for (oy, (iy, wy)) in ty.iter().enumerate() {
        for (ox, (ix, wx)) in tx.iter().enumerate() {
            let mut rows = [0f32; 4];
            for (k, &y) in iy.iter().enumerate() {
                let r = &src[y * w..(y + 1) * w];
                rows[k] = acc4([r[ix[0]], r[ix[1]], r[ix[2]], r[ix[3]]], *wx);
            }
            out[oy * ow + ox] = acc4(rows, *wy);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_bits(bits: &[u32]) -> Vec<f32> {
        bits.iter().map(|&b| f32::from_bits(b)).collect()
    }

    /// A 3×5 plane of whole numbers upscaled to 8×6, against torch 2.5.1
    /// (`F.interpolate(x[None, None], size=(8, 6), mode="bicubic", align_corners=False)`,
    /// AVX2 and AVX-512 give the same bits): every value bit-identical.
    #[test]
    fn upscale_matches_torch_bit_for_bit() {
        let src: Vec<f32> = (0..3)
            .flat_map(|r| (0..5).map(move |c| ((r * 13 + c * 5) % 17) as f32 * 15.0))
            .collect();
        let want = from_bits(&UPSCALE_3X5_TO_8X6);
        let got = bicubic_plane(&src, 3, 5, 8, 6);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.to_bits(), w.to_bits(), "value {i}: {g} vs torch {w}");
        }
    }

    #[test]
    fn same_size_is_the_identity() {
        let src: Vec<f32> = (0..20).map(|i| (i * 7 % 11) as f32 - 3.5).collect();
        assert_eq!(bicubic_plane(&src, 4, 5, 4, 5), src);
    }

    const UPSCALE_3X5_TO_8X6: [u32; 48] = [
        0xc1d83195, 0x42496093, 0x42fc0bed, 0x4352ee0e, 0x43406025, 0x4147625e, 0x40d3b81e,
        0x42462522, 0x42e23aaa, 0x43466f01, 0x43402ede, 0x423842bc, 0x42b71cde, 0x420f8d45,
        0x429c0e10, 0x432f0f0e, 0x43440452, 0x4301f5f3, 0x43312745, 0x4203ff77, 0x423402ea,
        0x430fd94b, 0x4343d63f, 0x4357655a, 0x4353c8f9, 0x42950f91, 0x42234093, 0x42ca47e7,
        0x4333dfb6, 0x437d7688, 0x43336ee9, 0x430d4586, 0x4286cac1, 0x42855ffd, 0x431b82d9,
        0x43628e11, 0x430747a3, 0x434bd505, 0x42c318eb, 0x421f0da6, 0x4304e090, 0x433b7dfe,
        0x42f5dc9c, 0x43662c60, 0x42d7c356, 0x41d00543, 0x42f682e1, 0x43314ac8,
    ];
}
