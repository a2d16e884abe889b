//! V4L2 memory-to-memory video encoders on the board (the Raspberry Pi's
//! bcm2835-codec at /dev/video11, mainline stateful encoders, the test
//! rig's vicodec): finding them and what they take and make, for
//! `callbox probe` and for choosing an encoder. A node is an encoder when
//! it is M2M and its CAPTURE queue (what comes out) is compressed while
//! its OUTPUT queue (what goes in) is raw; a decoder is the other way
//! round. Uses `v4l2r`, which has the multi-planar queues the `v4l` crate
//! lacks.

use serde::Serialize;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use v4l2r::bindings::v4l2_queryctrl;
use v4l2r::ioctl::{
    self, Capabilities, Capability, CtrlId, FormatFlags, FormatIterator, QueryCtrlFlags,
};
use v4l2r::QueueType;

/// An M2M encoder node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct M2mEncoder {
    pub path: PathBuf,
    pub driver: String,
    pub card: String,
    /// Fourccs it makes (CAPTURE), e.g. `H264`, `FWHT`.
    pub coded: Vec<String>,
    /// Fourccs it takes (OUTPUT), e.g. `YU12`, `NV12`.
    pub raw: Vec<String>,
    /// The names of its controls, as the driver gives them.
    pub controls: Vec<String>,
}

impl M2mEncoder {
    pub fn makes(&self, fourcc: &str) -> bool {
        self.coded.iter().any(|c| c == fourcc)
    }
}

/// A format as an M2M queue lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueFormat {
    pub fourcc: String,
    pub compressed: bool,
}

/// Whether the two queues make an encoder: everything out compressed,
/// something raw going in.
pub fn is_encoder(capture: &[QueueFormat], output: &[QueueFormat]) -> bool {
    !capture.is_empty()
        && capture.iter().all(|f| f.compressed)
        && output.iter().any(|f| !f.compressed)
}

/// Every M2M encoder among `/dev/video*`, in node order.
pub fn find_encoders() -> Vec<M2mEncoder> {
    find(Role::Encoder)
}

/// Every M2M decoder among `/dev/video*` (`coded`: what it takes).
pub fn find_decoders() -> Vec<M2mEncoder> {
    find(Role::Decoder)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Encoder,
    Decoder,
}

fn find(role: Role) -> Vec<M2mEncoder> {
    let mut nodes: Vec<PathBuf> = std::fs::read_dir("/dev")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("video"))
                })
                .collect()
        })
        .unwrap_or_default();
    nodes.sort_by_key(|p| node_number(p));
    nodes.iter().filter_map(|p| probe_node(p, role)).collect()
}

fn node_number(p: &Path) -> u32 {
    p.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.trim_start_matches("video").parse().ok())
        .unwrap_or(u32::MAX)
}

/// The encoder (or decoder) at `path`, if it is one.
pub fn probe_node(path: &Path, role: Role) -> Option<M2mEncoder> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .ok()?;
    let cap: Capability = ioctl::querycap(&file).ok()?;
    let caps = cap.device_caps();
    let (capture_q, output_q) = if caps.contains(Capabilities::VIDEO_M2M_MPLANE) {
        (QueueType::VideoCaptureMplane, QueueType::VideoOutputMplane)
    } else if caps.contains(Capabilities::VIDEO_M2M) {
        (QueueType::VideoCapture, QueueType::VideoOutput)
    } else {
        return None;
    };
    let formats = |q| -> Vec<QueueFormat> {
        FormatIterator::new(&file, q)
            .take(64)
            .map(|f| QueueFormat {
                fourcc: f.pixelformat.to_string(),
                compressed: f.flags.contains(FormatFlags::COMPRESSED),
            })
            .collect()
    };
    let (capture, output) = match role {
        Role::Encoder => (formats(capture_q), formats(output_q)),
        // A decoder is an encoder the other way round.
        Role::Decoder => (formats(output_q), formats(capture_q)),
    };
    is_encoder(&capture, &output).then(|| M2mEncoder {
        path: path.to_owned(),
        driver: cap.driver,
        card: cap.card,
        coded: capture.into_iter().map(|f| f.fourcc).collect(),
        raw: output
            .into_iter()
            .filter(|f| !f.compressed)
            .map(|f| f.fourcc)
            .collect(),
        controls: control_names(&file),
    })
}

/// Every control the node has (at most 64), by `VIDIOC_QUERYCTRL` with
/// `V4L2_CTRL_FLAG_NEXT_CTRL`; class headings left out.
fn control_names(file: &std::fs::File) -> Vec<String> {
    let mut names = Vec::new();
    let mut id = 0;
    for _ in 0..64 {
        let Ok(ctrl_id) = CtrlId::new(id) else { break };
        let Ok(q) = ioctl::queryctrl::<v4l2_queryctrl>(file, ctrl_id, QueryCtrlFlags::NEXT) else {
            break;
        };
        id = q.id;
        if q.type_ != v4l2r::bindings::v4l2_ctrl_type_V4L2_CTRL_TYPE_CTRL_CLASS {
            let len = q.name.iter().position(|&c| c == 0).unwrap_or(q.name.len());
            names.push(String::from_utf8_lossy(&q.name[..len]).into_owned());
        }
    }
    names
}

/// An M2M node opened for streaming (non-blocking).
pub struct OpenNode {
    pub file: std::fs::File,
    pub card: String,
    /// The OUTPUT (into the device) and CAPTURE (out of it) queues:
    /// multi-planar where the device is.
    pub output: QueueType,
    pub capture: QueueType,
    pub fourcc: [u8; 4],
}

/// Open the M2M node at `path` to work on `coded` (a fourcc).
pub fn open_node(path: &Path, coded: &str) -> Result<OpenNode, String> {
    let fourcc: [u8; 4] = coded
        .as_bytes()
        .try_into()
        .map_err(|_| format!("{coded} is not a fourcc"))?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("open: {e}"))?;
    let cap: Capability = ioctl::querycap(&file).map_err(|e| format!("querycap: {e}"))?;
    let (output, capture) = if cap.device_caps().contains(Capabilities::VIDEO_M2M_MPLANE) {
        (QueueType::VideoOutputMplane, QueueType::VideoCaptureMplane)
    } else if cap.device_caps().contains(Capabilities::VIDEO_M2M) {
        (QueueType::VideoOutput, QueueType::VideoCapture)
    } else {
        return Err("not a memory-to-memory device".into());
    };
    Ok(OpenNode {
        file,
        card: cap.card,
        output,
        capture,
        fourcc,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(fourcc: &str, compressed: bool) -> QueueFormat {
        QueueFormat {
            fourcc: fourcc.into(),
            compressed,
        }
    }

    #[test]
    fn an_encoder_makes_compressed_from_raw_a_decoder_the_reverse() {
        let raw = [f("YU12", false), f("NV12", false)];
        let coded = [f("FWHT", true)];
        assert!(is_encoder(&coded, &raw));
        assert!(!is_encoder(&raw, &coded), "a decoder");
        assert!(!is_encoder(&[], &raw), "nothing comes out");
        assert!(
            !is_encoder(&coded, &coded),
            "a transcoder takes no raw frames"
        );
        assert_eq!(node_number(Path::new("/dev/video11")), 11);
    }
}
