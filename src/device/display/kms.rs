//! The DRM/KMS screen: the daemon is DRM master of a card (no X, no
//! Wayland), lights the configured (or the first connected) connector at
//! the configured (or its preferred) mode, and presents the composed
//! canvas through two dumb buffers in XRGB8888: each frame is converted
//! (I420 -> XRGB, BT.601 limited range, the `yuv` crate) into the back
//! buffer, then page-flipped onto the screen; the flip's completion event
//! is awaited (bounded) before that buffer is drawn again. With nothing
//! to show and `idle = "blank"` the connector is powered down (DPMS off).
//! `drm` 0.15.

use crate::device::config::DisplaySection;
use crate::device::display::canvas::Canvas;
use crate::device::display::drm_sysfs::{self, DrmCard, Mismatch};
use crate::device::display::{DisplayError, DisplaySink};
use drm::buffer::{Buffer, DrmFourcc};
use drm::control::{
    connector, crtc, dumbbuffer::DumbBuffer, framebuffer, property, Device as ControlDevice, Mode,
    PageFlipFlags,
};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

/// An open DRM card.
struct Card(std::fs::File);

impl AsFd for Card {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}
impl drm::Device for Card {}
impl ControlDevice for Card {}

/// What the config asks of the screen.
#[derive(Debug, Clone, Default)]
pub struct KmsSettings {
    /// `/dev/dri/cardN`; default: the first card with a connected connector.
    pub device: Option<PathBuf>,
    /// A connector's name as `callbox probe` lists it (`HDMI-A-1`, `Virtual-1`).
    pub connector: Option<String>,
    /// `WIDTHxHEIGHT`; default: the connector's preferred mode.
    pub mode: Option<(u16, u16)>,
}

impl From<&DisplaySection> for KmsSettings {
    fn from(d: &DisplaySection) -> Self {
        KmsSettings {
            device: d.device.clone(),
            connector: d.connector.clone(),
            mode: d.mode_size(),
        }
    }
}

impl KmsSettings {
    /// The connector and mode against what sysfs lists for the card.
    pub fn check(&self, cards: &[DrmCard]) -> Result<(), Mismatch> {
        drm_sysfs::check(
            cards,
            self.device.as_deref(),
            self.connector.as_deref(),
            self.mode,
        )
    }
}

pub struct KmsSink {
    card: Card,
    path: PathBuf,
    crtc: crtc::Handle,
    buffers: [(DumbBuffer, framebuffer::Handle); 2],
    /// The buffer being shown; the other one is drawn next.
    front: usize,
    size: (usize, usize),
    name: String,
    /// A flip was queued and its event not yet seen.
    flip_pending: bool,
    connector: connector::Handle,
    /// The connector's DPMS property, if the driver has one.
    dpms: Option<property::Handle>,
    powered: bool,
}

/// DPMS values (`drm_mode.h`).
const DPMS_ON: u64 = 0;
const DPMS_OFF: u64 = 3;

fn err<'a>(path: &'a Path, what: &'static str) -> impl Fn(std::io::Error) -> DisplayError + 'a {
    move |source| DisplayError::Kms {
        path: path.to_owned(),
        what,
        source,
    }
}

fn refused(path: &Path, what: &'static str) -> DisplayError {
    DisplayError::Kms {
        path: path.to_owned(),
        what,
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    }
}

/// The connector name the kernel and `probe` use: `HDMI-A-1`.
fn connector_name(info: &connector::Info) -> String {
    format!("{}-{}", info.interface().as_str(), info.interface_id())
}

impl KmsSink {
    pub fn open(s: &KmsSettings) -> Result<KmsSink, DisplayError> {
        let candidates: Vec<PathBuf> = match &s.device {
            Some(d) => vec![d.clone()],
            None => (0..8)
                .map(|n| PathBuf::from(format!("/dev/dri/card{n}")))
                .collect(),
        };
        let mut last = None;
        for path in candidates
            .iter()
            .filter(|p| s.device.is_some() || p.exists())
        {
            match Self::open_card(path, s) {
                Ok(sink) => return Ok(sink),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| refused(Path::new("/dev/dri"), "no DRM card")))
    }

