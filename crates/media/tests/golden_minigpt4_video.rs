//! MiniGPT4-Video preprocessing against the `minigpt4-video-tiny` (Llama-2, 45 frames /
//! 400 words) and `minigpt4-video-mistral-tiny` (Mistral, 90 / 800) golden fixtures
//! (`tests/golden/README.md`, "Pre-processing facts"), plus subtitle unit tests.
//!
//! Golden comparisons, per fixture:
//! * `case.json`: `fps_moviepy`, `sampling_interval`, `sampled_frame_indices`, the cue
//!   list, `subtitle_per_sampled_frame`, `cue_seen_at_decoded_frame`, `instruction`,
//!   `prompt` (both video cases, and the image prompt).
//! * `video_subtitles/decoded_frames:frames_rgb_uint8` — OpenCV's frames (BGR flipped to
//!   RGB), byte for byte.
//! * `{video_subtitles,video_no_subtitles,image}/expected:pixel_values` — the ViT inputs,
//!   bit for bit (and under the golden tolerance).
//!
//! Tests that build media with the `ffmpeg` CLI print a message and return when it is
//! not installed.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use videollama_media::minigpt4_video::{
    frame_string, image_prompt, kept_frame_indices, load_image, load_video, prepare_input,
    sampling_interval, total_frames, video_sampling, MiniGpt4VideoMediaConfig,
};
use videollama_media::subtitles::{
    find_cue, match_frames_and_subtitles, parse_srt, parse_webvtt, read_container_subtitles,
    read_srt_file, read_subtitle_file, read_webvtt_file, Cue, MatchParams,
};
use videollama_media::MediaError;
use videollama_testutil::{assert_close, case_json, golden, load_tensors};

const FIXTURES: [&str; 2] = ["minigpt4-video-tiny", "minigpt4-video-mistral-tiny"];

fn input(fixture: &str, name: &str) -> PathBuf {
    golden(&format!("{fixture}/inputs/{name}"))
}

fn tensor(fixture: &str, case: &str, file: &str, name: &str) -> Tensor {
    load_tensors(&format!("{fixture}/{case}/{file}.safetensors"))
        .remove(name)
        .unwrap_or_else(|| panic!("{fixture}/{case}/{file}: no tensor {name}"))
}

fn usizes(v: &serde_json::Value) -> Vec<usize> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("integer") as usize)
        .collect()
}

/// The fixture's limits, from its case.json (45/400 or 90/800), 56-px frames (the
/// expected pixel_values' side).
fn config(fixture: &str) -> MiniGpt4VideoMediaConfig {
    let case = case_json(fixture, "video_subtitles");
    let side = tensor(fixture, "image", "expected", "pixel_values").dims()[3];
    let base = if fixture.contains("mistral") {
        MiniGpt4VideoMediaConfig::mistral()
    } else {
        MiniGpt4VideoMediaConfig::llama2()
    };
    let cfg = MiniGpt4VideoMediaConfig {
        image_size: side as u32,
        max_frames: case["max_frames"].as_u64().unwrap() as usize,
        max_sub_len: case["max_sub_len"].as_u64().unwrap() as usize,
        ..base
    };
    // The script's checkpoint-name rule gives the same limits.
    assert_eq!(cfg.max_frames, base.max_frames, "{fixture}");
    assert_eq!(cfg.max_sub_len, base.max_sub_len, "{fixture}");
    cfg
}

/// Pixels must be bit-identical to the reference (and pass the golden tolerance).
fn check_pixels(stage: &str, got: &[f32], shape: [usize; 4], want: &Tensor) {
    let got_t = Tensor::from_vec(got.to_vec(), &shape[..], &Device::Cpu).unwrap();
    let report = assert_close(stage, &got_t, want);
    let want_v: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
    let differing = got
        .iter()
        .zip(&want_v)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    eprintln!(
        "{stage}: {differing} of {} values not bit-identical (max|diff| {:e})",
        got.len(),
        report.max_abs
    );
    assert_eq!(differing, 0, "{stage}: not bit-exact");
}

