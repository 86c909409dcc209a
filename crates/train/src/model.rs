//! The differentiable model of a training run: the language model (frozen, optionally with
//! LoRA adapters), the connector and the audio projector built over `Var`s initialised from
//! the checkpoint, and the loss of one prepared sample.
//!
//! ```text
//! vision features [T, n, Cin] ─► Connector (VarMap) ─► [Lv, C] ┐
//! audio features [N, Ca] ─► mm_projector_a (VarMap or frozen) ─► [N, C] ┴► media block [M, C]
//! ids ─► embed_tokens + splice the block at the placeholder ─► [S, C]
//!     ─► DecoderLm::forward_train (rows before each answer token) ─► logits [P, V]
//!     ─► log_softmax ─► −Σ log p(answer token) / P                      = sample loss
//! ```
//! Trainable tensors live in one `VarMap` under their checkpoint names
//! (`model.mm_projector.*`, `model.mm_projector_a.*`, and for LoRA
//! `model.layers.{i}.{self_attn|mlp}.{proj}.lora_{A,B}.weight`), which is what the optimizer
//! updates and the exporter writes.

use crate::error::{Result, TrainError};
use crate::prepare::{MediaFeatures, PreparedSample};
use crate::rng::SplitMix64;
use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{VarBuilder, VarMap};
use std::collections::BTreeSet;
use std::path::Path;
use videollama_connectors::{Connector, ConnectorConfig, MlpProjector, ProjectorType};
use videollama_llm::DecoderLm;
use videollama_pipeline::checkpoint::Checkpoint;
use videollama_pipeline::config::ModelConfig;
use videollama_pipeline::model::{AUDIO_PROJECTOR_PREFIX, PROJECTOR_PREFIX};
use videollama_pipeline::prompt::is_placeholder;

/// LoRA on the language model (peft's `r`, `lora_alpha`, `target_modules`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoraSpec {
    pub r: usize,
    pub alpha: f64,
    /// HF module names: `q_proj`, `k_proj`, `v_proj`, `o_proj`, `gate_proj`, `up_proj`,
    /// `down_proj`.
    pub targets: Vec<String>,
}

/// What a [`TrainModel`] trains.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    pub train_connector: bool,
    /// Train `mm_projector_a` (only where the checkpoint has an audio branch).
    pub train_audio_projector: bool,
    pub lora: Option<LoraSpec>,
    /// Seeds the LoRA `A` initialisation.
    pub seed: u64,
}

/// The loss of one sample and what it covered.
pub struct SampleLoss {
    /// Mean cross-entropy over the answer tokens (a scalar in the model dtype).
    pub loss: Tensor,
    pub targets: usize,
    /// Positions run through the language model.
    pub positions: usize,
}

struct AudioProjectorShape {
    depth: usize,
    in_dim: usize,
    out_dim: usize,
}

pub struct TrainModel {
    pub config: ModelConfig,
    pub llm: DecoderLm,
    connector_cfg: Option<ConnectorConfig>,
    connector: Option<Connector>,
    connector_trainable: bool,
    audio_shape: Option<AudioProjectorShape>,
    audio_projector: Option<MlpProjector>,
    audio_trainable: bool,
    varmap: VarMap,
    lora: Option<LoraSpec>,
    lora_modules: Vec<String>,
    /// The GGUF file the language model came from (config.json `llm_gguf`).
    llm_gguf: Option<std::path::PathBuf>,
    dtype: DType,
    device: Device,
}

