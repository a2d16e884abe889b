//! userSig: the signed, expiring ticket a client presents on join.
//!
//! Compatible with TRTC's TLSSigAPIv2: HMAC-SHA256 (keyed with the app's secret
//! key) over a fixed text of the fields, the JSON document zlib-compressed,
//! base64-encoded, then made URL-safe with `+`->`*`, `/`->`-`, `=`->`_`.
//! Official libraries differ in JSON spacing, field types and compression
//! level, so [`verify`] decodes and checks fields and MAC; it never compares
//! strings. Pure: the caller passes the current time.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use flate2::read::ZlibDecoder;
use flate2::write::ZlibEncoder;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::io::{Read, Write};

/// Decompressed userSigs larger than this are refused (a zlib bomb guard).
const MAX_DECODED_BYTES: u64 = 16 * 1024;

/// Why a userSig was refused. The `Display` text is the one-line reason the
/// CLI and the join error carry; it never contains the key or the signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserSigError {
    #[error("bad encoding: {0}")]
    BadEncoding(String),
    #[error("bad signature")]
    BadSignature,
    #[error("wrong app: signed for sdkAppId {found}, expected {expected}")]
    WrongApp { expected: u64, found: u64 },
    #[error("wrong user: signed for another userId")]
    WrongUser,
    #[error("expired at {expired_at} (unix seconds)")]
    Expired { expired_at: u64 },
}

impl UserSigError {
    /// The reason carried in signaling errors.
    pub fn reason(&self) -> crate::protocol::Reason {
        use crate::protocol::Reason;
        match self {
            UserSigError::BadEncoding(_) => Reason::UsersigBadEncoding,
            UserSigError::BadSignature => Reason::UsersigBadSignature,
            UserSigError::WrongApp { .. } => Reason::UsersigWrongApp,
            UserSigError::WrongUser => Reason::UsersigWrongUser,
            UserSigError::Expired { .. } => Reason::UsersigExpired,
        }
    }
}

/// The fields a valid userSig proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub sdk_app_id: u64,
    pub identifier: String,
    pub time: u64,
    pub expire: u64,
    pub userbuf: Option<Vec<u8>>,
}

impl Claims {
    /// Unix second after which the ticket is no longer valid.
    pub fn expires_at(&self) -> u64 {
        self.time.saturating_add(self.expire)
    }
}

/// The text TLSSigAPIv2 signs; `userbuf_b64` is the standard base64 of userbuf.
fn content_to_sign(
    identifier: &str,
    sdk_app_id: u64,
    time: u64,
    expire: u64,
    userbuf_b64: Option<&str>,
) -> String {
    let mut s = format!(
        "TLS.identifier:{identifier}\nTLS.sdkappid:{sdk_app_id}\nTLS.time:{time}\nTLS.expire:{expire}\n"
    );
    if let Some(buf) = userbuf_b64 {
        s.push_str("TLS.userbuf:");
        s.push_str(buf);
        s.push('\n');
    }
    s
}

fn mac(key: &str, content: &str) -> Hmac<Sha256> {
    // HMAC accepts keys of any length; new_from_slice cannot fail for it.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(content.as_bytes());
    mac
}

/// The `TLS.sig` field: standard base64 of the HMAC-SHA256.
pub fn signature(
    key: &str,
    identifier: &str,
    sdk_app_id: u64,
    time: u64,
    expire: u64,
    userbuf: Option<&[u8]>,
) -> String {
    let buf = userbuf.map(|b| B64.encode(b));
    let content = content_to_sign(identifier, sdk_app_id, time, expire, buf.as_deref());
    B64.encode(mac(key, &content).finalize().into_bytes())
}

/// Issue a userSig valid from `now` for `expire` seconds.
pub fn generate(
    sdk_app_id: u64,
    key: &str,
    identifier: &str,
    expire: u64,
    now: u64,
    userbuf: Option<&[u8]>,
) -> String {
    let sig = signature(key, identifier, sdk_app_id, now, expire, userbuf);
    let mut doc = json!({
        "TLS.ver": "2.0",
        "TLS.identifier": identifier,
        "TLS.sdkappid": sdk_app_id,
        "TLS.expire": expire,
        "TLS.time": now,
        "TLS.sig": sig,
    });
    if let Some(buf) = userbuf {
        doc["TLS.userbuf"] = Value::String(B64.encode(buf));
    }
    let mut z = ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing into a Vec cannot fail.
    let _ = z.write_all(doc.to_string().as_bytes());
    let compressed = z.finish().unwrap_or_default();
    escape(&B64.encode(compressed))
}

