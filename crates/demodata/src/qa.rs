//! Questions, reference answers, captions and the keyword scorer.
//!
//! ```text
//! ClipMeta ─make_qas(rng)─▶ one question per type (colour, shape, count, motion, sound,
//!     caption), wording drawn from several templates, referent drawn among those that
//!     identify one object ─▶ QaMeta { question_type, question, answer = expected_answer }
//! model's answer text ─score(text, meta, question_type)─▶ bool (keywords)
//! ```
//!
//! A [`QuestionType`] carries its referent ([`Target`]) so that the answer is a function of
//! the metadata and the type alone ([`expected_answer`]). Objects of a clip have distinct
//! shapes and distinct colours, so "the circle" or "the red shape" always names one object.
//!
//! The scorer reads keywords, not sentences: the *first* keyword of the asked category in
//! the answer must be the right one (a colour word for colour questions, a shape word for
//! shape questions, a number as digit or word for count, a direction or "not moving" for
//! motion, silence / low / high / a number for sound). Captions must name every object's
//! colour and shape, every moving object's direction and the sound.

use serde::{Deserialize, Serialize};

use crate::error::{DemoDataError, Result};
use crate::rng::Rng;
use crate::world::{ClipMeta, ColorName, Motion, ObjectMeta, ShapeKind, Sound, NUMBER_WORDS};

/// Which object a question is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// The only object of a one-object clip.
    Only,
    /// The object of this shape.
    Shape(ShapeKind),
    /// The object of this colour.
    Color(ColorName),
    /// The only moving object.
    Moving,
}

/// A question type with its referent. Serialised as `{"type": "color", "target":
/// {"shape": "circle"}}`, `{"type": "count"}`, ….
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", content = "target", rename_all = "snake_case")]
pub enum QuestionType {
    /// "What colour is the circle?"
    Color(Target),
    /// "What shape is the red object?"
    Shape(Target),
    /// "How many shapes are there?"
    Count,
    /// "Which way does the blue shape move?"
    Motion(Target),
    /// "What do you hear?"
    Sound,
    /// "Describe the video."
    Caption,
}

/// The category of a question type (what the evaluation reports accuracy per).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Color,
    Shape,
    Count,
    Motion,
    Sound,
    Caption,
}

impl Category {
    /// All categories, in report order.
    pub const ALL: [Category; 6] = [
        Category::Color,
        Category::Shape,
        Category::Count,
        Category::Motion,
        Category::Sound,
        Category::Caption,
    ];

    /// Lower-case name (`"color"`).
    pub fn name(self) -> &'static str {
        match self {
            Category::Color => "color",
            Category::Shape => "shape",
            Category::Count => "count",
            Category::Motion => "motion",
            Category::Sound => "sound",
            Category::Caption => "caption",
        }
    }
}

impl QuestionType {
    /// The category.
    pub fn category(self) -> Category {
        match self {
            QuestionType::Color(_) => Category::Color,
            QuestionType::Shape(_) => Category::Shape,
            QuestionType::Count => Category::Count,
            QuestionType::Motion(_) => Category::Motion,
            QuestionType::Sound => Category::Sound,
            QuestionType::Caption => Category::Caption,
        }
    }

    fn describe(self) -> String {
        serde_json::to_string(&self).unwrap_or_else(|_| format!("{self:?}"))
    }
}

fn unanswerable(meta: &ClipMeta, q: QuestionType, reason: impl Into<String>) -> DemoDataError {
    DemoDataError::Unanswerable {
        clip: meta.id.clone(),
        question: q.describe(),
        reason: reason.into(),
    }
}

/// The object `target` names in `meta`, if it names exactly one.
pub fn resolve(meta: &ClipMeta, target: Target) -> Option<&ObjectMeta> {
    let mut it: Box<dyn Iterator<Item = &ObjectMeta>> = match target {
        Target::Only => Box::new(meta.objects.iter()),
        Target::Shape(s) => Box::new(meta.objects.iter().filter(move |o| o.shape == s)),
        Target::Color(c) => Box::new(meta.objects.iter().filter(move |o| o.color == c)),
        Target::Moving => Box::new(meta.moving()),
    };
    let first = it.next()?;
    it.next().is_none().then_some(first)
}

