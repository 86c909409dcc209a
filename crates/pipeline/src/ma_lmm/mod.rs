//! MA-LMM (boheumd/MA-LMM, CVPR 2024; `Blip2VicunaInstruct_MALMM.generate`) on the shared pieces.
//!
//! ```text
//! model_config.yaml ─► eva_vit_g (visual_encoder.), finetuned LAVIS ckpt (query_tokens,
//!                      ln_vision, image_pe, Qformer.bert.*, llm_proj), llm_model folder
//!                      (llm_model.; + the `[PAD]` row appended by resize_token_embeddings)
//! question ─blip_question─► "Question: {q} Short answer:" ─► BERT ids (Q-Former, left-truncated)
//!                                                        └─► </s> + LLaMA ids (LLM)
//! for each frame t (streamed, one at a time):
//!   x_t [3,S,S] ─► EVA ViT ─► ln_vision ─► + image_pe[t]   e_t [N, W]   (N = 1 + (S/p)²)
//!   visual bank: compress (if > L entries) ─► push e_t      [n ≤ L+1, N, W]
//!   Q-Former(queries + instruction, cross-attn over bank flattened [1, n·N, W],
//!            per-layer query banks as K/V prefix)          last_hidden_state [1, Q+Lt, H]
//! after the last frame: llm_proj(last_hidden_state[:Q]) [Q, d] ++ embed(ids) ─► greedy decode
//! ```
//!
//! The reference compresses the visual bank after frame t unless t is the last frame; here the
//! compression is deferred to the start of the next frame, which is the same computation and
//! lets frames stream in without knowing T. Memory is bounded by L + 1 bank entries per bank;
//! the only cap on the length is `image_pe` (`max_num_frames` rows, 120 as published).
//!
//! A frame is two halves: [`MaLmm::frame_entry`] (question-free: ViT, `ln_vision`,
//! `image_pe`) and [`MaLmm::push_entry`] (banks + Q-Former with the instruction);
//! [`MaLmm::push_frame`] runs both. `family.rs` hosts MA-LMM in `Pipeline` with that split.

pub mod config;
pub mod family;
pub mod inspect;
pub mod media;

pub use config::{MaLmmConfig, ModelConfigFile, ARCH, MODEL_CONFIG};

use crate::checkpoint::{Checkpoint, WeightSource};
use crate::error::{PipelineError, Result};
use crate::video_llama::SlowLlamaText;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use std::path::{Path, PathBuf};
use videollama_connectors::memory_bank_qformer::{
    FrameTrace, MemoryBank, MemoryBankQFormer, QueryBanks,
};
use videollama_connectors::qformer::QFormerConfig;
use videollama_encoders::eva_vit::{EvaVit, EvaVitConfig, LnVision};
use videollama_nn::{linear, Linear};

/// `create_eva_vit_g` builds 39 blocks; published EVA ViT-g width / heads.
const EVA_G_DEPTH: usize = 39;
const EVA_G: (usize, usize) = (1408, 16);
/// The reference's eos (`</s>`), also its bos override.
pub const EOS_ID: u32 = 2;
/// File beside the YAML holding the `[PAD]` rows a reference run used (golden fixtures).
pub const PAD_ROW_FILE: &str = "llm_added_pad_row.safetensors";

fn err(cfg: &ModelConfigFile, what: &str, e: impl std::fmt::Display) -> PipelineError {
    let text = e.to_string();
    PipelineError::file(
        &cfg.path,
        format!("{what}: {}", text.lines().next().unwrap_or("")),
    )
}

/// `BlipQuestionProcessor.pre_question`: lower-case, delete `.!"()*#:;~`, strip trailing
/// spaces, keep at most `max_words` space-separated words (50 in the reference).
pub fn clean_question(question: &str, max_words: usize) -> String {
    let lowered = question.to_lowercase();
    let kept: String = lowered
        .chars()
        .filter(|c| !matches!(c, '.' | '!' | '"' | '(' | ')' | '*' | '#' | ':' | ';' | '~'))
        .collect();
    let trimmed = kept.trim_end_matches(' ');
    let words: Vec<&str> = trimmed.split(' ').collect();
    if words.len() > max_words {
        words[..max_words].join(" ")
    } else {
        trimmed.to_string()
    }
}

