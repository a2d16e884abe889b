//! Lip sync, end to end: a caller sends a beep and a white flash captured
//! at the same instant, once a second, through the room; device B plays
//! the room into a WAV file and composes its screen into YUV4MPEG2, both
//! in real time from when B opened them. Where each beep starts in the WAV
//! and where each flash first shows on the screen say how far apart a
//! person in front of B would hear and see them. (Both files start when B
//! opens its devices, within a millisecond of each other, and are paced by
//! the same monotonic clock.)

mod common;

use callbox::device::audio::{FRAME, FRAME_SAMPLES, SAMPLE_RATE};
use callbox::device::display::y4m;
use callbox::room::local::DeviceToml;
use common::*;
use std::time::{Duration, Instant};

const ROOM: u32 = 3500;
const SCREEN_FPS: u32 = 30;
const VIDEO: (usize, usize) = (320, 240);
/// Beep and flash last this long, at the start of every second.
const MARK: Duration = Duration::from_millis(100);

/// The caller: the beep and the flash during the first `MARK` of each
/// second, silence and black otherwise.
async fn send_marks(client: &mut callbox::client::Client, secs: u32) {
    let in_mark = |n: u32| FRAME * (n % 50) < MARK;
    let picture = |n: u32, buf: &mut [u8]| {
        let (luma, chroma) = buf.split_at_mut(VIDEO.0 * VIDEO.1);
        luma.fill(if in_mark(n) { 235 } else { 16 });
        chroma.fill(128);
    };
    let sound = |n: u32, pcm: &mut [i16]| {
        for (i, s) in pcm.iter_mut().enumerate() {
            let t = (n as usize * FRAME_SAMPLES + i) as f64 / SAMPLE_RATE as f64;
            let beep = 12000.0 * (2.0 * std::f64::consts::PI * 1000.0 * t).sin();
            *s = if in_mark(n) { beep as i16 } else { 0 };
        }
    };
    send_av(client, VIDEO, secs, picture, sound).await;
}

/// Seconds into the WAV at which each beep starts (after 0.3 s of quiet).
fn beeps(wav: &std::path::Path) -> Vec<f64> {
    let samples: Vec<i16> = hound::WavReader::open(wav)
        .expect("wav")
        .into_samples::<i16>()
        .map_while(Result::ok)
        .collect();
    let quiet = SAMPLE_RATE as usize * 3 / 10;
    let mut onsets = Vec::new();
    let mut last_loud: Option<usize> = None;
    for (i, s) in samples.iter().enumerate() {
        if s.unsigned_abs() > 3000 {
            if last_loud.is_none_or(|l| i - l > quiet) {
                // The sink plays each 20 ms frame when its slot has begun.
                onsets.push(i as f64 / SAMPLE_RATE as f64 + FRAME.as_secs_f64());
            }
            last_loud = Some(i);
        }
    }
    onsets
}

/// Seconds into the screen file at which each flash first shows.
fn flashes(screen: &std::path::Path) -> Vec<f64> {
    let data = std::fs::read(screen).expect("screen file");
    let (size, frames) = y4m::read(&data).expect("y4m");
    let bright = |f: &[u8]| {
        let luma = &f[..size.0 * size.1];
        luma.iter().map(|&v| v as u64).sum::<u64>() / luma.len() as u64 > 128
    };
    let mut onsets = Vec::new();
    let mut was = false;
    for (k, f) in frames.into_iter().enumerate() {
        let now = bright(f);
        if now && !was {
            onsets.push(k as f64 / SCREEN_FPS as f64);
        }
        was = now;
    }
    onsets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_is_seen_and_heard_together() {
    let room = room().await;
    let dir = std::env::temp_dir().join(format!("callbox-lip-sync-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (wav, screen) = (dir.join("speaker.wav"), dir.join("screen.y4m"));
    let (wav_path, screen_path) = (
        wav.to_string_lossy().into_owned(),
        screen.to_string_lossy().into_owned(),
    );
    let b = device_config(&room, ROOM, "device-b", |d: DeviceToml| {
        d.set("video", "enabled", false)
            .set("audio", "playback", "wav")
            .set("audio", "wav_path", wav_path.as_str())
            .set("display", "sink", "y4m")
            .set("display", "path", screen_path.as_str())
            .set("display", "fps", SCREEN_FPS as i64)
    });
    let (stop_b, task_b) = start_device(b);
    let mut caller = joined(&room, "caller", ROOM).await;
    let t = Instant::now();
    send_marks(&mut caller, 4).await;
    let sent_for = t.elapsed();
    let _ = stop_b.send(());
    let b = task_b.await.expect("B's task");
    caller.leave().await.ok();

    let (heard, seen) = (beeps(&wav), flashes(&screen));
    // Each flash against the beep nearest to it; positive: seen after heard.
    let offsets_ms: Vec<f64> = seen
        .iter()
        .filter_map(|v| {
            let a = heard
                .iter()
                .min_by(|x, y| (*x - v).abs().total_cmp(&(*y - v).abs()))?;
            ((v - a).abs() < 0.5).then_some((v - a) * 1000.0)
        })
        .collect();
    let mean = offsets_ms.iter().sum::<f64>() / offsets_ms.len().max(1) as f64;
    let worst = offsets_ms.iter().fold(0.0f64, |m, o| m.max(o.abs()));
    let s = b.stats().snapshot();
    println!(
        "lip sync over {:.1} s: {} beeps, {} flashes; flash - beep: {:?} ms; mean {mean:.0} ms, worst {worst:.0} ms; {} pictures decoded",
        sent_for.as_secs_f64(),
        heard.len(),
        seen.len(),
        offsets_ms.iter().map(|o| o.round() as i64).collect::<Vec<_>>(),
        s.remote_video_frames_decoded
    );
    // The first mark goes by while B subscribes.
    assert!(offsets_ms.len() >= 3, "beeps {heard:?}, flashes {seen:?}");
    assert!(
        mean.abs() <= 40.0 && worst <= 80.0,
        "picture and sound apart: mean {mean:.0} ms, worst {worst:.0} ms"
    );
    std::fs::remove_dir_all(&dir).ok();
    room.stop().await;
}
