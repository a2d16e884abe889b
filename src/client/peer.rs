//! WebRTC peer connections of the client, on the `webrtc` crate: the uplink
//! (sendonly Opus + H.264 constrained baseline) that carries a publication,
//! and a downlink (recvonly) per subscribed stream. Non-trickle: the offer is
//! sent once ICE gathering has finished, so one signaling round trip
//! negotiates a connection.

use crate::client::keyframe::{is_keyframe_request, KeyframeRequestForwarder};
use crate::client::liveness::RoomActivity;
use crate::client::rtp_clock::RtpClock;
use crate::client::turn_stream::{self, Bridge};
use crate::client::ClientError;
use crate::protocol::{IceServer, MediaKind};
use bytes::Bytes;
use rtc::interceptor::{BandwidthEstimator, EstimatorStats, Gcc, PacketReport, Registry, Slot};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::interceptor_registry::{
    configure_congestion_control, register_default_interceptors, CongestionFeedback,
};
use rtc::peer_connection::configuration::media_engine::{
    MediaEngine, MIME_TYPE_H264, MIME_TYPE_OPUS,
};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::{RTCIceServer, RTCIceTransportPolicy};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::transport::RTCIceCandidateInit;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp::extension::playout_delay_extension::PlayoutDelayExtension;
use rtc::rtp::extension::HeaderExtension;
use rtc::rtp::packetizer::Payloader;
use rtc::rtp_transceiver::rtp_sender::RTCRtpHeaderExtensionCapability;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use rtc::rtp_transceiver::{PayloadType, RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCIceGatheringState,
    RTCPeerConnectionState,
};

/// H.264 as browsers decode it: constrained baseline, packetization mode 1.
const H264_FMTP: &str = "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f";

/// The playout-delay RTP header extension (libwebrtc's; Chrome offers it).
const PLAYOUT_DELAY_URI: &str = "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay";

/// How a viewer may hold our video before it shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VideoPlayout {
    /// The viewer's jitter buffer and audio/video sync decide; no extension.
    #[default]
    Adaptive,
    /// Each frame is shown as soon as it is decoded: playout-delay min = max
    /// = 0 on every video packet. libwebrtc then skips its jitter buffer's
    /// render-time wait and lip-sync hold, and renders on its low-latency
    /// path. Video may then run ahead of audio by the audio jitter buffer
    /// (tens of ms), which viewers tolerate far better than video behind.
    Immediate,
}

impl VideoPlayout {
    fn extension(self) -> Option<PlayoutDelayExtension> {
        match self {
            VideoPlayout::Adaptive => None,
            VideoPlayout::Immediate => Some(PlayoutDelayExtension {
                min_delay: 0,
                max_delay: 0,
            }),
        }
    }
}

/// How long connection setup may take.
const ICE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the offer waits for ICE gathering to finish.
const GATHER_TIMEOUT: Duration = Duration::from_secs(3);

/// Network settings shared by all of a client's connections.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Local address to gather host candidates on (unspecified: all interfaces).
    pub bind: IpAddr,
    /// STUN and TURN servers from the config.
    pub ice_servers: Vec<IceServer>,
    /// TURN servers the room handed out at join, with fresh credentials.
    pub room_ice_servers: Vec<IceServer>,
    /// Only relay candidates (`ice_transport_policy = "relay"`): every
    /// call goes through TURN.
    pub relay_only: bool,
    /// Send-side congestion control (TWCC feedback + GCC) on the uplink.
    pub congestion: Option<Congestion>,
    /// TLS for `turns:` servers; `Client::connect` fills it (the system's
    /// roots and the config's extra CAs).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// Bounds for the congestion controller's estimate, in bits per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Congestion {
    pub min_bps: f64,
    pub start_bps: f64,
    pub max_bps: f64,
}

/// Wraps the estimator so the encoder can read its target: the chain owns
/// the estimator, so the number is pushed out after each update (the
/// pattern of the `webrtc` crate's bandwidth-estimation example).
struct ReportingEstimator<E: BandwidthEstimator> {
    inner: E,
    target: Arc<AtomicU64>,
}

