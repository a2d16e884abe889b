//! Raw video frames as the encoder sees them: an I420 view that borrows its
//! planes from wherever they live (a driver's mmap buffer, a pooled
//! conversion buffer, the test pattern), and the pool those conversion
//! buffers come from, so the capture loop allocates nothing per frame.

use std::sync::{Arc, Mutex};

/// Planar 4:2:0 frame, borrowed. Strides are in bytes per row.
#[derive(Debug, Clone, Copy)]
pub struct I420<'a> {
    pub width: usize,
    pub height: usize,
    pub y: &'a [u8],
    pub u: &'a [u8],
    pub v: &'a [u8],
    pub y_stride: usize,
    pub uv_stride: usize,
}

/// Bytes an I420 frame of this size needs, tightly packed.
pub fn i420_len(width: usize, height: usize) -> usize {
    width * height + 2 * width.div_ceil(2) * height.div_ceil(2)
}

impl<'a> I420<'a> {
    /// View a tightly packed I420 buffer (as YU12 from V4L2 or a pooled buffer).
    pub fn packed(buf: &'a [u8], width: usize, height: usize) -> Option<I420<'a>> {
        Self::with_stride(buf, width, height, width)
    }

    /// View an I420 buffer whose luma rows are `y_stride` bytes apart (the
    /// chroma stride is half of it, as V4L2 defines for YU12).
    pub fn with_stride(
        buf: &'a [u8],
        width: usize,
        height: usize,
        y_stride: usize,
    ) -> Option<I420<'a>> {
        let uv_stride = y_stride.div_ceil(2);
        let ch = height.div_ceil(2);
        let y_len = y_stride * height;
        let uv_len = uv_stride * ch;
        if y_stride < width || buf.len() < y_len + 2 * uv_len {
            return None;
        }
        let (y, rest) = buf.split_at(y_len);
        let (u, rest) = rest.split_at(uv_len);
        Some(I420 {
            width,
            height,
            y,
            u,
            v: &rest[..uv_len],
            y_stride,
            uv_stride,
        })
    }

    /// Copy the planes, rows without their padding, into `out` (cleared
    /// first): a tightly packed frame for [`I420::packed`].
    pub fn pack_into(&self, out: &mut Vec<u8>) {
        let (w, h) = (self.width, self.height);
        let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
        out.clear();
        for row in 0..h {
            out.extend_from_slice(&self.y[row * self.y_stride..][..w]);
        }
        for plane in [self.u, self.v] {
            for row in 0..ch {
                out.extend_from_slice(&plane[row * self.uv_stride..][..cw]);
            }
        }
    }

    /// Luma at (x, y).
    pub fn luma(&self, x: usize, y: usize) -> u8 {
        self.y[y * self.y_stride + x]
    }
}

impl openh264::formats::YUVSource for I420<'_> {
    fn dimensions(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    fn strides(&self) -> (usize, usize, usize) {
        (self.y_stride, self.uv_stride, self.uv_stride)
    }

    fn y(&self) -> &[u8] {
        self.y
    }

    fn u(&self) -> &[u8] {
        self.u
    }

    fn v(&self) -> &[u8] {
        self.v
    }
}

struct PoolInner {
    free: Mutex<Vec<Vec<u8>>>,
    len: usize,
    allocations: std::sync::atomic::AtomicU64,
}

/// Fixed-size byte buffers, recycled: a buffer taken from the pool goes back
/// to it when dropped, so a steady pipeline allocates only while warming up.
#[derive(Clone)]
pub struct BufferPool(Arc<PoolInner>);

impl BufferPool {
    pub fn new(len: usize) -> Self {
        BufferPool(Arc::new(PoolInner {
            free: Mutex::new(Vec::new()),
            len,
            allocations: Default::default(),
        }))
    }

    /// A buffer of the pool's size; its content is whatever it last held.
    pub fn take(&self) -> PooledBuffer {
        let recycled = self.0.free.lock().ok().and_then(|mut f| f.pop());
        let buf = recycled.unwrap_or_else(|| {
            self.0
                .allocations
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            vec![0; self.0.len]
        });
        PooledBuffer {
            buf,
            pool: Arc::clone(&self.0),
        }
    }

    /// How many buffers the pool has ever allocated.
    pub fn allocations(&self) -> u64 {
        self.0
            .allocations
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A buffer on loan from a [`BufferPool`].
pub struct PooledBuffer {
    buf: Vec<u8>,
    pool: Arc<PoolInner>,
}

impl std::ops::Deref for PooledBuffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf
    }
}

impl std::ops::DerefMut for PooledBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        if let Ok(mut free) = self.pool.free.lock() {
            free.push(std::mem::take(&mut self.buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_recycles_buffers() {
        let pool = BufferPool::new(i420_len(64, 48));
        for _ in 0..100 {
            let mut a = pool.take();
            a[0] = 7;
            let b = pool.take();
            assert_eq!(b.len(), 64 * 48 * 3 / 2);
        }
        // Two live at a time: two allocations in all, however many frames.
        assert_eq!(pool.allocations(), 2);
    }

    #[test]
    fn i420_views_check_their_size() {
        let buf = vec![0u8; i420_len(6, 4)];
        let f = I420::packed(&buf, 6, 4).unwrap();
        assert_eq!((f.y.len(), f.u.len(), f.v.len()), (24, 6, 6));
        assert!(I420::packed(&buf[..35], 6, 4).is_none());
        assert!(I420::with_stride(&buf, 6, 4, 4).is_none());
    }
}
