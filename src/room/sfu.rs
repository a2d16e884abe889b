//! The SFU: one UDP socket for all media of all clients (and, with
//! `media.tcp_listen`, ICE-TCP connections from [`crate::room::media_tcp`]),
//! one thread that owns every peer (a str0m `Rtc`, ICE-lite, RTP mode) and
//! forwards RTP from each publication's uplink to the downlinks that
//! subscribe to it.
//!
//! Each client has an uplink PeerConnection for its publication and one
//! downlink PeerConnection per subscribed stream (the TRTC v4 topology). That
//! keeps every negotiation a single offer/answer, with no renegotiation when
//! others come and go, and lets a subscriber drop one stream by closing one
//! connection.
//!
//! Forwarding is at the RTP level: payloads are shared (`Arc<[u8]>`) between
//! all downlinks, never copied or re-packetized; sequence numbers are rebased
//! per downlink so SRTP's rollover counter starts at 0 for a late subscriber.
//! str0m answers NACKs from its send buffer, sends NACKs and TWCC feedback to
//! publishers, and keyframe requests (PLI/FIR) are relayed to the publisher.
//!
//! SDP work (a DTLS certificate per peer, parsing and answering the offer)
//! runs on tokio's blocking pool, so a burst of joins does not stall the
//! forwarding thread; the thread only takes in the prepared peer. A peer
//! that dies on its own (ICE gone, DTLS or input errors) is reported as a
//! [`MediaLost`] so the room can tell the others; every 2 s each client's
//! links are graded ([`crate::network_quality`]) and reported too, on the
//! same channel ([`Report`]). The thread's heartbeat
//! ([`Sfu::health`]) says whether it is alive and moving.

use crate::network_quality::{self, Link, LinkMeter, NetworkQuality};
use crate::room::media_tcp::{self, TcpEvent};
use crate::room::state::ConnId;
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use str0m::change::SdpOffer;
use str0m::media::{KeyframeRequestKind, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{RtpPacket, RtpWrite, SeqNo};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

/// Media TCP events (connections, packets) waiting for the thread.
const TCP_EVENTS: usize = 1024;

/// The next media TCP event, or never without media TCP.
async fn next_tcp(rx: &mut Option<mpsc::Receiver<TcpEvent>>) -> Option<TcpEvent> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Keyframe requests to one publisher are relayed at most this often.
const KEYFRAME_THROTTLE: Duration = Duration::from_millis(300);
/// Forwarding delays kept for percentiles.
const DELAY_SAMPLES: usize = 1 << 16;
/// Largest datagram taken in; a larger one is counted and dropped, not truncated.
const MAX_DATAGRAM: usize = 2048;
/// Reports queued to the room; peers are capped by the connection caps,
/// so this is only reached if the room stops reading.
const REPORT_QUEUE: usize = 4096;

/// What the SFU tells the room on its own.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    /// A peer died on its own: the room must tell the others.
    Lost(MediaLost),
    /// A client's network quality, every 2 s while it has media.
    Quality(ConnId, NetworkQuality),
}

/// A peer the SFU dropped on its own: the room must be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaLost {
    pub conn: ConnId,
    pub stream_id: String,
    pub role: Role,
}

/// Whether the forwarding thread lives and moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Running,
    /// The thread ended (a panic, or the socket failed).
    Stopped,
    /// No loop turn for this long (it turns at least once a second).
    Stalled(Duration),
}

#[derive(Debug, thiserror::Error)]
pub enum SfuError {
    #[error("bad SDP offer: {0}")]
    BadSdp(String),
    #[error("offer refused: {0}")]
    Refused(String),
    #[error("the media service has stopped")]
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Uplink,
    Downlink,
}

/// Counters and forwarding-delay percentiles, for `/api/stats` and benchmarks.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SfuStats {
    pub peers: usize,
    pub uplinks: usize,
    pub downlinks: usize,
    pub rtp_in: u64,
    pub rtp_forwarded: u64,
    pub keyframe_requests_relayed: u64,
    /// Time from a datagram's arrival to the last of its forwarded copies
    /// being handed to the socket, microseconds.
    pub forward_delay_us_p50: u32,
    pub forward_delay_us_p99: u32,
    pub forward_delay_samples: usize,
    /// Datagrams over the largest size taken in, dropped.
    pub datagrams_oversized: u64,
}

