//! The decoded-picture type shared by every stage of the visual path.
//!
//! [`RgbImage`] is a plain 8-bit RGB raster, row-major, channels interleaved
//! (`HWC`): the byte of channel `c` of pixel `(x, y)` is
//! `data[(y * width + x) * 3 + c]`. It is what a video decoder, the still-image
//! loader ([`crate::image_file`]) and the Pillow-exact resizer ([`crate::resize`])
//! exchange, and what [`crate::image_processor`] consumes.

use crate::error::MediaError;

/// An 8-bit RGB image, `height × width × 3` bytes, row-major, channels interleaved.
#[derive(Clone, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `height * width * 3` bytes, `HWC` order.
    pub data: Vec<u8>,
}

impl std::fmt::Debug for RgbImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RgbImage")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("data_len", &self.data.len())
            .finish()
    }
}

impl RgbImage {
    /// Number of bytes an image of this size needs (`None` on overflow).
    pub fn byte_len(width: u32, height: u32) -> Option<usize> {
        (width as usize)
            .checked_mul(height as usize)
            .and_then(|n| n.checked_mul(3))
    }

    /// Wraps an `HWC` byte buffer, checking that its length is `width * height * 3`.
    pub fn from_raw(width: u32, height: u32, data: Vec<u8>) -> Result<Self, MediaError> {
        match Self::byte_len(width, height) {
            Some(n) if n == data.len() => Ok(Self {
                width,
                height,
                data,
            }),
            _ => Err(MediaError::InvalidImage(format!(
                "RGB buffer of {} bytes does not match {width}x{height}x3",
                data.len()
            ))),
        }
    }

    /// An image of the given size filled with one colour.
    pub fn filled(width: u32, height: u32, rgb: [u8; 3]) -> Self {
        let n = width as usize * height as usize;
        let mut data = Vec::with_capacity(n * 3);
        for _ in 0..n {
            data.extend_from_slice(&rgb);
        }
        Self {
            width,
            height,
            data,
        }
    }

    /// An all-black image (the reference's padding frame for short frame lists).
    pub fn black(width: u32, height: u32) -> Self {
        Self {
            width,
            height,
            data: vec![0; width as usize * height as usize * 3],
        }
    }

    /// `true` when `data.len() == width * height * 3`.
    pub fn is_consistent(&self) -> bool {
        Self::byte_len(self.width, self.height) == Some(self.data.len())
    }

    /// Returns an error unless the buffer length matches the dimensions.
    pub fn validate(&self) -> Result<(), MediaError> {
        if self.is_consistent() {
            Ok(())
        } else {
            Err(MediaError::InvalidImage(format!(
                "RGB buffer of {} bytes does not match {}x{}x3",
                self.data.len(),
                self.width,
                self.height
            )))
        }
    }

    /// The three bytes of pixel `(x, y)`. Panics when out of bounds.
    pub fn pixel(&self, x: u32, y: u32) -> [u8; 3] {
        let i = (y as usize * self.width as usize + x as usize) * 3;
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }

    /// Copies out the rectangle `[left, left+width) × [top, top+height)`; parts outside
    /// the image are filled with zeros (the way HF `center_crop` pads a too-small image).
    pub fn crop_or_pad(&self, left: i64, top: i64, width: u32, height: u32) -> RgbImage {
        let mut out = RgbImage::black(width, height);
        let (sw, sh) = (self.width as i64, self.height as i64);
        for oy in 0..height as i64 {
            let sy = top + oy;
            if sy < 0 || sy >= sh {
                continue;
            }
            // Overlapping x range.
            let x0 = (-left).clamp(0, width as i64);
            let x1 = (sw - left).clamp(0, width as i64);
            if x0 >= x1 {
                continue;
            }
            let src = ((sy * sw + left + x0) * 3) as usize;
            let dst = ((oy * width as i64 + x0) * 3) as usize;
            let n = ((x1 - x0) * 3) as usize;
            out.data[dst..dst + n].copy_from_slice(&self.data[src..src + n]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_raw_checks_length() {
        assert!(RgbImage::from_raw(2, 2, vec![0; 12]).is_ok());
        assert!(RgbImage::from_raw(2, 2, vec![0; 11]).is_err());
        assert!(RgbImage::from_raw(u32::MAX, u32::MAX, vec![]).is_err());
    }

    #[test]
    fn crop_or_pad_inside_and_outside() {
        let data: Vec<u8> = (0..4 * 3 * 3).map(|v| v as u8).collect();
        let img = RgbImage::from_raw(4, 3, data).unwrap();
        let c = img.crop_or_pad(1, 1, 2, 2);
        assert_eq!(c.pixel(0, 0), img.pixel(1, 1));
        assert_eq!(c.pixel(1, 1), img.pixel(2, 2));
        let p = img.crop_or_pad(-1, -1, 6, 5);
        assert_eq!(p.pixel(0, 0), [0, 0, 0]);
        assert_eq!(p.pixel(1, 1), img.pixel(0, 0));
        assert_eq!(p.pixel(4, 3), img.pixel(3, 2));
        assert_eq!(p.pixel(5, 4), [0, 0, 0]);
    }
}
