//! Shared neural-network building blocks for every videollama model.
//!
//! Everything here is a thin, documented layer over `candle-nn` so that the
//! encoders, connectors and language models agree on one set of numerics:
//!
//! * [`activation`] — the activations the reference models use (`quick_gelu`,
//!   exact-erf `gelu`, tanh-approximate `gelu_pytorch_tanh`, `silu`), selected by
//!   the HF `hidden_act` string.
//! * [`linear`] — linear layers loaded from a `VarBuilder` (weight `[out, in]`, optional
//!   bias), dense or quantized (Q8_0 / Q4_K / …) behind one type.
//! * [`quant`] — weight formats and the load scope that quantizes while a model loads
//!   (or takes pre-quantized weights from a GGUF file).
//! * [`norm`] — LayerNorm / RMSNorm loaders and `LayerNorm2d` (a LayerNorm over the
//!   channel axis of an `NCHW` tensor, as timm's `LayerNorm2d`/`LayerNormAct2d`).
//! * [`attention`] — attention with grouped KV heads (never repeated), causal or full:
//!   the fused CPU kernel of [`attention_cpu`] for f32, a query-blocked tensor form
//!   otherwise (and the plain full-matrix form as the reference in tests).
//! * [`fastmath`] — vectorised, multi-threaded GELU-tanh / quick-GELU / SiLU / softmax.
//! * [`cpu`] — what this CPU has and which kernel each kind of product runs on it.
//! * [`autograd`] — the training switch: layers take ops with a backward when their input
//!   tracks a `Var` (or inside [`autograd_scope`]); [`lora`] adapters on [`Linear`].
//!
//! ```text
//! VarBuilder ─► linear_b ─┬─ dense [out,in] ──────────────► Linear::forward = one GEMM (+bias)
//!  (+ load scope)         ├─ quantize now (Q8_0/Q4_K…) ──► QMatMul (rows padded to 256)
//!                         └─ pre-quantized (GGUF) ───────► QMatMul
//! ```
//!
//! Lower layers never depend on model-specific crates: this crate imports only candle
//! (and `gemm`/`rayon`, which candle uses too).

pub mod activation;
pub mod attention;
pub mod attention_cpu;
pub mod autograd;
pub mod cpu;
pub mod fastmath;
pub mod linear;
pub mod lora;
pub mod norm;
pub mod quant;
pub mod torch_resize;

pub use activation::Activation;
pub use autograd::autograd_scope;
pub use linear::{
    forward_many, linear, linear_b, linear_no_bias, quantize_in_scope, Linear, LoraAdapter,
};
pub use norm::{layer_norm, rms_norm, LayerNorm, LayerNorm2d, RmsNorm};
pub use quant::{with_load_scope, LoadScope, QuantizedWeights, WeightFormat};

/// The candle result type, re-exported so model crates need not name candle-core.
pub type Result<T> = candle_core::Result<T>;

/// Deterministic pseudo-random test data in [-√3, √3) (unit variance), so tests never flake.
#[cfg(test)]
pub(crate) fn test_tensor<S: Into<candle_core::Shape>>(shape: S, seed: u64) -> candle_core::Tensor {
    let shape = shape.into();
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(1);
    let data: Vec<f32> = (0..shape.elem_count())
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * 1.732_050_8
        })
        .collect();
    candle_core::Tensor::from_vec(data, shape, &candle_core::Device::Cpu).unwrap()
}
