//! The messages between the stack task (stack/) and the tasks that do its I/O (host.rs's
//! per-flow tasks and stream writer, vhost.rs's queue handler). They live here, below all
//! of them, so that those tasks never depend on the stack: the stack spawns them and
//! they only send it [`Event`]s.

use std::net::{Ipv4Addr, SocketAddr};

use tokio::net::TcpStream;

use crate::dns;

/// What a host-side task tells the stack task.
pub(crate) enum Event {
    TcpConnected(u64),
    TcpConnectFailed(u64),
    /// Host -> guest data (one credit's worth).
    TcpHostData(u64, Vec<u8>),
    TcpHostEof(u64),
    TcpHostReset(u64),
    /// A chunk of guest data was written to the host socket.
    TcpWritten,
    InboundTcp {
        stream: TcpStream,
        guest_port: u16,
        peer: SocketAddr,
    },
    InboundUdp {
        idx: usize,
        client: SocketAddr,
        data: Vec<u8>,
    },
    UdpReply(u64, Vec<u8>),
    UdpClosed(u64),
    /// The host got the reply to a guest's echo request to `from`.
    EchoReply {
        from: Ipv4Addr,
        ident: u16,
        seq: u16,
        data: Vec<u8>,
    },
    DnsResolved {
        to: DnsTo,
        query: dns::Query,
        result: Result<Vec<Ipv4Addr>, u8>,
    },
    TxReady,
    WriterFailed(std::io::Error),
}

/// What the stack task tells a TCP flow's host task.
pub(crate) enum Cmd {
    Data(Vec<u8>),
    /// The guest sent FIN: shut down the host socket's write half.
    Shutdown,
}

/// Where a DNS answer goes: a UDP datagram to the guest's port, or a DNS-over-TCP
/// connection (flow id, the query's sequence number on it).
#[derive(Clone, Copy)]
pub(crate) enum DnsTo {
    Udp(u16),
    Tcp(u64, u64),
}
