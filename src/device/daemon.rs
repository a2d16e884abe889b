//! `callbox device`: opens the camera, microphone and speaker the config
//! names (every failure a startup error naming the device), starts the
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
use crate::device::pipeline::{Outputs, Parts, Pipeline};
use crate::device::stats::{add, MediaStats};
use crate::device::v4l2::V4l2Camera;
use crate::device::video_source::{SyntheticCamera, VideoError, VideoSource};
use crate::protocol::{BanReason, MediaKind, ServerMessage, StreamInfo};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

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
        }
    }
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
    camera: &dyn VideoSource,
) -> Result<Box<dyn VideoEncoder>, VideoError> {
    let v = &c.video;
    let (width, height) = camera.size();
    Ok(match v.encoder {
        EncoderKind::Openh264 => Box::new(OpenH264Encoder::new(EncoderSettings {
            width,
            height,
            fps: camera.fps(),
            bitrate_bps: v.bitrate_start_kbps * 1000,
            keyframe_interval_frames: v.keyframe_interval_s * camera.fps().max(1),
            library: v.openh264_library.clone(),
        })?),
        EncoderKind::Passthrough => Box::new(Passthrough::new()),
        EncoderKind::V4l2m2m => {
            return Err(VideoError::NotImplemented("the V4L2 M2M hardware encoder"))
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
    started: Instant,
}

impl Device {
    /// Open everything the config names; any device that cannot be opened
    /// is an error naming it. `started` is when the process started (for
    /// the time-to-first-packet metric).
    pub fn open(config: DeviceConfig, started: Instant) -> Result<Device, DeviceError> {
        let stats = Arc::new(MediaStats::default());
        let camera = if config.video.enabled {
            let camera = open_camera(&config)?;
            let encoder = open_encoder(&config, camera.as_ref())?;
            log::info!("video: {} -> {}", camera.describe(), encoder.describe());
            let c = config.clone();
            let reopen = Box::new(move || open_camera(&c));
            Some((camera, reopen as _, encoder))
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
    /// (then leave) or the room ends it (banned, signaling lost).
    pub async fn call(
        &mut self,
        hangup: impl std::future::Future<Output = ()>,
    ) -> Result<(), DeviceError> {
        let mut client = Client::connect(self.client_config()?).await?;
        let existing = client.join(self.room()).await?;
        log::info!("joined {:?} as {}", self.room(), client.user_id());
        let v = self.config.video.enabled;
        let a = self.config.audio.enabled;
        client.publish(a, v).await?;
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
        tokio::pin!(hangup);
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
                    if let Some(t) = &video {
                        first_packet(&stats, self.started);
                        if let Err(e) = t.write(unit.data, unit.duration).await {
                            log::warn!("video write: {e}");
                        }
                    }
                }
                Some(packet) = self.outputs.audio.recv() => {
                    if let Some(t) = &audio {
                        first_packet(&stats, self.started);
                        match t.write(packet, crate::device::audio::FRAME).await {
                            Ok(()) => add(&stats.audio_packets_sent, 1),
                            Err(e) => log::warn!("audio write: {e}"),
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
