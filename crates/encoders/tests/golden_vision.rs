//! Golden parity of the CLIP / SigLIP vision towers against the reference PyTorch outputs.
//!
//! For each fixture and case: the tower config comes from
//! `tests/golden/<fixture>/vision_tower/<name>/config.json` (`<name>` from the checkpoint's
//! `mm_vision_tower`), the weights from the two checkpoint shards at
//! `model.vision_tower.vision_tower.vision_model`, the input is `pixel_values` (the image case's
//! single frame repeated to `num_frames`, as the reference does), and the output is compared with
//! `vision_features`. Tolerance (`videollama_testutil::assert_close`):
//! max|a−b| ≤ 1e-4 · max(1, max|ref|).

use candle_core::{DType, Device, Tensor};
use videollama_encoders::{VisionTower, VisionTowerConfig, VisionTowerKind};
use videollama_testutil::{
    assert_close, checkpoint_shards, checkpoint_var_builder, golden, load_json, load_tensors,
};

fn run_fixture(fixture: &str, kind: VisionTowerKind) {
    let model_cfg = load_json(&format!("{fixture}/checkpoint/config.json"));
    let tower_name = model_cfg["mm_vision_tower"].as_str().unwrap();
    let tower_cfg = VisionTowerConfig::from_config_json(&load_json(&format!(
        "{fixture}/{tower_name}/config.json"
    )))
    .unwrap();
    assert_eq!(tower_cfg.kind(), kind);
    assert_eq!(
        VisionTowerConfig::from_config_path(&golden(&format!("{fixture}/{tower_name}"))).unwrap(),
        tower_cfg
    );
    let select_layer = model_cfg["mm_vision_select_layer"].as_i64().unwrap();
    let select_feature = model_cfg["mm_vision_select_feature"].as_str().unwrap();
    let num_frames = model_cfg["num_frames"].as_u64().unwrap() as usize;

    let vb = checkpoint_var_builder(fixture, DType::F32);
    let tower = VisionTower::new(
        &tower_cfg,
        select_layer,
        select_feature,
        vb.pp("model.vision_tower.vision_tower.vision_model"),
    )
    .unwrap();
    assert_eq!(tower.num_layers_run(), tower_cfg.num_hidden_layers() - 1);

    for case in ["video", "image"] {
        let expected = load_tensors(&format!("{fixture}/{case}/expected.safetensors"));
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
        assert_close(&format!("{fixture}/{case} vision_features"), &got, want);
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
    let fixture = "videollama2-mistral-tiny";
    let cfg = VisionTowerConfig::from_config_path(&golden(&format!(
        "{fixture}/vision_tower/clip-vit-tiny-patch14-56"
    )))
    .unwrap();
    let vb = checkpoint_var_builder(fixture, DType::F32);
    let vb = vb.pp("model.vision_tower.vision_tower.vision_model");
    let tower = VisionTower::new(&cfg, -2, "cls_patch", vb.clone()).unwrap();
    assert_eq!(tower.num_tokens_per_frame(), 17);
    let expected = load_tensors(&format!("{fixture}/video/expected.safetensors"));
    let got = tower.forward(&expected["pixel_values"]).unwrap();
    assert_eq!(got.dims(), &[4, 17, 32]);
    // the patch rows equal the `patch` output
    assert_close(
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

    let sfixture = "videollama2.1-qwen2-tiny";
    let scfg = VisionTowerConfig::from_config_path(&golden(&format!(
        "{sfixture}/vision_tower/siglip-tiny-patch14-56"
    )))
    .unwrap();
    let svb = checkpoint_var_builder(sfixture, DType::F32);
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
        let model_cfg = load_json(&format!("{fixture}/checkpoint/config.json"));
        let tower_name = model_cfg["mm_vision_tower"].as_str().unwrap();
        let cfg = VisionTowerConfig::from_config_path(&golden(&format!("{fixture}/{tower_name}")))
            .unwrap();
        let mut n = 0u64;
        for shard in checkpoint_shards(fixture) {
            for (k, t) in candle_core::safetensors::load(&shard, &Device::Cpu).unwrap() {
                if k.starts_with("model.vision_tower.vision_tower.vision_model.") {
                    n += t.elem_count() as u64;
                }
            }
        }
        assert_eq!(cfg.param_count(), n, "{fixture}");
    }
}
