//! Chat-UniVi's `config.json` (`model_type: ChatUniVi`), its conversation templates, and the
//! settings its scripts hard-code.
//!
//! The clustering settings live in the nested `config` dict (`model_config_finetune` of the
//! reference): `use_cluster`, `spatial_cluster_rate0/1/2` (64 / 32 / 16: values > 1 are
//! absolute cluster counts) and `temporal_cluster_rate` (1/16: a fraction of the frames).
//! The CTMs' base k (5, 3, 3 and 5 for ctm0..ctm3) is fixed in the model class.
//!
//! The vision tower is `mm_vision_tower`: `openai/clip-vit-large-patch14` (v1, 224 px, 256
//! patches) or `openai/clip-vit-large-patch14-336` (v1.5, 576 patches); the checkpoint holds
//! no tower weights (the reference builds the tower with `delay_load` and loads it from that
//! name), so it is looked up as given, under the checkpoint folder and its parent, then in the
//! Hugging Face cache.
//!
//! `--options KEY=VALUE`: `max_frames` (the eval scripts' `MAX_IMAGE_LENGTH` = 64; the README
//! demo uses 100), `video_framerate` (1 frame per second) and `conv_mode` (`v1`, `simple`,
//! `simpleqa`; default: `v1` for videos and text as `model_video_qa.py`, `simple` for images
//! as `model_vqa.py`).

use crate::error::{PipelineError, Result};
use serde::Deserialize;
use std::path::Path;

/// `MAX_IMAGE_LENGTH` of `ChatUniVi/constants.py`.
pub const MAX_IMAGE_LENGTH: usize = 64;
/// Base k of the density for ctm0, ctm1, ctm2 and ctm3 (`MetaModel.__init__`).
pub const CTM_BASE_K: [usize; 4] = [5, 3, 3, 5];

fn default_true() -> bool {
    true
}
fn default_select_layer() -> i64 {
    -2
}
fn default_select_feature() -> String {
    "patch".into()
}

/// The nested `config` dict.
#[derive(Debug, Clone, Deserialize)]
pub struct ClusterConfig {
    #[serde(default = "default_true")]
    pub use_cluster: bool,
    #[serde(default)]
    pub spatial_cluster_rate0: Option<f64>,
    #[serde(default)]
    pub spatial_cluster_rate1: Option<f64>,
    #[serde(default)]
    pub spatial_cluster_rate2: Option<f64>,
    #[serde(default)]
    pub temporal_cluster_rate: Option<f64>,
}

impl ClusterConfig {
    /// The four CTM rates (ctm0..ctm3), or an error naming the missing key.
    pub fn rates(&self, path: &Path) -> Result<[f64; 4]> {
        let get = |v: Option<f64>, key: &str| {
            v.filter(|r| r.is_finite() && *r > 0.0).ok_or_else(|| {
                PipelineError::file(
                    path,
                    format!("config.{key} must be a positive number (use_cluster is on)"),
                )
            })
        };
        Ok([
            get(self.spatial_cluster_rate0, "spatial_cluster_rate0")?,
            get(self.spatial_cluster_rate1, "spatial_cluster_rate1")?,
            get(self.spatial_cluster_rate2, "spatial_cluster_rate2")?,
            get(self.temporal_cluster_rate, "temporal_cluster_rate")?,
        ])
    }
}

/// `config.json` of a Chat-UniVi checkpoint (reference field names; unknown keys ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct ChatUniViConfig {
    pub model_type: String,
    pub mm_vision_tower: Option<String>,
    #[serde(default)]
    pub mm_hidden_size: Option<usize>,
    #[serde(default = "default_select_layer")]
    pub mm_vision_select_layer: i64,
    #[serde(default = "default_select_feature")]
    pub mm_vision_select_feature: String,
    #[serde(default)]
    pub mm_use_im_start_end: bool,
    /// Absent means true in the reference (`getattr(..., True)`); released models say false.
    #[serde(default = "default_true")]
    pub mm_use_im_patch_token: bool,
    /// The clustering settings; absent means no clustering (`use_cluster = False`).
    #[serde(default)]
    pub config: Option<ClusterConfig>,
    pub hidden_size: usize,
    pub vocab_size: usize,
}

