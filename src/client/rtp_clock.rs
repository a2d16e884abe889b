//! RTP timestamps of a local track, from the capture clock.
//!
//! webrtc-rs's sample packetizer advances the timestamp by each sample's
//! nominal duration. A camera that skips a frame, or delivers at 29.97
//! rather than 30 fps, then drifts from its RTP timeline: the receiver sees
//! frames "late" and grows its jitter buffer, and its lip sync maps the
//! wrong capture instants. Here a sample with a capture time gets the
//! timestamp of that instant (the first capture is the origin); one without
//! (audio, whose sample count is its clock) follows the last by its
//! duration.

use std::time::Duration;

/// One track's RTP timeline. Pure: the caller says when each sample was taken.
#[derive(Debug, Clone)]
pub struct RtpClock {
    rate: u64,
    base: u32,
    /// The first capture time and the timestamp it got.
    origin: Option<(u64, u32)>,
    /// The last timestamp handed out, and the duration of its sample.
    last: Option<(u32, Duration)>,
}

impl RtpClock {
    /// `rate` in Hz (90000 for video, 48000 for Opus); `base` the random
    /// first timestamp RTP asks for.
    pub fn new(rate: u32, base: u32) -> Self {
        RtpClock {
            rate: rate as u64,
            base,
            origin: None,
            last: None,
        }
    }

    /// The timestamp of a sample captured at `capture_us` (any monotonic
    /// microsecond clock). Always after the last one, so a capture clock
    /// that stalls cannot make two samples share a timestamp.
    pub fn at_capture(&mut self, capture_us: u64, duration: Duration) -> u32 {
        let ts = match self.origin {
            None => {
                let ts = self.following();
                self.origin = Some((capture_us, ts));
                ts
            }
            Some((us0, ts0)) => {
                let ticks = capture_us.saturating_sub(us0) * self.rate / 1_000_000;
                let ts = ts0.wrapping_add(ticks as u32);
                match self.last {
                    // Not after the last (wrapping compare): one tick on.
                    Some((last, _)) if (ts.wrapping_sub(last) as i32) <= 0 => last.wrapping_add(1),
                    _ => ts,
                }
            }
        };
        self.last = Some((ts, duration));
        ts
    }

    /// The timestamp of a sample with no capture time: the last one's
    /// plus the last sample's duration.
    pub fn next(&mut self, duration: Duration) -> u32 {
        let ts = self.following();
        self.last = Some((ts, duration));
        ts
    }

    fn following(&self) -> u32 {
        match self.last {
            None => self.base,
            Some((ts, d)) => ts.wrapping_add(self.ticks(d)),
        }
    }

    fn ticks(&self, d: Duration) -> u32 {
        (d.as_micros() as u64 * self.rate / 1_000_000) as u32
    }
}

/// The longest a frame may take from capture to its RTP packets and still
/// be stamped from its capture time; older stamps are not trusted.
pub const MAX_CAPTURE_AGE_US: u64 = 1_000_000;

/// A capture time stamped on the wall clock (as frames are, for the
/// viewer's glass-to-glass reading) moved onto a monotonic clock: now on
/// that clock less the frame's age. A wall clock stepped by NTP between
/// frames then leaves the RTP timeline alone. `None` for a stamp from the
/// future or older than [`MAX_CAPTURE_AGE_US`].
pub fn monotonic_capture_us(
    mono_now_us: u64,
    wall_now_us: u64,
    capture_wall_us: u64,
) -> Option<u64> {
    let age = wall_now_us.checked_sub(capture_wall_us)?;
    (age <= MAX_CAPTURE_AGE_US).then(|| mono_now_us.saturating_sub(age))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_stamps_move_to_the_monotonic_clock() {
        // 2 ms old, whatever the wall clock reads.
        assert_eq!(
            monotonic_capture_us(50_000, 1_700_000_002_000, 1_700_000_000_000),
            Some(48_000)
        );
        assert_eq!(
            monotonic_capture_us(50_000, 1_700_000_000_000, 1_700_000_000_500),
            None
        );
        assert_eq!(
            monotonic_capture_us(50_000, 1_700_002_000_000, 1_700_000_000_000),
            None
        );
    }

    const FRAME: Duration = Duration::from_micros(33_333);

    /// A skipped frame leaves its gap in the timeline, where nominal
    /// durations would close it and drift one frame behind for good.
    #[test]
    fn video_follows_the_capture_clock() {
        let mut c = RtpClock::new(90_000, 1000);
        let ts: Vec<u32> = [5_000_000u64, 5_033_333, 5_100_000, 5_133_333]
            .iter()
            .map(|&us| c.at_capture(us, FRAME))
            .collect();
        assert_eq!(ts, vec![1000, 1000 + 2999, 1000 + 9000, 1000 + 11_999]);
    }

    #[test]
    fn audio_follows_its_sample_count() {
        let mut c = RtpClock::new(48_000, u32::MAX - 500);
        let ts: Vec<u32> = (0..3).map(|_| c.next(Duration::from_millis(20))).collect();
        // 960 samples per 20 ms packet, across the 32-bit wrap.
        assert_eq!(ts, vec![u32::MAX - 500, 459, 1419]);
    }

    /// A capture clock that stands still or steps back never repeats or
    /// reverses a timestamp.
    #[test]
    fn timestamps_only_move_forward() {
        let mut c = RtpClock::new(90_000, u32::MAX - 1);
        let a = c.at_capture(1_000_000, FRAME);
        let b = c.at_capture(1_000_000, FRAME);
        let d = c.at_capture(900_000, FRAME);
        assert_eq!((a, b, d), (u32::MAX - 1, u32::MAX, 0));
    }
}
