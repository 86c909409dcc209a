//! Every prediction as one JSON line in `OUT/predictions.jsonl`, appended and fsync'd as
//! it is made, so a killed run loses at most the line being written. A rerun reads the
//! file back, drops a torn last line (a write cut short has no newline), and skips the ids
//! already there: nothing is lost or counted twice.
//!
//! `summary.json` and the on-screen table are computed from the predictions alone (no
//! timings), so a resumed run, a merged set of shards and one uninterrupted run write the
//! same bytes.

use crate::judge::Verdict;
use crate::{EvalItem, Kind};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

pub const PREDICTIONS: &str = "predictions.jsonl";
pub const SUMMARY: &str = "summary.json";

/// One answered (or failed) item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub id: String,
    pub order: usize,
    pub task: String,
    pub kind: Kind,
    /// The media file asked about.
    pub media: String,
    pub question: String,
    /// The full instruction given to the model.
    pub prompt: String,
    #[serde(default)]
    pub candidates: Vec<String>,
    pub answer: Option<String>,
    pub answer_index: Option<i64>,
    /// The model's text (`None` when the item failed).
    pub output: Option<String>,
    /// Multiple choice: the parsed option index.
    pub pred: Option<i64>,
    /// True / false when scored here; `None` when there is no ground truth, or an
    /// open-ended answer waits for the judge.
    pub correct: Option<bool>,
    /// Why the item has no answer (unreadable or missing media, a model error).
    pub error: Option<String>,
    #[serde(default)]
    pub extra: serde_json::Value,
}

impl Prediction {
    /// The record of an item whose media or model failed: counted, and wrong when it has
    /// a ground truth.
    pub fn failed(item: &EvalItem, prompt: String, error: String) -> Self {
        let scorable = item.kind == Kind::MultipleChoice && item.answer_index.is_some()
            || item.kind == Kind::OpenEnded && item.answer.is_some();
        Prediction {
            id: item.id.clone(),
            order: item.order,
            task: item.task.clone(),
            kind: item.kind,
            media: media_text(item),
            question: item.question.clone(),
            prompt,
            candidates: item.candidates.clone(),
            answer: item.answer.clone(),
            answer_index: item.answer_index,
            output: None,
            pred: None,
            correct: scorable.then_some(false),
            error: Some(error),
            extra: item.extra.clone(),
        }
    }
}

pub(crate) fn media_text(item: &EvalItem) -> String {
    item.media
        .video
        .as_ref()
        .or(item.media.audio.as_ref())
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The append-only predictions file of one output folder.
pub struct ResultsLog {
    path: PathBuf,
    file: std::fs::File,
    done: HashMap<String, Prediction>,
}

impl ResultsLog {
    /// Open (or create) `dir/predictions.jsonl`, reading what an earlier run wrote.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create", dir.display()))?;
        let path = dir.join(PREDICTIONS);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .with_context(|| format!("{}: cannot open", path.display()))?;
        let mut text = String::new();
        file.read_to_string(&mut text)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        // A torn last line (no newline: the write was cut) is dropped from the file.
        let complete = text.rfind('\n').map(|i| i + 1).unwrap_or(0);
        if complete < text.len() {
            tracing::warn!(
                "{}: dropping an incomplete last line ({} bytes) of an interrupted run",
                path.display(),
                text.len() - complete
            );
            file.set_len(complete as u64)
                .with_context(|| format!("{}: cannot truncate", path.display()))?;
            file.seek(std::io::SeekFrom::End(0))?;
        }
        let done = parse_lines(&path, &text[..complete])?
            .into_iter()
            .map(|p| (p.id.clone(), p))
            .collect();
        Ok(Self { path, file, done })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn contains(&self, id: &str) -> bool {
        self.done.contains_key(id)
    }

    /// Append one prediction and fsync it.
    pub fn append(&mut self, p: &Prediction) -> Result<()> {
        if self.done.contains_key(&p.id) {
            return Ok(());
        }
        let mut line = serde_json::to_string(p)?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.sync_data())
            .with_context(|| format!("{}: cannot append", self.path.display()))?;
        self.done.insert(p.id.clone(), p.clone());
        Ok(())
    }

    /// Everything recorded so far, in dataset order.
    pub fn predictions(&self) -> Vec<Prediction> {
        let mut v: Vec<Prediction> = self.done.values().cloned().collect();
        v.sort_by(|a, b| a.order.cmp(&b.order).then(a.id.cmp(&b.id)));
        v
    }
}

/// Parse prediction lines (the first of repeated ids wins).
pub fn parse_lines(path: &Path, text: &str) -> Result<Vec<Prediction>> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let p: Prediction = serde_json::from_str(line)
            .with_context(|| format!("{}: line {} is not a prediction", path.display(), i + 1))?;
        if seen.insert(p.id.clone()) {
            out.push(p);
        }
    }
    Ok(out)
}

/// Read a predictions file (a torn last line is ignored).
pub fn read_predictions(path: &Path) -> Result<Vec<Prediction>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let complete = text.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let mut v = parse_lines(path, &text[..complete])?;
    v.sort_by(|a, b| a.order.cmp(&b.order).then(a.id.cmp(&b.id)));
    Ok(v)
}

