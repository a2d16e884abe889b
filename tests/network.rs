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
use callbox::device::daemon::{CallLink, Device, DeviceError};
use callbox::device::pattern;
use callbox::room::local::{loopback_config, DeviceToml, LocalRoom};
use callbox::room::turn::TurnConfig;
use common::*;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ROOM: u32 = 3600;
const SECRET: &str = "turn-shared-secret-for-tests";
const TURN_PORT: u16 = 3478;
const TURN_TLS_PORT: u16 = 5349;

/// coturn on 127.0.0.1, long-term credentials from the shared secret,
/// relaying to loopback peers (the room is one), no TLS.
fn coturn() -> Option<KillOnDrop> {
    coturn_on("127.0.0.1", None)
}

/// coturn listening (UDP and TCP, and TLS on 5349 with `tls`: certificate
/// and key files) and relaying on `ip`.
fn coturn_on(ip: &str, tls: Option<(&Path, &Path)>) -> Option<KillOnDrop> {
    let mut args = vec![
        "-n".to_owned(),
        format!("--listening-ip={ip}"),
        format!("--relay-ip={ip}"),
        format!("--listening-port={TURN_PORT}"),
        "--use-auth-secret".to_owned(),
        format!("--static-auth-secret={SECRET}"),
        "--realm=callbox.test".to_owned(),
        "--allow-loopback-peers".to_owned(),
        "--no-dtls".to_owned(),
        "--no-cli".to_owned(),
        "--min-port=49152".to_owned(),
        "--max-port=49252".to_owned(),
        "--log-file=stdout".to_owned(),
    ];
    match tls {
        Some((cert, key)) => args.extend([
            format!("--tls-listening-port={TURN_TLS_PORT}"),
            format!("--cert={}", cert.display()),
            format!("--pkey={}", key.display()),
        ]),
        None => args.push("--no-tls".to_owned()),
    }
    let child = Command::new("turnserver")
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => {
            println!(
                "turn: SKIPPED: coturn's turnserver cannot run ({e}); scripts/deps.sh installs it"
            );
            return None;
        }
    };
    // Its listeners come up a moment after it starts; TLS last.
    let port = if tls.is_some() {
        TURN_TLS_PORT
    } else {
        TURN_PORT
    };
    let listening = (0..200).any(|_| {
        let up = std::net::TcpStream::connect((ip, port)).is_ok();
        if !up {
            std::thread::sleep(Duration::from_millis(25));
        }
        up
    });
    let child = KillOnDrop(child);
    assert!(listening, "coturn listens on {ip}:{port} within 5 s");
    Some(child)
}

/// A device's own `[[network.ice_servers]]` for `url`: TURN REST
/// credentials for `device-t`, made with coturn's secret, valid 10 minutes.
fn own_ice_servers(url: &str) -> String {
    let now_s = pattern::now_us() / 1_000_000;
    let own = callbox::room::turn::ice_server(
        &[url.to_owned()],
        SECRET.as_bytes(),
        "device-t",
        now_s,
        600,
    );
    format!(
        "[{{ urls = {:?}, username = {:?}, credential = {:?} }}]",
        own.urls,
        own.username.unwrap_or_default(),
        own.credential.unwrap_or_default()
    )
}

/// The room's `[turn]`: `urls`, and the secret it shares with coturn.
fn turn_config(urls: &[String], secret: &str) -> TurnConfig {
    let text = format!("urls = {urls:?}\nshared_secret = \"{secret}\"");
    toml::from_str(&text).expect("turn config")
}

async fn room_with_turn(secret: &str) -> LocalRoom {
    let _ = env_logger::builder().is_test(true).try_init();
    let mut config = loopback_config(None, false);
    config.turn = Some(turn_config(
        &[format!("turn:127.0.0.1:{TURN_PORT}?transport=udp")],
        secret,
    ));
    LocalRoom::start(config).await.expect("room starts")
}

#[test]
fn a_device_relays_its_call_through_turn_with_the_rooms_credentials() {
    if !in_own_netns("a_device_relays_its_call_through_turn_with_the_rooms_credentials") {
        return;
    }
    let Some(_turn) = coturn() else { return };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let room = room_with_turn(SECRET).await;
        relayed_call(room, "the room's", |d| d).await;
    });
}

