//! ICE-TCP for clients that cannot send UDP (RFC 6544, passive candidates):
//! a TCP listener beside the media UDP socket; each connection carries
//! STUN, DTLS and SRTP packets framed as RFC 4571 (a 16-bit length before
//! each packet; the `rtc` crate's `tcp_framing`). Connections are tasks on
//! the SFU's runtime: a reader that hands whole packets to the SFU thread
//! (bounded channel, so a slow SFU slows the sender through TCP's own flow
//! control), and a writer fed by a bounded queue (full: the packet is
//! dropped, as UDP would). Connections are capped in all and per address,
//! and closed after `IDLE` without a packet.

use crate::room::accept::ConnectionCaps;
use bytes::Bytes;
use rtc::shared::tcp_framing::{frame_packet, TcpFrameDecoder};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Media TCP connections open at once, in all and from one address (a
/// client needs one per PeerConnection: its uplink and each subscription).
const MAX_CONNECTIONS: usize = 512;
const MAX_PER_ADDRESS: usize = 16;
/// Packets queued for one connection's writer.
const WRITE_QUEUE: usize = 256;
/// A connection with no packet in this long is closed (ICE keeps a live
/// one busy with consent checks every few seconds).
const IDLE: Duration = Duration::from_secs(30);
/// Larger frames are not media packets: the connection is closed.
const MAX_FRAME: usize = 2048;

/// What the connections tell the SFU thread.
pub enum TcpEvent {
    /// A client connected from `addr`; packets for it go to the sender.
    Opened(SocketAddr, mpsc::Sender<Bytes>),
    /// One packet from `addr`.
    Packet(SocketAddr, Bytes),
    Closed(SocketAddr),
}

/// Accept media connections on `listener` until the SFU stops listening.
pub async fn accept(listener: TcpListener, events: mpsc::Sender<TcpEvent>) {
    let caps = ConnectionCaps::new(MAX_CONNECTIONS, MAX_PER_ADDRESS);
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                log::warn!("media TCP accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if events.is_closed() {
            return;
        }
        let slot = match caps.admit(addr.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                log::warn!("E_ROOM_CONN_CAP: media TCP from {addr} closed: {why}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let events = events.clone();
        tokio::spawn(async move {
            serve(stream, addr, &events).await;
            // The slot comes back before the SFU hears the connection closed.
            drop(slot);
            let _ = events.send(TcpEvent::Closed(addr)).await;
        });
    }
}

/// One connection: framed packets in and out until either side ends it.
async fn serve(stream: TcpStream, addr: SocketAddr, events: &mpsc::Sender<TcpEvent>) {
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Bytes>(WRITE_QUEUE);
    if events.send(TcpEvent::Opened(addr, tx)).await.is_err() {
        return;
    }
    let writer = tokio::spawn(async move {
        while let Some(packet) = rx.recv().await {
            if wr.write_all(&frame_packet(&packet)).await.is_err() {
                break;
            }
        }
    });
    let mut decoder = TcpFrameDecoder::new();
    let mut buf = vec![0u8; 4096];
    'read: loop {
        let n = match tokio::time::timeout(IDLE, rd.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => break,
        };
        decoder.extend_from_slice(&buf[..n]);
        while let Some(packet) = decoder.next_packet() {
            if packet.len() > MAX_FRAME {
                break 'read;
            }
            if events
                .send(TcpEvent::Packet(addr, packet.into()))
                .await
                .is_err()
            {
                break 'read;
            }
        }
        // What is left is part of one frame; longer means a bogus length.
        if decoder.buffered_len() > MAX_FRAME + 2 {
            log::debug!("media TCP {addr}: a frame longer than a packet, closing");
            break;
        }
    }
    writer.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two framed packets written in pieces come out whole, in order; what
    /// the SFU sends back arrives framed.
    #[tokio::test]
    async fn packets_are_framed_both_ways() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, mut events) = mpsc::channel(16);
        tokio::spawn(accept(listener, tx));
        let mut client = TcpStream::connect(addr).await.expect("connect");
        let mut wire = frame_packet(b"stun");
        wire.extend(frame_packet(&[7u8; 300]));
        for piece in wire.chunks(5) {
            client.write_all(piece).await.expect("write");
        }
        let Some(TcpEvent::Opened(from, reply)) = events.recv().await else {
            panic!("no open event")
        };
        let mut got = Vec::new();
        while got.len() < 2 {
            match events.recv().await {
                Some(TcpEvent::Packet(a, p)) if a == from => got.push(p),
                _ => panic!("expected packets"),
            }
        }
        assert_eq!(got[0].as_ref(), b"stun");
        assert_eq!(got[1].as_ref(), &[7u8; 300][..]);
        reply.send(Bytes::from_static(b"dtls")).await.expect("send");
        let mut back = [0u8; 6];
        client.read_exact(&mut back).await.expect("read");
        assert_eq!(&back, b"\x00\x04dtls");
        drop(client);
        assert!(matches!(events.recv().await, Some(TcpEvent::Closed(a)) if a == from));
    }

    /// One address can hold `MAX_PER_ADDRESS` connections; one more is
    /// closed at once, and a slot comes back when one closes.
    #[tokio::test]
    async fn one_address_cannot_take_every_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, mut events) = mpsc::channel(256);
        tokio::spawn(accept(listener, tx));
        let mut held = Vec::new();
        for _ in 0..MAX_PER_ADDRESS {
            held.push(TcpStream::connect(addr).await.expect("connect"));
            assert!(matches!(events.recv().await, Some(TcpEvent::Opened(..))));
        }
        let mut over = TcpStream::connect(addr).await.expect("connect");
        let mut buf = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(2), over.read(&mut buf)).await;
        assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
        drop(held.pop());
        assert!(matches!(events.recv().await, Some(TcpEvent::Closed(_))));
        let _again = TcpStream::connect(addr).await.expect("connect");
        let reopened = tokio::time::timeout(Duration::from_secs(2), events.recv()).await;
        assert!(matches!(reopened, Ok(Some(TcpEvent::Opened(..)))));
    }
}
