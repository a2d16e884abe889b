//! The SFU: one UDP port for all media of all clients (and, with
//! `media.tcp_listen`, ICE-TCP connections from [`crate::room::media_tcp`]),
//! rooms spread over worker threads, each the one owner of its rooms'
//! peers (a str0m `Rtc` each, ICE-lite, RTP mode), forwarding RTP from
//! each publication's uplink to the downlinks that subscribe to it.
//!
//! Each client has an uplink PeerConnection for its publication and one
//! downlink PeerConnection per subscribed stream (the TRTC v4 topology). That
//! keeps every negotiation a single offer/answer, with no renegotiation when
//! others come and go, and lets a subscriber drop one stream by closing one
//! connection.
//!
//! Data flow: the dispatcher (`dispatch`; its own thread, or beside the
//! worker when there is only one) reads the port in batches and hands each
//! datagram to its peer's worker (`demux`: STUN by our ICE ufrag, the rest
//! by the address STUN taught); the worker (`engine`) feeds its peers,
//! forwards, and sends what the pass made in one batch
//! ([`crate::room::udp_batch`]), a video frame's packets gathered so that
//! each subscriber's share of it is one UDP GSO message (`gather`). A room
//! goes to the worker with the fewest live rooms when its first peer opens,
//! and stays there while any of its peers lives, so forwarding never crosses
//! threads or takes a lock.
//!
//! Forwarding is at the RTP level: payloads are shared (`Arc<[u8]>`) between
//! all downlinks, never copied or re-packetized; sequence numbers are rebased
//! per downlink so SRTP's rollover counter starts at 0 for a late subscriber.
//! Each copy is protected and queued at once (`send_rtp_now`, the one
//! addition in `vendor/str0m`), not written to str0m's pacer and then
//! drawn out by a timeout and a poll of the whole downlink. str0m still
//! keeps what was sent: it answers NACKs from its send buffer, counts it in
//! sender reports, sends NACKs and TWCC feedback to
//! publishers, and keyframe requests (PLI/FIR) are relayed to the publisher.
//!
//! SDP work (a DTLS certificate per peer, parsing and answering the offer)
//! runs on tokio's blocking pool, so a burst of joins does not stall
//! forwarding; a worker only takes in the prepared peer. A peer that dies on
//! its own (ICE gone, DTLS or input errors) is reported as a [`MediaLost`]
//! so the room can tell the others; every 2 s each client's links are graded
//! ([`crate::network_quality`]) and reported too, on the same channel
//! ([`Report`]). Every thread's heartbeat feeds [`Sfu::health`]: one that
//! panics or stops turning makes the whole SFU unhealthy, and the server
//! stops so systemd restarts it, rather than serve half its rooms. When the
//! service stops, [`Sfu::stop`] ends the workers, and the dispatcher with
//! the last of them.

mod demux;
mod dispatch;
mod engine;
mod gather;

use crate::network_quality::{self, NetworkQuality};
use crate::room::media_tcp::{self, TcpEvent};
use crate::room::state::{ConnId, RoomKey};
use engine::{Engine, RoomTicket};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use str0m::change::SdpOffer;
use str0m::rtp::{Extension, ExtensionMap};
use str0m::{Candidate, Rtc};
use tokio::sync::{mpsc, oneshot};

/// Media TCP events (connections, packets) waiting for the dispatcher.
const TCP_EVENTS: usize = 1024;
/// Receive batches waiting for one worker; past this it is behind and
/// datagrams are dropped, as at a full socket buffer.
const WORKER_QUEUE: usize = 1024;

/// The next media TCP event, or never without media TCP.
async fn next_tcp(rx: &mut Option<mpsc::Receiver<TcpEvent>>) -> Option<TcpEvent> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

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

