//! The device's media counters, shared between the capture, encode and
//! playout threads (atomics, no locks on the hot path) and read as one JSON
//! snapshot by the daemon's status and the benchmark.

use crate::network_quality::NetworkQuality;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct MediaStats {
    pub video_frames_captured: AtomicU64,
    pub video_frames_encoded: AtomicU64,
    /// Encoded frames dropped because nobody was taking them (no call, stalled uplink).
    pub video_frames_dropped: AtomicU64,
    /// Full-frame copies of pixel data between capture and encoder (format
    /// conversions count as one). 0 per frame is the zero-copy path.
    pub frame_copies: AtomicU64,
    pub keyframes: AtomicU64,
    pub keyframe_requests: AtomicU64,
    pub video_bytes: AtomicU64,
    pub video_errors: AtomicU64,
    /// The camera failed (unplugged, driver gone) and is being retried; the
    /// call goes on with audio only meanwhile.
    pub camera_lost: AtomicBool,
    /// The screen failed (unplugged, missing) and is being retried.
    pub display_lost: AtomicBool,
    pub target_bitrate_bps: AtomicU64,
    pub audio_frames_captured: AtomicU64,
    pub audio_packets_sent: AtomicU64,
    pub capture_xruns: AtomicU64,
    pub audio_packets_received: AtomicU64,
    pub audio_packets_lost: AtomicU64,
    pub playback_underruns: AtomicU64,
    pub playback_frames: AtomicU64,
    /// Remote streams being played now.
    pub remote_streams: AtomicU64,
    /// Remote pictures decoded for the screen, decoding failures, and the
    /// keyframes asked of remote publishers after loss or a failure.
    pub remote_video_frames_decoded: AtomicU64,
    pub remote_video_decode_errors: AtomicU64,
    pub remote_keyframe_requests: AtomicU64,
    /// Composed frames the display presented.
    pub display_frames: AtomicU64,
    /// How long the latest remote picture was held back to meet its audio (µs).
    pub video_sync_hold_us: AtomicU64,
    /// Microseconds from daemon start to the first RTP packet handed to WebRTC.
    pub first_rtp_us: AtomicU64,
    /// Which way the call's uplink goes (`relay/udp`), once connected.
    pub ice_path: Mutex<Option<String>>,
    /// The echo canceller's latest report (every second while it runs).
    pub echo: std::sync::Arc<Mutex<Option<crate::device::processing::EchoReport>>>,
    /// TRTC's network-quality from the room, every 2 s in a call.
    network_quality: QualityWatch,
    encode_us: Mutex<Vec<u32>>,
}

/// The latest network quality, watched by the appliance (its LEDs).
#[derive(Debug)]
struct QualityWatch(tokio::sync::watch::Sender<Option<NetworkQuality>>);

impl Default for QualityWatch {
    fn default() -> Self {
        QualityWatch(tokio::sync::watch::channel(None).0)
    }
}

/// The last this many encode times are kept for percentiles.
const ENCODE_WINDOW: usize = 1024;

#[derive(Debug, Clone, Serialize)]
pub struct StatsSnapshot {
    pub video_frames_captured: u64,
    pub video_frames_encoded: u64,
    pub video_frames_dropped: u64,
    pub frame_copies: u64,
    pub keyframes: u64,
    pub keyframe_requests: u64,
    pub video_bytes: u64,
    pub video_errors: u64,
    pub camera_lost: bool,
    pub display_lost: bool,
    pub ice_path: Option<String>,
    /// TRTC's network-quality, while in a call.
    pub network_quality: Option<NetworkQuality>,
    pub target_bitrate_bps: u64,
    pub audio_frames_captured: u64,
    pub audio_packets_sent: u64,
    pub capture_xruns: u64,
    pub audio_packets_received: u64,
    pub audio_packets_lost: u64,
    pub playback_underruns: u64,
    pub playback_frames: u64,
    pub remote_streams: u64,
    pub remote_video_frames_decoded: u64,
    pub remote_video_decode_errors: u64,
    pub remote_keyframe_requests: u64,
    pub display_frames: u64,
    pub video_sync_hold_ms: f64,
    /// Echo delay, ERLE and convergence while echo cancellation runs.
    pub echo: Option<crate::device::processing::EchoReport>,
    pub first_rtp_ms: Option<f64>,
    pub encode_ms_p50: Option<f64>,
    pub encode_ms_p99: Option<f64>,
}

pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Relaxed);
}

impl MediaStats {
    pub fn network_quality(&self) -> Option<NetworkQuality> {
        *self.network_quality.0.borrow()
    }

    /// The room's latest report; `None` when the call ends.
    pub fn set_network_quality(&self, q: Option<NetworkQuality>) {
        self.network_quality.0.send_replace(q);
    }

    /// Changes of the network quality, from now on.
    pub fn watch_network_quality(&self) -> tokio::sync::watch::Receiver<Option<NetworkQuality>> {
        self.network_quality.0.subscribe()
    }

    pub fn record_encode(&self, micros: u32) {
        if let Ok(mut v) = self.encode_us.lock() {
            if v.len() == ENCODE_WINDOW {
                v.remove(0);
            }
            v.push(micros);
        }
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |c: &AtomicU64| c.load(Relaxed);
        let (p50, p99) = self
            .encode_us
            .lock()
            .map(|v| {
                let mut s = v.clone();
                s.sort_unstable();
                let pct = |p: f64| {
                    s.get(((s.len() as f64 - 1.0) * p).round() as usize)
                        .map(|&u| u as f64 / 1000.0)
                };
                (pct(0.5), pct(0.99))
            })
            .unwrap_or((None, None));
        let first = g(&self.first_rtp_us);
        StatsSnapshot {
            video_frames_captured: g(&self.video_frames_captured),
            video_frames_encoded: g(&self.video_frames_encoded),
            video_frames_dropped: g(&self.video_frames_dropped),
            frame_copies: g(&self.frame_copies),
            keyframes: g(&self.keyframes),
            keyframe_requests: g(&self.keyframe_requests),
            video_bytes: g(&self.video_bytes),
            video_errors: g(&self.video_errors),
            camera_lost: self.camera_lost.load(Relaxed),
            display_lost: self.display_lost.load(Relaxed),
            ice_path: self.ice_path.lock().map_or(None, |p| p.clone()),
            network_quality: self.network_quality(),
            target_bitrate_bps: g(&self.target_bitrate_bps),
            audio_frames_captured: g(&self.audio_frames_captured),
            audio_packets_sent: g(&self.audio_packets_sent),
            capture_xruns: g(&self.capture_xruns),
            audio_packets_received: g(&self.audio_packets_received),
            audio_packets_lost: g(&self.audio_packets_lost),
            playback_underruns: g(&self.playback_underruns),
            playback_frames: g(&self.playback_frames),
            remote_streams: g(&self.remote_streams),
            remote_video_frames_decoded: g(&self.remote_video_frames_decoded),
            remote_video_decode_errors: g(&self.remote_video_decode_errors),
            remote_keyframe_requests: g(&self.remote_keyframe_requests),
            display_frames: g(&self.display_frames),
            video_sync_hold_ms: g(&self.video_sync_hold_us) as f64 / 1000.0,
            echo: *self.echo.lock().unwrap_or_else(|e| e.into_inner()),
            first_rtp_ms: (first > 0).then(|| first as f64 / 1000.0),
            encode_ms_p50: p50,
            encode_ms_p99: p99,
        }
    }
}
