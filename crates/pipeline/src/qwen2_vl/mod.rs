//! Qwen2-VL (Hugging Face `transformers` `Qwen2VLForConditionalGeneration`) on the shared
//! engine.
//!
//! ```text
//! DIR/config.json (model_type qwen2_vl) + model-*.safetensors + tokenizer.json
//!   + preprocessor_config.json + chat_template.json
//! media ─media.rs─► frames [T', 3, H, W] ─patchify─► pixel_values [N, 1176], grid (t, h, w)
//!       ─visual (ViT + 2×2 merger, videollama_encoders::qwen2_vl_vision)─► [t·h/2·w/2, d]
//! turns ─chat_template (minijinja)─► "…<|vision_start|><|video_pad|><|vision_end|>question…"
//!       ─tokenize─► the one pad id → placeholder ─splice─► inputs_embeds [L, d]
//!       ─M-RoPE ids [3, L] + rope_delta (mrope_positions)─► Qwen2 decoder (rope_scaling
//!        mrope_section) ─► greedy / sampled decode at position cache_len + delta
//! ```
//!
//! The prompt holds one `<|image_pad|>` / `<|video_pad|>`; the processor's expansion to
//! `t·h·w / merge²` copies is the splice of the merger output at that placeholder (and the
//! dumped `input_ids` write the copies out, as the fixture stores them). Decoding follows
//! `generation_config.json` (greedy here; its `repetition_penalty` applies unless overridden).

pub mod config;
pub mod inspect;
pub mod media;

pub use config::{config_path, Qwen2VlConfig};

use crate::checkpoint::Checkpoint;
use crate::error::{PipelineError, Result};
use crate::family::{Family, StageTensors};
use crate::generate::MropePositions;
use crate::model::EncodedVisual;
use crate::prompt::{is_placeholder, Modality};
use crate::EncodedMedia;
use candle_core::{DType, Device, Tensor};
use std::path::{Path, PathBuf};
use std::time::Instant;
use videollama_encoders::Qwen2VlVision;
use videollama_media::qwen2_vl::{patchify, Qwen2VlProcessorConfig};
use videollama_nn::with_load_scope;

/// Everything Qwen2-VL adds around the language model.
pub struct Qwen2VlParts {
    pub dir: PathBuf,
    pub config: Qwen2VlConfig,
    pub processor: Qwen2VlProcessorConfig,
    pub vision: Qwen2VlVision,
    template: minijinja::Environment<'static>,
    pub image_pad: u32,
    pub video_pad: u32,
}

/// M-RoPE ids of a spliced prompt (`get_rope_index`, spec §7.E): `ids` with one placeholder
/// per visual block, `grids` the LLM grid `(t, h / merge, w / merge)` of each block in order.
/// Text runs count up from the previous maximum + 1 on all three axes; a block of
/// `(t, h, w)` starting at `s` gets `(s + ti, s + hi, s + wi)` in t-, h-, w-major order.
/// `delta` = max + 1 − length.
pub fn mrope_positions(ids: &[i64], grids: &[[usize; 3]]) -> Result<MropePositions> {
    let mut rows: [Vec<i64>; 3] = Default::default();
    let mut next: i64 = 0;
    let mut blocks = grids.iter();
    for &id in ids {
        if is_placeholder(id) {
            let &[t, h, w] = blocks.next().ok_or_else(|| {
                PipelineError::Invalid("more visual placeholders than visual blocks".into())
            })?;
            for ti in 0..t {
                for hi in 0..h {
                    for wi in 0..w {
                        rows[0].push(next + ti as i64);
                        rows[1].push(next + hi as i64);
                        rows[2].push(next + wi as i64);
                    }
                }
            }
            next += t.max(h).max(w) as i64;
        } else {
            for r in rows.iter_mut() {
                r.push(next);
            }
            next += 1;
        }
    }
    if blocks.next().is_some() {
        return Err(PipelineError::Invalid(
            "more visual blocks than placeholders in the prompt".into(),
        ));
    }
    let len = rows[0].len() as i64;
    Ok(MropePositions {
        prefill: rows,
        delta: next - len,
    })
}

impl Qwen2VlParts {
    fn merge(&self) -> usize {
        self.config.vision_config.spatial_merge_size
    }

