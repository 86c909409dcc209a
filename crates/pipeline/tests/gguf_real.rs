//! Real GGUF files from the Hub (not in CI: `cargo test -p videollama-pipeline --test
//! gguf_real -- --ignored`). Each test skips with a message when its file is absent.
//!
//! * `SMOLLM2_GGUF` (default `/tmp/gguf/SmolLM2-135M-Instruct.Q4_1.gguf`): llama arch,
//!   q/k rows permuted by llama.cpp, Q4_1 + Q8_0 blocks, tied embeddings, `smollm`
//!   pre-tokenizer. The reference (numpy, dequantized weights) answers
//!   "The capital of France is Paris."
//! * `QWEN_CODER_GGUF` (default `/tmp/gguf/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf`): qwen2
//!   arch, q/k/v biases, Q4_K / Q5_0 / Q6_K / Q8_0 blocks, separate `output.weight`.

use std::path::{Path, PathBuf};
use videollama_nn::WeightFormat;
use videollama_pipeline::{AnswerOptions, EncodedMedia, LoadOptions, Pipeline};

fn file(var: &str, default: &str) -> Option<PathBuf> {
    let path = PathBuf::from(std::env::var(var).unwrap_or_else(|_| default.to_string()));
    if path.is_file() {
        Some(path)
    } else {
        eprintln!(
            "skipped: {} not found (set {var} to a copy)",
            path.display()
        );
        None
    }
}

fn ask(
    path: &Path,
    quantize: Option<WeightFormat>,
    question: &str,
    max_new_tokens: usize,
) -> String {
    let mut opts = LoadOptions::default();
    opts.weights.quantize_llm = quantize;
    let p = Pipeline::load(path, &opts).unwrap();
    let opts = AnswerOptions {
        max_new_tokens,
        ..AnswerOptions::default()
    };
    let a = p
        .answer(
            &[question.to_string()],
            &EncodedMedia::text_only(),
            &opts,
            |_| true,
        )
        .unwrap();
    eprintln!("{} ({quantize:?}): {:?}", path.display(), a.answer);
    a.answer
}

/// `videollama ask --model SmolLM2-135M-Instruct.Q4_1.gguf "What is the capital of France?"`:
/// the default (fast) mode answers like the reference.
#[test]
#[ignore]
fn smollm2_q4_1_knows_the_capital_of_france() {
    let Some(path) = file("SMOLLM2_GGUF", "/tmp/gguf/SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let a = ask(
        &path,
        Some(WeightFormat::Q8_0),
        "What is the capital of France?",
        20,
    );
    assert_eq!(a, "The capital of France is Paris.");
}

/// The exact mode (every weight dequantized, as the numpy reference computes) gives the
/// reference's answer too.
#[test]
#[ignore]
fn smollm2_q4_1_exact_mode_matches_the_reference() {
    let Some(path) = file("SMOLLM2_GGUF", "/tmp/gguf/SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let a = ask(&path, None, "What is the capital of France?", 20);
    assert_eq!(a, "The capital of France is Paris.");
}

/// The Qwen2.5 coder writes a Python `add` function.
#[test]
#[ignore]
fn qwen_coder_q4_k_m_writes_an_add_function() {
    let Some(path) = file(
        "QWEN_CODER_GGUF",
        "/tmp/gguf/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf",
    ) else {
        return;
    };
    let a = ask(
        &path,
        Some(WeightFormat::Q8_0),
        "Write a Python function add(a, b) that returns the sum of a and b.",
        80,
    );
    assert!(a.contains("def add(a, b):"), "{a}");
    assert!(a.contains("return a + b"), "{a}");
}

/// Issue 8's proof for the quantized path on a real model: for a few real prompts, the
/// default mode (SmolLM2's Q4_1 blocks re-quantized to Q8_0, 8-bit activations) against the
/// exact mode (every weight dequantized to f32): first-step logits within 10 % relative L2
/// on every prompt, and the factual prompt's greedy answer identical. (Each of the ~210 quantized products on the way
/// to the logits — 30 layers × 7 — adds ≈ 0.5 % independent error, ≈ √210 · 0.5 % ≈ 7 % in
/// all; the golden fixtures, 2 layers deep, measure 0.6–2.4 %. Measured here: 6.6 % on the
/// first prompt.)
#[test]
#[ignore]
fn smollm2_q8_0_matches_f32_on_real_prompts() {
    let Some(path) = file("SMOLLM2_GGUF", "/tmp/gguf/SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let load = |quantize: Option<WeightFormat>| {
        let mut opts = LoadOptions::default();
        opts.weights.quantize_llm = quantize;
        Pipeline::load(&path, &opts).unwrap()
    };
    let (exact, fast) = (load(None), load(Some(WeightFormat::Q8_0)));
    let opts = AnswerOptions {
        max_new_tokens: 16,
        collect_tensors: true,
        ..AnswerOptions::default()
    };
    let mut agreed = Vec::new();
    for question in [
        "What is the capital of France?",
        "Name three primary colours.",
        "Write a haiku about the sea.",
        "How many legs does a spider have?",
    ] {
        let run = |p: &Pipeline| {
            p.answer(
                &[question.to_string()],
                &EncodedMedia::text_only(),
                &opts,
                |_| true,
            )
            .unwrap()
        };
        let (a, b) = (run(&exact), run(&fast));
        let la = &a.tensors["logits_last"];
        let lb = &b.tensors["logits_last"];
        let d = (la - lb).unwrap().sqr().unwrap().sum_all().unwrap();
        let n = la.sqr().unwrap().sum_all().unwrap();
        let rel = (d.to_scalar::<f32>().unwrap() / n.to_scalar::<f32>().unwrap()).sqrt();
        eprintln!(
            "{question:?}: logits rel L2 {rel:.2e}; f32 {:?} / q8_0 {:?}",
            a.answer, b.answer
        );
        let same = a
            .token_ids
            .iter()
            .zip(&b.token_ids)
            .take_while(|(x, y)| x == y)
            .count();
        eprintln!(
            "  identical greedy prefix: {same} of {} tokens",
            a.token_ids.len()
        );
        assert!(rel < 0.10, "{question:?}: logits differ by {rel}");
        agreed.push(same);
    }
    // The factual prompt's answer (the reference's "The capital of France is Paris.") is
    // identical. Open-ended prompts part after 15, 6 and 0 tokens (measured): SmolLM2-135M's
    // top-2 margins there are below the 8-bit error, and on the very same prompts the
    // per-32-block activation path (MISTRALRS_FORCE_AVX2=1) parts too (after 1 and 6
    // tokens, and on "Paris"). The measurements are in the session note of issue 8.
    assert_eq!(agreed[0], 8, "greedy prefixes {agreed:?}");
}
