//! TURN credentials for the clients that join, so a device needs no TURN
//! secret of its own: the TURN REST scheme coturn implements with
//! `use-auth-secret` / `static-auth-secret`. The username is
//! `EXPIRY:USERID` (Unix seconds), the credential base64 of HMAC-SHA1 of
//! the username keyed with the shared secret; the TURN server recomputes it
//! and refuses it after the expiry. Pure: the time comes in.

use crate::config::{Problems, Secret};
use crate::protocol::IceServer;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Deserialize;

/// `[turn]` in the room's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TurnConfig {
    /// The TURN server's URLs as clients reach them: `turn:host:3478?transport=udp`,
    /// `turn:host:3478?transport=tcp`, `turns:host:443?transport=tcp`.
    pub urls: Vec<String>,
    /// The secret shared with the TURN server (coturn's `static-auth-secret`),
    /// or `shared_secret_file` holding it.
    #[serde(default)]
    pub shared_secret: Secret,
    #[serde(default)]
    pub shared_secret_file: Option<std::path::PathBuf>,
    /// How long credentials last, in seconds.
    #[serde(default = "default_ttl")]
    pub credential_ttl_s: u64,
}

fn default_ttl() -> u64 {
    3600
}

impl TurnConfig {
    pub fn validate(&self, p: &mut Problems) {
        p.check(!self.urls.is_empty(), "turn.urls", "at least one TURN URL");
        for (i, url) in self.urls.iter().enumerate() {
            p.check(
                ["turn:", "turns:", "stun:"]
                    .iter()
                    .any(|s| url.starts_with(s)),
                &format!("turn.urls[{i}]"),
                format!("{url:?} is not a turn:, turns: or stun: URL"),
            );
        }
        p.check(
            self.shared_secret.expose().len() >= 16,
            "turn.shared_secret",
            "at least 16 bytes (coturn's static-auth-secret)",
        );
        p.check(
            (60..=86_400).contains(&self.credential_ttl_s),
            "turn.credential_ttl_s",
            "60 to 86400 seconds",
        );
    }

    /// The TURN server for `user_id`, credentials valid from `now_s` on.
    pub fn for_user(&self, user_id: &str, now_s: u64) -> IceServer {
        let secret = self.shared_secret.expose().as_bytes();
        ice_server(&self.urls, secret, user_id, now_s, self.credential_ttl_s)
    }
}

/// The TURN server for `user_id`, with credentials valid until `now + ttl`.
pub fn ice_server(
    urls: &[String],
    secret: &[u8],
    user_id: &str,
    now_s: u64,
    ttl_s: u64,
) -> IceServer {
    let username = format!("{}:{user_id}", now_s + ttl_s);
    // HMAC takes keys of any length.
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(username.as_bytes());
    let credential = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    IceServer {
        urls: urls.to_vec(),
        username: Some(username),
        credential: Some(credential),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_follow_the_turn_rest_scheme() {
        let urls = vec!["turn:turn.example:3478?transport=udp".to_owned()];
        let s = ice_server(&urls, b"north", "device-1", 1_700_000_000, 3600);
        assert_eq!(s.username.as_deref(), Some("1700003600:device-1"));
        // `printf %s 1700003600:device-1 | openssl dgst -sha1 -hmac north -binary | base64`
        assert_eq!(
            s.credential.as_deref(),
            Some("wxyDfiJHJcDChOh5dInbcQUkiGs=")
        );
        assert_eq!(s.urls, urls);
        assert!(
            !format!("{s:?}").contains("wxyD"),
            "the credential is not printed"
        );
    }
}
