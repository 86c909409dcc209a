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
