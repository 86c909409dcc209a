//! The demo world as a multiple-choice benchmark in MVBench's format.
//!
//! ```text
//! ClipMeta.qa (question type + wording, per clip) ─mc_item─▶ one item per category
//!   question   = the clip's own question text (as its QA pair asks it)
//!   candidates = canonical value of the right answer + 3 wrong values of the category,
//!                shuffled by an Rng seeded from (clip id, category)
//!   answer     = the right candidate's text
//! ─write_mvbench(out, split, metas)─▶ out/mvbench/{split}/{category}.json
//!   each a JSON list of {"video": "clips/ID.mp4", "question", "candidates", "answer"}
//!   (`videollama eval --format mvbench --questions out/mvbench/{split} --videos out`)
//! ```
//!
//! Canonical values (short phrases from the world's vocabulary, one form per category, all
//! read correctly by [`crate::score`]):
//!
//! | category | values |
//! |---|---|
//! | colour | `red` `green` `blue` `yellow` `white` |
//! | shape | `circle` `square` `triangle`, plus `star` (never drawn: the fourth option) |
//! | count | `one` … `four` (clips hold 1–3 objects; `four` is always wrong) |
//! | motion | `not moving` `left` `right` `up` `down` |
//! | sound | `silence` `a low beep` `a high beep` `a voice saying N` (N = one … five) |
//!
//! Captions have no multiple-choice form. Clips without a sound track get no sound item.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{DemoDataError, Result};
use crate::qa::{resolve, Category, QuestionType};
use crate::rng::Rng;
use crate::world::{ClipMeta, ColorName, Motion, ShapeKind, Sound, NUMBER_WORDS};

/// The categories that get multiple-choice items, in file order.
pub const MC_CATEGORIES: [Category; 5] = [
    Category::Color,
    Category::Shape,
    Category::Count,
    Category::Motion,
    Category::Sound,
];

/// Options per item (MVBench's usual four).
pub const OPTIONS: usize = 4;

/// The shape option no clip contains, so that the shape category has four values.
pub const EXTRA_SHAPE: &str = "star";

/// Spoken numbers of the world (`Sound::Number` draws 1–5).
const SPOKEN: std::ops::RangeInclusive<u8> = 1..=5;

/// One multiple-choice question, serialised exactly as an MVBench task file's entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct McItem {
    /// The clip, relative to the dataset folder (`clips/ID.mp4`).
    pub video: String,
    pub question: String,
    /// [`OPTIONS`] distinct texts; exactly one equals `answer`.
    pub candidates: Vec<String>,
    pub answer: String,
}

fn motion_phrase(m: Motion) -> String {
    match m {
        Motion::Static => "not moving".into(),
        m => m.word().into(),
    }
}

fn count_phrase(n: usize) -> String {
    NUMBER_WORDS
        .get(n)
        .map_or_else(|| n.to_string(), |w| (*w).to_string())
}

fn spoken_phrase(n: u8) -> String {
    format!("a voice saying {}", count_phrase(usize::from(n)))
}

fn sound_phrase(s: Sound) -> String {
    match s {
        Sound::Silence => "silence".into(),
        Sound::LowBeep { .. } => "a low beep".into(),
        Sound::HighBeep { .. } => "a high beep".into(),
        Sound::Number { number } => spoken_phrase(number),
    }
}

