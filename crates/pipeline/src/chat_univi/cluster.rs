//! Chat-UniVi's dynamic visual tokens (`ChatUniViMetaForCausalLM.project` with `use_cluster`),
//! built on the DPC-KNN CTM of `videollama_connectors::dpc_knn`.
//!
//! ```text
//! image  features [B, N, C] ─ctm0─► [B, K0, C] ─ctm1─► [B, K1, C] ─ctm2─► [B, K2, C]
//!        tokens = cat(stage0, stage1, stage2) per image → [B·(K0+K1+K2), C]  (112 each for CLIP-L)
//! video  features [T, N, C] (T ≥ 3 frames)
//!        frame means [1, T, C] ─ctm3─► events = clusters, ordered by their first frame; frames
//!            inside an event in increasing order (events need not be contiguous)
//!        per frame: ctm0 [T,N]→[T,K0], ctm1 [T,K0]→[T,K1], ctm2 [T,K1]→[T,K2]
//!        per event e: cat of its frames' stage-s tokens [1, |e|·Ks, C] ─ctm_s─► [1, Ks, C]
//!        tokens = for each event: [stage0 | stage1 | stage2] → [E·(K0+K1+K2), C]
//! ```
//!
//! 1 or 2 frames take the image path (the reference projects groups of ≤ 2 `<image>`s as
//! images). The DPC calls happen in that order — ctm3, the three per-frame stages, then the
//! three stages of each event — which is the order a `--reference-noise` file's `dpcNN_jitter`
//! tensors are consumed in (see [`NoiseCursor`]).
//!
//! Without clustering (`use_cluster: false`) an image keeps its N patch tokens and a video
//! becomes `cat(mean over frames [N, C], mean over patches [T, C])`, as the reference does.

use crate::error::{PipelineError, Result};
use crate::family::StageTensors;
use candle_core::{DType, Tensor};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use videollama_connectors::dpc_knn::{Ctm, CtmOutput, DensityNoise};

/// The recorded density noise of a reference run: `dpcNN_jitter` by call index.
#[derive(Debug, Clone)]
pub struct RecordedJitter {
    pub path: PathBuf,
    /// Call index → `[B, N]` values (row-major).
    pub calls: BTreeMap<usize, (Vec<usize>, Vec<f32>)>,
}

impl RecordedJitter {
    /// Every `dpcNN_jitter` tensor of a `--reference-noise` file; an error when there is none.
    pub fn from_noise(noise: &crate::reference_noise::ReferenceNoise) -> Result<Self> {
        let mut calls = BTreeMap::new();
        for name in noise.names() {
            let Some(index) = name
                .strip_prefix("dpc")
                .and_then(|r| r.strip_suffix("_jitter"))
                .and_then(|n| n.parse::<usize>().ok())
            else {
                continue;
            };
            let t = noise.get(&name, "recorded DPC-KNN density noise")?;
            let values: Vec<f32> = t.flatten_all()?.to_vec1()?;
            calls.insert(index, (t.dims().to_vec(), values));
        }
        if calls.is_empty() {
            return Err(PipelineError::file(
                &noise.path,
                "--reference-noise: no dpcNN_jitter tensors (the density noise of each DPC-KNN \
                 call of a Chat-UniVi reference run)",
            ));
        }
        Ok(Self {
            path: noise.path.clone(),
            calls,
        })
    }
}

/// Hands each DPC-KNN call of one request its noise: none (the deterministic tie-break), or
/// the recorded noise of the call with the same index.
pub struct NoiseCursor {
    recorded: Option<Arc<RecordedJitter>>,
    next: usize,
}

impl NoiseCursor {
    pub fn new(recorded: Option<Arc<RecordedJitter>>) -> Self {
        Self { recorded, next: 0 }
    }

    /// Calls made so far.
    pub fn calls(&self) -> usize {
        self.next
    }

