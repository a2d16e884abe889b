//! Decoding through a V4L2 memory-to-memory stateful decoder, one frame
//! at a time: what `callbox probe --encoder` uses to decode the hardware
//! encoder's output back when the coded format is not H.264 (vicodec's
//! FWHT on the test rig). It follows the stateful decoder interface:
//! coded frames on OUTPUT, the driver reads the first header and signals
//! `V4L2_EVENT_SOURCE_CHANGE`, then CAPTURE is set up at the format it
//! reports. Not for calls: the call's decoder is OpenH264.

use crate::device::m2m;
use crate::device::m2m_encoder::yu12_chroma_offsets;
use crate::device::v4l2_queue::{self, Dequeued, MmapQueue, Queue};
use crate::device::video_source::VideoError;
use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};
use v4l2r::ioctl::{self, EventType, SubscribeEventFlags};
use v4l2r::Format;

const TIMEOUT: Duration = Duration::from_secs(1);

pub struct M2mDecoder {
    file: File,
    path: String,
    coded_q: Queue,
    raw_q: Queue,
    coded: MmapQueue,
    /// Set up at the first source change: the buffers and their layout.
    raw: Option<(MmapQueue, Format)>,
    size: (usize, usize),
}

fn err(path: &str, what: &str, e: impl std::fmt::Display) -> VideoError {
    VideoError::Encoder(format!("decoder {path}: {what}: {e}"))
}

impl M2mDecoder {
    /// Open the decoder at `path` for `coded` frames of `size`.
    pub fn open(path: &Path, coded: &str, size: (usize, usize)) -> Result<Self, VideoError> {
        let name = path.display().to_string();
        let node = m2m::open_node(path, coded).map_err(|e| err(&name, "open", e))?;
        let (file, fourcc) = (node.file, node.fourcc);
        let fd = file.as_fd();
        let (coded_q, raw_q) = (node.output, node.capture);
        v4l2_queue::set_format(fd, coded_q, &fourcc, size)
            .map_err(|e| err(&name, "coded format", e))?;
        ioctl::subscribe_event(
            &fd,
            EventType::SourceChange(0),
            SubscribeEventFlags::empty(),
        )
        .map_err(|e| err(&name, "subscribe", e))?;
        let coded_buffers =
            MmapQueue::allocate(fd, coded_q, 1).map_err(|e| err(&name, "OUTPUT buffers", e))?;
        v4l2_queue::stream(fd, coded_q, true).map_err(|e| err(&name, "STREAMON", e))?;
        Ok(M2mDecoder {
            file,
            path: name,
            coded_q,
            raw_q,
            coded: coded_buffers,
            raw: None,
            size,
        })
    }

    /// Decode one coded frame into tightly packed YU12 of the frame's size.
    pub fn decode(&mut self, coded: &[u8]) -> Result<Vec<u8>, VideoError> {
        let fd = self.file.as_fd();
        let dst = self.coded.data_mut(0).unwrap_or_default();
        let n = coded.len().min(dst.len());
        dst[..n].copy_from_slice(&coded[..n]);
        self.coded
            .queue(fd, 0, n, 0)
            .map_err(|e| err(&self.path, "queue", e))?;
        let deadline = Instant::now() + TIMEOUT;
        let mut coded_back = false;
        let mut picture = None;
        while !(coded_back && picture.is_some()) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(err(&self.path, "decode", "no picture in 1 s"));
            }
            let ready = v4l2_queue::wait(
                self.file.as_fd(),
                libc::POLLIN | libc::POLLOUT | libc::POLLPRI,
                left,
            )
            .map_err(|e| err(&self.path, "poll", e))?;
            if ready & libc::POLLPRI != 0 {
                self.source_changed()?;
            }
            if let Ok(Dequeued::Buffer(_)) = v4l2_queue::dequeue(self.file.as_fd(), self.coded_q) {
                coded_back = true;
            }
            if picture.is_none() {
                picture = self.take_picture()?;
            }
        }
        picture.ok_or_else(|| err(&self.path, "decode", "no picture"))
    }

    /// The driver read the stream's header: set up CAPTURE at its format.
    fn source_changed(&mut self) -> Result<(), VideoError> {
        let fd = self.file.as_fd();
        let _: Result<ioctl::Event, _> = ioctl::dqevent(&fd);
        if self.raw.is_some() {
            return Ok(());
        }
        let format: Format =
            ioctl::g_fmt(&fd, self.raw_q).map_err(|e| err(&self.path, "CAPTURE format", e))?;
        let buffers = MmapQueue::allocate(fd, self.raw_q, 2)
            .map_err(|e| err(&self.path, "CAPTURE buffers", e))?;
        for i in 0..buffers.count() {
            buffers
                .queue(fd, i, 0, 0)
                .map_err(|e| err(&self.path, "queue CAPTURE", e))?;
        }
        v4l2_queue::stream(fd, self.raw_q, true).map_err(|e| err(&self.path, "STREAMON", e))?;
        self.raw = Some((buffers, format));
        Ok(())
    }

    fn take_picture(&mut self) -> Result<Option<Vec<u8>>, VideoError> {
        let fd = self.file.as_fd();
        let Some((buffers, format)) = &self.raw else {
            return Ok(None);
        };
        let Ok(Dequeued::Buffer(d)) = v4l2_queue::dequeue(fd, self.raw_q) else {
            return Ok(None);
        };
        let stride = format
            .plane_fmt
            .first()
            .map_or(self.size.0, |p| p.bytesperline as usize);
        let data = buffers.data(d.index).unwrap_or_default();
        let packed = pack_yu12(data, stride, format.height as usize, self.size);
        buffers
            .queue(fd, d.index, 0, 0)
            .map_err(|e| err(&self.path, "requeue CAPTURE", e))?;
        Ok(Some(packed))
    }
}

/// The top-left `size` of a YU12 picture laid out at `stride` and `rows`,
/// tightly packed (missing bytes stay 0).
pub fn pack_yu12(data: &[u8], stride: usize, rows: usize, (w, h): (usize, usize)) -> Vec<u8> {
    let (cw, ch, cs) = (w / 2, h / 2, stride / 2);
    let (u_at, v_at) = yu12_chroma_offsets(stride, rows);
    let mut out = vec![0u8; w * h + 2 * cw * ch];
    let planes = [
        (0, stride, w, h, 0),
        (u_at, cs, cw, ch, w * h),
        (v_at, cs, cw, ch, w * h + cw * ch),
    ];
    for (at, src_stride, width, height, to) in planes {
        for r in 0..height {
            let src = data.get(at + r * src_stride..at + r * src_stride + width);
            if let Some(src) = src {
                out[to + r * width..to + (r + 1) * width].copy_from_slice(src);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_padded_picture_is_packed_to_its_size() {
        // 4x2 picture in a buffer of stride 8 and 4 rows.
        let mut buf = vec![0u8; 8 * 4 * 3 / 2];
        buf[0..4].copy_from_slice(&[1, 2, 3, 4]);
        buf[8..12].copy_from_slice(&[5, 6, 7, 8]);
        buf[32..34].copy_from_slice(&[50, 51]);
        buf[40..42].copy_from_slice(&[70, 71]);
        let packed = pack_yu12(&buf, 8, 4, (4, 2));
        assert_eq!(packed, [1, 2, 3, 4, 5, 6, 7, 8, 50, 51, 70, 71]);
    }
}
