//! The room service's network face: HTTP(S) with the WebSocket signaling
//! endpoint (`/ws`), the admin API (`/api/admin/{Action}`), health and stats,
//! the development userSig endpoint, and the browser SDK and pages.
//!
//! [`serve`] takes its listener, media socket and shutdown future from the
//! caller, so tests bind port 0 and stop the service cleanly.

use crate::protocol::{
    self, code, ClientMessage, MessageType, Reason, RoomId, ServerMessage, PROTOCOL_VERSION,
};
use crate::room::admin;
use crate::room::config::RoomConfig;
use crate::room::hub::{AppState, SharedHub};
use crate::room::sfu::{Role, Sfu, SfuError};
use crate::room::state::ConnId;
use crate::usersig;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Hard cap on a WebSocket frame; larger than the protocol limit so an
/// oversized message gets a protocol error instead of a dropped connection.
const WS_FRAME_LIMIT: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("E_ROOM_MEDIA_SOCKET: cannot start the media service: {0}")]
    Media(std::io::Error),
    #[error("E_ROOM_TLS: cannot load the TLS certificate/key: {0}")]
    Tls(std::io::Error),
    #[error("E_ROOM_HTTP: the HTTP server failed: {0}")]
    Http(std::io::Error),
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
        app = app.fallback_service(tower_http::services::ServeDir::new(root));
    }
    app.with_state(state)
}

const JS: &str = "text/javascript; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";

/// The browser SDK and its pages are built into the binary, so an
/// installed room service serves them without a web root.
async fn web(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (axum::http::header::CONTENT_TYPE, content_type),
            (axum::http::header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// Run the room service until `shutdown` resolves.
pub async fn serve(
    config: RoomConfig,
    listener: std::net::TcpListener,
    media_socket: std::net::UdpSocket,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let media_addr = media_socket.local_addr().map_err(ServeError::Media)?;
    let advertise = config.media.advertise.unwrap_or(media_addr);
    let sfu = Sfu::start(media_socket, advertise).map_err(ServeError::Media)?;
    let state = AppState {
        config: Arc::new(config),
        hub: SharedHub::new(sfu),
    };
    let app = router(state.clone());
    listener.set_nonblocking(true).map_err(ServeError::Http)?;
    let handle = axum_server::Handle::new();
    let h = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        h.graceful_shutdown(Some(std::time::Duration::from_secs(2)));
    });
    let service = app.into_make_service();
    match (&state.config.server.tls_cert, &state.config.server.tls_key) {
        (Some(cert), Some(key)) => {
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .map_err(ServeError::Tls)?;
            axum_server::from_tcp_rustls(listener, tls)
                .handle(handle)
                .serve(service)
                .await
                .map_err(ServeError::Http)
        }
        _ => axum_server::from_tcp(listener)
            .handle(handle)
            .serve(service)
            .await
            .map_err(ServeError::Http),
    }
}

async fn health(State(s): State<AppState>) -> Json<serde_json::Value> {
    let (rooms, members) = {
        let hub = s.hub.lock();
        (hub.rooms.room_count(), hub.rooms.member_count())
    };
    Json(
        json!({ "status": "ok", "protocol": PROTOCOL_VERSION, "rooms": rooms, "members": members }),
    )
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
    86400
}

