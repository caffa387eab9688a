//! The stack task: one per sandbox. It owns the smoltcp interface and every flow's state,
//! reads guest frames, decides policy, and moves data between smoltcp sockets and the
//! host-side tasks.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::Instant as SInstant;
use smoltcp::wire::{
    ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, HardwareAddress,
    Icmpv4DstUnreachable, Icmpv4Message, Icmpv4Packet, IpAddress, IpCidr, IpProtocol, Ipv4Packet,
    TcpPacket, UdpPacket,
};
use tokio::net::{TcpStream, UdpSocket, UnixStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinSet;

use crate::config::{Action, NetConfig, Proto, HOST_NAME};
use crate::device::Dev;
use crate::dns;
use crate::dns_tcp::{self, DnsConn};
use crate::host::{self, Cmd, Event, CHUNK, UDP_IDLE};
use crate::packet::{self, Link, SegInfo, ETH_HDR};
use crate::ping::{OpenError, PingSocket, MAX_ECHO_PENDING};
use crate::policy::{self, DnsMap, Special};
use crate::{Listener, NetError, Shared};

/// smoltcp receive and send buffer of each TCP flow (the window each way). A flow holds
/// at most `2 * TCP_BUF` in smoltcp plus `CMD_QUEUE + CREDIT` chunks of `CHUNK` bytes in
/// flight, i.e. 512 KiB when both peers stall; the buffers are allocated zeroed and only
/// touched as data passes, so idle and half-open flows cost little resident memory.
pub(crate) const TCP_BUF: usize = 128 * 1024;
/// A guest flow must finish its handshake within this (else it is reset).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);
/// Chunks of host data a flow may hold before it is in smoltcp's buffer.
const CREDIT: usize = 2;
/// Chunks of guest data queued towards a host socket.
const CMD_QUEUE: usize = 2;
const UDP_QUEUE: usize = 64;
const EVENT_QUEUE: usize = 4096;
const MAX_DNS_PENDING: usize = 64;
const DNS_TTL: u32 = 60;
const MAX_DNS_ANSWERS: usize = 16;
/// Bytes of frames the stack wrote itself that may wait for room in the writer's queue.
const OVERFLOW_BYTES: usize = 1 << 20;
/// Frames handled per wakeup before smoltcp is polled.
const BATCH: usize = 64;
/// Housekeeping gives memory back (`release_memory`) once this many TCP flows ended
/// since it last did, or when the last flow of the table ended.
const TRIM_AFTER_FLOWS: usize = 64;

type FlowKey = (u16, SocketAddrV4);

enum Phase {
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

/// Where a DNS answer goes: a UDP datagram to the guest's port, or a DNS-over-TCP
/// connection (flow id, the query's sequence number on it).
#[derive(Clone, Copy)]
pub(crate) enum DnsTo {
    Udp(u16),
    Tcp(u64, u64),
}

struct TcpFlow {
    key: FlowKey,
    handle: Option<SocketHandle>,
    phase: Phase,
    cmd: Option<mpsc::Sender<Cmd>>,
    abort: Option<oneshot::Sender<()>>,
    credit: Arc<Semaphore>,
    pending: VecDeque<Vec<u8>>,
    pending_off: usize,
    established: bool,
    host_eof: bool,
    fin_queued: bool,
    guest_fin_seen: bool,
    guest_fin_fwd: bool,
    closed_since: Option<Instant>,
    /// The guest's SYN, replayed into a listening socket, that smoltcp has not taken yet
    /// (it may wait in the device queue while the queue to the guest is full).
    syn_waiting: Option<SegInfo>,
}

struct UdpFlow {
    key: FlowKey,
    tx: mpsc::Sender<Vec<u8>>,
}

struct InboundUdp {
    idx: usize,
    client: SocketAddr,
    last: Instant,
}

struct Stack {
    cfg: Arc<NetConfig>,
    sp: Special,
    shared: Arc<Shared>,
    iface: Interface,
    sockets: SocketSet<'static>,
    dev: Dev,
    epoch: Instant,
    link: Link,
    ip_mtu: usize,
    ev_tx: mpsc::Sender<Event>,
    tasks: JoinSet<()>,
    flows: HashMap<u64, TcpFlow>,
    by_key: HashMap<FlowKey, u64>,
    udp: HashMap<u64, UdpFlow>,
    udp_by_key: HashMap<FlowKey, u64>,
    udp_listeners: Vec<(Arc<UdpSocket>, u16)>,
    in_udp: HashMap<u16, InboundUdp>,
    in_udp_by_client: HashMap<(usize, SocketAddr), u16>,
    dns_map: DnsMap,
    dns_pending: usize,
    /// One permit per proxied echo request in flight.
    echo_slots: Arc<Semaphore>,
    next_id: u64,
    next_tcp_eph: u16,
    next_udp_eph: u16,
    ip_ident: u16,
    last_prime: Instant,
    overflow: VecDeque<Vec<u8>>,
    overflow_bytes: usize,
    /// IPv4 fragments from the guest waiting for the rest of their datagram.
    frags: crate::frag::Reassembler,
    /// TCP flows removed since memory was last given back (`release_memory`).
    ended_since_trim: usize,
}

/// How the guest's frames reach the stack.
pub(crate) enum Transport {
    /// QEMU `-netdev stream`: length-prefixed frames on a Unix stream.
    Stream(UnixStream),
    /// QEMU `-netdev vhost-user`: the virtqueues themselves (vhost.rs).
    VhostUser(crate::vhost::VhostListener),
}

pub(crate) async fn run(
    cfg: Arc<NetConfig>,
    shared: Arc<Shared>,
    transport: Transport,
    listeners: Vec<Listener>,
) -> Result<(), NetError> {
    let ip_mtu = cfg.mtu as usize;
    let out_cap = (4 * 1024 * 1024 / (ip_mtu + ETH_HDR)).clamp(64, 1024);
    let (frame_tx, frame_rx) = mpsc::channel(256);
    let (out_tx, out_rx) = mpsc::channel(out_cap);
    let (ev_tx, ev_rx) = mpsc::channel(EVENT_QUEUE);
    let mut io_tasks = JoinSet::new();
    let kick = match transport {
        Transport::Stream(stream) => {
            let (rd, wr) = stream.into_split();
            io_tasks.spawn(host::reader(rd, frame_tx));
            io_tasks.spawn(host::writer(wr, out_rx, shared.clone(), ev_tx.clone()));
            None
        }
        Transport::VhostUser(l) => Some(crate::vhost::start(
            l,
            frame_tx,
            out_rx,
            shared.clone(),
            ev_tx.clone(),
        )?),
    };
    let mut udp_listeners = Vec::new();
    for l in listeners {
        match l {
            Listener::Tcp(l, p) => {
                io_tasks.spawn(host::tcp_listener(l, p.guest_port, ev_tx.clone()));
            }
            Listener::Udp(s, p) => {
                io_tasks.spawn(host::udp_listener(
                    s.clone(),
                    udp_listeners.len(),
                    ev_tx.clone(),
                ));
                udp_listeners.push((s, p.guest_port));
            }
        }
    }
    let mut dev = Dev::new(out_tx, ip_mtu + ETH_HDR, shared.clone(), kick);
    let epoch = Instant::now();
    let gw_mac = EthernetAddress(cfg.gateway_mac.0);
    let mut icfg = Config::new(HardwareAddress::Ethernet(gw_mac));
    icfg.random_seed = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let mut iface = Interface::new(icfg, &mut dev, SInstant::from_micros(0));
    let host_ip = cfg.effective_host_ip();
    iface.update_ip_addrs(|a| {
        let _ = a.push(IpCidr::new(IpAddress::Ipv4(cfg.gateway_ip), cfg.prefix_len));
        if host_ip != cfg.gateway_ip {
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(host_ip), cfg.prefix_len));
        }
    });
    let _ = iface.routes_mut().add_default_ipv4_route(cfg.gateway_ip);
    iface.set_any_ip(true);
    let mut st = Stack {
        sp: Special { host_ip },
        link: Link {
            src: gw_mac,
            dst: EthernetAddress(cfg.guest_mac.0),
        },
        ip_mtu,
        cfg,
        shared,
        iface,
        sockets: SocketSet::new(vec![]),
        dev,
        epoch,
        ev_tx,
        tasks: JoinSet::new(),
        flows: HashMap::new(),
        by_key: HashMap::new(),
        udp: HashMap::new(),
        udp_by_key: HashMap::new(),
        udp_listeners,
        in_udp: HashMap::new(),
        in_udp_by_client: HashMap::new(),
        dns_map: DnsMap::default(),
        dns_pending: 0,
        echo_slots: Arc::new(Semaphore::new(MAX_ECHO_PENDING)),
        next_id: 1,
        next_tcp_eph: 49152,
        next_udp_eph: 49152,
        ip_ident: 1,
        last_prime: Instant::now(),
        overflow: VecDeque::new(),
        overflow_bytes: 0,
        frags: Default::default(),
        ended_since_trim: 0,
    };
    st.prime_neighbor();
    let r = st.run(frame_rx, ev_rx).await;
    st.tasks.abort_all();
    io_tasks.abort_all();
    r
}

