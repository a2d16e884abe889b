//! Network paths benchmark: the device (in this process, synthetic 640x480
//! pattern + tone) publishing to a room service over each way a call can
//! take, in the same run, side by side:
//! - `udp`: direct, host candidates over UDP (the baseline);
//! - `ice-tcp`: all UDP to and from the clients' address dropped
//!   (iptables), so media goes over ICE-TCP to the room's passive candidate;
//! - `turn-tcp`: relay-only through Debian's coturn over TCP, with the
//!   room's credentials (the device's TURN-over-TCP bridge).
//!
//! For each it prints the time from start to the device in call, from
//! subscribing to the first decoded frame, glass-to-glass latency (the
//! pattern's capture stamp -> decoded at a Rust subscriber, p50/p99), and
//! the room's SFU thread CPU per forwarded stream (its TCP connections are
//! served on the same thread). In `ice-tcp` the subscribers are on TCP too.
//!
//! Everything runs in a network namespace of its own (the bench re-executes
//! itself under `unshare --net`). `cargo bench --bench network` measures
//! 10 s windows with 4 subscribers; under `cargo test` a 2 s smoke pass
//! with 1.

#[path = "../tests/common/mod.rs"]
mod common;

use callbox::client::{Client, ClientConfig, RoomId};
use callbox::device::daemon::CallLink;
use callbox::device::h264::H264Decoder;
use callbox::device::pattern;
use callbox::protocol::{MediaKind, StreamInfo};
use callbox::room::local::{loopback_config, DeviceToml, LocalRoom};
use callbox::room::turn::TurnConfig;
use common::{percentile, ratio, threads_cpu_ns};
use rtc::rtp::codec::h264::H264Packet;
use rtc::rtp::packetizer::Depacketizer;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ROOM: u32 = 5160;
/// The clients' address when UDP is dropped (a veth end: the kernel sends
/// to local addresses from it).
const NO_UDP_IP: &str = "10.9.1.2";
const TURN_PORT: u16 = 3478;
const SECRET: &str = "turn-shared-secret-for-bench";

#[derive(Clone, Copy, PartialEq)]
enum Path {
    Udp,
    IceTcp,
    TurnTcp,
}

impl Path {
    fn name(self) -> &'static str {
        match self {
            Path::Udp => "udp",
            Path::IceTcp => "ice-tcp",
            Path::TurnTcp => "turn-tcp",
        }
    }
}

struct Outcome {
    ice_path: String,
    in_call_ms: f64,
    first_frame_ms: f64,
    frames: usize,
    glass_p50: f64,
    glass_p99: f64,
    sfu_cpu: f64,
    forwarded_streams: usize,
}

fn sh(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-ec", cmd])
        .status()
        .is_ok_and(|s| s.success())
}

