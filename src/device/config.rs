//! The device's sections of `device.toml`: where to join (`[room]`,
//! `[network]`) and which camera, microphone, speaker and screen to use
//! (`[video]`, `[audio]`, `[display]`). Each section checks itself; the whole file (with the
//! appliance's `[call]`, `[gpio]`, `[service]`) is
//! `crate::appliance::config::ApplianceConfig`. Unknown keys and bad values
//! are refused before anything starts, each with its key.

use crate::client::VideoPlayout;
use crate::config::{self, ConfigError, Problems, Secret};
use crate::device::display::screen::{Idle, Layout};
use crate::device::processing::{NoiseLevel, Settings};
use crate::device::v4l2::PixelFormat;
use crate::protocol::IceServer;
use serde::Deserialize;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// What the device's media needs: where to join and with which devices.
/// Parsed on its own (tests, library users) or as part of the appliance's
/// config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    pub room: RoomSection,
    #[serde(default)]
    pub network: NetworkSection,
    #[serde(default)]
    pub video: VideoSection,
    #[serde(default)]
    pub audio: AudioSection,
    #[serde(default)]
    pub display: DisplaySection,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomSection {
    /// Which room engine: the callbox room service or a Janus VideoRoom.
    #[serde(default)]
    pub backend: Backend,
    /// Signaling URL of the room service (`ws://` or `wss://.../ws`), or
    /// Janus's WebSocket transport.
    pub url: String,
    /// callbox only (as the userSig).
    #[serde(default)]
    pub sdk_app_id: u64,
    pub user_id: String,
    /// The userSig itself, or `user_sig_file` holding it.
    pub user_sig: Option<Secret>,
    pub user_sig_file: Option<PathBuf>,
    pub room_id: Option<u32>,
    pub str_room_id: Option<String>,
    /// Extra CA (PEM) to trust for `wss://` and `turns:`.
    pub ca_file: Option<PathBuf>,
    /// TRTC's privateMapKey for this room, or a file holding it, where the
    /// app requires one (it is checked by the room service).
    pub private_map_key: Option<Secret>,
    pub private_map_key_file: Option<PathBuf>,
    /// `ws://` to a host other than loopback sends the userSig in clear:
    /// refused unless this says it is meant (a closed network, a test rig).
    #[serde(default)]
    pub allow_insecure_ws: bool,
    /// Janus only: the room's pin, a stored token, the room's secret (lets
    /// the device kick its own stale session), the display name (the user
    /// id when unset).
    pub pin: Option<Secret>,
    pub token: Option<Secret>,
    pub room_secret: Option<Secret>,
    pub display: Option<String>,
}

/// The room engine a device joins.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Callbox,
    Janus,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSection {
    /// Local address for media (ICE host candidates).
    #[serde(default = "any_addr")]
    pub bind: IpAddr,
    /// STUN and TURN servers of the device's own (`[[network.ice_servers]]`);
    /// the room's TURN servers come with the join reply on top.
    #[serde(default)]
    pub ice_servers: Vec<IceServerSection>,
    /// `relay`: only TURN relay candidates, every call through TURN.
    #[serde(default)]
    pub ice_transport_policy: IceTransportPolicy,
    /// TWCC + GCC congestion control setting the video bitrate (opt-in).
    #[serde(default)]
    pub congestion_control: bool,
}

/// One `[[network.ice_servers]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IceServerSection {
    /// `stun:host:3478`, `turn:host:3478?transport=udp`, ...
    pub urls: Vec<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub credential: Option<Secret>,
    /// Or the credential in a file.
    #[serde(default)]
    pub credential_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IceTransportPolicy {
    #[default]
    All,
    Relay,
}

