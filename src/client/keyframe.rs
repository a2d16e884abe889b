//! The last interceptor on inbound packets. It does two jobs no crate does:
//!
//! - Keyframe requests (PLI/FIR) reaching a publisher. The `webrtc` crate
//!   ends inbound RTCP in its interceptor chain unless an interceptor marks
//!   a packet for the application; this one marks exactly the keyframe
//!   requests (the crate's documented `rtcp-processing` pattern). Everything
//!   else stays with the interceptors that act on it.
//! - Media liveness: every inbound RTP or RTCP packet touches a
//!   [`MediaActivity`], so a call notices a dead room within seconds instead
//!   of waiting out ICE's consent timeout (about 30 s).

use rtc::interceptor::{Attribute, Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::sansio::Protocol;
use rtc::shared::error::Error;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// When media last arrived from the room on any of a client's connections.
#[derive(Debug, Clone, Default)]
pub struct MediaActivity(Arc<AtomicU64>);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl MediaActivity {
    pub fn touch(&self) {
        // +1: 0 means "never".
        let us = epoch().elapsed().as_micros() as u64 + 1;
        self.0.store(us, Relaxed);
    }

    /// How long since the last packet; `None` if none ever arrived.
    pub fn silence(&self) -> Option<Duration> {
        match self.0.load(Relaxed) {
            0 => None,
            us => Some(
                epoch()
                    .elapsed()
                    .saturating_sub(Duration::from_micros(us - 1)),
            ),
        }
    }
}

/// Whether an RTCP packet asks for a keyframe.
pub fn is_keyframe_request(packet: &dyn rtc::rtcp::Packet) -> bool {
    let any = packet.as_any();
    any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
}

pub struct KeyframeRequestForwarder {
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
    activity: MediaActivity,
}

impl KeyframeRequestForwarder {
    pub fn new(activity: MediaActivity) -> Self {
        KeyframeRequestForwarder {
            read: VecDeque::new(),
            write: VecDeque::new(),
            activity,
        }
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for KeyframeRequestForwarder {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        self.activity.touch();
        if let Packet::Rtcp(packets) = &msg.message.packet {
            let requests: Vec<Box<dyn rtc::rtcp::Packet>> = packets
                .iter()
                .filter(|p| is_keyframe_request(p.as_ref()))
                .cloned()
                .collect();
            if requests.is_empty() {
                return Ok(());
            }
            msg.message.packet = Packet::Rtcp(requests);
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.read.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write.pop_front()
    }
}

impl Interceptor for KeyframeRequestForwarder {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}
