//! SentencePiece `tokenizer.model` → `tokenizers::Tokenizer`, for LLaMA / Vicuna / Mistral
//! folders that ship no `tokenizer.json`.
//!
//! ```text
//! tokenizer.model ─► protobuf reader (ModelProto: pieces, trainer_spec, normalizer_spec)
//!                 ─► SentencePieceModel ─► to_tokenizer(special tokens) ─► tokenizers::Tokenizer
//!                                       ─► decode / decode_like_slow_llama (exact text)
//! special_tokens_map.json / tokenizer_config.json ─► special_tokens_in_folder ─► SpecialToken
//! ```
//!
//! The Video-LLaMA reference tokenizes with transformers 4.28's *slow* `LlamaTokenizer`, i.e.
//! the sentencepiece library on each text fragment between special tokens. The conversion
//! reproduces that for BPE models:
//!
//! * **Model**: `tokenizers` BPE with every piece in the vocabulary (id = piece index) and the
//!   merges `(left, right)` for every split of a mergeable piece into two pieces, ordered by the
//!   merged piece's score (highest first; ties keep piece order, then left/right id), as
//!   transformers' `SentencePieceExtractor` does. SentencePiece BPE merges the adjacent pair
//!   whose concatenation is the best-scored piece, leftmost on ties; `tokenizers` merges the
//!   lowest-ranked pair, leftmost on ties; with this order the two agree (checked against the
//!   sentencepiece library on the LLaMA-style Mistral model, whose 15 whitespace-run pieces share
//!   the score -1e9). A character missing from the vocabulary becomes `<0xXX>` byte pieces
//!   (`byte_fallback`) or one fused `<unk>`, as in SentencePiece.
//! * **Normalizer**: the model's precompiled charsmap (if any); for `remove_extra_whitespaces`
//!   the removal of leading spaces and the collapse of space runs; the dummy prefix `▁`
//!   (`add_dummy_prefix`; only on non-empty text); `' '` → `▁` (`escape_whitespaces`); for
//!   `remove_extra_whitespaces` the removal of trailing `▁`. `tokenizers` normalizes each
//!   fragment between added tokens on its own, like the slow tokenizer, so the fragment after
//!   `</s>` gets its own dummy prefix.
//! * **Added tokens**: the special tokens (`<unk>`, `<s>`, `</s>`, pad) are split out of the text
//!   as single ids, with the whitespace stripping that transformers 4.28 applies (see
//!   [`SentencePieceModel::special_tokens_in_folder`]). User-defined pieces (none in LLaMA /
//!   Vicuna) are split out too and never merged, but **not exactly** as SentencePiece does: it
//!   matches them inside the one normalized text, `tokenizers` in the raw text, so the text
//!   after such a piece gets its own dummy prefix and whitespace stripping (a normalized added
//!   token would itself get the dummy prefix and stop matching).
//! * **No post-processor**: BOS is *not* added by `encode(.., true)`. The caller adds it (the
//!   Video-LLaMA prompt puts BOS before the first segment only).
//! * **Decoder**: `▁` → space, ByteFallback, Fuse, strip one leading space. It differs from
//!   SentencePiece on invalid byte runs: `tokenizers` turns a byte run that is not valid UTF-8
//!   as a whole into one U+FFFD per byte (`<0x69><0x46><0xFC>` → "���"), SentencePiece keeps
//!   the valid characters and replaces each invalid byte ("iF�"). [`SentencePieceModel::decode`]
//!   and [`SentencePieceModel::decode_like_slow_llama`] give the exact text.
//!
//! Not supported (clear errors): Unigram / word / char models, `treat_whitespace_as_suffix`.
//! Other limits, none of which LLaMA-style models hit: UNUSED pieces are kept in the
//! vocabulary but never merged into (SentencePiece merges into them and splits them again,
//! which `tokenizers` cannot express); a character that is not itself a piece cannot merge
//! (SentencePiece could merge it into a piece that contains it); merges of different pieces
//! with equal scores follow piece order, not text position.

use crate::error::{PipelineError, Result};
use std::cmp::Ordering;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{
    NormalizerWrapper, Precompiled, Prepend, Replace, Sequence as NormalizerSequence,
};
use tokenizers::{AddedToken, NormalizedString, Normalizer, Tokenizer};

/// SentencePiece's whitespace symbol (U+2581).
const SPACE_SYMBOL: &str = "\u{2581}";
/// What SentencePiece emits for an invalid byte of a byte-piece run.
const REPLACEMENT: char = '\u{FFFD}';

/// `ModelProto.SentencePiece.Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceKind {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Byte,
    Unused,
}

impl PieceKind {
    fn from_proto(v: u64) -> std::result::Result<Self, String> {
        Ok(match v {
            1 => Self::Normal,
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => return Err(format!("unknown piece type {v}")),
        })
    }
}

/// One vocabulary entry; its id is its index.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    pub piece: String,
    pub score: f32,
    pub kind: PieceKind,
}

/// `TrainerSpec.model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelType {
    Unigram,
    Bpe,
    Word,
    Char,
}

