//! The room service's network face: HTTP(S) with the WebSocket signaling
//! endpoint (`/ws`), the admin API (`/api/admin/{Action}`), health and stats,
//! the development userSig endpoint, and the browser SDK and pages.
//!
//! [`serve`] takes its listener, media socket and shutdown future from the
//! caller, so tests bind port 0 and stop the service cleanly. Everything a
//! client can hold is bounded by `[limits]`: connections (caps at accept),
//! time (header, join and silence deadlines, server pings), the queue of
//! messages to each WebSocket, and room sizes. A media thread that dies or
//! stalls fails `/health` and stops the service for systemd to restart.

use crate::private_map_key;
use crate::protocol::{
    self, code, ClientMessage, MessageType, Reason, RoomId, ServerMessage, PROTOCOL_VERSION,
};
use crate::room::accept::{CappedAcceptor, ConnectionCaps};
use crate::room::admin;
use crate::room::config::{Limits, PrivateMapKeyPolicy, RoomConfig, ServerConfig};
use crate::room::hub::{AppState, Outbox, SharedHub};
use crate::room::log_limit::{clip, RateLimitedLog};
use crate::room::sfu::{Health, MediaTcp, Report, Role, Sfu, SfuError};
use crate::room::state::{ConnId, Joiner, Privileges, RoomLimits};
use crate::usersig;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Hard cap on a WebSocket frame; larger than the protocol limit so an
/// oversized message gets a protocol error instead of a dropped connection.
const WS_FRAME_LIMIT: usize = 1024 * 1024;

/// Largest HTTP body taken (admin calls and dev userSigs are tiny).
const MAX_BODY: usize = 16 * 1024;
/// Longest userSig the development endpoint signs.
const DEV_USERSIG_MAX_S: u64 = 86_400;

/// Warnings about what callers send, at most 10 a second.
static BAD_INPUT: LazyLock<RateLimitedLog> = LazyLock::new(|| RateLimitedLog::per_second(10));

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("E_ROOM_MEDIA_SOCKET: cannot start the media service: {0}")]
    Media(std::io::Error),
    #[error("E_ROOM_TLS: cannot load the TLS certificate/key: {0}")]
    Tls(std::io::Error),
    #[error("E_ROOM_HTTP: the HTTP server failed: {0}")]
    Http(std::io::Error),
    #[error("E_SFU_DEAD: the media thread {0}; the service stopped so it can be restarted")]
    MediaDied(String),
}

fn router(state: AppState) -> Router {
    let mut app = Router::new()
        .route("/health", get(health))
        .route("/ws", get(ws_upgrade))
        .route("/api/stats", get(stats))
        .route("/api/admin/{action}", post(admin::handle))
        .route(
            "/trtc.js",
            get(|| web(JS, include_str!("../../web/trtc.js"))),
        )
        .route(
            "/trtc.mjs",
            get(|| web(JS, include_str!("../../web/trtc.mjs"))),
        )
        .route(
            "/seed.html",
            get(|| web(HTML, include_str!("../../web/seed.html"))),
        )
        .route("/", get(|| web(HTML, include_str!("../../web/index.html"))));
    if state.config.dev.usersig_endpoint {
        app = app.route("/api/dev/usersig", post(dev_usersig));
    }
    if let Some(root) = &state.config.server.web_root {
        // The root as the kernel resolves it: served files must stay inside.
        let root_real = root.canonicalize().unwrap_or_else(|_| root.clone());
        let files = Router::new()
            .fallback_service(tower_http::services::ServeDir::new(root))
            .layer(axum::middleware::from_fn_with_state(root_real, inside_root));
        app = app.fallback_service(files);
    }
    app.layer(DefaultBodyLimit::max(MAX_BODY)).with_state(state)
}

