//! The CTranslate2 reader and the name mapping on a small hand-written `model.bin`, and a
//! tiny random Whisper run end to end from a CTranslate2 and an HF folder. No assets.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor};
use videollama_asr::ct2::{self, Ct2DType, Ct2Variable};
use videollama_asr::{to_webvtt, CheckpointFormat, Whisper};

const D: usize = 8;
const HEADS: i16 = 2;
const N_MELS: usize = 4;
const AUDIO_CTX: usize = 6;
const TEXT_CTX: usize = 16;
const N_TIMESTAMPS: usize = 13;

/// Text tokens, then Whisper's specials, then timestamps `<|0.00|>` … `<|0.24|>`.
fn vocabulary() -> Vec<String> {
    let mut v: Vec<String> = ["h", "e", "l", "o", "Ġw", "r", "d", ".", "Ġ", "x"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.extend(
        [
            "<|endoftext|>",
            "<|startoftranscript|>",
            "<|en|>",
            "<|translate|>",
            "<|transcribe|>",
            "<|startoflm|>",
            "<|startofprev|>",
            "<|nocaptions|>",
            "<|notimestamps|>",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    v.extend((0..N_TIMESTAMPS).map(|i| format!("<|{:.2}|>", i as f64 * 0.02)));
    v
}

/// Deterministic values that f16 represents exactly (multiples of 1/256 in [-0.5, 0.5)).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) % 256) as f32 / 256.0 - 0.5
        })
        .collect()
}

/// IEEE half bits of `x` (exactly representable normal or zero values only).
fn f16_bits(x: f32) -> u16 {
    if x == 0.0 {
        return 0;
    }
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32 - 127 + 15;
    assert!(
        (1..31).contains(&exp) && b & 0x1fff == 0,
        "{x} is not exact in f16"
    );
    sign | ((exp as u16) << 10) | ((b >> 13) & 0x3ff) as u16
}

fn f16_var(shape: &[usize], seed: u64) -> (Ct2Variable, Vec<f32>) {
    let v = values(shape.iter().product(), seed);
    let data = v.iter().flat_map(|&x| f16_bits(x).to_le_bytes()).collect();
    let var = Ct2Variable {
        shape: shape.to_vec(),
        dtype: Ct2DType::F16,
        data,
    };
    (var, v)
}

