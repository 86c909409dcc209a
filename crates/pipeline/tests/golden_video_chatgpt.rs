//! Video-ChatGPT end to end against the reference on `tests/golden/video-chatgpt-tiny` (see its
//! README section), loaded from `checkpoint/` as laid out: the LLaVA-Lightning stand-in
//! `llava-base/` + the projection file `video_chatgpt-tiny.bin`.
//!
//! * `video_from_tensors` / `video_from_media_file`: the stored `pixel_values`, or the case's
//!   video through our decoding, sampling, nearest resize and CLIP processor → every stage
//!   tensor (`vision_features`, `temporal_tokens`, `spatial_tokens`, `video_tokens`,
//!   `visual_tokens`, `inputs_embeds`, all logits), the prompt, `input_ids`, `generated_ids`
//!   and the text, with `--reference-noise` = the case's `expected.safetensors` (its
//!   `lm_head_added_rows`).
//! * `default_rows_change_only_the_added_columns`: without the noise file the three `lm_head`
//!   rows are the mean of the base rows; every other logit column, the ids and the text stay
//!   the reference's.
//!
//! Tolerance: `assert_close` (1e-4 relative).

use candle_core::{DType, IndexOp, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use videollama_pipeline::media::MediaRequest;
use videollama_pipeline::{Answer, AnswerOptions, LoadOptions, MediaInput, Pipeline, Visual};
use videollama_testutil::{assert_close, case_json, golden, load_tensors};

const FIXTURE: &str = "video-chatgpt-tiny";

fn noise_file() -> PathBuf {
    golden(&format!("{FIXTURE}/video/expected.safetensors"))
}

fn load_from(dir: &Path, noise: bool) -> Pipeline {
    let opts = LoadOptions {
        reference_noise: noise.then(noise_file),
        ..LoadOptions::default()
    };
    Pipeline::load(dir, &opts).unwrap()
}

fn load(noise: bool) -> Pipeline {
    load_from(&golden(&format!("{FIXTURE}/checkpoint")), noise)
}

fn expected() -> HashMap<String, Tensor> {
    load_tensors(&format!("{FIXTURE}/video/expected.safetensors"))
}

fn ids(t: &Tensor) -> Vec<i64> {
    t.to_dtype(DType::I64).unwrap().to_vec1().unwrap()
}

fn run(p: &Pipeline, input: &MediaInput) -> Answer {
    let meta = case_json(FIXTURE, "video");
    let media = p.encode_media(input).unwrap();
    let opts = AnswerOptions {
        max_new_tokens: meta["max_new_tokens"].as_u64().unwrap() as usize,
        collect_tensors: true,
        ..AnswerOptions::default()
    };
    let question = meta["question"].as_str().unwrap().to_string();
    p.answer(&[question], &media, &opts, |_| true).unwrap()
}

fn check(tag: &str, answer: &Answer) {
    let meta = case_json(FIXTURE, "video");
    let want = expected();
    assert_eq!(
        answer.prompt,
        meta["prompt"].as_str().unwrap(),
        "{tag}: prompt"
    );
    for name in [
        "pixel_values",
        "vision_features",
        "temporal_tokens",
        "spatial_tokens",
        "video_tokens",
        "visual_tokens",
        "inputs_embeds",
        "logits_last",
        "logits_steps",
        "lm_head_added_rows",
    ] {
        let got = answer
            .tensors
            .get(name)
            .unwrap_or_else(|| panic!("{tag}: {name} not produced"));
        assert_close(&format!("{tag}/{name}"), got, &want[name]);
    }
    assert_eq!(
        ids(&answer.tensors["input_ids"]),
        ids(&want["input_ids"]),
        "{tag}: input_ids"
    );
    assert_eq!(
        ids(&answer.tensors["generated_ids"]),
        ids(&want["generated_ids"]),
        "{tag}: generated_ids"
    );
    assert_eq!(
        answer.answer,
        meta["generated_text"].as_str().unwrap(),
        "{tag}: text"
    );
}

#[test]
fn video_from_tensors() {
    let p = load(true);
    let px = expected()["pixel_values"].clone();
    check("video (tensors)", &run(&p, &MediaInput::video(px)));
}

#[test]
fn video_from_media_file() {
    let p = load(true);
    let req = MediaRequest {
        video: Some(golden(&format!("{FIXTURE}/inputs/video.mp4"))),
        ..MediaRequest::default()
    };
    let (input, report) = p.prepare_media(&req).unwrap();
    let meta = case_json(FIXTURE, "video");
    let want_idx: Vec<usize> = meta["sampled_frame_indices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(report.frame_indices, want_idx, "sampled frames");
    assert_eq!(report.video_frame_count, Some(120));
    let Some(Visual::Video(px)) = &input.visual else {
        panic!("a video input")
    };
    assert_close("pixel_values (from file)", px, &expected()["pixel_values"]);
    check("video (file)", &run(&p, &input));
}

/// The decoded frames decord returned → nearest resize + CLIP processor → `pixel_values`
/// exactly (no decoder in the loop).
#[test]
fn decoded_frames_give_the_pixel_values_exactly() {
    let frames = load_tensors(&format!("{FIXTURE}/video/decoded_frames.safetensors"));
    let frames = frames.values().next().unwrap().clone();
    let (t, h, w, _) = frames.dims4().unwrap();
    let data: Vec<u8> = frames.flatten_all().unwrap().to_vec1().unwrap();
    let imgs: Vec<videollama_media::RgbImage> = (0..t)
        .map(|i| {
            let n = h * w * 3;
            videollama_media::RgbImage::from_raw(
                w as u32,
                h as u32,
                data[i * n..(i + 1) * n].to_vec(),
            )
            .unwrap()
        })
        .collect();
    let dir = golden(&format!("{FIXTURE}/checkpoint"));
    let layout = videollama_pipeline::video_chatgpt::detect(&dir)
        .unwrap()
        .unwrap();
    let loaded =
        videollama_pipeline::video_chatgpt::load(&layout, &LoadOptions::default()).unwrap();
    let px =
        videollama_pipeline::video_chatgpt::media::frames_to_pixels(&loaded.parts, &imgs).unwrap();
    let want = &expected()["pixel_values"];
    let diff = (px - want)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(diff, 0.0, "pixel_values from decord's frames");
}

/// Without `--reference-noise` the three added `lm_head` rows are the mean of the base rows:
/// the added logit columns equal the mean of the base logits (so never the greedy choice), and
/// nothing else changes.
#[test]
fn default_rows_change_only_the_added_columns() {
    let p = load(false);
    let answer = run(&p, &MediaInput::video(expected()["pixel_values"].clone()));
    let want = expected();
    let meta = case_json(FIXTURE, "video");
    let base = 1003;
    let steps = &answer.tensors["logits_steps"];
    let (n, v) = steps.dims2().unwrap();
    assert_eq!(v, 1006);
    assert_close(
        "default/logits_steps[:, :1003]",
        &steps.narrow(1, 0, base).unwrap(),
        &want["logits_steps"].narrow(1, 0, base).unwrap(),
    );
    for step in 0..n {
        let row = steps.i(step).unwrap();
        let mean = row
            .narrow(0, 0, base)
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let added: Vec<f32> = row.narrow(0, base, 3).unwrap().to_vec1().unwrap();
        for a in added {
            assert!((a - mean).abs() < 1e-4, "step {step}: {a} vs mean {mean}");
        }
    }
    assert_eq!(
        ids(&answer.tensors["generated_ids"]),
        ids(&want["generated_ids"])
    );
    assert_eq!(answer.answer, meta["generated_text"].as_str().unwrap());
    let rows = &answer.tensors["lm_head_added_rows"];
    assert_eq!(rows.dims(), &[3, 64]);
    // The reference's drawn rows differ from the mean, so this is a real change.
    assert!(
        (rows - &want["lm_head_added_rows"])
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            > 1e-3
    );
}

/// Other frame counts: a short clip (8 frames, repeats included) and more than 100 frames
/// (no padding: one temporal row per frame) go through the same code.
#[test]
fn other_frame_counts() {
    let p = load(false);
    let px = expected()["pixel_values"].clone();
    let opts = AnswerOptions {
        max_new_tokens: 2,
        collect_tensors: true,
        ..AnswerOptions::default()
    };
    for (frames, tokens) in [(8usize, 116usize), (1, 116), (120, 136)] {
        let input = if frames <= 100 {
            px.narrow(0, 0, frames).unwrap()
        } else {
            Tensor::cat(&[&px, &px.narrow(0, 0, frames - 100).unwrap()], 0).unwrap()
        };
        let media = p.encode_media(&MediaInput::video(input)).unwrap();
        let a = p
            .answer(&["What?".to_string()], &media, &opts, |_| true)
            .unwrap();
        assert_eq!(a.visual_tokens, tokens, "{frames} frames");
        let temporal = &a.tensors["temporal_tokens"];
        assert_eq!(temporal.dim(0).unwrap(), frames.max(100));
        if frames < 100 {
            let pad = temporal
                .narrow(0, frames, 100 - frames)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert_eq!(pad, 0.0);
        }
        let n_patch = a.tensors["input_ids"]
            .to_vec1::<i64>()
            .unwrap()
            .iter()
            .filter(|&&i| i == 1003)
            .count();
        assert_eq!(n_patch, tokens);
    }
}

fn copy_checkpoint(root: &Path, skip: &[&str]) -> PathBuf {
    let src = golden(&format!("{FIXTURE}/checkpoint"));
    let dst = root.join("checkpoint");
    std::fs::create_dir_all(&dst).unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if skip.iter().any(|s| name == *s) {
            continue;
        }
        std::os::unix::fs::symlink(entry.path(), dst.join(&name)).unwrap();
    }
    // The tower folder sits beside `checkpoint/`, as in the fixture.
    std::os::unix::fs::symlink(
        golden(&format!("{FIXTURE}/vision_tower")),
        root.join("vision_tower"),
    )
    .unwrap();
    dst
}

/// The published layout as it is: the pickled `.bin` alone (candle's pickle reader, no
/// safetensors twin) loads the same model.
#[test]
fn projection_bin_alone_loads_the_same_model() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_checkpoint(tmp.path(), &["video_chatgpt-tiny.safetensors"]);
    let p = load_from(&dir, true);
    let a = run(&p, &MediaInput::video(expected()["pixel_values"].clone()));
    assert_eq!(
        ids(&a.tensors["generated_ids"]),
        ids(&expected()["generated_ids"])
    );
}

