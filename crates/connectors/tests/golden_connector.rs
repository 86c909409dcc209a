//! Golden parity of the STC connectors against the reference PyTorch outputs
//! (`tests/golden/<fixture>/<case>/{expected,debug}.safetensors`).
//!
//! Input: the reference `vision_features` `[T, n, Cin]`; checked: `connector_out` `[L, C]`
//! and the debug stages `connector_s1` `[T, C, h, w]`, `connector_sampler` `[1, C, T', h', w']`,
//! `connector_s2` `[T', C, h', w']`. Tolerance: max|a−b| ≤ 1e-4 · max(1, max|ref|).

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use videollama_connectors::{Connector, ConnectorConfig};

fn golden_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden")
}

fn shards(fixture: &str) -> Vec<PathBuf> {
    let dir = golden_root().join(fixture).join("checkpoint");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
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

/// Returns (max |a − b|, max |ref|), and fails the test when over tolerance.
fn compare(name: &str, got: &Tensor, want: &Tensor) -> (f32, f32) {
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
    println!("{name:<55} max|diff| = {diff:.3e}  (max|ref| = {scale:.3e}, tol {tol:.1e})");
    assert!(diff <= tol, "{name}: max |diff| {diff} > tol {tol}");
    (diff, scale)
}

fn run_fixture(fixture: &str) {
    let root = golden_root().join(fixture);
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("checkpoint/config.json")).unwrap(),
    )
    .unwrap();
    let cfg = ConnectorConfig::from_config_json(&config).unwrap();
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(&shards(fixture), DType::F32, &Device::Cpu).unwrap()
    };
    let connector = Connector::new(&cfg, vb.pp("model.mm_projector")).unwrap();
    for case in ["video", "image"] {
        let expected = candle_core::safetensors::load(
            root.join(case).join("expected.safetensors"),
            &Device::Cpu,
        )
        .unwrap();
        let debug =
            candle_core::safetensors::load(root.join(case).join("debug.safetensors"), &Device::Cpu)
                .unwrap();
        let feats = &expected["vision_features"];
        let (t, n, _) = feats.dims3().unwrap();
        let want = &expected["connector_out"];
        assert_eq!(
            cfg.num_tokens(t, n),
            want.dim(0).unwrap(),
            "{fixture}/{case}: num_tokens"
        );

        let out = connector.forward(feats).unwrap();
        compare(&format!("{fixture}/{case} connector_out"), &out, want);

        let st = connector.forward_with_stages(feats).unwrap();
        compare(
            &format!("{fixture}/{case} connector_s1"),
            &st.s1,
            &debug["connector_s1"],
        );
        compare(
            &format!("{fixture}/{case} connector_sampler"),
            &st.sampler,
            &debug["connector_sampler"],
        );
        compare(
            &format!("{fixture}/{case} connector_s2"),
            &st.s2,
            &debug["connector_s2"],
        );
        compare(
            &format!("{fixture}/{case} connector_out (with stages)"),
            &st.out,
            want,
        );
    }
}

#[test]
fn golden_stc_connector_mistral_clip() {
    run_fixture("videollama2-mistral-tiny");
}

#[test]
fn golden_stc_connector_v35_qwen2_siglip() {
    run_fixture("videollama2.1-qwen2-tiny");
}

/// A wrong padding must be caught: running the P=1 fixture as v35 gives another token count.
#[test]
fn wrong_projector_type_is_detected() {
    let fixture = "videollama2-mistral-tiny";
    let cfg = ConnectorConfig {
        projector_type: "stc_connector_v35".parse().unwrap(),
        mm_hidden_size: 32,
        hidden_size: 64,
    };
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(&shards(fixture), DType::F32, &Device::Cpu).unwrap()
    };
    let connector = Connector::new(&cfg, vb.pp("model.mm_projector")).unwrap();
    let expected = candle_core::safetensors::load(
        golden_root()
            .join(fixture)
            .join("video/expected.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let out = connector.forward(&expected["vision_features"]).unwrap();
    assert_ne!(out.dims(), expected["connector_out"].dims());
}
