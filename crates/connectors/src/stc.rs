//! The STC connector family (spec §5.1–5.3, §5.5): `stc_connector` (Conv3d padding 1),
//! `stc_connector_v35` (padding 0), `stp_connector` (AvgPool3d sampler), and the depth-0
//! `spatial_conv` / `spatial_pool` variants.
//!
//! For one video (`T` frames, `n = hw²` tokens per frame):
//!
//! ```text
//! features [T, n, Cin]  → [T, hw, hw, Cin]              token n = h·hw + w (row-major)
//! s1  RegStage(depth, Cin→C) per frame    [T, hw, hw, C]      (identity when depth = 0)
//! sampler Conv3d k=s=(kt,kh,kw), pad P    [T', h', w', C]     + bias, then SiLU
//!         (or AvgPool3d(k) + SiLU)        T' = ⌊(T+2P−kt)/kt⌋+1, h' = ⌊(hw+2P−kh)/kh⌋+1
//! s2  RegStage(depth, C→C) per slice t'   [T', h', w', C]
//! flatten t-major, then h, then w         [T'·h'·w', C]
//! readout Linear(C,C) → GELU → Linear     [L, C]
//! ```
//!
//! | type | depth | kernel (t,h,w) | padding | sampler |
//! |---|---|---|---|---|
//! | `stc_connector` | 4 | (2,2,2) | 1 | Conv3d |
//! | `stc_connector_v35` | 4 | (2,2,2) | 0 | Conv3d |
//! | `stp_connector` | 4 | (2,2,2) | – | AvgPool3d |
//! | `spatial_conv` | 0 | (1,2,2) | 1 (also on t) | Conv3d (needs Cin = C) |
//! | `spatial_pool` | 0 | (1,2,2) | – | AvgPool3d (needs Cin = C) |
//!
//! The Conv3d (kernel = stride, non-overlapping) is computed as zero-pad → cut into
//! `kt×kh×kw` blocks → one matmul with the PyTorch weight `[C, C, kt, kh, kw]` reshaped to
//! `[C, C·kt·kh·kw]` (columns in (in, kt, kh, kw) order). Everything runs channels-last.
//!
//! Weights under the connector prefix (`model.mm_projector`): `s1.*`, `s2.*` (see
//! [`crate::regstage`]), `sampler.0.{weight,bias}`, `readout.{0,2}.{weight,bias}`.

use candle_core::{bail, Result, Tensor};
use candle_nn::VarBuilder;

use crate::mlp::MlpProjector;
use crate::projector_type::ProjectorType;
use crate::regstage::RegStage;

/// Static layout of an STC-family connector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StcLayout {
    /// RegNet blocks in each of s1 and s2.
    pub depth: usize,
    /// Sampler kernel = stride, (t, h, w).
    pub kernel: (usize, usize, usize),
    /// `Some(P)`: Conv3d with zero padding P on all three axes; `None`: AvgPool3d (no padding).
    pub conv_padding: Option<usize>,
}

impl StcLayout {
    /// Layout of `kind`, or `None` when `kind` is not in the STC family.
    pub fn of(kind: ProjectorType) -> Option<Self> {
        let l = |depth, kernel, conv_padding| {
            Some(Self {
                depth,
                kernel,
                conv_padding,
            })
        };
        match kind {
            ProjectorType::StcConnector => l(4, (2, 2, 2), Some(1)),
            ProjectorType::StcConnectorV35 => l(4, (2, 2, 2), Some(0)),
            ProjectorType::StpConnector => l(4, (2, 2, 2), None),
            ProjectorType::SpatialConv => l(0, (1, 2, 2), Some(1)),
            ProjectorType::SpatialPool => l(0, (1, 2, 2), None),
            _ => None,
        }
    }

