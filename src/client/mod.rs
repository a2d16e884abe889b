//! The Rust TRTC-style client.
