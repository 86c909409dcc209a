//! The vision-tower trainer (`videollama_train::tower`): patch labels against hand-counted
//! and rendered ground truth, the loss going down, a finite-difference gradient check, and
//! the export read back through the pipeline's SigLIP tower code.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use std::path::{Path, PathBuf};
use videollama_demodata::{
    clip_meta, render_frame, Background, ClipMeta, ColorName, DemoDataConfig, Motion, ObjectMeta,
    ShapeKind,
};
use videollama_encoders::VisionTower;
use videollama_media::image_processor::{ImageProcessorConfig, ResizeTarget};
use videollama_media::resize::Filter;
use videollama_train::tower::{
    evaluate, patch_labels, train_vision_tower, Batch, FrameSample, TowerEvent, TowerModel,
    TowerTrainConfig, TowerTrainer, TOWER_DIR, TOWER_LOG, TOWER_WEIGHTS, VISION_TOWER_PREFIX,
};

fn hand_meta(width: u32, height: u32, objects: Vec<ObjectMeta>) -> ClipMeta {
    ClipMeta {
        id: "hand-00000".into(),
        split: "train".into(),
        video: "clips/hand-00000.mp4".into(),
        width,
        height,
        fps: 25,
        frames: 50,
        duration_s: 2.0,
        background: Background::Dark,
        objects,
        sound: None,
        sample_rate: 0,
        caption: String::new(),
        qa: Vec::new(),
    }
}

fn object(
    shape: ShapeKind,
    color: ColorName,
    size: f64,
    start: [f64; 2],
    v: [f64; 2],
) -> ObjectMeta {
    ObjectMeta {
        shape,
        color,
        motion: if v == [0.0, 0.0] {
            Motion::Static
        } else {
            Motion::Right
        },
        size_px: size,
        start,
        velocity: v,
    }
}

/// A 224×112 frame squashed to 112² with 14-px patches: each patch is 28×14 original
/// pixels (392 pixels). Counted by hand:
/// * red square, side 28, moving right at 28 px/s from x = 70: at frame 25 (1 s) its centre
///   is (98, 49), covering x 84..=111 (exactly column 3) and y 35..=62: row 2 7/14 (50 %),
///   row 3 full, row 4 7/14 (50 %). Centre → patch (3, 3).
/// * green square, side 12, centre (176, 21): x 170..=181 (column 6), y 15..=26 (row 1):
///   144/392 = 37 % → green. Centre → (1, 6).
/// * white circle, diameter 8, centre (20, 100): < 64 pixels of patch (7, 0) → background,
///   but its centre marks (7, 0).
/// * yellow square, side 14, centre (42, 42): x 35..=48 (column 1), y 35..=48: rows 2 and 3
///   get 7 rows each = 98/392 = exactly 25 % → yellow (only < 25 % is background).
///   Centre y = 42 = 3·14 → row 3, (3, 1).
#[test]
fn patch_labels_match_hand_counted_coverage() {
    let meta = hand_meta(
        224,
        112,
        vec![
            object(
                ShapeKind::Square,
                ColorName::Red,
                28.0,
                [70.0, 49.0],
                [28.0, 0.0],
            ),
            object(
                ShapeKind::Square,
                ColorName::Green,
                12.0,
                [176.0, 21.0],
                [0.0, 0.0],
            ),
            object(
                ShapeKind::Circle,
                ColorName::White,
                8.0,
                [20.0, 100.0],
                [0.0, 0.0],
            ),
            object(
                ShapeKind::Square,
                ColorName::Yellow,
                14.0,
                [42.0, 42.0],
                [0.0, 0.0],
            ),
        ],
    );
    let l = patch_labels(&meta, 25, 112, 14, 0.25);
    assert_eq!(l.grid, 8);
    let at = |r: usize, c: usize| r * 8 + c;
    // colour ids: 0 bg, 1 red, 2 green, 3 blue, 4 yellow, 5 white; shapes: 2 square.
    let mut want_colour = vec![0u32; 64];
    for (r, c, k) in [
        (2, 3, 1),
        (3, 3, 1),
        (4, 3, 1),
        (1, 6, 2),
        (2, 1, 4),
        (3, 1, 4),
    ] {
        want_colour[at(r, c)] = k;
    }
    let want_shape: Vec<u32> = want_colour
        .iter()
        .map(|&k| if k > 0 { 2 } else { 0 })
        .collect();
    let mut want_centre = vec![0u32; 64];
    for (r, c) in [(3, 3), (1, 6), (7, 0), (3, 1)] {
        want_centre[at(r, c)] = 1;
    }
    assert_eq!(l.colour, want_colour);
    assert_eq!(l.shape, want_shape);
    assert_eq!(l.centre, want_centre);
    assert_eq!(l.centres_on_grid, 4);
    // At frame 0 the red square is 28 px further left (column 2).
    let l0 = patch_labels(&meta, 0, 112, 14, 0.25);
    assert_eq!(l0.colour[at(3, 2)], 1);
    assert_eq!(l0.colour[at(3, 3)], 0);
    // A stricter threshold drops the 25 % patches.
    let strict = patch_labels(&meta, 25, 112, 14, 0.3);
    assert_eq!(strict.colour[at(2, 1)], 0);
    assert_eq!(strict.colour[at(1, 6)], 2);
}

