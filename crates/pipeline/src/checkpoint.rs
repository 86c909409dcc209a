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
}

impl Store {
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        match self {
            Store::Safetensors(st) => st.get(name).map(|e| e.shape.clone()),
            Store::Gguf(f) => crate::quantize::stored_shape(f, name),
        }
    }

    fn load(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        match self {
            Store::Safetensors(st) => st.load(name, dtype, dev),
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
                    log.mismatched.push(format!(
                        "{name}: checkpoint has {shape:?}, model expects {:?}",
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
        let log = Arc::new(Mutex::new(AccessLog::default()));
        let backend = RecordingBackend {
            store: Store::Safetensors(st),
            log: log.clone(),
        };
        let vb = VarBuilder::from_backend(Box::new(backend), dtype, device.clone());
        Ok(Self {
            dir: dir.to_path_buf(),
            files,
            names,
            dtypes,
            log,
            vb,
            prequantized: None,
        })
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
