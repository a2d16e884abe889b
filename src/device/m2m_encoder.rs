//! Encoding through a V4L2 memory-to-memory stateful encoder (the board's
//! hardware encoder), with `v4l2r`'s encoder: raw YU12 frames go into the
//! OUTPUT queue (MMAP buffers: one copy of each frame, at the driver's
//! stride), coded frames come back on the CAPTURE queue from `v4l2r`'s
//! thread, and `encode` waits for the one its frame made. The coded
//! format is a parameter: H.264 on a board, FWHT on the test rig's vicodec.
//!
//! It drains with `V4L2_ENC_CMD_STOP` when done or dropped, and starts
//! again after a drain. Not yet here: DMABUF import of the camera's
//! buffers (zero copy), the H.264 controls (profile, level, bitrate, forced
//! keyframes, repeated SPS/PPS), and the fallback to OpenH264 at run time.
//! Until they are, `encoder = "v4l2m2m"` stays refused in the config, and
//! this encoder is reached through `callbox probe --encoder` only.

use crate::device::h264::VideoEncoder;
use crate::device::video_source::{Frame, Pixels, VideoError};
use std::path::Path;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;
use v4l2r::device::queue::direction::Capture;
use v4l2r::device::queue::dqbuf::DqBuffer;
use v4l2r::device::queue::handles_provider::MmapProvider;
use v4l2r::encoder::{CompletedOutputBuffer, Encoder, Encoding, ReadyToEncode};
use v4l2r::ioctl::BufferFlags;
use v4l2r::memory::MmapHandle;
use v4l2r::Format;

/// OUTPUT and CAPTURE buffers each.
const BUFFERS: usize = 2;
/// How long a frame may take through the encoder.
const ENCODE_TIMEOUT: Duration = Duration::from_secs(1);

type Handles = Vec<MmapHandle>;
type InputDone = fn(CompletedOutputBuffer<Handles>);
type OutputReady = Box<dyn FnMut(DqBuffer<Capture, Handles>) + Send>;
type Running = Encoder<Encoding<Handles, MmapProvider, InputDone, OutputReady>>;
type Stopped = Encoder<ReadyToEncode<Handles, MmapProvider>>;

/// One coded frame, and whether the driver flagged it a keyframe.
type Coded = (Vec<u8>, bool);

pub struct M2mVideoEncoder {
    /// Taken by [`M2mVideoEncoder::drain`] (or on drop).
    encoder: Option<Running>,
    /// A drained encoder, ready to start again.
    stopped: Option<Stopped>,
    coded_rx: Receiver<Coded>,
    /// The coded fourcc.
    kind: String,
    /// Bytes per line of the OUTPUT (raw) plane, its rows (the frame's,
    /// padded by the driver) and its size.
    stride: usize,
    rows: usize,
    sizeimage: usize,
    size: (usize, usize),
    describe: String,
}

fn err(path: &Path, what: &str) -> impl Fn(String) -> VideoError {
    let path = path.display().to_string();
    let what = what.to_owned();
    move |e| VideoError::Encoder(format!("{path}: {what}: {e}"))
}

