//! The encoder cache through `Pipeline::encode_request` on the golden tiny Mistral
//! checkpoint and its video: the same bytes (under any name) hit, other sampling or other
//! bytes miss, a hit gives the connector tokens bit for bit and the same answer as an
//! uncached encoding, the byte count is the connector outputs', and the budget evicts.

use std::path::PathBuf;
use std::sync::Arc;
use videollama_pipeline::media::MediaRequest;
use videollama_pipeline::{AnswerOptions, CacheStatus, LoadOptions, Pipeline};
use videollama_testutil::golden;

fn video() -> PathBuf {
    golden("videollama2-mistral-tiny/inputs/video.mp4")
}

fn req(path: PathBuf) -> MediaRequest {
    MediaRequest {
        video: Some(path),
        ..MediaRequest::default()
    }
}

fn block_values(m: &videollama_pipeline::EncodedMedia) -> Vec<Vec<f32>> {
    m.block().unwrap().unwrap().to_vec2::<f32>().unwrap()
}

#[test]
fn encoder_cache_hits_misses_and_evicts() {
    let p = Pipeline::load(
        &golden("videollama2-mistral-tiny/checkpoint"),
        &LoadOptions::default(),
    )
    .unwrap();
    let cache = &p.encoder_cache;
    assert!(cache.is_enabled());

    // Independent: prepare + encode, no cache.
    let (input, fresh_report) = p.prepare_media(&req(video())).unwrap();
    let fresh = p.encode_media(&input).unwrap();
    let entry_bytes = fresh.visual_tokens() * p.model.config.llm.hidden_size * 4;

    let (first, report1, s1) = p.encode_request(&req(video())).unwrap();
    assert_eq!(s1, CacheStatus::Miss);
    assert!(first.intermediates, "a miss returns the full encoding");
    assert_eq!(report1.frame_indices, fresh_report.frame_indices);
    let st = cache.stats();
    assert_eq!((st.hits, st.misses, st.entries), (0, 1, 1));
    assert_eq!(st.bytes, entry_bytes, "only connector_out is kept");

    // Same bytes under another name: a hit, bit-identical tokens, same report.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("renamed.MP4");
    std::fs::copy(video(), &copy).unwrap();
    let (hit, report2, s2) = p.encode_request(&req(copy.clone())).unwrap();
    assert_eq!(s2, CacheStatus::Hit);
    assert!(!hit.intermediates);
    assert_eq!(hit.vision_seconds, 0.0);
    assert_eq!(report2.frame_indices, fresh_report.frame_indices);
    assert_eq!(report2.frame_timestamps_s, fresh_report.frame_timestamps_s);
    assert_eq!(block_values(&hit), block_values(&fresh));
    let (hit_again, _, s3) = p.encode_request(&req(video())).unwrap();
    assert_eq!(s3, CacheStatus::Hit);
    assert!(Arc::ptr_eq(&hit, &hit_again), "hits share one entry");

    // The answer from a hit equals the uncached one.
    let opts = AnswerOptions {
        max_new_tokens: 8,
        ..Default::default()
    };
    let q = vec!["What is happening in this video?".to_string()];
    let a_hit = p.answer(&q, &hit, &opts, |_| true).unwrap();
    let a_fresh = p.answer(&q, &fresh, &opts, |_| true).unwrap();
    assert_eq!(a_hit.token_ids, a_fresh.token_ids);
    assert_eq!(a_hit.answer, a_fresh.answer);
    // --dump-tensors of a cached entry holds no stale stage tensors.
    let dump = p
        .answer(
            &q,
            &hit,
            &AnswerOptions {
                collect_tensors: true,
                ..opts.clone()
            },
            |_| true,
        )
        .unwrap();
    assert!(dump.tensors.contains_key("connector_out"));
    assert!(!dump.tensors.contains_key("pixel_values"));
    assert!(!dump.tensors.contains_key("vision_features"));

    // Other sampling, other use of the bytes, other bytes: misses.
    let clip = MediaRequest {
        end_s: Some(1.0),
        ..req(video())
    };
    assert_eq!(p.encode_request(&clip).unwrap().2, CacheStatus::Miss);
    let padded = MediaRequest {
        pad_to_square: true,
        ..req(video())
    };
    assert_eq!(p.encode_request(&padded).unwrap().2, CacheStatus::Miss);
    let image = MediaRequest {
        image: Some(golden("videollama2-mistral-tiny/inputs/image.png")),
        ..MediaRequest::default()
    };
    assert_eq!(p.encode_request(&image).unwrap().2, CacheStatus::Miss);
    let other = golden("videollama2.1-av-tiny/inputs/video_av.mp4");
    // (Other bytes, same frames: the key is the bytes.)
    assert_eq!(p.encode_request(&req(other)).unwrap().2, CacheStatus::Miss);
    // A directory of frames (the picture, four times): other tokens.
    let frames = dir.path().join("frames");
    std::fs::create_dir(&frames).unwrap();
    for i in 0..4 {
        std::fs::copy(
            golden("videollama2-mistral-tiny/inputs/image.png"),
            frames.join(format!("{i:03}.png")),
        )
        .unwrap();
    }
    let (frame_tokens, _, s_frames) = p.encode_request(&req(frames.clone())).unwrap();
    assert_eq!(s_frames, CacheStatus::Miss);
    assert_ne!(
        block_values(&frame_tokens),
        block_values(&fresh),
        "another video"
    );
    assert_eq!(p.encode_request(&req(frames)).unwrap().2, CacheStatus::Hit);
    assert_eq!(p.encode_request(&clip).unwrap().2, CacheStatus::Hit);
    let st = cache.stats();
    assert_eq!((st.hits, st.misses, st.entries, st.evictions), (4, 6, 6, 0));

    // A budget of two video entries evicts the least recently used.
    cache.set_budget(2 * entry_bytes);
    let st = cache.stats();
    assert!(st.bytes <= 2 * entry_bytes && st.evictions >= 3, "{st:?}");
    assert_eq!(
        p.encode_request(&clip).unwrap().2,
        CacheStatus::Hit,
        "most recent"
    );
    assert_eq!(
        p.encode_request(&req(video())).unwrap().2,
        CacheStatus::Miss
    );

    // Text only: nothing to cache. A missing file: the uncached error, unchanged.
    assert_eq!(
        p.encode_request(&MediaRequest::default()).unwrap().2,
        CacheStatus::Off
    );
    let missing = req(dir.path().join("missing.mp4"));
    let Err(e_cached) = p.encode_request(&missing) else {
        panic!("a missing file must fail");
    };
    let Err(e_plain) = p.prepare_media(&missing) else {
        panic!("a missing file must fail");
    };
    let (e_cached, e_plain) = (e_cached.to_string(), e_plain.to_string());
    assert_eq!(e_cached, e_plain);

    // Disabled: off, nothing kept.
    cache.set_budget(0);
    let (_, _, s) = p.encode_request(&req(video())).unwrap();
    assert_eq!(s, CacheStatus::Off);
    assert_eq!(cache.stats().entries, 0);
}
