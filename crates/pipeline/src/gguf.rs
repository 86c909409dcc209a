//! GGUF language models in the pipeline: a GGUF file on its own (text only), or as the
//! language model of a VideoLLaMA2 checkpoint (`--llm`).
//!
//! ```text
//! --model FILE.gguf   Pipeline::load ─► Pipeline::load_gguf
//!     FILE.gguf ─► GgufLlm (videollama_llm::gguf): DecoderConfig from {arch}.* metadata
//!               ─► DecoderLm: linear weights as stored (Q4_0, Q4_1, Q8_0, K-quants…),
//!                  embeddings / norms / biases dequantized to the compute dtype
//!               ─► tokenizer.ggml.* ─► tokenizers::Tokenizer (candle's TokenizerFromGguf,
//!                  pre-tokenizer set to match the `tokenizer.ggml.pre` name)
//!               ─► tokenizer.chat_template + bos/eos ids ─► ChatTemplate, GenerationConfig
//!               ─► VideoLlama2 with no vision tower and no audio: answer / chat / serve
//!                  work unchanged; the question goes in as the user message as typed
//!                  (no media placeholder line, no system message of ours)
//! --model DIR --llm FILE.gguf   VideoLlama2::load ─► load_llm_for_checkpoint
//!     FILE.gguf ─► shapes checked against DIR/config.json ─► its DecoderLm (the GGUF's own
//!                  embeddings and norms too) replaces the checkpoint's language model
//! ```

use crate::config::{LlmFamily, ModelConfig, MultimodalConfig};
use crate::error::{PipelineError, Result};
use crate::model::VideoLlama2;
use crate::prompt::{build_messages, ChatTemplate, Message, Modality};
use crate::{LoadOptions, Pipeline};
use std::path::Path;
use std::time::Instant;
use tokenizers::Tokenizer;
use videollama_llm::{DecoderLm, GenerationConfig, GgufArch, GgufLlm, TokenIds};

/// `model_type` given to the [`ModelConfig`] of a GGUF-only pipeline (`gguf:llama`, …).
pub const GGUF_MODEL_TYPE_PREFIX: &str = "gguf:";

/// Does `path` name a GGUF file (by its extension, or by its first bytes)?
pub fn is_gguf_path(path: &Path) -> bool {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        return !path.is_dir();
    }
    if !path.is_file() {
        return false;
    }
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok()
        && &magic == b"GGUF"
}

/// Is this the configuration of a GGUF-only (text) pipeline?
pub fn is_gguf_model(config: &ModelConfig) -> bool {
    config.mm.model_type.starts_with(GGUF_MODEL_TYPE_PREFIX)
}

/// The messages of a plain chat LLM: the turns as typed, no media line, no system message
/// (the chat template supplies its own default).
pub fn plain_messages(turns: &[String]) -> Vec<Message> {
    let mut messages = build_messages(turns, Modality::Text, None);
    if let (Some(first), Some(turn)) = (
        messages.iter_mut().find(|m| m.role == "user"),
        turns.first(),
    ) {
        first.content = turn.clone();
    }
    messages
}

fn family(arch: GgufArch) -> LlmFamily {
    match arch {
        GgufArch::Llama => LlmFamily::Llama,
        GgufArch::Mistral => LlmFamily::Mistral,
        GgufArch::Qwen2 => LlmFamily::Qwen2,
    }
}

fn candle_file_err(path: &Path, e: candle_core::Error) -> PipelineError {
    // GGUF errors already start with the file name; keep them as they are.
    let msg = videollama_llm::gguf::error_text(&e);
    if msg.contains(&path.display().to_string()) {
        PipelineError::Invalid(msg)
    } else {
        PipelineError::file(path, msg)
    }
}