/// Whether every SFU thread lives and moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Running,
    /// A thread ended (a panic, or the socket failed).
    Stopped,
    /// A thread made no loop turn for this long (each turns at least once a second).
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
    /// Time from a worker taking a datagram up to the last of its forwarded
    /// copies being handed to the kernel, microseconds.
    pub forward_delay_us_p50: u32,
    pub forward_delay_us_p99: u32,
    pub forward_delay_samples: usize,
    /// The same for datagrams that end a video frame: the part of a
    /// frame's latency the SFU adds, as a viewer's decoder waits for the
    /// frame's last packet (the first ones may wait for it here instead).
    pub frame_delay_us_p50: u32,
    pub frame_delay_us_p99: u32,
    /// Datagrams read from the media port.
    pub datagrams_in: u64,
    /// Datagrams over the largest size taken in, dropped.
    pub datagrams_oversized: u64,
    /// Datagrams from no known peer, dropped.
    pub datagrams_unroutable: u64,
    /// Datagrams dropped because their worker was behind.
    pub datagrams_worker_busy: u64,
    /// Datagrams sent, those a full socket buffer dropped, the `sendmmsg`
    /// calls that sent them and the messages (GSO folds a subscriber's
    /// run of datagrams into one).
    pub datagrams_sent: u64,
    pub datagrams_send_dropped: u64,
    pub send_calls: u64,
    pub send_messages: u64,
    /// Each worker's share.
    pub workers: Vec<WorkerStats>,
}

/// A worker's forwarding delays, microseconds: of every datagram, and of
/// those that ended a video frame.
#[derive(Debug, Default)]
struct Delays {
    all: Vec<u32>,
    frame_end: Vec<u32>,
}

/// The `qs` quantiles of `v` (sorting it); 0 when empty.
fn percentiles<const N: usize>(v: &mut [u32], qs: [f64; N]) -> [u32; N] {
    v.sort_unstable();
    qs.map(|q| {
        v.get(((v.len().max(1) - 1) as f64 * q).round() as usize)
            .copied()
            .unwrap_or(0)
    })
}

/// One worker's peers and forwarding.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct WorkerStats {
    pub peers: usize,
    pub uplinks: usize,
    pub downlinks: usize,
    pub rtp_forwarded: u64,
}

enum Command {
    /// A peer prepared off the thread, with its answer.
    Insert {
        conn: ConnId,
        stream_id: String,
        role: Role,
        rtc: Box<Rtc>,
        answer: String,
        room: Arc<RoomTicket>,
        reply: oneshot::Sender<String>,
    },
    CloseConn(ConnId),
    EndPublication(String),
    EndSubscription {
        conn: ConnId,
        stream_id: String,
    },
    Stats(oneshot::Sender<(SfuStats, WorkerStats, Delays)>),
    /// End the worker's loop; its peers go without a word.
    Stop,
    /// What a bug on a worker does, for the test that it takes the SFU down.
    #[cfg(test)]
    Panic,
}

/// A worker's peers come and go: the dispatcher's routes follow.
enum RouteChange {
    /// Our ICE ufrag of a new peer, and its worker.
    Add(String, usize),
    Remove(String),
}

/// Handle to the SFU's threads; cheap to clone. They end when every
/// handle is dropped.
#[derive(Clone)]
pub struct Sfu {
    workers: Arc<[Worker]>,
    rooms: Arc<Mutex<RoomTable>>,
    counters: Arc<dispatch::Counters>,
    dispatcher: Arc<Heartbeat>,
    local_addr: SocketAddr,
    advertise: SocketAddr,
    /// The ICE-TCP passive candidate's address, when media TCP is on.
    tcp_advertise: Option<SocketAddr>,
}

struct Worker {
    commands: mpsc::UnboundedSender<Command>,
    beat: Arc<Heartbeat>,
}

/// Which worker each room with live peers is on.
#[derive(Default)]
struct RoomTable(HashMap<RoomKey, (usize, Weak<RoomTicket>)>);

