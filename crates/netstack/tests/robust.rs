mod common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use msb_netstack::{Group, NetError, NetStack, Proto, PublishedPort, Rule, Target};
use smoltcp::wire::{ArpOperation, IpProtocol, TcpControl};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};

fn host_allowed() -> msb_netstack::NetConfig {
    let mut cfg = config();
    cfg.policy
        .egress
        .push(Rule::allow(Target::Group(Group::Host)));
    cfg
}

async fn echo_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

async fn echo_once(net: &Net, port: u16) {
    let c = tokio::time::timeout(
        Duration::from_secs(5),
        net.guest.connect(SocketAddrV4::new(HOST_IP, port)),
    )
    .await
    .expect("connect in time")
    .expect("connect");
    c.write_all(b"ping").await.unwrap();
    let mut b = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut b))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&b, b"ping");
    c.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_tcp_port_reaches_guest_server() {
    let mut cfg = config();
    cfg.ports.push(PublishedPort {
        protocol: Proto::Tcp,
        host_port: 0,
        guest_port: 8080,
    });
    let net = start(cfg).await;
    let addr = net.stack.published()[0].1;
    assert_eq!(addr.ip(), std::net::IpAddr::V4(Ipv4Addr::LOCALHOST));
    for round in 0..3u64 {
        let listener = net.guest.listen(8080);
        let data = pattern(3 << 20, round);
        let d2 = data.clone();
        let client = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let mut hello = [0u8; 14];
            s.read_exact(&mut hello).await.unwrap();
            assert_eq!(&hello, b"hello from vm!");
            s.write_all(&d2).await.unwrap();
            s.shutdown().await.unwrap();
            let mut back = Vec::new();
            s.read_to_end(&mut back).await.unwrap();
            back
        });
        let c = tokio::time::timeout(Duration::from_secs(5), listener.accept())
            .await
            .expect("accept");
        c.write_all(b"hello from vm!").await.unwrap();
        let got = c.read_to_end().await.unwrap();
        assert!(got == data, "client -> guest data differs");
        c.write_all(&got[..1 << 20]).await.unwrap();
        c.close();
        let back = tokio::time::timeout(Duration::from_secs(10), client)
            .await
            .unwrap()
            .unwrap();
        assert!(back == data[..1 << 20], "guest -> client data differs");
    }
    eventually(Duration::from_secs(5), "flows removed", || {
        net.stack.stats().tcp_flows == 0
    })
    .await;

    // No guest server on the port: the client's connection is reset, not left hanging
    // (the reset may even beat connect() back to the client).
    if let Ok(mut s) = TcpStream::connect(addr).await {
        let mut b = [0u8; 1];
        let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
            .await
            .expect("closed in time");
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_rule_blocks_published_port() {
    let mut cfg = config();
    cfg.ports.push(PublishedPort {
        protocol: Proto::Tcp,
        host_port: 0,
        guest_port: 22,
    });
    cfg.policy
        .ingress
        .push(Rule::deny(Target::Group(Group::Any)).ports(22, 22));
    let net = start(cfg).await;
    let _l = net.guest.listen(22);
    if let Ok(mut s) = TcpStream::connect(net.stack.published()[0].1).await {
        let mut b = [0u8; 1];
        let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
            .await
            .expect("closed in time");
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    }
    eventually(Duration::from_secs(2), "denial counted", || {
        net.stack.stats().denied == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syn_flood_is_capped() {
    const CAP: usize = 200;
    const SYNS: u16 = 10_000;
    const BASE: u16 = 20_000;
    let port = holding_server().await;
    let mut cfg = host_allowed();
    cfg.max_connections = CAP;
    let net = start(cfg).await;
    echo_once_warmup(&net).await;

    // Hide the flood's answers from the guest's own stack (it would reset them) and count.
    let rsts = Arc::new(AtomicUsize::new(0));
    let synacks = Arc::new(Mutex::new(std::collections::HashSet::new()));
    let (r2, s2) = (rsts.clone(), synacks.clone());
    net.guest
        .set_tap(Some(Box::new(move |f| match parse_tcp(f) {
            Some((_, dport, syn, ack, rst, _, ackn)) if (BASE..BASE + SYNS).contains(&dport) => {
                if rst {
                    r2.fetch_add(1, Ordering::Relaxed);
                } else if syn && ack {
                    assert_eq!(ackn, 1001);
                    s2.lock().unwrap().insert(dport);
                }
                false
            }
            _ => true,
        })));
    let rss0 = rss_kib();
    let t = Instant::now();
    let dst = SocketAddrV4::new(HOST_IP, port);
    for i in 0..SYNS {
        net.guest
            .send_raw(tcp_frame(BASE + i, dst, 1000, TcpControl::Syn, None));
    }
    eventually(Duration::from_secs(30), "every SYN answered", || {
        rsts.load(Ordering::Relaxed) + synacks.lock().unwrap().len() >= SYNS as usize
    })
    .await;
    let st = net.stack.stats();
    let rss1 = rss_kib();
    println!(
        "syn flood: {SYNS} SYNs answered in {:?}: {} SYN-ACK, {} RST; stats {st:?}; RSS {} -> {} KiB",
        t.elapsed(),
        synacks.lock().unwrap().len(),
        rsts.load(Ordering::Relaxed),
        rss0,
        rss1
    );
    assert!(st.tcp_flows_peak <= CAP, "{st:?}");
    assert_eq!(st.tcp_flows, CAP, "{st:?}");
    assert_eq!(synacks.lock().unwrap().len(), CAP);
    assert_eq!(st.over_cap as usize, SYNS as usize - CAP);
    assert!(
        rss1.saturating_sub(rss0) < 256 * 1024,
        "RSS grew by {} KiB",
        rss1 - rss0
    );

    // At the cap a real connection is refused at once, not left hanging.
    let r = tokio::time::timeout(Duration::from_secs(1), net.guest.connect(dst))
        .await
        .expect("refused fast");
    assert!(r.is_err());

    // The flooder resets its half-open connections: the flows go away and the host side
    // connections are closed.
    for p in synacks.lock().unwrap().iter() {
        net.guest
            .send_raw(tcp_frame(*p, dst, 1001, TcpControl::Rst, None));
    }
    eventually(Duration::from_secs(10), "flows freed", || {
        net.stack.stats().tcp_flows == 0
    })
    .await;
    net.guest.set_tap(None);
    let port2 = echo_server().await;
    echo_once(&net, port2).await;
}

/// A host server on 127.0.0.1 that accepts every connection and holds it, never reading.
async fn holding_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    port
}

async fn echo_once_warmup(net: &Net) {
    let port = echo_server().await;
    echo_once(net, port).await;
    eventually(Duration::from_secs(5), "warm-up flow removed", || {
        net.stack.stats().tcp_flows == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_are_ignored() {
    let port = echo_server().await;
    let net = start(host_allowed()).await;
    echo_once(&net, port).await;
    let dst = SocketAddrV4::new(HOST_IP, port);
    let good_syn = tcp_frame(33333, dst, 1, TcpControl::Syn, None);
    let mut frames: Vec<Vec<u8>> = vec![vec![], vec![0u8; 5], vec![0xffu8; 14], vec![0u8; 60]];
    // Truncated frames of every length.
    for n in 0..good_syn.len() {
        frames.push(good_syn[..n].to_vec());
    }
    // Bad IP checksum.
    let mut f = good_syn.clone();
    f[14 + 10] ^= 0xff;
    frames.push(f);
    // Bad TCP checksum.
    let mut f = good_syn.clone();
    let l = f.len();
    f[l - 1] ^= 0x55;
    frames.push(f);
    // IP total length larger than the frame, and smaller than the header.
    let mut f = good_syn.clone();
    f[14 + 2] = 0xff;
    frames.push(f);
    let mut f = good_syn.clone();
    f[14 + 2] = 0;
    f[14 + 3] = 4;
    frames.push(f);
    // Header length field of 60 (options past the end) and of 0.
    let mut f = good_syn.clone();
    f[14] = 0x4f;
    frames.push(f);
    let mut f = good_syn.clone();
    f[14] = 0x40;
    frames.push(f);
    // Fragments (first and later), IPv6, unknown ethertype, unknown IP protocol.
    let mut f = ipv4_frame(*dst.ip(), IpProtocol::Udp, &[0u8; 40]);
    f[14 + 6] = 0x20; // MF
    fix_ip_checksum(&mut f);
    frames.push(f);
    let mut f = ipv4_frame(*dst.ip(), IpProtocol::Udp, &[0u8; 40]);
    f[14 + 7] = 0x10; // offset
    fix_ip_checksum(&mut f);
    frames.push(f);
    let mut f = good_syn.clone();
    f[12] = 0x86;
    f[13] = 0xdd;
    frames.push(f);
    let mut f = good_syn.clone();
    f[12] = 0x12;
    frames.push(f);
    frames.push(ipv4_frame(*dst.ip(), IpProtocol::Unknown(99), &[1, 2, 3]));
    // Spoofed source address.
    let mut f = good_syn.clone();
    f[14 + 12] = 1;
    fix_ip_checksum(&mut f);
    frames.push(f);
    // Broadcast and multicast destinations, SYN to port 0.
    frames.push(ipv4_frame(Ipv4Addr::BROADCAST, IpProtocol::Udp, &[0u8; 8]));
    frames.push(ipv4_frame(
        Ipv4Addr::new(224, 0, 0, 251),
        IpProtocol::Udp,
        &[0u8; 8],
    ));
    frames.push(tcp_frame(
        1234,
        SocketAddrV4::new(HOST_IP, 0),
        1,
        TcpControl::Syn,
        None,
    ));
    // ARP garbage and an ARP claiming the guest's own address.
    frames.push(arp_frame(
        ArpOperation::Unknown(9),
        GUEST_MAC,
        GUEST_IP,
        [0; 6],
        GATEWAY_IP,
    ));
    frames.push(arp_frame(
        ArpOperation::Request,
        GUEST_MAC,
        GUEST_IP,
        [0; 6],
        GUEST_IP,
    ));
    // Random garbage, some with an IPv4 ethertype.
    for i in 0..3000u64 {
        let mut f = pattern(15 + (i as usize * 7) % 1500, i);
        if i % 2 == 0 {
            f[12] = 0x08;
            f[13] = 0x00;
            f[14] = 0x45;
        }
        frames.push(f);
    }
    // Jumbo frame at the limit.
    frames.push(vec![0u8; msb_netstack::MAX_FRAME_LEN]);
    let rss0 = rss_kib();
    for f in frames {
        net.guest.send_raw(f);
    }
    // The stack keeps working.
    echo_once(&net, port).await;
    let st = net.stack.stats();
    println!("malformed: {st:?}, RSS {} -> {} KiB", rss0, rss_kib());
    assert!(st.dropped_frames > 1000, "{st:?}");
    assert!(!net.serve.is_finished());
}

fn fix_ip_checksum(f: &mut [u8]) {
    let mut ip = smoltcp::wire::Ipv4Packet::new_unchecked(&mut f[14..]);
    ip.fill_checksum();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frame_length_closes_the_stream() {
    let stack = NetStack::bind(config()).await.unwrap();
    let (a, mut b) = UnixStream::pair().unwrap();
    let s2 = stack.clone();
    let serve = tokio::spawn(async move { s2.serve(a).await });
    // A good frame, then a length beyond 65535 + header.
    let f = tcp_frame(1, SocketAddrV4::new(HOST_IP, 80), 1, TcpControl::Syn, None);
    b.write_all(&(f.len() as u32).to_be_bytes()).await.unwrap();
    b.write_all(&f).await.unwrap();
    b.write_all(&((msb_netstack::MAX_FRAME_LEN + 1) as u32).to_be_bytes())
        .await
        .unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), serve)
        .await
        .expect("serve ends")
        .unwrap();
    assert!(matches!(r, Err(NetError::Framing(_))), "{r:?}");
    // The stream is closed.
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), b.read_to_end(&mut rest))
        .await
        .expect("closed")
        .unwrap();
    // The same NetStack cannot serve twice; EOF ends serving cleanly.
    let (a, _b) = UnixStream::pair().unwrap();
    assert!(matches!(stack.serve(a).await, Err(NetError::AlreadyServed)));
    let stack = NetStack::bind(config()).await.unwrap();
    let (a, b) = UnixStream::pair().unwrap();
    drop(b);
    assert!(stack.serve(a).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arp_and_icmp_echo_to_the_gateway() {
    let net = start(config()).await;
    let replies = Arc::new(Mutex::new(Vec::new()));
    let r2 = replies.clone();
    net.guest.set_tap(Some(Box::new(move |f| {
        r2.lock().unwrap().push(f.to_vec());
        true
    })));
    // ARP for the gateway, the host address and some other on-link address: all answered
    // with the stack's MAC.
    for ip in [GATEWAY_IP, HOST_IP, Ipv4Addr::new(10, 0, 2, 77)] {
        net.guest.send_raw(arp_frame(
            ArpOperation::Request,
            GUEST_MAC,
            GUEST_IP,
            [0; 6],
            ip,
        ));
    }
    // ICMP echo to the gateway and to a private address (denied by the default policy:
    // unreachable).
    for dst in [GATEWAY_IP, Ipv4Addr::new(192, 168, 7, 7)] {
        let mut icmp = vec![8u8, 0, 0, 0, 0x12, 0x34, 0, 1, b'p', b'i', b'n', b'g'];
        let sum = checksum(&icmp);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        net.guest.send_raw(ipv4_frame(dst, IpProtocol::Icmp, &icmp));
    }
    eventually(Duration::from_secs(5), "answers", || {
        replies.lock().unwrap().len() >= 5
    })
    .await;
    let frames = replies.lock().unwrap().clone();
    let mut arp_answered = Vec::new();
    let mut echo_reply = false;
    let mut unreachable = false;
    for f in &frames {
        let eth = smoltcp::wire::EthernetFrame::new_checked(&f[..]).unwrap();
        assert_eq!(eth.src_addr().0, GATEWAY_MAC);
        match eth.ethertype() {
            smoltcp::wire::EthernetProtocol::Arp => {
                let p = smoltcp::wire::ArpPacket::new_checked(eth.payload()).unwrap();
                if let Ok(smoltcp::wire::ArpRepr::EthernetIpv4 {
                    operation: ArpOperation::Reply,
                    source_protocol_addr,
                    source_hardware_addr,
                    ..
                }) = smoltcp::wire::ArpRepr::parse(&p)
                {
                    assert_eq!(source_hardware_addr.0, GATEWAY_MAC);
                    arp_answered.push(source_protocol_addr);
                }
            }
            smoltcp::wire::EthernetProtocol::Ipv4 => {
                let ip = smoltcp::wire::Ipv4Packet::new_checked(eth.payload()).unwrap();
                let d = ip.payload();
                if ip.src_addr() == GATEWAY_IP && d[0] == 0 && &d[8..] == b"ping" {
                    echo_reply = true;
                }
                if d[0] == 3 && d[1] == 13 {
                    unreachable = true;
                }
            }
            _ => {}
        }
    }
    for ip in [GATEWAY_IP, HOST_IP, Ipv4Addr::new(10, 0, 2, 77)] {
        assert!(
            arp_answered.contains(&ip),
            "no ARP reply for {ip}: {arp_answered:?}"
        );
    }
    assert!(echo_reply, "no echo reply from the gateway");
    assert!(unreachable, "no admin-prohibited for the denied ping");
}

fn checksum(b: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for c in b.chunks(2) {
        s += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sandboxes_with_different_policies() {
    let port = echo_server().await;
    // Same guest addresses in both (each stack has its own state).
    let open = start(host_allowed()).await;
    let closed = start(config()).await;
    let mut jobs = Vec::new();
    for _ in 0..5 {
        let (g1, g2) = (open.guest.clone(), closed.guest.clone());
        jobs.push(tokio::spawn(async move {
            let c = g1
                .connect(SocketAddrV4::new(HOST_IP, port))
                .await
                .expect("allowed in the first");
            c.write_all(b"abc").await.unwrap();
            let mut b = [0u8; 3];
            c.read_exact(&mut b).await.unwrap();
            assert_eq!(&b, b"abc");
            c.close();
            assert!(
                g2.connect(SocketAddrV4::new(HOST_IP, port)).await.is_err(),
                "denied in the second"
            );
        }));
    }
    for j in jobs {
        j.await.unwrap();
    }
    assert_eq!(open.stack.stats().denied, 0);
    assert_eq!(closed.stack.stats().denied, 5);
    assert!((1..=5).contains(&open.stack.stats().tcp_flows_peak));
    assert_eq!(closed.stack.stats().tcp_flows_peak, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_host_server_only_stalls_its_own_flow() {
    let stall_port = holding_server().await;
    let port = echo_server().await;
    let net = start(host_allowed()).await;
    let c = net
        .guest
        .connect(SocketAddrV4::new(HOST_IP, stall_port))
        .await
        .unwrap();
    let data = pattern(32 << 20, 9);
    let writer = tokio::spawn(async move {
        let _ = c.write_all(&data).await;
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !writer.is_finished(),
        "32 MiB cannot fit in the buffers on the way"
    );
    for _ in 0..5 {
        echo_once(&net, port).await;
    }
    writer.abort();
}

/// What a real guest kernel does under a SYN flood sent from a raw socket: it resets every
/// SYN-ACK, for connections it never opened, while the flood goes on. Flows end in every
/// phase (connecting, just accepted, open), and the stack must survive all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syn_flood_with_the_guest_resetting_every_syn_ack() {
    const SYNS: u16 = 10_000;
    const BASE: u16 = 20_000;
    const IN_FLIGHT: usize = 64;
    let port = holding_server().await;
    let net = start(host_allowed()).await;
    echo_once_warmup(&net).await;
    let dst = SocketAddrV4::new(HOST_IP, port);
    // (port, seq for our RST) of each SYN-ACK; None for an RST from the stack
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Option<(u16, u32)>>();
    net.guest
        .set_tap(Some(Box::new(move |f| match parse_tcp(f) {
            Some((_, dport, syn, ack, rst, _, ackn)) if (BASE..BASE + SYNS).contains(&dport) => {
                if syn && ack {
                    let _ = tx.send(Some((dport, ackn)));
                } else if rst {
                    let _ = tx.send(None);
                }
                false
            }
            _ => true,
        })));
    let (mut sent, mut answered, mut reset) = (0u16, 0usize, 0usize);
    let t = Instant::now();
    while answered < SYNS as usize && t.elapsed() < Duration::from_secs(60) {
        while sent < SYNS && (sent as usize) - answered < IN_FLIGHT {
            net.guest
                .send_raw(tcp_frame(BASE + sent, dst, 1000, TcpControl::Syn, None));
            sent += 1;
        }
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some(Some((p, seq)))) => {
                net.guest
                    .send_raw(tcp_frame(p, dst, seq, TcpControl::Rst, None));
                answered += 1;
                reset += 1;
            }
            Ok(Some(None)) => answered += 1,
            _ => break,
        }
    }
    eventually(Duration::from_secs(20), "flows freed", || {
        net.stack.stats().tcp_flows == 0
    })
    .await;
    let st = net.stack.stats();
    println!(
        "reset flood: {sent} SYNs, {reset} SYN-ACKs reset by the guest in {:?}; {st:?}",
        t.elapsed()
    );
    assert_eq!(answered, SYNS as usize, "every SYN answered");
    assert!(reset > SYNS as usize / 2, "{reset}");
    net.guest.set_tap(None);
    let port2 = echo_server().await;
    echo_once(&net, port2).await;
}
