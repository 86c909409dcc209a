//! GGUF files (llama.cpp's format): reading and writing them, and building a [`DecoderLm`]
//! from a llama / mistral / qwen2 GGUF language model.
//!
//! ```text
//! FILE.gguf ─► GgufFile::open    header only: metadata + tensor table; every tensor's type is
//!                                checked (IQ-quants etc. named) and its bytes must lie in the file
//!           ─► GgufLlm::from_file  general.architecture + {arch}.* metadata ─► DecoderConfig
//!           ─► GgufLlm::load_decoder
//!                with_load_scope(source = GgufLlmTensors) { DecoderLm::new(cfg, VarBuilder(GgufLlmTensors)) }
//!                  linear weights: QuantizedWeights::get("model.layers.0.self_attn.q_proj.weight")
//!                      ─► "blk.0.attn_q.weight" read with a plain read ─► rows un-permuted ─► QTensor
//!                  embeddings, norms, biases: SimpleBackend::get ─► dequantized to the compute dtype
//! ```
//!
//! Tensors are read with `seek` + `read_exact` (no mmap) one at a time, so memory holds each
//! weight once: in the model.
//!
//! **Q/K row order.** llama.cpp's converter permutes the rows of `q_proj`/`k_proj` for the
//! architectures whose RoPE rotates adjacent pairs (`llama`, `mistral`): GGUF row
//! `h·d + 2i + j` holds HF row `h·d + j·d/2 + i` (`d` = head_dim, `i < d/2`, `j ∈ {0, 1}`).
//! Our decoder uses HF's rotate-half RoPE, so those rows are put back in HF order while the
//! raw bytes are read (quantization blocks run along the input dimension, so a row is a
//! contiguous run of blocks and is moved whole; nothing is dequantized). `qwen2` files are
//! stored in HF order (llama.cpp runs them with NEOX RoPE, which is rotate-half).
//!
//! [`write_gguf`] writes a GGUF file tensor by tensor (only one tensor's bytes in memory);
//! [`write_decoder_gguf`] exports HF-named decoder weights in llama.cpp's layout.

use crate::config::DecoderConfig;
use crate::decoder::DecoderLm;
use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use std::collections::HashMap;
use std::fmt::Display;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use videollama_nn::{with_load_scope, LoadScope, QuantizedWeights, WeightFormat};

/// The message of a candle error without the backtrace candle appends when
/// `RUST_BACKTRACE` is set, for errors quoted inside another message.
pub fn error_text(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => error_text(inner),
        other => other.to_string(),
    }
}

fn file_err(path: &Path, cause: impl Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("{}: {cause}", path.display()))
}

/// The tensor types candle can load, for error messages.
pub const SUPPORTED_TYPES: &str =
    "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K";

/// llama.cpp's name of a ggml type id (`ggml_type` in ggml.h).
pub fn ggml_type_name(id: u32) -> String {
    let name = match id {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        4 => "Q4_2",
        5 => "Q4_3",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        30 => "BF16",
        31 => "Q4_0_4_4",
        32 => "Q4_0_4_8",
        33 => "Q4_0_8_8",
        34 => "TQ1_0",
        35 => "TQ2_0",
        36 => "IQ4_NL_4_4",
        37 => "IQ4_NL_4_8",
        38 => "IQ4_NL_8_8",
        39 => "MXFP4",
        _ => return format!("unknown type {id}"),
    };
    name.to_string()
}

/// The ggml type id of a candle type (the number stored in a GGUF tensor table).
pub fn ggml_type_id(dtype: GgmlDType) -> u32 {
    match dtype {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q5_0 => 6,
        GgmlDType::Q5_1 => 7,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q8_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11,
        GgmlDType::Q4K => 12,
        GgmlDType::Q5K => 13,
        GgmlDType::Q6K => 14,
        GgmlDType::Q8K => 15,
        GgmlDType::BF16 => 30,
    }
}

/// Is this a plain float type (no quantization blocks)?
pub fn is_float_type(dtype: GgmlDType) -> bool {
    matches!(dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
}

/// Type ids candle's reader accepts (`GgmlDType::from_u32`).
fn candle_reads_type(id: u32) -> bool {
    matches!(id, 0..=3 | 6..=15 | 30)
}

/// Walk the header ourselves to name the tensor whose type candle refused (candle's own
/// error does not say which tensor it was). `None` when the header cannot be walked.
fn find_unreadable_tensor(path: &Path) -> Option<(String, u32)> {
    let mut r = BufReader::new(File::open(path).ok()?);
    let mut b4 = [0u8; 4];
    let mut b8 = [0u8; 8];
    let mut u32_ = |r: &mut BufReader<File>| -> Option<u32> {
        r.read_exact(&mut b4).ok()?;
        Some(u32::from_le_bytes(b4))
    };
    let magic = u32_(&mut r)?;
    if magic != 0x4655_4747 {
        return None;
    }
    let version = u32_(&mut r)?;
    let len = |r: &mut BufReader<File>| -> Option<u64> {
        if version == 1 {
            let mut b = [0u8; 4];
            r.read_exact(&mut b).ok()?;
            Some(u32::from_le_bytes(b) as u64)
        } else {
            let mut b = [0u8; 8];
            r.read_exact(&mut b).ok()?;
            Some(u64::from_le_bytes(b))
        }
    };
    fn skip(r: &mut BufReader<File>, n: u64) -> Option<()> {
        r.seek_relative(i64::try_from(n).ok()?).ok()
    }
    fn skip_value(
        r: &mut BufReader<File>,
        ty: u32,
        len: &dyn Fn(&mut BufReader<File>) -> Option<u64>,
        depth: usize,
    ) -> Option<()> {
        if depth > 64 {
            return None;
        }
        let fixed = |t: u32| -> Option<u64> {
            match t {
                0 | 1 | 7 => Some(1),
                2 | 3 => Some(2),
                4..=6 => Some(4),
                10..=12 => Some(8),
                _ => None,
            }
        };
        match ty {
            8 => {
                let n = len(r)?;
                skip(r, n)
            }
            9 => {
                let mut b = [0u8; 4];
                r.read_exact(&mut b).ok()?;
                let et = u32::from_le_bytes(b);
                let n = len(r)?;
                match fixed(et) {
                    Some(size) => skip(r, n.checked_mul(size)?),
                    None => {
                        for _ in 0..n {
                            skip_value(r, et, len, depth + 1)?;
                        }
                        Some(())
                    }
                }
            }
            t => skip(r, fixed(t)?),
        }
    }
    let n_tensors = len(&mut r)?;
    let n_kv = len(&mut r)?;
    for _ in 0..n_kv {
        let key_len = len(&mut r)?;
        skip(&mut r, key_len)?;
        let ty = u32_(&mut r)?;
        skip_value(&mut r, ty, &len, 0)?;
    }
    for _ in 0..n_tensors {
        let name_len = len(&mut r)?;
        if name_len > 1 << 20 {
            return None;
        }
        let mut name = vec![0u8; name_len as usize];
        r.read_exact(&mut name).ok()?;
        let n_dims = u32_(&mut r)?;
        if n_dims > 4 {
            return None;
        }
        for _ in 0..n_dims {
            len(&mut r)?;
        }
        let ty = u32_(&mut r)?;
        r.read_exact(&mut b8).ok()?;
        if !candle_reads_type(ty) {
            return Some((String::from_utf8_lossy(&name).into_owned(), ty));
        }
    }
    None
}

/// An opened GGUF file: its header in memory, tensors read on demand.
pub struct GgufFile {
    path: PathBuf,
    content: Content,
    file_size: u64,
    file: Mutex<File>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("tensors", &self.content.tensor_infos.len())
            .finish()
    }
}

