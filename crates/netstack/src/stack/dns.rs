//! The gateway's DNS: queries over UDP and over TCP (dns_tcp.rs frames the messages) are
//! answered from the host's resolver, under the policy's name rules; the addresses given
//! out are remembered for domain rules (`DnsMap`).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::tcp::{Phase, TcpFlow, CREDIT};
use super::{FlowKey, Stack};
use crate::config::HOST_NAME;
use crate::dns;
use crate::dns_tcp::{self, DnsConn};
use crate::event::{DnsTo, Event};
use crate::host;
use crate::policy;

const MAX_DNS_PENDING: usize = 64;
const DNS_TTL: u32 = 60;
const MAX_DNS_ANSWERS: usize = 16;

impl Stack {
    pub(super) fn handle_dns(&mut self, guest_port: u16, data: &[u8]) {
        if !self.dns_query(DnsTo::Udp(guest_port), data) {
            self.drop_frame();
        }
    }

    /// The gateway's DNS, whatever the transport: answer the query in `data` through `to`,
    /// now or once the host resolved the name. `false`: not a query we can answer (too
    /// short, a response, a question cut short); the transport decides what to do.
    fn dns_query(&mut self, to: DnsTo, data: &[u8]) -> bool {
        self.shared.dns_queries.fetch_add(1, Ordering::Relaxed);
        let q = match dns::parse_query(data) {
            None => return false,
            Some(Err((id, flags))) => {
                self.dns_reply(to, &dns::error_response(id, flags, dns::RCODE_FORMERR));
                return true;
            }
            Some(Ok(q)) => q,
        };
        let reply = |st: &mut Stack, rcode, addrs: &[Ipv4Addr]| {
            st.dns_reply(to, &dns::response(&q, rcode, addrs, DNS_TTL));
            true
        };
        if q.opcode() != 0 || q.qclass != dns::CLASS_IN {
            return reply(self, dns::RCODE_NOTIMP, &[]);
        }
        if q.name == HOST_NAME {
            let a = if q.qtype == dns::TYPE_A {
                vec![self.sp.host_ip]
            } else {
                vec![]
            };
            return reply(self, dns::RCODE_NOERROR, &a);
        }
        if q.name.is_empty() {
            return reply(self, dns::RCODE_NOERROR, &[]);
        }
        if !policy::name_allowed(&self.cfg.policy, &q.name) {
            self.shared.denied.fetch_add(1, Ordering::Relaxed);
            return reply(self, dns::RCODE_NXDOMAIN, &[]);
        }
        if q.qtype != dns::TYPE_A {
            // IPv4 only: other types get an empty answer.
            return reply(self, dns::RCODE_NOERROR, &[]);
        }
        if self.dns_pending >= MAX_DNS_PENDING {
            return reply(self, dns::RCODE_SERVFAIL, &[]);
        }
        self.dns_pending += 1;
        let ev = self.ev_tx.clone();
        self.tasks.spawn(async move {
            let result = host::resolve(q.name.clone()).await;
            let _ = ev
                .send(Event::DnsResolved {
                    to,
                    query: q,
                    result,
                })
                .await;
        });
        true
    }

    /// The host resolved a query's name: keep the addresses the policy lets through
    /// (rebinding protection), remember them for domain rules, answer.
    pub(super) fn dns_resolved(
        &mut self,
        to: DnsTo,
        query: dns::Query,
        result: Result<Vec<Ipv4Addr>, u8>,
    ) {
        self.dns_pending = self.dns_pending.saturating_sub(1);
        let (rcode, addrs) = match result {
            Ok(all) => {
                let now = Instant::now();
                let kept: Vec<Ipv4Addr> = all
                    .into_iter()
                    .filter(|a| policy::answer_allowed(&self.cfg.policy, &query.name, *a, &self.sp))
                    .take(MAX_DNS_ANSWERS)
                    .collect();
                for a in &kept {
                    self.dns_map
                        .record(&query.name, *a, Duration::from_secs(DNS_TTL as u64), now);
                }
                (dns::RCODE_NOERROR, kept)
            }
            Err(rc) => (rc, vec![]),
        };
        self.dns_reply(to, &dns::response(&query, rcode, &addrs, DNS_TTL));
    }

    fn dns_reply(&mut self, to: DnsTo, msg: &[u8]) {
        match to {
            DnsTo::Udp(port) => {
                let from = SocketAddrV4::new(self.cfg.gateway_ip, 53);
                self.send_udp_to_guest(from, port, msg);
            }
            DnsTo::Tcp(id, seq) => {
                // The connection may be gone meanwhile: the answer is dropped.
                let Some(f) = self.flows.get_mut(&id) else {
                    return;
                };
                if let Phase::Dns(c) = &mut f.phase {
                    f.pending.extend(c.answer(seq, msg));
                }
            }
        }
    }

    /// A guest SYN to the gateway's DNS port: no host connect, the SYN goes straight into
    /// a listening socket, as for other flows once their host socket is connected.
    pub(super) fn dns_tcp_open(&mut self, key: FlowKey, syn: Vec<u8>) {
        let id = self.alloc_id();
        let flow = TcpFlow::new(
            key,
            Phase::Dns(DnsConn::new(Instant::now())),
            None,
            None,
            Arc::new(Semaphore::new(CREDIT)),
        );
        self.insert_flow(id, flow);
        // Flush what smoltcp has queued so that the SYN meets only its own socket.
        self.poll();
        self.replay_syn(id, syn, dns_tcp::SOCKET_BUF);
    }

    /// One message read from a DNS-over-TCP connection: answered exactly as over UDP.
    /// What UDP would drop gets FORMERR when its header is readable, else the connection
    /// is reset.
    pub(super) fn dns_tcp_message(&mut self, id: u64, seq: u64, msg: &[u8]) {
        let to = DnsTo::Tcp(id, seq);
        if self.dns_query(to, msg) {
            return;
        }
        if msg.len() >= 12 {
            let qid = u16::from_be_bytes([msg[0], msg[1]]);
            let flags = u16::from_be_bytes([msg[2], msg[3]]);
            self.dns_reply(to, &dns::error_response(qid, flags, dns::RCODE_FORMERR));
        } else {
            self.abort_flow(id);
        }
    }

    /// DNS-over-TCP connections without traffic: closed (FIN) once nothing is
    /// outstanding, reset when the guest does not close either.
    pub(super) fn dns_tcp_idle(&mut self, now: Instant) {
        let mut stale = Vec::new();
        for (&id, f) in self.flows.iter_mut() {
            let Phase::Dns(c) = &f.phase else { continue };
            let quiet = now.saturating_duration_since(c.last_active);
            if quiet > 2 * dns_tcp::IDLE {
                stale.push(id);
            } else if quiet > dns_tcp::IDLE && c.outstanding() == 0 {
                f.host_eof = true;
            }
        }
        for id in stale {
            self.abort_flow(id);
        }
    }
}