    /// Output grid `(T', h', w')` for `t` frames of `h × w` tokens (0 where PyTorch would
    /// reject an input smaller than the kernel).
    pub fn output_grid(&self, t: usize, h: usize, w: usize) -> (usize, usize, usize) {
        let p = self.conv_padding.unwrap_or(0);
        let out = |n: usize, k: usize| {
            if n + 2 * p < k {
                0
            } else {
                (n + 2 * p - k) / k + 1
            }
        };
        (
            out(t, self.kernel.0),
            out(h, self.kernel.1),
            out(w, self.kernel.2),
        )
    }

    /// Parameter count for `Cin → C`.
    pub fn param_count(&self, cin: usize, c: usize) -> u64 {
        let c64 = c as u64;
        let (kt, kh, kw) = self.kernel;
        let sampler = match self.conv_padding {
            Some(_) => c64 * c64 * (kt * kh * kw) as u64 + c64,
            None => 0,
        };
        RegStage::param_count(self.depth, cin, c)
            + RegStage::param_count(self.depth, c, c)
            + sampler
            + MlpProjector::param_count(2, c, c)
    }
}

/// Cuts a zero-padded channels-last volume into non-overlapping `kt×kh×kw` blocks.
///
/// `xs [T, H, W, C]` → (`[T'·H'·W', C·kt·kh·kw]` with columns in (c, kt, kh, kw) order, `(T', H', W')`).
fn blocks(
    xs: &Tensor,
    kernel: (usize, usize, usize),
    padding: usize,
) -> Result<(Tensor, (usize, usize, usize))> {
    let (t, h, w, c) = xs.dims4()?;
    let (kt, kh, kw) = kernel;
    let (tp, hp, wp) = (t + 2 * padding, h + 2 * padding, w + 2 * padding);
    if tp < kt || hp < kh || wp < kw {
        bail!("STC sampler: input (T={t}, h={h}, w={w}) with padding {padding} is smaller than the kernel {kernel:?}");
    }
    let (to, ho, wo) = (tp / kt, hp / kh, wp / kw);
    let mut xs = xs.clone();
    if padding > 0 {
        xs = xs
            .pad_with_zeros(0, padding, padding)?
            .pad_with_zeros(1, padding, padding)?
            .pad_with_zeros(2, padding, padding)?;
    }
    let xs = xs
        .narrow(0, 0, to * kt)?
        .narrow(1, 0, ho * kh)?
        .narrow(2, 0, wo * kw)?
        .contiguous()?;
    let cols = xs
        .reshape(vec![to, kt, ho, kh, wo, kw, c])?
        .permute(vec![0, 2, 4, 6, 1, 3, 5])?
        .reshape((to * ho * wo, c * kt * kh * kw))?;
    Ok((cols, (to, ho, wo)))
}

/// Conv3d with kernel = stride and zero padding `padding` on all axes, channels-last.
///
/// `xs [T, H, W, Cin]`, `weight [Cout, Cin, kt, kh, kw]` (PyTorch layout), `bias [Cout]`
/// → `[T', H', W', Cout]`.
pub fn conv3d_kernel_stride(
    xs: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    padding: usize,
) -> Result<Tensor> {
    let (cout, cin, kt, kh, kw) = weight.dims5()?;
    if xs.dim(3)? != cin {
        bail!(
            "conv3d: input has {} channels, weight expects {cin}",
            xs.dim(3)?
        );
    }
    let (cols, (to, ho, wo)) = blocks(xs, (kt, kh, kw), padding)?;
    let wm = weight.reshape((cout, cin * kt * kh * kw))?;
    let mut y = cols.matmul(&wm.t()?)?;
    if let Some(b) = bias {
        y = y.broadcast_add(b)?;
    }
    y.reshape((to, ho, wo, cout))
}

/// AvgPool3d with kernel = stride (no padding, floor mode), channels-last:
/// `[T, H, W, C]` → `[T', H', W', C]`.
pub fn avg_pool3d_kernel_stride(xs: &Tensor, kernel: (usize, usize, usize)) -> Result<Tensor> {
    let c = xs.dim(3)?;
    let (cols, (to, ho, wo)) = blocks(xs, kernel, 0)?;
    let k = kernel.0 * kernel.1 * kernel.2;
    cols.reshape((to * ho * wo, c, k))?
        .mean(2)?
        .reshape((to, ho, wo, c))
}

