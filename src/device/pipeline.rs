//! The device's media threads, which run for as long as the device does,
//! in or out of a call:
//! - video: capture -> encoder -> channel of encoded access units. It
//!   reads the keyframe flag (set on PLI/FIR) and the target bitrate
//!   (set by congestion control) before each frame, and reopens the
//!   camera when it disappears (audio goes on meanwhile);
//! - audio: capture -> processing stage -> Opus -> channel of packets;
//! - playout: every 20 ms, each remote stream's jitter buffer -> Opus
//!   decoder (concealment/FEC on loss) -> mix -> speaker.
//!
//! Capture and encode are blocking work, so they get threads of their own
//! rather than async tasks.

use crate::device::active_speaker::{mean_square, ActiveSpeaker};
use crate::device::audio::{
    mix_into, AudioError, AudioProcessor, AudioSink, AudioSource, OpusDecoder, OpusEncoder, FRAME,
    FRAME_SAMPLES, SAMPLE_RATE,
};
use crate::device::frame::I420;
use crate::device::h264::VideoEncoder;
use crate::device::jitter::{JitterBuffer, Playout};
use crate::device::processing::Apm;
use crate::device::stats::{add, MediaStats};
use crate::device::video_source::{Pixels, VideoError, VideoSource};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// One encoded access unit, ready for the video track.
#[derive(Debug, Clone)]
pub struct EncodedVideo {
    pub data: Bytes,
    pub duration: Duration,
    pub capture_us: u64,
    pub keyframe: bool,
}

/// Opens (or reopens) the camera.
pub type OpenCamera = Box<dyn FnMut() -> Result<Box<dyn VideoSource>, VideoError> + Send>;

/// Jitter buffer target: 3 frames (60 ms) before playout starts.
const JITTER_TARGET: usize = 3;
const JITTER_CAPACITY: usize = 50;

struct RemoteAudio {
    jitter: JitterBuffer<Bytes>,
    decoder: OpusDecoder,
}

/// The remote streams being played, by stream id, and who of them speaks:
/// one lock, as the mixer feeds the detector stream by stream.
#[derive(Default)]
struct Mixer {
    streams: HashMap<String, RemoteAudio>,
    speaker: ActiveSpeaker,
}

/// Remote audio being played, shared by the call and the speaker thread.
#[derive(Clone, Default)]
pub struct Playback {
    mixer: Arc<Mutex<Mixer>>,
    /// What the speaker holds, written but not yet heard (µs).
    sink_delay_us: Arc<AtomicU64>,
}

impl Playback {
    fn mixer(&self) -> std::sync::MutexGuard<'_, Mixer> {
        self.mixer.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn add_stream(&self, stream_id: &str) -> Result<(), AudioError> {
        let decoder = OpusDecoder::new()?;
        self.mixer().streams.insert(
            stream_id.to_owned(),
            RemoteAudio {
                jitter: JitterBuffer::new(JITTER_TARGET, JITTER_CAPACITY),
                decoder,
            },
        );
        Ok(())
    }

    pub fn remove_stream(&self, stream_id: &str) {
        let mut m = self.mixer();
        m.streams.remove(stream_id);
        m.speaker.remove(stream_id);
    }

    pub fn clear(&self) {
        *self.mixer() = Mixer::default();
    }

    /// How many remote streams are being played.
    pub fn count(&self) -> usize {
        self.mixer().streams.len()
    }

    /// The remote stream speaking now (or last), if any has.
    pub fn active_speaker(&self) -> Option<String> {
        self.mixer().speaker.current().map(str::to_owned)
    }

    /// How long audio of `stream_id` arriving now takes to be heard: the
    /// frames waiting in its jitter buffer, half a mixing tick, and the
    /// speaker's own buffer. `None` while its audio is not playing.
    pub fn audio_delay(&self, stream_id: &str) -> Option<Duration> {
        let depth = self.mixer().streams.get(stream_id)?.jitter.depth()?;
        let sink = Duration::from_micros(self.sink_delay_us.load(Relaxed));
        Some(FRAME * depth as u32 + FRAME / 2 + sink)
    }