/// A static file is served only if it resolves inside `web_root`: no
/// symlink leads out of it.
async fn inside_root(State(root): State<PathBuf>, req: Request, next: Next) -> Response {
    let path = req.uri().path().trim_start_matches('/');
    let relative = std::path::Path::new(path);
    let plain = relative
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    let inside = plain
        && match root.join(relative).canonicalize() {
            Ok(real) => real.starts_with(&root),
            // Not there: ServeDir answers 404 itself.
            Err(_) => true,
        };
    if inside {
        next.run(req).await
    } else {
        BAD_INPUT.warn(|| format!("E_ROOM_STATIC: {} leads outside web_root", clip(path)));
        StatusCode::NOT_FOUND.into_response()
    }
}

const JS: &str = "text/javascript; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";

/// The browser SDK and its pages are built into the binary, so an
/// installed room service serves them without a web root.
async fn web(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The media TCP listener, when configured, and the address it is
/// advertised at: `tcp_advertise`, else the listener's own when it names
/// an address, else the UDP advertise address with the TCP port.
fn media_tcp(
    media: &crate::room::config::MediaConfig,
    advertise: std::net::SocketAddr,
) -> std::io::Result<Option<MediaTcp>> {
    let Some(listen) = media.tcp_listen else {
        return Ok(None);
    };
    let listener = std::net::TcpListener::bind(listen)?;
    let local = listener.local_addr()?;
    let advertise = match (media.tcp_advertise, local.ip().is_unspecified()) {
        (Some(a), _) => a,
        (None, false) => local,
        (None, true) => std::net::SocketAddr::new(advertise.ip(), local.port()),
    };
    log::info!("media over TCP (ICE-TCP) on {local}, advertised {advertise}");
    Ok(Some(MediaTcp {
        listener,
        advertise,
    }))
}

/// Run the room service until `shutdown` resolves, or until its media
/// thread dies (then `ServeError::MediaDied`, for systemd to restart it).
pub async fn serve(
    config: RoomConfig,
    listener: std::net::TcpListener,
    media_socket: std::net::UdpSocket,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let media_addr = media_socket.local_addr().map_err(ServeError::Media)?;
    let advertise = config.media.advertise.unwrap_or(media_addr);
    let tcp = media_tcp(&config.media, advertise).map_err(ServeError::Media)?;
    let workers = config.media.worker_threads();
    let (sfu, reports) =
        Sfu::start(media_socket, advertise, tcp, workers).map_err(ServeError::Media)?;
    log::info!("media: {workers} forwarding worker(s) on {media_addr}");
    let limits = config.limits.clone();
    let state = AppState {
        hub: SharedHub::new(sfu.clone(), room_limits(&limits)),
        caps: ConnectionCaps::new(limits.max_connections, limits.max_connections_per_ip),
        config: Arc::new(config),
    };
    tokio::spawn(relay_reports(state.hub.clone(), reports));
    let handle = axum_server::Handle::new();
    let died = Arc::new(std::sync::Mutex::new(None));
    let watcher = tokio::spawn(watch_media(sfu.clone(), handle.clone(), Arc::clone(&died)));
    let _media = MediaGuard { sfu, watcher };
    let h = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        h.graceful_shutdown(Some(Duration::from_secs(2)));
    });
    let app = router(state.clone());
    listener.set_nonblocking(true).map_err(ServeError::Http)?;
    let service = app.into_make_service();
    let acceptor = CappedAcceptor::new(state.caps.clone(), limits.idle_timeout());
    let served = match (&state.config.server.tls_cert, &state.config.server.tls_key) {
        (Some(cert), Some(key)) => {
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .map_err(ServeError::Tls)?;
            let tls = axum_server::tls_rustls::RustlsAcceptor::new(tls).acceptor(acceptor);
            let mut server = axum_server::from_tcp(listener).acceptor(tls);
            http_limits(server.http_builder(), &limits);
            server.handle(handle).serve(service).await
        }
        _ => {
            let mut server = axum_server::from_tcp(listener).acceptor(acceptor);
            http_limits(server.http_builder(), &limits);
            server.handle(handle).serve(service).await
        }
    };
    served.map_err(ServeError::Http)?;
    let why = died.lock().unwrap_or_else(|e| e.into_inner()).take();
    match why {
        Some(why) => Err(ServeError::MediaDied(why)),
        None => Ok(()),
    }
}

