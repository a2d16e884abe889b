//! Hardware in the loop: the callbox daemon on a real Debian kernel under
//! qemu, against real drivers: vivid (camera), snd-aloop (microphone and
//! speaker) and gpio-sim (buttons and LEDs), on x86_64 and on arm64 with the
//! cross-compiled aarch64 build.
//!
//! Inside the guest the room service and the daemon run from provisioned
//! config files, started at boot as on a board. The room's media port is
//! advertised as 127.0.0.1:P and forwarded from the host's 127.0.0.1:P (as is
//! signaling), so the subscriber here on the host meets the device through the
//! room without any traffic leaving this machine. The test drives the board
//! through a small agent in the guest: button presses are gpio-sim pulls, LEDs
//! are read back from gpio-sim, tones go in and out of the loopback card.
//!
//! The kernel, its modules and the out-of-tree gpio-sim module are prepared
//! once by `tests/hil/prepare.sh` and cached under `target/hil/cache/<ABI>`.
//! `HIL_ARCHES=x86_64` runs one leg; `HIL_ACCEL=tcg|kvm` forces the accelerator.

mod common;

use anyhow::{anyhow, bail, ensure, Context, Result};
use bytes::Bytes;
use callbox::client::{Client, ClientConfig, JoinRoom, NetConfig, RemoteStream};
use callbox::device::audio::{OpusDecoder, OpusEncoder, FRAME, FRAME_SAMPLES, SAMPLE_RATE};
use callbox::device::h264::H264Decoder;
use callbox::device::tone;
use callbox::protocol::ServerMessage;
use callbox::room::local::{http_post, DEMO_ADMIN_KEY, DEMO_SDK_APP_ID, DEMO_SECRET_KEY};
use common::{expect_event, receive, Received};
use serde_json::{json, Value};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const ROOM_ID: u32 = 4242;
const DEVICE: &str = "device-1";
const GUEST_HTTP: u16 = 8080;
const GUEST_AGENT: u16 = 5555;
const MIC_HZ: f64 = 440.0;
const SPEAKER_HZ: f64 = 660.0;
const LONG_PRESS_MS: u64 = 1500;
/// vivid's picture: its webcam input at 640x360, 30 fps (both guests keep
/// up with it under TCG on 2 cores).
const VIDEO_SIZE: (usize, usize) = (640, 360);

/// Scenario lines go straight to stderr so they show even when the test
/// harness captures output.
fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "hil: {line}");
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `target/hil`: the cross build and the prepared kernels live here.
fn work_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).join("hil")
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Arch {
    X86_64,
    Arm64,
}

impl Arch {
    fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Arm64 => "arm64",
        }
    }
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn prepare(arch: Arch) -> Result<PathBuf> {
    let cache = work_dir().join("cache");
    let t = Instant::now();
    let out = run(Command::new(repo().join("tests/hil/prepare.sh"))
        .arg(&cache)
        .arg(arch.name())
        .stderr(Stdio::inherit()))?;
    let kabi = out
        .lines()
        .find_map(|l| l.strip_prefix("KABI="))
        .ok_or_else(|| anyhow!("prepare.sh printed no KABI"))?;
    report(&format!(
        "{}: kernel {kabi}, its modules and gpio-sim ready in {:.1} s (cached in {})",
        arch.name(),
        t.elapsed().as_secs_f64(),
        cache.display()
    ));
    Ok(cache.join(kabi).join(arch.name()))
}

/// Why the arm64 leg cannot run on this machine, if it cannot.
fn arm64_unavailable() -> Option<String> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("aarch64-unknown-linux-gnu"))
        .unwrap_or(false);
    if !installed {
        let added = Command::new("rustup")
            .args(["target", "add", "aarch64-unknown-linux-gnu"])
            .status()
            .is_ok_and(|s| s.success());
        if !added {
            return Some("the Rust target aarch64-unknown-linux-gnu is not installed and `rustup target add` failed".into());
        }
    }
    for (tool, package) in [
        ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
        ("aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu"),
        ("qemu-system-aarch64", "qemu-system-arm"),
    ] {
        if !Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .status()
            .is_ok_and(|s| s.success())
        {
            return Some(format!(
                "{tool} is missing (Debian package {package}; scripts/deps.sh installs it)"
            ));
        }
    }
    if !Path::new("/usr/lib/aarch64-linux-gnu/pkgconfig/alsa.pc").exists() {
        return Some("libasound2-dev:arm64 is missing (scripts/deps.sh installs it)".into());
    }
    None
}

/// The aarch64 callbox, built with the configuration in `cross/` that users
/// build with.
fn build_arm64() -> Result<PathBuf> {
    let t = Instant::now();
    let dir = work_dir();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(repo())
        .env("CARGO_TARGET_DIR", &dir)
        .args([
            "build",
            "--bin",
            "callbox",
            "--target",
            "aarch64-unknown-linux-gnu",
        ])
        .arg("--config")
        .arg(repo().join("cross/config.toml"))
        .stdout(Stdio::null())
        .status()
        .context("cargo")?;
    ensure!(status.success(), "the aarch64 build failed: {status}");
    report(&format!(
        "arm64: callbox cross-built (aarch64-unknown-linux-gnu) in {:.1} s",
        t.elapsed().as_secs_f64()
    ));
    Ok(dir.join("aarch64-unknown-linux-gnu/debug/callbox"))
}

