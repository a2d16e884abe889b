//! H.264: the encoder trait the capture loop drives, OpenH264 behind it
//! (built from source, or Cisco's binary loaded at run time), camera
//! pass-through, and a decoder for tests, benchmarks and display sinks.
//! The V4L2 M2M hardware encoder is a later issue; it slots in behind
//! [`VideoEncoder`].

use crate::device::frame::I420;
use crate::device::video_source::{Frame, Pixels, VideoError};
use openh264::encoder::{
    BitRate, Complexity, Encoder, EncoderConfig, FrameRate, FrameType, IntraFramePeriod, Level,
    Profile, RateControlMode, UsageType,
};
use openh264::OpenH264API;
use std::path::PathBuf;

pub trait VideoEncoder: Send {
    /// Encode one frame into `out` (Annex B, cleared first). `Ok(None)`:
    /// the rate control skipped this frame; `Ok(Some(true))`: a keyframe.
    fn encode(
        &mut self,
        frame: &Frame<'_>,
        keyframe: bool,
        out: &mut Vec<u8>,
    ) -> Result<Option<bool>, VideoError>;
    fn set_bitrate(&mut self, bps: u32);
    fn describe(&self) -> String;
    /// Pixel copies the encoder makes of each frame before encoding it
    /// (a hardware encoder that cannot import the camera's buffer: 1).
    fn input_copies(&self) -> u32 {
        0
    }
}

#[derive(Debug, Clone)]
pub struct EncoderSettings {
    pub width: usize,
    pub height: usize,
    pub fps: u32,
    pub bitrate_bps: u32,
    pub keyframe_interval_frames: u32,
    /// Cisco's `libopenh264.so`, loaded at run time instead of the built-in encoder.
    pub library: Option<PathBuf>,
}

/// The smallest H.264 level whose macroblock rate and frame size fit.
pub fn level_for(width: usize, height: usize, fps: u32) -> Level {
    let mbs = width.div_ceil(16) * height.div_ceil(16);
    let rate = mbs * fps as usize;
    match (mbs, rate) {
        (..=396, ..=11_880) => Level::Level_2_1,
        (..=1_620, ..=40_500) => Level::Level_3_0,
        (..=3_600, ..=108_000) => Level::Level_3_1,
        (..=5_120, ..=216_000) => Level::Level_3_2,
        (..=8_192, ..=245_760) => Level::Level_4_0,
        _ => Level::Level_5_1,
    }
}

pub struct OpenH264Encoder {
    enc: Encoder,
    settings: EncoderSettings,
    source: String,
}

fn err(what: &str) -> impl Fn(openh264::Error) -> VideoError + '_ {
    move |e| VideoError::Encoder(format!("{what}: {e}"))
}

/// OpenH264 from Cisco's binary at `library`, or the built-in one; and
/// which it is, for the log.
fn api(library: Option<&std::path::Path>) -> Result<(OpenH264API, String), VideoError> {
    Ok(match library {
        Some(path) => (
            OpenH264API::from_blob_path(path).map_err(|e| {
                VideoError::Encoder(format!(
                    "cannot load Cisco's OpenH264 from {}: {e}",
                    path.display()
                ))
            })?,
            format!("Cisco OpenH264 {}", path.display()),
        ),
        None => (OpenH264API::from_source(), "built-in OpenH264".to_owned()),
    })
}

impl OpenH264Encoder {
    pub fn new(settings: EncoderSettings) -> Result<Self, VideoError> {
        let (api, source) = api(settings.library.as_deref())?;
        let config = EncoderConfig::new()
            .usage_type(UsageType::CameraVideoRealTime)
            .rate_control_mode(RateControlMode::Bitrate)
            .bitrate(BitRate::from_bps(settings.bitrate_bps))
            .max_frame_rate(FrameRate::from_hz(settings.fps as f32))
            .profile(Profile::Baseline)
            .level(level_for(settings.width, settings.height, settings.fps))
            .complexity(Complexity::Low)
            .skip_frames(true)
            .intra_frame_period(IntraFramePeriod::from_num_frames(
                settings.keyframe_interval_frames,
            ))
            .num_threads(1);
        let enc = Encoder::with_api_config(api, config).map_err(err("create encoder"))?;
        Ok(OpenH264Encoder {
            enc,
            settings,
            source,
        })
    }
}

impl VideoEncoder for OpenH264Encoder {
    fn encode(
        &mut self,
        frame: &Frame<'_>,
        keyframe: bool,
        out: &mut Vec<u8>,
    ) -> Result<Option<bool>, VideoError> {
        let Pixels::I420(yuv) = &frame.pixels else {
            return Err(VideoError::Encoder(
                "OpenH264 needs raw frames; set encoder = \"passthrough\" for an H.264 camera"
                    .into(),
            ));
        };
        if keyframe {
            self.enc.force_intra_frame();
        }
        let bs = self.enc.encode(yuv).map_err(err("encode"))?;
        out.clear();
        if matches!(bs.frame_type(), FrameType::Skip | FrameType::Invalid) {
            return Ok(None);
        }
        bs.write_vec(out);
        Ok(Some(matches!(
            bs.frame_type(),
            FrameType::IDR | FrameType::I
        )))
    }

