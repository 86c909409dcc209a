//! Parity of the BEATs audio encoder with the PyTorch reference on the tiny AV fixture
//! (`tests/golden/videollama2.1-av-tiny`, see tests/golden/README.md), plus independent scalar
//! checks of the relative-position bucket function and the custom pos-conv weight norm.
//!
//! For the `av` and `audio` cases the stored `audio_fbank` (2998×128) goes through
//! `Beats::forward_with_stages` and must reproduce `debug:audio_post_extract_proj` (1×1496×C),
//! `debug:audio_encoder_layer0` (T×B×C) and `expected:audio_features` (1496×C).
//!
//! Tolerance (`videollama_testutil::assert_close`): max |a − b| ≤ 1e-4 · max(1, max |ref|)
//! (float32 CPU on both sides).

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use videollama_encoders::beats::{beats_weight_norm, relative_position_bucket, Beats, BeatsConfig};
use videollama_testutil::{
    assert_close, checkpoint_shards, checkpoint_var_builder, load_json, load_tensors,
};

const FIXTURE: &str = "videollama2.1-av-tiny";

fn load_config() -> BeatsConfig {
    let json = load_json(&format!("{FIXTURE}/checkpoint/config.json"));
    BeatsConfig::from_overrides(json.get("beats_cfg")).unwrap()
}

fn load_model(cfg: &BeatsConfig) -> Beats {
    let vb = checkpoint_var_builder(FIXTURE, DType::F32);
    Beats::new(cfg, vb.pp("model.audio_tower")).unwrap()
}

#[test]
fn config_overrides_from_fixture() {
    let cfg = load_config();
    assert_eq!(cfg.embed_dim, 32);
    assert_eq!(cfg.encoder_layers, 2);
    assert_eq!(cfg.encoder_embed_dim, 48);
    assert_eq!(cfg.encoder_ffn_embed_dim, 96);
    assert_eq!(cfg.encoder_attention_heads, 4);
    assert_eq!(cfg.conv_pos, 16);
    assert_eq!(cfg.conv_pos_groups, 4);
    // Untouched defaults.
    assert_eq!(cfg.input_patch_size, 16);
    assert_eq!((cfg.num_buckets, cfg.max_distance), (320, 800));
    assert!(cfg.deep_norm && cfg.gru_rel_pos && !cfg.layer_norm_first && cfg.finetuned_model);
    assert!((cfg.deep_norm_alpha() - 2f64.sqrt()).abs() < 1e-12);
    assert_eq!(
        BeatsConfig::from_overrides(None).unwrap(),
        BeatsConfig::default()
    );

    // Parameter count from the config alone vs the tensors in the checkpoint (layer 0's
    // relative_attention_bias counted once, as PyTorch counts a shared module).
    let mut n = 0u64;
    for shard in checkpoint_shards(FIXTURE) {
        for (name, t) in candle_core::safetensors::load(&shard, &Device::Cpu).unwrap() {
            if let Some(rest) = name.strip_prefix("model.audio_tower.") {
                let shared_copy = rest.contains("relative_attention_bias")
                    && !rest.starts_with("encoder.layers.0.");
                if !shared_copy {
                    n += t.elem_count() as u64;
                }
            }
        }
    }
    assert_eq!(cfg.param_count(), n);
    eprintln!(
        "tiny BEATs params: {n}; full-size defaults: {}",
        BeatsConfig::default().param_count()
    );
}

fn run_case(model: &Beats, case: &str) {
    let exp = load_tensors(&format!("{FIXTURE}/{case}/expected.safetensors"));
    let dbg = load_tensors(&format!("{FIXTURE}/{case}/debug.safetensors"));
    let fbank = &exp["audio_fbank"];
    assert_eq!(fbank.dims(), &[2998, 128]);
    let stages = model.forward_with_stages(fbank).unwrap();
    assert_close(
        &format!("{case}/audio_post_extract_proj"),
        &stages.post_extract_proj,
        &dbg["audio_post_extract_proj"],
    );
    // The reference stores layer 0's output as T×B×C.
    let layer0 = stages.layer_outputs[0]
        .transpose(0, 1)
        .unwrap()
        .contiguous()
        .unwrap();
    assert_close(
        &format!("{case}/audio_encoder_layer0"),
        &layer0,
        &dbg["audio_encoder_layer0"],
    );
    let features = model.extract_features(fbank).unwrap();
    assert_eq!(features.dims(), &[1496, model.hidden_size()]);
    assert_close(
        &format!("{case}/audio_features"),
        &features,
        &exp["audio_features"],
    );
}

