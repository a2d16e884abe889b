//! The client end of the signaling WebSocket: numbered requests matched to
//! their replies, room events delivered on a channel in arrival order.

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
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<ServerMessage>>>>;

/// A connected signaling channel. Dropping it closes the WebSocket.
pub struct Signaling {
    out: mpsc::UnboundedSender<Message>,
    pending: Pending,
    next_id: AtomicU64,
}

impl Signaling {
    /// Connect to `url` (`ws://host:port/ws` or `wss://...`). Events (server
    /// messages that are not replies) arrive on the returned receiver, which
    /// ends when the connection does.
    pub async fn connect(
        url: &str,
    ) -> Result<(Signaling, mpsc::UnboundedReceiver<ServerMessage>), ClientError> {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .map_err(|e| ClientError::SignalSetup(format!("{url}: {e}")))?;
        let (mut ws_tx, mut ws_rx) = ws.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
        let (events_tx, events) = mpsc::unbounded_channel();
        let pending: Pending = Arc::default();
        tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                if ws_tx.send(m).await.is_err() {
                    break;
                }
            }
            let _ = ws_tx.close().await;
        });
        let p = Arc::clone(&pending);
        tokio::spawn(async move {
            while let Some(Ok(frame)) = ws_rx.next().await {
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

    pub fn is_closed(&self) -> bool {
        self.out.is_closed()
    }
}
