//! A room service started inside this process on ephemeral loopback ports,
//! and the config files for one ([`room_toml`]) and for a device that
//! joins it ([`DeviceToml`]): what `callbox demo`, the integration tests,
//! the hardware-in-the-loop guest and the benchmarks run, spelled once.

use crate::config::Secret;
use crate::room::config::{
    AdminConfig, AppConfig, DevConfig, Limits, MediaConfig, RoomConfig, ServerConfig,
};
use crate::room::server::{serve, ServeError};
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const DEMO_SDK_APP_ID: u64 = 1_400_000_000;
/// The demo app's keys: public (they are in this source), for loopback
/// demos and tests only. A room service loaded from a config file refuses
/// the published sample keys of the example config, not these.
pub const DEMO_SECRET_KEY: &str = "callbox-demo-secret-key-for-loopback-tests-only";
pub const DEMO_ADMIN_KEY: &str = "local-admin-key-0123456789abcdef";
/// How long RemoveUser keeps a user out in the demo: short, so a demo
/// shows the block and tests need not wait the default minute.
pub const DEMO_REJOIN_BLOCK_S: u64 = 3;

/// A userSig of the demo app for `user`, valid for an hour.
pub fn demo_user_sig(user: &str) -> String {
    crate::usersig::generate(
        DEMO_SDK_APP_ID,
        DEMO_SECRET_KEY,
        user,
        3600,
        crate::usersig::unix_now(),
        None,
    )
}

/// `room.toml` for the demo app: HTTP on `listen`, media on `udp_listen`,
/// advertised as `advertise` when the clients see another address.
pub fn room_toml(
    listen: SocketAddr,
    udp_listen: SocketAddr,
    advertise: Option<SocketAddr>,
) -> String {
    let advertise = advertise.map_or(String::new(), |a| format!("advertise = \"{a}\"\n"));
    format!(
        "[server]\nlisten = \"{listen}\"\n\n[media]\nudp_listen = \"{udp_listen}\"\n{advertise}\n\
         [admin]\nkey = \"{DEMO_ADMIN_KEY}\"\n\n\
         [[apps]]\nsdk_app_id = {DEMO_SDK_APP_ID}\nsecret_key = \"{DEMO_SECRET_KEY}\"\n\n\
         [limits]\nremoved_rejoin_block_s = {DEMO_REJOIN_BLOCK_S}\n"
    )
}

/// A whole `device.toml` for a device of the demo app: it starts as a
/// device on loopback with a synthetic camera (640x480 at 30 fps) and
/// microphone (a 440 Hz tone) and no speaker, and callers set what their
/// case needs.
#[derive(Debug, Clone)]
pub struct DeviceToml(toml::Table);

impl DeviceToml {
    /// Joining `room_id` at `ws_url` as `user_id`, with a userSig valid for
    /// `valid_s` seconds.
    pub fn loopback(ws_url: &str, user_id: &str, room_id: u32, valid_s: u64) -> Self {
        let sig = crate::usersig::generate(
            DEMO_SDK_APP_ID,
            DEMO_SECRET_KEY,
            user_id,
            valid_s,
            crate::usersig::unix_now(),
            None,
        );
        DeviceToml(toml::Table::new())
            .set("room", "url", ws_url)
            .set("room", "sdk_app_id", DEMO_SDK_APP_ID as i64)
            .set("room", "user_id", user_id)
            .set("room", "user_sig", sig)
            .set("room", "room_id", i64::from(room_id))
            .set("network", "bind", "127.0.0.1")
            .set("video", "source", "synthetic")
            .set("video", "width", 640)
            .set("video", "height", 480)
            .set("video", "fps", 30)
            .set("audio", "capture", "synthetic")
            .set("audio", "tone_hz", 440)
            .set("audio", "playback", "null")
    }

