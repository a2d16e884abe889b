//! Calls through networks that get in the way. Each test runs in a network
//! namespace of its own with only loopback (the test re-executes itself
//! under `unshare --net`), so coturn's fixed ports and the firewall rules
//! are private to it.
//!
//! - TURN, against Debian's coturn in its `use-auth-secret` mode: the room
//!   hands each client TURN credentials in its join reply (the TURN REST
//!   scheme, HMAC-SHA1 with the secret it shares with coturn), or the
//!   device has its own; with `ice_transport_policy = "relay"` its media
//!   goes through the relay. Wrong credentials fail the call at once.
//! - ICE-TCP: with all UDP to and from the device's address dropped
//!   (iptables), the device reaches the room's passive TCP candidate.
//!
//! In each, a subscriber decodes the device's pattern and its tone, and the
//! device's status names the path.

mod common;

use callbox::client::ClientError;
use callbox::device::audio::{OpusDecoder, FRAME_SAMPLES, SAMPLE_RATE};
use callbox::device::daemon::{CallLink, Device, DeviceError};
use callbox::device::h264::H264Decoder;
use callbox::device::{pattern, tone};
use callbox::room::local::{loopback_config, DeviceToml, LocalRoom};
use callbox::room::turn::TurnConfig;
use common::*;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ROOM: u32 = 3600;
const SECRET: &str = "turn-shared-secret-for-tests";
const TURN_PORT: u16 = 3478;

/// Run `test` in a fresh loopback-only network namespace: re-execute this
/// test binary there for just that test.
fn in_own_netns(test: &str) -> bool {
    if std::env::var_os("CALLBOX_NET_NETNS").is_some() {
        return true;
    }
    let me = std::env::current_exe().expect("test binary");
    let status = in_loopback_netns("exec \"$0\" \"$@\"")
        .arg(me)
        .args([test, "--exact", "--nocapture"])
        .env("CALLBOX_NET_NETNS", "1")
        .status()
        .expect("unshare");
    assert!(
        status.success(),
        "{test} in its network namespace: {status}"
    );
    false
}

/// coturn on 127.0.0.1, long-term credentials from the shared secret,
/// relaying to loopback peers (the room is one), no TLS.
fn coturn() -> Option<Child> {
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
            "--min-port=49152",
            "--max-port=49252",
            "--log-file=stdout",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match child {
        Ok(c) => Some(c),
        Err(e) => {
            println!(
                "turn: SKIPPED: coturn's turnserver cannot run ({e}); scripts/deps.sh installs it"
            );
            None
        }
    }
}

async fn room_with_turn(secret: &str) -> LocalRoom {
    let _ = env_logger::builder().is_test(true).try_init();
    let mut config = loopback_config(None, false);
    config.turn = Some(
        toml::from_str::<TurnConfig>(&format!(
            "urls = [\"turn:127.0.0.1:{TURN_PORT}?transport=udp\"]\nshared_secret = \"{secret}\""
        ))
        .expect("turn config"),
    );
    LocalRoom::start(config).await.expect("room starts")
}

#[test]
fn a_device_relays_its_call_through_turn_with_the_rooms_credentials() {
    if !in_own_netns("a_device_relays_its_call_through_turn_with_the_rooms_credentials") {
        return;
    }
    let Some(mut turn) = coturn() else { return };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let room = room_with_turn(SECRET).await;
        relayed_call(room, "the room's", |d| d).await;
    });
    let _ = turn.kill();
    let _ = turn.wait();
}

/// A room without `[turn]`; the device has TURN credentials of its own.
#[test]
fn a_device_relays_its_call_through_turn_with_credentials_of_its_own() {
    if !in_own_netns("a_device_relays_its_call_through_turn_with_credentials_of_its_own") {
        return;
    }
    let Some(mut turn) = coturn() else { return };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let _ = env_logger::builder().is_test(true).try_init();
        let room = LocalRoom::start(loopback_config(None, false))
            .await
            .expect("room");
        let now_s = pattern::now_us() / 1_000_000;
        let url = format!("turn:127.0.0.1:{TURN_PORT}?transport=udp");
        let own =
            callbox::room::turn::ice_server(&[url], SECRET.as_bytes(), "device-t", now_s, 600);
        let entry = format!(
            "[{{ urls = {:?}, username = {:?}, credential = {:?} }}]",
            own.urls,
            own.username.unwrap_or_default(),
            own.credential.unwrap_or_default()
        );
        let own_server = move |d: DeviceToml| {
            d.set_toml("network", "ice_servers", &entry)
                .expect("ice_servers entry")
        };
        relayed_call(room, "its own", own_server).await;
    });
    let _ = turn.kill();
    let _ = turn.wait();
}

