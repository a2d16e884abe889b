//! The always-present display back end: the composed screen written as
//! YUV4MPEG2 (librespot's pipe sink is the model), to a file or a FIFO,
//! for tests, demos and debugging (`ffplay screen.y4m`, or `mpv` on a FIFO).

use crate::device::display::canvas::Canvas;
use crate::device::display::{DisplayError, DisplaySink};
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct Y4mSink {
    out: std::io::BufWriter<std::fs::File>,
    path: PathBuf,
    size: (usize, usize),
}

impl Y4mSink {
    /// Create (or truncate) `path` and write the stream header.
    pub fn create(path: &Path, size: (usize, usize), fps: u32) -> Result<Y4mSink, DisplayError> {
        let io = |source| DisplayError::Y4m {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::create(path).map_err(io)?;
        let mut out = std::io::BufWriter::with_capacity(1 << 16, file);
        let (w, h) = (size.0 & !1, size.1 & !1);
        writeln!(out, "YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg").map_err(io)?;
        Ok(Y4mSink {
            out,
            path: path.to_owned(),
            size: (w, h),
        })
    }
}

impl DisplaySink for Y4mSink {
    fn size(&self) -> (usize, usize) {
        self.size
    }

    fn show(&mut self, canvas: &Canvas) -> Result<(), DisplayError> {
        let io = |source| DisplayError::Y4m {
            path: self.path.clone(),
            source,
        };
        self.out.write_all(b"FRAME\n").map_err(io)?;
        self.out.write_all(&canvas.data).map_err(io)?;
        // Whole frames reach the reader (a test, a player on a FIFO) now.
        self.out.flush().map_err(io)
    }

    fn describe(&self) -> String {
        format!(
            "YUV4MPEG2 {} ({}x{})",
            self.path.display(),
            self.size.0,
            self.size.1
        )
    }
}

/// A YUV4MPEG2 stream's picture size and its frames.
pub type Frames<'a> = ((usize, usize), Vec<&'a [u8]>);

/// Read a YUV4MPEG2 stream as written here.
pub fn read(data: &[u8]) -> Option<Frames<'_>> {
    let header_end = data.iter().position(|&b| b == b'\n')?;
    let header = std::str::from_utf8(&data[..header_end]).ok()?;
    let mut size = (0, 0);
    for field in header.split(' ') {
        if let Some(w) = field.strip_prefix('W') {
            size.0 = w.parse().ok()?;
        } else if let Some(h) = field.strip_prefix('H') {
            size.1 = h.parse().ok()?;
        }
    }
    let frame = size.0 * size.1 * 3 / 2;
    let mut frames = Vec::new();
    let mut at = header_end + 1;
    while data.len() >= at + 6 + frame && &data[at..at + 6] == b"FRAME\n" {
        frames.push(&data[at + 6..at + 6 + frame]);
        at += 6 + frame;
    }
    Some((size, frames))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::display::canvas::WHITE;
    use crate::device::display::layout::Rect;

    #[test]
    fn frames_written_read_back_whole() {
        let path = std::env::temp_dir().join(format!("callbox-y4m-{}.y4m", std::process::id()));
        let mut sink = Y4mSink::create(&path, (65, 48), 15).expect("create");
        assert_eq!(sink.size(), (64, 48));
        let mut c = Canvas::new(64, 48);
        sink.show(&c).expect("frame 1");
        c.fill(
            Rect {
                x: 0,
                y: 0,
                w: 64,
                h: 48,
            },
            WHITE,
        );
        sink.show(&c).expect("frame 2");
        let data = std::fs::read(&path).expect("file");
        let (size, frames) = read(&data).expect("y4m");
        assert_eq!(size, (64, 48));
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[1][0], WHITE.0);
        std::fs::remove_file(&path).ok();
    }

    #[test]
    fn an_unwritable_path_is_an_error_naming_it() {
        let e = Y4mSink::create(Path::new("/nonexistent-dir/screen.y4m"), (64, 48), 15)
            .err()
            .expect("refused");
        assert!(matches!(&e, DisplayError::Y4m { path, .. } if path.ends_with("screen.y4m")));
    }
}
