mod common;

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use common::*;
use msb_netstack::{Group, Policy, Rule, Target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn host_allowed() -> msb_netstack::NetConfig {
    let mut cfg = config();
    cfg.policy
        .egress
        .push(Rule::allow(Target::Group(Group::Host)));
    cfg
}

async fn echo_server() -> (u16, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let t = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    (port, t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_echo_through_host_rule() {
    let (port, _srv) = echo_server().await;
    let net = start(host_allowed()).await;
    let c = net
        .guest
        .connect(SocketAddrV4::new(HOST_IP, port))
        .await
        .expect("connect");
    c.write_all(b"hello through the stack").await.unwrap();
    let mut buf = [0u8; 23];
    c.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hello through the stack");
    c.close();
    // The echo server sees EOF and closes: the guest sees EOF too.
    let rest = tokio::time::timeout(Duration::from_secs(5), c.read_to_end())
        .await
        .unwrap()
        .unwrap();
    assert!(rest.is_empty());
    assert!(c.wait_closed(Duration::from_secs(5)).await);
    eventually(Duration::from_secs(5), "flow removed", || {
        net.stack.stats().tcp_flows == 0
    })
    .await;
    let ctr = net.stack.counters();
    assert!(ctr.rx_bytes > 0 && ctr.tx_bytes > 0, "{ctr:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_policy_denies_host_at_once() {
    let (port, _srv) = echo_server().await;
    let net = start(config()).await;
    assert_eq!(net.stack.config().policy, Policy::default());
    let t = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(1),
        net.guest.connect(SocketAddrV4::new(HOST_IP, port)),
    )
    .await;
    let r = r.expect("connect must fail within 1 s, not hang");
    assert_eq!(r.err().as_deref(), Some("refused"));
    println!("denied connect failed after {:?}", t.elapsed());
    // Private, loopback-looking, link-local and metadata addresses are refused too (the
    // stack never opens a host socket for them).
    for dst in [
        "127.0.0.1:80",
        "192.168.1.1:80",
        "169.254.169.254:80",
        "169.254.1.1:22",
        "10.0.2.2:80",
    ] {
        let dst: SocketAddrV4 = dst.parse().unwrap();
        let r = tokio::time::timeout(Duration::from_secs(1), net.guest.connect(dst))
            .await
            .unwrap_or_else(|_| panic!("{dst} not refused fast"));
        assert!(r.is_err(), "{dst}");
    }
    assert!(net.stack.stats().denied >= 6);
    assert_eq!(net.stack.stats().tcp_flows_peak, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_host_port_resets_guest() {
    // Find a port with nothing listening.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    let net = start(host_allowed()).await;
    let t = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(2),
        net.guest.connect(SocketAddrV4::new(HOST_IP, port)),
    )
    .await
    .unwrap();
    assert_eq!(r.err().as_deref(), Some("refused"));
    assert!(t.elapsed() < Duration::from_secs(1));
    eventually(Duration::from_secs(2), "flow removed", || {
        net.stack.stats().tcp_flows == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_transfer_both_directions() {
    bulk(1500).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_transfer_jumbo_mtu() {
    bulk(65520).await;
}

async fn bulk(mtu: u16) {
    const N: usize = 16 << 20;
    let up = pattern(N, 1);
    let down = pattern(N, 2);
    // Host server: reads N bytes (guest -> host), checks them, then sends N bytes back.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let (up2, down2) = (up.clone(), down.clone());
    let srv = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut got = vec![0u8; N];
        s.read_exact(&mut got).await.unwrap();
        assert!(got == up2, "guest -> host data differs");
        s.write_all(&down2).await.unwrap();
        s.shutdown().await.unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    });
    let mut cfg = host_allowed();
    cfg.mtu = mtu;
    let net = start(cfg).await;
    let c = net
        .guest
        .connect(SocketAddrV4::new(HOST_IP, port))
        .await
        .unwrap();
    let t = Instant::now();
    c.write_all(&up).await.unwrap();
    let mut got = vec![0u8; N];
    let n = c.read(&mut got).await.unwrap(); // first bytes arrive once the host has all
    let t_up = t.elapsed();
    let t = Instant::now();
    c.read_exact(&mut got[n..]).await.unwrap();
    let t_down = t.elapsed();
    assert!(got == down, "host -> guest data differs");
    c.close();
    srv.await.unwrap();
    let mb = N as f64 / 1e6;
    println!(
        "bulk {} MiB, MTU {mtu}: guest->host {:?} ({:.0} MB/s), host->guest {:?} ({:.0} MB/s)",
        N >> 20,
        t_up,
        mb / t_up.as_secs_f64(),
        t_down,
        mb / t_down.as_secs_f64()
    );
    let ctr = net.stack.counters();
    assert!(
        ctr.rx_bytes as usize > N && ctr.tx_bytes as usize > N,
        "{ctr:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_connections() {
    let (port, _srv) = echo_server().await;
    let net = start(host_allowed()).await;
    let mut pending = Vec::new();
    for _ in 0..50 {
        let g = net.guest.clone();
        pending.push(tokio::spawn(async move {
            g.connect(SocketAddrV4::new(HOST_IP, port)).await
        }));
    }
    let mut conns = Vec::new();
    for p in pending {
        conns.push(p.await.unwrap().expect("connect"));
    }
    assert_eq!(net.stack.stats().tcp_flows, 50);
    let mut jobs = Vec::new();
    for (i, c) in conns.into_iter().enumerate() {
        jobs.push(tokio::spawn(async move {
            let data = pattern(100_000 + i * 1000, i as u64);
            let (w, r) = tokio::join!(c.write_all(&data), async {
                let mut got = vec![0u8; data.len()];
                c.read_exact(&mut got).await.map(|_| got)
            });
            w.unwrap();
            assert!(r.unwrap() == data);
            c.close();
            assert!(c.read_to_end().await.unwrap().is_empty());
        }));
    }
    for j in jobs {
        tokio::time::timeout(Duration::from_secs(60), j)
            .await
            .unwrap()
            .unwrap();
    }
    eventually(Duration::from_secs(5), "all flows removed", || {
        net.stack.stats().tcp_flows == 0
    })
    .await;
    assert_eq!(net.stack.stats().tcp_flows_peak, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_propagate_both_ways() {
    // Host resets: the guest sees a reset.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let srv = tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let mut b = [0u8; 5];
        let mut s = s;
        s.read_exact(&mut b).await.unwrap();
        s.set_zero_linger().unwrap();
        drop(s);
        // Second connection: the guest resets; the host read fails or sees EOF.
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = [0u8; 16];
        let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("host notices the guest's reset");
        assert!(matches!(r, Err(_) | Ok(0)), "{r:?}");
    });
    let net = start(host_allowed()).await;
    let c = net
        .guest
        .connect(SocketAddrV4::new(HOST_IP, port))
        .await
        .unwrap();
    c.write_all(b"hello").await.unwrap();
    let mut b = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_secs(5), c.read(&mut b))
        .await
        .unwrap();
    assert_eq!(r, Err("reset".to_string()));
    let c2 = net
        .guest
        .connect(SocketAddrV4::new(HOST_IP, port))
        .await
        .unwrap();
    c2.abort();
    srv.await.unwrap();
    eventually(Duration::from_secs(5), "flows removed", || {
        net.stack.stats().tcp_flows == 0
    })
    .await;
}

// msb-runtime runs a current-thread runtime: the stack must not need more.
#[tokio::test]
async fn works_on_a_current_thread_runtime() {
    let (port, _srv) = echo_server().await;
    let net = start(host_allowed()).await;
    let c = net
        .guest
        .connect(SocketAddrV4::new(HOST_IP, port))
        .await
        .expect("connect");
    let data = pattern(1 << 20, 5);
    let (w, r) = tokio::join!(c.write_all(&data), async {
        let mut got = vec![0u8; data.len()];
        c.read_exact(&mut got).await.map(|_| got)
    });
    w.unwrap();
    assert!(r.unwrap() == data);
    assert_eq!(
        net.guest.dns("host.microsandbox.internal").await.1,
        vec![HOST_IP]
    );
}
