mod common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use common::*;
use msb_netstack::dns::{RCODE_NOERROR, RCODE_NXDOMAIN};
use msb_netstack::{Action, Group, Policy, Proto, PublishedPort, Rule, Target};
use tokio::net::UdpSocket;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_localhost_with_rebinding_protection() {
    // Default policy: `localhost` resolves on the host to 127.0.0.1, which is loopback:
    // the answer is dropped (an empty NOERROR answer).
    let net = start(config()).await;
    let (rc, a) = net.guest.dns("localhost").await;
    assert_eq!((rc, a), (RCODE_NOERROR, vec![]));
    // The host's name is answered by the stack itself.
    let (rc, a) = net.guest.dns("host.microsandbox.internal").await;
    assert_eq!((rc, a), (RCODE_NOERROR, vec![HOST_IP]));
    assert!(net.stack.stats().dns_queries >= 2);
    drop(net);

    // A rule that allows loopback lets the answer through.
    let mut cfg = config();
    cfg.policy
        .egress
        .push(Rule::allow(Target::Group(Group::Loopback)));
    let net = start(cfg).await;
    let (rc, a) = net.guest.dns("LocalHost.").await;
    assert_eq!(rc, RCODE_NOERROR);
    assert_eq!(a, vec![Ipv4Addr::LOCALHOST]);
    drop(net);

    // So does an allow rule for the name itself.
    let mut cfg = config();
    cfg.policy
        .egress
        .insert(0, Rule::allow(Target::Domain("localhost".into())));
    let net = start(cfg).await;
    assert_eq!(
        net.guest.dns("localhost").await,
        (RCODE_NOERROR, vec![Ipv4Addr::LOCALHOST])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_nxdomain_for_denied_names() {
    // Denied by a domain rule: NXDOMAIN, and the host resolver is never asked.
    let mut cfg = config();
    cfg.policy.egress.insert(
        0,
        Rule::deny(Target::DomainSuffix("blocked.example".into())),
    );
    let net = start(cfg).await;
    assert_eq!(net.guest.dns("blocked.example").await.0, RCODE_NXDOMAIN);
    assert_eq!(net.guest.dns("a.b.blocked.example").await.0, RCODE_NXDOMAIN);
    drop(net);
    // Default deny with nothing allowed: every name is NXDOMAIN.
    let mut cfg = config();
    cfg.policy = Policy::deny_all();
    let net = start(cfg).await;
    assert_eq!(net.guest.dns("localhost").await.0, RCODE_NXDOMAIN);
    assert!(net.stack.stats().denied >= 1);
    drop(net);
    // Default deny, only some domains allowed: others are NXDOMAIN.
    let mut cfg = config();
    cfg.policy = Policy {
        default_action: Action::Deny,
        egress: vec![Rule::allow(Target::Domain("localhost".into()))],
        ingress: vec![],
    };
    let net = start(cfg).await;
    assert_eq!(net.guest.dns("other.example").await.0, RCODE_NXDOMAIN);
    assert_eq!(
        net.guest.dns("localhost").await,
        (RCODE_NOERROR, vec![Ipv4Addr::LOCALHOST])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domain_rules_match_only_names_resolved_here() {
    // Allow tcp to "localhost" only, and make 127.0.0.1 reachable from the guest as the
    // name's address: before the guest resolved the name, 127.0.0.1 is denied; after, it
    // is allowed (the flow goes to the host's loopback).
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let _srv = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            drop(s);
        }
    });
    let mut cfg = config();
    cfg.policy = Policy {
        default_action: Action::Deny,
        egress: vec![Rule::allow(Target::Domain("localhost".into())).protocol(Proto::Tcp)],
        ingress: vec![],
    };
    let net = start(cfg).await;
    let dst = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    assert_eq!(
        net.guest.connect(dst).await.err().as_deref(),
        Some("refused")
    );
    assert_eq!(
        net.guest.dns("localhost").await,
        (RCODE_NOERROR, vec![Ipv4Addr::LOCALHOST])
    );
    let c = net
        .guest
        .connect(dst)
        .await
        .expect("allowed after resolving");
    // The server closes at once.
    assert!(c.read_to_end().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_echo_both_ways() {
    // Host echo server on 127.0.0.1, reached from the guest through the host address.
    let srv = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let sport = srv.local_addr().unwrap().port();
    let _echo = tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        loop {
            let Ok((n, from)) = srv.recv_from(&mut buf).await else {
                return;
            };
            if &buf[..n] == b"big" {
                // A reply larger than the MTU: the stack fragments it.
                let _ = srv.send_to(&pattern(8000, 8), from).await;
            } else {
                let _ = srv.send_to(&buf[..n], from).await;
            }
        }
    });
    let mut cfg = config();
    cfg.policy
        .egress
        .push(Rule::allow(Target::Group(Group::Host)).protocol(Proto::Udp));
    cfg.ports.push(PublishedPort {
        protocol: Proto::Udp,
        host_port: 0,
        guest_port: 7000,
    });
    let net = start(cfg).await;

    // Guest -> host and back.
    let u = net.guest.udp_bind(5000);
    for size in [5usize, 1400, 1472] {
        let data = pattern(size, size as u64);
        u.send_to(&data, SocketAddrV4::new(HOST_IP, sport)).await;
        let (got, from) = tokio::time::timeout(Duration::from_secs(5), u.recv_from())
            .await
            .expect("echo");
        assert_eq!(from, SocketAddrV4::new(HOST_IP, sport));
        assert!(got == data, "size {size}");
    }
    assert_eq!(net.stack.stats().udp_flows, 1);

    // A host reply larger than the MTU reaches the guest as IPv4 fragments.
    let frags = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(usize, bool, Vec<u8>)>::new()));
    let f2 = frags.clone();
    net.guest.set_tap(Some(Box::new(move |f| {
        let eth = smoltcp::wire::EthernetFrame::new_checked(f).unwrap();
        if let Ok(ip) = smoltcp::wire::Ipv4Packet::new_checked(eth.payload()) {
            if ip.more_frags() || ip.frag_offset() != 0 {
                assert!(ip.verify_checksum());
                assert!(f.len() <= 1514);
                f2.lock().unwrap().push((
                    ip.frag_offset() as usize,
                    ip.more_frags(),
                    ip.payload().to_vec(),
                ));
                return false;
            }
        }
        true
    })));
    u.send_to(b"big", SocketAddrV4::new(HOST_IP, sport)).await;
    eventually(Duration::from_secs(5), "all fragments", || {
        frags.lock().unwrap().iter().any(|f| !f.1)
    })
    .await;
    let mut whole = vec![0u8; 8008];
    let mut total = 0;
    for (off, _, d) in frags.lock().unwrap().iter() {
        whole[*off..*off + d.len()].copy_from_slice(d);
        total += d.len();
    }
    assert_eq!(total, 8008);
    assert!(whole[8..] == pattern(8000, 8)[..]);
    net.guest.set_tap(None);

    // Host -> guest through the published port: the guest echoes.
    let g = net.guest.udp_bind(7000);
    let guest = net.guest.clone();
    let _guest_echo = tokio::spawn(async move {
        let _ = &guest;
        loop {
            let (d, from) = g.recv_from().await;
            g.send_to(&d, from).await;
        }
    });
    let published = net.stack.published()[0].1;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..5u8 {
        let msg = vec![i; 100 + i as usize];
        client.send_to(&msg, published).await.unwrap();
        let mut buf = [0u8; 2000];
        let (n, from) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
            .await
            .expect("reply")
            .unwrap();
        assert_eq!(from, published);
        assert_eq!(&buf[..n], &msg[..]);
    }

    // Denied UDP: the guest gets ICMP unreachable, nothing reaches the host.
    let before = net.stack.stats().denied;
    u.send_to(b"x", SocketAddrV4::new(Ipv4Addr::new(192, 168, 7, 7), 9))
        .await;
    eventually(Duration::from_secs(2), "udp denial counted", || {
        net.stack.stats().denied > before
    })
    .await;
}

