//! A test "guest": a second smoltcp interface connected to a NetStack over a Unix socket
//! pair with QEMU's `-netdev stream` framing (4-byte big-endian length per frame).
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use msb_netstack::{NetConfig, NetError, NetStack};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{ChecksumCapabilities, Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::{tcp, udp};
use smoltcp::time::Instant as SInstant;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, HardwareAddress, IpAddress, IpCidr,
    IpProtocol, Ipv4Packet, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

pub const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x15];
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
pub const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
pub const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 254);
pub const GUEST_BUF: usize = 256 * 1024;

/// The tests are written around an Ethernet-sized MTU (fragmentation, segment counts);
/// the large default is covered where a test sets it.
pub fn config() -> NetConfig {
    let mut c = NetConfig::new(GUEST_MAC, GUEST_IP, GATEWAY_IP, 24);
    c.mtu = 1500;
    c
}

type Tap = Box<dyn FnMut(&[u8]) -> bool + Send>;

struct GDev {
    rx: VecDeque<Vec<u8>>,
    tx: Vec<Vec<u8>>,
    mtu: usize,
}

struct Rx(Vec<u8>);
impl RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}
struct Tx<'a>(&'a mut Vec<Vec<u8>>);
impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut v = vec![0; len];
        let r = f(&mut v);
        self.0.push(v);
        r
    }
}
impl Device for GDev {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;
    fn receive(&mut self, _: SInstant) -> Option<(Rx, Tx<'_>)> {
        let f = self.rx.pop_front()?;
        Some((Rx(f), Tx(&mut self.tx)))
    }
    fn transmit(&mut self, _: SInstant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = self.mtu + 14;
        c
    }
}

pub struct Inner {
    pub iface: Interface,
    pub sockets: SocketSet<'static>,
    dev: GDev,
    epoch: std::time::Instant,
}

impl Inner {
    fn now(&self) -> SInstant {
        SInstant::from_micros(self.epoch.elapsed().as_micros() as i64)
    }
}

/// The guest side. Cloneable handle.
#[derive(Clone)]
pub struct Guest {
    inner: Arc<Mutex<Inner>>,
    changed: Arc<Notify>,
    wake: Arc<Notify>,
    raw: mpsc::UnboundedSender<Vec<u8>>,
    tap: Arc<Mutex<Option<Tap>>>,
    next_port: Arc<Mutex<u16>>,
}