impl<E: BandwidthEstimator> ReportingEstimator<E> {
    fn publish(&self) {
        self.target
            .store(self.inner.target_bitrate() as u64, Ordering::Relaxed);
    }
}

impl<E: BandwidthEstimator> BandwidthEstimator for ReportingEstimator<E> {
    fn on_reports(&mut self, now: Instant, reports: &[PacketReport]) {
        self.inner.on_reports(now, reports);
        self.publish();
    }

    fn target_bitrate(&self) -> f64 {
        self.inner.target_bitrate()
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.inner.handle_timeout(now);
        self.publish();
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.inner.poll_timeout()
    }

    fn stats(&self) -> EstimatorStats {
        self.inner.stats()
    }
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            bind: IpAddr::from([0, 0, 0, 0]),
            ice_servers: Vec::new(),
            room_ice_servers: Vec::new(),
            relay_only: false,
            congestion: None,
            tls: None,
        }
    }
}

/// The room's passive ICE-TCP candidates in an SDP (`candidate:...` lines,
/// the first media section's; the room bundles everything there).
fn tcp_passive_candidates(sdp: &str) -> Vec<String> {
    sdp.lines()
        .filter_map(|l| l.trim().strip_prefix("a="))
        .filter(|c| c.starts_with("candidate:") && c.contains(" tcptype passive"))
        .map(str::to_owned)
        .collect()
}

/// The ICE servers for the crate: TURN over TCP or TLS goes through a
/// bridge each (the crate allocates over UDP only); a server that cannot
/// be reached is logged and left out, so a relay-only call fails naming it.
async fn bridged_servers(net: &NetConfig) -> (Vec<RTCIceServer>, Vec<Bridge>) {
    let servers: Vec<&IceServer> = net
        .ice_servers
        .iter()
        .chain(&net.room_ice_servers)
        .collect();
    let streamed = servers
        .iter()
        .flat_map(|s| &s.urls)
        .filter(|u| turn_stream::stream_target(u).is_some());
    let opened = futures_util::future::join_all(
        streamed.map(|u| async move { (u, turn_stream::open(u, net.tls.as_ref()).await) }),
    )
    .await;
    let mut local = std::collections::HashMap::new();
    let mut bridges = Vec::new();
    for (url, bridge) in opened {
        match bridge {
            Ok(b) => {
                local.insert(url.as_str(), b.local_url.clone());
                bridges.push(b);
            }
            Err(e) => log::error!("E_TURN_UNREACHABLE: {e}"),
        }
    }
    let rtc_servers = servers
        .into_iter()
        .filter_map(|s| {
            let urls: Vec<String> = s
                .urls
                .iter()
                .filter_map(|u| match turn_stream::stream_target(u) {
                    None => Some(u.clone()),
                    Some(_) => local.get(u.as_str()).cloned(),
                })
                .collect();
            (!urls.is_empty()).then(|| RTCIceServer {
                urls,
                username: s.username.clone().unwrap_or_default(),
                credential: s.credential.clone().unwrap_or_default(),
            })
        })
        .collect();
    (rtc_servers, bridges)
}

fn opus() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

fn h264() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_H264.to_owned(),
        clock_rate: 90000,
        channels: 0,
        sdp_fmtp_line: H264_FMTP.to_owned(),
        rtcp_feedback: vec![],
    }
}

/// Connection-level happenings a client reacts to.
#[derive(Clone)]
struct Handler {
    gathered: watch::Sender<bool>,
    state: watch::Sender<RTCPeerConnectionState>,
    tracks: mpsc::UnboundedSender<Arc<dyn TrackRemote>>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.gathered.send(true);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        log::debug!("peer connection state: {state}");
        let _ = self.state.send(state);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let _ = self.tracks.send(track);
    }
}

