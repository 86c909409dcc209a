//! The model families that are not VideoLLaMA 2 (Video-LLaMA, MiniGPT4-Video, …) plug into
//! the one [`crate::Pipeline`] through this trait: each says how its media become tensors,
//! how its encoders and reducers turn them into LLM embeddings, how its prompt is written
//! and split, and how its answer is cleaned. Everything else — the decoder, splicing,
//! generation, sessions, the encoder cache, the CLI and the server — is shared.
//!
//! ```text
//! MediaRequest ─prepare_media─► MediaInput ─encode_visual / encode_audio─► EncodedMedia
//! turns + EncodedMedia ─prompt_ids─► (prompt, ids with placeholders) ─► splice(media_blocks)
//! ─► context_start (cut) ─► generate (stop_sequences, repetition_penalty) ─► answer_text
//! ```

use crate::error::Result;
use crate::media::{MediaReport, MediaRequest};
use crate::model::{EncodedAudio, EncodedVisual};
use crate::{EncodedMedia, MediaInput};
use candle_core::{DType, Device, Tensor};

/// Named stage tensors for `--dump-tensors` (the family's golden names).
pub type StageTensors = Vec<(String, Tensor)>;

pub trait Family: Send + Sync {
    /// Short name for logs and `--json` (`video-llama`, `minigpt4-video`).
    fn name(&self) -> &'static str;
    fn has_vision(&self) -> bool;
    /// Most families are vision-only (their `prepare_media` refuses sound with the family's
    /// own words); the defaults here say so.
    fn has_audio(&self) -> bool {
        false
    }
    /// Decode and preprocess the request's files the way the family's reference does.
    fn prepare_media(&self, req: &MediaRequest) -> Result<(MediaInput, MediaReport)>;
    /// `pixels [T,3,S,S]` (an image: T = 1) → the LLM-width visual tokens.
    fn encode_visual(
        &self,
        pixels: &Tensor,
        is_image: bool,
        dtype: DType,
        device: &Device,
    ) -> Result<(EncodedVisual, StageTensors)>;
    /// The family's audio input → LLM-width audio tokens.
    fn encode_audio(
        &self,
        _audio: &Tensor,
        _dtype: DType,
        _device: &Device,
    ) -> Result<(EncodedAudio, StageTensors)> {
        Err(crate::error::PipelineError::Invalid(format!(
            "{} does not listen to sound",
            self.name()
        )))
    }
    /// The rendered prompt and its ids, one placeholder id per media block.
    fn prompt_ids(
        &self,
        tokenizer: &tokenizers::Tokenizer,
        turns: &[String],
        media: &EncodedMedia,
    ) -> Result<(String, Vec<i64>)>;
    /// The media blocks in placeholder order.
    fn media_blocks(&self, media: &EncodedMedia) -> Result<Vec<Tensor>>;
    /// The media blocks for this conversation: a family whose blocks depend on the question
    /// (MA-LMM's instruction-aware Q-Former) builds them here from what `encode_visual`
    /// kept; every other family's blocks are [`Family::media_blocks`].
    fn media_blocks_for(&self, _turns: &[String], media: &EncodedMedia) -> Result<Vec<Tensor>> {
        self.media_blocks(media)
    }
    /// True when [`Family::media_blocks_for`] depends on the turns: a chat session's cached
    /// keys/values of the media positions cannot be reused for the next question.
    fn media_depends_on_turns(&self) -> bool {
        false
    }
    /// The eos ids are banned for this many first new tokens (the reference's `min_length`).
    fn min_new_tokens(&self, _media: &EncodedMedia) -> usize {
        0
    }
    /// How many leading positions of a `prompt_len`-long input the reference drops
    /// before generating (its context cut); 0 keeps everything.
    fn context_start(
        &self,
        prompt_len: usize,
        max_new_tokens: usize,
        media: &EncodedMedia,
    ) -> usize;
    /// Multi-token stops besides the eos ids.
    fn stop_sequences(&self, media: &EncodedMedia) -> Vec<Vec<u32>>;
    /// The reference's repetition penalty for this kind of request (`None`: none).
    fn repetition_penalty(&self, media: &EncodedMedia) -> Option<f32>;
    /// The reference's answer text from the generated ids.
    fn answer_text(
        &self,
        tokenizer: &tokenizers::Tokenizer,
        ids: &[u32],
        media: &EncodedMedia,
    ) -> Result<String>;
    /// `input_ids` as the family's golden fixture stores them (placeholders expanded).
    fn dump_input_ids(&self, ids: &[i64], blocks: &[Tensor]) -> Result<Vec<i64>>;
    /// [`Family::dump_input_ids`] for a family that also needs the media (Chat-UniVi writes one
    /// placeholder per frame but splices one block for the run).
    fn dump_input_ids_for(
        &self,
        ids: &[i64],
        blocks: &[Tensor],
        _media: &EncodedMedia,
    ) -> Result<Vec<i64>> {
        self.dump_input_ids(ids, blocks)
    }
    /// M-RoPE positions of the spliced prompt (`ids` with one placeholder per block, the
    /// blocks, the media); `None` (every family but Qwen2-VL): 1-D positions.
    fn rope_positions(
        &self,
        _ids: &[i64],
        _blocks: &[Tensor],
        _media: &EncodedMedia,
    ) -> Result<Option<crate::generate::MropePositions>> {
        Ok(None)
    }
}

/// Each placeholder id replaced by `fill` once per row of its block.
pub fn expand_placeholders(ids: &[i64], blocks: &[Tensor], fill: i64) -> Result<Vec<i64>> {
    let mut out = Vec::new();
    let mut next = blocks.iter();
    for &id in ids {
        if crate::prompt::is_placeholder(id) {
            let n = next
                .next()
                .ok_or_else(|| {
                    crate::PipelineError::Invalid("more placeholders than media blocks".into())
                })?
                .dim(0)?;
            out.extend(std::iter::repeat_n(fill, n));
        } else {
            out.push(id);
        }
    }
    Ok(out)
}
