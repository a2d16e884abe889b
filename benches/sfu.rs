//! SFU load generator: one publisher sends a 640x480@30-sized H.264 stream
//! (about 1.1 Mbit/s, keyframe every 2 s) plus Opus at 50 packets/s through
//! the room service on loopback to N subscribers (Rust webrtc clients).
//! Prints the SFU's CPU (its dispatcher and worker threads, from the
//! scheduler's accounting) per forwarded subscriber stream and the
//! forwarding delay (datagram taken up -> its forwarded copies sent,
//! p50/p99, and p99 of the datagrams that end a video frame), beside a
//! baseline measured in the same run: a plain UDP
//! fan-out thread (recv + N sendto, no ICE/DTLS/SRTP) with the same traffic,
//! and how often the forwarding threads were switched out (to wait for
//! input, or preempted by the receivers they woke). Over several sizes,
//! each side's CPU per packet taken in is fitted as a fixed part plus a
//! part per copy, which says where the SFU draws level with the relay.
//! Then many rooms at once (R rooms of one publisher and S subscribers) with
//! 1 and 2 forwarding workers. The ratios are the last lines; a baseline
//! that could not be measured fails the bench.
//!
//! `cargo bench --bench sfu` runs the sweep; under `cargo test` (no
//! `--bench` argument) it runs small cases as a smoke test.
//! `CALLBOX_SFU_NEIGHBOR=<MiB>` runs it all beside a busy neighbor: a
//! lowest-priority thread that walks that much memory whenever a core is
//! free, as another process on the server would take the cores' idle time
//! and caches. The relay and the SFU are measured beside it alike.

#[path = "../tests/common/mod.rs"]
mod common;

use bytes::Bytes;
use callbox::client::Client;
use callbox::room::local::{loopback_config, LocalRoom};
use common::{
    joined, joined_with_stream, percentile, ratio, thread_cpu_ns, thread_switches, threads_cpu_ns,
    threads_named, threads_switches, walk_cache_lines,
};
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Outcome {
    n: usize,
    cpu_cores: f64,
    forwarded_per_s: f64,
    delay_p50_us: u32,
    delay_p99_us: u32,
    /// The delay of datagrams that end a video frame (the relay does not
    /// know frames: its every datagram's).
    frame_delay_p99_us: u32,
    delivered_ratio: f64,
    /// Datagrams per send call (1 for the relay's sendto).
    datagrams_per_call: f64,
    /// Datagrams per message (GSO folding; 1 for the relay).
    datagrams_per_message: f64,
    /// Times the forwarding threads were switched out, per second: to wait
    /// for input, or preempted by the receivers they woke.
    switches_per_s: f64,
}

impl Outcome {
    /// Subscriber streams one core could forward.
    fn streams_per_core(&self) -> f64 {
        self.n as f64 / self.cpu_cores
    }

    /// CPU microseconds per packet taken in (each goes out as `n` copies).
    fn us_per_packet_in(&self) -> f64 {
        self.cpu_cores * 1e6 * self.n as f64 / self.forwarded_per_s
    }
}

/// Least-squares `cost = fixed + per_copy * n` over the runs of one kind:
/// what a packet taken in costs whatever its fan-out, and what each copy
/// adds. None with fewer than two sizes.
fn fit<'a>(runs: impl Iterator<Item = &'a Outcome>) -> Option<(f64, f64)> {
    let points: Vec<(f64, f64)> = runs.map(|o| (o.n as f64, o.us_per_packet_in())).collect();
    let k = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / k;
    let my = points.iter().map(|p| p.1).sum::<f64>() / k;
    let (sxx, sxy) = points.iter().fold((0.0, 0.0), |(xx, xy), (x, y)| {
        (xx + (x - mx) * (x - mx), xy + (x - mx) * (y - my))
    });
    (sxx > 0.0).then(|| (my - sxy / sxx * mx, sxy / sxx))
}

/// The traffic of one 640x480@30 camera call: (payload size, is_video) per tick of 1 ms.
fn frame_size(i: u64) -> usize {
    if i.is_multiple_of(60) {
        25_000
    } else {
        4_000
    }
}

fn video_frame(i: u64) -> Bytes {
    let len = frame_size(i);
    let mut f = vec![0, 0, 0, 1, if i.is_multiple_of(60) { 0x65 } else { 0x41 }];
    f.extend((0..len).map(|j| (j % 251 + 1) as u8));
    Bytes::from(f)
}