/// The `TrainerSpec` fields that matter for encoding and decoding.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainerSpec {
    pub model_type: ModelType,
    pub byte_fallback: bool,
    pub treat_whitespace_as_suffix: bool,
    /// Ids as written by the trainer (`-1` = none); [`SentencePieceModel::special_ids`] resolves
    /// the pieces the way the library does.
    pub unk_id: i32,
    pub bos_id: i32,
    pub eos_id: i32,
    pub pad_id: i32,
    pub unk_piece: String,
    pub bos_piece: String,
    pub eos_piece: String,
    pub pad_piece: String,
    /// Decoded text of `<unk>` (default `" ⁇ "`).
    pub unk_surface: String,
}

impl Default for TrainerSpec {
    /// The proto defaults.
    fn default() -> Self {
        Self {
            model_type: ModelType::Unigram,
            byte_fallback: false,
            treat_whitespace_as_suffix: false,
            unk_id: 0,
            bos_id: 1,
            eos_id: 2,
            pad_id: -1,
            unk_piece: "<unk>".into(),
            bos_piece: "<s>".into(),
            eos_piece: "</s>".into(),
            pad_piece: "<pad>".into(),
            unk_surface: " \u{2047} ".into(),
        }
    }
}

/// `NormalizerSpec` (also used for the optional denormalizer).
#[derive(Debug, Clone, PartialEq)]
pub struct NormalizerSpec {
    /// Rule name (`identity`, `nmt_nfkc`, `user_defined`, …); informative only, the
    /// precompiled charsmap is what is applied.
    pub name: String,
    pub precompiled_charsmap: Vec<u8>,
    pub add_dummy_prefix: bool,
    pub remove_extra_whitespaces: bool,
    pub escape_whitespaces: bool,
}

impl Default for NormalizerSpec {
    /// The proto defaults.
    fn default() -> Self {
        Self {
            name: String::new(),
            precompiled_charsmap: Vec::new(),
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
            escape_whitespaces: true,
        }
    }
}

/// The special ids as `SentencePieceProcessor` reports them: `unk` must exist; bos / eos / pad
/// are `None` when their piece is absent or not a control piece (LLaMA: unk 0, bos 1, eos 2,
/// no pad).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialIds {
    pub unk: u32,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub pad: Option<u32>,
}

/// A token that transformers' slow tokenizer never splits (`all_special_tokens`), with the
/// whitespace it eats from the neighbouring text (`lstrip`: on its left, `rstrip`: on its right).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecialToken {
    pub content: String,
    pub id: u32,
    pub lstrip: bool,
    pub rstrip: bool,
}

/// A parsed `tokenizer.model`.
#[derive(Debug, Clone)]
pub struct SentencePieceModel {
    path: PathBuf,
    pieces: Vec<Piece>,
    ids: HashMap<String, u32>,
    trainer: TrainerSpec,
    normalizer: NormalizerSpec,
    denormalizer: Option<NormalizerSpec>,
}

/// Read `path` (a SentencePiece BPE `tokenizer.model`) into a `tokenizers::Tokenizer`, with the
/// special tokens and their whitespace handling taken from `special_tokens_map.json` /
/// `tokenizer_config.json` beside it (see [`SentencePieceModel::special_tokens_in_folder`]).
/// No BOS is added by the tokenizer: callers add [`SpecialIds::bos`] themselves.
pub fn tokenizer_from_sentencepiece(path: &Path) -> Result<Tokenizer> {
    let model = SentencePieceModel::load(path)?;
    let special = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => model.special_tokens_in_folder(dir)?,
        _ => model.special_tokens(),
    };
    model.to_tokenizer(&special)
}

