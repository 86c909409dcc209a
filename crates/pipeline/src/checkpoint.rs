//! Checkpoint loading from a Hugging Face model folder, exactly as published:
//! a single `model.safetensors`, or shards listed in `model.safetensors.index.json` —
//! or a folder written by `videollama quantize` (`model.gguf`, HF tensor names).
//!
//! ```text
//! *.safetensors ─► mmap ─► RecordingBackend (VarBuilder) ─► every tensor, converted to dtype
//! model.gguf ─► GgufFile (header; tensors read on demand)
//!     F32/F16/BF16 tensors ─► RecordingBackend (VarBuilder), converted to dtype
//!     quantized tensors ─► Checkpoint::prequantized() ─► WeightOptions::prequantized
//!                          ─► linear_b takes them as stored (nothing quantized again)
//! ```
//!
//! Weights are memory-mapped and converted to the compute dtype on access. The
//! [`RecordingBackend`] behind the `VarBuilder` remembers which tensors the model
//! asked for, so that after assembly we can report *all* missing tensors and
//! shape mismatches at once (not just the first), and list the unused ones.

use crate::error::{PipelineError, Result};
use crate::safetensors_files::SafetensorsFiles;
use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use videollama_llm::gguf::{is_float_type, GgufFile};
use videollama_nn::QuantizedWeights;

/// The safetensors files of a checkpoint folder.
pub fn find_weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Err(PipelineError::MissingModelDir(dir.to_path_buf()));
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let json = crate::error::read_json(&index)?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| PipelineError::file(&index, "no \"weight_map\" object"))?;
        let shards: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
        let mut files = Vec::new();
        for shard in shards {
            let path = dir.join(shard);
            if !path.is_file() {
                return Err(PipelineError::file(
                    &path,
                    format!("shard listed in {} is missing", index.display()),
                ));
            }
            files.push(path);
        }
        return Ok(files);
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    Err(PipelineError::file(
        dir,
        "no model.safetensors or model.safetensors.index.json in this folder",
    ))
}

#[derive(Default)]
struct AccessLog {
    used: BTreeSet<String>,
    missing: BTreeSet<String>,
    mismatched: Vec<String>,
}

/// Where a checkpoint's tensors are stored.
enum Store {
    Safetensors(SafetensorsFiles),
    /// A `videollama quantize` output: HF names, dense and quantized tensors.
    Gguf(Arc<GgufFile>),
    /// Several files, each under a model-name prefix (Video-LLaMA's `eval_config.yaml`).
    Sources(SourceStore),
}

impl Store {
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        match self {
            Store::Safetensors(st) => st.get(name).map(|e| e.shape.clone()),
            Store::Gguf(f) => crate::quantize::stored_shape(f, name),
            Store::Sources(s) => s.shape(name),
        }
    }

    /// Which file a tensor comes from, for error messages (multi-file checkpoints only).
    fn origin(&self, name: &str) -> Option<String> {
        match self {
            Store::Sources(s) => s.origin(name),
            _ => None,
        }
    }

    fn load(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        match self {
            Store::Safetensors(st) => st.load(name, dtype, dev),
            Store::Sources(s) => s.load(name, dtype, dev),
            // Quantized tensors asked for here (not through `prequantized`) are dequantized.
            Store::Gguf(f) => {
                let t = f.read_dense(name, dtype, dev)?;
                match crate::quantize::stored_shape(f, name) {
                    Some(dims) if dims.as_slice() != t.dims() => t.reshape(dims),
                    _ => Ok(t),
                }
            }
        }
    }
}

/// One weight file of a multi-file checkpoint, as a config names it.
#[derive(Debug, Clone)]
pub struct WeightSource {
    /// How the config names the file (`ckpt`, `ckpt_2`, `llama_model`, …): errors say it.
    pub label: String,
    /// A `.safetensors` or `.pth` file, or a Hugging Face folder (its safetensors).
    pub path: PathBuf,
    /// Prepended to every key of the file to give the model's tensor name
    /// (`visual_encoder.` for a bare EVA state dict; empty for LAVIS `{"model": …}` files).
    pub prefix: String,
}

