//! The forwarding path's send (`DirectApi::send_rtp_now`, the vendored
//! str0m's addition) between a downlink made as the room makes it and a
//! str0m subscriber, over an in-memory network with a test clock: what it
//! sends is decrypted by the subscriber, and a packet the network lost is
//! resent when the subscriber NACKs it.

mod common;

use callbox::room::sfu::{prepare, Role};
use common::str0m_pair::{connected_call, exchange, ROOM};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use str0m::media::{Direction, MediaKind};
use str0m::rtp::{RtpWrite, SeqNo};
use str0m::Rtc;

/// 40 packets sent through `send_rtp_now`, two of them lost on the way:
/// the subscriber gets all 40, the lost two resent from the room's cache
/// after its NACK.
#[test]
fn a_packet_sent_at_once_is_received_and_resent_on_nack() {
    let mut now = Instant::now();
    let (mut room, mut client) = connected_call(&mut now);
    let ssrc = room.first_tx_ssrc();
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