fn subject(target: Target) -> String {
    match target {
        Target::Only => "The shape".into(),
        Target::Shape(s) => format!("The {}", s.word()),
        Target::Color(c) => format!("The {} shape", c.word()),
        Target::Moving => "The moving shape".into(),
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

fn sound_sentence(sound: Sound) -> String {
    match sound {
        Sound::Silence => "There is no sound.".into(),
        Sound::LowBeep { .. } => "A low beep sounds.".into(),
        Sound::HighBeep { .. } => "A high beep sounds.".into(),
        Sound::Number { number } => format!(
            "A voice says the number {}.",
            NUMBER_WORDS.get(usize::from(number)).unwrap_or(&"zero")
        ),
    }
}

/// The reference answer to `question` about the clip `meta`, exactly derived from the
/// metadata. Errors when the question does not apply (its target names no single object,
/// or a sound question about a clip without audio).
pub fn expected_answer(meta: &ClipMeta, question: QuestionType) -> Result<String> {
    let obj = |t: Target| {
        resolve(meta, t).ok_or_else(|| {
            unanswerable(
                meta,
                question,
                "the target does not name exactly one object",
            )
        })
    };
    Ok(match question {
        QuestionType::Color(t) => {
            if matches!(t, Target::Color(_)) {
                return Err(unanswerable(meta, question, "colour asked by colour"));
            }
            let o = obj(t)?;
            match t {
                Target::Only => format!("It is {}.", o.color.word()),
                _ => format!("{} is {}.", subject(t), o.color.word()),
            }
        }
        QuestionType::Shape(t) => {
            if matches!(t, Target::Shape(_)) {
                return Err(unanswerable(meta, question, "shape asked by shape"));
            }
            let o = obj(t)?;
            match t {
                Target::Only => format!("It is a {}.", o.shape.word()),
                _ => format!("{} is a {}.", subject(t), o.shape.word()),
            }
        }
        QuestionType::Count => {
            let n = meta.objects.len();
            let w = NUMBER_WORDS.get(n).copied().unwrap_or("many");
            if n == 1 {
                "There is one shape.".into()
            } else {
                format!("There are {w} shapes.")
            }
        }
        QuestionType::Motion(t) => {
            let o = obj(t)?;
            match o.motion {
                Motion::Static => format!("{} is not moving.", subject(t)),
                m => format!("{} moves {}.", subject(t), m.word()),
            }
        }
        QuestionType::Sound => {
            let s = meta
                .sound
                .ok_or_else(|| unanswerable(meta, question, "the clip has no sound track"))?;
            sound_sentence(s)
        }
        QuestionType::Caption => caption(meta),
    })
}

fn caption(meta: &ClipMeta) -> String {
    let parts: Vec<String> = meta
        .objects
        .iter()
        .map(|o| match o.motion {
            Motion::Static => format!("a static {} {}", o.color.word(), o.shape.word()),
            m => format!(
                "a {} {} moving {}",
                o.color.word(),
                o.shape.word(),
                m.word()
            ),
        })
        .collect();
    let objects = match parts.len() {
        0 => "nothing".to_string(),
        1 => parts[0].clone(),
        n => format!("{} and {}", parts[..n - 1].join(", "), parts[n - 1]),
    };
    let mut s = format!(
        "{} on a {} background.",
        capitalise(&objects),
        meta.background.word()
    );
    if let Some(sound) = meta.sound {
        s.push(' ');
        s.push_str(&sound_sentence(sound));
    }
    s
}

// ── question wording ──────────────────────────────────────────────────────────────

fn pick<'a>(rng: &mut Rng, t: &[&'a str]) -> &'a str {
    rng.choose(t).copied().unwrap_or("")
}