/// The files behind one [`WeightSource`].
enum SourceFile {
    Safetensors(SafetensorsFiles),
    /// Read with candle's pickle reader, which interprets the pickle opcodes that describe
    /// tensors and never executes code from the file.
    Pth(candle_core::pickle::PthTensors),
}

/// Several weight files under one name space. Later sources win, as in the reference,
/// which calls `load_state_dict(…, strict=False)` file after file.
struct SourceStore {
    /// `(label, shown path, file)`.
    files: Vec<(String, PathBuf, SourceFile)>,
    /// Model name → (file index, key inside the file, shape).
    names: HashMap<String, (usize, String, Vec<usize>)>,
    /// LoRA adapters merged into their base weights as they are read.
    lora: Option<LoraMerge>,
}

/// How LoRA factors found next to a weight are merged into it (`W + scale·B·A`).
#[derive(Debug, Clone)]
pub struct LoraMerge {
    /// `lora_alpha / r`.
    pub scale: f64,
    /// Names (in the model's name space) of the weights that were merged, for checks.
    merged: Arc<Mutex<Vec<String>>>,
}

impl LoraMerge {
    pub fn new(scale: f64) -> Self {
        Self {
            scale,
            merged: Arc::default(),
        }
    }

    /// The weights merged so far.
    pub fn merged(&self) -> Vec<String> {
        self.merged.lock().expect("lora log poisoned").clone()
    }
}

impl SourceStore {
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.names.get(name).map(|(_, _, shape)| shape.clone())
    }

    fn origin(&self, name: &str) -> Option<String> {
        let (file, _, _) = self.names.get(name)?;
        let (label, path, _) = &self.files[*file];
        Some(format!("{label} {}", path.display()))
    }

    fn load(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let base = self.load_stored(name, dtype, dev)?;
        let Some(lora) = &self.lora else {
            return Ok(base);
        };
        let Some(stem) = name.strip_suffix(".weight") else {
            return Ok(base);
        };
        let find = |factor: char| {
            videollama_nn::lora::factor_keys(stem, factor)
                .into_iter()
                .find(|k| self.names.contains_key(k))
        };
        match (find('A'), find('B')) {
            (Some(a), Some(b)) => {
                let a = self.load_stored(&a, DType::F32, dev)?;
                let b = self.load_stored(&b, DType::F32, dev)?;
                let merged = videollama_nn::lora::merge(&base, &a, &b, lora.scale)
                    .map_err(|e| candle_core::Error::Msg(format!("{name}: {e}")))?;
                lora.merged
                    .lock()
                    .expect("lora log poisoned")
                    .push(name.to_string());
                Ok(merged)
            }
            (None, None) => Ok(base),
            _ => candle_core::bail!("{name}: only one of its LoRA factors A / B is stored"),
        }
    }

    fn load_stored(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let (file, key, _) = self
            .names
            .get(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("tensor {name} missing")))?;
        let (label, path, source) = &self.files[*file];
        match source {
            SourceFile::Safetensors(st) => st.load(key, dtype, dev),
            SourceFile::Pth(pth) => pth
                .get(key)
                .map_err(|e| {
                    candle_core::Error::Msg(format!("{label} {}: {key}: {e}", path.display()))
                })?
                .ok_or_else(|| candle_core::Error::Msg(format!("tensor {name} missing")))?
                .to_dtype(dtype)?
                .to_device(dev),
        }
    }
}

