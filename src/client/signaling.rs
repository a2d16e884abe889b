//! The client end of the signaling WebSocket: numbered requests matched to
//! their replies, room events delivered on a channel in arrival order.

use crate::client::liveness::RoomActivity;
use crate::client::ClientError;
use crate::protocol::{ClientMessage, ServerMessage};
use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

/// How long a request waits for its reply (TRTC's SERVER_TIMEOUT).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long opening the WebSocket may take: a room service that accepts
/// TCP but never answers (frozen, overloaded) must not stall a reconnect.
const SIGNAL_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// WebSocket pings keep [`RoomActivity`] fresh while the room is quiet.
const PING_INTERVAL: Duration = Duration::from_secs(1);

type AwaitingReply = Arc<Mutex<HashMap<u64, oneshot::Sender<ServerMessage>>>>;

/// TLS for `wss://` and `turns:`: system roots plus the given PEM CAs,
/// aws-lc-rs crypto chosen explicitly (several providers are linked in).
pub fn tls_config(extra_ca_pem: Option<&[u8]>) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(pem) = extra_ca_pem {
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert =
                cert.map_err(|e| ClientError::SignalSetup(format!("CA certificate: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| ClientError::SignalSetup(format!("CA certificate: {e}")))?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::SignalSetup(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The read half of a WebSocket from [`open_websocket`].
pub(crate) type WsRead = futures_util::stream::SplitStream<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
>;

/// A WebSocket to `url` (`request`: the URL, or a request with headers),
/// connected within [`SIGNAL_CONNECT_TIMEOUT`], with TLS for `wss://`:
/// frames go out in order from the returned sender, with a ping every
/// second so `activity` stays fresh while the room is quiet; the read
/// half is the caller's. The callbox protocol and Janus both use it.
pub(crate) async fn open_websocket<R>(
    url: &str,
    request: R,
    tls: Option<Arc<rustls::ClientConfig>>,
    config: Option<tokio_tungstenite::tungstenite::protocol::WebSocketConfig>,
    activity: &RoomActivity,
) -> Result<(mpsc::UnboundedSender<Message>, WsRead), ClientError>
where
    R: tokio_tungstenite::tungstenite::client::IntoClientRequest + Unpin,
{
    let connector = match (url.starts_with("wss:"), tls) {
        (true, Some(tls)) => Some(tokio_tungstenite::Connector::Rustls(tls)),
        _ => None,
    };
    let connect =
        tokio_tungstenite::connect_async_tls_with_config(request, config, true, connector);
    let (ws, _) = tokio::time::timeout(SIGNAL_CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| {
            ClientError::SignalSetup(format!(
                "{url}: no answer within {SIGNAL_CONNECT_TIMEOUT:?}"
            ))
        })?
        .map_err(|e| ClientError::SignalSetup(format!("{url}: {e}")))?;
    let (mut ws_tx, ws_rx) = ws.split();
    let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
    activity.touch();
    tokio::spawn(async move {
        let mut ping = tokio::time::interval(PING_INTERVAL);
        loop {
            let m = tokio::select! {
                m = out_rx.recv() => match m {
                    Some(m) => m,
                    None => break,
                },
                _ = ping.tick() => Message::Ping(Default::default()),
            };
            if ws_tx.send(m).await.is_err() {
                break;
            }
        }
        let _ = ws_tx.close().await;
    });
    Ok((out, ws_rx))
}

/// A connected signaling channel. Dropping it closes the WebSocket.
pub struct Signaling {
    out: mpsc::UnboundedSender<Message>,
    pending: AwaitingReply,
    next_id: AtomicU64,
}

impl Signaling {
    /// Connect to `url` (`ws://host:port/ws` or `wss://...`). Events (server
    /// messages that are not replies) arrive on the returned receiver, which
    /// ends when the connection does.
    ///
    /// `wss://` trusts the system's CA store plus `extra_ca_pem` (PEM
    /// certificates, e.g. a private CA the room service's certificate is
    /// signed with).
    pub async fn connect(
        url: &str,
        extra_ca_pem: Option<&[u8]>,
        activity: RoomActivity,
    ) -> Result<(Signaling, mpsc::UnboundedReceiver<ServerMessage>), ClientError> {
        let tls = match url.starts_with("wss:") {
            true => Some(tls_config(extra_ca_pem)?),
            false => None,
        };
        let (out, mut ws_rx) = open_websocket(url, url, tls, None, &activity).await?;
        let (events_tx, events) = mpsc::unbounded_channel();
        let pending: AwaitingReply = Arc::default();
        let p = Arc::clone(&pending);
        tokio::spawn(async move {
            while let Some(Ok(frame)) = ws_rx.next().await {
                activity.touch();
                let Message::Text(text) = frame else { continue };
                let msg = match serde_json::from_str::<ServerMessage>(&text) {
                    Ok(m) => m,
                    Err(e) => {
                        log::warn!("E_SIGNAL_BAD_MESSAGE: unparseable server message: {e}");
                        continue;
                    }
                };
                let waiter = msg
                    .reply_to()
                    .and_then(|id| p.lock().unwrap_or_else(|e| e.into_inner()).remove(&id));
                match waiter {
                    Some(w) => {
                        let _ = w.send(msg);
                    }
                    None => {
                        let _ = events_tx.send(msg);
                    }
                }
            }
            // Fail everything still waiting: the channel is gone.
            p.lock().unwrap_or_else(|e| e.into_inner()).clear();
        });
        Ok((
            Signaling {
                out,
                pending,
                next_id: AtomicU64::new(1),
            },
            events,
        ))
    }

    /// Send a request built with a fresh id; resolve with its reply, or the
    /// server's refusal as [`ClientError::Refused`].
    pub async fn request(
        &self,
        build: impl FnOnce(u64) -> ClientMessage,
    ) -> Result<ServerMessage, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let msg = build(id);
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        let text = serde_json::to_string(&msg).map_err(|e| ClientError::Internal(e.to_string()))?;
        self.send_text(text)?;
        let reply = tokio::time::timeout(REQUEST_TIMEOUT, rx).await;
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        match reply {
            Err(_) => Err(ClientError::Timeout),
            Ok(Err(_)) => Err(ClientError::SignalClosed),
            Ok(Ok(ServerMessage::Error {
                code,
                reason,
                message,
                ..
            })) => Err(ClientError::Refused {
                code,
                reason,
                message,
            }),
            Ok(Ok(reply)) => Ok(reply),
        }
    }

    /// Send raw text (tests use it to send what a broken client would).
    pub fn send_text(&self, text: String) -> Result<(), ClientError> {
        self.out
            .send(Message::Text(text.into()))
            .map_err(|_| ClientError::SignalClosed)
    }
}