impl RoomTable {
    /// The room's worker and ticket: where it is, else the worker with the
    /// fewest live rooms.
    fn assign(&mut self, room: &RoomKey, workers: usize) -> (usize, Arc<RoomTicket>) {
        if let Some((w, t)) = self.0.get(room) {
            if let Some(ticket) = t.upgrade() {
                return (*w, ticket);
            }
        }
        self.0.retain(|_, (_, t)| t.strong_count() > 0);
        let mut load = vec![0usize; workers];
        for (w, _) in self.0.values() {
            load[*w] += 1;
        }
        let w = (0..workers).min_by_key(|w| load[*w]).unwrap_or(0);
        let ticket = Arc::new(RoomTicket);
        self.0.insert(room.clone(), (w, Arc::downgrade(&ticket)));
        (w, ticket)
    }
}

/// Media over TCP (ICE-TCP): the listener and the address clients are told.
pub struct MediaTcp {
    pub listener: std::net::TcpListener,
    pub advertise: SocketAddr,
}

/// A thread's loop count and when it last moved; `running` clears when
/// the thread ends, panic included.
#[derive(Debug)]
struct Heartbeat {
    running: AtomicBool,
    started: Instant,
    last_turn_ms: AtomicU64,
}

impl Heartbeat {
    fn new() -> Arc<Heartbeat> {
        Arc::new(Heartbeat {
            running: AtomicBool::new(true),
            started: Instant::now(),
            last_turn_ms: AtomicU64::new(0),
        })
    }

    fn beat(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_turn_ms.store(ms, Ordering::Relaxed);
    }

    fn health(&self) -> Health {
        if !self.running.load(Ordering::Relaxed) {
            return Health::Stopped;
        }
        let last = Duration::from_millis(self.last_turn_ms.load(Ordering::Relaxed));
        let since = self.started.elapsed().saturating_sub(last);
        if since > STALL {
            Health::Stalled(since)
        } else {
            Health::Running
        }
    }
}

/// Clears `running` however the thread ends.
struct Running(Arc<Heartbeat>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::Relaxed);
    }
}

/// What a thread runs: builds its future on the thread.
type Body = Box<dyn FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> + Send>;

/// Run `body` on a new thread named `name`, on its own single-threaded runtime.
fn spawn_thread(name: String, body: Body) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name(name)
        .spawn(move || rt.block_on(body()))?;
    Ok(())
}

impl Sfu {
    /// Start the SFU on `socket` with `workers` forwarding threads (at
    /// least one), telling clients to send media to `advertise`. Peers it
    /// drops on its own, and each client's network quality, are reported
    /// on the receiver.
    pub fn start(
        socket: std::net::UdpSocket,
        advertise: SocketAddr,
        tcp: Option<MediaTcp>,
        workers: usize,
    ) -> std::io::Result<(Sfu, mpsc::Receiver<Report>)> {
        socket.set_nonblocking(true)?;
        let (rcv, snd) = crate::room::udp_batch::grow_buffers(&socket);
        if rcv < crate::room::udp_batch::SOCKET_BUFFER {
            log::warn!(
                "media socket buffers are {} KiB in, {} KiB out: a burst may be dropped; \
                 raise net.core.rmem_max and wmem_max (or give CAP_NET_ADMIN)",
                rcv / 1024,
                snd / 1024
            );
        }
        let tcp_advertise = tcp.as_ref().map(|t| t.advertise);
        let tcp_listener = match tcp {
            Some(t) => {
                t.listener.set_nonblocking(true)?;
                Some(t.listener)
            }
            None => None,
        };
        let local_addr = socket.local_addr()?;
        let (report_tx, report_rx) = mpsc::channel(REPORT_QUEUE);
        let (routes_tx, routes_rx) = mpsc::unbounded_channel();
        let mut handles = Vec::new();
        let mut inboxes = Vec::new();
        let mut bodies: Vec<Body> = Vec::new();
        for index in 0..workers.max(1) {
            let (commands, commands_rx) = mpsc::unbounded_channel();
            let (inbox, inbox_rx) = mpsc::channel(WORKER_QUEUE);
            let beat = Heartbeat::new();
            let engine = Engine::new(
                index,
                socket.try_clone()?,
                routes_tx.clone(),
                report_tx.clone(),
                Arc::clone(&beat),
            );
            let running = Running(Arc::clone(&beat));
            bodies.push(Box::new(move || {
                Box::pin(async move {
                    let _running = running;
                    engine.run(commands_rx, inbox_rx).await
                })
            }));
            handles.push(Worker { commands, beat });
            inboxes.push(inbox);
        }
        let counters = Arc::new(dispatch::Counters::default());
        let dispatcher_beat = Heartbeat::new();
        let dispatcher = dispatch::Dispatcher::new(
            inboxes,
            routes_rx,
            (Arc::clone(&counters), Arc::clone(&dispatcher_beat)),
            (advertise, tcp_advertise),
        );
        let running = Running(Arc::clone(&dispatcher_beat));
        let dispatch: Body = Box::new(move || {
            Box::pin(async move {
                let _running = running;
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
                dispatcher.run(socket, tcp_events).await
            })
        });
        if bodies.len() == 1 {
            // One worker: the dispatcher runs beside it, on its thread, and
            // hands it datagrams without waking another thread.
            let worker = bodies.remove(0);
            let both: Body = Box::new(move || {
                Box::pin(async move {
                    futures_util::future::join(worker(), dispatch()).await;
                })
            });
            spawn_thread("callbox-sfu-0".into(), both)?;
        } else {
            for (index, body) in bodies.into_iter().enumerate() {
                spawn_thread(format!("callbox-sfu-{index}"), body)?;
            }
            spawn_thread("callbox-sfu-rx".into(), dispatch)?;
        }
        let sfu = Sfu {
            workers: handles.into(),
            rooms: Arc::default(),
            counters,
            dispatcher: dispatcher_beat,
            local_addr,
            advertise,
            tcp_advertise,
        };
        Ok((sfu, report_rx))
    }

