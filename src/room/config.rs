//! The room service's config file (`callbox room --config room.toml`):
//! listeners, keys, apps, and the `[limits]` that bound what clients may
//! hold (connections, time, queues, room sizes). Keys that are published
//! samples or too short are refused with how to make one.

use crate::config::{self, ConfigError, Problems, Secret};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    #[serde(default)]
    pub limits: Limits,
    /// A TURN server (coturn, `use-auth-secret`) the room hands out
    /// credentials for in each join reply.
    #[serde(default)]
    pub turn: Option<crate::room::turn::TurnConfig>,
}

/// What one client, one address, one room and one app may hold, and for
/// how long. The defaults suit a public server; every value is checked.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Open TCP connections (HTTP and WebSocket) in all; more are closed at accept.
    pub max_connections: usize,
    /// Open TCP connections from one IP address.
    pub max_connections_per_ip: usize,
    /// Time for a client to send its request headers once it starts.
    pub header_timeout_s: u64,
    /// A connection with no traffic either way this long is closed (a
    /// WebSocket is kept busy by the server's pings).
    pub idle_timeout_s: u64,
    /// Time from WebSocket connect to the first successful `join`.
    pub join_timeout_s: u64,
    /// The server pings every WebSocket this often.
    pub ping_interval_s: u64,
    /// A WebSocket silent this long (no frame, no pong) is dropped: its user leaves.
    pub peer_timeout_s: u64,
    /// Messages queued to one WebSocket; a client that lets it fill is disconnected.
    pub send_queue: usize,
    pub max_members_per_room: usize,
    pub max_streams_per_room: usize,
    pub max_subscriptions_per_client: usize,
    pub max_rooms_per_app: usize,
    /// userSigs valid for longer than this are refused (TRTC's tools default to 180 days).
    pub max_usersig_lifetime_days: u64,
    /// After an admin RemoveUser, that userId may not rejoin the room for this long.
    pub removed_rejoin_block_s: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1000,
            max_connections_per_ip: 50,
            header_timeout_s: 10,
            idle_timeout_s: 60,
            join_timeout_s: 10,
            ping_interval_s: 10,
            peer_timeout_s: 25,
            send_queue: 256,
            // TRTC: up to 50 users publishing in a room.
            max_members_per_room: 100,
            max_streams_per_room: 50,
            max_subscriptions_per_client: 50,
            max_rooms_per_app: 1000,
            max_usersig_lifetime_days: 366,
            removed_rejoin_block_s: 60,
        }
    }
}

impl Limits {
    pub fn validate(&self, p: &mut Problems) {
        let counts = [
            ("limits.max_connections", self.max_connections, 1_000_000),
            (
                "limits.max_connections_per_ip",
                self.max_connections_per_ip,
                1_000_000,
            ),
            ("limits.send_queue", self.send_queue, 100_000),
            (
                "limits.max_members_per_room",
                self.max_members_per_room,
                10_000,
            ),
            (
                "limits.max_streams_per_room",
                self.max_streams_per_room,
                10_000,
            ),
            (
                "limits.max_subscriptions_per_client",
                self.max_subscriptions_per_client,
                10_000,
            ),
            (
                "limits.max_rooms_per_app",
                self.max_rooms_per_app,
                1_000_000,
            ),
        ];
        for (key, v, max) in counts {
            p.check((1..=max).contains(&v), key, format!("1 to {max}"));
        }
        let times = [
            ("limits.header_timeout_s", self.header_timeout_s, 300),
            ("limits.join_timeout_s", self.join_timeout_s, 300),
            ("limits.ping_interval_s", self.ping_interval_s, 300),
            (
                "limits.max_usersig_lifetime_days",
                self.max_usersig_lifetime_days,
                3650,
            ),
        ];
        for (key, v, max) in times {
            p.check((1..=max).contains(&v), key, format!("1 to {max}"));
        }
        p.check(
            self.idle_timeout_s > self.ping_interval_s && self.idle_timeout_s <= 3600,
            "limits.idle_timeout_s",
            "more than limits.ping_interval_s, at most 3600",
        );
        p.check(
            self.peer_timeout_s > self.ping_interval_s && self.peer_timeout_s <= 600,
            "limits.peer_timeout_s",
            "more than limits.ping_interval_s, at most 600",
        );
        p.check(
            self.removed_rejoin_block_s <= 86_400,
            "limits.removed_rejoin_block_s",
            "0 to 86400",
        );
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_s)
    }
    pub fn header_timeout(&self) -> Duration {
        Duration::from_secs(self.header_timeout_s)
    }
    pub fn join_timeout(&self) -> Duration {
        Duration::from_secs(self.join_timeout_s)
    }
    pub fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.ping_interval_s)
    }
    pub fn peer_timeout(&self) -> Duration {
        Duration::from_secs(self.peer_timeout_s)
    }
}

