//! Host sockets for proxied ICMP echo. An unprivileged ping socket (`SOCK_DGRAM`,
//! `IPPROTO_ICMP`) is tried first; when `net.ipv4.ping_group_range` excludes us, a raw ICMP
//! socket (needs CAP_NET_RAW). Which kind works is probed once per process, so a ping
//! never retries a kind that was refused.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU16, AtomicU8, Ordering};
use std::time::Duration;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{Icmpv4Message, Icmpv4Packet, Icmpv4Repr, IpProtocol, Ipv4Packet};
use tokio::io::unix::AsyncFd;

/// An echo request without a reply within this is dropped (the guest's ping sees loss).
pub(crate) const ECHO_TIMEOUT: Duration = Duration::from_secs(4);
/// Echo requests in flight per sandbox; beyond it a request is dropped (`over_cap`).
pub(crate) const MAX_ECHO_PENDING: usize = 64;

/// Largest IPv4 header (a raw socket delivers it in front of the ICMP message).
const MAX_IP_HDR: usize = 60;
const ECHO_HDR: usize = 8;
/// Linux `ICMP_FILTER` (SOL_RAW): a bit mask of ICMP types a raw socket does not receive.
const ICMP_FILTER: libc::c_int = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Ping socket: the kernel picks the identifier and delivers only our replies; data
    /// starts at the ICMP header.
    Dgram,
    /// Raw socket: every echo reply from the destination, behind its IPv4 header.
    Raw,
}

const UNKNOWN: u8 = 0;
const DGRAM: u8 = 1;
const RAW: u8 = 2;
const NONE: u8 = 3;
static KIND: AtomicU8 = AtomicU8::new(UNKNOWN);
/// Identifiers of raw-socket requests: distinct per request, so concurrent pings (from
/// any sandbox in this process) to one destination cannot take each other's replies.
static NEXT_IDENT: AtomicU16 = AtomicU16::new(0);

pub(crate) enum OpenError {
    /// Neither kind of ICMP socket may be opened by this process.
    Unavailable,
    /// A passing failure (out of descriptors, ...): this request is dropped.
    Transient,
}

/// One echo request's socket, connected to the destination.
pub(crate) struct PingSocket {
    fd: AsyncFd<OwnedFd>,
    kind: Kind,
    ident: u16,
    dst: Ipv4Addr,
}

impl PingSocket {
    /// Open a socket for one echo to `dst`. Needs a tokio runtime.
    pub(crate) fn open(dst: Ipv4Addr) -> Result<PingSocket, OpenError> {
        let (fd, kind) = open_fd()?;
        let ident = NEXT_IDENT.fetch_add(1, Ordering::Relaxed) ^ std::process::id() as u16;
        connect(&fd, dst).map_err(|_| OpenError::Transient)?;
        // SAFETY: the AsyncFd owns the descriptor; nothing else closes or replaces it.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|_| OpenError::Transient)?;
        Ok(PingSocket {
            fd,
            kind,
            ident,
            dst,
        })
    }

    /// Send an echo request and wait for its reply (no timeout: the caller has one).
    pub(crate) async fn echo(&self, seq: u16, data: &[u8]) -> io::Result<()> {
        let req = echo_request(self.ident, seq, data);
        self.io(tokio::io::Interest::WRITABLE, |fd| {
            // SAFETY: `req` is valid for its length; the descriptor is open.
            let n = unsafe { libc::send(fd, req.as_ptr().cast(), req.len(), 0) };
            cvt(n)
        })
        .await?;
        let mut buf = vec![0u8; MAX_IP_HDR + ECHO_HDR + data.len()];
        loop {
            let n = self
                .io(tokio::io::Interest::READABLE, |fd| {
                    // SAFETY: `buf` is valid for writes of its length.
                    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
                    cvt(n)
                })
                .await?;
            if is_reply(&buf[..n], self.kind, self.dst, self.ident, seq, data) {
                return Ok(());
            }
        }
    }

    async fn io(
        &self,
        interest: tokio::io::Interest,
        mut f: impl FnMut(libc::c_int) -> io::Result<usize>,
    ) -> io::Result<usize> {
        loop {
            let mut ready = self.fd.ready(interest).await?;
            match ready.try_io(|fd| f(fd.get_ref().as_raw_fd())) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }
}

/// A socket of the kind that works here, probing (dgram, then raw) until one does.
fn open_fd() -> Result<(OwnedFd, Kind), OpenError> {
    let known = match KIND.load(Ordering::Relaxed) {
        DGRAM => Some(Kind::Dgram),
        RAW => Some(Kind::Raw),
        NONE => return Err(OpenError::Unavailable),
        _ => None,
    };
    if let Some(k) = known {
        return socket(k)
            .map(|fd| (fd, k))
            .map_err(|_| OpenError::Transient);
    }
    for (k, tag) in [(Kind::Dgram, DGRAM), (Kind::Raw, RAW)] {
        match socket(k) {
            Ok(fd) => {
                KIND.store(tag, Ordering::Relaxed);
                return Ok((fd, k));
            }
            Err(e) if refused(&e) => continue,
            // Not a verdict on the kind: probe again next time.
            Err(_) => return Err(OpenError::Transient),
        }
    }
    KIND.store(NONE, Ordering::Relaxed);
    Err(OpenError::Unavailable)
}

/// Errors that mean "this kind of socket is not for us" (rather than a passing shortage).
fn refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EACCES | libc::EPERM | libc::EPROTONOSUPPORT | libc::ESOCKTNOSUPPORT)
    )
}

