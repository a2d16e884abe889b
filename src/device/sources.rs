//! One table from a config kind to its implementation (librespot's
//! `audio_backend::find` is the model): the camera, the video encoder, the
//! microphone and the speaker are opened here and nowhere else, so the
//! daemon and `callbox probe` open a device the same way.

use crate::device::alsa_io::{AlsaCapture, AlsaPlayback};
use crate::device::audio::{AudioError, AudioSink, AudioSource, NullSink, ToneSource, WavSink};
use crate::device::command_camera::CommandCamera;
use crate::device::config::{
    AudioSection, CaptureKind, EncoderKind, PlaybackKind, VideoSection, VideoSourceKind,
};
use crate::device::fallback_encoder::{FallbackEncoder, MakeFallback};
use crate::device::h264::{EncoderSettings, OpenH264Encoder, Passthrough, VideoEncoder};
use crate::device::m2m;
use crate::device::m2m_encoder::M2mVideoEncoder;
use crate::device::stats::MediaStats;
use crate::device::v4l2::{PixelFormat, V4l2Camera};
use crate::device::video_source::{SyntheticCamera, VideoError, VideoSource};
use std::sync::Arc;

/// The camera formats worth asking for with this encoder: a passthrough
/// device wants the camera's H.264, a raw encoder cannot use it.
pub fn camera_formats(v: &VideoSection) -> Vec<PixelFormat> {
    let wants_coded = v.encoder == EncoderKind::Passthrough;
    v.formats
        .iter()
        .copied()
        .filter(|f| f.is_coded() == wants_coded)
        .collect()
}

/// Open the configured camera, asking it for what the encoder can take.
pub fn open_camera(v: &VideoSection) -> Result<Box<dyn VideoSource>, VideoError> {
    Ok(match v.source {
        VideoSourceKind::Synthetic => Box::new(SyntheticCamera::new(
            v.width as usize,
            v.height as usize,
            v.fps,
        )),
        VideoSourceKind::V4l2 => {
            let formats = camera_formats(v);
            if formats.is_empty() {
                return Err(VideoError::Camera {
                    device: v.device.clone(),
                    reason: format!(
                        "video.formats leaves no format the {:?} encoder can take",
                        v.encoder
                    ),
                });
            }
            Box::new(V4l2Camera::open(
                &v.device, &formats, v.width, v.height, v.fps,
            )?)
        }
        VideoSourceKind::Command => Box::new(CommandCamera::start(
            &v.command,
            (v.width as usize, v.height as usize),
            v.fps,
            v.command_keyframe,
        )?),
    })
}

/// Make the configured encoder for frames of this size and rate.
pub fn open_encoder(
    v: &VideoSection,
    (width, height): (usize, usize),
    fps: u32,
) -> Result<Box<dyn VideoEncoder>, VideoError> {
    let settings = EncoderSettings {
        width,
        height,
        fps,
        bitrate_bps: v.bitrate_start_kbps * 1000,
        keyframe_interval_frames: v.keyframe_interval_s * fps.max(1),
        library: v.openh264_library.clone(),
    };
    Ok(match v.encoder {
        EncoderKind::Openh264 => Box::new(OpenH264Encoder::new(settings)?),
        EncoderKind::Passthrough => Box::new(Passthrough::new()),
        EncoderKind::V4l2m2m => hardware(v, settings)?,
        EncoderKind::Auto => match hardware(v, settings.clone()) {
            Ok(e) => e,
            Err(e) => {
                log::info!("video.encoder = \"auto\": OpenH264, since {e}");
                Box::new(OpenH264Encoder::new(settings)?)
            }
        },
    })
}

/// The board's M2M H.264 encoder (`video.encoder_device`, else the first
/// found), falling back to OpenH264 if it fails in a call.
fn hardware(
    v: &VideoSection,
    settings: EncoderSettings,
) -> Result<Box<dyn VideoEncoder>, VideoError> {
    let path = hardware_encoder_node(v).map_err(VideoError::Encoder)?;
    let m2m = M2mVideoEncoder::open(&path, "H264", &settings)?;
    let fallback: MakeFallback =
        Box::new(move || Ok(Box::new(OpenH264Encoder::new(settings)?) as Box<dyn VideoEncoder>));
    Ok(Box::new(FallbackEncoder::new(Box::new(m2m), fallback)))
}

/// The M2M H.264 encoder node to use: `video.encoder_device`, else the
/// first found; else why there is none.
pub fn hardware_encoder_node(v: &VideoSection) -> Result<std::path::PathBuf, String> {
    if let Some(path) = &v.encoder_device {
        return Ok(path.clone());
    }
    let found = m2m::find_encoders();
    let h264 = found.iter().find(|e| e.makes("H264"));
    h264.map(|e| e.path.clone())
        .ok_or_else(|| no_h264_encoder(&found))
}

