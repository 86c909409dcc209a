//! Chat-UniVi's token clustering: DPC-KNN (density peaks clustering with k-nearest-neighbour
//! density) and the cluster-average merge, i.e. the reference `CTM` module
//! (`ChatUniVi/model/cluster.py`: `cluster_dpc_knn`, `merge_tokens`, `CTM.forward`). No
//! parameters; the `TCBlock`s that follow each CTM in the reference return their input.
//!
//! ```text
//! x [B, N, C] (f32)
//!   D[i,j]  = ||x_i − x_j||₂ / √C                       direct differences, not the matmul form
//!   ρ_i     = exp(−mean of the k smallest D[i,·]²)       the k include i itself (D = 0)
//!             (+ the reference's noise: `DensityNoise`)
//!   δ_i     = min { D[i,j] : j denser than i }, or max(D) over the whole [N, N] matrix when
//!             no token is denser
//!   centres = the K largest δ·ρ, in descending order     → cluster ids 0..K−1 (= output order)
//!   assign  = nearest centre (first on ties); each centre to its own cluster
//!   merged  = Σ_{i in cluster} x_i · 1/(count + 1e-6)    → [B, K, C]
//! ```
//!
//! K and k come from the CTM's rate ([`Ctm`]): a rate > 1 is an absolute cluster count
//! (`ceil(rate)`), otherwise a fraction of the tokens (`max(ceil(N·rate), 1)`); k is the base
//! k unless it exceeds K, then `min(3, max(K / 2, 1))`.
//!
//! # Ties and the reference's noise
//!
//! The reference adds `torch.rand(B, N) · 1e-6` to ρ before comparing densities. That noise
//! is not only a rare tie-break: with k = 1 every ρ is exactly 1 and with k = 2 two mutual
//! nearest neighbours have the same ρ, so at the published settings it decides which frames
//! form an event. Two modes, both deterministic:
//! * [`DensityNoise::IndexTieBreak`] (the default): no noise; a token is denser than another
//!   when its ρ is larger, or equal and its index is **lower**. This is the reference with the
//!   noise at zero wherever densities differ, and a fixed order where they tie (the noise only
//!   ever meant to order ties). Equal scores pick the lower index as a centre first.
//! * [`DensityNoise::Recorded`]: the noise a reference run drew for this call (a golden
//!   fixture's `dpcNN_jitter`), added in f32 and compared strictly, as the reference does —
//!   the way to match one reference run bit for bit.
//!
//! Numerics follow the fp32 reference: distances accumulate the squared differences in f64
//! and are divided by `(float)√C` in f32; ρ, δ, scores and the merge are f32 (the merge sums
//! `x · (1/(count + 1e-6))` in token order, as `index_add_` does).

use candle_core::{bail, DType, Device, Result, Tensor};

/// How equal densities are ordered (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub enum DensityNoise<'a> {
    /// No noise; equal densities: the lower index is the denser.
    #[default]
    IndexTieBreak,
    /// The reference's recorded noise for this call, `B·N` values (row-major `[B, N]`),
    /// added to ρ in f32; densities then compare strictly.
    Recorded(&'a [f32]),
}

/// The clustering of one call: `B` rows of `N` tokens into `K` clusters.
#[derive(Debug, Clone, PartialEq)]
pub struct Clustering {
    pub batch: usize,
    pub tokens: usize,
    pub clusters: usize,
    /// `[B, N]` row-major: the cluster id of each token (the rank of its centre's score).
    pub assign: Vec<usize>,
    /// `[B, K]` row-major: the token index of each cluster's centre.
    pub centres: Vec<usize>,
}

/// `Σ (a − b)²` with the differences in f32 and the sum in f64 (eight independent partial
/// sums, so the loop vectorises).
fn squared_distance(a: &[f32], b: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            let d = (x[l] - y[l]) as f64;
            acc[l] += d * d;
        }
    }
    let mut sum: f64 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        let d = (*x - *y) as f64;
        sum += d * d;
    }
    sum
}

