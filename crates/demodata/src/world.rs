//! The synthetic world: what a clip contains (its ground truth, [`ClipMeta`]), how a scene is
//! drawn from a seed ([`sample_scene`]) and how a frame is rasterised ([`render_frame`]).
//!
//! ```text
//! seed ─Rng::derive(split seed, clip index)─▶ sample_scene: frame size, background,
//!      1–3 objects (distinct shapes, distinct colours, each static or moving at constant
//!      speed along one axis, never overlapping, always fully in frame), sound
//!   ─▶ ClipMeta ─render_frame(meta, i)─▶ RgbImage (HWC u8) ─▶ encode (H.264)
//! ```
//!
//! Everything a question can ask about is a field of [`ClipMeta`], and every pixel of a
//! frame is a function of it, so answers are derivable from the metadata alone and a
//! renderer elsewhere (or a test) can redraw any frame exactly.

use serde::{Deserialize, Serialize};
use videollama_media::RgbImage;

use crate::error::{DemoDataError, Result};
use crate::rng::Rng;

/// The three shape kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShapeKind {
    Circle,
    Square,
    Triangle,
}

impl ShapeKind {
    /// All kinds, in a fixed order.
    pub const ALL: [ShapeKind; 3] = [ShapeKind::Circle, ShapeKind::Square, ShapeKind::Triangle];

    /// The English noun (`"circle"`).
    pub fn word(self) -> &'static str {
        match self {
            ShapeKind::Circle => "circle",
            ShapeKind::Square => "square",
            ShapeKind::Triangle => "triangle",
        }
    }

    /// Whether the point `(dx, dy)` (pixels from the shape's centre) lies inside a shape of
    /// extent `size` (its bounding box is `size × size`, centred).
    pub fn contains(self, dx: f64, dy: f64, size: f64) -> bool {
        let h = size / 2.0;
        match self {
            ShapeKind::Circle => dx * dx + dy * dy <= h * h,
            ShapeKind::Square => dx.abs() <= h && dy.abs() <= h,
            // Apex at the top centre, base along the bottom edge of the box.
            ShapeKind::Triangle => dy >= -h && dy <= h && dx.abs() <= (dy + h) * 0.5,
        }
    }
}

/// The five object colours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColorName {
    Red,
    Green,
    Blue,
    Yellow,
    White,
}

impl ColorName {
    /// All colours, in a fixed order.
    pub const ALL: [ColorName; 5] = [
        ColorName::Red,
        ColorName::Green,
        ColorName::Blue,
        ColorName::Yellow,
        ColorName::White,
    ];

    /// The English word (`"red"`).
    pub fn word(self) -> &'static str {
        match self {
            ColorName::Red => "red",
            ColorName::Green => "green",
            ColorName::Blue => "blue",
            ColorName::Yellow => "yellow",
            ColorName::White => "white",
        }
    }

    /// The sRGB value the renderer paints.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            ColorName::Red => [220, 40, 40],
            ColorName::Green => [40, 190, 60],
            ColorName::Blue => [40, 80, 230],
            ColorName::Yellow => [240, 210, 40],
            ColorName::White => [240, 240, 240],
        }
    }
}

/// The two backgrounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Background {
    Dark,
    Grey,
}

impl Background {
    /// Both backgrounds.
    pub const ALL: [Background; 2] = [Background::Dark, Background::Grey];

    /// The English word (`"dark"`, `"grey"`).
    pub fn word(self) -> &'static str {
        match self {
            Background::Dark => "dark",
            Background::Grey => "grey",
        }
    }

    /// The sRGB value the renderer paints.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Background::Dark => [20, 20, 28],
            Background::Grey => [110, 110, 110],
        }
    }
}

/// How an object moves: not at all, or at constant speed along one image axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Motion {
    Static,
    Left,
    Right,
    Up,
    Down,
}

impl Motion {
    /// All motions, in a fixed order.
    pub const ALL: [Motion; 5] = [
        Motion::Static,
        Motion::Left,
        Motion::Right,
        Motion::Up,
        Motion::Down,
    ];

