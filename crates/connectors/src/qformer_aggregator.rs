//! Video-LLaMA's positioned Q-Former aggregator (spec §1.A, `video_llama.py`
//! `encode_videoQformer_visual` second half and `encode_audioQformer`).
//!
//! The same module is used twice, with different weights:
//!
//! ```text
//! video: frame_qformer_out [T, 32, 768]   (image Q-Former outputs per frame; T ≤ 32)
//! audio: audio_features    [T, 1, 1024]   (one ImageBind vector per 2-s clip;  T ≤ 8)
//!   → + position_embedding.weight[t]        row t added to every vector of item t   [T, n, C]
//!   → flatten frame-major                   (t, then the index within the item)      [1, T·n, C]
//!   → Q-Former (own query tokens [1, Q, H], cross-attention to the T·n vectors)      [1, Q, H]
//!   → projection Linear(H → d) with bias                                             [Q, d]
//! ```
//!
//! Video: keys `video_frame_position_embedding`, `video_query_tokens`, `video_Qformer`,
//! `llama_proj` (32 output tokens whatever T is). Audio: `audio_position_embedding`,
//! `audio_query_tokens`, `audio_Qformer`, `audio_llama_proj` (8 tokens).
//! All sizes (table rows and width C, Q, H, d) are read from the weights; the head count,
//! FFN width, LayerNorm eps and activation come from the BERT config. The position table
//! bounds T: the reference would fail with an index error past its last row, so this port
//! returns an error naming the table size instead.

use candle_core::{bail, Result, Tensor};
use candle_nn::VarBuilder;
use videollama_nn::{linear, Linear};

use crate::qformer::{full_key, load_query_tokens, QFormer, QFormerConfig};

/// Number of layers of the video and audio Q-Formers: `init_video_Qformer(…, num_hidden_layers=2)`
/// is hard-coded in the reference (the BERT config has 12).
pub const VIDEO_QFORMER_LAYERS: usize = 2;

/// Where a [`PositionedQFormer`]'s weights live, plus the words used in its error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregatorKeys {
    /// `nn.Embedding(max_pos, C)`; its table is `<position_embedding>.weight`.
    pub position_embedding: String,
    /// `[1, Q, H]` learned queries.
    pub query_tokens: String,
    /// The Q-Former module; its BERT is under `<qformer>.bert`.
    pub qformer: String,
    /// `Linear(H → d)` with bias.
    pub projection: String,
    /// What the position table indexes, for errors: `"frame"` → "…'s frame position table".
    pub table_name: String,
    /// The items, plural, for errors: `"frames"` → "at most 32 frames".
    pub items: String,
}

impl AggregatorKeys {
    /// The vision branch (`VL_*.pth`).
    pub fn video() -> Self {
        Self {
            position_embedding: "video_frame_position_embedding".into(),
            query_tokens: "video_query_tokens".into(),
            qformer: "video_Qformer".into(),
            projection: "llama_proj".into(),
            table_name: "frame".into(),
            items: "frames".into(),
        }
    }

    /// The audio branch (`AL_*.pth`).
    pub fn audio() -> Self {
        Self {
            position_embedding: "audio_position_embedding".into(),
            query_tokens: "audio_query_tokens".into(),
            qformer: "audio_Qformer".into(),
            projection: "audio_llama_proj".into(),
            table_name: "audio".into(),
            items: "audio clips".into(),
        }
    }
}

/// The intermediate tensors of [`PositionedQFormer::forward_with_stages`] (no batch dim).
#[derive(Debug, Clone)]
pub struct PositionedQFormerStages {
    /// Q-Former input: features + position rows, flattened frame-major, `[T·n, C]`.
    pub qformer_in: Tensor,
    /// Q-Former `last_hidden_state`, `[Q, H]`.
    pub qformer_out: Tensor,
    /// Projection output, the LLM embeddings, `[Q, d]`.
    pub tokens: Tensor,
}

/// Position embedding + Q-Former + projection (see the module docs).
#[derive(Debug, Clone)]
pub struct PositionedQFormer {
    /// `[max_pos, C]`.
    position_table: Tensor,
    /// `[Q, H]`.
    query_tokens: Tensor,
    qformer: QFormer,
    projection: Linear,
    keys: AggregatorKeys,
}

