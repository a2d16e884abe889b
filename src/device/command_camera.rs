//! A camera that is a program: `video.source = "command"` runs a capture
//! program the board already has (a CSI camera through libcamera:
//! `rpicam-vid -t 0 --inline --codec h264 --profile baseline -o -`) and
//! reads H.264 Annex B from its standard output, cut into access units by
//! [`crate::device::annexb`], for the passthrough encoder. A supervisor
//! thread restarts the program when it exits (1 s later, so a program that
//! fails at once does not spin) and logs its standard error; a keyframe
//! request restarts it at once when `video.command_keyframe = "restart"`
//! (a fresh start begins with an IDR), else it is noted once.

use crate::device::annexb::AnnexBSplitter;
use crate::device::config::CommandKeyframe;
use crate::device::pattern;
use crate::device::video_source::{Frame, Pixels, VideoError, VideoSource};
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Access units waiting for the encoder loop; the program waits when full.
const QUEUE: usize = 4;
/// No access unit for this long: the camera is reported lost.
const SILENT: Duration = Duration::from_secs(5);
/// Before a restart after the program exits on its own.
const RESTART_DELAY: Duration = Duration::from_secs(1);
/// Standard error lines are cut to this many bytes for the log.
const LOG_LINE: usize = 200;

/// What the camera and its supervisor thread share.
#[derive(Default)]
struct Shared {
    running: AtomicBool,
    child: Mutex<Option<Child>>,
    /// Set by a keyframe request: the next restart is immediate.
    restart_now: AtomicBool,
    restarts: AtomicU64,
}

pub struct CommandCamera {
    argv: Vec<String>,
    size: (usize, usize),
    fps: u32,
    units: Receiver<Vec<u8>>,
    current: Vec<u8>,
    keyframe: CommandKeyframe,
    noted: bool,
    shared: Arc<Shared>,
}

impl CommandCamera {
    /// Start `argv`; frames are `size` at `fps` as the program is told to
    /// make them (the config's numbers: the stream is not parsed for them).
    pub fn start(
        argv: &[String],
        size: (usize, usize),
        fps: u32,
        keyframe: CommandKeyframe,
    ) -> Result<CommandCamera, VideoError> {
        if argv.is_empty() {
            return Err(VideoError::Camera {
                device: "video.command".into(),
                reason: "no program given".into(),
            });
        }
        let shared = Arc::new(Shared::default());
        shared.running.store(true, Relaxed);
        let (tx, units) = sync_channel(QUEUE);
        let first = spawn(argv, &shared)?;
        let (argv2, shared2) = (argv.to_vec(), Arc::clone(&shared));
        std::thread::Builder::new()
            .name("camera-command".into())
            .spawn(move || supervise(argv2, shared2, first, tx))
            .map_err(|e| VideoError::Camera {
                device: argv[0].clone(),
                reason: format!("no supervisor thread: {e}"),
            })?;
        Ok(CommandCamera {
            argv: argv.to_vec(),
            size,
            fps,
            units,
            current: Vec::new(),
            keyframe,
            noted: false,
            shared,
        })
    }

    /// Times the program was started again.
    pub fn restarts(&self) -> u64 {
        self.shared.restarts.load(Relaxed)
    }
}

impl Drop for CommandCamera {
    fn drop(&mut self) {
        self.shared.running.store(false, Relaxed);
        kill(&self.shared);
    }
}

fn kill(shared: &Shared) {
    if let Some(c) = shared
        .child
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_mut()
    {
        let _ = c.kill();
    }
}

/// Start the program with its standard output piped to us and its
/// standard error to the log; its stdout is returned.
fn spawn(argv: &[String], shared: &Shared) -> Result<std::process::ChildStdout, VideoError> {
    let failed = |reason: String| VideoError::Camera {
        device: argv[0].clone(),
        reason,
    };
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("cannot run it: {e}")))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| failed("no stdout".into()))?;
    if let Some(stderr) = child.stderr.take() {
        let name = argv[0].clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let line: String = line.chars().take(LOG_LINE).collect();
                log::info!("camera command {name}: {line}");
            }
        });
    }
    *shared.child.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
    Ok(stdout)
}

