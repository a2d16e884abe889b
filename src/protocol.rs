//! The signaling protocol: every message the room service, the Rust client
//! and the browser SDK exchange over the WebSocket, as serde enums tagged by
//! `type`. `docs/protocol.md` is the prose version of this file; keep both in
//! step and bump [`PROTOCOL_VERSION`] on incompatible change.
//!
//! Also owns what the wire shares: TRTC v4 error codes, room ids and their
//! validation, ban reasons. Pure data, no I/O.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Sent in `join`; the server refuses other versions with JOIN_ROOM_FAILED.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest signaling message accepted (an SDP offer is a few KiB).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Longest `strRoomId`, in bytes.
pub const MAX_STR_ROOM_ID_BYTES: usize = 64;

/// Punctuation allowed in `strRoomId` besides ASCII letters and digits
/// (the TRTC set).
pub const STR_ROOM_ID_PUNCTUATION: &str = " !#$%&()+-:;<=.>?@[]^_{}|~,";

/// Longest userId, in bytes.
pub const MAX_USER_ID_BYTES: usize = 32;

/// Why a request or a connection was refused: the stable, machine-readable
/// `reason` of an `error` message, beside its TRTC `code`. Clients decide
/// on this, never on the human `message`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    // The frame itself.
    BinaryMessage,
    MessageTooLarge,
    MalformedJson,
    MissingType,
    UnknownType,
    InvalidFields,
    // A join.
    ProtocolVersion,
    InvalidUserId,
    InvalidRoomId,
    UnknownSdkAppId,
    UsersigBadEncoding,
    UsersigBadSignature,
    UsersigWrongApp,
    UsersigWrongUser,
    UsersigExpired,
    // Room rules.
    NotJoined,
    AlreadyJoined,
    AlreadyPublishing,
    NotPublishing,
    EmptyPublication,
    NoSuchStream,
    OwnStream,
    AlreadySubscribed,
    NotSubscribed,
    NoSuchTrack,
    RoomFull,
    TooManyStreams,
    TooManySubscriptions,
    TooManyRooms,
    RecentlyRemoved,
    NotPermitted,
    PrivateMapKeyRequired,
    PrivateMapKeyInvalid,
    UsersigTooLong,
    JoinTimeout,
    // Media.
    BadSdp,
    MediaStopped,
    /// A reason this client does not know (a newer server).
    #[serde(other)]
    Other,
}

impl Reason {
    /// The userSig itself was refused: retrying with it cannot help.
    pub fn is_usersig(self) -> bool {
        matches!(
            self,
            Reason::UsersigBadEncoding
                | Reason::UsersigBadSignature
                | Reason::UsersigWrongApp
                | Reason::UsersigWrongUser
                | Reason::UsersigExpired
        )
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::String(s)) => f.write_str(&s),
            _ => f.write_str("other"),
        }
    }
}

/// TRTC Web SDK v4 error codes, as numbers on the wire.
pub mod code {
    pub const INVALID_PARAMETER: u32 = 0x1000;
    pub const INVALID_OPERATION: u32 = 0x1001;
    pub const NOT_SUPPORTED: u32 = 0x1002;
    pub const DEVICE_NOT_FOUND: u32 = 0x1003;
    pub const SIGNAL_CHANNEL_SETUP_FAILED: u32 = 0x4001;
    pub const SIGNAL_CHANNEL_ERROR: u32 = 0x4002;
    pub const ICE_TRANSPORT_ERROR: u32 = 0x4003;
    pub const JOIN_ROOM_FAILED: u32 = 0x4004;
    pub const CREATE_OFFER_FAILED: u32 = 0x4005;
    pub const SIGNAL_CHANNEL_RECONNECTION_FAILED: u32 = 0x4006;
    pub const UPLINK_RECONNECTION_FAILED: u32 = 0x4007;
    pub const DOWNLINK_RECONNECTION_FAILED: u32 = 0x4008;
    pub const REMOTE_STREAM_NOT_EXIST: u32 = 0x4010;
    pub const CLIENT_BANNED: u32 = 0x4040;
    pub const SERVER_TIMEOUT: u32 = 0x4041;
    pub const SUBSCRIPTION_TIMEOUT: u32 = 0x4042;
    pub const PLAY_NOT_ALLOWED: u32 = 0x4043;
    pub const UNKNOWN: u32 = 0xFFFF;
}

