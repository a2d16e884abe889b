//! What one forwarded copy costs with the forwarding state in cache, and
//! after something else has walked through the caches: a P-frame (4
//! datagrams of 1200 bytes) fanned out to 10 subscribers on loopback,
//! turn after turn, by the plain UDP relay (`sendto` per copy, no state per
//! subscriber) and by the SFU's send path (per copy: the downlink's str0m
//! `send_rtp_now`, which rewrites, protects and keeps the packet for
//! NACKs, then one `sendmmsg` with UDP GSO for the turn). Downlinks are
//! made as the room makes them and connected over an in-memory network
//! (`tests/common/str0m_pair.rs`); what they send goes to local sinks.
//!
//! Every other turn is "evicted": a 64 MiB write walk runs just before
//! it, as the other work on a shared server runs between a real SFU's
//! turns (a frame every 33 ms, audio every 20). Relay and SFU turns are
//! interleaved, so both see the same machine. The SFU bench's small rooms
//! pay what this shows: each turn finds every subscriber's SRTP key,
//! stream and session state gone from the caches, where the relay has no
//! such state to fetch.
//!
//! `cargo bench --bench fanout_cache` prints the table; under `cargo test`
//! (no `--bench` argument) it runs a few turns as a smoke test.

#[path = "../tests/common/mod.rs"]
mod common;

use callbox::room::udp_batch::{gso_supported, TxQueue};
use common::str0m_pair::{connected_call, Side};
use common::{percentile, walk_cache_lines};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};
use str0m::rtp::{RtpWrite, SeqNo, Ssrc};

const SUBSCRIBERS: usize = 10;
/// Datagrams in a P-frame of the SFU bench's 640x480 stream.
const PACKETS: usize = 4;
const PAYLOAD: usize = 1188;
/// Larger than the last-level cache this VM gets to use (it shares the
/// host's L3 with other tenants).
const WALK_MIB: usize = 64;

/// Loopback sockets the copies go to, drained between turns.
struct Sinks {
    sockets: Vec<UdpSocket>,
    addrs: Vec<SocketAddr>,
    buf: Vec<u8>,
}

impl Sinks {
    fn new() -> Self {
        let sockets: Vec<UdpSocket> = (0..SUBSCRIBERS)
            .map(|_| {
                let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
                s.set_nonblocking(true).expect("nonblocking");
                s
            })
            .collect();
        let addrs = sockets
            .iter()
            .map(|s| s.local_addr().expect("addr"))
            .collect();
        Sinks {
            sockets,
            addrs,
            buf: vec![0; 65536],
        }
    }

    /// Datagrams waiting, taken out.
    fn drain(&mut self) -> usize {
        let mut got = 0;
        for s in &self.sockets {
            while s.recv(&mut self.buf).is_ok() {
                got += 1;
            }
        }
        got
    }
}

/// The SFU's side: connected downlinks and the send queue of a worker.
struct Downlinks {
    peers: Vec<(Side, Ssrc)>,
    tx: TxQueue,
    socket: UdpSocket,
    now: Instant,
    seq: u64,
}

impl Downlinks {
    fn new() -> Self {
        let mut now = Instant::now();
        let peers = (0..SUBSCRIBERS)
            .map(|_| {
                let (mut room, _client) = connected_call(&mut now);
                let ssrc = room.first_tx_ssrc();
                (room, ssrc)
            })
            .collect();
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        Downlinks {
            tx: TxQueue::new(gso_supported(socket.as_fd())),
            peers,
            socket,
            now,
            seq: 0,
        }
    }

    /// One frame to every downlink, sent as the worker sends a turn.
    fn turn(&mut self, payload: &Arc<[u8]>, sinks: &Sinks) -> usize {
        self.now += Duration::from_millis(33);
        for p in 0..PACKETS {
            let seq = SeqNo::from(self.seq);
            self.seq += 1;
            for ((peer, ssrc), to) in self.peers.iter_mut().zip(&sinks.addrs) {
                let write = RtpWrite::new(108.into(), seq, 0, self.now, Arc::clone(payload))
                    .marker(p == PACKETS - 1)
                    .nackable(true);
                let buf = self.tx.buffer();
                let sent = peer
                    .rtc
                    .direct_api()
                    .send_rtp_now(*ssrc, write, self.now, buf);
                let t = sent.expect("a connected downlink sends at once");
                self.tx.push(*to, t.contents.into());
            }
        }
        self.tx.flush(self.socket.as_fd()).datagrams
    }

