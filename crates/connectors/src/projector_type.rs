//! `mm_projector_type`: which vision→language connector a checkpoint uses (spec §5.5).

use std::fmt;
use std::str::FromStr;

/// The projector types of the reference `build_vision_projector`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProjectorType {
    /// STC connector, Conv3d sampler with padding 1 (VideoLLaMA 2).
    StcConnector,
    /// STC connector, Conv3d sampler with padding 0 (VideoLLaMA 2.1).
    StcConnectorV35,
    /// STC with an `AvgPool3d(2)` + SiLU sampler (no sampler parameters).
    StpConnector,
    /// One `Linear(Cin, C)`, applied to the frame-mean features.
    Linear,
    /// `mlp{N}x_gelu`: `Linear(Cin,C)` then `(N−1)×[GELU, Linear(C,C)]`.
    MlpGelu(usize),
    /// STC with depth 0 and a `(1,2,2)` Conv3d (padding 1) sampler; needs `Cin == C`.
    SpatialConv,
    /// STC with depth 0 and an `AvgPool3d((1,2,2))` + SiLU sampler; needs `Cin == C`.
    SpatialPool,
    /// No-op.
    Identity,
}

/// The strings [`ProjectorType::from_str`] accepts.
pub const SUPPORTED_PROJECTOR_TYPES: &[&str] = &[
    "stc_connector",
    "stc_connector_v35",
    "stp_connector",
    "linear",
    "mlp{N}x_gelu",
    "spatial_conv",
    "spatial_pool",
    "identity",
];

/// An `mm_projector_type` string that is not one of [`SUPPORTED_PROJECTOR_TYPES`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown mm_projector_type {name:?}; supported: {}", SUPPORTED_PROJECTOR_TYPES.join(", "))]
pub struct UnknownProjectorType {
    pub name: String,
}

impl From<UnknownProjectorType> for candle_core::Error {
    fn from(e: UnknownProjectorType) -> Self {
        candle_core::Error::Msg(e.to_string())
    }
}

impl Default for ProjectorType {
    /// The reference's fallback when the config has no `mm_projector_type`: `linear`.
    fn default() -> Self {
        Self::Linear
    }
}

impl FromStr for ProjectorType {
    type Err = UnknownProjectorType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "stc_connector" => Self::StcConnector,
            "stc_connector_v35" => Self::StcConnectorV35,
            "stp_connector" => Self::StpConnector,
            "linear" => Self::Linear,
            "spatial_conv" => Self::SpatialConv,
            "spatial_pool" => Self::SpatialPool,
            "identity" => Self::Identity,
            other => match parse_mlp_gelu(other) {
                Some(n) => Self::MlpGelu(n),
                None => {
                    return Err(UnknownProjectorType {
                        name: other.to_string(),
                    })
                }
            },
        })
    }
}

/// `^mlp(\d+)x_gelu$` (Python `re.match` with `\d` = ASCII digits here). Depth 0 is accepted
/// by the regex; it builds a single Linear in the reference (the loop body never runs).
fn parse_mlp_gelu(s: &str) -> Option<usize> {
    let digits = s.strip_prefix("mlp")?.strip_suffix("x_gelu")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

impl fmt::Display for ProjectorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::StcConnector => f.write_str("stc_connector"),
            Self::StcConnectorV35 => f.write_str("stc_connector_v35"),
            Self::StpConnector => f.write_str("stp_connector"),
            Self::Linear => f.write_str("linear"),
            Self::MlpGelu(n) => write!(f, "mlp{n}x_gelu"),
            Self::SpatialConv => f.write_str("spatial_conv"),
            Self::SpatialPool => f.write_str("spatial_pool"),
            Self::Identity => f.write_str("identity"),
        }
    }
}

