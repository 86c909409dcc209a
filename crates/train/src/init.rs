//! A new, untrained VideoLLaMA2-layout model assembled from parts, ready for
//! `videollama train`: how the default model starts (scripts/make-default-model.sh).
//!
//! ```text
//! TOWER/ (videollama train-vision-tower)   vision_tower/{config,preprocessor_config}.json
//!                                          vision_tower.safetensors (model.vision_tower.vision_tower.vision_model.*)
//! WHISPER_CT2/ (Whisper tiny.en)           ─► model.audio_tower.* (frozen audio encoder)
//! LLM.gguf (SmolLM2-135M-Instruct)         ─► hard link; config.json `llm_gguf` names it
//!        ▼ init_model
//! OUT/config.json                          videollama2_llama + the GGUF's shapes + towers + connector
//! OUT/model-00001-of-00002.safetensors     vision tower + fresh STC connector + fresh mm_projector_a
//! OUT/model-00002-of-00002.safetensors     Whisper encoder
//! OUT/model.safetensors.index.json, OUT/vision_tower/, OUT/<llm>.gguf
//! ```
//! Fresh weights follow PyTorch's defaults for the layers the reference builds (nn.Linear /
//! nn.Conv: U(±1/√fan_in) for weights and biases; LayerNorm: γ = 1, β = 0), drawn from a
//! seeded generator, so the same seed gives the same file.

use crate::error::{Result, TrainError};
use crate::rng::SplitMix64;
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use videollama_connectors::{Connector, ConnectorConfig, MlpProjector, ProjectorType};
use videollama_pipeline::default_model::{
    link_or_copy, write_audio_tower_shard, write_index, AUDIO_TOWER_SHARD, TRAINED_SHARD,
};
use videollama_pipeline::model::{AUDIO_PROJECTOR_PREFIX, PROJECTOR_PREFIX};

/// What [`init_model`] assembles.
#[derive(Debug, Clone)]
pub struct InitSpec {
    /// Output of `videollama train-vision-tower`.
    pub tower_dir: PathBuf,
    /// A Whisper CTranslate2 folder (its encoder becomes the audio tower); `None`: no audio.
    pub whisper_ct2: Option<PathBuf>,
    pub llm_gguf: PathBuf,
    pub projector_type: String,
    pub num_frames: usize,
    /// `mm_vision_select_layer`.
    pub select_layer: i64,
    /// Audio-tower fields merged into config.json (`audio_tower_type`, `whisper_encoder`, …).
    pub audio_config: serde_json::Value,
    pub context_length: usize,
    pub seed: u64,
    /// How the trained shard is stored (f16 halves what the repository carries; the
    /// model computes in f32 either way, and training keeps its `Var`s in f32).
    pub weights_dtype: DType,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> TrainError + '_ {
    move |e| TrainError::file(path, e)
}

/// Fresh values for every tensor of `varmap` (PyTorch default initialisation by name).
fn pytorch_default_init(varmap: &VarMap, rng: &mut SplitMix64) -> Result<()> {
    let data = varmap.data().lock().expect("varmap lock");
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    // The fan-in of each layer, keyed by the layer prefix, for its bias.
    let fan_in: HashMap<String, usize> = names
        .iter()
        .filter_map(|n| {
            let v = &data[*n];
            let dims = v.as_tensor().dims();
            let layer = n.strip_suffix(".weight")?;
            (dims.len() >= 2).then(|| (layer.to_string(), dims[1..].iter().product()))
        })
        .collect();
    for name in names {
        let var = &data[name];
        let t = var.as_tensor();
        let dims = t.dims().to_vec();
        let n: usize = dims.iter().product();
        let is_norm = name.contains(".bn.") || name.contains("norm");
        let values: Vec<f32> = if is_norm && name.ends_with(".weight") {
            vec![1.0; n]
        } else if is_norm {
            vec![0.0; n]
        } else {
            let fan = if dims.len() >= 2 {
                dims[1..].iter().product()
            } else {
                let layer = name.strip_suffix(".bias").unwrap_or(name);
                *fan_in.get(layer).unwrap_or(&dims[0])
            };
            let bound = 1.0 / (fan.max(1) as f64).sqrt();
            (0..n)
                .map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32)
                .collect()
        };
        let fresh = Tensor::from_vec(values, dims, t.device())?.to_dtype(t.dtype())?;
        var.set(&fresh)?;
    }
    Ok(())
}

