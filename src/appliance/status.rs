//! The replies of the control socket, as `callbox ctl` prints them. This
//! is the documented reply format: one JSON object per line.
//!
//! - `status` -> [`Status`];
//! - `call`, `hangup`, `mute-audio`, `unmute-audio`, `mute-video`, `unmute-video` -> [`CommandDone`],
//!   once the command was fed to the call controller;
//! - any failure -> `{"ok": false, "error": "E_...: reason"}`.

use crate::appliance::control::Request;
use crate::device::stats::StatsSnapshot;
use serde::Serialize;

/// `callbox ctl status`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub ok: bool,
    /// `idle`, `joining`, `in-call`, `leaving`, `reconnecting`, `banned`, `failed`.
    pub state: &'static str,
    /// `kick`, `banned` or `room-disband` while banned.
    pub ban_reason: Option<&'static str>,
    /// One line for people; also systemd's `STATUS=`.
    pub status: String,
    /// What runs degraded, e.g. a lost camera leaves audio only.
    pub degraded: Option<&'static str>,
    pub in_state_s: f64,
    /// Reconnect attempts since the last successful join.
    pub attempt: u32,
    pub last_error: Option<String>,
    pub audio_muted: bool,
    pub video_muted: bool,
    /// Whether each LED is lit right now.
    pub leds: LedLevels,
    pub room: RoomStatus,
    /// Seconds until the configured userSig expires (negative: expired).
    pub usersig_expires_in_s: Option<i64>,
    pub uptime_s: f64,
    /// Full-frame pixel copies per captured frame (0: zero-copy).
    pub frame_copies_per_frame: Option<f64>,
    pub media: StatsSnapshot,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct LedLevels {
    pub call: bool,
    pub banned: bool,
    pub error: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct RoomStatus {
    /// `callbox` or `janus`.
    pub backend: &'static str,
    pub url: String,
    pub user_id: String,
    pub room_id: Option<u32>,
    pub str_room_id: Option<String>,
}

/// A command's reply: the state it led to.
#[derive(Debug, Clone, Serialize)]
pub struct CommandDone {
    pub ok: bool,
    pub command: Request,
    pub state: &'static str,
    pub status: String,
}
