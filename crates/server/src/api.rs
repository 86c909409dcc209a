//! The OpenAI `chat.completions` request: parsing, validation and media URLs.
//!
//! Everything a client can get wrong is checked here, before the request is queued,
//! and answered with a 4xx naming the field (`param`) and the cause.

use crate::error::ApiError;
use axum::http::StatusCode;
use base64::Engine;
use serde_json::{Map, Value};
use std::path::{Component, Path, PathBuf};

/// The supported content part types, for error messages.
const PART_TYPES: &str = "text, image_url, video_url, input_audio, audio_url";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    Video,
    Image,
    Audio,
}

impl MediaKind {
    pub fn name(self) -> &'static str {
        match self {
            MediaKind::Video => "video",
            MediaKind::Image => "image",
            MediaKind::Audio => "audio",
        }
    }
}

/// Where one medium comes from.
#[derive(Debug)]
pub enum MediaSource {
    /// Decoded base64 bytes (`data:` URL or `input_audio.data`), written to a
    /// temporary file for FFmpeg; the extension follows the declared type.
    Bytes { data: Vec<u8>, extension: String },
    /// A canonical path under the allowed media directory.
    File(PathBuf),
}

#[derive(Debug)]
pub struct MediaItem {
    pub kind: MediaKind,
    pub source: MediaSource,
    /// The JSON path of the content part, e.g. `messages[0].content[1]`.
    pub param: String,
}

/// A validated request.
#[derive(Debug, Default)]
pub struct ChatRequest {
    /// user, assistant, user, … ending with user.
    pub turns: Vec<String>,
    pub video: Option<MediaItem>,
    pub image: Option<MediaItem>,
    pub audio: Option<MediaItem>,
    pub model: Option<String>,
    pub max_tokens: Option<usize>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<usize>,
    pub repetition_penalty: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    pub start_s: Option<f64>,
    pub end_s: Option<f64>,
    pub use_audio: Option<bool>,
    /// MiniGPT4-Video: `"none"`, `"auto"` (speech recognition) or `"default"`.
    pub subtitles: Option<String>,
    /// MiniGPT4-Video: the subtitles themselves (WebVTT or SRT text).
    pub subtitles_text: Option<String>,
    /// System/developer messages seen (and ignored: the checkpoint's chat template
    /// supplies the reference's own system prompt).
    pub system_messages: usize,
}

/// What the parser needs to know about the server.
pub struct ParseContext<'a> {
    /// Canonical `--allowed-media-dir`; `None` refuses every `file://` URL.
    pub allowed_media_dir: Option<&'a Path>,
    /// The model's context length (upper bound for `max_tokens`).
    pub context: usize,
}

fn bad(param: impl Into<String>, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(message).param(param)
}

fn short(s: &str) -> String {
    const MAX: usize = 80;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        let cut: String = s.chars().take(MAX).collect();
        format!("{cut}…")
    }
}

/// Parse and validate the body of `POST /v1/chat/completions`.
pub fn parse_chat_request(body: &[u8], ctx: &ParseContext) -> Result<ChatRequest, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("the request body is not valid JSON: {e}"))
            .code("invalid_json")
    })?;
    let Value::Object(obj) = value else {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    };
    let mut req = ChatRequest::default();
    parse_messages(&obj, ctx, &mut req)?;
    parse_params(&obj, ctx, &mut req)?;
    Ok(req)
}

#[derive(PartialEq, Clone, Copy)]
enum Role {
    User,
    Assistant,
}

