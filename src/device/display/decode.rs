//! A remote stream's video, decoded for the screen, on a thread of its
//! own: RTP packets arrive through a bounded queue (full: dropped, as the
//! network would), are depacketized (webrtc-rs's `H264Packet`) into access
//! units completed by the marker bit, and decoded by OpenH264; each picture
//! goes to the [`Screen`]. A sequence gap, a depacketizing or decoding
//! error, or a dropped packet asks the publisher for a keyframe (PLI, at
//! most twice a second) and nothing is decoded until an IDR arrives, so the
//! screen holds the last good picture instead of showing a smeared one.
//!
//! Lip sync: a picture is held until its audio is heard. Audio that
//! arrives now plays after the stream's jitter buffer and the speaker's
//! buffer ([`crate::device::pipeline::Playback::audio_delay`]), so a
//! picture whose last packet arrived at `t` is shown at `t` plus that
//! delay (at most `MAX_HOLD`). Arrival time stands in for capture time: a
//! WebRTC sender sends each frame as it is captured and encoded, and both
//! kinds cross the same path. (RTCP sender reports would also take out a
//! sender's own audio/video skew; the device does not read them yet.)

use crate::device::display::screen::Screen;
use crate::device::h264::{nal_types, H264Decoder};
use crate::device::stats::{add, MediaStats};
use rtc::rtp::codec::h264::H264Packet;
use rtc::rtp::packetizer::Depacketizer;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// About a second of video at 1.5 Mbit/s.
const QUEUE: usize = 256;
/// An access unit larger than this is not a picture this device shows.
const MAX_AU: usize = 2 << 20;
const KEYFRAME_EVERY: Duration = Duration::from_millis(500);
/// Never hold a picture longer than this for its audio.
const MAX_HOLD: Duration = Duration::from_millis(400);

/// What a decoder needs from the rest of the device.
pub struct Links {
    /// Cisco's OpenH264 binary (`video.openh264_library`), else the built-in one.
    pub library: Option<std::path::PathBuf>,
    /// Ask the publisher for a keyframe.
    pub keyframe: Box<dyn Fn() + Send>,
    /// How long this stream's audio arriving now takes to be heard
    /// (`None`: no audio playing, show pictures at once).
    pub audio_delay: Box<dyn Fn() -> Option<Duration> + Send>,
}

/// The feeding end; dropping it ends the thread.
pub struct VideoDecoder {
    tx: SyncSender<(Instant, rtc::rtp::Packet)>,
    lost: Arc<AtomicU64>,
}

impl VideoDecoder {
    /// Start decoding `stream_id` for `screen`.
    pub fn start(
        stream_id: &str,
        screen: Screen,
        links: Links,
        stats: Arc<MediaStats>,
    ) -> std::io::Result<VideoDecoder> {
        let (tx, rx) = sync_channel(QUEUE);
        let lost = Arc::new(AtomicU64::new(0));
        let id = stream_id.to_owned();
        let dropped = Arc::clone(&lost);
        std::thread::Builder::new()
            .name(format!("decode {stream_id}"))
            .spawn(move || run(rx, &id, screen, links, stats, dropped))?;
        Ok(VideoDecoder { tx, lost })
    }

    /// One received packet; a full queue drops it (and costs a keyframe).
    pub fn push(&self, packet: rtc::rtp::Packet) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send((Instant::now(), packet)) {
            self.lost.fetch_add(1, Relaxed);
        }
    }
}

/// Access-unit assembly and the wait for a keyframe after damage.
struct Assembly {
    depacketizer: H264Packet,
    au: Vec<u8>,
    next_seq: Option<u16>,
    /// Damaged since the last IDR: decode nothing until the next.
    broken: bool,
    last_request: Option<Instant>,
}