/// Stops the media threads however `serve` returns, once the watcher that
/// would take their end for a death is gone.
struct MediaGuard {
    sfu: Sfu,
    watcher: tokio::task::JoinHandle<()>,
}

impl Drop for MediaGuard {
    fn drop(&mut self) {
        self.watcher.abort();
        self.sfu.stop();
    }
}

/// hyper's header read timeout (it also closes connections idle between
/// requests, and slowloris senders); it only runs with a timer.
fn http_limits(
    builder: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    limits: &Limits,
) {
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout());
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(limits.ping_interval())
        .keep_alive_timeout(limits.peer_timeout());
}

fn room_limits(l: &Limits) -> RoomLimits {
    RoomLimits {
        members_per_room: l.max_members_per_room,
        streams_per_room: l.max_streams_per_room,
        subscriptions_per_client: l.max_subscriptions_per_client,
        rooms_per_app: l.max_rooms_per_app,
        rejoin_block: Duration::from_secs(l.removed_rejoin_block_s),
    }
}

/// What the SFU reports: uplinks it dropped on its own leave the room's
/// books too, so others see `stream-removed` and nobody subscribes to a
/// dead stream; network quality goes to its client.
async fn relay_reports(hub: SharedHub, mut reports: mpsc::Receiver<Report>) {
    while let Some(report) = reports.recv().await {
        match report {
            Report::Lost(l) => {
                log::info!(
                    "conn {}: media of {} lost ({:?})",
                    l.conn,
                    l.stream_id,
                    l.role
                );
                if l.role == Role::Uplink {
                    hub.update(|rooms, _| rooms.uplink_lost(l.conn, &l.stream_id));
                }
            }
            Report::Quality(conn, q) => hub.lock().send(conn, ServerMessage::NetworkQuality(q)),
        }
    }
}

/// Stop the service when the media thread dies or stalls: a room service
/// without media must not look healthy.
async fn watch_media(
    sfu: Sfu,
    handle: axum_server::Handle,
    died: Arc<std::sync::Mutex<Option<String>>>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let why = match sfu.health() {
            Health::Running => continue,
            Health::Stopped => "stopped".to_owned(),
            Health::Stalled(d) => format!("made no progress for {d:.1?}"),
        };
        log::error!("E_SFU_DEAD: the media thread {why}; stopping so the service is restarted");
        *died.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
        handle.graceful_shutdown(Some(Duration::from_secs(1)));
        return;
    }
}

