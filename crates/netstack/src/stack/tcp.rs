//! TCP flows: guest connects (host connect first, then the guest's SYN replayed into a
//! listening smoltcp socket), published-port connections into the guest, and moving data
//! between smoltcp sockets and the flows' host tasks. DNS-over-TCP connections are TCP
//! flows too; dns.rs answers what they carry.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::wire::{IpAddress, Ipv4Packet, TcpPacket};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::{FlowKey, Stack};
use crate::config::{Action, Proto, HOST_NAME};
use crate::dns_tcp::{self, DnsConn};
use crate::event::Cmd;
use crate::host::{self, CHUNK};
use crate::packet::{self, SegInfo, ETH_HDR};
use crate::policy;
use crate::tls::FlowFacts;

/// smoltcp receive and send buffer of each TCP flow (the window each way). A flow holds
/// at most `2 * TCP_BUF` in smoltcp plus `CMD_QUEUE + CREDIT` chunks of `CHUNK` bytes in
/// flight, i.e. 512 KiB when both peers stall; the buffers are allocated zeroed and only
/// touched as data passes, so idle and half-open flows cost little resident memory.
const TCP_BUF: usize = 128 * 1024;
/// A guest flow must finish its handshake within this (else it is reset).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);
/// Chunks of host data a flow may hold before it is in smoltcp's buffer.
pub(super) const CREDIT: usize = 2;
/// Chunks of guest data queued towards a host socket.
const CMD_QUEUE: usize = 2;

pub(super) enum Phase {
    /// Guest SYN seen; the host connect is running. The SYN is replayed into smoltcp
    /// once it succeeds.
    Connecting {
        syn: Vec<u8>,
    },
    /// Published connection: smoltcp is connecting to the guest; the host stream waits.
    Inbound {
        stream: Option<TcpStream>,
    },
    Open,
    /// DNS over TCP to the gateway, answered by the stack itself (no host socket).
    Dns(DnsConn),
}

pub(super) struct TcpFlow {
    key: FlowKey,
    handle: Option<SocketHandle>,
    pub(super) phase: Phase,
    cmd: Option<mpsc::Sender<Cmd>>,
    abort: Option<oneshot::Sender<()>>,
    credit: Arc<Semaphore>,
    pub(super) pending: VecDeque<Vec<u8>>,
    pending_off: usize,
    established: bool,
    pub(super) host_eof: bool,
    fin_queued: bool,
    guest_fin_seen: bool,
    guest_fin_fwd: bool,
    closed_since: Option<Instant>,
    /// The guest's SYN, replayed into a listening socket, that smoltcp has not taken yet
    /// (it may wait in the device queue while the queue to the guest is full).
    syn_waiting: Option<SegInfo>,
}

/// A smoltcp socket with `buf` bytes of receive and of send buffer.
fn tcp_socket(buf: usize) -> tcp::Socket<'static> {
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0u8; buf]),
        tcp::SocketBuffer::new(vec![0u8; buf]),
    );
    s.set_nagle_enabled(false);
    s.set_ack_delay(None);
    s.set_timeout(Some(smoltcp::time::Duration::from_millis(
        HANDSHAKE_TIMEOUT.as_millis() as u64,
    )));
    s
}

