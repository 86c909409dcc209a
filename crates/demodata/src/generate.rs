//! The dataset writer: configuration, the per-clip pipeline and the files on disk.
//!
//! ```text
//! DemoDataConfig ─for each split, clip i (parallel over clips; Rng::derive(seed, i))─▶
//!   sample_scene ─▶ questions + reference answers + caption ─▶ sound track (f32 mono)
//!   ─▶ render frames ─encode─▶ clips/{split}-{i:05}.mp4 ─verify (our decoder)─▶ ClipMeta
//! ─▶ {split}.json, {split}_captions.json (conversation format), meta.jsonl, dataset.json,
//!    mvbench/{split}/{category}.json (multiple choice, evaluation splits)
//! ```
//!
//! Layout of the output folder:
//!
//! * `clips/{split}-{i:05}.mp4` — H.264 yuv420p (+ AAC mono when `with_audio`).
//! * `{split}.json` — every QA pair and the caption of every clip of the split, one
//!   conversation each: `[{"id", "video": "clips/…", "conversations": [{"from": "human",
//!   "value": "<video>\nQ"}, {"from": "gpt", "value": "A"}]}]` (paths relative to the JSON).
//! * `{split}_captions.json` — the caption conversations only (connector pre-training).
//! * `meta.jsonl` — one [`ClipMeta`] per line (all splits): the ground truth and each QA's
//!   question type, for evaluation with [`crate::score`].
//! * `dataset.json` — the configuration and per-split counts.
//! * `mvbench/{split}/{category}.json` — for the splits of
//!   [`DemoDataConfig::mvbench_splits`] (val, test, test_ood): the colour, shape, count,
//!   motion and sound questions as 4-option multiple choice in MVBench's task-file format
//!   ([`crate::mcq`]), videos relative to the dataset folder.
//!
//! Every file is a pure function of the configuration (seeds included): generating twice
//! gives byte-identical JSON and identical decoded frames.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::audio::{self, Speech};
use crate::encode::{write_mp4, EncodeSpec};
use crate::error::{DemoDataError, Result};
use crate::mcq::write_mvbench;
use crate::qa::{expected_answer, make_questions, question_text, QuestionType};
use crate::rng::Rng;
use crate::world::{
    render_frame, render_into, sample_scene, ClipMeta, Layout, QaMeta, SceneParams,
};

/// One split: its name (file stem), size, seed and layout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitConfig {
    /// File stem: `{name}.json`, clips `clips/{name}-{i:05}.mp4`. ASCII letters, digits,
    /// `_` and `-`.
    pub name: String,
    pub clips: usize,
    /// Seed of the split (every split needs its own).
    pub seed: u64,
    pub layout: Layout,
}

/// What to generate. `Default` is train 1000 / val 100 / test 200 clips with the training
/// layout, 2–6 s at 25 fps, 1–3 objects, with sound.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DemoDataConfig {
    pub splits: Vec<SplitConfig>,
    /// Frames per second.
    pub fps: u32,
    /// Clip duration range, seconds (uniform).
    pub duration_s: (f64, f64),
    /// Objects per clip, inclusive range within 1..=3 (fewer when they cannot be placed
    /// without overlapping, which is rare).
    pub objects: (usize, usize),
    /// Whether clips get a sound track (and sound questions). Spoken numbers need
    /// `espeak-ng`.
    pub with_audio: bool,
    /// Audio sample rate, Hz.
    pub sample_rate: u32,
    /// AAC bit rate, bits per second.
    pub audio_bit_rate: usize,
    /// The `espeak-ng` program (name on `PATH` or a path).
    pub espeak_program: PathBuf,
    /// x264 constant rate factor.
    pub crf: u8,
    /// x264 preset.
    pub preset: String,
    /// Decode every written clip with `videollama_media::decode` and check frame count,
    /// size, audio presence and the last frame's pixels.
    pub verify: bool,
    /// Splits that also get a multiple-choice benchmark, `mvbench/{split}/` (names not
    /// among `splits` are ignored). Default: val, test, test_ood — the held-out splits.
    #[serde(default = "default_mvbench_splits")]
    pub mvbench_splits: Vec<String>,
    /// Worker threads (clips encoded in parallel, one thread each); 0 = all cores. Does not
    /// change the output.
    #[serde(skip, default)]
    pub threads: usize,
}