impl NetworkSection {
    pub fn validate(&self, p: &mut Problems) {
        for (i, s) in self.ice_servers.iter().enumerate() {
            let key = |k: &str| format!("network.ice_servers[{i}].{k}");
            p.check(!s.urls.is_empty(), &key("urls"), "at least one URL");
            for url in &s.urls {
                p.check(
                    ["stun:", "turn:", "turns:"]
                        .iter()
                        .any(|x| url.starts_with(x)),
                    &key("urls"),
                    format!("{url:?} is not a stun:, turn: or turns: URL"),
                );
            }
            let turn = s.urls.iter().any(|u| u.starts_with("turn"));
            let has_credential = s.credential.is_some() || s.credential_file.is_some();
            p.check(
                !turn || (s.username.is_some() && has_credential),
                &key("username"),
                "a TURN server needs username and credential (or credential_file)",
            );
            p.check(
                !(s.credential.is_some() && s.credential_file.is_some()),
                &key("credential"),
                "credential or credential_file, not both",
            );
            if let Some(f) = &s.credential_file {
                p.check_file(&key("credential_file"), f);
            }
        }
    }

    /// The configured servers, credentials read (files each time).
    pub fn ice_servers(&self) -> Result<Vec<IceServer>, SecretUnavailable> {
        self.ice_servers
            .iter()
            .map(|s| {
                let file_key = "network.ice_servers.credential_file";
                Ok(IceServer {
                    urls: s.urls.clone(),
                    username: s.username.clone(),
                    credential: read_secret(&s.credential, &s.credential_file, file_key)?,
                })
            })
            .collect()
    }
}

fn any_addr() -> IpAddr {
    IpAddr::from([0, 0, 0, 0])
}

