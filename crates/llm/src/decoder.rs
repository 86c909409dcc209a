//! One decoder-only transformer for Mistral, Qwen2 and Mixtral.
//!
//! The three HF architectures differ only in details that the config carries: q/k/v bias
//! (Qwen2), a sparse MoE instead of the dense MLP (Mixtral), and the numbers. Each block is
//! pre-norm: `h = x + attn(rms(x)); out = h + ffn(rms(h))`, attention is grouped-query with
//! RoPE applied to q and k before they enter the KV cache.
//!
//! The model is immutable (`Send + Sync`, shareable behind an `Arc`); everything that changes
//! while a request is decoded lives in a [`KvCache`] owned by the caller.
//!
//! Training (crate `videollama-train`): [`DecoderLm::forward_train`] runs the whole sequence
//! without a cache and returns the logits of chosen rows; when its input tracks a `Var`
//! every op takes its differentiable form ([`videollama_nn::autograd`]: composed RMSNorm,
//! RoPE and attention). LoRA adapters attach to the q/k/v/o and gate/up/down projections by
//! name ([`DecoderLm::attach_lora`]) and fold into the weights with [`DecoderLm::merge_lora`].

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;
use videollama_nn::attention::{attention, AttentionMask};
use videollama_nn::autograd::{is_differentiable, rms_norm as norm_forward};
use videollama_nn::{
    forward_many, linear_b, linear_no_bias, quantize_in_scope, rms_norm, Linear, RmsNorm,
};

use crate::config::DecoderConfig;
use crate::moe::{FeedForward, SparseMoe, SwiGlu};
use crate::rope::RotaryEmbedding;

/// Keys (after RoPE) and values of one layer, in buffers with room to grow:
/// `[1, num_key_value_heads, capacity, head_dim]`, of which the first `len` positions hold data.
#[derive(Debug)]
struct LayerKv {
    k: Tensor,
    v: Tensor,
}

/// Per-request attention state: for every layer the keys (after RoPE) and values of all
/// positions seen so far.
///
/// The buffers are preallocated ([`KvCache::reserve`]) and written in place, so a decoding
/// step costs one row write per layer instead of re-concatenating the whole cache. When a
/// forward needs more room the buffers grow geometrically (amortised O(1) per token).
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<Option<LayerKv>>,
    len: usize,
    /// Positions the next allocation makes room for (at least).
    reserved: usize,
}

/// Capacity granularity of the cache buffers (positions).
const KV_CHUNK: usize = 256;

impl Clone for KvCache {
    /// A deep copy: the buffers are written in place, so clones must not share them.
    fn clone(&self) -> Self {
        let layers = self
            .layers
            .iter()
            .map(|l| {
                l.as_ref().map(|l| LayerKv {
                    k: l.k.copy().expect("copying a KV buffer"),
                    v: l.v.copy().expect("copying a KV buffer"),
                })
            })
            .collect();
        Self {
            layers,
            len: self.len,
            reserved: self.reserved,
        }
    }
}

impl KvCache {
    fn new(num_layers: usize) -> Self {
        Self {
            layers: (0..num_layers).map(|_| None).collect(),
            len: 0,
            reserved: 0,
        }
    }

    /// Number of positions already processed; the next token gets this position id.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Make the next allocation hold at least `positions` positions (prompt + new tokens),
    /// so a whole request runs without reallocating.
    pub fn reserve(&mut self, positions: usize) {
        self.reserved = self.reserved.max(positions);
    }

    /// Forget everything so the cache can serve a new request (buffers are kept).
    pub fn reset(&mut self) {
        self.len = 0;
    }

    /// Keep only the first `len` positions (e.g. to drop a generated answer that will be
    /// re-fed, or to return to a shared prefix).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Positions the buffers can hold without growing.
    pub fn capacity(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(|l| l.k.dim(2).unwrap_or(0))
            .next()
            .unwrap_or(0)
    }