impl PositionedQFormer {
    /// `vb` at the checkpoint root (the keys are looked up under it). `bert` is the BERT
    /// config (heads, FFN width, eps, activation; its `hidden_size` must match the weights);
    /// `num_hidden_layers` is [`VIDEO_QFORMER_LAYERS`] in the reference. The Q-Former's
    /// `encoder_width` is the position table's width and its query count the stored queries'.
    pub fn new(
        bert: &QFormerConfig,
        num_hidden_layers: usize,
        keys: &AggregatorKeys,
        vb: VarBuilder,
    ) -> Result<Self> {
        let pos_vb = vb.pp(&keys.position_embedding);
        let position_table = pos_vb.get_unchecked("weight")?;
        let (max_pos, c) = match position_table.dims() {
            &[rows, c] if rows > 0 && c > 0 => (rows, c),
            d => bail!(
                "{}: expected a position table [max_pos, C], got {d:?}",
                full_key(&pos_vb, "weight")
            ),
        };
        let query_tokens = load_query_tokens(&vb, &keys.query_tokens, bert.hidden_size)?;
        let q = query_tokens.dim(0)?;
        let cfg = QFormerConfig::video(bert, c, q, num_hidden_layers);
        let qformer = QFormer::new(&cfg, vb.pp(&keys.qformer).pp("bert"))?;
        let proj_vb = vb.pp(&keys.projection);
        let h = cfg.hidden_size;
        let d = match proj_vb.get_unchecked("weight")?.dims() {
            &[d, w] if w == h && d > 0 => d,
            dims => bail!(
                "{}: expected a projection weight [d, {h}], got {dims:?}",
                full_key(&proj_vb, "weight")
            ),
        };
        let projection = linear(h, d, proj_vb)?;
        Ok(Self {
            position_table: position_table.reshape((max_pos, c))?,
            query_tokens,
            qformer,
            projection,
            keys: keys.clone(),
        })
    }

    pub fn qformer(&self) -> &QFormer {
        &self.qformer
    }

    pub fn keys(&self) -> &AggregatorKeys {
        &self.keys
    }

    /// Rows of the position table: the largest T accepted (32 frames, 8 audio clips).
    pub fn max_positions(&self) -> usize {
        self.position_table.dims()[0]
    }

    /// Width of the input vectors (C): the position table's width.
    pub fn input_width(&self) -> usize {
        self.position_table.dims()[1]
    }

    /// Number of output tokens (Q), whatever T is.
    pub fn num_queries(&self) -> usize {
        self.query_tokens.dims()[0]
    }

    /// Width of the output tokens (d, the LLM hidden size).
    pub fn out_dim(&self) -> usize {
        self.projection.out_dim()
    }

    /// `[max_pos, C]`.
    pub fn position_table(&self) -> &Tensor {
        &self.position_table
    }

    /// `[Q, H]`.
    pub fn query_tokens(&self) -> &Tensor {
        &self.query_tokens
    }

    /// `features [T, n, C]` (or `[T, C]`, taken as n = 1) → tokens `[Q, d]`.
    pub fn forward(&self, features: &Tensor) -> Result<Tensor> {
        Ok(self.forward_with_stages(features)?.tokens)
    }

