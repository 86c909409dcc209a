//! BLIP-2 Q-Former (spec §0.2), as Video-LLaMA runs it: learned query embeddings only, no text.
//!
//! The reference class is `video_llama/models/Qformer.py` `BertModel` (inside `BertLMHeadModel`,
//! whose `cls` head, word/position embeddings and text FFN `intermediate`/`output` are deleted
//! by `video_llama.py`); this port loads and runs only what the query path uses.
//!
//! ```text
//! query_tokens [Q, H]                      encoder_hidden [B, M, Cenc]
//!   → embeddings.LayerNorm                 (image features, frame outputs or audio clips)
//!   → broadcast to [B, Q, H]                     │
//!   → encoder.layer.l, l = 0..L:                 │
//!       x = LN(x + Wo · SelfAttn(x))             │   attention.{self,output}
//!       if l % cross_attention_freq == 0:        ▼
//!       x = LN(x + Wo · CrossAttn(x, encoder_hidden))   crossattention.{self,output}
//!       x = LN(x + W2 · GELU(W1 · x))                   intermediate_query / output_query
//!   → last_hidden_state [B, Q, H]
//! ```
//!
//! All residuals are post-LN (BERT). There are no masks: the reference passes all-ones
//! attention masks, which become an all-zero additive mask. Cross-attention keys/values map
//! `Cenc → H` (`encoder_width`); queries always come from the `H`-wide hidden state.
//!
//! [`ImageQFormer`] is the frozen BLIP-2 image Q-Former applied to every frame:
//! `vision_features [T, 257, W]` → `[T, Q, H]` (`Qformer.bert.*`, `query_tokens`).

use candle_core::{bail, Module, Result, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;
use videollama_nn::attention::{attention, AttentionMask};
use videollama_nn::{layer_norm, linear, Activation, LayerNorm, Linear};

/// A Q-Former's configuration: the BERT `config.json` fields it uses plus the three fields
/// the reference sets in code (`encoder_width`, `cross_attention_freq`, `query_length`).
///
/// Deserializing a plain BERT `config.json` fills the BERT fields (transformers' `BertConfig`
/// defaults for any that are missing) and leaves the code-set fields at their defaults
/// (`encoder_width` = 0, i.e. unset; `cross_attention_freq` = 1; `query_length` = 0); use
/// [`QFormerConfig::image`] / [`QFormerConfig::video`] to set them as the reference does.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct QFormerConfig {
    /// `hidden_size` (H): width of the queries (768 for BERT-base).
    pub hidden_size: usize,
    /// `num_attention_heads` (12 for BERT-base): cannot be read from the weights.
    pub num_attention_heads: usize,
    /// `intermediate_size`: the query FFN width (3072 for BERT-base).
    pub intermediate_size: usize,
    /// `num_hidden_layers`: 12 for the image Q-Former, 2 for the video/audio Q-Formers.
    pub num_hidden_layers: usize,
    /// `layer_norm_eps` (1e-12 for BERT).
    pub layer_norm_eps: f64,
    /// `hidden_act`: `gelu` is the exact (erf) GELU.
    pub hidden_act: Activation,
    /// Width of the features cross-attention reads (`Cenc`): the ViT width for the image
    /// Q-Former, H for the video Q-Former, the ImageBind output width for the audio one.
    pub encoder_width: usize,
    /// Cross-attention runs in the layers `l` with `l % cross_attention_freq == 0`.
    pub cross_attention_freq: usize,
    /// Number of learned queries (Q).
    pub query_length: usize,
}

impl Default for QFormerConfig {
    /// transformers' `BertConfig()` defaults (= `bert-base-uncased`), code-set fields unset.
    fn default() -> Self {
        Self {
            hidden_size: 768,
            num_attention_heads: 12,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            layer_norm_eps: 1e-12,
            hidden_act: Activation::Gelu,
            encoder_width: 0,
            cross_attention_freq: 1,
            query_length: 0,
        }
    }
}

impl QFormerConfig {
    /// Parses a BERT `config.json` (the reference's `BertConfig.from_pretrained("bert-base-uncased")`).
    pub fn from_bert_json(json: &serde_json::Value) -> Result<Self> {
        Self::deserialize(json).map_err(|e| {
            candle_core::Error::Msg(format!("Q-Former: cannot read the BERT config.json: {e}"))
        })
    }

