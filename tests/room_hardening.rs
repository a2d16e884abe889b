//! The room service against hostile and careless clients, on loopback:
//! idle and slow connections, clients that never read, vanish or never
//! join, oversized admin bodies, peers the SFU drops, the rejoin block
//! after RemoveUser, the Origin check, files outside the web root, and
//! what `/health` shows. Each test runs an in-process room with short
//! limits and asserts what a client or an operator would see.

mod common;

use callbox::client::{Client, RoomId};
use callbox::protocol::{Reason, ServerMessage};
use callbox::room::config::{Limits, RoomConfig};
use callbox::room::local::{http_request, loopback_config, LocalRoom, DEMO_SDK_APP_ID};
use common::{expect_event, joined, sig};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

const ROOM: u32 = 7700;

async fn room_with(limits: Limits, tweak: impl FnOnce(&mut RoomConfig)) -> LocalRoom {
    let _ = env_logger::builder().is_test(true).try_init();
    let mut config = loopback_config(None, false);
    config.limits = limits;
    tweak(&mut config);
    LocalRoom::start(config).await.expect("room starts")
}

/// A TCP connection to `to` from the loopback address `from`.
async fn tcp_from(from: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::from((from, 0)))?;
    s.connect(to).await
}

/// Whether the server closed `s` (EOF or reset) by `deadline`.
async fn closed_by(s: &mut TcpStream, deadline: tokio::time::Instant) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

async fn health_from(from: [u8; 4], room: &LocalRoom, key: Option<&str>) -> (Duration, String) {
    let t = Instant::now();
    let mut s = tcp_from(from, room.http).await.expect("connect");
    let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    let req = format!("GET /health HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut body = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut body)).await;
    (t.elapsed(), body)
}

/// Idle sockets fill one address's cap, and more are closed at once;
/// `/health` from another address still answers within a second; the idle
/// timeout closes idle sockets and the header timeout slowloris senders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_connections_are_capped_and_timed_out() {
    let limits = Limits {
        max_connections_per_ip: 40,
        header_timeout_s: 2,
        idle_timeout_s: 3,
        ping_interval_s: 1,
        ..Limits::default()
    };
    let room = room_with(limits, |_| {}).await;
    let opened = tokio::time::Instant::now();
    let mut idle = Vec::new();
    for _ in 0..60 {
        idle.push(tcp_from([127, 0, 0, 1], room.http).await.expect("connect"));
    }
    // "At once" is well before the 3 s idle timeout. Count over all 60:
    // each connection is admitted in its own task, so which 20 are refused
    // depends on scheduling, not on the order of connect.
    let mut refused = 0;
    for s in idle.iter_mut() {
        refused += closed_by(s, opened + Duration::from_secs(2)).await as usize;
    }
    let (took, body) = health_from([127, 0, 0, 2], &room, None).await;
    println!("60 idle sockets: 20 over the per-address cap closed at once ({refused}); /health from another address in {took:?}");
    assert_eq!(refused, 20, "the 20 over the cap are closed at accept");
    assert!(
        body.starts_with("HTTP/1.1 200") && took < Duration::from_secs(1),
        "{took:?} {body}"
    );
    // A slowloris sender: one header byte every 300 ms.
    let mut slow = tcp_from([127, 0, 0, 3], room.http).await.expect("connect");
    let t = Instant::now();
    let drip = async {
        for b in b"GET / HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
            if slow.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(4), drip).await;
    let slow_closed = closed_by(
        &mut slow,
        tokio::time::Instant::now() + Duration::from_millis(500),
    )
    .await;
    // The idle timeout (3 s) has passed for every idle socket.
    tokio::time::sleep_until(opened + Duration::from_secs(4)).await;
    let mut kept = 0;
    let checked_by = tokio::time::Instant::now() + Duration::from_secs(1);
    for s in idle.iter_mut() {
        kept += !closed_by(s, checked_by).await as usize;
    }
    println!(
        "after {:?}: slowloris closed {slow_closed}, idle sockets still open {kept}",
        t.elapsed()
    );
    assert!(
        slow_closed,
        "a slowloris sender is closed by the header timeout"
    );
    assert_eq!(kept, 0, "idle sockets are closed by the idle timeout");
    room.stop().await;
}

