//! The device's screen, with the YUV4MPEG2 sink: device B (no camera, a
//! screen) in a room with device A (the synthetic camera). B's screen shows
//! A's picture, the pattern's stamps counting up in the file; before A
//! comes and after A leaves it shows its idle picture (the state and room
//! as text); with two callers the one speaking is large; a caller that
//! turns its camera off shows as its name; and
//! the status counts what was decoded and presented.

mod common;

use callbox::device::daemon::{CallLink, Muted};
use callbox::device::display::layout::{self, Rect};
use callbox::device::display::y4m;
use callbox::device::frame::I420;
use callbox::device::pattern::{self, Stamp};
use callbox::room::local::DeviceToml;
use common::*;
use std::time::{Duration, Instant};

const ROOM: u32 = 3400;
const SIZE: (usize, usize) = (640, 480);

/// The newest whole frame in the y4m file, if any.
fn last_frame(path: &std::path::Path) -> Option<Vec<u8>> {
    let data = std::fs::read(path).ok()?;
    let (size, frames) = y4m::read(&data)?;
    assert_eq!(size, SIZE);
    frames.last().map(|f| f.to_vec())
}

fn stamp(frame: &[u8]) -> Option<Stamp> {
    pattern::read(&I420::packed(frame, SIZE.0, SIZE.1)?)
}

/// The stamp of the picture drawn (scaled, perhaps mirrored) at `r`:
/// scaled back to 640x480 by nearest neighbour, its cells read again.
fn region_stamp(frame: &[u8], r: Rect, mirrored: bool) -> Option<Stamp> {
    let (w, h) = SIZE;
    let mut big = vec![0u8; w * h * 3 / 2];
    let (y_plane, chroma) = big.split_at_mut(w * h);
    for row in 0..h {
        for col in 0..w {
            let dx = col * r.w / w;
            let x = if mirrored {
                r.x + r.w - 1 - dx
            } else {
                r.x + dx
            };
            y_plane[row * w + col] = frame[(r.y + row * r.h / h) * w + x];
        }
    }
    chroma.fill(128);
    stamp(&big)
}

/// Text on black: some pixels at the idle text's white, most black.
fn is_idle_picture(frame: &[u8]) -> bool {
    let luma = &frame[..SIZE.0 * SIZE.1];
    let white = luma.iter().filter(|&&v| v == 235).count();
    let black = luma.iter().filter(|&&v| v == 16).count();
    white > 200 && black > luma.len() * 9 / 10
}

/// A caller with the camera off: their name in white on the grey tile.
fn is_name_card(frame: &[u8]) -> bool {
    let luma = &frame[..SIZE.0 * SIZE.1];
    let white = luma.iter().filter(|&&v| v == 235).count();
    let grey = luma.iter().filter(|&&v| v == 60).count();
    white > 200 && grey > luma.len() * 9 / 10
}

