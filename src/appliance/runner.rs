//! The daemon's main loop, as a `Daemon` whose methods are its steps:
//! `Daemon::open` opens GPIO, the media devices and the control socket
//! (any failure is a startup error naming what) and tells systemd it is
//! ready; then each turn feeds the [`Controller`] what happened (a button
//! edge, a control request, a call's outcome, a timer), carries out its
//! actions (start a call, hang up, mute), shows the LEDs and `STATUS=`,
//! and pings the watchdog while the media threads move;
//! `Daemon::shut_down` leaves the room and turns the LEDs off.

use crate::appliance::buttons::PressTracker;
use crate::appliance::config::ApplianceConfig;
use crate::appliance::control::{self, ControlError, Incoming, Request};
use crate::appliance::controller::{Action, Button, Command, Controller, Input, State};
use crate::appliance::gpio::{Edge, Gpio, GpioError};
use crate::appliance::leds::{Leds, Pattern};
use crate::appliance::notify::{stalled, Notifier};
use crate::appliance::status::{CommandDone, LedLevels, RoomStatus, Status};
use crate::device::config::Backend;
use crate::device::daemon::{CallLink, Device, DeviceError, Muted};
use crate::device::display::screen::Screen;
use crate::device::pipeline::Heartbeats;
use crate::device::stats::MediaStats;
use crate::network_quality::{NetworkQuality, Quality};
use crate::protocol::MediaKind;
use crate::usersig;
use serde_json::Value;
use std::collections::VecDeque;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
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
fn usersig_expires_in(config: &ApplianceConfig) -> Option<i64> {
    let sig = config.room.user_sig().ok()?;
    let claims = usersig::decode_unverified(&sig).ok()?;
    Some(claims.expires_at() as i64 - usersig::unix_now() as i64)
}

fn animated(leds: &Leds) -> bool {
    [leds.call, leds.banned, leds.error]
        .iter()
        .any(|p| matches!(p, Pattern::Blink(_) | Pattern::Flashes(_)))
}

/// How a finished call feeds the controller.
/// What is missing while the call goes on, retried meanwhile.
fn degraded(stats: &MediaStats) -> Option<&'static str> {
    use std::sync::atomic::Ordering::Relaxed;
    match (
        stats.camera_lost.load(Relaxed),
        stats.display_lost.load(Relaxed),
    ) {
        (false, false) => None,
        (true, false) => Some("camera unavailable, audio only"),
        (false, true) => Some("screen unavailable, the call goes on without it"),
        (true, true) => Some("camera and screen unavailable, audio only"),
    }
}

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
    config: ApplianceConfig,
    started: Instant,
    stop: impl Future<Output = ()>,
) -> Result<(), ApplianceError> {
    let mut daemon = Daemon::open(config, started).await?;
    tokio::pin!(stop);
    loop {
        daemon.feed_inputs();
        daemon.answer_commands();
        daemon.show();
        let wake = daemon.next_wake();
        tokio::select! {
            _ = &mut stop => break,
            Some((request, reply)) = daemon.requests.recv() => daemon.on_request(request, reply),
            Some(edge) = daemon.edges.recv() => daemon.on_edge(edge),
            Ok(()) = next_of(daemon.call.joined.as_mut()) => daemon.on_joined(),
            result = next_of(daemon.call.done.as_mut()) => daemon.on_call_done(result),
            Ok(()) = daemon.network.changed() => daemon.on_network(),
            _ = tokio::time::sleep_until(wake.into()) => daemon.tick(),
        }
    }
    daemon.shut_down().await;
    Ok(())
}

/// The call in progress: its result, its hang-up switch, its join signal.
#[derive(Default)]
struct CallHandles {
    done: Option<oneshot::Receiver<Result<(), DeviceError>>>,
    hangup: Option<oneshot::Sender<()>>,
    joined: Option<oneshot::Receiver<()>>,
}

/// The LEDs shown and since when (patterns that blink count from then).
struct Shown {
    leds: Leds,
    since: Instant,
}

