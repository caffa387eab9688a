//! Memory after bursts of TCP connections: 12 bursts of 5,000 guest connections to the
//! gateway's DNS port (1,024 accepted, the rest reset at the cap), each accepted one
//! answered and closed by the guest. Every flow must be gone afterwards and the memory
//! they used given back to the kernel.
//!
//! RSS is measured in a child process (this test binary run again with `CHILD` set) on a
//! current-thread runtime with glibc's mmap threshold fixed as msb-runtime fixes it, so
//! that the other tests of the binary and their threads do not blur the figures.
mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetFrame, EthernetProtocol, IpAddress, IpProtocol, Ipv4Packet, TcpControl, TcpPacket,
    TcpRepr, TcpSeqNumber,
};
use tokio::sync::mpsc;

const CHILD: &str = "MSB_NETSTACK_BURST_CHILD";
const TEST: &str = "tcp_bursts_to_dns_give_memory_back";
const BURSTS: u16 = 12;
const CONNS: u16 = 5_000;
const CAP: usize = 1024;
/// SYNs sent and not answered yet (a guest kernel's connects are paced by its own
/// stack; without a window the test would only measure queue drops).
const IN_FLIGHT: usize = 256;
const ISS: u32 = 1000;
/// The stack's housekeeping runs every second.
const SETTLE: Duration = Duration::from_millis(1500);
const IDLE: Duration = Duration::from_secs(3);
/// At the end of a burst, RSS may be this much above the start (the connections' buffers:
/// 1,024 x 8 KiB, plus smoltcp's sockets and the flow table) ...
const PEAK_LIMIT_KIB: u64 = 16 * 1024;
/// ... it may grow this much from the first burst to the last (once settled) ...
const GROWTH_LIMIT_KIB: u64 = 8 * 1024;
/// ... and be at most this much above the start once the stack is idle.
const IDLE_LIMIT_KIB: u64 = 4 * 1024;

#[test]
fn tcp_bursts_to_dns_give_memory_back() {
    if std::env::var_os(CHILD).is_some() {
        return child();
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .expect("run the child");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "child failed: {}", out.status);
}

fn child() {
    // As msb-runtime does (crates/runtime/src/main.rs), before any thread exists.
    // SAFETY: mallopt only sets an allocator parameter.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(bursts());
}

/// A TCP segment seen by the guest from the gateway's DNS port.
struct Seg {
    port: u16,
    seq: u32,
    syn: bool,
    rst: bool,
    fin: bool,
    len: u32,
}

fn parse(frame: &[u8]) -> Option<Seg> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return None;
    }
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    if ip.next_header() != IpProtocol::Tcp || ip.src_addr() != GATEWAY_IP {
        return None;
    }
    let t = TcpPacket::new_checked(ip.payload()).ok()?;
    if t.src_port() != 53 {
        return None;
    }
    Some(Seg {
        port: t.dst_port(),
        seq: t.seq_number().0 as u32,
        syn: t.syn(),
        rst: t.rst(),
        fin: t.fin(),
        len: t.payload().len() as u32,
    })
}

/// A segment from the guest's `port` to the gateway's DNS port.
fn seg(port: u16, seq: u32, ack: Option<u32>, control: TcpControl, payload: &[u8]) -> Vec<u8> {
    let repr = TcpRepr {
        src_port: port,
        dst_port: 53,
        control,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: 65535,
        window_scale: None,
        max_seg_size: (control == TcpControl::Syn).then_some(1460),
        sack_permitted: false,
        sack_ranges: [None, None, None],
        timestamp: None,
        payload,
    };
    let mut tcp = vec![0u8; repr.buffer_len()];
    repr.emit(
        &mut TcpPacket::new_unchecked(&mut tcp[..]),
        &IpAddress::Ipv4(GUEST_IP),
        &IpAddress::Ipv4(GATEWAY_IP),
        &ChecksumCapabilities::default(),
    );
    ipv4_frame(GATEWAY_IP, IpProtocol::Tcp, &tcp)
}

/// An accepted connection, from the guest's side.
struct Conn {
    /// The stack's initial sequence number.
    irs: u32,
    /// Answer bytes received.
    got: u32,
    closed: bool,
}