/// The question text for `q` (wording chosen by `rng`).
pub(crate) fn question_text(rng: &mut Rng, q: QuestionType) -> String {
    match q {
        QuestionType::Color(Target::Only) => pick(
            rng,
            &[
                "What colour is the shape?",
                "What color is the object in the video?",
                "Which colour does the shape have?",
                "Tell me the color of the shape.",
            ],
        )
        .into(),
        QuestionType::Color(Target::Moving) => pick(
            rng,
            &[
                "What colour is the moving shape?",
                "What color is the shape that moves?",
                "Which colour does the moving object have?",
            ],
        )
        .into(),
        QuestionType::Color(t) => {
            let k = target_noun(t);
            pick(
                rng,
                &[
                    "What colour is the {}?",
                    "What color is the {} in the video?",
                    "Which colour is the {}?",
                    "Tell me the colour of the {}.",
                ],
            )
            .replace("{}", &k)
        }
        QuestionType::Shape(Target::Only) => pick(
            rng,
            &[
                "What shape is shown?",
                "What kind of shape is in the video?",
                "Which shape do you see?",
                "What shape is the object?",
            ],
        )
        .into(),
        QuestionType::Shape(Target::Moving) => pick(
            rng,
            &[
                "What shape is moving?",
                "Which shape moves?",
                "What is the moving object?",
            ],
        )
        .into(),
        QuestionType::Shape(t) => {
            let c = target_noun(t);
            pick(
                rng,
                &[
                    "What shape is the {} object?",
                    "What is the {} shape?",
                    "Which shape is {}?",
                    "What kind of shape is the {} one?",
                ],
            )
            .replace("{}", &c)
        }
        QuestionType::Count => pick(
            rng,
            &[
                "How many shapes are there?",
                "How many objects can you see?",
                "Count the shapes in the video.",
                "How many shapes appear in this video?",
            ],
        )
        .into(),
        QuestionType::Motion(Target::Only) | QuestionType::Motion(Target::Moving) => pick(
            rng,
            &[
                "Which way does the shape move?",
                "In which direction is the shape moving?",
                "Does the shape move? Which way?",
                "Where does the object go?",
            ],
        )
        .into(),
        QuestionType::Motion(t) => {
            let k = match t {
                Target::Color(c) => format!("{} shape", c.word()),
                _ => target_noun(t),
            };
            pick(
                rng,
                &[
                    "Which way does the {} move?",
                    "In which direction is the {} moving?",
                    "How does the {} move?",
                    "Is the {} moving, and if so, which way?",
                ],
            )
            .replace("{}", &k)
        }
        QuestionType::Sound => pick(
            rng,
            &[
                "What do you hear?",
                "What sound is in the video?",
                "Describe the sound.",
                "What can be heard in this clip?",
                "Is there any sound? What is it?",
            ],
        )
        .into(),
        QuestionType::Caption => pick(
            rng,
            &[
                "Describe the video.",
                "What happens in this video?",
                "Give a short caption for this video.",
                "Describe what you see and hear.",
                "Summarise the clip in one sentence.",
            ],
        )
        .into(),
    }
}

fn target_noun(t: Target) -> String {
    match t {
        Target::Only => "shape".into(),
        Target::Shape(s) => s.word().into(),
        Target::Color(c) => c.word().into(),
        Target::Moving => "moving shape".into(),
    }
}

/// Draws one question of each applicable type for `meta` (sound only with a sound track),
/// each about a randomly chosen object named in a randomly chosen valid way.
pub(crate) fn make_questions(rng: &mut Rng, meta: &ClipMeta) -> Vec<QuestionType> {
    let n = meta.objects.len();
    let movers = meta.moving().count();
    let pick_target = |rng: &mut Rng, by_shape: bool, by_color: bool, allow_moving: bool| {
        let o = &meta.objects[rng.below(n)];
        let mut opts = Vec::new();
        if n == 1 {
            opts.push(Target::Only);
        }
        if by_shape {
            opts.push(Target::Shape(o.shape));
        }
        if by_color {
            opts.push(Target::Color(o.color));
        }
        if allow_moving && movers == 1 && o.motion.is_moving() {
            opts.push(Target::Moving);
        }
        *rng.choose(&opts).unwrap_or(&Target::Only)
    };
    let mut qs = Vec::new();
    if n > 0 {
        qs.push(QuestionType::Color(pick_target(rng, true, false, true)));
        qs.push(QuestionType::Shape(pick_target(rng, false, true, true)));
        qs.push(QuestionType::Count);
        qs.push(QuestionType::Motion(pick_target(rng, true, true, false)));
    }
    if meta.sound.is_some() {
        qs.push(QuestionType::Sound);
    }
    qs.push(QuestionType::Caption);
    qs
}

