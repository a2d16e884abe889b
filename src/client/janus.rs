//! A Janus session for the client: the WebSocket transport (subprotocol
//! `janus-protocol`), transactions matched to their replies, keepalives
//! within Janus's session timeout, one VideoRoom handle for the
//! publication and its room events, and one per subscription. What the
//! plugin's messages mean is [`crate::client::janus_videoroom`]'s.
//!
//! Janus offers subscriptions (the client answers), the reverse of the
//! callbox room service; [`Janus::subscribe`] runs that exchange.

use crate::client::janus_videoroom::{self as vr, Publisher, Refusal, RoomTarget};
use crate::client::liveness::RoomActivity;
use crate::client::peer::{Downlink, NetConfig, RemotePacket};
use crate::client::signaling::open_websocket;
use crate::client::{ClientError, Receive};
use crate::protocol::{ServerMessage, StreamInfo};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// How long a request waits for Janus's answer (an offer or answer may
/// take Janus a moment to gather).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Janus drops a session silent for `session_timeout` (60 s by default).
const KEEPALIVE: Duration = Duration::from_secs(20);
/// Largest frame taken from Janus (a room listing with many publishers).
const MAX_FRAME: usize = 1 << 20;

/// A Janus VideoRoom to join, besides the WebSocket URL.
#[derive(Debug, Clone, Default)]
pub struct JanusRoom {
    pub room: u64,
    pub pin: Option<String>,
    /// Janus's stored-token authentication.
    pub token: Option<String>,
    /// The room's secret: lets the client kick its own stale session.
    pub room_secret: Option<String>,
    /// The display name (the user id when unset).
    pub display: Option<String>,
}

type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<Value>>>>;

/// What the reader needs to route events.
#[derive(Default)]
struct Routing {
    publisher_handle: AtomicU64,
    feed: AtomicU64,
    known: Mutex<HashMap<u64, Publisher>>,
}

pub struct Janus {
    out: mpsc::UnboundedSender<Message>,
    waiters: Waiters,
    next_tx: AtomicU64,
    session: u64,
    publisher: u64,
    token: Option<String>,
    target: RoomTarget,
    room_secret: Option<String>,
    routing: Arc<Routing>,
    private_id: Mutex<Option<u64>>,
    /// Our publication's `(kind, mid)`, for mute.
    our_mids: Mutex<Vec<(crate::protocol::MediaKind, String)>>,
    subscriptions: Mutex<HashMap<String, u64>>,
}

impl Janus {
    /// Connect, make a session and the publisher's handle. Room events
    /// arrive on the receiver, in TRTC's terms.
    pub async fn connect(
        url: &str,
        tls: Option<Arc<rustls::ClientConfig>>,
        room: &JanusRoom,
        user_id: &str,
        activity: RoomActivity,
    ) -> Result<(Janus, mpsc::UnboundedReceiver<ServerMessage>), ClientError> {
        let (out, waiters, routing, events) = open(url, tls, activity).await?;
        let display = room.display.clone().unwrap_or_else(|| user_id.to_owned());
        let mut j = Janus {
            out,
            waiters,
            next_tx: AtomicU64::new(1),
            session: 0,
            publisher: 0,
            token: room.token.clone(),
            target: RoomTarget {
                room: room.room,
                pin: room.pin.clone(),
                display,
                feed: vr::feed_id(user_id),
            },
            room_secret: room.room_secret.clone(),
            routing,
            private_id: Mutex::new(None),
            our_mids: Mutex::default(),
            subscriptions: Mutex::default(),
        };
        let created = j.call(json!({"janus": "create"})).await?;
        j.session = id_in(&created)?;
        j.publisher = j.attach().await?;
        j.routing
            .publisher_handle
            .store(j.publisher, Ordering::Relaxed);
        j.routing.feed.store(j.target.feed, Ordering::Relaxed);
        spawn_keepalive(j.out.clone(), j.session, j.token.clone());
        Ok((j, events))
    }

