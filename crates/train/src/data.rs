//! Training data in the reference's JSON conversation format.
//!
//! ```text
//! [ {"video": "clips/a.mp4",                      one of video / image / audio (or none:
//!    "conversations": [                             a text-only sample); a video may also
//!      {"from": "human", "value": "<video>\nWhat…"}, name an "audio" file for its sound
//!      {"from": "gpt",   "value": "A red square…"},
//!      …more human / gpt turns… ]},
//!   … ]
//! ```
//!
//! Media paths are relative to the JSON file's folder. A JSON array or JSON Lines (one
//! object per line) are accepted. Every sample keeps its index in the file and the line it
//! starts on, so that a problem with it can be reported as "sample 7 (line 31): …" and the
//! sample skipped. Only a file that cannot be read or parsed at all is an error.

use crate::error::{Result, TrainError};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Who speaks a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Role {
    /// `"human"` (or `"user"`).
    User,
    /// `"gpt"` (or `"assistant"`): the answer the loss is computed on.
    Assistant,
}

/// One sample as read from the file, before any media is decoded.
#[derive(Debug, Clone)]
pub struct Sample {
    /// 0-based position in the file.
    pub index: usize,
    /// 1-based line on which the sample starts.
    pub line: usize,
    pub video: Option<PathBuf>,
    pub image: Option<PathBuf>,
    pub audio: Option<PathBuf>,
    pub turns: Vec<(Role, String)>,
}

/// A sample left out of training, and why.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct SkippedSample {
    /// 0-based position in the data file.
    pub index: usize,
    /// 1-based line on which the sample starts (0 if unknown).
    pub line: usize,
    pub reason: String,
}

impl std::fmt::Display for SkippedSample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sample {} (line {}): {}",
            self.index, self.line, self.reason
        )
    }
}

/// Read every sample of `path`; samples that are not well-formed come back as skipped.
pub fn read_samples(path: &Path) -> Result<(Vec<Sample>, Vec<SkippedSample>)> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::file(path, e))?;
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let entries: Vec<(usize, std::result::Result<serde_json::Value, String>)> =
        if text.trim_start().starts_with('[') {
            let values: Vec<serde_json::Value> = serde_json::from_str(&text)
                .map_err(|e| TrainError::file(path, format!("invalid JSON: {e}")))?;
            let mut lines = element_lines(&text);
            if lines.len() != values.len() {
                lines = vec![0; values.len()];
            }
            lines.into_iter().zip(values.into_iter().map(Ok)).collect()
        } else {
            // JSON Lines: a line that does not parse is one skipped sample.
            text.lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(i, l)| {
                    (
                        i + 1,
                        serde_json::from_str(l).map_err(|e| format!("invalid JSON: {e}")),
                    )
                })
                .collect()
        };
    let mut samples = Vec::new();
    let mut skipped = Vec::new();
    for (index, (line, value)) in entries.into_iter().enumerate() {
        match value.and_then(|v| parse_sample(&v, &base, index, line)) {
            Ok(s) => samples.push(s),
            Err(reason) => skipped.push(SkippedSample {
                index,
                line,
                reason,
            }),
        }
    }
    Ok((samples, skipped))
}

fn parse_sample(
    v: &serde_json::Value,
    base: &Path,
    index: usize,
    line: usize,
) -> std::result::Result<Sample, String> {
    let obj = v
        .as_object()
        .ok_or("a sample must be a JSON object with \"conversations\"")?;
    let media = |key: &str| -> std::result::Result<Option<PathBuf>, String> {
        match obj.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => {
                let p = PathBuf::from(s);
                Ok(Some(if p.is_absolute() { p } else { base.join(p) }))
            }
            Some(other) => Err(format!("{key:?} must be a file name, got {other}")),
        }
    };
    let turns = obj
        .get("conversations")
        .and_then(|c| c.as_array())
        .ok_or("no \"conversations\" list")?
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let from = t.get("from").and_then(|f| f.as_str()).unwrap_or("");
            let role = match from {
                "human" | "user" => Role::User,
                "gpt" | "assistant" => Role::Assistant,
                other => {
                    return Err(format!(
                        "turn {i}: \"from\" must be \"human\" or \"gpt\", got {other:?}"
                    ))
                }
            };
            let value = t
                .get("value")
                .and_then(|v| v.as_str())
                .ok_or_else(|| format!("turn {i}: no \"value\" text"))?;
            Ok((role, value.to_string()))
        })
        .collect::<std::result::Result<Vec<_>, String>>()?;
    Ok(Sample {
        index,
        line,
        video: media("video")?,
        image: media("image")?,
        audio: media("audio")?,
        turns,
    })
}

