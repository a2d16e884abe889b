//! systemd integration through `sd-notify`: `READY=1` once config is valid
//! and devices are open, `STATUS=` with the call state, `WATCHDOG=1` only
//! while every media thread makes progress (a stuck pipeline stops the
//! pings and systemd restarts the service), `STOPPING=1` on the way out.
//! Outside systemd (no `NOTIFY_SOCKET`) every call is a no-op.

use sd_notify::NotifyState;
use std::time::Duration;

pub struct Notifier {
    enabled: bool,
    watchdog: Option<Duration>,
    last_status: String,
}

impl Notifier {
    pub fn from_env() -> Notifier {
        Notifier {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
            watchdog: sd_notify::watchdog_enabled(),
            last_status: String::new(),
        }
    }

    fn send(&self, states: &[NotifyState]) {
        if self.enabled {
            if let Err(e) = sd_notify::notify(states) {
                log::warn!("E_SD_NOTIFY: cannot notify systemd: {e}");
            }
        }
    }

    pub fn ready(&mut self, status: &str) {
        self.last_status = status.to_owned();
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// Send `STATUS=` when it changed.
    pub fn status(&mut self, status: &str) {
        if status != self.last_status {
            self.last_status = status.to_owned();
            self.send(&[NotifyState::Status(status)]);
        }
    }

    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    /// How often to check the pipeline and ping: half the watchdog timeout,
    /// as sd_watchdog_enabled(3) advises.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|w| w / 2)
    }

    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }
}

/// The media threads whose heartbeat did not move between two readings
/// (a thread missing from `before` has just started and counts as alive).
pub fn stalled(before: &[(&'static str, u64)], now: &[(&'static str, u64)]) -> Vec<&'static str> {
    now.iter()
        .filter(|(name, n)| before.iter().any(|(b, m)| b == name && m == n))
        .map(|(name, _)| *name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_that_stops_counting_is_stalled() {
        let before = [("video", 10), ("microphone", 50), ("speaker", 50)];
        assert!(stalled(
            &before,
            &[("video", 11), ("microphone", 99), ("speaker", 51)]
        )
        .is_empty());
        assert_eq!(
            stalled(
                &before,
                &[("video", 10), ("microphone", 99), ("speaker", 50)]
            ),
            ["video", "speaker"]
        );
        assert!(stalled(&[], &[("video", 0)]).is_empty());
    }
}