fn free_port(udp: bool) -> u16 {
    // The same number must be free for both kinds: the room's UDP media port
    // is forwarded under its own number.
    loop {
        let tcp = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = tcp.local_addr().expect("addr").port();
        if !udp || std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
}

/// KVM when it runs a guest here, TCG otherwise. Some hosts have a /dev/kvm
/// that hangs a normal kernel, so KVM is proven by booting the kernel to its
/// "no root" panic within seconds.
fn accel(arch: Arch, kernel: &Path) -> &'static str {
    static KVM: OnceLock<bool> = OnceLock::new();
    if let Ok(forced) = std::env::var("HIL_ACCEL") {
        return if forced == "kvm" { "kvm" } else { "tcg" };
    }
    if arch != Arch::X86_64 || !cfg!(target_arch = "x86_64") {
        return "tcg";
    }
    let works = *KVM.get_or_init(|| {
        let t = Instant::now();
        let openable = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        let works = openable
            && Command::new("timeout")
                .arg("15")
                .arg("qemu-system-x86_64")
                .args(["-accel", "kvm", "-cpu", "host", "-m", "256", "-nodefaults"])
                .args(["-display", "none", "-serial", "stdio", "-no-reboot"])
                .arg("-kernel")
                .arg(kernel)
                .args(["-append", "console=ttyS0 panic=-1"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("Kernel panic"));
        report(&format!(
            "KVM probe: {} ({:.1} s)",
            if works {
                "works"
            } else {
                "unusable here, using TCG"
            },
            t.elapsed().as_secs_f64()
        ));
        works
    });
    if works {
        "kvm"
    } else {
        "tcg"
    }
}

/// The running guest: qemu, its serial log, and the forwarded ports.
struct Guest {
    qemu: Child,
    dir: PathBuf,
    agent: SocketAddr,
    http: SocketAddr,
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
    }
}

impl Guest {
    fn share(&self) -> PathBuf {
        self.dir.join("share")
    }

    fn serial(&self) -> String {
        std::fs::read_to_string(self.dir.join("serial.log")).unwrap_or_default()
    }

    fn device_log(&self) -> String {
        std::fs::read_to_string(self.share().join("device.log")).unwrap_or_default()
    }

    /// Run a shell command in the guest: (exit status, output).
    async fn sh(&self, cmd: &str) -> Result<(i32, String)> {
        let exchange = async {
            let mut s = tokio::net::TcpStream::connect(self.agent).await?;
            s.write_all(format!("{cmd}\n").as_bytes()).await?;
            let mut lines = BufReader::new(s).lines();
            let mut out = String::new();
            while let Some(line) = lines.next_line().await? {
                if let Some(code) = line.strip_prefix("HIL-EXIT ") {
                    return Ok((code.trim().parse().unwrap_or(-1), out));
                }
                out.push_str(&line);
                out.push('\n');
            }
            Err(anyhow!("agent closed without an exit status"))
        };
        tokio::time::timeout(Duration::from_secs(60), exchange)
            .await
            .map_err(|_| anyhow!("guest command timed out: {cmd}"))?
            .with_context(|| format!("guest command: {cmd}"))
    }

    /// Run a command that must succeed; its output.
    async fn ok(&self, cmd: &str) -> Result<String> {
        let (code, out) = self.sh(cmd).await?;
        ensure!(code == 0, "`{cmd}` exited {code}: {out}");
        Ok(out)
    }

    async fn status(&self) -> Result<Value> {
        let out = self.ok("callbox ctl status").await?;
        serde_json::from_str(&out).with_context(|| format!("status JSON: {out}"))
    }

