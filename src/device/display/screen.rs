//! The compositor: a thread that, at the display's rate, lays out the
//! latest picture of each remote stream (in the order they arrived, at
//! most four), the self-view if asked for, or, with no one to show, the
//! idle picture (the call state and room as text, red when banned, or
//! black), and hands the canvas to the sink. Decoders and the daemon talk
//! to it through [`Screen`]: pictures are copied in under a short lock and
//! only the newest of each stream is kept, so a slow sink drops frames
//! instead of queueing them.

use crate::device::display::canvas::{Canvas, BLACK, GREY, RED, WHITE};
use crate::device::display::layout::{self, Rect, MAX_TILES};
use crate::device::display::{DisplayError, DisplaySink};
use crate::device::frame::I420;
use crate::device::stats::{add, MediaStats};
use crate::protocol::BanReason;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A decoded picture, owned (tightly packed I420).
#[derive(Clone, Default)]
struct Picture {
    width: usize,
    height: usize,
    data: Vec<u8>,
}

impl Picture {
    fn set(&mut self, pic: &I420<'_>) {
        pic.pack_into(&mut self.data);
        (self.width, self.height) = (pic.width, pic.height);
    }

    fn view(&self) -> Option<I420<'_>> {
        I420::packed(&self.data, self.width, self.height)
    }
}

/// How several callers share the screen (`display.layout`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// The one speaking larger, once someone has spoken.
    #[default]
    Speaker,
    /// Equal tiles.
    Grid,
}

/// How the screen looks: its layout, and what it shows with no one to show.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Style {
    pub layout: Layout,
    pub idle: Idle,
}

/// What the screen shows when no one is (`display.idle`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Idle {
    /// The call state and the room, as text.
    #[default]
    Text,
    /// Nothing: the screen powered down.
    Blank,
}

/// A caller's camera, as their tile shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Camera {
    On,
    /// Turned off: their name shows; pictures still in flight are ignored.
    Off,
    /// Turned on again: their name shows until the first new picture.
    Returning,
}

/// A remote stream on the screen.
struct Tile {
    stream_id: String,
    user_id: String,
    camera: Camera,
    /// `None` until the first picture.
    picture: Option<Picture>,
}

impl Tile {
    fn shown(&self) -> bool {
        self.camera != Camera::On || self.picture.is_some()
    }
}

/// Where the device is, as the screen shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CallState {
    #[default]
    Idle,
    InCall,
    Banned(BanReason),
}

impl CallState {
    fn text(self) -> String {
        match self {
            CallState::Idle => "idle".into(),
            CallState::InCall => "in call".into(),
            CallState::Banned(reason) => format!("banned: {}", reason.as_str()),
        }
    }
}

#[derive(Default)]
struct Scene {
    /// Remote streams in the order they arrived.
    remote: Vec<Tile>,
    /// The local camera's newest picture, shown in a call.
    self_view: Option<Picture>,
    state: CallState,
    room: String,
    /// The remote stream speaking, when known.
    speaker: Option<String>,
}

/// The daemon's and the decoders' handle on the screen.
#[derive(Clone)]
pub struct Screen {
    scene: Arc<Mutex<Scene>>,
    last: Arc<Mutex<Canvas>>,
    running: Arc<AtomicBool>,
}

impl Screen {
    fn scene(&self) -> std::sync::MutexGuard<'_, Scene> {
        self.scene.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A remote stream to show (its picture comes with [`Screen::show`]).
    pub fn add(&self, stream_id: &str, user_id: &str, video_muted: bool) {
        let mut s = self.scene();
        if !s.remote.iter().any(|t| t.stream_id == stream_id) {
            s.remote.push(Tile {
                stream_id: stream_id.to_owned(),
                user_id: user_id.to_owned(),
                camera: if video_muted { Camera::Off } else { Camera::On },
                picture: None,
            });
        }
    }

    /// The newest picture of a remote stream.
    pub fn show(&self, stream_id: &str, pic: &I420<'_>) {
        let mut s = self.scene();
        let tile = s.remote.iter_mut().find(|t| t.stream_id == stream_id);
        if let Some(t) = tile.filter(|t| t.camera != Camera::Off) {
            t.picture.get_or_insert_with(Picture::default).set(pic);
            t.camera = Camera::On;
        }
    }

