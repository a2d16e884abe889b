//! Batched UDP for the SFU: `recvmmsg` takes in up to [`RECV_BATCH`]
//! datagrams per call, and `sendmmsg` sends everything one pass of the
//! forwarding loop produced in one call, with each run of datagrams to one
//! address folded into one UDP GSO message (`UDP_SEGMENT`) where the kernel
//! has it.
//!
//! Written on libc rather than a crate: nix's `sendmmsg` gives every message
//! the same control messages and quinn-udp sends one message per call, while
//! a fan-out needs its own segment size per message, in one call. The
//! grouping ([`plan`]) is pure and tested on its own.

use std::collections::HashMap;
use std::io;
use std::mem::{size_of, zeroed};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Datagrams taken in per `recvmmsg` call.
pub const RECV_BATCH: usize = 32;
/// Segments the kernel takes in one GSO message (`UDP_MAX_SEGMENTS`).
const MAX_SEGMENTS: usize = 64;
/// Bytes in one GSO message: an IPv4 datagram's limit, less headers.
const MAX_GSO_BYTES: usize = 65_000;
/// Messages (and iovecs in a message) per `sendmmsg` call (`UIO_MAXIOV`).
const MAX_MESSAGES: usize = 1024;
/// Sent datagrams' buffers kept for reuse: more than a flush's worth (one
/// holds a few hundred), at most about 1.5 MB of MTU-sized buffers.
pub const SPARE_BUFFERS: usize = 1024;

/// One GSO message: `count` datagrams of `segment` bytes (the last may be
/// shorter) to one address, `order[start..start + count]` in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Group {
    pub start: usize,
    pub count: usize,
    pub segment: usize,
}

/// The messages for datagrams `(destination, length)` in queue order:
/// `order` lists queue indices so that each destination's datagrams stay in
/// their order and sit together; `groups` cut `order` into messages. A run
/// ends at a new destination, a datagram longer than the run's first (or
/// after a shorter one: only the last may be short), or the kernel's limits.
/// Without `gso` every datagram is its own message. `rank` is scratch
/// space, the caller's, kept between calls.
pub fn plan(
    datagrams: &[(SocketAddr, usize)],
    gso: bool,
    order: &mut Vec<usize>,
    groups: &mut Vec<Group>,
    rank: &mut HashMap<SocketAddr, usize>,
) {
    order.clear();
    groups.clear();
    rank.clear();
    for (i, (dest, _)) in datagrams.iter().enumerate() {
        let next = rank.len();
        let r = *rank.entry(*dest).or_insert(next);
        order.push(r * datagrams.len() + i);
    }
    // Sorting by (destination rank, index) keeps each destination's order.
    order.sort_unstable();
    order.iter_mut().for_each(|k| *k %= datagrams.len().max(1));
    for (pos, &i) in order.iter().enumerate() {
        let (dest, len) = datagrams[i];
        if let Some(g) = groups.last_mut() {
            let (first_dest, _) = datagrams[order[g.start]];
            let last_len = datagrams[order[g.start + g.count - 1]].1;
            let fits = gso
                && first_dest == dest
                && len <= g.segment
                && last_len == g.segment
                && g.count < MAX_SEGMENTS
                && g.segment * (g.count + 1) <= MAX_GSO_BYTES;
            if fits {
                g.count += 1;
                continue;
            }
        }
        groups.push(Group {
            start: pos,
            count: 1,
            segment: len,
        });
    }
}

/// Whether this kernel takes `UDP_SEGMENT` on `socket` (Linux 4.18+).
pub fn gso_supported(socket: BorrowedFd) -> bool {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a valid fd, and value/len describe a c_int.
    let r = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    r == 0
}

/// Socket buffers the media port asks for: a burst of hundreds of
/// datagrams (a keyframe fanned out, many publishers at once) must queue,
/// not drop.
pub const SOCKET_BUFFER: usize = 8 << 20;

