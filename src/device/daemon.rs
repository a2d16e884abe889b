//! `callbox device`: opens the camera, microphone and speaker the config
//! names (every failure a startup error naming the device, but for a
//! camera that is not there yet: that one starts audio-only), starts the
//! media threads, joins the room as a TRTC-style client, publishes, and
//! subscribes to every stream in the room, playing its audio. Call control
//! (buttons, reconnect, banned state) builds on [`Device::call`].

use crate::client::{Client, ClientConfig, ClientError, Congestion, JoinRoom, NetConfig};
use crate::device::alsa_io::{AlsaCapture, AlsaPlayback};
use crate::device::audio::{
    AudioError, AudioSink, AudioSource, NullSink, OpusEncoder, PassThrough, ToneSource, WavSink,
};
use crate::device::config::{
    CaptureKind, DeviceConfig, EncoderKind, PlaybackKind, VideoSourceKind,
};
use crate::device::h264::{EncoderSettings, OpenH264Encoder, Passthrough, VideoEncoder};
use crate::device::pipeline::{
    CameraParts, Heartbeats, OpenCamera, OpenEncoder, Outputs, Parts, Pipeline,
};
use crate::device::stats::{add, MediaStats};
use crate::device::v4l2::V4l2Camera;
use crate::device::video_source::{SyntheticCamera, VideoError, VideoSource};
use crate::protocol::{BanReason, MediaKind, ServerMessage, StreamInfo};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

/// How long a dead uplink waits for the room's reason (a ban) before the
/// call ends as a connection failure.
const UPLINK_GRACE: Duration = Duration::from_secs(2);

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
    /// A file or value the config names cannot be used (userSig file, CA file, WAV path).
    #[error("config: {0}")]
    Config(String),
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
            DeviceError::Config(_) => code::INVALID_PARAMETER,
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
            DeviceError::Client(ClientError::Refused { reason, .. }) => {
                !reason.starts_with("usersig-")
            }
            DeviceError::Config(_) | DeviceError::Banned(_) => false,
            _ => true,
        }
    }
}

/// How the appliance steers a call and hears from it. The default: no
/// notifications, no mute, no dead-media check.
#[derive(Default)]
pub struct CallLink {
    /// Fires once joined and publishing.
    pub joined: Option<oneshot::Sender<()>>,
    /// The microphone's mute state (TRTC `muteAudio`): while muted no audio
    /// is sent and the room tells the others.
    pub audio_muted: Option<watch::Receiver<bool>>,
    /// End the call when nothing arrives from the room for this long.
    pub dead_media: Option<Duration>,
}

fn open_camera(c: &DeviceConfig) -> Result<Box<dyn VideoSource>, VideoError> {
    let v = &c.video;
    Ok(match v.source {
        VideoSourceKind::Synthetic => Box::new(SyntheticCamera::new(
            v.width as usize,
            v.height as usize,
            v.fps,
        )),
        VideoSourceKind::V4l2 => {
            let mut formats = v.formats.clone();
            // A passthrough device wants the camera's H.264; a raw encoder cannot use it.
            match v.encoder {
                EncoderKind::Passthrough => formats.retain(|f| f == "H264"),
                _ => formats.retain(|f| f != "H264"),
            }
            Box::new(V4l2Camera::open(
                &v.device, &formats, v.width, v.height, v.fps,
            )?)
        }
    })
}

fn open_encoder(
    c: &DeviceConfig,
    (width, height): (usize, usize),
    fps: u32,
) -> Result<Box<dyn VideoEncoder>, VideoError> {
    let v = &c.video;
    Ok(match v.encoder {
        EncoderKind::Openh264 => Box::new(OpenH264Encoder::new(EncoderSettings {
            width,
            height,
            fps,
            bitrate_bps: v.bitrate_start_kbps * 1000,
            keyframe_interval_frames: v.keyframe_interval_s * fps.max(1),
            library: v.openh264_library.clone(),
        })?),
        EncoderKind::Passthrough => Box::new(Passthrough::new()),
        EncoderKind::V4l2m2m => {
            return Err(VideoError::NotImplemented("the V4L2 M2M hardware encoder"))
        }
    })
}

