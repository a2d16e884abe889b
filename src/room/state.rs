//! Room state: membership, publications, subscriptions, and who is pushed out
//! and why. A pure state machine in the str0m style: each call changes the
//! state and queues [`Effect`]s (messages to connections, media to tear down)
//! that the caller drains with [`Rooms::poll_effect`] and carries out. No I/O;
//! time is passed in. Authentication happens before [`Rooms::join`] is
//! called and hands it what the joiner may do ([`Privileges`]); the rules
//! here cap room sizes and keep a removed user out for a while.

use crate::private_map_key::privilege;
use crate::protocol::{code, BanReason, MediaKind, Reason, RoomId, ServerMessage, StreamInfo};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

/// What a member may do: TRTC's privateMapKey privilege bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Privileges(pub u32);

impl Privileges {
    /// Everything (no privateMapKey required).
    pub const ALL: Privileges = Privileges(u32::MAX);

    pub fn allows(self, bits: u32) -> bool {
        self.0 & bits == bits
    }

    /// The bits sending (or receiving) these kinds needs.
    pub fn for_kinds(audio: bool, video: bool, send: bool) -> u32 {
        let (a, v) = if send {
            (privilege::SEND_AUDIO, privilege::SEND_VIDEO)
        } else {
            (privilege::RECV_AUDIO, privilege::RECV_VIDEO)
        };
        (if audio { a } else { 0 }) | (if video { v } else { 0 })
    }
}

/// The room rules' caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomLimits {
    pub members_per_room: usize,
    pub streams_per_room: usize,
    pub subscriptions_per_client: usize,
    pub rooms_per_app: usize,
    /// How long a user removed by the administrator stays out of that room.
    pub rejoin_block: Duration,
}

impl Default for RoomLimits {
    fn default() -> Self {
        RoomLimits {
            members_per_room: 100,
            streams_per_room: 50,
            subscriptions_per_client: 50,
            rooms_per_app: 1000,
            rejoin_block: Duration::from_secs(60),
        }
    }
}

/// Who joins: authenticated, with what the privateMapKey (if any) grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joiner<'a> {
    pub sdk_app_id: u64,
    pub user_id: &'a str,
    pub room: RoomId,
    pub privileges: Privileges,
}

/// One signaling connection (one TRTC client).
pub type ConnId = u64;

/// Rooms are per application: the same roomId in two apps are two rooms.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomKey {
    pub sdk_app_id: u64,
    pub room: RoomId,
}

/// What the I/O around the state machine must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Deliver a message to a connection.
    Send(ConnId, ServerMessage),
    /// Stop all media of this connection: its uplink and its downlinks.
    CloseMedia(ConnId),
    /// Stop a publication: its uplink and every downlink that carries it.
    EndPublication(String),
    /// Stop one subscriber's downlink for one publication.
    EndSubscription { conn: ConnId, stream_id: String },
}

/// A request refused by the room rules; carries its TRTC code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomError {
    #[error("not in a room: join first")]
    NotJoined,
    #[error("already in a room: leave first")]
    AlreadyJoined,
    #[error("already publishing: unpublish first")]
    AlreadyPublishing,
    #[error("not publishing")]
    NotPublishing,
    #[error("a publication needs audio or video")]
    EmptyPublication,
    #[error("stream {0} does not exist in this room")]
    NoSuchStream(String),
    #[error("cannot subscribe to your own stream")]
    OwnStream,
    #[error("already subscribed to stream {0}")]
    AlreadySubscribed(String),
    #[error("not subscribed to stream {0}")]
    NotSubscribed(String),
    #[error("the stream has no {0:?} track")]
    NoSuchTrack(MediaKind),
    #[error("the room is full ({0} members)")]
    RoomFull(usize),
    #[error("the room has its most streams ({0})")]
    TooManyStreams(usize),
    #[error("this client has its most subscriptions ({0})")]
    TooManySubscriptions(usize),
    #[error("the app has its most rooms ({0})")]
    TooManyRooms(usize),
    #[error("removed from this room by the administrator; rejoin in {0} s")]
    RecentlyRemoved(u64),
    #[error("the privateMapKey does not grant {0}")]
    NotPermitted(&'static str),
}

impl RoomError {
    pub fn code(&self) -> u32 {
        match self {
            RoomError::NoSuchStream(_) => code::REMOTE_STREAM_NOT_EXIST,
            RoomError::EmptyPublication => code::INVALID_PARAMETER,
            RoomError::RoomFull(_) | RoomError::TooManyRooms(_) | RoomError::RecentlyRemoved(_) => {
                code::JOIN_ROOM_FAILED
            }
            _ => code::INVALID_OPERATION,
        }
    }