    /// Run `ctm` on `x [B, N, C]` with the next call's noise.
    pub fn run(&mut self, name: &str, ctm: &Ctm, x: &Tensor) -> Result<CtmOutput> {
        let index = self.next;
        self.next += 1;
        let Some(rec) = &self.recorded else {
            return Ok(ctm.forward(x, DensityNoise::IndexTieBreak)?);
        };
        let (b, n, _) = x.dims3()?;
        let Some((dims, values)) = rec.calls.get(&index) else {
            return Err(PipelineError::file(
                &rec.path,
                format!(
                    "--reference-noise: no dpc{index:02}_jitter for DPC call {index} ({name} on \
                     [{b}, {n}] tokens); the file records {} calls — was it made for this input?",
                    rec.calls.len()
                ),
            ));
        };
        if values.len() != b * n {
            return Err(PipelineError::file(
                &rec.path,
                format!(
                    "--reference-noise: dpc{index:02}_jitter is {dims:?} but DPC call {index} \
                     ({name}) clusters [{b}, {n}] tokens — was it made for this input?"
                ),
            ));
        }
        Ok(ctm.forward(x, DensityNoise::Recorded(values))?)
    }
}

/// The clustering settings of a model.
#[derive(Debug, Clone, Copy)]
pub struct ClusterStages {
    /// ctm0, ctm1, ctm2 (spatial) and ctm3 (temporal).
    pub ctm: [Ctm; 4],
}

fn i64_tensor(values: &[usize]) -> Result<Tensor> {
    let v: Vec<i64> = values.iter().map(|&x| x as i64).collect();
    Ok(Tensor::new(v.as_slice(), &candle_core::Device::Cpu)?)
}

impl ClusterStages {
    /// Tokens per image (or per event) for `patches` patch tokens.
    pub fn tokens_per_image(&self, patches: usize) -> usize {
        let k0 = self.ctm[0].cluster_num(patches);
        let k1 = self.ctm[1].cluster_num(k0);
        k0 + k1 + self.ctm[2].cluster_num(k1)
    }

    /// Events for `frames` frames (1 or 2 frames are images).
    pub fn events(&self, frames: usize) -> usize {
        if frames <= 2 {
            frames
        } else {
            self.ctm[3].cluster_num(frames)
        }
    }

    /// The three spatial stages on `x [B, N, C]`: `[B, K0+K1+K2, C]` and the stage tensors
    /// (`stage{s}` / `stage{s}_assign`, batch dim dropped when B = 1).
    pub fn image(
        &self,
        x: &Tensor,
        noise: &mut NoiseCursor,
        prefix: &str,
    ) -> Result<(Tensor, StageTensors)> {
        let b = x.dim(0)?;
        let mut named = Vec::new();
        let mut stages = Vec::new();
        let mut cur = x.clone();
        for s in 0..3 {
            let out = noise.run(&format!("ctm{s}"), &self.ctm[s], &cur)?;
            let (merged, assign) = if b == 1 {
                (out.merged.squeeze(0)?, out.assign.squeeze(0)?)
            } else {
                (out.merged.clone(), out.assign.clone())
            };
            named.push((format!("{prefix}stage{s}"), merged));
            named.push((format!("{prefix}stage{s}_assign"), assign));
            cur = out.merged.clone();
            stages.push(out.merged);
        }
        Ok((Tensor::cat(&stages, 1)?, named))
    }