enum Command {
    /// A peer prepared off the thread, with its answer.
    Insert {
        conn: ConnId,
        stream_id: String,
        role: Role,
        rtc: Box<Rtc>,
        answer: String,
        reply: oneshot::Sender<String>,
    },
    CloseConn(ConnId),
    EndPublication(String),
    EndSubscription {
        conn: ConnId,
        stream_id: String,
    },
    Stats(oneshot::Sender<SfuStats>),
}

/// Handle to the SFU thread; cheap to clone. The thread ends when every
/// handle is dropped.
#[derive(Clone)]
pub struct Sfu {
    tx: mpsc::UnboundedSender<Command>,
    local_addr: SocketAddr,
    advertise: SocketAddr,
    /// The ICE-TCP passive candidate's address, when media TCP is on.
    tcp_advertise: Option<SocketAddr>,
    beat: Arc<Heartbeat>,
}

/// Media over TCP (ICE-TCP): the listener and the address clients are told.
pub struct MediaTcp {
    pub listener: std::net::TcpListener,
    pub advertise: SocketAddr,
}

/// Where a peer's packets leave: the UDP socket, or its TCP connection.
struct Out {
    udp: UdpSocket,
    tcp: HashMap<SocketAddr, mpsc::Sender<Bytes>>,
}

impl Out {
    fn send(&self, t: &str0m::net::Transmit) {
        // A full buffer or queue drops the packet like the network would.
        match t.proto {
            Protocol::Udp => {
                let _ = self.udp.try_send_to(&t.contents, t.destination);
            }
            _ => {
                if let Some(conn) = self.tcp.get(&t.destination) {
                    let _ = conn.try_send(Bytes::copy_from_slice(&t.contents));
                }
            }
        }
    }
}

/// The thread's loop count and when it last moved; `running` clears when
/// the thread ends, panic included.
#[derive(Debug)]
struct Heartbeat {
    running: AtomicBool,
    started: Instant,
    last_turn_ms: AtomicU64,
}

impl Heartbeat {
    fn beat(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_turn_ms.store(ms, Ordering::Relaxed);
    }
}

/// Clears `running` however the thread ends.
struct Running(Arc<Heartbeat>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::Relaxed);
    }
}

impl Sfu {
    /// Start the SFU on `socket`, telling clients to send media to
    /// `advertise`. Peers it drops on its own, and each client's network
    /// quality, are reported on the receiver.
    pub fn start(
        socket: std::net::UdpSocket,
        advertise: SocketAddr,
        tcp: Option<MediaTcp>,
    ) -> std::io::Result<(Sfu, mpsc::Receiver<Report>)> {
        socket.set_nonblocking(true)?;
        let tcp_advertise = tcp.as_ref().map(|t| t.advertise);
        let tcp_listener = match tcp {
            Some(t) => {
                t.listener.set_nonblocking(true)?;
                Some(t.listener)
            }
            None => None,
        };
        let local_addr = socket.local_addr()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (report_tx, report_rx) = mpsc::channel(REPORT_QUEUE);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let beat = Arc::new(Heartbeat {
            running: AtomicBool::new(true),
            started: Instant::now(),
            last_turn_ms: AtomicU64::new(0),
        });
        let running = Running(Arc::clone(&beat));
        std::thread::Builder::new()
            .name("callbox-sfu".into())
            .spawn(move || {
                let _running = running;
                rt.block_on(async move {
                    let socket = match UdpSocket::from_std(socket) {
                        Ok(socket) => socket,
                        Err(e) => {
                            log::error!("E_SFU_SOCKET: cannot use the media socket: {e}");
                            return;
                        }
                    };
                    let tcp_events = match tcp_listener.map(tokio::net::TcpListener::from_std) {
                        Some(Ok(listener)) => {
                            let (tx, rx) = mpsc::channel(TCP_EVENTS);
                            tokio::spawn(media_tcp::accept(listener, tx));
                            Some(rx)
                        }
                        Some(Err(e)) => {
                            log::error!("E_SFU_SOCKET: cannot use the media TCP listener: {e}");
                            None
                        }
                        None => None,
                    };
                    let beat = Arc::clone(&_running.0);
                    let engine = Engine::new(socket, advertise, report_tx, beat);
                    engine.run(rx, tcp_events, tcp_advertise).await
                })
            })?;
        let sfu = Sfu {
            tx,
            local_addr,
            advertise,
            tcp_advertise,
            beat,
        };
        Ok((sfu, report_rx))
    }