impl SentencePieceModel {
    /// Read and check a `tokenizer.model`; every error names the file.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| PipelineError::file(path, e))?;
        Self::from_bytes(&bytes, path)
    }

    /// Parse the bytes of a `tokenizer.model`; `path` is only used in error messages.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let corrupt = |e: String| {
            let hint = if bytes.starts_with(b"version https://git-lfs") {
                " (this is a Git LFS pointer, not the model: fetch the LFS object)"
            } else {
                ""
            };
            PipelineError::file(
                path,
                format!("not a valid SentencePiece model (corrupt or truncated?): {e}{hint}"),
            )
        };
        let raw = proto::parse_model(bytes).map_err(corrupt)?;
        let invalid = |e: String| PipelineError::file(path, format!("SentencePiece model: {e}"));
        if raw.pieces.is_empty() {
            return Err(invalid("it has no pieces".into()));
        }
        if raw.pieces.len() > u32::MAX as usize {
            return Err(invalid("too many pieces".into()));
        }
        let mut ids = HashMap::with_capacity(raw.pieces.len());
        let mut unk = None;
        let mut bytes_found = [false; 256];
        for (i, p) in raw.pieces.iter().enumerate() {
            if p.piece.is_empty() {
                return Err(invalid(format!("piece {i} is empty")));
            }
            if p.score.is_nan() {
                return Err(invalid(format!(
                    "piece {i} ({:?}) has a NaN score",
                    p.piece
                )));
            }
            if ids.insert(p.piece.clone(), i as u32).is_some() {
                return Err(invalid(format!("piece {:?} is defined twice", p.piece)));
            }
            match p.kind {
                PieceKind::Unknown if unk.is_some() => {
                    return Err(invalid("more than one UNKNOWN piece".into()))
                }
                PieceKind::Unknown => unk = Some(i),
                PieceKind::Byte => {
                    if !raw.trainer.byte_fallback {
                        return Err(invalid(format!(
                            "byte piece {:?} although byte_fallback is false",
                            p.piece
                        )));
                    }
                    let b = byte_of_piece(&p.piece)
                        .ok_or_else(|| invalid(format!("invalid byte piece {:?}", p.piece)))?;
                    bytes_found[b as usize] = true;
                }
                _ => {}
            }
        }
        if unk.is_none() {
            return Err(invalid("no UNKNOWN (<unk>) piece".into()));
        }
        if raw.trainer.byte_fallback && bytes_found.iter().any(|f| !f) {
            return Err(invalid(
                "byte_fallback is true but the 256 <0xXX> byte pieces are not all there".into(),
            ));
        }
        Ok(Self {
            path: path.to_path_buf(),
            pieces: raw.pieces,
            ids,
            trainer: raw.trainer,
            normalizer: raw.normalizer,
            denormalizer: raw.denormalizer,
        })
    }

    /// The file this model was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All pieces; a piece's id is its index.
    pub fn pieces(&self) -> &[Piece] {
        &self.pieces
    }

    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    pub fn trainer_spec(&self) -> &TrainerSpec {
        &self.trainer
    }

    pub fn normalizer_spec(&self) -> &NormalizerSpec {
        &self.normalizer
    }

    pub fn model_type(&self) -> ModelType {
        self.trainer.model_type
    }

    pub fn piece_to_id(&self, piece: &str) -> Option<u32> {
        self.ids.get(piece).copied()
    }

    pub fn id_to_piece(&self, id: u32) -> Option<&str> {
        self.pieces.get(id as usize).map(|p| p.piece.as_str())
    }

    fn kind(&self, id: u32) -> Option<PieceKind> {
        self.pieces.get(id as usize).map(|p| p.kind)
    }

    /// unk / bos / eos / pad ids, resolved from the trainer's piece names as
    /// `SentencePieceProcessor::{unk,bos,eos,pad}_id` do.
    pub fn special_ids(&self) -> SpecialIds {
        let control = |piece: &str| {
            self.piece_to_id(piece)
                .filter(|&id| self.kind(id) == Some(PieceKind::Control))
        };
        let unk = self
            .piece_to_id(&self.trainer.unk_piece)
            .filter(|&id| self.kind(id) == Some(PieceKind::Unknown))
            .or_else(|| {
                // The model guarantees exactly one UNKNOWN piece.
                self.pieces
                    .iter()
                    .position(|p| p.kind == PieceKind::Unknown)
                    .map(|i| i as u32)
            })
            .unwrap_or(0);
        SpecialIds {
            unk,
            bos: control(&self.trainer.bos_piece),
            eos: control(&self.trainer.eos_piece),
            pad: control(&self.trainer.pad_piece),
        }
    }

    /// The special tokens of a `LlamaTokenizer` built on this file alone: unk, bos, eos (and
    /// pad where the model has one), no whitespace stripping.
    pub fn special_tokens(&self) -> Vec<SpecialToken> {
        let ids = self.special_ids();
        [Some(ids.unk), ids.bos, ids.eos, ids.pad]
            .into_iter()
            .flatten()
            .map(|id| SpecialToken {
                content: self.pieces[id as usize].piece.clone(),
                id,
                lstrip: false,
                rstrip: false,
            })
            .collect()
    }

    /// The special tokens as transformers 4.28's `LlamaTokenizer.from_pretrained(dir)` sets
    /// them up (what the Video-LLaMA reference runs):
    /// * `tokenizer_config.json`'s `bos/eos/unk/pad_token` (a plain string is wrapped by
    ///   `LlamaTokenizer.__init__` as `AddedToken(lstrip=False, rstrip=False)`; a serialized
    ///   `AddedToken` keeps its flags; `null` drops the role), defaulting to
    ///   `<s>`, `</s>`, `<unk>` (the model's pieces);
    /// * then `special_tokens_map.json`, whose values replace those: a **plain string** there
    ///   stays a string, and 4.28's `tokenize` strips whitespace on **both** sides of such a
    ///   token; a dict is an `AddedToken` with its `lstrip`/`rstrip`.
    ///
    /// `additional_special_tokens` are included. A token that is not a piece of the model
    /// (an `added_tokens.json` entry such as `[PAD]`) is skipped with a warning.
    pub fn special_tokens_in_folder(&self, dir: &Path) -> Result<Vec<SpecialToken>> {
        let ids = self.special_ids();
        let piece = |id: Option<u32>| -> Vec<SpecialSpec> {
            id.map(|i| SpecialSpec::plain(&self.pieces[i as usize].piece, false))
                .into_iter()
                .collect()
        };
        // LlamaTokenizer's defaults: unk, bos, eos; pad_token=None.
        let mut roles: [(&str, Vec<SpecialSpec>); 5] = [
            ("unk_token", piece(Some(ids.unk))),
            ("bos_token", piece(ids.bos)),
            ("eos_token", piece(ids.eos)),
            ("pad_token", vec![]),
            ("additional_special_tokens", vec![]),
        ];
        // LlamaTokenizer.__init__ wraps the config's role strings in AddedToken(lstrip=False,
        // rstrip=False); special_tokens_map.json strings and list entries stay strings.
        for (file, wrapped) in [
            ("tokenizer_config.json", true),
            ("special_tokens_map.json", false),
        ] {
            let path = dir.join(file);
            if !path.is_file() {
                continue;
            }
            let json = crate::error::read_json(&path)?;
            for (key, specs) in roles.iter_mut() {
                let Some(value) = json.get(*key) else {
                    continue;
                };
                *specs = match value {
                    serde_json::Value::Array(items) => items
                        .iter()
                        .map(|v| SpecialSpec::parse(v, false, &path))
                        .filter_map(|r| r.transpose())
                        .collect::<Result<_>>()?,
                    v => SpecialSpec::parse(v, wrapped, &path)?.into_iter().collect(),
                };
            }
        }
        let mut out: Vec<SpecialToken> = Vec::new();
        for spec in roles.into_iter().flat_map(|(_, s)| s) {
            let Some(id) = self.piece_to_id(&spec.content) else {
                tracing::warn!(
                    "{}: special token {:?} is not a piece of the model; it is not split out",
                    self.path.display(),
                    spec.content
                );
                continue;
            };
            if !out.iter().any(|t| t.id == id) {
                out.push(SpecialToken {
                    content: spec.content,
                    id,
                    lstrip: spec.lstrip,
                    rstrip: spec.rstrip,
                });
            }
        }
        Ok(out)
    }

    /// Build the `tokenizers::Tokenizer` (see the module docs). `special` are split out of the
    /// text as single ids ([`Self::special_tokens`] or [`Self::special_tokens_in_folder`]).
    pub fn to_tokenizer(&self, special: &[SpecialToken]) -> Result<Tokenizer> {
        let err = |cause: String| PipelineError::file(&self.path, cause);
        match self.trainer.model_type {
            ModelType::Bpe => {}
            other => {
                return Err(err(format!(
                    "SentencePiece model type {other:?} is not supported (only BPE, as in \
                     LLaMA / Vicuna / Mistral tokenizers)"
                )))
            }
        }
        if self.trainer.treat_whitespace_as_suffix {
            return Err(err(
                "SentencePiece option treat_whitespace_as_suffix is not supported".into(),
            ));
        }
        for t in special {
            if self.id_to_piece(t.id) != Some(t.content.as_str()) {
                return Err(err(format!(
                    "special token {:?} does not match piece {}",
                    t.content, t.id
                )));
            }
        }
        let unk = self.special_ids().unk;
        let vocab: serde_json::Map<String, serde_json::Value> = self
            .pieces
            .iter()
            .enumerate()
            .map(|(i, p)| (p.piece.clone(), serde_json::Value::from(i as u32)))
            .collect();
        let model = serde_json::json!({
            "type": "BPE",
            "dropout": null,
            "unk_token": self.pieces[unk as usize].piece,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": true,
            "byte_fallback": self.trainer.byte_fallback,
            "ignore_merges": false,
            "vocab": vocab,
            "merges": self.merges(),
        });
        // From text: the BPE deserializer borrows its strings.
        let bpe: BPE = serde_json::from_str(&model.to_string())
            .map_err(|e| err(format!("building the BPE: {e}")))?;
        let mut tokenizer = Tokenizer::new(bpe);
        tokenizer
            .with_normalizer(Some(self.hf_normalizer()?))
            .map_err(|e| err(format!("normalizer: {e}")))?;
        tokenizer.with_decoder(Some(self.hf_decoder()?));
        let specials: Vec<AddedToken> = special
            .iter()
            .map(|t| {
                AddedToken::from(t.content.clone(), true)
                    .lstrip(t.lstrip)
                    .rstrip(t.rstrip)
                    .normalized(false)
            })
            .collect();
        tokenizer
            .add_special_tokens(specials)
            .map_err(|e| err(format!("special tokens: {e}")))?;
        // User-defined pieces: atomic, never merged, matched leftmost-longest in the text as
        // SentencePiece's prefix matcher does. They are matched in the raw text (a normalized
        // added token would get the dummy prefix itself), so the text after one gets its own
        // dummy prefix here but not in SentencePiece (see the module docs).
        let user: Vec<AddedToken> = self
            .pieces
            .iter()
            .filter(|p| p.kind == PieceKind::UserDefined)
            .map(|p| AddedToken::from(p.piece.clone(), false).normalized(false))
            .collect();
        if !user.is_empty() {
            tokenizer
                .add_tokens(user)
                .map_err(|e| err(format!("user-defined pieces: {e}")))?;
        }
        Ok(tokenizer)
    }

    /// `(left, right)` merges, best merged-piece score first.
    fn merges(&self) -> Vec<(String, String)> {
        // A merge result must be a piece SentencePiece can merge into; a half is such a
        // piece or a single character (an initial symbol).
        let mergeable = |k: PieceKind| matches!(k, PieceKind::Normal | PieceKind::UserDefined);
        let half = |s: &str| -> Option<u32> {
            let id = self.piece_to_id(s)?;
            let p = &self.pieces[id as usize];
            (mergeable(p.kind) || s.chars().nth(1).is_none()).then_some(id)
        };
        // (left id, right id, score) in piece order, each piece's splits by (left, right) id.
        let mut merges: Vec<(u32, u32, f32)> = Vec::new();
        for p in self.pieces.iter().filter(|p| mergeable(p.kind)) {
            let start = merges.len();
            for (i, _) in p.piece.char_indices().skip(1) {
                if let (Some(l), Some(r)) = (half(&p.piece[..i]), half(&p.piece[i..])) {
                    merges.push((l, r, p.score));
                }
            }
            merges[start..].sort_by_key(|&(l, r, _)| (l, r));
        }
        // Stable: equal scores keep piece order. -0.0 == 0.0 as in SentencePiece.
        merges.sort_by(|a, b| b.2.partial_cmp(&a.2).unwrap_or(Ordering::Equal));
        merges
            .into_iter()
            .map(|(l, r, _)| {
                (
                    self.pieces[l as usize].piece.clone(),
                    self.pieces[r as usize].piece.clone(),
                )
            })
            .collect()
    }

    fn hf_normalizer(&self) -> Result<NormalizerWrapper> {
        let err = |cause: String| PipelineError::file(&self.path, cause);
        let spec = &self.normalizer;
        let mut steps: Vec<NormalizerWrapper> = Vec::new();
        if !spec.precompiled_charsmap.is_empty() {
            let p = Precompiled::from(&spec.precompiled_charsmap).map_err(|e| {
                err(format!(
                    "normalizer {:?}: bad precompiled charsmap: {e}",
                    spec.name
                ))
            })?;
            steps.push(p.into());
        }
        let replace = |pattern: tokenizers::normalizers::replace::ReplacePattern,
                       content: &str|
         -> Result<NormalizerWrapper> {
            Ok(Replace::new(pattern, content)
                .map_err(|e| err(format!("normalizer: {e}")))?
                .into())
        };
        use tokenizers::normalizers::replace::ReplacePattern;
        if spec.remove_extra_whitespaces {
            // SentencePiece drops leading spaces and collapses space runs (only U+0020, after
            // the charsmap) ...
            steps.push(replace(ReplacePattern::Regex("^ +".into()), "")?);
            steps.push(replace(ReplacePattern::Regex(" {2,}".into()), " ")?);
        }
        if spec.add_dummy_prefix {
            // Prepend skips empty text, as SentencePiece does.
            let prefix = if spec.escape_whitespaces {
                SPACE_SYMBOL
            } else {
                " "
            };
            steps.push(Prepend::new(prefix.into()).into());
        }
        if spec.escape_whitespaces {
            steps.push(replace(ReplacePattern::String(" ".into()), SPACE_SYMBOL)?);
        }
        if spec.remove_extra_whitespaces {
            // ... and strips the trailing whitespace symbols of its *output*, so a literal `▁`
            // at the end goes too.
            let trailing = if spec.escape_whitespaces {
                format!("{SPACE_SYMBOL}+$")
            } else {
                " +$".to_string()
            };
            steps.push(replace(ReplacePattern::Regex(trailing), "")?);
        }
        Ok(NormalizerSequence::new(steps).into())
    }

    fn hf_decoder(&self) -> Result<DecoderWrapper> {
        let replace = Replace::new(SPACE_SYMBOL, " ")
            .map_err(|e| PipelineError::file(&self.path, format!("decoder: {e}")))?;
        let mut steps: Vec<DecoderWrapper> = vec![
            replace.into(),
            ByteFallback::new().into(),
            Fuse::new().into(),
        ];
        if self.normalizer.add_dummy_prefix || self.normalizer.remove_extra_whitespaces {
            steps.push(Strip::new(' ', 1, 0).into());
        }
        Ok(DecoderSequence::new(steps).into())
    }

    /// `SentencePieceProcessor.decode(ids)`: control pieces vanish, `<unk>` becomes the unk
    /// surface (`" ⁇ "`), runs of byte pieces are decoded character by character with one
    /// U+FFFD per invalid byte, and the first piece's leading `▁` is dropped (dummy prefix).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.check_ids(ids)?;
        let mut text = self.decode_unchecked(ids);
        if let Some(de) = &self.denormalizer {
            if !de.precompiled_charsmap.is_empty() {
                let p = Precompiled::from(&de.precompiled_charsmap).map_err(|e| {
                    PipelineError::file(&self.path, format!("bad denormalizer charsmap: {e}"))
                })?;
                let mut n = NormalizedString::from(text.as_str());
                p.normalize(&mut n)
                    .map_err(|e| PipelineError::file(&self.path, format!("denormalizer: {e}")))?;
                text = n.get().to_string();
            }
        }
        Ok(text)
    }

    /// What transformers 4.28's slow `LlamaTokenizer.decode(ids, skip_special_tokens)` returns
    /// (`clean_up_tokenization_spaces=False`, as Video-LLaMA's `Chat.answer` calls it): the
    /// text between special tokens goes through SentencePiece's decode, each special token is
    /// written as its text, preceded by a space unless it is first or follows another one.
    /// `special` is the tokenizer's `all_special_tokens` (see [`Self::special_tokens_in_folder`]).
    pub fn decode_like_slow_llama(
        &self,
        ids: &[u32],
        special: &[SpecialToken],
        skip_special_tokens: bool,
    ) -> Result<String> {
        self.check_ids(ids)?;
        let is_special = |id: u32| special.iter().any(|t| t.id == id);
        let ids: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|&id| !(skip_special_tokens && is_special(id)))
            .collect();
        let mut out = String::new();
        let mut current: Vec<u32> = Vec::new();
        let mut prev_is_special = false;
        for (i, &id) in ids.iter().enumerate() {
            if is_special(id) {
                if !prev_is_special && i != 0 {
                    out.push(' ');
                }
                out.push_str(&self.decode(&current)?);
                out.push_str(&self.pieces[id as usize].piece);
                prev_is_special = true;
                current.clear();
            } else {
                current.push(id);
                prev_is_special = false;
            }
        }
        out.push_str(&self.decode(&current)?);
        Ok(out)
    }

    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        match ids.iter().find(|&&id| id as usize >= self.pieces.len()) {
            Some(id) => Err(PipelineError::Invalid(format!(
                "{}: token id {id} is out of range (vocabulary of {})",
                self.path.display(),
                self.pieces.len()
            ))),
            None => Ok(()),
        }
    }

    /// The body of `SentencePieceProcessor::Decode` (ids already checked).
    fn decode_unchecked(&self, ids: &[u32]) -> String {
        let spec = &self.normalizer;
        let strip_bos_ws = spec.add_dummy_prefix || spec.remove_extra_whitespaces;
        let mut text = String::new();
        let mut bytes: Vec<u8> = Vec::new();
        let mut is_bos_ws = true;
        let mut bos_ws_seen = false;
        for &id in ids {
            let p = &self.pieces[id as usize];
            if p.kind == PieceKind::Byte {
                // Checked at load time.
                bytes.push(byte_of_piece(&p.piece).unwrap_or(0));
                continue;
            }
            flush_bytes(&mut bytes, &mut text);
            if bos_ws_seen || !text.is_empty() {
                is_bos_ws = false;
            }
            bos_ws_seen = false;
            match p.kind {
                PieceKind::Control => {}
                PieceKind::Unknown => text.push_str(&self.trainer.unk_surface),
                _ => {
                    let mut piece = p.piece.as_str();
                    if is_bos_ws && strip_bos_ws {
                        if let Some(rest) = piece.strip_prefix(SPACE_SYMBOL) {
                            piece = rest;
                            // With remove_extra_whitespaces every leading space piece goes.
                            bos_ws_seen = !spec.remove_extra_whitespaces;
                        }
                    }
                    text.push_str(&piece.replace(SPACE_SYMBOL, " "));
                }
            }
        }
        flush_bytes(&mut bytes, &mut text);
        text
    }
}