    pub fn reason(&self) -> Reason {
        match self {
            RoomError::NotJoined => Reason::NotJoined,
            RoomError::AlreadyJoined => Reason::AlreadyJoined,
            RoomError::AlreadyPublishing => Reason::AlreadyPublishing,
            RoomError::NotPublishing => Reason::NotPublishing,
            RoomError::EmptyPublication => Reason::EmptyPublication,
            RoomError::NoSuchStream(_) => Reason::NoSuchStream,
            RoomError::OwnStream => Reason::OwnStream,
            RoomError::AlreadySubscribed(_) => Reason::AlreadySubscribed,
            RoomError::NotSubscribed(_) => Reason::NotSubscribed,
            RoomError::NoSuchTrack(_) => Reason::NoSuchTrack,
            RoomError::RoomFull(_) => Reason::RoomFull,
            RoomError::TooManyStreams(_) => Reason::TooManyStreams,
            RoomError::TooManySubscriptions(_) => Reason::TooManySubscriptions,
            RoomError::TooManyRooms(_) => Reason::TooManyRooms,
            RoomError::RecentlyRemoved(_) => Reason::RecentlyRemoved,
            RoomError::NotPermitted(_) => Reason::NotPermitted,
        }
    }
}

#[derive(Debug)]
struct Member {
    user_id: String,
    room: RoomKey,
    privileges: Privileges,
    publication: Option<StreamInfo>,
    /// A publication the SFU lost: the client's own `unpublish` (which
    /// often follows closing its connection) still succeeds.
    lost_publication: Option<String>,
    subscriptions: BTreeSet<String>,
}

/// A publication's owner, for routing media.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    pub publisher: ConnId,
    pub info: StreamInfo,
}

/// What a successful join returns to the joiner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    pub peers: Vec<String>,
    pub streams: Vec<StreamInfo>,
}

#[derive(Debug, Default)]
pub struct Rooms {
    limits: RoomLimits,
    members: HashMap<ConnId, Member>,
    /// room -> userId -> conn; BTreeMap for a stable peer order.
    rooms: HashMap<RoomKey, BTreeMap<String, ConnId>>,
    /// Users removed by the administrator, kept out of that room until then.
    removed: HashMap<(RoomKey, String), Instant>,
    next_stream: u64,
    effects: VecDeque<Effect>,
}

impl Rooms {
    pub fn new(limits: RoomLimits) -> Self {
        Rooms {
            limits,
            ..Self::default()
        }
    }

    /// Next thing the I/O must do, in order.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    /// The room and userId of a connection, if it is in a room.
    pub fn member(&self, conn: ConnId) -> Option<(&RoomKey, &str)> {
        self.members
            .get(&conn)
            .map(|m| (&m.room, m.user_id.as_str()))
    }

    /// The room a connection is in: where its media is forwarded.
    pub fn room_of(&self, conn: ConnId) -> Result<RoomKey, RoomError> {
        self.member(conn)
            .map(|(room, _)| room.clone())
            .ok_or(RoomError::NotJoined)
    }

    pub fn publication(&self, stream_id: &str) -> Option<Publication> {
        self.members.iter().find_map(|(conn, m)| {
            m.publication
                .as_ref()
                .filter(|p| p.stream_id == stream_id)
                .map(|p| Publication {
                    publisher: *conn,
                    info: p.clone(),
                })
        })
    }

    fn others(&self, room: &RoomKey, except: ConnId) -> Vec<ConnId> {
        self.rooms
            .get(room)
            .map(|users| users.values().copied().filter(|c| *c != except).collect())
            .unwrap_or_default()
    }

    fn broadcast(&mut self, room: &RoomKey, except: ConnId, msg: ServerMessage) {
        for c in self.others(room, except) {
            self.effects.push_back(Effect::Send(c, msg.clone()));
        }
    }

    /// Whether `who` may enter `key` now: its privileges, the caps, a recent removal.
    fn admit(&mut self, key: &RoomKey, who: &Joiner<'_>, now: Instant) -> Result<(), RoomError> {
        self.removed.retain(|_, until| *until > now);
        if let Some(until) = self.removed.get(&(key.clone(), who.user_id.to_owned())) {
            return Err(RoomError::RecentlyRemoved((*until - now).as_secs().max(1)));
        }
        if !who.privileges.allows(privilege::ENTER) {
            return Err(RoomError::NotPermitted("entering the room"));
        }
        match self.rooms.get(key) {
            Some(users) if !users.contains_key(who.user_id) => {
                let n = users.len();
                if n >= self.limits.members_per_room {
                    return Err(RoomError::RoomFull(n));
                }
            }
            Some(_) => {}
            None => {
                if !who.privileges.allows(privilege::CREATE) {
                    return Err(RoomError::NotPermitted("creating the room"));
                }
                let n = self
                    .rooms
                    .keys()
                    .filter(|k| k.sdk_app_id == key.sdk_app_id)
                    .count();
                if n >= self.limits.rooms_per_app {
                    return Err(RoomError::TooManyRooms(n));
                }
            }
        }
        Ok(())
    }