/// One negotiated peer connection and its state.
pub struct Peer {
    pub pc: Arc<dyn PeerConnection>,
    pub state: watch::Receiver<RTCPeerConnectionState>,
    gathered: watch::Receiver<bool>,
    tracks: Option<mpsc::UnboundedReceiver<Arc<dyn TrackRemote>>>,
    /// The congestion controller's target (bit/s), when it runs on this connection.
    pub target_bitrate: Option<Arc<AtomicU64>>,
    /// Relay-only: the TURN URLs that must give a relay address.
    relay_from: Option<String>,
    /// TURN over TCP/TLS bridges, alive as long as the connection.
    bridges: Vec<Bridge>,
}

fn rtc_err(what: &str) -> impl Fn(webrtc::error::Error) -> ClientError + '_ {
    move |e| ClientError::Media(format!("{what}: {e}"))
}

/// Which way a connection's media goes: the local candidate of the
/// selected pair (`host`, `srflx`, `prflx`, `relay`) and its protocol.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IcePath {
    pub candidate: String,
    pub protocol: String,
}

impl std::fmt::Display for IcePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.candidate, self.protocol)
    }
}

impl Peer {
    /// The path the selected candidate pair takes, once there is one.
    pub async fn path(&self) -> Option<IcePath> {
        use rtc::statistics::report::RTCStatsReportEntry as Entry;
        let report = self
            .pc
            .get_stats(Instant::now(), rtc::statistics::StatsSelector::None)
            .await;
        let pairs = report.iter().filter_map(|e| match e {
            Entry::IceCandidatePair(p) => Some(p),
            _ => None,
        });
        // The nominated pair; the one carrying the most, if none says so.
        let pair = pairs.max_by_key(|p| (p.nominated, p.bytes_sent + p.bytes_received))?;
        // The pair names its candidate `candidate:X`, the candidate's own
        // entry is `RTCLocalIceCandidate_candidate:X` (webrtc 0.21).
        let id = &pair.local_candidate_id;
        let local = report.iter().find_map(|e| match e {
            Entry::LocalCandidate(c)
                if c.stats.id == *id || c.stats.id.ends_with(&format!("_{id}")) =>
            {
                Some(c)
            }
            _ => None,
        })?;
        // A relay reached through a bridge: the way to the TURN server is
        // the bridge's, not the loopback UDP the crate sees.
        let bridged = self.bridges.iter().find(|b| local.url == b.local_url);
        Some(IcePath {
            candidate: local.candidate_type.to_string(),
            protocol: bridged.map_or(local.protocol.clone(), |b| b.kind.as_str().to_owned()),
        })
    }

