//! Parity of the BLIP-2 image Q-Former and Video-LLaMA's positioned video/audio Q-Former
//! aggregators with the PyTorch reference on the tiny fixture `tests/golden/video-llama-tiny`
//! (see the `video-llama-tiny` section of tests/golden/README.md).
//!
//! Weights: `checkpoint/blip2_pretrained_tiny.safetensors` (`Qformer.bert.*`, `query_tokens`),
//! `checkpoint/VL_tiny.safetensors` (video branch), `checkpoint/AL_tiny.safetensors` (audio
//! branch); BERT config `checkpoint/bert-base-uncased/config.json`; `num_query_token` from
//! `checkpoint/eval_config.yaml`; everything else from tensor shapes.
//!
//! * image Q-Former, cases `video`, `image`: `expected:vision_features` → `expected:frame_qformer_out`.
//! * video aggregator, cases `video`, `image`, `video_audio`: `expected:frame_qformer_out` →
//!   `debug:video_qformer_in`, `expected:video_qformer_out`, `expected:visual_tokens`.
//! * audio aggregator, cases `audio`, `video_audio`: `expected:audio_features` →
//!   `debug:audio_qformer_in`, `expected:audio_qformer_out`, `expected:audio_tokens`.
//! * the chain `vision_features` → … → `visual_tokens` through our own intermediate values.
//! * more items than position-table rows is an error that names the table size.
//!
//! Tolerance (`videollama_testutil::assert_close`): max |a − b| ≤ 1e-4 · max(1, max |ref|)
//! (float32 CPU on both sides).

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use videollama_connectors::{
    AggregatorKeys, ImageQFormer, PositionedQFormer, QFormerConfig, VIDEO_QFORMER_LAYERS,
};
use videollama_testutil::{assert_close, golden, load_tensors};

const FIXTURE: &str = "video-llama-tiny";

fn checkpoint_vb() -> VarBuilder<'static> {
    let files: Vec<_> = [
        "blip2_pretrained_tiny.safetensors",
        "VL_tiny.safetensors",
        "AL_tiny.safetensors",
    ]
    .iter()
    .map(|f| golden(&format!("{FIXTURE}/checkpoint/{f}")))
    .collect();
    // SAFETY: the vendored fixture files are never modified while tests run.
    unsafe { VarBuilder::from_mmaped_safetensors(&files, DType::F32, &Device::Cpu) }.unwrap()
}

fn bert_config() -> QFormerConfig {
    QFormerConfig::from_bert_file(&golden(&format!(
        "{FIXTURE}/checkpoint/bert-base-uncased/config.json"
    )))
    .unwrap()
}

/// `model.num_query_token` of `checkpoint/eval_config.yaml` (a flat `key: value` line).
fn num_query_token() -> usize {
    let path = golden(&format!("{FIXTURE}/checkpoint/eval_config.yaml"));
    let text = std::fs::read_to_string(&path).unwrap();
    text.lines()
        .find_map(|l| l.trim().strip_prefix("num_query_token:"))
        .unwrap_or_else(|| panic!("{}: no num_query_token", path.display()))
        .trim()
        .parse()
        .unwrap()
}

fn image_qformer(vb: &VarBuilder<'static>) -> ImageQFormer {
    // The vision width is the width of `ln_vision` (the features the Q-Former reads).
    let vision_width = vb.get_unchecked("ln_vision.weight").unwrap().dims()[0];
    let cfg = QFormerConfig::image(&bert_config(), vision_width, num_query_token());
    ImageQFormer::new(&cfg, vb.clone()).unwrap()
}

fn video_aggregator(vb: &VarBuilder<'static>) -> PositionedQFormer {
    PositionedQFormer::new(
        &bert_config(),
        VIDEO_QFORMER_LAYERS,
        &AggregatorKeys::video(),
        vb.clone(),
    )
    .unwrap()
}

fn audio_aggregator(vb: &VarBuilder<'static>) -> PositionedQFormer {
    PositionedQFormer::new(
        &bert_config(),
        VIDEO_QFORMER_LAYERS,
        &AggregatorKeys::audio(),
        vb.clone(),
    )
    .unwrap()
}

fn case(
    case: &str,
) -> (
    std::collections::HashMap<String, Tensor>,
    std::collections::HashMap<String, Tensor>,
) {
    (
        load_tensors(&format!("{FIXTURE}/{case}/expected.safetensors")),
        load_tensors(&format!("{FIXTURE}/{case}/debug.safetensors")),
    )
}

