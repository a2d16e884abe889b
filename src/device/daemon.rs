//! The device in a call: [`Device::open`] opens the camera, microphone
//! and speaker the config names (through [`sources`]; every failure a
//! startup error naming the device, but for a camera that is not there
//! yet: that one starts audio-only) and starts the media threads;
//! [`Device::call`] joins the room as a TRTC-style client, publishes, and
//! subscribes to every stream in the room, playing its audio and, with a
//! display, showing its video (`display`). A call is a
//! `Call` whose methods are its steps. Call control (buttons,
//! reconnect, banned state) is the appliance's, around it.

use crate::client::janus_videoroom::Refusal;
use crate::client::rtp_clock::monotonic_capture_us;
use crate::client::{
    Client, ClientConfig, ClientError, Congestion, LocalTrack, NetConfig, Receive, RemoteStream,
    Subscription,
};
use crate::device::audio::{AudioError, AudioProcessor, NoProcessing, OpusEncoder};
use crate::device::config::{Backend, DeviceConfig, DisplayKind, IceTransportPolicy};
use crate::device::display::decode::{Links, VideoDecoder};
use crate::device::display::kms::{KmsSettings, KmsSink};
use crate::device::display::screen::{self, CallState, Screen, ScreenThread, Style};
use crate::device::display::y4m::Y4mSink;
use crate::device::display::{drm_sysfs, DisplaySink, Reopening};
use crate::device::pattern;
use crate::device::pipeline::{
    CameraParts, EncodedVideo, Heartbeats, OpenCamera, OpenEncoder, Outputs, Parts, Pipeline,
    SelfView,
};
use crate::device::processing::{Apm, Capture};
use crate::device::sources;
use crate::device::stats::{add, MediaStats};
use crate::device::video_source::VideoError;
use crate::network_quality::NetworkQuality;
use crate::protocol::{BanReason, MediaKind, ServerMessage, StreamInfo};
use bytes::Bytes;
use std::collections::{HashSet, VecDeque};
use std::ops::ControlFlow;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

/// How long a dead uplink waits for the room's reason (a ban) before the
/// call ends as a connection failure.
const UPLINK_GRACE: Duration = Duration::from_secs(2);
/// Remote streams played at once: a speakerphone mixes a few voices; more
/// wait until one leaves.
pub const MAX_REMOTE_STREAMS: usize = 8;
/// Subscriptions negotiated at the same time, beside the call's own media.
const SUBSCRIBING_AT_ONCE: usize = 2;

/// A subscription being negotiated, or why it failed.
type Subscribing = Result<Subscription, (StreamInfo, ClientError)>;

