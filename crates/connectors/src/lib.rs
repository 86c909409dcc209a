//! Vision → language connectors of VideoLLaMA 2 / 2.1 (`model.mm_projector`, spec §5).
//!
//! [`Connector`] turns the vision-tower features of one video, `[T, n, Cin]`, into the
//! `[L, C]` embeddings spliced into the LLM sequence (`Cin = mm_hidden_size`,
//! `C = hidden_size`). The `mm_projector_type` string selects the module
//! ([`ProjectorType`]) and also how the reference `temporal_aggregator` feeds it:
//!
//! ```text
//! stc_connector / _v35 / stp_connector / spatial_conv / spatial_pool   (see [`stc`])
//!   [T, n, Cin] → [T, hw, hw, Cin] → s1 RegStage ×4 (per frame)      [T, hw, hw, C]
//!               → sampler Conv3d k=s=2 pad P (or AvgPool3d) → SiLU   [T', h', w', C]
//!               → s2 RegStage ×4 (per temporal slice)                [T', h', w', C]
//!               → flatten (t, h, w) → readout Linear-GELU-Linear     [T'·h'·w', C]
//!   e.g. CLIP-L 16 frames, stc_connector: [16,576,1024] → s1 [16,24,24,4096]
//!        → sampler [9,13,13,4096] → s2 → [1521, 4096]
//!        SigLIP 16 frames, v35: [16,729,1152] → [16,27,27,3584] → [8,13,13,3584] → [1352, 3584]
//!
//! linear / mlp2x_gelu   (see [`mlp`])
//!   [T, n, Cin] → mean over T → [n, Cin] → Linear (→ GELU → Linear) → [n, C]
//! ```
//!
//! Reference quirk, reproduced: the aggregator mean-pools only the exact strings `linear` and
//! `mlp2x_gelu`; other `mlp{N}x_gelu` depths and `identity` raise "Unsupported projector
//! type" there, so [`Connector::forward`] returns an error for them (the projector itself can
//! still be applied with [`Connector::project`], e.g. for an audio projector).

pub mod dpc_knn;
pub mod memory_bank_qformer;
pub mod mlp;
pub mod projector_type;
pub mod qformer;
pub mod qformer_aggregator;
pub mod regstage;
pub mod st_pooling;
pub mod stc;
pub mod token_merge;

use candle_core::{bail, DType, Error, Result, Tensor};
use candle_nn::VarBuilder;

pub use mlp::MlpProjector;
pub use projector_type::{
    Aggregation, ProjectorType, UnknownProjectorType, SUPPORTED_PROJECTOR_TYPES,
};
pub use qformer::{ImageQFormer, QFormer, QFormerConfig};
pub use qformer_aggregator::{
    AggregatorKeys, PositionedQFormer, PositionedQFormerStages, VIDEO_QFORMER_LAYERS,
};
pub use regstage::RegStage;
pub use stc::{StcConnector, StcLayout, StcStages};

/// What the connector needs from the model `config.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectorConfig {
    /// `mm_projector_type`.
    pub projector_type: ProjectorType,
    /// `mm_hidden_size`: vision feature width (1024 CLIP-L, 1152 SigLIP so400m).
    pub mm_hidden_size: usize,
    /// `hidden_size`: LLM width.
    pub hidden_size: usize,
}

impl ConnectorConfig {
    /// Reads `mm_projector_type` (default `linear`, as the reference's `getattr`),
    /// `mm_hidden_size` and `hidden_size` from a model `config.json`.
    pub fn from_config_json(json: &serde_json::Value) -> Result<Self> {
        let projector_type = match json.get("mm_projector_type") {
            None | Some(serde_json::Value::Null) => ProjectorType::default(),
            Some(serde_json::Value::String(s)) => s.parse::<ProjectorType>()?,
            Some(v) => bail!("mm_projector_type must be a string, got {v}"),
        };
        let size = |key: &str| -> Result<usize> {
            json.get(key)
                .and_then(|v| v.as_u64())
                .map(|v| v as usize)
                .ok_or_else(|| {
                    Error::Msg(format!(
                        "model config.json has no integer {key:?} (needed by the connector)"
                    ))
                })
        };
        Ok(Self {
            projector_type,
            mm_hidden_size: size("mm_hidden_size")?,
            hidden_size: size("hidden_size")?,
        })
    }

