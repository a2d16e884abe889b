//! The SFU's batched forwarding and its worker threads, end to end on
//! loopback with Rust clients (webrtc crate, real ICE/DTLS/SRTP): a burst
//! of hundreds of datagrams reaches every subscriber whole and in order,
//! and rooms on different workers stay apart.

mod common;

use callbox::client::{Client, LocalTrack, RemoteStream};
use callbox::room::local::{loopback_config, LocalRoom};
use common::*;
use std::time::Duration;

/// One test at a time: the clients' own sockets (the webrtc crate's, at
/// the default buffer size) must drain a burst, which takes a free core.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn room_with_workers(workers: usize) -> LocalRoom {
    let _ = env_logger::builder().is_test(true).try_init();
    let mut config = loopback_config(None, false);
    config.media.workers = Some(workers);
    LocalRoom::start(config).await.expect("room service starts")
}

/// A publisher in `room_id` and `subs` subscribers to its stream.
async fn call(
    room: &LocalRoom,
    room_id: u32,
    subs: usize,
) -> (Client, LocalTrack, Vec<(Client, RemoteStream)>) {
    let mut publisher = joined(room, &format!("pub-{room_id}"), room_id).await;
    let local = publisher.publish(false, true).await.expect("publish");
    let video = local.video().cloned().expect("video track");
    let mut subscribers = Vec::new();
    for s in 0..subs {
        let config = room.client_config(&format!("sub-{room_id}-{s}"));
        let (mut c, info) = joined_with_stream(config, room_id, &format!("pub-{room_id}"), 5).await;
        let remote = c.subscribe(&info).await.expect("subscribe");
        subscribers.push((c, remote));
    }
    (publisher, video, subscribers)
}

/// Frames `first..first + n`, each checked against what was sent.
fn assert_frames(got: &Received, first: u32, n: u32, who: &str) {
    let indices = intact_frame_indices(got, who);
    assert_eq!(
        indices,
        (first..first + n).collect::<Vec<_>>(),
        "{who}: every frame, in order"
    );
    assert_eq!(got.depacketize_errors, 0, "{who}");
}

async fn stats(room: &LocalRoom) -> serde_json::Value {
    callbox::room::local::http_request(room.http, "GET", "/api/stats", Some(&room.admin_key), "")
        .await
        .expect("stats")
        .1
}

/// Frame indices whose bytes stay under 0x80 (the index encoding's range).
const OTHER: u32 = 0x4000;

/// Sent unpaced, 30 frames are about 90 datagrams at the SFU at once and
/// 450 leaving it for 5 subscribers; every subscriber decrypts and
/// reassembles every frame, in order, and the SFU sent them in batches.
/// (The clients' sockets, the webrtc crate's, keep the kernel's default
/// buffer: a burst much larger overflows them, not the SFU.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_reaches_every_subscriber_whole_and_in_order() {
    const FRAMES: u32 = 30;
    let _one = ONE_AT_A_TIME.lock().await;
    let room = room_with_workers(1).await;
    let (_publisher, video, mut subscribers) = call(&room, 4100, 5).await;
    // Media flows to every subscriber before the burst (ICE, DTLS done).
    let mut heard = vec![0usize; subscribers.len()];
    for i in 0..120 {
        let _ = video
            .write(video_frame(OTHER + i), Duration::from_millis(33))
            .await;
        tokio::time::sleep(Duration::from_millis(33)).await;
        for (n, (_, remote)) in subscribers.iter_mut().enumerate() {
            while remote.packets.try_recv().is_ok() {
                heard[n] += 1;
            }
        }
        if heard.iter().all(|h| *h > 30) {
            break;
        }
    }
    assert!(
        heard.iter().all(|h| *h > 30),
        "media never flowed: {heard:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (_, remote) in subscribers.iter_mut() {
        while remote.packets.try_recv().is_ok() {}
    }
    let before = stats(&room).await;
    // Every subscriber reads at once: a client's own queue is bounded too.
    let readers: Vec<_> = subscribers
        .into_iter()
        .map(|(client, mut remote)| {
            tokio::spawn(async move {
                let got = receive(
                    &mut remote.packets,
                    Duration::from_secs(1),
                    Duration::from_secs(10),
                )
                .await;
                (client, got)
            })
        })
        .collect();
    let first = 0;
    for i in first..first + FRAMES {
        video
            .write(video_frame(i), Duration::from_millis(33))
            .await
            .expect("write");
    }
    let mut got = Vec::new();
    for reader in readers {
        got.push(reader.await.expect("reader"));
    }
    let after = stats(&room).await;
    let delta = |k: &str| after[k].as_u64().unwrap_or(0) - before[k].as_u64().unwrap_or(0);
    eprintln!(
        "burst: {} datagrams in, {} RTP forwarded, {} sent in {} calls",
        delta("datagrams_in"),
        delta("rtp_forwarded"),
        delta("datagrams_sent"),
        delta("send_calls")
    );
    for (n, (_client, got)) in got.iter().enumerate() {
        assert_frames(got, first, FRAMES, &format!("subscriber {n}"));
    }
    assert_eq!(delta("datagrams_worker_busy"), 0);
    assert_eq!(delta("datagrams_send_dropped"), 0);
    assert!(
        delta("datagrams_sent") > 2 * delta("send_calls"),
        "sent in batches: {} datagrams in {} calls",
        delta("datagrams_sent"),
        delta("send_calls")
    );
    room.stop().await;
}