    async fn new(
        net: &NetConfig,
        congestion: Option<Congestion>,
        activity: &RoomActivity,
    ) -> Result<Peer, ClientError> {
        let mut media = MediaEngine::default();
        let audio = RTCRtpCodecParameters {
            rtp_codec: opus(),
            payload_type: 111,
        };
        let video = RTCRtpCodecParameters {
            rtp_codec: h264(),
            payload_type: 102,
        };
        media
            .register_codec(audio, RtpCodecKind::Audio)
            .map_err(|e| ClientError::Media(format!("register Opus: {e}")))?;
        media
            .register_codec(video, RtpCodecKind::Video)
            .map_err(|e| ClientError::Media(format!("register H.264: {e}")))?;
        media
            .register_header_extension(
                RTCRtpHeaderExtensionCapability {
                    uri: PLAYOUT_DELAY_URI.to_owned(),
                },
                RtpCodecKind::Video,
                None,
            )
            .map_err(|e| ClientError::Media(format!("register playout-delay: {e}")))?;
        let mut registry = Registry::new();
        let mut target_bitrate = None;
        if let Some(c) = congestion {
            let target = Arc::new(AtomicU64::new(c.start_bps as u64));
            let estimator = ReportingEstimator {
                inner: Gcc::new(c.start_bps, c.min_bps, c.max_bps),
                target: Arc::clone(&target),
            };
            registry = configure_congestion_control(
                registry,
                estimator,
                CongestionFeedback::Twcc,
                &mut media,
            )
            .map_err(|e| ClientError::Media(format!("congestion control: {e}")))?;
            target_bitrate = Some(target);
        }
        let registry = register_default_interceptors(registry, &mut media)
            .map_err(|e| ClientError::Media(format!("interceptors: {e}")))?
            // Last, so the interceptors that read RTCP have seen it all.
            .with(
                Slot::from(14_000),
                KeyframeRequestForwarder::new(activity.clone()),
            );
        // mDNS needs a multicast route, which many boards and test namespaces lack.
        let settings = SettingEngineBuilder::new()
            .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
            .with_include_loopback_candidate(net.bind.is_loopback())
            .build();
        let servers = net.ice_servers.iter().chain(&net.room_ice_servers);
        let relay_from = net.relay_only.then(|| {
            let urls: Vec<&str> = servers
                .clone()
                .flat_map(|s| &s.urls)
                .map(String::as_str)
                .collect();
            urls.join(", ")
        });
        let (servers, bridges) = bridged_servers(net).await;
        let policy = match net.relay_only {
            true => RTCIceTransportPolicy::Relay,
            false => RTCIceTransportPolicy::All,
        };
        let config = RTCConfigurationBuilder::new()
            .with_ice_servers(servers)
            .with_ice_transport_policy(policy)
            .build();
        let (gathered_tx, gathered) = watch::channel(false);
        let (state_tx, state) = watch::channel(RTCPeerConnectionState::New);
        let (tracks_tx, tracks) = mpsc::unbounded_channel();
        let handler = Arc::new(Handler {
            gathered: gathered_tx,
            state: state_tx,
            tracks: tracks_tx,
        });
        let runtime = webrtc::runtime::default_runtime()
            .ok_or_else(|| ClientError::Internal("webrtc built without a runtime".into()))?;
        let pc = PeerConnectionBuilder::new()
            .with_configuration(config)
            .with_media_engine(media)
            .with_setting_engine(settings)
            .with_interceptor_registry(registry)
            .with_handler(handler)
            .with_runtime(runtime)
            .with_udp_addrs(vec![format!("{}:0", net.bind)])
            // Active ICE-TCP candidates: where UDP is blocked, media can
            // still reach a room that listens for TCP.
            .with_tcp_addrs(vec![format!("{}:0", net.bind)])
            .build()
            .await
            .map_err(rtc_err("create peer connection"))?;
        Ok(Peer {
            pc: Arc::new(pc),
            state,
            gathered,
            tracks: Some(tracks),
            target_bitrate,
            relay_from,
            bridges,
        })
    }

    /// Create the offer and wait until it carries all candidates.
    async fn offer(&mut self) -> Result<String, ClientError> {
        let offer = self
            .pc
            .create_offer(None)
            .await
            .map_err(rtc_err("create offer"))?;
        self.describe_locally(offer).await
    }

    /// Set our side's description, wait for ICE gathering, and give the SDP
    /// with its candidates; a relay-only connection without a relay, or one
    /// with no candidate at all, fails here, naming the servers, rather
    /// than after the ICE timeout.
    async fn describe_locally(
        &mut self,
        local: RTCSessionDescription,
    ) -> Result<String, ClientError> {
        self.pc
            .set_local_description(local)
            .await
            .map_err(rtc_err("set local description"))?;
        let sdp = self.gathered_sdp().await?;
        match &self.relay_from {
            Some(servers) if !sdp.contains(" typ relay") => {
                Err(ClientError::NoRelay(servers.clone()))
            }
            _ if !sdp.contains("a=candidate:") => {
                Err(ClientError::Media("no ICE candidates gathered".into()))
            }
            _ => Ok(sdp),
        }
    }