impl GgufFile {
    /// Read the header and check every tensor: its type must be one candle can load and
    /// its bytes must lie inside the file (a truncated download is caught here).
    pub fn open(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(file_err(path, "no such file"));
        }
        if !path.is_file() {
            return Err(file_err(path, "not a file (expected a .gguf file)"));
        }
        let file = File::open(path).map_err(|e| file_err(path, e))?;
        let file_size = file.metadata().map_err(|e| file_err(path, e))?.len();
        let mut magic = [0u8; 4];
        {
            let mut f = &file;
            if file_size < 4 || f.read_exact(&mut magic).is_err() {
                return Err(file_err(path, "not a GGUF file: it is empty or truncated"));
            }
            if &magic != b"GGUF" {
                return Err(file_err(
                    path,
                    "not a GGUF file (it does not start with the bytes \"GGUF\")",
                ));
            }
            f.seek(SeekFrom::Start(0)).map_err(|e| file_err(path, e))?;
        }
        let content = {
            let mut reader = BufReader::new(&file);
            Content::read(&mut reader)
        }
        .map_err(|e| {
            if let Some((name, ty)) = find_unreadable_tensor(path) {
                file_err(
                    path,
                    format!(
                        "tensor {name} is stored as {} (ggml type {ty}), which candle cannot \
                         load; supported types: {SUPPORTED_TYPES}",
                        ggml_type_name(ty)
                    ),
                )
            } else {
                let cause = error_text(&e);
                if cause.contains("fill whole buffer") || cause.contains("remaining") {
                    file_err(path, format!("truncated or corrupt GGUF header ({cause})"))
                } else {
                    file_err(path, format!("corrupt GGUF header ({cause})"))
                }
            }
        })?;
        let mut infos: Vec<_> = content.tensor_infos.iter().collect();
        infos.sort_by_key(|(_, i)| i.offset);
        for (name, info) in infos {
            let dtype = info.ggml_dtype;
            if matches!(dtype, GgmlDType::Q8_1 | GgmlDType::Q8K) {
                return Err(file_err(
                    path,
                    format!(
                        "tensor {name} is stored as {} (ggml type {}), which candle cannot \
                         load; supported types: {SUPPORTED_TYPES}",
                        ggml_type_name(ggml_type_id(dtype)),
                        ggml_type_id(dtype)
                    ),
                ));
            }
            let dims = info.shape.dims();
            let block = dtype.block_size();
            let row = dims.last().copied().unwrap_or(1);
            if row % block != 0 {
                return Err(file_err(
                    path,
                    format!(
                        "tensor {name}: rows of {row} values do not fit {} blocks of {block}",
                        ggml_type_name(ggml_type_id(dtype))
                    ),
                ));
            }
            let size = (info.shape.elem_count() / block * dtype.type_size()) as u64;
            let end = content
                .tensor_data_offset
                .checked_add(info.offset)
                .and_then(|s| s.checked_add(size))
                .unwrap_or(u64::MAX);
            if end > file_size {
                return Err(file_err(
                    path,
                    format!(
                        "truncated: tensor {name} needs bytes up to {end} but the file has \
                         {file_size} bytes"
                    ),
                ));
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            content,
            file_size,
            file: Mutex::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file_size(&self) -> u64 {
        self.file_size
    }

    /// The parsed header (metadata and tensor table).
    pub fn content(&self) -> &Content {
        &self.content
    }

    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    /// Type and shape (PyTorch order: `[out, in]` for a linear weight) of a tensor.
    pub fn tensor_info(&self, name: &str) -> Option<(GgmlDType, &[usize])> {
        self.content
            .tensor_infos
            .get(name)
            .map(|i| (i.ggml_dtype, i.shape.dims()))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// Tensor names in file order.
    pub fn tensor_names(&self) -> Vec<String> {
        let mut infos: Vec<_> = self.content.tensor_infos.iter().collect();
        infos.sort_by_key(|(_, i)| i.offset);
        infos.into_iter().map(|(n, _)| n.clone()).collect()
    }

    /// The raw bytes of a tensor (its blocks as stored), with its type and shape.
    pub fn read_raw(&self, name: &str) -> Result<(GgmlDType, Vec<usize>, Vec<u8>)> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| file_err(&self.path, format!("no tensor named {name}")))?;
        let dtype = info.ggml_dtype;
        let size = info.shape.elem_count() / dtype.block_size() * dtype.type_size();
        let start = self.content.tensor_data_offset + info.offset;
        let mut buf = vec![0u8; size];
        let mut f = self.file.lock().expect("GGUF file lock poisoned");
        f.seek(SeekFrom::Start(start))
            .and_then(|_| f.read_exact(&mut buf))
            .map_err(|e| file_err(&self.path, format!("reading tensor {name}: {e}")))?;
        Ok((dtype, info.shape.dims().to_vec(), buf))
    }

    /// A tensor as stored (quantized blocks stay quantized).
    pub fn read_qtensor(&self, name: &str, device: &Device) -> Result<QTensor> {
        let (dtype, dims, raw) = self.read_raw(name)?;
        qtensor_from_ggml(dtype, &raw, dims, device)
            .map_err(|e| file_err(&self.path, format!("tensor {name}: {}", error_text(&e))))
    }

    /// A tensor dequantized to `dtype`.
    pub fn read_dense(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        self.read_qtensor(name, device)?
            .dequantize(device)?
            .to_dtype(dtype)
    }

    /// A string metadata value.
    pub fn meta_str(&self, key: &str) -> Option<&str> {
        match self.content.metadata.get(key)? {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// An integer metadata value (any integer type); an error when it has another type.
    pub fn meta_usize(&self, key: &str) -> Result<Option<usize>> {
        let v = match self.content.metadata.get(key) {
            None => return Ok(None),
            Some(v) => v,
        };
        let n: Option<u64> = match v {
            Value::U8(x) => Some(*x as u64),
            Value::U16(x) => Some(*x as u64),
            Value::U32(x) => Some(*x as u64),
            Value::U64(x) => Some(*x),
            Value::I8(x) => u64::try_from(*x).ok(),
            Value::I16(x) => u64::try_from(*x).ok(),
            Value::I32(x) => u64::try_from(*x).ok(),
            Value::I64(x) => u64::try_from(*x).ok(),
            _ => None,
        };
        n.map(|n| Some(n as usize)).ok_or_else(|| {
            file_err(
                &self.path,
                format!("metadata {key} should be a non-negative integer, found {v:?}"),
            )
        })
    }

    /// A float metadata value (f32, f64 or an integer).
    pub fn meta_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.content.metadata.get(key) {
            None => Ok(None),
            Some(Value::F32(x)) => Ok(Some(*x as f64)),
            Some(Value::F64(x)) => Ok(Some(*x)),
            Some(_) => self.meta_usize(key).map(|n| n.map(|n| n as f64)),
        }
    }
}

/// The decoder architectures a GGUF language model may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufArch {
    Llama,
    Mistral,
    Qwen2,
}

impl GgufArch {
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "llama" => Some(Self::Llama),
            "mistral" => Some(Self::Mistral),
            "qwen2" => Some(Self::Qwen2),
            _ => None,
        }
    }

    /// `general.architecture` value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Mistral => "mistral",
            Self::Qwen2 => "qwen2",
        }
    }

    /// Does llama.cpp's converter permute the q/k rows for this architecture (its RoPE
    /// rotates adjacent pairs)?
    pub fn permuted_qk(self) -> bool {
        matches!(self, Self::Llama | Self::Mistral)
    }

    /// `rope_theta` when `{arch}.rope.freq_base` is absent.
    pub fn default_rope_theta(self) -> f64 {
        match self {
            Self::Qwen2 => 1_000_000.0,
            Self::Llama | Self::Mistral => 10_000.0,
        }
    }
}