/// `D = ||x_i − x_j|| / √C` for one row of `n` tokens of width `c` (`x` is `[n, c]`), `[n, n]`.
fn distances(x: &[f32], n: usize, c: usize) -> Vec<f32> {
    let scale = (c as f64).sqrt() as f32;
    let mut d = vec![0f32; n * n];
    for i in 0..n {
        let xi = &x[i * c..(i + 1) * c];
        for j in (i + 1)..n {
            let xj = &x[j * c..(j + 1) * c];
            let v = (squared_distance(xi, xj).sqrt() as f32) / scale;
            d[i * n + j] = v;
            d[j * n + i] = v;
        }
    }
    d
}

/// DPC-KNN on `x` (`[B, N, C]` row-major f32) into `cluster_num` clusters with `k` nearest
/// neighbours for the density. Errors when `N < cluster_num`, `k` is 0 or larger than `N`, or
/// the noise has the wrong length.
pub fn cluster_dpc_knn(
    x: &[f32],
    (b, n, c): (usize, usize, usize),
    cluster_num: usize,
    k: usize,
    noise: DensityNoise,
) -> Result<Clustering> {
    if x.len() != b * n * c {
        bail!("DPC-KNN: {} values for tokens [{b}, {n}, {c}]", x.len());
    }
    if cluster_num == 0 || cluster_num > n {
        bail!("DPC-KNN: cannot form {cluster_num} clusters from {n} tokens");
    }
    if k == 0 || k > n {
        bail!("DPC-KNN: k = {k} nearest neighbours among {n} tokens");
    }
    if let DensityNoise::Recorded(noise) = noise {
        if noise.len() != b * n {
            bail!(
                "DPC-KNN: the recorded density noise has {} values, this call needs [{b}, {n}] = {}",
                noise.len(),
                b * n
            );
        }
    }
    let mut assign = Vec::with_capacity(b * n);
    let mut centres = Vec::with_capacity(b * cluster_num);
    for row in 0..b {
        let xs = &x[row * n * c..(row + 1) * n * c];
        let d = distances(xs, n, c);
        // Local density from the k smallest distances of each row (itself included).
        let mut density: Vec<f32> = (0..n)
            .map(|i| {
                let mut r: Vec<f32> = d[i * n..(i + 1) * n].to_vec();
                r.sort_by(|a, b| a.total_cmp(b));
                let sum: f32 = r[..k].iter().map(|v| v * v).sum();
                (-(sum / k as f32)).exp()
            })
            .collect();
        let recorded = match noise {
            DensityNoise::Recorded(noise) => {
                for (rho, eps) in density.iter_mut().zip(&noise[row * n..(row + 1) * n]) {
                    *rho += *eps;
                }
                true
            }
            DensityNoise::IndexTieBreak => false,
        };
        let denser = |j: usize, i: usize| {
            density[j] > density[i] || (!recorded && density[j] == density[i] && j < i)
        };
        let dist_max = d.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let score: Vec<f32> = (0..n)
            .map(|i| {
                let delta = (0..n)
                    .filter(|&j| denser(j, i))
                    .map(|j| d[i * n + j])
                    .fold(dist_max, f32::min);
                delta * density[i]
            })
            .collect();
        // Top-K scores, descending; equal scores keep the lower index first.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| score[b].total_cmp(&score[a]).then(a.cmp(&b)));
        let chosen = &order[..cluster_num];
        let mut row_assign: Vec<usize> = (0..n)
            .map(|t| {
                let mut best = 0;
                for (ci, &centre) in chosen.iter().enumerate().skip(1) {
                    if d[centre * n + t] < d[chosen[best] * n + t] {
                        best = ci;
                    }
                }
                best
            })
            .collect();
        for (ci, &centre) in chosen.iter().enumerate() {
            row_assign[centre] = ci;
        }
        assign.extend(row_assign);
        centres.extend_from_slice(chosen);
    }
    Ok(Clustering {
        batch: b,
        tokens: n,
        clusters: cluster_num,
        assign,
        centres,
    })
}

