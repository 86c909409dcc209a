//! Memory regression test, alone in its own test binary so that no other test
//! thread allocates while the resident set is measured.

fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Regression test for a leak: `av_read_frame` into a reused packet leaked every
/// packet buffer (about 53 KiB per open of the golden clip, 130 KiB per audio
/// decode). After warm-up, 300 rounds of open + decode + audio must not grow the
/// resident set by more than 4 MiB (the leak grew it by about 60 MiB).
#[test]
fn repeated_decoding_does_not_grow_memory() {
    if !std::path::Path::new("/proc/self/status").exists() {
        eprintln!("no /proc: skipping the memory check");
        return;
    }
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden");
    let video = root.join("videollama2-mistral-tiny/inputs/video.mp4");
    let av = root.join("videollama2.1-av-tiny/inputs/video_av.mp4");
    let round = || {
        let reader = videollama_media::decode::VideoReader::open(&video).unwrap();
        reader.decode(&[7, 22, 37, 52]).unwrap();
        videollama_media::decode::decode_audio_16k_mono(&av).unwrap();
    };
    for _ in 0..20 {
        round();
    }
    let before = resident_kib();
    for _ in 0..300 {
        round();
    }
    let grown = resident_kib().saturating_sub(before);
    assert!(
        grown < 4096,
        "resident memory grew by {grown} KiB over 300 decodes"
    );
}
