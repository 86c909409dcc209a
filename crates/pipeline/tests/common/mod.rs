//! Helpers shared by the pipeline's golden tests.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;

/// Relative tolerance of every f32 golden comparison: max|a − b| ≤ TOL · max(1, max|ref|).
pub const TOL: f32 = 1e-4;

pub fn golden(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/golden")
        .join(rel)
}

pub fn load_tensors(rel: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(golden(rel), &Device::Cpu)
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
}

pub fn case_json(fixture: &str, case: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(golden(&format!("{fixture}/{case}/case.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Max |a − b| and the bound it must stay under; panics with the stage name when above.
pub fn assert_close(stage: &str, got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.dims(), want.dims(), "{stage}: shape");
    let got = got
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let want = want
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
    let err = got
        .iter()
        .zip(&want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        err <= TOL * scale,
        "{stage}: max abs error {err:e} > {:e} (ref max {scale})",
        TOL * scale
    );
    err / scale
}

pub fn ids_i64(t: &Tensor) -> Vec<i64> {
    t.to_dtype(DType::I64).unwrap().to_vec1::<i64>().unwrap()
}
