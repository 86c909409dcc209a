//! Video-MME: the published parquet rows (`video_id`, `duration`, `domain`, `sub_category`,
//! `url`, `videoID`, `question_id`, `task_type`, `question`, `options`, `answer`) exported
//! as JSON (a list, or JSON lines), or the per-video records the reference's
//! `load_parquet` builds from them (`{"video_id", "youtube_id", "url", "duration",
//! "domain", "sub_category", "questions": [{"question_id", "task_type", "question",
//! "choices", "answer"}]}`). Reading parquet itself would need an Arrow reader; export with
//! `pandas.read_parquet(F).to_json(G, orient="records")`.
//!
//! Videos are `--videos/YOUTUBE_ID.{mp4,avi,mov,mkv}` with the id taken from the url as the
//! reference does; the task row is the record's `duration` (short / medium / long), the
//! reference's per-video-type result.

use super::{id_text, probe, LoadRequest};
use crate::{EvalItem, Kind, MediaSpec};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

fn rows(req: &LoadRequest) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(&req.questions)
        .with_context(|| format!("{}: cannot read", req.questions.display()))?;
    if let Ok(Value::Array(v)) = serde_json::from_str::<Value>(&text) {
        return Ok(v);
    }
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| {
                format!(
                    "{}: line {} is not JSON (want a JSON list or JSON lines)",
                    req.questions.display(),
                    i + 1
                )
            })
        })
        .collect()
}

/// Flat parquet rows → per-video records, as `load_parquet` groups them (a new record
/// whenever `video_id` changes).
fn group(rows: Vec<Value>) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    for r in rows {
        if r.get("questions").is_some() {
            out.push(r);
            continue;
        }
        let q = json!({
            "question_id": r.get("question_id").cloned().unwrap_or_default(),
            "task_type": r.get("task_type").cloned().unwrap_or_default(),
            "question": r.get("question").cloned().unwrap_or_default(),
            "choices": r.get("options").cloned().unwrap_or_default(),
            "answer": r.get("answer").cloned().unwrap_or_default(),
        });
        let same = out
            .last()
            .is_some_and(|last| last.get("video_id") == r.get("video_id"));
        if same {
            if let Some(Value::Array(qs)) = out.last_mut().and_then(|l| l.get_mut("questions")) {
                qs.push(q);
            }
        } else {
            out.push(json!({
                "video_id": r.get("video_id").cloned().unwrap_or_default(),
                "youtube_id": r.get("videoID").cloned().unwrap_or_default(),
                "url": r.get("url").cloned().unwrap_or_default(),
                "duration": r.get("duration").cloned().unwrap_or_default(),
                "domain": r.get("domain").cloned().unwrap_or_default(),
                "sub_category": r.get("sub_category").cloned().unwrap_or_default(),
                "questions": [q],
            }));
        }
    }
    out
}

pub(super) fn load(req: &LoadRequest) -> Result<Vec<EvalItem>> {
    let mut items = Vec::new();
    for rec in group(rows(req)?) {
        let url = rec.get("url").map(id_text).unwrap_or_default();
        let ytid = url
            .rsplit("watch?v=")
            .next()
            .unwrap_or_default()
            .to_string();
        let ytid = if ytid.is_empty() {
            rec.get("youtube_id").map(id_text).unwrap_or_default()
        } else {
            ytid
        };
        let video = probe(
            &req.videos,
            std::slice::from_ref(&ytid),
            &[".mp4", ".avi", ".mov", ".mkv"],
        );
        let duration = rec.get("duration").map(id_text).unwrap_or_default();
        let mut record = rec.clone();
        let questions = match record.as_object_mut().and_then(|o| o.remove("questions")) {
            Some(Value::Array(q)) => q,
            _ => bail!("{}: a record without questions", req.questions.display()),
        };
        for q in questions {
            let choices: Vec<String> = q
                .get("choices")
                .and_then(|c| c.as_array())
                .map(|c| c.iter().map(id_text).collect())
                .unwrap_or_default();
            if choices.is_empty() {
                bail!("{}: a question without choices", req.questions.display());
            }
            let answer = q.get("answer").map(id_text);
            let answer_index = answer
                .as_deref()
                .and_then(|a| a.chars().next())
                .filter(|c| ('A'..='D').contains(c))
                .map(|c| (c as u8 - b'A') as i64);
            let qid = q.get("question_id").map(id_text).unwrap_or_default();
            items.push(EvalItem {
                id: format!("videomme/{qid}"),
                order: 0,
                task: if duration.is_empty() {
                    "videomme".into()
                } else {
                    duration.clone()
                },
                media: MediaSpec {
                    video: Some(video.clone()),
                    ..MediaSpec::default()
                },
                question: q.get("question").map(id_text).unwrap_or_default(),
                candidates: choices,
                answer,
                answer_index,
                kind: Kind::MultipleChoice,
                extra: json!({ "record": record, "question": q }),
            });
        }
    }
    Ok(items)
}
