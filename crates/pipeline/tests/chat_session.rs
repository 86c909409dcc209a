//! Chat KV reuse: three turns answered in one `ChatSession` (reusing the KV cache of the
//! earlier turns) must give exactly the generated ids of fresh full prefills and first-step
//! logits within `assert_close` (1e-4 relative), while prefilling fewer positions — as
//! many fewer as an independent longest-common-prefix computation over the fresh answers'
//! ids says.

use std::sync::Arc;
use videollama_pipeline::session::ChatSession;
use videollama_pipeline::{prompt, Answer, AnswerOptions, LoadOptions, MediaInput, Pipeline};
use videollama_testutil::{assert_close, golden, load_tensors};

const FOLLOW_UPS: [&str; 2] = [
    "And what colour is the background?",
    "Summarise it in one word.",
];

fn options() -> AnswerOptions {
    AnswerOptions {
        max_new_tokens: 6,
        collect_tensors: true,
        ..Default::default()
    }
}

/// Positions the media placeholder and text ids take in the LLM sequence.
fn expand(ids: &[i64], media_tokens: usize) -> Vec<Option<i64>> {
    ids.iter()
        .flat_map(|&id| {
            if prompt::is_placeholder(id) {
                vec![None; media_tokens]
            } else {
                vec![Some(id)]
            }
        })
        .collect()
}

/// What a session must reuse for turn k: the common prefix, in positions, of what the
/// cache holds after turn k−1 (its prompt, then its generated ids but the last) and turn
/// k's prompt — with the media block reused whole or not at all, and at least one position
/// left to prefill.
fn expected_reuse(prev: &Answer, next_ids: &[i64], media_tokens: usize) -> usize {
    let fed = prev.token_ids.len().saturating_sub(1);
    let mut held = prev.input_ids.clone();
    held.extend(prev.token_ids[..fed].iter().map(|&i| i as i64));
    let (held, next) = (expand(&held, media_tokens), expand(next_ids, media_tokens));
    let mut n = held.iter().zip(&next).take_while(|(a, b)| a == b).count();
    // A partially shared media block is not reusable (it is one unit).
    if let Some(first_media) = next.iter().position(Option::is_none) {
        if n > first_media && n < first_media + media_tokens {
            n = first_media;
        }
    }
    n.min(next.len() - 1)
}

fn run(fixture: &str, case: &str, question: &str) {
    let pipeline = Pipeline::load(
        &golden(&format!("{fixture}/checkpoint")),
        &LoadOptions::default(),
    )
    .unwrap();
    let expected = load_tensors(&format!("{fixture}/{case}/expected.safetensors"));
    let media = pipeline
        .encode_media(&MediaInput::video(expected["pixel_values"].clone()))
        .unwrap();
    let media_tokens = media.media_tokens();
    assert!(media_tokens > 0);
    let mut session = ChatSession::new(Arc::new(media));
    let opts = options();

    let mut turns = vec![question.to_string()];
    let mut previous: Option<Answer> = None;
    let mut report = Vec::new();
    for k in 0..=FOLLOW_UPS.len() {
        let fresh = pipeline
            .answer(&turns, session.media(), &opts, |_| true)
            .unwrap();
        let mut streamed = String::new();
        let reused = pipeline
            .answer_in_session(&mut session, &turns, &opts, |p| {
                streamed.push_str(p);
                true
            })
            .unwrap();
        let what = format!("{fixture} turn {}", k + 1);
        assert_eq!(reused.input_ids, fresh.input_ids, "{what}: prompt ids");
        assert_eq!(reused.prompt_tokens, fresh.prompt_tokens);
        assert_eq!(reused.token_ids, fresh.token_ids, "{what}: generated ids");
        assert_eq!(reused.answer, fresh.answer);
        assert_eq!(streamed.trim(), fresh.answer);
        let rep = assert_close(
            &format!("{what} logits_last"),
            &reused.tensors["logits_last"],
            &fresh.tensors["logits_last"],
        );
        assert_close(
            &format!("{what} logits_steps"),
            &reused.tensors["logits_steps"],
            &fresh.tensors["logits_steps"],
        );
        assert_eq!(fresh.reused_prompt_tokens, 0);
        let want = match &previous {
            None => 0,
            Some(prev) => expected_reuse(prev, &fresh.input_ids, media_tokens),
        };
        assert_eq!(
            reused.reused_prompt_tokens, want,
            "{what}: reused positions"
        );
        if let Some(prev) = &previous {
            // At least the previous prompt, media block included, was reused.
            assert!(
                want >= prev.prompt_tokens,
                "{what}: reused {want} < previous prompt {}",
                prev.prompt_tokens
            );
        }
        // The cache holds this prompt and the generated ids but the last.
        assert_eq!(
            session.cached_positions(),
            fresh.prompt_tokens + fresh.token_ids.len() - 1
        );
        report.push(format!(
            "turn {}: prompt {} positions, prefilled {} (fresh: {}), logits rel err {:.1e}",
            k + 1,
            fresh.prompt_tokens,
            fresh.prompt_tokens - reused.reused_prompt_tokens,
            fresh.prompt_tokens,
            rep.rel_err()
        ));
        if let Some(follow_up) = FOLLOW_UPS.get(k) {
            turns.push(fresh.answer.clone());
            turns.push(follow_up.to_string());
        }
        previous = Some(fresh);
    }
    eprintln!("{fixture}:\n  {}", report.join("\n  "));

    // The same conversation again: everything but the last prompt position is in the cache.
    let last = previous.unwrap();
    let again = pipeline
        .answer_in_session(&mut session, &turns, &opts, |_| true)
        .unwrap();
    assert_eq!(again.token_ids, last.token_ids);
    assert_eq!(again.reused_prompt_tokens, last.prompt_tokens - 1);

    // /reset: nothing is reused, and the answer is the first turn's again.
    session.reset();
    assert_eq!(session.cached_positions(), 0);
    let first = pipeline
        .answer_in_session(&mut session, &turns[..1], &opts, |_| true)
        .unwrap();
    let fresh_first = pipeline
        .answer(&turns[..1], session.media(), &opts, |_| true)
        .unwrap();
    assert_eq!(first.reused_prompt_tokens, 0);
    assert_eq!(first.token_ids, fresh_first.token_ids);

    // A bad turn list is an error, and the session still works afterwards.
    assert!(pipeline
        .answer_in_session(&mut session, &turns[..2], &opts, |_| true)
        .is_err());
    let after = pipeline
        .answer_in_session(&mut session, &turns, &opts, |_| true)
        .unwrap();
    assert_eq!(after.token_ids, last.token_ids);
}

#[test]
fn chat_session_reuses_kv_and_matches_fresh_prefill_qwen2() {
    let meta = videollama_testutil::case_json("videollama2.1-qwen2-tiny", "video");
    run(
        "videollama2.1-qwen2-tiny",
        "video",
        meta["question"].as_str().unwrap(),
    );
}

#[test]
fn chat_session_reuses_kv_and_matches_fresh_prefill_mistral() {
    let meta = videollama_testutil::case_json("videollama2-mistral-tiny", "video");
    run(
        "videollama2-mistral-tiny",
        "video",
        meta["question"].as_str().unwrap(),
    );
}