    /// Send `msg` (session, token and a transaction added) and wait for
    /// its reply: Janus's refusal, or the plugin's, is the error.
    async fn call(&self, mut msg: Value) -> Result<Value, ClientError> {
        let tx = format!("t{}", self.next_tx.fetch_add(1, Ordering::Relaxed));
        msg["transaction"] = json!(tx);
        if self.session != 0 {
            msg["session_id"] = json!(self.session);
        }
        if let Some(t) = &self.token {
            msg["token"] = json!(t);
        }
        let (reply_tx, reply_rx) = oneshot::channel();
        self.waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(tx.clone(), reply_tx);
        let sent = self.out.send(Message::Text(msg.to_string().into()));
        let reply = match sent {
            Ok(()) => tokio::time::timeout(REQUEST_TIMEOUT, async { Ok(reply_rx.await?) }).await,
            Err(_) => Ok(Err(ClosedBeforeReply)),
        };
        self.waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&tx);
        let reply = reply
            .map_err(|_| ClientError::Timeout)?
            .map_err(|_: ClosedBeforeReply| ClientError::SignalClosed)?;
        match vr::error_of(&reply) {
            Some((code, message)) => Err(ClientError::Janus {
                code,
                refusal: Refusal::of(code),
                message,
            }),
            None => Ok(reply),
        }
    }

    async fn attach(&self) -> Result<u64, ClientError> {
        let reply = self
            .call(json!({"janus": "attach", "plugin": "janus.plugin.videoroom"}))
            .await?;
        id_in(&reply)
    }

    async fn message(
        &self,
        handle: u64,
        body: Value,
        jsep: Option<Value>,
    ) -> Result<Value, ClientError> {
        let mut msg = json!({"janus": "message", "handle_id": handle, "body": body});
        if let Some(j) = jsep {
            msg["jsep"] = j;
        }
        self.call(msg).await
    }

    /// Join as a publisher; the streams already published. A stale
    /// session of ours (436) is kicked with the room secret, once.
    pub async fn join(&self) -> Result<Vec<StreamInfo>, ClientError> {
        let joined = match self
            .message(self.publisher, vr::join_publisher(&self.target), None)
            .await
        {
            Err(ClientError::Janus {
                refusal: Refusal::IdExists,
                ..
            }) if self.room_secret.is_some() => {
                let secret = self.room_secret.as_deref().unwrap_or_default();
                log::warn!(
                    "janus: feed {} is already in room {}: kicking our stale session",
                    self.target.feed,
                    self.target.room
                );
                self.message(
                    self.publisher,
                    vr::kick(self.target.room, secret, self.target.feed),
                    None,
                )
                .await?;
                self.message(self.publisher, vr::join_publisher(&self.target), None)
                    .await?
            }
            other => other?,
        };
        let data = vr::plugin_data(&joined);
        *self.private_id.lock().unwrap_or_else(|e| e.into_inner()) = data["private_id"].as_u64();
        let listed = vr::publishers(data, self.target.feed);
        let mut known = self.routing.known.lock().unwrap_or_else(|e| e.into_inner());
        Ok(listed
            .into_iter()
            .map(|p| {
                let info = p.stream_info();
                known.insert(p.id, p);
                info
            })
            .collect())
    }

    /// Publish with `offer`; Janus's answer, and our stream id (the feed).
    pub async fn publish(&self, offer: String) -> Result<(String, String), ClientError> {
        *self.our_mids.lock().unwrap_or_else(|e| e.into_inner()) = vr::sdp_mids(&offer);
        let jsep = json!({"type": "offer", "sdp": offer, "trickle": false});
        let reply = self
            .message(self.publisher, json!({"request": "publish"}), Some(jsep))
            .await?;
        let answer = reply["jsep"]["sdp"]
            .as_str()
            .ok_or_else(|| ClientError::Media("janus: no answer to the publish offer".into()))?;
        Ok((self.target.feed.to_string(), answer.to_owned()))
    }

    /// TRTC mute: Janus stops relaying that kind of our publication.
    pub async fn mute(
        &self,
        kind: crate::protocol::MediaKind,
        muted: bool,
    ) -> Result<(), ClientError> {
        let mids = self
            .our_mids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for (_, mid) in mids.iter().filter(|(k, _)| *k == kind) {
            self.message(self.publisher, vr::configure_send(mid, !muted), None)
                .await?;
        }
        Ok(())
    }

    /// Subscribe: a handle of its own, Janus's offer, our answer. The
    /// downlink, and its packets once connected.
    pub async fn subscribe(
        &self,
        info: &StreamInfo,
        receive: Receive,
        net: &NetConfig,
        activity: &RoomActivity,
    ) -> Result<(Downlink, mpsc::Receiver<RemotePacket>), ClientError> {
        let feed: u64 = info.stream_id.parse().map_err(|_| {
            ClientError::Media(format!("janus: stream id {} is not a feed", info.stream_id))
        })?;
        let mids = match self
            .routing
            .known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&feed)
        {
            Some(p) => p.mids(receive.audio, receive.video),
            None => Vec::new(),
        };
        let handle = self.attach().await?;
        self.subscriptions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(info.stream_id.clone(), handle);
        let private_id = *self.private_id.lock().unwrap_or_else(|e| e.into_inner());
        let attached = self
            .message(
                handle,
                vr::join_subscriber(&self.target, feed, &mids, private_id),
                None,
            )
            .await?;
        let offer = attached["jsep"]["sdp"]
            .as_str()
            .ok_or_else(|| ClientError::Media("janus: no offer for the subscription".into()))?;
        let (mut downlink, answer) = Downlink::answer(net, activity, offer.to_owned()).await?;
        let jsep = json!({"type": "answer", "sdp": answer, "trickle": false});
        if let Err(e) = self
            .message(handle, json!({"request": "start"}), Some(jsep))
            .await
        {
            downlink.peer.close().await;
            return Err(e);
        }
        let packets = downlink.start().await?;
        Ok((downlink, packets))
    }

    pub async fn unsubscribe(&self, stream_id: &str) -> Result<(), ClientError> {
        let handle = self
            .subscriptions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(stream_id);
        match handle {
            Some(h) => self
                .call(json!({"janus": "detach", "handle_id": h}))
                .await
                .map(|_| ()),
            None => Ok(()),
        }
    }

    pub async fn unpublish(&self) -> Result<(), ClientError> {
        self.message(self.publisher, json!({"request": "unpublish"}), None)
            .await
            .map(|_| ())
    }

    /// Leave the room and end the session.
    pub async fn leave(&self) -> Result<(), ClientError> {
        let left = self
            .message(self.publisher, json!({"request": "leave"}), None)
            .await;
        let _ = self.call(json!({"janus": "destroy"})).await;
        left.map(|_| ())
    }
}

