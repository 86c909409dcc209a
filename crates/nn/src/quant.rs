//! Quantized weights for [`crate::Linear`]: which GGML block format a linear layer's
//! weight is stored in, and how a model constructor is told to quantize while it loads.
//!
//! Model constructors stay unchanged (they call [`crate::linear_b`] with a `VarBuilder`);
//! the caller wraps the constructor in a *load scope*:
//!
//! ```text
//! with_load_scope(LoadScope::quantize(WeightFormat::Q8_0), || DecoderLm::new(cfg, vb))
//!     └─ linear_b: weight read dense ─► QTensor::quantize ─► dense copy dropped at once
//! with_load_scope(LoadScope::from_source(gguf), || DecoderLm::new(cfg, vb))
//!     └─ linear_b: "<prefix>.weight" found already quantized in the source ─► used as is
//! ```
//!
//! Quantizing layer by layer keeps the peak memory at one dense matrix plus the quantized
//! model, instead of the whole dense model. The scope is thread-local and restored when the
//! closure returns, so concurrent loads on other threads are unaffected.
//!
//! Kernels: candle's quantized matmul quantizes the activations to 8 bits and runs integer
//! dot products, choosing AVX2 / AVX-512-VNNI code at run time (`is_x86_feature_detected!`);
//! see `docs/performance.md` for which path runs on which CPU.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Result;
use std::cell::RefCell;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// Quantized rows are padded to a multiple of this many columns (see
/// [`WeightFormat::plan_for_row_length`]).
pub const ROW_MULTIPLE: usize = 256;

/// A storage format for the weights of linear layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    /// 8-bit, blocks of 32 with one f16 scale (8.5 bits/weight). Close to f32 answers.
    Q8_0,
    /// 4-bit k-quant, super-blocks of 256 (4.5 bits/weight).
    Q4K,
    /// 5-bit k-quant, super-blocks of 256 (5.5 bits/weight).
    Q5K,
    /// 6-bit k-quant, super-blocks of 256 (6.56 bits/weight).
    Q6K,
}

impl WeightFormat {
    pub fn ggml_dtype(self) -> GgmlDType {
        match self {
            WeightFormat::Q8_0 => GgmlDType::Q8_0,
            WeightFormat::Q4K => GgmlDType::Q4K,
            WeightFormat::Q5K => GgmlDType::Q5K,
            WeightFormat::Q6K => GgmlDType::Q6K,
        }
    }

    /// Elements per quantization block: a weight row's length must be a multiple of it.
    pub fn block_size(self) -> usize {
        self.ggml_dtype().block_size()
    }

    /// The format and padded row length used for a weight whose rows are `in_dim` long.
    ///
    /// Rows are padded with zero columns to a multiple of 256 (the activations get matching
    /// zeros, so the product is unchanged). 256 is the k-quant super-block, and also what
    /// candle's repacked x86 kernels (AVX-512-VNNI / AVX-VNNI tiles) require of every
    /// format: without it a Q8_0 layer of SigLIP (rows of 1152) or Qwen2-0.5B (896) drops
    /// to the generic kernel, measured 4× slower than the f32 GEMM. The padding costs at
    /// most 256 extra columns (1152 → 1280, 4304 → 4352).
    pub fn plan_for_row_length(self, in_dim: usize) -> (WeightFormat, usize) {
        (self, in_dim.div_ceil(ROW_MULTIPLE) * ROW_MULTIPLE)
    }

    pub const NAMES: &'static str = "q8_0, q4k, q5k, q6k";
}

impl fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WeightFormat::Q8_0 => "q8_0",
            WeightFormat::Q4K => "q4k",
            WeightFormat::Q5K => "q5k",
            WeightFormat::Q6K => "q6k",
        })
    }
}

impl FromStr for WeightFormat {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "q80" => Ok(WeightFormat::Q8_0),
            "q4k" | "q4km" => Ok(WeightFormat::Q4K),
            "q5k" | "q5km" => Ok(WeightFormat::Q5K),
            "q6k" => Ok(WeightFormat::Q6K),
            _ => Err(format!(
                "unknown weight format {s:?} (expected one of {})",
                WeightFormat::NAMES
            )),
        }
    }
}

/// Weights that are already quantized (a GGUF file, a `videollama quantize` output), looked
/// up by the HF-style tensor name a linear layer asks for (`model.layers.0.mlp.up_proj.weight`).
pub trait QuantizedWeights: Send + Sync {
    fn get(&self, name: &str) -> Option<Arc<QTensor>>;
}

/// What [`crate::linear_b`] does with the weights it loads inside a scope.
#[derive(Clone, Default)]
pub struct LoadScope {
    /// Quantize dense weights to this format as they are loaded.
    pub quantize: Option<WeightFormat>,
    /// Take already-quantized weights from here when it has them.
    pub source: Option<Arc<dyn QuantizedWeights>>,
}

impl LoadScope {
    pub fn quantize(format: WeightFormat) -> Self {
        Self {
            quantize: Some(format),
            source: None,
        }
    }
    pub fn from_source(source: Arc<dyn QuantizedWeights>) -> Self {
        Self {
            quantize: None,
            source: Some(source),
        }
    }
}

thread_local! {
    static SCOPE: RefCell<LoadScope> = RefCell::new(LoadScope::default());
}

/// Run `f` (a model constructor) with `scope` applied to every linear layer it loads.
pub fn with_load_scope<T>(scope: LoadScope, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<LoadScope>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let old = self.0.take().unwrap_or_default();
            SCOPE.with(|s| *s.borrow_mut() = old);
        }
    }
    let old = SCOPE.with(|s| std::mem::replace(&mut *s.borrow_mut(), scope));
    let _restore = Restore(Some(old));
    f()
}

pub(crate) fn current_scope() -> LoadScope {
    SCOPE.with(|s| s.borrow().clone())
}

/// Bytes a quantized weight of this shape takes.
pub fn quantized_bytes(q: &QTensor) -> usize {
    q.storage_size_in_bytes()
}

/// Quantize a dense `[out, in]` weight.
pub fn quantize_weight(w: &candle_core::Tensor, format: WeightFormat) -> Result<QTensor> {
    let w = w.to_dtype(candle_core::DType::F32)?.contiguous()?;
    QTensor::quantize(&w, format.ggml_dtype())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_fallback() {
        assert_eq!("q8_0".parse::<WeightFormat>().unwrap(), WeightFormat::Q8_0);
        assert_eq!("Q4_K".parse::<WeightFormat>().unwrap(), WeightFormat::Q4K);
        assert_eq!("q4k".parse::<WeightFormat>().unwrap(), WeightFormat::Q4K);
        assert!("q3".parse::<WeightFormat>().is_err());
        assert_eq!(
            WeightFormat::Q4K.plan_for_row_length(4096),
            (WeightFormat::Q4K, 4096)
        );
        assert_eq!(
            WeightFormat::Q4K.plan_for_row_length(1152),
            (WeightFormat::Q4K, 1280)
        );
        assert_eq!(
            WeightFormat::Q8_0.plan_for_row_length(4304),
            (WeightFormat::Q8_0, 4352)
        );
    }

    #[test]
    fn scope_is_restored() {
        assert!(current_scope().quantize.is_none());
        with_load_scope(LoadScope::quantize(WeightFormat::Q8_0), || {
            assert_eq!(current_scope().quantize, Some(WeightFormat::Q8_0));
            with_load_scope(LoadScope::default(), || {
                assert!(current_scope().quantize.is_none())
            });
            assert_eq!(current_scope().quantize, Some(WeightFormat::Q8_0));
        });
        assert!(current_scope().quantize.is_none());
    }
}