/// `ok` while the media thread runs, `503` when it does not; room and
/// connection counts only for the admin key.
async fn health(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let media = s.hub.sfu().health();
    let ok = media == Health::Running;
    let mut body = json!({
        "status": if ok { "ok" } else { "media-down" },
        "protocol": PROTOCOL_VERSION,
    });
    if admin::authorized(&s.config, &headers) {
        let hub = s.hub.lock();
        body["rooms"] = hub.rooms.room_count().into();
        body["members"] = hub.rooms.member_count().into();
        body["connections"] = s.caps.open().into();
    }
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn stats(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if !admin::authorized(&s.config, &headers) {
        return admin::unauthorized();
    }
    match s.hub.sfu().stats().await {
        Some(st) => Json(st).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "media service stopped").into_response(),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DevUserSigRequest {
    sdk_app_id: u64,
    user_id: String,
    #[serde(default = "default_expire")]
    expire: u64,
}

fn default_expire() -> u64 {
    DEV_USERSIG_MAX_S
}

/// Development only (`dev.usersig_endpoint`, on a loopback listener): sign
/// a userSig of at most a day for anyone who asks.
async fn dev_usersig(State(s): State<AppState>, body: Json<DevUserSigRequest>) -> Response {
    if protocol::validate_user_id(&body.user_id).is_err() {
        return (StatusCode::BAD_REQUEST, "invalid userId").into_response();
    }
    if !(1..=DEV_USERSIG_MAX_S).contains(&body.expire) {
        let why = format!("expire must be 1 to {DEV_USERSIG_MAX_S} seconds");
        return (StatusCode::BAD_REQUEST, why).into_response();
    }
    let Some(key) = s.config.app_key(body.sdk_app_id) else {
        return (StatusCode::NOT_FOUND, "unknown sdkAppId").into_response();
    };
    let sig = usersig::generate(
        body.sdk_app_id,
        key.expose(),
        &body.user_id,
        body.expire,
        usersig::unix_now(),
        None,
    );
    Json(json!({ "userSig": sig, "developmentOnly": true })).into_response()
}

/// A page may open the WebSocket from the room's own origin or one the
/// config allows; clients that are not browsers send no `Origin`.
fn origin_allowed(server: &ServerConfig, headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return headers.get(header::ORIGIN).is_none();
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let same =
        host.is_some_and(|h| origin == format!("http://{h}") || origin == format!("https://{h}"));
    same || server.allowed_origins.iter().any(|o| o == origin)
}

async fn ws_upgrade(
    State(s): State<AppState>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if !origin_allowed(&s.config.server, &headers) {
        let origin = headers
            .get(header::ORIGIN)
            .map(|o| clip(&String::from_utf8_lossy(o.as_bytes())));
        BAD_INPUT.warn(|| format!("E_SIGNAL_ORIGIN: WebSocket from origin {origin:?} refused"));
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    ws.max_message_size(WS_FRAME_LIMIT)
        .max_frame_size(WS_FRAME_LIMIT)
        .on_upgrade(move |socket| connection(s, socket))
}

/// Why a signaling connection was closed by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closed {
    ByClient,
    SlowReader,
    NoJoin,
    Silent,
}

/// One signaling connection: requests in, replies and events out, all
/// through one bounded queue so the client sees them in order. The server
/// pings; a client silent for `peer_timeout`, one that has not joined
/// within `join_timeout`, or one that lets its queue fill is dropped, and
/// its room sees it leave.
async fn connection(state: AppState, socket: WebSocket) {
    let limits = state.config.limits.clone();
    let (outbox, out_rx, cut) = Outbox::new(limits.send_queue);
    let conn = state.hub.lock().connect(outbox.clone());
    log::debug!("conn {conn}: connected");
    let (ws_tx, mut ws_rx) = socket.split();
    let writer = tokio::spawn(write_loop(ws_tx, out_rx, limits.ping_interval()));
    let join_by = tokio::time::Instant::now() + limits.join_timeout();
    let mut joined = false;
    let mut heard = Instant::now();
    let mut check = tokio::time::interval(Duration::from_millis(500));
    let closed = loop {
        tokio::select! {
            frame = ws_rx.next() => {
                heard = Instant::now();
                let text = match frame {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Binary(_))) => {
                        outbox.send(ServerMessage::error(None, code::INVALID_PARAMETER, Reason::BinaryMessage, "signaling messages are JSON text"));
                        continue;
                    }
                    Some(Ok(Message::Close(_)) | Err(_)) | None => break Closed::ByClient,
                    Some(Ok(_)) => continue,
                };
                // Requests run one at a time per connection, in order.
                let reply = request(&state, conn, text.as_str()).await;
                joined |= matches!(reply, ServerMessage::Joined { .. });
                outbox.send(reply);
            }
            _ = cut.notified() => break Closed::SlowReader,
            _ = tokio::time::sleep_until(join_by), if !joined => break Closed::NoJoin,
            _ = check.tick() => if heard.elapsed() > limits.peer_timeout() {
                break Closed::Silent;
            },
        }
    };
    if closed != Closed::ByClient {
        BAD_INPUT
            .warn(|| format!("E_SIGNAL_DROPPED: conn {conn}: closed by the server: {closed:?}"));
    }
    state.hub.lock().disconnect(conn);
    drop(outbox);
    writer.abort();
    log::debug!("conn {conn}: closed ({closed:?})");
}

