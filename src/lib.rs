//! callbox: a video-call appliance with the TRTC v4 call model.
//!
//! - [`usersig`]: TLSSigAPIv2-compatible userSig issue and verification.
//! - [`protocol`]: the signaling protocol shared by server, Rust client and browser SDK.
//! - [`room`]: the room service (signaling, rooms, admin API, SFU).
//! - [`client`]: the Rust TRTC-style client (signaling + WebRTC) the device builds on.
//! - [`device`]: the device's media: capture, encode, publish, subscribe, play.
//! - [`appliance`]: the device as an appliance: call state machine, GPIO
//!   buttons and LEDs, systemd, control socket, probe.

pub mod appliance;
pub mod client;
pub mod config;
pub mod device;
pub mod protocol;
#[cfg(feature = "room")]
pub mod room;
pub mod usersig;