    /// Bytes held by the buffers.
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(|l| 2 * l.k.elem_count() * l.k.dtype().size_in_bytes())
            .sum()
    }

    /// The cached `(keys, values)` of one layer, `[1, Hkv, len, D]` views (`None` before the
    /// first forward).
    pub fn layer(&self, i: usize) -> Option<(Tensor, Tensor)> {
        let l = self.layers.get(i)?.as_ref()?;
        Some((
            l.k.narrow(2, 0, self.len).ok()?,
            l.v.narrow(2, 0, self.len).ok()?,
        ))
    }

    /// Write `k`/`v` (`[1, Hkv, n, D]`) of layer `i` at positions `offset..offset+n` and
    /// return views of positions `0..offset+n`.
    fn append(
        &mut self,
        i: usize,
        offset: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (b, h, n, d) = k.dims4()?;
        let needed = offset + n;
        let slot = &mut self.layers[i];
        let cap = slot.as_ref().map(|l| l.k.dim(2)).transpose()?.unwrap_or(0);
        if needed > cap {
            let new_cap = needed.max(self.reserved).max(cap * 2).div_ceil(KV_CHUNK) * KV_CHUNK;
            let kb = Tensor::zeros((b, h, new_cap, d), k.dtype(), k.device())?;
            let vb = Tensor::zeros((b, h, new_cap, d), v.dtype(), v.device())?;
            if let Some(old) = slot.as_ref() {
                if offset > 0 {
                    kb.slice_set(&old.k.narrow(2, 0, offset)?.contiguous()?, 2, 0)?;
                    vb.slice_set(&old.v.narrow(2, 0, offset)?.contiguous()?, 2, 0)?;
                }
            }
            *slot = Some(LayerKv { k: kb, v: vb });
        }
        let l = slot.as_ref().expect("allocated above");
        l.k.slice_set(&k.contiguous()?, 2, offset)?;
        l.v.slice_set(&v.contiguous()?, 2, offset)?;
        Ok((l.k.narrow(2, 0, needed)?, l.v.narrow(2, 0, needed)?))
    }
}

#[derive(Debug, Clone)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(cfg: &DecoderConfig, vb: VarBuilder) -> Result<Self> {
        let (h, q, kv) = (cfg.hidden_size, cfg.q_dim(), cfg.kv_dim());
        if cfg.num_key_value_heads == 0 || cfg.num_attention_heads % cfg.num_key_value_heads != 0 {
            candle_core::bail!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                cfg.num_attention_heads,
                cfg.num_key_value_heads
            )
        }
        Ok(Self {
            q_proj: linear_b(h, q, cfg.attention_bias, vb.pp("q_proj"))?,
            k_proj: linear_b(h, kv, cfg.attention_bias, vb.pp("k_proj"))?,
            v_proj: linear_b(h, kv, cfg.attention_bias, vb.pp("v_proj"))?,
            // o_proj has no bias in any of the three architectures (Qwen2 included).
            o_proj: linear_no_bias(q, h, vb.pp("o_proj"))?,
            n_heads: cfg.num_attention_heads,
            n_kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
        })
    }

    /// `xs`: `[1, L, H]` at positions `offset..offset+L`; the new keys/values are written
    /// into layer `index` of `cache` and attention reads the cached positions plus them.
    /// Without a cache (training) `offset` must be 0 and attention reads these L positions.
    fn forward(
        &self,
        xs: &Tensor,
        rope: &RotaryEmbedding,
        offset: usize,
        tables: Option<&(Tensor, Tensor)>,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Result<Tensor> {
        let (b, l, _) = xs.dims3()?;
        let heads = |t: Tensor, n: usize| t.reshape((b, l, n, self.head_dim))?.transpose(1, 2);
        let mut qkv = forward_many(&[&self.q_proj, &self.k_proj, &self.v_proj], xs)?.into_iter();
        let (q, k, v) = (
            qkv.next().unwrap(),
            qkv.next().unwrap(),
            qkv.next().unwrap(),
        );
        let q = apply_rope(rope, &heads(q, self.n_heads)?, offset, tables)?;
        let k = apply_rope(rope, &heads(k, self.n_kv_heads)?, offset, tables)?;
        let v = heads(v, self.n_kv_heads)?;
        let (k, v) = match cache {
            Some((cache, index)) => cache.append(index, offset, &k, &v)?,
            None => (k, v),
        };
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let y = attention(&q, &k, &v, scale, AttentionMask::Causal { offset })?;
        let y = y
            .transpose(1, 2)?
            .reshape((b, l, self.n_heads * self.head_dim))?;
        self.o_proj.forward(&y)
    }
}

/// RoPE: candle's fused kernel for inference; the composed `rotate_half` form (ops with a
/// backward, same tables) when gradients must flow. `tables`: explicit `(cos, sin)` rows
/// (M-RoPE, see [`RopePositions`]) instead of the positions `offset..`.
fn apply_rope(
    rope: &RotaryEmbedding,
    xs: &Tensor,
    offset: usize,
    tables: Option<&(Tensor, Tensor)>,
) -> Result<Tensor> {
    if let Some((cos, sin)) = tables {
        return if is_differentiable(xs) {
            candle_nn::rotary_emb::rope_slow(xs, cos, sin)
        } else {
            candle_nn::rotary_emb::rope(&xs.contiguous()?, cos, sin)
        };
    }
    if is_differentiable(xs) {
        let (cos, sin) = rope.tables(offset, xs.dim(2)?, xs.dtype())?;
        candle_nn::rotary_emb::rope_slow(xs, &cos, &sin)
    } else {
        rope.apply(xs, offset)
    }
}