/// Send queued messages, and a ping every `ping` (the client's pong, like
/// any frame, proves it is still there).
async fn write_loop(
    mut ws_tx: SplitSink<WebSocket, Message>,
    mut out_rx: mpsc::Receiver<ServerMessage>,
    ping: Duration,
) {
    let mut pings = tokio::time::interval(ping);
    pings.tick().await;
    loop {
        let frame = tokio::select! {
            msg = out_rx.recv() => match msg.and_then(|m| serde_json::to_string(&m).ok()) {
                Some(text) => Message::Text(text.into()),
                None => break,
            },
            _ = pings.tick() => Message::Ping(Vec::new().into()),
        };
        if ws_tx.send(frame).await.is_err() {
            break;
        }
    }
    let _ = ws_tx.close().await;
}

/// Parse a request and handle it; the reply for the connection's queue.
async fn request(state: &AppState, conn: ConnId, text: &str) -> ServerMessage {
    if text.len() > protocol::MAX_MESSAGE_BYTES {
        BAD_INPUT.warn(|| format!("E_SIGNAL_TOO_LARGE: conn {conn}: {} bytes", text.len()));
        return ServerMessage::error(
            None,
            code::INVALID_PARAMETER,
            Reason::MessageTooLarge,
            format!(
                "messages are limited to {} bytes",
                protocol::MAX_MESSAGE_BYTES
            ),
        );
    }
    let msg = match serde_json::from_str::<ClientMessage>(text) {
        Ok(m) => m,
        Err(e) => return parse_error(text, &e),
    };
    let id = msg.id();
    match handle(state, conn, msg).await {
        Ok(reply) => reply,
        Err(e) => e.into_message(id),
    }
}

/// Explain a message that does not parse; keep the request id when there is one.
fn parse_error(text: &str, e: &serde_json::Error) -> ServerMessage {
    let value: Option<serde_json::Value> = serde_json::from_str(text).ok();
    let id = value
        .as_ref()
        .and_then(|v| v.get("id"))
        .and_then(|v| v.as_u64());
    let (reason, message) = match value
        .as_ref()
        .map(|v| v.get("type").and_then(|t| t.as_str()))
    {
        None => (
            Reason::MalformedJson,
            format!("not JSON: {}", clip(&e.to_string())),
        ),
        Some(None) => (
            Reason::MissingType,
            "a message needs a string \"type\"".to_owned(),
        ),
        // The caller's own text is never sent back or logged whole.
        Some(Some(t)) if MessageType::parse(t).is_none() => (
            Reason::UnknownType,
            format!("unknown message type {:?}", clip(t)),
        ),
        Some(Some(t)) => (
            Reason::InvalidFields,
            format!("bad {t} message: {}", clip(&e.to_string())),
        ),
    };
    BAD_INPUT.warn(|| format!("E_SIGNAL_BAD_MESSAGE: {reason}: {message}"));
    ServerMessage::error(id, code::INVALID_PARAMETER, reason, message)
}

/// A refused request: TRTC code, stable reason, human message.
struct Refusal {
    code: u32,
    reason: Reason,
    message: String,
}

impl Refusal {
    fn new(code: u32, reason: Reason, message: impl Into<String>) -> Self {
        Refusal {
            code,
            reason,
            message: message.into(),
        }
    }

    fn into_message(self, id: u64) -> ServerMessage {
        ServerMessage::Error {
            id: Some(id),
            code: self.code,
            reason: self.reason,
            message: self.message,
        }
    }
}

impl From<crate::room::state::RoomError> for Refusal {
    fn from(e: crate::room::state::RoomError) -> Self {
        Refusal::new(e.code(), e.reason(), e.to_string())
    }
}

fn sfu_refusal(e: SfuError) -> Refusal {
    match e {
        // What the parser said, clipped; never the server's addresses.
        SfuError::BadSdp(why) => Refusal::new(
            code::INVALID_PARAMETER,
            Reason::BadSdp,
            format!("the SDP offer does not parse: {}", clip(&why)),
        ),
        SfuError::Refused(why) => Refusal::new(
            code::INVALID_PARAMETER,
            Reason::BadSdp,
            format!("the SDP offer cannot be answered: {}", clip(&why)),
        ),
        SfuError::Stopped => Refusal::new(code::UNKNOWN, Reason::MediaStopped, e.to_string()),
    }
}