/// The QA template applied to the cleaned question (`"Question: {} Short answer:"`).
pub fn render_prompt(template: &str, cleaned: &str) -> String {
    template.replacen("{}", cleaned, 1)
}

/// The LLM's embedding and `lm_head` tables with the `[PAD]` row appended
/// (`llm_tokenizer.add_special_tokens({'pad_token': '[PAD]'})` + `resize_token_embeddings`).
struct PadRowBackend {
    inner: VarBuilder<'static>,
    /// `(model.embed_tokens.weight row, lm_head.weight row)`, each `[d]`.
    rows: (Tensor, Tensor),
}

impl PadRowBackend {
    fn extended(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let base = self.inner.get_unchecked(name)?;
        let row = match name {
            "model.embed_tokens.weight" => Some(&self.rows.0),
            "lm_head.weight" => Some(&self.rows.1),
            _ => None,
        };
        let t = match row {
            Some(r) => Tensor::cat(&[&base, &r.to_dtype(base.dtype())?.unsqueeze(0)?], 0)?,
            None => base,
        };
        t.to_dtype(dtype)?.to_device(dev)
    }
}

impl SimpleBackend for PadRowBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.extended(name, dtype, dev)?;
        if t.shape() != &s {
            candle_core::bail!(
                "llm_model.{name}: expected shape {s:?}, the weights hold {:?}",
                t.shape()
            );
        }
        Ok(t)
    }
    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.extended(name, dtype, dev)
    }
    fn contains_tensor(&self, name: &str) -> bool {
        self.inner.contains_tensor(name)
    }
}

/// The loaded MA-LMM.
pub struct MaLmm {
    pub config: ModelConfigFile,
    pub vit: EvaVit,
    pub ln_vision: LnVision,
    /// `image_pe.weight [max_num_frames, W]`.
    pub image_pe: Tensor,
    pub qformer: MemoryBankQFormer,
    pub llm_proj: Linear,
    pub llm: videollama_llm::DecoderLm,
    /// WordPiece tokenizer of the Q-Former (lower-case BERT).
    pub bert_tokenizer: tokenizers::Tokenizer,
    pub bert_cls_sep: (u32, u32),
    pub llm_tokenizer: tokenizers::Tokenizer,
    pub slow_text: Option<SlowLlamaText>,
    /// Where the `[PAD]` row came from (`PAD_ROW_FILE` or zeros).
    pub pad_row_source: String,
    pub device: Device,
    pub dtype: DType,
}

/// One frame's intermediate values (for `--dump-tensors` and golden tests).
#[derive(Debug, Clone)]
pub struct FrameRecord {
    /// `ln_vision(ViT(x_t))` `[N, W]`, before `image_pe`.
    pub vision_features: Tensor,
    /// The visual bank the cross-attention read `[n, N, W]` and its counts `[n, N]`.
    pub visual_bank: Tensor,
    pub visual_bank_sizes: Tensor,
    /// `last_hidden_state` `[Q + Lt, H]`.
    pub last_hidden_state: Tensor,
    pub qformer_trace: FrameTrace,
}

/// The per-video state of a streamed run: feed frames with [`MaLmm::push_frame`], then
/// [`MaLmm::finish`]. Holds at most L + 1 visual entries and L entries per query bank.
pub struct VideoStream {
    pub prompt: String,
    pub qformer_ids: Vec<u32>,
    visual: MemoryBank,
    query: QueryBanks,
    frames: usize,
    last_hidden: Option<Tensor>,
    /// Keep every frame's [`FrameRecord`] (tests / dumps); off for plain streaming.
    pub record: bool,
    pub records: Vec<FrameRecord>,
}

impl VideoStream {
    pub fn frames_seen(&self) -> usize {
        self.frames
    }
    pub fn visual_bank(&self) -> &MemoryBank {
        &self.visual
    }
    pub fn query_banks(&self) -> &QueryBanks {
        &self.query
    }
}

