//! Subtitles for MiniGPT4-Video: cue files (WebVTT, SRT), subtitle streams inside a
//! container, and the reference's frame ↔ subtitle matching.
//!
//! # Data flow
//!
//! ```text
//! .vtt / .srt file ─decode (BOM → UTF-8/16/32)─▶ lines ─blocks─▶ cues (file order)
//! container subtitle stream (mov_text, subrip, webvtt, ass) ─crate::decode─▶ cues
//! cues + fps + decoded frame count ─match_frames_and_subtitles─▶ per kept frame: Option<"<Cap>" text>
//! ```
//!
//! # What the reference sees
//!
//! `minigpt4_video_inference.py` reads the `.vtt` with `webvtt.read` (webvtt-py; this
//! module follows 0.6.0, the current release; 0.4.6, pinned in `environment.yml`, gives
//! the same cues for well-formed files) and builds, per caption,
//! `(time_to_milliseconds(caption.start), time_to_milliseconds(caption.end),
//! caption.text.strip().replace('\n', ' '))`. Consequences reproduced here:
//!
//! * **Times are truncated floats.** `caption.start` is the string `HH:MM:SS.mmm`, and
//!   `time_to_milliseconds` computes `int((h*3600 + m*60 + s) * 1000)` in binary floating
//!   point, so e.g. `00:00:01.001` becomes 1000 ms (1.001·1000 = 1000.9999…). [`Cue`]
//!   stores these reference values ([`reference_ms`]).
//! * **Cue tags are removed** (`caption.text` strips every `<…>`, per line), then the text
//!   is stripped (Python `str.strip`: Unicode whitespace) and newlines become spaces.
//! * **Cues stay in file order** (the reference's binary search assumes sorted cues but
//!   nothing sorts them), cues with an empty text are kept (the search can land on them
//!   and then finds "no subtitle").
//! * Malformed cue blocks (bad timestamps, minutes or seconds > 59) are silently skipped,
//!   as webvtt-py does outside strict mode; a file whose first line does not start with
//!   `WEBVTT` is an error.
//!
//! SRT is read with webvtt-py's `from_srt` rules (cue index line, `hh:mm:ss,mmm` with a
//! comma or a dot, the milliseconds field read as an integer, blocks that do not start a
//! cue continue the previous cue's text). The reference never reads SRT; an SRT file with
//! the same cues as a `.vtt` gives the same [`Cue`]s.
//!
//! Only ASCII digits are accepted in timestamps (Python's `\d` would also take other
//! Unicode decimal digits).

use std::collections::HashSet;
use std::path::Path;

use crate::error::{MediaError, Result};

/// One subtitle cue as the MiniGPT4-Video reference holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cue {
    /// Start, in milliseconds as the reference's `time_to_milliseconds` computes it
    /// (float arithmetic truncated, see [`reference_ms`]).
    pub start_ms: i64,
    /// End, in milliseconds (same rule). Not checked to be `>= start_ms`.
    pub end_ms: i64,
    /// Cue text with tags removed, newlines replaced by spaces, stripped.
    pub text: String,
}

/// Why a subtitle text could not be parsed (no path; the file readers add it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubtitleError {
    /// The first line does not start with `WEBVTT`.
    #[error("not a WebVTT file: the first line must start with \"WEBVTT\" (found {0:?})")]
    NotWebVtt(String),
    /// The text does not start with an SRT cue (index line, then a timing line).
    #[error(
        "not an SRT file: it must start with a cue number line followed by a \
         \"hh:mm:ss,mmm --> hh:mm:ss,mmm\" line (found {0:?})"
    )]
    NotSrt(String),
    /// The bytes are not valid text in the detected encoding.
    #[error("invalid {encoding} text: {detail}")]
    Encoding {
        encoding: &'static str,
        detail: String,
    },
}

/// Subtitle file formats this module reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubtitleFormat {
    /// WebVTT (`.vtt`).
    WebVtt,
    /// SubRip (`.srt`).
    Srt,
}