/// The media kinds an offer asks for (m-lines not rejected with port 0).
fn offered_kinds(sdp: &str) -> (bool, bool) {
    let live = |kind: &str| {
        sdp.lines().any(|l| {
            l.strip_prefix("m=")
                .and_then(|m| m.strip_prefix(kind))
                .and_then(|rest| rest.split_whitespace().next())
                .is_some_and(|port| port != "0")
        })
    };
    (live("audio "), live("video "))
}

async fn handle(
    state: &AppState,
    conn: ConnId,
    msg: ClientMessage,
) -> Result<ServerMessage, Refusal> {
    match msg {
        ClientMessage::Ping { id } => Ok(ServerMessage::Pong { id }),
        ClientMessage::Join {
            id,
            version,
            sdk_app_id,
            user_id,
            user_sig,
            room_id,
            str_room_id,
            private_map_key,
        } => {
            let join = JoinRequest {
                version,
                sdk_app_id,
                user_id: &user_id,
                user_sig: &user_sig,
                room_id,
                str_room_id,
                private_map_key: private_map_key.as_deref(),
            };
            let (room, privileges) = authenticate(state, join)?;
            let joiner = Joiner {
                sdk_app_id,
                user_id: &user_id,
                room: room.clone(),
                privileges,
            };
            let joined = state
                .hub
                .update(|rooms, _| rooms.join(conn, joiner, Instant::now()))
                .map_err(|e| Refusal::new(code::JOIN_ROOM_FAILED, e.reason(), e.to_string()))?;
            log::info!("conn {conn}: {user_id} joined {room} of app {sdk_app_id}");
            let now_s = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let ice_servers = state
                .config
                .turn
                .iter()
                .map(|t| t.for_user(&user_id, now_s));
            Ok(ServerMessage::Joined {
                id,
                ice_servers: ice_servers.collect(),
                user_id,
                peers: joined.peers,
                streams: joined.streams,
            })
        }
        ClientMessage::Publish {
            id,
            sdp,
            audio,
            video,
        } => publish(state, conn, id, sdp, (audio, video)).await,
        ClientMessage::Unpublish { id } => {
            state.hub.update(|rooms, _| rooms.unpublish(conn))?;
            Ok(ServerMessage::Ok { id })
        }
        ClientMessage::Subscribe { id, stream_id, sdp } => {
            subscribe(state, conn, id, stream_id, sdp).await
        }
        ClientMessage::Unsubscribe { id, stream_id } => {
            state
                .hub
                .update(|rooms, _| rooms.unsubscribe(conn, &stream_id))?;
            Ok(ServerMessage::Ok { id })
        }
        ClientMessage::Mute { id, kind, muted } => {
            state.hub.update(|rooms, _| rooms.mute(conn, kind, muted))?;
            Ok(ServerMessage::Ok { id })
        }
        ClientMessage::Leave { id } => {
            state.hub.update(|rooms, _| rooms.leave(conn))?;
            Ok(ServerMessage::Ok { id })
        }
    }
}

/// Publish: the tracks it declares or its offer carries must be permitted.
async fn publish(
    state: &AppState,
    conn: ConnId,
    id: u64,
    sdp: String,
    (audio, video): (bool, bool),
) -> Result<ServerMessage, Refusal> {
    let offered = offered_kinds(&sdp);
    let (stream_id, room, sfu) = {
        let mut hub = state.hub.lock();
        hub.rooms
            .can_publish(conn, audio || offered.0, video || offered.1)?;
        let room = hub.rooms.room_of(conn)?;
        (hub.rooms.next_stream_id(), room, hub.sfu.clone())
    };
    let answer = sfu
        .open(conn, &room, &stream_id, Role::Uplink, sdp)
        .await
        .map_err(sfu_refusal)?;
    state.hub.update(|rooms, sfu| {
        let published = rooms.publish(conn, stream_id.clone(), audio, video);
        if published.is_err() {
            // The room changed while media was negotiated (kicked, left, ...).
            sfu.end_publication(stream_id.clone());
        }
        published
    })?;
    Ok(ServerMessage::Published {
        id,
        stream_id,
        sdp: answer,
    })
}