/// The result of [`MaLmm::generate`].
#[derive(Debug, Clone)]
pub struct Generation {
    /// New tokens as generated (before the `< 2 → 2` mapping).
    pub ids: Vec<u32>,
    /// Raw logits of each step `[V]`.
    pub step_logits: Vec<Tensor>,
    pub text: String,
    /// `[Q + Lp, d]` as given to the decoder.
    pub inputs_embeds: Tensor,
    pub llm_input_ids: Vec<u32>,
}

/// `model_config.yaml` at `dir` (or `dir` itself) when it is MA-LMM's.
pub fn config_path(dir: &Path) -> Option<PathBuf> {
    let p = if dir.is_file() {
        dir.to_path_buf()
    } else {
        dir.join(MODEL_CONFIG)
    };
    (p.is_file() && ModelConfigFile::is_ma_lmm(&p)).then_some(p)
}

fn bert_tokenizer(dir: &Path) -> Result<(tokenizers::Tokenizer, (u32, u32))> {
    use tokenizers::models::wordpiece::WordPiece;
    use tokenizers::normalizers::bert::BertNormalizer;
    use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
    let vocab = dir.join("vocab.txt");
    let path = vocab
        .to_str()
        .ok_or_else(|| PipelineError::file(&vocab, "path is not UTF-8"))?;
    let wp = WordPiece::from_file(path)
        .unk_token("[UNK]".into())
        .build()
        .map_err(|e| PipelineError::file(&vocab, e))?;
    let mut tok = tokenizers::Tokenizer::new(wp);
    // `BertTokenizer(do_lower_case=True)`: clean text, split CJK, strip accents, lower-case.
    tok.with_normalizer(Some(BertNormalizer::new(true, true, None, true)))
        .map_err(|e| PipelineError::file(&vocab, e))?;
    tok.with_pre_tokenizer(Some(BertPreTokenizer));
    let id = |t: &str| {
        tok.token_to_id(t)
            .ok_or_else(|| PipelineError::file(&vocab, format!("no {t} in the vocabulary")))
    };
    let ids = (id("[CLS]")?, id("[SEP]")?);
    Ok((tok, ids))
}