    /// Join `who` (already authenticated) into its room. A live client with
    /// the same userId in that room is pushed out with `kick`.
    pub fn join(
        &mut self,
        conn: ConnId,
        who: Joiner<'_>,
        now: Instant,
    ) -> Result<Joined, RoomError> {
        if self.members.contains_key(&conn) {
            return Err(RoomError::AlreadyJoined);
        }
        let key = RoomKey {
            sdk_app_id: who.sdk_app_id,
            room: who.room.clone(),
        };
        self.admit(&key, &who, now)?;
        let user_id = who.user_id;
        let existing = self
            .rooms
            .get(&key)
            .and_then(|users| users.get(user_id))
            .copied();
        if let Some(old) = existing {
            self.push_out(
                old,
                BanReason::Kick,
                "another client joined this room with your userId",
            );
        }
        let users = self.rooms.entry(key.clone()).or_default();
        let peers: Vec<String> = users.keys().cloned().collect();
        users.insert(user_id.to_owned(), conn);
        let streams = users
            .values()
            .filter_map(|c| self.members.get(c).and_then(|m| m.publication.clone()))
            .collect();
        self.members.insert(
            conn,
            Member {
                user_id: user_id.to_owned(),
                room: key.clone(),
                privileges: who.privileges,
                publication: None,
                lost_publication: None,
                subscriptions: BTreeSet::new(),
            },
        );
        self.broadcast(
            &key,
            conn,
            ServerMessage::PeerJoin {
                user_id: user_id.to_owned(),
            },
        );
        Ok(Joined { peers, streams })
    }

    /// Remove a member: its media stops, others see stream-removed and peer-leave.
    fn remove(&mut self, conn: ConnId) -> Option<Member> {
        let mut member = self.members.remove(&conn)?;
        let key = member.room.clone();
        if let Some(users) = self.rooms.get_mut(&key) {
            users.remove(&member.user_id);
            if users.is_empty() {
                self.rooms.remove(&key);
            }
        }
        self.effects.push_back(Effect::CloseMedia(conn));
        if let Some(p) = member.publication.take() {
            self.end_publication(&key, conn, p);
        }
        self.broadcast(
            &key,
            conn,
            ServerMessage::PeerLeave {
                user_id: member.user_id.clone(),
            },
        );
        Some(member)
    }

    fn end_publication(&mut self, room: &RoomKey, publisher: ConnId, p: StreamInfo) {
        for c in self.others(room, publisher) {
            if let Some(m) = self.members.get_mut(&c) {
                m.subscriptions.remove(&p.stream_id);
            }
        }
        self.effects
            .push_back(Effect::EndPublication(p.stream_id.clone()));
        self.broadcast(
            room,
            publisher,
            ServerMessage::StreamRemoved {
                stream_id: p.stream_id,
                user_id: p.user_id,
            },
        );
    }

    fn push_out(&mut self, conn: ConnId, reason: BanReason, message: &str) {
        if self.remove(conn).is_some() {
            self.effects.push_back(Effect::Send(
                conn,
                ServerMessage::ClientBanned {
                    reason,
                    message: message.to_owned(),
                },
            ));
        }
    }

    /// Leave by request or because the connection closed.
    pub fn leave(&mut self, conn: ConnId) -> Result<(), RoomError> {
        self.remove(conn).map(|_| ()).ok_or(RoomError::NotJoined)
    }

    fn member_mut(&mut self, conn: ConnId) -> Result<&mut Member, RoomError> {
        self.members.get_mut(&conn).ok_or(RoomError::NotJoined)
    }

    /// Check a publish would be accepted, before media is negotiated.
    pub fn can_publish(&self, conn: ConnId, audio: bool, video: bool) -> Result<(), RoomError> {
        let m = self.members.get(&conn).ok_or(RoomError::NotJoined)?;
        if m.publication.is_some() {
            return Err(RoomError::AlreadyPublishing);
        }
        if !audio && !video {
            return Err(RoomError::EmptyPublication);
        }
        if !m
            .privileges
            .allows(Privileges::for_kinds(audio, video, true))
        {
            return Err(RoomError::NotPermitted("sending these tracks"));
        }
        let streams = self.publications_in(&m.room);
        if streams >= self.limits.streams_per_room {
            return Err(RoomError::TooManyStreams(streams));
        }
        Ok(())
    }

    fn publications_in(&self, room: &RoomKey) -> usize {
        self.rooms.get(room).map_or(0, |users| {
            users
                .values()
                .filter(|c| self.members.get(c).is_some_and(|m| m.publication.is_some()))
                .count()
        })
    }

    /// Allocate the id the next publication will get.
    pub fn next_stream_id(&mut self) -> String {
        self.next_stream += 1;
        format!("s{}", self.next_stream)
    }