/// Everything the main loop holds between events.
struct Daemon {
    config: ApplianceConfig,
    started: Instant,
    gpio: Gpio,
    socket: PathBuf,
    calls: mpsc::Sender<CallRequest>,
    device_task: tokio::task::JoinHandle<()>,
    requests: mpsc::Receiver<Incoming>,
    edges: mpsc::UnboundedReceiver<Edge>,
    controller: Controller,
    trackers: [(Button, PressTracker); 2],
    mute: watch::Sender<Muted>,
    notifier: Notifier,
    stats: Arc<MediaStats>,
    /// The room's grades of the call's network, for the call LED.
    network: watch::Receiver<Option<NetworkQuality>>,
    screen: Option<Screen>,
    heartbeats: Heartbeats,
    /// Heartbeats at the last watchdog check.
    beats: Vec<(&'static str, u64)>,
    next_watchdog: Option<Instant>,
    next_usersig_check: Instant,
    shown: Shown,
    state_since: Instant,
    call: CallHandles,
    /// Commands are answered once fed, with the state they led to.
    answers: Vec<(Request, oneshot::Sender<Value>)>,
    inputs: VecDeque<Input>,
}

impl Daemon {
    /// Open GPIO, the device and the control socket; tell systemd we are ready.
    async fn open(config: ApplianceConfig, started: Instant) -> Result<Daemon, ApplianceError> {
        let mut gpio = Gpio::open(&config.gpio)?;
        let device = Device::open(config.device(), started)?;
        let (stats, heartbeats) = (device.stats(), device.heartbeats());
        let screen = device.screen();
        let (calls, device_task) = spawn_device(device);
        let (requests_tx, requests) = mpsc::channel::<Incoming>(16);
        let socket = config.service.control_socket.clone();
        control::serve(&socket, requests_tx).await?;
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id());
        let controller = Controller::new(config.call.policy(), seed);
        let long = Duration::from_millis(config.call.long_press_ms);
        let now = Instant::now();
        let leds = controller.leds();
        gpio.show(&leds, Duration::ZERO);
        let mut notifier = Notifier::from_env();
        notifier.ready(&controller.status(now));
        let watchdog = notifier.watchdog_interval();
        if watchdog.is_some() {
            notifier.watchdog();
        }
        log::info!(
            "ready in {:.0} ms: {}",
            started.elapsed().as_secs_f64() * 1000.0,
            controller.status(now)
        );
        Ok(Daemon {
            edges: gpio.take_buttons(),
            config,
            started,
            gpio,
            socket,
            calls,
            device_task,
            requests,
            controller,
            trackers: [
                (Button::Call, PressTracker::new(long)),
                (Button::Hangup, PressTracker::new(long)),
            ],
            mute: watch::channel(Muted::default()).0,
            notifier,
            beats: heartbeats.read(),
            network: stats.watch_network_quality(),
            stats,
            screen,
            heartbeats,
            next_watchdog: watchdog.map(|w| now + w),
            next_usersig_check: now,
            shown: Shown { leds, since: now },
            state_since: now,
            call: CallHandles::default(),
            answers: Vec::new(),
            inputs: VecDeque::from([Input::Boot]),
        })
    }

    /// Feed everything queued to the controller, carrying out its actions.
    fn feed_inputs(&mut self) {
        while let Some(input) = self.inputs.pop_front() {
            let now = Instant::now();
            let before = self.controller.state().clone();
            for action in self.controller.handle(input, now) {
                self.carry_out(action);
            }
            if *self.controller.state() != before {
                self.state_since = now;
                log::info!(
                    "call state {} -> {}: {}",
                    before.name(),
                    self.controller.state().name(),
                    self.controller.status(now)
                );
            }
        }
    }

    fn carry_out(&mut self, action: Action) {
        match action {
            Action::Join => self.start_call(),
            Action::Leave => match self.call.hangup.take() {
                Some(h) => {
                    let _ = h.send(());
                }
                None => self.inputs.push_back(Input::Left),
            },
            Action::Mute(m) => {
                self.mute.send_replace(m);
            }
        }
    }