    fn set_bitrate(&mut self, bps: u32) {
        if bps == self.settings.bitrate_bps {
            return;
        }
        self.settings.bitrate_bps = bps;
        let mut info = openh264_sys2::SBitrateInfo {
            iLayer: openh264_sys2::SPATIAL_LAYER_ALL,
            iBitrate: bps as i32,
        };
        // SAFETY: the option id and the struct match OpenH264's API; the
        // encoder copies the value during the call.
        let rc = unsafe {
            self.enc.raw_api().set_option(
                openh264_sys2::ENCODER_OPTION_BITRATE,
                (&mut info as *mut openh264_sys2::SBitrateInfo).cast(),
            )
        };
        if rc != 0 {
            log::warn!("OpenH264 refused bitrate {bps}: {rc}");
        }
    }

    fn describe(&self) -> String {
        let s = &self.settings;
        format!(
            "{} constrained baseline {}x{} @{} fps, {} kbit/s, keyframe every {} frames",
            self.source,
            s.width,
            s.height,
            s.fps,
            s.bitrate_bps / 1000,
            s.keyframe_interval_frames
        )
    }
}

/// NAL unit types in an Annex B access unit.
pub fn nal_types(au: &[u8]) -> impl Iterator<Item = u8> + '_ {
    openh264::nal_units(au).filter_map(|nal| {
        let body = nal.iter().skip_while(|&&b| b == 0).skip(1);
        body.copied().next().map(|h| h & 0x1f)
    })
}

/// The SPS and PPS an encoder sent, put back before an IDR that comes
/// without them (an encoder that cannot repeat its sequence header sends
/// them once, and a late subscriber or a PLI keyframe would not decode).
#[derive(Debug, Default)]
pub struct ParamSets {
    sps: Vec<u8>,
    pps: Vec<u8>,
}

impl ParamSets {
    /// Remember `au`'s SPS and PPS; put the cached ones before an IDR that
    /// lacks them. Returns whether it did.
    pub fn complete(&mut self, au: &mut Vec<u8>) -> bool {
        let (mut has_sps, mut has_pps, mut idr) = (false, false, false);
        for nal in openh264::nal_units(au) {
            // The unit without its start code and the zeros before the next
            // one (a NAL unit never ends in a zero byte).
            let start = nal
                .iter()
                .position(|&b| b != 0)
                .map_or(nal.len(), |i| i + 1);
            let end = nal.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
            let body = nal.get(start..end).unwrap_or_default();
            let with_start_code = || [&[0, 0, 0, 1], body].concat();
            match body.first().map(|h| h & 0x1f) {
                Some(7) => (has_sps, self.sps) = (true, with_start_code()),
                Some(8) => (has_pps, self.pps) = (true, with_start_code()),
                Some(5) => idr = true,
                _ => {}
            }
        }
        if !idr || (has_sps && has_pps) || self.sps.is_empty() || self.pps.is_empty() {
            return false;
        }
        let mut whole = Vec::with_capacity(self.sps.len() + self.pps.len() + au.len());
        whole.extend_from_slice(&self.sps);
        whole.extend_from_slice(&self.pps);
        whole.extend_from_slice(au);
        *au = whole;
        true
    }
}

/// An H.264 camera's stream, sent as it comes.
pub struct Passthrough;

impl Passthrough {
    pub fn new() -> Self {
        Passthrough
    }
}

impl Default for Passthrough {
    fn default() -> Self {
        Self::new()
    }
}

impl VideoEncoder for Passthrough {
    fn encode(
        &mut self,
        frame: &Frame<'_>,
        keyframe: bool,
        out: &mut Vec<u8>,
    ) -> Result<Option<bool>, VideoError> {
        let Pixels::H264(au) = frame.pixels else {
            return Err(VideoError::Encoder(
                "passthrough needs an H.264 camera; this one delivers raw frames (use openh264)"
                    .into(),
            ));
        };
        // The source was told of a keyframe request (it may restart its
        // program, or note that it cannot); this only passes the stream on.
        let _ = keyframe;
        out.clear();
        out.extend_from_slice(au);
        Ok(Some(nal_types(au).any(|t| t == 5)))
    }

    fn set_bitrate(&mut self, _bps: u32) {}

    fn describe(&self) -> String {
        "H.264 pass-through from the camera".into()
    }
}

/// OpenH264's decoder: the screen's, and the tests' for checking what was sent.
pub struct H264Decoder {
    dec: openh264::decoder::Decoder,
}

impl H264Decoder {
    pub fn new() -> Result<Self, VideoError> {
        Self::with_library(None)
    }

