//! Janus VideoRoom in TRTC terms, pure: the plugin requests the client
//! sends, and what Janus's replies and events mean for a TRTC client
//! (`stream-added`, `peer-leave`, `client-banned` ...). The session and its
//! WebSocket are [`crate::client::janus`]'s.
//!
//! Feed ids are numbers (Janus's default rooms). A user id that is a number
//! is its own feed id; any other maps to a stable 53-bit hash, so a device
//! keeps its feed id across sessions, and Janus refuses a second session
//! with it (436) the way TRTC would kick the first.

use crate::protocol::{BanReason, MediaKind, ServerMessage, StreamInfo};
use serde_json::{json, Value};
use std::collections::HashMap;

/// Where and as whom the client joins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomTarget {
    pub room: u64,
    pub pin: Option<String>,
    pub display: String,
    pub feed: u64,
}

/// The feed id for `user_id`: itself when it is a number Janus (and
/// JavaScript) can hold, else FNV-1a folded to 53 bits, never 0.
pub fn feed_id(user_id: &str) -> u64 {
    const MAX: u64 = (1 << 53) - 1;
    if let Ok(n) = user_id.parse::<u64>() {
        if (1..=MAX).contains(&n) {
            return n;
        }
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in user_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    ((h >> 11) ^ (h & MAX)).clamp(1, MAX)
}

fn with_pin(mut body: Value, pin: &Option<String>) -> Value {
    if let Some(pin) = pin {
        body["pin"] = json!(pin);
    }
    body
}

pub fn join_publisher(t: &RoomTarget) -> Value {
    let body = json!({
        "request": "join", "ptype": "publisher", "room": t.room,
        "id": t.feed, "display": t.display,
    });
    with_pin(body, &t.pin)
}

/// Subscribe to `mids` of `feed` (all of them when empty).
pub fn join_subscriber(
    t: &RoomTarget,
    feed: u64,
    mids: &[String],
    private_id: Option<u64>,
) -> Value {
    let streams: Vec<Value> = if mids.is_empty() {
        vec![json!({ "feed": feed })]
    } else {
        mids.iter()
            .map(|m| json!({ "feed": feed, "mid": m }))
            .collect()
    };
    let mut body = json!({
        "request": "join", "ptype": "subscriber", "room": t.room, "streams": streams,
    });
    if let Some(p) = private_id {
        body["private_id"] = json!(p);
    }
    with_pin(body, &t.pin)
}

pub fn kick(room: u64, secret: &str, feed: u64) -> Value {
    json!({ "request": "kick", "room": room, "secret": secret, "id": feed })
}

/// TRTC mute: Janus stops relaying the stream at `mid`.
pub fn configure_send(mid: &str, send: bool) -> Value {
    json!({ "request": "configure", "streams": [{ "mid": mid, "send": send }] })
}

/// Why Janus said no.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 426: no such room (it may come back: Janus restarted, room recreated).
    NoSuchRoom,
    /// 433 wrong pin or secret, 403 token not authorized.
    Unauthorized,
    /// 436: a participant with our feed id is in the room.
    IdExists,
    Other,
}

impl Refusal {
    pub fn of(code: u32) -> Refusal {
        match code {
            426 => Refusal::NoSuchRoom,
            403 | 433 => Refusal::Unauthorized,
            436 => Refusal::IdExists,
            _ => Refusal::Other,
        }
    }
}

/// An error in a reply: the core's (`"janus": "error"`) or the plugin's
/// (`error_code` in its data): code and text.
pub fn error_of(reply: &Value) -> Option<(u32, String)> {
    let (code, text) = if reply["janus"] == "error" {
        (&reply["error"]["code"], &reply["error"]["reason"])
    } else {
        let data = plugin_data(reply);
        (&data["error_code"], &data["error"])
    };
    let code = code.as_u64()?;
    Some((code as u32, text.as_str().unwrap_or("").to_owned()))
}

/// The plugin's part of a reply or event.
pub fn plugin_data(msg: &Value) -> &Value {
    &msg["plugindata"]["data"]
}

/// A publisher as Janus lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publisher {
    pub id: u64,
    pub display: String,
    /// `(kind, mid)` of its streams.
    pub streams: Vec<(MediaKind, String)>,
}

impl Publisher {
    fn parse(v: &Value) -> Option<Publisher> {
        let id = v["id"].as_u64()?;
        let streams = v["streams"]
            .as_array()
            .map(|a| a.iter().filter_map(stream_of).collect())
            .unwrap_or_default();
        Some(Publisher {
            id,
            display: v["display"]
                .as_str()
                .map_or_else(|| id.to_string(), str::to_owned),
            streams,
        })
    }

