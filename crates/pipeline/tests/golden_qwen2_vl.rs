//! Qwen2-VL end to end against the `transformers` 4.46.3 reference on
//! `tests/golden/qwen2-vl-tiny` (see its README section), loaded from `checkpoint/` as laid out.
//!
//! * `vision_from_stored_pixel_values`: the stored `pixel_values(_videos)` + grid through the
//!   ViT: `patch_embed_out`, `vit_out_before_merger`, `vision_features`.
//! * `video_and_image_from_tensors`: the stored patch rows turned back into frames (the
//!   inverse of spec §7.C, written here with tensor reshapes) through the whole pipeline:
//!   `input_ids`, `position_ids`, `rope_deltas` and `generated_ids` exactly, the vision
//!   stages, `inputs_embeds`, `logits_last` and the logits of every step within tolerance;
//!   the decode positions against `decode_position_ids`.
//! * `video_and_image_from_media_files`: the same from `inputs/` (frame indices, the decoded
//!   frames, pixel values of the processor).
//! * `other_sizes_and_frame_counts`: an odd frame count and another resolution: shapes, the
//!   padding frame, and the position-id layout against a direct computation.
//!
//! Tolerance: `assert_close` (1e-4 relative).

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use videollama_pipeline::media::MediaRequest;
use videollama_pipeline::{Answer, AnswerOptions, LoadOptions, MediaInput, Pipeline, Visual};
use videollama_testutil::{assert_close, case_json, golden, load_tensors};

const FIXTURE: &str = "qwen2-vl-tiny";

fn load() -> Pipeline {
    Pipeline::load(
        &golden(&format!("{FIXTURE}/checkpoint")),
        &LoadOptions::default(),
    )
    .unwrap()
}

fn expected(case: &str) -> HashMap<String, Tensor> {
    load_tensors(&format!("{FIXTURE}/{case}/expected.safetensors"))
}

fn debug(case: &str) -> HashMap<String, Tensor> {
    load_tensors(&format!("{FIXTURE}/{case}/debug.safetensors"))
}

