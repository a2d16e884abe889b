//! Connection load on the room service: N clients join, publish audio and
//! leave in a loop on loopback for a bounded time, while one publisher
//! streams to two subscribers through the same SFU. Prints joins/s and
//! publishes/s, join latency (p50/p99), the process's peak RSS and its
//! RSS once everyone has left, and the SFU's forwarding delay under the
//! load beside the same delay measured without it in the same run.
//!
//! `cargo bench --bench rooms` runs N = 20 and 50 (the per-address cap)
//! for 10 s each; under `cargo test` (no `--bench`) one small case runs as
//! a smoke test.

#[path = "../tests/common/mod.rs"]
mod common;

use callbox::client::{Client, RoomId};
use callbox::room::local::{loopback_config, LocalRoom};
use common::{audio_packet, joined, joined_with_stream, percentile};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MEDIA_ROOM: u32 = 9000;

/// This process's resident memory, MiB.
fn rss_mib() -> f64 {
    common::proc_kib(None, "VmRSS:").unwrap_or(0) as f64 / 1024.0
}

/// SFU forwarding delay p50/p99 (µs) over a window, from `/api/stats`.
async fn forward_delay(room: &LocalRoom) -> (u64, u64) {
    let Ok((_, s)) = callbox::room::local::http_request(
        room.http,
        "GET",
        "/api/stats",
        Some(&room.admin_key),
        "",
    )
    .await
    else {
        return (0, 0);
    };
    (
        s["forward_delay_us_p50"].as_u64().unwrap_or(0),
        s["forward_delay_us_p99"].as_u64().unwrap_or(0),
    )
}

/// One client's loop: connect, join, publish audio, leave; join latencies.
async fn churn(room: &LocalRoom, who: usize, stop: Arc<AtomicBool>) -> (Vec<Duration>, usize) {
    let (mut joins, mut publishes) = (Vec::new(), 0);
    let mut round = 0;
    while !stop.load(Ordering::Relaxed) {
        let user = format!("load-{who}-{round}");
        round += 1;
        let t = Instant::now();
        let Ok(mut c) = Client::connect(room.client_config(&user)).await else {
            continue;
        };
        if c.join(RoomId::Num(100 + (who % 10) as u32)).await.is_err() {
            continue;
        }
        joins.push(t.elapsed());
        if c.publish(true, false).await.is_ok() {
            publishes += 1;
        }
        let _ = c.leave().await;
    }
    (joins, publishes)
}

/// A publisher sending audio to two subscribers, for the forwarding delay.
async fn media_flow(room: &LocalRoom, stop: Arc<AtomicBool>) {
    let mut publisher = joined(room, "speaker", MEDIA_ROOM).await;
    let local = publisher.publish(true, false).await.expect("publish");
    let track = local.audio().cloned().expect("audio track");
    let mut listeners = Vec::new();
    for name in ["ear-1", "ear-2"] {
        let (mut c, s) =
            joined_with_stream(room.client_config(name), MEDIA_ROOM, "speaker", 5).await;
        let remote = c.subscribe(&s).await.expect("subscribe");
        listeners.push((c, remote));
    }
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let _ = track
            .write(audio_packet(i), Duration::from_millis(20))
            .await;
        i += 1;
        for (_, r) in listeners.iter_mut() {
            while r.packets.try_recv().is_ok() {}
        }
    }
}

async fn run(n: usize, window: Duration) {
    let room = LocalRoom::start(loopback_config(None, false))
        .await
        .expect("room");
    let stop = Arc::new(AtomicBool::new(false));
    let flow_stop = Arc::new(AtomicBool::new(false));
    let room = Arc::new(room);
    let flow = tokio::spawn({
        let (room, s) = (Arc::clone(&room), Arc::clone(&flow_stop));
        async move { media_flow(&room, s).await }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let quiet = forward_delay(&room).await;
    let peak = Arc::new(Mutex::new(0f64));
    let sampler = tokio::spawn({
        let (peak, stop) = (Arc::clone(&peak), Arc::clone(&stop));
        async move {
            while !stop.load(Ordering::Relaxed) {
                let now = rss_mib();
                {
                    let mut p = peak.lock().unwrap_or_else(|e| e.into_inner());
                    *p = p.max(now);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let t = Instant::now();
    let workers: Vec<_> = (0..n)
        .map(|who| {
            let (room, stop) = (Arc::clone(&room), Arc::clone(&stop));
            tokio::spawn(async move { churn(&room, who, stop).await })
        })
        .collect();
    tokio::time::sleep(window).await;
    let loaded = forward_delay(&room).await;
    stop.store(true, Ordering::Relaxed);
    let mut joins = Vec::new();
    let mut publishes = 0;
    for w in workers {
        if let Ok((j, p)) = w.await {
            joins.extend(j);
            publishes += p;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let _ = sampler.await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_mib();
    flow_stop.store(true, Ordering::Relaxed);
    let _ = flow.await;
    let peak = *peak.lock().unwrap_or_else(|e| e.into_inner());
    println!(
        "{n:>4} {:>9.1} {:>12.1} {:>10.1} {:>10.1} {:>10.0} {:>10.0} {:>15} {:>15}",
        joins.len() as f64 / secs,
        publishes as f64 / secs,
        percentile(&mut joins, 0.5).as_secs_f64() * 1000.0,
        percentile(&mut joins, 0.99).as_secs_f64() * 1000.0,
        peak,
        after,
        format!("{}/{}", quiet.0, quiet.1),
        format!("{}/{}", loaded.0, loaded.1),
    );
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (sizes, window): (&[usize], _) = if full {
        (&[20, 45], Duration::from_secs(10))
    } else {
        (&[4], Duration::from_secs(2))
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!("Room service under connection load (N clients join, publish audio, leave in a loop; loopback)");
    println!(
        "{:>4} {:>9} {:>12} {:>10} {:>10} {:>10} {:>10} {:>15} {:>15}",
        "N",
        "joins/s",
        "publishes/s",
        "join p50",
        "join p99",
        "peak RSS",
        "RSS after",
        "fwd us quiet",
        "fwd us loaded"
    );
    println!(
        "{:>4} {:>9} {:>12} {:>10} {:>10} {:>10} {:>10} {:>15} {:>15}",
        "", "", "", "ms", "ms", "MiB", "MiB", "p50/p99", "p50/p99"
    );
    for &n in sizes {
        rt.block_on(run(n, window));
    }
}
