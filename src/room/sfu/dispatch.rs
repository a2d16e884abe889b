//! The dispatcher: the one task that reads the media port (UDP by
//! `recvmmsg`, and media TCP's packets) and hands each datagram to the
//! worker that owns its peer ([`Demux`]), one batch per worker per read.
//! A worker that falls behind loses datagrams at its queue, as it would at
//! a full socket buffer, and they are counted.

use super::demux::Demux;
use super::engine::{Datagrams, Dgram, Inbound};
use super::{Heartbeat, RouteChange, MAX_DATAGRAM};
use crate::room::media_tcp::TcpEvent;
use crate::room::udp_batch::{RecvBatch, RECV_BATCH};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use str0m::net::Protocol;
use tokio::io::unix::{AsyncFd, AsyncFdReadyGuard};
use tokio::io::Interest;
use tokio::sync::mpsc;

/// What the dispatcher counts, read by the SFU's stats.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub datagrams_in: AtomicU64,
    pub oversized: AtomicU64,
    /// From an address no peer was heard from, and not our STUN.
    pub unroutable: AtomicU64,
    /// A worker's queue was full.
    pub worker_busy: AtomicU64,
}

pub(super) struct Dispatcher {
    workers: Vec<mpsc::Sender<Inbound>>,
    routes: mpsc::UnboundedReceiver<RouteChange>,
    demux: Demux,
    counters: Arc<Counters>,
    beat: Arc<Heartbeat>,
    /// Our UDP and media TCP addresses, as str0m must be told.
    udp_local: SocketAddr,
    tcp_local: Option<SocketAddr>,
    /// Batches being filled for each worker in this read.
    pending: Vec<Option<Datagrams>>,
}

impl Dispatcher {
    /// A dispatcher to `workers`, told of routes on `routes`, counting in
    /// `counters`; `(udp_local, tcp_local)` are our media addresses.
    pub fn new(
        workers: Vec<mpsc::Sender<Inbound>>,
        routes: mpsc::UnboundedReceiver<RouteChange>,
        (counters, beat): (Arc<Counters>, Arc<Heartbeat>),
        (udp_local, tcp_local): (SocketAddr, Option<SocketAddr>),
    ) -> Self {
        Dispatcher {
            pending: workers.iter().map(|_| None).collect(),
            workers,
            routes,
            demux: Demux::default(),
            counters,
            beat,
            udp_local,
            tcp_local,
        }
    }

    /// Serve `socket` (non-blocking), registered for readability only: the
    /// workers send on the same socket, and a registration for writability
    /// too would wake the dispatcher (and preempt a worker) each time the
    /// kernel frees send buffer space, thousands of times a second.
    pub async fn run(
        mut self,
        socket: std::net::UdpSocket,
        mut tcp: Option<mpsc::Receiver<TcpEvent>>,
    ) {
        // SAFETY: the AsyncFd owns the socket, whose fd stays open and the
        // same until the AsyncFd is dropped.
        let registered = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) };
        let socket = match registered {
            Ok(socket) => socket,
            Err(e) => {
                log::error!("E_SFU_SOCKET: cannot use the media socket: {e}");
                return;
            }
        };
        let mut batch = RecvBatch::new(MAX_DATAGRAM);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            self.beat.beat();
            tokio::select! {
                r = socket.readable() => match r {
                    Ok(mut ready) => self.drain_udp(&mut ready, &mut batch),
                    Err(e) => {
                        log::error!("E_SFU_SOCKET: the media socket failed: {e}");
                        return;
                    }
                },
                change = self.routes.recv() => match change {
                    Some(change) => self.apply(change),
                    None => return,
                },
                Some(ev) = super::next_tcp(&mut tcp) => self.on_tcp(ev).await,
                _ = tick.tick() => {}
            }
        }
    }

    fn apply(&mut self, change: RouteChange) {
        match change {
            RouteChange::Add(ufrag, worker) => self.demux.add(ufrag, worker),
            RouteChange::Remove(ufrag) => self.demux.remove(&ufrag),
        }
    }

    /// Read until the socket is empty, handing out each read's datagrams.
    fn drain_udp(
        &mut self,
        ready: &mut AsyncFdReadyGuard<'_, std::net::UdpSocket>,
        batch: &mut RecvBatch,
    ) {
        loop {
            // Routes first: a peer's answer (and its route) precedes its STUN.
            while let Ok(change) = self.routes.try_recv() {
                self.apply(change);
            }
            // A `WouldBlock` clears the readiness, and returns.
            let Ok(read) = ready.try_io(|s| batch.recv(s.as_fd())) else {
                return;
            };
            match read {
                Ok(0) => return,
                Ok(n) => {
                    self.counters
                        .datagrams_in
                        .fetch_add(n as u64, Ordering::Relaxed);
                    for (source, data) in batch.iter() {
                        if data.len() > MAX_DATAGRAM {
                            self.counters.oversized.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        let local = (Protocol::Udp, self.udp_local);
                        self.route(source, data, local);
                    }
                    self.hand_out();
                    if n < RECV_BATCH {
                        // The socket was empty: a datagram that comes later
                        // raises a new readiness event (epoll is
                        // edge-triggered), so no `recvmmsg` need end in
                        // `EAGAIN` to clear this one.
                        ready.clear_ready();
                        return;
                    }
                }
                // ICMP port-unreachable from a vanished client surfaces here; not fatal.
                Err(e) => log::debug!("media socket recv: {e}"),
            }
        }
    }

    async fn on_tcp(&mut self, ev: TcpEvent) {
        match (ev, self.tcp_local) {
            // Any worker may have a peer on a TCP connection: all are told,
            // and wait for room rather than lose it.
            (TcpEvent::Opened(addr, conn), _) => {
                for w in &self.workers {
                    let _ = w.send(Inbound::TcpOpened(addr, conn.clone())).await;
                }
            }
            (TcpEvent::Closed(addr), _) => {
                for w in &self.workers {
                    let _ = w.send(Inbound::TcpClosed(addr)).await;
                }
            }
            (TcpEvent::Packet(addr, p), Some(local)) => {
                self.route(addr, &p, (Protocol::Tcp, local));
                self.hand_out();
            }
            (TcpEvent::Packet(..), None) => {}
        }
    }

    /// Add one datagram to its worker's batch.
    fn route(&mut self, source: SocketAddr, data: &[u8], (proto, local): (Protocol, SocketAddr)) {
        let Some(w) = self.demux.route(source, data) else {
            self.counters.unroutable.fetch_add(1, Ordering::Relaxed);
            log::debug!("{proto:?} datagram from {source} matches no peer");
            return;
        };
        let Some(slot) = self.pending.get_mut(w) else {
            return;
        };
        let b = slot.get_or_insert_with(|| Datagrams {
            data: Vec::with_capacity(data.len() * 4),
            items: Vec::new(),
        });
        let start = b.data.len();
        b.data.extend_from_slice(data);
        b.items.push(Dgram {
            start,
            end: b.data.len(),
            source,
            proto,
            local,
        });
    }

    fn hand_out(&mut self) {
        for (w, slot) in self.pending.iter_mut().enumerate() {
            let Some(b) = slot.take() else {
                continue;
            };
            let n = b.items.len() as u64;
            if self.workers[w].try_send(Inbound::Datagrams(b)).is_err() {
                self.counters.worker_busy.fetch_add(n, Ordering::Relaxed);
            }
        }
    }
}
