//! `callbox probe --encoder`: the configured camera through the board's
//! M2M encoder, decoded back and compared with what was captured, which
//! is what an integrator runs on a real board to know the hardware path
//! works. H.264 is decoded by OpenH264 (as a browser would decode it),
//! other coded formats by the board's M2M decoder for them (vicodec's
//! FWHT on the test rig).

use crate::device::config::VideoSection;
use crate::device::frame::I420;
use crate::device::h264::{EncoderSettings, H264Decoder, OpenH264Encoder, VideoEncoder};
use crate::device::m2m::{self, M2mEncoder};
use crate::device::m2m_decoder::M2mDecoder;
use crate::device::m2m_encoder::M2mVideoEncoder;
use crate::device::video_source::{Frame, Pixels, VideoError};
use std::time::{Duration, Instant};

/// Frames encoded after the drain.
const RESTART_FRAMES: usize = 10;

/// What the encode test measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EncodeTest {
    pub encoder: String,
    pub frames: usize,
    pub coded_frames: usize,
    pub keyframes: usize,
    /// The frame coded after a keyframe request halfway was a keyframe.
    pub keyframe_on_request: bool,
    /// Coded frames that came back with their raw frame's timestamp.
    pub timestamps_kept: u64,
    /// Frames per second the encoder takes (its own time, not the camera's rate).
    pub fps: f64,
    pub bytes_per_frame: f64,
    /// Pixel copies per frame from the camera's buffer to the encoder's.
    pub copies_per_frame: f64,
    /// Mean Y-PSNR of the decoded frames against the captured ones, and how
    /// many were decoded (0: no decoder for the format, `decoder` says why).
    pub psnr_db: f64,
    pub decoded: usize,
    pub decoder: String,
    /// Frames coded after a drain, and whether the first was a keyframe.
    pub after_restart: usize,
    pub restart_keyframe: bool,
    /// Controls the encoder refused, with what it does instead.
    pub refused: Vec<String>,
    /// Per frame: wall and this thread's CPU time in `encode`, on the
    /// M2M encoder and on OpenH264 for the same frames (the baseline).
    pub m2m_ms: f64,
    pub m2m_cpu_ms: f64,
    pub openh264_ms: f64,
    pub openh264_cpu_ms: f64,
}

impl EncodeTest {
    pub fn line(&self) -> String {
        let yes = |b: bool| if b { "yes" } else { "NO" };
        format!(
            "{}: {} frames in, {} coded ({} keyframes; keyframe on request: {}; {} with their timestamps), encodes at {:.1} fps, {:.0} bytes per frame, {:.1} copies per frame; Y-PSNR {:.1} dB over {} frames decoded by {}; drained, restarted: {} of {RESTART_FRAMES} coded, the first a keyframe: {}; refused controls: {}",
            self.encoder,
            self.frames,
            self.coded_frames,
            self.keyframes,
            yes(self.keyframe_on_request),
            self.timestamps_kept,
            self.fps,
            self.bytes_per_frame,
            self.copies_per_frame,
            self.psnr_db,
            self.decoded,
            self.decoder,
            self.after_restart,
            yes(self.restart_keyframe),
            if self.refused.is_empty() { "none".to_owned() } else { self.refused.join("; ") },
        )
    }

    /// The benchmark line: the M2M encoder beside OpenH264 on the same frames.
    pub fn timing_line(&self) -> String {
        format!(
            "encode per frame: M2M {:.2} ms ({:.2} ms CPU in this thread, {:.1} copies), OpenH264 on the same frames {:.2} ms ({:.2} ms CPU, 0 copies): OpenH264 takes {:.2}x the M2M path's CPU",
            self.m2m_ms,
            self.m2m_cpu_ms,
            self.copies_per_frame,
            self.openh264_ms,
            self.openh264_cpu_ms,
            self.openh264_cpu_ms / self.m2m_cpu_ms.max(1e-3)
        )
    }
}