/// The camera and its encoder. A camera that is not there (yet) is no
/// startup error: USB cameras enumerate late at boot and get unplugged, and
/// a call appliance should still take calls, audio-only, and pick the camera
/// up when it appears. The encoder is made for the configured size then,
/// so encoder problems still fail at startup.
fn open_video(c: &DeviceConfig, stats: &MediaStats) -> Result<CameraParts, DeviceError> {
    let config = c.clone();
    let mut reopen: OpenCamera = Box::new(move || open_camera(&config));
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
    let config = c.clone();
    let mut new_encoder: OpenEncoder = Box::new(move |size, fps| open_encoder(&config, size, fps));
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
    })
}

/// A device with its media devices open and its media threads running.
pub struct Device {
    config: DeviceConfig,
    stats: Arc<MediaStats>,
    // Dropped before the pipeline: closing the channels unblocks its threads so they can be joined.
    outputs: Outputs,
    pipeline: Pipeline,
    started: Instant,
}

impl Device {
    /// Open everything the config names; any device that cannot be opened
    /// is an error naming it. `started` is when the process started (for
    /// the time-to-first-packet metric).
    pub fn open(config: DeviceConfig, started: Instant) -> Result<Device, DeviceError> {
        let stats = Arc::new(MediaStats::default());
        let camera = if config.video.enabled {
            Some(open_video(&config, &stats)?)
        } else {
            None
        };
        let a = &config.audio;
        let (microphone, speaker) = if a.enabled {
            let source: Box<dyn AudioSource> = match a.capture {
                CaptureKind::Synthetic => Box::new(ToneSource::new(a.tone_hz)),
                CaptureKind::Alsa => {
                    Box::new(AlsaCapture::open(&a.capture_device, Arc::clone(&stats))?)
                }
            };
            let sink: Box<dyn AudioSink> = match a.playback {
                PlaybackKind::Null => Box::new(NullSink::new()),
                PlaybackKind::Wav => {
                    let path = a
                        .wav_path
                        .as_deref()
                        .ok_or_else(|| DeviceError::Config("audio.wav_path is required".into()))?;
                    Box::new(WavSink::create(path)?)
                }
                PlaybackKind::Alsa => {
                    Box::new(AlsaPlayback::open(&a.playback_device, Arc::clone(&stats))?)
                }
            };
            log::info!(
                "audio: {} -> Opus {} kbit/s; remote audio -> {}",
                source.describe(),
                a.bitrate_kbps,
                sink.describe()
            );
            let encoder = OpusEncoder::new(a.bitrate_kbps as i32 * 1000)?;
            (
                Some((source, Box::new(PassThrough) as _, encoder)),
                Some(sink),
            )
        } else {
            (None, None)
        };
        let (pipeline, outputs) = Pipeline::start(
            Parts {
                camera,
                microphone,
                speaker,
            },
            Arc::clone(&stats),
        )
        .map_err(DeviceError::Threads)?;
        Ok(Device {
            config,
            stats,
            pipeline,
            outputs,
            started,
        })
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
        let tls_ca_pem =
            match &c.room.ca_file {
                Some(f) => Some(std::fs::read(f).map_err(|e| {
                    DeviceError::Config(format!("room.ca_file {}: {e}", f.display()))
                })?),
                None => None,
            };
        Ok(ClientConfig {
            url: c.room.url.clone(),
            sdk_app_id: c.room.sdk_app_id,
            user_id: c.room.user_id.clone(),
            user_sig: c
                .user_sig()
                .map_err(|e| DeviceError::Config(format!("userSig: {e}")))?,
            net: NetConfig {
                bind: c.network.bind,
                ice_servers: c.network.ice_servers.clone(),
                congestion: c.network.congestion_control.then_some(Congestion {
                    min_bps: v.bitrate_min_kbps as f64 * 1000.0,
                    start_bps: v.bitrate_start_kbps as f64 * 1000.0,
                    max_bps: v.bitrate_max_kbps as f64 * 1000.0,
                }),
            },
            tls_ca_pem,
        })
    }