    /// Poll the daemon's status until `done` holds: the time it took and
    /// that status.
    async fn wait_status(
        &self,
        what: &str,
        secs: u64,
        done: impl Fn(&Value) -> bool,
    ) -> Result<(Duration, Value)> {
        let t = Instant::now();
        loop {
            // The control socket appears once the daemon is up.
            let s = match self.status().await {
                Ok(s) if done(&s) => return Ok((t.elapsed(), s)),
                Ok(s) => s.to_string(),
                Err(e) => format!("{e:#}"),
            };
            if t.elapsed() > Duration::from_secs(secs) {
                bail!("{what}: not within {secs} s; status {s}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_state(&self, state: &str, secs: u64) -> Result<Duration> {
        let what = format!("state {state}");
        Ok(self
            .wait_status(&what, secs, |s| s["state"] == state)
            .await?
            .0)
    }

    /// A gpio-sim line's level: what the daemon drives on an LED.
    async fn line(&self, name: &str) -> Result<u8> {
        let out = self.ok(&format!("cat /run/gpio/{name}/value")).await?;
        out.trim().parse().with_context(|| format!("{name}: {out}"))
    }

    async fn leds(&self) -> Result<(u8, u8)> {
        Ok((self.line("LED_CALL").await?, self.line("LED_BANNED").await?))
    }

    /// Press a button: the line is pulled up (pressed) for `hold`, then down.
    async fn press(&self, name: &str, hold: Duration) -> Result<()> {
        self.ok(&format!(
            "echo pull-up > /run/gpio/{name}/pull; sleep {:.3}; echo pull-down > /run/gpio/{name}/pull",
            hold.as_secs_f64()
        ))
        .await
        .map(drop)
    }
}

fn boot(arch: Arch, prepared: &Path, initrd: &Path, dir: &Path, media_port: u16) -> Result<Guest> {
    let agent_port = free_port(false);
    let http_port = free_port(false);
    let kernel = prepared.join("vmlinux");
    let accel = accel(arch, &kernel);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let mut cmd = match arch {
        Arch::X86_64 => {
            let mut c = Command::new("qemu-system-x86_64");
            // PVH boot of the ELF kernel with qboot: no BIOS, no decompressor.
            c.args(["-cpu", if accel == "kvm" { "host" } else { "max" }])
                .args(["-bios", "/usr/share/qemu/qboot.rom"]);
            c
        }
        Arch::Arm64 => {
            let mut c = Command::new("qemu-system-aarch64");
            c.args(["-M", "virt", "-cpu", "cortex-a72"]);
            c
        }
    };
    let console = if arch == Arch::X86_64 {
        "ttyS0"
    } else {
        "ttyAMA0"
    };
    let share = dir.join("share");
    let serial = std::fs::File::create(dir.join("serial.log"))?;
    cmd.args(["-accel", accel, "-smp", "2", "-m", "1024", "-nodefaults"])
        .args([
            "-display",
            "none",
            "-serial",
            "stdio",
            "-monitor",
            "none",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!("console={console} panic=-1 quiet hil.time={now}"))
        .arg("-netdev")
        .arg(format!(
            "user,id=n0,hostfwd=tcp:127.0.0.1:{agent_port}-:{GUEST_AGENT},\
             hostfwd=tcp:127.0.0.1:{http_port}-:{GUEST_HTTP},\
             hostfwd=udp:127.0.0.1:{media_port}-:{media_port}"
        ))
        .args(["-device", "virtio-net-pci,netdev=n0"])
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=share,security_model=none,id=share",
            share.display()
        ))
        .stdin(Stdio::null())
        .stdout(serial.try_clone()?)
        .stderr(serial);
    let qemu = cmd.spawn().context("starting qemu")?;
    report(&format!("{}: booting ({accel})", arch.name()));
    Ok(Guest {
        qemu,
        dir: dir.to_owned(),
        agent: SocketAddr::from((Ipv4Addr::LOCALHOST, agent_port)),
        http: SocketAddr::from((Ipv4Addr::LOCALHOST, http_port)),
    })
}

fn room_toml(media_port: u16) -> String {
    format!(
        r#"[server]
listen = "0.0.0.0:{GUEST_HTTP}"

[media]
udp_listen = "0.0.0.0:{media_port}"
# The host reaches this port as its own 127.0.0.1:{media_port} (qemu forwards it).
advertise = "127.0.0.1:{media_port}"

[admin]
key = "{DEMO_ADMIN_KEY}"

[[apps]]
sdk_app_id = {DEMO_SDK_APP_ID}
secret_key = "{DEMO_SECRET_KEY}"
"#
    )
}

/// The board's provisioning: vivid as the camera, the loopback card as
/// microphone (hw:Loopback,1,0) and speaker (hw:Loopback,0,1), gpio-sim's
/// lines as active-high buttons and LEDs.
fn device_toml(size: (usize, usize), format: &str) -> String {
    let sig = callbox::usersig::generate(
        DEMO_SDK_APP_ID,
        DEMO_SECRET_KEY,
        DEVICE,
        86400,
        callbox::usersig::unix_now(),
        None,
    );
    format!(
        r#"[room]
url = "ws://127.0.0.1:{GUEST_HTTP}/ws"
sdk_app_id = {DEMO_SDK_APP_ID}
user_id = "{DEVICE}"
user_sig = "{sig}"
room_id = {ROOM_ID}

[network]
bind = "127.0.0.1"

[video]
source = "v4l2"
device = "/dev/video0"
width = {w}
height = {h}
fps = 30
formats = ["{format}"]

[audio]
capture = "alsa"
capture_device = "hw:Loopback,1,0"
playback = "alsa"
playback_device = "hw:Loopback,0,1"

[call]
auto_join = true
banned_press = "long-only"
long_press_ms = {LONG_PRESS_MS}

[gpio]
call_button = {{ line = "BTN_CALL", active_low = false, bias = "pull-down", debounce_ms = 10 }}
hangup_button = {{ line = "BTN_HANGUP", active_low = false, bias = "pull-down", debounce_ms = 10 }}
call_led = {{ line = "LED_CALL" }}
banned_led = {{ line = "LED_BANNED" }}

[service]
log_level = "info"
"#,
        w = size.0,
        h = size.1,
    )
}

fn write_tone(path: &Path, hz: f64, secs: u32) -> Result<()> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: SAMPLE_RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec)?;
    let mut t = tone::Tone::new(hz, SAMPLE_RATE, 0.4);
    let mut buf = vec![0i16; SAMPLE_RATE as usize];
    for _ in 0..secs {
        t.fill(&mut buf);
        for s in &buf {
            w.write_sample(*s)?;
        }
    }
    w.finalize()?;
    Ok(())
}

/// The subscriber on the host: a Rust client in the device's room.
struct Viewer {
    client: Client,
    remote: Option<RemoteStream>,
}

impl Viewer {
    async fn join(http: SocketAddr) -> Result<Viewer> {
        let config = ClientConfig {
            url: format!("ws://{http}/ws"),
            sdk_app_id: DEMO_SDK_APP_ID,
            user_id: "viewer".into(),
            user_sig: common::sig("viewer"),
            net: NetConfig {
                bind: Ipv4Addr::LOCALHOST.into(),
                ..Default::default()
            },
            tls_ca_pem: None,
        };
        let mut client = Client::connect(config).await?;
        let existing = client.join(JoinRoom::Num(ROOM_ID)).await?;
        let mut v = Viewer {
            client,
            remote: None,
        };
        if let Some(info) = existing.into_iter().find(|s| s.user_id == DEVICE) {
            v.remote = Some(v.client.subscribe(&info).await?);
        }
        Ok(v)
    }