/// Ask for [`SOCKET_BUFFER`] each way: past `net.core.rmem_max` with
/// CAP_NET_ADMIN (`SO_*BUFFORCE`), else as far as the sysctl allows.
/// Returns what the kernel gave (receive, send), in bytes.
pub fn grow_buffers(socket: &std::net::UdpSocket) -> (usize, usize) {
    let s = socket2::SockRef::from(socket);
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        let size = SOCKET_BUFFER as libc::c_int;
        let set = |option| {
            // SAFETY: a valid fd, and an int option value.
            unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::SOL_SOCKET,
                    option,
                    (&size as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            }
        };
        if set(force) != 0 {
            set(plain);
        }
    }
    (
        s.recv_buffer_size().unwrap_or(0),
        s.send_buffer_size().unwrap_or(0),
    )
}

/// What one flush did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// Datagrams the kernel took.
    pub datagrams: usize,
    /// Datagrams dropped: a full socket buffer, or refused by the kernel.
    pub dropped: usize,
    /// `sendmmsg` calls made.
    pub calls: usize,
    /// Messages the kernel took: a GSO message carries several datagrams.
    pub messages: usize,
}

/// Outgoing datagrams of one pass, sent together by [`TxQueue::flush`].
/// Its buffers are kept between flushes, and so are the datagrams' own
/// (up to [`SPARE_BUFFERS`]) for [`TxQueue::buffer`]: a caller that fills
/// those allocates nothing per datagram.
#[derive(Default)]
pub struct TxQueue {
    datagrams: Vec<(SocketAddr, Vec<u8>)>,
    spare: Vec<Vec<u8>>,
    shape: Vec<(SocketAddr, usize)>,
    order: Vec<usize>,
    groups: Vec<Group>,
    rank: HashMap<SocketAddr, usize>,
    /// Off after the kernel refuses a GSO message (`EIO`: no checksum offload).
    gso: bool,
}

impl TxQueue {
    pub fn new(gso: bool) -> Self {
        TxQueue {
            gso,
            ..TxQueue::default()
        }
    }

    pub fn push(&mut self, destination: SocketAddr, contents: Vec<u8>) {
        self.datagrams.push((destination, contents));
    }

    /// An empty buffer for a datagram: one a flush sent, when there is one.
    pub fn buffer(&mut self) -> Vec<u8> {
        self.spare.pop().unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.datagrams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.datagrams.is_empty()
    }

    /// Send everything queued, in as few calls as the kernel allows. A full
    /// socket buffer drops what is left, as the network would.
    pub fn flush(&mut self, socket: BorrowedFd) -> Sent {
        let mut sent = Sent::default();
        if self.datagrams.is_empty() {
            return sent;
        }
        self.shape.clear();
        self.shape
            .extend(self.datagrams.iter().map(|(d, c)| (*d, c.len())));
        plan(
            &self.shape,
            self.gso,
            &mut self.order,
            &mut self.groups,
            &mut self.rank,
        );
        let mut next = 0;
        while next < self.groups.len() {
            let end = (next + MAX_MESSAGES).min(self.groups.len());
            match send_groups(
                socket,
                &self.datagrams,
                &self.order,
                &self.groups[next..end],
            ) {
                Ok(0) => {
                    sent.dropped += self.remaining(next);
                    break;
                }
                Ok(n) => {
                    sent.calls += 1;
                    sent.messages += n;
                    sent.datagrams += self.groups[next..next + n]
                        .iter()
                        .map(|g| g.count)
                        .sum::<usize>();
                    next += n;
                }
                Err(e) if e.raw_os_error() == Some(libc::EIO) && self.gso => {
                    log::warn!("UDP GSO refused by the kernel ({e}); sending datagrams one by one");
                    self.gso = false;
                    self.split_from(next);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    sent.dropped += self.remaining(next);
                    break;
                }
                Err(_) => {
                    // This message was refused (say, an ICMP error queued for it): skip it.
                    sent.calls += 1;
                    sent.dropped += self.groups[next].count;
                    next += 1;
                }
            }
        }
        for (_, mut buf) in self.datagrams.drain(..) {
            if self.spare.len() < SPARE_BUFFERS {
                buf.clear();
                self.spare.push(buf);
            }
        }
        sent
    }

