//! Which V4L2 controls a hardware H.264 encoder gets, with which values,
//! and what is done instead when a driver refuses one. Pure: the encoder
//! (`crate::device::m2m_encoder`) sets them and logs each refusal once.

use crate::device::h264::{level_for, EncoderSettings};
use openh264::encoder::Level;
use v4l2r::bindings as b;

/// One control to set at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Control {
    pub id: u32,
    pub name: &'static str,
    pub value: i32,
    /// What the encoder does when the driver refuses it.
    pub otherwise: &'static str,
}

pub const FORCE_KEY_FRAME: u32 = b::V4L2_CID_MPEG_VIDEO_FORCE_KEY_FRAME;
pub const BITRATE: u32 = b::V4L2_CID_MPEG_VIDEO_BITRATE;

/// The V4L2 menu value of the H.264 level the frames need (the SDP's
/// 42e01f allows asymmetry, so any level a receiver decodes will do).
pub fn v4l2_level(width: usize, height: usize, fps: u32) -> i32 {
    (match level_for(width, height, fps) {
        Level::Level_2_1 => b::v4l2_mpeg_video_h264_level_V4L2_MPEG_VIDEO_H264_LEVEL_2_1,
        Level::Level_3_0 => b::v4l2_mpeg_video_h264_level_V4L2_MPEG_VIDEO_H264_LEVEL_3_0,
        Level::Level_3_1 => b::v4l2_mpeg_video_h264_level_V4L2_MPEG_VIDEO_H264_LEVEL_3_1,
        Level::Level_3_2 => b::v4l2_mpeg_video_h264_level_V4L2_MPEG_VIDEO_H264_LEVEL_3_2,
        Level::Level_4_0 => b::v4l2_mpeg_video_h264_level_V4L2_MPEG_VIDEO_H264_LEVEL_4_0,
        _ => b::v4l2_mpeg_video_h264_level_V4L2_MPEG_VIDEO_H264_LEVEL_5_1,
    }) as i32
}

/// The controls for a call: constrained baseline at the level the size
/// needs, constant bitrate at the start rate, an IDR every keyframe
/// interval, and SPS/PPS with every IDR so a late subscriber decodes.
pub fn call_controls(s: &EncoderSettings) -> Vec<Control> {
    let period = s.keyframe_interval_frames.clamp(1, i32::MAX as u32) as i32;
    vec![
        Control {
            id: b::V4L2_CID_MPEG_VIDEO_H264_PROFILE,
            name: "h264_profile",
            value: b::v4l2_mpeg_video_h264_profile_V4L2_MPEG_VIDEO_H264_PROFILE_CONSTRAINED_BASELINE
                as i32,
            otherwise: "the driver's profile is sent as it is",
        },
        Control {
            id: b::V4L2_CID_MPEG_VIDEO_H264_LEVEL,
            name: "h264_level",
            value: v4l2_level(s.width, s.height, s.fps),
            otherwise: "the driver's level is sent as it is",
        },
        Control {
            id: b::V4L2_CID_MPEG_VIDEO_BITRATE_MODE,
            name: "video_bitrate_mode",
            value: b::v4l2_mpeg_video_bitrate_mode_V4L2_MPEG_VIDEO_BITRATE_MODE_CBR as i32,
            otherwise: "the driver's rate control",
        },
        Control {
            id: BITRATE,
            name: "video_bitrate",
            value: s.bitrate_bps.min(i32::MAX as u32) as i32,
            otherwise: "congestion control cannot steer the bitrate",
        },
        Control {
            id: b::V4L2_CID_MPEG_VIDEO_H264_I_PERIOD,
            name: "h264_i_frame_period",
            value: period,
            otherwise: "the GOP size sets the keyframe interval",
        },
        Control {
            id: b::V4L2_CID_MPEG_VIDEO_GOP_SIZE,
            name: "video_gop_size",
            value: period,
            otherwise: "the driver's keyframe interval",
        },
        Control {
            id: b::V4L2_CID_MPEG_VIDEO_REPEAT_SEQ_HEADER,
            name: "repeat_sequence_header",
            value: 1,
            otherwise: "SPS/PPS are cached and put before every IDR",
        },
    ]
}

/// Whether a new congestion-control target is worth a control call:
/// more than 5 % away from what the encoder has.
pub fn bitrate_changed(current: u32, target: u32) -> bool {
    current.abs_diff(target) as u64 * 20 > current as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(width: usize, height: usize) -> EncoderSettings {
        EncoderSettings {
            width,
            height,
            fps: 30,
            bitrate_bps: 800_000,
            keyframe_interval_frames: 60,
            library: None,
        }
    }

    #[test]
    fn a_call_asks_for_constrained_baseline_at_the_level_of_its_size() {
        let c = call_controls(&settings(640, 480));
        let value = |id| c.iter().find(|c| c.id == id).map(|c| c.value);
        assert_eq!(value(b::V4L2_CID_MPEG_VIDEO_H264_PROFILE), Some(1));
        // 640x480@30: 1200 macroblocks, 36000/s: level 3.0 (menu 8).
        assert_eq!(value(b::V4L2_CID_MPEG_VIDEO_H264_LEVEL), Some(8));
        assert_eq!(
            v4l2_level(1280, 720, 30),
            9,
            "720p30 is level 3.1, as 42e01f"
        );
        assert_eq!(value(BITRATE), Some(800_000));
        assert_eq!(value(b::V4L2_CID_MPEG_VIDEO_H264_I_PERIOD), Some(60));
        assert_eq!(value(b::V4L2_CID_MPEG_VIDEO_REPEAT_SEQ_HEADER), Some(1));
    }

    #[test]
    fn small_bitrate_moves_are_not_sent_to_the_driver() {
        assert!(!bitrate_changed(800_000, 820_000));
        assert!(bitrate_changed(800_000, 700_000));
        assert!(bitrate_changed(0, 1));
    }
}