    /// The local description once ICE gathering has finished, or after
    /// [`GATHER_TIMEOUT`] with what has been gathered by then.
    async fn gathered_sdp(&mut self) -> Result<String, ClientError> {
        // A TURN server that does not answer (UDP dropped) holds gathering
        // up for its whole retransmission schedule; the offer goes with
        // what has been gathered by then.
        let gathered = self.gathered.wait_for(|g| *g);
        match tokio::time::timeout(GATHER_TIMEOUT, gathered).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => {
                return Err(ClientError::Media(
                    "peer connection closed while gathering".into(),
                ))
            }
            Err(_) => log::info!(
                "ICE gathering unfinished after {GATHER_TIMEOUT:?}; offering the candidates gathered so far"
            ),
        }
        let sdp = self
            .pc
            .local_description()
            .await
            .map(|d| d.sdp)
            .ok_or_else(|| ClientError::Media("no local description".into()))?;
        Ok(sdp)
    }

    /// Answer an engine's offer (Janus offers subscriptions), with every
    /// candidate gathered in the answer and the same checks as [`Peer::offer`].
    async fn answer(&mut self, offer: String) -> Result<String, ClientError> {
        let offer = RTCSessionDescription::offer(offer)
            .map_err(|e| ClientError::Media(format!("offer: {e}")))?;
        self.pc
            .set_remote_description(offer)
            .await
            .map_err(rtc_err("set remote description"))?;
        let answer = self
            .pc
            .create_answer(None)
            .await
            .map_err(rtc_err("create answer"))?;
        self.describe_locally(answer).await
    }

    async fn accept_answer(&self, sdp: String) -> Result<(), ClientError> {
        let passive = tcp_passive_candidates(&sdp);
        let answer = RTCSessionDescription::answer(sdp)
            .map_err(|e| ClientError::Media(format!("answer: {e}")))?;
        self.pc
            .set_remote_description(answer)
            .await
            .map_err(rtc_err("set remote description"))?;
        // webrtc 0.21 opens ICE-TCP connections only to passive candidates
        // handed to `add_ice_candidate`, not to those in the description.
        for candidate in passive {
            let init = RTCIceCandidateInit {
                candidate,
                sdp_mline_index: Some(0),
                ..Default::default()
            };
            if let Err(e) = self.pc.add_ice_candidate(init).await {
                log::debug!("ICE-TCP candidate not taken: {e}");
            }
        }
        Ok(())
    }

    /// Wait for the connection to be up (DTLS done, SRTP keys in place).
    pub async fn connected(&mut self) -> Result<(), ClientError> {
        let wait = self.state.wait_for(|s| {
            matches!(
                s,
                RTCPeerConnectionState::Connected
                    | RTCPeerConnectionState::Failed
                    | RTCPeerConnectionState::Closed
            )
        });
        let state = tokio::time::timeout(ICE_CONNECT_TIMEOUT, wait)
            .await
            .map_err(|_| ClientError::Media("connection did not come up".into()))?
            .map(|s| *s)
            .map_err(|_| ClientError::Media("peer connection dropped".into()))?;
        match state {
            RTCPeerConnectionState::Connected => Ok(()),
            s => Err(ClientError::Media(format!("connection {s}"))),
        }
    }

    pub async fn close(&self) {
        let _ = self.pc.close().await;
    }
}

/// Largest RTP packet we make, before header extensions (webrtc-rs's own).
const RTP_MTU: usize = 1200;
/// The fixed RTP header.
const RTP_HEADER: usize = 12;

/// A local track and what was negotiated for it. We packetize ourselves
/// (webrtc-rs's payloader, our timestamps, see `rtp_clock`) and hand the
/// packets to the connection, which protects and sends them.
#[derive(Clone)]
pub struct LocalTrack {
    pub track: Arc<TrackLocalStaticRTP>,
    pub ssrc: u32,
    pub pt: PayloadType,
    /// Sent on each packet (written only where it was negotiated).
    playout_delay: Option<PlayoutDelayExtension>,
    packetizer: Arc<Mutex<Packetizer>>,
}

