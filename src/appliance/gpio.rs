//! Buttons and LEDs on the GPIO character device, uAPI v2 via `gpiocdev`
//! (kernel debounce, bias, edge events with kernel timestamps; the older
//! `gpio-cdev` crate speaks only v1, which has neither debounce nor bias).
//! Lines are found by name or chip + offset; a missing or busy line is a
//! startup error naming the config key, chip and line.

use crate::appliance::config::{BiasKind, ButtonLine, GpioSection, LedLine, LineId};
use crate::appliance::controller::Button;
use crate::appliance::leds::Leds;
use gpiocdev::line::{Bias, EdgeDetection, EdgeKind, Value};
use gpiocdev::tokio::AsyncRequest;
use gpiocdev::{Chip, Request};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The consumer label other tools (`gpioinfo`, `callbox probe`) show.
pub const CONSUMER: &str = "callbox";

#[derive(Debug, thiserror::Error)]
pub enum GpioError {
    #[error("E_GPIO_NO_LINE: gpio.{key}: line {line} not found{}", chip.as_ref().map(|c| format!(" on {c}")).unwrap_or_else(|| " on any GPIO chip".into()))]
    NotFound {
        key: &'static str,
        chip: Option<String>,
        line: String,
    },
    #[error("E_GPIO_CHIP: gpio.{key}: cannot open GPIO chip {chip}: {source}")]
    Chip {
        key: &'static str,
        chip: String,
        #[source]
        source: gpiocdev::Error,
    },
    #[error("E_GPIO_BUSY: gpio.{key}: {chip} line {line} is busy (held by {consumer:?})")]
    Busy {
        key: &'static str,
        chip: String,
        line: String,
        consumer: String,
    },
    #[error("E_GPIO_REQUEST: gpio.{key}: cannot request {chip} line {line}: {source}")]
    Request {
        key: &'static str,
        chip: String,
        line: String,
        #[source]
        source: gpiocdev::Error,
    },
}

impl GpioError {
    pub fn code(&self) -> u32 {
        crate::protocol::code::DEVICE_NOT_FOUND
    }
}

/// A line the config names, found: its chip and offset.
struct Found {
    chip: PathBuf,
    offset: u32,
    label: String,
}

fn open_chip(key: &'static str, chip: &str) -> Result<Chip, GpioError> {
    let opened = if chip.starts_with('/') {
        Chip::from_path(chip)
    } else {
        Chip::from_name(chip)
    };
    opened.map_err(|source| GpioError::Chip {
        key,
        chip: chip.to_owned(),
        source,
    })
}

fn find(key: &'static str, chip: Option<&str>, line: &LineId) -> Result<Found, GpioError> {
    let not_found = || GpioError::NotFound {
        key,
        chip: chip.map(str::to_owned),
        line: line.to_string(),
    };
    let (path, info) = match (chip, line) {
        (Some(c), _) => {
            let chip = open_chip(key, c)?;
            let info = match line {
                LineId::Name(n) => chip.find_line_info(n),
                LineId::Offset(o) => chip.line_info(*o).ok(),
            }
            .ok_or_else(not_found)?;
            (chip.path().to_owned(), info)
        }
        (None, LineId::Name(n)) => {
            let f = gpiocdev::find_named_line(n).ok_or_else(not_found)?;
            (f.chip, f.info)
        }
        (None, LineId::Offset(_)) => return Err(not_found()),
    };
    let label = format!("{} ({})", line, path.display());
    if info.used {
        return Err(GpioError::Busy {
            key,
            chip: path.display().to_string(),
            line: line.to_string(),
            consumer: info.consumer,
        });
    }
    Ok(Found {
        chip: path,
        offset: info.offset,
        label,
    })
}

fn request_error(key: &'static str, found: &Found, line: &LineId, e: gpiocdev::Error) -> GpioError {
    let chip = found.chip.display().to_string();
    // Lost a race for the line after `find` saw it free: EBUSY.
    use gpiocdev_uapi::{Errno, Error as Uapi};
    let busy = matches!(
        e,
        gpiocdev::Error::Os(Errno(libc::EBUSY))
            | gpiocdev::Error::Uapi(_, Uapi::Os(Errno(libc::EBUSY)))
    );
    if busy {
        GpioError::Busy {
            key,
            chip,
            line: line.to_string(),
            consumer: "another process".into(),
        }
    } else {
        GpioError::Request {
            key,
            chip,
            line: line.to_string(),
            source: e,
        }
    }
}

/// Find the line `key` names and request it, configured by `setup`
/// (direction, edges, bias) on top of chip, line, consumer and polarity.
fn request_line(
    key: &'static str,
    chip: Option<&str>,
    line: &LineId,
    active_low: bool,
    setup: impl FnOnce(&mut gpiocdev::request::Builder),
) -> Result<(Request, String), GpioError> {
    let found = find(key, chip, line)?;
    let mut builder = Request::builder();
    builder
        .on_chip(found.chip.clone())
        .with_consumer(CONSUMER)
        .with_line(found.offset);
    setup(&mut builder);
    if active_low {
        builder.as_active_low();
    }
    let req = builder
        .request()
        .map_err(|e| request_error(key, &found, line, e))?;
    Ok((req, found.label))
}

