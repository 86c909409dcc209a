//! Frame index selection (spec §3.2), exactly as VideoLLaMA 2's `process_video` /
//! `frame_sample` compute it.
//!
//! 1. Optional clip bounds in seconds narrow the candidate range
//!    ([`candidate_range`]): when *both* are given, negatives clamp to 0, `s > e`
//!    swaps them and `s == e` sets `e = s + 1`; then
//!    `f_start = max(trunc(s·fps) − 1, 0)` and `f_end = min(trunc(e·fps) − 1, N − 1)`.
//! 2. Uniform sampling of `T` positions out of the `D` candidates
//!    ([`uniform_positions`]): `seg = (D − 1) / T`, `mid = (seg·i + seg·(i+1)) / 2`,
//!    `round_half_to_even(mid + 1e-6)` — the same f64 operations in the same order.
//! 3. The reference then pads short frame lists with black frames and keeps at most
//!    [`MAX_FRAMES`] frames ([`cap_to_max_frames`], [`black_padding_frame`]).
//!
//! The unused "fps" mode is available as [`fps_positions`].

use crate::error::{MediaError, Result};
use crate::frame::RgbImage;

/// The reference truncates every frame list to this many frames (`MAX_FRAMES`).
pub const MAX_FRAMES: usize = 32;

/// Inclusive range `[f_start, f_end]` of candidate frame indices for a video of
/// `total_frames` frames at `fps`, with optional clip bounds `start` / `end` in
/// seconds (spec §3.2). The clamp/swap rules only apply when both bounds are given,
/// as in the reference. Errors when the range is empty (the reference would fail
/// with an `IndexError`).
pub fn candidate_range(
    total_frames: usize,
    fps: f64,
    start: Option<f64>,
    end: Option<f64>,
) -> Result<(usize, usize)> {
    if total_frames == 0 {
        return Err(MediaError::InvalidImage("video has no frames".into()));
    }
    let (mut s, mut e) = (start, end);
    if let (Some(mut a), Some(mut b)) = (s, e) {
        if a < 0.0 {
            a = 0.0;
        }
        if b < 0.0 {
            b = 0.0;
        }
        if a > b {
            std::mem::swap(&mut a, &mut b);
        } else if a == b {
            b = a + 1.0;
        }
        s = Some(a);
        e = Some(b);
    }
    let last = total_frames as i64 - 1;
    // Python `int(x)` truncates toward zero; `as i64` does too (and saturates).
    let f_start = match s {
        None => 0,
        Some(a) => ((a * fps).trunc() as i64 - 1).max(0),
    };
    let f_end = match e {
        None => last,
        Some(b) => ((b * fps).trunc() as i64 - 1).min(last),
    };
    if f_end < f_start {
        return Err(MediaError::InvalidImage(format!(
            "clip bounds select no frames (start {start:?} s, end {end:?} s, {total_frames} frames at {fps} fps)"
        )));
    }
    Ok((f_start as usize, f_end as usize))
}

/// Uniform sampling of `num_frames` positions in `0..num_candidates` (spec §3.2,
/// `frame_sample(mode='uniform')`). Short inputs yield repeated positions; the result
/// always has exactly `num_frames` entries. `num_candidates` must be at least 1.
pub fn uniform_positions(num_candidates: usize, num_frames: usize) -> Vec<usize> {
    assert!(
        num_candidates >= 1,
        "uniform_positions needs at least one candidate"
    );
    let seg = (num_candidates - 1) as f64 / num_frames as f64;
    (0..num_frames)
        .map(|i| {
            let a = seg * i as f64;
            let b = seg * (i + 1) as f64;
            let mid = (a + b) / 2.0;
            let r = (mid + 1e-6).round_ties_even();
            // `mid` lies in [0, D-1] so the rounded value is a valid position.
            (r as usize).min(num_candidates - 1)
        })
        .collect()
}

/// The unused "fps" sampling mode: `seg = min(floor(fps), D)`, positions
/// `seg/2, seg/2 + seg, … < D`. Errors when `fps < 1` (the reference divides by zero).
pub fn fps_positions(num_candidates: usize, fps: f64) -> Result<Vec<usize>> {
    let fl = fps.floor();
    if fl.is_nan() || fl < 1.0 {
        return Err(MediaError::InvalidImage(format!(
            "fps-mode sampling needs fps >= 1, got {fps}"
        )));
    }
    let seg = if fl >= num_candidates as f64 {
        num_candidates
    } else {
        fl as usize
    };
    if seg == 0 {
        return Ok(Vec::new());
    }
    Ok((seg / 2..num_candidates).step_by(seg).collect())
}

/// Absolute frame indices the reference decodes for a video with `total_frames`
/// frames at `fps`, sampling `num_frames` uniformly inside the optional clip bounds.
/// The result is *not* capped at [`MAX_FRAMES`] (the reference caps the decoded list
/// afterwards; see [`cap_to_max_frames`]).
pub fn sample_frame_indices(
    total_frames: usize,
    fps: f64,
    num_frames: usize,
    start: Option<f64>,
    end: Option<f64>,
) -> Result<Vec<usize>> {
    let (f_start, f_end) = candidate_range(total_frames, fps, start, end)?;
    let d = f_end - f_start + 1;
    Ok(uniform_positions(d, num_frames)
        .into_iter()
        .map(|p| f_start + p)
        .collect())
}

