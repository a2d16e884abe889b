//! One V4L2 buffer queue on a device's file descriptor, on `v4l2r`'s
//! ioctl layer: MMAP buffers allocated, mapped, queued, dequeued and
//! exported as DMABUF (`VIDIOC_EXPBUF`), or DMABUF buffers imported from
//! another device. The camera's capture queue and both queues of an M2M
//! encoder or decoder use it. It is here, and not `v4l2r`'s higher-level
//! queue, because zero copy needs what that hides: the index of the
//! buffer a frame is in, to export it and hand the same index to the
//! encoder.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::time::Duration;
use v4l2r::bindings::{timeval, v4l2_requestbuffers};
use v4l2r::ioctl::{
    self, BufferFlags, DqBufIoctlError, ExpbufFlags, IoctlConvertError, PlaneMapping, QueryBuffer,
    V4l2Buffer,
};
use v4l2r::memory::MemoryType;
use v4l2r::{Format, QueueType};

pub use v4l2r::QueueType as Queue;

fn errno(e: impl Into<v4l2r::nix::errno::Errno>) -> io::Error {
    io::Error::from_raw_os_error(e.into() as i32)
}

/// A buffer the driver gave back.
#[derive(Debug, Clone, Copy)]
pub struct Done {
    pub index: usize,
    pub bytesused: usize,
    pub flags: BufferFlags,
    /// The timestamp queued with it (M2M drivers copy OUTPUT's to CAPTURE),
    /// or the capture time, in µs.
    pub timestamp_us: i64,
}

/// How dequeuing went.
#[derive(Debug)]
pub enum Dequeued {
    Buffer(Done),
    /// Nothing ready (the fd is non-blocking).
    NotReady,
    /// `EPIPE`: the last buffer of a drain was already dequeued.
    Drained,
}

/// MMAP buffers of one queue, mapped.
pub struct MmapQueue {
    queue: QueueType,
    maps: Vec<PlaneMapping>,
}

impl MmapQueue {
    /// Ask for `count` buffers and map them (single-plane formats only).
    pub fn allocate(fd: BorrowedFd<'_>, queue: QueueType, count: u32) -> io::Result<Self> {
        let got: v4l2_requestbuffers =
            ioctl::reqbufs(&fd, queue, MemoryType::Mmap, count).map_err(io::Error::other)?;
        let mut maps = Vec::with_capacity(got.count as usize);
        for i in 0..got.count as usize {
            let q: QueryBuffer = ioctl::querybuf(&fd, queue, i).map_err(io::Error::other)?;
            let plane = q
                .planes
                .first()
                .ok_or_else(|| io::Error::other("buffer without a plane"))?;
            maps.push(ioctl::mmap(&fd, plane.mem_offset, plane.length).map_err(io::Error::other)?);
        }
        if maps.is_empty() {
            return Err(io::Error::other("the driver gave no buffers"));
        }
        Ok(MmapQueue { queue, maps })
    }

    pub fn count(&self) -> usize {
        self.maps.len()
    }

    pub fn data(&self, index: usize) -> Option<&[u8]> {
        self.maps.get(index).map(|m| m.as_ref())
    }

    pub fn data_mut(&mut self, index: usize) -> Option<&mut [u8]> {
        self.maps.get_mut(index).map(|m| m.as_mut())
    }

    /// Queue buffer `index` with `bytesused` bytes of payload (0 for an
    /// empty capture buffer) and a timestamp.
    pub fn queue(
        &self,
        fd: BorrowedFd<'_>,
        index: usize,
        bytesused: usize,
        timestamp_us: i64,
    ) -> io::Result<()> {
        let mut b = V4l2Buffer::new(self.queue, index as u32, MemoryType::Mmap);
        *b.get_first_plane_mut().bytesused = bytesused as u32;
        b.set_timestamp(to_timeval(timestamp_us));
        ioctl::qbuf::<_, ()>(&fd, b).map_err(convert_error)
    }

    /// Export buffer `index` as a DMABUF another device can import.
    pub fn export(&self, fd: BorrowedFd<'_>, index: usize) -> io::Result<OwnedFd> {
        ioctl::expbuf(
            &fd,
            self.queue,
            index,
            0,
            ExpbufFlags::CLOEXEC | ExpbufFlags::RDWR,
        )
        .map_err(errno)
    }
}

fn convert_error<E: std::fmt::Debug>(
    e: IoctlConvertError<impl Into<v4l2r::nix::errno::Errno> + std::fmt::Debug, E>,
) -> io::Error {
    match e {
        IoctlConvertError::IoctlError(e) => errno(e),
        IoctlConvertError::ConversionError(e) => io::Error::other(format!("{e:?}")),
    }
}

