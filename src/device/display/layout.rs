//! Where each picture goes on the screen: one remote stream fills it, two
//! sit side by side, three or four share a 2x2 grid, or, when who speaks
//! is known, the speaker takes the top three quarters and the others share
//! a strip along the bottom; each picture is
//! letterboxed into its tile at its own aspect; the self-view is a small
//! picture-in-picture in the bottom-right corner. Pure arithmetic, with
//! every edge on an even pixel so 4:2:0 chroma lines up.

/// A rectangle on the screen, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    pub x: usize,
    pub y: usize,
    pub w: usize,
    pub h: usize,
}

/// At most this many remote pictures are shown (a 2x2 grid).
pub const MAX_TILES: usize = 4;

fn even(v: usize) -> usize {
    v & !1
}

/// The tiles for `n` remote pictures on a `screen` (at most [`MAX_TILES`]).
pub fn tiles(screen: (usize, usize), n: usize) -> Vec<Rect> {
    let (w, h) = screen;
    let (cols, rows) = match n {
        0 => return Vec::new(),
        1 => (1, 1),
        2 => (2, 1),
        _ => (2, 2),
    };
    let (tw, th) = (even(w / cols), even(h / rows));
    (0..n.min(MAX_TILES))
        .map(|i| Rect {
            x: (i % cols) * tw,
            y: (i / cols) * th,
            w: tw,
            h: th,
        })
        .collect()
}

/// The tiles with the first picture (the speaker) large: the top three
/// quarters, the others side by side in the quarter below.
pub fn speaker_tiles(screen: (usize, usize), n: usize) -> Vec<Rect> {
    let (w, h) = screen;
    let n = n.min(MAX_TILES);
    if n < 2 {
        return tiles(screen, n);
    }
    let main_h = even(h * 3 / 4);
    let strip_w = even(w / (n - 1));
    let main = Rect {
        x: 0,
        y: 0,
        w: even(w),
        h: main_h,
    };
    let strip = (0..n - 1).map(|i| Rect {
        x: i * strip_w,
        y: main_h,
        w: strip_w,
        h: even(h - main_h),
    });
    std::iter::once(main).chain(strip).collect()
}

/// The largest rectangle of `picture`'s aspect inside `tile`, centred.
pub fn fit(picture: (usize, usize), tile: Rect) -> Rect {
    let (pw, ph) = (picture.0.max(1), picture.1.max(1));
    // Scale by the tighter of the two sides.
    let (w, h) = if tile.w * ph <= tile.h * pw {
        (tile.w, tile.w * ph / pw)
    } else {
        (tile.h * pw / ph, tile.h)
    };
    let (w, h) = (even(w).max(2).min(tile.w), even(h).max(2).min(tile.h));
    Rect {
        x: tile.x + even((tile.w - w) / 2),
        y: tile.y + even((tile.h - h) / 2),
        w,
        h,
    }
}

/// The self-view: a quarter of the screen's width, bottom right, with a margin.
pub fn self_view(screen: (usize, usize), picture: (usize, usize)) -> Rect {
    let (w, h) = screen;
    let margin = even(w / 40);
    let box_w = even(w / 4);
    let box_h = even(h / 4);
    let tile = Rect {
        x: w.saturating_sub(box_w + margin),
        y: h.saturating_sub(box_h + margin),
        w: box_w,
        h: box_h,
    };
    fit(picture, tile)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_fills_two_side_by_side_three_and_four_in_a_grid() {
        let s = (1280, 720);
        assert_eq!(
            tiles(s, 1),
            vec![Rect {
                x: 0,
                y: 0,
                w: 1280,
                h: 720
            }]
        );
        let two = tiles(s, 2);
        assert_eq!(
            two[1],
            Rect {
                x: 640,
                y: 0,
                w: 640,
                h: 720
            }
        );
        let four = tiles(s, 4);
        assert_eq!(
            four[3],
            Rect {
                x: 640,
                y: 360,
                w: 640,
                h: 360
            }
        );
        assert_eq!(tiles(s, 3).len(), 3);
        assert_eq!(tiles(s, 7).len(), MAX_TILES);
        assert!(tiles(s, 0).is_empty());
    }

    #[test]
    fn pictures_are_letterboxed_at_their_aspect_on_even_pixels() {
        let screen = Rect {
            x: 0,
            y: 0,
            w: 1280,
            h: 720,
        };
        // 4:3 on 16:9: bars left and right.
        assert_eq!(
            fit((640, 480), screen),
            Rect {
                x: 160,
                y: 0,
                w: 960,
                h: 720
            }
        );
        // 16:9 in a tall half: bars above and below.
        let half = Rect {
            x: 640,
            y: 0,
            w: 640,
            h: 720,
        };
        assert_eq!(
            fit((1280, 720), half),
            Rect {
                x: 640,
                y: 180,
                w: 640,
                h: 360
            }
        );
        // The same aspect fills exactly.
        assert_eq!(fit((640, 360), screen), screen);
        let odd = fit(
            (333, 251),
            Rect {
                x: 0,
                y: 0,
                w: 101,
                h: 77,
            },
        );
        assert!([odd.x, odd.y, odd.w, odd.h]
            .iter()
            .all(|v| v.is_multiple_of(2)));
    }

    #[test]
    fn the_speaker_takes_the_top_and_the_others_a_strip() {
        assert_eq!(speaker_tiles((640, 480), 1), tiles((640, 480), 1));
        let t = speaker_tiles((640, 480), 3);
        assert_eq!(
            t,
            [
                Rect {
                    x: 0,
                    y: 0,
                    w: 640,
                    h: 360
                },
                Rect {
                    x: 0,
                    y: 360,
                    w: 320,
                    h: 120
                },
                Rect {
                    x: 320,
                    y: 360,
                    w: 320,
                    h: 120
                },
            ]
        );
        assert_eq!(speaker_tiles((640, 480), 9).len(), MAX_TILES);
    }

    #[test]
    fn the_self_view_sits_bottom_right() {
        let r = self_view((1280, 720), (640, 480));
        assert!(
            r.x > 640 && r.y > 360 && r.x + r.w <= 1280 && r.y + r.h <= 720,
            "{r:?}"
        );
        assert_eq!(r.w * 3, r.h * 4);
    }
}