impl TrainModel {
    /// Build from a VideoLLaMA 2 checkpoint folder, weights in `dtype`.
    pub fn load(dir: &Path, spec: &ModelSpec, dtype: DType, device: &Device) -> Result<Self> {
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let ckpt = Checkpoint::open(dir, dtype, device)?;
        if ckpt.prequantized().is_some() {
            return Err(TrainError::Invalid(format!(
                "{}: a quantized checkpoint (model.gguf) cannot be trained; use the safetensors checkpoint",
                dir.display()
            )));
        }
        let vb = ckpt.var_builder();
        // `llm_gguf`: the base language model is a released GGUF file, read dense (every
        // block dequantized to `dtype`) because quantized products have no backward.
        let load_opts = videollama_pipeline::LoadOptions {
            dtype,
            device: device.clone(),
            ..Default::default()
        };
        let llm_gguf = videollama_pipeline::gguf::checkpoint_llm_gguf(dir, &config, &load_opts)?;
        let mut llm = match &llm_gguf {
            Some(path) => {
                videollama_pipeline::gguf::load_llm_for_checkpoint(path, &config, dir, &load_opts)?
            }
            None => DecoderLm::new(&config.llm, vb.clone())?,
        };
        let varmap = VarMap::new();

        let connector_cfg = match &config.mm.mm_vision_tower {
            None => None,
            Some(name) => {
                let projector = config.mm.mm_projector_type.as_deref().ok_or_else(|| {
                    TrainError::Invalid(
                        "config.json has mm_vision_tower but no mm_projector_type".into(),
                    )
                })?;
                let projector_type: ProjectorType = projector
                    .parse()
                    .map_err(|e| TrainError::Invalid(format!("config.json: {e}")))?;
                let mm_hidden_size = match config.mm.mm_hidden_size {
                    Some(n) => n,
                    None => videollama_pipeline::tower::resolve_vision_tower(name, dir)?
                        .config
                        .hidden_size(),
                };
                Some(ConnectorConfig {
                    projector_type,
                    mm_hidden_size,
                    hidden_size: config.mm.hidden_size,
                })
            }
        };
        if spec.train_connector && connector_cfg.is_some() {
            copy_into_varmap(&ckpt, &vb, &varmap, &format!("{PROJECTOR_PREFIX}."))?;
        }
        let audio_shape = if config.has_audio() {
            let name = config
                .mm
                .mm_projector_a_type
                .as_deref()
                .unwrap_or("mlp2x_gelu");
            let depth = match name.parse::<ProjectorType>() {
                Ok(ProjectorType::Linear) => 1,
                Ok(ProjectorType::MlpGelu(n)) => n,
                _ => {
                    return Err(TrainError::Invalid(format!(
                        "config.json: mm_projector_a_type {name} is not an audio projector"
                    )))
                }
            };
            let first = format!("{AUDIO_PROJECTOR_PREFIX}.0.weight");
            let in_dim = match vb
                .get_unchecked(&first)
                .map(|t| t.dims().to_vec())
                .as_deref()
            {
                Ok([_, i]) => *i,
                _ => {
                    return Err(TrainError::Invalid(format!(
                        "checkpoint has no 2-D {first} (the audio projector)"
                    )))
                }
            };
            Some(AudioProjectorShape {
                depth,
                in_dim,
                out_dim: config.mm.hidden_size,
            })
        } else {
            None
        };
        let audio_trainable = spec.train_audio_projector && audio_shape.is_some();
        if audio_trainable {
            copy_into_varmap(&ckpt, &vb, &varmap, &format!("{AUDIO_PROJECTOR_PREFIX}."))?;
        }

        let mut lora_modules = Vec::new();
        if let Some(lora) = &spec.lora {
            // Seeded peft initialisation: A ~ U(−1/√in, 1/√in), B = 0.
            let mut rng = SplitMix64::derived(spec.seed, 0x10a);
            {
                let mut data = varmap.data().lock().expect("varmap lock");
                for (name, linear) in llm.linears() {
                    let short = name.rsplit('.').next().unwrap_or(&name);
                    if !lora.targets.iter().any(|t| t == short) {
                        continue;
                    }
                    let (out, inp) = (linear.out_dim(), linear.in_dim());
                    let bound = 1.0 / (inp as f64).sqrt();
                    let a: Vec<f64> = (0..lora.r * inp)
                        .map(|_| (rng.next_f64() * 2.0 - 1.0) * bound)
                        .collect();
                    let a = Tensor::from_vec(a, (lora.r, inp), device)?.to_dtype(dtype)?;
                    let b = Tensor::zeros((out, lora.r), dtype, device)?;
                    data.insert(format!("{name}.lora_A.weight"), Var::from_tensor(&a)?);
                    data.insert(format!("{name}.lora_B.weight"), Var::from_tensor(&b)?);
                }
            }
            let vb = VarBuilder::from_varmap(&varmap, dtype, device);
            lora_modules = llm.attach_lora(&lora.targets, lora.r, lora.alpha, vb)?;
            if lora_modules.is_empty() {
                return Err(TrainError::Invalid(format!(
                    "no projection of the language model matches the LoRA targets {:?}",
                    lora.targets
                )));
            }
        }

        let mut model = Self {
            config,
            llm,
            connector_cfg,
            connector: None,
            connector_trainable: spec.train_connector,
            audio_shape,
            audio_projector: None,
            audio_trainable,
            varmap,
            lora: spec.lora.clone(),
            lora_modules,
            llm_gguf,
            dtype,
            device: device.clone(),
        };
        // Frozen parts come straight from the checkpoint; trainable ones from the VarMap.
        if let (Some(cfg), false) = (&model.connector_cfg, model.connector_trainable) {
            model.connector = Some(Connector::new(cfg, vb.pp(PROJECTOR_PREFIX))?);
        }
        if let (Some(s), false) = (&model.audio_shape, model.audio_trainable) {
            model.audio_projector = Some(MlpProjector::new(
                s.depth,
                s.in_dim,
                s.out_dim,
                vb.pp(AUDIO_PROJECTOR_PREFIX),
            )?);
        }
        let before: BTreeSet<String> = model
            .varmap
            .data()
            .lock()
            .expect("lock")
            .keys()
            .cloned()
            .collect();
        model.refresh()?;
        let after: BTreeSet<String> = model
            .varmap
            .data()
            .lock()
            .expect("lock")
            .keys()
            .cloned()
            .collect();
        if after != before {
            let missing: Vec<_> = after.difference(&before).cloned().collect();
            return Err(TrainError::Invalid(format!(
                "{}: the checkpoint lacks {}",
                dir.display(),
                missing.join(", ")
            )));
        }
        ckpt.finish()?;
        Ok(model)
    }

