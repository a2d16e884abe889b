//! TRTC's `network-quality`: how each direction of a client's media is
//! doing, graded 0-6 (0 unknown, 1 excellent, 2 good, 3 poor, 4 bad,
//! 5 very bad, 6 down) every 2 s, with the loss and round trip behind it.
//!
//! The room grades, because it sees both ends of every link: the loss on a
//! client's uplink from the sequence numbers it receives, the loss on a
//! downlink from the client's receiver reports, the round trip from those
//! reports. It sends the grade to the client; the Rust client, the device
//! and the browser SDK pass it on under TRTC's names. Pure: packets,
//! reports and the clock come in.
//!
//! Uplink loss is counted here from the extended sequence numbers (RFC 3550
//! A.3) rather than taken from str0m's ingress stats: in RTP mode str0m
//! 0.25 repeated its first receiver report's loss figure for the rest of a
//! call (measured under 20 % loss: the figure neither rose nor recovered).

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How often clients are told.
pub const INTERVAL: Duration = Duration::from_secs(2);
/// A link with nothing heard from its client for this long is down.
const SILENT: Duration = Duration::from_secs(4);
/// Streams counted per link; a client declares a few, never more.
const MAX_STREAMS: usize = 8;

/// 0 (unknown) to 6 (down), TRTC's scale.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct Quality(u8);

impl Quality {
    pub const UNKNOWN: Quality = Quality(0);
    pub const EXCELLENT: Quality = Quality(1);
    pub const GOOD: Quality = Quality(2);
    pub const POOR: Quality = Quality(3);
    pub const BAD: Quality = Quality(4);
    pub const VERY_BAD: Quality = Quality(5);
    pub const DOWN: Quality = Quality(6);

    pub fn level(self) -> u8 {
        self.0
    }

    /// TRTC's name for the grade.
    pub fn name(self) -> &'static str {
        [
            "unknown",
            "excellent",
            "good",
            "poor",
            "bad",
            "very bad",
            "down",
        ][self.0 as usize]
    }

    /// Bad or worse: calls stutter and lag (TRTC's words for 4).
    pub fn is_bad(self) -> bool {
        self >= Quality::BAD
    }

    /// The worse of two grades; unknown yields to any known one.
    pub fn worse(self, other: Quality) -> Quality {
        self.max(other)
    }
}

impl TryFrom<u8> for Quality {
    type Error = String;
    fn try_from(v: u8) -> Result<Self, String> {
        if v <= 6 {
            Ok(Quality(v))
        } else {
            Err(format!("network quality {v} is not 0-6"))
        }
    }
}

impl From<Quality> for u8 {
    fn from(q: Quality) -> u8 {
        q.0
    }
}

/// TRTC v4's `network-quality` event, as the room sends it: RTT in
/// milliseconds and loss in percent, 0 while not measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkQuality {
    #[serde(rename = "uplinkNetworkQuality")]
    pub uplink: Quality,
    #[serde(rename = "downlinkNetworkQuality")]
    pub downlink: Quality,
    #[serde(rename = "uplinkRTT")]
    pub uplink_rtt: u32,
    #[serde(rename = "uplinkLoss")]
    pub uplink_loss: u8,
    #[serde(rename = "downlinkRTT")]
    pub downlink_rtt: u32,
    #[serde(rename = "downlinkLoss")]
    pub downlink_loss: u8,
}

impl NetworkQuality {
    /// The worse direction.
    pub fn worst(&self) -> Quality {
        self.uplink.worse(self.downlink)
    }
}

/// What one link did in one interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Link {
    /// Share of packets lost, 0 to 1, when anything was expected.
    pub loss: Option<f64>,
    pub rtt: Option<Duration>,
    /// Whether the client was heard lately.
    pub heard: bool,
}

/// The grade of one link: the worse of what loss and RTT say.
pub fn grade(link: Link) -> Quality {
    if !link.heard {
        return Quality::DOWN;
    }
    let by_loss = link.loss.map(|l| match l {
        l if l < 0.01 => 1,
        l if l < 0.03 => 2,
        l if l < 0.08 => 3,
        l if l < 0.15 => 4,
        l if l < 0.40 => 5,
        _ => 6,
    });
    let by_rtt = link.rtt.map(|t| match t.as_millis() {
        0..100 => 1,
        100..200 => 2,
        200..300 => 3,
        300..500 => 4,
        500..1000 => 5,
        _ => 6,
    });
    Quality(by_loss.unwrap_or(0).max(by_rtt.unwrap_or(0)))
}

