//! Who is speaking: from each remote stream's decoded audio level, the
//! stream the screen shows larger. A stream becomes the speaker once it has
//! been the loudest, above speech level, for `HOLD` (pauses do not count,
//! another stream leading starts the count again), so a cough or a
//! crosstalk burst does not flip the layout; the last speaker stays the
//! speaker through silence. Pure logic: the playout thread feeds
//! it one level per stream per 20 ms frame.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Below this (dBFS, smoothed) a stream is not speaking.
const SPEECH_DBFS: f64 = -45.0;
/// How long a new speaker must lead before the layout follows.
const HOLD: Duration = Duration::from_millis(600);
/// Smoothing of the frame levels (20 ms frames: about 40 ms, so a
/// stream that stops falls below speech level within 0.2 s).
const ALPHA: f64 = 0.5;

#[derive(Debug, Default)]
pub struct ActiveSpeaker {
    /// Smoothed power per stream (linear, full scale = 1).
    power: HashMap<String, f64>,
    current: Option<String>,
    /// The stream leading now, and for how long it has led.
    leader: Option<(String, Duration)>,
    last: Option<Instant>,
}

impl ActiveSpeaker {
    /// One frame of `stream_id`'s audio, as its mean square (full scale = 1).
    pub fn frame(&mut self, stream_id: &str, mean_square: f64) {
        let p = self.power.entry(stream_id.to_owned()).or_insert(0.0);
        *p += ALPHA * (mean_square - *p);
    }

    /// After a round of frames: who leads, and whether they have led long
    /// enough to be the speaker. Only time spent leading counts; silence
    /// neither adds nor resets it, another leader does. Returns the speaker.
    pub fn decide(&mut self, now: Instant) -> Option<&str> {
        let step = self.last.map_or(Duration::ZERO, |t| now.duration_since(t));
        self.last = Some(now);
        let loudest = self
            .power
            .iter()
            .filter(|(_, p)| dbfs(**p) > SPEECH_DBFS)
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(id, _)| id.clone());
        if let Some(id) = loudest {
            let led = match &mut self.leader {
                Some((leading, led)) if *leading == id => {
                    *led += step;
                    *led
                }
                _ => Duration::ZERO,
            };
            if self.current.is_none() || led >= HOLD {
                self.current = Some(id.clone());
            }
            self.leader = Some((id, led));
        }
        self.current.as_deref()
    }

    /// The speaker as last decided.
    pub fn current(&self) -> Option<&str> {
        self.current.as_deref()
    }

    /// A stream left.
    pub fn remove(&mut self, stream_id: &str) {
        self.power.remove(stream_id);
        if self.current.as_deref() == Some(stream_id) {
            self.current = None;
        }
        if self.leader.as_ref().is_some_and(|(id, _)| id == stream_id) {
            self.leader = None;
        }
    }

    pub fn clear(&mut self) {
        *self = ActiveSpeaker::default();
    }
}

fn dbfs(mean_square: f64) -> f64 {
    10.0 * mean_square.max(1e-12).log10()
}

/// The mean square of 16-bit samples, full scale = 1.
pub fn mean_square(samples: &[i16]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let sum: f64 = samples.iter().map(|&s| (s as f64 / 32768.0).powi(2)).sum();
    sum / samples.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOUD: f64 = 0.01; // -20 dBFS
    const QUIET: f64 = 1e-6; // -60 dBFS

    /// `secs` of 20 ms frames with these levels; the speaker after each.
    fn run(s: &mut ActiveSpeaker, t: &mut Instant, secs: f64, levels: &[(&str, f64)]) -> String {
        let mut last = String::new();
        for _ in 0..(secs * 50.0) as usize {
            for (id, ms) in levels {
                s.frame(id, *ms);
            }
            *t += Duration::from_millis(20);
            last = s.decide(*t).unwrap_or("-").to_owned();
        }
        last
    }

    #[test]
    fn the_speaker_follows_who_talks_after_a_hold_and_stays_through_silence() {
        let mut s = ActiveSpeaker::default();
        let mut t = Instant::now();
        assert_eq!(run(&mut s, &mut t, 1.0, &[("a", QUIET), ("b", QUIET)]), "-");
        // The first to speak is the speaker at once.
        assert_eq!(run(&mut s, &mut t, 0.2, &[("a", LOUD), ("b", QUIET)]), "a");
        // A short burst from b does not take the screen.
        assert_eq!(run(&mut s, &mut t, 0.3, &[("a", QUIET), ("b", LOUD)]), "a");
        // Silence: a stays.
        assert_eq!(run(&mut s, &mut t, 2.0, &[("a", QUIET), ("b", QUIET)]), "a");
        // b talks for a while: b takes over.
        assert_eq!(run(&mut s, &mut t, 1.0, &[("a", QUIET), ("b", LOUD)]), "b");
        s.remove("b");
        assert_eq!(s.decide(t), None);
    }

    #[test]
    fn levels_are_measured_against_full_scale() {
        assert!((dbfs(mean_square(&[i16::MAX, i16::MIN])) - 0.0).abs() < 0.01);
        assert!((dbfs(mean_square(&[3277, -3277])) + 20.0).abs() < 0.01);
        assert_eq!(mean_square(&[]), 0.0);
    }
}