impl M2mVideoEncoder {
    /// Open the encoder at `path` making `coded` (a fourcc) from YU12 frames of `size`.
    pub fn open(path: &Path, coded: &str, size: (usize, usize)) -> Result<Self, VideoError> {
        let fourcc: [u8; 4] = coded
            .as_bytes()
            .try_into()
            .map_err(|_| VideoError::Encoder(format!("{coded} is not a fourcc")))?;
        let e = Encoder::open(path).map_err(|e| err(path, "open")(e.to_string()))?;
        let e = e
            .set_capture_format(|f| {
                let got: Format = f.set_pixelformat(&fourcc).apply()?;
                anyhow::ensure!(got.pixelformat == (&fourcc).into(), "does not make {coded}");
                Ok(())
            })
            .map_err(|e| err(path, "coded format")(e.to_string()))?
            .set_output_format(|f| {
                let got: Format = f
                    .set_pixelformat(b"YU12")
                    .set_size(size.0, size.1)
                    .apply()?;
                anyhow::ensure!(got.pixelformat == b"YU12".into(), "does not take YU12");
                // Drivers pad to their block size (vicodec: height to 16).
                anyhow::ensure!(
                    got.width as usize == size.0 && got.height as usize >= size.1,
                    "offers {}x{}",
                    got.width,
                    got.height
                );
                Ok(())
            })
            .map_err(|e| err(path, "raw format")(e.to_string()))?;
        let raw = e
            .get_output_format()
            .map_err(|e| err(path, "raw format")(e.to_string()))?;
        let coded_format: Format = e
            .get_capture_format()
            .map_err(|e| err(path, "coded format")(e.to_string()))?;
        let plane = raw
            .plane_fmt
            .first()
            .ok_or_else(|| err(path, "raw format")("no plane".into()))?;
        let (stride, sizeimage) = (plane.bytesperline as usize, plane.sizeimage as usize);
        let rows = raw.height as usize;
        let ready = e
            .allocate_output_buffers::<Handles>(BUFFERS)
            .map_err(|e| err(path, "OUTPUT buffers")(e.to_string()))?
            .allocate_capture_buffers(BUFFERS, MmapProvider::new(&coded_format))
            .map_err(|e| err(path, "CAPTURE buffers")(e.to_string()))?;
        let (encoder, coded_rx) = start(ready, coded)?;
        Ok(M2mVideoEncoder {
            encoder: Some(encoder),
            stopped: None,
            coded_rx,
            kind: coded.to_owned(),
            stride,
            rows,
            sizeimage,
            size,
            describe: format!(
                "V4L2 M2M encoder {} making {coded} from YU12 {}x{} (buffers {}x{rows}, stride {stride}, one copy per frame)",
                path.display(),
                size.0,
                size.1,
                size.0
            ),
        })
    }
}

impl M2mVideoEncoder {
    /// Stop the encoder the way the stateful API asks (`V4L2_ENC_CMD_STOP`:
    /// the driver finishes what it holds and marks its last buffer), and
    /// wait for its capture thread to end.
    pub fn drain(&mut self) -> Result<(), VideoError> {
        if let Some(e) = self.encoder.take() {
            let stopped = e
                .stop()
                .map_err(|e| VideoError::Encoder(format!("M2M drain: {e}")))?;
            self.stopped = Some(stopped);
        }
        Ok(())
    }

    /// Start a drained encoder again (it begins with a keyframe).
    pub fn restart(&mut self) -> Result<(), VideoError> {
        let stopped = self
            .stopped
            .take()
            .ok_or_else(|| VideoError::Encoder("M2M restart: not drained".into()))?;
        let (encoder, coded_rx) = start(stopped, &self.kind)?;
        (self.encoder, self.coded_rx) = (Some(encoder), coded_rx);
        Ok(())
    }
}

/// Start streaming; coded frames arrive on the receiver.
fn start(ready: Stopped, coded: &str) -> Result<(Running, Receiver<Coded>), VideoError> {
    let (tx, rx) = channel::<Coded>();
    let input_done: InputDone = |_| {};
    let running = ready
        .start(input_done, on_coded(coded.to_owned(), tx))
        .map_err(|e| VideoError::Encoder(format!("M2M start: {e}")))?;
    Ok((running, rx))
}

/// What v4l2r's capture thread does with each coded buffer: copy it out
/// with whether it is a keyframe.
fn on_coded(kind: String, tx: Sender<Coded>) -> OutputReady {
    Box::new(move |dq: DqBuffer<Capture, Handles>| {
        let used = *dq.data.get_first_plane().bytesused as usize;
        if used == 0 {
            return;
        }
        let flagged = dq.data.flags().contains(BufferFlags::KEYFRAME);
        if let Some(map) = dq.get_plane_mapping(0) {
            let data = map.as_ref()[..used.min(map.len())].to_vec();
            let key = is_keyframe(&kind, &data, flagged);
            let _ = tx.send((data, key));
        }
    })
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

/// Copy an I420 picture into the top of a YU12 buffer of `stride` bytes
/// per luma line and `rows` luma rows (the driver's padded height).
fn copy_yu12(
    frame: &crate::device::frame::I420<'_>,
    (stride, rows): (usize, usize),
    dst: &mut [u8],
) -> bool {
    let (w, h) = (frame.width, frame.height);
    let (cw, ch, cs) = (w.div_ceil(2), h.div_ceil(2), stride / 2);
    let (u_at, v_at) = (stride * rows, stride * rows + cs * rows.div_ceil(2));
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
        _keyframe: bool,
        out: &mut Vec<u8>,
    ) -> Result<Option<bool>, VideoError> {
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
        let failed = |what: &str, e: String| VideoError::Encoder(format!("M2M {what}: {e}"));
        let encoder = self
            .encoder
            .as_mut()
            .ok_or_else(|| failed("encoder", "drained".into()))?;
        let buf = encoder
            .get_buffer()
            .map_err(|e| failed("no OUTPUT buffer", e.to_string()))?;
        {
            let mut map = buf
                .get_plane_mapping(0)
                .ok_or_else(|| failed("OUTPUT buffer", "cannot map it".into()))?;
            if !copy_yu12(pic, (self.stride, self.rows), map.as_mut()) {
                return Err(failed("OUTPUT buffer", "shorter than the frame".into()));
            }
        }
        buf.queue(&[self.sizeimage])
            .map_err(|e| failed("queue", e.to_string()))?;
        match self.coded_rx.recv_timeout(ENCODE_TIMEOUT) {
            Ok((data, key)) => {
                out.clear();
                out.extend_from_slice(&data);
                Ok(Some(key))
            }
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(failed("encoder thread", "gone".into())),
        }
    }

    fn set_bitrate(&mut self, _bps: u32) {}

    fn describe(&self) -> String {
        self.describe.clone()
    }
}