impl Default for NetworkSection {
    fn default() -> Self {
        NetworkSection {
            bind: any_addr(),
            ice_servers: Vec::new(),
            ice_transport_policy: IceTransportPolicy::All,
            congestion_control: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VideoSourceKind {
    V4l2,
    Synthetic,
    /// A capture program's H.264 on its standard output (`video.command`).
    Command,
}

/// What a keyframe request does to a `command` camera.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CommandKeyframe {
    /// Restart the program: it starts with an IDR.
    Restart,
    /// Wait for the program's next IDR (noted once in the log).
    #[default]
    Ignore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncoderKind {
    Openh264,
    V4l2m2m,
    Passthrough,
    /// The board's V4L2 M2M H.264 encoder if it has one, else OpenH264.
    Auto,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VideoSection {
    pub enabled: bool,
    pub source: VideoSourceKind,
    pub device: String,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// V4L2 fourccs in order of preference.
    pub formats: Vec<PixelFormat>,
    pub encoder: EncoderKind,
    /// The V4L2 M2M encoder node (`v4l2m2m`, `auto`); unset: the first that makes H.264.
    pub encoder_device: Option<PathBuf>,
    /// Cisco's libopenh264.so, loaded at run time instead of the built-in encoder.
    pub openh264_library: Option<PathBuf>,
    pub bitrate_min_kbps: u32,
    pub bitrate_start_kbps: u32,
    pub bitrate_max_kbps: u32,
    pub keyframe_interval_s: u32,
    /// `immediate`: viewers show each frame as soon as it is decoded (the
    /// playout-delay extension at 0); `adaptive`: their jitter buffer decides.
    pub playout: VideoPlayout,
    /// `source = "command"`: the capture program and its arguments.
    pub command: Vec<String>,
    pub command_keyframe: CommandKeyframe,
}

impl Default for VideoSection {
    fn default() -> Self {
        VideoSection {
            enabled: true,
            source: VideoSourceKind::V4l2,
            device: "/dev/video0".into(),
            width: 640,
            height: 480,
            fps: 30,
            formats: PixelFormat::ALL.to_vec(),
            encoder: EncoderKind::Auto,
            encoder_device: None,
            openh264_library: None,
            bitrate_min_kbps: 150,
            bitrate_start_kbps: 800,
            bitrate_max_kbps: 1500,
            keyframe_interval_s: 2,
            playout: VideoPlayout::Immediate,
            command: Vec::new(),
            command_keyframe: CommandKeyframe::Ignore,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaptureKind {
    Alsa,
    Synthetic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlaybackKind {
    Alsa,
    Wav,
    Null,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AudioSection {
    pub enabled: bool,
    pub capture: CaptureKind,
    pub capture_device: String,
    pub playback: PlaybackKind,
    pub playback_device: String,
    /// Where the `wav` sink writes.
    pub wav_path: Option<PathBuf>,
    /// The synthetic microphone's tone.
    pub tone_hz: f64,
    pub bitrate_kbps: u32,
    pub sample_rate: u32,
    /// `[audio.processing]`: echo cancellation, noise suppression, gain.
    pub processing: ProcessingSection,
}

/// Where the echo canceller's far-end reference comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reference {
    /// The frames the playout thread writes to the speaker.
    #[default]
    Playback,
    /// A second ADC channel the codec loops the DAC into (not implemented yet).
    CaptureChannel,
}

/// The microphone's processing chain. Unset keys are on when both the
/// microphone and the speaker are ALSA (a real speakerphone), off otherwise.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessingSection {
    pub echo_cancellation: Option<bool>,
    pub noise_suppression: Option<NoiseLevel>,
    pub auto_gain: Option<bool>,
    pub high_pass: Option<bool>,
    pub reference: Reference,
}

impl AudioSection {
    /// The chain this config runs.
    pub fn processing(&self) -> Settings {
        let speakerphone = self.capture == CaptureKind::Alsa && self.playback == PlaybackKind::Alsa;
        let p = &self.processing;
        let default_ns = if speakerphone {
            NoiseLevel::Moderate
        } else {
            NoiseLevel::Off
        };
        Settings {
            echo_cancellation: p.echo_cancellation.unwrap_or(speakerphone),
            noise_suppression: p.noise_suppression.unwrap_or(default_ns),
            auto_gain: p.auto_gain.unwrap_or(speakerphone),
            high_pass: p.high_pass.unwrap_or(speakerphone),
        }
    }
}

impl Default for AudioSection {
    fn default() -> Self {
        AudioSection {
            enabled: true,
            capture: CaptureKind::Alsa,
            capture_device: "default".into(),
            playback: PlaybackKind::Alsa,
            playback_device: "default".into(),
            wav_path: None,
            tone_hz: 440.0,
            bitrate_kbps: 32,
            sample_rate: 48_000,
            processing: ProcessingSection::default(),
        }
    }
}

/// Where the people the device calls are shown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DisplayKind {
    /// No screen: remote video is not even negotiated.
    #[default]
    None,
    /// The composed screen as YUV4MPEG2, to a file or a FIFO.
    Y4m,
    /// A DRM/KMS screen, the daemon its DRM master.
    Drm,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DisplaySection {
    pub sink: DisplayKind,
    /// Where the `y4m` sink writes.
    pub path: Option<PathBuf>,
    /// For `drm`: the card (default: the first with a connected connector),
    /// the connector as `callbox probe` names it, the mode (`1280x720`;
    /// default: the connector's preferred one).
    pub device: Option<PathBuf>,
    pub connector: Option<String>,
    pub mode: Option<String>,
    /// The composed screen's size (y4m; drm takes the mode's).
    pub width: usize,
    pub height: usize,
    pub fps: u32,
    /// A small picture of the local camera in the corner.
    pub self_view: bool,
    pub idle: Idle,
    pub layout: Layout,
}

impl Default for DisplaySection {
    fn default() -> Self {
        DisplaySection {
            sink: DisplayKind::None,
            path: None,
            device: None,
            connector: None,
            mode: None,
            width: 640,
            height: 480,
            fps: 15,
            self_view: false,
            idle: Idle::Text,
            layout: Layout::Speaker,
        }
    }
}

impl DisplaySection {
    /// `display.mode` as a size.
    pub fn mode_size(&self) -> Option<(u16, u16)> {
        let (w, h) = self.mode.as_deref()?.split_once('x')?;
        Some((w.trim().parse().ok()?, h.trim().parse().ok()?))
    }

    /// `passthrough`: the camera's H.264 goes out as it is (no raw frames).
    pub fn validate(&self, p: &mut Problems, passthrough: bool) {
        match self.sink {
            DisplayKind::None => return,
            DisplayKind::Drm => p.check(
                self.mode.is_none() || self.mode_size().is_some(),
                "display.mode",
                "WIDTHxHEIGHT, as `callbox probe` lists the connector's modes",
            ),
            DisplayKind::Y4m => match &self.path {
                None => p.add("display.path", "the y4m sink needs a path"),
                Some(path) => {
                    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
                    p.check(
                        dir.is_none_or(|d| d.is_dir()),
                        "display.path",
                        format!("{}: its directory does not exist", path.display()),
                    );
                }
            },
        }
        p.check(
            (64..=3840).contains(&self.width) && (64..=2160).contains(&self.height),
            "display.width",
            "width 64 to 3840 and height 64 to 2160",
        );
        p.check((1..=60).contains(&self.fps), "display.fps", "1 to 60");
        p.check(
            !(self.self_view && passthrough),
            "display.self_view",
            "needs raw camera frames: the camera's own H.264 (video.encoder = \"passthrough\") is not decoded on the device",
        );
    }
}

impl DeviceConfig {
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        config::load_checked(file, |c: &Self, f| c.check(f))
    }

    pub fn parse(file: &Path, text: &str) -> Result<Self, ConfigError> {
        config::parse_checked(file, text, |c: &Self, f| c.check(f))
    }

    /// Every section's problems.
    pub fn validate(&self, p: &mut Problems) {
        self.room.validate(p);
        self.network.validate(p);
        self.video.validate(p);
        self.audio.validate(p);
        self.display
            .validate(p, self.video.encoder == EncoderKind::Passthrough);
    }

    fn check(&self, file: &Path) -> Result<(), ConfigError> {
        let mut p = Problems::default();
        self.validate(&mut p);
        p.into_result(file)
    }

    /// The room to join.
    pub fn join_room(&self) -> crate::client::RoomId {
        match (&self.room.str_room_id, self.room.room_id) {
            (Some(s), _) => crate::client::RoomId::Str(s.clone()),
            (None, n) => crate::client::RoomId::Num(n.unwrap_or(0)),
        }
    }
}

/// Why a configured secret (userSig, privateMapKey) cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum SecretUnavailable {
    #[error("{key} {}: {source}", .path.display())]
    File {
        key: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("room.user_sig: set user_sig or user_sig_file")]
    Missing,
}

/// A secret given inline or in a file (read each time, so a re-provisioned
/// file is used at the next join).
fn read_secret(
    inline: &Option<Secret>,
    file: &Option<PathBuf>,
    file_key: &'static str,
) -> Result<Option<String>, SecretUnavailable> {
    match (inline, file) {
        (Some(s), _) => Ok(Some(s.expose().to_owned())),
        (None, Some(f)) => std::fs::read_to_string(f)
            .map(|s| Some(s.trim().to_owned()))
            .map_err(|source| SecretUnavailable::File {
                key: file_key,
                path: f.clone(),
                source,
            }),
        (None, None) => Ok(None),
    }
}

impl RoomSection {
    pub fn user_sig(&self) -> Result<String, SecretUnavailable> {
        read_secret(&self.user_sig, &self.user_sig_file, "room.user_sig_file")?
            .ok_or(SecretUnavailable::Missing)
    }

    pub fn private_map_key(&self) -> Result<Option<String>, SecretUnavailable> {
        read_secret(
            &self.private_map_key,
            &self.private_map_key_file,
            "room.private_map_key_file",
        )
    }

    /// `ws://` to anything but loopback (the userSig would cross the network in clear).
    fn insecure_url(&self) -> bool {
        let Some(rest) = self.url.strip_prefix("ws://") else {
            return false;
        };
        let host = rest.split(['/', '?']).next().unwrap_or("");
        let host = match host.rsplit_once(':') {
            Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
            _ => host,
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        !loopback
    }

    pub fn validate(&self, p: &mut Problems) {
        p.check(
            self.url.starts_with("ws://") || self.url.starts_with("wss://"),
            "room.url",
            "must start with ws:// or wss://",
        );
        match self.backend {
            Backend::Callbox => self.validate_callbox(p),
            Backend::Janus => self.validate_janus(p),
        }
        if let Err(e) = crate::protocol::validate_user_id(&self.user_id) {
            p.add("room.user_id", e.to_string());
        }
        if let Err(e) = crate::protocol::RoomId::from_fields(
            self.room_id.map(i64::from),
            self.str_room_id.as_deref(),
        ) {
            p.add("room.room_id", e.to_string());
        }
        if let Some(ca) = &self.ca_file {
            p.check_file("room.ca_file", ca);
        }
        p.check(
            !self.insecure_url() || self.allow_insecure_ws,
            "room.url",
            "ws:// to a host other than loopback sends the userSig in clear: use wss:// (or set room.allow_insecure_ws = true on a closed network)",
        );
    }

    /// The userSig and privateMapKey, which only the callbox room service takes.
    fn validate_callbox(&self, p: &mut Problems) {
        p.check(self.sdk_app_id != 0, "room.sdk_app_id", "required");
        match (&self.user_sig, &self.user_sig_file) {
            (Some(_), Some(_)) => p.add("room.user_sig", "set user_sig or user_sig_file, not both"),
            (None, None) => p.add("room.user_sig", "set user_sig or user_sig_file"),
            (None, Some(f)) => p.check_file("room.user_sig_file", f),
            _ => {}
        }
        match (&self.private_map_key, &self.private_map_key_file) {
            (Some(_), Some(_)) => p.add(
                "room.private_map_key",
                "set private_map_key or private_map_key_file, not both",
            ),
            (None, Some(f)) => p.check_file("room.private_map_key_file", f),
            _ => {}
        }
        for (key, set) in [
            ("room.pin", self.pin.is_some()),
            ("room.token", self.token.is_some()),
            ("room.room_secret", self.room_secret.is_some()),
            ("room.display", self.display.is_some()),
        ] {
            p.check(!set, key, "only for backend = \"janus\"");
        }
    }

    /// Janus rooms are numbers; a userSig means nothing to Janus.
    fn validate_janus(&self, p: &mut Problems) {
        p.check(
            self.room_id.is_some(),
            "room.room_id",
            "a Janus VideoRoom is a number: set room_id",
        );
        for (key, set) in [
            ("room.str_room_id", self.str_room_id.is_some()),
            (
                "room.private_map_key",
                self.private_map_key.is_some() || self.private_map_key_file.is_some(),
            ),
        ] {
            p.check(!set, key, "not for backend = \"janus\"");
        }
    }

    /// The Janus room to join, for `backend = "janus"`.
    pub fn janus(&self) -> Option<crate::client::janus::JanusRoom> {
        let expose = |s: &Option<Secret>| s.as_ref().map(|s| s.expose().to_owned());
        (self.backend == Backend::Janus).then(|| crate::client::janus::JanusRoom {
            room: self.room_id.map_or(0, u64::from),
            pin: expose(&self.pin),
            token: expose(&self.token),
            room_secret: expose(&self.room_secret),
            display: self.display.clone(),
        })
    }
}

impl VideoSection {
    pub fn validate(&self, p: &mut Problems) {
        if !self.enabled {
            return;
        }
        let (w, h) = (self.width, self.height);
        p.check(
            (16..=4096).contains(&w) && (16..=4096).contains(&h) && w % 2 == 0 && h % 2 == 0,
            "video.width",
            format!("{w}x{h}: even sizes from 16x16 to 4096x4096"),
        );
        p.check((1..=60).contains(&self.fps), "video.fps", "1 to 60");
        p.check(
            !self.formats.is_empty(),
            "video.formats",
            "at least one format",
        );
        p.check(
            self.bitrate_min_kbps >= 30
                && self.bitrate_min_kbps <= self.bitrate_start_kbps
                && self.bitrate_start_kbps <= self.bitrate_max_kbps,
            "video.bitrate_start_kbps",
            "need 30 <= bitrate_min_kbps <= bitrate_start_kbps <= bitrate_max_kbps",
        );
        p.check(
            (1..=60).contains(&self.keyframe_interval_s),
            "video.keyframe_interval_s",
            "1 to 60",
        );
        p.check(
            !(self.source == VideoSourceKind::Synthetic
                && self.encoder == EncoderKind::Passthrough),
            "video.encoder",
            "passthrough needs an H.264 camera; the synthetic source is raw",
        );
        if let Some(lib) = &self.openh264_library {
            p.check_file("video.openh264_library", lib);
        }
        if self.source == VideoSourceKind::Command {
            self.validate_command(p);
        }
    }

    /// A `command` camera: a program that exists, and the passthrough
    /// encoder for its H.264.
    fn validate_command(&self, p: &mut Problems) {
        p.check(
            self.encoder == EncoderKind::Passthrough,
            "video.encoder",
            "source = \"command\" delivers H.264: set encoder = \"passthrough\"",
        );
        match self.command.first() {
            None => p.add("video.command", "the capture program and its arguments, e.g. [\"rpicam-vid\", \"-t\", \"0\", \"--inline\", \"--codec\", \"h264\", \"-o\", \"-\"]"),
            Some(program) if find_program(program).is_none() => p.add(
                "video.command",
                format!("program {program} not found (not a file, nor on PATH)"),
            ),
            Some(_) => {}
        }
    }
}

/// Where `program` is: itself when it names a file, else the first PATH entry holding it.
fn find_program(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return p.is_file().then_some(p);
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
}

impl AudioSection {
    pub fn validate(&self, p: &mut Problems) {
        if !self.enabled {
            return;
        }
        p.check(
            self.sample_rate == 48_000,
            "audio.sample_rate",
            "only 48000 is supported",
        );
        p.check(
            (6..=510).contains(&self.bitrate_kbps),
            "audio.bitrate_kbps",
            "6 to 510",
        );
        p.check(
            (20.0..=20_000.0).contains(&self.tone_hz),
            "audio.tone_hz",
            "20 to 20000",
        );
        p.check(
            self.playback != PlaybackKind::Wav || self.wav_path.is_some(),
            "audio.wav_path",
            "the wav playback sink needs wav_path",
        );
        p.check(
            self.processing.reference == Reference::Playback,
            "audio.processing.reference",
            "capture-channel (a looped-back ADC channel) is not implemented yet; use playback",
        );
        p.check(
            !(self.processing().echo_cancellation && self.playback == PlaybackKind::Null),
            "audio.processing.echo_cancellation",
            "needs a speaker to cancel (playback = \"null\" plays nothing)",
        );
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal device.toml on synthetic sources.
    pub(crate) const GOOD: &str = r#"
[room]
url = "ws://127.0.0.1:8080/ws"
sdk_app_id = 1400000000
user_id = "device-1"
user_sig = "sig"
room_id = 1234

[video]
source = "synthetic"

[audio]
capture = "synthetic"
playback = "null"
"#;

    /// Viewers are asked to show the device's frames at once unless the
    /// config leaves it to them; a wrong word names its key.
    #[test]
    fn video_playout_is_immediate_unless_set() {
        let c = DeviceConfig::parse(Path::new("d.toml"), GOOD).unwrap();
        assert_eq!(c.video.playout, VideoPlayout::Immediate);
        let set = |v: &str| GOOD.replace("[video]", &format!("[video]\nplayout = \"{v}\""));
        let c = DeviceConfig::parse(Path::new("d.toml"), &set("adaptive")).unwrap();
        assert_eq!(c.video.playout, VideoPlayout::Adaptive);
        match DeviceConfig::parse(Path::new("d.toml"), &set("fast")) {
            Err(ConfigError::Parse { key, .. }) => {
                assert!(key.starts_with("video.playout"), "{key}")
            }
            other => panic!("expected a parse error at video.playout, got {other:?}"),
        }
    }

    #[test]
    fn parses_with_defaults() {
        let c = DeviceConfig::parse(Path::new("d.toml"), GOOD).unwrap();
        assert_eq!((c.video.width, c.video.height, c.video.fps), (640, 480, 30));
        assert_eq!(c.audio.sample_rate, 48_000);
        assert_eq!(c.room.user_sig().unwrap(), "sig");
        assert!(!format!("{c:?}").contains("\"sig\""));
    }

    /// The keys of the problems in GOOD with `[name]` holding `body`.
    fn problems_in(name: &str, body: &str) -> Vec<String> {
        problem_keys(&format!("{GOOD}\n[{name}]\n{body}\n"))
    }

    fn display_problems(body: &str) -> Vec<String> {
        problems_in("display", body)
    }

    #[test]
    fn display_settings_are_checked_by_key() {
        assert!(display_problems("sink = \"drm\"\nmode = \"1280x720\"").is_empty());
        assert_eq!(
            display_problems("sink = \"drm\"\nmode = \"big\""),
            ["display.mode"]
        );
        assert_eq!(display_problems("sink = \"y4m\""), ["display.path"]);
        assert_eq!(
            display_problems("sink = \"y4m\"\npath = \"/nonexistent-dir/s.y4m\""),
            ["display.path"]
        );
        assert_eq!(
            display_problems("sink = \"y4m\"\npath = \"/tmp/s.y4m\"\nfps = 0\nself_view = true"),
            ["display.fps"]
        );
        // The self-view needs raw frames, which a passthrough camera has not.
        let passthrough = GOOD.replace(
            "source = \"synthetic\"",
            "source = \"synthetic\"\nencoder = \"passthrough\"",
        )
            + "[display]\nsink = \"y4m\"\npath = \"/tmp/s.y4m\"\nself_view = true\n";
        match DeviceConfig::parse(Path::new("d.toml"), &passthrough) {
            Err(ConfigError::Invalid { problems, .. }) => {
                assert!(
                    problems.iter().any(|p| p.key == "display.self_view"),
                    "{problems:?}"
                )
            }
            other => panic!("{other:?}"),
        }
        // A headless board ignores the rest.
        assert!(display_problems("sink = \"none\"\nfps = 0").is_empty());
    }

    fn network_problems(body: &str) -> Vec<String> {
        problems_in("network", body)
    }

    #[test]
    fn ice_servers_are_checked_by_key_and_credentials_never_printed() {
        let good = r#"ice_servers = [{ urls = ["turn:t.example:3478?transport=udp"], username = "d1", credential = "s3cret" }]"#;
        assert!(
            network_problems(good).is_empty(),
            "{:?}",
            network_problems(good)
        );
        let no_credential =
            r#"ice_servers = [{ urls = ["turn:t.example:3478"], username = "d1" }]"#;
        assert_eq!(
            network_problems(no_credential),
            ["network.ice_servers[0].username"]
        );
        let not_a_url = r#"ice_servers = [{ urls = ["http://t.example"] }]"#;
        assert_eq!(network_problems(not_a_url), ["network.ice_servers[0].urls"]);
        let missing_file = r#"ice_servers = [{ urls = ["turn:t"], username = "d", credential_file = "/nonexistent/c" }]"#;
        assert_eq!(
            network_problems(missing_file),
            ["network.ice_servers[0].credential_file"]
        );
        let text = format!("{GOOD}\n[network]\n{good}\n");
        let c = DeviceConfig::parse(Path::new("d.toml"), &text).expect("config");
        assert!(!format!("{c:?}").contains("s3cret"));
        let servers = c.network.ice_servers().expect("servers");
        assert_eq!(servers[0].credential.as_deref(), Some("s3cret"));
        assert!(!format!("{servers:?}").contains("s3cret"));
    }

    /// The keys of the problems in `text`.
    fn problem_keys(text: &str) -> Vec<String> {
        match DeviceConfig::parse(Path::new("d.toml"), text) {
            Ok(_) => Vec::new(),
            Err(ConfigError::Invalid { problems, .. }) => {
                problems.into_iter().map(|p| p.key).collect()
            }
            Err(e) => vec![e.to_string()],
        }
    }

    #[test]
    fn janus_needs_a_numeric_room_and_no_usersig_and_its_keys_are_janus_only() {
        let janus = GOOD
            .replace(
                "sdk_app_id = 1400000000\n",
                "backend = \"janus\"\npin = \"42\"\n",
            )
            .replace("user_sig = \"sig\"\n", "");
        let c = DeviceConfig::parse(Path::new("d.toml"), &janus).unwrap();
        let room = c.room.janus().expect("a Janus room");
        assert_eq!((room.room, room.pin.as_deref()), (1234, Some("42")));
        assert!(!format!("{c:?}").contains("\"42\""), "the pin is a secret");
        let by_name = janus.replace("room_id = 1234", "str_room_id = \"door\"");
        assert_eq!(problem_keys(&by_name), ["room.room_id", "room.str_room_id"]);
        let callbox_with_pin = GOOD.replace("room_id = 1234", "room_id = 1234\npin = \"42\"");
        assert_eq!(problem_keys(&callbox_with_pin), ["room.pin"]);
        assert!(DeviceConfig::parse(Path::new("d.toml"), GOOD)
            .unwrap()
            .room
            .janus()
            .is_none());
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let bad = GOOD
            .replace("room_id = 1234", "room_id = 1234\nstr_room_id = \"x\"")
            .replace(
                "source = \"synthetic\"",
                "source = \"synthetic\"\nwidth = 641\nencoder = \"passthrough\"",
            )
            .replace(
                "playback = \"null\"",
                "playback = \"wav\"\nsample_rate = 44100",
            );
        let e = DeviceConfig::parse(Path::new("/etc/callbox/device.toml"), &bad)
            .unwrap_err()
            .to_string();
        for key in [
            "room.room_id",
            "video.width",
            "video.encoder",
            "audio.sample_rate",
            "audio.wav_path",
        ] {
            assert!(
                e.contains(&format!("/etc/callbox/device.toml: {key}: ")),
                "{key} missing in:\n{e}"
            );
        }
        let e = DeviceConfig::parse(
            Path::new("d.toml"),
            &GOOD.replace("[video]", "[video]\ncolour = 1"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("video.colour (line"), "{e}");
        // Processing: on by default only for a real speakerphone; keys checked.
        let c = DeviceConfig::parse(Path::new("d.toml"), GOOD).unwrap();
        assert!(
            !c.audio.processing().any(),
            "synthetic microphone: no processing"
        );
        let alsa = GOOD.replace(
            "capture = \"synthetic\"\nplayback = \"null\"",
            "capture = \"alsa\"\nplayback = \"alsa\"",
        );
        let c = DeviceConfig::parse(Path::new("d.toml"), &alsa).unwrap();
        let s = c.audio.processing();
        assert!(s.echo_cancellation && s.auto_gain && s.high_pass, "{s:?}");
        assert_eq!(s.noise_suppression, NoiseLevel::Moderate);
        let bad = alsa.replace(
            "[audio]",
            "[audio.processing]\nnoise_suppression = \"loud\"\n[audio]",
        );
        let e = DeviceConfig::parse(Path::new("d.toml"), &bad).unwrap_err();
        assert!(
            e.to_string().contains("audio.processing.noise_suppression"),
            "{e}"
        );
        let looped = alsa.replace("playback = \"alsa\"", "playback = \"alsa\"\n[audio.processing]\nreference = \"capture-channel\"\nnoise_suppression = \"off\"");
        let e = DeviceConfig::parse(Path::new("d.toml"), &looped).unwrap_err();
        assert!(
            e.to_string()
                .contains("d.toml: audio.processing.reference: capture-channel"),
            "{e}"
        );
        // The userSig must not cross a network in clear.
        let remote = GOOD.replace("ws://127.0.0.1:8080/ws", "ws://192.0.2.7:8080/ws");
        let e = DeviceConfig::parse(Path::new("d.toml"), &remote).unwrap_err();
        assert!(
            e.to_string()
                .contains("d.toml: room.url: ws:// to a host other than loopback"),
            "{e}"
        );
        let allowed = remote.replace("room_id = 1234", "room_id = 1234\nallow_insecure_ws = true");
        assert!(DeviceConfig::parse(Path::new("d.toml"), &allowed).is_ok());
        for url in [
            "wss://192.0.2.7/ws",
            "ws://localhost:80/ws",
            "ws://[::1]:8080/ws",
        ] {
            let ok = GOOD.replace("ws://127.0.0.1:8080/ws", url);
            assert!(
                DeviceConfig::parse(Path::new("d.toml"), &ok).is_ok(),
                "{url}"
            );
        }
        let e = DeviceConfig::parse(
            Path::new("d.toml"),
            &GOOD.replace("[video]", "[video]\nformats = [\"YUYV\", \"RGB3\"]"),
        )
        .unwrap_err();
        assert!(
            matches!(&e, ConfigError::Parse { key, reason, .. }
                if key.starts_with("video.formats") && reason.contains("RGB3")),
            "{e}"
        );
    }
}
