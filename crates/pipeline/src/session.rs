//! Chat sessions: the KV cache of earlier turns is reused for the next turn.
//!
//! ```text
//! turn k: turns ─► build_prompt (whole conversation, as for a fresh answer) ─► ids
//!         ids ─► units (text ids; the media block = one unit of media_tokens positions)
//!         longest common prefix with the units the cache holds ─► truncate the cache there
//!         ─► prefill only the rest ─► decode ─► the cache holds prompt + answer[..n−1]
//! ```
//!
//! Nothing about the template is assumed: the previous answer is re-rendered by the chat
//! template and re-tokenized, and only the ids that come out equal to what the cache holds
//! are reused (the last generated id — an eos, say — was sampled but never fed, and a
//! re-tokenized answer may split differently from the generated ids). The answer is the one
//! a fresh full prefill gives, up to float rounding in the reused keys/values.

use crate::error::{PipelineError, Result};
use crate::generate::{self, GenerateOptions, Generation};
use crate::prompt::is_placeholder;
use crate::{AnswerOptions, EncodedMedia, Pipeline};
use candle_core::Tensor;
use std::sync::Arc;
use videollama_llm::{DecoderLm, KvCache};

/// One entry of the sequence a session's KV cache holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// A text token (one position).
    Text(u32),
    /// The media block (video then audio tokens), `EncodedMedia::media_tokens()` positions.
    Media,
}

/// A multi-turn conversation about one encoded media (or none): the media, and the KV
/// cache of what was already run through the language model.
pub struct ChatSession {
    media: Arc<EncodedMedia>,
    state: SessionState,
}

impl ChatSession {
    pub fn new(media: Arc<EncodedMedia>) -> Self {
        Self {
            media,
            state: SessionState::default(),
        }
    }

    /// A session with no media (text-only chat).
    pub fn text_only() -> Self {
        Self::new(Arc::new(EncodedMedia::text_only()))
    }

    pub fn media(&self) -> &Arc<EncodedMedia> {
        &self.media
    }

    /// Forget the conversation (`/reset`); the media and the cache's buffers stay.
    pub fn reset(&mut self) {
        self.state.reset();
    }

    /// The sequence the KV cache holds.
    pub fn units(&self) -> &[Unit] {
        &self.state.units
    }

    /// Positions the KV cache holds.
    pub fn cached_positions(&self) -> usize {
        self.state.cache.as_ref().map_or(0, KvCache::len)
    }
}

/// The KV cache and the units it holds.
#[derive(Default)]
pub(crate) struct SessionState {
    cache: Option<KvCache>,
    units: Vec<Unit>,
    /// The model the cache was filled by (`Pipeline::model_identity`).
    model: String,
}

/// `input_ids` (with a placeholder id for the media block) as units.
pub fn units_of(input_ids: &[i64]) -> Result<Vec<Unit>> {
    input_ids
        .iter()
        .map(|&id| {
            if is_placeholder(id) {
                Ok(Unit::Media)
            } else {
                u32::try_from(id).map(Unit::Text).map_err(|_| {
                    PipelineError::Invalid(format!("token id {id} is not a vocabulary id"))
                })
            }
        })
        .collect()
}

/// Positions `units` take in the LLM sequence.
pub fn positions(units: &[Unit], media_tokens: usize) -> usize {
    units
        .iter()
        .map(|u| match u {
            Unit::Text(_) => 1,
            Unit::Media => media_tokens,
        })
        .sum()
}

impl SessionState {
    fn reset(&mut self) {
        self.units.clear();
        if let Some(c) = self.cache.as_mut() {
            c.reset();
        }
    }

    /// Generate for the whole prompt `input_ids` / `inputs_embeds` (`[S, H]`, spliced),
    /// prefilling only what the cache does not already hold.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn generate(
        &mut self,
        llm: &DecoderLm,
        model: &str,
        input_ids: &[i64],
        media_tokens: usize,
        inputs_embeds: &Tensor,
        opts: &GenerateOptions,
        on_token: impl FnMut(u32) -> bool,
    ) -> Result<Generation> {
        let units = units_of(input_ids)?;
        let total = inputs_embeds.dim(0)?;
        if units.is_empty() || positions(&units, media_tokens) != total {
            return Err(PipelineError::Invalid(format!(
                "the prompt's ids ({} positions) do not match its embeddings ({total} rows)",
                positions(&units, media_tokens)
            )));
        }
        if self.model != model {
            // Filled by another model (or never): start afresh.
            self.cache = None;
            self.units.clear();
            self.model = model.to_string();
        }
        let cache = self.cache.get_or_insert_with(|| llm.new_cache());
        if positions(&self.units, media_tokens) != cache.len() {
            // Cannot happen unless an earlier turn failed half-way; never guess.
            self.units.clear();
            cache.reset();
        }
        let mut common = self
            .units
            .iter()
            .zip(&units)
            .take_while(|(a, b)| a == b)
            .count();
        // At least one unit must be run to get the next token's logits.
        if common == units.len() {
            common -= 1;
        }
        let reused = positions(&units[..common], media_tokens);
        cache.truncate(reused);
        self.units.truncate(common);
        let rest = inputs_embeds.narrow(0, reused, total - reused)?;
        match generate::generate_in_cache(llm, cache, &rest, opts, on_token) {
            Ok(mut generation) => {
                let fed = generation.token_ids.len().saturating_sub(1);
                self.units = units;
                self.units
                    .extend(generation.token_ids[..fed].iter().map(|&id| Unit::Text(id)));
                if positions(&self.units, media_tokens) != cache.len() {
                    self.reset();
                }
                generation.reused_prompt_tokens = reused;
                Ok(generation)
            }
            Err(e) => {
                self.reset();
                Err(e)
            }
        }
    }
}

