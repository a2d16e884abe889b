//! Encoding through a V4L2 memory-to-memory stateful encoder (the board's
//! hardware encoder), on `v4l2r`'s ioctl layer and `crate::device::v4l2_queue`.
//!
//! - Formats: the coded format on CAPTURE (H.264 on a board, FWHT on the
//!   test rig's vicodec: the coded format is a parameter), YU12 on OUTPUT
//!   at the driver's stride and padded height; the frame rate by `S_PARM`;
//!   the call's controls (`crate::device::m2m_controls`), each refusal
//!   logged once with what is done instead.
//! - Raw frames: the first frame decides. A camera buffer exported as a
//!   DMABUF whose layout matches the encoder's is queued as it is (zero
//!   copy, same index as in the camera's queue); otherwise each frame is
//!   copied once into the encoder's MMAP buffers, and the reason is logged.
//! - Flow: `encode` queues the frame with its capture time as timestamp and
//!   waits (poll) until its coded frame is out and its raw buffer is back,
//!   so the camera never refills a buffer the encoder still reads. The
//!   driver's timestamps come back on the coded buffers.
//! - Keyframes: `FORCE_KEY_FRAME`; a driver without it is restarted
//!   (stateful encoders begin with a keyframe). SPS/PPS are cached and put
//!   before an IDR that lacks them.
//! - Teardown: `V4L2_ENC_CMD_STOP` drains; `EPIPE` (a drain already ended)
//!   resets the streams, as does `EBUSY` on a control.

use crate::device::h264::{EncoderSettings, ParamSets, VideoEncoder};
use crate::device::v4l2_queue::{self, Dequeued, MmapQueue, Queue};
use crate::device::video_source::{Frame, Pixels, SharedBuffer, VideoError};
use crate::device::{m2m, m2m_controls};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::time::{Duration, Instant};
use v4l2r::ioctl::{self, BufferFlags, EncoderCommand, GCtrlError};
use v4l2r::nix::errno::Errno;

const CODED_BUFFERS: u32 = 4;
const COPIED_BUFFERS: u32 = 2;
/// How long a frame may take through the encoder.
const ENCODE_TIMEOUT: Duration = Duration::from_secs(1);

/// Where the encoder wants each plane of a YU12 picture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawLayout {
    pub stride: usize,
    pub rows: usize,
    pub sizeimage: usize,
}

/// Why a camera buffer cannot go to the encoder as it is, if it cannot.
pub fn import_refusal(shared: Option<&SharedBuffer<'_>>, want: RawLayout) -> Option<String> {
    let Some(s) = shared else {
        return Some("the camera's frames are not in an exportable YU12 buffer (converted, or the driver cannot export)".into());
    };
    (s.stride != want.stride || s.rows != want.rows || s.length < want.sizeimage).then(|| {
        format!(
            "the camera's YU12 has stride {} and {} rows in {} bytes; the encoder wants stride {} and {} rows in {}",
            s.stride, s.rows, s.length, want.stride, want.rows, want.sizeimage
        )
    })
}

/// How raw frames reach the encoder.
enum Input {
    /// Chosen at the first frame.
    Undecided,
    /// The camera's buffers, imported.
    Imported { slots: usize },
    /// Copied into the encoder's own buffers, for `reason`.
    Copied {
        buffers: MmapQueue,
        free: Vec<usize>,
        reason: String,
    },
}

/// What the coded queue gave back; a coded frame's bytes are in the
/// caller's buffer.
enum Taken {
    Nothing,
    /// The stream ended: `EPIPE`, or an empty buffer flagged LAST.
    Ended,
    Coded {
        flagged_key: bool,
        timestamp_us: i64,
    },
}

pub struct M2mVideoEncoder {
    file: File,
    path: String,
    card: String,
    kind: String,
    /// The raw (OUTPUT) and coded (CAPTURE) queues.
    raw_q: Queue,
    coded_q: Queue,
    raw: RawLayout,
    size: (usize, usize),
    input: Input,
    coded: MmapQueue,
    streaming: bool,
    /// Raw buffers the driver holds.
    in_flight: usize,
    param_sets: ParamSets,
    /// Controls the driver refused, with what is done instead.
    refused: Vec<String>,
    keyframe_by_restart: bool,
    bitrate: u32,
    /// The driver refused `video_bitrate`: congestion control cannot steer it.
    bitrate_refused: bool,
    /// Coded frames that came back with their raw frame's timestamp.
    timestamps_kept: u64,
}

