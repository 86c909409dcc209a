//! The Whisper encoder–decoder (openai-whisper `model.py`), on HF parameter names.
//!
//! ```text
//! mel [B, n_mels, 3000] ─ conv1 (k3, p1) ─ GELU ─ conv2 (k3, s2, p1) ─ GELU ─ ᵀ ─ + pos
//!   ─ n_audio_layer × { x + SelfAttn(LN x);  x + MLP(LN x) } ─ LN ─▶ audio [B, 1500, d]
//!
//! tokens [B, n] ─ embed + pos[offset..offset+n]
//!   ─ n_text_layer × { x + CausalSelfAttn(LN x) (KV cache);  x + CrossAttn(LN x, audio);
//!                      x + MLP(LN x) } ─ LN ─▶ hidden [B, n, d] ─ · embedᵀ ─▶ logits [B, n, vocab]
//! ```
//!
//! Differences from `candle_transformers::models::whisper::model` (which this replaces):
//! GELU is the exact erf form Whisper was trained with (candle's uses the tanh
//! approximation), the decoder keeps a self-attention KV cache so each new token costs one
//! position instead of re-running the whole prefix, the cross-attention keys/values live in
//! a per-call [`DecoderCache`] (the model is immutable and can be shared), and the linear
//! layers are `videollama_nn` ones (run-time quantisation scopes apply).
//!
//! Attention scales `q·k` by `1/√d_head` once; openai-whisper scales `q` and `k` by
//! `d_head^-¼` each, which is the same product.

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Conv1d, Conv1dConfig, VarBuilder};
use videollama_nn::attention::{attention, AttentionMask};
use videollama_nn::{layer_norm, linear, linear_no_bias, Activation, LayerNorm, Linear};

use crate::config::WhisperDims;

type Result<T> = candle_core::Result<T>;

const LN_EPS: f64 = 1e-5;

#[derive(Debug, Clone)]
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    n_head: usize,
}

impl Attention {
    fn load(d: usize, n_head: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            q: linear(d, d, vb.pp("q_proj"))?,
            k: linear_no_bias(d, d, vb.pp("k_proj"))?,
            v: linear(d, d, vb.pp("v_proj"))?,
            out: linear(d, d, vb.pp("out_proj"))?,
            n_head,
        })
    }

    /// `[B, n, d]` → `[B, h, n, d/h]`.
    fn heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, d) = x.dims3()?;
        x.reshape((b, n, self.n_head, d / self.n_head))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// Keys and values of `x` as `[B, h, n, d/h]`.
    fn kv(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((
            self.heads(&self.k.forward(x)?)?,
            self.heads(&self.v.forward(x)?)?,
        ))
    }

    /// `softmax(q kᵀ/√dₕ + mask) v` with `q` from `x` `[B, n, d]` and the given keys/values.
    fn attend(&self, x: &Tensor, k: &Tensor, v: &Tensor, mask: AttentionMask) -> Result<Tensor> {
        let (b, n, d) = x.dims3()?;
        let q = self.heads(&self.q.forward(x)?)?;
        let scale = 1.0 / ((d / self.n_head) as f64).sqrt();
        let o = attention(&q, k, v, scale, mask)?; // [B, h, n, dₕ]
        self.out
            .forward(&o.transpose(1, 2)?.contiguous()?.reshape((b, n, d))?)
    }
}

#[derive(Debug, Clone)]
struct Block {
    attn: Attention,
    attn_ln: LayerNorm,
    cross: Option<(Attention, LayerNorm)>,
    fc1: Linear,
    fc2: Linear,
    mlp_ln: LayerNorm,
}

impl Block {
    fn load(d: usize, n_head: usize, cross: bool, vb: VarBuilder) -> Result<Self> {
        let cross = if cross {
            Some((
                Attention::load(d, n_head, vb.pp("encoder_attn"))?,
                layer_norm(d, LN_EPS, vb.pp("encoder_attn_layer_norm"))?,
            ))
        } else {
            None
        };
        Ok(Self {
            attn: Attention::load(d, n_head, vb.pp("self_attn"))?,
            attn_ln: layer_norm(d, LN_EPS, vb.pp("self_attn_layer_norm"))?,
            cross,
            fc1: linear(d, 4 * d, vb.pp("fc1"))?,
            fc2: linear(4 * d, d, vb.pp("fc2"))?,
            mlp_ln: layer_norm(d, LN_EPS, vb.pp("final_layer_norm"))?,
        })
    }

