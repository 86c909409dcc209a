//! MVBench: one JSON list per task (`action_sequence.json`, …), each item
//! `{"video", "question", "candidates", "answer"}` (+ `"start"`, `"end"` for the clipped
//! tasks). The task is the file's stem; `--questions` is one file or the folder of them.
//!
//! Videos are `--videos/VIDEO`; when that does not exist and the stem is one of the
//! published tasks, `--videos/PREFIX/VIDEO` with the reference's per-task prefix
//! (`star/Charades_v1_480/`, …), so the benchmark's own folder layout works unchanged.

use super::{read_json, LoadRequest};
use crate::{EvalItem, Kind, MediaSpec};
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::PathBuf;

/// (file stem, the reference's task name, its video prefix).
pub const TASKS: [(&str, &str, &str); 20] = [
    (
        "action_sequence",
        "Action Sequence",
        "star/Charades_v1_480/",
    ),
    (
        "action_prediction",
        "Action Prediction",
        "star/Charades_v1_480/",
    ),
    ("action_antonym", "Action Antonym", "ssv2_video/"),
    (
        "fine_grained_action",
        "Fine-grained Action",
        "Moments_in_Time_Raw/videos/",
    ),
    ("unexpected_action", "Unexpected Action", "FunQA_test/test/"),
    (
        "object_existence",
        "Object Existence",
        "clevrer/video_validation/",
    ),
    (
        "object_interaction",
        "Object Interaction",
        "star/Charades_v1_480/",
    ),
    ("object_shuffle", "Object Shuffle", "perception/videos/"),
    (
        "moving_direction",
        "Moving Direction",
        "clevrer/video_validation/",
    ),
    (
        "action_localization",
        "Action Localization",
        "sta/sta_video/",
    ),
    ("scene_transition", "Scene Transition", "scene_qa/video/"),
    ("action_count", "Action Count", "perception/videos/"),
    ("moving_count", "Moving Count", "clevrer/video_validation/"),
    (
        "moving_attribute",
        "Moving Attribute",
        "clevrer/video_validation/",
    ),
    ("state_change", "State Change", "perception/videos/"),
    ("fine_grained_pose", "Fine-grained Pose", "nturgbd/"),
    ("character_order", "Character Order", "perception/videos/"),
    ("egocentric_navigation", "Egocentric Navigation", "vlnqa/"),
    (
        "episodic_reasoning",
        "Episodic Reasoning",
        "tvqa/frames_fps3_hq/",
    ),
    (
        "counterfactual_inference",
        "Counterfactual Inference",
        "clevrer/video_validation/",
    ),
];

/// The reference's `task_type` for a file stem (the stem itself for unknown tasks).
pub fn task_type(stem: &str) -> &str {
    TASKS
        .iter()
        .find(|t| t.0 == stem)
        .map(|t| t.1)
        .unwrap_or(stem)
}

#[derive(Deserialize)]
struct Raw {
    video: String,
    question: String,
    candidates: Vec<String>,
    answer: String,
    #[serde(default)]
    start: Option<f64>,
    #[serde(default)]
    end: Option<f64>,
}

pub(super) fn load(req: &LoadRequest) -> Result<Vec<EvalItem>> {
    let files: Vec<PathBuf> = if req.questions.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&req.questions)
            .with_context(|| format!("{}: cannot list", req.questions.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        v.sort();
        if v.is_empty() {
            bail!(
                "{}: no MVBench task files (*.json)",
                req.questions.display()
            );
        }
        v
    } else {
        vec![req.questions.clone()]
    };
    let mut items = Vec::new();
    for file in files {
        let stem = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let raw: Vec<Raw> = read_json(&file)?;
        let prefix = TASKS.iter().find(|t| t.0 == stem).map(|t| t.2);
        for (i, r) in raw.into_iter().enumerate() {
            if r.candidates.is_empty() {
                bail!("{}: item {i} has no candidates", file.display());
            }
            let mut video = req.videos.join(&r.video);
            if let Some(prefix) = prefix {
                let alt = req.videos.join(prefix).join(&r.video);
                if !video.exists() && alt.exists() {
                    video = alt;
                }
            }
            // The reference's answer_idx: the candidate equal to the answer, else -1.
            let answer_index = r
                .candidates
                .iter()
                .position(|c| *c == r.answer)
                .map(|i| i as i64)
                .unwrap_or(-1);
            items.push(EvalItem {
                id: format!("{stem}/{i}"),
                order: 0,
                task: stem.clone(),
                media: MediaSpec {
                    video: Some(video.clone()),
                    start_s: r.start,
                    end_s: r.end,
                    ..MediaSpec::default()
                },
                question: r.question,
                candidates: r.candidates,
                answer: Some(r.answer),
                answer_index: Some(answer_index),
                kind: Kind::MultipleChoice,
                extra: serde_json::json!({
                    "vid": video.to_string_lossy(),
                    "task_type": task_type(&stem),
                }),
            });
        }
    }
    Ok(items)
}
