//! Which worker owns a datagram that came to the one media port. Every ICE
//! session starts with a STUN binding request whose USERNAME begins with
//! our ufrag, which names the peer and so its worker; the source address
//! it came from is learnt then, and later datagrams (DTLS, SRTP, RTCP) from
//! that address go to the same worker. A STUN request always routes by its
//! USERNAME, so an address that moves to a new session moves with it.
//!
//! The USERNAME walk is written here (RFC 8489 §5, §14): the only STUN
//! parser at hand is str0m's, which it does not export as API.

use std::collections::HashMap;
use std::net::SocketAddr;

/// STUN's magic cookie (RFC 8489 §5).
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
const ATTR_USERNAME: u16 = 0x0006;
/// Addresses one peer may be heard from (its candidate pairs).
const ADDRS_PER_UFRAG: usize = 8;

/// Our ufrag from a STUN message's USERNAME (`ours:theirs`), if `data` is
/// a well-formed STUN message that has one.
pub fn stun_local_ufrag(data: &[u8]) -> Option<&str> {
    // RFC 7983: a first byte of 0..=3 is STUN; the cookie confirms it.
    if data.len() < 20 || data[0] > 3 || data[4..8] != MAGIC_COOKIE {
        return None;
    }
    let declared = u16::from_be_bytes([data[2], data[3]]) as usize;
    let body = data.get(20..20 + declared)?;
    let mut at = 0;
    while at + 4 <= body.len() {
        let kind = u16::from_be_bytes([body[at], body[at + 1]]);
        let len = u16::from_be_bytes([body[at + 2], body[at + 3]]) as usize;
        let value = body.get(at + 4..at + 4 + len)?;
        if kind == ATTR_USERNAME {
            let username = std::str::from_utf8(value).ok()?;
            return username.split(':').next().filter(|u| !u.is_empty());
        }
        at += 4 + len.div_ceil(4) * 4;
    }
    None
}

/// The route table: our ufrags and the addresses learnt from them.
#[derive(Debug, Default)]
pub struct Demux {
    ufrags: HashMap<String, Owner>,
    /// Address -> (worker, the owning session's serial).
    addrs: HashMap<SocketAddr, (usize, u64)>,
    next_serial: u64,
}

#[derive(Debug)]
struct Owner {
    worker: usize,
    serial: u64,
    addrs: Vec<SocketAddr>,
}

impl Demux {
    /// A peer with ICE ufrag `ufrag` lives on `worker`.
    pub fn add(&mut self, ufrag: String, worker: usize) {
        self.next_serial += 1;
        let owner = Owner {
            worker,
            serial: self.next_serial,
            addrs: Vec::new(),
        };
        if let Some(old) = self.ufrags.insert(ufrag, owner) {
            self.forget(&old);
        }
    }

    /// The peer is gone: forget it and every address learnt from it.
    pub fn remove(&mut self, ufrag: &str) {
        if let Some(owner) = self.ufrags.remove(ufrag) {
            self.forget(&owner);
        }
    }

    /// Drop the addresses still learnt from `owner` (not those a later
    /// session took over).
    fn forget(&mut self, owner: &Owner) {
        for a in &owner.addrs {
            if self.addrs.get(a).is_some_and(|(_, s)| *s == owner.serial) {
                self.addrs.remove(a);
            }
        }
    }

