//! Guest frames in (Ethernet, ARP, the IPv4 checks, reassembly of fragments, then one
//! protocol module per IP protocol) and frames the stack writes itself out.

use std::sync::atomic::Ordering;
use std::time::Instant;

use smoltcp::wire::{
    ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet,
};

use super::Stack;
use crate::frag;
use crate::packet::ETH_HDR;

/// Bytes of frames the stack wrote itself that may wait for room in the writer's queue.
const OVERFLOW_BYTES: usize = 1 << 20;

impl Stack {
    pub(super) fn handle_frame(&mut self, buf: Vec<u8>) {
        self.shared
            .tx_bytes
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        let Ok(eth) = EthernetFrame::new_checked(&buf[..]) else {
            return self.drop_frame();
        };
        let src_mac = eth.src_addr();
        match eth.ethertype() {
            EthernetProtocol::Arp => {
                let ok = ArpPacket::new_checked(eth.payload())
                    .ok()
                    .and_then(|p| ArpRepr::parse(&p).ok())
                    .is_some_and(|r| match r {
                        ArpRepr::EthernetIpv4 {
                            source_protocol_addr,
                            target_protocol_addr,
                            ..
                        } => {
                            source_protocol_addr == self.cfg.guest_ip
                                && target_protocol_addr != self.cfg.guest_ip
                        }
                        _ => false,
                    });
                if ok && src_mac.is_unicast() {
                    self.learn_guest_mac(src_mac);
                    self.dev.queue_rx(buf);
                } else {
                    self.drop_frame();
                }
            }
            EthernetProtocol::Ipv4 => self.handle_ipv4(buf, src_mac),
            _ => self.drop_frame(),
        }
    }

    fn handle_ipv4(&mut self, buf: Vec<u8>, src_mac: EthernetAddress) {
        let Ok(ip) = Ipv4Packet::new_checked(&buf[ETH_HDR..]) else {
            return self.drop_frame();
        };
        if ip.version() != 4 || !ip.verify_checksum() || ip.src_addr() != self.cfg.guest_ip {
            return self.drop_frame();
        }
        if ip.more_frags() || ip.frag_offset() != 0 {
            // Large UDP/ICMP datagrams arrive fragmented (TCP sets DF): reassemble, then
            // handle the whole packet as if it had come in one frame.
            let end = ETH_HDR + ip.total_len() as usize;
            return match self.frags.push(Instant::now(), &buf[ETH_HDR..end]) {
                frag::Outcome::Complete(pkt) => {
                    let mut whole = Vec::with_capacity(ETH_HDR + pkt.len());
                    whole.extend_from_slice(&buf[..ETH_HDR]);
                    whole.extend_from_slice(&pkt);
                    self.handle_ipv4(whole, src_mac)
                }
                frag::Outcome::Pending => {}
                frag::Outcome::Dropped => self.drop_frame(),
            };
        }
        self.learn_guest_mac(src_mac);
        let dst = ip.dst_addr();
        if dst.is_broadcast()
            || dst.is_multicast()
            || dst.is_unspecified()
            || dst == self.cfg.guest_ip
        {
            return self.drop_frame();
        }
        let ip_len = ip.total_len() as usize;
        match ip.next_header() {
            IpProtocol::Tcp => self.handle_tcp(buf, ip_len, dst),
            IpProtocol::Udp => self.handle_udp(buf, ip_len, dst),
            IpProtocol::Icmp => self.handle_icmp(buf, ip_len, dst),
            _ => self.drop_frame(),
        }
    }

    /// Tell smoltcp the guest's MAC (as if the guest had answered an ARP request), so
    /// that it never has to ask: smoltcp sends at most one ARP request per second, which
    /// would stall flows after its cache entry expires. Repeated from housekeeping.
    pub(super) fn prime_neighbor(&mut self) {
        let repr = ArpRepr::EthernetIpv4 {
            operation: smoltcp::wire::ArpOperation::Reply,
            source_hardware_addr: self.link.dst,
            source_protocol_addr: self.cfg.guest_ip,
            target_hardware_addr: self.link.src,
            target_protocol_addr: self.cfg.gateway_ip,
        };
        let mut buf = vec![0u8; ETH_HDR + repr.buffer_len()];
        let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
        eth.set_src_addr(self.link.dst);
        eth.set_dst_addr(self.link.src);
        eth.set_ethertype(EthernetProtocol::Arp);
        repr.emit(&mut ArpPacket::new_unchecked(eth.payload_mut()));
        self.dev.queue_rx(buf);
        self.last_prime = Instant::now();
    }

    fn learn_guest_mac(&mut self, mac: EthernetAddress) {
        if mac.is_unicast() && mac != self.link.dst {
            self.link.dst = mac;
            self.prime_neighbor();
        }
    }

    /// Queue a frame the stack wrote itself. When the writer's queue is full it waits in a
    /// bounded overflow queue (so a burst of resets is not lost); beyond that it is dropped.
    pub(super) fn emit(&mut self, frame: Vec<u8>) {
        if self.overflow.is_empty() {
            if let Err(e) = self.dev.out.try_send(frame) {
                self.shared.tx_blocked.store(true, Ordering::Relaxed);
                let frame = e.into_inner();
                self.overflow_bytes += frame.len();
                self.overflow.push_back(frame);
            }
        } else if self.overflow_bytes + frame.len() <= OVERFLOW_BYTES {
            self.overflow_bytes += frame.len();
            self.overflow.push_back(frame);
        }
    }

    pub(super) fn flush_overflow(&mut self) {
        while let Some(f) = self.overflow.pop_front() {
            let len = f.len();
            match self.dev.out.try_send(f) {
                Ok(()) => self.overflow_bytes -= len,
                Err(e) => {
                    self.shared.tx_blocked.store(true, Ordering::Relaxed);
                    self.overflow.push_front(e.into_inner());
                    return;
                }
            }
        }
    }

    /// A guest frame dropped as malformed or unsupported.
    pub(super) fn drop_frame(&self) {
        self.shared.dropped_frames.fetch_add(1, Ordering::Relaxed);
    }
}
