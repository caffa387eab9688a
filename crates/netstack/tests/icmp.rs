mod common;

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use msb_netstack::{Group, NetConfig, Proto, Rule, Target};
use smoltcp::wire::{
    EthernetFrame, Icmpv4DstUnreachable, Icmpv4Message, Icmpv4Packet, IpProtocol, Ipv4Packet,
};

const ID: u16 = 0x1234;

/// An echo request from the guest (ICMP checksum right).
fn echo_request(dst: Ipv4Addr, ident: u16, seq: u16, data: &[u8]) -> Vec<u8> {
    let mut icmp = vec![8u8, 0, 0, 0];
    icmp.extend_from_slice(&ident.to_be_bytes());
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(data);
    Icmpv4Packet::new_unchecked(&mut icmp[..]).fill_checksum();
    ipv4_frame(dst, IpProtocol::Icmp, &icmp)
}

/// Capture the IPv4 ICMP packets the stack sends to the guest (hidden from its smoltcp).
fn capture(net: &Net) -> Arc<Mutex<Vec<Vec<u8>>>> {
    let got = Arc::new(Mutex::new(Vec::new()));
    let g2 = got.clone();
    net.guest.set_tap(Some(Box::new(move |f| {
        let eth = EthernetFrame::new_checked(f).unwrap();
        match Ipv4Packet::new_checked(eth.payload()) {
            Ok(ip) if ip.next_header() == IpProtocol::Icmp => {
                g2.lock().unwrap().push(eth.payload().to_vec());
                false
            }
            _ => true,
        }
    })));
    got
}

#[derive(Debug, PartialEq)]
enum Answer {
    /// (source, identifier, sequence, data)
    Reply(Ipv4Addr, u16, u16, Vec<u8>),
    Prohibited,
}

/// Wait for the answer to the echo request with `seq`; checks every checksum.
async fn answer(got: &Mutex<Vec<Vec<u8>>>, seq: u16, limit: Duration) -> Option<Answer> {
    let t = Instant::now();
    while t.elapsed() < limit {
        for pkt in got.lock().unwrap().iter() {
            let ip = Ipv4Packet::new_checked(&pkt[..]).unwrap();
            assert!(ip.verify_checksum());
            assert_eq!(ip.dst_addr(), GUEST_IP);
            let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
            assert!(icmp.verify_checksum());
            match icmp.msg_type() {
                Icmpv4Message::EchoReply if icmp.echo_seq_no() == seq => {
                    return Some(Answer::Reply(
                        ip.src_addr(),
                        icmp.echo_ident(),
                        seq,
                        icmp.data().to_vec(),
                    ));
                }
                Icmpv4Message::DstUnreachable => {
                    assert_eq!(
                        icmp.msg_code(),
                        u8::from(Icmpv4DstUnreachable::CommProhibited)
                    );
                    // The quoted request: its IPv4 header, then the ICMP header.
                    let quoted = &icmp.data()[20..];
                    if u16::from_be_bytes([quoted[6], quoted[7]]) == seq {
                        return Some(Answer::Prohibited);
                    }
                }
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

/// Which kind of ICMP socket this process may open (what the stack will use).
fn socket_kind() -> &'static str {
    for (ty, name) in [(libc::SOCK_DGRAM, "dgram"), (libc::SOCK_RAW, "raw")] {
        // SAFETY: plain syscalls on a descriptor we own.
        unsafe {
            let fd = libc::socket(libc::AF_INET, ty, libc::IPPROTO_ICMP);
            if fd >= 0 {
                libc::close(fd);
                return name;
            }
        }
    }
    "none"
}

fn allow_icmp_loopback() -> NetConfig {
    let mut cfg = config();
    let net = Target::Cidr(Ipv4Addr::new(127, 0, 0, 0), 8);
    cfg.policy
        .egress
        .insert(0, Rule::allow(net).protocol(Proto::Icmp));
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_echo_is_prohibited_at_once() {
    // The default policy does not allow loopback.
    let net = start(config()).await;
    let got = capture(&net);
    let t = Instant::now();
    net.guest
        .send_raw(echo_request(Ipv4Addr::LOCALHOST, ID, 1, b"ping"));
    let a = answer(&got, 1, Duration::from_secs(1)).await;
    assert_eq!(a, Some(Answer::Prohibited));
    assert!(t.elapsed() < Duration::from_secs(1));
    assert_eq!(net.stack.stats().denied, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_echo_is_proxied() {
    let kind = socket_kind();
    println!("ICMP socket available to this process: {kind}");
    let net = start(allow_icmp_loopback()).await;
    let got = capture(&net);
    let data = pattern(56, 7);
    net.guest
        .send_raw(echo_request(Ipv4Addr::LOCALHOST, ID, 7, &data));
    let a = answer(&got, 7, Duration::from_secs(5)).await;
    if kind == "none" {
        // The documented fallback: no ICMP socket, so the guest's ping fails fast.
        println!("path: fallback (prohibited)");
        assert_eq!(a, Some(Answer::Prohibited));
        return;
    }
    println!("path: proxied through a {kind} socket");
    assert_eq!(a, Some(Answer::Reply(Ipv4Addr::LOCALHOST, ID, 7, data)));
    // A few more, several at once: each answered with its own sequence number and data.
    for seq in 8..12u16 {
        let d = pattern(seq as usize * 10, seq as u64);
        net.guest
            .send_raw(echo_request(Ipv4Addr::LOCALHOST, ID, seq, &d));
    }
    for seq in 8..12u16 {
        let d = pattern(seq as usize * 10, seq as u64);
        let a = answer(&got, seq, Duration::from_secs(5)).await;
        assert_eq!(a, Some(Answer::Reply(Ipv4Addr::LOCALHOST, ID, seq, d)));
    }
    let st = net.stack.stats();
    assert_eq!((st.denied, st.over_cap), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_rule_does_not_allow_icmp() {
    let mut cfg = config();
    cfg.policy.egress.insert(
        0,
        Rule::allow(Target::Group(Group::Loopback)).protocol(Proto::Tcp),
    );
    let net = start(cfg).await;
    let got = capture(&net);
    net.guest
        .send_raw(echo_request(Ipv4Addr::LOCALHOST, ID, 3, b"ping"));
    let a = answer(&got, 3, Duration::from_secs(1)).await;
    assert_eq!(a, Some(Answer::Prohibited));
    assert_eq!(net.stack.stats().denied, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_echo_requests_are_dropped() {
    // Allowed destination, but a bad checksum or a non-zero code: dropped, not proxied.
    let net = start(allow_icmp_loopback()).await;
    let got = capture(&net);
    let mut f = echo_request(Ipv4Addr::LOCALHOST, ID, 4, b"ping");
    f[34 + 2] ^= 0xff;
    net.guest.send_raw(f);
    let mut icmp = vec![8u8, 1, 0, 0, 0x12, 0x34, 0, 5];
    Icmpv4Packet::new_unchecked(&mut icmp[..]).fill_checksum();
    net.guest
        .send_raw(ipv4_frame(Ipv4Addr::LOCALHOST, IpProtocol::Icmp, &icmp));
    eventually(Duration::from_secs(2), "drops counted", || {
        net.stack.stats().dropped_frames >= 2
    })
    .await;
    assert_eq!(answer(&got, 4, Duration::from_millis(300)).await, None);
    assert_eq!(answer(&got, 5, Duration::from_millis(10)).await, None);
}
