//! MA-LMM against the reference on `tests/golden/ma-lmm-tiny` (see its README section), loaded
//! from `checkpoint/model_config.yaml` as laid out.
//!
//! * `banks_and_qformer_from_pixels`: the stored `pixel_values`, streamed frame by frame →
//!   per frame `vision_features`, the visual bank and its counts, the Q-Former
//!   `last_hidden_state`; at the last frame every layer's query bank (+ counts) used as K/V
//!   prefix and the layer inputs; then `qformer_out`, `visual_tokens`.
//! * `generation_from_pixels`: the same, then `input_ids`, `inputs_embeds`, `logits_last`,
//!   every step's logits and `generated_ids` exactly, and the text.
//! * `preprocessing_from_decoded_frames`: the stored decord frames through our bicubic resize
//!   + uint8 wrap + CLIP norm → `resized_float_before_uint8`, `pixel_values`.
//!
//! The tiny EVA ViT's head count (no weight shape tells it) comes from `fixture.json` as
//! `--options model.vit_num_heads=…`. Tolerance: `assert_close`.

use candle_core::{Device, IndexOp, Tensor};
use std::collections::HashMap;
use videollama_pipeline::ma_lmm::{media, MaLmm, VideoStream};
use videollama_pipeline::LoadOptions;
use videollama_testutil::{assert_close, case_json, golden, load_json, load_tensors};

const FIXTURE: &str = "ma-lmm-tiny";

fn load() -> MaLmm {
    let heads = load_json(&format!("{FIXTURE}/fixture.json"))["vision"]["heads"]
        .as_u64()
        .unwrap();
    MaLmm::load(
        &golden(&format!("{FIXTURE}/checkpoint/model_config.yaml")),
        &LoadOptions::default(),
        &[format!("model.vit_num_heads={heads}")],
    )
    .unwrap()
}

fn tensors(name: &str) -> HashMap<String, Tensor> {
    load_tensors(&format!("{FIXTURE}/video/{name}.safetensors"))
}

/// Streams the stored `pixel_values [3, T, S, S]` one frame at a time.
fn run_frames(model: &MaLmm, question: &str) -> (VideoStream, Tensor) {
    let want = tensors("expected");
    let pixels = &want["pixel_values"];
    let t = pixels.dim(1).unwrap();
    let mut stream = model.start(question, true).unwrap();
    for i in 0..t {
        let frame = pixels.i((.., i)).unwrap().contiguous().unwrap();
        model.push_frame(&mut stream, &frame).unwrap();
    }
    let tokens = model.finish(&mut stream).unwrap();
    (stream, tokens)
}

/// Query-bank counts: exact on the query rows. On the instruction-text rows (`Q..`), every
/// frame's layer input is the same up to float rounding (the text never sees the video before
/// layer 1 and only through the queries after), so adjacent entries have cosine similarity 1 up
/// to ~1e-7 and which pair merges is decided by rounding noise; there the counts must still
/// add up to the same number of frames per row, and the bank values (compared separately)
/// match whichever pair merged.
fn check_query_bank_sizes(stage: &str, got: &Tensor, want: &Tensor, q: usize) {
    assert_close(
        &format!("{stage} (query rows)"),
        &got.narrow(1, 0, q).unwrap(),
        &want.narrow(1, 0, q).unwrap(),
    );
    assert_close(
        &format!("{stage} (column sums)"),
        &got.sum(0).unwrap(),
        &want.sum(0).unwrap(),
    );
    let g: Vec<Vec<f32>> = got.to_vec2().unwrap();
    let w: Vec<Vec<f32>> = want.to_vec2().unwrap();
    let differing: Vec<usize> = (0..g[0].len())
        .filter(|&c| g.iter().zip(&w).any(|(a, b)| a[c] != b[c]))
        .collect();
    eprintln!("{stage}: counts differ only in text rows {differing:?}");
}

