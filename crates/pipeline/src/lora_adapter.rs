//! A LoRA adapter kept apart from the language model (peft's layout), applied at load.
//!
//! ```text
//! DIR/adapter_config.json      peft_type "LORA", r, lora_alpha, target_modules
//! DIR/adapter_model.safetensors  base_model.model.model.layers.{i}.{self_attn|mlp}.{proj}.lora_{A,B}.weight
//!     ─► DecoderLm::attach_lora (shapes checked against each projection)
//!     ─► dense weights: merged at once (W + α/r·B·A, no cost per token);
//!        quantized weights: kept beside them (one low-rank product per layer)
//! ```
//! `videollama train --lora-export separate` writes this layout; so does our default model,
//! whose base language model is a released GGUF file that a merge cannot be written into.
//! A folder whose adapter sits in `adapter/` (beside weights it was already merged into)
//! is not touched: only the top-level files apply.

use crate::error::{PipelineError, Result};
use crate::LoadOptions;
use candle_nn::VarBuilder;
use std::path::Path;
use videollama_llm::DecoderLm;

pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

#[derive(Debug, Clone, serde::Deserialize)]
struct PeftLoraConfig {
    #[serde(default)]
    peft_type: Option<String>,
    r: usize,
    lora_alpha: f64,
    target_modules: Vec<String>,
}

/// Attach `DIR/adapter_model.safetensors` to `llm` when `DIR/adapter_config.json` exists.
/// Returns a short description for reports (`"LoRA r=16 merged"`), `None` without an adapter.
pub fn apply_if_present(
    dir: &Path,
    llm: &mut DecoderLm,
    opts: &LoadOptions,
) -> Result<Option<String>> {
    let config_path = dir.join(ADAPTER_CONFIG);
    if !config_path.is_file() {
        return Ok(None);
    }
    let json = crate::error::read_json(&config_path)?;
    let cfg: PeftLoraConfig = serde_json::from_value(json)
        .map_err(|e| PipelineError::file(&config_path, format!("not a peft LoRA config: {e}")))?;
    if let Some(kind) = &cfg.peft_type {
        if kind != "LORA" {
            return Err(PipelineError::file(
                &config_path,
                format!("peft_type {kind:?}: only LORA adapters are supported"),
            ));
        }
    }
    let weights = dir.join(ADAPTER_WEIGHTS);
    if !weights.is_file() {
        return Err(PipelineError::file(
            &weights,
            format!("missing (named by {})", config_path.display()),
        ));
    }
    // SAFETY: the file is mapped read-only and not modified while the model loads.
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(&[&weights], opts.dtype, &opts.device)
            .map_err(|e| PipelineError::file(&weights, e))?
    };
    let modules = llm
        .attach_lora(
            &cfg.target_modules,
            cfg.r,
            cfg.lora_alpha,
            vb.pp("base_model.model"),
        )
        .map_err(|e| {
            PipelineError::file(
                &weights,
                format!(
                    "does not fit the language model: {}",
                    videollama_llm::gguf::error_text(&e)
                ),
            )
        })?;
    if modules.is_empty() {
        return Err(PipelineError::file(
            &config_path,
            format!(
                "target_modules {:?} match no projection of the language model",
                cfg.target_modules
            ),
        ));
    }
    let dense = llm.linears().iter().all(|(_, l)| !l.is_quantized());
    if dense {
        llm.merge_lora()?;
    }
    tracing::info!(
        modules = modules.len(),
        r = cfg.r,
        "LoRA adapter {} {}",
        weights.display(),
        if dense {
            "merged"
        } else {
            "kept beside quantized weights"
        }
    );
    Ok(Some(format!(
        "LoRA r={} on {} projections{}",
        cfg.r,
        modules.len(),
        if dense { " (merged)" } else { "" }
    )))
}
