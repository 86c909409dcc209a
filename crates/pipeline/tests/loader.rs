//! Checkpoint loading: bf16 shards with an index, and every malformed checkpoint
//! producing a clear error that names the file or tensor (never a panic).

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use videollama_pipeline::checkpoint::{find_weight_files, Checkpoint};
use videollama_pipeline::{AnswerOptions, EncodedMedia, LoadOptions, Pipeline};
use videollama_testutil::golden;

const FIXTURE: &str = "videollama2-mistral-tiny";

/// Copy a fixture's `checkpoint/` and `vision_tower/` into a fresh temp dir
/// (same layout), so a test can damage the copy; the vendored files stay untouched.
fn copy_fixture(fixture: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
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
    copy_dir(
        &golden(&format!("{fixture}/checkpoint")),
        &tmp.path().join("checkpoint"),
    );
    copy_dir(
        &golden(&format!("{fixture}/vision_tower")),
        &tmp.path().join("vision_tower"),
    );
    let ckpt = tmp.path().join("checkpoint");
    (tmp, ckpt)
}

fn all_tensors(dir: &Path) -> HashMap<String, Tensor> {
    let mut out = HashMap::new();
    for f in find_weight_files(dir).unwrap() {
        out.extend(candle_core::safetensors::load(&f, &Device::Cpu).unwrap());
    }
    out
}