fn escape(b64: &str) -> String {
    b64.chars()
        .map(|c| match c {
            '+' => '*',
            '/' => '-',
            '=' => '_',
            c => c,
        })
        .collect()
}

fn unescape(sig: &str) -> String {
    sig.chars()
        .map(|c| match c {
            '*' => '+',
            '-' => '/',
            '_' => '=',
            c => c,
        })
        .collect()
}

/// Official libraries write numbers either as JSON numbers or as strings.
fn number_field(doc: &Value, name: &str) -> Result<u64, UserSigError> {
    match doc.get(name) {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    }
    .ok_or_else(|| UserSigError::BadEncoding(format!("missing or non-numeric {name}")))
}

fn string_field<'a>(doc: &'a Value, name: &str) -> Result<&'a str, UserSigError> {
    doc.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| UserSigError::BadEncoding(format!("missing {name}")))
}

/// A decoded userSig: its fields, the MAC it claims and the text it signs.
struct Decoded {
    claims: Claims,
    claimed_mac: Vec<u8>,
    signed_text: String,
}

fn decode(sig: &str) -> Result<Decoded, UserSigError> {
    let compressed = B64
        .decode(unescape(sig.trim()))
        .map_err(|e| UserSigError::BadEncoding(format!("base64: {e}")))?;
    let mut json = Vec::new();
    ZlibDecoder::new(compressed.as_slice())
        .take(MAX_DECODED_BYTES)
        .read_to_end(&mut json)
        .map_err(|e| UserSigError::BadEncoding(format!("zlib: {e}")))?;
    let doc: Value = serde_json::from_slice(&json)
        .map_err(|e| UserSigError::BadEncoding(format!("json: {e}")))?;
    let identifier = string_field(&doc, "TLS.identifier")?.to_owned();
    let sdk_app_id = number_field(&doc, "TLS.sdkappid")?;
    let time = number_field(&doc, "TLS.time")?;
    let expire = number_field(&doc, "TLS.expire")?;
    let userbuf_b64 = doc.get("TLS.userbuf").and_then(Value::as_str);
    let claimed_mac = B64
        .decode(string_field(&doc, "TLS.sig")?)
        .map_err(|e| UserSigError::BadEncoding(format!("TLS.sig base64: {e}")))?;
    let signed_text = content_to_sign(&identifier, sdk_app_id, time, expire, userbuf_b64);
    let userbuf = match userbuf_b64 {
        Some(b) => Some(
            B64.decode(b)
                .map_err(|e| UserSigError::BadEncoding(format!("TLS.userbuf base64: {e}")))?,
        ),
        None => None,
    };
    Ok(Decoded {
        claims: Claims {
            sdk_app_id,
            identifier,
            time,
            expire,
            userbuf,
        },
        claimed_mac,
        signed_text,
    })
}

/// Decode a userSig into its fields and check its MAC with `key`, without
/// judging app, user or time.
pub fn decode_and_check(sig: &str, key: &str) -> Result<Claims, UserSigError> {
    let d = decode(sig)?;
    mac(key, &d.signed_text)
        .verify_slice(&d.claimed_mac)
        .map_err(|_| UserSigError::BadSignature)?;
    Ok(d.claims)
}

/// The fields of a userSig, unverified: what a device (which never holds
/// the key) can know, e.g. when its ticket expires.
pub fn decode_unverified(sig: &str) -> Result<Claims, UserSigError> {
    decode(sig).map(|d| d.claims)
}

pub fn verify(
    sig: &str,
    sdk_app_id: u64,
    key: &str,
    user_id: &str,
    now: u64,
) -> Result<Claims, UserSigError> {
    let claims = decode_and_check(sig, key)?;
    if claims.sdk_app_id != sdk_app_id {
        return Err(UserSigError::WrongApp {
            expected: sdk_app_id,
            found: claims.sdk_app_id,
        });
    }
    if claims.identifier != user_id {
        return Err(UserSigError::WrongUser);
    }
    if now > claims.expires_at() {
        return Err(UserSigError::Expired {
            expired_at: claims.expires_at(),
        });
    }
    Ok(claims)
}

