//! Device benchmark: the real `callbox device` process on synthetic sources
//! (640x480@30 pattern + tone) publishing through a room service on
//! loopback. Prints
//! - encode ms/frame (p50/p99), OpenH264 on the pattern, in this process;
//! - the device process's CPU (% of one core) and RSS (from /proc);
//! - start -> first RTP packet (the device's own log line);
//! - the same with the audio chain on, and in a two-way call with the
//!   screen on (a caller publishes a stamped pattern and a tone; the
//!   device decodes, lip-syncs and composes it into a y4m file);
//! - glass-to-display latency: the caller's capture stamp -> the frame on
//!   the device's screen, as the y4m file grows (p50/p99);
//! - glass-to-glass latency, capture stamp -> decoded at a subscriber
//!   (p50/p99): device -> Rust subscriber (OpenH264 decode), device ->
//!   Chromium, and the baseline Chromium -> Chromium through the same room
//!   service, the publishing page drawing the same pattern on a canvas;
//! - the same device on Janus VideoRoom (Debian's `janus`, full runs only):
//!   CPU, RSS, first RTP and glass-to-glass beside the room service's.
//!
//! Everything runs in a fresh network namespace with only `lo` (the bench
//! re-executes itself under `unshare --net`), so Chromium's candidates are
//! loopback ones. `cargo bench --bench device` measures 10 s windows; under
//! `cargo test` it runs a 2 s smoke pass without the browser part.

#[path = "../tests/common/mod.rs"]
mod common;

use callbox::client::{Client, ClientConfig, RoomId};
use callbox::device::frame::i420_len;
use callbox::device::h264::{EncoderSettings, H264Decoder, OpenH264Encoder, VideoEncoder};
use callbox::device::pattern::{self, Stamp};
use callbox::device::video_source::pattern_frame;
use callbox::protocol::{MediaKind, ServerMessage};
use callbox::room::local::{loopback_config, DeviceToml, LocalRoom};
use rtc::rtp::codec::h264::H264Packet;
use rtc::rtp::packetizer::Depacketizer;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CLK_TCK: f64 = 100.0;
const ROOM: u32 = 5150;

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn encode_bench(frames: u32) -> (f64, f64) {
    let (w, h) = (640, 480);
    let mut enc = OpenH264Encoder::new(EncoderSettings {
        width: w,
        height: h,
        fps: 30,
        bitrate_bps: 800_000,
        keyframe_interval_frames: 60,
        library: None,
    })
    .expect("encoder");
    let mut buf = vec![0; i420_len(w, h)];
    let mut out = Vec::new();
    let mut times = Vec::new();
    for counter in 1..=frames {
        let stamp = Stamp {
            counter,
            capture_us: pattern::now_us(),
        };
        let frame = pattern_frame(&mut buf, w, h, stamp).expect("buffer");
        let t = Instant::now();
        enc.encode(&frame, false, &mut out).expect("encode");
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    (pct(&mut times, 0.5), pct(&mut times, 0.99))
}

fn proc_cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Subscribe to the device and measure capture -> decoded for `window`.
async fn rust_glass(
    viewer: (ClientConfig, u32),
    warmup: Duration,
    window: Duration,
) -> (usize, f64, f64) {
    let mut c = Client::connect(viewer.0).await.expect("connect");
    let existing = c.join(RoomId::Num(viewer.1)).await.expect("join");
    let stream = match existing.into_iter().find(|s| s.user_id == "bench-device") {
        Some(s) => s,
        None => loop {
            match tokio::time::timeout(Duration::from_secs(15), c.next_event()).await {
                Ok(Some(ServerMessage::StreamAdded { stream }))
                    if stream.user_id == "bench-device" =>
                {
                    break stream
                }
                Ok(Some(_)) => continue,
                other => panic!("device never published: {other:?}"),
            }
        },
    };
    let mut remote = c.subscribe(&stream).await.expect("subscribe");
    let mut dec = H264Decoder::new().expect("decoder");
    let mut depack = H264Packet::default();
    let mut au = Vec::new();
    let mut lat = Vec::new();
    let start = Instant::now();
    while start.elapsed() < warmup + window {
        let Ok(Some(p)) = tokio::time::timeout(Duration::from_secs(2), remote.packets.recv()).await
        else {
            break;
        };
        if p.kind != MediaKind::Video {
            continue;
        }
        if let Ok(b) = depack.depacketize(&p.packet.payload) {
            au.extend_from_slice(&b);
        }
        if p.packet.header.marker {
            let stamp = dec.decode(&au, pattern::read).ok().flatten().flatten();
            au.clear();
            if let (Some(s), true) = (stamp, start.elapsed() > warmup) {
                lat.push((pattern::now_us().saturating_sub(s.capture_us)) as f64 / 1000.0);
            }
        }
    }
    let n = lat.len();
    let _ = c.leave().await;
    (n, pct(&mut lat, 0.5), pct(&mut lat, 0.99))
}

fn browser_glass(base: &str, mode: &str, seconds: u64) -> Option<serde_json::Value> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    if !dir.join("node_modules/playwright-core").is_dir() {
        println!("  (browser part skipped: run scripts/deps.sh)");
        return None;
    }
    let out = Command::new("node")
        .args([
            "glass.mjs",
            mode,
            base,
            &ROOM.to_string(),
            &seconds.to_string(),
        ])
        .current_dir(&dir)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().rev().find(|l| l.starts_with('{'))?;
    serde_json::from_str(line).ok()
}

