//! The echo self-test's signal and analysis (`callbox probe --echo`): a
//! burst of pseudo-random noise for the speaker, and from what the
//! microphone recorded meanwhile: the acoustic delay (coarse-to-fine
//! cross-correlation), the echo's level, and how much of it the device's
//! own canceller removes; or what is wrong with the speaker or microphone
//! (silence, a stuck channel, clipping, the probe not heard). Written here:
//! it is a few correlations and power sums over one recording, no DSP
//! library's job. The device I/O that plays and records is
//! `audio_tool::echo_test`.

use crate::device::processing::{power, process_recording, EchoReport, NoiseLevel, Settings};
use serde::Serialize;

const RATE: usize = 48_000;
/// Silence before the noise: the room's noise floor.
const LEAD: usize = RATE / 2;
/// The noise burst: long enough for the canceller to converge.
const BURST: usize = 3 * RATE;
/// The longest acoustic delay looked for (speaker and microphone buffers
/// are outside it: the caller's offset accounts for them).
pub const MAX_DELAY: usize = RATE / 2;
/// Coarse search step (samples averaged into one).
const DECIMATE: usize = 8;
/// A normalised correlation below this: the probe was not heard.
const HEARD: f64 = 0.2;

/// What the echo test measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EchoMeasurement {
    /// Speaker to microphone, without either device's buffer, ms.
    pub delay_ms: f64,
    /// The echo's level at the microphone, dBFS.
    pub echo_level_dbfs: f64,
    /// How much quieter the echo is than what was played (echo return loss), dB.
    pub echo_return_loss_db: f64,
    /// The room's level before the probe, dBFS.
    pub noise_floor_dbfs: f64,
    /// How much of the echo the device's canceller removes, once converged, dB.
    pub echo_reduction_db: f64,
    /// The canceller's own report at the end of the probe.
    pub canceller: EchoReport,
    /// Percent of the recording at full scale.
    pub clipped_percent: f64,
}

/// What is wrong with the speaker or the microphone.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EchoFault {
    #[error(
        "the microphone recorded silence (peak {peak}): muted, unplugged, or the wrong device"
    )]
    Silent { peak: i32 },
    #[error(
        "the microphone is stuck at {value} (no signal at all): a dead or disconnected channel"
    )]
    Stuck { value: i32 },
    #[error("the probe did not reach the microphone (correlation {correlation:.2}): the speaker is muted, unplugged, or the wrong device")]
    NotHeard { correlation: f64 },
    #[error("the microphone clips ({percent:.2} % of samples at full scale): lower the speaker volume or the microphone gain")]
    Clipping { percent: f64 },
}

/// The probe: half a second of silence, three seconds of white noise at
/// about -15 dBFS, then silence for the echo's tail.
pub fn probe_signal() -> Vec<i16> {
    let mut x: u32 = 0x9e37_79b9;
    let mut out = vec![0i16; LEAD + BURST + MAX_DELAY];
    for s in &mut out[LEAD..LEAD + BURST] {
        // xorshift32: deterministic, flat spectrum.
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *s = ((x >> 16) as i16) / 3;
    }
    out
}

fn dbfs(p: f64) -> f64 {
    10.0 * (p / (32768.0 * 32768.0)).max(1e-12).log10()
}

/// Normalised correlation of `a` with `b`.
fn correlation(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        ab += (x * y) as f64;
        aa += (x * x) as f64;
        bb += (y * y) as f64;
    }
    ab / (aa * bb).sqrt().max(1e-9)
}

fn decimate(x: &[i16]) -> Vec<f32> {
    x.chunks_exact(DECIMATE)
        .map(|c| c.iter().map(|&v| v as f32).sum())
        .collect()
}