impl SubtitleFormat {
    /// From a file extension (case-insensitive): `vtt` / `webvtt`, `srt`.
    pub fn from_extension(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "vtt" | "webvtt" => Some(Self::WebVtt),
            "srt" => Some(Self::Srt),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Reference arithmetic
// ---------------------------------------------------------------------------------------

/// The reference's `time_to_milliseconds(f"{h:02d}:{m:02d}:{s:02d}.{ms:03d}")`:
/// `int((float(h)*3600 + float(m)*60 + float("s.mmm")) * 1000)`, truncated toward zero.
///
/// `float("SS.mmm")` is the correctly rounded value of `(s·1000 + ms) / 1000`, which is
/// exactly what the IEEE division below gives. Roughly every other odd millisecond
/// value comes out one lower than written (e.g. 1001 → 1000).
pub fn reference_ms(hours: u64, minutes: u64, seconds: u64, millis: u64) -> i64 {
    let h = hours as f64;
    let m = minutes as f64;
    let s = (seconds * 1000 + millis) as f64 / 1000.0;
    ((h * 3600.0 + m * 60.0 + s) * 1000.0).trunc() as i64
}

/// [`reference_ms`] for an exact time in milliseconds (split into h/m/s/ms the way
/// webvtt-py's `Timestamp` does before formatting it).
pub fn reference_ms_from_exact(total_ms: u64) -> i64 {
    let (hours, rem) = (total_ms / 3_600_000, total_ms % 3_600_000);
    let (minutes, rem) = (rem / 60_000, rem % 60_000);
    reference_ms(hours, minutes, rem / 1000, rem % 1000)
}

/// Python's `str.isspace` for one character: Unicode White_Space plus the separators
/// U+001C..U+001F (which Rust's `char::is_whitespace` does not include).
pub(crate) fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.strip()` (no argument).
pub(crate) fn py_strip(s: &str) -> &str {
    s.trim_matches(py_isspace)
}

/// webvtt-py's `_strip_cue_text_tags` on one line: removes every `<…>` that has a `>`
/// after its `<`; a `<` without a later `>` and everything after it are kept.
fn strip_cue_tags(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut pos = 0;
    while let Some(rel) = line[pos..].find('<') {
        let start = pos + rel;
        let Some(rel_end) = line[start + 1..].find('>') else {
            break;
        };
        out.push_str(&line[pos..start]);
        pos = start + 1 + rel_end + 1;
    }
    out.push_str(&line[pos..]);
    out
}

/// The reference's cue text from webvtt-py caption lines:
/// `'\n'.join(strip_tags(line) …).strip().replace('\n', ' ')`.
pub fn reference_cue_text<S: AsRef<str>>(lines: &[S]) -> String {
    let joined = lines
        .iter()
        .map(|l| strip_cue_tags(l.as_ref()))
        .collect::<Vec<_>>()
        .join("\n");
    py_strip(&joined).replace('\n', " ")
}

// ---------------------------------------------------------------------------------------
// Text decoding and line splitting
// ---------------------------------------------------------------------------------------

/// Decodes subtitle file bytes as webvtt-py's `FileWrapper` does: a BOM selects UTF-8,
/// UTF-32 LE/BE or UTF-16 LE/BE (checked in that order), otherwise UTF-8; decoding is
/// strict. A leading U+FEFF left after that is dropped (`_get_lines`).
pub fn decode_subtitle_bytes(bytes: &[u8]) -> std::result::Result<String, SubtitleError> {
    const BOMS: [(&[u8], &str); 5] = [
        (&[0xEF, 0xBB, 0xBF], "UTF-8"),
        (&[0xFF, 0xFE, 0x00, 0x00], "UTF-32LE"),
        (&[0x00, 0x00, 0xFE, 0xFF], "UTF-32BE"),
        (&[0xFF, 0xFE], "UTF-16LE"),
        (&[0xFE, 0xFF], "UTF-16BE"),
    ];
    let (enc, body) = BOMS
        .iter()
        .find(|(bom, _)| bytes.starts_with(bom))
        .map(|(bom, enc)| (*enc, &bytes[bom.len()..]))
        .unwrap_or(("UTF-8", bytes));
    let err = |detail: String| SubtitleError::Encoding {
        encoding: enc,
        detail,
    };
    let text = match enc {
        "UTF-8" => std::str::from_utf8(body)
            .map(str::to_owned)
            .map_err(|e| err(e.to_string()))?,
        "UTF-16LE" | "UTF-16BE" => {
            if body.len() % 2 != 0 {
                return Err(err("odd number of bytes".into()));
            }
            let units: Vec<u16> = body
                .chunks_exact(2)
                .map(|c| {
                    if enc == "UTF-16LE" {
                        u16::from_le_bytes([c[0], c[1]])
                    } else {
                        u16::from_be_bytes([c[0], c[1]])
                    }
                })
                .collect();
            String::from_utf16(&units).map_err(|e| err(e.to_string()))?
        }
        _ => {
            if body.len() % 4 != 0 {
                return Err(err("byte count is not a multiple of 4".into()));
            }
            let mut s = String::with_capacity(body.len() / 4);
            for (i, c) in body.chunks_exact(4).enumerate() {
                let b = [c[0], c[1], c[2], c[3]];
                let v = if enc == "UTF-32LE" {
                    u32::from_le_bytes(b)
                } else {
                    u32::from_be_bytes(b)
                };
                let ch = char::from_u32(v)
                    .ok_or_else(|| err(format!("invalid code point {v:#x} at unit {i}")))?;
                s.push(ch);
            }
            s
        }
    };
    Ok(match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_owned(),
        None => text,
    })
}

/// Lines as Python's universal-newline reading and webvtt-py's `_split_lines` give them:
/// split on `\r\n`, `\r` and `\n`; a final line terminator adds no empty line.
fn split_lines(text: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let bytes = text.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\n' => {
                lines.push(&text[start..i]);
                i += 1;
                start = i;
            }
            b'\r' => {
                lines.push(&text[start..i]);
                i += if bytes.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                start = i;
            }
            _ => i += 1,
        }
    }
    if start < text.len() {
        lines.push(&text[start..]);
    }
    lines
}

// ---------------------------------------------------------------------------------------
// Tiny regex-equivalent matchers (ASCII digits, Python `\s`)
// ---------------------------------------------------------------------------------------

fn digit_run(s: &[u8], pos: usize) -> usize {
    s[pos.min(s.len())..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count()
}

/// End positions at which `\d{lo,hi}` starting at `pos` can end, greedy first.
fn digits_ends(s: &[u8], pos: usize, lo: usize, hi: usize) -> impl Iterator<Item = usize> {
    let run = digit_run(s, pos).min(hi);
    (lo..=run).rev().map(move |n| pos + n)
}

fn byte_is(s: &[u8], pos: usize, b: u8) -> bool {
    s.get(pos) == Some(&b)
}

/// `\s*` from `pos` (greedy; the pattern's continuation never starts with whitespace, so
/// the greedy end is the only one that can succeed).
fn skip_py_space(text: &str, pos: usize) -> usize {
    let rest = &text[pos..];
    pos + (rest.len() - rest.trim_start_matches(py_isspace).len())
}

/// All end positions of WebVTT's `(?:\d+:)?\d{1,2}:\d{1,2}\.\d{1,3}` at `pos`, in the
/// order Python's backtracking regex engine tries them.
fn vtt_timestamp_ends(s: &[u8], pos: usize) -> Vec<usize> {
    fn rest(s: &[u8], p: usize, out: &mut Vec<usize>) {
        for a in digits_ends(s, p, 1, 2) {
            if !byte_is(s, a, b':') {
                continue;
            }
            for b in digits_ends(s, a + 1, 1, 2) {
                if !byte_is(s, b, b'.') {
                    continue;
                }
                out.extend(digits_ends(s, b + 1, 1, 3));
            }
        }
    }
    let mut out = Vec::new();
    // With the optional hours group first (greedy `\d+`, then backtracking).
    for h in (pos + 1..=pos + digit_run(s, pos)).rev() {
        if byte_is(s, h, b':') {
            rest(s, h + 1, &mut out);
        }
    }
    rest(s, pos, &mut out);
    out
}

/// `re.match(r'\s*(TS)\s*-->\s*(TS)', line)`: the two timestamp strings and the byte
/// offset where the match ends.
fn match_vtt_timings(line: &str) -> Option<(&str, &str, usize)> {
    let s = line.as_bytes();
    let p0 = skip_py_space(line, 0);
    for e1 in vtt_timestamp_ends(s, p0) {
        let p = skip_py_space(line, e1);
        if !line[p..].starts_with("-->") {
            continue;
        }
        let p2 = skip_py_space(line, p + 3);
        if let Some(&e2) = vtt_timestamp_ends(s, p2).first() {
            return Some((&line[p0..e1], &line[p2..e2], e2));
        }
    }
    None
}

/// webvtt-py's `Timestamp.from_string`: fullmatch
/// `(?:(\d{1,10}):)?(\d{1,2}):(\d{1,2})\.(\d{1,3})`, minutes and seconds ≤ 59, the
/// fraction right-padded to 3 digits. Returns `(h, m, s, ms)`.
fn parse_vtt_timestamp(ts: &str) -> Option<(u64, u64, u64, u64)> {
    let (main, frac) = ts.rsplit_once('.')?;
    if frac.is_empty() || frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let fields: Vec<&str> = main.split(':').collect();
    let (h, m, s) = match fields.as_slice() {
        [m, s] => ("0", *m, *s),
        [h, m, s] => (*h, *m, *s),
        _ => return None,
    };
    let ok = |f: &str, max_len: usize| {
        !f.is_empty() && f.len() <= max_len && f.bytes().all(|b| b.is_ascii_digit())
    };
    if !(ok(h, 10) && ok(m, 2) && ok(s, 2)) {
        return None;
    }
    let (h, m, s): (u64, u64, u64) = (h.parse().ok()?, m.parse().ok()?, s.parse().ok()?);
    let ms: u64 = format!("{frac:0<3}").parse().ok()?;
    if m > 59 || s > 59 {
        return None;
    }
    Some((h, m, s, ms))
}

// ---------------------------------------------------------------------------------------
// WebVTT
// ---------------------------------------------------------------------------------------

/// Parses WebVTT text into the reference's cues (see the module docs).
pub fn parse_webvtt(text: &str) -> std::result::Result<Vec<Cue>, SubtitleError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines = split_lines(text);
    match lines.first() {
        Some(first) if first.starts_with("WEBVTT") => {}
        other => {
            let found: String = other.copied().unwrap_or("").chars().take(40).collect();
            return Err(SubtitleError::NotWebVtt(found));
        }
    }
    let mut cues = Vec::new();
    for block in vtt_blocks(&lines) {
        if let Some(cue) = vtt_cue(&block) {
            cues.push(cue);
        }
    }
    Ok(cues)
}

/// webvtt-py's `_iter_blocks_of_lines` (non-strict): blocks end at empty lines; a line
/// with `-->` starts a new block when it cannot be the current block's timing line.
fn vtt_blocks<'a>(lines: &[&'a str]) -> Vec<Vec<&'a str>> {
    let mut blocks = Vec::new();
    let mut block: Vec<&str> = Vec::new();
    let mut in_header = true;
    for &line in lines {
        let starts_new = !block.is_empty()
            && line.contains("-->")
            && (in_header || block.len() > 1 || block[0].contains("-->"));
        if (line.is_empty() || starts_new) && !block.is_empty() {
            blocks.push(std::mem::take(&mut block));
            in_header = false;
        }
        if !line.is_empty() {
            block.push(line);
        }
    }
    if !block.is_empty() {
        blocks.push(block);
    }
    blocks
}

/// `WebVTTCueBlock.is_valid` + `from_lines` + `Caption(...)`; `None` for blocks that are
/// not cues or whose timestamps webvtt-py rejects.
fn vtt_cue(lines: &[&str]) -> Option<Cue> {
    let is_timing = |l: &str| match_vtt_timings(l).is_some();
    let valid = (!lines.is_empty()
        && is_timing(lines[0])
        && (lines.len() < 2 || !lines[1].contains("-->")))
        || (lines.len() >= 2
            && !lines[0].contains("-->")
            && is_timing(lines[1])
            && (lines.len() < 3 || !lines[2].contains("-->")));
    if !valid {
        return None;
    }
    let mut timing: Option<(&str, &str)> = None;
    let mut payload: Vec<&str> = Vec::new();
    for &line in lines {
        if let Some((s, e, _)) = match_vtt_timings(line) {
            timing = Some((s, e));
        } else if timing.is_some() {
            payload.push(line);
        }
        // Lines before the timing line are the identifier (unused).
    }
    let (start, end) = timing?;
    let (h, m, s, ms) = parse_vtt_timestamp(start)?;
    let start_ms = reference_ms(h, m, s, ms);
    let (h, m, s, ms) = parse_vtt_timestamp(end)?;
    let end_ms = reference_ms(h, m, s, ms);
    Some(Cue {
        start_ms,
        end_ms,
        text: reference_cue_text(&payload),
    })
}

// ---------------------------------------------------------------------------------------
// SRT
// ---------------------------------------------------------------------------------------

fn is_ascii_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// `line.strip().isdigit()`: a cue index line.
fn srt_is_index(line: &str) -> bool {
    is_ascii_digits(py_strip(line))
}

/// `re.match(r'\s*(\d+:\d{1,2}:\d{1,2}[,.]\d+)\s*-->\s*(…)', line)` → the two timestamps.
fn match_srt_timings(line: &str) -> Option<(&str, &str)> {
    let s = line.as_bytes();
    let ts_ends = |pos: usize| -> Vec<usize> {
        let mut out = Vec::new();
        let h = pos + digit_run(s, pos);
        if h == pos || !byte_is(s, h, b':') {
            return out;
        }
        for a in digits_ends(s, h + 1, 1, 2) {
            if !byte_is(s, a, b':') {
                continue;
            }
            for b in digits_ends(s, a + 1, 1, 2) {
                if !(byte_is(s, b, b',') || byte_is(s, b, b'.')) {
                    continue;
                }
                let n = digit_run(s, b + 1);
                if n > 0 {
                    out.push(b + 1 + n);
                }
            }
        }
        out
    };
    let p0 = skip_py_space(line, 0);
    for e1 in ts_ends(p0) {
        let p = skip_py_space(line, e1);
        if !line[p..].starts_with("-->") {
            continue;
        }
        let p2 = skip_py_space(line, p + 3);
        if let Some(&e2) = ts_ends(p2).first() {
            return Some((&line[p0..e1], &line[p2..e2]));
        }
    }
    None
}

/// webvtt-py's `_timing_in_milliseconds`: fields split on `:`, `,`, `.`, read as
/// integers (so `07,5` is 5 ms), carried over; `None` past the largest timestamp
/// (9999999999:59:59.999) or on overflow.
fn srt_timing_ms(ts: &str) -> Option<u64> {
    const MAX_MS: u64 = 10_000_000_000 * 3_600_000 - 1;
    let fields: Vec<&str> = ts.split([':', ',', '.']).collect();
    if fields.len() != 4 || fields.iter().any(|f| f.trim_start_matches('0').len() > 17) {
        return None;
    }
    let v: Vec<u64> = fields
        .iter()
        .map(|f| f.parse::<u64>().ok())
        .collect::<Option<_>>()?;
    let total = v[0]
        .checked_mul(60)?
        .checked_add(v[1])?
        .checked_mul(60)?
        .checked_add(v[2])?
        .checked_mul(1000)?
        .checked_add(v[3])?;
    (total <= MAX_MS).then_some(total)
}

/// Parses SRT text with webvtt-py 0.6.0's `from_srt` rules into the cues the reference
/// would build from them (see the module docs).
pub fn parse_srt(text: &str) -> std::result::Result<Vec<Cue>, SubtitleError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines = split_lines(text);
    // `is_valid_content`: at least 3 lines, the first all digits (not stripped), an arrow
    // in the second.
    if !(lines.len() >= 3 && is_ascii_digits(lines[0]) && lines[1].contains("-->")) {
        let found: String = lines
            .first()
            .copied()
            .unwrap_or("")
            .chars()
            .take(40)
            .collect();
        return Err(SubtitleError::NotSrt(found));
    }
    let is_index_and_timings = |a: &str, b: &str| srt_is_index(a) && b.contains("-->");

    // `utils.iter_blocks_of_lines`: blocks separated by whitespace-only lines.
    let mut raw_blocks: Vec<Vec<&str>> = Vec::new();
    let mut cur: Vec<&str> = Vec::new();
    for &l in &lines {
        if !py_strip(l).is_empty() {
            cur.push(l);
        } else if !cur.is_empty() {
            raw_blocks.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        raw_blocks.push(cur);
    }
    // `_iter_split_blocks`: split a block where an index line is followed by timings.
    let mut split: Vec<Vec<&str>> = Vec::new();
    for b in raw_blocks {
        let mut start = 0;
        for i in 1..b.len().saturating_sub(1) {
            if is_index_and_timings(b[i], b[i + 1]) {
                split.push(b[start..i].to_vec());
                start = i;
            }
        }
        split.push(b[start..].to_vec());
    }
    // `_iter_cue_blocks`: a lone index block is joined with a following timings block.
    let mut blocks: Vec<Vec<&str>> = Vec::new();
    let mut index_block: Option<Vec<&str>> = None;
    for mut b in split {
        if let Some(ib) = index_block.take() {
            if b[0].contains("-->") {
                let mut joined = ib;
                joined.append(&mut b);
                b = joined;
            } else {
                blocks.push(ib);
            }
        }
        if b.len() == 1 && srt_is_index(b[0]) {
            index_block = Some(b);
        } else {
            blocks.push(b);
        }
    }
    if let Some(ib) = index_block {
        blocks.push(ib);
    }
    // `parse_captions`.
    struct Raw<'a> {
        start: u64,
        end: u64,
        lines: Vec<&'a str>,
    }
    let mut caps: Vec<Raw> = Vec::new();
    let mut open = false;
    for b in blocks {
        let cue_start = b[0].contains("-->") || (b.len() > 1 && is_index_and_timings(b[0], b[1]));
        if cue_start {
            open = false;
            if b.len() >= 2 && srt_is_index(b[0]) {
                if let Some((s, e)) = match_srt_timings(b[1]) {
                    if let (Some(start), Some(end)) = (srt_timing_ms(s), srt_timing_ms(e)) {
                        caps.push(Raw {
                            start,
                            end,
                            lines: b[2..].to_vec(),
                        });
                        open = true;
                    }
                }
            }
        } else if open {
            if let Some(last) = caps.last_mut() {
                last.lines.extend_from_slice(&b);
            }
        }
    }
    Ok(caps
        .into_iter()
        .filter(|c| !c.lines.is_empty())
        .map(|c| Cue {
            start_ms: reference_ms_from_exact(c.start),
            end_ms: reference_ms_from_exact(c.end),
            text: reference_cue_text(&c.lines),
        })
        .collect())
}

// ---------------------------------------------------------------------------------------
// Files and containers
// ---------------------------------------------------------------------------------------

fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|source| MediaError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode_subtitle_bytes(&bytes).map_err(|e| MediaError::Decode {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Reads a WebVTT file (`webvtt.read(path)` + the reference's `extract_subtitles`).
pub fn read_webvtt_file(path: impl AsRef<Path>) -> Result<Vec<Cue>> {
    let path = path.as_ref();
    parse_webvtt(&read_text(path)?).map_err(|e| MediaError::Decode {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Reads an SRT file (webvtt-py's `from_srt` rules).
pub fn read_srt_file(path: impl AsRef<Path>) -> Result<Vec<Cue>> {
    let path = path.as_ref();
    parse_srt(&read_text(path)?).map_err(|e| MediaError::Decode {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Reads a subtitle file: by extension (`.vtt`, `.srt`), else by content (a first line
/// starting with `WEBVTT` is WebVTT, anything else is tried as SRT).
pub fn read_subtitle_file(path: impl AsRef<Path>) -> Result<Vec<Cue>> {
    let path = path.as_ref();
    let text = read_text(path)?;
    let format = SubtitleFormat::from_extension(path).unwrap_or_else(|| {
        if text.starts_with("WEBVTT") {
            SubtitleFormat::WebVtt
        } else {
            SubtitleFormat::Srt
        }
    });
    let parsed = match format {
        SubtitleFormat::WebVtt => parse_webvtt(&text),
        SubtitleFormat::Srt => parse_srt(&text),
    };
    parsed.map_err(|e| MediaError::Decode {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Cues of the first text subtitle stream of a media file (mov_text, subrip, webvtt,
/// ass, …), or `None` when it has none; see [`crate::decode::read_subtitle_stream`].
pub fn read_container_subtitles(path: impl AsRef<Path>) -> Result<Option<Vec<Cue>>> {
    Ok(crate::decode::read_subtitle_stream(path)?)
}

// ---------------------------------------------------------------------------------------
// Frame ↔ subtitle matching
// ---------------------------------------------------------------------------------------

/// The reference's `find_subtitle(subtitles, frame_count, fps)` time:
/// `(frame_count / fps) * 1000` in f64.
pub fn frame_time_ms(frame: usize, fps: f64) -> f64 {
    (frame as f64 / fps) * 1000.0
}

/// The reference's `find_subtitle`: binary search over the cues **in the given order**
/// (`mid = (left + right) // 2`), returning the index of the first probed cue with
/// `start ≤ t ≤ end` (inclusive both ends). With touching cues (`a.end == b.start`) a
/// time on the boundary returns whichever of them the search probes first.
pub fn find_cue(cues: &[Cue], frame_time_ms: f64) -> Option<usize> {
    let (mut left, mut right) = (0i64, cues.len() as i64 - 1);
    while left <= right {
        let mid = (left + right) / 2;
        let cue = &cues[mid as usize];
        // int vs float comparisons are exact in Python; the i64 → f64 conversion is exact
        // below 2^53 ms (285 000 years).
        if cue.start_ms as f64 <= frame_time_ms && frame_time_ms <= cue.end_ms as f64 {
            return Some(mid as usize);
        } else if frame_time_ms < cue.start_ms as f64 {
            right = mid - 1;
        } else {
            left = mid + 1;
        }
    }
    None
}

/// Inputs of [`match_frames_and_subtitles`] besides the cues.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MatchParams {
    /// The video frame rate as moviepy reports it (frame time = `n / fps · 1000` ms).
    pub fps: f64,
    /// Keep decoded frame `n` iff `n % sampling_interval == 0` (≥ 1).
    pub sampling_interval: usize,
    /// Stop after this many kept frames (≥ 1).
    pub max_frames: usize,
    /// Word budget: a caption is only emitted while the running count is below it.
    pub max_sub_len: usize,
}

/// What [`match_frames_and_subtitles`] returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubtitleSchedule {
    /// Decoded frame indices that were kept, in order.
    pub kept_frames: Vec<usize>,
    /// Per kept frame: the text written after its `<Img><ImageHere>` as `<Cap>{text}`
    /// (each cue's text plus a space, concatenated), or `None`.
    pub captions: Vec<Option<String>>,
    /// Per processed decoded frame: the cue the search found (`None` when there are no
    /// cues at all, as the reference then skips the search).
    pub cue_at_frame: Vec<Option<usize>>,
    /// The reference's final `number_of_words`.
    pub word_count: usize,
}

