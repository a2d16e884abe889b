//! The device on Janus VideoRoom: Debian's `janus` started by each test in
//! a network namespace of its own (with a veth pair: on `lo` alone Janus
//! fails ICE), the videoroom plugin, and a room in its config (room 1234,
//! H.264 constrained baseline and Opus, a secret for kick and destroy).
//!
//! - The device publishes; a Rust client speaking Janus decodes its
//!   pattern and its 440 Hz tone; a remote publisher's 660 Hz tone reaches
//!   the device's speaker.
//! - An admin kick pushes the device out as `banned`, a room destroyed as
//!   `room-disband`; a second session with the device's feed id is refused
//!   (436) without the room secret, and kicks the stale one with it.

mod common;

use bytes::Bytes;
use callbox::appliance::control::{request, Request};
use callbox::client::janus_videoroom::{feed_id, Refusal};
use callbox::client::{Client, ClientError, RemoteStream, RoomId};
use callbox::device::audio::{OpusEncoder, FRAME, FRAME_SAMPLES, SAMPLE_RATE};
use callbox::device::config::DeviceConfig;
use callbox::device::daemon::{CallLink, Device, DeviceError};
use callbox::device::tone;
use callbox::protocol::BanReason;
use callbox::room::local::DeviceToml;
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::janus::{Janus, IP, ROOM, SECRET};

/// Run `body` in a network namespace of its own, with a Janus of its own
/// (the test skips where Janus is not installed).
fn with_janus<F: std::future::Future<Output = ()>>(test: &str, body: impl FnOnce(Janus) -> F) {
    if !in_own_netns(test) {
        return;
    }
    let Some(janus) = Janus::start() else { return };
    let _ = env_logger::builder().is_test(true).try_init();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(body(janus));
}

/// A device config for the Janus room, as `tweak` changes it.
fn janus_device(
    janus: &Janus,
    user: &str,
    tweak: impl FnOnce(DeviceToml) -> DeviceToml,
) -> DeviceConfig {
    let toml = DeviceToml::loopback(&janus.url(), user, ROOM, 3600)
        .set("room", "backend", "janus")
        .set("room", "allow_insecure_ws", true)
        .set("network", "bind", IP);
    let toml = tweak(toml);
    DeviceConfig::parse(Path::new("janus-device.toml"), &toml.text()).expect("device config")
}

