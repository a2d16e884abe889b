//! A room peer made as the room makes it ([`callbox::room::sfu::prepare`])
//! and a str0m client, talking over an in-memory network with a test clock:
//! what the send path's tests and its bench stand on.

use callbox::room::sfu::{prepare, Role};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::{Protocol, Receive, Transmit};
use str0m::rtp::Ssrc;
use str0m::{Candidate, Event, Input, Output, Rtc};

/// The addresses on the in-memory network; nothing is sent to them.
pub const ROOM: &str = "10.0.0.1:5000";
pub const CLIENT: &str = "10.0.0.2:6000";

/// One side of the call: its `Rtc`, what it has said, and what it received.
pub struct Side {
    pub rtc: Rtc,
    pub addr: SocketAddr,
    pub connected: bool,
    pub mids: Vec<Mid>,
    pub outbox: Vec<Transmit>,
    /// RTP sequence numbers received (subscriber).
    pub seqs: Vec<u64>,
}

impl Side {
    pub fn new(rtc: Rtc, addr: &str) -> Self {
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
    pub fn poll(&mut self) -> Vec<Transmit> {
        self.drain();
        std::mem::take(&mut self.outbox)
    }

    /// Its output until its next timeout (str0m wants it after every input).
    pub fn drain(&mut self) {
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

    pub fn receive(&mut self, t: &Transmit, now: Instant) {
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

    /// Time moves to `now`: its timers run, and what they made is queued.
    pub fn tick(&mut self, now: Instant) {
        self.rtc.handle_input(Input::Timeout(now)).expect("timeout");
        self.drain();
    }

    /// The SSRC the room sends its first media on.
    pub fn first_tx_ssrc(&mut self) -> Ssrc {
        let mid = self.mids[0];
        let mut api = self.rtc.direct_api();
        api.stream_tx_by_mid(mid, None).expect("send stream").ssrc()
    }
}

/// Both sides' output carried to the other, time moving on by `step`,
/// for `turns` turns.
pub fn exchange(
    (room, client): (&mut Side, &mut Side),
    now: &mut Instant,
    (turns, step): (usize, Duration),
) {
    for _ in 0..turns {
        *now += step;
        room.tick(*now);
        client.tick(*now);
        for t in room.poll() {
            client.receive(&t, *now);
        }
        for t in client.poll() {
            room.receive(&t, *now);
        }
    }
}

/// A room downlink and a recvonly str0m subscriber, connected.
pub fn connected_call(now: &mut Instant) -> (Side, Side) {
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