/// Development only (see `dev.usersig_endpoint`): sign a userSig for anyone.
async fn dev_usersig(State(s): State<AppState>, body: Json<DevUserSigRequest>) -> Response {
    if protocol::validate_user_id(&body.user_id).is_err() {
        return (StatusCode::BAD_REQUEST, "invalid userId").into_response();
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

async fn ws_upgrade(State(s): State<AppState>, ws: WebSocketUpgrade) -> Response {
    ws.max_message_size(WS_FRAME_LIMIT)
        .max_frame_size(WS_FRAME_LIMIT)
        .on_upgrade(move |socket| connection(s, socket))
}

/// One signaling connection: requests in, replies and events out, all
/// through one queue so the client sees them in order.
async fn connection(state: AppState, socket: WebSocket) {
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<ServerMessage>();
    let conn = state.hub.lock().connect(out_tx.clone());
    log::debug!("conn {conn}: connected");
    let (mut ws_tx, mut ws_rx) = socket.split();
    let writer = tokio::spawn(async move {
        while let Some(msg) = out_rx.recv().await {
            let Ok(text) = serde_json::to_string(&msg) else {
                continue;
            };
            if ws_tx.send(Message::Text(text.into())).await.is_err() {
                break;
            }
        }
        let _ = ws_tx.close().await;
    });
    while let Some(frame) = ws_rx.next().await {
        let text = match frame {
            Ok(Message::Text(t)) => t.to_string(),
            Ok(Message::Binary(_)) => {
                let _ = out_tx.send(ServerMessage::error(
                    None,
                    code::INVALID_PARAMETER,
                    Reason::BinaryMessage,
                    "signaling messages are JSON text",
                ));
                continue;
            }
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        };
        // Requests run one at a time per connection, in order.
        if let Some(reply) = request(&state, conn, &text).await {
            let _ = out_tx.send(reply);
        }
    }
    state.hub.lock().disconnect(conn);
    drop(out_tx);
    let _ = writer.await;
    log::debug!("conn {conn}: closed");
}

/// Parse a request and handle it; the reply goes on the connection's queue.
async fn request(state: &AppState, conn: ConnId, text: &str) -> Option<ServerMessage> {
    if text.len() > protocol::MAX_MESSAGE_BYTES {
        log::warn!("conn {conn}: E_SIGNAL_TOO_LARGE: {} bytes", text.len());
        return Some(ServerMessage::error(
            None,
            code::INVALID_PARAMETER,
            Reason::MessageTooLarge,
            format!(
                "messages are limited to {} bytes",
                protocol::MAX_MESSAGE_BYTES
            ),
        ));
    }
    let msg = match serde_json::from_str::<ClientMessage>(text) {
        Ok(m) => m,
        Err(e) => return Some(parse_error(text, &e)),
    };
    let id = msg.id();
    Some(match handle(state, conn, msg).await {
        Ok(reply) => reply,
        Err(e) => e.into_message(id),
    })
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
        None => (Reason::MalformedJson, format!("not JSON: {e}")),
        Some(None) => (
            Reason::MissingType,
            "a message needs a string \"type\"".to_owned(),
        ),
        Some(Some(t)) if MessageType::parse(t).is_none() => {
            (Reason::UnknownType, format!("unknown message type {t:?}"))
        }
        Some(Some(t)) => (Reason::InvalidFields, format!("bad {t} message: {e}")),
    };
    log::warn!("E_SIGNAL_BAD_MESSAGE: {reason}: {message}");
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
        SfuError::BadSdp(_) | SfuError::Refused(_) => {
            Refusal::new(code::INVALID_PARAMETER, Reason::BadSdp, e.to_string())
        }
        SfuError::Stopped => Refusal::new(code::UNKNOWN, Reason::MediaStopped, e.to_string()),
    }
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
        } => {
            let room = authenticate(
                state,
                version,
                sdk_app_id,
                &user_id,
                &user_sig,
                room_id,
                str_room_id,
            )?;
            let joined = state
                .hub
                .update(|rooms, _| rooms.join(conn, sdk_app_id, &user_id, room.clone()))
                .map_err(|e| Refusal::new(code::JOIN_ROOM_FAILED, e.reason(), e.to_string()))?;
            log::info!("conn {conn}: {user_id} joined {room} of app {sdk_app_id}");
            Ok(ServerMessage::Joined {
                id,
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
        } => {
            let (stream_id, sfu) = {
                let mut hub = state.hub.lock();
                hub.rooms.can_publish(conn, audio, video)?;
                (hub.rooms.next_stream_id(), hub.sfu.clone())
            };
            let answer = sfu
                .open(conn, &stream_id, Role::Uplink, sdp)
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
        ClientMessage::Unpublish { id } => {
            state.hub.update(|rooms, _| rooms.unpublish(conn))?;
            Ok(ServerMessage::Ok { id })
        }
        ClientMessage::Subscribe { id, stream_id, sdp } => {
            let sfu = {
                let hub = state.hub.lock();
                hub.rooms.can_subscribe(conn, &stream_id)?;
                hub.sfu.clone()
            };
            let answer = sfu
                .open(conn, &stream_id, Role::Downlink, sdp)
                .await
                .map_err(sfu_refusal)?;
            state.hub.update(|rooms, sfu| {
                let subscribed = rooms.subscribe(conn, &stream_id);
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

/// Check everything a join carries except room membership.
fn authenticate(
    state: &AppState,
    version: u32,
    sdk_app_id: u64,
    user_id: &str,
    user_sig: &str,
    room_id: Option<i64>,
    str_room_id: Option<String>,
) -> Result<RoomId, Refusal> {
    let fail = |reason: Reason, message: String| {
        log::warn!("E_JOIN_REFUSED: {reason}: {message}");
        Refusal::new(code::JOIN_ROOM_FAILED, reason, message)
    };
    if version != PROTOCOL_VERSION {
        return Err(fail(
            Reason::ProtocolVersion,
            format!("protocol version {version} is not supported; this server speaks {PROTOCOL_VERSION}"),
        ));
    }
    protocol::validate_user_id(user_id).map_err(|e| fail(Reason::InvalidUserId, e.to_string()))?;
    let room = RoomId::from_fields(room_id, str_room_id.as_deref())
        .map_err(|e| fail(Reason::InvalidRoomId, e.to_string()))?;
    let key = state.config.app_key(sdk_app_id).ok_or_else(|| {
        fail(
            Reason::UnknownSdkAppId,
            format!("sdkAppId {sdk_app_id} is not served here"),
        )
    })?;
    usersig::verify(
        user_sig,
        sdk_app_id,
        key.expose(),
        user_id,
        usersig::unix_now(),
    )
    .map_err(|e| fail(e.reason(), format!("userSig refused: {e}")))?;
    Ok(room)
}
