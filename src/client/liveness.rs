//! When the room was last heard from, over any path: signaling frames
//! (including the pongs to the pings [`crate::client::signaling`] sends
//! every second) and inbound RTP/RTCP on any media connection. A call that
//! hears nothing for a few seconds is dead: ICE's consent check would take
//! about 30 s to say so. Signaling counts because the room service answers
//! both paths, and because our SFU sends a publisher no RTCP while nobody
//! subscribes (observed with str0m 0.25 in RTP mode).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Default)]
pub struct RoomActivity(Arc<AtomicU64>);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl RoomActivity {
    pub fn touch(&self) {
        // +1: 0 means "never".
        let us = epoch().elapsed().as_micros() as u64 + 1;
        self.0.store(us, Relaxed);
    }

    /// How long since the room was last heard from; `None` if never.
    pub fn silence(&self) -> Option<Duration> {
        match self.0.load(Relaxed) {
            0 => None,
            us => Some(
                epoch()
                    .elapsed()
                    .saturating_sub(Duration::from_micros(us - 1)),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_since_last_touch() {
        let a = RoomActivity::default();
        assert_eq!(a.silence(), None);
        a.touch();
        std::thread::sleep(Duration::from_millis(30));
        let s = a.silence().expect("touched");
        assert!(
            s >= Duration::from_millis(30) && s < Duration::from_secs(5),
            "{s:?}"
        );
        a.clone().touch();
        assert!(a.silence().expect("touched") < s);
    }
}
