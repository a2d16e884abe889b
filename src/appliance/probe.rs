//! `callbox probe`: what the board offers (V4L2 cameras with formats, sizes
//! and rates; V4L2 M2M hardware video encoders; ALSA capture and playback devices; GPIO chips and lines with
//! name, consumer and direction) and, given a config, whether each thing
//! it names is there and usable: the TRTC guide's pre-call device check.
//! With `--echo`, the echo self-test on the configured speaker and
//! microphone (`audio_tool::echo_test`).

use crate::appliance::config::ApplianceConfig;
use crate::appliance::gpio;
use crate::config::ConfigError;
use crate::device::audio_tool;
use crate::device::config::{
    CaptureKind, DisplayKind, EncoderKind, PlaybackKind, VideoSection, VideoSourceKind,
};
use crate::device::display::drm_sysfs::{self, DrmCard};
use crate::device::display::kms::{KmsSettings, KmsSink};
use crate::device::display::DisplaySink;
use crate::device::echo_probe::EchoMeasurement;
use crate::device::encoder_probe::{self, EncodeTest};
use crate::device::m2m::{self, M2mEncoder};
use crate::device::sources;
use crate::device::v4l2::{self, Sizes};
use serde::Serialize;
use std::fmt::Write;
use std::path::Path;

#[derive(Debug, Serialize)]
pub struct Camera {
    pub path: String,
    pub card: String,
    pub driver: String,
    pub formats: Vec<CameraFormat>,
}

#[derive(Debug, Serialize)]
pub struct CameraFormat {
    pub fourcc: String,
    pub sizes: String,
    /// Frame rates at the first (or the configured) size.
    pub fps: Vec<f64>,
}

#[derive(Debug, Serialize)]
pub struct Pcm {
    pub name: String,
    pub description: String,
    pub capture: bool,
    pub playback: bool,
}

#[derive(Debug, Serialize)]
pub struct GpioLine {
    pub offset: u32,
    pub name: String,
    pub consumer: String,
    pub direction: String,
}

#[derive(Debug, Serialize)]
pub struct GpioChip {
    pub path: String,
    pub label: String,
    pub lines: Vec<GpioLine>,
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub key: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub cameras: Vec<Camera>,
    /// Hardware (V4L2 M2M) video encoders.
    pub encoders: Vec<M2mEncoder>,
    pub pcms: Vec<Pcm>,
    pub gpio_chips: Vec<GpioChip>,
    pub displays: Vec<DrmCard>,
    pub checks: Vec<Check>,
    /// The echo self-test's numbers, when it ran and heard the probe.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub echo: Option<EchoMeasurement>,
    /// The encoder test's numbers, when it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encode: Option<EncodeTest>,
}

/// Frames the encoder test encodes.
const ENCODE_TEST_FRAMES: usize = 60;

fn sizes_text(s: &Sizes) -> String {
    match s {
        Sizes::Discrete(list) => list
            .iter()
            .map(|(w, h)| format!("{w}x{h}"))
            .collect::<Vec<_>>()
            .join(" "),
        Sizes::Range { min, max, step } => format!(
            "{}x{} to {}x{} step {}x{}",
            min.0, min.1, max.0, max.1, step.0, step.1
        ),
    }
}

fn cameras(want: (u32, u32)) -> Vec<Camera> {
    let mut paths: Vec<_> = std::fs::read_dir("/dev")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("video"))
        })
        .collect();
    paths.sort();
    let mut out = Vec::new();
    for path in paths {
        let Ok(dev) = v4l::Device::with_path(&path) else {
            continue;
        };
        let Ok(caps) = dev.query_caps() else { continue };
        if !caps
            .capabilities
            .contains(v4l::capability::Flags::VIDEO_CAPTURE)
        {
            continue;
        }
        let formats = v4l2::offered_formats(&dev, want)
            .unwrap_or_default()
            .into_iter()
            .map(|(fourcc, sizes)| {
                let at = match &sizes {
                    Sizes::Discrete(l) if !l.contains(&want) => l.first().copied().unwrap_or(want),
                    _ => want,
                };
                CameraFormat {
                    fps: v4l2::frame_rates(&dev, &fourcc, at),
                    sizes: sizes_text(&sizes),
                    fourcc,
                }
            })
            .collect();
        out.push(Camera {
            path: path.display().to_string(),
            card: caps.card,
            driver: caps.driver,
            formats,
        });
    }
    out
}

fn pcms() -> Vec<Pcm> {
    let Ok(hints) = alsa::device_name::HintIter::new_str(None, "pcm") else {
        return Vec::new();
    };
    hints
        .filter_map(|h| {
            let name = h.name?;
            let (capture, playback) = match h.direction {
                Some(alsa::Direction::Capture) => (true, false),
                Some(alsa::Direction::Playback) => (false, true),
                None => (true, true),
            };
            Some(Pcm {
                description: h.desc.unwrap_or_default().replace('\n', " "),
                name,
                capture,
                playback,
            })
        })
        .collect()
}

