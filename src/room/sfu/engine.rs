//! One SFU worker: the thread that owns a share of the rooms' peers (each a
//! str0m `Rtc`, ICE-lite, RTP mode) and forwards RTP from each
//! publication's uplink to the downlinks that subscribe to it. Every peer
//! of a room lives on the room's worker, so forwarding takes no lock.
//!
//! Datagrams come from the dispatcher ([`super::dispatch`]) already sorted
//! to this worker, a batch at a time; every datagram a pass makes (the
//! forwarded copies, STUN answers, RTCP) is queued and sent in one
//! `sendmmsg`, a subscriber's packets folded into UDP GSO messages
//! ([`udp_batch::TxQueue`]). A forwarded copy is protected the moment it
//! is made (str0m's `send_rtp_now`), so no downlink is driven per packet.
//! The packets of a video frame that arrive in
//! one burst are gathered until its last one ([`Gather`]), so that a
//! subscriber's share of the frame folds into one message.

use super::gather::Gather;
use super::{
    Command, Delays, Heartbeat, MediaLost, Report, Role, RouteChange, SfuStats, WorkerStats,
};
use crate::network_quality::{self, Link, LinkMeter};
use crate::room::state::ConnId;
use crate::room::udp_batch::{self, TxQueue};
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};
use str0m::format::PayloadParams;
use str0m::media::{KeyframeRequestKind, MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite, SeqNo, Ssrc};
use str0m::{Event, IceConnectionState, Input, Output, Rtc};
use tokio::sync::mpsc;

/// Keyframe requests to one publisher are relayed at most this often.
const KEYFRAME_THROTTLE: Duration = Duration::from_millis(300);
/// Queued datagrams that make a pass send before it takes the next
/// datagram in: `sendmmsg` still carries dozens per call, and a packet's
/// copies wait behind at most one more packet's fan-out (measured: delay
/// p99 3.9 ms at 50 subscribers with 128, 1.3 to 1.8 ms with 32 or 64).
const FLUSH_AT: usize = 64;
/// Timer passes over the peers are at least this far apart: str0m's timers
/// (RTCP reports, NACK and TWCC feedback, DTLS and ICE upkeep) tolerate it,
/// and with hundreds of peers some timer is always due, so without it
/// nearly every loop turn would be a pass over all of them. Forwarding
/// itself never waits for a timer.
const TIMER_STEP: Duration = Duration::from_millis(10);
/// Forwarding delays kept for percentiles.
const DELAY_SAMPLES: usize = 1 << 16;

/// The last [`DELAY_SAMPLES`] forwarding delays, microseconds.
#[derive(Default)]
struct DelayRing {
    samples: Vec<u32>,
    next: usize,
}

impl DelayRing {
    fn record(&mut self, us: u32) {
        if self.samples.len() < DELAY_SAMPLES {
            self.samples.push(us);
        } else {
            self.samples[self.next] = us;
            self.next = (self.next + 1) % DELAY_SAMPLES;
        }
    }
}

/// What the dispatcher hands a worker.
pub(super) enum Inbound {
    Datagrams(Datagrams),
    /// A media TCP connection opened: packets to `addr` go on `conn`.
    TcpOpened(SocketAddr, mpsc::Sender<Bytes>),
    TcpClosed(SocketAddr),
}

/// Datagrams of one receive batch for one worker, in one buffer.
pub(super) struct Datagrams {
    pub data: Vec<u8>,
    pub items: Vec<Dgram>,
}

/// One datagram of a [`Datagrams`]: `data[start..end]`.
pub(super) struct Dgram {
    pub start: usize,
    pub end: usize,
    pub source: SocketAddr,
    pub proto: Protocol,
    /// Our address it was sent to.
    pub local: SocketAddr,
}

/// A room's token: its peers hold it, and the room stays on its worker
/// while any does.
#[derive(Debug)]
pub(super) struct RoomTicket;

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
    /// Our ICE ufrag: the dispatcher's route to this peer.
    ufrag: String,
    /// Keeps the room on this worker while the peer lives.
    _room: Arc<RoomTicket>,
    /// Downlinks: where each publisher payload type goes, found once.
    tx_routes: Vec<TxRoute>,
}

/// A downlink's send stream and payload type for one kind and publisher
/// payload type: the lookups a forward would otherwise repeat per packet.
#[derive(Debug, Clone, Copy)]
struct TxRoute {
    kind: MediaKind,
    pt_in: Pt,
    pt: Pt,
    ssrc: Ssrc,
}

