//! Reassembly of IPv4 fragments sent by the guest. Linux fragments UDP and ICMP
//! datagrams larger than the MTU (TCP sets DF and uses path MTU discovery), so a guest
//! that answers a large datagram on a published UDP port sends fragments.
//!
//! The guest is hostile, so everything is bounded: at most `MAX_DATAGRAMS` datagrams in
//! progress and `MAX_BYTES` buffered in all, each finished within `TIMEOUT` or dropped.
//! Overlapping fragments discard the whole datagram (as RFC 5722 asks for IPv6), so no
//! choice between two versions of the same bytes is ever made.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use smoltcp::wire::Ipv4Packet;

pub const MAX_DATAGRAMS: usize = 64;
pub const MAX_BYTES: usize = 1 << 20;
pub const TIMEOUT: Duration = Duration::from_secs(5);
const IP_MAX: usize = 65_535;

type Key = (Ipv4Addr, Ipv4Addr, u8, u16);

struct Partial {
    started: Instant,
    /// The IPv4 header (with options) of the fragment at offset 0, once seen.
    header: Option<Vec<u8>>,
    data: Vec<u8>,
    /// Byte ranges of the payload received so far, unordered and disjoint.
    have: Vec<(usize, usize)>,
    /// Payload length, known once the last fragment (MF clear) arrived.
    total: Option<usize>,
}

/// What happened to one fragment.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Kept; the datagram is not complete yet.
    Pending,
    /// The datagram is complete: a whole IPv4 packet (offset 0, MF clear, fresh checksum).
    Complete(Vec<u8>),
    /// Dropped (malformed, overlapping, too large, or over a limit).
    Dropped,
}

#[derive(Default)]
pub struct Reassembler {
    pending: HashMap<Key, Partial>,
    bytes: usize,
}

impl Reassembler {
    /// Datagrams in progress (for tests and stats).
    pub fn in_progress(&self) -> usize {
        self.pending.len()
    }

    /// Bytes buffered for datagrams in progress.
    pub fn buffered(&self) -> usize {
        self.bytes
    }

    /// Takes one fragment: `pkt` is a checked IPv4 packet (header checksum verified by the
    /// caller) with MF set or a non-zero offset.
    pub fn push(&mut self, now: Instant, pkt: &[u8]) -> Outcome {
        self.expire(now);
        let Ok(ip) = Ipv4Packet::new_checked(pkt) else {
            return Outcome::Dropped;
        };
        let hlen = ip.header_len() as usize;
        let payload = &pkt[hlen..ip.total_len() as usize];
        let start = ip.frag_offset() as usize;
        let end = start + payload.len();
        let last = !ip.more_frags();
        // Every fragment but the last carries a multiple of 8 bytes; nothing may pass
        // the largest IPv4 datagram.
        if (!last && !payload.len().is_multiple_of(8)) || payload.is_empty() || hlen + end > IP_MAX
        {
            return Outcome::Dropped;
        }
        let key = (
            ip.src_addr(),
            ip.dst_addr(),
            u8::from(ip.next_header()),
            ip.ident(),
        );
        if !self.pending.contains_key(&key)
            && (self.pending.len() >= MAX_DATAGRAMS || self.bytes + end > MAX_BYTES)
        {
            return Outcome::Dropped;
        }
        let p = self.pending.entry(key).or_insert_with(|| Partial {
            started: now,
            header: None,
            data: Vec::new(),
            have: Vec::new(),
            total: None,
        });
        let bad = p.have.iter().any(|&(a, b)| start < b && a < end)
            || (last && p.total.is_some())
            || p.total.is_some_and(|t| end > t)
            || (last && p.have.iter().any(|&(_, b)| b > end));
        let grow = end.saturating_sub(p.data.len());
        if bad || self.bytes + grow > MAX_BYTES {
            return self.discard(&key);
        }
        if p.data.len() < end {
            p.data.resize(end, 0);
        }
        self.bytes += grow;
        p.data[start..end].copy_from_slice(payload);
        p.have.push((start, end));
        if start == 0 {
            p.header = Some(pkt[..hlen].to_vec());
        }
        if last {
            p.total = Some(end);
        }
        let complete = match (p.total, &p.header) {
            (Some(t), Some(_)) => p.have.iter().map(|&(a, b)| b - a).sum::<usize>() == t,
            _ => false,
        };
        if !complete {
            return Outcome::Pending;
        }
        let p = self.pending.remove(&key).expect("present");
        self.bytes -= p.data.len();
        let mut out = p.header.expect("complete");
        out.extend_from_slice(&p.data);
        let mut ip = Ipv4Packet::new_unchecked(&mut out[..]);
        ip.set_total_len((hlen + p.data.len()) as u16);
        ip.set_more_frags(false);
        ip.set_frag_offset(0);
        ip.fill_checksum();
        Outcome::Complete(out)
    }

    fn discard(&mut self, key: &Key) -> Outcome {
        if let Some(p) = self.pending.remove(key) {
            self.bytes -= p.data.len();
        }
        Outcome::Dropped
    }