fn parse_messages(
    obj: &Map<String, Value>,
    ctx: &ParseContext,
    req: &mut ChatRequest,
) -> Result<(), ApiError> {
    let messages = match obj.get("messages") {
        Some(Value::Array(m)) => m,
        Some(_) => return Err(bad("messages", "`messages` must be an array")),
        None => return Err(bad("messages", "`messages` is required")),
    };
    let mut turns: Vec<(Role, Vec<String>)> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let param = format!("messages[{i}]");
        let Value::Object(message) = message else {
            return Err(bad(&param, format!("{param} must be an object")));
        };
        let role = match message.get("role").and_then(Value::as_str) {
            Some("user") => Role::User,
            Some("assistant") => Role::Assistant,
            Some("system") | Some("developer") => {
                // Validate the shape, then leave it out: the reference template
                // renders the checkpoint's own system prompt.
                collect_texts(message.get("content"), &param)?;
                req.system_messages += 1;
                continue;
            }
            Some(other) => {
                return Err(bad(
                    format!("{param}.role"),
                    format!(
                        "{param}.role `{}` is not supported; use system, user or assistant",
                        short(other)
                    ),
                ))
            }
            None => {
                return Err(bad(
                    format!("{param}.role"),
                    format!("{param}.role is required (a string)"),
                ))
            }
        };
        // Consecutive messages of one role form one turn.
        let turn_index = match turns.last() {
            Some((r, _)) if *r == role => turns.len() - 1,
            _ => {
                turns.push((role, Vec::new()));
                turns.len() - 1
            }
        };
        let content = message.get("content");
        let texts = match content {
            None | Some(Value::Null) if role == Role::Assistant => Vec::new(),
            None | Some(Value::Null) => {
                return Err(bad(
                    format!("{param}.content"),
                    format!("{param}.content is required"),
                ))
            }
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(parts)) => {
                let mut texts = Vec::new();
                for (j, part) in parts.iter().enumerate() {
                    let pparam = format!("{param}.content[{j}]");
                    if let Some(text) = parse_text_part(part, &pparam)? {
                        texts.push(text);
                        continue;
                    }
                    // A media part.
                    if role != Role::User {
                        return Err(bad(
                            &pparam,
                            format!("{pparam}: only user messages can carry media"),
                        ));
                    }
                    if turn_index != 0 {
                        return Err(bad(
                            &pparam,
                            format!(
                                "{pparam}: media must be in the first user message \
                                 (the model sees one video, image or sound per conversation)"
                            ),
                        ));
                    }
                    let item = parse_media_part(part, &pparam, ctx)?;
                    add_media(req, item)?;
                }
                texts
            }
            Some(_) => {
                return Err(bad(
                    format!("{param}.content"),
                    format!("{param}.content must be a string or an array of content parts"),
                ))
            }
        };
        turns[turn_index].1.extend(texts);
    }
    match turns.first() {
        None => {
            return Err(bad(
                "messages",
                "`messages` must contain at least one user message",
            ))
        }
        Some((Role::Assistant, _)) => {
            return Err(bad(
                "messages",
                "the conversation must start with a user message (after any system messages)",
            ))
        }
        _ => {}
    }
    if turns.last().map(|t| t.0) != Some(Role::User) {
        return Err(bad("messages", "the last message must be from the user"));
    }
    req.turns = turns.into_iter().map(|(_, t)| t.join("\n")).collect();
    Ok(())
}

/// `Some(text)` for a text part, `None` for a media part, an error otherwise.
fn parse_text_part(part: &Value, param: &str) -> Result<Option<String>, ApiError> {
    let Value::Object(part) = part else {
        return Err(bad(param, format!("{param} must be an object")));
    };
    match part.get("type").and_then(Value::as_str) {
        Some("text") => match part.get("text") {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(bad(
                format!("{param}.text"),
                format!("{param}.text must be a string"),
            )),
        },
        Some("image_url" | "video_url" | "audio_url" | "input_audio") => Ok(None),
        Some(other) => Err(bad(
            format!("{param}.type"),
            format!(
                "{param}: unknown content part type `{}`; supported: {PART_TYPES}",
                short(other)
            ),
        )
        .code("unsupported_content_type")),
        None => Err(bad(
            format!("{param}.type"),
            format!("{param}.type is required; one of {PART_TYPES}"),
        )),
    }
}