    /// The timer pass the worker makes between turns (RTCP and upkeep).
    fn upkeep(&mut self) {
        for (peer, _) in &mut self.peers {
            peer.tick(self.now);
            peer.outbox.clear();
        }
    }
}

/// One frame to every sink by `sendto`; datagrams sent.
fn relay_turn(socket: &UdpSocket, datagram: &[u8], sinks: &Sinks) -> usize {
    let mut sent = 0;
    for _ in 0..PACKETS {
        for to in &sinks.addrs {
            sent += usize::from(socket.send_to(datagram, to).is_ok());
        }
    }
    sent
}

/// Per-turn times of one kind, warm and evicted.
#[derive(Default)]
struct Times {
    warm: Vec<Duration>,
    evicted: Vec<Duration>,
}

impl Times {
    fn of(&mut self, evicted: bool) -> &mut Vec<Duration> {
        if evicted {
            &mut self.evicted
        } else {
            &mut self.warm
        }
    }

    /// Median microseconds per copy.
    fn per_copy(turns: &mut [Duration]) -> f64 {
        assert!(!turns.is_empty(), "no turn was measured");
        percentile(turns, 0.5).as_secs_f64() * 1e6 / (PACKETS * SUBSCRIBERS) as f64
    }
}

fn timed(f: impl FnOnce() -> usize) -> Duration {
    let start = Instant::now();
    let sent = f();
    let took = start.elapsed();
    assert_eq!(
        sent,
        PACKETS * SUBSCRIBERS,
        "a turn lost copies on loopback"
    );
    took
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let (rounds, walk_mib) = if bench { (600, WALK_MIB) } else { (20, 8) };
    let mut junk = vec![0u8; walk_mib << 20];
    let mut sinks = Sinks::new();
    let relay = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let datagram = vec![0x41u8; PAYLOAD + 12];
    let payload: Arc<[u8]> = vec![0x41u8; PAYLOAD].into();
    let mut sfu = Downlinks::new();
    let (mut r, mut s) = (Times::default(), Times::default());
    for round in 0..rounds {
        let evicted = round % 2 == 1;
        if evicted {
            walk_cache_lines(&mut junk);
        }
        r.of(evicted)
            .push(timed(|| relay_turn(&relay, &datagram, &sinks)));
        assert_eq!(
            sinks.drain(),
            PACKETS * SUBSCRIBERS,
            "the relay's copies arrive"
        );
        if evicted {
            walk_cache_lines(&mut junk);
        }
        s.of(evicted).push(timed(|| sfu.turn(&payload, &sinks)));
        assert_eq!(
            sinks.drain(),
            PACKETS * SUBSCRIBERS,
            "the SFU's copies arrive"
        );
        if round % 3 == 2 {
            sfu.upkeep();
        }
    }
    report(&mut r, &mut s, rounds / 2, walk_mib);
}

/// The table and the ratios, from `turns` turns of each kind.
fn report(r: &mut Times, s: &mut Times, turns: usize, walk_mib: usize) {
    let row = |what: &str, caches: &str, us: f64| println!("{what:<12} {caches:<18} {us:>12.3}");
    println!(
        "Fan-out cost per copy: a {PACKETS}-datagram frame to {SUBSCRIBERS} subscribers on loopback, \
         median of {} turns each",
        turns
    );
    println!("{:<12} {:<18} {:>12}", "what", "caches", "us per copy");
    let evicted = format!("after {walk_mib} MiB walk");
    let (rw, re) = (
        Times::per_copy(&mut r.warm),
        Times::per_copy(&mut r.evicted),
    );
    let (sw, se) = (
        Times::per_copy(&mut s.warm),
        Times::per_copy(&mut s.evicted),
    );
    row("udp-relay", "warm", rw);
    row("udp-relay", &evicted, re);
    row("sfu", "warm", sw);
    row("sfu", &evicted, se);
    println!(
        "evicted / warm: UDP relay {:.2}x, SFU {:.2}x",
        re / rw,
        se / sw
    );
    println!(
        "SFU / UDP relay cost per copy: warm {:.2}x, evicted {:.2}x",
        sw / rw,
        se / re
    );
}
