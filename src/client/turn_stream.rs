//! TURN over TCP and TLS for the `webrtc` crate, which allocates over UDP
//! only (0.21's `turn_relayer` skips `?transport=tcp` and `turns:` URLs).
//!
//! For each such URL a bridge: a loopback UDP socket that the crate's TURN
//! client is pointed at as if it were the server, and one TCP (or TLS)
//! connection to the real server. Over a stream, TURN carries the same STUN
//! messages and ChannelData one after another, ChannelData padded to four
//! bytes (RFC 8656 §12.5), so the bridge only frames them: credentials,
//! allocation, permissions and refreshes stay the crate's, and the server
//! sees an ordinary TURN-over-TCP client. That framing is all that is
//! written by hand here; no maintained crate plugs TURN/TCP into webrtc-rs.

use rtc::ice::url::{ProtoType, SchemeType, Url};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::task::JoinHandle;

/// How long reaching the TURN server (TCP and TLS handshakes) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A write to the server that takes longer than this ends the bridge.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// STUN header length.
const STUN_HEADER: usize = 20;
/// Largest frame: a 4-byte header and a 16-bit length, padded.
const MAX_FRAME: usize = 4 + 65535 + 3;

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("TURN server {url} unreachable: {why}")]
    Unreachable { url: String, why: String },
    #[error("TURN bridge socket: {0}")]
    Socket(#[from] std::io::Error),
    #[error("{0} is not TURN over TCP or TLS")]
    NotStream(String),
}

/// How a TURN URL reaches its server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    Tcp,
    Tls,
}

impl StreamKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamKind::Tcp => "tcp",
            StreamKind::Tls => "tls",
        }
    }
}

/// A `turn:` URL over TCP or a `turns:` URL: its server and how to reach
/// it. `None` for what the crate handles itself (STUN, TURN over UDP) or
/// what does not parse (the crate reports that).
pub fn stream_target(url: &str) -> Option<(String, u16, StreamKind)> {
    let u = Url::parse_url(url).ok()?;
    let kind = match (u.scheme, u.proto) {
        (SchemeType::Turns, _) => StreamKind::Tls,
        (SchemeType::Turn, ProtoType::Tcp) => StreamKind::Tcp,
        _ => return None,
    };
    Some((u.host, u.port, kind))
}

/// Total bytes of the frame whose first four bytes are `head`, as it
/// travels on the stream (`.0`, ChannelData padded) and as a datagram
/// (`.1`). `None`: neither STUN nor ChannelData.
pub fn frame_len(head: [u8; 4]) -> Option<(usize, usize)> {
    let len = u16::from_be_bytes([head[2], head[3]]) as usize;
    match head[0] >> 6 {
        0b00 => Some((STUN_HEADER + len, STUN_HEADER + len)),
        0b01 => Some(((4 + len).next_multiple_of(4), 4 + len)),
        _ => None,
    }
}

/// One datagram from the crate as it goes on the stream: ChannelData padded.
pub fn to_stream(datagram: &[u8]) -> Option<Vec<u8>> {
    let head: [u8; 4] = datagram.get(..4)?.try_into().ok()?;
    let (on_stream, as_datagram) = frame_len(head)?;
    if datagram.len() < as_datagram {
        return None;
    }
    let mut frame = datagram[..as_datagram].to_vec();
    frame.resize(on_stream, 0);
    Some(frame)
}

/// A running bridge; dropping it closes it.
#[derive(Debug)]
pub struct Bridge {
    /// The URL the crate is given: UDP to the bridge's loopback socket.
    pub local_url: String,
    pub kind: StreamKind,
    tasks: [JoinHandle<()>; 2],
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

/// Connect to the server of `url` and start a bridge to it.
pub async fn open(
    url: &str,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<Bridge, BridgeError> {
    let (host, port, kind) =
        stream_target(url).ok_or_else(|| BridgeError::NotStream(url.to_owned()))?;
    let unreachable = |why: String| BridgeError::Unreachable {
        url: url.to_owned(),
        why,
    };
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host.as_str(), port)))
        .await
        .map_err(|_| unreachable(format!("no TCP connection within {CONNECT_TIMEOUT:?}")))?
        .map_err(|e| unreachable(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let udp = UdpSocket::bind("127.0.0.1:0").await?;
    let local = udp.local_addr()?;
    let local_url = format!("turn:{local}?transport=udp");
    let tasks = match (kind, tls) {
        (StreamKind::Tcp, _) => spawn(tcp, udp, url),
        (StreamKind::Tls, Some(tls)) => {
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| unreachable(format!("server name {host}: {e}")))?;
            let connector = tokio_rustls::TlsConnector::from(Arc::clone(tls));
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
                .await
                .map_err(|_| unreachable(format!("no TLS handshake within {CONNECT_TIMEOUT:?}")))?
                .map_err(|e| unreachable(format!("TLS: {e}")))?;
            spawn(stream, udp, url)
        }
        (StreamKind::Tls, None) => return Err(unreachable("no TLS configuration".into())),
    };
    log::info!("TURN over {}: {url} through {local}", kind.as_str());
    Ok(Bridge {
        local_url,
        kind,
        tasks,
    })
}

