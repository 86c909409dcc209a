//! WebVTT output (W3C WebVTT: `WEBVTT` header, cues `hh:mm:ss.ttt --> hh:mm:ss.ttt`).

use crate::Segment;

/// `hh:mm:ss.ttt` (hours may exceed 99; negative and non-finite times become 0).
pub fn vtt_timestamp(seconds: f64) -> String {
    let ms = if seconds.is_finite() && seconds > 0.0 {
        (seconds * 1000.0).round() as u64
    } else {
        0
    };
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

/// Escapes cue text: `&`, `<`, `>` (this also rules out a `-->` inside a cue); line
/// breaks inside a segment become spaces (a blank line would end the cue).
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// A WebVTT document with one cue per segment. Segments whose text is blank are left
/// out; a cue whose end is not after its start is given 10 ms (WebVTT requires
/// `end > start`).
pub fn to_webvtt(segments: &[Segment]) -> String {
    let mut out = String::from("WEBVTT\n");
    for s in segments {
        let text = escape(s.text.trim());
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let start = s.start_s.max(0.0);
        let mut end = s.end_s;
        // Also catches a NaN end.
        if end.partial_cmp(&start) != Some(std::cmp::Ordering::Greater) {
            end = start + 0.01;
        }
        out.push('\n');
        out.push_str(&format!(
            "{} --> {}\n{}\n",
            vtt_timestamp(start),
            vtt_timestamp(end),
            text
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(a: f64, b: f64, t: &str) -> Segment {
        Segment {
            start_s: a,
            end_s: b,
            text: t.into(),
        }
    }

    #[test]
    fn webvtt_document() {
        let vtt = to_webvtt(&[
            seg(0.0, 2.5, " Hello world."),
            seg(2.5, 2.5, "  "),
            seg(3661.004, 3661.004, "a <b> & c"),
        ]);
        assert_eq!(
            vtt,
            "WEBVTT\n\n00:00:00.000 --> 00:00:02.500\nHello world.\n\n\
             01:01:01.004 --> 01:01:01.014\na &lt;b&gt; &amp; c\n"
        );
        assert_eq!(to_webvtt(&[]), "WEBVTT\n");
        assert_eq!(vtt_timestamp(-1.0), "00:00:00.000");
        assert_eq!(vtt_timestamp(f64::NAN), "00:00:00.000");
        assert_eq!(vtt_timestamp(360000.0), "100:00:00.000");
    }
}
