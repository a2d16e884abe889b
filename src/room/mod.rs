//! The room service: where devices and browsers meet. Signaling and admin
//! over HTTP/WebSocket ([`server`], [`admin`]), the pure room rules
//! ([`state`]) and the SFU that forwards media ([`sfu`]); connection caps
//! ([`accept`]) and what is done with callers' text ([`log_limit`]).

pub mod accept;
pub mod admin;
pub mod config;
pub mod hub;
pub mod local;
pub mod log_limit;
pub mod media_tcp;
pub mod server;
pub mod sfu;
pub mod state;
pub mod turn;
pub mod udp_batch;
