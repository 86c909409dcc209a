//! Clotho-AQA (as VideoLLaMA2's audio branch evaluates it): a list of `{"id", "audio",
//! "conversations": [{"value": QUESTION}, {"value": ANSWER}]}`; the sound file is
//! `--videos/AUDIO`. Scoring is exact match (and the yes/no subset, as the reference).

use super::{id_text, read_json, LoadRequest};
use crate::{EvalItem, Kind, MediaSpec};
use anyhow::{bail, Result};
use serde_json::Value;

pub(super) fn load(req: &LoadRequest) -> Result<Vec<EvalItem>> {
    let raw: Vec<Value> = read_json(&req.questions)?;
    let mut items = Vec::new();
    for (i, r) in raw.iter().enumerate() {
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
        let ref_id = r.get("id").cloned().unwrap_or(Value::from(i));
        let audio = r.get("audio").map(id_text).unwrap_or_default();
        items.push(EvalItem {
            id: format!("clotho_aqa/{}", id_text(&ref_id)),
            order: 0,
            task: "clotho_aqa".into(),
            media: MediaSpec {
                audio: Some(req.videos.join(&audio)),
                ..MediaSpec::default()
            },
            question: id_text(q),
            candidates: Vec::new(),
            answer: Some(id_text(a)),
            answer_index: None,
            kind: Kind::OpenEnded,
            extra: serde_json::json!({ "ref_id": ref_id }),
        });
    }
    Ok(items)
}
