//! GGUF language models without any download: the tiny golden Qwen2 fixture's language model
//! written as a llama.cpp-style GGUF (F32 and Q8_0) with our writer, then
//! * loaded with `LoadOptions::llm_gguf` (`--llm`) on the fixture checkpoint: the logits of
//!   the dense path (F32: golden tolerance; Q8_0: a stated tolerance and the same greedy ids),
//! * loaded as a text-only pipeline (`--model FILE.gguf`) with the tokenizer and chat
//!   template stored in its metadata,
//! * and every bad file (mismatched shapes, missing, truncated) gives an error naming it.

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use videollama_llm::gguf::{write_decoder_gguf, GgufArch};
use videollama_llm::DecoderConfig;
use videollama_nn::WeightFormat;
use videollama_pipeline::checkpoint::find_weight_files;
use videollama_pipeline::config::ModelConfig;
use videollama_pipeline::generate::{generate, GenerateOptions};
use videollama_pipeline::{AnswerOptions, LoadOptions, MediaInput, Pipeline};
use videollama_testutil::{assert_close, golden};

const FIXTURE: &str = "videollama2.1-qwen2-tiny";
const QUESTION: &str = "What is the capital of France?";

fn checkpoint() -> PathBuf {
    golden(&format!("{FIXTURE}/checkpoint"))
}

fn fixture_llm() -> (DecoderConfig, HashMap<String, Tensor>) {
    let dir = checkpoint();
    let config = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let mut tensors = HashMap::new();
    for f in find_weight_files(&dir).unwrap() {
        tensors.extend(candle_core::safetensors::load(&f, &Device::Cpu).unwrap());
    }
    (config.llm, tensors)
}

/// `tokenizer.ggml.*` and `tokenizer.chat_template` as llama.cpp's converter writes them,
/// from the fixture's `tokenizer.json` / `tokenizer_config.json`.
fn tokenizer_metadata() -> Vec<(String, Value)> {
    let dir = checkpoint();
    let tok: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json")).unwrap())
            .unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap())
            .unwrap();
    let mut tokens: Vec<(u64, String, i32)> = tok["model"]["vocab"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(t, id)| (id.as_u64().unwrap(), t.clone(), 1))
        .collect();
    for added in tok["added_tokens"].as_array().unwrap() {
        let id = added["id"].as_u64().unwrap();
        if !tokens.iter().any(|(i, _, _)| *i == id) {
            tokens.push((id, added["content"].as_str().unwrap().to_string(), 3));
        }
    }
    tokens.sort();
    assert!(tokens
        .iter()
        .enumerate()
        .all(|(i, (id, _, _))| i as u64 == *id));
    let id_of = |s: &str| tokens.iter().find(|(_, t, _)| t == s).unwrap().0 as u32;
    let merges: Vec<Value> = tok["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| Value::String(m.as_str().unwrap().to_string()))
        .collect();
    vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("qwen2".into())),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(
                tokens
                    .iter()
                    .map(|(_, t, _)| Value::String(t.clone()))
                    .collect(),
            ),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(tokens.iter().map(|(_, _, ty)| Value::I32(*ty)).collect()),
        ),
        ("tokenizer.ggml.merges".into(), Value::Array(merges)),
        (
            "tokenizer.ggml.bos_token_id".into(),
            Value::U32(id_of("<|endoftext|>")),
        ),
        (
            "tokenizer.ggml.eos_token_id".into(),
            Value::U32(id_of("<|im_end|>")),
        ),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
        (
            "tokenizer.chat_template".into(),
            Value::String(cfg["chat_template"].as_str().unwrap().to_string()),
        ),
    ]
}

/// Write the fixture's language model as a qwen2 GGUF (`cfg` may differ from the fixture's
/// to make a mismatching file; its tensors are then cut from the fixture's).
fn write_llm(path: &Path, cfg: &DecoderConfig, linear: GgmlDType, tokenizer: bool) {
    let (_, tensors) = fixture_llm();
    let extra = if tokenizer {
        tokenizer_metadata()
    } else {
        Vec::new()
    };
    write_decoder_gguf(path, GgufArch::Qwen2, cfg, linear, &extra, |name| {
        Ok(tensors[name].clone())
    })
    .unwrap();
}