    fn mlp(&self, x: &Tensor) -> Result<Tensor> {
        let h = Activation::Gelu.forward(&self.fc1.forward(&self.mlp_ln.forward(x)?)?)?;
        x + self.fc2.forward(&h)?
    }
}

/// Sinusoidal positions of openai-whisper's encoder (`sinusoids(length, channels)`), used
/// when a checkpoint does not store `encoder.embed_positions.weight`.
fn sinusoids(length: usize, channels: usize, device: &Device) -> Result<Tensor> {
    let half = channels / 2;
    let inc = 10000f64.ln() / (half.max(2) - 1) as f64;
    let mut data = vec![0f32; length * channels];
    for t in 0..length {
        for i in 0..half {
            let x = t as f64 * (-inc * i as f64).exp();
            data[t * channels + i] = x.sin() as f32;
            data[t * channels + half + i] = x.cos() as f32;
        }
    }
    Tensor::from_vec(data, (length, channels), device)
}

/// The audio encoder.
#[derive(Debug, Clone)]
pub struct Encoder {
    conv1: Conv1d,
    conv2: Conv1d,
    /// `[n_audio_ctx, d]`.
    pos: Tensor,
    blocks: Vec<Block>,
    ln_post: LayerNorm,
    n_frames: usize,
}

impl Encoder {
    fn load(dims: &WhisperDims, vb: VarBuilder) -> Result<Self> {
        let d = dims.n_audio_state;
        let conv = |name: &str, cin: usize, stride: usize| -> Result<Conv1d> {
            let w = vb.get((d, cin, 3), &format!("{name}.weight"))?;
            let b = vb.get(d, &format!("{name}.bias"))?;
            let cfg = Conv1dConfig {
                padding: 1,
                stride,
                dilation: 1,
                groups: 1,
                cudnn_fwd_algo: None,
            };
            Ok(Conv1d::new(w, Some(b), cfg))
        };
        let pos = if vb.contains_tensor("embed_positions.weight") {
            vb.get((dims.n_audio_ctx, d), "embed_positions.weight")?
        } else {
            sinusoids(dims.n_audio_ctx, d, vb.device())?.to_dtype(vb.dtype())?
        };
        let blocks = (0..dims.n_audio_layer)
            .map(|i| Block::load(d, dims.n_audio_head, false, vb.pp(format!("layers.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            conv1: conv("conv1", dims.n_mels, 1)?,
            conv2: conv("conv2", d, 2)?,
            pos,
            blocks,
            ln_post: layer_norm(d, LN_EPS, vb.pp("layer_norm"))?,
            n_frames: dims.n_frames(),
        })
    }

    /// `mel [B, n_mels, 3000]` → audio features `[B, n_audio_ctx, d]`.
    pub fn forward(&self, mel: &Tensor) -> Result<Tensor> {
        let frames = mel.dim(D::Minus1)?;
        if frames != self.n_frames {
            candle_core::bail!(
                "encoder input has {frames} mel frames, the model takes {}",
                self.n_frames
            );
        }
        let x = Activation::Gelu.forward(&self.conv1.forward(mel)?)?;
        let x = Activation::Gelu.forward(&self.conv2.forward(&x)?)?;
        let mut x = x.transpose(1, 2)?.broadcast_add(&self.pos)?;
        for b in &self.blocks {
            let h = b.attn_ln.forward(&x)?;
            let (k, v) = b.attn.kv(&h)?;
            x = (&x + b.attn.attend(&h, &k, &v, AttentionMask::None)?)?;
            x = b.mlp(&x)?;
        }
        self.ln_post.forward(&x)
    }
}

/// Per-window decoder state: cross-attention keys/values of the audio and the growing
/// self-attention cache.
#[derive(Debug, Clone)]
pub struct DecoderCache {
    cross: Vec<(Tensor, Tensor)>,
    self_kv: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl DecoderCache {
    /// Tokens already in the cache.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The text decoder.
#[derive(Debug, Clone)]
pub struct Decoder {
    /// `[vocab, d]`; also the output projection (tied).
    embed: Tensor,
    proj: Linear,
    /// `[n_text_ctx, d]`.
    pos: Tensor,
    blocks: Vec<Block>,
    ln: LayerNorm,
}

impl Decoder {
    fn load(dims: &WhisperDims, vb: VarBuilder) -> Result<Self> {
        let d = dims.n_text_state;
        let embed = vb.get((dims.n_vocab, d), "embed_tokens.weight")?;
        let blocks = (0..dims.n_text_layer)
            .map(|i| Block::load(d, dims.n_text_head, true, vb.pp(format!("layers.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            proj: Linear::new(embed.clone(), None),
            embed,
            pos: vb.get((dims.n_text_ctx, d), "embed_positions.weight")?,
            blocks,
            ln: layer_norm(d, LN_EPS, vb.pp("layer_norm"))?,
        })
    }

    /// A fresh cache for `audio [B, n_audio_ctx, d]` (computes the cross-attention K/V).
    pub fn start(&self, audio: &Tensor) -> Result<DecoderCache> {
        let cross = self
            .blocks
            .iter()
            .map(|b| match &b.cross {
                Some((attn, _)) => attn.kv(audio),
                None => candle_core::bail!("decoder block without cross-attention"),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(DecoderCache {
            cross,
            self_kv: vec![None; self.blocks.len()],
            len: 0,
        })
    }

    /// Runs `tokens [B, n]` (u32) after the `cache.len()` cached ones; returns the final
    /// hidden states `[B, n, d]` (after the last LayerNorm) and extends the cache.
    pub fn forward(&self, tokens: &Tensor, cache: &mut DecoderCache) -> Result<Tensor> {
        let (b, n) = tokens.dims2()?;
        let offset = cache.len;
        if offset + n > self.pos.dim(0)? {
            candle_core::bail!(
                "decoder context is {} tokens; {offset} cached + {n} new exceed it",
                self.pos.dim(0)?
            );
        }
        let emb = self
            .embed
            .index_select(&tokens.flatten_all()?, 0)?
            .reshape((b, n, ()))?;
        let mut x = emb.broadcast_add(&self.pos.narrow(0, offset, n)?)?;
        for (i, blk) in self.blocks.iter().enumerate() {
            let h = blk.attn_ln.forward(&x)?;
            let (k, v) = blk.attn.kv(&h)?;
            let (k, v) = match cache.self_kv[i].take() {
                Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                None => (k, v),
            };
            x = (&x
                + blk
                    .attn
                    .attend(&h, &k, &v, AttentionMask::Causal { offset })?)?;
            cache.self_kv[i] = Some((k, v));
            if let Some((attn, ln)) = &blk.cross {
                let (ck, cv) = &cache.cross[i];
                x = (&x + attn.attend(&ln.forward(&x)?, ck, cv, AttentionMask::None)?)?;
            }
            x = blk.mlp(&x)?;
        }
        cache.len += n;
        self.ln.forward(&x)
    }

    /// Logits `[..., vocab]` (f32) of hidden states `[..., d]`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.proj.forward(hidden)?.to_dtype(DType::F32)
    }
}

/// Encoder and decoder of one checkpoint.
#[derive(Debug, Clone)]
pub struct WhisperModel {
    pub dims: WhisperDims,
    pub encoder: Encoder,
    pub decoder: Decoder,
}

impl WhisperModel {
    /// Loads from HF names. The root may be `model.` (as `WhisperForConditionalGeneration`
    /// saves) or empty (`WhisperModel`).
    pub fn load(dims: WhisperDims, vb: VarBuilder) -> Result<Self> {
        let vb = if vb.contains_tensor("model.encoder.conv1.weight") {
            vb.pp("model")
        } else {
            vb
        };
        Ok(Self {
            encoder: Encoder::load(&dims, vb.pp("encoder"))?,
            decoder: Decoder::load(&dims, vb.pp("decoder"))?,
            dims,
        })
    }

    pub fn device(&self) -> &Device {
        self.decoder.embed.device()
    }

    pub fn dtype(&self) -> DType {
        self.decoder.embed.dtype()
    }
}
