//! callbox: a video-call appliance with the TRTC v4 call model.
//!
//! - [`usersig`]: TLSSigAPIv2-compatible userSig issue and verification;
//!   [`private_map_key`]: TRTC's room-scoped key built on it.
//! - [`protocol`]: the signaling protocol shared by server, Rust client and browser SDK;
//!   [`network_quality`]: TRTC's 0-6 grades, and how the room measures them.
//! - [`room`]: the room service (signaling, rooms, admin API, SFU).
//! - [`client`]: the Rust TRTC-style client (signaling + WebRTC) the device builds on,
//!   on the callbox room service or on Janus VideoRoom.
//! - [`device`]: the device's media: capture, encode, publish, subscribe, play.
//! - [`appliance`]: the device as an appliance: call state machine, GPIO
//!   buttons and LEDs, systemd, control socket, probe.
//! - [`config`]: what every config file shares (errors naming file and key).
//!
//! # Data flows
//!
//! Each flow as the functions it passes, in order. Threads are named;
//! everything else runs on the tokio runtime.
//!
//! **Camera frame -> RTP** (thread `callbox-video`, then the call task):
//! `device::sources::open_camera` -> `VideoSource::next_frame` (a `Frame`
//! borrowing the driver's buffer, or one conversion pass into a pooled
//! buffer; or, for `source = "command"`, a capture program's H.264 cut
//! into access units by `AnnexBSplitter` on thread `camera-command`) -> `VideoEncoder::encode` in `pipeline::video_loop`
//! (OpenH264 on the frame in place; or the board's M2M encoder,
//! `m2m_encoder::M2mVideoEncoder` behind `FallbackEncoder`, taking the
//! camera buffer by its DMABUF (`Frame::dmabuf`, exported by
//! `v4l2_queue::MmapQueue`) or one copy, and waiting by poll for the coded
//! frame) -> `EncodedVideo` on `Outputs::video` -> `daemon::Call::on_video` ->
//! `LocalTrack::write_captured` (webrtc-rs's H.264 payloader; the RTP
//! timestamp from the capture time, `rtp_clock::RtpClock`; playout-delay
//! 0/0 with `video.playout = "immediate"`) -> the connection (SRTP) -> room,
//! whose SFU passes the playout-delay on to each subscriber.
//! Back-channels into the same loop: a PLI/FIR from the room ->
//! `LocalTrack::keyframe_requested` (task started in `Call::start`) ->
//! `Pipeline::keyframe` -> `VideoSource::keyframe_requested` (a capture
//! program is restarted; the M2M encoder sets `FORCE_KEY_FRAME` or
//! restarts) and the next frame is an IDR; congestion control
//! (TWCC + GCC) -> `LocalStream::target_bitrate` -> `Call::follow_bitrate`
//! -> `Pipeline::bitrate` -> `VideoEncoder::set_bitrate`.
//!
//! **Microphone -> Opus** (thread `callbox-mic`): `AudioSource::read` (20 ms,
//! ALSA or the tone) -> `AudioProcessor::process` (`processing::Capture`:
//! the far-end frames queued by the speaker thread first, then high-pass,
//! AEC3, noise suppression, AGC2 on the microphone frame) ->
//! `OpusEncoder::encode` in `pipeline::audio_loop` -> `Outputs::audio` ->
//! `Call::on_audio` (dropped while muted) -> `LocalTrack::write`.
//!
//! **Remote audio -> speaker**: `stream-added` -> `Call::on_room_event` ->
//! `Call::subscribe_next` -> `Client::subscription` (video too only with a
//! display) -> `Call::on_subscribed` -> its task hands audio `RemotePacket`s
//! to `Playback::push` into the stream's `JitterBuffer`; thread
//! `callbox-speaker`, every 20 ms: `pipeline::playout_loop` ->
//! `Playback::mix` (`OpusDecoder::decode`, or `conceal` on loss, `mix_into`)
//! -> `AudioSink::write`, and the same frame to `Apm::far_end_played` (the
//! echo canceller's reference).
//!
//! **Remote video -> screen** (with a `[display]`): `Call::on_subscribed`
//! -> `Call::video_decoder` -> the stream's task hands video packets to
//! `VideoDecoder::push` (bounded, stamped with their arrival) -> thread
//! `decode <id>`: `H264Packet` depacketizes, the marker bit completes an
//! access unit -> `H264Decoder::decode` -> `decode::hold_until` (lip sync:
//! arrival + `Playback::audio_delay`, the stream's jitter-buffer depth and
//! the speaker's buffer) -> `Screen::show` (latest picture per stream);
//! thread `screen`, at the display's rate: `screen::compose`
//! (`screen::arrange`: `layout::tiles`, or `layout::speaker_tiles` with
//! the speaker `Playback::mix` found via `ActiveSpeaker` first, set by
//! `Call::on_tick`; `layout::fit`, `Canvas::blit`, name cards, the
//! mirrored self-view the video thread hands to `Screen::show_self`, or the
//! idle text) -> `DisplaySink::show` (`KmsSink`: I420 -> XRGB into the
//! back dumb buffer, page flip; or `Y4mSink`), or `DisplaySink::set_power`
//! (DPMS off) with nothing to show and `idle = "blank"`. Loss or a
//! decoding error -> `RemoteStream::keyframe_requester` -> PLI to the
//! publisher.
//!
//! **Join -> media path**: `room::server::handle` answers `Join` with
//! `ServerMessage::Joined`, its `ice_servers` from `TurnConfig::for_user`
//! (TURN REST credentials) -> `Client::join_with_key` keeps them as
//! `NetConfig::room_ice_servers` -> `Peer::new` (`bridged_servers`: TURN
//! over TCP/TLS through a `turn_stream::Bridge` each; the relay-only
//! policy; active ICE-TCP candidates) -> `Peer::offer` (at most 3 s of gathering)
//! (`ClientError::NoRelay` when relay-only got no relay) ->
//! `Peer::accept_answer` (the room's passive TCP candidates through
//! `add_ice_candidate`). In the room, UDP reaches `Dispatcher::drain_udp`
//! (`recvmmsg`), TCP through `media_tcp::accept` (`TcpEvent::Packet`), and
//! both go by `Demux::route` (STUN by our ufrag, then by address) to the
//! peer's worker, `Engine::on_inbound` -> `Engine::on_packet`; replies
//! leave by `Out::send` and `Engine::flush`. The device logs and keeps
//! `Peer::path` in `MediaStats::ice_path`.
//!
//! **Uplink RTP -> subscribers** (a room's worker thread `callbox-sfu-N`;
//! `Sfu::open` put all the room's peers there): `Engine::on_packet` ->
//! `Engine::drive` (str0m decrypts; `Event::RtpPacket`) -> `Engine::forward`
//! (sequence rebased per downlink, payload shared; `DirectApi::send_rtp_now`
//! per downlink, from the vendored str0m: the SRTP-protected datagram at
//! once, past str0m's pacer) -> `Out::send` (queued) -> `Engine::flush` (at
//! once, or when a video frame's last packet is in: `Engine::holding`) ->
//! `TxQueue::flush` (`udp_batch::plan`: each subscriber's datagrams as UDP
//! GSO messages, all in one `sendmmsg`).
//!
//! **Packets -> network quality**: in the room, `Engine::on_packet`
//! (`LinkMeter::heard`), each uplink RTP packet (`LinkMeter::rtp`, its
//! sequence number) and str0m's stats events (`LinkMeter::reported`: the
//! client's receiver reports) feed each peer's [`network_quality::LinkMeter`];
//! every 2 s `Engine::grade_links` -> `LinkMeter::take` ->
//! `network_quality::grade_client` -> `sfu::Report::Quality` ->
//! `server::relay_reports` -> `ServerMessage::NetworkQuality` to the
//! client. The device: `Call::on_room_event` ->
//! `Call::on_network_quality` (log, `MediaStats::set_network_quality`) ->
//! `Daemon::on_network` -> `Input::Network` -> `Controller::leds` (fast
//! blink). The browser SDK emits it as `network-quality`.
//!
//! **Join on Janus** (`[room] backend = "janus"`): `Client::connect` ->
//! `Janus::connect` (WebSocket, `create` session, `attach` the VideoRoom
//! handle) -> `Client::join_with_key` -> `Janus::join`
//! (`janus_videoroom::join_publisher`; a 436 with `room_secret` ->
//! `kick` and join again) -> `Client::publish` -> `Janus::publish` (our
//! offer, Janus's answer). A subscription: `Client::subscription` ->
//! `Janus::subscribe` (a handle, `join_subscriber`, Janus's offer ->
//! `Downlink::answer` -> `start`). Janus's events on the publisher handle:
//! `janus::route` -> `janus_videoroom::translate` -> the same
//! `ServerMessage`s the callbox room sends -> `Call::on_room_event`.
//!
//! **userSig -> verdict**: `Client::join` sends `ClientMessage::Join` ->
//! `room::server::handle` -> `authenticate` -> `usersig::verify` (base64,
//! zlib, HMAC-SHA256, app, user, expiry) -> on refusal
//! `UserSigError::reason` -> `ServerMessage::Error` with a
//! `protocol::Reason` -> `ClientError::Refused` -> `DeviceError::retryable`
//! (false for a userSig reason) -> `runner::call_outcome` ->
//! `Controller::handle` (state `failed`, no retry, error LED).
//!
//! **Button -> LED**: the kernel debounces and timestamps the edge
//! (`appliance::gpio::Gpio`) -> `Daemon::on_edge` -> `PressTracker::edge`
//! (or `poll` for a long press while held) -> `Input::Button` ->
//! `Controller::handle` -> `Action::Join`/`Leave` (`Daemon::carry_out`
//! hands the call to the device task) and a new state ->
//! `Controller::leds` -> `Daemon::show` -> `Gpio::show` (`Pattern::lit`
//! at this moment of the pattern).

pub mod appliance;
pub mod client;
pub mod config;
pub mod device;
pub mod network_quality;
pub mod private_map_key;
pub mod protocol;
#[cfg(feature = "room")]
pub mod room;
pub mod usersig;
