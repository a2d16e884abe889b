//! The board's provisioning: the room and device config files and the microphone's tone.

use super::*;

/// The guest's room service: listening on every guest address, its media
/// port advertised as the host's 127.0.0.1 (qemu forwards it).
pub(crate) fn guest_room_toml(media_port: u16) -> String {
    room_toml(
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, GUEST_HTTP)),
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, media_port)),
        Some(SocketAddr::from((Ipv4Addr::LOCALHOST, media_port))),
    )
}

/// The board's provisioning: vivid as the camera, the loopback card as
/// microphone (hw:Loopback,1,0) and speaker (hw:Loopback,0,1), gpio-sim's
/// lines as active-high buttons and LEDs. Without the audio processing
/// chain (on by default for an ALSA speakerphone): under TCG the guests run
/// it close to real time at best (x86_64: capture overruns; arm64: a third
/// of the audio), which would make the tone checks flaky.
pub(crate) fn device_toml(size: (usize, usize), formats: &[&str], encoder: &str) -> Result<String> {
    Ok(board(size, formats, encoder)?.text())
}

pub(crate) fn board(size: (usize, usize), formats: &[&str], encoder: &str) -> Result<DeviceToml> {
    let url = format!("ws://127.0.0.1:{GUEST_HTTP}/ws");
    let button = |line: &str| {
        format!(
            r#"{{ line = "{line}", active_low = false, bias = "pull-down", debounce_ms = 10 }}"#
        )
    };
    let toml = DeviceToml::loopback(&url, DEVICE, ROOM_ID, 86400)
        .set("video", "source", "v4l2")
        .set("video", "device", "/dev/video0")
        .set("video", "width", size.0 as i64)
        .set("video", "height", size.1 as i64)
        .set("video", "fps", 30)
        .set("video", "formats", formats.to_vec())
        .set("video", "encoder", encoder)
        .set("audio", "capture", "alsa")
        .set("audio", "capture_device", "hw:Loopback,1,0")
        .set("audio", "playback", "alsa")
        .set("audio", "playback_device", "hw:Loopback,0,1")
        .unset("audio", "tone_hz")
        .set("call", "auto_join", true)
        .set("call", "banned_press", "long-only")
        .set("call", "long_press_ms", LONG_PRESS_MS as i64)
        .set_toml("gpio", "call_button", &button("BTN_CALL"))?
        .set_toml("gpio", "hangup_button", &button("BTN_HANGUP"))?
        .set_toml("gpio", "call_led", r#"{ line = "LED_CALL" }"#)?
        .set_toml("gpio", "banned_led", r#"{ line = "LED_BANNED" }"#)?
        .set_toml(
            "audio",
            "processing",
            r#"{ echo_cancellation = false, noise_suppression = "off", auto_gain = false, high_pass = false }"#,
        )?
        .set("service", "log_level", "info");
    Ok(toml)
}

/// The board with its screen (bochs-display, DRM) at 640x480, the size
/// the host's pattern is sent at, so its stamps read back 1:1 from the
/// screen; no camera of its own (it only has to show).
/// A device without a camera and with the guest's DRM screen; `idle`
/// says what it shows with no one to show ("text" or "blank").
pub(crate) fn screen_device_toml(size: (usize, usize), idle: &str) -> Result<DeviceToml> {
    Ok(board(size, &["YU12"], "openh264")?
        .set("video", "enabled", false)
        .set("display", "sink", "drm")
        .set("display", "mode", "640x480")
        .set("display", "fps", 15)
        .set("display", "idle", idle))
}

pub(crate) fn write_tone(path: &Path, hz: f64, secs: u32, amplitude: f64) -> Result<()> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: SAMPLE_RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec)?;
    let mut t = tone::Tone::new(hz, SAMPLE_RATE, amplitude);
    let mut buf = vec![0i16; SAMPLE_RATE as usize];
    for _ in 0..secs {
        t.fill(&mut buf);
        for s in &buf {
            w.write_sample(*s)?;
        }
    }
    w.finalize()?;
    Ok(())
}
