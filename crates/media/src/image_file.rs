//! Still-image loading (PNG, JPEG, WebP, GIF first frame, BMP) into [`RgbImage`],
//! converting the way PIL's `Image.open(path).convert('RGB')` does.
//!
//! Conversion rules (checked against Pillow):
//! * RGB: unchanged. RGBA / LA: the alpha channel is **dropped**, not composited
//!   (PIL `RGBA → RGB` discards alpha). Palette images use the palette colour, also
//!   for the transparent index. Grayscale is replicated to the three channels.
//! * 16-bit RGB / RGBA / LA PNGs keep the high byte (PIL's `RGB;16B` unpacking).
//!   16-bit grayscale PNGs open in PIL as mode `I;16`, whose conversion to RGB
//!   **clips** at 255 (so almost every pixel is white); this is reproduced.
//!
//! Known differences from PIL: JPEG is decoded by the `image` crate's pure-Rust
//! decoder (zune-jpeg), not libjpeg-turbo, so decoded pixels can differ by a few
//! levels (measured against Pillow 13 on a 320×240 test picture: up to 3 levels on
//! ~10 % of the bytes with 4:2:0 chroma subsampling, up to 2 levels on ~0.5 % with
//! 4:4:4). PNG, BMP, GIF and lossless/lossy WebP matched Pillow byte for byte in the
//! same check. CMYK JPEGs are converted by the decoder's formula. For GIFs the first frame is
//! composited on a transparent canvas of the logical screen size (pixels outside the
//! first frame become black after dropping alpha), where PIL would use the background
//! palette entry.
//!
//! Inputs are bounded by [`ImageLimits`]; corrupt, truncated or oversized files give
//! a [`MediaError`] naming the file, never a panic.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageFormat, ImageReader};

use crate::error::{MediaError, Result};
use crate::frame::RgbImage;

/// The reference treats a directory of frames as a video at this frame rate.
pub const DIRECTORY_FPS: f64 = 3.0;

/// Upper bounds applied while decoding a still image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageLimits {
    /// Largest accepted width in pixels.
    pub max_width: u32,
    /// Largest accepted height in pixels.
    pub max_height: u32,
    /// Largest number of bytes the decoder may allocate.
    pub max_alloc: u64,
}

impl Default for ImageLimits {
    /// 16384 × 16384 pixels, 1 GiB of decoder memory.
    fn default() -> Self {
        Self {
            max_width: 16384,
            max_height: 16384,
            max_alloc: 1 << 30,
        }
    }
}

/// Loads a still image file as RGB (see the module docs for the conversion rules).
pub fn load_image(path: impl AsRef<Path>) -> Result<RgbImage> {
    load_image_with_limits(path, ImageLimits::default())
}

/// [`load_image`] with explicit limits.
pub fn load_image_with_limits(path: impl AsRef<Path>, limits: ImageLimits) -> Result<RgbImage> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| MediaError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode_image_bytes(&bytes, path, limits)
}

/// Decodes an in-memory image file; `path` is only used in error messages.
pub fn decode_image_bytes(bytes: &[u8], path: &Path, limits: ImageLimits) -> Result<RgbImage> {
    let decode_err = |message: String| MediaError::Decode {
        path: path.to_path_buf(),
        message,
    };
    let format = image::guess_format(bytes).map_err(|_| MediaError::UnsupportedFormat {
        path: path.to_path_buf(),
        message: "not a PNG, JPEG, WebP, GIF or BMP file".into(),
    })?;
    if !matches!(
        format,
        ImageFormat::Png
            | ImageFormat::Jpeg
            | ImageFormat::WebP
            | ImageFormat::Gif
            | ImageFormat::Bmp
    ) {
        return Err(MediaError::UnsupportedFormat {
            path: path.to_path_buf(),
            message: format!("{format:?} images are not supported"),
        });
    }
    // Read the header first so that absurd sizes are reported with their dimensions.
    let (w, h) = ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(|e| decode_err(e.to_string()))?;
    if w == 0 || h == 0 || w > limits.max_width || h > limits.max_height {
        return Err(MediaError::Dimensions {
            path: path.to_path_buf(),
            width: w,
            height: h,
            message: format!(
                "accepted sizes are 1..={} x 1..={}",
                limits.max_width, limits.max_height
            ),
        });
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut l = image::Limits::default();
    l.max_image_width = Some(limits.max_width);
    l.max_image_height = Some(limits.max_height);
    l.max_alloc = Some(limits.max_alloc);
    reader.limits(l);
    let img = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(le) => MediaError::Dimensions {
            path: path.to_path_buf(),
            width: w,
            height: h,
            message: le.to_string(),
        },
        other => decode_err(other.to_string()),
    })?;
    to_rgb_like_pil(img).map_err(decode_err)
}

