//! Parity of the decoder and greedy decoding with the PyTorch reference, on the vendored tiny
//! fixtures (tests/golden/README.md).
//!
//! For each case: the reference's first-forward `inputs_embeds` go through `forward_embeds`
//! and must reproduce `logits_last`; then 12 greedy steps, each feeding `embed_tokens(id)`,
//! must reproduce every raw row of `logits_steps` and the exact `generated_ids` (with the
//! fixture's `repetition_penalty`, which HF applies even when greedy).
//!
//! Tolerance (`videollama_testutil::assert_close`): max |a − b| ≤ 1e-4 · max(1, max |ref|) per
//! logits row (float32 CPU on both sides).

use candle_core::{DType, Device, Tensor};
use videollama_llm::{
    apply_repetition_penalty, generate, DecoderConfig, DecoderLm, GenerationConfig,
    LogitsProcessor, SamplingParams,
};
use videollama_testutil::{assert_close, case_json, checkpoint_var_builder, golden, load_tensors};

fn load_model(name: &str, qwen2: bool) -> (DecoderLm, GenerationConfig) {
    let ck = golden(&format!("{name}/checkpoint"));
    let mut cfg = DecoderConfig::from_file(ck.join("config.json")).unwrap();
    // HF Qwen2 hard-codes q/k/v bias; the config has no field for it.
    cfg.attention_bias = qwen2;
    let model = DecoderLm::new(&cfg, checkpoint_var_builder(name, DType::F32)).unwrap();
    let gc = GenerationConfig::from_file(ck.join("generation_config.json")).unwrap();
    (model, gc)
}

fn top2_gap(v: &[f32]) -> f64 {
    let mut s: Vec<f32> = v.to_vec();
    s.sort_by(|a, b| b.total_cmp(a));
    s[0] as f64 - s[1] as f64
}

fn run_case(model: &DecoderLm, gc: &GenerationConfig, fixture_name: &str, case: &str) -> f32 {
    let exp = load_tensors(&format!("{fixture_name}/{case}/expected.safetensors"));
    let embeds = exp["inputs_embeds"].unsqueeze(0).unwrap();
    let logits_last = &exp["logits_last"];
    let steps = &exp["logits_steps"];
    let want_ids: Vec<u32> = exp["generated_ids"]
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|i| i as u32)
        .collect();
    let tag = format!("{fixture_name}/{case}");
    // The recorded top-1 − top-2 gap after the logits processors. On these fixtures the
    // penalty never changes a greedy id, so this is what proves it is applied (and right).
    let margins: Vec<f64> = case_json(fixture_name, case)["top1_minus_top2_logit_margin_per_step"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_f64().unwrap())
        .collect();

    let mut cache = model.new_cache();
    let logits = model.forward_embeds(&embeds, &mut cache).unwrap();
    let mut worst = assert_close(&format!("{tag}: logits_last"), &logits, logits_last).max_abs;

    // Greedy, with only the penalty from generation_config.json (mm_infer forces do_sample=False).
    let params = SamplingParams::from_generation_config(gc, false, 0);
    let mut proc = LogitsProcessor::new(params.clone());
    let mut ids = Vec::new();
    let mut logits = logits;
    for (step, want_id) in want_ids.iter().enumerate() {
        let want_row = steps.get(step).unwrap();
        let d = assert_close(&format!("{tag}: step {step}"), &logits, &want_row).max_abs;
        worst = worst.max(d);
        let mut processed = logits.to_vec1::<f32>().unwrap();
        apply_repetition_penalty(
            &mut processed,
            &ids,
            params.repetition_penalty.unwrap_or(1.0),
        );
        let gap = top2_gap(&processed);
        assert!(
            (gap - margins[step]).abs() < 1e-5,
            "{tag}: step {step} gap {gap} vs {}",
            margins[step]
        );
        let id = proc.sample(&logits, &ids).unwrap();
        assert_eq!(id, *want_id, "{tag}: step {step} token (so far {ids:?})");
        ids.push(id);
        if step + 1 < want_ids.len() {
            let e = model
                .embed_tokens(&Tensor::new(&[id], &Device::Cpu).unwrap())
                .unwrap();
            logits = model
                .forward_embeds(&e.unsqueeze(0).unwrap(), &mut cache)
                .unwrap();
        }
    }
    assert_eq!(ids, want_ids, "{tag}");
    assert_eq!(cache.len(), embeds.dim(1).unwrap() + want_ids.len() - 1);

    // The packaged loop produces the same tokens.
    let mut cache2 = model.new_cache();
    let out = generate(
        model,
        &embeds,
        &mut cache2,
        &mut LogitsProcessor::new(params),
        want_ids.len(),
        &gc.eos_ids(),
        |_| true,
    )
    .unwrap();
    assert_eq!(out.ids, want_ids, "{tag}: generate()");
    eprintln!(
        "{tag}: max abs logits err over prefill + {} steps = {worst:e}",
        want_ids.len()
    );
    worst
}

#[test]
fn mistral_tiny_matches_reference() {
    let name = "videollama2-mistral-tiny";
    let (model, gc) = load_model(name, false);
    assert_eq!(gc.repetition_penalty, None);
    assert_eq!(gc.eos_ids(), vec![2]);
    assert_eq!(model.max_context(), 32768);
    for case in ["video", "image"] {
        run_case(&model, &gc, name, case);
    }
}

#[test]
fn qwen2_tiny_matches_reference() {
    let name = "videollama2.1-qwen2-tiny";
    let (model, gc) = load_model(name, true);
    assert_eq!(gc.repetition_penalty, Some(1.05));
    assert_eq!(gc.eos_ids(), vec![1023, 1021]);
    for case in ["video", "image", "text"] {
        run_case(&model, &gc, name, case);
    }
}

/// For the text case the reference's `inputs_embeds` are `embed_tokens(input_ids)`, so the
/// embedding lookup itself can be checked exactly.
#[test]
fn qwen2_text_embeddings_match_embed_tokens() {
    let name = "videollama2.1-qwen2-tiny";
    let (model, _) = load_model(name, true);
    let exp = load_tensors(&format!("{name}/text/expected.safetensors"));
    let ids: Vec<u32> = exp["input_ids"]
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|i| i as u32)
        .collect();
    let e = model
        .embed_tokens(&Tensor::new(ids.as_slice(), &Device::Cpu).unwrap())
        .unwrap();
    let d = (e - &exp["inputs_embeds"])
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(d, 0.0);
}