/// Assemble an untrained model folder at `out` (see the module docs).
pub fn init_model(spec: &InitSpec, out: &Path) -> Result<()> {
    let gguf = videollama_llm::GgufLlm::open(&spec.llm_gguf)
        .map_err(|e| TrainError::file(&spec.llm_gguf, e))?;
    let llm = gguf.config().clone();
    let tower_cfg_path = spec.tower_dir.join("vision_tower/config.json");
    let tower_json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&tower_cfg_path).map_err(io(&tower_cfg_path))?,
    )
    .map_err(|e| TrainError::file(&tower_cfg_path, e))?;
    let mm_hidden_size = tower_json["hidden_size"]
        .as_u64()
        .ok_or_else(|| TrainError::file(&tower_cfg_path, "no hidden_size"))?
        as usize;
    let gguf_name = spec
        .llm_gguf
        .file_name()
        .ok_or_else(|| TrainError::file(&spec.llm_gguf, "not a file"))?
        .to_string_lossy()
        .to_string();

    let mut config = serde_json::json!({
        "model_type": "videollama2_llama",
        "architectures": ["Videollama2LlamaForCausalLM"],
        "vocab_size": llm.vocab_size,
        "hidden_size": llm.hidden_size,
        "intermediate_size": llm.intermediate_size,
        "num_hidden_layers": llm.num_hidden_layers,
        "num_attention_heads": llm.num_attention_heads,
        "num_key_value_heads": llm.num_key_value_heads,
        "head_dim": llm.head_dim,
        "rms_norm_eps": llm.rms_norm_eps,
        "rope_theta": llm.rope_theta,
        "max_position_embeddings": llm.max_position_embeddings,
        "tie_word_embeddings": llm.tie_word_embeddings,
        "hidden_act": "silu",
        "llm_gguf": gguf_name,
        "mm_vision_tower": "vision_tower",
        "mm_projector_type": spec.projector_type,
        "mm_hidden_size": mm_hidden_size,
        "mm_vision_select_layer": spec.select_layer,
        "mm_vision_select_feature": "patch",
        "num_frames": spec.num_frames,
        "image_aspect_ratio": null,
        "tokenizer_model_max_length": spec.context_length,
        "torch_dtype": match spec.weights_dtype {
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            _ => "float32",
        },
    });
    if let (Some(obj), Some(audio)) = (config.as_object_mut(), spec.audio_config.as_object()) {
        if spec.whisper_ct2.is_some() {
            for (k, v) in audio {
                obj.insert(k.clone(), v.clone());
            }
        }
    }

    // Fresh connector (and audio projector) weights.
    let projector_type: ProjectorType = spec
        .projector_type
        .parse()
        .map_err(|e| TrainError::Invalid(format!("projector type: {e}")))?;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    Connector::new(
        &ConnectorConfig {
            projector_type,
            mm_hidden_size,
            hidden_size: llm.hidden_size,
        },
        vb.pp(PROJECTOR_PREFIX),
    )?;
    if spec.whisper_ct2.is_some() {
        let d_audio = spec.audio_config["mm_hidden_size_a"]
            .as_u64()
            .ok_or_else(|| TrainError::Invalid("audio_config has no mm_hidden_size_a".into()))?
            as usize;
        MlpProjector::new(2, d_audio, llm.hidden_size, vb.pp(AUDIO_PROJECTOR_PREFIX))?;
    }
    let mut rng = SplitMix64::derived(spec.seed, 0x1417);
    pytorch_default_init(&varmap, &mut rng)?;

    std::fs::create_dir_all(out).map_err(io(out))?;
    let mut shard: HashMap<String, Tensor> = varmap
        .data()
        .lock()
        .expect("varmap lock")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    let tower_weights = spec.tower_dir.join("vision_tower.safetensors");
    for (k, v) in candle_core::safetensors::load(&tower_weights, &Device::Cpu)
        .map_err(|e| TrainError::file(&tower_weights, e))?
    {
        shard.insert(k, v);
    }
    for t in shard.values_mut() {
        *t = t.to_dtype(spec.weights_dtype)?;
    }
    let shard_path = out.join(TRAINED_SHARD);
    candle_core::safetensors::save(&shard, &shard_path)
        .map_err(|e| TrainError::file(&shard_path, e))?;
    let mut shards = vec![TRAINED_SHARD];
    if let Some(ct2) = &spec.whisper_ct2 {
        write_audio_tower_shard(ct2, &out.join(AUDIO_TOWER_SHARD))?;
        shards.push(AUDIO_TOWER_SHARD);
    }
    if shards.len() == 1 {
        // A single shard is plain model.safetensors.
        std::fs::rename(&shard_path, out.join("model.safetensors")).map_err(io(out))?;
    } else {
        write_index(out, &shards)?;
    }
    let tower_out = out.join("vision_tower");
    std::fs::create_dir_all(&tower_out).map_err(io(&tower_out))?;
    for f in ["config.json", "preprocessor_config.json"] {
        let src = spec.tower_dir.join("vision_tower").join(f);
        if src.is_file() {
            std::fs::copy(&src, tower_out.join(f)).map_err(io(&src))?;
        }
    }
    link_or_copy(&spec.llm_gguf, &out.join(&gguf_name))?;
    let path = out.join("config.json");
    let text = serde_json::to_string_pretty(&config).map_err(|e| TrainError::file(&path, e))?;
    std::fs::write(&path, text).map_err(io(&path))?;
    Ok(())
}
