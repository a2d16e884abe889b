//! Helpers shared by the integration tests: a room on loopback, clients
//! with valid userSigs, media of known content and its checks.
#![allow(dead_code)]

pub mod janus;
pub mod str0m_pair;

use bytes::Bytes;
use callbox::client::peer::RemotePacket;
use callbox::client::{Client, ClientConfig, LocalTrack, RoomId};
use callbox::device::config::DeviceConfig;
use callbox::device::daemon::Device;
use callbox::protocol::{MediaKind, ServerMessage, StreamInfo};
use callbox::room::local::{loopback_config, DeviceToml, LocalRoom};
use rtc::rtp::codec::h264::H264Packet;
use rtc::rtp::packetizer::Depacketizer;
use std::path::Path;
use std::time::Duration;
use std::time::Instant;
use tokio::sync::mpsc;
use tokio::sync::oneshot;

/// A port free on loopback now, for TCP and, with `udp`, under the same
/// number for UDP too (the HIL guest's media port is forwarded as itself).
pub fn free_port(udp: bool) -> u16 {
    use std::net::Ipv4Addr;
    loop {
        let tcp = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = tcp.local_addr().expect("addr").port();
        if !udp || std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
}

/// `sh -c script` in a new network namespace with only loopback up, so
/// Chromium gathers 127.0.0.1 and nothing leaves the machine. Root (CI)
/// makes the namespace directly; others need a user namespace too.
/// Arguments added to the command are the script's `$0 $@`.
pub fn in_loopback_netns(script: &str) -> std::process::Command {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut cmd = std::process::Command::new("unshare");
    if !root {
        cmd.args(["--user", "--map-root-user"]);
    }
    cmd.args([
        "--net",
        "sh",
        "-c",
        &format!("ip link set lo up && {script}"),
    ]);
    cmd
}

/// Run `test` in a fresh loopback-only network namespace: re-execute this
/// test binary there for just that test.
#[allow(dead_code)]
pub fn in_own_netns(test: &str) -> bool {
    if std::env::var_os("CALLBOX_TEST_NETNS").is_some() {
        return true;
    }
    let me = std::env::current_exe().expect("test binary");
    let status = in_loopback_netns("exec \"$0\" \"$@\"")
        .arg(me)
        .args([test, "--exact", "--nocapture"])
        .env("CALLBOX_TEST_NETNS", "1")
        .status()
        .expect("unshare");
    assert!(
        status.success(),
        "{test} in its network namespace: {status}"
    );
    false
}

/// A server process a test started: killed when dropped, so a failing
/// test leaves nothing running.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A bench's `main`: unless already there, run this executable again with
/// the same arguments in a loopback-only network namespace, and exit with
/// its status.
pub fn bench_in_own_netns() {
    if std::env::var_os("CALLBOX_BENCH_NS").is_some() {
        return;
    }
    let me = std::env::current_exe().expect("exe");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let status = in_loopback_netns("exec \"$0\" \"$@\"")
        .arg(&me)
        .args(&args)
        .env("CALLBOX_BENCH_NS", "1")
        .status()
        .expect("unshare");
    std::process::exit(status.code().unwrap_or(1));
}

/// CPU time, ns, of this process's threads whose name starts with
/// `prefix`, from the scheduler's own accounting (no clock-tick rounding).
pub fn threads_cpu_ns(prefix: &str) -> u64 {
    threads_sum(prefix, thread_cpu_ns)
}

/// Times this process's threads whose name starts with `prefix` were
/// switched out: to wait (a wake follows) or preempted.
pub fn threads_switches(prefix: &str) -> u64 {
    threads_sum(prefix, thread_switches)
}

/// How many of this process's threads have a name starting with `prefix`.
pub fn threads_named(prefix: &str) -> u64 {
    threads_sum(prefix, |_| Some(1))
}

/// `each` summed over this process's threads whose name starts with `prefix`.
fn threads_sum(prefix: &str, each: impl Fn(u64) -> Option<u64>) -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
        .filter(|tid| {
            std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
                .is_ok_and(|c| c.trim().starts_with(prefix))
        })
        .filter_map(each)
        .sum()
}

