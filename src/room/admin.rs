//! The admin API, named after the TRTC server API: `POST /api/admin/{Action}`
//! with a JSON body in TRTC's field names, authenticated by
//! `Authorization: Bearer <admin.key>`.
//!
//! - `RemoveUser` `{SdkAppId, RoomId: number, UserIds: [..1-10]}` -> `banned`
//! - `RemoveUserByStrRoomId` `{SdkAppId, RoomId: string, UserIds}` -> `banned`
//! - `DismissRoom` `{SdkAppId, RoomId: number}` -> `room-disband`
//! - `DismissRoomByStrRoomId` `{SdkAppId, RoomId: string}` -> `room-disband`
//!
//! Replies are TRTC-shaped: `{"Response": {"RequestId", ...}}`, errors as
//! `{"Response": {"Error": {"Code", "Message"}, "RequestId"}}` with an HTTP
//! status (401 without a valid key; nothing changes then).

use crate::protocol::RoomId;
use crate::room::config::RoomConfig;
use crate::room::hub::AppState;
use crate::room::log_limit::{clip, RateLimitedLog};
use crate::room::state::RoomKey;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;

/// Refused admin calls are logged at most 5 a second (a key guesser is loud).
static ADMIN_REFUSALS: LazyLock<RateLimitedLog> = LazyLock::new(|| RateLimitedLog::per_second(5));

const MAX_USER_IDS: usize = 10;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct RemoveUserBody {
    sdk_app_id: u64,
    room_id: Value,
    user_ids: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct DismissBody {
    sdk_app_id: u64,
    room_id: Value,
}

/// Constant-time comparison of the presented key with the configured one.
pub fn authorized(config: &RoomConfig, headers: &HeaderMap) -> bool {
    let presented = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let expected = config.admin.key.expose().as_bytes();
    let presented = presented.as_bytes();
    let mut diff = (expected.len() != presented.len()) as u8;
    for (i, e) in expected.iter().enumerate() {
        diff |= e ^ presented.get(i).copied().unwrap_or(0);
    }
    diff == 0 && !expected.is_empty()
}

fn request_id() -> String {
    static N: AtomicU64 = AtomicU64::new(1);
    format!("callbox-{}", N.fetch_add(1, Ordering::Relaxed))
}

/// A refused admin call: HTTP status, TRTC error code, message.
pub struct AdminError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

fn error(status: StatusCode, code: &'static str, message: impl Into<String>) -> AdminError {
    AdminError {
        status,
        code,
        message: message.into(),
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let (code, message) = (self.code, clip(&self.message));
        ADMIN_REFUSALS.warn(|| {
            format!(
                "E_ADMIN_{}: {message}",
                code.to_uppercase().replace('.', "_")
            )
        });
        let body = json!({"Response": {"Error": {"Code": self.code, "Message": self.message}, "RequestId": request_id()}});
        (self.status, Json(body)).into_response()
    }
}

pub fn unauthorized() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        "AuthFailure",
        "missing or wrong admin key",
    )
    .into_response()
}

/// RoomId is a number for the plain actions and a string for the *ByStrRoomId ones.
fn room(action: &str, sdk_app_id: u64, room_id: &Value) -> Result<RoomKey, AdminError> {
    let by_str = action.ends_with("ByStrRoomId");
    let room = match (by_str, room_id) {
        (false, Value::Number(n)) => RoomId::from_fields(n.as_i64().or(Some(-1)), None),
        (true, Value::String(s)) => RoomId::from_fields(None, Some(s)),
        _ => {
            let want = if by_str { "a string" } else { "a number" };
            return Err(error(
                StatusCode::BAD_REQUEST,
                "InvalidParameter.RoomId",
                format!("{action}: RoomId must be {want}"),
            ));
        }
    };
    room.map(|room| RoomKey { sdk_app_id, room }).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "InvalidParameter.RoomId",
            e.to_string(),
        )
    })
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, AdminError> {
    serde_json::from_slice(body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, "InvalidParameter", e.to_string()))
}

/// Largest admin body read (ten userIds and a room id fit in far less).
const MAX_BODY: usize = 4096;

/// The key is checked from the headers before a byte of the body is read;
/// then at most `MAX_BODY` (4 KiB) bytes are.
pub async fn handle(
    State(s): State<AppState>,
    Path(action): Path<String>,
    request: axum::extract::Request,
) -> Response {
    if !authorized(&s.config, request.headers()) {
        return unauthorized();
    }
    let body = match axum::body::to_bytes(request.into_body(), MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "InvalidParameter.Body",
                format!("the body is limited to {MAX_BODY} bytes"),
            )
            .into_response()
        }
    };
    match run(&s, &action, &body) {
        Ok(affected) => {
            log::info!("admin {action}: {affected} client(s) pushed out");
            Json(json!({"Response": {"RequestId": request_id(), "Affected": affected}}))
                .into_response()
        }
        Err(e) => e.into_response(),
    }
}

fn run(s: &AppState, action: &str, body: &[u8]) -> Result<usize, AdminError> {
    match action {
        "RemoveUser" | "RemoveUserByStrRoomId" => {
            let b: RemoveUserBody = parse(body)?;
            if b.user_ids.is_empty() || b.user_ids.len() > MAX_USER_IDS {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "InvalidParameter.UserIds",
                    format!("UserIds must list 1 to {MAX_USER_IDS} users"),
                ));
            }
            let key = room(action, b.sdk_app_id, &b.room_id)?;
            Ok(s.hub.update(|rooms, _| {
                rooms.remove_users(&key, &b.user_ids, std::time::Instant::now())
            }))
        }
        "DismissRoom" | "DismissRoomByStrRoomId" => {
            let b: DismissBody = parse(body)?;
            let key = room(action, b.sdk_app_id, &b.room_id)?;
            Ok(s.hub.update(|rooms, _| rooms.dismiss(&key)))
        }
        other => Err(error(
            StatusCode::NOT_FOUND,
            "InvalidAction",
            format!("unknown action {:?}", clip(other)),
        )),
    }
}