fn run(
    rx: Receiver<(Instant, rtc::rtp::Packet)>,
    stream_id: &str,
    screen: Screen,
    links: Links,
    stats: Arc<MediaStats>,
    dropped: Arc<AtomicU64>,
) {
    let mut decoder = match H264Decoder::with_library(links.library.as_deref()) {
        Ok(d) => d,
        Err(e) => {
            log::error!("cannot decode {stream_id}'s video: {e}");
            return;
        }
    };
    let mut a = Assembly {
        depacketizer: H264Packet::default(),
        au: Vec::new(),
        next_seq: None,
        broken: true,
        last_request: None,
    };
    let mut seen_dropped = 0;
    while let Ok((arrived, p)) = rx.recv() {
        let gap = a.next_seq.is_some_and(|s| s != p.header.sequence_number);
        a.next_seq = Some(p.header.sequence_number.wrapping_add(1));
        let now_dropped = dropped.load(Relaxed);
        if gap || now_dropped != seen_dropped {
            seen_dropped = now_dropped;
            a.damage();
        }
        match a.depacketizer.depacketize(&p.payload) {
            Ok(bytes) if a.au.len() + bytes.len() <= MAX_AU => a.au.extend_from_slice(&bytes),
            _ => a.damage(),
        }
        if !p.header.marker {
            continue;
        }
        let au = std::mem::take(&mut a.au);
        if nal_types(&au).any(|t| t == 5) {
            a.broken = false;
        }
        if !a.broken && !au.is_empty() {
            let due = (links.audio_delay)().map(|d| arrived + d.min(MAX_HOLD));
            let show = |pic: &crate::device::frame::I420<'_>| {
                hold_until(due, &stats);
                screen.show(stream_id, pic)
            };
            match decoder.decode(&au, show) {
                Ok(Some(())) => add(&stats.remote_video_frames_decoded, 1),
                Ok(None) => {}
                Err(e) => {
                    add(&stats.remote_video_decode_errors, 1);
                    log::warn!("{stream_id}: {e}; waiting for a keyframe");
                    a.damage();
                }
            }
        }
        if a.broken && a.last_request.is_none_or(|t| t.elapsed() >= KEYFRAME_EVERY) {
            a.last_request = Some(Instant::now());
            add(&stats.remote_keyframe_requests, 1);
            (links.keyframe)();
        }
        a.au = au;
        a.au.clear();
    }
}

/// Wait until `due` (the picture's audio is heard), counting the wait.
fn hold_until(due: Option<Instant>, stats: &MediaStats) {
    let wait = due.map_or(Duration::ZERO, |d| {
        d.saturating_duration_since(Instant::now())
    });
    stats
        .video_sync_hold_us
        .store(wait.as_micros() as u64, Relaxed);
    if !wait.is_zero() {
        std::thread::sleep(wait);
    }
}