/// A special token as transformers 4.28 holds it: a string or an `AddedToken`.
struct SpecialSpec {
    content: String,
    lstrip: bool,
    rstrip: bool,
}

impl SpecialSpec {
    /// A plain string: 4.28's `tokenize` strips the whitespace on both of its sides, unless
    /// `LlamaTokenizer.__init__` wrapped it in `AddedToken(lstrip=False, rstrip=False)`.
    fn plain(content: &str, wrapped: bool) -> Self {
        Self {
            content: content.to_string(),
            lstrip: !wrapped,
            rstrip: !wrapped,
        }
    }

    /// One JSON value: a string, a serialized `AddedToken` (its flags), or `null` (none).
    fn parse(v: &serde_json::Value, wrapped: bool, file: &Path) -> Result<Option<Self>> {
        match v {
            serde_json::Value::Null => Ok(None),
            serde_json::Value::String(s) => Ok(Some(Self::plain(s, wrapped))),
            serde_json::Value::Object(o) => {
                let content = o.get("content").and_then(|c| c.as_str()).ok_or_else(|| {
                    PipelineError::file(file, "special token without \"content\"")
                })?;
                let flag = |k: &str| o.get(k).and_then(|b| b.as_bool()).unwrap_or(false);
                Ok(Some(Self {
                    content: content.to_string(),
                    lstrip: flag("lstrip"),
                    rstrip: flag("rstrip"),
                }))
            }
            other => Err(PipelineError::file(
                file,
                format!("unexpected special token value {other}"),
            )),
        }
    }
}