/// Read the program's stream into access units; when it ends, start the
/// program again, until the camera is dropped.
fn supervise(
    argv: Vec<String>,
    shared: Arc<Shared>,
    first: std::process::ChildStdout,
    tx: SyncSender<Vec<u8>>,
) {
    let mut stdout = Some(first);
    while shared.running.load(Relaxed) {
        let Some(out) = stdout.take() else {
            match spawn(&argv, &shared) {
                Ok(out) => stdout = Some(out),
                Err(e) => {
                    log::error!("E_CAMERA_COMMAND: {e}; retrying in {RESTART_DELAY:?}");
                    std::thread::sleep(RESTART_DELAY);
                }
            }
            continue;
        };
        if !read_units(out, &tx) {
            return;
        }
        let status = shared
            .child
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .and_then(|mut c| c.wait().ok());
        if !shared.running.load(Relaxed) {
            return;
        }
        if !shared.restart_now.swap(false, Relaxed) {
            log::error!(
                "E_CAMERA_COMMAND: {} exited ({}); restarting in {RESTART_DELAY:?}",
                argv[0],
                status.map_or("?".into(), |s| s.to_string())
            );
            std::thread::sleep(RESTART_DELAY);
        }
        shared.restarts.fetch_add(1, Relaxed);
    }
}

/// Pass the stream's access units on until it ends; `false` once nobody
/// takes them any more.
fn read_units(mut out: std::process::ChildStdout, tx: &SyncSender<Vec<u8>>) -> bool {
    let mut splitter = AnnexBSplitter::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut taken = true;
    let mut send = |u: Vec<u8>| taken &= tx.send(u).is_ok();
    loop {
        match out.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if let Err(e) = splitter.push(&buf[..n], &mut send) {
                    log::error!("E_CAMERA_COMMAND: {e}");
                }
            }
        }
    }
    splitter.finish(&mut send);
    taken
}

impl VideoSource for CommandCamera {
    fn next_frame(&mut self) -> Result<Frame<'_>, VideoError> {
        self.current = match self.units.recv_timeout(SILENT) {
            Ok(u) => u,
            Err(RecvTimeoutError::Timeout) => {
                return Err(VideoError::Camera {
                    device: self.argv[0].clone(),
                    reason: format!("no picture from the program for {SILENT:?}"),
                })
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(VideoError::Camera {
                    device: self.argv[0].clone(),
                    reason: "its supervisor stopped".into(),
                })
            }
        };
        Ok(Frame {
            pixels: Pixels::H264(&self.current),
            capture_us: pattern::now_us(),
            copies: 0,
            dmabuf: None,
        })
    }

    fn keyframe_requested(&mut self) {
        if self.current.is_empty() {
            // Nothing read yet: the program's stream starts with an IDR anyway.
            return;
        }
        match self.keyframe {
            CommandKeyframe::Restart => {
                log::info!("keyframe requested: restarting {}", self.argv[0]);
                self.shared.restart_now.store(true, Relaxed);
                kill(&self.shared);
            }
            CommandKeyframe::Ignore if !self.noted => {
                self.noted = true;
                log::warn!(
                    "keyframe requested; {} cannot be asked for one (video.command_keyframe = \"ignore\"): waiting for its next IDR",
                    self.argv[0]
                );
            }
            CommandKeyframe::Ignore => {}
        }
    }

    fn size(&self) -> (usize, usize) {
        self.size
    }

    fn fps(&self) -> u32 {
        self.fps
    }

    fn describe(&self) -> String {
        format!("H.264 from the program `{}`", self.argv.join(" "))
    }
}
