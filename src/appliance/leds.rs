//! LED patterns and what level a line has at a moment of a pattern. Pure;
//! `appliance::gpio` drives the lines.

use std::time::Duration;

/// How an LED shows a state. Documented for users in the README.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    Off,
    On,
    /// On for half the period, off for the other half.
    Blink(Duration),
    /// `n` short flashes (150 ms on, 150 ms off), then dark until the
    /// 2 s cycle repeats: a blink code.
    Flashes(u8),
}

const FLASH: Duration = Duration::from_millis(150);
const FLASH_CYCLE: Duration = Duration::from_millis(2000);

impl Pattern {
    /// Whether the LED is lit `t` after the pattern started.
    pub fn lit(self, t: Duration) -> bool {
        match self {
            Pattern::Off => false,
            Pattern::On => true,
            Pattern::Blink(period) => {
                let p = period.as_millis().max(2);
                t.as_millis() % p < p / 2
            }
            Pattern::Flashes(n) => {
                let pos = t.as_millis() % FLASH_CYCLE.as_millis();
                let slot = pos / FLASH.as_millis();
                slot < 2 * n as u128 && slot.is_multiple_of(2)
            }
        }
    }
}

/// The appliance's LEDs; `error` is optional hardware.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leds {
    pub call: Pattern,
    pub banned: Pattern,
    pub error: Pattern,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn levels_over_time() {
        assert!(!Pattern::Off.lit(ms(123)));
        assert!(Pattern::On.lit(ms(123_456)));
        let blink = Pattern::Blink(ms(1000));
        let lit: Vec<bool> = [0, 499, 500, 999, 1000, 1499]
            .map(|t| blink.lit(ms(t)))
            .to_vec();
        assert_eq!(lit, [true, true, false, false, true, true]);
        // Two flashes: lit in [0,150) and [300,450), dark from 450 to 2000.
        let two = Pattern::Flashes(2);
        let lit: Vec<bool> = [0, 149, 150, 300, 449, 450, 600, 1999, 2000, 2300]
            .map(|t| two.lit(ms(t)))
            .to_vec();
        assert_eq!(
            lit,
            [true, true, false, true, true, false, false, false, true, true]
        );
        // Three flashes are told apart from two by the third.
        assert!(Pattern::Flashes(3).lit(ms(600)));
        let count = |n| {
            (0..2000)
                .step_by(10)
                .filter(|t| Pattern::Flashes(n).lit(ms(*t)))
                .count()
        };
        assert_eq!((count(2), count(3)), (30, 45));
    }
}
