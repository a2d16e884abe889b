//! V4L2 cameras: format, size and rate negotiation through the `v4l` crate
//! (pure, in [`negotiate`]); mmap streaming through
//! `crate::device::v4l2_queue` (which knows each buffer's index and exports
//! YU12 buffers as DMABUF for a hardware encoder); kernel timestamps. YU12
//! frames go to the encoder straight from the driver's buffer; NV12 and
//! YUYV take one conversion pass into a pooled buffer; MJPEG is decoded;
//! H.264 is passed through untouched.

use crate::device::convert::{self, MjpegDecoder};
use crate::device::frame::{i420_len, BufferPool, PooledBuffer, I420};
use crate::device::pattern::now_us;
use crate::device::v4l2_queue::{self, Dequeued, Done, MmapQueue, Queue};
use crate::device::video_source::{Frame, Pixels, SharedBuffer, VideoError, VideoSource};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;
use v4l::framesize::FrameSizeEnum;
use v4l::video::Capture;
use v4l::{Device, FourCC};

/// A pixel format callbox can take from a camera, named by its V4L2 fourcc
/// in config files and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum PixelFormat {
    Yu12,
    Nv12,
    Yuyv,
    Mjpg,
    H264,
}

impl PixelFormat {
    /// Every supported format, in the default order of preference.
    pub const ALL: [PixelFormat; 5] = [Self::Yu12, Self::Nv12, Self::Yuyv, Self::Mjpg, Self::H264];

    pub fn fourcc(self) -> &'static str {
        match self {
            Self::Yu12 => "YU12",
            Self::Nv12 => "NV12",
            Self::Yuyv => "YUYV",
            Self::Mjpg => "MJPG",
            Self::H264 => "H264",
        }
    }

    pub fn from_fourcc(fourcc: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.fourcc() == fourcc)
    }

    /// Whether frames in it are already encoded (a raw encoder cannot take them).
    pub fn is_coded(self) -> bool {
        self == Self::H264
    }
}

impl std::fmt::Display for PixelFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.fourcc())
    }
}

impl TryFrom<String> for PixelFormat {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::from_fourcc(&s).ok_or_else(|| {
            let all: Vec<_> = Self::ALL.iter().map(|f| f.fourcc()).collect();
            format!("{s} is not one of {}", all.join(", "))
        })
    }
}

impl From<PixelFormat> for String {
    fn from(f: PixelFormat) -> String {
        f.fourcc().to_owned()
    }
}

fn names(formats: &[PixelFormat]) -> String {
    formats
        .iter()
        .map(|f| f.fourcc())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Sizes a camera offers for one format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sizes {
    Discrete(Vec<(u32, u32)>),
    /// Any size in the range, in steps.
    Range {
        min: (u32, u32),
        max: (u32, u32),
        step: (u32, u32),
    },
}

/// What the negotiation picked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub format: PixelFormat,
    pub width: u32,
    pub height: u32,
}

/// Pick the first preferred format the camera offers, at the size nearest
/// the wanted one (exact if offered). `offered` is by fourcc, as the
/// camera names them (including formats callbox cannot take). `Err` names
/// what the camera has.
pub fn negotiate(
    offered: &[(String, Sizes)],
    preferred: &[PixelFormat],
    want: (u32, u32),
) -> Result<Choice, String> {
    for &fmt in preferred {
        let Some((_, sizes)) = offered.iter().find(|(f, _)| f == fmt.fourcc()) else {
            continue;
        };
        let (width, height) = match sizes {
            Sizes::Discrete(list) => {
                let dist = |&(w, h): &(u32, u32)| w.abs_diff(want.0) + h.abs_diff(want.1);
                match list.iter().min_by_key(|s| dist(s)) {
                    Some(&s) => s,
                    None => continue,
                }
            }
            Sizes::Range { min, max, step } => {
                let snap = |v: u32, lo: u32, hi: u32, st: u32| {
                    let v = v.clamp(lo, hi);
                    lo + (v - lo) / st.max(1) * st.max(1)
                };
                (
                    snap(want.0, min.0, max.0, step.0),
                    snap(want.1, min.1, max.1, step.1),
                )
            }
        };
        return Ok(Choice {
            format: fmt,
            width,
            height,
        });
    }
    let have: Vec<&str> = offered.iter().map(|(f, _)| f.as_str()).collect();
    Err(format!(
        "offers {}; none of the configured formats {}",
        if have.is_empty() {
            "no formats".to_owned()
        } else {
            have.join(", ")
        },
        names(preferred)
    ))
}

