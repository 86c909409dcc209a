//! Parity of the ImageBind audio encoder with the Video-LLaMA reference on the tiny fixture
//! (`tests/golden/video-llama-tiny`, see tests/golden/README.md).
//!
//! For the `audio` and `video_audio` cases the stored `expected:audio_mel` (8×1×128×204, the
//! 8 clips) goes through `ImageBindAudio::forward_with_stages` and must reproduce
//! `debug:audio_cls_features` (8×D, head LayerNorm + CLS) and `expected:audio_features`
//! (8×24, head Linear → L2-normalise × 20), with `videollama_testutil::assert_close`
//! (max |a − b| ≤ 1e-4 · max(1, max |ref|), float32 CPU on both sides).
//!
//! Also: the config read from the weights equals the fixture's dims, and the parameter count
//! formula agrees with the tensors in the file and with the reference's count of the
//! `imagebind_huge()` audio branch.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use videollama_encoders::imagebind_audio::{
    ImageBindAudio, ImageBindAudioConfig, HEAD_PREFIX, LOG_LOGIT_SCALE_KEY, PREPROCESSOR_PREFIX,
    TRUNK_PREFIX,
};
use videollama_testutil::{assert_close, load_json, load_tensors};

const FIXTURE: &str = "video-llama-tiny";
const WEIGHTS: &str = "video-llama-tiny/checkpoint/imagebind/imagebind_huge.safetensors";

fn weights() -> HashMap<String, Tensor> {
    load_tensors(WEIGHTS)
}

fn var_builder(tensors: HashMap<String, Tensor>) -> VarBuilder<'static> {
    VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu)
}

/// `fixture.json` `dims.<key>`.
fn dim(key: &str) -> usize {
    let json = load_json(&format!("{FIXTURE}/fixture.json"));
    json["dims"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("fixture.json dims.{key}")) as usize
}

fn load_model() -> ImageBindAudio {
    let vb = var_builder(weights());
    let cfg = ImageBindAudioConfig::from_weights(&vb, dim("ib_audio_heads")).unwrap();
    ImageBindAudio::new(&cfg, vb).unwrap()
}

#[test]
fn from_weights_recovers_fixture_dims() {
    let tensors = weights();
    let vb = var_builder(tensors.clone());
    let cfg = ImageBindAudioConfig::from_weights(&vb, dim("ib_audio_heads")).unwrap();
    assert_eq!(cfg.embed_dim, dim("ib_audio"));
    assert_eq!(cfg.num_blocks, dim("ib_audio_blocks"));
    assert_eq!(cfg.num_heads, dim("ib_audio_heads"));
    assert_eq!(cfg.out_embed_dim, dim("ib_out"));
    assert_eq!(cfg.mlp_hidden, 4 * cfg.embed_dim);
    assert_eq!(cfg.kernel_size, 16);
    assert_eq!(
        (cfg.stride, cfg.num_mel_bins, cfg.target_len),
        (10, 128, 204)
    );
    assert_eq!(cfg.patch_grid(), (12, 19));
    assert_eq!(cfg.num_tokens(), 229);
    assert_eq!(
        (cfg.stem_eps, cfg.block_eps, cfg.head_eps),
        (1e-5, 1e-6, 1e-6)
    );
    // The stored buffer is ln 20 (README: "keeps ln 20").
    assert!((cfg.logit_scale - 20.0).abs() < 1e-5, "{}", cfg.logit_scale);

    // Parameter formula vs the audio tensors of the file (the logit-scale buffer is not a
    // parameter); other modalities ignored.
    let audio_params: u64 = tensors
        .iter()
        .filter(|(k, _)| {
            [PREPROCESSOR_PREFIX, TRUNK_PREFIX, HEAD_PREFIX]
                .iter()
                .any(|p| k.starts_with(&format!("{p}.")))
        })
        .map(|(_, t)| t.elem_count() as u64)
        .sum();
    assert_eq!(cfg.param_count(), audio_params);
    assert!(tensors.contains_key(LOG_LOGIT_SCALE_KEY));

    // A head count that does not divide the width is refused.
    assert!(ImageBindAudioConfig::from_weights(&vb, 5).is_err());

    // Without the buffer the reference value 20 is used.
    let mut no_scale = tensors;
    no_scale.remove(LOG_LOGIT_SCALE_KEY);
    let cfg2 = ImageBindAudioConfig::from_weights(&var_builder(no_scale), 4).unwrap();
    assert_eq!(cfg2.logit_scale, 20.0);
}

