//! MA-LMM's instruction-aware InstructBLIP Q-Former with memory-bank self-attention
//! (boheumd/MA-LMM `lavis/models/blip2_models/blip2.py` `MBBertSelfAttention`,
//! `memory_bank_compress`; `Qformer.py` `BertEmbeddings` / `BertLayer`).
//!
//! One call processes one frame; the caller keeps the two kinds of history:
//!
//! ```text
//! queries [Q, H] ; instruction ids [Lt]
//!   → x = LN(cat(queries, word[ids] + pos[0..Lt]))                 [1, R = Q + Lt, H]
//!   → encoder.layer.l, l = 0..L:
//!       kv = cat(query bank l flattened [1, m·R, H], x)           (m ≤ memory_bank_length)
//!       a  = LN(x + Wo · SelfAttn(q = x, kv))                      attention.{self,output}
//!       query bank l ← push x (count 1); clear when its counts reach num_frames,
//!                      else compress while it holds more than memory_bank_length entries
//!       aq = a[:, :Q];  if l % cross_attention_freq == 0:
//!       aq = LN(aq + Wo · CrossAttn(aq, visual bank flattened [1, n·N, Cenc]))
//!       x  = cat(FFN_query(aq), FFN_text(a[:, Q:]))                (intermediate[_query], output[_query])
//!   → last_hidden_state [1, R, H]; rows 0..Q go to `llm_proj`
//! ```
//!
//! The visual bank itself (ViT features + frame position) is owned by the model
//! (`crates/pipeline/src/ma_lmm`), which flattens it into `encoder_hidden`.
//!
//! Masks: the reference tiles the text padding mask once per bank entry; a single request has no
//! padding (all-ones mask = additive zeros), so no mask is applied. Batch is always 1.