impl<'de> serde::Deserialize<'de> for ProjectorType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// How the reference `temporal_aggregator` feeds `[b, T, n, Cin]` frame features to the projector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregation {
    /// Mean over the T frames, then the projector on `[b, n, Cin]` (exactly `linear` and `mlp2x_gelu`).
    MeanPool,
    /// The projector sees all frames (`spatial_conv`, `spatial_pool`, and every type containing
    /// `tc_connector` / `tp_connector`).
    Spatiotemporal,
    /// The reference raises "Unsupported projector type" (`mlp{N}x_gelu` with N ≠ 2, `identity`).
    Unsupported,
}

impl ProjectorType {
    /// The reference's aggregator dispatch (string comparisons on `mm_projector_type`).
    /// Note that only the exact string `mlp2x_gelu` is mean-pooled; other MLP depths raise.
    pub fn aggregation(&self) -> Aggregation {
        match self {
            Self::Linear | Self::MlpGelu(2) => Aggregation::MeanPool,
            Self::SpatialConv | Self::SpatialPool => Aggregation::Spatiotemporal,
            Self::StcConnector | Self::StcConnectorV35 | Self::StpConnector => {
                Aggregation::Spatiotemporal
            }
            Self::MlpGelu(_) | Self::Identity => Aggregation::Unsupported,
        }
    }

    /// Is this one of the STC-family connectors (`stc_connector`, `_v35`, `stp_connector`,
    /// `spatial_conv`, `spatial_pool`)?
    pub fn is_stc_family(&self) -> bool {
        matches!(
            self,
            Self::StcConnector
                | Self::StcConnectorV35
                | Self::StpConnector
                | Self::SpatialConv
                | Self::SpatialPool
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_type_and_round_trips() {
        for s in [
            "stc_connector",
            "stc_connector_v35",
            "stp_connector",
            "linear",
            "spatial_conv",
            "spatial_pool",
            "identity",
            "mlp2x_gelu",
            "mlp3x_gelu",
            "mlp12x_gelu",
        ] {
            let t: ProjectorType = s.parse().unwrap();
            assert_eq!(t.to_string(), s);
        }
        assert_eq!(
            "mlp2x_gelu".parse::<ProjectorType>().unwrap(),
            ProjectorType::MlpGelu(2)
        );
        assert_eq!(
            "stc_connector_v35".parse::<ProjectorType>().unwrap(),
            ProjectorType::StcConnectorV35
        );
        let j: ProjectorType = serde_json::from_str("\"stc_connector\"").unwrap();
        assert_eq!(j, ProjectorType::StcConnector);
        assert_eq!(ProjectorType::default(), ProjectorType::Linear);
    }

    #[test]
    fn unknown_type_names_the_string_and_lists_supported() {
        for bad in [
            "stc_connector_v2",
            "mlpx_gelu",
            "mlp2x_relu",
            "MLP2x_gelu",
            "mlp-1x_gelu",
            "mlp2x_gelu ",
            "",
        ] {
            let e = bad.parse::<ProjectorType>().unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(&format!("{bad:?}")), "{msg}");
            assert!(
                msg.contains("stc_connector_v35")
                    && msg.contains("mlp{N}x_gelu")
                    && msg.contains("identity"),
                "{msg}"
            );
        }
        let e = serde_json::from_str::<ProjectorType>("\"qformer\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("qformer"), "{e}");
    }

    #[test]
    fn aggregator_dispatch_matches_reference() {
        assert_eq!(ProjectorType::Linear.aggregation(), Aggregation::MeanPool);
        assert_eq!(
            ProjectorType::MlpGelu(2).aggregation(),
            Aggregation::MeanPool
        );
        assert_eq!(
            ProjectorType::MlpGelu(3).aggregation(),
            Aggregation::Unsupported
        );
        assert_eq!(
            ProjectorType::Identity.aggregation(),
            Aggregation::Unsupported
        );
        assert_eq!(
            ProjectorType::StpConnector.aggregation(),
            Aggregation::Spatiotemporal
        );
    }
}