/// Resident memory of this process, in KiB.
fn rss_kib() -> u64 {
    common::proc_kib(None, "VmRSS:").unwrap_or(0)
}

/// A WebSocket that sends requests but never reads its replies is cut off
/// once its queue fills; the server's memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_disconnected() {
    let limits = Limits {
        send_queue: 64,
        ..Limits::default()
    };
    let room = room_with(limits, |_| {}).await;
    let before = rss_kib();
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .set_recv_buffer_size(4096)
        .expect("small receive buffer");
    let tcp = socket.connect(room.http).await.expect("connect");
    let (ws, _) = tokio_tungstenite::client_async(room.ws_url(), tcp)
        .await
        .expect("upgrade");
    let (mut tx, _rx_never_read) = ws.split();
    // Each is refused with a reply; 4 KiB of unknown type each time.
    let junk = format!("{{\"type\":\"{}\",\"id\":1}}", "x".repeat(4096));
    let t = Instant::now();
    let mut sent = 0;
    while t.elapsed() < Duration::from_secs(20) {
        if tx.send(Message::Text(junk.clone().into())).await.is_err() {
            break;
        }
        sent += 1;
    }
    let grew_mib = rss_kib().saturating_sub(before) as f64 / 1024.0;
    println!(
        "cut off after {sent} requests in {:?}; RSS grew {grew_mib:.1} MiB",
        t.elapsed()
    );
    assert!(t.elapsed() < Duration::from_secs(20), "never cut off");
    assert!(grew_mib < 20.0, "RSS grew {grew_mib:.1} MiB");
    room.stop().await;
}

/// A joined client that stops answering (no frames, no pongs) is dropped
/// and the room sees it leave within the peer timeout; a connection that
/// never joins is closed after the join timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_and_silent_clients_are_dropped() {
    let limits = Limits {
        ping_interval_s: 1,
        peer_timeout_s: 3,
        join_timeout_s: 1,
        ..Limits::default()
    };
    let room = room_with(limits, |_| {}).await;
    let mut alice = joined(&room, "alice", ROOM).await;
    let (mut ghost, _) = tokio_tungstenite::connect_async(room.ws_url())
        .await
        .expect("ws");
    let join = json!({"type": "join", "id": 1, "version": 1, "sdkAppId": DEMO_SDK_APP_ID,
        "userId": "ghost", "userSig": sig("ghost"), "roomId": ROOM});
    ghost
        .send(Message::Text(join.to_string().into()))
        .await
        .expect("send join");
    expect_event(
        &mut alice,
        5,
        "peer-join ghost",
        |e| matches!(e, ServerMessage::PeerJoin { user_id } if user_id == "ghost"),
    )
    .await;
    // From here the ghost neither reads nor answers pings.
    let t = Instant::now();
    expect_event(
        &mut alice,
        8,
        "peer-leave ghost",
        |e| matches!(e, ServerMessage::PeerLeave { user_id } if user_id == "ghost"),
    )
    .await;
    let left = t.elapsed();
    let (mut lurker, _) = tokio_tungstenite::connect_async(room.ws_url())
        .await
        .expect("ws");
    let t = Instant::now();
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(4), lurker.next()).await {
            Ok(Some(Ok(Message::Close(_))) | Some(Err(_)) | None) => break true,
            Ok(Some(Ok(_))) => continue,
            Err(_) => break false,
        }
    };
    println!(
        "vanished client: peer-leave after {left:?}; never-joined connection closed {closed} after {:?}",
        t.elapsed()
    );
    assert!(left <= Duration::from_secs(5), "peer-leave after {left:?}");
    assert!(closed && t.elapsed() < Duration::from_secs(3));
    room.stop().await;
}