/// Generated scenes: the labels equal a count of the RENDERED frame's pixels by colour,
/// with patch bounds computed in floating point (`[c·W/g, (c+1)·W/g)` on pixel centres).
#[test]
fn patch_labels_match_rendered_frames() {
    let cfg = DemoDataConfig::new(12, 0, 0);
    let (s, p) = (112usize, 14usize);
    let g = s / p;
    let mut checked_fg = 0;
    for i in 0..12 {
        let meta = clip_meta(&cfg, &cfg.splits[0], i).unwrap();
        for frame in [0, meta.frames / 2, meta.frames - 1] {
            let img = render_frame(&meta, frame);
            let (w, h) = (meta.width as usize, meta.height as usize);
            let mut counts = vec![[0usize; 6]; g * g]; // [total, per ColorName]
            for y in 0..h {
                let r = ((y as f64 + 0.5) * g as f64 / h as f64).floor() as usize;
                for x in 0..w {
                    let c = ((x as f64 + 0.5) * g as f64 / w as f64).floor() as usize;
                    let cell = &mut counts[r * g + c];
                    cell[0] += 1;
                    let px = img.pixel(x as u32, y as u32);
                    if let Some(k) = ColorName::ALL.iter().position(|c| c.rgb() == px) {
                        cell[1 + k] += 1;
                    }
                }
            }
            let l = patch_labels(&meta, frame, s, p, 0.25);
            for (cell, n) in counts.iter().enumerate() {
                let covered: usize = n[1..].iter().sum();
                let want = if (covered as f64) < 0.25 * n[0] as f64 {
                    0
                } else {
                    // Largest colour share; ties to the earlier-drawn object.
                    let mut best: Option<(usize, usize)> = None; // (count, object index)
                    for (oi, o) in meta.objects.iter().enumerate() {
                        let k = ColorName::ALL.iter().position(|&c| c == o.color).unwrap();
                        if best.is_none_or(|(bc, _)| n[1 + k] > bc) {
                            best = Some((n[1 + k], oi));
                        }
                    }
                    let o = &meta.objects[best.unwrap().1];
                    1 + ColorName::ALL.iter().position(|&c| c == o.color).unwrap() as u32
                };
                assert_eq!(l.colour[cell], want, "clip {i} frame {frame} patch {cell}");
                if want > 0 {
                    checked_fg += 1;
                    let o = meta
                        .objects
                        .iter()
                        .find(|o| {
                            1 + ColorName::ALL.iter().position(|&c| c == o.color).unwrap() as u32
                                == want
                        })
                        .unwrap();
                    let shape =
                        1 + ShapeKind::ALL.iter().position(|&s| s == o.shape).unwrap() as u32;
                    assert_eq!(l.shape[cell], shape);
                } else {
                    assert_eq!(l.shape[cell], 0);
                }
            }
            let mut want_centre = vec![0u32; g * g];
            for o in &meta.objects {
                let [cx, cy] = o.center_at(frame, meta.fps);
                let c = (cx / w as f64 * g as f64).floor() as usize;
                let r = (cy / h as f64 * g as f64).floor() as usize;
                want_centre[r * g + c] = 1;
            }
            assert_eq!(l.centre, want_centre, "clip {i} frame {frame}");
        }
    }
    assert!(checked_fg > 100, "only {checked_fg} object patches checked");
}

