//! What this CPU can do, and which kernel each kind of matmul runs on it.
//!
//! Nothing here chooses a kernel: the choices are made at run time by the libraries
//! themselves (`gemm` for dense f32/f16 GEMM, built with its `x86-v4` AVX-512 kernels;
//! candle's quantized matmul for GGML block formats). This module reports those choices
//! with the same feature tests, so benchmarks and logs can say which path ran.

use serde::Serialize;

/// The CPU and the kernel paths taken on it.
#[derive(Debug, Clone, Serialize)]
pub struct CpuReport {
    /// `model name` from `/proc/cpuinfo` (or the architecture elsewhere).
    pub model: String,
    /// Instruction-set extensions that matter for the kernels.
    pub features: Vec<&'static str>,
    /// Dense f32 GEMM kernel (`gemm` crate).
    pub dense_f32: &'static str,
    /// Quantized (Q8_0 / Q4_K / …) matmul kernel (candle).
    pub quantized: &'static str,
    /// Worker threads the numerics use.
    pub threads: usize,
}

#[cfg(target_arch = "x86_64")]
fn features() -> Vec<&'static str> {
    let mut f = Vec::new();
    macro_rules! check {
        ($($name:tt),*) => {$(
            if std::is_x86_feature_detected!($name) {
                f.push($name);
            }
        )*};
    }
    check!(
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512bw",
        "avx512vl",
        "avx512vnni",
        "avx512bf16",
        "avxvnni"
    );
    if amx_int8() {
        f.push("amx-int8");
    }
    f
}

#[cfg(not(target_arch = "x86_64"))]
fn features() -> Vec<&'static str> {
    Vec::new()
}

/// AMX tile + int8 (CPUID leaf 7, EDX bits 24 and 25; no stable feature macro exists).
#[cfg(target_arch = "x86_64")]
fn amx_int8() -> bool {
    // SAFETY: cpuid is available on every x86_64 CPU (the intrinsic is safe on newer Rust).
    #[allow(unused_unsafe)]
    let info = unsafe { core::arch::x86_64::__cpuid_count(7, 0) };
    info.edx & (1 << 24) != 0 && info.edx & (1 << 25) != 0
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// Describe this machine and the kernels the libraries pick on it.
pub fn report() -> CpuReport {
    let f = features();
    let has = |n: &str| f.contains(&n);
    let dense_f32 = if has("avx512f") {
        "gemm avx512f"
    } else if has("fma") {
        "gemm avx2+fma"
    } else {
        "gemm scalar"
    };
    // Mirrors candle's `repack_x86::level()` / `amx_available()` order.
    let quantized = if has("avx512f") && has("avx512vnni") && has("amx-int8") {
        "candle amx-int8 (avx512-vnni fallback)"
    } else if has("avx512f") && has("avx512vnni") {
        "candle avx512-vnni"
    } else if has("avxvnni") && has("avx2") {
        "candle avx-vnni"
    } else if has("avx2") && has("fma") {
        "candle avx2"
    } else {
        "candle generic"
    };
    CpuReport {
        model: cpu_model(),
        features: f,
        dense_f32,
        quantized,
        threads: candle_core::utils::get_num_threads(),
    }
}

/// One line for logs: `AMD EPYC (avx2 fma avx512f …): f32 gemm avx512f, quantized …`.
pub fn kernel_summary() -> String {
    let r = report();
    format!(
        "{} ({}), {} threads: f32 {}, quantized {}",
        r.model,
        r.features.join(" "),
        r.threads,
        r.dense_f32,
        r.quantized
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn report_is_consistent_with_feature_tests() {
        let r = super::report();
        assert!(!r.model.is_empty());
        assert!(r.threads >= 1);
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            r.dense_f32 == "gemm avx512f",
            std::is_x86_feature_detected!("avx512f")
        );
    }
}
