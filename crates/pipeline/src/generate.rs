//! The generation loop: prefill the spliced embeddings, then decode token by token
//! with the KV cache, streaming text as it arrives.

use crate::error::{PipelineError, Result};
use candle_core::Tensor;
use std::time::Instant;
use videollama_llm::{DecoderLm, KvCache, LogitsProcessor, RopePositions, SamplingParams};

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    pub eos_ids: Vec<u32>,
    /// Multi-token stops: generation ends when the new ids end with one of them (Video-LLaMA's
    /// `StoppingCriteriaSub`; the stop ids stay in the output, as in HF).
    pub stop_sequences: Vec<Vec<u32>>,
    /// Keep the raw logits of every step (for `--dump-tensors`).
    pub record_logits: bool,
    /// The eos ids are banned for the first this many new tokens (HF `min_new_tokens`;
    /// MA-LMM's `min_length` 1). 0: no ban.
    pub min_new_tokens: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    Eos,
    MaxNewTokens,
    ContextFull,
    Cancelled,
}

pub struct Generation {
    /// New tokens only; an eos token that ended generation is included, as in HF.
    pub token_ids: Vec<u32>,
    pub stop_reason: StopReason,
    pub prefill_seconds: f64,
    pub decode_seconds: f64,
    /// `[steps, V]` raw logits (before penalties), when recorded.
    pub logits_steps: Option<Tensor>,
    /// Prompt positions that were already in the KV cache (not prefilled again).
    pub reused_prompt_tokens: usize,
}

/// M-RoPE positions of one prompt (Qwen2-VL `get_rope_index`): the `[temporal, height,
/// width]` ids of the prefilled rows and the decode offset `rope_delta` (new token id =
/// cache position + delta on every axis).
#[derive(Debug, Clone, PartialEq)]
pub struct MropePositions {
    pub prefill: [Vec<i64>; 3],
    pub delta: i64,
}

/// Run generation from `inputs_embeds` `[S, H]`.
///
/// `on_token` is called with each new id as soon as it is chosen; returning
/// `false` cancels generation (a disconnected client, say).
pub fn generate(
    llm: &DecoderLm,
    inputs_embeds: &Tensor,
    opts: &GenerateOptions,
    on_token: impl FnMut(u32) -> bool,
) -> Result<Generation> {
    let mut cache = llm.new_cache();
    generate_in_cache(llm, &mut cache, inputs_embeds, opts, on_token)
}

/// [`generate`] continuing `cache`: `inputs_embeds` `[S, H]` are the positions after the
/// `cache.len()` it already holds (a chat session's reused prefix). Afterwards the cache
/// holds the prompt and every generated id but the last (which was chosen, never fed).
pub fn generate_in_cache(
    llm: &DecoderLm,
    cache: &mut KvCache,
    inputs_embeds: &Tensor,
    opts: &GenerateOptions,
    on_token: impl FnMut(u32) -> bool,
) -> Result<Generation> {
    generate_in_cache_at(llm, cache, inputs_embeds, opts, None, on_token)
}

/// [`generate`] with M-RoPE positions (`None`: the 1-D positions of every other model).
pub fn generate_mrope(
    llm: &DecoderLm,
    inputs_embeds: &Tensor,
    opts: &GenerateOptions,
    positions: Option<&MropePositions>,
    on_token: impl FnMut(u32) -> bool,
) -> Result<Generation> {
    let mut cache = llm.new_cache();
    generate_in_cache_at(llm, &mut cache, inputs_embeds, opts, positions, on_token)
}

/// [`generate_in_cache`] with optional M-RoPE positions for the prompt rows and the decode
/// steps.
pub fn generate_in_cache_at(
    llm: &DecoderLm,
    cache: &mut KvCache,
    inputs_embeds: &Tensor,
    opts: &GenerateOptions,
    positions: Option<&MropePositions>,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<Generation> {
    let prompt_len = cache.len() + inputs_embeds.dim(0)?;
    let context = llm.config().max_position_embeddings;
    if prompt_len >= context {
        return Err(PipelineError::PromptTooLong {
            tokens: prompt_len,
            visual: 0,
            new: opts.max_new_tokens,
            context,
        });
    }
    // One allocation for the whole request: prompt + every new token (within the context).
    cache.reserve((prompt_len + opts.max_new_tokens).min(context));
    let mut processor = LogitsProcessor::new(opts.sampling.clone());
    let mut token_ids: Vec<u32> = Vec::new();
    let mut recorded = Vec::new();
    let start = Instant::now();
    let (prefill_at, decode_at) = match positions {
        Some(p) => (
            RopePositions::Multi(p.prefill.clone()),
            RopePositions::Shifted(p.delta),
        ),
        None => (RopePositions::Sequential, RopePositions::Sequential),
    };
    let mut logits = llm.forward_embeds_at(&inputs_embeds.unsqueeze(0)?, cache, &prefill_at)?;
    let prefill_seconds = start.elapsed().as_secs_f64();
    let decode_start = Instant::now();
    let mut stop_reason = StopReason::MaxNewTokens;
    for step in 0..opts.max_new_tokens {
        if opts.record_logits {
            recorded.push(logits.clone());
        }
        let next = if step < opts.min_new_tokens {
            let mut v = logits
                .flatten_all()?
                .to_dtype(candle_core::DType::F32)?
                .to_vec1::<f32>()?;
            ban_ids(&mut v, &opts.eos_ids);
            processor.sample_slice(&mut v, &token_ids)
        } else {
            processor.sample(&logits, &token_ids)?
        };
        token_ids.push(next);
        if !on_token(next) {
            stop_reason = StopReason::Cancelled;
            break;
        }
        if opts.eos_ids.contains(&next)
            || opts
                .stop_sequences
                .iter()
                .any(|stop| !stop.is_empty() && token_ids.ends_with(stop))
        {
            stop_reason = StopReason::Eos;
            break;
        }
        if step + 1 == opts.max_new_tokens {
            break;
        }
        if prompt_len + token_ids.len() >= context {
            stop_reason = StopReason::ContextFull;
            break;
        }
        logits = llm.forward_tokens_at(&[next], cache, &decode_at)?;
    }
    let logits_steps = if opts.record_logits && !recorded.is_empty() {
        Some(Tensor::stack(&recorded, 0)?)
    } else {
        None
    };
    Ok(Generation {
        token_ids,
        stop_reason,
        prefill_seconds,
        decode_seconds: decode_start.elapsed().as_secs_f64(),
        logits_steps,
        reused_prompt_tokens: 0,
    })
}

/// `ids` set to −∞ in `logits` (HF `MinNewTokensLengthLogitsProcessor`).
fn ban_ids(logits: &mut [f32], ids: &[u32]) {
    for &id in ids {
        if let Some(x) = logits.get_mut(id as usize) {
            *x = f32::NEG_INFINITY;
        }
    }
}