/// Per-layer parts: HF name (below `model.layers.N.`) and llama.cpp name (below `blk.N.`).
const LAYER_NAMES: &[(&str, &str)] = &[
    ("input_layernorm", "attn_norm"),
    ("post_attention_layernorm", "ffn_norm"),
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
];

/// Top-level parts: HF name and llama.cpp name.
const TOP_NAMES: &[(&str, &str)] = &[
    ("model.embed_tokens", "token_embd"),
    ("model.norm", "output_norm"),
    ("lm_head", "output"),
];

fn split_suffix(name: &str) -> Option<(&str, &str)> {
    let (stem, suffix) = name.rsplit_once('.')?;
    matches!(suffix, "weight" | "bias").then_some((stem, suffix))
}

/// `model.layers.3.self_attn.q_proj.weight` → `blk.3.attn_q.weight` (llama.cpp's names).
pub fn hf_to_gguf_name(name: &str) -> Option<String> {
    let (stem, suffix) = split_suffix(name)?;
    if let Some((_, g)) = TOP_NAMES.iter().find(|(hf, _)| *hf == stem) {
        return Some(format!("{g}.{suffix}"));
    }
    let (idx, part) = stem.strip_prefix("model.layers.")?.split_once('.')?;
    idx.parse::<usize>().ok()?;
    let (_, g) = LAYER_NAMES.iter().find(|(hf, _)| *hf == part)?;
    Some(format!("blk.{idx}.{g}.{suffix}"))
}

/// The inverse of [`hf_to_gguf_name`].
pub fn gguf_to_hf_name(name: &str) -> Option<String> {
    let (stem, suffix) = split_suffix(name)?;
    if let Some((hf, _)) = TOP_NAMES.iter().find(|(_, g)| *g == stem) {
        return Some(format!("{hf}.{suffix}"));
    }
    let (idx, part) = stem.strip_prefix("blk.")?.split_once('.')?;
    idx.parse::<usize>().ok()?;
    let (hf, _) = LAYER_NAMES.iter().find(|(_, g)| *g == part)?;
    Some(format!("model.layers.{idx}.{hf}.{suffix}"))
}

/// Move whole rows between llama.cpp's interleaved q/k order and HF's rotate-half order.
/// `bytes` holds `rows` rows of equal length; `heads` heads of `rows / heads` rows each.
fn reorder_qk_rows(bytes: &[u8], rows: usize, heads: usize, to_hf: bool) -> Result<Vec<u8>> {
    if rows == 0 || heads == 0 || rows % heads != 0 || (rows / heads) % 2 != 0 {
        candle_core::bail!("cannot reorder {rows} q/k rows into {heads} heads of even size")
    }
    if bytes.len() % rows != 0 {
        candle_core::bail!("{} bytes do not split into {rows} rows", bytes.len())
    }
    let row = bytes.len() / rows;
    let d = rows / heads;
    let half = d / 2;
    let mut out = vec![0u8; bytes.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let g = h * d + 2 * i + j;
                let f = h * d + j * half + i;
                let (src, dst) = if to_hf { (g, f) } else { (f, g) };
                out[dst * row..(dst + 1) * row].copy_from_slice(&bytes[src * row..(src + 1) * row]);
            }
        }
    }
    Ok(out)
}

/// Undo llama.cpp's q/k permutation on the raw bytes of a `[rows, …]` tensor whose rows
/// are contiguous runs of blocks (GGUF order → HF order).
pub fn unpermute_qk_rows(bytes: &[u8], rows: usize, heads: usize) -> Result<Vec<u8>> {
    reorder_qk_rows(bytes, rows, heads, true)
}

/// Apply llama.cpp's q/k permutation (HF order → GGUF order), for writers.
pub fn permute_qk_rows(bytes: &[u8], rows: usize, heads: usize) -> Result<Vec<u8>> {
    reorder_qk_rows(bytes, rows, heads, false)
}

/// A GGUF language model: the file, its architecture and the decoder configuration its
/// metadata describes. Cheap to clone.
#[derive(Debug, Clone)]
pub struct GgufLlm {
    file: Arc<GgufFile>,
    arch: GgufArch,
    config: DecoderConfig,
}

impl GgufLlm {
    pub fn open(path: &Path) -> Result<Self> {
        Self::from_file(Arc::new(GgufFile::open(path)?))
    }

    /// Read the architecture and the decoder configuration from the metadata.
    pub fn from_file(file: Arc<GgufFile>) -> Result<Self> {
        let path = file.path().to_path_buf();
        let arch_name = file.meta_str("general.architecture").ok_or_else(|| {
            file_err(
                &path,
                "no general.architecture in the metadata: not a GGUF model",
            )
        })?;
        let arch = GgufArch::from_name(arch_name).ok_or_else(|| {
            file_err(
                &path,
                format!(
                    "unsupported architecture {arch_name:?} (supported: llama, mistral, qwen2)"
                ),
            )
        })?;
        let a = arch.name();
        let opt = |k: &str| file.meta_usize(&format!("{a}.{k}"));
        let req = |k: &str| -> Result<usize> {
            opt(k)?.ok_or_else(|| file_err(&path, format!("metadata {a}.{k} is missing")))
        };
        let hidden = req("embedding_length")?;
        let layers = req("block_count")?;
        let heads = req("attention.head_count")?;
        let kv_heads = opt("attention.head_count_kv")?.unwrap_or(heads);
        let ffn = req("feed_forward_length")?;
        let eps = file
            .meta_f64(&format!("{a}.attention.layer_norm_rms_epsilon"))?
            .ok_or_else(|| {
                file_err(
                    &path,
                    format!("metadata {a}.attention.layer_norm_rms_epsilon is missing"),
                )
            })?;
        let theta = file
            .meta_f64(&format!("{a}.rope.freq_base"))?
            .unwrap_or(arch.default_rope_theta());
        let context = opt("context_length")?.unwrap_or(4096);
        if opt("expert_count")?.unwrap_or(0) > 0 {
            return Err(file_err(
                &path,
                "mixture-of-experts GGUF models are not supported",
            ));
        }
        if heads == 0 || kv_heads == 0 {
            return Err(file_err(&path, "attention head counts must be positive"));
        }
        let head_dim = opt("attention.key_length")?.unwrap_or(hidden / heads);
        if let Some(rot) = opt("rope.dimension_count")? {
            if rot != head_dim {
                return Err(file_err(
                    &path,
                    format!(
                        "{a}.rope.dimension_count is {rot} but heads are {head_dim} wide; \
                         partial rotary embeddings are not supported"
                    ),
                ));
            }
        }
        let (embd_type, embd) = file
            .tensor_info("token_embd.weight")
            .ok_or_else(|| file_err(&path, "no token_embd.weight tensor"))?;
        let _ = embd_type;
        let vocab = match *embd {
            [v, h] if h == hidden => v,
            _ => {
                return Err(file_err(
                    &path,
                    format!(
                        "token_embd.weight has shape {embd:?}, expected [vocab, {hidden}] \
                         ({a}.embedding_length)"
                    ),
                ))
            }
        };
        let tie = !file.contains("output.weight");
        let bias = arch == GgufArch::Qwen2 || file.contains("blk.0.attn_q.bias");
        let json = serde_json::json!({
            "vocab_size": vocab,
            "hidden_size": hidden,
            "intermediate_size": ffn,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "head_dim": head_dim,
            "rms_norm_eps": eps,
            "rope_theta": theta,
            "max_position_embeddings": context,
            "tie_word_embeddings": tie,
            "hidden_act": "silu",
        });
        let mut config = DecoderConfig::from_json_str(&json.to_string()).map_err(|e| {
            file_err(
                &path,
                format!("building the decoder config: {}", error_text(&e)),
            )
        })?;
        config.attention_bias = bias;
        Ok(Self { file, arch, config })
    }

