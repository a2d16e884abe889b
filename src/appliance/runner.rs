//! The daemon's main loop: opens GPIO, the media devices and the control
//! socket (any failure is a startup error naming what), tells systemd it is
//! ready, then feeds the [`Controller`] with button presses, control
//! commands, call outcomes and timers, and carries out its actions: start
//! a call, hang up, mute; LEDs, `STATUS=` and the watchdog follow.

use crate::appliance::buttons::PressTracker;
use crate::appliance::control::{self, ControlError, Pending, Request};
use crate::appliance::controller::{Action, Button, Command, Controller, Input, State};
use crate::appliance::gpio::{Gpio, GpioError};
use crate::appliance::leds::{Leds, Pattern};
use crate::appliance::notify::{stalled, Notifier};
use crate::device::config::DeviceConfig;
use crate::device::daemon::{CallLink, Device, DeviceError};
use crate::device::stats::MediaStats;
use crate::usersig;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

#[derive(Debug, thiserror::Error)]
pub enum ApplianceError {
    #[error(transparent)]
    Gpio(#[from] GpioError),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(transparent)]
    Control(#[from] ControlError),
}

/// LED patterns that change over time need this tick.
const LED_TICK: Duration = Duration::from_millis(50);
/// How long a leave may take when the daemon stops.
const LEAVE_ON_STOP: Duration = Duration::from_secs(3);
const USERSIG_CHECK: Duration = Duration::from_secs(3600);

/// A call for the device task: hang-up signal, link, where the result goes.
type CallRequest = (
    oneshot::Receiver<()>,
    CallLink,
    oneshot::Sender<Result<(), DeviceError>>,
);

/// The device lives in its own task, one call at a time, so the main loop
/// never holds a borrow of it across events. The task ends (and the media
/// threads stop) when `calls` closes.
fn spawn_device(mut device: Device) -> (mpsc::Sender<CallRequest>, tokio::task::JoinHandle<()>) {
    let (tx, mut calls) = mpsc::channel::<CallRequest>(1);
    let task = tokio::spawn(async move {
        while let Some((hangup, link, done)) = calls.recv().await {
            let result = device
                .call(
                    async move {
                        let _ = hangup.await;
                    },
                    link,
                )
                .await;
            let _ = done.send(result);
        }
    });
    (tx, task)
}

async fn next_of<T, F: Future<Output = T> + Unpin>(f: Option<&mut F>) -> T {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// Seconds until the configured userSig expires (negative: expired), if it
/// can be read at all (the room service judges it either way).
fn usersig_expires_in(config: &DeviceConfig) -> Option<i64> {
    let sig = config.user_sig().ok()?;
    let claims = usersig::decode_unverified(&sig).ok()?;
    Some(claims.expires_at() as i64 - usersig::unix_now() as i64)
}

fn animated(leds: &Leds) -> bool {
    [leds.call, leds.banned, leds.error]
        .iter()
        .any(|p| matches!(p, Pattern::Blink(_) | Pattern::Flashes(_)))
}

/// How a finished call feeds the controller.
fn call_outcome(result: Result<(), DeviceError>) -> Input {
    match result {
        Ok(()) => Input::Left,
        Err(DeviceError::Banned(reason)) => Input::Banned(reason),
        Err(e) if !e.retryable() => Input::JoinFailed {
            reason: format!("{e} (code {:#06x})", e.code()),
            retryable: false,
        },
        Err(e) => {
            log::error!("call lost (code {:#06x}): {e}", e.code());
            Input::Lost(format!("{e} (code {:#06x})", e.code()))
        }
    }
}

/// Run the appliance until `stop` resolves.
pub async fn run(
    config: DeviceConfig,
    started: Instant,
    stop: impl Future<Output = ()>,
) -> Result<(), ApplianceError> {
    let mut gpio = Gpio::open(&config.gpio)?;
    let socket: PathBuf = config.service.control_socket.clone();
    let call_config = config.call.clone();
    let device = Device::open(config.clone(), started)?;
    let stats = device.stats();
    let heartbeats = device.heartbeats();
    let (calls, device_task) = spawn_device(device);
    let (requests_tx, mut requests) = mpsc::channel::<Pending>(16);
    control::serve(&socket, requests_tx).await?;

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id());
    let mut controller = Controller::new(call_config.policy(), seed);
    let long = Duration::from_millis(call_config.long_press_ms);
    let mut trackers = [
        (Button::Call, PressTracker::new(long)),
        (Button::Hangup, PressTracker::new(long)),
    ];
    let mut edges = gpio.take_buttons();
    let (mute_tx, _) = watch::channel(false);
    let mut notifier = Notifier::from_env();
    let dead_media = Duration::from_millis(call_config.dead_media_ms);
    let warn_before = Duration::from_secs(call_config.usersig_warn_days * 86_400);

    let now = Instant::now();
    let mut leds = controller.leds();
    let mut led_since = now;
    gpio.show(&leds, Duration::ZERO);
    let mut state_since = now;
    let mut next_usersig_check = now;
    let watchdog = notifier.watchdog_interval();
    let mut next_watchdog = watchdog.map(|w| now + w);
    let mut beats = heartbeats.read();
    notifier.ready(&controller.status(now));
    if watchdog.is_some() {
        notifier.watchdog();
    }
    log::info!(
        "ready in {:.0} ms: {}",
        started.elapsed().as_secs_f64() * 1000.0,
        controller.status(now)
    );

    // The call in progress: its result, its hang-up switch, its join signal.
    let mut done: Option<oneshot::Receiver<Result<(), DeviceError>>> = None;
    let mut hangup: Option<oneshot::Sender<()>> = None;
    let mut joined: Option<oneshot::Receiver<()>> = None;
    // Commands are answered once fed, with the state they led to.
    let mut answers: Vec<(Request, oneshot::Sender<Value>)> = Vec::new();
    let mut inputs = VecDeque::from([Input::Boot]);
    tokio::pin!(stop);
    loop {
        // Feed everything queued, carrying out actions as they come.
        while let Some(input) = inputs.pop_front() {
            let now = Instant::now();
            let before = controller.state().clone();
            for action in controller.handle(input, now) {
                match action {
                    Action::Join => match usersig_expires_in(&config) {
                        Some(left) if left <= 0 => inputs.push_back(Input::JoinFailed {
                            reason: format!(
                                "userSig expired {} s ago (code {:#06x}); provision a new one",
                                -left,
                                crate::protocol::code::JOIN_ROOM_FAILED
                            ),
                            retryable: false,
                        }),
                        _ => {
                            let (hangup_tx, hangup_rx) = oneshot::channel();
                            let (joined_tx, joined_rx) = oneshot::channel();
                            let (done_tx, done_rx) = oneshot::channel();
                            let link = CallLink {
                                joined: Some(joined_tx),
                                audio_muted: Some(mute_tx.subscribe()),
                                dead_media: Some(dead_media),
                            };
                            // The controller joins only from states with no
                            // call running, so the task is free.
                            if calls.try_send((hangup_rx, link, done_tx)).is_err() {
                                log::error!("E_INTERNAL: the device task is busy or gone");
                            }
                            (hangup, joined, done) =
                                (Some(hangup_tx), Some(joined_rx), Some(done_rx));
                        }
                    },
                    Action::Leave => match hangup.take() {
                        Some(h) => {
                            let _ = h.send(());
                        }
                        None => inputs.push_back(Input::Left),
                    },
                    Action::MuteAudio(m) => {
                        mute_tx.send_replace(m);
                    }
                }
            }
            if *controller.state() != before {
                state_since = now;
                log::info!(
                    "call state {} -> {}: {}",
                    before.name(),
                    controller.state().name(),
                    controller.status(now)
                );
            }
        }
        for (request, reply) in answers.drain(..) {
            let _ = reply.send(json!({
                "ok": true,
                "command": request,
                "state": controller.state().name(),
                "status": controller.status(Instant::now()),
            }));
        }
        let now = Instant::now();
        let new_leds = controller.leds();
        if new_leds != leds {
            leds = new_leds;
            led_since = now;
        }
        gpio.show(&leds, now - led_since);
        notifier.status(&status_text(&controller, &stats, now));

        let mut wake = now + Duration::from_secs(60);
        let timers = [
            controller.deadline(),
            trackers[0].1.deadline(),
            trackers[1].1.deadline(),
            animated(&leds).then(|| now + LED_TICK),
            next_watchdog,
            Some(next_usersig_check),
        ];
        for t in timers.into_iter().flatten() {
            wake = wake.min(t);
        }
        tokio::select! {
            _ = &mut stop => break,
            Some((request, reply)) = requests.recv() => {
                let command = match request {
                    Request::Status => None,
                    Request::Call => Some(Command::Call),
                    Request::Hangup => Some(Command::Hangup),
                    Request::MuteAudio => Some(Command::MuteAudio(true)),
                    Request::UnmuteAudio => Some(Command::MuteAudio(false)),
                };
                if let Some(c) = command {
                    log::info!("control: {request:?}");
                    inputs.push_back(Input::Command(c));
                    answers.push((request, reply));
                } else {
                    let snapshot = stats.snapshot();
                    let copies_per_frame = (snapshot.video_frames_captured > 0)
                        .then(|| snapshot.frame_copies as f64 / snapshot.video_frames_captured as f64);
                    let state = controller.state();
                    let _ = reply.send(json!({
                        "ok": true,
                        "state": state.name(),
                        "ban_reason": match state { State::Banned(r) => Some(r.as_str()), _ => None },
                        "status": status_text(&controller, &stats, now),
                        "degraded": snapshot.camera_lost.then_some("camera unavailable: audio only"),
                        "in_state_s": (now - state_since).as_secs_f64(),
                        "attempt": controller.attempt(),
                        "last_error": controller.last_error(),
                        "audio_muted": controller.audio_muted(),
                        "leds": {
                            "call": leds.call.lit(now - led_since),
                            "banned": leds.banned.lit(now - led_since),
                            "error": leds.error.lit(now - led_since),
                        },
                        "room": {
                            "url": config.room.url,
                            "user_id": config.room.user_id,
                            "room_id": config.room.room_id,
                            "str_room_id": config.room.str_room_id,
                        },
                        "usersig_expires_in_s": usersig_expires_in(&config),
                        "uptime_s": started.elapsed().as_secs_f64(),
                        "frame_copies_per_frame": copies_per_frame,
                        "media": snapshot,
                    }));
                }
            }
            Some(edge) = edges.recv() => {
                if let Some((_, t)) = trackers.iter_mut().find(|(b, _)| *b == edge.button) {
                    if let Some(press) = t.edge(edge.pressed, edge.at) {
                        log::info!("button {:?}: {press:?} press", edge.button);
                        inputs.push_back(Input::Button(edge.button, press));
                    }
                }
            }
            Ok(()) = next_of(joined.as_mut()) => {
                joined = None;
                inputs.push_back(Input::Joined);
            }
            result = next_of(done.as_mut()) => {
                (done, hangup, joined) = (None, None, None);
                let result = result.unwrap_or_else(|_| Err(DeviceError::Threads(std::io::Error::other("the device task ended"))));
                inputs.push_back(call_outcome(result));
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                let now = Instant::now();
                inputs.push_back(Input::Tick);
                for (button, t) in trackers.iter_mut() {
                    if let Some(press) = t.poll(now) {
                        log::info!("button {button:?}: held, long press");
                        inputs.push_back(Input::Button(*button, press));
                    }
                }
                if next_watchdog.is_some_and(|t| now >= t) {
                    let current = heartbeats.read();
                    let stuck = stalled(&beats, &current);
                    if stuck.is_empty() {
                        notifier.watchdog();
                    } else {
                        log::error!(
                            "E_PIPELINE_STUCK: media thread(s) {stuck:?} made no progress; withholding the watchdog ping so systemd restarts callbox"
                        );
                    }
                    beats = current;
                    next_watchdog = watchdog.map(|w| now + w);
                }
                if now >= next_usersig_check {
                    next_usersig_check = now + USERSIG_CHECK;
                    match usersig_expires_in(&config) {
                        Some(left) if left <= 0 => log::error!("E_USERSIG_EXPIRED: the configured userSig expired {} s ago; the next join will fail", -left),
                        Some(left) if (left as u64) < warn_before.as_secs() => log::warn!(
                            "E_USERSIG_EXPIRING: the configured userSig expires in {:.1} h; provision a new one",
                            left as f64 / 3600.0
                        ),
                        _ => {}
                    }
                }
            }
        }
    }

    notifier.stopping();
    if let Some(h) = hangup.take() {
        let _ = h.send(());
    }
    if let Some(d) = done.take() {
        if tokio::time::timeout(LEAVE_ON_STOP, d).await.is_err() {
            log::warn!("leaving the room took over {LEAVE_ON_STOP:?}; stopping anyway");
        }
    }
    // Closing the channel ends the device task, which stops the media threads.
    drop(calls);
    let _ = tokio::time::timeout(LEAVE_ON_STOP, device_task).await;
    gpio.show(
        &Leds {
            call: Pattern::Off,
            banned: Pattern::Off,
            error: Pattern::Off,
        },
        Duration::ZERO,
    );
    let _ = std::fs::remove_file(&socket);
    log::info!("stopped");
    Ok(())
}

/// The call state, and what runs degraded: a lost camera leaves audio only
/// while the camera is retried.
fn status_text(controller: &Controller, stats: &MediaStats, now: Instant) -> String {
    let status = controller.status(now);
    if stats.camera_lost.load(std::sync::atomic::Ordering::Relaxed) {
        format!(
            "{status}; camera unavailable (code {:#06x}), audio only",
            crate::protocol::code::DEVICE_NOT_FOUND
        )
    } else {
        status
    }
}
