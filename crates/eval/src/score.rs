//! Turning a model's text into a prediction, exactly as each reference script parses it.
//!
//! The scripts use `re.findall` and take the first match, then `.strip()` and
//! `.strip('()')` and look the rest up in the option letters; on any failure they fall
//! back (option text contained in the answer, or the answer equal to an option) and
//! finally predict index 2. The patterns, written out by hand here (no regex crate):
//!
//! | format          | pattern                           | fallback                          |
//! |-----------------|-----------------------------------|-----------------------------------|
//! | MVBench         | `[\(,\ ]*[A-X][\),\ ]*` (X: last)  | first option inside the answer    |
//! | EgoSchema       | `[\(\ ]*[A-E][\)\ ]*`              | —                                 |
//! | Perception Test | `\(*[A-C]\)*`                      | answer equal to an option         |
//! | Video-MME       | `[\(\ \[]*([A-D])[\)\.\ \]]*`      | option (or digit word) inside     |
//!
//! All first delete the words `answer` and `Answer`. Open-ended formats: AVQA and
//! Clotho-AQA score `answer.upper() == pred.rstrip(' .').upper()`; ActivityNet / MSVD /
//! MSRVTT-QA need a judge (`judge.rs`).

use crate::Format;

/// The reference's answer when nothing can be parsed.
pub const FALLBACK_INDEX: usize = 2;

/// The first match of `[P]*[lo-hi][S]*` in `s` (leftmost; both runs greedy). Returns the
/// whole match and the letter.
fn find_letter(
    s: &[char],
    prefix: &str,
    lo: char,
    hi: char,
    suffix: &str,
) -> Option<(String, char)> {
    for p in 0..s.len() {
        let mut j = p;
        while j < s.len() && prefix.contains(s[j]) {
            j += 1;
        }
        if j < s.len() && (lo..=hi).contains(&s[j]) {
            let mut k = j + 1;
            while k < s.len() && suffix.contains(s[k]) {
                k += 1;
            }
            return Some((s[p..k].iter().collect(), s[j]));
        }
    }
    None
}

/// Python's `m.strip().strip('()')`.
fn strip_py(m: &str) -> &str {
    m.trim_matches(|c: char| c.is_whitespace())
        .trim_matches(|c| c == '(' || c == ')')
}

fn clean(output: &str) -> String {
    output.replace("answer", "").replace("Answer", "")
}

fn letters(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| ((b'A' + i.min(25) as u8) as char).to_string())
        .collect()
}

/// MVBench's `mvbench_dump`.
pub fn parse_mvbench(output: &str, candidates: &[String]) -> usize {
    let out = clean(output);
    let chars: Vec<char> = out.chars().collect();
    let letters = letters(candidates.len().max(1));
    let hi = letters.last().and_then(|l| l.chars().next()).unwrap_or('A');
    match find_letter(&chars, "(, ", 'A', hi, "), ") {
        Some((m, _)) => letters
            .iter()
            .position(|l| l == strip_py(&m))
            .unwrap_or(FALLBACK_INDEX),
        None => {
            let lower = out.to_lowercase();
            candidates
                .iter()
                .position(|c| lower.contains(&c.to_lowercase()))
                .unwrap_or(FALLBACK_INDEX)
        }
    }
}

/// EgoSchema's `egoschema_dump`.
pub fn parse_egoschema(output: &str) -> usize {
    let out = clean(output);
    let chars: Vec<char> = out.chars().collect();
    find_letter(&chars, "( ", 'A', 'E', ") ")
        .and_then(|(m, _)| letters(5).iter().position(|l| l == strip_py(&m)))
        .unwrap_or(FALLBACK_INDEX)
}

/// Perception Test's inline parser (`letters = ['(A)', '(B)', '(C)']`).
pub fn parse_perception_test(output: &str, options: &[String]) -> usize {
    let out = clean(output);
    let chars: Vec<char> = out.chars().collect();
    if let Some((m, _)) = find_letter(&chars, "(", 'A', 'C', ")") {
        let wrapped = format!("({})", strip_py(&m));
        if let Some(i) = ["(A)", "(B)", "(C)"].iter().position(|l| *l == wrapped) {
            return i;
        }
    }
    let lower = out.to_lowercase();
    options
        .iter()
        .position(|o| o.to_lowercase() == lower)
        .unwrap_or(FALLBACK_INDEX)
}

/// The option text of a Video-MME choice, `re.findall('[A-D]\. (.*).', c)[0]`; the whole
/// choice when the pattern does not match (the reference would raise).
pub fn videomme_option(choice: &str) -> String {
    let chars: Vec<char> = choice.chars().collect();
    for p in 0..chars.len().saturating_sub(2) {
        if ('A'..='D').contains(&chars[p]) && chars[p + 1] == '.' && chars[p + 2] == ' ' {
            // `(.*).`: greedy up to the line's end, then give one character back.
            let rest: Vec<char> = chars[p + 3..]
                .iter()
                .take_while(|c| **c != '\n')
                .copied()
                .collect();
            if !rest.is_empty() {
                return rest[..rest.len() - 1].iter().collect();
            }
        }
    }
    choice.to_string()
}