/// The texts of a system message (media are refused there).
fn collect_texts(content: Option<&Value>, param: &str) -> Result<Vec<String>, ApiError> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(parts)) => {
            let mut out = Vec::new();
            for (j, part) in parts.iter().enumerate() {
                let pparam = format!("{param}.content[{j}]");
                match parse_text_part(part, &pparam)? {
                    Some(t) => out.push(t),
                    None => {
                        return Err(bad(
                            &pparam,
                            format!("{pparam}: only user messages can carry media"),
                        ))
                    }
                }
            }
            Ok(out)
        }
        Some(_) => Err(bad(
            format!("{param}.content"),
            format!("{param}.content must be a string or an array of content parts"),
        )),
    }
}

fn add_media(req: &mut ChatRequest, item: MediaItem) -> Result<(), ApiError> {
    match item.kind {
        MediaKind::Video | MediaKind::Image => {
            if let Some(prev) = req.video.as_ref().or(req.image.as_ref()) {
                return Err(bad(
                    &item.param,
                    format!(
                        "{}: only one video or image per conversation (already given in {})",
                        item.param, prev.param
                    ),
                ));
            }
            if item.kind == MediaKind::Video {
                req.video = Some(item);
            } else {
                req.image = Some(item);
            }
        }
        MediaKind::Audio => {
            if let Some(prev) = &req.audio {
                return Err(bad(
                    &item.param,
                    format!(
                        "{}: only one sound per conversation (already given in {})",
                        item.param, prev.param
                    ),
                ));
            }
            req.audio = Some(item);
        }
    }
    Ok(())
}

/// `{"url": "..."}` or a bare string.
fn url_field<'a>(
    part: &'a Map<String, Value>,
    key: &str,
    param: &str,
) -> Result<&'a str, ApiError> {
    match part.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(Value::Object(o)) => match o.get("url") {
            Some(Value::String(s)) => Ok(s),
            _ => Err(bad(
                format!("{param}.{key}.url"),
                format!("{param}.{key}.url must be a string"),
            )),
        },
        _ => Err(bad(
            format!("{param}.{key}"),
            format!("{param}.{key} must be an object with a `url`"),
        )),
    }
}

fn parse_media_part(part: &Value, param: &str, ctx: &ParseContext) -> Result<MediaItem, ApiError> {
    let part = part.as_object().expect("checked by parse_text_part");
    let kind_name = part.get("type").and_then(Value::as_str).unwrap_or_default();
    let (kind, source) = match kind_name {
        "video_url" | "image_url" | "audio_url" => {
            let kind = match kind_name {
                "video_url" => MediaKind::Video,
                "image_url" => MediaKind::Image,
                _ => MediaKind::Audio,
            };
            let fparam = format!("{param}.{kind_name}.url");
            let url = url_field(part, kind_name, param)?;
            (kind, resolve_url(url, kind, &fparam, ctx)?)
        }
        "input_audio" => {
            let fparam = format!("{param}.input_audio");
            let Some(Value::Object(audio)) = part.get("input_audio") else {
                return Err(bad(
                    &fparam,
                    format!("{fparam} must be an object with `data` (base64) and `format`"),
                ));
            };
            let Some(Value::String(data)) = audio.get("data") else {
                return Err(bad(
                    format!("{fparam}.data"),
                    format!("{fparam}.data must be a base64 string"),
                ));
            };
            if data.len() >= 5 && data[..5].eq_ignore_ascii_case("data:") {
                let source = resolve_url(data, MediaKind::Audio, &format!("{fparam}.data"), ctx)?;
                (MediaKind::Audio, source)
            } else {
                let format = match audio.get("format") {
                    None | Some(Value::Null) => "wav".to_string(),
                    Some(Value::String(f)) => f.to_ascii_lowercase(),
                    Some(_) => {
                        return Err(bad(
                            format!("{fparam}.format"),
                            format!("{fparam}.format must be a string such as \"wav\" or \"mp3\""),
                        ))
                    }
                };
                const AUDIO_FORMATS: [&str; 10] = [
                    "wav", "mp3", "flac", "ogg", "opus", "m4a", "aac", "webm", "mp4", "pcm16",
                ];
                if !AUDIO_FORMATS.contains(&format.as_str()) || format == "pcm16" {
                    return Err(bad(
                        format!("{fparam}.format"),
                        format!(
                            "{fparam}.format `{}` is not supported; use one of wav, mp3, flac, ogg, opus, m4a, aac, webm, mp4",
                            short(&format)
                        ),
                    )
                    .code("unsupported_media_type"));
                }
                let bytes = decode_base64(data, &format!("{fparam}.data"))?;
                (
                    MediaKind::Audio,
                    MediaSource::Bytes {
                        data: bytes,
                        extension: format,
                    },
                )
            }
        }
        _ => unreachable!("parse_text_part accepted only media types"),
    };
    Ok(MediaItem {
        kind,
        source,
        param: param.to_string(),
    })
}

