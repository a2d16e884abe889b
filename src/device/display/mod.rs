//! The device's screen: the people it is calling, composed and presented.
//!
//! - [`layout`]: tiles for 1-4 remote pictures, letterboxing, self-view.
//! - [`canvas`]: the screen as an I420 picture; scaling and text.
//! - [`screen`]: the compositor thread: latest picture per remote stream
//!   (plus the self-view and the call state) -> canvas -> sink, at a fixed rate.
//! - [`decode`]: a remote stream's RTP -> H.264 access units -> pictures.
//! - [`y4m`]: the YUV4MPEG2 sink (file or FIFO).
//!
//! A DRM/KMS sink is not implemented yet: the config refuses it by name.

pub mod canvas;
pub mod decode;
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
}

/// Where the composed screen goes.
pub trait DisplaySink: Send {
    /// The screen's size in pixels (even).
    fn size(&self) -> (usize, usize);
    /// Present one composed frame.
    fn show(&mut self, canvas: &canvas::Canvas) -> Result<(), DisplayError>;
    fn describe(&self) -> String;
}