/// A tiny tower: 28 px, patch 14 (2×2 grid), width 16.
fn tiny_config(layers: usize) -> TowerTrainConfig {
    TowerTrainConfig {
        image_size: 28,
        patch_size: 14,
        hidden_size: 16,
        intermediate_size: 32,
        num_hidden_layers: layers,
        num_attention_heads: 2,
        ..Default::default()
    }
}

/// Frames rendered from generated scenes (no video needed), preprocessed as in training.
fn rendered_samples(cfg: &TowerTrainConfig, n: usize) -> Vec<FrameSample> {
    let demo = DemoDataConfig::new(n, 0, 0);
    let processor = cfg.image_processor().unwrap();
    (0..n)
        .map(|i| {
            let meta = clip_meta(&demo, &demo.splits[0], i).unwrap();
            let f = (i * 7) % meta.frames;
            FrameSample::new(&meta, f, &render_frame(&meta, f), &processor, cfg).unwrap()
        })
        .collect()
}

#[test]
fn loss_goes_down_on_a_fixed_batch() {
    let mut cfg = tiny_config(1);
    cfg.learning_rate = 1e-2;
    cfg.steps = 40;
    cfg.warmup_steps = 2;
    cfg.weight_decay = 0.0;
    let samples = rendered_samples(&cfg, 4);
    let refs: Vec<&FrameSample> = samples.iter().collect();
    let processor = cfg.image_processor().unwrap();
    let batch = Batch::new(&refs, &processor, DType::F32, &Device::Cpu).unwrap();
    let model =
        TowerModel::new(&cfg.siglip_config().unwrap(), 3, DType::F32, &Device::Cpu).unwrap();
    let mut trainer = TowerTrainer::new(model, &cfg).unwrap();
    let first = trainer.train_step(&batch).unwrap();
    let mut last = first.clone();
    for _ in 1..cfg.steps {
        last = trainer.train_step(&batch).unwrap();
    }
    assert!(first.loss.is_finite() && first.loss > 1.0, "{}", first.loss);
    assert!(
        last.loss < 0.3 * first.loss,
        "loss {} → {}",
        first.loss,
        last.loss
    );
    assert_eq!(trainer.step_count(), cfg.steps);
}

fn set_entry(var: &candle_core::Var, idx: usize, value: f64) {
    let shape = var.as_tensor().shape().clone();
    let mut v = var
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    v[idx] = value;
    var.set(&Tensor::from_vec(v, shape, &Device::Cpu).unwrap())
        .unwrap();
}

