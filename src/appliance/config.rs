//! The whole `device.toml` ([`ApplianceConfig`]): the device's own
//! sections (`[room]`, `[network]`, `[video]`, `[audio]`, owned by
//! `crate::device::config`) and the appliance's: `[call]` (what buttons
//! and losses do), `[gpio]` (which lines are buttons and LEDs) and
//! `[service]` (control socket, logging). Every section checks itself;
//! all problems of the file are reported in one run.

use crate::appliance::controller::{BannedPress, ButtonMode, Policy};
use crate::config::{self, ConfigError, Problems};
use crate::device::config::{
    AudioSection, DeviceConfig, DisplaySection, NetworkSection, RoomSection, VideoSection,
};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `device.toml`, as `callbox device` and `callbox probe` read it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplianceConfig {
    pub room: RoomSection,
    #[serde(default)]
    pub network: NetworkSection,
    #[serde(default)]
    pub video: VideoSection,
    #[serde(default)]
    pub audio: AudioSection,
    #[serde(default)]
    pub display: DisplaySection,
    #[serde(default)]
    pub call: CallSection,
    #[serde(default)]
    pub gpio: GpioSection,
    #[serde(default)]
    pub service: ServiceSection,
}

impl ApplianceConfig {
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        config::load_checked(file, Self::check)
    }

    pub fn parse(file: &Path, text: &str) -> Result<Self, ConfigError> {
        config::parse_checked(file, text, Self::check)
    }

    fn check(&self, file: &Path) -> Result<(), ConfigError> {
        let mut p = Problems::default();
        self.device().validate(&mut p);
        self.call.validate(&mut p);
        self.gpio.validate(&self.call, &mut p);
        self.service.validate(&mut p);
        p.into_result(file)
    }

    /// What the device's media needs of it.
    pub fn device(&self) -> DeviceConfig {
        DeviceConfig {
            room: self.room.clone(),
            network: self.network.clone(),
            video: self.video.clone(),
            audio: self.audio.clone(),
            display: self.display.clone(),
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    use crate::device::config::tests::GOOD;

    /// Problems in device and appliance sections are reported together,
    /// each with its key; the device's own parser refuses appliance keys.
    #[test]
    fn every_section_is_checked_in_one_run() {
        let c = ApplianceConfig::parse(Path::new("d.toml"), GOOD).unwrap();
        assert_eq!(c.device().room.user_id, "device-1");
        assert!(c.call.auto_join);
        let bad = GOOD.replace("fps", "x").replace(
            "[video]",
            "[call]\nlong_press_ms = 5\n[service]\nlog_level = \"loud\"\n[video]\nfps = 0",
        );
        let e = ApplianceConfig::parse(Path::new("d.toml"), &bad).unwrap_err();
        let ConfigError::Invalid { problems, .. } = &e else {
            panic!("{e}")
        };
        let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            ["video.fps", "call.long_press_ms", "service.log_level"],
            "{e}"
        );
        let with_call = format!("{GOOD}\n[call]\nauto_join = false\n");
        assert!(DeviceConfig::parse(Path::new("d.toml"), &with_call).is_err());
    }
}