    /// Wait for the device's publication (if not subscribed yet) and subscribe.
    async fn subscribe_device(&mut self, secs: u64) -> Result<()> {
        if self.remote.is_some() {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            match tokio::time::timeout_at(deadline, self.client.next_event()).await {
                Ok(Some(ServerMessage::StreamAdded { stream })) if stream.user_id == DEVICE => {
                    self.remote = Some(self.client.subscribe(&stream).await?);
                    return Ok(());
                }
                Ok(Some(_)) => {}
                Ok(None) => bail!("signaling closed"),
                Err(_) => bail!("the device published nothing within {secs} s"),
            }
        }
    }

    /// Wait until the device's publication is gone (left, banned).
    async fn expect_device_gone(&mut self, secs: u64) -> Result<()> {
        expect_event(
            &mut self.client,
            secs,
            "device's stream-removed",
            |e| matches!(e, ServerMessage::StreamRemoved { user_id, .. } if user_id == DEVICE),
        )
        .await;
        self.remote = None;
        Ok(())
    }

    async fn receive(&mut self, secs: f64) -> Result<Received> {
        let remote = self
            .remote
            .as_mut()
            .ok_or_else(|| anyhow!("not subscribed to the device"))?;
        let window = Duration::from_secs_f64(secs);
        Ok(receive(&mut remote.packets, window, window).await)
    }
}

/// What the subscriber saw of the device's video: frames decoded at `size`
/// with a picture on them (vivid's colour bars, not a flat field).
struct VideoCheck {
    decoded: usize,
    wrong_size: Option<(usize, usize)>,
    blank: usize,
}

fn check_video(r: &Received, size: (usize, usize)) -> VideoCheck {
    let mut c = VideoCheck {
        decoded: 0,
        wrong_size: None,
        blank: 0,
    };
    let Ok(mut dec) = H264Decoder::new() else {
        return c;
    };
    for au in &r.video_frames {
        let Ok(Some((dims, spread))) = dec.decode(au, |f| {
            let y = &f.y[..f.width * f.height];
            let (lo, hi) = (y.iter().min().copied(), y.iter().max().copied());
            ((f.width, f.height), hi.zip(lo).map_or(0, |(h, l)| h - l))
        }) else {
            continue;
        };
        c.decoded += 1;
        if dims != size {
            c.wrong_size = Some(dims);
        }
        if spread < 64 {
            c.blank += 1;
        }
    }
    c
}

/// Frames decoded in a `secs` window: at `size`, none blank, at least
/// `at_least`; the summary for the report.
fn ensure_video(r: &Received, size: (usize, usize), at_least: usize, secs: f64) -> Result<String> {
    let c = check_video(r, size);
    ensure!(
        c.wrong_size.is_none(),
        "decoded frames at {:?}, vivid gives {size:?}",
        c.wrong_size
    );
    ensure!(
        c.blank == 0,
        "{} of {} decoded frames are blank",
        c.blank,
        c.decoded
    );
    ensure!(
        c.decoded >= at_least,
        "decoded {} frames (of {} received), needed {at_least}",
        c.decoded,
        r.video_frames.len()
    );
    Ok(format!(
        "{} frames decoded at {}x{} in {secs} s ({:.1} fps)",
        c.decoded,
        size.0,
        size.1,
        c.decoded as f64 / secs
    ))
}

fn audio_frequency(r: &Received) -> Result<f64> {
    let mut dec = OpusDecoder::new()?;
    let mut pcm = Vec::new();
    let mut buf = vec![0i16; FRAME_SAMPLES * 6];
    for p in &r.audio_payloads {
        let n = dec.decode(p, &mut buf)?;
        pcm.extend_from_slice(&buf[..n]);
    }
    ensure!(
        pcm.len() >= SAMPLE_RATE as usize,
        "only {} samples of audio",
        pcm.len()
    );
    // The microphone's tone file restarts now and then: measure between gaps.
    let (run, _) = longest_unbroken(&pcm[SAMPLE_RATE as usize / 4..]);
    ensure!(
        run.len() >= SAMPLE_RATE as usize / 2,
        "no unbroken half second of tone in {} samples",
        pcm.len()
    );
    tone::frequency(run, SAMPLE_RATE)
        .ok_or_else(|| anyhow!("no tone in {} samples of audio", pcm.len()))
}

/// The longest stretch of `samples` without a silent gap (over 2 ms below
/// a tenth of the peak), and how many gaps there were.
fn longest_unbroken(samples: &[i16]) -> (&[i16], usize) {
    let peak = samples.iter().map(|s| s.unsigned_abs()).max().unwrap_or(0);
    let quiet = peak / 10;
    let gap = SAMPLE_RATE as usize / 500;
    let (mut best, mut gaps) = (0..0, 0);
    let (mut start, mut silent) = (None, 0);
    for (i, s) in samples.iter().enumerate() {
        if s.unsigned_abs() > quiet {
            if silent > gap && start.is_some() {
                gaps += 1;
                start = None;
            }
            let from = *start.get_or_insert(i);
            if i + 1 - from > best.len() {
                best = from..i + 1;
            }
            silent = 0;
        } else {
            silent += 1;
        }
    }
    (&samples[best], gaps)
}

/// Everything a scenario needs.
struct Rig {
    arch: Arch,
    guest: Guest,
    viewer: Option<Viewer>,
    size: (usize, usize),
}

impl Rig {
    fn viewer(&mut self) -> Result<&mut Viewer> {
        self.viewer
            .as_mut()
            .ok_or_else(|| anyhow!("no subscriber (scenario 2 failed)"))
    }