fn default_mvbench_splits() -> Vec<String> {
    ["val", "test", "test_ood"].map(String::from).to_vec()
}

impl Default for DemoDataConfig {
    fn default() -> Self {
        Self::new(1000, 100, 200)
    }
}

impl DemoDataConfig {
    /// Train / val / test splits of the given sizes (seeds 1, 2, 3; training layout) and the
    /// default settings.
    pub fn new(train: usize, val: usize, test: usize) -> Self {
        let split = |name: &str, clips, seed| SplitConfig {
            name: name.into(),
            clips,
            seed,
            layout: Layout::training(),
        };
        Self {
            splits: vec![
                split("train", train, 1),
                split("val", val, 2),
                split("test", test, 3),
            ],
            fps: 25,
            duration_s: (2.0, 6.0),
            objects: (1, 3),
            with_audio: true,
            sample_rate: 16000,
            audio_bit_rate: 64000,
            espeak_program: PathBuf::from("espeak-ng"),
            crf: 20,
            preset: "veryfast".into(),
            verify: true,
            mvbench_splits: default_mvbench_splits(),
            threads: 0,
        }
    }

    /// Adds a `test_ood` split (seed 4) rendered with [`Layout::out_of_distribution`]:
    /// frame sizes, shape sizes and positions the training layout never uses.
    pub fn with_ood_test(mut self, clips: usize) -> Self {
        self.splits.push(SplitConfig {
            name: "test_ood".into(),
            clips,
            seed: 4,
            layout: Layout::out_of_distribution(),
        });
        self
    }

    /// Checks ranges, split names and that split seeds differ.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(DemoDataError::Config(m));
        if self.splits.is_empty() {
            return bad("no splits".into());
        }
        for (i, s) in self.splits.iter().enumerate() {
            let ok_name = !s.name.is_empty()
                && s.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !ok_name {
                return bad(format!("split name {:?} must be [A-Za-z0-9_-]+", s.name));
            }
            if s.name == "meta" || s.name == "dataset" || s.name.ends_with("_captions") {
                return bad(format!(
                    "split name {:?} clashes with an output file",
                    s.name
                ));
            }
            for t in &self.splits[..i] {
                if t.name == s.name {
                    return bad(format!("split {:?} appears twice", s.name));
                }
                if t.seed == s.seed {
                    return bad(format!(
                        "splits {:?} and {:?} share seed {}; every split needs its own",
                        t.name, s.name, s.seed
                    ));
                }
            }
            s.layout
                .validate()
                .map_err(|e| DemoDataError::Config(format!("split {:?}: {e}", s.name)))?;
        }
        if !(1..=120).contains(&self.fps) {
            return bad(format!("fps {} must be 1..=120", self.fps));
        }
        let (d0, d1) = self.duration_s;
        if !(d0.is_finite() && d1.is_finite() && 0.2 <= d0 && d0 <= d1 && d1 <= 120.0) {
            return bad(format!(
                "duration_s ({d0}, {d1}) must satisfy 0.2 <= lo <= hi <= 120"
            ));
        }
        let (o0, o1) = self.objects;
        if !(1 <= o0 && o0 <= o1 && o1 <= 3) {
            return bad(format!(
                "objects ({o0}, {o1}) must satisfy 1 <= lo <= hi <= 3"
            ));
        }
        if self.with_audio && !(8000..=96000).contains(&self.sample_rate) {
            return bad(format!(
                "sample_rate {} must be 8000..=96000",
                self.sample_rate
            ));
        }
        if self.crf > 51 {
            return bad(format!("crf {} must be 0..=51", self.crf));
        }
        Ok(())
    }

    fn scene_params<'a>(&self, layout: &'a Layout) -> SceneParams<'a> {
        SceneParams {
            layout,
            fps: self.fps,
            duration_s: self.duration_s,
            objects: self.objects,
            with_audio: self.with_audio,
            sample_rate: self.sample_rate,
        }
    }
}

