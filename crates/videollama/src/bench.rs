//! `videollama bench-media`: how long decode + sample + preprocess take for one
//! video, against the `ffmpeg` CLI extracting the same frames in the same run.
//!
//! Two baselines, both writing raw RGB24 to a pipe (no image encoding):
//! * `select`: one `ffmpeg` process with a `select` filter on the frame numbers —
//!   it decodes every frame up to the last one we need;
//! * `seek`: one `ffmpeg -ss T -i FILE -frames:v 1` per frame (input seeking).
//!
//! Figures are medians over `--repeat` runs; ratios < 1 mean we are faster.

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;
use videollama_media::decode::VideoReader;
use videollama_media::image_processor::ImageProcessorConfig;
use videollama_media::sampling;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

fn run_ffmpeg(args: &[&str]) -> Result<usize> {
    let out = Command::new("ffmpeg")
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .context("running ffmpeg (is the ffmpeg CLI installed? scripts/setup.sh installs it)")?;
    if !out.status.success() {
        bail!("ffmpeg failed: {:?}", args);
    }
    Ok(out.stdout.len())
}

pub fn bench_media(video: &Path, frames: usize, processor: &str, repeat: usize) -> Result<()> {
    let processor = match processor {
        "clip" => ImageProcessorConfig::clip_vit_large_patch14_336(),
        "siglip" => ImageProcessorConfig::siglip_so400m_patch14_384(),
        other => bail!("unknown processor {other:?} (clip or siglip)"),
    };
    let repeat = repeat.max(1);
    let mut ours = Vec::new();
    let mut decode_only = Vec::new();
    let mut indices = Vec::new();
    let mut info = None;
    for _ in 0..repeat {
        let start = Instant::now();
        let reader = VideoReader::open(video)?;
        let i = reader.info().clone();
        indices = sampling::sample_frame_indices(i.frame_count, i.avg_fps, frames, None, None)?;
        let decoded = reader.decode(&indices)?;
        let decode_s = start.elapsed().as_secs_f64();
        let px = processor.preprocess_batch(&decoded)?;
        ours.push(start.elapsed().as_secs_f64());
        decode_only.push(decode_s);
        assert_eq!(px.frames, frames);
        info = Some(i);
    }
    let info = info.expect("at least one run");
    let file = video.to_string_lossy().to_string();
    let select = indices
        .iter()
        .map(|i| format!("eq(n\\,{i})"))
        .collect::<Vec<_>>()
        .join("+");
    let select_filter = format!("select='{select}'");
    let select_args = [
        "-v",
        "error",
        "-nostdin",
        "-threads",
        "0",
        "-i",
        &file,
        "-vf",
        &select_filter,
        "-vsync",
        "0",
        "-pix_fmt",
        "rgb24",
        "-f",
        "rawvideo",
        "-",
    ];
    let mut ff_select = Vec::new();
    let mut ff_seek = Vec::new();
    for _ in 0..repeat {
        let start = Instant::now();
        let bytes = run_ffmpeg(&select_args)?;
        ff_select.push(start.elapsed().as_secs_f64());
        let expected = indices
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            * (info.width * info.height * 3) as usize;
        if bytes != expected {
            eprintln!("note: ffmpeg select produced {bytes} bytes, expected {expected}");
        }
        let start = Instant::now();
        for &i in &indices {
            let t = format!("{:.6}", i as f64 / info.avg_fps);
            let args = [
                "-v",
                "error",
                "-nostdin",
                "-ss",
                &t,
                "-i",
                &file,
                "-frames:v",
                "1",
                "-pix_fmt",
                "rgb24",
                "-f",
                "rawvideo",
                "-",
            ];
            run_ffmpeg(&args)?;
        }
        ff_seek.push(start.elapsed().as_secs_f64());
    }
    let (ours, decode_only, ff_select, ff_seek) = (
        median(ours),
        median(decode_only),
        median(ff_select),
        median(ff_seek),
    );
    println!(
        "video            {} ({}x{}, {} frames, {:.2} fps, {:.1} s, {})",
        video.display(),
        info.width,
        info.height,
        info.frame_count,
        info.avg_fps,
        info.duration_s,
        info.codec
    );
    println!("frames           {frames} at {indices:?}");
    println!(
        "videollama       {:.3} s  (decode {:.3} s + preprocess {:.3} s), median of {repeat}",
        ours,
        decode_only,
        ours - decode_only
    );
    println!(
        "ffmpeg select    {:.3} s  → ratio videollama/ffmpeg {:.2}",
        ff_select,
        ours / ff_select
    );
    println!(
        "ffmpeg -ss ×{}   {:.3} s  → ratio videollama/ffmpeg {:.2}",
        indices.len(),
        ff_seek,
        ours / ff_seek
    );
    Ok(())
}