/// One room's publisher, streaming until `stop`; subscribers count
/// what they receive into `received`.
async fn start_room(
    room: &LocalRoom,
    room_id: u32,
    subs: usize,
    received: &Arc<AtomicU64>,
    stop: &Arc<AtomicBool>,
) -> (Client, Vec<Client>, tokio::task::JoinHandle<()>) {
    let publisher_id = format!("pub{room_id}");
    let mut publisher = joined(room, &publisher_id, room_id).await;
    let local = publisher.publish(true, true).await.expect("publish");
    let (video, audio) = (
        local.video().cloned().expect("v"),
        local.audio().cloned().expect("a"),
    );
    let mut subscribers = Vec::new();
    for s in 0..subs {
        let config = room.client_config(&format!("sub{room_id}-{s}"));
        let (mut c, info) = joined_with_stream(config, room_id, &publisher_id, 5).await;
        let mut remote = c.subscribe(&info).await.expect("subscribe");
        let r = Arc::clone(received);
        tokio::spawn(async move {
            while remote.packets.recv().await.is_some() {
                r.fetch_add(1, Ordering::Relaxed);
            }
        });
        subscribers.push(c);
    }
    let s1 = Arc::clone(stop);
    let sender = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let mut i = 0u64;
        while !s1.load(Ordering::Relaxed) {
            tick.tick().await;
            let _ = audio
                .write(Bytes::from(vec![0xfc; 100]), Duration::from_millis(20))
                .await;
            // Video on every other-ish tick: 30 fps from a 50 Hz clock.
            if i * 30 / 50 != (i + 1) * 30 / 50 {
                let _ = video
                    .write(video_frame(i * 30 / 50), Duration::from_millis(33))
                    .await;
            }
            i += 1;
        }
    });
    (publisher, subscribers, sender)
}