/// Progress report, sent after each clip.
#[derive(Debug, Clone, Copy)]
pub struct Progress<'a> {
    /// Split of the clip just finished.
    pub split: &'a str,
    /// Its id.
    pub clip: &'a str,
    /// Clips finished so far (all splits).
    pub done: usize,
    /// Clips in total (all splits).
    pub total: usize,
}

/// Counts and files of one generated split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitSummary {
    pub name: String,
    pub clips: usize,
    /// Conversations in `{name}.json` (QA pairs + captions).
    pub conversations: usize,
    /// `{name}.json`, relative to the dataset folder.
    pub json: String,
    /// `{name}_captions.json`, relative to the dataset folder.
    pub captions_json: String,
    /// The multiple-choice task folder `mvbench/{name}`, relative to the dataset folder
    /// (`None` when the split is not among [`DemoDataConfig::mvbench_splits`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mvbench: Option<String>,
    /// Multiple-choice items written there.
    #[serde(default)]
    pub mvbench_items: usize,
}

/// What [`generate`] wrote.
#[derive(Debug, Clone)]
pub struct Summary {
    pub out_dir: PathBuf,
    pub splits: Vec<SplitSummary>,
    /// Clips over all splits.
    pub clips: usize,
    /// Total bytes of the MP4s.
    pub video_bytes: u64,
    /// Wall-clock time of the whole run, seconds.
    pub elapsed_s: f64,
}

#[derive(Serialize)]
struct Turn<'a> {
    from: &'static str,
    value: &'a str,
}

#[derive(Serialize)]
struct Conversation<'a> {
    id: &'a str,
    video: &'a str,
    conversations: [Turn<'a>; 2],
}

#[derive(Serialize)]
struct DatasetFile<'a> {
    format: &'static str,
    config: &'a DemoDataConfig,
    splits: &'a [SplitSummary],
}