    /// Whether every thread is alive and has turned recently: the worst of them.
    pub fn health(&self) -> Health {
        let beats = std::iter::once(&self.dispatcher).chain(self.workers.iter().map(|w| &w.beat));
        let mut worst = Health::Running;
        for beat in beats {
            match beat.health() {
                Health::Stopped => return Health::Stopped,
                Health::Stalled(d) if !matches!(worst, Health::Stalled(w) if w >= d) => {
                    worst = Health::Stalled(d)
                }
                _ => {}
            }
        }
        worst
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Answer a client's offer for an uplink (publication `stream_id`) or a
    /// downlink (subscription to `stream_id`) in `room`.
    pub async fn open(
        &self,
        conn: ConnId,
        room: &RoomKey,
        stream_id: &str,
        role: Role,
        offer: String,
    ) -> Result<String, SfuError> {
        let (worker, ticket) = self
            .rooms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .assign(room, self.workers.len());
        let (advertise, tcp) = (self.advertise, self.tcp_advertise);
        let (rtc, answer) =
            tokio::task::spawn_blocking(move || prepare(&offer, advertise, tcp, role))
                .await
                .map_err(|_| SfuError::Stopped)??;
        let (reply, rx) = oneshot::channel();
        self.workers[worker]
            .commands
            .send(Command::Insert {
                conn,
                stream_id: stream_id.to_owned(),
                role,
                rtc: Box::new(rtc),
                answer,
                room: ticket,
                reply,
            })
            .map_err(|_| SfuError::Stopped)?;
        rx.await.map_err(|_| SfuError::Stopped)
    }

    /// Tell every worker: the peers in question are on one of them.
    fn broadcast(&self, command: impl Fn() -> Command) {
        for w in self.workers.iter() {
            let _ = w.commands.send(command());
        }
    }

    pub fn close_conn(&self, conn: ConnId) {
        self.broadcast(|| Command::CloseConn(conn));
    }

    pub fn end_publication(&self, stream_id: String) {
        self.broadcast(|| Command::EndPublication(stream_id.clone()));
    }

    pub fn end_subscription(&self, conn: ConnId, stream_id: String) {
        self.broadcast(|| Command::EndSubscription {
            conn,
            stream_id: stream_id.clone(),
        });
    }

    /// Every worker's counters summed, delay percentiles over all of them.
    pub async fn stats(&self) -> Option<SfuStats> {
        let mut total = SfuStats::default();
        let mut delays = Delays::default();
        for w in self.workers.iter() {
            let (tx, rx) = oneshot::channel();
            w.commands.send(Command::Stats(tx)).ok()?;
            let (s, worker, d) = rx.await.ok()?;
            total.peers += worker.peers;
            total.uplinks += worker.uplinks;
            total.downlinks += worker.downlinks;
            total.rtp_in += s.rtp_in;
            total.rtp_forwarded += s.rtp_forwarded;
            total.keyframe_requests_relayed += s.keyframe_requests_relayed;
            total.datagrams_sent += s.datagrams_sent;
            total.datagrams_send_dropped += s.datagrams_send_dropped;
            total.send_calls += s.send_calls;
            total.send_messages += s.send_messages;
            total.workers.push(worker);
            delays.all.extend(d.all);
            delays.frame_end.extend(d.frame_end);
        }
        let c = &self.counters;
        total.datagrams_in = c.datagrams_in.load(Ordering::Relaxed);
        total.datagrams_oversized = c.oversized.load(Ordering::Relaxed);
        total.datagrams_unroutable = c.unroutable.load(Ordering::Relaxed);
        total.datagrams_worker_busy = c.worker_busy.load(Ordering::Relaxed);
        let [p50, p99] = percentiles(&mut delays.all, [0.50, 0.99]);
        (total.forward_delay_us_p50, total.forward_delay_us_p99) = (p50, p99);
        total.forward_delay_samples = delays.all.len();
        let [p50, p99] = percentiles(&mut delays.frame_end, [0.50, 0.99]);
        (total.frame_delay_us_p50, total.frame_delay_us_p99) = (p50, p99);
        Some(total)
    }

    /// Stop every thread. The hub, the report relay and the workers hold
    /// one another's channels, so the threads would outlive the service:
    /// a worker ends at once, and the dispatcher when no worker is left.
    pub fn stop(&self) {
        self.broadcast(|| Command::Stop);
    }

    /// Make worker `worker` panic, as a bug would.
    #[cfg(test)]
    fn inject_panic(&self, worker: usize) {
        let _ = self.workers[worker].commands.send(Command::Panic);
    }
}

/// A thread turns at least once a second; this long without a turn is a stall.
const STALL: Duration = Duration::from_secs(5);

/// The RTP header extensions the room negotiates: Chrome's standard set,
/// and playout-delay, passed through from publishers that send it (a device
/// asking viewers to show its frames at once; Chrome offers it). Downlinks
/// leave out transport-cc: the room estimates no subscriber's bandwidth, so
/// their feedback would only be decrypted and dropped, and each packet out
/// would carry and register a sequence number for it.
fn extensions(role: Role) -> ExtensionMap {
    let mut exts = ExtensionMap::empty();
    for (id, ext) in ExtensionMap::standard().iter() {
        if !(role == Role::Downlink && *ext == Extension::TransportSequenceNumber) {
            exts.set(id, ext.clone());
        }
    }
    exts.set(12, Extension::PlayoutDelay);
    exts
}

/// A str0m peer for `offer` and its answer: the SDP work, off the thread.
/// Public so that the send path's tests and bench make their peers exactly
/// as the room does.
pub fn prepare(
    offer: &str,
    advertise: SocketAddr,
    tcp: Option<SocketAddr>,
    role: Role,
) -> Result<(Rtc, String), SfuError> {
    let offer = SdpOffer::from_sdp_string(offer).map_err(|e| SfuError::BadSdp(e.to_string()))?;
    let mut cfg = Rtc::builder()
        .set_ice_lite(true)
        .set_rtp_mode(true)
        .clear_codecs()
        .enable_opus(true, false)
        .set_extension_map(extensions(role))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `cond` holds within 5 s.
    fn eventually(cond: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        cond()
    }

    fn wait_for(sfu: &Sfu, want: Health) -> Health {
        eventually(|| sfu.health() == want);
        sfu.health()
    }

    /// Publishers keep transport-cc (their congestion control runs on the
    /// room's feedback); subscribers are not asked for feedback the room
    /// would drop. Both pass playout-delay on.
    #[test]
    fn transport_cc_only_on_uplinks() {
        let has = |role, ext| extensions(role).iter().any(|(_, e)| *e == ext);
        assert!(has(Role::Uplink, Extension::TransportSequenceNumber));
        assert!(!has(Role::Downlink, Extension::TransportSequenceNumber));
        for role in [Role::Uplink, Role::Downlink] {
            assert!(has(role, Extension::PlayoutDelay));
            assert!(has(role, Extension::AbsoluteSendTime));
        }
    }

    /// A panic on one worker stops the whole SFU (the server then stops for
    /// systemd), though the other worker still runs; a thread that stops
    /// turning reads as stalled.
    #[test]
    fn one_worker_down_is_the_sfu_down() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let (sfu, _lost) = Sfu::start(socket, "127.0.0.1:9".parse().unwrap(), None, 2).unwrap();
        assert_eq!(sfu.workers(), 2);
        assert_eq!(wait_for(&sfu, Health::Running), Health::Running);
        sfu.inject_panic(1);
        assert_eq!(wait_for(&sfu, Health::Stopped), Health::Stopped);
        assert_eq!(sfu.workers[0].beat.health(), Health::Running);
        // With one worker the dispatcher shares its thread, and goes with it.
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let (one, _lost) = Sfu::start(socket, "127.0.0.1:9".parse().unwrap(), None, 1).unwrap();
        assert_eq!(wait_for(&one, Health::Running), Health::Running);
        one.inject_panic(0);
        assert_eq!(wait_for(&one, Health::Stopped), Health::Stopped);
        assert_eq!(one.dispatcher.health(), Health::Stopped);
        let stalled = Heartbeat {
            running: AtomicBool::new(true),
            started: Instant::now() - Duration::from_secs(8),
            last_turn_ms: AtomicU64::new(0),
        };
        assert!(matches!(stalled.health(), Health::Stalled(d) if d >= STALL));
    }

