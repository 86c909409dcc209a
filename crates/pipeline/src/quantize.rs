//! `videollama quantize`: a checkpoint folder → a folder whose weights are one `model.gguf`,
//! linear layers already quantized, so loading it quantizes nothing.
//!
//! ```text
//! DIR/config.json ─► ModelConfig ─► dry run of DecoderLm::new / VisionTower::new over
//!     zero-cost tensor views, inside load scopes that record what `linear_b` asks for:
//!     exactly the weights `--quantize` / `--quantize-vision` would quantize at load
//! DIR/*.safetensors ─► each tensor, in name order, one at a time:
//!     recorded linear weight ─► f32 ─► QTensor::quantize, rows unpadded, in the format
//!         `--quantize` picks at load (Q8_0 when the rows are not whole blocks of it, dense
//!         when not whole 32-blocks either: see `stored_format`)
//!     anything else ─► kept as stored (F32 / F16 / BF16; other types as F32)
//!     ─► OUT/model.gguf under the original (HF) names (written to model.gguf.partial, renamed)
//! DIR/*.json, merges.txt, tokenizer.model, … ─► OUT/  (not model.safetensors.index.json)
//! mm_vision_tower resolved to a folder ─► its config.json / preprocessor_config.json
//!     ─► OUT/<mm_vision_tower>/, so the name still resolves from OUT
//! ```
//!
//! Loading OUT ([`crate::checkpoint::Checkpoint::open`]): dense tensors come through the
//! `VarBuilder` backend, quantized ones through [`crate::WeightOptions::prequantized`].

use crate::config::ModelConfig;
use crate::error::{PipelineError, Result};
use crate::model::VISION_TOWER_PREFIX;
use crate::tower::resolve_vision_tower;
use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use videollama_encoders::VisionTower;
use videollama_llm::gguf::{write_gguf, GgufTensorEntry};
use videollama_llm::DecoderLm;
use videollama_nn::{with_load_scope, LoadScope, QuantizedWeights, WeightFormat};

/// The weights file of a quantized checkpoint folder.
pub const QUANTIZED_FILE: &str = "model.gguf";

/// GGUF tensors have at most 4 dimensions: a tensor with more (the STC connector's Conv3d
/// kernel, `[C, C, 3, 3, 3]`) is stored with its leading dimensions merged, and its real
/// shape under the metadata key `videollama.shape.<name>`.
pub const SHAPE_KEY_PREFIX: &str = "videollama.shape.";

/// The shape a tensor of a quantized checkpoint had (its GGUF shape unless it was merged).
pub fn stored_shape(file: &videollama_llm::gguf::GgufFile, name: &str) -> Option<Vec<usize>> {
    if let Some(Value::Array(dims)) = file.metadata().get(&format!("{SHAPE_KEY_PREFIX}{name}")) {
        return dims
            .iter()
            .map(|d| d.to_u64().ok().map(|d| d as usize))
            .collect();
    }
    file.tensor_info(name).map(|(_, dims)| dims.to_vec())
}

/// `[a, b, c, d, e]` → `[a·b, c, d, e]`: at most 4 dimensions, the last (the rows that
/// quantization blocks run along) kept.
fn gguf_dims(dims: &[usize]) -> Vec<usize> {
    if dims.len() <= 4 {
        return dims.to_vec();
    }
    let cut = dims.len() - 3;
    let mut out = vec![dims[..cut].iter().product()];
    out.extend_from_slice(&dims[cut..]);
    out
}

/// Which parts to quantize (`None` = keep that part as stored).
#[derive(Debug, Clone, Copy)]
pub struct QuantizeOptions {
    pub llm: Option<WeightFormat>,
    pub vision: Option<WeightFormat>,
}

/// What `quantize_checkpoint` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct QuantizeReport {
    pub out_file: PathBuf,
    /// Tensors stored quantized, per format (`Q8_0`, `Q4K`, …).
    pub quantized: BTreeMap<String, usize>,
    /// Tensors stored as they were (norms, embeddings, connector, …).
    pub kept: usize,
    /// Linear weights kept dense because their rows are not a whole number of 32-blocks
    /// (quantized at load when `--quantize` asks for it).
    pub kept_linear: usize,
    /// Size of the checkpoint's safetensors files.
    pub bytes_before: u64,
    /// Size of `model.gguf`.
    pub bytes_after: u64,
    /// Other files copied into the output folder (relative to it).
    pub copied: Vec<PathBuf>,
}