impl Stack {
    pub(super) fn handle_tcp(&mut self, buf: Vec<u8>, ip_len: usize, dst: Ipv4Addr) {
        let guest = self.cfg.guest_ip;
        let seg = {
            let ip = Ipv4Packet::new_unchecked(&buf[ETH_HDR..ETH_HDR + ip_len]);
            let Ok(tcp) = TcpPacket::new_checked(ip.payload()) else {
                return self.drop_frame();
            };
            if !tcp.verify_checksum(&IpAddress::Ipv4(guest), &IpAddress::Ipv4(dst))
                || tcp.src_port() == 0
                || tcp.dst_port() == 0
            {
                return self.drop_frame();
            }
            SegInfo {
                src: SocketAddrV4::new(guest, tcp.src_port()),
                dst: SocketAddrV4::new(dst, tcp.dst_port()),
                seq: tcp.seq_number().0 as u32,
                ack: tcp.ack().then(|| tcp.ack_number().0 as u32),
                syn: tcp.syn(),
                fin: tcp.fin(),
                rst: tcp.rst(),
                payload_len: tcp.payload().len(),
            }
        };
        let key: FlowKey = (seg.src.port(), seg.dst);
        if let Some(&id) = self.by_key.get(&key) {
            let flow = self.flows.get_mut(&id).expect("flow index");
            if seg.syn && seg.ack.is_none() {
                // A retransmitted SYN: smoltcp retransmits its SYN-ACK by itself. Keeping
                // bare SYNs away from smoltcp also means no listening socket can ever pick
                // up another flow's SYN.
            } else if let Some(h) = flow.handle {
                if seg.rst && self.sockets.get::<tcp::Socket>(h).state() == tcp::State::SynReceived
                {
                    // smoltcp would put a passive socket back into LISTEN, where it could
                    // swallow other flows' segments: close the flow here instead.
                    return self.remove_flow(id, false);
                }
                self.dev.queue_rx(buf);
            } else if seg.rst {
                // The guest gave up while we were connecting.
                self.remove_flow(id, false);
            }
            // Else a retransmitted SYN while connecting: dropped.
            return;
        }
        if !seg.syn || seg.ack.is_some() || seg.rst || seg.fin {
            // A segment for no connection: reset, as a closed port would.
            if let Some(f) = packet::tcp_rst(self.link, &seg) {
                self.emit(f);
            }
            return;
        }
        let port = seg.dst.port();
        // DNS over TCP is served by the stack, like DNS over UDP: no egress policy.
        let dns = dst == self.cfg.gateway_ip && port == 53 && self.cfg.dns;
        let verdict = if dns {
            Action::Allow
        } else if dst == self.cfg.gateway_ip && dst != self.sp.host_ip {
            Action::Deny // nothing listens on the gateway
        } else {
            let names = self.dns_map.names(dst, Instant::now());
            policy::egress(
                &self.cfg.policy,
                dst,
                Proto::Tcp,
                Some(port),
                &names,
                &self.sp,
            )
        };
        if verdict == Action::Deny {
            self.shared.denied.fetch_add(1, Ordering::Relaxed);
            if let Some(f) = packet::tcp_rst(self.link, &seg) {
                self.emit(f);
            }
            return;
        }
        if self.flows.len() >= self.cfg.max_connections {
            self.shared.over_cap.fetch_add(1, Ordering::Relaxed);
            if let Some(f) = packet::tcp_rst(self.link, &seg) {
                self.emit(f);
            }
            return;
        }
        if dns {
            return self.dns_tcp_open(key, buf);
        }
        let target: SocketAddr = if dst == self.sp.host_ip {
            ([127, 0, 0, 1], port).into()
        } else {
            SocketAddr::V4(seg.dst)
        };
        let intercept = match &self.interceptor {
            Some(ic) if ic.intercepts(port) => {
                let mut names = self.dns_map.names(dst, Instant::now());
                if dst == self.sp.host_ip {
                    // The guest resolves the host alias from /etc/hosts, not our DNS.
                    names.push(HOST_NAME.to_owned());
                }
                let dst = SocketAddr::V4(seg.dst);
                Some((ic.clone(), FlowFacts { dst, names }))
            }
            _ => None,
        };
        let id = self.alloc_id();
        let (cmd_tx, cmd_rx) = mpsc::channel(CMD_QUEUE);
        let (abort_tx, abort_rx) = oneshot::channel();
        let credit = Arc::new(Semaphore::new(CREDIT));
        self.tasks.spawn(host::tcp_outbound(
            id,
            target,
            self.ev_tx.clone(),
            cmd_rx,
            credit.clone(),
            abort_rx,
            intercept,
        ));
        self.insert_flow(
            id,
            TcpFlow::new(
                key,
                Phase::Connecting { syn: buf },
                Some(cmd_tx),
                Some(abort_tx),
                credit,
            ),
        );
    }

    pub(super) fn tcp_connected(&mut self, id: u64) {
        let Some(f) = self.flows.get(&id) else { return };
        if !matches!(f.phase, Phase::Connecting { .. }) {
            return;
        }
        // Flush what smoltcp has queued so that the SYN below meets only its own socket.
        self.poll();
        let Some(f) = self.flows.get_mut(&id) else {
            return;
        };
        let Phase::Connecting { syn } = std::mem::replace(&mut f.phase, Phase::Open) else {
            return;
        };
        self.replay_syn(id, syn, TCP_BUF);
    }

