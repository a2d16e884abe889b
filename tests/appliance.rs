//! The device daemon as an appliance, as separate processes: `callbox room`
//! and `callbox device` (synthetic camera and microphone), driven through
//! the control socket, with a test datagram socket as systemd's
//! NOTIFY_SOCKET. Covers READY/STATUS/WATCHDOG, call -> in call with media
//! at a subscriber, RemoveUser -> banned, call -> rejoined, room service
//! restarted -> reconnecting -> in call (timed), room service frozen ->
//! dead media detected (timed), mute, hangup, and a clean stop.

mod common;

use callbox::appliance::control::{request, Request};
use callbox::client::{ClientConfig, NetConfig};
use callbox::protocol::MediaKind;
use callbox::room::local::{
    http_post, room_toml, DeviceToml, DEMO_ADMIN_KEY, DEMO_SDK_APP_ID, DEMO_SECRET_KEY,
};
use common::{free_port, joined_with_stream, sig};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_callbox");
const ROOM_ID: u32 = 4321;
const DEVICE: &str = "appliance-device";

/// Kills its process when dropped, so a failing test leaves nothing behind.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(p: &Proc, sig: i32) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(p.0.id() as i32, sig) };
}

struct Room {
    config: PathBuf,
    http: SocketAddr,
    proc: Option<Proc>,
}

impl Room {
    fn new(dir: &Path) -> Room {
        let (http, udp) = (free_port(false), free_port(false));
        let (http, udp) = (
            SocketAddr::from(([127, 0, 0, 1], http)),
            SocketAddr::from(([127, 0, 0, 1], udp)),
        );
        let text = room_toml(http, udp, None);
        let config = dir.join("room.toml");
        std::fs::write(&config, text).expect("write room.toml");
        Room {
            config,
            http,
            proc: None,
        }
    }

    /// Start the room service; returns when /health answers.
    async fn start(&mut self) -> Instant {
        let child = Command::new(BIN)
            .args(["room", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn callbox room");
        self.proc = Some(Proc(child));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.healthy().await {
                return Instant::now();
            }
            assert!(Instant::now() < deadline, "room service did not come up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn healthy(&self) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(mut s) = tokio::net::TcpStream::connect(self.http).await else {
            return false;
        };
        let req = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let mut body = String::new();
        s.write_all(req).await.is_ok()
            && s.read_to_string(&mut body).await.is_ok()
            && body.starts_with("HTTP/1.1 200")
    }

    fn stop(&mut self) {
        self.proc = None;
    }

    fn url(&self) -> String {
        format!("ws://{}/ws", self.http)
    }

    fn client_config(&self, user: &str) -> ClientConfig {
        ClientConfig {
            url: self.url(),
            sdk_app_id: DEMO_SDK_APP_ID,
            user_id: user.to_owned(),
            user_sig: sig(user),
            net: NetConfig {
                bind: std::net::Ipv4Addr::LOCALHOST.into(),
                ..Default::default()
            },
            tls_ca_pem: None,
            janus: None,
        }
    }
}

/// systemd's side of sd_notify: a thread reads every datagram at once, as
/// systemd does (a sender blocks once a few datagrams queue up unread).
struct Notify(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl Notify {
    fn bind(path: &Path) -> Notify {
        let s = UnixDatagram::bind(path).expect("bind NOTIFY_SOCKET");
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&got);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = s.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                sink.lock().expect("notify log").push(text);
            }
        });
        Notify(got)
    }

    fn drain(&mut self) -> Vec<String> {
        self.0.lock().expect("notify log").clone()
    }

    fn count(&mut self, line: &str) -> usize {
        self.drain()
            .iter()
            .filter(|m| m.lines().any(|l| l == line))
            .count()
    }

    fn statuses(&mut self) -> Vec<String> {
        self.drain()
            .iter()
            .flat_map(|m| m.lines())
            .filter_map(|l| l.strip_prefix("STATUS="))
            .map(str::to_owned)
            .collect()
    }
}

