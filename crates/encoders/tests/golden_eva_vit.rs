//! Parity of the EVA ViT-g (BLIP-2 flavour) and `ln_vision` with the PyTorch reference on the
//! tiny Video-LLaMA fixture (`tests/golden/video-llama-tiny`, see tests/golden/README.md).
//!
//! The ViT comes from `checkpoint/eva_vit_g.safetensors` (bare state dict, no prefix), `ln_vision`
//! from `checkpoint/blip2_pretrained_tiny.safetensors` (`ln_vision.*`), the head count from
//! `fixture.json` `dims.vit_heads`. For the `video` (8 frames) and `image` (1 frame) cases,
//! `expected:pixel_values` must give `debug:vit_out_before_ln_vision` (stored for `video` only)
//! and `expected:vision_features`.
//!
//! Tolerance (`videollama_testutil::assert_close`): max |a − b| ≤ 1e-4 · max(1, max |ref|)
//! (float32 CPU on both sides).

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use videollama_encoders::eva_vit::{EvaVit, EvaVitConfig, LnVision};
use videollama_testutil::{assert_close, golden, load_json, load_tensors};

const FIXTURE: &str = "video-llama-tiny";

fn checkpoint(file: &str) -> std::path::PathBuf {
    golden(&format!("{FIXTURE}/checkpoint/{file}"))
}

fn mmap(file: &str) -> VarBuilder<'static> {
    // SAFETY: the vendored fixture files are never modified while tests run.
    unsafe { VarBuilder::from_mmaped_safetensors(&[checkpoint(file)], DType::F32, &Device::Cpu) }
        .unwrap()
}

fn dims() -> serde_json::Value {
    load_json(&format!("{FIXTURE}/fixture.json"))["dims"].clone()
}

fn dim(name: &str) -> usize {
    dims()[name]
        .as_u64()
        .unwrap_or_else(|| panic!("fixture.json dims.{name}")) as usize
}

fn load() -> (EvaVit, LnVision) {
    let vb = mmap("eva_vit_g.safetensors");
    let cfg = EvaVitConfig::from_weights(&vb, dim("vit_heads"), None).unwrap();
    let vit = EvaVit::new(&cfg, vb).unwrap();
    let ln = LnVision::new(
        &cfg,
        mmap("blip2_pretrained_tiny.safetensors").pp("ln_vision"),
    )
    .unwrap();
    (vit, ln)
}

#[test]
fn config_from_weights_recovers_fixture_dims() {
    let vb = mmap("eva_vit_g.safetensors");
    let cfg = EvaVitConfig::from_weights(&vb, dim("vit_heads"), None).unwrap();
    let width = dim("vit_width");
    let want = EvaVitConfig {
        image_size: dim("img"),
        patch_size: 14,
        width,
        depth: dim("vit_depth"),
        num_heads: dim("vit_heads"),
        // The reference's `int(embed_dim · mlp_ratio)` with create_eva_vit_g's ratio.
        mlp_hidden: (width as f64 * 4.3637) as usize,
        layer_norm_eps: 1e-6,
        ln_vision_eps: 1e-5,
    };
    assert_eq!(cfg, want);
    assert_eq!(cfg.num_tokens(), 257);

    // Depth override: fewer blocks is the BLIP-2 "39 of 40" case; more than stored is an error.
    let one = EvaVitConfig::from_weights(&vb, dim("vit_heads"), Some(1)).unwrap();
    assert_eq!(one.depth, 1);
    assert_eq!(EvaVit::new(&one, vb.clone()).unwrap().num_blocks(), 1);
    assert!(EvaVitConfig::from_weights(&vb, dim("vit_heads"), Some(cfg.depth + 1)).is_err());
    // Heads that do not divide the width are rejected.
    assert!(EvaVitConfig::from_weights(&vb, width + 1, None).is_err());

    // Parameter count from the config alone vs the elements stored in the file.
    let stored: u64 =
        candle_core::safetensors::load(checkpoint("eva_vit_g.safetensors"), &Device::Cpu)
            .unwrap()
            .values()
            .map(|t| t.elem_count() as u64)
            .sum();
    assert_eq!(cfg.param_count(), stored);
}

/// The published ViT-g numbers, and its size re-derived independently from the key/shape table
/// of spec §0.1 (LAVIS `eva_vit_g.pth`): ~1.0B parameters (39 blocks as BLIP-2 runs them;
/// EVA-CLIP-g's 40 blocks give 1.011B).
#[test]
fn vit_g_param_count_is_about_one_billion() {
    let cfg = EvaVitConfig::vit_g();
    assert_eq!(
        (
            cfg.image_size,
            cfg.patch_size,
            cfg.width,
            cfg.depth,
            cfg.num_heads,
            cfg.mlp_hidden
        ),
        (224, 14, 1408, 39, 16, 6144)
    );
    let embeddings: Vec<Vec<u64>> = vec![
        vec![1, 1, 1408],      // cls_token
        vec![1, 257, 1408],    // pos_embed
        vec![1408, 3, 14, 14], // patch_embed.proj.weight
        vec![1408],            // patch_embed.proj.bias
    ];
    let block: Vec<Vec<u64>> = vec![
        vec![1408],
        vec![1408],       // norm1
        vec![4224, 1408], // attn.qkv.weight
        vec![1408],
        vec![1408], // attn.q_bias, attn.v_bias
        vec![1408, 1408],
        vec![1408], // attn.proj
        vec![1408],
        vec![1408], // norm2
        vec![6144, 1408],
        vec![6144], // mlp.fc1
        vec![1408, 6144],
        vec![1408], // mlp.fc2
    ];
    let count = |shapes: &[Vec<u64>]| {
        shapes
            .iter()
            .map(|s| s.iter().product::<u64>())
            .sum::<u64>()
    };
    let independent = |blocks: u64| count(&embeddings) + blocks * count(&block);
    assert_eq!(cfg.param_count(), independent(39));
    assert_eq!(cfg.param_count(), 985_894_528);
    assert_eq!(
        EvaVitConfig {
            depth: 40,
            ..cfg.clone()
        }
        .param_count(),
        1_011_143_296
    );
    let billions = cfg.param_count() as f64 / 1e9;
    assert!((0.95..1.05).contains(&billions), "{billions} B");
}