/// The lag (samples) at which `rec` repeats `probe`, and its correlation:
/// first every [`DECIMATE`] samples, then sample by sample around the best.
fn find_lag(probe: &[i16], rec: &[i16]) -> (usize, f64) {
    let n = probe.len();
    let (p, r) = (decimate(probe), decimate(rec));
    let coarse = (0..=MAX_DELAY / DECIMATE)
        .filter(|l| l + p.len() <= r.len())
        .map(|l| (l, correlation(&p, &r[l..l + p.len()])))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map_or(0, |(l, _)| l * DECIMATE);
    let pf: Vec<f32> = probe.iter().map(|&v| v as f32).collect();
    let lo = coarse.saturating_sub(2 * DECIMATE);
    (lo..=coarse + 2 * DECIMATE)
        .filter(|l| l + n <= rec.len())
        .map(|l| {
            let rf: Vec<f32> = rec[l..l + n].iter().map(|&v| v as f32).collect();
            (l, correlation(&pf, &rf))
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or((0, 0.0))
}

fn check_signal(recording: &[i16]) -> Result<f64, EchoFault> {
    let (lo, hi) = recording.iter().fold((i32::MAX, i32::MIN), |(lo, hi), &v| {
        (lo.min(v as i32), hi.max(v as i32))
    });
    if hi - lo < 16 {
        return Err(if hi.abs().max(lo.abs()) < 16 {
            EchoFault::Silent {
                peak: hi.abs().max(lo.abs()),
            }
        } else {
            EchoFault::Stuck { value: hi }
        });
    }
    let full = recording
        .iter()
        .filter(|&&v| v == i16::MAX || v == i16::MIN)
        .count();
    Ok(100.0 * full as f64 / recording.len().max(1) as f64)
}

/// Analyse a recording of [`probe_signal`]. `offset` is the recording's
/// sample at which the probe's first sample left the speaker (from both
/// devices' buffers); the recording runs at least [`MAX_DELAY`] past the
/// probe's end.
pub fn analyse(
    played: &[i16],
    recording: &[i16],
    offset: usize,
) -> Result<EchoMeasurement, EchoFault> {
    let clipped_percent = check_signal(recording)?;
    let start = offset + LEAD;
    let from = recording.get(start..).unwrap_or_default();
    // One second of the burst is plenty to find it.
    let (lag, c) = find_lag(&played[LEAD..LEAD + RATE], from);
    if c < HEARD {
        return Err(EchoFault::NotHeard { correlation: c });
    }
    if clipped_percent > 0.5 {
        return Err(EchoFault::Clipping {
            percent: clipped_percent,
        });
    }
    let noise = power(recording.get(offset..start).unwrap_or_default());
    let echo_span = recording
        .get(start + lag..start + lag + BURST)
        .unwrap_or_default();
    let echo = (power(echo_span) - noise).max(1e-3);
    let mut far = vec![0i16; recording.len()];
    let n = played.len().min(far.len().saturating_sub(offset));
    far[offset..offset + n].copy_from_slice(&played[..n]);
    let (out, canceller) = process_recording(&far, recording, CANCELLER);
    // The last half of the burst, when the canceller has converged, over
    // what the room adds anyway (the floor before the probe, in and out).
    let late = start + lag + BURST / 2..start + lag + BURST;
    // A residual too far under the floor to tell apart counts as 30 dB
    // under it: the result then reads "at least".
    let above_floor = |x: &[i16]| {
        let floor = power(x.get(offset..start).unwrap_or_default());
        (power(x.get(late.clone()).unwrap_or_default()) - floor).max(floor / 1000.0 + 1e-3)
    };
    let reduction = above_floor(recording) / above_floor(&out);
    Ok(EchoMeasurement {
        delay_ms: lag as f64 * 1000.0 / RATE as f64,
        echo_level_dbfs: dbfs(echo),
        echo_return_loss_db: 10.0 * (power(&played[LEAD..LEAD + BURST]) / echo).log10(),
        noise_floor_dbfs: dbfs(noise),
        echo_reduction_db: 10.0 * reduction.log10(),
        canceller,
        clipped_percent,
    })
}

/// The canceller as the device runs it, without the parts that would
/// count as echo removal (noise suppression, gain control).
const CANCELLER: Settings = Settings {
    echo_cancellation: true,
    noise_suppression: NoiseLevel::Off,
    auto_gain: false,
    high_pass: true,
};

#[cfg(test)]
mod tests {
    use super::*;

    /// A room: the probe `delay` samples after `offset`, scaled, with a
    /// short reflection, and a near-end tone over everything.
    fn room(played: &[i16], offset: usize, delay: usize, gain: f64) -> Vec<i16> {
        let len = offset + played.len() + MAX_DELAY;
        let at = |i: usize| played.get(i).copied().unwrap_or(0) as f64;
        (0..len)
            .map(|i| {
                let mut v = 300.0 * (i as f64 * 440.0 * std::f64::consts::TAU / 48_000.0).sin();
                if let Some(k) = i.checked_sub(offset + delay) {
                    v += gain * at(k);
                    if let Some(k2) = k.checked_sub(480) {
                        v += 0.3 * gain * at(k2);
                    }
                }
                v.round().clamp(-32768.0, 32767.0) as i16
            })
            .collect()
    }

    #[test]
    fn the_delay_level_and_cancellation_are_measured() {
        let played = probe_signal();
        let rec = room(&played, 3000, 80 * 48, 0.5);
        let m = analyse(&played, &rec, 3000).expect("measured");
        assert!((m.delay_ms - 80.0).abs() < 0.5, "{m:?}");
        // 0.5 and 0.15 of the probe: about 5.6 dB of echo return loss.
        assert!((m.echo_return_loss_db - 5.6).abs() < 1.0, "{m:?}");
        assert!(m.echo_reduction_db > 20.0, "{m:?}");
        assert!(
            m.noise_floor_dbfs < -35.0 && m.noise_floor_dbfs > -45.0,
            "{m:?}"
        );
    }

    #[test]
    fn a_wrong_offset_shows_as_another_delay() {
        let played = probe_signal();
        let rec = room(&played, 3000, 80 * 48, 0.5);
        let m = analyse(&played, &rec, 3000 - 480).expect("measured");
        assert!((m.delay_ms - 90.0).abs() < 0.5, "{m:?}");
    }

    #[test]
    fn silence_a_stuck_channel_clipping_and_an_unheard_probe_are_faults() {
        let played = probe_signal();
        let len = played.len() + MAX_DELAY + 1000;
        assert!(matches!(
            analyse(&played, &vec![3; len], 0),
            Err(EchoFault::Silent { .. })
        ));
        assert_eq!(
            analyse(&played, &vec![-12000; len], 0),
            Err(EchoFault::Stuck { value: -12000 })
        );
        let clipped = room(&played, 0, 40 * 48, 8.0);
        assert!(matches!(
            analyse(&played, &clipped, 0),
            Err(EchoFault::Clipping { .. })
        ));
        // Only the near-end tone: the speaker is not heard.
        let unheard = room(&played, 0, 40 * 48, 0.0);
        assert!(matches!(
            analyse(&played, &unheard, 0),
            Err(EchoFault::NotHeard { .. })
        ));
    }
}