/// Subscribe to what the offer asks to receive, if permitted.
async fn subscribe(
    state: &AppState,
    conn: ConnId,
    id: u64,
    stream_id: String,
    sdp: String,
) -> Result<ServerMessage, Refusal> {
    let kinds = offered_kinds(&sdp);
    let (room, sfu) = {
        let hub = state.hub.lock();
        hub.rooms.can_subscribe(conn, &stream_id, kinds)?;
        (hub.rooms.room_of(conn)?, hub.sfu.clone())
    };
    let answer = sfu
        .open(conn, &room, &stream_id, Role::Downlink, sdp)
        .await
        .map_err(sfu_refusal)?;
    state.hub.update(|rooms, sfu| {
        let subscribed = rooms.subscribe(conn, &stream_id, kinds);
        if subscribed.is_err() {
            sfu.end_subscription(conn, stream_id.clone());
        }
        subscribed
    })?;
    Ok(ServerMessage::Subscribed {
        id,
        stream_id,
        sdp: answer,
    })
}

/// What a join carries, to check before room membership.
struct JoinRequest<'a> {
    version: u32,
    sdk_app_id: u64,
    user_id: &'a str,
    user_sig: &'a str,
    room_id: Option<i64>,
    str_room_id: Option<String>,
    private_map_key: Option<&'a str>,
}

/// Check everything a join carries except room membership: the room it
/// names and what the joiner may do there.
fn authenticate(state: &AppState, j: JoinRequest<'_>) -> Result<(RoomId, Privileges), Refusal> {
    let fail = |reason: Reason, message: String| {
        BAD_INPUT.warn(|| format!("E_JOIN_REFUSED: {reason}: {message}"));
        Refusal::new(code::JOIN_ROOM_FAILED, reason, message)
    };
    if j.version != PROTOCOL_VERSION {
        return Err(fail(
            Reason::ProtocolVersion,
            format!(
                "protocol version {} is not supported; this server speaks {PROTOCOL_VERSION}",
                j.version
            ),
        ));
    }
    protocol::validate_user_id(j.user_id)
        .map_err(|e| fail(Reason::InvalidUserId, e.to_string()))?;
    let room = RoomId::from_fields(j.room_id, j.str_room_id.as_deref())
        .map_err(|e| fail(Reason::InvalidRoomId, e.to_string()))?;
    let app = state.config.app(j.sdk_app_id).ok_or_else(|| {
        fail(
            Reason::UnknownSdkAppId,
            format!("sdkAppId {} is not served here", j.sdk_app_id),
        )
    })?;
    let key = app.secret_key.expose();
    let now = usersig::unix_now();
    let claims = usersig::verify(j.user_sig, j.sdk_app_id, key, j.user_id, now)
        .map_err(|e| fail(e.reason(), format!("userSig refused: {e}")))?;
    let max_days = state.config.limits.max_usersig_lifetime_days;
    if claims.expire > max_days * 86_400 {
        return Err(fail(
            Reason::UsersigTooLong,
            format!(
                "userSig valid for {} days; this server takes at most {max_days}",
                claims.expire / 86_400
            ),
        ));
    }
    let privileges = match (app.private_map_key, j.private_map_key) {
        (PrivateMapKeyPolicy::Off, _) => Privileges::ALL,
        (PrivateMapKeyPolicy::Required, None) => {
            return Err(fail(
                Reason::PrivateMapKeyRequired,
                format!(
                    "sdkAppId {} requires a privateMapKey for {room}",
                    j.sdk_app_id
                ),
            ))
        }
        (PrivateMapKeyPolicy::Required, Some(pmk)) => {
            private_map_key::verify(pmk, j.sdk_app_id, key, j.user_id, &room, now)
                .map(Privileges)
                .map_err(|e| {
                    fail(
                        Reason::PrivateMapKeyInvalid,
                        format!("privateMapKey refused: {e}"),
                    )
                })?
        }
    };
    Ok((room, privileges))
}
