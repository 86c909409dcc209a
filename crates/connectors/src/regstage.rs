//! timm 1.0.3 `RegStage` of RegNet `Bottleneck` blocks, as the STC connector builds it
//! (`stride=1, dilation=1, act_layer=SiLU, norm_layer=LayerNorm2d`, `bottle_ratio=1`,
//! `group_size=1`, `se_ratio=0.25`, `downsample="conv1x1"`, `linear_out=False`; spec §5.2).
//!
//! One block, input `x` with `Cb` channels, `mid = out`:
//!
//! ```text
//! x ─┬─ conv1 1×1 Cb→mid ─ LN ─ SiLU
//!    │  conv2 3×3 depthwise (pad 1) ─ LN ─ SiLU
//!    │  se: y · sigmoid(fc2(SiLU(fc1(mean_hw(y)))))      fc1 mid→rd, fc2 rd→mid (1×1, with bias),
//!    │                                                    rd = round(Cb · 0.25)  (block INPUT width)
//!    │  conv3 1×1 mid→out ─ LN                            (no activation)
//!    └─ shortcut: identity, or downsample = 1×1 Cb→out ─ LN when Cb ≠ out (only s*.b1)
//! out = SiLU(y + shortcut)
//! ```
//!
//! "LN" is timm `LayerNormAct2d` (a LayerNorm over the channels at each pixel, eps 1e-5,
//! affine), stored as `…​.bn.{weight,bias}`. Every tensor here is kept **channels-last**
//! (`[N, H, W, C]`): the 1×1 convolutions are then plain matmuls and the channel LayerNorm
//! is a last-dim LayerNorm; the depthwise 3×3 is nine shifted multiply-adds.
//!
//! Keys under the stage prefix: `b{i}.conv1.conv.weight [mid,Cb,1,1]`, `b{i}.conv1.bn.*`,
//! `b{i}.conv2.conv.weight [mid,1,3,3]`, `b{i}.conv2.bn.*`, `b{i}.se.fc1.{weight [rd,mid,1,1],bias}`,
//! `b{i}.se.fc2.{weight [mid,rd,1,1],bias}`, `b{i}.conv3.conv.weight [out,mid,1,1]`, `b{i}.conv3.bn.*`,
//! `b1.downsample.conv.weight [out,Cb,1,1]`, `b1.downsample.bn.*`.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use videollama_nn::{layer_norm, LayerNorm, Linear};

/// Epsilon of timm `LayerNormAct2d` (its default; not the 1e-6 of `LayerNorm2d`).
pub const LN_EPS: f64 = 1e-5;
/// `se_ratio` of the RegNet blocks.
pub const SE_RATIO: f64 = 0.25;

/// Python's `round()` (half to even) of `channels · 0.25`, as `int(round(in_chs * se_ratio))`.
pub fn se_channels(in_chs: usize) -> usize {
    let x = in_chs as f64 * SE_RATIO;
    let f = x.floor();
    let r = if x - f > 0.5 || (x - f == 0.5 && (f as u64) % 2 == 1) {
        f + 1.0
    } else {
        f
    };
    r as usize
}

/// Apply a `Linear` over the channel (last) axis of a channels-last tensor.
pub(crate) fn linear_last(l: &Linear, xs: &Tensor) -> Result<Tensor> {
    let dims = xs.dims().to_vec();
    let c = *dims.last().expect("rank >= 1");
    let rows = xs.elem_count() / c.max(1);
    let y = l.forward(&xs.reshape((rows, c))?)?;
    let mut out = dims;
    *out.last_mut().unwrap() = y.dim(1)?;
    y.reshape(out)
}

/// A 1×1 convolution loaded as a `Linear` (`[out, in, 1, 1]` → `[out, in]`).
fn conv1x1(in_c: usize, out_c: usize, bias: bool, vb: VarBuilder) -> Result<Linear> {
    let w = vb
        .get((out_c, in_c, 1, 1), "weight")?
        .reshape((out_c, in_c))?;
    let b = if bias {
        Some(vb.get(out_c, "bias")?)
    } else {
        None
    };
    Ok(Linear::new(w, b))
}

/// `ConvNormAct` with a 1×1 conv (no bias), channel LN, optional SiLU.
#[derive(Debug, Clone)]
struct ConvNorm1x1 {
    conv: Linear,
    bn: LayerNorm,
    act: bool,
}

