//! Activations selected by the HF `hidden_act` / `activation_fn` strings.

use candle_core::{Result, Tensor};
use serde::Deserialize;

use crate::fastmath::Unary;

/// The activation functions used by the VideoLLaMA family.
///
/// Deserializes from the Hugging Face `hidden_act` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Activation {
    /// CLIP: `x * sigmoid(1.702 x)`.
    #[serde(rename = "quick_gelu")]
    QuickGelu,
    /// Exact GELU with `erf` (PyTorch `nn.GELU()`, HF `gelu`).
    #[serde(rename = "gelu")]
    Gelu,
    /// Tanh approximation (SigLIP `gelu_pytorch_tanh`, HF `gelu_new`).
    #[serde(rename = "gelu_pytorch_tanh", alias = "gelu_new", alias = "gelu_fast")]
    GeluTanh,
    /// `x * sigmoid(x)` (Mistral/Qwen2 MLPs, timm SiLU).
    #[serde(rename = "silu", alias = "swish")]
    Silu,
    #[serde(rename = "relu")]
    Relu,
}

impl Activation {
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        // Contiguous f32 CPU tensors take the vectorised, multi-threaded kernels (not in
        // training: they have no backward, see `crate::autograd`).
        let fast = match self {
            _ if crate::autograd::is_differentiable(xs) => None,
            Activation::GeluTanh => Some(Unary::GeluTanh),
            Activation::QuickGelu => Some(Unary::QuickGelu),
            Activation::Silu => Some(Unary::Silu),
            _ => None,
        };
        if let Some(f) = fast {
            if let Some(ys) = crate::fastmath::unary(xs, f)? {
                return Ok(ys);
            }
        }
        match self {
            Activation::QuickGelu => quick_gelu(xs),
            Activation::Gelu => xs.gelu_erf(),
            Activation::GeluTanh => xs.gelu(),
            Activation::Silu => xs.silu(),
            Activation::Relu => xs.relu(),
        }
    }
}

/// CLIP's `quick_gelu`: `x * sigmoid(1.702 * x)`.
pub fn quick_gelu(xs: &Tensor) -> Result<Tensor> {
    xs * candle_nn::ops::sigmoid(&(xs * 1.702f64)?)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn activations_match_closed_forms() -> Result<()> {
        let xs = [-3.0f32, -0.5, 0.0, 0.7, 2.5];
        let t = Tensor::new(&xs, &Device::Cpu)?;
        let quick = Activation::QuickGelu.forward(&t)?.to_vec1::<f32>()?;
        let tanh = Activation::GeluTanh.forward(&t)?.to_vec1::<f32>()?;
        let silu = Activation::Silu.forward(&t)?.to_vec1::<f32>()?;
        for (i, &x) in xs.iter().enumerate() {
            let x = x as f64;
            let q = x / (1.0 + (-1.702 * x).exp());
            let g = 0.5
                * x
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh());
            let s = x / (1.0 + (-x).exp());
            assert!((quick[i] as f64 - q).abs() < 1e-6);
            assert!((tanh[i] as f64 - g).abs() < 1e-5);
            assert!((silu[i] as f64 - s).abs() < 1e-6);
        }
        Ok(())
    }

    #[test]
    fn deserializes_hf_names() {
        let a: Activation = serde_json::from_str("\"gelu_pytorch_tanh\"").unwrap();
        assert_eq!(a, Activation::GeluTanh);
        let a: Activation = serde_json::from_str("\"quick_gelu\"").unwrap();
        assert_eq!(a, Activation::QuickGelu);
    }
}
