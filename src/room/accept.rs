//! Connection caps at accept: at most `limits.max_connections` TCP
//! connections in all and `limits.max_connections_per_ip` from one address.
//! One over a cap is closed at once, before any byte is read. Each admitted
//! stream carries its [`Slot`] and gives it back when dropped, which for a
//! WebSocket is when the upgraded connection ends. An admitted stream with
//! no traffic either way for `limits.idle_timeout_s` fails its next read,
//! which closes it (hyper's header timeout only runs once bytes arrive;
//! a WebSocket stays busy with the server's pings).
//!
//! Written here because axum-server has the hook (its `Accept` trait) but no
//! cap, and tower's concurrency limit counts requests, not connections.

use crate::room::log_limit::RateLimitedLog;
use axum_server::accept::Accept;
use std::collections::HashMap;
use std::future::{Future, Ready};
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{0} connections open: the server's cap")]
    Total(usize),
    #[error("{0} connections open from this address: the per-address cap")]
    PerIp(usize),
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// The caps and what is open now; cloned handles share the counts.
#[derive(Debug, Clone)]
pub struct ConnectionCaps {
    counts: Arc<Mutex<Counts>>,
    max_total: usize,
    max_per_ip: usize,
}

/// One admitted connection's place under the caps.
#[derive(Debug)]
pub struct Slot {
    counts: Arc<Mutex<Counts>>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
    }
}

impl ConnectionCaps {
    pub fn new(max_total: usize, max_per_ip: usize) -> Self {
        ConnectionCaps {
            counts: Arc::default(),
            max_total,
            max_per_ip,
        }
    }

    /// Take a slot for a connection from `ip`, if both caps allow it.
    pub fn admit(&self, ip: IpAddr) -> Result<Slot, Refused> {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if c.total >= self.max_total {
            return Err(Refused::Total(c.total));
        }
        let from_ip = c.per_ip.get(&ip).copied().unwrap_or(0);
        if from_ip >= self.max_per_ip {
            return Err(Refused::PerIp(from_ip));
        }
        c.total += 1;
        *c.per_ip.entry(ip).or_insert(0) += 1;
        Ok(Slot {
            counts: Arc::clone(&self.counts),
            ip,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

/// A stream holding its slot for as long as it lives, closed when idle.
pub struct Capped<S> {
    inner: S,
    _slot: Slot,
    idle: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl<S> Capped<S> {
    fn active(&mut self) {
        let next = tokio::time::Instant::now() + self.idle;
        self.deadline.as_mut().reset(next);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Capped<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                self.active();
                Poll::Ready(r)
            }
            Poll::Pending if self.deadline.as_mut().poll(cx).is_ready() => Poll::Ready(Err(
                io::Error::new(io::ErrorKind::TimedOut, "idle connection closed"),
            )),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Capped<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(_)) = written {
            self.active();
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(_)) = written {
            self.active();
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The acceptor that applies the caps (the inner one of the TLS acceptor
/// when TLS is on, so a refused connection costs no handshake).
#[derive(Clone)]
pub struct CappedAcceptor {
    caps: ConnectionCaps,
    idle: Duration,
    log: Arc<RateLimitedLog>,
}

impl CappedAcceptor {
    pub fn new(caps: ConnectionCaps, idle: Duration) -> Self {
        CappedAcceptor {
            caps,
            idle,
            log: Arc::new(RateLimitedLog::per_second(5)),
        }
    }
}

impl<S> Accept<TcpStream, S> for CappedAcceptor {
    type Stream = Capped<TcpStream>;
    type Service = S;
    type Future = Ready<io::Result<(Self::Stream, S)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let admitted = stream
            .peer_addr()
            .map_err(|e| e.to_string())
            .and_then(|peer| {
                self.caps
                    .admit(peer.ip())
                    .map_err(|why| format!("{}: {why}", peer.ip()))
            });
        std::future::ready(match admitted {
            Ok(slot) => Ok((
                Capped {
                    inner: stream,
                    _slot: slot,
                    idle: self.idle,
                    deadline: Box::pin(tokio::time::sleep(self.idle)),
                },
                service,
            )),
            Err(why) => {
                self.log
                    .warn(|| format!("E_ROOM_CONN_CAP: connection closed at accept: {why}"));
                Err(io::Error::other(why))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_count_per_address_and_in_all_and_slots_come_back() {
        let caps = ConnectionCaps::new(3, 2);
        let (a, b) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let a1 = caps.admit(a).unwrap();
        let _a2 = caps.admit(a).unwrap();
        assert_eq!(caps.admit(a).unwrap_err(), Refused::PerIp(2));
        let _b1 = caps.admit(b).unwrap();
        assert_eq!(caps.admit(b).unwrap_err(), Refused::Total(3));
        drop(a1);
        assert_eq!(caps.open(), 2);
        let _a3 = caps.admit(a).expect("a slot came back");
    }
}