    /// Stopping ends every thread: each worker at once, the dispatcher
    /// when no worker is left, and with them the reports.
    #[test]
    fn stop_ends_every_thread() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        for workers in [1, 2] {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let (sfu, mut reports) =
                Sfu::start(socket, "127.0.0.1:9".parse().unwrap(), None, workers).unwrap();
            assert_eq!(wait_for(&sfu, Health::Running), Health::Running);
            sfu.stop();
            let beats =
                || std::iter::once(&sfu.dispatcher).chain(sfu.workers.iter().map(|w| &w.beat));
            assert!(
                eventually(|| beats().all(|b| b.health() == Health::Stopped)),
                "{workers} worker(s)"
            );
            let closed = rt.block_on(tokio::time::timeout(Duration::from_secs(5), reports.recv()));
            assert!(
                matches!(closed, Ok(None)),
                "the reports end with the workers"
            );
        }
    }

    fn key(room: u32) -> RoomKey {
        RoomKey {
            sdk_app_id: 1,
            room: crate::protocol::RoomId::Num(room),
        }
    }

    /// A room stays on its worker while it has peers; new rooms go to the
    /// worker with the fewest; an emptied room may move.
    #[test]
    fn rooms_are_spread_and_stay_put() {
        let mut t = RoomTable::default();
        let (a, ta) = t.assign(&key(1), 2);
        let (b, tb) = t.assign(&key(2), 2);
        assert_ne!(a, b);
        let (a2, _ta2) = t.assign(&key(1), 2);
        assert_eq!(a, a2);
        drop(ta);
        drop(_ta2);
        drop(tb);
        let (c, _tc) = t.assign(&key(3), 2);
        let (d, _td) = t.assign(&key(4), 2);
        assert_ne!(c, d, "dead rooms no longer count as load");
        assert_eq!(t.0.len(), 2);
    }
}