/// The subtitle part of the reference's `match_frames_and_subtitles`, for a video of which
/// `decoded_frames` frames are read (the reference reads until the stream ends or
/// `max_frames` frames are kept).
///
/// For every processed frame `n`: the cue at `n / fps · 1000` ms ([`find_cue`]); a
/// non-empty text not seen before is appended to a pending buffer as `text + " "`. When
/// `n` is kept and the buffer is non-empty and the word count `< max_sub_len`, the buffer
/// becomes that frame's caption, the word count grows by `len(buffer.split(' '))` (one
/// more than the words, because of the trailing space) and the buffer is cleared.
pub fn match_frames_and_subtitles(
    cues: &[Cue],
    decoded_frames: usize,
    p: &MatchParams,
) -> Result<SubtitleSchedule> {
    if p.sampling_interval == 0 || p.max_frames == 0 {
        return Err(MediaError::Config(format!(
            "sampling_interval ({}) and max_frames ({}) must be at least 1",
            p.sampling_interval, p.max_frames
        )));
    }
    let fps_ok = p.fps.is_finite() && p.fps > 0.0;
    if !cues.is_empty() && !fps_ok {
        return Err(MediaError::Config(format!(
            "frame rate {} is not a positive number; cannot time frames against subtitles",
            p.fps
        )));
    }
    let mut out = SubtitleSchedule {
        kept_frames: Vec::new(),
        captions: Vec::new(),
        cue_at_frame: Vec::new(),
        word_count: 0,
    };
    let mut pending = String::new();
    let mut seen: HashSet<&str> = HashSet::new();
    for n in 0..decoded_frames {
        if !cues.is_empty() {
            let found = find_cue(cues, frame_time_ms(n, p.fps));
            out.cue_at_frame.push(found);
            if let Some(i) = found {
                let text = cues[i].text.as_str();
                if !text.is_empty() && seen.insert(text) {
                    pending.push_str(text);
                    pending.push(' ');
                }
            }
        } else {
            out.cue_at_frame.push(None);
        }
        if n.is_multiple_of(p.sampling_interval) {
            out.kept_frames.push(n);
            if !pending.is_empty() && out.word_count < p.max_sub_len {
                out.word_count += pending.split(' ').count();
                out.captions.push(Some(std::mem::take(&mut pending)));
            } else {
                out.captions.push(None);
            }
        }
        if out.kept_frames.len() >= p.max_frames {
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_ms_truncates_like_python() {
        // int((0*3600 + 0*60 + 1.001) * 1000) == 1000 in Python.
        assert_eq!(reference_ms(0, 0, 1, 1), 1000);
        assert_eq!(reference_ms(0, 0, 1, 200), 1200);
        assert_eq!(reference_ms(0, 0, 2, 500), 2500);
        assert_eq!(reference_ms(1, 2, 3, 4), 3_723_004);
        assert_eq!(reference_ms_from_exact(1001), 1000);
        assert_eq!(reference_ms_from_exact(3_723_004), 3_723_004);
    }

    #[test]
    fn tag_stripping_matches_webvtt_py() {
        assert_eq!(strip_cue_tags("<v Bob>hi <b>there</b>"), "hi there");
        assert_eq!(strip_cue_tags("a < b"), "a < b");
        assert_eq!(strip_cue_tags("a <i>b</i> < c"), "a b < c");
        assert_eq!(strip_cue_tags("<00:00:01.000>x"), "x");
        assert_eq!(reference_cue_text(&["  one", "two  "]), "one two");
        assert_eq!(reference_cue_text(&["\u{1f}x\u{a0}"]), "x");
    }

    #[test]
    fn timing_regex_equivalents() {
        assert_eq!(
            match_vtt_timings("00:01.000 --> 00:02.500 align:start").map(|m| (m.0, m.1)),
            Some(("00:01.000", "00:02.500"))
        );
        assert!(match_vtt_timings("00:00:01,000 --> 00:00:02,000").is_none());
        assert!(match_vtt_timings("00:00:01.0000 --> 00:00:02.000").is_none());
        assert_eq!(parse_vtt_timestamp("1:2:3.4"), Some((1, 2, 3, 400)));
        assert_eq!(parse_vtt_timestamp("00:60:00.000"), None);
        assert_eq!(
            match_srt_timings("00:00:01,5 --> 00:00:02.250 X1:0"),
            Some(("00:00:01,5", "00:00:02.250"))
        );
        assert_eq!(srt_timing_ms("00:00:07,1500"), Some(8500));
        assert_eq!(srt_timing_ms("00:00:01,5"), Some(1005));
    }

    #[test]
    fn lines_split_on_all_terminators() {
        assert_eq!(split_lines("a\r\nb\rc\nd\n"), vec!["a", "b", "c", "d"]);
        assert_eq!(split_lines("a\n\n"), vec!["a", ""]);
        assert_eq!(split_lines(""), Vec::<&str>::new());
    }
}
