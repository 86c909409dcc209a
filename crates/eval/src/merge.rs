//! `videollama eval merge OUT_1 … OUT_n --out DIR`: the union of shard folders, written as
//! a single run would have written it (predictions in dataset order, `summary.json`,
//! `answers.json`, judge verdicts). The shards must be of one format and one shard count;
//! an item present in several folders is taken once (from the first).

use crate::answer_file;
use crate::judge::{read_verdicts, JUDGE_FILE};
use crate::prompt::PromptPolicy;
use crate::results::{
    read_predictions, summarize, write_summary, Prediction, Summary, PREDICTIONS,
};
use crate::{Format, RunInfo};
use anyhow::{bail, Context, Result};
use std::collections::{BTreeSet, HashSet};
use std::io::Write;
use std::path::Path;

/// What a merge produced.
pub struct Merged {
    pub summary: Summary,
    pub predictions: usize,
    /// Shards `i` of `n` not among the inputs (the merge is then partial).
    pub missing_shards: Vec<usize>,
}

pub fn merge(inputs: &[&Path], out: &Path) -> Result<Merged> {
    if inputs.is_empty() {
        bail!("eval merge: give the shard output folders");
    }
    let mut infos: Vec<RunInfo> = Vec::new();
    for d in inputs {
        let p = d.join("run.json");
        infos.push(crate::format::read_json(&p)?);
    }
    let first = infos[0].clone();
    let count = |s: &str| s.split_once('/').and_then(|(_, n)| n.parse::<usize>().ok());
    let n = count(&first.shard).unwrap_or(1);
    let mut have = BTreeSet::new();
    for (d, info) in inputs.iter().zip(&infos) {
        if info.format != first.format || info.prompt_policy != first.prompt_policy {
            bail!(
                "{}: a {} run with {} prompts, but {} is {} with {}",
                d.display(),
                info.format,
                info.prompt_policy,
                inputs[0].display(),
                first.format,
                first.prompt_policy
            );
        }
        if count(&info.shard) != Some(n) || info.dataset_items != first.dataset_items {
            bail!(
                "{}: shard {} of a {}-item dataset does not go with shard {} of {} items",
                d.display(),
                info.shard,
                info.dataset_items,
                first.shard,
                first.dataset_items
            );
        }
        if let Some(i) = info
            .shard
            .split_once('/')
            .and_then(|(i, _)| i.parse::<usize>().ok())
        {
            have.insert(i);
        }
    }
    let format: Format = first
        .format
        .parse()
        .map_err(|e: String| anyhow::anyhow!(e))?;
    let policy = PromptPolicy::parse(&first.prompt_policy);
    let mut seen = HashSet::new();
    let mut preds: Vec<Prediction> = Vec::new();
    let mut verdicts = std::collections::HashMap::new();
    for d in inputs {
        for p in read_predictions(&d.join(PREDICTIONS))? {
            if seen.insert(p.id.clone()) {
                preds.push(p);
            }
        }
        for (k, v) in read_verdicts(d)? {
            verdicts.entry(k).or_insert(v);
        }
    }
    preds.sort_by(|a, b| a.order.cmp(&b.order).then(a.id.cmp(&b.id)));
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create", out.display()))?;
    let mut text = String::new();
    for p in &preds {
        text.push_str(&serde_json::to_string(p)?);
        text.push('\n');
    }
    let pp = out.join(PREDICTIONS);
    std::fs::write(&pp, text).with_context(|| format!("{}: cannot write", pp.display()))?;
    if !verdicts.is_empty() {
        let mut vs: Vec<_> = verdicts.values().collect();
        vs.sort_by(|a, b| a.id.cmp(&b.id));
        let jp = out.join(JUDGE_FILE);
        let mut f = std::fs::File::create(&jp)
            .with_context(|| format!("{}: cannot write", jp.display()))?;
        for v in vs {
            writeln!(f, "{}", serde_json::to_string(v)?)?;
        }
    }
    let summary = summarize(&preds, &verdicts);
    write_summary(out, &summary)?;
    answer_file::write(out, format, &policy, &preds)?;
    let info = RunInfo {
        shard: format!("merged {}/{n}", have.len()),
        items: preds.len(),
        ..first
    };
    std::fs::write(
        out.join("run.json"),
        serde_json::to_string_pretty(&info)? + "\n",
    )?;
    Ok(Merged {
        summary,
        predictions: preds.len(),
        missing_shards: (0..n).filter(|i| !have.contains(i)).collect(),
    })
}