/// A `.pth` file's state dict: LAVIS checkpoints wrap it as `{"model": …}`, ImageBind and
/// EVA files are bare. A twin `<stem>.safetensors` next to it is preferred (no pickle at all).
fn open_source_file(label: &str, path: &Path) -> Result<(PathBuf, SourceFile)> {
    let describe = |cause: String| PipelineError::file(path, format!("{label}: {cause}"));
    if path.is_dir() {
        let files = find_weight_files(path)?;
        let st = SafetensorsFiles::open(&files).map_err(describe)?;
        return Ok((path.to_path_buf(), SourceFile::Safetensors(st)));
    }
    if !path.is_file() {
        return Err(describe(
            "missing (the config names this file; paths are relative to the config's folder)"
                .into(),
        ));
    }
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if ext == "safetensors" {
        let st = SafetensorsFiles::open(&[path.to_path_buf()]).map_err(describe)?;
        return Ok((path.to_path_buf(), SourceFile::Safetensors(st)));
    }
    let twin = path.with_extension("safetensors");
    if twin.is_file() {
        let st = SafetensorsFiles::open(std::slice::from_ref(&twin)).map_err(|e| {
            PipelineError::file(
                &twin,
                format!("{label} (safetensors twin of {}): {e}", path.display()),
            )
        })?;
        return Ok((twin, SourceFile::Safetensors(st)));
    }
    let open = |key: Option<&str>| candle_core::pickle::PthTensors::new(path, key);
    let pth = match open(Some("model")) {
        Ok(p) if !p.tensor_infos().is_empty() => p,
        _ => open(None).map_err(|e| describe(format!("not a readable PyTorch checkpoint: {e}")))?,
    };
    if pth.tensor_infos().is_empty() {
        return Err(describe(
            "no tensors found (expected a state dict, bare or under \"model\")".into(),
        ));
    }
    Ok((path.to_path_buf(), SourceFile::Pth(pth)))
}

impl SourceStore {
    fn open(sources: &[WeightSource], lora: Option<LoraMerge>) -> Result<Self> {
        let mut files = Vec::new();
        let mut names = HashMap::new();
        for (index, source) in sources.iter().enumerate() {
            let (shown, file) = open_source_file(&source.label, &source.path)?;
            let keys: Vec<(String, Vec<usize>)> = match &file {
                SourceFile::Safetensors(st) => st
                    .tensors()
                    .map(|(k, e)| (k.clone(), e.shape.clone()))
                    .collect(),
                SourceFile::Pth(pth) => pth
                    .tensor_infos()
                    .iter()
                    .map(|(k, info)| (k.clone(), info.layout.dims().to_vec()))
                    .collect(),
            };
            for (key, shape) in keys {
                names.insert(format!("{}{key}", source.prefix), (index, key, shape));
            }
            files.push((source.label.clone(), shown, file));
        }
        Ok(Self { files, names, lora })
    }
}

/// The quantized tensors of a `model.gguf` checkpoint, by name, as stored; marks them used.
struct GgufPrequantized {
    file: Arc<GgufFile>,
    device: Device,
    log: Arc<Mutex<AccessLog>>,
}

impl QuantizedWeights for GgufPrequantized {
    fn get(&self, name: &str) -> Option<Arc<QTensor>> {
        let (dtype, _) = self.file.tensor_info(name)?;
        if is_float_type(dtype) {
            return None;
        }
        // A read error is answered with None: the layer then asks the VarBuilder, which
        // reports the same error with the file name.
        let q = self.file.read_qtensor(name, &self.device).ok()?;
        self.log
            .lock()
            .expect("checkpoint access log poisoned")
            .used
            .insert(name.to_string());
        Some(Arc::new(q))
    }
}

/// A `SimpleBackend` over memory-mapped safetensors that records every access.
///
/// A missing tensor or a shape mismatch is recorded and answered with zeros so
/// assembly can go on and report every problem; [`Checkpoint::finish`] then turns
/// the record into one error.
struct RecordingBackend {
    store: Store,
    log: Arc<Mutex<AccessLog>>,
}

impl SimpleBackend for RecordingBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut log = self.log.lock().expect("checkpoint access log poisoned");
        match self.store.shape(name) {
            None => {
                log.missing.insert(name.to_string());
                Tensor::zeros(s, dtype, dev)
            }
            Some(shape) => {
                log.used.insert(name.to_string());
                if shape != s.dims() {
                    let from = self
                        .store
                        .origin(name)
                        .map(|o| format!(" (from {o})"))
                        .unwrap_or_default();
                    log.mismatched.push(format!(
                        "{name}{from}: checkpoint has {shape:?}, model expects {:?}",
                        s.dims()
                    ));
                    return Tensor::zeros(s, dtype, dev);
                }
                drop(log);
                self.store.load(name, dtype, dev)
            }
        }
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let mut log = self.log.lock().expect("checkpoint access log poisoned");
        if self.store.shape(name).is_none() {
            log.missing.insert(name.to_string());
            candle_core::bail!("tensor {name} missing");
        }
        log.used.insert(name.to_string());
        drop(log);
        self.store.load(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.store.shape(name).is_some()
    }
}