/// What a captured buffer needs before the encoder can take it.
enum Layout {
    /// Encoded from the driver's buffer as it is.
    I420,
    H264,
    /// One pass into a pooled I420 buffer.
    Convert(Converter),
}

enum Converter {
    Nv12,
    Yuyv,
    Mjpeg(MjpegDecoder),
}

impl Converter {
    fn run(
        &mut self,
        data: &[u8],
        used: usize,
        stride: usize,
        (w, h): (usize, usize),
        out: &mut [u8],
    ) -> Result<(), convert::ConvertError> {
        match self {
            Converter::Nv12 => convert::nv12_to_i420(data, stride.max(w), w, h, out),
            Converter::Yuyv => convert::yuyv_to_i420(data, stride.max(2 * w), w, h, out),
            Converter::Mjpeg(dec) => dec.decode(&data[..used], w, h, out),
        }
    }
}

pub struct V4l2Camera {
    path: String,
    // Field order matters: the mappings and exported buffers go before the device.
    buffers: MmapQueue,
    /// Each buffer exported as a DMABUF (empty if the driver cannot, or the
    /// frames are not YU12 as captured).
    exported: Vec<OwnedFd>,
    /// The buffer handed out last, queued again at the next frame.
    handed_out: Option<usize>,
    streaming: bool,
    dev: Device,
    layout: Layout,
    format: PixelFormat,
    width: usize,
    height: usize,
    stride: usize,
    fps: u32,
    pool: BufferPool,
    converted: Option<PooledBuffer>,
    /// An H.264 camera was asked for a keyframe it cannot give (logged once).
    keyframe_noted: bool,
}

/// Every format the camera offers with its sizes. `fallback` stands in
/// for drivers that do not enumerate sizes.
pub fn offered_formats(
    dev: &Device,
    fallback: (u32, u32),
) -> std::io::Result<Vec<(String, Sizes)>> {
    let mut offered = Vec::new();
    for f in dev.enum_formats()? {
        let sizes = match dev.enum_framesizes(f.fourcc) {
            Ok(list) => {
                let mut discrete = Vec::new();
                let mut range = None;
                for s in list {
                    match s.size {
                        FrameSizeEnum::Discrete(d) => discrete.push((d.width, d.height)),
                        FrameSizeEnum::Stepwise(s) => {
                            range = Some(Sizes::Range {
                                min: (s.min_width, s.min_height),
                                max: (s.max_width, s.max_height),
                                step: (s.step_width, s.step_height),
                            })
                        }
                    }
                }
                range.unwrap_or(Sizes::Discrete(discrete))
            }
            Err(_) => Sizes::Discrete(vec![fallback]),
        };
        offered.push((fourcc_str(f.fourcc), sizes));
    }
    Ok(offered)
}

/// Frame rates (fps) the camera offers for a format at a size.
pub fn frame_rates(dev: &Device, fourcc: &str, (w, h): (u32, u32)) -> Vec<f64> {
    let Ok(code) = <[u8; 4]>::try_from(fourcc.as_bytes()) else {
        return Vec::new();
    };
    let Ok(list) = dev.enum_frameintervals(FourCC::new(&code), w, h) else {
        return Vec::new();
    };
    let mut rates = Vec::new();
    for i in list {
        match i.interval {
            v4l::frameinterval::FrameIntervalEnum::Discrete(f) if f.numerator > 0 => {
                rates.push(f.denominator as f64 / f.numerator as f64)
            }
            v4l::frameinterval::FrameIntervalEnum::Stepwise(s)
                if s.min.numerator > 0 && s.max.numerator > 0 =>
            {
                rates.push(s.max.denominator as f64 / s.max.numerator as f64);
                rates.push(s.min.denominator as f64 / s.min.numerator as f64);
            }
            _ => {}
        }
    }
    rates
}