    /// Feed the guest's SYN to a fresh socket listening on its destination (smoltcp
    /// answers with the SYN-ACK).
    pub(super) fn replay_syn(&mut self, id: u64, syn: Vec<u8>, buf: usize) {
        let Some(f) = self.flows.get_mut(&id) else {
            return;
        };
        let mut s = tcp_socket(buf);
        if s.listen(smoltcp::wire::IpListenEndpoint {
            addr: Some(IpAddress::Ipv4(*f.key.1.ip())),
            port: f.key.1.port(),
        })
        .is_err()
        {
            return self.remove_flow(id, false);
        }
        let Some(seg) = syn_info(&syn) else {
            return self.remove_flow(id, false);
        };
        let h = self.sockets.add(s);
        f.handle = Some(h);
        f.syn_waiting = Some(seg);
        self.dev.queue_rx(syn);
        // service_tcp (in the poll) sees the socket leave LISTEN, or resets the guest if
        // smoltcp refused the SYN.
        self.poll();
    }

    pub(super) fn inbound_tcp(&mut self, stream: TcpStream, guest_port: u16, peer: SocketAddr) {
        let peer_ip = match peer.ip() {
            std::net::IpAddr::V4(a) => a,
            std::net::IpAddr::V6(_) => Ipv4Addr::LOCALHOST,
        };
        if policy::ingress(&self.cfg.policy, peer_ip, Proto::Tcp, guest_port, &self.sp)
            == Action::Deny
        {
            self.shared.denied.fetch_add(1, Ordering::Relaxed);
            let _ = stream.set_zero_linger();
            return;
        }
        if self.flows.len() >= self.cfg.max_connections {
            self.shared.over_cap.fetch_add(1, Ordering::Relaxed);
            let _ = stream.set_zero_linger();
            return;
        }
        // Source of the connection in the guest: host_ip and an ephemeral port.
        let mut eph = None;
        for _ in 0..16384 {
            let p = self.next_tcp_eph;
            self.next_tcp_eph = if p == u16::MAX { 49152 } else { p + 1 };
            if !self
                .by_key
                .contains_key(&(guest_port, SocketAddrV4::new(self.sp.host_ip, p)))
            {
                eph = Some(p);
                break;
            }
        }
        let Some(eph) = eph else {
            let _ = stream.set_zero_linger();
            return;
        };
        let mut s = tcp_socket(TCP_BUF);
        let remote = (IpAddress::Ipv4(self.cfg.guest_ip), guest_port);
        let local = smoltcp::wire::IpListenEndpoint {
            addr: Some(IpAddress::Ipv4(self.sp.host_ip)),
            port: eph,
        };
        if s.connect(self.iface.context(), remote, local).is_err() {
            let _ = stream.set_zero_linger();
            return;
        }
        let h = self.sockets.add(s);
        let id = self.alloc_id();
        let mut flow = TcpFlow::new(
            (guest_port, SocketAddrV4::new(self.sp.host_ip, eph)),
            Phase::Inbound {
                stream: Some(stream),
            },
            None,
            None,
            Arc::new(Semaphore::new(CREDIT)),
        );
        flow.handle = Some(h);
        self.insert_flow(id, flow);
    }

    pub(super) fn tcp_connect_failed(&mut self, id: u64) {
        if let Some(f) = self.flows.get(&id) {
            if let Phase::Connecting { syn } = &f.phase {
                if let Some(seg) = syn_info(syn) {
                    if let Some(fr) = packet::tcp_rst(self.link, &seg) {
                        self.emit(fr);
                    }
                }
            }
            self.remove_flow(id, true);
        }
    }

    pub(super) fn tcp_host_data(&mut self, id: u64, d: Vec<u8>) {
        if let Some(f) = self.flows.get_mut(&id) {
            f.pending.push_back(d);
        }
    }

    pub(super) fn tcp_host_eof(&mut self, id: u64) {
        if let Some(f) = self.flows.get_mut(&id) {
            f.host_eof = true;
        }
    }

    pub(super) fn tcp_host_reset(&mut self, id: u64) {
        if let Some(f) = self.flows.get_mut(&id) {
            f.abort = None; // the host side is gone already
            f.pending.clear();
            match f.handle {
                Some(h) => self.sockets.get_mut::<tcp::Socket>(h).abort(),
                None => self.remove_flow(id, true),
            }
        }
    }