    /// Drops datagrams older than `TIMEOUT`.
    pub fn expire(&mut self, now: Instant) {
        let before = self.pending.len();
        let mut freed = 0;
        self.pending.retain(|_, p| {
            let keep = now.duration_since(p.started) < TIMEOUT;
            if !keep {
                freed += p.data.len();
            }
            keep
        });
        if self.pending.len() != before {
            self.bytes -= freed;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::IpProtocol;

    const SRC: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    const DST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

    fn frag(ident: u16, offset: usize, more: bool, payload: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 20 + payload.len()];
        let mut ip = Ipv4Packet::new_unchecked(&mut b[..]);
        ip.set_version(4);
        ip.set_header_len(20);
        ip.set_total_len((20 + payload.len()) as u16);
        ip.set_ident(ident);
        ip.set_more_frags(more);
        ip.set_frag_offset(offset as u16);
        ip.set_hop_limit(64);
        ip.set_next_header(IpProtocol::Udp);
        ip.set_src_addr(SRC);
        ip.set_dst_addr(DST);
        ip.fill_checksum();
        b[20..].copy_from_slice(payload);
        b
    }

    fn body(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn reassembles_in_any_order() {
        let data = body(3000);
        let parts = [(0, 1480), (1480, 2960), (2960, 3000)];
        for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0]] {
            let mut r = Reassembler::default();
            let now = Instant::now();
            let mut out = None;
            for (n, &i) in order.iter().enumerate() {
                let (a, b) = parts[i];
                let res = r.push(now, &frag(9, a, i != 2, &data[a..b]));
                if n < 2 {
                    assert_eq!(res, Outcome::Pending);
                } else {
                    out = Some(res);
                }
            }
            let Some(Outcome::Complete(pkt)) = out else {
                panic!("not complete: {out:?}");
            };
            let ip = Ipv4Packet::new_checked(&pkt[..]).unwrap();
            assert!(ip.verify_checksum());
            assert!(!ip.more_frags());
            assert_eq!(ip.frag_offset(), 0);
            assert_eq!(ip.payload(), &data[..]);
            assert_eq!((r.in_progress(), r.buffered()), (0, 0));
        }
    }

    #[test]
    fn overlap_discards_the_datagram() {
        let mut r = Reassembler::default();
        let now = Instant::now();
        assert_eq!(r.push(now, &frag(1, 0, true, &[1; 16])), Outcome::Pending);
        assert_eq!(r.push(now, &frag(1, 8, true, &[2; 16])), Outcome::Dropped);
        assert_eq!((r.in_progress(), r.buffered()), (0, 0));
        // a second last fragment, or data past the end, also discards it
        assert_eq!(r.push(now, &frag(2, 16, false, &[1; 8])), Outcome::Pending);
        assert_eq!(r.push(now, &frag(2, 32, false, &[1; 8])), Outcome::Dropped);
        assert_eq!(r.push(now, &frag(3, 16, false, &[1; 8])), Outcome::Pending);
        assert_eq!(r.push(now, &frag(3, 24, true, &[1; 8])), Outcome::Dropped);
        assert_eq!(r.in_progress(), 0);
    }

    #[test]
    fn malformed_fragments_are_dropped() {
        let mut r = Reassembler::default();
        let now = Instant::now();
        assert_eq!(r.push(now, &frag(1, 0, true, &[1; 12])), Outcome::Dropped); // not 8-aligned
        assert_eq!(r.push(now, &frag(1, 8, true, &[])), Outcome::Dropped); // empty
        assert_eq!(
            r.push(now, &frag(1, 65528, false, &[1; 16])),
            Outcome::Dropped
        ); // > 64 KiB
        assert_eq!(r.push(now, &[0x45, 0, 0]), Outcome::Dropped); // truncated
        assert_eq!(r.in_progress(), 0);
    }

    #[test]
    fn limits_and_timeout_bound_memory() {
        let mut r = Reassembler::default();
        let now = Instant::now();
        for id in 0..1000u16 {
            r.push(now, &frag(id, 1480, true, &[0; 1480]));
        }
        assert_eq!(r.in_progress(), MAX_DATAGRAMS);
        assert!(r.buffered() <= MAX_BYTES);
        // one datagram cannot exceed the byte budget either
        let mut r2 = Reassembler::default();
        for off in (0..60_000).step_by(1480) {
            r2.push(now, &frag(5, off, true, &[0; 1480]));
        }
        assert!(r2.buffered() <= MAX_BYTES);
        r.expire(now + TIMEOUT);
        assert_eq!((r.in_progress(), r.buffered()), (0, 0));
        // a datagram completes after others expired
        assert_eq!(
            r.push(now + TIMEOUT, &frag(7, 0, true, &[3; 8])),
            Outcome::Pending
        );
        assert!(matches!(
            r.push(now + TIMEOUT, &frag(7, 8, false, &[4; 3])),
            Outcome::Complete(p) if p[20..] == [3, 3, 3, 3, 3, 3, 3, 3, 4, 4, 4]
        ));
    }
}
