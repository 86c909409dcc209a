//! Writing a trained model as a checkpoint folder that `Pipeline::load` (`ask`, `serve`)
//! reads as it is, in the published layout.
//!
//! ```text
//! BASE/                                   OUT/
//!   config.json, tokenizer*, …     ─copy─►  same files
//!   model-0000k-of-0000n.safetensors ─┬───►  hard link (copy) when nothing in it changed
//!                                     └───►  rewritten with the trained tensors under their
//!                                            published names: model.mm_projector.*,
//!                                            model.mm_projector_a.*, and (LoRA merged) the
//!                                            q/k/v/o, gate/up/down weights W + (α/r)·B·A,
//!                                            each in the dtype the base file stores it in
//!   model.safetensors.index.json   ─copy─►  unchanged (same names, same shards)
//!   (tower folder named by a relative mm_vision_tower, when OUT would not find it) ─► copied
//! LoRA kept apart (peft): adapter_model.safetensors (base_model.model.<module>.lora_{A,B}.weight)
//!   + adapter_config.json — in OUT/ for `LoraExport::Separate` (weights left unmerged), in
//!   OUT/adapter/ for `LoraExport::Both` (beside the merged weights).
//! ```
//! Files are written under a temporary name and renamed, so an interrupted save leaves the
//! previous checkpoint readable; a shard that is a hard link to the base is replaced, never
//! written through.

use crate::error::{Result, TrainError};
use crate::model::TrainModel;
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use safetensors::tensor::TensorView;
use safetensors::View;
use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// How LoRA adapters are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoraExport {
    /// Folded into the language model's weights only.
    Merged,
    /// Base weights unchanged; the adapter in `adapter_model.safetensors` +
    /// `adapter_config.json` beside them (peft layout; `ask` ignores it).
    Separate,
    /// Merged weights, and the adapter in `OUT/adapter/` too.
    #[default]
    Both,
}

/// Files of a training run that are not part of the base model (never copied from a base
/// folder that is itself a training output).
pub const RUN_FILES: [&str; 6] = [
    "trainer_state.json",
    "optimizer.safetensors",
    "train_log.jsonl",
    "loss_curve.png",
    "adapter_model.safetensors",
    "adapter_config.json",
];

/// A tensor to write: kept from the base file (zero-copy) or new.
enum Out<'a> {
    Kept(TensorView<'a>),
    New(Tensor),
}

impl View for Out<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        match self {
            Out::Kept(v) => v.dtype(),
            Out::New(t) => View::dtype(t),
        }
    }
    fn shape(&self) -> &[usize] {
        match self {
            Out::Kept(v) => v.shape(),
            Out::New(t) => t.dims(),
        }
    }
    fn data(&self) -> Cow<'_, [u8]> {
        match self {
            Out::Kept(v) => Cow::Borrowed(v.data()),
            Out::New(t) => View::data(t),
        }
    }
    fn data_len(&self) -> usize {
        match self {
            Out::Kept(v) => v.data_len(),
            Out::New(t) => View::data_len(t),
        }
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> TrainError + '_ {
    move |e| TrainError::file(path, e)
}