/// Counts of one table row.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    /// Scored items answered right.
    pub correct: usize,
    /// Scored items (errors included: they count as wrong).
    pub total: usize,
    /// `correct / total`; `null` when nothing is scored.
    pub accuracy: Option<f64>,
    /// Items whose media or model failed.
    pub errors: usize,
    /// Items predicted but not scored (no ground truth, or no judge for open answers).
    pub unscored: usize,
    /// Mean judge score (0–5) of the judged items.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub score: Option<f64>,
}

impl Tally {
    fn add(&mut self, correct: Option<bool>, error: bool) {
        match correct {
            Some(c) => {
                self.total += 1;
                self.correct += usize::from(c);
            }
            None => self.unscored += 1,
        }
        self.errors += usize::from(error);
    }
    fn finish(&mut self) {
        self.accuracy = (self.total > 0).then(|| self.correct as f64 / self.total as f64);
    }
}

/// `summary.json`: `{"overall": Tally, "tasks": {TASK: Tally}}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub overall: Tally,
    pub tasks: BTreeMap<String, Tally>,
}

/// Tally predictions; open-ended answers take the judge's verdict when there is one
/// (accuracy = yes / (yes + no), as the reference's GPT evaluation).
pub fn summarize(preds: &[Prediction], verdicts: &HashMap<String, Verdict>) -> Summary {
    let mut s = Summary::default();
    let mut scores: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    for p in preds {
        let mut correct = p.correct;
        if let Some(v) = verdicts.get(&p.id) {
            correct = Some(v.yes);
            for key in [p.task.as_str(), "\u{0}overall"] {
                let e = scores.entry(key.to_string()).or_default();
                e.0 += v.score;
                e.1 += 1;
            }
        }
        let error = p.error.is_some();
        s.overall.add(correct, error);
        s.tasks
            .entry(p.task.clone())
            .or_default()
            .add(correct, error);
    }
    s.overall.finish();
    s.overall.score = scores.get("\u{0}overall").map(|(t, n)| t / *n as f64);
    for (task, t) in s.tasks.iter_mut() {
        t.finish();
        t.score = scores.get(task).map(|(t, n)| t / *n as f64);
    }
    s
}

/// Write `summary.json` (pretty, trailing newline).
pub fn write_summary(dir: &Path, s: &Summary) -> Result<()> {
    let path = dir.join(SUMMARY);
    let mut text = serde_json::to_string_pretty(s)?;
    text.push('\n');
    std::fs::write(&path, text).with_context(|| format!("{}: cannot write", path.display()))
}

/// The per-task table.
pub fn table(s: &Summary) -> String {
    let mut out = format!(
        "{:<28} {:>8} {:>8} {:>9} {:>7} {:>9}\n",
        "task", "correct", "total", "accuracy", "errors", "unscored"
    );
    let row = |name: &str, t: &Tally| {
        let acc = t
            .accuracy
            .map(|a| format!("{:.1}%", 100.0 * a))
            .unwrap_or_else(|| "-".into());
        let mut r = format!(
            "{name:<28} {:>8} {:>8} {acc:>9} {:>7} {:>9}",
            t.correct, t.total, t.errors, t.unscored
        );
        if let Some(sc) = t.score {
            r.push_str(&format!("  score {sc:.2}"));
        }
        r.push('\n');
        r
    };
    for (name, t) in &s.tasks {
        out.push_str(&row(name, t));
    }
    out.push_str(&row("overall", &s.overall));
    out
}

/// `OUT/run.json`: written on the first run, checked on a resume.
pub fn check_or_write_run(dir: &Path, info: &crate::RunInfo) -> Result<()> {
    let path = dir.join("run.json");
    if path.exists() {
        let old: crate::RunInfo = crate::format::read_json(&path)?;
        if old != *info {
            bail!(
                "{}: this folder holds a different run ({} shard {}, {} items, prompts for {}); \
                 use another --out",
                path.display(),
                old.format,
                old.shard,
                old.items,
                old.prompt_policy
            );
        }
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(&path, serde_json::to_string_pretty(info)? + "\n")
        .with_context(|| format!("{}: cannot write", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MediaSpec;

    fn item(id: &str, order: usize) -> EvalItem {
        EvalItem {
            id: id.into(),
            order,
            task: "t".into(),
            media: MediaSpec::default(),
            question: "q".into(),
            candidates: vec!["a".into(), "b".into()],
            answer: Some("a".into()),
            answer_index: Some(0),
            kind: Kind::MultipleChoice,
            extra: serde_json::Value::Null,
        }
    }

    #[test]
    fn torn_line_is_dropped_and_ids_are_not_doubled() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = ResultsLog::open(dir.path()).unwrap();
            log.append(&Prediction::failed(&item("a", 0), "p".into(), "e".into()))
                .unwrap();
            log.append(&Prediction::failed(&item("a", 0), "p".into(), "e".into()))
                .unwrap();
        }
        let path = dir.path().join(PREDICTIONS);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"{\"id\": \"b\", \"ord").unwrap();
        drop(f);
        let mut log = ResultsLog::open(dir.path()).unwrap();
        assert!(log.contains("a") && !log.contains("b"));
        log.append(&Prediction::failed(&item("b", 1), "p".into(), "e".into()))
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        let s = summarize(&read_predictions(&path).unwrap(), &HashMap::new());
        assert_eq!(
            (s.overall.correct, s.overall.total, s.overall.errors),
            (0, 2, 2)
        );
        assert_eq!(s.overall.accuracy, Some(0.0));
    }
}