    /// A caller's camera went off (their name shows) or on again (their
    /// name until the next picture decoded, never the stale one).
    pub fn set_video_muted(&self, user_id: &str, muted: bool) {
        for t in self
            .scene()
            .remote
            .iter_mut()
            .filter(|t| t.user_id == user_id)
        {
            t.camera = if muted {
                Camera::Off
            } else {
                Camera::Returning
            };
            t.picture = None;
        }
    }

    /// A remote stream left: its tile goes.
    pub fn remove(&self, stream_id: &str) {
        self.scene().remote.retain(|t| t.stream_id != stream_id);
    }

    /// Everyone left: back to the idle picture.
    pub fn clear(&self) {
        self.scene().remote.clear();
    }

    /// The local camera's picture, for the self-view.
    pub fn show_self(&self, pic: &I420<'_>) {
        self.scene()
            .self_view
            .get_or_insert_with(Picture::default)
            .set(pic);
    }

    /// The call state: the idle picture shows it (banned in red), and the
    /// self-view shows only in a call.
    pub fn set_state(&self, state: CallState, room: &str) {
        let mut s = self.scene();
        s.state = state;
        s.room = room.to_owned();
    }

    /// The remote stream speaking now, which the speaker layout shows larger.
    pub fn set_speaker(&self, stream_id: Option<String>) {
        self.scene().speaker = stream_id;
    }

