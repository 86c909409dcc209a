//! The optional judge for open-ended answers (ActivityNet / MSVD / MSRVTT-QA): any
//! OpenAI-compatible `POST {URL}/chat/completions` (`--judge-url`, none by default; a local
//! vLLM / llama.cpp / `videollama serve` works). The messages are the reference's
//! (`eval_video_oqa_activitynet.py`: system instructions, then question / correct answer /
//! predicted answer, asking for a `{'pred': 'yes'|'no', 'score': 0–5}` dict); sampling as
//! there (temperature 0.7, top_p 0.95, max_tokens 800). Accuracy is yes / (yes + no), the
//! score is the mean of `int(score)`.
//!
//! Verdicts are appended (fsync'd) to `OUT/judge.jsonl`, so a rerun only asks about items
//! without one. The client is plain HTTP/1.1 over `std::net` (no TLS: put an HTTPS service
//! behind a local proxy); an API key is read from the environment variable named by
//! `--judge-key-env`, never from the command line.

use crate::results::Prediction;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

pub const JUDGE_FILE: &str = "judge.jsonl";

#[derive(Debug, Clone)]
pub struct JudgeConfig {
    /// Base URL, e.g. `http://127.0.0.1:8000/v1`.
    pub url: String,
    pub model: String,
    pub api_key: Option<String>,
    pub timeout: Duration,
}

/// The judge's decision on one item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub id: String,
    pub yes: bool,
    pub score: f64,
    /// The judge's text.
    pub raw: String,
}

/// The reference's two messages.
pub fn messages(question: &str, answer: &str, pred: &str) -> serde_json::Value {
    let system = "You are an intelligent chatbot designed for evaluating the correctness of generative outputs for question-answer pairs. \
Your task is to compare the predicted answer with the correct answer and determine if they match meaningfully. Here's how you can accomplish the task:\
------\
##INSTRUCTIONS: \
- Focus on the meaningful match between the predicted answer and the correct answer.\n\
- Consider synonyms or paraphrases as valid matches.\n\
- Evaluate the correctness of the prediction compared to the answer.";
    let user = format!(
        "Please evaluate the following video-based question-answer pair:\n\n\
Question: {question}\n\
Correct Answer: {answer}\n\
Predicted Answer: {pred}\n\n\
Provide your evaluation only as a yes/no and score where the score is an integer value between 0 and 5, with 5 indicating the highest meaningful match. \
Please generate the response in the form of a Python dictionary string with keys 'pred' and 'score', where value of 'pred' is  a string of 'yes' or 'no' and value of 'score' is in INTEGER, not STRING.\
DO NOT PROVIDE ANY OTHER OUTPUT TEXT OR EXPLANATION. Only provide the Python dictionary string. \
For example, your response should look like this: {{'pred': 'yes', 'score': 4.8}}."
    );
    serde_json::json!([
        {"role": "system", "content": system},
        {"role": "user", "content": user},
    ])
}

/// `{'pred': 'yes', 'score': 4}` → (yes, 4.0): "yes" in pred → yes, else "no" in pred →
/// no (the reference's order), score truncated like `int()`.
pub fn parse_verdict(text: &str) -> Option<(bool, f64)> {
    let after = |key: &str| -> Option<&str> {
        let i = text
            .find(&format!("'{key}'"))
            .or_else(|| text.find(&format!("\"{key}\"")))?;
        let rest = &text[i + key.len() + 2..];
        let c = rest.find(':')?;
        Some(rest[c + 1..].trim_start())
    };
    let pred = after("pred")?;
    let q = pred.chars().next()?;
    let pred = if q == '\'' || q == '"' {
        pred[1..].split(q).next()?
    } else {
        pred.split([',', '}']).next()?
    }
    .to_lowercase();
    let yes = if pred.contains("yes") {
        true
    } else if pred.contains("no") {
        false
    } else {
        return None;
    };
    let score = after("score")?;
    let num: String = score
        .trim_start_matches(['\'', '"'])
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == '-')
        .collect();
    let score = num.parse::<f64>().ok()?.trunc();
    Some((yes, score))
}