/// A room: numeric `roomId` and string `strRoomId` are separate namespaces.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RoomId {
    #[serde(rename = "roomId")]
    Num(u32),
    #[serde(rename = "strRoomId")]
    Str(String),
}

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RoomId::Num(n) => write!(f, "roomId {n}"),
            RoomId::Str(s) => write!(f, "strRoomId {s:?}"),
        }
    }
}

/// Why a room id or user id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("give exactly one of roomId and strRoomId")]
    NeitherOrBoth,
    #[error("roomId must be an integer in 1..=4294967294, got {0}")]
    RoomIdRange(i64),
    #[error("strRoomId must be 1..=64 bytes of letters, digits and {STR_ROOM_ID_PUNCTUATION:?}")]
    StrRoomId,
    #[error("userId must be 1..=32 bytes of letters, digits, '_' and '-'")]
    UserId,
}

impl RoomId {
    /// Validate the pair of optional fields a join carries.
    pub fn from_fields(room_id: Option<i64>, str_room_id: Option<&str>) -> Result<Self, IdError> {
        match (room_id, str_room_id) {
            (Some(n), None) => {
                if (1..=4_294_967_294).contains(&n) {
                    Ok(RoomId::Num(n as u32))
                } else {
                    Err(IdError::RoomIdRange(n))
                }
            }
            (None, Some(s)) => {
                let ok = !s.is_empty()
                    && s.len() <= MAX_STR_ROOM_ID_BYTES
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || STR_ROOM_ID_PUNCTUATION.contains(c));
                if ok {
                    Ok(RoomId::Str(s.to_owned()))
                } else {
                    Err(IdError::StrRoomId)
                }
            }
            _ => Err(IdError::NeitherOrBoth),
        }
    }
}

/// userIds: the TRTC set (letters, digits, underscore, hyphen), at most 32 bytes.
pub fn validate_user_id(user_id: &str) -> Result<(), IdError> {
    let ok = !user_id.is_empty()
        && user_id.len() <= MAX_USER_ID_BYTES
        && user_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(IdError::UserId)
    }
}

/// Why a client was pushed out of its room (`client-banned`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BanReason {
    /// Another client joined with the same userId.
    Kick,
    /// An administrator removed the user (RemoveUser*).
    Banned,
    /// An administrator dismissed the room (DismissRoom*).
    RoomDisband,
}

impl BanReason {
    pub fn as_str(self) -> &'static str {
        match self {
            BanReason::Kick => "kick",
            BanReason::Banned => "banned",
            BanReason::RoomDisband => "room-disband",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaKind {
    Audio,
    Video,
}

/// One publication as the room sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamInfo {
    pub stream_id: String,
    pub user_id: String,
    pub audio: bool,
    pub video: bool,
    pub audio_muted: bool,
    pub video_muted: bool,
}

/// Client -> server. Every request has an `id` the reply echoes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "kebab-case",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum ClientMessage {
    Join {
        id: u64,
        version: u32,
        sdk_app_id: u64,
        user_id: String,
        user_sig: String,
        /// Numeric room; signed and wide so out-of-range numbers get a range error, not a parse error.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room_id: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        str_room_id: Option<String>,
        /// TRTC's privateMapKey for this room, where the app requires one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        private_map_key: Option<String>,
    },
    /// Offer of the uplink PeerConnection (sendonly audio and/or video).
    Publish {
        id: u64,
        sdp: String,
        audio: bool,
        video: bool,
    },
    Unpublish {
        id: u64,
    },
    /// Offer of a downlink PeerConnection (recvonly) for one remote stream.
    Subscribe {
        id: u64,
        stream_id: String,
        sdp: String,
    },
    Unsubscribe {
        id: u64,
        stream_id: String,
    },
    Mute {
        id: u64,
        kind: MediaKind,
        muted: bool,
    },
    Leave {
        id: u64,
    },
    Ping {
        id: u64,
    },
}

