//! UDP flows: a guest datagram to a new destination opens a connected host socket (one
//! task per flow, ended after `UDP_IDLE`); datagrams to a published UDP port reach the
//! guest from the host address and an ephemeral port per client.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::Ordering;
use std::time::Instant;

use smoltcp::wire::{Icmpv4DstUnreachable, IpAddress, Ipv4Packet, UdpPacket};
use tokio::sync::mpsc;

use super::{FlowKey, Stack};
use crate::config::{Action, Proto};
use crate::host::{self, UDP_IDLE};
use crate::packet::{self, ETH_HDR};
use crate::policy;

const UDP_QUEUE: usize = 64;

pub(super) struct UdpFlow {
    key: FlowKey,
    tx: mpsc::Sender<Vec<u8>>,
}

/// A published UDP port's client, seen by the guest as host_ip and an ephemeral port.
pub(super) struct InboundUdp {
    idx: usize,
    client: SocketAddr,
    last: Instant,
}

impl Stack {
    pub(super) fn handle_udp(&mut self, buf: Vec<u8>, ip_len: usize, dst: Ipv4Addr) {
        let guest = self.cfg.guest_ip;
        let ip = Ipv4Packet::new_unchecked(&buf[ETH_HDR..ETH_HDR + ip_len]);
        let Ok(udp) = UdpPacket::new_checked(ip.payload()) else {
            return self.drop_frame();
        };
        if (udp.checksum() != 0
            && !udp.verify_checksum(&IpAddress::Ipv4(guest), &IpAddress::Ipv4(dst)))
            || udp.dst_port() == 0
        {
            return self.drop_frame();
        }
        let (sport, dport) = (udp.src_port(), udp.dst_port());
        let data = udp.payload();
        if dst == self.cfg.gateway_ip && dport == 53 && self.cfg.dns {
            let data = data.to_vec();
            return self.handle_dns(sport, &data);
        }
        if dst == self.sp.host_ip {
            if let Some(m) = self.in_udp.get_mut(&dport) {
                // A reply to a published-port client.
                m.last = Instant::now();
                let _ = self.udp_listeners[m.idx].0.try_send_to(data, m.client);
                return;
            }
        }
        let unreachable = |st: &mut Stack, reason| {
            let ipb = buf[ETH_HDR..ETH_HDR + ip_len].to_vec();
            if let Some(f) = packet::icmp_unreachable(st.link, dst, &ipb, reason) {
                st.emit(f);
            }
        };
        if dst == self.cfg.gateway_ip && dst != self.sp.host_ip {
            return unreachable(self, Icmpv4DstUnreachable::PortUnreachable);
        }
        let key: FlowKey = (sport, SocketAddrV4::new(dst, dport));
        if let Some(id) = self.udp_by_key.get(&key) {
            let _ = self.udp[id].tx.try_send(data.to_vec());
            return;
        }
        let names = self.dns_map.names(dst, Instant::now());
        if policy::egress(
            &self.cfg.policy,
            dst,
            Proto::Udp,
            Some(dport),
            &names,
            &self.sp,
        ) == Action::Deny
        {
            self.shared.denied.fetch_add(1, Ordering::Relaxed);
            return unreachable(self, Icmpv4DstUnreachable::CommProhibited);
        }
        if self
            .interceptor
            .as_ref()
            .is_some_and(|ic| ic.blocks_udp(dport))
        {
            // QUIC to an intercepted port: refused like a policy denial, so that the
            // client falls back to TCP (where the TLS can be intercepted) at once.
            self.shared.denied.fetch_add(1, Ordering::Relaxed);
            return unreachable(self, Icmpv4DstUnreachable::CommProhibited);
        }
        if self.udp.len() + self.in_udp.len() >= self.cfg.max_udp_flows {
            return self.drop_frame();
        }
        let target: SocketAddr = if dst == self.sp.host_ip {
            ([127, 0, 0, 1], dport).into()
        } else {
            SocketAddr::V4(key.1)
        };
        let id = self.alloc_id();
        let (tx, rx) = mpsc::channel(UDP_QUEUE);
        self.tasks.spawn(host::udp_flow(
            id,
            target,
            data.to_vec(),
            rx,
            self.ev_tx.clone(),
        ));
        self.udp.insert(id, UdpFlow { key, tx });
        self.udp_by_key.insert(key, id);
        self.update_flow_gauges();
    }

    pub(super) fn send_udp_to_guest(&mut self, from: SocketAddrV4, guest_port: u16, data: &[u8]) {
        let ident = self.next_ident();
        let to = SocketAddrV4::new(self.cfg.guest_ip, guest_port);
        for f in packet::udp_frames(self.link, from, to, data, self.ip_mtu, ident) {
            self.emit(f);
        }
    }

    pub(super) fn inbound_udp(&mut self, idx: usize, client: SocketAddr, data: &[u8]) {
        let Some(&(_, guest_port)) = self.udp_listeners.get(idx) else {
            return;
        };
        let peer_ip = match client.ip() {
            std::net::IpAddr::V4(a) => a,
            std::net::IpAddr::V6(_) => Ipv4Addr::LOCALHOST,
        };
        if policy::ingress(&self.cfg.policy, peer_ip, Proto::Udp, guest_port, &self.sp)
            == Action::Deny
        {
            self.shared.denied.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let eph = match self.in_udp_by_client.get(&(idx, client)) {
            Some(&p) => p,
            None => {
                if self.udp.len() + self.in_udp.len() >= self.cfg.max_udp_flows {
                    return;
                }
                let mut found = None;
                for _ in 0..16384 {
                    let p = self.next_udp_eph;
                    self.next_udp_eph = if p == u16::MAX { 49152 } else { p + 1 };
                    if !self.in_udp.contains_key(&p) {
                        found = Some(p);
                        break;
                    }
                }
                let Some(p) = found else { return };
                self.in_udp.insert(
                    p,
                    InboundUdp {
                        idx,
                        client,
                        last: Instant::now(),
                    },
                );
                self.in_udp_by_client.insert((idx, client), p);
                self.update_flow_gauges();
                p
            }
        };
        if let Some(m) = self.in_udp.get_mut(&eph) {
            m.last = Instant::now();
        }
        self.send_udp_to_guest(SocketAddrV4::new(self.sp.host_ip, eph), guest_port, data);
    }

    pub(super) fn udp_reply(&mut self, id: u64, data: &[u8]) {
        if let Some(f) = self.udp.get(&id) {
            let (gp, from) = f.key;
            self.send_udp_to_guest(from, gp, data);
        }
    }

    pub(super) fn udp_closed(&mut self, id: u64) {
        if let Some(f) = self.udp.remove(&id) {
            self.udp_by_key.remove(&f.key);
            self.update_flow_gauges();
        }
    }

    /// Forget published-port clients quiet for `UDP_IDLE` (their ephemeral ports).
    pub(super) fn expire_inbound_udp(&mut self, now: Instant) {
        let stale: Vec<u16> = self
            .in_udp
            .iter()
            .filter(|(_, m)| now.duration_since(m.last) > UDP_IDLE)
            .map(|(p, _)| *p)
            .collect();
        for p in stale {
            if let Some(m) = self.in_udp.remove(&p) {
                self.in_udp_by_client.remove(&(m.idx, m.client));
            }
        }
    }
}