/// Seconds since the Unix epoch, for callers at the I/O edge.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: u64 = 1_400_000_000;
    const KEY: &str = "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e";

    #[test]
    fn known_answer_matches_tlssigapiv2() {
        assert_eq!(
            signature(KEY, "0", APP, 1_569_910_200, 15_552_000, None),
            "CpjuBdQs9ZwnuGAJR8onoOeI9fweX2vIMMY94iOJWJY="
        );
        assert_eq!(
            signature(KEY, "0", APP, 1_569_910_200, 15_552_000, Some(b"abc")),
            "bC3u5cuslSg8Ds7KY58mhSkTrxunrFu50dkdkCYH4i8="
        );
    }

    #[test]
    fn round_trip_with_and_without_userbuf() {
        let now = 1_700_000_000;
        let sig = generate(APP, KEY, "device-1", 3600, now, None);
        assert!(!sig.contains(['+', '/', '=']), "userSig must be URL-safe");
        let c = verify(&sig, APP, KEY, "device-1", now + 10).expect("valid");
        assert_eq!(
            (c.identifier.as_str(), c.time, c.expire),
            ("device-1", now, 3600)
        );
        assert_eq!(c.userbuf, None);

        let sig = generate(APP, KEY, "u", 60, now, Some(b"abc"));
        let c = verify(&sig, APP, KEY, "u", now).expect("valid");
        assert_eq!(c.userbuf.as_deref(), Some(&b"abc"[..]));
    }

    #[test]
    fn accepts_other_json_layouts_and_string_numbers() {
        // As some official libraries write it: spaces, numbers as strings, best compression.
        let sig = signature(KEY, "alice", APP, 1000, 86400, None);
        let doc = format!(
            "{{ \"TLS.ver\": \"2.0\", \"TLS.identifier\": \"alice\", \"TLS.sdkappid\": \"{APP}\", \
             \"TLS.expire\": \"86400\", \"TLS.time\": \"1000\", \"TLS.sig\": \"{sig}\" }}"
        );
        let mut z = ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        z.write_all(doc.as_bytes()).unwrap();
        let user_sig = escape(&B64.encode(z.finish().unwrap()));
        assert!(verify(&user_sig, APP, KEY, "alice", 2000).is_ok());
    }

    #[test]
    fn each_rejection_reason() {
        let now = 1_700_000_000;
        let sig = generate(APP, KEY, "bob", 100, now, None);
        assert_eq!(
            verify(&sig, APP, "another-key", "bob", now),
            Err(UserSigError::BadSignature)
        );
        assert_eq!(
            verify(&sig, APP + 1, KEY, "bob", now),
            Err(UserSigError::WrongApp {
                expected: APP + 1,
                found: APP
            })
        );
        assert_eq!(
            verify(&sig, APP, KEY, "eve", now),
            Err(UserSigError::WrongUser)
        );
        assert_eq!(
            verify(&sig, APP, KEY, "bob", now + 100).map(|c| c.time),
            Ok(now)
        );
        assert_eq!(
            verify(&sig, APP, KEY, "bob", now + 101),
            Err(UserSigError::Expired {
                expired_at: now + 100
            })
        );
        for garbage in ["", "!!!", "eJzLSM3JyQcABiwCFQ__", "aGVsbG8_"] {
            let e = verify(garbage, APP, KEY, "bob", now).unwrap_err();
            assert!(
                matches!(e, UserSigError::BadEncoding(_)),
                "{garbage:?}: {e:?}"
            );
        }
    }

    #[test]
    fn forged_fields_fail_the_mac() {
        // Re-sign nothing, just change the identifier inside a valid ticket.
        let now = 1_700_000_000;
        let sig = generate(APP, KEY, "bob", 100, now, None);
        let compressed = B64.decode(unescape(&sig)).unwrap();
        let mut json = String::new();
        ZlibDecoder::new(compressed.as_slice())
            .read_to_string(&mut json)
            .unwrap();
        let forged = json.replace("\"bob\"", "\"admin\"");
        let mut z = ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(forged.as_bytes()).unwrap();
        let forged = escape(&B64.encode(z.finish().unwrap()));
        assert_eq!(
            verify(&forged, APP, KEY, "admin", now),
            Err(UserSigError::BadSignature)
        );
    }
}
