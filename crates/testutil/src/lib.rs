//! Helpers shared by the golden-fixture tests of the workspace crates (a dev-dependency only).
//!
//! The fixtures live in `tests/golden/<fixture>/` at the repository root (see
//! `tests/golden/README.md`): a tiny sharded `checkpoint/`, and per case a
//! `<case>/{expected,debug}.safetensors` and `<case>/case.json` written by the PyTorch
//! reference. Every f32 golden comparison uses one rule, [`assert_close`]:
//! `max|got − want| ≤ GOLDEN_REL_TOL · max(1, max|want|)`.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

/// Relative tolerance of the golden f32 comparisons:
/// `max|got − want| ≤ GOLDEN_REL_TOL · max(1, max|want|)`.
pub const GOLDEN_REL_TOL: f32 = 1e-4;

/// `tests/golden` at the repository root.
pub fn golden_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/testutil sits two levels below the repository root")
        .join("tests/golden")
}

/// A path below `tests/golden`, e.g. `golden("videollama2-mistral-tiny/checkpoint")`.
pub fn golden(rel: &str) -> PathBuf {
    golden_root().join(rel)
}

/// Every tensor of the safetensors file `tests/golden/<rel>`, on the CPU.
pub fn load_tensors(rel: &str) -> HashMap<String, Tensor> {
    let path = golden(rel);
    candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The JSON file `tests/golden/<rel>`, e.g. `load_json("<fixture>/checkpoint/config.json")`.
pub fn load_json(rel: &str) -> serde_json::Value {
    let path = golden(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A case's metadata, `tests/golden/<fixture>/<case>/case.json`.
pub fn case_json(fixture: &str, case: &str) -> serde_json::Value {
    load_json(&format!("{fixture}/{case}/case.json"))
}

/// The weight shards of `tests/golden/<fixture>/checkpoint`, in name order: every file named in
/// `model.safetensors.index.json`. Panics unless those are exactly the `*.safetensors` files in
/// the folder (none missing, none left over).
pub fn checkpoint_shards(fixture: &str) -> Vec<PathBuf> {
    let dir = golden(&format!("{fixture}/checkpoint"));
    let index = load_json(&format!(
        "{fixture}/checkpoint/model.safetensors.index.json"
    ));
    let listed: BTreeSet<String> = index["weight_map"]
        .as_object()
        .unwrap_or_else(|| panic!("{}: index has no weight_map", dir.display()))
        .values()
        .map(|v| {
            v.as_str()
                .expect("weight_map values are file names")
                .to_string()
        })
        .collect();
    let present: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".safetensors"))
        .collect();
    assert!(
        !listed.is_empty(),
        "{}: index lists no shard",
        dir.display()
    );
    assert_eq!(
        listed,
        present,
        "{}: the index's shards differ from the folder's *.safetensors files",
        dir.display()
    );
    listed.iter().map(|name| dir.join(name)).collect()
}

/// A CPU `VarBuilder` over all the checkpoint shards of `fixture` (see [`checkpoint_shards`]),
/// memory-mapped, with weights converted to `dtype`. Paths are the checkpoint's own
/// (`model.…`, `lm_head.…`).
pub fn checkpoint_var_builder(fixture: &str, dtype: DType) -> VarBuilder<'static> {
    let shards = checkpoint_shards(fixture);
    // SAFETY: the vendored fixture files are never modified while tests run (tests that damage
    // a checkpoint work on a copy).
    unsafe { VarBuilder::from_mmaped_safetensors(&shards, dtype, &Device::Cpu) }
        .unwrap_or_else(|e| panic!("{fixture}: mmap checkpoint shards: {e}"))
}

/// What [`assert_close`] measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CloseReport {
    /// `max|got − want|`.
    pub max_abs: f32,
    /// `max|want|`.
    pub ref_max_abs: f32,
}