/// Backward of the whole model (two layers, so gradients cross a layer norm, the attention
/// softmax and the tanh-GELU MLP) against central differences in f64.
#[test]
fn gradients_match_finite_differences() {
    let cfg = tiny_config(2);
    let samples = rendered_samples(&cfg, 2);
    let refs: Vec<&FrameSample> = samples.iter().collect();
    let processor = cfg.image_processor().unwrap();
    let batch = Batch::new(&refs, &processor, DType::F64, &Device::Cpu).unwrap();
    let model =
        TowerModel::new(&cfg.siglip_config().unwrap(), 11, DType::F64, &Device::Cpu).unwrap();
    let loss = model.loss(&batch).unwrap().total;
    let grads = loss.backward().unwrap();
    let vars = model.vars();
    // Every tower tensor but the unused post_layernorm gets a gradient.
    for (name, var) in &vars {
        let g = grads.get(var.as_tensor());
        if name.starts_with("post_layernorm") {
            assert!(g.is_none(), "{name}");
        } else {
            let g = g.unwrap_or_else(|| panic!("no gradient for {name}"));
            let norm = g
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            assert!(norm > 0.0, "zero gradient for {name}");
        }
    }
    let checked = [
        "embeddings.patch_embedding.weight",
        "embeddings.patch_embedding.bias",
        "embeddings.position_embedding.weight",
        "encoder.layers.0.layer_norm1.weight",
        "encoder.layers.0.layer_norm1.bias",
        "encoder.layers.0.self_attn.q_proj.weight",
        "encoder.layers.0.self_attn.k_proj.weight",
        "encoder.layers.0.self_attn.v_proj.bias",
        "encoder.layers.0.self_attn.out_proj.weight",
        "encoder.layers.0.layer_norm2.weight",
        "encoder.layers.0.mlp.fc1.weight",
        "encoder.layers.1.layer_norm1.bias",
        "encoder.layers.1.mlp.fc2.weight",
        "heads.colour.weight",
        "heads.centre.bias",
    ];
    let h = 1e-5;
    let mut n_checked = 0;
    for name in checked {
        let var = &vars.iter().find(|(n, _)| n == name).unwrap().1;
        let g = grads
            .get(var.as_tensor())
            .unwrap()
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
        for k in 0..3 {
            let idx = (k * 7919 + 13) % base.len();
            let eval = |x: f64| {
                set_entry(var, idx, x);
                let l = model
                    .loss(&batch)
                    .unwrap()
                    .total
                    .to_scalar::<f64>()
                    .unwrap();
                set_entry(var, idx, base[idx]);
                l
            };
            let fd = (eval(base[idx] + h) - eval(base[idx] - h)) / (2.0 * h);
            let an = g[idx];
            let tol = 1e-5 * an.abs().max(fd.abs()) + 1e-9;
            assert!(
                (an - fd).abs() <= tol,
                "{name}[{idx}]: backward {an:e}, finite difference {fd:e}"
            );
            n_checked += 1;
        }
    }
    assert_eq!(n_checked, 45);
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Train a few steps, export, and read the folder back the way the pipeline does
/// (`resolve_vision_tower` → `VisionTower::new` under the checkpoint prefix): the same patch
/// features as the training-time (Var, differentiable) forward on the same pixels.
#[test]
fn export_loads_through_the_pipeline_tower_with_identical_features() {
    let mut cfg = tiny_config(2);
    cfg.steps = 3;
    let samples = rendered_samples(&cfg, 3);
    let refs: Vec<&FrameSample> = samples.iter().collect();
    let processor = cfg.image_processor().unwrap();
    let batch = Batch::new(&refs, &processor, DType::F32, &Device::Cpu).unwrap();
    let model =
        TowerModel::new(&cfg.siglip_config().unwrap(), 5, DType::F32, &Device::Cpu).unwrap();
    let mut trainer = TowerTrainer::new(model, &cfg).unwrap();
    for _ in 0..3 {
        trainer.train_step(&batch).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    trainer.model.export(dir.path(), &cfg).unwrap();

    let tower_dir = dir.path().join(TOWER_DIR);
    let resolved = videollama_pipeline::tower::resolve_vision_tower(
        tower_dir.to_str().unwrap(),
        Path::new("/nonexistent"),
    )
    .unwrap();
    assert_eq!(
        resolved.config,
        videollama_encoders::VisionTowerConfig::Siglip(cfg.siglip_config().unwrap())
    );
    // The exported preprocessor is read as the one training used.
    let pre =
        ImageProcessorConfig::from_hf_json(&resolved.preprocessor.unwrap().to_string()).unwrap();
    assert_eq!(pre, processor);
    assert_eq!(
        pre.size,
        ResizeTarget::Exact {
            height: 28,
            width: 28
        }
    );
    assert_eq!(pre.resample, Filter::Bicubic);
    assert_eq!(pre.image_mean, [0.5; 3]);

    let weights = dir.path().join(TOWER_WEIGHTS);
    let st = candle_core::safetensors::load(&weights, &Device::Cpu).unwrap();
    assert!(st.keys().all(|k| k.starts_with(VISION_TOWER_PREFIX)));
    assert!(st.contains_key(&format!("{VISION_TOWER_PREFIX}.post_layernorm.weight")));
    assert!(st.contains_key(&format!(
        "{VISION_TOWER_PREFIX}.encoder.layers.1.self_attn.out_proj.bias"
    )));
    assert!(!st.keys().any(|k| k.contains("heads")));
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, &Device::Cpu) }
        .unwrap();
    let tower =
        VisionTower::new(&resolved.config, -1, "patch", vb.pp(VISION_TOWER_PREFIX)).unwrap();
    assert_eq!(tower.num_layers_run(), 2);
    let want = trainer.model.features(&batch.pixel_values).unwrap();
    assert!(
        want.track_op(),
        "the training forward must be differentiable"
    );
    let got = tower.forward(&batch.pixel_values).unwrap();
    assert_eq!(got.dims(), &[3, 4, 16]);
    let d = max_abs_diff(&got, &want.detach());
    assert!(d < 1e-5, "max |Δ| = {d}");

    // evaluate() (inference tower + heads) agrees with argmax of the training forward.
    let e = evaluate(&trainer.model, &samples, &processor, 2).unwrap();
    let [lc, _, lz] = trainer.model.head_logits(&want).unwrap();
    let pc = lc.argmax(1).unwrap().to_vec1::<u32>().unwrap();
    let pz = lz.argmax(1).unwrap().to_vec1::<u32>().unwrap();
    let truth_c: Vec<u32> = samples
        .iter()
        .flat_map(|s| s.labels.colour.clone())
        .collect();
    let truth_z: Vec<u32> = samples
        .iter()
        .flat_map(|s| s.labels.centre.clone())
        .collect();
    let acc = |p: &[u32], t: &[u32]| {
        p.iter().zip(t).filter(|(a, b)| a == b).count() as f64 / t.len() as f64
    };
    assert_eq!(e.patches, 12);
    assert!((e.colour_acc - acc(&pc, &truth_c)).abs() < 1e-12, "{e:?}");
    assert!((e.centre_acc - acc(&pz, &truth_z)).abs() < 1e-12, "{e:?}");
}