fn f32_var(shape: &[usize], v: &[f32]) -> Ct2Variable {
    Ct2Variable {
        shape: shape.to_vec(),
        dtype: Ct2DType::F32,
        data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

fn scalar(dtype: Ct2DType, v: i64) -> Ct2Variable {
    let data = match dtype {
        Ct2DType::I8 => vec![v as i8 as u8],
        Ct2DType::I16 => (v as i16).to_le_bytes().to_vec(),
        _ => unreachable!(),
    };
    Ct2Variable {
        shape: vec![],
        dtype,
        data,
    }
}

/// A tiny WhisperSpec: (file bytes, f32 values of every float variable by CT2 name).
fn tiny_model_bin() -> (Vec<u8>, HashMap<String, Vec<f32>>) {
    let n_vocab = vocabulary().len();
    let mut vars: Vec<(String, Ct2Variable)> = Vec::new();
    let mut vals = HashMap::new();
    let mut seed = 1;
    let mut add = |name: String, shape: &[usize], vars: &mut Vec<(String, Ct2Variable)>| {
        seed += 1;
        let (var, v) = f16_var(shape, seed);
        vals.insert(name.clone(), v);
        vars.push((name, var));
    };
    add("encoder/conv1/weight".into(), &[D, N_MELS, 3], &mut vars);
    add("encoder/conv1/bias".into(), &[D], &mut vars);
    add("encoder/conv2/weight".into(), &[D, D, 3], &mut vars);
    add("encoder/conv2/bias".into(), &[D], &mut vars);
    add(
        "encoder/position_encodings/encodings".into(),
        &[AUDIO_CTX, D],
        &mut vars,
    );
    add("decoder/embeddings/weight".into(), &[n_vocab, D], &mut vars);
    add(
        "decoder/position_encodings/encodings".into(),
        &[TEXT_CTX, D],
        &mut vars,
    );
    for side in ["encoder", "decoder"] {
        add(format!("{side}/layer_norm/gamma"), &[D], &mut vars);
        add(format!("{side}/layer_norm/beta"), &[D], &mut vars);
        let layers = if side == "encoder" { 1 } else { 2 };
        for i in 0..layers {
            let p = format!("{side}/layer_{i}");
            for ln in ["self_attention/layer_norm", "ffn/layer_norm"] {
                add(format!("{p}/{ln}/gamma"), &[D], &mut vars);
                add(format!("{p}/{ln}/beta"), &[D], &mut vars);
            }
            add(
                format!("{p}/self_attention/linear_0/weight"),
                &[3 * D, D],
                &mut vars,
            );
            add(
                format!("{p}/self_attention/linear_0/bias"),
                &[3 * D],
                &mut vars,
            );
            add(
                format!("{p}/self_attention/linear_1/weight"),
                &[D, D],
                &mut vars,
            );
            add(format!("{p}/self_attention/linear_1/bias"), &[D], &mut vars);
            add(format!("{p}/ffn/linear_0/bias"), &[4 * D], &mut vars);
            add(format!("{p}/ffn/linear_1/weight"), &[D, 4 * D], &mut vars);
            add(format!("{p}/ffn/linear_1/bias"), &[D], &mut vars);
            if side == "decoder" {
                add(format!("{p}/attention/layer_norm/gamma"), &[D], &mut vars);
                add(format!("{p}/attention/layer_norm/beta"), &[D], &mut vars);
                add(format!("{p}/attention/linear_0/weight"), &[D, D], &mut vars);
                add(format!("{p}/attention/linear_0/bias"), &[D], &mut vars);
                add(
                    format!("{p}/attention/linear_1/weight"),
                    &[2 * D, D],
                    &mut vars,
                );
                add(format!("{p}/attention/linear_1/bias"), &[2 * D], &mut vars);
                add(format!("{p}/attention/linear_2/weight"), &[D, D], &mut vars);
                add(format!("{p}/attention/linear_2/bias"), &[D], &mut vars);
            }
        }
    }
    // ffn/linear_0/weight [4D, D] as int8 with one scale per row (CTranslate2 int8).
    for (p, layers) in [("encoder", 1), ("decoder", 2)] {
        for i in 0..layers {
            let name = format!("{p}/layer_{i}/ffn/linear_0/weight");
            let q: Vec<i8> = values(4 * D * D, 100 + i as u64)
                .iter()
                .map(|&x| (x * 254.0) as i8)
                .collect();
            let scale: Vec<f32> = (0..4 * D).map(|r| 100.0 + r as f32).collect();
            let w: Vec<f32> = q
                .iter()
                .enumerate()
                .map(|(j, &x)| x as f32 / scale[j / D])
                .collect();
            vals.insert(name.clone(), w);
            vars.push((
                name.clone(),
                Ct2Variable {
                    shape: vec![4 * D, D],
                    dtype: Ct2DType::I8,
                    data: q.iter().map(|&x| x as u8).collect(),
                },
            ));
            vars.push((format!("{name}_scale"), f32_var(&[4 * D], &scale)));
        }
    }
    vars.push((
        "encoder/num_heads".into(),
        scalar(Ct2DType::I16, HEADS as i64),
    ));
    vars.push((
        "decoder/num_heads".into(),
        scalar(Ct2DType::I16, HEADS as i64),
    ));
    vars.push(("decoder/activation".into(), scalar(Ct2DType::I8, 3)));
    vars.push(("decoder/pre_norm".into(), scalar(Ct2DType::I8, 1)));
    let refs: Vec<(&str, Ct2Variable)> =
        vars.iter().map(|(n, v)| (n.as_str(), v.clone())).collect();
    let bytes = ct2::write_model_bin(
        "WhisperSpec",
        3,
        &refs,
        &[("decoder/projection/weight", "decoder/embeddings/weight")],
    );
    (bytes, vals)
}

fn write_ct2_folder(dir: &Path, bytes: &[u8]) {
    std::fs::write(dir.join("model.bin"), bytes).unwrap();
    std::fs::write(dir.join("vocabulary.txt"), vocabulary().join("\n") + "\n").unwrap();
}

fn rows(v: &[f32], k: usize, n: usize) -> Vec<f32> {
    let len = v.len() / n;
    v[k * len..(k + 1) * len].to_vec()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn reads_a_handwritten_model_bin_and_maps_the_names() {
    let (bytes, vals) = tiny_model_bin();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("model.bin");
    std::fs::write(&path, &bytes).unwrap();
    let m = ct2::read_model_bin(std::slice::from_ref(&path)).unwrap();
    assert_eq!(
        (m.binary_version, m.spec.as_str(), m.revision),
        (6, "WhisperSpec", 3)
    );
    assert_eq!(m.scalar("encoder/num_heads").unwrap(), 2);
    // The alias resolves to the embeddings.
    assert_eq!(
        m.get("decoder/projection/weight").unwrap().data,
        m.get("decoder/embeddings/weight").unwrap().data
    );

    let (dims, t) = ct2::whisper_to_hf(&m).unwrap();
    assert_eq!(
        (
            dims.n_mels,
            dims.n_audio_ctx,
            dims.n_audio_state,
            dims.n_audio_head,
            dims.n_audio_layer
        ),
        (N_MELS, AUDIO_CTX, D, 2, 1)
    );
    assert_eq!(
        (
            dims.n_vocab,
            dims.n_text_ctx,
            dims.n_text_head,
            dims.n_text_layer
        ),
        (vocabulary().len(), TEXT_CTX, 2, 2)
    );
    // f16 → f32 is exact; fused Q/K/V and cross K/V split by rows; K biases dropped.
    let e = "model.encoder.layers.0.self_attn";
    let qkv_w = &vals["encoder/layer_0/self_attention/linear_0/weight"];
    let qkv_b = &vals["encoder/layer_0/self_attention/linear_0/bias"];
    assert_eq!(flat(&t[&format!("{e}.q_proj.weight")]), rows(qkv_w, 0, 3));
    assert_eq!(flat(&t[&format!("{e}.k_proj.weight")]), rows(qkv_w, 1, 3));
    assert_eq!(flat(&t[&format!("{e}.v_proj.weight")]), rows(qkv_w, 2, 3));
    assert_eq!(flat(&t[&format!("{e}.q_proj.bias")]), rows(qkv_b, 0, 3));
    assert_eq!(flat(&t[&format!("{e}.v_proj.bias")]), rows(qkv_b, 2, 3));
    assert!(!t.contains_key(&format!("{e}.k_proj.bias")));
    let c = "model.decoder.layers.1.encoder_attn";
    let kv_w = &vals["decoder/layer_1/attention/linear_1/weight"];
    let kv_b = &vals["decoder/layer_1/attention/linear_1/bias"];
    assert_eq!(flat(&t[&format!("{c}.k_proj.weight")]), rows(kv_w, 0, 2));
    assert_eq!(flat(&t[&format!("{c}.v_proj.weight")]), rows(kv_w, 1, 2));
    assert_eq!(flat(&t[&format!("{c}.v_proj.bias")]), rows(kv_b, 1, 2));
    assert!(!t.contains_key(&format!("{c}.k_proj.bias")));
    assert_eq!(
        flat(&t[&format!("{c}.out_proj.weight")]),
        vals["decoder/layer_1/attention/linear_2/weight"]
    );
    // The rest of the table.
    let pairs = [
        ("encoder/conv1/weight", "model.encoder.conv1.weight"),
        (
            "encoder/position_encodings/encodings",
            "model.encoder.embed_positions.weight",
        ),
        (
            "encoder/layer_norm/gamma",
            "model.encoder.layer_norm.weight",
        ),
        (
            "decoder/embeddings/weight",
            "model.decoder.embed_tokens.weight",
        ),
        (
            "decoder/position_encodings/encodings",
            "model.decoder.embed_positions.weight",
        ),
        ("decoder/layer_norm/beta", "model.decoder.layer_norm.bias"),
        (
            "decoder/layer_0/self_attention/layer_norm/gamma",
            "model.decoder.layers.0.self_attn_layer_norm.weight",
        ),
        (
            "decoder/layer_0/attention/layer_norm/beta",
            "model.decoder.layers.0.encoder_attn_layer_norm.bias",
        ),
        (
            "decoder/layer_0/ffn/layer_norm/gamma",
            "model.decoder.layers.0.final_layer_norm.weight",
        ),
        (
            "decoder/layer_0/ffn/linear_1/weight",
            "model.decoder.layers.0.fc2.weight",
        ),
        (
            "encoder/layer_0/self_attention/linear_1/bias",
            "model.encoder.layers.0.self_attn.out_proj.bias",
        ),
    ];
    for (src, dst) in pairs {
        assert_eq!(flat(&t[dst]), vals[src], "{src} → {dst}");
    }
    // int8 weights are dequantised with their per-row scales.
    let got = flat(&t["model.decoder.layers.1.fc1.weight"]);
    let want = &vals["decoder/layer_1/ffn/linear_0/weight"];
    assert!(got
        .iter()
        .zip(want)
        .all(|(a, b)| (a - b).abs() <= 1e-7 * b.abs().max(1.0)));
    // Every tensor accounted for: 11 model-level, 15 per encoder layer (K bias dropped),
    // 15 + 9 per decoder layer.
    let expected = 11 + 15 + 2 * (15 + 9);
    assert_eq!(t.len(), expected);
}

#[test]
fn parts_are_read_as_one_file() {
    let (bytes, _) = tiny_model_bin();
    let tmp = tempfile::tempdir().unwrap();
    // Three parts, cut inside a header and inside a tensor.
    let cuts = [0, 7, bytes.len() / 2 + 3, bytes.len()];
    for i in 0..3 {
        std::fs::write(
            tmp.path().join(format!("model.bin.part{}", i + 1)),
            &bytes[cuts[i]..cuts[i + 1]],
        )
        .unwrap();
    }
    let files = ct2::model_bin_files(tmp.path()).unwrap();
    assert_eq!(files.len(), 3);
    let joined = ct2::read_model_bin(&files).unwrap();
    let single_path = tmp.path().join("single.bin");
    std::fs::write(&single_path, &bytes).unwrap();
    let single = ct2::read_model_bin(&[single_path]).unwrap();
    assert_eq!(joined.variables.len(), single.variables.len());
    for (k, v) in &single.variables {
        assert_eq!(joined.variables[k].data, v.data, "{k}");
        assert_eq!(joined.variables[k].shape, v.shape, "{k}");
    }
    assert_eq!(joined.aliases, single.aliases);
}

#[test]
fn corrupt_files_are_errors_naming_the_file() {
    let (bytes, _) = tiny_model_bin();
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("model.bin");
    let check = |data: &[u8], needle: &str| {
        std::fs::write(&p, data).unwrap();
        let err = ct2::read_model_bin(std::slice::from_ref(&p))
            .unwrap_err()
            .to_string();
        assert!(err.contains(&p.display().to_string()), "{err}");
        assert!(err.contains(needle), "expected {needle:?} in {err}");
    };
    check(&bytes[..bytes.len() / 3], "truncated");
    check(&bytes[..2], "truncated");
    let mut v = bytes.clone();
    v[0] = 9;
    check(&v, "binary version 9");
    // The first variable's dtype byte: after version, spec, revision, count, name, rank, dims.
    let name_len = u16::from_le_bytes([bytes[4], bytes[5]]) as usize;
    let first_var = 4 + 2 + name_len + 4 + 4;
    let vname_len = u16::from_le_bytes([bytes[first_var], bytes[first_var + 1]]) as usize;
    let rank_at = first_var + 2 + vname_len;
    let dtype_at = rank_at + 1 + 4 * bytes[rank_at] as usize;
    let mut v = bytes.clone();
    v[dtype_at] = 42;
    check(&v, "unknown dtype id 42");
    let mut v = bytes.clone();
    v[dtype_at] = 0; // f32: the byte count no longer matches the shape
    check(&v, "bytes for shape");
    // Not Whisper.
    let other = ct2::write_model_bin("TransformerSpec", 1, &[], &[]);
    std::fs::write(&p, other).unwrap();
    let m = ct2::read_model_bin(std::slice::from_ref(&p)).unwrap();
    let err = ct2::whisper_to_hf(&m).unwrap_err().to_string();
    assert!(
        err.contains("TransformerSpec") && err.contains("model.bin"),
        "{err}"
    );
    // A folder without any model file.
    let empty = tempfile::tempdir().unwrap();
    let err = Whisper::load(empty.path()).unwrap_err().to_string();
    assert!(
        err.contains(&empty.path().display().to_string()) && err.contains("model.bin"),
        "{err}"
    );
}

/// A random tiny Whisper loads from a CTranslate2 folder and from the equivalent HF
/// folder (safetensors written from the converted tensors) and transcribes identically.
#[test]
fn tiny_random_whisper_runs_end_to_end_from_both_layouts() {
    let (bytes, _) = tiny_model_bin();
    let ct2_dir = tempfile::tempdir().unwrap();
    write_ct2_folder(ct2_dir.path(), &bytes);
    let a = Whisper::load(ct2_dir.path()).unwrap();
    assert_eq!(*a.format(), CheckpointFormat::CTranslate2 { parts: 1 });
    assert!(!a.is_multilingual());

    let hf_dir = tempfile::tempdir().unwrap();
    let m = ct2::read_model_bin(&[ct2_dir.path().join("model.bin")]).unwrap();
    let (dims, tensors) = ct2::whisper_to_hf(&m).unwrap();
    candle_core::safetensors::save(&tensors, hf_dir.path().join("model.safetensors")).unwrap();
    let config = serde_json::json!({
        "num_mel_bins": dims.n_mels, "max_source_positions": dims.n_audio_ctx,
        "d_model": dims.n_audio_state, "encoder_attention_heads": dims.n_audio_head,
        "encoder_layers": dims.n_audio_layer, "vocab_size": dims.n_vocab,
        "max_target_positions": dims.n_text_ctx, "decoder_attention_heads": dims.n_text_head,
        "decoder_layers": dims.n_text_layer, "activation_function": "gelu",
        "suppress_tokens": [], "begin_suppress_tokens": [8, 10]
    });
    std::fs::write(hf_dir.path().join("config.json"), config.to_string()).unwrap();
    std::fs::write(
        hf_dir.path().join("vocabulary.txt"),
        vocabulary().join("\n"),
    )
    .unwrap();
    let b = Whisper::load(hf_dir.path()).unwrap();
    assert_eq!(*b.format(), CheckpointFormat::HuggingFace);
    // Without a config, the blank (" " = "Ġ", id 8) and EOT are found in the vocabulary.
    assert_eq!(a.suppress_tokens().1, [8, 10]);
    assert_eq!(b.suppress_tokens(), a.suppress_tokens());

    // 0.5 s of a chirp: 4 windows of 12 frames (2 × n_audio_ctx) for this tiny model.
    let pcm: Vec<f32> = (0..8000)
        .map(|i| {
            let t = i as f32 / 16000.0;
            0.3 * (2.0 * std::f32::consts::PI * (200.0 + 800.0 * t) * t).sin()
        })
        .collect();
    let ta = a.transcribe(&pcm).unwrap();
    let tb = b.transcribe(&pcm).unwrap();
    assert_eq!(ta, tb);
    let mut last_end = 0.0;
    for s in &ta.segments {
        assert!(
            s.segment.start_s >= 0.0 && s.segment.end_s >= s.segment.start_s,
            "{s:?}"
        );
        assert!(s.segment.end_s <= 0.5 + 0.24 + 1e-9, "{s:?}");
        assert!(s.segment.start_s + 1e-9 >= last_end - 0.24, "{s:?}");
        last_end = s.segment.end_s;
    }
    let vtt = to_webvtt(&ta.segments());
    assert!(vtt.starts_with("WEBVTT\n"));
    // Same model, through the encoder directly: shapes follow the dims.
    let mel = a.log_mel(&pcm);
    assert_eq!((mel.n_mels, mel.n_frames), (N_MELS, 50));
    let enc = a.encode_window(&mel.window(0, 12, 12)).unwrap();
    assert_eq!(enc.dims(), &[1, AUDIO_CTX, D]);
    assert_eq!(enc.dtype(), DType::F32);
    // A wrong window length is an error, not a panic.
    assert!(a.encode_window(&[0.0; N_MELS * 10]).is_err());
    println!("{ta:?}");
}

#[test]
fn language_options_are_checked() {
    let (bytes, _) = tiny_model_bin();
    let dir = tempfile::tempdir().unwrap();
    write_ct2_folder(dir.path(), &bytes);
    let mut w = Whisper::load(dir.path()).unwrap();
    let mut o = w.options().clone();
    o.language = Some("English".into());
    w.set_options(o.clone()).unwrap();
    o.language = Some("fr".into());
    let err = w.set_options(o.clone()).unwrap_err().to_string();
    assert!(err.contains("English-only"), "{err}");
    o.language = None;
    o.task = videollama_asr::Task::Translate;
    assert!(w.set_options(o).is_err());
    assert_eq!(
        w.detect_language(&[0.0; 1600]).unwrap(),
        ("en".to_string(), 1.0)
    );
}
