//! Turning generated ids back into text the way the reference does.
//!
//! The reference decodes with the *slow* SentencePiece tokenizer for Llama/Mistral
//! checkpoints. For byte-fallback tokens (`<0xDA>`) it joins the bytes of the whole
//! answer and decodes them with Python's `errors="replace"`, which replaces each
//! *maximal invalid subsequence* by one U+FFFD. The `tokenizers` ByteFallback
//! decoder instead emits one U+FFFD per byte of an invalid run (`<0xDA><0x57>`
//! gives "��" instead of "�W"). So for byte-fallback tokenizers we decode the
//! SentencePiece way ourselves; `String::from_utf8_lossy` follows the same
//! replacement rule as Python. Other tokenizers (byte-level BPE: Qwen2) already
//! decode the joined bytes lossily and use `tokenizers` as is.

use crate::error::{PipelineError, Result};
use std::collections::HashSet;
use tokenizers::Tokenizer;

pub struct TextDecoder<'a> {
    tokenizer: &'a Tokenizer,
    special: HashSet<u32>,
    sentencepiece_bytes: bool,
}

/// Is the tokenizer's decoder the SentencePiece chain (`▁`→space, ByteFallback, Fuse, Strip)?
fn uses_byte_fallback(tokenizer: &Tokenizer) -> bool {
    tokenizer
        .get_decoder()
        .and_then(|d| serde_json::to_string(d).ok())
        .is_some_and(|json| json.contains("ByteFallback"))
}

fn byte_token(token: &str) -> Option<u8> {
    let hex = token.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() == 2 {
        u8::from_str_radix(hex, 16).ok()
    } else {
        None
    }
}

impl<'a> TextDecoder<'a> {
    pub fn new(tokenizer: &'a Tokenizer) -> Self {
        let special = tokenizer
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| id)
            .collect();
        Self {
            tokenizer,
            special,
            sentencepiece_bytes: uses_byte_fallback(tokenizer),
        }
    }

    /// Decode with special tokens skipped (`skip_special_tokens=True`), not stripped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        if !self.sentencepiece_bytes {
            return self
                .tokenizer
                .decode(ids, true)
                .map_err(|e| PipelineError::Invalid(format!("decoding failed: {e}")));
        }
        let mut bytes = Vec::new();
        for &id in ids.iter().filter(|id| !self.special.contains(id)) {
            let Some(token) = self.tokenizer.id_to_token(id) else {
                continue;
            };
            match byte_token(&token) {
                Some(b) => bytes.push(b),
                None => bytes.extend_from_slice(token.replace('\u{2581}', " ").as_bytes()),
            }
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        // SentencePiece drops the dummy-prefix space of the first piece.
        Ok(text.strip_prefix(' ').map(str::to_string).unwrap_or(text))
    }
}

/// Streams text as ids arrive: re-decodes the whole answer and emits what was
/// added, holding back a trailing U+FFFD that may be an unfinished UTF-8 sequence.
pub struct StreamDecoder<'a> {
    decoder: TextDecoder<'a>,
    ids: Vec<u32>,
    emitted: usize,
}

impl<'a> StreamDecoder<'a> {
    pub fn new(tokenizer: &'a Tokenizer) -> Self {
        Self {
            decoder: TextDecoder::new(tokenizer),
            ids: Vec::new(),
            emitted: 0,
        }
    }

    /// The new text after `id`, if any can be shown yet.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let text = self.decoder.decode(&self.ids)?;
        let stable = text.trim_end_matches('\u{FFFD}');
        Ok(self.take(stable))
    }

    /// Whatever is left at the end of generation.
    pub fn finish(&mut self) -> Result<Option<String>> {
        let text = self.decoder.decode(&self.ids)?;
        Ok(self.take(&text))
    }

    fn take(&mut self, text: &str) -> Option<String> {
        // Leading whitespace is stripped like the reference's `.strip()` of the answer.
        let text = text.trim_start();
        if text.len() <= self.emitted || !text.is_char_boundary(self.emitted) {
            return None;
        }
        let piece = text[self.emitted..].to_string();
        self.emitted = text.len();
        Some(piece)
    }
}
