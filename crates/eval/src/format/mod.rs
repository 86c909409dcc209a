//! Benchmark files in their published formats, parsed into [`EvalItem`]s.
//!
//! One file per format; each resolves media paths against `--videos` the way the
//! reference's inference script does (extension probing, `v_` prefixes) and keeps the
//! fields its answer file repeats in `EvalItem::extra`. Items come out in the dataset's
//! order (`order` 0, 1, …).

mod avqa;
mod clotho_aqa;
mod egoschema;
mod mvbench;
mod open_qa;
mod perception_test;
mod videomme;

use crate::EvalItem;
use anyhow::{bail, Context, Result};
use serde::de::{MapAccess, Visitor};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The benchmark formats `--format` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Mvbench,
    Egoschema,
    PerceptionTest,
    Videomme,
    ActivitynetQa,
    MsvdQa,
    MsrvttQa,
    Avqa,
    ClothoAqa,
}

impl Format {
    pub const ALL: [Format; 9] = [
        Format::Mvbench,
        Format::Egoschema,
        Format::PerceptionTest,
        Format::Videomme,
        Format::ActivitynetQa,
        Format::MsvdQa,
        Format::MsrvttQa,
        Format::Avqa,
        Format::ClothoAqa,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Format::Mvbench => "mvbench",
            Format::Egoschema => "egoschema",
            Format::PerceptionTest => "perception-test",
            Format::Videomme => "videomme",
            Format::ActivitynetQa => "activitynet-qa",
            Format::MsvdQa => "msvd-qa",
            Format::MsrvttQa => "msrvtt-qa",
            Format::Avqa => "avqa",
            Format::ClothoAqa => "clotho-aqa",
        }
    }

    /// Open-ended formats whose accuracy needs a judge (`--judge-url`).
    pub fn needs_judge(self) -> bool {
        matches!(
            self,
            Format::ActivitynetQa | Format::MsvdQa | Format::MsrvttQa
        )
    }
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let norm = s.to_ascii_lowercase().replace('_', "-");
        Format::ALL
            .into_iter()
            .find(|f| f.name() == norm)
            .ok_or_else(|| {
                let names: Vec<_> = Format::ALL.iter().map(|f| f.name()).collect();
                format!("unknown format {s:?}; one of {}", names.join(", "))
            })
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What to read.
#[derive(Debug, Clone)]
pub struct LoadRequest {
    pub format: Format,
    /// A question file, or (MVBench) a folder of per-task files.
    pub questions: PathBuf,
    /// The media folder paths in the question files are relative to.
    pub videos: PathBuf,
    /// Ground truth kept apart from the questions: ActivityNet/MSVD/MSRVTT-QA's
    /// `test_a.json` (default: the question file with `_q` → `_a`), EgoSchema's
    /// `subset_answers.json` (default: beside the question file, when present).
    pub answers: Option<PathBuf>,
}

/// Parse a benchmark into items, in the dataset's order, with unique ids.
pub fn load_items(req: &LoadRequest) -> Result<Vec<EvalItem>> {
    let mut items = match req.format {
        Format::Mvbench => mvbench::load(req)?,
        Format::Egoschema => egoschema::load(req)?,
        Format::PerceptionTest => perception_test::load(req)?,
        Format::Videomme => videomme::load(req)?,
        Format::ActivitynetQa | Format::MsvdQa | Format::MsrvttQa => open_qa::load(req)?,
        Format::Avqa => avqa::load(req)?,
        Format::ClothoAqa => clotho_aqa::load(req)?,
    };
    if items.is_empty() {
        bail!(
            "{}: no questions in this {} file",
            req.questions.display(),
            req.format
        );
    }
    // Repeated reference ids (AVQA names items by their video) get `#k` so that results
    // can be keyed by id.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, item) in items.iter_mut().enumerate() {
        item.order = i;
        let n = seen.entry(item.id.clone()).or_insert(0);
        if *n > 0 {
            item.id = format!("{}#{}", item.id, n);
        }
        *n += 1;
    }
    Ok(items)
}

/// Read and parse a JSON file, naming it in errors.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{}: not the expected JSON", path.display()))
}

/// The first `dir/STEM.EXT` that exists (the reference's extension loop); the first
/// candidate when none does, so the item is recorded as an error naming a real path.
pub(crate) fn probe(dir: &Path, stems: &[String], exts: &[&str]) -> PathBuf {
    for ext in exts {
        for stem in stems {
            let p = dir.join(format!("{stem}{ext}"));
            if p.exists() {
                return p;
            }
        }
    }
    let stem = stems.first().map(String::as_str).unwrap_or_default();
    let ext = exts.first().copied().unwrap_or_default();
    dir.join(format!("{stem}{ext}"))
}

/// A JSON object read with its keys in file order (serde_json's map sorts them).
pub(crate) struct OrderedObject(pub Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for OrderedObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OrderedObject;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, serde_json::Value>()? {
                    out.push((k, v));
                }
                Ok(OrderedObject(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// A JSON value as the text Python's `str()` would give for the scalars benchmarks use
/// as ids (numbers, strings).
pub(crate) fn id_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
