//! ICMP from the guest: echo to the gateway's own addresses is answered by smoltcp; echo
//! elsewhere is proxied through a host ping socket when the policy allows it, else
//! answered "administratively prohibited".

use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use smoltcp::wire::{Icmpv4DstUnreachable, Icmpv4Message, Icmpv4Packet, Ipv4Packet};

use super::Stack;
use crate::config::{Action, Proto};
use crate::host;
use crate::packet::{self, ETH_HDR};
use crate::ping::{OpenError, PingSocket};
use crate::policy;

impl Stack {
    pub(super) fn handle_icmp(&mut self, buf: Vec<u8>, ip_len: usize, dst: Ipv4Addr) {
        if dst == self.cfg.gateway_ip || dst == self.sp.host_ip {
            // smoltcp answers echo requests to its own addresses.
            self.dev.queue_rx(buf);
            return;
        }
        let ipb = &buf[ETH_HDR..ETH_HDR + ip_len];
        let Ok(ip) = Ipv4Packet::new_checked(ipb) else {
            return self.drop_frame();
        };
        let Ok(icmp) = Icmpv4Packet::new_checked(ip.payload()) else {
            return self.drop_frame();
        };
        if icmp.msg_type() != Icmpv4Message::EchoRequest
            || icmp.msg_code() != 0
            || !icmp.verify_checksum()
        {
            return self.drop_frame();
        }
        let names = self.dns_map.names(dst, Instant::now());
        if policy::egress(&self.cfg.policy, dst, Proto::Icmp, None, &names, &self.sp)
            == Action::Deny
        {
            self.shared.denied.fetch_add(1, Ordering::Relaxed);
            return self.icmp_prohibited(ipb);
        }
        let Ok(slot) = self.echo_slots.clone().try_acquire_owned() else {
            // Dropped: the guest's ping reports loss.
            self.shared.over_cap.fetch_add(1, Ordering::Relaxed);
            return;
        };
        match PingSocket::open(dst) {
            Ok(sock) => {
                self.tasks.spawn(host::icmp_echo(
                    sock,
                    dst,
                    (icmp.echo_ident(), icmp.echo_seq_no()),
                    icmp.data().to_vec(),
                    self.ev_tx.clone(),
                    slot,
                ));
            }
            // No ICMP socket for this process: fail fast, as if denied.
            Err(OpenError::Unavailable) => {
                self.shared.denied.fetch_add(1, Ordering::Relaxed);
                self.icmp_prohibited(ipb);
            }
            // A passing shortage (descriptors): this request is lost.
            Err(OpenError::Transient) => {}
        }
    }

    /// "Communication administratively prohibited" from the gateway about `ipb`, so that
    /// ping fails at once.
    fn icmp_prohibited(&mut self, ipb: &[u8]) {
        if let Some(f) = packet::icmp_unreachable(
            self.link,
            self.cfg.gateway_ip,
            ipb,
            Icmpv4DstUnreachable::CommProhibited,
        ) {
            self.emit(f);
        }
    }

    /// A proxied echo request got its reply: hand it to the guest as if from `from`.
    pub(super) fn echo_reply(&mut self, from: Ipv4Addr, ident: u16, seq: u16, data: &[u8]) {
        let ip_ident = self.next_ident();
        let guest = self.cfg.guest_ip;
        let f = packet::icmp_echo_reply(self.link, from, guest, ident, seq, data, ip_ident);
        self.emit(f);
    }
}