    /// Scenario 1: the daemon joins by itself at boot; LED_CALL lit.
    async fn auto_join(&mut self) -> Result<String> {
        let (waited, s) = self
            .guest
            .wait_status("state in-call", 60, |s| s["state"] == "in-call")
            .await?;
        let leds = self.guest.leds().await?;
        ensure!(
            leds == (1, 0),
            "LED_CALL, LED_BANNED = {leds:?}, want (1, 0)"
        );
        // The daemon's own clock: how long after its start it entered the call.
        let joined_at = s["uptime_s"].as_f64().unwrap_or(f64::NAN)
            - s["in_state_s"].as_f64().unwrap_or(f64::NAN);
        // The first packet goes out just after the call is up.
        let (_, s) = self
            .guest
            .wait_status("first RTP sent", 5, |s| {
                s["media"]["first_rtp_ms"].is_number()
            })
            .await?;
        Ok(format!(
            "in call {joined_at:.2} s after the daemon started (seen {:.2} s after the guest was up), LED_CALL=1 LED_BANNED=0, first RTP {} ms after daemon start",
            waited.as_secs_f64(),
            s["media"]["first_rtp_ms"]
        ))
    }

    /// Scenario 2: the host subscriber decodes vivid's picture and the
    /// microphone's 440 Hz.
    async fn subscriber_decodes(&mut self) -> Result<String> {
        // The microphone: a tone played into the loopback, for the rest of the run.
        self.guest
            .ok("(while true; do aplay -q -D hw:Loopback,0,0 /share/mic.wav; done) > /dev/null 2>&1 &")
            .await?;
        let t = Instant::now();
        let mut viewer = Viewer::join(self.guest.http).await?;
        viewer.subscribe_device(10).await?;
        let subscribed = t.elapsed();
        // Let the tone reach the encoder before listening.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let got = viewer.receive(4.0).await?;
        self.viewer = Some(viewer);
        let video = ensure_video(&got, self.size, 20, 4.0)?;
        let f = audio_frequency(&got)?;
        ensure!(
            (f - MIC_HZ).abs() <= 5.0,
            "audio decodes to {f:.1} Hz, want {MIC_HZ}"
        );
        let media = &self.guest.status().await?["media"];
        Ok(format!(
            "subscribed in {:.2} s; {video}; audio {} packets, tone {f:.1} Hz; daemon encode p50 {} ms p99 {} ms, {} capture xruns",
            subscribed.as_secs_f64(),
            got.audio_payloads.len(),
            media["encode_ms_p50"],
            media["encode_ms_p99"],
            media["capture_xruns"]
        ))
    }

    /// Scenario 3: the subscriber's tone comes out of the daemon's speaker.
    async fn speaker_plays(&mut self) -> Result<String> {
        let viewer = self.viewer()?;
        let local = viewer.client.publish(true, false).await?;
        let track = local
            .audio()
            .cloned()
            .ok_or_else(|| anyhow!("no audio track"))?;
        let mut enc = OpusEncoder::new(32_000)?;
        let mut t = tone::Tone::new(SPEAKER_HZ, SAMPLE_RATE, 0.3);
        let mut frame = vec![0i16; FRAME_SAMPLES];
        let mut tick = tokio::time::interval(FRAME);
        for i in 0..300 {
            tick.tick().await;
            t.fill(&mut frame);
            let packet = Bytes::copy_from_slice(enc.encode(&frame)?);
            track.write(packet, FRAME).await?;
            // Record the speaker once the daemon has had a second to subscribe.
            if i == 50 {
                self.guest
                    .ok("arecord -q -D hw:Loopback,1,1 -f S16_LE -r 48000 -c 1 -d 3 /share/speaker.wav > /share/arecord.log 2>&1 &")
                    .await?;
            }
        }
        let viewer = self.viewer()?;
        viewer.client.unpublish().await?;
        self.guest
            .ok("while pidof arecord > /dev/null; do sleep 0.1; done")
            .await?;
        let wav = self.guest.share().join("speaker.wav");
        let samples: Vec<i16> = hound::WavReader::open(&wav)
            .with_context(|| format!("{}", wav.display()))?
            .samples::<i16>()
            .collect::<Result<_, _>>()?;
        let loud = samples.iter().filter(|s| s.unsigned_abs() > 3000).count();
        ensure!(
            loud > SAMPLE_RATE as usize / 2,
            "the speaker recording is silent ({} samples, {loud} loud)",
            samples.len()
        );
        // An underrun (a late packet on an emulated CPU) leaves a gap, which
        // would bias a count of cycles over the whole take: measure the
        // longest unbroken stretch, and report the gaps.
        let (run, gaps) = longest_unbroken(&samples);
        let f =
            tone::frequency(run, SAMPLE_RATE).ok_or_else(|| anyhow!("no tone in the recording"))?;
        ensure!(
            (f - SPEAKER_HZ).abs() <= 5.0,
            "recorded {f:.1} Hz, want {SPEAKER_HZ}"
        );
        let s = self.guest.status().await?;
        Ok(format!(
            "recorded {:.1} s from hw:Loopback,1,1: {f:.1} Hz over {:.2} s unbroken, {gaps} gap(s); daemon received {} audio packets, {} playback underruns",
            samples.len() as f64 / SAMPLE_RATE as f64,
            run.len() as f64 / SAMPLE_RATE as f64,
            s["media"]["audio_packets_received"],
            s["media"]["playback_underruns"]
        ))
    }