/// Video-MME's `videomme_dump`: the predicted letter's index.
pub fn parse_videomme(output: &str, choices: &[String]) -> usize {
    let out = clean(output);
    let chars: Vec<char> = out.chars().collect();
    if let Some((_, letter)) = find_letter(&chars, "( [", 'A', 'D', "). ]") {
        return (letter as u8 - b'A') as usize;
    }
    let lower = out.to_lowercase();
    const WORDS: [&str; 10] = [
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    ];
    for (i, c) in choices.iter().enumerate() {
        let opt = videomme_option(c);
        let word = match opt.as_bytes() {
            [d @ b'0'..=b'9'] => WORDS[(d - b'0') as usize].to_string(),
            _ => opt.clone(),
        };
        if lower.contains(&opt.to_lowercase()) || lower.contains(&word.to_lowercase()) {
            return i;
        }
    }
    FALLBACK_INDEX
}

/// The predicted option index for a multiple-choice format.
pub fn parse_choice(format: Format, output: &str, candidates: &[String]) -> usize {
    match format {
        Format::Egoschema => parse_egoschema(output),
        Format::PerceptionTest => parse_perception_test(output, candidates),
        Format::Videomme => parse_videomme(output, candidates),
        _ => parse_mvbench(output, candidates),
    }
}

/// AVQA / Clotho-AQA: `answer.upper() == pred.rstrip(' .').upper()`.
pub fn exact_match(answer: &str, pred: &str) -> bool {
    answer.to_uppercase() == pred.trim_end_matches([' ', '.']).to_uppercase()
}

/// Clotho-AQA's yes/no subset: `answer.lower() in ["yes", "no"]`, scored on
/// `pred.lower()` (no stripping, as the reference).
pub fn binary_match(answer: &str, pred: &str) -> Option<bool> {
    let a = answer.to_lowercase();
    (a == "yes" || a == "no").then(|| a == pred.to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(xs: &[&str]) -> Vec<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn mvbench_parser_quirks() {
        let c = v(&["red", "blue", "green", "pink"]);
        assert_eq!(parse_mvbench("(B) blue", &c), 1);
        assert_eq!(parse_mvbench("Answer: D", &c), 3);
        assert_eq!(parse_mvbench("The answer is C.", &c), 2);
        // "The" contains no A–D capital; " C." matches ` C` then strip → "C".
        assert_eq!(parse_mvbench("it is (A)", &c), 0);
        // ", B," keeps its commas after strip(): not a letter → the reference's 2.
        assert_eq!(parse_mvbench("x, B, y", &c), 2);
        // No capital letter in range: the first option text found in the output.
        assert_eq!(parse_mvbench("it was green", &c), 2);
        assert_eq!(parse_mvbench("it was pink", &c), 3);
        assert_eq!(parse_mvbench("nothing", &c), 2);
        // Capitals beyond the last letter don't match ([A-B] with two options).
        assert_eq!(parse_mvbench("Cyan blue", &v(&["red", "blue"])), 1);
        // "Because": B inside a word matches, as in the reference.
        assert_eq!(parse_mvbench("Because", &c), 1);
    }

    #[test]
    fn egoschema_perception_videomme() {
        assert_eq!(parse_egoschema("The best answer is: (E)"), 4);
        assert_eq!(parse_egoschema("none"), 2);
        assert_eq!(parse_egoschema("A)"), 0);
        let o = v(&["cup", "pen", "box"]);
        assert_eq!(parse_perception_test("((B))", &o), 1);
        assert_eq!(parse_perception_test("Pen", &o), 1);
        assert_eq!(parse_perception_test("a pen", &o), 2);
        let ch = v(&["A. 3.", "B. 4.", "C. red.", "D. blue."]);
        assert_eq!(videomme_option("A. 3."), "3");
        assert_eq!(parse_videomme("[D].", &ch), 3);
        assert_eq!(parse_videomme("four", &ch), 1);
        assert_eq!(parse_videomme("it is red", &ch), 2);
        assert_eq!(parse_videomme("xyz", &ch), 2);
    }

    #[test]
    fn exact_and_binary() {
        assert!(exact_match("Yes", "yes. "));
        assert!(!exact_match("yes", "yes!"));
        assert_eq!(binary_match("no", "No"), Some(true));
        assert_eq!(binary_match("no", "no."), Some(false));
        assert_eq!(binary_match("rain", "rain"), None);
    }
}