/// CPU time of one thread of this process, ns.
pub fn thread_cpu_ns(tid: u64) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Context switches of one thread of this process, voluntary and not.
pub fn thread_switches(tid: u64) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).ok()?;
    Some(
        status_field(&s, "voluntary_ctxt_switches:")?
            + status_field(&s, "nonvoluntary_ctxt_switches:")?,
    )
}

/// The number after `field` in the text of a `/proc/.../status` file.
fn status_field(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS:`, `VmHWM:`); this
/// process's own with `None`.
pub fn proc_kib(pid: Option<u32>, field: &str) -> Option<u64> {
    let who = pid.map_or_else(|| "self".to_owned(), |p| p.to_string());
    let status = std::fs::read_to_string(format!("/proc/{who}/status")).ok()?;
    status_field(&status, field)
}

/// `a / b` for a bench's ratio line, failing the bench when the baseline
/// `b` was not measured.
pub fn ratio(a: f64, b: f64, baseline: &str) -> f64 {
    assert!(
        b > 0.0 && b.is_finite(),
        "the baseline ({baseline}) could not be measured: {b}"
    );
    a / b
}

/// One write per cache line of `memory`: a walk holds as much of the
/// caches as it covers, as another busy program's would.
pub fn walk_cache_lines(memory: &mut [u8]) {
    for i in (0..memory.len()).step_by(64) {
        memory[i] = memory[i].wrapping_add(1);
    }
    std::hint::black_box(memory);
}

/// The `q` quantile (0..=1) of `v`, sorting it; the default when empty.
pub fn percentile<T: Ord + Copy + Default>(v: &mut [T], q: f64) -> T {
    v.sort_unstable();
    v.get(((v.len().max(1) - 1) as f64 * q).round() as usize)
        .copied()
        .unwrap_or_default()
}

pub async fn room() -> LocalRoom {
    let _ = env_logger::builder().is_test(true).try_init();
    LocalRoom::start(loopback_config(None, false))
        .await
        .expect("room service starts")
}

#[allow(unused_imports)]
pub use callbox::room::local::demo_user_sig as sig;

pub async fn joined(room: &LocalRoom, user: &str, room_id: u32) -> Client {
    let mut c = Client::connect(room.client_config(user))
        .await
        .expect("connect");
    c.join(RoomId::Num(room_id)).await.expect("join");
    c
}

/// Join and find `publisher`'s stream: in the join reply when it already
/// publishes, otherwise from a later `stream-added` (within `secs`).
pub async fn joined_with_stream(
    config: ClientConfig,
    room_id: u32,
    publisher: &str,
    secs: u64,
) -> (Client, StreamInfo) {
    let mut c = Client::connect(config).await.expect("connect");
    let existing = c.join(RoomId::Num(room_id)).await.expect("join");
    let stream = match existing.into_iter().find(|s| s.user_id == publisher) {
        Some(s) => s,
        None => expect_stream_added(&mut c, secs, Some(publisher)).await,
    };
    (c, stream)
}

/// Wait for an event matching `pred`, skipping others; panics after `secs`.
pub async fn expect_event(
    c: &mut Client,
    secs: u64,
    what: &str,
    pred: impl Fn(&ServerMessage) -> bool,
) -> ServerMessage {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        match tokio::time::timeout_at(deadline, c.next_event()).await {
            Ok(Some(ev)) if pred(&ev) => return ev,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("{what}: signaling closed"),
            Err(_) => panic!("{what}: not seen within {secs}s"),
        }
    }
}

/// Wait for `stream-added` of `user`'s publication (any user's when `None`).
pub async fn expect_stream_added(c: &mut Client, secs: u64, user: Option<&str>) -> StreamInfo {
    let ev = expect_event(c, secs, "stream-added", |e| {
        matches!(e, ServerMessage::StreamAdded { stream } if user.is_none_or(|u| stream.user_id == u))
    })
    .await;
    match ev {
        ServerMessage::StreamAdded { stream } => stream,
        _ => unreachable!("expect_event matched stream-added"),
    }
}

/// Byte `j` of frame `i`: never 0, so no start code can appear inside a NAL.
fn pattern(i: u32, j: usize) -> u8 {
    ((i as usize * 7 + j * 13) % 255 + 1) as u8
}

/// Frame `i` of the known video: one Annex-B NAL (IDR every 30th), with
/// the frame number in its first bytes, large enough to need FU-A fragments.
pub fn video_frame(i: u32) -> Bytes {
    let nal_header = if i.is_multiple_of(30) { 0x65 } else { 0x41 };
    let len = 1500 + (i as usize % 5) * 700;
    let mut f = vec![0, 0, 0, 1, nal_header];
    f.extend(i.to_be_bytes().map(|b| b | 0x80)); // index, made non-zero
    f.extend((0..len).map(|j| pattern(i, j)));
    Bytes::from(f)
}

pub fn video_frame_index(frame: &[u8]) -> Option<u32> {
    let b = frame.get(5..9)?;
    Some(u32::from_be_bytes([
        b[0] & 0x7f,
        b[1] & 0x7f,
        b[2] & 0x7f,
        b[3] & 0x7f,
    ]))
}

/// The index of every video frame in `got`, each checked to be exactly
/// the frame sent with that index (`who` names the receiver on failure).
pub fn intact_frame_indices(got: &Received, who: &str) -> Vec<u32> {
    got.video_frames
        .iter()
        .map(|f| {
            let i = video_frame_index(f).expect("index");
            assert_eq!(
                f,
                &video_frame(i),
                "{who}: frame {i} differs from what was sent"
            );
            i
        })
        .collect()
}

/// Packet `i` of the known audio: an Opus-sized payload carrying its index.
pub fn audio_packet(i: u32) -> Bytes {
    let mut p = vec![0xfc];
    p.extend(i.to_be_bytes());
    p.extend((0..80).map(|j| pattern(i, j)));
    Bytes::from(p)
}

/// Send `frames` video frames and audio packets at 30 fps / 50 pps.
pub async fn send_known_media(video: Option<LocalTrack>, audio: Option<LocalTrack>, frames: u32) {
    let v = async {
        if let Some(v) = video {
            let mut tick = tokio::time::interval(Duration::from_millis(33));
            for i in 0..frames {
                tick.tick().await;
                if v.write(video_frame(i), Duration::from_millis(33))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
    };
    let a = async {
        if let Some(a) = audio {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            for i in 0..frames * 5 / 3 {
                tick.tick().await;
                if a.write(audio_packet(i), Duration::from_millis(20))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
    };
    tokio::join!(v, a);
}

/// What a subscriber got: complete video frames (depacketized) and audio payloads.
#[derive(Default, Debug)]
pub struct Received {
    pub video_frames: Vec<Bytes>,
    pub audio_payloads: Vec<Bytes>,
    pub depacketize_errors: usize,
}

/// Collect until `idle` passes without a packet or `total` has elapsed.
pub async fn receive(
    packets: &mut mpsc::Receiver<RemotePacket>,
    idle: Duration,
    total: Duration,
) -> Received {
    let mut r = Received::default();
    let mut h264 = H264Packet::default();
    let mut frame = Vec::new();
    let deadline = tokio::time::Instant::now() + total;
    loop {
        let wait = tokio::time::timeout(idle, packets.recv());
        let p = match tokio::time::timeout_at(deadline, wait).await {
            Ok(Ok(Some(p))) => p,
            _ => break,
        };
        match p.kind {
            MediaKind::Audio => r.audio_payloads.push(p.packet.payload.clone()),
            MediaKind::Video => {
                match h264.depacketize(&p.packet.payload) {
                    Ok(b) => frame.extend_from_slice(&b),
                    Err(_) => r.depacketize_errors += 1,
                }
                if p.packet.header.marker {
                    r.video_frames.push(Bytes::from(std::mem::take(&mut frame)));
                }
            }
        }
    }
    r
}

/// Pattern frames decoded from what a subscriber received, and the
/// frequency of its audio's tone (after its first half second).
#[allow(dead_code)]
pub fn pattern_frames_and_tone(got: &Received) -> (usize, Option<f64>) {
    use callbox::device::audio::{OpusDecoder, FRAME_SAMPLES, SAMPLE_RATE};
    use callbox::device::{h264::H264Decoder, pattern, tone};
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
    (stamps, hz)
}

/// The shared loopback device config for `room_id`, as `tweak` changes it.
pub fn device_config(
    room: &LocalRoom,
    room_id: u32,
    user: &str,
    tweak: impl FnOnce(DeviceToml) -> DeviceToml,
) -> DeviceConfig {
    let toml = tweak(DeviceToml::loopback(&room.ws_url(), user, room_id, 3600));
    DeviceConfig::parse(Path::new("test-device.toml"), &toml.text()).expect("config")
}

/// Run the device's call in the background until the returned sender fires.
pub fn start_device(
    config: DeviceConfig,
) -> (oneshot::Sender<()>, tokio::task::JoinHandle<Device>) {
    let (stop, task, _) = start_linked_device(config, Default::default());
    (stop, task)
}

/// [`start_device`], steered through `link` (mute, notifications), with
/// the device's counters.
pub fn start_linked_device(
    config: DeviceConfig,
    link: callbox::device::daemon::CallLink,
) -> (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Device>,
    std::sync::Arc<callbox::device::stats::MediaStats>,
) {
    let (stop, stopped) = oneshot::channel::<()>();
    let mut device = Device::open(config, Instant::now()).expect("device opens");
    let stats = device.stats();
    let task = tokio::spawn(async move {
        let r = device
            .call(
                async {
                    let _ = stopped.await;
                },
                link,
            )
            .await;
        assert!(r.is_ok(), "call ended with {r:?}");
        device
    });
    (stop, task, stats)
}

/// A caller's camera and microphone on one clock, for `secs`: every 20 ms
/// an Opus frame of what `sound(n, pcm)` writes (frame `n`, 960 samples),
/// every 40 ms (25 fps) an H.264 frame of what `picture(n, i420)` draws at
/// `size` (packed I420), both sent as they are "captured".
pub async fn send_av(
    client: &mut Client,
    size: (usize, usize),
    secs: u32,
    mut picture: impl FnMut(u32, &mut [u8]),
    mut sound: impl FnMut(u32, &mut [i16]),
) {
    use callbox::device::audio::{OpusEncoder, FRAME, FRAME_SAMPLES};
    use callbox::device::frame::I420;
    use callbox::device::h264::{EncoderSettings, OpenH264Encoder, VideoEncoder};
    use callbox::device::video_source::{Frame, Pixels};
    let local = client.publish(true, true).await.expect("publish");
    let (audio, video) = (
        local.audio().cloned().expect("audio track"),
        local.video().cloned().expect("video track"),
    );
    let mut opus = OpusEncoder::new(64_000).expect("opus");
    let mut h264 = OpenH264Encoder::new(EncoderSettings {
        width: size.0,
        height: size.1,
        fps: 25,
        bitrate_bps: 1_000_000,
        keyframe_interval_frames: 50,
        library: None,
    })
    .expect("encoder");
    let mut pcm = vec![0i16; FRAME_SAMPLES];
    let mut buf = vec![0u8; size.0 * size.1 * 3 / 2];
    let mut au = Vec::new();
    let start = tokio::time::Instant::now();
    for n in 0..secs * 50 {
        tokio::time::sleep_until(start + FRAME * n).await;
        sound(n, &mut pcm);
        let packet = Bytes::copy_from_slice(opus.encode(&pcm).expect("opus encode"));
        audio.write(packet, FRAME).await.expect("audio write");
        if n % 2 == 0 {
            picture(n, &mut buf);
            let frame = Frame {
                pixels: Pixels::I420(I420::packed(&buf, size.0, size.1).expect("i420")),
                capture_us: 0,
                copies: 0,
                dmabuf: None,
            };
            if h264
                .encode(&frame, n == 0, &mut au)
                .expect("encode")
                .is_some()
            {
                let unit = Bytes::copy_from_slice(&au);
                video.write(unit, FRAME * 2).await.expect("video write");
            }
        }
    }
}