    /// Scenario 4: hang up and call with the buttons.
    async fn buttons(&mut self) -> Result<String> {
        let t = Instant::now();
        self.guest
            .press("BTN_HANGUP", Duration::from_millis(200))
            .await?;
        let left = self.guest.wait_state("idle", 10).await? + Duration::from_millis(200);
        ensure!(
            self.guest.line("LED_CALL").await? == 0,
            "LED_CALL still lit after hangup"
        );
        self.viewer()?.expect_device_gone(10).await?;
        let gone = t.elapsed();

        let t = Instant::now();
        self.guest
            .press("BTN_CALL", Duration::from_millis(200))
            .await?;
        let joined = self.guest.wait_state("in-call", 20).await? + Duration::from_millis(200);
        ensure!(
            self.guest.line("LED_CALL").await? == 1,
            "LED_CALL dark in the call"
        );
        let viewer = self.viewer()?;
        viewer.subscribe_device(15).await?;
        let got = viewer.receive(3.0).await?;
        let video = ensure_video(&got, self.size, 10, 3.0)?;
        ensure!(!got.audio_payloads.is_empty(), "no audio after rejoining");
        Ok(format!(
            "hangup press -> idle {:.2} s, LED_CALL=0, subscriber saw the stream go {:.2} s; call press -> in call {:.2} s, LED_CALL=1; media again {:.2} s after the press: {video}, {} audio packets",
            left.as_secs_f64(),
            gone.as_secs_f64(),
            joined.as_secs_f64(),
            t.elapsed().as_secs_f64() - 3.0,
            got.audio_payloads.len()
        ))
    }

    /// Scenario 5: RemoveUser bans the device until a long call press.
    async fn ban_and_long_press(&mut self) -> Result<String> {
        let t = Instant::now();
        let (code, body) = http_post(
            self.guest.http,
            "/api/admin/RemoveUser",
            Some(DEMO_ADMIN_KEY),
            &json!({"SdkAppId": DEMO_SDK_APP_ID, "RoomId": ROOM_ID, "UserIds": [DEVICE]})
                .to_string(),
        )
        .await?;
        ensure!(code == 200, "RemoveUser: {code} {body}");
        self.guest.wait_state("banned", 10).await?;
        let banned = t.elapsed();
        let s = self.guest.status().await?;
        ensure!(
            s["ban_reason"] == "banned",
            "ban reason {}",
            s["ban_reason"]
        );
        let leds = self.guest.leds().await?;
        ensure!(
            leds == (0, 1),
            "LED_CALL, LED_BANNED = {leds:?}, want (0, 1)"
        );
        let viewer = self.viewer()?;
        let mut stale = viewer.remote.take();
        viewer.expect_device_gone(10).await?;
        // Media stopped: nothing more arrives on the old subscription.
        if let Some(r) = stale.as_mut() {
            while r.packets.try_recv().is_ok() {}
            let more = receive(
                &mut r.packets,
                Duration::from_secs(2),
                Duration::from_secs(2),
            )
            .await;
            let n = more.video_frames.len() + more.audio_payloads.len();
            ensure!(n == 0, "{n} media units still arrived after the ban");
        }
        let sent = self.guest.status().await?["media"]["audio_packets_sent"].clone();

        // long-only: a short press leaves it banned.
        self.guest
            .press("BTN_CALL", Duration::from_millis(200))
            .await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let s = self.guest.status().await?;
        ensure!(
            s["state"] == "banned",
            "a short press cleared the ban: {}",
            s["state"]
        );
        ensure!(
            s["media"]["audio_packets_sent"] == sent,
            "the daemon sent audio while banned"
        );

        self.guest
            .press("BTN_CALL", Duration::from_millis(LONG_PRESS_MS + 500))
            .await?;
        let rejoined = self.guest.wait_state("in-call", 20).await?;
        let leds = self.guest.leds().await?;
        ensure!(
            leds == (1, 0),
            "after the long press LED_CALL, LED_BANNED = {leds:?}"
        );
        let viewer = self.viewer()?;
        viewer.subscribe_device(15).await?;
        let got = viewer.receive(2.0).await?;
        let video = ensure_video(&got, self.size, 5, 2.0)?;
        Ok(format!(
            "RemoveUser -> banned {:.2} s, LED_BANNED=1 LED_CALL=0, no media for 2 s; short press ignored; {:.1} s hold -> in call {:.2} s after release, LEDs (1, 0), {video}",
            banned.as_secs_f64(),
            (LONG_PRESS_MS + 500) as f64 / 1000.0,
            rejoined.as_secs_f64(),
        ))
    }