    /// Number of embeddings the connector produces for `frames` frames of
    /// `tokens_per_frame` tokens, without any weights. STC types use `hw = ⌊√n⌋`.
    ///
    /// CLIP 24×24: 16 frames `stc_connector` → 1521, 8 → 845; SigLIP 27×27: 16 frames
    /// `stc_connector_v35` → 1352, 8 → 676. `linear`/`mlp{N}x_gelu` → `tokens_per_frame`
    /// (frames are mean-pooled), `identity` → `frames · tokens_per_frame`
    /// (note: [`Connector::forward`] rejects `identity` and `mlp{N}x_gelu` with N ≠ 2, as the
    /// reference does).
    pub fn num_tokens(&self, frames: usize, tokens_per_frame: usize) -> usize {
        match StcLayout::of(self.projector_type) {
            Some(layout) => {
                let hw = isqrt(tokens_per_frame);
                let (t, h, w) = layout.output_grid(frames, hw, hw);
                t * h * w
            }
            None => match self.projector_type {
                ProjectorType::Identity => frames * tokens_per_frame,
                _ => tokens_per_frame,
            },
        }
    }

    /// Parameters of `model.mm_projector` from the config alone.
    /// STC CLIP 1024→4096: 489,188,608; STC SigLIP 1152→3584: ≈376.89 M.
    pub fn param_count(&self) -> u64 {
        let (cin, c) = (self.mm_hidden_size, self.hidden_size);
        match self.projector_type {
            ProjectorType::Linear => MlpProjector::param_count(1, cin, c),
            ProjectorType::MlpGelu(n) => MlpProjector::param_count(n, cin, c),
            ProjectorType::Identity => 0,
            other => StcLayout::of(other)
                .expect("STC family")
                .param_count(cin, c),
        }
    }
}

fn isqrt(n: usize) -> usize {
    let mut r = (n as f64).sqrt() as usize;
    while r * r > n {
        r -= 1;
    }
    while (r + 1) * (r + 1) <= n {
        r += 1;
    }
    r
}

#[derive(Debug, Clone)]
enum Inner {
    Stc(StcConnector),
    Mlp(MlpProjector),
    Identity,
}

/// A loaded `model.mm_projector`.
#[derive(Debug, Clone)]
pub struct Connector {
    cfg: ConnectorConfig,
    inner: Inner,
    dtype: DType,
}

impl Connector {
    /// `vb` at the connector prefix (the pipeline passes `model.mm_projector`).
    pub fn new(cfg: &ConnectorConfig, vb: VarBuilder) -> Result<Self> {
        let (cin, c) = (cfg.mm_hidden_size, cfg.hidden_size);
        let dtype = vb.dtype();
        let inner = match cfg.projector_type {
            ProjectorType::Linear => Inner::Mlp(MlpProjector::linear(cin, c, vb)?),
            ProjectorType::MlpGelu(n) => Inner::Mlp(MlpProjector::new(n, cin, c, vb)?),
            ProjectorType::Identity => {
                if cin != c {
                    bail!("mm_projector_type identity needs mm_hidden_size ({cin}) == hidden_size ({c})");
                }
                Inner::Identity
            }
            kind => Inner::Stc(StcConnector::new(kind, cin, c, vb)?),
        };
        Ok(Self {
            cfg: cfg.clone(),
            inner,
            dtype,
        })
    }

    pub fn config(&self) -> &ConnectorConfig {
        &self.cfg
    }

    /// The dtype of the weights (and of the outputs).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The STC module, when this is an STC-family connector.
    pub fn stc(&self) -> Option<&StcConnector> {
        match &self.inner {
            Inner::Stc(s) => Some(s),
            _ => None,
        }
    }

    /// Features of one video `[T, n, Cin]` → `[L, C]`, with the reference's temporal
    /// aggregation (mean over frames for `linear` / `mlp2x_gelu`; the full STC otherwise).
    /// Errors for `identity` and `mlp{N}x_gelu` with N ≠ 2, which the reference rejects.
    /// The input is cast to the connector's weight dtype, and the output is in that dtype.
    pub fn forward(&self, features: &Tensor) -> Result<Tensor> {
        if features.rank() != 3 {
            bail!(
                "connector expects the features of one video as [T, n, Cin], got {:?}",
                features.dims()
            );
        }
        match self.cfg.projector_type.aggregation() {
            // PyTorch's `mean(1)` on fp16/bf16 accumulates in f32 and rounds once.
            Aggregation::MeanPool => {
                let x = features.to_dtype(self.dtype)?;
                self.project(&x.to_dtype(DType::F32)?.mean(0)?.to_dtype(self.dtype)?)
            }
            Aggregation::Spatiotemporal => self.project(features),
            Aggregation::Unsupported => bail!(
                "Unsupported projector type {} for video/image features: the reference temporal_aggregator only \
                 mean-pools \"linear\" and \"mlp2x_gelu\" and runs the STC-family connectors; it raises for this type",
                self.cfg.projector_type
            ),
        }
    }

