//! The control socket (Unix stream, `/run/callbox/control.sock` by
//! default) and its client, `callbox ctl`. One JSON request per line, one
//! JSON reply per line: `{"cmd":"status"}` -> `{"ok":true,"state":...}`;
//! failures are `{"ok":false,"error":"E_...: reason"}`.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

/// A request longer than this is refused rather than buffered.
const MAX_REQUEST_BYTES: u64 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Request {
    /// Call state and key media stats, as JSON.
    Status,
    Call,
    Hangup,
    MuteAudio,
    UnmuteAudio,
    /// The camera off: no video is sent, callers see the device's name.
    MuteVideo,
    UnmuteVideo,
    /// What the screen shows, as a PNG (base64 in the reply; `ctl` writes the file).
    Screenshot,
}

#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    cmd: Request,
}

/// A request from a connection, with where its reply goes.
pub type Incoming = (Request, oneshot::Sender<Value>);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("E_CONTROL_IN_USE: {0}: another callbox daemon is listening there")]
    InUse(PathBuf),
    #[error("E_CONTROL_SOCKET: {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("E_CONTROL_REPLY: {0}")]
    BadReply(String),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ControlError + '_ {
    move |source| ControlError::Io {
        path: path.to_owned(),
        source,
    }
}

pub fn error_reply(message: impl std::fmt::Display) -> Value {
    json!({ "ok": false, "error": message.to_string() })
}

/// Listen on `path` and hand every request to `requests`. A socket file
/// left by a daemon that died is replaced; a live one is an error.
pub async fn serve(path: &Path, requests: mpsc::Sender<Incoming>) -> Result<(), ControlError> {
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(ControlError::InUse(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(io(path))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let listener = bind_private(path).map_err(io(path))?;
    log::info!("control socket {}", path.display());
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(connection(stream, requests.clone()));
                }
                Err(e) => {
                    log::error!("E_CONTROL_ACCEPT: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(())
}

/// Bind with the socket's final mode, 0660 (owner and group; systemd's
/// RuntimeDirectory gives the service's group): created under a umask, so
/// there is no moment in which others could connect.
fn bind_private(path: &Path) -> std::io::Result<UnixListener> {
    // SAFETY: umask(2) only swaps the process's file-creation mask; it is
    // restored at once, and nothing else creates files at daemon start.
    let old = unsafe { libc::umask(0o117) };
    let bound = UnixListener::bind(path);
    unsafe { libc::umask(old) };
    bound
}

async fn connection(stream: UnixStream, requests: mpsc::Sender<Incoming>) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = String::new();
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_REQUEST_BYTES)
            .read_line(&mut line)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let too_long = !line.ends_with('\n') && line.len() as u64 >= MAX_REQUEST_BYTES;
        let reply = match serde_json::from_str::<Envelope>(line.trim()) {
            _ if too_long => error_reply(format!(
                "E_CONTROL_BAD_REQUEST: request longer than {MAX_REQUEST_BYTES} bytes"
            )),
            Err(e) => error_reply(format!(
                "E_CONTROL_BAD_REQUEST: {e} (expected {{\"cmd\": \"status|call|hangup|mute-audio|unmute-audio|mute-video|unmute-video|screenshot\"}})"
            )),
            Ok(Envelope { cmd }) => {
                let (tx, rx) = oneshot::channel();
                if requests.send((cmd, tx)).await.is_err() {
                    return;
                }
                rx.await.unwrap_or_else(|_| error_reply("E_CONTROL_SHUTDOWN: the daemon is stopping"))
            }
        };
        let mut text = reply.to_string();
        text.push('\n');
        if write.write_all(text.as_bytes()).await.is_err() || too_long {
            return;
        }
    }
}

/// How long `callbox ctl` waits for the daemon's reply.
pub const REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Send one request to the daemon at `path` and return its reply.
pub async fn request(path: &Path, cmd: Request) -> Result<Value, ControlError> {
    tokio::time::timeout(REPLY_TIMEOUT, exchange(path, cmd))
        .await
        .map_err(|_| {
            ControlError::BadReply(format!(
                "no reply within {REPLY_TIMEOUT:?}: is the daemon stuck?"
            ))
        })?
}

async fn exchange(path: &Path, cmd: Request) -> Result<Value, ControlError> {
    let mut stream = UnixStream::connect(path).await.map_err(io(path))?;
    let mut text = serde_json::to_string(&Envelope { cmd })
        .map_err(|e| ControlError::BadReply(e.to_string()))?;
    text.push('\n');
    stream.write_all(text.as_bytes()).await.map_err(io(path))?;
    let mut reply = String::new();
    BufReader::new(stream)
        .read_line(&mut reply)
        .await
        .map_err(io(path))?;
    serde_json::from_str(&reply).map_err(|e| ControlError::BadReply(format!("{e}: {reply:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// The socket is born 0660: no window after bind in which others could connect.
    #[tokio::test]
    async fn the_socket_is_created_owner_and_group_only() {
        let dir = std::env::temp_dir().join(format!("callbox-ctl-{}", std::process::id()));
        let path = dir.join("control.sock");
        let _ = std::fs::remove_dir_all(&dir);
        let (tx, _rx) = mpsc::channel(1);
        serve(&path, tx).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660, "{mode:o}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