    pub fn stream_info(&self) -> StreamInfo {
        let has = |k| self.streams.iter().any(|(kind, _)| *kind == k);
        StreamInfo {
            stream_id: self.id.to_string(),
            user_id: self.display.clone(),
            audio: has(MediaKind::Audio),
            video: has(MediaKind::Video),
            audio_muted: false,
            video_muted: false,
        }
    }

    /// The mids to subscribe to for the kinds wanted.
    pub fn mids(&self, audio: bool, video: bool) -> Vec<String> {
        self.streams
            .iter()
            .filter(|(k, _)| (*k == MediaKind::Audio && audio) || (*k == MediaKind::Video && video))
            .map(|(_, m)| m.clone())
            .collect()
    }
}

fn stream_of(s: &Value) -> Option<(MediaKind, String)> {
    if s["disabled"].as_bool() == Some(true) {
        return None;
    }
    let kind = match s["type"].as_str()? {
        "audio" => MediaKind::Audio,
        "video" => MediaKind::Video,
        _ => return None,
    };
    Some((kind, s["mid"].as_str()?.to_owned()))
}

/// The publishers a `joined` reply or an event lists, leaving out `me`.
pub fn publishers(data: &Value, me: u64) -> Vec<Publisher> {
    data["publishers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Publisher::parse)
                .filter(|p| p.id != me)
                .collect()
        })
        .unwrap_or_default()
}

/// What a VideoRoom event on our publisher handle means in TRTC events;
/// `known` follows the room's publishers (for names and mids).
pub fn translate(data: &Value, me: u64, known: &mut HashMap<u64, Publisher>) -> Vec<ServerMessage> {
    let mut out = Vec::new();
    if data["videoroom"] == "destroyed" {
        out.push(banned(BanReason::RoomDisband, "the room was destroyed"));
        return out;
    }
    if data["leaving"] == "ok" && data["reason"] == "kicked" {
        out.push(banned(BanReason::Banned, "kicked from the room"));
        return out;
    }
    for p in publishers(data, me) {
        if known.insert(p.id, p.clone()).is_none() {
            out.push(ServerMessage::StreamAdded {
                stream: p.stream_info(),
            });
        }
    }
    if let Some(j) = data.get("joining").filter(|j| j["id"].as_u64() != Some(me)) {
        let user_id = j["display"].as_str().map(str::to_owned);
        let user_id = user_id.or_else(|| j["id"].as_u64().map(|i| i.to_string()));
        out.extend(user_id.map(|user_id| ServerMessage::PeerJoin { user_id }));
    }
    if let Some(id) = data["unpublished"].as_u64() {
        out.extend(unpublished(id, known));
    }
    for key in ["leaving", "kicked"] {
        if let Some(id) = data[key].as_u64() {
            out.extend(unpublished(id, known));
            let user_id = data["display"]
                .as_str()
                .map_or_else(|| id.to_string(), str::to_owned);
            out.push(ServerMessage::PeerLeave { user_id });
        }
    }
    out
}

fn unpublished(id: u64, known: &mut HashMap<u64, Publisher>) -> Option<ServerMessage> {
    known.remove(&id).map(|p| ServerMessage::StreamRemoved {
        stream_id: p.id.to_string(),
        user_id: p.display,
    })
}

fn banned(reason: BanReason, message: &str) -> ServerMessage {
    ServerMessage::ClientBanned {
        reason,
        message: message.to_owned(),
    }
}

