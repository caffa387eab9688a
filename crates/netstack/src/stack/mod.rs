//! The stack task: one per sandbox. It owns the smoltcp interface and every flow's state,
//! reads guest frames, decides policy, and moves data between smoltcp sockets and the
//! host-side tasks.
//!
//! This file is the core: the state ([`Stack`]), the task's loop, the smoltcp poll, the
//! dispatch of host events and housekeeping. The rest are `impl Stack` blocks on the same
//! state, one concern each: frames.rs (guest frames in: Ethernet, ARP, IPv4 checks and
//! fragment reassembly; frames out), tcp.rs, udp.rs, icmp.rs and dns.rs (the gateway's
//! DNS over UDP and TCP). Nothing below stack/ depends on it: host-side tasks and the
//! vhost-user transport only send it [`Event`]s (event.rs).

mod dns;
mod frames;
mod icmp;
mod tcp;
mod udp;

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::time::Instant as SInstant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};
use tokio::net::{TcpListener, UdpSocket, UnixStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use crate::config::{NetConfig, PublishedPort};
use crate::device::Dev;
use crate::error::NetError;
use crate::event::Event;
use crate::frag::Reassembler;
use crate::host;
use crate::packet::{Link, ETH_HDR};
use crate::ping::MAX_ECHO_PENDING;
use crate::policy::{DnsMap, Special};
use crate::shared::Shared;
use crate::tls::Interceptor;
use crate::vhost::{self, VhostListener};

use tcp::TcpFlow;
use udp::{InboundUdp, UdpFlow};

const EVENT_QUEUE: usize = 4096;
/// Frames handled per wakeup before smoltcp is polled.
const BATCH: usize = 64;
/// Housekeeping gives memory back (`release_memory`) once this many TCP flows ended
/// since it last did, or when the last flow of the table ended.
const TRIM_AFTER_FLOWS: usize = 64;

/// A flow as the guest sees it: (guest port, remote address).
type FlowKey = (u16, SocketAddrV4);

/// A published port's host socket, bound by `NetStack::bind` before the VM starts.
pub(crate) enum Listener {
    Tcp(TcpListener, PublishedPort),
    Udp(Arc<UdpSocket>, PublishedPort),
}

/// The stack task's state. Every file of stack/ adds the methods of its concern to it;
/// the comments say which fields each one keeps.
struct Stack {
    cfg: Arc<NetConfig>,
    sp: Special,
    shared: Arc<Shared>,
    // smoltcp and the guest link (mod.rs, frames.rs).
    iface: Interface,
    sockets: SocketSet<'static>,
    dev: Dev,
    epoch: Instant,
    link: Link,
    ip_mtu: usize,
    ip_ident: u16,
    last_prime: Instant,
    /// Frames the stack wrote itself, waiting for room in the writer's queue.
    overflow: VecDeque<Vec<u8>>,
    overflow_bytes: usize,
    /// IPv4 fragments from the guest waiting for the rest of their datagram.
    frags: Reassembler,
    // Host-side tasks and their events.
    ev_tx: mpsc::Sender<Event>,
    tasks: JoinSet<()>,
    next_id: u64,
    // TCP flows, DNS-over-TCP connections included (tcp.rs).
    flows: HashMap<u64, TcpFlow>,
    by_key: HashMap<FlowKey, u64>,
    next_tcp_eph: u16,
    /// TCP flows removed since memory was last given back (`release_memory`).
    ended_since_trim: usize,
    // UDP flows from the guest, and from published ports' clients (udp.rs).
    udp: HashMap<u64, UdpFlow>,
    udp_by_key: HashMap<FlowKey, u64>,
    udp_listeners: Vec<(Arc<UdpSocket>, u16)>,
    in_udp: HashMap<u16, InboundUdp>,
    in_udp_by_client: HashMap<(usize, SocketAddr), u16>,
    next_udp_eph: u16,
    // DNS (dns.rs): the names the guest resolved, for domain rules.
    dns_map: DnsMap,
    dns_pending: usize,
    /// One permit per proxied echo request in flight (icmp.rs).
    echo_slots: Arc<Semaphore>,
    /// TLS interception (tcp.rs hands it the flows to intercepted ports; udp.rs drops
    /// QUIC to them). None: every flow is spliced.
    interceptor: Option<Arc<Interceptor>>,
}

/// How the guest's frames reach the stack.
pub(crate) enum Transport {
    /// QEMU `-netdev stream`: length-prefixed frames on a Unix stream.
    Stream(UnixStream),
    /// QEMU `-netdev vhost-user`: the virtqueues themselves (vhost.rs).
    VhostUser(VhostListener),
}

pub(crate) async fn run(
    cfg: Arc<NetConfig>,
    shared: Arc<Shared>,
    transport: Transport,
    listeners: Vec<Listener>,
    interceptor: Option<Arc<Interceptor>>,
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
        Transport::VhostUser(l) => Some(vhost::start(
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
        interceptor,
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

    fn next_ident(&mut self) -> u16 {
        self.ip_ident = self.ip_ident.wrapping_add(1);
        self.ip_ident
    }

    fn alloc_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn update_flow_gauges(&self) {
        let n = self.flows.len();
        self.shared.tcp_flows.store(n, Ordering::Relaxed);
        self.shared.tcp_flows_peak.fetch_max(n, Ordering::Relaxed);
        self.shared
            .udp_flows
            .store(self.udp.len() + self.in_udp.len(), Ordering::Relaxed);
    }

    // ----- events from host tasks -----

    fn handle_event(&mut self, e: Event) -> Result<(), NetError> {
        match e {
            Event::TcpConnected(id) => self.tcp_connected(id),
            Event::TcpConnectFailed(id) => self.tcp_connect_failed(id),
            Event::TcpHostData(id, d) => self.tcp_host_data(id, d),
            Event::TcpHostEof(id) => self.tcp_host_eof(id),
            Event::TcpHostReset(id) => self.tcp_host_reset(id),
            // Wakeups only: the poll at the top of the loop does the work.
            Event::TcpWritten | Event::TxReady => {}
            Event::InboundTcp {
                stream,
                guest_port,
                peer,
            } => self.inbound_tcp(stream, guest_port, peer),
            Event::InboundUdp { idx, client, data } => self.inbound_udp(idx, client, &data),
            Event::UdpReply(id, data) => self.udp_reply(id, &data),
            Event::UdpClosed(id) => self.udp_closed(id),
            Event::EchoReply {
                from,
                ident,
                seq,
                data,
            } => self.echo_reply(from, ident, seq, &data),
            Event::DnsResolved { to, query, result } => self.dns_resolved(to, query, result),
            Event::WriterFailed(e) => return Err(NetError::Io(e)),
        }
        Ok(())
    }

    fn housekeeping(&mut self) {
        let now = Instant::now();
        if now.duration_since(self.last_prime) > Duration::from_secs(20) {
            self.prime_neighbor();
        }
        self.dns_map.purge(now);
        self.expire_inbound_udp(now);
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
}