    /// Applies `mm_projector` itself, without the temporal aggregation: MLP/linear over the
    /// last dim, identity as is, STC on `[T, n, Cin]`.
    pub fn project(&self, xs: &Tensor) -> Result<Tensor> {
        let xs = xs.to_dtype(self.dtype)?;
        match &self.inner {
            Inner::Stc(s) => s.forward(&xs),
            Inner::Mlp(m) => m.forward(&xs),
            Inner::Identity => Ok(xs),
        }
    }

    /// [`Self::forward`] plus the STC stage outputs (s1, sampler, s2) in the reference layouts.
    /// Only for STC-family connectors.
    pub fn forward_with_stages(&self, features: &Tensor) -> Result<StcStages> {
        match &self.inner {
            Inner::Stc(s) => s.forward_with_stages(&features.to_dtype(self.dtype)?),
            _ => bail!(
                "stage outputs exist only for STC-family connectors, not {}",
                self.cfg.projector_type
            ),
        }
    }

    /// `ConnectorConfig::num_tokens` for this connector.
    pub fn num_tokens(&self, frames: usize, tokens_per_frame: usize) -> usize {
        self.cfg.num_tokens(frames, tokens_per_frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use std::collections::HashMap;

    fn cfg(t: &str, cin: usize, c: usize) -> ConnectorConfig {
        ConnectorConfig {
            projector_type: t.parse().unwrap(),
            mm_hidden_size: cin,
            hidden_size: c,
        }
    }

    #[test]
    fn token_counts() {
        let clip = 576;
        let siglip = 729;
        assert_eq!(cfg("stc_connector", 1024, 4096).num_tokens(16, clip), 1521);
        assert_eq!(cfg("stc_connector", 1024, 4096).num_tokens(8, clip), 845);
        assert_eq!(
            cfg("stc_connector_v35", 1024, 4096).num_tokens(8, clip),
            576
        );
        assert_eq!(
            cfg("stc_connector_v35", 1024, 4096).num_tokens(16, clip),
            1152
        );
        assert_eq!(cfg("stc_connector", 1152, 3584).num_tokens(8, siglip), 980);
        assert_eq!(
            cfg("stc_connector", 1152, 3584).num_tokens(16, siglip),
            1764
        );
        assert_eq!(
            cfg("stc_connector_v35", 1152, 3584).num_tokens(16, siglip),
            1352
        );
        assert_eq!(
            cfg("stc_connector_v35", 1152, 3584).num_tokens(8, siglip),
            676
        );
        assert_eq!(
            cfg("stp_connector", 1152, 3584).num_tokens(16, siglip),
            8 * 13 * 13
        );
        assert_eq!(
            cfg("stp_connector", 1152, 3584).num_tokens(5, siglip),
            2 * 13 * 13
        );
        assert_eq!(
            cfg("spatial_conv", 64, 64).num_tokens(8, clip),
            10 * 13 * 13
        );
        assert_eq!(cfg("spatial_pool", 64, 64).num_tokens(8, clip), 8 * 12 * 12);
        assert_eq!(cfg("mlp2x_gelu", 1024, 4096).num_tokens(8, clip), 576);
        assert_eq!(cfg("linear", 1024, 4096).num_tokens(16, clip), 576);
        // golden fixtures: CLIP 4×4, 4 frames → 27; SigLIP v35 → 8
        assert_eq!(cfg("stc_connector", 32, 64).num_tokens(4, 16), 27);
        assert_eq!(cfg("stc_connector_v35", 32, 64).num_tokens(4, 16), 8);
    }

    #[test]
    fn param_counts() {
        assert_eq!(cfg("stc_connector", 1024, 4096).param_count(), 489_188_608);
        let siglip = cfg("stc_connector_v35", 1152, 3584).param_count();
        assert_eq!((siglip as f64 / 1e4).round() / 100.0, 376.89, "{siglip}");
        assert_eq!(cfg("stc_connector", 1152, 3584).param_count(), siglip);
        assert_eq!(
            cfg("stp_connector", 1152, 3584).param_count(),
            siglip - (3584u64 * 3584 * 8 + 3584)
        );
        assert_eq!(cfg("linear", 1024, 4096).param_count(), 1024 * 4096 + 4096);
        assert_eq!(
            cfg("mlp2x_gelu", 768, 3584).param_count(),
            768 * 3584 + 3584 + 3584 * 3584 + 3584
        );
        assert_eq!(cfg("identity", 64, 64).param_count(), 0);
    }

    /// Every parameter `Connector::new` asks for is counted exactly once by `param_count`.
    #[test]
    fn param_count_matches_loaded_tensors() -> Result<()> {
        for t in [
            "stc_connector",
            "stc_connector_v35",
            "stp_connector",
            "spatial_conv",
            "spatial_pool",
            "linear",
            "mlp3x_gelu",
        ] {
            let (cin, c) = if t.starts_with("spatial") {
                (16, 16)
            } else {
                (12, 20)
            };
            let cfg = cfg(t, cin, c);
            let vm = candle_nn::VarMap::new();
            let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
            Connector::new(&cfg, vb)?;
            let n: usize = vm.all_vars().iter().map(|v| v.elem_count()).sum();
            assert_eq!(n as u64, cfg.param_count(), "{t}");
        }
        Ok(())
    }

    #[test]
    fn config_from_json_and_errors() {
        let j = serde_json::json!({"mm_projector_type": "stc_connector_v35", "mm_hidden_size": 1152, "hidden_size": 3584});
        let c = ConnectorConfig::from_config_json(&j).unwrap();
        assert_eq!(c, cfg("stc_connector_v35", 1152, 3584));
        let j = serde_json::json!({"mm_hidden_size": 1152, "hidden_size": 3584});
        assert_eq!(
            ConnectorConfig::from_config_json(&j)
                .unwrap()
                .projector_type,
            ProjectorType::Linear
        );
        let j = serde_json::json!({"mm_projector_type": "qformer", "mm_hidden_size": 1, "hidden_size": 1});
        let e = ConnectorConfig::from_config_json(&j)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"qformer\"") && e.contains("stc_connector"),
            "{e}"
        );
    }

