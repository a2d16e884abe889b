//! Debian's Janus for tests and benches: started in the caller's network
//! namespace on a veth address (on `lo` alone Janus fails ICE), with its
//! own config files: the websockets transport and the videoroom plugin
//! only, and room 1234 (H.264 constrained baseline and Opus, a secret for
//! kick and destroy).
#![allow(dead_code)]

use callbox::client::janus::JanusRoom;
use callbox::client::{ClientConfig, NetConfig};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const IP: &str = "10.78.0.1";
pub const PORT: u16 = 8188;
pub const ROOM: u32 = 1234;
pub const SECRET: &str = "room-secret";

/// Janus in this namespace, on a veth address, with its own config files.
pub struct Janus {
    child: Child,
    pub dir: PathBuf,
}

impl Janus {
    /// Start Janus; `None` (the test skips) where it is not installed.
    pub fn start() -> Option<Janus> {
        let Some(lib) = janus_lib() else {
            println!(
                "janus: SKIPPED: Debian's janus is not installed (scripts/deps.sh installs it)"
            );
            return None;
        };
        let veth = format!(
            "ip link add cbj0 type veth peer name cbj1 && ip addr add {IP}/24 dev cbj0 \
             && ip link set cbj0 up && ip link set cbj1 up"
        );
        if !Path::new("/sys/class/net/cbj0").exists() {
            assert!(sh(&veth), "a veth pair in the test's namespace");
        }
        let dir = std::env::temp_dir().join(format!("callbox-janus-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("janus dir");
        write_config(&dir, &lib);
        Some(Janus {
            child: Janus::spawn(&dir),
            dir,
        })
    }

    fn spawn(dir: &Path) -> Child {
        let child = Command::new("janus")
            .arg("-F")
            .arg(dir)
            .arg("-C")
            .arg(dir.join("janus.jcfg"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("janus runs");
        let up = (0..200).any(|_| {
            let ok = std::net::TcpStream::connect((IP, PORT)).is_ok();
            if !ok {
                std::thread::sleep(Duration::from_millis(25));
            }
            ok
        });
        assert!(up, "janus listens on {IP}:{PORT} within 5 s");
        child
    }

    /// Kill Janus and start it again (the room comes back from its config).
    pub fn restart(&mut self) -> Instant {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Janus::spawn(&self.dir);
        Instant::now()
    }

    pub fn url(&self) -> String {
        format!("ws://{IP}:{PORT}")
    }

    /// A Rust client of the room, on the veth address.
    pub fn client_config(&self, user: &str) -> ClientConfig {
        ClientConfig {
            url: self.url(),
            sdk_app_id: 0,
            user_id: user.to_owned(),
            user_sig: String::new(),
            net: NetConfig {
                bind: IP.parse().expect("address"),
                ..Default::default()
            },
            tls_ca_pem: None,
            janus: Some(JanusRoom {
                room: u64::from(ROOM),
                ..Default::default()
            }),
        }
    }
}

impl Drop for Janus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn sh(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-ec", cmd])
        .status()
        .is_ok_and(|s| s.success())
}

/// Debian's Janus plugin directory (`/usr/lib/<triplet>/janus`).
fn janus_lib() -> Option<PathBuf> {
    Command::new("janus").arg("--version").output().ok()?;
    std::fs::read_dir("/usr/lib")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("janus"))
        .find(|p| p.join("plugins/libjanus_videoroom.so").exists())
}

fn write_config(dir: &Path, lib: &Path) {
    let lib = lib.display();
    let files = [
        (
            "janus.jcfg",
            format!(
                "general: {{\n configs_folder = \"{dir}\"\n plugins_folder = \"{lib}/plugins\"\n \
                 transports_folder = \"{lib}/transports\"\n events_folder = \"{lib}/events\"\n \
                 loggers_folder = \"{lib}/loggers\"\n debug_level = 3\n}}\n\
                 media: {{ rtp_port_range = \"40000-40200\" }}\n\
                 nat: {{ ignore_mdns = true\n ice_enforce_list = \"cbj0\" }}\n\
                 plugins: {{ disable = \"libjanus_audiobridge.so,libjanus_echotest.so,libjanus_recordplay.so,libjanus_sip.so,libjanus_nosip.so,libjanus_streaming.so,libjanus_textroom.so,libjanus_videocall.so,libjanus_voicemail.so,libjanus_lua.so,libjanus_duktape.so\" }}\n\
                 transports: {{ disable = \"libjanus_http.so,libjanus_mqtt.so,libjanus_nanomsg.so,libjanus_pfunix.so,libjanus_rabbitmq.so\" }}\n\
                 events: {{ broadcast = false }}\n",
                dir = dir.display()
            ),
        ),
        (
            "janus.transport.websockets.jcfg",
            format!("general: {{ ws = true\n ws_port = {PORT}\n ws_ip = \"{IP}\"\n wss = false }}\nadmin: {{ admin_ws = false }}\n"),
        ),
        (
            "janus.plugin.videoroom.jcfg",
            format!(
                "general: {{ }}\nroom-{ROOM}: {{ description = \"callbox\"\n secret = \"{SECRET}\"\n publishers = 6\n \
                 bitrate = 1500000\n audiocodec = \"opus\"\n videocodec = \"h264\"\n h264_profile = \"42e01f\"\n notify_joining = true }}\n"
            ),
        ),
    ];
    for (name, text) in files {
        std::fs::write(dir.join(name), text).expect("janus config");
    }
}