    /// Whether the forwarding thread is alive and has turned recently.
    pub fn health(&self) -> Health {
        if !self.beat.running.load(Ordering::Relaxed) {
            return Health::Stopped;
        }
        let last = Duration::from_millis(self.beat.last_turn_ms.load(Ordering::Relaxed));
        let since = self.beat.started.elapsed().saturating_sub(last);
        if since > STALL {
            Health::Stalled(since)
        } else {
            Health::Running
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Answer a client's offer for an uplink (publication `stream_id`) or a
    /// downlink (subscription to `stream_id`).
    pub async fn open(
        &self,
        conn: ConnId,
        stream_id: &str,
        role: Role,
        offer: String,
    ) -> Result<String, SfuError> {
        let (advertise, tcp) = (self.advertise, self.tcp_advertise);
        let (rtc, answer) = tokio::task::spawn_blocking(move || prepare(&offer, advertise, tcp))
            .await
            .map_err(|_| SfuError::Stopped)??;
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Insert {
                conn,
                stream_id: stream_id.to_owned(),
                role,
                rtc: Box::new(rtc),
                answer,
                reply,
            })
            .map_err(|_| SfuError::Stopped)?;
        rx.await.map_err(|_| SfuError::Stopped)
    }

    pub fn close_conn(&self, conn: ConnId) {
        let _ = self.tx.send(Command::CloseConn(conn));
    }

    pub fn end_publication(&self, stream_id: String) {
        let _ = self.tx.send(Command::EndPublication(stream_id));
    }

    pub fn end_subscription(&self, conn: ConnId, stream_id: String) {
        let _ = self.tx.send(Command::EndSubscription { conn, stream_id });
    }

    pub async fn stats(&self) -> Option<SfuStats> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Command::Stats(tx)).ok()?;
        rx.await.ok()
    }
}

/// The thread turns at least once a second; this long without a turn is a stall.
const STALL: Duration = Duration::from_secs(5);

/// A str0m peer for `offer` and its answer: the SDP work, off the thread.
fn prepare(
    offer: &str,
    advertise: SocketAddr,
    tcp: Option<SocketAddr>,
) -> Result<(Rtc, String), SfuError> {
    let offer = SdpOffer::from_sdp_string(offer).map_err(|e| SfuError::BadSdp(e.to_string()))?;
    let mut cfg = Rtc::builder()
        .set_ice_lite(true)
        .set_rtp_mode(true)
        .clear_codecs()
        .enable_opus(true, false)
        .set_stats_interval(Some(network_quality::INTERVAL / 2));
    // Constrained baseline first: browsers decode it and refuse High in answers.
    cfg.codec_config()
        .add_h264(108.into(), Some(109.into()), true, 0x42e01f);
    cfg.codec_config()
        .add_h264(127.into(), Some(121.into()), true, 0x42001f);
    let mut rtc = cfg.build(Instant::now());
    let candidate = Candidate::host(advertise, "udp").map_err(|e| {
        // The address is the server's business, not the client's.
        log::error!("E_SFU_ADVERTISE: media.advertise {advertise} is unusable: {e}");
        SfuError::Refused("the server's media address is misconfigured".into())
    })?;
    rtc.add_local_candidate(candidate);
    if let Some(tcp) = tcp {
        let passive = Candidate::builder()
            .tcp()
            .host(tcp)
            .tcptype(str0m::net::TcpType::Passive)
            .build();
        match passive {
            Ok(c) => {
                rtc.add_local_candidate(c);
            }
            Err(e) => log::error!("E_SFU_ADVERTISE: media.tcp_advertise {tcp} is unusable: {e}"),
        }
    }
    let answer = rtc
        .sdp_api()
        .accept_offer(offer)
        .map_err(|e| SfuError::Refused(e.to_string()))?;
    Ok((rtc, answer.to_sdp_string()))
}

type PeerId = u64;

/// Why a peer goes: the room asked, or it died on its own (the room must hear).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Removal {
    Asked,
    Died,
}

/// Sequence-number rebasing for one forwarded track.
#[derive(Debug, Clone, Copy)]
struct SeqMap {
    first_in: u64,
    first_out: u64,
}

