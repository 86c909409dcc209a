//! The encoder cache: media tokens reused across `chat` turns and server requests.
//!
//! ```text
//! MediaRequest ─► key = 128-bit hash of (model identity, each file's bytes + kind + extension,
//!                       start/end, pad, audio use, crop seed, which inputs were given)
//!              ─► lookup ─hit─► Arc<EncodedMedia> (connector outputs only)
//!                        └miss─► prepare_media ─► encode_media ─► insert (LRU, bounded by bytes)
//! ```
//!
//! **What an entry keeps.** Only what [`Pipeline::answer`](crate::Pipeline::answer) needs:
//! the connector outputs that [`EncodedMedia::block`] splices into the prompt
//! (`connector_out`, `audio_connector_out`, copied into their own buffers so that no entry
//! keeps a larger storage alive), the modality and the [`MediaReport`] of the first
//! encoding. The earlier stage tensors (`pixel_values`, `vision_features`, `audio_fbank` —
//! a Whisper tower's `audio_mel` —, `audio_features`) are dropped — they are several times larger (for a 7B 16-frame
//! checkpoint ~80 MB against ~15 MB) and only `--dump-tensors` reads them; such an entry
//! has `EncodedMedia::intermediates == false` and empty tensors in their place. Callers that
//! want the stage tensors bypass the cache (the CLI does for `--dump-tensors`). Entries
//! record zero encoder seconds, so the timings of a hit show no encoder time.
//!
//! The byte budget counts the kept tensors' bytes (element count × dtype size). An entry
//! larger than the whole budget is not kept; a budget of 0 disables the cache.

use crate::media::{MediaReport, MediaRequest};
use crate::model::{EncodedAudio, EncodedVisual};
use crate::EncodedMedia;
use candle_core::Tensor;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hasher;
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// The default budget: 1 GiB of cached media tokens.
pub const DEFAULT_ENCODER_CACHE_BYTES: usize = 1 << 30;

/// What the cache did for one request (`timings.encoder_cache`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheStatus {
    /// Found: no decoding, no encoder.
    Hit,
    /// Encoded now (and kept, if it fits the budget).
    Miss,
    /// Not looked up: the cache is disabled, there are no media, or the caller bypassed it.
    Off,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Off => "off",
        }
    }
}

/// A 128-bit digest of everything that determines a media encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(pub u128);

/// Counters for `/metrics` and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    /// Bytes of the tensors held now.
    pub bytes: usize,
    pub entries: usize,
    pub budget_bytes: usize,
}

/// Two SipHash passes over the same input, made different by a domain prefix: a 128-bit
/// digest from std alone. Not cryptographic — the cache only has to tell apart the inputs
/// its own users send, and a collision needs ~2^64 distinct inputs.
pub struct KeyHasher {
    a: std::collections::hash_map::DefaultHasher,
    b: std::collections::hash_map::DefaultHasher,
}

impl Default for KeyHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl KeyHasher {
    pub fn new() -> Self {
        let mut a = std::collections::hash_map::DefaultHasher::new();
        let mut b = std::collections::hash_map::DefaultHasher::new();
        a.write(b"videollama encoder cache / pass A");
        b.write(b"pass B / videollama encoder cache, second key");
        Self { a, b }
    }

    fn raw(&mut self, bytes: &[u8]) {
        self.a.write(bytes);
        self.b.write(bytes);
    }

    /// A labelled, length-prefixed field (so `("ab", "c")` and `("a", "bc")` differ).
    pub fn field(&mut self, label: &str, bytes: &[u8]) {
        self.raw(&(label.len() as u64).to_le_bytes());
        self.raw(label.as_bytes());
        self.raw(&(bytes.len() as u64).to_le_bytes());
        self.raw(bytes);
    }

    /// A file's (or a frame directory's) content: every byte, plus whether it is a directory
    /// and the lower-cased extension (both change how it is decoded — a `.gif` is sampled
    /// differently). The path itself is not hashed: the same bytes under another name (a
    /// server's temporary copy of a data: URL) give the same key.
    pub fn file(&mut self, label: &str, path: &Path) -> std::io::Result<()> {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        if path.is_dir() {
            self.field(label, b"directory");
            let mut names: Vec<_> = std::fs::read_dir(path)?
                .map(|e| e.map(|e| e.path()))
                .collect::<std::io::Result<_>>()?;
            names.sort();
            for entry in names.iter().filter(|p| p.is_file()) {
                let name = entry
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                self.field("frame file", name.as_bytes());
                self.contents(entry)?;
            }
        } else {
            self.field(label, ext.as_bytes());
            self.contents(path)?;
        }
        Ok(())
    }