/// Write `model` as a checkpoint folder `out` made from `base`.
pub fn export_model(base: &Path, out: &Path, model: &TrainModel, lora: LoraExport) -> Result<()> {
    if same_dir(base, out) {
        return Err(TrainError::Invalid(format!(
            "the output folder {} is the base model folder",
            out.display()
        )));
    }
    // A language model read from a released GGUF file has no dense weights in the folder
    // to merge an adapter into: the adapter is kept apart, at the top level, where
    // `Pipeline::load` applies it.
    let lora = match (model.llm_gguf().is_some() && model.lora().is_some(), lora) {
        (true, LoraExport::Merged) => {
            return Err(TrainError::Invalid(
                "the language model comes from a GGUF file (llm_gguf): LoRA cannot be merged \
                 into it; export the adapter apart (--lora-export separate)"
                    .into(),
            ))
        }
        (true, _) => LoraExport::Separate,
        (false, l) => l,
    };
    std::fs::create_dir_all(out).map_err(io(out))?;
    let trainable = model.trainable();
    let values: HashMap<String, Tensor> = trainable
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
        .collect();
    let weight_files = videollama_pipeline::checkpoint::find_weight_files(base)?;
    let base_st = unsafe { MmapedSafetensors::multi(&weight_files) }
        .map_err(|e| TrainError::file(base, e))?;

    // Published-name replacements: the connector / projector, and merged LoRA weights.
    let mut replace: HashMap<String, Tensor> = values
        .iter()
        .filter(|(k, _)| !k.contains(".lora_"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let (Some(spec), true) = (model.lora(), lora != LoraExport::Separate) {
        let scale = spec.alpha / spec.r as f64;
        for module in model.lora_modules() {
            let w = base_st.load(&format!("{module}.weight"), &Device::Cpu)?;
            let a = &values[&format!("{module}.lora_A.weight")];
            let b = &values[&format!("{module}.lora_B.weight")];
            let merged = videollama_nn::lora::merge(
                &w,
                &a.to_device(&Device::Cpu)?,
                &b.to_device(&Device::Cpu)?,
                scale,
            )?;
            replace.insert(format!("{module}.weight"), merged);
        }
    }

    let mut written: BTreeSet<String> = BTreeSet::new();
    for file in &weight_files {
        let name = file
            .file_name()
            .ok_or_else(|| TrainError::file(file, "not a file"))?;
        let dst = out.join(name);
        let st = unsafe { MmapedSafetensors::new(file) }.map_err(|e| TrainError::file(file, e))?;
        let views = st.tensors();
        if !views.iter().any(|(n, _)| replace.contains_key(n)) {
            link_or_copy(file, &dst)?;
            continue;
        }
        let mut outs: Vec<(String, Out<'_>)> = Vec::with_capacity(views.len());
        for (n, view) in views {
            match replace.get(&n) {
                Some(t) => {
                    let stored: DType = view
                        .dtype()
                        .try_into()
                        .map_err(|e| TrainError::file(file, format!("{n}: {e}")))?;
                    if t.dims() != view.shape() {
                        return Err(TrainError::file(
                            file,
                            format!("{n}: stored {:?}, trained {:?}", view.shape(), t.dims()),
                        ));
                    }
                    let t = t.to_device(&Device::Cpu)?.to_dtype(stored)?.contiguous()?;
                    written.insert(n.clone());
                    outs.push((n, Out::New(t)));
                }
                None => outs.push((n, Out::Kept(view))),
            }
        }
        let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
        let tmp = tmp_path(&dst);
        safetensors::serialize_to_file(outs, Some(meta), &tmp)
            .map_err(|e| TrainError::file(&tmp, e))?;
        std::fs::rename(&tmp, &dst).map_err(io(&dst))?;
    }
    let missing: Vec<_> = replace
        .keys()
        .filter(|k| !written.contains(*k))
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Err(TrainError::Invalid(format!(
            "{}: the base checkpoint has no {}",
            base.display(),
            missing.join(", ")
        )));
    }

    // Every other file of the base folder (config, tokenizer, index, …).
    let weight_names: BTreeSet<_> = weight_files.iter().filter_map(|f| f.file_name()).collect();
    for entry in std::fs::read_dir(base).map_err(io(base))? {
        let path = entry.map_err(io(base))?.path();
        let Some(name) = path.file_name() else {
            continue;
        };
        let skip = weight_names.contains(name)
            || RUN_FILES.iter().any(|r| name == *r)
            || name.to_string_lossy().ends_with(".tmp");
        if path.is_file() && !skip && path.extension().is_some_and(|e| e == "gguf") {
            // A released language model (hundreds of MB) that training never changes.
            link_or_copy(&path, &out.join(name))?;
        } else if path.is_file() && !skip {
            let dst = out.join(name);
            let tmp = tmp_path(&dst);
            std::fs::copy(&path, &tmp).map_err(io(&path))?;
            std::fs::rename(&tmp, &dst).map_err(io(&dst))?;
        }
    }
    copy_vision_tower(base, out, model)?;

    if let (Some(spec), true) = (model.lora(), lora != LoraExport::Merged) {
        let dir = match lora {
            LoraExport::Both => out.join("adapter"),
            _ => out.to_path_buf(),
        };
        write_adapter(&dir, base, model, spec, &values)?;
    }
    Ok(())
}

/// peft's adapter files for the attached LoRA factors.
fn write_adapter(
    dir: &Path,
    base: &Path,
    model: &TrainModel,
    spec: &crate::model::LoraSpec,
    values: &HashMap<String, Tensor>,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut ts = HashMap::new();
    for module in model.lora_modules() {
        for f in ["A", "B"] {
            let key = format!("{module}.lora_{f}.weight");
            let t = values[&key].to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
            ts.insert(format!("base_model.model.{key}"), t);
        }
    }
    let path = dir.join("adapter_model.safetensors");
    let tmp = tmp_path(&path);
    candle_core::safetensors::save(&ts, &tmp).map_err(|e| TrainError::file(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    let config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": std::fs::canonicalize(base).unwrap_or(base.to_path_buf()),
        "r": spec.r,
        "lora_alpha": spec.alpha,
        "lora_dropout": 0.0,
        "target_modules": spec.targets,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "modules_to_save": serde_json::Value::Null,
    });
    let path = dir.join("adapter_config.json");
    let text = serde_json::to_string_pretty(&config).map_err(|e| TrainError::file(&path, e))?;
    std::fs::write(&path, text).map_err(io(&path))?;
    Ok(())
}

/// A relative `mm_vision_tower` folder found next to the base (the fixtures keep it in the
/// base's parent) is copied into OUT when OUT would not find it.
fn copy_vision_tower(base: &Path, out: &Path, model: &TrainModel) -> Result<()> {
    let Some(name) = &model.config.mm.mm_vision_tower else {
        return Ok(());
    };
    let rel = Path::new(name);
    if rel.is_absolute() {
        return Ok(());
    }
    let found_from = |dir: &Path| {
        [Some(dir.join(rel)), dir.parent().map(|p| p.join(rel))]
            .into_iter()
            .flatten()
            .find(|d| d.join("config.json").is_file())
    };
    if found_from(out).is_some() {
        return Ok(());
    }
    if let Some(src) = found_from(base) {
        copy_tree(&src, &out.join(rel))?;
    }
    Ok(())
}

fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    std::fs::create_dir_all(dst).map_err(io(dst))?;
    for entry in std::fs::read_dir(src).map_err(io(src))? {
        let path = entry.map_err(io(src))?.path();
        let target = dst.join(path.file_name().unwrap_or_default());
        if path.is_dir() {
            copy_tree(&path, &target)?;
        } else {
            link_or_copy(&path, &target)?;
        }
    }
    Ok(())
}

/// Hard-link `src` at `dst` (replacing what is there), or copy when linking fails.
fn link_or_copy(src: &Path, dst: &Path) -> Result<()> {
    let tmp = tmp_path(dst);
    let _ = std::fs::remove_file(&tmp);
    if std::fs::hard_link(src, &tmp).is_err() {
        std::fs::copy(src, &tmp).map_err(io(src))?;
    }
    std::fs::rename(&tmp, dst).map_err(io(dst))?;
    // rename(2) does nothing when both names are links to one file (a re-save of an
    // unchanged shard): the temporary name would stay behind.
    let _ = std::fs::remove_file(&tmp);
    Ok(())
}

pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

pub(crate) fn same_dir(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