/// `<0xAB>` → 0xAB.
fn byte_of_piece(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() == 2 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        u8::from_str_radix(hex, 16).ok()
    } else {
        None
    }
}

/// Append a run of byte pieces the way SentencePiece does: one valid UTF-8 character at a
/// time; a byte that does not start a valid character becomes U+FFFD and is skipped alone.
fn flush_bytes(bytes: &mut Vec<u8>, text: &mut String) {
    let mut rest = bytes.as_slice();
    while let Some(&lead) = rest.first() {
        let len = match lead {
            0x00..=0x7F => 1,
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => 0,
        };
        match rest
            .get(..len)
            .filter(|_| len > 0)
            .and_then(|c| std::str::from_utf8(c).ok())
        {
            Some(c) => {
                text.push_str(c);
                rest = &rest[len..];
            }
            None => {
                text.push(REPLACEMENT);
                rest = &rest[1..];
            }
        }
    }
    bytes.clear();
}

/// A minimal reader of the protobuf wire format, for `sentencepiece_model.proto`'s `ModelProto`
/// (proto2). Unknown fields are skipped; every error says what and where.
mod proto {
    use super::{ModelType, NormalizerSpec, Piece, PieceKind, TrainerSpec};

    type R<T> = std::result::Result<T, String>;

