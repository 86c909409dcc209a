//! Installing the default model into the cache (`default_model::ensure_installed`) from
//! built-in files and the downloaded released parts: layout, index, reuse, reinstall when
//! the built-in files change, and the error without downloads. The real downloads
//! (scripts/fetch-default-model.sh, run by scripts/setup.sh) are needed for the install
//! itself; without them that test says so and skips.

use candle_core::{Device, Tensor};
use std::collections::HashMap;
use videollama_pipeline::default_model::{
    cache_root, downloaded_parts, ensure_installed, model_dir, AUDIO_TOWER_SHARD, LLM_GGUF_NAME,
    TRAINED_SHARD,
};

fn trained_shard(value: f32) -> Vec<u8> {
    let t = Tensor::full(value, (2, 3), &Device::Cpu).unwrap();
    let map: HashMap<String, Tensor> =
        [("model.mm_projector.readout.0.bias".to_string(), t)].into();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.safetensors");
    candle_core::safetensors::save(&map, &path).unwrap();
    std::fs::read(path).unwrap()
}

#[test]
fn without_downloads_the_error_names_the_fetch_script() {
    let root = tempfile::tempdir().unwrap();
    let shard = trained_shard(1.0);
    let files: Vec<(&str, &[u8])> = vec![("config.json", b"{}"), (TRAINED_SHARD, &shard)];
    let err = ensure_installed(&files, root.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("scripts/fetch-default-model.sh"), "{err}");
    assert!(err.contains("SmolLM2-135M-Instruct"), "{err}");
    assert!(!model_dir(root.path()).exists());
}

#[test]
fn install_assembles_the_folder_once_and_again_when_the_files_change() {
    let real = cache_root();
    if downloaded_parts(&real).is_err() {
        eprintln!(
            "skipped: no default-model downloads in {} (run scripts/fetch-default-model.sh)",
            real.display()
        );
        return;
    }
    let root = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(real.join("downloads"), root.path().join("downloads")).unwrap();
    let shard = trained_shard(1.0);
    let files: Vec<(&str, &[u8])> = vec![
        ("config.json", b"{\"a\": 1}"),
        (TRAINED_SHARD, &shard),
        ("vision_tower/config.json", b"{}"),
    ];
    let dir = ensure_installed(&files, root.path()).unwrap();
    assert_eq!(dir, model_dir(root.path()));
    assert_eq!(
        std::fs::read(dir.join("config.json")).unwrap(),
        b"{\"a\": 1}"
    );
    assert_eq!(
        std::fs::read(dir.join("vision_tower/config.json")).unwrap(),
        b"{}"
    );
    let (gguf, _) = downloaded_parts(root.path()).unwrap();
    assert_eq!(
        std::fs::metadata(dir.join(LLM_GGUF_NAME)).unwrap().len(),
        std::fs::metadata(gguf).unwrap().len()
    );
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let map = index["weight_map"].as_object().unwrap();
    assert_eq!(map["model.mm_projector.readout.0.bias"], TRAINED_SHARD);
    // Whisper tiny.en's encoder: 4 layers, under the audio tower prefix, in the other shard.
    assert_eq!(
        map["model.audio_tower.layers.3.fc2.weight"],
        AUDIO_TOWER_SHARD
    );
    assert!(map
        .keys()
        .all(|k| !k.starts_with("model.audio_tower.decoder")));
    let written = std::fs::metadata(dir.join(AUDIO_TOWER_SHARD))
        .unwrap()
        .modified()
        .unwrap();

    // Same built-in files: nothing is rewritten.
    ensure_installed(&files, root.path()).unwrap();
    let again = std::fs::metadata(dir.join(AUDIO_TOWER_SHARD))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(again, written);

    // New built-in files (a new build): installed afresh, no partial folder left.
    let shard2 = trained_shard(2.0);
    let files2: Vec<(&str, &[u8])> = vec![("config.json", b"{\"a\": 2}"), (TRAINED_SHARD, &shard2)];
    ensure_installed(&files2, root.path()).unwrap();
    assert_eq!(
        std::fs::read(dir.join("config.json")).unwrap(),
        b"{\"a\": 2}"
    );
    assert_eq!(std::fs::read(dir.join(TRAINED_SHARD)).unwrap(), shard2);
    assert!(!dir.join("vision_tower").exists());
    assert!(!root.path().join("default-model.partial").exists());
}