impl ConvNorm1x1 {
    fn new(in_c: usize, out_c: usize, act: bool, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv: conv1x1(in_c, out_c, false, vb.pp("conv"))?,
            bn: layer_norm(out_c, LN_EPS, vb.pp("bn"))?,
            act,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        // The fused LayerNorm kernel for inference, its composed form in training.
        let y = videollama_nn::autograd::layer_norm(&self.bn, &linear_last(&self.conv, xs)?)?;
        if self.act {
            y.silu()
        } else {
            Ok(y)
        }
    }
}

/// `ConvNormAct` with a depthwise 3×3 conv (pad 1, no bias), channel LN, SiLU.
#[derive(Debug, Clone)]
struct DwConvNorm3x3 {
    /// `taps[i*3 + j]` = weight `[C]` of kernel position (i, j).
    taps: Vec<Tensor>,
    bn: LayerNorm,
}

impl DwConvNorm3x3 {
    fn new(c: usize, vb: VarBuilder) -> Result<Self> {
        let w = vb
            .pp("conv")
            .get((c, 1, 3, 3), "weight")?
            .reshape((c, 9))?
            .t()?
            .contiguous()?; // [9, C]
        let taps = (0..9).map(|k| w.get(k)).collect::<Result<Vec<_>>>()?;
        Ok(Self {
            taps,
            bn: layer_norm(c, LN_EPS, vb.pp("bn"))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        videollama_nn::autograd::layer_norm(&self.bn, &depthwise3x3_nhwc(xs, &self.taps)?)?.silu()
    }
}

/// Depthwise 3×3 convolution, stride 1, zero padding 1, no bias, channels-last.
///
/// `xs [N, H, W, C]`, `taps[i*3 + j]` = the `[C]` weights of kernel position (i, j) →
/// `[N, H, W, C]`; cross-correlation as PyTorch: `out[h,w] = Σ in[h+i−1, w+j−1]·k[i,j]`.
fn depthwise3x3_nhwc(xs: &Tensor, taps: &[Tensor]) -> Result<Tensor> {
    let (_n, h, w, _c) = xs.dims4()?;
    let padded = xs.pad_with_zeros(1, 1, 1)?.pad_with_zeros(2, 1, 1)?;
    let mut acc: Option<Tensor> = None;
    for i in 0..3 {
        let rows = padded.narrow(1, i, h)?;
        for j in 0..3 {
            let term = rows.narrow(2, j, w)?.broadcast_mul(&taps[i * 3 + j])?;
            acc = Some(match acc {
                None => term,
                Some(a) => (a + term)?,
            });
        }
    }
    Ok(acc.expect("nine taps"))
}

/// timm `SEModule` (fc1/fc2 1×1 convs with bias, SiLU, sigmoid gate).
#[derive(Debug, Clone)]
struct SqueezeExcite {
    fc1: Linear,
    fc2: Linear,
}

impl SqueezeExcite {
    fn new(c: usize, rd: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            fc1: conv1x1(c, rd, true, vb.pp("fc1"))?,
            fc2: conv1x1(rd, c, true, vb.pp("fc2"))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (n, h, w, c) = xs.dims4()?;
        let s = xs.reshape((n, h * w, c))?.mean(1)?; // [N, C]
        let s = self.fc1.forward(&s)?.silu()?;
        let s = candle_nn::ops::sigmoid(&self.fc2.forward(&s)?)?;
        xs.broadcast_mul(&s.reshape((n, 1, 1, c))?)
    }
}

/// One RegNet `Bottleneck` block.
#[derive(Debug, Clone)]
struct Bottleneck {
    conv1: ConvNorm1x1,
    conv2: DwConvNorm3x3,
    se: SqueezeExcite,
    conv3: ConvNorm1x1,
    downsample: Option<ConvNorm1x1>,
}

impl Bottleneck {
    fn new(in_c: usize, out_c: usize, vb: VarBuilder) -> Result<Self> {
        let mid = out_c;
        Ok(Self {
            conv1: ConvNorm1x1::new(in_c, mid, true, vb.pp("conv1"))?,
            conv2: DwConvNorm3x3::new(mid, vb.pp("conv2"))?,
            se: SqueezeExcite::new(mid, se_channels(in_c), vb.pp("se"))?,
            conv3: ConvNorm1x1::new(mid, out_c, false, vb.pp("conv3"))?,
            downsample: if in_c != out_c {
                Some(ConvNorm1x1::new(in_c, out_c, false, vb.pp("downsample"))?)
            } else {
                None
            },
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let y = self.conv1.forward(xs)?;
        let y = self.conv2.forward(&y)?;
        let y = self.se.forward(&y)?;
        let y = self.conv3.forward(&y)?;
        let shortcut = match &self.downsample {
            Some(d) => d.forward(xs)?,
            None => xs.clone(),
        };
        (y + shortcut)?.silu()
    }

    fn param_count(in_c: usize, out_c: usize) -> u64 {
        let (i, o, rd) = (in_c as u64, out_c as u64, se_channels(in_c) as u64);
        let ln = 2 * o;
        let conv1 = o * i + ln;
        let conv2 = o * 9 + ln;
        let se = rd * o + rd + o * rd + o;
        let conv3 = o * o + ln;
        let down = if in_c != out_c { o * i + ln } else { 0 };
        conv1 + conv2 + se + conv3 + down
    }
}

/// A stage of `depth` bottleneck blocks `b1..b{depth}`: `in_chs → out_chs`, then `out → out`.
#[derive(Debug, Clone)]
pub struct RegStage {
    blocks: Vec<Bottleneck>,
    in_chs: usize,
    out_chs: usize,
}

impl RegStage {
    /// `vb` at the stage prefix (e.g. `model.mm_projector.s1`).
    pub fn new(depth: usize, in_chs: usize, out_chs: usize, vb: VarBuilder) -> Result<Self> {
        let blocks = (0..depth)
            .map(|i| {
                Bottleneck::new(
                    if i == 0 { in_chs } else { out_chs },
                    out_chs,
                    vb.pp(format!("b{}", i + 1)),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            blocks,
            in_chs,
            out_chs,
        })
    }

    pub fn in_channels(&self) -> usize {
        self.in_chs
    }

    pub fn out_channels(&self) -> usize {
        self.out_chs
    }

    /// Channels-last: `[N, H, W, in_chs]` → `[N, H, W, out_chs]`.
    pub fn forward_nhwc(&self, xs: &Tensor) -> Result<Tensor> {
        let mut xs = xs.contiguous()?;
        for b in &self.blocks {
            xs = b.forward(&xs)?;
        }
        Ok(xs)
    }

    /// PyTorch layout: `[N, in_chs, H, W]` → `[N, out_chs, H, W]`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let y = self.forward_nhwc(&xs.permute((0, 2, 3, 1))?)?;
        y.permute((0, 3, 1, 2))?.contiguous()
    }

    /// Parameters of a stage built with [`RegStage::new`], from the sizes alone.
    pub fn param_count(depth: usize, in_chs: usize, out_chs: usize) -> u64 {
        (0..depth)
            .map(|i| Bottleneck::param_count(if i == 0 { in_chs } else { out_chs }, out_chs))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The shifted multiply-add depthwise conv equals candle's grouped conv2d.
    #[test]
    fn depthwise_matches_grouped_conv2d() -> Result<()> {
        let dev = Device::Cpu;
        let (n, c, h, w) = (2usize, 5usize, 4usize, 6usize);
        let x = Tensor::randn(0f32, 1.0, (n, c, h, w), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (c, 1, 3, 3), &dev)?;
        let want = x.conv2d(&k, 1, 1, 1, c)?;
        let kt = k.reshape((c, 9))?.t()?.contiguous()?;
        let taps = (0..9).map(|i| kt.get(i)).collect::<Result<Vec<_>>>()?;
        let got = depthwise3x3_nhwc(&x.permute((0, 2, 3, 1))?, &taps)?.permute((0, 3, 1, 2))?;
        let d = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(d < 1e-5, "max diff {d}");
        Ok(())
    }

    #[test]
    fn se_channels_round_like_python() {
        assert_eq!(se_channels(1024), 256);
        assert_eq!(se_channels(1152), 288);
        assert_eq!(se_channels(4096), 1024);
        assert_eq!(se_channels(3584), 896);
        assert_eq!(se_channels(32), 8);
        assert_eq!(se_channels(2), 0); // round(0.5) = 0
        assert_eq!(se_channels(6), 2); // round(1.5) = 2
        assert_eq!(se_channels(10), 2); // round(2.5) = 2
        assert_eq!(se_channels(7), 2); // round(1.75) = 2
    }
}