#[test]
fn sampling_matches_moviepy_and_the_reference_loop() {
    for fixture in FIXTURES {
        let cfg = config(fixture);
        let case = case_json(fixture, "video_subtitles");
        let s = video_sampling(input(fixture, "video.mp4"), cfg.max_frames).unwrap();
        assert_eq!(
            s.fps,
            case["fps_moviepy"].as_f64().unwrap(),
            "{fixture} fps"
        );
        assert_eq!(
            s.sampling_interval as u64,
            case["sampling_interval"].as_u64().unwrap(),
            "{fixture} interval"
        );
        let want = usizes(&case["sampled_frame_indices"]);
        let frames = load_video(input(fixture, "video.mp4"), &cfg).unwrap();
        assert_eq!(frames.indices, want, "{fixture} indices");
        assert_eq!(frames.num_frames, want.len());
        // The reference stops reading right after the last kept frame (Llama: frame 89
        // is never read) or at the end of the file.
        let seen = case["cue_seen_at_decoded_frame"].as_array().unwrap().len();
        assert_eq!(frames.frames_read, seen, "{fixture} frames read");
        assert_eq!(frames.stop_reason, None);
        eprintln!(
            "{fixture}: duration {} s, fps {}, total {}, interval {}, {} frames kept of {} read",
            s.duration_s,
            s.fps,
            s.total_frames,
            s.sampling_interval,
            frames.num_frames,
            frames.frames_read
        );
    }
}

#[test]
fn decoded_frames_are_opencv_exact() {
    for fixture in FIXTURES {
        let cfg = MiniGpt4VideoMediaConfig {
            keep_decoded_frames: true,
            ..config(fixture)
        };
        let frames = load_video(input(fixture, "video.mp4"), &cfg).unwrap();
        let want = tensor(
            fixture,
            "video_subtitles",
            "decoded_frames",
            "frames_rgb_uint8",
        );
        assert_eq!(want.dtype(), DType::U8);
        let dims = want.dims().to_vec();
        let decoded = frames.decoded.as_ref().unwrap();
        assert_eq!(decoded.len(), dims[0], "{fixture}");
        for f in decoded {
            assert_eq!((f.height as usize, f.width as usize), (dims[1], dims[2]));
        }
        let want: Vec<u8> = want.flatten_all().unwrap().to_vec1().unwrap();
        let got: Vec<u8> = decoded
            .iter()
            .flat_map(|f| f.data.iter().copied())
            .collect();
        assert_eq!(got.len(), want.len());
        let differing = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        let max_diff = got
            .iter()
            .zip(&want)
            .map(|(&a, &b)| (a as i16 - b as i16).unsigned_abs())
            .max()
            .unwrap();
        eprintln!(
            "{fixture} decoded frames: {differing} of {} bytes differ, max |diff| = {max_diff}",
            got.len()
        );
        assert_eq!(max_diff, 0, "{fixture}: frames differ from OpenCV's");
    }
}

#[test]
fn video_pixel_values_are_bit_exact() {
    for fixture in FIXTURES {
        let cfg = config(fixture);
        let frames = load_video(input(fixture, "video.mp4"), &cfg).unwrap();
        for case in ["video_subtitles", "video_no_subtitles"] {
            let want = tensor(fixture, case, "expected", "pixel_values");
            assert_eq!(want.dims(), &frames.shape()[..], "{fixture}/{case}");
            check_pixels(
                &format!("{fixture}/{case} pixel_values"),
                &frames.pixels,
                frames.shape(),
                &want,
            );
        }
    }
}

#[test]
fn image_pixel_values_and_prompt() {
    for fixture in FIXTURES {
        let cfg = config(fixture);
        let px = load_image(input(fixture, "image.png"), &cfg).unwrap();
        let s = cfg.image_size as usize;
        let want = tensor(fixture, "image", "expected", "pixel_values");
        check_pixels(
            &format!("{fixture}/image pixel_values"),
            &px,
            [1, 3, s, s],
            &want,
        );
        let case = case_json(fixture, "image");
        assert_eq!(
            image_prompt(case["question"].as_str().unwrap()),
            case["prompt"].as_str().unwrap()
        );
    }
}

/// Cues from the fixture's `.vtt` as `case.json` lists them.
fn fixture_cues(fixture: &str) -> Vec<Cue> {
    let cues = read_webvtt_file(input(fixture, "video.vtt")).unwrap();
    let case = case_json(fixture, "video_subtitles");
    let want: Vec<Cue> = case["subtitle_cues_ms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Cue {
            start_ms: c[0].as_i64().unwrap(),
            end_ms: c[1].as_i64().unwrap(),
            text: c[2].as_str().unwrap().to_string(),
        })
        .collect();
    assert_eq!(cues, want, "{fixture}: cues");
    cues
}

