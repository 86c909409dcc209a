//! Decoder hyper-parameters, read from the HF `config.json` field names.
//!
//! VideoLLaMA2 checkpoints copy the base LLM's config fields (Mistral, Mixtral or Qwen2) into the
//! top level of their own `config.json`, next to the multimodal `mm_*` fields, so the whole file
//! can be deserialized straight into a [`DecoderConfig`]; unknown fields are ignored.

use serde::Deserialize;
use videollama_nn::Activation;

/// Hyper-parameters of the Mistral / Qwen2 / Mixtral decoder family.
///
/// Defaults follow the HF config classes where a field may be absent:
/// `num_key_value_heads` = `num_attention_heads`, `head_dim` = `hidden_size / num_attention_heads`,
/// `rope_theta` = 10000, `tie_word_embeddings` = false, `hidden_act` = silu,
/// `num_experts_per_tok` = 2, `attention_bias` = false.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(from = "RawDecoderConfig")]
pub struct DecoderConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// Longest context the model was trained for; [`crate::DecoderLm`] does not enforce it
    /// (RoPE extends beyond it), the caller decides how to treat longer prompts.
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub hidden_act: Activation,
    /// Accepted for completeness but not applied: the released models have `sliding_window: null`
    /// (Mistral v0.2, Mixtral) or `use_sliding_window: false` (Qwen2), so the reference uses full
    /// causal attention.
    pub sliding_window: Option<usize>,
    pub use_sliding_window: bool,
    /// q/k/v projections carry a bias (Qwen2). HF's Qwen2 config has no such field — the
    /// architecture hard-codes it — so the pipeline sets this to `true` for the qwen2 family.
    pub attention_bias: bool,
    /// Mixtral: number of experts per sparse-MoE block; `None` means a dense SwiGLU MLP.
    pub num_local_experts: Option<usize>,
    /// Mixtral: experts mixed per token (top-k).
    pub num_experts_per_tok: usize,
    /// Qwen2-VL M-RoPE (`rope_scaling.mrope_section`, e.g. `[16, 24, 24]`): how many rotary
    /// frequencies follow the temporal, height and width position ids (sums to head_dim / 2).
    /// `None`: ordinary 1-D RoPE.
    pub mrope_section: Option<Vec<usize>>,
}

/// The part of `rope_scaling` the decoder reads (other keys and kinds are ignored).
#[derive(Deserialize)]
struct RawRopeScaling {
    #[serde(default)]
    mrope_section: Option<Vec<usize>>,
}

/// Wire format: everything optional that HF lets be absent, resolved in `From`.
#[derive(Deserialize)]
struct RawDecoderConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    #[serde(default)]
    head_dim: Option<usize>,
    rms_norm_eps: f64,
    #[serde(default)]
    rope_theta: Option<f64>,
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: Option<bool>,
    #[serde(default)]
    hidden_act: Option<Activation>,
    #[serde(default)]
    sliding_window: Option<usize>,
    #[serde(default)]
    use_sliding_window: Option<bool>,
    #[serde(default)]
    attention_bias: Option<bool>,
    #[serde(default)]
    num_local_experts: Option<usize>,
    #[serde(default)]
    num_experts_per_tok: Option<usize>,
    #[serde(default)]
    rope_scaling: Option<RawRopeScaling>,
}

impl From<RawDecoderConfig> for DecoderConfig {
    fn from(r: RawDecoderConfig) -> Self {
        Self {
            vocab_size: r.vocab_size,
            hidden_size: r.hidden_size,
            intermediate_size: r.intermediate_size,
            num_hidden_layers: r.num_hidden_layers,
            num_attention_heads: r.num_attention_heads,
            num_key_value_heads: r.num_key_value_heads.unwrap_or(r.num_attention_heads),
            head_dim: r
                .head_dim
                .unwrap_or(r.hidden_size / r.num_attention_heads.max(1)),
            rms_norm_eps: r.rms_norm_eps,
            rope_theta: r.rope_theta.unwrap_or(10_000.0),
            max_position_embeddings: r.max_position_embeddings,
            tie_word_embeddings: r.tie_word_embeddings.unwrap_or(false),
            hidden_act: r.hidden_act.unwrap_or(Activation::Silu),
            sliding_window: r.sliding_window,
            use_sliding_window: r.use_sliding_window.unwrap_or(false),
            attention_bias: r.attention_bias.unwrap_or(false),
            num_local_experts: r.num_local_experts,
            num_experts_per_tok: r.num_experts_per_tok.unwrap_or(2),
            mrope_section: r.rope_scaling.and_then(|s| s.mrope_section),
        }
    }
}