#[derive(Debug, Clone)]
enum Sampler {
    /// `weight [C, C, kt, kh, kw]`, `bias [C]`.
    Conv {
        weight: Tensor,
        bias: Tensor,
        padding: usize,
    },
    Pool {
        kernel: (usize, usize, usize),
    },
}

/// Intermediate outputs of one STC forward, in the reference (PyTorch) layouts of the
/// golden `debug.safetensors`.
#[derive(Debug, Clone)]
pub struct StcStages {
    /// After s1: `[T, C, hw, hw]`.
    pub s1: Tensor,
    /// After the sampler and its SiLU: `[1, C, T', h', w']`.
    pub sampler: Tensor,
    /// After s2: `[T', C, h', w']`.
    pub s2: Tensor,
    /// Connector output (after readout): `[T'·h'·w', C]`.
    pub out: Tensor,
}

/// An STC-family connector for one video.
#[derive(Debug, Clone)]
pub struct StcConnector {
    layout: StcLayout,
    s1: Option<RegStage>,
    sampler: Sampler,
    s2: Option<RegStage>,
    readout: MlpProjector,
    cin: usize,
    c: usize,
}

impl StcConnector {
    /// `vb` at the connector prefix (`model.mm_projector`).
    pub fn new(kind: ProjectorType, cin: usize, c: usize, vb: VarBuilder) -> Result<Self> {
        let Some(layout) = StcLayout::of(kind) else {
            bail!("{kind} is not an STC-family connector");
        };
        if layout.depth == 0 && cin != c {
            bail!(
                "mm_projector_type {kind} has no channel-changing stage: it needs mm_hidden_size ({cin}) == hidden_size ({c}), \
                 as the reference's Conv3d/readout expect {c} input channels"
            );
        }
        let (s1, s2) = if layout.depth > 0 {
            (
                Some(RegStage::new(layout.depth, cin, c, vb.pp("s1"))?),
                Some(RegStage::new(layout.depth, c, c, vb.pp("s2"))?),
            )
        } else {
            (None, None)
        };
        let (kt, kh, kw) = layout.kernel;
        let sampler = match layout.conv_padding {
            Some(padding) => {
                let sv = vb.pp("sampler").pp("0");
                Sampler::Conv {
                    weight: sv.get((c, c, kt, kh, kw), "weight")?,
                    bias: sv.get(c, "bias")?,
                    padding,
                }
            }
            None => Sampler::Pool {
                kernel: layout.kernel,
            },
        };
        let readout = MlpProjector::new(2, c, c, vb.pp("readout"))?;
        Ok(Self {
            layout,
            s1,
            sampler,
            s2,
            readout,
            cin,
            c,
        })
    }

    pub fn layout(&self) -> StcLayout {
        self.layout
    }

    /// `[T, n, Cin]` (n a perfect square) or `[T, h, w, Cin]` → `[L, C]`.
    pub fn forward(&self, features: &Tensor) -> Result<Tensor> {
        let s1 = self.stage1(features)?;
        let y = self.sample(&s1)?;
        let (to, ho, wo, c) = y.dims4()?;
        let y = self.stage2(&y)?;
        self.readout.forward(&y.reshape((to * ho * wo, c))?)
    }

    /// Like [`Self::forward`], also returning the stage outputs in the reference layouts.
    pub fn forward_with_stages(&self, features: &Tensor) -> Result<StcStages> {
        let s1 = self.stage1(features)?;
        let sampled = self.sample(&s1)?;
        let (to, ho, wo, c) = sampled.dims4()?;
        let s2 = self.stage2(&sampled)?;
        let out = self.readout.forward(&s2.reshape((to * ho * wo, c))?)?;
        Ok(StcStages {
            s1: s1.permute((0, 3, 1, 2))?.contiguous()?,
            sampler: sampled.permute((3, 0, 1, 2))?.unsqueeze(0)?.contiguous()?,
            s2: s2.permute((0, 3, 1, 2))?.contiguous()?,
            out,
        })
    }