    /// Scenario 6: the camera goes away and comes back during the call.
    async fn camera_unplug(&mut self) -> Result<String> {
        // The daemon holds /dev/video0 open, and the kernel refuses to unload
        // a driver whose device is open, as it would for any camera in use.
        let (code, out) = self.guest.sh("rmmod vivid").await?;
        ensure!(code != 0, "rmmod vivid succeeded with the camera open?");
        let refused = out.trim().to_owned();
        // So the camera is unplugged the way a USB camera goes: the driver
        // unbinds the device (the removal half of rmmod); then the module
        // unloads once the daemon has let go of it.
        let t = Instant::now();
        self.guest
            .ok("echo vivid.0 > /sys/bus/platform/drivers/vivid/unbind")
            .await?;
        let (_, lost) = self
            .guest
            .wait_status("camera loss noticed", 10, |s| {
                s["media"]["camera_lost"] == true
            })
            .await?;
        let noticed = t.elapsed();
        ensure!(
            lost["state"] == "in-call",
            "the call ended: {}",
            lost["state"]
        );
        ensure!(
            lost["degraded"].is_string(),
            "status shows no degradation: {lost}"
        );
        let log = self.guest.device_log();
        let logged = log
            .lines()
            .find(|l| l.contains("ERROR") && l.contains("video capture failed (code 0x1003)"))
            .ok_or_else(|| anyhow!("no logged error with a code"))?
            .to_owned();
        let mut unloaded = false;
        for _ in 0..50 {
            if self.guest.sh("rmmod vivid").await?.0 == 0 {
                unloaded = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ensure!(unloaded, "rmmod vivid still refused after the unplug");
        ensure!(
            self.guest.sh("test -e /dev/video0").await?.0 != 0,
            "/dev/video0 still exists"
        );
        // Audio continues meanwhile.
        let viewer = self.viewer()?;
        let r = viewer.receive(0.3).await?; // drain video still in flight
        drop(r);
        let during = viewer.receive(2.0).await?;
        ensure!(
            during.audio_payloads.len() >= 50,
            "audio stalled without the camera: {} packets in 2 s",
            during.audio_payloads.len()
        );
        let f = audio_frequency(&during)?;
        ensure!(
            (f - MIC_HZ).abs() <= 5.0,
            "audio during the outage: {f:.1} Hz"
        );
        ensure!(
            during.video_frames.is_empty(),
            "{} video frames arrived with the camera gone",
            during.video_frames.len()
        );

        let t = Instant::now();
        self.guest.ok("modprobe vivid").await?;
        let (_, s) = self
            .guest
            .wait_status("camera back", 10, |s| s["media"]["camera_lost"] == false)
            .await?;
        let back = t.elapsed();
        ensure!(
            s["state"] == "in-call" && s["degraded"].is_null(),
            "after modprobe: {s}"
        );
        let got = self.viewer()?.receive(3.0).await?;
        let video = ensure_video(&got, self.size, 10, 3.0)?;
        Ok(format!(
            "rmmod with the camera open: refused ({refused}); unbind -> camera_lost in {:.2} s, still in call, status degraded, log: \"{}\"; rmmod ok; audio went on ({} packets/2 s, {f:.1} Hz, 0 video); modprobe -> camera back in {:.2} s, same daemon (uptime {:.0} s), {video}",
            noticed.as_secs_f64(),
            logged.split("] ").nth(1).unwrap_or(&logged),
            during.audio_payloads.len(),
            back.as_secs_f64(),
            s["uptime_s"].as_f64().unwrap_or(0.0),
        ))
    }

    /// Scenario 7: YU12 is encoded from the driver's buffers; YUYV costs
    /// exactly one conversion pass per frame.
    async fn zero_copy(&mut self) -> Result<String> {
        // The camera, should scenario 6 have left it unloaded.
        self.guest.ok("modprobe vivid").await?;
        let s = self.guest.status().await?;
        let media = &s["media"];
        ensure!(
            s["frame_copies_per_frame"] == 0.0,
            "YU12: frame_copies_per_frame {}",
            s["frame_copies_per_frame"]
        );
        let yu12 = format!(
            "YU12: {} frames captured, {} copies (0 per frame)",
            media["video_frames_captured"], media["frame_copies"]
        );
        ensure!(
            self.guest
                .device_log()
                .contains(&format!("YU12 {}x{} @30 fps", self.size.0, self.size.1)),
            "the camera was not opened as YU12"
        );

        // The same board provisioned for YUYV: restart the service.
        self.guest.ok("hil-device stop").await?;
        self.viewer()?.expect_device_gone(10).await?;
        self.guest
            .ok("hil-device start /etc/callbox/device-yuyv.toml")
            .await?;
        self.guest.wait_state("in-call", 30).await?;
        let viewer = self.viewer()?;
        viewer.subscribe_device(15).await?;
        let got = viewer.receive(2.0).await?;
        let video = ensure_video(&got, self.size, 5, 2.0)?;
        let s = self.guest.status().await?;
        let media = &s["media"];
        let (captured, copies) = (
            media["video_frames_captured"].as_u64().unwrap_or(0),
            media["frame_copies"].as_u64().unwrap_or(u64::MAX),
        );
        ensure!(
            captured > 0 && copies == captured,
            "YUYV: {copies} copies for {captured} frames"
        );
        ensure!(
            self.guest
                .device_log()
                .contains(&format!("YUYV {}x{} @30 fps", self.size.0, self.size.1)),
            "the camera was not opened as YUYV"
        );
        Ok(format!(
            "{yu12}; YUYV: {captured} frames, {copies} passes (frame_copies_per_frame {}), {video}",
            s["frame_copies_per_frame"]
        ))
    }

    /// Scenario 8: the service starts while the camera is not there (a USB
    /// camera still enumerating, or unplugged): it joins audio-only,
    /// degraded, and picks the camera up when it appears.
    async fn boot_without_camera(&mut self) -> Result<String> {
        self.guest.ok("hil-device stop").await?;
        self.viewer()?.expect_device_gone(10).await?;
        self.guest.ok("rmmod vivid").await?;
        self.guest.ok("hil-device start").await?;
        let (joined, s) = self
            .guest
            .wait_status("in-call without a camera", 30, |s| s["state"] == "in-call")
            .await?;
        ensure!(
            s["media"]["camera_lost"] == true && s["degraded"].is_string(),
            "not degraded: {s}"
        );
        let log = self.guest.device_log();
        ensure!(
            log.contains("/dev/video0 is gone") && log.contains("starting audio-only"),
            "no logged error for the missing camera"
        );
        let viewer = self.viewer()?;
        viewer.subscribe_device(15).await?;
        let during = viewer.receive(2.0).await?;
        let f = audio_frequency(&during)?;
        ensure!(
            (f - MIC_HZ).abs() <= 5.0 && during.video_frames.is_empty(),
            "audio-only: {f:.1} Hz, {} video frames",
            during.video_frames.len()
        );
        let t = Instant::now();
        self.guest.ok("modprobe vivid").await?;
        self.guest
            .wait_status("camera found", 10, |s| s["media"]["camera_lost"] == false)
            .await?;
        let found = t.elapsed();
        let got = self.viewer()?.receive(3.0).await?;
        let video = ensure_video(&got, self.size, 10, 3.0)?;
        Ok(format!(
            "no /dev/video0: in call (degraded) {:.2} s after start, {} audio packets/2 s at {f:.1} Hz, 0 video; modprobe -> camera found in {:.2} s, {video}",
            joined.as_secs_f64(),
            during.audio_payloads.len(),
            found.as_secs_f64()
        ))
    }
}

async fn run_arch(arch: Arch) -> Result<usize> {
    let prepared = prepare(arch)?;
    let binary = match arch {
        Arch::X86_64 => PathBuf::from(env!("CARGO_BIN_EXE_callbox")),
        Arch::Arm64 => build_arm64()?,
    };
    let dir = work_dir().join(format!("run-{}", arch.name()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("share"))?;
    let initrd = dir.join("initrd.gz");
    run(Command::new(repo().join("tests/hil/initramfs.sh"))
        .arg(arch.name())
        .arg(&prepared)
        .arg(&binary)
        .arg(&initrd))?;

    let size = VIDEO_SIZE;
    let media_port = free_port(true);
    let share = dir.join("share");
    std::fs::write(share.join("room.toml"), room_toml(media_port))?;
    std::fs::write(share.join("device.toml"), device_toml(size, "YU12"))?;
    std::fs::write(share.join("device-yuyv.toml"), device_toml(size, "YUYV"))?;
    write_tone(&share.join("mic.wav"), MIC_HZ, 30)?;

    let t = Instant::now();
    let guest = boot(arch, &prepared, &initrd, &dir, media_port)?;
    loop {
        let serial = guest.serial();
        if let Some(line) = serial.lines().find(|l| l.starts_with("HIL-READY")) {
            report(&format!(
                "{}: guest up in {:.1} s ({line}); daemon started by /init",
                arch.name(),
                t.elapsed().as_secs_f64()
            ));
            break;
        }
        ensure!(
            t.elapsed() < Duration::from_secs(180),
            "guest not up in 180 s; serial:\n{serial}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut rig = Rig {
        arch,
        guest,
        viewer: None,
        size,
    };

    let (mut ran, mut failed) = (0, 0);
    macro_rules! scenario {
        ($n:expr, $name:expr, $f:ident) => {
            ran += 1;
            let t = Instant::now();
            match rig.$f().await {
                Ok(detail) => report(&format!(
                    "{} scenario {} {}: ok in {:.2} s: {detail}",
                    rig.arch.name(),
                    $n,
                    $name,
                    t.elapsed().as_secs_f64()
                )),
                Err(e) => {
                    failed += 1;
                    report(&format!(
                        "{} scenario {} {}: FAILED after {:.2} s: {e:#}",
                        rig.arch.name(),
                        $n,
                        $name,
                        t.elapsed().as_secs_f64()
                    ));
                }
            }
        };
    }
    scenario!(1, "auto_join", auto_join);
    scenario!(2, "subscriber_decodes_video_and_440hz", subscriber_decodes);
    scenario!(3, "speaker_plays_subscriber_tone", speaker_plays);
    scenario!(4, "hangup_and_call_buttons", buttons);
    scenario!(5, "ban_then_long_press", ban_and_long_press);
    scenario!(6, "camera_unplug_and_back", camera_unplug);
    scenario!(7, "zero_copy_yu12_one_pass_yuyv", zero_copy);
    scenario!(8, "boot_without_camera", boot_without_camera);

    if failed > 0 {
        let log = rig.guest.device_log();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        report(&format!(
            "{}: daemon log (last 40 lines, newest first):\n{}",
            arch.name(),
            tail.join("\n")
        ));
    }
    if let Some(v) = rig.viewer.take() {
        let mut c = v.client;
        let _ = c.leave().await;
    }
    let _ = rig.guest.sh("sync; poweroff -f").await;
    report(&format!(
        "{}: {} of {ran} scenarios passed, {:.1} s from boot",
        arch.name(),
        ran - failed,
        t.elapsed().as_secs_f64()
    ));
    Ok(failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hardware_in_the_loop() {
    let only = std::env::var("HIL_ARCHES").unwrap_or_else(|_| "x86_64 arm64".into());
    let mut failures = Vec::new();
    for arch in [Arch::X86_64, Arch::Arm64] {
        if !only.split_whitespace().any(|a| a == arch.name()) {
            continue;
        }
        if arch == Arch::Arm64 {
            if let Some(why) = arm64_unavailable() {
                report(&format!("arm64: SKIPPED: {why}"));
                continue;
            }
        }
        match run_arch(arch).await {
            Ok(0) => {}
            Ok(n) => failures.push(format!("{}: {n} scenario(s) failed", arch.name())),
            Err(e) => failures.push(format!("{}: {e:#}", arch.name())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