fn fourcc_bytes(f: PixelFormat) -> [u8; 4] {
    let b = f.fourcc().as_bytes();
    [b[0], b[1], b[2], b[3]]
}

fn fourcc_str(f: FourCC) -> String {
    f.str()
        .map(str::to_owned)
        .unwrap_or_else(|_| format!("{:?}", f.repr))
}

/// Age of a kernel CLOCK_MONOTONIC timestamp, to turn it into wall time.
// time_t is 32-bit on armv7: the conversions are not useless there.
#[allow(clippy::useless_conversion)]
fn monotonic_age_us(then: i64) -> Option<u64> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) } != 0 {
        return None;
    }
    let now_us = i64::from(now.tv_sec) * 1_000_000 + i64::from(now.tv_nsec) / 1000;
    (then > 0 && now_us >= then).then(|| (now_us - then) as u64)
}

impl V4l2Camera {
    /// Open the camera and start streaming in the best format it offers for the request.
    pub fn open(
        path: &str,
        preferred: &[PixelFormat],
        width: u32,
        height: u32,
        fps: u32,
    ) -> Result<Self, VideoError> {
        let fail = |reason: String| VideoError::Camera {
            device: path.to_owned(),
            reason,
        };
        let dev = Device::with_path(path).map_err(|e| {
            // No node, or a node whose device was unplugged: the camera is
            // not there (yet), which callers may wait out.
            let absent = e.kind() == std::io::ErrorKind::NotFound
                || matches!(e.raw_os_error(), Some(libc::ENODEV | libc::ENXIO));
            if absent {
                VideoError::Gone {
                    device: path.to_owned(),
                    source: e,
                }
            } else {
                fail(format!("cannot open: {e}"))
            }
        })?;
        let caps = dev
            .query_caps()
            .map_err(|e| fail(format!("not a V4L2 device: {e}")))?;
        let offered = offered_formats(&dev, (width, height))
            .map_err(|e| fail(format!("cannot list formats ({}): {e}", caps.card)))?;
        let choice = negotiate(&offered, preferred, (width, height)).map_err(fail)?;
        let format = choice.format;
        let want = v4l::Format::new(
            choice.width,
            choice.height,
            FourCC::new(&fourcc_bytes(format)),
        );
        let got = dev.set_format(&want).map_err(|e| {
            fail(format!(
                "cannot set {format} {}x{}: {e}",
                choice.width, choice.height
            ))
        })?;
        let given = fourcc_str(got.fourcc);
        if given != format.fourcc() {
            return Err(fail(format!("asked for {format}, driver gave {given}")));
        }
        let got_fps = match dev.set_params(&v4l::video::capture::Parameters::with_fps(fps)) {
            Ok(p) if p.interval.numerator > 0 => p.interval.denominator / p.interval.numerator,
            _ => fps,
        };
        let (w, h) = (got.width as usize, got.height as usize);
        if w % 2 != 0 || h % 2 != 0 {
            return Err(fail(format!("{w}x{h}: odd sizes are not supported")));
        }
        let layout = match format {
            PixelFormat::Yu12 => Layout::I420,
            PixelFormat::Nv12 => Layout::Convert(Converter::Nv12),
            PixelFormat::Yuyv => Layout::Convert(Converter::Yuyv),
            PixelFormat::Mjpg => Layout::Convert(Converter::Mjpeg(MjpegDecoder::new())),
            PixelFormat::H264 => Layout::H264,
        };
        let fd = borrow(&dev);
        let buffers = MmapQueue::allocate(fd, Queue::VideoCapture, BUFFERS)
            .map_err(|e| fail(format!("cannot map buffers: {e}")))?;
        let exported = if matches!(layout, Layout::I420) {
            export_all(fd, &buffers, path)
        } else {
            Vec::new()
        };
        log::info!(
            "camera {path} ({}): {format} {w}x{h} @{got_fps} fps (asked {width}x{height} @{fps}, formats {})",
            caps.card,
            names(preferred)
        );
        Ok(V4l2Camera {
            path: path.to_owned(),
            buffers,
            exported,
            handed_out: None,
            streaming: false,
            dev,
            layout,
            format,
            width: w,
            height: h,
            stride: got.stride as usize,
            fps: got_fps,
            pool: BufferPool::new(i420_len(w, h)),
            converted: None,
            keyframe_noted: false,
        })
    }
}