/// Keys shorter than this are refused (`openssl rand -hex 32` makes 64 bytes).
pub const MIN_KEY_BYTES: usize = 32;

/// Keys published in examples and TRTC's documentation: anyone can sign with them.
const PUBLISHED_KEYS: [&str; 2] = [
    "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e",
    "change-me-please-0123456789",
];

const MAKE_A_KEY: &str = "generate one with `openssl rand -hex 32`";

/// Why a key cannot be used, if it cannot.
fn weak_key(key: &str) -> Option<String> {
    if PUBLISHED_KEYS.contains(&key) || key.starts_with("change-me") {
        Some(format!("is a published sample key; {MAKE_A_KEY}"))
    } else if key.len() < MIN_KEY_BYTES {
        Some(format!(
            "must be at least {MIN_KEY_BYTES} bytes; {MAKE_A_KEY}"
        ))
    } else {
        None
    }
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
    /// Pages on other origins allowed to open the signaling WebSocket
    /// (e.g. `https://app.example.com`); the room's own origin always is.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaConfig {
    /// The one UDP socket all media uses.
    pub udp_listen: SocketAddr,
    /// Address put in ICE candidates (public/NAT address, or a forwarded port).
    /// Defaults to `udp_listen` when that is a specific address.
    pub advertise: Option<SocketAddr>,
    /// Media over TCP too (ICE-TCP, passive), for clients that cannot send UDP.
    #[serde(default)]
    pub tcp_listen: Option<SocketAddr>,
    /// The TCP address clients are told; defaults to `tcp_listen` when that
    /// is a specific address, else `advertise`'s address with the TCP port.
    #[serde(default)]
    pub tcp_advertise: Option<SocketAddr>,
    /// Forwarding threads; rooms are spread over them, each room on one.
    /// Default: one per CPU core.
    #[serde(default)]
    pub workers: Option<usize>,
}

/// Forwarding threads at most: past the cores of any room server this
/// only adds threads that contend.
pub const MAX_WORKERS: usize = 64;