/// A `callbox device` process from `toml`, and where it reports (from its
/// log) how long it took to its first RTP packet.
fn start_device(
    cfg: &Path,
    toml: &DeviceToml,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    std::fs::write(cfg, toml.text()).expect("config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_callbox"))
        .args(["device", "--config"])
        .arg(cfg)
        .env("RUST_LOG", "info,webrtc=warn,rtc=warn")
        .stderr(Stdio::piped())
        .spawn()
        .expect("callbox device starts");
    let (first_tx, first_rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(ms) = line
                .split("first RTP packet ")
                .nth(1)
                .and_then(|r| r.split(' ').next())
            {
                let _ = first_tx.send(ms.to_owned());
            }
            if line.contains("ERROR") {
                eprintln!("device: {line}");
            }
        }
    });
    (child, first_rx)
}

/// Follow the device's y4m screen file as it grows, for `window` after
/// `warmup`: for each frame that shows a caller's stamp, how long ago that
/// picture was captured (ms) when it reached the screen.
fn glass_to_display(path: &Path, warmup: Duration, window: Duration) -> Vec<f64> {
    use callbox::device::frame::I420;
    use std::io::Read;
    let start = Instant::now();
    let mut file = loop {
        match std::fs::File::open(path) {
            Ok(f) => break f,
            Err(_) if start.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("{}: {e}", path.display()),
        }
    };
    let (w, h) = (640, 480);
    let frame_len = 6 + w * h * 3 / 2;
    let mut pending = Vec::new();
    let mut header_done = false;
    let mut lat = Vec::new();
    let mut chunk = vec![0u8; 1 << 20];
    while start.elapsed() < warmup + window {
        let n = file.read(&mut chunk).unwrap_or(0);
        if n == 0 {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        pending.extend_from_slice(&chunk[..n]);
        if !header_done {
            let Some(end) = pending.iter().position(|&b| b == b'\n') else {
                continue;
            };
            pending.drain(..=end);
            header_done = true;
        }
        while pending.len() >= frame_len {
            let now = pattern::now_us();
            let stamp = I420::packed(&pending[6..frame_len], w, h).and_then(|p| pattern::read(&p));
            if let (Some(s), true) = (stamp, start.elapsed() > warmup) {
                lat.push(now.saturating_sub(s.capture_us) as f64 / 1000.0);
            }
            pending.drain(..frame_len);
        }
    }
    lat
}

/// A caller that publishes the pattern (640x480 at 25 fps, stamped) and a
/// tone to the device, for `secs`.
fn start_caller(
    rt: &tokio::runtime::Runtime,
    room: &LocalRoom,
    secs: u32,
) -> tokio::task::JoinHandle<()> {
    let config = room.client_config("bench-caller");
    rt.spawn(async move {
        let mut c = Client::connect(config).await.expect("caller connects");
        c.join(RoomId::Num(ROOM)).await.expect("caller joins");
        let picture = |n: u32, buf: &mut [u8]| {
            let stamp = Stamp {
                counter: n,
                capture_us: pattern::now_us(),
            };
            pattern_frame(buf, 640, 480, stamp).expect("pattern");
        };
        let mut tone = callbox::device::tone::Tone::new(660.0, 48_000, 0.3);
        let sound = |_: u32, pcm: &mut [i16]| tone.fill(pcm);
        common::send_av(&mut c, (640, 480), secs, picture, sound).await;
        let _ = c.leave().await;
    })
}

/// A device process's CPU and memory while a Rust subscriber watches it.
struct DeviceRun {
    cpu_pct: f64,
    rss_kb: u64,
    hwm_kb: u64,
    glass: (usize, f64, f64),
}

fn measure(
    rt: &tokio::runtime::Runtime,
    viewer: (ClientConfig, u32),
    pid: u32,
    warmup: Duration,
    window: Duration,
) -> DeviceRun {
    let cpu_start = (Instant::now(), proc_cpu_ticks(pid));
    let glass = rt.block_on(rust_glass(viewer, warmup, window));
    let cpu_end = (Instant::now(), proc_cpu_ticks(pid));
    let cpu_pct = match (cpu_start.1, cpu_end.1) {
        (Some(a), Some(b)) => {
            (b - a) as f64 / CLK_TCK / (cpu_end.0 - cpu_start.0).as_secs_f64() * 100.0
        }
        _ => f64::NAN,
    };
    DeviceRun {
        cpu_pct,
        rss_kb: common::proc_kib(Some(pid), "VmRSS:").unwrap_or(0),
        hwm_kb: common::proc_kib(Some(pid), "VmHWM:").unwrap_or(0),
        glass,
    }
}

/// The plain device on Janus: its CPU, memory and glass-to-glass at a
/// Rust subscriber speaking Janus, and its first RTP packet.
fn janus_run(
    rt: &tokio::runtime::Runtime,
    plain: &DeviceToml,
    dir: &Path,
    warmup: Duration,
    window: Duration,
) -> Option<(DeviceRun, String)> {
    let janus = common::janus::Janus::start()?;
    let toml = plain
        .clone()
        .set("room", "backend", "janus")
        .set("room", "url", janus.url())
        .set("room", "room_id", i64::from(common::janus::ROOM))
        .set("room", "allow_insecure_ws", true)
        .set("network", "bind", common::janus::IP);
    let (mut child, first_rx) = start_device(&dir.join("device-janus.toml"), &toml);
    let viewer = (janus.client_config("bench-viewer"), common::janus::ROOM);
    let run = measure(rt, viewer, child.id(), warmup, window);
    let first = first_rx
        .recv_timeout(Duration::from_secs(1))
        .unwrap_or_else(|_| "?".into());
    let _ = child.kill();
    let _ = child.wait();
    Some((run, first))
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    // Re-run inside a loopback-only network namespace (Chromium then gathers 127.0.0.1).
    if full {
        common::bench_in_own_netns();
    }
    let (warmup, window) = if full {
        (Duration::from_secs(3), Duration::from_secs(10))
    } else {
        (Duration::from_secs(1), Duration::from_secs(2))
    };

    let (e50, e99) = encode_bench(if full { 600 } else { 60 });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let room = rt
        .block_on(LocalRoom::start(loopback_config(None, true)))
        .expect("room");
    let dir = std::env::temp_dir().join(format!("callbox-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let plain = DeviceToml::loopback(&room.ws_url(), "bench-device", ROOM, 3600);
    // `-- --glass-only`: only the browser comparison, for chasing latency.
    if full && std::env::args().any(|a| a == "--glass-only") {
        let device = if std::env::var_os("CALLBOX_GLASS_NO_AUDIO").is_some() {
            plain.clone().set("audio", "enabled", false)
        } else {
            plain.clone()
        };
        let browser = browser_comparison(&room, &device, &dir, window, GLASS_RUNS);
        for (d, c) in &browser {
            println!("device {d}\nchromium {c}");
        }
        print_receiver_stats(&browser[0].0, &browser[0].1);
        print_glass_ratios(&browser);
        return;
    }
    let (mut child, first_rx) = start_device(&dir.join("device.toml"), &plain);
    let run = measure(
        &rt,
        (room.client_config("bench-viewer"), ROOM),
        child.id(),
        warmup,
        window,
    );
    let (n, g50, g99) = run.glass;
    let first = first_rx
        .recv_timeout(Duration::from_secs(1))
        .unwrap_or_else(|_| "?".into());

    let _ = child.kill();
    let _ = child.wait();
    let browser = if full {
        browser_comparison(&room, &plain, &dir, window, GLASS_RUNS)
    } else {
        Vec::new()
    };
    // The same device with the whole audio chain on (a WAV file as the
    // speaker, so the echo canceller has a reference to follow).
    let wav = dir.join("speaker.wav").display().to_string();
    let processed = plain
        .clone()
        .set("audio", "playback", "wav")
        .set("audio", "wav_path", wav)
        .set_toml(
            "audio",
            "processing",
            r#"{ echo_cancellation = true, noise_suppression = "moderate", auto_gain = true, high_pass = true }"#,
        )
        .expect("processing keys");
    let (mut with_processing, _) = start_device(&dir.join("device-processing.toml"), &processed);
    let on = measure(
        &rt,
        (room.client_config("bench-viewer"), ROOM),
        with_processing.id(),
        warmup,
        window,
    );
    let _ = with_processing.kill();
    let _ = with_processing.wait();
    // A two-way call with the screen on: a caller publishes the stamped
    // pattern and a tone to the device, which decodes, lip-syncs and
    // composes it into a y4m file at 15 fps, while the subscriber watches
    // the device.
    let screen = dir.join("screen.y4m");
    let two_way_toml = plain
        .clone()
        .set("display", "sink", "y4m")
        .set("display", "path", screen.display().to_string())
        .set("display", "fps", 15);
    let (mut two_way, _) = start_device(&dir.join("device-screen.toml"), &two_way_toml);
    let secs = (warmup + window).as_secs() as u32 + 3;
    let caller = start_caller(&rt, &room, secs);
    let follow = {
        let screen = screen.clone();
        std::thread::spawn(move || glass_to_display(&screen, warmup, window))
    };
    let both = measure(
        &rt,
        (room.client_config("bench-viewer"), ROOM),
        two_way.id(),
        warmup,
        window,
    );
    let mut shown = follow.join().unwrap_or_default();
    caller.abort();
    let _ = two_way.kill();
    let _ = two_way.wait();
    rt.block_on(room.stop());
    // The same device on Janus VideoRoom, in the same run (needs the
    // bench's own namespace for Janus's veth, so full runs only).
    let on_janus = if full {
        janus_run(&rt, &plain, &dir, warmup, window)
    } else {
        None
    };
    let _ = std::fs::remove_dir_all(&dir);

    println!(
        "callbox device benchmark: synthetic 640x480@30 + 440 Hz tone, room service on loopback"
    );
    println!("  encode (OpenH264, pattern)       p50 {e50:.2} ms  p99 {e99:.2} ms per frame");
    let runs = [
        ("", &run, 15, 25),
        (" with audio processing", &on, 15, 25),
        (" two-way, screen on", &both, 25, 40),
    ];
    for (what, r, cpu_target, rss_target) in runs {
        println!(
            "  device process CPU{what:<22} {:.1} % of one core (target <= {cpu_target})",
            r.cpu_pct
        );
        println!(
            "  device process RSS{what:<22} {:.1} MB (peak {:.1} MB; target <= {rss_target})",
            r.rss_kb as f64 / 1024.0,
            r.hwm_kb as f64 / 1024.0
        );
    }
    println!("  start -> first RTP packet        {first} ms (target <= 500)");
    println!("  glass-to-glass, capture stamp -> decoded at the subscriber:");
    println!("    device   -> Rust subscriber    p50 {g50:.1} ms  p99 {g99:.1} ms  ({n} frames)");
    let show = |what: &str, v: &Option<serde_json::Value>| {
        match v {
        Some(v) => println!(
            "    {what} p50 {:.1} ms  p99 {:.1} ms shown; p50 {:.1} ms  p99 {:.1} ms received  ({} frames, {:.1} fps)",
            v["p50_ms"].as_f64().unwrap_or(f64::NAN),
            v["p99_ms"].as_f64().unwrap_or(f64::NAN),
            v["received_p50_ms"].as_f64().unwrap_or(f64::NAN),
            v["received_p99_ms"].as_f64().unwrap_or(f64::NAN),
            v["frames"],
            v["fps"].as_f64().unwrap_or(0.0)
        ),
        None if full => println!("    {what} (no result)"),
        None => {}
    }
    };
    for (i, (d, c)) in browser.iter().enumerate() {
        println!("    run {}:", i + 1);
        show("device   -> Chromium        ", &Some(d.clone()));
        show("Chromium -> Chromium (base) ", &Some(c.clone()));
    }
    if let Some((d, c)) = browser.first() {
        print_receiver_stats(d, c);
    }
    println!(
        "  glass-to-display, a caller's capture stamp -> on the device's screen (y4m, 15 fps, lip-synced):\n    p50 {:.1} ms  p99 {:.1} ms  ({} frames)",
        pct(&mut shown, 0.5),
        pct(&mut shown, 0.99),
        shown.len()
    );
    match &on_janus {
        Some((j, jfirst)) => {
            println!("  the same device on the callbox room service / on Janus VideoRoom (Debian's janus):");
            println!(
                "    CPU                          {:.1} % / {:.1} % of one core",
                run.cpu_pct, j.cpu_pct
            );
            println!(
                "    RSS                          {:.1} MB / {:.1} MB",
                run.rss_kb as f64 / 1024.0,
                j.rss_kb as f64 / 1024.0
            );
            println!("    start -> first RTP packet    {first} ms / {jfirst} ms");
            println!(
                "    glass-to-glass p50 / p99     {g50:.1} / {g99:.1} ms / {:.1} / {:.1} ms ({} frames on Janus)",
                j.glass.1, j.glass.2, j.glass.0
            );
        }
        None if full => {
            println!("  Janus: skipped (Debian's janus is not installed: scripts/deps.sh)")
        }
        None => {}
    }
    assert!(n > 0, "the subscriber decoded no pattern frames");
    assert!(!shown.is_empty(), "the device's screen showed no caller");
    print_glass_ratios(&browser);
}

/// Device -> Chromium beside Chromium -> Chromium, this many times in turn.
const GLASS_RUNS: usize = 5;

/// `runs` pairs, in turn: a fresh device publishing to a Chromium viewer,
/// then (the device gone, so neither competes with it) a Chromium
/// publisher drawing the same pattern. A pair that could not be measured
/// fails the bench.
fn browser_comparison(
    room: &LocalRoom,
    plain: &DeviceToml,
    dir: &Path,
    window: Duration,
    runs: usize,
) -> Vec<(serde_json::Value, serde_json::Value)> {
    let base = format!("http://{}", room.http);
    let mut pairs = Vec::new();
    for run in 0..runs {
        let (mut child, first_rx) = start_device(&dir.join("device-glass.toml"), plain);
        let _ = first_rx.recv_timeout(Duration::from_secs(10));
        let d = browser_glass(&base, "device", window.as_secs());
        let _ = child.kill();
        let _ = child.wait();
        let c = browser_glass(&base, "browser", window.as_secs());
        match (d, c) {
            (Some(d), Some(c)) => pairs.push((d, c)),
            (d, c) => panic!(
                "run {}: glass-to-glass could not be measured (device -> Chromium {}, Chromium -> Chromium baseline {})",
                run + 1,
                if d.is_some() { "ok" } else { "failed" },
                if c.is_some() { "ok" } else { "failed" },
            ),
        }
    }
    pairs
}

/// Where the viewer's time went, by its own getStats, for both senders.
fn print_receiver_stats(d: &serde_json::Value, c: &serde_json::Value) {
    println!("  the Chromium viewer's getStats over the window (run 1), device / Chromium sender:");
    for kind in ["video", "audio"] {
        let keys = [
            "jitter_buffer_ms",
            "jitter_buffer_target_ms",
            "jitter_buffer_minimum_ms",
            "decode_ms",
            "processing_ms",
            "assembly_ms",
            "inter_frame_sd_ms",
            "rtp_jitter_ms",
            "frames_decoded",
            "frames_dropped",
            "freezes",
            "nacks",
            "packets_lost",
        ];
        for k in keys {
            let (a, b) = (&d[kind][k], &c[kind][k]);
            if a.is_null() && b.is_null() {
                continue;
            }
            let f = |v: &serde_json::Value| v.as_f64().map_or("-".into(), |x| format!("{x:.1}"));
            println!("    {kind} {k:<26} {:>8} / {:>8}", f(a), f(b));
        }
    }
}

/// The last lines: the worst ratio over the runs, device / Chromium.
fn print_glass_ratios(pairs: &[(serde_json::Value, serde_json::Value)]) {
    if pairs.is_empty() {
        return;
    }
    let ratio = |k: &str| -> Vec<f64> {
        pairs
            .iter()
            .map(|(d, c)| {
                common::ratio(
                    d[k].as_f64().unwrap_or(f64::NAN),
                    c[k].as_f64().unwrap_or(f64::NAN),
                    &format!("Chromium -> Chromium {k}"),
                )
            })
            .collect()
    };
    for (k, what) in [
        ("received_p50_ms", "capture -> received p50"),
        ("received_p99_ms", "capture -> received p99"),
        ("p50_ms", "p50"),
        ("p99_ms", "p99"),
    ] {
        let r = ratio(k);
        let list: Vec<String> = r.iter().map(|x| format!("{x:.2}")).collect();
        let worst = r.iter().cloned().fold(f64::NAN, f64::max);
        println!(
            "glass-to-glass {what} device->Chromium / Chromium->Chromium: worst {worst:.2}x over {} runs ({})",
            r.len(),
            list.join(", ")
        );
    }
}