/// `rooms` rooms of one publisher and `subs` subscribers each, through an
/// SFU with `workers` forwarding threads.
async fn run_sfu(
    (rooms, subs, workers): (usize, usize, usize),
    warmup: Duration,
    measure: Duration,
) -> Outcome {
    let mut config = loopback_config(None, false);
    // Every subscriber comes from 127.0.0.1: lift the per-address cap.
    config.limits.max_connections = config.limits.max_connections.max(rooms * (subs + 1) + 8);
    config.limits.max_connections_per_ip = config.limits.max_connections;
    config.limits.max_members_per_room = config.limits.max_members_per_room.max(subs + 1);
    config.media.workers = Some(workers);
    let room = LocalRoom::start(config).await.expect("room");
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut calls = Vec::new();
    for r in 0..rooms {
        calls.push(start_room(&room, 1 + r as u32, subs, &received, &stop).await);
    }

    tokio::time::sleep(warmup).await;
    let sfu = room_stats(&room).await;
    let sample = || {
        (
            Instant::now(),
            threads_cpu_ns("callbox-sfu"),
            received.load(Ordering::Relaxed),
            threads_switches("callbox-sfu"),
        )
    };
    let (t0, c0, r0, s0) = sample();
    tokio::time::sleep(measure).await;
    let (t1, c1, r1, s1) = sample();
    let sfu_end = room_stats(&room).await;
    stop.store(true, Ordering::Relaxed);
    let wall = (t1 - t0).as_secs_f64();
    let counter = |k: &str| sfu_end[k].as_u64().unwrap_or(0) - sfu[k].as_u64().unwrap_or(0);
    let forwarded = counter("rtp_forwarded") as f64;
    let busiest = sfu_end["workers"].as_array().map_or(0, |w| {
        w.iter().filter(|w| w["peers"].as_u64() > Some(0)).count()
    });
    assert!(
        busiest == workers.min(rooms),
        "rooms should spread over {} workers, {busiest} have peers",
        workers.min(rooms)
    );
    for (mut publisher, subscribers, sender) in calls {
        let _ = sender.await;
        for mut c in subscribers {
            c.close_media().await;
        }
        publisher.close_media().await;
    }
    room.stop().await;
    // A run sums the CPU of every thread so named: none may outlive its room.
    let deadline = Instant::now() + Duration::from_secs(5);
    while threads_named("callbox-sfu") > 0 {
        assert!(
            Instant::now() < deadline,
            "the SFU's threads outlived the stopped room service"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Outcome {
        n: rooms * subs,
        cpu_cores: (c1 - c0) as f64 / 1e9 / wall,
        forwarded_per_s: forwarded / wall,
        delay_p50_us: sfu_end["forward_delay_us_p50"].as_u64().unwrap_or(0) as u32,
        delay_p99_us: sfu_end["forward_delay_us_p99"].as_u64().unwrap_or(0) as u32,
        frame_delay_p99_us: sfu_end["frame_delay_us_p99"].as_u64().unwrap_or(0) as u32,
        delivered_ratio: (r1 - r0) as f64 / forwarded.max(1.0),
        datagrams_per_call: counter("datagrams_sent") as f64 / counter("send_calls").max(1) as f64,
        datagrams_per_message: counter("datagrams_sent") as f64
            / counter("send_messages").max(1) as f64,
        switches_per_s: s1.saturating_sub(s0) as f64 / wall,
    }
}

async fn room_stats(room: &LocalRoom) -> serde_json::Value {
    callbox::room::local::http_request(room.http, "GET", "/api/stats", Some(&room.admin_key), "")
        .await
        .expect("stats")
        .1
}

/// Plain UDP fan-out with the same packet sizes and rates: the kernel's cost
/// of the sends, the floor under any SFU.
fn run_baseline(n: usize, measure: Duration) -> Outcome {
    let relay = UdpSocket::bind("127.0.0.1:0").expect("bind");
    relay
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let relay_addr = relay.local_addr().expect("addr");
    let sinks: Vec<UdpSocket> = (0..n)
        .map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind"))
        .collect();
    let targets: Vec<_> = sinks
        .iter()
        .map(|s| s.local_addr().expect("addr"))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let mut drains = Vec::new();
    for s in sinks {
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let (stop, received) = (Arc::clone(&stop), Arc::clone(&received));
        drains.push(std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if s.recv(&mut buf).is_ok() {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let s2 = Arc::clone(&stop);
    let relay_thread = std::thread::spawn(move || {
        let me = thread_self();
        let sample = || {
            (
                thread_cpu_ns(me).unwrap_or(0),
                thread_switches(me).unwrap_or(0),
            )
        };
        let (start_ns, start_switches) = sample();
        let start = Instant::now();
        let (mut buf, mut delays, mut forwarded) = ([0u8; 2048], Vec::new(), 0u64);
        while !s2.load(Ordering::Relaxed) {
            let Ok(len) = relay.recv(&mut buf) else {
                continue;
            };
            let arrived = Instant::now();
            for t in &targets {
                let _ = relay.send_to(&buf[..len], t);
                forwarded += 1;
            }
            delays.push(arrived.elapsed().as_micros() as u32);
        }
        let (end_ns, end_switches) = sample();
        let ns = end_ns.saturating_sub(start_ns);
        let switches = end_switches.saturating_sub(start_switches);
        (ns, switches, start.elapsed(), delays, forwarded)
    });
    // Publisher: RTP-sized packets (1200-byte video fragments, 100-byte audio).
    let src = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let t0 = Instant::now();
    let mut i = 0u64;
    while t0.elapsed() < measure {
        let tick = t0 + Duration::from_millis(20 * (i + 1));
        let _ = src.send_to(&[0u8; 112], relay_addr);
        if i * 30 / 50 != (i + 1) * 30 / 50 {
            let mut left = frame_size(i * 30 / 50);
            while left > 0 {
                let chunk = left.min(1188);
                let _ = src.send_to(&vec![0u8; chunk + 12], relay_addr);
                left -= chunk;
            }
        }
        i += 1;
        std::thread::sleep(tick.saturating_duration_since(Instant::now()));
    }
    stop.store(true, Ordering::Relaxed);
    let (ns, switches, wall, mut delays, forwarded) = relay_thread.join().expect("relay");
    drains.into_iter().for_each(|d| {
        let _ = d.join();
    });
    let wall = wall.as_secs_f64();
    let delay_p99_us = percentile(&mut delays, 0.99);
    Outcome {
        n,
        cpu_cores: ns as f64 / 1e9 / wall,
        forwarded_per_s: forwarded as f64 / wall,
        delay_p50_us: percentile(&mut delays, 0.5),
        delay_p99_us,
        frame_delay_p99_us: delay_p99_us,
        delivered_ratio: received.load(Ordering::Relaxed) as f64 / forwarded.max(1) as f64,
        datagrams_per_call: 1.0,
        datagrams_per_message: 1.0,
        switches_per_s: switches as f64 / wall,
    }
}

/// The neighbor of `CALLBOX_SFU_NEIGHBOR`, if asked for: how many MiB it walks.
fn start_neighbor() -> Option<usize> {
    let asked = std::env::var("CALLBOX_SFU_NEIGHBOR").ok()?;
    let mib: usize = asked
        .parse()
        .unwrap_or_else(|_| panic!("CALLBOX_SFU_NEIGHBOR={asked}: not a size in MiB"));
    let walk = move || {
        // Linux: PRIO_PROCESS with 0 is the calling thread alone.
        // SAFETY: no pointers; a failure leaves the priority as it was.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
        let mut memory = vec![0u8; mib << 20];
        loop {
            walk_cache_lines(&mut memory);
        }
    };
    std::thread::Builder::new()
        .name("neighbor".into())
        .spawn(walk)
        .expect("neighbor thread");
    Some(mib)
}

fn thread_self() -> u64 {
    std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| p.file_name()?.to_str()?.parse().ok())
        .unwrap_or(0)
}

fn print_row(what: &str, o: &Outcome) {
    println!(
        "{:<16} {:>5} {:>10.3} {:>12.0} {:>16.0} {:>14} {:>14} {:>14} {:>10.1}% {:>9.1} {:>9.2} {:>10.0}",
        what,
        o.n,
        o.cpu_cores,
        o.forwarded_per_s,
        o.streams_per_core(),
        o.delay_p50_us,
        o.delay_p99_us,
        o.frame_delay_p99_us,
        o.delivered_ratio * 100.0,
        o.datagrams_per_call,
        o.datagrams_per_message,
        o.switches_per_s,
    );
}

fn check(o: &Outcome) {
    assert!(o.forwarded_per_s > 0.0, "the SFU forwarded nothing");
    assert!(
        o.delivered_ratio > 0.9,
        "subscribers lost {:.1}% of forwarded packets",
        (1.0 - o.delivered_ratio) * 100.0
    );
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (sizes, many, warmup, measure): (&[usize], _, _, _) = if full {
        (
            &[10, 50, 100],
            (20, 10),
            Duration::from_secs(3),
            Duration::from_secs(10),
        )
    } else {
        (&[2], (2, 2), Duration::from_secs(1), Duration::from_secs(2))
    };
    // CALLBOX_SFU_BENCH="100 0x0" narrows a run to N = 100 and no many-rooms
    // part (for profiling).
    let narrowed: Option<(Vec<usize>, (usize, usize))> =
        std::env::var("CALLBOX_SFU_BENCH").ok().and_then(|v| {
            let (n, rooms) = v.split_once(' ')?;
            let (r, s) = rooms.split_once('x')?;
            let sizes = n.split(',').filter_map(|x| x.parse().ok()).collect();
            Some((sizes, (r.parse().ok()?, s.parse().ok()?)))
        });
    let (sizes, many) = match &narrowed {
        Some((n, m)) => (&n[..], *m),
        None => (sizes, many),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "SFU forwarding benchmark (640x480@30 H.264 + Opus publishers -> subscribers, loopback)"
    );
    if let Some(mib) = start_neighbor() {
        println!("beside a neighbor: a nice-19 thread walking {mib} MiB whenever a core is free");
    }
    println!(
        "{:<16} {:>5} {:>10} {:>12} {:>16} {:>14} {:>14} {:>14} {:>11} {:>9} {:>9} {:>10}",
        "what",
        "N",
        "cpu cores",
        "pkts fwd/s",
        "streams per core",
        "delay p50 us",
        "delay p99 us",
        "frame p99 us",
        "delivered",
        "dgram/call",
        "dgram/msg",
        "switches/s"
    );
    let mut runs = Vec::new();
    for &n in sizes {
        let base = run_baseline(n, measure);
        let sfu = rt.block_on(run_sfu((1, n, 1), warmup, measure));
        print_row("udp-relay", &base);
        print_row("sfu 1 worker", &sfu);
        check(&sfu);
        let r = ratio(
            sfu.streams_per_core(),
            base.streams_per_core(),
            "the UDP relay's CPU",
        );
        runs.push((base, sfu, r));
    }
    let (rooms, subs) = many;
    let mut many_rooms = Vec::new();
    for workers in [1, 2].into_iter().filter(|_| rooms * subs > 0) {
        let o = rt.block_on(run_sfu((rooms, subs, workers), warmup, measure));
        print_row(&format!("{rooms}x{subs} {workers} worker"), &o);
        check(&o);
        many_rooms.push((workers, o));
    }
    let sfu_fit = fit(runs.iter().map(|(_, s, _)| s));
    if let (Some((sa, sb)), Some((ra, rb))) = (sfu_fit, fit(runs.iter().map(|(b, _, _)| b))) {
        println!(
            "CPU per packet taken in: SFU {sa:.1} us + {sb:.2} us per copy, UDP relay {ra:.1} us + {rb:.2} us per copy"
        );
        if rb > sb {
            println!(
                "the SFU draws level with the relay from about N = {:.0}",
                (sa - ra) / (rb - sb)
            );
        }
    }
    for (_, sfu, r) in &runs {
        println!(
            "SFU / UDP relay streams per core at N = {}: {r:.2}x (SFU delay p99 {} us, of a frame's last packet {} us)",
            sfu.n, sfu.delay_p99_us, sfu.frame_delay_p99_us
        );
    }
    for (workers, o) in &many_rooms {
        println!(
            "{rooms} rooms x {subs} subscribers, {workers} worker(s): {:.0} streams per core, {:.2} cores, delay p99 {} us",
            o.streams_per_core(),
            o.cpu_cores,
            o.delay_p99_us
        );
    }
}
