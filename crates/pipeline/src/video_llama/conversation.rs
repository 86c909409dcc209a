//! Video-LLaMA's conversation templates (`conversation_video.py`), as data + one renderer.
//!
//! ```text
//! media kind ─► user-turn prefix (with `<ImageHere>` markers) + system text
//! turns ─► Conversation::prompt() ─► split on `<ImageHere>` ─► segments (BOS on the first)
//! ```
//! The marker is never embedded: each media block goes between two segments, in the order
//! the markers appear (audio before video in the audio-visual turn).

use serde::Serialize;

/// The marker the reference splits the prompt on.
pub const IMAGE_HERE: &str = "<ImageHere>";

/// `Chat.upload_video`'s audio-visual user turn, byte for byte: the source string continues
/// over two lines with a backslash, so each continuation keeps 16 spaces of indentation.
pub const AUDIO_VIDEO_MESSAGE: &str = "Close your eyes, open your ears and you imagine only based on the sound that: <ImageHere>.                 Close your ears, open your eyes and you see that <Video><ImageHere></Video>.                  Now answer my question based on what you have just seen and heard.";

/// The audio sentence of [`AUDIO_VIDEO_MESSAGE`]: our audio-only turn (the reference has no
/// audio-only mode; the golden fixture's `audio` case uses exactly this).
pub const AUDIO_MESSAGE: &str =
    "Close your eyes, open your ears and you imagine only based on the sound that: <ImageHere>.";

/// The system text the demo sets when an image is uploaded (both templates).
pub const IMAGE_SYSTEM: &str = "You are able to understand the visual content that the user provides. Follow the instructions carefully and explain your answers in detail.";

/// `conv_llava_llama_2.system`: the default of the LLaMA-2 template (text-only chats).
pub const LLAMA_2_SYSTEM: &str = "You are a helpful language and vision assistant. You are able to understand the visual content that the user provides, and assist the user with a variety of tasks using natural language.";

/// Which template renders the conversation (`demo_*.py --model_type vicuna|llama_v2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConvTemplate {
    /// `default_conversation`: `###Human: …###Assistant:`.
    Vicuna,
    /// `conv_llava_llama_2`: `[INST] <<SYS>>…<</SYS>>\n\n… [/INST]`.
    Llama2,
}

impl std::str::FromStr for ConvTemplate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "vicuna" | "default" | "default_conversation" => Ok(ConvTemplate::Vicuna),
            "llama_2" | "llama2" | "llama_v2" | "conv_llava_llama_2" => Ok(ConvTemplate::Llama2),
            other => Err(format!(
                "unknown conversation template {other:?}; use vicuna or llama_2"
            )),
        }
    }
}

impl std::fmt::Display for ConvTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ConvTemplate::Vicuna => "vicuna",
            ConvTemplate::Llama2 => "llama_2",
        })
    }
}

impl ConvTemplate {
    /// The demo's `--model_type` rule, read from `eval_config.yaml`'s `model_type`
    /// (`pretrain_vicuna` → Vicuna, `pretrain_llama_v2` → LLaMA-2).
    pub fn from_model_type(model_type: &str) -> Self {
        let t = model_type.to_ascii_lowercase();
        if t.contains("llama_v2") || t.contains("llama2") || t.contains("llama_2") {
            ConvTemplate::Llama2
        } else {
            ConvTemplate::Vicuna
        }
    }

    fn roles(self) -> (&'static str, &'static str) {
        match self {
            ConvTemplate::Vicuna => ("Human", "Assistant"),
            ConvTemplate::Llama2 => ("USER", "ASSISTANT"),
        }
    }

    fn default_system(self) -> &'static str {
        match self {
            ConvTemplate::Vicuna => "",
            ConvTemplate::Llama2 => LLAMA_2_SYSTEM,
        }
    }

    /// Single-token stop sequences and pairs (`Chat.answer`'s `StoppingCriteriaSub`). The
    /// Vicuna ids are LLaMA's two spellings of `###`, hard-coded by the reference whatever
    /// the tokenizer; LLaMA-2 stops on `</s>` = 2.
    pub fn stop_sequences(self) -> Vec<Vec<u32>> {
        match self {
            ConvTemplate::Vicuna => vec![vec![835], vec![2277, 29937]],
            ConvTemplate::Llama2 => vec![vec![2]],
        }
    }

    /// `Chat.answer`'s clean-up of the decoded output.
    pub fn clean_answer(self, decoded: &str) -> String {
        match self {
            ConvTemplate::Vicuna => {
                let before_stop = decoded.split("###").next().unwrap_or("");
                before_stop
                    .rsplit("Assistant:")
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_string()
            }
            ConvTemplate::Llama2 => {
                let before_stop = decoded.split("</s>").next().unwrap_or("");
                before_stop
                    .rsplit("ASSISTANT:")
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_string()
            }
        }
    }
}