fn err(path: &str, what: &str, e: impl std::fmt::Display) -> VideoError {
    VideoError::Encoder(format!("{path}: {what}: {e}"))
}

impl M2mVideoEncoder {
    /// Open the encoder at `path` making `coded` (a fourcc) from YU12
    /// frames, set up for `settings`.
    pub fn open(path: &Path, coded: &str, settings: &EncoderSettings) -> Result<Self, VideoError> {
        let name = path.display().to_string();
        let node = m2m::open_node(path, coded).map_err(|e| err(&name, "open", e))?;
        let (file, fourcc) = (node.file, node.fourcc);
        let fd = file.as_fd();
        let (raw_q, coded_q) = (node.output, node.capture);
        let size = (settings.width, settings.height);
        v4l2_queue::set_format(fd, coded_q, &fourcc, size)
            .map_err(|e| err(&name, "coded format", e))?;
        let raw = set_raw_format(fd, raw_q, size).map_err(|e| err(&name, "raw format", e))?;
        let mut refused = Vec::new();
        if let Err(e) = set_frame_rate(fd, raw_q, settings.fps) {
            note_refused(
                &mut refused,
                &name,
                "frame rate (S_PARM)",
                e,
                "the driver's rate",
            );
        }
        let mut bitrate_refused = false;
        for c in m2m_controls::call_controls(settings) {
            if let Err(e) = set_control(fd, c.id, c.value) {
                note_refused(&mut refused, &name, c.name, e, c.otherwise);
                bitrate_refused |= c.id == m2m_controls::BITRATE;
            }
        }
        let coded_buffers = MmapQueue::allocate(fd, coded_q, CODED_BUFFERS)
            .map_err(|e| err(&name, "CAPTURE buffers", e))?;
        Ok(M2mVideoEncoder {
            path: name,
            card: node.card,
            kind: coded.to_owned(),
            raw_q,
            coded_q,
            raw,
            size,
            input: Input::Undecided,
            coded: coded_buffers,
            streaming: false,
            in_flight: 0,
            param_sets: ParamSets::default(),
            refused,
            keyframe_by_restart: false,
            bitrate: settings.bitrate_bps,
            bitrate_refused,
            timestamps_kept: 0,
            file,
        })
    }

    /// Controls the driver refused, each with what is done instead.
    pub fn refused(&self) -> &[String] {
        &self.refused
    }

    /// Coded frames that came back with their raw frame's timestamp.
    pub fn timestamps_kept(&self) -> u64 {
        self.timestamps_kept
    }
}

fn set_raw_format(fd: BorrowedFd<'_>, q: Queue, size: (usize, usize)) -> Result<RawLayout, String> {
    let got = v4l2_queue::set_format(fd, q, b"YU12", size)?;
    // Drivers pad to their block size (vicodec: the height to 8).
    if got.width as usize != size.0 || (got.height as usize) < size.1 {
        return Err(format!(
            "offers {}x{} for {}x{}",
            got.width, got.height, size.0, size.1
        ));
    }
    let plane = got.plane_fmt.first().ok_or("no plane")?;
    Ok(RawLayout {
        stride: plane.bytesperline as usize,
        rows: got.height as usize,
        sizeimage: plane.sizeimage as usize,
    })
}

fn set_frame_rate(fd: BorrowedFd<'_>, q: Queue, fps: u32) -> Result<(), Errno> {
    let mut parm = v4l2r::bindings::v4l2_streamparm {
        type_: q as u32,
        ..Default::default()
    };
    parm.parm.output.timeperframe = v4l2r::bindings::v4l2_fract {
        numerator: 1,
        denominator: fps.max(1),
    };
    ioctl::s_parm::<_, v4l2r::bindings::v4l2_streamparm>(&fd, parm)
        .map(|_| ())
        .map_err(Errno::from)
}

fn set_control(fd: BorrowedFd<'_>, id: u32, value: i32) -> Result<(), Errno> {
    match ioctl::s_ctrl(&fd, id, value) {
        Ok(_) => Ok(()),
        Err(GCtrlError::Invalid) => Err(Errno::EINVAL),
        Err(GCtrlError::IoctlError(e)) => Err(e),
    }
}

