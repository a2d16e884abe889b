//! The device's screen: the people it is calling, composed and presented.
//!
//! - [`layout`]: tiles for 1-4 remote pictures, letterboxing, self-view.
//! - [`canvas`]: the screen as an I420 picture; scaling and text.
//! - [`screen`]: the compositor thread: latest picture per remote stream
//!   (plus the self-view and the call state) -> canvas -> sink, at a fixed rate.
//! - [`decode`]: a remote stream's RTP -> H.264 access units -> pictures.
//! - [`y4m`]: the YUV4MPEG2 sink (file or FIFO); [`kms`]: the DRM/KMS
//!   screen; [`Reopening`]: a sink that is missing or unplugged, retried.

pub mod canvas;
pub mod decode;
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