    /// The English direction word (`"left"`, …; `"static"` for no motion).
    pub fn word(self) -> &'static str {
        match self {
            Motion::Static => "static",
            Motion::Left => "left",
            Motion::Right => "right",
            Motion::Up => "up",
            Motion::Down => "down",
        }
    }

    /// Unit direction in image coordinates (x right, y down).
    pub fn unit(self) -> [f64; 2] {
        match self {
            Motion::Static => [0.0, 0.0],
            Motion::Left => [-1.0, 0.0],
            Motion::Right => [1.0, 0.0],
            Motion::Up => [0.0, -1.0],
            Motion::Down => [0.0, 1.0],
        }
    }

    /// Whether the object moves.
    pub fn is_moving(self) -> bool {
        self != Motion::Static
    }
}

/// A clip's sound track.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Sound {
    /// Digital silence.
    Silence,
    /// Repeated sine beeps near 300 Hz.
    LowBeep { freq_hz: f64 },
    /// Repeated sine beeps near 1500 Hz.
    HighBeep { freq_hz: f64 },
    /// `espeak-ng` saying a number (1–5), repeated.
    Number { number: u8 },
}

/// Nominal frequency of the low beep (Hz); each clip jitters it by up to ±5 %.
pub const LOW_BEEP_HZ: f64 = 300.0;
/// Nominal frequency of the high beep (Hz); each clip jitters it by up to ±5 %.
pub const HIGH_BEEP_HZ: f64 = 1500.0;

/// English words of the numbers 0–10 (index = value).
pub const NUMBER_WORDS: [&str; 11] = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
];

/// One object of a clip. Its centre at time `t` seconds is `start + velocity · t`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectMeta {
    pub shape: ShapeKind,
    pub color: ColorName,
    pub motion: Motion,
    /// Side of the shape's bounding box, pixels.
    pub size_px: f64,
    /// Centre `[x, y]` at frame 0, pixels (x right, y down; pixel `(i, j)` covers
    /// `[i, i+1) × [j, j+1)`).
    pub start: [f64; 2],
    /// Velocity `[vx, vy]`, pixels per second (zero for static objects).
    pub velocity: [f64; 2],
}

impl ObjectMeta {
    /// Centre at frame `index` of a clip at `fps`.
    pub fn center_at(&self, index: usize, fps: u32) -> [f64; 2] {
        let t = index as f64 / f64::from(fps.max(1));
        [
            self.start[0] + self.velocity[0] * t,
            self.start[1] + self.velocity[1] * t,
        ]
    }

    /// Bounding box `[x0, y0, x1, y1]` (pixels, continuous coordinates) at frame `index`.
    pub fn bbox_at(&self, index: usize, fps: u32) -> [f64; 4] {
        let [cx, cy] = self.center_at(index, fps);
        let h = self.size_px / 2.0;
        [cx - h, cy - h, cx + h, cy + h]
    }
}

/// One question/answer pair of a clip, as written to the split JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QaMeta {
    /// The conversation's `id` in the split JSON.
    pub id: String,
    pub question_type: crate::qa::QuestionType,
    /// The question as asked (without the `<video>\n` prefix).
    pub question: String,
    /// The reference answer, `expected_answer(meta, question_type)`.
    pub answer: String,
}

/// Ground truth of one clip (one line of `meta.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipMeta {
    /// `"{split}-{index:05}"`.
    pub id: String,
    pub split: String,
    /// Path of the MP4, relative to the dataset folder (`clips/{id}.mp4`).
    pub video: String,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// Number of video frames.
    pub frames: usize,
    /// `frames / fps`.
    pub duration_s: f64,
    pub background: Background,
    /// Drawn in this order (later objects on top; they never overlap).
    pub objects: Vec<ObjectMeta>,
    /// `None` when the clip has no audio stream (`with_audio = false`).
    pub sound: Option<Sound>,
    /// Audio sample rate of the sound track (0 without one).
    pub sample_rate: u32,
    /// The reference caption, `expected_answer(meta, QuestionType::Caption)`.
    pub caption: String,
    pub qa: Vec<QaMeta>,
}

impl ClipMeta {
    /// Objects that move.
    pub fn moving(&self) -> impl Iterator<Item = &ObjectMeta> {
        self.objects.iter().filter(|o| o.motion.is_moving())
    }
}