    /// The worker for a datagram from `source`, or `None` (dropped).
    pub fn route(&mut self, source: SocketAddr, data: &[u8]) -> Option<usize> {
        let Some(ufrag) = stun_local_ufrag(data) else {
            return self.addrs.get(&source).map(|(w, _)| *w);
        };
        let owner = self.ufrags.get_mut(ufrag)?;
        if !owner.addrs.contains(&source) {
            if owner.addrs.len() == ADDRS_PER_UFRAG {
                let old = owner.addrs.remove(0);
                if self
                    .addrs
                    .get(&old)
                    .is_some_and(|(_, s)| *s == owner.serial)
                {
                    self.addrs.remove(&old);
                }
            }
            owner.addrs.push(source);
        }
        self.addrs.insert(source, (owner.worker, owner.serial));
        Some(owner.worker)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binding request with `USERNAME = username`, after another attribute.
    fn binding(username: &str) -> Vec<u8> {
        let mut attrs = Vec::new();
        // PRIORITY first, so the walk has to step over an attribute.
        attrs.extend([0x00, 0x24, 0x00, 0x04, 1, 2, 3, 4]);
        attrs.extend(ATTR_USERNAME.to_be_bytes());
        attrs.extend((username.len() as u16).to_be_bytes());
        attrs.extend(username.as_bytes());
        attrs.resize(attrs.len().div_ceil(4) * 4, 0);
        let mut m = vec![0x00, 0x01];
        m.extend((attrs.len() as u16).to_be_bytes());
        m.extend(MAGIC_COOKIE);
        m.extend([7u8; 12]);
        m.extend(attrs);
        m
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn username_gives_our_ufrag() {
        assert_eq!(stun_local_ufrag(&binding("abcd:wxyz")), Some("abcd"));
        assert_eq!(stun_local_ufrag(&binding("abc:w")), Some("abc"));
    }

    #[test]
    fn malformed_stun_routes_nowhere() {
        let good = binding("abcd:wxyz");
        for n in 0..good.len() {
            // Every truncation is refused, none panics.
            assert_eq!(stun_local_ufrag(&good[..n]), None, "cut at {n}");
        }
        let mut no_cookie = good.clone();
        no_cookie[4] = 0;
        assert_eq!(stun_local_ufrag(&no_cookie), None);
        let mut huge_attr = good.clone();
        huge_attr[30] = 0xff;
        assert_eq!(stun_local_ufrag(&huge_attr), None);
        assert_eq!(stun_local_ufrag(&binding(":x")), None);
        // RTP (first byte 0x80) is never taken for STUN.
        let mut rtp = good;
        rtp[0] = 0x80;
        assert_eq!(stun_local_ufrag(&rtp), None);
    }

    /// STUN teaches the address; media from it follows; forgetting the
    /// peer forgets the address.
    #[test]
    fn addresses_follow_their_sessions() {
        let mut d = Demux::default();
        d.add("aaaa".into(), 0);
        d.add("bbbb".into(), 1);
        let media = [0x80u8, 96, 0, 1];
        assert_eq!(d.route(addr(5000), &media), None);
        assert_eq!(d.route(addr(5000), &binding("aaaa:c")), Some(0));
        assert_eq!(d.route(addr(5000), &media), Some(0));
        assert_eq!(d.route(addr(6000), &binding("bbbb:c")), Some(1));
        assert_eq!(d.route(addr(6000), &media), Some(1));
        assert_eq!(d.route(addr(7000), &binding("zzzz:c")), None);
        // The client reuses its port for a session on the other worker.
        assert_eq!(d.route(addr(5000), &binding("bbbb:c")), Some(1));
        assert_eq!(d.route(addr(5000), &media), Some(1));
        d.remove("bbbb");
        assert_eq!(d.route(addr(6000), &media), None);
        assert_eq!(d.route(addr(5000), &media), None);
        assert_eq!(d.ufrags.len(), 1);
    }

    #[test]
    fn a_peer_keeps_a_bounded_number_of_addresses() {
        let mut d = Demux::default();
        d.add("aaaa".into(), 0);
        for port in 0..100 {
            assert_eq!(d.route(addr(port), &binding("aaaa:c")), Some(0));
        }
        assert_eq!(d.addrs.len(), ADDRS_PER_UFRAG);
        assert_eq!(d.route(addr(99), &[0x80]), Some(0));
        assert_eq!(d.route(addr(0), &[0x80]), None);
    }
}