fn answer(p: &Pipeline, media: &MediaInput, max_new_tokens: usize) -> videollama_pipeline::Answer {
    let encoded = p.encode_media(media).unwrap();
    let opts = AnswerOptions {
        max_new_tokens,
        collect_tensors: true,
        ..AnswerOptions::default()
    };
    p.answer(&[QUESTION.to_string()], &encoded, &opts, |_| true)
        .unwrap()
}

fn video() -> MediaInput {
    let t = videollama_testutil::load_tensors(&format!("{FIXTURE}/video/expected.safetensors"));
    MediaInput::video(t["pixel_values"].clone())
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> (f32, f32) {
    let d = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let m = b
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    (d, m)
}

/// `--llm FILE.gguf` with F32 tensors: the logits of every step are the dense path's within
/// the golden tolerance, for a text and a video question, and the ids are equal.
#[test]
fn llm_gguf_f32_gives_the_dense_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, _) = fixture_llm();
    let gguf = tmp.path().join("llm-f32.gguf");
    write_llm(&gguf, &cfg, GgmlDType::F32, false);
    let dense = Pipeline::load(&checkpoint(), &LoadOptions::default()).unwrap();
    let from_gguf = Pipeline::load(
        &checkpoint(),
        &LoadOptions {
            llm_gguf: Some(gguf),
            ..LoadOptions::default()
        },
    )
    .unwrap();
    for (what, media) in [("text", MediaInput::none()), ("video", video())] {
        let want = answer(&dense, &media, 12);
        let got = answer(&from_gguf, &media, 12);
        assert_eq!(got.input_ids, want.input_ids, "{what}: prompt ids");
        assert_close(
            &format!("{what}: logits_steps"),
            &got.tensors["logits_steps"],
            &want.tensors["logits_steps"],
        );
        assert_eq!(got.token_ids, want.token_ids, "{what}: generated ids");
    }
}

/// `--llm FILE.gguf` with Q8_0 linear weights (the fast mode keeps them as stored): the
/// first step's logits stay within 5 % of the largest dense logit (measured: about 2 %),
/// and a short greedy generation gives the same ids.
#[test]
fn llm_gguf_q8_0_tracks_the_dense_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, _) = fixture_llm();
    let gguf = tmp.path().join("llm-q8_0.gguf");
    write_llm(&gguf, &cfg, GgmlDType::Q8_0, false);
    let dense = Pipeline::load(&checkpoint(), &LoadOptions::default()).unwrap();
    let mut opts = LoadOptions {
        llm_gguf: Some(gguf),
        ..LoadOptions::default()
    };
    opts.weights.quantize_llm = Some(WeightFormat::Q8_0);
    let from_gguf = Pipeline::load(&checkpoint(), &opts).unwrap();
    let want = answer(&dense, &MediaInput::none(), 6);
    let got = answer(&from_gguf, &MediaInput::none(), 6);
    let (d, m) = max_abs_diff(&got.tensors["logits_last"], &want.tensors["logits_last"]);
    assert!(
        d <= 0.05 * m.max(1.0),
        "Q8_0 GGUF: max |Δlogit| {d} (max |logit| {m})"
    );
    assert_eq!(got.token_ids, want.token_ids, "Q8_0 GGUF: greedy ids");
}

/// A GGUF whose shapes differ from the checkpoint's config.json is refused, naming both.
#[test]
fn llm_gguf_that_does_not_fit_names_both_files() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut cfg, _) = fixture_llm();
    cfg.num_hidden_layers = 1;
    let gguf = tmp.path().join("one-layer.gguf");
    write_llm(&gguf, &cfg, GgmlDType::F32, false);
    let err = Pipeline::load(
        &checkpoint(),
        &LoadOptions {
            llm_gguf: Some(gguf.clone()),
            ..LoadOptions::default()
        },
    )
    .err()
    .expect("a one-layer GGUF must not load on a two-layer checkpoint")
    .to_string();
    assert!(err.contains(&gguf.display().to_string()), "{err}");
    assert!(err.contains("config.json"), "{err}");
    assert!(err.contains("num_hidden_layers 1 vs 2"), "{err}");
}

