//! Where a Video-ChatGPT model's pieces are, and the settings the reference hard-codes.
//!
//! The published model is two pieces, and a folder holding them loads as it is:
//!
//! ```text
//! DIR/
//!   LLaVA-7B-Lightening-v1-1/     the base: config.json (mm_vision_tower, use_mm_proj,
//!                                 mm_hidden_size), LLaMA weights, lm_head, tokenizer
//!   video_chatgpt-7B.bin          the "projection" file: model.mm_projector.{weight,bias}
//!                                 and the whole resized model.embed_tokens.weight
//! ```
//!
//! DIR may also be the base folder itself (its `config.json` says `model_type: VideoChatGPT`)
//! with the projection file inside. The projection file is any `video_chatgpt*.bin` / `.pth` /
//! `.pt` / `.safetensors` in DIR (a `.safetensors` twin of a `.bin` is read instead of the
//! pickle, see `checkpoint.rs`). The vision tower and its image processor come from the
//! folder `mm_vision_tower` names, looked up as given, under DIR, DIR's parent, the base
//! folder, then the Hugging Face cache (the reference hard-codes `openai/clip-vit-large-patch14`
//! for the tower and reads the processor from `mm_vision_tower`; the published base names
//! that same repository).
//!
//! Settings that are constants in the reference's Python are `--options KEY=VALUE` here:
//! `num_frames` (`load_video(num_frm=100)`) and `conv_mode` (`video-chatgpt_v1`, the
//! inference default, or `vicuna_v1_1`, the training prompt).

use crate::error::{PipelineError, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Frames sampled per video (`load_video(num_frm=100)`), also the temporal rows of the pooling.
pub const NUM_FRAMES: usize = 100;

fn default_select_layer() -> i64 {
    -2
}

/// The base folder's `config.json` (reference field names; unknown keys ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct VideoChatGptConfig {
    /// `VideoChatGPT` (the class's own type) or `llava` (the published LLaVA-Lightning base).
    #[serde(default)]
    pub model_type: Option<String>,
    /// The CLIP tower's folder or Hub id (`openai/clip-vit-large-patch14`).
    #[serde(default)]
    pub mm_vision_tower: Option<String>,
    /// Width of the tower features (1024); checked against the tower.
    #[serde(default)]
    pub mm_hidden_size: Option<usize>,
    /// The base builds `model.mm_projector` when present.
    #[serde(default)]
    pub use_mm_proj: Option<bool>,
    /// `hidden_states[-2]` in the reference (LLaVA's convention).
    #[serde(default = "default_select_layer")]
    pub mm_vision_select_layer: i64,
    pub hidden_size: usize,
    /// The base vocabulary (LLaVA-Lightning: 32003); the projection file's table is larger.
    pub vocab_size: usize,
}

impl VideoChatGptConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let raw = crate::error::read_json(path)?;
        serde_json::from_value(raw).map_err(|e| PipelineError::file(path, e))
    }
}

/// The two pieces of a Video-ChatGPT model.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// The folder the user named.
    pub dir: PathBuf,
    /// The LLaVA-Lightning base folder.
    pub base: PathBuf,
    /// The projection file (`video_chatgpt-7B.bin`).
    pub projection: PathBuf,
}

const PROJECTION_EXTENSIONS: [&str; 4] = ["bin", "pth", "pt", "safetensors"];

/// The `video_chatgpt*` weight files in `dir`, one per stem (the `.bin` / `.pth` when a
/// `.safetensors` twin sits beside it).
fn projection_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().to_lowercase())
                .unwrap_or_default();
            let ext = p
                .extension()
                .map(|e| e.to_string_lossy().to_lowercase())
                .unwrap_or_default();
            name.starts_with("video_chatgpt") && PROJECTION_EXTENSIONS.contains(&ext.as_str())
        })
        .collect();
    files.sort();
    let mut out: Vec<PathBuf> = Vec::new();
    for f in files {
        let stem = f.with_extension("");
        match out.iter_mut().find(|o| o.with_extension("") == stem) {
            // Keep the pickle's name; its safetensors twin is read in its place.
            Some(o) if o.extension().is_some_and(|e| e == "safetensors") => *o = f,
            Some(_) => {}
            None => out.push(f),
        }
    }
    out
}