use crate::qformer::{load_query_tokens, BertAttention, QFormerConfig};
use candle_core::{bail, DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;
use videollama_nn::{layer_norm, linear, Activation, LayerNorm, Linear};

/// One memory bank: `entries [n, N, C]` and per-token merge counts `sizes [n, N]` (f32, as the
/// reference keeps them). Used for the visual bank (N = ViT tokens) and for every
/// query bank (N = Q + Lt rows).
#[derive(Debug, Clone, Default)]
pub struct MemoryBank {
    entries: Option<Tensor>,
    sizes: Option<Tensor>,
}

impl MemoryBank {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of entries n.
    pub fn len(&self) -> usize {
        self.entries
            .as_ref()
            .and_then(|e| e.dim(0).ok())
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `[n, N, C]`, `None` when empty.
    pub fn entries(&self) -> Option<&Tensor> {
        self.entries.as_ref()
    }

    /// `[n, N]` merge counts, `None` when empty.
    pub fn sizes(&self) -> Option<&Tensor> {
        self.sizes.as_ref()
    }

    /// Appends one entry `[N, C]` with count 1 (`torch.cat([bank, x[:, None]], dim=1)`).
    pub fn push(&mut self, x: &Tensor) -> Result<()> {
        let (n, _c) = x.dims2()?;
        let x = x.unsqueeze(0)?;
        let one = Tensor::ones((1, n), DType::F32, x.device())?;
        match (&self.entries, &self.sizes) {
            (Some(e), Some(s)) => {
                if e.dim(1)? != n || e.dim(2)? != x.dim(2)? {
                    bail!(
                        "memory bank: entry {:?} does not match the bank {:?}",
                        x.dims(),
                        e.dims()
                    );
                }
                self.entries = Some(Tensor::cat(&[e, &x], 0)?);
                self.sizes = Some(Tensor::cat(&[s, &one], 0)?);
            }
            _ => {
                self.entries = Some(x);
                self.sizes = Some(one);
            }
        }
        Ok(())
    }

    pub fn clear(&mut self) {
        self.entries = None;
        self.sizes = None;
    }

    /// The reference's reset test for a query bank: `compression_size.sum(1).mean().round()`,
    /// i.e. how many frames the bank has absorbed since it was last cleared.
    pub fn frames_absorbed(&self) -> Result<usize> {
        match &self.sizes {
            None => Ok(0),
            Some(s) => {
                let mean = s.sum(0)?.mean_all()?.to_scalar::<f32>()?;
                Ok(mean.round().max(0.0) as usize)
            }
        }
    }

    /// Merges the most similar adjacent pair, per token position (see [`memory_bank_compress`]).
    pub fn compress(&mut self) -> Result<()> {
        if let (Some(e), Some(s)) = (&self.entries, &self.sizes) {
            if e.dim(0)? >= 2 {
                let (e, s) = memory_bank_compress(e, s)?;
                self.entries = Some(e);
                self.sizes = Some(s);
            }
        }
        Ok(())
    }
}

/// `memory_bank_compress` for one batch row: `bank [n, N, C]`, `sizes [n, N]` →
/// `[n − 1, N, C]`, `[n − 1, N]`.
///
/// For every token position p separately: `s_k = cos(bank[k, p], bank[k + 1, p])`,
/// `k* = first argmax`; entry k* becomes the size-weighted mean of k* and k* + 1, entry k* + 1
/// is dropped at p only. As the reference, every kept entry is multiplied by its size and
/// divided again (`dst * size / size`), so unmerged values go through the same rounding.
/// Computed on the host in f32.
pub fn memory_bank_compress(bank: &Tensor, sizes: &Tensor) -> Result<(Tensor, Tensor)> {
    let (n, tokens, c) = bank.dims3()?;
    if sizes.dims() != [n, tokens] {
        bail!(
            "memory bank: sizes {:?} do not match the bank {:?}",
            sizes.dims(),
            bank.dims()
        );
    }
    if n < 2 {
        bail!("memory bank: cannot compress {n} entries");
    }
    let dtype = bank.dtype();
    let device = bank.device().clone();
    let b: Vec<f32> = bank.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let s: Vec<f32> = sizes.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let at = |k: usize, p: usize| (k * tokens + p) * c;
    let mut out_b = vec![0f32; (n - 1) * tokens * c];
    let mut out_s = vec![0f32; (n - 1) * tokens];
    for p in 0..tokens {
        // torch.cosine_similarity: each vector divided by max(‖v‖, eps) first, then the dot.
        let norm = |k: usize| {
            let v = &b[at(k, p)..at(k, p) + c];
            v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-8)
        };
        let mut best = 0usize;
        let mut best_sim = f32::NEG_INFINITY;
        for k in 0..n - 1 {
            let (na, nb) = (norm(k), norm(k + 1));
            let (va, vb) = (
                &b[at(k, p)..at(k, p) + c],
                &b[at(k + 1, p)..at(k + 1, p) + c],
            );
            let sim: f32 = va.iter().zip(vb).map(|(x, y)| (x / na) * (y / nb)).sum();
            // Strictly greater: the first maximum wins (torch.max on CPU); NaN never wins.
            if sim > best_sim || (k == 0 && sim.is_nan()) {
                best_sim = sim;
                best = k;
            }
        }
        for j in 0..n - 1 {
            let d = if j > best { j + 1 } else { j };
            let sd = s[d * tokens + p];
            let mut size = sd;
            let dst = &b[at(d, p)..at(d, p) + c];
            let o = &mut out_b[at(j, p)..at(j, p) + c];
            for (o, x) in o.iter_mut().zip(dst) {
                *o = x * sd;
            }
            if j == best {
                let ss = s[(best + 1) * tokens + p];
                let src = &b[at(best + 1, p)..at(best + 1, p) + c];
                for (o, x) in o.iter_mut().zip(src) {
                    *o += x * ss;
                }
                size += ss;
            }
            for o in o.iter_mut() {
                *o /= size;
            }
            out_s[j * tokens + p] = size;
        }
    }
    let bank = Tensor::from_vec(out_b, (n - 1, tokens, c), &device)?.to_dtype(dtype)?;
    let sizes = Tensor::from_vec(out_s, (n - 1, tokens), &device)?;
    Ok((bank, sizes))
}

/// One query bank per Q-Former layer, plus the two numbers that drive them.
#[derive(Debug, Clone)]
pub struct QueryBanks {
    pub layers: Vec<MemoryBank>,
    /// `memory_bank_length` (L): compress while a bank holds more entries.
    pub memory_bank_length: usize,
    /// The configured `num_frames`: a bank is cleared once it has absorbed this many frames.
    pub num_frames: usize,
}

impl QueryBanks {
    pub fn new(layers: usize, memory_bank_length: usize, num_frames: usize) -> Self {
        Self {
            layers: vec![MemoryBank::new(); layers],
            memory_bank_length,
            num_frames,
        }
    }

    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(MemoryBank::clear);
    }
}

