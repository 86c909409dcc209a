//! Reading safetensors shards tensor by tensor with positioned reads (no memory map).
//!
//! Why not mmap: every page of a mapped file that a load touches counts in the process's
//! resident memory for as long as the mapping lives, on top of the converted copy the model
//! keeps — the peak of a load was the file *plus* the weights. Reading each tensor into a
//! buffer, converting it and dropping the buffer keeps the peak at the loaded weights plus
//! one tensor (file pages stay in the kernel's page cache, which is not the process's).
//!
//! Format (safetensors): `u64` little-endian header length `n`, `n` bytes of JSON
//! `{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`,
//! then the data; offsets are relative to the end of the header.

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Where one tensor lives.
#[derive(Debug, Clone)]
pub struct TensorEntry {
    file: usize,
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Absolute byte range in the file.
    begin: u64,
    end: u64,
}

/// The tensors of one or more safetensors files, read on demand.
pub struct SafetensorsFiles {
    files: Vec<(PathBuf, File)>,
    entries: HashMap<String, TensorEntry>,
}

fn dtype_of(s: &str) -> Option<DType> {
    Some(match s {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "F64" => DType::F64,
        "I64" => DType::I64,
        "U32" => DType::U32,
        "U8" | "BOOL" => DType::U8,
        _ => return None,
    })
}

fn bad(path: &Path, cause: impl std::fmt::Display) -> String {
    format!("{}: {cause}", path.display())
}

impl SafetensorsFiles {
    /// Parse every file's header and check that every tensor lies inside its file.
    pub fn open(paths: &[PathBuf]) -> std::result::Result<Self, String> {
        let mut files = Vec::new();
        let mut entries = HashMap::new();
        for (index, path) in paths.iter().enumerate() {
            let file = File::open(path).map_err(|e| bad(path, e))?;
            let len = file.metadata().map_err(|e| bad(path, e))?.len();
            let mut n = [0u8; 8];
            file.read_exact_at(&mut n, 0)
                .map_err(|_| bad(path, "too short to be a safetensors file"))?;
            let n = u64::from_le_bytes(n);
            if n > 100 << 20 || 8 + n > len {
                return Err(bad(path, format!("header of {n} bytes does not fit a {len}-byte file (truncated or not safetensors)")));
            }
            let mut header = vec![0u8; n as usize];
            file.read_exact_at(&mut header, 8)
                .map_err(|e| bad(path, e))?;
            let json: serde_json::Value = serde_json::from_slice(&header)
                .map_err(|e| bad(path, format!("header is not JSON: {e}")))?;
            let obj = json
                .as_object()
                .ok_or_else(|| bad(path, "header is not a JSON object"))?;
            let data_start = 8 + n;
            for (name, info) in obj {
                if name == "__metadata__" {
                    continue;
                }
                let dtype_name = info["dtype"].as_str().unwrap_or("?");
                let dtype = dtype_of(dtype_name).ok_or_else(|| {
                    bad(
                        path,
                        format!("tensor {name}: unsupported dtype {dtype_name}"),
                    )
                })?;
                let shape: Vec<usize> = info["shape"]
                    .as_array()
                    .ok_or_else(|| bad(path, format!("tensor {name}: no shape")))?
                    .iter()
                    .map(|d| d.as_u64().map(|d| d as usize))
                    .collect::<Option<_>>()
                    .ok_or_else(|| bad(path, format!("tensor {name}: bad shape")))?;
                let offsets = info["data_offsets"]
                    .as_array()
                    .and_then(|o| Some((o.first()?.as_u64()?, o.get(1)?.as_u64()?)))
                    .ok_or_else(|| bad(path, format!("tensor {name}: no data_offsets")))?;
                let (begin, end) = (data_start + offsets.0, data_start + offsets.1);
                let want = shape.iter().product::<usize>() as u64 * dtype.size_in_bytes() as u64;
                if end < begin || end - begin != want {
                    return Err(bad(
                        path,
                        format!(
                            "tensor {name}: {} bytes for shape {shape:?} {dtype_name}",
                            end.saturating_sub(begin)
                        ),
                    ));
                }
                if end > len {
                    return Err(bad(
                        path,
                        format!(
                            "tensor {name} ends at byte {end} but the file has {len} (truncated)"
                        ),
                    ));
                }
                entries.insert(
                    name.clone(),
                    TensorEntry {
                        file: index,
                        dtype,
                        shape,
                        begin,
                        end,
                    },
                );
            }
            files.push((path.clone(), file));
        }
        Ok(Self { files, entries })
    }

    pub fn get(&self, name: &str) -> Option<&TensorEntry> {
        self.entries.get(name)
    }

    pub fn tensors(&self) -> impl Iterator<Item = (&String, &TensorEntry)> {
        self.entries.iter()
    }

    /// Read one tensor and convert it to `dtype` on `dev`.
    pub fn load(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let e = self
            .entries
            .get(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("tensor {name} missing")))?;
        let (path, file) = &self.files[e.file];
        let read_err = |err: std::io::Error| {
            candle_core::Error::Msg(bad(path, format!("reading {name}: {err}")))
        };
        if cfg!(target_endian = "little")
            && e.dtype == DType::F32
            && dtype == DType::F32
            && matches!(dev, Device::Cpu)
        {
            // Read straight into the tensor's own buffer: no second copy of the weight.
            let mut values = vec![0f32; (e.end - e.begin) as usize / 4];
            // SAFETY: a f32 slice viewed as bytes; every bit pattern is a valid f32, and
            // safetensors stores little-endian like every platform this runs on.
            let bytes = unsafe {
                std::slice::from_raw_parts_mut(values.as_mut_ptr() as *mut u8, values.len() * 4)
            };
            file.read_exact_at(bytes, e.begin).map_err(read_err)?;
            return Tensor::from_vec(values, e.shape.clone(), dev);
        }
        let mut bytes = vec![0u8; (e.end - e.begin) as usize];
        file.read_exact_at(&mut bytes, e.begin).map_err(read_err)?;
        let t = Tensor::from_raw_buffer(&bytes, e.dtype, &e.shape, dev)?;
        drop(bytes);
        t.to_dtype(dtype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_candle_wrote_and_rejects_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.safetensors");
        let a = Tensor::arange(0f32, 12.0, &Device::Cpu)
            .unwrap()
            .reshape((3, 4))
            .unwrap();
        let b = Tensor::new(&[1u8, 2, 3], &Device::Cpu).unwrap();
        let bf = a.to_dtype(DType::BF16).unwrap();
        candle_core::safetensors::save(
            &HashMap::from([
                ("a".to_string(), a.clone()),
                ("b".to_string(), b),
                ("bf".to_string(), bf),
            ]),
            &path,
        )
        .unwrap();
        let st = SafetensorsFiles::open(&[path.clone()]).unwrap();
        assert_eq!(st.get("a").unwrap().shape, vec![3, 4]);
        let got = st.load("a", DType::F32, &Device::Cpu).unwrap();
        assert_eq!(got.to_vec2::<f32>().unwrap(), a.to_vec2::<f32>().unwrap());
        let got = st.load("bf", DType::F32, &Device::Cpu).unwrap();
        assert_eq!(got.to_vec2::<f32>().unwrap(), a.to_vec2::<f32>().unwrap());
        assert!(st.load("nope", DType::F32, &Device::Cpu).is_err());
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
        let err = SafetensorsFiles::open(&[path.clone()]).err().unwrap();
        assert!(
            err.contains("a.safetensors") && err.contains("truncated"),
            "{err}"
        );
    }
}