fn note_refused(refused: &mut Vec<String>, path: &str, name: &str, e: Errno, otherwise: &str) {
    log::warn!("M2M encoder {path} refused {name} ({e}): {otherwise}");
    refused.push(format!("{name} ({}): {otherwise}", e.desc()));
}

impl M2mVideoEncoder {
    fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// The first frame decides how frames come in.
    fn choose_input(&mut self, shared: Option<&SharedBuffer<'_>>) -> Result<(), VideoError> {
        let fd = self.file.as_fd();
        let refusal = import_refusal(shared, self.raw);
        let reason = match (shared, refusal) {
            (Some(s), None) => match v4l2_queue::allocate_dmabuf(fd, self.raw_q, s.count as u32) {
                Ok(slots) if slots >= s.count => {
                    self.input = Input::Imported { slots };
                    log::info!(
                        "M2M encoder {}: the camera's buffers go in as DMABUF (zero copy)",
                        self.path
                    );
                    return Ok(());
                }
                Ok(slots) => format!(
                    "the encoder takes {slots} DMABUF slots for the camera's {}",
                    s.count
                ),
                Err(e) => format!("the encoder cannot import DMABUF ({e})"),
            },
            (_, refusal) => refusal.unwrap_or_default(),
        };
        log::info!("M2M encoder {}: one copy per frame: {reason}", self.path);
        let buffers = MmapQueue::allocate(fd, self.raw_q, COPIED_BUFFERS)
            .map_err(|e| err(&self.path, "OUTPUT buffers", e))?;
        let free = (0..buffers.count()).collect();
        self.input = Input::Copied {
            buffers,
            free,
            reason,
        };
        Ok(())
    }

    /// Queue the frame's pixels on the raw queue.
    fn queue_frame(&mut self, frame: &Frame<'_>) -> Result<(), VideoError> {
        let Pixels::I420(pic) = &frame.pixels else {
            return Err(VideoError::Encoder(
                "the M2M encoder takes raw frames".into(),
            ));
        };
        if (pic.width, pic.height) != self.size {
            return Err(VideoError::Encoder(format!(
                "a {}x{} frame for an encoder set up for {}x{}",
                pic.width, pic.height, self.size.0, self.size.1
            )));
        }
        if matches!(self.input, Input::Undecided) {
            self.choose_input(frame.dmabuf.as_ref())?;
        }
        let fd = self.file.as_fd();
        let ts = frame.capture_us as i64;
        let raw = self.raw;
        let queued = match &mut self.input {
            Input::Imported { slots } => {
                let s = frame
                    .dmabuf
                    .filter(|s| import_refusal(Some(s), raw).is_none())
                    .ok_or_else(|| {
                        VideoError::Encoder(
                            "a frame without a matching DMABUF for an importing encoder".into(),
                        )
                    })?;
                v4l2_queue::queue_dmabuf(
                    fd,
                    self.raw_q,
                    (s.index % *slots, s.fd),
                    (s.length, raw.sizeimage),
                    ts,
                )
            }
            Input::Copied { buffers, free, .. } => {
                let i = free
                    .pop()
                    .ok_or_else(|| VideoError::Encoder("M2M: no free OUTPUT buffer".into()))?;
                let dst = buffers.data_mut(i).unwrap_or_default();
                if !copy_yu12(pic, (raw.stride, raw.rows), dst) {
                    return Err(err(&self.path, "OUTPUT buffer", "shorter than the frame"));
                }
                buffers.queue(fd, i, raw.sizeimage, ts)
            }
            Input::Undecided => return Err(err(&self.path, "input", "not chosen")),
        };
        queued.map_err(|e| err(&self.path, "queue a frame", e))?;
        self.in_flight += 1;
        Ok(())
    }

    /// Start both queues (after open, a reset or a drain).
    fn start(&mut self) -> Result<(), VideoError> {
        if self.streaming {
            return Ok(());
        }
        let fd = self.file.as_fd();
        let start = || -> std::io::Result<()> {
            for i in 0..self.coded.count() {
                self.coded.queue(fd, i, 0, 0)?;
            }
            v4l2_queue::stream(fd, self.coded_q, true)?;
            v4l2_queue::stream(fd, self.raw_q, true)
        };
        start().map_err(|e| err(&self.path, "STREAMON", e))?;
        self.streaming = true;
        Ok(())
    }

