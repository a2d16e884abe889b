//! Camera pixel formats to I420, each in one pass into a caller's (pooled)
//! buffer. YUYV goes through the `yuv` crate (SIMD, NEON on ARM). NV12 ->
//! I420 is a row copy plus a chroma de-interleave, which `yuv` does not
//! offer, so it is written here. MJPEG is decoded by `zune-jpeg` to YCbCr
//! (no colour conversion) into a scratch buffer and then subsampled 2x2.

use yuv::{BufferStoreMut, YuvPackedImage, YuvPlanarImageMut};

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{format} frame of {got} bytes is too short for {width}x{height} (needs {need})")]
    Short {
        format: &'static str,
        width: usize,
        height: usize,
        got: usize,
        need: usize,
    },
    #[error("{0}")]
    Yuv(String),
    #[error("MJPEG frame does not decode: {0}")]
    Jpeg(String),
    #[error("MJPEG frame is {got_w}x{got_h}, the stream was set up for {width}x{height}")]
    JpegSize {
        got_w: usize,
        got_h: usize,
        width: usize,
        height: usize,
    },
}

fn split_i420(out: &mut [u8], width: usize, height: usize) -> (&mut [u8], &mut [u8], &mut [u8]) {
    let cw = width.div_ceil(2);
    let ch = height.div_ceil(2);
    let (y, rest) = out.split_at_mut(width * height);
    let (u, rest) = rest.split_at_mut(cw * ch);
    (y, u, &mut rest[..cw * ch])
}

fn need(
    format: &'static str,
    got: usize,
    need: usize,
    w: usize,
    h: usize,
) -> Result<(), ConvertError> {
    if got < need {
        return Err(ConvertError::Short {
            format,
            width: w,
            height: h,
            got,
            need,
        });
    }
    Ok(())
}

/// Packed YUYV 4:2:2 (`stride` bytes per row) to packed I420.
pub fn yuyv_to_i420(
    src: &[u8],
    stride: usize,
    width: usize,
    height: usize,
    out: &mut [u8],
) -> Result<(), ConvertError> {
    need("YUYV", src.len(), stride * height, width, height)?;
    let cw = width.div_ceil(2);
    let (y, u, v) = split_i420(out, width, height);
    let mut planar = YuvPlanarImageMut {
        y_plane: BufferStoreMut::Borrowed(y),
        y_stride: width as u32,
        u_plane: BufferStoreMut::Borrowed(u),
        u_stride: cw as u32,
        v_plane: BufferStoreMut::Borrowed(v),
        v_stride: cw as u32,
        width: width as u32,
        height: height as u32,
    };
    let packed = YuvPackedImage {
        yuy: &src[..stride * height],
        yuy_stride: stride as u32,
        width: width as u32,
        height: height as u32,
    };
    yuv::yuyv422_to_yuv420(&mut planar, &packed).map_err(|e| ConvertError::Yuv(e.to_string()))
}

/// NV12 (luma plane, then interleaved CbCr; `stride` bytes per row of both) to packed I420.
pub fn nv12_to_i420(
    src: &[u8],
    stride: usize,
    width: usize,
    height: usize,
    out: &mut [u8],
) -> Result<(), ConvertError> {
    let (cw, ch) = (width.div_ceil(2), height.div_ceil(2));
    need("NV12", src.len(), stride * (height + ch), width, height)?;
    let (y, u, v) = split_i420(out, width, height);
    for row in 0..height {
        y[row * width..(row + 1) * width].copy_from_slice(&src[row * stride..row * stride + width]);
    }
    let uv = &src[stride * height..];
    for row in 0..ch {
        let line = &uv[row * stride..row * stride + 2 * cw];
        let (ur, vr) = (
            &mut u[row * cw..(row + 1) * cw],
            &mut v[row * cw..(row + 1) * cw],
        );
        for (i, pair) in line.chunks_exact(2).enumerate() {
            ur[i] = pair[0];
            vr[i] = pair[1];
        }
    }
    Ok(())
}

/// Decodes MJPEG frames to I420, reusing its scratch buffer.
pub struct MjpegDecoder {
    scratch: Vec<u8>,
}

impl Default for MjpegDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl MjpegDecoder {
    pub fn new() -> Self {
        MjpegDecoder {
            scratch: Vec::new(),
        }
    }