/// BERT FFN `dense → act → dense`, post-LN residual (`BertIntermediate` + `BertOutput`).
#[derive(Debug, Clone)]
struct Ffn {
    up: Linear,
    down: Linear,
    norm: LayerNorm,
    act: Activation,
}

impl Ffn {
    /// `vb` at the layer; `inter` = `intermediate` or `intermediate_query`.
    fn new(cfg: &QFormerConfig, vb: &VarBuilder, inter: &str, out: &str) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let o = vb.pp(out);
        Ok(Self {
            up: linear(h, i, vb.pp(inter).pp("dense"))?,
            down: linear(i, h, o.pp("dense"))?,
            norm: layer_norm(h, cfg.layer_norm_eps, o.pp("LayerNorm"))?,
            act: cfg.hidden_act,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self
            .down
            .forward(&self.act.forward(&self.up.forward(x)?)?)?;
        self.norm.forward(&(y + x)?)
    }
}

#[derive(Debug, Clone)]
struct MbLayer {
    attention: BertAttention,
    cross_attention: Option<BertAttention>,
    ffn_text: Ffn,
    ffn_query: Ffn,
}

/// What one frame's forward shows besides its output (for golden dumps).
#[derive(Debug, Clone, Default)]
pub struct FrameTrace {
    /// Per layer: the query bank used as the K/V prefix (`[m, R, H]`, `[m, R]`), `None` when empty.
    pub query_bank_prefix: Vec<Option<(Tensor, Tensor)>>,
    /// Per layer: the layer input appended to its bank (`[R, H]`).
    pub query_bank_input: Vec<Tensor>,
}

/// The instruction-aware memory-bank Q-Former (`Qformer.bert` + `query_tokens`).
#[derive(Debug, Clone)]
pub struct MemoryBankQFormer {
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    embeddings_layer_norm: LayerNorm,
    layers: Vec<MbLayer>,
    query_tokens: Tensor,
    cfg: QFormerConfig,
}

impl MemoryBankQFormer {
    /// `cfg` as [`QFormerConfig::image`] builds it (encoder_width = ViT width, cross-attention
    /// every 2nd layer); `vb` at the model root: reads `query_tokens [1, Q, H]` and
    /// `Qformer.bert.{embeddings, encoder.layer.*}` including the text FFN.
    pub fn new(cfg: &QFormerConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let h = cfg.hidden_size;
        let query_tokens = load_query_tokens(&vb, "query_tokens", h)?;
        let bert = vb.pp("Qformer").pp("bert");
        let emb = bert.pp("embeddings");
        // Word table size from the weights (BERT vocab + `[DEC]`), positions likewise.
        let word_embeddings = emb.pp("word_embeddings").get_unchecked("weight")?;
        let position_embeddings = emb.pp("position_embeddings").get_unchecked("weight")?;
        for (name, t) in [
            ("word_embeddings", &word_embeddings),
            ("position_embeddings", &position_embeddings),
        ] {
            match t.dims() {
                &[rows, w] if w == h && rows > 0 => {}
                d => bail!("Qformer.bert.embeddings.{name}: expected [rows, {h}], got {d:?}"),
            }
        }
        let embeddings_layer_norm = layer_norm(h, cfg.layer_norm_eps, emb.pp("LayerNorm"))?;
        let lv = bert.pp("encoder").pp("layer");
        let layers = (0..cfg.num_hidden_layers)
            .map(|l| {
                let vb = lv.pp(l);
                Ok(MbLayer {
                    attention: BertAttention::new(cfg, h, vb.pp("attention"))?,
                    cross_attention: if cfg.has_cross_attention(l) {
                        Some(BertAttention::new(
                            cfg,
                            cfg.encoder_width,
                            vb.pp("crossattention"),
                        )?)
                    } else {
                        None
                    },
                    ffn_text: Ffn::new(cfg, &vb, "intermediate", "output")?,
                    ffn_query: Ffn::new(cfg, &vb, "intermediate_query", "output_query")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            word_embeddings,
            position_embeddings,
            embeddings_layer_norm,
            layers,
            query_tokens,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &QFormerConfig {
        &self.cfg
    }

    pub fn num_queries(&self) -> usize {
        self.query_tokens.dim(0).unwrap_or(0)
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Rows of the word table (BERT vocab + `[DEC]`).
    pub fn vocab_size(&self) -> usize {
        self.word_embeddings.dim(0).unwrap_or(0)
    }

    /// Rows of the position table (the longest instruction, `max_position_embeddings`).
    pub fn max_positions(&self) -> usize {
        self.position_embeddings.dim(0).unwrap_or(0)
    }

    pub fn dtype(&self) -> DType {
        self.word_embeddings.dtype()
    }

    pub fn device(&self) -> &Device {
        self.word_embeddings.device()
    }

    /// `BertEmbeddings`: `cat(query_tokens, word[ids] + pos[0..Lt])` → LayerNorm, `[1, R, H]`.
    fn embed(&self, input_ids: &[u32]) -> Result<Tensor> {
        let vocab = self.vocab_size();
        if let Some(&bad) = input_ids.iter().find(|&&i| i as usize >= vocab) {
            bail!("Q-Former: token id {bad} is outside the {vocab}-row word table");
        }
        if input_ids.len() > self.max_positions() {
            bail!(
                "Q-Former: {} instruction tokens but only {} positions",
                input_ids.len(),
                self.max_positions()
            );
        }
        let mut x = self.query_tokens.clone();
        if !input_ids.is_empty() {
            let ids = Tensor::new(input_ids, self.device())?;
            let words = self.word_embeddings.index_select(&ids, 0)?;
            let pos = self.position_embeddings.narrow(0, 0, input_ids.len())?;
            x = Tensor::cat(&[&x, &(words + pos)?], 0)?;
        }
        self.embeddings_layer_norm.forward(&x.unsqueeze(0)?)
    }

    /// One frame: `input_ids` (the BERT ids of the instruction, `[CLS] … [SEP]`),
    /// `encoder_hidden [1, M, Cenc]` (the visual bank flattened) → `last_hidden_state [1, R, H]`.
    /// Reads and updates `banks` exactly as `MBBertSelfAttention.forward` does.
    pub fn forward_frame(
        &self,
        input_ids: &[u32],
        encoder_hidden: &Tensor,
        banks: &mut QueryBanks,
        trace: Option<&mut FrameTrace>,
    ) -> Result<Tensor> {
        if banks.layers.len() != self.layers.len() {
            bail!(
                "Q-Former: {} query banks for {} layers",
                banks.layers.len(),
                self.layers.len()
            );
        }
        match encoder_hidden.dims() {
            &[1, m, c] if c == self.cfg.encoder_width && m > 0 => {}
            d => bail!(
                "Q-Former: encoder_hidden_states must be [1, M>0, {}], got {d:?}",
                self.cfg.encoder_width
            ),
        }
        let dtype = self.dtype();
        let enc = encoder_hidden.to_dtype(dtype)?.contiguous()?;
        let q = self.num_queries();
        let mut trace = trace;
        let mut x = self.embed(input_ids)?; // [1, R, H]
        let (_, r, h) = x.dims3()?;
        for (layer, bank) in self.layers.iter().zip(banks.layers.iter_mut()) {
            let kv = match bank.entries() {
                Some(e) => {
                    let (m, rows, _) = e.dims3()?;
                    if rows != r {
                        bail!("Q-Former: the query bank holds {rows} rows per entry, this frame has {r} (the instruction changed mid-video?)");
                    }
                    Tensor::cat(&[&e.reshape((1, m * rows, h))?, &x], 1)?
                }
                None => x.clone(),
            };
            if let Some(t) = trace.as_deref_mut() {
                t.query_bank_prefix
                    .push(bank.entries().cloned().zip(bank.sizes().cloned()));
                t.query_bank_input.push(x.squeeze(0)?);
            }
            let a = layer.attention.forward(&x, &kv)?;
            // The bank stores the layer input, then clears or compresses.
            bank.push(&x.squeeze(0)?)?;
            if bank.frames_absorbed()? == banks.num_frames {
                bank.clear();
            } else if bank.len() > banks.memory_bank_length {
                bank.compress()?;
            }
            let mut aq = a.narrow(1, 0, q)?;
            if let Some(cross) = &layer.cross_attention {
                aq = cross.forward(&aq, &enc)?;
            }
            let yq = layer.ffn_query.forward(&aq)?;
            x = if r > q {
                let yt = layer.ffn_text.forward(&a.narrow(1, q, r - q)?)?;
                Tensor::cat(&[&yq, &yt], 1)?
            } else {
                yq
            };
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compress_merges_the_most_similar_adjacent_pair_per_position() {
        let dev = Device::Cpu;
        // 3 entries, 2 positions, 2 channels. Position 0: entries 1 and 2 are parallel;
        // position 1: entries 0 and 1 are parallel.
        let bank = Tensor::new(
            &[
                [[1f32, 0.], [1., 1.]],
                [[0., 1.], [2., 2.]],
                [[0., 3.], [1., 0.]],
            ],
            &dev,
        )
        .unwrap();
        let sizes = Tensor::new(&[[1f32, 1.], [1., 2.], [2., 1.]], &dev).unwrap();
        let (b, s) = memory_bank_compress(&bank, &sizes).unwrap();
        let b: Vec<Vec<Vec<f32>>> = b.to_vec3().unwrap();
        let s: Vec<Vec<f32>> = s.to_vec2().unwrap();
        // p0: k* = 1 → [e0, (1·e1 + 2·e2)/3]; p1: k* = 0 → [(1·e0 + 2·e1)/3, e2].
        assert_eq!(b[0][0], vec![1., 0.]);
        assert_eq!(b[1][0], vec![0., 7. / 3.]);
        assert_eq!(b[0][1], vec![5. / 3., 5. / 3.]);
        assert_eq!(b[1][1], vec![1., 0.]);
        assert_eq!(s, vec![vec![1., 3.], vec![3., 1.]]);
    }

    #[test]
    fn bank_push_clear_and_frame_count() {
        let dev = Device::Cpu;
        let mut bank = MemoryBank::new();
        assert_eq!(bank.frames_absorbed().unwrap(), 0);
        for i in 0..4 {
            bank.push(&Tensor::full(i as f32 + 1.0, (2, 3), &dev).unwrap())
                .unwrap();
        }
        assert_eq!(bank.len(), 4);
        bank.compress().unwrap();
        assert_eq!(bank.len(), 3);
        assert_eq!(bank.frames_absorbed().unwrap(), 4);
        assert!(bank
            .push(&Tensor::zeros((3, 3), DType::F32, &dev).unwrap())
            .is_err());
        bank.clear();
        assert!(bank.is_empty());
    }
}