/// The LoRA target names (HF module names) [`DecoderLm::attach_lora`] accepts.
pub const LORA_TARGETS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

#[derive(Debug, Clone)]
struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    ffn: FeedForward,
}

impl DecoderLayer {
    fn new(cfg: &DecoderConfig, vb: VarBuilder) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let ffn = match cfg.num_local_experts {
            Some(e) if e > 0 => FeedForward::Moe(SparseMoe::new(
                h,
                i,
                e,
                cfg.num_experts_per_tok,
                cfg.hidden_act,
                vb.pp("block_sparse_moe"),
            )?),
            _ => FeedForward::Dense(SwiGlu::new(
                h,
                i,
                cfg.hidden_act,
                ("gate_proj", "up_proj", "down_proj"),
                vb.pp("mlp"),
            )?),
        };
        Ok(Self {
            input_layernorm: rms_norm(h, cfg.rms_norm_eps, vb.pp("input_layernorm"))?,
            self_attn: Attention::new(cfg, vb.pp("self_attn"))?,
            post_attention_layernorm: rms_norm(
                h,
                cfg.rms_norm_eps,
                vb.pp("post_attention_layernorm"),
            )?,
            ffn,
        })
    }

    fn forward(
        &self,
        xs: &Tensor,
        rope: &RotaryEmbedding,
        offset: usize,
        tables: Option<&(Tensor, Tensor)>,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Result<Tensor> {
        let a = self.self_attn.forward(
            &norm_forward(&self.input_layernorm, xs)?,
            rope,
            offset,
            tables,
            cache,
        )?;
        let h = (xs + a)?;
        let f = self
            .ffn
            .forward(&norm_forward(&self.post_attention_layernorm, &h)?)?;
        h + f
    }

    /// The projections by HF name (`self_attn.q_proj`, …, `mlp.down_proj`; no MLP entries
    /// for a sparse-MoE layer).
    fn linears_mut(&mut self) -> Vec<(&'static str, &mut Linear)> {
        let a = &mut self.self_attn;
        let mut out: Vec<(&'static str, &mut Linear)> = vec![
            ("self_attn.q_proj", &mut a.q_proj),
            ("self_attn.k_proj", &mut a.k_proj),
            ("self_attn.v_proj", &mut a.v_proj),
            ("self_attn.o_proj", &mut a.o_proj),
        ];
        if let FeedForward::Dense(m) = &mut self.ffn {
            let [g, u, d] = m.linears_mut();
            out.extend([
                ("mlp.gate_proj", g),
                ("mlp.up_proj", u),
                ("mlp.down_proj", d),
            ]);
        }
        out
    }

    fn linears(&self) -> Vec<(&'static str, &Linear)> {
        let a = &self.self_attn;
        let mut out: Vec<(&'static str, &Linear)> = vec![
            ("self_attn.q_proj", &a.q_proj),
            ("self_attn.k_proj", &a.k_proj),
            ("self_attn.v_proj", &a.v_proj),
            ("self_attn.o_proj", &a.o_proj),
        ];
        if let FeedForward::Dense(m) = &self.ffn {
            let [g, u, d] = m.linears();
            out.extend([
                ("mlp.gate_proj", g),
                ("mlp.up_proj", u),
                ("mlp.down_proj", d),
            ]);
        }
        out
    }
}

/// Rotary positions of the rows of one forward.
#[derive(Debug, Clone, PartialEq)]
pub enum RopePositions {
    /// The cache positions `cache.len()..cache.len()+L` (every 1-D model).
    Sequential,
    /// `cache.len() + delta ..` on every axis: M-RoPE decoding, where HF uses
    /// `cache_position + rope_deltas` (equal rows reduce M-RoPE to 1-D RoPE).
    Shifted(i64),
    /// M-RoPE ids `[temporal, height, width][L]` (Qwen2-VL prefill, `get_rope_index`); needs
    /// `mrope_section` in the config.
    Multi([Vec<i64>; 3]),
}

/// Decoder-only causal LM (Mistral / Qwen2 / Mixtral) with its embedding table and `lm_head`.
#[derive(Debug, Clone)]
pub struct DecoderLm {
    cfg: DecoderConfig,
    /// `[V, H]`; also the `lm_head` weight when `tie_word_embeddings`.
    embed_tokens: Tensor,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    rope: RotaryEmbedding,
    dtype: DType,
    device: Device,
}