    fn room(&self) -> JoinRoom {
        match (&self.config.room.str_room_id, self.config.room.room_id) {
            (Some(s), _) => JoinRoom::Str(s.clone()),
            (None, n) => JoinRoom::Num(n.unwrap_or(0)),
        }
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
        let config = self.client_config()?;
        let room = self.room();
        let (a, v) = (self.config.audio.enabled, self.config.video.enabled);
        let mut client = None;
        let joining = async {
            let c = client.insert(Client::connect(config).await?);
            let existing = c.join(room.clone()).await?;
            log::info!("joined {room:?} as {}", c.user_id());
            c.publish(a, v).await?;
            Ok::<_, DeviceError>(existing)
        };
        let existing = tokio::select! {
            r = joining => r,
            _ = &mut hangup => {
                if let Some(mut c) = client {
                    let _ = c.leave().await;
                }
                return Ok(());
            }
        };
        let Some(mut client) = client else {
            return existing.map(|_| ());
        };
        let existing = match existing {
            Ok(e) => e,
            Err(e) => {
                client.close_media().await;
                return Err(e);
            }
        };
        if let Some(j) = link.joined.take() {
            let _ = j.send(());
        }
        let (video, audio) = {
            let local = client
                .local_stream()
                .ok_or(ClientError::InvalidOperation("not publishing"))?;
            (local.video().cloned(), local.audio().cloned())
        };
        log::info!(
            "publishing {}{}",
            if a { "audio " } else { "" },
            if v { "video" } else { "" }
        );
        // Drop media encoded while not in a call: the call starts live.
        while self.outputs.video.try_recv().is_ok() {}
        while self.outputs.audio.try_recv().is_ok() {}
        self.pipeline.keyframe.store(true, Relaxed);

        let (sub_tx, mut sub_rx) = mpsc::unbounded_channel::<StreamInfo>();
        for s in existing {
            let _ = sub_tx.send(s);
        }
        let playback = self.pipeline.playback.clone();
        let keyframe = Arc::clone(&self.pipeline.keyframe);
        let stats = Arc::clone(&self.stats);
        let first_packet = |stats: &MediaStats, started: Instant| {
            if stats.first_rtp_us.load(Relaxed) == 0 {
                let us = started.elapsed().as_micros() as u64;
                stats.first_rtp_us.store(us.max(1), Relaxed);
                log::info!("first RTP packet {:.0} ms after start", us as f64 / 1000.0);
            }
        };
        let keyframe_task = video.clone().map(|track| {
            let (keyframe, stats) = (Arc::clone(&keyframe), Arc::clone(&stats));
            tokio::spawn(async move {
                while track.keyframe_requested().await.is_some() {
                    add(&stats.keyframe_requests, 1);
                    keyframe.store(true, Relaxed);
                }
            })
        });
        let (_unmuted, never_muted) = watch::channel(false);
        let mut muted = link.audio_muted.take().unwrap_or(never_muted);
        let mut audio_muted = false;
        // Apply a mute set before this call (e.g. kept across a reconnect).
        muted.mark_changed();
        let mut liveness = tokio::time::interval(Duration::from_millis(250));
        // Set once a track write fails: media stops, and the call ends unless
        // the room explains within UPLINK_GRACE.
        let mut uplink_lost: Option<(tokio::time::Instant, String)> = None;
        let result = loop {
            if let Some(t) = client.local_stream().and_then(|l| l.target_bitrate()) {
                self.pipeline.bitrate.store(t, Relaxed);
                self.stats.target_bitrate_bps.store(t, Relaxed);
            }
            tokio::select! {
                _ = &mut hangup => {
                    let _ = client.leave().await;
                    break Ok(());
                }
                Some(unit) = self.outputs.video.recv() => {
                    if let (Some(t), None) = (&video, &uplink_lost) {
                        first_packet(&stats, self.started);
                        if let Err(e) = t.write(unit.data, unit.duration).await {
                            uplink_lost = Some(uplink_failed("video", e));
                        }
                    }
                }
                // The room closes a pushed-out client's connections as it tells
                // it why; give its word time to arrive before reconnecting.
                _ = tokio::time::sleep_until(uplink_lost.as_ref().map_or_else(tokio::time::Instant::now, |l| l.0)), if uplink_lost.is_some() => {
                    let e = uplink_lost.take().map(|l| l.1).unwrap_or_default();
                    break Err(DeviceError::UplinkClosed(e));
                }
                Ok(()) = muted.changed() => {
                    let m = *muted.borrow_and_update();
                    if m != audio_muted {
                        audio_muted = m;
                        log::info!("microphone {}", if m { "muted" } else { "unmuted" });
                        if let Err(e) = client.mute(MediaKind::Audio, m).await {
                            log::warn!("mute-audio (code {:#06x}): {e}", e.code());
                        }
                    }
                }
                _ = liveness.tick(), if link.dead_media.is_some() => {
                    let limit = link.dead_media.unwrap_or(Duration::MAX);
                    if let Some(silence) = client.room_silence().filter(|s| *s > limit) {
                        log::error!("E_MEDIA_DEAD: nothing from the room for {silence:.1?} (code {:#06x})", crate::protocol::code::ICE_TRANSPORT_ERROR);
                        break Err(DeviceError::MediaDead(silence));
                    }
                }
                Some(packet) = self.outputs.audio.recv() => {
                    if audio_muted {
                        continue;
                    }
                    if let (Some(t), None) = (&audio, &uplink_lost) {
                        first_packet(&stats, self.started);
                        match t.write(packet, crate::device::audio::FRAME).await {
                            Ok(()) => add(&stats.audio_packets_sent, 1),
                            Err(e) => uplink_lost = Some(uplink_failed("audio", e)),
                        }
                    }
                }
                Some(info) = sub_rx.recv() => {
                    if info.user_id == client.user_id() {
                        continue;
                    }
                    match client.subscribe(&info).await {
                        Ok(remote) => {
                            log::info!("subscribed to {} ({})", info.user_id, info.stream_id);
                            if let Err(e) = playback.add_stream(&info.stream_id) {
                                log::error!("cannot play {}: {e}", info.stream_id);
                            }
                            let (playback, stats, id) = (playback.clone(), Arc::clone(&stats), info.stream_id.clone());
                            let mut packets = remote.packets;
                            tokio::spawn(async move {
                                while let Some(p) = packets.recv().await {
                                    if p.kind == MediaKind::Audio && !p.packet.payload.is_empty() {
                                        add(&stats.audio_packets_received, 1);
                                        playback.push(&id, p.packet.header.sequence_number, p.packet.payload);
                                    }
                                }
                            });
                        }
                        Err(e) => log::error!("subscribe to {} failed (code {:#06x}): {e}", info.user_id, e.code()),
                    }
                }
                ev = client.next_event() => match ev {
                    None => break Err(DeviceError::Client(ClientError::SignalClosed)),
                    Some(ServerMessage::StreamAdded { stream }) => { let _ = sub_tx.send(stream); }
                    Some(ServerMessage::StreamRemoved { stream_id, user_id }) => {
                        log::info!("{user_id} stopped publishing");
                        playback.remove_stream(&stream_id);
                        let _ = client.unsubscribe(&stream_id).await;
                    }
                    Some(ServerMessage::ClientBanned { reason, message }) => {
                        log::error!("client-banned {reason:?} (code {:#06x}): {message}", crate::protocol::code::CLIENT_BANNED);
                        break Err(DeviceError::Banned(reason));
                    }
                    Some(ServerMessage::PeerJoin { user_id }) => log::info!("peer-join {user_id}"),
                    Some(ServerMessage::PeerLeave { user_id }) => log::info!("peer-leave {user_id}"),
                    Some(other) => log::debug!("event {other:?}"),
                },
            }
        };
        if let Some(t) = keyframe_task {
            t.abort();
        }
        client.close_media().await;
        playback.clear();
        result
    }
}