/// Two rooms on two workers: each room's publisher and subscribers on one
/// worker, and each subscriber gets exactly its own room's frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_on_different_workers_are_isolated() {
    const FRAMES: u32 = 120;
    let _one = ONE_AT_A_TIME.lock().await;
    let room = room_with_workers(2).await;
    let (_pa, video_a, mut subs_a) = call(&room, 4201, 2).await;
    let (_pb, video_b, mut subs_b) = call(&room, 4202, 2).await;
    let workers = stats(&room).await["workers"].clone();
    let peers: Vec<u64> = workers
        .as_array()
        .expect("workers listed")
        .iter()
        .map(|w| w["peers"].as_u64().unwrap_or(0))
        .collect();
    // 1 uplink + 2 downlinks per room, a room per worker.
    assert_eq!(peers, vec![3, 3]);
    // Room B's frames carry other indices, so a leak would show.
    const B: u32 = OTHER;
    let send = |video: LocalTrack, base: u32| async move {
        let mut tick = tokio::time::interval(Duration::from_millis(33));
        for i in 0..FRAMES {
            tick.tick().await;
            let _ = video
                .write(video_frame(base + i), Duration::from_millis(33))
                .await;
        }
    };
    let senders = tokio::spawn(async move {
        tokio::join!(send(video_a, 0), send(video_b, B));
    });
    for (subs, base) in [(&mut subs_a, 0), (&mut subs_b, B)] {
        for (n, (_, remote)) in subs.iter_mut().enumerate() {
            let got = receive(
                &mut remote.packets,
                Duration::from_secs(2),
                Duration::from_secs(3),
            )
            .await;
            assert!(
                got.video_frames.len() > 20,
                "room {base}: subscriber {n} got {} frames",
                got.video_frames.len()
            );
            let indices = intact_frame_indices(&got, &format!("room {base}: subscriber {n}"));
            assert!(
                indices.iter().all(|i| (base..base + B).contains(i)),
                "room {base}: subscriber {n} got another room's frames: {indices:?}"
            );
        }
    }
    senders.await.expect("senders");
    room.stop().await;
}

/// A forwarded packet leaves in the pass that took it up: publisher write
/// -> subscriber receipt, median over frames sent one at a time 3 ms
/// apart, stays well under the 10 ms between the SFU's timer passes (at
/// this pace most packets that waited for one would wait milliseconds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_packet_does_not_wait_for_a_timer_pass() {
    let _one = ONE_AT_A_TIME.lock().await;
    let room = room_with_workers(1).await;
    let (_publisher, video, mut subs) = call(&room, 4301, 1).await;
    let (_, remote) = &mut subs[0];
    let mut took = Vec::new();
    for i in 0..100u32 {
        tokio::time::sleep(Duration::from_millis(3)).await;
        while remote.packets.try_recv().is_ok() {}
        let sent = std::time::Instant::now();
        video
            .write(video_frame(i), Duration::from_millis(33))
            .await
            .expect("write");
        match tokio::time::timeout(Duration::from_secs(1), remote.packets.recv()).await {
            Ok(Some(_)) => took.push(sent.elapsed().as_micros() as u64),
            _ => panic!("frame {i} did not arrive"),
        }
    }
    took.sort_unstable();
    let median = took[took.len() / 2];
    eprintln!(
        "publisher write -> subscriber receipt: median {median} us, max {} us",
        took[took.len() - 1]
    );
    assert!(
        median < 2000,
        "median {median} us: forwarding waits for something"
    );
    room.stop().await;
}
