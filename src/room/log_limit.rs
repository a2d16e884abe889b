//! What the room service does with text and logs that callers control: a
//! caller's text is clipped and made one line before it is logged or sent
//! back ([`clip`]), and warnings about bad input are rate-limited
//! ([`RateLimitedLog`]) so a hostile client cannot fill the disk.

use std::sync::Mutex;
use std::time::Instant;

/// At most this many characters of a caller's text reach a log or a reply.
pub const CLIP_CHARS: usize = 80;

/// `text` as one line of at most [`CLIP_CHARS`] characters, control
/// characters escaped, with how much was cut.
pub fn clip(text: &str) -> String {
    let mut out = String::new();
    for (n, c) in text.chars().enumerate() {
        if n == CLIP_CHARS {
            out.push_str(&format!("... ({} bytes)", text.len()));
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A token bucket for one kind of warning: `burst` lines, refilled at
/// `burst` per second; what is dropped is counted and reported with the
/// next line that gets through.
#[derive(Debug)]
pub struct RateLimitedLog {
    burst: u32,
    state: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
    suppressed: u64,
}

impl RateLimitedLog {
    pub fn per_second(burst: u32) -> Self {
        RateLimitedLog {
            burst,
            state: Mutex::new(Bucket {
                tokens: f64::from(burst),
                at: Instant::now(),
                suppressed: 0,
            }),
        }
    }

    /// Whether a line may go out at `now`; `Some(n)`: yes, after `n` dropped.
    pub fn admit(&self, now: Instant) -> Option<u64> {
        let mut b = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let refill = now.saturating_duration_since(b.at).as_secs_f64() * f64::from(self.burst);
        b.tokens = (b.tokens + refill).min(f64::from(self.burst));
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Some(std::mem::take(&mut b.suppressed))
        } else {
            b.suppressed += 1;
            None
        }
    }

    /// Log a warning made by `line` (only built when it goes out).
    pub fn warn(&self, line: impl FnOnce() -> String) {
        match self.admit(Instant::now()) {
            Some(0) => log::warn!(target: "callbox::room", "{}", line()),
            Some(n) => {
                log::warn!(target: "callbox::room", "{} ({n} more like it suppressed)", line())
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn caller_text_is_one_short_line() {
        let long = format!("a\nb{}", "x".repeat(70_000));
        let c = clip(&long);
        assert!(!c.contains('\n') && c.starts_with("a\\nb"), "{c}");
        assert!(c.len() < 120 && c.ends_with("(70003 bytes)"), "{c}");
        assert_eq!(clip("join"), "join");
    }

    #[test]
    fn warnings_are_limited_per_second_and_the_dropped_counted() {
        let log = RateLimitedLog::per_second(3);
        let t0 = Instant::now();
        let got: Vec<_> = (0..10).map(|_| log.admit(t0)).collect();
        assert_eq!(got.iter().filter(|g| g.is_some()).count(), 3);
        assert_eq!(log.admit(t0 + Duration::from_secs(1)), Some(7));
    }
}
