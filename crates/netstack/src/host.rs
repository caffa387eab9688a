//! Host-side tasks: the frame reader and writer on the guest's stream, one task per TCP
//! flow (connect + pump), one per UDP flow, one per ICMP echo request, the published-port
//! listeners and DNS lookups.
//! They talk to the stack task only through [`Event`]s and per-flow channels (event.rs),
//! and never depend on stack/.

use std::ffi::CString;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::error::NetError;
use crate::event::{Cmd, Event};
use crate::ping::{PingSocket, ECHO_TIMEOUT};
use crate::shared::{Shared, MAX_FRAME_LEN};
use crate::tls::{FlowFacts, Interceptor};

/// Largest chunk moved between a host socket and the stack in one message.
pub(crate) const CHUNK: usize = 64 * 1024;
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
pub(crate) const UDP_IDLE: Duration = Duration::from_secs(30);
pub(crate) const DNS_TIMEOUT: Duration = Duration::from_secs(5);

/// Read length-prefixed frames from the guest's stream.
pub(crate) async fn reader(rd: OwnedReadHalf, tx: mpsc::Sender<Result<Vec<u8>, NetError>>) {
    let mut rd = BufReader::with_capacity(256 * 1024, rd);
    loop {
        let mut len = [0u8; 4];
        match rd.read_exact(&mut len).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return,
            Err(e) => {
                let _ = tx.send(Err(NetError::Io(e))).await;
                return;
            }
        }
        let n = u32::from_be_bytes(len) as usize;
        if n > MAX_FRAME_LEN {
            let _ = tx
                .send(Err(NetError::Framing(format!(
                    "frame length {n} > {MAX_FRAME_LEN}"
                ))))
                .await;
            return;
        }
        let mut buf = vec![0u8; n];
        if let Err(e) = rd.read_exact(&mut buf).await {
            if e.kind() != std::io::ErrorKind::UnexpectedEof {
                let _ = tx.send(Err(NetError::Io(e))).await;
            }
            return;
        }
        if tx.send(Ok(buf)).await.is_err() {
            return;
        }
    }
}

/// Write frames to the guest's stream, batching what is queued.
pub(crate) async fn writer(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Vec<u8>>,
    shared: Arc<Shared>,
    ev: mpsc::Sender<Event>,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(512 * 1024);
    while let Some(f) = rx.recv().await {
        let push = |f: Vec<u8>, buf: &mut Vec<u8>| {
            shared.rx_bytes.fetch_add(f.len() as u64, Ordering::Relaxed);
            buf.extend_from_slice(&(f.len() as u32).to_be_bytes());
            buf.extend_from_slice(&f);
        };
        push(f, &mut buf);
        while buf.len() < 256 * 1024 {
            match rx.try_recv() {
                Ok(f) => push(f, &mut buf),
                Err(_) => break,
            }
        }
        if shared.tx_blocked.swap(false, Ordering::Relaxed) {
            let _ = ev.try_send(Event::TxReady);
        }
        if let Err(e) = wr.write_all(&buf).await {
            let _ = ev.send(Event::WriterFailed(e)).await;
            return;
        }
        buf.clear();
    }
}

/// Connect to `target` for a guest SYN, then pump (or, for a flow the interceptor takes,
/// run it between the stack's channels and the host connection).
pub(crate) async fn tcp_outbound(
    id: u64,
    target: SocketAddr,
    ev: mpsc::Sender<Event>,
    cmd: mpsc::Receiver<Cmd>,
    credit: Arc<Semaphore>,
    abort: oneshot::Receiver<()>,
    intercept: Option<(Arc<Interceptor>, FlowFacts)>,
) {
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(s)) => s,
        _ => {
            let _ = ev.send(Event::TcpConnectFailed(id)).await;
            return;
        }
    };
    if ev.send(Event::TcpConnected(id)).await.is_err() {
        return;
    }
    match intercept {
        None => tcp_pump(id, stream, ev, cmd, credit, abort).await,
        Some((ic, facts)) => {
            let _ = stream.set_nodelay(true);
            let (ours, theirs) = tokio::io::duplex(INTERCEPT_PIPE);
            // Its own task, so that a panic in it ends this flow only; aborted when this
            // future is dropped (the stack ends, or the flow is reset).
            let flow = AbortOnDrop(tokio::spawn(ic.intercept(theirs, stream, facts)));
            stream_pump(id, ours, ev, cmd, credit, abort).await;
            drop(flow);
        }
    }
}