fn to_timeval(us: i64) -> timeval {
    timeval {
        tv_sec: us.div_euclid(1_000_000) as _,
        tv_usec: us.rem_euclid(1_000_000) as _,
    }
}

/// Set `queue`'s format to `fourcc` at `size`: what the driver made of it,
/// or why it will not take that fourcc.
pub fn set_format(
    fd: BorrowedFd<'_>,
    queue: QueueType,
    fourcc: &[u8; 4],
    size: (usize, usize),
) -> Result<Format, String> {
    let want = Format {
        width: size.0 as u32,
        height: size.1 as u32,
        pixelformat: fourcc.into(),
        plane_fmt: vec![],
    };
    let mut fd = fd;
    let got: Format = ioctl::s_fmt(&mut fd, (queue, &want)).map_err(|e| e.to_string())?;
    if got.pixelformat != fourcc.into() {
        return Err(format!("does not do {}", String::from_utf8_lossy(fourcc)));
    }
    Ok(got)
}

/// Ask for `count` DMABUF slots on a queue (buffers are imported at queueing).
pub fn allocate_dmabuf(fd: BorrowedFd<'_>, queue: QueueType, count: u32) -> io::Result<usize> {
    let got: v4l2_requestbuffers =
        ioctl::reqbufs(&fd, queue, MemoryType::DmaBuf, count).map_err(io::Error::other)?;
    Ok(got.count as usize)
}

/// Queue `dmabuf` (of `length` bytes, `bytesused` of them payload) into slot `index`.
pub fn queue_dmabuf(
    fd: BorrowedFd<'_>,
    queue: QueueType,
    (index, dmabuf): (usize, BorrowedFd<'_>),
    (length, bytesused): (usize, usize),
    timestamp_us: i64,
) -> io::Result<()> {
    let mut b = V4l2Buffer::new(queue, index as u32, MemoryType::DmaBuf);
    {
        let plane = b.get_first_plane_mut();
        *plane.bytesused = bytesused as u32;
        *plane.length = length as u32;
    }
    if let ioctl::V4l2PlanesWithBackingMut::DmaBuf(mut planes) = b.planes_with_backing_iter_mut() {
        if let Some(mut p) = planes.next() {
            p.set_fd(dmabuf.as_raw_fd());
        }
    }
    b.set_timestamp(to_timeval(timestamp_us));
    ioctl::qbuf::<_, ()>(&fd, b).map_err(convert_error)
}

/// Dequeue one buffer of `queue` without blocking.
// time_t is 32-bit on armv7: the conversions are not useless there.
#[allow(clippy::useless_conversion)]
pub fn dequeue(fd: BorrowedFd<'_>, queue: QueueType) -> io::Result<Dequeued> {
    match ioctl::dqbuf::<V4l2Buffer>(&fd, queue) {
        Ok(b) => {
            let t = b.timestamp();
            Ok(Dequeued::Buffer(Done {
                index: b.index() as usize,
                bytesused: *b.get_first_plane().bytesused as usize,
                flags: b.flags(),
                timestamp_us: i64::from(t.tv_sec) * 1_000_000 + i64::from(t.tv_usec),
            }))
        }
        Err(IoctlConvertError::IoctlError(DqBufIoctlError::NotReady)) => Ok(Dequeued::NotReady),
        Err(IoctlConvertError::IoctlError(DqBufIoctlError::Eos)) => Ok(Dequeued::Drained),
        Err(e) => Err(convert_error(e)),
    }
}

pub fn stream(fd: BorrowedFd<'_>, queue: QueueType, on: bool) -> io::Result<()> {
    if on {
        ioctl::streamon(&fd, queue).map_err(io::Error::other)
    } else {
        ioctl::streamoff(&fd, queue).map_err(io::Error::other)
    }
}

/// Wait until the device has something for `events` (`POLLIN`: a
/// capture buffer, `POLLOUT`: an output buffer back, `POLLPRI`: an
/// event); `Ok(0)` on timeout.
pub fn wait(fd: BorrowedFd<'_>, events: i16, timeout: Duration) -> io::Result<i16> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd, and its count.
    match unsafe { libc::poll(&mut p, 1, ms) } {
        n if n < 0 => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(0)
            } else {
                Err(e)
            }
        }
        0 => Ok(0),
        _ => Ok(p.revents),
    }
}