impl Pipeline {
    /// [`Pipeline::answer`] within a chat session: `turns` is the whole conversation
    /// (user, assistant, …, user) about the session's media, rendered and tokenized as for
    /// a fresh answer; the KV cache of the longest common prefix with the previous turn is
    /// reused, and `Answer::reused_prompt_tokens` says how many positions were.
    pub fn answer_in_session(
        &self,
        session: &mut ChatSession,
        turns: &[String],
        opts: &AnswerOptions,
        on_text: impl FnMut(&str) -> bool,
    ) -> Result<crate::Answer> {
        let media = session.media.clone();
        self.answer_inner(turns, &media, opts, on_text, Some(&mut session.state))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_positions() {
        let u = units_of(&[1, 2, -201, 3]).unwrap();
        assert_eq!(
            u,
            vec![Unit::Text(1), Unit::Text(2), Unit::Media, Unit::Text(3)]
        );
        assert_eq!(positions(&u, 10), 13);
        assert_eq!(positions(&u[..2], 10), 2);
        assert!(units_of(&[-5]).is_err());
    }

    /// When the next prompt repeats the generated ids (a template that re-renders the answer
    /// token for token), they are reused too — all but the last, which was never fed — and
    /// the result equals a fresh prefill of the whole sequence.
    #[test]
    fn generated_ids_are_reused_when_the_next_prompt_repeats_them() {
        use crate::{LoadOptions, MediaInput};
        use videollama_testutil::{assert_close, golden, load_tensors};
        let fixture = "videollama2.1-qwen2-tiny";
        let p = Pipeline::load(
            &golden(&format!("{fixture}/checkpoint")),
            &LoadOptions::default(),
        )
        .unwrap();
        let expected = load_tensors(&format!("{fixture}/video/expected.safetensors"));
        let media = p
            .encode_media(&MediaInput::video(expected["pixel_values"].clone()))
            .unwrap();
        let n_media = media.media_tokens();
        let block = media.block().unwrap().unwrap();
        let embed = |ids: &[i64]| p.model.splice(ids, std::slice::from_ref(&block)).unwrap();
        let (_, prompt1) = p
            .build_prompt(&["What is in the video?".into()], media.modality)
            .unwrap();
        let opts = GenerateOptions {
            stop_sequences: Vec::new(),
            max_new_tokens: 5,
            sampling: Default::default(),
            eos_ids: Vec::new(),
            record_logits: true,
            min_new_tokens: 0,
        };
        let llm = &p.model.llm;
        let mut st = SessionState::default();
        let g1 = st
            .generate(llm, "m", &prompt1, n_media, &embed(&prompt1), &opts, |_| {
                true
            })
            .unwrap();
        assert_eq!(g1.reused_prompt_tokens, 0);
        assert_eq!(g1.token_ids.len(), 5);
        let mut prompt2 = prompt1.clone();
        prompt2.extend(g1.token_ids.iter().map(|&i| i as i64));
        prompt2.extend([13i64, 42, 7]);
        let emb2 = embed(&prompt2);
        let g2 = st
            .generate(llm, "m", &prompt2, n_media, &emb2, &opts, |_| true)
            .unwrap();
        let len1 = emb2.dim(0).unwrap() - 3 - 5;
        assert_eq!(g2.reused_prompt_tokens, len1 + 4);
        let fresh = generate::generate(llm, &emb2, &opts, |_| true).unwrap();
        assert_eq!(g2.token_ids, fresh.token_ids);
        assert_close(
            "logits_steps",
            g2.logits_steps.as_ref().unwrap(),
            fresh.logits_steps.as_ref().unwrap(),
        );
        // Another model identity: nothing is reused.
        let g3 = st
            .generate(llm, "other", &prompt2, n_media, &emb2, &opts, |_| true)
            .unwrap();
        assert_eq!(g3.reused_prompt_tokens, 0);
        assert_eq!(g3.token_ids, fresh.token_ids);
        // Ids that do not match the embeddings are an error, not a panic.
        assert!(st
            .generate(llm, "other", &prompt1, n_media, &emb2, &opts, |_| true)
            .is_err());
    }
}