    /// The patch grid `(t, h, w)` of the request's visual input: from the frames' shape, or
    /// for an encoder-cache entry (pixels dropped) from the tag `prepare` wrote.
    pub fn grid_of(&self, media: &EncodedMedia) -> Result<Option<[usize; 3]>> {
        let Some(v) = &media.visual else {
            return Ok(None);
        };
        if let [t, _, h, w] = v.pixel_values.dims() {
            let tp = self.processor.temporal_patch_size;
            let p = self.processor.patch_size;
            return Ok(Some([t.div_ceil(tp), h / p, w / p]));
        }
        media.patch_grid.map(Some).ok_or_else(|| {
            PipelineError::Invalid(
                "the visual input's patch grid is unknown (no frames and no recorded grid)".into(),
            )
        })
    }

    /// `frames [T', 3, H, W]` (T' padded to the temporal patch here if needed) → patch rows,
    /// ViT, merger, with the fixture's stage names.
    pub fn encode(
        &self,
        frames: &Tensor,
        is_image: bool,
        dtype: DType,
        device: &Device,
    ) -> Result<(EncodedVisual, StageTensors)> {
        let (t, c, h, w) = frames.dims4().map_err(|_| {
            PipelineError::Invalid(format!(
                "Qwen2-VL frames must be T×3×H×W, got {:?}",
                frames.dims()
            ))
        })?;
        let tp = self.processor.temporal_patch_size;
        if t == 0 || c != 3 {
            return Err(PipelineError::Invalid(format!(
                "Qwen2-VL frames must be T×3×H×W with T > 0, got {:?}",
                frames.dims()
            )));
        }
        if is_image && t > tp {
            return Err(PipelineError::Invalid(format!(
                "an image has at most {tp} temporal copies, got {t} frames"
            )));
        }
        let mut frames = frames.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
        if t % tp != 0 {
            let last = frames.narrow(0, t - 1, 1)?;
            let pad = last.repeat((tp - t % tp, 1, 1, 1))?;
            frames = Tensor::cat(&[&frames, &pad], 0)?;
        }
        let t = frames.dim(0)?;
        let data = frames.flatten_all()?.to_vec1::<f32>()?;
        let patches = patchify(
            &data,
            [t, c, h, w],
            tp,
            self.processor.patch_size,
            self.merge(),
        )
        .map_err(|e| PipelineError::Invalid(e.to_string()))?;
        let grid = patches.grid_thw;
        let pixel_values =
            Tensor::from_vec(patches.data, (patches.rows, patches.cols), &Device::Cpu)?;
        let start = Instant::now();
        let out = self
            .vision
            .forward(&pixel_values.to_device(device)?.to_dtype(dtype)?, grid)?;
        let tower_seconds = start.elapsed().as_secs_f64();
        let grid_t = Tensor::new(&[grid.map(|g| g as i64)], &Device::Cpu)?;
        let (px_name, grid_name) = if is_image {
            ("pixel_values", "image_grid_thw")
        } else {
            ("pixel_values_videos", "video_grid_thw")
        };
        let named: StageTensors = vec![
            (px_name.into(), pixel_values),
            (grid_name.into(), grid_t),
            ("patch_embed_out".into(), out.patch_embed_out),
            ("vit_out_before_merger".into(), out.before_merger.clone()),
            ("vision_features".into(), out.merged.clone()),
        ];
        Ok((
            EncodedVisual {
                pixel_values: frames,
                vision_features: out.before_merger,
                connector_out: out.merged,
                tower_seconds,
                connector_seconds: 0.0,
            },
            named,
        ))
    }

    /// The chat template over `turns` (user, assistant, …, user); the first user turn
    /// carries the visual entry before its text, as `{"type": "video"}, {"type": "text"}`.
    pub fn render_prompt(&self, turns: &[String], modality: Modality) -> Result<String> {
        let visual = match modality {
            Modality::Image => Some("image"),
            Modality::Video => Some("video"),
            Modality::Text => None,
            Modality::Audio => {
                return Err(PipelineError::Invalid(
                    "Qwen2-VL answers about images, videos or text".into(),
                ))
            }
        };
        let messages: Vec<serde_json::Value> = turns
            .iter()
            .enumerate()
            .map(|(i, turn)| {
                if i % 2 == 1 {
                    return serde_json::json!({"role": "assistant", "content": turn});
                }
                let mut content = Vec::new();
                if i == 0 {
                    if let Some(kind) = visual {
                        content.push(serde_json::json!({ "type": kind }));
                    }
                }
                content.push(serde_json::json!({"type": "text", "text": turn}));
                serde_json::json!({"role": "user", "content": content})
            })
            .collect();
        let tmpl = self
            .template
            .get_template("chat")
            .map_err(|e| PipelineError::Invalid(e.to_string()))?;
        tmpl.render(minijinja::context! {
            messages => minijinja::Value::from(minijinja::value::Serde(&messages)),
            add_generation_prompt => true,
        })
        .map_err(|e| PipelineError::Invalid(format!("rendering the chat template failed: {e}")))
    }
}