impl QuantizeReport {
    pub fn quantized_total(&self) -> usize {
        self.quantized.values().sum()
    }
}

/// `DIR/model.gguf` when the folder is a quantized checkpoint (and holds no safetensors).
pub fn quantized_weight_file(dir: &Path) -> Option<PathBuf> {
    let file = dir.join(QUANTIZED_FILE);
    (file.is_file()
        && !dir.join("model.safetensors").is_file()
        && !dir.join("model.safetensors.index.json").is_file())
    .then_some(file)
}

/// A backend that serves every tensor as a broadcast zero of the stored shape: models can
/// be constructed without reading (or allocating) their weights.
struct ShapesOnly {
    shapes: HashMap<String, Vec<usize>>,
    dir: PathBuf,
}

impl SimpleBackend for ShapesOnly {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        match self.shapes.get(name) {
            Some(dims) if dims.as_slice() == s.dims() => {
                Tensor::zeros((), dtype, dev)?.broadcast_as(s)
            }
            Some(dims) => candle_core::bail!(
                "{}: tensor {name} has shape {dims:?}, the model expects {:?}",
                self.dir.display(),
                s.dims()
            ),
            None => candle_core::bail!("{}: tensor {name} is missing", self.dir.display()),
        }
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let dims = self.shapes.get(name).ok_or_else(|| {
            candle_core::Error::Msg(format!("{}: tensor {name} is missing", self.dir.display()))
        })?;
        Tensor::zeros((), dtype, dev)?.broadcast_as(dims.as_slice())
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.shapes.contains_key(name)
    }
}

/// Records the weight names `linear_b` looks up; has none of them.
#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl QuantizedWeights for Recorder {
    fn get(&self, name: &str) -> Option<Arc<QTensor>> {
        self.0.lock().expect("recorder lock").push(name.to_string());
        None
    }
}

/// The linear weights the model's constructors load through `linear_b`, for the language
/// model and the vision tower: `(llm names, vision names)`.
fn linear_weight_names(
    config: &ModelConfig,
    dir: &Path,
    shapes: HashMap<String, Vec<usize>>,
) -> Result<(Vec<String>, Vec<String>)> {
    let vb = VarBuilder::from_backend(
        Box::new(ShapesOnly {
            shapes,
            dir: dir.to_path_buf(),
        }),
        DType::F32,
        Device::Cpu,
    );
    let llm = Arc::new(Recorder::default());
    with_load_scope(LoadScope::from_source(llm.clone()), || {
        DecoderLm::new(&config.llm, vb.clone()).map(|_| ())
    })?;
    let vision = Arc::new(Recorder::default());
    if let Some(name) = &config.mm.mm_vision_tower {
        let tower = resolve_vision_tower(name, dir)?;
        with_load_scope(LoadScope::from_source(vision.clone()), || {
            VisionTower::new(
                &tower.config,
                config.mm.mm_vision_select_layer,
                &config.mm.mm_vision_select_feature,
                vb.pp(VISION_TOWER_PREFIX),
            )
            .map(|_| ())
        })?;
    }
    let take = |r: &Recorder| std::mem::take(&mut *r.0.lock().expect("recorder lock"));
    Ok((take(&llm), take(&vision)))
}

/// The format a linear weight with rows of `in_dim` is stored in: the one `--quantize`
/// would use at load ([`WeightFormat::plan_for_row_length`]) when the rows are a whole
/// number of its blocks, else Q8_0 when they are a whole number of 32-blocks (llama.cpp's
/// fallback), else none (kept dense). Rows are stored unpadded, as a GGUF file holds
/// them: the zero padding `--quantize` adds at load for the fast kernels is a layout of
/// the loaded layer, not of the weight.
pub fn stored_format(format: WeightFormat, in_dim: usize) -> Option<WeightFormat> {
    let (planned, _) = format.plan_for_row_length(in_dim);
    [planned, WeightFormat::Q8_0]
        .into_iter()
        .find(|f| in_dim.is_multiple_of(f.block_size()))
}