fn coturn() -> Option<common::KillOnDrop> {
    let child = Command::new("turnserver")
        .args([
            "-n",
            "--listening-ip=127.0.0.1",
            "--relay-ip=127.0.0.1",
            &format!("--listening-port={TURN_PORT}"),
            "--use-auth-secret",
            &format!("--static-auth-secret={SECRET}"),
            "--realm=callbox.test",
            "--allow-loopback-peers",
            "--no-tls",
            "--no-dtls",
            "--no-cli",
            "--log-file=stdout",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let up = (0..200).any(|_| {
        let ok = std::net::TcpStream::connect(("127.0.0.1", TURN_PORT)).is_ok();
        if !ok {
            std::thread::sleep(Duration::from_millis(25));
        }
        ok
    });
    let child = common::KillOnDrop(child);
    up.then_some(child)
}

async fn room_for(path: Path) -> LocalRoom {
    let mut config = loopback_config(None, false);
    config.media.tcp_listen = match path {
        Path::IceTcp => format!("{NO_UDP_IP}:0").parse().ok(),
        _ => None,
    };
    if path == Path::TurnTcp {
        config.turn = Some(
            toml::from_str::<TurnConfig>(&format!(
                "urls = [\"turn:127.0.0.1:{TURN_PORT}?transport=tcp\"]\nshared_secret = \"{SECRET}\""
            ))
            .expect("turn config"),
        );
    }
    LocalRoom::start(config).await.expect("room")
}

fn viewer_config(room: &LocalRoom, path: Path, n: usize) -> ClientConfig {
    let mut c = room.client_config(&format!("viewer{n}"));
    if path == Path::IceTcp {
        c.net.bind = NO_UDP_IP.parse().expect("address");
    }
    c
}

/// Subscribe to the device; the first viewer decodes and stamps frames,
/// the others count packets.
async fn watch(
    room: &LocalRoom,
    path: Path,
    n: usize,
    stream: &StreamInfo,
    until: Instant,
    packets: Arc<AtomicU64>,
) -> (Option<f64>, Vec<f64>, Client) {
    let mut c = Client::connect(viewer_config(room, path, n))
        .await
        .expect("connect");
    c.join(RoomId::Num(ROOM)).await.expect("join");
    let t = Instant::now();
    let mut remote = c.subscribe(stream).await.expect("subscribe");
    if n > 0 {
        tokio::spawn(async move {
            while remote.packets.recv().await.is_some() {
                packets.fetch_add(1, Ordering::Relaxed);
            }
        });
        return (None, Vec::new(), c);
    }
    let (mut dec, mut depack) = (H264Decoder::new().expect("decoder"), H264Packet::default());
    let (mut au, mut lat, mut first) = (Vec::new(), Vec::new(), None);
    while Instant::now() < until {
        let Ok(Some(p)) = tokio::time::timeout(Duration::from_secs(2), remote.packets.recv()).await
        else {
            break;
        };
        packets.fetch_add(1, Ordering::Relaxed);
        if p.kind != MediaKind::Video {
            continue;
        }
        if let Ok(b) = depack.depacketize(&p.packet.payload) {
            au.extend_from_slice(&b);
        }
        if p.packet.header.marker {
            if let Some(s) = dec.decode(&au, pattern::read).ok().flatten().flatten() {
                first.get_or_insert_with(|| t.elapsed().as_secs_f64() * 1000.0);
                lat.push(pattern::now_us().saturating_sub(s.capture_us) as f64 / 1000.0);
            }
            au.clear();
        }
    }
    (first, lat, c)
}

async fn run(path: Path, viewers: usize, warmup: Duration, window: Duration) -> Outcome {
    let room = room_for(path).await;
    let mut toml = DeviceToml::loopback(&room.ws_url(), "bench-device", ROOM, 3600);
    toml = match path {
        Path::Udp => toml,
        Path::IceTcp => toml.set("network", "bind", NO_UDP_IP),
        Path::TurnTcp => toml.set("network", "ice_transport_policy", "relay"),
    };
    let config = callbox::device::config::DeviceConfig::parse(
        std::path::Path::new("bench-device.toml"),
        &toml.text(),
    )
    .expect("device config");
    let (joined, in_call) = tokio::sync::oneshot::channel();
    let link = CallLink {
        joined: Some(joined),
        ..Default::default()
    };
    let t0 = Instant::now();
    let (stop, call, stats) = common::start_linked_device(config, link);
    in_call.await.expect("the device joins");
    let in_call_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let ice_path = stats.snapshot().ice_path.unwrap_or_default();

    let mut probe = Client::connect(room.client_config("probe"))
        .await
        .expect("connect");
    let streams = probe.join(RoomId::Num(ROOM)).await.expect("join");
    let stream = streams
        .into_iter()
        .find(|s| s.user_id == "bench-device")
        .expect("the device publishes");
    let _ = probe.leave().await;
    let packets = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + warmup + window;
    let mut others = Vec::new();
    for n in 1..viewers {
        others.push(
            watch(&room, path, n, &stream, until, Arc::clone(&packets))
                .await
                .2,
        );
    }
    let measuring = async {
        tokio::time::sleep(warmup).await;
        let (c0, w0) = (threads_cpu_ns("callbox-sfu"), Instant::now());
        tokio::time::sleep(window).await;
        let (c1, w1) = (threads_cpu_ns("callbox-sfu"), Instant::now());
        (c1 - c0) as f64 / 1e9 / (w1 - w0).as_secs_f64()
    };
    let (sfu_cpu, (first, mut lat, first_viewer)) = tokio::join!(
        measuring,
        watch(&room, path, 0, &stream, until, Arc::clone(&packets))
    );
    let _ = stop.send(());
    let _ = call.await;
    drop((first_viewer, others));
    room.stop().await;
    Outcome {
        ice_path,
        in_call_ms,
        first_frame_ms: first.unwrap_or(f64::NAN),
        frames: lat.len(),
        glass_p50: percentile_f(&mut lat, 0.5),
        glass_p99: percentile_f(&mut lat, 0.99),
        sfu_cpu,
        forwarded_streams: viewers,
    }
}

fn percentile_f(v: &mut [f64], q: f64) -> f64 {
    let mut us: Vec<u64> = v.iter().map(|x| (x * 1000.0) as u64).collect();
    percentile(&mut us, q) as f64 / 1000.0
}

/// All UDP to and from `NO_UDP_IP` dropped; `false` where that cannot be set up.
fn drop_udp_of_clients() -> bool {
    sh(&format!(
        "ip link add cbb0 type veth peer name cbb1
         ip addr add {NO_UDP_IP}/24 dev cbb0; ip link set cbb0 up; ip link set cbb1 up
         iptables -A OUTPUT -p udp -s {NO_UDP_IP} -j DROP
         iptables -A INPUT -p udp -d {NO_UDP_IP} -j DROP"
    ))
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    common::bench_in_own_netns();
    let _ = env_logger::builder().try_init();
    let (viewers, warmup, window) = if full {
        (4, Duration::from_secs(3), Duration::from_secs(10))
    } else {
        (1, Duration::from_secs(1), Duration::from_secs(2))
    };
    let mut paths = vec![Path::Udp];
    if drop_udp_of_clients() {
        paths.push(Path::IceTcp);
    } else {
        println!("network bench: ice-tcp SKIPPED: iptables cannot drop UDP here");
    }
    let turn = coturn();
    match turn {
        Some(_) => paths.push(Path::TurnTcp),
        None => println!("network bench: turn-tcp SKIPPED: coturn's turnserver cannot run here"),
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "Network paths (device 640x480@30 + Opus -> room -> {viewers} subscriber(s), {} s window)",
        window.as_secs()
    );
    println!(
        "{:<9} {:>10} {:>11} {:>15} {:>7} {:>10} {:>10} {:>17}",
        "path",
        "ice path",
        "in call ms",
        "first frame ms",
        "frames",
        "g2g p50",
        "g2g p99",
        "SFU % per stream"
    );
    let mut outcomes = Vec::new();
    for path in paths {
        let o = rt.block_on(run(path, viewers, warmup, window));
        println!(
            "{:<9} {:>10} {:>11.0} {:>15.0} {:>7} {:>10.1} {:>10.1} {:>17.2}",
            path.name(),
            o.ice_path,
            o.in_call_ms,
            o.first_frame_ms,
            o.frames,
            o.glass_p50,
            o.glass_p99,
            o.sfu_cpu * 100.0 / o.forwarded_streams as f64
        );
        assert!(o.frames > 0, "{}: no frame decoded", path.name());
        outcomes.push((path, o));
    }
    drop(turn);
    let udp = outcomes
        .iter()
        .find(|(p, _)| *p == Path::Udp)
        .map(|(_, o)| o);
    for (path, o) in outcomes.iter().filter(|(p, _)| *p != Path::Udp) {
        if let Some(u) = udp {
            println!(
                "{} / udp: glass-to-glass p50 {:.2}x, SFU CPU {:.2}x",
                path.name(),
                o.glass_p50 / u.glass_p50,
                ratio(o.sfu_cpu, u.sfu_cpu, "the udp run's SFU CPU")
            );
        }
    }
}