    /// Record a publication whose uplink has been set up; others see stream-added.
    pub fn publish(
        &mut self,
        conn: ConnId,
        stream_id: String,
        audio: bool,
        video: bool,
    ) -> Result<StreamInfo, RoomError> {
        self.can_publish(conn, audio, video)?;
        let m = self.member_mut(conn)?;
        let info = StreamInfo {
            stream_id,
            user_id: m.user_id.clone(),
            audio,
            video,
            audio_muted: false,
            video_muted: false,
        };
        m.publication = Some(info.clone());
        m.lost_publication = None;
        let room = m.room.clone();
        self.broadcast(
            &room,
            conn,
            ServerMessage::StreamAdded {
                stream: info.clone(),
            },
        );
        Ok(info)
    }

    pub fn unpublish(&mut self, conn: ConnId) -> Result<(), RoomError> {
        let m = self.member_mut(conn)?;
        if m.publication.is_none() && m.lost_publication.take().is_some() {
            return Ok(());
        }
        let p = m.publication.take().ok_or(RoomError::NotPublishing)?;
        let room = m.room.clone();
        self.end_publication(&room, conn, p);
        Ok(())
    }

    /// Check a subscription receiving these kinds would be accepted and
    /// return the publication.
    pub fn can_subscribe(
        &self,
        conn: ConnId,
        stream_id: &str,
        (audio, video): (bool, bool),
    ) -> Result<Publication, RoomError> {
        let m = self.members.get(&conn).ok_or(RoomError::NotJoined)?;
        if !m
            .privileges
            .allows(Privileges::for_kinds(audio, video, false))
        {
            return Err(RoomError::NotPermitted("receiving these tracks"));
        }
        if m.subscriptions.len() >= self.limits.subscriptions_per_client {
            return Err(RoomError::TooManySubscriptions(m.subscriptions.len()));
        }
        let p = self
            .publication(stream_id)
            .filter(|p| self.members.get(&p.publisher).map(|o| &o.room) == Some(&m.room))
            .ok_or_else(|| RoomError::NoSuchStream(stream_id.to_owned()))?;
        if p.publisher == conn {
            return Err(RoomError::OwnStream);
        }
        if m.subscriptions.contains(stream_id) {
            return Err(RoomError::AlreadySubscribed(stream_id.to_owned()));
        }
        Ok(p)
    }

    /// Record a subscription whose downlink has been set up.
    pub fn subscribe(
        &mut self,
        conn: ConnId,
        stream_id: &str,
        kinds: (bool, bool),
    ) -> Result<Publication, RoomError> {
        let p = self.can_subscribe(conn, stream_id, kinds)?;
        self.member_mut(conn)?
            .subscriptions
            .insert(stream_id.to_owned());
        Ok(p)
    }

    pub fn unsubscribe(&mut self, conn: ConnId, stream_id: &str) -> Result<(), RoomError> {
        if !self.member_mut(conn)?.subscriptions.remove(stream_id) {
            return Err(RoomError::NotSubscribed(stream_id.to_owned()));
        }
        self.effects.push_back(Effect::EndSubscription {
            conn,
            stream_id: stream_id.to_owned(),
        });
        Ok(())
    }

    /// Mute or unmute a track of this member's publication. Repeating the
    /// current state is accepted and tells nobody.
    pub fn mute(&mut self, conn: ConnId, kind: MediaKind, muted: bool) -> Result<(), RoomError> {
        let m = self.member_mut(conn)?;
        let p = m.publication.as_mut().ok_or(RoomError::NotPublishing)?;
        let (has, flag) = match kind {
            MediaKind::Audio => (p.audio, &mut p.audio_muted),
            MediaKind::Video => (p.video, &mut p.video_muted),
        };
        if !has {
            return Err(RoomError::NoSuchTrack(kind));
        }
        if *flag == muted {
            return Ok(());
        }
        *flag = muted;
        let updated = p.clone();
        let user_id = m.user_id.clone();
        let room = m.room.clone();
        let msg = match (kind, muted) {
            (MediaKind::Audio, true) => ServerMessage::MuteAudio { user_id },
            (MediaKind::Audio, false) => ServerMessage::UnmuteAudio { user_id },
            (MediaKind::Video, true) => ServerMessage::MuteVideo { user_id },
            (MediaKind::Video, false) => ServerMessage::UnmuteVideo { user_id },
        };
        self.broadcast(&room, conn, msg);
        self.broadcast(
            &room,
            conn,
            ServerMessage::StreamUpdated { stream: updated },
        );
        Ok(())
    }

    /// The SFU lost a publisher's uplink on its own (ICE gone, DTLS
    /// closed): the publication ends for everyone (`stream-removed`), so no
    /// one is told of or subscribes to a dead stream. A lost downlink
    /// changes nothing here: the subscriber owns that record, and usually
    /// closed the connection itself just before it unsubscribes.
    pub fn uplink_lost(&mut self, conn: ConnId, stream_id: &str) {
        let Some(m) = self.members.get_mut(&conn) else {
            return;
        };
        if m.publication
            .as_ref()
            .is_some_and(|p| p.stream_id == stream_id)
        {
            if let Some(p) = m.publication.take() {
                m.lost_publication = Some(p.stream_id.clone());
                let room = m.room.clone();
                self.end_publication(&room, conn, p);
            }
        }
    }