fn stored_float_type(dtype: safetensors::Dtype) -> GgmlDType {
    match dtype {
        safetensors::Dtype::F16 => GgmlDType::F16,
        safetensors::Dtype::BF16 => GgmlDType::BF16,
        _ => GgmlDType::F32,
    }
}

/// Files of a checkpoint folder worth copying next to `model.gguf`.
fn is_side_file(name: &str) -> bool {
    if name == "model.safetensors.index.json" {
        return false;
    }
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    matches!(
        ext.as_deref(),
        Some("json" | "txt" | "model" | "tiktoken" | "jinja" | "md")
    )
}

/// Quantize the checkpoint in `dir` into `out` (created if needed).
pub fn quantize_checkpoint(
    dir: &Path,
    out: &Path,
    opts: &QuantizeOptions,
) -> Result<QuantizeReport> {
    let config = ModelConfig::from_file(&dir.join("config.json"))?;
    let files = crate::checkpoint::find_weight_files(dir)?;
    if out.exists() && !out.is_dir() {
        return Err(PipelineError::file(out, "exists and is not a folder"));
    }
    if let (Ok(a), Ok(b)) = (dir.canonicalize(), out.canonicalize()) {
        if a == b {
            return Err(PipelineError::file(
                out,
                "the output folder must differ from the checkpoint folder",
            ));
        }
    }
    std::fs::create_dir_all(out).map_err(|e| PipelineError::file(out, e))?;
    if crate::checkpoint::find_weight_files(out).is_ok() {
        return Err(PipelineError::file(
            out,
            "already holds safetensors weights; choose an empty folder",
        ));
    }
    let bytes_before = files
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum();
    // SAFETY: read-only mapping of files we do not modify.
    let st = unsafe { MmapedSafetensors::multi(&files) }
        .map_err(|e| PipelineError::file(dir, format!("cannot read safetensors: {e}")))?;
    let mut views: Vec<(String, Vec<usize>, safetensors::Dtype)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.shape().to_vec(), v.dtype()))
        .collect();
    views.sort_by(|a, b| a.0.cmp(&b.0));
    let shapes: HashMap<String, Vec<usize>> = views
        .iter()
        .map(|(n, s, _)| (n.clone(), s.clone()))
        .collect();
    let (llm_names, vision_names) = linear_weight_names(&config, dir, shapes)?;

    // Plan: the stored type of every tensor.
    let mut plan: HashMap<&str, GgmlDType> = HashMap::new();
    let mut kept_linear = 0;
    for (names, format) in [(&llm_names, opts.llm), (&vision_names, opts.vision)] {
        let Some(format) = format else { continue };
        for name in names {
            let Some((n, dims, _)) = views.iter().find(|(n, _, _)| n == name) else {
                continue;
            };
            match dims.as_slice() {
                [_, in_dim] => match stored_format(format, *in_dim) {
                    Some(f) => {
                        plan.insert(n.as_str(), f.ggml_dtype());
                    }
                    None => kept_linear += 1,
                },
                _ => kept_linear += 1,
            }
        }
    }
    let entries: Vec<GgufTensorEntry> = views
        .iter()
        .map(|(n, dims, dt)| {
            let dtype = plan
                .get(n.as_str())
                .copied()
                .unwrap_or_else(|| stored_float_type(*dt));
            GgufTensorEntry::new(n.clone(), dtype, &gguf_dims(dims))
        })
        .collect();
    let mut quantized = BTreeMap::new();
    for e in &entries {
        if plan.contains_key(e.name.as_str()) {
            *quantized.entry(format!("{:?}", e.dtype)).or_insert(0) += 1;
        }
    }
    let kept = entries.len() - quantized.values().sum::<usize>();

    let fmt = |f: Option<WeightFormat>| f.map(|f| f.to_string()).unwrap_or_else(|| "none".into());
    let mut metadata = vec![
        (
            "general.architecture".to_string(),
            Value::String("videollama2".into()),
        ),
        (
            "general.name".to_string(),
            Value::String(
                dir.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            ),
        ),
        (
            "videollama.model_type".to_string(),
            Value::String(config.mm.model_type.clone()),
        ),
        (
            "videollama.quantize.llm".to_string(),
            Value::String(fmt(opts.llm)),
        ),
        (
            "videollama.quantize.vision".to_string(),
            Value::String(fmt(opts.vision)),
        ),
    ];
    for (n, dims, _) in &views {
        if dims.len() > 4 {
            metadata.push((
                format!("{SHAPE_KEY_PREFIX}{n}"),
                Value::Array(dims.iter().map(|&d| Value::U64(d as u64)).collect()),
            ));
        }
    }
    let out_file = out.join(QUANTIZED_FILE);
    let partial = out.join(format!("{QUANTIZED_FILE}.partial"));
    let write = || -> Result<()> {
        let file = std::fs::File::create(&partial).map_err(|e| PipelineError::file(&partial, e))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
        write_gguf(&mut w, &metadata, &entries, |_, e| {
            let view = st.get(&e.name)?;
            let stored = stored_float_type(view.dtype());
            let same_float = !plan.contains_key(e.name.as_str())
                && e.dtype == stored
                && matches!(
                    view.dtype(),
                    safetensors::Dtype::F32 | safetensors::Dtype::F16 | safetensors::Dtype::BF16
                );
            if same_float {
                // Little-endian floats, exactly as stored.
                return Ok(view.data().to_vec());
            }
            let t = st.load(&e.name, &Device::Cpu)?;
            videollama_llm::gguf::tensor_bytes(&t, e.dtype)
        })
        .map_err(|e| PipelineError::file(&partial, videollama_llm::gguf::error_text(&e)))?;
        let file = w
            .into_inner()
            .map_err(|e| PipelineError::file(&partial, e.error()))?;
        file.sync_all()
            .map_err(|e| PipelineError::file(&partial, e))?;
        std::fs::rename(&partial, &out_file).map_err(|e| PipelineError::file(&out_file, e))
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    let bytes_after = std::fs::metadata(&out_file)
        .map_err(|e| PipelineError::file(&out_file, e))?
        .len();

    // Side files: config, tokenizer, generation config, …
    let mut copied = Vec::new();
    let mut listing: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| PipelineError::file(dir, e))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| is_side_file(n))
        .collect();
    listing.sort();
    for name in listing {
        let to = out.join(&name);
        std::fs::copy(dir.join(&name), &to).map_err(|e| PipelineError::file(&to, e))?;
        copied.push(PathBuf::from(name));
    }
    // The vision tower's configuration folder, under the same relative name.
    if let Some(name) = &config.mm.mm_vision_tower {
        let rel = Path::new(name);
        let plain =
            rel.is_relative() && rel.components().all(|c| matches!(c, Component::Normal(_)));
        if let Some(src) = resolve_vision_tower(name, dir)?.dir {
            if plain {
                let dst = out.join(rel);
                std::fs::create_dir_all(&dst).map_err(|e| PipelineError::file(&dst, e))?;
                for f in ["config.json", "preprocessor_config.json"] {
                    if src.join(f).is_file() {
                        std::fs::copy(src.join(f), dst.join(f))
                            .map_err(|e| PipelineError::file(dst.join(f), e))?;
                        copied.push(rel.join(f));
                    }
                }
            } else {
                tracing::warn!(
                    "mm_vision_tower {name:?} is not a plain relative name; its folder {} is not \
                     copied (it must stay reachable from the output folder)",
                    src.display()
                );
            }
        }
    }
    Ok(QuantizeReport {
        out_file,
        quantized,
        kept,
        kept_linear,
        bytes_before,
        bytes_after,
        copied,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn side_files() {
        for n in [
            "config.json",
            "tokenizer.json",
            "merges.txt",
            "tokenizer.model",
            "generation_config.json",
        ] {
            assert!(is_side_file(n), "{n}");
        }
        for n in [
            "model.safetensors.index.json",
            "model-00001-of-00002.safetensors",
            "model.gguf",
        ] {
            assert!(!is_side_file(n), "{n}");
        }
    }
}
