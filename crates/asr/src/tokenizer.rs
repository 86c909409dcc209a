//! Whisper's vocabulary: special tokens, byte-level text decoding and the non-speech
//! suppression list.
//!
//! The vocabulary (id → token string) comes from the first file present:
//!
//! * `tokenizer.json` (HF): `model.vocab` plus `added_tokens`. The timestamp tokens
//!   (`<|0.00|>` …) are usually not listed; their ids follow `<|notimestamps|>`.
//! * `vocabulary.txt` (CTranslate2): one token per line, line number = id.
//! * `vocabulary.json` (CTranslate2): a JSON array of tokens.
//!
//! Text is decoded the way GPT-2's byte-level BPE does it (HF `ByteLevel` decoder): each
//! character of a token stands for one byte through the `bytes_to_unicode` table; the bytes
//! of the concatenated tokens are read as UTF-8 (invalid sequences become U+FFFD, as
//! tiktoken/HF `errors="replace"`).
//!
//! Encoding is only needed for the suppression lists (openai's `non_speech_tokens` and the
//! blank `" "`), and only when the checkpoint's config does not list them. With a
//! `tokenizer.json` it runs the real BPE (crate `tokenizers`); with only a vocabulary
//! file, a string is encodable when it is itself one vocabulary entry, which covers `" "`
//! and the single-token symbols (the few multi-token music symbols are then not suppressed).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::config::read_json;
use crate::error::{AsrError, Result};

/// Ids of Whisper's special tokens in one vocabulary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecialTokens {
    pub eot: u32,
    pub sot: u32,
    pub translate: u32,
    pub transcribe: u32,
    pub sot_lm: u32,
    pub sot_prev: u32,
    /// `<|nospeech|>` (`<|nocaptions|>` in older vocabularies).
    pub no_speech: Option<u32>,
    pub no_timestamps: u32,
    /// `<|0.00|>`; timestamp `i` is `timestamp_begin + i` (0.02 s steps).
    pub timestamp_begin: u32,
    /// `(code, id)` of each `<|xx|>` language token, in id order.
    pub languages: Vec<(String, u32)>,
}

/// openai-whisper's language table (code, English name), in token order.
pub const LANGUAGES: &[(&str, &str)] = &[
    ("en", "english"),
    ("zh", "chinese"),
    ("de", "german"),
    ("es", "spanish"),
    ("ru", "russian"),
    ("ko", "korean"),
    ("fr", "french"),
    ("ja", "japanese"),
    ("pt", "portuguese"),
    ("tr", "turkish"),
    ("pl", "polish"),
    ("ca", "catalan"),
    ("nl", "dutch"),
    ("ar", "arabic"),
    ("sv", "swedish"),
    ("it", "italian"),
    ("id", "indonesian"),
    ("hi", "hindi"),
    ("fi", "finnish"),
    ("vi", "vietnamese"),
    ("he", "hebrew"),
    ("uk", "ukrainian"),
    ("el", "greek"),
    ("ms", "malay"),
    ("cs", "czech"),
    ("ro", "romanian"),
    ("da", "danish"),
    ("hu", "hungarian"),
    ("ta", "tamil"),
    ("no", "norwegian"),
    ("th", "thai"),
    ("ur", "urdu"),
    ("hr", "croatian"),
    ("bg", "bulgarian"),
    ("lt", "lithuanian"),
    ("la", "latin"),
    ("mi", "maori"),
    ("ml", "malayalam"),
    ("cy", "welsh"),
    ("sk", "slovak"),
    ("te", "telugu"),
    ("fa", "persian"),
    ("lv", "latvian"),
    ("bn", "bengali"),
    ("sr", "serbian"),
    ("az", "azerbaijani"),
    ("sl", "slovenian"),
    ("kn", "kannada"),
    ("et", "estonian"),
    ("mk", "macedonian"),
    ("br", "breton"),
    ("eu", "basque"),
    ("is", "icelandic"),
    ("hy", "armenian"),
    ("ne", "nepali"),
    ("mn", "mongolian"),
    ("bs", "bosnian"),
    ("kk", "kazakh"),
    ("sq", "albanian"),
    ("sw", "swahili"),
    ("gl", "galician"),
    ("mr", "marathi"),
    ("pa", "punjabi"),
    ("si", "sinhala"),
    ("km", "khmer"),
    ("sn", "shona"),
    ("yo", "yoruba"),
    ("so", "somali"),
    ("af", "afrikaans"),
    ("oc", "occitan"),
    ("ka", "georgian"),
    ("be", "belarusian"),
    ("tg", "tajik"),
    ("sd", "sindhi"),
    ("gu", "gujarati"),
    ("am", "amharic"),
    ("yi", "yiddish"),
    ("lo", "lao"),
    ("uz", "uzbek"),
    ("fo", "faroese"),
    ("ht", "haitian creole"),
    ("ps", "pashto"),
    ("tk", "turkmen"),
    ("nn", "nynorsk"),
    ("mt", "maltese"),
    ("sa", "sanskrit"),
    ("lb", "luxembourgish"),
    ("my", "myanmar"),
    ("bo", "tibetan"),
    ("tl", "tagalog"),
    ("mg", "malagasy"),
    ("as", "assamese"),
    ("tt", "tatar"),
    ("haw", "hawaiian"),
    ("ln", "lingala"),
    ("ha", "hausa"),
    ("ba", "bashkir"),
    ("jw", "javanese"),
    ("su", "sundanese"),
    ("yue", "cantonese"),
];