async fn status(socket: &Path) -> Value {
    request(socket, Request::Status).await.expect("ctl status")
}

/// Poll the daemon until its state is `state`; returns how long it took.
async fn wait_state(socket: &Path, state: &str, secs: u64) -> Duration {
    let t0 = Instant::now();
    loop {
        let s = status(socket).await;
        if s["state"] == state {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "not {state} within {secs} s: {s:#}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Join as a subscriber and receive the device's media; returns the
/// (video, audio) packet counts over `window` and the time to the first
/// video packet.
async fn subscriber_receives(
    room: &Room,
    user: &str,
    window: Duration,
) -> (usize, usize, Duration) {
    let t0 = Instant::now();
    let (mut c, info) = joined_with_stream(room.client_config(user), ROOM_ID, DEVICE, 10).await;
    let mut remote = c.subscribe(&info).await.expect("subscribe");
    let (mut video, mut audio, mut first) = (0, 0, None);
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(Some(p)) = tokio::time::timeout_at(deadline, remote.packets.recv()).await {
        match p.kind {
            MediaKind::Video => {
                video += 1;
                first.get_or_insert_with(|| t0.elapsed());
            }
            MediaKind::Audio => audio += 1,
        }
    }
    let _ = c.leave().await;
    (video, audio, first.unwrap_or(window))
}

/// One phase of the daemon test: its report line.
async fn phase(name: &str, report: impl std::future::Future<Output = String>) {
    let line = report.await;
    println!("appliance: {name}: {line}");
}

/// The room service and the daemon under test, with what observes them.
struct Rig {
    dir: PathBuf,
    room: Room,
    socket: PathBuf,
    notify: Notify,
    daemon: Option<Proc>,
}

impl Rig {
    async fn start() -> Rig {
        let dir = std::env::temp_dir().join(format!("callbox-appliance-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut room = Room::new(&dir);
        room.start().await;
        let socket = dir.join("control.sock");
        let notify = Notify::bind(&dir.join("notify.sock"));
        Rig {
            dir,
            room,
            socket,
            notify,
            daemon: None,
        }
    }

    /// READY=1 once devices are open, then it joins by itself (auto_join).
    async fn ready_then_in_call(&mut self) -> String {
        let device_config = self.dir.join("device.toml");
        let toml = DeviceToml::loopback(&self.room.url(), DEVICE, ROOM_ID, 3600)
            .set("video", "width", 320)
            .set("video", "height", 240)
            .set("video", "fps", 15)
            .set("call", "dead_media_ms", 3000)
            .set(
                "service",
                "control_socket",
                self.socket.display().to_string(),
            );
        std::fs::write(&device_config, toml.text()).expect("write device.toml");
        let started = Instant::now();
        self.daemon = Some(Proc(
            Command::new(BIN)
                .args(["device", "--config"])
                .arg(&device_config)
                .env("NOTIFY_SOCKET", self.dir.join("notify.sock"))
                .env("WATCHDOG_USEC", "1000000")
                .env("RUST_LOG", "info")
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn callbox device"),
        ));
        while self.notify.count("READY=1") == 0 {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no READY=1: {:?}",
                self.notify.drain()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let ready = started.elapsed();
        let joined = wait_state(&self.socket, "in-call", 10).await;
        format!(
            "READY=1 after {:.0} ms, in call {:.0} ms later",
            ready.as_secs_f64() * 1000.0,
            joined.as_secs_f64() * 1000.0
        )
    }

    /// A subscriber gets video and audio; status, watchdog and STATUS= agree.
    async fn media_flows(&mut self) -> String {
        let (video, audio, _) =
            subscriber_receives(&self.room, "watcher-1", Duration::from_secs(2)).await;
        assert!(
            video > 20 && audio > 50,
            "media at the subscriber: {video} video, {audio} audio packets"
        );
        let s = status(&self.socket).await;
        assert_eq!(s["leds"]["call"], true);
        assert_eq!(s["media"]["ice_path"], "host/udp", "the media path");
        assert!(
            s["media"]["audio_packets_sent"].as_u64() > Some(50),
            "{s:#}"
        );
        assert_eq!(
            s["frame_copies_per_frame"], 0.0,
            "synthetic frames are encoded in place"
        );
        // The watchdog pings come from the running media loop (every 0.5 s here).
        let pings = self.notify.count("WATCHDOG=1");
        assert!(pings >= 2, "{:?}", self.notify.drain());
        assert!(
            self.notify.statuses().iter().any(|s| s == "in call"),
            "{:?}",
            self.notify.statuses()
        );
        format!("{video} video and {audio} audio packets in 2 s, call LED on, 0 copies per frame, {pings} WATCHDOG=1")
    }

    /// Mute, then unmute: the state shows in the status, the call stays up;
    /// with the camera off a subscriber gets audio and no video.
    async fn mute_and_unmute(&mut self) -> String {
        let r = request(&self.socket, Request::MuteAudio)
            .await
            .expect("ctl");
        assert_eq!(
            (r["ok"].clone(), r["state"].clone()),
            (json!(true), json!("in-call"))
        );
        assert_eq!(status(&self.socket).await["audio_muted"], true);
        request(&self.socket, Request::UnmuteAudio)
            .await
            .expect("ctl");
        request(&self.socket, Request::MuteVideo)
            .await
            .expect("ctl");
        let s = status(&self.socket).await;
        assert_eq!(
            (&s["video_muted"], &s["audio_muted"]),
            (&json!(true), &json!(false))
        );
        let window = Duration::from_secs(1);
        let (video, audio, _) = subscriber_receives(&self.room, "watcher-muted", window).await;
        assert!(
            video == 0 && audio > 20,
            "camera off: {video} video, {audio} audio packets"
        );
        request(&self.socket, Request::UnmuteVideo)
            .await
            .expect("ctl");
        let (video_on, _, _) = subscriber_receives(&self.room, "watcher-unmuted", window).await;
        assert!(video_on > 10, "camera on again: {video_on} video packets");
        format!("muted and unmuted in the call; camera off: {video} video and {audio} audio packets in 1 s, on again: {video_on} video packets")
    }

    /// RemoveUser -> Banned{banned}; it stays out until told.
    async fn removed_user_stays_out(&mut self) -> String {
        let (code, body) = http_post(
            self.room.http,
            "/api/admin/RemoveUser",
            Some(DEMO_ADMIN_KEY),
            &json!({"SdkAppId": DEMO_SDK_APP_ID, "RoomId": ROOM_ID, "UserIds": [DEVICE]})
                .to_string(),
        )
        .await
        .expect("admin API");
        assert_eq!(code, 200, "{body}");
        let t = wait_state(&self.socket, "banned", 5).await;
        let s = status(&self.socket).await;
        assert_eq!(s["ban_reason"], "banned");
        assert_eq!(
            (s["leds"]["call"].clone(), s["leds"]["banned"].clone()),
            (json!(false), json!(true))
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(
            status(&self.socket).await["state"],
            "banned",
            "never rejoins by itself"
        );
        assert!(self
            .notify
            .statuses()
            .iter()
            .any(|s| s.starts_with("banned (banned)")));
        format!(
            "banned {:.0} ms after RemoveUser, banned LED on, still out 1.5 s later",
            t.as_secs_f64() * 1000.0
        )
    }

    /// `ctl call` rejoins; while the room's block after RemoveUser lasts
    /// (3 s here) the join is refused and the device retries.
    async fn call_rejoins(&mut self) -> String {
        let r = request(&self.socket, Request::Call).await.expect("ctl");
        assert_eq!(r["state"], "joining");
        let t = wait_state(&self.socket, "in-call", 10).await;
        let s = status(&self.socket).await;
        format!(
            "rejoined {:.0} ms after `ctl call`, {} retries while the room kept the device out",
            t.as_secs_f64() * 1000.0,
            s["attempt"]
        )
    }

    /// Room service restarted -> reconnecting -> in call, media back in 3 s.
    async fn room_restart_reconnects(&mut self) -> String {
        self.room.stop();
        let lost = wait_state(&self.socket, "reconnecting", 5).await;
        let up = self.room.start().await;
        wait_state(&self.socket, "in-call", 10).await;
        let in_call = up.elapsed();
        let (video, _, first) =
            subscriber_receives(&self.room, "watcher-2", Duration::from_secs(1)).await;
        let media_back = up.elapsed() - Duration::from_secs(1) + first;
        assert!(video > 5, "media after the restart: {video} video packets");
        assert!(
            media_back <= Duration::from_secs(3),
            "target: media back within 3 s of the room being reachable, took {media_back:?}"
        );
        format!(
            "reconnecting {:.0} ms after the kill; in call {:.0} ms and video at a new subscriber {:.0} ms after the room was reachable",
            lost.as_secs_f64() * 1000.0,
            in_call.as_secs_f64() * 1000.0,
            media_back.as_secs_f64() * 1000.0
        )
    }

    /// Room service frozen (SIGSTOP): signaling stays open, media stops;
    /// the dead-media check notices within 5 s.
    async fn frozen_room_is_dead_media(&mut self) -> String {
        let room = self.room.proc.as_ref().expect("room running");
        let frozen = Instant::now();
        signal(room, libc::SIGSTOP);
        wait_state(&self.socket, "reconnecting", 8).await;
        let detected = frozen.elapsed();
        assert!(
            detected <= Duration::from_secs(5),
            "dead media detected after {detected:?}"
        );
        let s = status(&self.socket).await;
        assert!(
            s["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("nothing from the room")),
            "{s:#}"
        );
        let thawed = Instant::now();
        signal(room, libc::SIGCONT);
        wait_state(&self.socket, "in-call", 40).await;
        format!(
            "dead media detected after {:.0} ms; thawed, in call again after {:.0} ms",
            detected.as_secs_f64() * 1000.0,
            thawed.elapsed().as_secs_f64() * 1000.0
        )
    }

    /// Hangup -> idle; the call LED goes out.
    async fn hangup(&mut self) -> String {
        let r = request(&self.socket, Request::Hangup).await.expect("ctl");
        assert_eq!(r["state"], "leaving");
        let t = wait_state(&self.socket, "idle", 5).await;
        assert_eq!(status(&self.socket).await["leds"]["call"], false);
        format!(
            "idle {:.0} ms after `ctl hangup`, call LED off",
            t.as_secs_f64() * 1000.0
        )
    }

    /// SIGTERM: STOPPING=1, a clean exit, the socket removed.
    async fn sigterm(&mut self) -> String {
        let mut daemon = self.daemon.take().expect("daemon running");
        signal(&daemon, libc::SIGTERM);
        let t0 = Instant::now();
        let exit = loop {
            if let Some(s) = daemon.0.try_wait().expect("wait") {
                break s;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "daemon did not stop on SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(exit.success(), "{exit:?}");
        assert!(self.notify.count("STOPPING=1") >= 1);
        assert!(!self.socket.exists(), "control socket removed on exit");
        let _ = std::fs::remove_dir_all(&self.dir);
        format!(
            "exit 0 {:.0} ms after SIGTERM, STOPPING=1, socket removed",
            t0.elapsed().as_secs_f64() * 1000.0
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_through_control_socket_ban_reconnect_and_dead_media() {
    let mut rig = Rig::start().await;
    phase("start", rig.ready_then_in_call()).await;
    phase("media", rig.media_flows()).await;
    phase("mute", rig.mute_and_unmute()).await;
    phase("RemoveUser", rig.removed_user_stays_out()).await;
    phase("ctl call", rig.call_rejoins()).await;
    phase("room restarted", rig.room_restart_reconnects()).await;
    phase("room frozen", rig.frozen_room_is_dead_media()).await;
    phase("hangup", rig.hangup()).await;
    phase("SIGTERM", rig.sigterm()).await;
}

/// `callbox device` on `toml`, written to `config`.
fn spawn_daemon(config: &Path, toml: &DeviceToml) -> Proc {
    std::fs::write(config, toml.text()).expect("write device.toml");
    Proc(
        Command::new(BIN)
            .args(["device", "--config"])
            .arg(config)
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn callbox device"),
    )
}

/// An expired userSig: the daemon fails with that reason (error LED on)
/// instead of retrying, and stays up for `ctl` and a new provisioning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_usersig_fails_with_its_reason() {
    let dir = std::env::temp_dir().join(format!("callbox-expired-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let socket = dir.join("control.sock");
    let config = dir.join("device.toml");
    let now = callbox::usersig::unix_now();
    let expired = callbox::usersig::generate(
        DEMO_SDK_APP_ID,
        DEMO_SECRET_KEY,
        DEVICE,
        60,
        now - 3600,
        None,
    );
    let url = format!("ws://127.0.0.1:{}/ws", free_port(false));
    let toml = DeviceToml::loopback(&url, DEVICE, ROOM_ID, 3600)
        .set("room", "user_sig", expired)
        .set("video", "enabled", false)
        .set("service", "control_socket", socket.display().to_string());
    let _daemon = spawn_daemon(&config, &toml);
    let t0 = Instant::now();
    while !socket.exists() {
        assert!(t0.elapsed() < Duration::from_secs(10), "no control socket");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_state(&socket, "failed", 5).await;
    let s = status(&socket).await;
    let reason = s["last_error"].as_str().unwrap_or_default();
    assert!(reason.contains("userSig expired 354"), "{s:#}");
    assert_eq!(
        (s["leds"]["error"].clone(), s["leds"]["call"].clone()),
        (json!(true), json!(false))
    );
    assert!(s["usersig_expires_in_s"].as_i64() < Some(0));
    // It does not retry by itself.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(status(&socket).await["state"], "failed");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `callbox ctl screenshot FILE.png` writes what the screen shows: with
/// the y4m display idle, the PNG is the y4m file's newest frame, pixel
/// for pixel (the same BT.601 conversion).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_screenshot_writes_what_the_screen_shows() {
    use callbox::device::display::{canvas::Canvas, screen::to_rgb, y4m};
    let dir = std::env::temp_dir().join(format!("callbox-shot-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (socket, config, screen) = (
        dir.join("control.sock"),
        dir.join("device.toml"),
        dir.join("screen.y4m"),
    );
    let url = format!("ws://127.0.0.1:{}/ws", free_port(false));
    let toml = DeviceToml::loopback(&url, DEVICE, ROOM_ID, 3600)
        .set("video", "enabled", false)
        .set("call", "auto_join", false)
        .set("display", "sink", "y4m")
        .set("display", "path", screen.display().to_string())
        .set("display", "width", 320)
        .set("display", "height", 240)
        .set("service", "control_socket", socket.display().to_string());
    let _daemon = spawn_daemon(&config, &toml);
    let t0 = Instant::now();
    let frame = loop {
        let data = std::fs::read(&screen).unwrap_or_default();
        if let Some((_, frames)) = y4m::read(&data).filter(|(_, f)| f.len() >= 2) {
            break frames[frames.len() - 1].to_vec();
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "no screen frames");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let shot = dir.join("shot.png");
    let out = Command::new(BIN)
        .args(["ctl", "--socket"])
        .arg(&socket)
        .arg("screenshot")
        .arg(&shot)
        .output()
        .expect("callbox ctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let decoder = png::Decoder::new(std::fs::File::open(&shot).expect("the PNG"));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut rgb = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut rgb).expect("its pixels");
    assert_eq!((info.width, info.height), (320, 240));
    let mut canvas = Canvas::new(320, 240);
    canvas.data.copy_from_slice(&frame);
    assert!(
        rgb[..info.buffer_size()] == to_rgb(&canvas)[..],
        "the screenshot is not the screen"
    );
    // The idle picture: the state as text on black.
    let lit = rgb.chunks(3).filter(|p| p.iter().all(|&c| c > 200)).count();
    assert!(lit > 100, "{lit} white pixels");
    let _ = std::fs::remove_dir_all(&dir);
}