/// FNV-1a, 64 bit: a stable seed from text (std's hasher may change between releases).
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The right value and the pool of wrong values (all distinct, the pool never containing
/// the right one) for `q` about `meta`; `None` for captions or a question that does not
/// apply to the clip.
fn values(meta: &ClipMeta, q: QuestionType, rng: &mut Rng) -> Option<(String, Vec<String>)> {
    let others = |right: String, all: Vec<String>| {
        let wrong = all.into_iter().filter(|v| *v != right).collect();
        (right, wrong)
    };
    Some(match q {
        QuestionType::Color(t) => {
            let right = resolve(meta, t)?.color;
            let all = ColorName::ALL
                .iter()
                .map(|c| c.word().to_string())
                .collect();
            others(right.word().into(), all)
        }
        QuestionType::Shape(t) => {
            let right = resolve(meta, t)?.shape;
            let all = ShapeKind::ALL
                .iter()
                .map(|s| s.word().to_string())
                .chain([EXTRA_SHAPE.to_string()])
                .collect();
            others(right.word().into(), all)
        }
        QuestionType::Count => {
            let n = meta.objects.len();
            // 1 .. max(n, 3) + 1: the world's counts and one more.
            let all = (1..=n.max(3) + 1).map(count_phrase).collect();
            others(count_phrase(n), all)
        }
        QuestionType::Motion(t) => {
            let right = resolve(meta, t)?.motion;
            let all = Motion::ALL.iter().map(|&m| motion_phrase(m)).collect();
            others(motion_phrase(right), all)
        }
        QuestionType::Sound => {
            let right = meta.sound?;
            // One value per kind of sound; a wrong spoken number when the right one is a
            // number, any spoken number otherwise.
            let spoken = match right {
                Sound::Number { number } => {
                    let wrong: Vec<u8> = SPOKEN.filter(|&n| n != number).collect();
                    *rng.choose(&wrong)?
                }
                _ => *rng.choose(&SPOKEN.collect::<Vec<u8>>())?,
            };
            let all = vec![
                "silence".into(),
                "a low beep".into(),
                "a high beep".into(),
                spoken_phrase(spoken),
            ];
            others(sound_phrase(right), all)
        }
        QuestionType::Caption => return None,
    })
}

/// The multiple-choice form of the clip's question `q` asked as `question`: `None` for
/// captions and for questions that do not apply to the clip (their target names no single
/// object, or a sound question without a sound track). The option order and the wrong
/// values depend only on the clip id and the category.
pub fn mc_item(meta: &ClipMeta, q: QuestionType, question: &str) -> Option<McItem> {
    let mut rng = Rng::new(fnv1a(&format!("{}/{}", meta.id, q.category().name())));
    let (right, mut wrong) = values(meta, q, &mut rng)?;
    if wrong.len() < OPTIONS - 1 {
        return None;
    }
    rng.shuffle(&mut wrong);
    let mut candidates = vec![right.clone()];
    candidates.extend(wrong.into_iter().take(OPTIONS - 1));
    rng.shuffle(&mut candidates);
    Some(McItem {
        video: meta.video.clone(),
        question: question.to_string(),
        candidates,
        answer: right,
    })
}

/// One item per category of [`MC_CATEGORIES`] the clip's QA pairs ask (`meta.qa`, in that
/// order), each with the question text of its QA pair.
pub fn mc_items(meta: &ClipMeta) -> Vec<(Category, McItem)> {
    MC_CATEGORIES
        .iter()
        .filter_map(|&c| {
            let qa = meta.qa.iter().find(|qa| qa.question_type.category() == c)?;
            Some((c, mc_item(meta, qa.question_type, &qa.question)?))
        })
        .collect()
}

/// Writes `out_dir/mvbench/{split}/{category}.json` for the clips `metas` (in their
/// order; categories without items get no file). Returns the folder, relative to `out_dir`,
/// and the number of items written.
pub fn write_mvbench(out_dir: &Path, split: &str, metas: &[ClipMeta]) -> Result<(PathBuf, usize)> {
    let rel = Path::new("mvbench").join(split);
    let dir = out_dir.join(&rel);
    fs::create_dir_all(&dir).map_err(|e| DemoDataError::io(&dir, "creating", e))?;
    let mut per_cat: Vec<(Category, Vec<McItem>)> =
        MC_CATEGORIES.iter().map(|&c| (c, Vec::new())).collect();
    for m in metas {
        for (c, item) in mc_items(m) {
            if let Some(slot) = per_cat.iter_mut().find(|(k, _)| *k == c) {
                slot.1.push(item);
            }
        }
    }
    let mut total = 0;
    for (c, items) in &per_cat {
        let path = dir.join(format!("{}.json", c.name()));
        if items.is_empty() {
            // A rerun without sound leaves no stale sound file behind.
            let _ = fs::remove_file(&path);
            continue;
        }
        total += items.len();
        let text = serde_json::to_string_pretty(items).map_err(|source| DemoDataError::Json {
            path: path.clone(),
            source,
        })?;
        fs::write(&path, format!("{text}\n"))
            .map_err(|e| DemoDataError::io(&path, "writing", e))?;
    }
    Ok((rel, total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{clip_meta, DemoDataConfig};
    use crate::qa::score;

    fn metas(with_audio: bool, n: usize) -> Vec<ClipMeta> {
        let mut cfg = DemoDataConfig::new(0, 0, n).with_ood_test(n);
        cfg.with_audio = with_audio;
        let splits = cfg.splits.clone();
        splits
            .iter()
            .flat_map(|s| (0..s.clips).map(move |i| (s.clone(), i)))
            .map(|(s, i)| clip_meta(&cfg, &s, i).unwrap())
            .collect()
    }

    #[test]
    fn items_have_four_distinct_options_and_the_right_answer() {
        let ms = metas(true, 150);
        let mut seen = std::collections::HashMap::<(Category, usize), usize>::new();
        for m in &ms {
            let items = mc_items(m);
            let cats: Vec<Category> = items.iter().map(|(c, _)| *c).collect();
            assert_eq!(cats, MC_CATEGORIES.to_vec(), "{}", m.id);
            for (c, item) in &items {
                let qa =
                    m.qa.iter()
                        .find(|qa| qa.question_type.category() == *c)
                        .unwrap();
                assert_eq!(item.question, qa.question);
                assert_eq!(item.video, format!("clips/{}.mp4", m.id));
                assert_eq!(item.candidates.len(), OPTIONS);
                let distinct: std::collections::HashSet<_> = item.candidates.iter().collect();
                assert_eq!(distinct.len(), OPTIONS, "{item:?}");
                let hits: Vec<usize> = (0..OPTIONS)
                    .filter(|&i| item.candidates[i] == item.answer)
                    .collect();
                assert_eq!(hits.len(), 1, "{item:?}");
                *seen.entry((*c, hits[0])).or_default() += 1;
                // The world's own keyword scorer: the answer is right, every other option
                // wrong.
                for cand in &item.candidates {
                    assert_eq!(
                        score(cand, m, qa.question_type),
                        *cand == item.answer,
                        "{}: {cand:?} for {:?} ({})",
                        m.id,
                        qa.question_type,
                        m.caption
                    );
                }
            }
        }
        // Every position holds the answer now and then, in every category.
        for c in MC_CATEGORIES {
            for pos in 0..OPTIONS {
                let n = seen.get(&(c, pos)).copied().unwrap_or(0);
                assert!(n >= 30, "{c:?}: answer at {pos} {n} times of 300");
            }
        }
    }

    #[test]
    fn answers_agree_with_the_geometry() {
        // Independent of the scorer: recompute the value from the objects' fields.
        for m in metas(true, 60) {
            for (c, item) in mc_items(&m) {
                let qa =
                    m.qa.iter()
                        .find(|qa| qa.question_type.category() == c)
                        .unwrap();
                let want = match qa.question_type {
                    QuestionType::Count => NUMBER_WORDS[m.objects.len()].to_string(),
                    QuestionType::Color(t) => resolve(&m, t).unwrap().color.word().into(),
                    QuestionType::Shape(t) => resolve(&m, t).unwrap().shape.word().into(),
                    QuestionType::Motion(t) => {
                        let o = resolve(&m, t).unwrap();
                        let [vx, vy] = o.velocity;
                        if vx == 0.0 && vy == 0.0 {
                            "not moving".into()
                        } else if vx < 0.0 {
                            "left".into()
                        } else if vx > 0.0 {
                            "right".into()
                        } else if vy < 0.0 {
                            "up".into()
                        } else {
                            "down".into()
                        }
                    }
                    QuestionType::Sound => match m.sound.unwrap() {
                        Sound::Silence => "silence".into(),
                        Sound::LowBeep { freq_hz } if freq_hz < 1000.0 => "a low beep".into(),
                        Sound::HighBeep { freq_hz } if freq_hz > 1000.0 => "a high beep".into(),
                        Sound::Number { number } => {
                            format!("a voice saying {}", NUMBER_WORDS[usize::from(number)])
                        }
                        s => panic!("beep at an unexpected frequency: {s:?}"),
                    },
                    QuestionType::Caption => unreachable!(),
                };
                assert_eq!(item.answer, want, "{}: {:?}", m.id, qa.question_type);
            }
        }
    }

    #[test]
    fn deterministic_and_without_sound_items_when_silent_clips_have_no_track() {
        let a = metas(true, 20);
        let b = metas(true, 20);
        let ia: Vec<_> = a.iter().flat_map(mc_items).collect();
        let ib: Vec<_> = b.iter().flat_map(mc_items).collect();
        assert_eq!(ia, ib);
        // The order depends on the clip: not every clip of a category has the same one.
        let orders: std::collections::HashSet<Vec<String>> = ia
            .iter()
            .filter(|(c, _)| *c == Category::Count)
            .map(|(_, it)| it.candidates.clone())
            .collect();
        assert!(orders.len() > 1);

        for m in metas(false, 10) {
            let cats: Vec<Category> = mc_items(&m).into_iter().map(|(c, _)| c).collect();
            assert_eq!(cats, MC_CATEGORIES[..4].to_vec());
        }
    }

    #[test]
    fn writes_one_task_file_per_category() {
        let dir = tempfile::tempdir().unwrap();
        let ms = metas(true, 3);
        let test: Vec<ClipMeta> = ms.iter().filter(|m| m.split == "test").cloned().collect();
        let (rel, n) = write_mvbench(dir.path(), "test", &test).unwrap();
        assert_eq!(rel, Path::new("mvbench/test"));
        assert_eq!(n, 3 * MC_CATEGORIES.len());
        for c in MC_CATEGORIES {
            let path = dir.path().join(&rel).join(format!("{}.json", c.name()));
            let items: Vec<McItem> =
                serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
            assert_eq!(items.len(), 3);
            assert_eq!(items[0].video, "clips/test-00000.mp4");
            let raw: serde_json::Value =
                serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
            let keys: Vec<&String> = raw[0].as_object().unwrap().keys().collect();
            assert_eq!(keys.len(), 4);
        }
        // Without sound, the stale sound file goes.
        let silent = metas(false, 3);
        let test: Vec<ClipMeta> = silent.into_iter().filter(|m| m.split == "test").collect();
        let (_, n) = write_mvbench(dir.path(), "test", &test).unwrap();
        assert_eq!(n, 3 * 4);
        assert!(!dir.path().join("mvbench/test/sound.json").exists());
    }
}