    pub(super) struct RawModel {
        pub pieces: Vec<Piece>,
        pub trainer: TrainerSpec,
        pub normalizer: NormalizerSpec,
        pub denormalizer: Option<NormalizerSpec>,
    }

    /// A field's value as read from the wire.
    enum Value<'a> {
        Varint(u64),
        Fixed64,
        Bytes(&'a [u8]),
        Fixed32(u32),
    }

    impl Value<'_> {
        fn wire_name(&self) -> &'static str {
            match self {
                Value::Varint(_) => "varint",
                Value::Fixed64 => "64-bit",
                Value::Bytes(_) => "length-delimited",
                Value::Fixed32(_) => "32-bit",
            }
        }
    }

    struct Reader<'a> {
        buf: &'a [u8],
        pos: usize,
        /// Offset of `buf` in the file, for error messages.
        base: usize,
    }

    impl<'a> Reader<'a> {
        fn new(buf: &'a [u8], base: usize) -> Self {
            Self { buf, pos: 0, base }
        }

        fn at(&self) -> usize {
            self.base + self.pos
        }

        fn varint(&mut self) -> R<u64> {
            let start = self.at();
            let mut v: u64 = 0;
            for shift in (0..70).step_by(7) {
                let Some(&b) = self.buf.get(self.pos) else {
                    return Err(format!("truncated varint at byte {start}"));
                };
                self.pos += 1;
                if shift == 63 && b > 1 {
                    return Err(format!("varint overflows 64 bits at byte {start}"));
                }
                v |= u64::from(b & 0x7F) << shift;
                if b & 0x80 == 0 {
                    return Ok(v);
                }
            }
            Err(format!("varint longer than 10 bytes at byte {start}"))
        }

        fn take(&mut self, n: usize, what: &str) -> R<&'a [u8]> {
            let start = self.at();
            let end = self
                .pos
                .checked_add(n)
                .filter(|&e| e <= self.buf.len())
                .ok_or_else(|| {
                    format!(
                        "truncated {what} at byte {start}: needs {n} bytes, {} left",
                        self.buf.len() - self.pos
                    )
                })?;
            let s = &self.buf[self.pos..end];
            self.pos = end;
            Ok(s)
        }

        /// The next `(field number, value, offset of the value)`, or `None` at the end.
        fn field(&mut self) -> R<Option<(u64, Value<'a>, usize)>> {
            if self.pos >= self.buf.len() {
                return Ok(None);
            }
            let key_at = self.at();
            let key = self.varint()?;
            let (number, wire) = (key >> 3, key & 7);
            if number == 0 {
                return Err(format!("field number 0 at byte {key_at}"));
            }
            let at = self.at();
            let value = match wire {
                0 => Value::Varint(self.varint()?),
                1 => {
                    self.take(8, "64-bit field")?;
                    Value::Fixed64
                }
                2 => {
                    let n = self.varint()?;
                    let n = usize::try_from(n)
                        .map_err(|_| format!("length {n} too large at byte {at}"))?;
                    Value::Bytes(self.take(n, &format!("field {number}"))?)
                }
                5 => {
                    let b = self.take(4, "32-bit field")?;
                    Value::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                }
                w => {
                    return Err(format!(
                        "unsupported wire type {w} (field {number}) at byte {key_at}"
                    ))
                }
            };
            let value_at = match &value {
                Value::Bytes(b) => self.at() - b.len(),
                _ => at,
            };
            Ok(Some((number, value, value_at)))
        }
    }

    fn expect_varint(msg: &str, number: u64, v: &Value) -> R<u64> {
        match v {
            Value::Varint(x) => Ok(*x),
            other => Err(format!(
                "{msg} field {number}: expected a varint, found {}",
                other.wire_name()
            )),
        }
    }

    fn expect_bytes<'a>(msg: &str, number: u64, v: &Value<'a>) -> R<&'a [u8]> {
        match v {
            Value::Bytes(b) => Ok(b),
            other => Err(format!(
                "{msg} field {number}: expected length-delimited, found {}",
                other.wire_name()
            )),
        }
    }

    fn expect_string(msg: &str, number: u64, v: &Value, at: usize) -> R<String> {
        let b = expect_bytes(msg, number, v)?;
        String::from_utf8(b.to_vec())
            .map_err(|_| format!("{msg} field {number} at byte {at}: invalid UTF-8"))
    }

    fn int32(v: u64) -> i32 {
        // Negative int32 values are sign-extended to 64 bits on the wire.
        v as i64 as i32
    }

    pub(super) fn parse_model(buf: &[u8]) -> R<RawModel> {
        let mut r = Reader::new(buf, 0);
        let mut pieces = Vec::new();
        let mut trainer = TrainerSpec::default();
        let mut normalizer = NormalizerSpec::default();
        let mut denormalizer = None;
        while let Some((number, value, at)) = r.field()? {
            match number {
                1 => pieces.push(parse_piece(
                    expect_bytes("ModelProto", number, &value)?,
                    at,
                    pieces.len(),
                )?),
                2 => parse_trainer(
                    expect_bytes("ModelProto", number, &value)?,
                    at,
                    &mut trainer,
                )?,
                3 => parse_normalizer(
                    expect_bytes("ModelProto", number, &value)?,
                    at,
                    &mut normalizer,
                )?,
                5 => {
                    let mut de = NormalizerSpec::default();
                    parse_normalizer(expect_bytes("ModelProto", number, &value)?, at, &mut de)?;
                    denormalizer = Some(de);
                }
                _ => {}
            }
        }
        Ok(RawModel {
            pieces,
            trainer,
            normalizer,
            denormalizer,
        })
    }

    fn parse_piece(buf: &[u8], base: usize, index: usize) -> R<Piece> {
        let msg = format!("piece {index}");
        let mut r = Reader::new(buf, base);
        let mut piece = Piece {
            piece: String::new(),
            score: 0.0,
            kind: PieceKind::Normal,
        };
        while let Some((number, value, at)) = r.field()? {
            match number {
                1 => piece.piece = expect_string(&msg, number, &value, at)?,
                2 => match value {
                    Value::Fixed32(bits) => piece.score = f32::from_bits(bits),
                    other => {
                        return Err(format!(
                            "{msg} score: expected a 32-bit float, found {}",
                            other.wire_name()
                        ))
                    }
                },
                3 => {
                    piece.kind = PieceKind::from_proto(expect_varint(&msg, number, &value)?)
                        .map_err(|e| format!("{msg} at byte {at}: {e}"))?
                }
                _ => {}
            }
        }
        Ok(piece)
    }

    fn parse_trainer(buf: &[u8], base: usize, t: &mut TrainerSpec) -> R<()> {
        let msg = "TrainerSpec";
        let mut r = Reader::new(buf, base);
        while let Some((number, value, at)) = r.field()? {
            match number {
                3 => {
                    t.model_type = match expect_varint(msg, number, &value)? {
                        1 => ModelType::Unigram,
                        2 => ModelType::Bpe,
                        3 => ModelType::Word,
                        4 => ModelType::Char,
                        v => return Err(format!("unknown model_type {v} at byte {at}")),
                    }
                }
                24 => t.treat_whitespace_as_suffix = expect_varint(msg, number, &value)? != 0,
                35 => t.byte_fallback = expect_varint(msg, number, &value)? != 0,
                40 => t.unk_id = int32(expect_varint(msg, number, &value)?),
                41 => t.bos_id = int32(expect_varint(msg, number, &value)?),
                42 => t.eos_id = int32(expect_varint(msg, number, &value)?),
                43 => t.pad_id = int32(expect_varint(msg, number, &value)?),
                44 => t.unk_surface = expect_string(msg, number, &value, at)?,
                45 => t.unk_piece = expect_string(msg, number, &value, at)?,
                46 => t.bos_piece = expect_string(msg, number, &value, at)?,
                47 => t.eos_piece = expect_string(msg, number, &value, at)?,
                48 => t.pad_piece = expect_string(msg, number, &value, at)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn parse_normalizer(buf: &[u8], base: usize, n: &mut NormalizerSpec) -> R<()> {
        let msg = "NormalizerSpec";
        let mut r = Reader::new(buf, base);
        while let Some((number, value, at)) = r.field()? {
            match number {
                1 => n.name = expect_string(msg, number, &value, at)?,
                2 => n.precompiled_charsmap = expect_bytes(msg, number, &value)?.to_vec(),
                3 => n.add_dummy_prefix = expect_varint(msg, number, &value)? != 0,
                4 => n.remove_extra_whitespaces = expect_varint(msg, number, &value)? != 0,
                5 => n.escape_whitespaces = expect_varint(msg, number, &value)? != 0,
                _ => {}
            }
        }
        Ok(())
    }
    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn varints_and_negative_int32() {
            // -1 as int32 is ten bytes on the wire.
            let buf = [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01];
            let v = Reader::new(&buf, 0).varint().unwrap();
            assert_eq!(int32(v), -1);
            assert!(Reader::new(&[0xFF; 11], 0).varint().is_err());
            assert!(Reader::new(&[0x80], 0).varint().is_err());
        }

        #[test]
        fn truncated_and_bad_wire_types() {
            // Field 1, length 5, only 2 bytes follow.
            let e = parse_model(&[0x0A, 0x05, 0x01, 0x02]).err().unwrap();
            assert!(e.contains("truncated"), "{e}");
            // Field 1 with wire type 3 (groups are not supported).
            let e = parse_model(&[0x0B]).err().unwrap();
            assert!(e.contains("wire type 3"), "{e}");
            // A piece whose score has the wrong wire type.
            let e = parse_model(&[0x0A, 0x02, 0x10, 0x01]).err().unwrap();
            assert!(e.contains("score"), "{e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_of(bytes: &[u8]) -> String {
        let mut v = bytes.to_vec();
        let mut s = String::new();
        flush_bytes(&mut v, &mut s);
        s
    }

    #[test]
    fn byte_runs_decode_per_character() {
        assert_eq!(text_of(b"iF\xfc"), "iF\u{FFFD}");
        assert_eq!(text_of(b"\xe3\x81"), "\u{FFFD}\u{FFFD}");
        assert_eq!(text_of("\u{2581}😀".as_bytes()), "\u{2581}😀");
        assert_eq!(text_of(b"\xc0\xaf"), "\u{FFFD}\u{FFFD}");
        assert_eq!(text_of(b"\xed\xa0\x80"), "\u{FFFD}\u{FFFD}\u{FFFD}");
    }

    #[test]
    fn byte_piece_names() {
        assert_eq!(byte_of_piece("<0x0A>"), Some(10));
        assert_eq!(byte_of_piece("<0xfc>"), Some(0xFC));
        assert_eq!(byte_of_piece("<0x+A>"), None);
        assert_eq!(byte_of_piece("<0x0A0>"), None);
    }
}