/// Rewrite a checkpoint's weights as `n` shards in `dtype` plus an index file.
fn reshard(dir: &Path, tensors: &HashMap<String, Tensor>, n: usize, dtype: DType) {
    for f in find_weight_files(dir).unwrap() {
        std::fs::remove_file(f).unwrap();
    }
    let _ = std::fs::remove_file(dir.join("model.safetensors.index.json"));
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut weight_map = serde_json::Map::new();
    for (k, chunk) in names.chunks(names.len().div_ceil(n)).enumerate() {
        let file = format!("model-{:05}-of-{:05}.safetensors", k + 1, n);
        let shard: HashMap<String, Tensor> = chunk
            .iter()
            .map(|name| ((*name).clone(), tensors[*name].to_dtype(dtype).unwrap()))
            .collect();
        candle_core::safetensors::save(&shard, dir.join(&file)).unwrap();
        for name in chunk {
            weight_map.insert((*name).clone(), serde_json::Value::String(file.clone()));
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::to_string_pretty(&index).unwrap(),
    )
    .unwrap();
}

fn load_err(dir: &Path) -> String {
    match Pipeline::load(dir, &LoadOptions::default()) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bf16_shards_with_index_load_within_bf16_rounding() {
    let (_tmp, dir) = copy_fixture(FIXTURE);
    let original = all_tensors(&dir);
    reshard(&dir, &original, 3, DType::BF16);
    assert_eq!(find_weight_files(&dir).unwrap().len(), 3);

    let ckpt = Checkpoint::open(&dir, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(ckpt.stored_dtypes().get("BF16"), Some(&original.len()));
    let vb = ckpt.var_builder();
    for (name, want) in &original {
        let got = vb.get(want.dims(), name).unwrap();
        let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (a, b) in got.iter().zip(&want) {
            // Exactly the f32 value rounded to bf16 (round-to-nearest-even), computed
            // independently with `half`; that is also within 2^-8 relative of the original.
            let rounded = half::bf16::from_f32(*b).to_f32();
            assert_eq!(*a, rounded, "{name}: loaded {a}, f32 {b}");
            assert!(
                (a - b).abs() <= b.abs() * 2f32.powi(-8),
                "{name}: {a} vs {b}"
            );
        }
    }
    // The whole pipeline loads from bf16 shards and answers (ids may differ from f32).
    let pipeline = Pipeline::load(&dir, &LoadOptions::default()).unwrap();
    let opts = AnswerOptions {
        max_new_tokens: 3,
        ..Default::default()
    };
    let answer = pipeline
        .answer(
            &["Hello?".to_string()],
            &EncodedMedia::text_only(),
            &opts,
            |_| true,
        )
        .unwrap();
    assert_eq!(answer.token_ids.len(), 3);
}

#[test]
fn missing_folder_is_named() {
    let err = load_err(Path::new("/nonexistent/videollama-model"));
    assert!(err.contains("/nonexistent/videollama-model"), "{err}");
}

#[test]
fn missing_shard_is_named() {
    let (_tmp, dir) = copy_fixture(FIXTURE);
    std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
    let err = load_err(&dir);
    assert!(
        err.contains("model-00002-of-00002.safetensors") && err.contains("missing"),
        "{err}"
    );
}

#[test]
fn truncated_shard_is_named() {
    let (_tmp, dir) = copy_fixture(FIXTURE);
    let shard = dir.join("model-00001-of-00002.safetensors");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_err(&dir);
    assert!(
        err.contains("model-00001-of-00002.safetensors")
            || err.contains(&dir.display().to_string()),
        "{err}"
    );
}

#[test]
fn every_missing_tensor_is_listed() {
    let (_tmp, dir) = copy_fixture(FIXTURE);
    let mut tensors = all_tensors(&dir);
    tensors.remove("model.norm.weight");
    tensors.remove("model.mm_projector.readout.2.bias");
    reshard(&dir, &tensors, 2, DType::F32);
    let err = load_err(&dir);
    assert!(
        err.contains("model.norm.weight")
            && err.contains("model.mm_projector.readout.2.bias")
            && err.contains("2 required"),
        "{err}"
    );
}

#[test]
fn shape_mismatch_is_named() {
    let (_tmp, dir) = copy_fixture(FIXTURE);
    let mut tensors = all_tensors(&dir);
    tensors.insert(
        "model.norm.weight".into(),
        Tensor::zeros(63, DType::F32, &Device::Cpu).unwrap(),
    );
    reshard(&dir, &tensors, 2, DType::F32);
    let err = load_err(&dir);
    assert!(
        err.contains("model.norm.weight") && err.contains("63"),
        "{err}"
    );
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(&path, serde_json::to_string(&cfg).unwrap()).unwrap();
}

#[test]
fn unknown_projector_type_is_named() {
    let (_tmp, dir) = copy_fixture(FIXTURE);
    edit_config(&dir, |c| c["mm_projector_type"] = "qformer_9000".into());
    let err = load_err(&dir);
    assert!(
        err.contains("qformer_9000") && err.contains("stc_connector"),
        "{err}"
    );
}

#[test]
fn unknown_model_type_is_named() {
    let (_tmp, dir) = copy_fixture(FIXTURE);
    edit_config(&dir, |c| c["model_type"] = "videollama2_gpt5".into());
    let err = load_err(&dir);
    assert!(
        err.contains("videollama2_gpt5") && err.contains("videollama2_qwen2"),
        "{err}"
    );
}

#[test]
fn missing_vision_tower_lists_where_it_looked() {
    let (_tmp, dir) = copy_fixture(FIXTURE);
    edit_config(&dir, |c| {
        c["mm_vision_tower"] = "vision_tower/clip-missing".into()
    });
    let err = load_err(&dir);
    assert!(
        err.contains("clip-missing") && err.contains("looked in"),
        "{err}"
    );
}

#[test]
fn prompt_longer_than_context_is_refused() {
    let (_tmp, dir) = copy_fixture(FIXTURE);
    edit_config(&dir, |c| c["max_position_embeddings"] = 64.into());
    let pipeline = Pipeline::load(&dir, &LoadOptions::default()).unwrap();
    let long = "tell me more ".repeat(40);
    let err = pipeline
        .answer(
            &[long],
            &EncodedMedia::text_only(),
            &AnswerOptions::default(),
            |_| true,
        )
        .err()
        .expect("must fail");
    let msg = err.to_string();
    assert!(msg.contains("too long") && msg.contains("64"), "{msg}");
}