/// `--model FILE.gguf`: a text-only pipeline with the tokenizer, chat template and eos from
/// the metadata. The prompt is the template's rendering of the question as typed, tokenized
/// as the checkpoint's tokenizer.json does, and generation equals the dense checkpoint
/// LLM's on those ids.
#[test]
fn gguf_model_file_is_a_text_pipeline() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, _) = fixture_llm();
    let gguf = tmp.path().join("tiny-qwen2.gguf");
    write_llm(&gguf, &cfg, GgmlDType::F32, true);
    let p = Pipeline::load(&gguf, &LoadOptions::default()).unwrap();
    assert!(p.model.visual.is_none() && p.model.audio.is_none());
    assert_eq!(p.eos_ids(), vec![1023]);
    let got = answer(&p, &MediaInput::none(), 8);
    assert_eq!(
        got.prompt,
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n\
         What is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    );
    let ckpt = Pipeline::load(&checkpoint(), &LoadOptions::default()).unwrap();
    let want_ids: Vec<i64> = ckpt
        .tokenizer
        .encode(got.prompt.as_str(), false)
        .unwrap()
        .get_ids()
        .iter()
        .map(|&i| i as i64)
        .collect();
    assert_eq!(got.input_ids, want_ids, "GGUF tokenizer vs tokenizer.json");
    let embeds = ckpt.model.splice(&got.input_ids, &[]).unwrap();
    let want = generate(
        &ckpt.model.llm,
        &embeds,
        &GenerateOptions {
            stop_sequences: Vec::new(),
            max_new_tokens: 8,
            sampling: videollama_llm::SamplingParams::greedy(),
            eos_ids: p.eos_ids(),
            record_logits: false,
            min_new_tokens: 0,
        },
        |_| true,
    )
    .unwrap();
    assert_eq!(got.token_ids, want.token_ids);
    // No vision tower: a video is refused with a clear message.
    let err = p.encode_media(&video()).err().unwrap().to_string();
    assert!(err.contains("no vision tower"), "{err}");
}

/// Missing, truncated and non-GGUF files: one error naming the file, never a panic.
#[test]
fn bad_gguf_files_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing.gguf");
    let err = Pipeline::load(&missing, &LoadOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("missing.gguf") && err.contains("no such file"),
        "{err}"
    );

    let (cfg, _) = fixture_llm();
    let good = tmp.path().join("good.gguf");
    write_llm(&good, &cfg, GgmlDType::Q8_0, true);
    let bytes = std::fs::read(&good).unwrap();
    let cut = tmp.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = Pipeline::load(&cut, &LoadOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("cut.gguf") && err.contains("truncated"),
        "{err}"
    );
    let err = Pipeline::load(
        &checkpoint(),
        &LoadOptions {
            llm_gguf: Some(cut.clone()),
            ..LoadOptions::default()
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("cut.gguf") && err.contains("truncated"),
        "{err}"
    );

    // A GGUF without tokenizer metadata cannot be a text pipeline.
    let bare = tmp.path().join("bare.gguf");
    write_llm(&bare, &cfg, GgmlDType::F32, false);
    let err = Pipeline::load(&bare, &LoadOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("bare.gguf") && err.contains("tokenizer"),
        "{err}"
    );
}

/// A copy of the fixture checkpoint whose `config.json` names `gguf` in `llm_gguf` and
/// which has no tokenizer files of its own.
fn folder_naming_gguf(dir: &Path, gguf_name: &str) -> PathBuf {
    let out = dir.join("ckpt");
    std::fs::create_dir_all(&out).unwrap();
    for entry in std::fs::read_dir(checkpoint()).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if p.is_file() && !name.starts_with("tokenizer") && name != "special_tokens_map.json" {
            std::fs::copy(&p, out.join(&name)).unwrap();
        }
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    cfg["llm_gguf"] = gguf_name.into();
    // The fixture keeps its tower beside the checkpoint folder: point at it.
    let tower = checkpoint()
        .parent()
        .unwrap()
        .join(cfg["mm_vision_tower"].as_str().unwrap());
    cfg["mm_vision_tower"] = tower.display().to_string().into();
    std::fs::write(out.join("config.json"), cfg.to_string()).unwrap();
    out
}