    /// Stop both queues: the driver drops what it holds, and the next
    /// frame starts the encoder again, with a keyframe.
    fn reset(&mut self) {
        if self.streaming {
            let fd = self.file.as_fd();
            let _ = v4l2_queue::stream(fd, self.raw_q, false);
            let _ = v4l2_queue::stream(fd, self.coded_q, false);
        }
        self.streaming = false;
        self.in_flight = 0;
        if let Input::Copied { buffers, free, .. } = &mut self.input {
            *free = (0..buffers.count()).collect();
        }
    }

    /// Wait until the queued frame's coded frame is out (its bytes in
    /// `out`) and its raw buffer back; `None` if the stream ended instead.
    fn collect(&mut self, out: &mut Vec<u8>) -> Result<Option<(bool, i64)>, VideoError> {
        let deadline = Instant::now() + ENCODE_TIMEOUT;
        let mut coded = None;
        loop {
            self.take_back_raw()?;
            if coded.is_none() {
                match self.take_coded(out)? {
                    Taken::Nothing => {}
                    Taken::Ended => {
                        self.reset();
                        return Ok(None);
                    }
                    Taken::Coded {
                        flagged_key,
                        timestamp_us,
                    } => coded = Some((flagged_key, timestamp_us)),
                }
            }
            if coded.is_some() && self.in_flight == 0 {
                return Ok(coded);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(err(
                    &self.path,
                    "encode",
                    format!("no coded frame in {} ms", ENCODE_TIMEOUT.as_millis()),
                ));
            }
            v4l2_queue::wait(self.fd(), libc::POLLIN | libc::POLLOUT, left)
                .map_err(|e| err(&self.path, "poll", e))?;
        }
    }

    fn take_back_raw(&mut self) -> Result<(), VideoError> {
        while self.in_flight > 0 {
            match v4l2_queue::dequeue(self.fd(), self.raw_q) {
                Ok(Dequeued::Buffer(d)) => {
                    self.in_flight -= 1;
                    if let Input::Copied { free, .. } = &mut self.input {
                        free.push(d.index);
                    }
                }
                Ok(_) => break,
                Err(e) => return Err(err(&self.path, "dequeue OUTPUT", e)),
            }
        }
        Ok(())
    }

    /// Dequeue a coded buffer, if one is ready, copying its bytes into `out`.
    fn take_coded(&mut self, out: &mut Vec<u8>) -> Result<Taken, VideoError> {
        let fd = self.file.as_fd();
        let d = match v4l2_queue::dequeue(fd, self.coded_q) {
            Ok(Dequeued::Buffer(d)) => d,
            Ok(Dequeued::NotReady) => return Ok(Taken::Nothing),
            Ok(Dequeued::Drained) => return Ok(Taken::Ended),
            Err(e) => return Err(err(&self.path, "dequeue CAPTURE", e)),
        };
        let data = self.coded.data(d.index).unwrap_or_default();
        out.clear();
        out.extend_from_slice(&data[..d.bytesused.min(data.len())]);
        self.coded
            .queue(fd, d.index, 0, 0)
            .map_err(|e| err(&self.path, "requeue CAPTURE", e))?;
        if d.flags.contains(BufferFlags::LAST) && out.is_empty() {
            return Ok(Taken::Ended);
        }
        Ok(Taken::Coded {
            flagged_key: d.flags.contains(BufferFlags::KEYFRAME),
            timestamp_us: d.timestamp_us,
        })
    }

    /// Ask for a keyframe: the control, or a restart where it is refused.
    fn force_keyframe(&mut self) {
        if !self.keyframe_by_restart {
            match set_control(self.fd(), m2m_controls::FORCE_KEY_FRAME, 1) {
                Ok(()) => return,
                Err(Errno::EBUSY) => {}
                Err(e) => {
                    let path = self.path.clone();
                    note_refused(
                        &mut self.refused,
                        &path,
                        "force_key_frame",
                        e,
                        "a keyframe request restarts the encoder",
                    );
                    self.keyframe_by_restart = true;
                }
            }
        }
        self.reset();
    }

