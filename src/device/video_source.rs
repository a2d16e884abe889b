//! Where video frames come from: the camera (V4L2, `crate::device::v4l2`)
//! or the synthetic test pattern, behind one trait. A frame borrows its
//! pixels from the source until the next call, which is what lets the
//! encoder read a driver's buffer in place.

use crate::device::frame::{i420_len, I420};
use crate::device::pattern::{self, Stamp};
use std::time::Duration;

/// The pixels of one captured frame.
#[derive(Debug, Clone, Copy)]
pub enum Pixels<'a> {
    I420(I420<'a>),
    /// An access unit from an H.264 camera (Annex B), passed through.
    H264(&'a [u8]),
}

#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    pub pixels: Pixels<'a>,
    /// Capture time, µs since the Unix epoch.
    pub capture_us: u64,
    /// Full-frame pixel copies made to produce this frame (0: zero-copy).
    pub copies: u32,
    /// The driver buffer the pixels are in, exported as a DMABUF, for an
    /// encoder that can take it without a copy.
    pub dmabuf: Option<SharedBuffer<'a>>,
}

/// A camera buffer exported as a DMABUF, and the layout of the YU12
/// picture in it (what an encoder must match to import it).
#[derive(Debug, Clone, Copy)]
pub struct SharedBuffer<'a> {
    pub fd: std::os::fd::BorrowedFd<'a>,
    /// Its index in the camera's queue, and how many buffers that has.
    pub index: usize,
    pub count: usize,
    /// Bytes in the buffer, and of the picture.
    pub length: usize,
    pub bytesused: usize,
    /// Bytes per luma line, and luma rows before the U plane.
    pub stride: usize,
    pub rows: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum VideoError {
    #[error("camera {device}: {reason}")]
    Camera { device: String, reason: String },
    #[error("camera {device} is gone: {source}")]
    Gone {
        device: String,
        source: std::io::Error,
    },
    #[error("camera {device}: frame conversion failed: {source}")]
    Convert {
        device: String,
        source: crate::device::convert::ConvertError,
    },
    #[error("encoder: {0}")]
    Encoder(String),
    #[error("{0} is not implemented yet")]
    NotImplemented(&'static str),
}

pub trait VideoSource: Send {
    /// Block until the next frame.
    fn next_frame(&mut self) -> Result<Frame<'_>, VideoError>;
    /// Width and height of the frames.
    fn size(&self) -> (usize, usize);
    fn fps(&self) -> u32;
    /// One line for the log: what was opened and in which format.
    fn describe(&self) -> String;
    /// A subscriber asked for a keyframe; a source that makes its own
    /// H.264 may act on it (an encoder on raw frames does).
    fn keyframe_requested(&mut self) {}
}

/// The test pattern with `stamp`, drawn into `buf` (tightly packed I420 at
/// `width` x `height`), as a camera hands out a frame; `None` if `buf` is
/// too small.
pub fn pattern_frame(
    buf: &mut [u8],
    width: usize,
    height: usize,
    stamp: Stamp,
) -> Option<Frame<'_>> {
    pattern::draw(buf, width, height, stamp);
    Some(Frame {
        pixels: Pixels::I420(I420::packed(buf, width, height)?),
        capture_us: stamp.capture_us,
        copies: 0,
        dmabuf: None,
    })
}

/// The synthetic camera: the test pattern, drawn in place each frame at
/// the configured rate.
pub struct SyntheticCamera {
    width: usize,
    height: usize,
    fps: u32,
    buf: Vec<u8>,
    counter: u32,
    pacer: crate::device::audio::Pacer,
}

impl SyntheticCamera {
    pub fn new(width: usize, height: usize, fps: u32) -> Self {
        SyntheticCamera {
            width,
            height,
            fps,
            buf: vec![0; i420_len(width, height)],
            counter: 0,
            pacer: crate::device::audio::Pacer::new(Duration::from_secs(1) / fps.max(1)),
        }
    }
}

impl VideoSource for SyntheticCamera {
    fn next_frame(&mut self) -> Result<Frame<'_>, VideoError> {
        self.pacer.wait();
        self.counter = self.counter.wrapping_add(1);
        let capture_us = pattern::now_us();
        let stamp = Stamp {
            counter: self.counter,
            capture_us,
        };
        pattern_frame(&mut self.buf, self.width, self.height, stamp)
            .ok_or_else(|| VideoError::Encoder("pattern buffer too small".into()))
    }

    fn size(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    fn fps(&self) -> u32 {
        self.fps
    }

    fn describe(&self) -> String {
        format!(
            "synthetic test pattern I420 {}x{} @{} fps",
            self.width, self.height, self.fps
        )
    }
}
