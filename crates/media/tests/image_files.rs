//! Still-image loading: PIL-like RGB conversion, directory frames, and errors on
//! corrupt or oversized files.

mod common;

use std::path::{Path, PathBuf};

use common::golden;
use videollama_media::image_file::{
    decode_image_bytes, list_frame_files, load_frame_directory, load_image, ImageLimits,
};
use videollama_media::MediaError;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vl-media-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// A minimal PNG writer (stored/uncompressed zlib blocks), so the tests do not depend
/// on an encoder.
fn png(w: u32, h: u32, bit_depth: u8, color_type: u8, rows: &[Vec<u8>]) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, t: &[u8], d: &[u8]) {
        out.extend_from_slice(&(d.len() as u32).to_be_bytes());
        let mut td = t.to_vec();
        td.extend_from_slice(d);
        out.extend_from_slice(&td);
        out.extend_from_slice(&crc32(&td).to_be_bytes());
    }
    let mut raw = Vec::new();
    for r in rows {
        raw.push(0u8);
        raw.extend_from_slice(r);
    }
    // zlib: header, one stored block per 65535 bytes, adler32.
    let mut z = vec![0x78, 0x01];
    let chunks: Vec<&[u8]> = raw.chunks(65535).collect();
    for (i, c) in chunks.iter().enumerate() {
        z.push(if i + 1 == chunks.len() { 1 } else { 0 });
        z.extend_from_slice(&(c.len() as u16).to_le_bytes());
        z.extend_from_slice(&(!(c.len() as u16)).to_le_bytes());
        z.extend_from_slice(c);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &x in &raw {
        a = (a + x as u32) % 65521;
        b = (b + a) % 65521;
    }
    z.extend_from_slice(&((b << 16) | a).to_be_bytes());
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[bit_depth, color_type, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &z);
    chunk(&mut out, b"IEND", &[]);
    out
}

fn decode(bytes: &[u8]) -> Result<videollama_media::RgbImage, MediaError> {
    decode_image_bytes(bytes, Path::new("test.png"), ImageLimits::default())
}

#[test]
fn fixture_png_loads() {
    let img = load_image(golden("videollama2-mistral-tiny/inputs/image.png")).unwrap();
    assert_eq!(
        (img.width, img.height, img.data.len()),
        (80, 60, 80 * 60 * 3)
    );
}

#[test]
fn rgba_drops_alpha_like_pil() {
    // PIL convert('RGB') keeps the colour of fully transparent pixels.
    let bytes = png(2, 1, 8, 6, &[vec![200, 100, 50, 0, 1, 2, 3, 255]]);
    assert_eq!(decode(&bytes).unwrap().data, vec![200, 100, 50, 1, 2, 3]);
    // Grey + alpha: replicated grey, alpha dropped.
    let bytes = png(2, 1, 8, 4, &[vec![7, 0, 9, 128]]);
    assert_eq!(decode(&bytes).unwrap().data, vec![7, 7, 7, 9, 9, 9]);
}

#[test]
fn sixteen_bit_pngs_like_pil() {
    // Values checked with Pillow 13.0.0: RGB/RGBA/LA 16-bit keep the high byte,
    // 16-bit grey (mode I;16) clips at 255.
    let vals: [u16; 6] = [0x0000, 0x00ff, 0x0100, 0x12ab, 0x80ff, 0xffff];
    let rgb: Vec<u8> = vals
        .iter()
        .flat_map(|v| [v.to_be_bytes(), v.to_be_bytes(), v.to_be_bytes()].concat())
        .collect();
    let img = decode(&png(6, 1, 16, 2, &[rgb])).unwrap();
    let r: Vec<u8> = img.data.chunks(3).map(|p| p[0]).collect();
    assert_eq!(r, vec![0, 0, 1, 18, 128, 255]);
    let grey: Vec<u8> = vals.iter().flat_map(|v| v.to_be_bytes()).collect();
    let img = decode(&png(6, 1, 16, 0, &[grey])).unwrap();
    let r: Vec<u8> = img.data.chunks(3).map(|p| p[0]).collect();
    assert_eq!(r, vec![0, 255, 255, 255, 255, 255]);
    let la: Vec<u8> = vals
        .iter()
        .flat_map(|v| [v.to_be_bytes(), 0x1234u16.to_be_bytes()].concat())
        .collect();
    let img = decode(&png(6, 1, 16, 4, &[la])).unwrap();
    let r: Vec<u8> = img.data.chunks(3).map(|p| p[0]).collect();
    assert_eq!(r, vec![0, 0, 1, 18, 128, 255]);
}

#[test]
fn corrupt_and_oversized_files_are_errors() {
    let good = std::fs::read(golden("videollama2-mistral-tiny/inputs/image.png")).unwrap();
    // Truncated at every few bytes: never a panic, always an error.
    for cut in (0..good.len()).step_by(97) {
        assert!(decode(&good[..cut]).is_err(), "cut at {cut}");
    }
    // Flipped bytes in the compressed data: error or some image, but no panic.
    let mut bad = good.clone();
    for i in (60..bad.len()).step_by(13) {
        bad[i] ^= 0x5a;
    }
    let _ = decode(&bad);
    // Header claims 100000 x 100000 pixels.
    let huge = png(100_000, 100_000, 8, 2, &[]);
    match decode(&huge) {
        Err(MediaError::Dimensions { width, height, .. }) => {
            assert_eq!((width, height), (100_000, 100_000))
        }
        other => panic!("expected a Dimensions error, got {other:?}"),
    }
    // Tighter limits are honoured too.
    let small = ImageLimits {
        max_width: 10,
        max_height: 10,
        max_alloc: 1 << 20,
    };
    let e = decode_image_bytes(&good, Path::new("x.png"), small).unwrap_err();
    assert!(
        matches!(
            e,
            MediaError::Dimensions {
                width: 80,
                height: 60,
                ..
            }
        ),
        "{e}"
    );
    // Unsupported content names the file.
    let e = decode_image_bytes(
        b"GIF87a",
        Path::new("/tmp/clip.gif"),
        ImageLimits::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("/tmp/clip.gif"), "{e}");
}

#[test]
fn frame_directory_sorted_by_name() {
    let d = temp_dir("frames");
    // Names chosen so that byte order differs from numeric order and creation order.
    for (name, v) in [
        ("frame_10.png", 10u8),
        ("frame_02.png", 2),
        ("frame_1.png", 1),
        ("Zed.png", 99),
    ] {
        std::fs::write(d.join(name), png(1, 1, 8, 2, &[vec![v, v, v]])).unwrap();
    }
    std::fs::create_dir(d.join("subdir")).unwrap();
    let names: Vec<String> = list_frame_files(&d)
        .unwrap()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        vec!["Zed.png", "frame_02.png", "frame_1.png", "frame_10.png"]
    );
    let frames = load_frame_directory(&d, &[3, 0, 1]).unwrap();
    let v: Vec<u8> = frames.iter().map(|f| f.data[0]).collect();
    assert_eq!(v, vec![10, 99, 2]);
    assert!(load_frame_directory(&d, &[4]).is_err());
    std::fs::write(d.join("notes.txt"), b"not an image").unwrap();
    let e = load_frame_directory(&d, &[4]).unwrap_err();
    assert!(e.to_string().contains("notes.txt"), "{e}");
    let empty = temp_dir("empty");
    assert!(matches!(
        list_frame_files(&empty),
        Err(MediaError::EmptyDirectory { .. })
    ));
    let _ = std::fs::remove_dir_all(&d);
    let _ = std::fs::remove_dir_all(&empty);
}