// ── scoring ───────────────────────────────────────────────────────────────────────

/// Lower-case alphanumeric words of `text` (`"It's up-ward!"` → `it s up ward`).
fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

fn color_of(w: &str) -> Option<ColorName> {
    Some(match w {
        "red" => ColorName::Red,
        "green" => ColorName::Green,
        "blue" => ColorName::Blue,
        "yellow" => ColorName::Yellow,
        "white" => ColorName::White,
        _ => return None,
    })
}

fn shape_of(w: &str) -> Option<ShapeKind> {
    Some(match w {
        "circle" | "circles" | "circular" | "round" | "disc" | "disk" | "ball" | "dot" => {
            ShapeKind::Circle
        }
        "square" | "squares" | "box" | "rectangle" | "rectangular" | "block" => ShapeKind::Square,
        "triangle" | "triangles" | "triangular" => ShapeKind::Triangle,
        _ => return None,
    })
}

/// A number written as a digit string or an English word (0–10; "single" = 1).
fn number_of(w: &str) -> Option<u32> {
    if let Ok(n) = w.parse::<u32>() {
        return Some(n);
    }
    if w == "single" {
        return Some(1);
    }
    NUMBER_WORDS.iter().position(|&x| x == w).map(|n| n as u32)
}

const MOVE_WORDS: [&str; 7] = ["move", "moves", "moving", "moved", "go", "goes", "going"];