/// A client's grade from its links in one interval: each direction the
/// worst of its links; the round trip is the client's, whichever link
/// measured it.
pub fn grade_client(uplinks: &[Link], downlinks: &[Link]) -> NetworkQuality {
    let rtt = uplinks.iter().chain(downlinks).filter_map(|l| l.rtt).min();
    let side = |links: &[Link]| {
        let grade = links
            .iter()
            .map(|l| grade(Link { rtt, ..*l }))
            .fold(Quality::UNKNOWN, Quality::worse);
        let loss = links.iter().filter_map(|l| l.loss).fold(0.0, f64::max);
        (grade, (loss * 100.0).round().clamp(0.0, 100.0) as u8)
    };
    let (uplink, uplink_loss) = side(uplinks);
    let (downlink, downlink_loss) = side(downlinks);
    let rtt_ms = rtt.map_or(0, |t| t.as_millis().min(u32::MAX as u128) as u32);
    NetworkQuality {
        uplink,
        downlink,
        uplink_rtt: if uplinks.is_empty() { 0 } else { rtt_ms },
        uplink_loss,
        downlink_rtt: if downlinks.is_empty() { 0 } else { rtt_ms },
        downlink_loss,
    }
}

/// Received and expected packets of one stream (RFC 3550 A.3).
#[derive(Debug, Clone, Copy)]
struct SeqCount {
    first: u64,
    highest: u64,
    received: u64,
    /// `(expected, received)` at the end of the last interval.
    mark: (u64, u64),
}

impl SeqCount {
    fn expected(&self) -> u64 {
        self.highest - self.first + 1
    }
}

/// What the room knows of one link during an interval.
#[derive(Debug, Default)]
pub struct LinkMeter {
    streams: HashMap<u32, SeqCount>,
    /// The worst loss the far end reported in the interval.
    reported_loss: Option<f32>,
    rtt: Option<Duration>,
    last_heard: Option<Instant>,
}

impl LinkMeter {
    /// Anything arrived from the client on this link.
    pub fn heard(&mut self, at: Instant) {
        self.last_heard = Some(at);
    }

    /// An RTP packet received, by its SSRC and extended sequence number.
    pub fn rtp(&mut self, ssrc: u32, seq: u64) {
        if !self.streams.contains_key(&ssrc) && self.streams.len() >= MAX_STREAMS {
            return;
        }
        let s = self.streams.entry(ssrc).or_insert(SeqCount {
            first: seq,
            highest: seq,
            received: 0,
            mark: (0, 0),
        });
        s.first = s.first.min(seq);
        s.highest = s.highest.max(seq);
        s.received += 1;
    }

    /// What the far end reported of what we send: loss (0 to 1), round trip.
    pub fn reported(&mut self, loss: Option<f32>, rtt: Option<Duration>) {
        if let Some(l) = loss.filter(|l| l.is_finite()) {
            self.reported_loss = Some(self.reported_loss.map_or(l, |r| r.max(l)));
        }
        if rtt.is_some() {
            self.rtt = rtt;
        }
    }

