//! EgoSchema: `questions.json`, a list of `{"q_uid", "question", "option 0" … "option 4"}`;
//! videos `--videos/Q_UID.{mp4,avi,mov,mkv}`. The public answers (the 500-question
//! subset) are a separate `{"Q_UID": index}` file: `--answers`, or `subset_answers.json`
//! beside the questions; an `"answer"` field in an item is used too. Questions without an
//! answer are predicted and written to the answer file but not scored.

use super::{probe, read_json, LoadRequest};
use crate::{EvalItem, Kind, MediaSpec};
use anyhow::{bail, Result};
use std::collections::HashMap;

pub(super) fn load(req: &LoadRequest) -> Result<Vec<EvalItem>> {
    let raw: Vec<serde_json::Map<String, serde_json::Value>> = read_json(&req.questions)?;
    let answers_path = req.answers.clone().or_else(|| {
        let p = req.questions.with_file_name("subset_answers.json");
        p.exists().then_some(p)
    });
    let answers: HashMap<String, i64> = match &answers_path {
        Some(p) => read_json(p)?,
        None => HashMap::new(),
    };
    let mut items = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let field = |k: &str| -> Result<String> {
            match r.get(k) {
                Some(serde_json::Value::String(s)) => Ok(s.clone()),
                Some(v) => Ok(super::id_text(v)),
                None => bail!("{}: item {i} has no {k:?}", req.questions.display()),
            }
        };
        let q_uid = field("q_uid")?;
        let candidates = (0..5)
            .map(|k| field(&format!("option {k}")))
            .collect::<Result<Vec<_>>>()?;
        let answer_index = answers
            .get(&q_uid)
            .copied()
            .or_else(|| r.get("answer").and_then(|v| v.as_i64()));
        let video = probe(
            &req.videos,
            std::slice::from_ref(&q_uid),
            &[".mp4", ".avi", ".mov", ".mkv"],
        );
        items.push(EvalItem {
            id: format!("egoschema/{q_uid}"),
            order: 0,
            task: "egoschema".into(),
            media: MediaSpec {
                video: Some(video),
                ..MediaSpec::default()
            },
            question: field("question")?,
            answer: answer_index.and_then(|a| candidates.get(a as usize).cloned()),
            candidates,
            answer_index,
            kind: Kind::MultipleChoice,
            extra: serde_json::json!({ "q_uid": q_uid }),
        });
    }
    Ok(items)
}
