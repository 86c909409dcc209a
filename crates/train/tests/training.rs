//! Training on the tiny golden checkpoints (random weights, so only the mechanics are
//! checked): the loss falls on a fixed batch, gradients equal central finite differences,
//! a resumed run equals an uninterrupted one bit for bit, trained folders load and answer,
//! bad samples are skipped with their lines, and training inputs equal inference's.

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use videollama_pipeline::media::MediaRequest;
use videollama_pipeline::{AnswerOptions, LoadOptions, Pipeline};
use videollama_testutil::{assert_close, golden};
use videollama_train::*;

const MISTRAL: &str = "videollama2-mistral-tiny";
const QWEN: &str = "videollama2.1-qwen2-tiny";

fn checkpoint(fx: &str) -> PathBuf {
    golden(&format!("{fx}/checkpoint"))
}

fn input(fx: &str, name: &str) -> PathBuf {
    golden(&format!("{fx}/inputs/{name}"))
}

/// A video sample and a two-turn image sample made from the fixture's inputs.
fn write_data(dir: &Path, fx: &str) -> PathBuf {
    let data = serde_json::json!([
        {"video": input(fx, "video.mp4"), "conversations": [
            {"from": "human", "value": "<video>\nWhat colour is the square?"},
            {"from": "gpt", "value": "The square is red."}]},
        {"image": input(fx, "image.png"), "conversations": [
            {"from": "human", "value": "What is this?\n<image>"},
            {"from": "gpt", "value": "A green circle."},
            {"from": "human", "value": "Is it moving?"},
            {"from": "gpt", "value": "No."}]},
    ]);
    let path = dir.join(format!("{fx}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(&data).unwrap()).unwrap();
    path
}

fn config(out: PathBuf, stage: Stage, steps: usize) -> TrainConfig {
    TrainConfig {
        stage,
        learning_rate: 1e-2,
        max_steps: Some(steps),
        warmup_steps: Some(0),
        grad_accum: 2,
        lora_r: 4,
        lora_alpha: 8.0,
        out_dir: out,
        ..Default::default()
    }
}

fn answer(dir: &Path, fx: &str, question: &str) -> (String, Vec<u32>) {
    let p = Pipeline::load(dir, &LoadOptions::default()).unwrap();
    let req = MediaRequest {
        video: Some(input(fx, "video.mp4")),
        ..Default::default()
    };
    let (media, _) = p.prepare_media(&req).unwrap();
    let enc = p.encode_media(&media).unwrap();
    let opts = AnswerOptions {
        max_new_tokens: 10,
        ..Default::default()
    };
    let a = p
        .answer(&[question.to_string()], &enc, &opts, |_| true)
        .unwrap();
    (a.answer, a.token_ids)
}

fn safetensors(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

/// Every tensor of a checkpoint folder's shards.
fn folder_tensors(dir: &Path) -> HashMap<String, Tensor> {
    videollama_pipeline::checkpoint::find_weight_files(dir)
        .unwrap()
        .iter()
        .flat_map(|p| safetensors(p))
        .collect()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Stage 1 (connector only, Mistral fixture) and stage 2 (connector + LoRA, Qwen2 fixture)
/// on a fixed batch of two samples (20 steps, grad_accum 2): the loss falls at every step;
/// the log, the curve and the state files are written.
#[test]
fn loss_goes_down_on_a_fixed_batch() {
    let dir = tempfile::tempdir().unwrap();
    for (fx, stage, min_drop) in [
        (MISTRAL, Stage::Connector, 0.01),
        (QWEN, Stage::ConnectorLora, 0.25),
    ] {
        let data = write_data(dir.path(), fx);
        let cfg = config(dir.path().join(format!("{fx}-out")), stage, 20);
        let mut steps = 0;
        let report = train(&checkpoint(fx), &data, &cfg, |e| {
            if let TrainEvent::Step(s) = e {
                steps += 1;
                assert!(s.loss.is_finite() && s.tokens > 0 && s.tokens_per_s > 0.0);
            }
        })
        .unwrap();
        let l = &report.losses;
        eprintln!("{fx} {stage:?}: loss {:.4} → {:.4}", l[0], l[19]);
        assert_eq!(
            (steps, l.len(), report.steps, report.finished),
            (20, 20, 20, true)
        );
        for w in l.windows(2) {
            assert!(w[1] < w[0] + 1e-4, "{fx}: loss rose {} → {}", w[0], w[1]);
        }
        assert!(
            l[19] < l[0] * (1.0 - min_drop),
            "{fx}: {} → {}",
            l[0],
            l[19]
        );
        let log = std::fs::read_to_string(cfg.out_dir.join("train_log.jsonl")).unwrap();
        let lines: Vec<StepLog> = log
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 20);
        assert_eq!(lines[19].loss, l[19]);
        for f in [
            "loss_curve.png",
            "trainer_state.json",
            "optimizer.safetensors",
        ] {
            assert!(cfg.out_dir.join(f).is_file(), "{f}");
        }
        assert_eq!(report.lora_modules.is_empty(), stage == Stage::Connector);
    }
}

/// d loss / d θ by backward equals central finite differences in f64 (ε = 1e-5), for
/// connector tensors (1×1 convs, the depthwise 3×3 taps, a LayerNorm weight, the Conv3d
/// sampler, the readout) and LoRA A / B: |fd − g| ≤ 1e-6 · max(|fd|, |g|) + 1e-10.
#[test]
fn gradients_match_central_finite_differences_in_f64() {
    let dir = tempfile::tempdir().unwrap();
    let fx = MISTRAL;
    let data = write_data(dir.path(), fx);
    let pipeline = Pipeline::load(&checkpoint(fx), &LoadOptions::default()).unwrap();
    let opts = PrepareOptions {
        max_samples: None,
        max_seq_len: None,
        feature_cache: FeatureCache::Memory,
        pad_to_square: false,
        pack_by_media: false,
    };
    let ds = prepare_dataset(&pipeline, &data, &opts, |_, _, _| {}).unwrap();
    assert_eq!(ds.samples.len(), 2);
    let spec = ModelSpec {
        train_connector: true,
        train_audio_projector: false,
        lora: Some(LoraSpec {
            r: 2,
            alpha: 4.0,
            targets: vec!["q_proj".into(), "v_proj".into(), "down_proj".into()],
        }),
        seed: 3,
    };
    let mut model = TrainModel::load(&checkpoint(fx), &spec, DType::F64, &Device::Cpu).unwrap();
    let vars: HashMap<String, candle_core::Var> = model.trainable().into_iter().collect();
    // B = 0 at initialisation gives A no gradient: give B small values first.
    for (name, var) in &vars {
        if name.contains("lora_B") {
            let v = Tensor::randn(0f64, 0.05, var.shape(), &Device::Cpu).unwrap();
            var.set(&v).unwrap();
        }
    }
    model.refresh().unwrap();
    let sample = &ds.samples[0];
    let features = sample.features().unwrap();
    let loss_of = |m: &TrainModel| -> f64 {
        m.sample_loss(sample, &features)
            .unwrap()
            .loss
            .to_scalar::<f64>()
            .unwrap()
    };
    let sl = model.sample_loss(sample, &features).unwrap();
    assert_eq!(sl.loss.dtype(), DType::F64);
    let grads = sl.loss.backward().unwrap();
    let checked = [
        "model.mm_projector.s1.b1.conv1.conv.weight",
        "model.mm_projector.s1.b1.conv2.conv.weight",
        "model.mm_projector.s1.b2.conv3.bn.weight",
        "model.mm_projector.sampler.0.weight",
        "model.mm_projector.s2.b4.se.fc2.bias",
        "model.mm_projector.readout.2.weight",
        "model.layers.0.self_attn.q_proj.lora_A.weight",
        "model.layers.1.self_attn.v_proj.lora_B.weight",
        "model.layers.1.mlp.down_proj.lora_A.weight",
    ];
    let eps = 1e-5;
    let mut worst = 0f64;
    for name in checked {
        let var = &vars[name];
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient"))
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let base = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        // The largest gradient entry, plus two fixed ones.
        let imax = (0..g.len())
            .max_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs()))
            .unwrap();
        for i in [imax, 0, g.len() / 2] {
            let mut eval = |delta: f64| {
                let mut p = base.clone();
                p[i] += delta;
                var.set(&Tensor::from_vec(p, var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                model.refresh().unwrap();
                loss_of(&model)
            };
            let fd = (eval(eps) - eval(-eps)) / (2.0 * eps);
            let err = (fd - g[i]).abs();
            let rel = err / fd.abs().max(g[i].abs()).max(1e-300);
            eprintln!(
                "{name}[{i}]: backward {:+.6e}, fd {fd:+.6e}, rel {rel:.1e}",
                g[i]
            );
            // Absolute floor = the finite difference's own rounding noise: each f64 loss
            // evaluation (|L| ≈ 7, summed over thousands of terms) carries ~1e-14 of
            // rounding, which the central difference divides by 2·eps = 2e-5 → ~5e-10. A
            // floor of 1e-10 failed on a 3e-5 gradient entry when the reduction order changed
            // (err 1.5e-10); the relative part (1e-6) is what checks the backward pass.
            assert!(
                err <= 1e-6 * fd.abs().max(g[i].abs()) + 1e-9,
                "{name}[{i}]: backward {} vs finite difference {fd}",
                g[i]
            );
            if g[i].abs() > 1e-6 {
                worst = worst.max(rel);
            }
        }
        var.set(&Tensor::from_vec(base, var.shape(), &Device::Cpu).unwrap())
            .unwrap();
        model.refresh().unwrap();
        assert!(g[imax].abs() > 0.0, "{name}: all-zero gradient");
    }
    eprintln!("worst relative error (|g| > 1e-6): {worst:.2e}");
}

/// 6 steps in one run equal 3 steps, an interruption and `resume`: the trained tensors,
/// the moments, the exported weights and the logged losses are bit-identical.
#[test]
fn resume_continues_bit_identically() {
    let dir = tempfile::tempdir().unwrap();
    let fx = MISTRAL;
    let data = write_data(dir.path(), fx);
    let whole = config(dir.path().join("whole"), Stage::ConnectorLora, 6);
    let whole = TrainConfig {
        save_every: 3,
        warmup_steps: Some(2),
        adamw: AdamWConfig {
            weight_decay: 0.01,
            ..Default::default()
        },
        ..whole
    };
    let a = train(&checkpoint(fx), &data, &whole, |_| {}).unwrap();
    assert_eq!((a.steps, a.finished), (6, true));
    // Saved twice: nothing of the first save's temporary names is left (a re-linked,
    // unchanged shard used to leave its `.tmp` name behind).
    let leftovers: Vec<_> = std::fs::read_dir(&whole.out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let parts = TrainConfig {
        out_dir: dir.path().join("parts"),
        stop_after_steps: Some(3),
        ..whole.clone()
    };
    let b1 = train(&checkpoint(fx), &data, &parts, |_| {}).unwrap();
    assert_eq!((b1.steps, b1.finished), (3, false));
    let again = train(&checkpoint(fx), &data, &parts, |_| {});
    assert!(again.unwrap_err().to_string().contains("resume"));
    let mut started_at = None;
    let b2 = resume(&parts.out_dir, &ResumeOptions::default(), |e| {
        if let TrainEvent::Started { start_step, .. } = e {
            started_at = Some(*start_step);
        }
    })
    .unwrap();
    assert_eq!(started_at, Some(3));
    assert_eq!((b2.steps, b2.steps_this_run, b2.finished), (6, 3, true));
    assert_eq!(a.losses, b2.losses);

    let oa = safetensors(&whole.out_dir.join("optimizer.safetensors"));
    let ob = safetensors(&parts.out_dir.join("optimizer.safetensors"));
    assert_eq!(oa.len(), ob.len());
    for (k, t) in &oa {
        assert_eq!(max_abs_diff(t, &ob[k]), 0.0, "{k}");
    }
    let (wa, wb) = (
        folder_tensors(&whole.out_dir),
        folder_tensors(&parts.out_dir),
    );
    for (k, t) in &wa {
        assert_eq!(max_abs_diff(t, &wb[k]), 0.0, "{k}");
    }
    let log = |d: &Path| -> Vec<(usize, f64)> {
        std::fs::read_to_string(d.join("train_log.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let s: StepLog = serde_json::from_str(l).unwrap();
                (s.step, s.loss)
            })
            .collect()
    };
    assert_eq!(log(&whole.out_dir), log(&parts.out_dir));
}

/// A trained output folder loads with `Pipeline::load` and answers: with learning rate 0
/// (LoRA B = 0, connector as loaded) exactly like the base model; after training on one
/// sample, with the trained answer. The exported adapter (peft names) merged into the base
/// weights gives the merged weights; the `separate` export leaves the LLM weights alone.
#[test]
fn trained_folders_load_and_answer() {
    let dir = tempfile::tempdir().unwrap();
    let fx = MISTRAL;
    let question = "What colour is the square?";
    let data = dir.path().join("one.json");
    std::fs::write(
        &data,
        serde_json::json!([{"video": input(fx, "video.mp4"), "conversations": [
            {"from": "human", "value": format!("<video>\n{question}")},
            {"from": "gpt", "value": "The square is red."}]}])
        .to_string(),
    )
    .unwrap();
    let base = checkpoint(fx);
    let base_answer = answer(&base, fx, question);

    let still = TrainConfig {
        learning_rate: 0.0,
        grad_accum: 1,
        ..config(dir.path().join("lr0"), Stage::ConnectorLora, 1)
    };
    train(&base, &data, &still, |_| {}).unwrap();
    assert_eq!(answer(&still.out_dir, fx, question), base_answer);
    let (b, s) = (folder_tensors(&base), folder_tensors(&still.out_dir));
    assert_eq!(b.len(), s.len());
    for (k, t) in &b {
        assert_eq!(max_abs_diff(t, &s[k]), 0.0, "{k} changed at lr 0");
    }

    let trained = TrainConfig {
        learning_rate: 2e-2,
        grad_accum: 1,
        ..config(dir.path().join("trained"), Stage::ConnectorLora, 30)
    };
    let report = train(&base, &data, &trained, |_| {}).unwrap();
    let (text, ids) = answer(&trained.out_dir, fx, question);
    eprintln!(
        "base answer {:?}; trained answer {text:?} {ids:?}",
        base_answer.0
    );
    assert_eq!(text, "The square is red.");
    assert_ne!(base_answer.0, text);

    // The adapter kept apart (OUT/adapter) merged into the base gives OUT's weights.
    let adapter_dir = trained.out_dir.join("adapter");
    let adapter = safetensors(&adapter_dir.join("adapter_model.safetensors"));
    let acfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(adapter_dir.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        (acfg["r"].as_u64(), acfg["lora_alpha"].as_f64()),
        (Some(4), Some(8.0))
    );
    assert_eq!(acfg["peft_type"], "LORA");
    assert_eq!(adapter.len(), 2 * report.lora_modules.len());
    assert_eq!(report.lora_modules.len(), 2 * 7);
    let out = folder_tensors(&trained.out_dir);
    for m in &report.lora_modules {
        let a = &adapter[&format!("base_model.model.{m}.lora_A.weight")];
        let bm = &adapter[&format!("base_model.model.{m}.lora_B.weight")];
        let w = &b[&format!("{m}.weight")];
        let merged = videollama_nn::lora::merge(w, a, bm, 8.0 / 4.0).unwrap();
        assert_eq!(
            max_abs_diff(&merged, &out[&format!("{m}.weight")]),
            0.0,
            "{m}"
        );
        assert!(max_abs_diff(w, &merged) > 0.0, "{m} did not train");
    }
    assert!(
        max_abs_diff(
            &b["model.mm_projector.readout.2.weight"],
            &out["model.mm_projector.readout.2.weight"]
        ) > 0.0
    );

    // Kept apart only: base LLM weights, trained connector, adapter files in OUT.
    let separate = TrainConfig {
        lora_export: LoraExport::Separate,
        ..config(dir.path().join("separate"), Stage::ConnectorLora, 2)
    };
    train(&base, &data, &separate, |_| {}).unwrap();
    let sep = folder_tensors(&separate.out_dir);
    assert!(separate.out_dir.join("adapter_model.safetensors").is_file());
    assert!(separate.out_dir.join("adapter_config.json").is_file());
    for (k, t) in &b {
        let same = max_abs_diff(t, &sep[k]) == 0.0;
        assert_eq!(same, !k.starts_with("model.mm_projector."), "{k}");
    }
    // `Pipeline::load` applies a top-level adapter: each projection of the loaded model is
    // the base weight with the adapter merged by hand (lora::merge on the files' tensors).
    let sep_adapter = safetensors(&separate.out_dir.join("adapter_model.safetensors"));
    let loaded = Pipeline::load(&separate.out_dir, &LoadOptions::default()).unwrap();
    assert!(loaded.weights.contains("LoRA r=4"), "{}", loaded.weights);
    let mut checked = 0;
    for (name, linear) in loaded.model.llm.linears() {
        let a = &sep_adapter[&format!("base_model.model.{name}.lora_A.weight")];
        let bm = &sep_adapter[&format!("base_model.model.{name}.lora_B.weight")];
        let merged = videollama_nn::lora::merge(&b[&format!("{name}.weight")], a, bm, 2.0).unwrap();
        assert!(
            linear.lora().is_none(),
            "{name}: a dense layer is merged at load"
        );
        assert_eq!(
            max_abs_diff(linear.weight().unwrap(), &merged),
            0.0,
            "{name}"
        );
        checked += 1;
    }
    assert_eq!(checked, report.lora_modules.len());
}

/// Missing and unreadable media, an answer longer than the context, malformed turns and a
/// tag without media are reported with their index and line and skipped; the good sample
/// trains.
#[test]
fn bad_samples_are_reported_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let fx = MISTRAL;
    std::fs::write(dir.path().join("broken.mp4"), b"not a video").unwrap();
    std::fs::copy(input(fx, "image.png"), dir.path().join("img.png")).unwrap();
    let long_answer = "red green blue ".repeat(1200);
    let text = format!(
        r#"[
  {{"video": "missing.mp4", "conversations": [
    {{"from": "human", "value": "<video>\nQ"}}, {{"from": "gpt", "value": "A"}}]}},
  {{"video": "broken.mp4", "conversations": [
    {{"from": "human", "value": "<video>\nQ"}}, {{"from": "gpt", "value": "A"}}]}},
  {{"image": "img.png", "conversations": [
    {{"from": "human", "value": "<image>\nQ"}}, {{"from": "gpt", "value": "{long_answer}"}}]}},
  {{"image": "img.png", "conversations": [
    {{"from": "gpt", "value": "A"}}, {{"from": "human", "value": "<image>\nQ"}}]}},
  {{"conversations": [
    {{"from": "human", "value": "<video>\nQ"}}, {{"from": "gpt", "value": "A"}}]}},
  {{"image": "img.png", "conversations": [
    {{"from": "human", "value": "<image>\nWhat is it?"}}, {{"from": "gpt", "value": "A circle."}}]}}
]"#
    );
    let data = dir.path().join("data.json");
    std::fs::write(&data, text).unwrap();
    let mut events = Vec::new();
    let cfg = config(dir.path().join("out"), Stage::Connector, 1);
    let report = train(&checkpoint(fx), &data, &cfg, |e| {
        if let TrainEvent::Skipped(s) = e {
            events.push((*s).clone());
        }
    })
    .unwrap();
    let got: Vec<(usize, usize)> = report.skipped.iter().map(|s| (s.index, s.line)).collect();
    assert_eq!(got, vec![(0, 2), (1, 4), (2, 6), (3, 8), (4, 10)]);
    assert_eq!(events, report.skipped);
    let reasons: Vec<&str> = report.skipped.iter().map(|s| s.reason.as_str()).collect();
    eprintln!("{reasons:#?}");
    assert!(reasons[0].contains("missing.mp4") && reasons[0].contains("no such file"));
    assert!(reasons[1].contains("broken.mp4"));
    assert!(reasons[2].contains("more than the context of 2048"));
    assert!(reasons[3].contains("alternate"));
    assert!(reasons[4].contains("<video>"));
    assert_eq!((report.samples, report.steps), (1, 1));
}

/// The training sequence of a sample starts with exactly the ids `Pipeline::answer` builds,
/// and the training forward gives the inference logits at the last prompt position (the
/// golden tolerance).
#[test]
fn training_inputs_equal_inference() {
    let dir = tempfile::tempdir().unwrap();
    for fx in [MISTRAL, QWEN] {
        let data = write_data(dir.path(), fx);
        let pipeline = Pipeline::load(&checkpoint(fx), &LoadOptions::default()).unwrap();
        let opts = PrepareOptions {
            max_samples: None,
            max_seq_len: None,
            feature_cache: FeatureCache::Memory,
            pad_to_square: false,
            pack_by_media: false,
        };
        let ds = prepare_dataset(&pipeline, &data, &opts, |_, _, _| {}).unwrap();
        let spec = TrainConfig::default().model_spec();
        let model = TrainModel::load(&checkpoint(fx), &spec, DType::F32, &Device::Cpu).unwrap();
        // The two-turn image sample is one sequence (the first answer lies inside it).
        assert_eq!(ds.samples[1].sequences.len(), 1, "{fx}");
        assert_eq!(
            ds.samples[1].sequences[0].targets.len(),
            ds.samples[1].answer_tokens
        );
        for (sample, first_turn) in [
            (&ds.samples[0], "What colour is the square?"),
            (&ds.samples[1], "What is this?"),
        ] {
            let req = if sample.index == 0 {
                MediaRequest {
                    video: Some(input(fx, "video.mp4")),
                    ..Default::default()
                }
            } else {
                MediaRequest {
                    image: Some(input(fx, "image.png")),
                    ..Default::default()
                }
            };
            let (media, _) = pipeline.prepare_media(&req).unwrap();
            let enc = pipeline.encode_media(&media).unwrap();
            let opts = AnswerOptions {
                max_new_tokens: 1,
                collect_tensors: true,
                ..Default::default()
            };
            let a = pipeline
                .answer(&[first_turn.to_string()], &enc, &opts, |_| true)
                .unwrap();
            let seq = &sample.sequences[0];
            let n = a.input_ids.len();
            assert_eq!(&seq.ids[..n], a.input_ids.as_slice(), "{fx}: prompt ids");
            assert_eq!(seq.targets[0].0, n, "{fx}: first target follows the prompt");
            let features = sample.features().unwrap();
            let block = model.media_block(&features).unwrap();
            let (embeds, rows, _) = model
                .splice(&seq.ids, &seq.targets, block.as_ref())
                .unwrap();
            let prompt_rows = a.prompt_tokens;
            assert_close(
                &format!("{fx} inputs_embeds"),
                &embeds.narrow(0, 0, prompt_rows).unwrap(),
                &a.tensors["inputs_embeds"],
            );
            assert_eq!(rows[0] as usize, prompt_rows - 1);
            let logits = model.llm.forward_train(&embeds, Some(&rows[..1])).unwrap();
            assert_close(
                &format!("{fx} logits_last"),
                &logits.squeeze(0).unwrap(),
                &a.tensors["logits_last"],
            );
        }
    }
}

/// Audio-visual checkpoint, stage 2: a video with its sound track and a sound file train
/// the audio projector too; the export carries it under `model.mm_projector_a.*`.
#[test]
fn audio_visual_checkpoint_trains_the_audio_projector() {
    let dir = tempfile::tempdir().unwrap();
    let fx = "videollama2.1-av-tiny";
    let data = serde_json::json!([
        {"video": input(fx, "video_av.mp4"), "conversations": [
            {"from": "human", "value": "<video>\nWhat do you hear?"},
            {"from": "gpt", "value": "A beep."}]},
        {"audio": input(fx, "audio.wav"), "conversations": [
            {"from": "human", "value": "<audio>\nWhat is this sound?"},
            {"from": "gpt", "value": "A voice."}]},
    ]);
    let path = dir.path().join("av.json");
    std::fs::write(&path, data.to_string()).unwrap();
    let cfg = TrainConfig {
        lora_r: 2,
        ..config(dir.path().join("out"), Stage::ConnectorLora, 1)
    };
    let report = train(&checkpoint(fx), &path, &cfg, |_| {}).unwrap();
    assert_eq!((report.samples, report.steps), (2, 1));
    let base = folder_tensors(&checkpoint(fx));
    let out = folder_tensors(&cfg.out_dir);
    for name in [
        "model.mm_projector_a.0.weight",
        "model.mm_projector_a.2.bias",
        "model.mm_projector.readout.0.weight",
    ] {
        assert!(
            max_abs_diff(&base[name], &out[name]) > 0.0,
            "{name} did not train"
        );
    }
    assert_eq!(
        max_abs_diff(
            &base["model.audio_tower.encoder.layers.0.fc1.weight"],
            &out["model.audio_tower.encoder.layers.0.fc1.weight"]
        ),
        0.0
    );
    Pipeline::load(&cfg.out_dir, &LoadOptions::default()).unwrap();
}