    /// Messages `from` on, one datagram each (earlier ones were sent).
    fn split_from(&mut self, from: usize) {
        let rest: Vec<Group> = self.groups.drain(from..).collect();
        for g in rest {
            self.groups
                .extend((g.start..g.start + g.count).map(|pos| Group {
                    start: pos,
                    count: 1,
                    segment: self.shape[self.order[pos]].1,
                }));
        }
    }

    fn remaining(&self, from: usize) -> usize {
        self.groups[from..].iter().map(|g| g.count).sum()
    }
}

/// Room for one `UDP_SEGMENT` control message, aligned for `cmsghdr`.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct SegmentCmsg([u8; 32]);

/// One `sendmmsg` call for `groups`; how many messages the kernel took.
fn send_groups(
    socket: BorrowedFd,
    datagrams: &[(SocketAddr, Vec<u8>)],
    order: &[usize],
    groups: &[Group],
) -> io::Result<usize> {
    let first = groups[0].start;
    let last = groups[groups.len() - 1];
    let iovecs: Vec<libc::iovec> = order[first..last.start + last.count]
        .iter()
        .map(|&i| libc::iovec {
            iov_base: datagrams[i].1.as_ptr() as *mut libc::c_void,
            iov_len: datagrams[i].1.len(),
        })
        .collect();
    let addrs: Vec<socket2::SockAddr> = groups
        .iter()
        .map(|g| socket2::SockAddr::from(datagrams[order[g.start]].0))
        .collect();
    let mut cmsgs = vec![SegmentCmsg([0; 32]); groups.len()];
    // SAFETY: an all-zero mmsghdr is a valid empty message.
    let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { zeroed() }; groups.len()];
    for (k, g) in groups.iter().enumerate() {
        let hdr = &mut msgs[k].msg_hdr;
        // sendmsg only reads the address.
        hdr.msg_name = addrs[k].as_ptr() as *mut libc::c_void;
        hdr.msg_namelen = addrs[k].len();
        hdr.msg_iov = iovecs[g.start - first..].as_ptr() as *mut libc::iovec;
        hdr.msg_iovlen = g.count as _;
        if g.count > 1 {
            set_segment(hdr, &mut cmsgs[k], g.segment as u16);
        }
    }
    // SAFETY: every pointer in msgs points into iovecs, addrs, cmsgs and
    // datagrams, which all outlive the call.
    let r = unsafe {
        libc::sendmmsg(
            socket.as_raw_fd(),
            msgs.as_mut_ptr(),
            msgs.len() as libc::c_uint,
            libc::MSG_DONTWAIT,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// Attach `UDP_SEGMENT = segment` to `hdr`, in `space`.
fn set_segment(hdr: &mut libc::msghdr, space: &mut SegmentCmsg, segment: u16) {
    // SAFETY: CMSG_SPACE(2) is 24 on 64-bit and 16 on 32-bit targets, within
    // the 32 bytes of `space`; CMSG_FIRSTHDR is non-null for that length.
    unsafe {
        hdr.msg_control = space.0.as_mut_ptr().cast();
        hdr.msg_controllen = libc::CMSG_SPACE(size_of::<u16>() as u32) as _;
        let cmsg = libc::CMSG_FIRSTHDR(hdr);
        (*cmsg).cmsg_level = libc::SOL_UDP;
        (*cmsg).cmsg_type = libc::UDP_SEGMENT;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), segment);
    }
}

/// Buffers for one `recvmmsg` call, kept between calls.
pub struct RecvBatch {
    buf: Vec<u8>,
    slot: usize,
    lens: [usize; RECV_BATCH],
    sources: [Option<SocketAddr>; RECV_BATCH],
    count: usize,
}