fn decode_base64(data: &str, param: &str) -> Result<Vec<u8>, ApiError> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const STANDARD: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    const URL_SAFE: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    // Line-wrapped base64 (as `base64` prints it) is common: drop whitespace.
    let cleaned: Vec<u8> = data.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if cleaned.is_empty() {
        return Err(bad(param, format!("{param}: the base64 data is empty")).code("invalid_base64"));
    }
    STANDARD
        .decode(&cleaned)
        .or_else(|e| URL_SAFE.decode(&cleaned).map_err(|_| e))
        .map_err(|e| {
            bad(param, format!("{param}: invalid base64 data: {e}")).code("invalid_base64")
        })
}

/// File extension for a declared MIME type, if it fits the kind of medium.
fn extension_for(kind: MediaKind, mime: &str) -> Option<&'static str> {
    let mime = mime.to_ascii_lowercase();
    let (top, sub) = mime.split_once('/').unwrap_or((mime.as_str(), ""));
    let generic = mime.is_empty() || mime == "application/octet-stream";
    let ext = |table: &[(&str, &'static str)], default: &'static str| {
        table
            .iter()
            .find(|(s, _)| *s == sub)
            .map(|(_, e)| *e)
            .unwrap_or(default)
    };
    const VIDEO: [(&str, &str); 9] = [
        ("mp4", "mp4"),
        ("webm", "webm"),
        ("quicktime", "mov"),
        ("x-matroska", "mkv"),
        ("x-msvideo", "avi"),
        ("avi", "avi"),
        ("mpeg", "mpg"),
        ("ogg", "ogv"),
        ("x-flv", "flv"),
    ];
    const IMAGE: [(&str, &str); 6] = [
        ("png", "png"),
        ("jpeg", "jpg"),
        ("jpg", "jpg"),
        ("webp", "webp"),
        ("gif", "gif"),
        ("bmp", "bmp"),
    ];
    const AUDIO: [(&str, &str); 12] = [
        ("wav", "wav"),
        ("x-wav", "wav"),
        ("wave", "wav"),
        ("vnd.wave", "wav"),
        ("mpeg", "mp3"),
        ("mp3", "mp3"),
        ("flac", "flac"),
        ("x-flac", "flac"),
        ("ogg", "ogg"),
        ("opus", "opus"),
        ("mp4", "m4a"),
        ("aac", "aac"),
    ];
    match kind {
        MediaKind::Video => match top {
            _ if generic => Some("mp4"),
            "video" => Some(ext(&VIDEO, "bin")),
            // An animated GIF is a video to the reference.
            "image" if sub == "gif" => Some("gif"),
            _ => None,
        },
        MediaKind::Image => match top {
            _ if generic => Some("png"),
            "image" if IMAGE.iter().any(|(s, _)| *s == sub) => Some(ext(&IMAGE, "png")),
            _ => None,
        },
        MediaKind::Audio => match top {
            _ if generic => Some("wav"),
            "audio" => Some(ext(&AUDIO, "bin")),
            // A sound track inside a video container.
            "video" => Some(ext(&VIDEO, "bin")),
            _ => None,
        },
    }
}

fn expected_types(kind: MediaKind) -> &'static str {
    match kind {
        MediaKind::Video => "video/* (or image/gif)",
        MediaKind::Image => "image/png, image/jpeg, image/webp, image/gif or image/bmp",
        MediaKind::Audio => "audio/*",
    }
}

