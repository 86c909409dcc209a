//! MiniGPT4-Video end to end against the reference on both tiny fixtures
//! (`tests/golden/minigpt4-video-tiny` = Llama-2, `minigpt4-video-mistral-tiny` = Mistral; see
//! their README section), loaded from `checkpoint/model_config.yaml` as laid out.
//!
//! * `*_from_tensors`: the stored `pixel_values` and case.json's subtitle per sampled frame →
//!   `vision_features`, `vision_features_ln`, `merged_tokens`, `visual_tokens`,
//!   `inputs_embeds`, all logits, prompt, `input_ids`, `generated_ids` and the text.
//! * `*_from_media`: the case's files (video + .vtt, or no subtitles, or the image) through our
//!   pre-processing → the same checks plus `pixel_values` and the sampled indices.
//!
//! The tiny EVA ViT's head count (no weight shape tells it) comes from `fixture.json` as
//! `--options model.vit_num_heads=…`. Tolerance: `assert_close` (1e-4 relative).

use candle_core::{DType, Tensor};
use std::collections::HashMap;
use videollama_pipeline::media::{MediaRequest, SubtitleChoice};
use videollama_pipeline::video_llama::VideoLlamaOptions;
use videollama_pipeline::{AnswerOptions, LoadOptions, MediaInput, Pipeline, Visual};
use videollama_testutil::{assert_close, case_json, golden, load_json, load_tensors};

const FIXTURES: [&str; 2] = ["minigpt4-video-tiny", "minigpt4-video-mistral-tiny"];
const CASES: [&str; 3] = ["image", "video_subtitles", "video_no_subtitles"];

fn load(fixture: &str) -> Pipeline {
    let dims = &load_json(&format!("{fixture}/fixture.json"))["dims"];
    let opts = LoadOptions {
        video_llama: VideoLlamaOptions {
            config_options: vec![format!("model.vit_num_heads={}", dims["vit_heads"])],
            conv_template: None,
        },
        ..LoadOptions::default()
    };
    Pipeline::load(&golden(&format!("{fixture}/checkpoint")), &opts).unwrap()
}

fn expected(fixture: &str, case: &str) -> HashMap<String, Tensor> {
    load_tensors(&format!("{fixture}/{case}/expected.safetensors"))
}