/// IPv4 fragments of one UDP datagram from the guest: `parts` are (offset, bytes) of the
/// UDP header + payload, sent in the order given.
fn udp_fragments(dst: SocketAddrV4, data: &[u8], ident: u16, order: &[usize]) -> Vec<Vec<u8>> {
    use smoltcp::wire::{IpProtocol, Ipv4Packet, UdpPacket};
    let mut dgram = vec![0u8; 8 + data.len()];
    {
        let mut u = UdpPacket::new_unchecked(&mut dgram[..]);
        u.set_src_port(5001);
        u.set_dst_port(dst.port());
        u.set_len((8 + data.len()) as u16);
        u.payload_mut().copy_from_slice(data);
        u.fill_checksum(&GUEST_IP.into(), &(*dst.ip()).into());
    }
    let pieces: Vec<(usize, &[u8])> = dgram
        .chunks(1480)
        .enumerate()
        .map(|(i, c)| (i * 1480, c))
        .collect();
    order
        .iter()
        .map(|&i| {
            let (off, chunk) = pieces[i];
            let mut f = ipv4_frame(*dst.ip(), IpProtocol::Udp, chunk);
            let mut ip = Ipv4Packet::new_unchecked(&mut f[14..]);
            ip.set_ident(ident);
            ip.clear_flags();
            ip.set_more_frags(i + 1 < pieces.len());
            ip.set_frag_offset(off as u16);
            ip.fill_checksum();
            f
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragmented_guest_datagram_is_reassembled() {
    let srv = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let dst = SocketAddrV4::new(HOST_IP, srv.local_addr().unwrap().port());
    let mut cfg = config();
    cfg.policy
        .egress
        .push(Rule::allow(Target::Group(Group::Host)).protocol(Proto::Udp));
    let net = start(cfg).await;
    let data = pattern(4000, 3);
    // out of order; a lone first fragment of another datagram never completes
    net.guest
        .send_raw(udp_fragments(dst, &pattern(3000, 9), 77, &[0]).remove(0));
    for f in udp_fragments(dst, &data, 42, &[2, 0, 1]) {
        net.guest.send_raw(f);
    }
    let mut buf = vec![0u8; 65536];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), srv.recv_from(&mut buf))
        .await
        .expect("the reassembled datagram reaches the host")
        .unwrap();
    assert!(buf[..n] == data[..], "{n} bytes, not the datagram sent");
    // overlapping fragments: the datagram is discarded, nothing reaches the host
    let mut over = udp_fragments(dst, &data, 43, &[0, 1, 2]);
    {
        let mut ip = smoltcp::wire::Ipv4Packet::new_unchecked(&mut over[1][14..]);
        ip.set_frag_offset(1472);
        ip.fill_checksum();
    }
    for f in over {
        net.guest.send_raw(f);
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(500), srv.recv_from(&mut buf))
            .await
            .is_err(),
        "overlapping fragments were delivered"
    );
}