    /// The decoder of Cisco's binary at `library` (`video.openh264_library`),
    /// or the built-in one.
    pub fn with_library(library: Option<&std::path::Path>) -> Result<Self, VideoError> {
        let (api, _) = api(library)?;
        let config = openh264::decoder::DecoderConfig::new();
        Ok(H264Decoder {
            dec: openh264::decoder::Decoder::with_api_config(api, config)
                .map_err(err("create decoder"))?,
        })
    }

    /// Decode one access unit; `f` sees the picture if one came out.
    pub fn decode<R>(
        &mut self,
        au: &[u8],
        f: impl FnOnce(&I420<'_>) -> R,
    ) -> Result<Option<R>, VideoError> {
        use openh264::formats::YUVSource;
        let Some(pic) = self.dec.decode(au).map_err(err("decode"))? else {
            return Ok(None);
        };
        let (w, h) = pic.dimensions();
        // U and V share OpenH264's one chroma stride (its iStride[1]).
        let (ys, us, _) = pic.strides();
        let decoded = I420 {
            width: w,
            height: h,
            y: pic.y(),
            u: pic.u(),
            v: pic.v(),
            y_stride: ys,
            uv_stride: us,
        };
        // The planes as decoded, padded rows and all: whoever keeps the
        // picture packs it (the screen), no copy here.
        Ok(Some(f(&decoded)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::frame::i420_len;
    use crate::device::pattern::{self, Stamp};
    use crate::device::video_source::pattern_frame;

    fn settings(library: Option<PathBuf>) -> EncoderSettings {
        EncoderSettings {
            width: 320,
            height: 240,
            fps: 30,
            bitrate_bps: 500_000,
            keyframe_interval_frames: 300,
            library,
        }
    }

    #[test]
    fn pattern_survives_encode_and_decode_and_keyframes_come_on_request() {
        let mut enc = OpenH264Encoder::new(settings(None)).unwrap();
        let mut dec = H264Decoder::new().unwrap();
        let mut buf = vec![0; i420_len(320, 240)];
        let mut out = Vec::new();
        let mut kinds = Vec::new();
        for counter in 1..=30u32 {
            let stamp = Stamp {
                counter,
                capture_us: 1_000_000 + counter as u64,
            };
            let frame = pattern_frame(&mut buf, 320, 240, stamp).unwrap();
            // PLI at frame 20 -> that frame is a keyframe.
            let key = enc.encode(&frame, counter == 20, &mut out).unwrap();
            let Some(key) = key else { continue };
            kinds.push((counter, key));
            if key {
                assert!(nal_types(&out).any(|t| t == 7), "SPS with every keyframe");
            }
            let read = dec
                .decode(&out, |f| (f.width, f.height, pattern::read(f)))
                .unwrap();
            assert_eq!(read, Some((320, 240, Some(stamp))));
        }
        assert_eq!(kinds[0], (1, true));
        assert!(kinds.contains(&(20, true)), "{kinds:?}");
        assert_eq!(kinds.iter().filter(|k| k.1).count(), 2, "{kinds:?}");
    }

    #[test]
    fn levels_fit_the_size() {
        assert!(matches!(level_for(640, 480, 30), Level::Level_3_0));
        assert!(matches!(level_for(1280, 720, 30), Level::Level_3_1));
        assert!(matches!(level_for(1920, 1080, 30), Level::Level_4_0));
    }

    #[test]
    fn a_bad_library_path_is_a_clear_error() {
        let e = OpenH264Encoder::new(settings(Some("/nonexistent/libopenh264.so".into())))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("cannot load Cisco's OpenH264 from /nonexistent/libopenh264.so"),
            "{e}"
        );
        // The screen's decoder loads the same binary.
        let missing = std::path::Path::new("/nonexistent/libopenh264.so");
        assert!(H264Decoder::with_library(Some(missing)).is_err());
    }

    #[test]
    fn an_idr_without_parameter_sets_gets_the_cached_ones() {
        let sps = [0, 0, 0, 1, 0x67, 0x42, 0xe0, 0x1f];
        let pps = [0, 0, 0, 1, 0x68, 0xce];
        let idr = [0, 0, 0, 1, 0x65, 0x88, 0x80];
        let p_slice = [0, 0, 0, 1, 0x41, 0x9a];
        let mut sets = ParamSets::default();
        let mut first: Vec<u8> = [&sps[..], &pps, &idr].concat();
        assert!(!sets.complete(&mut first), "it has its own");
        let mut p = p_slice.to_vec();
        assert!(!sets.complete(&mut p), "not an IDR");
        assert_eq!(p, p_slice);
        let mut later = idr.to_vec();
        assert!(sets.complete(&mut later));
        assert_eq!(later, [&sps[..], &pps, &idr].concat());
        assert_eq!(nal_types(&later).collect::<Vec<_>>(), [7, 8, 5]);
        let mut cold = ParamSets::default();
        let mut lone = idr.to_vec();
        assert!(!cold.complete(&mut lone), "nothing cached yet");
    }
}