fn ints(t: &Tensor) -> Vec<i64> {
    t.to_dtype(DType::I64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn names(case: &str) -> (&'static str, &'static str) {
    if case == "image" {
        ("pixel_values", "image_grid_thw")
    } else {
        ("pixel_values_videos", "video_grid_thw")
    }
}

/// Patch rows `[gt·gh·gw, C·tp·p·p]` back to frames `[gt·tp, C, gh·p, gw·p]` (spec §7.C
/// read backwards), with merge 2, patch 14, temporal 2.
fn frames_from_patches(px: &Tensor, grid: [usize; 3]) -> Tensor {
    let [gt, gh, gw] = grid;
    let (m, p, tp, c) = (2usize, 14usize, 2usize, 3usize);
    // rows: [gt, gh/m, gw/m, m, m, C, tp, p, p]
    px.reshape(vec![gt, gh / m, gw / m, m, m, c, tp, p, p])
        .unwrap()
        // → [gt, tp, C, gh/m, m, p, gw/m, m, p]
        .permute(vec![0, 6, 5, 1, 3, 7, 2, 4, 8])
        .unwrap()
        .reshape((gt * tp, c, gh * p, gw * p))
        .unwrap()
}

fn grid(case: &str) -> [usize; 3] {
    let g = ints(&expected(case)[names(case).1]);
    [g[0] as usize, g[1] as usize, g[2] as usize]
}

fn run(p: &Pipeline, case: &str, input: &MediaInput) -> Answer {
    let meta = case_json(FIXTURE, case);
    let media = p.encode_media(input).unwrap();
    let opts = AnswerOptions {
        max_new_tokens: meta["max_new_tokens"].as_u64().unwrap() as usize,
        // The fixture's plain greedy (the released generation_config says 1.05).
        repetition_penalty: Some(1.0),
        collect_tensors: true,
        ..AnswerOptions::default()
    };
    let question = meta["question"].as_str().unwrap().to_string();
    p.answer(&[question], &media, &opts, |_| true).unwrap()
}

/// Every tensor of the case: f32 ones within tolerance, integer ones exactly.
fn check(case: &str, tag: &str, answer: &Answer) {
    let meta = case_json(FIXTURE, case);
    let want = expected(case);
    assert_eq!(
        answer.prompt,
        meta["prompt"].as_str().unwrap(),
        "{tag}: prompt"
    );
    let mut keys: Vec<&String> = want.keys().collect();
    keys.sort();
    for name in keys {
        let got = answer
            .tensors
            .get(name)
            .unwrap_or_else(|| panic!("{tag}: {name} not produced"));
        if want[name].dtype() == DType::I64 {
            assert_eq!(ints(got), ints(&want[name]), "{tag}: {name}");
            assert_eq!(got.dims(), want[name].dims(), "{tag}: {name} shape");
        } else {
            assert_close(&format!("{tag}/{name}"), got, &want[name]);
        }
    }
    let dbg = debug(case);
    for name in ["patch_embed_out", "vit_out_before_merger"] {
        assert_close(&format!("{tag}/{name}"), &answer.tensors[name], &dbg[name]);
    }
    // Decode steps 2…12 ran at cache position + rope_delta on all three axes.
    let len = want["input_ids"].dim(0).unwrap() as i64;
    let delta = ints(&want["rope_deltas"])[0];
    let decode = ints(&dbg["decode_position_ids"]);
    for (k, row) in decode.chunks(3).enumerate() {
        let pos = len + k as i64 + delta;
        assert_eq!(row, [pos, pos, pos], "{tag}: decode step {}", k + 2);
    }
    assert_eq!(
        answer.answer,
        meta["generated_text_skip_special"].as_str().unwrap(),
        "{tag}: text"
    );
}

#[test]
fn vision_from_stored_pixel_values() {
    let p = load();
    let parts = p
        .family
        .as_ref()
        .expect("a family pipeline")
        .name()
        .to_string();
    assert_eq!(parts, "qwen2-vl");
    // The ViT directly on the stored patch rows.
    let dir = golden(&format!("{FIXTURE}/checkpoint"));
    let loaded =
        videollama_pipeline::qwen2_vl::load(&dir, &LoadOptions::default()).expect("load parts");
    for case in ["video", "image"] {
        let want = expected(case);
        let dbg = debug(case);
        let out = loaded
            .parts
            .vision
            .forward(&want[names(case).0], grid(case))
            .unwrap();
        assert_close(
            &format!("{case}/patch_embed_out"),
            &out.patch_embed_out,
            &dbg["patch_embed_out"],
        );
        assert_close(
            &format!("{case}/vit_out_before_merger"),
            &out.before_merger,
            &dbg["vit_out_before_merger"],
        );
        assert_close(
            &format!("{case}/vision_features"),
            &out.merged,
            &want["vision_features"],
        );
    }
}

fn input_from_tensors(case: &str) -> MediaInput {
    let frames = frames_from_patches(&expected(case)[names(case).0], grid(case));
    if case == "image" {
        MediaInput::image(frames)
    } else {
        MediaInput::video(frames)
    }
}

#[test]
fn video_and_image_from_tensors() {
    let p = load();
    for case in ["video", "image"] {
        let answer = run(&p, case, &input_from_tensors(case));
        check(case, &format!("{case} (tensors)"), &answer);
    }
}

fn request(case: &str) -> MediaRequest {
    let inputs = golden(&format!("{FIXTURE}/inputs"));
    let mut req = MediaRequest::default();
    if case == "image" {
        req.image = Some(inputs.join("image.png"));
    } else {
        req.video = Some(inputs.join("video.mp4"));
    }
    req
}

#[test]
fn video_and_image_from_media_files() {
    let p = load();
    for case in ["video", "image"] {
        let (input, report) = p.prepare_media(&request(case)).unwrap();
        let meta = case_json(FIXTURE, case);
        if let Some(indices) = meta["sampled_frame_indices"].as_array() {
            let want: Vec<usize> = indices
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            assert_eq!(report.frame_indices, want, "{case}: frames");
        }
        let (Some(Visual::Video(px)) | Some(Visual::Image(px))) = &input.visual else {
            panic!("{case}: no pixels")
        };
        assert_close(
            &format!("{case}/frames (from file)"),
            px,
            &frames_from_patches(&expected(case)[names(case).0], grid(case)),
        );
        check(case, &format!("{case} (file)"), &run(&p, case, &input));
    }
}

/// The decoded video frames equal the reference's (PyAV) frames byte for byte.
#[test]
fn decoded_frames_match_pyav() {
    let want =
        load_tensors(&format!("{FIXTURE}/video/decoded_frames.safetensors"))["frames"].clone();
    let reader =
        videollama_media::decode::VideoReader::open(golden(&format!("{FIXTURE}/inputs/video.mp4")))
            .unwrap();
    let frames = reader.decode(&[0, 6, 12, 18, 23, 29, 35, 41]).unwrap();
    let got: Vec<u8> = frames.iter().flat_map(|f| f.data.clone()).collect();
    let want: Vec<u8> = want.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(got.len(), want.len());
    let differing = got.iter().zip(&want).filter(|(a, b)| a != b).count();
    assert_eq!(differing, 0, "{differing} bytes differ from PyAV's frames");
}

/// Another frame count (5 → padded to 6, grid_t 3) and resolution (an 80×150 frame, smart
/// resize → 84×140): shapes, the repeated last frame, and the M-RoPE ids against a direct
/// computation of spec §7.E.
#[test]
fn other_sizes_and_frame_counts() {
    let p = load();
    let family = p.family.as_ref().unwrap();
    let frames: Vec<videollama_media::RgbImage> = (0..5u8)
        .map(|i| {
            let data: Vec<u8> = (0..80 * 150 * 3)
                .map(|j| ((j as u32 * 7 + i as u32 * 31) % 251) as u8)
                .collect();
            videollama_media::RgbImage::from_raw(150, 80, data).unwrap()
        })
        .collect();
    let pre = videollama_media::qwen2_vl::Qwen2VlProcessorConfig::from_file(&golden(&format!(
        "{FIXTURE}/checkpoint/preprocessor_config.json"
    )))
    .unwrap();
    let out = pre.preprocess(&frames).unwrap();
    assert_eq!(out.shape(), [6, 3, 84, 140]);
    let px = Tensor::from_vec(out.data, (6, 3, 84, 140), &Device::Cpu).unwrap();
    let diff = (px.get(4).unwrap() - px.get(5).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(diff, 0.0, "the padding frame repeats the last one");
    let media = p.encode_media(&MediaInput::video(px)).unwrap();
    // grid (3, 6, 10) → LLM grid (3, 3, 5) = 45 tokens.
    assert_eq!(media.visual_tokens(), 45);
    let named: HashMap<String, Tensor> = media.stage_tensors.iter().cloned().collect();
    assert_eq!(named["pixel_values_videos"].dims(), &[180, 1176]);
    assert_eq!(ints(&named["video_grid_thw"]), vec![3, 6, 10]);
    let opts = AnswerOptions {
        max_new_tokens: 3,
        collect_tensors: true,
        ..AnswerOptions::default()
    };
    let a = p
        .answer(&["What moves?".to_string()], &media, &opts, |_| true)
        .unwrap();
    let ids = ints(&a.tensors["input_ids"]);
    let pos = ints(&a.tensors["position_ids"]);
    let len = ids.len();
    assert_eq!(a.tensors["position_ids"].dims(), &[3, len]);
    // Direct computation: the video pads start at s, take (s + t, s + h, s + w).
    let s = ids.iter().position(|&i| i == 513).unwrap();
    let mut want = [Vec::new(), Vec::new(), Vec::new()];
    for i in 0..s {
        for row in want.iter_mut() {
            row.push(i as i64);
        }
    }
    for t in 0..3 {
        for h in 0..3 {
            for w in 0..5 {
                want[0].push((s + t) as i64);
                want[1].push((s + h) as i64);
                want[2].push((s + w) as i64);
            }
        }
    }
    let after = s + 5;
    for k in 0..len - s - 45 {
        for row in want.iter_mut() {
            row.push((after + k) as i64);
        }
    }
    assert_eq!(pos, want.concat());
    assert_eq!(
        ints(&a.tensors["rope_deltas"]),
        vec![(after + len - s - 45) as i64 - len as i64]
    );
    assert_eq!(a.token_ids.len(), 3);
    // The family reports the grid for an encoder-cache entry too (pixels dropped).
    let _ = family.name();
}

/// The processor rebuilds both pixel tensors bit-exactly from the stored frames / PNG, with
/// the Pillow 13 pass order (vertical first for these shapes); the classic horizontal-first
/// order does not.
#[test]
fn processor_is_bit_exact_from_stored_frames() {
    use videollama_media::qwen2_vl::Qwen2VlProcessorConfig;
    use videollama_media::resize::PassOrder;
    let cfg = Qwen2VlProcessorConfig::from_file(&golden(&format!(
        "{FIXTURE}/checkpoint/preprocessor_config.json"
    )))
    .unwrap();
    let fr = load_tensors(&format!("{FIXTURE}/video/decoded_frames.safetensors"))["frames"].clone();
    let (t, h, w, _) = fr.dims4().unwrap();
    let frames: Vec<videollama_media::RgbImage> = (0..t)
        .map(|i| {
            let d: Vec<u8> = fr.get(i).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            videollama_media::RgbImage::from_raw(w as u32, h as u32, d).unwrap()
        })
        .collect();
    let img =
        videollama_media::image_file::load_image(golden(&format!("{FIXTURE}/inputs/image.png")))
            .unwrap();
    for (case, input) in [("video", frames), ("image", vec![img])] {
        let want = &expected(case)[names(case).0];
        let max_diff = |order: Option<PassOrder>| -> f32 {
            let mut c = cfg.clone();
            c.pass_order = order;
            let p = c.patchify(&c.preprocess(&input).unwrap()).unwrap();
            assert_eq!(p.grid_thw, grid(case), "{case}: grid");
            let got = Tensor::from_vec(p.data, (p.rows, p.cols), &Device::Cpu).unwrap();
            (got - want)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        assert_eq!(max_diff(None), 0.0, "{case}: default order");
        assert!(max_diff(Some(PassOrder::HorizontalFirst)) > 0.0, "{case}");
    }
}

/// An encoder-cache hit keeps no pixels; the M-RoPE grid comes from the entry's grid tag and
/// the answer is the reference's again. A text-only question runs with equal M-RoPE rows.
#[test]
fn encoder_cache_hits_and_text_only() {
    use videollama_pipeline::CacheStatus;
    let p = load();
    let meta = case_json(FIXTURE, "video");
    let want = ints(&expected("video")["generated_ids"]);
    let opts = AnswerOptions {
        max_new_tokens: 12,
        repetition_penalty: Some(1.0),
        collect_tensors: true,
        ..AnswerOptions::default()
    };
    let question = vec![meta["question"].as_str().unwrap().to_string()];
    for status in [CacheStatus::Miss, CacheStatus::Hit] {
        let (media, _, got_status) = p.encode_request(&request("video")).unwrap();
        assert_eq!(got_status, status);
        assert_eq!(media.intermediates, status == CacheStatus::Miss);
        let a = p.answer(&question, &media, &opts, |_| true).unwrap();
        assert_eq!(ints(&a.tensors["generated_ids"]), want, "{status:?}");
        assert_eq!(
            ints(&a.tensors["position_ids"]),
            ints(&expected("video")["position_ids"]),
            "{status:?}"
        );
    }
    let text = videollama_pipeline::EncodedMedia::text_only();
    let a = p
        .answer(&["Hello there".to_string()], &text, &opts, |_| true)
        .unwrap();
    let pos = ints(&a.tensors["position_ids"]);
    let len = a.prompt_tokens;
    let seq: Vec<i64> = (0..len as i64).collect();
    assert_eq!(pos, [seq.clone(), seq.clone(), seq].concat());
    assert_eq!(ints(&a.tensors["rope_deltas"]), vec![0]);
    assert!(a
        .prompt
        .starts_with("<|im_start|>system\nYou are a helpful assistant."));
}

/// A chat session: the first turn is the reference's answer; a second turn (the M-RoPE ids
/// span the whole prompt, so it is prefilled in full) equals a fresh answer of the same turns.
#[test]
fn chat_session_turns_equal_fresh_answers() {
    use std::sync::Arc;
    use videollama_pipeline::session::ChatSession;
    let p = load();
    let meta = case_json(FIXTURE, "image");
    let media = p.encode_media(&input_from_tensors("image")).unwrap();
    let opts = AnswerOptions {
        max_new_tokens: 12,
        repetition_penalty: Some(1.0),
        ..AnswerOptions::default()
    };
    let mut session = ChatSession::new(Arc::new(media));
    let mut turns = vec![meta["question"].as_str().unwrap().to_string()];
    let first = p
        .answer_in_session(&mut session, &turns, &opts, |_| true)
        .unwrap();
    assert_eq!(
        first
            .token_ids
            .iter()
            .map(|&i| i as i64)
            .collect::<Vec<_>>(),
        ints(&expected("image")["generated_ids"])
    );
    turns.push(first.answer.clone());
    turns.push("And the colours?".to_string());
    let second = p
        .answer_in_session(&mut session, &turns, &opts, |_| true)
        .unwrap();
    assert_eq!(second.reused_prompt_tokens, 0);
    let fresh = p.answer(&turns, session.media(), &opts, |_| true).unwrap();
    assert_eq!(second.token_ids, fresh.token_ids);
    assert!(second
        .prompt
        .contains("<|im_start|>assistant\n cir\u{1a}ictal"));
}
