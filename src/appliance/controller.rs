//! The call controller: what the appliance does about button presses,
//! control commands, room events and timers. Pure logic: no I/O, the time
//! is passed in, randomness (backoff jitter) comes from a seeded generator,
//! so every transition is unit-tested on a paused clock. The runner
//! (`appliance::runner`) carries out the [`Action`]s and shows [`Leds`].

use crate::appliance::leds::{Leds, Pattern};
use crate::device::daemon::Muted;
use crate::network_quality::Quality;
use crate::protocol::{BanReason, MediaKind};
use serde::Deserialize;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Idle,
    Joining,
    InCall,
    Leaving,
    /// Lost the room; the next attempt is due at the controller's deadline.
    Reconnecting,
    Banned(BanReason),
    Failed(String),
}

impl State {
    /// Short machine-readable name (status JSON, `STATUS=`).
    pub fn name(&self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Joining => "joining",
            State::InCall => "in-call",
            State::Leaving => "leaving",
            State::Reconnecting => "reconnecting",
            State::Banned(_) => "banned",
            State::Failed(_) => "failed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Button {
    Call,
    Hangup,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Press {
    Short,
    /// Held for the configured long-press time.
    Long,
}

/// What an operator asks for (control socket, or a button mapped to it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Call,
    Hangup,
    /// TRTC `muteAudio`/`unmuteAudio`, `muteVideo`/`unmuteVideo`.
    Mute(MediaKind, bool),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The daemon is up (config valid, devices open).
    Boot,
    Button(Button, Press),
    Command(Command),
    /// Joined and publishing.
    Joined,
    /// The join did not complete. Not retryable: the room refused us for a
    /// reason that retrying cannot fix (bad or expired userSig).
    JoinFailed {
        reason: String,
        retryable: bool,
    },
    /// Signaling closed or media went silent during a call.
    Lost(String),
    Banned(BanReason),
    /// A requested leave finished.
    Left,
    /// The room's latest grade of the call's network, the worse direction
    /// (unknown when not in a call).
    Network(Quality),
    /// Time passed; fires due timers.
    Tick,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Join, publish, subscribe (republish and resubscribe after a loss).
    Join,
    /// Leave the room; answer with [`Input::Left`].
    Leave,
    /// What is muted now (kept across reconnects).
    Mute(Muted),
}

/// What the call button does while banned (`call.banned_press`). A
/// `kick` always needs a long press: another device holds the userId,
/// and taking it back by accident would push that one out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BannedPress {
    /// A short press clears `banned` / `room-disband` and rejoins.
    Rejoin,
    /// Only a long press clears it.
    LongOnly,
}

/// One button that starts and finishes calls, or two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ButtonMode {
    Toggle,
    Separate,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub auto_join: bool,
    pub banned_press: BannedPress,
    pub buttons: ButtonMode,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            auto_join: true,
            banned_press: BannedPress::Rejoin,
            buttons: ButtonMode::Separate,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// Nominal delay before reconnect attempt `attempt` (0-based): the initial
/// delay doubling up to the maximum.
pub fn backoff(policy: &Policy, attempt: u32) -> Duration {
    let factor = 1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX);
    policy
        .backoff_initial
        .saturating_mul(factor)
        .min(policy.backoff_max)
}

pub struct Controller {
    policy: Policy,
    state: State,
    attempt: u32,
    retry_at: Option<Instant>,
    muted: Muted,
    network: Quality,
    last_error: Option<String>,
    rng: u64,
}

