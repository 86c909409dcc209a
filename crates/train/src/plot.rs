//! The loss curve as a PNG, drawn by hand (axes, grid, raw loss, running mean and a few
//! numbers in a built-in 3×5 digit font), so no plotting crate or font is built.
//!
//! ```text
//! 2.31 ┤·.                      raw loss per step: light blue
//!      │ ·..__                  running mean (window ≈ steps/20): dark blue
//!      │      ‾‾‾---___
//! 0.42 ┤               ‾‾‾---   y range: min … max loss; x: step 1 … last (number at right)
//!      └──────────────────────┬ 120
//! ```

use crate::error::{Result, TrainError};
use std::path::Path;

const W: usize = 640;
const H: usize = 400;
const LEFT: usize = 60;
const RIGHT: usize = 20;
const TOP: usize = 20;
const BOTTOM: usize = 40;

struct Canvas {
    px: Vec<u8>,
}

impl Canvas {
    fn new() -> Self {
        Self {
            px: vec![255; W * H * 3],
        }
    }
    fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < W && (y as usize) < H {
            let i = (y as usize * W + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }
    fn line(&mut self, (x0, y0): (f64, f64), (x1, y1): (f64, f64), c: [u8; 3], thick: bool) {
        let n = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).max(1);
        for i in 0..=n {
            let t = i as f64 / n as f64;
            let (x, y) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
            let (x, y) = (x.round() as i64, y.round() as i64);
            self.set(x, y, c);
            if thick {
                self.set(x, y + 1, c);
                self.set(x + 1, y, c);
            }
        }
    }
    /// Text of digits, '.', '-', 'e' at (x, y) top-left, scale 2.
    fn text(&mut self, x: usize, y: usize, s: &str, c: [u8; 3]) {
        for (k, ch) in s.chars().enumerate() {
            let Some(rows) = glyph(ch) else { continue };
            for (r, bits) in rows.iter().enumerate() {
                for col in 0..3 {
                    if bits & (4 >> col) != 0 {
                        for dy in 0..2 {
                            for dx in 0..2 {
                                self.set(
                                    (x + k * 8 + col * 2 + dx) as i64,
                                    (y + r * 2 + dy) as i64,
                                    c,
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

/// 3×5 glyphs, one row per entry, bit 2 = left column.
fn glyph(c: char) -> Option<[u8; 5]> {
    Some(match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        'e' => [0, 7, 7, 4, 7],
        _ => return None,
    })
}

fn number(v: f64) -> String {
    if v != 0.0 && (v.abs() >= 1e4 || v.abs() < 1e-2) {
        format!("{v:.2e}")
    } else {
        format!("{v:.3}")
    }
}

/// Draw `losses` (one per optimizer step, step 1 first) into `path`.
pub fn write_loss_curve(losses: &[f64], path: &Path) -> Result<()> {
    let mut c = Canvas::new();
    let (x0, x1) = (LEFT as f64, (W - RIGHT) as f64);
    let (y0, y1) = (TOP as f64, (H - BOTTOM) as f64);
    let finite: Vec<f64> = losses.iter().copied().filter(|v| v.is_finite()).collect();
    let (lo, hi) = finite
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let (lo, hi) = if finite.is_empty() {
        (0.0, 1.0)
    } else if hi - lo < 1e-12 {
        (lo - 0.5, hi + 0.5)
    } else {
        (lo, hi)
    };
    let grey = [220, 220, 220];
    for i in 0..=4 {
        let y = y0 + (y1 - y0) * i as f64 / 4.0;
        c.line((x0, y), (x1, y), grey, false);
    }
    let black = [0, 0, 0];
    c.line((x0, y0), (x0, y1), black, false);
    c.line((x0, y1), (x1, y1), black, false);
    c.text(4, TOP, &number(hi), black);
    c.text(4, H - BOTTOM - 10, &number(lo), black);
    c.text(
        W - RIGHT - 8 * 6,
        H - BOTTOM + 12,
        &losses.len().to_string(),
        black,
    );
    c.text(LEFT, H - BOTTOM + 12, "1", black);
    let n = losses.len();
    let at = |i: usize, v: f64| {
        let x = if n > 1 {
            x0 + (x1 - x0) * i as f64 / (n - 1) as f64
        } else {
            (x0 + x1) / 2.0
        };
        (x, y1 - (y1 - y0) * (v - lo) / (hi - lo))
    };
    let raw = [150, 190, 240];
    let mean = [20, 60, 170];
    let window = (n / 20).max(1);
    let mut smooth = Vec::with_capacity(n);
    for i in 0..n {
        let from = i.saturating_sub(window - 1);
        let part: Vec<f64> = losses[from..=i]
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .collect();
        smooth.push(if part.is_empty() {
            f64::NAN
        } else {
            part.iter().sum::<f64>() / part.len() as f64
        });
    }
    for (series, color, thick) in [(losses, raw, false), (&smooth[..], mean, true)] {
        for i in 0..n {
            let v = series[i];
            if !v.is_finite() {
                continue;
            }
            let p = at(i, v);
            if i > 0 && series[i - 1].is_finite() {
                c.line(at(i - 1, series[i - 1]), p, color, thick);
            } else {
                c.line(p, p, color, thick);
            }
        }
    }
    let file = std::fs::File::create(path).map_err(|e| TrainError::file(path, e))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), W as u32, H as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().map_err(|e| TrainError::file(path, e))?;
    writer
        .write_image_data(&c.px)
        .map_err(|e| TrainError::file(path, e))?;
    writer.finish().map_err(|e| TrainError::file(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_png_with_the_curve() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loss.png");
        let losses: Vec<f64> = (0..50)
            .map(|i| 3.0 * (-(i as f64) / 10.0).exp() + 0.1)
            .collect();
        write_loss_curve(&losses, &path).unwrap();
        let decoder =
            png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (W as u32, H as u32));
        // The curve starts top-left and ends bottom-right: dark-blue pixels there.
        let dark = |x: usize, y: usize| {
            let i = (y * W + x) * 3;
            buf[i] < 60 && buf[i + 2] > 120
        };
        assert!((TOP..TOP + 6).any(|y| (LEFT..LEFT + 4).any(|x| dark(x, y))));
        assert!(
            (H - BOTTOM - 6..=H - BOTTOM).any(|y| (W - RIGHT - 4..=W - RIGHT).any(|x| dark(x, y)))
        );
        write_loss_curve(&[], &path).unwrap();
        write_loss_curve(&[1.0, f64::NAN], &path).unwrap();
    }
}