/// What [`Checkpoint::over_store`] lists: files, sorted names, dtype counts, shapes.
type StoreListing = (
    Vec<PathBuf>,
    Vec<String>,
    HashMap<String, usize>,
    HashMap<String, Vec<usize>>,
);

/// An opened checkpoint: build modules from [`Checkpoint::var_builder`], then call
/// [`Checkpoint::finish`] to turn any missing/mismatched tensor into an error.
pub struct Checkpoint {
    dir: PathBuf,
    files: Vec<PathBuf>,
    names: Vec<String>,
    dtypes: HashMap<String, usize>,
    log: Arc<Mutex<AccessLog>>,
    vb: VarBuilder<'static>,
    prequantized: Option<Arc<dyn QuantizedWeights>>,
    /// Stored shapes by model name (multi-file checkpoints), read from the headers.
    shapes: HashMap<String, Vec<usize>>,
}

impl Checkpoint {
    pub fn open(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        if let Some(gguf) = crate::quantize::quantized_weight_file(dir) {
            return Self::open_gguf(dir, &gguf, dtype, device);
        }
        let files = find_weight_files(dir)?;
        Self::open_files(dir, files, dtype, device)
    }

    pub fn open_files(
        dir: &Path,
        files: Vec<PathBuf>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        // Tensors are read one at a time when the model asks for them (positioned reads,
        // no memory map): the process never holds the file and the weights at once.
        let st = SafetensorsFiles::open(&files)
            .map_err(|e| PipelineError::file(dir, format!("cannot read safetensors: {e}")))?;
        let mut names = Vec::new();
        let mut dtypes = HashMap::new();
        for (name, entry) in st.tensors() {
            *dtypes
                .entry(format!("{:?}", entry.dtype).to_uppercase())
                .or_insert(0) += 1;
            names.push(name.clone());
        }
        names.sort();
        let parts = (files, names, dtypes, HashMap::new());
        Ok(Self::over_store(
            dir,
            Store::Safetensors(st),
            parts,
            dtype,
            device,
        ))
    }

    /// A checkpoint reading `store` through a recording `VarBuilder`; `parts` are the file
    /// list, sorted tensor names, per-dtype counts and (multi-file only) stored shapes.
    fn over_store(
        dir: &Path,
        store: Store,
        parts: StoreListing,
        dtype: DType,
        device: &Device,
    ) -> Self {
        let (files, names, dtypes, shapes) = parts;
        let log = Arc::new(Mutex::new(AccessLog::default()));
        let backend = RecordingBackend {
            store,
            log: log.clone(),
        };
        let vb = VarBuilder::from_backend(Box::new(backend), dtype, device.clone());
        Self {
            dir: dir.to_path_buf(),
            files,
            names,
            dtypes,
            log,
            vb,
            prequantized: None,
            shapes,
        }
    }

    /// A checkpoint spread over several files (Video-LLaMA's `eval_config.yaml` names an
    /// EVA ViT file, a BLIP-2 file, two branch checkpoints, ImageBind and an LLM folder).
    /// Model tensor names are `source.prefix + key`; a later source overrides an earlier one.
    pub fn open_sources(
        dir: &Path,
        sources: &[WeightSource],
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        Self::open_sources_with_lora(dir, sources, None, dtype, device)
    }