    /// Input → `[T, hw, hw, Cin]` → s1 → `[T, hw, hw, C]`.
    fn stage1(&self, features: &Tensor) -> Result<Tensor> {
        let x = match features.rank() {
            3 => {
                let (t, n, cin) = features.dims3()?;
                let hw = (n as f64).sqrt() as usize;
                let hw = [hw.saturating_sub(1), hw, hw + 1].into_iter().find(|k| k * k == n);
                let Some(hw) = hw else {
                    bail!("STC connector: {n} tokens per frame is not a square grid (the reference reshapes to hw×hw with hw = int(sqrt(n)))");
                };
                features.reshape((t, hw, hw, cin))?
            }
            4 => features.clone(),
            r => bail!("STC connector expects [T, n, Cin] or [T, h, w, Cin] features for one video, got rank {r} {:?}", features.dims()),
        };
        let cin = x.dim(3)?;
        if cin != self.cin {
            bail!(
                "STC connector: features have {cin} channels, mm_hidden_size is {}",
                self.cin
            );
        }
        match &self.s1 {
            Some(s) => s.forward_nhwc(&x),
            None => x.contiguous(),
        }
    }

    /// `[T, h, w, C]` → sampler + SiLU → `[T', h', w', C]`.
    fn sample(&self, xs: &Tensor) -> Result<Tensor> {
        let y = match &self.sampler {
            Sampler::Conv {
                weight,
                bias,
                padding,
            } => conv3d_kernel_stride(xs, weight, Some(bias), *padding)?,
            Sampler::Pool { kernel } => avg_pool3d_kernel_stride(xs, *kernel)?,
        };
        y.silu()
    }

    fn stage2(&self, xs: &Tensor) -> Result<Tensor> {
        match &self.s2 {
            Some(s) => s.forward_nhwc(xs),
            None => Ok(xs.clone()),
        }
    }