impl RecvBatch {
    /// Slots of `max_datagram + 1` bytes: one over tells a larger datagram apart.
    pub fn new(max_datagram: usize) -> Self {
        let slot = max_datagram + 1;
        RecvBatch {
            buf: vec![0; slot * RECV_BATCH],
            slot,
            lens: [0; RECV_BATCH],
            sources: [None; RECV_BATCH],
            count: 0,
        }
    }

    /// The datagrams of the last call: `(source, contents)`; contents one
    /// byte longer than the maximum were truncated.
    pub fn iter(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> {
        (0..self.count).filter_map(|i| {
            let source = self.sources[i]?;
            Some((
                source,
                &self.buf[i * self.slot..i * self.slot + self.lens[i]],
            ))
        })
    }

    /// Take in what is waiting, without blocking: how many datagrams came.
    pub fn recv(&mut self, socket: BorrowedFd) -> io::Result<usize> {
        // SAFETY: all-zero storage and headers are valid; each header points
        // at its own slot of `buf`, its own iovec and storage, all alive
        // across the call.
        let mut storage: [socket2::SockAddrStorage; RECV_BATCH] =
            std::array::from_fn(|_| socket2::SockAddrStorage::zeroed());
        let mut iovecs: Vec<libc::iovec> = self
            .buf
            .chunks_exact_mut(self.slot)
            .map(|s| libc::iovec {
                iov_base: s.as_mut_ptr().cast(),
                iov_len: s.len(),
            })
            .collect();
        let mut msgs: [libc::mmsghdr; RECV_BATCH] = unsafe { zeroed() };
        for (k, m) in msgs.iter_mut().enumerate() {
            m.msg_hdr.msg_namelen = storage[k].size_of();
            m.msg_hdr.msg_name = (&mut storage[k] as *mut socket2::SockAddrStorage).cast();
            m.msg_hdr.msg_iov = &mut iovecs[k];
            m.msg_hdr.msg_iovlen = 1;
        }
        let r = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                msgs.as_mut_ptr(),
                RECV_BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            self.count = 0;
            return Err(io::Error::last_os_error());
        }
        self.count = r as usize;
        for k in 0..self.count {
            self.lens[k] = msgs[k].msg_len as usize;
            // SAFETY: the kernel filled msg_namelen bytes of storage[k].
            let filled = std::mem::replace(&mut storage[k], socket2::SockAddrStorage::zeroed());
            let addr = unsafe { socket2::SockAddr::new(filled, msgs[k].msg_hdr.msg_namelen) };
            self.sources[k] = addr.as_socket();
        }
        Ok(self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn groups_of(datagrams: &[(SocketAddr, usize)], gso: bool) -> (Vec<usize>, Vec<Group>) {
        let (mut order, mut groups) = (Vec::new(), Vec::new());
        plan(datagrams, gso, &mut order, &mut groups, &mut HashMap::new());
        (order, groups)
    }

    /// A frame's packets fanned out to two subscribers, interleaved as the
    /// forwarding loop makes them: one message per subscriber, in order.
    #[test]
    fn fan_out_folds_each_destination_in_order() {
        let d = [
            (addr(1), 1200),
            (addr(2), 1200),
            (addr(1), 1200),
            (addr(2), 1200),
            (addr(1), 300),
            (addr(2), 300),
        ];
        let (order, groups) = groups_of(&d, true);
        assert_eq!(order, vec![0, 2, 4, 1, 3, 5]);
        assert_eq!(
            groups,
            vec![
                Group {
                    start: 0,
                    count: 3,
                    segment: 1200
                },
                Group {
                    start: 3,
                    count: 3,
                    segment: 1200
                },
            ]
        );
    }

    /// Only the last segment may be short, none may be longer than the first.
    #[test]
    fn a_run_breaks_on_a_longer_or_after_a_shorter_datagram() {
        let d = [
            (addr(1), 1000),
            (addr(1), 1200),
            (addr(1), 500),
            (addr(1), 500),
        ];
        let (_, groups) = groups_of(&d, true);
        let shape: Vec<(usize, usize)> = groups.iter().map(|g| (g.count, g.segment)).collect();
        assert_eq!(shape, vec![(1, 1000), (2, 1200), (1, 500)]);
    }

    #[test]
    fn kernel_limits_cap_a_message() {
        let d = vec![(addr(1), 1200); 100];
        let (_, groups) = groups_of(&d, true);
        assert!(groups.iter().all(|g| g.count * g.segment <= MAX_GSO_BYTES));
        assert_eq!(groups.iter().map(|g| g.count).sum::<usize>(), 100);
        let d = vec![(addr(1), 100); 100];
        let (_, groups) = groups_of(&d, true);
        assert_eq!(groups[0].count, MAX_SEGMENTS);
    }

    /// The kernel refusing GSO part way: what was sent stays sent, the
    /// rest becomes one message per datagram, in the same order.
    #[test]
    fn refused_gso_splits_only_what_is_left() {
        let mut q = TxQueue::new(true);
        for (port, len) in [(1, 1200), (1, 1200), (2, 1200), (2, 1200), (2, 300)] {
            q.push(addr(port), vec![0; len]);
        }
        q.shape = q.datagrams.iter().map(|(d, c)| (*d, c.len())).collect();
        plan(&q.shape, true, &mut q.order, &mut q.groups, &mut q.rank);
        assert_eq!(q.groups.len(), 2);
        q.split_from(1);
        let shape: Vec<(usize, usize, usize)> = q
            .groups
            .iter()
            .map(|g| (g.start, g.count, g.segment))
            .collect();
        assert_eq!(
            shape,
            vec![(0, 2, 1200), (2, 1, 1200), (3, 1, 1200), (4, 1, 300)]
        );
        assert_eq!(q.remaining(1), 3);
    }

    #[test]
    fn without_gso_every_datagram_is_a_message() {
        let d = [(addr(1), 1200), (addr(1), 1200), (addr(2), 1200)];
        let (order, groups) = groups_of(&d, false);
        assert_eq!(order, vec![0, 1, 2]);
        assert_eq!(groups.len(), 3);
    }

    /// A burst through the real kernel: every datagram arrives, each
    /// receiver's in order and intact, in far fewer calls than datagrams.
    #[test]
    fn burst_arrives_whole_and_in_order() {
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let rx: Vec<_> = (0..3)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let gso = gso_supported(std::os::fd::AsFd::as_fd(&tx));
        let mut q = TxQueue::new(gso);
        for i in 0..60u32 {
            for r in &rx {
                let len = if i % 5 == 4 { 200 } else { 1200 };
                let mut p = vec![(i % 251) as u8; len];
                p[..4].copy_from_slice(&i.to_be_bytes());
                q.push(r.local_addr().unwrap(), p);
            }
        }
        let sent = q.flush(std::os::fd::AsFd::as_fd(&tx));
        assert_eq!(
            sent,
            Sent {
                datagrams: 180,
                dropped: 0,
                calls: sent.calls,
                messages: sent.messages,
            }
        );
        assert_eq!(sent.calls, 1, "{sent:?}");
        // Each receiver's runs of four 1200-byte datagrams and a 200-byte
        // tail fold into one message each.
        assert_eq!(sent.messages, if gso { 36 } else { 180 }, "{sent:?}");
        for r in &rx {
            r.set_nonblocking(true).unwrap();
            let mut batch = RecvBatch::new(2048);
            let mut seen = Vec::new();
            while let Ok(n) = batch.recv(std::os::fd::AsFd::as_fd(r)) {
                assert!(n > 0);
                for (source, data) in batch.iter() {
                    assert_eq!(source, tx.local_addr().unwrap());
                    let i = u32::from_be_bytes(data[..4].try_into().unwrap());
                    assert_eq!(data.len(), if i % 5 == 4 { 200 } else { 1200 });
                    assert!(data[4..].iter().all(|&b| b == (i % 251) as u8));
                    seen.push(i);
                }
            }
            // Loopback with default buffers holds the burst: nothing lost.
            assert_eq!(seen, (0..60).collect::<Vec<_>>(), "gso {gso}");
        }
    }
}