    /// Stop the encoder the way the stateful API asks (`V4L2_ENC_CMD_STOP`:
    /// the driver finishes what it holds and marks its last buffer), then
    /// stop the queues; the next frame starts it again. Returns the coded
    /// frames the drain flushed.
    pub fn drain(&mut self) -> Result<usize, VideoError> {
        if !self.streaming {
            return Ok(0);
        }
        let mut flushed = 0;
        if ioctl::encoder_cmd::<_, ()>(&self.fd(), &EncoderCommand::Stop(false)).is_ok() {
            let deadline = Instant::now() + ENCODE_TIMEOUT;
            let mut scratch = Vec::new();
            loop {
                let _ = self.take_back_raw();
                match self.take_coded(&mut scratch)? {
                    Taken::Coded { .. } => flushed += usize::from(!scratch.is_empty()),
                    Taken::Ended => break,
                    Taken::Nothing => {}
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    log::warn!(
                        "M2M encoder {}: no last buffer {} ms after the drain command",
                        self.path,
                        ENCODE_TIMEOUT.as_millis()
                    );
                    break;
                }
                let _ = v4l2_queue::wait(self.fd(), libc::POLLIN, left);
            }
        }
        self.reset();
        Ok(flushed)
    }
}

impl Drop for M2mVideoEncoder {
    fn drop(&mut self) {
        if let Err(e) = self.drain() {
            log::warn!("{e}");
        }
    }
}

/// Whether a coded frame is a keyframe: from the bitstream where it says
/// (drivers do not all flag the buffer: vicodec's encoder does not), else
/// from the driver's buffer flag.
pub fn is_keyframe(coded: &str, data: &[u8], flagged: bool) -> bool {
    match coded {
        "H264" => crate::device::h264::nal_types(data).any(|t| t == 5),
        // The FWHT header's flags word (big-endian, at byte 20): I_FRAME is bit 10.
        "FWHT" => data
            .get(20..24)
            .is_some_and(|f| u32::from_be_bytes([f[0], f[1], f[2], f[3]]) & (1 << 10) != 0),
        _ => flagged,
    }
}

/// Where U and V start in a YU12 buffer of `stride` bytes per luma line
/// and `rows` luma rows (chroma lines are half as long, half as many).
pub fn yu12_chroma_offsets(stride: usize, rows: usize) -> (usize, usize) {
    let u = stride * rows;
    (u, u + stride / 2 * rows.div_ceil(2))
}

/// Copy an I420 picture into the top of a YU12 buffer of `stride` bytes
/// per luma line and `rows` luma rows (the driver's padded height).
pub fn copy_yu12(
    frame: &crate::device::frame::I420<'_>,
    (stride, rows): (usize, usize),
    dst: &mut [u8],
) -> bool {
    let (w, h) = (frame.width, frame.height);
    let (cw, ch, cs) = (w.div_ceil(2), h.div_ceil(2), stride / 2);
    let (u_at, v_at) = yu12_chroma_offsets(stride, rows);
    let planes = [
        (frame.y, frame.y_stride, w, h, stride, 0),
        (frame.u, frame.uv_stride, cw, ch, cs, u_at),
        (frame.v, frame.uv_stride, cw, ch, cs, v_at),
    ];
    for (src, src_stride, width, rows, dst_stride, offset) in planes {
        for r in 0..rows {
            let (Some(s), Some(d)) = (
                src.get(r * src_stride..r * src_stride + width),
                dst.get_mut(offset + r * dst_stride..offset + r * dst_stride + width),
            ) else {
                return false;
            };
            d.copy_from_slice(s);
        }
    }
    true
}

impl VideoEncoder for M2mVideoEncoder {
    fn encode(
        &mut self,
        frame: &Frame<'_>,
        keyframe: bool,
        out: &mut Vec<u8>,
    ) -> Result<Option<bool>, VideoError> {
        // A stopped encoder starts with a keyframe anyway.
        if keyframe && self.streaming {
            self.force_keyframe();
        }
        self.queue_frame(frame)?;
        self.start()?;
        let Some((flagged, timestamp_us)) = self.collect(out)? else {
            return Ok(None);
        };
        if out.is_empty() {
            return Ok(None);
        }
        self.timestamps_kept += u64::from(timestamp_us == frame.capture_us as i64);
        if self.kind == "H264" {
            self.param_sets.complete(out);
        }
        Ok(Some(is_keyframe(&self.kind, out, flagged)))
    }

