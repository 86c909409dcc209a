//! Builds the default model's trained files (`assets/default-model/`) into the binary when
//! they are there; a checkout without them builds a binary whose `ask` without `--model`
//! says how to make them (scripts/make-default-model.sh).

use std::path::Path;

const FILES: [&str; 6] = [
    "config.json",
    "model-00001-of-00002.safetensors",
    "adapter_config.json",
    "adapter_model.safetensors",
    "vision_tower/config.json",
    "vision_tower/preprocessor_config.json",
];

fn main() {
    println!("cargo::rustc-check-cfg=cfg(default_model_assets)");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/default-model");
    println!("cargo::rerun-if-changed={}", dir.display());
    let mut complete = true;
    for f in FILES {
        let path = dir.join(f);
        println!("cargo::rerun-if-changed={}", path.display());
        complete &= std::fs::metadata(&path).is_ok_and(|m| m.len() > 0);
    }
    if complete {
        println!("cargo::rustc-cfg=default_model_assets");
    }
}