    /// The video path on `features [T, N, C]` (T ≥ 3): `[E·(K0+K1+K2), C]` and the stage
    /// tensors under the fixture's names.
    pub fn video(
        &self,
        features: &Tensor,
        noise: &mut NoiseCursor,
    ) -> Result<(Tensor, StageTensors)> {
        let x = features.to_dtype(DType::F32)?;
        let t = x.dim(0)?;
        let mut named: StageTensors = Vec::new();
        let means = x.mean(1)?; // [T, C]
        named.push(("frame_means".into(), means.clone()));
        let ev = noise.run("ctm3", &self.ctm[3], &means.unsqueeze(0)?)?;
        let cluster_of: Vec<usize> = ev.clustering.assign.clone();
        // Events in order of first appearance; frames in increasing order.
        let mut order: Vec<usize> = Vec::new();
        let mut frames_of: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (frame, &c) in cluster_of.iter().enumerate() {
            if !frames_of.contains_key(&c) {
                order.push(c);
            }
            frames_of.entry(c).or_default().push(frame);
        }
        let event_of_frame: Vec<usize> = cluster_of
            .iter()
            .map(|c| order.iter().position(|o| o == c).unwrap_or(0))
            .collect();
        named.push(("event_cluster_ids".into(), i64_tensor(&cluster_of)?));
        named.push(("event_index_per_frame".into(), i64_tensor(&event_of_frame)?));
        // Per-frame stages.
        let mut per_frame = Vec::new();
        let mut cur = x.clone();
        for s in 0..3 {
            let out = noise.run(&format!("ctm{s}"), &self.ctm[s], &cur)?;
            named.push((format!("frame_stage{s}"), out.merged.clone()));
            named.push((format!("frame_stage{s}_assign"), out.assign.clone()));
            cur = out.merged.clone();
            per_frame.push(out.merged);
        }
        debug_assert_eq!(per_frame[0].dim(0)?, t);
        // Per event, re-cluster the concatenated tokens of its frames at every stage.
        let mut tokens = Vec::new();
        for (e, c) in order.iter().enumerate() {
            let frames = &frames_of[c];
            for (s, stage) in per_frame.iter().enumerate() {
                let parts: Vec<Tensor> = frames
                    .iter()
                    .map(|&f| stage.get(f))
                    .collect::<candle_core::Result<_>>()?;
                let joined = Tensor::cat(&parts, 0)?.unsqueeze(0)?;
                let out = noise.run(&format!("ctm{s}"), &self.ctm[s], &joined)?;
                let merged = out.merged.squeeze(0)?;
                named.push((format!("event{e}_stage{s}"), merged.clone()));
                named.push((format!("event{e}_stage{s}_assign"), out.assign.squeeze(0)?));
                tokens.push(merged);
            }
        }
        Ok((Tensor::cat(&tokens, 0)?, named))
    }
}

/// The reference without clustering: an image's patch tokens `[B·N, C]`, or for a video
/// `cat(mean over frames, mean over patches)` `[N + T, C]`.
pub fn unclustered(features: &Tensor, video: bool) -> Result<Tensor> {
    let x = features.to_dtype(DType::F32)?;
    let (t, n, c) = x.dims3()?;
    if video {
        Ok(Tensor::cat(&[x.mean(0)?, x.mean(1)?], 0)?)
    } else {
        Ok(x.reshape((t * n, c))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published() -> ClusterStages {
        let rates = [64.0, 32.0, 16.0, 1.0 / 16.0];
        let k = crate::chat_univi::config::CTM_BASE_K;
        ClusterStages {
            ctm: std::array::from_fn(|i| Ctm::new(rates[i], k[i])),
        }
    }

    #[test]
    fn token_counts_follow_the_grid_and_the_frame_count() {
        let s = published();
        // CLIP-L/14 at 224 (256 patches) and 336 (576): 64 + 32 + 16 either way.
        assert_eq!(s.tokens_per_image(256), 112);
        assert_eq!(s.tokens_per_image(576), 112);
        assert_eq!(s.events(1), 1);
        assert_eq!(s.events(2), 2);
        assert_eq!(s.events(8), 1);
        assert_eq!(s.events(64), 4);
        assert_eq!(s.events(100), 7);
    }

    #[test]
    fn video_path_on_random_features_uses_every_frame_once() -> Result<()> {
        let rates = [6.0, 3.0, 2.0, 0.5];
        let k = crate::chat_univi::config::CTM_BASE_K;
        let s = ClusterStages {
            ctm: std::array::from_fn(|i| Ctm::new(rates[i], k[i])),
        };
        let x = Tensor::randn(0f32, 1.0, (7, 9, 4), &candle_core::Device::Cpu)?;
        let mut noise = NoiseCursor::new(None);
        let (tokens, named) = s.video(&x, &mut noise)?;
        let events = s.events(7); // ceil(3.5) = 4
        assert_eq!(events, 4);
        assert_eq!(tokens.dims(), &[events * 11, 4]);
        assert_eq!(noise.calls(), 4 + 3 * events);
        let per_frame: Vec<i64> = named
            .iter()
            .find(|(n, _)| n == "event_index_per_frame")
            .unwrap()
            .1
            .to_vec1()?;
        // Every event holds at least one frame, and events are numbered by first frame.
        let mut first_seen = Vec::new();
        for e in per_frame {
            if !first_seen.contains(&e) {
                first_seen.push(e);
            }
        }
        assert_eq!(first_seen, (0..events as i64).collect::<Vec<_>>());
        Ok(())
    }
}