/// A track's payloader, sequence numbers and timeline.
struct Packetizer {
    payloader: Box<dyn Payloader>,
    seq: u16,
    clock: RtpClock,
}

impl LocalTrack {
    fn new(
        track: Arc<TrackLocalStaticRTP>,
        ssrc: u32,
        codec: &RTCRtpCodec,
    ) -> Result<Self, ClientError> {
        let packetizer = Packetizer {
            payloader: codec.payloader().map_err(rtc_err("payloader"))?,
            seq: rand::random(),
            clock: RtpClock::new(codec.clock_rate, rand::random()),
        };
        Ok(LocalTrack {
            track,
            ssrc,
            pt: 0,
            playout_delay: None,
            packetizer: Arc::new(Mutex::new(packetizer)),
        })
    }

    /// Send one encoded frame (an H.264 access unit in Annex B, or one
    /// Opus packet), `duration` after the last.
    pub async fn write(&self, data: Bytes, duration: Duration) -> Result<(), ClientError> {
        self.send(&data, |c| c.next(duration)).await
    }

    /// Send one encoded frame captured at `capture_us` (a monotonic
    /// microsecond clock): its RTP timestamp is that instant's.
    pub async fn write_captured(
        &self,
        data: Bytes,
        capture_us: u64,
        duration: Duration,
    ) -> Result<(), ClientError> {
        self.send(&data, |c| c.at_capture(capture_us, duration))
            .await
    }

    async fn send(
        &self,
        data: &Bytes,
        timestamp: impl FnOnce(&mut RtpClock) -> u32,
    ) -> Result<(), ClientError> {
        let packets = self.packetize(data, timestamp)?;
        let extensions: Vec<HeaderExtension> = self
            .playout_delay
            .map(HeaderExtension::PlayoutDelay)
            .into_iter()
            .collect();
        for packet in packets {
            self.track
                .write_rtp_with_extensions(packet, &extensions)
                .await
                .map_err(|e| match e {
                    // The crate reports a closed send queue (and an unbound
                    // track) as `Other`, with the whole unsent packet in the text.
                    webrtc::error::Error::Other(_) => {
                        ClientError::Media("write RTP: the peer connection is closed".into())
                    }
                    e => ClientError::Media(format!("write RTP: {e}")),
                })?;
        }
        Ok(())
    }

    fn packetize(
        &self,
        data: &Bytes,
        timestamp: impl FnOnce(&mut RtpClock) -> u32,
    ) -> Result<Vec<rtc::rtp::Packet>, ClientError> {
        let mut p = self
            .packetizer
            .lock()
            .map_err(|_| ClientError::Media("packetizer poisoned".into()))?;
        let payloads = p
            .payloader
            .payload(RTP_MTU - RTP_HEADER, data)
            .map_err(|e| ClientError::Media(format!("packetize: {e}")))?;
        let timestamp = timestamp(&mut p.clock);
        let last = payloads.len().saturating_sub(1);
        let mut packets = Vec::with_capacity(payloads.len());
        for (i, payload) in payloads.into_iter().enumerate() {
            let sequence_number = p.seq;
            p.seq = p.seq.wrapping_add(1);
            packets.push(rtc::rtp::Packet {
                header: rtc::rtp::header::Header {
                    version: 2,
                    marker: i == last,
                    payload_type: self.pt,
                    sequence_number,
                    timestamp,
                    ssrc: self.ssrc,
                    ..Default::default()
                },
                payload,
            });
        }
        Ok(packets)
    }

    /// Wait for the next PLI/FIR from the room for this track; `None` once
    /// the connection is gone. The encoder answers with a keyframe.
    pub async fn keyframe_requested(&self) -> Option<()> {
        loop {
            match self.track.poll().await? {
                TrackLocalEvent::OnRtcpPacket(packets) => {
                    if packets.iter().any(|p| is_keyframe_request(p.as_ref())) {
                        return Some(());
                    }
                }
                _ => continue,
            }
        }
    }
}