/// What `callbox probe --encoder` measured: the configured camera through
/// the board's M2M encoder.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EncodeTest {
    pub encoder: String,
    pub frames: usize,
    pub coded_frames: usize,
    pub keyframes: usize,
    pub fps: f64,
    pub bytes_per_frame: f64,
    /// Pixel copies per frame from the camera's buffer to the encoder's.
    pub copies_per_frame: f64,
    /// Frames coded after a drain and restart, and whether the first was a keyframe.
    pub after_restart: usize,
    pub restart_keyframe: bool,
}

/// Frames encoded after the drain and restart.
const RESTART_FRAMES: usize = 10;

impl EncodeTest {
    pub fn line(&self) -> String {
        format!(
            "{}: {} frames in, {} coded ({} keyframes), {:.1} fps, {:.0} bytes per frame, {:.1} copies per frame; drained, restarted: {} of {RESTART_FRAMES} coded, {}",
            self.encoder,
            self.frames,
            self.coded_frames,
            self.keyframes,
            self.fps,
            self.bytes_per_frame,
            self.copies_per_frame,
            self.after_restart,
            if self.restart_keyframe { "the first a keyframe" } else { "the first not a keyframe" }
        )
    }
}

/// Encode `frames` frames of the configured camera on the first M2M
/// encoder that makes `coded`.
pub fn encode_test(
    v: &crate::device::config::VideoSection,
    coded: &str,
    frames: usize,
) -> Result<EncodeTest, VideoError> {
    let node = crate::device::m2m::find_encoders()
        .into_iter()
        .find(|e| e.makes(coded))
        .ok_or_else(|| VideoError::Encoder(format!("no V4L2 M2M encoder makes {coded}")))?;
    let mut camera = crate::device::sources::open_camera(v)?;
    let mut enc = M2mVideoEncoder::open(&node.path, coded, camera.size())?;
    let (mut coded_frames, mut keyframes, mut bytes, mut copies) = (0, 0, 0usize, 0u64);
    let mut out = Vec::new();
    let start = std::time::Instant::now();
    for _ in 0..frames {
        let frame = camera.next_frame()?;
        copies += u64::from(frame.copies) + 1;
        if let Some(key) = enc.encode(&frame, false, &mut out)? {
            coded_frames += 1;
            keyframes += usize::from(key);
            bytes += out.len();
        }
    }
    let secs = start.elapsed().as_secs_f64();
    enc.drain()?;
    enc.restart()?;
    let mut again = Vec::new();
    for _ in 0..RESTART_FRAMES {
        let frame = camera.next_frame()?;
        again.extend(enc.encode(&frame, false, &mut out)?);
    }
    enc.drain()?;
    Ok(EncodeTest {
        encoder: enc.describe(),
        frames,
        coded_frames,
        keyframes,
        fps: frames as f64 / secs.max(1e-6),
        bytes_per_frame: bytes as f64 / coded_frames.max(1) as f64,
        copies_per_frame: copies as f64 / frames.max(1) as f64,
        after_restart: again.len(),
        restart_keyframe: again.first().copied().unwrap_or(false),
    })
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
}
