//! The Rust client with the TRTC v4 call model: [`Client`] joins a room,
//! publishes a [`LocalStream`], subscribes to others' streams
//! ([`RemoteStream`]), leaves, and reports room events with the TRTC names.
//! Signaling follows `crate::protocol`; media goes over the `webrtc` crate.
//! The device daemon and the tests build on it.

pub mod janus;
pub mod janus_videoroom;
pub mod keyframe;
pub mod liveness;
pub mod peer;
pub mod rtp_clock;
pub mod signaling;
pub mod turn_stream;

/// Where to join: the protocol's room id, numeric or string.
pub use crate::protocol::RoomId;
use crate::protocol::{ClientMessage, MediaKind, ServerMessage, StreamInfo, PROTOCOL_VERSION};
pub use peer::{Congestion, NetConfig, VideoPlayout};
use peer::{Downlink, RemotePacket, Uplink};
use signaling::Signaling;
use std::collections::HashMap;
use tokio::sync::mpsc;

pub use liveness::RoomActivity;
pub use peer::LocalTrack;

/// What went wrong, with the TRTC code a browser would see for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("signaling channel setup failed: {0}")]
    SignalSetup(String),
    #[error("signaling channel closed")]
    SignalClosed,
    #[error("no reply from the room service in time")]
    Timeout,
    #[error("refused by the room service ({code:#06x} {reason}): {message}")]
    Refused {
        code: u32,
        reason: crate::protocol::Reason,
        message: String,
    },
    #[error("media: {0}")]
    Media(String),
    /// Relay-only, and no TURN server gave a relay address.
    #[error("no TURN relay from {0}: wrong credentials, or the server is unreachable")]
    NoRelay(String),
    /// Janus (its core or the VideoRoom plugin) refused a request.
    #[error("refused by Janus ({code}): {message}")]
    Janus {
        code: u32,
        refusal: janus_videoroom::Refusal,
        message: String,
    },
    #[error("invalid operation: {0}")]
    InvalidOperation(&'static str),
    #[error("internal: {0}")]
    Internal(String),
}

impl ClientError {
    pub fn code(&self) -> u32 {
        use crate::protocol::code;
        match self {
            ClientError::SignalSetup(_) => code::SIGNAL_CHANNEL_SETUP_FAILED,
            ClientError::SignalClosed => code::SIGNAL_CHANNEL_ERROR,
            ClientError::Timeout => code::SERVER_TIMEOUT,
            ClientError::Refused { code, .. } => *code,
            ClientError::Media(_) | ClientError::NoRelay(_) => code::ICE_TRANSPORT_ERROR,
            ClientError::Janus { .. } => code::JOIN_ROOM_FAILED,
            ClientError::InvalidOperation(_) => code::INVALID_OPERATION,
            ClientError::Internal(_) => code::UNKNOWN,
        }
    }
}

fn unexpected(reply: ServerMessage) -> ClientError {
    ClientError::Internal(format!("unexpected reply {reply:?}"))
}

/// Who the client is and where it joins.
#[derive(Clone)]
pub struct ClientConfig {
    /// Signaling URL, `ws://host:port/ws` or `wss://...`.
    pub url: String,
    pub sdk_app_id: u64,
    pub user_id: String,
    pub user_sig: String,
    pub net: NetConfig,
    /// Extra CA certificates (PEM) trusted for `wss://` and `turns:`, besides the system's.
    pub tls_ca_pem: Option<Vec<u8>>,
    /// A Janus VideoRoom at `url` instead of a callbox room service (then
    /// `sdk_app_id` and `user_sig` are not used).
    pub janus: Option<janus::JanusRoom>,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("url", &self.url)
            .field("sdk_app_id", &self.sdk_app_id)
            .field("user_id", &self.user_id)
            .field("user_sig", &"***")
            .finish()
    }
}

/// A subscription negotiated but not yet taken in by [`Client::adopt`].
pub struct Subscription {
    downlink: Downlink,
    info: StreamInfo,
    packets: mpsc::Receiver<RemotePacket>,
}

impl Subscription {
    pub fn info(&self) -> &StreamInfo {
        &self.info
    }

    /// Close it without taking it in (its stream went away meanwhile).
    pub async fn close(self) {
        self.downlink.peer.close().await;
    }
}

