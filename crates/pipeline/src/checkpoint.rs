//! Checkpoint loading from a Hugging Face model folder, exactly as published:
//! a single `model.safetensors`, or shards listed in `model.safetensors.index.json`.
//!
//! Weights are memory-mapped and converted to the compute dtype on access. The
//! [`RecordingBackend`] behind the `VarBuilder` remembers which tensors the model
//! asked for, so that after assembly we can report *all* missing tensors and
//! shape mismatches at once (not just the first), and list the unused ones.

use crate::error::{PipelineError, Result};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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

/// A `SimpleBackend` over memory-mapped safetensors that records every access.
///
/// A missing tensor or a shape mismatch is recorded and answered with zeros so
/// assembly can go on and report every problem; [`Checkpoint::finish`] then turns
/// the record into one error.
struct RecordingBackend {
    st: MmapedSafetensors,
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
        match self.st.get(name) {
            Err(_) => {
                log.missing.insert(name.to_string());
                Tensor::zeros(s, dtype, dev)
            }
            Ok(view) => {
                log.used.insert(name.to_string());
                if view.shape() != s.dims() {
                    log.mismatched.push(format!(
                        "{name}: checkpoint has {:?}, model expects {:?}",
                        view.shape(),
                        s.dims()
                    ));
                    return Tensor::zeros(s, dtype, dev);
                }
                drop(log);
                self.st.load(name, dev)?.to_dtype(dtype)
            }
        }
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let mut log = self.log.lock().expect("checkpoint access log poisoned");
        if self.st.get(name).is_err() {
            log.missing.insert(name.to_string());
            candle_core::bail!("tensor {name} missing");
        }
        log.used.insert(name.to_string());
        drop(log);
        self.st.load(name, dev)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.st.get(name).is_ok()
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
}

impl Checkpoint {
    pub fn open(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let files = find_weight_files(dir)?;
        Self::open_files(dir, files, dtype, device)
    }

    pub fn open_files(
        dir: &Path,
        files: Vec<PathBuf>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        // SAFETY: the files are memory-mapped read-only; like every mmap-based loader we
        // rely on them not being truncated while the process runs.
        let st = unsafe { MmapedSafetensors::multi(&files) }
            .map_err(|e| PipelineError::file(dir, format!("cannot read safetensors: {e}")))?;
        let mut names = Vec::new();
        let mut dtypes = HashMap::new();
        for (name, view) in st.tensors() {
            *dtypes.entry(format!("{:?}", view.dtype())).or_insert(0) += 1;
            names.push(name);
        }
        names.sort();
        let log = Arc::new(Mutex::new(AccessLog::default()));
        let backend = RecordingBackend {
            st,
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
        })
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
