//! The room service end to end on loopback: Rust clients (webrtc crate) meet
//! through the real server (str0m SFU), media content is checked on arrival,
//! and the room rules (kick, RemoveUser, DismissRoom) act on real sessions.

mod common;

use callbox::client::{Client, RoomId};
use callbox::protocol::{code, BanReason, Reason, ServerMessage};
use common::*;
use serde_json::json;
use std::time::Duration;

const ROOM: u32 = 8888;

/// Alice publishing and streaming known media, Bob subscribed and receiving it.
struct Call {
    alice: Client,
    bob: Client,
    remote: callbox::client::RemoteStream,
    sender: tokio::task::JoinHandle<()>,
}

async fn call_in_progress(room: &callbox::room::local::LocalRoom) -> Call {
    let mut alice = joined(room, "alice", ROOM).await;
    let mut bob = joined(room, "bob", ROOM).await;
    let local = alice.publish(true, true).await.expect("publish");
    let (video, audio) = (local.video().cloned(), local.audio().cloned());
    let stream = expect_stream_added(&mut bob, 5, None).await;
    let mut remote = bob.subscribe(&stream).await.expect("subscribe");
    let sender = tokio::spawn(send_known_media(video, audio, 300));
    let before = receive(
        &mut remote.packets,
        Duration::from_secs(2),
        Duration::from_secs(1),
    )
    .await;
    assert!(
        before.video_frames.len() > 10,
        "media flows: {} frames",
        before.video_frames.len()
    );
    Call {
        alice,
        bob,
        remote,
        sender,
    }
}

/// After what was in flight, nothing more arrives (though the sender still sends).
async fn assert_media_stopped(remote: &mut callbox::client::RemoteStream) {
    let _ = receive(
        &mut remote.packets,
        Duration::from_millis(300),
        Duration::from_secs(2),
    )
    .await;
    let after = receive(
        &mut remote.packets,
        Duration::from_secs(1),
        Duration::from_secs(1),
    )
    .await;
    assert!(
        after.video_frames.is_empty() && after.audio_payloads.is_empty(),
        "media still forwarded: {} frames, {} audio packets",
        after.video_frames.len(),
        after.audio_payloads.len()
    );
}