impl MaLmm {
    /// Load from `model_config.yaml` (`path`), with `--options model.KEY=VALUE` overrides.
    pub fn load(path: &Path, opts: &crate::LoadOptions, options: &[String]) -> Result<Self> {
        let cfg = ModelConfigFile::from_file(path, options)?;
        let m = cfg.model.clone();
        let llm_dir = cfg.resolve(&m.llm_model);
        if !llm_dir.is_dir() {
            return Err(PipelineError::file(
                &llm_dir,
                format!("llm_model (from {}) is not a folder", cfg.path.display()),
            ));
        }
        let llm_config_path = llm_dir.join("config.json");
        let raw = crate::error::read_json(&llm_config_path)?;
        let mut llm_cfg: videollama_llm::DecoderConfig = serde_json::from_value(raw)
            .map_err(|e| PipelineError::file(&llm_config_path, format!("llm_model config: {e}")))?;
        let (llm_tokenizer, slow_text) = crate::video_llama::load_llm_tokenizer(&llm_dir)?;
        let bert_dir = cfg.resolve(&m.bert_model);
        let bert_cfg = QFormerConfig::from_bert_file(&bert_dir.join("config.json"))
            .map_err(|e| PipelineError::file(&bert_dir, e))?;
        let (bert_tokenizer, bert_cls_sep) = bert_tokenizer(&bert_dir)?;
        let finetuned = m.finetuned.as_deref().ok_or_else(|| {
            PipelineError::file(
                &cfg.path,
                "no `finetuned` checkpoint (the LAVIS file with query_tokens, Qformer, llm_proj)",
            )
        })?;
        let sources = vec![
            WeightSource {
                label: "EVA ViT weights".into(),
                path: cfg.resolve(&m.vit_model_path),
                prefix: "visual_encoder.".into(),
            },
            WeightSource {
                label: "llm_model".into(),
                path: llm_dir.clone(),
                prefix: "llm_model.".into(),
            },
            WeightSource {
                label: "finetuned".into(),
                path: cfg.resolve(finetuned),
                prefix: String::new(),
            },
        ];
        let ckpt = Checkpoint::open_sources(&cfg.dir, &sources, opts.dtype, &opts.device)?;
        let vb = ckpt.var_builder();

        // EVA ViT-g: width, patch, size, depth from the weights; heads from the config.
        let vit_vb = vb.pp("visual_encoder");
        let width = vit_vb
            .get_unchecked("cls_token")
            .map_err(|e| err(&cfg, "EVA ViT weights", e))?
            .dim(2)?;
        let heads = match m.vit_num_heads {
            Some(h) => h,
            None if width == EVA_G.0 => EVA_G.1,
            None => {
                return Err(PipelineError::file(
                    &cfg.path,
                    format!(
                        "the EVA ViT is {width} wide, not the published {} — its head count \
                         cannot be read from the weights; set model.vit_num_heads",
                        EVA_G.0
                    ),
                ))
            }
        };
        let depth = m.vit_depth.or_else(|| {
            vit_vb
                .contains_tensor(&format!("blocks.{EVA_G_DEPTH}.norm1.weight"))
                .then_some(EVA_G_DEPTH)
        });
        // Another `image_size` than the weights' table: interpolated at load, as the
        // reference's `create_eva_vit_g(img_size)` does.
        let vit_cfg = EvaVitConfig::from_weights(&vit_vb, heads, depth)
            .and_then(|c| c.at_image_size(m.image_size))
            .map_err(|e| err(&cfg, "EVA ViT", e))?;
        let vit = EvaVit::new(&vit_cfg, vit_vb.clone()).map_err(|e| err(&cfg, "EVA ViT", e))?;
        let ln_vision = LnVision::new(&vit_cfg, vb.pp("ln_vision"))
            .map_err(|e| err(&cfg, "ln_vision (finetuned)", e))?;
        let image_pe = vb
            .get_unchecked("image_pe.weight")
            .map_err(|e| err(&cfg, "image_pe (finetuned)", e))?;
        match image_pe.dims() {
            &[rows, w] if w == vit_cfg.width && rows > 0 => {}
            d => {
                return Err(PipelineError::file(
                    &cfg.path,
                    format!(
                        "image_pe.weight is {d:?}; expected [max_num_frames, {}]",
                        vit_cfg.width
                    ),
                ))
            }
        }

        // Q-Former: BERT config + the three code-set fields.
        let mut qcfg = QFormerConfig::image(&bert_cfg, vit_cfg.width, m.num_query_token);
        qcfg.cross_attention_freq = m.cross_attention_freq;
        let qformer =
            MemoryBankQFormer::new(&qcfg, vb.clone()).map_err(|e| err(&cfg, "Q-Former", e))?;
        if qformer.num_queries() != m.num_query_token {
            return Err(PipelineError::file(
                &cfg.path,
                format!(
                    "num_query_token {} but the checkpoint holds {} query tokens",
                    m.num_query_token,
                    qformer.num_queries()
                ),
            ));
        }

        // The LLM with the `[PAD]` row: vocab + 1.
        let pad_file = cfg.dir.join(PAD_ROW_FILE);
        let d = llm_cfg.hidden_size;
        let (rows, pad_row_source) = if pad_file.is_file() {
            let t = candle_core::safetensors::load(&pad_file, &Device::Cpu)
                .map_err(|e| PipelineError::file(&pad_file, e))?;
            let get = |k: &str| {
                t.get(k)
                    .cloned()
                    .ok_or_else(|| PipelineError::file(&pad_file, format!("no tensor `{k}`")))
            };
            (
                (
                    get("model.embed_tokens.weight[pad_row]")?,
                    get("lm_head.weight[pad_row]")?,
                ),
                pad_file.display().to_string(),
            )
        } else {
            // The reference draws this row at random on every load; a zero row is our
            // deterministic stand-in (its logit is then 0).
            let z = Tensor::zeros(d, DType::F32, &Device::Cpu)?;
            (
                (z.clone(), z),
                "zeros (the reference draws it at random)".into(),
            )
        };
        for r in [&rows.0, &rows.1] {
            if r.dims() != [d] {
                return Err(PipelineError::file(
                    &pad_file,
                    format!("pad row is {:?}, the LLM is {d} wide", r.dims()),
                ));
            }
        }
        let rows = (
            rows.0.to_device(&opts.device)?,
            rows.1.to_device(&opts.device)?,
        );
        llm_cfg.vocab_size += 1;
        let llm_vb = VarBuilder::from_backend(
            Box::new(PadRowBackend {
                inner: vb.pp("llm_model"),
                rows,
            }),
            opts.dtype,
            opts.device.clone(),
        );
        let llm = videollama_llm::DecoderLm::new(&llm_cfg, llm_vb)
            .map_err(|e| err(&cfg, "llm_model", e))?;
        let llm_proj = linear(qcfg.hidden_size, d, vb.pp("llm_proj"))
            .map_err(|e| err(&cfg, "llm_proj (finetuned)", e))?;
        let unused = ckpt.finish()?;
        tracing::debug!(count = unused.len(), "MA-LMM weights loaded");
        Ok(Self {
            config: cfg,
            vit,
            ln_vision,
            image_pe,
            qformer,
            llm_proj,
            llm,
            bert_tokenizer,
            bert_cls_sep,
            llm_tokenizer,
            slow_text,
            pad_row_source,
            device: opts.device.clone(),
            dtype: opts.dtype,
        })
    }