/// A NetStack serving one guest.
pub struct Net {
    pub stack: NetStack,
    pub guest: Guest,
    pub serve: JoinHandle<Result<(), NetError>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Net {
    fn drop(&mut self) {
        self.serve.abort();
        for t in &self.tasks {
            t.abort();
        }
    }
}

pub async fn start(cfg: NetConfig) -> Net {
    let mtu = cfg.mtu as usize;
    let stack = NetStack::bind(cfg).await.expect("bind");
    let (a, b) = UnixStream::pair().unwrap();
    let s2 = stack.clone();
    let serve = tokio::spawn(async move { s2.serve(a).await });
    let (guest, tasks) = Guest::attach(b, mtu);
    Net {
        stack,
        guest,
        serve,
        tasks,
    }
}

impl Guest {
    fn attach(stream: UnixStream, mtu: usize) -> (Guest, Vec<JoinHandle<()>>) {
        let mut dev = GDev {
            rx: VecDeque::new(),
            tx: vec![],
            mtu,
        };
        let mut cfg = Config::new(HardwareAddress::Ethernet(EthernetAddress(GUEST_MAC)));
        cfg.random_seed = 7;
        let mut iface = Interface::new(cfg, &mut dev, SInstant::from_micros(0));
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(IpAddress::Ipv4(GUEST_IP), 24)).unwrap();
        });
        iface
            .routes_mut()
            .add_default_ipv4_route(GATEWAY_IP)
            .unwrap();
        // smoltcp sends at most one ARP request per second; a Linux guest does not have
        // that limit, so pre-fill the guest's cache for the two addresses tests use most
        // (ARP itself is tested with raw frames).
        for ip in [GATEWAY_IP, HOST_IP] {
            dev.rx.push_back(arp_frame(
                smoltcp::wire::ArpOperation::Reply,
                GATEWAY_MAC,
                ip,
                GUEST_MAC,
                GUEST_IP,
            ));
        }
        let inner = Arc::new(Mutex::new(Inner {
            iface,
            sockets: SocketSet::new(vec![]),
            dev,
            epoch: std::time::Instant::now(),
        }));
        let (raw_tx, mut raw_rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let (in_tx, mut in_rx) = mpsc::channel::<Vec<u8>>(1024);
        let (mut rd, mut wr) = stream.into_split();
        let reader = tokio::spawn(async move {
            loop {
                let mut len = [0u8; 4];
                if rd.read_exact(&mut len).await.is_err() {
                    return;
                }
                let mut f = vec![0u8; u32::from_be_bytes(len) as usize];
                if rd.read_exact(&mut f).await.is_err() {
                    return;
                }
                if in_tx.send(f).await.is_err() {
                    return;
                }
            }
        });
        let writer = tokio::spawn(async move {
            let mut buf = Vec::new();
            while let Some(f) = raw_rx.recv().await {
                buf.clear();
                buf.extend_from_slice(&(f.len() as u32).to_be_bytes());
                buf.extend_from_slice(&f);
                while let Ok(f) = raw_rx.try_recv() {
                    buf.extend_from_slice(&(f.len() as u32).to_be_bytes());
                    buf.extend_from_slice(&f);
                    if buf.len() > 1 << 20 {
                        break;
                    }
                }
                if wr.write_all(&buf).await.is_err() {
                    return;
                }
            }
        });
        let g = Guest {
            inner,
            changed: Arc::new(Notify::new()),
            wake: Arc::new(Notify::new()),
            raw: raw_tx,
            tap: Arc::new(Mutex::new(None)),
            next_port: Arc::new(Mutex::new(40000)),
        };
        let g2 = g.clone();
        let driver = tokio::spawn(async move {
            let mut delay = Duration::from_millis(0);
            loop {
                tokio::select! {
                    f = in_rx.recv() => {
                        let Some(f) = f else { return };
                        let mut frames = vec![f];
                        while frames.len() < 256 {
                            match in_rx.try_recv() {
                                Ok(f) => frames.push(f),
                                Err(_) => break,
                            }
                        }
                        let mut tap = g2.tap.lock().unwrap();
                        let mut inner = g2.inner.lock().unwrap();
                        for f in frames {
                            let deliver = match tap.as_mut() {
                                Some(t) => t(&f),
                                None => true,
                            };
                            if deliver {
                                inner.dev.rx.push_back(f);
                            }
                        }
                    }
                    _ = g2.wake.notified() => {}
                    _ = tokio::time::sleep(delay) => {}
                }
                let out;
                {
                    let mut guard = g2.inner.lock().unwrap();
                    let inner = &mut *guard;
                    let now = inner.now();
                    inner.iface.poll(now, &mut inner.dev, &mut inner.sockets);
                    out = std::mem::take(&mut inner.dev.tx);
                    delay = inner
                        .iface
                        .poll_delay(now, &inner.sockets)
                        .map(|d| Duration::from_micros(d.total_micros()))
                        .unwrap_or(Duration::from_secs(1))
                        .max(Duration::from_micros(100));
                }
                for f in out {
                    let _ = g2.raw.send(f);
                }
                g2.changed.notify_waiters();
            }
        });
        (g, vec![reader, writer, driver])
    }

    /// Run `f` on the guest's state until it returns `Some`.
    pub async fn with<R>(&self, mut f: impl FnMut(&mut Inner) -> Option<R>) -> R {
        loop {
            let n = self.changed.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            let r = {
                let mut g = self.inner.lock().unwrap();
                f(&mut g)
            };
            if let Some(r) = r {
                self.wake.notify_one();
                return r;
            }
            n.await;
        }
    }

    pub fn poke(&self) {
        self.wake.notify_one();
    }

    pub fn send_raw(&self, frame: Vec<u8>) {
        let _ = self.raw.send(frame);
    }

    /// Inspect every frame before the guest's smoltcp sees it; `false` hides it.
    pub fn set_tap(&self, t: Option<Tap>) {
        *self.tap.lock().unwrap() = t;
    }

    pub fn port(&self) -> u16 {
        let mut p = self.next_port.lock().unwrap();
        *p = if *p >= 60000 { 40000 } else { *p + 1 };
        *p
    }

    fn tcp_socket() -> tcp::Socket<'static> {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; GUEST_BUF]),
            tcp::SocketBuffer::new(vec![0; GUEST_BUF]),
        );
        s.set_nagle_enabled(false);
        s
    }

    /// Connect; Err("refused") when reset.
    pub async fn connect(&self, dst: SocketAddrV4) -> Result<GuestTcp, String> {
        let port = self.port();
        let h = {
            let mut g = self.inner.lock().unwrap();
            let inner = &mut *g;
            let mut s = Self::tcp_socket();
            s.connect(
                inner.iface.context(),
                (IpAddress::Ipv4(*dst.ip()), dst.port()),
                port,
            )
            .map_err(|e| e.to_string())?;
            inner.sockets.add(s)
        };
        self.poke();
        let r = self
            .with(|i| match i.sockets.get::<tcp::Socket>(h).state() {
                tcp::State::SynSent | tcp::State::SynReceived | tcp::State::Listen => None,
                tcp::State::Closed => Some(Err("refused".to_string())),
                // Established, or already past it (the peer may close at once).
                _ => Some(Ok(())),
            })
            .await;
        match r {
            Ok(()) => Ok(GuestTcp { g: self.clone(), h }),
            Err(e) => {
                self.inner.lock().unwrap().sockets.remove(h);
                Err(e)
            }
        }
    }

    pub fn listen(&self, port: u16) -> GuestListener {
        let mut g = self.inner.lock().unwrap();
        let mut s = Self::tcp_socket();
        s.listen(port).unwrap();
        GuestListener {
            g: self.clone(),
            h: g.sockets.add(s),
            port,
        }
    }

    pub fn udp_bind(&self, port: u16) -> GuestUdp {
        let mut g = self.inner.lock().unwrap();
        let meta =
            || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 64], vec![0u8; 256 * 1024]);
        let mut s = udp::Socket::new(meta(), meta());
        s.bind(port).unwrap();
        GuestUdp {
            g: self.clone(),
            h: g.sockets.add(s),
        }
    }

    /// Ask the gateway's DNS: (rcode, addresses).
    pub async fn dns(&self, name: &str) -> (u8, Vec<Ipv4Addr>) {
        let u = self.udp_bind(self.port());
        let id = self.port();
        u.send_to(
            &msb_netstack::dns::build_query(id, name, msb_netstack::dns::TYPE_A),
            SocketAddrV4::new(GATEWAY_IP, 53),
        )
        .await;
        let (d, _) = tokio::time::timeout(Duration::from_secs(10), u.recv_from())
            .await
            .expect("dns answer");
        u.close();
        let (rid, rc, a) = msb_netstack::dns::parse_response(&d).expect("dns parse");
        assert_eq!(rid, id);
        (rc, a)
    }

    /// Ask the gateway's DNS over TCP, one connection per query: (rcode, addresses).
    pub async fn dns_tcp(&self, name: &str) -> (u8, Vec<Ipv4Addr>) {
        let c = self
            .connect(SocketAddrV4::new(GATEWAY_IP, 53))
            .await
            .expect("connect to the gateway's DNS");
        let id = self.port();
        c.write_all(&dns_frame(&msb_netstack::dns::build_query(
            id,
            name,
            msb_netstack::dns::TYPE_A,
        )))
        .await
        .unwrap();
        let d = tokio::time::timeout(Duration::from_secs(10), c.read_dns())
            .await
            .expect("dns answer")
            .expect("dns read");
        c.close();
        let (rid, rc, a) = msb_netstack::dns::parse_response(&d).expect("dns parse");
        assert_eq!(rid, id);
        (rc, a)
    }
}

