//! The quantized modes against the reference's golden tensors.
//!
//! Quantized weights change the numbers on purpose, so these tests state their own
//! tolerance as a relative L2 error of each stage against the reference (f32 PyTorch):
//! ‖ours − ref‖₂ / ‖ref‖₂ ≤ 3 % for Q8_0 and ≤ 25 % for Q4_K on the connector output and on
//! the first step's logits. (4-bit weights alone carry ≈ 7 % RMS error per matmul on these
//! random Gaussian-like weights — see `videollama_nn::linear` tests — and the fixtures chain
//! five to seven quantized matmuls before the logits; measured here: Q8_0 0.6–2.4 %,
//! Q4_K 6–20 %.) Each test also checks that the quantized path really differs
//! from the exact one (a test that cannot fail proves nothing), and that the exact mode
//! stays exact (the plain golden tests cover it in detail).

use candle_core::Tensor;
use videollama_nn::WeightFormat;
use videollama_pipeline::{AnswerOptions, LoadOptions, MediaInput, Pipeline, WeightOptions};
use videollama_testutil::{golden, load_tensors};

fn rel_l2(got: &Tensor, want: &Tensor) -> f32 {
    let got = got
        .flatten_all()
        .unwrap()
        .to_dtype(candle_core::DType::F32)
        .unwrap();
    let want = want.flatten_all().unwrap();
    let d = (&got - &want).unwrap().sqr().unwrap().sum_all().unwrap();
    let n = want.sqr().unwrap().sum_all().unwrap();
    (d.to_scalar::<f32>().unwrap() / n.to_scalar::<f32>().unwrap()).sqrt()
}

/// `(connector_out error, first logits error)` of one case in one weight mode.
fn errors(fixture: &str, case: &str, format: Option<WeightFormat>) -> (f32, f32) {
    let opts = LoadOptions {
        weights: WeightOptions {
            quantize_llm: format,
            quantize_vision: format,
            prequantized: None,
        },
        ..LoadOptions::default()
    };
    let pipeline = Pipeline::load(&golden(&format!("{fixture}/checkpoint")), &opts).unwrap();
    let expected = load_tensors(&format!("{fixture}/{case}/expected.safetensors"));
    let media = MediaInput::video(expected["pixel_values"].clone());
    let encoded = pipeline.encode_media(&media).unwrap();
    let question = videollama_testutil::case_json(fixture, case)["question"]
        .as_str()
        .unwrap()
        .to_string();
    let answer = pipeline
        .answer(
            &[question],
            &encoded,
            &AnswerOptions {
                max_new_tokens: 1,
                collect_tensors: true,
                ..AnswerOptions::default()
            },
            |_| true,
        )
        .unwrap();
    let connector = rel_l2(
        &encoded.visual.as_ref().unwrap().connector_out,
        &expected["connector_out"],
    );
    let logits = rel_l2(&answer.tensors["logits_last"], &expected["logits_last"]);
    (connector, logits)
}

#[test]
fn quantized_modes_stay_within_their_tolerance() {
    for fixture in ["videollama2.1-qwen2-tiny", "videollama2-mistral-tiny"] {
        let (c32, l32) = errors(fixture, "video", None);
        assert!(c32 < 1e-5 && l32 < 1e-5, "{fixture} exact: {c32} {l32}");
        for (format, tol) in [(WeightFormat::Q8_0, 0.03), (WeightFormat::Q4K, 0.25)] {
            let (c, l) = errors(fixture, "video", Some(format));
            eprintln!("{fixture} {format}: connector_out {c:.2e}, logits_last {l:.2e}");
            assert!(c < tol && l < tol, "{fixture} {format}: {c} {l} > {tol}");
            assert!(
                c > 1e-5 && l > 1e-5,
                "{fixture} {format} is not quantized at all"
            );
        }
    }
}