    /// [`Self::forward`] plus the Q-Former input and output.
    pub fn forward_with_stages(&self, features: &Tensor) -> Result<PositionedQFormerStages> {
        let c = self.input_width();
        let features = match features.dims() {
            &[t, n, fc] if fc == c => features.reshape((t, n, c))?,
            &[t, fc] if fc == c => features.reshape((t, 1, c))?,
            d => bail!(
                "{} aggregator expects features [T, n, {c}] or [T, {c}], got {d:?}",
                self.keys.qformer
            ),
        };
        let (t, n, _) = features.dims3()?;
        if t == 0 || n == 0 {
            bail!(
                "{} aggregator: no input ({t} {}, {n} vectors each)",
                self.keys.qformer,
                self.keys.items
            );
        }
        let max_pos = self.max_positions();
        if t > max_pos {
            bail!(
                "Video-LLaMA's {} position table has {max_pos} rows: at most {max_pos} {}, got {t}",
                self.keys.table_name,
                self.keys.items
            );
        }
        let dtype = self.position_table.dtype();
        // [T, 1, C]: row t is added to all n vectors of item t.
        let pos = self.position_table.narrow(0, 0, t)?.unsqueeze(1)?;
        let x = features.to_dtype(dtype)?.broadcast_add(&pos)?;
        // [T, n, C] → [1, T·n, C], frame-major.
        let qformer_in = x.reshape((1, t * n, c))?;
        let out = self.qformer.forward(&self.query_tokens, &qformer_in)?; // [1, Q, H]
        let tokens = self.projection.forward(&out)?; // [1, Q, d]
        Ok(PositionedQFormerStages {
            qformer_in: qformer_in.squeeze(0)?,
            qformer_out: out.squeeze(0)?,
            tokens: tokens.squeeze(0)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use std::collections::HashMap;

    /// A random aggregator with `rows` positions, C = 6, H = 8, Q = 3, d = 5.
    fn tiny(rows: usize) -> Result<PositionedQFormer> {
        let bert = QFormerConfig {
            hidden_size: 8,
            num_attention_heads: 2,
            intermediate_size: 12,
            num_hidden_layers: 12,
            ..QFormerConfig::default()
        };
        let dev = Device::Cpu;
        let keys = AggregatorKeys::video();
        // The Q-Former weights come from a VarMap; the size-defining tensors are given.
        let cfg = QFormerConfig::video(&bert, 6, 3, VIDEO_QFORMER_LAYERS);
        let vm = candle_nn::VarMap::new();
        QFormer::new(
            &cfg,
            VarBuilder::from_varmap(&vm, DType::F32, &dev)
                .pp(&keys.qformer)
                .pp("bert"),
        )?;
        let mut ts: HashMap<String, Tensor> = vm
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect();
        ts.insert(
            "video_frame_position_embedding.weight".into(),
            Tensor::randn(0f32, 1.0, (rows, 6), &dev)?,
        );
        ts.insert(
            "video_query_tokens".into(),
            Tensor::randn(0f32, 1.0, (1, 3, 8), &dev)?,
        );
        ts.insert(
            "llama_proj.weight".into(),
            Tensor::randn(0f32, 1.0, (5, 8), &dev)?,
        );
        ts.insert("llama_proj.bias".into(), Tensor::randn(0f32, 1.0, 5, &dev)?);
        let vb = VarBuilder::from_tensors(ts, DType::F32, &dev);
        PositionedQFormer::new(&bert, VIDEO_QFORMER_LAYERS, &keys, vb)
    }

    #[test]
    fn sizes_from_weights_and_shapes() -> Result<()> {
        let agg = tiny(4)?;
        assert_eq!(agg.max_positions(), 4);
        assert_eq!(agg.input_width(), 6);
        assert_eq!(agg.num_queries(), 3);
        assert_eq!(agg.out_dim(), 5);
        assert_eq!(agg.qformer().config().num_hidden_layers, 2);
        assert_eq!(agg.qformer().config().encoder_width, 6);
        let x = Tensor::randn(0f32, 1.0, (4, 2, 6), &Device::Cpu)?;
        let s = agg.forward_with_stages(&x)?;
        assert_eq!(s.qformer_in.dims(), &[8, 6]);
        assert_eq!(s.qformer_out.dims(), &[3, 8]);
        assert_eq!(s.tokens.dims(), &[3, 5]);
        // Frame-major flattening with row t of the table added to item t.
        let want = (x.get(2)?.get(1)? + agg.position_table().get(2)?)?;
        let d = (s.qformer_in.get(5)? - want)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert_eq!(d, 0.0);
        // [T, C] is [T, 1, C].
        let a = Tensor::randn(0f32, 1.0, (3, 6), &Device::Cpu)?;
        let y2 = agg.forward(&a)?;
        let y3 = agg.forward(&a.unsqueeze(1)?)?;
        assert_eq!((y2 - y3)?.abs()?.max_all()?.to_scalar::<f32>()?, 0.0);
        Ok(())
    }

    #[test]
    fn too_many_items_and_bad_widths_are_errors() -> Result<()> {
        let agg = tiny(4)?;
        let x = Tensor::zeros((5, 2, 6), DType::F32, &Device::Cpu)?;
        let e = agg.forward(&x).unwrap_err().to_string();
        assert!(
            e.contains("frame position table has 4 rows: at most 4 frames"),
            "{e}"
        );
        let x = Tensor::zeros((2, 2, 7), DType::F32, &Device::Cpu)?;
        assert!(agg.forward(&x).is_err());
        let x = Tensor::zeros((0, 2, 6), DType::F32, &Device::Cpu)?;
        assert!(agg.forward(&x).is_err());
        Ok(())
    }
}