/// `POST url` with a JSON body over plain HTTP/1.1; the JSON response body.
pub fn post_json(
    url: &str,
    api_key: Option<&str>,
    body: &serde_json::Value,
    timeout: Duration,
) -> Result<serde_json::Value> {
    let Some(rest) = url.strip_prefix("http://") else {
        bail!("judge URL {url:?}: only http:// is supported (put HTTPS behind a local proxy)");
    };
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    use std::net::ToSocketAddrs;
    let sock = addr
        .to_socket_addrs()
        .with_context(|| format!("judge URL {url:?}: cannot resolve {addr}"))?
        .next()
        .with_context(|| format!("judge URL {url:?}: no address for {addr}"))?;
    let mut s = std::net::TcpStream::connect_timeout(&sock, timeout)
        .with_context(|| format!("judge {url}: cannot connect"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let payload = serde_json::to_vec(body)?;
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/json\r\nAccept: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        payload.len()
    );
    if let Some(k) = api_key {
        head.push_str(&format!("Authorization: Bearer {k}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(&payload)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .with_context(|| format!("judge {url}: reading the response"))?;
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .with_context(|| format!("judge {url}: not an HTTP response"))?;
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let mut body = buf[split + 4..].to_vec();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("judge {url}: no status line"))?;
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    if status != 200 {
        bail!(
            "judge {url}: HTTP {status}: {}",
            String::from_utf8_lossy(&body)
                .chars()
                .take(300)
                .collect::<String>()
        );
    }
    serde_json::from_slice(&body).with_context(|| format!("judge {url}: the response is not JSON"))
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = b.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..i]).trim(), 16).unwrap_or(0);
        if size == 0 || i + 2 + size > b.len() {
            break;
        }
        out.extend_from_slice(&b[i + 2..i + 2 + size]);
        b = &b[(i + 4 + size).min(b.len())..];
    }
    out
}

/// Verdicts recorded in `dir/judge.jsonl` (torn last line ignored).
pub fn read_verdicts(dir: &Path) -> Result<HashMap<String, Verdict>> {
    let path = dir.join(JUDGE_FILE);
    if !path.exists() {
        return Ok(HashMap::new());
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let complete = text.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let mut out = HashMap::new();
    for (i, line) in text[..complete].lines().enumerate() {
        let v: Verdict = serde_json::from_str(line)
            .with_context(|| format!("{}: line {} is not a verdict", path.display(), i + 1))?;
        out.entry(v.id.clone()).or_insert(v);
    }
    Ok(out)
}

/// Ask the judge about every answered open-ended item without a verdict yet.
pub fn run(
    cfg: &JudgeConfig,
    dir: &Path,
    preds: &[Prediction],
) -> Result<HashMap<String, Verdict>> {
    let mut verdicts = read_verdicts(dir)?;
    let path = dir.join(JUDGE_FILE);
    // Keep whole lines only (a torn write from a killed run is cut off).
    if path.exists() {
        let text = std::fs::read_to_string(&path)?;
        let complete = text.rfind('\n').map(|i| i + 1).unwrap_or(0);
        if complete < text.len() {
            std::fs::write(&path, &text[..complete])?;
        }
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("{}: cannot open", path.display()))?;
    let endpoint = format!("{}/chat/completions", cfg.url.trim_end_matches('/'));
    for p in preds {
        let (Some(output), Some(answer)) = (&p.output, &p.answer) else {
            continue;
        };
        if verdicts.contains_key(&p.id) {
            continue;
        }
        let body = serde_json::json!({
            "model": cfg.model,
            "messages": messages(&p.question, answer, output),
            "temperature": 0.7,
            "max_tokens": 800,
            "top_p": 0.95,
            "frequency_penalty": 0,
            "presence_penalty": 0,
        });
        let reply = match post_json(&endpoint, cfg.api_key.as_deref(), &body, cfg.timeout) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("{}: {e:#}", p.id);
                continue;
            }
        };
        let text = reply
            .pointer("/choices/0/message/content")
            .and_then(|c| c.as_str())
            .unwrap_or_default()
            .to_string();
        let Some((yes, score)) = parse_verdict(&text) else {
            tracing::warn!("{}: the judge's reply is not a verdict: {text:?}", p.id);
            continue;
        };
        let v = Verdict {
            id: p.id.clone(),
            yes,
            score,
            raw: text,
        };
        let line = serde_json::to_string(&v)? + "\n";
        file.write_all(line.as_bytes())
            .and_then(|_| file.sync_data())?;
        verdicts.insert(v.id.clone(), v);
    }
    Ok(verdicts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_parse_like_the_reference() {
        assert_eq!(
            parse_verdict("{'pred': 'yes', 'score': 4}"),
            Some((true, 4.0))
        );
        assert_eq!(
            parse_verdict("{\"pred\": \"no\", \"score\": 1.8}"),
            Some((false, 1.0))
        );
        assert_eq!(parse_verdict("{'pred': 'maybe', 'score': 3}"), None);
        assert_eq!(parse_verdict("hello"), None);
    }
}