/// Which kinds of a remote stream to receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receive {
    pub audio: bool,
    pub video: bool,
}

impl Receive {
    pub const BOTH: Receive = Receive {
        audio: true,
        video: true,
    };
}

/// The local publication: write encoded media into its tracks.
pub struct LocalStream {
    uplink: Uplink,
    pub stream_id: String,
}

impl LocalStream {
    pub fn audio(&self) -> Option<&LocalTrack> {
        self.uplink.audio.as_ref()
    }

    pub fn video(&self) -> Option<&LocalTrack> {
        self.uplink.video.as_ref()
    }

    /// Which way the publication's media goes (host/srflx/relay, UDP/TCP).
    pub async fn path(&self) -> Option<peer::IcePath> {
        self.uplink.peer.path().await
    }

    /// The congestion controller's current target (bit/s), when it is on.
    pub fn target_bitrate(&self) -> Option<u64> {
        self.uplink
            .peer
            .target_bitrate
            .as_ref()
            .map(|t| t.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// A subscribed remote stream: its RTP packets arrive on `packets`.
pub struct RemoteStream {
    pub info: StreamInfo,
    /// Received packets; bounded, a full queue drops like the network would.
    pub packets: mpsc::Receiver<RemotePacket>,
    keyframe: mpsc::UnboundedSender<()>,
}

impl RemoteStream {
    /// Ask the publisher for a keyframe (PLI through the room).
    pub fn request_keyframe(&self) {
        let _ = self.keyframe.send(());
    }

    /// The same, for a decoder that outlives this handle's borrow.
    pub fn keyframe_requester(&self) -> Box<dyn Fn() + Send> {
        let tx = self.keyframe.clone();
        Box::new(move || {
            let _ = tx.send(());
        })
    }
}

/// One participant. Events (`peer-join`, `stream-added`, `client-banned`, ...)
/// arrive from [`Client::next_event`].
pub struct Client {
    config: ClientConfig,
    // Shared with subscriptions negotiated off the caller's loop.
    engine: Engine,
    events: mpsc::UnboundedReceiver<ServerMessage>,
    local: Option<LocalStream>,
    downlinks: HashMap<String, Downlink>,
    joined: bool,
    activity: RoomActivity,
    playout: VideoPlayout,
}

/// The room engine a client speaks to: the two implementations of the
/// client's signaling (join, publish, subscribe, unsubscribe, mute, leave,
/// events in TRTC's names).
#[derive(Clone)]
enum Engine {
    Callbox(std::sync::Arc<Signaling>),
    Janus(std::sync::Arc<janus::Janus>),
}

impl Client {
    /// Open the signaling channel (TRTC's `createClient` + the connection `join` uses).
    pub async fn connect(mut config: ClientConfig) -> Result<Client, ClientError> {
        let activity = RoomActivity::default();
        if config.net.tls.is_none() {
            config.net.tls = Some(signaling::tls_config(config.tls_ca_pem.as_deref())?);
        }
        let (engine, events) = match &config.janus {
            Some(room) => {
                let (j, events) = janus::Janus::connect(
                    &config.url,
                    config.net.tls.clone(),
                    room,
                    &config.user_id,
                    activity.clone(),
                )
                .await?;
                (Engine::Janus(std::sync::Arc::new(j)), events)
            }
            None => {
                let (signaling, events) =
                    Signaling::connect(&config.url, config.tls_ca_pem.as_deref(), activity.clone())
                        .await?;
                (Engine::Callbox(std::sync::Arc::new(signaling)), events)
            }
        };
        Ok(Client {
            config,
            engine,
            events,
            local: None,
            downlinks: HashMap::new(),
            joined: false,
            activity,
            playout: VideoPlayout::default(),
        })
    }

    /// How viewers may hold the video this client publishes from now on.
    pub fn set_video_playout(&mut self, playout: VideoPlayout) {
        self.playout = playout;
    }

    pub fn user_id(&self) -> &str {
        &self.config.user_id
    }

    /// The callbox room service's signaling channel (`None` on Janus).
    pub fn signaling(&self) -> Option<&Signaling> {
        match &self.engine {
            Engine::Callbox(s) => Some(s),
            Engine::Janus(_) => None,
        }
    }

    /// How long nothing has arrived from the room (signaling, RTP, RTCP);
    /// see [`liveness`].
    pub fn room_silence(&self) -> Option<std::time::Duration> {
        self.activity.silence()
    }

    /// Join a room; returns the streams already published there.
    pub async fn join(&mut self, room: RoomId) -> Result<Vec<StreamInfo>, ClientError> {
        self.join_with_key(room, None).await
    }

    /// Join a room with TRTC's privateMapKey for it (where the app requires one).
    pub async fn join_with_key(
        &mut self,
        room: RoomId,
        private_map_key: Option<String>,
    ) -> Result<Vec<StreamInfo>, ClientError> {
        let streams = match &self.engine {
            Engine::Janus(j) => j.join().await?,
            Engine::Callbox(signaling) => {
                let (room_id, str_room_id) = match room {
                    RoomId::Num(n) => (Some(n as i64), None),
                    RoomId::Str(s) => (None, Some(s)),
                };
                let c = &self.config;
                let reply = signaling
                    .request(|id| ClientMessage::Join {
                        id,
                        version: PROTOCOL_VERSION,
                        sdk_app_id: c.sdk_app_id,
                        user_id: c.user_id.clone(),
                        user_sig: c.user_sig.clone(),
                        room_id,
                        str_room_id,
                        private_map_key,
                    })
                    .await?;
                let ServerMessage::Joined {
                    streams,
                    ice_servers,
                    ..
                } = reply
                else {
                    return Err(unexpected(reply));
                };
                // The room's TURN servers, for the connections made from now on.
                self.config.net.room_ice_servers = ice_servers;
                streams
            }
        };
        self.joined = true;
        Ok(streams)
    }

    /// Publish audio and/or video; returns once media can flow.
    pub async fn publish(&mut self, audio: bool, video: bool) -> Result<&LocalStream, ClientError> {
        if self.local.is_some() {
            return Err(ClientError::InvalidOperation("already publishing"));
        }
        let (mut uplink, sdp) =
            Uplink::offer(&self.config.net, audio, video, self.playout, &self.activity).await?;
        let negotiated = async {
            let (stream_id, answer) = match &self.engine {
                Engine::Janus(j) => j.publish(sdp).await?,
                Engine::Callbox(signaling) => {
                    let reply = signaling
                        .request(|id| ClientMessage::Publish {
                            id,
                            sdp,
                            audio,
                            video,
                        })
                        .await?;
                    let ServerMessage::Published { stream_id, sdp, .. } = reply else {
                        return Err(unexpected(reply));
                    };
                    (stream_id, sdp)
                }
            };
            uplink.finish(answer).await?;
            Ok(stream_id)
        }
        .await;
        let stream_id = match negotiated {
            Ok(s) => s,
            Err(e) => {
                uplink.peer.close().await;
                return Err(e);
            }
        };
        Ok(self.local.insert(LocalStream { uplink, stream_id }))
    }

    pub fn local_stream(&self) -> Option<&LocalStream> {
        self.local.as_ref()
    }

    pub async fn unpublish(&mut self) -> Result<(), ClientError> {
        let local = self
            .local
            .take()
            .ok_or(ClientError::InvalidOperation("not publishing"))?;
        local.uplink.peer.close().await;
        match &self.engine {
            Engine::Janus(j) => j.unpublish().await,
            Engine::Callbox(signaling) => signaling
                .request(|id| ClientMessage::Unpublish { id })
                .await
                .map(|_| ()),
        }
    }

    /// Subscribe to a remote stream's audio and video (from `stream-added`
    /// or the join reply).
    pub async fn subscribe(&mut self, info: &StreamInfo) -> Result<RemoteStream, ClientError> {
        self.subscribe_to(info, Receive::BOTH).await
    }

    /// Subscribe to what `receive` asks of a remote stream (TRTC's
    /// `subscribe(stream, {audio, video})`): only those kinds are negotiated.
    pub async fn subscribe_to(
        &mut self,
        info: &StreamInfo,
        receive: Receive,
    ) -> Result<RemoteStream, ClientError> {
        let pending = self.subscription(info, receive).await?;
        Ok(self.adopt(pending))
    }

    /// A subscription negotiated without borrowing the client, so a caller
    /// can run it beside its own work (the device keeps sending media
    /// meanwhile); [`Client::adopt`] then takes it in.
    pub fn subscription(
        &self,
        info: &StreamInfo,
        receive: Receive,
    ) -> impl std::future::Future<Output = Result<Subscription, ClientError>> + Send + 'static {
        let (net, activity) = (self.config.net.clone(), self.activity.clone());
        let engine = self.engine.clone();
        let info = info.clone();
        async move {
            let (downlink, packets) = match engine {
                Engine::Janus(j) => j.subscribe(&info, receive, &net, &activity).await?,
                Engine::Callbox(signaling) => {
                    offer_subscription(&signaling, &info, receive, &net, &activity).await?
                }
            };
            Ok(Subscription {
                downlink,
                info,
                packets,
            })
        }
    }

    /// Take in a negotiated subscription: the client owns its connection
    /// from here (closed by `unsubscribe`, `leave`, `close_media`).
    pub fn adopt(&mut self, s: Subscription) -> RemoteStream {
        let keyframe = s.downlink.keyframe_requester();
        self.downlinks.insert(s.info.stream_id.clone(), s.downlink);
        RemoteStream {
            info: s.info,
            packets: s.packets,
            keyframe,
        }
    }

    pub async fn unsubscribe(&mut self, stream_id: &str) -> Result<(), ClientError> {
        if let Some(d) = self.downlinks.remove(stream_id) {
            d.peer.close().await;
        }
        let stream_id = stream_id.to_owned();
        match &self.engine {
            Engine::Janus(j) => j.unsubscribe(&stream_id).await,
            Engine::Callbox(signaling) => signaling
                .request(|id| ClientMessage::Unsubscribe { id, stream_id })
                .await
                .map(|_| ()),
        }
    }

    pub async fn mute(&mut self, kind: MediaKind, muted: bool) -> Result<(), ClientError> {
        match &self.engine {
            Engine::Janus(j) => j.mute(kind, muted).await,
            Engine::Callbox(signaling) => signaling
                .request(|id| ClientMessage::Mute { id, kind, muted })
                .await
                .map(|_| ()),
        }
    }

    /// Close all media connections (after leaving or being pushed out).
    pub async fn close_media(&mut self) {
        if let Some(l) = self.local.take() {
            l.uplink.peer.close().await;
        }
        for (_, d) in self.downlinks.drain() {
            d.peer.close().await;
        }
    }

    pub async fn leave(&mut self) -> Result<(), ClientError> {
        self.close_media().await;
        if !self.joined {
            return Err(ClientError::InvalidOperation("not in a room"));
        }
        self.joined = false;
        match &self.engine {
            Engine::Janus(j) => j.leave().await,
            Engine::Callbox(signaling) => signaling
                .request(|id| ClientMessage::Leave { id })
                .await
                .map(|_| ()),
        }
    }

    /// The next room event; `None` once signaling has closed. After
    /// `client-banned` the room has stopped this client's media; release it
    /// with [`Client::close_media`].
    ///
    /// Cancel-safe, for use in `select!`: nothing is awaited once an event
    /// is taken off the queue. (Closing the media here once lost a ban whose
    /// close was still pending when another branch won the select.)
    pub async fn next_event(&mut self) -> Option<ServerMessage> {
        let ev = self.events.recv().await?;
        if matches!(ev, ServerMessage::ClientBanned { .. }) {
            self.joined = false;
        }
        Some(ev)
    }
}

/// A subscription on the callbox room service: the client offers, the
/// room answers.
async fn offer_subscription(
    signaling: &Signaling,
    info: &StreamInfo,
    receive: Receive,
    net: &NetConfig,
    activity: &RoomActivity,
) -> Result<(Downlink, mpsc::Receiver<RemotePacket>), ClientError> {
    let (mut downlink, sdp) = Downlink::offer(net, activity, receive).await?;
    let stream_id = info.stream_id.clone();
    let negotiated = async {
        let reply = signaling
            .request(|id| ClientMessage::Subscribe { id, stream_id, sdp })
            .await?;
        let ServerMessage::Subscribed { sdp, .. } = reply else {
            return Err(unexpected(reply));
        };
        downlink.finish(sdp).await
    }
    .await;
    match negotiated {
        Ok(packets) => Ok((downlink, packets)),
        Err(e) => {
            downlink.peer.close().await;
            Err(e)
        }
    }
}