impl ChatUniViConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let raw = crate::error::read_json(path)?;
        serde_json::from_value(raw).map_err(|e| PipelineError::file(path, e))
    }

    pub fn use_cluster(&self) -> bool {
        self.config.as_ref().is_some_and(|c| c.use_cluster)
    }
}

/// Is `dir` a Chat-UniVi checkpoint folder (its `config.json` says `model_type: ChatUniVi`)?
pub fn config_path(dir: &Path) -> Option<std::path::PathBuf> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    let mt = json.get("model_type")?.as_str()?;
    mt.eq_ignore_ascii_case("chatunivi").then_some(path)
}

/// A conversation template of `ChatUniVi/conversation.py`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvMode {
    /// `conv_v1`: TWO style, sep " ", sep2 `</s>`.
    V1,
    /// `simple_conv`: SINGLE style, sep `###`, with a built-in "Hi!" exchange.
    Simple,
    /// `simple_qa`: SINGLE style, sep `###`, with a built-in snowboard exchange.
    SimpleQa,
}

const SIMPLE_SYSTEM: &str = "A chat between a curious human and an artificial intelligence \
                             assistant. The assistant gives helpful, detailed, and polite answers \
                             to the human's questions.";

impl ConvMode {
    pub fn name(self) -> &'static str {
        match self {
            ConvMode::V1 => "v1",
            ConvMode::Simple => "simple",
            ConvMode::SimpleQa => "simpleqa",
        }
    }

    /// The stop string (`sep2` for TWO, `sep` otherwise).
    pub fn stop(self) -> &'static str {
        match self {
            ConvMode::V1 => "</s>",
            ConvMode::Simple | ConvMode::SimpleQa => "###",
        }
    }

    /// `conv.get_prompt()` after appending the turns (user, assistant, …) and an empty
    /// assistant message; `first_user` replaces the first turn (it carries the `<image>`s).
    pub fn render(self, first_user: &str, turns: &[String]) -> String {
        let text = |i: usize| {
            if i == 0 {
                first_user
            } else {
                turns[i].as_str()
            }
        };
        match self {
            ConvMode::V1 => {
                let mut out = String::from(
                    "A chat between a curious user and an artificial intelligence assistant. \
                     The assistant gives helpful, detailed, and polite answers to the user's \
                     questions. ",
                );
                for i in 0..turns.len() {
                    let (role, sep) = if i % 2 == 0 {
                        ("USER", " ")
                    } else {
                        ("ASSISTANT", "</s>")
                    };
                    if text(i).is_empty() {
                        out.push_str(role);
                        out.push(':');
                    } else {
                        out.push_str(&format!("{role}: {}{sep}", text(i)));
                    }
                }
                out.push_str("ASSISTANT:");
                out
            }
            ConvMode::Simple | ConvMode::SimpleQa => {
                let (system, examples): (String, [(&str, &str); 2]) = match self {
                    ConvMode::Simple => (
                        SIMPLE_SYSTEM.to_string(),
                        [
                            ("Human", "Hi!"),
                            ("Assistant", "Hi there! How can I help you today?"),
                        ],
                    ),
                    _ => (
                        format!(
                            "{SIMPLE_SYSTEM}  If you don't know the answer to a question, please \
                             don't share false information."
                        ),
                        [
                            ("Human", "Is there a snowboard in the image?"),
                            (
                                "Assistant",
                                "Yes, there is a snowboard in the image, and the person is \
                                 riding it down a snow-covered slope.",
                            ),
                        ],
                    ),
                };
                let mut out = format!("{system}###");
                for (role, message) in examples {
                    out.push_str(&format!("{role}: {message}###"));
                }
                for i in 0..turns.len() {
                    let role = if i % 2 == 0 { "Human" } else { "Assistant" };
                    if text(i).is_empty() {
                        out.push_str(role);
                        out.push(':');
                    } else {
                        out.push_str(&format!("{role}: {}###", text(i)));
                    }
                }
                out.push_str("Assistant:");
                out
            }
        }
    }
}

