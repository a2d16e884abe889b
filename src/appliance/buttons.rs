//! Press classification: a button's edges (kernel-timestamped, already
//! debounced by the kernel) become short and long presses. A long press
//! fires while the button is still held, once the hold time is reached,
//! so the user sees the LEDs change without letting go. Pure.

use crate::appliance::controller::Press;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct PressTracker {
    long: Duration,
    pressed_at: Option<Instant>,
    long_fired: bool,
}

impl PressTracker {
    pub fn new(long: Duration) -> PressTracker {
        PressTracker {
            long,
            pressed_at: None,
            long_fired: false,
        }
    }

    /// An edge: `pressed` is the logical level (active-low already applied).
    pub fn edge(&mut self, pressed: bool, at: Instant) -> Option<Press> {
        if pressed {
            if self.pressed_at.is_none() {
                self.pressed_at = Some(at);
                self.long_fired = false;
            }
            return None;
        }
        let down = self.pressed_at.take()?;
        if self.long_fired {
            return None;
        }
        Some(if at.saturating_duration_since(down) >= self.long {
            Press::Long
        } else {
            Press::Short
        })
    }

    /// When a held button becomes a long press.
    pub fn deadline(&self) -> Option<Instant> {
        match (self.pressed_at, self.long_fired) {
            (Some(t), false) => Some(t + self.long),
            _ => None,
        }
    }

    pub fn poll(&mut self, now: Instant) -> Option<Press> {
        let due = self.deadline()?;
        if now >= due {
            self.long_fired = true;
            Some(Press::Long)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_presses() {
        let t0 = Instant::now();
        let s = Duration::from_millis;
        let mut b = PressTracker::new(s(3000));
        assert_eq!(b.edge(true, t0), None);
        assert_eq!(b.poll(t0 + s(2999)), None);
        assert_eq!(b.edge(false, t0 + s(200)), Some(Press::Short));
        assert_eq!(b.deadline(), None);
        // Held: fires at 3 s, and the release after it adds nothing.
        b.edge(true, t0 + s(1000));
        assert_eq!(b.deadline(), Some(t0 + s(4000)));
        assert_eq!(b.poll(t0 + s(3999)), None);
        assert_eq!(b.poll(t0 + s(4000)), Some(Press::Long));
        assert_eq!(b.poll(t0 + s(5000)), None);
        assert_eq!(b.edge(false, t0 + s(6000)), None);
        // A release seen late (no poll in between) still counts as long.
        b.edge(true, t0 + s(7000));
        assert_eq!(b.edge(false, t0 + s(10_500)), Some(Press::Long));
        // A stray release or a repeated press edge changes nothing.
        assert_eq!(b.edge(false, t0 + s(11_000)), None);
        b.edge(true, t0 + s(12_000));
        b.edge(true, t0 + s(12_500));
        assert_eq!(b.edge(false, t0 + s(12_600)), Some(Press::Short));
    }
}