    /// Admin RemoveUser*: push the named users out with `banned`, and keep
    /// them out of the room for `limits.rejoin_block` (TRTC's behaviour).
    /// Returns how many were in the room.
    pub fn remove_users(&mut self, room: &RoomKey, user_ids: &[String], now: Instant) -> usize {
        if !self.limits.rejoin_block.is_zero() {
            self.removed.retain(|_, until| *until > now);
            for u in user_ids {
                let until = now + self.limits.rejoin_block;
                self.removed.insert((room.clone(), u.clone()), until);
            }
        }
        let conns: Vec<ConnId> = match self.rooms.get(room) {
            Some(users) => user_ids
                .iter()
                .filter_map(|u| users.get(u))
                .copied()
                .collect(),
            None => return 0,
        };
        for c in &conns {
            self.push_out(
                *c,
                BanReason::Banned,
                "removed from the room by the administrator",
            );
        }
        conns.len()
    }

    /// Admin DismissRoom*: push everyone out with `room-disband`.
    /// Returns how many were in the room.
    pub fn dismiss(&mut self, room: &RoomKey) -> usize {
        let conns: Vec<ConnId> = self
            .rooms
            .get(room)
            .map(|users| users.values().copied().collect())
            .unwrap_or_default();
        for c in &conns {
            self.push_out(
                *c,
                BanReason::RoomDisband,
                "the room was dismissed by the administrator",
            );
        }
        conns.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: u64 = 1400000000;
    const BOTH: (bool, bool) = (true, true);

    fn who(sdk_app_id: u64, user_id: &str, room: RoomId) -> Joiner<'_> {
        Joiner {
            sdk_app_id,
            user_id,
            room,
            privileges: Privileges::ALL,
        }
    }

    /// One fixed moment for tests that do not care about time.
    fn t0() -> Instant {
        static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *T0.get_or_init(Instant::now)
    }

    fn drain(r: &mut Rooms) -> Vec<Effect> {
        std::iter::from_fn(|| r.poll_effect()).collect()
    }

