//! A hardware encoder that falls back to software when it fails: the
//! first error from the V4L2 M2M encoder in a call is logged with its
//! reason (`E_ENCODER_FALLBACK`), the OpenH264 encoder takes over from that
//! frame on, starting with a keyframe, and the call goes on.

use crate::device::h264::VideoEncoder;
use crate::device::video_source::{Frame, VideoError};

pub type MakeFallback = Box<dyn FnOnce() -> Result<Box<dyn VideoEncoder>, VideoError> + Send>;

pub struct FallbackEncoder {
    current: Box<dyn VideoEncoder>,
    /// Taken when the first encoder fails.
    fallback: Option<MakeFallback>,
    bitrate: u32,
}

impl FallbackEncoder {
    pub fn new(first: Box<dyn VideoEncoder>, fallback: MakeFallback) -> Self {
        FallbackEncoder {
            current: first,
            fallback: Some(fallback),
            bitrate: 0,
        }
    }

    /// Whether the fallback has taken over.
    pub fn fell_back(&self) -> bool {
        self.fallback.is_none()
    }
}

impl VideoEncoder for FallbackEncoder {
    fn encode(
        &mut self,
        frame: &Frame<'_>,
        keyframe: bool,
        out: &mut Vec<u8>,
    ) -> Result<Option<bool>, VideoError> {
        let e = match self.current.encode(frame, keyframe, out) {
            Err(e) if self.fallback.is_some() => e,
            result => return result,
        };
        let failed = self.current.describe();
        let make = self
            .fallback
            .take()
            .ok_or(e.to_string())
            .map_err(VideoError::Encoder)?;
        let mut next = make()?;
        log::error!(
            "E_ENCODER_FALLBACK video encoder {failed} failed: {e}; {} takes over",
            next.describe()
        );
        if self.bitrate > 0 {
            next.set_bitrate(self.bitrate);
        }
        self.current = next;
        self.current.encode(frame, true, out)
    }

    fn set_bitrate(&mut self, bps: u32) {
        self.bitrate = bps;
        self.current.set_bitrate(bps);
    }

    fn describe(&self) -> String {
        self.current.describe()
    }

    fn input_copies(&self) -> u32 {
        self.current.input_copies()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::h264::{EncoderSettings, H264Decoder, OpenH264Encoder};
    use crate::device::pattern::Stamp;
    use crate::device::video_source::pattern_frame;

    /// A hardware encoder that works for `good` frames, then fails.
    struct Failing {
        good: usize,
    }

    impl VideoEncoder for Failing {
        fn encode(
            &mut self,
            _: &Frame<'_>,
            _: bool,
            out: &mut Vec<u8>,
        ) -> Result<Option<bool>, VideoError> {
            if self.good == 0 {
                return Err(VideoError::Encoder("no coded frame in 1000 ms".into()));
            }
            self.good -= 1;
            *out = vec![0, 0, 0, 1, 0x65];
            Ok(Some(true))
        }
        fn set_bitrate(&mut self, _: u32) {}
        fn describe(&self) -> String {
            "failing".into()
        }
        fn input_copies(&self) -> u32 {
            1
        }
    }

    #[test]
    fn a_failing_hardware_encoder_hands_over_to_openh264_with_a_keyframe() {
        let make: MakeFallback = Box::new(|| {
            Ok(Box::new(OpenH264Encoder::new(EncoderSettings {
                width: 160,
                height: 120,
                fps: 30,
                bitrate_bps: 300_000,
                keyframe_interval_frames: 600,
                library: None,
            })?) as Box<dyn VideoEncoder>)
        });
        let mut enc = FallbackEncoder::new(Box::new(Failing { good: 2 }), make);
        let mut buf = vec![0; 160 * 120 * 3 / 2];
        let mut out = Vec::new();
        let mut decoder = H264Decoder::new().unwrap();
        let mut decoded = 0;
        for counter in 0..5 {
            let frame = pattern_frame(
                &mut buf,
                160,
                120,
                Stamp {
                    counter,
                    capture_us: 1,
                },
            )
            .unwrap();
            let key = enc
                .encode(&frame, false, &mut out)
                .expect("no error reaches the pipeline");
            match counter {
                0 | 1 => assert!(!enc.fell_back() && enc.input_copies() == 1),
                2 => assert_eq!(key, Some(true), "the first software frame is a keyframe"),
                _ => {}
            }
            if counter >= 2 {
                decoded += usize::from(decoder.decode(&out, |p| p.width).unwrap() == Some(160));
            }
        }
        assert!(enc.fell_back());
        assert_eq!(enc.input_copies(), 0);
        assert_eq!(decoded, 3, "every software frame decodes");
    }
}