impl Controller {
    /// `seed` feeds the backoff jitter (any value; 0 is replaced).
    pub fn new(policy: Policy, seed: u64) -> Controller {
        Controller {
            policy,
            state: State::Idle,
            attempt: 0,
            retry_at: None,
            muted: Muted::default(),
            network: Quality::UNKNOWN,
            last_error: None,
            rng: seed.max(1),
        }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn muted(&self) -> Muted {
        self.muted
    }

    /// When the controller next wants an [`Input::Tick`].
    pub fn deadline(&self) -> Option<Instant> {
        self.retry_at
    }

    /// Reconnect attempts since the last successful join.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Why the last call or join ended badly, if it did.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// xorshift64*: uniform in [0, 1).
    fn random(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn join(&mut self, out: &mut Vec<Action>) {
        self.state = State::Joining;
        self.retry_at = None;
        out.push(Action::Join);
    }

    /// Schedule the next attempt: the nominal backoff, jittered into its
    /// upper half so devices that lost the same room do not return in step.
    fn reconnect_later(&mut self, reason: String, now: Instant) {
        let nominal = backoff(&self.policy, self.attempt);
        let delay = nominal.mul_f64(0.5 + 0.5 * self.random());
        self.attempt = self.attempt.saturating_add(1);
        self.retry_at = Some(now + delay);
        self.last_error = Some(reason);
        self.state = State::Reconnecting;
    }

    /// The command a button press means in the current state.
    fn button_command(&self, button: Button, press: Press) -> Option<Command> {
        use State::*;
        match (button, &self.state) {
            (Button::Hangup, _) => Some(Command::Hangup),
            (Button::Call, Joining | InCall | Reconnecting)
                if self.policy.buttons == ButtonMode::Toggle =>
            {
                Some(Command::Hangup)
            }
            (Button::Call, Banned(reason)) => {
                let short_ok =
                    *reason != BanReason::Kick && self.policy.banned_press == BannedPress::Rejoin;
                (press == Press::Long || short_ok).then_some(Command::Call)
            }
            (Button::Call, _) => Some(Command::Call),
        }
    }

    /// Feed one input; returns what the runner must do, in order.
    pub fn handle(&mut self, input: Input, now: Instant) -> Vec<Action> {
        use State::*;
        let mut out = Vec::new();
        let input = match input {
            Input::Button(b, p) => match self.button_command(b, p) {
                Some(c) => Input::Command(c),
                None => return out,
            },
            other => other,
        };
        match (self.state.clone(), input) {
            (_, Input::Network(q)) => self.network = q,
            (_, Input::Command(Command::Mute(kind, muted))) => {
                match kind {
                    MediaKind::Audio => self.muted.audio = muted,
                    MediaKind::Video => self.muted.video = muted,
                }
                if self.state == InCall {
                    out.push(Action::Mute(self.muted));
                }
            }
            (Idle, Input::Boot) if self.policy.auto_join => self.join(&mut out),
            (Idle | Failed(_) | Banned(_), Input::Command(Command::Call)) => {
                self.attempt = 0;
                self.join(&mut out);
            }
            // "Call" while waiting to reconnect: try now.
            (Reconnecting, Input::Command(Command::Call)) => self.join(&mut out),
            (Joining, Input::Joined) => {
                self.state = InCall;
                self.attempt = 0;
                self.last_error = None;
                if self.muted != Muted::default() {
                    out.push(Action::Mute(self.muted));
                }
            }
            (Joining | InCall, Input::JoinFailed { reason, retryable }) => {
                if retryable {
                    self.reconnect_later(reason, now);
                } else {
                    self.last_error = Some(reason.clone());
                    self.state = Failed(reason);
                }
            }
            (Joining | InCall, Input::Lost(reason)) => self.reconnect_later(reason, now),
            (Joining | InCall | Leaving, Input::Banned(reason)) => {
                self.last_error = Some(format!("client-banned: {}", reason.as_str()));
                self.state = Banned(reason);
            }
            (Joining | InCall, Input::Command(Command::Hangup)) => {
                self.state = Leaving;
                out.push(Action::Leave);
            }
            (Reconnecting, Input::Command(Command::Hangup)) => {
                self.retry_at = None;
                self.state = Idle;
            }
            // However the call ended, a leave in progress is over.
            (Leaving, Input::Left | Input::Lost(_) | Input::JoinFailed { .. }) => self.state = Idle,
            (Reconnecting, Input::Tick) if self.retry_at.is_some_and(|t| now >= t) => {
                self.join(&mut out)
            }
            _ => {}
        }
        out
    }

    /// What the LEDs show in the current state.
    pub fn leds(&self) -> Leds {
        use State::*;
        let slow = Pattern::Blink(Duration::from_millis(1000));
        let call = match self.state {
            Joining | Reconnecting => slow,
            // A fast blink: the call stutters for the network's sake.
            InCall if self.network.is_bad() => Pattern::Blink(Duration::from_millis(250)),
            InCall => Pattern::On,
            Idle | Leaving | Banned(_) | Failed(_) => Pattern::Off,
        };
        let banned = match self.state {
            Banned(BanReason::Banned) => Pattern::On,
            Banned(BanReason::Kick) => Pattern::Flashes(2),
            Banned(BanReason::RoomDisband) => Pattern::Flashes(3),
            _ => Pattern::Off,
        };
        let error = match self.state {
            Failed(_) => Pattern::On,
            Reconnecting => slow,
            _ => Pattern::Off,
        };
        Leds {
            call,
            banned,
            error,
        }
    }

    /// One line for people: systemd's `STATUS=`, `callbox ctl status`.
    pub fn status(&self, now: Instant) -> String {
        match &self.state {
            State::Idle => "idle: press call to join".into(),
            State::Joining => "joining the room".into(),
            State::InCall => {
                let muted = match (self.muted.audio, self.muted.video) {
                    (false, false) => "",
                    (true, false) => " (microphone muted)",
                    (false, true) => " (camera off)",
                    (true, true) => " (microphone muted, camera off)",
                };
                let network = if self.network.is_bad() {
                    format!("; network {}", self.network.name())
                } else {
                    String::new()
                };
                format!("in call{muted}{network}")
            }
            State::Leaving => "leaving the room".into(),
            State::Reconnecting => format!(
                "reconnecting (attempt {}, next in {:.1} s): {}",
                self.attempt,
                self.retry_at
                    .map_or(0.0, |t| t.saturating_duration_since(now).as_secs_f64()),
                self.last_error.as_deref().unwrap_or("connection lost")
            ),
            State::Banned(BanReason::Kick) => {
                "banned (kick): another device joined with this userId; hold call to take over"
                    .into()
            }
            State::Banned(r) => match self.policy.banned_press {
                BannedPress::Rejoin => format!("banned ({}): press call to rejoin", r.as_str()),
                BannedPress::LongOnly => format!("banned ({}): hold call to rejoin", r.as_str()),
            },
            State::Failed(reason) => format!("failed: {reason}; press call to retry"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use BanReason::*;

    fn at(c: &mut Controller, input: Input, now: Instant) -> Vec<Action> {
        c.handle(input, now)
    }

    fn joined(policy: Policy) -> (Controller, Instant) {
        let t0 = Instant::now();
        let mut c = Controller::new(policy, 7);
        assert_eq!(c.handle(Input::Command(Command::Call), t0), [Action::Join]);
        assert!(c.handle(Input::Joined, t0).is_empty());
        assert_eq!(c.state(), &State::InCall);
        (c, t0)
    }

    /// A controller in `state`, reached through real transitions.
    fn in_state(state: &str, t0: Instant) -> Controller {
        let mut c = Controller::new(Policy::default(), 3);
        let path: &[Input] = match state {
            "idle" => &[],
            "joining" => &[Input::Boot],
            "in-call" => &[Input::Boot, Input::Joined],
            "leaving" => &[Input::Boot, Input::Joined, Input::Command(Command::Hangup)],
            "reconnecting" => &[Input::Boot, Input::Lost("x".into())],
            "banned" => &[Input::Boot, Input::Banned(Banned)],
            "kick" => &[Input::Boot, Input::Banned(Kick)],
            "room-disband" => &[Input::Boot, Input::Banned(RoomDisband)],
            "failed" => &[
                Input::Boot,
                Input::JoinFailed {
                    reason: "x".into(),
                    retryable: false,
                },
            ],
            other => unreachable!("{other}"),
        };
        for i in path {
            c.handle(i.clone(), t0);
        }
        c
    }

    /// Every state x every input: the next state and the actions.
    #[test]
    fn every_transition() {
        let inputs = [
            Input::Boot,
            Input::Button(Button::Call, Press::Short),
            Input::Button(Button::Call, Press::Long),
            Input::Button(Button::Hangup, Press::Short),
            Input::Command(Command::Call),
            Input::Command(Command::Hangup),
            Input::Command(Command::Mute(MediaKind::Audio, true)),
            Input::Joined,
            Input::JoinFailed {
                reason: "refused".into(),
                retryable: true,
            },
            Input::JoinFailed {
                reason: "userSig expired".into(),
                retryable: false,
            },
            Input::Lost("signaling closed".into()),
            Input::Banned(Banned),
            Input::Left,
            Input::Tick,
        ];
        // Columns in the order of `inputs`; "state:Action" when one is taken.
        #[rustfmt::skip]
        let table: [(&str, [&str; 14]); 9] = [
            ("idle", ["joining:Join", "joining:Join", "joining:Join", "idle", "joining:Join", "idle", "idle", "idle", "idle", "idle", "idle", "idle", "idle", "idle"]),
            ("joining", ["joining", "joining", "joining", "leaving:Leave", "joining", "leaving:Leave", "joining", "in-call", "reconnecting", "failed", "reconnecting", "banned", "joining", "joining"]),
            ("in-call", ["in-call", "in-call", "in-call", "leaving:Leave", "in-call", "leaving:Leave", "in-call:Mute", "in-call", "reconnecting", "failed", "reconnecting", "banned", "in-call", "in-call"]),
            ("leaving", ["leaving", "leaving", "leaving", "leaving", "leaving", "leaving", "leaving", "leaving", "idle", "idle", "idle", "banned", "idle", "leaving"]),
            ("reconnecting", ["reconnecting", "joining:Join", "joining:Join", "idle", "joining:Join", "idle", "reconnecting", "reconnecting", "reconnecting", "reconnecting", "reconnecting", "reconnecting", "reconnecting", "joining:Join"]),
            ("banned", ["banned", "joining:Join", "joining:Join", "banned", "joining:Join", "banned", "banned", "banned", "banned", "banned", "banned", "banned", "banned", "banned"]),
            ("kick", ["banned", "banned", "joining:Join", "banned", "joining:Join", "banned", "banned", "banned", "banned", "banned", "banned", "banned", "banned", "banned"]),
            ("room-disband", ["banned", "joining:Join", "joining:Join", "banned", "joining:Join", "banned", "banned", "banned", "banned", "banned", "banned", "banned", "banned", "banned"]),
            ("failed", ["failed", "joining:Join", "joining:Join", "failed", "joining:Join", "failed", "failed", "failed", "failed", "failed", "failed", "failed", "failed", "failed"]),
        ];
        let t0 = Instant::now();
        // Late enough for any scheduled retry to be due.
        let later = t0 + Duration::from_secs(120);
        for (state, row) in table {
            for (input, want) in inputs.iter().zip(row) {
                let mut c = in_state(state, t0);
                let actions = c.handle(input.clone(), later);
                let mut got = c.state().name().to_owned();
                for a in &actions {
                    got.push_str(match a {
                        Action::Join => ":Join",
                        Action::Leave => ":Leave",
                        Action::Mute(_) => ":Mute",
                    });
                }
                assert_eq!(got, want, "{state} + {input:?}");
            }
        }
    }

    #[test]
    fn boot_joins_only_with_auto_join() {
        let t0 = Instant::now();
        let mut c = Controller::new(Policy::default(), 1);
        assert_eq!(c.handle(Input::Boot, t0), [Action::Join]);
        assert_eq!(c.state(), &State::Joining);
        let mut c = Controller::new(
            Policy {
                auto_join: false,
                ..Policy::default()
            },
            1,
        );
        assert!(c.handle(Input::Boot, t0).is_empty());
        assert_eq!(c.state(), &State::Idle);
        assert_eq!(
            c.handle(Input::Button(Button::Call, Press::Short), t0),
            [Action::Join]
        );
    }

    #[test]
    fn hangup_leaves_and_left_returns_to_idle() {
        let (mut c, t0) = joined(Policy::default());
        assert_eq!(
            c.handle(Input::Button(Button::Hangup, Press::Short), t0),
            [Action::Leave]
        );
        assert_eq!(c.state(), &State::Leaving);
        // Presses while leaving do nothing.
        assert!(c
            .handle(Input::Button(Button::Hangup, Press::Short), t0)
            .is_empty());
        c.handle(Input::Left, t0);
        assert_eq!(c.state(), &State::Idle);
        // A stale loss report after the call is ignored.
        assert!(c.handle(Input::Lost("late".into()), t0).is_empty());
        assert_eq!(c.state(), &State::Idle);
    }

    #[test]
    fn hangup_while_joining_leaves() {
        let t0 = Instant::now();
        let mut c = Controller::new(Policy::default(), 1);
        c.handle(Input::Boot, t0);
        assert_eq!(
            c.handle(Input::Command(Command::Hangup), t0),
            [Action::Leave]
        );
        // The join finishing late does not put us in the call.
        c.handle(Input::Joined, t0);
        assert_eq!(c.state(), &State::Leaving);
        c.handle(
            Input::JoinFailed {
                reason: "cancelled".into(),
                retryable: true,
            },
            t0,
        );
        assert_eq!(c.state(), &State::Idle);
    }

    #[test]
    fn loss_reconnects_with_doubling_jittered_backoff() {
        let (mut c, t0) = joined(Policy::default());
        let mut now = t0;
        let mut nominal = Vec::new();
        c.handle(Input::Lost("signaling closed".into()), now);
        for attempt in 0..8 {
            assert_eq!(c.state(), &State::Reconnecting);
            let due = c.deadline().expect("a retry is scheduled");
            let d = due - now;
            let n = backoff(&Policy::default(), attempt);
            assert!(
                d >= n / 2 && d <= n,
                "attempt {attempt}: {d:?} outside [{:?}, {n:?}]",
                n / 2
            );
            nominal.push(n.as_secs());
            // Not yet due: nothing happens.
            assert!(c
                .handle(Input::Tick, due - Duration::from_millis(1))
                .is_empty());
            now = due;
            assert_eq!(c.handle(Input::Tick, now), [Action::Join]);
            assert_eq!(c.state(), &State::Joining);
            c.handle(
                Input::JoinFailed {
                    reason: "connection refused".into(),
                    retryable: true,
                },
                now,
            );
        }
        assert_eq!(nominal, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert!(
            c.status(now).contains("connection refused"),
            "{}",
            c.status(now)
        );
        // Success resets the backoff.
        c.handle(Input::Tick, c.deadline().unwrap());
        c.handle(Input::Joined, now);
        assert_eq!(c.state(), &State::InCall);
        assert_eq!(c.attempt(), 0);
        c.handle(Input::Lost("media silent for 3 s".into()), now);
        assert!(c.deadline().unwrap() - now <= Duration::from_secs(1));
    }

    #[test]
    fn jitter_spreads_devices() {
        let t0 = Instant::now();
        let delays: std::collections::HashSet<_> = (1..20u64)
            .map(|seed| {
                let mut c = Controller::new(Policy::default(), seed);
                c.handle(Input::Boot, t0);
                c.handle(
                    Input::JoinFailed {
                        reason: "x".into(),
                        retryable: true,
                    },
                    t0,
                );
                (c.deadline().unwrap() - t0).as_millis()
            })
            .collect();
        assert!(delays.len() > 10, "{delays:?}");
    }

    #[test]
    fn call_or_hangup_while_reconnecting() {
        let (mut c, t0) = joined(Policy::default());
        c.handle(Input::Lost("x".into()), t0);
        assert_eq!(c.handle(Input::Command(Command::Call), t0), [Action::Join]);
        assert_eq!(c.deadline(), None);
        c.handle(Input::Lost("again".into()), t0);
        assert!(c
            .handle(Input::Button(Button::Hangup, Press::Short), t0)
            .is_empty());
        assert_eq!(c.state(), &State::Idle);
        assert_eq!(c.deadline(), None);
        assert!(c
            .handle(Input::Tick, t0 + Duration::from_secs(60))
            .is_empty());
    }

    #[test]
    fn unretryable_join_failure_fails_until_pressed() {
        let t0 = Instant::now();
        let mut c = Controller::new(Policy::default(), 1);
        c.handle(Input::Boot, t0);
        c.handle(
            Input::JoinFailed {
                reason: "userSig expired".into(),
                retryable: false,
            },
            t0,
        );
        assert_eq!(c.state(), &State::Failed("userSig expired".into()));
        assert_eq!(c.deadline(), None);
        assert_eq!(c.leds().error, Pattern::On);
        assert!(c.status(t0).contains("userSig expired"));
        assert!(c
            .handle(Input::Tick, t0 + Duration::from_secs(100))
            .is_empty());
        assert_eq!(
            c.handle(Input::Button(Button::Call, Press::Long), t0),
            [Action::Join]
        );
    }

    #[test]
    fn banned_policies() {
        for reason in [Kick, Banned, RoomDisband] {
            for banned_press in [BannedPress::Rejoin, BannedPress::LongOnly] {
                let (mut c, t0) = joined(Policy {
                    banned_press,
                    ..Policy::default()
                });
                c.handle(Input::Banned(reason), t0);
                assert_eq!(c.state(), &State::Banned(reason));
                // Never rejoins by itself.
                assert!(c
                    .handle(Input::Tick, t0 + Duration::from_secs(3600))
                    .is_empty());
                assert!(c.handle(Input::Lost("closed".into()), t0).is_empty());
                assert!(c.handle(Input::Boot, t0).is_empty());
                let short = c.handle(Input::Button(Button::Call, Press::Short), t0);
                let short_rejoins = reason != Kick && banned_press == BannedPress::Rejoin;
                assert_eq!(
                    short == [Action::Join],
                    short_rejoins,
                    "{reason:?} {banned_press:?}"
                );
                if !short_rejoins {
                    assert_eq!(c.state(), &State::Banned(reason));
                    assert_eq!(
                        c.handle(Input::Button(Button::Call, Press::Long), t0),
                        [Action::Join]
                    );
                }
                assert_eq!(c.state(), &State::Joining);
            }
        }
    }

    #[test]
    fn operator_call_clears_any_ban() {
        let (mut c, t0) = joined(Policy::default());
        c.handle(Input::Banned(Kick), t0);
        assert_eq!(c.handle(Input::Command(Command::Call), t0), [Action::Join]);
    }

    #[test]
    fn banned_while_joining_or_leaving() {
        let t0 = Instant::now();
        let mut c = Controller::new(Policy::default(), 1);
        c.handle(Input::Boot, t0);
        c.handle(Input::Banned(RoomDisband), t0);
        assert_eq!(c.state(), &State::Banned(RoomDisband));
        let (mut c, t0) = joined(Policy::default());
        c.handle(Input::Command(Command::Hangup), t0);
        c.handle(Input::Banned(Banned), t0);
        assert_eq!(c.state(), &State::Banned(Banned));
    }

    #[test]
    fn toggle_mode_uses_one_button() {
        let policy = Policy {
            buttons: ButtonMode::Toggle,
            ..Policy::default()
        };
        let (mut c, t0) = joined(policy.clone());
        assert_eq!(
            c.handle(Input::Button(Button::Call, Press::Short), t0),
            [Action::Leave]
        );
        c.handle(Input::Left, t0);
        assert_eq!(
            c.handle(Input::Button(Button::Call, Press::Short), t0),
            [Action::Join]
        );
        // Pressing while joining cancels.
        assert_eq!(
            c.handle(Input::Button(Button::Call, Press::Short), t0),
            [Action::Leave]
        );
        // Separate mode: the call button in a call does nothing.
        let (mut c, t0) = joined(Policy::default());
        assert!(c
            .handle(Input::Button(Button::Call, Press::Short), t0)
            .is_empty());
        assert_eq!(c.state(), &State::InCall);
    }

    #[test]
    fn mute_survives_reconnect() {
        let (mut c, t0) = joined(Policy::default());
        let mic_off = Muted {
            audio: true,
            video: false,
        };
        assert_eq!(
            c.handle(Input::Command(Command::Mute(MediaKind::Audio, true)), t0),
            [Action::Mute(mic_off)]
        );
        c.handle(Input::Lost("x".into()), t0);
        // Muting while out of the call is remembered, not sent.
        assert!(c
            .handle(Input::Command(Command::Mute(MediaKind::Video, true)), t0)
            .is_empty());
        c.handle(Input::Command(Command::Call), t0);
        let both = Muted {
            audio: true,
            video: true,
        };
        assert_eq!(c.handle(Input::Joined, t0), [Action::Mute(both)]);
        assert_eq!(c.status(t0), "in call (microphone muted, camera off)");
    }

    #[test]
    fn leds_per_state() {
        let t0 = Instant::now();
        let mut c = Controller::new(Policy::default(), 1);
        let leds = |c: &Controller| (c.leds().call, c.leds().banned, c.leds().error);
        let slow = Pattern::Blink(Duration::from_secs(1));
        assert_eq!(leds(&c), (Pattern::Off, Pattern::Off, Pattern::Off));
        at(&mut c, Input::Boot, t0);
        assert_eq!(leds(&c), (slow, Pattern::Off, Pattern::Off));
        at(&mut c, Input::Joined, t0);
        assert_eq!(leds(&c), (Pattern::On, Pattern::Off, Pattern::Off));
        at(&mut c, Input::Lost("x".into()), t0);
        assert_eq!(leds(&c), (slow, Pattern::Off, slow));
        at(&mut c, Input::Tick, t0 + Duration::from_secs(2));
        at(&mut c, Input::Joined, t0);
        for (reason, pattern) in [
            (Banned, Pattern::On),
            (Kick, Pattern::Flashes(2)),
            (RoomDisband, Pattern::Flashes(3)),
        ] {
            at(&mut c, Input::Banned(reason), t0);
            assert_eq!(leds(&c), (Pattern::Off, pattern, Pattern::Off));
            at(&mut c, Input::Command(Command::Call), t0);
            at(&mut c, Input::Joined, t0);
        }
    }

    /// A bad network blinks the call LED fast and shows in the status; it
    /// clears when the network recovers or the call ends.
    #[test]
    fn a_bad_network_blinks_the_call_led_fast() {
        let t0 = Instant::now();
        let mut c = Controller::new(Policy::default(), 1);
        at(&mut c, Input::Boot, t0);
        at(&mut c, Input::Joined, t0);
        at(&mut c, Input::Network(Quality::POOR), t0);
        assert_eq!(c.leds().call, Pattern::On);
        assert_eq!(c.status(t0), "in call");
        at(&mut c, Input::Network(Quality::VERY_BAD), t0);
        let fast = Pattern::Blink(Duration::from_millis(250));
        assert_eq!(c.leds().call, fast);
        assert_eq!(c.status(t0), "in call; network very bad");
        at(&mut c, Input::Network(Quality::GOOD), t0);
        assert_eq!(c.leds().call, Pattern::On);
        at(&mut c, Input::Network(Quality::DOWN), t0);
        at(&mut c, Input::Lost("gone".into()), t0);
        assert_eq!(c.leds().call, Pattern::Blink(Duration::from_secs(1)));
    }
}