impl Peer {
    fn mid_of(&self, kind: MediaKind) -> Option<Mid> {
        self.mids.iter().find(|(_, k)| *k == kind).map(|(m, _)| *m)
    }

    /// Where a packet of `kind` with the publisher's `params` goes on this
    /// downlink, if it negotiated a match.
    fn tx_route(&mut self, kind: MediaKind, params: PayloadParams) -> Option<TxRoute> {
        let found = self
            .tx_routes
            .iter()
            .find(|r| r.kind == kind && r.pt_in == params.pt());
        if let Some(r) = found {
            return Some(*r);
        }
        let mid = self.mid_of(kind)?;
        // Not rtc.writer(): it is frame-mode API and panics in RTP mode.
        let pt = self.rtc.codec_config().match_params(params)?.pt();
        let ssrc = self.rtc.direct_api().stream_tx_by_mid(mid, None)?.ssrc();
        let route = TxRoute {
            kind,
            pt_in: params.pt(),
            pt,
            ssrc,
        };
        self.tx_routes.push(route);
        Some(route)
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

/// Where a peer's packets leave: the UDP socket (batched), or its TCP connection.
struct Out {
    udp: std::net::UdpSocket,
    tx: TxQueue,
    tcp: HashMap<SocketAddr, mpsc::Sender<Bytes>>,
}

impl Out {
    fn send(&mut self, t: str0m::net::Transmit) {
        match t.proto {
            Protocol::Udp => self.tx.push(t.destination, t.contents.into()),
            // A full queue drops the packet like the network would.
            _ => {
                if let Some(conn) = self.tcp.get(&t.destination) {
                    let _ = conn.try_send(Bytes::from(Vec::from(t.contents)));
                }
            }
        }
    }
}

pub(super) struct Engine {
    /// This worker's place in the SFU's list.
    index: usize,
    out: Out,
    /// Our ufrags that come and go, for the dispatcher's routes.
    routes: mpsc::UnboundedSender<RouteChange>,
    reports: mpsc::Sender<Report>,
    beat: Arc<Heartbeat>,
    peers: HashMap<PeerId, Peer>,
    by_addr: HashMap<SocketAddr, PeerId>,
    /// stream id -> downlink peers; shared so a forward takes no copy of the list.
    downlinks: HashMap<String, Arc<Vec<PeerId>>>,
    next_id: PeerId,
    earliest: Instant,
    last_timer_pass: Instant,
    /// When clients are next told their network quality.
    next_grade: Instant,
    stats: SfuStats,
    /// Forwarding delays of every datagram, and of those that ended a
    /// video frame (what a viewer waits for: the frame decodes on its last).
    delays: DelayRing,
    frame_delays: DelayRing,
    /// When each datagram this pass forwarded was taken up, and whether it
    /// ended a video frame, until the flush.
    unflushed: Vec<(Instant, bool)>,
    /// Propagations waiting to be carried out.
    work: VecDeque<Propagate>,
    /// Whether a video frame's packets are being gathered before they leave.
    gather: Gather,
}

impl Engine {
    pub(super) fn new(
        index: usize,
        udp: std::net::UdpSocket,
        routes: mpsc::UnboundedSender<RouteChange>,
        reports: mpsc::Sender<Report>,
        beat: Arc<Heartbeat>,
    ) -> Self {
        let gso = udp_batch::gso_supported(udp.as_fd());
        Engine {
            index,
            out: Out {
                udp,
                tx: TxQueue::new(gso),
                tcp: HashMap::new(),
            },
            routes,
            reports,
            beat,
            peers: HashMap::new(),
            by_addr: HashMap::new(),
            downlinks: HashMap::new(),
            next_id: 1,
            earliest: Instant::now() + Duration::from_secs(1),
            last_timer_pass: Instant::now(),
            next_grade: Instant::now() + network_quality::INTERVAL,
            stats: SfuStats::default(),
            delays: DelayRing::default(),
            frame_delays: DelayRing::default(),
            unflushed: Vec::new(),
            work: VecDeque::new(),
            gather: Gather::default(),
        }
    }

    pub(super) async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut inbound: mpsc::Receiver<Inbound>,
    ) {
        loop {
            self.beat.beat();
            let mut wake = self.earliest.max(self.last_timer_pass + TIMER_STEP);
            if let Some(held) = self.gather.deadline() {
                wake = wake.min(held);
            }
            let sleep = tokio::time::sleep_until(wake.into());
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(Command::Stop) | None => break,
                    Some(cmd) => self.on_command(cmd),
                },
                batch = inbound.recv() => match batch {
                    Some(batch) => self.on_inbound(batch),
                    None => break,
                },
                _ = sleep => {}
            }
            // What came in leaves before any timer pass.
            let now = Instant::now();
            self.flush_unless_holding(now);
            if now >= self.earliest && now >= self.last_timer_pass + TIMER_STEP {
                self.last_timer_pass = now;
                self.on_timeouts(now);
            }
            if now >= self.next_grade {
                self.grade_links(now);
            }
            self.flush_unless_holding(now);
        }
        log::info!("SFU worker stopped");
    }

    fn on_inbound(&mut self, inbound: Inbound) {
        match inbound {
            Inbound::Datagrams(batch) => {
                for d in &batch.items {
                    let data = &batch.data[d.start..d.end];
                    let now = Instant::now();
                    self.on_packet(data, d.source, (d.proto, d.local), now);
                    if self.queued() >= FLUSH_AT {
                        self.flush_unless_holding(now);
                    }
                }
            }
            Inbound::TcpOpened(addr, conn) => {
                self.out.tcp.insert(addr, conn);
            }
            Inbound::TcpClosed(addr) => {
                self.out.tcp.remove(&addr);
            }
        }
    }

    /// Datagrams queued to send.
    fn queued(&self) -> usize {
        self.out.tx.len()
    }

    /// Send what is queued, unless a video frame is being gathered and
    /// may still wait.
    fn flush_unless_holding(&mut self, now: Instant) {
        if !self.gather.holding(now, self.queued()) {
            self.flush();
        }
    }

    /// Send what this pass queued, and note how long forwarding took.
    fn flush(&mut self) {
        self.gather.sent();
        if self.out.tx.is_empty() {
            return;
        }
        let sent = self.out.tx.flush(self.out.udp.as_fd());
        self.stats.datagrams_sent += sent.datagrams as u64;
        self.stats.datagrams_send_dropped += sent.dropped as u64;
        self.stats.send_calls += sent.calls as u64;
        self.stats.send_messages += sent.messages as u64;
        let now = Instant::now();
        for (arrived, frame_end) in std::mem::take(&mut self.unflushed) {
            let us = now
                .duration_since(arrived)
                .as_micros()
                .min(u32::MAX as u128) as u32;
            self.delays.record(us);
            if frame_end {
                self.frame_delays.record(us);
            }
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Insert {
                conn,
                stream_id,
                role,
                rtc,
                answer,
                room,
                reply,
            } => {
                self.insert(conn, stream_id, role, *rtc, room);
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
            // The loop ends on it before it gets here.
            Command::Stop => {}
            #[cfg(test)]
            Command::Panic => panic!("a bug on an SFU worker"),
        }
    }

    /// This worker's counters, its peers, and its forwarding delays.
    fn snapshot(&self) -> (SfuStats, WorkerStats, Delays) {
        let peers = self.peers.len();
        let uplinks = self
            .peers
            .values()
            .filter(|p| p.role == Role::Uplink)
            .count();
        let worker = WorkerStats {
            peers,
            uplinks,
            downlinks: peers - uplinks,
            rtp_forwarded: self.stats.rtp_forwarded,
        };
        let delays = Delays {
            all: self.delays.samples.clone(),
            frame_end: self.frame_delays.samples.clone(),
        };
        (self.stats.clone(), worker, delays)
    }

    fn insert(
        &mut self,
        conn: ConnId,
        stream_id: String,
        role: Role,
        mut rtc: Rtc,
        room: Arc<RoomTicket>,
    ) {
        let now = Instant::now();
        let ufrag = rtc.direct_api().local_ice_credentials().ufrag;
        // Before the answer leaves: the client's first STUN needs the route.
        let _ = self
            .routes
            .send(RouteChange::Add(ufrag.clone(), self.index));
        let id = self.next_id;
        self.next_id += 1;
        if role == Role::Downlink {
            Arc::make_mut(self.downlinks.entry(stream_id.clone()).or_default()).push(id);
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
                ufrag,
                _room: room,
                tx_routes: Vec::new(),
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
            let _ = self.routes.send(RouteChange::Remove(p.ufrag));
            self.by_addr.retain(|_, v| *v != id);
            if let Some(list) = self.downlinks.get_mut(&p.stream_id) {
                Arc::make_mut(list).retain(|d| *d != id);
                if list.is_empty() {
                    self.downlinks.remove(&p.stream_id);
                }
            }
        }
    }

    /// One datagram from `source`, over `proto` to our `destination`
    /// address, taken up `now`: forwarding delay counts from here to the
    /// send, as the UDP relay baseline counts from its `recv`.
    fn on_packet(
        &mut self,
        data: &[u8],
        source: SocketAddr,
        (proto, destination): (Protocol, SocketAddr),
        now: Instant,
    ) {
        let Ok(contents) = data.try_into() else {
            return;
        };
        let input = Input::Receive(
            now,
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
            p.meter.heard(now);
        }
        if self.drive(id, Some(input), now) {
            self.unflushed.push((now, self.gather.ended_frame()));
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
            .min(self.next_grade);
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
        self.poll_peer(id);
        self.carry_out_work(now)
    }

    /// Send what a peer outputs and queue its propagations; a peer that
    /// died on its own goes (and the room hears of it).
    fn poll_peer(&mut self, id: PeerId) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        Self::poll(id, peer, &mut self.out, &mut self.work);
        self.earliest = self.earliest.min(peer.next_timeout);
        if !peer.rtc.is_alive() {
            self.remove(id, Removal::Died);
        }
    }

    /// Carry the queued propagations to the other peers; whether RTP was
    /// forwarded.
    fn carry_out_work(&mut self, now: Instant) -> bool {
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

    fn poll(id: PeerId, peer: &mut Peer, out: &mut Out, work: &mut VecDeque<Propagate>) {
        while peer.rtc.is_alive() {
            match peer.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    peer.next_timeout = t;
                    break;
                }
                Ok(Output::Transmit(t)) => out.send(t),
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
        let Some(targets) = self.downlinks.get(&up.stream_id).map(Arc::clone) else {
            return false;
        };
        // The publisher's end-to-end wishes travel on; the per-hop
        // extensions (send time, transport-cc) are each downlink's own.
        let ext_vals = ExtensionValues {
            play_delay_min: pkt.header.ext_vals.play_delay_min,
            play_delay_max: pkt.header.ext_vals.play_delay_max,
            ..Default::default()
        };
        let mut forwarded = false;
        for &d in targets.iter() {
            let Some(down) = self.peers.get_mut(&d) else {
                continue;
            };
            if !down.connected {
                continue;
            }
            let Some(route) = down.tx_route(kind, params) else {
                continue;
            };
            let in_seq = *pkt.seq_no;
            let map = *down.seq.entry(kind).or_insert_with(|| SeqMap {
                first_in: in_seq,
                first_out: rand::random::<u16>() as u64 / 2,
            });
            // Packets from before the subscription started are not forwarded.
            let Some(delta) = in_seq.checked_sub(map.first_in) else {
                continue;
            };
            let seq: SeqNo = (map.first_out + delta).into();
            let write = RtpWrite::new(
                route.pt,
                seq,
                pkt.header.timestamp,
                pkt.timestamp,
                Arc::clone(&pkt.payload),
            )
            .marker(pkt.header.marker)
            .ext_vals(ext_vals.clone())
            .nackable(kind == MediaKind::Video);
            // Protected and queued at once: no timeout and poll of the
            // whole downlink per packet. Sending starts no str0m timer
            // (sender reports are timed from the last report), so the
            // downlink's next timeout stands.
            let buf = self.out.tx.buffer();
            let sent = down
                .rtc
                .direct_api()
                .send_rtp_now(route.ssrc, write, now, buf);
            let Some(t) = sent else {
                // Not up yet (dropped), or queued behind packets written
                // earlier: a timer pass on this downlink sends those.
                down.next_timeout = now;
                self.earliest = now;
                continue;
            };
            self.out.send(t);
            self.stats.rtp_forwarded += 1;
            forwarded = true;
        }
        if forwarded {
            let video = kind == MediaKind::Video;
            self.gather.forwarded(video, pkt.header.marker, now);
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
        Self::poll(up_id, up, &mut self.out, &mut self.work);
        self.earliest = self.earliest.min(up.next_timeout);
    }
}