    /// [`Self::open_sources`], merging LoRA factors (`<module>.lora_A/B[.default].weight`)
    /// into the weight they adapt whenever that weight is read (MiniGPT4-Video).
    pub fn open_sources_with_lora(
        dir: &Path,
        sources: &[WeightSource],
        lora: Option<LoraMerge>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let store = SourceStore::open(sources, lora)?;
        let mut names: Vec<String> = store.names.keys().cloned().collect();
        names.sort();
        let mut dtypes = HashMap::new();
        for (file, key, _) in store.names.values() {
            let dtype = match &store.files[*file].2 {
                SourceFile::Safetensors(st) => st.get(key).map(|e| e.dtype),
                SourceFile::Pth(pth) => pth.tensor_infos().get(key).map(|i| i.dtype),
            };
            if let Some(dt) = dtype {
                *dtypes.entry(format!("{dt:?}").to_uppercase()).or_insert(0) += 1;
            }
        }
        let files = store.files.iter().map(|(_, p, _)| p.clone()).collect();
        let shapes = store
            .names
            .iter()
            .map(|(k, (_, _, shape))| (k.clone(), shape.clone()))
            .collect();
        let parts = (files, names, dtypes, shapes);
        Ok(Self::over_store(
            dir,
            Store::Sources(store),
            parts,
            dtype,
            device,
        ))
    }

    /// The stored shape of a tensor of a multi-file checkpoint, without reading it.
    pub fn stored_shape(&self, name: &str) -> Option<&[usize]> {
        self.shapes.get(name).map(Vec::as_slice)
    }

    /// A `videollama quantize` folder: `file` is its `model.gguf`.
    pub fn open_gguf(dir: &Path, file: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let gguf = Arc::new(GgufFile::open(file).map_err(|e| {
            let msg = videollama_llm::gguf::error_text(&e);
            if msg.contains(&file.display().to_string()) {
                PipelineError::Invalid(msg)
            } else {
                PipelineError::file(file, msg)
            }
        })?);
        let names = gguf.tensor_names();
        let mut dtypes = HashMap::new();
        for name in &names {
            if let Some((t, _)) = gguf.tensor_info(name) {
                *dtypes.entry(format!("{t:?}")).or_insert(0) += 1;
            }
        }
        let mut names = names;
        names.sort();
        let log = Arc::new(Mutex::new(AccessLog::default()));
        let prequantized: Arc<dyn QuantizedWeights> = Arc::new(GgufPrequantized {
            file: gguf.clone(),
            device: device.clone(),
            log: log.clone(),
        });
        let backend = RecordingBackend {
            store: Store::Gguf(gguf),
            log: log.clone(),
        };
        let vb = VarBuilder::from_backend(Box::new(backend), dtype, device.clone());
        Ok(Self {
            dir: dir.to_path_buf(),
            files: vec![file.to_path_buf()],
            names,
            dtypes,
            log,
            vb,
            prequantized: Some(prequantized),
            shapes: HashMap::new(),
        })
    }

    /// The already-quantized weights of a `videollama quantize` folder (`None` for
    /// safetensors checkpoints): give them to the load scopes as
    /// [`crate::WeightOptions::prequantized`].
    pub fn prequantized(&self) -> Option<Arc<dyn QuantizedWeights>> {
        self.prequantized.clone()
    }

    pub fn var_builder(&self) -> VarBuilder<'static> {
        self.vb.clone()
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    pub fn tensor_names(&self) -> &[String] {
        &self.names
    }

    /// Count of stored tensors per on-disk dtype (`F32`, `BF16`, …).
    pub fn stored_dtypes(&self) -> &HashMap<String, usize> {
        &self.dtypes
    }

    /// Fail with every missing tensor and shape mismatch; return the unused names.
    pub fn finish(&self) -> Result<Vec<String>> {
        let log = self.log.lock().expect("checkpoint access log poisoned");
        if !log.missing.is_empty() {
            let names: Vec<_> = log.missing.iter().cloned().collect();
            return Err(PipelineError::MissingTensors {
                dir: self.dir.clone(),
                count: names.len(),
                names: names.join(", "),
            });
        }
        if !log.mismatched.is_empty() {
            return Err(PipelineError::ShapeMismatch {
                dir: self.dir.clone(),
                details: log.mismatched.join("; "),
            });
        }
        Ok(self
            .names
            .iter()
            .filter(|n| !log.used.contains(*n))
            .cloned()
            .collect())
    }
}
