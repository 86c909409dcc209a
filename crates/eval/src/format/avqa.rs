//! AVQA (MUSIC-AVQA as VideoLLaMA2's audio-visual branch evaluates it): a list of
//! `{"video", "conversations": [{"value": "<video>\nQUESTION"}, {"value": ANSWER}]}`;
//! the video (relative to `--videos`) is read with its sound track. The reference's id is
//! the video's file name (repeated ids get `#k` internally); scoring is exact match.

use super::{id_text, read_json, LoadRequest};
use crate::{EvalItem, Kind, MediaSpec};
use anyhow::{bail, Result};
use serde_json::Value;

pub(super) fn load(req: &LoadRequest) -> Result<Vec<EvalItem>> {
    let raw: Vec<Value> = read_json(&req.questions)?;
    let mut items = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let video = r.get("video").map(id_text).unwrap_or_default();
        let conv = r.get("conversations").and_then(|c| c.as_array());
        let (Some(q), Some(a)) = (
            conv.and_then(|c| c.first()).and_then(|t| t.get("value")),
            conv.and_then(|c| c.get(1)).and_then(|t| t.get("value")),
        ) else {
            bail!(
                "{}: item {i} needs two conversation turns",
                req.questions.display()
            );
        };
        let name = video.rsplit('/').next().unwrap_or_default().to_string();
        items.push(EvalItem {
            id: format!("avqa/{name}"),
            order: 0,
            task: "avqa".into(),
            media: MediaSpec {
                video: Some(req.videos.join(&video)),
                with_audio: true,
                ..MediaSpec::default()
            },
            question: id_text(q).replace("<video>", "").trim().to_string(),
            candidates: Vec::new(),
            answer: Some(id_text(a)),
            answer_index: None,
            kind: Kind::OpenEnded,
            extra: serde_json::json!({ "ref_id": name }),
        });
    }
    Ok(items)
}