/// One burst: `n` connects from ports `base..`; each accepted connection sends one
/// query, reads the answer, then closes (FIN) once every connect has been answered.
/// Returns (accepted, reset).
async fn burst(
    net: &Net,
    segs: &mut mpsc::UnboundedReceiver<Seg>,
    base: u16,
    n: u16,
) -> (usize, usize) {
    let query = dns_frame(&msb_netstack::dns::build_query(
        7,
        "host.microsandbox.internal",
        msb_netstack::dns::TYPE_A,
    ));
    let qlen = query.len() as u32;
    let mut conns: HashMap<u16, Conn> = HashMap::new();
    let (mut sent, mut reset) = (0u16, 0usize);
    let mut closing = false;
    let t = Instant::now();
    loop {
        let answered = conns.len() + reset;
        while sent < n && sent as usize - answered < IN_FLIGHT {
            net.guest
                .send_raw(seg(base + sent, ISS, None, TcpControl::Syn, &[]));
            sent += 1;
        }
        if !closing && answered == n as usize && conns.values().all(|c| c.got > 0) {
            // Every connect answered, every query too: the guest closes them all.
            closing = true;
            for (&p, c) in &conns {
                let ack = c.irs.wrapping_add(1 + c.got);
                net.guest
                    .send_raw(seg(p, ISS + 1 + qlen, Some(ack), TcpControl::Fin, &[]));
            }
        }
        if closing && conns.values().all(|c| c.closed) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "burst at {base}: {sent} sent, {} accepted, {reset} reset, closing {closing}; {:?}",
            conns.len(),
            net.stack.stats()
        );
        let s = match tokio::time::timeout(Duration::from_secs(5), segs.recv()).await {
            Ok(Some(s)) => s,
            Ok(None) => panic!("tap gone"),
            Err(_) => continue,
        };
        if !(base..base + n).contains(&s.port) {
            continue;
        }
        if s.syn && !s.rst {
            if conns.contains_key(&s.port) {
                continue; // a retransmitted SYN-ACK
            }
            conns.insert(
                s.port,
                Conn {
                    irs: s.seq,
                    got: 0,
                    closed: false,
                },
            );
            let ack = Some(s.seq.wrapping_add(1));
            net.guest
                .send_raw(seg(s.port, ISS + 1, ack, TcpControl::None, &[]));
            net.guest
                .send_raw(seg(s.port, ISS + 1, ack, TcpControl::Psh, &query));
            continue;
        }
        let Some(c) = conns.get_mut(&s.port) else {
            if s.rst {
                reset += 1; // over the cap
            }
            continue;
        };
        assert!(!s.rst, "accepted connection {} reset", s.port);
        if s.len > 0 && s.seq == c.irs.wrapping_add(1 + c.got) {
            c.got += s.len;
        }
        let mut our_seq = ISS + 1 + qlen;
        let mut ack = c.irs.wrapping_add(1 + c.got);
        if s.fin && s.seq.wrapping_add(s.len) == ack {
            // The stack's FIN (after ours): acknowledge it, the connection is over.
            ack = ack.wrapping_add(1);
            our_seq += 1;
            c.closed = true;
        }
        if s.len > 0 || s.fin {
            net.guest
                .send_raw(seg(s.port, our_seq, Some(ack), TcpControl::None, &[]));
        }
    }
    eventually(
        Duration::from_secs(30),
        "flows of the burst removed",
        || net.stack.stats().tcp_flows == 0,
    )
    .await;
    (conns.len(), reset)
}

async fn bursts() {
    let mut cfg = config();
    cfg.max_connections = CAP;
    let net = start(cfg).await;
    let (tx, mut segs) = mpsc::unbounded_channel();
    net.guest.set_tap(Some(Box::new(move |f| match parse(f) {
        Some(s) => {
            let _ = tx.send(s);
            false
        }
        None => true,
    })));
    // One connection first, so that the start includes what any use of the stack costs.
    assert_eq!(burst(&net, &mut segs, 65000, 1).await, (1, 0));
    tokio::time::sleep(SETTLE).await;
    let start = rss_kib();
    // RSS when the last flow of a burst is gone, and after SETTLE.
    let (mut ended, mut settled) = (Vec::new(), Vec::new());
    let t = Instant::now();
    for b in 0..BURSTS {
        let (accepted, reset) = burst(&net, &mut segs, 1024 + b * CONNS, CONNS).await;
        ended.push(rss_kib());
        let st = net.stack.stats();
        assert_eq!(accepted, CAP, "{st:?}");
        assert_eq!(reset, (CONNS as usize) - CAP, "{st:?}");
        assert_eq!((st.tcp_flows, st.udp_flows), (0, 0), "{st:?}");
        tokio::time::sleep(SETTLE).await;
        settled.push(rss_kib());
    }
    let busy = t.elapsed();
    tokio::time::sleep(IDLE).await;
    let idle = rss_kib();
    let st = net.stack.stats();
    println!(
        "bursts: {BURSTS} x {CONNS} connects in {busy:?}; RSS KiB: start {start}, \
         after burst 1 {} (settled {}), after burst {BURSTS} {} (settled {}), idle {idle}; \
         at each burst's end {ended:?}, settled {settled:?}; {st:?}",
        ended[0],
        settled[0],
        ended[ended.len() - 1],
        settled[settled.len() - 1],
    );
    // Every flow is gone, and the counters say so.
    assert_eq!((st.tcp_flows, st.udp_flows), (0, 0), "{st:?}");
    assert_eq!(st.tcp_flows_peak, CAP, "{st:?}");
    assert_eq!(
        st.over_cap,
        BURSTS as u64 * (CONNS as u64 - CAP as u64),
        "{st:?}"
    );
    let peak = ended.iter().max().unwrap().saturating_sub(start);
    assert!(
        peak < PEAK_LIMIT_KIB,
        "RSS {peak} KiB above the start at the end of a burst"
    );
    let growth = settled[settled.len() - 1].saturating_sub(settled[0]);
    assert!(
        growth < GROWTH_LIMIT_KIB,
        "RSS grew by {growth} KiB from burst 1 to burst {BURSTS}"
    );
    let kept = idle.saturating_sub(start);
    assert!(
        kept < IDLE_LIMIT_KIB,
        "idle after the bursts, RSS is {kept} KiB above the start"
    );
    net.guest.set_tap(None);
    // The stack still answers.
    assert_eq!(
        net.guest.dns_tcp("host.microsandbox.internal").await,
        (msb_netstack::dns::RCODE_NOERROR, vec![HOST_IP])
    );
}