impl CloseReport {
    /// The bound `max_abs` had to stay under: `GOLDEN_REL_TOL · max(1, ref_max_abs)`.
    pub fn tol(&self) -> f32 {
        GOLDEN_REL_TOL * self.ref_max_abs.max(1.0)
    }

    /// `max_abs / max(1, ref_max_abs)`: the error on the scale the tolerance uses.
    pub fn rel_err(&self) -> f32 {
        self.max_abs / self.ref_max_abs.max(1.0)
    }
}

/// Checks the golden rule `max|got − want| ≤ GOLDEN_REL_TOL · max(1, max|want|)` (after checking
/// the shapes agree; values are compared as f32, whatever the tensors' dtypes), prints the
/// measurement to stderr, and panics with `stage` in the message when the rule is broken. A NaN
/// or infinite difference always fails.
pub fn assert_close(stage: &str, got: &Tensor, want: &Tensor) -> CloseReport {
    assert_eq!(got.dims(), want.dims(), "{stage}: shape");
    let got = f32_values(stage, got);
    let want = f32_values(stage, want);
    let ref_max_abs = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    // Unlike `f32::max`, a NaN difference is kept (and then fails the check).
    let max_abs = got.iter().zip(&want).fold(0f32, |m, (a, b)| {
        let d = (a - b).abs();
        if d.is_nan() || d > m {
            d
        } else {
            m
        }
    });
    let report = CloseReport {
        max_abs,
        ref_max_abs,
    };
    let tol = report.tol();
    eprintln!(
        "{stage:<55} max|diff| = {max_abs:.3e}  (max|ref| = {ref_max_abs:.3e}, tol {tol:.1e})"
    );
    assert!(
        max_abs.is_finite() && max_abs <= tol,
        "{stage}: max|got − want| = {max_abs:e} > tol {tol:e} \
         (= {GOLDEN_REL_TOL:e} · max(1, max|ref| = {ref_max_abs:e}))"
    );
    report
}

fn f32_values(stage: &str, t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .unwrap_or_else(|e| panic!("{stage}: reading values: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    #[test]
    fn golden_root_is_the_vendored_fixtures() {
        assert!(golden_root().join("README.md").is_file());
        assert!(golden_root().ends_with("tests/golden"));
    }

    #[test]
    fn tolerance_is_relative_above_one_and_absolute_below() {
        let r = assert_close("small", &t(&[0.5, 0.00005]), &t(&[0.5, 0.0]));
        assert_eq!(r.tol(), GOLDEN_REL_TOL);
        let r = assert_close("large", &t(&[100.005]), &t(&[100.0]));
        assert_eq!(r.ref_max_abs, 100.0);
        assert_eq!(r.tol(), GOLDEN_REL_TOL * 100.0);
    }

    #[test]
    #[should_panic(expected = "my stage: max|got − want|")]
    fn over_tolerance_names_the_stage() {
        assert_close("my stage", &t(&[1.0, 2.0]), &t(&[1.0, 2.001]));
    }

    #[test]
    #[should_panic(expected = "nan stage")]
    fn nan_fails() {
        assert_close("nan stage", &t(&[f32::NAN, 1.0]), &t(&[0.0, 1.0]));
    }

    #[test]
    #[should_panic(expected = "shape")]
    fn shape_mismatch_fails() {
        assert_close(
            "s",
            &t(&[1.0, 2.0]),
            &Tensor::new(&[[1f32, 2.0]], &Device::Cpu).unwrap(),
        );
    }

    #[test]
    fn every_fixture_has_a_consistent_sharded_checkpoint() {
        for fixture in [
            "videollama2-mistral-tiny",
            "videollama2.1-qwen2-tiny",
            "videollama2.1-av-tiny",
        ] {
            assert_eq!(checkpoint_shards(fixture).len(), 2, "{fixture}");
            let vb = checkpoint_var_builder(fixture, DType::F32);
            assert!(vb.contains_tensor("model.embed_tokens.weight"), "{fixture}");
        }
    }
}