/// Generates the dataset described by `cfg` into `out_dir` (created if needed; files of the
/// same names are overwritten). `progress` is called after every clip, from worker threads.
pub fn generate(
    out_dir: impl AsRef<Path>,
    cfg: &DemoDataConfig,
    progress: impl Fn(&Progress<'_>) + Sync,
) -> Result<Summary> {
    let t0 = Instant::now();
    let out_dir = out_dir.as_ref();
    cfg.validate()?;
    let speech = Speech::new(&cfg.espeak_program, cfg.sample_rate);
    if cfg.with_audio {
        speech.check()?;
    }
    let clips_dir = out_dir.join("clips");
    fs::create_dir_all(&clips_dir).map_err(|e| DemoDataError::io(&clips_dir, "creating", e))?;

    let jobs: Vec<(usize, usize)> = cfg
        .splits
        .iter()
        .enumerate()
        .flat_map(|(s, sc)| (0..sc.clips).map(move |i| (s, i)))
        .collect();
    let total = jobs.len();
    let done = AtomicUsize::new(0);
    let run = || -> Result<Vec<ClipMeta>> {
        jobs.par_iter()
            .map(|&(s, i)| {
                let split = &cfg.splits[s];
                let meta = make_clip(out_dir, cfg, split, i, &speech)?;
                let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                progress(&Progress {
                    split: &split.name,
                    clip: &meta.id,
                    done: d,
                    total,
                });
                Ok(meta)
            })
            .collect()
    };
    let metas = if cfg.threads == 0 {
        run()?
    } else {
        rayon::ThreadPoolBuilder::new()
            .num_threads(cfg.threads)
            .build()
            .map_err(|e| DemoDataError::Config(format!("thread pool: {e}")))?
            .install(run)?
    };

    // Split JSONs, in clip order.
    let mut splits = Vec::new();
    let mut start = 0;
    for sc in &cfg.splits {
        let ms = &metas[start..start + sc.clips];
        start += sc.clips;
        let mut all = Vec::new();
        let mut caps = Vec::new();
        for m in ms {
            for qa in &m.qa {
                let human = format!("<video>\n{}", qa.question);
                all.push((qa.id.clone(), m.video.clone(), human, qa.answer.clone()));
                if qa.question_type == QuestionType::Caption {
                    caps.push(all.last().cloned().unwrap_or_default());
                }
            }
        }
        let json = format!("{}.json", sc.name);
        let captions_json = format!("{}_captions.json", sc.name);
        write_conversations(&out_dir.join(&json), &all)?;
        write_conversations(&out_dir.join(&captions_json), &caps)?;
        let (mvbench, mvbench_items) = if sc.clips > 0 && cfg.mvbench_splits.contains(&sc.name) {
            let (rel, n) = write_mvbench(out_dir, &sc.name, ms)?;
            (Some(rel.to_string_lossy().replace('\\', "/")), n)
        } else {
            (None, 0)
        };
        splits.push(SplitSummary {
            name: sc.name.clone(),
            clips: sc.clips,
            conversations: all.len(),
            json,
            captions_json,
            mvbench,
            mvbench_items,
        });
    }

    let meta_path = out_dir.join("meta.jsonl");
    let mut lines = String::new();
    for m in &metas {
        let line = serde_json::to_string(m).map_err(|source| DemoDataError::Json {
            path: meta_path.clone(),
            source,
        })?;
        lines.push_str(&line);
        lines.push('\n');
    }
    write_file(&meta_path, lines.as_bytes())?;

    let ds_path = out_dir.join("dataset.json");
    let ds = DatasetFile {
        format: "videollama-demodata/1",
        config: cfg,
        splits: &splits,
    };
    let text = serde_json::to_string_pretty(&ds).map_err(|source| DemoDataError::Json {
        path: ds_path.clone(),
        source,
    })?;
    write_file(&ds_path, format!("{text}\n").as_bytes())?;

    let mut video_bytes = 0;
    for m in &metas {
        let p = out_dir.join(&m.video);
        video_bytes += fs::metadata(&p)
            .map_err(|e| DemoDataError::io(&p, "reading metadata", e))?
            .len();
    }
    Ok(Summary {
        out_dir: out_dir.to_path_buf(),
        splits,
        clips: metas.len(),
        video_bytes,
        elapsed_s: t0.elapsed().as_secs_f64(),
    })
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = fs::File::create(path).map_err(|e| DemoDataError::io(path, "creating", e))?;
    f.write_all(bytes)
        .map_err(|e| DemoDataError::io(path, "writing", e))
}

fn write_conversations(path: &Path, items: &[(String, String, String, String)]) -> Result<()> {
    let convs: Vec<Conversation<'_>> = items
        .iter()
        .map(|(id, video, q, a)| Conversation {
            id,
            video,
            conversations: [
                Turn {
                    from: "human",
                    value: q,
                },
                Turn {
                    from: "gpt",
                    value: a,
                },
            ],
        })
        .collect();
    let text = serde_json::to_string_pretty(&convs).map_err(|source| DemoDataError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    write_file(path, format!("{text}\n").as_bytes())
}

/// The scene, questions and caption of clip `index` of `split`, without rendering or
/// encoding anything (what [`generate`] writes to `meta.jsonl` for it).
pub fn clip_meta(cfg: &DemoDataConfig, split: &SplitConfig, index: usize) -> Result<ClipMeta> {
    Ok(plan_clip(cfg, split, index)?.0)
}

/// Scene + QA of one clip, and the generator state after them (the sound pattern draws
/// from it).
fn plan_clip(cfg: &DemoDataConfig, split: &SplitConfig, index: usize) -> Result<(ClipMeta, Rng)> {
    let mut rng = Rng::derive(split.seed, index as u64);
    let id = format!("{}-{index:05}", split.name);
    let mut meta = sample_scene(&mut rng, id, &split.name, &cfg.scene_params(&split.layout));
    let mut qa = Vec::new();
    for (k, q) in make_questions(&mut rng, &meta).into_iter().enumerate() {
        qa.push(QaMeta {
            id: format!("{}-q{k}-{}", meta.id, q.category().name()),
            question_type: q,
            question: question_text(&mut rng, q),
            answer: expected_answer(&meta, q)?,
        });
    }
    meta.caption = expected_answer(&meta, QuestionType::Caption)?;
    meta.qa = qa;
    Ok((meta, rng))
}

fn make_clip(
    out_dir: &Path,
    cfg: &DemoDataConfig,
    split: &SplitConfig,
    index: usize,
    speech: &Speech,
) -> Result<ClipMeta> {
    let (meta, mut rng) = plan_clip(cfg, split, index)?;
    let samples = match meta.sound {
        Some(sound) => {
            let n = (meta.frames as u64 * u64::from(cfg.sample_rate) / u64::from(cfg.fps)) as usize;
            Some(audio::synthesize(
                sound,
                n,
                cfg.sample_rate,
                &mut rng,
                speech,
            )?)
        }
        None => None,
    };
    let path = out_dir.join(&meta.video);
    let part = path.with_extension("mp4.part");
    let spec = EncodeSpec {
        width: meta.width,
        height: meta.height,
        fps: meta.fps,
        frames: meta.frames,
        crf: cfg.crf,
        preset: &cfg.preset,
        audio: samples.as_deref().map(|s| (s, cfg.sample_rate)),
        audio_bit_rate: cfg.audio_bit_rate,
    };
    let written = write_mp4(&part, &spec, |i, rgb| render_into(&meta, i, rgb));
    if let Err(e) = written {
        let _ = fs::remove_file(&part);
        return Err(e);
    }
    fs::rename(&part, &path).map_err(|e| DemoDataError::io(&path, "renaming into place", e))?;
    if cfg.verify {
        verify_clip(&path, &meta)?;
    }
    Ok(meta)
}

/// Largest mean absolute difference (per channel value, 0–255) accepted between a decoded
/// frame and its rendering. H.264 at crf 20 on flat shapes stays around 1–2.
const VERIFY_MAX_MEAN_ABS: f64 = 8.0;

/// Decodes `path` with our decoder and checks it against `meta`: frame count, size, audio
/// stream presence, and the last frame's pixels against [`render_frame`].
pub fn verify_clip(path: &Path, meta: &ClipMeta) -> Result<()> {
    let fail = |message: String| DemoDataError::Verify {
        path: path.to_path_buf(),
        message,
    };
    let info = videollama_media::decode::probe(path)?;
    if info.frame_count != meta.frames || info.width != meta.width || info.height != meta.height {
        return Err(fail(format!(
            "decoded {} frames of {}x{}, expected {} of {}x{}",
            info.frame_count, info.width, info.height, meta.frames, meta.width, meta.height
        )));
    }
    if info.has_audio != meta.sound.is_some() {
        return Err(fail(format!(
            "audio stream present: {}, expected {}",
            info.has_audio,
            meta.sound.is_some()
        )));
    }
    let Some(last) = meta.frames.checked_sub(1) else {
        return Err(fail("the metadata has no frames".into()));
    };
    let decoded = videollama_media::decode::decode_frames(path, &[last])?;
    let want = render_frame(meta, last);
    let got = decoded
        .first()
        .ok_or_else(|| fail("no frame decoded".into()))?;
    if got.data.len() != want.data.len() {
        return Err(fail("decoded frame has the wrong size".into()));
    }
    let mad = got
        .data
        .iter()
        .zip(&want.data)
        .map(|(&a, &b)| f64::from(a.abs_diff(b)))
        .sum::<f64>()
        / want.data.len() as f64;
    if mad > VERIFY_MAX_MEAN_ABS {
        return Err(fail(format!(
            "last frame differs from its rendering by {mad:.2} on average (limit {VERIFY_MAX_MEAN_ABS})"
        )));
    }
    Ok(())
}

/// Reads `meta.jsonl` (one [`ClipMeta`] per line; blank lines ignored).
pub fn read_meta(path: impl AsRef<Path>) -> Result<Vec<ClipMeta>> {
    let path = path.as_ref();
    let text = fs::read_to_string(path).map_err(|e| DemoDataError::io(path, "reading", e))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).map_err(|source| DemoDataError::Json {
                path: path.to_path_buf(),
                source,
            })
        })
        .collect()
}