    /// What the screen shows now.
    pub fn snapshot(&self) -> Canvas {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for ScreenThread {
    fn drop(&mut self) {
        self.screen.running.store(false, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The running compositor; dropping it stops the thread.
pub struct ScreenThread {
    pub screen: Screen,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Start composing onto `sink` at `fps`.
pub fn start(
    sink: Box<dyn DisplaySink>,
    fps: u32,
    style: Style,
    stats: Arc<MediaStats>,
) -> std::io::Result<ScreenThread> {
    let size = sink.size();
    let screen = Screen {
        scene: Arc::default(),
        last: Arc::new(Mutex::new(Canvas::new(size.0, size.1))),
        running: Arc::new(AtomicBool::new(true)),
    };
    let s = screen.clone();
    let thread = std::thread::Builder::new()
        .name("screen".into())
        .spawn(move || run(s, sink, fps, style, stats))?;
    Ok(ScreenThread {
        screen,
        thread: Some(thread),
    })
}

/// The compositor's loop: compose, power the screen down or up, present.
fn run(s: Screen, mut sink: Box<dyn DisplaySink>, fps: u32, style: Style, stats: Arc<MediaStats>) {
    let mut pacer = crate::device::audio::Pacer::new(Duration::from_secs(1) / fps.max(1));
    let size = sink.size();
    let mut canvas = Canvas::new(size.0, size.1);
    let mut failing = false;
    let mut dark = false;
    while s.running.load(Relaxed) {
        let size = sink.size();
        if size != (canvas.width, canvas.height) {
            canvas = Canvas::new(size.0, size.1);
        }
        let want_dark = {
            let scene = s.scene();
            compose(&scene, &mut canvas, style);
            nothing_to_show(&scene, style.idle)
        };
        let mut shown = Ok(());
        if want_dark != dark {
            shown = sink.set_power(!want_dark);
            if shown.is_ok() {
                dark = want_dark;
                log::info!(
                    "display {}",
                    if dark { "powered down (idle)" } else { "on" }
                );
            }
        }
        // Also while dark: a sink presents nothing then, but a screen that
        // is (re)opened meanwhile is powered down too.
        if shown.is_ok() {
            shown = sink.show(&canvas);
        }
        match shown {
            Ok(()) if !dark => {
                failing = false;
                add(&stats.display_frames, 1);
            }
            Ok(()) => failing = false,
            Err(e) if !failing => {
                failing = true;
                log::error!(
                    "display failed (code {:#06x}): {e}; the call goes on, the display is retried",
                    crate::protocol::code::DEVICE_NOT_FOUND
                );
            }
            Err(_) => {}
        }
        stats.display_lost.store(failing, Relaxed);
        // clone_from: the sink may have changed size (a screen plugged in).
        s.last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone_from(&canvas);
        pacer.wait();
    }
}

/// The tiles to show, each with its place: with the speaker layout and a
/// known speaker among several, the speaker first and large.
fn arrange(s: &Scene, layout: Layout, size: (usize, usize)) -> Vec<(&Tile, Rect)> {
    let mut shown: Vec<&Tile> = s
        .remote
        .iter()
        .filter(|t| t.shown())
        .take(MAX_TILES)
        .collect();
    let speaking = shown
        .iter()
        .position(|t| Some(&t.stream_id) == s.speaker.as_ref())
        .filter(|_| layout == Layout::Speaker && shown.len() > 1);
    let places = match speaking {
        Some(i) => {
            let speaker = shown.remove(i);
            shown.insert(0, speaker);
            layout::speaker_tiles(size, shown.len())
        }
        None => layout::tiles(size, shown.len()),
    };
    shown.into_iter().zip(places).collect()
}

/// `idle = "blank"` and nothing to show: no caller, no self-view, no ban.
fn nothing_to_show(s: &Scene, idle: Idle) -> bool {
    let self_view = s.self_view.is_some() && s.state == CallState::InCall;
    idle == Idle::Blank
        && !self_view
        && !s.remote.iter().any(Tile::shown)
        && !matches!(s.state, CallState::Banned(_))
}

/// Draw the scene on the canvas.
fn compose(s: &Scene, c: &mut Canvas, style: Style) {
    let size = (c.width, c.height);
    let whole = Rect {
        x: 0,
        y: 0,
        w: size.0,
        h: size.1,
    };
    c.fill(whole, BLACK);
    let shown = arrange(s, style.layout, size);
    let banned = matches!(s.state, CallState::Banned(_));
    if shown.is_empty() && (style.idle == Idle::Text || banned) {
        idle_text(s, c);
    }
    for (t, tile) in shown {
        match t.picture.as_ref().filter(|_| t.camera == Camera::On) {
            Some(pic) => {
                if let Some(view) = pic.view() {
                    c.blit(&view, layout::fit((pic.width, pic.height), tile));
                }
            }
            None => name_card(&t.user_id, tile, c),
        }
    }
    let me = s
        .self_view
        .as_ref()
        .filter(|_| s.state == CallState::InCall);
    if let Some(view) = me.and_then(|me| me.view()) {
        // Mirrored, as people expect to see themselves.
        c.blit_mirrored(&view, layout::self_view(size, (view.width, view.height)));
    }
}

/// The state in large letters, the room under it; banned in red.
fn idle_text(s: &Scene, c: &mut Canvas) {
    let scale = (c.width / 320).max(1) * 2;
    let colour = match s.state {
        CallState::Banned(_) => RED,
        _ => WHITE,
    };
    let state = s.state.text();
    let lines = [(state.as_str(), scale), (s.room.as_str(), scale / 2)];
    let mut y = c.height / 3;
    for (text, scale) in lines {
        let w = Canvas::text_width(text, scale.max(1));
        c.text(c.width.saturating_sub(w) / 2, y, scale.max(1), text, colour);
        y += 12 * scale.max(1);
    }
}

/// A caller whose camera is off: their name, centred in their tile on grey.
fn name_card(user_id: &str, tile: Rect, c: &mut Canvas) {
    c.fill(tile, GREY);
    let scale = (tile.w / 320).max(1) * 2;
    let w = Canvas::text_width(user_id, scale);
    let x = tile.x + tile.w.saturating_sub(w) / 2;
    let y = tile.y + tile.h.saturating_sub(8 * scale) / 2;
    c.text(x, y, scale, user_id, WHITE);
}

/// What the screen shows, as a PNG (`callbox ctl screenshot`).
pub fn encode_png(canvas: &Canvas) -> Result<Vec<u8>, DisplayError> {
    let err = |e: png::EncodingError| DisplayError::Png(e.to_string());
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, canvas.width as u32, canvas.height as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header().map_err(err)?;
    w.write_image_data(&to_rgb(canvas)).map_err(err)?;
    w.finish().map_err(err)?;
    Ok(out)
}

/// RGB of the canvas: BT.601 limited range, as the camera and the encoder use.
pub fn to_rgb(c: &Canvas) -> Vec<u8> {
    let v = c.view();
    let mut out = Vec::with_capacity(c.width * c.height * 3);
    for y in 0..c.height {
        for x in 0..c.width {
            let yy = (v.y[y * v.y_stride + x] as f32 - 16.0) * 1.164;
            let u = v.u[(y / 2) * v.uv_stride + x / 2] as f32 - 128.0;
            let vv = v.v[(y / 2) * v.uv_stride + x / 2] as f32 - 128.0;
            let px = [yy + 1.596 * vv, yy - 0.392 * u - 0.813 * vv, yy + 2.017 * u];
            out.extend(px.iter().map(|p| p.round().clamp(0.0, 255.0) as u8));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A screen that grows after its third frame, as a DRM screen opening
    /// at another mode than the configured size does.
    struct Growing(Arc<AtomicUsize>);

    impl DisplaySink for Growing {
        fn size(&self) -> (usize, usize) {
            if self.0.load(Relaxed) < 3 {
                (64, 48)
            } else {
                (128, 96)
            }
        }
        fn show(&mut self, _canvas: &Canvas) -> Result<(), DisplayError> {
            self.0.fetch_add(1, Relaxed);
            Ok(())
        }
        fn describe(&self) -> String {
            "growing".into()
        }
    }

    #[test]
    fn the_compositor_follows_a_screen_that_changes_size() {
        let shown = Arc::new(AtomicUsize::new(0));
        let stats = Arc::new(MediaStats::default());
        let t = start(
            Box::new(Growing(Arc::clone(&shown))),
            100,
            Style::default(),
            Arc::clone(&stats),
        )
        .expect("screen");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while shown.load(Relaxed) < 6 {
            assert!(
                std::time::Instant::now() < deadline,
                "the compositor stopped"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let snap = t.screen.snapshot();
        assert_eq!((snap.width, snap.height), (128, 96));
    }

    /// Records what the compositor does to it: frames handed over, power.
    #[derive(Clone, Default)]
    struct Recording(Arc<Mutex<(usize, Vec<bool>)>>);

    impl DisplaySink for Recording {
        fn size(&self) -> (usize, usize) {
            (64, 48)
        }
        fn show(&mut self, _canvas: &Canvas) -> Result<(), DisplayError> {
            self.0.lock().expect("lock").0 += 1;
            Ok(())
        }
        fn describe(&self) -> String {
            "recording".into()
        }
        fn set_power(&mut self, on: bool) -> Result<(), DisplayError> {
            self.0.lock().expect("lock").1.push(on);
            Ok(())
        }
    }

    fn wait_until(what: &str, f: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_blank_idle_screen_is_powered_down_until_a_caller_shows() {
        let sink = Recording::default();
        let stats = Arc::new(MediaStats::default());
        let style = Style {
            idle: Idle::Blank,
            ..Style::default()
        };
        let t = start(Box::new(sink.clone()), 100, style, Arc::clone(&stats)).expect("screen");
        let power = || sink.0.lock().expect("lock").1.clone();
        let frames = || stats.display_frames.load(Relaxed);
        wait_until("powered down while idle", || power() == [false]);
        let dark_frames = frames();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            frames(),
            dark_frames,
            "no frame is counted as shown while down"
        );

        t.screen.set_state(CallState::InCall, "1234");
        t.screen.add("s", "alice", false);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(power(), [false], "no picture yet: still down");
        let pic = vec![128u8; 16 * 16 * 3 / 2];
        t.screen
            .show("s", &I420::packed(&pic, 16, 16).expect("picture"));
        wait_until("powered up for the caller", || {
            power() == [false, true] && frames() > dark_frames
        });

        t.screen.remove("s");
        wait_until("down again when the caller left", || {
            power() == [false, true, false]
        });
        // Banned shows its reason, blank or not.
        t.screen
            .set_state(CallState::Banned(BanReason::Kick), "1234");
        wait_until("up for the ban", || power() == [false, true, false, true]);
    }

    #[test]
    fn a_camera_turned_back_on_shows_the_name_until_a_new_picture() {
        let screen = Screen {
            scene: Arc::default(),
            last: Arc::new(Mutex::new(Canvas::new(64, 48))),
            running: Arc::new(AtomicBool::new(true)),
        };
        let grey = |screen: &Screen| {
            let mut c = Canvas::new(64, 48);
            compose(&screen.scene(), &mut c, Style::default());
            c.view().y.iter().filter(|&&v| v == GREY.0).count() > 64 * 48 / 2
        };
        let white = vec![235u8; 16 * 16 * 3 / 2];
        let pic = I420::packed(&white, 16, 16).expect("picture");
        screen.add("s", "alice", false);
        screen.show("s", &pic);
        assert!(!grey(&screen), "the picture");
        screen.set_video_muted("alice", true);
        screen.show("s", &pic);
        assert!(
            grey(&screen),
            "camera off: the name, a picture in flight ignored"
        );
        screen.set_video_muted("alice", false);
        assert!(grey(&screen), "back on: still the name, not nothing");
        screen.show("s", &pic);
        assert!(!grey(&screen), "the new picture");
    }
}