    fn contents(&mut self, path: &Path) -> std::io::Result<()> {
        let mut file = std::fs::File::open(path)?;
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            total += n as u64;
            self.raw(&buf[..n]);
        }
        self.raw(&total.to_le_bytes());
        Ok(())
    }

    pub fn finish(&self) -> CacheKey {
        CacheKey(((self.a.finish() as u128) << 64) | self.b.finish() as u128)
    }
}

/// Hash the sampling fields of a request and its files' bytes (see [`KeyHasher::file`]).
pub fn hash_request(h: &mut KeyHasher, req: &MediaRequest) -> std::io::Result<()> {
    let opt_f64 = |v: Option<f64>| -> Vec<u8> {
        match v {
            None => vec![0],
            Some(v) => [&[1u8][..], &v.to_bits().to_le_bytes()].concat(),
        }
    };
    h.field("start_s", &opt_f64(req.start_s));
    h.field("end_s", &opt_f64(req.end_s));
    h.field(
        "use_video_audio",
        &[match req.use_video_audio {
            None => 0,
            Some(false) => 1,
            Some(true) => 2,
        }],
    );
    match req.audio_crop_seed {
        None => h.field("audio_crop_seed", b""),
        Some(s) => h.field("audio_crop_seed", &s.to_le_bytes()),
    }
    h.field("pad_to_square", &[req.pad_to_square as u8]);
    match &req.subtitles {
        crate::media::SubtitleChoice::Default => h.field("subtitles", b"default"),
        crate::media::SubtitleChoice::None => h.field("subtitles", b"none"),
        crate::media::SubtitleChoice::Recognize => h.field("subtitles", b"auto"),
        crate::media::SubtitleChoice::File(p) => h.file("subtitles", p)?,
    }
    for (label, path) in [
        ("video", &req.video),
        ("image", &req.image),
        ("audio", &req.audio),
    ] {
        match path {
            None => h.field(label, b"absent"),
            Some(p) => h.file(label, p)?,
        }
    }
    Ok(())
}

struct Entry {
    value: Arc<EncodedMedia>,
    report: MediaReport,
    bytes: usize,
    /// Position in `Inner::order` (larger = used more recently).
    tick: u64,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<CacheKey, Entry>,
    /// tick → key, oldest first.
    order: BTreeMap<u64, CacheKey>,
    next_tick: u64,
    stats: CacheStats,
}

impl Inner {
    fn touch(&mut self, key: CacheKey) {
        let tick = self.next_tick;
        self.next_tick += 1;
        if let Some(e) = self.entries.get_mut(&key) {
            self.order.remove(&e.tick);
            e.tick = tick;
            self.order.insert(tick, key);
        }
    }

    fn remove(&mut self, key: &CacheKey) -> Option<Entry> {
        let e = self.entries.remove(key)?;
        self.order.remove(&e.tick);
        self.stats.bytes -= e.bytes;
        self.stats.entries -= 1;
        Some(e)
    }

    /// Evict least-recently-used entries until `extra` more bytes fit the budget.
    fn make_room(&mut self, extra: usize) {
        while self.stats.bytes + extra > self.stats.budget_bytes {
            let Some((_, key)) = self.order.pop_first() else {
                break;
            };
            if let Some(e) = self.entries.remove(&key) {
                self.stats.bytes -= e.bytes;
                self.stats.entries -= 1;
                self.stats.evictions += 1;
            }
        }
    }
}

/// A thread-safe LRU map from [`CacheKey`] to encoded media, bounded by the bytes of the
/// kept tensors (see the module documentation for what is kept).
pub struct EncoderCache {
    inner: Mutex<Inner>,
}

impl Default for EncoderCache {
    fn default() -> Self {
        Self::new(DEFAULT_ENCODER_CACHE_BYTES)
    }
}

impl std::fmt::Debug for EncoderCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncoderCache")
            .field("stats", &self.stats())
            .finish()
    }
}