#[test]
fn banks_and_qformer_from_pixels() {
    let model = load();
    let case = case_json(FIXTURE, "video");
    let question = case["question"].as_str().unwrap();
    let want = tensors("expected");
    let debug = tensors("debug");
    assert_eq!(
        model.prompt(question),
        case["prompt"].as_str().unwrap(),
        "prompt"
    );
    let qids: Vec<u32> = case["qformer_input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(model.qformer_ids(&model.prompt(question)).unwrap(), qids);

    let (stream, tokens) = run_frames(&model, question);
    let t = stream.records.len();
    let feats: Vec<Tensor> = stream
        .records
        .iter()
        .map(|r| r.vision_features.clone())
        .collect();
    assert_close(
        "vision_features",
        &Tensor::stack(&feats, 0).unwrap(),
        &want["vision_features"],
    );
    for (i, r) in stream.records.iter().enumerate() {
        assert_close(
            &format!("frame{i}.visual_bank"),
            &r.visual_bank,
            &debug[&format!("frame{i}.visual_bank")],
        );
        assert_close(
            &format!("frame{i}.visual_bank_sizes"),
            &r.visual_bank_sizes,
            &debug[&format!("frame{i}.visual_bank_sizes")],
        );
        assert_close(
            &format!("frame{i}.qformer_last_hidden_state"),
            &r.last_hidden_state,
            &debug[&format!("frame{i}.qformer_last_hidden_state")],
        );
    }
    let last = &stream.records[t - 1];
    assert_close(
        "visual_memory_bank",
        &last.visual_bank,
        &want["visual_memory_bank"],
    );
    assert_close(
        "visual_memory_bank_sizes",
        &last.visual_bank_sizes,
        &want["visual_memory_bank_sizes"],
    );
    for (l, prefix) in last.qformer_trace.query_bank_prefix.iter().enumerate() {
        let (bank, sizes) = prefix.as_ref().expect("a query bank at the last frame");
        assert_close(
            &format!("query_memory_bank.layer{l}"),
            bank,
            &want[&format!("query_memory_bank.layer{l}")],
        );
        check_query_bank_sizes(
            &format!("query_memory_bank_sizes.layer{l}"),
            sizes,
            &want[&format!("query_memory_bank_sizes.layer{l}")],
            model.qformer.num_queries(),
        );
        assert_close(
            &format!("query_bank_input_h_last_frame.layer{l}"),
            &last.qformer_trace.query_bank_input[l],
            &debug[&format!("query_bank_input_h_last_frame.layer{l}")],
        );
    }
    // Lengths seen per frame: visual [1,2,3,4,4,…], query prefix [0,1,2,3,3,…].
    let l = model.config.model.memory_bank_length;
    for (i, r) in stream.records.iter().enumerate() {
        assert_eq!(r.visual_bank.dim(0).unwrap(), (i + 1).min(l + 1));
        for p in &r.qformer_trace.query_bank_prefix {
            assert_eq!(p.as_ref().map_or(0, |(b, _)| b.dim(0).unwrap()), i.min(l));
        }
    }
    let q = model.qformer.num_queries();
    assert_close(
        "qformer_out",
        &last.last_hidden_state.narrow(0, 0, q).unwrap(),
        &want["qformer_out"],
    );
    assert_close("visual_tokens", &tokens, &want["visual_tokens"]);
}

#[test]
fn generation_from_pixels() {
    let model = load();
    let case = case_json(FIXTURE, "video");
    let question = case["question"].as_str().unwrap();
    let want = tensors("expected");
    let (stream, tokens) = run_frames(&model, question);
    let want_ids: Vec<i64> = want["generated_ids"].to_vec1().unwrap();
    let g = model
        .generate(&tokens, &stream.prompt, want_ids.len())
        .unwrap();
    let input_ids: Vec<i64> = want["input_ids"].to_vec1().unwrap();
    assert_eq!(
        g.llm_input_ids
            .iter()
            .map(|&i| i as i64)
            .collect::<Vec<_>>(),
        input_ids,
        "input_ids"
    );
    assert_close("inputs_embeds", &g.inputs_embeds, &want["inputs_embeds"]);
    assert_close("logits_last", &g.step_logits[0], &want["logits_last"]);
    let steps = Tensor::stack(&g.step_logits, 0).unwrap();
    assert_close("logits_steps", &steps, &want["logits_steps"]);
    assert_eq!(
        g.ids.iter().map(|&i| i as i64).collect::<Vec<_>>(),
        want_ids,
        "generated_ids"
    );
    assert_eq!(g.text, case["generated_text"].as_str().unwrap(), "text");
}

fn preprocess_stored_frames() -> (Tensor, Tensor) {
    let frames = &tensors("decoded_frames")["frames"];
    let s = tensors("expected")["pixel_values"].dim(2).unwrap();
    let (t, h, w, _) = frames.dims4().unwrap();
    let mut pixels = Vec::new();
    let mut resized = Vec::new();
    for i in 0..t {
        let rgb: Vec<u8> = frames
            .i(i)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let (p, r) = media::preprocess_frame(&rgb, h, w, s).unwrap();
        pixels.push(Tensor::from_vec(p, (3, s, s), &Device::Cpu).unwrap());
        resized.push(Tensor::from_vec(r, (3, s, s), &Device::Cpu).unwrap());
    }
    (
        Tensor::stack(&resized, 1).unwrap(),
        Tensor::stack(&pixels, 1).unwrap(),
    )
}

#[test]
fn bicubic_resize_from_decoded_frames() {
    let (resized, _) = preprocess_stored_frames();
    assert_close(
        "resized_float_before_uint8",
        &resized,
        &tensors("debug")["resized_float_before_uint8"],
    );
    // Bit for bit: a one-ulp difference can move a value across an integer before the uint8
    // cast (media.rs `acc4`).
    let ours: Vec<f32> = resized.flatten_all().unwrap().to_vec1().unwrap();
    let want: Vec<f32> = tensors("debug")["resized_float_before_uint8"]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let differ = ours
        .iter()
        .zip(&want)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    assert_eq!(
        differ,
        0,
        "{differ} of {} resized values differ in their bits",
        want.len()
    );
}

#[test]
fn pixel_values_from_decoded_frames() {
    let (_, pixels) = preprocess_stored_frames();
    assert_close(
        "pixel_values",
        &pixels,
        &tensors("expected")["pixel_values"],
    );
}

/// Our decoder (decord's frame count and indices) on `inputs/video.mp4` against the frames
/// decord returned (`decoded_frames.safetensors`).
#[test]
fn decoded_frames_match_decord() {
    let case = case_json(FIXTURE, "video");
    let video = golden(&format!(
        "{FIXTURE}/{}",
        case["input_file"].as_str().unwrap()
    ));
    let reader = videollama_media::decode::VideoReader::open(&video).unwrap();
    let info = reader.info().clone();
    let model_frames = case["num_frames_T"].as_u64().unwrap() as usize;
    let idx = media::sample_indices(info.frame_count, info.avg_fps, model_frames).unwrap();
    let want_idx: Vec<usize> = case["sampled_frame_indices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(idx, want_idx);
    let frames = reader.decode(&idx).unwrap();
    let want = &tensors("decoded_frames")["frames"];
    for (i, f) in frames.iter().enumerate() {
        let w: Vec<u8> = want.i(i).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(f.data, w, "frame {i}");
    }
}

/// Other bank lengths and frame counts (no reference values: the invariants of the
/// reference's algorithm). L = 2, num_frames = 5, and 12 frames streamed: the visual bank
/// never holds more than L + 1 entries and its counts add up to the frames seen; each query
/// bank is cleared once it has absorbed num_frames frames (the reference's reset rule), so
/// frame 5 starts with an empty prefix again; the run still generates.
#[test]
fn other_bank_lengths_and_frame_counts_stream() {
    let heads = load_json(&format!("{FIXTURE}/fixture.json"))["vision"]["heads"]
        .as_u64()
        .unwrap();
    let model = MaLmm::load(
        &golden(&format!("{FIXTURE}/checkpoint/model_config.yaml")),
        &LoadOptions::default(),
        &[
            format!("model.vit_num_heads={heads}"),
            "model.memory_bank_length=2".into(),
            "model.num_frames=5".into(),
        ],
    )
    .unwrap();
    let pixels = &tensors("expected")["pixel_values"];
    let t = pixels.dim(1).unwrap();
    let mut stream = model.start("Where does the box go?", true).unwrap();
    for i in 0..12 {
        let frame = pixels.i((.., i % t)).unwrap().contiguous().unwrap();
        model.push_frame(&mut stream, &frame).unwrap();
    }
    let want_prefix = [0, 1, 2, 2, 2, 0, 1, 2, 2, 2, 0, 1];
    for (i, r) in stream.records.iter().enumerate() {
        assert_eq!(r.visual_bank.dim(0).unwrap(), (i + 1).min(3), "frame {i}");
        let sums: Vec<f32> = r.visual_bank_sizes.sum(0).unwrap().to_vec1().unwrap();
        assert!(
            sums.iter().all(|&s| s == (i + 1) as f32),
            "frame {i}: {sums:?}"
        );
        for p in &r.qformer_trace.query_bank_prefix {
            let n = p.as_ref().map_or(0, |(b, _)| b.dim(0).unwrap());
            assert_eq!(n, want_prefix[i], "frame {i}: query bank prefix");
        }
    }
    let tokens = model.finish(&mut stream).unwrap();
    assert_eq!(tokens.dims(), &[8, 64]);
    let g = model.generate(&tokens, &stream.prompt, 3).unwrap();
    assert!(!g.ids.is_empty() && g.ids.len() <= 3);
    // A frame of the wrong size is an error, not a panic.
    let mut s2 = model.start("q", false).unwrap();
    let bad = Tensor::zeros((3, 8, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(model.push_frame(&mut s2, &bad).is_err());
    assert!(model.finish(&mut s2).is_err());
}

/// Another resolution: `model.image_size=84` over weights whose position table is 4×4 (56 px).
/// The table is interpolated to 6×6 at load (LAVIS `interpolate_pos_embed`; bit-exactness of
/// that step is tested in `eva_vit.rs`), the video is resized to 84×84, every frame yields 37
/// tokens, and the model answers from the media file.
#[test]
fn another_image_size_interpolates_the_position_table() {
    let model = MaLmm::load(
        &golden(&format!("{FIXTURE}/checkpoint/model_config.yaml")),
        &LoadOptions::default(),
        &[heads_option(), "model.image_size=84".into()],
    )
    .unwrap();
    assert_eq!(model.image_size(), 84);
    let case = case_json(FIXTURE, "video");
    let video = golden(&format!(
        "{FIXTURE}/{}",
        case["input_file"].as_str().unwrap()
    ));
    let r = model
        .answer_video(&video, case["question"].as_str().unwrap(), 4, true, true)
        .unwrap();
    assert_eq!(r.tensors["pixel_values"].dims(), &[3, 8, 84, 84]);
    assert_eq!(r.tensors["vision_features"].dims(), &[8, 37, 32]);
    assert!(!r.generation.ids.is_empty() && r.generation.ids.len() <= 4);
    // Not a whole number of 14-px patches: a clear error naming the file.
    let err = MaLmm::load(
        &golden(&format!("{FIXTURE}/checkpoint/model_config.yaml")),
        &LoadOptions::default(),
        &[heads_option(), "model.image_size=90".into()],
    )
    .err()
    .expect("90 px is not a multiple of 14");
    assert!(err.to_string().contains("model_config.yaml"), "{err}");
}

fn heads_option() -> String {
    let heads = load_json(&format!("{FIXTURE}/fixture.json"))["vision"]["heads"]
        .as_u64()
        .unwrap();
    format!("model.vit_num_heads={heads}")
}

fn pipeline_options() -> LoadOptions {
    LoadOptions {
        video_llama: videollama_pipeline::video_llama::VideoLlamaOptions {
            config_options: vec![heads_option()],
            ..Default::default()
        },
        ..LoadOptions::default()
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// `Pipeline::load` hosts MA-LMM (`ma_lmm/family.rs`): from the fixture's video file,
/// `prepare_media` + `encode_media` + `answer` give the fixture's sampled frames, prompt,
/// `input_ids`, `generated_ids` and text exactly, and the same `inputs_embeds` (bit for bit)
/// and ids as the dedicated `MaLmm::answer_video` path; the stage tensors under the fixture's
/// names are within `assert_close`. An encoder-cache hit (which keeps only the question-free
/// frame entries) answers the same, and the LLM weights are shared with the family, not
/// copied.
#[test]
fn pipeline_hosts_ma_lmm_like_answer_video() {
    use videollama_pipeline::media::MediaRequest;
    use videollama_pipeline::{AnswerOptions, Pipeline};
    let case = case_json(FIXTURE, "video");
    let want = tensors("expected");
    let p = Pipeline::load(
        &golden(&format!("{FIXTURE}/checkpoint")),
        &pipeline_options(),
    )
    .unwrap();
    assert!(p.has_vision() && !p.has_audio());
    let video = golden(&format!(
        "{FIXTURE}/{}",
        case["input_file"].as_str().unwrap()
    ));
    let req = MediaRequest {
        video: Some(video.clone()),
        ..Default::default()
    };
    let (input, report) = p.prepare_media(&req).unwrap();
    let indices: Vec<usize> = case["sampled_frame_indices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(report.frame_indices, indices, "sampled frames");
    let media = p.encode_media(&input).unwrap();
    assert_eq!(
        media.visual_tokens(),
        want["qformer_out"].dim(0).unwrap(),
        "visual_tokens = the Q-Former's queries"
    );
    let question = case["question"].as_str().unwrap();
    let n = case["generated_token_count"].as_u64().unwrap() as usize;
    let opts = AnswerOptions {
        max_new_tokens: n,
        collect_tensors: true,
        ..AnswerOptions::default()
    };
    let a = p
        .answer(&[question.to_string()], &media, &opts, |_| true)
        .unwrap();
    let want_ids: Vec<i64> = want["generated_ids"].to_vec1().unwrap();
    let got_ids: Vec<i64> = a.token_ids.iter().map(|&i| i as i64).collect();
    assert_eq!(got_ids, want_ids, "generated_ids");
    assert_eq!(a.answer, case["generated_text"].as_str().unwrap(), "text");
    assert_eq!(a.prompt, case["prompt"].as_str().unwrap(), "prompt");
    assert_eq!(a.prompt_tokens, want["inputs_embeds"].dim(0).unwrap());
    let dumped: Vec<i64> = a.tensors["input_ids"].to_vec1().unwrap();
    assert_eq!(
        dumped,
        want["input_ids"].to_vec1::<i64>().unwrap(),
        "input_ids"
    );
    for name in [
        "pixel_values",
        "vision_features",
        "inputs_embeds",
        "logits_last",
        "logits_steps",
    ] {
        assert_close(name, &a.tensors[name], &want[name]);
    }

    // The dedicated path, from the same file: identical.
    let r = load()
        .answer_video(&video, question, n, false, false)
        .unwrap();
    assert_eq!(r.generation.ids, a.token_ids, "ids vs MaLmm::answer_video");
    assert_eq!(r.answer, a.answer);
    let d = max_abs_diff(&r.generation.inputs_embeds, &a.tensors["inputs_embeds"]);
    eprintln!("inputs_embeds: Pipeline vs MaLmm::answer_video max abs diff {d:e}");
    assert_eq!(d, 0.0, "inputs_embeds must be bit-identical");

    // Through the encoder cache: the hit keeps the frame entries and answers the same.
    let key = p.media_key(&req, &[]);
    assert!(key.is_some());
    let _ = p.encode_cached(key, || p.prepare_media(&req)).unwrap();
    let (hit, _, status) = p.encode_cached(key, || p.prepare_media(&req)).unwrap();
    assert_eq!(status, videollama_pipeline::CacheStatus::Hit);
    let b = p
        .answer(
            &[question.to_string()],
            &hit,
            &AnswerOptions {
                max_new_tokens: n,
                ..AnswerOptions::default()
            },
            |_| true,
        )
        .unwrap();
    assert_eq!(b.token_ids, a.token_ids, "encoder-cache hit");

    // One copy of the LLM weights: the pipeline's decoder shares the family's tensors.
    let loaded = videollama_pipeline::ma_lmm::family::load(
        &golden(&format!("{FIXTURE}/checkpoint/model_config.yaml")),
        &LoadOptions::default(),
        &[heads_option()],
    )
    .unwrap();
    let ours = loaded.model.llm.linears();
    let theirs = loaded.parts.model.llm.linears();
    assert_eq!(ours.len(), theirs.len());
    for ((name, a), (_, b)) in ours.iter().zip(&theirs) {
        assert_eq!(
            a.weight().unwrap().id(),
            b.weight().unwrap().id(),
            "{name}: not shared"
        );
    }
}

/// MA-LMM has no multi-turn template: each answer comes from the last question alone, and a
/// chat session does not reuse the media rows computed for an earlier question (they depend
/// on it). An image is refused.
#[test]
fn pipeline_ma_lmm_chat_uses_the_last_question() {
    use videollama_pipeline::media::MediaRequest;
    use videollama_pipeline::{AnswerOptions, ChatSession, Pipeline};
    let case = case_json(FIXTURE, "video");
    let p = Pipeline::load(
        &golden(&format!("{FIXTURE}/checkpoint")),
        &pipeline_options(),
    )
    .unwrap();
    let want = tensors("expected");
    let media = std::sync::Arc::new(
        p.encode_media(&videollama_pipeline::MediaInput::video(
            want["pixel_values"]
                .permute((1, 0, 2, 3))
                .unwrap()
                .contiguous()
                .unwrap(),
        ))
        .unwrap(),
    );
    let opts = AnswerOptions {
        max_new_tokens: 4,
        ..AnswerOptions::default()
    };
    let q1 = case["question"].as_str().unwrap().to_string();
    let q2 = "Which way does the box move?".to_string();
    let mut session = ChatSession::new(media.clone());
    let a1 = p
        .answer_in_session(&mut session, std::slice::from_ref(&q1), &opts, |_| true)
        .unwrap();
    let turns = vec![q1, a1.answer.clone(), q2.clone()];
    let a2 = p
        .answer_in_session(&mut session, &turns, &opts, |_| true)
        .unwrap();
    let fresh = p.answer(&[q2], &media, &opts, |_| true).unwrap();
    assert_eq!(a2.token_ids, fresh.token_ids);
    assert_eq!(a2.reused_prompt_tokens, 0);
    assert_eq!(a2.prompt, fresh.prompt);

    let image = golden("chat-univi-tiny/inputs/image.png");
    let err = p
        .prepare_media(&MediaRequest {
            image: Some(image),
            ..Default::default()
        })
        .expect_err("an image is refused");
    assert!(err.to_string().contains("videos only"), "{err}");
}

/// `GenerateOptions::min_new_tokens` (MA-LMM's `min_length` 1): with the first greedy id made
/// an eos id, 0 stops at once on it; 1 bans it at the first step only, giving the runner-up
/// of the raw logits (and the raw logits are still what is recorded).
#[test]
fn min_new_tokens_bans_eos_at_the_first_steps_only() {
    use videollama_pipeline::generate::{generate, GenerateOptions};
    use videollama_pipeline::Pipeline;
    let p = Pipeline::load(
        &golden(&format!("{FIXTURE}/checkpoint")),
        &pipeline_options(),
    )
    .unwrap();
    let want = tensors("expected");
    let embeds = &want["inputs_embeds"];
    let first: Vec<f32> = want["logits_last"].to_vec1().unwrap();
    let mut order: Vec<usize> = (0..first.len()).collect();
    order.sort_by(|&a, &b| first[b].total_cmp(&first[a]));
    let (top, second) = (order[0] as u32, order[1] as u32);
    let run = |min_new_tokens| {
        generate(
            &p.model.llm,
            embeds,
            &GenerateOptions {
                max_new_tokens: 3,
                sampling: videollama_llm::SamplingParams::greedy(),
                eos_ids: vec![top],
                stop_sequences: Vec::new(),
                record_logits: true,
                min_new_tokens,
            },
            |_| true,
        )
        .unwrap()
    };
    assert_eq!(run(0).token_ids, vec![top]);
    let g = run(1);
    assert_eq!(g.token_ids[0], second);
    assert_close(
        "logits_last (raw)",
        &g.logits_steps.unwrap().get(0).unwrap(),
        &want["logits_last"],
    );
}