    pub fn image_size(&self) -> usize {
        self.vit.config().image_size
    }

    pub fn max_frames(&self) -> usize {
        self.image_pe.dim(0).unwrap_or(0)
    }

    /// The prompt for a raw question (cleaned, then the QA template).
    pub fn prompt(&self, question: &str) -> String {
        render_prompt(self.config.template(), &clean_question(question, 50))
    }

    /// BERT ids of the prompt: `[CLS] … [SEP]`, cut from the left to `max_txt_len`.
    pub fn qformer_ids(&self, prompt: &str) -> Result<Vec<u32>> {
        let enc = self
            .bert_tokenizer
            .encode(prompt, false)
            .map_err(|e| PipelineError::Invalid(format!("Q-Former tokenizer: {e}")))?;
        let ids = enc.get_ids();
        let keep = self.config.model.max_txt_len.saturating_sub(2);
        let ids = &ids[ids.len().saturating_sub(keep)..];
        let (cls, sep) = self.bert_cls_sep;
        let mut out = Vec::with_capacity(ids.len() + 2);
        out.push(cls);
        out.extend_from_slice(ids);
        out.push(sep);
        Ok(out)
    }

    /// LLaMA ids of the prompt: the overridden bos `</s>` (2), then the text.
    pub fn llm_ids(&self, prompt: &str) -> Result<Vec<u32>> {
        let enc = self
            .llm_tokenizer
            .encode(prompt, false)
            .map_err(|e| PipelineError::Invalid(format!("LLM tokenizer: {e}")))?;
        let mut ids = vec![EOS_ID];
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// A fresh per-video state (the reference would leak query banks across videos whose T
    /// differs from `num_frames`; every stream starts empty here).
    pub fn start(&self, question: &str, record: bool) -> Result<VideoStream> {
        let prompt = self.prompt(question);
        let qformer_ids = self.qformer_ids(&prompt)?;
        Ok(VideoStream {
            prompt,
            qformer_ids,
            visual: MemoryBank::new(),
            query: QueryBanks::new(
                self.qformer.num_layers(),
                self.config.model.memory_bank_length,
                self.config.model.num_frames,
            ),
            frames: 0,
            last_hidden: None,
            record,
            records: Vec::new(),
        })
    }

    /// One frame `[3, S, S]` (normalised pixels) through ViT, the banks and the Q-Former.
    pub fn push_frame(&self, stream: &mut VideoStream, pixels: &Tensor) -> Result<()> {
        let (features, entry) = self.frame_entry(stream.frames, pixels)?;
        self.push_entry(stream, features, &entry)
    }

    /// The question-free half of a frame: `x_t [3, S, S]` → EVA ViT → `ln_vision`
    /// (`features [N, W]`), and the bank entry `features + image_pe[t]` (`[N, W]`).
    pub fn frame_entry(&self, t: usize, pixels: &Tensor) -> Result<(Tensor, Tensor)> {
        let s = self.image_size();
        if pixels.dims() != [3, s, s] {
            return Err(PipelineError::Invalid(format!(
                "a frame must be 3×{s}×{s}, got {:?}",
                pixels.dims()
            )));
        }
        if t >= self.max_frames() {
            return Err(PipelineError::Invalid(format!(
                "frame {} is past image_pe's {} rows (max_num_frames): MA-LMM cannot take more \
                 frames per video",
                t + 1,
                self.max_frames()
            )));
        }
        let x = pixels
            .to_device(&self.device)?
            .to_dtype(self.dtype)?
            .unsqueeze(0)?;
        let raw = self.vit.forward(&x)?;
        let features = self.ln_vision.forward(&raw)?.squeeze(0)?; // [N, W]
        let pe = self.image_pe.narrow(0, t, 1)?.to_dtype(features.dtype())?;
        let entry = features.broadcast_add(&pe)?;
        Ok((features, entry))
    }

    /// The question-dependent half of a frame: the entry `[N, W]` of frame
    /// `stream.frames_seen()` (from [`Self::frame_entry`]) into the visual bank, then the
    /// Q-Former over the bank with the stream's instruction and query banks. `features` is
    /// only kept for the record.
    pub fn push_entry(
        &self,
        stream: &mut VideoStream,
        features: Tensor,
        entry: &Tensor,
    ) -> Result<()> {
        // Deferred compression of the previous frame (the reference compresses after every
        // frame but the last, i.e. exactly when another frame follows).
        if stream.visual.len() > self.config.model.memory_bank_length {
            stream.visual.compress()?;
        }
        stream.visual.push(entry)?;
        let bank = stream
            .visual
            .entries()
            .ok_or_else(|| PipelineError::Invalid("empty visual bank".into()))?;
        let (n, tokens, w) = bank.dims3()?;
        let enc = bank.reshape((1, n * tokens, w))?;
        let mut trace = FrameTrace::default();
        let hidden = self.qformer.forward_frame(
            &stream.qformer_ids,
            &enc,
            &mut stream.query,
            stream.record.then_some(&mut trace),
        )?;
        let hidden = hidden.squeeze(0)?;
        if stream.record {
            stream.records.push(FrameRecord {
                vision_features: features,
                visual_bank: bank.clone(),
                visual_bank_sizes: stream
                    .visual
                    .sizes()
                    .cloned()
                    .ok_or_else(|| PipelineError::Invalid("empty visual bank".into()))?,
                last_hidden_state: hidden.clone(),
                qformer_trace: trace,
            });
        }
        stream.last_hidden = Some(hidden);
        stream.frames += 1;
        Ok(())
    }

    /// After the last frame: `llm_proj(last_hidden_state[:Q])` → `[Q, d]`. Drops the banks.
    pub fn finish(&self, stream: &mut VideoStream) -> Result<Tensor> {
        let hidden = stream
            .last_hidden
            .take()
            .ok_or_else(|| PipelineError::Invalid("MA-LMM needs at least one frame".into()))?;
        stream.visual.clear();
        stream.query.clear();
        let q = self.qformer.num_queries();
        Ok(self.llm_proj.forward(&hidden.narrow(0, 0, q)?)?)
    }

    /// `llm_model.generate(inputs_embeds = [visual ; embed(ids)], num_beams=1)`: greedy, eos
    /// banned at the first step (`min_length` 1 counts the placeholder bos transformers
    /// puts first), stop at `</s>`. Up to `max_new_tokens` tokens (the reference's
    /// `max_length` − 1).
    pub fn generate(
        &self,
        visual_tokens: &Tensor,
        prompt: &str,
        max_new_tokens: usize,
    ) -> Result<Generation> {
        let ids = self.llm_ids(prompt)?;
        let id_t = Tensor::new(ids.as_slice(), &self.device)?;
        let text = self.llm.embed_tokens(&id_t)?;
        let embeds = Tensor::cat(&[&visual_tokens.to_dtype(text.dtype())?, &text], 0)?;
        let mut cache = self.llm.new_cache();
        let mut logits = self.llm.forward_embeds(&embeds, &mut cache)?;
        let mut out = Vec::new();
        let mut steps = Vec::new();
        for step in 0..max_new_tokens {
            let mut v: Vec<f32> = logits.to_vec1()?;
            steps.push(logits.clone());
            if step == 0 {
                if let Some(x) = v.get_mut(EOS_ID as usize) {
                    *x = f32::NEG_INFINITY;
                }
            }
            let next = v
                .iter()
                .enumerate()
                .fold((0usize, f32::NEG_INFINITY), |best, (i, &x)| {
                    if x > best.1 {
                        (i, x)
                    } else {
                        best
                    }
                })
                .0 as u32;
            out.push(next);
            if next == EOS_ID || step + 1 == max_new_tokens {
                break;
            }
            logits = self.llm.forward_tokens(&[next], &mut cache)?;
        }
        let text = self.decode(&out)?;
        Ok(Generation {
            ids: out,
            step_logits: steps,
            text,
            inputs_embeds: embeds,
            llm_input_ids: ids,
        })
    }

    /// `outputs[outputs < 2] = 2`, `batch_decode(skip_special_tokens=True)`, strip. Ids past
    /// the SentencePiece vocabulary (the added `[PAD]`) are special and skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let sp_vocab = self
            .slow_text
            .as_ref()
            .map(|s| s.model.vocab_size())
            .unwrap_or(usize::MAX);
        let ids: Vec<u32> = ids
            .iter()
            .map(|&i| i.max(EOS_ID))
            .filter(|&i| (i as usize) < sp_vocab)
            .collect();
        let text = match &self.slow_text {
            Some(slow) => slow
                .model
                .decode_like_slow_llama(&ids, &slow.special, true)?,
            None => self
                .llm_tokenizer
                .decode(&ids, true)
                .map_err(|e| PipelineError::Invalid(format!("decoding the answer: {e}")))?,
        };
        Ok(text.trim().to_string())
    }
}