    fn open_card(path: &Path, s: &KmsSettings) -> Result<KmsSink, DisplayError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(err(path, "open"))?;
        let card = Card(file);
        let res = card.resource_handles().map_err(err(path, "resources"))?;
        let connectors: Vec<connector::Info> = res
            .connectors()
            .iter()
            .filter_map(|h| card.get_connector(*h, true).ok())
            .collect();
        let con = connectors
            .iter()
            .find(|c| match &s.connector {
                Some(name) => &connector_name(c) == name,
                None => c.state() == connector::State::Connected,
            })
            .ok_or_else(|| refused(path, "no such connected connector"))?;
        let mode = pick_mode(con.modes(), s.mode).ok_or_else(|| refused(path, "no such mode"))?;
        let crtc = con
            .encoders()
            .iter()
            .filter_map(|e| card.get_encoder(*e).ok())
            .flat_map(|e| res.filter_crtcs(e.possible_crtcs()))
            .next()
            .ok_or_else(|| refused(path, "no CRTC for the connector"))?;
        let (w, h) = mode.size();
        let make = || -> Result<(DumbBuffer, framebuffer::Handle), DisplayError> {
            let db = card
                .create_dumb_buffer((w.into(), h.into()), DrmFourcc::Xrgb8888, 32)
                .map_err(err(path, "dumb buffer"))?;
            let fb = card
                .add_framebuffer(&db, 24, 32)
                .map_err(err(path, "framebuffer"))?;
            Ok((db, fb))
        };
        let buffers = [make()?, make()?];
        card.set_crtc(
            crtc,
            Some(buffers[0].1),
            (0, 0),
            &[con.handle()],
            Some(mode),
        )
        .map_err(err(path, "set the mode (is another program DRM master?)"))?;
        Ok(KmsSink {
            dpms: dpms_property(&card, con.handle()),
            connector: con.handle(),
            powered: true,
            name: connector_name(con),
            card,
            path: path.to_owned(),
            crtc,
            buffers,
            front: 0,
            size: (usize::from(w) & !1, usize::from(h) & !1),
            flip_pending: false,
        })
    }

    /// Wait (at most 100 ms) for the queued flip to complete.
    fn wait_flip(&mut self) {
        if !self.flip_pending {
            return;
        }
        let mut fds = [libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&self.card.0),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: one valid pollfd, for the duration of the call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 1, 100) };
        if ready > 0 {
            let _ = self.card.receive_events().map(|events| events.count());
        }
        self.flip_pending = false;
    }
}

/// The connector's "DPMS" property, which every KMS driver's connectors carry.
fn dpms_property(card: &Card, con: connector::Handle) -> Option<property::Handle> {
    let props = card.get_properties(con).ok()?;
    let (handles, _) = props.as_props_and_values();
    handles.iter().copied().find(|h| {
        card.get_property(*h)
            .is_ok_and(|info| info.name().to_bytes() == b"DPMS")
    })
}

/// The wanted size, or the preferred mode (the first listed without one).
fn pick_mode(modes: &[Mode], want: Option<(u16, u16)>) -> Option<Mode> {
    match want {
        Some(size) => modes.iter().find(|m| m.size() == size).copied(),
        None => modes
            .iter()
            .find(|m| {
                m.mode_type()
                    .contains(drm::control::ModeTypeFlags::PREFERRED)
            })
            .or(modes.first())
            .copied(),
    }
}

impl DisplaySink for KmsSink {
    fn size(&self) -> (usize, usize) {
        self.size
    }

    fn show(&mut self, canvas: &Canvas) -> Result<(), DisplayError> {
        if !self.powered {
            return Ok(());
        }
        self.wait_flip();
        let back = 1 - self.front;
        let path = self.path.clone();
        let (db, fb) = &mut self.buffers[back];
        let pitch = db.pitch();
        {
            let mut map = self
                .card
                .map_dumb_buffer(db)
                .map_err(err(&path, "map the buffer"))?;
            to_xrgb(canvas, map.as_mut(), pitch)?;
        }
        let fb = *fb;
        match self
            .card
            .page_flip(self.crtc, fb, PageFlipFlags::EVENT, None)
        {
            Ok(()) => self.flip_pending = true,
            // A flip still in flight: show this frame without one.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                self.card
                    .set_crtc(self.crtc, Some(fb), (0, 0), &[], None)
                    .map_err(err(&path, "present"))?;
            }
            Err(e) => return Err(err(&path, "page flip")(e)),
        }
        self.front = back;
        Ok(())
    }

    fn set_power(&mut self, on: bool) -> Result<(), DisplayError> {
        let Some(dpms) = self.dpms else {
            return Ok(());
        };
        self.wait_flip();
        let value = if on { DPMS_ON } else { DPMS_OFF };
        self.card
            .set_property(self.connector, dpms, value)
            .map_err(err(&self.path, "DPMS"))?;
        self.powered = on;
        Ok(())
    }

    fn describe(&self) -> String {
        format!(
            "DRM {} {} at {}x{}",
            self.path.display(),
            self.name,
            self.size.0,
            self.size.1
        )
    }
}

/// The canvas into an XRGB8888 buffer (little-endian: B, G, R, X).
fn to_xrgb(canvas: &Canvas, out: &mut [u8], pitch: u32) -> Result<(), DisplayError> {
    let v = canvas.view();
    let image = yuv::YuvPlanarImage {
        y_plane: v.y,
        y_stride: v.y_stride as u32,
        u_plane: v.u,
        u_stride: v.uv_stride as u32,
        v_plane: v.v,
        v_stride: v.uv_stride as u32,
        width: v.width as u32,
        height: v.height as u32,
    };
    let rows = (pitch as usize) * v.height;
    let out = out.get_mut(..rows).ok_or_else(|| {
        DisplayError::Convert("the screen buffer is smaller than the canvas".into())
    })?;
    yuv::yuv420_to_bgra(
        &image,
        out,
        pitch,
        yuv::YuvRange::Limited,
        yuv::YuvStandardMatrix::Bt601,
    )
    .map_err(|e| DisplayError::Convert(format!("I420 -> XRGB: {e}")))
}
