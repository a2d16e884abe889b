//! The device: camera, microphone and speaker to and from a room.
//!
//! - [`config`]: the device's sections of the TOML config.
//! - [`sources`]: config kind -> camera, encoder, microphone, speaker.
//! - [`frame`], [`convert`], [`pattern`]: raw frames, buffer pool, pixel
//!   format conversion, the synthetic test pattern.
//! - [`video_source`], [`v4l2`]: where frames come from.
//! - [`h264`]: encoder trait, OpenH264, pass-through, decoder.
//! - [`audio`], [`alsa_io`], [`tone`], [`jitter`]: audio sources and
//!   sinks, Opus, mixing, the jitter buffer, tones.
//! - [`processing`]: echo cancellation, noise suppression, gain control;
//!   [`audio_tool`]: the same chain on recordings (`callbox audio process`),
//!   the echo self-test's I/O and a simulated echo path (`audio loop`);
//!   [`echo_probe`]: the self-test's signal and analysis; [`delay_line`]:
//!   the simulated path's delay.
//! - [`display`]: the screen: remote video decoded, composed, presented.
//! - [`stats`]: media counters.
//! - [`pipeline`]: the media threads; [`daemon`]: the device in a call.

pub mod active_speaker;
pub mod alsa_io;
pub mod annexb;
pub mod audio;
pub mod audio_tool;
pub mod command_camera;
pub mod config;
pub mod convert;
pub mod daemon;
pub mod delay_line;
pub mod display;
pub mod echo_probe;
pub mod encoder_probe;
pub mod fallback_encoder;
pub mod frame;
pub mod h264;
pub mod jitter;
pub mod m2m;
pub mod m2m_controls;
pub mod m2m_decoder;
pub mod m2m_encoder;
pub mod pattern;
pub mod pipeline;
pub mod processing;
pub mod sources;
pub mod stats;
pub mod tone;
pub mod v4l2;
pub mod v4l2_queue;
pub mod video_source;
