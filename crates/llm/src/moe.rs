//! Feed-forward blocks: the dense SwiGLU MLP and Mixtral's sparse mixture of experts.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;
use videollama_nn::{linear_no_bias, Activation, Linear};

/// `down(act(gate(x)) * up(x))` — the Llama-family gated MLP (act = SiLU for every released model).
#[derive(Debug, Clone)]
pub struct SwiGlu {
    gate: Linear,
    up: Linear,
    down: Linear,
    act: Activation,
}

impl SwiGlu {
    /// `names` = (gate, up, down) sub-paths: `gate_proj/up_proj/down_proj` in dense layers,
    /// `w1/w3/w2` in Mixtral experts.
    pub fn new(
        hidden: usize,
        inter: usize,
        act: Activation,
        names: (&str, &str, &str),
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            gate: linear_no_bias(hidden, inter, vb.pp(names.0))?,
            up: linear_no_bias(hidden, inter, vb.pp(names.1))?,
            down: linear_no_bias(inter, hidden, vb.pp(names.2))?,
            act,
        })
    }

    /// `[gate, up, down]` (for LoRA adapters and their export).
    pub fn linears(&self) -> [&Linear; 3] {
        [&self.gate, &self.up, &self.down]
    }

    /// `[gate, up, down]`, mutable (to attach or merge LoRA adapters).
    pub fn linears_mut(&mut self) -> [&mut Linear; 3] {
        [&mut self.gate, &mut self.up, &mut self.down]
    }

    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut gu = videollama_nn::forward_many(&[&self.gate, &self.up], xs)?.into_iter();
        let (gate, up) = (gu.next().unwrap(), gu.next().unwrap());
        let g = self.act.forward(&gate)?;
        self.down.forward(&(g * up)?)
    }
}

/// Mixtral `block_sparse_moe`: a linear router picks `top_k` of `experts` per token.
///
/// Numerics follow HF `MixtralSparseMoeBlock`: router softmax in f32, top-k, the k weights
/// renormalised to sum 1 and cast to the activation dtype, each expert output scaled by its
/// weight, and the contributions summed in expert order (HF's `index_add_` loop).
#[derive(Debug, Clone)]
pub struct SparseMoe {
    router: Linear,
    experts: Vec<SwiGlu>,
    top_k: usize,
}

impl SparseMoe {
    pub fn new(
        hidden: usize,
        inter: usize,
        n_experts: usize,
        top_k: usize,
        act: Activation,
        vb: VarBuilder,
    ) -> Result<Self> {
        if top_k == 0 || top_k > n_experts {
            candle_core::bail!("num_experts_per_tok {top_k} must be in 1..={n_experts}")
        }
        let router = linear_no_bias(hidden, n_experts, vb.pp("gate"))?;
        let experts = (0..n_experts)
            .map(|e| {
                SwiGlu::new(
                    hidden,
                    inter,
                    act,
                    ("w1", "w3", "w2"),
                    vb.pp("experts").pp(e),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            router,
            experts,
            top_k,
        })
    }

    /// `xs`: `[..., H]` → same shape.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let dims = xs.dims().to_vec();
        let h = *dims.last().unwrap_or(&0);
        let flat = xs.reshape(((), h))?;
        let n_tok = flat.dim(0)?;
        let probs =
            candle_nn::ops::softmax_last_dim(&self.router.forward(&flat)?.to_dtype(DType::F32)?)?;
        // Routing is a small host-side decision (n_tok × n_experts), as in HF's Python loop.
        let probs = probs.to_vec2::<f32>()?;
        let mut per_expert: Vec<(Vec<u32>, Vec<f32>)> = vec![(vec![], vec![]); self.experts.len()];
        for (t, row) in probs.iter().enumerate() {
            for (e, w) in top_k_renormalised(row, self.top_k) {
                per_expert[e].0.push(t as u32);
                per_expert[e].1.push(w);
            }
        }
        let mut out = flat.zeros_like()?;
        for (expert, (toks, ws)) in self.experts.iter().zip(per_expert) {
            if toks.is_empty() {
                continue;
            }
            let n = toks.len();
            let idx = Tensor::from_vec(toks, n, xs.device())?;
            let w = Tensor::from_vec(ws, (n, 1), xs.device())?.to_dtype(xs.dtype())?;
            let y = expert
                .forward(&flat.index_select(&idx, 0)?)?
                .broadcast_mul(&w)?;
            out = out.index_add(&idx, &y, 0)?;
        }
        debug_assert_eq!(out.dim(0).ok(), Some(n_tok));
        out.reshape(dims)
    }
}

/// The `k` largest probabilities of `row` (ties → lower index first) with their weights
/// renormalised to sum to one, in f32 as HF does (`topk` then `/= sum`).
pub fn top_k_renormalised(row: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    order.truncate(k);
    let sum: f32 = order.iter().map(|&e| row[e]).sum();
    order.into_iter().map(|e| (e, row[e] / sum)).collect()
}