    /// Reset a flow's smoltcp socket (service_tcp removes the flow once the RST is out).
    pub(super) fn abort_flow(&mut self, id: u64) {
        if let Some(h) = self.flows.get(&id).and_then(|f| f.handle) {
            self.sockets.get_mut::<tcp::Socket>(h).abort();
        }
    }

    pub(super) fn insert_flow(&mut self, id: u64, flow: TcpFlow) {
        self.by_key.insert(flow.key, id);
        self.flows.insert(id, flow);
        self.update_flow_gauges();
    }

    fn remove_flow(&mut self, id: u64, graceful: bool) {
        let Some(mut flow) = self.flows.remove(&id) else {
            return;
        };
        self.ended_since_trim += 1;
        self.by_key.remove(&flow.key);
        if let Some(h) = flow.handle.take() {
            self.sockets.remove(h);
        }
        flow.credit.close();
        if !graceful {
            if let Some(a) = flow.abort.take() {
                let _ = a.send(());
            }
            if let Phase::Inbound { stream: Some(s) } = &flow.phase {
                let _ = s.set_zero_linger();
            }
        }
        // Dropping `cmd` lets the host task finish the writes it has, then end.
        self.update_flow_gauges();
    }

    // ----- moving data between smoltcp and host tasks -----

    /// Returns whether anything moved (then smoltcp has work).
    pub(super) fn service_tcp(&mut self) -> bool {
        let mut moved = false;
        let mut done: Vec<(u64, bool)> = Vec::new();
        let mut spawn: Vec<u64> = Vec::new();
        let mut refused: Vec<SegInfo> = Vec::new();
        let mut dns_msgs: Vec<dns_tcp::Msg> = Vec::new();
        let rx_empty = self.dev.rx.is_empty();
        for (&id, flow) in self.flows.iter_mut() {
            let Some(h) = flow.handle else { continue };
            let sock = self.sockets.get_mut::<tcp::Socket>(h);
            let state = sock.state();
            if state != tcp::State::Listen {
                flow.syn_waiting = None;
            }
            if matches!(
                state,
                tcp::State::CloseWait
                    | tcp::State::LastAck
                    | tcp::State::Closing
                    | tcp::State::TimeWait
            ) {
                flow.guest_fin_seen = true;
            }
            if !flow.established
                && !matches!(
                    state,
                    tcp::State::Listen
                        | tcp::State::SynSent
                        | tcp::State::SynReceived
                        | tcp::State::Closed
                )
            {
                flow.established = true;
                sock.set_timeout(None);
                if matches!(flow.phase, Phase::Inbound { .. }) {
                    spawn.push(id);
                }
            }
            // Guest -> host, as fast as the host task takes it.
            if let Some(cmd) = &flow.cmd {
                while sock.can_recv() {
                    let Ok(permit) = cmd.try_reserve() else { break };
                    let data = sock.recv(|b| {
                        let n = b.len().min(CHUNK);
                        (n, b[..n].to_vec())
                    });
                    match data {
                        Ok(d) if !d.is_empty() => {
                            permit.send(Cmd::Data(d));
                            moved = true;
                        }
                        _ => break,
                    }
                }
                if flow.established
                    && flow.guest_fin_seen
                    && !flow.guest_fin_fwd
                    && sock.recv_queue() == 0
                {
                    if let Ok(p) = cmd.try_reserve() {
                        p.send(Cmd::Shutdown);
                        flow.guest_fin_fwd = true;
                    }
                }
            }
            // DNS over TCP: guest queries to the stack's own DNS.
            if let Phase::Dns(c) = &mut flow.phase {
                if flow.host_eof {
                    // Closing: what the guest still sends is not answered.
                    while sock.can_recv() && sock.recv(|b| (b.len(), ())).is_ok() {
                        moved = true;
                    }
                } else {
                    moved |= c.read(id, sock, flow.pending.len(), &mut dns_msgs);
                }
                if flow.guest_fin_seen && sock.recv_queue() == 0 && c.outstanding() == 0 {
                    // The guest closed and everything is answered: close our side too.
                    flow.host_eof = true;
                }
            }
            // Host -> guest, as far as smoltcp's send buffer has room.
            while let Some(front) = flow.pending.front() {
                if !sock.may_send() {
                    break;
                }
                let n = sock.send_slice(&front[flow.pending_off..]).unwrap_or(0);
                if n == 0 {
                    break;
                }
                moved = true;
                flow.pending_off += n;
                if flow.pending_off == front.len() {
                    flow.pending.pop_front();
                    flow.pending_off = 0;
                    flow.credit.add_permits(1);
                }
            }
            if flow.host_eof && flow.pending.is_empty() && !flow.fin_queued && flow.established {
                sock.close();
                flow.fin_queued = true;
                moved = true;
            }
            // Remove a flow only once every byte the guest sent is on its way to the host
            // (smoltcp keeps the receive buffer in TIME-WAIT and CLOSED).
            let drained = flow.guest_fin_fwd || flow.cmd.is_none();
            match state {
                tcp::State::TimeWait if drained => done.push((id, true)),
                // A passive socket reset in SYN-RECEIVED goes back to LISTEN: the guest
                // gave up on the handshake (normally caught before smoltcp sees the RST).
                tcp::State::Listen => match flow.syn_waiting {
                    // Still queued behind other frames: smoltcp takes it in a later poll.
                    Some(_) if !rx_empty => {}
                    // Consumed but refused (should not happen): reset the guest.
                    Some(seg) => {
                        refused.push(seg);
                        done.push((id, false));
                    }
                    None => done.push((id, false)),
                },
                tcp::State::Closed => {
                    let since = *flow.closed_since.get_or_insert_with(Instant::now);
                    if flow.guest_fin_seen && flow.fin_queued {
                        // Orderly close (LAST-ACK -> CLOSED).
                        if drained || since.elapsed() > Duration::from_secs(30) {
                            done.push((id, true));
                        }
                    } else if sock.remote_endpoint().is_none()
                        || since.elapsed() > Duration::from_secs(5)
                    {
                        // Reset (by the guest, a timeout or the host); an aborted socket
                        // still has a RST to send while it has a remote end.
                        done.push((id, false));
                    }
                }
                _ => {}
            }
        }
        for id in spawn {
            let Some(flow) = self.flows.get_mut(&id) else {
                continue;
            };
            if let Phase::Inbound { stream } = &mut flow.phase {
                if let Some(stream) = stream.take() {
                    let (cmd_tx, cmd_rx) = mpsc::channel(CMD_QUEUE);
                    let (abort_tx, abort_rx) = oneshot::channel();
                    flow.cmd = Some(cmd_tx);
                    flow.abort = Some(abort_tx);
                    self.tasks.spawn(host::tcp_pump(
                        id,
                        stream,
                        self.ev_tx.clone(),
                        cmd_rx,
                        flow.credit.clone(),
                        abort_rx,
                    ));
                }
            }
            flow.phase = Phase::Open;
        }
        for (id, graceful) in done {
            self.remove_flow(id, graceful);
        }
        for (id, seq, msg) in dns_msgs {
            self.dns_tcp_message(id, seq, &msg);
            moved = true;
        }
        for seg in refused {
            if let Some(fr) = packet::tcp_rst(self.link, &seg) {
                self.emit(fr);
            }
        }
        moved
    }
}

impl TcpFlow {
    pub(super) fn new(
        key: FlowKey,
        phase: Phase,
        cmd: Option<mpsc::Sender<Cmd>>,
        abort: Option<oneshot::Sender<()>>,
        credit: Arc<Semaphore>,
    ) -> TcpFlow {
        TcpFlow {
            key,
            handle: None,
            phase,
            cmd,
            abort,
            credit,
            pending: VecDeque::new(),
            pending_off: 0,
            established: false,
            host_eof: false,
            fin_queued: false,
            guest_fin_seen: false,
            guest_fin_fwd: false,
            closed_since: None,
            syn_waiting: None,
        }
    }
}

/// The reset-relevant fields of a stored guest SYN frame.
fn syn_info(frame: &[u8]) -> Option<SegInfo> {
    let ip = Ipv4Packet::new_checked(frame.get(ETH_HDR..)?).ok()?;
    let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
    Some(SegInfo {
        src: SocketAddrV4::new(ip.src_addr(), tcp.src_port()),
        dst: SocketAddrV4::new(ip.dst_addr(), tcp.dst_port()),
        seq: tcp.seq_number().0 as u32,
        ack: None,
        syn: true,
        fin: false,
        rst: false,
        payload_len: tcp.payload().len(),
    })
}