/// The 1-based line on which each element of the top-level JSON array starts.
fn element_lines(text: &str) -> Vec<usize> {
    let mut lines = Vec::new();
    let (mut depth, mut line) = (0usize, 1usize);
    let (mut in_str, mut escaped, mut expecting) = (false, false, false);
    for c in text.chars() {
        if c == '\n' {
            line += 1;
        }
        if in_str {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_str = false,
                _ => {}
            }
            continue;
        }
        let starts_value = !c.is_whitespace() && !matches!(c, ',' | ']' | '}');
        if depth == 1 && expecting && starts_value {
            lines.push(line);
            expecting = false;
        }
        match c {
            '"' => in_str = true,
            '[' | '{' => {
                depth += 1;
                if depth == 1 {
                    expecting = true;
                }
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            ',' if depth == 1 => expecting = true,
            _ => {}
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_lines_follow_the_array() {
        let text = "[\n  {\"a\": \"x,[{\\\"\"},\n  {\"b\": [1, 2]}\n, 3,\n\"s\"]";
        assert_eq!(element_lines(text), vec![2, 3, 4, 5]);
    }

    #[test]
    fn reads_arrays_and_lines_and_skips_bad_samples() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| TrainError::Invalid(e.to_string()))?;
        let path = dir.path().join("d.json");
        std::fs::write(
            &path,
            r#"[
  {"video": "v.mp4", "conversations": [
      {"from": "human", "value": "<video>\nQ"}, {"from": "gpt", "value": "A"}]},
  {"image": 3, "conversations": []},
  {"audio": "/abs/a.wav", "conversations": [{"from": "robot", "value": "x"}]}
]"#,
        )
        .unwrap();
        let (samples, skipped) = read_samples(&path)?;
        assert_eq!(samples.len(), 1);
        assert_eq!(
            samples[0].video.as_deref(),
            Some(dir.path().join("v.mp4").as_path())
        );
        assert_eq!(samples[0].turns[1], (Role::Assistant, "A".to_string()));
        assert_eq!(
            skipped
                .iter()
                .map(|s| (s.index, s.line))
                .collect::<Vec<_>>(),
            vec![(1, 4), (2, 5)]
        );
        assert!(skipped[1].reason.contains("robot"), "{}", skipped[1]);
        let jl = dir.path().join("d.jsonl");
        std::fs::write(
            &jl,
            "{\"conversations\": [{\"from\": \"human\", \"value\": \"hi\"}]}\n\n{oops\n",
        )
        .unwrap();
        let (samples, skipped) = read_samples(&jl)?;
        assert_eq!((samples.len(), skipped[0].line), (1, 3));
        assert!(read_samples(&dir.path().join("missing.json")).is_err());
        Ok(())
    }
}

/// The media files a sample looks at: (video, image, audio).
type MediaKey = (Option<PathBuf>, Option<PathBuf>, Option<PathBuf>);

/// Merge the samples that look at the same media (same video, image and audio files) into
/// one multi-turn conversation per media, in file order: the media is encoded and run
/// through the language model once for all its questions, which makes an epoch of the demo
/// world's single-question samples about 2× cheaper. The media placeholder stays in the
/// first human turn only (later turns follow it as a chat would). Index and line of a packed
/// sample are those of its first member; text-only samples are left alone.
pub fn pack_by_media(samples: Vec<Sample>) -> Vec<Sample> {
    let mut order: Vec<Sample> = Vec::new();
    let mut slot: std::collections::HashMap<MediaKey, usize> = std::collections::HashMap::new();
    for s in samples {
        if s.video.is_none() && s.image.is_none() && s.audio.is_none() {
            order.push(s);
            continue;
        }
        let key = (s.video.clone(), s.image.clone(), s.audio.clone());
        match slot.get(&key) {
            Some(&i) => {
                let turns = s.turns.into_iter().map(|(role, text)| match role {
                    Role::User => (role, strip_placeholder(&text)),
                    Role::Assistant => (role, text),
                });
                order[i].turns.extend(turns);
            }
            None => {
                slot.insert(key, order.len());
                order.push(s);
            }
        }
    }
    order
}

/// A human turn without its `<video>` / `<image>` / `<audio>` placeholder line.
fn strip_placeholder(text: &str) -> String {
    let mut t = text.to_string();
    for tag in ["<video>", "<image>", "<audio>"] {
        t = t.replace(&format!("{tag}\n"), "").replace(tag, "");
    }
    t.trim().to_string()
}

#[cfg(test)]
mod pack_tests {
    use super::*;

    fn sample(index: usize, video: Option<&str>, q: &str, a: &str) -> Sample {
        Sample {
            index,
            line: index + 1,
            video: video.map(PathBuf::from),
            image: None,
            audio: None,
            turns: vec![
                (Role::User, q.to_string()),
                (Role::Assistant, a.to_string()),
            ],
        }
    }

    #[test]
    fn samples_about_one_video_become_one_conversation_in_file_order() {
        let packed = pack_by_media(vec![
            sample(0, Some("a.mp4"), "<video>\nQ1", "A1"),
            sample(1, Some("b.mp4"), "<video>\nQ2", "A2"),
            sample(2, None, "Q3", "A3"),
            sample(3, Some("a.mp4"), "<video>\nQ4", "A4"),
            sample(4, Some("a.mp4"), "Q5 <video>", "A5"),
        ]);
        let summary: Vec<(usize, Vec<String>)> = packed
            .iter()
            .map(|s| (s.index, s.turns.iter().map(|t| t.1.clone()).collect()))
            .collect();
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            summary,
            vec![
                (0, s(&["<video>\nQ1", "A1", "Q4", "A4", "Q5", "A5"])),
                (1, s(&["<video>\nQ2", "A2"])),
                (2, s(&["Q3", "A3"])),
            ]
        );
    }
}