/// Either feed-forward variant, chosen by the config.
#[derive(Debug, Clone)]
pub enum FeedForward {
    Dense(SwiGlu),
    Moe(SparseMoe),
}

impl Module for FeedForward {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            FeedForward::Dense(m) => m.forward(xs),
            FeedForward::Moe(m) => m.forward(xs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use std::collections::HashMap;

    /// Seeded tensors so the test is reproducible without a RNG crate in the loop.
    fn lcg_tensor(seed: &mut u64, shape: &[usize], scale: f32) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| {
                *seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (((*seed >> 33) as f64 / (1u64 << 31) as f64) as f32 * 2.0 - 1.0) * scale
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn top_k_picks_largest_and_renormalises() {
        let r = top_k_renormalised(&[0.1, 0.4, 0.2, 0.3], 2);
        assert_eq!(r.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 3]);
        assert!((r[0].1 - 4.0 / 7.0).abs() < 1e-6 && (r[1].1 - 3.0 / 7.0).abs() < 1e-6);
        let tie = top_k_renormalised(&[0.25, 0.25, 0.25, 0.25], 2);
        assert_eq!(tie.iter().map(|x| x.0).collect::<Vec<_>>(), vec![0, 1]);
    }

    /// The batched expert dispatch equals a naive per-token loop over the selected experts.
    #[test]
    fn moe_matches_naive_per_token_loop() -> Result<()> {
        let (h, inter, ne, k, n_tok) = (8usize, 12usize, 4usize, 2usize, 9usize);
        let mut seed = 42u64;
        let mut ts = HashMap::new();
        ts.insert(
            "gate.weight".to_string(),
            lcg_tensor(&mut seed, &[ne, h], 0.8),
        );
        for e in 0..ne {
            ts.insert(
                format!("experts.{e}.w1.weight"),
                lcg_tensor(&mut seed, &[inter, h], 0.4),
            );
            ts.insert(
                format!("experts.{e}.w3.weight"),
                lcg_tensor(&mut seed, &[inter, h], 0.4),
            );
            ts.insert(
                format!("experts.{e}.w2.weight"),
                lcg_tensor(&mut seed, &[h, inter], 0.4),
            );
        }
        let vb = VarBuilder::from_tensors(ts.clone(), DType::F32, &Device::Cpu);
        let moe = SparseMoe::new(h, inter, ne, k, Activation::Silu, vb)?;
        let xs = lcg_tensor(&mut seed, &[1, n_tok, h], 1.0);
        let got = moe.forward(&xs)?.reshape((n_tok, h))?.to_vec2::<f32>()?;

        let mat = |name: &str| ts[name].to_vec2::<f32>().unwrap();
        let mv = |m: &Vec<Vec<f32>>, x: &[f32]| -> Vec<f64> {
            m.iter()
                .map(|r| r.iter().zip(x).map(|(a, b)| *a as f64 * *b as f64).sum())
                .collect()
        };
        let x = xs.reshape((n_tok, h))?.to_vec2::<f32>()?;
        let mut used = vec![0usize; ne];
        for t in 0..n_tok {
            let logits = mv(&mat("gate.weight"), &x[t]);
            let m = logits.iter().cloned().fold(f64::MIN, f64::max);
            let z: f64 = logits.iter().map(|l| (l - m).exp()).sum();
            let p: Vec<f64> = logits.iter().map(|l| (l - m).exp() / z).collect();
            let mut idx: Vec<usize> = (0..ne).collect();
            idx.sort_by(|&a, &b| p[b].partial_cmp(&p[a]).unwrap());
            let top = &idx[..k];
            let s: f64 = top.iter().map(|&e| p[e]).sum();
            let mut want = vec![0f64; h];
            for &e in top {
                used[e] += 1;
                let g = mv(&mat(&format!("experts.{e}.w1.weight")), &x[t]);
                let u = mv(&mat(&format!("experts.{e}.w3.weight")), &x[t]);
                let a: Vec<f32> = g
                    .iter()
                    .zip(&u)
                    .map(|(g, u)| (g / (1.0 + (-g).exp()) * u) as f32)
                    .collect();
                let y = mv(&mat(&format!("experts.{e}.w2.weight")), &a);
                for c in 0..h {
                    want[c] += p[e] / s * y[c];
                }
            }
            for c in 0..h {
                assert!(
                    (got[t][c] as f64 - want[c]).abs() < 1e-5,
                    "tok {t} ch {c}: {} vs {}",
                    got[t][c],
                    want[c]
                );
            }
        }
        // The test is only meaningful if routing actually spreads over several experts.
        assert!(used.iter().filter(|&&u| u > 0).count() >= 3, "{used:?}");
        Ok(())
    }
}