/// A DNS message with its TCP length prefix (RFC 1035 4.2.2).
pub fn dns_frame(msg: &[u8]) -> Vec<u8> {
    let mut out = (msg.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(msg);
    out
}

pub struct GuestListener {
    g: Guest,
    h: SocketHandle,
    port: u16,
}

impl GuestListener {
    /// Wait for one connection; the listener is consumed (listen again for more).
    pub async fn accept(self) -> GuestTcp {
        let h = self.h;
        self.g
            .with(|i| match i.sockets.get::<tcp::Socket>(h).state() {
                tcp::State::Listen | tcp::State::SynReceived => None,
                _ => Some(()),
            })
            .await;
        GuestTcp { g: self.g, h }
    }
}

pub struct GuestTcp {
    g: Guest,
    h: SocketHandle,
}

impl GuestTcp {
    pub async fn write_all(&self, mut data: &[u8]) -> Result<(), String> {
        let h = self.h;
        while !data.is_empty() {
            let n = self
                .g
                .with(|i| {
                    let s = i.sockets.get_mut::<tcp::Socket>(h);
                    if !s.may_send() {
                        return Some(Err(format!("cannot send in state {}", s.state())));
                    }
                    match s.send_slice(data) {
                        Ok(0) => None,
                        Ok(n) => Some(Ok(n)),
                        Err(e) => Some(Err(e.to_string())),
                    }
                })
                .await?;
            data = &data[n..];
        }
        Ok(())
    }

    /// Ok(0) at EOF; Err("reset") when the connection was reset.
    pub async fn read(&self, buf: &mut [u8]) -> Result<usize, String> {
        let h = self.h;
        self.g
            .with(|i| {
                let s = i.sockets.get_mut::<tcp::Socket>(h);
                if s.can_recv() {
                    return Some(s.recv_slice(buf).map_err(|e| e.to_string()));
                }
                match s.state() {
                    tcp::State::Closed => Some(Err("reset".into())),
                    tcp::State::CloseWait
                    | tcp::State::LastAck
                    | tcp::State::TimeWait
                    | tcp::State::Closing => Some(Ok(0)),
                    _ => None,
                }
            })
            .await
    }

    pub async fn read_exact(&self, mut buf: &mut [u8]) -> Result<(), String> {
        while !buf.is_empty() {
            let n = self.read(buf).await?;
            if n == 0 {
                return Err("eof".into());
            }
            buf = &mut buf[n..];
        }
        Ok(())
    }

    /// One length-prefixed DNS message (DNS over TCP).
    pub async fn read_dns(&self) -> Result<Vec<u8>, String> {
        let mut len = [0u8; 2];
        self.read_exact(&mut len).await?;
        let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
        self.read_exact(&mut msg).await?;
        Ok(msg)
    }

    pub async fn read_to_end(&self) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            let n = self.read(&mut buf).await?;
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    /// Send FIN.
    pub fn close(&self) {
        self.g
            .inner
            .lock()
            .unwrap()
            .sockets
            .get_mut::<tcp::Socket>(self.h)
            .close();
        self.g.poke();
    }

    /// Send RST.
    pub fn abort(&self) {
        self.g
            .inner
            .lock()
            .unwrap()
            .sockets
            .get_mut::<tcp::Socket>(self.h)
            .abort();
        self.g.poke();
    }

    pub fn state(&self) -> tcp::State {
        self.g
            .inner
            .lock()
            .unwrap()
            .sockets
            .get::<tcp::Socket>(self.h)
            .state()
    }

    /// Wait until the socket is fully closed (or the limit passes).
    pub async fn wait_closed(&self, limit: Duration) -> bool {
        let h = self.h;
        tokio::time::timeout(
            limit,
            self.g.with(|i| {
                matches!(
                    i.sockets.get::<tcp::Socket>(h).state(),
                    tcp::State::Closed | tcp::State::TimeWait
                )
                .then_some(())
            }),
        )
        .await
        .is_ok()
    }
}

pub struct GuestUdp {
    g: Guest,
    h: SocketHandle,
}

impl GuestUdp {
    pub async fn send_to(&self, data: &[u8], to: SocketAddrV4) {
        let h = self.h;
        self.g
            .with(|i| {
                let s = i.sockets.get_mut::<udp::Socket>(h);
                s.send_slice(data, (IpAddress::Ipv4(*to.ip()), to.port()))
                    .ok()
            })
            .await;
    }

    pub async fn recv_from(&self) -> (Vec<u8>, SocketAddrV4) {
        let h = self.h;
        self.g
            .with(|i| {
                let s = i.sockets.get_mut::<udp::Socket>(h);
                match s.recv() {
                    Ok((d, m)) => {
                        let IpAddress::Ipv4(a) = m.endpoint.addr;
                        Some((d.to_vec(), SocketAddrV4::new(a, m.endpoint.port)))
                    }
                    Err(_) => None,
                }
            })
            .await
    }

    pub fn close(self) {
        let mut g = self.g.inner.lock().unwrap();
        g.sockets.remove(self.h);
    }
}

// ----- raw frames -----

pub const GATEWAY_MAC: [u8; 6] = msb_netstack::config::DEFAULT_GATEWAY_MAC;

pub fn arp_frame(
    op: smoltcp::wire::ArpOperation,
    src_mac: [u8; 6],
    src_ip: Ipv4Addr,
    dst_mac: [u8; 6],
    dst_ip: Ipv4Addr,
) -> Vec<u8> {
    use smoltcp::wire::{ArpPacket, ArpRepr};
    let repr = ArpRepr::EthernetIpv4 {
        operation: op,
        source_hardware_addr: EthernetAddress(src_mac),
        source_protocol_addr: src_ip,
        target_hardware_addr: EthernetAddress(dst_mac),
        target_protocol_addr: dst_ip,
    };
    let mut buf = vec![0u8; 14 + repr.buffer_len()];
    let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
    eth.set_src_addr(EthernetAddress(src_mac));
    eth.set_dst_addr(if op == smoltcp::wire::ArpOperation::Request {
        EthernetAddress::BROADCAST
    } else {
        EthernetAddress(dst_mac)
    });
    eth.set_ethertype(EthernetProtocol::Arp);
    repr.emit(&mut ArpPacket::new_unchecked(eth.payload_mut()));
    buf
}

/// An Ethernet+IPv4 frame from the guest with the given payload (checksums right).
pub fn ipv4_frame(dst: Ipv4Addr, proto: IpProtocol, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 14 + 20 + payload.len()];
    {
        let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
        eth.set_src_addr(EthernetAddress(GUEST_MAC));
        eth.set_dst_addr(EthernetAddress(GATEWAY_MAC));
        eth.set_ethertype(EthernetProtocol::Ipv4);
    }
    {
        let mut ip = Ipv4Packet::new_unchecked(&mut buf[14..]);
        ip.set_version(4);
        ip.set_header_len(20);
        ip.set_total_len((20 + payload.len()) as u16);
        ip.set_ident(1);
        ip.clear_flags();
        ip.set_dont_frag(true);
        ip.set_hop_limit(64);
        ip.set_next_header(proto);
        ip.set_src_addr(GUEST_IP);
        ip.set_dst_addr(dst);
        ip.fill_checksum();
    }
    buf[34..].copy_from_slice(payload);
    buf
}

