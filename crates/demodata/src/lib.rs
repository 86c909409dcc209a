//! A synthetic audio-visual world for training and evaluating the default model (issue 11,
//! part 2): short clips of coloured shapes with a simple sound track, questions and answers
//! about them in the reference's JSON conversation format, and the ground truth to score
//! answers against.
//!
//! ```text
//! DemoDataConfig (splits × seeds, layouts, fps, durations, audio)
//!   ─generate(out_dir, &cfg, progress)─▶ per clip i of split s, from Rng::derive(seed_s, i):
//!      world::sample_scene ─▶ ClipMeta (size, background, 1–3 objects, motion, sound)
//!      qa::make_questions ─▶ QuestionType (+ target) ─question_text / expected_answer─▶ QA
//!      world::render_frame ─RGB [h, w, 3]─▶ encode (ffmpeg-next: libx264 yuv420p + AAC)
//!      audio::synthesize (beeps, espeak-ng numbers) ─mono f32 [n]─┘
//!      verify_clip (videollama_media::decode) ─▶ frame count, size, pixels
//!   ─▶ clips/*.mp4, {split}.json, {split}_captions.json, meta.jsonl, dataset.json,
//!      mvbench/{split}/{category}.json (mcq: 4-option items, val / test / test_ood)
//! model answer ─score(answer, &meta, question_type)─▶ bool   (evaluation)
//! ```
//!
//! * [`world`] — the vocabulary (shapes, colours, backgrounds, motions, sounds), the
//!   ground-truth types, scene sampling and the rasteriser.
//! * [`qa`] — question types, wording templates, reference answers, captions, the scorer.
//! * `audio` — beep synthesis and `espeak-ng` (run as a program; a clear error if missing).
//! * `encode` — the MP4 writer (libavcodec/libavformat through ffmpeg-next, no CLI).
//! * [`mcq`] — the multiple-choice form of the QA (MVBench's task-file format).
//! * [`generate()`] — the dataset writer and [`read_meta`].
//!
//! Everything is deterministic: a clip is a pure function of its split's seed and its index
//! (its own generator, so clips are made in parallel in any order), the encoders run one
//! thread per clip with bit-exact flags, and the JSON is written in a fixed order.

mod audio;
mod encode;
pub mod error;
mod generate;
pub mod mcq;
pub mod qa;
mod rng;
pub mod world;

pub use audio::espeak_available;
pub use error::{DemoDataError, Result};
pub use generate::{
    clip_meta, generate, read_meta, verify_clip, DemoDataConfig, Progress, SplitConfig,
    SplitSummary, Summary,
};
pub use qa::{caption_recall, expected_answer, score, Category, QuestionType, Target};
pub use world::{
    render_frame, Background, ClipMeta, ColorName, Layout, Motion, ObjectMeta, QaMeta, ShapeKind,
    Sound,
};