    pub fn arch(&self) -> GgufArch {
        self.arch
    }

    pub fn config(&self) -> &DecoderConfig {
        &self.config
    }

    pub fn file(&self) -> &Arc<GgufFile> {
        &self.file
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// `general.name`, when the file has one.
    pub fn name(&self) -> Option<&str> {
        self.file.meta_str("general.name")
    }

    /// Heads whose rows must be un-permuted, for q/k tensors of permuted architectures.
    fn qk_heads(&self, gguf_name: &str) -> Option<usize> {
        if !self.arch.permuted_qk() {
            return None;
        }
        let (stem, _) = split_suffix(gguf_name)?;
        if stem.ends_with(".attn_q") {
            Some(self.config.num_attention_heads)
        } else if stem.ends_with(".attn_k") {
            Some(self.config.num_key_value_heads)
        } else {
            None
        }
    }

    /// The tensor an HF name stands for, rows in HF order; `Ok(None)` when the file does
    /// not have it.
    pub fn read_hf(&self, hf_name: &str, device: &Device) -> Result<Option<QTensor>> {
        let Some(g) = hf_to_gguf_name(hf_name) else {
            return Ok(None);
        };
        if !self.file.contains(&g) {
            return Ok(None);
        }
        let path = self.file.path();
        let (dtype, dims, mut raw) = self.file.read_raw(&g)?;
        if let Some(heads) = self.qk_heads(&g) {
            let rows = dims[0];
            if dims.len() == 1 && dtype.block_size() != 1 {
                return Err(file_err(
                    path,
                    format!("tensor {g}: a 1-D q/k tensor stored in blocks cannot be reordered"),
                ));
            }
            raw = unpermute_qk_rows(&raw, rows, heads)
                .map_err(|e| file_err(path, format!("tensor {g}: {}", error_text(&e))))?;
        }
        qtensor_from_ggml(dtype, &raw, dims, device)
            .map(Some)
            .map_err(|e| file_err(path, format!("tensor {g}: {}", error_text(&e))))
    }

    /// Tensors by HF name, for [`DecoderLm::new`]: quantized linear weights through
    /// [`QuantizedWeights`], the rest dequantized through a `VarBuilder`.
    pub fn tensors(&self, device: &Device) -> GgufLlmTensors {
        GgufLlmTensors {
            llm: self.clone(),
            device: device.clone(),
            convert: None,
        }
    }

    /// Build the decoder; embeddings, norms and biases are always dequantized to `dtype`.
    ///
    /// * `quantize: Some(format)` — the fast mode: linear weights stay in their stored
    ///   blocks (integer-dot kernels), except the formats candle has no SIMD kernel for
    ///   (Q4_1, Q5_0, Q5_1: [`has_slow_cpu_kernel`]), which are converted to `format` (Q8_0
    ///   when their rows do not fit its blocks) one tensor at a time — an 8-bit
    ///   re-quantization of 4/5-bit values that costs almost no accuracy but runs several
    ///   times faster; a tied `lm_head` (the embedding table) is quantized to `format`.
    /// * `None` — the exact mode: every weight dequantized to dense `dtype`, so the
    ///   products are those of the file's values (as llama.cpp-free reference code
    ///   computes them), at 4–8× the memory of the file.
    pub fn load_decoder(
        &self,
        dtype: DType,
        device: &Device,
        quantize: Option<WeightFormat>,
    ) -> Result<DecoderLm> {
        let tensors = GgufLlmTensors {
            convert: quantize,
            ..self.tensors(device)
        };
        let vb = VarBuilder::from_backend(Box::new(tensors.clone()), dtype, device.clone());
        let scope = match quantize {
            None => LoadScope::default(),
            Some(_) => LoadScope {
                quantize,
                source: Some(Arc::new(tensors)),
            },
        };
        with_load_scope(scope, || DecoderLm::new(&self.config, vb))
    }
}

/// HF-named access to a [`GgufLlm`]'s tensors on one device.
#[derive(Debug, Clone)]
pub struct GgufLlmTensors {
    llm: GgufLlm,
    device: Device,
    /// Convert weights with slow CPU kernels to this format.
    convert: Option<WeightFormat>,
}

/// Block formats candle has no SIMD dot product for on x86 (scalar loops, several times
/// slower than Q4_0, Q8_0 and the K-quants).
pub fn has_slow_cpu_kernel(dtype: GgmlDType) -> bool {
    matches!(dtype, GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1)
}

impl QuantizedWeights for GgufLlmTensors {
    /// Linear weights (2-D) as stored. A read error is answered with `None`: the layer
    /// then asks the `VarBuilder`, which reports the same error.
    fn get(&self, name: &str) -> Option<Arc<QTensor>> {
        let g = hf_to_gguf_name(name)?;
        let (_, dims) = self.llm.file.tensor_info(&g)?;
        let [_, in_dim] = *dims else {
            return None;
        };
        let q = self.llm.read_hf(name, &self.device).ok().flatten()?;
        let q = match self.convert {
            Some(format) if has_slow_cpu_kernel(q.dtype()) => {
                let target = [format, WeightFormat::Q8_0]
                    .into_iter()
                    .find(|f| in_dim % f.block_size() == 0)?;
                let w = q.dequantize(&self.device).ok()?;
                QTensor::quantize(&w, target.ggml_dtype()).ok()?
            }
            _ => q,
        };
        Some(Arc::new(q))
    }
}

impl SimpleBackend for GgufLlmTensors {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        let t = self.get_unchecked(name, dtype, dev)?;
        if t.dims() != s.dims() {
            candle_core::bail!(
                "{}: tensor {} (for {name}) has shape {:?}, the model expects {:?}",
                self.llm.path().display(),
                hf_to_gguf_name(name).unwrap_or_default(),
                t.dims(),
                s.dims()
            )
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        let path = self.llm.path();
        let q = self.llm.read_hf(name, dev)?.ok_or_else(|| {
            let g = hf_to_gguf_name(name).unwrap_or_else(|| "(no GGUF name)".into());
            file_err(path, format!("tensor {g} (for {name}) is missing"))
        })?;
        q.dequantize(dev)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        hf_to_gguf_name(name).is_some_and(|g| self.llm.file.contains(&g))
    }
}

/// Open a GGUF language model and build its decoder in the fast mode (linear weights
/// quantized as stored, Q4_1/Q5_0/Q5_1 converted to Q8_0; dense parts in `dtype`); see
/// [`GgufLlm::load_decoder`] for the exact mode.
pub fn load_gguf_decoder(
    path: &Path,
    dtype: DType,
    device: &Device,
) -> Result<(DecoderLm, GgufLlm)> {
    let llm = GgufLlm::open(path)?;
    let model = llm.load_decoder(dtype, device, Some(WeightFormat::Q8_0))?;
    Ok((model, llm))
}

// ---------------------------------------------------------------------------------------
// Writing

/// One tensor of a GGUF file to write: name, storage type, shape in PyTorch order.
#[derive(Debug, Clone)]
pub struct GgufTensorEntry {
    pub name: String,
    pub dtype: GgmlDType,
    pub dims: Vec<usize>,
}

impl GgufTensorEntry {
    pub fn new(name: impl Into<String>, dtype: GgmlDType, dims: &[usize]) -> Self {
        Self {
            name: name.into(),
            dtype,
            dims: dims.to_vec(),
        }
    }