fn socket(kind: Kind) -> io::Result<OwnedFd> {
    let ty = match kind {
        Kind::Dgram => libc::SOCK_DGRAM,
        Kind::Raw => libc::SOCK_RAW,
    };
    // SAFETY: plain syscall; a non-negative result is a new descriptor that we own.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            ty | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::IPPROTO_ICMP,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket() and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if kind == Kind::Raw {
        // Only echo replies: a raw socket would otherwise wake for every ICMP message.
        let mask: u32 = !(1u32 << u8::from(Icmpv4Message::EchoReply));
        // SAFETY: `mask` is a u32 as ICMP_FILTER expects; failure is harmless (we match).
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_RAW,
                ICMP_FILTER,
                (&mask as *const u32).cast(),
                std::mem::size_of::<u32>() as libc::socklen_t,
            )
        };
    }
    Ok(fd)
}

/// Connected, the kernel sends to `dst` and (for a raw socket) delivers only what `dst`
/// sends.
fn connect(fd: &OwnedFd, dst: Ipv4Addr) -> io::Result<()> {
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(dst).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `sa` is a valid sockaddr_in of the given length.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    cvt(rc as isize).map(|_| ())
}

fn cvt(n: isize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// An ICMP echo request (checksum filled; a ping socket recomputes it with its own
/// identifier).
fn echo_request(ident: u16, seq_no: u16, data: &[u8]) -> Vec<u8> {
    let repr = Icmpv4Repr::EchoRequest {
        ident,
        seq_no,
        data,
    };
    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(
        &mut Icmpv4Packet::new_unchecked(&mut buf[..]),
        &ChecksumCapabilities::default(),
    );
    buf
}

/// Is `pkt` (as read from a socket of `kind`) the reply to our request? A raw socket sees
/// every echo reply from `from`, so the identifier and the data must match too.
fn is_reply(pkt: &[u8], kind: Kind, from: Ipv4Addr, ident: u16, seq: u16, data: &[u8]) -> bool {
    let icmp = match kind {
        Kind::Dgram => pkt,
        Kind::Raw => {
            let Ok(ip) = Ipv4Packet::new_checked(pkt) else {
                return false;
            };
            if ip.src_addr() != from || ip.next_header() != IpProtocol::Icmp {
                return false;
            }
            ip.payload()
        }
    };
    let Ok(p) = Icmpv4Packet::new_checked(icmp) else {
        return false;
    };
    if p.msg_type() != Icmpv4Message::EchoReply || p.msg_code() != 0 || p.echo_seq_no() != seq {
        return false;
    }
    match kind {
        // The kernel delivers only replies to this socket's identifier.
        Kind::Dgram => true,
        Kind::Raw => p.echo_ident() == ident && p.data() == data && p.verify_checksum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{Link, ETH_HDR};
    use smoltcp::wire::EthernetAddress;

    fn reply(ident: u16, seq: u16, data: &[u8]) -> Vec<u8> {
        let link = Link {
            src: EthernetAddress([2, 0, 0, 0, 0, 1]),
            dst: EthernetAddress([2, 0, 0, 0, 0, 2]),
        };
        let from = Ipv4Addr::new(1, 2, 3, 4);
        let to = Ipv4Addr::new(10, 0, 0, 1);
        crate::packet::icmp_echo_reply(link, from, to, ident, seq, data, 9)[ETH_HDR..].to_vec()
    }

    #[test]
    fn request_checksum() {
        let r = echo_request(0x1234, 7, b"abc");
        let p = Icmpv4Packet::new_checked(&r[..]).unwrap();
        assert!(p.verify_checksum());
        assert_eq!(p.msg_type(), Icmpv4Message::EchoRequest);
        assert_eq!(
            (p.echo_ident(), p.echo_seq_no(), p.data()),
            (0x1234, 7, &b"abc"[..])
        );
    }

    #[test]
    fn replies_matched() {
        let from = Ipv4Addr::new(1, 2, 3, 4);
        let ip = reply(5, 7, b"data");
        // Raw: IPv4 header first; source, identifier, sequence and data must all match.
        assert!(is_reply(&ip, Kind::Raw, from, 5, 7, b"data"));
        assert!(!is_reply(
            &ip,
            Kind::Raw,
            Ipv4Addr::new(1, 2, 3, 5),
            5,
            7,
            b"data"
        ));
        assert!(!is_reply(&ip, Kind::Raw, from, 6, 7, b"data"));
        assert!(!is_reply(&ip, Kind::Raw, from, 5, 8, b"data"));
        assert!(!is_reply(&ip, Kind::Raw, from, 5, 7, b"other"));
        assert!(!is_reply(
            &ip[..ip.len() - 1],
            Kind::Raw,
            from,
            5,
            7,
            b"data"
        ));
        // Dgram: the ICMP message only; the kernel's identifier is not ours.
        let icmp = &ip[20..];
        assert!(is_reply(icmp, Kind::Dgram, from, 999, 7, b"data"));
        assert!(!is_reply(icmp, Kind::Dgram, from, 999, 8, b"data"));
        // A request (e.g. our own, seen on loopback) is not a reply.
        assert!(!is_reply(
            &echo_request(5, 7, b"data"),
            Kind::Dgram,
            from,
            5,
            7,
            b"data"
        ));
    }
}