fn is_banned(reason: BanReason) -> impl Fn(&ServerMessage) -> bool {
    move |m| matches!(m, ServerMessage::ClientBanned { reason: r, .. } if *r == reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_media_arrives_intact_at_a_subscriber() {
    let room = room().await;
    let mut alice = joined(&room, "alice", ROOM).await;
    let mut bob = joined(&room, "bob", ROOM).await;
    expect_event(
        &mut alice,
        5,
        "peer-join",
        |m| matches!(m, ServerMessage::PeerJoin { user_id } if user_id == "bob"),
    )
    .await;

    let local = alice.publish(true, true).await.expect("publish");
    let (video, audio) = (local.video().cloned(), local.audio().cloned());
    let stream = expect_stream_added(&mut bob, 5, None).await;
    assert_eq!(
        (stream.user_id.as_str(), stream.audio, stream.video),
        ("alice", true, true)
    );
    let mut remote = bob.subscribe(&stream).await.expect("subscribe");

    const FRAMES: u32 = 90;
    let sender = tokio::spawn(send_known_media(video, audio, FRAMES));
    let got = receive(
        &mut remote.packets,
        Duration::from_secs(2),
        Duration::from_secs(15),
    )
    .await;
    sender.await.unwrap();

    // Every frame that arrived is exactly the frame sent with that number, in order.
    let indices = intact_frame_indices(&got, "bob");
    assert!(
        indices.windows(2).all(|w| w[1] == w[0] + 1),
        "frames in order without gaps: {indices:?}"
    );
    assert!(
        got.video_frames.len() as u32 >= FRAMES * 9 / 10,
        "got {} of {FRAMES} frames",
        got.video_frames.len()
    );
    assert_eq!(got.depacketize_errors, 0);

    let audio_sent = FRAMES * 5 / 3;
    let mut audio_ok = 0;
    for p in &got.audio_payloads {
        let i = u32::from_be_bytes([p[1], p[2], p[3], p[4]]);
        assert_eq!(p, &audio_packet(i), "audio packet {i} differs");
        audio_ok += 1;
    }
    assert!(
        audio_ok >= audio_sent * 9 / 10,
        "got {audio_ok} of {audio_sent} audio packets"
    );
    room.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_user_bans_the_publisher_and_stops_its_media() {
    let room = room().await;
    // Alice keeps sending the whole time; only the room can stop it reaching Bob.
    let Call {
        mut alice,
        mut bob,
        mut remote,
        sender,
    } = call_in_progress(&room).await;
    let stream = remote.info.stream_id.clone();

    let (status, body) = room
        .admin(
            "RemoveUser",
            &json!({"SdkAppId": 1400000000u64, "RoomId": ROOM, "UserIds": ["alice"]}),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["Response"]["Affected"], 1);

    let removed = expect_event(&mut bob, 5, "stream-removed", |m| {
        matches!(m, ServerMessage::StreamRemoved { .. })
    })
    .await;
    assert_eq!(
        removed,
        ServerMessage::StreamRemoved {
            stream_id: stream,
            user_id: "alice".into()
        }
    );
    expect_event(
        &mut bob,
        5,
        "peer-leave",
        |m| matches!(m, ServerMessage::PeerLeave { user_id } if user_id == "alice"),
    )
    .await;
    assert_media_stopped(&mut remote).await;
    assert!(!sender.is_finished(), "the publisher was still sending");
    expect_event(
        &mut alice,
        5,
        "client-banned banned",
        is_banned(BanReason::Banned),
    )
    .await;
    sender.abort();
    room.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dismiss_room_disbands_everyone_in_it_and_no_one_else() {
    let room = room().await;
    let Call {
        mut alice,
        mut bob,
        mut remote,
        sender,
    } = call_in_progress(&room).await;
    let mut carol = joined(&room, "carol", ROOM + 1).await;

    let (status, body) = room
        .admin(
            "DismissRoom",
            &json!({"SdkAppId": 1400000000u64, "RoomId": ROOM}),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        (status, body["Response"]["Affected"].as_u64()),
        (200, Some(2)),
        "{body}"
    );
    expect_event(
        &mut bob,
        5,
        "bob room-disband",
        is_banned(BanReason::RoomDisband),
    )
    .await;
    assert_media_stopped(&mut remote).await;
    expect_event(
        &mut alice,
        5,
        "alice room-disband",
        is_banned(BanReason::RoomDisband),
    )
    .await;
    sender.abort();

    // Carol, in another room, saw nothing and is still in hers.
    let stray = tokio::time::timeout(Duration::from_millis(300), carol.next_event()).await;
    assert!(stray.is_err(), "carol got {stray:?}");
    carol
        .publish(true, false)
        .await
        .expect("carol is still in her room");
    // A string room dismissed by its own action.
    let mut dave = Client::connect(room.client_config("dave")).await.unwrap();
    dave.join(RoomId::Str("lobby".into())).await.unwrap();
    let (status, _) = room
        .admin(
            "DismissRoomByStrRoomId",
            &json!({"SdkAppId": 1400000000u64, "RoomId": "lobby"}),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    expect_event(
        &mut dave,
        5,
        "dave room-disband",
        is_banned(BanReason::RoomDisband),
    )
    .await;
    room.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_join_with_the_same_user_id_kicks_the_first() {
    let room = room().await;
    let mut first = joined(&room, "device", ROOM).await;
    let mut viewer = joined(&room, "viewer", ROOM).await;
    first.publish(true, true).await.expect("publish");
    expect_stream_added(&mut viewer, 5, None).await;

    let mut second = Client::connect(room.client_config("device")).await.unwrap();
    let streams = second
        .join(RoomId::Num(ROOM))
        .await
        .expect("second join succeeds");
    assert!(
        streams.is_empty(),
        "the kicked client's publication is gone"
    );
    let ServerMessage::ClientBanned { reason, message } =
        expect_event(&mut first, 5, "kick", |m| {
            matches!(m, ServerMessage::ClientBanned { .. })
        })
        .await
    else {
        unreachable!()
    };
    assert_eq!(reason, BanReason::Kick);
    assert!(message.contains("userId"), "{message}");
    expect_event(
        &mut viewer,
        5,
        "stream-removed",
        |m| matches!(m, ServerMessage::StreamRemoved { user_id, .. } if user_id == "device"),
    )
    .await;
    expect_event(
        &mut viewer,
        5,
        "peer-join again",
        |m| matches!(m, ServerMessage::PeerJoin { user_id } if user_id == "device"),
    )
    .await;
    // The kicked client is out: publishing is refused until it joins again.
    let e = first.publish(true, false).await.err().expect("refused");
    assert_eq!(e.code(), code::INVALID_OPERATION, "{e}");
    room.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_the_server_keeps_serving() {
    let room = room().await;
    let mut c = Client::connect(room.client_config("mallory"))
        .await
        .unwrap();
    let raw = |c: &Client, s: &str| {
        c.signaling()
            .expect("callbox signaling")
            .send_text(s.to_owned())
            .unwrap()
    };

    let err = |m: &ServerMessage| matches!(m, ServerMessage::Error { .. });
    raw(&c, "{not json");
    let e = expect_event(&mut c, 5, "malformed", err).await;
    assert!(
        matches!(&e, ServerMessage::Error { code: 0x1000, reason, id: None, .. } if *reason == Reason::MalformedJson),
        "{e:?}"
    );
    raw(&c, r#"{"type":"teleport","id":7}"#);
    let e = expect_event(&mut c, 5, "unknown type", err).await;
    assert!(
        matches!(&e, ServerMessage::Error { reason, id: Some(7), .. } if *reason == Reason::UnknownType),
        "{e:?}"
    );
    raw(
        &c,
        &format!(
            r#"{{"type":"ping","id":8,"pad":"{}"}}"#,
            "x".repeat(100_000)
        ),
    );
    let e = expect_event(&mut c, 5, "oversized", err).await;
    assert!(
        matches!(&e, ServerMessage::Error { reason, .. } if *reason == Reason::MessageTooLarge),
        "{e:?}"
    );
    raw(&c, r#"{"type":"join","id":9}"#);
    let e = expect_event(&mut c, 5, "missing fields", err).await;
    assert!(
        matches!(&e, ServerMessage::Error { reason, id: Some(9), .. } if *reason == Reason::InvalidFields),
        "{e:?}"
    );

    // userSig problems: each refused with JOIN_ROOM_FAILED and its reason.
    let now = callbox::usersig::unix_now();
    let key = callbox::room::local::DEMO_SECRET_KEY;
    let cases = [
        (
            "forged",
            callbox::usersig::generate(1400000000, "not-the-key", "mallory", 3600, now, None),
            1400000000u64,
            Reason::UsersigBadSignature,
        ),
        (
            "expired",
            callbox::usersig::generate(1400000000, key, "mallory", 60, now - 3600, None),
            1400000000,
            Reason::UsersigExpired,
        ),
        (
            "other user",
            callbox::usersig::generate(1400000000, key, "alice", 3600, now, None),
            1400000000,
            Reason::UsersigWrongUser,
        ),
        (
            "unknown app",
            sig("mallory"),
            1400000001,
            Reason::UnknownSdkAppId,
        ),
        (
            "garbage",
            "AAAA".to_owned(),
            1400000000,
            Reason::UsersigBadEncoding,
        ),
    ];
    for (what, user_sig, app, reason) in cases {
        let mut cfg = room.client_config("mallory");
        cfg.user_sig = user_sig;
        cfg.sdk_app_id = app;
        let mut bad = Client::connect(cfg).await.unwrap();
        match bad.join(RoomId::Num(ROOM)).await {
            Err(callbox::client::ClientError::Refused {
                code, reason: r, ..
            }) => {
                assert_eq!(
                    (code, r, r.is_usersig()),
                    (code::JOIN_ROOM_FAILED, reason, what != "unknown app"),
                    "{what}"
                )
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    // Room ids out of range.
    raw(
        &c,
        &format!(
            r#"{{"type":"join","id":10,"version":1,"sdkAppId":1400000000,"userId":"mallory","userSig":"{}","roomId":0}}"#,
            sig("mallory")
        ),
    );
    let e = expect_event(&mut c, 5, "roomId 0", err).await;
    assert!(
        matches!(&e, ServerMessage::Error { code: 0x4004, reason, .. } if *reason == Reason::InvalidRoomId),
        "{e:?}"
    );

    // Bad SDP on publish: refused, connection still usable.
    c.join(RoomId::Num(ROOM))
        .await
        .expect("join after all that");
    raw(
        &c,
        r#"{"type":"publish","id":11,"sdp":"v=0 this is not sdp","audio":true,"video":true}"#,
    );
    let e = expect_event(&mut c, 5, "bad sdp", err).await;
    assert!(
        matches!(&e, ServerMessage::Error { code: 0x1000, reason, id: Some(11), .. } if *reason == Reason::BadSdp),
        "{e:?}"
    );
    c.publish(true, true)
        .await
        .expect("a good offer after a bad one");

    // Admin without key / with a wrong key: 401 and nothing changes.
    let body = json!({"SdkAppId": 1400000000u64, "RoomId": ROOM});
    for key in ["", "wrong-key-wrong-key-wrong"] {
        let (status, resp) = room.admin("DismissRoom", &body, Some(key)).await.unwrap();
        assert_eq!(status, 401, "{resp}");
        assert_eq!(resp["Response"]["Error"]["Code"], "AuthFailure");
    }
    let (status, resp) = room
        .admin(
            "RemoveUser",
            &json!({"SdkAppId": 1400000000u64, "RoomId": ROOM, "UserIds": []}),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        (status, resp["Response"]["Error"]["Code"].as_str()),
        (400, Some("InvalidParameter.UserIds"))
    );
    let (status, _) = room.admin("Explode", &body, None).await.unwrap();
    assert_eq!(status, 404);

    // Still in the room, still serving others.
    let mut other = Client::connect(room.client_config("olivia")).await.unwrap();
    let streams = other
        .join(RoomId::Num(ROOM))
        .await
        .expect("others can still join");
    assert_eq!(streams.len(), 1, "mallory's publication is listed");
    assert_eq!(streams[0].user_id, "mallory");
    room.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_signaling_with_a_configured_certificate() {
    let dir = std::env::temp_dir().join(format!("callbox-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_pem, key_pem) = (cert.cert.pem(), cert.signing_key.serialize_pem());
    std::fs::write(dir.join("cert.pem"), &cert_pem).unwrap();
    std::fs::write(dir.join("key.pem"), &key_pem).unwrap();
    let mut cfg = callbox::room::local::loopback_config(None, false);
    cfg.server.tls_cert = Some(dir.join("cert.pem"));
    cfg.server.tls_key = Some(dir.join("key.pem"));
    let room = callbox::room::local::LocalRoom::start(cfg).await.unwrap();
    assert!(room.ws_url().starts_with("wss://"));

    // Trusting the certificate: join over WSS, publish, and see the other side.
    let mut a = room.client_config("alice");
    a.tls_ca_pem = Some(cert_pem.clone().into_bytes());
    let mut alice = Client::connect(a).await.expect("wss connect");
    alice.join(RoomId::Num(ROOM)).await.expect("join over TLS");
    alice
        .publish(true, true)
        .await
        .expect("publish after TLS signaling");

    // Not trusting it: a clear setup error (TRTC 0x4001), not a hang.
    let e = Client::connect(room.client_config("bob"))
        .await
        .err()
        .expect("untrusted certificate refused");
    assert_eq!(e.code(), code::SIGNAL_CHANNEL_SETUP_FAILED, "{e}");
    room.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyframe_requests_reach_the_publisher() {
    let room = room().await;
    let mut alice = joined(&room, "alice", ROOM).await;
    let mut bob = joined(&room, "bob", ROOM).await;
    let local = alice.publish(true, true).await.expect("publish");
    let video = local.video().cloned().unwrap();
    let (tx, mut requests) = tokio::sync::mpsc::unbounded_channel();
    let v = video.clone();
    tokio::spawn(async move {
        while v.keyframe_requested().await.is_some() {
            if tx.send(std::time::Instant::now()).is_err() {
                break;
            }
        }
    });
    let sender = tokio::spawn(send_known_media(Some(video), None, 300));
    let stream = expect_stream_added(&mut bob, 5, None).await;
    let remote = bob.subscribe(&stream).await.expect("subscribe");
    // A new subscriber needs a keyframe: the room asks the publisher for one.
    let first = tokio::time::timeout(Duration::from_secs(3), requests.recv()).await;
    assert!(
        matches!(first, Ok(Some(_))),
        "no keyframe request when a subscriber connected"
    );
    // The subscriber's own PLI is relayed too (past the room's 300 ms throttle).
    tokio::time::sleep(Duration::from_millis(400)).await;
    while requests.try_recv().is_ok() {}
    let asked = std::time::Instant::now();
    remote.request_keyframe();
    let relayed = tokio::time::timeout(Duration::from_secs(2), requests.recv())
        .await
        .expect("subscriber PLI relayed to the publisher")
        .unwrap();
    println!(
        "PLI round trip subscriber -> room -> publisher: {:?}",
        relayed - asked
    );
    sender.abort();
    room.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mute_and_unmute_reach_others_with_the_right_user() {
    let room = room().await;
    let mut alice = joined(&room, "alice", ROOM).await;
    let mut bob = joined(&room, "bob", ROOM).await;
    alice.publish(true, true).await.expect("publish");
    expect_stream_added(&mut bob, 5, None).await;
    use callbox::protocol::MediaKind::{Audio, Video};
    alice.mute(Video, true).await.unwrap();
    alice.mute(Audio, true).await.unwrap();
    alice.mute(Audio, false).await.unwrap();
    let alice_id = || "alice".to_owned();
    assert_eq!(
        expect_event(&mut bob, 5, "mute-video", |_| true).await,
        ServerMessage::MuteVideo {
            user_id: alice_id()
        }
    );
    let ServerMessage::StreamUpdated { stream } =
        expect_event(&mut bob, 5, "stream-updated", |_| true).await
    else {
        panic!("stream-updated expected")
    };
    assert!(stream.video_muted && !stream.audio_muted && stream.user_id == "alice");
    assert_eq!(
        expect_event(&mut bob, 5, "mute-audio", |_| true).await,
        ServerMessage::MuteAudio {
            user_id: alice_id()
        }
    );
    expect_event(&mut bob, 5, "stream-updated", |_| true).await;
    assert_eq!(
        expect_event(&mut bob, 5, "unmute-audio", |_| true).await,
        ServerMessage::UnmuteAudio {
            user_id: alice_id()
        }
    );
    // Alice hears nothing about her own mutes (only bob's earlier peer-join).
    while let Ok(Some(ev)) =
        tokio::time::timeout(Duration::from_millis(200), alice.next_event()).await
    {
        assert!(
            matches!(ev, ServerMessage::PeerJoin { .. }),
            "alice got {ev:?}"
        );
    }
    // Muting without publishing is refused.
    let e = bob.mute(Audio, true).await.unwrap_err();
    assert_eq!(e.code(), code::INVALID_OPERATION);
    room.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_usersig_endpoint_only_when_enabled() {
    use callbox::room::local::{http_post, loopback_config, LocalRoom};
    let body = r#"{"sdkAppId":1400000000,"userId":"browser-1"}"#;
    let off = room().await;
    let (status, _) = http_post(off.http, "/api/dev/usersig", None, body)
        .await
        .unwrap();
    assert_eq!(status, 404, "off by default");
    off.stop().await;

    let on = LocalRoom::start(loopback_config(None, true)).await.unwrap();
    let (status, resp) = http_post(on.http, "/api/dev/usersig", None, body)
        .await
        .unwrap();
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["developmentOnly"], true);
    let sig = resp["userSig"].as_str().unwrap().to_owned();
    let mut cfg = on.client_config("browser-1");
    cfg.user_sig = sig;
    let mut c = Client::connect(cfg).await.unwrap();
    c.join(RoomId::Num(ROOM))
        .await
        .expect("the issued userSig is accepted");
    let (status, _) = http_post(
        on.http,
        "/api/dev/usersig",
        None,
        r#"{"sdkAppId":1400000000,"userId":"bad id"}"#,
    )
    .await
    .unwrap();
    assert_eq!(status, 400);
    on.stop().await;
}

/// Removed after joining and before publishing: the publish is refused and
/// `client-banned` is already among the client's events, which is how the
/// device tells being pushed out from a failed publish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_before_publishing_the_ban_comes_before_the_refusal() {
    let room = room().await;
    let mut carol = joined(&room, "carol", ROOM + 7).await;
    let remove = json!({"SdkAppId": 1400000000u64, "RoomId": ROOM + 7, "UserIds": ["carol"]});
    let (status, body) = room.admin("RemoveUser", &remove, None).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(carol.publish(true, false).await.is_err());
    let banned = expect_event(&mut carol, 2, "client-banned", |m| {
        matches!(m, ServerMessage::ClientBanned { .. })
    })
    .await;
    assert!(
        matches!(
            banned,
            ServerMessage::ClientBanned {
                reason: BanReason::Banned,
                ..
            }
        ),
        "{banned:?}"
    );
    room.stop().await;
}