impl Family for Qwen2VlParts {
    fn name(&self) -> &'static str {
        "qwen2-vl"
    }
    fn has_vision(&self) -> bool {
        true
    }
    fn prepare_media(
        &self,
        req: &crate::media::MediaRequest,
    ) -> Result<(crate::MediaInput, crate::media::MediaReport)> {
        media::prepare(self, req)
    }
    fn encode_visual(
        &self,
        pixels: &Tensor,
        is_image: bool,
        dtype: DType,
        device: &Device,
    ) -> Result<(EncodedVisual, StageTensors)> {
        self.encode(pixels, is_image, dtype, device)
    }
    fn prompt_ids(
        &self,
        tokenizer: &tokenizers::Tokenizer,
        turns: &[String],
        media: &EncodedMedia,
    ) -> Result<(String, Vec<i64>)> {
        let prompt = self.render_prompt(turns, media.modality)?;
        let enc = tokenizer
            .encode(prompt.as_str(), false)
            .map_err(|e| PipelineError::Invalid(format!("tokenizer failed: {e}")))?;
        let pad = match media.modality {
            Modality::Image => Some((self.image_pad, Modality::Image)),
            Modality::Video => Some((self.video_pad, Modality::Video)),
            _ => None,
        };
        let mut ids: Vec<i64> = Vec::with_capacity(enc.get_ids().len());
        let mut pads = 0;
        for &id in enc.get_ids() {
            if id == self.image_pad || id == self.video_pad {
                match pad {
                    Some((want, modality)) if want == id => {
                        ids.push(modality.placeholder_id().unwrap_or(-200));
                        pads += 1;
                    }
                    _ => {
                        return Err(PipelineError::Invalid(
                            "the prompt text holds an <|image_pad|> / <|video_pad|> token \
                             without the matching media"
                                .into(),
                        ))
                    }
                }
            } else {
                ids.push(id as i64);
            }
        }
        if pad.is_some() && pads != 1 {
            return Err(PipelineError::Invalid(format!(
                "the prompt holds {pads} visual pad tokens for one visual input"
            )));
        }
        Ok((prompt, ids))
    }
    fn media_blocks(&self, media: &EncodedMedia) -> Result<Vec<Tensor>> {
        Ok(media
            .visual
            .as_ref()
            .map(|v| v.connector_out.clone())
            .into_iter()
            .collect())
    }
    fn context_start(&self, _: usize, _: usize, _: &EncodedMedia) -> usize {
        0
    }
    fn stop_sequences(&self, _: &EncodedMedia) -> Vec<Vec<u32>> {
        Vec::new()
    }
    fn repetition_penalty(&self, _: &EncodedMedia) -> Option<f32> {
        None
    }
    fn answer_text(
        &self,
        tokenizer: &tokenizers::Tokenizer,
        ids: &[u32],
        _: &EncodedMedia,
    ) -> Result<String> {
        // `processor.batch_decode(..., skip_special_tokens=True)`, untrimmed.
        tokenizer
            .decode(ids, true)
            .map_err(|e| PipelineError::Invalid(format!("decoding the answer: {e}")))
    }
    fn dump_input_ids(&self, ids: &[i64], blocks: &[Tensor]) -> Result<Vec<i64>> {
        let mut out = Vec::new();
        let mut next = blocks.iter();
        for &id in ids {
            if is_placeholder(id) {
                let fill = if id == Modality::Image.placeholder_id().unwrap_or(-200) {
                    self.image_pad
                } else {
                    self.video_pad
                };
                let n = next
                    .next()
                    .ok_or_else(|| {
                        PipelineError::Invalid("more placeholders than media blocks".into())
                    })?
                    .dim(0)?;
                out.extend(std::iter::repeat_n(fill as i64, n));
            } else {
                out.push(id);
            }
        }
        Ok(out)
    }
    fn rope_positions(
        &self,
        ids: &[i64],
        blocks: &[Tensor],
        media: &EncodedMedia,
    ) -> Result<Option<MropePositions>> {
        let m = self.merge();
        let grids: Vec<[usize; 3]> = match self.grid_of(media)? {
            Some([t, h, w]) => vec![[t, h / m, w / m]],
            None => Vec::new(),
        };
        for (g, b) in grids.iter().zip(blocks) {
            let n = b.dim(0)?;
            if g.iter().product::<usize>() != n {
                return Err(PipelineError::Invalid(format!(
                    "the visual block has {n} rows for an LLM grid {g:?}"
                )));
            }
        }
        mrope_positions(ids, &grids).map(Some)
    }
}

