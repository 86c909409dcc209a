//! The option-letter parsers against the reference's own: `data/parser_cases.json` holds
//! 400 random outputs (letters, brackets, commas, "answer", option words) and the index
//! the reference scripts' parsing code returned for each, run with CPython 3 (MVBench with
//! 4 and 2 options `red, blue, green, pink`; EgoSchema; Perception Test with options
//! `Red, blue, B`; Video-MME with choices `A. 3.`, `B. four.`, `C. red.`, `D. blue sky.`).

use videollama_eval::score::{
    parse_egoschema, parse_mvbench, parse_perception_test, parse_videomme,
};

fn v(xs: &[&str]) -> Vec<String> {
    xs.iter().map(|s| s.to_string()).collect()
}

#[test]
fn parsers_agree_with_the_reference_on_random_outputs() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/parser_cases.json"
    ))
    .unwrap();
    let cases: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    let opts4 = v(&["red", "blue", "green", "pink"]);
    let opts3 = v(&["Red", "blue", "B"]);
    let choices = v(&["A. 3.", "B. four.", "C. red.", "D. blue sky."]);
    let mut bad = Vec::new();
    for c in &cases {
        let out = c["out"].as_str().unwrap();
        let got = [
            parse_mvbench(out, &opts4),
            parse_mvbench(out, &opts4[..2]),
            parse_egoschema(out),
            parse_perception_test(out, &opts3),
            parse_videomme(out, &choices),
        ];
        let want = ["mv4", "mv2", "ego", "pt", "vm"].map(|k| c[k].as_u64().unwrap() as usize);
        if got != want {
            bad.push(format!("{out:?}: got {got:?}, reference {want:?}"));
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} differ:\n{}",
        bad.len(),
        cases.len(),
        bad.join("\n")
    );
}
