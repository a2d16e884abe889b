//! The room service: where devices and browsers meet. Signaling and admin
//! over HTTP/WebSocket ([`server`], [`admin`]), the pure room rules
//! ([`state`]) and the SFU that forwards media ([`sfu`]).

pub mod admin;
pub mod config;
pub mod hub;
pub mod local;
pub mod server;
pub mod sfu;
pub mod state;