/// One VideoRoom request on a session of its own (the operator's).
async fn admin(janus: &Janus, body: Value) -> Value {
    let mut req =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(janus.url())
            .expect("request");
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "janus-protocol".parse().expect("header"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("janus ws");
    let mut ask = async |msg: Value| -> Value {
        ws.send(msg.to_string().into()).await.expect("send");
        loop {
            let frame = ws.next().await.expect("reply").expect("frame");
            let v: Value = serde_json::from_str(frame.to_text().unwrap_or("{}")).expect("json");
            if v["janus"] != "ack" {
                return v;
            }
        }
    };
    let session = ask(json!({"janus": "create", "transaction": "a"})).await["data"]["id"].clone();
    let handle = ask(json!({"janus": "attach", "session_id": session, "plugin": "janus.plugin.videoroom", "transaction": "b"}))
        .await["data"]["id"]
        .clone();
    let reply = ask(json!({"janus": "message", "session_id": session, "handle_id": handle, "body": body, "transaction": "c"})).await;
    reply["plugindata"]["data"].clone()
}

#[test]
fn a_device_on_janus_publishes_and_plays_a_remote_publisher() {
    with_janus(
        "a_device_on_janus_publishes_and_plays_a_remote_publisher",
        |janus| async move {
            let wav = janus.dir.join("speaker.wav");
            let w = wav.display().to_string();
            let config = janus_device(&janus, "device-j", |d| {
                d.set("audio", "playback", "wav")
                    .set("audio", "wav_path", w)
            });
            let (joined, in_call) = tokio::sync::oneshot::channel();
            let link = CallLink {
                joined: Some(joined),
                ..Default::default()
            };
            let t = Instant::now();
            let (stop, call, stats) = start_linked_device(config, link);
            tokio::time::timeout(Duration::from_secs(15), in_call)
                .await
                .expect("in the Janus room within 15 s")
                .expect("joined");
            let joined_after = t.elapsed();

            // A subscriber speaking Janus decodes the device's pattern and tone.
            let (mut viewer, frames, hz) = watch(&janus, "device-j", Duration::from_secs(3)).await;

            // A caller's 660 Hz tone reaches the device's speaker.
            let mut caller = Client::connect(janus.client_config("caller"))
                .await
                .expect("connect");
            caller.join(RoomId::Num(ROOM)).await.expect("join");
            let local = caller.publish(true, false).await.expect("publish");
            let track = local.audio().cloned().expect("audio track");
            let (mut enc, mut t660) = (
                OpusEncoder::new(32_000).expect("opus"),
                tone::Tone::new(660.0, SAMPLE_RATE, 0.3),
            );
            let mut frame = vec![0i16; FRAME_SAMPLES];
            let mut tick = tokio::time::interval(FRAME);
            for _ in 0..150 {
                tick.tick().await;
                t660.fill(&mut frame);
                let packet = Bytes::copy_from_slice(enc.encode(&frame).expect("encode"));
                track.write(packet, FRAME).await.expect("write");
            }
            let s = stats.snapshot();
            let _ = stop.send(());
            let device = call.await.expect("device task");
            drop(device);
            let heard = speaker_tone(&wav);
            println!(
            "janus: device in the room {:.2} s after start, first RTP {:?} ms; viewer decoded {frames} pattern frames, tone {:.1} Hz; \
             the device played the caller at {:.1} Hz ({} packets received)",
            joined_after.as_secs_f64(),
            s.first_rtp_ms,
            hz.unwrap_or(0.0),
            heard.unwrap_or(0.0),
            s.audio_packets_received
        );
            assert!(frames >= 30, "{frames} pattern frames in 3 s");
            assert!(hz.is_some_and(|f| (f - 440.0).abs() <= 5.0), "{hz:?}");
            assert!(
                heard.is_some_and(|f| (f - 660.0).abs() <= 5.0),
                "speaker: {heard:?}"
            );
            let _ = caller.leave().await;
            let _ = viewer.leave().await;
        },
    );
}

/// A client `me` in the Janus room, subscribed to `user`'s publication.
async fn subscribed(janus: &Janus, me: &str, user: &str) -> (Client, RemoteStream) {
    let mut viewer = Client::connect(janus.client_config(me))
        .await
        .expect("connect");
    let streams = viewer.join(RoomId::Num(ROOM)).await.expect("join");
    let stream = streams
        .into_iter()
        .find(|s| s.user_id == user)
        .expect("the device is listed as a publisher");
    let remote = viewer.subscribe(&stream).await.expect("subscribe");
    (viewer, remote)
}

/// A viewer speaking Janus subscribes to `user` for `secs`: the pattern
/// frames it decoded and the tone it heard.
async fn watch(janus: &Janus, user: &str, secs: Duration) -> (Client, usize, Option<f64>) {
    let (viewer, mut remote) = subscribed(janus, "viewer", user).await;
    let got = receive(&mut remote.packets, Duration::from_secs(2), secs).await;
    let (frames, hz) = pattern_frames_and_tone(&got);
    (viewer, frames, hz)
}

/// The frequency of the loud stretch of a WAV file.
fn speaker_tone(wav: &Path) -> Option<f64> {
    let samples: Vec<i16> = hound::WavReader::open(wav)
        .ok()?
        .samples::<i16>()
        .filter_map(Result::ok)
        .collect();
    let loud: Vec<usize> = (0..samples.len())
        .filter(|i| samples[*i].unsigned_abs() > 3000)
        .collect();
    let (a, b) = (loud.first()? + 4800, loud.last()?.checked_sub(4800)?);
    (b > a + SAMPLE_RATE as usize / 2).then_some(())?;
    tone::frequency(&samples[a..b], SAMPLE_RATE)
}

/// A call on `device`, once it is in the room (the call still running).
async fn in_the_room(
    device: &mut Device,
    dead_media: Option<Duration>,
) -> std::pin::Pin<Box<impl std::future::Future<Output = Result<(), DeviceError>> + '_>> {
    let (joined, in_call) = tokio::sync::oneshot::channel();
    let link = CallLink {
        joined: Some(joined),
        dead_media,
        ..Default::default()
    };
    let mut call = Box::pin(device.call(std::future::pending(), link));
    tokio::select! {
        r = &mut call => panic!("the call ended before joining: {r:?}"),
        j = tokio::time::timeout(Duration::from_secs(15), in_call) => {
            j.expect("in the room within 15 s").expect("joined")
        }
    }
    call
}

/// A device in the room until the room pushes it out; the reason.
async fn pushed_out_by(janus: &Janus, user: &str, body: Value) -> (DeviceError, Duration) {
    let config = janus_device(janus, user, |d| d);
    let mut device = Device::open(config, Instant::now()).expect("device opens");
    let call = in_the_room(&mut device, None).await;
    let reply = admin(janus, body).await;
    assert!(reply["error_code"].is_null(), "janus refused: {reply}");
    let t = Instant::now();
    let e = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("the call ends within 5 s")
        .expect_err("pushed out");
    (e, t.elapsed())
}