/// Why no M2M encoder will do: none at all, or what those there make.
fn no_h264_encoder(found: &[m2m::M2mEncoder]) -> String {
    let there: Vec<String> = found
        .iter()
        .map(|e| {
            format!(
                "{} ({}) makes {}",
                e.path.display(),
                e.card,
                e.coded.join(", ")
            )
        })
        .collect();
    if there.is_empty() {
        "the board has no V4L2 M2M encoder".into()
    } else {
        format!("no V4L2 M2M encoder makes H264 ({})", there.join("; "))
    }
}

/// Open the configured microphone.
pub fn open_microphone(
    a: &AudioSection,
    stats: Arc<MediaStats>,
) -> Result<Box<dyn AudioSource>, AudioError> {
    Ok(match a.capture {
        CaptureKind::Synthetic => Box::new(ToneSource::new(a.tone_hz)),
        CaptureKind::Alsa => Box::new(AlsaCapture::open(&a.capture_device, stats)?),
    })
}

/// Open the configured speaker.
pub fn open_speaker(
    a: &AudioSection,
    stats: Arc<MediaStats>,
) -> Result<Box<dyn AudioSink>, AudioError> {
    Ok(match (a.playback, &a.wav_path) {
        (PlaybackKind::Null, _) => Box::new(NullSink::new()),
        (PlaybackKind::Wav, Some(path)) => Box::new(WavSink::create(path)?),
        (PlaybackKind::Wav, None) => return Err(AudioError::NoWavPath),
        (PlaybackKind::Alsa, _) => Box::new(AlsaPlayback::open(&a.playback_device, stats)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn video(encoder: EncoderKind, formats: &[PixelFormat]) -> VideoSection {
        VideoSection {
            encoder,
            formats: formats.to_vec(),
            device: "/dev/video-callbox-none".into(),
            ..VideoSection::default()
        }
    }

    /// The camera is asked for what the encoder takes: H.264 only for
    /// passthrough, raw formats only for a raw encoder, in config order.
    #[test]
    fn the_camera_is_asked_for_what_the_encoder_takes() {
        use PixelFormat::*;
        let all = [H264, Yuyv, Mjpg, Yu12];
        assert_eq!(
            camera_formats(&video(EncoderKind::Passthrough, &all)),
            [H264]
        );
        assert_eq!(
            camera_formats(&video(EncoderKind::Openh264, &all)),
            [Yuyv, Mjpg, Yu12]
        );
    }

    /// A format list that leaves the encoder nothing is an error naming
    /// the camera, before any device is touched: not a camera that is
    /// merely absent (which the daemon would wait out, audio-only).
    #[test]
    fn formats_the_encoder_cannot_take_are_a_camera_error_not_an_absent_camera() {
        let e = open_camera(&video(EncoderKind::Openh264, &[PixelFormat::H264]))
            .err()
            .expect("refused");
        assert!(
            matches!(&e, VideoError::Camera { device, .. } if device == "/dev/video-callbox-none"),
            "{e:?}"
        );
        let e = open_camera(&video(EncoderKind::Passthrough, &[PixelFormat::H264]))
            .err()
            .expect("no such camera");
        assert!(matches!(e, VideoError::Gone { .. }), "{e:?}");
    }

    /// `auto` without a usable hardware encoder is OpenH264 (the log says
    /// why); `v4l2m2m` pinned to a node that is not there is an error
    /// naming it.
    #[test]
    fn auto_falls_to_openh264_and_a_missing_hardware_encoder_is_named() {
        let mut v = video(EncoderKind::Auto, &[PixelFormat::Yu12]);
        v.encoder_device = Some("/dev/video-callbox-no-encoder".into());
        let auto = open_encoder(&v, (320, 240), 30).expect("auto always has an encoder");
        assert!(auto.describe().contains("OpenH264"), "{}", auto.describe());
        v.encoder = EncoderKind::V4l2m2m;
        let e = open_encoder(&v, (320, 240), 30)
            .err()
            .expect("no such node");
        assert!(
            matches!(&e, VideoError::Encoder(m) if m.contains("/dev/video-callbox-no-encoder")),
            "{e:?}"
        );
        let vicodec = m2m::M2mEncoder {
            path: "/dev/video1".into(),
            driver: "vicodec".into(),
            card: "vicodec".into(),
            coded: vec!["FWHT".into()],
            raw: vec!["YU12".into()],
            controls: vec![],
        };
        assert_eq!(
            no_h264_encoder(&[vicodec]),
            "no V4L2 M2M encoder makes H264 (/dev/video1 (vicodec) makes FWHT)"
        );
        assert_eq!(no_h264_encoder(&[]), "the board has no V4L2 M2M encoder");
    }
}
