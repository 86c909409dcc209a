//! `videollama init-model`: a new, untrained model folder for `videollama train`
//! (see `videollama_train::init`).

use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct InitModelArgs {
    /// Output of `videollama train-vision-tower` (vision_tower/ + vision_tower.safetensors).
    #[arg(long)]
    pub tower: PathBuf,
    /// Whisper CTranslate2 folder whose encoder becomes the audio tower (omit: no audio).
    #[arg(long)]
    pub whisper: Option<PathBuf>,
    /// The language model, a GGUF file (hard-linked into OUT and named by `llm_gguf`).
    #[arg(long)]
    pub llm: PathBuf,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value = "stc_connector_v35")]
    pub projector: String,
    /// Frames sampled per video (`num_frames`).
    #[arg(long, default_value_t = 4)]
    pub num_frames: usize,
    /// `mm_vision_select_layer`.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub select_layer: i64,
    /// Seconds of sound the audio tower hears (cropped or zero-padded).
    #[arg(long, default_value_t = 8.0)]
    pub audio_max_seconds: f64,
    /// Whisper encoder positions averaged into one audio token.
    #[arg(long, default_value_t = 25)]
    pub audio_pool_stride: usize,
    #[arg(long, default_value_t = 2048)]
    pub context_length: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Storage of the vision tower / connector / projector shard: f32, f16 or bf16.
    #[arg(long, default_value = "f16")]
    pub weights_dtype: String,
}

pub fn run(args: &InitModelArgs) -> Result<()> {
    let audio_config = match &args.whisper {
        Some(dir) => videollama_pipeline::audio_tower::checkpoint_config_for_whisper(
            dir,
            args.audio_max_seconds,
            args.audio_pool_stride,
        )?,
        None => serde_json::Value::Null,
    };
    let spec = videollama_train::init::InitSpec {
        tower_dir: args.tower.clone(),
        whisper_ct2: args.whisper.clone(),
        llm_gguf: args.llm.clone(),
        projector_type: args.projector.clone(),
        num_frames: args.num_frames,
        select_layer: args.select_layer,
        audio_config,
        context_length: args.context_length,
        seed: args.seed,
        weights_dtype: match args.weights_dtype.as_str() {
            "f32" => candle_core::DType::F32,
            "f16" => candle_core::DType::F16,
            "bf16" => candle_core::DType::BF16,
            other => anyhow::bail!("--weights-dtype {other}: use f32, f16 or bf16"),
        },
    };
    videollama_train::init::init_model(&spec, &args.out)?;
    println!("{}", args.out.display());
    Ok(())
}