#[test]
fn golden_av_and_audio_cases() {
    let cfg = load_config();
    let model = load_model(&cfg);
    for case in ["av", "audio"] {
        run_case(&model, case);
    }
}

/// Straightforward scalar re-derivation of the bidirectional bucket (320 buckets, distance 800).
fn bucket_reference(rel: i64, log_in_f64: bool) -> usize {
    let base = if rel > 0 { 160 } else { 0 };
    let a = rel.abs();
    if a < 80 {
        return base + a as usize;
    }
    let v = if log_in_f64 {
        ((a as f64 / 80.0).ln() / 10f64.ln() * 80.0).trunc() as usize
    } else {
        ((a as f32 / 80.0).ln() / (10f64.ln() as f32) * 80.0).trunc() as usize
    };
    base + (80 + v).min(159)
}

#[test]
fn bucket_function_matches_scalar_rederivation() {
    let probes = [0i64, 1, 2, 79, 80, 81, 100, 713, 799, 800, 801, 1000, 1495];
    for &r in &probes {
        for rel in [r, -r] {
            let got = relative_position_bucket(rel, 320, 800);
            assert_eq!(got, bucket_reference(rel, false), "rel {rel} (f32)");
            assert_eq!(got, bucket_reference(rel, true), "rel {rel} (f64)");
        }
    }
    // Hand-derived anchors.
    let anchors = [
        (0i64, 0usize),
        (1, 161),
        (-1, 1),
        (79, 239),
        (-79, 79),
        (80, 240),
        (-80, 80),
        (81, 240), // 80·log10(81/80) ≈ 0.43 → 80
        (800, 319),
        (-800, 159),
        (1495, 319),
        (-1495, 159),
    ];
    for (rel, want) in anchors {
        assert_eq!(relative_position_bucket(rel, 320, 800), want, "rel {rel}");
    }
    // Whole range used by a 1496-token input: f32 and f64 logs agree, monotone per side.
    let mut prev = 0;
    for rel in 0..1496i64 {
        let b = relative_position_bucket(rel, 320, 800);
        assert_eq!(b, bucket_reference(rel, true), "rel {rel}");
        assert_eq!(
            relative_position_bucket(-rel, 320, 800),
            bucket_reference(-rel, true),
            "rel -{rel}"
        );
        if rel > 1 {
            assert!(b >= prev);
        }
        prev = b;
    }
}

#[test]
fn weight_norm_matches_naive_loop() {
    let (co, ci, k) = (6usize, 3usize, 5usize);
    let v: Vec<f32> = (0..co * ci * k)
        .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.013)
        .collect();
    let g: Vec<f32> = (0..k).map(|i| 0.5 + 0.3 * i as f32).collect();
    let dev = Device::Cpu;
    let vt = Tensor::from_vec(v.clone(), (co, ci, k), &dev).unwrap();
    let gt = Tensor::from_vec(g.clone(), (1, 1, k), &dev).unwrap();
    let w = beats_weight_norm(&vt, &gt)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    for kk in 0..k {
        let mut ss = 0f64;
        for o in 0..co {
            for i in 0..ci {
                ss += (v[(o * ci + i) * k + kk] as f64).powi(2);
            }
        }
        let norm = (ss + 1e-6).sqrt();
        for o in 0..co {
            for i in 0..ci {
                let idx = (o * ci + i) * k + kk;
                let want = g[kk] as f64 * v[idx] as f64 / norm;
                assert!(
                    (w[idx] as f64 - want).abs() < 1e-6,
                    "w[{o},{i},{kk}] {} vs {want}",
                    w[idx]
                );
            }
        }
    }
    // The eps matters for an all-zero tap: result 0, not NaN.
    let z = Tensor::zeros((2, 2, 1), DType::F32, &dev).unwrap();
    let one = Tensor::ones((1, 1, 1), DType::F32, &dev).unwrap();
    let wz = beats_weight_norm(&z, &one)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(wz.iter().all(|x| *x == 0.0));
}

/// Full-size (default config) forward on zero weights: shapes and a rough CPU timing.
/// Ignored by default (a few seconds on 2 cores); run with `--ignored`.
#[test]
#[ignore]
fn full_size_forward_shapes() {
    let cfg = BeatsConfig::default();
    let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
    let model = Beats::new(&cfg, vb).unwrap();
    let fbank = Tensor::zeros((2998, 128), DType::F32, &Device::Cpu).unwrap();
    let t0 = std::time::Instant::now();
    let out = model.extract_features(&fbank).unwrap();
    eprintln!("full-size BEATs forward: {:?}", t0.elapsed());
    assert_eq!(out.dims(), &[1496, 768]);
}