/// Log a failed track write once; the deadline for the room's word.
fn uplink_failed(kind: &str, e: ClientError) -> (tokio::time::Instant, String) {
    log::error!(
        "E_UPLINK_CLOSED: {kind} write failed (code {:#06x}): {e}; media stopped, waiting {UPLINK_GRACE:?} for the room",
        crate::protocol::code::ICE_TRANSPORT_ERROR
    );
    (tokio::time::Instant::now() + UPLINK_GRACE, e.to_string())
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error(transparent)]
    Video(#[from] VideoError),
    #[error(transparent)]
    Audio(#[from] AudioError),
    /// A file the config names cannot be read (userSig file, CA file).
    #[error("config: {key}: {}: {source}", .path.display())]
    Config {
        key: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config: {0}")]
    Secret(#[from] crate::device::config::SecretUnavailable),
    /// `[display]` names a connector or mode the board does not have.
    #[error("config: {0}")]
    Display(#[from] crate::device::display::drm_sysfs::Mismatch),
    #[error("{0}")]
    Client(#[from] ClientError),
    #[error("pushed out of the room: {0:?}")]
    Banned(BanReason),
    #[error("cannot start media threads: {0}")]
    Threads(std::io::Error),
    #[error("nothing from the room (signaling or media) for {0:.1?}: the connection is dead")]
    MediaDead(Duration),
    #[error("the uplink closed under the call ({0}) and the room said nothing")]
    UplinkClosed(String),
}

impl DeviceError {
    /// The TRTC error code for logs and status.
    pub fn code(&self) -> u32 {
        use crate::protocol::code;
        match self {
            DeviceError::Video(_) | DeviceError::Audio(_) => code::DEVICE_NOT_FOUND,
            DeviceError::Config { .. } | DeviceError::Secret(_) | DeviceError::Display(_) => {
                code::INVALID_PARAMETER
            }
            DeviceError::Client(e) => e.code(),
            DeviceError::Banned(_) => code::CLIENT_BANNED,
            DeviceError::Threads(_) => code::UNKNOWN,
            DeviceError::MediaDead(_) | DeviceError::UplinkClosed(_) => code::ICE_TRANSPORT_ERROR,
        }
    }

    /// Whether trying again later can help: not for a userSig the room
    /// refuses, nor for config that names unusable files.
    pub fn retryable(&self) -> bool {
        match self {
            DeviceError::Client(ClientError::Refused { reason, .. }) => !reason.is_usersig(),
            // A wrong pin or token, or our own id held by another session
            // (without the room secret to kick it): retrying cannot help. A
            // missing room may come back (Janus restarted).
            DeviceError::Client(ClientError::Janus { refusal, .. }) => {
                !matches!(refusal, Refusal::Unauthorized | Refusal::IdExists)
            }
            DeviceError::Config { .. }
            | DeviceError::Secret(_)
            | DeviceError::Display(_)
            | DeviceError::Banned(_) => false,
            _ => true,
        }
    }
}

/// The microphone's and the camera's mute state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Muted {
    pub audio: bool,
    pub video: bool,
}

/// How the appliance steers a call and hears from it. The default: no
/// notifications, no mute, no dead-media check.
#[derive(Default)]
pub struct CallLink {
    /// Fires once joined and publishing.
    pub joined: Option<oneshot::Sender<()>>,
    /// What is muted (TRTC `muteAudio`, `muteVideo`): nothing of a muted
    /// kind is sent, and the room tells the others.
    pub muted: Option<watch::Receiver<Muted>>,
    /// End the call when nothing arrives from the room for this long.
    pub dead_media: Option<Duration>,
}

/// The camera and its encoder. A camera that is not there (yet) is no
/// startup error: USB cameras enumerate late at boot and get unplugged, and
/// a call appliance should still take calls, audio-only, and pick the camera
/// up when it appears. The encoder is made for the configured size then,
/// so encoder problems still fail at startup.
fn open_video(c: &DeviceConfig, stats: &MediaStats) -> Result<CameraParts, DeviceError> {
    let video = c.video.clone();
    let mut reopen: OpenCamera = Box::new(move || sources::open_camera(&video));
    let camera = match reopen() {
        Ok(camera) => Some(camera),
        Err(e @ VideoError::Gone { .. }) => {
            log::error!(
                "video capture failed (code {:#06x}): {e}; starting audio-only, retrying the camera every second",
                crate::protocol::code::DEVICE_NOT_FOUND
            );
            stats.camera_lost.store(true, Relaxed);
            None
        }
        Err(e) => return Err(e.into()),
    };
    let v = &c.video;
    let format = camera
        .as_ref()
        .map_or(((v.width as usize, v.height as usize), v.fps), |cam| {
            (cam.size(), cam.fps())
        });
    let video = c.video.clone();
    let mut new_encoder: OpenEncoder =
        Box::new(move |size, fps| sources::open_encoder(&video, size, fps));
    let encoder = new_encoder(format.0, format.1)?;
    log::info!(
        "video: {} -> {}",
        camera.as_ref().map_or_else(
            || format!("{} (not there yet)", v.device),
            |cam| cam.describe()
        ),
        encoder.describe()
    );
    Ok(CameraParts {
        camera,
        reopen,
        encoder,
        encoder_format: format,
        new_encoder,
        self_view: None,
    })
}

/// The camera's picture for the screen's self-view, at most at the
/// screen's rate (each one is copied).
fn self_view(screen: Screen, fps: u32) -> SelfView {
    let every = Duration::from_secs(1) / fps.max(1);
    let mut last: Option<Instant> = None;
    Box::new(move |pic| {
        if last.is_none_or(|t| t.elapsed() >= every) {
            last = Some(Instant::now());
            screen.show_self(pic);
        }
    })
}

/// A device with its media devices open and its media threads running.
pub struct Device {
    config: DeviceConfig,
    stats: Arc<MediaStats>,
    // Dropped before the pipeline: closing the channels unblocks its threads so they can be joined.
    outputs: Outputs,
    pipeline: Pipeline,
    display: Option<ScreenThread>,
    started: Instant,
}

/// The configured screen, composing. A connector or mode the board does
/// not have is a config error; a y4m file that cannot be created leaves
/// the device without a screen; a DRM screen that is missing or unplugged
/// is retried (logged with a code) while the call goes on.
fn open_display(
    c: &DeviceConfig,
    stats: &Arc<MediaStats>,
) -> Result<Option<ScreenThread>, DeviceError> {
    let d = &c.display;
    let sink: Result<Box<dyn DisplaySink>, String> = match (d.sink, &d.path) {
        (DisplayKind::Y4m, Some(path)) => Y4mSink::create(path, (d.width, d.height), d.fps)
            .map(|s| Box::new(s) as Box<dyn DisplaySink>)
            .map_err(|e| e.to_string()),
        (DisplayKind::Drm, _) => {
            let settings = KmsSettings::from(d);
            settings.check(&drm_sysfs::cards(std::path::Path::new(drm_sysfs::SYSFS)))?;
            let open = Box::new(move || {
                KmsSink::open(&settings).map(|s| Box::new(s) as Box<dyn DisplaySink>)
            });
            let size = (d.width, d.height);
            Ok(Box::new(Reopening::new(open, size, Duration::from_secs(2))))
        }
        _ => return Ok(None),
    };
    let started = sink.and_then(|sink| {
        log::info!("display: {} at {} fps", sink.describe(), d.fps);
        let style = Style {
            layout: d.layout,
            idle: d.idle,
        };
        screen::start(sink, d.fps, style, Arc::clone(stats)).map_err(|e| e.to_string())
    });
    match started {
        Ok(s) => Ok(Some(s)),
        Err(e) => {
            log::error!(
                "display failed (code {:#06x}): {e}; going on without a screen",
                crate::protocol::code::DEVICE_NOT_FOUND
            );
            Ok(None)
        }
    }
}

impl Device {
    /// Open everything the config names; any device that cannot be opened
    /// is an error naming it. `started` is when the process started (for
    /// the time-to-first-packet metric).
    pub fn open(config: DeviceConfig, started: Instant) -> Result<Device, DeviceError> {
        let stats = Arc::new(MediaStats::default());
        let display = open_display(&config, &stats)?;
        let mut camera = if config.video.enabled {
            Some(open_video(&config, &stats)?)
        } else {
            None
        };
        let screen = display.as_ref().map(|d| d.screen.clone());
        if let (Some(camera), Some(screen), true) = (&mut camera, screen, config.display.self_view)
        {
            camera.self_view = Some(self_view(screen, config.display.fps));
        }
        let a = &config.audio;
        let (microphone, speaker, echo_reference) = if a.enabled {
            let source = sources::open_microphone(a, Arc::clone(&stats))?;
            let sink = sources::open_speaker(a, Arc::clone(&stats))?;
            log::info!(
                "audio: {} -> Opus {} kbit/s; remote audio -> {}",
                source.describe(),
                a.bitrate_kbps,
                sink.describe()
            );
            let encoder = OpusEncoder::new(a.bitrate_kbps as i32 * 1000)?;
            let settings = a.processing();
            let apm = settings.any().then(|| Apm::new(settings));
            log::info!("audio processing: {settings:?}");
            let processor: Box<dyn AudioProcessor> = match &apm {
                Some(apm) => Box::new(Capture::new(apm.clone(), Arc::clone(&stats.echo))),
                None => Box::new(NoProcessing),
            };
            let reference = apm.filter(|a| a.settings.echo_cancellation);
            (Some((source, processor, encoder)), Some(sink), reference)
        } else {
            (None, None, None)
        };
        let parts = Parts {
            camera,
            microphone,
            speaker,
            echo_reference,
        };
        let (pipeline, outputs) =
            Pipeline::start(parts, Arc::clone(&stats)).map_err(DeviceError::Threads)?;
        let device = Device {
            config,
            stats,
            pipeline,
            outputs,
            display,
            started,
        };
        device.show_state(CallState::Idle);
        Ok(device)
    }

    /// The screen, when the device has one.
    pub fn screen(&self) -> Option<Screen> {
        self.display.as_ref().map(|d| d.screen.clone())
    }

    pub fn heartbeats(&self) -> Heartbeats {
        self.pipeline.heartbeats.clone()
    }

    pub fn stats(&self) -> Arc<MediaStats> {
        Arc::clone(&self.stats)
    }

    pub fn client_config(&self) -> Result<ClientConfig, DeviceError> {
        let c = &self.config;
        let v = &c.video;
        let tls_ca_pem = match &c.room.ca_file {
            Some(f) => Some(std::fs::read(f).map_err(|source| DeviceError::Config {
                key: "room.ca_file",
                path: f.clone(),
                source,
            })?),
            None => None,
        };
        Ok(ClientConfig {
            url: c.room.url.clone(),
            sdk_app_id: c.room.sdk_app_id,
            user_id: c.room.user_id.clone(),
            user_sig: match c.room.backend {
                Backend::Callbox => c.room.user_sig()?,
                Backend::Janus => String::new(),
            },
            net: NetConfig {
                bind: c.network.bind,
                ice_servers: c.network.ice_servers()?,
                room_ice_servers: Vec::new(),
                relay_only: c.network.ice_transport_policy == IceTransportPolicy::Relay,
                congestion: c.network.congestion_control.then_some(Congestion {
                    min_bps: v.bitrate_min_kbps as f64 * 1000.0,
                    start_bps: v.bitrate_start_kbps as f64 * 1000.0,
                    max_bps: v.bitrate_max_kbps as f64 * 1000.0,
                }),
                tls: None,
            },
            tls_ca_pem,
            janus: c.room.janus(),
        })
    }

    /// One call: join, publish, play the room, until `hangup` resolves
    /// (then leave; also while still joining) or the room ends it (banned,
    /// signaling lost, media dead).
    pub async fn call(
        &mut self,
        hangup: impl std::future::Future<Output = ()>,
        mut link: CallLink,
    ) -> Result<(), DeviceError> {
        tokio::pin!(hangup);
        let (client, existing) = tokio::select! {
            joined = self.join_and_publish() => joined?,
            _ = &mut hangup => return Ok(()),
        };
        if let Some(path) = client.local_stream().map(|l| l.path()) {
            let path = path.await.map(|p| p.to_string());
            log::info!("media path: {}", path.as_deref().unwrap_or("unknown"));
            *self
                .stats
                .ice_path
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = path;
        }
        if let Some(j) = link.joined.take() {
            let _ = j.send(());
        }
        self.show_state(CallState::InCall);
        let mut call = Call::start(self, client, link, existing)?;
        let result = call.run(hangup).await;
        call.finish().await;
        match &result {
            Err(DeviceError::Banned(reason)) => self.show_state(CallState::Banned(*reason)),
            _ => self.show_state(CallState::Idle),
        }
        result
    }

    /// The call state, for the screen (its idle picture, the self-view).
    pub fn show_state(&self, state: CallState) {
        if let Some(screen) = self.screen() {
            screen.set_state(state, &self.config.join_room().to_string());
        }
    }

    /// Connect, join and publish. A hang-up while this runs drops it,
    /// which closes the half-made connection.
    async fn join_and_publish(&self) -> Result<(Client, Vec<StreamInfo>), DeviceError> {
        let config = self.client_config()?;
        let room = self.config.join_room();
        let private_map_key = self.config.room.private_map_key()?;
        let (a, v) = (self.config.audio.enabled, self.config.video.enabled);
        let mut client = Client::connect(config).await?;
        client.set_video_playout(self.config.video.playout);
        let joined = async {
            let existing = client.join_with_key(room.clone(), private_map_key).await?;
            log::info!("joined {room} as {}", client.user_id());
            client.publish(a, v).await?;
            Ok::<_, DeviceError>(existing)
        }
        .await;
        match joined {
            Ok(existing) => {
                let kinds = [(a, "audio"), (v, "video")];
                let what: Vec<_> = kinds.iter().filter(|k| k.0).map(|k| k.1).collect();
                log::info!("publishing {}", what.join(" "));
                Ok((client, existing))
            }
            Err(e) => {
                // Pushed out between join and publish: the room said why
                // just before it refused the publish.
                let banned = pushed_out(&mut client).await;
                client.close_media().await;
                Err(banned.map_or(e, DeviceError::Banned))
            }
        }
    }
}

/// A `client-banned` among the events that arrived (waiting briefly for
/// one in flight), if any.
async fn pushed_out(client: &mut Client) -> Option<BanReason> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, client.next_event()).await {
        if let ServerMessage::ClientBanned { reason, .. } = event {
            return Some(reason);
        }
    }
    None
}

/// One call in progress: the client, its tracks, and what the call loop
/// tracks between events. Each `select!` arm of [`Call::run`] is one step.
struct Call<'d> {
    device: &'d mut Device,
    client: Client,
    video: Option<LocalTrack>,
    audio: Option<LocalTrack>,
    /// Streams waiting for a subscription slot.
    to_subscribe: VecDeque<StreamInfo>,
    /// Subscriptions negotiating off the loop, so the call's own media
    /// keeps flowing meanwhile.
    subscribing: tokio::task::JoinSet<Subscribing>,
    /// Streams subscribed or being subscribed (at most MAX_REMOTE_STREAMS).
    wanted: HashSet<String>,
    keyframe_task: Option<tokio::task::JoinHandle<()>>,
    muted: watch::Receiver<Muted>,
    /// What the room has been told.
    muted_now: Muted,
    dead_media: Option<Duration>,
    /// Set once a track write fails: media stops, and the call ends unless
    /// the room explains (a ban) within UPLINK_GRACE.
    uplink_lost: Option<(tokio::time::Instant, String)>,
}

impl<'d> Call<'d> {
    fn start(
        device: &'d mut Device,
        client: Client,
        mut link: CallLink,
        existing: Vec<StreamInfo>,
    ) -> Result<Self, DeviceError> {
        let local = client
            .local_stream()
            .ok_or(ClientError::InvalidOperation("not publishing"))?;
        let (video, audio) = (local.video().cloned(), local.audio().cloned());
        // Drop media encoded while not in a call: the call starts live.
        while device.outputs.video.try_recv().is_ok() {}
        while device.outputs.audio.try_recv().is_ok() {}
        device.pipeline.keyframe.store(true, Relaxed);
        let keyframe_task = video.clone().map(|track| {
            let keyframe = Arc::clone(&device.pipeline.keyframe);
            let stats = Arc::clone(&device.stats);
            tokio::spawn(async move {
                while track.keyframe_requested().await.is_some() {
                    add(&stats.keyframe_requests, 1);
                    keyframe.store(true, Relaxed);
                }
            })
        });
        let mut muted = link
            .muted
            .take()
            .unwrap_or_else(|| watch::channel(Muted::default()).1);
        // Apply a mute set before this call (e.g. kept across a reconnect).
        muted.mark_changed();
        Ok(Call {
            device,
            client,
            video,
            audio,
            to_subscribe: existing.into(),
            subscribing: tokio::task::JoinSet::new(),
            wanted: HashSet::new(),
            keyframe_task,
            muted,
            muted_now: Muted::default(),
            dead_media: link.dead_media,
            uplink_lost: None,
        })
    }

    /// Until hang-up (then leave) or the room ends the call.
    async fn run(
        &mut self,
        hangup: impl std::future::Future<Output = ()>,
    ) -> Result<(), DeviceError> {
        tokio::pin!(hangup);
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            self.follow_bitrate();
            let lost_at = self.uplink_lost.as_ref().map(|l| l.0);
            let step = tokio::select! {
                _ = &mut hangup => {
                    let _ = self.client.leave().await;
                    ControlFlow::Break(Ok(()))
                }
                Some(unit) = self.device.outputs.video.recv() => self.on_video(unit).await,
                Some(packet) = self.device.outputs.audio.recv() => self.on_audio(packet).await,
                _ = sleep_until(lost_at), if lost_at.is_some() => self.uplink_closed(),
                Ok(()) = self.muted.changed() => self.on_mute().await,
                _ = tick.tick() => self.on_tick(),
                _ = std::future::ready(()), if self.may_subscribe() => self.subscribe_next(),
                Some(done) = self.subscribing.join_next(), if !self.subscribing.is_empty() => self.on_subscribed(done).await,
                event = self.client.next_event() => self.on_room_event(event).await,
            };
            if let ControlFlow::Break(result) = step {
                return result;
            }
        }
    }

    /// Congestion control's target, for the encoder and the status.
    fn follow_bitrate(&self) {
        if let Some(t) = self.client.local_stream().and_then(|l| l.target_bitrate()) {
            self.device.pipeline.bitrate.store(t, Relaxed);
            self.device.stats.target_bitrate_bps.store(t, Relaxed);
        }
    }

    fn first_packet(&self) {
        let stats = &self.device.stats;
        if stats.first_rtp_us.load(Relaxed) == 0 {
            let us = self.device.started.elapsed().as_micros() as u64;
            stats.first_rtp_us.store(us.max(1), Relaxed);
            log::info!("first RTP packet {:.0} ms after start", us as f64 / 1000.0);
        }
    }

    async fn on_video(&mut self, unit: EncodedVideo) -> Step {
        if self.muted_now.video {
            return ControlFlow::Continue(());
        }
        if let (Some(t), None) = (&self.video, &self.uplink_lost) {
            self.first_packet();
            let mono_now = self.device.started.elapsed().as_micros() as u64;
            let captured = monotonic_capture_us(mono_now, pattern::now_us(), unit.capture_us);
            let sent = match captured {
                Some(us) => t.write_captured(unit.data, us, unit.duration).await,
                None => t.write(unit.data, unit.duration).await,
            };
            if let Err(e) = sent {
                self.uplink_lost = Some(uplink_failed("video", e));
            }
        }
        ControlFlow::Continue(())
    }

    async fn on_audio(&mut self, packet: Bytes) -> Step {
        if self.muted_now.audio {
            return ControlFlow::Continue(());
        }
        if let (Some(t), None) = (&self.audio, &self.uplink_lost) {
            self.first_packet();
            match t.write(packet, crate::device::audio::FRAME).await {
                Ok(()) => add(&self.device.stats.audio_packets_sent, 1),
                Err(e) => self.uplink_lost = Some(uplink_failed("audio", e)),
            }
        }
        ControlFlow::Continue(())
    }

    /// The room closes a pushed-out client's connections as it tells it
    /// why; its word had UPLINK_GRACE to arrive, and did not.
    fn uplink_closed(&mut self) -> Step {
        let e = self.uplink_lost.take().map(|l| l.1).unwrap_or_default();
        ControlFlow::Break(Err(DeviceError::UplinkClosed(e)))
    }

    async fn on_mute(&mut self) -> Step {
        let want = *self.muted.borrow_and_update();
        let changes = [
            (
                MediaKind::Audio,
                self.muted_now.audio,
                want.audio,
                "microphone",
            ),
            (MediaKind::Video, self.muted_now.video, want.video, "camera"),
        ];
        self.muted_now = want;
        for (kind, was, now, what) in changes {
            if was == now {
                continue;
            }
            log::info!("{what} {}", if now { "muted" } else { "unmuted" });
            if kind == MediaKind::Video && !now {
                // Subscribers restart decoding at a keyframe.
                self.device.pipeline.keyframe.store(true, Relaxed);
            }
            if let Err(e) = self.client.mute(kind, now).await {
                log::warn!("mute {kind:?} (code {:#06x}): {e}", e.code());
            }
        }
        ControlFlow::Continue(())
    }

    /// Four times a second: who speaks (for the screen), whether the room
    /// is still there.
    fn on_tick(&self) -> Step {
        if let Some(screen) = self.device.screen() {
            screen.set_speaker(self.device.pipeline.playback.active_speaker());
        }
        self.check_liveness()
    }

    fn check_liveness(&self) -> Step {
        let Some(limit) = self.dead_media else {
            return ControlFlow::Continue(());
        };
        match self.client.room_silence().filter(|s| *s > limit) {
            Some(silence) => {
                log::error!(
                    "E_MEDIA_DEAD: nothing from the room for {silence:.1?} (code {:#06x})",
                    crate::protocol::code::ICE_TRANSPORT_ERROR
                );
                ControlFlow::Break(Err(DeviceError::MediaDead(silence)))
            }
            None => ControlFlow::Continue(()),
        }
    }

    fn count_remote_streams(&self) {
        let n = self.device.pipeline.playback.count() as u64;
        self.device.stats.remote_streams.store(n, Relaxed);
    }

    fn may_subscribe(&self) -> bool {
        !self.to_subscribe.is_empty()
            && self.subscribing.len() < SUBSCRIBING_AT_ONCE
            && self.wanted.len() < MAX_REMOTE_STREAMS
    }

    /// Start subscribing to the next stream's audio (and its video, when
    /// the device has a screen), off the loop.
    fn subscribe_next(&mut self) -> Step {
        let Some(info) = self.to_subscribe.pop_front() else {
            return ControlFlow::Continue(());
        };
        if info.user_id == self.client.user_id() || !self.wanted.insert(info.stream_id.clone()) {
            return ControlFlow::Continue(());
        }
        let receive = Receive {
            audio: true,
            video: self.device.display.is_some(),
        };
        let negotiation = self.client.subscription(&info, receive);
        self.subscribing
            .spawn(async move { negotiation.await.map_err(|e| (info, e)) });
        ControlFlow::Continue(())
    }

    /// A subscription finished negotiating: play it, unless its stream went
    /// away meanwhile.
    async fn on_subscribed(&mut self, done: Result<Subscribing, tokio::task::JoinError>) -> Step {
        let sub = match done {
            Ok(Ok(sub)) => sub,
            Ok(Err((info, e))) => {
                self.wanted.remove(&info.stream_id);
                log::error!(
                    "subscribe to {} failed (code {:#06x}): {e}",
                    info.user_id,
                    e.code()
                );
                return ControlFlow::Continue(());
            }
            Err(e) => {
                log::error!("E_INTERNAL: a subscription task ended: {e}");
                return ControlFlow::Continue(());
            }
        };
        let id = sub.info().stream_id.clone();
        if !self.wanted.contains(&id) {
            sub.close().await;
            let _ = self.client.unsubscribe(&id).await;
            return ControlFlow::Continue(());
        }
        let remote = self.client.adopt(sub);
        log::info!("subscribed to {} ({id})", remote.info.user_id);
        let playback = self.device.pipeline.playback.clone();
        if let Err(e) = playback.add_stream(&id) {
            log::error!("cannot play {id}: {e}");
        }
        self.count_remote_streams();
        let stats = Arc::clone(&self.device.stats);
        let video = self.video_decoder(&id, &remote);
        let mut packets = remote.packets;
        tokio::spawn(async move {
            while let Some(p) = packets.recv().await {
                match (p.kind, &video) {
                    (MediaKind::Audio, _) if !p.packet.payload.is_empty() => {
                        add(&stats.audio_packets_received, 1);
                        let seq = p.packet.header.sequence_number;
                        playback.push(&id, seq, p.packet.payload);
                    }
                    (MediaKind::Video, Some(decoder)) => decoder.push(p.packet),
                    _ => {}
                }
            }
        });
        ControlFlow::Continue(())
    }

    /// A decoder for a remote stream's video, onto the screen (if any).
    fn video_decoder(&self, id: &str, remote: &RemoteStream) -> Option<VideoDecoder> {
        let screen = self.device.screen()?;
        if !remote.info.video {
            return None;
        }
        screen.add(id, &remote.info.user_id, remote.info.video_muted);
        let stats = Arc::clone(&self.device.stats);
        let playback = self.device.pipeline.playback.clone();
        let stream = id.to_owned();
        let links = Links {
            library: self.device.config.video.openh264_library.clone(),
            keyframe: remote.keyframe_requester(),
            audio_delay: Box::new(move || playback.audio_delay(&stream)),
        };
        VideoDecoder::start(id, screen, links, stats)
            .map_err(|e| log::error!("E_INTERNAL: no decoder thread for {id}: {e}"))
            .ok()
    }

    async fn on_room_event(&mut self, event: Option<ServerMessage>) -> Step {
        match event {
            None => return ControlFlow::Break(Err(ClientError::SignalClosed.into())),
            Some(ServerMessage::StreamAdded { stream }) => self.to_subscribe.push_back(stream),
            Some(ServerMessage::StreamRemoved { stream_id, user_id }) => {
                log::info!("{user_id} stopped publishing");
                self.to_subscribe.retain(|s| s.stream_id != stream_id);
                self.device.pipeline.playback.remove_stream(&stream_id);
                if let Some(screen) = self.device.screen() {
                    screen.remove(&stream_id);
                }
                self.count_remote_streams();
                // Still negotiating: closed when it finishes (not wanted any more).
                if self.wanted.remove(&stream_id) {
                    let _ = self.client.unsubscribe(&stream_id).await;
                }
            }
            Some(ServerMessage::ClientBanned { reason, message }) => {
                log::error!(
                    "client-banned {reason:?} (code {:#06x}): {message}",
                    crate::protocol::code::CLIENT_BANNED
                );
                return ControlFlow::Break(Err(DeviceError::Banned(reason)));
            }
            Some(ServerMessage::MuteVideo { user_id }) => self.show_video_muted(&user_id, true),
            Some(ServerMessage::UnmuteVideo { user_id }) => self.show_video_muted(&user_id, false),
            Some(ServerMessage::NetworkQuality(q)) => self.on_network_quality(q),
            Some(ServerMessage::PeerJoin { user_id }) => log::info!("peer-join {user_id}"),
            Some(ServerMessage::PeerLeave { user_id }) => log::info!("peer-leave {user_id}"),
            Some(other) => log::debug!("event {other:?}"),
        }
        ControlFlow::Continue(())
    }

    /// The room's grade of our links: into the status (and the appliance's
    /// call LED), and a log line when a direction turns bad or recovers.
    fn on_network_quality(&self, q: NetworkQuality) {
        let stats = &self.device.stats;
        let was_bad = stats.network_quality().is_some_and(|w| w.worst().is_bad());
        if q.worst().is_bad() != was_bad {
            let line = format!(
                "network quality: uplink {} ({}, {}% loss), downlink {} ({}, {}% loss), rtt {} ms",
                q.uplink.level(),
                q.uplink.name(),
                q.uplink_loss,
                q.downlink.level(),
                q.downlink.name(),
                q.downlink_loss,
                q.uplink_rtt.max(q.downlink_rtt)
            );
            if was_bad {
                log::info!("{line}: recovered");
            } else {
                log::warn!("W_NETWORK_BAD {line}");
            }
        }
        stats.set_network_quality(Some(q));
    }

    /// A caller turned their camera off (or on): their tile shows their name.
    fn show_video_muted(&self, user_id: &str, muted: bool) {
        log::info!(
            "{user_id} {} video",
            if muted { "muted" } else { "unmuted" }
        );
        if let Some(screen) = self.device.screen() {
            screen.set_video_muted(user_id, muted);
        }
    }

    /// Stop the keyframe relay, close the connections, silence the speaker.
    async fn finish(mut self) {
        if let Some(t) = self.keyframe_task.take() {
            t.abort();
        }
        self.subscribing.abort_all();
        self.client.close_media().await;
        self.device.pipeline.playback.clear();
        if let Some(screen) = self.device.screen() {
            screen.clear();
        }
        self.count_remote_streams();
        self.device.stats.set_network_quality(None);
    }
}

/// What a step of the call loop says: go on, or the call's result.
type Step = ControlFlow<Result<(), DeviceError>>;

/// Sleep until `at`, or forever without one.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
