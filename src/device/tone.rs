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
/// fraction of a sample by interpolation, counted over the span between the
/// first and the last. `None` when there are too few crossings to tell.
pub fn frequency(samples: &[i16], sample_rate: u32) -> Option<f64> {
    // A small hysteresis so codec noise near zero does not add crossings.
    let threshold = (rms(samples) * i16::MAX as f64 * 0.1).max(1.0);
    let mut armed = false;
    let mut first: Option<f64> = None;
    let mut last = 0.0;
    let mut count = 0usize;
    for i in 1..samples.len() {
        let (a, b) = (samples[i - 1] as f64, samples[i] as f64);
        if b < -threshold {
            armed = true;
        }
        if armed && a <= 0.0 && b > 0.0 {
            let t = (i - 1) as f64 + (-a) / (b - a);
            if first.is_none() {
                first = Some(t);
            }
            last = t;
            count += 1;
            armed = false;
        }
    }
    let first = first?;
    if count < 3 || last <= first {
        return None;
    }
    Some((count - 1) as f64 * sample_rate as f64 / (last - first))
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
}