/// Poll the screen until `want` holds of its newest frame.
async fn wait_for<T>(
    path: &std::path::Path,
    secs: u64,
    what: &str,
    want: impl Fn(&[u8]) -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(t) = last_frame(path).as_deref().and_then(&want) {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not on screen within {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_shows_who_it_calls_and_its_idle_picture_when_alone() {
    let room = room().await;
    let dir = std::env::temp_dir().join(format!("callbox-display-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let screen = dir.join("screen.y4m");
    let path = screen.to_string_lossy().into_owned();
    let b = device_config(&room, ROOM, "device-b", |d: DeviceToml| {
        d.set("video", "enabled", false)
            .set("display", "sink", "y4m")
            .set("display", "path", path.as_str())
            .set("display", "fps", 10)
    });
    let (stop_b, task_b) = start_device(b);
    wait_for(&screen, 10, "B's idle picture", |f| {
        is_idle_picture(f).then_some(())
    })
    .await;

    let t = Instant::now();
    let (mute_a, muted) = tokio::sync::watch::channel(Muted::default());
    let link = CallLink {
        muted: Some(muted),
        ..Default::default()
    };
    let (stop_a, task_a, _) =
        start_linked_device(device_config(&room, ROOM, "device-a", |d| d), link);
    let first = wait_for(&screen, 15, "A's picture", stamp).await;
    let shown_after = t.elapsed();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let later = wait_for(&screen, 5, "A's picture", stamp).await;
    assert!(
        later.counter > first.counter + 5,
        "the picture does not move: {first:?} then {later:?}"
    );
    let lag_ms = (pattern::now_us().saturating_sub(later.capture_us)) as f64 / 1000.0;

    // A second caller, C, who is silent: A, whose microphone plays a tone,
    // is the speaker, large at the top; C small in the strip below.
    let silent = |d: DeviceToml| d.set("audio", "enabled", false);
    let (stop_c, task_c) = start_device(device_config(&room, ROOM, "device-c", silent));
    let [large, small] = layout::speaker_tiles(SIZE, 2)[..] else {
        panic!("two tiles")
    };
    let (left, right) = wait_for(&screen, 15, "the speaker large, the other small", |f| {
        let speaker = region_stamp(f, layout::fit(SIZE, large), false)?;
        let other = region_stamp(f, layout::fit(SIZE, small), false)?;
        (speaker.counter > other.counter + 10).then_some((speaker, other))
    })
    .await;
    let _ = stop_c.send(());
    task_c.await.expect("C's task");
    wait_for(&screen, 10, "A alone again", stamp).await;

    // A turns its camera off: B shows A's name instead of a frozen picture;
    // on again, A's picture is back.
    let video_off = Muted {
        audio: false,
        video: true,
    };
    mute_a.send_replace(video_off);
    let t = Instant::now();
    wait_for(&screen, 5, "A's name card", |f| {
        (stamp(f).is_none() && is_name_card(f)).then_some(())
    })
    .await;
    let card_after = t.elapsed();
    mute_a.send_replace(Muted::default());
    let t = Instant::now();
    wait_for(&screen, 5, "A's picture after the camera is back", stamp).await;
    let back_after = t.elapsed();

    let _ = stop_a.send(());
    task_a.await.expect("A's task");
    let t = Instant::now();
    wait_for(&screen, 10, "B's idle picture after A left", |f| {
        (stamp(f).is_none() && is_idle_picture(f)).then_some(())
    })
    .await;
    let idle_after = t.elapsed();

    let _ = stop_b.send(());
    let b = task_b.await.expect("B's task");
    let s = b.stats().snapshot();
    println!(
        "A on B's screen {:.2} s after A started; counters {} -> {} in 1 s; newest picture {lag_ms:.0} ms old when read; with C: A speaking at {}, C at {}; A's camera off: name card after {:.2} s, picture back after {:.2} s; idle again {:.2} s after A left; {} pictures decoded, {} frames presented, {} decode errors, {} keyframes asked for",
        shown_after.as_secs_f64(),
        first.counter,
        later.counter,
        left.counter,
        right.counter,
        card_after.as_secs_f64(),
        back_after.as_secs_f64(),
        idle_after.as_secs_f64(),
        s.remote_video_frames_decoded,
        s.display_frames,
        s.remote_video_decode_errors,
        s.remote_keyframe_requests
    );
    assert!(s.remote_video_frames_decoded >= 20, "{s:?}");
    assert!(s.display_frames >= 20, "{s:?}");
    std::fs::remove_dir_all(&dir).ok();
    room.stop().await;
}

/// The self-view's picture, mirrored back and scaled up to 640x480.
fn self_view_stamp(frame: &[u8]) -> Option<Stamp> {
    region_stamp(frame, layout::self_view(SIZE, SIZE), true)
}

/// With `self_view`, a device in a call shows its own camera, mirrored,
/// small in the corner; its stamps count up there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_in_a_call_shows_itself_in_the_corner() {
    let room = room().await;
    let dir = std::env::temp_dir().join(format!("callbox-self-view-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let screen = dir.join("screen.y4m");
    let path = screen.to_string_lossy().into_owned();
    let config = device_config(&room, ROOM + 1, "device-s", |d: DeviceToml| {
        d.set("display", "sink", "y4m")
            .set("display", "path", path.as_str())
            .set("display", "fps", 10)
            .set("display", "self_view", true)
    });
    let (stop, task) = start_device(config);
    let first = wait_for(&screen, 15, "the self-view", self_view_stamp).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let later = wait_for(&screen, 5, "the self-view", self_view_stamp).await;
    let lag_ms = (pattern::now_us().saturating_sub(later.capture_us)) as f64 / 1000.0;
    println!(
        "self-view: counters {} -> {} in 0.5 s, newest {lag_ms:.0} ms old when read",
        first.counter, later.counter
    );
    assert!(later.counter > first.counter, "{first:?} then {later:?}");
    let _ = stop.send(());
    task.await.expect("device task");
    std::fs::remove_dir_all(&dir).ok();
    room.stop().await;
}

/// Pushed out of the room, a device says why on its screen, in red: the
/// banned state is on the screen as well as on the LEDs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_device_shows_why_on_its_screen() {
    use callbox::device::daemon::{Device, DeviceError};
    use callbox::protocol::BanReason;
    use callbox::room::local::DEMO_SDK_APP_ID;
    let room = room().await;
    let dir = std::env::temp_dir().join(format!("callbox-banned-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let screen = dir.join("screen.y4m");
    let path = screen.to_string_lossy().into_owned();
    let config = device_config(&room, ROOM + 2, "device-r", |d: DeviceToml| {
        d.set("video", "enabled", false)
            .set("display", "sink", "y4m")
            .set("display", "path", path.as_str())
            .set("display", "fps", 10)
    });
    let mut device = Device::open(config, Instant::now()).expect("device opens");
    let (joined, in_call) = tokio::sync::oneshot::channel();
    let link = CallLink {
        joined: Some(joined),
        ..Default::default()
    };
    let call = tokio::spawn(async move {
        let r = device.call(std::future::pending(), link).await;
        (device, r)
    });
    tokio::time::timeout(Duration::from_secs(15), in_call)
        .await
        .expect("in call within 15 s")
        .expect("joined");
    let remove = serde_json::json!({
        "SdkAppId": DEMO_SDK_APP_ID, "RoomId": ROOM + 2, "UserIds": ["device-r"]
    });
    let (code, body) = room
        .admin("RemoveUser", &remove, None)
        .await
        .expect("admin");
    assert_eq!(code, 200, "{body}");
    let (_device, result) = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the call ends")
        .expect("call task");
    assert!(
        matches!(result, Err(DeviceError::Banned(BanReason::Banned))),
        "{result:?}"
    );
    // Red text (V 240) on black, where the white idle text was.
    let red = wait_for(&screen, 5, "the banned state in red", |f| {
        let v = &f[SIZE.0 * SIZE.1 * 5 / 4..];
        let n = v.iter().filter(|&&c| c == 240).count();
        (n > 50 && is_idle_text_gone(f)).then_some(n)
    })
    .await;
    println!("removed: the screen says so in red ({red} chroma samples)");
    std::fs::remove_dir_all(&dir).ok();
    room.stop().await;
}

/// No white text left: the idle state's words are not on the screen.
fn is_idle_text_gone(frame: &[u8]) -> bool {
    !frame[..SIZE.0 * SIZE.1].contains(&235)
}
