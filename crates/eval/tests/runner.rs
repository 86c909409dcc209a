//! The runner with a deterministic stand-in model (no numerics): resume after a stop at a
//! random point equals one uninterrupted run byte for byte, shards merged equal one run,
//! missing media become counted errors, one encode per video, and decoding overlaps the
//! model.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use videollama_eval::prompt::PromptPolicy;
use videollama_eval::results::{self, ResultsLog};
use videollama_eval::runner::{self, Model, RunOptions};
use videollama_eval::{
    answer_file, merge, shard, EvalItem, Format, LoadRequest, MediaSpec, RunInfo, Shard,
};

/// Answers from a hash of the media bytes and the prompt; counts encodes.
struct Fake {
    encodes: AtomicUsize,
    delay: Duration,
}

fn hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(1469598103934665603u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(1099511628211)
    })
}

impl Model for Fake {
    type Prepared = u64;
    type Encoded = u64;
    fn prepare(&self, media: &MediaSpec) -> anyhow::Result<u64> {
        std::thread::sleep(self.delay);
        let p = media.video.as_ref().or(media.audio.as_ref()).unwrap();
        let bytes = std::fs::read(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        if bytes.starts_with(b"BAD") {
            anyhow::bail!("{}: not a video", p.display());
        }
        Ok(hash(&bytes))
    }
    fn encode(&self, prepared: u64) -> anyhow::Result<u64> {
        self.encodes.fetch_add(1, Ordering::SeqCst);
        Ok(prepared)
    }
    fn answer(&self, encoded: &mut u64, prompt: &str) -> anyhow::Result<String> {
        std::thread::sleep(self.delay);
        let h = *encoded ^ hash(prompt.as_bytes());
        Ok(["(A)", "B", "the answer is C", "D.", "blue"][(h % 5) as usize].to_string())
    }
}

fn fake(delay_ms: u64) -> Fake {
    Fake {
        encodes: AtomicUsize::new(0),
        delay: Duration::from_millis(delay_ms),
    }
}

const COLOURS: [&str; 4] = ["red", "blue", "green", "pink"];

/// An MVBench folder with two tasks over 7 videos (one missing, one unreadable).
fn dataset(root: &Path) -> (PathBuf, PathBuf) {
    let videos = root.join("videos");
    let qdir = root.join("json");
    std::fs::create_dir_all(&videos).unwrap();
    std::fs::create_dir_all(&qdir).unwrap();
    for i in 0..6 {
        let body = if i == 5 {
            b"BAD".to_vec()
        } else {
            format!("video {i}").into_bytes()
        };
        std::fs::write(videos.join(format!("v{i}.mp4")), body).unwrap();
    }
    for (task, n) in [("action_count", 9), ("moving_direction", 8)] {
        let items: Vec<serde_json::Value> = (0..n)
            .map(|k| {
                serde_json::json!({
                    "video": format!("v{}.mp4", (k * 5 + task.len()) % 7),
                    "question": format!("{task} question {k}?"),
                    "candidates": ["red", "blue", "green", "pink"],
                    "answer": COLOURS[k % 4],
                })
            })
            .collect();
        std::fs::write(
            qdir.join(format!("{task}.json")),
            serde_json::to_string(&items).unwrap(),
        )
        .unwrap();
    }
    (qdir, videos)
}

fn items(root: &Path) -> Vec<EvalItem> {
    let (questions, videos) = dataset(root);
    videollama_eval::load_items(&LoadRequest {
        format: Format::Mvbench,
        questions,
        videos,
        answers: None,
    })
    .unwrap()
}

fn opts(stop_after: Option<usize>, prefetch: usize) -> RunOptions {
    RunOptions {
        format: Format::Mvbench,
        policy: PromptPolicy::VideoLlama2,
        prefetch,
        stop_after,
        progress: false,
    }
}

/// Run (optionally cut short) and finish the output folder like the CLI does.
fn eval(
    model: &Fake,
    items: &[EvalItem],
    all: usize,
    out: &Path,
    shard: Shard,
    stop: Option<usize>,
) -> runner::RunStats {
    let items = shard::select(items, shard);
    let info = RunInfo {
        format: "mvbench".into(),
        shard: shard.to_string(),
        items: items.len(),
        dataset_items: all,
        prompt_policy: "videollama2".into(),
    };
    results::check_or_write_run(out, &info).unwrap();
    let mut log = ResultsLog::open(out).unwrap();
    let stats = runner::run(model, &items, &mut log, &opts(stop, 2)).unwrap();
    let preds = log.predictions();
    results::write_summary(out, &results::summarize(&preds, &HashMap::new())).unwrap();
    answer_file::write(out, Format::Mvbench, &PromptPolicy::VideoLlama2, &preds).unwrap();
    stats
}

fn sorted_lines(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    v.sort();
    v
}

fn same_outputs(a: &Path, b: &Path) {
    assert_eq!(
        sorted_lines(&a.join("predictions.jsonl")),
        sorted_lines(&b.join("predictions.jsonl"))
    );
    for f in ["summary.json", "answers.json"] {
        assert_eq!(
            std::fs::read_to_string(a.join(f)).unwrap(),
            std::fs::read_to_string(b.join(f)).unwrap(),
            "{f}"
        );
    }
}

#[test]
fn resume_after_random_stops_equals_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let items = items(dir.path());
    let n = items.len();
    let full = dir.path().join("full");
    let m = fake(0);
    let stats = eval(&m, &items, n, &full, Shard::default(), None);
    assert_eq!(stats.items, n);
    // One encode per readable video: 5 good videos (v5 is unreadable, v6 missing).
    assert_eq!(m.encodes.load(Ordering::SeqCst), 5);
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(full.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["overall"]["total"], n);
    assert!(s["overall"]["errors"].as_u64().unwrap() > 0);
    assert_eq!(
        s["tasks"]["action_count"]["total"].as_u64().unwrap()
            + s["tasks"]["moving_direction"]["total"].as_u64().unwrap(),
        n as u64
    );
    // Stops at pseudo-random points (a seeded LCG), plus a torn write after one of them.
    let mut seed = 0x2545F4914F6CDD1Du64;
    for trial in 0..4 {
        let out = dir.path().join(format!("resumed{trial}"));
        let mut done = 0;
        let mut runs = 0;
        while done < n {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let k = 1 + (seed >> 33) as usize % 6;
            let st = eval(&fake(0), &items, n, &out, Shard::default(), Some(k));
            done += st.items;
            runs += 1;
            if trial == 1 && runs == 1 {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(out.join("predictions.jsonl"))
                    .unwrap();
                f.write_all(br#"{"id": "action_count/8", "ord"#).unwrap();
            }
        }
        assert!(runs > 1);
        same_outputs(&full, &out);
    }
}

#[test]
fn shards_merged_equal_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let items = items(dir.path());
    let n = items.len();
    let full = dir.path().join("full");
    eval(&fake(0), &items, n, &full, Shard::default(), None);
    for count in [2, 3] {
        let outs: Vec<PathBuf> = (0..count)
            .map(|i| {
                let o = dir.path().join(format!("s{i}of{count}"));
                eval(&fake(0), &items, n, &o, Shard { index: i, count }, None);
                o
            })
            .collect();
        let merged = dir.path().join(format!("merged{count}"));
        let refs: Vec<&Path> = outs.iter().map(|p| p.as_path()).collect();
        let m = merge::merge(&refs, &merged).unwrap();
        assert!(m.missing_shards.is_empty());
        same_outputs(&full, &merged);
        // The merged predictions are in dataset order.
        let p = results::read_predictions(&merged.join("predictions.jsonl")).unwrap();
        assert!(p.windows(2).all(|w| w[0].order < w[1].order));
        // A partial merge says which shard is missing.
        let m = merge::merge(&refs[..1], &dir.path().join(format!("partial{count}"))).unwrap();
        assert_eq!(m.missing_shards, (1..count).collect::<Vec<_>>());
    }
    // A resumed run into another shard's folder is refused.
    let items1 = shard::select(&items, Shard { index: 1, count: 2 });
    let info = RunInfo {
        format: "mvbench".into(),
        shard: "1/2".into(),
        items: items1.len(),
        dataset_items: n,
        prompt_policy: "videollama2".into(),
    };
    assert!(results::check_or_write_run(&dir.path().join("s0of2"), &info).is_err());
}

#[test]
fn decoding_overlaps_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let items = items(dir.path());
    // One question per video so decode (40 ms) and answer (40 ms) alternate.
    let mut seen = std::collections::HashSet::new();
    let items: Vec<EvalItem> = items
        .into_iter()
        .filter(|i| seen.insert(i.media.key()))
        .collect();
    let time = |prefetch: usize, name: &str| {
        let out = dir.path().join(name);
        let mut log = ResultsLog::open(&out).unwrap();
        let t = Instant::now();
        runner::run(&fake(40), &items, &mut log, &opts(None, prefetch)).unwrap();
        t.elapsed().as_secs_f64()
    };
    let serial = time(0, "serial");
    let overlapped = time(2, "overlapped");
    eprintln!(
        "{} videos: serial {serial:.3} s, overlapped {overlapped:.3} s",
        items.len()
    );
    assert!(
        overlapped < 0.8 * serial,
        "serial {serial:.3} s, overlapped {overlapped:.3} s"
    );
}