/// Shrink a table that holds less than half of what a burst made room for.
fn shrink_map<K: std::hash::Hash + Eq, V>(m: &mut HashMap<K, V>) {
    if m.capacity() > 2 * m.len() + 16 {
        m.shrink_to_fit();
    }
}

/// Give the free pages of every malloc arena back to the kernel (glibc's `malloc_trim`;
/// it also releases free pages in the middle of the heap, which `free` never does).
/// Process-wide, and takes each arena's lock in turn while it walks the free lists.
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions; it only returns free memory.
    unsafe {
        libc::malloc_trim(0);
    }
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
    fn now(&self) -> SInstant {
        SInstant::from_micros(self.epoch.elapsed().as_micros() as i64)
    }

    async fn run(
        &mut self,
        mut frames: mpsc::Receiver<Result<Vec<u8>, NetError>>,
        mut events: mpsc::Receiver<Event>,
    ) -> Result<(), NetError> {
        let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.poll();
            self.dev.kick_writer();
            if self.dev.out.is_closed() {
                return Err(NetError::Io(std::io::Error::other("frame writer stopped")));
            }
            let mut delay = self
                .iface
                .poll_delay(self.now(), &self.sockets)
                .map(|d| Duration::from_micros(d.total_micros()))
                .unwrap_or(Duration::from_secs(3600));
            if self.dev.out.capacity() == 0 {
                // The writer wakes us (TxReady) when the queue drains.
                delay = delay.max(Duration::from_millis(100));
            }
            tokio::select! {
                f = frames.recv() => {
                    match f {
                        None => return Ok(()),
                        Some(Err(e)) => return Err(e),
                        Some(Ok(fr)) => self.handle_frame(fr),
                    }
                    for _ in 0..BATCH {
                        match frames.try_recv() {
                            Ok(Ok(fr)) => self.handle_frame(fr),
                            Ok(Err(e)) => return Err(e),
                            Err(_) => break,
                        }
                    }
                }
                e = events.recv() => {
                    if let Some(e) = e {
                        self.handle_event(e)?;
                    }
                    for _ in 0..BATCH {
                        match events.try_recv() {
                            Ok(e) => self.handle_event(e)?,
                            Err(_) => break,
                        }
                    }
                }
                _ = tokio::time::sleep(delay) => {}
                _ = housekeeping.tick() => self.housekeeping(),
            }
        }
    }

    /// Run smoltcp and move data until nothing changes (bounded).
    fn poll(&mut self) {
        use smoltcp::iface::{PollIngressSingleResult, PollResult};
        self.flush_overflow();
        for _ in 0..16 {
            let now = self.now();
            self.iface.poll_maintenance(now);
            let mut changed = false;
            while self
                .iface
                .poll_ingress_single(now, &mut self.dev, &mut self.sockets)
                != PollIngressSingleResult::None
            {
                changed = true;
            }
            // Move data between smoltcp and the host tasks before smoltcp answers the
            // guest: its ACKs then carry the window this opened, instead of a small one
            // followed by a window update (a stall for the guest's sender each time).
            let moved = self.service_tcp();
            while self
                .iface
                .poll_egress(now, &mut self.dev, &mut self.sockets)
                != PollResult::None
            {
                changed = true;
            }
            if !changed && !moved && self.dev.rx.is_empty() {
                break;
            }
            if self.dev.out.capacity() == 0 {
                break;
            }
        }
    }

    /// Tell smoltcp the guest's MAC (as if the guest had answered an ARP request), so
    /// that it never has to ask: smoltcp sends at most one ARP request per second, which
    /// would stall flows after its cache entry expires. Repeated from housekeeping.
    fn prime_neighbor(&mut self) {
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
    fn emit(&mut self, frame: Vec<u8>) {
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

    fn flush_overflow(&mut self) {
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

    fn drop_frame(&self) {
        self.shared.dropped_frames.fetch_add(1, Ordering::Relaxed);
    }

    fn next_ident(&mut self) -> u16 {
        self.ip_ident = self.ip_ident.wrapping_add(1);
        self.ip_ident
    }

    fn update_flow_gauges(&self) {
        let n = self.flows.len();
        self.shared.tcp_flows.store(n, Ordering::Relaxed);
        self.shared.tcp_flows_peak.fetch_max(n, Ordering::Relaxed);
        self.shared
            .udp_flows
            .store(self.udp.len() + self.in_udp.len(), Ordering::Relaxed);
    }

    // ----- guest frames -----

    fn handle_frame(&mut self, buf: Vec<u8>) {
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
                crate::frag::Outcome::Complete(pkt) => {
                    let mut whole = Vec::with_capacity(ETH_HDR + pkt.len());
                    whole.extend_from_slice(&buf[..ETH_HDR]);
                    whole.extend_from_slice(&pkt);
                    self.handle_ipv4(whole, src_mac)
                }
                crate::frag::Outcome::Pending => {}
                crate::frag::Outcome::Dropped => self.drop_frame(),
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

    fn handle_icmp(&mut self, buf: Vec<u8>, ip_len: usize, dst: Ipv4Addr) {
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

    fn handle_tcp(&mut self, buf: Vec<u8>, ip_len: usize, dst: Ipv4Addr) {
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

    fn handle_udp(&mut self, buf: Vec<u8>, ip_len: usize, dst: Ipv4Addr) {
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

    fn send_udp_to_guest(&mut self, from: SocketAddrV4, guest_port: u16, data: &[u8]) {
        let ident = self.next_ident();
        let to = SocketAddrV4::new(self.cfg.guest_ip, guest_port);
        for f in packet::udp_frames(self.link, from, to, data, self.ip_mtu, ident) {
            self.emit(f);
        }
    }

    fn handle_dns(&mut self, guest_port: u16, data: &[u8]) {
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
    fn dns_resolved(&mut self, to: DnsTo, query: dns::Query, result: Result<Vec<Ipv4Addr>, u8>) {
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
    fn dns_tcp_open(&mut self, key: FlowKey, syn: Vec<u8>) {
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
    fn dns_tcp_message(&mut self, id: u64, seq: u64, msg: &[u8]) {
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

    /// Reset a flow's smoltcp socket (service_tcp removes the flow once the RST is out).
    fn abort_flow(&mut self, id: u64) {
        if let Some(h) = self.flows.get(&id).and_then(|f| f.handle) {
            self.sockets.get_mut::<tcp::Socket>(h).abort();
        }
    }

    fn alloc_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn insert_flow(&mut self, id: u64, flow: TcpFlow) {
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

    // ----- events from host tasks -----

    fn handle_event(&mut self, e: Event) -> Result<(), NetError> {
        match e {
            Event::TcpConnected(id) => self.tcp_connected(id),
            Event::TcpConnectFailed(id) => {
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
            Event::TcpHostData(id, d) => {
                if let Some(f) = self.flows.get_mut(&id) {
                    f.pending.push_back(d);
                }
            }
            Event::TcpHostEof(id) => {
                if let Some(f) = self.flows.get_mut(&id) {
                    f.host_eof = true;
                }
            }
            Event::TcpHostReset(id) => {
                if let Some(f) = self.flows.get_mut(&id) {
                    f.abort = None; // the host side is gone already
                    f.pending.clear();
                    match f.handle {
                        Some(h) => self.sockets.get_mut::<tcp::Socket>(h).abort(),
                        None => self.remove_flow(id, true),
                    }
                }
            }
            Event::TcpWritten | Event::TxReady => {}
            Event::InboundTcp {
                stream,
                guest_port,
                peer,
            } => self.inbound_tcp(stream, guest_port, peer),
            Event::InboundUdp { idx, client, data } => self.inbound_udp(idx, client, &data),
            Event::UdpReply(id, data) => {
                if let Some(f) = self.udp.get(&id) {
                    let (gp, from) = f.key;
                    self.send_udp_to_guest(from, gp, &data);
                }
            }
            Event::UdpClosed(id) => {
                if let Some(f) = self.udp.remove(&id) {
                    self.udp_by_key.remove(&f.key);
                    self.update_flow_gauges();
                }
            }
            Event::EchoReply {
                from,
                ident,
                seq,
                data,
            } => {
                let ip_ident = self.next_ident();
                let guest = self.cfg.guest_ip;
                let f =
                    packet::icmp_echo_reply(self.link, from, guest, ident, seq, &data, ip_ident);
                self.emit(f);
            }
            Event::DnsResolved { to, query, result } => self.dns_resolved(to, query, result),
            Event::WriterFailed(e) => return Err(NetError::Io(e)),
        }
        Ok(())
    }

    fn tcp_connected(&mut self, id: u64) {
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
    fn replay_syn(&mut self, id: u64, syn: Vec<u8>, buf: usize) {
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

    fn inbound_tcp(&mut self, stream: TcpStream, guest_port: u16, peer: SocketAddr) {
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

    fn inbound_udp(&mut self, idx: usize, client: SocketAddr, data: &[u8]) {
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

    fn housekeeping(&mut self) {
        let now = Instant::now();
        if now.duration_since(self.last_prime) > Duration::from_secs(20) {
            self.prime_neighbor();
        }
        self.dns_map.purge(now);
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
        self.dns_tcp_idle(now);
        while self.tasks.try_join_next().is_some() {}
        self.update_flow_gauges();
        if self.ended_since_trim >= TRIM_AFTER_FLOWS
            || (self.ended_since_trim > 0 && self.flows.is_empty())
        {
            self.release_memory();
        }
    }

    /// After a burst of flows: shrink the tables the burst grew and give the heap's free
    /// pages back to the kernel. Each flow's small allocations (smoltcp's socket buffers
    /// of a DNS connection, its table entries, frames) are below the mmap threshold, so
    /// they live on the heap; once freed, that memory stays resident (and a later burst
    /// touches all of it again) because glibc returns only the top of the heap by itself,
    /// and a few live allocations made during the burst pin the top.
    fn release_memory(&mut self) {
        self.ended_since_trim = 0;
        shrink_map(&mut self.flows);
        shrink_map(&mut self.by_key);
        shrink_map(&mut self.udp);
        shrink_map(&mut self.udp_by_key);
        shrink_map(&mut self.in_udp);
        shrink_map(&mut self.in_udp_by_client);
        // Socket handles are indices into the set's storage, which only grows: start a
        // new set once no socket is left in it (every socket belongs to a flow).
        if self.flows.is_empty() && self.sockets.iter().next().is_none() {
            self.sockets = SocketSet::new(vec![]);
        }
        if self.dev.rx.is_empty() {
            self.dev.rx.shrink_to_fit();
        }
        if self.overflow.is_empty() {
            self.overflow.shrink_to_fit();
        }
        trim_heap();
    }

    /// DNS-over-TCP connections without traffic: closed (FIN) once nothing is
    /// outstanding, reset when the guest does not close either.
    fn dns_tcp_idle(&mut self, now: Instant) {
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

    // ----- moving data between smoltcp and host tasks -----

    /// Returns whether anything moved (then smoltcp has work).
    fn service_tcp(&mut self) -> bool {
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
    fn new(
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
