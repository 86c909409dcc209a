//! Deterministic sharding (`--shard i/n`): the items are grouped by media file (so one
//! shard decodes and encodes a video once for all its questions), the groups sorted by
//! their media key (a stable id that does not depend on file order or the machine), and
//! shard `i` takes the groups whose rank `r` has `r % n == i`. Every item lands in exactly
//! one shard; `eval merge` of all `n` shards equals a single run.

use crate::EvalItem;
use anyhow::{bail, Result};
use std::collections::BTreeMap;

/// `i/n`, 0 ≤ i < n.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Default for Shard {
    fn default() -> Self {
        Shard { index: 0, count: 1 }
    }
}

impl std::str::FromStr for Shard {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let Some((i, n)) = s.split_once('/') else {
            bail!("--shard {s:?}: want INDEX/COUNT, e.g. 0/4");
        };
        let (Ok(index), Ok(count)) = (i.trim().parse::<usize>(), n.trim().parse::<usize>()) else {
            bail!("--shard {s:?}: INDEX and COUNT must be whole numbers");
        };
        if count == 0 || index >= count {
            bail!("--shard {s:?}: need 0 <= INDEX < COUNT");
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// This shard's items, in dataset order.
pub fn select(items: &[EvalItem], shard: Shard) -> Vec<EvalItem> {
    let mut groups: BTreeMap<String, Vec<&EvalItem>> = BTreeMap::new();
    for it in items {
        groups.entry(it.media.key()).or_default().push(it);
    }
    let mut out: Vec<EvalItem> = groups
        .into_values()
        .enumerate()
        .filter(|(rank, _)| rank % shard.count == shard.index)
        .flat_map(|(_, g)| g.into_iter().cloned())
        .collect();
    out.sort_by_key(|it| it.order);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Kind, MediaSpec};

    #[test]
    fn shards_partition_by_video() {
        let items: Vec<EvalItem> = (0..23)
            .map(|i| EvalItem {
                id: format!("t/{i}"),
                order: i,
                task: "t".into(),
                media: MediaSpec {
                    video: Some(format!("v{}.mp4", (i * 7) % 9).into()),
                    ..MediaSpec::default()
                },
                question: String::new(),
                candidates: vec![],
                answer: None,
                answer_index: None,
                kind: Kind::OpenEnded,
                extra: serde_json::Value::Null,
            })
            .collect();
        for n in 1..5 {
            let mut all: Vec<usize> = Vec::new();
            let mut videos: Vec<Vec<String>> = Vec::new();
            for i in 0..n {
                let s = select(&items, Shard { index: i, count: n });
                all.extend(s.iter().map(|it| it.order));
                videos.push(s.iter().map(|it| it.media.key()).collect());
            }
            all.sort();
            assert_eq!(all, (0..23).collect::<Vec<_>>());
            for a in 0..n {
                for b in 0..n {
                    if a != b {
                        assert!(videos[a].iter().all(|v| !videos[b].contains(v)));
                    }
                }
            }
        }
        assert!("2/2".parse::<Shard>().is_err());
        assert_eq!(
            "1/3".parse::<Shard>().unwrap(),
            Shard { index: 1, count: 3 }
        );
    }
}