/// A room without `[turn]`; the device has TURN credentials of its own.
#[test]
fn a_device_relays_its_call_through_turn_with_credentials_of_its_own() {
    if !in_own_netns("a_device_relays_its_call_through_turn_with_credentials_of_its_own") {
        return;
    }
    let Some(_turn) = coturn() else { return };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let _ = env_logger::builder().is_test(true).try_init();
        let room = LocalRoom::start(loopback_config(None, false))
            .await
            .expect("room");
        let entry = own_ice_servers(&format!("turn:127.0.0.1:{TURN_PORT}?transport=udp"));
        let own_server = move |d: DeviceToml| {
            d.set_toml("network", "ice_servers", &entry)
                .expect("ice_servers entry")
        };
        relayed_call(room, "its own", own_server).await;
    });
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
    call_through_from(None, room, what, path_wanted, tweak).await
}

/// [`call_through`], with the device in namespace `place` (the test's own
/// when `None`).
async fn call_through_from(
    place: Option<&Netns>,
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
    let (stop, call, stats) = match place {
        None => {
            let (stop, call, stats) = start_linked_device(config, link);
            let call = tokio::spawn(async move {
                call.await.expect("device task");
            });
            (stop, call, stats)
        }
        Some(ns) => ns.device(config, link),
    };
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
    let (stamps, hz) = pattern_frames_and_tone(&got);
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

/// A network namespace held open by a sleeping child of its own.
struct Netns {
    holder: Child,
}

impl Netns {
    fn new() -> Netns {
        let ours = std::fs::read_link("/proc/self/ns/net").expect("our namespace");
        let holder = Command::new("unshare")
            .args(["--net", "sleep", "300"])
            .spawn()
            .expect("unshare");
        let ns = Netns { holder };
        // Until unshare has moved, the child is still in ours.
        for _ in 0..200 {
            if std::fs::read_link(ns.path()).is_ok_and(|l| l != ours) {
                return ns;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("the namespace holder did not unshare");
    }

    fn pid(&self) -> u32 {
        self.holder.id()
    }

    fn path(&self) -> String {
        format!("/proc/{}/ns/net", self.pid())
    }

    /// Run a shell command in the namespace.
    fn sh(&self, cmd: &str) -> bool {
        Command::new("nsenter")
            .arg(format!("--net={}", self.path()))
            .args(["sh", "-ec", cmd])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// A device call on a thread in this namespace (a thread's sockets are
    /// made in its namespace, and the threads it starts inherit it).
    fn device(
        &self,
        config: callbox::device::config::DeviceConfig,
        link: CallLink,
    ) -> (
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
        std::sync::Arc<callbox::device::stats::MediaStats>,
    ) {
        let ns = std::fs::File::open(self.path()).expect("namespace file");
        let (stats_tx, stats_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            // SAFETY: setns on an open namespace file moves only this thread.
            let moved = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(moved, 0, "setns: {}", std::io::Error::last_os_error());
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            rt.block_on(async move {
                let mut device = Device::open(config, Instant::now()).expect("device opens");
                let _ = stats_tx.send(device.stats());
                let hangup = async {
                    let _ = stopped.await;
                };
                let r = device.call(hangup, link).await;
                assert!(r.is_ok(), "call ended with {r:?}");
            });
        });
        let stats = stats_rx.recv().expect("device opened");
        let done = tokio::task::spawn_blocking(move || thread.join().expect("device thread"));
        let done = tokio::spawn(async move { done.await.expect("device thread") });
        (stop, done, stats)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// The room's side of a NAT: the test's namespace is the internet
/// (10.77.0.1), a router namespace masquerades for a LAN namespace
/// (192.168.77.0/24) where the device lives and drops all the UDP the LAN
/// sends out. Returns the router and the LAN, or `None` where namespaces
/// or iptables cannot be set up.
const WAN_IP: &str = "10.77.0.1";
const LAN_DEVICE_IP: &str = "192.168.77.2";

fn nat_without_udp() -> Option<(Netns, Netns)> {
    let (router, lan) = (Netns::new(), Netns::new());
    let here = |cmd: &str| {
        Command::new("sh")
            .args(["-ec", cmd])
            .status()
            .is_ok_and(|s| s.success())
    };
    let ok = here(&format!(
        "ip link add wan0 type veth peer name rwan; ip link set rwan netns {r}
         ip link add lan0 type veth peer name rlan; ip link set rlan netns {r}; ip link set lan0 netns {l}
         ip addr add {WAN_IP}/24 dev wan0; ip link set wan0 up",
        r = router.pid(),
        l = lan.pid()
    )) && router.sh(
        "ip link set lo up; ip addr add 10.77.0.2/24 dev rwan; ip link set rwan up
         ip addr add 192.168.77.1/24 dev rlan; ip link set rlan up
         sysctl -qw net.ipv4.ip_forward=1
         iptables -t nat -A POSTROUTING -o rwan -j MASQUERADE
         iptables -A FORWARD -i rlan -p udp -j DROP",
    ) && lan.sh(&format!(
        "ip link set lo up; ip addr add {LAN_DEVICE_IP}/24 dev lan0; ip link set lan0 up
         ip route add default via 192.168.77.1"
    ));
    if !ok {
        println!("network: SKIPPED: the NAT namespaces cannot be set up here (scripts/deps.sh installs iptables)");
        return None;
    }
    Some((router, lan))
}

/// The room on the NAT's internet side, with ICE-TCP or without.
async fn room_on_wan(turn: bool, ice_tcp: bool) -> LocalRoom {
    let _ = env_logger::builder().is_test(true).try_init();
    let mut config = loopback_config(None, false);
    let any = |ip: &str| format!("{ip}:0").parse().ok();
    config.server.listen = any(WAN_IP).expect("address");
    config.media.udp_listen = any(WAN_IP).expect("address");
    config.media.tcp_listen = if ice_tcp { any(WAN_IP) } else { None };
    if turn {
        let urls = ["udp", "tcp"].map(|t| format!("turn:{WAN_IP}:{TURN_PORT}?transport={t}"));
        config.turn = Some(turn_config(&urls, SECRET));
    }
    LocalRoom::start(config).await.expect("room starts")
}

/// Behind a NAT that drops all outbound UDP, with TURN credentials from
/// the room's join reply: the device's media goes through coturn over TCP.
#[test]
fn behind_a_nat_without_udp_a_device_relays_through_turn_over_tcp() {
    if !in_own_netns("behind_a_nat_without_udp_a_device_relays_through_turn_over_tcp") {
        return;
    }
    let Some((_router, lan)) = nat_without_udp() else {
        return;
    };
    let Some(_turn) = coturn_on(WAN_IP, None) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let room = room_on_wan(true, false).await;
        let in_lan = |d: DeviceToml| in_the_lan(d);
        let what = "behind a NAT without UDP, the room's credentials, TURN over TCP";
        call_through_from(Some(&lan), room, what, "relay/tcp", in_lan).await;
    });
}

/// The same NAT, `turns:` (TLS) with the device's own credentials and the
/// TURN server's CA in `room.ca_file`.
#[test]
fn behind_a_nat_without_udp_a_device_relays_through_turn_over_tls() {
    if !in_own_netns("behind_a_nat_without_udp_a_device_relays_through_turn_over_tls") {
        return;
    }
    let Some((_router, lan)) = nat_without_udp() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("callbox-turns-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cert = rcgen::generate_simple_self_signed(vec![WAN_IP.to_owned()]).expect("certificate");
    let (cert_pem, key_pem) = (dir.join("turn.pem"), dir.join("turn.key"));
    std::fs::write(&cert_pem, cert.cert.pem()).expect("write certificate");
    std::fs::write(&key_pem, cert.signing_key.serialize_pem()).expect("write key");
    let Some(_turn) = coturn_on(WAN_IP, Some((&cert_pem, &key_pem))) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let room = room_on_wan(false, false).await;
        let entry = own_ice_servers(&format!("turns:{WAN_IP}:{TURN_TLS_PORT}?transport=tcp"));
        let ca = cert_pem.display().to_string();
        let own = move |d: DeviceToml| {
            in_the_lan(d)
                .set("room", "ca_file", ca)
                .set_toml("network", "ice_servers", &entry)
                .expect("ice_servers")
        };
        let what = "behind a NAT without UDP, its own credentials, TURN over TLS";
        call_through_from(Some(&lan), room, what, "relay/tls", own).await;
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same NAT and no TURN at all: the device reaches the room's passive
/// ICE-TCP candidate through the NAT.
#[test]
fn behind_a_nat_without_udp_a_device_reaches_the_room_over_ice_tcp() {
    if !in_own_netns("behind_a_nat_without_udp_a_device_reaches_the_room_over_ice_tcp") {
        return;
    }
    let Some((_router, lan)) = nat_without_udp() else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let room = room_on_wan(false, true).await;
        let in_lan = |d: DeviceToml| in_the_lan(d);
        let what = "behind a NAT without UDP, no TURN, ICE-TCP";
        call_through_from(Some(&lan), room, what, "host/tcp", in_lan).await;
    });
}

/// A device in the LAN: its address, and plain `ws://` to the room (a
/// test network, closed).
fn in_the_lan(d: DeviceToml) -> DeviceToml {
    d.set("network", "bind", LAN_DEVICE_IP)
        .set("room", "allow_insecure_ws", true)
}

#[test]
fn wrong_turn_credentials_fail_the_call_at_once_naming_the_server() {
    if !in_own_netns("wrong_turn_credentials_fail_the_call_at_once_naming_the_server") {
        return;
    }
    let Some(_turn) = coturn() else { return };
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