/// Like [`sample_frame_indices`] but with the "fps" mode (`num_frames = None` in the reference).
pub fn sample_frame_indices_fps(
    total_frames: usize,
    fps: f64,
    start: Option<f64>,
    end: Option<f64>,
) -> Result<Vec<usize>> {
    let (f_start, f_end) = candidate_range(total_frames, fps, start, end)?;
    let d = f_end - f_start + 1;
    Ok(fps_positions(d, fps)?
        .into_iter()
        .map(|p| f_start + p)
        .collect())
}

/// Video-LLaMA's "uniform" frame indices (`load_video(sampling="uniform")`):
/// `np.arange(0, vlen, vlen / n).astype(int)` with `n = min(num_frames, vlen)`, i.e.
/// `trunc(i · step)` for `step = vlen / n` (f64) and `i < ceil(vlen / step)` (numpy's
/// length rule, evaluated in f64). For 300 frames and n = 8: `[0, 37, 75, …, 262]`.
///
/// The numpy length rule can yield `n + 1` indices when `vlen / step` rounds above `n`
/// (e.g. vlen 15, n 13 → 14 indices); they are returned as the reference would decode
/// them. When the extra index reaches `vlen` (e.g. vlen 17, n 7 → last index 17) decord
/// fails with an out-of-bound error; so does this function. `num_frames` that is a power
/// of two (8, the demo's value) never hits either case. Also errors on `vlen = 0` or
/// `num_frames = 0` (a division by zero in the reference).
pub fn arange_truncated_indices(total_frames: usize, num_frames: usize) -> Result<Vec<usize>> {
    if total_frames == 0 {
        return Err(MediaError::InvalidImage("video has no frames".into()));
    }
    if num_frames == 0 {
        return Err(MediaError::InvalidImage(
            "cannot sample 0 frames (the reference divides by zero)".into(),
        ));
    }
    let n = num_frames.min(total_frames);
    let vlen = total_frames as f64;
    let step = vlen / n as f64;
    // numpy: length = ceil((stop - start) / step); values start + i·(step) with start = 0.
    let len = (vlen / step).ceil() as usize;
    let indices: Vec<usize> = (0..len).map(|i| (i as f64 * step) as usize).collect();
    if let Some(&bad) = indices.iter().find(|&&i| i >= total_frames) {
        return Err(MediaError::InvalidImage(format!(
            "uniform sampling of {num_frames} frames from {total_frames} gives index {bad}, \
             out of range (numpy arange rounding; the reference fails here too)"
        )));
    }
    Ok(indices)
}

/// Keeps at most [`MAX_FRAMES`] items (the reference's final `video_data[:MAX_FRAMES]`).
pub fn cap_to_max_frames<T>(frames: &mut Vec<T>) {
    frames.truncate(MAX_FRAMES);
}

/// The black frame the reference appends while a frame list is shorter than
/// `num_frames` (only gif and list inputs). It reproduces the reference's
/// width/height swap (`np.zeros((*img.size, 3))` with `size = (W, H)`), which does
/// not change the processed pixels (all zero either way).
pub fn black_padding_frame(last: &RgbImage) -> RgbImage {
    RgbImage::black(last.height, last.width)
}