fn model_type(config: &Path) -> Option<String> {
    let text = std::fs::read_to_string(config).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json.get("model_type")?.as_str().map(str::to_string)
}

/// Is `dir` a Video-ChatGPT folder? `None`: no. `Some(Err)`: it looks like one but a piece is
/// missing or ambiguous (the error names the folder and the files).
pub fn detect(dir: &Path) -> Option<Result<Layout>> {
    if !dir.is_dir() {
        return None;
    }
    let projections = projection_files(dir);
    let own_config = dir.join("config.json");
    let is_base = own_config.is_file()
        && model_type(&own_config).is_some_and(|t| t.eq_ignore_ascii_case("videochatgpt"));
    if projections.is_empty() && !is_base {
        return None;
    }
    let projection =
        match projections.as_slice() {
            [one] => one.clone(),
            [] => return Some(Err(PipelineError::file(
                dir,
                "a Video-ChatGPT base folder (model_type VideoChatGPT) needs its projection file \
                 (video_chatgpt-7B.bin: mm_projector and the resized embed_tokens) beside its \
                 config.json",
            ))),
            many => {
                let names: Vec<String> = many.iter().map(|p| p.display().to_string()).collect();
                return Some(Err(PipelineError::file(
                    dir,
                    format!(
                        "several Video-ChatGPT projection files: {}; keep one",
                        names.join(", ")
                    ),
                )));
            }
        };
    let base = if own_config.is_file() {
        dir.to_path_buf()
    } else {
        let mut bases: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.is_dir() && p.join("config.json").is_file())
                    .collect()
            })
            .unwrap_or_default();
        bases.sort();
        if bases.len() > 1 {
            // Prefer the folders whose config names a vision tower (the LLaVA base).
            let with_tower: Vec<PathBuf> = bases
                .iter()
                .filter(|b| {
                    VideoChatGptConfig::from_file(&b.join("config.json"))
                        .is_ok_and(|c| c.mm_vision_tower.is_some())
                })
                .cloned()
                .collect();
            if !with_tower.is_empty() {
                bases = with_tower;
            }
        }
        match bases.as_slice() {
            [one] => one.clone(),
            [] => {
                return Some(Err(PipelineError::file(
                    dir,
                    format!(
                        "{} is here but no LLaVA-Lightning base folder (a sub-folder with \
                         config.json, the LLaMA weights and the tokenizer)",
                        projection.display()
                    ),
                )))
            }
            many => {
                let names: Vec<String> = many.iter().map(|p| p.display().to_string()).collect();
                return Some(Err(PipelineError::file(
                    dir,
                    format!(
                        "several candidate base folders: {}; keep one",
                        names.join(", ")
                    ),
                )));
            }
        }
    };
    Some(Ok(Layout {
        dir: dir.to_path_buf(),
        base,
        projection,
    }))
}

/// The conversation template (`conv_templates` of `video_conversation.py`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvMode {
    /// `video-chatgpt_v1`: the inference default.
    VideoChatGptV1,
    /// `vicuna_v1_1`: the system prompt the model was trained with.
    VicunaV11,
}

impl ConvMode {
    pub fn name(self) -> &'static str {
        match self {
            ConvMode::VideoChatGptV1 => "video-chatgpt_v1",
            ConvMode::VicunaV11 => "vicuna_v1_1",
        }
    }

    /// The system text (note the reference's missing space in "language.Follow").
    pub fn system(self) -> &'static str {
        match self {
            ConvMode::VideoChatGptV1 => {
                "You are Video-ChatGPT, a large vision-language assistant. You are able to \
                 understand the video content that the user provides, and assist the user with a \
                 variety of tasks using natural language.Follow the instructions carefully and \
                 explain your answers in detail based on the provided video."
            }
            ConvMode::VicunaV11 => {
                "A chat between a curious user and an artificial intelligence assistant. The \
                 assistant gives helpful, detailed, and polite answers to the user's questions."
            }
        }
    }
}

