//! DNS over TCP at the gateway (RFC 1035 4.2.2 framing): the same answers as over UDP.
mod common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use common::*;
use msb_netstack::dns::{
    build_query, parse_response, RCODE_FORMERR, RCODE_NOERROR, RCODE_NXDOMAIN, TYPE_A, TYPE_AAAA,
};
use msb_netstack::{Rule, Target};

const DNS: SocketAddrV4 = SocketAddrV4::new(GATEWAY_IP, 53);

async fn answer(c: &GuestTcp) -> (u16, u8, Vec<Ipv4Addr>) {
    let d = tokio::time::timeout(Duration::from_secs(10), c.read_dns())
        .await
        .expect("dns answer in time")
        .expect("dns answer");
    parse_response(&d).expect("dns parse")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_over_tcp_answers_like_udp() {
    let mut cfg = config();
    cfg.policy.egress.insert(
        0,
        Rule::deny(Target::DomainSuffix("blocked.example".into())),
    );
    let net = start(cfg).await;
    // The host's name is answered by the stack itself.
    assert_eq!(
        net.guest.dns_tcp("host.microsandbox.internal").await,
        (RCODE_NOERROR, vec![HOST_IP])
    );
    // Resolved on the host to 127.0.0.1, dropped by the rebinding protection.
    assert_eq!(
        net.guest.dns_tcp("localhost").await,
        (RCODE_NOERROR, vec![])
    );
    // Denied by a domain rule: NXDOMAIN, counted as denied.
    let denied = net.stack.stats().denied;
    assert_eq!(
        net.guest.dns_tcp("a.blocked.example").await,
        (RCODE_NXDOMAIN, vec![])
    );
    let st = net.stack.stats();
    assert_eq!(st.denied, denied + 1);
    assert!(st.dns_queries >= 3, "{st:?}");
    // Each connection closed by the guest is closed by the stack too and leaves the
    // flow table; no host socket was involved.
    eventually(Duration::from_secs(5), "dns flows removed", || {
        net.stack.stats().tcp_flows == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_queries_are_answered_in_order() {
    let net = start(config()).await;
    let c = net.guest.connect(DNS).await.expect("connect");
    // Ten queries in one write: more than the 4 a connection may have outstanding, and
    // the odd ones (resolved on the host) finish after the even ones (answered at once),
    // yet the answers come back in query order.
    let mut wire = Vec::new();
    for id in 0..10u16 {
        let name = if id % 2 == 0 {
            "localhost"
        } else {
            "host.microsandbox.internal"
        };
        wire.extend(dns_frame(&build_query(id, name, TYPE_A)));
    }
    c.write_all(&wire).await.unwrap();
    for id in 0..10u16 {
        let (rid, rc, a) = answer(&c).await;
        assert_eq!((rid, rc), (id, RCODE_NOERROR));
        let want = if id % 2 == 0 { vec![] } else { vec![HOST_IP] };
        assert_eq!(a, want, "answer {id}");
    }
    // A message split across segments (even its length prefix).
    let q = dns_frame(&build_query(77, "host.microsandbox.internal", TYPE_AAAA));
    c.write_all(&q[..1]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.write_all(&q[1..9]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.write_all(&q[9..]).await.unwrap();
    assert_eq!(answer(&c).await, (77, RCODE_NOERROR, vec![]));
    // The guest closes: so does the stack.
    c.close();
    let rest = tokio::time::timeout(Duration::from_secs(5), c.read_to_end())
        .await
        .expect("EOF in time")
        .unwrap();
    assert!(rest.is_empty());
    assert!(c.wait_closed(Duration::from_secs(5)).await);
    eventually(Duration::from_secs(5), "dns flow removed", || {
        net.stack.stats().tcp_flows == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_get_formerr_or_a_reset() {
    let net = start(config()).await;
    let c = net.guest.connect(DNS).await.expect("connect");
    // Garbage with a readable header: no question.
    let mut junk = vec![0x42, 0x42, 0x01, 0x00, 0, 0, 0, 0, 0, 0, 0, 0];
    junk.extend(pattern(20, 1));
    c.write_all(&dns_frame(&junk)).await.unwrap();
    assert_eq!(answer(&c).await, (0x4242, RCODE_FORMERR, vec![]));
    // A response, cut short (what UDP silently drops).
    let mut resp = build_query(0x4343, "example.com", TYPE_A);
    resp[2] |= 0x80;
    resp.truncate(16);
    c.write_all(&dns_frame(&resp)).await.unwrap();
    assert_eq!(answer(&c).await, (0x4343, RCODE_FORMERR, vec![]));
    // The connection still works.
    c.write_all(&dns_frame(&build_query(
        5,
        "host.microsandbox.internal",
        TYPE_A,
    )))
    .await
    .unwrap();
    assert_eq!(answer(&c).await, (5, RCODE_NOERROR, vec![HOST_IP]));
    // Shorter than a header: the connection is reset.
    c.write_all(&dns_frame(b"abc")).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), c.read_dns())
        .await
        .expect("reset in time");
    assert_eq!(r.err().as_deref(), Some("reset"));
    // So is an empty message.
    let c = net.guest.connect(DNS).await.expect("connect");
    c.write_all(&[0, 0]).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), c.read_dns())
        .await
        .expect("reset in time");
    assert_eq!(r.err().as_deref(), Some("reset"));
    // The stack still answers over UDP and TCP.
    assert_eq!(
        net.guest.dns("host.microsandbox.internal").await,
        (RCODE_NOERROR, vec![HOST_IP])
    );
    assert_eq!(
        net.guest.dns_tcp("host.microsandbox.internal").await,
        (RCODE_NOERROR, vec![HOST_IP])
    );
    eventually(Duration::from_secs(5), "dns flows removed", || {
        net.stack.stats().tcp_flows == 0
    })
    .await;
}

/// The largest message the framing allows crosses the connection's small (4 KiB) window,
/// with an Ethernet MTU and with the default one (whose MSS is larger than the window).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_message_passes_the_small_window() {
    for mtu in [1500, 65520] {
        let mut cfg = config();
        cfg.mtu = mtu;
        let net = start(cfg).await;
        let c = net.guest.connect(DNS).await.expect("connect");
        let mut big = vec![0x44, 0x44, 0x01, 0x00, 0, 0, 0, 0, 0, 0, 0, 0];
        big.extend(pattern(65535 - 12, 2));
        c.write_all(&dns_frame(&big)).await.unwrap();
        assert_eq!(
            answer(&c).await,
            (0x4444, RCODE_FORMERR, vec![]),
            "mtu {mtu}"
        );
        c.write_all(&dns_frame(&build_query(
            6,
            "host.microsandbox.internal",
            TYPE_A,
        )))
        .await
        .unwrap();
        assert_eq!(
            answer(&c).await,
            (6, RCODE_NOERROR, vec![HOST_IP]),
            "mtu {mtu}"
        );
        c.close();
        eventually(Duration::from_secs(5), "dns flow removed", || {
            net.stack.stats().tcp_flows == 0
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_without_dns_and_over_the_connection_cap() {
    // `dns: false`: nothing listens on the gateway, the connect is reset as before.
    let mut cfg = config();
    cfg.dns = false;
    let net = start(cfg).await;
    let t = Instant::now();
    assert_eq!(
        net.guest.connect(DNS).await.err().as_deref(),
        Some("refused")
    );
    assert!(t.elapsed() < Duration::from_secs(1));
    assert_eq!(net.stack.stats().denied, 1);
    drop(net);
    // DNS connections count against maxConnections.
    let mut cfg = config();
    cfg.max_connections = 1;
    let net = start(cfg).await;
    let c = net.guest.connect(DNS).await.expect("connect");
    assert_eq!(
        net.guest.connect(DNS).await.err().as_deref(),
        Some("refused")
    );
    assert_eq!(net.stack.stats().over_cap, 1);
    c.write_all(&dns_frame(&build_query(
        9,
        "host.microsandbox.internal",
        TYPE_A,
    )))
    .await
    .unwrap();
    assert_eq!(answer(&c).await, (9, RCODE_NOERROR, vec![HOST_IP]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connection_is_closed_after_10s() {
    let net = start(config()).await;
    let c = net.guest.connect(DNS).await.expect("connect");
    c.write_all(&dns_frame(&build_query(
        1,
        "host.microsandbox.internal",
        TYPE_A,
    )))
    .await
    .unwrap();
    assert_eq!(answer(&c).await, (1, RCODE_NOERROR, vec![HOST_IP]));
    let t = Instant::now();
    let rest = tokio::time::timeout(Duration::from_secs(15), c.read_to_end())
        .await
        .expect("closed by the stack")
        .unwrap();
    assert!(rest.is_empty());
    let idle = t.elapsed();
    assert!(
        idle >= Duration::from_secs(9) && idle < Duration::from_secs(13),
        "closed after {idle:?}"
    );
    c.close();
    assert!(c.wait_closed(Duration::from_secs(5)).await);
    eventually(Duration::from_secs(5), "dns flow removed", || {
        net.stack.stats().tcp_flows == 0
    })
    .await;
}
