//! The room service's config file (`callbox room --config room.toml`).

use crate::config::{self, ConfigError, Problems, Secret};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomConfig {
    pub server: ServerConfig,
    pub media: MediaConfig,
    pub admin: AdminConfig,
    /// Applications allowed to join: sdkAppId and the key their userSigs are signed with.
    #[serde(default)]
    pub apps: Vec<AppConfig>,
    #[serde(default)]
    pub dev: DevConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// HTTP(S) + WebSocket listener.
    pub listen: SocketAddr,
    /// PEM certificate chain; with `tls_key`, the listener speaks HTTPS/WSS.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Directory of the browser SDK and pages served at `/`.
    pub web_root: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaConfig {
    /// The one UDP socket all media uses.
    pub udp_listen: SocketAddr,
    /// Address put in ICE candidates (public/NAT address, or a forwarded port).
    /// Defaults to `udp_listen` when that is a specific address.
    pub advertise: Option<SocketAddr>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Bearer key for the admin API.
    pub key: Secret,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    pub sdk_app_id: u64,
    pub secret_key: Secret,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevConfig {
    /// Development only: `POST /api/dev/usersig` issues userSigs to anyone who asks.
    #[serde(default)]
    pub usersig_endpoint: bool,
}

impl RoomConfig {
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        config::load_checked(file, Self::validate)
    }

    pub fn parse(file: &Path, text: &str) -> Result<Self, ConfigError> {
        config::parse_checked(file, text, Self::validate)
    }

    fn validate(&self, file: &Path) -> Result<(), ConfigError> {
        let mut p = Problems::default();
        let tls = (&self.server.tls_cert, &self.server.tls_key);
        p.check(
            tls.0.is_some() == tls.1.is_some(),
            "server.tls_cert",
            "tls_cert and tls_key go together",
        );
        for (key, path) in [("server.tls_cert", tls.0), ("server.tls_key", tls.1)] {
            if let Some(path) = path {
                p.check_file(key, path);
            }
        }
        if let Some(root) = &self.server.web_root {
            p.check(
                root.is_dir(),
                "server.web_root",
                format!("{} is not a directory", root.display()),
            );
        }
        p.check(
            self.admin.key.expose().len() >= 16,
            "admin.key",
            "must be at least 16 characters",
        );
        p.check(
            !self.apps.is_empty(),
            "apps",
            "at least one [[apps]] entry is needed",
        );
        for (i, app) in self.apps.iter().enumerate() {
            p.check(
                !app.secret_key.expose().is_empty(),
                &format!("apps[{i}].secret_key"),
                "must not be empty",
            );
            if self.apps[..i]
                .iter()
                .any(|a| a.sdk_app_id == app.sdk_app_id)
            {
                p.add(
                    &format!("apps[{i}].sdk_app_id"),
                    format!("{} is listed twice", app.sdk_app_id),
                );
            }
        }
        match self.media.advertise {
            Some(a) => p.check(
                !a.ip().is_unspecified() && a.port() != 0,
                "media.advertise",
                "must be a concrete address and port",
            ),
            None => p.check(
                !self.media.udp_listen.ip().is_unspecified(),
                "media.advertise",
                "required when media.udp_listen is a wildcard address",
            ),
        }
        if self.dev.usersig_endpoint && self.server.tls_cert.is_none() {
            p.check(
                self.server.listen.ip().is_loopback(),
                "dev.usersig_endpoint",
                "refused without TLS on a non-loopback listener",
            );
        }
        p.into_result(file)
    }

    pub fn app_key(&self, sdk_app_id: u64) -> Option<&Secret> {
        self.apps
            .iter()
            .find(|a| a.sdk_app_id == sdk_app_id)
            .map(|a| &a.secret_key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[server]
listen = "127.0.0.1:8080"
[media]
udp_listen = "127.0.0.1:50000"
[admin]
key = "0123456789abcdef"
[[apps]]
sdk_app_id = 1400000000
secret_key = "k"
"#;

    #[test]
    fn the_example_config_is_valid() {
        let text = std::fs::read_to_string("config/room.toml").unwrap();
        RoomConfig::parse(Path::new("config/room.toml"), &text).unwrap();
        let c = RoomConfig::parse(Path::new("r.toml"), GOOD).unwrap();
        assert_eq!(c.app_key(1400000000).map(|k| k.expose()), Some("k"));
    }

    #[test]
    fn every_problem_is_named() {
        let bad = GOOD
            .replace("0123456789abcdef", "short")
            .replace("127.0.0.1:50000", "0.0.0.0:50000")
            .replace("[server]", "[dev]\nusersig_endpoint = true\n[server]")
            .replace("127.0.0.1:8080", "0.0.0.0:8080");
        let e = RoomConfig::parse(Path::new("r.toml"), &bad)
            .unwrap_err()
            .to_string();
        for key in [
            "r.toml: admin.key:",
            "r.toml: media.advertise:",
            "r.toml: dev.usersig_endpoint:",
        ] {
            assert!(e.contains(key), "{key} missing in {e}");
        }
        assert!(!e.contains("short"), "secrets are not echoed: {e}");
    }
}