#[test]
fn a_kick_bans_the_device_and_a_destroyed_room_disbands_it() {
    with_janus(
        "a_kick_bans_the_device_and_a_destroyed_room_disbands_it",
        |janus| async move {
            let kick = json!({"request": "kick", "room": ROOM, "secret": SECRET, "id": feed_id("device-k")});
            let (e, after) = pushed_out_by(&janus, "device-k", kick).await;
            println!("janus: kick -> {e} after {after:.2?}");
            assert!(matches!(e, DeviceError::Banned(BanReason::Banned)), "{e:?}");
            assert!(!e.retryable(), "a kicked device does not rejoin by itself");
            let destroy = json!({"request": "destroy", "room": ROOM, "secret": SECRET});
            let (e, after) = pushed_out_by(&janus, "device-d", destroy).await;
            println!("janus: destroy -> {e} after {after:.2?}");
            assert!(
                matches!(e, DeviceError::Banned(BanReason::RoomDisband)),
                "{e:?}"
            );
        },
    );
}

#[test]
fn a_second_session_with_the_same_id_is_refused_or_kicks_the_stale_one() {
    with_janus(
        "a_second_session_with_the_same_id_is_refused_or_kicks_the_stale_one",
        |janus| async move {
            // The stale session: a client with the device's feed id.
            let mut stale = Client::connect(janus.client_config("device-s"))
                .await
                .expect("connect");
            stale.join(RoomId::Num(ROOM)).await.expect("join");
            let mut device = Device::open(janus_device(&janus, "device-s", |d| d), Instant::now())
                .expect("device");
            let e = device
                .call(std::future::pending(), CallLink::default())
                .await
                .expect_err("refused while the stale session holds the id");
            println!(
                "janus: duplicate id without the room secret: {e} (retryable: {})",
                e.retryable()
            );
            assert!(
                matches!(
                    &e,
                    DeviceError::Client(ClientError::Janus {
                        refusal: Refusal::IdExists,
                        ..
                    })
                ),
                "{e:?}"
            );
            assert!(!e.retryable(), "no reconnect loop against our own id");
            drop(device);

            let with_secret =
                janus_device(&janus, "device-s", |d| d.set("room", "room_secret", SECRET));
            let (joined, in_call) = tokio::sync::oneshot::channel();
            let link = CallLink {
                joined: Some(joined),
                ..Default::default()
            };
            let (stop, call, _) = start_linked_device(with_secret, link);
            tokio::time::timeout(Duration::from_secs(15), in_call)
                .await
                .expect("joined with the room secret")
                .expect("joined");
            let ev = tokio::time::timeout(Duration::from_secs(5), stale.next_event()).await;
            println!("janus: duplicate id with the room secret: the device joined; the stale session got {ev:?}");
            assert!(
                matches!(
                    ev,
                    Ok(Some(callbox::protocol::ServerMessage::ClientBanned { .. }))
                ),
                "the stale session is pushed out"
            );
            let _ = stop.send(());
            let _ = call.await;
        },
    );
}

#[test]
fn after_janus_restarts_the_device_is_back_within_5_s() {
    with_janus(
        "after_janus_restarts_the_device_is_back_within_5_s",
        |mut janus| async move {
            let mut device = Device::open(janus_device(&janus, "device-r", |d| d), Instant::now())
                .expect("device");
            let mut call = in_the_room(&mut device, Some(Duration::from_secs(2))).await;
            let up = janus.restart();
            let e = tokio::time::timeout(Duration::from_secs(10), &mut call)
                .await
                .expect("the call sees Janus go")
                .expect_err("lost");
            drop(call);
            assert!(e.retryable(), "{e}");
            // What the appliance does next: join again (it waits out its backoff first).
            let t = Instant::now();
            let mut again = in_the_room(&mut device, None).await;
            let (back, rejoin) = (up.elapsed(), t.elapsed());
            let (_viewer, frames, hz) = tokio::select! {
                r = &mut again => panic!("the second call ended: {r:?}"),
                w = watch(&janus, "device-r", Duration::from_secs(2)) => w,
            };
            println!(
            "janus: restarted; the call ended with: {e}; in the room again {:.2} s after Janus answered (the rejoin itself {:.2} s); \
             a viewer then decoded {frames} pattern frames, tone {:.1} Hz",
            back.as_secs_f64(),
            rejoin.as_secs_f64(),
            hz.unwrap_or(0.0)
        );
            assert!(back < Duration::from_secs(5));
            assert!(
                frames >= 20 && hz.is_some_and(|f| (f - 440.0).abs() <= 5.0),
                "{frames} frames, {hz:?}"
            );
        },
    );
}