impl MediaConfig {
    /// The forwarding threads to start: as configured, else one per core.
    pub fn worker_threads(&self) -> usize {
        self.workers.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(MAX_WORKERS)
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Bearer key for the admin API, or `key_file` holding it.
    #[serde(default)]
    pub key: Secret,
    /// May start with `${CREDENTIALS_DIRECTORY}` (systemd's `LoadCredential=`).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    pub sdk_app_id: u64,
    /// The key that signs the app's userSigs, or `secret_key_file` holding it.
    #[serde(default)]
    pub secret_key: Secret,
    #[serde(default)]
    pub secret_key_file: Option<PathBuf>,
    /// `required`: a join must carry a privateMapKey for its room (TRTC's
    /// room-scoped key); its privileges then bound publish and subscribe.
    #[serde(default)]
    pub private_map_key: PrivateMapKeyPolicy,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrivateMapKeyPolicy {
    #[default]
    Off,
    Required,
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
        config::load::<Self>(file)?.with_secrets(file)
    }

    pub fn parse(file: &Path, text: &str) -> Result<Self, ConfigError> {
        config::parse::<Self>(file, text)?.with_secrets(file)
    }

    /// Read the secrets given as files (`*_file`), then validate.
    fn with_secrets(mut self, file: &Path) -> Result<Self, ConfigError> {
        let mut p = Problems::default();
        config::secret_or_file(
            &mut p,
            "admin.key",
            &mut self.admin.key,
            &self.admin.key_file,
        );
        for (i, app) in self.apps.iter_mut().enumerate() {
            let key = format!("apps[{i}].secret_key");
            config::secret_or_file(&mut p, &key, &mut app.secret_key, &app.secret_key_file);
        }
        if let Some(turn) = &mut self.turn {
            let file = turn.shared_secret_file.clone();
            config::secret_or_file(&mut p, "turn.shared_secret", &mut turn.shared_secret, &file);
        }
        p.into_result(file)?;
        self.validate(file)?;
        Ok(self)
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
        if let Some(why) = weak_key(self.admin.key.expose()) {
            p.add("admin.key", why);
        }
        if let Some(turn) = &self.turn {
            turn.validate(&mut p);
        }
        p.check(
            !self.apps.is_empty(),
            "apps",
            "at least one [[apps]] entry is needed",
        );
        for (i, app) in self.apps.iter().enumerate() {
            if let Some(why) = weak_key(app.secret_key.expose()) {
                p.add(&format!("apps[{i}].secret_key"), why);
            }
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
        if let Some(n) = self.media.workers {
            p.check(
                (1..=MAX_WORKERS).contains(&n),
                "media.workers",
                format!("must be 1 to {MAX_WORKERS} (or left out for one per core)"),
            );
        }
        // It signs for anyone who asks: only where nobody else can ask.
        p.check(
            !self.dev.usersig_endpoint || self.server.listen.ip().is_loopback(),
            "dev.usersig_endpoint",
            "only on a loopback listener (server.listen = 127.0.0.1:...), TLS or not",
        );
        self.limits.validate(&mut p);
        p.into_result(file)
    }

    pub fn app(&self, sdk_app_id: u64) -> Option<&AppConfig> {
        self.apps.iter().find(|a| a.sdk_app_id == sdk_app_id)
    }

    pub fn app_key(&self, sdk_app_id: u64) -> Option<&Secret> {
        self.app(sdk_app_id).map(|a| &a.secret_key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::expand_credentials;

    const GOOD: &str = r#"
[server]
listen = "127.0.0.1:8080"
[media]
udp_listen = "127.0.0.1:50000"
[admin]
key = "0123456789abcdef0123456789abcdef"
[[apps]]
sdk_app_id = 1400000000
secret_key = "kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk"
"#;

    fn problems(text: &str) -> Vec<(String, String)> {
        match RoomConfig::parse(Path::new("r.toml"), text) {
            Ok(_) => Vec::new(),
            Err(ConfigError::Invalid { problems, .. }) => {
                problems.into_iter().map(|p| (p.key, p.reason)).collect()
            }
            Err(e) => panic!("{e}"),
        }
    }

    /// The shipped example has the published sample keys: it is refused,
    /// saying how to make real ones; with real keys it is valid.
    #[test]
    fn the_example_config_needs_real_keys() {
        let text = std::fs::read_to_string("config/room.toml").unwrap();
        let p = problems(&text);
        let keys: Vec<_> = p.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["admin.key", "apps[0].secret_key"], "{p:?}");
        assert!(
            p.iter().all(|(_, r)| r.contains("openssl rand -hex 32")),
            "{p:?}"
        );
        let fixed = text
            .replace("change-me-please-0123456789", &"a".repeat(32))
            .replace(PUBLISHED_KEYS[0], &"b".repeat(64));
        assert_eq!(problems(&fixed), []);
        let c = RoomConfig::parse(Path::new("r.toml"), GOOD).unwrap();
        assert_eq!(c.app_key(1400000000).map(|k| k.expose().len()), Some(36));
        assert_eq!(c.limits.peer_timeout_s, 25);
    }

    #[test]
    fn every_problem_is_named() {
        let bad = GOOD
            .replace("0123456789abcdef0123456789abcdef", "short")
            .replace("127.0.0.1:50000", "0.0.0.0:50000")
            .replace("[server]", "[dev]\nusersig_endpoint = true\n[server]")
            .replace("127.0.0.1:8080", "0.0.0.0:8080")
            .replace(
                "[admin]",
                "[limits]\nsend_queue = 0\npeer_timeout_s = 5\n[admin]",
            );
        let e = RoomConfig::parse(Path::new("r.toml"), &bad)
            .unwrap_err()
            .to_string();
        for key in [
            "r.toml: admin.key: must be at least 32 bytes",
            "r.toml: media.advertise:",
            "r.toml: dev.usersig_endpoint:",
            "r.toml: limits.send_queue:",
            "r.toml: limits.peer_timeout_s:",
        ] {
            assert!(e.contains(key), "{key} missing in {e}");
        }
        assert!(!e.contains("short"), "secrets are not echoed: {e}");
    }

    #[test]
    fn turn_settings_are_checked_by_key() {
        let good = format!(
            "{GOOD}\n[turn]\nurls = [\"turn:turn.example:3478?transport=udp\"]\nshared_secret = \"0123456789abcdef\"\n"
        );
        assert_eq!(problems(&good), []);
        let bad = format!(
            "{GOOD}\n[turn]\nurls = [\"http://x\"]\nshared_secret = \"short\"\ncredential_ttl_s = 5\n"
        );
        let keys: Vec<String> = problems(&bad).into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "turn.urls[0]",
                "turn.shared_secret",
                "turn.credential_ttl_s"
            ]
        );
    }

    /// With TLS too, the development userSig endpoint stays on loopback.
    #[test]
    fn the_dev_endpoint_needs_a_loopback_listener_even_with_tls() {
        let dir = std::env::temp_dir().join(format!("callbox-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("c.pem"), dir.join("k.pem"));
        std::fs::write(&cert, "x").unwrap();
        std::fs::write(&key, "x").unwrap();
        let tls = format!(
            "[server]\ntls_cert = {:?}\ntls_key = {:?}",
            cert.display().to_string(),
            key.display().to_string()
        );
        let public = GOOD
            .replace("[server]", &tls)
            .replace("127.0.0.1:8080", "0.0.0.0:8443")
            .replace("127.0.0.1:50000", "127.0.0.2:50000")
            + "[dev]\nusersig_endpoint = true\n";
        let keys: Vec<_> = problems(&public).into_iter().map(|p| p.0).collect();
        assert_eq!(keys, ["dev.usersig_endpoint"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Secrets may live in files, under systemd's credentials directory
    /// (`LoadCredential=`): read and trimmed; one of the two only; a
    /// missing file or an unset `CREDENTIALS_DIRECTORY` names the key.
    #[test]
    fn secrets_come_from_files_and_systemd_credentials() {
        let dir = std::env::temp_dir().join(format!("callbox-cred-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("admin.key"), "a".repeat(40) + "\n").unwrap();
        let from_file = GOOD.replace(
            "key = \"0123456789abcdef0123456789abcdef\"",
            &format!("key_file = \"{}\"", dir.join("admin.key").display()),
        );
        let c = RoomConfig::parse(Path::new("r.toml"), &from_file).expect("valid");
        assert_eq!(c.admin.key.expose(), "a".repeat(40));
        let both = GOOD.replace("[admin]\n", "[admin]\nkey_file = \"/nonexistent\"\n");
        assert_eq!(problems(&both)[0].0, "admin.key_file");
        let missing = from_file.replace("admin.key\"", "nope.key\"");
        assert!(
            problems(&missing)[0].1.contains("nope.key"),
            "{:?}",
            problems(&missing)
        );
        let neither = GOOD.replace("key = \"0123456789abcdef0123456789abcdef\"", "");
        assert_eq!(problems(&neither)[0].0, "admin.key");

        let cred = Path::new("${CREDENTIALS_DIRECTORY}/admin.key");
        assert_eq!(
            expand_credentials(cred, Some(dir.as_os_str())).unwrap(),
            dir.join("admin.key")
        );
        assert!(expand_credentials(cred, None)
            .unwrap_err()
            .contains("CREDENTIALS_DIRECTORY is not set"));
        assert_eq!(
            expand_credentials(Path::new("/etc/k"), None).unwrap(),
            Path::new("/etc/k")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The callbox-room package's config is valid once its two keys are in
    /// the credentials directory systemd makes.
    #[test]
    fn the_packaged_config_takes_its_keys_from_credentials() {
        let dir = std::env::temp_dir().join(format!("callbox-pkg-cred-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("admin.key"), "b".repeat(64)).unwrap();
        std::fs::write(dir.join("app.key"), "c".repeat(64)).unwrap();
        let text = std::fs::read_to_string("packaging/room.toml")
            .unwrap()
            .replace("${CREDENTIALS_DIRECTORY}", &dir.display().to_string());
        let c = RoomConfig::parse(Path::new("room.toml"), &text).expect("valid");
        assert_eq!(c.admin.key.expose(), "b".repeat(64));
        assert_eq!(c.app_key(1_400_000_000).map(|k| k.expose().len()), Some(64));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