/// The uplink: a publication's connection and its tracks.
pub struct Uplink {
    pub peer: Peer,
    pub audio: Option<LocalTrack>,
    pub video: Option<LocalTrack>,
}

impl Uplink {
    /// Build the uplink and its offer; [`Uplink::finish`] takes the answer.
    pub async fn offer(
        net: &NetConfig,
        audio: bool,
        video: bool,
        playout: VideoPlayout,
        activity: &RoomActivity,
    ) -> Result<(Uplink, String), ClientError> {
        let mut peer = Peer::new(net, net.congestion, activity).await?;
        let mut tracks = Vec::new();
        for (on, kind, codec) in [
            (audio, RtpCodecKind::Audio, opus()),
            (video, RtpCodecKind::Video, h264()),
        ] {
            if !on {
                continue;
            }
            let ssrc = rand::random::<u32>();
            let label = format!("callbox-{kind}");
            let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
                "callbox".to_owned(),
                label.clone(),
                label,
                kind,
                vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        ssrc: Some(ssrc),
                        ..Default::default()
                    },
                    codec: codec.clone(),
                    ..Default::default()
                }],
            )));
            peer.pc
                .add_transceiver_from_track(
                    Arc::clone(&track) as Arc<dyn TrackLocal>,
                    Some(RTCRtpTransceiverInit {
                        direction: RTCRtpTransceiverDirection::Sendonly,
                        ..Default::default()
                    }),
                )
                .await
                .map_err(rtc_err("add track"))?;
            tracks.push((kind, LocalTrack::new(track, ssrc, &codec)?));
        }
        let sdp = peer.offer().await?;
        let mut up = Uplink {
            peer,
            audio: None,
            video: None,
        };
        // The payload type is known once the answer is in (finish).
        for (kind, mut lt) in tracks {
            match kind {
                RtpCodecKind::Audio => up.audio = Some(lt),
                _ => {
                    lt.playout_delay = playout.extension();
                    up.video = Some(lt);
                }
            }
        }
        Ok((up, sdp))
    }

    /// Apply the room's answer, wait for the connection, learn the payload types.
    pub async fn finish(&mut self, answer: String) -> Result<(), ClientError> {
        self.peer.accept_answer(answer).await?;
        self.peer.connected().await?;
        // Write with the negotiated payload type: the answerer's numbering wins.
        for sender in self.peer.pc.get_senders().await {
            let params = sender
                .get_parameters()
                .await
                .map_err(rtc_err("sender parameters"))?;
            let Some(codec) = params.rtp_parameters.codecs.first() else {
                continue;
            };
            let is_audio = codec
                .rtp_codec
                .mime_type
                .eq_ignore_ascii_case(MIME_TYPE_OPUS);
            let slot = if is_audio {
                &mut self.audio
            } else {
                &mut self.video
            };
            if let Some(t) = slot {
                t.pt = codec.payload_type;
            }
        }
        Ok(())
    }
}

/// One received RTP packet, with which track it came on.
#[derive(Debug, Clone)]
pub struct RemotePacket {
    pub kind: MediaKind,
    pub packet: rtc::rtp::Packet,
}

/// Received packets queued per subscription (about 2 s of video at 1.5 Mbit/s).
const RECEIVED_QUEUE: usize = 512;

/// The downlink of one subscribed stream.
pub struct Downlink {
    pub peer: Peer,
    keyframe_tx: mpsc::UnboundedSender<()>,
    keyframe_rx: Option<mpsc::UnboundedReceiver<()>>,
}