    /// Reads a BERT `config.json` file.
    pub fn from_bert_file(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", path.display())))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", path.display())))?;
        Self::from_bert_json(&json)
    }

    /// The frozen BLIP-2 image Q-Former (`Blip2Base.init_Qformer`): the BERT config with
    /// `encoder_width` = vision width, cross-attention every 2nd layer, `num_query_token` queries.
    pub fn image(bert: &Self, vision_width: usize, num_query_token: usize) -> Self {
        Self {
            encoder_width: vision_width,
            cross_attention_freq: 2,
            query_length: num_query_token,
            ..bert.clone()
        }
    }

    /// A Video-LLaMA video/audio Q-Former (`VideoLLAMA.init_video_Qformer`): the BERT config
    /// with `num_hidden_layers` layers (the reference passes 2), cross-attention in every layer.
    pub fn video(
        bert: &Self,
        encoder_width: usize,
        num_query_token: usize,
        num_hidden_layers: usize,
    ) -> Self {
        Self {
            num_hidden_layers,
            encoder_width,
            cross_attention_freq: 1,
            query_length: num_query_token,
            ..bert.clone()
        }
    }

    /// Checks what the reference asserts or would fail on.
    #[allow(clippy::manual_is_multiple_of)] // `is_multiple_of` needs Rust 1.87; MSRV is 1.85
    pub fn validate(&self) -> Result<()> {
        if self.num_attention_heads == 0 || self.hidden_size % self.num_attention_heads != 0 {
            bail!(
                "Q-Former: hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        if self.cross_attention_freq == 0 {
            bail!("Q-Former: cross_attention_freq must be at least 1");
        }
        if self.encoder_width == 0 {
            bail!("Q-Former: encoder_width is unset (use QFormerConfig::image or ::video)");
        }
        Ok(())
    }

    /// Whether layer `l` has a cross-attention block.
    #[allow(clippy::manual_is_multiple_of)] // MSRV 1.85, see `validate`
    pub fn has_cross_attention(&self, layer: usize) -> bool {
        self.cross_attention_freq > 0 && layer % self.cross_attention_freq == 0
    }

    /// Parameters of the query path from the config alone (embeddings LayerNorm + layers;
    /// not the query tokens). BERT-base image Q-Former (12 layers, xattn ×6, encoder 1408):
    /// 105,137,664.
    pub fn param_count(&self) -> u64 {
        let h = self.hidden_size as u64;
        let i = self.intermediate_size as u64;
        let e = self.encoder_width as u64;
        let ln = 2 * h;
        let self_attn = 4 * (h * h + h) + ln;
        let cross = (h * h + h) + 2 * (e * h + h) + (h * h + h) + ln;
        let ffn = (h * i + i) + (i * h + h) + ln;
        let crosses = (0..self.num_hidden_layers)
            .filter(|&l| self.has_cross_attention(l))
            .count() as u64;
        ln + self.num_hidden_layers as u64 * (self_attn + ffn) + crosses * cross
    }
}

/// `BertAttention`: multi-head attention + `output.dense` + post-LN residual.
#[derive(Debug, Clone)]
pub(crate) struct BertAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    dense: Linear,
    layer_norm: LayerNorm,
    heads: usize,
    head_dim: usize,
}

impl BertAttention {
    /// `vb` at `attention` or `crossattention`; `kv_width` = H (self) or `encoder_width` (cross).
    pub(crate) fn new(cfg: &QFormerConfig, kv_width: usize, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let s = vb.pp("self");
        let o = vb.pp("output");
        Ok(Self {
            query: linear(h, h, s.pp("query"))?,
            key: linear(kv_width, h, s.pp("key"))?,
            value: linear(kv_width, h, s.pp("value"))?,
            dense: linear(h, h, o.pp("dense"))?,
            layer_norm: layer_norm(h, cfg.layer_norm_eps, o.pp("LayerNorm"))?,
            heads: cfg.num_attention_heads,
            head_dim: h / cfg.num_attention_heads,
        })
    }