fn resolve_url(
    url: &str,
    kind: MediaKind,
    param: &str,
    ctx: &ParseContext,
) -> Result<MediaSource, ApiError> {
    let lower: String = url
        .chars()
        .take(16)
        .collect::<String>()
        .to_ascii_lowercase();
    if lower.starts_with("data:") {
        let rest = &url[5..];
        let Some((header, data)) = rest.split_once(',') else {
            return Err(bad(
                param,
                format!("{param}: malformed data: URL (no comma before the data)"),
            ));
        };
        let mut fields = header.split(';');
        let mime = fields.next().unwrap_or("").trim();
        if !fields.any(|f| f.trim().eq_ignore_ascii_case("base64")) {
            return Err(bad(
                param,
                format!(
                    "{param}: only base64 data: URLs are supported (data:<type>;base64,<data>)"
                ),
            ));
        }
        let Some(extension) = extension_for(kind, mime) else {
            return Err(bad(
                param,
                format!(
                    "{param}: unsupported media type `{}` for a {}; expected {}",
                    short(mime),
                    kind.name(),
                    expected_types(kind)
                ),
            )
            .code("unsupported_media_type"));
        };
        let data = decode_base64(data, param)?;
        return Ok(MediaSource::Bytes {
            data,
            extension: extension.to_string(),
        });
    }
    if lower.starts_with("file://") {
        return resolve_file_url(url, kind, param, ctx).map(MediaSource::File);
    }
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return Err(bad(
            param,
            format!(
                "{param}: remote URLs are not fetched by this server; send the {} inline as a \
                 data: URL (base64) or as a file:// path under the server's --allowed-media-dir",
                kind.name()
            ),
        )
        .code("unsupported_url"));
    }
    Err(bad(
        param,
        format!(
            "{param}: unsupported URL `{}`; expected a data: URL (base64) or a file:// path",
            short(url)
        ),
    )
    .code("unsupported_url"))
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `a/b/../c` → `a/c` without touching the file system.
fn normalize_lexically(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

fn forbidden(param: &str, message: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "invalid_request_error", message)
        .param(param)
        .code("media_path_forbidden")
}

/// `file:///abs/path`, `file://localhost/abs/path`, or `file://rel/path` (relative to
/// the allowed directory). The canonical path (symlinks and `..` resolved) must lie
/// inside the canonical allowed directory.
fn resolve_file_url(
    url: &str,
    kind: MediaKind,
    param: &str,
    ctx: &ParseContext,
) -> Result<PathBuf, ApiError> {
    let Some(root) = ctx.allowed_media_dir else {
        return Err(forbidden(
            param,
            format!(
                "{param}: file:// URLs are disabled on this server (start it with \
                 --allowed-media-dir DIR to allow files under DIR); send the {} as a data: URL",
                kind.name()
            ),
        ));
    };
    let raw = &url[7..];
    // `file://localhost/abs` is `/abs`.
    let raw = if raw.starts_with("localhost/") {
        &raw[9..]
    } else {
        raw
    };
    let raw = raw.split(['?', '#']).next().unwrap_or(raw);
    let Some(decoded) = percent_decode(raw) else {
        return Err(bad(
            param,
            format!("{param}: invalid percent-encoding in the file:// URL"),
        ));
    };
    if decoded.is_empty() || decoded.contains('\0') {
        return Err(bad(
            param,
            format!("{param}: empty or invalid file:// path"),
        ));
    }
    let path = PathBuf::from(&decoded);
    let path = if path.is_absolute() {
        path
    } else {
        root.join(path)
    };
    let outside = || {
        forbidden(
            param,
            format!(
                "{param}: {} is outside the allowed media directory",
                short(&decoded)
            ),
        )
    };
    let canonical = match path.canonicalize() {
        Ok(c) => c,
        Err(_) => {
            // Do not reveal whether files outside the directory exist.
            if !normalize_lexically(&path).starts_with(root) {
                return Err(outside());
            }
            return Err(bad(
                param,
                format!(
                    "{param}: no such file in the allowed media directory: {}",
                    short(&decoded)
                ),
            )
            .code("media_not_found"));
        }
    };
    if !canonical.starts_with(root) {
        return Err(outside());
    }
    let ok = canonical.is_file() || (kind == MediaKind::Video && canonical.is_dir());
    if !ok {
        return Err(bad(
            param,
            format!("{param}: {} is not a file", short(&decoded)),
        ));
    }
    Ok(canonical)
}