    fn sink_delay(&self, samples: Option<i64>) {
        let us = samples.unwrap_or(0).max(0) as u64 * 1_000_000 / SAMPLE_RATE as u64;
        self.sink_delay_us.store(us, Relaxed);
    }

    pub fn push(&self, stream_id: &str, seq: u16, payload: Bytes) {
        if let Some(r) = self.mixer().streams.get_mut(stream_id) {
            r.jitter.push(seq, payload);
        }
    }

    /// Mix one 20 ms frame of every stream into `mix` (zeroed first), and
    /// follow who speaks.
    fn mix(&self, mix: &mut [i16], scratch: &mut [i16], stats: &MediaStats) {
        mix.fill(0);
        let mut guard = self.mixer();
        let Mixer { streams, speaker } = &mut *guard;
        for (id, r) in streams.iter_mut() {
            let decoded = match r.jitter.pop() {
                Playout::Silence => Ok(0),
                Playout::Packet(p) => r.decoder.decode(&p, scratch),
                Playout::Lost { next } => {
                    add(&stats.audio_packets_lost, 1);
                    r.decoder.conceal(next.as_deref(), scratch)
                }
            };
            match decoded {
                Ok(n) => {
                    let frame = &scratch[..n.min(scratch.len())];
                    mix_into(mix, frame);
                    speaker.frame(id, mean_square(frame));
                }
                Err(e) => log::warn!("stream {id}: undecodable audio: {e}"),
            }
        }
        speaker.decide(Instant::now());
    }
}

/// The running media threads. Dropping it stops them.
pub struct Pipeline {
    running: Arc<AtomicBool>,
    pub keyframe: Arc<AtomicBool>,
    /// Target video bitrate (bit/s) for the encoder; 0 leaves it alone.
    pub bitrate: Arc<AtomicU64>,
    pub playback: Playback,
    threads: Vec<std::thread::JoinHandle<()>>,
    pub heartbeats: Heartbeats,
}