impl DecoderConfig {
    /// Parse a `config.json` text (a VideoLLaMA2 config or a plain HF LLM config).
    pub fn from_json_str(s: &str) -> candle_core::Result<Self> {
        serde_json::from_str(s).map_err(candle_core::Error::wrap)
    }

    /// Read and parse a `config.json` file.
    pub fn from_file(path: impl AsRef<std::path::Path>) -> candle_core::Result<Self> {
        let s = std::fs::read_to_string(path.as_ref()).map_err(|e| {
            candle_core::Error::msg(format!("reading {}: {e}", path.as_ref().display()))
        })?;
        Self::from_json_str(&s)
    }

    /// Whether the MLPs are Mixtral sparse-MoE blocks.
    pub fn is_moe(&self) -> bool {
        self.num_local_experts.is_some_and(|e| e > 0)
    }

    /// Width of the concatenated query heads (`num_attention_heads * head_dim`).
    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    /// Width of the concatenated key (or value) heads (`num_key_value_heads * head_dim`).
    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }

    /// Number of stored weights (embedding + layers + final norm + `lm_head` unless tied),
    /// computed from the config alone — handy for memory estimates before loading anything.
    pub fn param_count(&self) -> u64 {
        let h = self.hidden_size as u64;
        let v = self.vocab_size as u64;
        let i = self.intermediate_size as u64;
        let (q, kv) = (self.q_dim() as u64, self.kv_dim() as u64);
        let bias = if self.attention_bias { q + 2 * kv } else { 0 };
        let attn = h * q + 2 * h * kv + q * h + bias;
        let swiglu = 3 * h * i;
        let mlp = match self.num_local_experts {
            Some(e) if e > 0 => e as u64 * swiglu + e as u64 * h, // experts + router
            _ => swiglu,
        };
        let layer = attn + mlp + 2 * h; // two RMSNorm weights
        let embed = v * h;
        let head = if self.tie_word_embeddings { 0 } else { v * h };
        embed + self.num_hidden_layers as u64 * layer + h + head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mistral_7b() -> &'static str {
        r#"{"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
            "rms_norm_eps": 1e-5, "rope_theta": 1000000.0, "max_position_embeddings": 32768,
            "sliding_window": null, "hidden_act": "silu", "model_type": "videollama2_mistral",
            "mm_projector_type": "stc_connector", "tie_word_embeddings": false}"#
    }

    #[test]
    fn mistral_7b_param_count() {
        let c = DecoderConfig::from_json_str(mistral_7b()).unwrap();
        assert_eq!(c.head_dim, 128);
        assert_eq!(c.num_key_value_heads, 8);
        assert!(!c.attention_bias && !c.is_moe());
        assert_eq!(c.param_count(), 7_241_732_096);
    }

    #[test]
    fn qwen2_7b_param_count_with_qkv_bias() {
        let mut c = DecoderConfig::from_json_str(
            r#"{"vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944,
                "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
                "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "max_position_embeddings": 32768,
                "sliding_window": 131072, "use_sliding_window": false, "max_window_layers": 28}"#,
        )
        .unwrap();
        c.attention_bias = true;
        assert_eq!(c.head_dim, 128);
        assert_eq!(c.param_count(), 7_615_616_512);
    }

    #[test]
    fn mixtral_8x7b_param_count() {
        let c = DecoderConfig::from_json_str(
            r#"{"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336,
                "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                "rms_norm_eps": 1e-5, "rope_theta": 1000000.0, "max_position_embeddings": 32768,
                "num_local_experts": 8, "num_experts_per_tok": 2, "router_aux_loss_coef": 0.02}"#,
        )
        .unwrap();
        assert!(c.is_moe());
        // The published figure for Mixtral-8x7B is 46.7 B parameters.
        assert_eq!(c.param_count(), 46_702_792_704);
    }

    #[test]
    fn defaults_apply_when_fields_are_missing() {
        let c = DecoderConfig::from_json_str(
            r#"{"vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
                "num_hidden_layers": 1, "num_attention_heads": 2, "rms_norm_eps": 1e-6,
                "max_position_embeddings": 64, "head_dim": null}"#,
        )
        .unwrap();
        assert_eq!(c.num_key_value_heads, 2);
        assert_eq!(c.head_dim, 4);
        assert_eq!(c.rope_theta, 10_000.0);
        assert_eq!(c.hidden_act, Activation::Silu);
        assert_eq!(c.num_experts_per_tok, 2);
        assert!(!c.tie_word_embeddings);
    }
}
