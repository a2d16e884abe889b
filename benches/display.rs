//! The screen's cost per remote frame, at 640x480 and 1280x720: H.264
//! decode alone (the baseline, what a subscriber pays anyway), then decode,
//! compose (letterboxed onto a screen of the same size) and present (the
//! YUV4MPEG2 sink, to /dev/null), p50/p99 per frame in the same run.
//!
//! `cargo bench --bench display`; under `cargo test` a short smoke run.

use callbox::device::display::canvas::Canvas;
use callbox::device::display::layout::{fit, Rect};
use callbox::device::display::y4m::Y4mSink;
use callbox::device::display::DisplaySink;
use callbox::device::frame::i420_len;
use callbox::device::h264::{EncoderSettings, H264Decoder, OpenH264Encoder, VideoEncoder};
use callbox::device::pattern::{self, Stamp};
use callbox::device::video_source::pattern_frame;
use std::path::Path;
use std::time::{Duration, Instant};

/// The pattern at `size`, encoded as a camera's stream would be.
fn stream(size: (usize, usize), frames: u32) -> Vec<Vec<u8>> {
    let (w, h) = size;
    let mut enc = OpenH264Encoder::new(EncoderSettings {
        width: w,
        height: h,
        fps: 30,
        bitrate_bps: (w * h * 4) as u32,
        keyframe_interval_frames: 300,
        library: None,
    })
    .expect("encoder");
    let mut buf = vec![0u8; i420_len(w, h)];
    let mut out = Vec::new();
    (0..frames)
        .filter_map(|n| {
            let stamp = Stamp {
                counter: n,
                capture_us: pattern::now_us(),
            };
            let frame = pattern_frame(&mut buf, w, h, stamp).expect("buffer");
            enc.encode(&frame, n == 0, &mut out).expect("encode")?;
            Some(out.clone())
        })
        .collect()
}

fn percentiles(mut t: Vec<Duration>) -> (f64, f64) {
    t.sort_unstable();
    let at = |q: f64| t[((t.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1000.0;
    (at(0.5), at(0.99))
}

/// Per frame: decode, and with `screen`, compose and present too.
fn run(aus: &[Vec<u8>], size: (usize, usize), screen: bool) -> (f64, f64) {
    let mut dec = H264Decoder::new().expect("decoder");
    let mut canvas = Canvas::new(size.0, size.1);
    let mut sink = Y4mSink::create(Path::new("/dev/null"), size, 30).expect("sink");
    let whole = Rect {
        x: 0,
        y: 0,
        w: canvas.width,
        h: canvas.height,
    };
    let times = aus
        .iter()
        .map(|au| {
            let t = Instant::now();
            dec.decode(au, |pic| {
                if screen {
                    canvas.blit(pic, fit((pic.width, pic.height), whole));
                }
            })
            .expect("decode");
            if screen {
                sink.show(&canvas).expect("present");
            }
            t.elapsed()
        })
        .collect();
    percentiles(times)
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let frames = if full { 300 } else { 20 };
    println!("Remote video for the screen, per frame ({frames} frames of the test pattern)");
    println!(
        "{:<12} {:>16} {:>16} {:>28}",
        "size", "decode p50/p99", "+ compose/present", "screen's share of a core at 30 fps"
    );
    for size in [(640, 480), (1280, 720)] {
        let aus = stream(size, frames);
        let (d50, d99) = run(&aus, size, false);
        let (s50, s99) = run(&aus, size, true);
        println!(
            "{:<12} {:>7.2}/{:<7.2}ms {:>7.2}/{:<7.2}ms {:>27.1}%",
            format!("{}x{}", size.0, size.1),
            d50,
            d99,
            s50,
            s99,
            s50 * 30.0 / 10.0
        );
    }
}