fn candle_ctx(path: &Path, what: &str, e: candle_core::Error) -> PipelineError {
    let text = e.to_string();
    PipelineError::file(
        path,
        format!("{what}: {}", text.lines().next().unwrap_or("")),
    )
}

/// The chat template: `chat_template.json`, else `tokenizer_config.json`'s `chat_template`.
fn load_template(dir: &Path) -> Result<minijinja::Environment<'static>> {
    let mut text = None;
    for name in ["chat_template.json", "tokenizer_config.json"] {
        let path = dir.join(name);
        if path.is_file() {
            if let Some(t) = crate::error::read_json(&path)?
                .get("chat_template")
                .and_then(|v| v.as_str())
            {
                text = Some(t.to_string());
                break;
            }
        }
    }
    let text = text.ok_or_else(|| {
        PipelineError::file(
            dir.join("chat_template.json"),
            "no chat_template (chat_template.json or tokenizer_config.json)",
        )
    })?;
    let mut env = minijinja::Environment::new();
    let syntax = minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build()
        .map_err(|e| PipelineError::Invalid(format!("chat template syntax: {e}")))?;
    env.set_syntax(syntax);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_template_owned("chat", text)
        .map_err(|e| PipelineError::Invalid(format!("chat template does not parse: {e}")))?;
    Ok(env)
}

/// What [`crate::Pipeline::load`] needs from a Qwen2-VL folder.
pub struct Loaded {
    pub parts: Qwen2VlParts,
    pub model: crate::model::VideoLlama2,
    pub tokenizer: tokenizers::Tokenizer,
    pub generation_config: videollama_llm::GenerationConfig,
}