/// A relay-only device with `tweak` in `room`: in call through TURN, and a
/// subscriber decodes its pattern and its tone.
async fn relayed_call(room: LocalRoom, whose: &str, tweak: impl FnOnce(DeviceToml) -> DeviceToml) {
    let relay = |d: DeviceToml| tweak(d.set("network", "ice_transport_policy", "relay"));
    let what = format!("with {whose} credentials, through coturn");
    call_through(room, &what, "relay/udp", relay).await;
}

/// A device with `tweak` in `room`: in call with its media on `path`, and
/// a subscriber decodes its pattern and its tone.
async fn call_through(
    room: LocalRoom,
    what: &str,
    path_wanted: &str,
    tweak: impl FnOnce(DeviceToml) -> DeviceToml,
) {
    let config = device_config(&room, ROOM, "device-t", tweak);
    let (joined, in_call) = tokio::sync::oneshot::channel();
    let link = CallLink {
        joined: Some(joined),
        ..Default::default()
    };
    let t = Instant::now();
    let (stop, call, stats) = start_linked_device(config, link);
    tokio::time::timeout(Duration::from_secs(15), in_call)
        .await
        .expect("in call within 15 s")
        .expect("joined");
    let joined_after = t.elapsed();
    let path = stats.snapshot().ice_path;
    assert_eq!(
        path.as_deref(),
        Some(path_wanted),
        "the device's media path"
    );

    let (mut viewer, stream) =
        joined_with_stream(room.client_config("viewer"), ROOM, "device-t", 15).await;
    let mut remote = viewer.subscribe(&stream).await.expect("subscribe");
    let got = receive(
        &mut remote.packets,
        Duration::from_secs(2),
        Duration::from_secs(3),
    )
    .await;
    let mut dec = H264Decoder::new().expect("decoder");
    let stamps = got
        .video_frames
        .iter()
        .filter_map(|au| dec.decode(au, pattern::read).ok().flatten().flatten())
        .count();
    let mut opus = OpusDecoder::new().expect("opus");
    let mut pcm = Vec::new();
    let mut buf = vec![0i16; FRAME_SAMPLES * 6];
    for p in &got.audio_payloads {
        if let Ok(n) = opus.decode(p, &mut buf) {
            pcm.extend_from_slice(&buf[..n]);
        }
    }
    let hz = tone::frequency(&pcm[pcm.len().min(SAMPLE_RATE as usize / 2)..], SAMPLE_RATE);
    println!(
        "network: {what}: device in call {:.2} s after start, path {}; subscriber: {stamps} pattern frames and the tone at {:.1} Hz in 3 s",
        joined_after.as_secs_f64(),
        path.as_deref().unwrap_or("?"),
        hz.unwrap_or(0.0)
    );
    assert!(stamps >= 30, "{stamps} pattern frames in 3 s");
    assert!(hz.is_some_and(|f| (f - 440.0).abs() <= 5.0), "{hz:?}");
    let _ = stop.send(());
    call.await.expect("device task");
    room.stop().await;
}

#[test]
fn wrong_turn_credentials_fail_the_call_at_once_naming_the_server() {
    if !in_own_netns("wrong_turn_credentials_fail_the_call_at_once_naming_the_server") {
        return;
    }
    let Some(mut turn) = coturn() else { return };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        // The room signs with a secret coturn does not share.
        let room = room_with_turn("not-the-secret-coturn-knows").await;
        let relay = |d: DeviceToml| d.set("network", "ice_transport_policy", "relay");
        let mut device = Device::open(
            device_config(&room, ROOM, "device-w", relay),
            Instant::now(),
        )
        .expect("device opens");
        let t = Instant::now();
        let result = tokio::time::timeout(
            Duration::from_secs(20),
            device.call(std::future::pending(), Default::default()),
        )
        .await
        .expect("the call ends, it does not hang");
        let took = t.elapsed();
        let e = result.expect_err("no relay, no call");
        println!(
            "turn: wrong credentials: the call failed after {took:.1?}: {e} (code {:#06x})",
            e.code()
        );
        assert!(
            matches!(
                &e,
                DeviceError::Client(ClientError::NoRelay(servers))
                    if servers.contains(&format!("127.0.0.1:{TURN_PORT}"))
            ),
            "{e:?}"
        );
        assert!(e.retryable(), "another try may meet a fixed server");
        room.stop().await;
    });
    let _ = turn.kill();
    let _ = turn.wait();
}

