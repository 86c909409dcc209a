//! Perception Test (multiple choice): `{VIDEO_ID: {"metadata": {"video_id"}, "mc_question":
//! [{"id", "question", "options": [3], "answer_id"}]}}` in file order; videos
//! `--videos/VIDEO_ID.{mp4,avi,mov,mkv}`. `answer_id` is absent in the test split (then the
//! question is predicted, not scored).

use super::{id_text, probe, read_json, LoadRequest, OrderedObject};
use crate::{EvalItem, Kind, MediaSpec};
use anyhow::{bail, Result};

pub(super) fn load(req: &LoadRequest) -> Result<Vec<EvalItem>> {
    let raw: OrderedObject = read_json(&req.questions)?;
    let mut items = Vec::new();
    for (key, rec) in raw.0 {
        let video_id = rec
            .pointer("/metadata/video_id")
            .map(id_text)
            .unwrap_or(key.clone());
        let Some(qs) = rec.get("mc_question").and_then(|q| q.as_array()) else {
            bail!(
                "{}: {key:?} has no mc_question list",
                req.questions.display()
            );
        };
        let video = probe(
            &req.videos,
            std::slice::from_ref(&video_id),
            &[".mp4", ".avi", ".mov", ".mkv"],
        );
        for q in qs {
            let qid = q.get("id").map(id_text).unwrap_or_default();
            let options: Vec<String> = q
                .get("options")
                .and_then(|o| o.as_array())
                .map(|o| o.iter().map(id_text).collect())
                .unwrap_or_default();
            if options.len() < 3 {
                bail!(
                    "{}: {video_id:?} question {qid:?} needs 3 options, has {}",
                    req.questions.display(),
                    options.len()
                );
            }
            let answer_index = q.get("answer_id").and_then(|a| a.as_i64());
            items.push(EvalItem {
                id: format!("{video_id}/{qid}"),
                order: 0,
                task: "perception_test".into(),
                media: MediaSpec {
                    video: Some(video.clone()),
                    ..MediaSpec::default()
                },
                question: q.get("question").map(id_text).unwrap_or_default(),
                answer: answer_index.and_then(|a| options.get(a as usize).cloned()),
                candidates: options,
                answer_index,
                kind: Kind::MultipleChoice,
                extra: serde_json::json!({
                    "video_id": video_id,
                    "question_id": q.get("id").cloned().unwrap_or_default(),
                }),
            });
        }
    }
    Ok(items)
}