fn gpio_chips() -> Vec<GpioChip> {
    let mut out = Vec::new();
    for path in gpiocdev::chip::chips().unwrap_or_default() {
        let Ok(chip) = gpiocdev::Chip::from_path(&path) else {
            continue;
        };
        let label = chip.info().map(|i| i.label).unwrap_or_default();
        let lines = chip
            .line_info_iter()
            .map(|it| {
                it.flatten()
                    .map(|l| GpioLine {
                        offset: l.offset,
                        name: l.name,
                        consumer: l.consumer,
                        direction: format!("{:?}", l.direction).to_lowercase(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(GpioChip {
            path: path.display().to_string(),
            label,
            lines,
        });
    }
    out
}

fn check(checks: &mut Vec<Check>, key: &str, result: Result<String, String>) {
    checks.push(Check::new(key, result));
}

impl Check {
    fn new(key: &str, result: Result<String, String>) -> Check {
        let (ok, detail) = match result {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        Check {
            key: key.to_owned(),
            ok,
            detail,
        }
    }
}

/// Open each device the config names the way the daemon does (through
/// [`sources`]), and close it.
fn check_config(c: &ApplianceConfig) -> Vec<Check> {
    let mut checks = Vec::new();
    let stats = std::sync::Arc::default;
    let (v, a) = (&c.video, &c.audio);
    if v.enabled && v.source == VideoSourceKind::V4l2 {
        let r = sources::open_camera(v)
            .map(|cam| cam.describe())
            .map_err(|e| e.to_string());
        check(&mut checks, "video.device", r);
    }
    if v.enabled && matches!(v.encoder, EncoderKind::V4l2m2m | EncoderKind::Auto) {
        check(&mut checks, "video.encoder", check_encoder(v));
    }
    if a.enabled && a.capture == CaptureKind::Alsa {
        let r = sources::open_microphone(a, stats())
            .map(|mic| format!("{} opens at 48 kHz", mic.describe()))
            .map_err(|e| e.to_string());
        check(&mut checks, "audio.capture_device", r);
    }
    if a.enabled && a.playback == PlaybackKind::Alsa {
        let r = sources::open_speaker(a, stats())
            .map(|speaker| format!("{} opens at 48 kHz", speaker.describe()))
            .map_err(|e| e.to_string());
        check(&mut checks, "audio.playback_device", r);
    }
    for (key, chip, line) in c.gpio.lines() {
        let r = gpio::locate(key, chip, line).map_err(|e| e.to_string());
        check(&mut checks, &format!("gpio.{key}"), r);
    }
    if c.display.sink == DisplayKind::Drm {
        checks.push(check_screen(&KmsSettings::from(&c.display)));
    }
    checks
}

/// Which encoder the daemon would use, opened as it would open it.
fn check_encoder(v: &VideoSection) -> Result<String, String> {
    let node = sources::hardware_encoder_node(v);
    if let (EncoderKind::V4l2m2m, Err(why)) = (v.encoder, &node) {
        return Err(why.clone());
    }
    let size = (v.width as usize, v.height as usize);
    let opened = sources::open_encoder(v, size, v.fps).map_err(|e| e.to_string())?;
    Ok(match node {
        Ok(_) => opened.describe(),
        Err(why) => format!("auto: OpenH264, since {why}"),
    })
}

/// The screen the daemon would light: the connector and mode against
/// sysfs, then opened (and lit) as the daemon does.
fn check_screen(settings: &KmsSettings) -> Check {
    if let Err(m) = settings.check(&drm_sysfs::cards(Path::new(drm_sysfs::SYSFS))) {
        return Check::new(m.key, Err(m.reason));
    }
    let r = KmsSink::open(settings)
        .map(|screen| screen.describe())
        .map_err(|e| e.to_string());
    Check::new("display.device", r)
}

/// The echo self-test on the configured speaker and microphone: a check
/// line, and the numbers when the probe was heard.
fn check_echo(c: &ApplianceConfig) -> (Check, Option<EchoMeasurement>) {
    let a = &c.audio;
    let mut numbers = None;
    let result = if a.capture != CaptureKind::Alsa || a.playback != PlaybackKind::Alsa {
        Err("the echo test needs audio.capture and audio.playback = \"alsa\"".to_owned())
    } else {
        let stats = std::sync::Arc::default;
        sources::open_microphone(a, stats())
            .and_then(|mut mic| {
                let mut speaker = sources::open_speaker(a, stats())?;
                audio_tool::echo_test(mic.as_mut(), speaker.as_mut())
            })
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|fault| fault.to_string()))
            .map(|m| {
                let text = format!(
                    "delay {:.1} ms, echo {:.1} dBFS ({:.1} dB below the probe), noise floor {:.1} dBFS, the canceller removes {:.1} dB of it",
                    m.delay_ms,
                    m.echo_level_dbfs,
                    m.echo_return_loss_db,
                    m.noise_floor_dbfs,
                    m.echo_reduction_db,
                );
                numbers = Some(m);
                text
            })
    };
    (Check::new("audio.echo", result), numbers)
}

/// Probe the board; with `config`, also check that config against it, and
/// with `echo` run the echo self-test on its speaker and microphone.
/// With `encoder` (a coded fourcc, e.g. H264), also encode the configured
/// camera on the board's M2M encoder that makes it.
pub fn probe(
    config: Option<&Path>,
    echo: bool,
    encoder: Option<&str>,
) -> Result<Report, ConfigError> {
    let config = config.map(ApplianceConfig::load).transpose()?;
    let want = config
        .as_ref()
        .map_or((640, 480), |c| (c.video.width, c.video.height));
    let mut checks = config.as_ref().map(check_config).unwrap_or_default();
    let mut numbers = None;
    if let (true, Some(c)) = (echo, &config) {
        let (line, m) = check_echo(c);
        checks.push(line);
        numbers = m;
    }
    let mut encode = None;
    if let (Some(coded), Some(c)) = (encoder, &config) {
        let result = encoder_probe::encode_test(&c.video, coded, ENCODE_TEST_FRAMES);
        checks.push(Check::new(
            "video.encoder",
            result
                .as_ref()
                .map(EncodeTest::line)
                .map_err(|e| e.to_string()),
        ));
        if let Ok(test) = &result {
            checks.push(Check::new("video.encoder_speed", Ok(test.timing_line())));
        }
        encode = result.ok();
    }
    Ok(Report {
        cameras: cameras(want),
        encoders: m2m::find_encoders(),
        pcms: pcms(),
        gpio_chips: gpio_chips(),
        displays: drm_sysfs::cards(Path::new(drm_sysfs::SYSFS)),
        checks,
        echo: numbers,
        encode,
    })
}

impl Report {
    /// Whether every check passed.
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    pub fn text(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(t, "Cameras (V4L2):");
        if self.cameras.is_empty() {
            let _ = writeln!(t, "  none");
        }
        for c in &self.cameras {
            let _ = writeln!(t, "  {}: {} ({})", c.path, c.card, c.driver);
            for f in &c.formats {
                let fps: Vec<String> = f.fps.iter().map(|r| format!("{r:.0}")).collect();
                let _ = writeln!(t, "    {}: {}; fps {}", f.fourcc, f.sizes, fps.join("/"));
            }
        }
        let _ = writeln!(t, "Video encoders (V4L2 M2M):");
        if self.encoders.is_empty() {
            let _ = writeln!(t, "  none");
        }
        for e in &self.encoders {
            let _ = writeln!(
                t,
                "  {}: {} ({}): makes {} from {}; controls: {}",
                e.path.display(),
                e.card,
                e.driver,
                e.coded.join(", "),
                e.raw.join(", "),
                e.controls.join(", ")
            );
        }
        let _ = writeln!(t, "Audio (ALSA PCMs):");
        if self.pcms.is_empty() {
            let _ = writeln!(t, "  none");
        }
        for p in &self.pcms {
            let dir = match (p.capture, p.playback) {
                (true, true) => "capture+playback",
                (true, false) => "capture",
                _ => "playback",
            };
            let _ = writeln!(t, "  {} [{dir}]: {}", p.name, p.description);
        }
        let _ = writeln!(t, "Displays (DRM):");
        if self.displays.is_empty() {
            let _ = writeln!(t, "  none");
        }
        for d in &self.displays {
            let _ = writeln!(t, "  {} ({})", d.path, d.driver);
            for c in &d.connectors {
                let _ = writeln!(
                    t,
                    "    {}: {}; modes {}",
                    c.name,
                    c.status,
                    c.modes.join(", ")
                );
            }
        }
        let _ = writeln!(t, "GPIO:");
        if self.gpio_chips.is_empty() {
            let _ = writeln!(t, "  none");
        }
        for c in &self.gpio_chips {
            let _ = writeln!(t, "  {} ({}), {} lines", c.path, c.label, c.lines.len());
            for l in &c.lines {
                let _ = writeln!(
                    t,
                    "    {:>3} {:<16} {:<6} {}",
                    l.offset,
                    if l.name.is_empty() { "-" } else { &l.name },
                    l.direction,
                    if l.consumer.is_empty() {
                        ""
                    } else {
                        &l.consumer
                    }
                );
            }
        }
        if !self.checks.is_empty() {
            let _ = writeln!(t, "Config check:");
            for c in &self.checks {
                let _ = writeln!(
                    t,
                    "  {} {}: {}",
                    if c.ok { "ok  " } else { "FAIL" },
                    c.key,
                    c.detail
                );
            }
        }
        t
    }
}