/// The appliance on Janus, as on the callbox room service: the real
/// `callbox device` daemon joins by itself, `ctl mute-audio` stops what a
/// viewer hears, Janus restarted -> reconnecting -> in call (with the
/// appliance's own backoff), an admin kick -> banned with its LED and no
/// rejoin of its own.
#[test]
fn the_appliance_on_janus_mutes_reconnects_and_is_banned() {
    with_janus(
        "the_appliance_on_janus_mutes_reconnects_and_is_banned",
        |mut janus| async move {
            let socket = janus.dir.join("control.sock");
            let toml = DeviceToml::loopback(&janus.url(), "device-a", ROOM, 3600)
                .set("room", "backend", "janus")
                .set("room", "allow_insecure_ws", true)
                .set("network", "bind", IP)
                .set("video", "width", 320)
                .set("video", "height", 240)
                .set("call", "dead_media_ms", 3000)
                .set("service", "control_socket", socket.display().to_string());
            let config = janus.dir.join("device.toml");
            std::fs::write(&config, toml.text()).expect("device.toml");
            let _daemon = KillOnDrop(
                Command::new(env!("CARGO_BIN_EXE_callbox"))
                    .args(["device", "--config"])
                    .arg(&config)
                    .env("RUST_LOG", "warn")
                    .spawn()
                    .expect("callbox device"),
            );
            let joined = wait_state(&socket, "in-call", 15).await;
            let s = status(&socket).await;
            assert_eq!(s["room"]["backend"], "janus", "{s:#}");

            let before = audio_heard(&janus, "device-a").await;
            ctl(&socket, Request::MuteAudio).await;
            let muted = audio_heard(&janus, "device-a").await;
            ctl(&socket, Request::UnmuteAudio).await;
            let after = audio_heard(&janus, "device-a").await;
            println!("janus appliance: in call {joined:.2?} after start; audio packets in 2 s at a viewer: {before}, muted {muted}, unmuted {after}");
            assert!(
                before > 50 && after > 50 && muted < 10,
                "{before} / {muted} / {after}"
            );

            let up = janus.restart();
            wait_state(&socket, "reconnecting", 10).await;
            wait_state(&socket, "in-call", 10).await;
            let back = up.elapsed();
            println!(
                "janus appliance: Janus restarted; in call again {back:.2?} after it answered"
            );
            assert!(back < Duration::from_secs(5), "{back:?}");

            let kick = json!({"request": "kick", "room": ROOM, "secret": SECRET, "id": feed_id("device-a")});
            admin(&janus, kick).await;
            let banned = wait_state(&socket, "banned", 5).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let s = status(&socket).await;
            println!("janus appliance: kicked -> banned after {banned:.2?}; 2 s later: state {}, LEDs {}", s["state"], s["leds"]);
            assert_eq!(s["state"], "banned", "no rejoin of its own");
            assert_eq!(
                (s["ban_reason"].as_str(), s["leds"]["banned"].as_bool()),
                (Some("banned"), Some(true))
            );
        },
    );
}

/// Audio packets a viewer gets from `user` in 2 s (after a moment to settle).
async fn audio_heard(janus: &Janus, user: &str) -> usize {
    let (mut viewer, mut remote) = subscribed(janus, "ear", user).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    while remote.packets.try_recv().is_ok() {}
    let got = receive(
        &mut remote.packets,
        Duration::from_secs(2),
        Duration::from_secs(2),
    )
    .await;
    let _ = viewer.leave().await;
    got.audio_payloads.len()
}

async fn status(socket: &Path) -> Value {
    request(socket, Request::Status).await.expect("ctl status")
}

async fn ctl(socket: &Path, r: Request) {
    let reply = request(socket, r).await.expect("ctl");
    assert_eq!(reply["ok"], true, "{reply}");
}

/// Poll the daemon until its state is `state`; how long it took.
async fn wait_state(socket: &Path, state: &str, secs: u64) -> Duration {
    let t0 = Instant::now();
    loop {
        if let Ok(s) = request(socket, Request::Status).await {
            if s["state"] == state {
                return t0.elapsed();
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "not {state} within {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A room Janus does not have: a clear error with Janus's code (426), and
/// retryable (a restarted Janus may bring the room back).
#[test]
fn a_room_janus_does_not_have_is_a_clear_retryable_error() {
    with_janus(
        "a_room_janus_does_not_have_is_a_clear_retryable_error",
        |janus| async move {
            let config = janus_device(&janus, "device-n", |d| d.set("room", "room_id", 9999));
            let mut device = Device::open(config, Instant::now()).expect("device");
            let e = tokio::time::timeout(
                Duration::from_secs(10),
                device.call(std::future::pending(), CallLink::default()),
            )
            .await
            .expect("no hang")
            .expect_err("no such room");
            println!(
                "janus: room 9999: {e} (code {:#06x}, retryable: {})",
                e.code(),
                e.retryable()
            );
            assert!(
                matches!(
                    &e,
                    DeviceError::Client(ClientError::Janus {
                        code: 426,
                        refusal: Refusal::NoSuchRoom,
                        ..
                    })
                ),
                "{e:?}"
            );
            assert!(e.retryable());
        },
    );
}