#[test]
fn configs_and_sizes_from_the_fixture() {
    let vb = checkpoint_vb();
    let bert = bert_config();
    assert_eq!(
        (
            bert.hidden_size,
            bert.num_attention_heads,
            bert.intermediate_size
        ),
        (32, 4, 64)
    );
    assert_eq!(bert.layer_norm_eps, 1e-12);
    let img = image_qformer(&vb);
    let c = img.qformer().config();
    assert_eq!((c.encoder_width, c.cross_attention_freq), (48, 2));
    assert_eq!(c.num_hidden_layers, 2);
    assert_eq!(img.num_queries(), 8);

    let video = video_aggregator(&vb);
    assert_eq!(video.max_positions(), 32);
    assert_eq!(video.num_queries(), 32);
    assert_eq!(video.input_width(), 32);
    assert_eq!(video.out_dim(), 64);
    assert_eq!(video.qformer().config().cross_attention_freq, 1);

    let audio = audio_aggregator(&vb);
    assert_eq!(audio.max_positions(), 8);
    assert_eq!(audio.num_queries(), 8);
    assert_eq!(audio.input_width(), 24);
    assert_eq!(audio.qformer().config().encoder_width, 24);
    assert_eq!(audio.out_dim(), 64);

    // A wrong num_query_token is caught against the stored query tokens.
    let bad = QFormerConfig::image(&bert, 48, 32);
    let e = ImageQFormer::new(&bad, vb.clone()).unwrap_err().to_string();
    assert!(e.contains("8 queries") && e.contains("32"), "{e}");
}

#[test]
fn image_qformer_per_frame() {
    let vb = checkpoint_vb();
    let img = image_qformer(&vb);
    for name in ["video", "image"] {
        let (exp, _) = case(name);
        let feats = &exp["vision_features"];
        let out = img.forward(feats).unwrap();
        assert_close(
            &format!("{name}/frame_qformer_out"),
            &out,
            &exp["frame_qformer_out"],
        );
    }
}

#[test]
fn video_aggregator_matches_reference() {
    let vb = checkpoint_vb();
    let agg = video_aggregator(&vb);
    for name in ["video", "image", "video_audio"] {
        let (exp, dbg) = case(name);
        let s = agg.forward_with_stages(&exp["frame_qformer_out"]).unwrap();
        assert_close(
            &format!("{name}/video_qformer_in"),
            &s.qformer_in,
            &dbg["video_qformer_in"],
        );
        assert_close(
            &format!("{name}/video_qformer_out"),
            &s.qformer_out,
            &exp["video_qformer_out"],
        );
        assert_close(
            &format!("{name}/visual_tokens"),
            &s.tokens,
            &exp["visual_tokens"],
        );
    }
}

#[test]
fn audio_aggregator_matches_reference() {
    let vb = checkpoint_vb();
    let agg = audio_aggregator(&vb);
    for name in ["audio", "video_audio"] {
        let (exp, dbg) = case(name);
        let s = agg.forward_with_stages(&exp["audio_features"]).unwrap();
        assert_close(
            &format!("{name}/audio_qformer_in"),
            &s.qformer_in,
            &dbg["audio_qformer_in"],
        );
        assert_close(
            &format!("{name}/audio_qformer_out"),
            &s.qformer_out,
            &exp["audio_qformer_out"],
        );
        assert_close(
            &format!("{name}/audio_tokens"),
            &s.tokens,
            &exp["audio_tokens"],
        );
    }
}

/// vision_features → image Q-Former → video aggregator, without the stored intermediates.
#[test]
fn vision_features_to_visual_tokens_chain() {
    let vb = checkpoint_vb();
    let img = image_qformer(&vb);
    let agg = video_aggregator(&vb);
    for name in ["video", "image"] {
        let (exp, _) = case(name);
        let frames = img.forward(&exp["vision_features"]).unwrap();
        let tokens = agg.forward(&frames).unwrap();
        assert_close(
            &format!("{name}/visual_tokens (chained)"),
            &tokens,
            &exp["visual_tokens"],
        );
    }
}

#[test]
fn more_items_than_position_rows_is_an_error() {
    let vb = checkpoint_vb();
    let video = video_aggregator(&vb);
    let frames = Tensor::zeros((33, 8, 32), DType::F32, &Device::Cpu).unwrap();
    let e = video.forward(&frames).unwrap_err().to_string();
    assert!(
        e.contains("Video-LLaMA's frame position table has 32 rows: at most 32 frames"),
        "{e}"
    );
    // Exactly the table size is fine.
    let frames = Tensor::zeros((32, 8, 32), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(video.forward(&frames).unwrap().dims(), &[32, 64]);

    let audio = audio_aggregator(&vb);
    let clips = Tensor::zeros((9, 24), DType::F32, &Device::Cpu).unwrap();
    let e = audio.forward(&clips).unwrap_err().to_string();
    assert!(
        e.contains("Video-LLaMA's audio position table has 8 rows: at most 8 audio clips"),
        "{e}"
    );
}
