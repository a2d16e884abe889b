//! The appliance's sections of the device config: `[call]` (what buttons
//! and losses do), `[gpio]` (which lines are buttons and LEDs) and
//! `[service]` (control socket, logging). Checked with the rest of the file.

use crate::appliance::controller::{BannedPress, ButtonMode, Policy};
use crate::config::Problems;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallSection {
    /// Join the room when the daemon starts.
    pub auto_join: bool,
    /// What a short call-button press does while banned.
    pub banned_press: BannedPress,
    /// `separate` (call + hangup buttons) or `toggle` (the call button does both).
    pub buttons: ButtonMode,
    /// Holding the call button this long clears Banned/Failed and rejoins.
    pub long_press_ms: u64,
    /// No RTP/RTCP from the room for this long means the media path is dead.
    pub dead_media_ms: u64,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// Warn this long before the userSig expires.
    pub usersig_warn_days: u64,
}

impl Default for CallSection {
    fn default() -> Self {
        CallSection {
            auto_join: true,
            banned_press: BannedPress::Rejoin,
            buttons: ButtonMode::Separate,
            long_press_ms: 3000,
            dead_media_ms: 3000,
            backoff_initial_ms: 1000,
            backoff_max_ms: 30_000,
            usersig_warn_days: 7,
        }
    }
}

impl CallSection {
    pub fn policy(&self) -> Policy {
        Policy {
            auto_join: self.auto_join,
            banned_press: self.banned_press,
            buttons: self.buttons,
            backoff_initial: Duration::from_millis(self.backoff_initial_ms),
            backoff_max: Duration::from_millis(self.backoff_max_ms),
        }
    }

    pub fn validate(&self, p: &mut Problems) {
        p.check(
            (100..=60_000).contains(&self.long_press_ms),
            "call.long_press_ms",
            "100 to 60000",
        );
        // The promise is detection within 5 s.
        p.check(
            (1000..=5000).contains(&self.dead_media_ms),
            "call.dead_media_ms",
            "1000 to 5000",
        );
        p.check(
            self.backoff_initial_ms >= 100 && self.backoff_initial_ms <= self.backoff_max_ms,
            "call.backoff_initial_ms",
            "need 100 <= backoff_initial_ms <= backoff_max_ms",
        );
        p.check(
            self.backoff_max_ms <= 600_000,
            "call.backoff_max_ms",
            "at most 600000",
        );
    }
}

/// A line by name (found on any chip, or on `chip`) or by offset on `chip`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum LineId {
    Offset(u32),
    Name(String),
}

impl std::fmt::Display for LineId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LineId::Offset(o) => write!(f, "offset {o}"),
            LineId::Name(n) => write!(f, "{n:?}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BiasKind {
    PullUp,
    PullDown,
    Disabled,
    /// Leave the line's bias as the board set it.
    AsIs,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ButtonLine {
    /// `gpiochip0` or `/dev/gpiochip0`; optional for a named line.
    pub chip: Option<String>,
    pub line: LineId,
    /// Pressed pulls the line low (the usual wiring with a pull-up).
    #[serde(default = "yes")]
    pub active_low: bool,
    #[serde(default = "pull_up")]
    pub bias: BiasKind,
    /// Kernel debounce period.
    #[serde(default = "debounce")]
    pub debounce_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedLine {
    pub chip: Option<String>,
    pub line: LineId,
    #[serde(default)]
    pub active_low: bool,
}

fn yes() -> bool {
    true
}
fn pull_up() -> BiasKind {
    BiasKind::PullUp
}
fn debounce() -> u64 {
    20
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpioSection {
    pub call_button: Option<ButtonLine>,
    pub hangup_button: Option<ButtonLine>,
    pub call_led: Option<LedLine>,
    pub banned_led: Option<LedLine>,
    pub error_led: Option<LedLine>,
}

impl GpioSection {
    /// Every configured line: (config key, chip, line).
    pub fn lines(&self) -> Vec<(&'static str, Option<&str>, &LineId)> {
        let buttons = [
            ("call_button", &self.call_button),
            ("hangup_button", &self.hangup_button),
        ]
        .into_iter()
        .filter_map(|(k, b)| b.as_ref().map(|b| (k, b.chip.as_deref(), &b.line)));
        let leds = [
            ("call_led", &self.call_led),
            ("banned_led", &self.banned_led),
            ("error_led", &self.error_led),
        ]
        .into_iter()
        .filter_map(|(k, l)| l.as_ref().map(|l| (k, l.chip.as_deref(), &l.line)));
        buttons.chain(leds).collect()
    }

    pub fn validate(&self, call: &CallSection, p: &mut Problems) {
        for (key, chip, line) in self.lines() {
            if let (LineId::Offset(_), None) = (line, chip) {
                p.add(
                    &format!("gpio.{key}.chip"),
                    "a line given by offset needs its chip",
                );
            }
        }
        for (key, b) in [
            ("call_button", &self.call_button),
            ("hangup_button", &self.hangup_button),
        ] {
            if let Some(b) = b {
                p.check(
                    b.debounce_ms <= 1000,
                    &format!("gpio.{key}.debounce_ms"),
                    "0 to 1000",
                );
            }
        }
        p.check(
            !(call.buttons == ButtonMode::Separate
                && self.call_button.is_some()
                && self.hangup_button.is_none()),
            "gpio.hangup_button",
            "call.buttons = \"separate\" needs a hangup button (or set call.buttons = \"toggle\")",
        );
        p.check(
            !(call.buttons == ButtonMode::Toggle && self.hangup_button.is_some()),
            "gpio.hangup_button",
            "call.buttons = \"toggle\" uses the call button only; remove hangup_button",
        );
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceSection {
    /// Unix socket for `callbox ctl`.
    pub control_socket: PathBuf,
    /// `error`, `warn`, `info`, `debug` or `trace`; `RUST_LOG` overrides.
    pub log_level: String,
}

impl Default for ServiceSection {
    fn default() -> Self {
        ServiceSection {
            control_socket: PathBuf::from(DEFAULT_CONTROL_SOCKET),
            log_level: "info".into(),
        }
    }
}

pub const DEFAULT_CONTROL_SOCKET: &str = "/run/callbox/control.sock";

impl ServiceSection {
    pub fn validate(&self, p: &mut Problems) {
        p.check(
            ["error", "warn", "info", "debug", "trace"].contains(&self.log_level.as_str()),
            "service.log_level",
            "one of error, warn, info, debug, trace",
        );
        p.check(
            self.control_socket.is_absolute(),
            "service.control_socket",
            "must be an absolute path",
        );
    }
}