/// The Llama-3 pre-tokenizer split (`tokenizer.ggml.pre = "llama-bpe"`), from its
/// published `tokenizer.json`.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The tokenizer described by `tokenizer.ggml.*`. candle builds the BPE model, its
/// special tokens and the pre-tokenizers it knows (`qwen2`, `llama3`, …); for the names it
/// does not know it falls back to GPT-2's pre-tokenizer *with* a prefix space, which
/// llama.cpp does not add, so those are set here: `smollm` (digits split one by one, then
/// byte-level), `llama-bpe` (Llama 3), and plain byte-level otherwise.
pub fn tokenizer_from_gguf(llm: &GgufLlm) -> Result<Tokenizer> {
    use candle_core::quantized::tokenizer::TokenizerFromGguf;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::pre_tokenizers::digits::Digits;
    use tokenizers::pre_tokenizers::sequence::Sequence;
    use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
    use tokenizers::pre_tokenizers::PreTokenizerWrapper;
    use tokenizers::tokenizer::SplitDelimiterBehavior;

    let path = llm.path();
    let file = llm.file();
    let mut tokenizer = Tokenizer::from_gguf(file.content()).map_err(|e| {
        let e = videollama_llm::gguf::error_text(&e);
        PipelineError::file(
            path,
            format!(
                "cannot build the tokenizer from tokenizer.ggml.* ({e}); only byte-level BPE \
                 (\"gpt2\") GGUF tokenizers are supported — for a SentencePiece model use \
                 --llm with a checkpoint folder"
            ),
        )
    })?;
    let pre = file.meta_str("tokenizer.ggml.pre").unwrap_or("default");
    let add_space = matches!(
        file.metadata().get("tokenizer.ggml.add_space_prefix"),
        Some(candle_core::quantized::gguf_file::Value::Bool(true))
    );
    let byte_level = |regex: bool| ByteLevel::new(add_space, true, regex);
    let pre_tokenizer: Option<PreTokenizerWrapper> = match pre {
        // Handled by candle.
        "qwen2" | "llama3" | "smaug-bpe" | "lfm2" => None,
        "smollm" => {
            Some(Sequence::new(vec![Digits::new(true).into(), byte_level(true).into()]).into())
        }
        "llama-bpe" => {
            let split = Split::new(
                SplitPattern::Regex(LLAMA3_SPLIT.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| PipelineError::file(path, format!("tokenizer pre-split: {e}")))?;
            Some(Sequence::new(vec![split.into(), byte_level(false).into()]).into())
        }
        _ => Some(byte_level(true).into()),
    };
    if let Some(p) = pre_tokenizer {
        tokenizer.with_pre_tokenizer(Some(p));
    }
    Ok(tokenizer)
}

/// Chat template, bos/eos strings and the generation config (eos = stop id) of a GGUF model.
fn chat_from_gguf(
    llm: &GgufLlm,
    tokenizer: &Tokenizer,
) -> Result<(ChatTemplate, GenerationConfig)> {
    let path = llm.path();
    let file = llm.file();
    let id = |key: &str| -> Result<Option<u32>> {
        file.meta_usize(key)
            .map(|v| v.map(|v| v as u32))
            .map_err(|e| candle_file_err(path, e))
    };
    let bos = id("tokenizer.ggml.bos_token_id")?;
    let eos = id("tokenizer.ggml.eos_token_id")?;
    let template = file.meta_str("tokenizer.chat_template").ok_or_else(|| {
        PipelineError::file(
            path,
            "no tokenizer.chat_template in the metadata: cannot build a chat prompt for this model",
        )
    })?;
    let token = |id: Option<u32>| id.and_then(|i| tokenizer.id_to_token(i));
    let template = ChatTemplate::new(template, token(bos), token(eos)).map_err(|e| match e {
        PipelineError::Invalid(msg) => PipelineError::file(path, format!("tokenizer.{msg}")),
        other => other,
    })?;
    let generation_config = GenerationConfig {
        bos_token_id: bos,
        eos_token_id: eos.map(TokenIds::One),
        ..GenerationConfig::default()
    };
    Ok((template, generation_config))
}

/// The [`ModelConfig`] of a text-only GGUF pipeline: no vision tower, no audio.
fn model_config(llm: &GgufLlm) -> Result<ModelConfig> {
    let cfg = llm.config().clone();
    let raw = serde_json::json!({
        "model_type": format!("{GGUF_MODEL_TYPE_PREFIX}{}", llm.arch().name()),
        "hidden_size": cfg.hidden_size,
        "gguf_file": llm.path().display().to_string(),
        "gguf_name": llm.name(),
    });
    let mm: MultimodalConfig = serde_json::from_value(raw.clone())
        .map_err(|e| PipelineError::file(llm.path(), format!("model config: {e}")))?;
    Ok(ModelConfig {
        mm,
        llm: cfg,
        family: family(llm.arch()),
        system_message: false,
        raw,
    })
}

impl Pipeline {
    /// A text-only pipeline over a GGUF language model (llama / mistral / qwen2 with a
    /// byte-level BPE tokenizer): model, tokenizer, chat template and eos all come from
    /// the file. `opts.weights.quantize_llm` applies only to a tied `lm_head`.
    pub fn load_gguf(path: &Path, opts: &LoadOptions) -> Result<Self> {
        let start = Instant::now();
        if let Some(llm) = &opts.llm_gguf {
            return Err(PipelineError::Invalid(format!(
                "--llm {} replaces the language model of a checkpoint folder; --model {} is \
                 already a GGUF language model",
                llm.display(),
                path.display()
            )));
        }
        let gguf = GgufLlm::open(path).map_err(|e| candle_file_err(path, e))?;
        let tokenizer = tokenizer_from_gguf(&gguf)?;
        let (template, generation_config) = chat_from_gguf(&gguf, &tokenizer)?;
        let config = model_config(&gguf)?;
        let llm = gguf
            .load_decoder(opts.dtype, &opts.device, opts.weights.quantize_llm)
            .map_err(|e| candle_file_err(path, e))?;
        tracing::info!(
            arch = gguf.arch().name(),
            name = gguf.name().unwrap_or(""),
            "GGUF language model {}",
            path.display()
        );
        let model = VideoLlama2 {
            config,
            llm,
            visual: None,
            audio: None,
            device: opts.device.clone(),
            dtype: opts.dtype,
            unused_tensors: Vec::new(),
        };
        Ok(Self {
            dir: path.to_path_buf(),
            model,
            tokenizer,
            template,
            generation_config,
            load_seconds: start.elapsed().as_secs_f64(),
            encoder_cache: crate::EncoderCache::default(),
            model_identity: crate::cache::model_identity(path, opts),
            weights: match opts.weights.quantize_llm {
                Some(f) => format!(
                    "gguf as stored (Q4_1/Q5_0/Q5_1 re-quantized to q8_0), tied lm_head {f}"
                ),
                None => "gguf dequantized (dense)".to_string(),
            },
            family: None,
        })
    }
}

/// The GGUF file that replaces a checkpoint's language model: `--llm` when given, else
/// config.json's `llm_gguf` (absolute, or relative to the checkpoint folder). A named file
/// that is not there is an error naming the file and the key that named it.
pub fn checkpoint_llm_gguf(
    dir: &Path,
    config: &ModelConfig,
    opts: &LoadOptions,
) -> Result<Option<std::path::PathBuf>> {
    if let Some(path) = &opts.llm_gguf {
        return Ok(Some(path.clone()));
    }
    let Some(name) = &config.mm.llm_gguf else {
        return Ok(None);
    };
    let path = dir.join(name);
    if !path.is_file() {
        return Err(PipelineError::file(
            &path,
            format!(
                "missing (named by llm_gguf in {}); for the default model run scripts/setup.sh \
                 or `videollama setup`",
                dir.join("config.json").display()
            ),
        ));
    }
    Ok(Some(path))
}

/// Tokenizer, chat template and generation config of a checkpoint whose language model is
/// a GGUF file and which brings no `tokenizer.json` of its own.
pub fn chat_parts_from_gguf(path: &Path) -> Result<(Tokenizer, ChatTemplate, GenerationConfig)> {
    let gguf = GgufLlm::open(path).map_err(|e| candle_file_err(path, e))?;
    let tokenizer = tokenizer_from_gguf(&gguf)?;
    let (template, generation_config) = chat_from_gguf(&gguf, &tokenizer)?;
    Ok((tokenizer, template, generation_config))
}

/// `--llm FILE.gguf` on a checkpoint: the whole language model (embeddings and norms
/// included) from the GGUF file, after checking that it has the shapes the checkpoint's
/// `config.json` describes.
pub fn load_llm_for_checkpoint(
    gguf: &Path,
    config: &ModelConfig,
    dir: &Path,
    opts: &LoadOptions,
) -> Result<DecoderLm> {
    let llm = GgufLlm::open(gguf).map_err(|e| candle_file_err(gguf, e))?;
    let (g, c) = (llm.config(), &config.llm);
    let mut diffs = Vec::new();
    for (what, a, b) in [
        ("hidden_size", g.hidden_size, c.hidden_size),
        (
            "num_hidden_layers",
            g.num_hidden_layers,
            c.num_hidden_layers,
        ),
        ("vocab_size", g.vocab_size, c.vocab_size),
        (
            "num_attention_heads",
            g.num_attention_heads,
            c.num_attention_heads,
        ),
        (
            "num_key_value_heads",
            g.num_key_value_heads,
            c.num_key_value_heads,
        ),
        ("head_dim", g.head_dim, c.head_dim),
        (
            "intermediate_size",
            g.intermediate_size,
            c.intermediate_size,
        ),
    ] {
        if a != b {
            diffs.push(format!("{what} {a} vs {b}"));
        }
    }
    if c.is_moe() {
        diffs.push("the checkpoint's language model is a mixture of experts".to_string());
    }
    if !diffs.is_empty() {
        return Err(PipelineError::Invalid(format!(
            "--llm {} does not fit the checkpoint {}: {} (GGUF vs config.json)",
            gguf.display(),
            dir.join("config.json").display(),
            diffs.join(", ")
        )));
    }
    if family(llm.arch()) != config.family {
        tracing::warn!(
            "--llm {}: a {} model on a {:?} checkpoint",
            gguf.display(),
            llm.arch().name(),
            config.family
        );
    }
    llm.load_decoder(opts.dtype, &opts.device, opts.weights.quantize_llm)
        .map_err(|e| candle_file_err(gguf, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_messages_keep_the_question_as_typed() {
        let turns = vec!["Hi?".to_string(), "Hello.".to_string(), "Why?".to_string()];
        let m = plain_messages(&turns);
        assert_eq!(m.len(), 3);
        assert_eq!(m[0], Message::new("user", "Hi?"));
        assert_eq!(m[1], Message::new("assistant", "Hello."));
        assert_eq!(m[2], Message::new("user", "Why?"));
    }

    #[test]
    fn gguf_paths_are_recognised() {
        assert!(is_gguf_path(Path::new("/nonexistent/model.GGUF")));
        assert!(!is_gguf_path(Path::new("/nonexistent/folder")));
    }
}