    fn sent_to(effects: &[Effect], conn: ConnId) -> Vec<ServerMessage> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Send(c, m) if *c == conn => Some(m.clone()),
                _ => None,
            })
            .collect()
    }

    fn key(n: u32) -> RoomKey {
        RoomKey {
            sdk_app_id: APP,
            room: RoomId::Num(n),
        }
    }

    #[test]
    fn join_tells_others_and_lists_what_is_there() {
        let mut r = Rooms::new(RoomLimits::default());
        let j = r.join(1, who(APP, "a", RoomId::Num(8)), t0()).unwrap();
        assert_eq!(
            j,
            Joined {
                peers: vec![],
                streams: vec![]
            }
        );
        assert!(drain(&mut r).is_empty());
        let sid = r.next_stream_id();
        r.publish(1, sid.clone(), true, true).unwrap();
        drain(&mut r);

        let j = r.join(2, who(APP, "b", RoomId::Num(8)), t0()).unwrap();
        assert_eq!(j.peers, vec!["a".to_string()]);
        assert_eq!(j.streams.len(), 1);
        assert_eq!(j.streams[0].stream_id, sid);
        let e = drain(&mut r);
        assert_eq!(
            sent_to(&e, 1),
            vec![ServerMessage::PeerJoin {
                user_id: "b".into()
            }]
        );
        assert!(sent_to(&e, 2).is_empty());
        assert_eq!(
            r.join(2, who(APP, "b", RoomId::Num(9)), t0()),
            Err(RoomError::AlreadyJoined)
        );
    }

    #[test]
    fn leave_removes_publication_and_tells_others() {
        let mut r = Rooms::new(RoomLimits::default());
        r.join(1, who(APP, "a", RoomId::Num(8)), t0()).unwrap();
        r.join(2, who(APP, "b", RoomId::Num(8)), t0()).unwrap();
        let sid = r.next_stream_id();
        r.publish(1, sid.clone(), true, false).unwrap();
        r.subscribe(2, &sid, BOTH).unwrap();
        drain(&mut r);

        r.leave(1).unwrap();
        let e = drain(&mut r);
        assert!(e.contains(&Effect::CloseMedia(1)));
        assert!(e.contains(&Effect::EndPublication(sid.clone())));
        assert_eq!(
            sent_to(&e, 2),
            vec![
                ServerMessage::StreamRemoved {
                    stream_id: sid.clone(),
                    user_id: "a".into()
                },
                ServerMessage::PeerLeave {
                    user_id: "a".into()
                },
            ]
        );
        // b's subscription went with the publication.
        assert_eq!(r.unsubscribe(2, &sid), Err(RoomError::NotSubscribed(sid)));
        assert_eq!(r.leave(1), Err(RoomError::NotJoined));
        r.leave(2).unwrap();
        assert_eq!((r.room_count(), r.member_count()), (0, 0));
    }

    #[test]
    fn publish_rules_and_events() {
        let mut r = Rooms::new(RoomLimits::default());
        assert_eq!(r.can_publish(1, true, true), Err(RoomError::NotJoined));
        r.join(1, who(APP, "a", RoomId::Num(8)), t0()).unwrap();
        r.join(2, who(APP, "b", RoomId::Num(8)), t0()).unwrap();
        drain(&mut r);
        assert_eq!(
            r.can_publish(1, false, false),
            Err(RoomError::EmptyPublication)
        );
        assert_eq!(RoomError::EmptyPublication.code(), code::INVALID_PARAMETER);
        let info = r.publish(1, "s9".into(), true, true).unwrap();
        assert_eq!(
            sent_to(&drain(&mut r), 2),
            vec![ServerMessage::StreamAdded {
                stream: info.clone()
            }]
        );
        assert_eq!(
            r.publish(1, "s10".into(), true, true),
            Err(RoomError::AlreadyPublishing)
        );
        r.unpublish(1).unwrap();
        let e = drain(&mut r);
        assert!(e.contains(&Effect::EndPublication("s9".into())));
        assert_eq!(
            sent_to(&e, 2),
            vec![ServerMessage::StreamRemoved {
                stream_id: "s9".into(),
                user_id: "a".into()
            }]
        );
        assert_eq!(r.unpublish(1), Err(RoomError::NotPublishing));
        assert_ne!(r.next_stream_id(), r.next_stream_id());
    }

    #[test]
    fn subscribe_rules() {
        let mut r = Rooms::new(RoomLimits::default());
        r.join(1, who(APP, "a", RoomId::Num(8)), t0()).unwrap();
        r.join(2, who(APP, "b", RoomId::Num(8)), t0()).unwrap();
        r.join(3, who(APP, "c", RoomId::Num(9)), t0()).unwrap();
        r.publish(1, "s1".into(), true, true).unwrap();
        drain(&mut r);
        let e = r.subscribe(2, "nope", BOTH).unwrap_err();
        assert_eq!(
            (e.code(), e.reason()),
            (code::REMOTE_STREAM_NOT_EXIST, Reason::NoSuchStream)
        );
        assert_eq!(r.subscribe(1, "s1", BOTH), Err(RoomError::OwnStream));
        // Another room cannot see the stream.
        assert_eq!(
            r.subscribe(3, "s1", BOTH),
            Err(RoomError::NoSuchStream("s1".into()))
        );
        assert_eq!(r.subscribe(2, "s1", BOTH).unwrap().publisher, 1);
        assert_eq!(
            r.subscribe(2, "s1", BOTH),
            Err(RoomError::AlreadySubscribed("s1".into()))
        );
        r.unsubscribe(2, "s1").unwrap();
        assert_eq!(
            drain(&mut r),
            vec![Effect::EndSubscription {
                conn: 2,
                stream_id: "s1".into()
            }]
        );
        assert_eq!(
            r.unsubscribe(2, "s1"),
            Err(RoomError::NotSubscribed("s1".into()))
        );
        assert!(
            r.subscribe(2, "s1", BOTH).is_ok(),
            "resubscribe after unsubscribe"
        );
    }

    #[test]
    fn duplicate_user_id_kicks_the_earlier_client() {
        let mut r = Rooms::new(RoomLimits::default());
        r.join(1, who(APP, "dev", RoomId::Num(8)), t0()).unwrap();
        r.join(2, who(APP, "viewer", RoomId::Num(8)), t0()).unwrap();
        r.publish(1, "s1".into(), true, true).unwrap();
        r.subscribe(2, "s1", BOTH).unwrap();
        drain(&mut r);

        let j = r.join(3, who(APP, "dev", RoomId::Num(8)), t0()).unwrap();
        assert_eq!(
            j.peers,
            vec!["viewer".to_string()],
            "the kicked one is gone"
        );
        assert!(j.streams.is_empty(), "its publication is gone");
        let e = drain(&mut r);
        assert!(e.contains(&Effect::CloseMedia(1)));
        assert!(e.contains(&Effect::EndPublication("s1".into())));
        assert!(matches!(
            sent_to(&e, 1).as_slice(),
            [ServerMessage::ClientBanned {
                reason: BanReason::Kick,
                ..
            }]
        ));
        assert_eq!(
            sent_to(&e, 2),
            vec![
                ServerMessage::StreamRemoved {
                    stream_id: "s1".into(),
                    user_id: "dev".into()
                },
                ServerMessage::PeerLeave {
                    user_id: "dev".into()
                },
                ServerMessage::PeerJoin {
                    user_id: "dev".into()
                },
            ]
        );
        assert_eq!(r.member(1), None);
        assert_eq!(r.member(3).map(|(_, u)| u), Some("dev"));
        // The same userId in another room is not a duplicate.
        r.join(4, who(APP, "dev", RoomId::Num(9)), t0()).unwrap();
        assert!(sent_to(&drain(&mut r), 3).is_empty());
    }

    #[test]
    fn remove_users_bans_only_those_named() {
        let mut r = Rooms::new(RoomLimits::default());
        for (c, u) in [(1, "a"), (2, "b"), (3, "c")] {
            r.join(c, who(APP, u, RoomId::Num(8)), t0()).unwrap();
        }
        r.publish(1, "s1".into(), true, true).unwrap();
        drain(&mut r);
        let n = r.remove_users(&key(8), &["a".into(), "b".into(), "ghost".into()], t0());
        assert_eq!(n, 2);
        let e = drain(&mut r);
        for c in [1, 2] {
            assert!(matches!(
                sent_to(&e, c).last(),
                Some(ServerMessage::ClientBanned {
                    reason: BanReason::Banned,
                    ..
                })
            ));
            assert!(e.contains(&Effect::CloseMedia(c)));
        }
        assert!(e.contains(&Effect::EndPublication("s1".into())));
        assert!(sent_to(&e, 3)
            .iter()
            .all(|m| !matches!(m, ServerMessage::ClientBanned { .. })));
        assert_eq!(r.member_count(), 1);
        assert_eq!(r.remove_users(&key(99), &["c".into()], t0()), 0);
        // A removed user stays out of that room for the block (TRTC
        // behaviour), and may come back after it; other rooms are open.
        let later = t0() + Duration::from_secs(59);
        assert_eq!(
            r.join(1, who(APP, "a", RoomId::Num(8)), later),
            Err(RoomError::RecentlyRemoved(1))
        );
        assert!(r.join(1, who(APP, "a", RoomId::Num(9)), later).is_ok());
        r.leave(1).unwrap();
        let after = t0() + Duration::from_secs(60);
        assert!(r.join(1, who(APP, "a", RoomId::Num(8)), after).is_ok());
    }

    #[test]
    fn dismiss_disbands_the_room_only() {
        let mut r = Rooms::new(RoomLimits::default());
        r.join(1, who(APP, "a", RoomId::Num(8)), t0()).unwrap();
        r.join(2, who(APP, "b", RoomId::Num(8)), t0()).unwrap();
        r.join(3, who(APP, "a", RoomId::Num(9)), t0()).unwrap();
        drain(&mut r);
        assert_eq!(r.dismiss(&key(8)), 2);
        let e = drain(&mut r);
        for c in [1, 2] {
            assert!(sent_to(&e, c).contains(&ServerMessage::ClientBanned {
                reason: BanReason::RoomDisband,
                message: "the room was dismissed by the administrator".into()
            }));
        }
        assert!(sent_to(&e, 3).is_empty());
        assert_eq!((r.room_count(), r.member_count()), (1, 1));
        assert_eq!(r.dismiss(&key(8)), 0);
    }

    #[test]
    fn string_and_numeric_rooms_and_apps_are_separate() {
        let mut r = Rooms::new(RoomLimits::default());
        r.join(1, who(APP, "a", RoomId::Num(8)), t0()).unwrap();
        r.join(2, who(APP, "a", RoomId::Str("8".into())), t0())
            .unwrap();
        r.join(3, who(APP + 1, "a", RoomId::Num(8)), t0()).unwrap();
        let e = drain(&mut r);
        assert!(e.is_empty(), "no kick, no peer-join across rooms: {e:?}");
        assert_eq!(r.room_count(), 3);
        let str_key = RoomKey {
            sdk_app_id: APP,
            room: RoomId::Str("8".into()),
        };
        assert_eq!(r.dismiss(&str_key), 1);
        assert!(r.member(1).is_some() && r.member(3).is_some() && r.member(2).is_none());
    }

    #[test]
    fn mute_events_carry_the_user_and_skip_repeats() {
        let info = |audio_muted| StreamInfo {
            stream_id: "s1".into(),
            user_id: "a".into(),
            audio: true,
            video: false,
            audio_muted,
            video_muted: false,
        };
        let mut r = Rooms::new(RoomLimits::default());
        r.join(1, who(APP, "a", RoomId::Num(8)), t0()).unwrap();
        r.join(2, who(APP, "b", RoomId::Num(8)), t0()).unwrap();
        assert_eq!(
            r.mute(1, MediaKind::Audio, true),
            Err(RoomError::NotPublishing)
        );
        r.publish(1, "s1".into(), true, false).unwrap();
        drain(&mut r);
        r.mute(1, MediaKind::Audio, true).unwrap();
        r.mute(1, MediaKind::Audio, true).unwrap();
        r.mute(1, MediaKind::Audio, false).unwrap();
        assert_eq!(
            sent_to(&drain(&mut r), 2),
            vec![
                ServerMessage::MuteAudio {
                    user_id: "a".into()
                },
                ServerMessage::StreamUpdated { stream: info(true) },
                ServerMessage::UnmuteAudio {
                    user_id: "a".into()
                },
                ServerMessage::StreamUpdated {
                    stream: info(false)
                },
            ]
        );
        assert_eq!(
            r.mute(1, MediaKind::Video, true),
            Err(RoomError::NoSuchTrack(MediaKind::Video))
        );
        r.mute(1, MediaKind::Audio, true).unwrap();
        drain(&mut r);
        // Late joiners see the muted state in the stream list.
        let j = r.join(3, who(APP, "c", RoomId::Num(8)), t0()).unwrap();
        assert!(j.streams[0].audio_muted);
    }
}