    /// Rebuild the trainable connector / projector from the current `Var` values. Needed
    /// after every update: the connector keeps some weights in re-laid-out copies (the
    /// depthwise taps), which an in-place `Var` update does not reach.
    pub fn refresh(&mut self) -> Result<()> {
        let vb = VarBuilder::from_varmap(&self.varmap, self.dtype, &self.device);
        if let (Some(cfg), true) = (&self.connector_cfg, self.connector_trainable) {
            self.connector = Some(Connector::new(cfg, vb.pp(PROJECTOR_PREFIX))?);
        }
        if let (Some(s), true) = (&self.audio_shape, self.audio_trainable) {
            self.audio_projector = Some(MlpProjector::new(
                s.depth,
                s.in_dim,
                s.out_dim,
                vb.pp(AUDIO_PROJECTOR_PREFIX),
            )?);
        }
        Ok(())
    }

    /// Every trainable tensor, sorted by name.
    pub fn trainable(&self) -> Vec<(String, Var)> {
        let mut v: Vec<(String, Var)> = self
            .varmap
            .data()
            .lock()
            .expect("varmap lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The GGUF file the language model came from, when config.json names one.
    pub fn llm_gguf(&self) -> Option<&Path> {
        self.llm_gguf.as_deref()
    }

    /// The LoRA settings, when adapters are attached.
    pub fn lora(&self) -> Option<&LoraSpec> {
        self.lora.as_ref()
    }

    /// Module names that carry an adapter (`model.layers.0.self_attn.q_proj`, …).
    pub fn lora_modules(&self) -> &[String] {
        &self.lora_modules
    }

    /// The block spliced at the placeholder: visual tokens then audio tokens.
    pub fn media_block(&self, features: &MediaFeatures) -> Result<Option<Tensor>> {
        let mut parts = Vec::new();
        if let Some(v) = &features.vision {
            let connector = self.connector.as_ref().ok_or_else(|| {
                TrainError::Invalid("this checkpoint has no vision branch".into())
            })?;
            let v = v.to_device(&self.device)?.to_dtype(self.dtype)?;
            parts.push(connector.forward(&v)?);
        }
        if let Some(a) = &features.audio {
            let proj = self
                .audio_projector
                .as_ref()
                .ok_or_else(|| TrainError::Invalid("this checkpoint has no audio branch".into()))?;
            let a = a.to_device(&self.device)?.to_dtype(self.dtype)?;
            parts.push(proj.forward(&a)?.to_dtype(self.dtype)?);
        }
        Ok(match parts.len() {
            0 => None,
            1 => parts.pop(),
            _ => Some(Tensor::cat(&parts, 0)?),
        })
    }

    /// Mean cross-entropy of the sample's answer tokens, differentiable with respect to
    /// every trainable tensor.
    pub fn sample_loss(
        &self,
        sample: &PreparedSample,
        features: &MediaFeatures,
    ) -> Result<SampleLoss> {
        let block = self.media_block(features)?;
        let mut total: Option<Tensor> = None;
        let (mut targets, mut positions) = (0, 0);
        for seq in &sample.sequences {
            let (embeds, rows, labels) = self.splice(&seq.ids, &seq.targets, block.as_ref())?;
            positions += embeds.dim(0)?;
            if labels.is_empty() {
                continue;
            }
            let logits = self.llm.forward_train(&embeds, Some(&rows))?;
            let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
            let labels_t = Tensor::new(labels.as_slice(), &self.device)?.unsqueeze(1)?;
            let nll = logp.gather(&labels_t, 1)?.sum_all()?.neg()?;
            targets += labels.len();
            total = Some(match total {
                None => nll,
                Some(t) => (t + nll)?,
            });
        }
        let total = total.ok_or_else(|| {
            TrainError::Invalid(format!("sample {} has no answer tokens", sample.index))
        })?;
        Ok(SampleLoss {
            loss: (total / targets as f64)?,
            targets,
            positions,
        })
    }

    /// `prepare_inputs_labels_for_multimodal` for one sequence: text embeddings with the
    /// media block at the placeholder → (`[S, C]`, rows predicting each target, targets).
    pub fn splice(
        &self,
        ids: &[i64],
        targets: &[(usize, u32)],
        block: Option<&Tensor>,
    ) -> Result<(Tensor, Vec<u32>, Vec<u32>)> {
        let vocab = self.config.llm.vocab_size;
        let mut pieces = Vec::new();
        let mut text: Vec<u32> = Vec::new();
        let mut row_of = Vec::with_capacity(ids.len());
        let mut pos = 0usize;
        let flush = |text: &mut Vec<u32>, pieces: &mut Vec<Tensor>| -> Result<()> {
            if !text.is_empty() {
                let t = Tensor::new(text.as_slice(), &self.device)?;
                pieces.push(self.llm.embed_tokens(&t)?);
                text.clear();
            }
            Ok(())
        };
        for &id in ids {
            row_of.push(pos);
            if is_placeholder(id) {
                flush(&mut text, &mut pieces)?;
                let b = block.ok_or_else(|| {
                    TrainError::Invalid(
                        "the prompt has a media placeholder but the sample has no media".into(),
                    )
                })?;
                pos += b.dim(0)?;
                pieces.push(b.clone());
            } else if id < 0 || id as usize >= vocab {
                return Err(TrainError::Invalid(format!(
                    "token id {id} is outside the vocabulary (size {vocab})"
                )));
            } else {
                text.push(id as u32);
                pos += 1;
            }
        }
        flush(&mut text, &mut pieces)?;
        let mut rows = Vec::with_capacity(targets.len());
        let mut labels = Vec::with_capacity(targets.len());
        for &(j, label) in targets {
            let row = row_of.get(j).copied().unwrap_or(0);
            if row == 0 {
                return Err(TrainError::Invalid(format!(
                    "answer token {j} has no position before it"
                )));
            }
            rows.push((row - 1) as u32);
            labels.push(label);
        }
        Ok((Tensor::cat(&pieces, 0)?, rows, labels))
    }
}

/// Put every checkpoint tensor under `prefix` into `varmap` as a `Var` (same name).
fn copy_into_varmap(
    ckpt: &Checkpoint,
    vb: &VarBuilder,
    varmap: &VarMap,
    prefix: &str,
) -> Result<()> {
    let mut data = varmap.data().lock().expect("varmap lock");
    for name in ckpt.tensor_names() {
        if !name.starts_with(prefix) {
            continue;
        }
        let t = vb.get_unchecked(name)?;
        data.insert(name.clone(), Var::from_tensor(&t)?);
    }
    Ok(())
}
