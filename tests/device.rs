//! The device on synthetic sources, in a room on loopback, against the Rust
//! client as the other participant: what it publishes decodes to the test
//! pattern and the tone; what it is sent comes out of its speaker (a WAV file).

mod common;

use bytes::Bytes;
use callbox::device::audio::{OpusDecoder, OpusEncoder, FRAME, FRAME_SAMPLES, SAMPLE_RATE};
use callbox::device::config::DeviceConfig;
use callbox::device::daemon::Device;
use callbox::device::h264::H264Decoder;
use callbox::device::{pattern, tone};
use callbox::protocol::ServerMessage;
use callbox::room::local::{DeviceToml, LocalRoom};
use common::*;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

const ROOM: u32 = 3300;

/// The shared loopback device config in this file's room, as `tweak` changes it.
fn device_config(
    room: &LocalRoom,
    user: &str,
    tweak: impl FnOnce(DeviceToml) -> DeviceToml,
) -> DeviceConfig {
    common::device_config(room, ROOM, user, tweak)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_publishes_pattern_and_tone_that_decode() {
    let room = room().await;
    let (stop, task) = start_device(device_config(&room, "device-1", |d| d));
    let (mut viewer, stream) =
        joined_with_stream(room.client_config("viewer"), ROOM, "device-1", 15).await;
    assert!(stream.audio && stream.video);
    let mut remote = viewer.subscribe(&stream).await.expect("subscribe");
    let got = receive(
        &mut remote.packets,
        Duration::from_secs(3),
        Duration::from_secs(4),
    )
    .await;

    // Video: every decoded frame is the pattern at 640x480, counters rising.
    let mut dec = H264Decoder::new().unwrap();
    let mut stamps = Vec::new();
    for au in &got.video_frames {
        if let Ok(Some(read)) = dec.decode(au, |f| ((f.width, f.height), pattern::read(f))) {
            assert_eq!(read.0, (640, 480));
            stamps.push(read.1.expect("decoded frame carries the pattern's stamp"));
        }
    }
    assert!(stamps.len() >= 60, "decoded {} frames in 4 s", stamps.len());
    assert!(
        stamps.windows(2).all(|w| w[1].counter > w[0].counter),
        "counters rise"
    );
    let span_s = (stamps.last().unwrap().capture_us - stamps[0].capture_us) as f64 / 1e6;
    let fps = (stamps.len() - 1) as f64 / span_s;
    let counter_fps = (stamps.last().unwrap().counter - stamps[0].counter) as f64 / span_s;
    println!(
        "decoded {} frames, {fps:.1} fps received, {counter_fps:.1} fps captured",
        stamps.len()
    );
    assert!(
        (counter_fps - 30.0).abs() < 3.0,
        "captured at {counter_fps:.1} fps"
    );
    assert!(fps > 25.0, "received {fps:.1} fps");

    // Audio: the tone.
    let mut adec = OpusDecoder::new().unwrap();
    let mut pcm = Vec::new();
    let mut buf = vec![0i16; FRAME_SAMPLES * 6];
    for p in &got.audio_payloads {
        let n = adec.decode(p, &mut buf).expect("Opus decodes");
        pcm.extend_from_slice(&buf[..n]);
    }
    assert!(
        pcm.len() >= SAMPLE_RATE as usize * 2,
        "{} samples",
        pcm.len()
    );
    let f = tone::frequency(&pcm[SAMPLE_RATE as usize / 2..], SAMPLE_RATE).expect("a tone");
    println!("device tone decoded at {f:.2} Hz");
    assert!((f - 440.0).abs() <= 5.0, "{f}");

    // A keyframe request (PLI through the room) gets a keyframe.
    let before = task_stats_keyframes(&got);
    remote.request_keyframe();
    let more = receive(
        &mut remote.packets,
        Duration::from_secs(2),
        Duration::from_secs(1),
    )
    .await;
    assert!(
        task_stats_keyframes(&more) >= 1,
        "no keyframe after PLI (had {before} before)"
    );

    let _ = stop.send(());
    let device = task.await.expect("device task");
    let s = device.stats().snapshot();
    println!("{}", serde_json::to_string(&s).unwrap());
    assert_eq!(s.frame_copies, 0, "the pattern is encoded in place");
    assert!(s.keyframe_requests >= 1);
    expect_event(
        &mut viewer,
        5,
        "device's peer-leave",
        |e| matches!(e, ServerMessage::PeerLeave { user_id } if user_id == "device-1"),
    )
    .await;
    room.stop().await;
}

fn task_stats_keyframes(r: &Received) -> usize {
    r.video_frames
        .iter()
        .filter(|au| callbox::device::h264::nal_types(au).any(|t| t == 5))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_plays_what_it_receives() {
    let room = room().await;
    let dir = std::env::temp_dir().join(format!("callbox-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wav = dir.join("speaker.wav");
    let (stop, task) = start_device(device_config(&room, "device-2", |d| {
        d.set("audio", "playback", "wav")
            .set("audio", "wav_path", wav.display().to_string())
    }));

    // A Rust publisher sends a 660 Hz tone as Opus, in real time.
    let mut caller = joined(&room, "caller", ROOM).await;
    let local = caller.publish(true, false).await.expect("publish");
    let track = local.audio().cloned().unwrap();
    let mut enc = OpusEncoder::new(32_000).unwrap();
    let mut t = tone::Tone::new(660.0, SAMPLE_RATE, 0.3);
    let mut frame = vec![0i16; FRAME_SAMPLES];
    let mut tick = tokio::time::interval(FRAME);
    for _ in 0..150 {
        tick.tick().await;
        t.fill(&mut frame);
        let packet = Bytes::copy_from_slice(enc.encode(&frame).unwrap());
        track.write(packet, FRAME).await.expect("write");
    }
    let _ = stop.send(());
    let device = task.await.expect("device task");
    let s = device.stats().snapshot();
    drop(device); // stops the media threads, finishing the WAV file
    println!("{}", serde_json::to_string(&s).unwrap());

    let samples: Vec<i16> = hound::WavReader::open(&wav)
        .expect("wav")
        .samples::<i16>()
        .map(|s| s.unwrap())
        .collect();
    // The tone's stretch: samples above a tenth of its level.
    let loud: Vec<usize> = samples
        .iter()
        .enumerate()
        .filter(|(_, s)| s.unsigned_abs() > 3000)
        .map(|(i, _)| i)
        .collect();
    assert!(
        !loud.is_empty(),
        "speaker stayed silent ({} samples, stats {s:?})",
        samples.len()
    );
    let (a, b) = (loud[0] + 4800, *loud.last().unwrap() - 4800);
    assert!(
        b > a + SAMPLE_RATE as usize,
        "only {} samples of tone",
        loud.len()
    );
    let f = tone::frequency(&samples[a..b], SAMPLE_RATE).expect("a tone");
    println!(
        "speaker played {f:.2} Hz over {:.2} s",
        (b - a) as f64 / SAMPLE_RATE as f64
    );
    assert!((f - 660.0).abs() <= 5.0, "{f}");
    let _ = std::fs::remove_dir_all(&dir);
    room.stop().await;
}

#[test]
fn missing_audio_devices_and_non_cameras_are_startup_errors_naming_them() {
    let cfg = |tweak: &dyn Fn(DeviceToml) -> DeviceToml| {
        let toml = tweak(DeviceToml::loopback("ws://127.0.0.1:1/ws", "d", 1, 60));
        DeviceConfig::parse(Path::new("d.toml"), &toml.text()).unwrap()
    };
    let camera = |path: &'static str| {
        move |d: DeviceToml| {
            d.set("video", "source", "v4l2")
                .set("video", "device", path)
        }
    };
    let err = |c| {
        Device::open(c, Instant::now())
            .err()
            .expect("fails")
            .to_string()
    };
    // A camera node that is not a camera is a startup error...
    let e = err(cfg(&camera("/dev/null")));
    assert!(e.contains("camera /dev/null: not a V4L2 device"), "{e}");
    // ...but a camera that is not there (yet) is not: the device starts
    // audio-only, camera marked lost, and picks it up when it appears.
    let device = Device::open(cfg(&camera("/dev/video-none")), Instant::now())
        .expect("starts without the camera");
    std::thread::sleep(Duration::from_millis(200));
    let stats = device.stats().snapshot();
    assert!(stats.camera_lost, "{stats:?}");
    assert_eq!(stats.video_frames_captured, 0);
    assert!(
        stats.audio_frames_captured > 0,
        "audio runs meanwhile: {stats:?}"
    );
    let e = err(cfg(&|d| {
        d.set("video", "enabled", false)
            .set("audio", "capture", "alsa")
            .set("audio", "capture_device", "hw:CARD=Nope")
    }));
    assert!(e.contains("ALSA device hw:CARD=Nope: cannot open"), "{e}");
    let e = err(cfg(&|d| {
        d.set("video", "enabled", false)
            .set("audio", "playback", "alsa")
            .set("audio", "playback_device", "hw:CARD=Gone")
    }));
    assert!(e.contains("ALSA device hw:CARD=Gone"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn congestion_control_sets_the_encoder_bitrate_within_bounds() {
    let room = room().await;
    let mut config = device_config(&room, "device-3", |d| {
        d.set("network", "congestion_control", true)
    });
    config.video.bitrate_min_kbps = 100;
    config.video.bitrate_start_kbps = 300;
    config.video.bitrate_max_kbps = 600;
    let (stop, task) = start_device(config);
    let (mut viewer, stream) =
        joined_with_stream(room.client_config("viewer-3"), ROOM, "device-3", 15).await;
    let mut remote = viewer.subscribe(&stream).await.expect("subscribe");
    let got = receive(
        &mut remote.packets,
        Duration::from_secs(3),
        Duration::from_secs(5),
    )
    .await;
    let mut dec = H264Decoder::new().unwrap();
    let decoded = got
        .video_frames
        .iter()
        .filter(|au| matches!(dec.decode(au, pattern::read), Ok(Some(Some(_)))))
        .count();
    let _ = stop.send(());
    let s = task.await.expect("device task").stats().snapshot();
    println!(
        "decoded {decoded} frames; target bitrate {} bit/s",
        s.target_bitrate_bps
    );
    assert!(decoded >= 90, "decoded {decoded} frames in 5 s");
    // The estimator ran on TWCC feedback from the room and reported a target in bounds.
    assert!(
        (100_000..=600_000).contains(&s.target_bitrate_bps),
        "{}",
        s.target_bitrate_bps
    );
    assert_ne!(
        s.target_bitrate_bps, 300_000,
        "the target never moved from its start value"
    );
    room.stop().await;
}

/// Thirty publishers that send nothing are in the room before the device
/// joins: it subscribes to at most MAX_REMOTE_STREAMS of them, off its call
/// loop, and its own audio keeps its 50 packets a second meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_publishers_do_not_starve_the_devices_own_media() {
    use callbox::device::daemon::{CallLink, MAX_REMOTE_STREAMS};
    let room = room().await;
    let publishers = (0..30).map(|i| {
        let room = &room;
        async move {
            let mut c = joined(room, &format!("silent-{i}"), ROOM).await;
            c.publish(true, false).await.expect("publish");
            c
        }
    });
    let _silent = futures_util::future::join_all(publishers).await;
    let config = device_config(&room, "device-4", |d| d.set("video", "enabled", false));
    let mut device = Device::open(config, Instant::now()).expect("device opens");
    let stats = device.stats();
    let (stop, stopped) = oneshot::channel::<()>();
    let (joined_tx, joined_rx) = oneshot::channel();
    let link = CallLink {
        joined: Some(joined_tx),
        ..Default::default()
    };
    let task = tokio::spawn(async move {
        let hangup = async {
            let _ = stopped.await;
        };
        device.call(hangup, link).await
    });
    joined_rx.await.expect("the device joins");
    let sent = |s: &callbox::device::stats::MediaStats| {
        s.audio_packets_sent
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let before = sent(&stats);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let in_5s = sent(&stats) - before;
    let playing = stats.snapshot().remote_streams;
    println!("device sent {in_5s} audio packets in 5 s beside 30 silent publishers; playing {playing} of them");
    let _ = stop.send(());
    let ended = task.await.expect("device task");
    assert!(ended.is_ok(), "{ended:?}");
    assert!(
        in_5s >= 225,
        "the device's own audio: {in_5s} packets in 5 s (250 due)"
    );
    assert_eq!(
        playing, MAX_REMOTE_STREAMS as u64,
        "subscribed up to the cap"
    );
    room.stop().await;
}

/// `video.source = "command"`: a capture program's H.264 (Debian's ffmpeg
/// standing in for `rpicam-vid`) goes out through the passthrough path and
/// a subscriber decodes it; the program exits after 1 s and is restarted;
/// a program that does not exist is a startup error naming the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_program_is_the_camera_and_is_restarted_when_it_exits() {
    if !have_ffmpeg() {
        return;
    }
    let room = room().await;
    let config = device_config(&room, "device-cmd", |d| {
        capture_program(d, &ffmpeg_camera("640x480", 15, Some(1)))
    });
    let (stop, task) = start_device(config);
    let (mut viewer, stream) =
        joined_with_stream(room.client_config("viewer"), ROOM, "device-cmd", 10).await;
    let mut remote = viewer.subscribe(&stream).await.expect("subscribe");
    let got = receive(
        &mut remote.packets,
        Duration::from_secs(2),
        Duration::from_secs(4),
    )
    .await;
    let _ = stop.send(());
    let device = task.await.expect("device task");
    let s = device.stats().snapshot();
    let mut dec = H264Decoder::new().expect("decoder");
    let sizes: Vec<(usize, usize)> = got
        .video_frames
        .iter()
        .filter_map(|au| dec.decode(au, |p| (p.width, p.height)).ok().flatten())
        .collect();
    println!(
        "command camera: {} access units sent, {} decoded at {:?} in 4 s, {} keyframes; ffmpeg makes 30 per run, restarted 1 s after each",
        got.video_frames.len(),
        sizes.len(),
        sizes.first(),
        task_stats_keyframes(&got)
    );
    // One run of the program makes 30 pictures: more means it was restarted.
    assert!(
        sizes.len() > 30,
        "{} pictures decoded over 4 s of 1 s runs",
        sizes.len()
    );
    assert!(sizes.iter().all(|s| *s == (640, 480)));
    assert!(s.video_frames_encoded > 30, "{s:?}");

    let missing = capture_program(
        DeviceToml::loopback("ws://127.0.0.1:1/ws", "d", 1, 60),
        r#"["no-such-camera-program", "-o", "-"]"#,
    );
    let e = DeviceConfig::parse(Path::new("d.toml"), &missing.text()).unwrap_err();
    println!("command camera: a missing program: {e}");
    assert!(e.to_string().contains("video.command: "), "{e}");
    room.stop().await;
}

/// `command_keyframe = "restart"`: the program makes one IDR every 10 s,
/// and a subscriber that arrives later still decodes at once, because its
/// keyframe request restarts the program (which starts with an IDR).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyframe_request_restarts_the_capture_program() {
    if !have_ffmpeg() {
        return;
    }
    let room = room().await;
    let config = device_config(&room, "device-kf", |d| {
        capture_program(d, &ffmpeg_camera("320x240", 300, None)).set(
            "video",
            "command_keyframe",
            "restart",
        )
    });
    let (stop, task) = start_device(config);
    // Past the program's first IDR: the next would be 10 s away.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t = Instant::now();
    let (mut viewer, stream) =
        joined_with_stream(room.client_config("viewer"), ROOM, "device-kf", 10).await;
    let mut remote = viewer.subscribe(&stream).await.expect("subscribe");
    let mut dec = H264Decoder::new().expect("decoder");
    let mut depack = rtc::rtp::codec::h264::H264Packet::default();
    let mut au = Vec::new();
    let first = loop {
        let p = tokio::time::timeout(Duration::from_secs(5), remote.packets.recv())
            .await
            .expect("video within 5 s")
            .expect("packets");
        if p.kind != callbox::protocol::MediaKind::Video {
            continue;
        }
        if let Ok(b) =
            rtc::rtp::packetizer::Depacketizer::depacketize(&mut depack, &p.packet.payload)
        {
            au.extend_from_slice(&b);
        }
        if p.packet.header.marker {
            if let Ok(Some(size)) = dec.decode(&au, |pic| (pic.width, pic.height)) {
                break (t.elapsed(), size);
            }
            au.clear();
        }
    };
    println!(
        "command camera: a subscriber 2 s in decoded its first picture ({:?}) {:.2} s after joining (the program's own next IDR: 10 s)",
        first.1,
        first.0.as_secs_f64()
    );
    assert!(first.0 < Duration::from_secs(3), "{:?}", first.0);
    let _ = stop.send(());
    let _ = task.await;
    room.stop().await;
}

/// Whether Debian's ffmpeg is here to stand in for a capture program.
fn have_ffmpeg() -> bool {
    let there = std::process::Command::new("ffmpeg")
        .arg("-version")
        .output()
        .is_ok();
    if !there {
        println!("command camera: SKIPPED: ffmpeg is not installed (scripts/deps.sh installs it)");
    }
    there
}

/// `d` with a capture program for its camera: `command`, a TOML list.
fn capture_program(d: DeviceToml, command: &str) -> DeviceToml {
    d.set("video", "source", "command")
        .set("video", "encoder", "passthrough")
        .set_toml("video", "command", command)
        .expect("command")
}

/// ffmpeg as a board's capture program: a `size` test picture at 30 fps,
/// H.264 constrained baseline with an IDR every `gop` frames, to stdout in
/// Annex B, for `seconds` (or until stopped); a TOML list.
fn ffmpeg_camera(size: &str, gop: u32, seconds: Option<u32>) -> String {
    let input = format!("testsrc2=size={size}:rate=30");
    let mut argv = vec!["ffmpeg", "-hide_banner", "-loglevel", "error", "-re"];
    argv.extend(["-f", "lavfi", "-i", &input]);
    let secs = seconds.map(|s| s.to_string());
    if let Some(secs) = &secs {
        argv.extend(["-t", secs]);
    }
    let gop = gop.to_string();
    argv.extend([
        "-c:v",
        "libx264",
        "-profile:v",
        "baseline",
        "-preset",
        "ultrafast",
    ]);
    argv.extend(["-tune", "zerolatency", "-g", &gop, "-pix_fmt", "yuv420p"]);
    argv.extend(["-f", "h264", "-"]);
    format!("{argv:?}")
}