/// Where and how large things may be drawn. Each range list is a union of inclusive
/// ranges, sampled uniformly over its total length, so a test layout can use sizes on both
/// sides of the training ranges.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Layout {
    /// Frame width ranges, pixels (rounded down to even: H.264 4:2:0 needs even sides).
    pub width: Vec<(u32, u32)>,
    /// Frame height ranges, pixels (rounded down to even).
    pub height: Vec<(u32, u32)>,
    /// Shape extent as a fraction of `min(width, height)`.
    pub shape_size: Vec<(f64, f64)>,
    /// Where a centre may lie, as a fraction of the free room on an axis (0 = touching the
    /// left/top edge, 1 = touching the right/bottom edge). Applies to both coordinates of a
    /// static object and to the cross-axis coordinate of a moving one; along its motion an
    /// object travels 35–90 % of the free room wherever that leads.
    pub position: Vec<(f64, f64)>,
}

impl Layout {
    /// The training distribution: frames 224–640 px a side, shapes 15–30 % of the shorter
    /// side, centres in the middle 70 % of the free room.
    pub fn training() -> Self {
        Self {
            width: vec![(224, 640)],
            height: vec![(224, 640)],
            shape_size: vec![(0.15, 0.30)],
            position: vec![(0.15, 0.85)],
        }
    }

    /// A generalisation check disjoint from [`Layout::training`] in frame size, shape size
    /// and position: frames 160–222 or 642–800 px a side, shapes 9–14 % or 31–36 % of the
    /// shorter side, centres in the outer 12 % of the free room (near the edges).
    pub fn out_of_distribution() -> Self {
        Self {
            width: vec![(160, 222), (642, 800)],
            height: vec![(160, 222), (642, 800)],
            shape_size: vec![(0.09, 0.14), (0.31, 0.36)],
            position: vec![(0.0, 0.12), (0.88, 1.0)],
        }
    }