#[test]
fn subtitles_per_frame_instruction_and_prompt() {
    for fixture in FIXTURES {
        let cfg = config(fixture);
        let frames = load_video(input(fixture, "video.mp4"), &cfg).unwrap();
        for case_name in ["video_subtitles", "video_no_subtitles"] {
            let case = case_json(fixture, case_name);
            let cues = if case_name == "video_subtitles" {
                fixture_cues(fixture)
            } else {
                assert!(case["subtitle_cues_ms"].as_array().unwrap().is_empty());
                Vec::new()
            };
            let sched = match_frames_and_subtitles(
                &cues,
                frames.frames_read,
                &frames.match_params(cfg.max_sub_len),
            )
            .unwrap();
            assert_eq!(sched.kept_frames, frames.indices, "{fixture}/{case_name}");
            // `<Cap>` text per sampled frame.
            let per_frame = case["subtitle_per_sampled_frame"].as_array().unwrap();
            assert_eq!(per_frame.len(), sched.captions.len());
            for (k, entry) in per_frame.iter().enumerate() {
                assert_eq!(
                    entry["frame_index"].as_u64().unwrap() as usize,
                    sched.kept_frames[k]
                );
                let want = entry["cap"].as_str().map(str::to_string);
                assert_eq!(sched.captions[k], want, "{fixture}/{case_name} frame {k}");
            }
            // The cue found at every decoded frame (null when there are no cues).
            match case["cue_seen_at_decoded_frame"].as_array() {
                Some(seen) => {
                    let got: Vec<Option<&str>> = sched
                        .cue_at_frame
                        .iter()
                        .map(|c| c.map(|i| cues[i].text.as_str()))
                        .collect();
                    let want: Vec<Option<&str>> = seen.iter().map(|v| v.as_str()).collect();
                    assert_eq!(got, want, "{fixture}/{case_name} cue per decoded frame");
                }
                None => assert!(sched.cue_at_frame.iter().all(Option::is_none)),
            }
            // The user message and the rendered prompt.
            let question = case["question"].as_str().unwrap();
            let prepared =
                prepare_input(input(fixture, "video.mp4"), &cues, question, &cfg).unwrap();
            assert_eq!(prepared.instruction, case["instruction"].as_str().unwrap());
            assert_eq!(prepared.prompt, case["prompt"].as_str().unwrap());
            assert_eq!(
                format!("{}\n{question}", frame_string(&sched.captions)),
                prepared.instruction
            );
            assert_eq!(prepared.frames.pixels, frames.pixels);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Subtitle parsing (expected values produced by webvtt-py 0.6.0 + the reference's
// `extract_subtitles` on the same bytes)
// ---------------------------------------------------------------------------------------

fn cue(start_ms: i64, end_ms: i64, text: &str) -> Cue {
    Cue {
        start_ms,
        end_ms,
        text: text.to_string(),
    }
}

fn tmp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("videollama-m4v-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn webvtt_edge_cases() {
    let dir = tmp_dir("vtt");
    // BOM, CRLF, header text + metadata, NOTE and STYLE blocks, a cue identifier, cue
    // settings, voice/bold/italic tags, a multi-line cue with inner spaces, mm:ss.ttt, an
    // empty cue (kept), a cue with seconds > 59 and one with commas (skipped), a short
    // fraction, and 00:00:01.001 → 1000 ms (the reference's float truncation).
    let bom_crlf = b"\xef\xbb\xbfWEBVTT - title\r\nKind: captions\r\n\r\nNOTE a comment\r\nspanning lines\r\n\r\nSTYLE\r\n::cue { color: red }\r\n\r\ncue-1\r\n00:00:00.500 --> 00:00:01.001 align:start position:10%\r\n<v Bob>Hello <b>there</b>,\r\n  second line  \r\n\r\n2\r\n00:01.250 --> 00:02.000\r\n<i>Only</i> mm:ss & a < b\r\n\r\n00:00:03.000 --> 00:00:04.000\r\n\r\n00:00:61.000 --> 00:00:62.000\r\nbad seconds\r\n\r\n00:00:05,000 --> 00:00:06,000\r\ncomma is not vtt\r\n\r\n00:00:06.000 --> 00:00:07.5\r\nshort fraction\r\n";
    let got = read_webvtt_file(write(&dir, "bom_crlf.vtt", bom_crlf)).unwrap();
    assert_eq!(
        got,
        vec![
            cue(500, 1000, "Hello there,   second line"),
            cue(1250, 2000, "Only mm:ss & a < b"),
            cue(3000, 4000, ""),
            cue(6000, 7500, "short fraction"),
        ]
    );
    // CR-only line ends, arrow without spaces, tabs stripped.
    let cr_only = b"WEBVTT\r\r00:00:01.000 --> 00:00:02.000\rline one\rline two\r\r00:00:02.000-->00:00:03.000 line:0\r\t tabbed \t\r";
    assert_eq!(
        read_webvtt_file(write(&dir, "cr_only.vtt", cr_only)).unwrap(),
        vec![
            cue(1000, 2000, "line one line two"),
            cue(2000, 3000, "tabbed")
        ]
    );
    // Cues without blank lines between them, several blank lines, 1-digit hours.
    let no_blank = b"WEBVTT\n00:00:01.000 --> 00:00:02.000\nfirst\n00:00:02.000 --> 00:00:03.000\nsecond\n\n\n\n1:00:00.001 --> 1:00:00.999\nhour\n";
    assert_eq!(
        parse_webvtt(std::str::from_utf8(no_blank).unwrap()).unwrap(),
        vec![
            cue(1000, 2000, "first"),
            cue(2000, 3000, "second"),
            cue(3_600_001, 3_600_999, "hour")
        ]
    );
    // UTF-16 with a BOM.
    let mut utf16 = vec![0xFF, 0xFE];
    for u in "WEBVTT\n\n00:00:00.000 --> 00:00:01.000\nCafé — naïve\n".encode_utf16() {
        utf16.extend_from_slice(&u.to_le_bytes());
    }
    assert_eq!(
        read_subtitle_file(write(&dir, "utf16.vtt", &utf16)).unwrap(),
        vec![cue(0, 1000, "Café — naïve")]
    );
    // Garbage: clear errors that name the file.
    let bad = write(&dir, "bad.vtt", b"hello\n");
    let err = read_webvtt_file(&bad).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, MediaError::Decode { .. }), "{msg}");
    assert!(msg.contains("bad.vtt") && msg.contains("WEBVTT"), "{msg}");
    let bin = write(&dir, "binary.vtt", b"WEBVTT\n\n\xff\xfe\x00garbage");
    let msg = read_webvtt_file(&bin).unwrap_err().to_string();
    assert!(msg.contains("binary.vtt") && msg.contains("UTF-8"), "{msg}");
    let missing = read_webvtt_file(dir.join("missing.vtt"))
        .unwrap_err()
        .to_string();
    assert!(missing.contains("missing.vtt"), "{missing}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn srt_parsing_and_equivalence_with_vtt() {
    let dir = tmp_dir("srt");
    // The fixture's cues written as SRT (CRLF) give the same cues as the .vtt.
    let srt = b"1\r\n00:00:00,000 --> 00:00:01,000\r\nA small clock counts upward.\r\n\r\n2\r\n00:00:01,200 --> 00:00:02,100\r\nColour bars slide to the left.\r\n\r\n3\r\n00:00:02,500 --> 00:00:03,000\r\nThe picture keeps moving.\r\n";
    let from_srt = read_srt_file(write(&dir, "video.srt", srt)).unwrap();
    let from_vtt = read_webvtt_file(input(FIXTURES[0], "video.vtt")).unwrap();
    assert_eq!(from_srt, from_vtt);
    // Content sniffing without a known extension.
    assert_eq!(
        read_subtitle_file(write(&dir, "video.txt", srt)).unwrap(),
        from_vtt
    );
    // webvtt-py's SRT rules: the ms field is an integer ("5" = 5 ms, "1500" carries),
    // a dot separator works, blank lines inside a cue continue it, an index line that
    // follows text without a blank line starts a cue, an index followed by a blank line
    // stays text, a cue without an index is skipped, a cue without text is dropped.
    let odd = "1\n00:00:00,5 --> 00:00:01.250\n<i>short ms</i>\n\n\n2\n00:00:07,1500 --> 00:00:09,000\nline a\nline b\n\ncontinued block\n3\n00:00:10,001 --> 00:00:11,000\nno blank before index\n4\n\n00:00:12,000 --> 00:00:13,000\nindex alone\n\n5\n00:00:14,000 --> 00:00:15,000\n\n";
    assert_eq!(
        parse_srt(odd).unwrap(),
        vec![
            cue(5, 1250, "short ms"),
            cue(8500, 9000, "line a line b continued block"),
            cue(10001, 11000, "no blank before index 4"),
        ]
    );
    let msg = read_srt_file(write(&dir, "bad.srt", b"hello\nworld\n"))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("bad.srt") && msg.contains("SRT"), "{msg}");
    std::fs::remove_dir_all(&dir).ok();
}

// ---------------------------------------------------------------------------------------
// Matching rules
// ---------------------------------------------------------------------------------------

#[test]
fn binary_search_on_touching_cues() {
    // Two touching cues (the Mistral fixture): at 1000 ms the search probes cue 0 first.
    let two = [cue(250, 1000, "A"), cue(1000, 2000, "B")];
    assert_eq!(find_cue(&two, 1000.0), Some(0));
    assert_eq!(find_cue(&two, 1000.5), Some(1));
    assert_eq!(find_cue(&two, 249.9), None);
    assert_eq!(find_cue(&two, 2000.0), Some(1));
    // Three touching cues: at 1000 ms the first probe is the middle cue, so it wins.
    let three = [
        cue(0, 1000, "A"),
        cue(1000, 2000, "B"),
        cue(2000, 3000, "C"),
    ];
    assert_eq!(find_cue(&three, 1000.0), Some(1));
    assert_eq!(find_cue(&three, 2000.0), Some(1));
    assert_eq!(find_cue(&three, 2500.0), Some(2));
    assert_eq!(find_cue(&[], 0.0), None);
    // Unsorted cues are searched as given (the reference does not sort): 1500 ms lies in
    // cue 0, but the first probe (cue 1, starting later) sends the search left to cue 0.
    let unsorted = [cue(1000, 2000, "X"), cue(3000, 4000, "Y"), cue(0, 500, "Z")];
    assert_eq!(find_cue(&unsorted, 1500.0), Some(0));
    assert_eq!(find_cue(&unsorted, 100.0), None);
}

#[test]
fn word_limit_and_dedup() {
    // fps 10 → frame n at 100·n ms; every frame kept.
    let cues = [
        cue(0, 100, "a b c"),
        cue(200, 300, "d e"),
        cue(400, 500, "f"),
        cue(600, 700, "d e"),
    ];
    let p = MatchParams {
        fps: 10.0,
        sampling_interval: 1,
        max_frames: 90,
        max_sub_len: 5,
    };
    let s = match_frames_and_subtitles(&cues, 8, &p).unwrap();
    // "a b c " counts 4 words (trailing space), "d e " 3 → 7 ≥ 5: "f " is never emitted;
    // the repeated "d e" is deduplicated.
    assert_eq!(
        s.captions,
        vec![
            Some("a b c ".to_string()),
            None,
            Some("d e ".to_string()),
            None,
            None,
            None,
            None,
            None
        ]
    );
    assert_eq!(s.word_count, 7);
    assert_eq!(s.cue_at_frame[1], Some(0)); // 100 ms: inclusive end
    assert_eq!(s.cue_at_frame[6], Some(3));
    // A caption pending at a skipped frame goes to the next kept one, accumulated.
    let p2 = MatchParams {
        sampling_interval: 4,
        max_sub_len: 400,
        ..p
    };
    let s = match_frames_and_subtitles(&cues, 8, &p2).unwrap();
    assert_eq!(s.kept_frames, vec![0, 4]);
    assert_eq!(
        s.captions,
        vec![Some("a b c ".to_string()), Some("d e f ".to_string())]
    );
    // Limits.
    let p3 = MatchParams { max_frames: 2, ..p };
    assert_eq!(
        match_frames_and_subtitles(&cues, 8, &p3)
            .unwrap()
            .cue_at_frame
            .len(),
        2
    );
    assert!(match_frames_and_subtitles(&cues, 8, &MatchParams { fps: 0.0, ..p }).is_err());
    assert!(match_frames_and_subtitles(
        &cues,
        8,
        &MatchParams {
            sampling_interval: 0,
            ..p
        }
    )
    .is_err());
}

#[test]
fn sampling_grid_for_other_frame_counts() {
    // 300 frames, 45 max → interval 6, frames 0..=264 (the last 35 never sampled).
    assert_eq!(sampling_interval(total_frames(10.0, 30.0), 45).unwrap(), 6);
    let k = kept_frame_indices(300, 6, 45);
    assert_eq!((k.len(), k[1], *k.last().unwrap()), (45, 6, 264));
    // 100 frames, 90 max → interval 1, stop after 90 frames.
    let k = kept_frame_indices(100, sampling_interval(100, 90).unwrap(), 90);
    assert_eq!((k.len(), *k.last().unwrap()), (90, 89));
    // 29.97 fps, 10 s → moviepy total int(10·29.97002997…) = 299 → interval 6.
    assert_eq!(total_frames(10.0, 30.0 * 1000.0 / 1001.0), 299);
    assert_eq!(sampling_interval(299, 45).unwrap(), 6);

    // A real 7 s, 30 fps video: total 210 → interval 4, frames 0, 4, …, 176.
    let Some(dir) = ffmpeg_dir("grid") else {
        return;
    };
    let video = dir.join("grid.mp4");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=64x48:rate=30:duration=7",
        "-pix_fmt",
        "yuv420p",
        "-c:v",
        "libx264",
        video.to_str().unwrap(),
    ]);
    let cfg = MiniGpt4VideoMediaConfig {
        image_size: 28,
        ..MiniGpt4VideoMediaConfig::llama2()
    };
    let frames = load_video(&video, &cfg).unwrap();
    assert_eq!(frames.sampling.total_frames, 210);
    assert_eq!(frames.sampling.sampling_interval, 4);
    assert_eq!(frames.indices, (0..45).map(|i| 4 * i).collect::<Vec<_>>());
    assert_eq!(frames.frames_read, 177);
    assert_eq!(frames.shape(), [45, 3, 28, 28]);
    std::fs::remove_dir_all(&dir).ok();
}

