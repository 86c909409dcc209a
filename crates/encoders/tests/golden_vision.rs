//! Golden parity of the CLIP / SigLIP vision towers against the reference PyTorch outputs.
//!
//! For each fixture and case: the tower config comes from
//! `tests/golden/<fixture>/vision_tower/<name>/config.json` (`<name>` from the checkpoint's
//! `mm_vision_tower`), the weights from the two checkpoint shards at
//! `model.vision_tower.vision_tower.vision_model`, the input is `pixel_values` (the image case's
//! single frame repeated to `num_frames`, as the reference does), and the output is compared with
//! `vision_features`. Tolerance: max|a−b| ≤ 1e-4 · max(1, max|ref|).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use videollama_encoders::{VisionTower, VisionTowerConfig, VisionTowerKind};

fn golden_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden")
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
    )
    .unwrap()
}

fn shards(root: &Path) -> Vec<PathBuf> {
    let dir = root.join("checkpoint");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    v.sort();
    assert_eq!(
        v.len(),
        2,
        "expected two checkpoint shards in {}",
        dir.display()
    );
    v
}

fn compare(name: &str, got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.dims(), want.dims(), "{name}: shape");
    let diff = (got - want)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let scale = want
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let tol = 1e-4 * scale.max(1.0);
    println!("{name:<45} max|diff| = {diff:.3e}  (max|ref| = {scale:.3e}, tol {tol:.1e})");
    assert!(diff <= tol, "{name}: max |diff| {diff} > tol {tol}");
    diff
}

fn run_fixture(fixture: &str, kind: VisionTowerKind) {
    let root = golden_root().join(fixture);
    let model_cfg = read_json(&root.join("checkpoint/config.json"));
    let tower_name = model_cfg["mm_vision_tower"].as_str().unwrap();
    let tower_cfg =
        VisionTowerConfig::from_config_json(&read_json(&root.join(tower_name).join("config.json")))
            .unwrap();
    assert_eq!(tower_cfg.kind(), kind);
    assert_eq!(
        VisionTowerConfig::from_config_path(&root.join(tower_name)).unwrap(),
        tower_cfg
    );
    let select_layer = model_cfg["mm_vision_select_layer"].as_i64().unwrap();
    let select_feature = model_cfg["mm_vision_select_feature"].as_str().unwrap();
    let num_frames = model_cfg["num_frames"].as_u64().unwrap() as usize;

    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(&shards(&root), DType::F32, &Device::Cpu).unwrap()
    };
    let tower = VisionTower::new(
        &tower_cfg,
        select_layer,
        select_feature,
        vb.pp("model.vision_tower.vision_tower.vision_model"),
    )
    .unwrap();
    assert_eq!(tower.num_layers_run(), tower_cfg.num_hidden_layers() - 1);

    for case in ["video", "image"] {
        let expected = candle_core::safetensors::load(
            root.join(case).join("expected.safetensors"),
            &Device::Cpu,
        )
        .unwrap();
        let mut pixels = expected["pixel_values"].clone();
        if pixels.dim(0).unwrap() == 1 {
            let (_, c, h, w) = pixels.dims4().unwrap();
            pixels = pixels
                .broadcast_as((num_frames, c, h, w))
                .unwrap()
                .contiguous()
                .unwrap();
        }
        let want = &expected["vision_features"];
        let got = tower.forward(&pixels).unwrap();
        assert_eq!(got.dim(1).unwrap(), tower.num_tokens_per_frame());
        compare(&format!("{fixture}/{case} vision_features"), &got, want);
    }
}

#[test]
fn golden_clip_tower_mistral_fixture() {
    run_fixture("videollama2-mistral-tiny", VisionTowerKind::Clip);
}

#[test]
fn golden_siglip_tower_qwen2_fixture() {
    run_fixture("videollama2.1-qwen2-tiny", VisionTowerKind::Siglip);
}

/// `cls_patch` keeps the CLS token (CLIP) and is rejected by SigLIP; bad values are errors.
#[test]
fn select_feature_variants() {
    let root = golden_root().join("videollama2-mistral-tiny");
    let cfg =
        VisionTowerConfig::from_config_path(&root.join("vision_tower/clip-vit-tiny-patch14-56"))
            .unwrap();
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(&shards(&root), DType::F32, &Device::Cpu).unwrap()
    };
    let vb = vb.pp("model.vision_tower.vision_tower.vision_model");
    let tower = VisionTower::new(&cfg, -2, "cls_patch", vb.clone()).unwrap();
    assert_eq!(tower.num_tokens_per_frame(), 17);
    let expected =
        candle_core::safetensors::load(root.join("video/expected.safetensors"), &Device::Cpu)
            .unwrap();
    let got = tower.forward(&expected["pixel_values"]).unwrap();
    assert_eq!(got.dims(), &[4, 17, 32]);
    // the patch rows equal the `patch` output
    compare(
        "clip cls_patch[1..] vs vision_features",
        &got.narrow(1, 1, 16).unwrap(),
        &expected["vision_features"],
    );

    let e = VisionTower::new(&cfg, -2, "cls", vb.clone())
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"cls\""), "{e}");
    let e = VisionTower::new(&cfg, -5, "patch", vb.clone())
        .unwrap_err()
        .to_string();
    assert!(e.contains("-5"), "{e}");
    let e = tower
        .forward(&Tensor::zeros((1, 3, 28, 28), DType::F32, &Device::Cpu).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("56"), "{e}");

    let sroot = golden_root().join("videollama2.1-qwen2-tiny");
    let scfg =
        VisionTowerConfig::from_config_path(&sroot.join("vision_tower/siglip-tiny-patch14-56"))
            .unwrap();
    let svb = unsafe {
        VarBuilder::from_mmaped_safetensors(&shards(&sroot), DType::F32, &Device::Cpu).unwrap()
    };
    let e = VisionTower::new(
        &scfg,
        -2,
        "cls_patch",
        svb.pp("model.vision_tower.vision_tower.vision_model"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("SigLIP"), "{e}");
}

/// Stored vision-model parameters (including unused `post_layernorm`, last layer and SigLIP
/// `head.*`) equal `param_count()` computed from the config alone.
#[test]
fn param_count_matches_checkpoint() {
    for fixture in ["videollama2-mistral-tiny", "videollama2.1-qwen2-tiny"] {
        let root = golden_root().join(fixture);
        let model_cfg = read_json(&root.join("checkpoint/config.json"));
        let tower_name = model_cfg["mm_vision_tower"].as_str().unwrap();
        let cfg = VisionTowerConfig::from_config_path(&root.join(tower_name)).unwrap();
        let mut n = 0u64;
        for shard in shards(&root) {
            for (k, t) in candle_core::safetensors::load(&shard, &Device::Cpu).unwrap() {
                if k.starts_with("model.vision_tower.vision_tower.vision_model.") {
                    n += t.elem_count() as u64;
                }
            }
        }
        assert_eq!(cfg.param_count(), n, "{fixture}");
    }
}