    /// This interval's link, and a fresh interval. Loss counted from what
    /// arrived wins over what was reported.
    pub fn take(&mut self, now: Instant) -> Link {
        let (mut expected, mut received) = (0u64, 0u64);
        for s in self.streams.values_mut() {
            let now_counts = (s.expected(), s.received);
            expected += now_counts.0.saturating_sub(s.mark.0);
            received += now_counts.1.saturating_sub(s.mark.1);
            s.mark = now_counts;
        }
        let counted =
            (expected > 0).then(|| expected.saturating_sub(received) as f64 / expected as f64);
        let reported = self.reported_loss.take().map(f64::from);
        Link {
            loss: counted.or(reported),
            rtt: self.rtt,
            heard: self
                .last_heard
                .is_some_and(|t| now.saturating_duration_since(t) < SILENT),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Option<Duration> {
        Some(Duration::from_millis(n))
    }

    fn link(loss: Option<f64>, rtt: Option<Duration>) -> Link {
        Link {
            loss,
            rtt,
            heard: true,
        }
    }

    #[test]
    fn loss_and_rtt_each_pull_the_grade_down() {
        assert_eq!(grade(link(Some(0.0), ms(20))), Quality::EXCELLENT);
        assert_eq!(grade(link(Some(0.02), ms(20))), Quality::GOOD);
        assert_eq!(grade(link(Some(0.05), None)), Quality::POOR);
        assert_eq!(grade(link(Some(0.0), ms(400))), Quality::BAD);
        assert_eq!(grade(link(Some(0.2), ms(20))), Quality::VERY_BAD);
        assert_eq!(grade(link(Some(0.6), ms(20))), Quality::DOWN);
        assert_eq!(grade(link(None, None)), Quality::UNKNOWN);
        let silent = Link {
            heard: false,
            ..link(Some(0.0), ms(10))
        };
        assert_eq!(grade(silent), Quality::DOWN);
    }

    #[test]
    fn uplink_loss_is_counted_per_interval_from_sequence_numbers() {
        let t0 = Instant::now();
        let mut m = LinkMeter::default();
        m.heard(t0);
        (1000..1100).for_each(|s| m.rtp(7, s));
        (50..100).for_each(|s| m.rtp(9, s));
        assert_eq!(m.take(t0).loss, Some(0.0));
        // Every fifth packet of one stream lost: 20 of 150 expected.
        (1100..1200)
            .filter(|s| s % 5 != 0)
            .for_each(|s| m.rtp(7, s));
        (100..150).for_each(|s| m.rtp(9, s));
        let lossy = m.take(t0);
        assert!(
            (lossy.loss.unwrap() - 20.0 / 150.0).abs() < 1e-9,
            "{lossy:?}"
        );
        assert_eq!(grade(lossy), Quality::BAD);
        // A retransmission counted twice does not make loss negative.
        (1200..1210).for_each(|s| m.rtp(7, s));
        m.rtp(7, 1205);
        assert_eq!(m.take(t0).loss, Some(0.0));
        // Nothing expected: no loss figure, and later silence reads down.
        assert_eq!(m.take(t0).loss, None);
        assert!(!m.take(t0 + Duration::from_secs(5)).heard);
    }

    #[test]
    fn downlink_loss_comes_from_the_clients_reports() {
        let t0 = Instant::now();
        let mut m = LinkMeter::default();
        m.heard(t0);
        m.reported(Some(0.1), ms(30));
        m.reported(Some(0.3), None);
        m.reported(Some(f32::NAN), None);
        let l = m.take(t0);
        assert_eq!(
            (l.loss.map(|l| (l * 10.0).round()), l.rtt),
            (Some(3.0), ms(30))
        );
        // The next interval starts clean, and keeps the last round trip.
        assert_eq!(m.take(t0).loss, None);
        assert_eq!(m.take(t0).rtt, ms(30));
    }

    #[test]
    fn a_client_is_graded_on_its_worst_link_each_way_with_one_round_trip() {
        let up = [link(Some(0.0), None)];
        let down = [link(Some(0.0), ms(250)), link(Some(0.2), ms(40))];
        let q = grade_client(&up, &down);
        assert_eq!(
            (q.uplink, q.downlink),
            (Quality::EXCELLENT, Quality::VERY_BAD)
        );
        assert_eq!((q.uplink_rtt, q.downlink_rtt), (40, 40));
        assert_eq!((q.uplink_loss, q.downlink_loss), (0, 20));
        assert_eq!(q.worst(), Quality::VERY_BAD);
        // A publisher that subscribes to nothing: the downlink is unknown.
        let q = grade_client(&up, &[]);
        assert_eq!((q.downlink, q.downlink_rtt), (Quality::UNKNOWN, 0));
    }

    #[test]
    fn the_event_has_trtcs_field_names_and_refuses_grades_over_6() {
        let q = grade_client(&[link(Some(0.05), ms(120))], &[]);
        let json = serde_json::to_value(q).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "uplinkNetworkQuality": 3, "downlinkNetworkQuality": 0,
                "uplinkRTT": 120, "uplinkLoss": 5, "downlinkRTT": 0, "downlinkLoss": 0
            })
        );
        let mut bad = json.clone();
        bad["uplinkNetworkQuality"] = 7.into();
        assert!(serde_json::from_value::<NetworkQuality>(bad).is_err());
        assert_eq!(serde_json::from_value::<NetworkQuality>(json).unwrap(), q);
    }
}