impl std::str::FromStr for ConvMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "video-chatgpt_v1" => Ok(ConvMode::VideoChatGptV1),
            "vicuna_v1_1" => Ok(ConvMode::VicunaV11),
            other => Err(format!(
                "unknown Video-ChatGPT conv_mode {other:?}; use video-chatgpt_v1 or vicuna_v1_1"
            )),
        }
    }
}

/// The `--options KEY=VALUE` of a Video-ChatGPT model.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoChatGptOptions {
    /// Frames sampled per video (100).
    pub num_frames: usize,
    pub conv_mode: ConvMode,
}

impl Default for VideoChatGptOptions {
    fn default() -> Self {
        Self {
            num_frames: NUM_FRAMES,
            conv_mode: ConvMode::VideoChatGptV1,
        }
    }
}

impl VideoChatGptOptions {
    pub fn parse(options: &[String]) -> Result<Self> {
        let mut out = Self::default();
        for option in options {
            let (key, value) = option.split_once('=').ok_or_else(|| {
                PipelineError::Invalid(format!("--options {option:?}: expected KEY=VALUE"))
            })?;
            match key.trim() {
                "num_frames" => {
                    out.num_frames =
                        value
                            .trim()
                            .parse()
                            .ok()
                            .filter(|n| *n > 0)
                            .ok_or_else(|| {
                                PipelineError::Invalid(format!(
                                    "--options num_frames={value}: expected a positive integer"
                                ))
                            })?
                }
                "conv_mode" => {
                    out.conv_mode = value.trim().parse().map_err(PipelineError::Invalid)?
                }
                other => {
                    return Err(PipelineError::Invalid(format!(
                        "--options {other}: a Video-ChatGPT model takes num_frames and conv_mode"
                    )))
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_detected_or_explained() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        assert!(
            detect(dir).is_none(),
            "an empty folder is not Video-ChatGPT"
        );
        std::fs::write(dir.join("video_chatgpt-7B.bin"), b"x").unwrap();
        std::fs::write(dir.join("video_chatgpt-7B.safetensors"), b"x").unwrap();
        let err = detect(dir).unwrap().unwrap_err().to_string();
        assert!(err.contains("base folder"), "{err}");
        let base = dir.join("LLaVA-7B-Lightening-v1-1");
        std::fs::create_dir(&base).unwrap();
        std::fs::write(
            base.join("config.json"),
            r#"{"model_type": "llava", "hidden_size": 8, "vocab_size": 3, "mm_vision_tower": "openai/clip-vit-large-patch14"}"#,
        )
        .unwrap();
        let layout = detect(dir).unwrap().unwrap();
        assert_eq!(layout.base, base);
        assert_eq!(layout.projection, dir.join("video_chatgpt-7B.bin"));
        std::fs::write(dir.join("video_chatgpt-13B.bin"), b"x").unwrap();
        let err = detect(dir).unwrap().unwrap_err().to_string();
        assert!(err.contains("several"), "{err}");
    }

    #[test]
    fn options_parse_and_reject() {
        let o =
            VideoChatGptOptions::parse(&["num_frames=8".into(), "conv_mode=vicuna_v1_1".into()])
                .unwrap();
        assert_eq!(o.num_frames, 8);
        assert_eq!(o.conv_mode, ConvMode::VicunaV11);
        assert!(VideoChatGptOptions::parse(&["num_frames=0".into()]).is_err());
        assert!(VideoChatGptOptions::parse(&["model.vit=1".into()]).is_err());
        assert!(ConvMode::VideoChatGptV1
            .system()
            .contains("language.Follow"));
    }
}
