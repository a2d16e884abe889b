//! The device's screen: the people it is calling, composed and presented.
//!
//! - [`layout`]: tiles for 1-4 remote pictures, letterboxing, self-view.
//! - [`canvas`]: the screen as an I420 picture; scaling and text.
//! - [`screen`]: the compositor thread: latest picture per remote stream
//!   (plus the self-view and the call state) -> canvas -> sink, at a fixed rate.
//! - [`decode`]: a remote stream's RTP -> H.264 access units -> pictures.
//! - [`y4m`]: the YUV4MPEG2 sink (file or FIFO); [`kms`]: the DRM/KMS
//!   screen; [`Reopening`]: a sink that is missing or unplugged, retried.
//! - [`drm_sysfs`]: the cards, connectors and modes sysfs lists, and the
//!   config checked against them.

pub mod canvas;
pub mod decode;
pub mod drm_sysfs;
pub mod kms;
pub mod layout;
pub mod screen;
pub mod y4m;

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DisplayError {
    #[error("display {}: {source}", .path.display())]
    Y4m {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("screenshot: PNG: {0}")]
    Png(String),
    #[error("DRM {}: {what}: {source}", .path.display())]
    Kms {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("display: {0}")]
    Convert(String),
    #[error("no display yet (retried every {} s)", .0.as_secs())]
    Missing(std::time::Duration),
}

/// Where the composed screen goes.
pub trait DisplaySink: Send {
    /// The screen's size in pixels (even).
    fn size(&self) -> (usize, usize);
    /// Present one composed frame.
    fn show(&mut self, canvas: &canvas::Canvas) -> Result<(), DisplayError>;
    fn describe(&self) -> String;
    /// Power the screen down (DPMS off) or up; nothing is presented while
    /// it is down. A sink without power control keeps showing frames.
    fn set_power(&mut self, _on: bool) -> Result<(), DisplayError> {
        Ok(())
    }
}

/// A sink that may be missing (no card yet, unplugged): opened again every
/// `retry` while it is, so the device goes on without a screen meanwhile.
pub struct Reopening {
    open: Box<dyn FnMut() -> Result<Box<dyn DisplaySink>, DisplayError> + Send>,
    inner: Option<Box<dyn DisplaySink>>,
    /// The size to compose at until the sink says otherwise.
    size: (usize, usize),
    retry: std::time::Duration,
    next_try: std::time::Instant,
    /// Applied to each sink opened.
    power: bool,
}

impl Reopening {
    pub fn new(
        open: Box<dyn FnMut() -> Result<Box<dyn DisplaySink>, DisplayError> + Send>,
        size: (usize, usize),
        retry: std::time::Duration,
    ) -> Reopening {
        Reopening {
            open,
            inner: None,
            size,
            retry,
            next_try: std::time::Instant::now(),
            power: true,
        }
    }
}

impl DisplaySink for Reopening {
    fn size(&self) -> (usize, usize) {
        self.inner.as_ref().map_or(self.size, |s| s.size())
    }

    fn show(&mut self, canvas: &canvas::Canvas) -> Result<(), DisplayError> {
        if self.inner.is_none() && std::time::Instant::now() >= self.next_try {
            self.next_try = std::time::Instant::now() + self.retry;
            match (self.open)() {
                Ok(mut sink) => {
                    log::info!("display: {}", sink.describe());
                    sink.set_power(self.power)?;
                    self.inner = Some(sink);
                    // Composed for the old size: the next frame fits.
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        let Some(sink) = self.inner.as_mut() else {
            return Err(DisplayError::Missing(self.retry));
        };
        let shown = sink.show(canvas);
        if shown.is_err() {
            self.inner = None;
        }
        shown
    }

    fn describe(&self) -> String {
        self.inner
            .as_ref()
            .map_or_else(|| "no display yet".to_owned(), |s| s.describe())
    }

    fn set_power(&mut self, on: bool) -> Result<(), DisplayError> {
        self.power = on;
        match self.inner.as_mut() {
            Some(sink) => sink.set_power(on),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// A screen that shows `frames` frames, then is unplugged.
    struct Unplugged {
        frames: u32,
    }

    impl DisplaySink for Unplugged {
        fn size(&self) -> (usize, usize) {
            (64, 48)
        }
        fn show(&mut self, _canvas: &canvas::Canvas) -> Result<(), DisplayError> {
            if self.frames == 0 {
                return Err(DisplayError::Convert("unplugged".into()));
            }
            self.frames -= 1;
            Ok(())
        }
        fn describe(&self) -> String {
            "test screen".into()
        }
    }

    #[test]
    fn a_missing_or_unplugged_screen_is_opened_again_after_the_retry_time() {
        // Missing for the first two tries, then there; unplugged after 3 frames.
        let tries = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = Arc::clone(&tries);
        let open = Box::new(move || -> Result<Box<dyn DisplaySink>, DisplayError> {
            let mut log = log.lock().expect("lock");
            log.push(Instant::now());
            match log.len() {
                1 | 2 => Err(DisplayError::Missing(Duration::ZERO)),
                _ => Ok(Box::new(Unplugged { frames: 3 })),
            }
        });
        let retry = Duration::from_millis(30);
        let mut screen = Reopening::new(open, (640, 480), retry);
        let canvas = canvas::Canvas::new(64, 48);
        let t = Instant::now();
        let mut outcomes = String::new();
        while outcomes.matches("oooo").count() < 2 {
            assert!(t.elapsed() < Duration::from_secs(5), "{outcomes}");
            let shown = screen.show(&canvas).is_ok();
            // Composed at the open screen's size, else at the configured one.
            assert_eq!(screen.size(), if shown { (64, 48) } else { (640, 480) });
            outcomes.push(if shown { 'o' } else { 'x' });
            std::thread::sleep(Duration::from_millis(5));
        }
        // Tries are spaced by the retry time, not made every frame.
        let tries = tries.lock().expect("lock").clone();
        assert!(tries.windows(2).all(|w| w[1] - w[0] >= retry), "{outcomes}");
        // Opened (one frame to resize), three shown, unplugged, reopened.
        assert!(outcomes.contains("xoooox"), "{outcomes}");
        assert!(outcomes.matches("oooo").count() >= 2, "{outcomes}");
    }
}