/// Each media thread's loop count: a thread whose count stops moving is
/// stuck (a hung driver call), which the systemd watchdog acts on.
#[derive(Debug, Clone, Default)]
pub struct Heartbeats(Vec<(&'static str, Arc<AtomicU64>)>);

impl Heartbeats {
    pub fn read(&self) -> Vec<(&'static str, u64)> {
        self.0
            .iter()
            .map(|(name, n)| (*name, n.load(Relaxed)))
            .collect()
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.running.store(false, Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Makes an encoder for a frame size and rate.
pub type OpenEncoder =
    Box<dyn FnMut((usize, usize), u32) -> Result<Box<dyn VideoEncoder>, VideoError> + Send>;

/// The video side of the pipeline.
pub struct CameraParts {
    /// The camera, or `None` when it is not there yet (reopened every second).
    pub camera: Option<Box<dyn VideoSource>>,
    pub reopen: OpenCamera,
    pub encoder: Box<dyn VideoEncoder>,
    /// The size and rate `encoder` was made for: a camera that comes back
    /// with others gets a new encoder from `new_encoder`.
    pub encoder_format: ((usize, usize), u32),
    pub new_encoder: OpenEncoder,
    /// Sees every raw camera frame (the screen's self-view).
    pub self_view: Option<SelfView>,
}

/// Called with each raw camera frame, on the video thread.
pub type SelfView = Box<dyn FnMut(&I420<'_>) + Send>;
/// The microphone, its processing stage and its encoder.
pub type MicrophoneParts = (Box<dyn AudioSource>, Box<dyn AudioProcessor>, OpusEncoder);

pub struct Parts {
    pub camera: Option<CameraParts>,
    pub microphone: Option<MicrophoneParts>,
    pub speaker: Option<Box<dyn AudioSink>>,
    /// The echo canceller, fed every frame the speaker plays.
    pub echo_reference: Option<Apm>,
}

/// Channels the pipeline delivers encoded media on.
pub struct Outputs {
    pub video: mpsc::Receiver<EncodedVideo>,
    pub audio: mpsc::Receiver<Bytes>,
}

impl Pipeline {
    pub fn start(parts: Parts, stats: Arc<MediaStats>) -> std::io::Result<(Pipeline, Outputs)> {
        let running = Arc::new(AtomicBool::new(true));
        let keyframe = Arc::new(AtomicBool::new(false));
        let bitrate = Arc::new(AtomicU64::new(0));
        let playback = Playback::default();
        let (video_tx, video) = mpsc::channel(8);
        let (audio_tx, audio) = mpsc::channel(16);
        let mut threads = Vec::new();
        let mut heartbeats = Vec::new();
        let mut beat = |name| {
            let n = Arc::new(AtomicU64::new(0));
            heartbeats.push((name, Arc::clone(&n)));
            n
        };
        if let Some(camera) = parts.camera {
            let ctx = (
                Arc::clone(&running),
                Arc::clone(&keyframe),
                Arc::clone(&bitrate),
                Arc::clone(&stats),
                beat("video"),
            );
            threads.push(
                std::thread::Builder::new()
                    .name("callbox-video".into())
                    .spawn(move || video_loop(camera, video_tx, ctx))?,
            );
        }
        if let Some((source, processor, encoder)) = parts.microphone {
            let (r, s, b) = (Arc::clone(&running), Arc::clone(&stats), beat("microphone"));
            threads.push(
                std::thread::Builder::new()
                    .name("callbox-mic".into())
                    .spawn(move || audio_loop(source, processor, encoder, audio_tx, (r, s, b)))?,
            );
        }
        if let Some(sink) = parts.speaker {
            let reference = parts.echo_reference;
            let (r, s, p, b) = (
                Arc::clone(&running),
                Arc::clone(&stats),
                playback.clone(),
                beat("speaker"),
            );
            threads.push(
                std::thread::Builder::new()
                    .name("callbox-speaker".into())
                    .spawn(move || playout_loop(sink, p, reference, (r, s, b)))?,
            );
        }
        Ok((
            Pipeline {
                running,
                keyframe,
                bitrate,
                playback,
                threads,
                heartbeats: Heartbeats(heartbeats),
            },
            Outputs { video, audio },
        ))
    }
}

type VideoCtx = (
    Arc<AtomicBool>,
    Arc<AtomicBool>,
    Arc<AtomicU64>,
    Arc<MediaStats>,
    Arc<AtomicU64>,
);
/// Running flag, counters, heartbeat.
type LoopCtx = (Arc<AtomicBool>, Arc<MediaStats>, Arc<AtomicU64>);

fn video_loop(
    parts: CameraParts,
    tx: mpsc::Sender<EncodedVideo>,
    (running, keyframe, bitrate, stats, heartbeat): VideoCtx,
) {
    let CameraParts {
        mut camera,
        mut reopen,
        mut encoder,
        encoder_format: mut format,
        mut new_encoder,
        mut self_view,
    } = parts;
    let mut out = Vec::new();
    let mut next_keyframe = true;
    while running.load(Relaxed) {
        add(&heartbeat, 1);
        let Some(cam) = camera.as_mut() else {
            std::thread::sleep(Duration::from_secs(1));
            let c = match reopen() {
                Ok(c) => c,
                Err(e) => {
                    log::debug!("camera still unavailable: {e}");
                    continue;
                }
            };
            let offered = (c.size(), c.fps());
            if offered != format {
                match new_encoder(offered.0, offered.1) {
                    Ok(e) => {
                        log::info!("new encoder for the camera: {}", e.describe());
                        (encoder, format) = (e, offered);
                    }
                    Err(e) => {
                        log::error!("video encoder for {}: {e}; still audio only", c.describe());
                        continue;
                    }
                }
            }
            log::info!("camera back: {}", c.describe());
            stats.camera_lost.store(false, Relaxed);
            camera = Some(c);
            next_keyframe = true;
            continue;
        };
        let duration = Duration::from_secs(1) / cam.fps().max(1);
        // A request applies to the next frame taken; a source that makes its
        // own H.264 hears of it before that frame is read.
        let key = next_keyframe || keyframe.swap(false, Relaxed);
        next_keyframe = false;
        if key {
            cam.keyframe_requested();
        }
        let frame = match cam.next_frame() {
            Ok(f) => f,
            Err(e) => {
                add(&stats.video_errors, 1);
                log::error!("video capture failed (code {:#06x}): {e}; audio continues, retrying the camera every second", crate::protocol::code::DEVICE_NOT_FOUND);
                stats.camera_lost.store(true, Relaxed);
                camera = None;
                continue;
            }
        };
        add(&stats.video_frames_captured, 1);
        add(&stats.frame_copies, frame.copies as u64);
        if let (Some(show), Pixels::I420(pic)) = (self_view.as_mut(), &frame.pixels) {
            show(pic);
        }
        let target = bitrate.load(Relaxed);
        if target > 0 {
            encoder.set_bitrate(target as u32);
        }
        let started = Instant::now();
        let encoded = encoder.encode(&frame, key, &mut out);
        stats.record_encode(started.elapsed().as_micros() as u32);
        add(&stats.frame_copies, u64::from(encoder.input_copies()));
        match encoded {
            Ok(Some(is_key)) => {
                add(&stats.video_frames_encoded, 1);
                add(&stats.video_bytes, out.len() as u64);
                if is_key {
                    add(&stats.keyframes, 1);
                }
                let unit = EncodedVideo {
                    // The encoder's buffer is reused next frame, so this is
                    // the one copy of the compressed bytes; RTP packetization
                    // slices this `Bytes` from here on.
                    data: Bytes::copy_from_slice(&out),
                    duration,
                    capture_us: frame.capture_us,
                    keyframe: is_key,
                };
                // Never block capture: a full channel (no call, or a stalled
                // uplink) drops the frame, and the next one is a keyframe so
                // the receiver recovers at once.
                match tx.try_send(unit) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        add(&stats.video_frames_dropped, 1);
                        next_keyframe = true;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
            Ok(None) => {}
            Err(e) => {
                add(&stats.video_errors, 1);
                log::error!("video encode failed: {e}");
                next_keyframe = true;
            }
        }
    }
}

fn audio_loop(
    mut source: Box<dyn AudioSource>,
    mut processor: Box<dyn AudioProcessor>,
    mut encoder: OpusEncoder,
    tx: mpsc::Sender<Bytes>,
    (running, stats, heartbeat): LoopCtx,
) {
    let mut frame = vec![0i16; FRAME_SAMPLES];
    let mut failures = 0u32;
    while running.load(Relaxed) {
        add(&heartbeat, 1);
        if let Err(e) = source.read(&mut frame) {
            failures += 1;
            if failures == 1 || failures.is_multiple_of(50) {
                log::error!("microphone {}: {e}", source.describe());
            }
            std::thread::sleep(crate::device::audio::FRAME);
            continue;
        }
        failures = 0;
        add(&stats.audio_frames_captured, 1);
        processor.process(&mut frame, source.delay_samples());
        match encoder.encode(&frame) {
            Ok(packet) => {
                // A full channel (no call, or a stalled uplink) drops audio
                // rather than building latency.
                if let Err(mpsc::error::TrySendError::Closed(_)) =
                    tx.try_send(Bytes::copy_from_slice(packet))
                {
                    return;
                }
            }
            Err(e) => log::error!("Opus encode: {e}"),
        }
    }
}

fn playout_loop(
    mut sink: Box<dyn AudioSink>,
    playback: Playback,
    reference: Option<Apm>,
    (running, stats, heartbeat): LoopCtx,
) {
    let mut mix = vec![0i16; FRAME_SAMPLES];
    // Room for the largest Opus frame (120 ms).
    let mut scratch = vec![0i16; FRAME_SAMPLES * 6];
    let mut failures = 0u32;
    while running.load(Relaxed) {
        add(&heartbeat, 1);
        playback.mix(&mut mix, &mut scratch, &stats);
        match sink.write(&mix) {
            Ok(()) => {
                failures = 0;
                add(&stats.playback_frames, 1);
                let delay = sink.delay_samples();
                playback.sink_delay(delay);
                if let Some(apm) = &reference {
                    apm.far_end_played(&mix, delay);
                }
            }
            Err(e) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(50) {
                    log::error!("speaker {}: {e}", sink.describe());
                }
                std::thread::sleep(crate::device::audio::FRAME);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::h264::{EncoderSettings, H264Decoder, OpenH264Encoder};
    use crate::device::pattern;
    use crate::device::video_source::SyntheticCamera;

    fn openh264(size: (usize, usize), fps: u32) -> Result<Box<dyn VideoEncoder>, VideoError> {
        Ok(Box::new(OpenH264Encoder::new(EncoderSettings {
            width: size.0,
            height: size.1,
            fps,
            bitrate_bps: 500_000,
            keyframe_interval_frames: 60,
            library: None,
        })?))
    }

    /// level_idc of the first SPS in an Annex-B access unit.
    fn sps_level(au: &[u8]) -> Option<u8> {
        au.windows(7)
            .find(|w| w[..3] == [0, 0, 1] && w[3] & 0x1f == 7)
            .map(|w| w[6])
    }

    /// No camera at start, then one at another size than configured: once
    /// it appears, its frames are encoded by an encoder made for it (the
    /// SPS says level 2.1 for 320x240, not the configured 640x480's 3.0),
    /// and the loss flag clears.
    #[test]
    fn a_camera_that_appears_late_at_another_size_gets_its_own_encoder() {
        let tries = Arc::new(AtomicU64::new(0));
        let t = Arc::clone(&tries);
        let reopen: OpenCamera = Box::new(move || {
            if t.fetch_add(1, Relaxed) < 1 {
                return Err(VideoError::Gone {
                    device: "/dev/video9".into(),
                    source: std::io::Error::from(std::io::ErrorKind::NotFound),
                });
            }
            Ok(Box::new(SyntheticCamera::new(320, 240, 30)))
        });
        let stats = Arc::new(MediaStats::default());
        stats.camera_lost.store(true, Relaxed);
        let parts = Parts {
            camera: Some(CameraParts {
                camera: None,
                reopen,
                encoder: openh264((640, 480), 30).unwrap(),
                encoder_format: ((640, 480), 30),
                new_encoder: Box::new(openh264),
                self_view: None,
            }),
            microphone: None,
            speaker: None,
            echo_reference: None,
        };
        let (pipeline, mut outputs) = Pipeline::start(parts, Arc::clone(&stats)).unwrap();
        let mut dec = H264Decoder::new().unwrap();
        let mut decoded = Vec::new();
        let mut levels = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while decoded.len() < 10 && Instant::now() < deadline {
            match outputs.video.try_recv() {
                Ok(unit) => {
                    levels.extend(sps_level(&unit.data));
                    if let Ok(Some(got)) =
                        dec.decode(&unit.data, |f| ((f.width, f.height), pattern::read(f)))
                    {
                        decoded.push(got);
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        drop(outputs);
        drop(pipeline);
        assert!(tries.load(Relaxed) >= 2, "the camera was retried");
        assert_eq!(decoded.len(), 10, "frames once the camera appeared");
        assert!(
            decoded
                .iter()
                .all(|(size, stamp)| *size == (320, 240) && stamp.is_some()),
            "{decoded:?}"
        );
        assert!(
            !levels.is_empty() && levels.iter().all(|&l| l == 21),
            "{levels:?}"
        );
        assert!(!stats.camera_lost.load(Relaxed));
    }
}