fn opt_number(obj: &Map<String, Value>, key: &str) -> Result<Option<f64>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(f) if f.is_finite() => Ok(Some(f)),
            _ => Err(bad(key, format!("`{key}` must be a finite number"))),
        },
        Some(_) => Err(bad(key, format!("`{key}` must be a number"))),
    }
}

fn opt_uint(obj: &Map<String, Value>, key: &str) -> Result<Option<u64>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(u) = n.as_u64() {
                return Ok(Some(u));
            }
            match n.as_f64() {
                Some(f) if f >= 0.0 && f.fract() == 0.0 && f <= u64::MAX as f64 => {
                    Ok(Some(f as u64))
                }
                _ => Err(bad(key, format!("`{key}` must be a non-negative integer"))),
            }
        }
        Some(_) => Err(bad(key, format!("`{key}` must be a non-negative integer"))),
    }
}

fn opt_bool(obj: &Map<String, Value>, key: &str) -> Result<Option<bool>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(bad(key, format!("`{key}` must be true or false"))),
    }
}

fn parse_params(
    obj: &Map<String, Value>,
    ctx: &ParseContext,
    req: &mut ChatRequest,
) -> Result<(), ApiError> {
    req.model = match obj.get("model") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(bad("model", "`model` must be a string")),
    };
    for key in ["max_completion_tokens", "max_tokens"] {
        if let Some(n) = opt_uint(obj, key)? {
            if n == 0 {
                return Err(bad(key, format!("`{key}` must be at least 1")));
            }
            if n > ctx.context as u64 {
                return Err(bad(
                    key,
                    format!(
                        "`{key}` is {n}, more than the model's context of {} tokens",
                        ctx.context
                    ),
                ));
            }
            req.max_tokens = Some(n as usize);
            break;
        }
    }
    req.temperature = opt_number(obj, "temperature")?;
    if let Some(t) = req.temperature {
        if !(0.0..=2.0).contains(&t) {
            return Err(bad("temperature", "`temperature` must be between 0 and 2"));
        }
    }
    req.top_p = opt_number(obj, "top_p")?;
    if let Some(p) = req.top_p {
        if !(p > 0.0 && p <= 1.0) {
            return Err(bad("top_p", "`top_p` must be in (0, 1]"));
        }
    }
    req.top_k = opt_uint(obj, "top_k")?
        .map(|k| k as usize)
        .filter(|k| *k > 0);
    if let Some(r) = opt_number(obj, "repetition_penalty")? {
        if r <= 0.0 {
            return Err(bad(
                "repetition_penalty",
                "`repetition_penalty` must be positive",
            ));
        }
        req.repetition_penalty = Some(r as f32);
    }
    req.seed = match obj.get("seed") {
        Some(Value::Number(n)) if n.as_i64().is_some_and(|s| s < 0) => {
            return Err(bad("seed", "`seed` must be a non-negative integer"))
        }
        _ => opt_uint(obj, "seed")?,
    };
    req.stop = match obj.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => {
            if items.len() > 16 {
                return Err(bad("stop", "`stop` accepts at most 16 strings"));
            }
            items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| bad("stop", "`stop` must be a string or a list of strings"))
                })
                .collect::<Result<_, _>>()?
        }
        Some(_) => return Err(bad("stop", "`stop` must be a string or a list of strings")),
    };
    req.stop.retain(|s| !s.is_empty());
    if let Some(n) = opt_uint(obj, "n")? {
        if n != 1 {
            return Err(bad("n", "only `n` = 1 is supported"));
        }
    }
    if opt_bool(obj, "logprobs")? == Some(true) {
        return Err(bad("logprobs", "`logprobs` are not supported"));
    }
    req.stream = opt_bool(obj, "stream")?.unwrap_or(false);
    req.include_usage = match obj.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => opt_bool(o, "include_usage")
            .map_err(|_| {
                bad(
                    "stream_options.include_usage",
                    "`stream_options.include_usage` must be true or false",
                )
            })?
            .unwrap_or(false),
        Some(_) => return Err(bad("stream_options", "`stream_options` must be an object")),
    };
    req.start_s = opt_number(obj, "start")?;
    req.end_s = opt_number(obj, "end")?;
    for (key, v) in [("start", req.start_s), ("end", req.end_s)] {
        if v.is_some_and(|v| v < 0.0) {
            return Err(bad(
                key,
                format!("`{key}` must be a non-negative number of seconds"),
            ));
        }
    }
    if let (Some(s), Some(e)) = (req.start_s, req.end_s) {
        if e <= s {
            return Err(bad("end", "`end` must be after `start`"));
        }
    }
    if (req.start_s.is_some() || req.end_s.is_some()) && req.video.is_none() {
        return Err(bad(
            "start",
            "`start`/`end` apply to a video, and none was given",
        ));
    }
    req.use_audio = opt_bool(obj, "use_audio")?;
    req.subtitles = match obj.get("subtitles") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if ["none", "auto", "default"].contains(&s.as_str()) => {
            Some(s.clone())
        }
        Some(_) => {
            return Err(bad(
                "subtitles",
                "`subtitles` must be \"none\", \"auto\" or \"default\" (send the text itself \
                 in `subtitles_text`)",
            ))
        }
    };
    req.subtitles_text = match obj.get("subtitles_text") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            return Err(bad(
                "subtitles_text",
                "`subtitles_text` must be WebVTT or SRT text",
            ))
        }
    };
    if req.subtitles.is_some() && req.subtitles_text.is_some() {
        return Err(bad(
            "subtitles",
            "give `subtitles` or `subtitles_text`, not both",
        ));
    }
    // `num_frames` is accepted and ignored: the checkpoint's config fixes it.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> ParseContext<'static> {
        ParseContext {
            allowed_media_dir: None,
            context: 4096,
        }
    }

    fn parse(v: serde_json::Value) -> Result<ChatRequest, ApiError> {
        parse_chat_request(v.to_string().as_bytes(), &ctx())
    }

    #[test]
    fn string_and_parts_and_turns() {
        let r = parse(serde_json::json!({
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": "x"},
                {"role": "user", "content": "c"},
                {"role": "user", "content": "d"}
            ],
            "max_tokens": 5, "stop": "END", "seed": 3, "stream": true,
            "stream_options": {"include_usage": true}
        }))
        .unwrap();
        assert_eq!(r.turns, vec!["a\nb", "x", "c\nd"]);
        assert_eq!(r.system_messages, 1);
        assert_eq!(r.max_tokens, Some(5));
        assert_eq!(r.stop, vec!["END"]);
        assert_eq!(r.seed, Some(3));
        assert!(r.stream && r.include_usage);
    }

    #[test]
    fn conversation_shape_errors() {
        for (body, needle) in [
            (serde_json::json!({}), "`messages` is required"),
            (
                serde_json::json!({"messages": []}),
                "at least one user message",
            ),
            (
                serde_json::json!({"messages": [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]}),
                "must start with a user message",
            ),
            (
                serde_json::json!({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}),
                "last message must be from the user",
            ),
            (
                serde_json::json!({"messages": [{"role": "tool", "content": "x"}]}),
                "not supported",
            ),
            (
                serde_json::json!({"messages": [{"role": "user", "content": [{"type": "hologram"}]}]}),
                "unknown content part type `hologram`",
            ),
            (
                serde_json::json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}),
                "at least 1",
            ),
            (
                serde_json::json!({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}),
                "must be a number",
            ),
            (
                serde_json::json!({"messages": [{"role": "user", "content": "x"}], "seed": -1}),
                "non-negative",
            ),
            (
                serde_json::json!({"messages": [{"role": "user", "content": "x"}], "n": 2}),
                "`n` = 1",
            ),
        ] {
            let e = parse(body.clone()).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}");
            assert!(e.message.contains(needle), "{body}: {}", e.message);
        }
    }

    #[test]
    fn media_urls() {
        let video = |url: &str| {
            serde_json::json!({"messages": [{"role": "user", "content": [
                {"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": "q"}]}]})
        };
        let r = parse(video("data:video/mp4;base64,AAEC")).unwrap();
        match r.video.unwrap().source {
            MediaSource::Bytes { data, extension } => {
                assert_eq!(data, vec![0, 1, 2]);
                assert_eq!(extension, "mp4");
            }
            other => panic!("{other:?}"),
        }
        let e = parse(video("data:text/plain;base64,AAEC")).unwrap_err();
        assert_eq!(e.code, Some("unsupported_media_type"));
        let e = parse(video("data:video/mp4;base64,@@@")).unwrap_err();
        assert_eq!(e.code, Some("invalid_base64"));
        let e = parse(video("https://example.com/v.mp4")).unwrap_err();
        assert_eq!(e.code, Some("unsupported_url"));
        let e = parse(video("ftp://x")).unwrap_err();
        assert_eq!(e.code, Some("unsupported_url"));
        let e = parse(video("file:///etc/passwd")).unwrap_err();
        assert_eq!(e.status, StatusCode::FORBIDDEN);
        // Two visual media.
        let e = parse(
            serde_json::json!({"messages": [{"role": "user", "content": [
            {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AA=="}},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]}]}),
        )
        .unwrap_err();
        assert!(
            e.message.contains("only one video or image"),
            "{}",
            e.message
        );
        // Media outside the first user turn.
        let e = parse(serde_json::json!({"messages": [
            {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]}]}))
        .unwrap_err();
        assert!(e.message.contains("first user message"), "{}", e.message);
        // input_audio, OpenAI shape.
        let r = parse(
            serde_json::json!({"messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": "AAEC", "format": "mp3"}}]}]}),
        )
        .unwrap();
        assert!(
            matches!(r.audio.unwrap().source, MediaSource::Bytes { ref extension, .. } if extension == "mp3")
        );
    }

    #[test]
    fn file_urls_stay_inside_the_allowed_dir() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::write(root.join("a b.mp4"), b"x").unwrap();
        let outside = tempfile::NamedTempFile::new().unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(outside.path(), root.join("link.mp4")).unwrap();
        let ctx = ParseContext {
            allowed_media_dir: Some(&root),
            context: 4096,
        };
        let resolve = |url: &str| resolve_url(url, MediaKind::Video, "p", &ctx);
        let ok = resolve(&format!("file://{}/a%20b.mp4", root.display())).unwrap();
        assert!(matches!(ok, MediaSource::File(p) if p == root.join("a b.mp4")));
        assert!(matches!(
            resolve("file://a%20b.mp4").unwrap(),
            MediaSource::File(_)
        ));
        for url in [
            format!("file://{}/../../etc/passwd", root.display()),
            format!("file://{}", outside.path().display()),
            "file://../escape.mp4".to_string(),
            #[cfg(unix)]
            format!("file://{}/link.mp4", root.display()),
        ] {
            let e = resolve(&url).unwrap_err();
            assert_eq!(e.status, StatusCode::FORBIDDEN, "{url}: {}", e.message);
        }
        let e = resolve(&format!("file://{}/missing.mp4", root.display())).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.code, Some("media_not_found"));
    }
}