struct Peer {
    conn: ConnId,
    stream_id: String,
    role: Role,
    rtc: Rtc,
    mids: Vec<(Mid, MediaKind)>,
    next_timeout: Instant,
    /// Downlinks: rebasing per kind.
    seq: HashMap<MediaKind, SeqMap>,
    /// Uplinks: when a keyframe was last requested.
    last_keyframe_request: Option<Instant>,
    connected: bool,
    /// Loss and round trip for the client's network quality.
    meter: LinkMeter,
}

impl Peer {
    fn mid_of(&self, kind: MediaKind) -> Option<Mid> {
        self.mids.iter().find(|(_, k)| *k == kind).map(|(m, _)| *m)
    }
}

/// What handling one peer's output asks of the others.
// Boxing the packet would cost an allocation per forwarded packet; entries
// live only until the end of one `drive`.
#[allow(clippy::large_enum_variant)]
enum Propagate {
    Rtp(PeerId, RtpPacket),
    Keyframe(PeerId, KeyframeRequestKind),
    DownlinkConnected(PeerId),
}

struct Engine {
    out: Out,
    reports: mpsc::Sender<Report>,
    beat: Arc<Heartbeat>,
    advertise: SocketAddr,
    peers: HashMap<PeerId, Peer>,
    by_addr: HashMap<SocketAddr, PeerId>,
    /// stream id -> downlink peers
    downlinks: HashMap<String, Vec<PeerId>>,
    next_id: PeerId,
    earliest: Instant,
    /// When clients are next told their network quality.
    next_grade: Instant,
    stats: SfuStats,
    delays: Vec<u32>,
    delay_pos: usize,
    /// Propagations waiting to be carried out.
    work: VecDeque<Propagate>,
}