    /// Checks that every range is non-empty and in bounds.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(DemoDataError::Config(m));
        for (name, r) in [("width", &self.width), ("height", &self.height)] {
            if r.is_empty() {
                return bad(format!("layout.{name} has no range"));
            }
            for &(lo, hi) in r {
                if lo > hi || lo < 32 || hi > 4096 {
                    return bad(format!(
                        "layout.{name} range ({lo}, {hi}) must satisfy 32 <= lo <= hi <= 4096"
                    ));
                }
            }
        }
        for (name, r, max) in [
            ("shape_size", &self.shape_size, 0.45),
            ("position", &self.position, 1.0),
        ] {
            if r.is_empty() {
                return bad(format!("layout.{name} has no range"));
            }
            for &(lo, hi) in r {
                let ok = lo.is_finite() && hi.is_finite() && 0.0 <= lo && lo <= hi && hi <= max;
                if !ok || (name == "shape_size" && lo <= 0.02) {
                    return bad(format!(
                        "layout.{name} range ({lo}, {hi}) must lie in (0.02, {max}] (or [0, 1] \
                         for positions) with lo <= hi"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// What a scene needs from the generator's configuration.
#[derive(Debug, Clone)]
pub(crate) struct SceneParams<'a> {
    pub layout: &'a Layout,
    pub fps: u32,
    pub duration_s: (f64, f64),
    pub objects: (usize, usize),
    pub with_audio: bool,
    pub sample_rate: u32,
}

fn pick_u32(rng: &mut Rng, ranges: &[(u32, u32)]) -> u32 {
    let total: u64 = ranges.iter().map(|&(a, b)| u64::from(b - a) + 1).sum();
    let mut k = (rng.unit() * total as f64) as u64;
    for &(a, b) in ranges {
        let n = u64::from(b - a) + 1;
        if k < n {
            return a + k as u32;
        }
        k -= n;
    }
    ranges.last().map_or(0, |r| r.1)
}

fn pick_f64(rng: &mut Rng, ranges: &[(f64, f64)]) -> f64 {
    let total: f64 = ranges.iter().map(|&(a, b)| b - a).sum();
    if total <= 0.0 {
        return ranges.first().map_or(0.0, |r| r.0);
    }
    let mut k = rng.unit() * total;
    for &(a, b) in ranges {
        if k < b - a {
            return a + k;
        }
        k -= b - a;
    }
    ranges.last().map_or(0.0, |r| r.1)
}

/// Minimum gap kept between the boxes of two objects at every frame, pixels.
fn min_gap(width: u32, height: u32) -> f64 {
    4.0 + 0.03 * f64::from(width.min(height))
}

/// Attempts at placing `n` objects before trying with one fewer.
const PLACEMENT_TRIES: usize = 400;

/// Draws one clip's scene (everything but captions and questions).
pub(crate) fn sample_scene(
    rng: &mut Rng,
    id: String,
    split: &str,
    p: &SceneParams<'_>,
) -> ClipMeta {
    let width = (pick_u32(rng, &p.layout.width) & !1).max(32);
    let height = (pick_u32(rng, &p.layout.height) & !1).max(32);
    let fps = p.fps;
    let dur = rng.range_f64(p.duration_s.0, p.duration_s.1);
    let frames = ((dur * f64::from(fps)).round() as usize).max(2);
    let background = *rng.choose(&Background::ALL).unwrap_or(&Background::Dark);
    let n_max = p.objects.0 + rng.below(p.objects.1 - p.objects.0 + 1);

    let mut shapes = ShapeKind::ALL;
    rng.shuffle(&mut shapes);
    let mut colors = ColorName::ALL;
    rng.shuffle(&mut colors);

    let min_side = f64::from(width.min(height));
    let span_t = (frames - 1) as f64 / f64::from(fps);
    let gap = min_gap(width, height);
    let mut objects = Vec::new();
    'count: for n in (1..=n_max.clamp(1, 3)).rev() {
        for _ in 0..PLACEMENT_TRIES {
            objects.clear();
            for k in 0..n {
                let size = (pick_f64(rng, &p.layout.shape_size) * min_side)
                    .round()
                    .max(6.0);
                let motion = *rng.choose(&Motion::ALL).unwrap_or(&Motion::Static);
                let room = [f64::from(width) - size, f64::from(height) - size];
                let mut start = [0.0; 2];
                let mut velocity = [0.0; 2];
                for axis in 0..2 {
                    let dir = motion.unit()[axis];
                    if dir == 0.0 {
                        let f = pick_f64(rng, &p.layout.position);
                        start[axis] = size / 2.0 + f * room[axis];
                    } else {
                        // Travel 35–90 % of the free room, starting where it stays in frame.
                        let travel = rng.range_f64(0.35, 0.9) * room[axis];
                        let from = rng.range_f64(0.0, room[axis] - travel);
                        let (a, b) = if dir > 0.0 {
                            (from, from + travel)
                        } else {
                            (from + travel, from)
                        };
                        start[axis] = size / 2.0 + a;
                        velocity[axis] = (b - a) / span_t;
                    }
                }
                objects.push(ObjectMeta {
                    shape: shapes[k],
                    color: colors[k],
                    motion,
                    size_px: size,
                    start,
                    velocity,
                });
            }
            if no_overlap(&objects, frames, fps, gap) {
                break 'count;
            }
        }
        objects.clear();
    }
    if objects.is_empty() {
        // Unreachable for a validated layout (one object always fits); keep one static
        // object in the middle rather than fail.
        let size = (0.2 * min_side).round();
        objects.push(ObjectMeta {
            shape: shapes[0],
            color: colors[0],
            motion: Motion::Static,
            size_px: size,
            start: [f64::from(width) / 2.0, f64::from(height) / 2.0],
            velocity: [0.0, 0.0],
        });
    }

    let sound = p.with_audio.then(|| match rng.below(4) {
        0 => Sound::Silence,
        1 => Sound::LowBeep {
            freq_hz: (LOW_BEEP_HZ * rng.range_f64(0.95, 1.05)).round(),
        },
        2 => Sound::HighBeep {
            freq_hz: (HIGH_BEEP_HZ * rng.range_f64(0.95, 1.05)).round(),
        },
        _ => Sound::Number {
            number: 1 + rng.below(5) as u8,
        },
    });

    ClipMeta {
        video: format!("clips/{id}.mp4"),
        id,
        split: split.to_string(),
        width,
        height,
        fps,
        frames,
        duration_s: frames as f64 / f64::from(fps),
        background,
        objects,
        sound,
        sample_rate: if p.with_audio { p.sample_rate } else { 0 },
        caption: String::new(),
        qa: Vec::new(),
    }
}

/// True when no two objects' boxes (grown by `gap`) meet at any frame, and every object
/// stays inside the frame.
fn no_overlap(objects: &[ObjectMeta], frames: usize, fps: u32, gap: f64) -> bool {
    for i in 0..frames {
        let boxes: Vec<[f64; 4]> = objects.iter().map(|o| o.bbox_at(i, fps)).collect();
        for a in 0..boxes.len() {
            for b in a + 1..boxes.len() {
                let (p, q) = (boxes[a], boxes[b]);
                let apart = p[2] + gap <= q[0]
                    || q[2] + gap <= p[0]
                    || p[3] + gap <= q[1]
                    || q[3] + gap <= p[1];
                if !apart {
                    return false;
                }
            }
        }
    }
    true
}

/// Rasterises frame `index` of a clip: background, then each object filled where the pixel
/// centre lies inside it (no anti-aliasing: a pure function of the metadata).
pub fn render_frame(meta: &ClipMeta, index: usize) -> RgbImage {
    let mut img = RgbImage::filled(meta.width, meta.height, meta.background.rgb());
    render_into(meta, index, &mut img.data);
    img
}

/// [`render_frame`] into an existing `height × width × 3` buffer (every byte is written).
pub(crate) fn render_into(meta: &ClipMeta, index: usize, rgb: &mut [u8]) {
    let (w, h) = (meta.width as usize, meta.height as usize);
    let bg = meta.background.rgb();
    for px in rgb.chunks_exact_mut(3) {
        px.copy_from_slice(&bg);
    }
    for o in &meta.objects {
        let [cx, cy] = o.center_at(index, meta.fps);
        let [x0, y0, x1, y1] = o.bbox_at(index, meta.fps);
        let xa = (x0.floor().max(0.0) as usize).min(w);
        let xb = (x1.ceil().max(0.0) as usize).min(w);
        let ya = (y0.floor().max(0.0) as usize).min(h);
        let yb = (y1.ceil().max(0.0) as usize).min(h);
        let c = o.color.rgb();
        for y in ya..yb {
            let dy = y as f64 + 0.5 - cy;
            let row = &mut rgb[y * w * 3..(y + 1) * w * 3];
            for x in xa..xb {
                let dx = x as f64 + 0.5 - cx;
                if o.shape.contains(dx, dy, o.size_px) {
                    row[x * 3..x * 3 + 3].copy_from_slice(&c);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenes_respect_the_layout_and_never_overlap() {
        let layouts = [Layout::training(), Layout::out_of_distribution()];
        for (li, layout) in layouts.iter().enumerate() {
            let p = SceneParams {
                layout,
                fps: 25,
                duration_s: (2.0, 6.0),
                objects: (1, 3),
                with_audio: true,
                sample_rate: 16000,
            };
            for i in 0..200 {
                let mut rng = Rng::derive(li as u64, i);
                let m = sample_scene(&mut rng, format!("x-{i}"), "x", &p);
                assert!(m.width & 1 == 0 && m.height & 1 == 0);
                assert!(layout
                    .width
                    .iter()
                    .any(|&(a, b)| (a & !1..=b).contains(&m.width)));
                assert!((50..=150).contains(&m.frames));
                assert!(!m.objects.is_empty() && m.objects.len() <= 3);
                assert!(no_overlap(&m.objects, m.frames, 25, 0.0));
                for o in &m.objects {
                    for f in [0, m.frames - 1] {
                        let b = o.bbox_at(f, 25);
                        assert!(b[0] >= -1e-9 && b[1] >= -1e-9, "{b:?}");
                        assert!(b[2] <= m.width as f64 + 1e-9 && b[3] <= m.height as f64 + 1e-9);
                    }
                }
            }
        }
    }

    #[test]
    fn triangle_points_up() {
        let s = 10.0;
        assert!(ShapeKind::Triangle.contains(0.0, -4.9, s));
        assert!(!ShapeKind::Triangle.contains(3.0, -4.0, s));
        assert!(ShapeKind::Triangle.contains(4.9, 4.9, s));
    }
}