/// Capture buffers: enough for the encoder to hold one while the camera fills others.
const BUFFERS: u32 = 4;
/// A camera that gives no frame for this long is treated as gone.
const FRAME_TIMEOUT: Duration = Duration::from_secs(5);

fn borrow(dev: &Device) -> BorrowedFd<'_> {
    // SAFETY: the device owns the fd and outlives the borrow.
    unsafe { BorrowedFd::borrow_raw(dev.handle().fd()) }
}

/// Export every buffer as a DMABUF; none if the driver cannot (logged),
/// and frames then go to the encoder by copy.
fn export_all(fd: BorrowedFd<'_>, buffers: &MmapQueue, path: &str) -> Vec<OwnedFd> {
    let all: Result<Vec<_>, _> = (0..buffers.count())
        .map(|i| buffers.export(fd, i))
        .collect();
    all.unwrap_or_else(|e| {
        log::info!(
            "camera {path}: buffers cannot be exported as DMABUF ({e}); an encoder gets a copy"
        );
        Vec::new()
    })
}

impl V4l2Camera {
    /// Hand the last frame's buffer back and wait for the next one.
    fn dequeue(&mut self) -> std::io::Result<Done> {
        let fd = borrow(&self.dev);
        if !self.streaming {
            for i in 0..self.buffers.count() {
                self.buffers.queue(fd, i, 0, 0)?;
            }
            v4l2_queue::stream(fd, Queue::VideoCapture, true)?;
            self.streaming = true;
        } else if let Some(i) = self.handed_out.take() {
            self.buffers.queue(fd, i, 0, 0)?;
        }
        let deadline = std::time::Instant::now() + FRAME_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no frame for {} s", FRAME_TIMEOUT.as_secs()),
                ));
            }
            v4l2_queue::wait(fd, libc::POLLIN, left)?;
            if let Dequeued::Buffer(done) = v4l2_queue::dequeue(fd, Queue::VideoCapture)? {
                self.handed_out = Some(done.index);
                return Ok(done);
            }
        }
    }
}

impl Drop for V4l2Camera {
    fn drop(&mut self) {
        if self.streaming {
            let _ = v4l2_queue::stream(borrow(&self.dev), Queue::VideoCapture, false);
        }
    }
}

impl VideoSource for V4l2Camera {
    fn keyframe_requested(&mut self) {
        if matches!(self.layout, Layout::H264) && !self.keyframe_noted {
            self.keyframe_noted = true;
            log::warn!("keyframe requested, but an H.264 camera's stream cannot be asked for one; waiting for its next IDR");
        }
    }