/// Converts a decoded image to RGB following PIL's `convert('RGB')` (module docs).
fn to_rgb_like_pil(img: DynamicImage) -> std::result::Result<RgbImage, String> {
    let (w, h) = (img.width(), img.height());
    let n = w as usize * h as usize;
    let mut out = Vec::with_capacity(n * 3);
    match img {
        DynamicImage::ImageRgb8(b) => {
            return Ok(RgbImage {
                width: w,
                height: h,
                data: b.into_raw(),
            })
        }
        DynamicImage::ImageRgba8(b) => {
            for p in b.as_raw().chunks_exact(4) {
                out.extend_from_slice(&p[..3]);
            }
        }
        DynamicImage::ImageLuma8(b) => {
            for &v in b.as_raw() {
                out.extend_from_slice(&[v, v, v]);
            }
        }
        DynamicImage::ImageLumaA8(b) => {
            for p in b.as_raw().chunks_exact(2) {
                out.extend_from_slice(&[p[0], p[0], p[0]]);
            }
        }
        DynamicImage::ImageRgb16(b) => {
            out.extend(b.as_raw().iter().map(|&v| (v >> 8) as u8));
        }
        DynamicImage::ImageRgba16(b) => {
            for p in b.as_raw().chunks_exact(4) {
                out.extend(p[..3].iter().map(|&v| (v >> 8) as u8));
            }
        }
        DynamicImage::ImageLuma16(b) => {
            // PIL mode I;16 -> RGB clips instead of scaling.
            for &v in b.as_raw() {
                let c = v.min(255) as u8;
                out.extend_from_slice(&[c, c, c]);
            }
        }
        DynamicImage::ImageLumaA16(b) => {
            for p in b.as_raw().chunks_exact(2) {
                let c = (p[0] >> 8) as u8;
                out.extend_from_slice(&[c, c, c]);
            }
        }
        other => {
            // Float or future formats: fall back to the image crate's conversion.
            return Ok(RgbImage {
                width: w,
                height: h,
                data: other.to_rgb8().into_raw(),
            });
        }
    }
    if out.len() != n * 3 {
        return Err(format!("decoder returned {} bytes for {w}x{h}", out.len()));
    }
    Ok(RgbImage {
        width: w,
        height: h,
        data: out,
    })
}

/// The frame files of a directory "video", sorted by file name (the reference's
/// `sorted(os.listdir(path))`; byte order of the names, which for UTF-8 names is the
/// code-point order Python uses). Sub-directories are skipped (the reference would
/// fail on them). Errors when the directory cannot be read or holds no files.
pub fn list_frame_files(dir: impl AsRef<Path>) -> Result<Vec<PathBuf>> {
    let dir = dir.as_ref();
    let io = |source| MediaError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let p = entry.path();
        if p.is_dir() {
            continue;
        }
        files.push(p);
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    if files.is_empty() {
        return Err(MediaError::EmptyDirectory {
            path: dir.to_path_buf(),
        });
    }
    Ok(files)
}

/// Loads the frames at `indices` (positions in [`list_frame_files`] order) of a
/// directory "video".
pub fn load_frame_directory(dir: impl AsRef<Path>, indices: &[usize]) -> Result<Vec<RgbImage>> {
    let dir = dir.as_ref();
    let files = list_frame_files(dir)?;
    indices
        .iter()
        .map(|&i| {
            let f = files.get(i).ok_or_else(|| {
                MediaError::InvalidImage(format!(
                    "frame index {i} out of range: {} holds {} frames",
                    dir.display(),
                    files.len()
                ))
            })?;
            load_image(f)
        })
        .collect()
}

/// Loads every frame of a directory "video", in [`list_frame_files`] order.
pub fn load_all_frames(dir: impl AsRef<Path>) -> Result<Vec<RgbImage>> {
    list_frame_files(dir)?.iter().map(load_image).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_an_error_naming_the_file() {
        let p = Path::new("/nonexistent/frame.png");
        let e = decode_image_bytes(
            b"\x89PNG\r\n\x1a\n\0\0\0\rIHDRgarbage",
            p,
            ImageLimits::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/frame.png"), "{e}");
        let e = decode_image_bytes(b"hello world", p, ImageLimits::default()).unwrap_err();
        assert!(matches!(e, MediaError::UnsupportedFormat { .. }), "{e}");
        let e = load_image("/nonexistent/x.png").unwrap_err();
        assert!(matches!(e, MediaError::Io { .. }));
        assert!(e.to_string().contains("/nonexistent/x.png"));
    }
}