// ---------------------------------------------------------------------------------------
// Subtitle streams inside containers
// ---------------------------------------------------------------------------------------

fn has_ffmpeg() -> bool {
    Command::new("ffmpeg")
        .arg("-version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn ffmpeg_dir(name: &str) -> Option<PathBuf> {
    if !has_ffmpeg() {
        eprintln!("SKIPPED: the `ffmpeg` CLI is not installed; cannot build test media");
        return None;
    }
    Some(tmp_dir(name))
}

fn ffmpeg(args: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .output()
        .expect("run ffmpeg");
    assert!(
        out.status.success(),
        "ffmpeg {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn container_subtitle_streams_match_the_vtt() {
    // Without a subtitle stream: None.
    assert_eq!(
        read_container_subtitles(input(FIXTURES[0], "video.mp4")).unwrap(),
        None
    );
    let Some(dir) = ffmpeg_dir("mux") else {
        return;
    };
    for fixture in FIXTURES {
        let vtt = input(fixture, "video.vtt");
        let video = input(fixture, "video.mp4");
        let want = read_webvtt_file(&vtt).unwrap();
        for (ext, codec) in [
            ("mp4", "mov_text"),
            ("mkv", "webvtt"),
            ("mkv", "subrip"),
            ("mkv", "ass"),
        ] {
            let out = dir.join(format!("{fixture}-{codec}.{ext}"));
            ffmpeg(&[
                "-i",
                video.to_str().unwrap(),
                "-i",
                vtt.to_str().unwrap(),
                "-map",
                "0:v",
                "-map",
                "1:s",
                "-c:v",
                "copy",
                "-c:s",
                codec,
                out.to_str().unwrap(),
            ]);
            let got = read_container_subtitles(&out)
                .unwrap()
                .unwrap_or_else(|| panic!("{}: no subtitle stream found", out.display()));
            assert_eq!(got, want, "{fixture} muxed as {codec} in .{ext}");
        }
    }
    // Markup and multi-line cues: the container reading gives what the .vtt gives.
    let vtt = write(
        &dir,
        "styled.vtt",
        b"WEBVTT\n\n00:00:00.100 --> 00:00:01.001\n<i>Two</i> lines,\nsecond <b>bold</b>\n\n00:00:01.500 --> 00:00:02.000\nplain\n",
    );
    let want = read_webvtt_file(&vtt).unwrap();
    assert_eq!(
        want,
        vec![
            cue(100, 1000, "Two lines, second bold"),
            cue(1500, 2000, "plain")
        ]
    );
    for (ext, codec) in [("mp4", "mov_text"), ("mkv", "ass")] {
        let out = dir.join(format!("styled-{codec}.{ext}"));
        ffmpeg(&[
            "-i",
            input(FIXTURES[0], "video.mp4").to_str().unwrap(),
            "-i",
            vtt.to_str().unwrap(),
            "-map",
            "0:v",
            "-map",
            "1:s",
            "-c:v",
            "copy",
            "-c:s",
            codec,
            out.to_str().unwrap(),
        ]);
        assert_eq!(
            read_container_subtitles(&out).unwrap().unwrap(),
            want,
            "{codec}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}
