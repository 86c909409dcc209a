//! The instruction each benchmark puts to the model, as VideoLLaMA2's evaluation scripts
//! (`videollama2/eval/inference_*.py`, main and audio_visual branches) write it. The
//! family's own conversation template then wraps it (`Pipeline::answer`: the media
//! placeholder, system message and roles), as `mm_infer` does for VideoLLaMA2.
//!
//! Per family ([`PromptPolicy`]):
//! * VideoLLaMA2 — the scripts' instructions below, verbatim.
//! * Video-ChatGPT — its quantitative evaluation (`run_inference_activitynet_qa.py`) puts
//!   the bare question, the same as VideoLLaMA2's open-ended scripts; its answer file is
//!   one JSON list (see `answer_file.rs`). It has no multiple-choice script: the
//!   VideoLLaMA2 instructions are used.
//! * Video-LLaMA, MiniGPT4-Video, Chat-UniVi — no published script for these formats in
//!   their repositories: the same instruction text, in the family's own default
//!   question format (its template, its frame/subtitle interleaving).

use crate::{EvalItem, Format};

/// Whose evaluation conventions the prompts and answer files follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromptPolicy {
    VideoLlama2,
    VideoChatGpt,
    /// Another family, by its `Family::name()`.
    FamilyDefault(String),
}

impl PromptPolicy {
    /// From `Pipeline::family`'s name (`None`: a VideoLLaMA2 checkpoint).
    pub fn for_family(name: Option<&str>) -> Self {
        match name {
            None => PromptPolicy::VideoLlama2,
            Some("video-chatgpt") => PromptPolicy::VideoChatGpt,
            Some(other) => PromptPolicy::FamilyDefault(other.to_string()),
        }
    }
    pub fn name(&self) -> &str {
        match self {
            PromptPolicy::VideoLlama2 => "videollama2",
            PromptPolicy::VideoChatGpt => "video-chatgpt",
            PromptPolicy::FamilyDefault(n) => n,
        }
    }
    pub fn parse(name: &str) -> Self {
        match name {
            "videollama2" => PromptPolicy::VideoLlama2,
            other => Self::for_family(Some(other)),
        }
    }
}

const LETTER_TAIL: &str =
    "Answer with the option's letter from the given choices directly and only give the best option.";

fn letter(i: usize) -> char {
    (b'A' + i.min(25) as u8) as char
}

/// The user turn for `item` (the same for every policy; see the module docs).
pub fn instruction(format: Format, item: &EvalItem, _policy: &PromptPolicy) -> String {
    let q = &item.question;
    match format {
        Format::Mvbench => {
            let mut options = String::new();
            for (i, c) in item.candidates.iter().enumerate() {
                options.push_str(&format!("({}) {c}\n", letter(i)));
            }
            format!("Question: {q}\nOptions:\n{options}{LETTER_TAIL}")
        }
        Format::Egoschema => {
            let mut s = format!(
                "Select the best answer to the following multiple-choice question based on the video.\n{q}\nOptions:\n"
            );
            for (i, c) in item.candidates.iter().enumerate() {
                s.push_str(&format!("({}) {c}\n", letter(i)));
            }
            s.push_str(LETTER_TAIL);
            s.push_str(" The best answer is: ");
            s
        }
        Format::PerceptionTest => {
            let mut s = format!("Question: {q}\nOptions:\n");
            for (i, c) in item.candidates.iter().take(3).enumerate() {
                s.push_str(&format!("({}) {c}\n", letter(i)));
            }
            s.push_str(LETTER_TAIL);
            s
        }
        Format::Videomme => {
            let mut s = String::from(
                "Select the best answer to the following multiple-choice question based on the video. Respond with only the letter (A, B, C, or D) of the correct option.\n",
            );
            s.push_str(&format!("{q}\n"));
            for c in &item.candidates {
                s.push_str(&format!("{c}\n"));
            }
            s.push_str(LETTER_TAIL);
            s.push_str(" The best answer is: ");
            s
        }
        Format::ActivitynetQa | Format::MsvdQa | Format::MsrvttQa | Format::Avqa => q.clone(),
        Format::ClothoAqa => format!("Question: {q}\nAnswer the question using a single word."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Kind, MediaSpec};

    fn item(q: &str, c: &[&str]) -> EvalItem {
        EvalItem {
            id: "t/0".into(),
            order: 0,
            task: "t".into(),
            media: MediaSpec::default(),
            question: q.into(),
            candidates: c.iter().map(|s| s.to_string()).collect(),
            answer: None,
            answer_index: None,
            kind: Kind::MultipleChoice,
            extra: serde_json::Value::Null,
        }
    }

    #[test]
    fn mvbench_and_videomme_text() {
        let p = PromptPolicy::VideoLlama2;
        assert_eq!(
            instruction(Format::Mvbench, &item("What moves?", &["a ball", "a cube"]), &p),
            "Question: What moves?\nOptions:\n(A) a ball\n(B) a cube\nAnswer with the option's letter from the given choices directly and only give the best option."
        );
        assert_eq!(
            instruction(Format::Videomme, &item("Q?", &["A. x.", "B. y."]), &p),
            "Select the best answer to the following multiple-choice question based on the video. Respond with only the letter (A, B, C, or D) of the correct option.\nQ?\nA. x.\nB. y.\nAnswer with the option's letter from the given choices directly and only give the best option. The best answer is: "
        );
        assert_eq!(
            instruction(Format::ClothoAqa, &item("Is it raining?", &[]), &p),
            "Question: Is it raining?\nAnswer the question using a single word."
        );
    }
}