fn captions(fixture: &str, case: &str) -> Vec<Option<String>> {
    case_json(fixture, case)["subtitle_per_sampled_frame"]
        .as_array()
        .map(|frames| {
            frames
                .iter()
                .map(|f| f["cap"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn check(fixture: &str, case: &str, p: &Pipeline, input: &MediaInput) {
    let meta = case_json(fixture, case);
    let want = expected(fixture, case);
    let media = p.encode_media(input).unwrap();
    let opts = AnswerOptions {
        max_new_tokens: 12,
        collect_tensors: true,
        ..AnswerOptions::default()
    };
    let question = meta["question"].as_str().unwrap().to_string();
    let answer = p.answer(&[question], &media, &opts, |_| true).unwrap();
    let tag = format!("{fixture}/{case}");
    assert_eq!(
        answer.prompt,
        meta["prompt"].as_str().unwrap(),
        "{tag}: prompt"
    );
    for name in [
        "pixel_values",
        "vision_features",
        "vision_features_ln",
        "merged_tokens",
        "visual_tokens",
        "inputs_embeds",
        "logits_last",
        "logits_steps",
    ] {
        let got = answer
            .tensors
            .get(name)
            .unwrap_or_else(|| panic!("{tag}: {name} not produced"));
        assert_close(&format!("{tag}/{name}"), got, &want[name]);
    }
    let ids = |t: &Tensor| -> Vec<i64> { t.to_dtype(DType::I64).unwrap().to_vec1().unwrap() };
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
fn every_case_from_tensors() {
    for fixture in FIXTURES {
        let p = load(fixture);
        for case in CASES {
            let px = expected(fixture, case)["pixel_values"].clone();
            let mut input = if case == "image" {
                MediaInput::image(px)
            } else {
                MediaInput::video(px)
            };
            input.frame_captions = captions(fixture, case);
            check(fixture, case, &p, &input);
        }
    }
}

fn request(fixture: &str, case: &str) -> MediaRequest {
    let inputs = golden(&format!("{fixture}/inputs"));
    let mut req = MediaRequest::default();
    match case {
        "image" => req.image = Some(inputs.join("image.png")),
        "video_subtitles" => {
            req.video = Some(inputs.join("video.mp4"));
            req.subtitles = SubtitleChoice::File(inputs.join("video.vtt"));
        }
        "video_no_subtitles" => {
            req.video = Some(inputs.join("video.mp4"));
            req.subtitles = SubtitleChoice::None;
        }
        other => panic!("unknown case {other}"),
    }
    req
}

#[test]
fn every_case_from_media_files() {
    for fixture in FIXTURES {
        let p = load(fixture);
        for case in CASES {
            let (input, report) = p.prepare_media(&request(fixture, case)).unwrap();
            let want = expected(fixture, case);
            if let Some(Visual::Video(px) | Visual::Image(px)) = &input.visual {
                assert_close(
                    &format!("{fixture}/{case}/pixel_values (from file)"),
                    px,
                    &want["pixel_values"],
                );
            }
            let meta = case_json(fixture, case);
            if let Some(indices) = meta["sampled_frame_indices"].as_array() {
                let want: Vec<usize> = indices
                    .iter()
                    .map(|i| i.as_u64().unwrap() as usize)
                    .collect();
                assert_eq!(
                    report.frame_indices, want,
                    "{fixture}/{case}: frame indices"
                );
                assert_eq!(
                    input.frame_captions,
                    captions(fixture, case),
                    "{fixture}/{case}: captions"
                );
            }
            check(fixture, case, &p, &input);
        }
    }
}

/// A copy of `fixture`'s `checkpoint/` under `root/checkpoint` (links to its files), where
/// `edit` may replace files.
fn copy_checkpoint(fixture: &str, root: &std::path::Path, skip: &[&str]) -> std::path::PathBuf {
    let src = golden(&format!("{fixture}/checkpoint"));
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
    dst
}

fn image_answer(dir: &std::path::Path, fixture: &str) -> Vec<u32> {
    let dims = &load_json(&format!("{fixture}/fixture.json"))["dims"];
    let opts = LoadOptions {
        video_llama: VideoLlamaOptions {
            config_options: vec![format!("model.vit_num_heads={}", dims["vit_heads"])],
            conv_template: None,
        },
        ..LoadOptions::default()
    };
    let p = Pipeline::load(dir, &opts).unwrap();
    let px = expected(fixture, "image")["pixel_values"].clone();
    let media = p.encode_media(&MediaInput::image(px)).unwrap();
    let opts = AnswerOptions {
        max_new_tokens: 12,
        ..AnswerOptions::default()
    };
    let q = case_json(fixture, "image")["question"]
        .as_str()
        .unwrap()
        .to_string();
    p.answer(&[q], &media, &opts, |_| true).unwrap().token_ids
}

/// The same answers from the `.pth` files alone (candle's pickle reader, no safetensors
/// twin) and with peft ≥ 0.3's LoRA key spelling (`lora_A.default.weight`).
#[test]
fn pth_only_and_peft_default_adapter_names_load_the_same_model() {
    let fixture = FIXTURES[0];
    let want: Vec<u32> = expected(fixture, "image")["generated_ids"]
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec1()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_checkpoint(
        fixture,
        tmp.path(),
        &[
            "eva_vit_g.safetensors",
            "video_llama_checkpoint_last.safetensors",
        ],
    );
    assert_eq!(image_answer(&dir, fixture), want, ".pth files only");

    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_checkpoint(
        fixture,
        tmp.path(),
        &["video_llama_checkpoint_last.safetensors"],
    );
    let src = golden(&format!(
        "{fixture}/checkpoint/video_llama_checkpoint_last.safetensors"
    ));
    let renamed: HashMap<String, Tensor> =
        candle_core::safetensors::load(&src, &candle_core::Device::Cpu)
            .unwrap()
            .into_iter()
            .map(|(k, v)| {
                let k = k
                    .replace(".lora_A.weight", ".lora_A.default.weight")
                    .replace(".lora_B.weight", ".lora_B.default.weight");
                (k, v)
            })
            .collect();
    assert!(renamed.keys().any(|k| k.contains(".lora_A.default.")));
    candle_core::safetensors::save(
        &renamed,
        dir.join("video_llama_checkpoint_last.safetensors"),
    )
    .unwrap();
    assert_eq!(image_answer(&dir, fixture), want, "peft >= 0.3 key names");

    // LoRA off (its factors renamed away) changes the answer: the adapters matter.
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_checkpoint(
        fixture,
        tmp.path(),
        &["video_llama_checkpoint_last.safetensors"],
    );
    let no_lora: HashMap<String, Tensor> =
        candle_core::safetensors::load(&src, &candle_core::Device::Cpu)
            .unwrap()
            .into_iter()
            .filter(|(k, _)| !k.contains(".lora_"))
            .collect();
    candle_core::safetensors::save(
        &no_lora,
        dir.join("video_llama_checkpoint_last.safetensors"),
    )
    .unwrap();
    assert_ne!(image_answer(&dir, fixture), want, "without LoRA");
}