impl Assembly {
    fn damage(&mut self) {
        self.broken = true;
        self.au.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::display::screen::{self, Idle, Style};
    use crate::device::display::y4m::Y4mSink;
    use crate::device::frame::i420_len;
    use crate::device::h264::{EncoderSettings, OpenH264Encoder, VideoEncoder};
    use crate::device::pattern::Stamp;
    use crate::device::video_source::pattern_frame;
    use rtc::rtp::codec::h264::H264Payloader;
    use rtc::rtp::packetizer::Payloader;

    /// The pattern encoded (IDR at the frames in `idr`), as RTP packets per frame.
    fn stream(frames: u32, idr: &[u32]) -> Vec<Vec<rtc::rtp::Packet>> {
        let (w, h) = (320, 240);
        let mut enc = OpenH264Encoder::new(EncoderSettings {
            width: w,
            height: h,
            fps: 30,
            bitrate_bps: 500_000,
            keyframe_interval_frames: 300,
            library: None,
        })
        .expect("encoder");
        let mut buf = vec![0u8; i420_len(w, h)];
        let (mut out, mut seq) = (Vec::new(), 0u16);
        let mut payloader = H264Payloader::default();
        (0..frames)
            .map(|n| {
                let stamp = Stamp {
                    counter: n,
                    capture_us: 0,
                };
                let frame = pattern_frame(&mut buf, w, h, stamp).expect("frame");
                enc.encode(&frame, idr.contains(&n), &mut out)
                    .expect("encode");
                let payloads = payloader
                    .payload(1200, &bytes::Bytes::copy_from_slice(&out))
                    .expect("payload");
                let last = payloads.len() - 1;
                payloads
                    .into_iter()
                    .enumerate()
                    .map(|(i, payload)| {
                        seq = seq.wrapping_add(1);
                        let mut p = rtc::rtp::Packet {
                            payload,
                            ..Default::default()
                        };
                        p.header.sequence_number = seq;
                        p.header.marker = i == last;
                        p
                    })
                    .collect()
            })
            .collect()
    }

    fn wait_for(what: &str, f: impl Fn() -> bool) {
        let t = Instant::now();
        while !f() {
            assert!(t.elapsed() < Duration::from_secs(5), "{what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_lost_packet_asks_for_a_keyframe_and_pictures_resume_at_the_next() {
        let frames = stream(10, &[0, 6]);
        let stats = Arc::new(MediaStats::default());
        let sink =
            Y4mSink::create(std::path::Path::new("/dev/null"), (320, 240), 30).expect("sink");
        let shown = screen::start(
            Box::new(sink),
            30,
            Style {
                idle: Idle::Blank,
                ..Style::default()
            },
            Arc::clone(&stats),
        )
        .expect("screen");
        shown.screen.add("s", "user-s", false);
        let asked = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&asked);
        let keyframe = Box::new(move || {
            counter.fetch_add(1, Relaxed);
        });
        let links = Links {
            library: None,
            keyframe,
            audio_delay: Box::new(|| None),
        };
        let dec = VideoDecoder::start("s", shown.screen.clone(), links, Arc::clone(&stats))
            .expect("decoder");
        let decoded = || stats.remote_video_frames_decoded.load(Relaxed);
        for p in frames[..3].iter().flatten() {
            dec.push(p.clone());
        }
        wait_for("the first three frames decode", || decoded() == 3);
        assert_eq!(asked.load(Relaxed), 0);
        // Frame 3 loses its first packet: nothing more decodes until the IDR.
        for p in frames[3..6].iter().flatten().skip(1) {
            dec.push(p.clone());
        }
        wait_for("a keyframe is asked for", || asked.load(Relaxed) >= 1);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(decoded(), 3, "damaged frames were shown");
        for p in frames[6..].iter().flatten() {
            dec.push(p.clone());
        }
        wait_for("pictures resume at the keyframe", || decoded() == 7);
        assert_eq!(stats.remote_video_decode_errors.load(Relaxed), 0);
    }

    /// How long after its last packet arrived a picture reaches the screen,
    /// when its audio takes `audio` to be heard.
    fn shown_after(audio: Option<Duration>) -> Duration {
        let frames = stream(1, &[0]);
        let stats = Arc::new(MediaStats::default());
        let sink =
            Y4mSink::create(std::path::Path::new("/dev/null"), (320, 240), 30).expect("sink");
        let shown = screen::start(Box::new(sink), 30, Style::default(), Arc::clone(&stats))
            .expect("screen");
        shown.screen.add("s", "user-s", false);
        let links = Links {
            library: None,
            keyframe: Box::new(|| {}),
            audio_delay: Box::new(move || audio),
        };
        let dec = VideoDecoder::start("s", shown.screen.clone(), links, Arc::clone(&stats))
            .expect("decoder");
        let t = Instant::now();
        for p in frames.iter().flatten() {
            dec.push(p.clone());
        }
        wait_for("the picture is shown", || {
            stats.remote_video_frames_decoded.load(Relaxed) == 1
        });
        t.elapsed()
    }

    #[test]
    fn a_picture_waits_for_its_audio_at_most_the_longest_hold() {
        let at_once = shown_after(None);
        let synced = shown_after(Some(Duration::from_millis(150)));
        let capped = shown_after(Some(Duration::from_secs(3)));
        assert!(at_once < Duration::from_millis(100), "{at_once:?}");
        assert!(
            synced >= Duration::from_millis(150) && synced < Duration::from_millis(250),
            "{synced:?}"
        );
        assert!(
            capped >= MAX_HOLD && capped < MAX_HOLD + Duration::from_millis(100),
            "{capped:?}"
        );
    }
}