/// A TCP segment from the guest (SYN or RST).
pub fn tcp_frame(
    src_port: u16,
    dst: SocketAddrV4,
    seq: u32,
    control: TcpControl,
    ack: Option<u32>,
) -> Vec<u8> {
    let repr = TcpRepr {
        src_port,
        dst_port: dst.port(),
        control,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: 65535,
        window_scale: None,
        max_seg_size: if control == TcpControl::Syn {
            Some(1460)
        } else {
            None
        },
        sack_permitted: false,
        sack_ranges: [None, None, None],
        timestamp: None,
        payload: &[],
    };
    let mut tcp = vec![0u8; repr.buffer_len()];
    repr.emit(
        &mut TcpPacket::new_unchecked(&mut tcp[..]),
        &IpAddress::Ipv4(GUEST_IP),
        &IpAddress::Ipv4(*dst.ip()),
        &ChecksumCapabilities::default(),
    );
    ipv4_frame(*dst.ip(), IpProtocol::Tcp, &tcp)
}

/// Parse a frame to the guest as TCP: (src, dst port, flags syn/ack/rst, seq, ack).
pub fn parse_tcp(frame: &[u8]) -> Option<(SocketAddrV4, u16, bool, bool, bool, u32, u32)> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return None;
    }
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    if ip.next_header() != IpProtocol::Tcp {
        return None;
    }
    let t = TcpPacket::new_checked(ip.payload()).ok()?;
    Some((
        SocketAddrV4::new(ip.src_addr(), t.src_port()),
        t.dst_port(),
        t.syn(),
        t.ack(),
        t.rst(),
        t.seq_number().0 as u32,
        t.ack_number().0 as u32,
    ))
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Wait until `f` holds (polling), or panic after `limit`.
pub async fn eventually(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let t = std::time::Instant::now();
    while !f() {
        if t.elapsed() > limit {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