    #[test]
    fn aggregation_follows_reference() -> Result<()> {
        let dev = Device::Cpu;
        let mut ts = HashMap::new();
        for (k, shape) in [
            ("0.weight", (6usize, 4usize)),
            ("2.weight", (6, 6)),
            ("4.weight", (6, 6)),
        ] {
            ts.insert(k.to_string(), Tensor::randn(0f32, 1.0, shape, &dev)?);
        }
        for k in ["0.bias", "2.bias", "4.bias"] {
            ts.insert(k.to_string(), Tensor::randn(0f32, 1.0, 6, &dev)?);
        }
        let x = Tensor::randn(0f32, 1.0, (3, 5, 4), &dev)?;
        let vb = VarBuilder::from_tensors(ts.clone(), DType::F32, &dev);
        let mlp2 = Connector::new(&cfg("mlp2x_gelu", 4, 6), vb)?;
        let y = mlp2.forward(&x)?;
        assert_eq!(y.dims(), &[5, 6]);
        // mean over frames first, then Linear → GELU(erf) → Linear
        let m = x.mean(0)?;
        let h = m
            .matmul(&ts["0.weight"].t()?)?
            .broadcast_add(&ts["0.bias"])?
            .gelu_erf()?;
        let want = h
            .matmul(&ts["2.weight"].t()?)?
            .broadcast_add(&ts["2.bias"])?;
        let d = (y - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(d < 1e-5, "{d}");

        let vb = VarBuilder::from_tensors(ts, DType::F32, &dev);
        let mlp3 = Connector::new(&cfg("mlp3x_gelu", 4, 6), vb)?;
        let e = mlp3.forward(&x).unwrap_err().to_string();
        assert!(e.contains("mlp3x_gelu") && e.contains("mlp2x_gelu"), "{e}");
        assert_eq!(mlp3.project(&x)?.dims(), &[3, 5, 6]);
        Ok(())
    }
}
