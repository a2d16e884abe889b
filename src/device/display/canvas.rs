//! The screen as a picture: an owned I420 canvas the compositor draws on
//! (background, scaled remote pictures, text) and a sink shows. Scaling is
//! nearest-neighbour through index tables: one lookup per output pixel,
//! which is what a Pi can afford per frame for every tile; a filtering
//! scaler (`fast_image_resize`) would be smoother at several times the
//! cost. Text is the public-domain 8x8 glyphs of `font8x8`, scaled.

use crate::device::display::layout::Rect;
use crate::device::frame::I420;
use font8x8::UnicodeFonts;

/// A colour as Y, U, V.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Yuv(pub u8, pub u8, pub u8);

pub const BLACK: Yuv = Yuv(16, 128, 128);
pub const WHITE: Yuv = Yuv(235, 128, 128);
/// The tile of a caller whose camera is off.
pub const GREY: Yuv = Yuv(60, 128, 128);
/// The banned state's red.
pub const RED: Yuv = Yuv(81, 90, 240);

/// A tightly packed I420 picture the size of the screen (even sides).
#[derive(Clone)]
pub struct Canvas {
    pub width: usize,
    pub height: usize,
    /// Y, then U, then V.
    pub data: Vec<u8>,
}

impl Canvas {
    pub fn new(width: usize, height: usize) -> Canvas {
        let (width, height) = (width & !1, height & !1);
        Canvas {
            width,
            height,
            data: vec![0; width * height * 3 / 2],
        }
    }

