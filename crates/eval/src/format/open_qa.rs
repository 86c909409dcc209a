//! ActivityNet-QA, MSVD-QA, MSRVTT-QA (the Video-ChatGPT / VideoLLaMA2 zero-shot QA
//! files): `test_q.json` `[{"video_name", "question", "question_id"}]` and `test_a.json`
//! `[{"answer", "type", "question_id"}]`, paired by position as the reference does.
//! Videos: `--videos/v_NAME.EXT` or `--videos/NAME.EXT`, EXT in mp4, webm, avi, mov, mkv
//! (the reference's lookup order).

use super::{id_text, read_json, LoadRequest};
use crate::{EvalItem, Kind, MediaSpec};
use anyhow::{bail, Result};
use serde_json::Value;

pub(super) fn load(req: &LoadRequest) -> Result<Vec<EvalItem>> {
    let questions: Vec<Value> = read_json(&req.questions)?;
    let answers_path = match &req.answers {
        Some(p) => p.clone(),
        None => {
            let name = req
                .questions
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if !name.contains("_q") {
                bail!(
                    "{}: give the answers file with --answers (no `_q` in the name to derive \
                     `_a` from)",
                    req.questions.display()
                );
            }
            req.questions.with_file_name(name.replacen("_q", "_a", 1))
        }
    };
    let answers: Vec<Value> = read_json(&answers_path)?;
    if answers.len() != questions.len() {
        bail!(
            "{}: {} answers for {} questions in {}",
            answers_path.display(),
            answers.len(),
            questions.len(),
            req.questions.display()
        );
    }
    let task = match req.format {
        crate::Format::MsvdQa => "msvd_qa",
        crate::Format::MsrvttQa => "msrvtt_qa",
        _ => "activitynet_qa",
    };
    let exts = [".mp4", ".webm", ".avi", ".mov", ".mkv"];
    let mut items = Vec::new();
    for (q, a) in questions.iter().zip(&answers) {
        let name = q.get("video_name").map(id_text).unwrap_or_default();
        let mut video = None;
        'probe: for ext in exts {
            for stem in [format!("v_{name}"), name.clone()] {
                let p = req.videos.join(format!("{stem}{ext}"));
                if p.exists() {
                    video = Some(p);
                    break 'probe;
                }
            }
        }
        let video = video.unwrap_or_else(|| req.videos.join(format!("{name}.mp4")));
        let qid = q.get("question_id").cloned().unwrap_or_default();
        items.push(EvalItem {
            id: format!("{task}/{}", id_text(&qid)),
            order: 0,
            task: task.into(),
            media: MediaSpec {
                video: Some(video),
                ..MediaSpec::default()
            },
            question: q.get("question").map(id_text).unwrap_or_default(),
            candidates: Vec::new(),
            answer: a.get("answer").map(id_text),
            answer_index: None,
            kind: Kind::OpenEnded,
            extra: serde_json::json!({ "question_id": qid, "answer": a.get("answer").cloned().unwrap_or_default() }),
        });
    }
    Ok(items)
}
