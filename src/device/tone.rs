//! Tones: the synthetic microphone's sine generator, and the measurements
//! tests use on what comes out the other end (frequency, level).

/// A continuous sine wave, generated a block at a time without phase jumps.
#[derive(Debug, Clone)]
pub struct Tone {
    step: f64,
    phase: f64,
    amplitude: f64,
}

impl Tone {
    /// `amplitude` is a fraction of full scale.
    pub fn new(freq_hz: f64, sample_rate: u32, amplitude: f64) -> Self {
        Tone {
            step: std::f64::consts::TAU * freq_hz / sample_rate as f64,
            phase: 0.0,
            amplitude: amplitude.clamp(0.0, 1.0) * i16::MAX as f64,
        }
    }

    pub fn fill(&mut self, out: &mut [i16]) {
        for s in out {
            *s = (self.phase.sin() * self.amplitude) as i16;
            self.phase = (self.phase + self.step) % std::f64::consts::TAU;
        }
    }
}

/// Root mean square level, as a fraction of full scale.
pub fn rms(samples: &[i16]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let sum: f64 = samples.iter().map(|&s| (s as f64).powi(2)).sum();
    (sum / samples.len() as f64).sqrt() / i16::MAX as f64
}

/// The frequency of a (near-)pure tone: rising zero crossings, located to a
/// fraction of a sample by interpolation; the median period between them
/// gives the frequency. The median, not the mean over the whole span,
/// because a capture overrun drops samples: the one period that spans the
/// drop is wrong, the rest are not. `None` when there are too few crossings
/// to tell.
pub fn frequency(samples: &[i16], sample_rate: u32) -> Option<f64> {
    // A small hysteresis so codec noise near zero does not add crossings.
    let threshold = (rms(samples) * i16::MAX as f64 * 0.1).max(1.0);
    let mut armed = false;
    let mut previous: Option<f64> = None;
    let mut periods = Vec::new();
    for i in 1..samples.len() {
        let (a, b) = (samples[i - 1] as f64, samples[i] as f64);
        if b < -threshold {
            armed = true;
        }
        if armed && a <= 0.0 && b > 0.0 {
            let t = (i - 1) as f64 + (-a) / (b - a);
            if let Some(p) = previous {
                periods.push(t - p);
            }
            previous = Some(t);
            armed = false;
        }
    }
    if periods.len() < 2 {
        return None;
    }
    periods.sort_by(f64::total_cmp);
    let mid = periods.len() / 2;
    let median = if periods.len() % 2 == 0 {
        (periods[mid - 1] + periods[mid]) / 2.0
    } else {
        periods[mid]
    };
    (median > 0.0).then(|| sample_rate as f64 / median)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_the_generated_frequency() {
        for f in [220.0, 440.0, 1000.0, 3150.0] {
            let mut t = Tone::new(f, 48_000, 0.3);
            let mut buf = vec![0i16; 48_000];
            // In blocks, as the source produces it.
            for chunk in buf.chunks_mut(960) {
                t.fill(chunk);
            }
            let got = frequency(&buf, 48_000).unwrap();
            assert!((got - f).abs() < 0.5, "{f}: {got}");
            assert!((rms(&buf) - 0.3 / 2f64.sqrt()).abs() < 0.01);
        }
        assert_eq!(frequency(&[0; 4800], 48_000), None);
    }

    #[test]
    fn capture_overruns_do_not_shift_the_frequency() {
        let mut t = Tone::new(440.0, 48_000, 0.3);
        let mut buf = vec![0i16; 96_000];
        t.fill(&mut buf);
        // An overrun every 30 ms loses 3 ms of samples, as a starved capture
        // does: counted over the whole span this reads about 489 Hz.
        let dropped: Vec<i16> = buf
            .chunks(1440)
            .flat_map(|c| c[..c.len().min(1296)].iter().copied())
            .collect();
        let got = frequency(&dropped, 48_000).unwrap();
        assert!((got - 440.0).abs() < 0.5, "{got}");
    }
}
