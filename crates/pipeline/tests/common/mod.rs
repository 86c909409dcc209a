//! What only the pipeline's golden tests need; the workspace-wide golden helpers (fixture
//! paths, loaders, `assert_close`) come from `videollama-testutil`.

use candle_core::{DType, Tensor};

/// An integer tensor (`input_ids`, `generated_ids`) as `i64`s.
pub fn ids_i64(t: &Tensor) -> Vec<i64> {
    t.to_dtype(DType::I64).unwrap().to_vec1::<i64>().unwrap()
}