/// A base folder without `tokenizer.json`: `tokenizer.model` converted like transformers'
/// `LlamaTokenizerFast` gives the reference's ids.
#[test]
fn tokenizer_model_converts_like_the_fast_tokenizer() {
    let base = golden(&format!("{FIXTURE}/checkpoint/llava-base"));
    let from_json = videollama_pipeline::video_chatgpt::load_tokenizer(&base).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&base).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "tokenizer.json" {
            std::os::unix::fs::symlink(entry.path(), tmp.path().join(entry.file_name())).unwrap();
        }
    }
    let converted = videollama_pipeline::video_chatgpt::load_tokenizer(tmp.path()).unwrap();
    let meta = case_json(FIXTURE, "video");
    let prompt = meta["prompt"].as_str().unwrap();
    let a = from_json.encode(prompt, false).unwrap();
    let b = converted.encode(prompt, false).unwrap();
    assert_eq!(a.get_ids(), b.get_ids());
    let want: Vec<u32> = ids(&expected()["input_ids"])
        .iter()
        .skip(1)
        .map(|&i| i as u32)
        .collect();
    assert_eq!(b.get_ids(), want.as_slice());
    let readme = std::fs::read_to_string(golden("README.md")).unwrap();
    let mut texts: Vec<&str> = vec![
        "Hello  world\n\n x",
        " leading",
        "a</s>b <s> c",
        "ümlaut 🦀",
    ];
    texts.extend(readme.lines().filter(|l| !l.is_empty()).take(400));
    for text in texts {
        assert_eq!(
            from_json.encode(text, false).unwrap().get_ids(),
            converted.encode(text, false).unwrap().get_ids(),
            "{text:?}"
        );
    }
}