    pub fn decode(
        &mut self,
        jpeg: &[u8],
        width: usize,
        height: usize,
        out: &mut [u8],
    ) -> Result<(), ConvertError> {
        use zune_jpeg::zune_core::{
            bytestream::ZCursor, colorspace::ColorSpace, options::DecoderOptions,
        };
        let options = DecoderOptions::default().jpeg_set_out_colorspace(ColorSpace::YCbCr);
        let mut dec = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(jpeg), options);
        dec.decode_headers()
            .map_err(|e| ConvertError::Jpeg(format!("{e:?}")))?;
        let (got_w, got_h) = dec.dimensions().unwrap_or((0, 0));
        if (got_w, got_h) != (width, height) {
            return Err(ConvertError::JpegSize {
                got_w,
                got_h,
                width,
                height,
            });
        }
        // Sized once per stream; after that the same allocation serves every frame.
        self.scratch.resize(width * height * 3, 0);
        dec.decode_into(&mut self.scratch)
            .map_err(|e| ConvertError::Jpeg(format!("{e:?}")))?;
        let cw = width.div_ceil(2);
        let (y, u, v) = split_i420(out, width, height);
        let px = &self.scratch;
        for (i, yv) in y.iter_mut().enumerate() {
            *yv = px[3 * i];
        }
        for cy in 0..height.div_ceil(2) {
            for cx in 0..cw {
                let (x0, y0) = (2 * cx, 2 * cy);
                let (x1, y1) = ((x0 + 1).min(width - 1), (y0 + 1).min(height - 1));
                let at = |x: usize, y: usize, c: usize| px[3 * (y * width + x) + c] as u32;
                let avg = |c| {
                    ((at(x0, y0, c) + at(x1, y0, c) + at(x0, y1, c) + at(x1, y1, c) + 2) / 4) as u8
                };
                u[cy * cw + cx] = avg(1);
                v[cy * cw + cx] = avg(2);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::frame::{i420_len, BufferPool};

    const W: usize = 16;
    const H: usize = 8;

    /// Luma ramps with x; chroma is a function of the 2x2 block, so the
    /// expected I420 is known exactly.
    fn y_at(x: usize, y: usize) -> u8 {
        (16 + x * 12 + y) as u8
    }
    fn u_at(cx: usize, cy: usize) -> u8 {
        (60 + cx * 10 + cy) as u8
    }
    fn v_at(cx: usize, cy: usize) -> u8 {
        (200 - cx * 10 - cy) as u8
    }

    fn check_i420(out: &[u8]) {
        let (cw, ch) = (W / 2, H / 2);
        for y in 0..H {
            for x in 0..W {
                assert_eq!(out[y * W + x], y_at(x, y), "Y at {x},{y}");
            }
        }
        for cy in 0..ch {
            for cx in 0..cw {
                assert_eq!(out[W * H + cy * cw + cx], u_at(cx, cy), "U at {cx},{cy}");
                assert_eq!(
                    out[W * H + cw * ch + cy * cw + cx],
                    v_at(cx, cy),
                    "V at {cx},{cy}"
                );
            }
        }
    }

    #[test]
    fn yuyv_to_i420_content() {
        // YUYV carries chroma per row; both rows of a 4:2:0 pair get the same
        // values, so the vertical average is exact.
        let stride = W * 2 + 8; // padded rows, as some drivers deliver
        let mut src = vec![0u8; stride * H];
        for y in 0..H {
            for x in (0..W).step_by(2) {
                let o = y * stride + x * 2;
                src[o] = y_at(x, y);
                src[o + 1] = u_at(x / 2, y / 2);
                src[o + 2] = y_at(x + 1, y);
                src[o + 3] = v_at(x / 2, y / 2);
            }
        }
        let pool = BufferPool::new(i420_len(W, H));
        let mut out = pool.take();
        yuyv_to_i420(&src, stride, W, H, &mut out).unwrap();
        check_i420(&out);
    }

    #[test]
    fn nv12_to_i420_content() {
        let stride = W + 4;
        let mut src = vec![0u8; stride * (H + H / 2)];
        for y in 0..H {
            for x in 0..W {
                src[y * stride + x] = y_at(x, y);
            }
        }
        for cy in 0..H / 2 {
            for cx in 0..W / 2 {
                src[stride * H + cy * stride + 2 * cx] = u_at(cx, cy);
                src[stride * H + cy * stride + 2 * cx + 1] = v_at(cx, cy);
            }
        }
        let mut out = vec![0u8; i420_len(W, H)];
        nv12_to_i420(&src, stride, W, H, &mut out).unwrap();
        check_i420(&out);
        let err = nv12_to_i420(&src[..10], stride, W, H, &mut out).unwrap_err();
        assert!(err.to_string().contains("too short"), "{err}");
    }

    #[test]
    fn mjpeg_to_i420_content() {
        // A flat-colour JPEG (lossy coding is exact enough on flat areas):
        // encode RGB, decode, compare with the BT.601 full-range YCbCr of it.
        let (w, h) = (32usize, 16usize);
        let (r, g, b) = (200u8, 80u8, 40u8);
        let rgb: Vec<u8> = std::iter::repeat_n([r, g, b], w * h).flatten().collect();
        let mut jpeg = Vec::new();
        jpeg_encoder::Encoder::new(&mut jpeg, 95)
            .encode(&rgb, w as u16, h as u16, jpeg_encoder::ColorType::Rgb)
            .unwrap();
        let mut out = vec![0u8; i420_len(w, h)];
        let mut dec = MjpegDecoder::new();
        dec.decode(&jpeg, w, h, &mut out).unwrap();
        let (rf, gf, bf) = (r as f32, g as f32, b as f32);
        let ey = 0.299 * rf + 0.587 * gf + 0.114 * bf;
        let eu = 128.0 - 0.168736 * rf - 0.331264 * gf + 0.5 * bf;
        let ev = 128.0 + 0.5 * rf - 0.418688 * gf - 0.081312 * bf;
        let close = |got: u8, want: f32| (got as f32 - want).abs() <= 3.0;
        assert!(
            out[..w * h].iter().all(|&y| close(y, ey)),
            "Y {} vs {ey}",
            out[0]
        );
        let (u, v) = out[w * h..].split_at(w * h / 4);
        assert!(u.iter().all(|&x| close(x, eu)), "U {} vs {eu}", u[0]);
        assert!(v.iter().all(|&x| close(x, ev)), "V {} vs {ev}", v[0]);
        // Wrong size and garbage are errors, not panics.
        assert!(matches!(
            dec.decode(&jpeg, 64, 16, &mut out),
            Err(ConvertError::JpegSize { .. })
        ));
        assert!(matches!(
            dec.decode(b"not a jpeg", w, h, &mut out),
            Err(ConvertError::Jpeg(_))
        ));
    }
}