impl std::str::FromStr for ConvMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "v1" => Ok(ConvMode::V1),
            "simple" | "default" => Ok(ConvMode::Simple),
            "simpleqa" => Ok(ConvMode::SimpleQa),
            other => Err(format!(
                "unknown Chat-UniVi conv_mode {other:?}; use v1, simple or simpleqa"
            )),
        }
    }
}

/// The `--options KEY=VALUE` of a Chat-UniVi model.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatUniViOptions {
    pub max_frames: usize,
    /// Frames per second sampled (`video_framerate`, an integer in the reference).
    pub video_framerate: usize,
    /// `None`: `v1` for videos and text, `simple` for images.
    pub conv_mode: Option<ConvMode>,
}

impl Default for ChatUniViOptions {
    fn default() -> Self {
        Self {
            max_frames: MAX_IMAGE_LENGTH,
            video_framerate: 1,
            conv_mode: None,
        }
    }
}

impl ChatUniViOptions {
    pub fn parse(options: &[String]) -> Result<Self> {
        let mut out = Self::default();
        let positive = |key: &str, value: &str| {
            value
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    PipelineError::Invalid(format!(
                        "--options {key}={value}: expected a positive integer"
                    ))
                })
        };
        for option in options {
            let (key, value) = option.split_once('=').ok_or_else(|| {
                PipelineError::Invalid(format!("--options {option:?}: expected KEY=VALUE"))
            })?;
            match key.trim() {
                "max_frames" => out.max_frames = positive(key, value)?,
                "video_framerate" => out.video_framerate = positive(key, value)?,
                "conv_mode" => {
                    out.conv_mode = Some(value.trim().parse().map_err(PipelineError::Invalid)?)
                }
                other => {
                    return Err(PipelineError::Invalid(format!(
                        "--options {other}: a Chat-UniVi model takes max_frames, video_framerate \
                         and conv_mode"
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
    fn templates_render_like_conversation_py() {
        let v1 = ConvMode::V1.render("<image>\nQ", &["Q".into()]);
        assert_eq!(
            v1,
            "A chat between a curious user and an artificial intelligence assistant. The \
             assistant gives helpful, detailed, and polite answers to the user's questions. \
             USER: <image>\nQ ASSISTANT:"
        );
        let two = ConvMode::V1.render("q1", &["q1".into(), "a1".into(), "q2".into()]);
        assert!(two.ends_with("USER: q1 ASSISTANT: a1</s>USER: q2 ASSISTANT:"));
        let simple = ConvMode::Simple.render("<image>\nQ", &["Q".into()]);
        assert!(simple.ends_with(
            "questions.###Human: Hi!###Assistant: Hi there! How can I help you today?###Human: \
             <image>\nQ###Assistant:"
        ));
        let qa = ConvMode::SimpleQa.render("x", &["x".into()]);
        assert!(qa.contains("questions.  If you don't know"));
        assert_eq!(ConvMode::Simple.stop(), "###");
    }

    #[test]
    fn options_parse_and_reject() {
        let o =
            ChatUniViOptions::parse(&["max_frames=100".into(), "conv_mode=simple".into()]).unwrap();
        assert_eq!(o.max_frames, 100);
        assert_eq!(o.conv_mode, Some(ConvMode::Simple));
        assert!(ChatUniViOptions::parse(&["max_frames=0".into()]).is_err());
        assert!(ChatUniViOptions::parse(&["conv_mode=llava".into()]).is_err());
        assert!(ChatUniViOptions::parse(&["num_frames=8".into()]).is_err());
    }
}