/// `(kind, mid)` of each m-line of an SDP.
pub fn sdp_mids(sdp: &str) -> Vec<(MediaKind, String)> {
    let mut out = Vec::new();
    let mut kind = None;
    for line in sdp.lines() {
        if let Some(m) = line.strip_prefix("m=") {
            kind = match m.split(' ').next() {
                Some("audio") => Some(MediaKind::Audio),
                Some("video") => Some(MediaKind::Video),
                _ => None,
            };
        } else if let (Some(k), Some(mid)) = (kind, line.strip_prefix("a=mid:")) {
            out.push((k, mid.trim().to_owned()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> RoomTarget {
        RoomTarget {
            room: 1234,
            pin: Some("42".into()),
            display: "door".into(),
            feed: feed_id("door"),
        }
    }

    #[test]
    fn feed_ids_are_stable_numbers_janus_can_hold() {
        assert_eq!(feed_id("7"), 7);
        assert_eq!(feed_id("door"), feed_id("door"));
        assert_ne!(feed_id("door"), feed_id("door2"));
        for u in ["0", "door", "18446744073709551615", ""] {
            let f = feed_id(u);
            assert!((1..1 << 53).contains(&f), "{u}: {f}");
        }
    }

    #[test]
    fn requests_carry_room_pin_and_feed() {
        let t = target();
        let j = join_publisher(&t);
        assert_eq!(
            (j["ptype"].as_str(), j["room"].as_u64(), j["pin"].as_str()),
            (Some("publisher"), Some(1234), Some("42"))
        );
        assert_eq!(j["id"].as_u64(), Some(t.feed));
        let s = join_subscriber(&t, 9, &["0".into()], Some(77));
        assert_eq!(s["streams"], json!([{ "feed": 9, "mid": "0" }]));
        assert_eq!(s["private_id"], json!(77));
        assert_eq!(
            join_subscriber(&t, 9, &[], None)["streams"],
            json!([{ "feed": 9 }])
        );
        assert_eq!(
            configure_send("1", false)["streams"][0]["send"],
            json!(false)
        );
    }

    #[test]
    fn errors_from_the_core_and_the_plugin() {
        let core =
            json!({"janus": "error", "error": {"code": 403, "reason": "Unauthorized request"}});
        assert_eq!(error_of(&core), Some((403, "Unauthorized request".into())));
        let plugin = json!({"janus": "event", "plugindata": {"data": {"videoroom": "event", "error_code": 436, "error": "User ID 5 already exists"}}});
        let (code, _) = error_of(&plugin).unwrap();
        assert_eq!(Refusal::of(code), Refusal::IdExists);
        assert_eq!(Refusal::of(426), Refusal::NoSuchRoom);
        assert_eq!(Refusal::of(433), Refusal::Unauthorized);
        assert_eq!(
            error_of(&json!({"janus": "success", "plugindata": {"data": {"videoroom": "joined"}}})),
            None
        );
    }

    fn publisher(id: u64, display: &str) -> Value {
        json!({"id": id, "display": display, "streams": [
            {"type": "audio", "mid": "0", "codec": "opus"},
            {"type": "video", "mid": "1", "codec": "h264"},
            {"type": "data", "mid": "2"}]})
    }

    #[test]
    fn janus_events_become_trtc_events() {
        let me = 5;
        let mut known = HashMap::new();
        let added = translate(
            &json!({"videoroom": "event", "publishers": [publisher(9, "alice"), publisher(5, "me")]}),
            me,
            &mut known,
        );
        let ServerMessage::StreamAdded { stream } = &added[0] else {
            panic!("{added:?}")
        };
        assert_eq!(
            (
                stream.stream_id.as_str(),
                stream.user_id.as_str(),
                stream.audio,
                stream.video
            ),
            ("9", "alice", true, true)
        );
        assert_eq!(added.len(), 1, "our own feed is not a remote stream");
        assert_eq!(known[&9].mids(true, false), vec!["0".to_owned()]);
        // Listed again (a configure): not added twice.
        assert!(translate(
            &json!({"publishers": [publisher(9, "alice")]}),
            me,
            &mut known
        )
        .is_empty());
        let joining = translate(
            &json!({"joining": {"id": 11, "display": "bob"}}),
            me,
            &mut known,
        );
        assert_eq!(
            joining,
            vec![ServerMessage::PeerJoin {
                user_id: "bob".into()
            }]
        );
        let gone = translate(
            &json!({"videoroom": "event", "leaving": 9, "display": "alice"}),
            me,
            &mut known,
        );
        assert_eq!(
            gone,
            vec![
                ServerMessage::StreamRemoved {
                    stream_id: "9".into(),
                    user_id: "alice".into()
                },
                ServerMessage::PeerLeave {
                    user_id: "alice".into()
                },
            ]
        );
        assert!(known.is_empty());
    }

    #[test]
    fn kicked_and_destroyed_push_the_client_out() {
        let mut known = HashMap::new();
        let kicked = translate(
            &json!({"videoroom": "event", "leaving": "ok", "reason": "kicked"}),
            5,
            &mut known,
        );
        assert!(matches!(
            &kicked[..],
            [ServerMessage::ClientBanned {
                reason: BanReason::Banned,
                ..
            }]
        ));
        let destroyed = translate(
            &json!({"videoroom": "destroyed", "room": 1234}),
            5,
            &mut known,
        );
        assert!(matches!(
            &destroyed[..],
            [ServerMessage::ClientBanned {
                reason: BanReason::RoomDisband,
                ..
            }]
        ));
        // Someone else kicked: they leave.
        known.insert(
            9,
            Publisher {
                id: 9,
                display: "alice".into(),
                streams: vec![],
            },
        );
        let other = translate(&json!({"kicked": 9}), 5, &mut known);
        assert_eq!(other.len(), 2);
    }

    #[test]
    fn mids_of_an_offer() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\n";
        assert_eq!(
            sdp_mids(sdp),
            vec![
                (MediaKind::Audio, "0".into()),
                (MediaKind::Video, "1".into())
            ]
        );
    }
}
