//! Random-weight models with the published shapes, built in memory, so anyone can measure
//! the engine without downloading a checkpoint (`videollama bench --synthetic NAME`).
//!
//! ```text
//! NAME ─► config.json written from the published hyper-parameters (tests/data/configs)
//!      ─► RandomBackend (deterministic uniform weights, norms = 1, biases = 0)
//!      ─► VideoLlama2::from_var_builder (quantized layer by layer when asked)
//! ```
//!
//! The answers are meaningless; every matrix has its real size, so time and memory are real.

use crate::config::ModelConfig;
use crate::error::{PipelineError, Result};
use crate::model::{VideoLlama2, WeightOptions};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use std::path::Path;

/// `(name, description)` of every synthetic model.
pub const SYNTHETIC_MODELS: &[(&str, &str)] = &[
    (
        "videollama2-7b-16f",
        "VideoLLaMA2-7B-16F: CLIP-L/336 + stc_connector + Mistral-7B, 16 frames",
    ),
    (
        "videollama2.1-7b-16f",
        "VideoLLaMA2.1-7B-16F: SigLIP-so400m/384 + stc_connector_v35 + Qwen2-7B, 16 frames",
    ),
    (
        "perf-0.5b",
        "the ../shared/perf checkpoint: SigLIP-so400m/384 + stc_connector_v35 + a Qwen2 LLM with Qwen2.5-0.5B shapes, 16 frames",
    ),
];

const VIDEOLLAMA2_7B: &str =
    include_str!("../../../tests/data/configs/videollama2-7b-16f.config.json");
const VIDEOLLAMA2_1_7B: &str =
    include_str!("../../../tests/data/configs/videollama2.1-7b-16f.config.json");

/// The `config.json` of a synthetic model.
pub fn synthetic_config(name: &str) -> Result<ModelConfig> {
    let raw: serde_json::Value = match name {
        "videollama2-7b-16f" => serde_json::from_str(VIDEOLLAMA2_7B).expect("built-in config"),
        "videollama2.1-7b-16f" => serde_json::from_str(VIDEOLLAMA2_1_7B).expect("built-in config"),
        "perf-0.5b" => {
            let mut v: serde_json::Value =
                serde_json::from_str(VIDEOLLAMA2_1_7B).expect("built-in config");
            // Qwen2.5-0.5B shapes with an untied lm_head, as ../shared/perf/make_perf_ckpt.py.
            for (k, x) in [
                ("hidden_size", 896u64),
                ("intermediate_size", 4864),
                ("num_hidden_layers", 24),
                ("num_attention_heads", 14),
                ("num_key_value_heads", 2),
                ("vocab_size", 151936),
            ] {
                v[k] = x.into();
            }
            v["tie_word_embeddings"] = false.into();
            v
        }
        other => {
            let names: Vec<_> = SYNTHETIC_MODELS.iter().map(|(n, _)| *n).collect();
            return Err(PipelineError::Invalid(format!(
                "unknown synthetic model {other:?} (one of: {})",
                names.join(", ")
            )));
        }
    };
    ModelConfig::from_value(raw)
}

/// Deterministic pseudo-random weights for any requested name and shape.
///
/// Weights are uniform in ±1/√fan_in (activations keep their scale through the layers),
/// norm weights are 1, biases 0, so the forward pass stays finite at every depth.
struct RandomBackend {
    seed: u64,
}

impl RandomBackend {
    fn fill(&self, name: &str, shape: &Shape) -> Vec<f32> {
        let n = shape.elem_count();
        let is_norm = name.contains("norm") || name.contains(".ln") || name.ends_with("gamma");
        if name.ends_with("bias") || name.ends_with("beta") {
            return vec![0.0; n];
        }
        if is_norm && shape.rank() == 1 {
            return vec![1.0; n];
        }
        let fan_in = shape.dims()[1..].iter().product::<usize>().max(1);
        let scale = (1.0 / fan_in as f64).sqrt() as f32;
        // splitmix64 seeded by the name: the same name always gets the same values.
        let mut state = name
            .bytes()
            .fold(self.seed ^ 0x9e37_79b9_7f4a_7c15, |h, b| {
                (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
            });
        (0..n)
            .map(|_| {
                state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                z ^= z >> 31;
                ((z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }
}

impl SimpleBackend for RandomBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let data = self.fill(name, &s);
        Tensor::from_vec(data, s, &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(dev)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("synthetic weights need a shape for {name}")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

/// Build a synthetic model. The vision towers of the published configs are built in, so
/// no folder is read.
pub fn build_synthetic(
    name: &str,
    dtype: DType,
    device: &Device,
    weights: &WeightOptions,
    num_frames: Option<usize>,
) -> Result<VideoLlama2> {
    let mut config = synthetic_config(name)?;
    if let Some(n) = num_frames {
        config.mm.num_frames = n;
    }
    let vb = VarBuilder::from_backend(Box::new(RandomBackend { seed: 0 }), dtype, device.clone());
    VideoLlama2::from_var_builder(config, vb, Path::new("."), weights)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_configs_have_published_shapes() {
        let c = synthetic_config("perf-0.5b").unwrap();
        assert_eq!(c.llm.hidden_size, 896);
        assert_eq!(c.llm.num_hidden_layers, 24);
        assert_eq!(c.mm.num_frames, 16);
        let c = synthetic_config("videollama2-7b-16f").unwrap();
        assert_eq!(c.llm.hidden_size, 4096);
        assert!(synthetic_config("nope").is_err());
    }

    #[test]
    fn random_weights_are_deterministic_and_scaled() {
        let b = RandomBackend { seed: 0 };
        let s: Shape = (4, 100).into();
        let a = b.fill("x.weight", &s);
        assert_eq!(a, b.fill("x.weight", &s));
        assert_ne!(a, b.fill("y.weight", &s));
        assert!(a.iter().all(|v| v.abs() <= 0.1));
        assert!(b.fill("ln.bias", &s).iter().all(|v| *v == 0.0));
        assert!(b
            .fill("layer_norm1.weight", &(7,).into())
            .iter()
            .all(|v| *v == 1.0));
    }
}