/// A wrong admin key is refused from the headers alone: the 2 MB body is
/// never sent, yet the 401 comes. With the right key, a body over the cap
/// is refused, and nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_checks_the_key_before_reading_the_body() {
    let room = room_with(Limits::default(), |_| {}).await;
    let head = |key: &str| {
        format!(
            "POST /api/admin/RemoveUser HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
             Content-Type: application/json\r\nContent-Length: 2097152\r\n\r\n"
        )
    };
    let mut s = TcpStream::connect(room.http).await.expect("connect");
    s.write_all(head("wrong-key").as_bytes())
        .await
        .expect("write");
    let mut reply = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut reply))
        .await
        .expect("a reply without the body")
        .expect("read");
    let text = String::from_utf8_lossy(&reply[..n]);
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    let mut s = TcpStream::connect(room.http).await.expect("connect");
    s.write_all(head(&room.admin_key).as_bytes())
        .await
        .expect("write");
    let _ = s.write_all(&vec![b' '; 2 * 1024 * 1024]).await;
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut reply))
        .await
        .expect("a reply")
        .expect("read");
    let text = String::from_utf8_lossy(&reply[..n]);
    println!(
        "wrong key: 401 before the body; right key, 2 MB: {}",
        text.lines().next().unwrap_or("")
    );
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    room.stop().await;
}

/// A publisher whose connection dies without a word (no unpublish): the
/// SFU drops its peer, the room removes its stream, a subscriber is told
/// and a newcomer does not see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_the_sfu_drops_leaves_the_room_books() {
    let room = room_with(Limits::default(), |_| {}).await;
    let mut publisher = joined(&room, "pub", ROOM).await;
    publisher.publish(true, false).await.expect("publish");
    let mut watcher = joined(&room, "watcher", ROOM).await;
    publisher.close_media().await;
    let t = Instant::now();
    expect_event(
        &mut watcher,
        10,
        "stream-removed",
        |e| matches!(e, ServerMessage::StreamRemoved { user_id, .. } if user_id == "pub"),
    )
    .await;
    let mut late = Client::connect(room.client_config("late"))
        .await
        .expect("connect");
    let streams = late.join(RoomId::Num(ROOM)).await.expect("join");
    println!(
        "stream-removed {:?} after the publisher's connection died",
        t.elapsed()
    );
    assert!(streams.is_empty(), "a dead stream is listed: {streams:?}");
    room.stop().await;
}

/// RemoveUser keeps that userId out of the room for the configured time;
/// then it may come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_user_cannot_walk_straight_back() {
    let limits = Limits {
        removed_rejoin_block_s: 2,
        ..Limits::default()
    };
    let room = room_with(limits, |_| {}).await;
    let _mallory = joined(&room, "mallory", ROOM).await;
    let body = json!({"SdkAppId": DEMO_SDK_APP_ID, "RoomId": ROOM, "UserIds": ["mallory"]});
    let (status, _) = room.admin("RemoveUser", &body, None).await.expect("admin");
    assert_eq!(status, 200);
    let t = Instant::now();
    let mut again = Client::connect(room.client_config("mallory"))
        .await
        .expect("connect");
    match again.join(RoomId::Num(ROOM)).await {
        Err(callbox::client::ClientError::Refused { code, reason, .. }) => {
            assert_eq!((code, reason), (0x4004, Reason::RecentlyRemoved))
        }
        other => panic!("rejoin during the block: {other:?}"),
    }
    tokio::time::sleep(Duration::from_secs(2).saturating_sub(t.elapsed())).await;
    again
        .join(RoomId::Num(ROOM))
        .await
        .expect("rejoin after the block");
    // A userSig valid for ten years is over the lifetime cap (366 days).
    let mut config = room.client_config("eternal");
    config.user_sig = callbox::usersig::generate(
        DEMO_SDK_APP_ID,
        callbox::room::local::DEMO_SECRET_KEY,
        "eternal",
        10 * 365 * 86_400,
        callbox::usersig::unix_now(),
        None,
    );
    let mut eternal = Client::connect(config).await.expect("connect");
    match eternal.join(RoomId::Num(ROOM)).await {
        Err(callbox::client::ClientError::Refused { reason, .. }) => {
            assert_eq!(reason, Reason::UsersigTooLong)
        }
        other => panic!("a ten-year userSig: {other:?}"),
    }
    room.stop().await;
}

