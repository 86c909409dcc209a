//! AdamW (PyTorch's formulation), the warm-up + cosine learning-rate schedule, gradient
//! clipping by global norm, and saving / restoring the optimizer state exactly.
//!
//! ```text
//! p ← p · (1 − lr·wd)                                  decoupled weight decay (2-D params)
//! m ← β1·m + (1−β1)·g        v ← β2·v + (1−β2)·g²
//! p ← p − lr/(1−β1^t) · m / (√v / √(1−β2^t) + ε)
//! ```
//! `optimizer.safetensors` holds every trainable tensor (`param.NAME`), its moments
//! (`exp_avg.NAME`, `exp_avg_sq.NAME`) and the step count (`step`, i64): restoring them
//! reproduces an uninterrupted run bit for bit.

use crate::error::{Result, TrainError};
use candle_core::{DType, Device, Tensor, Var};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// AdamW hyper-parameters (PyTorch / HF defaults).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// One trainable tensor with its moments.
pub struct Param {
    pub name: String,
    pub var: Var,
    /// Learning rate at schedule factor 1 (its parameter group's rate).
    pub lr: f64,
    /// Weight decay applies (HF Trainer: not to biases and norm weights, i.e. 1-D tensors).
    pub decay: bool,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

pub struct AdamW {
    cfg: AdamWConfig,
    params: Vec<Param>,
    step: u64,
}

impl AdamW {
    /// `params`: `(name, var, learning rate)`; they are kept sorted by name.
    pub fn new(params: Vec<(String, Var, f64)>, cfg: AdamWConfig) -> Result<Self> {
        let mut params = params
            .into_iter()
            .map(|(name, var, lr)| {
                let zeros = var.as_tensor().zeros_like()?;
                Ok(Param {
                    decay: var.rank() >= 2,
                    exp_avg: zeros.clone(),
                    exp_avg_sq: zeros,
                    name,
                    var,
                    lr,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        params.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Self {
            cfg,
            params,
            step: 0,
        })
    }

    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// Updates done so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Count a step without changing anything (a batch whose gradient was not finite), so
    /// that the step count stays the trainer's.
    pub fn skip(&mut self) {
        self.step += 1;
    }

    /// One update with `grads` (by parameter name; a missing gradient counts as zero) and
    /// the learning rates scaled by `factor` (the schedule).
    pub fn step(&mut self, grads: &BTreeMap<String, Tensor>, factor: f64) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let AdamWConfig {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.cfg;
        let bc1 = 1.0 - beta1.powi(t);
        let bc2_sqrt = (1.0 - beta2.powi(t)).sqrt();
        for p in &mut self.params {
            let lr = p.lr * factor;
            let g = match grads.get(&p.name) {
                Some(g) => g.to_dtype(p.var.dtype())?,
                None => p.var.as_tensor().zeros_like()?,
            };
            let mut w = p.var.as_tensor().detach();
            if p.decay && weight_decay != 0.0 {
                w = w.affine(1.0 - lr * weight_decay, 0.0)?;
            }
            p.exp_avg = ((&p.exp_avg * beta1)? + (&g * (1.0 - beta1))?)?;
            p.exp_avg_sq = ((&p.exp_avg_sq * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
            let denom = ((p.exp_avg_sq.sqrt()? / bc2_sqrt)? + eps)?;
            let update = (p.exp_avg.div(&denom)? * (lr / bc1))?;
            p.var.set(&(w - update)?)?;
        }
        Ok(())
    }

    /// Write every parameter, its moments and the step count.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut ts: HashMap<String, Tensor> = HashMap::new();
        for p in &self.params {
            ts.insert(format!("param.{}", p.name), p.var.as_tensor().detach());
            ts.insert(format!("exp_avg.{}", p.name), p.exp_avg.clone());
            ts.insert(format!("exp_avg_sq.{}", p.name), p.exp_avg_sq.clone());
        }
        ts.insert(
            "step".into(),
            Tensor::new(&[self.step as i64], &Device::Cpu)?,
        );
        candle_core::safetensors::save(&ts, path).map_err(|e| TrainError::file(path, e))
    }

    /// Restore what [`Self::save`] wrote: parameters (set in place), moments and the step.
    /// Every parameter must be there with its shape.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let dev = self
            .params
            .first()
            .map(|p| p.var.device().clone())
            .unwrap_or(Device::Cpu);
        let ts =
            candle_core::safetensors::load(path, &dev).map_err(|e| TrainError::file(path, e))?;
        let get = |key: String, like: &Tensor| -> Result<Tensor> {
            let t = ts
                .get(&key)
                .ok_or_else(|| TrainError::file(path, format!("no tensor {key}")))?;
            if t.dims() != like.dims() {
                return Err(TrainError::file(
                    path,
                    format!(
                        "{key} has shape {:?}, the model needs {:?}",
                        t.dims(),
                        like.dims()
                    ),
                ));
            }
            Ok(t.to_dtype(like.dtype())?)
        };
        for p in &mut self.params {
            let value = get(format!("param.{}", p.name), p.var.as_tensor())?;
            p.var.set(&value)?;
            p.exp_avg = get(format!("exp_avg.{}", p.name), &p.exp_avg)?;
            p.exp_avg_sq = get(format!("exp_avg_sq.{}", p.name), &p.exp_avg_sq)?;
        }
        let step = ts
            .get("step")
            .ok_or_else(|| TrainError::file(path, "no step count"))?
            .to_dtype(DType::I64)?
            .flatten_all()?
            .to_vec1::<i64>()?;
        self.step = step.first().copied().unwrap_or(0).max(0) as u64;
        Ok(())
    }
}

/// Schedule factor after `step` completed updates (HF `get_cosine_schedule_with_warmup`):
/// `step / warmup` during warm-up, then a half cosine from 1 to `min_ratio` at `total`.
pub fn lr_factor(step: usize, warmup: usize, total: usize, min_ratio: f64) -> f64 {
    if step < warmup {
        return step as f64 / warmup.max(1) as f64;
    }
    let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
    let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos());
    min_ratio + (1.0 - min_ratio) * cosine.max(0.0)
}

/// Scale `grads` so that their global L2 norm is at most `max_norm` (PyTorch
/// `clip_grad_norm_`: coefficient `max_norm / (norm + 1e-6)`, only when below 1); returns
/// the norm before clipping.
pub fn clip_global_norm(
    grads: &mut BTreeMap<String, Tensor>,
    max_norm: Option<f64>,
) -> Result<f64> {
    let mut sum = 0f64;
    for g in grads.values() {
        sum += g
            .sqr()?
            .sum_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
    }
    let norm = sum.sqrt();
    if let Some(max) = max_norm {
        let coef = max / (norm + 1e-6);
        if coef < 1.0 {
            for g in grads.values_mut() {
                *g = (&*g * coef)?;
            }
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two AdamW steps against values computed by hand from the PyTorch formulas.
    #[test]
    fn adamw_matches_pytorch_formulas_and_round_trips() -> Result<()> {
        let dev = Device::Cpu;
        let w = Var::new(&[[1.0f64, -2.0]], &dev)?;
        let b = Var::new(&[0.5f64], &dev)?;
        let cfg = AdamWConfig {
            weight_decay: 0.1,
            ..Default::default()
        };
        let mut opt = AdamW::new(
            vec![("w".into(), w.clone(), 0.01), ("b".into(), b.clone(), 0.02)],
            cfg,
        )?;
        let gw = [0.3f64, -0.1];
        let grads: BTreeMap<String, Tensor> = [
            ("w".to_string(), Tensor::new(&[gw], &dev)?),
            ("b".to_string(), Tensor::new(&[0.2f64], &dev)?),
        ]
        .into();
        // Independent scalar AdamW.
        let mut want = [1.0f64, -2.0];
        let (mut m, mut v) = ([0f64; 2], [0f64; 2]);
        for t in 1..=2 {
            opt.step(&grads, 0.5)?;
            for i in 0..2 {
                let lr = 0.01 * 0.5;
                want[i] *= 1.0 - lr * 0.1;
                m[i] = 0.9 * m[i] + 0.1 * gw[i];
                v[i] = 0.999 * v[i] + 0.001 * gw[i] * gw[i];
                let denom = v[i].sqrt() / (1.0 - 0.999f64.powi(t)).sqrt() + 1e-8;
                want[i] -= lr / (1.0 - 0.9f64.powi(t)) * m[i] / denom;
            }
        }
        let got = w.as_tensor().flatten_all()?.to_vec1::<f64>()?;
        for i in 0..2 {
            assert!((got[i] - want[i]).abs() < 1e-12, "{got:?} vs {want:?}");
        }
        // The bias (1-D) is not decayed: two steps of −lr·sign-like updates only.
        let bias = b.as_tensor().to_vec1::<f64>()?[0];
        assert!((bias - (0.5 - 2.0 * 0.01)).abs() < 1e-6, "{bias}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("opt.safetensors");
        opt.save(&path)?;
        let w2 = Var::new(&[[0.0f64, 0.0]], &dev)?;
        let b2 = Var::new(&[0.0f64], &dev)?;
        let mut opt2 = AdamW::new(
            vec![("w".into(), w2.clone(), 0.01), ("b".into(), b2, 0.02)],
            cfg,
        )?;
        opt2.load(&path)?;
        assert_eq!(opt2.step_count(), 2);
        opt.step(&grads, 1.0)?;
        opt2.step(&grads, 1.0)?;
        assert_eq!(
            w.as_tensor().flatten_all()?.to_vec1::<f64>()?,
            w2.as_tensor().flatten_all()?.to_vec1::<f64>()?
        );
        Ok(())
    }

    #[test]
    fn schedule_and_clipping() -> Result<()> {
        assert_eq!(lr_factor(0, 4, 20, 0.0), 0.0);
        assert_eq!(lr_factor(2, 4, 20, 0.0), 0.5);
        assert_eq!(lr_factor(4, 4, 20, 0.0), 1.0);
        assert!((lr_factor(12, 4, 20, 0.0) - 0.5).abs() < 1e-12);
        assert!(lr_factor(20, 4, 20, 0.1) - 0.1 < 1e-12);
        assert_eq!(lr_factor(0, 0, 10, 0.0), 1.0);
        let dev = Device::Cpu;
        let mut g: BTreeMap<String, Tensor> = [
            ("a".to_string(), Tensor::new(&[3.0f32], &dev)?),
            ("b".to_string(), Tensor::new(&[4.0f32], &dev)?),
        ]
        .into();
        assert_eq!(clip_global_norm(&mut g, Some(10.0))?, 5.0);
        assert_eq!(g["a"].to_vec1::<f32>()?, vec![3.0]);
        clip_global_norm(&mut g, Some(1.0))?;
        let n = clip_global_norm(&mut g, None)?;
        assert!((n - 1.0).abs() < 1e-5, "{n}");
        Ok(())
    }
}
