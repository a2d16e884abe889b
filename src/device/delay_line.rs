//! A simulated speaker-to-microphone echo path for `callbox audio loop`:
//! what one PCM captures comes out of another a fixed time later,
//! attenuated, with a near-end signal mixed in. The delay is held for the
//! whole path: what the two devices buffer (their `snd_pcm_delay`) plus
//! this line's own queue, so the configured delay is what the far end's
//! echo really takes.

use std::collections::VecDeque;

pub struct DelayLine {
    queue: VecDeque<i16>,
    /// The whole path's delay, samples.
    target: usize,
    gain: f32,
    near: Vec<i16>,
    near_at: usize,
    /// Times the queue was trimmed or padded to hold the delay.
    pub corrections: u64,
}

impl DelayLine {
    /// A path of `delay` samples and `gain_db`; `near` (looped) is mixed
    /// into what comes out.
    pub fn new(delay: usize, gain_db: f64, near: Vec<i16>) -> Self {
        DelayLine {
            queue: VecDeque::with_capacity(delay + 4096),
            target: delay,
            gain: 10f32.powf(gain_db as f32 / 20.0),
            near,
            near_at: 0,
            corrections: 0,
        }
    }

    /// What the capture side heard.
    pub fn push(&mut self, frame: &[i16]) {
        let g = self.gain;
        self.queue
            .extend(frame.iter().map(|&s| (s as f32 * g).round() as i16));
    }

    /// Hold the path's delay, given what the devices buffer besides this
    /// queue: trim or pad its oldest end by the difference, if over 1 ms.
    /// Returns the path's delay as it now stands.
    pub fn hold(&mut self, devices: usize) -> usize {
        let total = self.queue.len() + devices;
        if total > self.target + 48 {
            let cut = (total - self.target).min(self.queue.len());
            self.queue.drain(..cut);
            self.corrections += 1;
        } else if total + 48 < self.target {
            for _ in 0..self.target - total {
                self.queue.push_front(0);
            }
            self.corrections += 1;
        }
        self.queue.len() + devices
    }

    /// The next frame for the playback side, if the queue holds one.
    pub fn pop(&mut self, out: &mut [i16]) -> bool {
        if self.queue.len() < out.len() {
            return false;
        }
        for s in out.iter_mut() {
            let echo = self.queue.pop_front().unwrap_or(0);
            let near = match self.near.get(self.near_at) {
                Some(&v) => {
                    self.near_at = (self.near_at + 1) % self.near.len();
                    v
                }
                None => 0,
            };
            *s = echo.saturating_add(near);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_comes_out_after_the_delay_attenuated_with_the_near_end_mixed() {
        // 10 ms path, 6 dB down, the devices holding 3 ms between them.
        let mut line = DelayLine::new(480, -6.0206, vec![1, 2]);
        let mut out = vec![0i16; 96];
        let mut at = None;
        for frame in 0..6 {
            let mut input = [0i16; 96];
            if frame == 0 {
                input[0] = 10_000;
            }
            line.push(&input);
            assert_eq!(line.hold(144), 480);
            assert!(line.pop(&mut out));
            if let Some(i) = out.iter().position(|&v| v > 1000) {
                at = Some((frame * 96 + i, out[i]));
            }
        }
        // Captured 95 samples before it was read, 144 in the devices: it
        // is written 480 - 95 - 144 - 1 = 240 samples of output later.
        assert_eq!(at, Some((240, 5000 + 1)));
        assert_eq!(line.corrections, 1);
    }

    #[test]
    fn the_delay_is_held_when_the_devices_buffer_more() {
        let mut line = DelayLine::new(480, 0.0, Vec::new());
        line.push(&[0; 480]);
        line.hold(0);
        assert_eq!(line.hold(200), 480);
        assert_eq!(line.queue.len(), 280);
        // Within 1 ms nothing is corrected.
        assert_eq!(line.hold(230), 510);
        assert_eq!(line.corrections, 1);
    }
}
