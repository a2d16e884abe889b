//! The microphone's processing chain, per 20 ms frame: time to process the
//! far-end reference and the microphone frame, p50/p99, for the full chain
//! (high-pass, AEC3, moderate NS, AGC2), echo cancellation alone, and the
//! pass-through beside them in the same run. The signal is a speakerphone:
//! a far end talking in bursts, its echo 80 ms later at half level.
//!
//! `cargo bench --bench processing`; under `cargo test` a short smoke run.

use callbox::device::processing::{Apm, NoiseLevel, Settings};
use std::time::{Duration, Instant};

const FRAME: usize = 960;

fn signal(frames: usize) -> (Vec<i16>, Vec<i16>) {
    let n = frames * FRAME;
    let mut seed = 7u64;
    let far: Vec<i16> = (0..n)
        .map(|i| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            let noise = ((seed >> 33) as f64 / (1u64 << 31) as f64) - 1.0;
            let envelope = (i as f64 / 48_000.0 * 4.0 * std::f64::consts::PI)
                .sin()
                .max(0.0);
            (noise * envelope * 8000.0) as i16
        })
        .collect();
    let d = 48 * 80;
    let mic = (0..n)
        .map(|i| if i >= d { far[i - d] / 2 } else { 0 })
        .collect();
    (far, mic)
}

fn run(settings: Settings, far: &[i16], mic: &[i16]) -> (Duration, Duration) {
    let apm = Apm::new(settings);
    let mut times = Vec::new();
    let mut frame = vec![0i16; FRAME];
    for (f, m) in far.chunks_exact(FRAME).zip(mic.chunks_exact(FRAME)) {
        frame.copy_from_slice(m);
        let t = Instant::now();
        if settings.any() {
            apm.far_end(f);
            apm.capture(&mut frame);
        }
        times.push(t.elapsed());
    }
    times.sort_unstable();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let frames = if full { 1500 } else { 100 };
    let (far, mic) = signal(frames);
    let full_chain = Settings {
        echo_cancellation: true,
        noise_suppression: NoiseLevel::Moderate,
        auto_gain: true,
        high_pass: true,
    };
    let aec_only = Settings {
        echo_cancellation: true,
        ..Settings::OFF
    };
    println!("Processing per 20 ms frame (far end + microphone, 48 kHz mono), {frames} frames");
    println!(
        "{:<28} {:>10} {:>10} {:>14}",
        "chain", "p50 us", "p99 us", "% of a core"
    );
    for (name, s) in [
        ("pass-through", Settings::OFF),
        ("echo cancellation only", aec_only),
        ("full (HPF+AEC3+NS+AGC2)", full_chain),
    ] {
        let (p50, p99) = run(s, &far, &mic);
        let core = p50.as_secs_f64() / 0.020 * 100.0;
        println!(
            "{name:<28} {:>10.0} {:>10.0} {:>13.2}%",
            p50.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6,
            core
        );
    }
    for (name, s) in [
        ("echo cancellation only", aec_only),
        ("full chain", full_chain),
    ] {
        println!(
            "added latency, {name} (near end only, by cross-correlation): {:.2} ms",
            added_latency(s, &far) as f64 / 48.0
        );
    }
}

/// Samples by which the chain delays a near-end signal (far end silent).
fn added_latency(settings: Settings, near: &[i16]) -> usize {
    let apm = Apm::new(settings);
    let silence = vec![0i16; FRAME];
    let mut out = near.to_vec();
    for frame in out.chunks_exact_mut(FRAME) {
        apm.far_end(&silence);
        apm.capture(frame);
    }
    let from = near.len() / 2;
    let n = 48_000.min(near.len() - from - 480);
    (0..480)
        .max_by(|&a, &b| {
            let c = |l: usize| {
                (0..n)
                    .map(|i| out[from + i + l] as f64 * near[from + i] as f64)
                    .sum::<f64>()
            };
            c(a).total_cmp(&c(b))
        })
        .unwrap_or(0)
}
