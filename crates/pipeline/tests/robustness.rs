//! Smoke/fuzz test of every media entry point of the pipeline: random bytes and
//! truncated copies of real files must give an error (or, for a truncation that
//! still decodes, a result) — never a panic or a hang.

use std::time::{Duration, Instant};
use videollama_pipeline::media::MediaRequest;
use videollama_pipeline::{LoadOptions, Pipeline};
use videollama_testutil::golden;

/// Small deterministic generator (xorshift) so failures are reproducible.
fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn random_and_truncated_media_never_panic() {
    let pipeline = Pipeline::load(
        &golden("videollama2.1-av-tiny/checkpoint"),
        &LoadOptions::default(),
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (i, ext) in ["mp4", "png", "wav", "gif", "jpg", "webm", "mp3"]
        .iter()
        .enumerate()
    {
        for (j, len) in [0usize, 1, 17, 512, 8192].iter().enumerate() {
            let path = tmp.path().join(format!("random{i}_{j}.{ext}"));
            std::fs::write(&path, random_bytes((i * 10 + j) as u64, *len)).unwrap();
            files.push(path);
        }
    }
    for input in [
        "videollama2.1-av-tiny/inputs/video_av.mp4",
        "videollama2.1-av-tiny/inputs/audio.wav",
        "videollama2-mistral-tiny/inputs/image.png",
    ] {
        let bytes = std::fs::read(golden(input)).unwrap();
        let name = input.rsplit('/').next().unwrap();
        for frac in [2usize, 5, 10, 50] {
            let path = tmp.path().join(format!("cut{frac}_{name}"));
            std::fs::write(&path, &bytes[..bytes.len() * frac / 100]).unwrap();
            files.push(path);
        }
    }
    let start = Instant::now();
    let mut errors = 0;
    for path in &files {
        for req in [
            MediaRequest {
                video: Some(path.clone()),
                ..Default::default()
            },
            MediaRequest {
                image: Some(path.clone()),
                ..Default::default()
            },
            MediaRequest {
                audio: Some(path.clone()),
                ..Default::default()
            },
        ] {
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                pipeline.prepare_media(&req)
            })) {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    errors += 1;
                    let msg = e.to_string();
                    let name = path.file_name().unwrap().to_string_lossy();
                    assert!(msg.contains(&*name), "error does not name the file: {msg}");
                }
                Err(_) => panic!("prepare_media panicked on {}", path.display()),
            }
        }
    }
    assert!(
        errors > files.len(),
        "random bytes should mostly be refused ({errors} errors)"
    );
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "took {:?}",
        start.elapsed()
    );
}
