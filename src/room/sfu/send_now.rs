//! Tests of the forwarding path's send (`DirectApi::send_rtp_now`, the
//! vendored str0m's addition) between a downlink made as the room makes it
//! ([`super::prepare`]) and a str0m subscriber, over an in-memory network
//! with a test clock: what it sends is decrypted by the subscriber, and a
//! packet the network lost is resent when the subscriber NACKs it.

use super::{prepare, Role};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::{Protocol, Receive, Transmit};
use str0m::rtp::{RtpWrite, SeqNo};
use str0m::{Candidate, Event, Input, Output, Rtc};

const ROOM: &str = "10.0.0.1:5000";
const CLIENT: &str = "10.0.0.2:6000";

/// One side of the call: its `Rtc`, what it has said, and what it received.
struct Side {
    rtc: Rtc,
    addr: SocketAddr,
    connected: bool,
    mids: Vec<Mid>,
    outbox: Vec<Transmit>,
    /// RTP sequence numbers received (subscriber).
    seqs: Vec<u64>,
}

impl Side {
    fn new(rtc: Rtc, addr: &str) -> Self {
        Side {
            rtc,
            addr: addr.parse().expect("addr"),
            connected: false,
            mids: Vec::new(),
            outbox: Vec::new(),
            seqs: Vec::new(),
        }
    }

    /// Everything it output since the last call: datagrams to send.
    fn poll(&mut self) -> Vec<Transmit> {
        self.drain();
        std::mem::take(&mut self.outbox)
    }

    /// Its output until its next timeout (str0m wants it after every input).
    fn drain(&mut self) {
        loop {
            match self.rtc.poll_output().expect("poll_output") {
                Output::Timeout(_) => return,
                Output::Transmit(t) => self.outbox.push(t),
                Output::Event(Event::Connected) => self.connected = true,
                Output::Event(Event::MediaAdded(m)) => self.mids.push(m.mid),
                Output::Event(Event::RtpPacket(p)) => self.seqs.push(*p.seq_no),
                Output::Event(_) => {}
            }
        }
    }

    fn receive(&mut self, t: &Transmit, now: Instant) {
        let input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source: t.source,
                destination: self.addr,
                contents: (&t.contents[..]).try_into().expect("a datagram"),
            },
        );
        self.rtc.handle_input(input).expect("input");
        self.drain();
    }
}

/// Both sides' output carried to the other, time moving on by `step`,
/// for `turns` turns.
fn exchange(
    (room, client): (&mut Side, &mut Side),
    now: &mut Instant,
    (turns, step): (usize, Duration),
) {
    for _ in 0..turns {
        *now += step;
        for side in [&mut *room, &mut *client] {
            side.rtc
                .handle_input(Input::Timeout(*now))
                .expect("timeout");
            side.drain();
        }
        for t in room.poll() {
            client.receive(&t, *now);
        }
        for t in client.poll() {
            room.receive(&t, *now);
        }
    }
}

/// A room downlink and a recvonly str0m subscriber, connected.
fn connected_call(now: &mut Instant) -> (Side, Side) {
    let mut client = Rtc::builder().set_rtp_mode(true).build(*now);
    let host = Candidate::host(CLIENT.parse().expect("addr"), "udp").expect("candidate");
    client.add_local_candidate(host);
    let mut sdp = client.sdp_api();
    sdp.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    let (offer, pending) = sdp.apply().expect("an offer");
    let (rtc, answer) = prepare(
        &offer.to_sdp_string(),
        ROOM.parse().expect("addr"),
        None,
        Role::Downlink,
    )
    .expect("the room answers");
    let answer = str0m::change::SdpAnswer::from_sdp_string(&answer).expect("answer parses");
    client
        .sdp_api()
        .accept_answer(pending, answer)
        .expect("answer accepted");
    let (mut room, mut client) = (Side::new(rtc, ROOM), Side::new(client, CLIENT));
    exchange(
        (&mut room, &mut client),
        now,
        (200, Duration::from_millis(5)),
    );
    assert!(room.connected && client.connected, "ICE and DTLS complete");
    (room, client)
}

/// 40 packets sent through `send_rtp_now`, two of them lost on the way:
/// the subscriber gets all 40, the lost two resent from the room's cache
/// after its NACK.
#[test]
fn a_packet_sent_at_once_is_received_and_resent_on_nack() {
    let mut now = Instant::now();
    let (mut room, mut client) = connected_call(&mut now);
    let mid = room.mids[0];
    let mut api = room.rtc.direct_api();
    let ssrc = api.stream_tx_by_mid(mid, None).expect("send stream").ssrc();
    let pt = 108.into();
    let lost = [10u64, 11];
    for seq in 0..40u64 {
        now += Duration::from_millis(1);
        let payload: Arc<[u8]> = vec![0x41; 900].into();
        let write = RtpWrite::new(pt, SeqNo::from(seq), seq as u32 * 3000, now, payload)
            .marker(true)
            .nackable(true);
        let t = room
            .rtc
            .direct_api()
            .send_rtp_now(ssrc, write, now, Vec::new())
            .expect("sent at once");
        assert_eq!(t.destination, client.addr);
        if !lost.contains(&seq) {
            client.receive(&t, now);
        }
    }
    client.poll();
    let before: BTreeSet<u64> = client.seqs.iter().copied().collect();
    assert_eq!(before.len(), 38, "all but the lost two arrive at once");
    exchange(
        (&mut room, &mut client),
        &mut now,
        (100, Duration::from_millis(10)),
    );
    let after: BTreeSet<u64> = client.seqs.iter().copied().collect();
    assert_eq!(after, (0..40).collect(), "the lost two came again");
}

/// Before the call is up there is nothing to send on.
#[test]
fn nothing_is_sent_before_the_call_is_up() {
    let now = Instant::now();
    let mut client = Rtc::builder().set_rtp_mode(true).build(now);
    let mut sdp = client.sdp_api();
    let mid = sdp.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    let (offer, _) = sdp.apply().expect("an offer");
    let (mut rtc, _) = prepare(
        &offer.to_sdp_string(),
        ROOM.parse().expect("addr"),
        None,
        Role::Downlink,
    )
    .expect("the room answers");
    let mut api = rtc.direct_api();
    let ssrc = api.stream_tx_by_mid(mid, None).expect("send stream").ssrc();
    let write = RtpWrite::new(
        108.into(),
        SeqNo::from(0),
        0,
        now,
        Arc::<[u8]>::from(vec![1u8; 10]),
    );
    assert!(api.send_rtp_now(ssrc, write, now, Vec::new()).is_none());
}
