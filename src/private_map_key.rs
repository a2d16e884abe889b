//! TRTC's privateMapKey: a TLSSigAPIv2 ticket whose `userbuf` names the
//! app, the room (numeric or string), an absolute expiry and a privilege
//! bitmap, so that a key opens one room for one user with given rights.
//! Compatible with Tencent's own `genPrivateMapKey` and
//! `genPrivateMapKeyWithStringRoomID` (TLSSigAPIv2, e.g. npm
//! `tls-sig-api-v2`). Pure: encode, parse, verify; no I/O.
//!
//! The userbuf, big-endian: `ver` (1 byte: 0 numeric room, 1 string room),
//! account length (2) and account, sdkAppId (4), numeric room id (4),
//! expiry as unix seconds (4), privilege map (4), account type (4), and for
//! `ver` 1 the string room's length (2) and bytes.

use crate::protocol::RoomId;
use crate::usersig::{self, UserSigError};

/// TRTC's privilege bits (a privateMapKey grants a set of them).
pub mod privilege {
    pub const CREATE: u32 = 1;
    pub const ENTER: u32 = 2;
    pub const SEND_AUDIO: u32 = 4;
    pub const RECV_AUDIO: u32 = 8;
    pub const SEND_VIDEO: u32 = 16;
    pub const RECV_VIDEO: u32 = 32;
    /// Every privilege TRTC defines.
    pub const ALL: u32 = 255;
}

/// What a privateMapKey's userbuf says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub user_id: String,
    pub sdk_app_id: u64,
    pub room: RoomId,
    /// Unix seconds.
    pub expires_at: u64,
    pub privileges: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrivateMapKeyError {
    #[error("the key itself: {0}")]
    Ticket(#[from] UserSigError),
    #[error("the key carries no userbuf")]
    NoUserbuf,
    #[error("the userbuf is malformed")]
    Malformed,
    #[error("the key is for another user")]
    WrongUser,
    #[error("the key is for another app")]
    WrongApp,
    #[error("the key is for another room")]
    WrongRoom,
    #[error("the key expired at {0} (unix seconds)")]
    Expired(u64),
}

/// The userbuf for `grant`, byte for byte as Tencent's libraries make it.
pub fn encode_userbuf(grant: &Grant) -> Vec<u8> {
    let (ver, auth_id, room_str) = match &grant.room {
        RoomId::Num(n) => (0u8, *n, None),
        RoomId::Str(s) => (1u8, 0, Some(s.as_bytes())),
    };
    let account = grant.user_id.as_bytes();
    let mut b = vec![ver];
    b.extend((account.len() as u16).to_be_bytes());
    b.extend(account);
    b.extend((grant.sdk_app_id as u32).to_be_bytes());
    b.extend(auth_id.to_be_bytes());
    b.extend((grant.expires_at as u32).to_be_bytes());
    b.extend(grant.privileges.to_be_bytes());
    b.extend(0u32.to_be_bytes());
    if let Some(room) = room_str {
        b.extend((room.len() as u16).to_be_bytes());
        b.extend(room);
    }
    b
}

/// Reads big-endian fields off the front of a byte slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PrivateMapKeyError> {
        if self.0.len() < n {
            return Err(PrivateMapKeyError::Malformed);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u16(&mut self) -> Result<u16, PrivateMapKeyError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, PrivateMapKeyError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn text(&mut self) -> Result<String, PrivateMapKeyError> {
        let n = self.u16()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| PrivateMapKeyError::Malformed)
    }
}

/// Parse a userbuf made by [`encode_userbuf`] or Tencent's libraries.
pub fn parse_userbuf(buf: &[u8]) -> Result<Grant, PrivateMapKeyError> {
    let mut r = Reader(buf);
    let ver = r.take(1)?[0];
    let user_id = r.text()?;
    let sdk_app_id = u64::from(r.u32()?);
    let auth_id = r.u32()?;
    let expires_at = u64::from(r.u32()?);
    let privileges = r.u32()?;
    let _account_type = r.u32()?;
    let room = match ver {
        0 => RoomId::Num(auth_id),
        1 => RoomId::Str(r.text()?),
        _ => return Err(PrivateMapKeyError::Malformed),
    };
    if !r.0.is_empty() {
        return Err(PrivateMapKeyError::Malformed);
    }
    Ok(Grant {
        user_id,
        sdk_app_id,
        room,
        expires_at,
        privileges,
    })
}