impl EncoderCache {
    /// A cache holding at most `budget_bytes` of tensors (0: disabled).
    pub fn new(budget_bytes: usize) -> Self {
        let inner = Inner {
            stats: CacheStats {
                budget_bytes,
                ..CacheStats::default()
            },
            ..Inner::default()
        };
        Self {
            inner: Mutex::new(inner),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The map stays consistent even if a holder panicked (no user code runs under it).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_enabled(&self) -> bool {
        self.budget_bytes() > 0
    }

    pub fn budget_bytes(&self) -> usize {
        self.lock().stats.budget_bytes
    }

    /// Change the budget; shrinking evicts least-recently-used entries at once.
    pub fn set_budget(&self, budget_bytes: usize) {
        let mut inner = self.lock();
        inner.stats.budget_bytes = budget_bytes;
        inner.make_room(0);
    }

    pub fn stats(&self) -> CacheStats {
        self.lock().stats
    }

    /// Drop every entry (counters are kept).
    pub fn clear(&self) {
        let mut inner = self.lock();
        let keys: Vec<CacheKey> = inner.entries.keys().copied().collect();
        for k in keys {
            inner.remove(&k);
        }
    }

    /// Look `key` up; a hit makes it the most recently used. Counts a hit or a miss.
    pub fn get(&self, key: CacheKey) -> Option<(Arc<EncodedMedia>, MediaReport)> {
        let mut inner = self.lock();
        let found = inner
            .entries
            .get(&key)
            .map(|e| (e.value.clone(), e.report.clone()));
        if found.is_some() {
            inner.stats.hits += 1;
            inner.touch(key);
        } else {
            inner.stats.misses += 1;
        }
        found
    }

    /// Keep `value` under `key`, evicting least-recently-used entries to make room. Returns
    /// whether it was kept (not when it alone exceeds the budget).
    pub fn insert(&self, key: CacheKey, value: Arc<EncodedMedia>, report: MediaReport) -> bool {
        let bytes = kept_bytes(&value);
        let mut inner = self.lock();
        inner.remove(&key);
        if bytes > inner.stats.budget_bytes {
            return false;
        }
        inner.make_room(bytes);
        let tick = inner.next_tick;
        inner.next_tick += 1;
        inner.order.insert(tick, key);
        inner.entries.insert(
            key,
            Entry {
                value,
                report,
                bytes,
                tick,
            },
        );
        inner.stats.bytes += bytes;
        inner.stats.entries += 1;
        true
    }
}

fn tensor_bytes(t: &Tensor) -> usize {
    t.elem_count() * t.dtype().size_in_bytes()
}

/// Bytes of the tensors an entry keeps: the connector outputs (the dropped stage tensors
/// are empty).
pub fn kept_bytes(m: &EncodedMedia) -> usize {
    let mut n = 0;
    if let Some(v) = &m.visual {
        n += tensor_bytes(&v.connector_out)
            + tensor_bytes(&v.pixel_values)
            + tensor_bytes(&v.vision_features);
    }
    if let Some(a) = &m.audio {
        n += tensor_bytes(&a.audio_connector_out)
            + tensor_bytes(&a.audio_fbank)
            + tensor_bytes(&a.audio_features);
    }
    n
}

fn empty_like(t: &Tensor) -> candle_core::Result<Tensor> {
    Tensor::zeros(0, t.dtype(), t.device())
}

/// The cache's copy of `m`: connector outputs in their own buffers, stage tensors dropped,
/// encoder seconds zero (a hit costs no encoding).
pub fn slim_copy(m: &EncodedMedia) -> candle_core::Result<EncodedMedia> {
    let visual = m
        .visual
        .as_ref()
        .map(|v| -> candle_core::Result<EncodedVisual> {
            Ok(EncodedVisual {
                pixel_values: empty_like(&v.pixel_values)?,
                // A zero-width `connector_out` (MA-LMM) means the blocks are built at answer
                // time from `vision_features` (they depend on the question): keep those.
                vision_features: if v.connector_out.elem_count() == 0 {
                    v.vision_features.copy()?
                } else {
                    empty_like(&v.vision_features)?
                },
                connector_out: v.connector_out.copy()?,
                tower_seconds: 0.0,
                connector_seconds: 0.0,
            })
        })
        .transpose()?;
    let audio = m
        .audio
        .as_ref()
        .map(|a| -> candle_core::Result<EncodedAudio> {
            Ok(EncodedAudio {
                audio_fbank: empty_like(&a.audio_fbank)?,
                audio_features: empty_like(&a.audio_features)?,
                audio_connector_out: a.audio_connector_out.copy()?,
            })
        })
        .transpose()?;
    Ok(EncodedMedia {
        modality: m.modality,
        visual,
        audio,
        vision_seconds: 0.0,
        audio_seconds: 0.0,
        intermediates: false,
        frame_timestamps: m.frame_timestamps.clone(),
        frame_captions: m.frame_captions.clone(),
        patch_grid: m.patch_grid,
        stage_tensors: Vec::new(),
    })
}

impl crate::Pipeline {
    /// The cache key of `req` (plus `extra_files`, e.g. the CLI's precomputed pixel files,
    /// hashed by content under their label). `None` when there is nothing to cache (no
    /// media), the cache is disabled, or a file cannot be read — then the request is simply
    /// prepared uncached and reports its own error.
    pub fn media_key(&self, req: &MediaRequest, extra_files: &[(&str, &Path)]) -> Option<CacheKey> {
        let has_media = req.video.is_some()
            || req.image.is_some()
            || req.audio.is_some()
            || !extra_files.is_empty();
        if !has_media || !self.encoder_cache.is_enabled() {
            return None;
        }
        let mut h = KeyHasher::new();
        h.field("model", self.model_identity.as_bytes());
        let hashed = hash_request(&mut h, req).and_then(|_| {
            extra_files
                .iter()
                .try_for_each(|(label, path)| h.file(label, path))
        });
        match hashed {
            Ok(()) => Some(h.finish()),
            Err(e) => {
                tracing::debug!("encoder cache: not used for this request ({e})");
                None
            }
        }
    }

    /// Look `key` up; on a miss run `prepare` and `encode_media` and keep the connector
    /// outputs. `key = None` bypasses the cache (status `Off`). On a hit the report's
    /// `preprocess_s` is the time spent here (hashing was done by the caller).
    pub fn encode_cached<E: From<crate::PipelineError>>(
        &self,
        key: Option<CacheKey>,
        prepare: impl FnOnce() -> std::result::Result<(crate::MediaInput, MediaReport), E>,
    ) -> std::result::Result<(Arc<EncodedMedia>, MediaReport, CacheStatus), E> {
        let start = std::time::Instant::now();
        if let Some(key) = key {
            if let Some((media, mut report)) = self.encoder_cache.get(key) {
                report.preprocess_s = start.elapsed().as_secs_f64();
                return Ok((media, report, CacheStatus::Hit));
            }
        }
        let (input, report) = prepare()?;
        let encoded = self.encode_media(&input)?;
        drop(input);
        let status = match key {
            None => CacheStatus::Off,
            Some(key) => {
                let slim = slim_copy(&encoded).map_err(crate::PipelineError::from)?;
                self.encoder_cache
                    .insert(key, Arc::new(slim), report.clone());
                CacheStatus::Miss
            }
        };
        Ok((Arc::new(encoded), report, status))
    }

    /// Prepare and encode the request's media through the encoder cache: the files are
    /// hashed (read fully), and a hit skips decoding and the encoders. The report's
    /// `preprocess_s` includes the hashing.
    pub fn encode_request(
        &self,
        req: &MediaRequest,
    ) -> crate::Result<(Arc<EncodedMedia>, MediaReport, CacheStatus)> {
        let start = std::time::Instant::now();
        let key = self.media_key(req, &[]);
        let hash_s = start.elapsed().as_secs_f64();
        let (media, mut report, status) = self.encode_cached(key, || self.prepare_media(req))?;
        report.preprocess_s += hash_s;
        Ok((media, report, status))
    }
}

/// The model part of a key: everything about the loaded model that changes encodings.
pub(crate) fn model_identity(dir: &Path, opts: &crate::LoadOptions) -> String {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    format!(
        "{} | {:?} | {:?} | {} | llm {:?}",
        dir.display(),
        opts.dtype,
        opts.device.location(),
        opts.weights.describe(),
        opts.llm_gguf
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prompt::Modality;
    use candle_core::{DType, Device};

    /// Media whose kept bytes are `rows × 4 × 4` (f32 connector_out `[rows, 4]`).
    fn media(rows: usize, fill: f32) -> Arc<EncodedMedia> {
        let t = (Tensor::ones((rows, 4), DType::F32, &Device::Cpu).unwrap() * fill as f64).unwrap();
        let full = EncodedMedia {
            modality: Modality::Video,
            visual: Some(EncodedVisual {
                pixel_values: Tensor::zeros((1, 3, 8, 8), DType::F32, &Device::Cpu).unwrap(),
                vision_features: Tensor::zeros((1, 4, 4), DType::F32, &Device::Cpu).unwrap(),
                connector_out: t,
                tower_seconds: 1.0,
                connector_seconds: 1.0,
            }),
            audio: None,
            vision_seconds: 2.0,
            audio_seconds: 0.0,
            intermediates: true,
            frame_timestamps: Vec::new(),
            frame_captions: Vec::new(),
            patch_grid: None,
            stage_tensors: Vec::new(),
        };
        Arc::new(slim_copy(&full).unwrap())
    }

    fn key(i: u128) -> CacheKey {
        CacheKey(i)
    }

    #[test]
    fn slim_copy_keeps_only_the_connector_output() {
        let m = media(3, 2.5);
        assert!(!m.intermediates);
        assert_eq!(m.vision_seconds, 0.0);
        let v = m.visual.as_ref().unwrap();
        assert_eq!(v.pixel_values.elem_count(), 0);
        assert_eq!(v.vision_features.elem_count(), 0);
        assert_eq!(v.connector_out.dims(), &[3, 4]);
        assert_eq!(
            v.connector_out.to_vec2::<f32>().unwrap(),
            vec![vec![2.5f32; 4]; 3]
        );
        assert_eq!(kept_bytes(&m), 3 * 4 * 4);
    }

    #[test]
    fn lru_eviction_by_bytes() {
        // Budget: 3 entries of 64 bytes.
        let c = EncoderCache::new(3 * 64);
        for i in 0..3 {
            assert!(c.insert(key(i), media(4, i as f32), MediaReport::default()));
        }
        assert_eq!(c.stats().bytes, 192);
        // Use 0 so that 1 is the least recently used.
        assert!(c.get(key(0)).is_some());
        assert!(c.insert(key(3), media(4, 3.0), MediaReport::default()));
        let s = c.stats();
        assert_eq!((s.entries, s.bytes, s.evictions), (3, 192, 1));
        assert!(c.get(key(1)).is_none(), "1 was the least recently used");
        for k in [0, 2, 3] {
            let (v, _) = c.get(key(k)).expect("kept");
            let got = v
                .visual
                .as_ref()
                .unwrap()
                .connector_out
                .to_vec2::<f32>()
                .unwrap();
            assert_eq!(got[0][0], k as f32);
        }
        let s = c.stats();
        assert_eq!((s.hits, s.misses), (4, 1));
        // A big entry evicts as many as needed.
        assert!(c.insert(key(9), media(8, 9.0), MediaReport::default()));
        let s = c.stats();
        assert_eq!((s.entries, s.bytes, s.evictions), (2, 192, 3));
        assert!(c.get(key(9)).is_some() && c.get(key(3)).is_some());
        // Larger than the whole budget: not kept, nothing evicted.
        assert!(!c.insert(key(10), media(13, 1.0), MediaReport::default()));
        assert_eq!(c.stats().entries, 2);
        // Replacing a key does not double-count.
        assert!(c.insert(key(9), media(8, 9.5), MediaReport::default()));
        assert_eq!(c.stats().bytes, 192);
        // Shrinking the budget evicts; 0 disables.
        c.set_budget(64);
        assert_eq!(c.stats().bytes, 0, "the 128-byte entry and the 64-byte one");
        c.set_budget(0);
        assert!(!c.is_enabled());
        assert!(!c.insert(key(1), media(1, 1.0), MediaReport::default()));
    }

    #[test]
    fn keys_depend_on_bytes_and_sampling_not_on_paths() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.mp4");
        let b = dir.path().join("b.mp4");
        let c = dir.path().join("c.gif");
        std::fs::write(&a, b"same bytes").unwrap();
        std::fs::write(&b, b"same bytes").unwrap();
        std::fs::write(&c, b"same bytes").unwrap();
        let k = |req: &MediaRequest| {
            let mut h = KeyHasher::new();
            hash_request(&mut h, req).unwrap();
            h.finish()
        };
        let req = |p: &Path| MediaRequest {
            video: Some(p.to_path_buf()),
            ..MediaRequest::default()
        };
        assert_eq!(k(&req(&a)), k(&req(&b)));
        assert_ne!(k(&req(&a)), k(&req(&c)), "the extension changes decoding");
        let clip = MediaRequest {
            end_s: Some(1.0),
            ..req(&a)
        };
        assert_ne!(k(&req(&a)), k(&clip));
        let as_image = MediaRequest {
            image: Some(a.clone()),
            ..MediaRequest::default()
        };
        assert_ne!(k(&req(&a)), k(&as_image));
        std::fs::write(&b, b"other bytes").unwrap();
        assert_ne!(k(&req(&a)), k(&req(&b)));
        let mut h = KeyHasher::new();
        assert!(hash_request(&mut h, &req(&dir.path().join("missing.mp4"))).is_err());
    }
}