/// The two directions of a bridge: datagrams from the crate onto the
/// stream, frames from the stream back to the crate.
fn spawn<S>(stream: S, udp: UdpSocket, url: &str) -> [JoinHandle<()>; 2]
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let udp = Arc::new(udp);
    // The crate's TURN socket: the first to send, and the only one served.
    let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
    let (up_udp, up_client, up_url) = (Arc::clone(&udp), Arc::clone(&client), url.to_owned());
    let up = tokio::spawn(async move {
        let mut buf = vec![0u8; MAX_FRAME];
        loop {
            let Ok((n, from)) = up_udp.recv_from(&mut buf).await else {
                return;
            };
            if *up_client
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert(from)
                != from
            {
                continue;
            }
            let Some(frame) = to_stream(&buf[..n]) else {
                log::debug!("TURN bridge {up_url}: not STUN or ChannelData, dropped");
                continue;
            };
            match tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(&frame)).await {
                Ok(Ok(())) => {}
                _ => {
                    log::warn!("TURN bridge {up_url}: the server stopped taking data");
                    return;
                }
            }
        }
    });
    let url = url.to_owned();
    let down = tokio::spawn(async move {
        let mut buf = vec![0u8; MAX_FRAME];
        loop {
            let mut head = [0u8; 4];
            if rd.read_exact(&mut head).await.is_err() {
                log::info!("TURN bridge {url}: the server closed the connection");
                return;
            }
            let Some((on_stream, as_datagram)) = frame_len(head) else {
                log::warn!(
                    "TURN bridge {url}: the server sent neither STUN nor ChannelData; closing"
                );
                return;
            };
            buf[..4].copy_from_slice(&head);
            if rd.read_exact(&mut buf[4..on_stream]).await.is_err() {
                return;
            }
            let to = *client.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(to) = to {
                let _ = udp.send_to(&buf[..as_datagram], to).await;
            }
        }
    });
    [up, down]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_and_tls_turn_urls_are_bridged_udp_and_stun_are_not() {
        let t = |u: &str| stream_target(u).map(|(h, p, k)| (h, p, k.as_str()));
        assert_eq!(
            t("turn:turn.example.com:3478?transport=tcp"),
            Some(("turn.example.com".into(), 3478, "tcp"))
        );
        assert_eq!(
            t("turns:turn.example.com:443?transport=tcp"),
            Some(("turn.example.com".into(), 443, "tls"))
        );
        assert_eq!(
            t("turns:turn.example.com"),
            Some(("turn.example.com".into(), 5349, "tls"))
        );
        assert_eq!(t("turn:turn.example.com:3478?transport=udp"), None);
        assert_eq!(t("turn:turn.example.com"), None);
        assert_eq!(t("stun:stun.example.com:3478"), None);
        assert_eq!(t("not a url"), None);
    }

    #[test]
    fn stun_passes_as_is_and_channel_data_is_padded_on_the_stream() {
        // A Binding request: 20-byte header, 8 bytes of attributes.
        let mut stun = vec![0x00, 0x01, 0x00, 0x08];
        stun.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
        stun.extend_from_slice(&[7; 12 + 8]);
        assert_eq!(frame_len(stun[..4].try_into().unwrap()), Some((28, 28)));
        assert_eq!(to_stream(&stun), Some(stun.clone()));
        // ChannelData on channel 0x4001 with 5 bytes: 9 as a datagram, 12 on a stream.
        let data = [0x40, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5];
        assert_eq!(frame_len([0x40, 0x01, 0x00, 0x05]), Some((12, 9)));
        assert_eq!(
            to_stream(&data),
            Some(vec![0x40, 0x01, 0, 5, 1, 2, 3, 4, 5, 0, 0, 0])
        );
        // Anything else, or a datagram shorter than its header says, is refused.
        assert_eq!(frame_len([0x80, 0, 0, 0]), None);
        assert_eq!(to_stream(&data[..6]), None);
        assert_eq!(to_stream(&[0x40]), None);
    }
}