    /// `x [B, Lq, H]`, `kv [B, Lk, Ckv]` → `LN(x + dense(attn(x, kv)))` `[B, Lq, H]`.
    pub(crate) fn forward(&self, x: &Tensor, kv: &Tensor) -> Result<Tensor> {
        let (b, lq, h) = x.dims3()?;
        let lk = kv.dim(1)?;
        let split = |t: Tensor, l: usize| -> Result<Tensor> {
            // [B, L, H] → [B, heads, L, D]
            t.reshape((b, l, self.heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(self.query.forward(x)?, lq)?;
        let k = split(self.key.forward(kv)?, lk)?;
        let v = split(self.value.forward(kv)?, lk)?;
        let scale = (self.head_dim as f64).powf(-0.5);
        let ctx = attention(&q, &k, &v, scale, AttentionMask::None)?; // [B, heads, Lq, D]
        let ctx = ctx.transpose(1, 2)?.reshape((b, lq, h))?;
        self.layer_norm.forward(&(self.dense.forward(&ctx)? + x)?)
    }
}

/// One `BertLayer`, query rows only (the text FFN is deleted by the reference).
#[derive(Debug, Clone)]
struct QFormerLayer {
    attention: BertAttention,
    cross_attention: Option<BertAttention>,
    intermediate_query: Linear,
    output_query: Linear,
    output_layer_norm: LayerNorm,
    act: Activation,
}

impl QFormerLayer {
    fn new(cfg: &QFormerConfig, index: usize, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let i = cfg.intermediate_size;
        let cross_attention = if cfg.has_cross_attention(index) {
            Some(BertAttention::new(
                cfg,
                cfg.encoder_width,
                vb.pp("crossattention"),
            )?)
        } else {
            None
        };
        let out = vb.pp("output_query");
        Ok(Self {
            attention: BertAttention::new(cfg, h, vb.pp("attention"))?,
            cross_attention,
            intermediate_query: linear(h, i, vb.pp("intermediate_query").pp("dense"))?,
            output_query: linear(i, h, out.pp("dense"))?,
            output_layer_norm: layer_norm(h, cfg.layer_norm_eps, out.pp("LayerNorm"))?,
            act: cfg.hidden_act,
        })
    }

    /// `x [Bx, Q, H]` (Bx = 1 before the first cross-attention, B after), `enc [B, M, Cenc]`.
    fn forward(&self, x: &Tensor, enc: &Tensor) -> Result<Tensor> {
        let mut x = self.attention.forward(x, x)?;
        if let Some(cross) = &self.cross_attention {
            // Until the first cross-attention every batch row is the same, so the queries are
            // kept at batch 1 and only broadcast here.
            let (bx, q, h) = x.dims3()?;
            let b = enc.dim(0)?;
            if bx != b {
                x = x.broadcast_as((b, q, h))?.contiguous()?;
            }
            x = cross.forward(&x, enc)?;
        }
        let y = self.act.forward(&self.intermediate_query.forward(&x)?)?;
        let y = self.output_query.forward(&y)?;
        self.output_layer_norm.forward(&(y + x)?)
    }
}

/// The query path of a BLIP-2 Q-Former (`BertModel` with `query_embeds` only).
#[derive(Debug, Clone)]
pub struct QFormer {
    embeddings_layer_norm: LayerNorm,
    layers: Vec<QFormerLayer>,
    cfg: QFormerConfig,
}

impl QFormer {
    /// `vb` at the BERT prefix (`Qformer.bert`, `video_Qformer.bert`, `audio_Qformer.bert`).
    /// Reads `embeddings.LayerNorm.*` and, per layer, `attention.*`, `crossattention.*`
    /// (layers with `l % cross_attention_freq == 0`), `intermediate_query.dense.*`,
    /// `output_query.{dense,LayerNorm}.*`. Other keys (`embeddings.position_ids`, text
    /// modules of a full BERT) are ignored.
    pub fn new(cfg: &QFormerConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let embeddings_layer_norm = layer_norm(
            cfg.hidden_size,
            cfg.layer_norm_eps,
            vb.pp("embeddings").pp("LayerNorm"),
        )?;
        let lv = vb.pp("encoder").pp("layer");
        let layers = (0..cfg.num_hidden_layers)
            .map(|l| QFormerLayer::new(cfg, l, lv.pp(l)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embeddings_layer_norm,
            layers,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &QFormerConfig {
        &self.cfg
    }

    /// The dtype of the weights (inputs are cast to it; outputs have it).
    pub fn dtype(&self) -> candle_core::DType {
        self.embeddings_layer_norm.weight().dtype()
    }

    /// `query_tokens [Q, H]` (or `[1, Q, H]`), `encoder_hidden [B, M, Cenc]` →
    /// `last_hidden_state [B, Q, H]`.
    pub fn forward(&self, query_tokens: &Tensor, encoder_hidden: &Tensor) -> Result<Tensor> {
        let h = self.cfg.hidden_size;
        let queries = match query_tokens.dims() {
            &[q, qh] if qh == h => query_tokens.reshape((1, q, h))?,
            &[1, _, qh] if qh == h => query_tokens.clone(),
            d => bail!("Q-Former: query_tokens must be [Q, {h}] or [1, Q, {h}], got {d:?}"),
        };
        let (b, m, c) = match encoder_hidden.dims() {
            &[b, m, c] => (b, m, c),
            d => bail!(
                "Q-Former: encoder_hidden_states must be [B, M, {}], got {d:?}",
                self.cfg.encoder_width
            ),
        };
        if c != self.cfg.encoder_width {
            bail!(
                "Q-Former: encoder_hidden_states are {c} wide, the cross-attention expects encoder_width {}",
                self.cfg.encoder_width
            );
        }
        if b == 0 || m == 0 {
            bail!(
                "Q-Former: empty encoder_hidden_states {:?}",
                encoder_hidden.dims()
            );
        }
        let dtype = self.dtype();
        let enc = encoder_hidden.to_dtype(dtype)?.contiguous()?;
        // [1, Q, H]: the embeddings LayerNorm on the queries (dropout is identity).
        let mut x = self
            .embeddings_layer_norm
            .forward(&queries.to_dtype(dtype)?)?;
        for layer in &self.layers {
            x = layer.forward(&x, &enc)?;
        }
        // Without any cross-attention layer x is still [1, Q, H].
        let q = x.dim(1)?;
        if x.dim(0)? != b {
            x = x.broadcast_as((b, q, h))?.contiguous()?;
        }
        Ok(x)
    }
}

/// Reads `[1, Q, H]` query tokens (a `nn.Parameter` of shape `[1, num_query_token, hidden]`)
/// whatever Q is, checking H; returns them as `[Q, H]`.
pub(crate) fn load_query_tokens(vb: &VarBuilder, key: &str, hidden: usize) -> Result<Tensor> {
    let t = vb.get_unchecked(key)?;
    match t.dims() {
        &[1, q, h] if h == hidden && q > 0 => t.reshape((q, h)),
        d => bail!(
            "{}: expected query tokens [1, Q, {hidden}], got {d:?}",
            full_key(vb, key)
        ),
    }
}

pub(crate) fn full_key(vb: &VarBuilder, key: &str) -> String {
    let p = vb.prefix();
    if p.is_empty() {
        key.to_string()
    } else {
        format!("{p}.{key}")
    }
}

/// The frozen BLIP-2 image Q-Former run on every frame (`encode_videoQformer_visual`, first half).
#[derive(Debug, Clone)]
pub struct ImageQFormer {
    qformer: QFormer,
    /// `[Q, H]`.
    query_tokens: Tensor,
}

impl ImageQFormer {
    /// Key of the BLIP-2 Q-Former in `blip2_pretrained_*.pth` (its BERT is under `.bert`).
    pub const QFORMER_KEY: &'static str = "Qformer";
    /// Key of its `[1, Q, H]` learned queries.
    pub const QUERY_TOKENS_KEY: &'static str = "query_tokens";

    /// `vb` at the checkpoint root (`Qformer.bert.*`, `query_tokens`). `cfg` from
    /// [`QFormerConfig::image`]; its `query_length` must match the stored `query_tokens`.
    pub fn new(cfg: &QFormerConfig, vb: VarBuilder) -> Result<Self> {
        let qformer = QFormer::new(cfg, vb.pp(Self::QFORMER_KEY).pp("bert"))?;
        let query_tokens = load_query_tokens(&vb, Self::QUERY_TOKENS_KEY, cfg.hidden_size)?;
        let q = query_tokens.dim(0)?;
        if q != cfg.query_length {
            bail!(
                "{}: the checkpoint has {q} queries but num_query_token is {}",
                full_key(&vb, Self::QUERY_TOKENS_KEY),
                cfg.query_length
            );
        }
        Ok(Self {
            qformer,
            query_tokens,
        })
    }

    /// [`Self::new`] with `num_query_token` taken from the stored `query_tokens`.
    pub fn load(bert: &QFormerConfig, vision_width: usize, vb: VarBuilder) -> Result<Self> {
        let q = load_query_tokens(&vb, Self::QUERY_TOKENS_KEY, bert.hidden_size)?.dim(0)?;
        Self::new(&QFormerConfig::image(bert, vision_width, q), vb)
    }

    pub fn qformer(&self) -> &QFormer {
        &self.qformer
    }

    /// `[Q, H]`.
    pub fn query_tokens(&self) -> &Tensor {
        &self.query_tokens
    }

    /// Number of queries per frame (Q).
    pub fn num_queries(&self) -> usize {
        self.query_tokens.dims()[0]
    }

    /// `vision_features [T, N, W]` (`ln_vision` output, CLS first) → `[T, Q, H]`; every frame
    /// is one batch row of the Q-Former.
    pub fn forward(&self, vision_features: &Tensor) -> Result<Tensor> {
        if vision_features.rank() != 3 {
            bail!(
                "image Q-Former expects vision features [T, N, W], got {:?}",
                vision_features.dims()
            );
        }
        self.qformer.forward(&self.query_tokens, vision_features)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn bert() -> QFormerConfig {
        QFormerConfig {
            hidden_size: 8,
            num_attention_heads: 2,
            intermediate_size: 12,
            num_hidden_layers: 3,
            ..QFormerConfig::default()
        }
    }

    #[test]
    fn config_from_bert_json() {
        let j = serde_json::json!({
            "hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64,
            "num_hidden_layers": 2, "layer_norm_eps": 1e-12, "hidden_act": "gelu",
            "vocab_size": 64, "position_embedding_type": "absolute"
        });
        let b = QFormerConfig::from_bert_json(&j).unwrap();
        assert_eq!((b.hidden_size, b.num_attention_heads), (32, 4));
        assert_eq!(b.hidden_act, Activation::Gelu);
        let img = QFormerConfig::image(&b, 48, 8);
        assert_eq!(
            (
                img.encoder_width,
                img.cross_attention_freq,
                img.query_length
            ),
            (48, 2, 8)
        );
        assert_eq!(img.num_hidden_layers, 2);
        assert!(img.has_cross_attention(0) && !img.has_cross_attention(1));
        let vid = QFormerConfig::video(&b, 32, 32, 2);
        assert!(vid.has_cross_attention(0) && vid.has_cross_attention(1));
        // BERT-base defaults.
        let base = QFormerConfig::from_bert_json(&serde_json::json!({})).unwrap();
        assert_eq!(base, QFormerConfig::default());
        assert_eq!(
            QFormerConfig::image(&base, 1408, 32).param_count(),
            105_137_664
        );
        assert!(QFormerConfig::from_bert_json(&serde_json::json!({"hidden_act": "nope"})).is_err());
    }

    #[test]
    fn validate_rejects_bad_configs() {
        let mut c = QFormerConfig::video(&bert(), 8, 4, 2);
        c.validate().unwrap();
        c.num_attention_heads = 3;
        assert!(c.validate().unwrap_err().to_string().contains("multiple"));
        let mut c = QFormerConfig::video(&bert(), 8, 4, 2);
        c.cross_attention_freq = 0;
        assert!(c.validate().is_err());
        let c = bert();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("encoder_width"));
    }

    /// Every tensor `QFormer::new` reads is counted by `param_count`, for both layouts.
    #[test]
    fn param_count_matches_loaded_tensors() -> Result<()> {
        for cfg in [
            QFormerConfig::image(&bert(), 6, 4),
            QFormerConfig::video(&bert(), 5, 4, 2),
        ] {
            let vm = candle_nn::VarMap::new();
            let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
            QFormer::new(&cfg, vb)?;
            let n: usize = vm.all_vars().iter().map(|v| v.elem_count()).sum();
            assert_eq!(n as u64, cfg.param_count());
        }
        Ok(())
    }

    #[test]
    fn forward_shapes_and_errors() -> Result<()> {
        let cfg = QFormerConfig::image(&bert(), 6, 4);
        let vm = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let qf = QFormer::new(&cfg, vb)?;
        let q = Tensor::randn(0f32, 1.0, (4, 8), &Device::Cpu)?;
        let enc = Tensor::randn(0f32, 1.0, (3, 7, 6), &Device::Cpu)?;
        let y = qf.forward(&q, &enc)?;
        assert_eq!(y.dims(), &[3, 4, 8]);
        // Batch rows are independent: row 1 alone gives the same result.
        let y1 = qf.forward(&q.unsqueeze(0)?, &enc.narrow(0, 1, 1)?)?;
        let d = (y.narrow(0, 1, 1)? - y1)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(d < 1e-6, "{d}");
        let bad = Tensor::zeros((3, 7, 5), DType::F32, &Device::Cpu)?;
        let e = qf.forward(&q, &bad).unwrap_err().to_string();
        assert!(e.contains("encoder_width 6"), "{e}");
        let e = qf
            .forward(&Tensor::zeros((4, 7), DType::F32, &Device::Cpu)?, &enc)
            .unwrap_err()
            .to_string();
        assert!(e.contains("query_tokens"), "{e}");
        Ok(())
    }
}