impl ClientMessage {
    pub fn id(&self) -> u64 {
        match self {
            ClientMessage::Join { id, .. }
            | ClientMessage::Publish { id, .. }
            | ClientMessage::Unpublish { id }
            | ClientMessage::Subscribe { id, .. }
            | ClientMessage::Unsubscribe { id, .. }
            | ClientMessage::Mute { id, .. }
            | ClientMessage::Leave { id }
            | ClientMessage::Ping { id } => *id,
        }
    }

    /// Its `type`; exhaustive, so a new message cannot miss [`MessageType`].
    pub fn message_type(&self) -> MessageType {
        match self {
            ClientMessage::Join { .. } => MessageType::Join,
            ClientMessage::Publish { .. } => MessageType::Publish,
            ClientMessage::Unpublish { .. } => MessageType::Unpublish,
            ClientMessage::Subscribe { .. } => MessageType::Subscribe,
            ClientMessage::Unsubscribe { .. } => MessageType::Unsubscribe,
            ClientMessage::Mute { .. } => MessageType::Mute,
            ClientMessage::Leave { .. } => MessageType::Leave,
            ClientMessage::Ping { .. } => MessageType::Ping,
        }
    }
}

/// The `type` of every client message, to tell an unknown type from a
/// known one with bad fields. A test keeps it in step with [`ClientMessage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MessageType {
    Join,
    Publish,
    Unpublish,
    Subscribe,
    Unsubscribe,
    Mute,
    Leave,
    Ping,
}

impl MessageType {
    pub fn parse(t: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(t.to_owned())).ok()
    }
}

/// A STUN or TURN server for ICE, as `RTCPeerConnection` takes it. The
/// credential is never printed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

impl std::fmt::Debug for IceServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IceServer")
            .field("urls", &self.urls)
            .field("username", &self.username)
            .field(
                "credential",
                &self.credential.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Server -> client: replies (with the request `id`) and room events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "kebab-case",
    rename_all_fields = "camelCase"
)]
pub enum ServerMessage {
    Joined {
        id: u64,
        user_id: String,
        /// Users already in the room.
        peers: Vec<String>,
        /// Publications already in the room.
        streams: Vec<StreamInfo>,
        /// TURN servers with credentials made for this user, short-lived.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        ice_servers: Vec<IceServer>,
    },
    Published {
        id: u64,
        stream_id: String,
        sdp: String,
    },
    Subscribed {
        id: u64,
        stream_id: String,
        sdp: String,
    },
    /// Success of a request that returns nothing else.
    Ok {
        id: u64,
    },
    Pong {
        id: u64,
    },
    /// A request failed (`id` set) or the connection has a problem (`id` absent).
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        code: u32,
        /// Stable machine-readable cause, e.g. `usersig-expired`.
        reason: Reason,
        message: String,
    },
    PeerJoin {
        user_id: String,
    },
    PeerLeave {
        user_id: String,
    },
    StreamAdded {
        stream: StreamInfo,
    },
    StreamRemoved {
        stream_id: String,
        user_id: String,
    },
    StreamUpdated {
        stream: StreamInfo,
    },
    MuteAudio {
        user_id: String,
    },
    UnmuteAudio {
        user_id: String,
    },
    MuteVideo {
        user_id: String,
    },
    UnmuteVideo {
        user_id: String,
    },
    /// TRTC's `network-quality`, every 2 s while the client has media.
    NetworkQuality(crate::network_quality::NetworkQuality),
    /// This client is out of its room; its media has been stopped.
    ClientBanned {
        reason: BanReason,
        message: String,
    },
}

impl ServerMessage {
    pub fn error(id: Option<u64>, code: u32, reason: Reason, message: impl Into<String>) -> Self {
        ServerMessage::Error {
            id,
            code,
            reason,
            message: message.into(),
        }
    }

