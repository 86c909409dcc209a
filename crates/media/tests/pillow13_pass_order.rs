//! The pass order of Pillow 13's two-pass BICUBIC resize, as `qwen2_vl::pillow13_pass_order`
//! guesses it, against Pillow 13.0.0's own output (`tests/data/pillow13_order/`, made by its
//! `make.py`): for every case the guessed order reproduces Pillow's bytes exactly. The cases
//! include shapes where only the horizontal-first order matches and shapes where only the
//! vertical-first one does, so a wrong guess fails.

use videollama_media::frame::RgbImage;
use videollama_media::qwen2_vl::pillow13_pass_order;
use videollama_media::resize::{resize_with_order, Filter, PassOrder};

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn guessed_order_reproduces_pillow_13() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/pillow13_order/cases.json"
    );
    let data: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let (mut only_h, mut only_v) = (0, 0);
    for c in data["cases"].as_array().unwrap() {
        let g = |k: &str| c[k].as_u64().unwrap() as u32;
        let (w, h, ow, oh) = (g("w"), g("h"), g("ow"), g("oh"));
        let img = RgbImage {
            width: w,
            height: h,
            data: hex(c["in"].as_str().unwrap()),
        };
        let want = hex(c["out"].as_str().unwrap());
        let run = |order| {
            resize_with_order(&img, ow, oh, Filter::Bicubic, order)
                .unwrap()
                .data
                == want
        };
        let (hf, vf) = (
            run(PassOrder::HorizontalFirst),
            run(PassOrder::VerticalFirst),
        );
        only_h += (hf && !vf) as usize;
        only_v += (vf && !hf) as usize;
        let guess = pillow13_pass_order((w as usize, h as usize), (ow as usize, oh as usize));
        assert!(
            run(guess),
            "{w}×{h} → {ow}×{oh}: {guess:?} differs from Pillow (horizontal-first matches: {hf}, \
             vertical-first: {vf})"
        );
    }
    assert!(only_h > 0 && only_v > 0, "cases must tell the orders apart");
}