/// Clips of a tiny generated dataset (no sound) in `dir`.
fn tiny_dataset(dir: &Path) {
    let mut cfg = DemoDataConfig::new(2, 1, 0);
    cfg.splits.truncate(2);
    for s in &mut cfg.splits {
        s.layout.width = vec![(224, 260)];
        s.layout.height = vec![(224, 240)];
    }
    cfg.duration_s = (2.0, 2.2);
    cfg.with_audio = false;
    cfg.espeak_program = PathBuf::from("/nonexistent/espeak-ng");
    videollama_demodata::generate(dir, &cfg, |_| {}).unwrap();
}

/// The whole run on decoded MP4 frames: files, log, metrics, and a clear error without data.
#[test]
fn end_to_end_run_on_generated_clips() {
    let data = tempfile::tempdir().unwrap();
    tiny_dataset(data.path());
    let out = tempfile::tempdir().unwrap();
    let mut cfg = tiny_config(1);
    cfg.steps = 4;
    cfg.batch_size = 3;
    cfg.frames_per_clip = 3;
    cfg.eval_every = 2;
    cfg.out_dir = out.path().join("run");
    let mut events = Vec::new();
    let report = train_vision_tower(data.path(), &cfg, |e| events.push(e.clone())).unwrap();
    assert_eq!((report.train_clips, report.train_frames), (2, 6));
    assert_eq!((report.val_clips, report.val_frames), (1, 2));
    assert_eq!(report.steps, 4);
    let steps: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            TowerEvent::Step(s) => Some(s),
            _ => None,
        })
        .collect();
    assert_eq!(steps.len(), 4);
    assert!(steps[1].val.is_some() && steps[3].val.is_some() && steps[0].val.is_none());
    let v = report.final_val.unwrap();
    for m in [
        v.colour_acc,
        v.shape_acc,
        v.centre_acc,
        v.colour_fg_acc,
        v.count_acc,
    ] {
        assert!((0.0..=1.0).contains(&m), "{v:?}");
    }
    assert_eq!(v.patches, 8);
    let run = &cfg.out_dir;
    assert!(run.join(TOWER_DIR).join("config.json").is_file());
    assert!(run
        .join(TOWER_DIR)
        .join("preprocessor_config.json")
        .is_file());
    assert!(run.join(TOWER_WEIGHTS).is_file());
    let log = std::fs::read_to_string(run.join(TOWER_LOG)).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1 + 4 + 1);
    assert!(lines[0].get("config").is_some() && lines[5].get("report").is_some());
    assert_eq!(lines[2]["step"], 2);
    assert!(lines[2]["val"]["colour_acc"].is_number());

    // A folder without meta.jsonl is an error naming the file.
    let empty = tempfile::tempdir().unwrap();
    let err = train_vision_tower(empty.path(), &cfg, |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("meta.jsonl"), "{err}");
    // A bad configuration is refused before any work.
    let bad = TowerTrainConfig {
        num_attention_heads: 5,
        ..cfg.clone()
    };
    let err = train_vision_tower(data.path(), &bad, |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("divisible"), "{err}");
}
