//! `OUT/answers.json`: the predictions in the answer-file format of the reference's
//! inference script for the benchmark, in dataset order, so the reference's own scoring
//! scripts (`eval_video_mcqa_mvbench.py`, the GPT judges, EgoSchema's submission) read it
//! unchanged. Lines are `json.dumps` text (see `pyjson.rs`).
//!
//! | format                       | one line per          | content                              |
//! |------------------------------|-----------------------|--------------------------------------|
//! | mvbench                      | question              | `{"vid", "task_type", "pred", "gt"}` |
//! | egoschema                    | question              | `Q_UID, PRED`                        |
//! | perception-test              | video                 | `"VIDEO_ID": [{"id", "answer_id", "answer"}],` |
//! | videomme                     | video                 | the record + `"missing"`, questions + `"response"` letter, then `,` |
//! | activitynet/msvd/msrvtt-qa, avqa, clotho-aqa | question | `{"id", "question", "answer", "pred"}` |
//!
//! Video-ChatGPT's open-ended script writes one JSON list instead (and leaves failed items
//! out); the policy picks that. Failed items get what the reference substitutes on an
//! exception: option 2 (`C`), or the text `"error"`; MVBench (which would stop) gets -1.

use crate::prompt::PromptPolicy;
use crate::pyjson::{dumps, PyValue};
use crate::results::Prediction;
use crate::score::FALLBACK_INDEX;
use crate::Format;
use anyhow::{Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};

pub const ANSWERS: &str = "answers.json";

fn pv(v: Option<&Value>) -> PyValue {
    v.map(PyValue::from).unwrap_or(PyValue::Null)
}

fn pred_index(p: &Prediction, on_error: i64) -> i64 {
    p.pred.unwrap_or(on_error)
}

/// Ordered copy of a record: `first` keys in this order, then the rest (sorted).
fn ordered(v: &Value, first: &[&str], skip: &[&str]) -> Vec<(String, PyValue)> {
    let mut out = Vec::new();
    if let Some(o) = v.as_object() {
        for k in first {
            if let Some(x) = o.get(*k) {
                out.push((k.to_string(), PyValue::from(x)));
            }
        }
        for (k, x) in o {
            if !first.contains(&k.as_str()) && !skip.contains(&k.as_str()) {
                out.push((k.clone(), PyValue::from(x)));
            }
        }
    }
    out
}

/// The answer file's text for `preds` (dataset order).
pub fn render(format: Format, policy: &PromptPolicy, preds: &[Prediction]) -> String {
    let mut out = String::new();
    match format {
        Format::Mvbench => {
            for p in preds {
                let line = PyValue::obj(vec![
                    ("vid", pv(p.extra.get("vid"))),
                    ("task_type", pv(p.extra.get("task_type"))),
                    ("pred", PyValue::Int(pred_index(p, -1))),
                    ("gt", PyValue::Int(p.answer_index.unwrap_or(-1))),
                ]);
                out.push_str(&dumps(&line));
                out.push('\n');
            }
        }
        Format::Egoschema => {
            for p in preds {
                let q_uid = p.extra.get("q_uid").and_then(|v| v.as_str()).unwrap_or("");
                out.push_str(&format!(
                    "{q_uid}, {}\n",
                    pred_index(p, FALLBACK_INDEX as i64)
                ));
            }
        }
        Format::PerceptionTest => {
            for group in group_by(preds, |p| p.extra.get("video_id").cloned()) {
                let vid = group[0]
                    .extra
                    .get("video_id")
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
                    .to_string();
                let qas: Vec<PyValue> = group
                    .iter()
                    .map(|p| {
                        let i = pred_index(p, FALLBACK_INDEX as i64);
                        PyValue::obj(vec![
                            ("id", pv(p.extra.get("question_id"))),
                            ("answer_id", PyValue::Int(i)),
                            (
                                "answer",
                                PyValue::str(
                                    p.candidates.get(i as usize).cloned().unwrap_or_default(),
                                ),
                            ),
                        ])
                    })
                    .collect();
                out.push_str(&format!("\"{vid}\": {},\n", dumps(&PyValue::List(qas))));
            }
        }
        Format::Videomme => {
            let rec_keys = [
                "video_id",
                "youtube_id",
                "url",
                "duration",
                "domain",
                "sub_category",
            ];
            let q_keys = ["question_id", "task_type", "question", "choices", "answer"];
            for group in group_by(preds, |p| p.extra.get("record").cloned()) {
                let record = group[0].extra.get("record").cloned().unwrap_or_default();
                let missing = group.iter().all(|p| p.error.is_some());
                let mut fields = ordered(&record, &rec_keys, &[]);
                let questions: Vec<PyValue> = group
                    .iter()
                    .map(|p| {
                        let q = p.extra.get("question").cloned().unwrap_or_default();
                        let mut f = ordered(&q, &q_keys, &["response"]);
                        if !missing {
                            let i = pred_index(p, FALLBACK_INDEX as i64) as u8;
                            f.push((
                                "response".into(),
                                PyValue::str(((b'A' + i.min(3)) as char).to_string()),
                            ));
                        }
                        PyValue::Object(f)
                    })
                    .collect();
                fields.push(("questions".into(), PyValue::List(questions)));
                fields.push(("missing".into(), PyValue::Bool(missing)));
                out.push_str(&dumps(&PyValue::Object(fields)));
                out.push_str(",\n");
            }
        }
        Format::ActivitynetQa
        | Format::MsvdQa
        | Format::MsrvttQa
        | Format::Avqa
        | Format::ClothoAqa => {
            let rows: Vec<PyValue> = preds
                .iter()
                .filter(|p| !(*policy == PromptPolicy::VideoChatGpt && p.error.is_some()))
                .map(|p| {
                    let id = match format {
                        Format::Avqa | Format::ClothoAqa => pv(p.extra.get("ref_id")),
                        _ => pv(p.extra.get("question_id")),
                    };
                    let answer = match format {
                        Format::Avqa | Format::ClothoAqa => {
                            PyValue::str(p.answer.clone().unwrap_or_default())
                        }
                        _ => pv(p.extra.get("answer")),
                    };
                    PyValue::obj(vec![
                        ("id", id),
                        ("question", PyValue::str(p.prompt.clone())),
                        ("answer", answer),
                        (
                            "pred",
                            PyValue::str(p.output.clone().unwrap_or_else(|| "error".into())),
                        ),
                    ])
                })
                .collect();
            if *policy == PromptPolicy::VideoChatGpt && format.needs_judge() {
                out.push_str(&dumps(&PyValue::List(rows)));
            } else {
                for r in rows {
                    out.push_str(&dumps(&r));
                    out.push('\n');
                }
            }
        }
    }
    out
}

/// Consecutive runs of predictions with the same key (dataset order keeps a video's
/// questions together).
fn group_by<K: PartialEq>(
    preds: &[Prediction],
    key: impl Fn(&Prediction) -> K,
) -> Vec<Vec<&Prediction>> {
    let mut out: Vec<Vec<&Prediction>> = Vec::new();
    for p in preds {
        match out.last_mut() {
            Some(g) if key(g[0]) == key(p) => g.push(p),
            _ => out.push(vec![p]),
        }
    }
    out
}

/// Write `dir/answers.json`.
pub fn write(
    dir: &Path,
    format: Format,
    policy: &PromptPolicy,
    preds: &[Prediction],
) -> Result<PathBuf> {
    let path = dir.join(ANSWERS);
    std::fs::write(&path, render(format, policy, preds))
        .with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(path)
}