    /// The request id this message replies to, if it is a reply.
    pub fn reply_to(&self) -> Option<u64> {
        match self {
            ServerMessage::Joined { id, .. }
            | ServerMessage::Published { id, .. }
            | ServerMessage::Subscribed { id, .. }
            | ServerMessage::Ok { id }
            | ServerMessage::Pong { id } => Some(*id),
            ServerMessage::Error { id, .. } => *id,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_client_message_type_is_a_known_message_type() {
        let (sdp, stream_id) = (String::new(), "s1".to_owned());
        let all = [
            ClientMessage::Join {
                id: 1,
                version: 1,
                sdk_app_id: 1,
                user_id: "u".into(),
                user_sig: "s".into(),
                room_id: Some(1),
                str_room_id: None,
                private_map_key: None,
            },
            ClientMessage::Publish {
                id: 1,
                sdp: sdp.clone(),
                audio: true,
                video: true,
            },
            ClientMessage::Unpublish { id: 1 },
            ClientMessage::Subscribe {
                id: 1,
                stream_id: stream_id.clone(),
                sdp,
            },
            ClientMessage::Unsubscribe { id: 1, stream_id },
            ClientMessage::Mute {
                id: 1,
                kind: MediaKind::Audio,
                muted: true,
            },
            ClientMessage::Leave { id: 1 },
            ClientMessage::Ping { id: 1 },
        ];
        for m in all {
            let v = serde_json::to_value(&m).unwrap();
            let t = v["type"].as_str().unwrap();
            assert_eq!(MessageType::parse(t), Some(m.message_type()), "{t}");
        }
        assert_eq!(MessageType::parse("jion"), None);
        assert_eq!(Reason::UsersigExpired.to_string(), "usersig-expired");
        let r: Reason = serde_json::from_str("\"from-the-future\"").unwrap();
        assert_eq!(r, Reason::Other);
    }

    #[test]
    fn join_wire_format_is_camel_case_and_tagged() {
        let m = ClientMessage::Join {
            id: 1,
            version: PROTOCOL_VERSION,
            sdk_app_id: 1400000000,
            user_id: "dev".into(),
            user_sig: "sig".into(),
            room_id: Some(8888),
            str_room_id: None,
            private_map_key: Some("pmk".into()),
        };
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["type"], "join");
        assert_eq!(json["privateMapKey"], "pmk");
        assert_eq!(json["sdkAppId"], 1400000000u64);
        assert_eq!(json["roomId"], 8888);
        assert!(json.get("strRoomId").is_none());
        assert_eq!(serde_json::from_value::<ClientMessage>(json).unwrap(), m);
    }

    #[test]
    fn event_names_are_the_trtc_ones() {
        let e = ServerMessage::ClientBanned {
            reason: BanReason::RoomDisband,
            message: "x".into(),
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(
            (v["type"].as_str(), v["reason"].as_str()),
            (Some("client-banned"), Some("room-disband"))
        );
        let v = serde_json::to_value(ServerMessage::MuteAudio {
            user_id: "a".into(),
        })
        .unwrap();
        assert_eq!(v["type"], "mute-audio");
        assert_eq!(v["userId"], "a");
    }

    #[test]
    fn unknown_type_and_unknown_field_are_refused() {
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"dance","id":1}"#).is_err());
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"ping","id":1,"x":2}"#).is_err());
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"ping","id":1}"#).is_ok());
    }

    #[test]
    fn room_ids() {
        assert_eq!(RoomId::from_fields(Some(1), None), Ok(RoomId::Num(1)));
        assert_eq!(
            RoomId::from_fields(Some(4_294_967_294), None),
            Ok(RoomId::Num(4_294_967_294))
        );
        for bad in [0, -1, 4_294_967_295, 1 << 40] {
            assert_eq!(
                RoomId::from_fields(Some(bad), None),
                Err(IdError::RoomIdRange(bad))
            );
        }
        assert_eq!(
            RoomId::from_fields(None, Some("lobby-1_A")),
            Ok(RoomId::Str("lobby-1_A".into()))
        );
        for bad in ["", "a/b", "caf\u{e9}", &"x".repeat(65)] {
            assert_eq!(
                RoomId::from_fields(None, Some(bad)),
                Err(IdError::StrRoomId),
                "{bad:?}"
            );
        }
        assert_eq!(
            RoomId::from_fields(Some(1), Some("a")),
            Err(IdError::NeitherOrBoth)
        );
        assert_eq!(RoomId::from_fields(None, None), Err(IdError::NeitherOrBoth));
    }

    #[test]
    fn user_ids() {
        assert!(validate_user_id("device_01-a").is_ok());
        for bad in ["", "a b", "x/y", &"u".repeat(33)] {
            assert_eq!(validate_user_id(bad), Err(IdError::UserId), "{bad:?}");
        }
    }
}