/// GPT-2's `bytes_to_unicode`: the printable stand-in character of every byte.
fn byte_to_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[b as usize] = if printable {
            b as char
        } else {
            let c = char::from_u32(256 + n).unwrap_or('\0');
            n += 1;
            c
        };
    }
    table
}

/// A Whisper vocabulary.
pub struct WhisperTokenizer {
    /// id → token string (`None` for ids the file does not name, e.g. timestamps).
    tokens: Vec<Option<String>>,
    ids: HashMap<String, u32>,
    char_to_byte: HashMap<char, u8>,
    byte_to_char: [char; 256],
    bpe: Option<tokenizers::Tokenizer>,
    pub specials: SpecialTokens,
    /// The file the vocabulary came from.
    pub source: PathBuf,
}

impl std::fmt::Debug for WhisperTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhisperTokenizer")
            .field("source", &self.source)
            .field("tokens", &self.tokens.len())
            .field("bpe", &self.bpe.is_some())
            .field("specials", &self.specials)
            .finish()
    }
}

impl WhisperTokenizer {
    /// Loads the vocabulary of a model folder (see the module docs for the file order).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        if json.is_file() {
            return Self::from_tokenizer_json(&json);
        }
        let txt = dir.join("vocabulary.txt");
        if txt.is_file() {
            let text = std::fs::read_to_string(&txt).map_err(|e| AsrError::io(&txt, e))?;
            let tokens = text.lines().map(|l| Some(l.to_string())).collect();
            return Self::new(tokens, None, txt);
        }
        let vj = dir.join("vocabulary.json");
        if vj.is_file() {
            let v = read_json(&vj)?;
            let arr = v
                .as_array()
                .ok_or_else(|| AsrError::format(&vj, "expected a JSON array of tokens"))?;
            let tokens = arr
                .iter()
                .map(|t| t.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| AsrError::format(&vj, "expected a JSON array of strings"))?;
            return Self::new(tokens.into_iter().map(Some).collect(), None, vj);
        }
        Err(AsrError::NotAModel {
            dir: dir.to_path_buf(),
            detail: "no tokenizer.json, vocabulary.txt or vocabulary.json".into(),
        })
    }

    /// Loads an HF `tokenizer.json`.
    pub fn from_tokenizer_json(path: &Path) -> Result<Self> {
        let v = read_json(path)?;
        let bad = |m: &str| AsrError::format(path, m.to_string());
        let vocab = v
            .pointer("/model/vocab")
            .and_then(|x| x.as_object())
            .ok_or_else(|| bad("no model.vocab object"))?;
        let mut pairs: Vec<(u32, String)> = Vec::with_capacity(vocab.len() + 128);
        for (tok, id) in vocab {
            let id = id
                .as_u64()
                .ok_or_else(|| bad("non-integer id in model.vocab"))?;
            pairs.push((id as u32, tok.clone()));
        }
        if let Some(added) = v.get("added_tokens").and_then(|x| x.as_array()) {
            for a in added {
                if let (Some(id), Some(c)) = (
                    a.get("id").and_then(|x| x.as_u64()),
                    a.get("content").and_then(|x| x.as_str()),
                ) {
                    pairs.push((id as u32, c.to_string()));
                }
            }
        }
        let max = pairs
            .iter()
            .map(|p| p.0)
            .max()
            .ok_or_else(|| bad("empty vocabulary"))?;
        if max > 10_000_000 {
            return Err(bad("token id out of range"));
        }
        let mut tokens = vec![None; max as usize + 1];
        for (id, t) in pairs {
            tokens[id as usize] = Some(t);
        }
        let bpe = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| AsrError::format(path, format!("tokenizer: {e}")))?;
        Self::new(tokens, Some(bpe), path.to_path_buf())
    }

    fn new(
        tokens: Vec<Option<String>>,
        bpe: Option<tokenizers::Tokenizer>,
        source: PathBuf,
    ) -> Result<Self> {
        let ids: HashMap<String, u32> = tokens
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.as_ref().map(|t| (t.clone(), i as u32)))
            .collect();
        let find = |name: &str| -> Result<u32> {
            ids.get(name)
                .copied()
                .ok_or_else(|| AsrError::format(&source, format!("vocabulary has no {name} token")))
        };
        let sot = find("<|startoftranscript|>")?;
        let translate = find("<|translate|>")?;
        let no_timestamps = find("<|notimestamps|>")?;
        let languages = (sot + 1..translate)
            .filter_map(|id| {
                let t = tokens.get(id as usize)?.as_ref()?;
                let code = t.strip_prefix("<|")?.strip_suffix("|>")?;
                Some((code.to_string(), id))
            })
            .collect();
        let specials = SpecialTokens {
            eot: find("<|endoftext|>")?,
            sot,
            translate,
            transcribe: find("<|transcribe|>")?,
            sot_lm: find("<|startoflm|>")?,
            sot_prev: find("<|startofprev|>")?,
            no_speech: ids
                .get("<|nospeech|>")
                .or_else(|| ids.get("<|nocaptions|>"))
                .copied(),
            no_timestamps,
            timestamp_begin: ids.get("<|0.00|>").copied().unwrap_or(no_timestamps + 1),
            languages,
        };
        let byte_to_char = byte_to_char();
        let char_to_byte = byte_to_char
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect();
        Ok(Self {
            tokens,
            ids,
            char_to_byte,
            byte_to_char,
            bpe,
            specials,
            source,
        })
    }

    /// Number of ids the vocabulary file names.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The token string of `id` (byte-level form, e.g. `"Ġworld"`).
    pub fn token(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize)?.as_deref()
    }

    /// The id of a token string.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.ids.get(token).copied()
    }

    /// Decodes text tokens (ids below `eot`); other ids are skipped.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            if id >= self.specials.eot {
                continue;
            }
            let Some(tok) = self.token(id) else { continue };
            for c in tok.chars() {
                match self.char_to_byte.get(&c) {
                    Some(&b) => bytes.push(b),
                    None => {
                        let mut buf = [0u8; 4];
                        bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    }
                }
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// BPE-encodes `text` without special tokens (see the module docs for the fallback
    /// without a `tokenizer.json`). `None` when it cannot be encoded.
    pub fn encode(&self, text: &str) -> Option<Vec<u32>> {
        match &self.bpe {
            Some(t) => t.encode(text, false).ok().map(|e| e.get_ids().to_vec()),
            None => {
                let mapped: String = text
                    .bytes()
                    .map(|b| self.byte_to_char[b as usize])
                    .collect();
                self.token_id(&mapped).map(|id| vec![id])
            }
        }
    }

    /// openai-whisper's `Tokenizer.non_speech_tokens`: tokens of symbols and speaker-tag
    /// punctuation that are suppressed so they are never transcribed.
    pub fn non_speech_tokens(&self) -> Vec<u32> {
        let mut symbols: Vec<String> = "\"#()*+/:;<=>@[\\]^_`{|}~「」『』"
            .chars()
            .map(String::from)
            .collect();
        symbols.extend(
            "<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪"
                .split(' ')
                .map(String::from),
        );
        let misc: Vec<String> = "♩♪♫♬♭♮♯".chars().map(String::from).collect();
        let mut out: Vec<u32> = [" -", " '"]
            .iter()
            .filter_map(|s| self.encode(s).and_then(|t| t.first().copied()))
            .collect();
        for (symbol, is_misc) in symbols
            .iter()
            .map(|s| (s, false))
            .chain(misc.iter().map(|s| (s, true)))
        {
            for text in [symbol.clone(), format!(" {symbol}")] {
                if let Some(toks) = self.encode(&text) {
                    if toks.len() == 1 || (is_misc && !toks.is_empty()) {
                        out.push(toks[0]);
                    }
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The language token of `code` (`"en"`) or English name (`"english"`).
    pub fn language_token(&self, language: &str) -> Option<(String, u32)> {
        let l = language.to_ascii_lowercase();
        let code = LANGUAGES
            .iter()
            .find(|(c, n)| *c == l || *n == l)
            .map(|(c, _)| c.to_string())
            .unwrap_or(l);
        self.specials
            .languages
            .iter()
            .find(|(c, _)| *c == code)
            .cloned()
    }
}