/// Pages of other origins cannot open the signaling socket; files outside
/// the web root are not served through a symlink; `/health` shows counts
/// only with the admin key; the dev endpoint signs at most a day.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_web_root_health_and_dev_endpoint() {
    let dir = std::env::temp_dir().join(format!("callbox-webroot-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("web root");
    std::fs::write(dir.join("page.html"), "<p>hi</p>").expect("page");
    std::os::unix::fs::symlink("/etc/passwd", dir.join("passwd.html")).expect("symlink");
    let mut config = loopback_config(Some(dir.clone()), true);
    config.server.allowed_origins = vec!["https://app.example".into()];
    let room = LocalRoom::start(config).await.expect("room");
    let upgrade = |origin: &str| {
        format!(
            "GET /ws HTTP/1.1\r\nHost: {}\r\nOrigin: {origin}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            room.http
        )
    };
    let status = |req: String| async move {
        let mut s = TcpStream::connect(room.http).await.expect("connect");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut buf = vec![0u8; 256];
        let n = s.read(&mut buf).await.unwrap_or(0);
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .unwrap_or("")
            .to_owned()
    };
    assert!(status(upgrade("https://evil.example"))
        .await
        .contains("403"));
    assert!(status(upgrade("https://app.example")).await.contains("101"));
    assert!(status(upgrade(&format!("http://{}", room.http)))
        .await
        .contains("101"));
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(status(get("/page.html")).await.contains("200"));
    assert!(status(get("/passwd.html")).await.contains("404"));
    let (_, public) = health_from([127, 0, 0, 1], &room, None).await;
    let (_, admin) = health_from([127, 0, 0, 1], &room, Some(&room.admin_key)).await;
    assert!(
        public.contains("\"status\":\"ok\"") && !public.contains("members"),
        "{public}"
    );
    assert!(admin.contains("\"members\":0"), "{admin}");
    let ask = |expire: u64| {
        json!({"sdkAppId": DEMO_SDK_APP_ID, "userId": "dev", "expire": expire}).to_string()
    };
    let (ok, _) = http_request(room.http, "POST", "/api/dev/usersig", None, &ask(3600))
        .await
        .expect("dev endpoint");
    let (never, _) = http_request(
        room.http,
        "POST",
        "/api/dev/usersig",
        None,
        &ask(86_400 * 365),
    )
    .await
    .expect("dev endpoint");
    assert_eq!((ok, never), (200, 400));
    // A datagram over the media size limit is counted, not truncated and fed on.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    udp.send_to(&[0x80; 3000], room.media).expect("send");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, stats) = http_request(room.http, "GET", "/api/stats", Some(&room.admin_key), "")
        .await
        .expect("stats");
    assert_eq!(stats["datagrams_oversized"], 1, "{stats}");
    room.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// privateMapKeys made by Tencent's own library (npm `tls-sig-api-v2`, in
/// tests/browser/node_modules): `(userId, roomId | strRoomId, privileges)`.
fn tencent_private_map_keys(keys: &[(&str, RoomId, u32)]) -> Vec<String> {
    let calls: Vec<String> = keys
        .iter()
        .map(|(user, room, bits)| match room {
            RoomId::Num(n) => format!("api.genPrivateMapKey('{user}', 300, {n}, {bits})"),
            RoomId::Str(s) => {
                format!("api.genPrivateMapKeyWithStringRoomID('{user}', 300, '{s}', {bits})")
            }
        })
        .collect();
    let script = format!(
        "const {{ Api }} = require('tls-sig-api-v2'); const api = new Api({DEMO_SDK_APP_ID}, '{}');\n\
         console.log(JSON.stringify([{}]));",
        callbox::room::local::DEMO_SECRET_KEY,
        calls.join(", ")
    );
    let out = std::process::Command::new("node")
        .arg("-e")
        .arg(&script)
        .env(
            "NODE_PATH",
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/node_modules"),
        )
        .output()
        .expect("node runs (scripts/deps.sh installs it and tls-sig-api-v2)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("keys as JSON")
}

/// Join with a key: the client and the streams already there, or the reason it was refused.
async fn join_with(
    room: &LocalRoom,
    user: &str,
    at: RoomId,
    key: Option<String>,
) -> Result<(Client, Vec<callbox::protocol::StreamInfo>), Reason> {
    let mut c = Client::connect(room.client_config(user))
        .await
        .expect("connect");
    match c.join_with_key(at, key).await {
        Ok(streams) => Ok((c, streams)),
        Err(callbox::client::ClientError::Refused { reason, .. }) => Err(reason),
        Err(e) => panic!("{e}"),
    }
}

/// With `private_map_key = "required"`, a key from Tencent's library
/// admits exactly its user to exactly its room (numeric or string) with
/// exactly its privileges; a missing, forged, expired or other-room key is
/// refused with its reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_map_keys_from_tencents_library_open_exactly_their_room() {
    use callbox::private_map_key::privilege::*;
    use callbox::room::config::PrivateMapKeyPolicy;
    let room = room_with(Limits::default(), |c| {
        c.apps[0].private_map_key = PrivateMapKeyPolicy::Required;
    })
    .await;
    let lobby = RoomId::Str("pmk-lobby".into());
    let keys = tencent_private_map_keys(&[
        ("host", RoomId::Num(7701), ALL),
        ("listener", RoomId::Num(7701), ENTER | RECV_AUDIO),
        ("guest", lobby.clone(), CREATE | ENTER | SEND_AUDIO),
    ]);
    let [host, listener, guest] = [keys[0].clone(), keys[1].clone(), keys[2].clone()];
    // No key, another room's key, another user's key.
    assert_eq!(
        join_with(&room, "host", RoomId::Num(7701), None)
            .await
            .err(),
        Some(Reason::PrivateMapKeyRequired)
    );
    assert_eq!(
        join_with(&room, "host", RoomId::Num(7702), Some(host.clone()))
            .await
            .err(),
        Some(Reason::PrivateMapKeyInvalid)
    );
    assert_eq!(
        join_with(&room, "intruder", RoomId::Num(7701), Some(host.clone()))
            .await
            .err(),
        Some(Reason::PrivateMapKeyInvalid)
    );
    // Forged (another secret) and expired keys.
    let now = callbox::usersig::unix_now();
    let grant = |expires_at| callbox::private_map_key::Grant {
        user_id: "host".into(),
        sdk_app_id: DEMO_SDK_APP_ID,
        room: RoomId::Num(7701),
        expires_at,
        privileges: ALL,
    };
    let forged = callbox::private_map_key::generate(
        "not-the-app-secret-key-at-all-0000",
        &grant(now + 300),
        300,
        now,
    );
    let expired = callbox::private_map_key::generate(
        callbox::room::local::DEMO_SECRET_KEY,
        &grant(now - 10),
        300,
        now - 310,
    );
    for bad in [forged, expired] {
        assert_eq!(
            join_with(&room, "host", RoomId::Num(7701), Some(bad))
                .await
                .err(),
            Some(Reason::PrivateMapKeyInvalid)
        );
    }
    // Without the create bit, the listener cannot open the room; the host can.
    assert_eq!(
        join_with(&room, "listener", RoomId::Num(7701), Some(listener.clone()))
            .await
            .err(),
        Some(Reason::NotPermitted)
    );
    let (mut h, _) = join_with(&room, "host", RoomId::Num(7701), Some(host))
        .await
        .expect("host joins");
    h.publish(true, true)
        .await
        .expect("the host may send audio and video");
    let (mut l, streams) = join_with(&room, "listener", RoomId::Num(7701), Some(listener))
        .await
        .expect("listener joins");
    assert!(matches!(
        l.publish(true, false).await.err(),
        Some(callbox::client::ClientError::Refused {
            reason: Reason::NotPermitted,
            ..
        })
    ));
    let stream = streams.first().cloned().expect("the host's stream");
    let both = l.subscribe(&stream).await.err();
    assert!(
        matches!(
            both,
            Some(callbox::client::ClientError::Refused {
                reason: Reason::NotPermitted,
                ..
            })
        ),
        "{both:?}"
    );
    let audio_only = callbox::client::Receive {
        audio: true,
        video: false,
    };
    l.subscribe_to(&stream, audio_only)
        .await
        .expect("receiving audio is granted");
    // The string room: its own key opens it, and only for what it grants.
    let (mut g, _) = join_with(&room, "guest", lobby, Some(guest))
        .await
        .expect("guest joins the string room");
    g.publish(true, false).await.expect("audio granted");
    println!("privateMapKeys from tls-sig-api-v2: numeric and string rooms admitted as granted; missing, other-room, other-user, forged and expired refused");
    room.stop().await;
}
