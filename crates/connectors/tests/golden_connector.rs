//! Golden parity of the STC connectors against the reference PyTorch outputs
//! (`tests/golden/<fixture>/<case>/{expected,debug}.safetensors`).
//!
//! Input: the reference `vision_features` `[T, n, Cin]`; checked: `connector_out` `[L, C]`
//! and the debug stages `connector_s1` `[T, C, h, w]`, `connector_sampler` `[1, C, T', h', w']`,
//! `connector_s2` `[T', C, h', w']`. Tolerance: `videollama_testutil::assert_close`,
//! max|a−b| ≤ 1e-4 · max(1, max|ref|).

use candle_core::DType;
use videollama_connectors::{Connector, ConnectorConfig};
use videollama_testutil::{assert_close, checkpoint_var_builder, load_json, load_tensors};

fn run_fixture(fixture: &str) {
    let config = load_json(&format!("{fixture}/checkpoint/config.json"));
    let cfg = ConnectorConfig::from_config_json(&config).unwrap();
    let vb = checkpoint_var_builder(fixture, DType::F32);
    let connector = Connector::new(&cfg, vb.pp("model.mm_projector")).unwrap();
    for case in ["video", "image"] {
        let expected = load_tensors(&format!("{fixture}/{case}/expected.safetensors"));
        let debug = load_tensors(&format!("{fixture}/{case}/debug.safetensors"));
        let feats = &expected["vision_features"];
        let (t, n, _) = feats.dims3().unwrap();
        let want = &expected["connector_out"];
        assert_eq!(
            cfg.num_tokens(t, n),
            want.dim(0).unwrap(),
            "{fixture}/{case}: num_tokens"
        );

        let out = connector.forward(feats).unwrap();
        assert_close(&format!("{fixture}/{case} connector_out"), &out, want);

        let st = connector.forward_with_stages(feats).unwrap();
        assert_close(
            &format!("{fixture}/{case} connector_s1"),
            &st.s1,
            &debug["connector_s1"],
        );
        assert_close(
            &format!("{fixture}/{case} connector_sampler"),
            &st.sampler,
            &debug["connector_sampler"],
        );
        assert_close(
            &format!("{fixture}/{case} connector_s2"),
            &st.s2,
            &debug["connector_s2"],
        );
        assert_close(
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
    let vb = checkpoint_var_builder(fixture, DType::F32);
    let connector = Connector::new(&cfg, vb.pp("model.mm_projector")).unwrap();
    let expected = load_tensors(&format!("{fixture}/video/expected.safetensors"));
    let out = connector.forward(&expected["vision_features"]).unwrap();
    assert_ne!(out.dims(), expected["connector_out"].dims());
}