    fn next_frame(&mut self) -> Result<Frame<'_>, VideoError> {
        let done = self.dequeue().map_err(|source| VideoError::Gone {
            device: self.path.clone(),
            source,
        })?;
        let capture_us = monotonic_age_us(done.timestamp_us)
            .map(|age| now_us().saturating_sub(age))
            .unwrap_or_else(now_us);
        let data = self.buffers.data(done.index).unwrap_or_default();
        let used = done.bytesused.min(data.len());
        let dmabuf = self.exported.get(done.index).map(|fd| SharedBuffer {
            fd: fd.as_fd(),
            index: done.index,
            count: self.buffers.count(),
            length: data.len(),
            bytesused: used,
            stride: self.stride.max(self.width),
            rows: self.height,
        });
        let (w, h, stride) = (self.width, self.height, self.stride);
        let conv = |source| VideoError::Convert {
            device: self.path.clone(),
            source,
        };
        // Give the previous conversion buffer back before taking one.
        self.converted = None;
        let (pixels, copies) = match &mut self.layout {
            Layout::H264 => (Pixels::H264(&data[..used]), 0),
            Layout::I420 => {
                let view = I420::with_stride(data, w, h, stride.max(w)).ok_or_else(|| {
                    VideoError::Camera {
                        device: self.path.clone(),
                        reason: format!("YU12 buffer of {} bytes is short for {w}x{h}", data.len()),
                    }
                })?;
                (Pixels::I420(view), 0)
            }
            Layout::Convert(converter) => {
                let mut out = self.pool.take();
                converter
                    .run(data, used, stride, (w, h), &mut out)
                    .map_err(conv)?;
                let buf = self.converted.insert(out);
                let view = I420::packed(buf, w, h)
                    .ok_or_else(|| VideoError::Encoder("pool buffer too small".into()))?;
                (Pixels::I420(view), 1)
            }
        };
        Ok(Frame {
            pixels,
            capture_us,
            copies,
            dmabuf: dmabuf.filter(|_| copies == 0),
        })
    }

    fn size(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    fn fps(&self) -> u32 {
        self.fps
    }

    fn describe(&self) -> String {
        format!(
            "V4L2 {} {} {}x{} @{} fps",
            self.path, self.format, self.width, self.height, self.fps
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefs(p: &[&str]) -> Vec<PixelFormat> {
        p.iter()
            .map(|s| PixelFormat::from_fourcc(s).expect("supported"))
            .collect()
    }

    #[test]
    fn negotiation_prefers_config_order_and_nearest_size() {
        let offered = vec![
            (
                "MJPG".to_owned(),
                Sizes::Discrete(vec![(1280, 720), (640, 480)]),
            ),
            (
                "YUYV".to_owned(),
                Sizes::Discrete(vec![(640, 360), (320, 240)]),
            ),
        ];
        let c = negotiate(&offered, &prefs(&["YU12", "YUYV", "MJPG"]), (640, 480)).unwrap();
        assert_eq!(
            c,
            Choice {
                format: PixelFormat::Yuyv,
                width: 640,
                height: 360
            }
        );
        let c = negotiate(&offered, &prefs(&["MJPG"]), (640, 480)).unwrap();
        assert_eq!((c.width, c.height), (640, 480));
        let range = vec![(
            "YU12".to_owned(),
            Sizes::Range {
                min: (48, 32),
                max: (1920, 1080),
                step: (16, 8),
            },
        )];
        let c = negotiate(&range, &prefs(&["YU12"]), (650, 4000)).unwrap();
        assert_eq!((c.width, c.height), (640, 1080));
        let e = negotiate(&offered, &prefs(&["NV12"]), (640, 480)).unwrap_err();
        assert_eq!(e, "offers MJPG, YUYV; none of the configured formats NV12");
    }

    #[test]
    fn a_missing_camera_is_gone_and_a_non_camera_is_a_clear_error() {
        let open = |path| {
            V4l2Camera::open(path, &prefs(&["YUYV"]), 640, 480, 30)
                .err()
                .unwrap()
        };
        // Gone is what callers wait out (the daemon starts audio-only).
        let e = open("/dev/video-callbox-none");
        assert!(matches!(e, VideoError::Gone { .. }), "{e:?}");
        assert!(
            e.to_string()
                .starts_with("camera /dev/video-callbox-none is gone: No such file"),
            "{e}"
        );
        let e = open("/dev/null");
        assert!(matches!(e, VideoError::Camera { .. }), "{e:?}");
        assert!(
            e.to_string()
                .starts_with("camera /dev/null: not a V4L2 device"),
            "{e}"
        );
    }
}