/// This thread's CPU time.
fn thread_cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    Duration::new(
        t.tv_sec.max(0) as u64,
        t.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// Wall and CPU time of `f`, added to `acc`.
fn timed<R>(acc: &mut (Duration, Duration), f: impl FnOnce() -> R) -> R {
    let (wall, cpu) = (Instant::now(), thread_cpu());
    let r = f();
    acc.0 += wall.elapsed();
    acc.1 += thread_cpu().saturating_sub(cpu);
    r
}

/// The same frames through OpenH264: the baseline's wall and CPU time.
fn openh264_baseline(
    settings: &EncoderSettings,
    frames: &[Vec<u8>],
) -> Result<(Duration, Duration), VideoError> {
    let mut enc = OpenH264Encoder::new(settings.clone())?;
    let mut acc = (Duration::ZERO, Duration::ZERO);
    let mut out = Vec::new();
    for (i, packed) in frames.iter().enumerate() {
        let pic = I420::packed(packed, settings.width, settings.height)
            .ok_or_else(|| VideoError::Encoder("captured frame too small".into()))?;
        let frame = Frame {
            pixels: Pixels::I420(pic),
            capture_us: 0,
            copies: 0,
            dmabuf: None,
        };
        timed(&mut acc, || enc.encode(&frame, i == 0, &mut out))?;
    }
    Ok(acc)
}

/// Y-PSNR of `decoded` against `captured` (tightly packed pictures of the
/// same size; only the luma plane, `luma` bytes, is compared).
pub fn y_psnr(captured: &[u8], decoded: &[u8], luma: usize) -> f64 {
    let n = luma.min(captured.len()).min(decoded.len());
    if n == 0 {
        return 0.0;
    }
    let sse: f64 = captured[..n]
        .iter()
        .zip(&decoded[..n])
        .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
        .sum();
    if sse == 0.0 {
        return 99.0;
    }
    10.0 * (255.0f64.powi(2) * n as f64 / sse).log10()
}

/// A picture as tightly packed I420.
fn packed(p: &I420<'_>) -> Vec<u8> {
    let mut v = Vec::new();
    p.pack_into(&mut v);
    v
}

/// Decodes what the encoder made.
enum Decoder {
    H264(Box<H264Decoder>),
    M2m(Box<M2mDecoder>),
    None,
}

impl Decoder {
    fn open(coded: &str, size: (usize, usize)) -> (Self, String) {
        if coded == "H264" {
            return match H264Decoder::new() {
                Ok(d) => (Decoder::H264(Box::new(d)), "OpenH264".into()),
                Err(e) => (Decoder::None, format!("no decoder ({e})")),
            };
        }
        let node = m2m::find_decoders()
            .into_iter()
            .find(|d| d.coded.iter().any(|c| c == coded));
        match node.map(|n| (M2mDecoder::open(&n.path, coded, size), n)) {
            Some((Ok(d), n)) => (
                Decoder::M2m(Box::new(d)),
                format!("{} ({})", n.path.display(), n.card),
            ),
            Some((Err(e), _)) => (Decoder::None, format!("no decoder ({e})")),
            None => (
                Decoder::None,
                format!("no decoder: no M2M decoder takes {coded}"),
            ),
        }
    }

    /// The picture, tightly packed I420.
    fn decode(&mut self, coded: &[u8]) -> Option<Vec<u8>> {
        match self {
            Decoder::H264(d) => d.decode(coded, packed).ok().flatten(),
            Decoder::M2m(d) => d.decode(coded).map_err(|e| log::warn!("{e}")).ok(),
            Decoder::None => None,
        }
    }
}

/// Running totals of the test.
#[derive(Default)]
struct Tally {
    coded: usize,
    keyframes: usize,
    bytes: usize,
    copies: u64,
    psnr_sum: f64,
    decoded: usize,
    /// Wall and CPU time in the M2M encoder.
    spent: (Duration, Duration),
    /// What was captured, for the baseline.
    captured: Vec<Vec<u8>>,
}

/// Encode `frames` frames of the configured camera on the first M2M
/// encoder that makes `coded`, asking for a keyframe halfway, decode
/// them back, then drain and encode a few more.
pub fn encode_test(v: &VideoSection, coded: &str, frames: usize) -> Result<EncodeTest, VideoError> {
    let node: M2mEncoder = m2m::find_encoders()
        .into_iter()
        .find(|e| e.makes(coded))
        .ok_or_else(|| VideoError::Encoder(format!("no V4L2 M2M encoder makes {coded}")))?;
    let mut camera = crate::device::sources::open_camera(v)?;
    let size = camera.size();
    let settings = EncoderSettings {
        width: size.0,
        height: size.1,
        fps: camera.fps(),
        bitrate_bps: v.bitrate_start_kbps * 1000,
        keyframe_interval_frames: v.keyframe_interval_s * camera.fps().max(1),
        library: None,
    };
    let mut enc = M2mVideoEncoder::open(&node.path, coded, &settings)?;
    let (mut decoder, decoder_name) = Decoder::open(coded, size);
    let mut t = Tally::default();
    let mut out = Vec::new();
    let mut keyframe_on_request = false;
    for i in 0..frames {
        let frame = camera.next_frame()?;
        let captured = match &frame.pixels {
            Pixels::I420(p) => packed(p),
            Pixels::H264(_) => {
                return Err(VideoError::Encoder(
                    "the camera gives H.264, not raw frames".into(),
                ))
            }
        };
        let ask = i == frames / 2;
        let result = timed(&mut t.spent, || enc.encode(&frame, ask, &mut out))?;
        t.copies += u64::from(frame.copies + enc.input_copies());
        let Some(key) = result else { continue };
        keyframe_on_request |= ask && key;
        t.coded += 1;
        t.keyframes += usize::from(key);
        t.bytes += out.len();
        if let Some(picture) = decoder.decode(&out) {
            t.psnr_sum += y_psnr(&captured, &picture, size.0 * size.1);
            t.decoded += 1;
        }
        t.captured.push(captured);
    }
    let timestamps_kept = enc.timestamps_kept();
    enc.drain()?;
    let mut again = Vec::new();
    for _ in 0..RESTART_FRAMES {
        let frame = camera.next_frame()?;
        again.extend(enc.encode(&frame, false, &mut out)?);
    }
    enc.drain()?;
    let baseline = openh264_baseline(&settings, &t.captured)?;
    let per_frame = |d: Duration| d.as_secs_f64() * 1000.0 / frames.max(1) as f64;
    Ok(EncodeTest {
        encoder: enc.describe(),
        frames,
        coded_frames: t.coded,
        keyframes: t.keyframes,
        keyframe_on_request,
        timestamps_kept,
        fps: frames as f64 / t.spent.0.as_secs_f64().max(1e-6),
        bytes_per_frame: t.bytes as f64 / t.coded.max(1) as f64,
        copies_per_frame: t.copies as f64 / frames.max(1) as f64,
        psnr_db: t.psnr_sum / t.decoded.max(1) as f64,
        decoded: t.decoded,
        decoder: decoder_name,
        after_restart: again.len(),
        restart_keyframe: again.first().copied().unwrap_or(false),
        refused: enc.refused().to_vec(),
        m2m_ms: per_frame(t.spent.0),
        m2m_cpu_ms: per_frame(t.spent.1),
        openh264_ms: per_frame(baseline.0),
        openh264_cpu_ms: per_frame(baseline.1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psnr_is_infinite_for_equal_pictures_and_falls_with_error() {
        let a = vec![100u8; 64];
        assert_eq!(y_psnr(&a, &a, 64), 99.0);
        let off_by_one: Vec<u8> = a.iter().map(|v| v + 1).collect();
        // MSE 1: 10 log10(255^2) = 48.13 dB.
        assert!((y_psnr(&a, &off_by_one, 64) - 48.13).abs() < 0.01);
        let off_by_ten: Vec<u8> = a.iter().map(|v| v + 10).collect();
        assert!((y_psnr(&a, &off_by_ten, 64) - 28.13).abs() < 0.01);
        assert_eq!(y_psnr(&a, &off_by_ten, 0), 0.0);
    }
}
