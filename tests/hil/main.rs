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

#[path = "../common/mod.rs"]
mod common;
mod debian;
mod host;
mod provision;
mod qemu;
mod scenarios;
mod viewer;

use host::*;
use provision::*;
use qemu::*;
use scenarios::*;
use viewer::*;

use anyhow::{anyhow, bail, ensure, Context, Result};
use bytes::Bytes;
use callbox::client::{Client, ClientConfig, NetConfig, RemoteStream, RoomId};
use callbox::device::audio::{OpusDecoder, OpusEncoder, FRAME, FRAME_SAMPLES, SAMPLE_RATE};
use callbox::device::frame::I420;
use callbox::device::h264::{EncoderSettings, H264Decoder, OpenH264Encoder, VideoEncoder};
use callbox::device::pattern;
use callbox::device::tone;
use callbox::device::video_source::pattern_frame;
use callbox::protocol::ServerMessage;
use callbox::room::local::{http_post, room_toml, DeviceToml, DEMO_ADMIN_KEY, DEMO_SDK_APP_ID};
use common::{expect_event, free_port, receive, Received};
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

async fn run_arch(arch: Arch) -> Result<usize> {
    let prepared = prepare(arch)?;
    let build = package(arch, None)?;
    // HIL_PARTS=debian runs only the package scenarios (when working on them).
    let parts = std::env::var("HIL_PARTS").unwrap_or_else(|_| "board debian".into());
    let board_failed = if parts.contains("board") {
        run_board(arch, &prepared, &build).await?
    } else {
        0
    };
    let debian_failed = if !parts.contains("debian") {
        0
    } else if let Some(why) = debian_unavailable(arch) {
        report(&format!(
            "{}: Debian package scenarios SKIPPED: {why}",
            arch.name()
        ));
        0
    } else {
        debian::run(arch, &prepared, &build).await?
    };
    Ok(board_failed + debian_failed)
}

/// The board scenarios on the test's own initramfs: how many failed.
async fn run_board(arch: Arch, prepared: &Path, build: &Build) -> Result<usize> {
    let binary = build.binary.clone();
    let dir = work_dir().join(format!("run-{}", arch.name()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("share"))?;
    let initrd = dir.join("initrd.gz");
    run(Command::new(repo().join("tests/hil/initramfs.sh"))
        .arg(arch.name())
        .arg(prepared)
        .arg(&binary)
        .arg(&initrd))?;

    let size = VIDEO_SIZE;
    let media_port = free_port(true);
    let share = dir.join("share");
    std::fs::write(share.join("room.toml"), guest_room_toml(media_port))?;
    std::fs::write(
        share.join("device.toml"),
        device_toml(size, &["YU12"], "openh264")?,
    )?;
    std::fs::write(
        share.join("device-yuyv.toml"),
        device_toml(size, &["YUYV"], "openh264")?,
    )?;
    // At 640x480 vivid's YU12 buffers have vicodec's layout (zero copy);
    // 640x360 is padded to 368 rows by vicodec (one copy).
    std::fs::write(
        share.join("device-auto.toml"),
        device_toml((640, 480), &["YU12"], "auto")?,
    )?;
    // vivid offers no H.264: the daemon could not open it for passthrough.
    std::fs::write(
        share.join("device-passthrough.toml"),
        device_toml(size, &["YUYV", "H264"], "passthrough")?,
    )?;
    let screen = screen_device_toml(size, "text")?;
    std::fs::write(share.join("device-screen.toml"), screen.text())?;
    let no_such_connector = screen.set("display", "connector", "HDMI-A-9");
    std::fs::write(share.join("device-hdmi.toml"), no_such_connector.text())?;
    let blank = screen_device_toml(size, "blank")?;
    std::fs::write(share.join("device-blank.toml"), blank.text())?;
    write_tone(&share.join("mic.wav"), MIC_HZ, 30, 0.4)?;
    // The near end's talker in the echo scenario, at about the echo's level.
    write_tone(&share.join("near.wav"), MIC_HZ, 30, 0.1)?;
    // A short far end and microphone for timing the chain in the guest.
    write_tone(&share.join("far3.wav"), SPEAKER_HZ, 3, 0.3)?;
    write_tone(&share.join("mic3.wav"), MIC_HZ, 3, 0.3)?;

    let t = Instant::now();
    let guest = boot(arch, prepared, Medium::Initramfs(&initrd), &dir, media_port)?;
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
            let result = rig.$f().await;
            failed += usize::from(!report_scenario(
                &format!("{} scenario {} {}", rig.arch.name(), $n, $name),
                t,
                result,
            ));
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
    scenario!(
        9,
        "probe_asks_the_camera_what_the_daemon_asks",
        probe_agrees
    );
    scenario!(10, "probe_measures_a_looped_echo_path", echo_probe);
    scenario!(11, "screen_shows_the_caller", screen_shows_caller);

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
    drop(rig);
    report(&format!(
        "{}: {} of {ran} scenarios passed, {:.1} s from boot",
        arch.name(),
        ran - failed,
        t.elapsed().as_secs_f64()
    ));
    Ok(failed)
}