#[test]
fn images_and_missing_pieces_are_clear_errors() {
    let p = load(false);
    let req = MediaRequest {
        image: Some(golden("chat-univi-tiny/inputs/image.png")),
        ..MediaRequest::default()
    };
    let err = p.prepare_media(&req).err().unwrap().to_string();
    assert!(err.contains("videos only"), "{err}");
    // No projection file next to the base: not a Video-ChatGPT folder at all.
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_checkpoint(
        tmp.path(),
        &["video_chatgpt-tiny.safetensors", "video_chatgpt-tiny.bin"],
    );
    assert!(videollama_pipeline::video_chatgpt::detect(&dir).is_none());
    // A noise file without the rows.
    let opts = LoadOptions {
        reference_noise: Some(golden("chat-univi-tiny/image/expected.safetensors")),
        ..LoadOptions::default()
    };
    let err = Pipeline::load(&golden(&format!("{FIXTURE}/checkpoint")), &opts)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("lm_head_added_rows") && err.contains("expected.safetensors"),
        "{err}"
    );
}

/// A chat session (second turn reuses the first turn's KV cache) and an encoder-cache hit give
/// the same answers as fresh requests.
#[test]
fn chat_session_and_encoder_cache_hits() {
    use videollama_pipeline::ChatSession;
    let p = load(true);
    p.encoder_cache.set_budget(64 << 20);
    let req = MediaRequest {
        video: Some(golden(&format!("{FIXTURE}/inputs/video.mp4"))),
        ..MediaRequest::default()
    };
    let key = p.media_key(&req, &[]);
    let _ = p.encode_cached(key, || p.prepare_media(&req)).unwrap();
    let (hit, _, status) = p.encode_cached(key, || p.prepare_media(&req)).unwrap();
    assert_eq!(status, videollama_pipeline::CacheStatus::Hit);
    let meta = case_json(FIXTURE, "video");
    let question = meta["question"].as_str().unwrap().to_string();
    let opts = AnswerOptions {
        max_new_tokens: 12,
        ..AnswerOptions::default()
    };
    let want: Vec<u32> = ids(&expected()["generated_ids"])
        .iter()
        .map(|&i| i as u32)
        .collect();
    let mut session = ChatSession::new(hit.clone());
    let t1 = p
        .answer_in_session(&mut session, std::slice::from_ref(&question), &opts, |_| {
            true
        })
        .unwrap();
    assert_eq!(t1.token_ids, want);
    assert_eq!(t1.prompt, meta["prompt"].as_str().unwrap());
    let turns = vec![question, t1.answer.clone(), "And then?".to_string()];
    let t2 = p
        .answer_in_session(&mut session, &turns, &opts, |_| true)
        .unwrap();
    let alone = p.answer(&turns, &hit, &opts, |_| true).unwrap();
    assert!(t2.reused_prompt_tokens > 0);
    assert_eq!(t2.token_ids, alone.token_ids);
}