/// The first motion keyword: a direction, or "static" for still / not moving / … .
fn motion_keywords(ws: &[String]) -> Vec<Motion> {
    let mut out = Vec::new();
    for (i, w) in ws.iter().enumerate() {
        let m = match w.as_str() {
            "left" | "leftward" | "leftwards" => Some(Motion::Left),
            "right" | "rightward" | "rightwards" => Some(Motion::Right),
            "up" | "upward" | "upwards" => Some(Motion::Up),
            "down" | "downward" | "downwards" => Some(Motion::Down),
            "static" | "still" | "stationary" | "motionless" | "immobile" => Some(Motion::Static),
            "not" | "doesn" | "isn" | "no" | "never" | "t"
                if ws[i + 1..]
                    .iter()
                    .take(2)
                    .any(|x| MOVE_WORDS.contains(&x.as_str()) || x == "motion") =>
            {
                Some(Motion::Static)
            }
            _ => None,
        };
        out.extend(m);
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum SoundKey {
    Silence,
    Low,
    High,
    Number(u32),
}

fn sound_keywords(ws: &[String]) -> Vec<SoundKey> {
    let mut out = Vec::new();
    for (i, w) in ws.iter().enumerate() {
        let k = match w.as_str() {
            "silence" | "silent" | "quiet" | "nothing" | "mute" | "muted" => {
                Some(SoundKey::Silence)
            }
            "no" | "not" | "any"
                if ws[i + 1..]
                    .iter()
                    .take(2)
                    .any(|x| x == "sound" || x == "audio" || x == "noise") =>
            {
                Some(SoundKey::Silence)
            }
            "low" | "deep" | "lower" => Some(SoundKey::Low),
            "high" | "shrill" | "higher" => Some(SoundKey::High),
            _ => number_of(w).map(SoundKey::Number),
        };
        out.extend(k);
    }
    out
}

/// Whether `answer` is right for `question` about `meta`, by keywords (see the module
/// docs). Questions that do not apply to the clip score `false`.
pub fn score(answer: &str, meta: &ClipMeta, question: QuestionType) -> bool {
    let ws = words(answer);
    let target = |t: Target| resolve(meta, t);
    match question {
        QuestionType::Color(t) => match target(t) {
            Some(o) => ws.iter().find_map(|w| color_of(w)) == Some(o.color),
            None => false,
        },
        QuestionType::Shape(t) => match target(t) {
            Some(o) => ws.iter().find_map(|w| shape_of(w)) == Some(o.shape),
            None => false,
        },
        QuestionType::Count => {
            ws.iter().find_map(|w| number_of(w)) == Some(meta.objects.len() as u32)
        }
        QuestionType::Motion(t) => match target(t) {
            Some(o) => motion_keywords(&ws).first() == Some(&o.motion),
            None => false,
        },
        QuestionType::Sound => match meta.sound {
            Some(s) => sound_keywords(&ws).first() == Some(&sound_key(s)),
            None => false,
        },
        QuestionType::Caption => caption_hits(answer, meta).is_some_and(|(h, n)| h == n),
    }
}

fn sound_key(s: Sound) -> SoundKey {
    match s {
        Sound::Silence => SoundKey::Silence,
        Sound::LowBeep { .. } => SoundKey::Low,
        Sound::HighBeep { .. } => SoundKey::High,
        Sound::Number { number } => SoundKey::Number(u32::from(number)),
    }
}

/// Caption keywords found: `(hits, total)` over every object's colour and shape, every
/// moving object's direction, and the sound (silence / low / high / the number).
fn caption_hits(answer: &str, meta: &ClipMeta) -> Option<(usize, usize)> {
    let ws = words(answer);
    let colors: Vec<ColorName> = ws.iter().filter_map(|w| color_of(w)).collect();
    let shapes: Vec<ShapeKind> = ws.iter().filter_map(|w| shape_of(w)).collect();
    let motions = motion_keywords(&ws);
    let sounds = sound_keywords(&ws);
    let (mut hits, mut total) = (0, 0);
    for o in &meta.objects {
        total += 2;
        hits += usize::from(colors.contains(&o.color)) + usize::from(shapes.contains(&o.shape));
        if o.motion.is_moving() {
            total += 1;
            hits += usize::from(motions.contains(&o.motion));
        }
    }
    if let Some(s) = meta.sound {
        total += 1;
        hits += usize::from(sounds.contains(&sound_key(s)));
    }
    (total > 0).then_some((hits, total))
}

/// Fraction of the caption keywords (see [`score`]) that `answer` mentions, in `[0, 1]`.
pub fn caption_recall(answer: &str, meta: &ClipMeta) -> f64 {
    caption_hits(answer, meta).map_or(0.0, |(h, n)| h as f64 / n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::{Background, ObjectMeta};

    fn meta(objects: Vec<(ShapeKind, ColorName, Motion)>, sound: Option<Sound>) -> ClipMeta {
        ClipMeta {
            id: "t-00000".into(),
            split: "t".into(),
            video: "clips/t-00000.mp4".into(),
            width: 320,
            height: 240,
            fps: 25,
            frames: 50,
            duration_s: 2.0,
            background: Background::Dark,
            objects: objects
                .into_iter()
                .map(|(shape, color, motion)| ObjectMeta {
                    shape,
                    color,
                    motion,
                    size_px: 40.0,
                    start: [100.0, 100.0],
                    velocity: [0.0, 0.0],
                })
                .collect(),
            sound,
            sample_rate: 16000,
            caption: String::new(),
            qa: vec![],
        }
    }

    #[test]
    fn scorer_reads_keywords() {
        use ColorName::*;
        use ShapeKind::*;
        let m = meta(
            vec![
                (Circle, Red, Motion::Left),
                (Square, Blue, Motion::Static),
                (Triangle, White, Motion::Up),
            ],
            Some(Sound::Number { number: 3 }),
        );
        let c = QuestionType::Color(Target::Shape(Square));
        assert!(score("Blue.", &m, c));
        assert!(score("The square is blue, the circle red", &m, c));
        assert!(!score("red", &m, c));
        assert!(!score("I don't know", &m, c));
        let s = QuestionType::Shape(Target::Color(Red));
        assert!(score("It's a round disc", &m, s));
        assert!(!score("The red shape is a triangle.", &m, s));
        assert!(score("3", &m, QuestionType::Count));
        assert!(score("There are three shapes.", &m, QuestionType::Count));
        assert!(!score("Two.", &m, QuestionType::Count));
        let mv = QuestionType::Motion(Target::Color(Blue));
        assert!(score("It does not move.", &m, mv));
        assert!(score("The blue square is stationary", &m, mv));
        assert!(!score("It moves left.", &m, mv));
        let mw = QuestionType::Motion(Target::Shape(Triangle));
        assert!(score("Upwards.", &m, mw));
        assert!(!score("It is not moving.", &m, mw));
        assert!(score("A voice says three", &m, QuestionType::Sound));
        assert!(score("the number 3", &m, QuestionType::Sound));
        assert!(!score("A high beep", &m, QuestionType::Sound));
        let cap = "A red circle moving left, a static blue square and a white triangle moving \
                   up on a dark background. A voice says the number three.";
        assert!(score(cap, &m, QuestionType::Caption));
        assert!(!score("A red circle.", &m, QuestionType::Caption));
        assert!((caption_recall("A red circle.", &m) - 2.0 / 9.0).abs() < 1e-12);

        let q = meta(vec![(Circle, Green, Motion::Static)], Some(Sound::Silence));
        assert!(score("There is no sound.", &q, QuestionType::Sound));
        assert!(score("Silence", &q, QuestionType::Sound));
        assert!(!score("A low beep.", &q, QuestionType::Sound));
        assert!(score("one", &q, QuestionType::Count));
        assert!(score(
            "It isn't moving",
            &q,
            QuestionType::Motion(Target::Only)
        ));
    }

    #[test]
    fn expected_answers_score_true_and_bad_questions_error() {
        use ColorName::*;
        use ShapeKind::*;
        let sounds = [
            Sound::Silence,
            Sound::LowBeep { freq_hz: 300.0 },
            Sound::HighBeep { freq_hz: 1500.0 },
            Sound::Number { number: 5 },
        ];
        for (i, s) in sounds.into_iter().enumerate() {
            let m = meta(
                vec![
                    (Triangle, Yellow, Motion::Down),
                    (Circle, Green, Motion::Static),
                ],
                Some(s),
            );
            let mut rng = Rng::new(i as u64);
            for _ in 0..20 {
                for q in make_questions(&mut rng, &m) {
                    let a = expected_answer(&m, q).unwrap();
                    assert!(score(&a, &m, q), "{q:?}: {a}");
                    assert!(!question_text(&mut rng, q).is_empty());
                }
            }
        }
        let m = meta(vec![(Circle, Green, Motion::Static)], None);
        assert!(expected_answer(&m, QuestionType::Sound).is_err());
        assert!(expected_answer(&m, QuestionType::Color(Target::Shape(Square))).is_err());
        assert!(expected_answer(&m, QuestionType::Color(Target::Moving)).is_err());
        assert!(!score(
            "green",
            &m,
            QuestionType::Color(Target::Shape(Square))
        ));
        assert_eq!(
            expected_answer(&m, QuestionType::Caption).unwrap(),
            "A static green circle on a dark background."
        );
    }

    #[test]
    fn question_types_serialise_with_their_target() {
        let q = QuestionType::Color(Target::Shape(ShapeKind::Circle));
        let s = serde_json::to_string(&q).unwrap();
        assert_eq!(s, r#"{"type":"color","target":{"shape":"circle"}}"#);
        assert_eq!(serde_json::from_str::<QuestionType>(&s).unwrap(), q);
        assert_eq!(
            serde_json::to_string(&QuestionType::Count).unwrap(),
            r#"{"type":"count"}"#
        );
        assert_eq!(
            serde_json::to_string(&QuestionType::Motion(Target::Only)).unwrap(),
            r#"{"type":"motion","target":"only"}"#
        );
    }
}