/// The connection closed before the reply came.
struct ClosedBeforeReply;

impl From<oneshot::error::RecvError> for ClosedBeforeReply {
    fn from(_: oneshot::error::RecvError) -> Self {
        ClosedBeforeReply
    }
}

fn id_in(reply: &Value) -> Result<u64, ClientError> {
    reply["data"]["id"]
        .as_u64()
        .ok_or_else(|| ClientError::Internal(format!("janus: no id in {reply}")))
}

type Opened = (
    mpsc::UnboundedSender<Message>,
    Waiters,
    Arc<Routing>,
    mpsc::UnboundedReceiver<ServerMessage>,
);

/// The WebSocket with its writer (pings) and reader (replies to their
/// waiters, the publisher handle's events translated).
async fn open(
    url: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
    activity: RoomActivity,
) -> Result<Opened, ClientError> {
    let setup = |e: String| ClientError::SignalSetup(format!("{url}: {e}"));
    let mut request = url
        .into_client_request()
        .map_err(|e| setup(e.to_string()))?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "janus-protocol"
            .parse()
            .map_err(|_| setup("header".into()))?,
    );
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME))
        .max_frame_size(Some(MAX_FRAME));
    let (out, mut ws_rx) = open_websocket(url, request, tls, Some(config), &activity).await?;
    let (events_tx, events) = mpsc::unbounded_channel();
    let waiters: Waiters = Arc::default();
    let routing = Arc::new(Routing::default());
    let (w, r) = (Arc::clone(&waiters), Arc::clone(&routing));
    tokio::spawn(async move {
        while let Some(Ok(frame)) = ws_rx.next().await {
            activity.touch();
            if let Message::Text(text) = frame {
                route(&text, &w, &r, &events_tx);
            }
        }
        w.lock().unwrap_or_else(|e| e.into_inner()).clear();
    });
    Ok((out, waiters, routing, events))
}

/// One message from Janus: a reply to its waiter (acks are not replies),
/// or an event; the publisher handle's become TRTC events.
fn route(
    text: &str,
    waiters: &Waiters,
    routing: &Routing,
    events: &mpsc::UnboundedSender<ServerMessage>,
) {
    let Ok(msg) = serde_json::from_str::<Value>(text) else {
        log::warn!("E_SIGNAL_BAD_MESSAGE: janus sent unparseable JSON");
        return;
    };
    if msg["janus"] == "ack" {
        return;
    }
    if let Some(tx) = msg["transaction"].as_str() {
        if let Some(w) = waiters.lock().unwrap_or_else(|e| e.into_inner()).remove(tx) {
            let _ = w.send(msg);
            return;
        }
    }
    let from_publisher =
        msg["sender"].as_u64() == Some(routing.publisher_handle.load(Ordering::Relaxed));
    match msg["janus"].as_str() {
        Some("event") if from_publisher => {
            let me = routing.feed.load(Ordering::Relaxed);
            let mut known = routing.known.lock().unwrap_or_else(|e| e.into_inner());
            for ev in vr::translate(vr::plugin_data(&msg), me, &mut known) {
                let _ = events.send(ev);
            }
        }
        Some("timeout") => log::warn!("janus: the session timed out"),
        Some(other) => log::debug!("janus: {other} from handle {}", msg["sender"]),
        None => {}
    }
}

fn spawn_keepalive(out: mpsc::UnboundedSender<Message>, session: u64, token: Option<String>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(KEEPALIVE);
        tick.tick().await;
        loop {
            tick.tick().await;
            let mut ka =
                json!({"janus": "keepalive", "session_id": session, "transaction": "keepalive"});
            if let Some(t) = &token {
                ka["token"] = json!(t);
            }
            if out.send(Message::Text(ka.to_string().into())).is_err() {
                return;
            }
        }
    });
}