#[cfg(test)]
mod limit_tests {
    use super::*;

    fn joiner(user_id: &str, room: u32, privileges: u32) -> Joiner<'_> {
        Joiner {
            sdk_app_id: 1,
            user_id,
            room: RoomId::Num(room),
            privileges: Privileges(privileges),
        }
    }

    #[test]
    fn room_size_streams_subscriptions_and_rooms_are_capped() {
        let limits = RoomLimits {
            members_per_room: 3,
            streams_per_room: 2,
            subscriptions_per_client: 1,
            rooms_per_app: 2,
            rejoin_block: Duration::ZERO,
        };
        let mut r = Rooms::new(limits);
        let now = Instant::now();
        let all = u32::MAX;
        for (c, u) in [(1, "a"), (2, "b"), (3, "c")] {
            r.join(c, joiner(u, 8, all), now).unwrap();
        }
        assert_eq!(
            r.join(4, joiner("d", 8, all), now),
            Err(RoomError::RoomFull(3))
        );
        // The same userId replacing itself (kick) is no new member.
        assert!(r.join(4, joiner("c", 8, all), now).is_ok());
        r.join(5, joiner("e", 9, all), now).unwrap();
        assert_eq!(
            r.join(6, joiner("f", 10, all), now),
            Err(RoomError::TooManyRooms(2))
        );
        r.publish(1, "s1".into(), true, true).unwrap();
        r.publish(4, "s2".into(), true, false).unwrap();
        assert_eq!(
            r.can_publish(2, true, false),
            Err(RoomError::TooManyStreams(2))
        );
        r.subscribe(2, "s1", (true, true)).unwrap();
        assert_eq!(
            r.can_subscribe(2, "s2", (true, false)).map(|_| ()),
            Err(RoomError::TooManySubscriptions(1))
        );
    }

    #[test]
    fn privileges_decide_create_enter_send_and_receive() {
        let mut r = Rooms::new(RoomLimits::default());
        let now = Instant::now();
        let p = |bits: &[u32]| bits.iter().fold(0, |a, b| a | b);
        let enter_only = p(&[privilege::ENTER, privilege::RECV_AUDIO]);
        assert_eq!(
            r.join(1, joiner("a", 8, enter_only), now),
            Err(RoomError::NotPermitted("creating the room"))
        );
        let host = p(&[privilege::CREATE, privilege::ENTER, privilege::SEND_AUDIO]);
        r.join(1, joiner("host", 8, host), now).unwrap();
        assert_eq!(
            r.can_publish(1, true, true),
            Err(RoomError::NotPermitted("sending these tracks"))
        );
        r.publish(1, "s1".into(), true, false).unwrap();
        assert_eq!(
            r.join(2, joiner("b", 8, privilege::CREATE), now),
            Err(RoomError::NotPermitted("entering the room"))
        );
        r.join(2, joiner("b", 8, enter_only), now).unwrap();
        assert_eq!(
            r.can_subscribe(2, "s1", (true, true)).map(|_| ()),
            Err(RoomError::NotPermitted("receiving these tracks"))
        );
        assert!(r.subscribe(2, "s1", (true, false)).is_ok());
    }

    #[test]
    fn a_lost_uplink_ends_the_publication_for_everyone_and_unpublish_still_succeeds() {
        let mut r = Rooms::new(RoomLimits::default());
        let now = Instant::now();
        r.join(1, joiner("pub", 8, u32::MAX), now).unwrap();
        r.join(2, joiner("sub", 8, u32::MAX), now).unwrap();
        r.publish(1, "s1".into(), true, true).unwrap();
        r.subscribe(2, "s1", (true, true)).unwrap();
        while r.poll_effect().is_some() {}
        r.uplink_lost(1, "s9"); // not its stream: nothing
        assert!(r.poll_effect().is_none());
        r.uplink_lost(1, "s1");
        let effects: Vec<_> = std::iter::from_fn(|| r.poll_effect()).collect();
        assert!(effects.contains(&Effect::EndPublication("s1".into())));
        assert!(effects.iter().any(|e| matches!(e,
            Effect::Send(2, ServerMessage::StreamRemoved { stream_id, .. }) if stream_id == "s1")));
        assert_eq!(
            r.can_subscribe(2, "s1", (true, true)).map(|_| ()),
            Err(RoomError::NoSuchStream("s1".into()))
        );
        assert_eq!(
            r.unpublish(1),
            Ok(()),
            "the client's own unpublish after its loss"
        );
        assert_eq!(r.unpublish(1), Err(RoomError::NotPublishing));
    }
}