/// Reference post-processing of a decoded frame list: append black frames while
/// fewer than `num_frames` (see [`black_padding_frame`]), then keep at most
/// [`MAX_FRAMES`]. Errors on an empty list (the reference fails there too).
pub fn pad_and_cap_frames(frames: &mut Vec<RgbImage>, num_frames: usize) -> Result<()> {
    let Some(last) = frames.last() else {
        return Err(MediaError::InvalidImage("no frames decoded".into()));
    };
    let black = black_padding_frame(last);
    while frames.len() < num_frames {
        frames.push(black.clone());
    }
    cap_to_max_frames(frames);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_examples() {
        assert_eq!(
            uniform_positions(300, 16),
            vec![9, 28, 47, 65, 84, 103, 121, 140, 159, 178, 196, 215, 234, 252, 271, 290]
        );
        assert_eq!(
            uniform_positions(300, 8),
            vec![19, 56, 93, 131, 168, 206, 243, 280]
        );
        assert_eq!(
            uniform_positions(5, 16),
            vec![0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4]
        );
        assert_eq!(uniform_positions(1, 16), vec![0; 16]);
        assert_eq!(uniform_positions(1, 4), vec![0; 4]);
    }

    #[test]
    fn golden_fixture_video() {
        // 60 frames at 25 fps, T = 4 (all three fixtures' case.json).
        assert_eq!(
            sample_frame_indices(60, 25.0, 4, None, None).unwrap(),
            vec![7, 22, 37, 52]
        );
    }

    #[test]
    fn half_to_even_matters() {
        // D=3, T=4: seg = 0.5, mids 0.25, 0.75, 1.25, 1.75 -> [0, 1, 1, 2].
        assert_eq!(uniform_positions(3, 4), vec![0, 1, 1, 2]);
        // D=2, T=2: seg=0.5, mids 0.25, 0.75 -> [0,1]
        assert_eq!(uniform_positions(2, 2), vec![0, 1]);
        // D=5, T=2: seg = 2, mids 1, 3 -> exact integers.
        assert_eq!(uniform_positions(5, 2), vec![1, 3]);
        // D=6, T=2: seg=2.5, mids 1.25, 3.75 -> [1, 4]
        assert_eq!(uniform_positions(6, 2), vec![1, 4]);
        // D=4, T=1: mid = 1.5 (+1e-6) -> 2 (the epsilon breaks the tie upward).
        assert_eq!(uniform_positions(4, 1), vec![2]);
        // D=6, T=1: mid = 2.5 (+1e-6) -> 3.
        assert_eq!(uniform_positions(6, 1), vec![3]);
    }

    #[test]
    fn clip_bounds() {
        // s=1 s, e=2 s at 25 fps: f_start = 24, f_end = 49.
        assert_eq!(
            candidate_range(60, 25.0, Some(1.0), Some(2.0)).unwrap(),
            (24, 49)
        );
        // swapped and negative bounds
        assert_eq!(
            candidate_range(60, 25.0, Some(2.0), Some(-1.0)).unwrap(),
            (0, 49)
        );
        // equal bounds -> e = s + 1
        assert_eq!(
            candidate_range(100, 10.0, Some(3.0), Some(3.0)).unwrap(),
            (29, 39)
        );
        // end beyond the video is clamped
        assert_eq!(
            candidate_range(60, 25.0, Some(0.0), Some(100.0)).unwrap(),
            (0, 59)
        );
        // only one bound: no clamping rules, but max(.., 0) still applies
        assert_eq!(
            candidate_range(60, 25.0, Some(-3.0), None).unwrap(),
            (0, 59)
        );
        // trunc, not round: 0.99 s * 25 = 24.75 -> 24 - 1 = 23
        assert_eq!(
            candidate_range(60, 25.0, Some(0.99), None).unwrap(),
            (23, 59)
        );
        // empty range is an error, not a panic
        assert!(candidate_range(60, 25.0, None, Some(0.01)).is_err());
        assert!(candidate_range(0, 25.0, None, None).is_err());
        assert_eq!(
            sample_frame_indices(60, 25.0, 4, Some(1.0), Some(2.0)).unwrap(),
            vec![27, 33, 40, 46]
        );
    }

    #[test]
    fn arange_truncated_spec_vectors() {
        // Spec Appendix A (Video-LLaMA, 300 frames, n = 8) and the golden clip (60 frames).
        assert_eq!(
            arange_truncated_indices(300, 8).unwrap(),
            vec![0, 37, 75, 112, 150, 187, 225, 262]
        );
        assert_eq!(
            arange_truncated_indices(60, 8).unwrap(),
            vec![0, 7, 15, 22, 30, 37, 45, 52]
        );
        // Fewer frames than requested: every frame once.
        assert_eq!(arange_truncated_indices(5, 8).unwrap(), vec![0, 1, 2, 3, 4]);
        assert_eq!(arange_truncated_indices(1, 8).unwrap(), vec![0]);
        // numpy's length rule: 15 / (15 / 13) rounds above 13 -> 14 indices (as numpy 1.26).
        assert_eq!(
            arange_truncated_indices(15, 13).unwrap(),
            vec![0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14]
        );
        // ... and 17 / (17 / 7) gives an 8th index equal to vlen: decord fails, so do we.
        assert!(arange_truncated_indices(17, 7).is_err());
        assert!(arange_truncated_indices(0, 8).is_err());
        assert!(arange_truncated_indices(10, 0).is_err());
    }

    #[test]
    fn fps_mode() {
        assert_eq!(fps_positions(10, 3.0).unwrap(), vec![1, 4, 7]);
        assert_eq!(fps_positions(60, 25.0).unwrap(), vec![12, 37]);
        assert_eq!(fps_positions(2, 25.0).unwrap(), vec![1]);
        assert_eq!(fps_positions(60, 29.97).unwrap(), vec![14, 43]);
        assert!(fps_positions(10, 0.5).is_err());
    }

    #[test]
    fn padding_and_cap() {
        let mut frames = vec![RgbImage::black(4, 2)];
        pad_and_cap_frames(&mut frames, 3).unwrap();
        assert_eq!(frames.len(), 3);
        assert_eq!((frames[1].width, frames[1].height), (2, 4));
        let mut many: Vec<u32> = (0..40).collect();
        cap_to_max_frames(&mut many);
        assert_eq!(many.len(), MAX_FRAMES);
        assert!(pad_and_cap_frames(&mut Vec::new(), 3).is_err());
    }
}