    pub fn out_channels(&self) -> usize {
        self.c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Deterministic pseudo-random values in [-1, 1).
    fn lcg(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Naive PyTorch-semantics Conv3d (NCDHW, stride = kernel, zero padding).
    #[allow(clippy::too_many_arguments)]
    fn naive_conv3d(
        x: &[f32],
        (cin, t, h, w): (usize, usize, usize, usize),
        wt: &[f32],
        cout: usize,
        (kt, kh, kw): (usize, usize, usize),
        b: &[f32],
        p: usize,
    ) -> (Vec<f32>, (usize, usize, usize)) {
        let to = (t + 2 * p - kt) / kt + 1;
        let ho = (h + 2 * p - kh) / kh + 1;
        let wo = (w + 2 * p - kw) / kw + 1;
        let mut out = vec![0f32; cout * to * ho * wo];
        for o in 0..cout {
            for ot in 0..to {
                for oh in 0..ho {
                    for ow in 0..wo {
                        let mut acc = b[o] as f64;
                        for ci in 0..cin {
                            for a in 0..kt {
                                for bb in 0..kh {
                                    for cc in 0..kw {
                                        let it = (ot * kt + a) as isize - p as isize;
                                        let ih = (oh * kh + bb) as isize - p as isize;
                                        let iw = (ow * kw + cc) as isize - p as isize;
                                        if it < 0
                                            || ih < 0
                                            || iw < 0
                                            || it >= t as isize
                                            || ih >= h as isize
                                            || iw >= w as isize
                                        {
                                            continue;
                                        }
                                        let xv = x[((ci * t + it as usize) * h + ih as usize) * w
                                            + iw as usize];
                                        let wv =
                                            wt[(((o * cin + ci) * kt + a) * kh + bb) * kw + cc];
                                        acc += xv as f64 * wv as f64;
                                    }
                                }
                            }
                        }
                        out[((o * to + ot) * ho + oh) * wo + ow] = acc as f32;
                    }
                }
            }
        }
        (out, (to, ho, wo))
    }

    fn check_conv(
        cin: usize,
        cout: usize,
        t: usize,
        h: usize,
        w: usize,
        k: (usize, usize, usize),
        p: usize,
    ) -> Result<()> {
        let dev = Device::Cpu;
        let x = lcg(cin * t * h * w, 1 + p as u64);
        let wt = lcg(cout * cin * k.0 * k.1 * k.2, 7);
        let b = lcg(cout, 11);
        let (want, (to, ho, wo)) = naive_conv3d(&x, (cin, t, h, w), &wt, cout, k, &b, p);
        // NCDHW → channels-last [T, H, W, C]
        let xt = Tensor::from_vec(x, (cin, t, h, w), &dev)?.permute((1, 2, 3, 0))?;
        let wt = Tensor::from_vec(wt, (cout, cin, k.0, k.1, k.2), &dev)?;
        let bt = Tensor::from_vec(b, cout, &dev)?;
        let got = conv3d_kernel_stride(&xt, &wt, Some(&bt), p)?;
        assert_eq!(got.dims(), &[to, ho, wo, cout]);
        let got = got.permute((3, 0, 1, 2))?.flatten_all()?.to_vec1::<f32>()?;
        let max = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(max < 1e-5, "padding {p}, kernel {k:?}: max |diff| {max}");
        Ok(())
    }

    #[test]
    fn conv3d_as_matmul_matches_naive_loops() -> Result<()> {
        check_conv(5, 4, 4, 4, 4, (2, 2, 2), 0)?;
        check_conv(5, 4, 4, 4, 4, (2, 2, 2), 1)?;
        // odd sizes: trailing rows dropped (P=0) / asymmetric coverage (P=1)
        check_conv(3, 6, 5, 7, 6, (2, 2, 2), 0)?;
        check_conv(3, 6, 5, 7, 6, (2, 2, 2), 1)?;
        // spatial_conv kernel (1,2,2) with padding 1 on every axis
        check_conv(4, 4, 3, 5, 5, (1, 2, 2), 1)?;
        Ok(())
    }

    #[test]
    fn avg_pool_matches_naive() -> Result<()> {
        let dev = Device::Cpu;
        let (t, h, w, c) = (5usize, 5usize, 4usize, 3usize);
        let x = lcg(t * h * w * c, 3);
        let xt = Tensor::from_vec(x.clone(), (t, h, w, c), &dev)?;
        let got = avg_pool3d_kernel_stride(&xt, (2, 2, 2))?;
        assert_eq!(got.dims(), &[2, 2, 2, 3]);
        let got = got.flatten_all()?.to_vec1::<f32>()?;
        for ot in 0..2 {
            for oh in 0..2 {
                for ow in 0..2 {
                    for ch in 0..c {
                        let mut s = 0f32;
                        for a in 0..2 {
                            for b in 0..2 {
                                for d in 0..2 {
                                    s += x[(((ot * 2 + a) * h + oh * 2 + b) * w + ow * 2 + d) * c
                                        + ch];
                                }
                            }
                        }
                        let g = got[((ot * 2 + oh) * 2 + ow) * c + ch];
                        assert!((g - s / 8.0).abs() < 1e-6);
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn output_grids() {
        let stc = StcLayout::of(ProjectorType::StcConnector).unwrap();
        assert_eq!(stc.output_grid(16, 24, 24), (9, 13, 13));
        assert_eq!(stc.output_grid(4, 4, 4), (3, 3, 3));
        let v35 = StcLayout::of(ProjectorType::StcConnectorV35).unwrap();
        assert_eq!(v35.output_grid(16, 27, 27), (8, 13, 13));
        let sc = StcLayout::of(ProjectorType::SpatialConv).unwrap();
        assert_eq!(sc.output_grid(8, 24, 24), (10, 13, 13));
        let sp = StcLayout::of(ProjectorType::SpatialPool).unwrap();
        assert_eq!(sp.output_grid(8, 24, 24), (8, 12, 12));
        assert!(StcLayout::of(ProjectorType::Linear).is_none());
    }
}