impl DecoderLm {
    /// Load from the checkpoint's ROOT `VarBuilder` (`model.*` and `lm_head.*` are looked up
    /// here). Weights are converted to the VarBuilder's dtype, which is the compute dtype.
    pub fn new(cfg: &DecoderConfig, vb: VarBuilder) -> Result<Self> {
        let (dtype, device) = (vb.dtype(), vb.device().clone());
        let m = vb.pp("model");
        let embed_tokens = m
            .pp("embed_tokens")
            .get((cfg.vocab_size, cfg.hidden_size), "weight")?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::new(cfg, m.pp("layers").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let norm = rms_norm(cfg.hidden_size, cfg.rms_norm_eps, m.pp("norm"))?;
        let lm_head = if cfg.tie_word_embeddings {
            quantize_in_scope(Linear::new(embed_tokens.clone(), None))?
        } else {
            linear_no_bias(cfg.hidden_size, cfg.vocab_size, vb.pp("lm_head"))?
        };
        let rope = RotaryEmbedding::new(cfg.head_dim, cfg.rope_theta, &device)?;
        if let Some(sections) = &cfg.mrope_section {
            if sections.len() != 3 || sections.iter().sum::<usize>() != cfg.head_dim / 2 {
                candle_core::bail!(
                    "rope_scaling.mrope_section {sections:?} must have 3 entries summing to \
                     head_dim / 2 = {}",
                    cfg.head_dim / 2
                )
            }
        }
        Ok(Self {
            cfg: cfg.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope,
            dtype,
            device,
        })
    }

    pub fn config(&self) -> &DecoderConfig {
        &self.cfg
    }

    /// Compute dtype (the dtype the weights were loaded in).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The trained context length (`max_position_embeddings`); not enforced by the forward.
    pub fn max_context(&self) -> usize {
        self.cfg.max_position_embeddings
    }

    pub fn hidden_size(&self) -> usize {
        self.cfg.hidden_size
    }

    pub fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }

    /// A fresh, empty KV cache for one request.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.layers.len())
    }

    /// Token embeddings: ids `[L]` (u32 or i64) → `[L, H]`, or `[B, L]` → `[B, L, H]`, in the
    /// model dtype. Used both for the text pieces of the spliced prompt and for each new token.
    pub fn embed_tokens(&self, ids: &Tensor) -> Result<Tensor> {
        match ids.rank() {
            1 => self.embed_tokens.index_select(ids, 0),
            2 => {
                let (b, l) = ids.dims2()?;
                self.embed_tokens
                    .index_select(&ids.flatten_all()?, 0)?
                    .reshape((b, l, self.cfg.hidden_size))
            }
            r => candle_core::bail!("embed_tokens expects ids of rank 1 or 2, got rank {r}"),
        }
    }

    /// Run `embeds` (`[1, L, H]`, or `[L, H]`) as the positions `cache.len()..cache.len()+L`
    /// and return the logits of the last one as `[V]` f32.
    ///
    /// The prompt (already spliced with the visual tokens) is one call; each decoding step is
    /// another call with the new token's embedding. The cache is only updated when the whole
    /// forward succeeded. Embeddings of another dtype are cast to the model dtype.
    pub fn forward_embeds(&self, embeds: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        self.forward_embeds_at(embeds, cache, &RopePositions::Sequential)
    }

    /// [`Self::forward_embeds`] with explicit rotary positions (Qwen2-VL M-RoPE); the KV
    /// cache and the causal mask still use the cache positions.
    pub fn forward_embeds_at(
        &self,
        embeds: &Tensor,
        cache: &mut KvCache,
        positions: &RopePositions,
    ) -> Result<Tensor> {
        let embeds = match embeds.rank() {
            2 => embeds.unsqueeze(0)?,
            3 => embeds.clone(),
            r => candle_core::bail!("forward_embeds expects [1, L, H] or [L, H], got rank {r}"),
        };
        let (b, l, h) = embeds.dims3()?;
        if b != 1 || l == 0 || h != self.cfg.hidden_size {
            candle_core::bail!(
                "forward_embeds expects [1, L>0, {}], got {:?}",
                self.cfg.hidden_size,
                embeds.shape()
            )
        }
        if cache.layers.len() != self.layers.len() {
            candle_core::bail!(
                "KV cache has {} layers, model has {}",
                cache.layers.len(),
                self.layers.len()
            )
        }
        let offset = cache.len;
        let tables = self.rope_tables(positions, offset, l)?;
        let mut xs = embeds.to_dtype(self.dtype)?;
        // New keys/values are written past `cache.len`, which only moves once every layer
        // succeeded: a failed forward leaves the cache as it was.
        for (index, layer) in self.layers.iter().enumerate() {
            xs = layer.forward(
                &xs,
                &self.rope,
                offset,
                tables.as_ref(),
                Some((&mut *cache, index)),
            )?;
        }
        // Only the last position's logits are ever needed (norm + lm_head on one row).
        let last = xs.narrow(1, l - 1, 1)?.contiguous()?;
        let logits = self.lm_head.forward(&self.norm.forward(&last)?)?;
        let logits = logits.flatten_all()?.to_dtype(DType::F32)?;
        cache.len = offset + l;
        Ok(logits)
    }

    /// [`Self::forward_embeds`] for plain token ids (text-only prompts, decoding steps).
    pub fn forward_tokens(&self, ids: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        self.forward_tokens_at(ids, cache, &RopePositions::Sequential)
    }

    /// [`Self::forward_tokens`] with explicit rotary positions.
    pub fn forward_tokens_at(
        &self,
        ids: &[u32],
        cache: &mut KvCache,
        positions: &RopePositions,
    ) -> Result<Tensor> {
        let ids = Tensor::new(ids, &self.device)?;
        self.forward_embeds_at(&self.embed_tokens(&ids)?.unsqueeze(0)?, cache, positions)
    }

    /// `(cos, sin)` for `len` rows at cache offset `offset`; `None` keeps the 1-D path.
    fn rope_tables(
        &self,
        positions: &RopePositions,
        offset: usize,
        len: usize,
    ) -> Result<Option<(Tensor, Tensor)>> {
        match positions {
            RopePositions::Sequential => Ok(None),
            RopePositions::Shifted(delta) => {
                let start = offset as i64 + delta;
                if start < 0 {
                    candle_core::bail!(
                        "rotary position {start} (cache {offset} + delta {delta}) is negative"
                    )
                }
                self.rope.tables(start as usize, len, self.dtype).map(Some)
            }
            RopePositions::Multi(rows) => {
                let sections = self.cfg.mrope_section.as_deref().ok_or_else(|| {
                    candle_core::Error::msg(
                        "3-row position ids need rope_scaling.mrope_section in config.json",
                    )
                })?;
                if rows.iter().any(|r| r.len() != len) {
                    candle_core::bail!(
                        "M-RoPE position ids have {} columns for {len} positions",
                        rows[0].len()
                    )
                }
                self.rope.mrope_tables(rows, sections, self.dtype).map(Some)
            }
        }
    }

    /// Training forward: `embeds` (`[L, H]` or `[1, L, H]`) as positions `0..L` with no KV
    /// cache, and the logits `[P, V]` (model dtype) of the positions `rows` (all L when
    /// `None`); row `p` predicts the token at position `p + 1`. Gradients flow back to
    /// `embeds` and to any LoRA `Var`s (see the module docs).
    pub fn forward_train(&self, embeds: &Tensor, rows: Option<&[u32]>) -> Result<Tensor> {
        let embeds = match embeds.rank() {
            2 => embeds.unsqueeze(0)?,
            3 => embeds.clone(),
            r => candle_core::bail!("forward_train expects [1, L, H] or [L, H], got rank {r}"),
        };
        let (b, l, h) = embeds.dims3()?;
        if b != 1 || l == 0 || h != self.cfg.hidden_size {
            candle_core::bail!(
                "forward_train expects [1, L>0, {}], got {:?}",
                self.cfg.hidden_size,
                embeds.shape()
            )
        }
        let mut xs = embeds.to_dtype(self.dtype)?;
        for layer in &self.layers {
            xs = layer.forward(&xs, &self.rope, 0, None, None)?;
        }
        let xs = xs.squeeze(0)?;
        let xs = match rows {
            Some(rows) => {
                if let Some(&bad) = rows.iter().find(|&&r| r as usize >= l) {
                    candle_core::bail!("forward_train: row {bad} is outside the {l} positions");
                }
                xs.index_select(&Tensor::new(rows, &self.device)?, 0)?
            }
            None => xs,
        };
        self.lm_head.forward(&norm_forward(&self.norm, &xs)?)
    }

    /// Attach a LoRA adapter (`scale = alpha / r`) to every projection whose HF module name
    /// (`q_proj`, …, see [`LORA_TARGETS`]) is in `targets`, in every layer. The factors
    /// are read from `vb` (the model root: `model.layers.{i}.self_attn.q_proj.lora_A.weight`
    /// `[r, in]` and `….lora_B.weight` `[out, r]`); a `VarMap`-backed builder creates the
    /// missing ones with peft's initialisation (A Kaiming-uniform, bound `1/√in`; B zero), so
    /// they train. Returns the adapted modules' names (`model.layers.0.self_attn.q_proj`, …).
    /// MLP targets are refused for sparse-MoE layers.
    pub fn attach_lora(
        &mut self,
        targets: &[String],
        r: usize,
        alpha: f64,
        vb: VarBuilder,
    ) -> Result<Vec<String>> {
        if r == 0 {
            candle_core::bail!("LoRA rank r must be at least 1");
        }
        for t in targets {
            if !LORA_TARGETS.contains(&t.as_str()) {
                candle_core::bail!(
                    "unknown LoRA target {t:?}; the projections are {}",
                    LORA_TARGETS.join(", ")
                );
            }
        }
        let moe = matches!(self.cfg.num_local_experts, Some(e) if e > 0);
        let mlp = |t: &String| ["gate_proj", "up_proj", "down_proj"].contains(&t.as_str());
        if moe && targets.iter().any(mlp) {
            candle_core::bail!(
                "LoRA on the experts of a sparse-MoE model is not supported (targets {targets:?})"
            );
        }
        let scale = alpha / r as f64;
        let mut names = Vec::new();
        for (i, layer) in self.layers.iter_mut().enumerate() {
            for (name, linear) in layer.linears_mut() {
                let short = name.rsplit('.').next().unwrap_or(name);
                if !targets.iter().any(|t| t == short) {
                    continue;
                }
                let full = format!("model.layers.{i}.{name}");
                let lvb = vb.pp(&full);
                let (out, inp) = (linear.out_dim(), linear.in_dim());
                let bound = 1.0 / (inp as f64).sqrt();
                let a = lvb.pp("lora_A").get_with_hints(
                    (r, inp),
                    "weight",
                    candle_nn::Init::Uniform {
                        lo: -bound,
                        up: bound,
                    },
                )?;
                let b = lvb.pp("lora_B").get_with_hints(
                    (out, r),
                    "weight",
                    candle_nn::Init::Const(0.0),
                )?;
                *linear = linear.clone().with_lora(a, b, scale)?;
                names.push(full);
            }
        }
        Ok(names)
    }

    /// Every projection of every layer with its module name (`model.layers.{i}.self_attn.q_proj`,
    /// …): to export adapters or merged weights.
    pub fn linears(&self) -> Vec<(String, &Linear)> {
        self.layers
            .iter()
            .enumerate()
            .flat_map(|(i, layer)| {
                layer
                    .linears()
                    .into_iter()
                    .map(move |(name, l)| (format!("model.layers.{i}.{name}"), l))
            })
            .collect()
    }

    /// Fold every LoRA adapter into its weight (`W + scale·B·A`, [`videollama_nn::lora::merge`]),
    /// leaving dense layers without adapters.
    pub fn merge_lora(&mut self) -> Result<()> {
        for layer in &mut self.layers {
            for (_, linear) in layer.linears_mut() {
                if linear.lora().is_some() {
                    *linear = linear.merged()?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn model_and_cache_are_shareable() {
        assert_send_sync::<DecoderLm>();
        assert_send_sync::<KvCache>();
    }

    /// A tiny random model; `moe` switches the FFN to 4 experts / top-2, `bias` adds q/k/v bias.
    pub(crate) fn tiny(moe: bool, bias: bool, tie: bool, dtype: DType) -> Result<DecoderLm> {
        let cfg = DecoderConfig::from_json_str(&format!(
            r#"{{"vocab_size": 50, "hidden_size": 16, "intermediate_size": 24,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 128,
                "tie_word_embeddings": {tie}, "attention_bias": {bias}
                {}}}"#,
            if moe {
                r#", "num_local_experts": 4, "num_experts_per_tok": 2"#
            } else {
                ""
            }
        ))?;
        let mut seed = 7u64;
        let mut rnd = |shape: &[usize], scale: f32| {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (((seed >> 33) as f64 / (1u64 << 31) as f64) as f32 * 2.0 - 1.0) * scale
                })
                .collect();
            Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
        };
        let (h, i, v, q, kv) = (16, 24, 50, cfg.q_dim(), cfg.kv_dim());
        let mut ts = HashMap::new();
        ts.insert("model.embed_tokens.weight".into(), rnd(&[v, h], 1.0));
        ts.insert("model.norm.weight".into(), (rnd(&[h], 0.1) + 1.0).unwrap());
        if !tie {
            ts.insert("lm_head.weight".into(), rnd(&[v, h], 0.5));
        }
        for l in 0..2 {
            let p = format!("model.layers.{l}");
            ts.insert(
                format!("{p}.input_layernorm.weight"),
                (rnd(&[h], 0.1) + 1.0).unwrap(),
            );
            ts.insert(
                format!("{p}.post_attention_layernorm.weight"),
                (rnd(&[h], 0.1) + 1.0).unwrap(),
            );
            for (n, o) in [("q", q), ("k", kv), ("v", kv)] {
                ts.insert(format!("{p}.self_attn.{n}_proj.weight"), rnd(&[o, h], 0.4));
                if bias {
                    ts.insert(format!("{p}.self_attn.{n}_proj.bias"), rnd(&[o], 0.2));
                }
            }
            ts.insert(format!("{p}.self_attn.o_proj.weight"), rnd(&[h, q], 0.4));
            if moe {
                ts.insert(
                    format!("{p}.block_sparse_moe.gate.weight"),
                    rnd(&[4, h], 0.8),
                );
                for e in 0..4 {
                    let pe = format!("{p}.block_sparse_moe.experts.{e}");
                    ts.insert(format!("{pe}.w1.weight"), rnd(&[i, h], 0.4));
                    ts.insert(format!("{pe}.w3.weight"), rnd(&[i, h], 0.4));
                    ts.insert(format!("{pe}.w2.weight"), rnd(&[h, i], 0.4));
                }
            } else {
                ts.insert(format!("{p}.mlp.gate_proj.weight"), rnd(&[i, h], 0.4));
                ts.insert(format!("{p}.mlp.up_proj.weight"), rnd(&[i, h], 0.4));
                ts.insert(format!("{p}.mlp.down_proj.weight"), rnd(&[h, i], 0.4));
            }
        }
        DecoderLm::new(&cfg, VarBuilder::from_tensors(ts, dtype, &Device::Cpu))
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Prefill in one call, in chunks, and one token at a time must agree on the last logits.
    #[test]
    fn mrope_positions_with_equal_rows_are_1d_rope() -> Result<()> {
        let mut m = tiny(false, true, false, DType::F32)?;
        m.cfg.mrope_section = Some(vec![1, 0, 1]);
        let ids: Vec<u32> = vec![3, 17, 42, 8, 8, 1, 29, 49, 0];
        let n = ids.len() as i64;
        let run = |p: &RopePositions| -> Result<Tensor> {
            let mut c = m.new_cache();
            m.forward_tokens_at(&ids, &mut c, p)
        };
        let seq = run(&RopePositions::Sequential)?;
        let row: Vec<i64> = (0..n).collect();
        let multi = run(&RopePositions::Multi([row.clone(), row.clone(), row]))?;
        assert_eq!(max_diff(&seq, &multi), 0.0);
        let shifted: Vec<i64> = (3..n + 3).collect();
        let a = run(&RopePositions::Shifted(3))?;
        let b = run(&RopePositions::Multi([
            shifted.clone(),
            shifted.clone(),
            shifted.clone(),
        ]))?;
        assert_eq!(max_diff(&a, &b), 0.0);
        assert!(max_diff(&a, &seq) > 0.0);
        // A distinct width row changes the result; wrong lengths are errors.
        let other: Vec<i64> = (0..n).map(|i| i / 2).collect();
        // (section [1, 0, 1]: frequency 0 follows the temporal row, 1 the width row)
        let c = run(&RopePositions::Multi([
            shifted.clone(),
            shifted.clone(),
            other,
        ]))?;
        assert!(max_diff(&c, &b) > 0.0);
        assert!(run(&RopePositions::Multi([vec![0], vec![0], vec![0]])).is_err());
        assert!(run(&RopePositions::Shifted(-20)).is_err());
        Ok(())
    }

    #[test]
    fn kv_cache_prefill_equals_incremental() -> Result<()> {
        for (moe, bias, tie) in [
            (false, false, false),
            (false, true, true),
            (true, false, false),
        ] {
            let m = tiny(moe, bias, tie, DType::F32)?;
            let ids: Vec<u32> = vec![3, 17, 42, 8, 8, 1, 29, 49, 0];
            let mut c_all = m.new_cache();
            let all = m.forward_tokens(&ids, &mut c_all)?;
            let mut c_one = m.new_cache();
            let mut one = None;
            for id in &ids {
                one = Some(m.forward_tokens(&[*id], &mut c_one)?);
            }
            let mut c_chunk = m.new_cache();
            m.forward_tokens(&ids[..4], &mut c_chunk)?;
            let chunk = m.forward_tokens(&ids[4..], &mut c_chunk)?;
            assert_eq!(c_all.len(), ids.len());
            assert_eq!(c_one.len(), ids.len());
            assert_eq!(all.dims(), &[50]);
            let d1 = max_diff(&all, &one.unwrap());
            let d2 = max_diff(&all, &chunk);
            assert!(d1 < 1e-5 && d2 < 1e-5, "moe={moe} bias={bias}: {d1} {d2}");
            assert_eq!(c_all.layer(0).unwrap().0.dims(), &[1, 2, ids.len(), 4]);
            assert_eq!(c_all.capacity() % KV_CHUNK, 0);
        }
        Ok(())
    }

    /// f16/bf16 compute runs end to end and stays close to f32 on a tiny model.
    #[test]
    fn half_precision_forward_is_close_to_f32() -> Result<()> {
        let ids = [5u32, 9, 12, 33];
        let m32 = tiny(true, true, false, DType::F32)?;
        let ref_logits = m32.forward_tokens(&ids, &mut m32.new_cache())?;
        for dt in [DType::F16, DType::BF16] {
            let m = tiny(true, true, false, dt)?;
            assert_eq!(m.dtype(), dt);
            let mut c = m.new_cache();
            m.forward_tokens(&ids[..3], &mut c)?;
            let l = m.forward_tokens(&ids[3..], &mut c)?;
            assert_eq!(l.dtype(), DType::F32);
            let d = max_diff(&l, &ref_logits);
            let tol = if dt == DType::F16 { 0.05 } else { 0.2 };
            assert!(d < tol, "{dt:?}: {d}");
        }
        Ok(())
    }

    /// The training forward (no cache, differentiable ops when a Var is involved) gives the
    /// logits of the inference forward at every row; LoRA adapters with B = 0 change
    /// nothing, merging equals the adapter path, and gradients reach A, B and the input.
    #[test]
    fn training_forward_and_lora() -> Result<()> {
        for (moe, bias) in [(false, true), (true, false)] {
            let mut m = tiny(moe, bias, false, DType::F32)?;
            let ids: Vec<u32> = vec![3, 17, 42, 8, 1, 29];
            let embeds = m.embed_tokens(&Tensor::new(ids.as_slice(), &Device::Cpu)?)?;
            let all = m.forward_train(&embeds, None)?;
            assert_eq!(all.dims(), &[6, 50]);
            for n in [1, 4, 6] {
                let want = m.forward_tokens(&ids[..n], &mut m.new_cache())?;
                let got = m.forward_train(&embeds.narrow(0, 0, n)?, Some(&[n as u32 - 1]))?;
                assert!(max_diff(&got.squeeze(0)?, &want) < 1e-5, "n={n}");
            }
            // Forced differentiable ops agree with the fused inference kernels.
            let forced = videollama_nn::autograd_scope(|| m.forward_train(&embeds, None))?;
            assert!(max_diff(&forced, &all) < 1e-5);

            let vm = candle_nn::VarMap::new();
            let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
            let targets: Vec<String> = if moe {
                vec!["q_proj".into(), "o_proj".into()]
            } else {
                LORA_TARGETS.iter().map(|t| t.to_string()).collect()
            };
            let names = m.attach_lora(&targets, 2, 4.0, vb)?;
            assert_eq!(names.len(), 2 * targets.len());
            assert_eq!(vm.all_vars().len(), 2 * names.len());
            let zero_b = m.forward_train(&embeds, None)?;
            // (The adapters are Vars, so the forward takes the differentiable ops: compare
            // with the forced run, exactly.)
            assert_eq!(
                max_diff(&zero_b, &forced),
                0.0,
                "B = 0 must not change the logits"
            );
            // Give B values, then compare the adapter path with the merged weights.
            for (name, var) in vm.data().lock().unwrap().iter() {
                if name.contains("lora_B") {
                    var.set(&Tensor::randn(0f32, 0.3, var.shape(), &Device::Cpu)?)?;
                }
            }
            let x = candle_core::Var::from_tensor(&embeds)?;
            let adapted = m.forward_train(x.as_tensor(), None)?;
            assert!(max_diff(&adapted, &all) > 1e-3);
            let grads = adapted.sqr()?.sum_all()?.backward()?;
            assert!(grads.get(x.as_tensor()).is_some());
            for var in vm.all_vars() {
                let g = grads
                    .get(var.as_tensor())
                    .expect("gradient for every factor");
                assert!(g.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0);
            }
            let mut merged = m.clone();
            merged.merge_lora()?;
            assert!(merged.linears().iter().all(|(_, l)| l.lora().is_none()));
            let d = max_diff(&merged.forward_train(&embeds, None)?, &adapted);
            assert!(d < 1e-4, "merged vs adapter: {d}");
            let mut cache = m.new_cache();
            let inference = m.forward_tokens(&ids, &mut cache)?;
            assert!(max_diff(&inference, &adapted.get(5)?) < 1e-4);
        }
        let mut m = tiny(true, false, false, DType::F32)?;
        let vb = VarBuilder::from_varmap(&candle_nn::VarMap::new(), DType::F32, &Device::Cpu);
        assert!(m
            .attach_lora(&["up_proj".into()], 2, 4.0, vb.clone())
            .is_err());
        assert!(m.attach_lora(&["qproj".into()], 2, 4.0, vb).is_err());
        Ok(())
    }

    #[test]
    fn cache_reset_and_shape_errors() -> Result<()> {
        let m = tiny(false, false, false, DType::F32)?;
        let mut c = m.new_cache();
        let a = m.forward_tokens(&[1, 2, 3], &mut c)?;
        c.reset();
        assert!(c.is_empty());
        let b = m.forward_tokens(&[1, 2, 3], &mut c)?;
        assert_eq!(max_diff(&a, &b), 0.0);
        let bad = Tensor::zeros((1, 2, 7), DType::F32, &Device::Cpu)?;
        assert!(m.forward_embeds(&bad, &mut c).is_err());
        assert_eq!(c.len(), 3, "a failed forward must not touch the cache");
        Ok(())
    }
}
