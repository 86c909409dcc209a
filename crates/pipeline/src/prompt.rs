//! Prompt assembly exactly as the reference `mm_infer` does it:
//!
//! ```text
//! question ─► messages (system message for Mistral/Mixtral, "<video>\n" + question)
//!          ─► checkpoint chat_template (minijinja, trim/lstrip blocks like transformers)
//!          ─► split on the modality placeholder, each chunk tokenized on its own
//!             with add_special_tokens = false ─► ids with −200/−201/−202 placeholders
//! ```

use crate::error::{PipelineError, Result};
use minijinja::{Environment, Value};
use serde::Serialize;
use std::path::Path;
use tokenizers::Tokenizer;

/// The system message `mm_infer` prepends for the Mistral/Mixtral model types (spec §8.1).
pub const MISTRAL_SYSTEM_MESSAGE: &str = "<<SYS>>\nYou are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe.  Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content. Please ensure that your responses are socially unbiased and positive in nature.\nIf a question does not make any sense, or is not factually coherent, explain why instead of answering something not correct. If you don't know the answer to a question, please don't share false information.\n<</SYS>>";

/// The captioning instruction of `videollama caption` for each modality. The
/// reference's captioning evaluation (`inference_video_cap_msvc.py`) reads its
/// question from the benchmark file; this is the detailed-description wording of
/// that benchmark, and `caption --prompt` replaces it.
pub fn caption_prompt(modality: Modality) -> &'static str {
    match modality {
        Modality::Image => "Describe the image in detail.",
        Modality::Audio => "Describe the audio in detail.",
        Modality::Video | Modality::Text => "Describe the video in detail.",
    }
}

/// Which media the prompt refers to; decides the placeholder string and id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Modality {
    Image,
    Video,
    Audio,
    Text,
}

impl Modality {
    /// Placeholder written into the prompt text (empty for text-only).
    pub fn placeholder(self) -> &'static str {
        match self {
            Modality::Image => "<image>",
            Modality::Video => "<video>",
            Modality::Audio => "<audio>",
            Modality::Text => "",
        }
    }
    /// Negative id standing for the media block in `input_ids` (never embedded).
    pub fn placeholder_id(self) -> Option<i64> {
        match self {
            Modality::Image => Some(-200),
            Modality::Video => Some(-201),
            Modality::Audio => Some(-202),
            Modality::Text => None,
        }
    }
}

/// Is `id` one of the media placeholder ids?
pub fn is_placeholder(id: i64) -> bool {
    (-202..=-200).contains(&id)
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Self {
            role: role.to_string(),
            content: content.into(),
        }
    }
}

/// Build the message list `mm_infer` builds: the first user turn gets
/// `MODAL + "\n"` in front (also for text-only, where MODAL is empty), and the
/// Mistral-family system message is prepended when `system` is given.
/// `turns` alternate user, assistant, user, …; the last one is the user's question.
pub fn build_messages(turns: &[String], modality: Modality, system: Option<&str>) -> Vec<Message> {
    let mut messages = Vec::new();
    if let Some(system) = system {
        messages.push(Message::new("system", system));
    }
    for (i, turn) in turns.iter().enumerate() {
        if i % 2 == 0 {
            let content = if i == 0 {
                format!("{}\n{}", modality.placeholder(), turn)
            } else {
                turn.clone()
            };
            messages.push(Message::new("user", content));
        } else {
            messages.push(Message::new("assistant", turn.clone()));
        }
    }
    messages
}

/// A checkpoint's chat template, rendered like `tokenizer.apply_chat_template`.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    pub fn new(
        template: &str,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<Self> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| PipelineError::Invalid(format!("chat template syntax: {e}")))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template_owned("chat", template.to_string())
            .map_err(|e| PipelineError::Invalid(format!("chat template does not parse: {e}")))?;
        Ok(Self {
            env,
            bos_token: bos_token.unwrap_or_default(),
            eos_token: eos_token.unwrap_or_default(),
        })
    }

    /// Read `chat_template`, `bos_token` and `eos_token` from `tokenizer_config.json`
    /// (token fields may be plain strings or `{"content": …}` objects, or null).
    pub fn from_tokenizer_config(path: &Path) -> Result<Self> {
        let cfg = crate::error::read_json(path)?;
        let template = match cfg.get("chat_template") {
            Some(serde_json::Value::String(s)) => s.clone(),
            // A list of named templates (newer transformers): take "default".
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template")?.as_str().map(str::to_string))
                .ok_or_else(|| {
                    PipelineError::file(path, "chat_template list has no \"default\" entry")
                })?,
            _ => {
                return Err(PipelineError::file(
                    path,
                    "no chat_template; this checkpoint cannot be prompted like the reference",
                ))
            }
        };
        let token = |key: &str| -> Option<String> {
            match cfg.get(key)? {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
                _ => None,
            }
        };
        Self::new(&template, token("bos_token"), token("eos_token"))
    }

    /// The template's eos token string (e.g. `</s>`, `<|im_end|>`).
    pub fn eos_token(&self) -> Option<&str> {
        Some(self.eos_token.as_str()).filter(|t| !t.is_empty())
    }

    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| PipelineError::Invalid(e.to_string()))?;
        let ctx = minijinja::context! {
            messages => Value::from(minijinja::value::Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.clone(),
            eos_token => self.eos_token.clone(),
        };
        tmpl.render(ctx)
            .map_err(|e| PipelineError::Invalid(format!("rendering the chat template failed: {e}")))
    }
}

/// `tokenizer_multimodal_token`: split on the placeholder, tokenize every chunk
/// separately without special tokens, and join with the placeholder id.
pub fn tokenize_multimodal(
    tokenizer: &Tokenizer,
    prompt: &str,
    modality: Modality,
) -> Result<Vec<i64>> {
    let encode = |text: &str| -> Result<Vec<i64>> {
        let enc = tokenizer
            .encode(text, false)
            .map_err(|e| PipelineError::Invalid(format!("tokenizer failed: {e}")))?;
        Ok(enc.get_ids().iter().map(|&i| i as i64).collect())
    };
    let (Some(id), placeholder) = (modality.placeholder_id(), modality.placeholder()) else {
        return encode(prompt);
    };
    let mut ids = Vec::new();
    for (i, chunk) in prompt.split(placeholder).enumerate() {
        if i > 0 {
            ids.push(id);
        }
        // An empty chunk encodes to nothing, as in the reference.
        if !chunk.is_empty() {
            ids.extend(encode(chunk)?);
        }
    }
    Ok(ids)
}