/// Bytes buffered each way between the stack's side of an intercepted flow and the
/// interceptor (the pump reads only with credit, so a slow guest stalls the interceptor
/// instead of growing a buffer).
const INTERCEPT_PIPE: usize = 64 * 1024;
/// Read size on that pipe (TLS records are at most 16 KiB plus overhead).
const PIPE_CHUNK: usize = 16 * 1024;

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The guest-to-host half of a pump: write what the stack hands over on `cmd`, confirm
/// each chunk (`TcpWritten`), half-close on `Shutdown`; a failed write resets the flow.
async fn write_guest_data<W: AsyncWrite + Unpin>(
    id: u64,
    wr: &mut W,
    cmd: &mut mpsc::Receiver<Cmd>,
    ev: &mpsc::Sender<Event>,
) {
    while let Some(c) = cmd.recv().await {
        match c {
            Cmd::Data(d) => {
                if wr.write_all(&d).await.is_err() {
                    let _ = ev.send(Event::TcpHostReset(id)).await;
                    return;
                }
                let _ = ev.send(Event::TcpWritten).await;
            }
            Cmd::Shutdown => {
                let _ = wr.shutdown().await;
            }
        }
    }
}

/// Resolves when the stack asks for the flow to be reset; never when it only dropped the
/// sender (the flow then ends by itself).
async fn abort_requested(abort: oneshot::Receiver<()>) {
    if abort.await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// [`tcp_pump`] for an in-process stream (the interceptor's end of a duplex): the same
/// channels, credit and abort; the stream is dropped on abort (the interceptor sees the
/// guest go away).
async fn stream_pump<S: AsyncRead + AsyncWrite + Unpin>(
    id: u64,
    stream: S,
    ev: mpsc::Sender<Event>,
    mut cmd: mpsc::Receiver<Cmd>,
    credit: Arc<Semaphore>,
    abort: oneshot::Receiver<()>,
) {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let ev2 = ev.clone();
    let reading = async {
        loop {
            match credit.acquire().await {
                Ok(p) => p.forget(),
                Err(_) => return,
            }
            let mut buf = Vec::with_capacity(PIPE_CHUNK);
            match rd.read_buf(&mut buf).await {
                Ok(0) => {
                    let _ = ev2.send(Event::TcpHostEof(id)).await;
                    return;
                }
                Ok(_) => {
                    if ev2.send(Event::TcpHostData(id, buf)).await.is_err() {
                        return;
                    }
                }
                Err(_) => {
                    let _ = ev2.send(Event::TcpHostReset(id)).await;
                    return;
                }
            }
        }
    };
    let writing = write_guest_data(id, &mut wr, &mut cmd, &ev);
    let aborted = abort_requested(abort);
    tokio::select! {
        _ = async { tokio::join!(reading, writing) } => {}
        _ = aborted => {}
    }
}

/// Move data both ways between a host TCP socket and the stack. Host reads are gated by
/// `credit` (one permit per chunk handed to the stack, returned when the chunk is in
/// smoltcp's send buffer); guest data arrives on `cmd` only as fast as it is written.
/// An abort signal resets the host connection (SO_LINGER 0).
pub(crate) async fn tcp_pump(
    id: u64,
    stream: TcpStream,
    ev: mpsc::Sender<Event>,
    mut cmd: mpsc::Receiver<Cmd>,
    credit: Arc<Semaphore>,
    abort: oneshot::Receiver<()>,
) {
    let _ = stream.set_nodelay(true);
    let (rd, mut wr) = stream.into_split();
    let ev2 = ev.clone();
    let reading = async {
        loop {
            match credit.acquire().await {
                Ok(p) => p.forget(),
                Err(_) => return,
            }
            // The buffer is allocated only once the socket is readable: a thousand idle
            // flows must not hold a thousand 64 KiB buffers (a SYN flood to a host server
            // that waits for a request did exactly that: +90 MB resident).
            let read = loop {
                if rd.readable().await.is_err() {
                    break Err(());
                }
                let mut buf = Vec::with_capacity(CHUNK);
                match rd.try_read_buf(&mut buf) {
                    Ok(_) => break Ok(buf),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(_) => break Err(()),
                }
            };
            match read {
                Ok(buf) if buf.is_empty() => {
                    let _ = ev2.send(Event::TcpHostEof(id)).await;
                    return;
                }
                Ok(buf) => {
                    if ev2.send(Event::TcpHostData(id, buf)).await.is_err() {
                        return;
                    }
                }
                Err(()) => {
                    let _ = ev2.send(Event::TcpHostReset(id)).await;
                    return;
                }
            }
        }
    };
    let writing = write_guest_data(id, &mut wr, &mut cmd, &ev);
    let aborted = abort_requested(abort);
    let reset = tokio::select! {
        _ = async { tokio::join!(reading, writing) } => false,
        _ = aborted => true,
    };
    if reset {
        if let Ok(s) = rd.reunite(wr) {
            let _ = s.set_zero_linger();
        }
    }
}

/// One UDP flow: a connected host socket; guest datagrams arrive on `rx`, replies go to
/// the stack as events (dropped when the stack is behind). Ends after `UDP_IDLE` without
/// traffic.
pub(crate) async fn udp_flow(
    id: u64,
    target: SocketAddr,
    first: Vec<u8>,
    mut rx: mpsc::Receiver<Vec<u8>>,
    ev: mpsc::Sender<Event>,
) {
    let bind: SocketAddr = if target.ip().is_loopback() {
        ([127, 0, 0, 1], 0).into()
    } else {
        ([0, 0, 0, 0], 0).into()
    };
    let sock = match UdpSocket::bind(bind).await {
        Ok(s) => s,
        Err(_) => {
            let _ = ev.send(Event::UdpClosed(id)).await;
            return;
        }
    };
    if sock.connect(target).await.is_ok() {
        let _ = sock.send(&first).await;
        let mut buf = vec![0u8; 65536];
        let idle = tokio::time::sleep(UDP_IDLE);
        tokio::pin!(idle);
        loop {
            tokio::select! {
                d = rx.recv() => match d {
                    Some(d) => {
                        let _ = sock.send(&d).await;
                        idle.as_mut().reset(tokio::time::Instant::now() + UDP_IDLE);
                    }
                    None => break,
                },
                r = sock.recv(&mut buf) => {
                    if let Ok(n) = r {
                        let _ = ev.try_send(Event::UdpReply(id, buf[..n].to_vec()));
                        idle.as_mut().reset(tokio::time::Instant::now() + UDP_IDLE);
                    }
                    // Errors (ICMP port unreachable surfacing as ECONNREFUSED) are ignored.
                }
                _ = &mut idle => break,
            }
        }
    }
    let _ = ev.send(Event::UdpClosed(id)).await;
}

/// A guest's echo request, proxied: one echo from `sock`; the reply goes to the stack with
/// the guest's identifier, sequence number and data. No reply within `ECHO_TIMEOUT` (or a
/// socket error): nothing, the guest sees loss. `_slot` counts the request in flight.
pub(crate) async fn icmp_echo(
    sock: PingSocket,
    from: Ipv4Addr,
    (ident, seq): (u16, u16),
    data: Vec<u8>,
    ev: mpsc::Sender<Event>,
    _slot: OwnedSemaphorePermit,
) {
    if let Ok(Ok(())) = tokio::time::timeout(ECHO_TIMEOUT, sock.echo(seq, &data)).await {
        let _ = ev
            .send(Event::EchoReply {
                from,
                ident,
                seq,
                data,
            })
            .await;
    }
}

pub(crate) async fn tcp_listener(
    l: tokio::net::TcpListener,
    guest_port: u16,
    ev: mpsc::Sender<Event>,
) {
    loop {
        match l.accept().await {
            Ok((stream, peer)) => {
                if ev
                    .send(Event::InboundTcp {
                        stream,
                        guest_port,
                        peer,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            // EMFILE and friends: back off instead of spinning.
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

pub(crate) async fn udp_listener(sock: Arc<UdpSocket>, idx: usize, ev: mpsc::Sender<Event>) {
    let mut buf = vec![0u8; 65536];
    loop {
        match sock.recv_from(&mut buf).await {
            Ok((n, client)) => {
                let _ = ev.try_send(Event::InboundUdp {
                    idx,
                    client,
                    data: buf[..n].to_vec(),
                });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Resolve `name` to IPv4 addresses with the host's resolver (getaddrinfo: /etc/hosts,
/// nsswitch, /etc/resolv.conf). `Err(rcode)`: NXDOMAIN for names that do not exist,
/// SERVFAIL for temporary failures.
pub(crate) async fn resolve(name: String) -> Result<Vec<Ipv4Addr>, u8> {
    let job = tokio::task::spawn_blocking(move || getaddrinfo_v4(&name));
    match tokio::time::timeout(DNS_TIMEOUT, job).await {
        Ok(Ok(r)) => r,
        _ => Err(crate::dns::RCODE_SERVFAIL),
    }
}

fn getaddrinfo_v4(name: &str) -> Result<Vec<Ipv4Addr>, u8> {
    let c = CString::new(name).map_err(|_| crate::dns::RCODE_NXDOMAIN)?;
    // SAFETY: hints is zeroed then filled; res is freed with freeaddrinfo; the ai_addr of
    // AF_INET entries points at a sockaddr_in.
    unsafe {
        let mut hints: libc::addrinfo = std::mem::zeroed();
        hints.ai_family = libc::AF_INET;
        hints.ai_socktype = libc::SOCK_STREAM;
        let mut res: *mut libc::addrinfo = std::ptr::null_mut();
        let rc = libc::getaddrinfo(c.as_ptr(), std::ptr::null(), &hints, &mut res);
        if rc != 0 {
            return Err(match rc {
                libc::EAI_NONAME | libc::EAI_NODATA => crate::dns::RCODE_NXDOMAIN,
                _ => crate::dns::RCODE_SERVFAIL,
            });
        }
        let mut out = Vec::new();
        let mut p = res;
        while !p.is_null() {
            let ai = &*p;
            if ai.ai_family == libc::AF_INET && !ai.ai_addr.is_null() {
                let sin = &*(ai.ai_addr as *const libc::sockaddr_in);
                let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                if !out.contains(&ip) {
                    out.push(ip);
                }
            }
            p = ai.ai_next;
        }
        libc::freeaddrinfo(res);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The intercepted flows' pump: guest data reaches the stream, stream data comes back
    /// only with credit, EOF is reported, and an abort drops the stream.
    #[tokio::test]
    async fn stream_pump_moves_data_with_credit() {
        let (ours, mut theirs) = tokio::io::duplex(INTERCEPT_PIPE);
        let (ev_tx, mut ev_rx) = mpsc::channel(16);
        let (cmd_tx, cmd_rx) = mpsc::channel(2);
        let credit = Arc::new(Semaphore::new(1));
        let (abort_tx, abort_rx) = oneshot::channel();
        let pump = tokio::spawn(stream_pump(
            7,
            ours,
            ev_tx,
            cmd_rx,
            credit.clone(),
            abort_rx,
        ));
        cmd_tx
            .send(Cmd::Data(b"from guest".to_vec()))
            .await
            .unwrap();
        let mut buf = [0u8; 10];
        theirs.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"from guest");
        theirs.write_all(b"one").await.unwrap();
        let mut got = Vec::new();
        while got.is_empty() {
            match ev_rx.recv().await.unwrap() {
                Event::TcpHostData(7, d) => got = d,
                Event::TcpWritten => {}
                _ => panic!("unexpected event"),
            }
        }
        assert_eq!(got, b"one");
        // No credit left: the next chunk waits in the pipe.
        theirs.write_all(b"two").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(ev_rx.try_recv().is_err());
        credit.add_permits(1);
        assert!(matches!(ev_rx.recv().await, Some(Event::TcpHostData(7, d)) if d == b"two"));
        drop(theirs);
        credit.add_permits(1);
        assert!(matches!(ev_rx.recv().await, Some(Event::TcpHostEof(7))));
        let _ = abort_tx.send(());
        tokio::time::timeout(Duration::from_secs(5), pump)
            .await
            .unwrap()
            .unwrap();
    }
}