#[test]
fn imagebind_huge_param_count() {
    let cfg = ImageBindAudioConfig::imagebind_huge();
    assert_eq!(
        (cfg.embed_dim, cfg.num_blocks, cfg.num_heads),
        (768, 12, 12)
    );
    assert_eq!((cfg.mlp_hidden, cfg.out_embed_dim), (3072, 1024));
    // Counted by instantiating the reference `ImageBindModel` with the `imagebind_huge()`
    // arguments and summing `named_parameters()` whose name contains `.audio.`.
    const REFERENCE_COUNT: u64 = 86_235_648;
    assert_eq!(cfg.param_count(), REFERENCE_COUNT);
    // Written out term by term for D = 768 (independent of the formula's grouping).
    let stem = 768 * 16 * 16 + 768 + 768;
    let tokens = 768 + 229 * 768;
    let block = 2304 * 768 + 2304 // in_proj
        + 768 + 768 // bias_k, bias_v
        + 768 * 768 + 768 // out_proj
        + 4 * 768 // norm_1, norm_2
        + 3072 * 768 + 3072 // fc1
        + 768 * 3072 + 768; // fc2
    let head = 768 + 768 + 1024 * 768;
    assert_eq!(stem + tokens + 12 * block + head, REFERENCE_COUNT);
}

fn run_case(model: &ImageBindAudio, case: &str) {
    let exp = load_tensors(&format!("{FIXTURE}/{case}/expected.safetensors"));
    let dbg = load_tensors(&format!("{FIXTURE}/{case}/debug.safetensors"));
    let mel = &exp["audio_mel"];
    assert_eq!(mel.dims(), &[8, 1, 128, 204]);
    let out = model.forward_with_stages(mel).unwrap();
    assert_close(
        &format!("{case}/audio_cls_features"),
        &out.cls_features,
        &dbg["audio_cls_features"],
    );
    assert_close(
        &format!("{case}/audio_features"),
        &out.embeddings,
        &exp["audio_features"],
    );
    // `forward` is the same embeddings; a clip list [1, 8, 1, M, T] gives [1, 8, out].
    let direct = model.forward(mel).unwrap();
    assert_close(&format!("{case}/forward"), &direct, &exp["audio_features"]);
    let listed = model.forward(&mel.unsqueeze(0).unwrap()).unwrap();
    assert_eq!(listed.dims(), &[1, 8, model.out_dim()]);
    assert_close(
        &format!("{case}/clip list"),
        &listed.squeeze(0).unwrap(),
        &exp["audio_features"],
    );
}

#[test]
fn golden_audio_and_video_audio_cases() {
    let model = load_model();
    for case in ["audio", "video_audio"] {
        run_case(&model, case);
    }
}

#[test]
fn rejects_mel_of_wrong_size() {
    let model = load_model();
    for dims in [
        vec![8usize, 1, 128, 198],
        vec![8, 2, 128, 204],
        vec![128, 204],
    ] {
        let x = Tensor::zeros(dims.as_slice(), DType::F32, &Device::Cpu).unwrap();
        assert!(model.forward(&x).is_err(), "{dims:?} accepted");
    }
}

/// The learned `bias_k`/`bias_v` position matters: zeroing them in every block moves the
/// output far beyond the golden tolerance (so the golden test would catch a port that dropped
/// or misplaced them).
#[test]
fn bias_kv_changes_the_output() {
    let exp = load_tensors(&format!("{FIXTURE}/audio/expected.safetensors"));
    let mut tensors = weights();
    for i in 0..dim("ib_audio_blocks") {
        for name in ["bias_k", "bias_v"] {
            let key = format!("{TRUNK_PREFIX}.blocks.{i}.attn.{name}");
            let zero = tensors[&key].zeros_like().unwrap();
            tensors.insert(key, zero);
        }
    }
    let vb = var_builder(tensors);
    let cfg = ImageBindAudioConfig::from_weights(&vb, dim("ib_audio_heads")).unwrap();
    let model = ImageBindAudio::new(&cfg, vb).unwrap();
    let out = model.forward(&exp["audio_mel"]).unwrap();
    let diff = (out - &exp["audio_features"])
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    eprintln!("zeroed bias_k/bias_v: max|diff| = {diff:.3e}");
    // The golden tolerance here is 1e-4 · max|ref| ≈ 9e-4; ask for more than 10× that.
    assert!(
        diff > 1e-2,
        "zeroed bias_k/bias_v changed the output by only {diff}"
    );
}

/// Full-size (`imagebind_huge`) forward on zero weights: shapes and a rough CPU timing.
/// Ignored by default; run with `--ignored`.
#[test]
#[ignore]
fn full_size_forward_shapes() {
    let cfg = ImageBindAudioConfig::imagebind_huge();
    let model = ImageBindAudio::new(&cfg, VarBuilder::zeros(DType::F32, &Device::Cpu)).unwrap();
    let mel = Tensor::zeros((8, 1, 128, 204), DType::F32, &Device::Cpu).unwrap();
    let t0 = std::time::Instant::now();
    let out = model.forward_with_stages(&mel).unwrap();
    eprintln!(
        "full-size ImageBind audio forward (8 clips): {:?}",
        t0.elapsed()
    );
    assert_eq!(out.cls_features.dims(), &[8, 768]);
    assert_eq!(out.embeddings.dims(), &[8, 1024]);
}
