//! The synthetic camera's test pattern: moving colour bars plus a block of
//! black/white cells in the top-left corner that carries the frame counter
//! and the capture time (µs since the Unix epoch). The cells are 8x8 pixels
//! at full contrast, so they survive H.264 at ordinary bitrates and can be
//! read back from a decoded frame by tests, benchmarks (glass-to-glass
//! latency) and, in JavaScript, the browser tests.

use crate::device::frame::I420;

/// Cell edge in pixels.
pub const CELL: usize = 8;
/// Cells per row of the block; 4 rows carry 104 bits.
pub const COLS: usize = 26;
pub const ROWS: usize = 4;
const BITS: usize = COLS * ROWS;
/// Smallest frame that holds the block.
pub const MIN_WIDTH: usize = COLS * CELL;
pub const MIN_HEIGHT: usize = ROWS * CELL;

/// What a frame of the pattern says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub counter: u32,
    pub capture_us: u64,
}

/// 8-bit check over the payload, so a frame that is not the pattern (or a
/// badly damaged one) reads as `None` rather than as a wrong number.
fn check(payload: u128) -> u8 {
    let mut c: u8 = 0x5a;
    for i in 0..12 {
        c = c.rotate_left(3) ^ ((payload >> (8 * i)) as u8);
    }
    c
}

fn bits(stamp: Stamp) -> u128 {
    let payload = (stamp.counter as u128) | ((stamp.capture_us as u128) << 32);
    payload | ((check(payload) as u128) << 96)
}

/// Draw a frame of the pattern into a tightly packed I420 buffer.
pub fn draw(buf: &mut [u8], width: usize, height: usize, stamp: Stamp) {
    let (cw, ch) = (width.div_ceil(2), height.div_ceil(2));
    let (y_plane, chroma) = buf.split_at_mut(width * height);
    let (u_plane, v_plane) = chroma.split_at_mut(cw * ch);
    // Eight bars that scroll 4 px per frame: motion for the encoder, and a
    // picture a person recognises.
    const BARS: [(u8, u8, u8); 8] = [
        (235, 128, 128),
        (210, 16, 146),
        (170, 166, 16),
        (145, 54, 34),
        (106, 202, 222),
        (81, 90, 240),
        (41, 240, 110),
        (16, 128, 128),
    ];
    let shift = (stamp.counter as usize * 4) % width.max(1);
    let bar_w = width.div_ceil(8).max(1);
    for x in 0..width {
        let (yy, _, _) = BARS[((x + shift) / bar_w) % 8];
        for row in 0..height {
            y_plane[row * width + x] = yy;
        }
    }
    for x in 0..cw {
        let (_, u, v) = BARS[((2 * x + shift) / bar_w) % 8];
        for row in 0..ch {
            u_plane[row * cw + x] = u;
            v_plane[row * cw + x] = v;
        }
    }
    if width < MIN_WIDTH || height < MIN_HEIGHT {
        return;
    }
    let b = bits(stamp);
    for i in 0..BITS {
        let luma = if (b >> i) & 1 == 1 { 235 } else { 16 };
        let (cx, cy) = ((i % COLS) * CELL, (i / COLS) * CELL);
        for row in cy..cy + CELL {
            y_plane[row * width + cx..row * width + cx + CELL].fill(luma);
        }
        for row in cy / 2..(cy + CELL) / 2 {
            u_plane[row * cw + cx / 2..row * cw + (cx + CELL) / 2].fill(128);
            v_plane[row * cw + cx / 2..row * cw + (cx + CELL) / 2].fill(128);
        }
    }
}

/// Read the block back from a (decoded) frame: each cell's centre 4x4
/// average against mid-grey.
pub fn read(frame: &I420<'_>) -> Option<Stamp> {
    if frame.width < MIN_WIDTH || frame.height < MIN_HEIGHT {
        return None;
    }
    let mut b: u128 = 0;
    for i in 0..BITS {
        let (cx, cy) = ((i % COLS) * CELL, (i / COLS) * CELL);
        let mut sum = 0u32;
        for row in cy + 2..cy + 6 {
            for col in cx + 2..cx + 6 {
                sum += frame.luma(col, row) as u32;
            }
        }
        if sum / 16 > 128 {
            b |= 1 << i;
        }
    }
    let payload = b & ((1u128 << 96) - 1);
    if (b >> 96) as u8 != check(payload) {
        return None;
    }
    Some(Stamp {
        counter: payload as u32,
        capture_us: (payload >> 32) as u64,
    })
}

/// Microseconds since the Unix epoch: the clock stamps are compared on.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::frame::i420_len;

    #[test]
    fn stamp_round_trips_and_damage_is_detected() {
        let (w, h) = (320, 240);
        let mut buf = vec![0; i420_len(w, h)];
        let stamp = Stamp {
            counter: 123_456,
            capture_us: 1_790_000_000_123_456,
        };
        draw(&mut buf, w, h, stamp);
        assert_eq!(read(&I420::packed(&buf, w, h).unwrap()), Some(stamp));
        // Flip one cell: the check byte no longer matches.
        for row in 2..6 {
            for col in 2..6 {
                buf[row * w + col] = 255 - buf[row * w + col];
            }
        }
        assert_eq!(read(&I420::packed(&buf, w, h).unwrap()), None);
    }

    #[test]
    fn bars_move_from_frame_to_frame() {
        let (w, h) = (320, 240);
        let mut a = vec![0; i420_len(w, h)];
        let mut b = a.clone();
        draw(
            &mut a,
            w,
            h,
            Stamp {
                counter: 1,
                capture_us: 0,
            },
        );
        draw(
            &mut b,
            w,
            h,
            Stamp {
                counter: 2,
                capture_us: 0,
            },
        );
        let row = 200 * w;
        assert_ne!(a[row..row + w], b[row..row + w]);
    }
}