impl Engine {
    fn new(
        socket: UdpSocket,
        advertise: SocketAddr,
        reports: mpsc::Sender<Report>,
        beat: Arc<Heartbeat>,
    ) -> Self {
        Engine {
            out: Out {
                udp: socket,
                tcp: HashMap::new(),
            },
            reports,
            beat,
            advertise,
            peers: HashMap::new(),
            by_addr: HashMap::new(),
            downlinks: HashMap::new(),
            next_id: 1,
            earliest: Instant::now() + Duration::from_secs(1),
            next_grade: Instant::now() + network_quality::INTERVAL,
            stats: SfuStats::default(),
            delays: Vec::with_capacity(DELAY_SAMPLES),
            delay_pos: 0,
            work: VecDeque::new(),
        }
    }

    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Command>,
        mut tcp: Option<mpsc::Receiver<TcpEvent>>,
        tcp_local: Option<SocketAddr>,
    ) {
        // One byte over the largest datagram taken in tells a larger one apart.
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        let udp_local = self.advertise;
        loop {
            self.beat.beat();
            let sleep = tokio::time::sleep_until(self.earliest.into());
            tokio::select! {
                r = self.out.udp.recv_from(&mut buf) => match r {
                    Ok((n, _)) if n > MAX_DATAGRAM => self.stats.datagrams_oversized += 1,
                    Ok((n, source)) => self.on_packet(&buf[..n], source, (Protocol::Udp, udp_local)),
                    // ICMP port-unreachable from a vanished client surfaces here; not fatal.
                    Err(e) => log::debug!("media socket recv: {e}"),
                },
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => break,
                },
                Some(ev) = next_tcp(&mut tcp) => match (ev, tcp_local) {
                    (TcpEvent::Opened(addr, conn), _) => {
                        self.out.tcp.insert(addr, conn);
                    }
                    (TcpEvent::Packet(addr, p), Some(local)) => {
                        self.on_packet(&p, addr, (Protocol::Tcp, local))
                    }
                    (TcpEvent::Packet(..), None) => {}
                    (TcpEvent::Closed(addr), _) => {
                        self.out.tcp.remove(&addr);
                    }
                },
                _ = sleep => {}
            }
            let now = Instant::now();
            if now >= self.earliest {
                self.on_timeouts(now);
            }
            if now >= self.next_grade {
                self.grade_links(now);
            }
        }
        log::info!("SFU stopped");
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Insert {
                conn,
                stream_id,
                role,
                rtc,
                answer,
                reply,
            } => {
                self.insert(conn, stream_id, role, *rtc);
                let _ = reply.send(answer);
            }
            Command::CloseConn(conn) => self.remove_where(Removal::Asked, |p| p.conn == conn),
            Command::EndPublication(stream_id) => {
                self.remove_where(Removal::Asked, |p| p.stream_id == stream_id)
            }
            Command::EndSubscription { conn, stream_id } => self
                .remove_where(Removal::Asked, |p| {
                    p.conn == conn && p.stream_id == stream_id && p.role == Role::Downlink
                }),
            Command::Stats(reply) => {
                let _ = reply.send(self.snapshot());
            }
        }
    }

    fn snapshot(&self) -> SfuStats {
        let mut s = self.stats.clone();
        s.peers = self.peers.len();
        s.uplinks = self
            .peers
            .values()
            .filter(|p| p.role == Role::Uplink)
            .count();
        s.downlinks = s.peers - s.uplinks;
        let mut d = self.delays.clone();
        d.sort_unstable();
        let pct = |q: f64| {
            d.get(((d.len() as f64 - 1.0) * q).round() as usize)
                .copied()
                .unwrap_or(0)
        };
        s.forward_delay_us_p50 = pct(0.50);
        s.forward_delay_us_p99 = pct(0.99);
        s.forward_delay_samples = d.len();
        s
    }

    fn insert(&mut self, conn: ConnId, stream_id: String, role: Role, rtc: Rtc) {
        let now = Instant::now();
        let id = self.next_id;
        self.next_id += 1;
        if role == Role::Downlink {
            self.downlinks
                .entry(stream_id.clone())
                .or_default()
                .push(id);
        }
        log::info!("peer {id}: conn {conn} {role:?} for stream {stream_id}");
        self.peers.insert(
            id,
            Peer {
                conn,
                stream_id,
                role,
                rtc,
                mids: Vec::new(),
                next_timeout: now,
                seq: HashMap::new(),
                last_keyframe_request: None,
                connected: false,
                meter: LinkMeter::default(),
            },
        );
        // Collect MediaAdded and the first timeout before anything arrives.
        self.drive(id, None, Instant::now());
    }

    fn remove_where(&mut self, why: Removal, pred: impl Fn(&Peer) -> bool) {
        let ids: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| pred(p))
            .map(|(id, _)| *id)
            .collect();
        ids.into_iter().for_each(|id| self.remove(id, why));
    }

    fn remove(&mut self, id: PeerId, why: Removal) {
        if let Some(mut p) = self.peers.remove(&id) {
            log::info!(
                "peer {id}: closed ({:?} of conn {}, {why:?})",
                p.role,
                p.conn
            );
            if why == Removal::Died {
                let lost = MediaLost {
                    conn: p.conn,
                    stream_id: p.stream_id.clone(),
                    role: p.role,
                };
                if self.reports.try_send(Report::Lost(lost)).is_err() {
                    log::error!("E_SFU_LOST_QUEUE: the room is not taking media-lost reports");
                }
            }
            p.rtc.disconnect();
            self.by_addr.retain(|_, v| *v != id);
            if let Some(list) = self.downlinks.get_mut(&p.stream_id) {
                list.retain(|d| *d != id);
                if list.is_empty() {
                    self.downlinks.remove(&p.stream_id);
                }
            }
        }
    }

    /// One packet from `source`, over `proto` to our `destination` address.
    fn on_packet(
        &mut self,
        data: &[u8],
        source: SocketAddr,
        (proto, destination): (Protocol, SocketAddr),
    ) {
        let arrived = Instant::now();
        let Ok(contents) = data.try_into() else {
            return;
        };
        let input = Input::Receive(
            arrived,
            Receive {
                proto,
                source,
                destination,
                contents,
            },
        );
        let id = match self.by_addr.get(&source) {
            Some(id) => Some(*id),
            None => {
                let found = self
                    .peers
                    .iter()
                    .find(|(_, p)| p.rtc.accepts(&input))
                    .map(|(id, _)| *id);
                if let Some(id) = found {
                    self.by_addr.insert(source, id);
                }
                found
            }
        };
        let Some(id) = id else {
            log::debug!("{proto:?} packet from {source} matches no peer");
            return;
        };
        if let Some(p) = self.peers.get_mut(&id) {
            p.meter.heard(arrived);
        }
        let forwarded = self.drive(id, Some(input), arrived);
        if forwarded {
            let us = arrived.elapsed().as_micros().min(u32::MAX as u128) as u32;
            if self.delays.len() < DELAY_SAMPLES {
                self.delays.push(us);
            } else {
                self.delays[self.delay_pos] = us;
                self.delay_pos = (self.delay_pos + 1) % DELAY_SAMPLES;
            }
        }
    }

    fn on_timeouts(&mut self, now: Instant) {
        self.remove_where(Removal::Died, |p| !p.rtc.is_alive());
        let due: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.next_timeout <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.drive(id, Some(Input::Timeout(now)), now);
        }
        self.earliest = self
            .peers
            .values()
            .map(|p| p.next_timeout)
            .min()
            .unwrap_or(now + Duration::from_secs(1))
            .min(self.next_grade)
            .max(now + Duration::from_micros(200));
    }

    /// Every 2 s: each client's network quality, from its connected links.
    fn grade_links(&mut self, now: Instant) {
        self.next_grade = now + network_quality::INTERVAL;
        let mut links: HashMap<ConnId, (Vec<Link>, Vec<Link>)> = HashMap::new();
        for p in self.peers.values_mut().filter(|p| p.connected) {
            let link = p.meter.take(now);
            let (up, down) = links.entry(p.conn).or_default();
            match p.role {
                Role::Uplink => up.push(link),
                Role::Downlink => down.push(link),
            }
        }
        for (conn, (up, down)) in links {
            let q = network_quality::grade_client(&up, &down);
            if self.reports.try_send(Report::Quality(conn, q)).is_err() {
                log::debug!("conn {conn}: network quality not sent, the room is behind");
            }
        }
    }

    /// Feed one input to a peer, send what it outputs, and carry its
    /// propagations to other peers. Returns whether RTP was forwarded.
    fn drive(&mut self, id: PeerId, input: Option<Input>, now: Instant) -> bool {
        let Some(peer) = self.peers.get_mut(&id) else {
            return false;
        };
        if let Some(input) = input {
            if let Err(e) = peer.rtc.handle_input(input) {
                log::warn!("peer {id}: input refused, closing: {e}");
                peer.rtc.disconnect();
            }
        }
        Self::poll(id, peer, &self.out, &mut self.work);
        self.earliest = self.earliest.min(peer.next_timeout);
        if !peer.rtc.is_alive() {
            self.remove(id, Removal::Died);
        }
        let mut forwarded = false;
        while let Some(w) = self.work.pop_front() {
            match w {
                Propagate::Rtp(from, pkt) => forwarded |= self.forward(from, pkt, now),
                Propagate::Keyframe(from, kind) => self.relay_keyframe_request(from, kind, now),
                Propagate::DownlinkConnected(from) => {
                    self.relay_keyframe_request(from, KeyframeRequestKind::Pli, now)
                }
            }
        }
        forwarded
    }

    fn poll(id: PeerId, peer: &mut Peer, out: &Out, work: &mut VecDeque<Propagate>) {
        while peer.rtc.is_alive() {
            match peer.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    peer.next_timeout = t;
                    break;
                }
                Ok(Output::Transmit(t)) => out.send(&t),
                Ok(Output::Event(e)) => match e {
                    Event::MediaAdded(m) => peer.mids.push((m.mid, m.kind)),
                    Event::RtpPacket(pkt) if peer.role == Role::Uplink => {
                        peer.meter.rtp(*pkt.header.ssrc, *pkt.seq_no);
                        work.push_back(Propagate::Rtp(id, pkt));
                    }
                    Event::KeyframeRequest(req) if peer.role == Role::Downlink => {
                        work.push_back(Propagate::Keyframe(id, req.kind));
                    }
                    Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                        log::info!("peer {id}: ICE disconnected");
                        peer.rtc.disconnect();
                    }
                    Event::PeerStats(s) => peer.meter.reported(None, s.rtt),
                    Event::MediaEgressStats(s) => peer.meter.reported(s.loss, s.rtt),
                    Event::Connected => {
                        peer.connected = true;
                        if peer.role == Role::Downlink {
                            work.push_back(Propagate::DownlinkConnected(id));
                        }
                    }
                    _ => {}
                },
                Err(e) => {
                    log::warn!("peer {id}: closing after error: {e}");
                    peer.rtc.disconnect();
                }
            }
        }
    }

    fn forward(&mut self, from: PeerId, pkt: RtpPacket, now: Instant) -> bool {
        self.stats.rtp_in += 1;
        let Some(up) = self.peers.get_mut(&from) else {
            return false;
        };
        let Some(mid) = up
            .rtc
            .direct_api()
            .stream_rx(&pkt.header.ssrc)
            .map(|s| s.mid())
        else {
            return false;
        };
        let Some(kind) = up.rtc.media(mid).map(|m| m.kind()) else {
            return false;
        };
        let Some(params) = up
            .rtc
            .codec_config()
            .find(|p| p.pt() == pkt.header.payload_type)
            .copied()
        else {
            return false;
        };
        let Some(targets) = self.downlinks.get(&up.stream_id).cloned() else {
            return false;
        };
        let mut forwarded = false;
        for d in targets {
            let Some(down) = self.peers.get_mut(&d) else {
                continue;
            };
            if !down.connected {
                continue;
            }
            let Some(dmid) = down.mid_of(kind) else {
                continue;
            };
            // Not rtc.writer(): it is frame-mode API and panics in RTP mode.
            let Some(pt) = down.rtc.codec_config().match_params(params).map(|p| p.pt()) else {
                continue;
            };
            let in_seq = *pkt.seq_no;
            let map = *down.seq.entry(kind).or_insert(SeqMap {
                first_in: in_seq,
                first_out: rand::random::<u16>() as u64 / 2,
            });
            // Packets from before the subscription started are not forwarded.
            let Some(delta) = in_seq.checked_sub(map.first_in) else {
                continue;
            };
            let seq: SeqNo = (map.first_out + delta).into();
            let write = RtpWrite::new(
                pt,
                seq,
                pkt.header.timestamp,
                pkt.timestamp,
                Arc::clone(&pkt.payload),
            )
            .marker(pkt.header.marker)
            .nackable(kind == MediaKind::Video);
            let mut api = down.rtc.direct_api();
            let Some(tx) = api.stream_tx_by_mid(dmid, None) else {
                continue;
            };
            tx.write_rtp(write);
            // Timeout drives str0m to move the queued packet out now.
            if let Err(e) = down.rtc.handle_input(Input::Timeout(now)) {
                log::warn!("peer {d}: {e}");
                down.rtc.disconnect();
            }
            Self::poll(d, down, &self.out, &mut self.work);
            self.earliest = self.earliest.min(down.next_timeout);
            self.stats.rtp_forwarded += 1;
            forwarded = true;
        }
        forwarded
    }

    /// A downlink asked for a keyframe: ask the publisher of its stream.
    fn relay_keyframe_request(&mut self, from: PeerId, kind: KeyframeRequestKind, now: Instant) {
        let Some(stream_id) = self.peers.get(&from).map(|p| p.stream_id.clone()) else {
            return;
        };
        let Some((up_id, up)) = self
            .peers
            .iter_mut()
            .find(|(_, p)| p.role == Role::Uplink && p.stream_id == stream_id)
        else {
            return;
        };
        if up
            .last_keyframe_request
            .is_some_and(|t| now.duration_since(t) < KEYFRAME_THROTTLE)
        {
            return;
        }
        let Some(mid) = up.mid_of(MediaKind::Video) else {
            return;
        };
        let up_id = *up_id;
        if let Some(rx) = up.rtc.direct_api().stream_rx_by_mid(mid, None) {
            rx.request_keyframe(kind);
            up.last_keyframe_request = Some(now);
            self.stats.keyframe_requests_relayed += 1;
            log::debug!("peer {up_id}: keyframe requested ({kind:?})");
        }
        Self::poll(up_id, up, &self.out, &mut self.work);
        self.earliest = self.earliest.min(up.next_timeout);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A forwarding thread that panics reads as stopped; one that stops
    /// turning reads as stalled; a live one as running.
    #[test]
    fn health_follows_the_thread() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let (sfu, _lost) = Sfu::start(socket, "127.0.0.1:9".parse().unwrap(), None).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(sfu.health(), Health::Running);
        // What a panic on the thread does: the guard clears `running` on unwind.
        let beat = Arc::clone(&sfu.beat);
        let panicking = std::thread::spawn(move || {
            let _running = Running(beat);
            panic!("a bug on the media thread");
        });
        assert!(panicking.join().is_err());
        assert_eq!(sfu.health(), Health::Stopped);
        let stalled = Sfu {
            beat: Arc::new(Heartbeat {
                running: AtomicBool::new(true),
                started: Instant::now() - Duration::from_secs(8),
                last_turn_ms: AtomicU64::new(0),
            }),
            ..sfu.clone()
        };
        assert!(matches!(stalled.health(), Health::Stalled(d) if d >= STALL));
    }
}