/// What [`MaLmm::answer_video`] returns.
pub struct VideoAnswer {
    pub answer: String,
    pub generation: Generation,
    pub prompt: String,
    /// Sampled frame indices, the video's frame count and average fps (decord's view).
    pub indices: Vec<usize>,
    pub total_frames: usize,
    pub avg_fps: f64,
    /// Stage tensors with the fixture's names (only when asked to collect them).
    pub tensors: std::collections::HashMap<String, Tensor>,
    pub preprocess_s: f64,
    pub encode_s: f64,
    pub generate_s: f64,
}

impl MaLmm {
    /// The demo path from a video file: sample `num_frames` frames, preprocess and push them
    /// one by one, then generate. `streamed`: decode each frame only when it is pushed (one
    /// decoded frame alive at a time) instead of decoding all sampled frames first; the result
    /// is the same.
    pub fn answer_video(
        &self,
        video: &Path,
        question: &str,
        max_new_tokens: usize,
        streamed: bool,
        collect: bool,
    ) -> Result<VideoAnswer> {
        use std::time::Instant;
        use videollama_media::decode::VideoReader;
        let decode_err = |e: videollama_media::decode::DecodeError| {
            PipelineError::file(video, format!("cannot decode the video: {e}"))
        };
        let start = Instant::now();
        let reader = VideoReader::open(video).map_err(decode_err)?;
        let info = reader.info().clone();
        let indices =
            media::sample_indices(info.frame_count, info.avg_fps, self.config.model.num_frames)?;
        let size = self.image_size();
        let mut stream = self.start(question, collect)?;
        let mut pixels_all = Vec::new();
        let mut preprocess_s = start.elapsed().as_secs_f64();
        let mut encode_s = 0.0;
        let mut decode_s = 0.0;
        let mut push =
            |frame: &videollama_media::frame::RgbImage, stream: &mut VideoStream| -> Result<()> {
                let t0 = Instant::now();
                let (px, _) = media::preprocess_frame(
                    &frame.data,
                    frame.height as usize,
                    frame.width as usize,
                    size,
                )?;
                let px = Tensor::from_vec(px, (3, size, size), &Device::Cpu)?;
                preprocess_s += t0.elapsed().as_secs_f64();
                let t1 = Instant::now();
                self.push_frame(stream, &px)?;
                encode_s += t1.elapsed().as_secs_f64();
                if collect {
                    pixels_all.push(px);
                }
                Ok(())
            };
        if streamed {
            for &i in &indices {
                let t0 = Instant::now();
                let frames = reader.decode(&[i]).map_err(decode_err)?;
                decode_s += t0.elapsed().as_secs_f64();
                let frame = frames.first().ok_or_else(|| {
                    PipelineError::file(video, format!("frame {i} could not be decoded"))
                })?;
                push(frame, &mut stream)?;
            }
        } else {
            let t0 = Instant::now();
            let frames = reader.decode(&indices).map_err(decode_err)?;
            decode_s += t0.elapsed().as_secs_f64();
            for frame in &frames {
                push(frame, &mut stream)?;
            }
        }
        let preprocess_s = preprocess_s + decode_s;
        let t1 = Instant::now();
        let visual_tokens = self.finish(&mut stream)?;
        encode_s += t1.elapsed().as_secs_f64();
        let t2 = Instant::now();
        let generation = self.generate(&visual_tokens, &stream.prompt, max_new_tokens)?;
        let generate_s = t2.elapsed().as_secs_f64();
        let mut tensors = std::collections::HashMap::new();
        if collect {
            self.collect_tensors(
                &mut tensors,
                &stream,
                &pixels_all,
                &visual_tokens,
                &generation,
            )?;
        }
        Ok(VideoAnswer {
            answer: generation.text.clone(),
            prompt: stream.prompt.clone(),
            generation,
            indices,
            total_frames: info.frame_count,
            avg_fps: info.avg_fps,
            tensors,
            preprocess_s,
            encode_s,
            generate_s,
        })
    }

