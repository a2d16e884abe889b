//! When a worker's forwarded packets leave: at once, or, while a video
//! frame's packets are still coming in one burst, when its last (marker)
//! packet is in. A subscriber's share of a gathered frame is then one UDP
//! GSO message. The frame is no later for it (a receiver decodes on its
//! last packet); a paced publisher's packets, further apart than
//! [`FRAME_HOLD`], are not held longer, and a keyframe to many subscribers
//! leaves in parts of at most [`MAX_HELD`] datagrams. Pure: the engine
//! reports what it forwarded and asks.

use std::time::{Duration, Instant};

/// How long the first packet of a frame waits for the rest.
const FRAME_HOLD: Duration = Duration::from_micros(500);
/// Datagrams queued past which a gathered frame leaves anyway: as many as
/// the send queue keeps buffers for, so a P-frame to 100 subscribers (about
/// 400 datagrams) still leaves as one message each, and holding allocates
/// nothing. At 128, frames to 50 or more subscribers left in parts, and
/// the worker spent about a fifth more CPU per stream there.
const MAX_HELD: usize = crate::room::udp_batch::SPARE_BUFFERS;

#[derive(Debug, Default)]
pub(super) struct Gather {
    /// A video frame is being gathered: until then at the latest.
    until: Option<Instant>,
    /// The last packet forwarded ended a video frame.
    ended_frame: bool,
}

impl Gather {
    /// A packet was forwarded `now`: a video packet that does not end its
    /// frame holds what is queued; any other packet lets it go.
    pub fn forwarded(&mut self, video: bool, marker: bool, now: Instant) {
        self.ended_frame = video && marker;
        self.until = match (video, marker) {
            (true, false) => Some(self.until.unwrap_or(now + FRAME_HOLD)),
            _ => None,
        };
    }

    /// Whether `queued` datagrams may still wait at `now`.
    pub fn holding(&self, now: Instant, queued: usize) -> bool {
        self.until.is_some_and(|t| now < t) && queued < MAX_HELD
    }

    /// When the worker must wake to send a gathered frame whose end never came.
    pub fn deadline(&self) -> Option<Instant> {
        self.until
    }

    /// Whether the last packet forwarded ended a video frame.
    pub fn ended_frame(&self) -> bool {
        self.ended_frame
    }

    /// What was queued has left.
    pub fn sent(&mut self) {
        self.until = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_held_until_its_last_packet() {
        let (mut g, t0) = (Gather::default(), Instant::now());
        g.forwarded(true, false, t0);
        g.forwarded(true, false, t0 + Duration::from_micros(100));
        assert!(g.holding(t0 + Duration::from_micros(200), 10));
        assert!(!g.ended_frame());
        g.forwarded(true, true, t0 + Duration::from_micros(300));
        assert!(g.ended_frame());
        assert!(!g.holding(t0 + Duration::from_micros(300), 10));
        assert_eq!(g.deadline(), None);
    }

    #[test]
    fn the_hold_counts_from_the_first_packet_and_ends_on_time() {
        let (mut g, t0) = (Gather::default(), Instant::now());
        g.forwarded(true, false, t0);
        g.forwarded(true, false, t0 + FRAME_HOLD / 2);
        assert_eq!(g.deadline(), Some(t0 + FRAME_HOLD));
        assert!(g.holding(t0 + FRAME_HOLD - Duration::from_micros(1), 10));
        assert!(!g.holding(t0 + FRAME_HOLD, 10));
    }

    #[test]
    fn audio_and_a_full_queue_are_not_held() {
        let (mut g, t0) = (Gather::default(), Instant::now());
        g.forwarded(false, false, t0);
        assert!(!g.holding(t0, 1));
        g.forwarded(true, false, t0);
        assert!(g.holding(t0, MAX_HELD - 1));
        assert!(!g.holding(t0, MAX_HELD));
        g.sent();
        assert!(!g.holding(t0, 1));
    }
}