/// Load Qwen2-VL from the folder of its `config.json`.
pub fn load(dir: &Path, opts: &crate::LoadOptions) -> Result<Loaded> {
    let config_path = dir.join("config.json");
    let config = Qwen2VlConfig::from_file(&config_path)?;
    let raw = crate::error::read_json(&config_path)?;
    let mut llm_cfg: videollama_llm::DecoderConfig = serde_json::from_value(raw.clone())
        .map_err(|e| PipelineError::file(&config_path, format!("language model config: {e}")))?;
    // Qwen2's q/k/v projections always carry a bias (not a config field).
    llm_cfg.attention_bias = true;
    if llm_cfg.mrope_section.is_none() {
        return Err(PipelineError::file(
            &config_path,
            "no rope_scaling.mrope_section (Qwen2-VL's M-RoPE split, e.g. [16, 24, 24])",
        ));
    }
    let pre_path = dir.join("preprocessor_config.json");
    let processor = if pre_path.is_file() {
        Qwen2VlProcessorConfig::from_file(&pre_path)
            .map_err(|e| PipelineError::file(&pre_path, e))?
    } else {
        Qwen2VlProcessorConfig::default()
    };
    let vc = &config.vision_config;
    if processor.patch_size != vc.patch_size
        || processor.temporal_patch_size != vc.temporal_patch_size
        || processor.merge_size != vc.spatial_merge_size
    {
        return Err(PipelineError::file(
            &pre_path,
            format!(
                "patch {} / temporal {} / merge {} differ from config.json's vision_config \
                 ({} / {} / {})",
                processor.patch_size,
                processor.temporal_patch_size,
                processor.merge_size,
                vc.patch_size,
                vc.temporal_patch_size,
                vc.spatial_merge_size
            ),
        ));
    }
    let tok_path = dir.join("tokenizer.json");
    let tokenizer = tokenizers::Tokenizer::from_file(&tok_path)
        .map_err(|e| PipelineError::file(&tok_path, e))?;
    let resolve = |s: &str, cfg_id: Option<u32>| -> Result<u32> {
        let id = tokenizer
            .token_to_id(s)
            .ok_or_else(|| PipelineError::file(&tok_path, format!("no {s} token")))?;
        if let Some(c) = cfg_id {
            if c != id {
                return Err(PipelineError::file(
                    &config_path,
                    format!("{s} is {id} in the tokenizer but {c} in config.json"),
                ));
            }
        }
        Ok(id)
    };
    let image_pad = resolve("<|image_pad|>", config.image_token_id)?;
    let video_pad = resolve("<|video_pad|>", config.video_token_id)?;
    resolve("<|vision_start|>", config.vision_start_token_id)?;
    let template = load_template(dir)?;
    let gen_path = dir.join("generation_config.json");
    let generation_config: videollama_llm::GenerationConfig = if gen_path.is_file() {
        serde_json::from_value(crate::error::read_json(&gen_path)?).map_err(|e| {
            PipelineError::Json {
                path: gen_path.clone(),
                cause: e.to_string(),
            }
        })?
    } else {
        serde_json::from_value(serde_json::json!({
            "bos_token_id": raw.get("bos_token_id"),
            "eos_token_id": raw.get("eos_token_id"),
        }))
        .unwrap_or_default()
    };
    let ckpt = Checkpoint::open(dir, opts.dtype, &opts.device)?;
    let vb = ckpt.var_builder();
    let llm = with_load_scope(opts.weights.llm_scope(), || {
        videollama_llm::DecoderLm::new(&llm_cfg, vb.clone())
    })
    .map_err(|e| candle_ctx(dir, "language model", e))?;
    let vision = with_load_scope(opts.weights.vision_scope(), || {
        Qwen2VlVision::new(vc, vb.pp("visual"))
    })
    .map_err(|e| candle_ctx(dir, "vision transformer (visual.*)", e))?;
    let unused = ckpt.finish()?;
    tracing::debug!(unused = unused.len(), "Qwen2-VL weights loaded");
    let model = crate::model::VideoLlama2::language_model_only(
        crate::model::LanguageModelOnly {
            model_type: "qwen2_vl",
            llm_cfg,
            family: crate::config::LlmFamily::Qwen2,
            vision_tower: None,
            num_frames: videollama_media::qwen2_vl::FPS_MAX_FRAMES,
            raw,
            unused_tensors: unused,
        },
        llm,
        opts,
    )?;
    Ok(Loaded {
        parts: Qwen2VlParts {
            dir: dir.to_path_buf(),
            config,
            processor,
            vision,
            template,
            image_pad,
            video_pad,
        },
        model,
        tokenizer,
        generation_config,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spec §7.E on a small layout, computed by hand.
    #[test]
    fn mrope_positions_follow_get_rope_index() {
        // 3 text tokens, a (2, 2, 3) block, 2 text tokens.
        let ids = [1, 2, 3, -201, 4, 5];
        let p = mrope_positions(&ids, &[[2, 2, 3]]).unwrap();
        let t: Vec<i64> = vec![0, 1, 2, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4, 4, 4, 6, 7];
        let h: Vec<i64> = vec![0, 1, 2, 3, 3, 3, 4, 4, 4, 3, 3, 3, 4, 4, 4, 6, 7];
        let w: Vec<i64> = vec![0, 1, 2, 3, 4, 5, 3, 4, 5, 3, 4, 5, 3, 4, 5, 6, 7];
        assert_eq!(p.prefill, [t, h, w]);
        // max + 1 = 8, length 17.
        assert_eq!(p.delta, 8 - 17);
        assert!(mrope_positions(&ids, &[]).is_err());
        assert!(mrope_positions(&[1, 2], &[[1, 1, 1]]).is_err());
        let text = mrope_positions(&[7, 8, 9], &[]).unwrap();
        assert_eq!(text.prefill[0], vec![0, 1, 2]);
        assert_eq!(text.delta, 0);
    }
}
