//! `videollama quantize --model DIR --out DIR`: write a checkpoint's weights once as
//! `OUT/model.gguf` with the linear layers quantized (the work is in
//! `videollama_pipeline::quantize`); `--model OUT` then loads without quantizing anything.

use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;
use videollama_nn::WeightFormat;
use videollama_pipeline::quantize::{quantize_checkpoint, QuantizeOptions};

#[derive(Args)]
pub struct QuantizeArgs {
    /// Hugging Face checkpoint folder to read (config.json + safetensors).
    #[arg(long)]
    pub model: PathBuf,
    /// Output folder (created if needed): model.gguf plus copies of the json/tokenizer files.
    #[arg(long)]
    pub out: PathBuf,
    /// Format of the language model's linear layers: q8_0, q4k, q5k, q6k or none.
    #[arg(long, default_value = "q8_0")]
    pub quantize: String,
    /// Format of the vision tower's linear layers (same choices).
    #[arg(long, default_value = "q8_0")]
    pub quantize_vision: String,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse(flag: &str, value: &str) -> Result<Option<WeightFormat>> {
    if value.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    match value.parse::<WeightFormat>() {
        Ok(f) => Ok(Some(f)),
        Err(e) => bail!("{flag}: {e} or none"),
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

pub fn run(args: &QuantizeArgs) -> Result<()> {
    let opts = QuantizeOptions {
        llm: parse("--quantize", &args.quantize)?,
        vision: parse("--quantize-vision", &args.quantize_vision)?,
    };
    let start = std::time::Instant::now();
    let report = quantize_checkpoint(&args.model, &args.out, &opts)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let formats: Vec<String> = report
        .quantized
        .iter()
        .map(|(f, n)| format!("{n} {f}"))
        .collect();
    println!("wrote {}", report.out_file.display());
    println!(
        "tensors   {} quantized ({}), {} kept as stored{}",
        report.quantized_total(),
        if formats.is_empty() {
            "none".to_string()
        } else {
            formats.join(", ")
        },
        report.kept,
        if report.kept_linear > 0 {
            format!(
                " ({} linear weights whose rows fit no block)",
                report.kept_linear
            )
        } else {
            String::new()
        }
    );
    println!(
        "bytes     {} → {} ({:.0} %)",
        mib(report.bytes_before),
        mib(report.bytes_after),
        100.0 * report.bytes_after as f64 / report.bytes_before.max(1) as f64
    );
    println!("copied    {} file(s)", report.copied.len());
    println!("took      {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}