/// Issue a privateMapKey: `grant` signed with the app's key, the ticket
/// valid for `expire` seconds from `now`.
pub fn generate(key: &str, grant: &Grant, expire: u64, now: u64) -> String {
    let userbuf = encode_userbuf(grant);
    usersig::generate(
        grant.sdk_app_id,
        key,
        &grant.user_id,
        expire,
        now,
        Some(&userbuf),
    )
}

/// Check a privateMapKey for `user_id` joining `room` of `sdk_app_id`;
/// the privileges it grants.
pub fn verify(
    pmk: &str,
    sdk_app_id: u64,
    key: &str,
    user_id: &str,
    room: &RoomId,
    now: u64,
) -> Result<u32, PrivateMapKeyError> {
    let claims = usersig::verify(pmk, sdk_app_id, key, user_id, now)?;
    let grant = parse_userbuf(
        claims
            .userbuf
            .as_deref()
            .ok_or(PrivateMapKeyError::NoUserbuf)?,
    )?;
    if grant.user_id != user_id {
        return Err(PrivateMapKeyError::WrongUser);
    }
    if grant.sdk_app_id != sdk_app_id {
        return Err(PrivateMapKeyError::WrongApp);
    }
    if &grant.room != room {
        return Err(PrivateMapKeyError::WrongRoom);
    }
    if grant.expires_at <= now {
        return Err(PrivateMapKeyError::Expired(grant.expires_at));
    }
    Ok(grant.privileges)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "a-32-byte-or-longer-app-secret-key-for-tests";

    fn grant(room: RoomId, privileges: u32, expires_at: u64) -> Grant {
        Grant {
            user_id: "alice".into(),
            sdk_app_id: 1400000000,
            room,
            expires_at,
            privileges,
        }
    }

    #[test]
    fn userbuf_layout_matches_tencents() {
        // From npm tls-sig-api-v2 1.0.2: _genUserbuf("alice", 1234, ...,
        // privilegeMap 255, accountType 0, roomstr null) at expiry 0x6000_0000.
        let g = grant(RoomId::Num(1234), 255, 0x6000_0000);
        let b = encode_userbuf(&g);
        let want: Vec<u8> = [
            &[0u8, 0, 5][..],
            b"alice",
            &1400000000u32.to_be_bytes(),
            &1234u32.to_be_bytes(),
            &[0x60, 0, 0, 0],
            &[0, 0, 0, 255],
            &[0, 0, 0, 0],
        ]
        .concat();
        assert_eq!(b, want);
        assert_eq!(parse_userbuf(&b).unwrap(), g);
        let s = grant(RoomId::Str("lobby-1".into()), 3, 9);
        let b = encode_userbuf(&s);
        assert_eq!((b[0], &b[b.len() - 9..]), (1, &b"\0\x07lobby-1"[..]));
        assert_eq!(parse_userbuf(&b).unwrap(), s);
        assert_eq!(
            parse_userbuf(&b[..b.len() - 1]),
            Err(PrivateMapKeyError::Malformed)
        );
    }

    #[test]
    fn a_key_opens_its_room_for_its_user_until_it_expires() {
        let now = 1_700_000_000;
        let room = RoomId::Num(8);
        let pmk = generate(KEY, &grant(room.clone(), 42, now + 300), 300, now);
        assert_eq!(verify(&pmk, 1400000000, KEY, "alice", &room, now), Ok(42));
        let other = RoomId::Num(9);
        assert_eq!(
            verify(&pmk, 1400000000, KEY, "alice", &other, now),
            Err(PrivateMapKeyError::WrongRoom)
        );
        assert!(matches!(
            verify(&pmk, 1400000000, KEY, "bob", &room, now),
            Err(PrivateMapKeyError::Ticket(UserSigError::WrongUser))
        ));
        assert!(matches!(
            verify(&pmk, 1400000000, "forged-key", "alice", &room, now),
            Err(PrivateMapKeyError::Ticket(UserSigError::BadSignature))
        ));
        // The userbuf's own expiry counts even while the ticket is valid.
        let short = generate(KEY, &grant(room.clone(), 42, now + 10), 300, now);
        assert_eq!(
            verify(&short, 1400000000, KEY, "alice", &room, now + 20),
            Err(PrivateMapKeyError::Expired(now + 10))
        );
        let plain = usersig::generate(1400000000, KEY, "alice", 300, now, None);
        assert_eq!(
            verify(&plain, 1400000000, KEY, "alice", &room, now),
            Err(PrivateMapKeyError::NoUserbuf)
        );
    }
}