fn request_button(key: &'static str, b: &ButtonLine) -> Result<(Request, String), GpioError> {
    request_line(key, b.chip.as_deref(), &b.line, b.active_low, |builder| {
        builder
            .as_input()
            .with_edge_detection(EdgeDetection::BothEdges)
            .with_debounce_period(Duration::from_millis(b.debounce_ms));
        match b.bias {
            BiasKind::PullUp => builder.with_bias(Bias::PullUp),
            BiasKind::PullDown => builder.with_bias(Bias::PullDown),
            BiasKind::Disabled => builder.with_bias(Bias::Disabled),
            BiasKind::AsIs => builder,
        };
    })
}

fn request_led(key: &'static str, l: &LedLine) -> Result<(Request, String), GpioError> {
    request_line(key, l.chip.as_deref(), &l.line, l.active_low, |builder| {
        builder.as_output(Value::Inactive);
    })
}

/// A button edge: logical level (active-low applied) and when the kernel saw it.
#[derive(Debug, Clone, Copy)]
pub struct Edge {
    pub button: Button,
    pub pressed: bool,
    pub at: Instant,
}

/// CLOCK_MONOTONIC now, the clock of edge timestamps (and of `Instant`).
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass and nothing else.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

struct LedOut {
    req: Request,
    lit: Option<bool>,
    label: String,
}

impl LedOut {
    fn set(&mut self, lit: bool) {
        if self.lit == Some(lit) {
            return;
        }
        let v = if lit { Value::Active } else { Value::Inactive };
        match self.req.set_lone_value(v) {
            Ok(()) => self.lit = Some(lit),
            Err(e) => log::warn!("E_GPIO_SET: LED {}: {e}", self.label),
        }
    }
}

/// The appliance's GPIO lines, all requested at start.
pub struct Gpio {
    call: Option<LedOut>,
    banned: Option<LedOut>,
    error: Option<LedOut>,
    buttons: Vec<(Button, AsyncRequest, String)>,
}

impl Gpio {
    /// Request every configured line; the first that cannot be had is the error.
    pub fn open(c: &GpioSection) -> Result<Gpio, GpioError> {
        let led = |key, l: &Option<LedLine>| -> Result<Option<LedOut>, GpioError> {
            l.as_ref()
                .map(|l| {
                    request_led(key, l).map(|(req, label)| LedOut {
                        req,
                        lit: None,
                        label,
                    })
                })
                .transpose()
        };
        let mut buttons = Vec::new();
        for (key, button, line) in [
            ("call_button", Button::Call, &c.call_button),
            ("hangup_button", Button::Hangup, &c.hangup_button),
        ] {
            if let Some(b) = line {
                let (req, label) = request_button(key, b)?;
                log::info!("gpio: {key} on {label}");
                buttons.push((button, AsyncRequest::new(req), label));
            }
        }
        let gpio = Gpio {
            call: led("call_led", &c.call_led)?,
            banned: led("banned_led", &c.banned_led)?,
            error: led("error_led", &c.error_led)?,
            buttons,
        };
        for l in [&gpio.call, &gpio.banned, &gpio.error]
            .into_iter()
            .flatten()
        {
            log::info!("gpio: LED on {}", l.label);
        }
        Ok(gpio)
    }

    /// Move the buttons into tasks that send their edges on the returned channel.
    pub fn take_buttons(&mut self) -> mpsc::UnboundedReceiver<Edge> {
        let (tx, rx) = mpsc::unbounded_channel();
        for (button, req, label) in self.buttons.drain(..) {
            let tx = tx.clone();
            tokio::spawn(async move {
                loop {
                    match req.read_edge_event().await {
                        Ok(ev) => {
                            let age = monotonic_ns().saturating_sub(ev.timestamp_ns);
                            let at = Instant::now()
                                .checked_sub(Duration::from_nanos(age))
                                .unwrap_or_else(Instant::now);
                            let pressed = ev.kind == EdgeKind::Rising;
                            if tx
                                .send(Edge {
                                    button,
                                    pressed,
                                    at,
                                })
                                .is_err()
                            {
                                return;
                            }
                        }
                        Err(e) => {
                            log::error!("E_GPIO_READ: button {label}: {e}; button disabled");
                            return;
                        }
                    }
                }
            });
        }
        rx
    }

    /// Show the LEDs' patterns `t` after each started.
    pub fn show(&mut self, leds: &Leds, since_change: Duration) {
        for (out, pattern) in [
            (&mut self.call, leds.call),
            (&mut self.banned, leds.banned),
            (&mut self.error, leds.error),
        ] {
            if let Some(out) = out {
                out.set(pattern.lit(since_change));
            }
        }
    }
}

/// Whether the line a config key names exists and is free; `Ok` describes it.
pub fn locate(key: &'static str, chip: Option<&str>, line: &LineId) -> Result<String, GpioError> {
    find(key, chip, line).map(|f| f.label)
}