/// `merge_tokens` with unit weights: `[B, K, C]` row-major, each cluster the sum of its tokens
/// times `1 / (count + 1e-6)`.
pub fn merge_tokens(x: &[f32], c: usize, clustering: &Clustering) -> Vec<f32> {
    let (b, n, k) = (clustering.batch, clustering.tokens, clustering.clusters);
    let mut out = vec![0f32; b * k * c];
    for row in 0..b {
        let assign = &clustering.assign[row * n..(row + 1) * n];
        let mut count = vec![0f32; k];
        for &a in assign {
            count[a] += 1.0;
        }
        let weight: Vec<f32> = count.iter().map(|&w| 1.0 / (w + 1e-6)).collect();
        for (t, &a) in assign.iter().enumerate() {
            let src = &x[(row * n + t) * c..(row * n + t + 1) * c];
            let dst = &mut out[(row * k + a) * c..(row * k + a + 1) * c];
            for (o, v) in dst.iter_mut().zip(src) {
                *o += *v * weight[a];
            }
        }
    }
    out
}

/// One reference `CTM` (cluster rate + base k) with its `TCBlock` (an identity).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ctm {
    /// `sample_ratio`: > 1 an absolute cluster count, otherwise a fraction of the tokens.
    pub rate: f64,
    /// The base k of the density (5 for ctm0 / ctm3, 3 for ctm1 / ctm2).
    pub base_k: usize,
}

/// What one [`Ctm::forward`] produced.
#[derive(Debug, Clone)]
pub struct CtmOutput {
    /// `[B, K, C]` f32 cluster averages (ordered by cluster id).
    pub merged: Tensor,
    /// `[B, N]` i64 cluster id of each token.
    pub assign: Tensor,
    pub clustering: Clustering,
    /// The k used for the density.
    pub k: usize,
}

impl Ctm {
    pub fn new(rate: f64, base_k: usize) -> Self {
        Self { rate, base_k }
    }

    /// K for `n` tokens: `ceil(rate)` when rate > 1, else `max(ceil(n·rate), 1)` (Python floats).
    pub fn cluster_num(&self, n: usize) -> usize {
        if self.rate > 1.0 {
            (self.rate.ceil() as usize).max(1)
        } else {
            ((n as f64 * self.rate).ceil() as usize).max(1)
        }
    }

    /// The k of the density for K clusters: the base k, or `min(3, max(K / 2, 1))` when the
    /// base k exceeds K.
    pub fn neighbours(&self, cluster_num: usize) -> usize {
        if self.base_k > cluster_num {
            3.min((cluster_num / 2).max(1))
        } else {
            self.base_k
        }
    }