    /// Bytes of the stored tensor; an error when its rows do not fit the type's blocks.
    pub fn size_in_bytes(&self) -> Result<usize> {
        if self.dims.len() > 4 {
            candle_core::bail!(
                "tensor {}: GGUF tensors have at most 4 dimensions, {:?} has {}",
                self.name,
                self.dims,
                self.dims.len()
            )
        }
        let block = self.dtype.block_size();
        let row = self.dims.last().copied().unwrap_or(1);
        if row % block != 0 {
            candle_core::bail!(
                "tensor {}: rows of {row} values do not fit {:?} blocks of {block}",
                self.name,
                self.dtype
            )
        }
        Ok(self.dims.iter().product::<usize>() / block * self.dtype.type_size())
    }
}

const ALIGNMENT: u64 = 32;

fn value_type_id(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn write_str<W: Write>(w: &mut W, s: &str) -> std::io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

fn write_value<W: Write>(w: &mut W, v: &Value) -> Result<()> {
    match v {
        Value::U8(x) => w.write_all(&x.to_le_bytes())?,
        Value::I8(x) => w.write_all(&x.to_le_bytes())?,
        Value::U16(x) => w.write_all(&x.to_le_bytes())?,
        Value::I16(x) => w.write_all(&x.to_le_bytes())?,
        Value::U32(x) => w.write_all(&x.to_le_bytes())?,
        Value::I32(x) => w.write_all(&x.to_le_bytes())?,
        Value::U64(x) => w.write_all(&x.to_le_bytes())?,
        Value::I64(x) => w.write_all(&x.to_le_bytes())?,
        Value::F32(x) => w.write_all(&x.to_le_bytes())?,
        Value::F64(x) => w.write_all(&x.to_le_bytes())?,
        Value::Bool(x) => w.write_all(&[*x as u8])?,
        Value::String(s) => write_str(w, s)?,
        Value::Array(items) => {
            let ty = items.first().map(value_type_id).unwrap_or(0);
            if items.iter().any(|i| value_type_id(i) != ty) {
                candle_core::bail!("GGUF arrays must hold values of one type")
            }
            w.write_all(&ty.to_le_bytes())?;
            w.write_all(&(items.len() as u64).to_le_bytes())?;
            for item in items {
                write_value(w, item)?;
            }
        }
    }
    Ok(())
}

fn pad<W: Write>(w: &mut W, written: u64) -> std::io::Result<u64> {
    let padding = (ALIGNMENT - written % ALIGNMENT) % ALIGNMENT;
    w.write_all(&vec![0u8; padding as usize])?;
    Ok(padding)
}

/// Write a GGUF (v3) file: the metadata and the tensor table first, then the bytes of each
/// tensor as `data(index, entry)` produces them, so only one tensor is in memory at a time.
/// `data` must return exactly [`GgufTensorEntry::size_in_bytes`] bytes (the stored blocks,
/// e.g. `QTensor::data()`, or little-endian floats).
pub fn write_gguf<W: Write>(
    w: &mut W,
    metadata: &[(String, Value)],
    tensors: &[GgufTensorEntry],
    mut data: impl FnMut(usize, &GgufTensorEntry) -> Result<Vec<u8>>,
) -> Result<()> {
    // Header: counted through a buffer so the padding after it is known.
    let mut header = Vec::new();
    header.extend_from_slice(&0x4655_4747u32.to_le_bytes());
    header.extend_from_slice(&3u32.to_le_bytes());
    header.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    header.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        write_str(&mut header, key)?;
        header.extend_from_slice(&value_type_id(value).to_le_bytes());
        write_value(&mut header, value)?;
    }
    let mut offset: u64 = 0;
    let mut sizes = Vec::with_capacity(tensors.len());
    for t in tensors {
        let size = t.size_in_bytes()? as u64;
        write_str(&mut header, &t.name)?;
        header.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for &d in t.dims.iter().rev() {
            header.extend_from_slice(&(d as u64).to_le_bytes());
        }
        header.extend_from_slice(&ggml_type_id(t.dtype).to_le_bytes());
        header.extend_from_slice(&offset.to_le_bytes());
        sizes.push(size);
        offset += size + (ALIGNMENT - size % ALIGNMENT) % ALIGNMENT;
    }
    w.write_all(&header)?;
    let mut pos = header.len() as u64;
    pos += pad(w, pos)?;
    for (i, (t, size)) in tensors.iter().zip(sizes).enumerate() {
        let bytes = data(i, t)?;
        if bytes.len() as u64 != size {
            candle_core::bail!(
                "tensor {}: {} bytes given, {size} expected for {:?} {:?}",
                t.name,
                bytes.len(),
                t.dtype,
                t.dims
            )
        }
        w.write_all(&bytes)?;
        pos += bytes.len() as u64;
        pos += pad(w, pos)?;
    }
    w.flush()?;
    Ok(())
}

/// The stored bytes of a tensor in `dtype` (F32/F16/BF16 as little-endian floats,
/// anything else quantized with candle's quantizer, as `--quantize` does at load).
pub fn tensor_bytes(t: &Tensor, dtype: GgmlDType) -> Result<Vec<u8>> {
    let t = t.to_dtype(DType::F32)?.contiguous()?;
    Ok(QTensor::quantize(&t, dtype)?.data()?.into_owned())
}

/// The HF names of a decoder's tensors, in llama.cpp's usual file order.
pub fn decoder_tensor_names(cfg: &DecoderConfig) -> Vec<String> {
    let mut names = vec!["model.embed_tokens.weight".to_string()];
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        names.push(format!("{p}.input_layernorm.weight"));
        for n in ["q", "k", "v"] {
            names.push(format!("{p}.self_attn.{n}_proj.weight"));
            if cfg.attention_bias {
                names.push(format!("{p}.self_attn.{n}_proj.bias"));
            }
        }
        names.push(format!("{p}.self_attn.o_proj.weight"));
        names.push(format!("{p}.post_attention_layernorm.weight"));
        for n in ["gate", "up", "down"] {
            names.push(format!("{p}.mlp.{n}_proj.weight"));
        }
    }
    names.push("model.norm.weight".to_string());
    if !cfg.tie_word_embeddings {
        names.push("lm_head.weight".to_string());
    }
    names
}