#[test]
fn golden_video_and_image_cases() {
    let (vit, ln) = load();
    for (case, frames) in [("video", 8), ("image", 1)] {
        let exp = load_tensors(&format!("{FIXTURE}/{case}/expected.safetensors"));
        let dbg = load_tensors(&format!("{FIXTURE}/{case}/debug.safetensors"));
        let pixels = &exp["pixel_values"];
        assert_eq!(pixels.dims(), &[frames, 3, 224, 224], "{case}");
        let before_ln = vit.forward(pixels).unwrap();
        assert_eq!(before_ln.dims(), &[frames, 257, vit.config().width]);
        match dbg.get("vit_out_before_ln_vision") {
            Some(want) => {
                assert_close(
                    &format!("{case}/vit_out_before_ln_vision"),
                    &before_ln,
                    want,
                );
            }
            None => assert_eq!(
                case, "image",
                "only the image case lacks the ViT debug tensor"
            ),
        }
        assert_close(
            &format!("{case}/vision_features (ln_vision)"),
            &ln.forward(&before_ln).unwrap(),
            &exp["vision_features"],
        );
        assert_close(
            &format!("{case}/vision_features (forward_with_ln)"),
            &vit.forward_with_ln(pixels, &ln).unwrap(),
            &exp["vision_features"],
        );
    }
}

/// Same ViT from the `.pth` twin (through candle's pickle reader) gives the same features.
#[test]
fn pth_twin_holds_the_same_tensors() {
    let pth: BTreeMap<String, Tensor> = candle_core::pickle::read_all(checkpoint("eva_vit_g.pth"))
        .unwrap()
        .into_iter()
        .collect();
    let st: BTreeMap<String, Tensor> =
        candle_core::safetensors::load(checkpoint("eva_vit_g.safetensors"), &Device::Cpu)
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(
        pth.keys().collect::<Vec<_>>(),
        st.keys().collect::<Vec<_>>(),
        "key names"
    );
    for (name, a) in &pth {
        let b = &st[name];
        assert_eq!(a.dims(), b.dims(), "{name}");
        assert_eq!(a.dtype(), b.dtype(), "{name}");
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(
            a == b,
            "{name}: values differ between .pth and .safetensors"
        );
    }

    // And a model built straight from the .pth reproduces the reference.
    let vb = VarBuilder::from_pth(checkpoint("eva_vit_g.pth"), DType::F32, &Device::Cpu).unwrap();
    let cfg = EvaVitConfig::from_weights(&vb, dim("vit_heads"), None).unwrap();
    let vit = EvaVit::new(&cfg, vb).unwrap();
    let exp = load_tensors(&format!("{FIXTURE}/image/expected.safetensors"));
    let ln = load().1;
    assert_close(
        "image/vision_features (from .pth)",
        &vit.forward_with_ln(&exp["pixel_values"], &ln).unwrap(),
        &exp["vision_features"],
    );
}

#[test]
fn bad_inputs_are_errors() {
    let (vit, _) = load();
    let dev = Device::Cpu;
    for shape in [
        vec![3usize, 224, 224], // no frame axis
        vec![1, 1, 224, 224],   // wrong channels
        vec![1, 3, 112, 112],   // wrong size (the reference asserts 224)
        vec![1, 3, 224, 238],   // not square
        vec![0, 3, 224, 224],   // no frames
    ] {
        let x = Tensor::zeros(shape.as_slice(), DType::F32, &dev).unwrap();
        assert!(vit.forward(&x).is_err(), "{shape:?}");
    }
    // A missing tensor is an error, not a panic.
    let empty = VarBuilder::from_tensors(Default::default(), DType::F32, &dev);
    assert!(EvaVitConfig::from_weights(&empty, 4, None).is_err());
    assert!(EvaVit::new(&EvaVitConfig::vit_g(), empty).is_err());
}

/// MiniGPT4-Video's fresh `ln_vision` (weight 1, bias 0) is a plain normalisation.
#[test]
fn identity_ln_vision_normalises() {
    let cfg = EvaVitConfig::vit_g();
    let ln = LnVision::identity(&cfg, &Device::Cpu).unwrap();
    let x = Tensor::arange(0f32, 2.0 * 1408.0, &Device::Cpu)
        .unwrap()
        .reshape((1, 2, 1408))
        .unwrap();
    let y = ln.forward(&x).unwrap();
    let mean = y.mean_keepdim(2).unwrap().abs().unwrap().max_all().unwrap();
    let var = y
        .sqr()
        .unwrap()
        .mean_keepdim(2)
        .unwrap()
        .flatten_all()
        .unwrap();
    assert!(mean.to_scalar::<f32>().unwrap() < 1e-4);
    for v in var.to_vec1::<f32>().unwrap() {
        assert!((v - 1.0).abs() < 1e-3, "{v}");
    }
    // Keeps the input dtype (the reference casts back after the f32 LayerNorm).
    let y16 = ln.forward(&x.to_dtype(DType::F16).unwrap()).unwrap();
    assert_eq!(y16.dtype(), DType::F16);
}
