//! The device as an appliance, around [`crate::device::daemon::Device`]:
//!
//! - [`controller`]: the call state machine (pure); [`leds`], [`buttons`]:
//!   LED patterns and press classification (pure).
//! - [`config`]: the whole `device.toml`, with the `[call]`, `[gpio]` and
//!   `[service]` sections.
//! - [`gpio`]: buttons and LEDs on the GPIO character device.
//! - [`notify`]: systemd readiness, status and watchdog.
//! - [`control`]: the control socket and `callbox ctl`; [`status`]: its
//!   reply format.
//! - [`runner`]: the daemon's main loop tying them together.
//! - [`probe`]: `callbox probe`, the pre-call device check.

pub mod buttons;
pub mod config;
pub mod control;
pub mod controller;
pub mod gpio;
pub mod leds;
pub mod notify;
pub mod probe;
pub mod runner;
pub mod status;