/// config.json `llm_gguf` (our default model's layout): the language model, tokenizer, chat
/// template and eos all come from the GGUF named there, exactly as with `--llm` plus the
/// GGUF's own tokenizer; a peft adapter at the top level is merged into it at load
/// (each projection = W + α/r·B·A computed by hand); a missing file names the key.
#[test]
fn config_llm_gguf_brings_the_language_model_and_tokenizer() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, _) = fixture_llm();
    let dir = folder_naming_gguf(tmp.path(), "lm.gguf");
    let err = Pipeline::load(&dir, &LoadOptions::default())
        .err()
        .expect("the GGUF is not there yet")
        .to_string();
    assert!(err.contains("lm.gguf") && err.contains("llm_gguf"), "{err}");

    write_llm(&dir.join("lm.gguf"), &cfg, GgmlDType::F32, true);
    let dense = Pipeline::load(&checkpoint(), &LoadOptions::default()).unwrap();
    let from_config = Pipeline::load(&dir, &LoadOptions::default()).unwrap();
    for (what, media) in [("text", MediaInput::none()), ("video", video())] {
        let want = answer(&dense, &media, 8);
        let got = answer(&from_config, &media, 8);
        assert_eq!(got.input_ids, want.input_ids, "{what}: prompt ids");
        assert_close(
            &format!("{what}: logits_steps"),
            &got.tensors["logits_steps"],
            &want.tensors["logits_steps"],
        );
        assert_eq!(got.token_ids, want.token_ids, "{what}: generated ids");
    }

    // A top-level peft adapter on q_proj and down_proj.
    let (r, alpha) = (2usize, 4.0f64);
    let mut adapter = HashMap::new();
    let mut seed = 1u32;
    let mut rand = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    };
    let targets = ["q_proj", "down_proj"];
    let mut modules = Vec::new();
    for (name, linear) in from_config.model.llm.linears() {
        if !targets.iter().any(|t| name.ends_with(t)) {
            continue;
        }
        let (o, i) = (linear.out_dim(), linear.in_dim());
        let a = Tensor::from_vec(rand(r * i), (r, i), &Device::Cpu).unwrap();
        let b = Tensor::from_vec(rand(o * r), (o, r), &Device::Cpu).unwrap();
        adapter.insert(format!("base_model.model.{name}.lora_A.weight"), a);
        adapter.insert(format!("base_model.model.{name}.lora_B.weight"), b);
        modules.push((name, linear.weight().unwrap().clone()));
    }
    candle_core::safetensors::save(&adapter, dir.join("adapter_model.safetensors")).unwrap();
    std::fs::write(
        dir.join("adapter_config.json"),
        serde_json::json!({"peft_type": "LORA", "r": r, "lora_alpha": alpha,
            "target_modules": targets})
        .to_string(),
    )
    .unwrap();
    let adapted = Pipeline::load(&dir, &LoadOptions::default()).unwrap();
    assert!(adapted.weights.contains("LoRA r=2"), "{}", adapted.weights);
    let loaded: HashMap<String, Tensor> = adapted
        .model
        .llm
        .linears()
        .into_iter()
        .map(|(n, l)| (n, l.weight().unwrap().clone()))
        .collect();
    assert_eq!(modules.len(), 2 * cfg.num_hidden_layers);
    for (name, base) in &modules {
        let a = &adapter[&format!("base_model.model.{name}.lora_A.weight")];
        let b = &adapter[&format!("base_model.model.{name}.lora_B.weight")];
        let by_hand = (base + (b.matmul(a).unwrap() * (alpha / r as f64)).unwrap()).unwrap();
        let (d, _) = max_abs_diff(&loaded[name], &by_hand);
        assert!(d <= 1e-6, "{name}: merged weight differs by {d}");
    }
    // An adapter that does not fit is an error naming the adapter file.
    std::fs::write(
        dir.join("adapter_config.json"),
        serde_json::json!({"peft_type": "LORA", "r": 3, "lora_alpha": alpha,
            "target_modules": targets})
        .to_string(),
    )
    .unwrap();
    let err = Pipeline::load(&dir, &LoadOptions::default())
        .err()
        .expect("r=3 does not fit rank-2 tensors")
        .to_string();
    assert!(err.contains("adapter_model.safetensors"), "{err}");
}