    pub fn view(&self) -> I420<'_> {
        // The size is even and the buffer exactly I420's: the view exists.
        I420::packed(&self.data, self.width, self.height).unwrap_or(I420 {
            width: 0,
            height: 0,
            y: &[],
            u: &[],
            v: &[],
            y_stride: 0,
            uv_stride: 0,
        })
    }

    fn planes(&mut self) -> (&mut [u8], &mut [u8], &mut [u8]) {
        let n = self.width * self.height;
        let (y, uv) = self.data.split_at_mut(n);
        let (u, v) = uv.split_at_mut(n / 4);
        (y, u, v)
    }

    /// Paint `r` (clipped to the canvas) in one colour.
    pub fn fill(&mut self, r: Rect, c: Yuv) {
        let (w, h) = (self.width, self.height);
        let (x1, y1) = ((r.x + r.w).min(w), (r.y + r.h).min(h));
        let (y, u, v) = self.planes();
        for row in r.y.min(h)..y1 {
            y[row * w + r.x.min(x1)..row * w + x1].fill(c.0);
        }
        for row in r.y.min(h) / 2..y1 / 2 {
            let at = row * w / 2;
            u[at + r.x.min(x1) / 2..at + x1 / 2].fill(c.1);
            v[at + r.x.min(x1) / 2..at + x1 / 2].fill(c.2);
        }
    }

    /// Draw `pic` scaled to `r` (which must lie on the canvas, even-aligned).
    pub fn blit(&mut self, pic: &I420<'_>, r: Rect) {
        self.draw(pic, r, false)
    }

    /// [`Canvas::blit`], left and right swapped (a mirror image).
    pub fn blit_mirrored(&mut self, pic: &I420<'_>, r: Rect) {
        self.draw(pic, r, true)
    }

    fn draw(&mut self, pic: &I420<'_>, r: Rect, mirror: bool) {
        if pic.width == 0 || pic.height == 0 || r.x + r.w > self.width || r.y + r.h > self.height {
            return;
        }
        let w = self.width;
        let (y, u, v) = self.planes();
        let columns = |n: usize, of: usize| -> Vec<usize> {
            let mut xs: Vec<usize> = (0..n).map(|i| i * of / n).collect();
            if mirror {
                xs.reverse();
            }
            xs
        };
        let xs = columns(r.w, pic.width);
        for row in 0..r.h {
            let src = &pic.y[(row * pic.height / r.h) * pic.y_stride..];
            let dst = &mut y[(r.y + row) * w + r.x..][..r.w];
            for (d, &sx) in dst.iter_mut().zip(&xs) {
                *d = src[sx];
            }
        }
        let (cw, ch) = (pic.width.div_ceil(2), pic.height.div_ceil(2));
        let cxs = columns(r.w / 2, cw);
        for (dst_plane, src_plane) in [(u, pic.u), (v, pic.v)] {
            for row in 0..r.h / 2 {
                let src = &src_plane[(row * ch / (r.h / 2)) * pic.uv_stride..];
                let dst = &mut dst_plane[(r.y / 2 + row) * (w / 2) + r.x / 2..][..r.w / 2];
                for (d, &sx) in dst.iter_mut().zip(&cxs) {
                    *d = src[sx];
                }
            }
        }
    }

    /// Write `text` at (x, y) in `scale`-times 8x8 glyphs; characters the
    /// font lacks show as blanks. Clipped to the canvas.
    pub fn text(&mut self, x: usize, y: usize, scale: usize, text: &str, c: Yuv) {
        let scale = scale.max(1);
        for (i, ch) in text.chars().enumerate() {
            let Some(glyph) = font8x8::BASIC_FONTS.get(ch) else {
                continue;
            };
            let gx = x + i * 8 * scale;
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..8 {
                    if bits >> col & 1 == 1 {
                        let r = Rect {
                            x: (gx + col * scale) & !1,
                            y: (y + row * scale) & !1,
                            w: scale.max(2),
                            h: scale.max(2),
                        };
                        self.fill(r, c);
                    }
                }
            }
        }
    }

    /// Width in pixels of `text` at `scale`.
    pub fn text_width(text: &str, scale: usize) -> usize {
        text.chars().count() * 8 * scale.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::frame::i420_len;
    use crate::device::pattern::{self, Stamp};

    #[test]
    fn a_picture_drawn_at_its_own_size_keeps_its_stamp() {
        let (w, h) = (320, 240);
        let mut buf = vec![0u8; i420_len(w, h)];
        let stamp = Stamp {
            counter: 77,
            capture_us: 123_456_789,
        };
        pattern::draw(&mut buf, w, h, stamp);
        let pic = I420::packed(&buf, w, h).expect("frame");
        let mut c = Canvas::new(w, h);
        c.blit(&pic, Rect { x: 0, y: 0, w, h });
        assert_eq!(c.data, buf);
        assert_eq!(pattern::read(&c.view()), Some(stamp));
    }

    #[test]
    fn scaling_doubles_pixels_and_fills_paint_every_plane() {
        let mut c = Canvas::new(8, 4);
        c.fill(
            Rect {
                x: 0,
                y: 0,
                w: 8,
                h: 4,
            },
            BLACK,
        );
        // A 4x2 grey ramp, doubled into the left 8x4... of an 8x4 canvas.
        let src: Vec<u8> = vec![10, 20, 30, 40, 50, 60, 70, 80, 1, 2, 3, 4];
        let pic = I420::packed(&src, 4, 2).expect("frame");
        c.blit(
            &pic,
            Rect {
                x: 0,
                y: 0,
                w: 8,
                h: 4,
            },
        );
        assert_eq!(&c.data[..8], &[10, 10, 20, 20, 30, 30, 40, 40]);
        assert_eq!(&c.data[24..32], &[50, 50, 60, 60, 70, 70, 80, 80]);
        assert_eq!(&c.data[32..36], &[1, 1, 2, 2]);
        c.fill(
            Rect {
                x: 2,
                y: 2,
                w: 2,
                h: 2,
            },
            RED,
        );
        assert_eq!(c.data[2 * 8 + 2], RED.0);
        assert_eq!(c.data[32 + 4 + 1], RED.1);
    }

    #[test]
    fn text_lights_pixels_inside_its_box_only() {
        let mut c = Canvas::new(64, 16);
        c.fill(
            Rect {
                x: 0,
                y: 0,
                w: 64,
                h: 16,
            },
            BLACK,
        );
        c.text(0, 0, 1, "HI", WHITE);
        let lit: Vec<(usize, usize)> = (0..16)
            .flat_map(|y| (0..64).map(move |x| (x, y)))
            .filter(|&(x, y)| c.data[y * 64 + x] == WHITE.0)
            .collect();
        assert!(!lit.is_empty());
        assert!(lit
            .iter()
            .all(|&(x, y)| x < Canvas::text_width("HI", 1) + 2 && y < 10));
    }
}
