//! The receive jitter buffer for one remote audio stream: packets in by RTP
//! sequence number, one 20 ms frame out per playout tick, after a fixed
//! target delay. A missing packet comes out as `Lost` (the decoder conceals
//! it, or recovers it from the next packet's in-band FEC). Pure logic, no
//! clock: the playout thread calls `pop` once per frame.

use std::collections::BTreeMap;

/// What to play this tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Playout<T> {
    /// Not started yet, or drained: play silence.
    Silence,
    /// The packet for this tick.
    Packet(T),
    /// This tick's packet is missing; `next` is the following one if it
    /// has arrived (its FEC can rebuild this one).
    Lost { next: Option<T> },
}

#[derive(Debug)]
pub struct JitterBuffer<T> {
    packets: BTreeMap<u64, T>,
    /// Extended (wrap-free) sequence number to play next.
    next: Option<u64>,
    /// Highest extended sequence number seen, to unwrap the 16-bit ones.
    highest: Option<u64>,
    /// Frames to hold before starting playout.
    target: usize,
    /// Never hold more than this; older packets are dropped (late join, clock drift).
    capacity: usize,
    pub late: u64,
    pub lost: u64,
}

impl<T: Clone> JitterBuffer<T> {
    pub fn new(target: usize, capacity: usize) -> Self {
        JitterBuffer {
            packets: BTreeMap::new(),
            next: None,
            highest: None,
            target: target.max(1),
            capacity: capacity.max(target + 1),
            late: 0,
            lost: 0,
        }
    }

    fn extend(&self, seq: u16) -> u64 {
        let Some(h) = self.highest else {
            return (1 << 16) | seq as u64;
        };
        let base = h & !0xffff;
        let candidates = [base.wrapping_sub(1 << 16), base, base + (1 << 16)];
        candidates
            .into_iter()
            .map(|b| b | seq as u64)
            .min_by_key(|&c| c.abs_diff(h))
            .unwrap_or(base | seq as u64)
    }

    pub fn push(&mut self, seq: u16, packet: T) {
        let ext = self.extend(seq);
        if self.next.is_some_and(|n| ext < n) {
            self.late += 1;
            return;
        }
        self.highest = Some(self.highest.map_or(ext, |h| h.max(ext)));
        self.packets.insert(ext, packet);
        while self.packets.len() > self.capacity {
            if let Some((&first, _)) = self.packets.iter().next() {
                self.packets.remove(&first);
                self.next = Some(first + 1);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.packets.len()
    }

    /// Frames from the next to play through the newest received (gaps
    /// included): how long a packet arriving now waits. `None` while not
    /// playing (not started, or drained).
    pub fn depth(&self) -> Option<usize> {
        let (next, highest) = (self.next?, self.highest?);
        Some((highest + 1).saturating_sub(next) as usize)
    }

    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    pub fn pop(&mut self) -> Playout<T> {
        let next = match self.next {
            Some(n) => n,
            None => {
                if self.packets.len() < self.target {
                    return Playout::Silence;
                }
                match self.packets.keys().next() {
                    Some(&first) => first,
                    None => return Playout::Silence,
                }
            }
        };
        if self.packets.is_empty() {
            // Drained: start over with a fresh target delay when packets return.
            self.next = None;
            return Playout::Silence;
        }
        self.next = Some(next + 1);
        match self.packets.remove(&next) {
            Some(p) => Playout::Packet(p),
            None => {
                self.lost += 1;
                Playout::Lost {
                    next: self.packets.get(&(next + 1)).cloned(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_the_frames_waiting_gaps_included() {
        let mut jb = JitterBuffer::new(2, 50);
        jb.push(1, 'a');
        assert_eq!(jb.depth(), None, "not started");
        jb.push(2, 'b');
        jb.push(4, 'd');
        assert_eq!(jb.pop(), Playout::Packet('a'));
        assert_eq!(jb.depth(), Some(3), "b, the missing c, d");
        for _ in 0..3 {
            jb.pop();
        }
        assert_eq!(jb.pop(), Playout::Silence);
        assert_eq!(jb.depth(), None, "drained");
    }

    #[test]
    fn waits_for_target_then_plays_in_order() {
        let mut jb = JitterBuffer::new(3, 50);
        jb.push(10, 'a');
        jb.push(12, 'c');
        assert_eq!(jb.pop(), Playout::Silence);
        jb.push(11, 'b');
        assert_eq!(jb.pop(), Playout::Packet('a'));
        assert_eq!(jb.pop(), Playout::Packet('b'));
        assert_eq!(jb.pop(), Playout::Packet('c'));
        assert_eq!(jb.pop(), Playout::Silence);
    }

    #[test]
    fn a_gap_is_lost_with_the_next_packet_for_fec() {
        let mut jb = JitterBuffer::new(2, 50);
        jb.push(1, 1);
        jb.push(3, 3);
        jb.push(4, 4);
        assert_eq!(jb.pop(), Playout::Packet(1));
        assert_eq!(jb.pop(), Playout::Lost { next: Some(3) });
        assert_eq!(jb.pop(), Playout::Packet(3));
        assert_eq!(jb.lost, 1);
        // A packet older than the playout point is late, and dropped.
        jb.push(2, 2);
        assert_eq!(jb.late, 1);
        assert_eq!(jb.pop(), Playout::Packet(4));
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut jb = JitterBuffer::new(1, 50);
        for (i, seq) in [65534u16, 65535, 0, 1].into_iter().enumerate() {
            jb.push(seq, i);
        }
        let got: Vec<_> = (0..4).map(|_| jb.pop()).collect();
        assert_eq!(got, (0..4).map(Playout::Packet).collect::<Vec<_>>());
    }

    #[test]
    fn overflow_drops_the_oldest() {
        let mut jb = JitterBuffer::new(2, 4);
        for s in 0..10u16 {
            jb.push(s, s);
        }
        assert_eq!(jb.len(), 4);
        assert_eq!(jb.pop(), Playout::Packet(6));
    }
}