    /// Cluster and merge `x [B, N, C]` (any float dtype; computed in f32).
    pub fn forward(&self, x: &Tensor, noise: DensityNoise) -> Result<CtmOutput> {
        let (b, n, c) = x.dims3()?;
        let cluster_num = self.cluster_num(n);
        if cluster_num > n {
            bail!(
                "token clustering: {cluster_num} clusters (rate {}) from only {n} tokens",
                self.rate
            );
        }
        let k = self.neighbours(cluster_num);
        let values: Vec<f32> = x
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1()?;
        let clustering = cluster_dpc_knn(&values, (b, n, c), cluster_num, k, noise)?;
        let merged = merge_tokens(&values, c, &clustering);
        let merged =
            Tensor::from_vec(merged, (b, cluster_num, c), &Device::Cpu)?.to_device(x.device())?;
        let ids: Vec<i64> = clustering.assign.iter().map(|&a| a as i64).collect();
        let assign = Tensor::from_vec(ids, (b, n), &Device::Cpu)?;
        Ok(CtmOutput {
            merged,
            assign,
            clustering,
            k,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(points: &[[f32; 2]]) -> Vec<f32> {
        points.iter().flatten().copied().collect()
    }

    #[test]
    fn two_blobs_give_two_clusters_ordered_by_score() -> Result<()> {
        // A tight blob of 3 around (0,0) and a looser one of 2 around (10,10).
        let x = tokens(&[[0., 0.], [10., 10.], [0.1, 0.], [0., 0.1], [10.5, 10.]]);
        let cl = cluster_dpc_knn(&x, (1, 5, 2), 2, 2, DensityNoise::IndexTieBreak)?;
        // Tokens 0, 2, 3 tie on density and token 0 (lowest index) is the peak (δ = max D);
        // tokens 1 and 4 tie too, and token 1 is the second blob's peak.
        assert_eq!(cl.centres, vec![0, 1]);
        assert_eq!(cl.assign, vec![0, 1, 0, 0, 1]);
        let merged = merge_tokens(&x, 2, &cl);
        let w3 = 1.0 / (3.0f32 + 1e-6);
        assert!((merged[0] - 0.1 * w3).abs() < 1e-6);
        assert!((merged[2] - 20.5 * (1.0 / (2.0f32 + 1e-6))).abs() < 1e-4);
        Ok(())
    }

    #[test]
    fn ties_are_broken_by_index_or_by_the_recorded_noise() -> Result<()> {
        // k = 1: every density is exactly 1 (the token itself), so only the tie rule decides.
        let x = tokens(&[[0., 0.], [1., 0.], [5., 0.], [6., 0.]]);
        let det = cluster_dpc_knn(&x, (1, 4, 2), 2, 1, DensityNoise::IndexTieBreak)?;
        // Lower index = denser: token 0 is the peak (δ = max D = 6/√2), token 2's nearest
        // denser token is 1 (δ = 4/√2), tokens 1 and 3 have δ = 1/√2.
        assert_eq!(det.centres, vec![0, 2]);
        assert_eq!(det.assign, vec![0, 0, 1, 1]);
        // Noise that makes token 3 the densest and 1 denser than 0.
        let noise = [0.0f32, 2e-7, 1e-7, 9e-7];
        let rec = cluster_dpc_knn(&x, (1, 4, 2), 2, 1, DensityNoise::Recorded(&noise))?;
        assert_eq!(rec.centres, vec![3, 1]);
        assert_eq!(rec.assign, vec![1, 1, 0, 0]);
        // Wrong noise length, too many clusters, bad k.
        assert!(cluster_dpc_knn(&x, (1, 4, 2), 2, 1, DensityNoise::Recorded(&noise[..3])).is_err());
        assert!(cluster_dpc_knn(&x, (1, 4, 2), 5, 1, DensityNoise::IndexTieBreak).is_err());
        assert!(cluster_dpc_knn(&x, (1, 4, 2), 2, 0, DensityNoise::IndexTieBreak).is_err());
        Ok(())
    }

    #[test]
    fn ctm_rates_and_k_follow_the_reference() {
        let ctm0 = Ctm::new(64.0, 5);
        assert_eq!(ctm0.cluster_num(256), 64);
        assert_eq!(ctm0.neighbours(64), 5);
        let ctm3 = Ctm::new(1.0 / 16.0, 5);
        assert_eq!(ctm3.cluster_num(8), 1);
        assert_eq!(ctm3.cluster_num(64), 4);
        assert_eq!(ctm3.cluster_num(100), 7);
        assert_eq!(ctm3.neighbours(1), 1);
        assert_eq!(ctm3.neighbours(4), 2);
        assert_eq!(ctm3.neighbours(7), 5);
        let tiny = Ctm::new(0.4, 5);
        assert_eq!(tiny.cluster_num(10), 4);
        assert_eq!(Ctm::new(4.0, 3).neighbours(4), 3);
        assert_eq!(Ctm::new(12.0, 5).cluster_num(16), 12);
    }

    #[test]
    fn ctm_forward_shapes() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (3, 16, 8), &dev)?;
        let out = Ctm::new(6.0, 3).forward(&x, DensityNoise::IndexTieBreak)?;
        assert_eq!(out.merged.dims(), &[3, 6, 8]);
        assert_eq!(out.assign.dims(), &[3, 16]);
        assert_eq!(out.k, 3);
        // Every cluster holds its centre, so none is empty.
        for row in 0..3 {
            let a = &out.clustering.assign[row * 16..(row + 1) * 16];
            for ci in 0..6 {
                assert!(a.contains(&ci));
            }
        }
        assert!(Ctm::new(20.0, 5)
            .forward(&x, DensityNoise::IndexTieBreak)
            .is_err());
        Ok(())
    }
}