    /// Set `key` of `[section]` (replacing it).
    pub fn set(mut self, section: &str, key: &str, value: impl Into<toml::Value>) -> Self {
        let table = self
            .0
            .entry(section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let toml::Value::Table(t) = table {
            t.insert(key.to_owned(), value.into());
        }
        self
    }

    /// Set `key` of `[section]` to a TOML value written out, e.g. an inline
    /// table `{ line = "BTN_CALL" }`.
    pub fn set_toml(self, section: &str, key: &str, value: &str) -> Result<Self, toml::de::Error> {
        let mut t = toml::from_str::<toml::Table>(&format!("v = {value}"))?;
        Ok(match t.remove("v") {
            Some(v) => self.set(section, key, v),
            None => self,
        })
    }

    /// Remove `key` of `[section]`.
    pub fn unset(mut self, section: &str, key: &str) -> Self {
        if let Some(toml::Value::Table(t)) = self.0.get_mut(section) {
            t.remove(key);
        }
        self
    }

    pub fn text(&self) -> String {
        toml::to_string(&self.0).unwrap_or_default()
    }
}

/// A running in-process room service; stopped on drop.
pub struct LocalRoom {
    pub http: SocketAddr,
    pub media: SocketAddr,
    pub admin_key: String,
    tls: bool,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServeError>>>,
}

/// A loopback config with the demo app, for tests and demos.
pub fn loopback_config(web_root: Option<PathBuf>, dev_usersig: bool) -> RoomConfig {
    RoomConfig {
        server: ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!()),
            tls_cert: None,
            tls_key: None,
            web_root,
            allowed_origins: Vec::new(),
        },
        media: MediaConfig {
            udp_listen: "127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!()),
            advertise: None,
            tcp_listen: Some("127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!())),
            tcp_advertise: None,
            workers: None,
        },
        admin: AdminConfig {
            key: Secret::new(DEMO_ADMIN_KEY),
            key_file: None,
        },
        apps: vec![AppConfig {
            sdk_app_id: DEMO_SDK_APP_ID,
            secret_key: Secret::new(DEMO_SECRET_KEY),
            secret_key_file: None,
            private_map_key: Default::default(),
        }],
        dev: DevConfig {
            usersig_endpoint: dev_usersig,
        },
        limits: Limits {
            removed_rejoin_block_s: DEMO_REJOIN_BLOCK_S,
            ..Limits::default()
        },
        turn: None,
    }
}

impl LocalRoom {
    /// Bind the config's listen and media addresses (port 0: any free port)
    /// and serve in a task of the current runtime.
    pub async fn start(config: RoomConfig) -> std::io::Result<LocalRoom> {
        let listener = std::net::TcpListener::bind(config.server.listen)?;
        let udp = std::net::UdpSocket::bind(config.media.udp_listen)?;
        let http = listener.local_addr()?;
        let media = udp.local_addr()?;
        let admin_key = config.admin.key.expose().to_owned();
        let tls = config.server.tls_cert.is_some();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(config, listener, udp, async {
            let _ = stopped.await;
        }));
        Ok(LocalRoom {
            http,
            media,
            admin_key,
            tls,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The signaling URL; with TLS it names `localhost`, which a test
    /// certificate is issued for.
    pub fn ws_url(&self) -> String {
        if self.tls {
            format!("wss://localhost:{}/ws", self.http.port())
        } else {
            format!("ws://{}/ws", self.http)
        }
    }

    /// A client of the demo app joining as `user`, with media on loopback.
    pub fn client_config(&self, user: &str) -> crate::client::ClientConfig {
        crate::client::ClientConfig {
            url: self.ws_url(),
            sdk_app_id: DEMO_SDK_APP_ID,
            user_id: user.to_owned(),
            user_sig: demo_user_sig(user),
            net: crate::client::NetConfig {
                bind: std::net::Ipv4Addr::LOCALHOST.into(),
                ..Default::default()
            },
            tls_ca_pem: None,
            janus: None,
        }
    }

    /// Call the admin API; returns the HTTP status and the JSON body.
    pub async fn admin(
        &self,
        action: &str,
        body: &serde_json::Value,
        key: Option<&str>,
    ) -> std::io::Result<(u16, serde_json::Value)> {
        let key = key.unwrap_or(&self.admin_key);
        http_post(
            self.http,
            &format!("/api/admin/{action}"),
            Some(key),
            &body.to_string(),
        )
        .await
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for LocalRoom {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Minimal HTTP/1.1 request (GET when `body` is empty and no key is needed is
/// not supported: callers use POST); enough for admin calls from tests and tools.
pub async fn http_post(
    addr: SocketAddr,
    path: &str,
    bearer: Option<&str>,
    body: &str,
) -> std::io::Result<(u16, serde_json::Value)> {
    http_request(addr, "POST", path, bearer, body).await
}

pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: &str,
) -> std::io::Result<(u16, serde_json::Value)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let auth = bearer
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await?;
    let text = String::from_utf8_lossy(&resp);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("no HTTP status line"))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let json = serde_json::from_str(body).unwrap_or(serde_json::Value::String(body.to_owned()));
    Ok((status, json))
}