impl Downlink {
    pub async fn offer(
        net: &NetConfig,
        activity: &RoomActivity,
        receive: super::Receive,
    ) -> Result<(Downlink, String), ClientError> {
        let mut peer = Peer::new(net, None, activity).await?;
        let kinds = [
            (RtpCodecKind::Audio, receive.audio),
            (RtpCodecKind::Video, receive.video),
        ];
        for kind in kinds.into_iter().filter_map(|(k, on)| on.then_some(k)) {
            peer.pc
                .add_transceiver_from_kind(
                    kind,
                    Some(RTCRtpTransceiverInit {
                        direction: RTCRtpTransceiverDirection::Recvonly,
                        ..Default::default()
                    }),
                )
                .await
                .map_err(rtc_err("add transceiver"))?;
        }
        let sdp = peer.offer().await?;
        let (keyframe_tx, keyframe_rx) = mpsc::unbounded_channel();
        Ok((
            Downlink {
                peer,
                keyframe_tx,
                keyframe_rx: Some(keyframe_rx),
            },
            sdp,
        ))
    }

    /// Ask the publisher for a keyframe (sends PLI on the video track).
    pub fn keyframe_requester(&self) -> mpsc::UnboundedSender<()> {
        self.keyframe_tx.clone()
    }

    /// A downlink the engine offers (Janus): our answer to `offer`; then
    /// [`Downlink::start`].
    pub async fn answer(
        net: &NetConfig,
        activity: &RoomActivity,
        offer: String,
    ) -> Result<(Downlink, String), ClientError> {
        let mut peer = Peer::new(net, None, activity).await?;
        let sdp = peer.answer(offer).await?;
        let (keyframe_tx, keyframe_rx) = mpsc::unbounded_channel();
        Ok((
            Downlink {
                peer,
                keyframe_tx,
                keyframe_rx: Some(keyframe_rx),
            },
            sdp,
        ))
    }

    /// Apply the answer, then [`Downlink::start`].
    pub async fn finish(
        &mut self,
        answer: String,
    ) -> Result<mpsc::Receiver<RemotePacket>, ClientError> {
        self.peer.accept_answer(answer).await?;
        self.start().await
    }

    /// Once negotiated: received packets of every track go to the returned
    /// channel, when the connection is up.
    pub async fn start(&mut self) -> Result<mpsc::Receiver<RemotePacket>, ClientError> {
        let (tx, rx) = mpsc::channel(RECEIVED_QUEUE);
        let mut keyframe_rx = self
            .keyframe_rx
            .take()
            .ok_or_else(|| ClientError::Internal("downlink finished twice".into()))?;
        let mut tracks = self
            .peer
            .tracks
            .take()
            .ok_or_else(|| ClientError::Internal("downlink finished twice".into()))?;
        tokio::spawn(async move {
            while let Some(track) = tracks.recv().await {
                let kind = match track.kind().await {
                    RtpCodecKind::Audio => MediaKind::Audio,
                    _ => MediaKind::Video,
                };
                let tx = tx.clone();
                // The video track also carries this subscriber's keyframe requests.
                let mut requests = match kind {
                    MediaKind::Video => Some(std::mem::replace(
                        &mut keyframe_rx,
                        mpsc::unbounded_channel().1,
                    )),
                    MediaKind::Audio => None,
                };
                tokio::spawn(async move {
                    loop {
                        let request = async {
                            match requests.as_mut() {
                                Some(r) => r.recv().await,
                                None => std::future::pending().await,
                            }
                        };
                        tokio::select! {
                            ev = track.poll() => match ev {
                                Some(TrackRemoteEvent::OnRtpPacket(packet)) => {
                                    // A reader that falls behind loses packets, as on the network.
                                    if let Err(mpsc::error::TrySendError::Closed(_)) =
                                        tx.try_send(RemotePacket { kind, packet })
                                    {
                                        break;
                                    }
                                }
                                Some(_) => {}
                                None => break,
                            },
                            Some(()) = request => {
                                let ssrc = track.ssrcs().await.first().copied().unwrap_or(0);
                                let pli = PictureLossIndication { sender_ssrc: 0, media_ssrc: ssrc };
                                let _ = track.write_rtcp(vec![Box::new(pli)]).await;
                            }
                        }
                    }
                });
            }
        });
        self.peer.connected().await?;
        Ok(rx)
    }
}