/// The `{arch}.*` metadata llama.cpp writes for a decoder configuration.
pub fn decoder_metadata(arch: GgufArch, cfg: &DecoderConfig) -> Vec<(String, Value)> {
    let a = arch.name();
    let u = |n: usize| Value::U32(n as u32);
    vec![
        ("general.architecture".into(), Value::String(a.into())),
        (
            format!("{a}.context_length"),
            u(cfg.max_position_embeddings),
        ),
        (format!("{a}.embedding_length"), u(cfg.hidden_size)),
        (format!("{a}.feed_forward_length"), u(cfg.intermediate_size)),
        (format!("{a}.block_count"), u(cfg.num_hidden_layers)),
        (
            format!("{a}.attention.head_count"),
            u(cfg.num_attention_heads),
        ),
        (
            format!("{a}.attention.head_count_kv"),
            u(cfg.num_key_value_heads),
        ),
        (format!("{a}.rope.dimension_count"), u(cfg.head_dim)),
        (
            format!("{a}.rope.freq_base"),
            Value::F32(cfg.rope_theta as f32),
        ),
        (
            format!("{a}.attention.layer_norm_rms_epsilon"),
            Value::F32(cfg.rms_norm_eps as f32),
        ),
    ]
}

/// Write HF-named decoder weights as a llama.cpp-style GGUF language model: llama.cpp's
/// names and metadata, q/k rows permuted for `llama`/`mistral`, linear weights in
/// `linear_type` (F32 when a row does not fit its blocks), everything else F32.
/// `tensor(name)` returns the HF tensor; `extra` metadata (tokenizer, chat template) is
/// appended. Returns the number of bytes written.
pub fn write_decoder_gguf(
    path: &Path,
    arch: GgufArch,
    cfg: &DecoderConfig,
    linear_type: GgmlDType,
    extra: &[(String, Value)],
    mut tensor: impl FnMut(&str) -> Result<Tensor>,
) -> Result<u64> {
    let mut entries = Vec::new();
    let mut hf_names = Vec::new();
    for hf in decoder_tensor_names(cfg) {
        let g = hf_to_gguf_name(&hf).expect("decoder names all map");
        let dims: Vec<usize> = if hf == "model.embed_tokens.weight" || hf == "lm_head.weight" {
            vec![cfg.vocab_size, cfg.hidden_size]
        } else if hf.ends_with("norm.weight") {
            vec![cfg.hidden_size]
        } else if hf.ends_with(".bias") {
            vec![if hf.contains("q_proj") {
                cfg.q_dim()
            } else {
                cfg.kv_dim()
            }]
        } else if hf.contains("q_proj") {
            vec![cfg.q_dim(), cfg.hidden_size]
        } else if hf.contains("k_proj") || hf.contains("v_proj") {
            vec![cfg.kv_dim(), cfg.hidden_size]
        } else if hf.contains("o_proj") {
            vec![cfg.hidden_size, cfg.q_dim()]
        } else if hf.contains("down_proj") {
            vec![cfg.hidden_size, cfg.intermediate_size]
        } else {
            vec![cfg.intermediate_size, cfg.hidden_size]
        };
        let linear = hf.ends_with("_proj.weight") || hf == "lm_head.weight";
        let dtype = if linear && dims[1] % linear_type.block_size() == 0 {
            linear_type
        } else {
            GgmlDType::F32
        };
        entries.push(GgufTensorEntry::new(g, dtype, &dims));
        hf_names.push(hf);
    }
    let mut metadata = decoder_metadata(arch, cfg);
    metadata.extend(extra.iter().cloned());
    let file = File::create(path).map_err(|e| file_err(path, e))?;
    let mut w = std::io::BufWriter::new(file);
    write_gguf(&mut w, &metadata, &entries, |i, e| {
        let hf = &hf_names[i];
        let t = tensor(hf)?;
        if t.dims() != e.dims.as_slice() {
            candle_core::bail!("{hf}: shape {:?}, expected {:?}", t.dims(), e.dims)
        }
        let heads = if !arch.permuted_qk() {
            None
        } else if hf.contains("q_proj") {
            Some(cfg.num_attention_heads)
        } else if hf.contains("k_proj") {
            Some(cfg.num_key_value_heads)
        } else {
            None
        };
        let t = match heads {
            Some(h) => {
                let rows = e.dims[0];
                let idx: Vec<u32> = (0..rows as u32).collect();
                let perm = permute_qk_rows(
                    &idx.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<_>>(),
                    rows,
                    h,
                )?;
                let perm: Vec<u32> = perm
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                t.index_select(&Tensor::new(perm.as_slice(), t.device())?, 0)?
            }
            None => t,
        };
        tensor_bytes(&t, e.dtype)
    })
    .map_err(|e| file_err(path, e))?;
    w.into_inner()
        .map_err(|e| file_err(path, e.error()))?
        .sync_all()
        .map_err(|e| file_err(path, e))?;
    Ok(std::fs::metadata(path)
        .map_err(|e| file_err(path, e))?
        .len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::gguf_file;

    /// A fresh scratch folder under the system temp dir, removed on drop.
    struct Scratch(PathBuf);
    impl Scratch {
        fn new(tag: &str) -> Self {
            let p =
                std::env::temp_dir().join(format!("videollama-gguf-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
        fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn cfg(tie: bool) -> DecoderConfig {
        let mut c = DecoderConfig::from_json_str(&format!(
            r#"{{"vocab_size": 40, "hidden_size": 64, "intermediate_size": 96,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 256,
                "tie_word_embeddings": {tie}}}"#
        ))
        .unwrap();
        c.attention_bias = false;
        c
    }

    /// Deterministic pseudo-random HF weights for `cfg`.
    fn hf_weights(cfg: &DecoderConfig) -> HashMap<String, Tensor> {
        let mut seed = 11u64;
        let mut rnd = |shape: &[usize], scale: f32, offset: f32| {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (((seed >> 33) as f64 / (1u64 << 31) as f64) as f32 * 2.0 - 1.0) * scale
                        + offset
                })
                .collect();
            Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
        };
        let (h, i, v, q, kv) = (
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.vocab_size,
            cfg.q_dim(),
            cfg.kv_dim(),
        );
        let mut ts = HashMap::new();
        for name in decoder_tensor_names(cfg) {
            let t = if name.ends_with("norm.weight") {
                rnd(&[h], 0.1, 1.0)
            } else if name.contains("embed_tokens") || name.contains("lm_head") {
                rnd(&[v, h], 1.0, 0.0)
            } else if name.ends_with(".bias") {
                rnd(&[if name.contains("q_proj") { q } else { kv }], 0.3, 0.0)
            } else if name.contains("q_proj") {
                rnd(&[q, h], 0.3, 0.0)
            } else if name.contains("k_proj") || name.contains("v_proj") {
                rnd(&[kv, h], 0.3, 0.0)
            } else if name.contains("o_proj") {
                rnd(&[h, q], 0.3, 0.0)
            } else if name.contains("down_proj") {
                rnd(&[h, i], 0.3, 0.0)
            } else {
                rnd(&[i, h], 0.3, 0.0)
            };
            ts.insert(name, t);
        }
        ts
    }

    /// llama.cpp's converter permutation, written independently of `permute_qk_rows`:
    /// `w.reshape(n_head, 2, d/2, in).swapaxes(1, 2).reshape(out, in)`.
    fn llama_cpp_permute(w: &Tensor, heads: usize) -> Tensor {
        let dims = w.dims().to_vec();
        let out = dims[0];
        let rest: usize = dims[1..].iter().product();
        w.reshape((heads, 2, out / heads / 2, rest))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape(dims)
            .unwrap()
    }

    /// Write `weights` as a llama.cpp-style GGUF with candle's writer (q/k permuted by hand).
    fn write_with_candle(
        path: &Path,
        arch: GgufArch,
        cfg: &DecoderConfig,
        weights: &HashMap<String, Tensor>,
        linear: GgmlDType,
    ) {
        let mut qts = Vec::new();
        for hf in decoder_tensor_names(cfg) {
            let mut t = weights[&hf].clone();
            if arch.permuted_qk() {
                if hf.contains("q_proj") {
                    t = llama_cpp_permute(&t, cfg.num_attention_heads);
                } else if hf.contains("k_proj") {
                    t = llama_cpp_permute(&t, cfg.num_key_value_heads);
                }
            }
            let is_linear = hf.ends_with("_proj.weight") || hf == "lm_head.weight";
            let q = QTensor::quantize(&t, if is_linear { linear } else { GgmlDType::F32 }).unwrap();
            qts.push((hf_to_gguf_name(&hf).unwrap(), q));
        }
        let meta = decoder_metadata(arch, cfg);
        let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let t_refs: Vec<(&str, &QTensor)> = qts.iter().map(|(n, q)| (n.as_str(), q)).collect();
        let mut f = File::create(path).unwrap();
        gguf_file::write(&mut f, &meta_refs, &t_refs).unwrap();
    }

    fn max_abs(t: &Tensor) -> f32 {
        t.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    fn logits(m: &DecoderLm, ids: &[u32]) -> Tensor {
        let mut c = m.new_cache();
        m.forward_tokens(&ids[..4], &mut c).unwrap();
        m.forward_tokens(&ids[4..], &mut c).unwrap()
    }

    #[test]
    fn names_map_both_ways() {
        for (hf, g) in [
            ("model.embed_tokens.weight", "token_embd.weight"),
            (
                "model.layers.12.input_layernorm.weight",
                "blk.12.attn_norm.weight",
            ),
            ("model.layers.0.self_attn.q_proj.bias", "blk.0.attn_q.bias"),
            (
                "model.layers.3.self_attn.o_proj.weight",
                "blk.3.attn_output.weight",
            ),
            (
                "model.layers.3.post_attention_layernorm.weight",
                "blk.3.ffn_norm.weight",
            ),
            (
                "model.layers.1.mlp.down_proj.weight",
                "blk.1.ffn_down.weight",
            ),
            ("model.norm.weight", "output_norm.weight"),
            ("lm_head.weight", "output.weight"),
        ] {
            assert_eq!(hf_to_gguf_name(hf).as_deref(), Some(g));
            assert_eq!(gguf_to_hf_name(g).as_deref(), Some(hf));
        }
        assert_eq!(hf_to_gguf_name("model.layers.x.mlp.up_proj.weight"), None);
        assert_eq!(hf_to_gguf_name("model.mm_projector.0.weight"), None);
    }

    #[test]
    fn qk_permutation_round_trips_and_matches_llama_cpp() {
        let w = Tensor::arange(0f32, 8.0 * 3.0, &Device::Cpu)
            .unwrap()
            .reshape((8, 3))
            .unwrap();
        let bytes: Vec<u8> = w
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let permuted = permute_qk_rows(&bytes, 8, 2).unwrap();
        let want = llama_cpp_permute(&w, 2);
        let got: Vec<f32> = permuted
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(got, want.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        assert_eq!(unpermute_qk_rows(&permuted, 8, 2).unwrap(), bytes);
        assert!(unpermute_qk_rows(&bytes, 8, 3).is_err());
    }

    /// A llama GGUF (q/k permuted by llama.cpp's rule, candle's writer) loads to the same
    /// logits as the HF weights: exactly for F32 tensors, closely for Q8_0. Also with tied
    /// embeddings and qwen2 (no permutation, q/k/v biases).
    #[test]
    fn gguf_llama_logits_equal_hf_logits() {
        let dir = Scratch::new("logits");
        let ids = [3u32, 17, 25, 8, 8, 1, 29, 39, 0];
        for (arch, tie, bias) in [
            (GgufArch::Llama, false, false),
            (GgufArch::Llama, true, true),
            (GgufArch::Qwen2, false, true),
        ] {
            let mut c = cfg(tie);
            c.attention_bias = bias;
            let w = hf_weights(&c);
            let hf = DecoderLm::new(
                &c,
                VarBuilder::from_tensors(w.clone(), DType::F32, &Device::Cpu),
            )
            .unwrap();
            let want = logits(&hf, &ids);
            let scale = max_abs(&want).max(1.0);
            // The HF weights with every linear weight rounded through Q8_0 / Q4_1.
            let rounded = |t: GgmlDType| -> HashMap<String, Tensor> {
                w.iter()
                    .map(|(n, x)| {
                        let linear = n.ends_with("_proj.weight") || n == "lm_head.weight";
                        let x = if linear {
                            QTensor::quantize(x, t)
                                .unwrap()
                                .dequantize(&Device::Cpu)
                                .unwrap()
                        } else {
                            x.clone()
                        };
                        (n.clone(), x)
                    })
                    .collect()
            };
            let d = |a: &Tensor, b: &Tensor| max_abs(&(a - b).unwrap());
            let top = |t: &Tensor| t.argmax(0).unwrap().to_scalar::<u32>().unwrap();
            for linear in [GgmlDType::F32, GgmlDType::Q8_0, GgmlDType::Q4_1] {
                let path = dir
                    .path()
                    .join(format!("{}-{tie}-{linear:?}.gguf", arch.name()));
                write_with_candle(&path, arch, &c, &w, linear);
                let llm = GgufLlm::open(&path).unwrap();
                assert_eq!(llm.arch(), arch);
                let mut want_cfg = c.clone();
                want_cfg.rms_norm_eps = c.rms_norm_eps as f32 as f64;
                assert_eq!(llm.config(), &want_cfg);
                let tag = format!("{arch:?} tie={tie} bias={bias} {linear:?}");
                // Exact mode: dense weights = the file's values; equal to the HF model whose
                // linear weights went through the same rounding.
                let exact = llm.load_decoder(DType::F32, &Device::Cpu, None).unwrap();
                let want_exact = if linear == GgmlDType::F32 {
                    want.clone()
                } else {
                    let hf = VarBuilder::from_tensors(rounded(linear), DType::F32, &Device::Cpu);
                    logits(&DecoderLm::new(&c, hf).unwrap(), &ids)
                };
                let e = d(&logits(&exact, &ids), &want_exact);
                assert!(e <= 1e-5 * scale, "{tag} exact mode: max |Δlogit| {e}");
                // Fast mode: quantized kernels (activations quantized to 8 bits too).
                let (fast, _) = load_gguf_decoder(&path, DType::F32, &Device::Cpu).unwrap();
                let got = logits(&fast, &ids);
                let e = d(&got, &want);
                if linear == GgmlDType::F32 && !tie {
                    assert!(e <= 1e-5 * scale, "{tag} fast mode: max |Δlogit| {e}");
                } else if linear == GgmlDType::F32 {
                    // Only the tied lm_head is quantized (Q8_0) in the fast mode.
                    assert!(e <= 0.08 * scale, "{tag} fast mode: max |Δlogit| {e}");
                } else {
                    // Against dense f32 on this tiny random model: within 8 % (Q8_0) / 25 %
                    // (Q4_1, converted to Q8_0 at load) of the largest logit; measured about
                    // 1–5 % / 5–15 %.
                    let tol = if linear == GgmlDType::Q8_0 {
                        0.08
                    } else {
                        0.25
                    };
                    assert!(
                        e <= tol * scale,
                        "{tag} fast mode vs f32: {e} (scale {scale})"
                    );
                }
                if linear == GgmlDType::Q8_0 {
                    assert_eq!(top(&got), top(&want), "{tag} top token");
                }
            }
        }
    }

    /// Our streaming writer produces a file candle reads back: same tensors, same bytes.
    #[test]
    fn streaming_writer_round_trips() {
        let dir = Scratch::new("writer");
        let c = cfg(false);
        let w = hf_weights(&c);
        let path = dir.path().join("ours.gguf");
        let extra = vec![(
            "tokenizer.ggml.tokens".to_string(),
            Value::Array(vec![Value::String("a".into()), Value::String("b".into())]),
        )];
        write_decoder_gguf(&path, GgufArch::Llama, &c, GgmlDType::Q8_0, &extra, |n| {
            Ok(w[n].clone())
        })
        .unwrap();
        let f = GgufFile::open(&path).unwrap();
        assert_eq!(f.tensor_names().len(), decoder_tensor_names(&c).len());
        assert_eq!(
            f.tensor_info("blk.0.ffn_up.weight").unwrap().0,
            GgmlDType::Q8_0
        );
        assert_eq!(
            f.tensor_info("blk.0.attn_norm.weight").unwrap().0,
            GgmlDType::F32
        );
        let llm = GgufLlm::from_file(Arc::new(f)).unwrap();
        // q rows come back in HF order, quantized like a direct quantization of the HF rows.
        let q = llm
            .read_hf("model.layers.1.self_attn.q_proj.weight", &Device::Cpu)
            .unwrap()
            .unwrap();
        let direct = QTensor::quantize(
            &w["model.layers.1.self_attn.q_proj.weight"],
            GgmlDType::Q8_0,
        )
        .unwrap();
        assert_eq!(q.data().unwrap(), direct.data().unwrap());
        let k = llm
            .read_hf("model.layers.0.self_attn.k_proj.weight", &Device::Cpu)
            .unwrap()
            .unwrap();
        let direct = QTensor::quantize(
            &w["model.layers.0.self_attn.k_proj.weight"],
            GgmlDType::Q8_0,
        )
        .unwrap();
        assert_eq!(k.data().unwrap(), direct.data().unwrap());
    }

    #[test]
    fn bad_files_give_clear_errors() {
        let dir = Scratch::new("errors");
        let missing = dir.path().join("nope.gguf");
        let e = GgufFile::open(&missing).unwrap_err().to_string();
        assert!(e.contains("nope.gguf") && e.contains("no such file"), "{e}");

        let not_gguf = dir.path().join("text.gguf");
        std::fs::write(&not_gguf, b"hello world, not a gguf").unwrap();
        let e = GgufFile::open(&not_gguf).unwrap_err().to_string();
        assert!(
            e.contains("text.gguf") && e.contains("not a GGUF file"),
            "{e}"
        );

        let c = cfg(false);
        let w = hf_weights(&c);
        let good = dir.path().join("good.gguf");
        write_decoder_gguf(&good, GgufArch::Llama, &c, GgmlDType::Q8_0, &[], |n| {
            Ok(w[n].clone())
        })
        .unwrap();
        let bytes = std::fs::read(&good).unwrap();
        // Truncated in the tensor data and in the header.
        for (cut, what) in [(bytes.len() - 100, "truncated"), (200, "truncated")] {
            let p = dir.path().join(format!("cut{cut}.gguf"));
            std::fs::write(&p, &bytes[..cut]).unwrap();
            let e = GgufFile::open(&p).unwrap_err().to_string();
            assert!(
                e.contains(&format!("cut{cut}.gguf")) && e.contains(what),
                "{e}"
            );
        }
        // An IQ-quant type id in the tensor table: named with its tensor.
        let entries = vec![GgufTensorEntry::new(
            "blk.0.attn_q.weight",
            GgmlDType::F32,
            &[2, 32],
        )];
        let mut buf = Vec::new();
        write_gguf(
            &mut buf,
            &decoder_metadata(GgufArch::Llama, &c),
            &entries,
            |_, _| Ok(vec![0u8; 256]),
        )
        .unwrap();
        // Patch the type id (F32 = 0) that follows the tensor's name and dims.
        let name = b"blk.0.attn_q.weight";
        let at = buf.windows(name.len()).position(|w| w == name).unwrap() + name.len();
        let ty_at = at + 4 + 2 * 8;
        buf[ty_at..ty_at + 4].copy_from_slice(&16u32.to_le_bytes());
        let p = dir.path().join("iq.gguf");
        std::fs::write(&p, &buf).unwrap();
        let e = GgufFile::open(&p).unwrap_err().to_string();
        assert!(
            e.contains("iq.gguf") && e.contains("blk.0.attn_q.weight") && e.contains("IQ2_XXS"),
            "{e}"
        );
        // Unsupported architecture.
        let mut meta = decoder_metadata(GgufArch::Llama, &c);
        meta[0].1 = Value::String("gpt2".into());
        let mut buf = Vec::new();
        write_gguf(&mut buf, &meta, &[], |_, _| Ok(vec![])).unwrap();
        let p = dir.path().join("gpt2.gguf");
        std::fs::write(&p, &buf).unwrap();
        let e = GgufLlm::open(&p).unwrap_err().to_string();
        assert!(e.contains("gpt2.gguf") && e.contains("\"gpt2\""), "{e}");
    }
}