/// The device's own address in the test's namespace (on a veth end): the
/// kernel sends to a local address from that address, which 127.0.0.2
/// would not do (loopback sends from 127.0.0.1).
const DEVICE_IP: &str = "10.9.0.2";

/// All UDP to and from the device's address dropped: the device reaches
/// the room over ICE-TCP (its active candidate, the room's passive one).
#[test]
fn a_device_without_udp_reaches_the_room_over_ice_tcp() {
    if !in_own_netns("a_device_without_udp_reaches_the_room_over_ice_tcp") {
        return;
    }
    let setup = [
        "ip link add cbx0 type veth peer name cbx1".to_owned(),
        format!("ip addr add {DEVICE_IP}/24 dev cbx0"),
        "ip link set cbx0 up".to_owned(),
        "ip link set cbx1 up".to_owned(),
        format!("iptables -A OUTPUT -p udp -s {DEVICE_IP} -j DROP"),
        format!("iptables -A INPUT -p udp -d {DEVICE_IP} -j DROP"),
    ];
    for step in &setup {
        let mut words = step.split(' ');
        let program = words.next().unwrap_or_default();
        if !Command::new(program)
            .args(words)
            .status()
            .is_ok_and(|s| s.success())
        {
            println!("network: SKIPPED: `{step}` failed here (scripts/deps.sh installs iptables)");
            return;
        }
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let _ = env_logger::builder().is_test(true).try_init();
        let mut config = loopback_config(None, false);
        config.media.tcp_listen = format!("{DEVICE_IP}:0").parse().ok();
        let room = LocalRoom::start(config).await.expect("room");
        let no_udp = |d: DeviceToml| d.set("network", "bind", DEVICE_IP);
        call_through(room, "UDP blocked, ICE-TCP", "host/tcp", no_udp).await;
    });
}

/// TRTC's network-quality as the device reports it (every 2 s, from the
/// room), while 20 % of UDP packets are dropped in the test's namespace
/// (iptables `statistic`: this kernel has no netem) and after: the uplink
/// grade drops to bad or worse, then recovers.
#[test]
fn network_quality_drops_with_loss_and_recovers() {
    if !in_own_netns("network_quality_drops_with_loss_and_recovers") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let _ = env_logger::builder().is_test(true).try_init();
        let room = LocalRoom::start(loopback_config(None, false))
            .await
            .expect("room");
        let config = device_config(&room, ROOM, "device-q", |d| d);
        let (stop, call, stats) = start_linked_device(config, CallLink::default());
        let uplink = || {
            stats
                .snapshot()
                .network_quality
                .map_or(0, |q| q.uplink.level())
        };
        let wait = |what: &'static str, ok: fn(u8) -> bool| {
            let uplink = &uplink;
            async move {
                let t = Instant::now();
                loop {
                    let q = uplink();
                    if ok(q) {
                        return (q, t.elapsed());
                    }
                    assert!(
                        t.elapsed() < Duration::from_secs(15),
                        "{what}: uplink quality {q}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let (clean, _) = wait("clean network", |q| (1..=2).contains(&q)).await;
        let lossy = |op: &str| {
            Command::new("iptables")
                .args([op, "INPUT", "-p", "udp", "-m", "statistic"])
                .args(["--mode", "random", "--probability", "0.2", "-j", "DROP"])
                .status()
                .is_ok_and(|s| s.success())
        };
        assert!(lossy("-A"), "iptables statistic drops packets (scripts/deps.sh installs iptables)");
        let (bad, dropped_after) = wait("20 % loss", |q| q >= 4).await;
        let loss = stats.snapshot().network_quality.map_or(0, |q| q.uplink_loss);
        assert!(lossy("-D"), "the loss rule comes off");
        let (back, recovered_after) = wait("loss gone", |q| (1..=2).contains(&q)).await;
        println!(
            "network: uplink quality {clean} on a clean network; {bad} with 20 % UDP loss ({loss} % measured), {:.1} s after it began; {back} again {:.1} s after it ended",
            dropped_after.as_secs_f64(),
            recovered_after.as_secs_f64()
        );
        assert!((10..=30).contains(&loss), "uplink loss {loss} % under a 20 % drop");
        let _ = stop.send(());
        call.await.expect("device task");
        room.stop().await;
    });
}