    /// Hand a call to the device task, unless the userSig has expired.
    fn start_call(&mut self) {
        if let Some(left) = usersig_expires_in(&self.config).filter(|l| *l <= 0) {
            self.inputs.push_back(Input::JoinFailed {
                reason: format!(
                    "userSig expired {} s ago (code {:#06x}); provision a new one",
                    -left,
                    crate::protocol::code::JOIN_ROOM_FAILED
                ),
                retryable: false,
            });
            return;
        }
        let (hangup_tx, hangup_rx) = oneshot::channel();
        let (joined_tx, joined_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        let link = CallLink {
            joined: Some(joined_tx),
            muted: Some(self.mute.subscribe()),
            dead_media: Some(Duration::from_millis(self.config.call.dead_media_ms)),
        };
        // The controller joins only from states with no call running, so the task is free.
        if self.calls.try_send((hangup_rx, link, done_tx)).is_err() {
            log::error!("E_INTERNAL: the device task is busy or gone");
        }
        self.call = CallHandles {
            done: Some(done_rx),
            hangup: Some(hangup_tx),
            joined: Some(joined_rx),
        };
    }

    fn answer_commands(&mut self) {
        let (state, status) = (
            self.controller.state().name(),
            self.status_text(Instant::now()),
        );
        for (command, reply) in self.answers.drain(..) {
            let done = CommandDone {
                ok: true,
                command,
                state,
                status: status.clone(),
            };
            let _ = reply.send(serde_json::to_value(done).unwrap_or_default());
        }
    }

    /// LEDs and systemd's `STATUS=`.
    fn show(&mut self) {
        let now = Instant::now();
        let leds = self.controller.leds();
        if leds != self.shown.leds {
            self.shown = Shown { leds, since: now };
        }
        self.gpio.show(&self.shown.leds, now - self.shown.since);
        let status = self.status_text(now);
        self.notifier.status(&status);
    }

    /// When the loop must run again even if nothing happens.
    fn next_wake(&self) -> Instant {
        let now = Instant::now();
        let timers = [
            self.controller.deadline(),
            self.trackers[0].1.deadline(),
            self.trackers[1].1.deadline(),
            animated(&self.shown.leds).then(|| now + LED_TICK),
            self.next_watchdog,
            Some(self.next_usersig_check),
        ];
        timers
            .into_iter()
            .flatten()
            .fold(now + Duration::from_secs(60), Instant::min)
    }

    fn on_request(&mut self, request: Request, reply: oneshot::Sender<Value>) {
        let command = match request {
            Request::Status => {
                let status = self.status(Instant::now());
                let _ = reply.send(serde_json::to_value(status).unwrap_or_default());
                return;
            }
            Request::Screenshot => {
                let _ = reply.send(self.screenshot());
                return;
            }
            Request::Call => Command::Call,
            Request::Hangup => Command::Hangup,
            Request::MuteAudio => Command::Mute(MediaKind::Audio, true),
            Request::UnmuteAudio => Command::Mute(MediaKind::Audio, false),
            Request::MuteVideo => Command::Mute(MediaKind::Video, true),
            Request::UnmuteVideo => Command::Mute(MediaKind::Video, false),
        };
        log::info!("control: {request:?}");
        self.inputs.push_back(Input::Command(command));
        self.answers.push((request, reply));
    }

    /// What the screen shows, PNG in base64, or why there is nothing.
    fn screenshot(&self) -> Value {
        use base64::Engine;
        let Some(screen) = &self.screen else {
            return control::error_reply(
                "E_NO_DISPLAY: this device has no display ([display] sink = \"none\")",
            );
        };
        let canvas = screen.snapshot();
        match crate::device::display::screen::encode_png(&canvas) {
            Ok(png) => serde_json::json!({
                "ok": true,
                "width": canvas.width,
                "height": canvas.height,
                "png_base64": base64::engine::general_purpose::STANDARD.encode(png),
            }),
            Err(e) => control::error_reply(format!("E_SCREENSHOT: {e}")),
        }
    }

    fn on_edge(&mut self, edge: Edge) {
        let Some((_, t)) = self.trackers.iter_mut().find(|(b, _)| *b == edge.button) else {
            return;
        };
        if let Some(press) = t.edge(edge.pressed, edge.at) {
            log::info!("button {:?}: {press:?} press", edge.button);
            self.inputs.push_back(Input::Button(edge.button, press));
        }
    }

    fn on_network(&mut self) {
        let worst = self
            .network
            .borrow_and_update()
            .map_or(Quality::UNKNOWN, |q| q.worst());
        self.inputs.push_back(Input::Network(worst));
    }

    fn on_joined(&mut self) {
        self.call.joined = None;
        self.inputs.push_back(Input::Joined);
    }

    fn on_call_done(&mut self, result: Result<Result<(), DeviceError>, oneshot::error::RecvError>) {
        self.call = CallHandles::default();
        let result = result.unwrap_or_else(|_| {
            Err(DeviceError::Threads(std::io::Error::other(
                "the device task ended",
            )))
        });
        self.inputs.push_back(call_outcome(result));
    }

    /// Timers: the controller's, long presses, the watchdog, the userSig.
    fn tick(&mut self) {
        let now = Instant::now();
        self.inputs.push_back(Input::Tick);
        for (button, t) in self.trackers.iter_mut() {
            if let Some(press) = t.poll(now) {
                log::info!("button {button:?}: held, long press");
                self.inputs.push_back(Input::Button(*button, press));
            }
        }
        if self.next_watchdog.is_some_and(|t| now >= t) {
            self.check_watchdog(now);
        }
        if now >= self.next_usersig_check {
            self.next_usersig_check = now + USERSIG_CHECK;
            self.check_usersig();
        }
    }

    /// Ping systemd's watchdog only while every media thread moves.
    fn check_watchdog(&mut self, now: Instant) {
        let current = self.heartbeats.read();
        let stuck = stalled(&self.beats, &current);
        if stuck.is_empty() {
            self.notifier.watchdog();
        } else {
            log::error!(
                "E_PIPELINE_STUCK: media thread(s) {stuck:?} made no progress; withholding the watchdog ping so systemd restarts callbox"
            );
        }
        self.beats = current;
        self.next_watchdog = self.notifier.watchdog_interval().map(|w| now + w);
    }

    fn check_usersig(&self) {
        let warn_before = self.config.call.usersig_warn_days * 86_400;
        match usersig_expires_in(&self.config) {
            Some(left) if left <= 0 => log::error!(
                "E_USERSIG_EXPIRED: the configured userSig expired {} s ago; the next join will fail",
                -left
            ),
            Some(left) if (left as u64) < warn_before => log::warn!(
                "E_USERSIG_EXPIRING: the configured userSig expires in {:.1} h; provision a new one",
                left as f64 / 3600.0
            ),
            _ => {}
        }
    }

    /// The call state, and what runs degraded: a lost camera leaves audio
    /// only, a lost screen the call without pictures, while they are retried.
    fn status_text(&self, now: Instant) -> String {
        let status = self.controller.status(now);
        match degraded(&self.stats) {
            Some(what) => format!(
                "{status}; {what} (code {:#06x})",
                crate::protocol::code::DEVICE_NOT_FOUND
            ),
            None => status,
        }
    }

    fn status(&self, now: Instant) -> Status {
        let media = self.stats.snapshot();
        let state = self.controller.state();
        let lit = |p: Pattern| p.lit(now - self.shown.since);
        let room = &self.config.room;
        Status {
            ok: true,
            state: state.name(),
            ban_reason: match state {
                State::Banned(r) => Some(r.as_str()),
                _ => None,
            },
            status: self.status_text(now),
            degraded: degraded(&self.stats),
            in_state_s: (now - self.state_since).as_secs_f64(),
            attempt: self.controller.attempt(),
            last_error: self.controller.last_error().map(str::to_owned),
            audio_muted: self.controller.muted().audio,
            video_muted: self.controller.muted().video,
            leds: LedLevels {
                call: lit(self.shown.leds.call),
                banned: lit(self.shown.leds.banned),
                error: lit(self.shown.leds.error),
            },
            room: RoomStatus {
                backend: match room.backend {
                    Backend::Callbox => "callbox",
                    Backend::Janus => "janus",
                },
                url: room.url.clone(),
                user_id: room.user_id.clone(),
                room_id: room.room_id,
                str_room_id: room.str_room_id.clone(),
            },
            usersig_expires_in_s: usersig_expires_in(&self.config),
            uptime_s: self.started.elapsed().as_secs_f64(),
            frame_copies_per_frame: (media.video_frames_captured > 0)
                .then(|| media.frame_copies as f64 / media.video_frames_captured as f64),
            media,
        }
    }

    /// Leave the room (bounded), stop the media threads, LEDs off.
    async fn shut_down(mut self) {
        self.notifier.stopping();
        if let Some(h) = self.call.hangup.take() {
            let _ = h.send(());
        }
        if let Some(d) = self.call.done.take() {
            if tokio::time::timeout(LEAVE_ON_STOP, d).await.is_err() {
                log::warn!("leaving the room took over {LEAVE_ON_STOP:?}; stopping anyway");
            }
        }
        // Closing the channel ends the device task, which stops the media threads.
        drop(self.calls);
        let _ = tokio::time::timeout(LEAVE_ON_STOP, self.device_task).await;
        let off = Leds {
            call: Pattern::Off,
            banned: Pattern::Off,
            error: Pattern::Off,
        };
        self.gpio.show(&off, Duration::ZERO);
        let _ = std::fs::remove_file(&self.socket);
        log::info!("stopped");
    }
}