/// What the first user turn carries, as the demo's upload functions write it.
#[derive(Debug, Clone, PartialEq)]
pub enum MediaTurn {
    None,
    /// `upload_video_without_audio`: the frame timestamp message follows the block.
    Video {
        timestamp_message: String,
    },
    /// `upload_video` with a sound track: audio block, then video block.
    VideoWithAudio,
    Image,
    Audio,
}

impl MediaTurn {
    /// The user-turn text before the question, and the system text the demo sets.
    fn prefix_and_system(&self, template: ConvTemplate) -> (Option<String>, &'static str) {
        match self {
            MediaTurn::None => (None, template.default_system()),
            MediaTurn::Video { timestamp_message } => (
                Some(format!("<Video>{IMAGE_HERE}</Video> {timestamp_message}")),
                "",
            ),
            MediaTurn::VideoWithAudio => (Some(AUDIO_VIDEO_MESSAGE.to_string()), ""),
            MediaTurn::Image => (Some(format!("<Image>{IMAGE_HERE}</Image> ")), IMAGE_SYSTEM),
            MediaTurn::Audio => (Some(AUDIO_MESSAGE.to_string()), ""),
        }
    }
}

/// Render `turns` (user, assistant, user, …, ending with a user turn) the way
/// `Chat.upload_*` + `Chat.ask` + `Chat.answer` build `conv.get_prompt()`.
pub fn render(template: ConvTemplate, media: &MediaTurn, turns: &[String]) -> String {
    let (prefix, system) = media.prefix_and_system(template);
    let (user, assistant) = template.roles();
    let mut messages: Vec<(&str, Option<String>)> = Vec::new();
    for (i, turn) in turns.iter().enumerate() {
        if i == 0 {
            // `Chat.ask` joins the question to the media turn with one space.
            let text = match &prefix {
                Some(p) => format!("{p} {turn}"),
                None => turn.clone(),
            };
            messages.push((user, Some(text)));
        } else {
            messages.push((
                if i % 2 == 0 { user } else { assistant },
                Some(turn.clone()),
            ));
        }
    }
    messages.push((assistant, None));
    match template {
        ConvTemplate::Vicuna => {
            let sep = "###";
            let mut out = format!("{system}{sep}");
            for (role, message) in &messages {
                match message {
                    Some(m) => out.push_str(&format!("{role}: {m}{sep}")),
                    None => out.push_str(&format!("{role}:")),
                }
            }
            out
        }
        ConvTemplate::Llama2 => {
            let (sep, sep2) = ("<s>", "</s>");
            let mut out = String::new();
            for (i, (_, message)) in messages.iter().enumerate() {
                let Some(m) = message else { continue };
                let m = if i == 0 {
                    format!("<<SYS>>\n{system}\n<</SYS>>\n\n{m}")
                } else {
                    m.clone()
                };
                if i % 2 == 0 {
                    out.push_str(&format!("{sep}[INST] {m} [/INST]"));
                } else {
                    out.push_str(&format!(" {m} {sep2}"));
                }
            }
            // `ret.lstrip(self.sep)`: strips any leading '<', 's', '>' characters.
            out.trim_start_matches(['<', 's', '>']).to_string()
        }
    }
}

/// `prompt.split('<ImageHere>')`.
pub fn split_segments(prompt: &str) -> Vec<&str> {
    prompt.split(IMAGE_HERE).collect()
}

/// The timestamp message of `load_video(..., return_msg=True)`.
pub fn timestamp_message(timestamps: &[String]) -> String {
    format!(
        "The video contains {} frames sampled at {} seconds. ",
        timestamps.len(),
        timestamps.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama2_multi_turn_and_lstrip() {
        let p = render(
            ConvTemplate::Llama2,
            &MediaTurn::None,
            &["hi".to_string(), "hello".to_string(), "again".to_string()],
        );
        assert_eq!(
            p,
            format!("[INST] <<SYS>>\n{LLAMA_2_SYSTEM}\n<</SYS>>\n\nhi [/INST] hello </s><s>[INST] again [/INST]")
        );
    }

    #[test]
    fn vicuna_video_turn_has_two_spaces_before_the_question() {
        let msg = timestamp_message(&["0.0".into(), "1.2".into()]);
        let p = render(
            ConvTemplate::Vicuna,
            &MediaTurn::Video {
                timestamp_message: msg,
            },
            &["Q?".to_string()],
        );
        assert_eq!(p, "###Human: <Video><ImageHere></Video> The video contains 2 frames sampled at 0.0, 1.2 seconds.  Q?###Assistant:");
        assert_eq!(split_segments(&p).len(), 2);
    }

    #[test]
    fn answers_are_cleaned_like_chat_answer() {
        assert_eq!(
            ConvTemplate::Vicuna.clean_answer(" Assistant: a cat ###Human: x"),
            "a cat"
        );
        assert_eq!(ConvTemplate::Llama2.clean_answer(" a dog </s>"), "a dog");
        assert_eq!(
            ConvTemplate::from_model_type("pretrain_llama_v2"),
            ConvTemplate::Llama2
        );
        assert_eq!(
            ConvTemplate::from_model_type("pretrain_vicuna"),
            ConvTemplate::Vicuna
        );
    }
}
