//! The language-model half of VideoLLaMA 2: the Mistral / Qwen2 / Mixtral decoder and
//! token selection.
//!
//! Data flow for one request (spec §6.2, §8.3):
//!
//! 1. [`DecoderConfig`] is read from the checkpoint's `config.json` (VideoLLaMA2 configs embed
//!    the base LLM's fields); the pipeline sets `attention_bias = true` for the Qwen2 family.
//! 2. [`DecoderLm::new`] loads `model.*` / `lm_head.*` from the root `VarBuilder`; the model is
//!    immutable and can be shared by many requests.
//! 3. The pipeline embeds the text pieces of the prompt with [`DecoderLm::embed_tokens`],
//!    splices the connector's visual tokens in place of the `<video>`/`<image>` placeholder,
//!    and hands the resulting `[1, L, H]` `inputs_embeds` to [`DecoderLm::forward_embeds`]
//!    together with a fresh [`KvCache`] from [`DecoderLm::new_cache`]. Positions are
//!    `0..L` over the spliced sequence; the call returns the last position's logits `[V]` (f32).
//! 4. A [`LogitsProcessor`] (HF repetition penalty over the *generated* ids, then greedy
//!    argmax or temperature/top-k/top-p sampling) picks the next id; its embedding is fed back
//!    with `forward_embeds`/`forward_tokens`, the cache continuing the positions. [`generate`]
//!    wraps this loop with eos / length / callback stopping. Eos ids and the penalty come from
//!    [`GenerationConfig`] (`generation_config.json`).
//!
//! Numerics follow HF: RMSNorm pre-norm blocks, RoPE in the `rotate_half` layout with
//! f32 tables cast to the compute dtype, grouped-query attention with the softmax in f32,
//! SwiGLU MLPs, Mixtral routing in f32. The compute dtype is the `VarBuilder`'s (f32, f16, bf16).

pub mod config;
pub mod decoder;
pub mod generation;
pub mod gguf;
pub mod moe;
pub mod rope;

pub use config::DecoderConfig;
pub use decoder::{DecoderLm, KvCache, RopePositions};
pub use generation::{
    apply_repetition_penalty, argmax, generate, GenerateOutput, GenerationConfig, LogitsProcessor,
    SamplingParams, StopReason, TokenIds,
};
pub use gguf::{load_gguf_decoder, GgufArch, GgufFile, GgufLlm};
pub use rope::RotaryEmbedding;