    /// The golden names (`tests/golden/ma-lmm-tiny`, no batch dimension).
    pub fn collect_tensors(
        &self,
        out: &mut std::collections::HashMap<String, Tensor>,
        stream: &VideoStream,
        pixels: &[Tensor],
        visual_tokens: &Tensor,
        g: &Generation,
    ) -> Result<()> {
        let mut put = |k: &str, t: Tensor| {
            out.insert(k.to_string(), t);
        };
        if !pixels.is_empty() {
            put("pixel_values", Tensor::stack(pixels, 1)?);
        }
        if let Some(last) = stream.records.last() {
            let feats: Vec<Tensor> = stream
                .records
                .iter()
                .map(|r| r.vision_features.clone())
                .collect();
            put("vision_features", Tensor::stack(&feats, 0)?);
            put("visual_memory_bank", last.visual_bank.clone());
            put("visual_memory_bank_sizes", last.visual_bank_sizes.clone());
            for (l, p) in last.qformer_trace.query_bank_prefix.iter().enumerate() {
                if let Some((bank, sizes)) = p {
                    put(&format!("query_memory_bank.layer{l}"), bank.clone());
                    put(&format!("query_memory_bank_sizes.layer{l}"), sizes.clone());
                }
            }
            let q = self.qformer.num_queries();
            put("qformer_out", last.last_hidden_state.narrow(0, 0, q)?);
        }
        put("visual_tokens", visual_tokens.clone());
        let ids: Vec<i64> = g.llm_input_ids.iter().map(|&i| i as i64).collect();
        put("input_ids", Tensor::new(ids.as_slice(), &Device::Cpu)?);
        put("inputs_embeds", g.inputs_embeds.clone());
        if let Some(first) = g.step_logits.first() {
            put("logits_last", first.clone());
            put("logits_steps", Tensor::stack(&g.step_logits, 0)?);
        }
        let gen: Vec<i64> = g.ids.iter().map(|&i| i as i64).collect();
        put("generated_ids", Tensor::new(gen.as_slice(), &Device::Cpu)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn question_cleaner_and_template() {
        let q = clean_question("What colour is the moving box, and where does it go?  ", 50);
        assert_eq!(q, "what colour is the moving box, and where does it go?");
        assert_eq!(clean_question("A.b!c\"(d)*#:;~ e", 50), "abcd e");
        assert_eq!(clean_question("a b c", 2), "a b");
        assert_eq!(
            render_prompt("Question: {} Short answer:", &q),
            "Question: what colour is the moving box, and where does it go? Short answer:"
        );
    }
}