    fn set_bitrate(&mut self, bps: u32) {
        if self.bitrate_refused || !m2m_controls::bitrate_changed(self.bitrate, bps) {
            return;
        }
        self.bitrate = bps;
        let result = match set_control(self.fd(), m2m_controls::BITRATE, bps as i32) {
            Err(Errno::EBUSY) => {
                // Some drivers take it only between streams.
                let _ = self.drain();
                set_control(self.fd(), m2m_controls::BITRATE, bps as i32)
            }
            r => r,
        };
        if let Err(e) = result {
            let path = self.path.clone();
            note_refused(
                &mut self.refused,
                &path,
                "video_bitrate",
                e,
                "congestion control cannot steer the bitrate",
            );
            self.bitrate_refused = true;
        }
    }

    fn input_copies(&self) -> u32 {
        u32::from(matches!(self.input, Input::Copied { .. }))
    }

    fn describe(&self) -> String {
        let input = match &self.input {
            Input::Imported { .. } => "the camera's buffers imported as DMABUF".to_owned(),
            Input::Copied { reason, .. } => format!("one copy per frame: {reason}"),
            Input::Undecided => "input chosen at the first frame".to_owned(),
        };
        format!(
            "V4L2 M2M encoder {} ({}) making {} from YU12 {}x{} (buffers stride {}, {} rows; {input})",
            self.path, self.card, self.kind, self.size.0, self.size.1, self.raw.stride, self.raw.rows
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::frame::I420;

    #[test]
    fn a_frame_goes_to_the_top_of_a_padded_yu12_buffer() {
        // 4x2 frame, luma 1.., U 50.., V 70..; buffer: stride 8, 4 rows.
        let packed: Vec<u8> = (1..=8).chain([50, 51]).chain([70, 71]).collect();
        let frame = I420::packed(&packed, 4, 2).unwrap();
        let mut buf = vec![0u8; 8 * 4 * 3 / 2];
        assert!(copy_yu12(&frame, (8, 4), &mut buf));
        assert_eq!(&buf[0..4], &[1, 2, 3, 4]);
        assert_eq!(&buf[8..12], &[5, 6, 7, 8]);
        assert_eq!(&buf[32..34], &[50, 51], "U after all 4 luma rows");
        assert_eq!(
            &buf[32 + 8..32 + 10],
            &[70, 71],
            "V after 2 chroma rows of stride 4"
        );
        assert!(
            !copy_yu12(&frame, (8, 4), &mut buf[..20]),
            "a short buffer is refused"
        );
    }

    #[test]
    fn keyframes_are_read_from_the_bitstream_where_it_says() {
        let mut fwht = vec![0u8; 44];
        assert!(
            !is_keyframe("FWHT", &fwht, true),
            "a P-frame, whatever the flag"
        );
        fwht[22] = 0x04; // flags = 1 << 10
        assert!(is_keyframe("FWHT", &fwht, false));
        let idr = [0, 0, 0, 1, 0x67, 0x42, 0, 0, 0, 1, 0x65, 0x88];
        assert!(is_keyframe("H264", &idr, false));
        assert!(!is_keyframe("H264", &[0, 0, 0, 1, 0x41, 0x9a], true));
        assert!(
            is_keyframe("VP80", &[], true),
            "other formats: the driver's flag"
        );
    }

    #[test]
    fn a_camera_buffer_is_imported_only_when_its_layout_is_the_encoders() {
        let file = std::fs::File::open("/dev/null").unwrap();
        let shared = |stride, rows, length| SharedBuffer {
            fd: file.as_fd(),
            index: 0,
            count: 4,
            length,
            bytesused: length,
            stride,
            rows,
        };
        let want = RawLayout {
            stride: 640,
            rows: 480,
            sizeimage: 460_800,
        };
        assert_eq!(import_refusal(Some(&shared(640, 480, 460_800)), want), None);
        assert_eq!(
            import_refusal(Some(&shared(640, 480, 462_848)), want),
            None,
            "a larger buffer is fine"
        );
        let padded = RawLayout {
            stride: 640,
            rows: 368,
            sizeimage: 353_280,
        };
        assert!(
            import_refusal(Some(&shared(640, 360, 345_600)), padded).is_some(),
            "the encoder pads the height"
        );
        assert!(
            import_refusal(Some(&shared(704, 480, 506_880)), want).is_some(),
            "another stride"
        );
        assert!(
            import_refusal(Some(&shared(640, 480, 400_000)), want).is_some(),
            "a short buffer"
        );
        assert!(import_refusal(None, want).is_some(), "a converted frame");
    }
}
